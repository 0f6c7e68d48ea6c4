"""Integration tests of the app: every public endpoint through gradio_client, bad input, the UI handlers."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ public API
def test_public_endpoints_are_exactly_the_server(api):
    names = set(api.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {"/segment_proxy", "/server_info"}


def test_server_info(api):
    info = api.predict(api_name="/server_info")
    assert info["format"].startswith("mixdemo-proxy-npy")
    assert info["classes"] == ["background", "GM", "WM", "CSF"]
    assert info["grid_shape"] == [144, 192, 160]
    assert info["precision"] in ("float32", "bfloat16")


def test_segment_proxy_returns_probabilities(api, tmp_path):
    from gradio_client import handle_file

    rng = np.random.default_rng(0)
    proxies = rng.uniform(0, 1, (2, 32, 32, 32)).astype(np.float16)
    path = tmp_path / "proxy.npy"
    np.save(path, proxies)
    out = np.load(api.predict(handle_file(str(path)), api_name="/segment_proxy"))
    assert out.shape == (2, 4, 32, 32, 32) and out.dtype == np.float16
    assert np.allclose(out.astype(np.float32).sum(1), 1.0, atol=1e-2)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"this is not an array", "not a NumPy .npy"),
        ("object", "pickled objects are refused"),
        ("ints", "floating-point"),
        ("2d", "dimensions"),
        ("nan", "NaN"),
        ("too_many", "1 to 8 proxies"),
    ],
)
def test_bad_proxies_give_clear_errors_and_the_app_keeps_serving(api, tmp_path, payload, message):
    from gradio_client import handle_file

    path = tmp_path / "proxy.npy"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif payload == "object":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif payload == "ints":
        np.save(path, np.ones((16, 16, 16), dtype=np.int32))
    elif payload == "2d":
        np.save(path, np.ones((16, 16), dtype=np.float32))
    elif payload == "nan":
        np.save(path, np.full((16, 16, 16), np.nan, dtype=np.float32))
    else:
        np.save(path, np.zeros((9, 8, 8, 8), dtype=np.float16))
    with pytest.raises(Exception) as info:
        api.predict(handle_file(str(path)), api_name="/segment_proxy")
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)
    assert api.predict(api_name="/server_info")["format"]  # still serving


# ------------------------------------------------------------------------------ the split
def test_server_module_imports_no_client_code():
    """mixdemo.server must not import mixing, pipeline, client or examples (statically and at run time)."""
    forbidden = {"mixdemo.mixing", "mixdemo.pipeline", "mixdemo.client", "mixdemo.examples", "mixdemo.ui"}
    for module in ("server.py", "inference.py"):  # inference: the S code the server runs
        tree = ast.parse((REPO / "mixdemo" / module).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & forbidden, module
    code = "import sys, mixdemo.server; print(sorted(m for m in sys.modules if m.startswith('mixdemo')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert not any(m in out for m in forbidden)


# ------------------------------------------------------------------------------ the UI handlers
class _Progress:
    def __call__(self, *args, **kwargs):
        pass


def test_a_bank_reference_that_is_the_uploaded_scan_itself_is_never_mixed_with_it(app_weights, example, monkeypatch):
    """An upload of one of the bank's own scans: mixed with that reference, its proxy would be the scan, sent unmixed.
    The random draw leaves it out (each of five K = 1 runs mixes with the other reference; drawn from both, five
    misses would be one chance in 32), and choosing it is refused with the reason."""
    import gradio as gr

    from mixdemo import examples, ui
    from mixdemo.pipeline import Reference

    sess = ui.load_example(examples.example_names()[0], progress=_Progress())[0]
    other = examples.reference_bank()[0]
    bank = [Reference("itself", sess.image.copy(), other.labels), other]
    monkeypatch.setattr(examples, "reference_bank", lambda progress=None: bank)
    for _ in range(5):
        sess = ui.run_segmentation(sess, [], 1, 0.5, False, "patch", 0.5, progress=_Progress())[0]
        assert sess.view["reference_id"] == other.ref_id
    with pytest.raises(gr.Error, match="Reference itself is this scan itself"):
        ui.run_segmentation(sess, ["itself"], 1, 0.5, False, "patch", 0.5, progress=_Progress())


def test_ui_patch_round_trip(app_weights, example):
    from mixdemo import examples, ui
    from mixdemo.io import load_labels, load_scan

    name = examples.example_names()[0]
    sess, cx, cy, cz, loc, status = ui.load_example(name, progress=_Progress())
    assert sess.truth is not None and loc.ndim == 3 and "Loaded" in status
    out = ui.run_segmentation(sess, [], 2, 0.5, False, "patch", 0.5, progress=_Progress())
    sess, panels = out[0], out[1:11]
    dice_md, plot, seg_path, summary, mixes = out[11:]
    assert len(mixes) == 4 and "proxy 2" in mixes[3][1]
    assert plot["visible"] is True  # labels: the Dice-against-K plot is shown
    fig = plot["value"]
    assert all(p is not None and p.dtype == np.uint8 and p.ndim == 3 for p in panels)
    assert "| learned TTA |" in dice_md and "K = 2" in summary
    assert len(fig.data) == 2 and len(fig.data[0].y) == 2  # Dice against K for K = 1, 2
    rows = {line.split("|")[1].strip(): float(line.split("**")[-2]) for line in dice_md.splitlines() if "**" in line}
    curves = {trace.name: list(trace.y) for trace in fig.data}
    for curve, one, tta in (("naive TTA", "naive (Eq. 4), 1 ref", "naive TTA"), ("learned TTA", "learned D, 1 ref", "learned TTA")):
        assert curves[curve][0] == pytest.approx(rows[one], abs=5e-4)  # the curve starts at the table's one-mix row
        assert curves[curve][-1] == pytest.approx(rows[tta], abs=5e-4)  # and ends at its TTA row
    view, region = sess.view, sess.view["region"]
    proxy = view["alpha"] * sess.image[region] + (1 - view["alpha"]) * view["reference"]  # Eq. 2: the first mix
    assert np.allclose(view["proxy"], proxy, atol=1e-6) and not np.allclose(view["proxy"], sess.image[region])
    assert not np.array_equal(view["naive"], view["learned"])  # two unmixings shown, not one twice
    folder = examples.example_folders()[name]
    labels = load_labels(seg_path)
    assert labels.shape == load_scan(folder / "t1.nii.gz").source_shape
    assert labels.max() <= 3 and (labels > 0).sum() <= 32**3  # only the patch is segmented
    assert np.array_equal(labels[region], view["tta"]) and (labels > 0).sum() == (view["tta"] > 0).sum()  # the TTA labels
    # moving the centre re-renders, and a chosen reference list is honoured
    sess, *panels = ui.on_centre(sess, 60, 100, 70, 0.3, "patch")
    assert sess.centre == (60, 100, 70) and panels[0] is not None
    out = ui.run_segmentation(sess, ["sub-003"], 5, 0.4, False, "patch", 0.5, progress=_Progress())
    assert "sub-003" in out[-2] and "K = 1" in out[-2] and "mirrored" not in out[-2]
    # mirroring: the second mix's target is mirrored, and the summary and the gallery say so
    out = ui.run_segmentation(sess, [], 2, 0.4, False, "patch", 0.5, None, True, progress=_Progress())
    assert "the target mirrored in mix 2;" in out[-2]
    assert [caption for _, caption in out[-1]][1::2] == ["proxy 1 (α = 0.40) — sent", "proxy 2 (α = 0.40, target mirrored) — sent"]


def test_ui_runs_the_chosen_client_network_d(app_weights, example):
    """The D menu: a D chosen by name unmixes (the summary names it); one that is not there is a
    readable error and the session stays usable."""
    import gradio as gr

    from mixdemo import examples, ui
    from mixdemo.weights import unmixing_choices

    sess = ui.load_example(examples.example_names()[0], progress=_Progress())[0]
    for name, _ in unmixing_choices():
        summary = ui.run_segmentation(sess, [], 1, 0.5, False, "patch", 0.5, name, progress=_Progress())[-2]
        assert f"learned D (`{name}`)" in summary
    with pytest.raises(gr.Error, match="no-such-d"):
        ui.run_segmentation(sess, [], 1, 0.5, False, "patch", 0.5, "no-such-d", progress=_Progress())
    assert "Done" in ui.run_segmentation(sess, [], 1, 0.5, False, "patch", 0.5, None, progress=_Progress())[-2]


def test_ui_says_when_the_d_does_not_fit_the_served_s_classes(app_weights, example, monkeypatch):
    """Weights whose S gives five classes beside a four-class D: a readable error, not a shape error."""
    import gradio as gr

    from mixdemo import examples, ui

    sess = ui.load_example(examples.example_names()[0], progress=_Progress())[0]
    monkeypatch.setattr(ui.server, "model_classes", lambda: ["background", "GM", "WM", "CSF", "lesion"])
    with pytest.raises(gr.Error, match="D unmixes 4 classes, but the server's model gives 5"):
        ui.run_segmentation(sess, [], 1, 0.5, False, "patch", 0.5, None, progress=_Progress())


def test_ui_segmentation_hands_its_memory_back_when_answered_or_refused(monkeypatch):
    """The Segment tab's run is one step of reusing_freed_memory: memory is handed back after the run's work,
    answered or refused."""
    import gradio as gr

    from mixdemo import inference, ui

    events: list[str] = []
    monkeypatch.setattr(inference, "hand_back_freed_memory", lambda: events.append("hand back") or True)
    monkeypatch.setattr(ui, "_segmentation", lambda *args: events.append("run") or ("answer",))
    assert ui.run_segmentation(None, [], 1, 0.5, False, "patch", 0.5, progress=_Progress()) == ("answer",)
    assert events == ["run", "hand back"]
    events.clear()

    def refused(*args):
        events.append("run")
        raise gr.Error("no")

    monkeypatch.setattr(ui, "_segmentation", refused)
    with pytest.raises(gr.Error):
        ui.run_segmentation(None, [], 1, 0.5, False, "patch", 0.5, progress=_Progress())
    assert events == ["run", "hand back"]


def test_uploaded_labels_are_attached_and_deleted_on_every_path(app_weights, example, tmp_path):
    """Labels for the current scan: read onto its grid and deleted; refused without a scan, and deleted too."""
    from mixdemo import examples, ui
    from mixdemo.phantoms import GRID_SHAPE

    name = examples.example_names()[0]
    sess, *_ = ui.load_example(name, progress=_Progress())
    source = examples.example_folders()[name] / "seg.nii.gz"
    upload = tmp_path / "labels.nii.gz"
    shutil.copy(source, upload)
    sess.truth = None
    sess, status, _ = ui.load_upload_labels(str(upload), sess)
    assert not upload.exists() and "Labels attached" in status
    assert sess.truth.shape == GRID_SHAPE and sess.truth.max() == 3
    shutil.copy(source, upload)
    with pytest.warns(UserWarning, match="Load a scan first"):  # no scan yet: refused (a Gradio warning) ...
        ui.load_upload_labels(str(upload), None)
    assert not upload.exists()  # ... and the file still goes


def test_no_log_line_holds_an_uploaded_file_s_name_or_its_values(app_weights, example, tmp_path, caplog):
    """Every logger at DEBUG while a request named like a patient and a scan so named are served: no name, no
    voxel value (the request is filled with 0.123456, the scan's are printed as NumPy prints arrays)."""
    import logging

    from mixdemo import examples, server, ui

    caplog.set_level(logging.DEBUG)
    request = tmp_path / "Doe_Jane_1970-01-01.npy"
    np.save(request, np.full((1, 32, 32, 32), 0.123456, np.float16))
    server.segment_file(request)
    scan = tmp_path / "Doe_Jane_1970-01-01_t1.nii.gz"
    shutil.copy(examples.example_folders()[examples.example_names()[0]] / "t1.nii.gz", scan)
    ui.load_upload(str(scan), progress=_Progress())
    text = caplog.text
    assert caplog.records and "Doe" not in text and "1970" not in text
    assert "0.1234" not in text and "[[" not in text and "..." not in text


def test_ui_errors_are_readable(app_weights, tmp_path):
    import gradio as gr

    from mixdemo import ui

    with pytest.raises(gr.Error, match="example or upload"):
        ui.run_segmentation(None, [], 1, 0.5, False, "patch", 0.5, progress=_Progress())
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.warns(UserWarning, match="gzip"):  # gr.Warning outside an event: a warning, in the app a toast
        out = ui.load_upload(str(bad), progress=_Progress())
    assert not bad.exists()  # uploads are deleted after use
    *kept, status, upload_box, series = out  # the session and the scan's panels as they were; the upload box emptied
    assert all(isinstance(o, type(gr.skip())) and o == gr.skip() for o in [*kept, series]) and upload_box is None
    assert status.startswith(f"**{ui.UPLOAD_REFUSED}:**") and "gzip" in status
    assert ui.load_upload_labels(str(bad), None)[-2].endswith("Load a scan first, then its labels.")


def test_a_resampled_upload_s_download_comes_from_the_class_scores(app_weights, example, tmp_path, monkeypatch):
    """An upload half a voxel off the models' grid is resampled onto it, so its download is resampled back: from the
    TTA's class scores (preprocess.scores_to_source_grid), not from its labels; an upload on the grid gets its
    labels as they are."""
    import nibabel as nib

    from mixdemo import client, ui

    folder, _ = example
    img = nib.load(folder / "t1.nii.gz")
    affine = img.affine.copy()
    affine[:3, 3] += 0.5 * img.affine[:3, 0]
    saved: list[int] = []
    save_labels = client.Target.save_labels
    monkeypatch.setattr(client.Target, "save_labels",
                        lambda self, prediction, path: saved.append(prediction.ndim) or save_labels(self, prediction, path))
    for name, header in (("half.nii.gz", affine), ("on_grid.nii.gz", img.affine)):
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), header), tmp_path / name)
        sess = ui.load_upload(str(tmp_path / name), progress=_Progress())[0]
        seg_path = ui.run_segmentation(sess, [], 2, 0.5, False, "patch", 0.5, progress=_Progress())[13]
        assert nib.load(seg_path).shape == img.shape
    assert saved == [4, 3]  # class scores for the resampled upload, labels for the one on the grid


def test_a_zipped_dicom_series_uploads_as_its_nifti_does(app_weights, example, tmp_path):
    """A clinician's export (a .zip of one DICOM series) loads into the same session image as the NIfTI it was
    written from, and the upload is deleted after reading."""
    from mixdemo import examples, ui

    folder, _ = example
    archive = examples._write_dicom_example(folder / "t1.nii.gz", tmp_path / "Doe_Jane.zip")
    out = ui.load_upload(str(archive), progress=_Progress())
    sess, status = out[0], out[5]
    assert status.startswith("Loaded your scan: a 144×192×160 grid of 1×1×1 mm voxels, already on the models' grid")
    assert ui.DICOM_SEG_NOTE in status  # where its DICOM SEG comes from (not from the app)
    assert not archive.exists()
    expected = ui._session_from_files(str(folder / "t1.nii.gz"), None, "upload")
    np.testing.assert_allclose(sess.target.image, expected.target.image, atol=1e-3)  # int16 storage rounds
    nifti = tmp_path / "upload.nii.gz"
    shutil.copy(folder / "t1.nii.gz", nifti)
    assert ui.DICOM_SEG_NOTE not in ui.load_upload(str(nifti), progress=_Progress())[5]


def test_a_study_upload_is_refused_with_its_series_and_loads_the_one_numbered(app_weights, example, tmp_path):
    """A whole study's export: refused with the numbered list, which names the app's series field; with the T1's
    number the upload loads as the series alone does, and the series field goes back to 0; a NIfTI upload ignores a
    number left in the field. Every upload is deleted."""
    import zipfile

    import gradio as gr
    import nibabel as nib

    from mixdemo import ui
    from mixdemo.dicom import write_series

    folder, _ = example
    image = nib.load(folder / "t1.nii.gz")
    t1 = write_series(np.asarray(image.dataobj), image.affine, tmp_path / "t1")
    localizer = write_series(np.asarray(image.dataobj)[:, :, 70:73], image.affine, tmp_path / "loc")

    def study() -> Path:
        with zipfile.ZipFile(tmp_path / "Doe_Jane_study.zip", "w") as z:
            for f in t1 + localizer:
                z.write(f, arcname=f"{f.parent.name}/{f.name}")
        return tmp_path / "Doe_Jane_study.zip"

    refused = ui.load_upload(str(study()), 0, progress=_Progress())
    status = refused[5]
    assert refused[-1] == gr.skip()  # the field is left for the number to be typed
    assert "2 DICOM series (1: 160 axial images" in status and "the app's DICOM series field" in status
    assert not (tmp_path / "Doe_Jane_study.zip").exists()
    out = ui.load_upload(str(study()), 1, progress=_Progress())
    assert out[5].startswith("Loaded your scan: a 144×192×160 grid") and not (tmp_path / "Doe_Jane_study.zip").exists()
    assert out[-1] == 0
    expected = ui._session_from_files(str(folder / "t1.nii.gz"), None, "upload")
    np.testing.assert_allclose(out[0].target.image, expected.target.image, atol=1e-3)
    nifti = tmp_path / "upload.nii.gz"
    shutil.copy(folder / "t1.nii.gz", nifti)
    out = ui.load_upload(str(nifti), 2, progress=_Progress())
    assert out[5].startswith("Loaded your scan") and out[-1] == 0 and not nifti.exists()


