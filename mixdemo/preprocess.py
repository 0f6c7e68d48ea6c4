"""Bring a raw T1 scan into the models' space, and segmentations back onto the scan.

The models work on skull-stripped T1 brains in MNI152 space on the common 1 mm grid
(:data:`mixdemo.phantoms.GRID_SHAPE`, affine ``phantoms.load_template().affine``), as the
paper did for PPMI. A scan straight off a scanner is in native space, in any orientation
and voxel size, with skull and neck. :func:`to_model_space` does, on the client:

1. reorient to RAS+ and resample to 1 mm (already done by :func:`mixdemo.io.load_scan`);
2. check whether the scan is already skull-stripped in MNI space on/near the model grid
   (:func:`check_model_space`); if so, registration is skipped;
3. otherwise register the scan to the MNI152 2009a T1 template shipped with nilearn:
   the neck is cut off (as FSL's ``robustfov``), the centres of mass are aligned
   (``sitk.CenteredTransformInitializer``), a coarse grid search over head pitch and
   height, then rigid and affine registration with SimpleITK's framework (Mattes mutual
   information inside the dilated template brain mask, random voxel sampling, gradient
   descent with physical-shift scales, pyramid 4-2-1 mm of block-averaged images);
4. resample the scan onto the model grid (trilinear);
5. brain extraction: the template's brain mask carried onto the scan and refined
   (dark voxels of its rim dropped, largest connected component, holes filled);
6. intensity normalisation with :func:`mixdemo.io.normalize_intensity`, as in training.

Registration takes about 2-5 s on 2 cores; the whole step 4-10 s.

The result's ``similarity`` is the correlation between the scan on the model grid and
the template T1 inside the template brain mask (both smoothed, sigma 2 mm). Below
:data:`SIMILARITY_WARNING` the result carries a ``warning`` instead of pretending all is
well; a registration that fails outright or diverges raises :class:`RegistrationError`.

All geometry is kept as 4x4 matrices in RAS+ millimetres (the NIfTI convention);
SimpleITK (LPS+) is used only inside the registration. Segmentations on the model grid
are carried back with :func:`labels_to_scan_grid`, :func:`labels_to_source_grid` or
:func:`save_segmentation` (one resampling step onto the file's grid, each class's indicator interpolated
linearly), or, better where the network's class scores are at hand, with :func:`scores_to_source_grid` (each
class's score interpolated).

Nothing here logs voxel data or file names.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
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
    "labels_to_model_grid",
    "labels_to_scan_grid",
    "labels_to_source_grid",
    "scores_to_source_grid",
    "save_segmentation",
]

MAX_INTERPOLATED_LABELS = 32
"""A label map of more distinct values than this goes onto the model grid by nearest neighbour (:func:`labels_to_model_grid`)."""

ProgressFn = Callable[[float, str], None]
"""``progress(fraction in [0, 1], message)``; messages never contain data or file names."""

SIMILARITY_WARNING = 0.7
"""Similarity (smoothed correlation with the template) below which a registration is poor.

Calibrated in ``tests/test_preprocess.py``: registrations of phantom heads (skull, neck,
rotations up to 15°, ±10 % scaling, anisotropic non-RAS voxels), and of cohort-like
subjects, reach 0.94-0.95; an upside-down brain registered without initialiser reaches
0.42 and a noise volume 0.09. Real T1 scans match the template less well than phantoms,
hence the margin below the good cases. Not applied when registration is skipped: there
:data:`MODEL_SPACE_CORRELATION` is the gate.
"""
MODEL_SPACE_CORRELATION = 0.5
"""Correlation with the template (both smoothed, sigma 2 mm), on the model grid without
registration, above which a skull-stripped scan counts as already in MNI space.

