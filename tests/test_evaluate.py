"""training.evaluate --quick: the paper's Table 1 / Fig. 3 pipeline end to end on a small cohort."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from mixdemo import weights
from mixdemo.metrics import icc_c1
from mixdemo.models import SegmentationNet, UnmixingNet


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The committed weights when present, else untrained ones (the pipeline is under test, not the accuracy)."""
    local = weights.weights_dir()
    if all((local / n / "model.safetensors").exists() for n in ("segmentation", weights.DEFAULT_UNMIXING, "baseline")):
        yield local
        return
    root = tmp_path_factory.mktemp("untrained")
    for name, model, cls in (("segmentation", SegmentationNet(), "SegmentationNet"), ("baseline", SegmentationNet(), "SegmentationNet"),
                             (weights.DEFAULT_UNMIXING, UnmixingNet(), "UnmixingNet")):
        model.save_pretrained(root / name)
        weights.write_training_record(root / name, {"command": "untrained"}, f"mixdemo.models.{cls}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.WEIGHTS_DIR_ENV, str(root))
        yield root


@pytest.fixture(scope="module")
def quick_evaluation(small_cohort, model_dir, tmp_path_factory):
    """(the JSON written, the document returned) of one quick evaluation, figures included."""
    from training import evaluate

    out = tmp_path_factory.mktemp("quick") / "seg.json"
    doc = evaluate.main(["--data", str(small_cohort), "--quick", "--out", str(out)])
    return out, doc


@pytest.mark.slow
def test_quick_evaluation_writes_the_table_curve_icc_and_figures(quick_evaluation, small_cohort):
    from training import evaluate

    out, doc = quick_evaluation
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(doc))
    assert saved["command"].startswith("python -m training.evaluate")
    assert "weights_dir" in saved or not os.environ.get(weights.WEIGHTS_DIR_ENV)
    assert saved["classes"] == ["GM", "WM", "CSF"]
    assert set(saved["dice"]) == {"baseline", "naive", "naive_tta", "learned", "learned_tta"}
    for row in saved["dice"].values():
        assert set(row) == {"GM", "WM", "CSF", "avg"} and all(0.0 <= v <= 1.0 for v in row.values())
    for curve in saved["dice_vs_k"].values():
        assert [k for k, _ in curve] == list(range(1, saved["k_max"] + 1))
    for cls in ("GM", "WM", "CSF"):
        icc = saved["icc"][cls]
        assert set(icc) == {"icc", "ci95", "n", "scan_sd", "reference_sd"} and icc["n"] == saved["n_icc_scans"]
        pairs = np.array([saved["retest_dice"][scan][cls] for scan in saved["retest_dice"]])
        assert pairs.shape == (saved["n_icc_scans"], 2)
        tta = saved["icc_tta"][cls]  # the same from two Learned + TTA predictions of each scan
        assert set(tta) == set(icc) and tta["n"] == saved["n_icc_scans"]
        tta_pairs = np.array([saved["retest_tta_dice"][scan][cls] for scan in saved["retest_tta_dice"]])
        assert tta_pairs.shape == (saved["n_icc_scans"], 2)
        # the ICC is that of the pairs saved; they are rounded to 4 decimals, which moves the ICC of 4 scans
        # with a spread of ~0.01 by up to a few 1e-3
        assert icc["icc"] == pytest.approx(icc_c1(pairs).icc, abs=5e-3)
        assert tta["icc"] == pytest.approx(icc_c1(tta_pairs).icc, abs=5e-3)
        assert icc["reference_sd"] > 0 and any(a != b for a, b in pairs)  # two predictions, not one scored twice
    assert 1 <= saved["icc_tta_k"] <= saved["tta_k"]
    from mixdemo.data import load_cohort

    assert saved["reference_pool"] == len(load_cohort(small_cohort).split("train"))  # training scans only
    assert saved["n_volumes"] == 2 and saved["crop"] == evaluate.QUICK_CROP
    per_volume = saved["dice_per_volume"]  # the table is the mean of these rows, and each ratio their quotient
    assert len(per_volume) == saved["n_volumes"]
    for method in ("baseline", "learned_tta"):
        assert saved["dice"][method]["avg"] == pytest.approx(np.mean([v[method] for v in per_volume.values()]), abs=1e-4)
    for method, entry in saved["ratio_to_baseline"].items():
        assert entry["ratio"] == pytest.approx(saved["dice"][method]["avg"] / saved["dice"]["baseline"]["avg"], abs=1e-3)
        lo, hi = entry["ci95"]
        assert lo is None or lo <= entry["ratio"] <= hi
    assert set(saved["ratio_to_baseline"]) == {"naive", "naive_tta", "learned", "learned_tta"}
    from training.report import segmentation_md

    table = segmentation_md(saved)  # the README's table says the interval and each volume's ratio
    lo, hi = saved["ratio_to_baseline"]["learned_tta"]["ci95"]
    assert lo is None or f"95 % interval {lo:.3f}–{hi:.3f} by a paired bootstrap over the 2 volumes" in table
    for v in per_volume.values():
        assert f"{v['learned_tta'] / v['baseline']:.3f}" in table
    assert all(saved["weights_sha256"].values())
    from mixdemo.weights import DEFAULT_UNMIXING
    assert saved["models"] == {"segmentation": "segmentation", "unmixing": DEFAULT_UNMIXING, "baseline": "baseline"}
    assert set(saved["weights_sha256"]) == set(saved["models"].values())
    assert out.with_name("seg_dice_vs_k.png").stat().st_size > 5000
    assert out.with_name("seg_panels.png").stat().st_size > 5000


@pytest.mark.slow
def test_figures_only_redraws_the_figures_of_an_evaluation_and_refuses_other_settings(quick_evaluation, small_cohort,
                                                                                      tmp_path):
    """--figures-only: the figures of a JSON from the JSON and its first volume predicted again, the same
    pixels as the full run drew; a JSON of other settings is refused, and the JSON itself is left as it was."""

    from matplotlib.image import imread

    from training import evaluate

    out, _ = quick_evaluation
    copy = tmp_path / "seg.json"
    shutil.copy(out, copy)
    argv = ["--data", str(small_cohort), "--quick", "--out", str(copy)]
    evaluate.main([*argv, "--figures-only"])
    for suffix in ("_dice_vs_k.png", "_panels.png"):
        assert np.array_equal(imread(copy.with_name("seg" + suffix)), imread(out.with_name("seg" + suffix))), suffix
    assert copy.read_text() == out.read_text()
    with pytest.raises(SystemExit, match="seed"):
        evaluate.main([*argv, "--figures-only", "--seed", "1"])
    with pytest.raises(SystemExit, match="does not exist"):
        evaluate.main([*argv[:-1], str(tmp_path / "none.json"), "--figures-only"])
    older = {k: v for k, v in json.loads(copy.read_text()).items() if k != "models"}  # before `models` was recorded
    copy.write_text(json.dumps(older))
    with pytest.raises(SystemExit, match="does not record its models"):
        evaluate.main([*argv, "--figures-only"])


@pytest.mark.slow
def test_the_weights_record_is_read_when_the_networks_are_loaded(small_cohort, model_dir, tmp_path, monkeypatch):
    """A long run records the SHA-256 of the weights it loaded, even when a folder goes away before it ends."""
    from training import evaluate

    names = ("segmentation", weights.DEFAULT_UNMIXING, "baseline")
    for name in names:
        shutil.copytree(model_dir / name, tmp_path / "w" / name)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "w"))
    loaded = {n: weights.read_training_record(tmp_path / "w" / n).get("sha256") for n in names}
    predict_scan = evaluate.predict_scan

    def remove_d_then_predict(*args, **kwargs):
        shutil.rmtree(tmp_path / "w" / weights.DEFAULT_UNMIXING, ignore_errors=True)
        return predict_scan(*args, **kwargs)

    monkeypatch.setattr(evaluate, "predict_scan", remove_d_then_predict)
    doc = evaluate.main(["--data", str(small_cohort), "--quick", "--no-figures",
                         "--out", str(tmp_path / "seg.json")])
    assert doc["weights_sha256"] == loaded and not (tmp_path / "w" / weights.DEFAULT_UNMIXING).exists()