def test_the_averaging_attack_says_whether_it_singles_out_its_target():
    """The verdict rests on the target's own anatomy, not on MS-SSIM against the template (which said "revealed
    nothing" for estimates that re-identify their subjects)."""
    from mixdemo import ui

    assert ui.tta_verdict(0.76, 0.40, 2).startswith("**The estimate singles out this target**: its deviation from "
                                                    "the public template correlates r = 0.76 with this target's, at "
                                                    "most 0.40 with 2 other subjects'")
    assert ui.tta_verdict(0.30, 0.35, 2).startswith("**The estimate does not single out this target**")


def test_deviation_correlations_pick_the_subject_an_estimate_comes_from():
    from mixdemo.attacks.tta_average import deviation_correlations

    rng = np.random.default_rng(0)
    mean = rng.random((8, 8, 8))
    subjects = mean + 0.3 * rng.standard_normal((3, 8, 8, 8))
    estimate = 0.5 * subjects[1] + 0.5 * mean + 0.1 * rng.standard_normal((8, 8, 8))  # half the target, noisy
    r = deviation_correlations(estimate, subjects, mean)
    assert r.shape == (3,) and r.argmax() == 1 and r[1] > 0.8 and abs(r[0]) < 0.3


def test_constants_restated_for_fast_start_agree():
    from mixdemo import examples, ui
    from mixdemo.mixing import DEFAULT_ALPHA_RANGE, MIRROR_BY_DEFAULT
    from mixdemo.phantoms import GRID_SHAPE, split_subjects, subject_id

    assert ui.GRID_SHAPE == GRID_SHAPE
    assert ui.DEFAULT_ALPHA_RANGE == DEFAULT_ALPHA_RANGE
    assert ui.MIRROR_BY_DEFAULT == MIRROR_BY_DEFAULT
    split = split_subjects([subject_id(i) for i in range(examples.COHORT_SUBJECTS)],
                           examples.COHORT_TEST_FRACTION, examples.COHORT_SEED)
    assert examples._split() == split
    assert set(examples.reference_subjects()) <= set(split["train"])
    assert set(examples.example_subjects()) <= set(split["test"])


