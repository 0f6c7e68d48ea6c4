"""A cohort with its own classes (split.json's "classes"): loading, training, evaluation, the server and the client
with a class count other than the phantoms' four."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mixdemo import weights
from mixdemo.data import MAX_CLASSES, CohortError, load_cohort, load_volumes
from mixdemo.io import save_volume

TINY = "4,4,8,8,16,4"
SHAPE = (32, 32, 32)
FIVE = ["background", "GM", "WM", "CSF", "lesion"]


def _scan(folder: Path, seed: int, top: int = 4) -> None:
    """A mixdemo-layout scan: nested boxes labelled 1, 2, 3 and a small box labelled ``top``, each its own
    brightness."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    s = seed % 3
    labels[3 + s : 29 - s, 3:29, 3:29] = 1
    labels[7 : 25 - s, 7:25, 7:25] = 2
    labels[11:21, 11 + s : 21, 11:21] = 3
    labels[14:18, 14:18, 14 + s : 18 + s] = top
    brightness = np.array([0.0, 0.6, 0.9, 0.3, 0.45] + [0.5] * 60, np.float32)
    image = (brightness[labels] + (labels > 0) * rng.normal(0, 0.02, SHAPE)).astype(np.float32)
    folder.mkdir(parents=True)
    save_volume(image, np.eye(4), folder / "t1.nii.gz")
    save_volume(labels, np.eye(4), folder / "seg.nii.gz", dtype=np.uint8)


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory) -> Path:
    """Eight subjects (one scan each) labelled 0-4, six for training, split.json naming five classes."""
    root = tmp_path_factory.mktemp("five")
    subjects = [f"sub-{i:02d}" for i in range(8)]
    for i, subject in enumerate(subjects):
        _scan(root / f"{subject}_scan-0", i)
    (root / "split.json").write_text(json.dumps({"train": subjects[:6], "test": subjects[6:], "classes": FIVE}))
    return root


def test_split_json_names_the_classes_of_a_mixdemo_cohort_and_the_labels_follow(five_classes, tmp_path):
    cohort = load_cohort(five_classes)
    assert cohort.num_classes == 5 and cohort.foreground_classes == {1: "GM", 2: "WM", 3: "CSF", 4: "lesion"}
    assert [v for v, _ in cohort.records[0].layout.label_values] == [0, 1, 2, 3, 4]
    assert load_volumes(cohort.records[:1])[0].labels.max() == 4
    (tmp_path / "c").mkdir()
    _scan(tmp_path / "c" / "sub-00_scan-0", 0, top=5)
    (tmp_path / "c" / "split.json").write_text(json.dumps({"train": [], "test": [], "classes": FIVE}))
    with pytest.raises(CohortError, match=r"labels hold \[5\].*reads 0, 1, 2, 3, 4"):
        load_volumes(load_cohort(tmp_path / "c").records)


@pytest.mark.parametrize("classes, said", [
    (["background"], "names 1 classes; a cohort needs 2"),
    ([f"c{i}" for i in range(MAX_CLASSES + 1)], f"needs 2 to {MAX_CLASSES}"),
    (["background", "GM", "GM"], "names a class twice"),
    (["GM", "WM", "CSF", "background"], "names 'background' at place 4: the first name is label 0"),
    (["background", 3], "a list of names"),
    ("background,GM", "a list of names"),
])
def test_split_json_classes_that_cannot_be_used_are_refused_with_why(tmp_path, classes, said):
    _scan(tmp_path / "sub-00_scan-0", 0, top=1)
    (tmp_path / "split.json").write_text(json.dumps({"train": [], "test": [], "classes": classes}))
    with pytest.raises(CohortError, match=said):
        load_cohort(tmp_path)


def test_a_volume_cache_of_a_cohort_with_its_own_classes_is_read_back(five_classes, tmp_path, monkeypatch):
    """Written once, then memory-mapped: the second pass reads no scan file."""
    from mixdemo import data

    cache, loads = tmp_path / "cache", []
    load_volume = data.load_volume
    monkeypatch.setattr(data, "load_volume", lambda record: loads.append(record.name) or load_volume(record))
    records = load_cohort(five_classes).records
    first = load_volumes(records, cache=cache)
    assert len(loads) == len(records)
    second = load_volumes(records, cache=cache)
    assert len(loads) == len(records) and np.array_equal(first[0].labels, second[0].labels)


