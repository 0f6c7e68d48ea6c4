"""Cohort folders: the mixdemo layout and BraTS case folders (mixdemo.data), through training and evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mixdemo import weights
from mixdemo.data import BRATS_LAYOUT, CohortError, CohortNotFoundError, MixedPatchSampler, load_cohort, load_volumes
from mixdemo.io import save_volume

TINY = "4,4,8,8,16,4"
SHAPE = (32, 32, 32)


def _brain_and_tumour(seed: int, et_value: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """A blocky brain (x > 0) and BraTS labels: necrotic core 1, edema 2, enhancing tumour ``et_value``."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(SHAPE, bool)
    brain[3:29, 3:29, 3:29] = True
    labels = np.zeros(SHAPE, np.uint8)
    c = 10 + seed % 5
    labels[c - 5 : c + 5, c - 5 : c + 5, 12:22] = 2
    labels[c - 3 : c + 3, c - 3 : c + 3, 14:20] = et_value
    labels[c - 1 : c + 1, c - 1 : c + 1, 16:18] = 1
    return brain, labels, rng


def write_brats_case(root: Path, case: str, seed: int, *, sep: str = "_", et_value: int = 4,
                     modalities: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")) -> None:
    """One BraTS case folder: each modality a differently scaled image of the same brain, and its labels."""
    brain, labels, rng = _brain_and_tumour(seed, et_value)
    folder = root / case
    folder.mkdir(parents=True)
    for i, mod in enumerate(modalities):
        contrast = np.choose(np.minimum(labels, 3), [0.5, 0.9, 0.7, 1.0]) * (1 + i)
        image = np.where(brain, contrast + rng.normal(0, 0.01, SHAPE), 0).astype(np.float32)
        save_volume(image, np.eye(4), folder / f"{case}{sep}{mod}.nii.gz")
    save_volume(labels, np.eye(4), folder / f"{case}{sep}seg.nii.gz", dtype=np.uint8)


@pytest.fixture(scope="module")
def brats_2021(tmp_path_factory) -> Path:
    """Eight BraTS 2021 cases (enhancing tumour labelled 4), six for training."""
    root = tmp_path_factory.mktemp("brats2021")
    cases = [f"BraTS2021_{i:05d}" for i in range(8)]
    for i, case in enumerate(cases):
        write_brats_case(root, case, i)
    (root / "split.json").write_text(json.dumps({"train": cases[:6], "test": cases[6:]}))
    return root


def test_brats_folders_are_read_as_t1ce_with_their_tumour_classes(brats_2021):
    cohort = load_cohort(brats_2021)
    assert cohort.layout == BRATS_LAYOUT and cohort.modality == "t1ce"
    assert cohort.class_names == ("background", "NCR", "ED", "ET")
    assert cohort.foreground_classes == {1: "NCR", 2: "ED", 3: "ET"}
    assert [r.subject for r in cohort.split("test")] == ["BraTS2021_00006", "BraTS2021_00007"]
    assert "brats layout, t1ce, 8 scans" in cohort.description and "phantom" not in cohort.description
    vol = load_volumes(cohort.split("test")[:1])[0]
    assert sorted(np.unique(vol.labels)) == [0, 1, 2, 3]  # 4 (enhancing tumour) is class 3
    raw = np.asarray(__import__("nibabel").load(cohort.split("test")[0].label_path).dataobj)
    np.testing.assert_array_equal(vol.labels == 3, raw == 4)


def test_a_named_modality_is_read_instead(brats_2021):
    t1ce = load_volumes(load_cohort(brats_2021).split("test")[:1])[0].image
    flair = load_volumes(load_cohort(brats_2021, "flair").split("test")[:1])[0].image
    assert load_cohort(brats_2021, "flair").modality == "flair"
    assert not np.allclose(t1ce, flair)  # another file: the contrasts differ once normalised
    with pytest.raises(FileNotFoundError, match="pet"):
        load_cohort(brats_2021, "pet")


def test_brats_2023_names_hyphens_t1c_and_label_3(tmp_path):
    for i, case in enumerate(("BraTS-GLI-00001-000", "BraTS-GLI-00001-001", "BraTS-GLI-00002-000")):
        write_brats_case(tmp_path, case, i, sep="-", et_value=3, modalities=("t1n", "t1c", "t2w", "t2f"))
    cohort = load_cohort(tmp_path)
    assert cohort.modality == "t1c"
    assert sorted({r.subject for r in cohort.records}) == ["BraTS-GLI-00001", "BraTS-GLI-00002"]  # time points
    assert sorted(np.unique(load_volumes(cohort.records[:1])[0].labels)) == [0, 1, 2, 3]


def test_label_values_a_layout_does_not_define_are_named(tmp_path):
    write_brats_case(tmp_path, "BraTS2021_00000", 0, et_value=7)
    with pytest.raises(ValueError, match=r"BraTS2021_00000's labels hold \[7\].*brats layout.*0, 1, 2, 3, 4"):
        load_volumes(load_cohort(tmp_path).records)


def write_cube_scan(folder: Path, label: int) -> None:
    """A mixdemo-layout scan folder (``t1.nii.gz`` + ``seg.nii.gz``) whose labels are one cube of ``label``."""
    folder.mkdir()
    labels = np.zeros(SHAPE, np.uint8)
    labels[8:24, 8:24, 8:24] = label
    save_volume(np.where(labels > 0, 1.0, 0.0).astype(np.float32), np.eye(4), folder / "t1.nii.gz")
    save_volume(labels, np.eye(4), folder / "seg.nii.gz", dtype=np.uint8)


def test_the_mixdemo_layout_refuses_values_above_csf_and_other_modalities(tmp_path):
    write_cube_scan(tmp_path / "s0_scan-0", 5)
    with pytest.raises(CohortError, match=r"s0_scan-0's labels hold \[5\].*mixdemo layout"):
        load_volumes(load_cohort(tmp_path).records)
    with pytest.raises(ValueError, match="T1 only"):
        load_cohort(tmp_path, "flair")


def test_scan_files_are_found_whatever_the_case_of_their_names(tmp_path):
    """``T1.nii.gz`` + ``Seg.nii.gz`` (or a BraTS case's ``_T1CE``, ``_SEG``), as written on a Mac or Windows, where
    the file system finds them as ``t1.nii.gz``: on Linux the folder was left out, noted as holding no t1.nii.gz."""
    (tmp_path / "mixdemo").mkdir()
    write_cube_scan(tmp_path / "mixdemo" / "a_1", 1)
    write_cube_scan(tmp_path / "mixdemo" / "b_1", 2)
    for old, new in (("t1.nii.gz", "T1.nii.gz"), ("seg.nii.gz", "Seg.NII.GZ")):
        (tmp_path / "mixdemo" / "b_1" / old).rename(tmp_path / "mixdemo" / "b_1" / new)
    cohort = load_cohort(tmp_path / "mixdemo")
    assert [r.name for r in cohort.records] == ["a_1", "b_1"] and cohort.left_out == ()
    assert cohort.records[1].label_path.name == "Seg.NII.GZ"
    write_brats_case(tmp_path / "brats", "BraTS2021_00000", 0, modalities=("t1ce",))
    case = tmp_path / "brats" / "BraTS2021_00000"
    for mod in ("t1ce", "seg"):
        (case / f"BraTS2021_00000_{mod}.nii.gz").rename(case / f"BraTS2021_00000_{mod.upper()}.nii.gz")
    (record,) = load_cohort(tmp_path / "brats").records
    assert record.image_path.name == "BraTS2021_00000_T1CE.nii.gz" and record.label_path is not None
    assert load_cohort(tmp_path / "brats").modality == "t1ce"


def test_a_link_to_a_scan_folder_that_is_not_there_is_named_as_left_out(tmp_path):
    """A cohort of links into other storage: a link whose folder is gone (a disk not mounted) was dropped without a
    word, and without a split.json the split was drawn over the other subjects alone."""
    (tmp_path / "cohort").mkdir()
    write_cube_scan(tmp_path / "cohort" / "a_1", 1)
    write_cube_scan(tmp_path / "cohort" / "b_1", 2)
    (tmp_path / "cohort" / "c_1").symlink_to(tmp_path / "unmounted" / "c_1", target_is_directory=True)
    cohort = load_cohort(tmp_path / "cohort")
    assert [r.name for r in cohort.records] == ["a_1", "b_1"] and cohort.left_out == ("c_1",)
    assert "c_1" in cohort.left_out_note()


def test_a_folder_of_neither_layout_says_what_both_expect(tmp_path):
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(CohortNotFoundError, match=r"t1\.nii\.gz.*BraTS"):
        load_cohort(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No cohort folder at .*absent \(check the path\)\.$"):
        load_cohort(tmp_path / "absent")  # still a FileNotFoundError to callers; not told to generate phantoms there


def test_folders_a_cohort_leaves_out_are_named(tmp_path, capsys):
    """A BraTS case without the modality read, and a folder of no layout, are left out, and training says so."""
    for i in range(4):
        write_brats_case(tmp_path, f"BraTS2021_{i:05d}", i, modalities=("t1", "t1ce") if i else ("t1",))
    (tmp_path / "notes").mkdir()
    cohort = load_cohort(tmp_path)
    assert cohort.left_out == ("BraTS2021_00000", "notes") and len(cohort.records) == 3
    assert cohort.left_out_note() == f"note: 2 folder(s) of {tmp_path} hold no t1ce image and are left out: " \
                                     "BraTS2021_00000, notes"
    assert load_cohort(tmp_path, "t1").left_out == ("notes",)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"],
                                                    "test": ["BraTS2021_00003"]}))
    cohort = load_cohort(tmp_path)  # the case without t1ce drops out of the split; the note names it
    assert cohort.train_subjects == ("BraTS2021_00001", "BraTS2021_00002") and "BraTS2021_00000" in cohort.left_out


