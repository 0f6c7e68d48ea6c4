"""Phantom MRI cohort built from the MNI152 2009a template that nilearn's wheel ships.

No patient data: every subject is the template under its own smooth random deformation,
global scaling and local anatomical variation (ventricle size, cortical thickness, sulcal
CSF); every scan of a subject adds its own contrast, bias field, noise and small rigid
motion, so that test-retest pairs exist as in PPMI. Labels are exact: they are the arg-max
of the same warped tissue probabilities that synthesise the image.

Labels: 0 background, 1 GM, 2 WM, 3 CSF.

CLI::

    python -m mixdemo.phantoms --out data/phantoms --subjects 24 --scans 2 --seed 0
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mixdemo.augment import rotation_matrix
from mixdemo.classes import CLASS_NAMES
from mixdemo.launch import count

DATASET = "MNI152-phantom"
"""The phantom cohort's ``dataset`` in its split.json."""
LESION_CLASS = "lesion"
"""The fifth class of a cohort written with lesions (``--lesions N``): label 4."""
LESION_RADIUS_MM = (3.0, 8.0)
"""Range of a lesion ellipsoid's semi-axes."""
LESION_MEAN = (0.35, 0.5)
"""Range of a lesion's mean T1 intensity (WM about 1, GM about 0.6, CSF about 0.2): hypointense, as MS lesions."""
MAX_SCANS = 16
"""Scans per subject at most: scan ``k`` of subject ``i`` is drawn from seed ``base(i) * 16 + k``."""
GRID_SHAPE: tuple[int, int, int] = (144, 192, 160)
"""Common 1 mm grid around the brain (the paper's PPMI size); every side divisible by 16."""


@dataclass(frozen=True)
class Template:
    """Tissue probabilities of the MNI152 template cropped to :data:`GRID_SHAPE`.

    Attributes:
        probs: (4, X, Y, Z) float32 probabilities of background, GM, WM, CSF (sum to 1).
        affine: 4x4 voxel-to-MNI (mm) affine of the cropped grid.
    """

    probs: torch.Tensor
    affine: np.ndarray


@dataclass(frozen=True)
class SubjectParams:
    """Anatomy of one phantom subject (all scans of a subject share it)."""

    seed: int
    scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    warp_mm: float
    ventricle_gain: float
    cortex_log_gain: float
    csf_log_gain: float


@dataclass(frozen=True)
class ScanParams:
    """Acquisition of one scan: contrast, bias field, noise and rigid motion."""

    seed: int
    tissue_means: tuple[float, float, float]
    bias_strength: float
    noise_sigma: float
    motion_deg: tuple[float, float, float]
    motion_mm: tuple[float, float, float]


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load nilearn's packaged MNI152 2009a maps (no download) and crop to the common grid.

    CSF is taken as brain mask − GM − WM (clipped at 0); background as 1 − the rest.
    """
    from nilearn import datasets  # imported lazily: nilearn is slow to import

    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    gm_p = np.asarray(gm.get_fdata(), dtype=np.float32)
    wm_p = np.asarray(wm.get_fdata(), dtype=np.float32)
    mask_p = np.asarray(mask.get_fdata(), dtype=np.float32)
    gm_p, wm_p = gm_p * mask_p, wm_p * mask_p
    csf_p = np.clip(mask_p - gm_p - wm_p, 0.0, 1.0)
    bg_p = np.clip(1.0 - gm_p - wm_p - csf_p, 0.0, 1.0)
    probs = np.stack([bg_p, gm_p, wm_p, csf_p])
    probs /= probs.sum(0, keepdims=True)

    start = _crop_start(mask_p > 0)
    cropped = _crop_or_pad(probs, start)
    affine = np.array(mask.affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, :3] @ np.array(start, dtype=np.float64) + affine[:3, 3]
    return Template(probs=torch.from_numpy(np.ascontiguousarray(cropped)), affine=affine)


def _crop_start(mask: np.ndarray) -> tuple[int, int, int]:
    """Start index of a GRID_SHAPE box centred on the mask's bounding box."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    centre = (lo + hi) / 2.0
    return tuple(int(round(c - n / 2.0)) for c, n in zip(centre, GRID_SHAPE))  # type: ignore[return-value]


