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

import contextlib
import datetime
import functools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.state_holder import SessionState, StateHolder

from mixdemo import examples, gatekeeper, oneshot, server, viz
from mixdemo.weights import weights_dir  # no torch at import: the app starts before it loads

log = logging.getLogger(__name__)

GRID_SHAPE = (144, 192, 160)
"""The models' grid (``mixdemo.phantoms.GRID_SHAPE``; not imported so that torch loads lazily)."""
MAX_FILE_SIZE = "300mb"
PATCH_SCALE = 5
WHOLE_SCALE = 2
ALPHA_MIN, ALPHA_MAX = 0.1, 0.9
DEFAULT_ALPHA_RANGE = (0.3, 0.5)
"""``mixing.DEFAULT_ALPHA_RANGE`` (restated: torch loads lazily; a test checks they agree)."""
MIRROR_BY_DEFAULT = False
"""``mixing.MIRROR_BY_DEFAULT`` (restated likewise)."""
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
_RUNNING: dict[str, tuple[str, threading.Event]] = {}
"""Session hash → (what, stop flag) of the session's running long job (no user data): set by the separation's
Cancel button and by leaving the page (:func:`leave_session`)."""
_WAITING: dict[str, threading.Event] = {}
"""Session hash → stop flag of the session's separation asked for and still waiting in the compute queue (no user
data): filed at the click (:func:`queue_separation`), set by Cancel, taken up by the run when its turn comes."""


def upload_path_only(component: gr.File) -> gr.File:
    """``component`` (a ``gr.File`` of ``type="filepath"``, no ``file_types``) handing its handler the upload's path
    without the empty temporary file that Gradio 6's own preprocessing makes in its cache for every upload and never
    removes (``File._process_single_file``: a ``NamedTemporaryFile(delete=False)`` it does not use). Patched on the
    instance: a subclass would make Gradio write a ``.pyi`` stub beside this module when it is imported."""
    from gradio.utils import NamedString

    if component.type == "filepath" and not component.file_types:
        component._process_single_file = lambda f: NamedString(f.path)  # type: ignore[method-assign]
    return component


CSS = """
.mixdemo-legend {font-size: 0.95rem; padding: 4px 0;}
.result-panel {gap: 2px !important;}
.panel-caption {font-size: 0.85rem; font-weight: 600; line-height: 1.2; min-height: 2.4em;}
.proxy-panel {border: 3px solid #d62728; border-radius: 10px; padding: 4px;}
.proxy-panel .panel-caption {color: #d62728;}
.dark .proxy-panel .panel-caption {color: #f87171;}  /* #d62728 is 3.8:1 on the dark theme's background */
footer {display: none !important;}
#dice table {font-size: 0.85rem;}
#dice th, #dice td {padding: 4px 6px !important;}
#dice th:not(:first-child), #dice td:not(:first-child) {white-space: nowrap;}
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

    @property
    def image(self) -> np.ndarray:
        """The target on the models' grid."""
        return self.target.image  # type: ignore[attr-defined]


SESSION_TTL_S = 2 * 3600
"""A session's volumes are dropped this long after its last update."""

RENDERINGS_MAX_AGE_S, RENDERINGS_SWEEP_S = 900, 300
"""Gradio writes each view it serves (the PNG slices of a scan, its proxies and segmentations) into its cache;
every ``RENDERINGS_SWEEP_S`` it deletes those older than ``RENDERINGS_MAX_AGE_S``, so a view of an uploaded scan
stays on the server 15 to 20 minutes, long after the page has loaded it (the page's own defaults are kept)."""


def _drop_session(sess: Session | None) -> None:
    """When Gradio deletes a session's state: remove its downloadable output too."""
    if sess is not None and sess.out_dir:
        shutil.rmtree(sess.out_dir, ignore_errors=True)


def _err(exc: Exception) -> gr.Error:
    """A readable gr.Error for a library exception (never a traceback)."""
    return gr.Error(str(exc) or type(exc).__name__, print_exception=False)


class PageLeft(RuntimeError):
    """The page whose job this is was closed or reloaded: the job stopped at its next step."""


PAGE_LEFT = "Stopped: the page that asked for this was closed or reloaded."


def _progress_fn(progress: gr.Progress, stop: threading.Event | None = None):
    """A ``progress(fraction, message)`` for the library, onto Gradio's bar; with ``stop``, each report first raises
    :class:`PageLeft` once the flag is set (the job stops at its next step)."""
    def report(fraction: float, message: str) -> None:
        if stop is not None and stop.is_set():
            raise PageLeft(PAGE_LEFT)
        progress(float(min(max(fraction, 0.0), 1.0)), desc=message)
    return report


def _session_key(request: gr.Request | None) -> str | None:
    """The session's hash, or None for a call that has none (a direct call, not through Gradio's queue): such a
    call's job is nobody else's to stop, so it is never keyed by a name another call could share or send."""
    return getattr(request, "session_hash", None) or None


@contextlib.contextmanager
def session_job(request: gr.Request | None, what: str) -> Iterator[threading.Event]:
    """Register the session's running job ``what`` for the time of the block; yields its stop flag (a call without
    a session hash gets a flag that no other call can reach: :func:`leave_session` and :func:`cancel_attack` find
    jobs by their session's hash alone)."""
    key = _session_key(request)
    waited = _WAITING.pop(key, None) if key is not None and what == SEPARATION_JOB else None
    entry = (what, waited or threading.Event())  # a Cancel pressed while it waited: already set
    if key is None:
        yield entry[1]
        return
    _RUNNING[key] = entry
    try:
        yield entry[1]
    finally:
        if _RUNNING.get(key) is entry:
            del _RUNNING[key]


def leave_session(request: gr.Request) -> None:
    """``Blocks.unload``: the session's page was closed or reloaded, so its running job (a private segmentation, a
    separation, a proxy sent to ``segment_proxy``) stops at its next step instead of holding the compute queue for
    a result nobody will see."""
    entry = _RUNNING.get(_session_key(request))  # a job without a session hash is never filed: None
    if entry is not None:
        entry[1].set()
        log.info("a page was left during its %s: stopping it", entry[0])
    if (waiting := _WAITING.get(_session_key(request) or "")) is not None:  # not to run when its turn comes (the
        waiting.set()  # run takes the flag up; a session dropped before that, its flag with it: _drop_closed_pages)


def _delete_upload(path: str | None) -> None:
    if path:
        server.delete_upload(path)


UPLOAD_REFUSED = "Could not load this file"
"""How the status line begins when an upload is refused."""
NOT_UPLOADED = "This file was not uploaded here: upload the file itself."
"""Why a request naming a file of the app's own (a view, a figure: ``oneshot.is_foreign``) is refused."""


def _refused_upload(message: str, outputs_before: int, outputs_after: int = 0):
    """A refused upload: a warning and the status line say why, the upload box is emptied for the next try (an
    error would leave it stuck on a file already deleted), and ``outputs_before`` outputs (the session, and
    whatever shows the scan loaded before) and ``outputs_after`` (the series field) are left as they are."""
    gr.Warning(message)
    return (*[gr.skip()] * outputs_before, f"**{UPLOAD_REFUSED}:** {message}", None, *[gr.skip()] * outputs_after)


# ------------------------------------------------------------------------------ loading targets
def _session_from_files(t1: str, seg: str | None, source: str, progress=None, series: int | None = None) -> Session:
    from mixdemo.client import default_centre, load_target

    target = load_target(t1, progress=progress, series=series)
    truth = None if seg is None else target.truth_from_file(seg)
    return Session(target=target, truth=truth, source=source, centre=default_centre(target.image))


def load_example(name: str | None, previous: Session | None = None, progress: gr.Progress = gr.Progress()):
    """Pick an example target (generated on first use); the ``previous`` session's download goes once it is loaded."""
    if not name:
        raise gr.Error("Pick an example from the list.", print_exception=False)
    folders = examples.example_folders(_progress_fn(progress))
    if name not in folders:
        raise gr.Error("Unknown example.", print_exception=False)
    folder = folders[name]
    sess = _session_from_files(str(folder / "t1.nii.gz"), str(folder / "seg.nii.gz"), "example")
    _drop_session(previous)
    return (sess, *_centre_updates(sess), locator(sess, None), f"Loaded **{name}** (with ground-truth labels).")


def load_upload(path: str | None, series: float | None = 0, previous: Session | None = None,
                progress: gr.Progress = gr.Progress()):
    """Load an uploaded NIfTI or zipped DICOM series (registered to MNI if needed; deleted right after reading; its
    name is never used, nor any DICOM header field); ``series`` (1, 2, ...): which series of a whole study's
    export, as its refusal numbers them (0 or None: the upload holds one; a NIfTI upload ignores it). A scan loaded
    sets the series field back to 0, so that a number picked for one study does not refuse the next upload, and
    the ``previous`` session's download goes (a refused upload leaves that session as it was)."""
    if not path:
        return _refused_upload("Upload a .nii or .nii.gz file, or a .zip of one DICOM series.", 5, 1)
    if oneshot.is_foreign(path):  # a file of the app's (a view, a figure) named by a request: not read, not deleted
        return _refused_upload(NOT_UPLOADED, 5, 1)
    from mixdemo.client import ClientError
    from mixdemo.dicom import is_series_input
    from mixdemo.io import ScanError

    try:
        is_dicom = is_series_input(path)
        number = int(series) if series and is_dicom else None
        sess = _session_from_files(path, None, "upload", _progress_fn(progress), series=number)
    except (ScanError, ClientError, ValueError) as exc:
        return _refused_upload(str(exc) or type(exc).__name__, 5, 1)
    finally:
        _delete_upload(path)
    _drop_session(previous)
    note = f" **Warning:** {sess.target.warning}" if sess.target.warning else ""  # type: ignore[attr-defined]
    status = (f"Loaded your scan: {what_was_read(sess.target)} (its upload is deleted; no labels yet, so no Dice)."  # type: ignore[arg-type]
              + (DICOM_SEG_NOTE if is_dicom else "") + note)
    return (sess, *_centre_updates(sess), locator(sess, None), status, None, 0)


UPLOAD_LOADING = "Reading your upload…"
"""The status line while an upload loads (set in the browser, before the server answers)."""

DICOM_SEG_NOTE = (" Its segmentation downloads as NIfTI: the app keeps no header field of a series, and a DICOM SEG "
                  "needs them; the command-line client writes one on your machine (`-o seg.dcm`).")


def what_was_read(target) -> str:  # noqa: ANN001 - a mixdemo.client.Target
    """The grid a scan was read on and what became of it, so a user can check the file (or the DICOM series)
    was the one meant: e.g. "a 176×256×256 grid of 1.2×1×1 mm voxels, registered to the models' grid"."""
    from nibabel.affines import voxel_sizes
    from nibabel.orientations import aff2axcodes

    zooms = voxel_sizes(np.asarray(target.scan.source_affine))
    grid = "×".join(str(int(n)) for n in target.scan.source_shape)
    size = "×".join(f"{z:.3g}" for z in zooms)
    axes = aff2axcodes(np.asarray(target.scan.source_affine))
    if target.prepared is None and axes != ("R", "A", "S"):  # the same grid, its voxels stored in another order
        fate = f"on the models' grid once its voxel axes, stored {','.join(map(str, axes))} in the file, are read as R,A,S"
    elif target.prepared is None:
        fate = "already on the models' grid"
    elif target.prepared.registered:
        fate = "registered to the models' MNI grid"
    else:  # in MNI space already, its voxels elsewhere: resampled by its header's affine, no registration
        fate = "in MNI space, resampled onto the models' grid"
    return f"a {grid} grid of {size} mm voxels, {fate}"