def test_app_module_is_thin():
    tree = ast.parse((REPO / "app.py").read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [f.name for f in funcs] == ["main"]
    assert "gradio" not in (REPO / "app.py").read_text().replace("GRADIO", "")


def test_ui_whole_mode_with_a_fast_stand_in_server(app_weights, example, monkeypatch):
    """Whole-brain mode end to end through the UI handler; S and D are replaced by fast stand-ins."""
    import torch

    from mixdemo import client, examples, server, ui

    def fake_segment(proxies, progress=None):
        x = torch.as_tensor(np.asarray(proxies))[:, None]
        logits = torch.cat([-(x - c) ** 2 * 50 for c in (0.0, 0.6, 1.0, 0.2)], 1)
        return torch.softmax(logits, 1)

    monkeypatch.setattr(server, "segment", fake_segment)
    monkeypatch.setattr(client, "unmixing_model", lambda required=False, name=None: None)
    sess = ui.load_example(examples.example_names()[0], progress=_Progress())[0]
    out = ui.run_segmentation(sess, ["sub-000", "sub-001"], 1, 0.6, False, "whole", 0.5, progress=_Progress())
    sess, panels, summary = out[0], out[1:11], out[-2]
    assert "whole mode" in summary and "naive Eq. 4" in summary
    assert panels[6] is None  # no learned unmixing without D
    assert sess.view["tta"].shape == (144, 192, 160)
    assert "| naive TTA |" in out[11] and out[11].startswith("| unmixing | GM | WM | CSF | mean |")
    sess.truth = None  # no labels: no Dice, and the Dice-against-K plot is hidden, not drawn as empty axes
    out = ui.run_segmentation(sess, ["sub-000"], 1, 0.6, False, "patch", 0.5, progress=_Progress())
    assert len(out) == 16 and "No ground truth" in out[11]
    assert out[12]["visible"] is False and out[12]["value"] is None
    assert "Warning" not in out[-2]
    import dataclasses

    sess.target = dataclasses.replace(sess.target, warning="The registration looks poor.")  # an upload's warning
    out = ui.run_segmentation(sess, ["sub-000"], 1, 0.6, False, "patch", 0.5, progress=_Progress())
    assert out[-2].startswith("**Done**") and out[-2].endswith("**Warning:** The registration looks poor.")


def test_attack_lab_handlers(app_weights, example):
    """Re-identification and TTA averaging run on the bundled phantoms; separation says when it cannot run."""
    import gradio as gr

    from mixdemo import examples, ui

    fig, gallery, md = ui.reid_report(progress=_Progress())  # needs no weights: it always runs
    assert fig is not None and len(fig.data) == 2 and len(gallery) == 4 and "mAP" in md
    img, fig, md = ui.tta_report(3, True, True, None, progress=_Progress())
    assert img is not None and img.dtype == np.uint8 and "MS-SSIM" in md and "re-linked" in md
    assert "first example target (no scan is loaded)" in md and "single out this target" in md.replace("singles", "single")
    with pytest.raises(gr.Error, match="segmentation first"):
        ui.run_separation(None, 1, True, None, progress=_Progress())
    with pytest.raises(gr.Error, match="segmentation first"):
        ui.known_bank_report(None, progress=_Progress())
    sess = ui.load_example(examples.example_names()[0], progress=_Progress())[0]
    mixed = ui.run_segmentation(sess, [examples.reference_ids()[0]], 1, 0.4, False, "patch", 0.5, progress=_Progress())[0]
    # the public bank undoes the mix it made: on this 32³ patch the attack finds 9 of the 10 references at α = 0.4,
    # this key's among them (a fixed key: the check is deterministic)
    img, md = ui.known_bank_report(mixed, progress=_Progress())
    assert img.dtype == np.uint8 and md.startswith("**The server found the reference this proxy was mixed with**")
    assert "close to α = 0.400" in md or "off the α used (0.400) by" in md  # the verdict says how near α̂ came
    with pytest.raises(gr.Error, match="segmentation first"):
        ui.inversion_report(None, progress=_Progress())
    out = ui.inversion_report(mixed, progress=_Progress())
    if (app_weights / "inversion" / "model.safetensors").exists():  # the committed network inverts the patch's proxy
        assert out[0].dtype == np.uint8 and "MS-SSIM of the network's estimate" in out[1]
    else:  # stand-in weights: the panel says what is missing
        assert out[0] is None and "weights/inversion" in out[1]
    sess = ui.run_segmentation(sess, [], 1, 0.5, False, "patch", 0.5, progress=_Progress())[0]
    out = ui.run_separation(sess, 1, True, None, progress=_Progress())
    assert len(out) == 5 and isinstance(out[-1], str)
    if (app_weights / "score" / "model.safetensors").exists():  # the committed score prior: the separation runs
        assert "MS-SSIM" in out[-1] and "Not available" not in out[-1]
    else:  # the conftest's untrained stand-ins carry no score prior: the tab says what is missing
        assert "weights/score" in out[-1]


def _textures(n: int, seed: int, side: int = 32) -> np.ndarray:
    """n smooth random volumes in [0, 1] (tiny stand-ins for scans)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    vols = np.stack([gaussian_filter(rng.standard_normal((side,) * 3), 2.0) for _ in range(n)])
    vols -= vols.min(axis=(1, 2, 3), keepdims=True)
    return (vols / vols.max(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


def _tiny_attack_lab(monkeypatch, scans: np.ndarray, retests: np.ndarray, bank: np.ndarray,
                     template: np.ndarray | None = None) -> list[str]:
    """Point the attack tab at tiny volumes: example targets ``scans``, their ``retests`` (same subjects), a reference
    ``bank`` and the public template; returns the subject ids (``sub-0``, ``sub-1``, ...)."""
    from types import SimpleNamespace

    from mixdemo import examples, ui
    from mixdemo.attacks import tta_average

    ids = [f"sub-{i}" for i in range(len(scans))]
    monkeypatch.setattr(ui, "_examples_on_grid", lambda progress: ([*scans, *retests], ids + ids))
    monkeypatch.setattr(examples, "example_subjects", lambda: ids)
    monkeypatch.setattr(examples, "reference_bank", lambda progress=None: [
        SimpleNamespace(image=b, ref_id=f"ref-{j}") for j, b in enumerate(bank)])
    if template is not None:
        monkeypatch.setattr(tta_average, "template_brain", lambda: template)
    return ids


def test_the_reid_panel_shows_the_retrieval_it_computed(monkeypatch):
    """Re-identification panel on 3 tiny subjects × test–retest. References that carry nothing (zeros): every proxy
    is α·x, so the query's first match must be its subject's other scan; the gallery shows the proxies it names, in
    the order of their MS-SSIM, never the query itself. References that dominate: the bars are the experiment's own
    numbers, no proxy apart from mixup."""
    from mixdemo import ui, viz
    from mixdemo.attacks.reid import downsample, reid_experiment

    scans = _textures(3, seed=1)
    retests = np.clip(scans + 0.02 * _textures(3, seed=2), 0, 1)
    ids = _tiny_attack_lab(monkeypatch, scans, retests, np.zeros((2, 32, 32, 32), np.float32))
    fig, gallery, md = ui.reid_report(progress=_Progress())
    assert [t.name for t in fig.data] == ["no proxy (raw scans)", "mixup proxies"]
    assert all(list(t.x) == ["F1", "mAP"] and list(t.y) == [1.0, 1.0] for t in fig.data)  # positive control
    assert len(gallery) == 4 and gallery[0][1] == f"query: proxy of {ids[0]}"
    captions = [caption for _, caption in gallery[1:]]
    assert captions[0].startswith(f"#1: {ids[0]} (same subject)")
    assert [c.startswith(f"#{r}: ") for r, c in enumerate(captions, 1)] == [True] * 3
    assert sum("same subject" in c for c in captions) == 1  # the query is not among its own matches
    scores = [float(c.rsplit("MS-SSIM ", 1)[1]) for c in captions]
    assert 0.9995 > scores[0] > scores[1] >= scores[2]  # each match's own MS-SSIM, the best first
    pictures = [viz.montage(downsample(v), (8, 8, 8), scale=2, grid=True).astype(int) for v in scans]
    for (img, caption) in gallery:  # a proxy α·x is drawn as x is (each picture scaled to its own range)
        shown = int(np.argmin([np.abs(img.astype(int) - p).mean() for p in pictures]))
        assert ids[shown] in caption
    assert np.abs(gallery[1][0].astype(int) - gallery[0][0].astype(int)).mean() > 0  # the retest, not the query

    common = _textures(1, seed=3)[0]
    scans = np.clip(0.8 * common + 0.2 * _textures(3, seed=4), 0, 1)  # subjects differ a little
    retests = np.clip(scans + 0.01 * _textures(3, seed=5), 0, 1)
    bank = _textures(3, seed=6)  # references differ a lot
    ids = _tiny_attack_lab(monkeypatch, scans, retests, bank)
    fig, _, md = ui.reid_report(progress=_Progress())
    out = reid_experiment(downsample(np.concatenate([scans, retests])), ids + ids, downsample(bank),
                          alpha_range=ui.DEFAULT_ALPHA_RANGE, n_draws=3, seed=0)
    assert out["no_proxy"]["map"] == 1.0 > out["mixup"]["map"]
    shown = {t.name: list(t.y) for t in fig.data}
    assert shown == {"no proxy (raw scans)": [out["no_proxy"]["f1"], out["no_proxy"]["map"]],
                     "mixup proxies": [out["mixup"]["f1"], out["mixup"]["map"]]}
    assert f"with mixup proxies, mAP {out['mixup']['map']:.2f}" in md and "6 scans (3 phantom subjects" in md
    # the record reads mAP against chance; in a gallery of 6 a random ranking already scores about 0.46
    assert f"a random ranking of this tiny gallery scores {out['chance']['map']:.2f}" in md
    assert out["chance"]["map"] == pytest.approx(0.457, abs=0.02)


def test_the_averaging_panel_shows_the_estimate_of_the_proxies_it_averaged(monkeypatch):
    """TTA-averaging panel on tiny volumes: each proxy the attack averages is read back as α·x + (1 − α)·x_ref (the
    subject, bank scan and α that fit it exactly). The panel mixes the target with K distinct bank scans and one α of
    the public range (a fresh α per mix with the defence), and shows for every K the estimate of the first K proxies,
    rescale(mean m − (1 − α̂)·μ), its MS-SSIM to the target, and whether it singles the target out. Sent as
    separate requests among other targets' proxies, the server re-links from this target's own proxy, and says how
    many of its K it found."""
    from mixdemo import ui, viz
    from mixdemo.attacks import tta_average
    from mixdemo.attacks.reid import downsample
    from mixdemo.metrics import msssim_3d

    common = _textures(1, seed=7)[0]
    scans = 0.6 * common + 0.4 * _textures(3, seed=8)
    bank = 0.6 * common + 0.4 * _textures(6, seed=9)
    template = 0.6 * common + 0.4 * _textures(40, seed=10).mean(0)  # the population's mean brain
    _tiny_attack_lab(monkeypatch, scans, scans, bank, template)
    seen: list = []
    real = tta_average.running_tta_estimates
    monkeypatch.setattr(tta_average, "running_tta_estimates",
                        lambda proxies, *args: seen.append((proxies, real(proxies, *args))) or seen[-1][1])
    small_scans, small_bank, mu = downsample(scans), downsample(bank), downsample(template)
    tgt = small_scans[0]

    def source(proxy: np.ndarray) -> tuple[int, int, float]:
        """(subject, bank scan, α) of the mix α·x + (1 − α)·x_ref that gives ``proxy`` (least squares)."""
        fits = []
        for s, x in enumerate(small_scans):
            for j, r in enumerate(small_bank):
                a = float(np.sum((proxy - r) * (x - r)) / np.sum((x - r) ** 2))
                fits.append((float(np.abs(proxy - (a * x + (1 - a) * r)).max()), s, j, a))
        err, s, j, a = min(fits)
        assert err < 1e-5
        return s, j, a

    for k, fresh, split in ((4, False, False), (4, True, False), (4, False, True), (3, True, True), (5, False, True)):
        seen.clear()
        img, fig, md = ui.tta_report(k, fresh, split, None, progress=_Progress())
        (proxies, est), = seen
        subjects, refs, alphas = map(np.array, zip(*(source(p) for p in proxies)))
        assert len(proxies) == k and subjects[0] == 0  # the target's own proxy first (the query, when split)
        if split:
            assert f"re-linked {int(np.sum(subjects == 0))}/{k} of this target's proxies among {3 * k}" in md
        else:
            assert (subjects == 0).all() and len(set(refs)) == k and ((0.3 <= alphas) & (alphas <= 0.5)).all()
            assert (np.ptp(alphas) > 0.01) == fresh  # one α for the K mixes (Eq. 5) unless the defence draws each
        for n in range(1, k + 1):  # the estimate of the first n proxies, in closed form
            np.testing.assert_allclose(est[n], tta_average.rescale(proxies[:n].mean(0) - 0.6 * mu), atol=1e-5)
        curve = list(fig.data[0].y)
        assert list(fig.data[0].x) == list(range(1, k + 1))
        assert curve == pytest.approx([msssim_3d(est[n], tgt, data_range=1.0) for n in range(1, k + 1)])
        assert list(fig.data[1].y) == pytest.approx([msssim_3d(mu, tgt, data_range=1.0)] * 2)
        c = (8, 8, 8)
        assert np.array_equal(img, np.concatenate([viz.montage(est[k], c, scale=2, vmax=1.0),
                                                    viz.montage(tgt, c, scale=2)], axis=0))
        r = tta_average.deviation_correlations(est[k], small_scans, mu)
        assert f"correlates r = {r[0]:.2f} with this target's, at most {r[1:].max():.2f} with 2 other" in md
        assert r[0] > r[1:].max() and "**The estimate singles out this target**" in md
        assert f"target: {curve[-1]:.3f}, against {msssim_3d(mu, tgt, data_range=1.0):.3f}" in md


def test_the_known_bank_panel_on_a_patch_of_background_says_why_it_cannot_run(monkeypatch):
    """A patch-mode run at a corner of the grid, where every bank scan is background (0): the panel raised the metric's
    'a: expected finite values, found NaN or inf' (the attack's α̂ was NaN); it now says what is wrong."""
    from types import SimpleNamespace

    import gradio as gr

    from mixdemo import ui

    _tiny_attack_lab(monkeypatch, _textures(1, seed=1), _textures(1, seed=2), np.zeros((3, 32, 32, 32), np.float32))
    target = np.zeros((32, 32, 32), np.float32)
    sess = ui.Session(target=SimpleNamespace(image=target))
    sess.view = {"mode": "patch", "region": (slice(0, 32),) * 3, "proxy": target, "alpha": 0.4, "reference_id": "ref-0"}
    with pytest.raises(gr.Error, match="bank's scans do not differ here") as raised:
        ui.known_bank_report(sess, progress=_Progress())
    assert "finite" not in str(raised.value)


def test_the_inversion_panel_scores_at_the_network_s_resolution_as_the_privacy_record_does(monkeypatch):
    """The record (inversion.inversion_experiment) scores the estimate and the proxy on volumes pooled as the network
    works; the panel scored the estimate interpolated back to full resolution against the proxy's own detail. A
    network that returns its input (its estimate is the pooled proxy): the record's two figures are equal, the panel
    showed the estimate below the proxy."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    from mixdemo import ui
    from mixdemo.attacks.reid import downsample
    from mixdemo.metrics import msssim_3d

    class Identity(nn.Module):
        downsample, patch_size = 2, 32

        def __init__(self) -> None:
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    monkeypatch.setattr(ui, "_inversion_model", lambda: Identity())
    target, reference = _textures(2, seed=3, side=64)
    proxy = 0.4 * target + 0.6 * reference
    sess = ui.Session(target=SimpleNamespace(image=target))
    sess.view = {"mode": "whole", "region": (slice(None),) * 3, "proxy": proxy, "alpha": 0.4}
    _, md = ui.inversion_report(sess, progress=_Progress())
    record = msssim_3d(downsample(proxy), downsample(target), data_range=1.0)
    assert f"{record:.3f}" != f"{msssim_3d(proxy, target, data_range=1.0):.3f}"  # the test tells the two apart
    assert f"target: **{record:.3f}**, against {record:.3f} for the proxy itself, both pooled 2×" in md


def test_the_averaging_panel_says_which_defences_the_privacy_record_found_to_help():
    """The TTA panel offers two defences; the privacy record measured a fresh α per mix leaving re-identification of
    the averaged proxies no lower (README: "a fresh α per mix ... does not"), separate requests lowering it. The
    panel's text presented both alike ("Defences: a fresh α per mix, or separate requests")."""
    import json

    from mixdemo import ui

    record = json.loads((ui.RESULTS_DIR / "privacy.json").read_text(encoding="utf-8"))["defences"]
    offered = {"a fresh α per mix": "fresh_alpha", "separate requests": "separate_shuffled_requests"}
    clauses = ui.TTA_MD.split("Defences the client can try:")[1].split(";")
    for phrase, row in offered.items():
        clause = next(c for c in clauses if phrase in c)
        helps = record[row]["reid_map"] < record["none"]["reid_map"]
        assert ("does not help" in clause) is not helps, (phrase, clause)


def test_about_shows_results_and_cards(tmp_path, monkeypatch):
    import json

    from mixdemo import ui

    doc = {"command": "python -m training.evaluate", "seed": 0, "date": "2026-11-30",
           "dice": {"learned_tta": {"GM": 0.9, "WM": 0.95, "CSF": 0.8, "mean": 0.88}},
           "dice_vs_k": {"learned": [[1, 0.85], [2, 0.87]]}, "icc": {"GM": {"icc": 0.9, "ci95": [0.8, 0.95], "n": 4}}}
    (tmp_path / "segmentation.json").write_text(json.dumps(doc))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "fig_dice.png").write_bytes(b"\x89PNG")
    (tmp_path / "screenshot_segment.png").write_bytes(b"\x89PNG")
    monkeypatch.setattr(ui, "RESULTS_DIR", tmp_path)
    res = ui.about_results()
    assert "python -m training.evaluate" in res.md and "| learned_tta | 0.900" in res.md and "0.900" in res.md
    assert len(res.figs) == 1 and list(res.docs) == ["segmentation"] and not res.other_md and not res.other_figs
    assert [Path(p).name for p, _ in res.pngs] == ["fig_dice.png"]
    assert res.cards_md.startswith("## Model cards")


def test_about_reads_results_and_cards_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """The results and model cards are UTF-8 (α, ³, ŷ); Windows' default text encoding is the ANSI code page
    (cp1252), which showed them as mojibake ("Î±Â·x") in the About tab: emulated here."""
    import json

    from mixdemo import ui

    real_read_text = Path.read_text

    def windows_read_text(self, encoding=None, errors=None):
        return real_read_text(self, encoding=encoding or "cp1252", errors=errors)

    results, weights = tmp_path / "results", tmp_path / "weights"
    results.mkdir()
    (weights / "segmentation").mkdir(parents=True)
    doc = {"command": "python -m training.evaluate --note α·x", "dice": {"learned_tta": {"GM": 0.9}}}
    (results / "segmentation.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    (weights / "segmentation" / "README.md").write_text("# S\nx_mix = α·x + (1−α)·x_ref on 32³ patches, ŷ_mix\n",
                                                         encoding="utf-8")
    monkeypatch.setattr(ui, "RESULTS_DIR", results)
    monkeypatch.setenv("MIXDEMO_WEIGHTS_DIR", str(weights))
    monkeypatch.setattr(Path, "read_text", windows_read_text)
    res = ui.about_results()
    assert "--note α·x" in res.md
    assert "x_mix = α·x + (1−α)·x_ref on 32³ patches, ŷ_mix" in res.cards_md


def test_about_shows_the_main_results_first_and_the_others_apart(tmp_path, monkeypatch):
    """segmentation, privacy, bench come first, in that order, whatever their names sort as; every other file goes
    to the closed accordion; no cell shows a placeholder ("None", "…", "seed ?") for a value the file lacks."""
    import json

    from mixdemo import ui

    docs = {
        "aaa_side_study": {"command": "python -m x", "date": "2026-12-01",  # no seed
                           "dice": {"learned": {"GM": 0.8, "WM": None}, "nested": {"GM": {"a": [1, 2]}}},
                           "dice_vs_k": {"learned": [[1, 0.8], [2, 0.82]]}},
        "bench": {"command": "python -m mixdemo.bench", "date": "2026-12-04", "baseline_s": 4.947,
                  "levers": {"rule": {"rule": {"deep": 1}, "held": False}}},
        "privacy": {"command": "python -m training.evaluate_privacy", "seed": 0,
                    "reid": {"no_proxy": {"map": 1.0, "map_std": None}, "mixup": {"map": 0.536, "map_std": 0.13}}},
        "segmentation": {"command": "python -m training.evaluate", "seed": 0,
                         "dice": {"learned_tta": {"GM": 0.928, "avg": 0.899}},
                         "dice_vs_k": {"learned": [[1, 0.85], [2, 0.87]]}},
    }
    for name, doc in docs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    monkeypatch.setattr(ui, "RESULTS_DIR", tmp_path)
    res = ui.about_results()
    assert list(res.docs) == ["segmentation", "privacy", "bench", "aaa_side_study"]
    heads = [res.md.index(f"### `results/{n}.json`") for n in ("segmentation", "privacy", "bench")]
    assert heads == sorted(heads) and "aaa_side_study" not in res.md
    assert "### `results/aaa_side_study.json`" in res.other_md
    assert [name for name, _ in res.figs] == ["segmentation: Dice against K"]
    assert [name for name, _ in res.other_figs] == ["aaa_side_study: Dice against K"]
    assert "| learned_tta | 0.928 | 0.899 |" in res.md and "| baseline_s | 4.947 |" in res.md
    assert "| no_proxy | 1.000 |  |" in res.md  # a null cell is left blank
    assert "| | held |\n|---|---|\n| rule | False |" in res.md  # the nested column is left out
    assert "| learned | 0.800 |" in res.other_md and "nested" not in res.other_md  # a row of nested values: left out
    wide = {f"run{i}": {f"measure{j}": 0.5 for j in range(3 * i, 3 * i + 3)} for i in range(4)}  # 12 columns, 3/4 blank
    assert ui._table(wide).splitlines()[1] == "- **run1**: measure3 0.500 · measure4 0.500 · measure5 0.500"
    for text in (res.md, res.other_md):
        assert "None" not in text and "…" not in text and "seed ?" not in text


def test_about_shows_a_section_s_headline_figures_its_classes_by_name_and_every_command(tmp_path, monkeypatch):
    """privacy.json's known-bank hit rate (a number beside nested rows) was left out, per-class rows read "1 2 3",
    and a record merged from several commands was credited to the last."""
    import json

    from mixdemo import ui

    doc = {"commands": ["python -m a --sections x", "python -m a --sections y --merge"], "command": "python -m a --sections y --merge",
           "known_bank": {"reference_hit_rate": 0.9, "bank_size": 18},
           "output_leakage": {"dice_vs_target": 0.646, "per_class": {"1": 0.742, "2": 0.797, "3": 0.399}}}
    (tmp_path / "privacy.json").write_text(json.dumps(doc))
    monkeypatch.setattr(ui, "RESULTS_DIR", tmp_path)
    md = ui.about_results().md
    assert "Commands, in order: `python -m a --sections x` then `python -m a --sections y --merge`" in md
    assert "| reference_hit_rate | 0.900 |" in md and "| dice_vs_target | 0.646 |" in md
    assert "| | GM | WM | CSF |\n|---|---|---|---|\n| per_class | 0.742 | 0.797 | 0.399 |" in md


def test_the_about_tab_folds_the_other_results_and_the_raw_json():
    """Built app: the main results' markdown is open, the other results and the raw JSON sit in closed accordions."""
    import gradio as gr

    from mixdemo import ui

    demo = ui.build_demo()
    blocks = demo.blocks.values()
    by_id = {b.elem_id: b for b in blocks if getattr(b, "elem_id", None)}
    assert "results/segmentation.json" in by_id["about-results"].value
    for elem in ("other-results", "raw-results"):
        assert isinstance(by_id[elem], gr.Accordion) and by_id[elem].open is False
    assert "### `results/" in next(b.value for b in by_id["other-results"].children if isinstance(b, gr.Markdown))


def test_views_of_a_scan_leave_gradios_cache_within_twenty_minutes():
    """The app's PNG views of an uploaded scan are swept from Gradio's cache (they stayed an hour, README's
    "In the browser" promises 20 minutes at most)."""
    from mixdemo import ui

    demo = ui.build_demo()
    assert demo.delete_cache == (ui.RENDERINGS_SWEEP_S, ui.RENDERINGS_MAX_AGE_S)
    assert ui.RENDERINGS_MAX_AGE_S + ui.RENDERINGS_SWEEP_S <= 20 * 60


def test_a_session_s_download_is_not_swept_with_the_views(tmp_path, monkeypatch):
    """Gradio's sweep of the views (``delete_cache``: 15 to 20 minutes) deleted the session's download too, since
    Gradio files every output it serves for that sweep: the link of a page still open answered 403 once it ran,
    while README's "In the browser" says a download goes with its session (two hours after its last run at most).
    The views still go; the download is left to the session (``_drop_session``, its next run or scan)."""
    import asyncio

    import gradio as gr
    from gradio import processing_utils
    from gradio.route_utils import delete_files_created_by_app

    from mixdemo import ui

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    demo = ui.build_demo()
    blocks = list(demo.blocks.values())
    download = next(b for b in blocks if isinstance(b, gr.File) and b.label == "Segmentation (NIfTI, in the input's space)")
    view = next(b for b in blocks if getattr(b, "elem_id", None) == "proxy")
    out = Path(ui._output_dir()) / "segmentation_patch.nii.gz"
    out.write_bytes(b"labels")
    served = [asyncio.run(processing_utils.async_move_files_to_cache(block.postprocess(value), block, postprocess=True))
              for block, value in ((download, str(out)), (view, np.zeros((8, 8, 3), np.uint8)))]
    assert served[0]["path"] == str(out)  # served in place: no copy of the labels elsewhere in the cache
    picture = Path(served[1]["path"])
    assert picture.exists() and picture.is_relative_to(tmp_path / "cache")
    delete_files_created_by_app(demo, None)  # the sweep, every file it tracks past its age
    assert not picture.exists()  # the view went
    assert out.exists()  # the download stays for its session
    ui._drop_session(ui.Session(target=None, out_dir=str(out.parent)))  # and goes with it
    assert not out.parent.exists()


def test_the_downloads_a_stopped_app_served_are_deleted_as_gradio_deleted_them(tmp_path, monkeypatch):
    """The downloads are not Gradio's to sweep (above), so its stop no longer deletes them either: the app's own stop
    does, the download folders its page served and no other."""
    import asyncio

    from gradio import processing_utils

    from mixdemo import ui
    from tests.conftest import free_port

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    demo = ui.build_demo()
    ui.launch_demo(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        download = next(b for b in demo.blocks.values() if getattr(b, "served_folders", None) is not None)
        served, other = (Path(ui._output_dir()) / "segmentation.nii.gz" for _ in range(2))
        for path in (served, other):
            path.write_bytes(b"labels")
        asyncio.run(processing_utils.async_move_files_to_cache(download.postprocess(str(served)), download,
                                                               postprocess=True))
        assert served.exists()
    finally:
        demo.close()
    assert not served.parent.exists()  # its folder went with the server
    assert other.exists()  # another process's (same cache) is left to that process


def test_a_live_session_s_download_outlasts_the_next_runs_clean_up_for_as_long_as_the_session(tmp_path, monkeypatch):
    """Each run clears the outputs folder of downloads older than OUTPUT_MAX_AGE_S: an hour deleted the download of a
    session that lives two hours after its last run (SESSION_TTL_S; README: its download goes with its state)."""
    import os
    import time

    from mixdemo import ui

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    mine = Path(ui._output_dir())
    for age, kept in ((ui.SESSION_TTL_S - 60, True), (ui.SESSION_TTL_S + 60, False)):
        then = time.time() - age
        os.utime(mine, (then, then))
        ui._output_dir()  # another session's run
        assert mine.exists() is kept, age


def test_the_separation_panel_runs_as_many_steps_as_the_privacy_tables():
    from mixdemo import ui
    from training.evaluate_privacy import FULL

    assert ui.SEPARATION_STEPS == FULL.steps_per_level


def test_long_events_show_their_progress_on_the_status_line_only():
    """Loading a scan, segmenting and the separation show one progress bar, on their status line, not one on each of
    their many outputs (whole-brain mode drew eleven)."""
    from mixdemo import ui

    demo = ui.build_demo()
    ids = {getattr(b, "elem_id", None): i for i, b in demo.blocks.items()}
    deps = {d["api_name"]: d for d in demo.config["dependencies"]}
    for name, status in (("segment", "status"), ("load_example", "status"), ("load_upload", "status"),
                         ("attack_separation", "separation-status")):
        assert deps[name]["show_progress_on"] == [ids[status]], name
        assert ids[status] in deps[name]["outputs"]
    assert len(deps["segment"]["outputs"]) == 16
    started = deps["upload_started"]  # the upload's status line is reset in the browser while the scan loads
    assert started["outputs"] == [ids["status"]] and ui.UPLOAD_LOADING in started["js"] and started["backend_fn"] is False
    assert started["targets"] == deps["load_upload"]["targets"]


def test_the_d_menu_shows_short_choices_and_says_which_is_best():
    """The D menu's shown values fit its box (the long 'where' text was cut off) and its label says the default
    measured the best Dice."""
    from mixdemo import ui
    from mixdemo.weights import DEFAULT_UNMIXING

    choices = [(DEFAULT_UNMIXING, "on 2³ patches, trained on 96³ patches"), ("unmixing-96", "at full resolution, "
               "trained on 96³ patches"), ("unmixing-p4-96", "on 4³ patches, a per-voxel MLP (16 channels), trained on "
               "96³ patches"), ("unmixing-x", "")]
    menu = ui.d_menu(choices)
    assert [value for _, value in menu] == [name for name, _ in choices]
    assert [shown for shown, _ in menu] == [f"{DEFAULT_UNMIXING} (default)", "unmixing-96 · full resolution",
                                            "unmixing-p4-96 · 4³ patches", "unmixing-x"]
    assert all(len(shown) <= 34 for shown, _ in menu)
    demo = ui.build_demo()
    d = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "unmixing")
    assert "default measured the best Dice" in d.label and "lower Dice" in d.info and "client time" in d.info
    assert all(len(shown) <= 34 for shown, _ in d.choices)


def _write_request(path: Path) -> None:
    """A valid one-proxy request file (16³, values in [0, 1])."""
    np.save(path, np.random.default_rng(1).uniform(0, 1, (16, 16, 16)).astype(np.float32))

def test_server_deletes_the_request_and_writes_float16(app_weights, tmp_path):
    from mixdemo import server

    req = tmp_path / "proxy.npy"
    _write_request(req)
    out = server.segment_file(req)
    assert not req.exists()
    probs = np.load(out)
    assert probs.shape == (1, 4, 16, 16, 16) and probs.dtype == np.float16
    with pytest.raises(server.ProxyError, match="out of range"):
        server.check_proxies(np.full((8, 8, 8), 100.0, np.float32))
    with pytest.raises(server.ProxyError, match="voxels"):
        server.check_proxies(np.zeros((4, 8, 8), np.float32))



def test_an_upload_s_path_reaches_the_handler_without_a_stray_file_in_gradio_s_cache(tmp_path):
    """Gradio 6's gr.File(type="filepath") leaves an empty temporary file in its cache per upload; the app's upload
    components hand over the path alone (patched on the instance: no stub file written beside mixdemo/ui.py)."""
    import gradio as gr
    from gradio.data_classes import FileData

    from mixdemo import ui

    upload = tmp_path / "0a1b" / "proxy.npy"
    upload.parent.mkdir()
    upload.write_bytes(b"request")
    for component in (ui.upload_path_only(gr.File(type="filepath")), gr.File(type="filepath")):
        component.GRADIO_CACHE = str(tmp_path / "cache")
        (tmp_path / "cache").mkdir(exist_ok=True)
        assert str(component.preprocess(FileData(path=str(upload)))) == str(upload)
        stray = list((tmp_path / "cache").iterdir())
        assert (stray == []) == ("_process_single_file" in vars(component))  # Gradio's own leaves one: still needed
        for f in stray:
            f.unlink()
    typed = ui.upload_path_only(gr.File(type="filepath", file_types=[".npy"]))  # Gradio's type check kept
    assert "_process_single_file" not in vars(typed)
    assert not Path(ui.__file__).with_suffix(".pyi").exists()


def test_the_app_sweeps_what_a_killed_process_left_in_its_own_cache_only(tmp_path, monkeypatch):
    """Entries of the app's own cache older than the age given go at start (an upload never read, a response never
    fetched); younger ones (another running app's) stay, and a cache chosen with GRADIO_TEMP_DIR is not swept."""
    import os
    import tempfile
    import time

    from mixdemo import oneshot

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    own = oneshot.make_private_dir(oneshot.app_cache_dir())
    assert own.parent == tmp_path.resolve() and own.name.startswith(oneshot.APP_CACHE_FOLDER + "-")  # one per user
    assert own.stat().st_mode & 0o777 == 0o700  # its user's alone: Gradio writes its views there as 0644
    old_upload, fresh_upload, old_stray = own / "0a1b", own / "2c3d", own / "tmpabc"
    for folder in (old_upload, fresh_upload):
        folder.mkdir(parents=True)
        (folder / "scan.nii.gz").write_bytes(b"a scan")
    old_stray.write_bytes(b"")
    hour_ago = time.time() - 3600
    for entry in (old_upload, old_stray):
        os.utime(entry, (hour_ago, hour_ago))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "shared"))
    (tmp_path / "shared").mkdir()
    assert oneshot.sweep_stale(900) == 0 and old_upload.exists()  # not the app's own cache: left alone
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(own))
    assert oneshot.sweep_stale(900) == 2
    assert sorted(p.name for p in own.iterdir()) == ["2c3d"] and (fresh_upload / "scan.nii.gz").exists()