def test_a_volume_cache_keeps_apart_the_same_scan_read_with_other_classes(five_classes, tmp_path):
    """A scan cached under four classes is read again, and checked, when split.json names others."""
    root = tmp_path / "c"
    _scan(root / "sub-00_scan-0", 0, top=3)
    _scan(root / "sub-01_scan-0", 1, top=3)
    cache = tmp_path / "cache"
    load_volumes(load_cohort(root).records, cache=cache)
    (root / "split.json").write_text(json.dumps({"train": ["sub-00"], "test": ["sub-01"],
                                                 "classes": ["background", "GM", "WM"]}))
    with pytest.raises(CohortError, match=r"labels hold \[3\]"):
        load_volumes(load_cohort(root).records, cache=cache)


def test_refresh_baseline_scores_the_baseline_on_the_cohorts_own_classes(five_classes, monkeypatch):
    """training.refresh_baseline's rows have the classes training.evaluate's have (a lesion class too), so a
    refreshed average is over the same classes as the file's other rows."""
    from types import SimpleNamespace

    from training import evaluate, refresh_baseline

    monkeypatch.setattr(evaluate, "baseline_labels", lambda model, vol, brain: vol.labels)  # a perfect baseline
    measured = refresh_baseline.BaselineRows.__new__(refresh_baseline.BaselineRows)  # no network loaded
    measured.model, measured._rows = None, {}
    args = SimpleNamespace(data=five_classes, volumes=0, icc_all=False, quick=False, crop=0, brain_mask=True)
    rows = measured.rows(args)
    assert set(rows) == {r.name for r in load_cohort(five_classes).split("test")}
    assert all(row == {"GM": 1.0, "WM": 1.0, "CSF": 1.0, "lesion": 1.0, "avg": 1.0} for row in rows.values())


def test_reference_one_hots_refuse_labels_the_segmentation_does_not_give():
    from mixdemo.pipeline import Reference, reference_onehots

    ref = Reference("r", np.zeros(SHAPE, np.float32), np.full(SHAPE, 4, np.uint8))
    assert reference_onehots([ref], num_classes=5).shape == (1, 5, *SHAPE)
    with pytest.raises(ValueError, match="reach 4, but the segmentation gives 4 classes"):
        reference_onehots([ref], num_classes=4)


def test_the_legend_and_overlays_colour_every_class():
    from mixdemo import viz

    html = viz.legend_html(FIVE + ["<b>x</b>"])
    assert "lesion" in html and "&lt;b&gt;x&lt;/b&gt;" in html and "<b>" not in html
    assert len({viz.class_colour(c) for c in range(1, 8)}) == 7  # Okabe-Ito's seven, distinct
    colour, weight = viz.label_colours(np.array([[0, 4], [5, 9]]))
    assert weight[0, 0] == 0 and weight[1, 1] == 1
    assert tuple(colour[0, 1]) == viz.class_colour(4) and tuple(colour[1, 1]) == viz.class_colour(9)


def test_the_client_refuses_a_d_or_references_that_do_not_fit_the_server_s_classes():
    from mixdemo.client import ClientError, check_classes
    from mixdemo.models import UnmixingNet
    from mixdemo.pipeline import Reference

    refs = [Reference("r", np.zeros(SHAPE, np.float32), np.full(SHAPE, 4, np.uint8))]
    check_classes(FIVE, UnmixingNet(num_classes=5), refs)
    check_classes(FIVE, None, refs)
    with pytest.raises(ClientError, match=r"D unmixes 4 classes, but the server's model gives 5 classes \(background, "
                                          r"GM, WM, CSF, lesion\).*--unmixing"):
        check_classes(FIVE, UnmixingNet(), refs)
    with pytest.raises(ClientError, match=r"labels reach 4, but the server's model gives 4 classes.*labelled 0 to 3"):
        check_classes(None, None, refs)  # a server that does not say: the phantoms' four