def load_upload_labels(path: str | None, sess: Session | None):
    """Attach uploaded ground-truth labels to the current (uploaded) scan."""
    if not path:
        return sess, gr.update(), gr.update()
    if oneshot.is_foreign(path):
        return _refused_upload(NOT_UPLOADED, 1)
    from mixdemo.client import ClientError
    from mixdemo.io import ScanError

    try:
        if sess is None:
            return _refused_upload("Load a scan first, then its labels.", 1)
        classes = server.model_classes()
        sess.truth = sess.target.truth_from_file(path, check=lambda labels: check_label_values(labels, classes))  # type: ignore[attr-defined]
    except (ScanError, ClientError, ValueError) as exc:
        return _refused_upload(str(exc) or type(exc).__name__, 1)
    finally:
        _delete_upload(path)
    return sess, "Labels attached: Dice will be shown after the next run.", None


DICE_PLACEHOLDER = "_Dice appears here after a run._"


def results_of(sess: Session | None):
    """After a scan loads: the result panels (all but the locator), the Dice table and plot, the download and the
    K mixes emptied when the current session has not run yet (a new scan: the last scan's results must not stay
    beside it, nor its download); left as they are otherwise (a refused upload keeps the scan it left loaded)."""
    n = RESULT_OUTPUTS
    if sess is not None and sess.view is not None:
        return (gr.skip(),) * n
    return (*[None] * (n - 4), DICE_PLACEHOLDER, gr.update(value=None, visible=False), None, [])


def example_menu_of(sess: Session | None):
    """After an upload: the example menu emptied when the session now holds the upload, so that it names no example
    that is not loaded and a pick of the example it named loads it again (that pick changed no value: no event ran);
    left as it is after a refused upload (the scan loaded before stays)."""
    if sess is not None and sess.source != "example":
        return gr.update(value=None)
    return gr.skip()


RESULT_OUTPUTS = 13
"""How many outputs :func:`results_of` sets: 9 panels, the Dice table and plot, the download, the K mixes."""


def check_label_values(truth: np.ndarray, class_names: list[str]) -> None:
    """ValueError naming the label values that are not the model's classes (0 … N − 1: labels of another scheme,
    scored as they are, would give Dice 0 everywhere without saying why)."""
    unknown = sorted(int(v) for v in np.unique(truth) if v >= len(class_names))
    if unknown:
        shown = ", ".join(map(str, unknown[:8])) + (" …" if len(unknown) > 8 else "")
        scheme = ", ".join(f"{i} {n}" for i, n in enumerate(class_names))
        raise ValueError(f"The labels hold values {shown}, which are not the model's classes ({scheme}): give a label "
                         "map in that scheme.")


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
    m = lambda vol, **kw: viz.montage(vol, centre, opacity=opacity, scale=scale, vmax=vmax, grid=True, **kw)  # noqa: E731
    unc = v["uncertainty"]
    panels = [
        m(tgt),
        m(v["reference"], overlay=v["reference_labels"]),
        m(v["proxy"]),
        m(v["proxy"], overlay=v["mixed"].astype(np.float32)),
        m(tgt, overlay=v["naive"]),
        m(tgt, overlay=v["learned"]) if v["learned"] is not None else None,
        m(tgt, overlay=v["tta"]),
        m(tgt, heat=unc, heat_max=max(float(np.percentile(unc, 99.5)), 1e-3)),
        m(tgt, overlay=v["truth"]) if v["truth"] is not None else None,
    ]
    return [loc, *panels]


# ------------------------------------------------------------------------------ the round trip
OUTPUT_MAX_AGE_S = SESSION_TTL_S
"""A download folder this old is removed at the next run of any session: its session has gone (its state lives
:data:`SESSION_TTL_S` after its last run), so only a folder no callback removed (a killed process's) lasts that long."""


def _outputs_root() -> Path:
    """The folder of the sessions' downloads, inside Gradio's cache."""
    return oneshot.gradio_cache_dir() / "mixdemo-outputs"


def _output_dir() -> str:
    """A fresh folder for one downloadable segmentation; folders older than :data:`OUTPUT_MAX_AGE_S` are removed.

    The folder lies inside Gradio's cache, so Gradio serves this one copy (it makes none of its own)
    and the session's ``_drop_session`` (or the next run) really deletes the download."""
    return str(oneshot.fresh_subdir(_outputs_root(), OUTPUT_MAX_AGE_S))


def session_download(component: gr.File) -> gr.File:
    """``component`` (the session's download) serving the files of :func:`_output_dir` where they lie without
    filing them for Gradio's sweep of the views (``delete_cache``, :data:`RENDERINGS_MAX_AGE_S`), which deleted a
    download 15 to 20 minutes after its run while its session and page lived (its link then answered 403): the
    download goes with its session (:func:`_drop_session`), its next run or scan, or when the server stops
    (:func:`remove_served_downloads`, as Gradio's own stop deletes what it filed). Patched on the instance, as in
    :func:`upload_path_only`; the folders it served (random names, no data) are kept on it, ``served_folders``."""
    from gradio.utils import abspath, is_in_or_equal

    filed, filed_async = component.move_resource_to_block_cache, component.async_move_resource_to_block_cache
    served: set[str] = set()
    component.served_folders = served  # type: ignore[attr-defined]

    def ours(path) -> str | None:  # noqa: ANN001 - str | Path | None
        full = None if path is None else str(abspath(path))
        if full is None or not is_in_or_equal(full, str(_outputs_root())):
            return None
        served.difference_update([f for f in served if not os.path.isdir(f)])  # those gone with their sessions
        served.add(str(Path(full).parent))
        return full

    def move(path):  # noqa: ANN001, ANN202
        return ours(path) or filed(path)

    async def move_async(path):  # noqa: ANN001, ANN202
        return ours(path) or await filed_async(path)

    component.move_resource_to_block_cache = move  # type: ignore[method-assign]
    component.async_move_resource_to_block_cache = move_async  # type: ignore[method-assign]
    return component


def _dice_rows(truth: np.ndarray, preds: dict[str, np.ndarray], class_names: list[str]) -> str:
    """A Markdown table of each prediction's Dice per class (``class_names``, background first) and their mean."""
    from mixdemo.metrics import dice_per_class, mean_dice

    classes = list(range(1, len(class_names)))
    present = classes_in(truth, classes)
    if not present:
        return (f"_No {', '.join(class_names[1:])} in this region's ground truth (outside the brain?): Dice is not "
                "defined here. Move the patch into the brain._")
    rows = ["| unmixing | " + " | ".join(class_names[1:]) + " | mean |", "| --- |" + " --- |" * (len(classes) + 1)]
    for name, pred in preds.items():
        d = dice_per_class(pred, truth, classes)
        cells = [f"{d[c]:.3f}" if c in present else "—" for c in classes]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | **{mean_dice({c: d[c] for c in present}):.3f}** |")
    if len(present) < len(classes):
        absent = ", ".join(class_names[c] for c in classes if c not in present)
        rows.append(f"\n_—: no {absent} in this region's ground truth, so not scored; the mean is over the others._")
    return "\n".join(rows)


def classes_in(truth: np.ndarray, classes: list[int]) -> list[int]:
    """The ``classes`` that ``truth`` holds (Dice of a class absent from it is not defined: 1 by the metric's
    convention where the prediction has none either, which would read as a perfect score)."""
    held = set(np.unique(truth).tolist())
    return [c for c in classes if c in held]


def _dice_curves(result, truth: np.ndarray) -> dict[str, list[float]]:
    """Mean Dice of the TTA average over the first k mixes, k = 1 … K, labelled as the table's rows are (background
    outside the target's brain), so the curve ends at the table's TTA row and starts at its one-reference row."""
    from mixdemo.metrics import dice_per_class, mean_dice

    curves: dict[str, list[float]] = {}
    for name, stack in (("naive TTA", result.naive), ("learned TTA", result.learned)):
        if stack is None:
            continue
        csum = stack.cumsum(0)
        classes = classes_in(truth, list(range(1, stack.shape[1])))  # the table's scored classes
        if not classes:
            return {}
        curves[name] = [mean_dice(dice_per_class(result.labels_of(csum[k] / (k + 1)), truth, classes))
                        for k in range(stack.shape[0])]
    return curves


def run_segmentation(
    sess: Session | None,
    ref_ids: list[str] | None,
    k: float,
    alpha: float,
    random_alpha: bool,
    mode: str,
    opacity: float,
    unmixing: str | None = None,
    mirror: bool | None = None,
    request: gr.Request | None = None,
    progress: gr.Progress = gr.Progress(),
):
    """Segment the current target privately (the client and the in-process server) with the client
    network D ``unmixing`` (a model folder; None: :func:`mixdemo.weights.unmixing_name`), the target mirrored in every
    second mix with ``mirror`` (None: :data:`mixdemo.mixing.MIRROR_BY_DEFAULT`). One step of
    :func:`mixdemo.inference.reusing_freed_memory`: the memory the run freed is handed back once it is answered.
    Stops at its next step if the page is left (:func:`leave_session`)."""
    from mixdemo.inference import reusing_freed_memory  # torch loads lazily

    with session_job(request, "private segmentation") as stop, reusing_freed_memory():
        try:
            return _segmentation(sess, ref_ids, k, alpha, random_alpha, mode, opacity, unmixing,
                                 MIRROR_BY_DEFAULT if mirror is None else bool(mirror), _progress_fn(progress, stop))
        except PageLeft as exc:
            raise _err(exc) from None


def _segmentation(sess: Session | None, ref_ids: list[str] | None, k: float, alpha: float, random_alpha: bool,
                  mode: str, opacity: float, unmixing: str | None, mirror: bool,
                  pfn: Callable[[float, str], None]):
    """:func:`run_segmentation`'s work, reporting to ``pfn``."""
    from mixdemo.client import (SELF_REFERENCE, ClientError, check_classes, copies_of_target, make_key, run_private,
                                unmixing_model)
    from mixdemo.weights import WeightsError, unmixing_name

    if sess is None:
        raise gr.Error("Pick an example or upload a scan first.", print_exception=False)
    try:
        alpha_value = None if random_alpha else float(np.clip(alpha, ALPHA_MIN, ALPHA_MAX))
        bank = examples.reference_bank(pfn)
        if copies := copies_of_target(sess.image, bank):  # an upload of a bank scan: never its own reference
            if set(copies) & set(ref_ids or ()):
                raise ClientError(f"Reference {', '.join(sorted(set(copies) & set(ref_ids)))} is this scan itself "
                                  f"({SELF_REFERENCE}): choose another.")
            bank = [r for r in bank if r.ref_id not in copies]
            gr.Warning(f"Reference {', '.join(copies)} is this scan itself, left out ({SELF_REFERENCE}).")
        key = make_key([r.ref_id for r in bank], int(k), alpha=alpha_value, reference_ids=ref_ids or None, mirror=mirror)
        unmix = unmixing_model(name=unmixing or None)
        class_names = server.model_classes()
        check_classes(class_names, unmix, bank)  # a D trained for another S's classes: said, not a shape error
        serve = lambda proxies: server.segment(proxies, lambda f, m: pfn(0.05 + 0.8 * f, m))  # noqa: E731
        run = run_private(sess.image, bank, key, serve, unmix, mode=mode, centre=sess.centre, progress=pfn)
    except (ClientError, ValueError, WeightsError) as exc:
        raise _err(exc) from None
    res, region = run.result, run.region
    log.info("private segmentation: mode=%s, K=%d, mirrored mixes %d",  # no voxel data, no file names
             mode, key.k, len(key.mirrored_mixes))
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
        "alpha": float(key.alphas[0]),
        "reference_id": first.ref_id,
    }
    # the download: the TTA labels on the whole grid, written back into the input's space
    if sess.out_dir:
        shutil.rmtree(sess.out_dir, ignore_errors=True)
    sess.out_dir = _output_dir()
    out_path = Path(sess.out_dir) / ("segmentation_patch.nii.gz" if mode == "patch" else "segmentation.nii.gz")
    target = sess.target  # type: ignore[attr-defined]
    target.save_labels(run.scores("learned_tta") if target.needs_scores else run.labels("learned_tta"), out_path)

    alphas = ", ".join(f"{a:.2f}" for a in sorted(set(key.alphas)))
    what = f"learned D (`{unmixing or unmixing_name()}`)" if res.learned is not None else "naive Eq. 4 (no unmixing weights found)"
    summary = (
        f"**Done** — {mode} mode, K = {key.k} reference(s) ({', '.join(key.reference_ids)}), α = {alphas}"
        f"{_mirrored_text(key)}; TTA with {what}. The server received {key.k} proxy array(s) of shape {tuple(res.proxies.shape[1:])}."
    )
    if warning := getattr(getattr(sess, "target", None), "warning", None):  # the upload's, kept beside its result
        summary += f" **Warning:** {warning}"
    if truth is not None:
        preds = {"naive (Eq. 4), 1 ref": res.labels("naive"), "naive TTA": res.labels("naive_tta")}
        if res.learned is not None:
            preds.update({"learned D, 1 ref": res.labels("learned"), "learned TTA": res.labels("learned_tta")})
        dice_md = _dice_rows(truth, preds, class_names)
        curves = _dice_curves(res, truth)
    else:
        dice_md, curves = "_No ground truth: Dice is shown for the examples or when you upload labels._", {}
    # no labels, no curves: the plot is hidden rather than drawn as empty axes
    plot = gr.update(value=viz.dice_vs_k_figure(curves, class_names=class_names), visible=True) if curves else gr.update(value=None, visible=False)
    panels = render(sess, opacity, mode)
    return (sess, *panels, dice_md, plot, str(out_path), summary, _mix_gallery(sess, bank, key, res.proxies, opacity))