def _crop_or_pad(probs: np.ndarray, start: tuple[int, int, int]) -> np.ndarray:
    """Cut (C, X, Y, Z) at ``start`` to GRID_SHAPE, padding with background where outside."""
    out = np.zeros((probs.shape[0], *GRID_SHAPE), dtype=np.float32)
    out[0] = 1.0
    src, dst = [], []
    for s, n, size in zip(start, GRID_SHAPE, probs.shape[1:]):
        a, b = max(s, 0), min(s + n, size)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[(slice(None), *dst)] = probs[(slice(None), *src)]
    return out


# ---------------------------------------------------------------------------------------
# Parameter sampling (TorchIO style: sample parameters, then apply a deterministic map)
# ---------------------------------------------------------------------------------------


def sample_subject(seed: int) -> SubjectParams:
    """Draw one subject's anatomy from a seed."""
    rng = np.random.default_rng([seed, 1])
    return SubjectParams(
        seed=seed,
        scale=tuple(float(s) for s in rng.uniform(0.90, 1.03, 3) * rng.uniform(0.97, 1.03)),
        rotation_deg=tuple(float(r) for r in rng.uniform(-3.0, 3.0, 3)),
        warp_mm=float(rng.uniform(2.0, 4.0)),
        ventricle_gain=float(rng.uniform(-0.15, 0.45)),
        cortex_log_gain=float(rng.uniform(-0.4, 0.3)),
        csf_log_gain=float(rng.uniform(-0.2, 0.7)),
    )


def sample_scan(seed: int) -> ScanParams:
    """Draw one acquisition's parameters from a seed."""
    rng = np.random.default_rng([seed, 2])
    means = (
        float(rng.uniform(0.55, 0.68)),  # GM
        float(rng.uniform(0.95, 1.05)),  # WM
        float(rng.uniform(0.15, 0.30)),  # CSF
    )
    return ScanParams(
        seed=seed,
        tissue_means=means,
        bias_strength=float(rng.uniform(0.03, 0.12)),
        noise_sigma=float(rng.uniform(0.01, 0.035)),
        motion_deg=tuple(float(r) for r in rng.uniform(-1.5, 1.5, 3)),
        motion_mm=tuple(float(t) for t in rng.uniform(-1.5, 1.5, 3)),
    )


# ---------------------------------------------------------------------------------------
# Deterministic maps
# ---------------------------------------------------------------------------------------


def _rotation(deg: tuple[float, float, float]) -> torch.Tensor:
    """3x3 rotation matrix from Euler angles in degrees (x, then y, then z)."""
    ax, ay, az = (math.radians(d) for d in deg)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return (rz @ ry @ rx).float()


def _smooth_field(generator: torch.Generator, channels: int, control: tuple[int, int, int]) -> torch.Tensor:
    """Random (channels, *control) control-point values in [-1, 1], smooth once upsampled."""
    return torch.rand((1, channels, *control), generator=generator) * 2.0 - 1.0


def _sample_field(field: torch.Tensor, coords_norm: torch.Tensor) -> torch.Tensor:
    """Trilinearly sample a (1, C, a, b, c) field at normalised coords (X, Y, Z, 3) → (C, X, Y, Z)."""
    grid = coords_norm.flip(-1)[None]  # grid_sample wants (z, y, x) order in the last dim
    return F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


def _voxel_grid(shape: tuple[int, int, int]) -> torch.Tensor:
    """(X, Y, Z, 3) voxel coordinates."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _to_norm(coords: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Voxel coordinates → grid_sample's [-1, 1] (align_corners=True)."""
    size = torch.tensor([n - 1 for n in shape], dtype=torch.float32)
    return coords / size * 2.0 - 1.0


def _ventricle_centre(template: Template) -> torch.Tensor:
    """Centre (voxels) of the CSF inside a central box: the lateral ventricles."""
    csf = template.probs[3]
    shape = csf.shape
    box = tuple(slice(int(n * 0.35), int(n * 0.65)) for n in shape)
    sub = (csf[box] > 0.5).nonzero().float()
    offset = torch.tensor([b.start for b in box], dtype=torch.float32)
    return sub.mean(0) + offset