BRATS_2023_TIME_POINTS = {  # case: its modalities (00001's second time point and 00003's only one lack t1c)
    "BraTS-GLI-00001-000": ("t1n", "t1c"), "BraTS-GLI-00001-001": ("t1n",), "BraTS-GLI-00002-000": ("t1n", "t1c"),
    "BraTS-GLI-00003-000": ("t1n",), "BraTS-GLI-00004-000": ("t1n", "t1c"), "BraTS-GLI-00004-001": ("t1n", "t1c"),
    "BraTS-GLI-00005-000": ("t1n", "t1c")}


@pytest.fixture
def brats_2023_time_points(tmp_path) -> Path:
    """BraTS 2023 case folders, some subjects with two time points, two folders without the T1CE image (t1c)."""
    for i, (case, modalities) in enumerate(BRATS_2023_TIME_POINTS.items()):
        write_brats_case(tmp_path, case, i, sep="-", et_value=3, modalities=modalities)
    return tmp_path


def test_a_time_point_without_the_modality_leaves_only_itself_out(brats_2023_time_points):
    """A BraTS 2023 time point without t1c drops out alone: its subject's other time points stay on the side
    split.json names, a subject with none left drops out of the split, and no subject is on both sides."""
    root = brats_2023_time_points
    (root / "split.json").write_text(json.dumps({"train": ["BraTS-GLI-00001", "BraTS-GLI-00003", "BraTS-GLI-00004"],
                                                 "test": ["BraTS-GLI-00002", "BraTS-GLI-00005"]}))
    cohort = load_cohort(root)
    assert cohort.left_out == ("BraTS-GLI-00001-001", "BraTS-GLI-00003-000")
    assert cohort.train_subjects == ("BraTS-GLI-00001", "BraTS-GLI-00004")
    assert [r.name for r in cohort.split("train")] == ["BraTS-GLI-00001-000", "BraTS-GLI-00004-000",
                                                      "BraTS-GLI-00004-001"]
    assert [r.name for r in cohort.split("test")] == ["BraTS-GLI-00002-000", "BraTS-GLI-00005-000"]
    assert load_cohort(root, "t1n").train_subjects == ("BraTS-GLI-00001", "BraTS-GLI-00003", "BraTS-GLI-00004")
    (root / "split.json").write_text(json.dumps({"train": ["BraTS-GLI-00001", "BraTS-GLI-00002", "BraTS-GLI-00004",
                                                           "BraTS-GLI-00005"], "test": ["BraTS-GLI-00003"]}))
    cohort = load_cohort(root)  # nothing of the test side is left: empty, the note names why
    assert cohort.test_subjects == () and cohort.split("test") == []
    assert "hold no t1c image and are left out: BraTS-GLI-00001-001, BraTS-GLI-00003-000" in cohort.left_out_note()
    (root / "split.json").write_text(json.dumps({"train": ["BraTS-GLI-00001-000"]}))
    with pytest.raises(CohortError, match=r"holds no scan folder of: BraTS-GLI-00001-000 .*time point"):
        load_cohort(root)  # a time point is not a subject


def test_the_default_split_keeps_each_subject_s_scans_on_one_side(brats_2023_time_points, tmp_path):
    """Without split.json, the 75/25 split is by subject: every scan on one side, a subject's scans (test-retest
    scans, BraTS 2023 time points) together."""
    mixdemo = tmp_path / "mixdemo"
    mixdemo.mkdir()
    for subject in range(8):
        for scan in range(2):
            write_cube_scan(mixdemo / f"sub-{subject:02d}_ses-{scan}", 1)
    brats = ["BraTS-GLI-00001", "BraTS-GLI-00002", "BraTS-GLI-00004", "BraTS-GLI-00005"]
    for root, subjects in ((mixdemo, [f"sub-{s:02d}" for s in range(8)]), (brats_2023_time_points, brats)):
        cohort = load_cohort(root)
        assert sorted(cohort.train_subjects + cohort.test_subjects) == subjects
        assert len(cohort.test_subjects) == len(subjects) // 4
        train, test = cohort.split("train"), cohort.split("test")
        assert sorted(r.name for r in train + test) == sorted(r.name for r in cohort.records)
        assert {r.subject for r in train}.isdisjoint(r.subject for r in test)


def test_every_case_folder_without_the_modality_is_named_as_such(brats_2023_time_points):
    """A BraTS folder none of whose cases holds the modality read says so, not that it holds no case folders."""
    with pytest.raises(CohortNotFoundError, match=r"7 BraTS case folder\(s\) hold no flair image"):
        load_cohort(brats_2023_time_points, "flair")


def test_scans_of_different_grids_are_refused_naming_them(tmp_path):
    write_cube_scan(tmp_path / "s0_scan-0", 1)
    write_cube_scan(tmp_path / "s1_scan-0", 1)
    labels = np.zeros((32, 32, 30), np.uint8)
    labels[8:24, 8:24, 8:22] = 1
    save_volume(labels.astype(np.float32), np.eye(4), tmp_path / "s1_scan-0" / "t1.nii.gz")
    save_volume(labels, np.eye(4), tmp_path / "s1_scan-0" / "seg.nii.gz", dtype=np.uint8)
    with pytest.raises(CohortError, match=r"share one grid.*\(32, 32, 32\): 1 scan\(s\), e\.g\. s0_scan-0.*"
                                          r"\(32, 32, 30\): 1 scan\(s\), e\.g\. s1_scan-0.*MNI space"):
        load_volumes(load_cohort(tmp_path).records)


def test_an_unreadable_scan_of_a_cohort_is_named(tmp_path):
    write_cube_scan(tmp_path / "s0_scan-0", 1)
    (tmp_path / "s0_scan-0" / "t1.nii.gz").write_bytes(b"not a scan")
    with pytest.raises(CohortError, match=r"^Scan s0_scan-0: .*gzip"):
        load_volumes(load_cohort(tmp_path).records)


def test_scans_that_will_not_load_are_found_from_their_headers(tmp_path):
    import nibabel as nib

    from mixdemo.data import ScanRecord, header_problems

    for i in range(5):
        write_cube_scan(tmp_path / f"s{i}_scan-0", 1)
    records = {r.name: r for r in load_cohort(tmp_path).records}
    assert header_problems(list(records.values())) == []  # sound scans: nothing said
    (tmp_path / "s1_scan-0" / "seg.nii.gz").write_bytes(b"not a scan")
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), np.eye(4)), tmp_path / "s2_scan-0" / "t1.nii.gz")
    full = tmp_path / "s3_scan-0" / "t1.nii"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), full)
    full.write_bytes(full.read_bytes()[:-100])
    records["s3_scan-0"] = ScanRecord("s3_scan-0", "s3", full, records["s3_scan-0"].label_path)
    records["s4_scan-0"] = ScanRecord("s4_scan-0", "s4", records["s4_scan-0"].image_path, None)
    assert header_problems(list(records.values())) == [
        "s1_scan-0: its label map cannot be opened (ImageFileError)",
        "s2_scan-0: its image is not a 3D volume (shape (32, 32, 32, 2))",
        "s3_scan-0: its image is shorter than its header declares (truncated)",
        "s4_scan-0: no label map (seg)"]


