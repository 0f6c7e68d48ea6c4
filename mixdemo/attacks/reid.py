"""Patient re-identification by MS-SSIM retrieval (Kim et al., Mixup-Privacy, Sec. 4, Table 2).

Each scan is encoded by mixing it with a randomly chosen reference (Eq. 2); each encoded scan's
nearest other encoded scan by 3D MS-SSIM predicts its identity; F1 and mAP score the retrieval
(:func:`mixdemo.metrics.reid_metrics`). "No proxy" runs the same retrieval on the raw scans: the
positive control (the paper measures mAP 0.998 on PPMI).

Whole volumes are compared after ``factor``× average pooling (default 2: 144×192×160 → 72×96×80,
MS-SSIM with 4 scales and a 7-wide window), which keeps the all-pairs matrix to seconds on a CPU
while keeping the anatomy (cortical folds, ventricles) that identifies a subject.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mixdemo.metrics import ReidResult, msssim_matrix, reid_metrics

DOWNSAMPLE = 2
"""Average-pooling factor of whole volumes before MS-SSIM retrieval."""


def downsample(volumes: np.ndarray | torch.Tensor, factor: int = DOWNSAMPLE) -> np.ndarray:
    """``factor``× average pooling of (N, X, Y, Z) or (X, Y, Z) volumes (sides cropped to multiples)."""
    if factor < 1:
        raise ValueError(f"factor must be ≥ 1; got {factor}.")
    v = torch.as_tensor(np.asarray(volumes) if isinstance(volumes, np.ndarray) else volumes, dtype=torch.float32)
    single = v.ndim == 3
    if single:
        v = v[None]
    if v.ndim != 4:
        raise ValueError(f"Expected volumes of shape (N, X, Y, Z) or (X, Y, Z); got {tuple(v.shape)}.")
    if factor > 1:
        v = F.avg_pool3d(v[:, None], factor)[:, 0]
    out = v.numpy()
    return out[0] if single else out


def retrieval(volumes: np.ndarray, identities: Sequence[Hashable]) -> ReidResult:
    """Table 2's protocol on (N, X, Y, Z) volumes (already downsampled): MS-SSIM matrix → F1, mAP."""
    if len(volumes) != len(identities):
        raise ValueError(f"Expected one identity per volume; got {len(volumes)} volumes and {len(identities)} identities.")
    return reid_metrics(msssim_matrix(volumes), list(identities))


def deviation_similarity(queries: np.ndarray, gallery: np.ndarray, population_mean: np.ndarray) -> np.ndarray:
    """(Q, G) Pearson correlations of each query's deviation from the population mean with each gallery scan's:
    the anatomy that is one person's own. A proxy carries α of its target's deviation and (1 − α) of its
    reference's, so it still correlates with its target's other scans."""
    def unit(v: np.ndarray) -> np.ndarray:
        flat = (np.asarray(v, np.float64) - population_mean).reshape(len(v), -1)
        flat -= flat.mean(1, keepdims=True)
        return flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-12)

    return unit(queries) @ unit(gallery).T


def proxy_to_scan_experiment(
    targets: np.ndarray,
    identities: Sequence[Hashable],
    references: np.ndarray,
    population_mean: np.ndarray,
    *,
    alpha_range: tuple[float, float],
    n_draws: int = 5,
    seed: int = 0,
) -> dict:
    """A server that already holds identified raw scans (a patient's earlier visit) matches each proxy against them.

    Query i is a proxy of scan i (Eq. 2, a random reference, α ~ U(alpha_range)); the gallery is every raw scan but
    scan i itself, so the right answer is the subject's other scan. Similarity: :func:`deviation_similarity`. Scored
    with :func:`mixdemo.metrics.reid_metrics` like Table 2 (row i of an (N, N) matrix, the diagonal ignored), so it
    reads against the proxy-to-proxy retrieval and its chance level.
    """
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(n_draws):
        proxies = encode_with_random_references(targets, references, alpha_range, rng)[0]
        runs.append(reid_metrics(deviation_similarity(proxies, targets, population_mean), list(identities)))
    return {"f1": float(np.mean([r.f1 for r in runs])), "map": float(np.mean([r.map for r in runs])),
            "top1": float(np.mean([r.top1_accuracy for r in runs])), "map_std": float(np.std([r.map for r in runs])),
            "n_draws": n_draws, "similarity": "correlation of deviations from the public template",
            "what": "proxies against a gallery of identified raw scans (each subject's other scan among them)"}


