"""Mixing, unmixing and test-time augmentation (Kim et al., Mixup-Privacy, Eq. 2-6).

TorchIO style: :func:`sample_key` only *samples* the client's secret (which references,
which α, a seed); :func:`mix`, :func:`mix_labels` and :func:`naive_unmix` are pure
functions of their inputs and the key's values, so every step is reproducible.

Shapes: images are ``(..., X, Y, Z)``; label maps one-hot or probabilities ``(..., C, X, Y, Z)``.
The functions work on ``torch.Tensor`` and ``numpy.ndarray`` alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)

TRAIN_ALPHA_RANGE: tuple[float, float] = (0.1, 0.9)
"""α range the shipped models are trained on: uniform, as the paper, which draws α from U(0, 1); bounded away from 0
(Eq. 4 divides by α) and from 1."""

DEFAULT_ALPHA_RANGE: tuple[float, float] = (0.3, 0.5)
"""α range the app and the client draw from by default, chosen from the privacy–utility sweep of
``python -m training.evaluate_privacy`` (README, "Why α ∈ [0.3, 0.5]"): with α ≤ 0.5 the target never
dominates its proxy, which lowers single-proxy re-identification and output leakage against U(0.3, 0.7)
at a small Dice cost; below 0.3 Dice falls steeply. ``tests/test_repo.py`` checks the committed sweep
still says so."""

MIN_ALPHA = 0.05
"""Eq. 4 divides by α: no key may use a smaller target weight."""

MIRROR_AXIS = 0
"""The left–right axis of an image ``(X, Y, Z)`` on the common grid (RAS; the MNI152 grid, symmetric about x = 0)."""

MIRROR_BY_DEFAULT = False
"""Whether the app and the command-line client mirror the target in every second mix of their TTA unless told
otherwise (:func:`alternate_mirroring`); set by the rule of ``python -m training.mirror_tta`` (README)."""


@dataclass(frozen=True)
class MixKey:
    """The client's secret for one target: which references, which α per mix, and a seed.

    Attributes:
        reference_ids: one reference id per mix (K mixes for TTA, Eq. 5).
        alphas: the target's weight α of each mix (Eq. 2), one per reference.
        seed: seed the key was drawn from (patch positions, shuffling).
        mirrored: for each mix, whether the client mirrors the target left–right before mixing it
            (:func:`mirror`; a test-time augmentation the client undoes on the answer); empty: none is.
    """

    reference_ids: tuple[str, ...]
    alphas: tuple[float, ...]
    seed: int = 0
    meta: dict = field(default_factory=dict, compare=False, repr=False)
    mirrored: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if len(self.reference_ids) != len(self.alphas):
            raise ValueError(
                f"A key needs one α per reference: got {len(self.reference_ids)} references "
                f"and {len(self.alphas)} α values."
            )
        if not self.reference_ids:
            raise ValueError("A key needs at least one reference.")
        object.__setattr__(self, "mirrored", tuple(bool(f) for f in self.mirrored) if any(self.mirrored) else ())
        if self.mirrored and len(self.mirrored) != len(self.reference_ids):
            raise ValueError(f"A key says for every mix or for none whether it is mirrored: got {len(self.mirrored)} "
                             f"flags for {len(self.reference_ids)} references.")
        for a in self.alphas:
            check_alpha(a)

    @property
    def k(self) -> int:
        """Number of mixes (TTA augmentations)."""
        return len(self.reference_ids)

    @property
    def mirrored_mixes(self) -> list[int]:
        """The indices of the mixes whose target is mirrored."""
        return [k for k, flag in enumerate(self.mirrored) if flag]

    def is_mirrored(self, k: int) -> bool:
        """Whether mix ``k``'s target is mirrored."""
        return bool(self.mirrored) and self.mirrored[k]

    def part(self, start: int, stop: int) -> MixKey:
        """The key of mixes ``start`` to ``stop`` (one request's share of them)."""
        return MixKey(self.reference_ids[start:stop], self.alphas[start:stop], self.seed,
                      mirrored=self.mirrored[start:stop])


def alternate_mirroring(k: int) -> tuple[bool, ...]:
    """Mirror every second of ``k`` mixes (the first is never mirrored, so K = 1 is the paper's TTA-free mix)."""
    return tuple(i % 2 == 1 for i in range(k))