def test_the_client_refuses_a_d_trained_on_other_classes_of_the_same_count(tmp_path, monkeypatch):
    """Four tissue classes are four classes, as a BraTS server's are: a D loaded from its folder is refused by the
    names its training record gives (an older record's: the phantoms'), where the server names its classes."""
    from mixdemo.client import ClientError, check_classes
    from mixdemo.models import UnmixingNet
    from mixdemo.weights import load_model

    brats = ["background", "NCR", "ED", "ET"]
    for name, record in [("old", {"model_class": "mixdemo.models.UnmixingNet"}),
                         ("brats", {"model_class": "mixdemo.models.UnmixingNet", "classes": brats})]:
        UnmixingNet().save_pretrained(tmp_path / name)
        weights.write_training_record(tmp_path / name, record)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(ClientError, match=r"D was trained on the classes background, GM, WM, CSF, but the server's "
                                          r"model gives 4 classes \(background, NCR, ED, ET\).*--unmixing"):
        check_classes(brats, load_model("old"), [])
    check_classes(brats, load_model("brats"), [])
    check_classes(None, load_model("brats"), [])  # a server that does not name them: the count is all there is
    check_classes(brats, UnmixingNet(), [])  # a D of no folder: likewise


def test_a_record_s_classes_are_read_alike_by_the_server_the_client_and_training():
    """One reader (``weights.recorded_classes``): a list of two names or more is taken, anything else in an existing
    record is the phantoms'; only no record at all is None (the server, which must name some, says the phantoms')."""
    from mixdemo.classes import CLASS_NAMES
    from mixdemo.server import model_classes
    from mixdemo.weights import recorded_classes

    brats = ["background", "NCR", "ED", "ET"]
    for record, names in [({"classes": brats}, brats), ({"model_class": "x"}, list(CLASS_NAMES)),
                          ({"classes": "GM"}, list(CLASS_NAMES)), ({"classes": ["background"]}, list(CLASS_NAMES))]:
        assert recorded_classes(record) == model_classes(record) == names, record
    assert recorded_classes({}) is None and model_classes({}) == list(CLASS_NAMES)


def test_remote_answers_are_expected_with_the_classes_the_server_names(monkeypatch):
    import gradio_client

    from mixdemo.client import ClientError, RemoteServer

    class StubClient:
        def __init__(self, *args, httpx_kwargs=None, **kwargs):
            self.httpx_kwargs = dict(httpx_kwargs or {})  # as gradio_client keeps them (RemoteServer sets the timeout)
            self.cookies = {}  # gradio_client's, which RemoteServer.new_session clears

        def predict(self, *args, **kwargs):
            return {}

        def reset_session(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(gradio_client, "Client", StubClient)
    remote = RemoteServer("http://127.0.0.1:7880")
    remote.__dict__["_reported"] = {"classes": FIVE}
    answer = np.full((1, 5, 8, 8, 8), 0.2, np.float16)
    monkeypatch.setattr(RemoteServer, "_fetch", lambda self, a, most_bytes: answer)
    assert remote.num_classes() == 5 and remote(np.zeros((1, 8, 8, 8), np.float32)).shape == (1, 5, 8, 8, 8)
    remote.separate_requests = True
    assert remote(np.zeros((2, 8, 8, 8), np.float32)).shape == (2, 5, 8, 8, 8)
    remote.__dict__["_reported"] = {}
    with pytest.raises(ClientError, match=r"shape \(1, 5, 8, 8, 8\); expected \(1, 4, 8, 8, 8\)"):
        remote.separate_requests = False
        remote(np.zeros((1, 8, 8, 8), np.float32))


@pytest.mark.slow
def test_five_classes_train_evaluate_calibrate_serve_and_come_back_to_the_client(five_classes, tmp_path, monkeypatch):
    """S + D and the baseline trained a few steps on five classes; the evaluation, a calibration, the server's
    info and the client's round trip all carry the five."""
    import nibabel as nib

    from mixdemo import server
    from mixdemo.client import segment_file
    from mixdemo.examples import load_reference_dir
    from mixdemo.pipeline import segment_proxies
    from training import calibrate, evaluate, train

    out = tmp_path / "w"
    common = ["--data", str(five_classes), "--steps", "2", "--batch-size", "2", "--patch-size", "16",
              "--features", TINY, "--out", str(out)]
    train.main([*common, "--run-dir", str(tmp_path / "run_private"), "--val-subjects", "1", "--val-every", "2"])
    train.main([*common, "--mode", "baseline", "--run-dir", str(tmp_path / "run_baseline")])
    for name in ("segmentation", "unmixing", "baseline"):
        assert json.loads((out / name / "config.json").read_text())["num_classes"] == 5
    assert json.loads((out / "segmentation" / "training.json").read_text())["classes"] == FIVE

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(out))
    doc = evaluate.main(["--data", str(five_classes), "--quick", "--unmixing", "unmixing", "--out",
                         str(tmp_path / "e.json"), "--no-figures"])
    assert doc["classes"] == FIVE[1:] and set(doc["dice"]["learned_tta"]) == {*FIVE[1:], "avg"}
    assert set(doc["icc"]) == set(FIVE[1:])
    calibrated = calibrate.main(["--model", "baseline", "--scans", "1", "--rounds", "1",  # --data: the record's
                                 "--grid", "-0.5", "0.5", "0.5", "--out", str(tmp_path / "cal")])
    calibration = json.loads((calibrated / "training.json").read_text())["calibration"]
    assert len(calibration["offsets"]) == 5
    cohort = load_cohort(five_classes)  # fitted on training scans, never on a test scan
    assert calibration["scans"] and set(calibration["scans"]) <= {r.name for r in cohort.split("train")}
    from training import precise_bn

    precise = precise_bn.main(["--model", "segmentation", "--batches", "2", "--out", str(tmp_path / "pbn")])
    assert json.loads((precise / "training.json").read_text())["precise_bn"]["data"] == str(five_classes)
    assert server.model_info()["classes"] == FIVE
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(Path(__file__).resolve().parent.parent / "weights"))
    with pytest.raises(CohortError, match=r"segmentation gives 4 classes, but the cohort .* names 5 \(background, GM"):
        evaluate.main(["--data", str(five_classes), "--quick", "--out", str(tmp_path / "e4.json"), "--no-figures"])
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(out))

    refs = load_reference_dir(five_classes, num_classes=5)
    seg, unmix = weights.load_model("segmentation"), weights.load_model("unmixing")
    seen = []

    def local_server(proxies: np.ndarray) -> torch.Tensor:
        seen.append(proxies.shape)
        return segment_proxies(seg, proxies)

    target = five_classes / "sub-07_scan-0" / "t1.nii.gz"
    segment_file(target, tmp_path / "seg.nii.gz", local_server, references=refs[:6], k=2, alpha=0.5, seed=0,
                 unmix_model=unmix)
    labels = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    assert seen == [(2, *SHAPE)] and labels.shape == SHAPE and labels.max() <= 4


@pytest.mark.parametrize("record, refused", [
    ({}, None),  # nothing recorded: the number of classes is all there is to check
    ({"data": "data/phantoms"}, r"classes \['background', 'GM', 'WM', 'CSF'\] \(the cohort's: \['background', 'NCR', 'ED', 'ET'\]\)"),
    ({"classes": ["background", "NCR", "ED", "ET"], "data_layout": "brats", "modality": "t1"},
     r"modality t1 \(the cohort's: t1ce\)"),
    ({"classes": ["background", "NCR", "ED", "ET"], "data_layout": "brats", "modality": "t1ce"}, None),
])
def test_models_trained_on_other_classes_or_data_are_refused_by_name_not_only_by_count(tmp_path, monkeypatch, record, refused):
    """Four tissue classes are four classes, as a BraTS cohort's are: the training record's names (an older
    record's: the phantoms'), layout and modality must match the cohort's too."""
    from types import SimpleNamespace

    from training import check_model_classes

    folder = tmp_path / "w" / "segmentation"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"num_classes": 4}))
    (folder / "model.safetensors").write_bytes(b"")
    if record:
        (folder / "training.json").write_text(json.dumps(record))
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "w"))
    brats = SimpleNamespace(root=tmp_path / "brats", num_classes=4, class_names=("background", "NCR", "ED", "ET"),
                            layout=SimpleNamespace(name="brats"), modality="t1ce")
    if refused is None:
        check_model_classes(["segmentation"], brats)
    else:
        with pytest.raises(CohortError, match=f"segmentation was trained on other data than the cohort .*: {refused}"):
            check_model_classes(["segmentation"], brats)
