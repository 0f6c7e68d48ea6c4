"""Phantom cohort: plausible brain MRI, exact labels, determinism, test-retest structure."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mixdemo import phantoms
from mixdemo.data import load_cohort, load_volumes
from mixdemo.metrics import msssim_3d


@pytest.fixture(scope="module")
def volumes(small_cohort):
    return {v.name: v for v in load_volumes(load_cohort(small_cohort).records)}


def test_cli_writes_valid_cohort_layout(small_cohort):
    """``small_cohort`` is written by this module's CLI (``python -m mixdemo.phantoms``: conftest)."""
    meta = json.loads((small_cohort / "split.json").read_text())
    assert set(meta["train"]).isdisjoint(meta["test"]) and len(meta["train"]) == len(meta["test"]) == 2
    assert sorted(meta["train"] + meta["test"]) == ["sub-000", "sub-001", "sub-002", "sub-003"]
    assert meta["seed"] == 11 and meta["n_scans"] == 2 and meta["dataset"] == phantoms.DATASET
    for s in range(4):
        for k in range(2):
            folder = small_cohort / f"sub-{s:03d}_scan-{k}"
            assert (folder / "t1.nii.gz").is_file() and (folder / "seg.nii.gz").is_file()
    c = load_cohort(small_cohort)
    assert {r.subject for r in c.split("train")} == set(meta["train"])


def test_grid_is_common_and_divisible_by_16(volumes):
    for v in volumes.values():
        assert v.image.shape == phantoms.GRID_SHAPE
        assert all(n % 16 == 0 for n in v.image.shape)
        assert np.allclose(np.abs(np.diag(v.affine)[:3]), 1.0)


def test_labels_are_exactly_the_four_classes(volumes):
    for v in volumes.values():
        assert set(np.unique(v.labels)) == {0, 1, 2, 3}
        # skull-stripped: background is zero except a thin partial-volume rim at the brain edge
        bg = v.labels == 0
        assert (v.image[bg] > 0).mean() < 0.01


def test_tissue_fractions_are_plausible(volumes):
    for v in volumes.values():
        brain = v.labels > 0
        frac = {c: float((v.labels[brain] == c).mean()) for c in (1, 2, 3)}
        assert 0.35 <= frac[1] <= 0.70, frac  # GM
        assert 0.20 <= frac[2] <= 0.50, frac  # WM
        assert 0.02 <= frac[3] <= 0.25, frac  # CSF
        assert 0.8e6 <= brain.sum() <= 2.2e6  # 0.8–2.2 litres at 1 mm


def test_t1_contrast_wm_brighter_than_gm_brighter_than_csf(volumes):
    for v in volumes.values():
        wm, gm, csf = (float(v.image[v.labels == c].mean()) for c in (2, 1, 3))
        assert wm > gm > csf > 0


def _down(x: np.ndarray) -> np.ndarray:
    return torch.nn.functional.avg_pool3d(torch.from_numpy(x)[None, None], 2)[0, 0].numpy()


def test_scans_of_one_subject_are_more_alike_than_scans_of_two(volumes):
    same, diff = [], []
    names = sorted(n for n in volumes if volumes[n].subject != "sub-003")  # three subjects: 15 pairs
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            s = msssim_3d(_down(volumes[a].image), _down(volumes[b].image), data_range=1.0)
            (same if volumes[a].subject == volumes[b].subject else diff).append(s)
    assert len(same) == 3 and len(diff) == 12
    assert min(same) > max(diff), (same, diff)


def test_each_image_lines_up_with_its_labels(volumes):
    """Classing each voxel by the nearest of its scan's tissue means agrees with the labels, and better than with
    the labels moved one voxel along any axis (or mirrored): the labels were written on the image's own grid."""

    def agreement(image: np.ndarray, labels: np.ndarray) -> float:
        means = np.array([0.0, *(image[labels == c].mean() for c in (1, 2, 3))])
        brain = (labels > 0) | (image > 0)
        return float((np.abs(image[brain][:, None] - means).argmin(1) == labels[brain]).mean())

    for v in volumes.values():
        assert agreement(v.image, v.labels) > 0.85, v.name
    v = volumes["sub-000_scan-0"]
    aligned = agreement(v.image, v.labels)
    moved = [agreement(v.image, np.roll(v.labels, step, axis)) for axis in range(3) for step in (1, -1)]
    assert aligned > max(moved) + 0.02, (aligned, moved)
    assert aligned > agreement(v.image, v.labels[::-1]) + 0.1