def test_the_app_s_cache_is_refused_when_another_user_made_it_first(tmp_path, monkeypatch):
    """The app's cache has a name anyone can predict ($TMPDIR/mixdemo-gradio-<user id>): a folder another user made
    there first stays theirs (its owner reads every upload, whatever its mode), so it is refused with a message that
    says what to do, not taken (nor a traceback: chmod of another's folder fails for a user who is not root)."""
    import os
    import tempfile

    from mixdemo import oneshot

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    squatted = oneshot.app_cache_dir()
    squatted.mkdir(mode=0o777)
    os.chmod(squatted, 0o777)
    monkeypatch.setattr(os, "getuid", lambda: squatted.stat().st_uid + 1)  # as if another user had made it
    with pytest.raises(oneshot.CacheDirError, match="another user") as refused:
        oneshot.make_private_dir(squatted)
    assert "GRADIO_TEMP_DIR" in str(refused.value)
    assert squatted.stat().st_mode & 0o777 == 0o777  # left as it was: not the app's to change
    (tmp_path / "a file").write_bytes(b"")
    with pytest.raises(oneshot.CacheDirError, match="not a folder"):
        oneshot.make_private_dir(tmp_path / "a file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="making a folder of another user's needs root")
def test_app_py_refuses_a_cache_folder_another_user_made_without_a_traceback(tmp_path):
    """``python app.py`` run by root took a cache folder another user had made (chmod 0700 kept them its owner, able
    to read every upload); now it stops with one line before Gradio loads."""
    import socket

    from mixdemo import oneshot

    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env["TMPDIR"] = str(tmp_path)
    squatted = tmp_path / f"{oneshot.APP_CACHE_FOLDER}-{os.getuid()}"
    squatted.mkdir()
    os.chown(squatted, 12345, 12345)
    with socket.socket() as taken:  # should it start all the same, it cannot listen: it ends
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run([sys.executable, "app.py", "--server-only", "--port", str(taken.getsockname()[1])],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: " in done.stderr and "another user" in done.stderr and "GRADIO_TEMP_DIR" in done.stderr


def test_server_deletes_the_folder_gradio_made_for_the_upload_once_empty(app_weights, tmp_path, monkeypatch):
    """Gradio saves each upload as <cache>/<content hash>/<name>: that folder goes with the request, unless it
    holds another file; a request outside Gradio's cache leaves its folder alone."""
    from mixdemo import server
    from mixdemo.oneshot import upload_file_name

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    upload, shared = tmp_path / "cache" / "0a1b", tmp_path / "cache" / "2c3d"
    name = upload_file_name("proxy.npy")  # what the app's upload middleware names an upload
    for folder in (upload, shared):
        folder.mkdir(parents=True)
        _write_request(folder / name)
    (shared / "other.npy").write_bytes(b"another upload")
    for folder in (upload, shared):
        np.load(server.segment_file(folder / name))
    assert not upload.exists() and (tmp_path / "cache").is_dir()
    assert not (shared / name).exists() and (shared / "other.npy").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write_request(elsewhere / "proxy.npy")
    server.segment_file(elsewhere / "proxy.npy")
    assert elsewhere.is_dir()


def _uploaded(app_url: str, name: str, data: bytes) -> str:
    """Upload ``data`` as a file named ``name`` the way the page and gradio_client do; its path on the server."""
    import httpx

    answer = httpx.post(f"{app_url}/gradio_api/upload", files={"files": (name, data)}, timeout=60)
    answer.raise_for_status()
    return answer.json()[0]


def _called(app_url: str, api_name: str, path: str) -> str:
    """Call ``api_name`` on a file of the server named by its path, as any HTTP client may; the event and its data."""
    import httpx

    joined = httpx.post(f"{app_url}/gradio_api/call/{api_name}",
                        json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}, timeout=60)
    with httpx.stream("GET", f"{app_url}/gradio_api/call/{api_name}/{joined.json()['event_id']}", timeout=120) as s:
        return " ".join(line for line in s.iter_lines() if line)


def test_a_file_served_to_every_page_is_not_deleted_by_a_refused_upload_of_its_copy(app_url, api, tmp_path):
    """Gradio names an upload by its content, as it names its copy of a figure or a view: an upload of a copy of the
    About tab's figure was that very file, and its refusal deleted the figure for every visitor (403). A request
    may also name the figure's path itself: refused now, neither read nor deleted."""
    import re

    import httpx
    from gradio_client import handle_file

    from mixdemo import server

    config = httpx.get(f"{app_url}/config", timeout=60).text
    figure = next(p for p in re.findall(r'[^"]+/[0-9a-f]{64}/[^"/]+\.png', config)
                  if (REPO / "results" / Path(p).name).exists())  # a figure of results/, in every page's config
    served = f"{app_url}/gradio_api/file={figure}"
    assert httpx.get(served).status_code == 200
    copy = tmp_path / Path(figure).name
    shutil.copy(REPO / "results" / copy.name, copy)
    with pytest.raises(Exception, match="not a NumPy .npy"):  # read and refused: the upload was the copy's own file
        api.predict(handle_file(str(copy)), api_name="/segment_proxy")
    assert httpx.get(served).status_code == 200
    assert server.NOT_UPLOADED in _called(app_url, "segment_proxy", figure)
    assert httpx.get(served).status_code == 200


def _send_half_and_leave(app_url: str, body: bytes, boundary: bytes) -> None:
    """Post ``body`` to the upload route as a page closed mid-upload does: the whole body's length declared, half of
    it sent, then the connection closed."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(app_url)
    head = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary.decode()}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((where.hostname, where.port), timeout=30) as s:
        s.sendall(head + body[: len(body) // 2])


def test_an_upload_gradio_did_not_keep_leaves_nothing_of_it_in_its_cache(app_url):
    """Gradio's upload route writes each file part to a temporary file in its cache (tmpXXXXXXXX) and moves it into
    place once the body is parsed: a client that left half-way (a page closed during a scan's upload), or a file part
    named otherwise than ``files``, left that file there, the scan's bytes in it, for as long as the app ran. Removed
    now once the request is over; a complete upload is kept where Gradio put it."""
    import secrets
    import time

    import httpx

    marker = secrets.token_bytes(16)
    data = marker * (1 << 16)  # 1 MiB: more than a file's buffer, so the half sent reaches the disk
    kept = _uploaded(app_url, "Doe_Jane.nii.gz", data)  # the control: a whole upload, kept
    cache = Path(kept).parent.parent

    def strays() -> list[Path]:
        found = []
        for f in cache.glob("tmp*"):
            try:
                if f.is_file() and marker in f.read_bytes():
                    found.append(f)
            except OSError:  # removed while read
                pass
        return found

    boundary = b"mixdemo-test-boundary"
    part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="Doe_Jane.nii.gz"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    _send_half_and_leave(app_url, part, boundary)
    answer = httpx.post(f"{app_url}/gradio_api/upload", files={"scan": ("Doe_Jane.nii.gz", data)}, timeout=60)
    assert answer.status_code == 200 and answer.json() == []  # a part Gradio does not take: nothing uploaded
    deadline = time.monotonic() + 30  # the left connection is noticed when the server reads it next
    while strays() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not strays()
    assert Path(kept).read_bytes() == data


def test_two_uploads_of_one_file_are_two_files(app_url, tmp_path):
    """Two users uploading the same file (the same example scan, say) got one path: the first request read it and
    deleted it, and the second was told its valid request was not a .npy file. Each upload is a file of its own
    now, named at random (no trace of the uploader's file name), and each request is answered."""
    import io

    from mixdemo import oneshot

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(4).uniform(0, 1, (1, 16, 16, 16)).astype(np.float32))
    first, second = (_uploaded(app_url, "Doe_Jane_proxy.npy", buf.getvalue()) for _ in range(2))
    assert first != second and all(oneshot.is_upload(p) and "Doe" not in p and p.endswith(".npy")
                                   for p in (first, second))
    for path in (first, second):
        assert _called(app_url, "segment_proxy", path).startswith("event: complete")
        assert not Path(path).exists()


def test_a_file_of_gradio_s_cache_that_no_upload_made_is_neither_read_nor_deleted(app_weights, example, tmp_path,
                                                                                    monkeypatch):
    """The scan, labels and proxy handlers are handed any path of Gradio's cache that a request names: a view or a
    figure served to other pages is refused and kept; the app's own uploads are read and deleted as before."""
    from mixdemo import examples, oneshot, server, ui

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    scan = examples.example_folders()[examples.example_names()[0]] / "t1.nii.gz"
    shown = tmp_path / "cache" / ("ab" * 32) / "t1.nii.gz"  # where Gradio keeps a file it serves (by its content)
    shown.parent.mkdir(parents=True)
    shutil.copy(scan, shown)
    status = ui.load_upload(str(shown), progress=_Progress())[-3]
    assert shown.exists(), "a request naming it deleted it"
    assert getattr(ui, "NOT_UPLOADED", None) in status and shown.exists()
    assert ui.NOT_UPLOADED in ui.load_upload_labels(str(shown), None)[-2] and shown.exists()
    with pytest.raises(server.ProxyError, match="did not upload"):
        server.segment_file(shown)
    server.delete_upload(shown)
    assert shown.exists()
    upload = tmp_path / "cache" / ("ab" * 32) / oneshot.upload_file_name("t1.nii.gz")
    shutil.copy(scan, upload)
    assert oneshot.is_upload(upload) and "Loaded your scan" in ui.load_upload(str(upload), progress=_Progress())[-3]
    assert not upload.exists() and shown.exists()


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 17, 64, 1000, 10**6])
def test_the_upload_middleware_renames_each_file_part_and_passes_its_bytes_untouched(chunk):
    """The multipart body is renamed as it streams in, whatever the chunks it arrives in: each file part gets a
    random name with its format's suffix alone; fields, other headers and the bytes (delimiter-like ones too) pass."""
    import asyncio
    import re

    from mixdemo import oneshot

    boundary = b"----WebKitFormBoundaryx7Yq"
    tricky = b"--" + boundary[:-1] + b"\r\n\r\n--\r\n" + bytes(range(256))  # almost a delimiter, and a blank line
    parts = [(b'name="files"; filename="Doe Jane.NII.GZ"', tricky), (b'name="files"; filename=scan.zip', b"PK"),
             (b'name="note"', b"a field"), (b"name=\"note\"; filename*=UTF-8''x.zip", b"a field too, for Gradio"),
             (b"name=\"files\"; filename=\"IM_1.dcm\"; filename*=UTF-8''%E2%82%AC.dcm", b"DICM")]
    body = b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition
                    + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
                    for disposition, data in parts) + b"--" + boundary + b"--\r\n"
    received = []

    async def app(scope, receive, send):
        assert not any(k == b"content-length" for k, _ in scope["headers"])
        while True:
            message = await receive()
            received.append(message["body"])
            if not message["more_body"]:
                return

    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]

    async def receive():
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    scope = {"type": "http", "method": "POST", "path": oneshot.UPLOAD_ROUTE,
             "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary), (b"content-length", b"9")]}
    asyncio.run(oneshot.UniqueUploads(app)(scope, receive, None))
    out = b"".join(received)
    names = re.findall(rb'filename="([^"]*)"', out)
    assert [n[-7:] if n.endswith(b".nii.gz") else n[-4:] for n in names] == [b".nii.gz", b".zip", b".dcm"]
    assert all(re.fullmatch(rb"upload-[0-9a-f]{32}(\.nii\.gz|\.zip|\.dcm)", n) for n in names) and len(set(names)) == 3
    expected = body
    for original in (b'filename="Doe Jane.NII.GZ"', b"filename=scan.zip", b"filename=\"IM_1.dcm\"; filename*=UTF-8''%E2%82%AC.dcm"):
        expected = expected.replace(original, b"filename=X")
    assert re.sub(rb'filename="[^"]*"', b"filename=X", out) == expected


def test_the_upload_middleware_renames_a_files_part_that_is_no_file_out_of_gradio_s_way():
    """Gradio's upload route took every part named ``files`` for a file: a field of that name (no ``filename``, or
    only ``filename*``, which Gradio ignores) was a TypeError, HTTP 500 and a traceback; now Gradio ignores it."""
    from mixdemo import oneshot

    for disposition in (b'form-data; name="files"', b"form-data; name=files; filename*=UTF-8''Doe.nii"):
        head = b"Content-Disposition: " + disposition + b"\r\nContent-Type: text/plain"
        assert oneshot._renamed_head(head) == (
            b'Content-Disposition: form-data; name="files-not-a-file"\r\nContent-Type: text/plain')
    assert oneshot._renamed_head(b'Content-Disposition: form-data; name="note"') == (
        b'Content-Disposition: form-data; name="note"')


def test_download_and_answer_folders_are_named_by_secrets_not_by_tempfile(tmp_path, monkeypatch):
    """Gradio serves a download, or a client's answer, to whoever holds its URL: the folder's name is all that keeps
    it from another user. mkdtemp drew it from tempfile's name sequence (8 characters of one Mersenne Twister,
    shared by every temporary name of the process: not meant to be unguessable); 128 bits of secrets now."""
    import itertools
    import tempfile

    from mixdemo import oneshot, server, ui

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: (f"guessable{i}" for i in itertools.count()))
    folders = [Path(ui._output_dir()), Path(ui._output_dir()), server.response_dir()]
    assert not any("guessable" in f.name for f in folders) and len({f.name for f in folders}) == 3
    assert all(len(f.name) >= 32 and f.stat().st_mode & 0o777 == 0o700 for f in folders)
    assert folders[2].parent == oneshot.response_root()


def test_server_refuses_a_request_by_its_declared_size_before_loading_it(tmp_path):
    """A .npy header may declare petabytes in a few bytes: refused from the header, never allocated."""
    from mixdemo import server

    req = tmp_path / "proxy.npy"
    with open(req, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, {"descr": "<f2", "fortran_order": False, "shape": (2**20, 2**20, 2**10)})
        fh.write(b"\0" * 64)
    with pytest.raises(server.ProxyError, match="too large"):
        server.segment_file(req)
    assert not req.exists()


