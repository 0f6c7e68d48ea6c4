"""The Gradio interface (the only module that imports gradio). All logic lives in the library.

Tabs: **Segment** (the client-server round trip, in one process), **Attack lab** (what a curious
server could do with a proxy), **About** (method, threat model, limits, results, the server API).

Public API endpoints (callable with ``gradio_client``):

* ``/segment_proxy`` — the server: a ``.npy`` file of proxies → a ``.npy`` file of mixed
  probabilities (see :mod:`mixdemo.server`).
* ``/server_info`` — JSON describing the wire format and the model.

Every other event has an explicit ``api_name`` but is private (browser only).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np

from mixdemo import examples, server, viz

log = logging.getLogger(__name__)

GRID_SHAPE = (144, 192, 160)
"""The models' grid (``mixdemo.phantoms.GRID_SHAPE``; not imported so that torch loads lazily)."""
MAX_FILE_SIZE = "300mb"
PATCH_SCALE = 6
WHOLE_SCALE = 2
ALPHA_MIN, ALPHA_MAX = 0.1, 0.9
DEFAULT_ALPHA_RANGE = (0.3, 0.7)
"""``mixing.DEFAULT_ALPHA_RANGE`` (restated: torch loads lazily; a test checks they agree)."""
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
_CANCEL: dict[str, threading.Event] = {}  # session hash → cancel flag of its running attack (no user data)

CSS = """
.mixdemo-legend {font-size: 0.95rem; padding: 4px 0;}
.proxy-panel {border: 3px solid #d62728 !important; border-radius: 10px;}
.proxy-panel label span, .proxy-panel .label-wrap {color: #d62728 !important; font-weight: 700;}
footer {display: none !important;}
"""

INTRO = """# Mixup-Privacy Lab
Privacy-preserving 3D brain MRI segmentation after Kim *et al.*, *Mixup-Privacy*: the client mixes its scan
with a private reference, **x_mix = α·x + (1−α)·x_ref** (Eq. 2), sends only this proxy to the server's U-Net++,
and unmixes the returned mixed segmentation with the reference labels it alone knows (Eq. 4 or a learned net *D*),
averaging over K references (TTA, Eq. 5–6). All data here are **synthetic phantoms** — no patient data."""


# ------------------------------------------------------------------------------ per-user state
@dataclass
class Session:
    """One browser session's data (held in ``gr.State``, never in module globals)."""

    target: object  # client.Target: the image on the grid and how to write labels back
    truth: np.ndarray | None = None
    source: str = "example"
    centre: tuple[int, int, int] = (72, 96, 80)
    view: dict | None = None  # display volumes of the last run
    out_dir: str | None = None  # folder of the last downloadable segmentation
    extra: dict = field(default_factory=dict)

    @property
    def image(self) -> np.ndarray:
        """The target on the models' grid."""
        return self.target.image  # type: ignore[attr-defined]


def _err(exc: Exception) -> gr.Error:
    """A readable gr.Error for a library exception (never a traceback)."""
    return gr.Error(str(exc) or type(exc).__name__, print_exception=False)


def _progress_fn(progress: gr.Progress):
    return lambda f, msg: progress(float(min(max(f, 0.0), 1.0)), desc=msg)


