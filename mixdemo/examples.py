"""Bundled example targets and the demo client's reference bank (phantoms, generated once and cached).

Both come from the default phantom cohort (``python -m mixdemo.phantoms --subjects 24 --seed 0``,
whose subject ``i`` is ``sample_subject(i)`` scanned with ``sample_scan(16·i + s)``):

* **references** (the client's private key material): scan 0 of the first
  :data:`N_REFERENCES` *train* subjects of that cohort — exactly the population the
  evaluation protocol draws references from;
* **example targets**: scan 0 of the first :data:`N_EXAMPLES` *test* subjects, which no
  model has seen and which are never references.

They are written to ``$MIXDEMO_CACHE`` (default ``~/.cache/mixdemo``) under ``examples/`` and
``references/`` in the cohort layout (``<name>/t1.nii.gz`` + ``seg.nii.gz``), copied from
``data/phantoms`` when that cohort exists and synthesised otherwise (≈ 3 s per scan), on first
use only. Nothing here holds user data; the public phantom bank is cached in memory.

``python -m mixdemo.examples --out DIR`` copies the example targets into ``DIR`` as ``DIR/<subject>.nii.gz``, with
their labels as ``DIR/labels/<subject>_seg.nii.gz``: scans to try the command-line client on (``DIR/*.nii.gz``
matches the scans alone), and labels to score its answer against.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

if TYPE_CHECKING:  # torch and MONAI load lazily: the app's first page must not wait for them
    from mixdemo.pipeline import Reference

ProgressFn = Callable[[float, str], None]

N_REFERENCES = 10
"""The public reference bank's size: K = 10, the TTA of the results, needs ten distinct references."""
N_EXAMPLES = 3
COHORT_SEED = 0
COHORT_SUBJECTS = 24
COHORT_TEST_FRACTION = 0.25
CACHE_ENV = "MIXDEMO_CACHE"

_REPO_ROOT = Path(__file__).resolve().parent.parent
_LOCK = threading.Lock()


def cache_root() -> Path:
    """``$MIXDEMO_CACHE`` or ``~/.cache/mixdemo``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mixdemo")


@functools.lru_cache(maxsize=1)
def _split() -> dict[str, list[str]]:
    """``phantoms.split_subjects`` of the default cohort, restated so that torch is not imported
    at start-up (tests check that both agree)."""
    subjects = [f"sub-{i:03d}" for i in range(COHORT_SUBJECTS)]
    order = list(np.random.default_rng([COHORT_SEED, 3]).permutation(len(subjects)))
    n_test = max(1, int(round(len(subjects) * COHORT_TEST_FRACTION)))
    return {"train": sorted(subjects[i] for i in order[n_test:]), "test": sorted(subjects[i] for i in order[:n_test])}


def reference_subjects() -> list[str]:
    """Subject ids of the reference bank (train subjects of the default cohort)."""
    return _split()["train"][:N_REFERENCES]


def example_subjects() -> list[str]:
    """Subject ids of the example targets (test subjects of the default cohort)."""
    return _split()["test"][:N_EXAMPLES]


def example_names() -> list[str]:
    """Display names of the example targets, e.g. ``"phantom sub-002 (test subject)"``."""
    return [f"phantom {s} (test subject)" for s in example_subjects()]


def _write_scan(subject: str, folder: Path, scan: int = 0) -> None:
    """Write scan ``scan`` of ``subject`` as ``folder/t1.nii.gz`` + ``seg.nii.gz`` (copy or synthesise)."""
    from mixdemo.io import save_volume
    from mixdemo.phantoms import load_template, sample_scan, sample_subject, scan_dir_name

    src = _REPO_ROOT / "data" / "phantoms" / scan_dir_name(subject, scan)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        if _default_cohort_present() and (src / "t1.nii.gz").exists() and (src / "seg.nii.gz").exists():
            shutil.copy(src / "t1.nii.gz", tmp / "t1.nii.gz")
            shutil.copy(src / "seg.nii.gz", tmp / "seg.nii.gz")
        else:
            index = int(subject.split("-")[1])
            base = COHORT_SEED * 100003 + index
            template = load_template()
            image, labels = _synth(template, sample_subject(base), sample_scan(base * 16 + scan))
            save_volume(labels, template.affine, tmp / "seg.nii.gz", dtype=np.uint8)
            save_volume(image, template.affine, tmp / "t1.nii.gz", dtype=np.float32)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _default_cohort_present() -> bool:
    """True if ``data/phantoms`` is the default cohort (same seed and size), so its files can be copied."""
    import json

    try:
        meta = json.loads((_REPO_ROOT / "data" / "phantoms" / "split.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("seed") == COHORT_SEED and len(meta.get("train", [])) + len(meta.get("test", [])) == COHORT_SUBJECTS


def _synth(template, subject, scan):  # noqa: ANN001, ANN202 - thin wrapper, patched in tests
    from mixdemo.phantoms import synthesize_scan

    return synthesize_scan(template, subject, scan)


def _ensure(kind: str, subjects: list[str], progress: ProgressFn | None, scan: int = 0) -> list[Path]:
    """Folders ``<cache>/<kind>/<subject>``, generated where missing."""
    base = cache_root() / kind
    folders = [base / s for s in subjects]
    missing = [f for f in folders if not ((f / "t1.nii.gz").exists() and (f / "seg.nii.gz").exists())]
    if missing:
        base.mkdir(parents=True, exist_ok=True)
        # one writer at a time, across threads and processes (an app and a client CLI, test workers): another
        # writer's finished folder is then seen as present, never replaced while it is being read
        with _LOCK, FileLock(str(cache_root() / ".write.lock")):
            for i, folder in enumerate(missing):
                if progress:
                    progress(i / len(missing), f"preparing phantom {kind} {i + 1}/{len(missing)} (first use only)")
                if not (folder / "t1.nii.gz").exists() or not (folder / "seg.nii.gz").exists():
                    _write_scan(folder.name, folder, scan)
    return folders


def example_folders(progress: ProgressFn | None = None) -> dict[str, Path]:
    """``{display name: folder with t1.nii.gz and seg.nii.gz}`` of the example targets."""
    folders = _ensure("examples", example_subjects(), progress)
    return dict(zip(example_names(), folders))


def retest_folders(progress: ProgressFn | None = None) -> dict[str, Path]:
    """``{subject: folder}`` of the example subjects' *second* scans (test-retest pairs, for re-identification)."""
    subjects = example_subjects()
    return dict(zip(subjects, _ensure("retest", subjects, progress, scan=1)))