def test_server_refuses_a_request_by_its_declared_data_type_before_loading_it(tmp_path, monkeypatch):
    """A .npy header may declare items of gigabytes each (a few bytes of file): refused from the header as not
    floating-point, never allocated; an object array is still refused as pickled."""
    from mixdemo import server

    req = tmp_path / "proxy.npy"
    with open(req, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|V2000000000", "fortran_order": False, "shape": (100,)})
        fh.write(b"\0" * 64)
    monkeypatch.setattr(server.np, "load", lambda *a, **k: pytest.fail("np.load ran on a refused header"))
    with pytest.raises(server.ProxyError, match="floating-point numbers; got the data type"):
        server.read_proxy_file(req)
    monkeypatch.undo()
    np.save(req, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(server.ProxyError, match="pickled objects are refused"):
        server.read_proxy_file(req)


def test_server_reads_float64_proxies_as_float32_and_refuses_integers(tmp_path):
    """As the wire format says: float16 and float32 (float64 too, read as float32); integer voxels are refused."""
    from mixdemo import server

    req = tmp_path / "proxy.npy"
    values = np.linspace(0, 1, 2 * 16 ** 3).reshape(2, 16, 16, 16)
    np.save(req, values)  # NumPy's default, float64
    read = server.read_proxy_file(req)
    assert read.dtype == np.float32 and np.array_equal(read, values.astype(np.float32))
    np.save(req, (values * 100).astype(np.int16))
    with pytest.raises(server.ProxyError, match="floating-point numbers; got the data type int16"):
        server.read_proxy_file(req)


def test_server_checks_each_request_limit_at_its_bound():
    """K from 1 to MAX_K, sides from MIN_SIDE to MAX_SIDE, values in [-1, 4] (float16 or float32, one proxy given
    as (X, Y, Z)) are accepted as float32 (K, X, Y, Z); one step beyond each bound is refused. The voxel cap holds
    for arrays given in-process too (a broadcast view: nothing allocated)."""
    from mixdemo import server

    lo, hi = server.MIN_SIDE, server.MAX_SIDE
    for shape in ((server.MAX_K, lo, lo, lo), (1, hi, lo, lo), (1, lo, lo, hi)):
        assert server.check_proxies(np.zeros(shape, np.float16)).shape == shape
    one = server.check_proxies(np.linspace(-1.0, 4.0, lo**3, dtype=np.float32).reshape(lo, lo, lo))
    assert one.shape == (1, lo, lo, lo) and one.dtype == np.float32 and one.min() == -1.0 and one.max() == 4.0
    for shape, says in (((server.MAX_K + 1, lo, lo, lo), "proxies"), ((0, lo, lo, lo), "proxies"),
                        ((1, lo - 1, lo, lo), "voxels"), ((1, lo, lo, hi + 1), "voxels")):
        with pytest.raises(server.ProxyError, match=says):
            server.check_proxies(np.zeros(shape, np.float32))
    for value in (-1.01, 4.01):
        with pytest.raises(server.ProxyError, match="out of range"):
            server.check_proxies(np.full((lo, lo, lo), value, np.float32))
    with pytest.raises(server.ProxyError, match="too large"):
        server.check_proxies(np.broadcast_to(np.float16(0.5), (server.MAX_K, hi, hi, hi)))


def test_server_deletes_the_request_before_segmenting_it(app_weights, tmp_path):
    """The request file is gone once read: S never runs while it is on disk."""
    from mixdemo import server

    req = tmp_path / "proxy.npy"
    _write_request(req)
    on_disk: list[bool] = []
    observer = lambda arr: on_disk.append(req.exists())  # noqa: E731
    server.add_observer(observer)
    try:
        server.segment_file(req)
    finally:
        server.remove_observer(observer)
    assert on_disk == [False]


def test_a_response_is_served_once_then_its_folder_is_deleted(tmp_path, monkeypatch):
    """The one-shot middleware deletes a response's folder after one complete 200 GET of its .npy; a partial or
    refused send, another file of Gradio's cache, or a response fetched by HEAD keeps it."""
    import asyncio

    from mixdemo import oneshot, server

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))

    def response() -> Path:
        out = server.response_dir() / "mixed_probs.npy"
        out.write_bytes(b"answer")
        return out

    def fetch(path: Path, status: int = 200, method: str = "GET", more_body: bool = False) -> None:
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status})
            await send({"type": "http.response.body", "body": b"answer", "more_body": more_body})

        async def send(message):
            pass

        scope = {"type": "http", "method": method, "path": f"{oneshot.FILE_ROUTE}{path}"}
        asyncio.run(oneshot.OneShotResponses(app)(scope, None, send))

    served = response()
    assert served.parent.parent == oneshot.response_root()
    for kept in ({"status": 404}, {"method": "HEAD"}, {"more_body": True}):
        fetch(served, **kept)
        assert served.exists(), kept
    fetch(served)
    assert not served.parent.exists() and oneshot.response_root().is_dir()
    upload = tmp_path / "cache" / "0a1b" / "proxy.npy"  # an upload: not a response
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"request")
    fetch(upload)
    nested = oneshot.response_root() / "x" / "y" / "mixed_probs.npy"  # deeper than a response folder
    loose = oneshot.response_root() / "mixed_probs.npy"  # its folder would be every response's
    not_npy = response().with_name("notes.txt")
    for other in (nested, loose, not_npy):
        other.parent.mkdir(parents=True, exist_ok=True)
        other.write_bytes(b"answer")
        fetch(other)
    assert upload.exists() and nested.exists() and loose.exists() and not_npy.exists()
    fetch(Path(str(served.parent) + "%00") / "mixed_probs.npy")  # no file's path (resolve raised: 500, traceback)