def _mirrored_text(key) -> str:  # noqa: ANN001 - a MixKey
    """What the summary says of the key's mirrored mixes (nothing when none is)."""
    mixes = key.mirrored_mixes
    if not mixes:
        return ""
    return f", the target mirrored in mix{'es' if len(mixes) > 1 else ''} {', '.join(str(k + 1) for k in mixes)}"


def _mix_gallery(sess: Session, bank, key, proxies: np.ndarray, opacity: float) -> list[tuple[np.ndarray, str]]:
    """(reference k with its labels, proxy k) for each of the K mixes, through the region's centre."""
    v = sess.view
    region = v["region"]
    patch = v["mode"] == "patch"
    centre = tuple((s.stop - s.start) // 2 for s in region) if patch else sess.centre
    scale = PATCH_SCALE if patch else 1
    by_id = {r.ref_id: r for r in bank}
    items = []
    for k, (ref_id, a) in enumerate(zip(key.reference_ids, key.alphas)):
        ref = by_id[ref_id]
        items.append((viz.montage(ref.image[region], centre, overlay=ref.labels[region], opacity=opacity, scale=scale,
                                  grid=True), f"reference {k + 1}: {ref_id}"))
        mirrored = ", target mirrored" if key.is_mirrored(k) else ""
        items.append((viz.montage(proxies[k], centre, scale=scale, grid=True), f"proxy {k + 1} (α = {a:.2f}{mirrored}) — sent"))
    return items


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


SEPARATION_JOB = "separation"


def queue_separation(request: gr.Request) -> None:
    """At the click, before the separation waits in the compute queue: file its stop flag (:data:`_WAITING`), so that a
    Cancel pressed while it waits stops it before it starts (Gradio's queue would run it in full)."""
    if (key := _session_key(request)) is not None:
        _WAITING[key] = threading.Event()


SEPARATION_CANCELLED_BEFORE = "_Cancelled before it started: the separation did not run._"


def cancel_attack(request: gr.Request):
    """Ask this session's separation to stop: the running one (a partial result), or the one waiting in the queue
    (it will not run)."""
    entry = _RUNNING.get(_session_key(request))  # a job without a session hash is never filed: None
    if entry is not None and entry[0] == SEPARATION_JOB:
        entry[1].set()
        return "Cancelling…"
    if (waiting := _WAITING.get(_session_key(request) or "")) is not None:
        waiting.set()
        return SEPARATION_CANCELLED_BEFORE
    gr.Info("No separation is running.")  # the last result stays
    return gr.skip()


ATTACK_INTRO = """## What could an honest-but-curious server do with what it receives?
Each panel runs an attack on proxies of the kind the server sees, with the truth beside it so that you can judge.
Mixing is not encryption: these attacks are the evidence (the paper's two, plus averaging the K TTA proxies,
undoing the mix with a bank the server knows, and a network the server trained to invert proxies)."""
SEPARATION_MD = """Blind source separation by annealed Langevin dynamics with a score-based prior of 32³ brain patches
(Jayaram & Thickstun 2020): from the **proxy of your last patch-mode run** alone, the server tries to recover both
the target and the reference. MS-SSIM 1 = perfect recovery. The chains anneal from the prior's largest noise level;
above σ = 3 its score is the Gaussian that brain patches blur into (mean and variance of the reference bank's)."""
REID_MD = """The server keeps a gallery of scans it has seen and ranks them by MS-SSIM to a query: does the query's
subject (another scan of the same phantom) come first? Without proxies vs with mixup proxies (F1 and mAP)."""
SEPARATION_STEPS = 10
"""The separation panel's Langevin steps per noise level: those of the privacy evaluation's tables
(``training.evaluate_privacy``, ``Config.steps_per_level``)."""
KNOWN_BANK_MD = """The key is the reference. This demo's bank is public, so a server can hold it too: it tries each
bank scan and α on the **proxy of your last run** and keeps the pair whose unmixed image x̂ = (x_mix − (1−α)·r)/α looks
least like a bank scan's deviation from the bank's mean (`mixdemo.attacks.known_bank`). A private bank defeats it."""
INVERSION_MD = """A server needs neither the bank nor α for this one: it trains a network on scans of its own, mixed as
clients mix, to take a proxy back to its target (`mixdemo.attacks.inversion`; trained by `python -m
training.train_inversion` on phantom subjects outside this demo's bank). It inverts the **proxy of your last run**, at
half resolution (a whole-volume run suits it best; a 32³ patch gives it little context)."""
TTA_MD = """With TTA the server receives K proxies of **one** target in one request: averaging them cancels the
references in part (x̄ = α·x + (1−α)·mean(x_ref)). Defences the client can try: a fresh α per mix, which does not help
(measured in `results/privacy.json`: the averaged proxies are re-identified no less); separate requests, which do (the
server must first re-link the K proxies among others), though each proxy can still be attacked on its own."""


def _unavailable(exc: Exception, n: int):
    return (*([None] * n), f"**{exc}**")


def run_separation(sess: Session | None, steps: float, known_alpha: bool, request: gr.Request,
                   progress: gr.Progress = gr.Progress()):
    """Langevin source separation on the current proxy (patch mode)."""
    with session_job(request, SEPARATION_JOB) as cancel:  # Cancel and leaving the page: a partial result
        if cancel.is_set():  # cancelled while it waited in the queue: nothing run, the last result stays
            return (gr.skip(),) * 4 + (SEPARATION_CANCELLED_BEFORE,)
        if sess is None or sess.view is None:
            raise gr.Error("Run a segmentation first (patch mode): the attack works on its proxy.", print_exception=False)
        if sess.view["mode"] != "patch":
            raise gr.Error("The separation works on 32³ patches: run a patch-mode segmentation first.",
                           print_exception=False)
        try:
            return _separation(sess, int(steps), _progress_fn(progress), cancel, bool(known_alpha))
        except AttackUnavailable as exc:
            return _unavailable(exc, 4)
        except (ValueError, RuntimeError) as exc:
            raise _err(exc) from None


def _attack_network(name: str, module: str, cls: str, what: str, train_module: str):
    """An attack's network from ``weights/<name>``, on the GPU when present: AttackUnavailable saying how to train it
    when absent, with the weights' own message when they are there but corrupt."""
    from mixdemo.models import pick_device
    from mixdemo.weights import WeightsError, WeightsNotFound, load_model

    _attack(module, (cls,))
    try:
        return load_model(name, device=str(pick_device()))
    except WeightsNotFound:
        raise AttackUnavailable(f"Not available yet: {what} (weights/{name}) has not been trained; "
                                f"run python -m {train_module}.") from None
    except WeightsError as exc:
        raise AttackUnavailable(str(exc)) from None


def _score_model():
    """The attack's score prior from ``weights/score`` (:func:`_attack_network`)."""
    return _attack_network("score", "score", "ScoreNet", "the score prior", "training.train_score")


@functools.lru_cache(maxsize=1)
def _population_tail() -> tuple[float, float]:
    """The Gaussian tail of the separation's prior above σ = 3, from the public reference bank's brain patches."""
    population_tail = _attack("bss", ("population_tail",))
    bank = examples.reference_bank()
    return population_tail([r.image for r in bank], [r.labels for r in bank])


def _separation(sess: Session, steps: int, progress, cancel: threading.Event, known_alpha: bool = True):
    """Run ``mixdemo.attacks.bss.separate`` on the proxy of the last patch run; draw it beside the truth."""
    separate = _attack("bss", ("separate",))
    config_cls = _attack("bss", ("LangevinConfig",))
    best_chain = _attack("bss", ("best_chain",))

    score = _score_model()
    v = sess.view
    proxy, target, reference = v["proxy"], sess.image[v["region"]], v["reference"]
    alpha = v["alpha"] if known_alpha else None
    res = separate(score, proxy, alpha, n_init=2, config=config_cls(steps_per_level=max(1, steps), tail=_population_tail()),
                   progress=progress, cancel=cancel)
    chain, shown, score_t = best_chain(res.sources, target[None], reference[None])
    best, t = int(chain[0]), int(shown[0])
    rec_t, rec_r = res.sources[0, best, t], res.sources[0, best, 1 - t]
    ms_t, ms_r = float(score_t[0]), _msssim(rec_r, reference)
    ms_proxy = _msssim(proxy, target)
    c = tuple(n // 2 for n in target.shape)
    m = lambda vol: viz.montage(vol, c, scale=PATCH_SCALE, vmax=1.0, grid=True)  # noqa: E731
    note = "" if res.completed else " (cancelled early: partial result)"
    if steps < SEPARATION_STEPS:
        note += (f". Fewer steps per level than the evaluation's {SEPARATION_STEPS} leave the chains shorter, so a "
                 f"poor recovery here may understate the attack")
    md = (
        f"**MS-SSIM, recovered vs true target: {ms_t:.3f}**; recovered vs true reference: {ms_r:.3f}; "
        f"for comparison, the proxy itself vs the target: {ms_proxy:.3f}. "
        f"{'α known to the attacker (an upper bound)' if known_alpha else _unknown_alpha_note(v['alpha'], res.alphas[0, best])}, "
        f"{steps} steps per noise level, best of {res.sources.shape[1]} initialisations under the best source "
        f"assignment (generous to the attacker){note}."
    )
    return m(rec_t), m(target), m(rec_r), m(reference), md


def _unknown_alpha_note(alpha: float, chosen: float) -> str:
    """What the separation without α searched (``mixdemo.attacks.bss.ALPHA_GRID``: the client's public default range,
    folded to α ≥ 0.5), the α its best chain chose, and whether this run's α lay outside what it searched."""
    from mixdemo.attacks.bss import ALPHA_GRID

    lo, hi = min(ALPHA_GRID), max(ALPHA_GRID)
    folded = max(alpha, 1 - alpha)
    outside = "" if lo - 1e-6 <= folded <= hi + 1e-6 else (
        f"; this run's α, {alpha:.2f}, lies outside it, so the attacker, who assumes the default range, never tried it")
    return (f"α unknown (grid search over {lo:.2f}–{hi:.2f}: the client's default α range, folded to α ≥ 0.5; the best "
            f"chain chose {float(chosen):.2f}{outside})")


def _msssim(a: np.ndarray, b: np.ndarray) -> float:
    """3D MS-SSIM as the privacy record takes it (``training.evaluate_privacy``, ``mixdemo.attacks``): of scans
    normalised to [0, 1], with that fixed data range (not each pair's own), so a panel's figure reads as the record's."""
    from mixdemo.metrics import msssim_3d

    return msssim_3d(a, b, data_range=1.0)


def _examples_on_grid(progress) -> tuple[list[np.ndarray], list[str]]:
    """Example targets (scan 0) and their retest scans (scan 1), normalised on the grid, with subject ids."""
    from mixdemo.io import load_scan

    vols, ids = [], []
    for (name, folder), subject in zip(examples.example_folders(progress).items(), examples.example_subjects()):
        vols.append(load_scan(folder / "t1.nii.gz").data)
        ids.append(subject)
    for subject, folder in examples.retest_folders(progress).items():
        vols.append(load_scan(folder / "t1.nii.gz").data)
        ids.append(subject)
    return vols, ids


def reid_report(progress: gr.Progress = gr.Progress()):
    """Re-identification (Table 2): MS-SSIM retrieval on raw scans vs mixup proxies; gallery of one query."""
    try:
        reid = _attack("reid", ("reid_experiment",))
        from mixdemo.attacks.reid import downsample, encode_with_random_references
        from mixdemo.metrics import msssim_matrix
    except AttackUnavailable as exc:
        return _unavailable(exc, 2)
    pfn = _progress_fn(progress)
    vols, ids = _examples_on_grid(pfn)
    bank = examples.reference_bank(pfn)
    pfn(0.5, "MS-SSIM retrieval")
    targets = downsample(np.stack(vols))
    refs = downsample(np.stack([r.image for r in bank]))
    out = reid(targets, ids, refs, alpha_range=DEFAULT_ALPHA_RANGE, n_draws=3, seed=0)
    fig = viz.bar_figure(
        {"no proxy (raw scans)": {"F1": out["no_proxy"]["f1"], "mAP": out["no_proxy"]["map"]},
         "mixup proxies": {"F1": out["mixup"]["f1"], "mAP": out["mixup"]["map"]}},
        "Re-identification by MS-SSIM retrieval", "score")
    proxies, _, _ = encode_with_random_references(targets, refs, DEFAULT_ALPHA_RANGE, np.random.default_rng(0))
    sim = msssim_matrix(proxies)
    order = [int(j) for j in np.argsort(-sim[0]) if j != 0][:3]
    c = tuple(n // 2 for n in proxies.shape[1:])
    gallery = [(viz.montage(proxies[0], c, scale=2, grid=True), f"query: proxy of {ids[0]}")]
    for rank, j in enumerate(order, 1):
        mark = "same subject" if ids[j] == ids[0] else "other subject"
        gallery.append((viz.montage(proxies[j], c, scale=2, grid=True), f"#{rank}: {ids[j]} ({mark}), MS-SSIM {sim[0, j]:.3f}"))
    md = (f"{out['n_scans']} scans ({len(set(ids))} phantom subjects × test-retest), references from the bank, "
          f"α ~ U{DEFAULT_ALPHA_RANGE}, {out['mixup']['n_draws']} draws. Without proxies the server re-identifies "
          f"with mAP {out['no_proxy']['map']:.2f}; with mixup proxies, mAP {out['mixup']['map']:.2f}, where a random "
          f"ranking of this tiny gallery scores {out['chance']['map']:.2f} (chance falls as a gallery grows): see "
          "results/ for the full evaluation.")
    return fig, gallery, md


def _above_target(estimate: np.ndarray, target: np.ndarray, mode: str) -> np.ndarray:
    """An attack's estimate (top) above the target (bottom), three central planes each, at the run's mode's scale."""
    c = tuple(n // 2 for n in target.shape)
    scale = PATCH_SCALE if mode == "patch" else WHOLE_SCALE
    return np.concatenate([viz.montage(estimate, c, scale=scale, vmax=1.0),
                           viz.montage(target, c, scale=scale, vmax=1.0)], axis=0)


KNOWN_BANK_ALPHA_CLOSE = 0.05
"""How near the known-bank attack's α̂ must be to the α used for the report to call it close (a wrong α̂ with the
right reference still leaves the estimate scaled and mixed)."""


def known_bank_report(sess: Session | None, progress: gr.Progress = gr.Progress()):
    """The known-bank attack on the proxy of the session's last run (its first mix): estimate beside the target."""
    if sess is None or sess.view is None:
        raise gr.Error("Run a segmentation first: the attack inverts the proxy it sent.", print_exception=False)
    try:
        invert = _attack("known_bank", ("invert_downsampled",))
    except AttackUnavailable as exc:
        return _unavailable(exc, 1)

    pfn = _progress_fn(progress)
    v = sess.view
    bank = examples.reference_bank(pfn)
    pfn(0.5, "trying every bank scan and α")
    try:
        found = invert(v["proxy"], np.stack([r.image[v["region"]] for r in bank]))
    except ValueError as exc:
        raise _err(exc) from None
    target = sess.image[v["region"]]
    ms_est, ms_proxy = _msssim(found.estimate, target), _msssim(v["proxy"], target)
    side = _above_target(found.estimate, target, v["mode"])
    taken = bank[found.reference].ref_id
    verdict = ("found the reference this proxy was mixed with" if taken == v["reference_id"]
               else f"took {taken}, not the reference used ({v['reference_id']})")
    off = abs(found.alpha - v["alpha"])
    alpha_said = (f"α̂ = {found.alpha:.3f}, close to α = {v['alpha']:.3f}" if off <= KNOWN_BANK_ALPHA_CLOSE
                  else f"α̂ = {found.alpha:.3f}, off the α used ({v['alpha']:.3f}) by {off:.3f}")
    md = (f"**The server {verdict}**; {alpha_said}. MS-SSIM of x̂ to the target: "
          f"**{ms_est:.3f}**, against {ms_proxy:.3f} for the proxy itself. Top: x̂, bottom: the target.")
    return side, md


def _inversion_model():
    """The learned inversion's network from ``weights/inversion`` (:func:`_attack_network`)."""
    return _attack_network("inversion", "inversion", "InversionNet", "the learned inversion", "training.train_inversion")


def inversion_report(sess: Session | None, progress: gr.Progress = gr.Progress()):
    """The learned inversion on the proxy of the session's last run (its first mix): estimate beside the target."""
    if sess is None or sess.view is None:
        raise gr.Error("Run a segmentation first: the attack inverts the proxy it sent.", print_exception=False)
    try:
        net = _inversion_model()
        invert_and_score = _attack("inversion", ("invert_and_score",))
    except AttackUnavailable as exc:
        return _unavailable(exc, 1)

    _progress_fn(progress)(0.3, "the server's network inverts the proxy")
    v = sess.view
    target = sess.image[v["region"]]
    estimate, ms_est, ms_proxy = invert_and_score(net, v["proxy"], target)
    side = _above_target(estimate, target, v["mode"])
    pooled = (f", both pooled {net.downsample}× as the network works and the privacy record scores it"
              if net.downsample > 1 else "")
    md = (f"MS-SSIM of the network's estimate to the target: **{ms_est:.3f}**, against {ms_proxy:.3f} for the proxy "
          f"itself{pooled} (α = {v['alpha']:.3f}, which the network was not told). Top: the estimate, bottom: the target.")
    return side, md


def tta_report(k: float, fresh: bool, split: bool, sess: Session | None = None, progress: gr.Progress = gr.Progress()):
    """The TTA-averaging attack on the current target (or the first example), with optional defences."""
    try:
        tta = _attack("tta_average", ("running_tta_estimates",))
        from mixdemo.attacks.reid import downsample
        from mixdemo.attacks.tta_average import deviation_correlations, link_requests, template_brain
    except AttackUnavailable as exc:
        return _unavailable(exc, 2)
    pfn = _progress_fn(progress)
    k = int(k)
    vols, _ = _examples_on_grid(pfn)
    target = sess.image if sess is not None else vols[0]
    others = [v for v in vols[: len(examples.example_subjects())] if not np.array_equal(v, target)]
    bank = examples.reference_bank(pfn)
    if k > len(bank):
        raise gr.Error(f"K can be at most {len(bank)} (the bank's size).", print_exception=False)
    pfn(0.6, "mixing and averaging")
    rng = np.random.default_rng(0)
    mu = downsample(template_brain())

    def proxies_of(x: np.ndarray) -> np.ndarray:
        idx = rng.choice(len(bank), size=k, replace=False)
        a = rng.uniform(*DEFAULT_ALPHA_RANGE, size=k) if fresh else np.full(k, rng.uniform(*DEFAULT_ALPHA_RANGE))
        return downsample(np.stack([a[i] * x + (1 - a[i]) * bank[j].image for i, j in enumerate(idx)]))

    tgt = downsample(target)
    mine = proxies_of(target)
    note = ""
    if split:  # the K proxies arrive as separate requests, shuffled among other targets' proxies
        pool = np.concatenate([mine] + [proxies_of(o) for o in others])
        perm = rng.permutation(len(pool))
        shuffled = pool[perm]
        query = int(np.where(perm == 0)[0][0])
        group = link_requests(shuffled, mu, k)[query]
        correct = int(sum(perm[g] < k for g in group))
        mine = shuffled[group]
        note = (f" Defence *separate requests*: the server re-linked {correct}/{k} of this target's proxies among "
                f"{len(pool)} shuffled requests by correlation.")
    alpha_guess = float(np.mean(DEFAULT_ALPHA_RANGE))
    est = tta(mine, mu, alpha_guess, list(range(1, k + 1)))
    curve = [_msssim(est[i], tgt) for i in range(1, k + 1)]
    floor = _msssim(mu, tgt)
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=list(range(1, k + 1)), y=curve, mode="lines+markers", name="estimate from K proxies"),
                     go.Scatter(x=[1, k], y=[floor, floor], mode="lines", name="public template only (no attack)",
                                line=dict(dash="dash"))])
    fig.update_layout(title="TTA-averaging attack", xaxis_title="K proxies averaged", yaxis_title="MS-SSIM to the target",
                      height=320, template="plotly_white", margin=dict(l=50, r=20, t=50, b=45),
                      legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(dtick=1)
    c = tuple(n // 2 for n in tgt.shape)
    side = np.concatenate([viz.montage(est[k], c, scale=2, vmax=1.0), viz.montage(tgt, c, scale=2)], axis=0)
    r_target, *r_others = deviation_correlations(est[k], np.stack([tgt, *(downsample(o) for o in others)]), mu)
    which = "the scan loaded in the Segment tab" if sess is not None else "the first example target (no scan is loaded)"
    md = (f"Target: {which}, mixed afresh here with K = {k} references of the bank (not the Segment tab's own "
          f"proxies). {tta_verdict(r_target, max(r_others), len(r_others))} MS-SSIM of the estimate to the target: "
          f"{curve[-1]:.3f}, against {floor:.3f} for the public template alone (MS-SSIM is dominated by what every "
          f"brain shares). {'A fresh α per mix' if fresh else 'One α shared by the K mixes (Eq. 5)'}; "
          f"attacker's α̂ = {alpha_guess:.2f}; top: estimate, bottom: target (2× pooled).{note}")
    return side, fig, md


def tta_verdict(r_target: float, r_others: float, n_others: int) -> str:
    """Whether the averaging attack's estimate singles out its target, in one sentence: its deviation from the
    public template correlates ``r_target`` with the target's and at most ``r_others`` with ``n_others`` other
    subjects' (:func:`mixdemo.attacks.tta_average.deviation_correlations`)."""
    measured = (f"its deviation from the public template correlates r = {r_target:.2f} with this target's, at most "
                f"{r_others:.2f} with {n_others} other subjects'")
    if r_target > r_others:
        return f"**The estimate singles out this target**: {measured}; averaging the proxies reveals this person's own anatomy."
    return f"**The estimate does not single out this target**: {measured}."


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

## Data
No patient data: phantoms generated from the MNI152 2009a template that nilearn ships (`python -m mixdemo.phantoms`).
The **example targets** are scan 0 of the default cohort's *test* subjects (never seen in training, never references);
the demo client's **reference bank** is scan 0 of ten of its *training* subjects, the pool the evaluation draws references
from. Both are generated on first use and cached in `$MIXDEMO_CACHE` (default `~/.cache/mixdemo`).

## What this demo cannot promise
- **In this browser demo the raw scan reaches the app's process**: client and server run in one process here, so the
  operator of this app could see your scan. Real privacy means running the client **on your own machine** and sending
  only proxies: `python -m mixdemo.client --server URL scan.nii.gz -o seg.nii.gz --tta 3`, against a server that
  takes nothing else (`python app.py --server-only`).
- The reference bank of this demo is public (phantoms), so here the key is not secret: a server that knows the bank
  tries each of its scans and α on a proxy and undoes the mix (README, privacy section: *known bank*).
- Models are trained on **synthetic phantoms** from the MNI152 template, not on patients. Inputs are T1 scans: one
  on the models' 1 mm MNI grid (144×192×160, skull-stripped) is used as it is, any other is registered to it and
  skull-stripped first (the status line says which), which can fail on unusual scans.
"""

SERVER_API_MD = """## The server endpoint (for developers)
`segment_proxy` receives **only a proxy** and returns mixed probabilities. Request: a `.npy` file (float16/float32,
shape (K, X, Y, Z) or (X, Y, Z), no pickles, no NIfTI header, no names). Response: a `.npy` file of float16 softmax
probabilities shaped (K, C, X, Y, Z), C the classes `server_info` names (the shipped S: background, GM, WM,
CSF). The upload is deleted once read.
```python
from mixdemo.client import RemoteServer      # what `python -m mixdemo.client --server URL` sends with
probs = RemoteServer("http://127.0.0.1:7860")(proxies)   # (K, X, Y, Z) float array → (K, C, X, Y, Z) tensor
```
With `gradio_client` directly, turn off what it sends and keeps by default (`RemoteServer` does): your saved
Hugging Face token (`token=False`), its telemetry (set `GRADIO_ANALYTICS_ENABLED=False` and
`HF_HUB_DISABLE_TELEMETRY=1` before connecting: `analytics_enabled=False` alone does not stop it) and a copy of the
answer on disk (`download_files=False`: the answer is then a URL to fetch).
```python
from gradio_client import Client, handle_file
c = Client("http://127.0.0.1:7860", token=False)
out = c.predict(handle_file("proxy.npy"), api_name="/segment_proxy")   # path of the .npy response
```
"""


_BLANK = ""
"""What a table cell shows where the file has no value to show (a missing key, null, a nested value)."""


def _fmt(v: object) -> str:
    """One table cell: a number, a flag, a mean ± std, a short list of those; :data:`_BLANK` for anything else
    (a missing key, null, a nested value: the raw JSON below the tables holds it)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        if isinstance(v, float):
            return f"{v:.3f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.2e}"  # not 0.000 for a small value
        return str(v)
    if isinstance(v, dict) and isinstance(v.get("mean"), (int, float)):
        return f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if isinstance(v.get("std"), (int, float)) else "")
    if isinstance(v, (list, tuple)) and 0 < len(v) <= 4:
        cells = [_fmt(x) for x in v]
        return _BLANK if _BLANK in cells else ", ".join(cells)
    return _BLANK


def _table(rows: dict) -> str:
    """Markdown table of ``{row: {column: value}}``, without the rows and columns that would hold no value; a wide
    table that would be mostly blank (rows of different measurements) as a list of rows instead."""
    cells = {name: {c: _fmt(v) for c, v in r.items()} for name, r in rows.items() if isinstance(r, dict)}
    cells = {name: r for name, r in cells.items() if any(x != _BLANK for x in r.values())}
    cols = [c for c in dict.fromkeys(c for r in cells.values() for c in r)
            if any(r.get(c, _BLANK) != _BLANK for r in cells.values())]
    if not cols:
        return ""
    blank = sum(r.get(c, _BLANK) == _BLANK for r in cells.values() for c in cols)
    if len(cols) > 8 and 2 * blank > len(cols) * len(cells):
        return "\n".join(f"- **{name}**: " + " · ".join(f"{c} {r[c]}" for c in cols if r.get(c, _BLANK) != _BLANK)
                         for name, r in cells.items())
    lines = ["| | " + " | ".join(map(str, cols)) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(r.get(c, _BLANK) for c in cols) + " |" for name, r in cells.items()]
    return "\n".join(lines)


MAIN_RESULTS = ("segmentation", "privacy", "bench")
"""The results the About tab shows first, in this order (the segmentation table, the attacks, the benchmark);
every other ``results/*.json`` goes, in name order, into one closed accordion."""


@dataclass
class AboutResults:
    """What the About tab shows of ``results/``."""

    md: str
    """The main results (:data:`MAIN_RESULTS`): tables and commands."""
    figs: list[tuple[str, object]]
    """The main results' Dice-against-K figures (plotly)."""
    other_md: str
    """Every other result, for a closed accordion ("" when none)."""
    other_figs: list[tuple[str, object]]
    """Their Dice-against-K figures."""
    pngs: list[tuple[str, str]]
    """PNG figures in ``results/`` as ``(path, caption)``, screenshots left out."""
    docs: dict[str, dict]
    """The raw JSON documents, the main ones first."""
    cards_md: str
    """The model cards, each in a closed ``<details>``."""


def _result_md(name: str, data: dict) -> str:
    """One ``results/<name>.json`` as markdown: its command, data, top-level numbers and tables."""
    parts = [f"### `results/{name}.json`"]
    commands = data.get("commands") if isinstance(data.get("commands"), list) else None
    if data.get("command") or commands:
        seed = f" · seed {data['seed']}" if isinstance(data.get("seed"), (int, str)) else ""
        date = f" · {data['date']}" if data.get("date") else ""
        if commands and len(commands) > 1:  # a record merged from several runs: each, in order
            parts.append("Commands, in order: " + " then ".join(f"`{c}`" for c in commands) + f"{seed}{date}")
        else:
            parts.append(f"Command: `{data.get('command') or commands[0]}`{seed}{date}")
    if data.get("data"):
        parts.append(f"Data: {data['data']}")
    values = {k: {"value": v} for k, v in data.items()
              if k != "seed" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if values:
        parts.append("**Values**\n\n" + _table(values))
    for key in ("dice", "icc"):
        if isinstance(data.get(key), dict):
            table = _table(data[key])
            if table:
                parts.append(f"**{key.upper() if key == 'icc' else 'Dice'}**\n\n" + table)
    for key, val in data.items():
        if key in ("dice", "icc") or not isinstance(val, dict):
            continue
        numbers = _table({k: {"value": v} for k, v in val.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)})  # a section's headline figures
        table = _table({k: _class_named(v) for k, v in val.items() if isinstance(v, dict)})
        if numbers or table:
            parts.append(f"**{key}**\n\n" + "\n\n".join(t for t in (numbers, table) if t))
    return "\n\n".join(parts)


def _class_named(row: dict) -> dict:
    """A row keyed by class numbers ("1", "2", ...) keyed by the served S's class names instead."""
    if not row or not all(isinstance(k, str) and k.isdigit() for k in row):
        return row
    names = server.model_classes()
    return {names[int(k)] if int(k) < len(names) else k: v for k, v in row.items()}


def _result_fig(name: str, data: dict) -> tuple[str, object] | None:
    curves = data.get("dice_vs_k")
    if not isinstance(curves, dict) or not curves:
        return None
    try:
        return (f"{name}: Dice against K", viz.dice_vs_k_figure(
            {m: [(int(v[0]), float(v[1])) if isinstance(v, (list, tuple)) else float(v) for v in vals]
             for m, vals in curves.items()},  # the file's (K, Dice) pairs: each point at its own K
            title=f"Dice against K ({name}.json)",
            class_names=["background", *map(str, data.get("classes") or ("GM", "WM", "CSF"))]))
    except (TypeError, ValueError, IndexError):
        return None


BLANK_NOTE = ("_Blank cells and left-out rows or columns: no value in the file, or a nested one "
              "(the raw JSON at the end of this tab holds every value)._")


def about_results() -> AboutResults:
    """What the About tab shows of ``results/``: the main results (:data:`MAIN_RESULTS`) first, the others apart."""
    loaded: dict[str, dict] = {}
    for path in sorted(RESULTS_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))  # not the locale's: cp1252 on Windows
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            loaded[path.stem] = data
    main = [n for n in MAIN_RESULTS if n in loaded]
    docs = {n: loaded[n] for n in main} | {n: d for n, d in loaded.items() if n not in main}
    if not loaded:
        md = ("## Results\n_No results yet: `results/*.json` appear once `python -m training.evaluate` and "
              "`python -m training.evaluate_privacy` have run._")
    else:
        md = "## Results\n" + "\n\n".join([BLANK_NOTE, *(_result_md(n, loaded[n]) for n in main)])
    others = [n for n in docs if n not in main]
    other_md = "\n\n".join(_result_md(n, docs[n]) for n in others)
    figs = [f for f in (_result_fig(n, loaded[n]) for n in main) if f is not None]
    other_figs = [f for f in (_result_fig(n, docs[n]) for n in others) if f is not None]
    pngs = [(str(p), p.stem.replace("_", " ")) for p in sorted(RESULTS_DIR.glob("*.png")) if not p.stem.startswith("screenshot")]
    cards = []
    from mixdemo.weights import unmixing_name  # torch-free

    for name in ("segmentation", unmixing_name(), "baseline", "score"):
        card = weights_dir() / name / "README.md"
        if card.exists():
            text = card.read_text(encoding="utf-8")
            if text.startswith("---"):
                text = text.split("---", 2)[-1]
            cards.append(f"<details><summary>Model card: <b>{name}</b></summary>\n\n{text}\n</details>")
    cards_md = "## Model cards\n" + ("\n".join(cards) or "_No model cards yet._")
    return AboutResults(md, figs, other_md, other_figs, pngs, docs, cards_md)


# ------------------------------------------------------------------------------ the app
def _server_endpoint(path: str | None, request: gr.Request | None = None, progress: gr.Progress = gr.Progress()) -> str:
    """API ``segment_proxy``: .npy proxies in, .npy mixed probabilities out (the request deleted whatever happens;
    a client that disconnects stops its segmentation at the next proxy, :func:`leave_session`)."""
    from mixdemo.weights import WeightsError

    if not path:
        raise gr.Error("Send a .npy file of proxies.", print_exception=False)
    try:
        with session_job(request, "segment_proxy request") as stop:
            return server.segment_file(path, _progress_fn(progress, stop))
    except PageLeft as exc:
        raise _err(exc) from None
    except server.ProxyError as exc:
        raise _err(exc) from None
    except WeightsError as exc:  # the operator's detail (folders, remedies) goes to the log, not to the remote client
        log.warning("segment_proxy: the model could not be loaded: %s", exc)
        raise gr.Error(server_weights_message(exc), print_exception=False) from None


def server_weights_message(exc: Exception) -> str:
    """What a remote client is told when the server's S cannot be loaded: the kind of fault, not the server's
    folders or the commands its operator would run (those are in the server's log)."""
    from mixdemo.weights import WeightsNotFound

    what = ("No weights for 'segmentation' on this server" if isinstance(exc, WeightsNotFound)
            else "The server's segmentation model could not be loaded")
    return f"{what}: it cannot segment until its operator fixes it (the server's log says why)."


def _server_info() -> dict:
    """API ``server_info``: the wire format and the model's checksum."""
    return server.model_info()


def build_demo() -> gr.Blocks:
    """The whole app (serve it with :func:`launch_demo`)."""
    from mixdemo.weights import unmixing_choices

    ref_choices = examples.reference_ids()
    a_default = round(sum(DEFAULT_ALPHA_RANGE) / 2, 2)
    with gr.Blocks(title="Mixup-Privacy Lab", delete_cache=(RENDERINGS_SWEEP_S, RENDERINGS_MAX_AGE_S)) as demo:
        sess = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=_drop_session)
        gr.Markdown(INTRO)
        with gr.Tabs():
            # ---------------------------------------------------------------- Segment
            with gr.Tab("Segment", id="segment"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=340):  # wide enough for the D menu's value
                        example = gr.Dropdown(examples.example_names(), value=None, label="1 · Example target (phantom with labels)")
                        with gr.Accordion("…or upload your own T1 (NIfTI or DICOM)", open=False):
                            upload = upload_path_only(gr.File(label="T1 scan: .nii / .nii.gz, or a DICOM series (a .zip of its files, or one enhanced .dcm); registered to MNI if needed",  # no file_types: Gradio's
                                                              # type check would refuse before load_upload and leave the upload on disk
                                                              type="filepath", height=120))
                            upload_series = gr.Number(0, precision=0, label="DICOM series",  # no minimum: Gradio's
                                                      # check would refuse before load_upload and leave the upload on disk
                                                      info="0: the upload holds one series. A whole study's export is "
                                                           "refused with a numbered list of its series: set the T1's "
                                                           "number here and upload it again.",
                                                      elem_id="upload-series")
                            upload_labels = upload_path_only(gr.File(label="optional: its labels (on the scan's own grid), for Dice",
                                                                     type="filepath", height=120))
                        refs = gr.Dropdown(ref_choices, multiselect=True, value=[], label="2 · References (the demo's public bank: no secret) — empty: K random")
                        k = gr.Slider(1, len(ref_choices), value=3, step=1, label="K references for TTA (used when none is picked)")
                        alpha = gr.Slider(ALPHA_MIN, ALPHA_MAX, value=a_default, step=0.05, label="α, the target's weight in the mix")
                        random_alpha = gr.Checkbox(False, label=f"draw α at random in [{DEFAULT_ALPHA_RANGE[0]}, {DEFAULT_ALPHA_RANGE[1]}] instead")
                        mirror = gr.Checkbox(MIRROR_BY_DEFAULT, label="mirror the target left–right in every second mix "
                                                                      "(TTA; the answer is mirrored back; no extra server work)")
                        mode = gr.Radio(["patch", "whole"], value="patch", label="3 · Mode: one 32³ patch (fast) or the whole brain")
                        d_choices = unmixing_choices()
                        unmixing = gr.Dropdown(d_menu(d_choices), value=d_choices[0][0], label=D_LABEL, info=D_INFO,
                                               elem_id="unmixing")
                        with gr.Accordion("Patch centre / slice position (or click the target)", open=False):
                            cx = gr.Slider(0, GRID_SHAPE[0] - 1, value=72, step=1, label="x (right)")
                            cy = gr.Slider(0, GRID_SHAPE[1] - 1, value=96, step=1, label="y (anterior)")
                            cz = gr.Slider(0, GRID_SHAPE[2] - 1, value=80, step=1, label="z (superior)")
                        run = gr.Button("Segment privately", variant="primary", elem_id="run-btn")
                        status = gr.Markdown("Pick an example or upload a scan.", elem_id="status")
                    with gr.Column(scale=3):
                        with gr.Row():
                            gr.HTML(viz.legend_html(server.model_classes()))
                            opacity = gr.Slider(0, 1, value=0.55, step=0.05, label="overlay opacity", scale=0, min_width=220)
                        gr.HTML('<div class="panel-caption">Target on the client (sagittal · coronal · axial) — '
                                'click a slice to move the 32³ patch (yellow) and the slices</div>')
                        loc = gr.Image(show_label=False, format="png", interactive=False, elem_id="locator", height=300,
                                       buttons=["fullscreen"], alt_text=ALT["locator"])
                        with gr.Row(equal_height=True):
                            im_target = _panel("Target x (client)", alt=ALT["target"])
                            im_ref = _panel("Reference x_ref #1 + its labels (client's secret key)", alt=ALT["reference"])
                            im_proxy = _panel("PROXY x_mix = α·x + (1−α)·x_ref — the only thing the server receives",
                                              elem_id="proxy", proxy=True, alt=ALT["proxy"])
                        with gr.Row(equal_height=True):
                            im_mixed = _panel("Server's answer: mixed segmentation ŷ_mix (soft colours)", alt=ALT["mixed"])
                            im_naive = _panel("Naive unmixing, Eq. 4 (reference #1)", alt=ALT["naive"])
                            im_learned = _panel("Learned unmixing D (reference #1)", alt=ALT["learned"])
                        with gr.Row(equal_height=True):
                            im_tta = _panel("TTA result: average over the K references (Eq. 6)", elem_id="tta",
                                            alt=ALT["tta"])
                            im_unc = _panel("TTA uncertainty: variance across the K", alt=ALT["uncertainty"])
                            im_truth = _panel("Ground truth", alt=ALT["truth"])
                        with gr.Accordion("All K mixes: each reference (with its labels) and the proxy sent", open=False):
                            mixes = gr.Gallery(show_label=False, columns=4, height="auto", object_fit="contain",
                                               elem_id="mixes")
                        with gr.Row():
                            with gr.Column():
                                dice = gr.Markdown(DICE_PLACEHOLDER, elem_id="dice")
                                seg_file = session_download(gr.File(label="Segmentation (NIfTI, in the input's space)",
                                                                    interactive=False))
                            plot = gr.Plot(label="Dice against K", elem_id="dice-plot", visible=False)  # shown by a
                            # run with labels (run_segmentation)
                panels = [loc, im_target, im_ref, im_proxy, im_mixed, im_naive, im_learned, im_tta, im_unc, im_truth]
                private = dict(api_visibility="private")

                # the long events show their progress on the status line only, not on each of their outputs
                # a scan loads after any run of its session has finished (the same queue), so that the run's end
                # cannot bring the previous scan back; then the previous scan's results and download go
                results = [*panels[1:], dice, plot, seg_file, mixes]
                # the user's pick (input), not any change of the menu's value: an upload empties it (example_menu_of)
                example.input(load_example, [example, sess], [sess, cx, cy, cz, loc, status], api_name="load_example",
                               concurrency_limit=1, concurrency_id="compute", show_progress_on=[status], **private
                               ).then(results_of, [sess], results, show_progress="hidden", **private)
                # in the browser, at once: the last upload's refusal does not stay on the line while this one loads
                upload.upload(None, None, status, js=f"() => {json.dumps(UPLOAD_LOADING, ensure_ascii=False)}", queue=False,
                              show_progress="hidden", api_name="upload_started", **private)
                upload.upload(load_upload, [upload, upload_series, sess], [sess, cx, cy, cz, loc, status, upload, upload_series],
                              api_name="load_upload", concurrency_limit=1, concurrency_id="compute",
                              show_progress_on=[status], **private
                              ).then(results_of, [sess], results, show_progress="hidden", **private
                              ).then(example_menu_of, [sess], [example], show_progress="hidden", **private)
                # after the scan being loaded (labels uploaded while it registers would reach the scan before it)
                upload_labels.upload(load_upload_labels, [upload_labels, sess], [sess, status, upload_labels], api_name="load_labels",
                                     concurrency_limit=1, concurrency_id="compute", **private)
                for c in (cx, cy, cz):
                    c.release(on_centre, [sess, cx, cy, cz, opacity, mode], [sess, *panels], api_name="move_centre",
                              concurrency_limit=4, show_progress="hidden", **private)
                opacity.release(render, [sess, opacity, mode], panels, api_name="render", concurrency_limit=4,
                                show_progress="hidden", **private)
                mode.change(render, [sess, opacity, mode], panels, api_name="render_mode", concurrency_limit=4,
                            show_progress="hidden", **private)
                loc.select(on_click, [sess, opacity, mode], [sess, cx, cy, cz, *panels], api_name="click_centre",
                           concurrency_limit=4, show_progress="hidden", **private)
                run.click(run_segmentation, [sess, refs, k, alpha, random_alpha, mode, opacity, unmixing, mirror],
                          [sess, *panels, dice, plot, seg_file, status, mixes], api_name="segment",
                          concurrency_limit=1, concurrency_id="compute", show_progress_on=[status], **private)

            # ---------------------------------------------------------------- Attack lab
            with gr.Tab("Attack lab", id="attack"):
                _attack_tab(sess)

            # ---------------------------------------------------------------- About
            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)
                res = about_results()
                gr.Markdown(res.md, elem_id="about-results")
                for name, fig in res.figs:
                    gr.Plot(fig, label=name)
                if res.other_md or res.other_figs:
                    n_other = sum(name not in MAIN_RESULTS for name in res.docs)
                    with gr.Accordion(f"Other results: {n_other} more files in results/ (the README quotes them)",
                                      open=False, elem_id="other-results"):
                        gr.Markdown(res.other_md)
                        for name, fig in res.other_figs:
                            gr.Plot(fig, label=name)
                if res.pngs:
                    gr.Gallery(res.pngs, label="figures in results/ (click to enlarge)", columns=3, height=380,
                               object_fit="contain", preview=False)
                gr.Markdown(res.cards_md)
                if res.docs:
                    with gr.Accordion(f"Raw JSON of results/ ({len(res.docs)} files)", open=False, elem_id="raw-results"):
                        for name, doc in res.docs.items():
                            with gr.Accordion(f"results/{name}.json", open=False):
                                gr.JSON(doc)
                gr.Markdown(SERVER_API_MD)
                _server_endpoints()
        demo.unload(leave_session)
    return _queued(demo)


