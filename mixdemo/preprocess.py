"""Bring a raw T1 scan into the models' space, and segmentations back onto the scan.

The models work on skull-stripped T1 brains in MNI152 space on the common 1 mm grid
(:data:`mixdemo.phantoms.GRID_SHAPE`, affine ``phantoms.load_template().affine``), as the
paper did for PPMI. A scan straight off a scanner is in native space, in any orientation
and voxel size, with skull and neck. :func:`to_model_space` does, on the client:

1. reorient to RAS+ and resample to 1 mm (already done by :func:`mixdemo.io.load_scan`);
2. check whether the scan is already on the model grid and skull-stripped
   (:func:`check_model_space`); if so, registration is skipped;
3. otherwise an initial alignment of the centres of mass
   (``sitk.CenteredTransformInitializer``), then a multi-resolution affine registration
   of the scan to the MNI152 2009a T1 template shipped with nilearn (Mattes mutual
   information inside the dilated template brain mask, SimpleITK's gradient-descent
   optimiser, shrink 4-2-1 with smoothing, a random fraction of voxels per level);
4. resampling of the scan onto the model grid;
5. brain extraction: the template's brain mask, refined on the registered scan
   (dark voxels of the rim dropped, largest connected component, holes filled);
6. intensity normalisation with :func:`mixdemo.io.normalize_intensity`, as in training.

The quality of the result is measured by ``similarity``: the Pearson correlation between
the registered scan and the template T1 inside the template brain mask. Below
:data:`SIMILARITY_WARNING` the result carries a ``warning`` instead of pretending all is well.

All geometry is kept as 4x4 matrices in RAS+ millimetres (the NIfTI convention);
SimpleITK (LPS+) is used only inside the registration. Segmentations on the model grid
are carried back with :func:`labels_to_scan_grid`, :func:`labels_to_source_grid` or
:func:`save_segmentation` (nearest neighbour, one resampling step onto the file's grid).

Nothing here logs voxel data or file names.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from mixdemo import io as mio
from mixdemo.io import Scan, ScanError
from mixdemo.phantoms import GRID_SHAPE, load_template

__all__ = [
    "SIMILARITY_WARNING",
    "MODEL_SPACE_CORRELATION",
    "RegistrationError",
    "ModelSpaceCheck",
    "Prepared",
    "ProgressFn",
    "check_model_space",
    "is_model_space",
    "to_model_space",
    "labels_to_scan_grid",
    "labels_to_source_grid",
    "save_segmentation",
]

ProgressFn = Callable[[float, str], None]
"""``progress(fraction in [0, 1], message)``; messages never contain data or file names."""

SIMILARITY_WARNING = 0.5
"""Correlation with the template below which a registration is flagged as poor.