def test_server_deletes_the_request_and_a_partial_response_whatever_fails(app_weights, tmp_path, monkeypatch):
    from mixdemo import inference, server

    req = tmp_path / "proxy.npy"
    _write_request(req)

    def broken_step():
        raise RuntimeError("the memory step failed")

    monkeypatch.setattr(inference, "reusing_freed_memory", broken_step)
    with pytest.raises(RuntimeError, match="memory step"):
        server.segment_file(req)
    assert not req.exists()  # deleted although _answer never ran
    monkeypatch.undo()

    written: list[Path] = []

    def disk_full(path, *args, **kwargs):
        written.append(Path(path))
        Path(path).write_bytes(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    _write_request(req)
    monkeypatch.setattr(server.np, "save", disk_full)
    with pytest.raises(OSError):
        server.segment_file(req)
    assert not req.exists() and written and not written[0].parent.exists()  # no partial response left

def test_server_hands_the_requests_memory_back_once_it_is_answered_or_refused(app_weights, tmp_path, monkeypatch):
    """The endpoint is one step of :func:`mixdemo.inference.reusing_freed_memory`: its memory is handed back after
    the response is written (S's own pass hands back too), and after a refused request as well."""
    from mixdemo import inference, server

    calls: list[str] = []
    monkeypatch.setattr(inference, "hand_back_freed_memory", lambda: calls.append("back") or True)
    req = tmp_path / "proxy.npy"
    _write_request(req)
    server.segment_file(req)
    assert len(calls) == 2  # segment_proxies' step, then the endpoint's
    calls.clear()
    np.save(req, np.full((8, 8, 8), 100.0, np.float32))
    with pytest.raises(server.ProxyError):
        server.segment_file(req)
    assert calls == ["back"] and not req.exists()


def test_examples_are_generated_once_into_the_cache(tmp_path, monkeypatch):
    """First use synthesises the phantoms (here a fast stand-in) into $MIXDEMO_CACHE; later uses reuse them."""
    from mixdemo import examples
    from mixdemo.io import load_labels, load_scan

    calls = []

    def fake_synth(template, subject, scan):
        calls.append((subject.seed, scan.seed))
        rng = np.random.default_rng(scan.seed)
        labels = rng.integers(0, 4, (144, 192, 160)).astype(np.uint8)
        return (labels * 0.3 + rng.uniform(0, 0.05, labels.shape)).astype(np.float32), labels

    monkeypatch.setenv("MIXDEMO_CACHE", str(tmp_path))
    monkeypatch.setattr(examples, "_REPO_ROOT", tmp_path)  # no data/phantoms to copy from
    monkeypatch.setattr(examples, "_synth", fake_synth)
    seen = []
    folders = examples.example_folders(lambda f, m: seen.append(m))
    assert list(folders) == examples.example_names() and len(calls) == examples.N_EXAMPLES
    assert seen and "first use" in seen[0]
    # subject i of the default cohort: sample_subject(i), sample_scan(16 i)
    assert calls[0] == (int(examples.example_subjects()[0][4:]), 16 * int(examples.example_subjects()[0][4:]))
    first = next(iter(folders.values()))
    assert load_scan(first / "t1.nii.gz").data.shape == (144, 192, 160)
    assert load_labels(first / "seg.nii.gz").max() == 3
    examples.example_folders()
    assert len(calls) == examples.N_EXAMPLES  # cached: nothing generated again
    assert not list(tmp_path.glob("examples/.tmp-*"))




def test_examples_copied_from_the_default_cohort_keep_each_scan_with_its_own_labels(tmp_path, monkeypatch):
    """Where data/phantoms is the default cohort, each example is its subject's scan 0 and each retest its scan 1,
    the labels copied from the same scan as the image; nothing is synthesised."""
    from mixdemo import examples

    split = examples._split()
    cohort = tmp_path / "repo" / "data" / "phantoms"
    cohort.mkdir(parents=True)
    (cohort / "split.json").write_text(json.dumps({"seed": examples.COHORT_SEED, **split}))
    for subject in examples.example_subjects():
        for scan in (0, 1):
            folder = cohort / f"{subject}_scan-{scan}"
            folder.mkdir()
            (folder / "t1.nii.gz").write_text(f"image of {subject} scan {scan}")
            (folder / "seg.nii.gz").write_text(f"labels of {subject} scan {scan}")
    monkeypatch.setenv("MIXDEMO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(examples, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(examples, "_synth", lambda *a: pytest.fail("synthesised although the cohort is there"))
    for (name, folder), subject in zip(examples.example_folders().items(), examples.example_subjects()):
        assert subject in name and folder.name == subject
        assert (folder / "t1.nii.gz").read_text() == f"image of {subject} scan 0"
        assert (folder / "seg.nii.gz").read_text() == f"labels of {subject} scan 0"
    for subject, folder in examples.retest_folders().items():
        assert (folder / "t1.nii.gz").read_text() == f"image of {subject} scan 1"
        assert (folder / "seg.nii.gz").read_text() == f"labels of {subject} scan 1"


@pytest.mark.slow
def test_app_on_a_taken_port_says_so_without_a_traceback():
    import socket

    root = Path(__file__).resolve().parent.parent
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "app.py", "--port", str(port)], cwd=root, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: the app could not listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr

def test_server_only_comes_from_the_option_or_the_environment(monkeypatch):
    from mixdemo.launch import parse_app_args

    monkeypatch.delenv("MIXDEMO_SERVER_ONLY", raising=False)
    assert not parse_app_args([]).server_only and parse_app_args(["--server-only"]).server_only
    monkeypatch.setenv("MIXDEMO_SERVER_ONLY", "1")  # a Space's variable: no option can be passed there
    assert parse_app_args([]).server_only
    monkeypatch.setenv("MIXDEMO_SERVER_ONLY", "off")
    assert not parse_app_args([]).server_only


@pytest.mark.parametrize("server_only, zero_gpu", [(False, False), (True, False), (False, True), (True, True)])
def test_the_start_message_names_what_the_warm_up_loads(monkeypatch, server_only, zero_gpu):
    """``python app.py`` says what it loads before listening, in the words of the parts ``warm_up`` loads (one list,
    not a message restating it): the server alone S only, and no example scans written into the cache; on ZeroGPU
    S loads inside its GPU call, not then (the server alone: nothing, so no line)."""
    from mixdemo import client, examples, preprocess, server, ui

    loaded: list[str] = []
    monkeypatch.setattr(server, "ZERO_GPU", zero_gpu)
    monkeypatch.setattr(server, "segmentation_model", lambda: loaded.append("S"))
    monkeypatch.setattr(client, "unmixing_model", lambda: loaded.append("D"))
    monkeypatch.setattr(examples, "example_folders", lambda: loaded.append("examples"))
    monkeypatch.setattr(examples, "reference_bank", lambda: loaded.append("bank"))
    monkeypatch.setattr(preprocess, "prepare_template", lambda: loaded.append("template"))
    lines: list[str] = []
    ui.warm_up(server_only=server_only, announce=lines.append)
    expected = ([] if zero_gpu else ["S"]) + ([] if server_only else ["D", "examples", "bank", "template"])
    assert loaded == expected
    if not expected:
        assert lines == []
        return
    (line,) = lines
    assert ("network S" in line) == (not zero_gpu) and ("client's D" in line) == (not server_only)
    assert ("example scans" in line and "reference bank" in line and "writes the examples into the cache" in line
            ) == (not server_only)


@pytest.mark.slow
def test_the_server_alone_serves_its_two_endpoints_takes_no_scan_and_segments_a_client_s_proxies(app_weights, example,
                                                                                                tmp_path):
    """``python app.py --server-only``: an operator serving remote clients offers no demo that mixes a raw scan on
    the server (the whole app's Segment tab does) and no attack lab; the client segments against it as against
    the whole app."""
    import httpx
    from gradio_client import Client

    from mixdemo.client import main as client_main
    from training import reliability as rel

    cache = tmp_path / "cache"  # a fresh machine's: the server alone writes no example into it
    with rel.AppProcess(tmp_path / "app", env={"MIXDEMO_WEIGHTS_DIR": str(app_weights), "MIXDEMO_CACHE": str(cache)},
                        args=["--server-only"]) as app:
        config = httpx.get(app.url + "/config", timeout=30).json()
        named = {d.get("api_name") for d in config["dependencies"]}
        api = Client(app.url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
        endpoints = set(api.view_api(print_info=False, return_format="dict")["named_endpoints"])
        info = api.predict(api_name="/server_info")
        api.close()
        out = tmp_path / "seg.nii.gz"
        code = client_main([str(example[0] / "t1.nii.gz"), "-o", str(out), "--server", app.url, "--tta", "2",
                            "--mode", "patch"])
        log = app.log_text()
    # warmed up before it listened: a warm-up beside the first requests raced them to import MONAI (one failed)
    assert "warm-up done" in log and log.index("warm-up done") < log.index("Running on local URL"), log[-3000:]
    # what it says it loads is what it loads: S, and no example scans written into the cache (it said it wrote them)
    said = [line for line in log.splitlines() if line.startswith("Loading ")]
    assert said == ["Loading the segmentation network S before listening..."], said
    assert not (cache / "examples").exists()
    assert config["title"] == "Mixup-Privacy server" and "a segmentation server" in json.dumps(config)
    assert endpoints == {"/segment_proxy", "/server_info"} and named <= {"segment_proxy", "server_info", "leave_session", None}, named
    assert not any(c.get("type") in ("image", "gallery", "plot", "slider") for c in config["components"])
    assert info["format"] and code == 0 and out.exists()


def _cleared_warm_caches():
    """The caches warm_up fills, emptied: (S's, D's, the reference bank's, the template's)."""
    from mixdemo import client, examples, preprocess, server

    caches = (server._load, client._unmixing, examples._bank, preprocess._made_reference)
    for cache in caches:
        cache.cache_clear()
    return caches


@pytest.mark.slow
@pytest.mark.parametrize("server_only, zero_gpu, filled", [(False, False, (1, 1, 1, 1)), (True, False, (1, 0, 0, 0)),
                                                          (False, True, (0, 1, 1, 1))])
def test_warm_up_loads_what_a_first_request_waits_for(app_weights, monkeypatch, server_only, zero_gpu, filled):
    """``python app.py`` loads S (and with the whole demo D, the bank and the template) before it listens, so its first
    visitor does not wait for them; the server alone loads S only; on ZeroGPU S loads inside its GPU call."""
    from mixdemo import server, ui

    monkeypatch.setattr(server, "ZERO_GPU", zero_gpu)
    caches = _cleared_warm_caches()
    ui.warm_up(server_only=server_only)
    assert tuple(cache.cache_info().currsize for cache in caches) == filled


def test_warm_up_without_weights_logs_what_it_could_not_load_and_raises_nothing(tmp_path, monkeypatch, caplog):
    import logging

    from mixdemo import examples, preprocess, ui

    monkeypatch.setenv("MIXDEMO_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setattr(examples, "reference_bank", lambda: None)  # nor build the bank and the template here
    monkeypatch.setattr(examples, "example_folders", lambda: None)
    monkeypatch.setattr(preprocess, "prepare_template", lambda: None)
    _cleared_warm_caches()
    with caplog.at_level(logging.WARNING, logger="mixdemo.ui"):
        ui.warm_up()
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["warm-up: S not loaded (WeightsNotFound); the first request that needs it will say why"]


def test_examples_command_writes_the_example_targets_for_the_client(example, tmp_path, capsys):
    """``python -m mixdemo.examples --out DIR``: each example target's scan and labels, test subjects only."""
    from mixdemo import examples

    scans = tmp_path / "scans"
    assert examples.main(["--out", str(scans)]) == 0
    printed = capsys.readouterr().out.split()
    cached = examples.example_folders()
    assert printed == [str(scans / f"{f.name}.nii.gz") for f in cached.values()] == sorted(map(str, scans.glob("*.nii.gz")))
    for folder in cached.values():
        assert (scans / f"{folder.name}.nii.gz").read_bytes() == (folder / "t1.nii.gz").read_bytes()
        assert (scans / "labels" / f"{folder.name}_seg.nii.gz").read_bytes() == (folder / "seg.nii.gz").read_bytes()
    assert not {f.name for f in cached.values()} & set(examples.reference_ids())  # never a reference
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert examples.main(["--out", str(blocker / "scans")]) == 2
    assert "could not be written" in capsys.readouterr().err

def test_separation_glue_with_an_untrained_prior(app_weights, example, monkeypatch):
    """The Langevin panel's glue against mixdemo.attacks.bss (an untrained prior: only the plumbing is tested)."""
    import threading

    import torch

    from mixdemo import examples, ui

    bss = pytest.importorskip("mixdemo.attacks.bss")
    score_mod = pytest.importorskip("mixdemo.attacks.score")
    assert callable(bss.separate)
    torch.manual_seed(0)
    monkeypatch.setattr(ui, "_score_model", lambda: score_mod.ScoreNet().eval())
    sess = ui.load_example(examples.example_names()[0], progress=_Progress())[0]
    sess = ui.run_segmentation(sess, [], 1, 0.5, False, "patch", 0.5, progress=_Progress())[0]
    out = ui.run_separation(sess, 1, True, None, progress=_Progress())
    assert all(o.dtype == np.uint8 for o in out[:4]) and "MS-SSIM, recovered vs true target" in out[4]
    assert "may understate the attack" in out[4]  # 1 step per level, not the evaluation's 10
    cancelled = threading.Event()
    cancelled.set()
    assert "cancelled early" in ui._separation(sess, 2, _Progress(), cancelled, False)[4]


def test_the_separation_without_alpha_says_what_it_searched_and_when_the_run_s_alpha_lies_outside():
    """The panel said only 'grid search': with α = 0.15 set on the slider the attacker searched 0.50–0.70 (the default
    range folded), never the run's α, and nothing said so."""
    from mixdemo import ui

    inside, outside = ui._unknown_alpha_note(0.4, 0.6), ui._unknown_alpha_note(0.15, 0.7)
    assert "grid search over 0.50–0.70" in inside and "chose 0.60" in inside and "outside" not in inside
    assert "this run's α, 0.15, lies outside it" in outside


def _separation_panel(monkeypatch, sources_of) -> tuple:
    """The separation panel on the first example's patch-mode proxy (α = 0.4), its attack replaced by one that returns
    the two sources ``sources_of(target, reference)`` in one chain: (target, reference, the panel's five outputs)."""
    from mixdemo import examples, ui

    bss = pytest.importorskip("mixdemo.attacks.bss")
    score_mod = pytest.importorskip("mixdemo.attacks.score")
    monkeypatch.setattr(ui, "_score_model", lambda: score_mod.ScoreNet().eval())
    sess = ui.load_example(examples.example_names()[0], progress=_Progress())[0]
    sess = ui.run_segmentation(sess, [], 1, 0.4, False, "patch", 0.5, progress=_Progress())[0]
    target, reference = sess.image[sess.view["region"]], sess.view["reference"]

    def recovery(score, proxy, alpha, **kwargs):
        sources = np.asarray(sources_of(target, reference))  # (2 sources, ...), or (n chains, 2 sources, ...)
        sources = (sources if sources.ndim == 5 else sources[None])[None]  # (1 proxy, n chains, 2 sources, ...)
        n = sources.shape[1]
        return bss.SeparationResult(sources=sources, alphas=np.full((1, n), 0.4), consistency=np.zeros((1, n)),
                                    energy=np.zeros((1, n)), completed=True)

    monkeypatch.setattr(bss, "separate", recovery)
    return target, reference, ui.run_separation(sess, 10, True, None, progress=_Progress())


def test_the_separation_panel_scores_the_recovered_target_against_the_true_one(app_weights, example, monkeypatch):
    """An attack that recovers both sources exactly, returned in the swapped order: the panel assigns them, shows
    MS-SSIM 1.000 for the target and the reference, and draws the recovered target as the true one."""
    _, _, (rec_t, true_t, rec_r, true_r, md) = _separation_panel(monkeypatch, lambda t, r: (r, t))  # swapped
    assert "recovered vs true target: 1.000**; recovered vs true reference: 1.000" in md
    assert np.array_equal(rec_t, true_t) and np.array_equal(rec_r, true_r) and not np.array_equal(rec_t, rec_r)


def test_the_separation_panel_shows_the_chain_and_sources_the_library_picks(app_weights, example, monkeypatch):
    """The panel restated bss.best_assignment's loop and took the chain of the best target + reference MS-SSIM: of a
    chain that recovers the reference exactly and the target dimmed, and one that recovers the target exactly and the
    reference not at all, it showed the first. It now shows bss.best_chain's pick (the record's best of the inits:
    the best recovered target), its sources in the order the library assigns them."""
    from mixdemo.attacks import bss
    from mixdemo.metrics import msssim_3d

    chains: list = []

    def two_chains(t: np.ndarray, r: np.ndarray) -> np.ndarray:
        chains.append(np.stack([np.stack([r, 0.6 * t]), np.stack([t, np.zeros_like(r)])]))  # chain 0 swapped
        return chains[-1]

    target, reference, (rec_t, true_t, rec_r, true_r, md) = _separation_panel(monkeypatch, two_chains)
    sources = chains[0][None]
    chain, shown, score = bss.best_chain(sources, target[None], reference[None])
    assert (int(chain[0]), int(shown[0])) == (1, 0)
    joint = [max(msssim_3d(c[i], target, data_range=1.0) + msssim_3d(c[1 - i], reference, data_range=1.0)
                 for i in (0, 1)) for c in chains[0]]
    assert joint[0] > joint[1]  # the old loop's pick differs: the test tells the two apart
    assert np.array_equal(rec_t, true_t) and f"recovered vs true target: {score[0]:.3f}**" in md
    from mixdemo import ui, viz  # the recovered reference drawn is the chain's other source
    c = tuple(n // 2 for n in target.shape)
    assert np.array_equal(rec_r, viz.montage(sources[0, 1, 1], c, scale=ui.PATCH_SCALE, vmax=1.0, grid=True))


def test_the_attack_panels_take_ms_ssim_as_the_privacy_record_does(app_weights, example, monkeypatch):
    """The privacy record (training.evaluate_privacy, mixdemo.attacks) takes MS-SSIM of [0, 1] scans with a data range
    of 1; the panels took each pair's own range, so a panel's figure for the same recovery was not the record's. A
    recovery at half the target's brightness: the panel shows the record's value, which the pair's range would not."""
    from mixdemo.metrics import msssim_3d

    target, _, outputs = _separation_panel(monkeypatch, lambda t, r: (0.5 * t, r))
    record, pair = msssim_3d(0.5 * target, target, data_range=1.0), msssim_3d(0.5 * target, target)
    assert f"{record:.3f}" != f"{pair:.3f}"  # the test tells the two apart
    assert f"recovered vs true target: {record:.3f}**" in outputs[4]


def test_server_whole_pass_and_slabs_agree_and_both_report_progress(app_weights, monkeypatch):
    """Volumes beyond a patch: one whole-volume pass when the memory budget allows, Z-slabs otherwise."""
    from mixdemo import server

    proxies = np.random.default_rng(3).uniform(0, 1, (1, 112, 48, 80)).astype(np.float32)
    results = {}
    for budget_mb in ("4096", "150"):
        monkeypatch.setenv("MIXDEMO_S_MEMORY_MB", budget_mb)
        seen = []
        results[budget_mb] = server.segment(proxies, progress=lambda f, m: seen.append((f, m)))
        assert seen and seen[-1][0] == pytest.approx(1.0)
    assert any("slab" in m for _, m in seen)  # the small budget took slabs
    agree = (results["4096"].argmax(1) == results["150"].argmax(1)).float().mean().item()
    assert results["4096"].shape == (1, 4, 112, 48, 80) and agree > 0.97  # seams differ a little (noise input)


def test_server_runs_the_pipelines_s_inference(app_weights):
    """mixdemo.server and mixdemo.pipeline run S through the one shared mixdemo.inference: same numbers."""
    import torch

    from mixdemo import server
    from mixdemo.pipeline import segment_proxies

    proxies = np.random.default_rng(2).uniform(0, 1, (2, 40, 48, 36)).astype(np.float32)
    seen = []
    ours = server.segment(proxies, progress=lambda f, m: seen.append(f))
    ref = segment_proxies(server.segmentation_model(), proxies)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert seen and seen[-1] == pytest.approx(1.0)


def test_the_endpoint_answers_each_proxy_in_its_place_and_keeps_nothing_of_the_request(app_weights, tmp_path):
    """Three different proxies in one request: answer k is S's answer to proxy k alone. Once answered, the request
    file is gone and nothing holds its array (no module-level state keeps user data)."""
    import gc
    import weakref

    import torch

    from mixdemo import server

    rng = np.random.default_rng(3)
    patch = rng.uniform(0, 1, (32, 32, 32)).astype(np.float32)
    proxies = np.stack([np.zeros_like(patch), patch, patch[::-1, :, ::-1]]).astype(np.float16)
    path = tmp_path / "proxy.npy"
    np.save(path, proxies)
    held = []
    observer = lambda arr: held.append(weakref.ref(arr))  # noqa: E731
    server.add_observer(observer)
    try:
        answer = np.load(server.segment_file(path)).astype(np.float32)
    finally:
        server.remove_observer(observer)
    assert not path.exists()
    gc.collect()
    assert held and held[0]() is None  # the request's array was released
    alone = [server.segment(proxies[k : k + 1].astype(np.float32))[0].numpy() for k in range(3)]
    assert not np.allclose(alone[0], alone[1], atol=1e-2)  # the three answers differ, so an order shows
    for k in range(3):
        np.testing.assert_allclose(answer[k], alone[k], atol=2e-2)  # float16 answers
    assert not any(isinstance(v, (np.ndarray, torch.Tensor)) for v in vars(server).values())


def test_every_network_the_app_loads_goes_to_the_picked_device(app_weights, monkeypatch):
    """The server's S, the client's D and the attack lab's score prior each go where ``pick_device`` says (CUDA
    when present); here a stand-in device that holds no data, which no loader would pick by itself."""
    import torch

    from mixdemo import client, models, server, ui

    pytest.importorskip("mixdemo.attacks.score")
    monkeypatch.setattr(models, "pick_device", lambda prefer=None: torch.device("meta"))
    for cache in (server._load, client._unmixing):
        cache.cache_clear()
    try:
        nets = {"S": server.segmentation_model(), "D": client.unmixing_model(required=True), "score": ui._score_model()}
        assert {name: next(net.parameters()).device.type for name, net in nets.items()} == dict.fromkeys(nets, "meta")
    finally:
        for cache in (server._load, client._unmixing):
            cache.cache_clear()


def test_a_port_that_is_not_one_is_a_usage_error_not_a_traceback(monkeypatch, capsys):
    """--port 99999 and GRADIO_SERVER_PORT=abc (which Gradio parses when imported) are refused in one line."""
    from mixdemo.launch import check_port_variable, parse_app_args

    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert parse_app_args([]).port == 7860 and parse_app_args(["--port", "7871"]).port == 7871
    for bad in ("99999", "0", "http"):
        with pytest.raises(SystemExit) as usage:
            parse_app_args(["--port", bad])
        assert usage.value.code == 2 and "is not a port number (1-65535)" in capsys.readouterr().err
    monkeypatch.setenv("GRADIO_SERVER_PORT", "abc")
    with pytest.raises(SystemExit, match="GRADIO_SERVER_PORT: 'abc' is not a port number"):
        check_port_variable()
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    check_port_variable()
    assert parse_app_args([]).port == 7999
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert parse_app_args([]).host == "127.0.0.1"  # this machine only, unless asked
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert parse_app_args([]).host == "0.0.0.0" and parse_app_args(["--host", "::1"]).host == "::1"


@pytest.mark.parametrize("name, value, refused", [
    ("MIXDEMO_PRECISION", "fp8", True), ("MIXDEMO_PRECISION", " BFloat16 ", False),
    ("MIXDEMO_UNMIXING_PRECISION", "half", True), ("MIXDEMO_UNMIXING_PRECISION", "auto", False),
    ("MIXDEMO_KEEP_FREED_MEMORY", "maybe", True), ("MIXDEMO_KEEP_FREED_MEMORY", "off", False),
    ("MIXDEMO_KEEP_FREED_MEMORY", "", False), ("MIXDEMO_SERVER_ONLY", "maybe", True), ("MIXDEMO_SERVER_ONLY", "1", False),
])
def test_a_setting_the_app_and_the_client_cannot_use_is_refused_at_start(monkeypatch, name, value, refused):
    """Read from the environment at the first request, a bad value was a traceback in the server's log there and a
    failed request for the client: app.py and the client check them before any work."""
    from mixdemo.inference import freed_memory_kept_by_choice
    from mixdemo.launch import check_setting_variables

    monkeypatch.setenv(name, value)
    if refused:
        with pytest.raises(SystemExit, match=f"\\${name} must be one of .*; got '{value}'"):
            check_setting_variables()
    else:
        check_setting_variables()
    if name == "MIXDEMO_KEEP_FREED_MEMORY" and value == "off":
        assert freed_memory_kept_by_choice() is False


@pytest.mark.parametrize("value, refused", [("lots", True), ("-100", True), ("0", True), ("nan", True), ("inf", True),
                                             ("1200", False), (" 2400.5 ", False), ("", False)])
def test_a_memory_budget_the_server_cannot_use_is_refused_at_start(monkeypatch, value, refused):
    """$MIXDEMO_S_MEMORY_MB was read at the first request: a word was a traceback there and a failed request, and a
    negative, zero or NaN budget went through as the thinnest slabs without a word. Checked at start with the others."""
    from mixdemo.launch import check_setting_variables

    monkeypatch.setenv("MIXDEMO_S_MEMORY_MB", value)
    if refused:
        with pytest.raises(SystemExit, match=f"^error: \\$MIXDEMO_S_MEMORY_MB must be a positive number of megabytes; "
                                             f"got '{value}'"):
            check_setting_variables()
    else:
        check_setting_variables()


def test_a_remote_client_is_told_the_server_cannot_segment_not_where_its_weights_are(tmp_path, monkeypatch, caplog):
    """segment_proxy without weights: the kind of fault for the client; the folder and the remedy for the log."""
    import logging

    import gradio as gr

    from mixdemo import server, ui, weights

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "operator-folder"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server._load.cache_clear()
    request = tmp_path / "proxy.npy"
    np.save(request, np.full((1, 32, 32, 32), 0.5, np.float32))
    try:
        with caplog.at_level(logging.WARNING, logger="mixdemo.ui"), pytest.raises(gr.Error) as refused:
            ui._server_endpoint(str(request))
    finally:
        server._load.cache_clear()
    told = str(refused.value.message)
    assert told.startswith("No weights for 'segmentation' on this server: it cannot segment until its operator")
    assert "operator-folder" not in told and "training.train" not in told
    assert "operator-folder" in caplog.text and not request.exists()


def test_the_dice_table_has_a_column_for_each_class_the_s_gives():
    from mixdemo import ui

    truth = np.zeros((8, 8, 8), np.uint8)
    truth[:2], truth[2:4], truth[4:6], truth[6:] = 1, 2, 3, 4
    table = ui._dice_rows(truth, {"learned TTA": truth}, ["background", "GM", "WM", "CSF", "lesion"])
    assert table.splitlines() == ["| unmixing | GM | WM | CSF | lesion | mean |", "| --- | --- | --- | --- | --- | --- |",
                                  "| learned TTA | 1.000 | 1.000 | 1.000 | 1.000 | **1.000** |"]


def test_a_new_scan_replaces_the_last_one_s_results_and_download_and_waits_for_its_run(app_weights, tmp_path):
    """Loading a scan while a run went on brought the old scan back when the run ended, and left its results and
    download beside the new one: loads share the runs' queue, the last session's download goes, and the results
    of a session that has not run are emptied (those of one that has, after a refused upload, stay)."""
    from mixdemo import ui

    names = ui.examples.example_names()
    first = ui.load_example(names[0], progress=_Progress())[0]
    first.view, first.out_dir = {"mode": "patch"}, str(tmp_path / "download")
    (tmp_path / "download").mkdir()
    assert ui.results_of(first) == (ui.gr.skip(),) * ui.RESULT_OUTPUTS  # a refused upload: its results stay
    second = ui.load_example(names[1], first, progress=_Progress())[0]
    assert second is not first and not (tmp_path / "download").exists()  # the last scan's download is gone
    cleared = ui.results_of(second)
    assert len(cleared) == ui.RESULT_OUTPUTS and cleared[:9] == (None,) * 9 and cleared[9] == ui.DICE_PLACEHOLDER
    assert cleared[11] is None and cleared[12] == []  # no download link, no mixes
    demo = ui.build_demo()
    fns = {f.api_name: f for f in demo.fns.values()}
    assert {fns[n].concurrency_id for n in ("load_example", "load_upload", "segment")} == {"compute"}
    assert {fns[n].concurrency_limit for n in ("load_example", "load_upload", "segment")} == {1}


def test_an_upload_is_deleted_whatever_number_the_series_field_holds(app_weights, example, tmp_path):
    """The DICOM series field refused a number below 0 in Gradio's own check of the inputs (its minimum), before
    load_upload ran: a scan uploaded with -1 typed there was neither read nor deleted (it stayed in Gradio's cache
    until the views' sweep) and the page said "Value -1 is less than minimum value 0.". The handler gets every
    number now: a DICOM upload is refused, a NIfTI one loads, each deleted."""
    from mixdemo import examples, ui

    demo = ui.build_demo()
    load = next(f for f in demo.fns.values() if f.api_name == "load_upload")
    series = load.inputs[1]
    assert series.elem_id == "upload-series"
    assert series.preprocess(-1) == -1  # what the page sends reaches the handler
    folder, _ = example
    archive = examples._write_dicom_example(folder / "t1.nii.gz", tmp_path / "Doe_Jane.zip")
    status = ui.load_upload(str(archive), -1, progress=_Progress())[5]
    assert status.startswith(f"**{ui.UPLOAD_REFUSED}:** Series -1") and not archive.exists()
    nifti = tmp_path / "upload.nii.gz"
    shutil.copy(folder / "t1.nii.gz", nifti)
    assert ui.load_upload(str(nifti), -1, progress=_Progress())[5].startswith("Loaded your scan") and not nifti.exists()


def test_labels_uploaded_while_their_scan_loads_wait_for_it():
    """A scan and its labels uploaded one after the other (the two boxes of one accordion): the labels' event ran at
    once beside the scan's slower load (a registration takes seconds), so they were refused ("Load a scan first") or
    attached to the scan loaded before, and the scan's status then said "no labels yet": the labels were lost. They
    share the loads' queue now, so they reach the scan loaded before them."""
    from mixdemo import ui

    demo = ui.build_demo()
    fns = {f.api_name: f for f in demo.fns.values()}
    assert fns["load_labels"].concurrency_id == fns["load_upload"].concurrency_id == "compute"
    assert fns["load_labels"].concurrency_limit == 1


def test_an_example_can_be_picked_again_once_an_upload_replaced_it():
    """After an upload replaced an example, the example menu still named that example, and picking it again did
    nothing (its value had not changed, so no event ran): the example could not be loaded again without picking
    another first. A loaded upload now empties the menu (a refused one leaves it), and only a user's pick loads an
    example (emptying the menu loads nothing)."""
    import gradio as gr

    from mixdemo import ui

    assert ui.example_menu_of(ui.Session(target=None, source="upload")) == gr.update(value=None)
    assert ui.example_menu_of(ui.Session(target=None, source="example")) == gr.skip()  # a refused upload: as it was
    demo = ui.build_demo()
    example = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label.startswith("1 · Example"))
    loads = [f for f in demo.fns.values() if f.api_name == "load_example"]
    assert [t[1] for f in loads for t in f.targets] == ["input"]  # the user's pick, not any change of the value
    uploads = [f for f in demo.fns.values() if f.api_name == "load_upload"]
    menu = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "example_menu_of"]
    assert len(menu) == 1 and [b._id for b in menu[0].outputs] == [example._id]
    assert menu[0].trigger_after is not None and len(uploads) == 1  # it follows the upload's chain


def test_a_class_the_region_s_truth_lacks_is_not_scored_as_a_perfect_dice():
    """A patch outside the brain read Dice 1.000 everywhere (absent from both maps: 1 by convention): a class the
    truth lacks is shown as —, left out of the mean, and a region with none says Dice is not defined."""
    from mixdemo import ui

    names = ["background", "GM", "WM", "CSF"]
    truth = np.zeros((8, 8, 8), np.uint8)
    assert ui._dice_rows(truth, {"learned TTA": truth}, names).startswith(
        "_No GM, WM, CSF in this region's ground truth (outside the brain?): Dice is not defined")
    truth[:4] = 1
    pred = truth.copy()
    pred[:2] = 2  # half its GM called WM, which the truth lacks
    rows = ui._dice_rows(truth, {"learned TTA": pred}, names).splitlines()
    assert rows[2] == "| learned TTA | 0.667 | — | — | **0.667** |"
    assert rows[-1] == "_—: no WM, CSF in this region's ground truth, so not scored; the mean is over the others._"


def test_labels_in_another_scheme_are_refused_not_scored_as_zero(app_weights, example, tmp_path):
    """Label values the model's classes do not name (here the labels times 7) would give Dice 0 with no word why."""
    import nibabel as nib

    from mixdemo import ui

    folder, _ = example
    sess = ui.load_example(ui.examples.example_names()[0], progress=_Progress())[0]
    seg = nib.load(folder / "seg.nii.gz")
    bad = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(seg.dataobj) * 7).astype(np.uint8), seg.affine), bad)
    truth_before = sess.truth
    with pytest.warns(UserWarning, match="The labels hold values 7, 14, 21, which are not the model's classes"):
        out = ui.load_upload_labels(str(bad), sess)
    assert out[0] == ui.gr.skip() and sess.truth is truth_before and not bad.exists()