def reference_folder(progress: ProgressFn | None = None) -> Path:
    """The reference bank's folder in the cohort layout (usable as the client's ``--references``)."""
    _ensure("references", reference_subjects(), progress)
    return cache_root() / "references"


def load_reference_dir(folder: str | os.PathLike, ids: list[str] | None = None, *,
                       num_classes: int | None = 4) -> list[Reference]:
    """Load references from ``<folder>/<id>/t1.nii.gz`` + ``seg.nii.gz`` (normalised as in training), or,
    without ``ids`` and without such folders, from BraTS case folders (:func:`mixdemo.data.load_cohort`: the
    T1CE images, the tumour labels as classes 1-3), for models trained on BraTS.

    ``num_classes``: the labels a ``seg.nii.gz`` may hold are 0 … ``num_classes`` − 1 (the phantoms' four classes
    by default; ``None``: up to :data:`mixdemo.data.MAX_CLASSES` − 1, for a caller that checks them against a
    model's classes later).

    Raises:
        ValueError: no usable reference in ``folder`` (the message names what is expected).
    """
    from mixdemo.data import MAX_CLASSES, ScanRecord, first_file, load_volume, mixdemo_layout
    from mixdemo.pipeline import Reference

    n = MAX_CLASSES if num_classes is None else num_classes
    layout = mixdemo_layout(("background", *(f"class {c}" for c in range(1, n))))
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError("The reference folder is a file: give the folder that holds the references (one folder "
                         "each, t1.nii.gz + seg.nii.gz)." if folder.exists() else "The reference folder does not exist.")
    names = ids if ids is not None else sorted(p.name for p in folder.iterdir() if first_file(p, ("t1.nii.gz",)))
    if ids is None and not names:
        return _brats_references(folder)
    refs = []
    for name in names:
        image, labels = first_file(folder / name, ("t1.nii.gz",)), first_file(folder / name, ("seg.nii.gz",))
        if image is None or labels is None:
            raise ValueError(f"Reference '{name}' needs t1.nii.gz and seg.nii.gz.")
        vol = load_volume(ScanRecord(name, name, image, labels, layout))  # else a ValueError
        refs.append(Reference(name, vol.image, vol.labels))
    if not refs:
        raise ValueError("The reference folder holds no <id>/t1.nii.gz + seg.nii.gz pairs.")
    if len({r.image.shape for r in refs}) > 1:
        raise ValueError("All references must share one grid (register them to MNI space first).")
    return refs