Cohort phantoms (own size ±10 %, pose ±3°, warps) score 0.65-0.86 (ten subjects); an
upside-down brain about 0.2."""
MODEL_SPACE_OUTSIDE = 0.01
"""Largest fraction of bright voxels (> 10 % of the brain's median) allowed outside the
dilated template brain mask for a scan to count as skull-stripped."""
COVERAGE_WARNING = 0.95
"""Smallest fraction of the template brain that must fall inside the scan's field of view."""

_MASK_DILATION_MM = 4  # fixed-image mask for the metric: brain + this rim
_CHECK_SIGMA_MM = 2.0  # smoothing before the model-space correlation
_RIM_MM = 3  # brain-mask refinement works in a band of this half-width around the template mask
_RIM_DARK_FRACTION = 0.12  # rim voxels darker than this x the brain's median are not brain
_SHRINK = (4, 2, 1)  # pyramid levels (block averaging, mm)
_SAMPLING_PER_LEVEL = (0.5, 0.1, 0.02)  # fraction of fixed voxels sampled at each level
_ITERATIONS = 200  # most per level; convergence usually stops far earlier
_MAX_STEP_VOXELS = 0.25  # largest optimiser step, in voxels of the level
_HEAD_HEIGHT_MM = 200  # kept below the top of the head (the brain is ~170 mm tall at most)
_SEARCH_DEG, _SEARCH_MM, _SEARCH_STEPS = 10.0, 24.0, (1, 3)  # coarse pitch/height grid
_MIN_STRETCH = 0.5  # a registration scaling any axis below 0.5x or above 2x has diverged
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
            both smoothed (sigma 2 mm), with the scan taken as it is (no registration).
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
        similarity: Pearson correlation of the scan on the model grid with the template
            T1 inside the template brain mask, both smoothed with a 2 mm Gaussian
            (1 = identical up to contrast; see :data:`SIMILARITY_WARNING`).
        metric_value: Final Mattes mutual information of the registration (negative;
            lower is better), ``None`` when registration was skipped.
        registered: False when the scan was already in model space.
        warning: A plain sentence when the result should not be trusted, else ``None``.
        seconds: Wall time of the registration step (0 when skipped).
        scan_shape, scan_affine: Grid of the loaded scan (``Scan.data``, RAS 1 mm).
        source_shape, source_affine: Grid of the input file itself.
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
    scan_shape: tuple[int, int, int]
    scan_affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray

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
    t1_smooth: np.ndarray  # float32, the same smoothed with _CHECK_SIGMA_MM
    brain: np.ndarray  # bool, template brain (background probability < 0.5)
    metric_mask: np.ndarray  # bool, brain dilated by _MASK_DILATION_MM
    core: np.ndarray  # bool, brain eroded by _RIM_MM
    band: np.ndarray  # bool, within _RIM_MM of the brain's edge
    near: np.ndarray  # bool, brain dilated by twice _MASK_DILATION_MM
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
    correlation = _smooth_correlation(image, ref, inside)
    brain_values = image[ref.brain & inside]
    median = float(np.median(brain_values)) if brain_values.size else 0.0
    outside = inside & ~ref.near
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
    similarity = _smooth_correlation(image, ref, inside)
    coverage = float(inside[ref.brain].mean())

    report(0.93, "Extracting the brain")
    brain_mask = _brain_mask(image, ref) if register else _stripped_brain_mask(image, ref)
    if not brain_mask.any():
        raise RegistrationError(
            "No brain was found after registration: the image may not be a brain MRI."
        )
    # a registered head is stripped with the mask; a scan already in model space is kept as is
    stripped = np.where(brain_mask, image, 0).astype(np.float32) if register else image
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
        warning=_quality_warning(similarity, coverage, registered=bool(register)),
        seconds=seconds,
        scan_shape=tuple(int(n) for n in scan.data.shape),  # type: ignore[arg-type]
        scan_affine=np.array(scan.affine, dtype=np.float64),
        source_shape=tuple(int(n) for n in scan.source_shape),  # type: ignore[arg-type]
        source_affine=np.array(scan.source_affine, dtype=np.float64),
    )