def _shows(img: np.ndarray, rgb) -> int:
    """How many pixels of a panel are exactly ``rgb``."""
    return int((img.reshape(-1, 3) == np.asarray(rgb, np.uint8)).all(1).sum())


def test_each_result_panel_shows_its_own_volume_through_the_region_s_centre():
    """The Segment tab's panels, each from a view whose volumes mark one voxel with one class of their own: each panel
    shows its volume's class (naive under "Naive", learned under "Learned", TTA, truth, the first reference's labels,
    the server's answer) and the uncertainty as heat, at the region's centre in all three views (patch mode)."""
    from types import SimpleNamespace

    from mixdemo import ui, viz

    shape, region = (48, 40, 44), (slice(8, 40), slice(4, 36), slice(6, 38))
    centre = (16, 16, 16)  # of the 32³ region
    def marked(c: int) -> np.ndarray:
        out = np.zeros((32, 32, 32), np.uint8)
        out[centre] = c
        return out
    mixed = np.zeros((8, 32, 32, 32), np.float16)
    mixed[0], mixed[0][centre], mixed[4][centre], mixed[7][centre] = 1, 0, 0.5, 0.5  # soft: half class 4, half 7
    soft = np.round(np.float32(0.5) * np.add(viz.class_colour(4), viz.class_colour(7), dtype=np.float32))
    unc = np.zeros((32, 32, 32), np.float32)
    unc[centre] = 0.2
    sess = ui.Session(target=SimpleNamespace(image=np.full(shape, 0.5, np.float32)), centre=(24, 20, 22))
    sess.view = {"mode": "patch", "region": region, "reference": np.full((32, 32, 32), 0.5, np.float32),
                 "reference_labels": marked(6), "proxy": np.full((32, 32, 32), 0.5, np.float32), "mixed": mixed,
                 "naive": marked(1), "learned": marked(2), "tta": marked(3), "uncertainty": unc, "truth": marked(5)}
    loc, target, ref, proxy, answer, naive, learned, tta, heat, truth = ui.render(sess, 1.0, "patch")
    voxel = ui.PATCH_SCALE**2 * 3  # the centre voxel, once in each view
    for panel, c in ((ref, 6), (naive, 1), (learned, 2), (tta, 3), (truth, 5)):
        assert _shows(panel, viz.class_colour(c)) == voxel, c
        assert not any(_shows(panel, viz.class_colour(other)) for other in {1, 2, 3, 4, 5, 6, 7} - {c}), c
    assert _shows(answer, soft) == voxel  # the server's answer in soft colours, not its arg-max
    views, k = np.zeros(heat.shape[:2], bool), ui.PATCH_SCALE  # the heat panel's views: its colour bar is beside them
    for p in viz.layout((32, 32, 32), grid=True):
        views[p.y0 * k : (p.y0 + p.height) * k, p.x0 * k : (p.x0 + p.width) * k] = True
    assert (heat != target)[views].any(-1).sum() == voxel and _shows(heat[views], viz._INFERNO[-1]) == voxel  # its voxel
    bar = viz.heat_scale_layout((32, 32, 32), 1e-3, ui.PATCH_SCALE, grid=True)  # the floor: 99.5 % of unc is 0
    assert (heat[bar.y0 : bar.y0 + bar.height, bar.x0 : bar.x0 + bar.width]
            == viz.colour_bar(bar.height, bar.width, 1e-3)).all()  # the scale, on this panel alone
    assert all(p.shape == heat.shape and (p[~views] == viz.CANVAS).all() for p in (target, ref, naive, tta, truth))
    assert all(_shows(p, viz.class_colour(c)) == 0 for p in (target, proxy) for c in range(1, 8))
    assert _shows(loc, viz.PATCH_BOX_COLOUR) > 0 and loc.shape[0] == shape[2] * ui.WHOLE_SCALE


def test_the_mix_gallery_pairs_each_reference_with_its_own_proxy():
    """The gallery of the K mixes: reference k (named, with its labels) beside proxy k (its α), in the key's order."""
    from types import SimpleNamespace

    from mixdemo import ui, viz

    region = (slice(8, 40),) * 3
    bank = [SimpleNamespace(ref_id=f"sub-{c}", image=np.full((48, 48, 48), 0.5, np.float32),
                            labels=np.full((48, 48, 48), c, np.uint8)) for c in (1, 2, 3)]
    key = SimpleNamespace(reference_ids=["sub-3", "sub-1"], alphas=[0.3, 0.45], is_mirrored=lambda k: k == 1)
    proxies = np.stack([np.full((32, 32, 32), v, np.float32) for v in (0.2, 0.9)])
    proxies[1, 16, 16, 16] = 0.0  # proxy 2 alone has a dark voxel at the patch's centre
    sess = ui.Session(target=SimpleNamespace(image=np.zeros((48, 48, 48), np.float32)), centre=(30, 5, 20))
    sess.view = {"mode": "patch", "region": region}
    items = ui._mix_gallery(sess, bank, key, proxies, 1.0)
    assert [caption for _, caption in items] == ["reference 1: sub-3", "proxy 1 (α = 0.30) — sent",
                                                 "reference 2: sub-1", "proxy 2 (α = 0.45, target mirrored) — sent"]
    assert _shows(items[0][0], viz.class_colour(3)) > 0 and _shows(items[0][0], viz.class_colour(1)) == 0
    assert _shows(items[2][0], viz.class_colour(1)) > 0 and _shows(items[2][0], viz.class_colour(3)) == 0
    assert _shows(items[1][0], (0, 0, 0)) == 0 and _shows(items[3][0], (0, 0, 0)) == 3 * ui.PATCH_SCALE**2


def test_the_about_tab_plots_each_recorded_dice_at_its_k():
    """A results file's Dice-against-K pairs are plotted at their recorded K, not at their position in the list."""
    from mixdemo import ui

    name, fig = ui._result_fig("x", {"dice_vs_k": {"learned": [[1, 0.8], [2, 0.85], [10, 0.9]]}, "classes": ["GM"]})
    assert list(fig.data[0].x) == [1, 2, 10] and list(fig.data[0].y) == [0.8, 0.85, 0.9]
    assert fig.layout.yaxis.title.text == "mean Dice (GM)"


def test_attack_networks_say_missing_and_corrupt_weights_apart(tmp_path, monkeypatch):
    """The attack lab's networks: absent weights read 'not available yet: train them'; weights there but failing
    their checksum read the checksum's message (not 'has not been trained')."""
    from mixdemo import ui
    from mixdemo.attacks.inversion import InversionNet
    from mixdemo.weights import WEIGHTS_DIR_ENV, write_training_record

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ui.AttackUnavailable, match="has not been trained"):
        ui._inversion_model()
    InversionNet(features=(4, 4, 8, 8, 16, 4)).save_pretrained(tmp_path / "inversion")
    write_training_record(tmp_path / "inversion", {}, "mixdemo.attacks.inversion.InversionNet")
    assert isinstance(ui._inversion_model(), InversionNet)
    path = tmp_path / "inversion" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ui.AttackUnavailable, match="checksum"):
        ui._inversion_model()


def test_cancel_with_no_separation_running_leaves_the_last_result_as_it_is():
    """It set the status to "Cancelling…" for good and replaced the last result's text; with a run, it stops it.
    Another job of the session (a segmentation) is not the Cancel button's to stop."""
    from types import SimpleNamespace

    from mixdemo import ui

    request = SimpleNamespace(session_hash="cancel-test")
    assert ui.cancel_attack(request) == ui.gr.skip()
    with ui.session_job(request, "private segmentation") as stop:
        assert ui.cancel_attack(request) == ui.gr.skip() and not stop.is_set()
    with ui.session_job(request, ui.SEPARATION_JOB) as running:
        assert ui.cancel_attack(request) == "Cancelling…" and running.is_set()
    assert "cancel-test" not in ui._RUNNING


def test_a_separation_cancelled_while_it_waits_in_the_queue_does_not_run(monkeypatch):
    """Cancel pressed while the separation waited its turn in the compute queue answered 'No separation is running',
    and the separation then ran in full. Its stop flag is now filed at the click (queue_separation, outside the queue):
    Cancel sets it, and the run, when its turn comes, returns at once, the last result left as it was. A page left
    while it waits does the same; a run not cancelled takes its flag up and runs."""
    from types import SimpleNamespace

    from mixdemo import ui

    ran: list[int] = []
    monkeypatch.setattr(ui, "_separation", lambda *args: ran.append(1) or ("done",) * 5)
    sess = SimpleNamespace(view={"mode": "patch"})
    request = SimpleNamespace(session_hash="cancel-waiting")
    ui.queue_separation(request)
    assert ui.cancel_attack(request) == ui.SEPARATION_CANCELLED_BEFORE
    out = ui.run_separation(sess, 1, True, request, progress=_Progress())
    assert out == (ui.gr.skip(),) * 4 + (ui.SEPARATION_CANCELLED_BEFORE,) and not ran
    assert ui.cancel_attack(request) == ui.gr.skip()  # nothing waits or runs any more
    ui.queue_separation(request)
    ui.leave_session(request)
    assert ui.run_separation(sess, 1, True, request, progress=_Progress())[4] == ui.SEPARATION_CANCELLED_BEFORE
    ui.queue_separation(request)
    assert ui.run_separation(sess, 1, True, request, progress=_Progress()) == ("done",) * 5 and ran == [1]
    ui.queue_separation(request)  # a run refused before any work takes its flag up too
    with pytest.raises(ui.gr.Error):
        ui.run_separation(None, 1, True, request, progress=_Progress())
    assert "cancel-waiting" not in ui._WAITING and "cancel-waiting" not in ui._RUNNING


def test_the_separation_s_stop_flag_is_filed_at_the_click_outside_the_queue():
    """The wiring of the test above: the Run button's first step files the flag without queueing, then the separation
    waits in the compute queue."""
    from mixdemo import ui

    demo = ui.build_demo()
    fns = {id(fn): fn for fn in demo.fns.values()}
    first = next(fn for fn in fns.values() if getattr(fn.fn, "__name__", "") == "queue_separation")
    run = next(fn for fn in fns.values() if getattr(fn.fn, "__name__", "") == "run_separation")
    assert first.queue is False and run.concurrency_id == "compute"
    assert run.trigger_after == first._id


def test_leaving_the_page_stops_that_session_s_job_alone():
    from types import SimpleNamespace

    from mixdemo import ui

    mine, other = SimpleNamespace(session_hash="leave-mine"), SimpleNamespace(session_hash="leave-other")
    ui.leave_session(mine)  # nothing of it runs: nothing to stop
    with ui.session_job(mine, "private segmentation") as my_stop, ui.session_job(other, "separation") as other_stop:
        report = ui._progress_fn(_Progress(), my_stop)
        report(0.5, "a step")  # reports go on while the page is open
        ui.leave_session(mine)
        assert my_stop.is_set() and not other_stop.is_set()
        with pytest.raises(ui.PageLeft):
            report(0.6, "the next step")
    assert not {"leave-mine", "leave-other"} & set(ui._RUNNING)