def subject_tissue(template: Template, params: SubjectParams) -> torch.Tensor:
    """Subject-specific tissue probabilities in template space (cortex and sulcal CSF).

    Cortical thickness and sulcal width are changed by re-weighting the GM and CSF
    probabilities with smooth random log-gains before the arg-max, which moves the
    tissue boundaries by a few voxels.
    """
    gen = torch.Generator().manual_seed(params.seed * 7919 + 3)
    shape = tuple(template.probs.shape[1:])
    coords = _to_norm(_voxel_grid(shape), shape)  # type: ignore[arg-type]
    gains = _sample_field(_smooth_field(gen, 2, (5, 6, 5)), coords)
    log_gm = params.cortex_log_gain + 0.35 * gains[0]
    log_csf = params.csf_log_gain + 0.35 * gains[1]
    probs = template.probs.clone()
    probs[1] *= torch.exp(log_gm)
    probs[3] *= torch.exp(log_csf)
    return probs / probs.sum(0, keepdim=True)


def scan_sampling_coords(template: Template, subject: SubjectParams, scan: ScanParams) -> torch.Tensor:
    """Template voxel coordinates (X, Y, Z, 3) seen by each voxel of one scan.

    Composition: scan rigid motion → subject global affine (scale, rotation) →
    subject smooth random warp → ventricle expansion (radial, Gaussian-windowed).
    """
    shape = tuple(template.probs.shape[1:])
    centre = torch.tensor([(n - 1) / 2.0 for n in shape])
    p = _voxel_grid(shape)  # type: ignore[arg-type]
    # 1. scan motion (rigid)
    p = (p - centre) @ _rotation(scan.motion_deg).T + centre + torch.tensor(scan.motion_mm)
    # 2. subject global affine: a larger brain samples the template nearer its centre
    a = _rotation(subject.rotation_deg) / torch.tensor(subject.scale)[None, :]
    p = (p - centre) @ a.T + centre
    # 3. smooth random warp (control grid 6x7x6, trilinear)
    gen = torch.Generator().manual_seed(subject.seed * 104729 + 11)
    warp = _sample_field(_smooth_field(gen, 3, (6, 7, 6)), _to_norm(p, shape))  # type: ignore[arg-type]
    p = p + subject.warp_mm * warp.permute(1, 2, 3, 0)
    # 4. ventricles: sampling pulled towards the centre enlarges them
    vc = _ventricle_centre(template)
    d = p - vc
    window = torch.exp(-(d**2).sum(-1, keepdim=True) / (2 * 18.0**2))
    return p - subject.ventricle_gain * d * window


def _bias_field(scan: ScanParams, shape: tuple[int, int, int]) -> torch.Tensor:
    """Smooth multiplicative bias field exp(s·f), f in [-1, 1] from a 4x4x4 control grid."""
    gen = torch.Generator().manual_seed(scan.seed * 15485863 + 5)
    coords = _to_norm(_voxel_grid(shape), shape)
    return torch.exp(scan.bias_strength * _sample_field(_smooth_field(gen, 1, (4, 4, 4)), coords)[0])


def lesion_map(template: Template, subject: SubjectParams, count: int) -> torch.Tensor:
    """A subject's white-matter lesions in template space, (X, Y, Z) in [0, 1]: ``count`` ellipsoids (semi-axes
    :data:`LESION_RADIUS_MM`, random orientation) centred on voxels of nearly pure WM, deterministic from the
    subject's seed, so both scans of a subject show the same lesions (test-retest). Each is a logistic of the
    distance from its centre in semi-axes (10 % to 90 % over about half a semi-axis), set within a box reaching
    10 voxels from the centre: past 8 mm it is clipped where it is still about 0.1, which the labels (above 0.5,
    within the semi-axes) do not reach, but the intensity does, slightly."""
    shape = tuple(template.probs.shape[1:])
    rng = np.random.default_rng([subject.seed, 3])
    pure_wm = (template.probs[2] > 0.95).nonzero().numpy()
    grid = _voxel_grid(shape)  # type: ignore[arg-type]
    lesions = torch.zeros(shape)
    for _ in range(count):
        centre = torch.tensor(pure_wm[rng.integers(len(pure_wm))], dtype=torch.float32)
        radii = torch.tensor(rng.uniform(*LESION_RADIUS_MM, 3), dtype=torch.float32)
        axes = _rotation(tuple(float(a) for a in rng.uniform(-180.0, 180.0, 3)))
        reach = int(LESION_RADIUS_MM[1]) + 2
        box = tuple(slice(max(0, int(c) - reach), min(n, int(c) + reach + 1)) for c, n in zip(centre.tolist(), shape))
        local = (grid[box] - centre) @ axes / radii  # in units of the semi-axes
        inside = torch.sigmoid((1.0 - local.norm(dim=-1)) * 8.0)
        lesions[box] = torch.maximum(lesions[box], inside)
    return lesions


def with_lesions(tissue: torch.Tensor, lesions: torch.Tensor) -> torch.Tensor:
    """Tissue probabilities (4, X, Y, Z) with a fifth channel, lesion, taken out of the white matter."""
    lesion = tissue[2] * lesions
    return torch.cat([tissue[:2], (tissue[2] - lesion)[None], tissue[3:], lesion[None]])


def synthesize_scan(template: Template, subject: SubjectParams, scan: ScanParams,
                    lesions: torch.Tensor | None = None, lesion_mean: float = 0.42) -> tuple[np.ndarray, np.ndarray]:
    """Render one scan: returns (image float32 in [0, ~1.2], labels uint8) on GRID_SHAPE. With ``lesions`` (a
    :func:`lesion_map`), white matter under it becomes label 4 at intensity ``lesion_mean``."""
    from mixdemo.mixing import hard_labels  # here: the server imports this module, and mixing is the client's

    shape = tuple(template.probs.shape[1:])
    tissue = subject_tissue(template, subject)
    if lesions is not None:
        tissue = with_lesions(tissue, lesions)
    coords = scan_sampling_coords(template, subject, scan)
    probs = _sample_field(tissue[None], _to_norm(coords, shape))  # type: ignore[arg-type]
    labels = hard_labels(probs)  # probs.argmax(0), ten times faster
    extra = () if lesions is None else (lesion_mean,)
    means = torch.tensor((0.0, *scan.tissue_means, *extra)).view(-1, 1, 1, 1)
    image = (probs * means).sum(0) * _bias_field(scan, shape)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(scan.seed * 32452843 + 7)
    n1 = torch.randn(image.shape, generator=gen) * scan.noise_sigma
    n2 = torch.randn(image.shape, generator=gen) * scan.noise_sigma
    image = torch.sqrt((image + n1) ** 2 + n2**2)  # Rician magnitude noise
    image = torch.where(probs[0] >= 0.5, torch.zeros_like(image), image)  # skull-stripped
    return image.numpy().astype(np.float32), labels.numpy()


# ---------------------------------------------------------------------------------------
# Raw heads: a phantom brain in a skull and neck, scanned on another grid (for the raw-scan path)
# ---------------------------------------------------------------------------------------
AXES_PIR = ((1, -1.0), (2, -1.0), (0, 1.0))
"""A scanner grid's voxel axes as (world axis, sign): posterior, inferior, right (not RAS)."""
RAW_SPACING = (1.2, 1.0, 1.5)
"""Anisotropic voxel sizes (mm) of :func:`make_raw_head`'s scanner grid."""


def random_head_pose(rng: np.random.Generator, max_deg: float = 15.0, max_scale: float = 0.10,
                     max_shift: float = 15.0) -> np.ndarray:
    """4x4 MNI -> scanner (RAS mm): rotation, per-axis scaling, shift, and a scanner offset."""
    out = np.eye(4)
    out[:3, :3] = rotation_matrix(tuple(rng.uniform(-max_deg, max_deg, 3))) @ np.diag(
        rng.uniform(1 - max_scale, 1 + max_scale, 3)
    )
    out[:3, 3] = rng.uniform(-max_shift, max_shift, 3) + np.array([4.0, 30.0, -20.0])
    return out


def _shell(d: np.ndarray) -> np.ndarray:
    """T1-like intensities at distance d (mm) outside the brain: dura, bone, diploe, scalp."""
    out = np.zeros_like(d)
    for lo, hi, value in ((0, 2, 0.08), (2, 4, 0.04), (4, 6, 0.35), (6, 8, 0.04), (8, 13, 0.8)):
        out[(d > lo) & (d <= hi)] = value
    return out


def _neck(q: np.ndarray) -> np.ndarray:
    """Muscle with a fatty rim below the brain, at MNI points q (3, N)."""
    r = np.sqrt((q[0] / 42.0) ** 2 + ((q[1] + 20.0) / 48.0) ** 2)
    below = q[2] < -62.0
    return np.where(below & (r <= 1.0), 0.5, np.where(below & (r <= 1.15), 0.85, 0.0))