def test_training_says_at_its_start_which_test_scans_evaluation_will_not_load(tmp_path, capsys):
    from training import train

    for i in range(4):
        write_cube_scan(tmp_path / f"s{i}_scan-0", 1)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["s0", "s1", "s2"], "test": ["s3"]}))
    (tmp_path / "s3_scan-0" / "seg.nii.gz").write_bytes(b"")
    train.main(["--data", str(tmp_path), "--mode", "baseline", "--steps", "1", "--batch-size", "2", "--patch-size", "16",
                "--features", "4,4,8,8,16,4", "--out", str(tmp_path / "w"), "--run-dir", str(tmp_path / "run")])
    said = capsys.readouterr().out
    assert "warning: 1 scan(s) of the test split will not load for python -m training.evaluate (s3_scan-0: its " \
           "label map cannot be opened" in said and "training goes on" in said
    assert (tmp_path / "w" / "baseline" / "model.safetensors").exists()


def test_a_training_command_ends_on_a_bad_cohort_with_its_message_not_a_traceback(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "training.train", "--data", str(tmp_path), "--steps", "1"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith(f"error: {tmp_path} holds neither")


def test_user_errors_keeps_the_traceback_of_anything_else(monkeypatch):
    from training import user_errors

    with pytest.raises(SystemExit, match=r"^error: Scan x: broken$"):
        with user_errors():
            raise CohortError("Scan x: broken")
    monkeypatch.setenv("RANK", "1")  # under torchrun: rank 0 says it, the others exit 1 without a word
    with pytest.raises(SystemExit) as stop:
        with user_errors():
            raise CohortError("Scan x: broken")
    assert stop.value.code == 1
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit, match=r"^error: Scan x: broken$"):
        with user_errors():
            raise CohortError("Scan x: broken")
    with pytest.raises(KeyError):  # a bug stays a bug
        with user_errors():
            raise KeyError("x")


@pytest.mark.parametrize("name, value", [("MIXDEMO_S_MEMORY_MB", "lots"), ("MIXDEMO_KEEP_FREED_MEMORY", "maybe"),
                                         ("MIXDEMO_PRECISION", "float64")])
def test_a_setting_no_command_can_use_ends_a_training_command_before_any_work(monkeypatch, name, value):
    """A bad $MIXDEMO_S_MEMORY_MB was a ValueError traceback at the evaluation's first pass of S (minutes in), and a
    bad $MIXDEMO_KEEP_FREED_MEMORY silently left the allocator as it comes: refused at start, as the app refuses them."""
    from training import user_errors

    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=f"^error: \\${name} must be "):
        with user_errors():
            pytest.fail("the command ran with a setting it cannot use")


@pytest.mark.parametrize(("error", "rank_0_behind_s"), [("CohortError('Scan x: broken')", 4),
                                                     ("SystemExit('error: Scan x: broken')", 0)])
def test_under_torchrun_the_error_is_printed_once_even_when_rank_0_meets_it_last(tmp_path, error, rank_0_behind_s):
    """Under torchrun every process meets a cohort error, or a command's own refusal (training.train's SystemExit with
    its message: a resume with other settings), and rank 0 says it, once (each rank said a refusal). Rank 0 may meet
    it after the others (training.train has it check the test split's headers first: seconds on a BraTS-sized split);
    another rank exiting first must not have torchrun stop rank 0 before it has said what is wrong."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    script = tmp_path / "fails.py"
    script.write_text(
        "import os, time\n"
        "import torch.distributed as dist\n"
        "from mixdemo.data import CohortError\n"
        "from training import user_errors\n"
        "with user_errors():\n"
        "    dist.init_process_group('gloo')\n"
        "    if dist.get_rank() == 0:\n"
        f"        time.sleep({rank_0_behind_s})  # rank 0 behind the others, as after its test-split check\n"
        f"    raise {error}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert (done.stdout + done.stderr).count("error: Scan x: broken") == 1, done.stderr[-3000:]


def test_split_json_may_name_the_classes(brats_2021, tmp_path):
    root = tmp_path / "named"
    write_brats_case(root, "BraTS2021_00000", 0)
    write_brats_case(root, "BraTS2021_00001", 1)
    (root / "split.json").write_text(json.dumps({"train": ["BraTS2021_00000"], "test": ["BraTS2021_00001"],
                                                 "classes": ["bg", "core", "edema", "enhancing"]}))
    assert load_cohort(root).foreground_classes == {1: "core", 2: "edema", 3: "enhancing"}
    (root / "split.json").write_text(json.dumps({"train": [], "test": [], "classes": ["bg", "tumour"]}))
    with pytest.raises(ValueError, match="names 2 classes"):
        load_cohort(root)


def test_a_split_json_naming_one_side_gives_the_other_every_remaining_subject(brats_2021, tmp_path):
    root = tmp_path / "one_side"
    for i in range(4):
        write_brats_case(root, f"BraTS2021_{i:05d}", i)
    (root / "split.json").write_text(json.dumps({"test": ["BraTS2021_00000", "BraTS2021_00002"]}))
    cohort = load_cohort(root)
    assert (cohort.train_subjects, cohort.test_subjects) == (("BraTS2021_00001", "BraTS2021_00003"),
                                                             ("BraTS2021_00000", "BraTS2021_00002"))
    (root / "split.json").write_text(json.dumps({"train": ["BraTS2021_00003"]}))
    assert load_cohort(root).test_subjects == ("BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002")


@pytest.mark.parametrize("content, said", [
    ("{train: [}", "is not readable JSON"),
    ('["BraTS2021_00000"]', "must hold a JSON object"),
    ('{"train": "BraTS2021_00000"}', '"train" must be a list of subject names'),
    ('{"train": ["BraTS2021_00000", "BraTS2021_99999"], "test": ["brats2021_00001"]}',
     "holds no scan folder of: BraTS2021_99999, brats2021_00001"),
    ('{"train": ["BraTS2021_00000"], "test": ["BraTS2021_00000"]}', "on both sides"),
    ('{"train": ["BraTS2021_00000"], "tets": ["BraTS2021_00001"]}', 'has a key "tets": did you mean "test"?'),
    ('{"Train": ["BraTS2021_00000"]}', 'has a key "Train": did you mean "train"?'),
])
def test_a_split_json_that_cannot_be_followed_is_refused_with_why(tmp_path, content, said):
    for i in range(2):
        write_brats_case(tmp_path, f"BraTS2021_{i:05d}", i)
    (tmp_path / "split.json").write_text(content)
    with pytest.raises(CohortError, match=re.escape(said)):
        load_cohort(tmp_path)


def test_a_split_json_may_hold_notes_for_people(tmp_path):
    """Keys the cohort does not read, unlike a misspelt one, are left alone (the generators write some)."""
    for i in range(2):
        write_brats_case(tmp_path, f"BraTS2021_{i:05d}", i)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["BraTS2021_00000"], "notes": "x", "seed": 3,
                                                     "test_fraction": 0.5, "source": "/raw"}))
    assert load_cohort(tmp_path).test_subjects == ("BraTS2021_00001",)


def test_a_split_json_is_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """Class names and notes in any language: Windows' default text encoding (cp1252, emulated) turned "Läsion" into
    "LÃ¤sion" (the models' classes named wrongly)."""
    real_read_text = Path.read_text

    def windows_read_text(self, encoding=None, errors=None):
        return real_read_text(self, encoding=encoding or "cp1252", errors=errors)

    write_cube_scan(tmp_path / "s0_scan-0", 1)
    write_cube_scan(tmp_path / "s1_scan-0", 1)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["s0"], "classes": ["background", "Läsion"],
                                                     "notes": "Kohorte für α"}, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(Path, "read_text", windows_read_text)
    assert load_cohort(tmp_path).class_names == ("background", "Läsion")


