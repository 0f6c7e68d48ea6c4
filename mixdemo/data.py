"""Cohort folders and training batches.

Layout (phantoms and real data alike)::

    <root>/<subject>_<scan>/t1.nii.gz     T1 image (skull-stripped, MNI space, 1 mm)
    <root>/<subject>_<scan>/seg.nii.gz    labels 0 background, 1 GM, 2 WM, 3 CSF
    <root>/split.json                     {"train": [subject, ...], "test": [subject, ...]}

The subject id is the folder name up to its last underscore, so test-retest scans of one
subject share it. Without ``split.json`` a deterministic 75/25 split by subject is made.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixdemo.mixing import TRAIN_ALPHA_RANGE, mix, one_hot, patch_slices, sample_patch_corner
from mixdemo.phantoms import NUM_CLASSES, split_subjects


@dataclass(frozen=True)
class ScanRecord:
    """One scan of a cohort folder."""

    name: str
    subject: str
    image_path: Path
    label_path: Path | None


@dataclass(frozen=True)
class Cohort:
    """A cohort folder: its scans and its train/test split by subject."""

    root: Path
    records: tuple[ScanRecord, ...]
    train_subjects: tuple[str, ...]
    test_subjects: tuple[str, ...]

    def split(self, which: str) -> list[ScanRecord]:
        """Records of the ``"train"`` or ``"test"`` subjects."""
        subjects = {"train": self.train_subjects, "test": self.test_subjects}[which]
        return [r for r in self.records if r.subject in set(subjects)]


def subject_of(folder_name: str) -> str:
    """``sub-001_scan-0`` → ``sub-001`` (text up to the last underscore)."""
    return folder_name.rsplit("_", 1)[0] if "_" in folder_name else folder_name


def load_cohort(root: str | Path) -> Cohort:
    """Read a cohort folder (see the module docstring for the layout)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No cohort folder at {root}; generate one with python -m mixdemo.phantoms --out {root}")
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        image = _first_existing(folder, ("t1.nii.gz", "t1.nii"))
        if image is None:
            continue
        label = _first_existing(folder, ("seg.nii.gz", "seg.nii"))
        records.append(ScanRecord(folder.name, subject_of(folder.name), image, label))
    if not records:
        raise FileNotFoundError(f"{root} holds no <subject>_<scan>/t1.nii.gz folders.")
    subjects = sorted({r.subject for r in records})
    split_file = root / "split.json"
    if split_file.exists():
        meta = json.loads(split_file.read_text())
        train, test = meta["train"], meta["test"]
    else:
        split = split_subjects(subjects, 0.25, seed=0)
        train, test = split["train"], split["test"]
    if set(train) & set(test):
        raise ValueError(f"split.json puts subjects on both sides: {sorted(set(train) & set(test))}")
    return Cohort(root, tuple(records), tuple(train), tuple(test))


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (folder / n).exists():
            return folder / n
    return None


@dataclass
class Volume:
    """A scan in memory: normalised image, labels and its subject."""

    name: str
    subject: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def load_volume(record: ScanRecord) -> Volume:
    """Load and normalise one labelled scan with :mod:`mixdemo.io`."""
    from mixdemo.io import load_labels, load_scan

    if record.label_path is None:
        raise ValueError(f"Scan {record.name} has no seg.nii.gz; training and evaluation need labels.")
    scan = load_scan(record.image_path)
    labels = load_labels(record.label_path, like=scan)
    return Volume(record.name, record.subject, scan.data, labels, scan.affine)


def load_volumes(records: Sequence[ScanRecord]) -> list[Volume]:
    """Load scans that must share one grid (mixing cuts them at the same coordinates)."""
    volumes = [load_volume(r) for r in records]
    shapes = {v.image.shape for v in volumes}
    if len(shapes) > 1:
        raise ValueError(
            f"Scans must share one grid to be mixed, found shapes {sorted(shapes)}; "
            "register them to MNI space first (mixdemo.preprocess)."
        )
    return volumes