def test_a_results_file_names_the_weights_folder_that_chose_its_networks(monkeypatch, tmp_path):
    from training import evaluate

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, "/tmp/lesions/weights")
    assert evaluate.weights_dir_record() == {"weights_dir": "/tmp/lesions/weights"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, "mine")  # relative: recorded where it lies, not as typed
    assert evaluate.weights_dir_record() == {"weights_dir": str(tmp_path.resolve() / "mine")}
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, "")  # empty: the repository's weights/, as mixdemo.weights reads it
    assert evaluate.weights_dir_record() == {}
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV)
    assert evaluate.weights_dir_record() == {}


def test_icc_scans_are_the_dice_subjects_scans_or_every_test_scan(small_cohort):
    from mixdemo.data import load_cohort
    from training import evaluate

    test = load_cohort(small_cohort).split("test")
    dice, retest = evaluate.select_scans(test, 1, icc_all=False, quick=False)
    assert [r.name for r in dice] == [test[0].name] and dice[0].name.endswith("_scan-0")
    assert {r.subject for r in retest} == {dice[0].subject} and len(retest) == 2
    dice_all, retest_all = evaluate.select_scans(test, 1, icc_all=True, quick=False)
    assert dice_all == dice and retest_all == test and len(test) > len(retest)


def test_the_icc_is_left_out_with_fewer_than_two_scans():
    from training import evaluate

    pairs = {"a_scan-0": [{1: 0.90}, {1: 0.80}]}
    assert evaluate.icc_rows(pairs, {1: "GM"}) == {}  # ICC(C,1) of one target is not defined
    pairs["b_scan-0"] = [{1: 0.70}, {1: 0.75}]
    assert evaluate.icc_rows(pairs, {1: "GM"})["GM"]["n"] == 2


def test_an_empty_test_split_ends_the_evaluation_before_any_work(small_cohort, model_dir, tmp_path):
    from mixdemo.data import CohortError, load_cohort
    from training import evaluate

    cohort = load_cohort(small_cohort)
    root = tmp_path / "no-test"
    root.mkdir()
    for record in cohort.split("train"):  # the training scans only, linked
        (root / record.image_path.parent.name).symlink_to(record.image_path.parent, target_is_directory=True)
    (root / "split.json").write_text(json.dumps({"train": list(cohort.train_subjects), "test": []}))
    with pytest.raises(CohortError, match="test split of .* holds no scans"):
        evaluate.main(["--data", str(root), "--quick", "--no-figures", "--out", str(tmp_path / "e.json")])
    assert not (tmp_path / "e.json").exists()


def test_test_scans_that_will_not_load_end_the_evaluation_before_any_work_all_named(small_cohort, model_dir, tmp_path):
    """Each test scan loads when its turn comes: a broken one ended the run there, after the scans before it."""
    import shutil

    from mixdemo.data import CohortError, load_cohort
    from training import evaluate

    cohort = load_cohort(small_cohort)
    root = tmp_path / "broken"
    shutil.copytree(small_cohort, root)
    broken = sorted({r.image_path.parent.name for r in cohort.split("test")})
    for name in broken:
        (root / name / "seg.nii.gz").write_bytes(b"")
    with pytest.raises(CohortError, match=rf"{len(broken)} test scan\(s\) of .* will not load: {broken[0]}: its label "
                                          r"map cannot be opened"):
        evaluate.main(["--data", str(root), "--quick", "--no-figures", "--out", str(tmp_path / "e.json")])
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("train_scans", [0, 1])
def test_a_reference_pool_too_small_is_named_or_leaves_the_icc_out(small_cohort, model_dir, tmp_path, capsys, train_scans):
    """No training scan: no references, refused before any work; one: every test scan is scored, but the
    test-retest ICC (two predictions of a scan from different references) is left out with a note."""
    from mixdemo.data import CohortError, load_cohort
    from training import evaluate

    cohort = load_cohort(small_cohort)
    root = tmp_path / "pool"
    root.mkdir()
    records = cohort.split("train")[:train_scans] + cohort.split("test")
    for record in records:
        (root / record.image_path.parent.name).symlink_to(record.image_path.parent, target_is_directory=True)
    train = [r.subject for r in cohort.split("train")[:train_scans]]
    (root / "split.json").write_text(json.dumps({"train": train, "test": list(cohort.test_subjects)}))
    argv = ["--data", str(root), "--quick", "--no-figures", "--out", str(tmp_path / "e.json")]
    if not train_scans:
        with pytest.raises(CohortError, match="training split of .* holds no scans: the evaluation's references"):
            evaluate.main(argv)
        assert not (tmp_path / "e.json").exists()
        return
    doc = evaluate.main(argv)
    assert "reference pool (the training scans) holds 1 scan; the test–retest ICC" in capsys.readouterr().err
    assert doc["reference_pool"] == 1 and doc["icc"] == {} and doc["n_icc_scans"] == 0
    assert doc["dice"]["learned_tta"]["avg"] >= 0 and len(doc["dice_per_volume"]) == 2


def test_a_pool_smaller_than_the_default_k_caps_it_and_a_k_max_given_beyond_it_says_what_fits(small_cohort, model_dir,
                                                                                              tmp_path, capsys):
    """The README's evaluation command, on a cohort of a few subjects (4 training scans here): K up to the pool's size,
    with a note, rather than a refusal of a --k-max nobody gave; one given beyond the pool says what to give."""
    from training import evaluate

    argv = ["--data", str(small_cohort), "--volumes", "1", "--draws", "1", "--crop", "16", "--no-figures",
            "--out", str(tmp_path / "e.json")]
    doc = evaluate.main(argv)
    assert "reference pool (the training scans) holds 4 scans: Dice against K up to K = 4 (not 30), the +TTA rows " \
           "at K = 4" in capsys.readouterr().err
    assert (doc["k_max"], doc["tta_k"], doc["reference_pool"]) == (4, 4, 4)
    with pytest.raises(SystemExit, match=r"--k-max 5 needs 5 distinct references; the pool has 4: give --k-max 4 or less"):
        evaluate.main([*argv, "--k-max", "5", "--tta-k", "2"])


def test_reference_choice_names_its_own_k_when_the_pool_is_too_small(small_cohort, tmp_path):
    """training.reference_choice passes its --k to the evaluation as --k-max; a pool too small for it is refused by the
    option its user gave."""
    from training import reference_choice

    with pytest.raises(SystemExit, match=r"^--k 5 needs 5 distinct references; the pool has 4: give --k 4 or less\.$"):
        reference_choice.main(["--data", str(small_cohort), "--k", "5", "--volumes", "1", "--out", str(tmp_path / "r.json")])
    # its --k has a default of its own (10), which the pool is as short of: leaving it out is no way round
    with pytest.raises(SystemExit, match=r"^--k 10 needs 10 distinct references; the pool has 4: give --k 4 or less\.$"):
        reference_choice.main(["--data", str(small_cohort), "--volumes", "1", "--out", str(tmp_path / "r.json")])


def test_a_tta_k_beyond_the_k_max_names_the_k_max_it_was_checked_against(capsys):
    """Since --k-max has no default of its own (2852c9a), a --tta-k beyond 30 without it is checked against 30: the
    message says so, rather than naming a --k-max that was not given as if it had been."""
    from training import evaluate

    for argv, said in [(["--tta-k", "31"], "--tta-k 31 must not exceed --k-max (not given: 30)"),
                       (["--tta-k", "5", "--k-max", "4"], "--tta-k 5 must not exceed --k-max 4")]:
        with pytest.raises(SystemExit):
            evaluate.parse_args(argv)
        assert said in capsys.readouterr().err
    assert evaluate.parse_args(["--tta-k", "30"]).k_max is None  # set_up sets it, from the pool


def test_an_evaluation_warns_of_a_d_trained_with_another_s(tmp_path, monkeypatch):
    """As the client does against a server: a D whose record names another S than the one evaluated."""
    from training import evaluate

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    for name, record in {"d-a": {"mode": "private", "segmentation_sha256": "a" * 64},
                         "d-old": {"mode": "private"}}.items():
        UnmixingNet().save_pretrained(tmp_path / name)
        weights.write_training_record(tmp_path / name, record, "mixdemo.models.UnmixingNet")
    assert evaluate.pairing_mismatch("d-a", "segmentation", "a" * 64) is None
    assert evaluate.pairing_mismatch("d-old", "segmentation", "b" * 64) is None  # its record does not say
    warning = evaluate.pairing_mismatch("d-a", "segmentation-b", "b" * 64)
    assert "'d-a'" in warning and "'segmentation-b'" in warning and "aaaaaaaaaaaa" in warning