def test_a_split_json_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Notepad (before 2019) and PowerShell 5's ``Out-File -Encoding utf8`` begin a UTF-8 file with a byte order
    mark: the cohort stopped, calling the split.json "not readable JSON (Unexpected UTF-8 BOM ...)"."""
    for i in range(2):
        write_brats_case(tmp_path, f"BraTS2021_{i:05d}", i)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["BraTS2021_00000"]}), encoding="utf-8-sig")
    assert load_cohort(tmp_path).test_subjects == ("BraTS2021_00001",)


def test_brats_patches_centre_on_the_brain_as_well_as_on_the_tumour(brats_2021):
    volumes = load_volumes(load_cohort(brats_2021).split("train"))
    on_labels = MixedPatchSampler(volumes, patch_size=8, mixed=False, seed=0).batch(64)
    assert all((y > 0).any() for y in on_labels.y_target)  # every patch holds tumour
    both = MixedPatchSampler(volumes, patch_size=8, mixed=False, patch_centres=BRATS_LAYOUT.patch_centres, seed=0).batch(64)
    without = sum(not (y > 0).any() for y in both.y_target)
    assert 5 < without < 59  # about half centre on the brain, where most patches miss the tumour
    assert all((x > 0).any() for x in both.x_target)
    with pytest.raises(ValueError, match="patch_centres"):
        MixedPatchSampler(volumes, patch_centres="anywhere")


def test_patches_larger_than_the_scans_are_refused_naming_the_largest_that_fits(brats_2021):
    """A 40³ patch on the 32³ scans (BraTS's 155 slices with --patch-size 160): the corners came out negative, and
    training went on, without a word, on patches of 24 voxels cut from the scans' ends."""
    volumes = load_volumes(load_cohort(brats_2021).split("train"))
    with pytest.raises(CohortError, match=r"40³ voxels do not fit in the scans \(32×32×32\).*at most 32"):
        MixedPatchSampler(volumes, patch_size=40, seed=0)
    assert MixedPatchSampler(volumes, patch_size=32, seed=0).batch(1).x_mix.shape == (1, 1, 32, 32, 32)


@pytest.mark.slow
def test_training_and_evaluation_run_on_a_brats_folder(brats_2021, tmp_path, monkeypatch):
    """S + D and the baseline trained a few steps on the FLAIR images of BraTS folders; the quick evaluation reads
    the modality S was trained on and names the classes."""
    from training import evaluate, train

    out = tmp_path / "w"
    common = ["--data", str(brats_2021), "--steps", "2", "--batch-size", "2", "--patch-size", "16", "--features", TINY,
              "--out", str(out), "--modality", "flair"]
    train.main([*common, "--run-dir", str(tmp_path / "run_private")])
    train.main([*common, "--mode", "baseline", "--run-dir", str(tmp_path / "run_baseline")])
    record = json.loads((out / "segmentation" / "training.json").read_text())
    assert (record["data_layout"], record["modality"]) == ("brats", "flair")
    assert record["classes"] == ["background", "NCR", "ED", "ET"] and record["grid_shape"] == list(SHAPE)

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(out))
    doc = evaluate.main(["--data", str(brats_2021), "--quick", "--unmixing", "unmixing", "--out", str(tmp_path / "e.json"),
                         "--volume-cache", str(tmp_path / "cache")])  # references memory-mapped
    assert doc["classes"] == ["NCR", "ED", "ET"] and set(doc["icc"]) == {"NCR", "ED", "ET"}
    assert set(doc["dice"]["learned_tta"]) == {"NCR", "ED", "ET", "avg"}
    assert "brats layout, flair" in doc["data"] and "phantom" not in doc["data"]
    assert (tmp_path / "e_dice_vs_k.png").exists() and len(list((tmp_path / "cache").glob("*.image.npy"))) == 6

    from mixdemo import server

    info = server.model_info()  # the server names what its S was trained on
    assert info["classes"] == ["background", "NCR", "ED", "ET"] and info["grid_shape"] == list(SHAPE)


def test_naming_the_default_modality_resumes_a_run_and_a_wrong_run_dir_is_refused_before_the_scans_load(
        brats_2021, tmp_path, monkeypatch):
    from training import train

    common = ["--data", str(brats_2021), "--batch-size", "2", "--patch-size", "16", "--features", TINY,
              "--out", str(tmp_path / "w"), "--run-dir", str(tmp_path / "run")]
    train.main([*common, "--steps", "1"])
    train.main([*common, "--steps", "2", "--modality", "t1ce"])  # what the folder is read as without it
    assert torch_step(tmp_path / "run") == 2
    import torch

    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    state["settings"]["modality"] = "t1ce"  # as a run given --modality t1ce saved it before the default was None
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    train.main([*common, "--steps", "3"])
    assert torch_step(tmp_path / "run") == 3

    def no_loading(*args, **kwargs):
        raise AssertionError("the scans were loaded before the checkpoint's settings were checked")

    monkeypatch.setattr(train, "load_volumes", no_loading)
    with pytest.raises(SystemExit, match="modality: the cohort's default → 'flair'"):
        train.main([*common, "--steps", "4", "--modality", "flair"])


def test_a_warm_start_from_an_s_trained_on_other_data_needs_data_named(brats_2021, tmp_path):
    """Without --data, a D on the S of a BraTS folder would train on the phantom cohort: refused, naming the folder."""
    from training import train

    common = ["--batch-size", "2", "--patch-size", "16", "--features", TINY, "--steps", "1"]
    train.main(["--data", str(brats_2021), *common, "--out", str(tmp_path / "w"), "--run-dir", str(tmp_path / "r1")])
    with pytest.raises(SystemExit, match=f"trained on {re.escape(str(brats_2021))}, and without --data.*give --data"):
        train.main(["--mode", "unmixing", "--init-from", str(tmp_path / "w"), *common, "--out", str(tmp_path / "w2"),
                    "--run-dir", str(tmp_path / "r2")])
    train.main(["--mode", "unmixing", "--init-from", str(tmp_path / "w"), "--data", str(brats_2021), *common,
                "--out", str(tmp_path / "w2"), "--run-dir", str(tmp_path / "r2")])
    assert (tmp_path / "w2" / "unmixing" / "model.safetensors").exists()


def torch_step(run: Path) -> int:
    import torch

    return torch.load(run / "checkpoint.pt", weights_only=False)["step"]


def test_the_client_segments_a_brats_scan_with_brats_references(brats_2021, tmp_path):
    """References from BraTS case folders; a target on their grid is used as it is (no MNI registration)."""
    import nibabel as nib
    import torch

    from mixdemo.client import ClientError, segment_file
    from mixdemo.examples import load_reference_dir

    refs = load_reference_dir(brats_2021)
    assert len(refs) == 8 and refs[0].image.shape == SHAPE and refs[0].labels.max() == 3
    seen = []

    def server(proxies: np.ndarray) -> torch.Tensor:  # a stand-in S: every class equally likely
        seen.append(proxies.shape)
        return torch.full((proxies.shape[0], 4, *proxies.shape[1:]), 0.25)

    target = brats_2021 / "BraTS2021_00007" / "BraTS2021_00007_t1ce.nii.gz"
    segment_file(target, tmp_path / "seg.nii.gz", server, references=refs[:6], k=2, alpha=0.5, seed=0)
    assert seen == [(2, *SHAPE)] and nib.load(tmp_path / "seg.nii.gz").shape == SHAPE
    said: list[str] = []  # the target's own case among the references (read alike): left out; cases that differ
    key = segment_file(target, tmp_path / "seg.nii.gz", server, references=refs, k=7, alpha=0.5, seed=0,  # a little
                       progress=lambda f, m: said.append(m))  # from it (a tumour apart, 0.003 on average) are not
    assert "BraTS2021_00007" not in key.reference_ids and len(key.reference_ids) == 7
    assert sum("1 reference(s) are this scan itself" in m for m in said) == 1
    other = tmp_path / "other.nii.gz"
    save_volume(np.random.default_rng(0).random((24, 32, 32), np.float32), np.eye(4), other)
    with pytest.raises(ClientError, match="24×32×32 is not the references' 32×32×32"):
        segment_file(other, tmp_path / "seg2.nii.gz", server, references=refs[:6], k=1, alpha=0.5, seed=0)