def test_a_job_without_a_session_hash_is_no_other_call_s_to_stop():
    """A call with no session hash (Gradio's direct routes give none) was keyed "default": a second such call's
    Cancel reached its separation, and whoever closed a heartbeat named "default" (or another hash-less call left)
    stopped it. Such a job is registered under no key now."""
    from types import SimpleNamespace

    from mixdemo import ui

    hashless = SimpleNamespace(session_hash=None)
    with ui.session_job(hashless, ui.SEPARATION_JOB) as separation:
        assert ui.cancel_attack(SimpleNamespace(session_hash=None)) == ui.gr.skip()  # another hash-less call's Cancel
        with ui.session_job(None, "segment_proxy request") as request:  # a call with no request at all
            for stranger in (SimpleNamespace(session_hash="default"), SimpleNamespace(session_hash=None), None):
                ui.leave_session(stranger)
        assert not separation.is_set() and not request.is_set()
    assert "default" not in ui._RUNNING and None not in ui._RUNNING


def test_no_event_runs_outside_the_queue(app_url):
    """Gradio opens its direct routes (/gradio_api/run/<name>) unless the app runs on a Space: any event there, the
    private ones too, ran at once, outside the compute queue's limit, with no session hash. All go through the
    queue now (gradio_client and the page always did)."""
    import httpx

    for name in ("server_info", "attack_cancel", "segment_proxy", "segment"):
        answer = httpx.post(f"{app_url}/gradio_api/run/{name}", json={"data": []}, timeout=60)
        assert answer.status_code == 404 and "join the queue" in answer.text, (name, answer.status_code)


def _left_after_first_proxy(request, computed: list[int]):
    """A stand-in for ``server.segment`` that reports each proxy as S's inference does, and whose page is left
    once the first proxy is done."""
    import torch

    from mixdemo import ui

    def segment(proxies, progress=None):
        for i in range(len(proxies)):
            progress(i / len(proxies), f"proxy {i + 1}")
            computed.append(i)
            ui.leave_session(request)
        return torch.full((len(proxies), 4, *np.shape(proxies)[1:]), 0.25)
    return segment


def test_a_segmentation_stops_at_its_next_step_when_its_page_is_left(app_weights, example, monkeypatch):
    from types import SimpleNamespace

    from mixdemo import examples, server, ui

    request, computed = SimpleNamespace(session_hash="left-segmentation"), []
    monkeypatch.setattr(server, "segment", _left_after_first_proxy(request, computed))
    sess = ui.load_example(examples.example_names()[0], progress=_Progress())[0]
    with pytest.raises(ui.gr.Error, match="closed or reloaded"):
        ui.run_segmentation(sess, [], 3, 0.5, False, "patch", 0.5, request=request, progress=_Progress())
    assert computed == [0] and sess.view is None and "left-segmentation" not in ui._RUNNING


def test_a_proxy_request_stops_at_its_next_proxy_when_its_client_leaves(app_weights, tmp_path, monkeypatch, caplog):
    import logging
    from types import SimpleNamespace

    from mixdemo import server, ui
    from training.reliability import LEFT_MARK

    request, computed = SimpleNamespace(session_hash="left-request"), []
    monkeypatch.setattr(server, "segment", _left_after_first_proxy(request, computed))
    monkeypatch.setattr(server, "response_dir", lambda: tmp_path / "responses")
    path = tmp_path / "proxy.npy"
    np.save(path, np.random.default_rng(1).uniform(0, 1, (3, 16, 16, 16)).astype(np.float32))
    with caplog.at_level(logging.INFO, logger="mixdemo.ui"), pytest.raises(ui.gr.Error, match="closed or reloaded"):
        ui._server_endpoint(str(path), request, _Progress())
    assert computed == [0] and not path.exists() and not (tmp_path / "responses").exists()
    assert LEFT_MARK in caplog.text  # what training.reliability looks for in the app's log
    np.save(path, np.random.default_rng(1).uniform(0, 1, (1, 16, 16, 16)).astype(np.float32))
    monkeypatch.undo()
    assert np.load(ui._server_endpoint(str(path), request, _Progress())).shape == (1, 4, 16, 16, 16)  # still serving


def test_a_client_that_disconnects_frees_the_queue_at_its_next_proxy(app_url, api, tmp_path, monkeypatch):
    """Through the launched app: Gradio calls the app's unload handler when a session's heartbeat ends (a tab
    closed, a client closed), and that session's running request stops at its next proxy."""
    import threading

    import torch
    from gradio_client import Client, handle_file

    from mixdemo import server, ui

    first_done, computed = threading.Event(), []

    def segment(proxies, progress=None):
        for i in range(len(proxies)):
            progress(i / len(proxies), f"proxy {i + 1}")
            computed.append(i)
            first_done.set()
            if i == 0:  # the queue is held until the session's page is left (or 90 s)
                for what, stop in list(ui._RUNNING.values()):
                    if what == "segment_proxy request":
                        stop.wait(90)
        return torch.full((len(proxies), 4, *np.shape(proxies)[1:]), 0.25)

    monkeypatch.setattr(server, "segment", segment)
    path = tmp_path / "proxy.npy"
    np.save(path, np.random.default_rng(2).uniform(0, 1, (3, 16, 16, 16)).astype(np.float32))
    leaving = Client(app_url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
    job = leaving.submit(handle_file(str(path)), api_name="/segment_proxy")
    assert first_done.wait(60)
    leaving.close()  # its heartbeat ends: the server runs the unload handler for its session
    monkeypatch.undo()  # the next request is segmented by S
    np.save(path, np.random.default_rng(3).uniform(0, 1, (1, 16, 16, 16)).astype(np.float32))
    out = np.load(api.predict(handle_file(str(path)), api_name="/segment_proxy"))  # waits behind the first in the queue
    assert out.shape == (1, 4, 16, 16, 16) and computed == [0]
    del job


# ------------------------------------------------------------------------------ sessions kept
def _blocks_with_a_state(dropped: list, capacity: int):
    """A one-state Blocks (its delete callback records what it drops) whose sessions a store bounds at ``capacity``."""
    import gradio as gr

    with gr.Blocks() as blocks:
        state = gr.State(None, delete_callback=dropped.append)
    blocks.state_session_capacity = capacity
    return blocks, state


@pytest.mark.parametrize("store", ["gradio's", "the app's"])
def test_callers_holding_nothing_never_push_out_a_session_holding_a_scan(store):
    """Gradio's store keeps its capacity's most recent sessions of any kind, and every API call is a session: calls
    beyond it dropped an idle page's scan (the control). The app's bounds the two kinds apart."""
    from gradio.state_holder import StateHolder

    from mixdemo.ui import ScansFirstStateHolder

    dropped: list = []
    blocks, state = _blocks_with_a_state(dropped, capacity=2)
    holder = StateHolder() if store == "gradio's" else ScansFirstStateHolder()
    holder.set_blocks(blocks)
    holder.empty_capacity = 3
    holder["page"][state._id] = "scan"
    for call in range(6):
        holder[f"api-call-{call}"][state._id]  # a call reads its state: its default, None
    if store == "gradio's":
        assert "page" not in holder and dropped == []  # dropped, and its delete callback never ran
        return
    assert holder["page"][state._id] == "scan" and dropped == []
    assert list(holder.session_data) == ["api-call-3", "api-call-4", "api-call-5", "page"]


def test_past_their_bound_the_least_recently_used_scans_go_with_their_delete_callbacks():
    from mixdemo.ui import ScansFirstStateHolder

    dropped: list = []
    blocks, state = _blocks_with_a_state(dropped, capacity=2)
    holder = ScansFirstStateHolder()
    holder.set_blocks(blocks)
    for page in ("first", "second"):
        holder[page][state._id] = f"{page}'s scan"
    holder["first"]  # used again: "second" is now the least recently used
    holder["third"][state._id] = "third's scan"  # a third scan: the bound is passed at the next request
    holder["an API call"]
    assert dropped == ["second's scan"] and "second" not in holder
    assert {holder[p][state._id] for p in ("first", "third")} == {"first's scan", "third's scan"}


def _store_with_a_clock(dropped: list):
    """The app's store of a one-state Blocks (:func:`_blocks_with_a_state`, room for 8 scans) on a clock the test
    moves: (store, state, [now])."""
    from mixdemo.ui import ScansFirstStateHolder

    blocks, state = _blocks_with_a_state(dropped, capacity=8)
    holder = ScansFirstStateHolder()
    holder.set_blocks(blocks)
    now = [1000.0]
    holder.clock = lambda: now[0]
    return holder, state, now


def test_a_closed_page_s_session_goes_after_the_grace_with_its_delete_callbacks():
    """Gradio marks a session closed when its page's heartbeat ends and keeps its states an hour after their last
    update: a closed tab's scan stayed in the server's memory that long. The app's store drops the session, delete
    callbacks run, CLOSED_PAGE_GRACE_S after its page was first seen closed; open pages are left alone."""
    from mixdemo.ui import CLOSED_PAGE_GRACE_S

    dropped: list = []
    holder, state, now = _store_with_a_clock(dropped)
    for page in ("open", "closed"):
        holder[page][state._id] = f"{page} page's scan"
    holder.session_data["closed"].is_closed = True  # what Gradio's heartbeat route does when the page's stream ends
    holder.delete_all_expired_state()  # Gradio's sweep, every second: the close is seen
    now[0] += CLOSED_PAGE_GRACE_S - 1
    holder.delete_all_expired_state()
    assert "closed" in holder.session_data and dropped == []
    now[0] += 1
    holder.delete_all_expired_state()
    assert "closed" not in holder.session_data and dropped == ["closed page's scan"]
    assert holder["open"][state._id] == "open page's scan" and holder._closed_since == {}


def test_a_closed_page_that_still_sends_requests_or_runs_a_job_keeps_its_session():
    """A page whose heartbeat connection broke is marked closed for good, yet goes on sending its events under the
    same session: its scan was dropped CLOSED_PAGE_GRACE_S after the close however recently it was used, and a
    job's session while the job ran. The grace counts from the last request and from the job's end."""
    from mixdemo import ui
    from mixdemo.ui import CLOSED_PAGE_GRACE_S

    dropped: list = []
    holder, state, now = _store_with_a_clock(dropped)
    holder["page"][state._id] = "page's scan"
    holder.session_data["page"].is_closed = True
    holder.delete_all_expired_state()  # the close is seen
    now[0] += CLOSED_PAGE_GRACE_S - 10
    assert holder["page"][state._id] == "page's scan"  # the page, still open, runs an event
    now[0] += 20
    holder.delete_all_expired_state()
    assert "page" in holder.session_data and dropped == []
    ui._RUNNING["page"] = ("private segmentation", threading.Event())  # its job, started then, runs long
    try:
        now[0] += 2 * CLOSED_PAGE_GRACE_S
        holder.delete_all_expired_state()
        assert "page" in holder.session_data and dropped == []
    finally:
        del ui._RUNNING["page"]
    now[0] += CLOSED_PAGE_GRACE_S - 1
    holder.delete_all_expired_state()
    assert "page" in holder.session_data and dropped == []
    now[0] += 1
    holder.delete_all_expired_state()
    assert "page" not in holder.session_data and dropped == ["page's scan"]


def test_a_session_asked_for_while_the_sweep_drops_closed_pages_is_returned_not_a_key_error():
    """Gradio's ``StateHolder.__getitem__`` creates, marks and returns a session in three steps outside the lock; a
    request in a worker thread (Gradio's ``deep_link`` route) asking for a closed page's session as the sweep dropped
    it got a KeyError between the last two."""
    from mixdemo.ui import ScansFirstStateHolder

    blocks, _ = _blocks_with_a_state([], capacity=8)
    holder = ScansFirstStateHolder()
    holder.set_blocks(blocks)
    holder.closed_page_grace_s = 0
    stop, errors = threading.Event(), []

    def sweep() -> None:
        while not stop.is_set():
            holder.delete_all_expired_state()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        for _ in range(100_000):
            try:
                holder["page"].is_closed = True
            except KeyError as exc:
                errors.append(exc)
    finally:
        stop.set()
        sweeper.join()
        sys.setswitchinterval(interval)
    assert errors == []


def test_the_launched_app_keeps_a_page_s_scan_through_more_api_calls_than_its_bound(app_demo, app_url, tmp_path):
    """65 ``server_info`` calls made an idle page load its scan again (the README's limitation, now gone): the page's
    session holds its scan through SCAN_SESSIONS + 6 calls, each a session of its own, and those sessions, holding
    nothing, stay within their own bound."""
    from gradio_client import Client

    from mixdemo.ui import EMPTY_SESSIONS, SCAN_SESSIONS, ScansFirstStateHolder

    holder = app_demo.server_app.state_holder
    assert isinstance(holder, ScansFirstStateHolder)
    state_id = next(i for i, block in app_demo.blocks.items() if type(block).__name__ == "State")
    holder["a page with a scan"][state_id] = marker = object()
    caller = Client(app_url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
    try:
        for _ in range(SCAN_SESSIONS + 6):
            caller.reset_session()
            assert caller.predict(api_name="/server_info")["format"]
    finally:
        caller.close()
    assert holder["a page with a scan"][state_id] is marker
    assert len(holder.session_data) <= SCAN_SESSIONS + EMPTY_SESSIONS


def test_the_launched_app_writes_no_deep_link_of_a_page_s_session(app_demo, app_url):
    """Gradio's ``/gradio_api/deep_link?session_hash=`` wrote the named session's state (its views, its status lines)
    into the cache, kept for whoever loads the link; the app has no deep-link button, and the route is refused."""
    import httpx

    from mixdemo.oneshot import gradio_cache_dir

    holder = app_demo.server_app.state_holder
    state_id = next(i for i, block in app_demo.blocks.items() if type(block).__name__ == "State")
    holder["a page for a deep link"][state_id] = object()
    answer = httpx.get(f"{app_url}/gradio_api/deep_link", params={"session_hash": "a page for a deep link"})
    assert answer.status_code == 404 and "no deep links" in answer.text
    assert not (gradio_cache_dir() / "deep_links").exists()


def test_the_launched_app_opens_no_reload_stream(app_url):
    """``python app.py`` is not reload mode: its reload stream, which never ended, is refused at once."""
    import httpx

    answer = httpx.get(f"{app_url}/gradio_api/dev/reload", timeout=10)
    assert answer.status_code == 404 and "reload mode" in answer.text


def test_launch_demo_in_the_reload_thread_of_gradio_app_py_returns_with_the_bound(monkeypatch):
    """``gradio app.py`` runs the script again in its reload thread, where Gradio's launch returns at once (the first
    launch's server swaps the new demo in, keeping its store): launch_demo raised AttributeError there (no
    ``server_app``), which ended the reload thread, so the app never reloaded; and the swap set the store's bound to
    the new demo's, Gradio's default 10000."""
    from gradio.cli.commands.reload import reload_thread

    from mixdemo import ui

    monkeypatch.setattr(reload_thread, "running_reload", True, raising=False)
    demo = ui.build_demo()
    ui.launch_demo(demo)  # returns: nothing served, nothing blocked
    holder = ui.ScansFirstStateHolder()
    holder.set_blocks(demo)  # what the reloader's swap_blocks does with the running app's store
    assert holder.capacity == ui.SCAN_SESSIONS


@pytest.mark.parametrize("how", ["option", "environment"])
def test_the_server_alone_never_builds_the_whole_demo(monkeypatch, how):
    """``python app.py --server-only`` builds the server's page only, as ``MIXDEMO_SERVER_ONLY=1`` does: it built the
    whole demo's page too (at import, before reading its options) and kept it, about 30 MB of a server's idle
    memory (617 MB against 648 MB resident) for a page it never serves."""
    import runpy

    from mixdemo import ui

    def whole_demo():
        raise AssertionError("the whole demo was built for a server-only run")

    launched = []
    monkeypatch.setattr(ui, "build_demo", whole_demo)
    monkeypatch.setattr(ui, "warm_up", lambda server_only=False, announce=None: None)
    monkeypatch.setattr(ui, "launch_demo", lambda demo, **options: launched.append(demo))
    monkeypatch.setattr(sys, "argv", ["app.py", "--port", "7860"] + (["--server-only"] if how == "option" else []))
    if how == "environment":
        monkeypatch.setenv("MIXDEMO_SERVER_ONLY", "1")
    else:
        monkeypatch.delenv("MIXDEMO_SERVER_ONLY", raising=False)
    saved = {name: os.environ.get(name) for name in ("GRADIO_TEMP_DIR", "HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED")}
    try:
        runpy.run_path(str(REPO / "app.py"), run_name="__main__")
    finally:  # app.py sets them: put back, or the app the other tests of this process launched (uploads in Gradio's
        for name, value in saved.items():  # default folder) is told its uploads were not uploaded here
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert len(launched) == 1 and launched[0].title == "Mixup-Privacy server"
