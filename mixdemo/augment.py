"""Training augmentations for real inputs: residual misregistration and intensity differences.

Scans that reach the models through :mod:`mixdemo.preprocess` are affinely registered to
MNI152, so they keep a small residual misalignment (about 0.3-1 mm, a degree or two,
a few per cent of scale, and the subject's own non-linear anatomy), and their
contrast, bias field and noise differ from the phantoms'. These augmentations make the
models tolerate both.

TorchIO style: :func:`sample_augmentation` only *draws* parameters; :func:`augment_volume`
and :func:`augment_patch` are deterministic given them, and apply the same geometry to the
image (trilinear) and to the labels (nearest neighbour), so labels are never blended.

Typical use in a patch sampler (the target only: the client's references are exact)::

    params = sample_augmentation(rng)
    x_t, y_t = augment_patch(volume.image, volume.labels, corner, patch_size, params)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["AugmentParams", "sample_augmentation", "augment_volume", "augment_patch"]

_BIAS_CONTROL = 4  # control points per axis of the smooth bias field


@dataclass(frozen=True)
class AugmentParams:
    """One draw of augmentation parameters (all deterministic once drawn).

    Attributes:
        rotation_deg: Rotations about x, y, z (degrees), applied about the centre.
        scale: Scaling per axis (1 = none).
        shift_mm: Translation per axis (mm = voxels on the 1 mm grid).
        gamma: Intensity exponent, ``x -> x ** gamma`` (1 = none).
        bias_strength: Multiplicative bias field ``exp(bias_strength * f)``, f in [-1, 1].
        noise_sigma: Standard deviation of Gaussian noise added inside the brain.
        seed: Seed of the bias field and of the noise.
    """

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gamma: float = 1.0
    bias_strength: float = 0.0
    noise_sigma: float = 0.0
    seed: int = 0

    @property
    def is_spatial_identity(self) -> bool:
        """True when the geometry is unchanged."""
        return (
            all(r == 0 for r in self.rotation_deg)
            and all(s == 1 for s in self.scale)
            and all(t == 0 for t in self.shift_mm)
        )


def sample_augmentation(
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 3.0,
    max_scale: float = 0.03,
    max_shift_mm: float = 2.0,
    gamma_range: tuple[float, float] = (0.8, 1.25),
    max_bias: float = 0.15,
    max_noise: float = 0.02,
) -> AugmentParams:
    """Draw augmentation parameters.

    Args:
        rng: Random generator (the only source of randomness).
        max_rotation_deg: Rotation about each axis ~ U(-max, max).
        max_scale: Scale per axis ~ U(1 - max, 1 + max).
        max_shift_mm: Shift per axis ~ U(-max, max).
        gamma_range: Gamma is log-uniform in this range.
        max_bias: Bias-field strength ~ U(0, max).
        max_noise: Noise sigma ~ U(0, max) (images are normalised to [0, 1]).

    Returns:
        The parameters for :func:`augment_volume` / :func:`augment_patch`.
    """
    lo, hi = gamma_range
    if not 0 < lo <= hi:
        raise ValueError(f"gamma_range must be positive and increasing; got {gamma_range}.")
    return AugmentParams(
        rotation_deg=tuple(float(v) for v in rng.uniform(-max_rotation_deg, max_rotation_deg, 3)),
        scale=tuple(float(v) for v in rng.uniform(1 - max_scale, 1 + max_scale, 3)),
        shift_mm=tuple(float(v) for v in rng.uniform(-max_shift_mm, max_shift_mm, 3)),
        gamma=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
        bias_strength=float(rng.uniform(0, max_bias)),
        noise_sigma=float(rng.uniform(0, max_noise)),
        seed=int(rng.integers(2**31)),
    )


def augment_volume(
    image: np.ndarray,
    labels: np.ndarray,
    params: AugmentParams,
    *,
    centre: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``params`` to a whole volume (same shape out).

    Args:
        image: float (X, Y, Z) image, normalised to [0, 1], background 0.
        labels: Integer (X, Y, Z) labels on the same grid.
        params: From :func:`sample_augmentation`.
        centre: Voxel about which to rotate and scale (default: the volume's centre).

    Returns:
        (float32 image in [0, 1], labels of the input dtype).
    """
    shape = tuple(image.shape)
    _check_pair(image, labels)
    if centre is None:
        centre = tuple((n - 1) / 2.0 for n in shape)
    coords = np.indices(shape, dtype=np.float32).reshape(3, -1)
    return _apply(image, labels, coords, shape, params, np.asarray(centre, dtype=np.float64))