def test_the_scans_of_a_subject_are_two_acquisitions(volumes):
    """Test-retest: the second scan of a subject has its own motion, contrast and noise (not the first again)."""
    for subject in ("sub-000", "sub-001"):
        a, b = volumes[f"{subject}_scan-0"], volumes[f"{subject}_scan-1"]
        assert not np.array_equal(a.labels, b.labels) and not np.allclose(a.image, b.image, atol=1e-3)


def _tiny_template(n: int = 24) -> phantoms.Template:
    """Nested soft spheres (CSF core, WM, GM shell) on an n³ grid: the phantom maps at a few ms a scan."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    inside, wm_in, csf = (1 / (1 + np.exp(-20 * (edge - r))) for edge in (0.85, 0.6, 0.25))
    probs = np.stack([1 - inside, inside - wm_in, wm_in - csf, csf]).astype(np.float32)
    return phantoms.Template(probs=torch.from_numpy(probs), affine=np.eye(4))


def test_every_random_part_of_a_phantom_follows_its_own_seed():
    """The same parameters give the same scan; another subject seed alone changes its local anatomy and its warp,
    another scan seed alone its noise and its bias field (and never its labels)."""
    template = _tiny_template()
    subject, scan = phantoms.sample_subject(5), phantoms.sample_scan(7)
    other_subject = replace(subject, seed=6)
    assert phantoms.sample_subject(5) == subject and replace(phantoms.sample_subject(6), seed=5) != subject
    assert replace(phantoms.sample_scan(8), seed=7) != scan
    tissue = phantoms.subject_tissue(template, subject)
    assert torch.equal(tissue, phantoms.subject_tissue(template, subject))
    assert not torch.allclose(tissue, phantoms.subject_tissue(template, other_subject), atol=1e-4)
    coords = phantoms.scan_sampling_coords(template, subject, scan)
    assert torch.equal(coords, phantoms.scan_sampling_coords(template, subject, scan))
    assert not torch.allclose(coords, phantoms.scan_sampling_coords(template, other_subject, scan), atol=1e-3)
    image, labels = phantoms.synthesize_scan(template, subject, scan)
    again = phantoms.synthesize_scan(template, subject, scan)
    assert np.array_equal(image, again[0]) and np.array_equal(labels, again[1])
    for part in ({"bias_strength": 0.0}, {"noise_sigma": 0.0}):  # the noise alone, then the bias field alone
        one = replace(scan, **part)
        image_a, labels_a = phantoms.synthesize_scan(template, subject, one)
        image_b, labels_b = phantoms.synthesize_scan(template, subject, replace(one, seed=one.seed + 1))
        assert np.array_equal(labels_a, labels_b) and not np.allclose(image_a, image_b, atol=1e-4), part


def test_subjects_differ_in_anatomy(volumes):
    a, b = volumes["sub-000_scan-0"], volumes["sub-001_scan-0"]
    brain_a, brain_b = a.labels > 0, b.labels > 0
    overlap = 2 * (brain_a & brain_b).sum() / (brain_a.sum() + brain_b.sum())
    assert overlap < 0.97  # different shapes, not the template twice


def test_generation_is_deterministic(small_cohort, tmp_path):
    """A scan written again here is the one the phantoms CLI wrote for ``small_cohort``, bit for bit (scan 1 of
    subject 2 of the seed-11 cohort)."""
    import nibabel as nib

    name, _ = phantoms.write_scan(tmp_path, 2, 1, 11)
    for file in ("t1.nii.gz", "seg.nii.gz"):
        again = np.asanyarray(nib.load(tmp_path / name / file).dataobj)
        assert np.array_equal(again, np.asanyarray(nib.load(small_cohort / name / file).dataobj)), file


def test_split_never_puts_a_subject_on_both_sides():
    ids = [phantoms.subject_id(i) for i in range(20)]
    split = phantoms.split_subjects(ids, 0.25, seed=1)
    assert set(split["train"]).isdisjoint(split["test"])
    assert len(split["test"]) == 5 and len(split["train"]) == 15


def _write_no_scan(root, subject_index: int, scan: int, seed: int, lesions: int = 0) -> tuple[str, float]:
    """``write_scan``'s stand-in: empty files where the scan would be (the split is under test)."""
    folder = Path(root) / phantoms.scan_dir_name(phantoms.subject_id(subject_index), scan)
    folder.mkdir(exist_ok=True)
    for name in ("t1.nii.gz", "seg.nii.gz"):
        (folder / name).write_bytes(b"")
    return folder.name, 0.0


def test_a_rerun_with_more_subjects_keeps_each_earlier_subject_on_its_side(tmp_path, monkeypatch, capsys):
    """Growing a cohort in its folder draws sides for the new subjects only: a test subject moved into training would
    be scored, by weights trained before, on scans they trained on. Another test fraction draws anew, with a warning."""
    monkeypatch.setattr(phantoms, "write_scan", _write_no_scan)
    ids = [phantoms.subject_id(i) for i in range(32)]

    def split_of() -> dict[str, list[str]]:
        meta = json.loads((tmp_path / "split.json").read_text())
        return {"train": meta["train"], "test": meta["test"]}

    phantoms.generate_cohort(tmp_path, n_subjects=24, n_scans=1, seed=0)
    first = split_of()
    assert first == phantoms.split_subjects(ids[:24], 0.25, 0)  # a fresh folder: the plain draw (examples.py's)
    assert set(first["test"]) & set(phantoms.split_subjects(ids, 0.25, 0)["train"])  # the premise: a fresh draw moves
    phantoms.generate_cohort(tmp_path, n_subjects=32, n_scans=1, seed=0)
    grown = split_of()
    assert set(first["test"]) <= set(grown["test"]) and set(first["train"]) <= set(grown["train"])
    assert len(grown["test"]) == 8 and sorted(grown["train"] + grown["test"]) == ids
    phantoms.generate_cohort(tmp_path, n_subjects=32, n_scans=1, seed=0)
    assert split_of() == grown and capsys.readouterr().err == ""
    phantoms.generate_cohort(tmp_path, n_subjects=32, n_scans=1, seed=0, test_fraction=0.5)
    assert split_of() == phantoms.split_subjects(ids, 0.5, 0)
    assert "changed sides" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, said", [
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"n_subjects": 2, "test_fraction": 0.8}, "none of the 2 subjects for training"),
    ({"n_scans": 17}, "At most 16 scans"),
    ({"seed": -1}, "seed"),
])
def test_a_cohort_that_cannot_be_drawn_is_refused_before_any_scan(tmp_path, monkeypatch, arguments, said):
    monkeypatch.setattr(phantoms, "write_scan", lambda *a, **k: pytest.fail("a scan was written"))
    with pytest.raises(ValueError, match=said):
        phantoms.generate_cohort(tmp_path / "c", **{"n_subjects": 4, **arguments})
    assert not (tmp_path / "c").exists()


def test_cohort_needs_two_subjects(tmp_path):
    with pytest.raises(ValueError, match="at least 2 subjects"):
        phantoms.generate_cohort(tmp_path, n_subjects=1)



def test_cli_refuses_an_out_folder_it_cannot_make_before_generating(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        phantoms.main(["--out", str(blocker / "cohort"), "--subjects", "2", "--scans", "1"])
    assert stop.value.code == 2 and "--out: the folder could not be made" in capsys.readouterr().err

def test_default_cohort_is_generated_once_and_no_other_folder_is(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(phantoms, "generate_cohort", lambda root, **kw: calls.append(Path(root)) or Path(root))
    monkeypatch.chdir(tmp_path)
    assert phantoms.ensure_default_cohort("data/phantoms") == phantoms.DEFAULT_COHORT
    assert calls == [phantoms.DEFAULT_COHORT]  # absent: generated
    phantoms.DEFAULT_COHORT.mkdir(parents=True)
    (phantoms.DEFAULT_COHORT / "split.json").write_text("{}")
    phantoms.ensure_default_cohort(phantoms.DEFAULT_COHORT)
    phantoms.ensure_default_cohort(tmp_path / "my_scans")  # a user's folder: read or rejected, never generated
    assert calls == [phantoms.DEFAULT_COHORT]


def test_worker_processes_write_the_same_scans_as_one_process(small_cohort, tmp_path):
    import nibabel as nib

    phantoms.generate_cohort(tmp_path, n_subjects=2, n_scans=1, seed=11, jobs=2)
    for i in range(2):
        name = phantoms.scan_dir_name(phantoms.subject_id(i), 0)
        for file in ("t1.nii.gz", "seg.nii.gz"):
            ours = np.asanyarray(nib.load(tmp_path / name / file).dataobj)
            theirs = np.asanyarray(nib.load(small_cohort / name / file).dataobj)
            assert np.array_equal(ours, theirs), (name, file)
    assert not (tmp_path / phantoms.scan_dir_name(phantoms.subject_id(0), 1)).exists()


def test_cohort_refuses_zero_jobs(tmp_path):
    with pytest.raises(ValueError, match="jobs"):
        phantoms.generate_cohort(tmp_path, n_subjects=2, jobs=0)


def test_a_cohort_with_lesions_names_a_fifth_class_and_draws_it_in_white_matter(tmp_path, monkeypatch, capsys):
    """``--lesions N``: each subject's lesions lie in its white matter, hypointense, the same in both of its scans,
    and split.json names the class, so the cohort trains and evaluates with five classes."""
    drawn: list[tuple[int, int]] = []  # (subject seed, lesion count) of each scan's lesion map
    real_map = phantoms.lesion_map
    monkeypatch.setattr(phantoms, "lesion_map", lambda t, subject, n: drawn.append((subject.seed, n)) or real_map(t, subject, n))
    phantoms.main(["--out", str(tmp_path / "c"), "--subjects", "2", "--scans", "2", "--lesions", "6", "--seed", "3"])
    assert len(drawn) == 4 and drawn[0] == drawn[1] and drawn[2] == drawn[3] and drawn[0] != drawn[2]
    meta = json.loads((tmp_path / "c" / "split.json").read_text())
    assert meta["classes"] == ["background", "GM", "WM", "CSF", "lesion"] and meta["lesions_per_subject"] == 6
    cohort = load_cohort(tmp_path / "c")
    assert cohort.num_classes == 5 and json.loads((tmp_path / "c" / "split.json").read_text())["seed"] == 3
    records = [r for r in cohort.records if r.subject == cohort.records[0].subject]
    first, second = load_volumes(records[:2])
    for volume in (first, second):
        lesion = volume.labels == 4
        assert 1000 < lesion.sum() < 30000  # six ellipsoids of 3-8 mm semi-axes, partly cut by the WM
        assert volume.image[lesion].mean() < 0.8 * volume.image[volume.labels == 2].mean()
    template = phantoms.load_template()
    subject = phantoms.sample_subject(drawn[0][0])
    lesions = phantoms.lesion_map(template, subject, 6)
    assert torch.equal(lesions, phantoms.lesion_map(template, subject, 6))  # deterministic: both scans share it
    carved = phantoms.with_lesions(template.probs, lesions)
    assert float((carved[4] - template.probs[2]).max()) <= 0.0  # taken out of the white matter only
    torch.testing.assert_close(carved.sum(0), template.probs.sum(0))
    assert float(carved[4].sum()) > 0.5 * float(lesions.sum())  # centred in WM: most of each ellipsoid is lesion
    with_none = phantoms.with_lesions(template.probs, torch.zeros_like(lesions))
    assert torch.equal(with_none[:4], template.probs) and float(with_none[4].abs().max()) == 0.0
    for other in (["--lesions", "0", "--seed", "3"], ["--lesions", "6", "--seed", "0"]):  # its scans would be kept
        with pytest.raises(SystemExit):
            phantoms.main(["--out", str(tmp_path / "c"), "--subjects", "2", "--scans", "2", *other])
        assert "made with seed 3 and 6 lesions per subject" in capsys.readouterr().err


def test_the_default_cohort_has_no_lesions(small_cohort):
    meta = json.loads((Path(small_cohort) / "split.json").read_text())
    assert meta["classes"] == ["background", "GM", "WM", "CSF"] and "lesions_per_subject" not in meta
    with pytest.raises(SystemExit):
        phantoms.main(["--out", "unused", "--lesions", "-1"])