def make_raw_head(
    image: np.ndarray,
    labels: np.ndarray,
    pose: np.ndarray,
    *,
    axes: tuple[tuple[int, float], ...] = AXES_PIR,
    spacing: tuple[float, float, float] = RAW_SPACING,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom brain (on the model grid) placed in a head and scanned on another grid.

    Args:
        image, labels: Phantom on the model grid (MNI).
        pose: 4x4 MNI -> scanner world (RAS mm) of the head.
        axes: For each voxel axis, (world axis, sign) of the scanner grid.
        spacing: Voxel size (mm) of each voxel axis.
        seed: Of the scanner's noise (Rician, sigma 0.02 in the phantom's intensity units).

    Returns:
        (int16 scan, uint8 true labels, scan affine) on the scanner grid.
    """
    a_model = load_template().affine
    # head box in MNI: the model grid, 18 mm around it and 90 mm of neck below
    lo = a_model[:3, 3] - np.array([18, 18, 90])
    hi = a_model[:3, 3] + np.array(GRID_SHAPE) - 1 + 18
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
    world = pose[:3, :3] @ corners + pose[:3, 3:4]
    w_lo, w_hi = world.min(1), world.max(1)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    shape = []
    for i, ((w, sign), s) in enumerate(zip(axes, spacing)):
        affine[w, i] = sign * s
        affine[w, 3] = w_lo[w] if sign > 0 else w_hi[w]
        shape.append(int(math.ceil((w_hi[w] - w_lo[w]) / s)) + 1)

    # each scanner voxel -> MNI point q -> model voxel / padded-distance voxel
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    to_mni = np.linalg.solve(pose, affine)
    q = to_mni[:3, :3].astype(np.float32) @ idx + to_mni[:3, 3:4].astype(np.float32)
    del idx
    to_voxel = np.linalg.inv(a_model).astype(np.float32)
    u = to_voxel[:3, :3] @ q + to_voxel[:3, 3:4]
    pad = 16
    brain = ndimage.binary_closing(labels > 0, iterations=2)
    dist = ndimage.distance_transform_edt(~np.pad(brain, pad)).astype(np.float32)
    head = ndimage.map_coordinates(image, u, order=1, cval=0.0)
    truth = ndimage.map_coordinates(labels, u, order=0, cval=0).astype(np.uint8)
    d = ndimage.map_coordinates(dist, u + pad, order=1, cval=99.0)
    tissue = _shell(d)
    head = head + np.where(head > 0, 0.0, tissue)
    head = head + np.where((head > 0) | (d <= 13), 0.0, _neck(q))
    rng = np.random.default_rng(seed)
    sigma = 0.02
    head = np.sqrt((head + rng.normal(0, sigma, head.shape)) ** 2 + rng.normal(0, sigma, head.shape) ** 2)
    scan = np.round(head * 1000).astype(np.int16).reshape(shape)
    return scan, truth.reshape(shape), affine


# ---------------------------------------------------------------------------------------
# Cohort
# ---------------------------------------------------------------------------------------


def subject_id(index: int) -> str:
    """Folder-safe id of phantom subject ``index``."""
    return f"sub-{index:03d}"


def scan_dir_name(subject: str, scan: int) -> str:
    """``<subject>_<scan>`` folder name of the cohort layout."""
    return f"{subject}_scan-{scan}"


def split_subjects(subjects: list[str], test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Split subject ids into train/test; a subject is never on both sides."""
    rng = np.random.default_rng([seed, 3])
    order = list(rng.permutation(len(subjects)))
    n_test = max(1, int(round(len(subjects) * test_fraction)))
    test = sorted(subjects[i] for i in order[:n_test])
    train = sorted(subjects[i] for i in order[n_test:])
    return {"train": train, "test": test}


def split_keeping_earlier_sides(earlier: dict, subjects: list[str], test_fraction: float,
                                seed: int) -> dict[str, list[str]]:
    """:func:`split_subjects`, except on a rerun: the subjects of ``earlier`` (the folder's split.json) keep their
    sides when it was drawn with this ``test_fraction`` (or does not record one) and ``seed``, and new subjects alone
    are drawn to bring the test side to the fraction's share (one subject more would otherwise move test subjects
    into training, where weights trained before would be scored on scans they trained on). A fresh draw without an
    earlier split, when the fraction or seed changed, or when keeping the sides would leave one empty."""
    fresh = split_subjects(subjects, test_fraction, seed)
    if earlier.get("test_fraction", test_fraction) != test_fraction or earlier.get("seed", seed) != seed:
        return fresh
    sides = {s: side for side in ("train", "test") for s in earlier.get(side) or () if s in subjects}
    if not sides:
        return fresh
    new = sorted(s for s in subjects if s not in sides)
    test = [s for s in subjects if sides.get(s) == "test"]
    wanted = max(1, int(round(len(subjects) * test_fraction))) - len(test)
    order = np.random.default_rng([seed, 3, len(subjects)]).permutation(len(new))
    test += [new[i] for i in order[: max(0, wanted)]]
    train = sorted(s for s in subjects if s not in set(test))
    return {"train": train, "test": sorted(test)} if train and test else fresh