def _server_endpoints() -> None:
    """The server's two endpoints in the Blocks being built, with the widgets a developer tries them with:
    ``segment_proxy`` (in the compute queue: one computation at a time) and ``server_info``."""
    with gr.Row():
        proxy_in = upload_path_only(gr.File(label="proxy .npy", type="filepath"))  # no file_types: the server checks and deletes
        probs_out = gr.File(label="mixed probabilities .npy", interactive=False)
        info = gr.JSON(label="server_info")
    with gr.Row():
        send = gr.Button("Send to segment_proxy", elem_id="send-proxy")
        info_btn = gr.Button("server_info", elem_id="server-info-btn")
    send.click(_server_endpoint, [proxy_in], [probs_out], api_name="segment_proxy",
               concurrency_limit=1, concurrency_id="compute")
    info_btn.click(_server_info, None, [info], api_name="server_info", concurrency_limit=4)


def _queued(demo: gr.Blocks) -> gr.Blocks:
    """``demo`` with the app's queue. ``api_open=False``: every call goes through the queue, as on a Hugging Face
    Space (where Gradio already closes the direct routes); open, ``/gradio_api/run/<name>`` would run any event, the
    private ones too, at once and outside the compute queue's limits, with no session hash."""
    demo.queue(default_concurrency_limit=1, max_size=32, api_open=False)
    return demo


SERVER_ONLY_MD = """# Mixup-Privacy Lab: a segmentation server
This server segments **proxies** (a scan mixed with a private reference on the client's machine) and nothing else: it
takes no scan, and offers no demo or attack lab (`python app.py --server-only`). Segment a scan from your machine,
which keeps the scan, its references and their α:

```bash
python -m mixdemo.client --server URL scan.nii.gz -o seg.nii.gz --tta 10
```
"""


def build_server_demo() -> gr.Blocks:
    """The server alone (``python app.py --server-only``): ``segment_proxy`` and ``server_info`` on a page that says
    how to use them. Nothing of it takes a raw scan (the whole demo's Segment tab mixes on the server, so a scan
    uploaded there reaches the server), and no attack runs on its CPU."""
    with gr.Blocks(title="Mixup-Privacy server", delete_cache=(RENDERINGS_SWEEP_S, RENDERINGS_MAX_AGE_S)) as demo:
        gr.Markdown(SERVER_ONLY_MD)
        gr.Markdown(SERVER_API_MD)
        _server_endpoints()
        demo.unload(leave_session)  # a client that leaves stops its segmentation at the next proxy
    return _queued(demo)


D_LABEL = "4 · Client network D (learned unmixing): the default measured the best Dice"
D_INFO = ("Every other D measured scored a lower Dice: those on 2³ or 4³ patches take about the same client time "
          "(4³ a little less), those at full resolution several times more (README: performance).")


