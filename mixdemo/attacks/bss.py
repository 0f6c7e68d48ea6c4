"""Blind source separation of mixup proxies by annealed Langevin dynamics with a score prior.

The attack of Kim et al. (Mixup-Privacy, Table 1 and Fig. 4): the server sees a proxy
m = α·x + (1 − α)·x_ref (Eq. 2) and tries to recover the target x with the "deep generative
priors" separation of Jayaram & Thickstun (ICML 2020, Algorithm 1). Both sources are sampled
jointly from p(x₁, x₂ | m) by noise-annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1):

    for each level i = 1…L with η_i = δ·σ_i² / σ_L²,  T steps of
        x_j ← x_j + η_i·[ s(x_j, σ_i) + a_j·(m − a₁x₁ − a₂x₂) / σ_i² ] + √(2η_i)·z_j,   z_j ~ N(0, I)

with mixing weights (a₁, a₂) = (α, 1 − α); the consistency term is −∇_{x_j} ½‖m − g(x)‖² / σ_i².

Schedule: all the prior's levels from σ_1 (of the order of the largest distance between patches) to
σ_L. The network's score is used at σ ≤ ``max_sigma`` (3 by default); above it, where noise dwarfs the
data's own spread, the score is the closed form of the Gaussian the smoothed prior converges to
(``tail``: mean and variance of population brain patches). The network trained on 10 levels
(ratio 2.9 between levels, on 2 CPU cores) cannot carry chains across the high levels itself: the
evaluation records that ablation and the one that skips those levels.

Settings:
* ``alpha`` known (an upper bound on the attacker), or unknown: the same sampler is run on a
  grid over the client's public α range folded to α ≥ 0.5 (α and 1 − α are the same problem with the
  sources swapped; :data:`ALPHA_GRID`) and each
  chain keeps the α whose sources the prior finds most plausible (:func:`prior_energy`).
* Several random initialisations per proxy (the paper's Fig. 4).
* Scored by 3D MS-SSIM of the recovered target under the best assignment of the two sources.

Positive controls (:func:`known_reference_recovery`, ``fixed_reference=`` and α = 1) show the
machinery recovers a target whenever the problem is determined; :func:`langevin_denoise` checks the prior
alone on noisy patches. With the shipped prior its Tweedie step denoises but the annealed chain from the noisy
patch does not (``results/privacy.json``, ``bss.control.denoise``; the README quotes both).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mixdemo.metrics import msssim_3d_batch
from mixdemo.mixing import DEFAULT_ALPHA_RANGE

ProgressFn = Callable[[float, str], None]

def folded_alpha_grid(alpha_range: tuple[float, float], n: int = 5) -> tuple[float, ...]:
    """``n`` α evenly over ``alpha_range`` folded to α ≥ 0.5 (α and 1 − α are one problem, the sources swapped)."""
    folded = [max(a, 1 - a) for a in alpha_range]
    lo = 0.5 if min(alpha_range) < 0.5 < max(alpha_range) else min(folded)
    return tuple(float(a) for a in np.round(np.linspace(lo, max(folded), n), 4))


ALPHA_GRID: tuple[float, ...] = folded_alpha_grid(DEFAULT_ALPHA_RANGE)
"""α values tried when the attacker does not know α: the client's α range is public (the code's
``DEFAULT_ALPHA_RANGE``, U(0.3, 0.5)), folded to α ≥ 0.5, so the attacker searches [0.5, 0.7]. A grid up to 0.9
made the choice by :func:`prior_energy`, which falls as α rises, take the largest α most of the time."""


@dataclass(frozen=True)
class LangevinConfig:
    """Annealed Langevin settings (Song & Ermon 2019, Algorithm 1; Jayaram & Thickstun 2020).

    Attributes:
        steps_per_level: T, Langevin steps at each noise level.
        delta: δ, the step at the last level (η_i = δ·σ_i²/σ_L²).
        chunk: patches per forward pass of the score network (memory bound).
        clip: clip the final sources to [0, 1], the range of normalised images.
        max_sigma: the network's score at levels σ ≤ this (None: at every level); the levels above
            use ``tail``, or are skipped without one. The prior's σ_1 is of the order of the largest
            distance between patches (≈ 140 per voxel for 32³ phantom patches in [0, 1]); with the
            network's score there, chains do not converge (``results/privacy.json``,
            ``bss.alpha_known_full_schedule``).
        tail: (mean, variance) of the data per voxel (:func:`gaussian_tail`, :func:`population_tail`).
            Given, the sampler runs every level from σ_1 and uses above ``max_sigma`` the closed-form
            score of N(mean, (variance + σ²) I), which the data smoothed by noise far above its own
            spread converges to. None: the levels above ``max_sigma`` are skipped.

    δ defaults to 5e-5 (NCSN's ε = 2e-5 with T = 100 is δ = 1e-5 here: its Algorithm 1 steps
    (ε_i/2)·s + √ε_i·z with ε_i = ε·σ_i²/σ_L², this sampler η_i·s + √(2η_i)·z, so η_i = ε_i/2):
    η_i/σ_i² = δ/σ_L² = 0.5 keeps the prior and consistency steps stable while converging in T = 10
    steps per level.
    """

    steps_per_level: int = 20
    delta: float = 5e-5
    chunk: int = 64
    clip: bool = True
    max_sigma: float | None = 3.0
    tail: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.steps_per_level < 1:
            raise ValueError(f"steps_per_level must be ≥ 1; got {self.steps_per_level}.")
        if not self.delta > 0:
            raise ValueError(f"delta must be > 0; got {self.delta}.")


@dataclass
class SeparationResult:
    """Output of :func:`separate` for B proxies and n initialisations.

    Attributes:
        sources: (B, n, S, P, P, P) recovered sources (S = 2 unless ``mixing_weights``), source 0 weighted by α.
        alphas: (B, n) α used by each chain (the true one, or the one selected from the grid).
        consistency: (B, n) RMS of the final residual m − α x̂₁ − (1 − α) x̂₂.
        energy: (B, n) prior energy of the final sources (lower = more plausible).
        completed: False when ``cancel`` stopped the sampler early.
    """

    sources: np.ndarray
    alphas: np.ndarray
    consistency: np.ndarray
    energy: np.ndarray
    completed: bool = True


def _levels(score: nn.Module, max_sigma: float | None = None) -> torch.Tensor:
    """The prior's noise levels, those above ``max_sigma`` dropped (the last level is always kept)."""
    levels = getattr(score, "sigma_levels", None)
    if levels is None:
        raise ValueError("The score model must carry its noise schedule as `sigma_levels` (see ScoreNet).")
    levels = levels.detach().float().cpu()
    if max_sigma is not None:
        keep = levels <= max_sigma
        keep[-1] = True
        levels = levels[keep]
    return levels


