"""Inference: the server's segmentation of proxies and the client's unmixing with TTA.

Client side: :func:`make_proxies` (Eq. 2 / Eq. 5), :func:`unmix_naive` (Eq. 4),
:func:`unmix_learned` (D), :func:`unmix_learned_tta` (D and Eq. 6 in one pass), :func:`unmix_learned_labels`
(their labels; at K = 1 D's arg-max), :func:`private_segment` (the whole round trip, Eq. 6), :func:`private_labels`
(its labels alone, for a client that keeps nothing else).
Server side: :func:`segment_proxies` (from :mod:`mixdemo.inference`, shared with the server) — it
sees proxies only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from mixdemo.inference import MAX_BATCH_VOXELS, Stacked, reusing_freed_memory, segment_proxies, window_slices
from mixdemo.mixing import MixKey, hard_labels, mirror, naive_unmix, one_hot, tta_average, tta_variance

ProgressFn = Callable[[float, str], None]
__all__ = ["Reference", "PrivateResult", "background_where", "image_correlation", "make_proxies", "most_similar_references", "private_labels", "private_segment", "reference_onehots", "segment_proxies",
           "unmix_learned", "unmix_learned_labels", "unmix_learned_tta", "unmix_naive", "window_slices"]

UNMIX_ROI = (32, 32, 32)
"""D's training patch size: the window of the optional windowed path of :func:`unmix_learned`."""


@dataclass
class Reference:
    """One entry of the client's private reference bank."""

    ref_id: str
    image: np.ndarray  # (X, Y, Z) float32, normalised, on the common grid
    labels: np.ndarray  # (X, Y, Z) uint8


