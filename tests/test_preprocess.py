"""Preprocessing of raw T1 scans: registration to MNI, skull stripping, labels carried back.

The main test is issue 9's acceptance test: a phantom brain is given a known random
affine, a skull-like shell and a neck, anisotropic voxels and a non-RAS orientation, and
saved as an int16 NIfTI as a scanner would; the whole pipeline runs on it, an oracle
segments it on the model grid, and the segmentation comes back onto the file's grid with
Dice >= 0.85 against the truth carried there by the known affine.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mixdemo import io as mio
from mixdemo import phantoms
from mixdemo import preprocess as pp

GRID = phantoms.GRID_SHAPE
AXES_PIR = ((1, -1.0), (2, -1.0), (0, 1.0))  # voxel axis -> (world axis, sign): P, I, R
SPACING = (1.2, 1.0, 1.5)
THREADS = 2


# --------------------------------------------------------------------------- synthetic heads
def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = (math.radians(d) for d in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_head_pose(rng: np.random.Generator, max_deg: float = 15.0, max_scale: float = 0.10,
                     max_shift: float = 15.0) -> np.ndarray:
    """4x4 MNI -> scanner (RAS mm): rotation, per-axis scaling, shift, and a scanner offset."""
    out = np.eye(4)
    out[:3, :3] = _rotation(tuple(rng.uniform(-max_deg, max_deg, 3))) @ np.diag(
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
    axes=AXES_PIR,
    spacing=SPACING,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom brain (on the model grid) placed in a head and scanned on another grid.

    Args:
        image, labels: Phantom on the model grid (MNI).
        pose: 4x4 MNI -> scanner world (RAS mm) of the head.
        axes: For each voxel axis, (world axis, sign) of the scanner grid.
        spacing: Voxel size (mm) of each voxel axis.

    Returns:
        (int16 scan, uint8 true labels, scan affine) on the scanner grid.
    """
    a_model = phantoms.load_template().affine
    # head box in MNI: the model grid, 18 mm around it and 90 mm of neck below
    lo = a_model[:3, 3] - np.array([18, 18, 90])
    hi = a_model[:3, 3] + np.array(GRID) - 1 + 18
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
    u = np.linalg.inv(a_model)[:3, :3].astype(np.float32) @ q + np.linalg.inv(a_model)[:3, 3:4].astype(np.float32)
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


def template_subject(seed: int) -> phantoms.SubjectParams:
    """A phantom subject with the template's size and pose (only a small smooth warp)."""
    return replace(phantoms.sample_subject(seed), scale=(1.0, 1.0, 1.0), rotation_deg=(0.0, 0.0, 0.0), warp_mm=2.0)


def still_scan(seed: int) -> phantoms.ScanParams:
    """Acquisition parameters without head motion (contrast, bias and noise kept)."""
    return replace(phantoms.sample_scan(seed), motion_deg=(0.0, 0.0, 0.0), motion_mm=(0.0, 0.0, 0.0))


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))