@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not weights.native_bfloat16(), reason="no bfloat16 instructions: emulated, S on this crop outlasts the test "
    "timeout, and 'auto' never picks bfloat16 on such a CPU"))])
def test_fast_path_keeps_the_dice_of_the_reference_path(small_cohort, model_dir, precision, monkeypatch):
    """The fast path (``load_model``'s fused, channels-last S and D; proxies batched) gives the Dice of
    the reference path (the modules as trained in float32, MONAI's forward, one mix at a time) to 3 decimals;
    with S and D's blocks in bfloat16 (``MIXDEMO_PRECISION``, ``MIXDEMO_UNMIXING_PRECISION``, the defaults where
    the CPU has it) within 0.002 per class (on the full protocol their average rows are within 0.001:
    results/s_bfloat16.json, results/d_bfloat16.json)."""
    import numpy as np
    import torch

    from mixdemo.data import load_cohort, load_volumes
    from mixdemo.pipeline import Reference, make_proxies, reference_onehots, segment_proxies, unmix_learned
    from mixdemo.mixing import MixKey
    from training import evaluate

    cohort = load_cohort(small_cohort)
    target = evaluate.crop_volume(load_volumes(cohort.split("test")[:1])[0], 64)
    refs = [Reference(v.name, v.image, v.labels) for v in
            (evaluate.crop_volume(v, 64) for v in load_volumes(cohort.split("train")[:2]))]
    key = MixKey(tuple(r.ref_id for r in refs), (0.35, 0.45))
    d = weights.DEFAULT_UNMIXING
    monkeypatch.setenv(weights.PRECISION_ENV, precision)
    monkeypatch.setenv(weights.UNMIXING_PRECISION_ENV, precision)
    seg, unmix = weights.load_model("segmentation"), weights.load_model(d)
    assert seg.compute_dtype == unmix.compute_dtype == getattr(torch, precision)
    seg_ref, unmix_ref = weights.load_model("segmentation", fast=False), weights.load_model(d, fast=False)
    assert seg.fused and unmix.channels_last and not (seg_ref.fused or seg_ref.channels_last or unmix_ref.channels_last)
    proxies = make_proxies(target.image, refs, key)
    brain = target.image > 0
    fast_mixed = segment_proxies(seg, proxies)
    fast = unmix_learned(unmix, fast_mixed, reference_onehots(refs, num_classes=fast_mixed.shape[1]), key.alphas, brain_mask=brain)
    slow = []
    for k in range(key.k):
        mixed = segment_proxies(seg_ref, proxies[k : k + 1])
        ref_oh = reference_onehots(refs[k : k + 1], num_classes=mixed.shape[1])
        slow.append(unmix_learned(unmix_ref, mixed, ref_oh, key.alphas[k : k + 1], brain_mask=brain)[0])
    for pred_fast, pred_slow in ((fast[0], slow[0]), (fast.mean(0), torch.stack(slow).mean(0))):
        d_fast = evaluate.dice_row(evaluate.masked(pred_fast.argmax(0).numpy(), brain), target.labels)
        d_slow = evaluate.dice_row(evaluate.masked(pred_slow.argmax(0).numpy(), brain), target.labels)
        if precision == "float32":
            assert {c: round(v, 3) for c, v in d_fast.items()} == {c: round(v, 3) for c, v in d_slow.items()}
        else:
            assert all(abs(d_fast[c] - d_slow[c]) <= 0.002 for c in d_slow)
        assert np.isfinite(list(d_fast.values())).all()


@pytest.mark.slow
def test_compare_unmixing_evaluates_each_d_on_the_same_proxies(small_cohort, model_dir, tmp_path):
    from training import compare_unmixing, report

    # two of the designs (the cheaper ones: the full-resolution D doubled this test's time) are enough to
    # show every D is scored on the same proxies
    names = [n for n in compare_unmixing.DEFAULT_MODELS[1:] if (model_dir / n / "model.safetensors").exists()]
    assert len(names) == 2
    out = tmp_path / "d.json"
    doc = compare_unmixing.main(["--data", str(small_cohort), "--quick", "--models", *names,
                                 "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert [r["model"] for r in doc["rows"]] == names and doc["command"].startswith("python -m training.compare_unmixing")
    baselines = {json.dumps(r["baseline"]) for r in doc["rows"]}
    assert len(baselines) == 1  # the same scans and S for every D
    for row in doc["rows"]:
        assert 0.0 <= row["learned_tta"]["avg"] <= 1.0 and row["patch"] in (1, 2, 4) and row["parameters"] > 0
    table = report.d_designs_md(doc)
    assert table.count("\n| `") == len(names)


def test_the_tta_retest_pair_uses_the_scans_draw_or_a_second_salted_one(monkeypatch):
    from types import SimpleNamespace

    import torch

    from training import evaluate

    args = evaluate.parse_args(["--tta-k", "2", "--k-max", "4"])
    setup = SimpleNamespace(by_id=dict.fromkeys("abcdef"))
    calls = []

    def second_draw(rec, k, args, setup, salt=""):
        calls.append((k, salt))
        return None, None, None, None, torch.arange(10.0, 10.0 + k).view(k, 1), None

    monkeypatch.setattr(evaluate, "predict_scan", second_draw)
    score = lambda probs: float(probs.sum())  # noqa: E731 - the mean of each half, through the sum of one value
    learned = torch.arange(4.0).view(4, 1)
    assert evaluate.retest_tta_pair("scan", learned, args, setup, score) == [0.5, 2.5] and calls == []
    assert evaluate.retest_tta_pair("scan", learned[:3], args, setup, score) == [10.5, 12.5]
    assert calls == [(4, "tta-retest")]  # 2·K references, drawn apart from the scan's own draw
    setup.by_id = dict.fromkeys("abc")  # a pool of 3: K = 1 each, so the two predictions' references stay disjoint
    assert evaluate.retest_tta_k(args, 3) == 1
    assert evaluate.retest_tta_pair("scan", learned[:3], args, setup, score) == [0.0, 1.0]


def test_the_evaluations_mirrored_mixes_are_the_clients():
    """``training.evaluate --mirror`` scores what the client computes with a key that mirrors every second mix
    (:func:`mixdemo.pipeline.private_segment`): the same proxies, and each mix's naive and learned answers."""
    import torch

    from mixdemo.data import Volume
    from mixdemo.mixing import MixKey, alternate_mirroring
    from mixdemo.pipeline import Reference, private_segment, segment_proxies
    from training import evaluate

    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 4, (16, 32, 16)).astype(np.uint8) for _ in range(4)]
    images = [np.choose(lab, [0.0, 0.6, 1.0, 0.2]).astype(np.float32) for lab in labels]
    images[0][:3] = 0  # the target's brain ends on one side only
    target = Volume("t", "s", images[0], labels[0], np.eye(4))
    refs = [Reference(f"r{i}", images[i], labels[i]) for i in (1, 2, 3)]
    torch.manual_seed(0)
    seg, d = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval(), UnmixingNet(patch=2).eval()
    naive, learned, proxies = evaluate.predict_k(target, refs, (0.4,) * 3, seg, d, target.image > 0, mirror=True)
    key = MixKey(tuple(r.ref_id for r in refs), (0.4,) * 3, mirrored=alternate_mirroring(3))
    client = private_segment(target.image, refs, key, lambda p: segment_proxies(seg, p), d)
    np.testing.assert_allclose(proxies, client.proxies)
    torch.testing.assert_close(learned.float(), client.learned, atol=2e-3, rtol=0)  # float16 in the evaluation
    torch.testing.assert_close(naive.float(), client.naive, atol=5e-3, rtol=2e-3)