def _delete_upload(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


# ------------------------------------------------------------------------------ loading targets
def _session_from_files(t1: str, seg: str | None, source: str, progress=None) -> Session:
    from mixdemo.client import default_centre, load_target

    target = load_target(t1, progress=progress)
    truth = None if seg is None else target.truth_from_file(seg)
    return Session(target=target, truth=truth, source=source, centre=default_centre(target.image))


def load_example(name: str | None, progress: gr.Progress = gr.Progress()):
    """Pick an example target (generated on first use)."""
    if not name:
        raise gr.Error("Pick an example from the list.", print_exception=False)
    folders = examples.example_folders(_progress_fn(progress))
    if name not in folders:
        raise gr.Error("Unknown example.", print_exception=False)
    folder = folders[name]
    sess = _session_from_files(str(folder / "t1.nii.gz"), str(folder / "seg.nii.gz"), "example")
    return (sess, *_centre_updates(sess), locator(sess, None), f"Loaded **{name}** (with ground-truth labels).")


def load_upload(path: str | None, progress: gr.Progress = gr.Progress()):
    """Load an uploaded NIfTI (registered to MNI if needed; deleted right after reading; its name is never used)."""
    if not path:
        raise gr.Error("Upload a .nii or .nii.gz file.", print_exception=False)
    from mixdemo.client import ClientError
    from mixdemo.io import ScanError

    try:
        sess = _session_from_files(path, None, "upload", _progress_fn(progress))
    except (ScanError, ClientError, ValueError) as exc:
        raise _err(exc) from None
    finally:
        _delete_upload(path)
    note = f" **Warning:** {sess.target.warning}" if sess.target.warning else ""  # type: ignore[attr-defined]
    return (sess, *_centre_updates(sess), locator(sess, None), "Loaded your scan (no labels yet, so no Dice)." + note)


def load_upload_labels(path: str | None, sess: Session | None):
    """Attach uploaded ground-truth labels to the current (uploaded) scan."""
    if not path:
        return sess, gr.update()
    from mixdemo.client import ClientError
    from mixdemo.io import ScanError

    try:
        if sess is None:
            raise gr.Error("Load a scan first, then its labels.", print_exception=False)
        sess.truth = sess.target.truth_from_file(path)  # type: ignore[attr-defined]
    except (ScanError, ClientError, ValueError) as exc:
        raise _err(exc) from None
    finally:
        _delete_upload(path)
    return sess, "Labels attached: Dice will be shown after the next run."


def _centre_updates(sess: Session):
    return [gr.update(value=int(c), maximum=n - 1) for c, n in zip(sess.centre, GRID_SHAPE)]


# ------------------------------------------------------------------------------ rendering
def locator(sess: Session | None, opacity: float | None, mode: str = "patch"):
    """Whole target, three slices through the centre, with the next patch outlined (click to move)."""
    if sess is None:
        return None
    from mixdemo.client import patch_region

    box = patch_region(sess.centre, sess.image.shape) if mode == "patch" else None
    return viz.montage(sess.image, sess.centre, box=box, scale=WHOLE_SCALE)


def render(sess: Session | None, opacity: float, mode: str = "patch"):
    """All result panels for the session's current view."""
    empty = [None] * 9
    if sess is None:
        return [None, *empty]
    loc = locator(sess, opacity, mode)
    v = sess.view
    if v is None:
        return [loc, *empty]
    region = v["region"]
    if v["mode"] == "patch":
        centre = tuple(s.stop - s.start for s in region)
        centre = tuple(c // 2 for c in centre)
        scale = PATCH_SCALE
    else:
        centre = sess.centre
        scale = WHOLE_SCALE
    tgt = sess.image[region]
    vmax = float(np.percentile(tgt, 99.5)) or 1.0
    m = lambda vol, **kw: viz.montage(vol, centre, opacity=opacity, scale=scale, vmax=vmax, **kw)  # noqa: E731
    unc = v["uncertainty"]
    panels = [
        m(tgt),
        m(v["reference"], overlay=v["reference_labels"]),
        m(v["proxy"]),
        m(v["proxy"], overlay=v["mixed"].astype(np.float32)),
        m(tgt, overlay=v["naive"]),
        m(tgt, overlay=v["learned"]) if v["learned"] is not None else None,
        m(tgt, overlay=v["tta"]),
        m(tgt, heat=unc, heat_max=max(float(unc.max()), 1e-3)),
        m(tgt, overlay=v["truth"]) if v["truth"] is not None else None,
    ]
    return [loc, *panels]


# ------------------------------------------------------------------------------ the round trip
def _dice_rows(truth: np.ndarray, preds: dict[str, np.ndarray]) -> str:
    from mixdemo.metrics import dice_per_class, mean_dice

    rows = ["| unmixing | GM | WM | CSF | mean |", "| --- | --- | --- | --- | --- |"]
    for name, pred in preds.items():
        d = dice_per_class(pred, truth, [1, 2, 3])
        rows.append(f"| {name} | " + " | ".join(f"{d[c]:.3f}" for c in (1, 2, 3)) + f" | **{mean_dice(d):.3f}** |")
    return "\n".join(rows)


def _dice_curves(result, truth: np.ndarray) -> dict[str, list[float]]:
    from mixdemo.metrics import dice_per_class, mean_dice

    curves: dict[str, list[float]] = {}
    for name, stack in (("naive TTA", result.naive), ("learned TTA", result.learned)):
        if stack is None:
            continue
        csum = stack.cumsum(0)
        curves[name] = [
            mean_dice(dice_per_class((csum[k] / (k + 1)).argmax(0).numpy(), truth, [1, 2, 3]))
            for k in range(stack.shape[0])
        ]
    return curves


def run_segmentation(
    sess: Session | None,
    ref_ids: list[str] | None,
    k: float,
    alpha: float,
    random_alpha: bool,
    mode: str,
    opacity: float,
    progress: gr.Progress = gr.Progress(),
):
    """Segment the current target privately (the client and the in-process server)."""
    from mixdemo.client import ClientError, make_key, run_private, unmixing_model
    from mixdemo.weights import WeightsError

    if sess is None:
        raise gr.Error("Pick an example or upload a scan first.", print_exception=False)
    pfn = _progress_fn(progress)
    try:
        alpha_value = None if random_alpha else float(np.clip(alpha, ALPHA_MIN, ALPHA_MAX))
        bank = examples.reference_bank(pfn)
        key = make_key([r.ref_id for r in bank], int(k), alpha=alpha_value, reference_ids=ref_ids or None)
        unmix = unmixing_model()
        run = run_private(sess.image, bank, key, server.segment, unmix, mode=mode, centre=sess.centre, progress=pfn)
    except (ClientError, ValueError, WeightsError) as exc:
        raise _err(exc) from None
    res, region = run.result, run.region
    by_id = {r.ref_id: r for r in bank}
    first = by_id[key.reference_ids[0]]
    tta_labels = res.labels("learned_tta" if res.learned is not None else "naive_tta")
    truth = None if sess.truth is None else sess.truth[region]
    sess.view = {
        "mode": mode,
        "region": region,
        "reference": first.image[region],
        "reference_labels": first.labels[region],
        "proxy": res.proxies[0],
        "mixed": res.mixed_probs[0].numpy().astype(np.float16),
        "naive": res.labels("naive"),
        "learned": res.labels("learned") if res.learned is not None else None,
        "tta": tta_labels,
        "uncertainty": res.uncertainty().astype(np.float32),
        "truth": truth,
    }
    # the download: the TTA labels on the whole grid, written back into the input's space
    if sess.out_dir:
        shutil.rmtree(sess.out_dir, ignore_errors=True)
    sess.out_dir = tempfile.mkdtemp(prefix="mixdemo-seg-")
    out_path = Path(sess.out_dir) / ("segmentation_patch.nii.gz" if mode == "patch" else "segmentation.nii.gz")
    sess.target.save_labels(run.labels("learned_tta"), out_path)  # type: ignore[attr-defined]

    alphas = ", ".join(f"{a:.2f}" for a in sorted(set(key.alphas)))
    what = "learned D" if res.learned is not None else "naive Eq. 4 (no unmixing weights found)"
    summary = (
        f"**Done** — {mode} mode, K = {key.k} reference(s) ({', '.join(key.reference_ids)}), α = {alphas}; "
        f"TTA with {what}. The server received {key.k} proxy array(s) of shape {tuple(res.proxies.shape[1:])}."
    )
    if truth is not None:
        preds = {"naive (Eq. 4), 1 ref": res.labels("naive"), "naive TTA": res.labels("naive_tta")}
        if res.learned is not None:
            preds.update({"learned D, 1 ref": res.labels("learned"), "learned TTA": res.labels("learned_tta")})
        dice_md = _dice_rows(truth, preds)
        curves = _dice_curves(res, truth)
    else:
        dice_md, curves = "_No ground truth: Dice is shown for the examples or when you upload labels._", {}
    fig = viz.dice_vs_k_figure(curves)
    panels = render(sess, opacity, mode)
    return (sess, *panels, dice_md, fig, str(out_path), summary)


def on_centre(sess: Session | None, x: float, y: float, z: float, opacity: float, mode: str):
    """Move the slices / patch centre."""
    if sess is None:
        return (None, *render(None, opacity, mode))
    sess.centre = (int(x), int(y), int(z))
    return (sess, *render(sess, opacity, mode))


def on_click(sess: Session | None, opacity: float, mode: str, evt: gr.SelectData):
    """Click on the locator: the patch (and slices) move to that voxel."""
    if sess is None or evt is None or evt.index is None:
        return (sess, gr.update(), gr.update(), gr.update(), *render(sess, opacity, mode))
    new = viz.click_to_voxel(sess.image.shape, sess.centre, evt.index[0], evt.index[1], scale=WHOLE_SCALE)
    if new is not None:
        sess.centre = new
    return (sess, *[gr.update(value=int(c)) for c in sess.centre], *render(sess, opacity, mode))


# ------------------------------------------------------------------------------ attack lab
class AttackUnavailable(RuntimeError):
    """The attack lab's code or weights are not there yet."""


def _attack(module: str, names: tuple[str, ...]):
    """Import ``mixdemo.attacks.<module>`` lazily and return the first of ``names`` it defines."""
    import importlib

    try:
        mod = importlib.import_module(f"mixdemo.attacks.{module}")
    except ImportError:
        raise AttackUnavailable(f"Not available yet: the attack module mixdemo.attacks.{module} is not installed.") from None
    for name in names:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    raise AttackUnavailable(f"Not available yet: mixdemo.attacks.{module} has no {' / '.join(names)}.")


def _cancel_event(request: gr.Request | None) -> threading.Event:
    key = getattr(request, "session_hash", None) or "default"
    ev = threading.Event()
    _CANCEL[key] = ev
    return ev


def cancel_attack(request: gr.Request):
    """Ask the running attack of this session to stop."""
    ev = _CANCEL.get(getattr(request, "session_hash", None) or "default")
    if ev is not None:
        ev.set()
    return "Cancelling…"


ATTACK_INTRO = """## What could an honest-but-curious server do with what it receives?
Each panel runs an attack on proxies of the kind the server sees, with the truth beside it so that you can judge.
Mixing is not encryption: these attacks are the evidence (the paper's two, plus averaging the K TTA proxies)."""
SEPARATION_MD = """Blind source separation by annealed Langevin dynamics with a score-based prior of 32³ brain patches
(Jayaram & Thickstun 2020): from the **proxy of your last patch-mode run** alone, the server tries to recover both
the target and the reference. MS-SSIM 1 = perfect recovery."""
REID_MD = """The server keeps a gallery of scans it has seen and ranks them by MS-SSIM to a query: does the query's
subject (another scan of the same phantom) come first? Without proxies vs with mixup proxies (F1 and mAP)."""
TTA_MD = """With TTA the server receives K proxies of **one** target in one request: averaging them cancels the
references in part (x̄ = α·x + (1−α)·mean(x_ref)). Defences: a fresh α per mix, or separate requests."""


def _unavailable(exc: Exception, n: int):
    return (*([None] * n), f"**{exc}**")


def run_separation(sess: Session | None, steps: float, request: gr.Request, progress: gr.Progress = gr.Progress()):
    """Langevin source separation on the current proxy (patch mode)."""
    if sess is None or sess.view is None:
        raise gr.Error("Run a segmentation first (patch mode): the attack works on its proxy.", print_exception=False)
    if sess.view["mode"] != "patch":
        raise gr.Error("The separation works on 32³ patches: run a patch-mode segmentation first.", print_exception=False)
    ev = _cancel_event(request)
    try:
        return _separation(sess, int(steps), _progress_fn(progress), ev)
    except AttackUnavailable as exc:
        return _unavailable(exc, 4)
    except (ValueError, RuntimeError) as exc:
        raise _err(exc) from None
    finally:
        _CANCEL.pop(getattr(request, "session_hash", None) or "default", None)


def _separation(sess: Session, steps: int, progress, cancel: threading.Event):
    """Call the attack lab's separation (lazy import) and draw its result beside the truth."""
    raise AttackUnavailable("Not available yet: the Langevin separation (mixdemo.attacks) is still being written.")


def reid_report(progress: gr.Progress = gr.Progress()):
    """Re-identification: F1/mAP bars and a retrieval gallery."""
    try:
        raise AttackUnavailable("Not available yet: the re-identification attack (mixdemo.attacks) is still being written.")
    except AttackUnavailable as exc:
        return _unavailable(exc, 2)


def tta_report(k: float, fresh: bool, split: bool, progress: gr.Progress = gr.Progress()):
    """The TTA-averaging attack with optional defences."""
    try:
        raise AttackUnavailable("Not available yet: the TTA-averaging attack (mixdemo.attacks) is still being written.")
    except AttackUnavailable as exc:
        return _unavailable(exc, 2)


# ------------------------------------------------------------------------------ about
ABOUT = """## The method
1. **Mix (client).** x_mix = α·x + (1−α)·x_ref (Eq. 2): the target x and a reference x_ref from the client's private
   bank, α ∈ [0.1, 0.9] (the models are trained with α ~ U(0.1, 0.9)).
2. **Segment (server).** A 3D U-Net++ S, trained on mixed images against mixed labels (Eq. 3), returns
   ŷ_mix = S(x_mix).
3. **Unmix (client).** Naive: ŷ = (ŷ_mix − (1−α)·y_ref)/α (Eq. 4), or learned: ŷ = D(ŷ_mix, y_ref, α), a small U-Net
   with adaptive instance norm on α.
4. **TTA.** Mix the same target with K references and average the K unmixed maps (Eq. 5–6); their per-voxel variance
   is an uncertainty map.

## Threat model
- The server is **honest-but-curious**: it runs S faithfully and keeps everything it receives — the proxies (with TTA,
  K proxies of one target) and the mixed segmentations it returns.
- The client's **secret key** is its reference scans, their labels and each α. A reference the server can guess (a
  public template, or these public phantoms) weakens the key.
- Mixing is **not encryption**: there is no proof, only attacks that fail or succeed (see the Attack lab).

## What this demo cannot promise
- **In this browser demo the raw scan reaches the app's process**: client and server run in one process here, so the
  operator of this app could see your scan. Real privacy means running the client **on your own machine** and sending
  only proxies: `python -m mixdemo.client --server URL scan.nii.gz -o seg.nii.gz --tta 3`.
- The reference bank of this demo is public (phantoms), so here the key is not secret.
- Models are trained on **synthetic phantoms** from the MNI152 template, not on patients; inputs must be skull-stripped
  T1 scans registered to 1 mm MNI space (144×192×160 grid).
"""

SERVER_API_MD = """## The server endpoint (for developers)
`segment_proxy` receives **only a proxy** and returns mixed probabilities. Request: a `.npy` file (float16/float32,
shape (K, X, Y, Z) or (X, Y, Z), no pickles, no NIfTI header, no names). Response: a `.npy` file of float16 softmax
probabilities shaped (K, 4, X, Y, Z) — background, GM, WM, CSF. The upload is deleted once read.
```python
from gradio_client import Client, handle_file
c = Client("http://127.0.0.1:7860")
out = c.predict(handle_file("proxy.npy"), api_name="/segment_proxy")   # path of the .npy response
```
"""


def results_markdown() -> tuple[str, list[tuple[str, object]]]:
    """Markdown of ``results/*.json`` and the model cards, and plotly figures of the results."""
    from mixdemo.weights import weights_dir

    parts, loaded = [], {}
    for path in sorted(RESULTS_DIR.glob("*.json")):
        try:
            loaded[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    if not loaded:
        parts.append("_No results yet: `results/*.json` appear once `training/evaluate*` have run._")
    for name, data in loaded.items():
        cmd = data.get("command") if isinstance(data, dict) else None
        parts.append(f"### {name}\n" + (f"Command: `{cmd}`\n" if cmd else ""))
    cards = []
    for name in ("segmentation", "unmixing", "baseline", "score"):
        card = weights_dir() / name / "README.md"
        if card.exists():
            text = card.read_text()
            if text.startswith("---"):
                text = text.split("---", 2)[-1]
            cards.append(f"<details><summary>Model card: <b>{name}</b></summary>\n\n{text}\n</details>")
    md = "## Results\n" + "\n".join(parts) + "\n\n## Model cards\n" + ("\n".join(cards) or "_No model cards yet._")
    return md, viz.results_figures(loaded)


# ------------------------------------------------------------------------------ the app
def _server_endpoint(path: str | None, progress: gr.Progress = gr.Progress()) -> str:
    """API ``segment_proxy``: .npy proxies in, .npy mixed probabilities out."""
    from mixdemo.weights import WeightsError

    if not path:
        raise gr.Error("Send a .npy file of proxies.", print_exception=False)
    try:
        return server.segment_file(path, _progress_fn(progress))
    except (server.ProxyError, WeightsError) as exc:
        raise _err(exc) from None


def _server_info() -> dict:
    """API ``server_info``: the wire format and the model's checksum."""
    return server.model_info()


def build_demo() -> gr.Blocks:
    """The whole app (call ``.launch(**launch_kwargs())``)."""
    ref_choices = examples.reference_ids()
    a_default = round(sum(DEFAULT_ALPHA_RANGE) / 2, 2)
    with gr.Blocks(title="Mixup-Privacy Lab", delete_cache=(900, 3600)) as demo:
        sess = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Tabs():
            # ---------------------------------------------------------------- Segment
            with gr.Tab("Segment", id="segment"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        example = gr.Dropdown(examples.example_names(), value=None, label="1 · Example target (phantom with labels)")
                        upload = gr.File(label="…or upload a T1 NIfTI (skull-stripped, 1 mm MNI)", file_types=[".nii", ".gz"], type="filepath")
                        upload_labels = gr.File(label="optional: its labels (NIfTI) for Dice", file_types=[".nii", ".gz"], type="filepath")
                        refs = gr.Dropdown(ref_choices, multiselect=True, value=[], label="2 · References (client's private bank) — empty: K random")
                        k = gr.Slider(1, len(ref_choices), value=3, step=1, label="K references for TTA (used when none is picked)")
                        alpha = gr.Slider(ALPHA_MIN, ALPHA_MAX, value=a_default, step=0.05, label="α, the target's weight in the mix")
                        random_alpha = gr.Checkbox(False, label="draw α at random in [0.3, 0.7] instead")
                        mode = gr.Radio(["patch", "whole"], value="patch", label="3 · Mode: one 32³ patch (fast) or the whole brain")
                        with gr.Accordion("Patch centre / slice position (or click the target)", open=False):
                            cx = gr.Slider(0, GRID_SHAPE[0] - 1, value=72, step=1, label="x (right)")
                            cy = gr.Slider(0, GRID_SHAPE[1] - 1, value=96, step=1, label="y (anterior)")
                            cz = gr.Slider(0, GRID_SHAPE[2] - 1, value=80, step=1, label="z (superior)")
                        run = gr.Button("Segment privately", variant="primary", elem_id="run-btn")
                        status = gr.Markdown("Pick an example or upload a scan.", elem_id="status")
                    with gr.Column(scale=3):
                        with gr.Row():
                            gr.HTML(viz.legend_html())
                            opacity = gr.Slider(0, 1, value=0.55, step=0.05, label="overlay opacity", scale=0, min_width=220)
                        loc = gr.Image(label="Target on the client — click to place the 32³ patch (yellow)", format="png",
                                       interactive=False, elem_id="locator", height=300)
                        with gr.Row(equal_height=True):
                            im_target = gr.Image(label="Target x (client)", format="png", interactive=False)
                            im_ref = gr.Image(label="Reference x_ref #1 + its labels (client's secret)", format="png", interactive=False)
                            im_proxy = gr.Image(label="PROXY x_mix — the only thing the server receives", format="png",
                                                interactive=False, elem_classes=["proxy-panel"], elem_id="proxy")
                        with gr.Row(equal_height=True):
                            im_mixed = gr.Image(label="Server's mixed segmentation ŷ_mix (soft colours)", format="png", interactive=False)
                            im_naive = gr.Image(label="Naive unmixing (Eq. 4), reference #1", format="png", interactive=False)
                            im_learned = gr.Image(label="Learned unmixing D, reference #1", format="png", interactive=False)
                        with gr.Row(equal_height=True):
                            im_tta = gr.Image(label="TTA result (K references, Eq. 6)", format="png", interactive=False, elem_id="tta")
                            im_unc = gr.Image(label="TTA uncertainty (variance across the K)", format="png", interactive=False)
                            im_truth = gr.Image(label="Ground truth", format="png", interactive=False)
                        with gr.Row():
                            with gr.Column():
                                dice = gr.Markdown("_Dice appears here after a run._", elem_id="dice")
                                seg_file = gr.File(label="Segmentation (NIfTI, in the input's space)", interactive=False)
                            plot = gr.Plot(label="Dice against K", elem_id="dice-plot")
                panels = [loc, im_target, im_ref, im_proxy, im_mixed, im_naive, im_learned, im_tta, im_unc, im_truth]
                private = dict(api_visibility="private")

                example.change(load_example, [example], [sess, cx, cy, cz, loc, status], api_name="load_example",
                               concurrency_limit=2, **private)
                upload.upload(load_upload, [upload], [sess, cx, cy, cz, loc, status], api_name="load_upload",
                              concurrency_limit=2, **private)
                upload_labels.upload(load_upload_labels, [upload_labels, sess], [sess, status], api_name="load_labels",
                                     concurrency_limit=2, **private)
                for c in (cx, cy, cz):
                    c.release(on_centre, [sess, cx, cy, cz, opacity, mode], [sess, *panels], api_name="move_centre",
                              concurrency_limit=4, show_progress="hidden", **private)
                opacity.release(render, [sess, opacity, mode], panels, api_name="render", concurrency_limit=4,
                                show_progress="hidden", **private)
                mode.change(render, [sess, opacity, mode], panels, api_name="render_mode", concurrency_limit=4,
                            show_progress="hidden", **private)
                loc.select(on_click, [sess, opacity, mode], [sess, cx, cy, cz, *panels], api_name="click_centre",
                           concurrency_limit=4, show_progress="hidden", **private)
                run.click(run_segmentation, [sess, refs, k, alpha, random_alpha, mode, opacity],
                          [sess, *panels, dice, plot, seg_file, status], api_name="segment",
                          concurrency_limit=1, concurrency_id="compute", **private)

            # ---------------------------------------------------------------- Attack lab
            with gr.Tab("Attack lab", id="attack"):
                _attack_tab(sess)

            # ---------------------------------------------------------------- About
            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)
                md, figs = results_markdown()
                gr.Markdown(md)
                for name, fig in figs[:6]:
                    gr.Plot(fig, label=name)
                gr.Markdown(SERVER_API_MD)
                with gr.Row():
                    proxy_in = gr.File(label="proxy .npy", file_types=[".npy"], type="filepath")
                    probs_out = gr.File(label="mixed probabilities .npy", interactive=False)
                    info = gr.JSON(label="server_info")
                with gr.Row():
                    send = gr.Button("Send to segment_proxy")
                    info_btn = gr.Button("server_info")
                send.click(_server_endpoint, [proxy_in], [probs_out], api_name="segment_proxy",
                           concurrency_limit=1, concurrency_id="compute")
                info_btn.click(_server_info, None, [info], api_name="server_info", concurrency_limit=4)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def _attack_tab(sess: gr.State) -> None:
    """The Attack lab: separation, re-identification, TTA averaging (lazy calls into mixdemo.attacks)."""
    gr.Markdown(ATTACK_INTRO)
    with gr.Accordion("1 · Langevin source separation of the current proxy", open=True):
        gr.Markdown(SEPARATION_MD)
        with gr.Row():
            steps = gr.Slider(10, 500, value=100, step=10, label="Langevin steps", scale=2)
            go = gr.Button("Run the separation", variant="primary", scale=1)
            stop = gr.Button("Cancel", variant="stop", scale=1)
        with gr.Row():
            rec_t = gr.Image(label="recovered target", format="png", interactive=False)
            true_t = gr.Image(label="true target", format="png", interactive=False)
        with gr.Row():
            rec_r = gr.Image(label="recovered reference", format="png", interactive=False)
            true_r = gr.Image(label="true reference", format="png", interactive=False)
        sep_md = gr.Markdown(elem_id="separation-status")
        ev = go.click(run_separation, [sess, steps], [rec_t, true_t, rec_r, true_r, sep_md], api_name="attack_separation",
                      concurrency_limit=1, concurrency_id="compute", api_visibility="private")
        stop.click(cancel_attack, None, [sep_md], api_name="attack_cancel", concurrency_limit=None,
                   api_visibility="private", cancels=[ev])
    with gr.Accordion("2 · Re-identification: can the server tell whose scan a proxy is?", open=True):
        gr.Markdown(REID_MD)
        reid_btn = gr.Button("Run the re-identification check")
        with gr.Row():
            reid_plot = gr.Plot(label="F1 / mAP: no proxy vs mixup")
            reid_gallery = gr.Gallery(label="retrieval: query and its top matches", columns=4, height=260)
        reid_md = gr.Markdown()
        reid_btn.click(reid_report, None, [reid_plot, reid_gallery, reid_md], api_name="attack_reid",
                       concurrency_limit=1, concurrency_id="compute", api_visibility="private")
    with gr.Accordion("3 · Averaging the K TTA proxies, and defences", open=True):
        gr.Markdown(TTA_MD)
        with gr.Row():
            fresh = gr.Checkbox(False, label="defence: a fresh α per mix")
            split = gr.Checkbox(False, label="defence: split the K proxies over separate requests")
            kk = gr.Slider(2, 6, value=4, step=1, label="K")
        tta_btn = gr.Button("Run the TTA-averaging attack")
        with gr.Row():
            tta_img = gr.Image(label="average of the K proxies vs the target", format="png", interactive=False)
            tta_plot = gr.Plot(label="MS-SSIM to the target")
        tta_md = gr.Markdown()
        tta_btn.click(tta_report, [kk, fresh, split], [tta_img, tta_plot, tta_md], api_name="attack_tta",
                      concurrency_limit=1, concurrency_id="compute", api_visibility="private")


def launch_kwargs() -> dict:
    """Options for ``demo.launch`` (theme and CSS moved to ``launch`` in Gradio 6)."""
    return dict(
        theme=gr.themes.Soft(primary_hue="indigo"),
        css=CSS,
        max_file_size=MAX_FILE_SIZE,
        ssr_mode=False,
        show_error=True,
        footer_links=["api"],
        run_history=False,
        state_session_capacity=64,
    )