def image_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two scans' intensities on one grid, over the voxels where either is nonzero
    (their brains: the background's zeros would inflate it)."""
    if a.shape != b.shape:
        raise ValueError(f"The scans must share one grid: got {a.shape} and {b.shape}.")
    where = (a != 0) | (b != 0)
    x, y = a[where].astype(np.float64), b[where].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def most_similar_references(target: np.ndarray, references: Sequence[Reference], k: int) -> list[Reference]:
    """The ``k`` references whose scans correlate best with the target (:func:`image_correlation`), best first
    (ties by id): a choice only the client can make, since it holds the target and its bank. Measured against
    random references, utility and privacy both, by ``python -m training.reference_choice``."""
    if not 1 <= k <= len(references):
        raise ValueError(f"k must be between 1 and the number of references ({len(references)}); got {k}.")
    scored = sorted(references, key=lambda r: (-image_correlation(target, r.image), r.ref_id))
    return scored[:k]


def make_proxies(target: np.ndarray, references: Sequence[Reference], key: MixKey) -> np.ndarray:
    """Client: K proxies x_mix^k = α_k·x + (1 − α_k)·x_ref^k (Eq. 2 and 5) as (K, X, Y, Z) float32; in the key's
    mirrored mixes x is the target's mirror image (:func:`mixdemo.mixing.mirror`)."""
    if len(references) != key.k:
        raise ValueError(f"The key names {key.k} references but {len(references)} were given.")
    for r in references:
        if r.image.shape != target.shape:
            raise ValueError(f"References {r.image.shape} and target {target.shape} must share one grid.")
    target = np.asarray(target, dtype=np.float32)
    mirrored_ks = set(key.mirrored_mixes)
    mirrored = mirror(target) if mirrored_ks else None
    alphas = np.asarray(key.alphas, dtype=np.float32)
    proxies = np.empty((len(references), *target.shape), dtype=np.float32)
    scaled = np.empty_like(target)
    for k, ref in enumerate(references):  # Eq. 2 in place, mix by mix: (1 − α)·x_ref, then + α·x (as mix() adds)
        np.multiply(ref.image, 1 - alphas[k], out=proxies[k], dtype=np.float32, casting="unsafe")
        np.multiply(mirrored if k in mirrored_ks else target, alphas[k], out=scaled)
        proxies[k] += scaled
    return proxies


def unmirror_(answers: torch.Tensor, key: MixKey) -> torch.Tensor:
    """Client: the (K, C, X, Y, Z) answers of the key's mirrored mixes mirrored back, in place, so that every mix's
    answer is the target's (Eq. 6 then averages like with like)."""
    for k in key.mirrored_mixes:
        answers[k] = mirror(answers[k])
    return answers


def reference_onehots(references: Sequence[Reference], dtype: torch.dtype = torch.float32, *,
                      num_classes: int) -> torch.Tensor:
    """(K, C, X, Y, Z) one-hot reference labels, C = ``num_classes`` (S's output channels; ``torch.uint8`` takes a
    quarter of the memory; the unmixing functions take either). A ValueError if a label is not below C."""
    labels = np.stack([r.labels for r in references])
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(f"A reference's labels reach {int(labels.max())}, but the segmentation gives {num_classes} "
                         f"classes (0 to {num_classes - 1}): use references labelled as the server's model was trained.")
    return one_hot(torch.from_numpy(labels), num_classes, dtype)


def unmix_naive(mixed_probs: torch.Tensor, ref_onehot: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """Client, Eq. 4 for each of the K mixes: (K, C, X, Y, Z) scores."""
    return naive_unmix(mixed_probs, ref_onehot, np.asarray(alphas, dtype=np.float32))


def mix_weights(alphas: Sequence[float] | Sequence[Sequence[float]]) -> torch.Tensor:
    """(K, 1 + R) weights of each mix: α and 1 − α for Eq. 2, or the given rows (R references per mix)."""
    w = torch.as_tensor(np.asarray(alphas, dtype=np.float32))
    return torch.stack([w, 1 - w], 1) if w.ndim == 1 else w


@torch.inference_mode()
@reusing_freed_memory()
def unmix_learned(
    unmix_model: torch.nn.Module,
    mixed_probs: torch.Tensor,
    ref_onehot: torch.Tensor,
    alphas: Sequence[float] | Sequence[Sequence[float]],
    *,
    brain_mask: np.ndarray | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int = 16,
) -> torch.Tensor:
    """Client, D(ŷ_mix, y_ref, α) for each of the K mixes: (K, C, X, Y, Z) probabilities.

    ``roi_size=None`` (the default) runs D on the whole volume, one mix at a time (small volumes
    batched): its instance norm then takes its statistics over the whole grid, which measured
    better Dice than D's 32³ training windows on the phantom test volumes, at about half the time
    (``python -m mixdemo.bench``, ``levers.unmix_windows``). With ``roi_size`` D sees the windows of
    MONAI's sliding window (``overlap``, logits averaged) batched across the K mixes, skipping
    windows without a voxel of ``brain_mask``. Either way, with ``brain_mask`` (the target's own
    brain, which the client knows) voxels outside it are background with probability 1.
    ``alphas``: one α per mix, or (K, 1 + R) weights for D trained with R references per mix.
    """
    if roi_size is not None:
        return _unmix_windows(unmix_model, mixed_probs, ref_onehot, alphas, brain_mask=brain_mask,
                              roi_size=roi_size, overlap=overlap, batch_size=batch_size)
    outs = Stacked(mixed_probs.shape[0])
    for start, probs in _unmix_whole(unmix_model, mixed_probs, ref_onehot, alphas):
        outs.put(start, probs)
    probs = outs.tensor
    if brain_mask is not None:
        background_where(probs, torch.from_numpy(~np.asarray(brain_mask, dtype=bool)))
    return probs


@torch.inference_mode()
@reusing_freed_memory()
def unmix_learned_tta(
    unmix_model: torch.nn.Module,
    mixed_probs: torch.Tensor,
    ref_onehot: torch.Tensor,
    alphas: Sequence[float] | Sequence[Sequence[float]],
    *,
    brain_mask: np.ndarray | None = None,
) -> torch.Tensor:
    """Client, Eq. 6 with D: the mean over the K mixes of D's whole-volume probabilities, (C, X, Y, Z).

    ``tta_average(unmix_learned(...))`` to float rounding, but each mix's output is added to a running
    sum as it comes, so the K unmixed maps are never held together (K = 10 on the phantom grid: 0.7 GB
    less). For a client that keeps only the TTA answer (``python -m mixdemo.bench``).
    """
    total: torch.Tensor | None = None
    for _, probs in _unmix_whole(unmix_model, mixed_probs, ref_onehot, alphas):
        part = probs.sum(0) if probs.shape[0] > 1 else probs[0]
        total = part if total is None else total.add_(part)
    assert total is not None  # at least one mix
    if mixed_probs.shape[0] > 1:
        total.div_(mixed_probs.shape[0])
    if brain_mask is not None:
        background_where(total[None], torch.from_numpy(~np.asarray(brain_mask, dtype=bool)))
    return total


@torch.inference_mode()
def unmix_learned_labels(
    unmix_model: torch.nn.Module,
    mixed_probs: torch.Tensor,
    ref_onehot: torch.Tensor,
    alphas: Sequence[float] | Sequence[Sequence[float]],
    *,
    brain_mask: np.ndarray | None = None,
) -> torch.Tensor:
    """Client, the labels of Eq. 6 with D: ``hard_labels(unmix_learned_tta(...))``, (X, Y, Z) uint8, background
    outside ``brain_mask``.

    With one mix Eq. 6 is the identity and the softmax is monotone, so the labels are the arg-max of D's logits:
    no probability maps are made or masked (the same labels but where float rounding ties two classes). With
    several, the probabilities are averaged as Eq. 6 says. For a client that keeps only the labels.
    """
    if mixed_probs.shape[0] > 1:
        return hard_labels(unmix_learned_tta(unmix_model, mixed_probs, ref_onehot, alphas, brain_mask=brain_mask))
    with reusing_freed_memory():
        ((_, logits),) = _unmix_whole(unmix_model, mixed_probs, ref_onehot, alphas, softmax=False)
        labels = hard_labels(logits[0])
    if brain_mask is not None:
        labels.masked_fill_(torch.from_numpy(~np.asarray(brain_mask, dtype=bool)), 0)
    return labels


def _unmix_whole(
    unmix_model: torch.nn.Module,
    mixed_probs: torch.Tensor,
    ref_onehot: torch.Tensor,
    alphas: Sequence[float] | Sequence[Sequence[float]],
    *,
    softmax: bool = True,
) -> Iterator[tuple[int, torch.Tensor]]:
    """D on whole volumes, one mix at a time (small volumes batched): yields (first mix, its (n, C, X, Y, Z)
    CPU probabilities) per batch; ``softmax=False``: D's float32 logits instead (a view on the volume's grid)."""
    device = next(unmix_model.parameters()).device
    k_mixes = mixed_probs.shape[0]
    shape = tuple(mixed_probs.shape[-3:])
    weights = mix_weights(alphas)
    multiple = getattr(unmix_model, "size_multiple", 2)  # D's sides: multiples of its patch × one pooling
    pad = [v for n in shape[::-1] for v in (0, -n % multiple)]  # (edge values repeated)
    per_batch = max(1, MAX_BATCH_VOXELS // int(np.prod(shape)))
    for start in range(0, k_mixes, per_batch):
        sl = slice(start, start + per_batch)
        y_mix, y_ref = mixed_probs[sl].float(), ref_onehot[sl]  # D takes the one-hot labels in any dtype
        if any(pad):
            y_mix = torch.nn.functional.pad(y_mix, pad, mode="replicate")
            y_ref = torch.nn.functional.pad(y_ref, pad, mode="replicate")
        logits = unmix_model(y_mix.to(device), y_ref.to(device), weights[sl].to(device)).float().cpu()
        logits = logits[..., : shape[0], : shape[1], : shape[2]]
        yield start, torch.softmax(logits, 1) if softmax else logits
        del logits


def background_where(probs: torch.Tensor, where: torch.Tensor) -> None:
    """In place: probability 1 of background (and 0 of every other class) at the voxels of ``where`` (X, Y, Z), for
    every mix of ``probs`` (K, C, X, Y, Z) (masked fills, no index tensors): the client's answer outside the target's
    brain."""
    probs.masked_fill_(where, 0.0)
    probs[:, 0].masked_fill_(where, 1.0)


def _unmix_windows(
    unmix_model: torch.nn.Module,
    mixed_probs: torch.Tensor,
    ref_onehot: torch.Tensor,
    alphas: Sequence[float] | Sequence[Sequence[float]],
    *,
    brain_mask: np.ndarray | None,
    roi_size: Sequence[int],
    overlap: float,
    batch_size: int,
) -> torch.Tensor:
    """:func:`unmix_learned` on MONAI's sliding windows, batched across mixes; windows without brain are
    skipped (exact inside the mask: every window covering a brain voxel holds one)."""
    device = next(unmix_model.parameters()).device
    k_mixes, n_cls = mixed_probs.shape[:2]
    shape = tuple(mixed_probs.shape[-3:])
    weights = mix_weights(alphas)
    pads = [max(r - n, 0) for r, n in zip(roi_size, shape)]  # volumes smaller than a window: pad like MONAI
    halves = [(p // 2, p - p // 2) for p in pads]
    torch_pad = [v for pair in halves[::-1] for v in pair]
    mixed_in = torch.nn.functional.pad(mixed_probs, torch_pad) if any(pads) else mixed_probs
    refs_in = torch.nn.functional.pad(ref_onehot, torch_pad) if any(pads) else ref_onehot
    padded = tuple(mixed_in.shape[-3:])
    windows = window_slices(padded, roi_size, overlap)
    if brain_mask is not None:
        mask = np.pad(np.asarray(brain_mask, dtype=bool), halves)
        windows = [w for w in windows if mask[w].any()]
    count = torch.zeros((1, 1, *padded))
    for w in windows:
        count[(0, 0, *w)] += 1
    logit_sum = torch.zeros((k_mixes, n_cls, *padded))
    jobs = [(k, w) for k in range(k_mixes) for w in windows]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        y_mix = torch.stack([mixed_in[(k, slice(None), *w)] for k, w in chunk]).float().to(device)
        y_ref = torch.stack([refs_in[(k, slice(None), *w)] for k, w in chunk]).float().to(device)
        logits = unmix_model(y_mix, y_ref, weights[[k for k, _ in chunk]].to(device)).float().cpu()
        for (k, w), window_logits in zip(chunk, logits):
            logit_sum[(k, slice(None), *w)] += window_logits
    probs = torch.softmax(logit_sum / count.clamp(min=1), 1)
    background_where(probs, count[0, 0] == 0)  # outside every computed window: background
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(halves, shape))
    return probs[(slice(None), slice(None), *crop)].contiguous()


@dataclass
class PrivateResult:
    """Everything the client holds after one private segmentation (K mixes)."""

    proxies: np.ndarray  # (K, X, Y, Z) — the only thing the server received
    mixed_probs: torch.Tensor  # (K, C, X, Y, Z) — what the server returned (a mirrored mix's: of its mirrored target)
    naive: torch.Tensor  # (K, C, X, Y, Z) Eq. 4 scores, every mix's in the target's orientation
    learned: torch.Tensor | None  # (K, C, X, Y, Z) D's probabilities, likewise
    brain_mask: np.ndarray | None = None  # the target's own brain (x > 0): known to the client only

    @functools.cached_property
    def naive_tta(self) -> torch.Tensor:
        """Eq. 6 with the naive unmixer: (C, X, Y, Z)."""
        return tta_average(self.naive)

    @functools.cached_property
    def learned_tta(self) -> torch.Tensor | None:
        """Eq. 6 with D: (C, X, Y, Z)."""
        return None if self.learned is None else tta_average(self.learned)

    def labels(self, which: str = "learned_tta") -> np.ndarray:
        """Arg-max label map of ``naive``, ``naive_tta``, ``learned``, ``learned_tta`` (first mix for single)."""
        return self.labels_of(self._prediction(which))

    def scores(self, which: str = "learned_tta") -> np.ndarray:
        """The (C, X, Y, Z) float32 scores whose arg-max is :meth:`labels` (``which`` as there): background's 1 and
        every other class's 0 outside the target's brain. What to carry onto another grid
        (:func:`mixdemo.preprocess.scores_to_source_grid`)."""
        scores = self._prediction(which).float().clone()
        if self.brain_mask is not None:
            background_where(scores[None], torch.from_numpy(~self.brain_mask))
        return scores.numpy()

    def _prediction(self, which: str) -> torch.Tensor:
        """The (C, X, Y, Z) scores named ``which``: ``naive``, ``naive_tta``, ``learned``, ``learned_tta``."""
        getters = {"naive": lambda: self.naive[0], "naive_tta": lambda: self.naive_tta,
                   "learned": lambda: None if self.learned is None else self.learned[0], "learned_tta": lambda: self.learned_tta}
        if which not in getters:
            raise ValueError(f"Unknown prediction {which!r}; one of {', '.join(getters)}.")
        probs = getters[which]()
        if probs is None:
            raise ValueError("No learned unmixing in this result.")
        return probs

    def labels_of(self, probs: torch.Tensor) -> np.ndarray:
        """The arg-max label map of (C, X, Y, Z) scores, background outside the target's brain: D was trained on
        patches around the brain, and outside the target's own (skull-stripped) brain, which the client knows,
        the answer is background whatever the unmixer says."""
        labels = hard_labels(probs).numpy()
        return labels if self.brain_mask is None else np.where(self.brain_mask, labels, 0).astype(np.uint8)

    def uncertainty(self) -> np.ndarray:
        """TTA uncertainty: per-voxel variance across the K unmixed predictions, summed over classes."""
        preds = self.learned if self.learned is not None else self.naive
        return tta_variance(preds).sum(0).numpy()


def private_segment(
    target: np.ndarray,
    references: Sequence[Reference],
    key: MixKey,
    server: Callable[[np.ndarray], torch.Tensor],
    unmix_model: torch.nn.Module | None,
    *,
    progress: ProgressFn | None = None,
) -> PrivateResult:
    """The client's round trip: mix (Eq. 2/5), send proxies to ``server``, unmix (Eq. 4 / D), TTA (Eq. 6).

    ``server`` is any callable taking the (K, X, Y, Z) proxies and returning (K, C, X, Y, Z)
    probabilities: :func:`segment_proxies` locally, or a remote call (``mixdemo.client``).
    """
    if len(references) != key.k:
        raise ValueError(f"The key names {key.k} references but {len(references)} were given.")
    if progress:
        progress(0.0, "client: mixing")
    proxies = make_proxies(target, references, key)
    brain = target > 0
    mixed = server(proxies)
    ref_oh = reference_onehots(references, torch.uint8, num_classes=mixed.shape[1])
    with torch.inference_mode():  # the answers may be inference tensors: mirrored back in place
        naive = unmirror_(unmix_naive(mixed, ref_oh, key.alphas), key)
        learned = None
        if unmix_model is not None:
            if progress:
                progress(0.9, "client: learned unmixing")
            # the brain mask is the target's, so it applies once every answer is in the target's orientation
            learned = unmirror_(unmix_learned(unmix_model, mixed, ref_oh, key.alphas), key)
            background_where(learned, torch.from_numpy(~brain))
    return PrivateResult(proxies=proxies, mixed_probs=mixed, naive=naive, learned=learned, brain_mask=brain)


@torch.inference_mode()
def private_labels(
    target: np.ndarray,
    references: Sequence[Reference],
    key: MixKey,
    server: Callable[[np.ndarray], torch.Tensor],
    unmix_model: torch.nn.Module | None,
    *,
    per_call: int,
    progress: ProgressFn | None = None,
    scores: bool = False,
) -> np.ndarray:
    """The client's round trip when it keeps only the labels (the command-line client): Eq. 2/5, the server,
    D (or Eq. 4 without D) and Eq. 6 over ``per_call`` mixes at a time, summed as they come, so neither the
    K proxies, the K mixed segmentations nor the K unmixed maps are held together (K = 10 on the phantom
    grid: about 2 GB less than :func:`private_segment`). The labels are those of
    ``private_segment(...).labels("learned_tta")`` (``"naive_tta"`` without D) to float rounding: (X, Y, Z)
    uint8, background outside the target's brain.

    With ``scores``, Eq. 6's average scores instead of their arg-max (``private_segment(...).scores(...)``): (C, X, Y,
    Z) float32, background's 1 and every other class's 0 outside the target's brain; for a scan whose labels go onto
    another grid (:func:`mixdemo.preprocess.scores_to_source_grid`).
    """
    if len(references) != key.k:
        raise ValueError(f"The key names {key.k} references but {len(references)} were given.")
    if key.k == 1 and unmix_model is not None and not scores:  # one mix: D's arg-max (unmix_learned_labels)
        return _one_mix_labels(target, references, key, server, unmix_model, progress)
    average = _tta_scores(target, references, key, server, unmix_model, per_call, progress)
    if scores:  # float32 whatever the server answered in (float16, bfloat16: NumPy has no bfloat16)
        average = average.float()
        background_where(average[None], torch.from_numpy(~(target > 0)))
        return average.numpy()
    return np.where(target > 0, hard_labels(average).numpy(), 0).astype(np.uint8)


def _tta_scores(target: np.ndarray, references: Sequence[Reference], key: MixKey,
                server: Callable[[np.ndarray], torch.Tensor], unmix_model: torch.nn.Module | None, per_call: int,
                progress: ProgressFn | None) -> torch.Tensor:
    """Eq. 6's average of the key's unmixed answers, (C, X, Y, Z), ``per_call`` mixes a request, summed as they come."""
    total: torch.Tensor | None = None
    for start in range(0, key.k, max(1, per_call)):
        part_key = key.part(start, start + per_call)
        part_refs = references[start : start + per_call]
        if progress:
            progress(start / key.k, f"client: mixing {start + 1}-{start + part_key.k} of {key.k}")
        mixed = server(make_proxies(target, part_refs, part_key))
        ref_oh = reference_onehots(part_refs, torch.uint8, num_classes=mixed.shape[1])
        if progress:
            progress((start + part_key.k) / key.k, "client: unmixing")
        part = _unmixed_sum(unmix_model, mixed, ref_oh, part_key)
        del mixed
        total = part if total is None else total.add_(part)
    assert total is not None  # K >= 1
    return total.div_(key.k)


def _one_mix_labels(target: np.ndarray, references: Sequence[Reference], key: MixKey,
                    server: Callable[[np.ndarray], torch.Tensor], unmix_model: torch.nn.Module,
                    progress: ProgressFn | None) -> np.ndarray:
    """:func:`private_labels` for a key of one mix with D: the labels of D's logits, mirrored back if the key
    mirrors its mix, then background outside the target's brain."""
    if progress:
        progress(0.0, "client: mixing 1-1 of 1")
    mixed = server(make_proxies(target, references, key))
    ref_oh = reference_onehots(references, torch.uint8, num_classes=mixed.shape[1])
    if progress:
        progress(1.0, "client: unmixing")
    labels = unmix_learned_labels(unmix_model, mixed, ref_oh, key.alphas)
    labels = mirror(labels) if key.is_mirrored(0) else labels
    return labels.masked_fill_(torch.from_numpy(~(target > 0)), 0).numpy()


def _unmixed_sum(unmix_model: torch.nn.Module | None, mixed: torch.Tensor, ref_onehot: torch.Tensor,
                 key: MixKey) -> torch.Tensor:
    """The sum over the key's mixes of their unmixed answers (D's, or Eq. 4's without D), (C, X, Y, Z), each in the
    target's orientation: each run of consecutive mixes mirrored alike is summed as a view of the answers (no copy
    of them) and a mirrored run's sum mirrored back (the mirror is linear)."""
    total: torch.Tensor | None = None
    for start, stop, flip in _mirroring_runs(key):
        alphas = key.alphas[start:stop]
        if unmix_model is None:
            part = unmix_naive(mixed[start:stop], ref_onehot[start:stop], alphas).sum(0)
        else:
            part = unmix_learned_tta(unmix_model, mixed[start:stop], ref_onehot[start:stop], alphas).mul_(stop - start)
        part = mirror(part) if flip else part
        total = part if total is None else total.add_(part)
    assert total is not None  # K >= 1
    return total


def _mirroring_runs(key: MixKey) -> list[tuple[int, int, bool]]:
    """(start, stop, mirrored) of each maximal run of consecutive mixes that the key mirrors alike."""
    runs: list[tuple[int, int, bool]] = []
    for k in range(key.k):
        flag = key.is_mirrored(k)
        if runs and runs[-1][2] == flag:
            runs[-1] = (runs[-1][0], k + 1, flag)
        else:
            runs.append((k, k + 1, flag))
    return runs