def gaussian_tail(patches: np.ndarray) -> tuple[float, float]:
    """(mean, variance) per voxel of population patches: the Gaussian of :attr:`LangevinConfig.tail`."""
    x = np.asarray(patches, dtype=np.float64)
    return float(x.mean()), float(x.var())


def population_tail(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], n: int = 256, seed: int = 0,
                    size: int = 32) -> tuple[float, float]:
    """:func:`gaussian_tail` of ``n`` brain-centred patches of population scans (an attacker's own data)."""
    from mixdemo.attacks.score import sample_brain_patches

    rng = np.random.default_rng(seed)
    return gaussian_tail(sample_brain_patches(list(images), [np.argwhere(np.asarray(lab) > 0) for lab in labels], n, rng, size))


def _schedule(score: nn.Module, config: LangevinConfig) -> list[tuple[float, bool]]:
    """(σ_i, whether the network gives the score) for each level the sampler visits."""
    if config.tail is None:
        return [(float(s), True) for s in _levels(score, config.max_sigma).tolist()]
    limit = math.inf if config.max_sigma is None else config.max_sigma
    return [(float(s), float(s) <= limit) for s in _levels(score, None).tolist()]


def _prior_score(score: nn.Module, x: torch.Tensor, sigma: float, learned: bool, config: LangevinConfig) -> torch.Tensor:
    """s(x, σ): the network's, or at levels above ``max_sigma`` the Gaussian tail's −(x − m) / (v + σ²)."""
    if learned:
        return _score(score, x, sigma, config.chunk)
    mean, var = config.tail  # type: ignore[misc]
    return -(x - mean) / (var + sigma**2)