def test_mirror_tta_flips_each_mirrored_answer_back_and_uses_the_tables_draws(small_cohort, model_dir, tmp_path, monkeypatch):
    """With stand-in networks that answer voxel by voxel (so a mirrored target's answers, flipped back, are the target's
    own), every mirrored row equals its unmirrored one, which it does not where an answer is left unflipped; each
    scan is mixed with the first K references and α of the segmentation table's draw."""
    import torch

    from mixdemo import inference
    from mixdemo.data import load_cohort
    from mixdemo.mixing import one_hot
    from training import evaluate, mirror_tta

    drawn = []

    def voxelwise(volume, refs, alphas, seg, unmix, brain=None):
        drawn.append((volume.name, [r.ref_id for r in refs], tuple(alphas)))
        image = torch.from_numpy(volume.image)[None, None]
        ks = torch.arange(len(refs), dtype=torch.float32).view(-1, 1, 1, 1, 1)
        learned = torch.softmax(2 * one_hot(torch.from_numpy(volume.labels), 4)[None] + ks * image, 1)
        return learned.flip(1), learned, np.zeros(1)

    monkeypatch.setattr(evaluate, "predict_k", voxelwise)
    monkeypatch.setattr(inference, "segment_proxies", lambda model, images: torch.softmax(
        torch.from_numpy(np.stack([images, -images, images ** 2, 1 - images], 1)), 1))
    doc = mirror_tta.main(["--data", str(small_cohort), "--quick", "--out", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(doc))
    for scan, rows in doc["dice_per_volume"].items():
        assert rows["learned_tta_mirror_half"] == rows["learned_tta_mirror_all"] == rows["learned_tta"]
        assert rows["naive_tta_mirror_half"] == rows["naive_tta"] and rows["baseline_mirror"] == rows["baseline"]
        assert rows["learned_mirrored"] == rows["learned"]
    assert doc["learned_tta_gain"] == 0 and not doc["passes_rule"]
    args = evaluate.table_draw_arguments(mirror_tta.parse_args(["--data", str(small_cohort), "--quick"]))
    setup = evaluate.set_up(args)
    k = doc["protocol"]["tta_k"]
    for rec in setup.dice_records:  # the table's draw of K = 1…k_max, of which its Learned + TTA takes the first K
        _, refs, alphas, _ = evaluate.scan_draw(rec, args.k_max, args, setup)
        assert (rec.name, [r.ref_id for r in refs[:k]], tuple(alphas[:k])) in drawn

    privacy = doc["privacy"]  # the averaging attack on every test scan's K proxies, for each attacker
    assert privacy["n_scans"] == len(load_cohort(small_cohort).split("test")) and privacy["k"] == k
    for attacker in mirror_tta.ATTACKERS:
        assert all(0 <= v <= 1 for v in privacy[attacker].values())
    rows_before = json.loads((tmp_path / "m.json").read_text())
    again = mirror_tta.main(["--data", str(small_cohort), "--quick", "--part", "privacy", "--attack-draws", "1",
                             "--out", str(tmp_path / "m.json")])  # the privacy rows anew, the Dice rows kept
    assert again["privacy"]["draws"] == 1 and "--part privacy" in again["privacy"]["command"]
    assert {key: v for key, v in again.items() if key != "privacy"} == {key: v for key, v in rows_before.items() if key != "privacy"}

    monkeypatch.setattr(mirror_tta, "unflip", lambda probs: probs)  # the mirrored answers left as they came
    doc = mirror_tta.main(["--data", str(small_cohort), "--quick", "--part", "utility", "--out", str(tmp_path / "m.json")])
    assert any(rows["learned_tta_mirror_all"] != rows["learned_tta"] for rows in doc["dice_per_volume"].values())


def test_mirror_tta_rows_average_the_mixes_their_names_say(monkeypatch):
    """Each row of training.mirror_tta averages its own mixes: with stand-ins whose every answer is a constant that
    names the mix (plain mix i: i + 1, its mirrored twin: 10·(i + 1)) and a Dice that is the answer's mean, each row
    is the mean of the mixes it names (every second mirrored: mixes 1 and 3 of 4, the first plain)."""
    from types import SimpleNamespace

    import torch

    from mixdemo import inference, mixing
    from mixdemo.data import Volume
    from training import evaluate, mirror_tta

    image = np.broadcast_to(np.arange(4, dtype=np.float32).reshape(4, 1, 1), (4, 2, 2)).copy()
    vol = Volume("t", "s", image, np.zeros((4, 2, 2), np.uint8), np.eye(4))
    is_mirrored = lambda volume: volume.image[0, 0, 0] > 0  # noqa: E731 - the mirror image starts at the far end
    const = lambda values: torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1, 1).expand(-1, 2, 4, 2, 2)  # noqa: E731

    def answers(volume, refs, alphas, seg, unmix, brain=None):
        scale = 10.0 if is_mirrored(volume) else 1.0
        return const([100 * scale + i for i in range(len(refs))]), const([scale * (i + 1) for i in range(len(refs))]), None

    monkeypatch.setattr(evaluate, "scan_draw", lambda rec, k, args, setup: (vol, list(range(k)), (0.4,) * k, None))
    monkeypatch.setattr(evaluate, "predict_k", answers)
    monkeypatch.setattr(inference, "segment_proxies", lambda model, images: const([3.0 if images[0, 0, 0, 0] > 0 else 1.0]))
    monkeypatch.setattr(mixing, "hard_labels", lambda probs: probs)
    monkeypatch.setattr(evaluate, "dice_row", lambda pred, truth, classes: {"avg": float(pred.mean())})
    rows = mirror_tta.scan_rows(None, SimpleNamespace(tta_k=4, k_max=6), SimpleNamespace(seg=None, unmix=None, base=None,
                                                                                        classes={}))
    assert {row: value["avg"] for row, value in rows.items()} == pytest.approx({
        "baseline": 1.0, "baseline_mirror": 2.0, "naive_tta": 101.5, "naive_tta_mirror_half": 551.5,
        "learned": 1.0, "learned_mirrored": 10.0, "learned_tta": 2.5, "learned_tta_mirror_half": 16.0,
        "learned_tta_mirror_all": 25.0, "learned_tta_2k": 13.75})


def test_mirror_tta_gain_ratios_and_rule_compare_the_right_rows(monkeypatch):
    """training.mirror_tta's gain is every-second-mirrored minus the table's Learned + TTA (per volume too), the rule
    passes at a gain of exactly 0.003, and each ratio is a row over the named baseline."""
    from types import SimpleNamespace

    from training import evaluate, mirror_tta

    per_scan = {"a": {"learned_tta": 0.90, "learned_tta_mirror_half": 0.905, "baseline": 0.95, "baseline_mirror": 1.0},
                "b": {"learned_tta": 0.80, "learned_tta_mirror_half": 0.801, "baseline": 0.85, "baseline_mirror": 0.9}}
    for rows in per_scan.values():
        rows.update({r: {"avg": rows.get(r, 0.5)} for r in mirror_tta.ROWS})
    monkeypatch.setattr(mirror_tta, "scan_rows", lambda rec, eval_args, setup: per_scan[rec.name])
    args = mirror_tta.parse_args([])
    setup = SimpleNamespace(dice_records=[SimpleNamespace(name=n) for n in ("b", "a")], by_id={}, data="x",
                            weights_sha256={}, classes={1: "GM"})
    doc = mirror_tta.utility(args, evaluate.table_draw_arguments(args), setup, [])
    assert doc["learned_tta_gain"] == 0.003 and doc["passes_rule"]
    assert doc["learned_tta_gain_per_volume"] == [0.005, 0.001]  # in the order of dice_per_volume: a, b
    assert list(doc["dice_per_volume"]) == ["a", "b"]
    assert doc["ratio_to_baseline"]["learned_tta"] == {"baseline": round(0.85 / 0.90, 4),
                                                       "baseline_mirror": round(0.85 / 0.95, 4)}