@dataclass
class Batch:
    """One training batch of mixed patches (B, …)."""

    x_mix: torch.Tensor  # (B, 1, P, P, P) proxy, Eq. 2
    y_mix: torch.Tensor  # (B, C, P, P, P) mixed one-hot labels, Eq. 3
    y_ref: torch.Tensor  # (B, R·C, P, P, P) one-hot reference labels
    y_target: torch.Tensor  # (B, P, P, P) integer labels of the target
    x_target: torch.Tensor  # (B, 1, P, P, P)
    weights: torch.Tensor  # (B, 1 + R): α then each reference's weight


class MixedPatchSampler:
    """Random mixed patches: a target, R references of other subjects, α ~ U(range).

    Reference weights split 1 − α at random (R = 1: the paper's Eq. 2; R = 2: three sources).
    ``mixed=False`` gives plain patches (the baseline's training data); ``augment=True`` passes the
    target through :mod:`mixdemo.augment` (small affine, gamma, bias field, noise) before mixing.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        *,
        patch_size: int = 32,
        alpha_range: tuple[float, float] = TRAIN_ALPHA_RANGE,
        n_references: int = 1,
        mixed: bool = True,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        if len({v.subject for v in volumes}) < 1 + n_references and mixed:
            raise ValueError("Mixing needs references from subjects other than the target's.")
        self.volumes = list(volumes)
        self.patch_size = patch_size
        self.alpha_range = alpha_range
        self.n_references = n_references
        self.mixed = mixed
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self._foreground = [np.argwhere(v.labels > 0) for v in self.volumes]

    def _draw(self) -> tuple[np.ndarray, ...]:
        t = int(self.rng.integers(len(self.volumes)))
        target = self.volumes[t]
        corner = sample_patch_corner(target.image.shape, self.patch_size, self.rng, self._foreground[t])
        sl = patch_slices(corner, self.patch_size)
        x_t, y_t = target.image[sl], target.labels[sl]
        if self.augment:  # residual misregistration and contrast of real scans (target only, before mixing)
            from mixdemo.augment import augment_patch, sample_augmentation

            x_t, y_t = augment_patch(target.image, target.labels, corner, self.patch_size, sample_augmentation(self.rng))
        if not self.mixed:
            return x_t, y_t, x_t, one_hot(y_t, NUM_CLASSES), np.zeros((0, *y_t.shape), np.float32), np.ones(1)
        others = [i for i, v in enumerate(self.volumes) if v.subject != target.subject]
        refs = self.rng.choice(others, size=self.n_references, replace=False)
        alpha = float(self.rng.uniform(*self.alpha_range))
        split = self.rng.dirichlet(np.ones(self.n_references)) if self.n_references > 1 else np.ones(1)
        weights = np.concatenate([[alpha], (1 - alpha) * split])
        x_mix = alpha * x_t
        y_t1 = one_hot(y_t, NUM_CLASSES)
        y_mix = alpha * y_t1
        y_refs = []
        for r, w in zip(refs, weights[1:]):
            x_r, y_r = self.volumes[r].image[sl], one_hot(self.volumes[r].labels[sl], NUM_CLASSES)
            x_mix = x_mix + w * x_r
            y_mix = y_mix + w * y_r
            y_refs.append(y_r)
        if self.n_references == 1:  # the same numbers through the paper's Eq. 2 and 3
            x_mix = mix(x_t, self.volumes[refs[0]].image[sl], alpha)
        return x_mix, y_t, x_t, y_mix, np.concatenate(y_refs), weights

    def batch(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` samples."""
        items = [self._draw() for _ in range(batch_size)]
        x_mix, y_t, x_t, y_mix, y_ref, w = (np.stack(col) for col in zip(*items))
        return Batch(
            x_mix=torch.from_numpy(x_mix[:, None].astype(np.float32)),
            y_mix=torch.from_numpy(y_mix.astype(np.float32)),
            y_ref=torch.from_numpy(y_ref.astype(np.float32)),
            y_target=torch.from_numpy(y_t.astype(np.int64)),
            x_target=torch.from_numpy(x_t[:, None].astype(np.float32)),
            weights=torch.from_numpy(w.astype(np.float32)),
        )

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.batch(4)