def d_menu(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The D menu's ``(shown, name)`` pairs for :func:`mixdemo.weights.unmixing_choices`: each name with where its
    blocks run (the name tells the patches it was trained on), short enough to show whole in the menu's box;
    ``mixdemo.weights.DEFAULT_UNMIXING`` marked as the default instead."""
    from mixdemo.weights import DEFAULT_UNMIXING  # torch-free

    menu = []
    for name, where in choices:
        short = where.split(",")[0].removeprefix("on ").removeprefix("at ")
        shown = f"{name} (default)" if name == DEFAULT_UNMIXING else f"{name} · {short}" if short else name
        menu.append((shown, name))
    return menu


def _panel(caption: str, elem_id: str | None = None, proxy: bool = False, alt: str | None = None) -> gr.Image:
    """A captioned result image (caption above, not over the picture; ``alt``: what a screen reader says of it)."""
    classes = ["result-panel"] + (["proxy-panel"] if proxy else [])
    with gr.Column(min_width=200, elem_classes=classes):
        gr.HTML(f'<div class="panel-caption">{caption}</div>')
        return gr.Image(show_label=False, format="png", interactive=False, elem_id=elem_id, buttons=["fullscreen"],
                        alt_text=alt)


def _attack_tab(sess: gr.State) -> None:
    """The Attack lab: separation, re-identification, TTA averaging (lazy calls into mixdemo.attacks)."""
    gr.Markdown(ATTACK_INTRO)
    with gr.Accordion("1 · Langevin source separation of the current proxy", open=True):
        gr.Markdown(SEPARATION_MD)
        with gr.Row():
            steps = gr.Slider(1, 50, value=SEPARATION_STEPS, step=1, scale=2,
                              label=f"Langevin steps per noise level ({SEPARATION_STEPS}: as in results/privacy.json)")
            known = gr.Checkbox(True, label="the attacker knows α (upper bound)", scale=1)
            go = gr.Button("Run the separation", variant="primary", scale=1)
            stop = gr.Button("Cancel", variant="stop", scale=1, elem_id="separation-cancel")
        with gr.Row():
            rec_t = gr.Image(label="recovered target", format="png", interactive=False, alt_text=ALT["recovered target"])
            true_t = gr.Image(label="true target", format="png", interactive=False, alt_text=ALT["true target"])
        with gr.Row():
            rec_r = gr.Image(label="recovered reference", format="png", interactive=False,
                             alt_text=ALT["recovered reference"])
            true_r = gr.Image(label="true reference", format="png", interactive=False, alt_text=ALT["true reference"])
        sep_md = gr.Markdown("_The separation's result appears here._", elem_id="separation-status")
        # its stop flag filed at the click (outside the queue), so that Cancel reaches it while it waits its turn
        go.click(queue_separation, None, None, queue=False, show_progress="hidden", api_visibility="private"
                 ).then(run_separation, [sess, steps, known], [rec_t, true_t, rec_r, true_r, sep_md],
                        api_name="attack_separation", concurrency_limit=1, concurrency_id="compute",
                        show_progress_on=[sep_md], api_visibility="private")
        stop.click(cancel_attack, None, [sep_md], api_name="attack_cancel", concurrency_limit=None,
                   api_visibility="private")
    with gr.Accordion("2 · Re-identification: can the server tell whose scan a proxy is?", open=True):
        gr.Markdown(REID_MD)
        reid_btn = gr.Button("Run the re-identification check")
        with gr.Row():
            reid_plot = gr.Plot(label="F1 / mAP: no proxy vs mixup")
            reid_gallery = gr.Gallery(label="retrieval: query and its top matches", columns=2, height="auto",
                                      object_fit="contain")
        reid_md = gr.Markdown(elem_id="reid-status")
        reid_btn.click(reid_report, None, [reid_plot, reid_gallery, reid_md], api_name="attack_reid",
                       concurrency_limit=1, concurrency_id="compute", api_visibility="private")
    with gr.Accordion("3 · Averaging the K TTA proxies, and defences", open=True):
        gr.Markdown(TTA_MD)
        with gr.Row():
            fresh = gr.Checkbox(False, label="defence: a fresh α per mix")
            split = gr.Checkbox(False, label="defence: split the K proxies over separate requests")
            kk = gr.Slider(2, len(examples.reference_ids()), value=4, step=1, label="K")
        tta_btn = gr.Button("Run the TTA-averaging attack")
        with gr.Row():
            tta_img = gr.Image(label="average of the K proxies vs the target", format="png", interactive=False,
                               alt_text=ALT["proxy average"])
            tta_plot = gr.Plot(label="MS-SSIM to the target")
        tta_md = gr.Markdown(elem_id="tta-status")
        tta_btn.click(tta_report, [kk, fresh, split, sess], [tta_img, tta_plot, tta_md], api_name="attack_tta",
                      concurrency_limit=1, concurrency_id="compute", api_visibility="private")
    _last_proxy_attack("4 · Known bank: undoing the mix with the public reference bank", KNOWN_BANK_MD,
                       "Run the known-bank attack on the last proxy", "x̂ from the proxy (top) vs the target (bottom)",
                       known_bank_report, sess, "known-bank-status", "attack_known_bank")
    _last_proxy_attack("5 · Learned inversion: a network the server trained on scans of its own", INVERSION_MD,
                       "Run the learned inversion on the last proxy", "the network's estimate (top) vs the target (bottom)",
                       inversion_report, sess, "inversion-status", "attack_inversion")


def _last_proxy_attack(title: str, explanation: str, button: str, image_label: str, handler, sess: gr.State,
                       status_id: str, api_name: str) -> None:
    """An attack panel on the proxy of the session's last run: its explanation, a button, the estimate beside the
    target, and a status line (``#status_id``)."""
    with gr.Accordion(title, open=True):
        gr.Markdown(explanation)
        btn = gr.Button(button)
        img = gr.Image(label=image_label, format="png", interactive=False,
                       alt_text=f"{image_label[0].upper()}{image_label[1:]}: slices of each, for comparison")
        md = gr.Markdown(elem_id=status_id)
        btn.click(handler, [sess], [img, md], api_name=api_name, concurrency_limit=1, concurrency_id="compute",
                  api_visibility="private")


SLICES = "sagittal, coronal and axial slices"
ALT = {  # alternative text of the result images, what a screen reader says of each (the captions are separate text)
    "locator": f"The target scan on the client, {SLICES} through the patch centre, the 32³ patch outlined in yellow. "
               "Click a slice to move the patch, or set it with the Patch centre sliders.",
    "target": f"Target x, the client's scan: {SLICES} of the region segmented.",
    "reference": f"Reference x_ref #1 with its labels coloured by class (legend above): {SLICES}; the client's secret key.",
    "proxy": f"Proxy x_mix, the target and reference #1 mixed in grey scale, {SLICES}: the only image the server receives.",
    "mixed": f"The server's answer: the mixed segmentation in soft class colours over the proxy, {SLICES}.",
    "naive": f"Segmentation by naive unmixing (Eq. 4) with reference #1, class colours over the target, {SLICES}.",
    "learned": f"Segmentation by the learned unmixing network D with reference #1, class colours over the target, {SLICES}.",
    "tta": f"The result: segmentation averaged over the K references, class colours over the target, {SLICES}.",
    "uncertainty": f"Uncertainty: the variance of the K segmentations over the target, {SLICES}; the scan shows through "
                   "where they agree, tinted dark purple to pale yellow the more they disagree. A colour bar right of the "
                   "axial slice gives the scale: 0 at its bottom, its top the value written there (the variance's 99.5th "
                   "percentile, at least 0.001; higher values show in its top colour).",
    "truth": f"Ground-truth labels, class colours over the target, {SLICES}.",
    "recovered target": "The target the separation recovered from the proxy alone: slices, to compare with the true target.",
    "true target": "The true target: slices, to compare with the recovered target.",
    "recovered reference": "The reference the separation recovered from the proxy alone: slices, to compare with the true "
                           "reference.",
    "true reference": "The true reference: slices, to compare with the recovered reference.",
    "proxy average": "The average of the K proxies (top) and the target (bottom): slices, to compare.",
}


LIVE_REGIONS = {"status": "status", "dice": None, "separation-status": "status", "reid-status": "status",
                "tta-status": "status", "known-bank-status": "status", "inversion-status": "status"}
"""The Markdown lines a screen reader announces when they change (``elem_id``: ARIA role, or None for a plain polite
live region: the Dice table); Gradio's Markdown is not one. The text alone, not Gradio's progress timer beside it."""

BUTTON_NAMES = {"separation-cancel": "Cancel the separation",
                "send-proxy": "Send to segment_proxy the proxy .npy uploaded here",
                "server-info-btn": "server_info: show what the server says of itself"}
"""Accessible names of the buttons whose short label does not say what they do out of context (``elem_id``: name;
each name starts with the visible label, WCAG 2.5.3)."""

HEAD = """<script>
(() => {
  const live = %s, names = %s;
  const mark = () => {
    for (const [id, role] of Object.entries(live)) {
      const md = document.querySelector(`#${id} [data-testid="markdown"]`);
      if (md && !md.hasAttribute("aria-live")) {
        md.setAttribute("aria-live", "polite");
        if (role) md.setAttribute("role", role);
      }
    }
    for (const [id, name] of Object.entries(names)) {
      const b = document.getElementById(id);
      if (b && b.getAttribute("aria-label") !== name) b.setAttribute("aria-label", name);
    }
  };
  new MutationObserver(mark).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>""" % (json.dumps(LIVE_REGIONS), json.dumps(BUTTON_NAMES))
"""Set, as Gradio renders them, the ARIA attributes that its components take no parameter for."""


THEME = gr.themes.Soft(primary_hue="indigo").set(
    block_label_text_color="*primary_600", block_title_text_color="*primary_600",
    button_primary_background_fill="*primary_600", button_primary_border_color="*primary_600",
    button_primary_background_fill_hover="*primary_700", checkbox_label_background_fill_selected="*primary_600")
"""Gradio's Soft theme in indigo, one shade darker where text sits on indigo 500 or on indigo 500's badge: the control
labels (indigo 500 on indigo 100, 3.6:1) and the white text of the primary buttons and the selected choice (white on
indigo 500, 4.47:1) were under WCAG AA's 4.5:1 for text; indigo 600 gives 5.1:1 and 6.3:1 (the dark theme already
uses 600 for both)."""


SCAN_SESSIONS = 64
"""Sessions holding data (a loaded scan, about 40 MB, and its results: about 106 MB in all after a whole-brain run)
that Gradio keeps: the app's memory bound."""

EMPTY_SESSIONS = 256
"""Sessions holding no data (an API call, each of which is a session; a page before its first scan) that Gradio
keeps: each costs Gradio's copy of the page's configuration, about 0.4 MB here."""


CLOSED_PAGE_GRACE_S = 300
"""How long a closed page's session (its scan, results and download) is kept once its heartbeat connection has ended
(the page was closed or reloaded, or its connection broke: Gradio's page does not open it again, and the app has
stopped that page's running job already), counted from its last request and from the end of a job it still runs:
a page whose connection broke goes on sending its events under the same session. Gradio's own store keeps it an
hour after its last update."""


def _holds_data(session: SessionState) -> bool:
    """Whether a session's ``gr.State`` holds anything (Gradio fills a state it is asked for with its default, None)."""
    return any(value is not None for value in list(session.state_data.values()))  # a copy: handlers may add states


def _delete_states(session: SessionState) -> None:
    """Run the delete callbacks of a dropped session's states (``_drop_session``: its download goes now)."""
    for component, value, _expired in session.state_components:
        if component.delete_callback is not None:
            try:
                component.delete_callback(value)
            except Exception as exc:  # noqa: BLE001 (a failed clean-up must not fail the request that evicted it)
                log.warning("a dropped session's clean-up failed: %s", type(exc).__name__)


class ScansFirstStateHolder(StateHolder):
    """Gradio's store of per-session state, with the app's bound counted in sessions that hold data.

    Gradio's own keeps ``state_session_capacity`` sessions of any kind, the least recently used out first, and every
    caller is a session: 64 API calls (a remote client's batch; its scans, each a session of its own) made an idle
    page lose its scan. Here sessions holding data are bounded by ``capacity`` (:data:`SCAN_SESSIONS`) and those
    holding none by ``empty_capacity`` (:data:`EMPTY_SESSIONS`), each the least recently used out first, so
    callers holding nothing never push out a scan. A session dropped here has its states' delete callbacks run
    (Gradio's drop skipped them, leaving its download until the cache's sweep). A closed page's session goes
    :data:`CLOSED_PAGE_GRACE_S` after its page closed (or its last request, or its job's end, if later), not
    Gradio's hour. Installed by :func:`launch_demo`."""

    empty_capacity = EMPTY_SESSIONS
    closed_page_grace_s = CLOSED_PAGE_GRACE_S
    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        super().__init__()
        self._closed_since: dict[str, float] = {}  # session hash → when its page was first seen closed (monotonic)

    def __getitem__(self, session_id: str) -> SessionState:
        """The session (created if new), marked used: Gradio's, under the lock, so that the sweep cannot drop it
        between its creation and its return (a KeyError in the request), and a closed page's grace starts again (a
        page whose heartbeat broke still sends its events)."""
        with self.lock:
            session = self.session_data.get(session_id)
            if session is None:
                session = self.session_data[session_id] = SessionState(self.blocks)
            dropped = self._used(session_id)
        for old in dropped:
            _delete_states(old)
        return session

    def _used(self, session_id: str) -> list[SessionState]:
        """Mark a session (present) used, its closed page's grace started again, and drop the least recent sessions
        beyond the bounds (under the lock); returns those dropped."""
        self.session_data.move_to_end(session_id)
        self.time_last_used[session_id] = datetime.datetime.now()
        self._closed_since.pop(session_id, None)
        return self._drop_least_recent()

    def delete_all_expired_state(self) -> None:
        """Gradio's sweep (every second): the states past their time to live, then the sessions of pages closed for
        :data:`CLOSED_PAGE_GRACE_S`, with their delete callbacks."""
        super().delete_all_expired_state()
        with self.lock:
            dropped = self._drop_closed_pages(self.clock())
        for session in dropped:
            _delete_states(session)

    def _drop_closed_pages(self, now: float) -> list[SessionState]:
        """Remove the sessions whose page has been closed, and which neither made a request nor ran a job, for the
        grace period (under the lock); returns them."""
        dropped = []
        for sid, session in list(self.session_data.items()):
            if not session.is_closed:
                continue
            if sid in _RUNNING:  # its job still runs (it stops at its next step): the grace counts from its end
                self._closed_since[sid] = now
                continue
            if now - self._closed_since.setdefault(sid, now) >= self.closed_page_grace_s:
                dropped.append(self.session_data.pop(sid))
                self.time_last_used.pop(sid, None)
                _WAITING.pop(sid, None)  # a separation it left waiting, which the queue then dropped
        for sid in [sid for sid in self._closed_since if sid not in self.session_data]:
            del self._closed_since[sid]
        return dropped

    def update(self, session_id: str) -> None:
        """Gradio's "mark used" (its ``__getitem__`` alone calls it, which this store replaces), with the app's bounds."""
        with self.lock:
            dropped = self._used(session_id) if session_id in self.session_data else self._drop_least_recent()
        for session in dropped:
            _delete_states(session)

    def _drop_least_recent(self) -> list[SessionState]:
        """Remove the least recently used sessions of each kind beyond its bound (under the lock); returns them."""
        sessions = list(self.session_data.items())  # a copy: Gradio adds a new session outside the lock
        holding = [sid for sid, session in sessions if _holds_data(session)]
        kept = set(holding)
        empty = [sid for sid, _ in sessions if sid not in kept]
        over = (holding[: max(0, len(holding) - self.capacity)]
                + empty[: max(0, len(empty) - self.empty_capacity)])
        dropped = []
        for sid in over:
            dropped.append(self.session_data.pop(sid))
            self.time_last_used.pop(sid, None)
        return dropped


@contextlib.contextmanager
def _gradio_state_holder(holder_class: type[StateHolder]) -> Iterator[None]:
    """Make the app Gradio creates in ``launch`` keep its sessions in ``holder_class`` (Gradio takes no such option)."""
    import gradio.routes

    default = gradio.routes.StateHolder
    gradio.routes.StateHolder = holder_class
    try:
        yield
    finally:
        gradio.routes.StateHolder = default


def warm_up(server_only: bool = False, announce: Callable[[str], object] | None = None) -> None:
    """Load, before the app listens, what its first requests would wait for: torch and S (the server's), and with the
    whole demo the default D, the example scans, the public reference bank and the template that a scan is checked
    against (seconds, before a first scan showed). Before listening, not beside it: two threads
    importing torch and MONAI for the first time at once fail (a request's ``server_info`` while a warm-up thread
    loaded S: "cannot import name ... from partially initialized module 'monai.apps'"). Nothing of a user's; a part
    that fails is logged and left to the request that needs it to report. On a ZeroGPU Space S loads inside its
    GPU call, so not here. ``announce``: called first with a line naming what is loaded (``python app.py`` prints
    it), unless nothing is."""
    from mixdemo import preprocess
    from mixdemo.client import unmixing_model

    parts: list[tuple[str, Callable[[], object]]] = [] if server.ZERO_GPU else [("S", server.segmentation_model)]
    if not server_only:
        parts += [("the client's D", unmixing_model), ("the example scans", examples.example_folders),
                  ("the reference bank", examples.reference_bank), ("the template", preprocess.prepare_template)]
    if announce is not None and parts:
        announce(warm_up_line([what for what, _ in parts]))
    for what, load in parts:
        try:
            load()
        except Exception as exc:  # noqa: BLE001 - the request that needs it says why
            log.warning("warm-up: %s not loaded (%s); the first request that needs it will say why", what,
                        type(exc).__name__)
    log.info("warm-up done")


def warm_up_line(parts: list[str]) -> str:
    """What :func:`warm_up` announces for ``parts`` (the network S named as such; the example scans with the note
    that a machine's first start writes them into the cache, which takes longer)."""
    named = ["the segmentation network S" if what == "S" else what for what in parts]
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    note = " (a first start also writes the examples into the cache: longer)" if "the example scans" in parts else ""
    return f"Loading {listed} before listening{note}..."


def launch_demo(demo: gr.Blocks, *, prevent_thread_lock: bool = False, **options) -> None:
    """``demo.launch(**launch_kwargs(), **options)`` with the sessions kept in :class:`ScansFirstStateHolder` and a
    failed event logged in one line (:func:`mixdemo.gatekeeper.quiet_event_failures`);
    blocks until the server stops unless ``prevent_thread_lock``. In the reload thread of ``gradio app.py``, where
    Gradio's launch serves nothing, it returns at once."""
    gatekeeper.quiet_event_failures()
    with _gradio_state_holder(ScansFirstStateHolder):
        demo.launch(prevent_thread_lock=True, **launch_kwargs(), **options)
    if getattr(demo, "server_app", None) is None:  # `gradio app.py`: its reload thread runs the script again and
        # Gradio's launch returns at once (the first launch's server swaps this demo in, its store kept): the bound
        # goes with the demo, or the swap would set Gradio's default (10000) in its place
        demo.state_session_capacity = SCAN_SESSIONS
        return
    if not isinstance(demo.server_app.state_holder, ScansFirstStateHolder):  # another Gradio than the pinned one
        log.warning("Gradio kept its own session store: past %d sessions of any kind, an idle page may lose its scan.",
                    SCAN_SESSIONS)
    if not prevent_thread_lock:
        demo.block_thread()


def remove_served_downloads(blocks: gr.Blocks) -> None:
    """Delete the download folders that ``blocks``' downloads served (:func:`session_download`): when the server stops,
    as Gradio's stop deletes the files it filed for its sweep."""
    for block in list(blocks.blocks.values()):
        for folder in list(getattr(block, "served_folders", ())):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def _downloads_removed_at_stop(app):  # noqa: ANN001, ANN202 - Gradio's App
    """The app's lifespan beside Gradio's own: at the server's stop, :func:`remove_served_downloads`."""
    yield
    remove_served_downloads(app.get_blocks())


def launch_kwargs() -> dict:
    """Options for ``demo.launch`` (theme and CSS moved to ``launch`` in Gradio 6; :func:`launch_demo` passes them)."""
    return dict(
        theme=THEME,
        css=CSS,
        head=HEAD,
        max_file_size=MAX_FILE_SIZE,
        ssr_mode=False,
        show_error=True,
        footer_links=["api"],
        run_history=False,
        state_session_capacity=SCAN_SESSIONS,  # of sessions holding data (ScansFirstStateHolder)
        # segment_proxy responses: one download, then gone; each uploaded file a name of its own
        # and the malformed requests that Gradio's routes answer with a 500 and a traceback refused before them
        app_kwargs={"middleware": [gatekeeper.middleware(), *oneshot.middlewares()],
                    "lifespan": _downloads_removed_at_stop},  # the sessions' downloads go when the server stops
        num_workers=0,  # no static-file workers ($GRADIO_NUM_WORKERS): uploads and downloads pass the middleware
    )