def _score(score: nn.Module, x: torch.Tensor, sigma: float, chunk: int) -> torch.Tensor:
    """s(x, σ) for (N, P, P, P) patches, in chunks of ``chunk`` patches."""
    out = [score(x[i : i + chunk, None], sigma)[:, 0] for i in range(0, x.shape[0], chunk)]
    return torch.cat(out)


@torch.no_grad()
def annealed_langevin(
    score: nn.Module,
    mixtures: torch.Tensor,
    weights: torch.Tensor,
    *,
    config: LangevinConfig = LangevinConfig(),
    generator: torch.Generator | None = None,
    fixed_second: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[torch.Tensor, bool]:
    """Jayaram & Thickstun (2020), Algorithm 1, for N chains of S sources at once (S = 2: Eq. 2).

    Args:
        score: score model ``score(x (B,1,P,P,P), σ)`` with ``sigma_levels``.
        mixtures: (N, P, P, P) mixtures m.
        weights: (N, S) mixing weights (a₁, …, a_S) of each chain.
        config: T, δ, chunking.
        generator: torch generator on the model's device (initialisations and noise).
        fixed_second: (N, P, P, P) known second source (positive control); then only x₁ moves.
        progress: called with (steps done, total steps).
        cancel: stop at the next step when set.

    Returns:
        ((N, S, P, P, P) sources, completed).
    """
    device = mixtures.device
    schedule = _schedule(score, config)
    n = mixtures.shape[0]
    n_sources = weights.shape[1]
    a = weights.to(device=device, dtype=mixtures.dtype).view(n, n_sources, 1, 1, 1)
    # 1. random initialisation, x_j ~ U(0, 1) (NCSN Algorithm 1)
    x = torch.rand((n, n_sources, *mixtures.shape[1:]), device=device, generator=generator, dtype=mixtures.dtype)
    if fixed_second is not None:
        x[:, 1] = fixed_second
    sigma_l = schedule[-1][0]
    total, done = len(schedule) * config.steps_per_level, 0
    for sigma, learned in schedule:
        # 2. step size η_i = δ·σ_i²/σ_L²
        eta = config.delta * sigma**2 / sigma_l**2
        for _ in range(config.steps_per_level):
            if cancel is not None and cancel.is_set():
                return _finish(x, config), False
            # 3. prior term s(x_j, σ_i) for each source
            moving = x[:, :1] if fixed_second is not None else x
            prior = _prior_score(score, moving.reshape(-1, *x.shape[2:]), sigma, learned, config).view_as(moving)
            # 4. mixture consistency −∇ ½‖m − Σ_j a_j x_j‖² / σ_i² = a_j (m − g(x)) / σ_i²
            residual = mixtures[:, None] - (a * x).sum(1, keepdim=True)
            grad = prior + a[:, : moving.shape[1]] * residual / sigma**2
            # 5. Langevin update with √(2η) noise
            noise = torch.randn(moving.shape, device=device, generator=generator, dtype=x.dtype)
            moving = moving + eta * grad + math.sqrt(2 * eta) * noise
            x = torch.cat([moving, x[:, 1:]], 1) if fixed_second is not None else moving
            done += 1
            if progress is not None:
                progress(done, total)
    return _finish(x, config), True


def _finish(x: torch.Tensor, config: LangevinConfig) -> torch.Tensor:
    return x.clamp(0, 1) if config.clip else x


@torch.no_grad()
def prior_energy(score: nn.Module, sources: torch.Tensor, sigma: float = 0.05, chunk: int = 64) -> torch.Tensor:
    """Plausibility of recovered sources under the prior: mean over sources of ‖σ·s(x̂_j, σ)‖² per voxel.

    σ·s(x, σ) is the network's estimate of the noise in x (NCSNv2 scaling); a source on the
    data manifold carries little. Used to pick α when the attacker does not know it.

    Args:
        sources: (N, S, P, P, P).

    Returns:
        (N,) energies.
    """
    flat = sources.reshape(-1, *sources.shape[2:])
    s = _score(score, flat, sigma, chunk)
    return (sigma * s).pow(2).flatten(1).mean(1).view(sources.shape[0], -1).mean(1)


def _as_batch(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x, dtype=torch.float32)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"{name}: expected (P, P, P) or (B, P, P, P); got shape {tuple(t.shape)}.")
    if any(s % 16 for s in t.shape[1:]):
        raise ValueError(f"{name}: patch sides must be multiples of 16 (U-Net); got {tuple(t.shape[1:])}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite values, found NaN or inf.")
    return t


def separate(
    score: nn.Module,
    proxies: np.ndarray | torch.Tensor,
    alpha: float | Sequence[float] | None = None,
    *,
    mixing_weights: np.ndarray | None = None,
    n_init: int = 4,
    config: LangevinConfig = LangevinConfig(),
    alpha_grid: Sequence[float] = ALPHA_GRID,
    seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> SeparationResult:
    """Blind separation of proxies m = α x + (1 − α) x_ref into two sources (Jayaram & Thickstun 2020).

    Args:
        score: the score prior (:class:`mixdemo.attacks.score.ScoreNet`), on any device.
        proxies: (P, P, P) or (B, P, P, P) proxies, sides multiples of 16.
        alpha: the true α per proxy (attacker knows α: an upper bound), or None (α unknown:
            grid search over ``alpha_grid``, each chain keeps the α of lowest :func:`prior_energy`).
        mixing_weights: instead of ``alpha``, the known weights (B, S) of S ≥ 2 sources per proxy,
            target first (a proxy mixed with S − 1 references, the two-reference defence); the
            result then holds S sources per chain.
        n_init: random initialisations per proxy.
        config: Langevin settings.
        alpha_grid: α values tried when ``alpha`` is None.
        seed: seed of initialisations and Langevin noise.
        progress: ``progress(fraction, message)``.
        cancel: stop early when set; what exists is returned with ``completed=False``.
    """
    if n_init < 1:
        raise ValueError(f"n_init must be ≥ 1; got {n_init}.")
    device = next(score.parameters()).device
    m = _as_batch(proxies, "proxies").to(device)
    b = m.shape[0]
    if mixing_weights is not None:
        return _separate_known_weights(score, m, mixing_weights, n_init, config, seed, progress, cancel)
    known = alpha is not None
    alphas = np.broadcast_to(np.asarray(alpha if known else list(alpha_grid), dtype=np.float64), (b,) if known else (len(alpha_grid),))
    if not np.all((alphas >= 0) & (alphas <= 1)):  # NaN too
        raise ValueError(f"α must lie in [0, 1]; got {alphas.tolist()}.")
    if known:
        return _separate_known_weights(score, m, np.stack([alphas, 1 - alphas], 1), n_init, config, seed, progress,
                                       cancel, what="α known")
    # α unknown: chains ordered (proxy, α candidate, init); each (proxy, init) keeps its lowest-energy α
    g = len(alphas)
    a1 = np.tile(np.repeat(alphas, n_init), b)
    weights = torch.tensor(np.stack([a1, 1 - a1], 1), dtype=torch.float32, device=device)
    mixtures = m.repeat_interleave(g * n_init, 0)
    gen = torch.Generator(device=device).manual_seed(seed)
    x, completed = annealed_langevin(score, mixtures, weights, config=config, generator=gen,
                                     progress=_reporter(progress, f"α unknown ({g} candidates)"), cancel=cancel)
    residual = (mixtures - (weights.view(-1, 2, 1, 1, 1) * x).sum(1)).pow(2).flatten(1).mean(1).sqrt()
    energy = prior_energy(score, x, chunk=config.chunk)
    shape = (b, g, n_init)
    x, residual, energy = x.view(*shape, *x.shape[1:]), residual.view(shape), energy.view(shape)
    chain_alpha = torch.as_tensor(a1, dtype=torch.float32).view(shape)
    idx = energy.argmin(1).cpu()[:, None]
    take = lambda t: torch.gather(t.cpu(), 1, idx.view(b, 1, n_init, *([1] * (t.ndim - 3))).expand(b, 1, n_init, *t.shape[3:]))[:, 0]  # noqa: E731
    return SeparationResult(
        sources=take(x).numpy(),
        alphas=take(chain_alpha).numpy(),
        consistency=take(residual).numpy(),
        energy=take(energy).numpy(),
        completed=completed,
    )


def _reporter(progress: ProgressFn | None, what: str) -> Callable[[int, int], None]:
    """``annealed_langevin``'s (done, total) callback → about 50 ``progress(fraction, message)`` calls."""

    def report(done: int, total: int) -> None:
        if progress is not None and (done % max(1, total // 50) == 0 or done == total):
            progress(done / total, f"Langevin separation, {what}: step {done}/{total}")

    return report


def _separate_known_weights(score: nn.Module, m: torch.Tensor, mixing_weights: np.ndarray, n_init: int,
                            config: LangevinConfig, seed: int, progress: ProgressFn | None,
                            cancel: threading.Event | None, what: str | None = None) -> SeparationResult:
    """:func:`separate` with every source's weight known: (B, S) weights, S sources per chain
    (α known is the case S = 2, weights (α, 1 − α))."""
    b = m.shape[0]
    w = np.asarray(mixing_weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != b or w.shape[1] < 2:
        raise ValueError(f"mixing_weights: expected ({b}, S ≥ 2); got shape {w.shape}.")
    if np.any(w < 0) or not np.allclose(w.sum(1), 1, atol=1e-4):
        raise ValueError("mixing_weights: each row must be non-negative and sum to 1 (a convex mix).")
    weights = torch.tensor(np.repeat(w, n_init, 0), dtype=torch.float32, device=m.device)
    mixtures = m.repeat_interleave(n_init, 0)
    gen = torch.Generator(device=m.device).manual_seed(seed)
    report = _reporter(progress, what or f"{w.shape[1]} sources, weights known")
    x, completed = annealed_langevin(score, mixtures, weights, config=config, generator=gen, progress=report, cancel=cancel)
    residual = (mixtures - (weights.view(*weights.shape, 1, 1, 1) * x).sum(1)).pow(2).flatten(1).mean(1).sqrt()
    energy = prior_energy(score, x, chunk=config.chunk)
    return SeparationResult(
        sources=x.cpu().view(b, n_init, *x.shape[1:]).numpy(),
        alphas=weights[:, 0].cpu().view(b, n_init).numpy(),
        consistency=residual.cpu().view(b, n_init).numpy(),
        energy=energy.cpu().view(b, n_init).numpy(),
        completed=completed,
    )


def known_reference_recovery(proxy: np.ndarray, reference: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Positive control: with x_ref and α known, Eq. 2 inverts exactly, x = (m − (1 − α) x_ref) / α.

    ``alpha`` is a scalar or an array broadcasting against ``proxy`` (e.g. (B, 1, 1, 1)).
    """
    if np.any(np.asarray(alpha) <= 0):
        raise ValueError(f"α must be > 0 to invert Eq. 2; got {alpha}.")
    return (proxy - (1 - alpha) * reference) / alpha


def separate_known_reference(
    score: nn.Module,
    proxies: np.ndarray | torch.Tensor,
    references: np.ndarray | torch.Tensor,
    alpha: float | Sequence[float],
    *,
    config: LangevinConfig = LangevinConfig(),
    seed: int = 0,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Positive control through the same Langevin sampler with source 2 clamped to the true reference.

    Returns:
        (B, P, P, P) recovered targets.
    """
    device = next(score.parameters()).device
    m = _as_batch(proxies, "proxies").to(device)
    r = _as_batch(references, "references").to(device)
    if r.shape != m.shape:
        raise ValueError(f"references must match proxies' shape {tuple(m.shape)}; got {tuple(r.shape)}.")
    a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (m.shape[0],))
    weights = torch.tensor(np.stack([a, 1 - a], 1), dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    x, _ = annealed_langevin(score, m, weights, config=config, generator=gen, fixed_second=r, cancel=cancel)
    return x[:, 0].cpu().numpy()


@torch.no_grad()
def langevin_denoise(
    score: nn.Module,
    noisy: torch.Tensor,
    start_level: int,
    *,
    config: LangevinConfig = LangevinConfig(),
    seed: int = 0,
) -> torch.Tensor:
    """Sanity control of the prior alone: annealed Langevin from ``noisy`` at levels start_level…L, then a Tweedie step.

    No mixture term: the sampler is started at the noisy patch (x + σ_start·z) instead of at
    random, so its output should be closer to x than the input (Song & Ermon 2019, Sec. 4.3).

    Args:
        noisy: (B, P, P, P) noisy patches.
        start_level: index of the first level used (0-based).
    """
    device = next(score.parameters()).device
    levels = _levels(score)[start_level:]
    gen = torch.Generator(device=device).manual_seed(seed)
    x = noisy.to(device).clone()
    sigma_l = float(levels[-1])
    for sigma in levels.tolist():
        eta = config.delta * sigma**2 / sigma_l**2
        for _ in range(config.steps_per_level):
            noise = torch.randn(x.shape, device=device, generator=gen, dtype=x.dtype)
            x = x + eta * _score(score, x, sigma, config.chunk) + math.sqrt(2 * eta) * noise
    x = x + sigma_l**2 * _score(score, x, sigma_l, config.chunk)  # Tweedie's denoising step
    return x.clamp(0, 1) if config.clip else x


def best_assignment_msssim(
    sources: np.ndarray, target: np.ndarray, reference: np.ndarray | None = None
) -> np.ndarray:
    """MS-SSIM of the recovered target under the best assignment of the two recovered sources.

    With ``reference`` the assignment maximises MS-SSIM(target) + MS-SSIM(reference) (a
    permutation of the two sources); without it, the best of the recovered sources for the target.

    Args:
        sources: (B, n, S, P, P, P) recovered sources (S = 2 when ``reference`` is given).
        target: (B, P, P, P) true targets.
        reference: (B, P, P, P) true references, optional.

    Returns:
        (B, n) MS-SSIM values (data range 1: images are normalised to [0, 1]).
    """
    return best_assignment(sources, target, reference)[0]


def best_assignment(
    sources: np.ndarray, target: np.ndarray, reference: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_assignment_msssim`'s (B, n) MS-SSIM values and the (B, n) index of the source assigned to the
    target (the one a figure shows above its score)."""
    if sources.ndim != 6 or sources.shape[2] < 2 or (reference is not None and sources.shape[2] != 2):
        raise ValueError(f"sources: expected (B, n, 2, P, P, P) (or S ≥ 2 sources without reference); got shape {sources.shape}.")
    b, n, n_src = sources.shape[:3]
    flat = sources.reshape(b * n * n_src, *sources.shape[3:])
    tgt = np.repeat(target, n * n_src, axis=0)
    s_t = msssim_3d_batch(flat, tgt, data_range=1.0).reshape(b, n, n_src)
    if reference is None:
        return s_t.max(2), s_t.argmax(2)
    ref = np.repeat(reference, n * 2, axis=0)
    s_r = msssim_3d_batch(flat, ref, data_range=1.0).reshape(b, n, 2)
    keep = (s_t[..., 0] + s_r[..., 1]) >= (s_t[..., 1] + s_r[..., 0])
    return np.where(keep, s_t[..., 0], s_t[..., 1]), np.where(keep, 0, 1)


def best_chain(
    sources: np.ndarray, target: np.ndarray, reference: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per proxy, the chain whose recovered target :func:`best_assignment` scores highest (the record's
    ``best_of_inits``): its (B,) index, the (B,) index of its source assigned to the target, and its (B,) MS-SSIM."""
    scores, shown = best_assignment(sources, target, reference)
    chain = scores.argmax(1)
    rows = np.arange(len(chain))
    return chain, shown[rows, chain], scores[rows, chain]