@pytest.mark.slow
def test_reference_choice_scores_random_and_similar_references_on_one_protocol(small_cohort, model_dir, tmp_path):
    from mixdemo.data import load_cohort, load_volumes
    from mixdemo.pipeline import Reference, most_similar_references
    from training import evaluate, reference_choice

    out = tmp_path / "choice.json"
    doc = reference_choice.main(["--data", str(small_cohort), "--quick", "--reid-draws", "2",
                                 "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert doc["command"].startswith("python -m training.reference_choice")
    cohort = load_cohort(small_cohort)
    test, train = cohort.split("test"), load_volumes(cohort.split("train"))
    assert doc["protocol"]["n_icc_scans"] == len(test)  # every test scan's retest pair (the quick run keeps 4)
    for choice in reference_choice.CHOICES:
        row = doc[choice]
        for method in ("learned", "naive_tta", "learned_tta"):
            assert set(row[method]) == {"GM", "WM", "CSF", "avg"} and all(0 <= v <= 1 for v in row[method].values())
        assert row["tta_over_baseline"] == round(row["learned_tta"]["avg"] / doc["baseline"]["avg"], 4)
        assert {c: row["icc"][c]["n"] for c in ("GM", "WM", "CSF")} == dict.fromkeys(("GM", "WM", "CSF"), len(test))
        for metric, value in doc["privacy"][choice].items():
            assert 0 <= value <= 1, metric
    assert doc["learned_tta_gain"] == round(doc["similar"]["learned_tta"]["avg"] - doc["random"]["learned_tta"]["avg"], 4)
    assert doc["passes_rule"] == (doc["learned_tta_gain"] >= 0.003)
    assert doc["privacy"]["k"] == doc["protocol"]["tta_k"]  # the attack on one request's K proxies, every scan
    assert {len(ids) for ids in doc["similar_references"].values()} == {doc["protocol"]["k_max"]}
    # the similar references: training scans only, ranked as the client ranks them (on the quick run's crop)
    bank = [Reference(v.name, v.image, v.labels) for v in train]
    test_subjects = {r.subject for r in test}
    crop = evaluate.central_cube
    first = sorted(doc["similar_references"])[0]
    side = doc["protocol"]["crop"]
    target = crop(load_volumes([r for r in test if r.name == first])[0].image, side)
    cropped = [Reference(r.ref_id, crop(r.image, side), r.labels) for r in bank]
    ranked = [r.ref_id for r in most_similar_references(target, cropped, len(doc["similar_references"][first]))]
    assert doc["similar_references"][first] == ranked
    assert not {i for ids in doc["similar_references"].values() for i in ids} & {v.name for v in test}
    assert all(v.subject not in test_subjects for v in train)


@pytest.mark.slow
def test_compare_unmixing_ensembles_scores_each_d_as_the_evaluation_does(small_cohort, model_dir, tmp_path):
    """Each D's row of --ensembles is the evaluation's Learned + TTA with that D (same scans, references, α);
    the combinations average the Ds' probabilities."""
    from mixdemo.weights import DEFAULT_UNMIXING
    from training import compare_unmixing, evaluate

    names = [DEFAULT_UNMIXING, "unmixing-p2"]
    assert all((model_dir / n / "model.safetensors").exists() for n in names)
    with pytest.raises(SystemExit):
        compare_unmixing.parse_args(["--ensembles", "--models", names[0], names[0]])
    out = tmp_path / "ens.json"
    doc = compare_unmixing.main(["--ensembles", "--data", str(small_cohort), "--quick",
                                 "--models", *names, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    rows = {"+".join(r["models"]): r for r in doc["rows"]}
    assert set(rows) == {*names, "+".join(names)}
    for name in names:
        single = evaluate.main(["--data", str(small_cohort), "--quick", "--brain-mask",
                                "--no-figures", "--unmixing", name, "--out", str(tmp_path / f"{name}.json")])
        assert rows[name]["learned_tta"] == single["dice"]["learned_tta"]
        assert doc["baseline"] == single["dice"]["baseline"]
    best_single = max(rows[n]["learned_tta"]["avg"] for n in names)
    assert doc["best_ensemble_gain"] == round(rows["+".join(names)]["learned_tta"]["avg"] - best_single, 4)


@pytest.mark.slow
def test_refresh_baseline_rewrites_the_rows_the_evaluation_would(quick_evaluation, tmp_path):
    """The baseline's rows re-measured alone equal those of a full run of the file's own command."""
    from training import refresh_baseline

    full = json.loads(json.dumps(quick_evaluation[1]))
    out = tmp_path / "seg.json"
    stale = {**full, "dice": {**full["dice"], "baseline": {k: 0.0 for k in full["dice"]["baseline"]}}}
    stale["weights_sha256"] = {**full["weights_sha256"], "baseline": "old"}
    out.write_text(json.dumps(stale))
    compared = tmp_path / "d.json"  # a compare_unmixing-protocol file: rows with the ratio made with the baseline
    row = {"model": "x", "learned_tta": full["dice"]["learned_tta"], "baseline": {"avg": 1.0}, "tta_over_baseline": 0.0}
    compared.write_text(json.dumps({"protocol": full["command"] + " --unmixing <model>", "rows": [row]}))

    no_protocol = tmp_path / "other.json"
    no_protocol.write_text(json.dumps({"rows": [row]}))
    with pytest.raises(SystemExit, match="no training.evaluate command"):  # and nothing is written
        refresh_baseline.main([str(out), str(no_protocol)])
    assert json.loads(out.read_text()) == stale

    refresh_baseline.main([str(out), str(compared)])
    refreshed = json.loads(out.read_text())
    assert refreshed.pop("baseline_refresh")["command"].startswith("python -m training.refresh_baseline")
    assert refreshed == full
    (row,) = json.loads(compared.read_text())["rows"]
    assert row["baseline"] == full["dice"]["baseline"]
    assert row["tta_over_baseline"] == round(full["dice"]["learned_tta"]["avg"] / full["dice"]["baseline"]["avg"], 4)


def test_refresh_baseline_by_default_leaves_files_of_another_baseline(tmp_path):
    """The default files are those measured with the baseline the table records (or recording none): a cohort
    evaluated with its own baseline (the lesion cohorts') is not overwritten with the shipped one's rows."""
    from training import refresh_baseline

    line = "python -m training.evaluate --brain-mask --threads 2"
    row = {"GM": 0.9, "WM": 0.9, "CSF": 0.9, "avg": 0.9}

    def write(name: str, sha: str | None, refreshed_to: str | None = None) -> None:
        doc = {"command": f"{line} --out results/{name}", "dice": {"baseline": row},
               **({"weights_sha256": {"baseline": sha}} if sha else {}),
               **({"baseline_refresh": {"baseline_sha256": refreshed_to}} if refreshed_to else {})}
        (tmp_path / name).write_text(json.dumps(doc))

    write("segmentation.json", "shipped")
    write("replication.json", "shipped")
    write("lesion_cohort.json", "its-own")
    write("refreshed.json", "older", refreshed_to="shipped")
    write("comparison.json", None)
    (tmp_path / "mirror_tta.json").write_text(json.dumps({"protocol": {"mirror": True}, "dice": {"baseline": row}}))
    assert [p.name for p in refresh_baseline.default_files(tmp_path)] == [
        "comparison.json", "refreshed.json", "replication.json", "segmentation.json"]


def test_refresh_baseline_rewrites_an_evaluations_per_volume_baseline_and_its_ratios():
    """An evaluation's per-volume baseline and its ratios to the baseline follow the re-measured rows (they stay as
    they were where the baseline did not change), and a file of another script's protocol (mirror_tta's: a dict) is
    neither among the default files nor refreshed by a crash."""
    from training import evaluate, refresh_baseline

    scans = ["sub-1_scan-0", "sub-2_scan-0", "sub-3_scan-0"]
    private = {m: [0.70, 0.80, 0.75] for m in evaluate.METHODS if m != "baseline"}
    old = [0.90, 0.91, 0.92]
    doc = {"command": "python -m training.evaluate --brain-mask", "dice": {"baseline": {"avg": 0.91}},
           "dice_per_volume": {s: {"baseline": b, **{m: v[i] for m, v in private.items()}}
                               for i, (s, b) in enumerate(zip(scans, old))},
           "ratio_to_baseline": evaluate.ratios_to_baseline({"baseline": [{"avg": b} for b in old],
                                                             **{m: [{"avg": x} for x in v] for m, v in private.items()}})}
    unchanged = json.loads(json.dumps(doc))
    assert refresh_baseline.refresh(doc, {s: {"GM": b, "avg": b} for s, b in zip(scans, old)}) == 1
    assert doc["ratio_to_baseline"] == unchanged["ratio_to_baseline"]
    new = [0.80, 0.95, 0.85]
    assert refresh_baseline.refresh(doc, {s: {"GM": b, "avg": b} for s, b in zip(scans, new)}) == 1
    assert doc["dice"]["baseline"] == {"GM": 0.8667, "avg": 0.8667}
    assert [doc["dice_per_volume"][s]["baseline"] for s in scans] == new
    assert doc["ratio_to_baseline"] == evaluate.ratios_to_baseline(
        {"baseline": [{"avg": b} for b in new], **{m: [{"avg": x} for x in v] for m, v in private.items()}})

    mirror = {"command": "python -m training.mirror_tta --threads 2", "protocol": {"seed": 0}, "dice": {"baseline": {}}}
    assert not refresh_baseline.has_baseline_rows(mirror)
    with pytest.raises(SystemExit, match="no training.evaluate command"):
        refresh_baseline.protocol_args(mirror)
    assert refresh_baseline.has_baseline_rows(doc)


@pytest.mark.parametrize("record, says", [
    ({"mode": "private"}, "end to end with S on 32³ patches."),
    ({"mode": "unmixing"}, "frozen S (`--mode unmixing`)"),
    ({"mode": "unmixing", "init_unmixing": "unmixing"}, "Started from the D `unmixing` and trained on alone"),
])
def test_model_card_says_how_a_d_was_trained(tmp_path, record, says):
    from training import report

    UnmixingNet().save_pretrained(tmp_path / "d")
    weights.write_training_record(tmp_path / "d", {"command": "test", **record}, "mixdemo.models.UnmixingNet")
    assert says in report.unmixing_how(tmp_path / "d")


@pytest.mark.parametrize("design, says", [
    ({}, ""),
    ({"patch": 2}, "on 2³ patches (a stride-2 convolution in, a transposed one out, and an α-gated per-voxel skip"),
    ({"patch": 4, "voxel_hidden": 8}, "on 4³ patches (a stride-4 convolution in, a transposed one out, and a per-voxel MLP of 8"),
])
def test_model_card_says_where_a_d_runs(tmp_path, design, says):
    from training import report

    UnmixingNet(**design).save_pretrained(tmp_path / "d")
    weights.write_training_record(tmp_path / "d", {"command": "test", "mode": "unmixing"}, "mixdemo.models.UnmixingNet")
    how = report.unmixing_how(tmp_path / "d")
    assert says in how and ("patches" in how) == bool(design)
    assert report.d_where(**{"patch": 1, **design}).startswith("at full" if not design else "on ")


def test_model_card_says_what_calibration_changed():
    from training import report

    assert report.calibration_sentence({"mode": "baseline"}) == ""
    cal = {"command": "python -m training.calibrate --model baseline", "scans": ["a", "b"], "offsets": [0.0, -0.5, -0.2, 1.4],
           "train_dice_before": 0.9042, "train_dice_after": 0.9167, "from_sha256": "db49671419106837"}
    says = report.calibration_sentence({"calibration": cal})
    assert "(GM -0.5, WM -0.2, CSF +1.4; background 0)" in says and "2 training scans' mean Dice of its labels" in says
    assert "0.9042 → 0.9167" in says and "`db4967141910…`" in says
    d_says = report.calibration_sentence({"calibration": {**cal, "tta_k": 10, "segmentation": "segmentation"}})
    assert "after TTA over 10 mixes through `segmentation`" in d_says


def test_an_evaluation_in_bfloat16_says_so_and_a_float32_one_keeps_its_old_record(monkeypatch):
    from mixdemo import weights
    from training import evaluate

    monkeypatch.setenv(weights.PRECISION_ENV, "float32")  # the training commands' default (training/__init__.py)
    monkeypatch.setenv(weights.UNMIXING_PRECISION_ENV, "float32")
    assert evaluate.precision_record() == {}  # the records made before the settings existed stay comparable
    monkeypatch.setenv(weights.PRECISION_ENV, "bfloat16")
    assert evaluate.precision_record() == {"s_precision": "bfloat16"}
    monkeypatch.setenv(weights.UNMIXING_PRECISION_ENV, "bfloat16")
    assert evaluate.precision_record() == {"s_precision": "bfloat16", "unmixing_precision": "bfloat16"}
    monkeypatch.delenv(weights.PRECISION_ENV)
    monkeypatch.delenv(weights.UNMIXING_PRECISION_ENV)
    import importlib

    import training

    importlib.reload(training)  # importing the training package pins float32 unless the variables are set
    assert os.environ[weights.PRECISION_ENV] == os.environ[weights.UNMIXING_PRECISION_ENV] == "float32"
    assert evaluate.precision_record() == {}


def test_replication_table_pools_the_cohorts_and_leaves_out_other_protocols(tmp_path, monkeypatch):
    """The replication block: one row per cohort with the table's protocol and networks, then the pooled ratio and
    ICC; a file of another protocol is left out, and an older file without per-volume Dice is named."""
    from mixdemo.metrics import icc_c1, ratio_of_means_ci
    from training import report

    def doc(command: str, base: list[float], ltta: list[float], seed: int = 0) -> dict:
        vols = {f"sub-{i:03d}_scan-0": {"baseline": b, "learned_tta": t} for i, (b, t) in enumerate(zip(base, ltta))}
        pairs = {f"sub-{i:03d}_scan-{s}": {c: [0.8 + 0.01 * i + 0.003 * s, 0.8 + 0.01 * i + 0.002 * (1 - s)]
                                           for c in ("GM", "WM", "CSF")} for i in range(len(base)) for s in (0, 1)}
        icc = {c: {"icc": icc_c1([p[c] for p in pairs.values()]).icc} for c in ("GM", "WM", "CSF")}
        return {"command": command, "n_volumes": len(base), "tta_k": 10, "k_max": 30, "draws": 5, "n_icc_scans": len(pairs),
                "crop": None, "brain_mask": True, "seed": seed, "alpha_range": [0.3, 0.5], "reference_pool": 36,
                "models": {"segmentation": "segmentation"}, "weights_sha256": {"segmentation": "ab"},
                "dice": {"baseline": {"avg": float(np.mean(base))}, "learned_tta": {"avg": float(np.mean(ltta))}},
                "dice_per_volume": vols, "retest_dice": pairs, "icc": icc}

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    main = doc("python -m training.evaluate --brain-mask", [0.90, 0.92, 0.91], [0.89, 0.90, 0.90])
    assert report.replication_md(main) == "No replication on another cohort yet."
    other = doc("python -m training.evaluate --data data/phantoms-seed1 --brain-mask", [0.93, 0.91], [0.92, 0.91])
    (tmp_path / "segmentation-replication-seed1.json").write_text(json.dumps(other))
    (tmp_path / "segmentation-replication-seed9.json").write_text(json.dumps(doc("x --data d9", [0.9, 0.9], [0.1, 0.1], seed=9)))
    table = report.replication_md(main)
    assert "`data/phantoms` | 3 |" in table and "`data/phantoms-seed1` | 2 |" in table and "d9" not in table
    ratio, lo, hi = ratio_of_means_ci([0.89, 0.90, 0.90, 0.92, 0.91], [0.90, 0.92, 0.91, 0.93, 0.91])
    assert f"| pooled | 5 | {np.mean([0.90, 0.92, 0.91, 0.93, 0.91]):.3f} |" in table
    assert f"**{ratio:.3f}** [{lo:.3f}, {hi:.3f}]" in table and "(10 scans for the ICC)" in table
    del other["dice_per_volume"]
    (tmp_path / "segmentation-replication-seed1.json").write_text(json.dumps(other))
    assert "segmentation-replication-seed1.json` has no per-volume Dice" in report.replication_md(main)


def test_d_precision_record_applies_its_rule_and_refuses_a_run_not_in_bfloat16():
    """training.d_precision_record copies the bfloat16 evaluation beside the float32 run, decides by every average
    Dice row within 0.001, and refuses an evaluation that did not run both networks in bfloat16 or used other weights."""
    import copy

    from training import d_precision_record as rec
    from training import evaluate

    rows = {k: {"GM": 0.9, "WM": 0.9, "CSF": 0.8, "avg": 0.85} for k in evaluate.METHODS}
    float32_run = {"dice": rows, "icc": {"GM": {"icc": 0.7}}, "seconds": 60, "weights_sha256": {"unmixing-x": "a"}}
    evaluation = {"command": "python -m training.evaluate --out x.json", "date": "2026-12-04", "dice": copy.deepcopy(rows),
                  "icc": {"GM": {"icc": 0.71}}, "dice_vs_k": {}, "seconds": 70, "weights_sha256": {"unmixing-x": "a"},
                  "s_precision": "bfloat16", "unmixing_precision": "bfloat16"}
    evaluation["dice"]["learned_tta"]["avg"] = 0.8509  # within 0.001
    record = rec.assemble(evaluation, float32_run, True, "python -m training.d_precision_record --evaluation x.json")
    assert record["within_0_001"] and "'auto'" in record["decision"]
    assert record["commands"] == [rec.ENV + evaluation["command"], "python -m training.d_precision_record --evaluation x.json"]
    assert record["float32"]["dice"] == rows and record["bfloat16"]["dice"] == evaluation["dice"]
    evaluation["dice"]["learned"]["avg"] = 0.851  # 0.001 above, within (not 0.0010000000000000009 > 0.001)
    assert rec.assemble(evaluation, float32_run, True, "c")["within_0_001"]
    evaluation["dice"]["learned"]["avg"] = 0.8489  # 0.0011 below
    assert not rec.assemble(evaluation, float32_run, True, "c")["within_0_001"]
    with pytest.raises(SystemExit, match="bfloat16"):
        rec.assemble({**evaluation, "unmixing_precision": "float32"}, float32_run, True, "c")
    with pytest.raises(SystemExit, match="other weights"):
        rec.assemble({**evaluation, "weights_sha256": {"unmixing-x": "b"}}, float32_run, True, "c")


def test_the_dice_against_k_curve_is_the_dice_of_the_running_mean_in_the_draw_s_order():
    import torch

    from mixdemo.mixing import hard_labels
    from training.evaluate import dice_row, prefix_dice_curve

    rng = np.random.default_rng(0)
    preds = torch.softmax(torch.from_numpy(rng.normal(size=(4, 4, 6, 6, 6)).astype(np.float32)), 1)
    truth = rng.integers(0, 4, (6, 6, 6))
    order = np.array([2, 0, 3, 1])
    curve = prefix_dice_curve(preds, truth, order)
    classes = {1: "1", 2: "2", 3: "3"}
    for k in range(1, 5):
        expected = dice_row(hard_labels(preds[order[:k]].mean(0)).numpy(), truth, classes)["avg"]
        assert curve[k - 1] == pytest.approx(expected)
    assert curve[0] != pytest.approx(prefix_dice_curve(preds, truth, np.array([0, 1, 2, 3]))[0])  # the order counts


def test_the_ratio_to_the_baseline_pairs_each_volume_with_its_own_baseline():
    """Every volume at 0.99 × its own baseline, over baselines that differ: a paired bootstrap gives 0.99 exactly."""
    from training.evaluate import ratios_to_baseline

    base = [0.80, 0.85, 0.90, 0.95, 0.70]
    rows = {"baseline": [{"avg": b} for b in base]}
    rows |= {m: [{"avg": 0.99 * b} for b in base] for m in ("naive", "naive_tta", "learned", "learned_tta")}
    for entry in ratios_to_baseline(rows).values():
        assert entry == {"ratio": 0.99, "ci95": [0.99, 0.99]}


def test_a_baseline_that_labels_nothing_leaves_the_ratio_empty_not_the_evaluation_crashed():
    """A baseline of Dice 0 on every test volume (a smoke run's few steps) has no ratio to it: the ratios are None
    (written as null, shown as a dash), not a ValueError at the end of an evaluation that loses its results."""
    from training.evaluate import ratios_to_baseline

    rows = {"baseline": [{"avg": 0.0}, {"avg": 0.0}]}
    rows |= {m: [{"avg": 0.4}, {"avg": 0.5}] for m in ("naive", "naive_tta", "learned", "learned_tta")}
    for entry in ratios_to_baseline(rows).values():
        assert entry == {"ratio": None, "ci95": [None, None]}


def test_the_consistency_record_keeps_its_evaluation_and_refuses_one_of_another_d(tmp_path):
    """training.record_consistency: the gates are the default's figures, the candidate's training and calibration
    records are kept apart, and an evaluation of another D or of other weights is refused; the report's verdict
    follows the gates."""
    from training.record_consistency import assemble
    from training.report import consistency_gates

    folder = tmp_path / "cand-cal"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    weights.write_training_record(folder, {"command": "python -m training.train --consistency 2", "train_seconds": 60,
                                           "calibration": {"command": "python -m training.calibrate", "offsets": [0, 0, 0, 0]}})
    row = lambda avg, csf, other: {"dice": {"learned_tta": {"avg": avg}},  # noqa: E731
                                   "icc": {"GM": {"icc": other}, "WM": {"icc": other}, "CSF": {"icc": csf}}}
    default = {**row(0.90, 0.33, 0.76), "models": {"unmixing": "default-d"}}
    evaluation = {**row(0.91, 0.80, 0.77), "models": {"unmixing": "cand-cal"},
                  "weights_sha256": {"cand-cal": weights.sha256_file(folder / "model.safetensors")}}
    doc = assemble(folder, evaluation, default)
    assert doc["gates"] == {"learned_tta_avg_at_least": 0.90, "csf_icc_above": 0.33, "other_icc_at_least": 0.75,
                            "default": "default-d"}
    assert doc["evaluation"] is evaluation and "calibration" not in doc["training"]
    assert doc["calibration"]["command"] == "python -m training.calibrate"
    assert consistency_gates(doc) == {"learned_tta": True, "csf_icc": True, "other_icc": True}
    evaluation["icc"]["WM"]["icc"] = 0.74
    assert consistency_gates(doc)["other_icc"] is False
    # the rule's own words at its edges: Learned + TTA "at least" the default's, CSF ICC "above", GM and WM "0.75 or more"
    evaluation["dice"]["learned_tta"]["avg"], evaluation["icc"]["CSF"]["icc"] = 0.90, 0.33
    evaluation["icc"]["GM"]["icc"] = evaluation["icc"]["WM"]["icc"] = 0.75
    assert consistency_gates(doc) == {"learned_tta": True, "csf_icc": False, "other_icc": True}
    with pytest.raises(SystemExit, match="not the D the evaluation scored"):
        assemble(folder, {**evaluation, "models": {"unmixing": "other"}}, default)
    with pytest.raises(SystemExit, match="other weights"):
        assemble(folder, {**evaluation, "weights_sha256": {"cand-cal": "0" * 64}}, default)


def test_tta_averages_each_label_the_voxel_their_rule_says():
    """training.tta_aggregation's averages of K answers, on voxels where they disagree: the mean of probabilities
    (Eq. 6) against their geometric mean (one mix that rules a class out outweighs two that favour it), the α-weighted
    mean (the mix of largest α decides) and the vote (two mixes against one; a tie goes to the larger mean)."""
    import torch

    from training import tta_aggregation as agg

    def answers(class1: list[float]) -> torch.Tensor:  # (K, 2, 1, 1, 1) from each mix's probability of class 1
        p1 = torch.tensor(class1).view(-1, 1, 1, 1)
        return torch.stack([1 - p1, p1], 1).half()

    labels = lambda scores: int(scores.argmax(0))  # noqa: E731
    disagree, alphas = answers([0.8, 0.8, 0.001]), (0.1, 0.1, 0.8)
    assert {how: labels(agg.average(disagree, alphas, how)) for how in agg.AVERAGES} == {
        "mean": 1, "log_mean": 0, "alpha_weighted": 0, "vote": 1}
    assert labels(agg.average(answers([0.9, 0.4]), (0.4, 0.4), "vote")) == 1  # one vote each: the mean 0.65 decides
    assert labels(agg.average(answers([0.6, 0.1]), (0.4, 0.4), "vote")) == 0  # the mean 0.35
    assert torch.equal(agg.average(disagree, alphas, "mean"), disagree.float().mean(0))
    as_float32 = disagree.float()
    for how in agg.AVERAGES:  # float32 answers (which .float() does not copy) are left as they came
        agg.average(as_float32, alphas, how)
    assert torch.equal(as_float32, disagree.float())
    with pytest.raises(ValueError, match="Unknown average 'median'"):
        agg.average(disagree, alphas, "median")


def test_the_alpha_weighted_average_is_eq6_when_the_mixes_share_one_alpha():
    """Eq. 5 mixes the K references at one α, so weighting the K answers by α gives them equal weights: Eq. 6's mean
    itself (the committed record's α-weighted rows equal its mean rows)."""
    import torch

    from training import tta_aggregation as agg

    answers = torch.softmax(torch.randn(10, 4, 3, 3, 3), 1)
    torch.testing.assert_close(agg.average(answers, [0.4] * 10, "alpha_weighted"), agg.average(answers, [0.4] * 10, "mean"))
    assert not torch.allclose(agg.average(answers, [0.1] * 5 + [0.9] * 5, "alpha_weighted"), agg.average(answers, [0.4] * 10, "mean"))

def test_tta_aggregation_scores_the_tables_draws_and_applies_its_rule(small_cohort, model_dir, tmp_path, monkeypatch):
    """training.tta_aggregation mixes each scan with the first K references and α of the segmentation table's draw,
    its Eq. 6 rows are the table's Naive + TTA and Learned + TTA on those answers, and its rule compares the best other
    average of the learned answers with Eq. 6's (a gain of exactly 0.003 passes)."""
    import torch

    from mixdemo import inference
    from training import evaluate, tta_aggregation

    drawn, answered = [], {}

    def answers(volume, refs, alphas, seg, unmix, brain=None):
        drawn.append((volume.name, [r.ref_id for r in refs], tuple(alphas)))
        g = torch.Generator().manual_seed(len(drawn))
        learned = torch.softmax(3 * torch.rand(len(refs), 4, *volume.image.shape, generator=g), 1).half()
        answered[volume.name] = learned
        return learned.flip(1), learned, np.zeros(1)

    monkeypatch.setattr(evaluate, "predict_k", answers)
    monkeypatch.setattr(inference, "segment_proxies", lambda model, images: torch.softmax(
        torch.from_numpy(np.stack([images, -images, images ** 2, 1 - images], 1)), 1))
    doc = tta_aggregation.main(["--data", str(small_cohort), "--quick", "--out", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads(json.dumps(doc))
    assert set(doc["dice"]) == set(tta_aggregation.rows()) and doc["command"].startswith("python -m training.tta_aggregation")
    args = evaluate.table_draw_arguments(tta_aggregation.parse_args(["--data", str(small_cohort), "--quick"]))
    setup = evaluate.set_up(args)
    k = doc["protocol"]["tta_k"]
    for rec in setup.dice_records:
        vol, refs, alphas, brain = evaluate.scan_draw(rec, args.k_max, args, setup)
        assert (vol.name, [r.ref_id for r in refs[:k]], tuple(alphas[:k])) in drawn
        eq6 = evaluate.dice_row(evaluate.masked(evaluate.hard_labels(answered[vol.name][:k].float().mean(0)).numpy(), brain),
                                vol.labels, setup.classes)["avg"]
        assert doc["dice_per_volume"][rec.name]["learned_mean"] == round(eq6, 4)
    best = doc["best_learned_average"]
    assert doc["gain_over_eq6"][f"learned_{best}"] == max(doc["gain_over_eq6"][f"learned_{h}"] for h in ("log_mean", "alpha_weighted", "vote"))
    assert doc["passes_rule"] == (doc["gain_over_eq6"][f"learned_{best}"] >= 0.003)
    per_scan = {"a": {r: {"avg": 0.5} for r in tta_aggregation.rows()}, "b": {r: {"avg": 0.5} for r in tta_aggregation.rows()}}
    per_scan["a"]["learned_vote"] = {"avg": 0.506}
    assert tta_aggregation.summary(per_scan)["passes_rule"]  # +0.003 on average
    per_scan["a"]["learned_vote"] = {"avg": 0.5058}
    assert not tta_aggregation.summary(per_scan)["passes_rule"]


def test_raw_scans_scores_each_form_on_its_file_s_grid(small_cohort, model_dir, tmp_path, monkeypatch):
    """``training.raw_scans``: the cohort's file is used as it is, registered on request, and a raw head is
    registered; each form's labels come back onto its file's grid and are scored against that file's labels. With a
    stand-in that labels tissue by intensity alone, the raw head scores about what the file does; labels carried to
    the wrong grid or scored against another file's labels would not."""
    import torch

    from mixdemo.data import load_cohort, load_volumes
    from mixdemo.mixing import one_hot
    from training import evaluate, raw_scans

    first = load_volumes(load_cohort(small_cohort).split("test")[:1])[0]
    medians = torch.tensor([0.0] + [float(np.median(first.image[first.labels == c])) for c in (1, 2, 3)])

    def by_intensity(images) -> torch.Tensor:  # (K, X, Y, Z) → (K, 4, X, Y, Z): the class of the nearest median
        images = torch.as_tensor(np.asarray(images))
        nearest = (images[:, None] - medians.view(1, -1, 1, 1, 1)).abs().argmin(1)
        return one_hot(nearest, 4).float()

    def predict(volume, refs, alphas, seg, unmix, brain=None):
        learned = by_intensity(np.repeat(volume.image[None], len(refs), 0))
        return learned, learned, np.zeros(1)

    monkeypatch.setattr(evaluate, "predict_k", predict)
    monkeypatch.setattr(evaluate, "segment_proxies", lambda model, images: by_intensity(images))  # the baseline's
    doc = raw_scans.main(["--data", str(small_cohort), "--quick", "--threads", "2", "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(doc))
    assert doc["path"]["cohort_file"]["registered"] == 0  # in MNI space: the path's check skips registration
    assert doc["path"]["cohort_file_registered"]["registered"] == doc["path"]["raw_head"]["registered"] == 1
    dice = {form: rows["baseline"]["avg"] for form, rows in doc["dice"].items()}
    direct = evaluate.dice_row(evaluate.masked(by_intensity(first.image[None])[0].argmax(0).numpy(), first.image > 0),
                               first.labels, {1: "GM", 2: "WM", 3: "CSF"})["avg"]
    assert dice["cohort_file"] == pytest.approx(direct, abs=1e-4)  # the file as it is: the networks' own input
    assert dice["raw_head"] > dice["cohort_file"] - 0.1 and dice["cohort_file"] > 0.5

    from training.report import raw_scans_md

    table = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in raw_scans_md(doc).splitlines()
             if line.startswith("| the ") or line.startswith("| in a head")}
    assert [cells[0] for cells in table.values()] == ["0 of 1", "1 of 1", "1 of 1"]  # registered, per form
    assert [cells[1] for cells in table.values()] == [f"{d:.3f}" for d in dice.values()]  # the baseline's Dice
    assert "1.2 × 1 × 1.5 mm grid (PIR)" in raw_scans_md(doc)  # the generator's grid, as it builds it


def test_raw_scans_refuses_a_cohort_off_the_models_grid(monkeypatch, tmp_path):
    """The raw heads are built around scans on the models' MNI grid; another cohort's scans (a BraTS folder's) get a
    message naming both grids, not a shape error from inside the generator."""
    from mixdemo.data import CohortError, Volume
    from training import evaluate, raw_scans

    small = Volume("case-1", "case", np.zeros((8, 8, 8), np.float32), np.zeros((8, 8, 8), np.uint8), np.eye(4))
    monkeypatch.setattr(evaluate, "scan_draw", lambda rec, k, args, setup: (small, [], (), None))
    rec = type("Record", (), {"name": "case-1"})()
    with pytest.raises(CohortError, match="case-1 is on a 8×8×8 grid: .* 144×192×160 MNI grid"):
        raw_scans.scan_forms(rec, type("Args", (), {"k_max": 1, "tta_k": 1, "threads": 0})(), None, tmp_path, 0)


def test_an_s_card_s_configuration_is_its_own_network_s(tmp_path):
    """The Configurations line of an S or baseline card was fixed text naming the shipped widths and "2 CPU cores":
    a user's S trained with other widths (``--features paper``) got a card describing another network."""
    from mixdemo.models import PAPER_FEATURES, SegmentationNet, count_parameters
    from training import report

    SegmentationNet(features=PAPER_FEATURES).save_pretrained(tmp_path / "s")
    line = report.segmentation_configuration(tmp_path / "s")
    mine = count_parameters(SegmentationNet(features=PAPER_FEATURES))
    assert line.startswith(f"This network: U-Net++ features {PAPER_FEATURES}, {mine / 1e6:.2f} M parameters")
    SegmentationNet().save_pretrained(tmp_path / "small")
    assert "features (16, 16, 32, 64, 128, 16), 1.75 M parameters" in report.segmentation_configuration(tmp_path / "small")