def moved_subjects(earlier: dict, split: dict[str, list[str]]) -> list[str]:
    """The subjects on the other side of ``split`` than in ``earlier`` (an earlier split.json), sorted."""
    return sorted(s for side, other in (("train", "test"), ("test", "train"))
                  for s in set(earlier.get(side) or ()) & set(split[other]))


DEFAULT_COHORT = Path("data/phantoms")
"""The default cohort folder of training and evaluation (relative to the working directory)."""


def ensure_default_cohort(root: str | Path) -> Path:
    """``root``, after generating the default phantom cohort there if ``root`` is
    :data:`DEFAULT_COHORT` and holds none yet (deterministic, about 3 s a scan on 2 cores); another
    folder is left to :func:`mixdemo.data.load_cohort` to read or reject."""
    root = Path(root)
    if root == DEFAULT_COHORT and not (root / "split.json").exists():
        print(f"generating the phantom cohort in {root} (once, a few minutes) ...", flush=True)
        generate_cohort(root, progress=True)
    return root


def generate_cohort(
    root: str | Path,
    *,
    n_subjects: int = 24,
    n_scans: int = 2,
    seed: int = 0,
    test_fraction: float = 0.25,
    progress: bool = False,
    jobs: int = 1,
    lesions: int = 0,
) -> Path:
    """Write ``<root>/<subject>_<scan>/t1.nii.gz`` + ``seg.nii.gz`` and ``<root>/split.json``.

    Deterministic from ``seed``: each scan has its own seed, so ``jobs`` worker processes (one torch
    thread each) write the same files as one. Existing scans with the same parameters are kept, and so are the
    sides of the subjects of an earlier split.json (:func:`split_keeping_earlier_sides`).
    ``lesions`` > 0 gives each subject that many white-matter lesions (:func:`lesion_map`), a fifth class
    named in split.json: a cohort with its own classes, as a user's would be (not the default cohort).
    """
    if n_subjects < 2 or n_scans < 1:
        raise ValueError("A cohort needs at least 2 subjects and 1 scan per subject.")
    if jobs < 1:
        raise ValueError("jobs must be at least 1.")
    if n_scans > MAX_SCANS:
        raise ValueError(f"At most {MAX_SCANS} scans per subject (more would repeat another subject's acquisitions).")
    if lesions < 0:
        raise ValueError("lesions must be 0 or more.")
    if seed < 0:
        raise ValueError("seed must be 0 or more.")
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must lie between 0 and 1 (both excluded).")
    root = Path(root)
    earlier = _split_json(root)
    _check_same_cohort(earlier, seed, lesions)
    subjects = [subject_id(i) for i in range(n_subjects)]
    split = split_keeping_earlier_sides(earlier, subjects, test_fraction, seed)
    if not split["train"]:
        raise ValueError(f"A test fraction of {test_fraction} leaves none of the {n_subjects} subjects for training.")
    if moved := moved_subjects(earlier, split):
        print(f"warning: the split is drawn anew: {', '.join(moved)} changed sides since the folder's earlier "
              "split.json; weights trained on that split would be scored on scans they trained on.", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    pending = [(i, s) for i in range(n_subjects) for s in range(n_scans)
               if not _scan_written(root / scan_dir_name(subjects[i], s))]
    if jobs == 1 or len(pending) < 2:
        done = (write_scan(root, i, s, seed, lesions) for i, s in pending)
        _report(done, progress)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child of a process whose OpenMP pool has started can hang
        with ProcessPoolExecutor(min(jobs, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            _report(pool.map(write_scan, *zip(*[(root, i, s, seed, lesions) for i, s in pending])), progress)
    meta = {
        "dataset": DATASET,
        "note": "Synthetic phantoms from the MNI152 2009a template (nilearn); no patient data.",
        "seed": seed,
        "test_fraction": test_fraction,
        "n_scans": n_scans,
        **({"lesions_per_subject": lesions} if lesions else {}),
        "classes": [*CLASS_NAMES, *([LESION_CLASS] if lesions else [])],
        **split,
    }
    (root / "split.json").write_text(json.dumps(meta, indent=2))
    return root


def _split_json(root: Path) -> dict:
    """``root``'s split.json ({} if there is none, or none that reads as an object)."""
    try:
        meta = json.loads((root / "split.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_same_cohort(meta: dict, seed: int, lesions: int) -> None:
    """A ValueError if ``meta`` (the folder's split.json, {} without one) is of a cohort made with another seed or
    lesion count: its scans, kept, would be mixed with this one's under one split.json."""
    if not meta:
        return
    made = (meta.get("seed", seed), meta.get("lesions_per_subject", 0))
    if made != (seed, lesions):
        raise ValueError(f"The folder holds a phantom cohort made with seed {made[0]} and {made[1]} lesions per "
                         f"subject, not seed {seed} and {lesions}: write this one to a new folder.")


def _scan_written(folder: Path) -> bool:
    return (folder / "t1.nii.gz").exists() and (folder / "seg.nii.gz").exists()


def _report(done: Iterable[tuple[str, float]], progress: bool) -> None:
    """Drain ``done`` ((folder name, seconds) pairs), printing each when ``progress``."""
    for name, seconds in done:
        if progress:
            print(f"{name}: {seconds:.1f} s", flush=True)


def write_scan(root: Path, subject_index: int, scan: int, seed: int, lesions: int = 0) -> tuple[str, float]:
    """Synthesise scan ``scan`` of subject ``subject_index`` of the cohort of ``seed`` into ``root`` (with
    ``lesions`` white-matter lesions); returns (its folder name, seconds taken)."""
    from mixdemo.io import save_volume

    t0 = time.perf_counter()
    template = load_template()
    base = seed * 100003 + subject_index
    subject = sample_subject(base)
    lesion_args = {}
    if lesions:
        lesion_mean = float(np.random.default_rng([base * MAX_SCANS + scan, 4]).uniform(*LESION_MEAN))
        lesion_args = {"lesions": lesion_map(template, subject, lesions), "lesion_mean": lesion_mean}
    image, labels = synthesize_scan(template, subject, sample_scan(base * MAX_SCANS + scan), **lesion_args)
    folder = Path(root) / scan_dir_name(subject_id(subject_index), scan)
    folder.mkdir(exist_ok=True)
    save_volume(labels, template.affine, folder / "seg.nii.gz", dtype=np.uint8)
    save_volume(image, template.affine, folder / "t1.nii.gz", dtype=np.float32)
    return folder.name, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    """CLI: write a phantom cohort folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="cohort folder to write")
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--scans", type=int, default=2, help="scans per subject (test-retest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--jobs", type=count(1), default=1,
                        help="worker processes, one scan each at a time (same files as one process)")
    parser.add_argument("--figure", default=None, help="also draw a PNG of three subjects (test-retest of the first)")
    parser.add_argument("--lesions", type=count(0), default=0,
                        help="white-matter lesions per subject, a fifth class 'lesion' (default 0: the default "
                             "cohort's four classes)")
    args = parser.parse_args(argv)
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out: the folder could not be made ({exc.strerror or type(exc).__name__})")
    try:
        root = generate_cohort(
            args.out,
            n_subjects=args.subjects,
            n_scans=args.scans,
            seed=args.seed,
            test_fraction=args.test_fraction,
            progress=True,
            jobs=args.jobs,
            lesions=args.lesions,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {root}")
    if args.figure:
        print(f"wrote {draw_cohort_figure(root, args.figure)}")


def draw_cohort_figure(root: str | Path, path: str | Path) -> Path:
    """PNG of both scans of the first subject and the first scan of two others."""
    from mixdemo.data import load_cohort, load_volumes
    from mixdemo.figures import plot_cohort_png

    records = load_cohort(root).records
    subjects = sorted({r.subject for r in records})
    chosen = [r for r in records if r.subject == subjects[0]][:2]
    chosen += [next(r for r in records if r.subject == s) for s in subjects[1:3]]
    vols = load_volumes(chosen)
    return plot_cohort_png([v.image for v in vols], [v.labels for v in vols], [v.name for v in vols], Path(path))


if __name__ == "__main__":
    main()