def mirror(volume: Array) -> Array:
    """The left–right mirror image of a volume ``(..., X, Y, Z)`` or of per-class maps ``(..., C, X, Y, Z)``
    (:data:`MIRROR_AXIS`); its own inverse. A copy for arrays, as for tensors."""
    axis = MIRROR_AXIS - 3
    if isinstance(volume, torch.Tensor):
        return volume.flip(axis)
    return np.flip(volume, axis).copy()


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` if it lies in [MIN_ALPHA, 1], else raise a ValueError that says so."""
    if not (MIN_ALPHA <= float(alpha) <= 1.0):
        raise ValueError(f"α must lie in [{MIN_ALPHA}, 1] (Eq. 4 divides by α); got {alpha}.")
    return float(alpha)


def check_alpha_range(alpha_range: tuple[float, float]) -> tuple[float, float]:
    """Validate an (lo, hi) α range."""
    lo, hi = (float(v) for v in alpha_range)
    check_alpha(lo)
    check_alpha(hi)
    if lo > hi:
        raise ValueError(f"α range must be (low, high) with low ≤ high; got {alpha_range}.")
    return lo, hi


def sample_key(
    pool: Sequence[str],
    k: int = 1,
    *,
    alpha_range: tuple[float, float] = DEFAULT_ALPHA_RANGE,
    seed: int | None = None,
    fresh_alpha_per_mix: bool = False,
    exclude: Sequence[str] = (),
    mirror: bool = False,
) -> MixKey:
    """Draw a key: K distinct references from ``pool`` and α ~ U(alpha_range).

    Args:
        pool: ids of the client's reference bank.
        k: number of mixes (1 without TTA).
        alpha_range: bounds of the uniform α distribution.
        seed: RNG seed; ``None`` draws one from the OS.
        fresh_alpha_per_mix: one α per mix (a defence) instead of one α shared by all K
            mixes (Eq. 5 uses one α).
        exclude: ids never to use (e.g. the target's own subject).
        mirror: mirror the target in every second mix (:func:`alternate_mirroring`).
    """
    lo, hi = check_alpha_range(alpha_range)
    candidates = [p for p in pool if p not in set(exclude)]
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")
    if k > len(candidates):
        raise ValueError(f"Asked for {k} distinct references but the bank holds {len(candidates)}.")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in rng.choice(len(candidates), size=k, replace=False)]
    n_alpha = k if fresh_alpha_per_mix else 1
    alphas = rng.uniform(lo, hi, size=n_alpha)
    if not fresh_alpha_per_mix:
        alphas = np.repeat(alphas, k)
    return MixKey(reference_ids=tuple(chosen), alphas=tuple(float(a) for a in alphas), seed=seed,
                  mirrored=alternate_mirroring(k) if mirror else ())


def _weights_like(alpha: float | Sequence[float] | Array, like: Array, trailing_dims: int) -> Array:
    """α as a scalar, or K values shaped (K, 1, …, 1) to broadcast over ``like``'s leading axis."""
    if isinstance(like, torch.Tensor):
        a = torch.as_tensor(alpha, dtype=like.dtype, device=like.device)
    else:
        a = np.asarray(alpha, dtype=like.dtype)
    return a.reshape(a.shape + (1,) * trailing_dims) if a.ndim else a


def mix(target: Array, reference: Array, alpha: float | Sequence[float] | Array) -> Array:
    """Eq. 2: x_mix = α·x_target + (1 − α)·x_ref.

    ``reference`` may hold K references stacked on a leading axis, with ``alpha`` a scalar
    or K values (Eq. 5); ``target`` broadcasts against them.
    """
    a = _weights_like(alpha, reference, reference.ndim - 1)
    return a * target + (1 - a) * reference


def mix_labels(target_onehot: Array, reference_onehot: Array, alpha: float | Sequence[float] | Array) -> Array:
    """Eq. 3: y_mix = α·y_target + (1 − α)·y_ref on one-hot (C, X, Y, Z) maps."""
    return mix(target_onehot, reference_onehot, alpha)


def naive_unmix(mixed_pred: Array, reference_onehot: Array, alpha: float | Sequence[float] | Array) -> Array:
    """Eq. 4: ŷ_target = (ŷ_mix − (1 − α)·y_ref) / α.

    ``mixed_pred`` and ``reference_onehot`` are (K, C, X, Y, Z) or (C, X, Y, Z); the result
    is a score map per class (not clipped: its arg-max is the label).
    """
    alphas = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    for a in alphas:
        check_alpha(float(a))
    a = _weights_like(alpha, mixed_pred, mixed_pred.ndim - 1)
    return (mixed_pred - (1 - a) * reference_onehot) / a


def tta_average(unmixed: Array) -> Array:
    """Eq. 6: average the K unmixed predictions (K on the leading axis); for K = 1 the one
    prediction itself (a view, not a copy)."""
    return unmixed[0] if unmixed.shape[0] == 1 else unmixed.mean(0)


def tta_variance(unmixed: Array) -> Array:
    """Per-voxel variance across the K unmixed predictions: the TTA uncertainty map."""
    if isinstance(unmixed, torch.Tensor):
        return unmixed.var(0, unbiased=False) if unmixed.shape[0] > 1 else torch.zeros_like(unmixed[0])
    return unmixed.var(0)


def tta(
    unmixer: Callable[[Array, Array, float], Array],
    mixed_preds: Sequence[Array],
    reference_onehots: Sequence[Array],
    alphas: Sequence[float],
) -> Array:
    """Eq. 5-6 for any unmixer: average ``unmixer(ŷ_mix^k, y_ref^k, α_k)`` over k."""
    if not (len(mixed_preds) == len(reference_onehots) == len(alphas)):
        raise ValueError("TTA needs one mixed prediction, one reference map and one α per mix.")
    outs = [unmixer(p, r, a) for p, r, a in zip(mixed_preds, reference_onehots, alphas)]
    if isinstance(outs[0], torch.Tensor):
        return tta_average(torch.stack(outs))
    return tta_average(np.stack(outs))


def one_hot(labels: Array, num_classes: int, dtype: torch.dtype = torch.float32) -> Array:
    """(…, X, Y, Z) integer labels → (…, C, X, Y, Z) float32 one-hot (tensors: of ``dtype``, built by
    comparison, without an int64 intermediate)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.long() if labels.is_floating_point() else labels
        classes = torch.arange(num_classes, dtype=labels.dtype, device=labels.device).view(num_classes, 1, 1, 1)
        return (labels.unsqueeze(-4) == classes).to(dtype)
    oh = np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]
    return np.moveaxis(oh, -1, -4)


def hard_labels(probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Arg-max over the class axis ``dim`` as uint8 labels: what ``probs.argmax(dim)`` gives for finite
    scores (ties: the first class), by one comparison per class. On the CPU, ``argmax`` over a leading
    axis of a whole volume takes ~0.7 s (a strided reduction); this takes ~0.05 s."""
    classes = probs.unbind(dim)
    best = classes[0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=probs.device)
    for c, scores in enumerate(classes[1:], start=1):
        better = scores > best  # strict: a tie keeps the earlier class, as argmax does
        labels.masked_fill_(better, c)
        torch.maximum(best, scores, out=best)
    return labels


# ---------------------------------------------------------------------------------------
# Patches: target and reference cut at the same coordinates (as the paper's code does)
# ---------------------------------------------------------------------------------------


def sample_patch_corner(
    shape: Sequence[int],
    size: int | Sequence[int],
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
) -> tuple[int, int, int]:
    """Corner of a random patch inside ``shape``; centred on a foreground voxel if given."""
    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    if any(s > n for s, n in zip(size, shape)):
        raise ValueError(f"Patch {size} does not fit in a volume of shape {tuple(shape)}.")
    if foreground is not None and foreground.size:
        return corner_around(foreground[rng.integers(len(foreground))], shape, size)
    corner = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size)]
    return tuple(min(max(c, 0), n - s) for c, n, s in zip(corner, shape, size))  # type: ignore[return-value]


def corner_around(centre: Sequence[int], shape: Sequence[int], size: int | Sequence[int]) -> tuple[int, int, int]:
    """Corner of the patch of ``size`` centred (as near as fits inside ``shape``) on the voxel ``centre``."""
    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    corner = [int(c) - s // 2 for c, s in zip(centre, size)]
    return tuple(min(max(c, 0), n - s) for c, n, s in zip(corner, shape, size))  # type: ignore[return-value]


def patch_slices(corner: Sequence[int], size: int | Sequence[int]) -> tuple[slice, slice, slice]:
    """Spatial slices of the patch at ``corner``."""
    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    return tuple(slice(c, c + s) for c, s in zip(corner, size))  # type: ignore[return-value]