Calibrated in ``tests/test_preprocess.py``: good registrations of phantom heads (skull,
neck, 15° rotations, ±10 % scaling, anisotropic voxels) reach about 0.9; an upside-down
brain registered without initialiser, or a noise volume, stay below about 0.3.
"""
MODEL_SPACE_CORRELATION = 0.6
"""Correlation with the template, on the model grid without registration, above which a
skull-stripped scan counts as already in MNI space (phantoms: about 0.8-0.95)."""
MODEL_SPACE_OUTSIDE = 0.01
"""Largest fraction of bright voxels (> 10 % of the brain's median) allowed outside the
dilated template brain mask for a scan to count as skull-stripped."""
COVERAGE_WARNING = 0.95
"""Smallest fraction of the template brain that must fall inside the scan's field of view."""

_MASK_DILATION_MM = 4  # fixed-image mask for the metric: brain + this rim
_RIM_MM = 3  # brain-mask refinement works in a band of this half-width around the template mask
_RIM_DARK_FRACTION = 0.12  # rim voxels darker than this x the brain's median are not brain
_SAMPLING_PER_LEVEL = (0.20, 0.04, 0.01)  # fraction of fixed voxels sampled at shrink 4, 2, 1
_SHRINK = (4, 2, 1)
_SMOOTH_MM = (2.0, 1.0, 0.0)
_ITERATIONS = 100
_SEED = 20240  # fixed sampling seed: identical input, identical result
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
_INITIALIZERS = ("moments", "geometry", "none")


# --------------------------------------------------------------------------- types
class RegistrationError(ScanError):
    """The scan could not be brought into the model space."""


@dataclass(frozen=True)
class ModelSpaceCheck:
    """Whether a scan is already skull-stripped on the model grid in MNI space.

    Attributes:
        on_grid: ``scan.data`` has the model grid's shape and affine (within 0.01 mm).
        coverage: Fraction of the template brain inside the scan's field of view.
        correlation: Pearson correlation with the template T1 inside the brain mask,
            with the scan taken as it is (no registration).
        outside_fraction: Fraction of voxels outside the dilated template brain mask
            brighter than 10 % of the brain's median (about 0 when skull-stripped).
        ok: All of the above say "already in model space".
    """

    on_grid: bool
    coverage: float
    correlation: float
    outside_fraction: float
    ok: bool


@dataclass(frozen=True, eq=False)
class Prepared:
    """A scan in the models' space, and what is needed to map results back.

    Attributes:
        image: float32 ``GRID_SHAPE`` volume, skull-stripped and normalised to [0, 1]
            with :func:`mixdemo.io.normalize_intensity` (what the models were trained on).
        brain_mask: bool ``GRID_SHAPE`` brain mask on the model grid.
        affine: 4x4 voxel-to-MNI (RAS mm) affine of the model grid.
        model_to_input: 4x4 RAS mm matrix mapping a point in MNI space to the same
            anatomical point in the scan's world space (identity when not registered).
        similarity: Pearson correlation of the registered scan with the template T1
            inside the template brain mask (1 = identical up to contrast).
        metric_value: Final Mattes mutual information of the registration (negative;
            lower is better), ``None`` when registration was skipped.
        registered: False when the scan was already in model space.
        warning: A plain sentence when the result should not be trusted, else ``None``.
        seconds: Wall time of the registration step (0 when skipped).
    """

    image: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    model_to_input: np.ndarray
    similarity: float
    metric_value: float | None
    registered: bool
    warning: str | None
    seconds: float

    @property
    def transform(self) -> sitk.AffineTransform:
        """The same mapping as ``model_to_input`` as a SimpleITK transform (LPS mm).

        It maps points of the model grid's physical space to the input's physical space,
        i.e. it is what ``sitk.Resample(input_image, model_grid_image, transform)`` needs.
        """
        lps = _LPS @ self.model_to_input @ _LPS
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(lps[:3, :3].ravel().tolist())
        tx.SetTranslation(lps[:3, 3].tolist())
        return tx


@dataclass(frozen=True, eq=False)
class _Reference:
    """The template on the model grid."""

    t1: np.ndarray  # float32, skull-stripped MNI152 2009a T1
    brain: np.ndarray  # bool, template brain (background probability < 0.5)
    metric_mask: np.ndarray  # bool, brain dilated by _MASK_DILATION_MM
    affine: np.ndarray


# --------------------------------------------------------------------------- public API
def check_model_space(scan: Scan) -> ModelSpaceCheck:
    """Measure whether ``scan`` is already a skull-stripped brain in MNI model space.

    The scan is placed on the model grid through its own world coordinates (no
    registration); it is in model space if the template brain is fully inside its field
    of view, it correlates with the template T1, and it is dark outside the brain.

    Args:
        scan: A loaded scan (normalised or not).

    Returns:
        The measurements and the verdict.
    """
    ref = _reference()
    on_grid = scan.data.shape == GRID_SHAPE and np.allclose(scan.affine, ref.affine, atol=1e-2)
    image, inside = _resample_to_model_grid(scan, np.eye(4))
    coverage = float(inside[ref.brain].mean())
    correlation = _correlation(image, ref.t1, ref.brain & inside)
    brain_values = image[ref.brain & inside]
    median = float(np.median(brain_values)) if brain_values.size else 0.0
    outside = inside & ~_dilate(ref.brain, 2 * _MASK_DILATION_MM)
    outside_fraction = float((image[outside] > 0.1 * median).mean()) if outside.any() else 0.0
    ok = (
        coverage >= COVERAGE_WARNING
        and correlation >= MODEL_SPACE_CORRELATION
        and outside_fraction <= MODEL_SPACE_OUTSIDE
        and median > 0
    )
    return ModelSpaceCheck(
        on_grid=bool(on_grid),
        coverage=coverage,
        correlation=correlation,
        outside_fraction=outside_fraction,
        ok=bool(ok),
    )


def is_model_space(scan: Scan) -> bool:
    """True if ``scan`` is already skull-stripped in MNI model space (registration skipped)."""
    return check_model_space(scan).ok


def to_model_space(
    scan_or_path: Scan | str | os.PathLike,
    *,
    register: bool | None = None,
    initializer: str = "moments",
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> Prepared:
    """Bring a T1 scan into the models' space: register, resample, skull-strip, normalise.

    Args:
        scan_or_path: A :class:`mixdemo.io.Scan` (best loaded with ``normalize=False``;
            any orientation or voxel size, skull and neck allowed) or a NIfTI path.
        register: ``None`` decides with :func:`check_model_space`; ``True`` always
            registers; ``False`` never does (the scan is taken to be in MNI space).
        initializer: Initial alignment before registration: ``"moments"`` (centres of
            mass), ``"geometry"`` (centres of the volumes) or ``"none"``.
        threads: Threads for SimpleITK (``None``: SimpleITK's global default).
        progress: Optional ``progress(fraction, message)`` callback.

    Returns:
        The :class:`Prepared` scan. ``warning`` is set when the registration looks poor.

    Raises:
        ScanError: The file cannot be loaded (see :func:`mixdemo.io.load_scan`).
        RegistrationError: The registration failed outright (for example, the image
            has no structure to align) or nothing of the brain is left afterwards.
        ValueError: Unknown ``initializer``.
    """
    if initializer not in _INITIALIZERS:
        raise ValueError(f"initializer must be one of {', '.join(_INITIALIZERS)}; got {initializer!r}.")
    report = progress or (lambda fraction, message: None)
    if isinstance(scan_or_path, Scan):
        scan = scan_or_path
    else:
        report(0.0, "Loading the scan")
        scan = mio.load_scan(scan_or_path, normalize=False)
    report(0.02, "Loading the MNI152 template")
    ref = _reference()

    if register is None:
        report(0.04, "Checking whether the scan is already in MNI space")
        register = not check_model_space(scan).ok
    seconds, metric_value = 0.0, None
    if register:
        t0 = time.perf_counter()
        model_to_input, metric_value = _register(scan, ref, initializer, threads, report)
        seconds = time.perf_counter() - t0
    else:
        model_to_input = np.eye(4)

    report(0.88, "Resampling the scan onto the model grid")
    image, inside = _resample_to_model_grid(scan, model_to_input)
    similarity = _correlation(image, ref.t1, ref.brain & inside)
    coverage = float(inside[ref.brain].mean())

    report(0.93, "Extracting the brain")
    brain_mask = _brain_mask(image, ref) if register else _stripped_brain_mask(image, ref)
    if not brain_mask.any():
        raise RegistrationError(
            "No brain was found after registration: the image may not be a brain MRI."
        )
    stripped = np.where(brain_mask, np.maximum(image, 0), 0).astype(np.float32)
    try:
        normalised = mio.normalize_intensity(stripped)
    except ScanError as exc:
        raise RegistrationError(
            "The registered brain has no positive intensities: the image may not be a brain MRI."
        ) from exc
    report(1.0, "The scan is in model space")
    return Prepared(
        image=normalised,
        brain_mask=brain_mask,
        affine=ref.affine.copy(),
        model_to_input=model_to_input,
        similarity=similarity,
        metric_value=metric_value,
        registered=bool(register),
        warning=_quality_warning(similarity, coverage),
        seconds=seconds,
    )


def labels_to_scan_grid(labels: np.ndarray, prepared: Prepared, scan: Scan) -> np.ndarray:
    """Carry a label map from the model grid onto ``scan.data``'s grid (nearest neighbour).

    The result can be written with :func:`mixdemo.io.save_labels`; prefer
    :func:`save_segmentation`, which resamples only once.

    Args:
        labels: Integer labels (0-255) of shape ``GRID_SHAPE``.
        prepared: The result of :func:`to_model_space` for ``scan``.
        scan: The scan the labels belong to.

    Returns:
        uint8 labels of shape ``scan.data.shape``.
    """
    return _labels_to_grid(labels, prepared, scan.data.shape, scan.affine)


def labels_to_source_grid(labels: np.ndarray, prepared: Prepared, scan: Scan) -> np.ndarray:
    """Carry a label map from the model grid onto the input file's own grid (nearest).

    Args:
        labels: Integer labels (0-255) of shape ``GRID_SHAPE``.
        prepared: The result of :func:`to_model_space` for ``scan``.
        scan: The scan the labels belong to.

    Returns:
        uint8 labels of shape ``scan.source_shape``, aligned with ``scan.source_affine``.
    """
    return _labels_to_grid(labels, prepared, tuple(scan.source_shape), scan.source_affine)


def save_segmentation(
    labels: np.ndarray, prepared: Prepared, scan: Scan, path: str | os.PathLike
) -> None:
    """Write a model-grid label map as NIfTI on the input file's grid (shape and affine).

    The file overlays the uploaded scan exactly in any viewer.

    Args:
        labels: Integer labels (0-255) of shape ``GRID_SHAPE``.
        prepared: The result of :func:`to_model_space` for ``scan``.
        scan: The scan the labels belong to.
        path: Output ``.nii`` or ``.nii.gz`` file (written atomically).
    """
    out = labels_to_source_grid(labels, prepared, scan)
    mio.save_volume(out, scan.source_affine, path, dtype=np.uint8)


# --------------------------------------------------------------------------- template
@functools.lru_cache(maxsize=1)
def _reference() -> _Reference:
    """The MNI152 2009a T1 template and brain mask, cut to the model grid (cached)."""
    from nilearn import datasets  # imported lazily: nilearn is slow to import

    template = load_template()
    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = _cut(np.asarray(t1_img.get_fdata(), dtype=np.float32), np.asarray(t1_img.affine), template.affine)
    brain = (template.probs[0] < 0.5).numpy()
    return _Reference(
        t1=t1,
        brain=brain,
        metric_mask=_dilate(brain, _MASK_DILATION_MM),
        affine=np.array(template.affine, dtype=np.float64),
    )


def _cut(volume: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:
    """Cut (or zero-pad) a 1 mm volume onto the model grid; both grids must be aligned."""
    offset = np.linalg.solve(affine, grid_affine)
    start = np.round(offset[:3, 3]).astype(int)
    if not np.allclose(offset[:3, :3], np.eye(3), atol=1e-6) or not np.allclose(offset[:3, 3], start, atol=1e-3):
        raise RuntimeError("The template and the model grid are not aligned 1 mm grids.")
    out = np.zeros(GRID_SHAPE, dtype=np.float32)
    src, dst = [], []
    for s, n, size in zip(start, GRID_SHAPE, volume.shape):
        a, b = max(s, 0), min(s + n, size)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


# --------------------------------------------------------------------------- registration
def _register(
    scan: Scan,
    ref: _Reference,
    initializer: str,
    threads: int | None,
    report: ProgressFn,
) -> tuple[np.ndarray, float]:
    """Affine registration of ``scan`` to the template; returns (model_to_input RAS, metric)."""
    report(0.05, "Preparing the registration")
    fixed = _to_sitk(ref.t1, ref.affine)
    mask = _to_sitk(ref.metric_mask.astype(np.uint8), ref.affine)
    moving = _to_sitk(_clip_bright(scan.data), scan.affine)

    transform = sitk.AffineTransform(3)
    if initializer != "none":
        mode = (
            sitk.CenteredTransformInitializerFilter.MOMENTS
            if initializer == "moments"
            else sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
        transform = sitk.AffineTransform(sitk.CenteredTransformInitializer(fixed, moving, transform, mode))
    else:
        transform.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))

    method = _registration_method(mask, threads)
    method.SetInitialTransform(transform, inPlace=True)
    _track_progress(method, report, start=0.08, stop=0.86)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:  # ITK reports e.g. "all samples map outside the moving image"
        raise RegistrationError(
            "The scan could not be registered to the MNI template: it may not be a brain MRI, "
            "or too little of the brain is in the image."
        ) from exc
    return _LPS @ _affine_matrix(transform) @ _LPS, float(method.GetMetricValue())


def _registration_method(mask: sitk.Image, threads: int | None) -> sitk.ImageRegistrationMethod:
    """Mattes MI, random sampling inside the mask, gradient descent, shrink 4-2-1."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(list(_SAMPLING_PER_LEVEL), _SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(
        learningRate=1.0,
        numberOfIterations=_ITERATIONS,
        convergenceMinimumValue=1e-6,
        convergenceWindowSize=10,
        estimateLearningRate=method.EachIteration,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(_SHRINK))
    method.SetSmoothingSigmasPerLevel(list(_SMOOTH_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if threads is not None:
        method.SetNumberOfThreads(int(threads))
    return method


def _track_progress(method: sitk.ImageRegistrationMethod, report: ProgressFn, *, start: float, stop: float) -> None:
    """Report progress per resolution level and iteration."""
    levels = len(_SHRINK)
    span = (stop - start) / levels

    def on_iteration() -> None:
        level = method.GetCurrentLevel()
        it = min(method.GetOptimizerIteration(), _ITERATIONS)
        report(start + span * (level + it / _ITERATIONS), f"Registering to MNI152 (level {level + 1} of {levels})")

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)


def _affine_matrix(transform: sitk.AffineTransform) -> np.ndarray:
    """4x4 homogeneous matrix of an ITK affine: x' = A (x - c) + c + t."""
    a = np.array(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.array(transform.GetCenter(), dtype=np.float64)
    t = np.array(transform.GetTranslation(), dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = a
    out[:3, 3] = c + t - a @ c
    return out


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image (LPS) of a volume indexed (i, j, k) with a RAS voxel-to-world affine."""
    linear = affine[:3, :3]
    spacing = np.sqrt((linear**2).sum(axis=0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((_LPS[:3, :3] @ affine[:3, 3]).tolist())
    image.SetDirection((_LPS[:3, :3] @ linear / spacing).ravel().tolist())
    return image


def _clip_bright(data: np.ndarray) -> np.ndarray:
    """Float32 copy with negatives set to 0 and the brightest 0.5 % clipped (for the histogram)."""
    arr = np.maximum(np.asarray(data, dtype=np.float32), 0)
    positive = arr[arr > 0]
    if positive.size:
        arr = np.minimum(arr, np.float32(np.percentile(positive, 99.5)))
    return arr


# --------------------------------------------------------------------------- resampling
def _resample_to_model_grid(scan: Scan, model_to_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear resampling of ``scan.data`` onto the model grid; also the in-view mask."""
    ref = _reference()
    voxel_map = np.linalg.solve(scan.affine, model_to_input @ ref.affine)  # model voxel -> scan voxel
    image = ndimage.affine_transform(
        scan.data, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=GRID_SHAPE,
        order=1, mode="constant", cval=0.0,
    ).astype(np.float32)
    inside = _inside_view(voxel_map, scan.data.shape)
    return image, inside


def _inside_view(voxel_map: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Which model-grid voxels map inside a volume of ``shape`` (bool, GRID_SHAPE)."""
    idx = np.indices(GRID_SHAPE, dtype=np.float32).reshape(3, -1)
    mapped = voxel_map[:3, :3].astype(np.float32) @ idx + voxel_map[:3, 3:4].astype(np.float32)
    upper = np.array(shape, dtype=np.float32)[:, None] - 1
    return ((mapped >= -0.5) & (mapped <= upper + 0.5)).all(axis=0).reshape(GRID_SHAPE)


def _labels_to_grid(
    labels: np.ndarray,
    prepared: Prepared,
    shape: tuple[int, ...],
    affine: np.ndarray,
) -> np.ndarray:
    """Nearest-neighbour resampling of model-grid labels onto the grid (shape, affine)."""
    labels = np.asarray(labels)
    if labels.shape != GRID_SHAPE:
        raise ValueError(f"The label map has shape {labels.shape}; the model grid is {GRID_SHAPE}.")
    if labels.dtype.kind not in "iub":
        raise ValueError("Labels must be an integer array.")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise ValueError("Labels must lie between 0 and 255.")
    # target voxel -> target world -> MNI -> model voxel
    voxel_map = np.linalg.solve(prepared.affine, np.linalg.solve(prepared.model_to_input, affine))
    return ndimage.affine_transform(
        labels.astype(np.uint8), voxel_map[:3, :3], voxel_map[:3, 3], output_shape=tuple(shape),
        order=0, mode="constant", cval=0,
    )


# --------------------------------------------------------------------------- brain mask
def _brain_mask(image: np.ndarray, ref: _Reference) -> np.ndarray:
    """Template brain mask refined on the registered scan.

    Inside the template mask eroded by ``_RIM_MM`` everything is brain. In the band of
    ±``_RIM_MM`` around the template mask's edge, voxels darker than
    ``_RIM_DARK_FRACTION`` x the brain's median (bone, air) are dropped and the rest kept;
    then the largest connected component is kept and its holes filled. If the refinement
    loses more than a fifth of the template brain, the template mask is used as is.
    """
    core = _erode(ref.brain, _RIM_MM)
    band = _dilate(ref.brain, _RIM_MM) & ~core
    values = image[core]
    if not values.size or float(np.median(values)) <= 0:
        return ref.brain.copy()
    bright = image > _RIM_DARK_FRACTION * float(np.median(values))
    mask = core | (band & bright)
    mask = _largest_component(mask)
    mask = ndimage.binary_fill_holes(mask)
    if mask.sum() < 0.8 * ref.brain.sum():
        return ref.brain.copy()
    return mask


def _stripped_brain_mask(image: np.ndarray, ref: _Reference) -> np.ndarray:
    """Brain mask of a scan that is already skull-stripped: its non-zero voxels near the brain."""
    mask = (image > 0) & _dilate(ref.brain, 2 * _MASK_DILATION_MM)
    if not mask.any():
        return mask
    return ndimage.binary_fill_holes(_largest_component(mask))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _ball(radius_mm: int) -> np.ndarray:
    r = int(radius_mm)
    grid = np.indices((2 * r + 1,) * 3) - r
    return (grid**2).sum(axis=0) <= r * r


def _dilate(mask: np.ndarray, radius_mm: int) -> np.ndarray:
    """Dilation by a ball (the model grid is 1 mm), done via a distance transform."""
    return ndimage.distance_transform_edt(~mask) <= radius_mm


def _erode(mask: np.ndarray, radius_mm: int) -> np.ndarray:
    return ndimage.distance_transform_edt(mask) > radius_mm


# --------------------------------------------------------------------------- quality
def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` inside ``mask`` (0 if undefined)."""
    if mask.sum() < 2:
        return 0.0
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def _quality_warning(similarity: float, coverage: float) -> str | None:
    """A plain sentence when the registration result should not be trusted."""
    if similarity < SIMILARITY_WARNING:
        return (
            f"The registration to the MNI template looks poor (similarity {similarity:.2f}; "
            f"good T1 registrations reach {SIMILARITY_WARNING:.2f} or more). The scan may not be "
            "a T1-weighted brain MRI, or its orientation header may be wrong: check the "
            "registered brain before trusting the segmentation."
        )
    if coverage < COVERAGE_WARNING:
        return (
            f"Only {100 * coverage:.0f} % of the brain lies inside the scan's field of view: "
            "the segmentation of the missing parts is not meaningful."
        )
    return None