def _brats_references(folder: Path) -> list[Reference]:
    """Every labelled case of a folder of BraTS case folders as references (ValueError if it holds none)."""
    from mixdemo.data import load_cohort, load_volumes
    from mixdemo.pipeline import Reference

    try:
        records = [r for r in load_cohort(folder).records if r.label_path is not None]
    except FileNotFoundError:
        records = []
    if not records:
        raise ValueError("The reference folder holds no <id>/t1.nii.gz + seg.nii.gz pairs (nor BraTS case folders).")
    return [Reference(v.name, v.image, v.labels) for v in load_volumes(records)]


@functools.lru_cache(maxsize=2)
def _bank(root: str) -> tuple[Reference, ...]:
    return tuple(load_reference_dir(Path(root) / "references", reference_subjects()))


def reference_bank(progress: ProgressFn | None = None) -> list[Reference]:
    """The demo client's reference bank (public phantoms; cached in memory after the first load)."""
    reference_folder(progress)
    if progress:
        progress(0.95, "loading the reference bank")
    return list(_bank(str(cache_root())))


def reference_grid() -> tuple[int, int, int]:
    """The reference bank's grid (the phantoms' MNI grid), known without building the bank."""
    from mixdemo.phantoms import GRID_SHAPE  # imported here: this module loads without torch

    return GRID_SHAPE


def reference_ids() -> list[str]:
    """Ids of the reference bank (no generation needed)."""
    return reference_subjects()


def write_examples(out: Path, progress: ProgressFn | None = None, *, dicom: bool = False) -> list[Path]:
    """Copy the example targets (test subjects, never references) to ``out/<subject>.nii.gz`` and their labels to
    ``out/labels/<subject>_seg.nii.gz``; with ``dicom``, each scan also as a zipped DICOM series,
    ``out/dicom/<subject>.zip`` (:func:`mixdemo.dicom.write_series`, on the same grid). Returns the scans written."""
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written = []
    for folder in example_folders(progress).values():
        shutil.copyfile(folder / "seg.nii.gz", out / "labels" / f"{folder.name}_seg.nii.gz")
        shutil.copyfile(folder / "t1.nii.gz", out / f"{folder.name}.nii.gz")
        written.append(out / f"{folder.name}.nii.gz")
        if dicom:
            written.append(_write_dicom_example(folder / "t1.nii.gz", out / "dicom" / f"{folder.name}.zip"))
    return written


def _write_dicom_example(nifti: Path, archive: Path) -> Path:
    """A phantom scan as a zipped DICOM series (on its NIfTI grid), written through a temporary folder."""
    import nibabel as nib

    from mixdemo.dicom import write_series, zip_series

    image = nib.load(nifti)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mixdemo-dicom-example-") as tmp:
        files = write_series(np.asarray(image.dataobj, dtype=np.float32), image.affine, tmp)
        return zip_series(files, archive)


def main(argv: list[str] | None = None) -> int:
    """``python -m mixdemo.examples --out DIR``: the example targets as files, e.g. for the command-line client."""
    p = argparse.ArgumentParser(prog="python -m mixdemo.examples",
                                description="Write the app's example phantom targets (test subjects, with their labels) "
                                            "to a folder: scans to try the command-line client on. No patient data.")
    p.add_argument("--out", type=Path, required=True,
                   help="folder that receives <subject>.nii.gz, and labels/<subject>_seg.nii.gz")
    p.add_argument("--dicom", action="store_true",
                   help="also write each scan as a zipped DICOM series, dicom/<subject>.zip, to try the DICOM input")
    args = p.parse_args(argv)
    try:
        scans = write_examples(args.out, lambda f, m: print(m, file=sys.stderr), dicom=args.dicom)
    except OSError as exc:
        print(f"error: the examples could not be written ({exc.strerror or type(exc).__name__}).", file=sys.stderr)
        return 2
    for scan in scans:
        print(scan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