def augment_patch(
    image: np.ndarray,
    labels: np.ndarray,
    corner: tuple[int, int, int],
    size: int,
    params: AugmentParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``size``³ patch at ``corner`` through the augmentation (about the patch centre).

    Samples the whole volume, so the patch has no empty borders where the transform
    reaches outside it. Equal to ``augment_volume(..., centre=patch centre)`` cut at
    ``corner``, at the cost of the patch only.

    Returns:
        (float32 image patch, labels patch), each ``(size, size, size)``.
    """
    _check_pair(image, labels)
    corner_arr = np.asarray(corner, dtype=np.float32)
    coords = np.indices((size,) * 3, dtype=np.float32).reshape(3, -1) + corner_arr[:, None]
    centre = corner_arr.astype(np.float64) + (size - 1) / 2.0
    return _apply(image, labels, coords, (size,) * 3, params, centre)


# --------------------------------------------------------------------------- helpers
def _check_pair(image: np.ndarray, labels: np.ndarray) -> None:
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(
            f"Image and labels must be 3D volumes of one shape; got {image.shape} and {labels.shape}."
        )
    if labels.dtype.kind not in "iub":
        raise ValueError("Labels must be an integer array.")


def _apply(
    image: np.ndarray,
    labels: np.ndarray,
    coords: np.ndarray,
    out_shape: tuple[int, ...],
    params: AugmentParams,
    centre: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample image/labels at the augmented positions of ``coords`` (3, N), then intensities."""
    if params.is_spatial_identity:
        src = coords
    else:
        # output voxel p sees input voxel A^-1 (p - c - t) + c: the content moves by A, t
        forward = rotation_matrix(params.rotation_deg) @ np.diag(params.scale)
        inverse = np.linalg.inv(forward).astype(np.float32)
        offset = (centre + np.asarray(params.shift_mm))[:, None].astype(np.float32)
        src = inverse @ (coords - offset) + centre[:, None].astype(np.float32)
    out_img = ndimage.map_coordinates(np.asarray(image, dtype=np.float32), src, order=1, cval=0.0)
    out_lab = ndimage.map_coordinates(labels, src, order=0, cval=0).astype(labels.dtype)
    out_img = _intensity(out_img, src, image.shape, params)
    return out_img.reshape(out_shape), out_lab.reshape(out_shape)


def _intensity(
    values: np.ndarray, src: np.ndarray, shape: tuple[int, ...], params: AugmentParams
) -> np.ndarray:
    """Gamma, bias field (a function of the source position) and noise inside the brain."""
    inside = values > 0
    out = np.clip(values, 0, 1)
    if params.gamma != 1:
        out = out**params.gamma
    if params.bias_strength:
        out = out * np.exp(params.bias_strength * _bias_field(src, shape, params.seed))
    if params.noise_sigma:
        rng = np.random.default_rng([params.seed, 1])
        out = out + rng.normal(0, params.noise_sigma, out.shape).astype(np.float32)
    return np.where(inside, np.clip(out, 0, 1), 0).astype(np.float32)


def _bias_field(src: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth field in [-1, 1] from a seeded 4x4x4 control grid, cubic-spline interpolated."""
    control = np.random.default_rng([seed, 2]).uniform(-1, 1, (_BIAS_CONTROL,) * 3)
    scale = (_BIAS_CONTROL - 1) / np.maximum(np.asarray(shape, dtype=np.float32) - 1, 1)
    field = ndimage.map_coordinates(control, src * scale[:, None], order=3, mode="nearest")
    return np.clip(field, -1, 1).astype(np.float32)


def rotation_matrix(deg: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation from Euler angles in degrees (x, then y, then z)."""
    ax, ay, az = (math.radians(d) for d in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx
