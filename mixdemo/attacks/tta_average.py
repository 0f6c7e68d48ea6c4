"""Attacks on what the paper's TTA (Eq. 5) and a shared reference bank send to the server.

* :func:`tta_average_estimate` — Eq. 5 sends K proxies m_k = α x + (1 − α) x_ref^k of one target
  with the *same* α. Their mean is α x + (1 − α)·mean_k x_ref^k, and the mean of K references
  tends to the population mean brain μ, so

      x̂ ∝ mean_k m_k − (1 − α̂)·μ

  estimates α·x, with μ a public template (:func:`template_brain`) and α̂ the attacker's guess
  (the middle of the public α range). The estimate is rescaled like a scan
  (:func:`mixdemo.io.normalize_intensity`), so α̂'s error only shifts contrast.
* :func:`link_requests` — the defence "send the K proxies as separate, shuffled requests": the
  server re-links them by correlation of (proxy − μ) before averaging.
* :func:`reference_reuse_attack` — many targets mixed with one small reference bank: averaging the
  proxies that share a reference reveals it (the targets average to ≈ μ), and a revealed reference
  turns each proxy back into its target with Eq. 2 inverted.

Mixing is linear, so all of this runs on average-pooled whole volumes (pooling commutes with Eq. 2).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.cluster.vq import kmeans2

from mixdemo.io import normalize_intensity
from mixdemo.phantoms import GRID_SHAPE

TEMPLATE_TISSUE_MEANS: tuple[float, float, float] = (0.615, 1.0, 0.225)
"""GM, WM, CSF intensities of the public template brain (T1-like contrast, WM brightest)."""


@functools.lru_cache(maxsize=1)
def template_brain() -> np.ndarray:
    """A public population-mean brain on the common grid: MNI152 2009a tissue maps × T1 contrast.

    The attacker's μ: nilearn's packaged MNI152 probabilities (GM, WM, CSF) on
    :data:`GRID_SHAPE`, weighted by :data:`TEMPLATE_TISSUE_MEANS` and normalised like a scan.
    It uses nothing of the cohort (no training or test scan).
    """
    from mixdemo.phantoms import load_template

    probs = load_template().probs.numpy()
    image = np.tensordot(np.asarray(TEMPLATE_TISSUE_MEANS, np.float32), probs[1:], axes=1)
    if image.shape != GRID_SHAPE:
        raise ValueError(f"Template grid {image.shape} differs from the cohort grid {GRID_SHAPE}.")
    return normalize_intensity(image)


def template_labels() -> np.ndarray:
    """The public template's tissue labels on the common grid (the arg-max of the MNI152 2009a maps: 0 background,
    1 GM, 2 WM, 3 CSF): what anyone can say of a brain in MNI space without seeing it."""
    from mixdemo.phantoms import load_template

    return load_template().probs.numpy().argmax(0).astype(np.uint8)


def rescale(estimate: np.ndarray) -> np.ndarray:
    """Rescale an estimate of α·x to a scan's [0, 1] range (robust 99.5th percentile), per volume."""
    est = np.asarray(estimate, np.float32)
    if est.ndim == 3:
        return normalize_intensity(est) if (est > 0).any() else np.zeros_like(est)
    return np.stack([rescale(e) for e in est])


def tta_average_estimate(proxies: np.ndarray, population_mean: np.ndarray, alpha_guess: float) -> np.ndarray:
    """Estimate of the target from K proxies of it (Eq. 5): rescale(mean_k m_k − (1 − α̂)·μ).

    Args:
        proxies: (K, X, Y, Z) proxies of one target.
        population_mean: (X, Y, Z) μ, e.g. the pooled :func:`template_brain`.
        alpha_guess: α̂, the attacker's guess of the target's weight.

    Returns:
        (X, Y, Z) estimate in [0, 1].
    """
    if proxies.ndim != 4:
        raise ValueError(f"proxies: expected (K, X, Y, Z); got shape {proxies.shape}.")
    if proxies.shape[1:] != population_mean.shape:
        raise ValueError(f"population_mean {population_mean.shape} must match the proxies' grid {proxies.shape[1:]}.")
    # 1. Eq. 5 averaged: mean_k m_k = α x + (1 − α) mean_k x_ref^k
    avg = proxies.mean(0)
    # 2. mean_k x_ref^k ≈ μ: subtract (1 − α̂) μ, leaving ≈ α x
    return rescale(avg - (1 - alpha_guess) * population_mean)


def running_tta_estimates(
    proxies: np.ndarray, population_mean: np.ndarray, alpha_guess: float, ks: list[int]
) -> dict[int, np.ndarray]:
    """:func:`tta_average_estimate` for the first K proxies, for every K in ``ks`` (one pass)."""
    out, total = {}, np.zeros(proxies.shape[1:], np.float64)
    for k in range(1, max(ks) + 1):
        total += proxies[k - 1]
        if k in ks:
            out[k] = rescale((total / k - (1 - alpha_guess) * population_mean).astype(np.float32))
    return out


def deviation_correlations(estimate: np.ndarray, scans: np.ndarray, population_mean: np.ndarray) -> np.ndarray:
    """Pearson correlation of the estimate's deviation from the population mean with each scan's (N, X, Y, Z):
    whether an attack's estimate carries one person's own anatomy. Its MS-SSIM to the target cannot say: that is
    dominated by what every brain shares, so a template alone scores high."""
    from mixdemo.attacks.reid import deviation_similarity

    return deviation_similarity(np.asarray(estimate)[None], np.asarray(scans), population_mean)[0]


def link_requests(proxies: np.ndarray, population_mean: np.ndarray, group_size: int) -> np.ndarray:
    """Re-link shuffled proxies: for each, the indices of itself and its ``group_size − 1`` best matches.

    Similarity: Pearson correlation of (m − μ) over voxels, which cancels the brain shape every
    proxy shares and keeps what a target's K proxies share (α x − α μ).

    Returns:
        (N, group_size) indices, each row starting with the query itself.
    """
    from mixdemo.attacks.reid import deviation_similarity

    corr = deviation_similarity(proxies, proxies, population_mean)
    np.fill_diagonal(corr, np.inf)
    return np.argsort(-corr, axis=1)[:, :group_size]


def cluster_by_reference(proxies: np.ndarray, n_references: int, seed: int = 0) -> np.ndarray:
    """k-means (k = size of the reference bank) on the proxies: which proxies share a reference."""
    flat = proxies.reshape(len(proxies), -1).astype(np.float64)
    _, labels = kmeans2(flat, n_references, minit="++", seed=seed)
    return labels


def reference_reuse_attack(
    proxies: np.ndarray, population_mean: np.ndarray, n_references: int, alpha_guess: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recover a small reference bank and then the targets from many proxies.

    1. cluster the proxies into ``n_references`` groups (one per shared reference);
    2. per group, mean m = ᾱ·mean(x) + (1 − ᾱ) x_ref with mean(x) ≈ μ: x̂_ref = (mean m − α̂ μ) / (1 − α̂);
    3. per proxy, invert Eq. 2 with the recovered reference: x̂ = (m − (1 − α̂) x̂_ref) / α̂.

    Returns:
        (cluster labels (N,), recovered references (n_references, X, Y, Z) rescaled to [0, 1],
        recovered targets (N, X, Y, Z) rescaled to [0, 1]).
    """
    labels = cluster_by_reference(proxies, n_references, seed)
    refs_raw = np.stack([
        (proxies[labels == c].mean(0) - alpha_guess * population_mean) / (1 - alpha_guess)
        if (labels == c).any() else np.zeros_like(population_mean)
        for c in range(n_references)
    ]).astype(np.float32)
    refs_raw = np.clip(refs_raw, 0, None)
    targets = (proxies - (1 - alpha_guess) * refs_raw[labels]) / alpha_guess
    return labels, rescale(refs_raw), rescale(np.clip(targets, 0, None).astype(np.float32))