@pytest.mark.slow
def test_prepare_cohort_registers_raw_scans_and_freesurfer_subjects_with_their_labels(tmp_path, monkeypatch):
    """A raw head with tissue labels and a FreeSurfer subject (orig.mgz + aseg.mgz) become a cohort on the model
    grid whose labels match the phantoms' own there (template-sized phantoms, so that the affine registration
    can recover each head's pose exactly)."""
    import nibabel as nib

    from mixdemo import phantoms
    from mixdemo.metrics import dice_per_class
    from mixdemo.phantoms import make_raw_head, random_head_pose
    from tests.test_preprocess import still_scan, template_subject
    from training import prepare_cohort

    template = phantoms.load_template()
    src, truth_on_grid = tmp_path / "src", {}
    for subject, kind in ((7, "tissue"), (8, "freesurfer")):
        image, labels = phantoms.synthesize_scan(template, template_subject(subject), still_scan(subject))
        raw, truth, affine = make_raw_head(image, labels, random_head_pose(np.random.default_rng(subject)), seed=subject)
        name = f"s{subject}_scan-0"
        truth_on_grid[name] = labels
        if kind == "tissue":
            (src / name).mkdir(parents=True)
            nib.save(nib.Nifti1Image(raw, affine), str(src / name / "t1.nii.gz"))
            nib.save(nib.Nifti1Image(truth, affine), str(src / name / "seg.nii.gz"))
        else:  # aseg codes: left/right cortex and WM by the world x of each voxel, ventricles and CSF
            (src / name / "mri").mkdir(parents=True)
            right = (affine @ np.c_[np.argwhere(np.ones(truth.shape, bool)), np.ones(truth.size)].T)[0].reshape(truth.shape) > 0
            aseg = np.select([truth == 1, truth == 2, truth == 3], [np.where(right, 42, 3), np.where(right, 41, 2),
                                                                    np.where(right, 43, 24)], 0).astype(np.int32)
            aseg[truth == 0] = 0
            nib.save(nib.MGHImage(raw.astype(np.float32), affine), str(src / name / "mri" / "orig.mgz"))
            nib.save(nib.MGHImage(aseg, affine), str(src / name / "mri" / "aseg.mgz"))
    (src / "s6_scan-0" / "mri").mkdir(parents=True)  # a damaged FreeSurfer subject: skipped with its reason
    (src / "s6_scan-0" / "mri" / "orig.mgz").write_bytes(b"damaged")
    (src / "s6_scan-0" / "mri" / "aseg.mgz").write_bytes(b"damaged")
    (src / "notes").mkdir()  # neither form: not a scan
    (src / "s9_scan-0").mkdir()  # labels outside 0-3: skipped with its reason, the others go on
    nib.save(nib.Nifti1Image(raw, affine), str(src / "s9_scan-0" / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(np.where(truth == 3, 9, truth).astype(np.uint8), affine), str(src / "s9_scan-0" / "seg.nii.gz"))

    out = prepare_cohort.main([str(src), "--out", str(tmp_path / "cohort"), "--threads", "2"])
    cohort = load_cohort(out)
    assert sorted(r.name for r in cohort.records) == sorted(truth_on_grid)
    assert len(cohort.train_subjects) == len(cohort.test_subjects) == 1
    report = json.loads((out / "prepare.json").read_text())["scans"]
    assert [r["name"] for r in report] == ["s6_scan-0", "s7_scan-0", "s8_scan-0", "s9_scan-0"]
    assert [r.get("labels") for r in report] == [None, "tissue", "freesurfer", None]
    assert "orig.mgz could not be read" in report[0]["error"] and "[9]" in report[3]["error"]
    assert "name every class with --classes (background first" in report[3]["error"]  # label values: how to name them
    assert all(r["labels_kept"] > 0.9 for r in report[1:3])
    retried = []  # a second run keeps the scans written and retries only those that failed

    def fails_again(scan, *args):
        retried.append(scan.name)
        raise ValueError("still unusable")

    monkeypatch.setattr(prepare_cohort, "prepare_scan", fails_again)
    prepare_cohort.main([str(src), "--out", str(out)])
    assert retried == ["s6_scan-0", "s9_scan-0"]
    assert [r.get("labels") for r in json.loads((out / "prepare.json").read_text())["scans"]] == [None, "tissue", "freesurfer", None]
    for vol in load_volumes(cohort.records):
        assert vol.image.shape == phantoms.GRID_SHAPE and set(np.unique(vol.labels)) <= {0, 1, 2, 3}
        dice = dice_per_class(vol.labels, truth_on_grid[vol.name], [1, 2, 3])
        # the acceptance of mixdemo.preprocess (mean Dice >= 0.85); CSF, thin, loses most to the two nearest-
        # neighbour resamplings (the phantom onto the scanner's anisotropic grid, then onto the model grid)
        assert dice[1] >= 0.85 and dice[2] >= 0.85 and np.mean(list(dice.values())) >= 0.85, (vol.name, dice)


def write_raw_scan(src: Path, name: str, label: int = 1, files: tuple[str, ...] = ("t1.nii.gz", "seg.nii.gz")) -> None:
    """A tiny raw scan folder of ``training.prepare_cohort``'s source (8³ voxels): a T1 and its labels, all ``label``."""
    (src / name).mkdir(parents=True, exist_ok=True)
    if "t1.nii.gz" in files:
        save_volume(np.random.default_rng(0).random((8, 8, 8), np.float32), np.eye(4), src / name / "t1.nii.gz")
    if "seg.nii.gz" in files:
        save_volume(np.full((8, 8, 8), label, np.uint8), np.eye(4), src / name / "seg.nii.gz", dtype=np.uint8)


@pytest.fixture
def quick_prepare(monkeypatch):
    """``training.prepare_cohort`` whose ``prepare_scan`` writes a scan's own volumes, changed as a registration
    changes them (the T1's intensities shifted), without registering them (milliseconds, not a minute)."""
    import nibabel as nib

    from training import prepare_cohort

    def prepare_scan(scan, out, threads=None, layout=prepare_cohort.MIXDEMO_LAYOUT):
        image, labels = (np.asanyarray(nib.load(str(f)).dataobj) for f in (scan.image, scan.labels))
        top = len(layout.class_names) - 1
        if labels.max() > top:
            raise ValueError(f"labels {[int(v) for v in np.unique(labels) if v > top]} are not of the classes")
        (out / scan.name).mkdir(parents=True, exist_ok=True)
        save_volume(image + 1, np.eye(4), out / scan.name / "t1.nii.gz")
        save_volume(labels, np.eye(4), out / scan.name / "seg.nii.gz", dtype=np.uint8)
        return {"name": scan.name, "labels": scan.kind, "image": scan.image.name, "registered": True,
                "similarity": 0.9, "warning": None, "labels_kept": 1.0, "seconds": 0.0}

    monkeypatch.setattr(prepare_cohort, "prepare_scan", prepare_scan)
    return prepare_cohort


def test_prepare_scan_keeps_the_labels_inside_the_extracted_brain(tmp_path, monkeypatch):
    """Labels carried onto the model grid are kept where the prepared (skull-stripped) image is not 0, and the
    record's share of labelled voxels kept says how many were dropped (a registration stubbed: milliseconds)."""
    import nibabel as nib

    from mixdemo import phantoms
    from mixdemo import preprocess as pp
    from mixdemo.io import normalize_intensity
    from training.prepare_cohort import RawScan, prepare_scan

    grid = phantoms.load_template().affine
    brain = np.zeros(phantoms.GRID_SHAPE, bool)
    brain[20:120, 30:160, 20:140] = True

    def stripped(scan, threads=None):  # registered as the identity; the brain a box
        image = np.where(brain, normalize_intensity(scan.data), 0).astype(np.float32)
        return pp.Prepared(image=image, brain_mask=brain, affine=grid, model_to_input=np.eye(4), similarity=0.9,
                           metric_value=-0.5, registered=True, warning=None, seconds=0.0, scan_shape=scan.data.shape,
                           scan_affine=scan.affine, source_shape=scan.source_shape, source_affine=scan.source_affine)

    monkeypatch.setattr(pp, "to_model_space", stripped)
    save_volume(np.indices(phantoms.GRID_SHAPE).sum(0).astype(np.float32) + 1, grid, tmp_path / "t1.nii")
    labels = np.zeros(phantoms.GRID_SHAPE, np.uint8)
    labels[10:60, 40:100, 30:90], labels[60:130, 40:100, 30:90] = 1, 3  # both partly outside the brain
    save_volume(labels, grid, tmp_path / "seg.nii", dtype=np.uint8)
    record = prepare_scan(RawScan("a_1", tmp_path / "t1.nii", tmp_path / "seg.nii", "tissue"), tmp_path / "out")
    written = np.asarray(nib.load(tmp_path / "out" / "a_1" / "seg.nii.gz").dataobj)
    np.testing.assert_array_equal(written, np.where(brain, labels, 0))
    assert record["labels_kept"] == round(float((brain & (labels > 0)).sum() / (labels > 0).sum()), 4) < 1


def test_prepare_scan_carries_labels_from_their_file_s_own_grid_in_one_resampling(tmp_path, monkeypatch):
    """Labels on an anisotropic file's grid (1 x 1 x 3 mm: loading takes the scan onto a 1 mm grid) reach the model
    grid straight from the file's grid by each label's share, not through the nearest voxel of the loaded grid
    first (a registration stubbed: the identity)."""
    import nibabel as nib

    from mixdemo import io as mio
    from mixdemo import phantoms
    from mixdemo import preprocess as pp
    from training.prepare_cohort import RawScan, prepare_scan

    grid = phantoms.load_template().affine

    def identity(scan, threads=None):  # registered as the identity, all brain
        return pp.Prepared(image=np.ones(phantoms.GRID_SHAPE, np.float32), brain_mask=np.ones(phantoms.GRID_SHAPE, bool),
                           affine=grid, model_to_input=np.eye(4), similarity=0.9, metric_value=-0.5, registered=True,
                           warning=None, seconds=0.0, scan_shape=scan.data.shape, scan_affine=scan.affine,
                           source_shape=scan.source_shape, source_affine=scan.source_affine)

    monkeypatch.setattr(pp, "to_model_space", identity)
    affine = grid @ np.diag([1.0, 1.0, 3.0, 1.0])
    affine[:3, 3] += (0.3, -0.4, 0.7)  # off the model grid by fractions of a voxel
    shape = (144, 192, 54)
    save_volume(np.indices(shape).sum(0).astype(np.float32) + 1, affine, tmp_path / "t1.nii")
    def anatomy(to_world: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:  # nested wavy shells, sampled at voxels
        world = np.tensordot(to_world[:3, :3], np.indices(shape, dtype=np.float64), 1) + to_world[:3, 3, None, None, None]
        centre = grid[:3, :3] @ (np.array(phantoms.GRID_SHAPE) / 2) + grid[:3, 3]
        radii = np.array([50.0, 65.0, 55.0])[:, None, None, None]
        r = np.sqrt((((world - centre[:, None, None, None]) / radii) ** 2).sum(0))
        r = r * (1 + 0.08 * np.sin(world[0] / 4.0) * np.cos(world[2] / 5.0))
        return np.select([r < 0.35, r < 0.6, r < 0.85], [2, 1, 3], 0).astype(np.uint8)

    labels = anatomy(affine, shape)  # the file's labels: the anatomy at its voxels' centres
    save_volume(labels, affine, tmp_path / "seg.nii", dtype=np.uint8)
    prepare_scan(RawScan("a_1", tmp_path / "t1.nii", tmp_path / "seg.nii", "tissue"), tmp_path / "out")
    written = np.asarray(nib.load(tmp_path / "out" / "a_1" / "seg.nii.gz").dataobj)
    scan = mio.load_scan(tmp_path / "t1.nii", normalize=False)
    assert scan.data.shape != shape  # loaded onto a 1 mm grid
    prepared = identity(scan)
    on_file, file_affine = mio.load_labels_for(tmp_path / "seg.nii", like=scan)  # the header's affine (float32)
    np.testing.assert_array_equal(on_file, labels)
    np.testing.assert_array_equal(written, pp.labels_to_model_grid(labels, prepared, scan, affine=file_affine))
    via_loaded = pp.labels_to_model_grid(mio.load_labels(tmp_path / "seg.nii", like=scan), prepared, scan)
    truth = anatomy(grid, phantoms.GRID_SHAPE)  # the anatomy at the model voxels' centres
    wrong, wrong_via_loaded = int((written != truth).sum()), int((via_loaded != truth).sum())
    assert wrong < 0.9 * wrong_via_loaded, (wrong, wrong_via_loaded)  # 16224 against 19377: the loaded grid first, worse


def test_prepare_cohort_refuses_an_out_folder_that_is_holds_or_lies_inside_the_source(quick_prepare, tmp_path):
    """--out as the source folder would overwrite its raw t1.nii.gz: refused before any work, as --out inside the
    source or holding it (resolved paths), with one line and exit status 1."""
    src = tmp_path / "src"
    for name in ("a_1", "b_1"):
        write_raw_scan(src, name)
    raw = {f: f.read_bytes() for f in sorted(src.rglob("*.nii.gz"))}
    for out, where in ((src, "is"), (src / ".." / "src", "is"), (src / "cohort", "lies inside"), (tmp_path, "holds")):
        with pytest.raises(SystemExit) as refused:
            quick_prepare.main([str(src), "--out", str(out)])
        message = str(refused.value.code)  # a message, not a number: exit status 1
        assert message.startswith(f"error: --out {out} {where} the source folder") and "\n" not in message
    assert {f: f.read_bytes() for f in sorted(src.rglob("*.nii.gz"))} == raw and not (tmp_path / "split.json").exists()


def test_prepare_cohort_prepares_again_a_scan_whose_source_changed(quick_prepare, tmp_path, capsys):
    """A scan prepared earlier is kept only while its T1 and labels are unchanged (size, modification time): an
    edited seg.nii.gz is prepared again, and a scan that fails now leaves no stale output behind."""
    import os

    import nibabel as nib

    src, out = tmp_path / "src", tmp_path / "cohort"
    for name in ("a_1", "b_1", "c_1", "d_1"):
        write_raw_scan(src, name)
    quick_prepare.main([str(src), "--out", str(out)])
    for name, label in (("b_1", 2), ("c_1", 9)):  # labels corrected; labels broken
        write_raw_scan(src, name, label, files=("seg.nii.gz",))
        stat = (src / name / "seg.nii.gz").stat()  # a later modification time, whatever the file system's clock
        os.utime(src / name / "seg.nii.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    capsys.readouterr()
    quick_prepare.main([str(src), "--out", str(out)])
    printed = capsys.readouterr().out
    assert np.unique(nib.load(out / "b_1" / "seg.nii.gz").get_fdata()).tolist() == [2]
    assert "kept 2 scan(s) prepared by an earlier run (sources unchanged): a_1, d_1" in printed
    assert "b_1: its source or the classes changed since the earlier run: similarity" in printed
    assert "c_1: its source or the classes changed since the earlier run: skipped: labels [9]" in printed
    assert not (out / "c_1" / "seg.nii.gz").exists() and "c_1" not in {r.name for r in load_cohort(out).records}


def test_prepare_cohort_takes_the_classes_of_the_labels_and_prepares_again_when_they_change(quick_prepare, tmp_path,
                                                                                            capsys):
    """--classes names the labels' classes (split.json then names them); a rerun with other classes prepares every
    scan again, and one whose labels they do not cover is skipped; names that cannot be used are refused."""
    src, out = tmp_path / "src", tmp_path / "cohort"
    for name, label in (("a_1", 4), ("b_1", 2), ("c_1", 1)):
        write_raw_scan(src, name, label)
    five = ["background", "GM", "WM", "CSF", "lesion"]
    quick_prepare.main([str(src), "--out", str(out), "--classes", ",".join(five)])
    cohort = load_cohort(out)
    assert cohort.class_names == tuple(five) and len(cohort.records) == 3
    capsys.readouterr()
    quick_prepare.main([str(src), "--out", str(out)])  # the phantoms' four: label 4 is not one of them
    printed = capsys.readouterr().out
    assert "prepared by an earlier run" not in printed
    assert "a_1: its source or the classes changed since the earlier run: skipped" in printed
    assert load_cohort(out).num_classes == 4 and {r.name for r in load_cohort(out).records} == {"b_1", "c_1"}
    quick_prepare.main([str(src), "--out", str(tmp_path / "other"), "--classes", "GM,WM,CSF,lesion,x"])
    assert "note: --classes names label 0 'GM': its first name is the background's" in capsys.readouterr().err
    for bad, said in (("background", "--classes names 1 classes"), ("background,GM,GM", "--classes names a class twice")):
        with pytest.raises(SystemExit):
            quick_prepare.main([str(src), "--out", str(out), "--classes", bad])
        assert said in capsys.readouterr().err


def test_prepare_cohort_given_brats_case_folders_says_training_reads_them_as_they_are(brats_2021, tmp_path):
    """BraTS's folders need no preparation (co-registered, skull-stripped, on their own grid): a user who runs
    prepare_cohort on them is sent to training.train --data, not only told that the folders are no scans."""
    from training import prepare_cohort

    with pytest.raises(SystemExit, match=r"BraTS case folders \(8 cases\), which training reads as they are: "
                                         rf"python -m training\.train --data {re.escape(str(brats_2021))}"):
        prepare_cohort.main([str(brats_2021), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_prepare_cohort_given_no_folders_says_so_and_names_the_files_it_holds(tmp_path):
    """An empty SRC, or one holding a scan's files loose (not in a <subject>_<scan>/ folder), is told what it holds
    and what a scan is, not "its folders: ." """
    from training import prepare_cohort

    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(SystemExit) as stop:
        prepare_cohort.main([str(src), "--out", str(tmp_path / "out")])
    assert "its folders: ." not in str(stop.value) and "holds no folder" in str(stop.value)
    (src / "sub-01_t1.nii.gz").write_bytes(b"")
    (src / "sub-01_seg.nii.gz").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"holds no folder.*sub-01_seg\.nii\.gz, sub-01_t1\.nii\.gz.*<subject>_<scan>/"):
        prepare_cohort.main([str(src), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_prepare_cohort_says_which_scans_it_took_to_be_in_mni_space_already():
    """A scan the model-space check lets through is not registered: its line says so, so that a low similarity
    (no warning is given without a registration) is read for what it is."""
    from training.prepare_cohort import outcome

    record = {"name": "s", "similarity": 0.53, "labels_kept": 1.0, "warning": None}
    assert outcome({**record, "registered": True}) == "similarity 0.53, labels kept 1.0"
    assert outcome({**record, "registered": False}) == ("not registered (read as skull-stripped and in MNI space "
                                                         "already), similarity 0.53, labels kept 1.0")


def test_prepare_cohort_lists_the_folders_it_ignores_and_why(quick_prepare, tmp_path, capsys):
    """A folder of neither form (no seg.nii.gz; aseg.nii.gz instead of it; nothing) is named with what it lacks."""
    src = tmp_path / "src"
    for name in ("a_1", "b_1"):
        write_raw_scan(src, name)
    write_raw_scan(src, "c_1", files=("t1.nii.gz",))
    write_raw_scan(src, "d_1", files=("t1.nii.gz",))
    save_volume(np.ones((8, 8, 8), np.uint8), np.eye(4), src / "d_1" / "aseg.nii.gz", dtype=np.uint8)
    (src / "notes").mkdir()
    quick_prepare.main([str(src), "--out", str(tmp_path / "cohort")])
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == [f"ignored 3 of the 5 folders of {src}, not scans:",
                           "  c_1: t1.nii.gz without seg.nii.gz (its label map); holds t1.nii.gz",
                           "  d_1: t1.nii.gz without seg.nii.gz (its label map); holds aseg.nii.gz, t1.nii.gz",
                           "  notes: neither t1.nii.gz + seg.nii.gz nor mri/orig.mgz + mri/aseg.mgz; empty"]
    assert printed[-1].startswith("wrote 2 scans of 2 subjects") and f"ignored 3 folder(s) of {src}" in printed[-1]


def test_prepare_cohort_finds_scan_files_whatever_the_case_of_their_names(quick_prepare, tmp_path, capsys):
    """A source folder written on a Mac or Windows (``T1.nii.gz``, ``SEG.nii.gz``) was ignored on Linux, each folder
    listed as holding T1.nii.gz without t1.nii.gz."""
    src = tmp_path / "src"
    for name in ("a_1", "b_1"):
        write_raw_scan(src, name)
        for old in ("t1.nii.gz", "seg.nii.gz"):
            (src / name / old).rename(src / name / old.replace(old.split(".")[0], old.split(".")[0].upper()))
    quick_prepare.main([str(src), "--out", str(tmp_path / "cohort")])
    assert capsys.readouterr().out.splitlines()[-1].startswith("wrote 2 scans of 2 subjects")


def test_prepare_cohort_leaves_out_freesurfer_s_average_subject(quick_prepare, tmp_path, capsys):
    """recon-all links ``$FREESURFER_HOME/subjects/fsaverage`` into the subjects folder, and it holds mri/orig.mgz and
    mri/aseg.mgz: the README's ``prepare_cohort /data/ppmi_freesurfer`` prepared FreeSurfer's template as a subject
    of the cohort, to train on or to score."""
    import nibabel as nib

    src = tmp_path / "src"
    for name in ("a_1", "b_1"):
        write_raw_scan(src, name)
    (src / "fsaverage" / "mri").mkdir(parents=True)
    for name in ("orig.mgz", "aseg.mgz"):
        nib.save(nib.MGHImage(np.ones((8, 8, 8), np.int32), np.eye(4)), str(src / "fsaverage" / "mri" / name))
    quick_prepare.main([str(src), "--out", str(tmp_path / "cohort")])
    printed = capsys.readouterr().out.splitlines()
    assert "  fsaverage: FreeSurfer's average subject (a template), not a scan" in printed
    assert printed[-1].startswith("wrote 2 scans of 2 subjects") and not (tmp_path / "cohort" / "fsaverage").exists()


def test_prepare_cohort_names_a_link_to_a_scan_folder_that_is_not_there(quick_prepare, tmp_path, capsys):
    """A source folder of links into other storage: a link whose folder is gone was skipped without a word."""
    src = tmp_path / "src"
    for name in ("a_1", "b_1"):
        write_raw_scan(src, name)
    (src / "c_1").symlink_to(tmp_path / "unmounted" / "c_1", target_is_directory=True)
    quick_prepare.main([str(src), "--out", str(tmp_path / "cohort")])
    printed = capsys.readouterr().out.splitlines()
    assert f"  c_1: a link to {tmp_path / 'unmounted' / 'c_1'}, which is not there" in printed


def test_prepare_cohort_refuses_to_write_into_a_cohort_it_did_not_prepare(quick_prepare, tmp_path):
    """An existing cohort keeps its split.json and scans: refused unless prepared by this command from the same
    source folder (then a rerun)."""
    src, phantoms = tmp_path / "src", tmp_path / "phantoms"
    for name in ("a_1", "b_1"):
        write_raw_scan(src, name)
    for name in ("p1_1", "p2_1"):
        write_raw_scan(phantoms, name)
    split = json.dumps({"dataset": "MNI152-phantom", "train": ["p1"], "test": ["p2"]})
    (phantoms / "split.json").write_text(split)
    with pytest.raises(SystemExit, match=r"already holds a cohort that training.prepare_cohort did not write "
                                         r"\(split.json and 2 scan folder\(s\)\)"):
        quick_prepare.main([str(src), "--out", str(phantoms)])
    assert (phantoms / "split.json").read_text() == split and sorted(p.name for p in phantoms.iterdir()) == [
        "p1_1", "p2_1", "split.json"]
    mine = quick_prepare.main([str(src), "--out", str(tmp_path / "mine")])
    other = tmp_path / "other"
    write_raw_scan(other, "x_1")
    with pytest.raises(SystemExit, match=f"holds a cohort prepared from another folder \\({src}\\)"):
        quick_prepare.main([str(other), "--out", str(mine)])
    assert quick_prepare.main([str(src), "--out", str(mine)]) == mine  # the same source: a rerun
    brats = tmp_path / "brats"  # case folders of another layout: no split.json, no t1.nii.gz
    (brats / "BraTS2021_00001").mkdir(parents=True)
    (brats / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz").write_bytes(b"kept")
    with pytest.raises(SystemExit, match=r"is not empty \(1 item\(s\), e.g. 'BraTS2021_00001'\) and "
                                         r"training.prepare_cohort did not write it"):
        quick_prepare.main([str(src), "--out", str(brats)])
    assert [p.name for p in brats.rglob("*")] == ["BraTS2021_00001", "BraTS2021_00001_t1.nii.gz"]
    (tmp_path / "empty").mkdir()
    assert quick_prepare.main([str(src), "--out", str(tmp_path / "empty")]) == tmp_path / "empty"


def test_prepare_cohort_takes_an_out_folder_holding_only_hidden_files_as_empty(quick_prepare, tmp_path):
    """A new folder opened in a Mac's Finder holds a ``.DS_Store``: --out was refused as "not empty (1 item(s), e.g.
    '.DS_Store')", as if it held another cohort's files."""
    src, out = tmp_path / "src", tmp_path / "mine"
    for name in ("a_1", "b_1"):
        write_raw_scan(src, name)
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert quick_prepare.main([str(src), "--out", str(out)]) == out
    assert (out / "split.json").exists() and (out / ".DS_Store").exists()


def test_prepare_cohort_warns_of_a_split_too_small_to_train_or_evaluate(quick_prepare, tmp_path, capsys):
    """One subject: an empty test split and one training subject, each named in a warning with what needs more;
    three subjects of one scan each: a test split of one scan (no test-retest ICC)."""
    src = tmp_path / "src"
    for name in ("pat01_1", "pat01_2"):
        write_raw_scan(src, name)
    quick_prepare.main([str(src), "--out", str(tmp_path / "one")])
    warned = capsys.readouterr().err
    assert "warning: the training split holds 1 subject(s) (pat01); training (training.train) needs at least 2" in warned
    assert "warning: the test split is empty; evaluation (training.evaluate) needs test scans" in warned
    for name in ("pat02_1", "pat03_1"):
        write_raw_scan(src, name)
    quick_prepare.main([str(src), "--out", str(tmp_path / "three")])
    warned = capsys.readouterr().err
    assert "training split" not in warned and "warning: the test split holds 1 scan (pat0" in warned


def test_a_rerun_with_more_subjects_keeps_each_earlier_subject_on_its_side(quick_prepare, tmp_path, capsys):
    """Adding subjects and running again keeps the earlier split's sides (weights trained on it are not then scored on
    scans they trained on) and draws sides for the new subjects only, towards the test fraction; another --seed draws
    the split anew, and a warning names the subjects that changed sides."""
    from mixdemo.phantoms import split_subjects

    src, out = tmp_path / "src", tmp_path / "cohort"
    for i in range(8):
        write_raw_scan(src, f"p{i}_1")
    quick_prepare.main([str(src), "--out", str(out)])
    first = json.loads((out / "split.json").read_text())
    assert (first["test_fraction"], first["seed"]) == (0.25, 0) and len(first["test"]) == 2
    for i in range(8, 12):
        write_raw_scan(src, f"p{i}_1")
    subjects = sorted(f"p{i}" for i in range(12))  # as the command lists them
    fresh = split_subjects(subjects, 0.25, 0)
    assert set(first["test"]) & set(fresh["train"])  # the premise: a fresh draw would move a test subject
    quick_prepare.main([str(src), "--out", str(out)])
    second = json.loads((out / "split.json").read_text())
    assert set(first["test"]) <= set(second["test"]) and set(first["train"]) <= set(second["train"])
    assert len(second["test"]) == 3 and sorted(second["train"] + second["test"]) == sorted(subjects)
    assert "changed sides" not in capsys.readouterr().err
    quick_prepare.main([str(src), "--out", str(out), "--seed", "1"])
    third = json.loads((out / "split.json").read_text())
    assert {k: third[k] for k in ("train", "test")} == split_subjects(subjects, 0.25, 1)
    moved = sorted(set(second["test"]) & set(third["train"]) | set(second["train"]) & set(third["test"]))
    assert moved  # the premise: this draw moves some
    assert f"warning: {len(moved)} subject(s) changed sides since the earlier split.json ({', '.join(moved)})" \
        in capsys.readouterr().err


def test_freesurfer_labels_become_the_three_tissues():
    from mixdemo.data import freesurfer_tissue

    aseg = np.array([0, 2, 3, 4, 41, 42, 43, 24, 8, 7, 10, 16, 30, 1000])
    np.testing.assert_array_equal(freesurfer_tissue(aseg), [0, 2, 1, 3, 2, 1, 3, 3, 1, 2, 1, 2, 0, 0])


@pytest.mark.parametrize("shape, per_request", [((144, 192, 160), 8), ((240, 240, 155), 3), ((32, 32, 32), 8)])
def test_the_client_splits_requests_within_the_servers_limits(shape, per_request):
    """BraTS's grid holds more voxels: fewer of its proxies fit in one request, and a full request passes."""
    from mixdemo import client, server

    assert (client.MAX_PER_REQUEST, client.MAX_REQUEST_VOXELS) == (server.MAX_K, server.MAX_REQUEST_VOXELS)
    assert client.proxies_per_request(shape) == per_request
    server.check_proxies(np.zeros((per_request, *shape), np.float16))
    if per_request < server.MAX_K:
        with pytest.raises(server.ProxyError, match="too large"):
            server.check_proxies(np.zeros((per_request + 1, *shape), np.float16))
    import torch

    remote = object.__new__(client.RemoteServer)  # its requests, without a server
    remote.separate_requests, sizes = False, []
    remote.info = lambda: {}  # a server that does not report its limits: the client's defaults
    remote._request = lambda chunk: sizes.append(len(chunk)) or torch.zeros((len(chunk), 4, 1, 1, 1))  # small answers
    assert len(remote(np.zeros((10, *shape), np.float16))) == 10
    assert sizes == [per_request] * (10 // per_request) + ([10 % per_request] if 10 % per_request else [])
    stricter = object.__new__(client.RemoteServer)  # a server that reports smaller limits is obeyed
    stricter.info = lambda: {"max_k": 2, "max_request_voxels": server.MAX_REQUEST_VOXELS}
    assert stricter.per_request(shape) == min(2, per_request)


def test_an_evaluation_scores_the_first_scan_of_each_subject_whatever_the_scans_are_called():
    from mixdemo.data import ScanRecord, first_scans
    from training.evaluate import select_scans

    names = ["sub-01_ses-2", "sub-01_ses-1", "sub-02_ses-1", "sub-03_ses-1", "sub-03_ses-2"]
    records = [ScanRecord(n, n.rsplit("_", 1)[0], Path(n), Path(n)) for n in names]
    assert [r.name for r in first_scans(records)] == ["sub-01_ses-1", "sub-02_ses-1", "sub-03_ses-1"]
    dice, retest = select_scans(records, 2, icc_all=False, quick=False)
    assert [r.name for r in dice] == ["sub-01_ses-1", "sub-02_ses-1"] and len(retest) == 3
    dice, _ = select_scans(records, 0, icc_all=False, quick=False)  # 0: every test subject
    assert len(dice) == 3


def test_a_volume_cache_is_written_once_read_memory_mapped_and_rebuilt_when_its_source_changes(brats_2021, tmp_path):
    import os

    records = load_cohort(brats_2021).split("train")[:2]
    plain = load_volumes(records)
    cached = load_volumes(records, cache=tmp_path / "cache")
    for a, b in zip(plain, cached):
        assert isinstance(b.image, np.memmap) and isinstance(b.labels, np.memmap)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)  # the layout's classes (4 became 3)
        np.testing.assert_array_equal(a.affine, b.affine)
    written = (tmp_path / "cache" / f"{records[0].name}.image.npy").stat().st_mtime_ns
    load_volumes(records, cache=tmp_path / "cache")
    assert (tmp_path / "cache" / f"{records[0].name}.image.npy").stat().st_mtime_ns == written  # read, not rebuilt
    os.utime(records[0].image_path, ns=(written + 10**9, written + 10**9))  # the source changed
    load_volumes(records[:1], cache=tmp_path / "cache")
    assert (tmp_path / "cache" / f"{records[0].name}.image.npy").stat().st_mtime_ns != written


def test_training_reads_a_cohort_through_the_volume_cache(brats_2021, tmp_path):
    from training import train

    train.main(["--data", str(brats_2021), "--steps", "2", "--batch-size", "2", "--patch-size", "16",
                "--features", TINY, "--out", str(tmp_path / "w"), "--run-dir", str(tmp_path / "run"),
                "--volume-cache", str(tmp_path / "cache")])
    assert (tmp_path / "w" / "segmentation" / "model.safetensors").exists()
    assert len(list((tmp_path / "cache").glob("*.image.npy"))) == 6  # the training cases


def test_a_reference_folder_refuses_labels_outside_the_tissue_classes(tmp_path):
    from mixdemo.examples import load_reference_dir

    write_cube_scan(tmp_path / "r0", 7)
    with pytest.raises(ValueError, match=r"r0's labels hold \[7\]"):
        load_reference_dir(tmp_path)


def test_a_reference_folder_finds_its_files_whatever_the_case_of_their_names(tmp_path):
    """A client's ``--references`` folder copied from a Mac or Windows (``T1.nii.gz``, ``Seg.NII.GZ``) is read as a
    cohort folder is; it was refused as holding no references."""
    from mixdemo.examples import load_reference_dir

    write_cube_scan(tmp_path / "r0", 1)
    write_cube_scan(tmp_path / "r1", 2)
    for old, new in (("t1.nii.gz", "T1.nii.gz"), ("seg.nii.gz", "Seg.NII.GZ")):
        (tmp_path / "r1" / old).rename(tmp_path / "r1" / new)
    assert [r.ref_id for r in load_reference_dir(tmp_path)] == ["r0", "r1"]
    assert [r.ref_id for r in load_reference_dir(tmp_path, ids=["r1"])] == ["r1"]