def labels_to_model_grid(
    labels: np.ndarray,
    prepared: Prepared,
    scan: Scan | None = None,
    *,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Carry a label map from the loaded scan's grid onto the model grid: each label's indicator interpolated
    linearly, the largest taken at each voxel (as :func:`labels_to_source_grid` carries labels the other way;
    nearest neighbour for a map of more than :data:`MAX_INTERPOLATED_LABELS` values, where that would be slow).

    The same transform as the image's, so reference or training labels loaded with
    ``mixdemo.io.load_labels(path, like=scan)`` line up with ``prepared.image``. Against the labels a raw phantom
    head was made from, carried into the registered model grid by its known pose, the interpolated shares agree
    better than nearest neighbour does (``tests/test_preprocess.py``).

    A label file on a scan's own grid is best carried from there (``affine``, with
    :func:`mixdemo.io.load_labels_for`): ``load_labels(path, like=scan)`` first takes the nearest voxel of an
    anisotropic or oblique file's grid on the loaded scan's 1 mm grid, which costs more than the shares gain.

    Args:
        labels: Integer labels (0-255) of shape ``prepared.scan_shape`` (``scan.data.shape``), or on the grid of
            ``affine``.
        prepared: The result of :func:`to_model_space`.
        scan: Optional; if given, it must be the scan ``prepared`` was made from.
        affine: The labels' grid (voxel -> world RAS mm) when it is not the loaded scan's, e.g. the input file's.

    Returns:
        uint8 labels of shape ``GRID_SHAPE``.
    """
    _check_scan(prepared, scan)
    if affine is None:
        labels, affine = _checked_labels(labels, prepared.scan_shape), prepared.scan_affine
    else:
        labels = _checked_labels(labels, np.shape(labels) if np.ndim(labels) == 3 else prepared.scan_shape)
    voxel_map = np.linalg.solve(np.asarray(affine, dtype=np.float64), prepared.model_to_input @ prepared.affine)
    values = np.union1d([0], np.unique(labels))
    if len(values) > MAX_INTERPOLATED_LABELS:
        return ndimage.affine_transform(labels, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=GRID_SHAPE,
                                        order=0, mode="constant", cval=0)
    return _argmax_on_grid(((int(c), (labels == c).view(np.uint8)) for c in values), voxel_map, GRID_SHAPE)


def labels_to_scan_grid(labels: np.ndarray, prepared: Prepared, scan: Scan | None = None) -> np.ndarray:
    """Carry a model-grid label map onto the loaded scan's grid (``Scan.data``; see :func:`_labels_to_grid`).

    The result can be written with :func:`mixdemo.io.save_labels`; prefer
    :func:`save_segmentation`, which resamples only once.

    Args:
        labels: Integer labels (0-255) of shape ``GRID_SHAPE``.
        prepared: The result of :func:`to_model_space`.
        scan: Optional; if given, it must be the scan ``prepared`` was made from.

    Returns:
        uint8 labels of shape ``prepared.scan_shape``.
    """
    _check_scan(prepared, scan)
    return _labels_to_grid(labels, prepared, prepared.scan_shape, prepared.scan_affine)


def labels_to_source_grid(labels: np.ndarray, prepared: Prepared, scan: Scan | None = None) -> np.ndarray:
    """Carry a model-grid label map onto the input file's own grid (see :func:`_labels_to_grid`).

    Args:
        labels: Integer labels (0-255) of shape ``GRID_SHAPE``.
        prepared: The result of :func:`to_model_space`.
        scan: Optional; if given, it must be the scan ``prepared`` was made from.

    Returns:
        uint8 labels of shape ``prepared.source_shape``, aligned with ``prepared.source_affine``.
    """
    _check_scan(prepared, scan)
    return _labels_to_grid(labels, prepared, prepared.source_shape, prepared.source_affine)


def scores_to_source_grid(scores: np.ndarray, prepared: Prepared, scan: Scan | None = None) -> np.ndarray:
    """The labels of model-grid class scores on the input file's own grid (see :func:`_scores_to_grid`): what
    :func:`labels_to_source_grid` gives of their arg-max, less the boundary error its resampling adds.

    Args:
        scores: (C, X, Y, Z) float scores on ``GRID_SHAPE``, class ``c`` being label ``c`` (probabilities, or any
            scores whose arg-max is the label map: a voxel forced to background scores 1 there and 0 elsewhere).
        prepared: The result of :func:`to_model_space`.
        scan: Optional; if given, it must be the scan ``prepared`` was made from.

    Returns:
        uint8 labels of shape ``prepared.source_shape``, aligned with ``prepared.source_affine``.
    """
    _check_scan(prepared, scan)
    return _scores_to_grid(scores, prepared, prepared.source_shape, prepared.source_affine)


def save_segmentation(
    labels: np.ndarray,
    prepared: Prepared,
    scan: Scan | None,
    path: str | os.PathLike,
) -> None:
    """Write a model-grid label map, or the labels of model-grid class scores, as NIfTI on the input file's grid
    (shape and affine).

    One resampling from the model grid straight onto the file's grid (:func:`labels_to_source_grid`, or for scores
    :func:`scores_to_source_grid`, the better where the network's scores are at hand); the file overlays the uploaded
    scan exactly in any viewer.

    Args:
        labels: Integer labels (0-255) of shape ``GRID_SHAPE``, or (C, X, Y, Z) float class scores on it.
        prepared: The result of :func:`to_model_space`.
        scan: The scan ``prepared`` was made from, or ``None`` (``prepared`` knows the
            file's grid); given, it is checked against ``prepared``.
        path: Output ``.nii`` or ``.nii.gz`` file (written atomically).
    """
    carry = scores_to_source_grid if np.ndim(labels) == 4 else labels_to_source_grid
    mio.save_volume(carry(labels, prepared, scan), prepared.source_affine, path, dtype=np.uint8)


def _check_scan(prepared: Prepared, scan: Scan | None) -> None:
    """Refuse a scan that is not the one ``prepared`` was made from (by its grids)."""
    if scan is None:
        return
    same = (
        tuple(scan.data.shape) == prepared.scan_shape
        and tuple(scan.source_shape) == prepared.source_shape
        and np.allclose(scan.affine, prepared.scan_affine, atol=1e-4)
        and np.allclose(scan.source_affine, prepared.source_affine, atol=1e-4)
    )
    if not same:
        raise ValueError("This scan is not the one the prepared (registered) scan was made from.")


# --------------------------------------------------------------------------- template
_REFERENCE_LOCK = threading.Lock()


def _reference() -> _Reference:
    """The MNI152 2009a T1 template and brain mask, cut to the model grid (made once, about 4 s on 2 cores, then
    cached; a second caller waits for the first rather than making it too)."""
    with _REFERENCE_LOCK:
        return _made_reference()


def prepare_template() -> None:
    """Make the template's reference now (what the first scan's check or registration would wait for)."""
    _reference()


@functools.lru_cache(maxsize=1)
def _made_reference() -> _Reference:
    from nilearn import datasets  # imported lazily: nilearn is slow to import

    template = load_template()
    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = _cut(np.asarray(t1_img.get_fdata(), dtype=np.float32), np.asarray(t1_img.affine), template.affine)
    brain = (template.probs[0] < 0.5).numpy()
    core = _erode(brain, _RIM_MM)
    return _Reference(
        t1=t1,
        t1_smooth=ndimage.gaussian_filter(t1, _CHECK_SIGMA_MM),
        brain=brain,
        metric_mask=_dilate(brain, _MASK_DILATION_MM),
        core=core,
        band=_dilate(brain, _RIM_MM) & ~core,
        near=_dilate(brain, 2 * _MASK_DILATION_MM),
        affine=np.array(template.affine, dtype=np.float64),
    )


def _cut(volume: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:
    """Cut (or zero-pad) a 1 mm volume onto the model grid; both grids must be aligned."""
    offset = np.linalg.solve(affine, grid_affine)
    start = np.round(offset[:3, 3]).astype(int)
    aligned = np.allclose(offset[:3, :3], np.eye(3), atol=1e-6)
    if not aligned or not np.allclose(offset[:3, 3], start, atol=1e-3):
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
    """Affine registration of ``scan`` to the template; returns (model_to_input RAS, metric).

    Steps: 1. cut the neck off the moving image (as FSL's ``robustfov``); 2. centre the
    images (``sitk.CenteredTransformInitializer``); 3. exhaustive search of head pitch and
    height at 4 mm; 4. rigid gradient descent at 4 mm; 5. affine gradient descent at
    4, 2 and 1 mm. Each level runs SimpleITK's registration on block-averaged images.
    """
    report(0.05, "Preparing the registration")
    fixed = _to_sitk(ref.t1, ref.affine)
    mask = _to_sitk(ref.metric_mask.astype(np.uint8), ref.affine)
    data, affine = _crop_head(scan.data, scan.affine)
    moving = _to_sitk(_clip_bright(data), affine)
    del data
    try:  # the pyramid too: a scan thinner than its coarsest level's blocks is refused as ITK finds it
        pyramid = {k: _level(fixed, mask, moving, k) for k in _SHRINK}
        rigid = _initial_rigid(fixed, moving, initializer)
        if initializer != "none":
            report(0.10, "Registering to MNI152: coarse search")
            _run(pyramid[_SHRINK[0]], rigid, _exhaustive, _SAMPLING_PER_LEVEL[0], threads)
        report(0.15, "Registering to MNI152: rigid, 4 mm")
        _run(pyramid[_SHRINK[0]], rigid, _gradient_descent, _SAMPLING_PER_LEVEL[0], threads)
        transform = _rigid_to_affine(rigid)
        metric = 0.0
        for i, (k, fraction) in enumerate(zip(_SHRINK, _SAMPLING_PER_LEVEL)):
            report(0.25 + 0.6 * i / len(_SHRINK), f"Registering to MNI152: affine, {k} mm")
            metric = _run(pyramid[k], transform, _gradient_descent, fraction, threads)
    except RuntimeError as exc:  # ITK reports e.g. "all samples map outside the moving image"
        raise RegistrationError(
            "The scan could not be registered to the MNI template: it may not be a brain MRI, "
            "or too little of the brain is in the image."
        ) from exc
    model_to_input = _LPS @ _affine_matrix(transform) @ _LPS
    stretch = np.linalg.svd(model_to_input[:3, :3], compute_uv=False)
    plausible = _MIN_STRETCH <= stretch.min() <= stretch.max() <= 1 / _MIN_STRETCH
    if not (np.isfinite(stretch).all() and plausible):
        raise RegistrationError(
            "The registration to the MNI template diverged (the brain would be stretched or "
            "squashed beyond any real head): the image may not be a brain MRI."
        )
    return model_to_input, metric


def _crop_head(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the head's top ``_HEAD_HEIGHT_MM`` (neck removed) and its bounding box.

    The head is the largest component above an Otsu threshold (on a subsample); its top
    is the highest axial slice (RAS+ third axis) covering 2 % of the widest slice. A scan
    without a clear head is returned whole.
    """
    from skimage.filters import threshold_otsu

    step = 2
    sub = np.asarray(data[::step, ::step, ::step], dtype=np.float32)
    positive = sub[sub > 0]
    if positive.size < 100 or float(positive.min()) == float(positive.max()):
        return data, affine
    head = _largest_component(ndimage.binary_opening(sub > threshold_otsu(positive)))
    if not head.any():
        return data, affine
    area = head.sum(axis=(0, 1))
    top = int(np.nonzero(area >= 0.02 * area.max())[0].max())
    height_vox = int(math.ceil(_HEAD_HEIGHT_MM / (step * abs(affine[2, 2]))))
    bottom = max(top - height_vox, 0)
    box = np.argwhere(head[:, :, bottom : top + 1])
    margin = int(math.ceil(10 / step))
    lo = np.maximum(box.min(axis=0) - margin, 0) * step
    hi = np.minimum(box.max(axis=0) + margin + 1, head.shape) * step
    lo[2], hi[2] = bottom * step, min((top + margin + 1) * step, data.shape[2])
    out = np.ascontiguousarray(data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return out, shifted


def _level(
    fixed: sitk.Image, mask: sitk.Image, moving: sitk.Image, k: int
) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(fixed, mask, moving) block-averaged by ``k`` (a mask voxel counts if any of its block does)."""
    if k == 1:
        return fixed, mask, moving
    small_mask = sitk.Cast(sitk.BinShrink(mask, [k] * 3) > 0, sitk.sitkUInt8)
    return sitk.BinShrink(fixed, [k] * 3), small_mask, sitk.BinShrink(moving, [k] * 3)


def _initial_rigid(fixed: sitk.Image, moving: sitk.Image, initializer: str) -> sitk.Euler3DTransform:
    """Rigid start: centres of mass or of the volumes aligned, or the identity."""
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    if initializer == "none":
        rigid = sitk.Euler3DTransform()
        rigid.SetCenter(centre)
        return rigid
    mode = (
        sitk.CenteredTransformInitializerFilter.MOMENTS
        if initializer == "moments"
        else sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode)
    return sitk.Euler3DTransform(initial)


def _rigid_to_affine(rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
    out = sitk.AffineTransform(3)
    out.SetCenter(rigid.GetCenter())
    out.SetMatrix(rigid.GetMatrix())
    out.SetTranslation(rigid.GetTranslation())
    return out


def _exhaustive(method: sitk.ImageRegistrationMethod, spacing: float) -> None:
    """Grid search over pitch (±_SEARCH_DEG) and height (±_SEARCH_MM) of an Euler3D transform."""
    method.SetOptimizerAsExhaustive([_SEARCH_STEPS[0], 0, 0, 0, 0, _SEARCH_STEPS[1]], 1.0)
    method.SetOptimizerScales(
        [math.radians(_SEARCH_DEG) / _SEARCH_STEPS[0], 1, 1, 1, 1, _SEARCH_MM / _SEARCH_STEPS[1]]
    )


def _gradient_descent(method: sitk.ImageRegistrationMethod, spacing: float) -> None:
    """Gradient descent, learning rate re-estimated each iteration, steps <= a quarter voxel.

    Capping the step at a quarter of the level's voxel size matters: with SimpleITK's
    default cap (one voxel) the affine stalls about 0.7 mm from the optimum.
    """
    method.SetOptimizerAsGradientDescent(
        learningRate=1.0,
        numberOfIterations=_ITERATIONS,
        convergenceMinimumValue=1e-8,
        convergenceWindowSize=20,
        estimateLearningRate=method.EachIteration,
        maximumStepSizeInPhysicalUnits=_MAX_STEP_VOXELS * spacing,
    )
    method.SetOptimizerScalesFromPhysicalShift()


def _run(
    images: tuple[sitk.Image, sitk.Image, sitk.Image],
    transform: sitk.Transform,
    optimizer: Callable[[sitk.ImageRegistrationMethod, float], None],
    sampling: float,
    threads: int | None,
) -> float:
    """One registration run (Mattes MI in the mask, random sampling); updates ``transform``."""
    fixed, mask, moving = images
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, _SEED)
    # gradients by finite differences on the fly: the gradient-image filters cost seconds
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    optimizer(method, min(fixed.GetSpacing()))
    if threads is not None:
        method.SetNumberOfThreads(int(threads))
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return float(method.GetMetricValue())


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
    """Model-grid labels carried onto the grid (shape, affine): each class's indicator interpolated linearly, and at
    each voxel the class whose indicator is largest (ties: the lower class; background outside the model grid).

    Nearest neighbour moved every boundary by up to half a voxel wherever the grids are offset by a fraction of one,
    which costs thin structures (CSF) most; on identical grids both give the labels unchanged."""
    labels = _checked_labels(labels, GRID_SHAPE)
    classes = np.union1d([0], np.unique(labels))
    return _argmax_on_grid(((int(c), (labels == c).astype(np.float32)) for c in classes),
                           _model_voxel_map(prepared, affine), shape)


def _scores_to_grid(
    scores: np.ndarray,
    prepared: Prepared,
    shape: tuple[int, ...],
    affine: np.ndarray,
) -> np.ndarray:
    """Model-grid class scores (C, X, Y, Z; class c is label c) carried onto the grid (shape, affine): each class's
    score interpolated linearly, then the arg-max (ties: the lower class; background outside the model grid). The
    network's own scores lose less at a boundary than its labels' shares (:func:`_labels_to_grid`), which forget
    how close each voxel's call was; one-hot scores give the same labels as the labels."""
    scores = _checked_scores(scores)
    return _argmax_on_grid(((c, scores[c]) for c in range(scores.shape[0])), _model_voxel_map(prepared, affine), shape)


def _model_voxel_map(prepared: Prepared, affine: np.ndarray) -> np.ndarray:
    """4x4 map from a voxel of the grid with ``affine`` to the model grid's voxel it lies at: target voxel -> target
    world -> MNI -> model voxel."""
    return np.linalg.solve(prepared.affine, np.linalg.solve(prepared.model_to_input, affine))


def _argmax_on_grid(
    per_class: Iterable[tuple[int, np.ndarray]],
    voxel_map: np.ndarray,
    shape: tuple[int, ...],
) -> np.ndarray:
    """uint8 labels on an output grid of ``shape`` from (label, score on the input grid) pairs given in increasing
    label order: each score interpolated linearly at the input voxel ``voxel_map`` (4x4) gives each output voxel
    (outside the input grid: 1 for label 0, else 0), the largest's label kept."""
    out = np.zeros(tuple(shape), dtype=np.uint8)
    best = np.full(tuple(shape), -np.inf, dtype=np.float32)
    for label, score in per_class:
        on_grid = ndimage.affine_transform(  # float32 out of any input (a label's indicator as uint8: a byte a voxel)
            score, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=tuple(shape),
            order=1, mode="constant", cval=1.0 if label == 0 else 0.0, output=np.float32,
        )
        out[on_grid > best] = label
        np.maximum(best, on_grid, out=best)
    return out


def _checked_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 copy of an integer label map of the expected shape, values 0-255."""
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise ValueError(f"The label map has shape {labels.shape}; expected {tuple(shape)}.")
    if labels.dtype.kind not in "iub":
        raise ValueError("Labels must be an integer array.")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise ValueError("Labels must lie between 0 and 255.")
    return labels.astype(np.uint8)


def _checked_scores(scores: np.ndarray) -> np.ndarray:
    """float32 class scores of shape (C, *GRID_SHAPE), 2 ≤ C ≤ 256, all finite."""
    scores = np.asarray(scores)
    if scores.ndim != 4 or scores.shape[1:] != tuple(GRID_SHAPE) or not 2 <= scores.shape[0] <= 256:
        raise ValueError(f"The class scores have shape {scores.shape}; expected (classes, {', '.join(map(str, GRID_SHAPE))}).")
    if scores.dtype.kind != "f" or not np.isfinite(scores).all():
        raise ValueError("Class scores must be finite floating-point numbers.")
    return scores.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- brain mask
def _brain_mask(image: np.ndarray, ref: _Reference) -> np.ndarray:
    """Template brain mask refined on the registered scan.

    Inside the template mask eroded by ``_RIM_MM`` everything is brain. In the band of
    ±``_RIM_MM`` around the template mask's edge, voxels darker than
    ``_RIM_DARK_FRACTION`` x the brain's median (bone, air) are dropped and the rest kept;
    then the largest connected component is kept and its holes filled. If the refinement
    loses more than a fifth of the template brain, the template mask is used as is.
    """
    core, band = ref.core, ref.band
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
    mask = (image > 0) & ref.near
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


def _dilate(mask: np.ndarray, radius_mm: int) -> np.ndarray:
    """Dilation by a ball (the model grid is 1 mm), done via a distance transform."""
    return ndimage.distance_transform_edt(~mask) <= radius_mm


def _erode(mask: np.ndarray, radius_mm: int) -> np.ndarray:
    return ndimage.distance_transform_edt(mask) > radius_mm


# --------------------------------------------------------------------------- quality
def _smooth_correlation(image: np.ndarray, ref: _Reference, inside: np.ndarray) -> float:
    """Correlation with the template inside its brain (and the view), both smoothed."""
    smooth = ndimage.gaussian_filter(image, _CHECK_SIGMA_MM)
    return _correlation(smooth, ref.t1_smooth, ref.brain & inside)


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


def _quality_warning(similarity: float, coverage: float, *, registered: bool) -> str | None:
    """A plain sentence when the registration result should not be trusted."""
    if registered and similarity < SIMILARITY_WARNING:
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
