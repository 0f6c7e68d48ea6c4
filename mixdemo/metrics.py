"""Evaluation metrics of the Mixup-Privacy lab.

* Segmentation: per-class 3D Dice similarity coefficient (Dice 1945).
* Blind-source-separation recovery: 3D multi-scale SSIM (Wang, Simoncelli & Bovik 2003),
  single pairs, batches and all-pairs similarity matrices.
* Test-retest reliability: ICC(C,1) of McGraw & Wong (1996) = ICC(3,1) of Shrout & Fleiss (1979),
  with its exact F-based confidence interval. The paper cites McGraw & Wong without naming a form; this is the
  two-way, consistency, single-measure one.
* Subject re-identification as retrieval (Kim et al., "Mixup-Privacy", Table 2): macro F1 of the
  top-1 prediction, mean average precision and top-1 accuracy.

All functions take numpy arrays or torch tensors and return plain Python / numpy values.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

__all__ = [
    "IccResult",
    "MSSSIM_WEIGHTS",
    "ReidResult",
    "dice_per_class",
    "icc_c1",
    "icc_variance_components",
    "mean_dice",
    "msssim_3d",
    "msssim_3d_batch",
    "msssim_matrix",
    "msssim_scales",
    "reid_metrics",
]

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Converts a torch tensor (any device), numpy array or nested sequence to a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a numpy array, torch tensor or nested sequence") from err


# --------------------------------------------------------------------------------------------
# Dice
# --------------------------------------------------------------------------------------------


def _check_label_map(x: np.ndarray, name: str) -> None:
    """Raises ValueError unless ``x`` is a 3D map of integer labels."""
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a 3D label map of shape (X, Y, Z), got shape {x.shape}")
    if x.dtype.kind not in "biu":
        if x.dtype.kind != "f" or not np.array_equal(x, np.round(x)):
            raise ValueError(f"{name}: expected integer labels, got dtype {x.dtype} with non-integer values")


def dice_per_class(pred: ArrayLike, truth: ArrayLike, classes: Sequence[int]) -> dict[int, float]:
    """3D Dice similarity coefficient per class, ``2|P∩T| / (|P| + |T|)`` (Dice 1945).

    Each class ``c`` is scored on the binary masks ``pred == c`` and ``truth == c`` pooled over the
    whole volume. Convention: a class absent from both maps scores 1.0 (nothing to find, nothing
    found); absent from exactly one map it scores 0.0 (what the formula gives).

    Args:
        pred: predicted label map, shape (X, Y, Z), integer labels.
        truth: reference label map, same shape.
        classes: labels to score (e.g. ``range(1, n_classes)`` to skip the background).

    Returns:
        ``{class: dice}`` in the order of ``classes``.

    Raises:
        ValueError: on mismatched or non-3D shapes, non-integer labels or empty ``classes``.
    """
    p, t = _to_numpy(pred, "pred"), _to_numpy(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    _check_label_map(p, "pred")
    _check_label_map(t, "truth")
    if len(classes) == 0:
        raise ValueError("classes: expected at least one class label")
    out: dict[int, float] = {}
    for c in classes:
        pm, tm = p == c, t == c
        denom = int(pm.sum()) + int(tm.sum())
        out[int(c)] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(pm, tm).sum()) / denom
    return out


def mean_dice(per_class: dict[int, float]) -> float:
    """Unweighted mean of per-class Dice scores (as returned by :func:`dice_per_class`).

    Raises:
        ValueError: if ``per_class`` is empty.
    """
    if not per_class:
        raise ValueError("per_class: expected at least one class score, got an empty dict")
    return float(np.mean(list(per_class.values())))


# --------------------------------------------------------------------------------------------
# MS-SSIM
# --------------------------------------------------------------------------------------------

#: Per-scale exponents of Wang et al. (2003), finest scale first.
MSSSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_K1, _K2, _SIGMA = 0.01, 0.03, 1.5
_KERNELS_PREFERRED = (11, 9, 7)
_KERNELS_FALLBACK = (5, 3)
_PAIR_CHUNK_VOXELS = 2**23  # voxels per pair batch in msssim_matrix (64 MiB per float64 map)


def _fits(side: int, n_scales: int, kernel: int) -> bool:
    """Whether a volume side allows ``n_scales`` scales with a ``kernel``-wide window.

    Two conditions: MONAI's check in ``monai/metrics/regression.py::compute_ms_ssim``
    (``side // max(1, n_scales - 1) ** 2 > kernel - 1``) and the geometric one that the coarsest
    scale, after ``n_scales - 1`` 2x average poolings, still holds a whole window.
    """
    monai_ok = side // max(1, n_scales - 1) ** 2 > kernel - 1
    coarsest = side
    for _ in range(n_scales - 1):
        coarsest //= 2
    return monai_ok and coarsest >= kernel


def msssim_scales(shape: Sequence[int]) -> tuple[int, int]:
    """Chooses ``(n_scales, kernel_size)`` of MS-SSIM for a volume shape (X, Y, Z).

    Rule: the most scales (≤ 5) for which a Gaussian window of size 11, 9 or 7 (σ = 1.5) fits the
    smallest side, taking the largest such window; only when no window ≥ 7 fits even a single
    scale, the same search with windows 5 and 3. "Fits" means both MONAI's constraint
    ``side // max(1, n_scales - 1)**2 > kernel - 1`` and ``side // 2**(n_scales - 1) >= kernel``.
    Examples: 32³ → (3, 7); 40 → (3, 9); 64 → (4, 7); 128 → (5, 7); ≥ 176 → (5, 11).

    Raises:
        ValueError: if the smallest side is too small even for one scale with a 3-wide window.
    """
    side = min(int(s) for s in shape)
    for kernels in (_KERNELS_PREFERRED, _KERNELS_FALLBACK):
        for n in range(len(MSSSIM_WEIGHTS), 0, -1):
            for k in kernels:
                if _fits(side, n, k):
                    return n, k
    raise ValueError(f"MS-SSIM needs every side >= 3 voxels, got shape {tuple(shape)}")


def _gaussian_1d(kernel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1D Gaussian window (σ = 1.5), identical to MONAI's ``_gaussian_kernel``."""
    dist = torch.arange((1 - kernel) / 2, (1 + kernel) / 2, 1.0, dtype=dtype, device=device)
    g = torch.exp(-((dist / _SIGMA) ** 2) / 2)
    return g / g.sum()


def _band_matrix(length: int, g: torch.Tensor) -> torch.Tensor:
    """(length-k+1, length) matrix applying a 'valid' 1D correlation with window ``g``."""
    k = g.numel()
    m = torch.zeros(length - k + 1, length, dtype=g.dtype, device=g.device)
    for i in range(length - k + 1):
        m[i, i : i + k] = g
    return m


class _Filter:
    """Separable 'valid' Gaussian filtering of (B, X, Y, Z) batches via banded matrix products.

    Mathematically the same as MONAI's conv3d with the outer-product kernel, but separable and
    done with matmuls, which on CPU is an order of magnitude faster than conv3d.
    """

    def __init__(self, shape: Sequence[int], kernel: int, dtype: torch.dtype, device: torch.device):
        g = _gaussian_1d(kernel, dtype, device)
        self.mx, self.my, self.mz = (_band_matrix(int(s), g) for s in shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("ax,bxyz->bayz", self.mx, x)
        x = torch.einsum("ay,bxyz->bxaz", self.my, x)
        return torch.einsum("az,bxyz->bxya", self.mz, x)


def _pool(x: torch.Tensor) -> torch.Tensor:
    """2x average pooling of a (B, X, Y, Z) batch (odd sides floored, as in MONAI)."""
    return F.avg_pool3d(x.unsqueeze(1), kernel_size=2).squeeze(1)


def _pyramid(x: torch.Tensor, n_scales: int) -> list[torch.Tensor]:
    """[x, pool(x), pool(pool(x)), ...] with ``n_scales`` levels."""
    levels = [x]
    for _ in range(n_scales - 1):
        levels.append(_pool(levels[-1]))
    return levels


def _as_volumes(x: ArrayLike, name: str, ndim: int) -> torch.Tensor:
    """Converts to a float64 tensor (keeping a torch tensor's device) and checks shape/finiteness."""
    if isinstance(x, torch.Tensor):
        t = x
    else:  # a read-only array (a memory map, a broadcast view) is copied: torch warns on one, and float64 copies anyway
        arr = _to_numpy(x, name)
        t = torch.as_tensor(arr if arr.flags.writeable else arr.astype(np.float64))
    if t.ndim != ndim:
        want = "(X, Y, Z) (use msssim_3d_batch for batches)" if ndim == 3 else "(N, X, Y, Z)"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    t = t.detach().to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return t


def _pair_ranges(
    lo_a: torch.Tensor, hi_a: torch.Tensor, lo_b: torch.Tensor, hi_b: torch.Tensor, data_range: float | None
) -> torch.Tensor:
    """Per-pair data ranges: the given constant, or the joint range of each pair (0 → 1.0).

    Args:
        lo_a, hi_a, lo_b, hi_b: per-item minima / maxima of the two sides, shape (B,).
        data_range: a fixed positive range, or ``None`` for max(hi_a, hi_b) - min(lo_a, lo_b).
    """
    if data_range is not None:
        if not (math.isfinite(data_range) and data_range > 0):
            raise ValueError(f"data_range: expected a finite positive number or None, got {data_range}")
        return torch.full_like(lo_a, float(data_range))
    r = torch.maximum(hi_a, hi_b) - torch.minimum(lo_a, lo_b)
    return torch.where(r > 0, r, torch.ones_like(r))


class _Moments:
    """Per-volume Gaussian-filtered mean E[x] and variance E[x²] - E[x]² at every pyramid scale.

    Volumes are shifted by a common ``offset`` first: variances and covariances are unchanged and
    float cancellation in E[x²] - E[x]² shrinks; the luminance term re-adds the offset.
    """

    def __init__(self, vols: torch.Tensor, n_scales: int, kernel: int, offset: float):
        self.offset = offset
        self.levels = _pyramid(vols - offset, n_scales)
        self.filters = [_Filter(x.shape[1:], kernel, x.dtype, x.device) for x in self.levels]
        self.mu = [f(x) for f, x in zip(self.filters, self.levels)]
        self.var = [f(x * x) - m * m for f, x, m in zip(self.filters, self.levels, self.mu)]


def _msssim_pairs(ma: _Moments, ia: slice, mb: _Moments, ib: slice, rng: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of volumes ``ia`` of ``ma`` against volumes ``ib`` of ``mb`` (Wang et al. 2003, eq. 7).

    ``ia``/``ib`` select B volumes each, or 1 volume to broadcast against the other side; ``rng``
    holds the B per-pair data ranges; ``ma`` and ``mb`` must share the offset. Per scale j < M the
    mean contrast-structure map cs_j, at the coarsest scale M the mean SSIM map (luminance × cs),
    each clamped to ≥ 0 like MONAI's ``relu`` so fractional exponents never give NaN; exponents are
    :data:`MSSSIM_WEIGHTS`, truncated to the scales used and renormalised to sum to 1.
    """
    n = len(ma.mu)
    w = torch.tensor(MSSSIM_WEIGHTS[:n], dtype=rng.dtype, device=rng.device)
    w = w / w.sum()
    c1 = ((_K1 * rng) ** 2).view(-1, 1, 1, 1)
    c2 = ((_K2 * rng) ** 2).view(-1, 1, 1, 1)
    out = torch.ones_like(rng)
    for j in range(n):
        mu_a, mu_b = ma.mu[j][ia], mb.mu[j][ib]
        cs_map = ma.filters[j](ma.levels[j][ia] * mb.levels[j][ib])  # E[xy]
        cs_map.sub_(mu_a * mu_b).mul_(2).add_(c2)  # 2 cov + C2
        cs_map.div_((ma.var[j][ia] + mb.var[j][ib]).add_(c2))
        if j == n - 1:
            ua, ub = mu_a + ma.offset, mu_b + mb.offset
            cs_map.mul_((2 * ua * ub + c1).div_(ua * ua + ub * ub + c1))  # × luminance = SSIM map
        out = out * cs_map.flatten(1).mean(1).clamp(min=0.0) ** w[j]
    return out.clamp(0.0, 1.0)


def _minmax(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item minimum and maximum of a (B, ...) batch."""
    flat = v.flatten(1)
    return flat.amin(1), flat.amax(1)


def msssim_3d_batch(a: ArrayLike, b: ArrayLike, data_range: float | None = None) -> np.ndarray:
    """3D MS-SSIM (Wang, Simoncelli & Bovik 2003) of N volume pairs ``(a[i], b[i])``.

    Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering, 2x average pooling between
    scales; number of scales and window size from :func:`msssim_scales` (e.g. 32³ → 3 scales,
    7-wide window); exponents (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) truncated to the scales
    used and renormalised to sum to 1. Per-scale terms are clamped to ≥ 0 (anti-correlated inputs
    give 0 instead of NaN), so each value is finite and in [0, 1]. Agrees with MONAI's
    ``MultiScaleSSIMMetric`` given the same kernel size and renormalised weights.

    Args:
        a: volumes, shape (N, X, Y, Z), numpy or torch (computed in float64 on ``a``'s device).
        b: volumes, same shape.
        data_range: intensity range L in C1 = (K1 L)², C2 = (K2 L)². ``None`` (default): the joint
            range ``max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min())`` of each pair, or
            1.0 when that is 0 (two equal constant volumes, which then score 1).

    Returns:
        Array of N values in [0, 1].

    Raises:
        ValueError: on mismatched shapes, wrong ndim, non-finite values, sides < 3 voxels or a
            non-positive ``data_range``.
    """
    ta = _as_volumes(a, "a", 4)
    tb = _as_volumes(b, "b", 4).to(ta.device)
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    n_scales, kernel = msssim_scales(ta.shape[1:])
    if ta.shape[0] == 0:
        return np.zeros(0)
    (lo_a, hi_a), (lo_b, hi_b) = _minmax(ta), _minmax(tb)
    rng = _pair_ranges(lo_a, hi_a, lo_b, hi_b, data_range)
    offset = float(torch.minimum(lo_a.min(), lo_b.min()))
    ma, mb = _Moments(ta, n_scales, kernel, offset), _Moments(tb, n_scales, kernel, offset)
    return _msssim_pairs(ma, slice(None), mb, slice(None), rng).cpu().numpy()


def msssim_3d(a: ArrayLike, b: ArrayLike, *, data_range: float | None = None) -> float:
    """3D MS-SSIM (Wang et al. 2003) of two volumes of shape (X, Y, Z); see :func:`msssim_3d_batch`.

    ``data_range=None`` uses the joint range max(a.max(), b.max()) - min(a.min(), b.min()).
    Always a finite number in [0, 1]; works from 32³ patches (3 scales, 7-wide window) upwards.

    Raises:
        ValueError: on mismatched or non-3D shapes, non-finite values or a bad ``data_range``.
    """
    ta, tb = _as_volumes(a, "a", 3), _as_volumes(b, "b", 3)
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    return float(msssim_3d_batch(ta[None], tb[None], data_range)[0])


def msssim_matrix(volumes: ArrayLike, *, data_range: float | None = None) -> np.ndarray:
    """Pairwise 3D MS-SSIM matrix of N volumes (for re-identification, Kim et al. Table 2).

    Same definition as :func:`msssim_3d` (per-pair joint data range when ``data_range`` is None).
    Filtered per-volume moments are computed once; only the cross term E[xy] is computed per pair,
    for the N(N-1)/2 pairs i < j in memory-bounded batches. Memory: about 3 float64 copies of all
    volumes plus ~0.5 GiB of work space (60 x 64³ on one CPU thread: ~15-20 s).

    Args:
        volumes: shape (N, X, Y, Z), numpy or torch.
        data_range: fixed intensity range, or None for the joint range of each pair.

    Returns:
        (N, N) float64 array, symmetric, diagonal exactly 1, entries in [0, 1].

    Raises:
        ValueError: on a shape other than (N, X, Y, Z), non-finite values or a bad ``data_range``.
    """
    v = _as_volumes(volumes, "volumes", 4)
    n = v.shape[0]
    n_scales, kernel = msssim_scales(v.shape[1:])
    sim = np.eye(n)
    if n < 2:
        return sim
    lo, hi = _minmax(v)
    moments = _Moments(v, n_scales, kernel, float(lo.min()))
    chunk = max(1, _PAIR_CHUNK_VOXELS // math.prod(v.shape[1:]))
    for i in range(n - 1):  # query i against the contiguous block j = i+1 .. n-1 (views, no copies)
        for j0 in range(i + 1, n, chunk):
            j1 = min(j0 + chunk, n)
            rng = _pair_ranges(lo[i : i + 1], hi[i : i + 1], lo[j0:j1], hi[j0:j1], data_range)
            vals = _msssim_pairs(moments, slice(i, i + 1), moments, slice(j0, j1), rng).cpu().numpy()
            sim[i, j0:j1] = vals
            sim[j0:j1, i] = vals
    return sim


# --------------------------------------------------------------------------------------------
# ICC(C,1)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IccResult:
    """ICC(C,1) estimate with its confidence interval.

    Attributes:
        icc: the intraclass correlation (NaN when undefined, see ``note``).
        ci_low: lower bound of the confidence interval (95% by default).
        ci_high: upper bound.
        n: number of targets (rows).
        k: number of raters (columns).
        note: empty, or why the value is degenerate (zero residual and/or zero target variance).
    """

    icc: float
    ci_low: float
    ci_high: float
    n: int
    k: int
    note: str = ""


def _two_way_mean_squares(x: np.ndarray) -> tuple[float, float]:
    """Between-targets (MSR) and residual (MSE) mean squares of a two-way ANOVA without replication.

    Sums of squares below 1e-12 x the total sum of squares are rounding noise and set to 0, so
    exactly identical raters give MSE = 0 (McGraw & Wong 1996, Table 2 notation).
    """
    n, k = x.shape
    grand = x.mean()
    rows, cols = x.mean(axis=1), x.mean(axis=0)
    ss_total = float(((x - grand) ** 2).sum())
    ss_rows = float(k * ((rows - grand) ** 2).sum())
    ss_err = float(((x - rows[:, None] - cols[None, :] + grand) ** 2).sum())
    tol = 1e-12 * ss_total
    ss_rows = 0.0 if ss_rows <= tol else ss_rows
    ss_err = 0.0 if ss_err <= tol else ss_err
    return ss_rows / (n - 1), ss_err / ((n - 1) * (k - 1))


def icc_c1(ratings: ArrayLike, *, confidence: float = 0.95) -> IccResult:
    """ICC(C,1) of McGraw & Wong (1996) = ICC(3,1) of Shrout & Fleiss (1979).

    Two-way mixed model, consistency, single measures: ``(MSR - MSE) / (MSR + (k-1) MSE)``, with the
    exact F-based interval of McGraw & Wong (1996), Table 7 (case 3A; pingouin's ``ICC3`` CI95%):
    F = MSR/MSE, F_L = F / F_{1-α/2}(n-1, (n-1)(k-1)), F_U = F · F_{1-α/2}((n-1)(k-1), n-1),
    bounds (F_L - 1)/(F_L + k - 1) and (F_U - 1)/(F_U + k - 1).

    Degenerate cases (documented in ``note``):
      * MSE = 0 and MSR > 0 (raters agree exactly, up to a constant offset per rater): ICC = 1, CI = (1, 1).
      * MSE = 0 and MSR = 0 (no variation between targets): ICC and CI are NaN (0/0, undefined).

    Args:
        ratings: shape (n_targets, k_raters), n ≥ 2, k ≥ 2, finite values.
        confidence: coverage of the interval, in (0, 1).

    Raises:
        ValueError: on a shape other than (n ≥ 2, k ≥ 2), non-finite ratings or a bad ``confidence``.
    """
    x = np.asarray(_to_numpy(ratings, "ratings"), dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"ratings: expected shape (n_targets >= 2, k_raters >= 2), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("ratings: expected finite values, found NaN or inf")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
    n, k = x.shape
    msr, mse = _two_way_mean_squares(x)
    if mse == 0.0 and msr == 0.0:
        nan = float("nan")
        return IccResult(nan, nan, nan, n, k, "undefined: no variance between targets and no residual variance")
    if mse == 0.0:
        return IccResult(1.0, 1.0, 1.0, n, k, "residual variance is 0: raters agree up to constant offsets")
    df1, df2 = n - 1, (n - 1) * (k - 1)
    q = 1.0 - (1.0 - confidence) / 2.0
    f_obs = msr / mse
    f_low = f_obs / stats.f.ppf(q, df1, df2)
    f_high = f_obs * stats.f.ppf(q, df2, df1)
    icc = (msr - mse) / (msr + (k - 1) * mse)
    return IccResult(
        float(icc), float((f_low - 1) / (f_low + k - 1)), float((f_high - 1) / (f_high + k - 1)), n, k
    )


def icc_variance_components(ratings: ArrayLike) -> tuple[float, float]:
    """(target SD, residual SD) of the two-way model behind :func:`icc_c1`, so that
    ICC(C,1) = target² / (target² + residual²).

    The target variance is (MSR − MSE) / k, floored at 0; the residual variance is MSE. In a
    test–retest study the residual is what changes between the k repeats (here: the references), the
    target part what differs between the scans themselves: a homogeneous cohort has a small target
    SD, hence a low ICC for the same residual.
    """
    x = np.asarray(_to_numpy(ratings, "ratings"), dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or not np.isfinite(x).all():
        raise ValueError(f"ratings: expected finite values of shape (n_targets >= 2, k_raters >= 2), got {x.shape}")
    msr, mse = _two_way_mean_squares(x)
    return float(np.sqrt(max(msr - mse, 0.0) / x.shape[1])), float(np.sqrt(mse))


def ratio_of_means_ci(numerator: ArrayLike, denominator: ArrayLike, *, confidence: float = 0.95,
                      resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """(mean(numerator) / mean(denominator), low, high): the ratio of two paired per-volume scores (e.g.
    Learned+TTA over the baseline's Dice of the same volumes) with a paired bootstrap interval over the
    volumes (scipy's ``bootstrap``, percentile method, seeded), so a figure from a few volumes says how
    far it could move with others. NaN bounds with fewer than 2 volumes or no variation at all."""
    a = np.asarray(_to_numpy(numerator, "numerator"), dtype=np.float64).ravel()
    b = np.asarray(_to_numpy(denominator, "denominator"), dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"expected two finite, paired score vectors of one length; got {a.shape} and {b.shape}")
    if b.mean() <= 0:
        raise ValueError("the denominator's mean must be positive")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
    ratio = float(a.mean() / b.mean())
    if a.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return ratio, float("nan"), float("nan")
    from scipy.stats import bootstrap

    res = bootstrap((a, b), lambda x, y, axis: x.mean(axis) / y.mean(axis), paired=True, vectorized=True,
                    confidence_level=confidence, n_resamples=resamples, method="percentile",
                    rng=np.random.default_rng(seed))
    return ratio, float(res.confidence_interval.low), float(res.confidence_interval.high)


# --------------------------------------------------------------------------------------------
# Re-identification retrieval
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReidResult:
    """Re-identification retrieval scores (Kim et al., "Mixup-Privacy", Table 2).

    Attributes:
        f1: macro F1 over identities of (true identity, top-1 predicted identity).
        map: mean over queries of the average precision of the ranking of all other items.
        top1_accuracy: fraction of queries whose top-ranked item has the same identity.
        n_queries: number of queries scored (items with at least one other item of their identity).
        n_skipped: items skipped as queries because no other item shares their identity.
    """

    f1: float
    map: float
    top1_accuracy: float
    n_queries: int
    n_skipped: int = 0


def _ranking(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Order of items by descending score; ties put irrelevant items first, then lower index."""
    return np.lexsort((np.arange(scores.size), relevant.astype(np.int8), -scores))


def _average_precision(relevant_sorted: np.ndarray) -> float:
    """Average precision of a ranked list: mean of precision@rank over the relevant ranks."""
    hits = np.cumsum(relevant_sorted)
    ranks = np.flatnonzero(relevant_sorted) + 1
    return float(np.mean(hits[ranks - 1] / ranks))


def _macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Macro F1 over the union of labels, 2TP / (2TP + FP + FN) per label (sklearn semantics)."""
    scores = []
    for label in np.union1d(truth, pred):
        tp = int(np.sum((truth == label) & (pred == label)))
        fp = int(np.sum((truth != label) & (pred == label)))
        fn = int(np.sum((truth == label) & (pred != label)))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def reid_metrics(similarity: ArrayLike, identities: Sequence[Hashable]) -> ReidResult:
    """Re-identification as retrieval (Kim et al., "Mixup-Privacy", Sec. 4, Table 2).

    Each item i is a query; all other items j ≠ i are ranked by ``similarity[i, j]``, descending
    (row i is used; the diagonal is ignored; the matrix need not be symmetric). The predicted
    identity is that of the top-ranked item. Ties are broken deterministically and pessimistically:
    among equal similarities, items of a different identity rank before items of the query's
    identity, then by index, so a constant matrix cannot score a perfect mAP (unless every item
    shares one identity). Queries whose identity occurs only once cannot be answered correctly
    and are skipped (counted in ``n_skipped``); all three scores use the same remaining queries.

    * F1: macro F1 of (true, predicted) identity pairs over the union of labels, as sklearn's
      ``f1_score(average="macro")``.
    * mAP: mean over queries of AP = mean of precision@rank at the ranks of same-identity items.
    * top-1 accuracy: fraction of queries whose predicted identity is correct.

    Args:
        similarity: (N, N) similarity matrix, larger = more similar, finite off the diagonal.
        identities: N hashable identity labels (a list, numpy array or 1D tensor).

    Raises:
        ValueError: on a non-square matrix, N < 2, a length mismatch, non-finite off-diagonal
            similarities, or when no identity occurs at least twice.
    """
    sim = np.asarray(_to_numpy(similarity, "similarity"), dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] < 2:
        raise ValueError(f"similarity: expected a square (N, N) matrix with N >= 2, got shape {sim.shape}")
    n = sim.shape[0]
    if len(identities) != n:
        raise ValueError(f"identities: expected {n} labels (one per row of similarity), got {len(identities)}")
    off_diag = ~np.eye(n, dtype=bool)
    if not np.isfinite(sim[off_diag]).all():
        raise ValueError("similarity: expected finite off-diagonal values, found NaN or inf")
    labels = identities.tolist() if isinstance(identities, (torch.Tensor, np.ndarray)) else list(identities)
    codes_of: dict[Hashable, int] = {}
    ids = np.array([codes_of.setdefault(x, len(codes_of)) for x in labels])
    counts = np.bincount(ids)
    truth, pred, aps = [], [], []
    for i in range(n):
        if counts[ids[i]] < 2:
            continue
        others = np.flatnonzero(off_diag[i])
        relevant = ids[others] == ids[i]
        order = _ranking(sim[i, others], relevant)
        truth.append(ids[i])
        pred.append(ids[others[order[0]]])
        aps.append(_average_precision(relevant[order]))
    if not aps:
        raise ValueError("identities: expected at least one identity occurring at least twice")
    t, p = np.array(truth), np.array(pred)
    return ReidResult(
        f1=_macro_f1(t, p),
        map=float(np.mean(aps)),
        top1_accuracy=float(np.mean(t == p)),
        n_queries=len(aps),
        n_skipped=n - len(aps),
    )