def chance_levels(identities: Sequence[Hashable], n_rankings: int = 2000, seed: int = 0) -> dict:
    """F1, mAP and top-1 of a retrieval that ranks at random (i.i.d. similarities), averaged over ``n_rankings``:
    what the protocol scores with no information, which grows as the gallery shrinks (12 scans: mAP ≈ 0.27)."""
    rng = np.random.default_rng(seed)
    runs = [reid_metrics(rng.random((len(identities), len(identities))), list(identities)) for _ in range(n_rankings)]
    return {"f1": float(np.mean([r.f1 for r in runs])), "map": float(np.mean([r.map for r in runs])),
            "top1": float(np.mean([r.top1_accuracy for r in runs])), "n_rankings": n_rankings}


def encode_with_random_references(
    targets: np.ndarray,
    references: np.ndarray,
    alpha_range: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 2 with one random reference and α ~ U(alpha_range) per target.

    Args:
        targets: (N, X, Y, Z) scans to encode.
        references: (R, X, Y, Z) reference pool (other subjects: the training subjects).

    Returns:
        (proxies (N, X, Y, Z), reference indices (N,), alphas (N,)).
    """
    lo, hi = alpha_range
    idx = rng.integers(len(references), size=len(targets))
    alphas = rng.uniform(lo, hi, size=len(targets)).astype(np.float32)
    proxies = alphas[:, None, None, None] * targets + (1 - alphas[:, None, None, None]) * references[idx]
    return proxies.astype(np.float32), idx, alphas


def reid_experiment(
    targets: np.ndarray,
    identities: Sequence[Hashable],
    references: np.ndarray,
    *,
    alpha_range: tuple[float, float],
    n_draws: int = 5,
    seed: int = 0,
) -> dict:
    """Table 2: retrieval on raw scans ("no proxy") and on mixup proxies, averaged over reference draws.

    Args:
        targets: (N, X, Y, Z) downsampled test scans (test–retest pairs share an identity).
        identities: subject of each scan.
        references: (R, X, Y, Z) downsampled reference pool (training subjects).
        alpha_range: α ~ U(alpha_range) per proxy.
        n_draws: independent draws of references and α (the metric is averaged over them).
        seed: RNG seed.

    Returns:
        ``{"no_proxy": {"f1", "map", "top1"}, "mixup": {"f1", "map", "top1", "map_std", "n_draws"},
        "chance": {"f1", "map", "top1"} (:func:`chance_levels`), "n_scans"}``.
    """
    raw = retrieval(targets, identities)
    rng = np.random.default_rng(seed)
    runs = [retrieval(encode_with_random_references(targets, references, alpha_range, rng)[0], identities)
            for _ in range(n_draws)]
    return {
        "no_proxy": {"f1": raw.f1, "map": raw.map, "top1": raw.top1_accuracy},
        "mixup": {
            "f1": float(np.mean([r.f1 for r in runs])),
            "map": float(np.mean([r.map for r in runs])),
            "top1": float(np.mean([r.top1_accuracy for r in runs])),
            "map_std": float(np.std([r.map for r in runs])),
            "n_draws": n_draws,
        },
        "chance": chance_levels(identities, seed=seed),
        "n_scans": len(targets),
        "alpha_range": list(alpha_range),
    }
