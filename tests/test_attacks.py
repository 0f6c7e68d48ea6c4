"""Tests of the attack lab (mixdemo.attacks): score prior, Langevin separation, re-identification,
TTA averaging, reference reuse, output leakage, and the evaluation script's smoke run.

Every attack has a positive control here that must succeed, so that a broken attack can never
pass for a strong defence. Tiny volumes (16³–32³) and tiny or analytic models; no timings asserted.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from mixdemo.attacks import bss, leakage, reid
from mixdemo.attacks import tta_average as tta
from mixdemo.attacks.score import ScoreNet, dsm_loss, max_pairwise_distance, sample_brain_patches, sigmas
from mixdemo.metrics import msssim_3d_batch
from mixdemo.mixing import DEFAULT_ALPHA_RANGE
from mixdemo.models import SegmentationNet, UnmixingNet

TINY = (4, 4, 8, 8, 16, 4)

# ---------------------------------------------------------------------------------- helpers


def smooth_volumes(n: int, side: int = 32, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """n smooth random volumes in [0, 1] (stand-ins for brain patches)."""
    rng = np.random.default_rng(seed)
    out = np.stack([gaussian_filter(rng.standard_normal((side,) * 3), sigma) for _ in range(n)])
    out -= out.min(axis=(1, 2, 3), keepdims=True)
    out /= out.max(axis=(1, 2, 3), keepdims=True)
    return out.astype(np.float32)


class GaussianScore(nn.Module):
    """Exact score of N(μ, τ² I) smoothed by N(0, σ² I): −(x − μ) / (τ² + σ²). An analytic prior."""

    def __init__(self, mu: float = 0.5, tau: float = 0.3, sigma_1: float = 5.0, levels: int = 10) -> None:
        super().__init__()
        self.mu, self.tau = mu, tau
        self.register_buffer("sigma_levels", sigmas(sigma_1, 0.01, levels))
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype)
        s = s.reshape(-1, 1, 1, 1, 1) if s.ndim else s
        return -(x - self.mu) / (self.tau**2 + s**2)


# ---------------------------------------------------------------------------------- score prior


def test_sigmas_geometric_and_validated() -> None:
    s = sigmas(50.0, 0.01, 10)
    assert s.shape == (10,)
    assert s[0] == pytest.approx(50.0) and s[-1] == pytest.approx(0.01)
    assert torch.all(s[1:] < s[:-1])
    ratios = (s[1:] / s[:-1]).numpy()
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)
    with pytest.raises(ValueError, match="sigma_1 > sigma_L"):
        sigmas(0.005, 0.01)
    with pytest.raises(ValueError, match="at least 2"):
        sigmas(1.0, 0.01, 1)


def test_max_pairwise_distance() -> None:
    pts = np.zeros((3, 2, 2, 2), np.float32)
    pts[1] += 1.0  # distance √8 from pts[0]
    pts[2] -= 1.0  # distance 2√8 from pts[1]
    assert max_pairwise_distance(pts) == pytest.approx(2 * np.sqrt(8))
    with pytest.raises(ValueError, match="at least 2 patches"):
        max_pairwise_distance(pts[:1])


def test_sample_brain_patches_are_centred_on_foreground() -> None:
    img = np.zeros((40, 40, 40), np.float32)
    img[20:24, 20:24, 20:24] = 1.0
    fg = np.argwhere(img > 0)
    p = sample_brain_patches([img], [fg], 5, np.random.default_rng(0), size=16)
    assert p.shape == (5, 16, 16, 16)
    assert (p.reshape(5, -1).max(1) == 1.0).all()


def test_score_net_divides_by_sigma_and_roundtrips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = ScoreNet(sigma_1=10.0, features=TINY).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        s1, s2 = m(x, 1.0), m(x, 2.0)
        s_vec = m(x, torch.tensor([1.0, 2.0]))
    assert s1.shape == x.shape
    torch.testing.assert_close(s2, s1 / 2)
    torch.testing.assert_close(s_vec[1], s2[1])
    m.save_pretrained(tmp_path / "score")
    assert (tmp_path / "score" / "config.json").exists() and (tmp_path / "score" / "model.safetensors").exists()
    back = ScoreNet.from_pretrained(str(tmp_path / "score")).eval()
    assert back.sigma_1 == 10.0 and len(back.sigma_levels) == 10
    with torch.no_grad():
        torch.testing.assert_close(back(x, 1.0), s1)
    with pytest.raises(ValueError, match=r"\(B, 1, P, P, P\)"):
        m(torch.rand(2, 16, 16, 16), 1.0)


def test_dsm_loss_of_the_exact_score_is_its_closed_form() -> None:
    """Data N(μ, τ²) per voxel: the exact score of the noised data, −(x̃ − μ)/(τ² + σ²), leaves the residual
    ½ E‖σ s + z‖² = ½ τ²/(τ² + σ²); a perturbation x − σz, or the score's sign flipped, is far from it."""
    gen = torch.Generator().manual_seed(0)
    exact = GaussianScore(mu=0.5, tau=0.3)
    x = 0.5 + 0.3 * torch.randn(8, 1, 16, 16, 16, generator=gen)
    level = torch.tensor([0.5])
    loss = dsm_loss(exact, x, level, generator=torch.Generator().manual_seed(1)).item()
    assert loss == pytest.approx(0.5 * 0.09 / (0.09 + 0.25), rel=0.03)

    class Negated(nn.Module):
        def forward(self, x, sigma):
            return -exact(x, sigma)

    assert dsm_loss(Negated(), x, level, generator=torch.Generator().manual_seed(1)).item() > 3 * loss


def test_dsm_loss_finite_and_decreasing_on_tiny_overfit() -> None:
    torch.manual_seed(0)
    m = ScoreNet(sigma_1=2.0, sigma_L=0.05, n_levels=4, features=TINY)
    x = torch.from_numpy(smooth_volumes(4, side=16))[:, None]
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss = dsm_loss(m, x, m.sigma_levels, generator=gen)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-8:]) < np.mean(losses[:8])


# ---------------------------------------------------------------------------------- Langevin separation


def test_separate_api_shapes_progress_and_cancel() -> None:
    torch.manual_seed(0)
    score = ScoreNet(sigma_1=5.0, features=TINY).eval()
    x, r = smooth_volumes(2, 16, seed=1), smooth_volumes(2, 16, seed=2)
    proxies = 0.6 * x + 0.4 * r
    calls: list[tuple[float, str]] = []
    res = bss.separate(score, proxies, [0.6, 0.6], n_init=3, config=bss.LangevinConfig(steps_per_level=2),
                       progress=lambda f, msg: calls.append((f, msg)))
    assert res.sources.shape == (2, 3, 2, 16, 16, 16)
    assert res.alphas.shape == (2, 3) and np.allclose(res.alphas, 0.6)
    assert res.completed
    assert calls and calls[-1][0] == pytest.approx(1.0)
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    assert np.isfinite(res.sources).all() and res.sources.min() >= 0 and res.sources.max() <= 1

    # α unknown: one α from the grid per chain
    res_u = bss.separate(score, proxies[0], None, n_init=2, config=bss.LangevinConfig(steps_per_level=1))
    assert res_u.sources.shape == (1, 2, 2, 16, 16, 16)
    assert all(np.isclose(a, bss.ALPHA_GRID, atol=1e-6).any() for a in res_u.alphas.ravel())

    # cancel: set from the progress callback after the first report; what exists comes back
    cancel = threading.Event()
    res_c = bss.separate(score, proxies, 0.6, n_init=1, config=bss.LangevinConfig(steps_per_level=50),
                         progress=lambda f, msg: cancel.set(), cancel=cancel)
    assert not res_c.completed
    assert res_c.sources.shape == (2, 1, 2, 16, 16, 16)

    with pytest.raises(ValueError, match="multiples of 16"):
        bss.separate(score, np.zeros((20, 20, 20), np.float32), 0.5)
    with pytest.raises(ValueError, match="n_init"):
        bss.separate(score, proxies, 0.5, n_init=0)


def test_separate_refuses_nan_in_its_proxies_or_alpha_before_sampling() -> None:
    """A NaN voxel in a proxy ran the whole sampler and returned sources of NaN (consistency NaN); a NaN α was refused
    as 'mixing_weights: each row must be non-negative and sum to 1', an argument the caller never gave."""
    score = ScoreNet(sigma_1=1.0, n_levels=2, features=TINY).eval()
    proxy = smooth_volumes(1, 32, seed=1)[0]
    config = bss.LangevinConfig(steps_per_level=1)
    with pytest.raises(ValueError, match=r"α must lie in \[0, 1\]; got \[nan\]"):
        bss.separate(score, proxy, float("nan"), n_init=1, config=config)
    broken = proxy.copy()
    broken[0, 0, 0] = np.nan
    for run in (lambda: bss.separate(score, broken, 0.4, n_init=1, config=config),
                lambda: bss.separate_known_reference(score, broken, proxy, 0.4, config=config),
                lambda: bss.separate_known_reference(score, proxy, broken, 0.4, config=config)):
        with pytest.raises(ValueError, match="expected finite values"):
            run()


def test_alpha_unknown_keeps_each_chain_s_lowest_energy_candidate(monkeypatch) -> None:
    """Each (proxy, initialisation) keeps the α candidate whose sources the prior finds most plausible: an energy
    lowest at α = 0.6 for the first proxy and 0.7 for the second picks those, whatever the chains' order."""
    score = ScoreNet(sigma_1=5.0, features=TINY).eval()
    x, r = smooth_volumes(2, 16, seed=1), smooth_volumes(2, 16, seed=2)
    proxies = 0.6 * x + 0.4 * r
    grid, n_init = (0.5, 0.6, 0.7), 2
    # chains are (proxy, α candidate, initialisation), as separate() documents; the energy of each chain
    best = np.array([0.6, 0.7])
    chain_alpha = np.tile(np.repeat(grid, n_init), 2)
    chain_best = np.repeat(best, len(grid) * n_init)
    monkeypatch.setattr(bss, "prior_energy", lambda *a, **k: torch.as_tensor(np.abs(chain_alpha - chain_best) + 0.1,
                                                                             dtype=torch.float32))
    res = bss.separate(score, proxies, None, n_init=n_init, alpha_grid=grid, config=bss.LangevinConfig(steps_per_level=1))
    np.testing.assert_allclose(res.alphas, [[0.6, 0.6], [0.7, 0.7]], atol=1e-6)
    np.testing.assert_allclose(res.energy, 0.1, atol=1e-6)


def test_the_alpha_grid_is_the_public_range_folded() -> None:
    """α unknown: the attacker searches the client's public α range, folded to α ≥ 0.5 (α and 1 − α swap sources)."""
    assert bss.ALPHA_GRID == bss.folded_alpha_grid(DEFAULT_ALPHA_RANGE) == (0.5, 0.55, 0.6, 0.65, 0.7)
    assert bss.folded_alpha_grid((0.1, 0.9)) == (0.5, 0.6, 0.7, 0.8, 0.9)  # straddling 0.5
    assert bss.folded_alpha_grid((0.6, 0.8), n=3) == (0.6, 0.7, 0.8)


def test_positive_control_known_reference_exact() -> None:
    x, r = smooth_volumes(3, 32, seed=3), smooth_volumes(3, 32, seed=4)
    alpha = np.array([0.3, 0.5, 0.7], np.float32)[:, None, None, None]
    m = alpha * x + (1 - alpha) * r
    rec = bss.known_reference_recovery(m, r, alpha)
    np.testing.assert_allclose(rec, x, atol=1e-5)  # Eq. 2 inverted exactly
    assert msssim_3d_batch(rec, x, data_range=1.0).min() >= 0.999


def test_langevin_samples_the_prior_with_the_noise_of_its_step() -> None:
    """With no mixture term (weights 0), the chains sample the prior N(μ, τ² + σ_L²) at the last level: the
    discretised step x + η s + √(2η) z leaves the variance v / (1 − η / 2v); without the noise, or with another
    scale, the variance is far from it."""
    prior = GaussianScore(mu=0.5, tau=0.3, sigma_1=0.02, levels=2)  # levels 0.02, 0.01
    config = bss.LangevinConfig(steps_per_level=150, delta=0.02, clip=False)  # η = δ at the last level
    chains = torch.zeros(8, 16, 16, 16)
    x, completed = bss.annealed_langevin(prior, chains, torch.zeros(8, 2), config=config,
                                         generator=torch.Generator().manual_seed(0))
    v = 0.3**2 + 0.01**2
    assert completed and x.mean().item() == pytest.approx(0.5, abs=0.01)
    assert x.var().item() == pytest.approx(v / (1 - 0.02 / (2 * v)), rel=0.05)


def test_positive_control_known_reference_langevin() -> None:
    x, r = smooth_volumes(2, 32, seed=5), smooth_volumes(2, 32, seed=6)
    m = 0.5 * x + 0.5 * r
    rec = bss.separate_known_reference(GaussianScore(), m, r, 0.5, config=bss.LangevinConfig(steps_per_level=10))
    assert rec.shape == x.shape
    assert msssim_3d_batch(rec, x, data_range=1.0).min() >= 0.85


def test_positive_control_alpha_one() -> None:
    x = smooth_volumes(2, 32, seed=7)
    res = bss.separate(GaussianScore(), x, 1.0, n_init=2, config=bss.LangevinConfig(steps_per_level=10))
    scores = bss.best_assignment_msssim(res.sources, x)
    assert scores.shape == (2, 2)
    assert scores.min() >= 0.85


def test_three_sources_weights_known_shapes_and_positive_control() -> None:
    """Two-reference proxies (three sources): shapes, validation, and the target recovered when it is all of the mix."""
    x = smooth_volumes(2, 32, seed=11)
    res = bss.separate(GaussianScore(), x, mixing_weights=np.array([[1.0, 0.0, 0.0]] * 2), n_init=2,
                       config=bss.LangevinConfig(steps_per_level=10))
    assert res.sources.shape == (2, 2, 3, 32, 32, 32)
    assert np.allclose(res.alphas, 1.0) and res.consistency.shape == (2, 2)
    assert bss.best_assignment_msssim(res.sources, x).min() >= 0.85
    with pytest.raises(ValueError, match="sum to 1"):
        bss.separate(GaussianScore(), x, mixing_weights=np.array([[0.5, 0.2, 0.2]] * 2))
    with pytest.raises(ValueError, match="mixing_weights"):
        bss.separate(GaussianScore(), x, mixing_weights=np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="S ≥ 2 sources without reference"):
        bss.best_assignment_msssim(res.sources, x, x)


def test_langevin_denoise_with_exact_prior_improves() -> None:
    """Sanity control: with the exact score of the data (one known patch + Gaussian), Langevin denoises."""
    x = smooth_volumes(1, 32, seed=8)
    mu = torch.from_numpy(x)

    class PointScore(GaussianScore):
        def forward(self, v, sigma):  # score of N(x, τ²) smoothed by σ, τ small
            return -(v - mu[:, None].to(v)) / (0.05**2 + torch.as_tensor(sigma) ** 2)

    prior = PointScore(sigma_1=1.0)
    noisy = mu + 0.2 * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    den = bss.langevin_denoise(prior, noisy, start_level=3, config=bss.LangevinConfig(steps_per_level=5))
    before = msssim_3d_batch(noisy.clamp(0, 1), mu, data_range=1.0)[0]
    after = msssim_3d_batch(den, mu, data_range=1.0)[0]
    assert after > before


def test_best_assignment_picks_the_right_source() -> None:
    x, r = smooth_volumes(1, 32, seed=9), smooth_volumes(1, 32, seed=10)
    sources = np.stack([np.stack([r[0], x[0]])])[:, None]  # (1, 1, 2, P, P, P), swapped
    assert bss.best_assignment_msssim(sources, x, r)[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert bss.best_assignment_msssim(sources, x)[0, 0] == pytest.approx(1.0, abs=1e-6)
    for reference in (r, None):  # the source assigned to the target: the second, here, with or without the reference
        assert bss.best_assignment(sources, x, reference)[1].tolist() == [[1]]


def test_best_chain_is_the_chain_of_the_best_recovered_target_with_its_assignment() -> None:
    """Two proxies, two chains each: per proxy the chain whose target best_assignment scores highest, the source it
    assigns to the target, and that score (what the separation panel shows)."""
    x, r = smooth_volumes(2, 32, seed=9), smooth_volumes(2, 32, seed=10)
    dim = np.stack([np.stack([0.5 * x[i], r[i]]) for i in range(2)])  # chain of a dimmed target, in order
    exact = np.stack([np.stack([r[i], x[i]]) for i in range(2)])  # chain of the exact target, swapped
    sources = np.stack([np.stack([dim[0], exact[0]]), np.stack([exact[1], dim[1]])])  # (2 proxies, 2 chains, 2, ...)
    chain, shown, score = bss.best_chain(sources, x, r)
    assert chain.tolist() == [1, 0] and shown.tolist() == [1, 1]
    np.testing.assert_allclose(score, bss.best_assignment_msssim(sources, x, r).max(1))
    assert score == pytest.approx([1.0, 1.0], abs=1e-6)


# ---------------------------------------------------------------------------------- re-identification


def synthetic_cohort(n_subjects: int, scans: int = 2, side: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Subjects = shared template + own smooth anatomy; scans add small noise (test–retest)."""
    rng = np.random.default_rng(seed)
    template = gaussian_filter(rng.standard_normal((side,) * 3), 4)
    vols, ids = [], []
    for s in range(n_subjects):
        anatomy = template + 0.8 * gaussian_filter(rng.standard_normal((side,) * 3), 2)
        for _ in range(scans):
            vols.append(anatomy + 0.02 * rng.standard_normal((side,) * 3))
            ids.append(f"sub-{s}")
    v = np.stack(vols)
    v = (v - v.min()) / (v.max() - v.min())
    return v.astype(np.float32), ids


def test_reid_positive_control_no_proxy() -> None:
    vols, ids = synthetic_cohort(5, seed=1)
    refs, _ = synthetic_cohort(4, scans=1, seed=2)
    out = reid.reid_experiment(vols, ids, refs, alpha_range=(0.3, 0.7), n_draws=2, seed=0)
    assert out["no_proxy"]["map"] >= 0.95
    assert 0.0 <= out["mixup"]["map"] <= 1.0 and 0.0 <= out["mixup"]["f1"] <= 1.0
    assert out["n_scans"] == 10
    unmixed = reid.reid_experiment(vols, ids, refs, alpha_range=(1.0, 1.0), n_draws=1, seed=0)  # α = 1: the raw scans
    assert unmixed["mixup"]["map"] == pytest.approx(unmixed["no_proxy"]["map"])
    assert out["mixup"]["map"] < out["no_proxy"]["map"]  # the proxies, not the raw scans, are retrieved


def test_proxies_match_their_subjects_other_scan_in_a_gallery_of_raw_scans() -> None:
    """A server holding identified raw scans: each proxy's deviation from the population mean still correlates with
    its subject's other scan, far above chance; with α = 1 (no mixing) it is found every time."""
    vols, ids = synthetic_cohort(6, seed=3)
    refs, _ = synthetic_cohort(8, scans=1, seed=3)  # the same template: one population
    mean = np.concatenate([vols, refs]).mean(0)
    exact = reid.proxy_to_scan_experiment(vols, ids, refs, mean, alpha_range=(1.0, 1.0), n_draws=1)
    assert exact["map"] == 1.0 and exact["top1"] == 1.0
    mixed = reid.proxy_to_scan_experiment(vols, ids, refs, mean, alpha_range=(0.3, 0.5), n_draws=2)
    assert mixed["map"] > reid.chance_levels(ids, n_rankings=500)["map"]


def test_reid_chance_levels_are_those_of_a_random_ranking() -> None:
    """With one other scan per subject among N − 1, a random ranking's AP averages H(N−1)/(N−1) (12 scans: 0.27)."""
    ids = [i // 2 for i in range(12)]
    chance = reid.chance_levels(ids, n_rankings=4000, seed=1)
    expected = sum(1 / r for r in range(1, 12)) / 11
    assert chance["map"] == pytest.approx(expected, abs=0.01)
    assert chance["top1"] == pytest.approx(1 / 11, abs=0.01)


def test_known_bank_inversion_finds_the_reference_and_alpha() -> None:
    """A bank known to the attacker: each proxy's reference is found among the bank's scans, α to 0.02, and the
    estimate is the target, far closer to it than the proxy; a wrong (reference, α) is not chosen."""
    from mixdemo.attacks.known_bank import KnownBank, known_bank_experiment

    cohort, subjects = synthetic_cohort(10, seed=7)  # one population: targets and bank share its template
    targets, ids, bank = cohort[:6], subjects[:6], cohort[6::2]  # 3 subjects × 2 scans; 7 others, one scan each
    attacker = KnownBank(bank)
    for t, (j, alpha) in enumerate([(0, 0.35), (3, 0.45), (5, 0.3)]):
        proxy = alpha * targets[t] + (1 - alpha) * bank[j]
        found = attacker.invert(proxy)
        assert found.reference == j and found.alpha == pytest.approx(alpha, abs=0.02)
        ms_est, ms_proxy = msssim_3d_batch(np.stack([found.estimate, proxy]), np.stack([targets[t]] * 2), data_range=1.0)
        assert ms_est > 0.97 and ms_est > ms_proxy
    out = known_bank_experiment(targets, ids, bank, alpha_range=(0.3, 0.5), n_draws=2, seed=0)
    assert out["reference_hit_rate"] >= 0.9 and out["estimate_reid_map"] >= out["proxy_reid_map"]
    with pytest.raises(ValueError, match="bank of 2 or more"):
        KnownBank(bank[:1])


def test_known_bank_on_a_region_where_the_bank_scans_do_not_differ_says_so() -> None:
    """A 32³ patch of background: every bank scan is 0 there (as the demo bank's at the grid's corners). The attack
    returned α̂ = NaN and an estimate of NaN, which MS-SSIM then refused with 'a: expected finite values'."""
    from mixdemo.attacks.known_bank import KnownBank, invert_downsampled

    for flat in (np.zeros((4, 32, 32, 32)), np.full((3, 32, 32, 32), 0.1) + np.arange(3)[:, None, None, None] / 10):
        proxy = 0.4 * smooth_volumes(1, 32, seed=3)[0] + 0.6 * flat[0]
        with pytest.raises(ValueError, match="bank's scans do not differ here"):
            invert_downsampled(proxy, flat)
    bank = smooth_volumes(3, 32, seed=4)
    bank[1] = bank[0]  # two identical scans and one that differs: still an attack
    found = KnownBank(bank).invert(0.4 * smooth_volumes(1, 32, seed=3)[0] + 0.6 * bank[0])
    assert np.isfinite(found.alpha) and np.isfinite(found.estimate).all()


def test_the_known_bank_criterion_is_the_correlation_it_names() -> None:
    """Brute force on a tiny bank: for every bank scan j and α of the grid, x̂ = (m − (1 − α)·x_j)/α and the largest
    |Pearson r| of x̂ − mean(bank) with any bank scan's deviation; the inversion keeps the (j, α) where it is least."""
    from mixdemo.attacks.known_bank import ALPHA_GRID, KnownBank

    rng = np.random.default_rng(3)
    bank, target = rng.random((4, 8, 8, 8)), rng.random((8, 8, 8))
    proxy = 0.4 * target + 0.6 * bank[1]
    deviations = (bank - bank.mean(0)).reshape(4, -1)

    def largest_correlation(estimate: np.ndarray) -> float:
        v = (estimate - bank.mean(0)).ravel()
        return max(abs(np.corrcoef(v, d)[0, 1]) for d in deviations)

    criterion = np.array([[largest_correlation((proxy - (1 - a) * bank[j]) / a) for j in range(4)] for a in ALPHA_GRID])
    ai, j = np.unravel_index(criterion.argmin(), criterion.shape)
    found = KnownBank(bank).invert(proxy)
    assert found.reference == j == 1 and found.max_correlation == pytest.approx(criterion[ai, j], rel=1e-6)
    assert found.alpha == pytest.approx(0.4, abs=0.02)


def test_known_bank_experiment_reports_the_quantities_its_fields_name() -> None:
    """Each field against its own computation on the same draw (α range where one reference is missed, and one where
    the estimates re-identify better than the proxies)."""
    from mixdemo.attacks.known_bank import KnownBank, known_bank_experiment

    cohort, subjects = synthetic_cohort(10, seed=7)
    targets, ids, bank = cohort[:6], subjects[:6], cohort[6::2]
    for alpha_range in ((0.6, 0.9), (0.3, 0.5)):
        out = known_bank_experiment(targets, ids, bank, alpha_range=alpha_range, n_draws=1, seed=0)
        proxies, refs, alphas = reid.encode_with_random_references(targets, bank, alpha_range, np.random.default_rng(0))
        found = [KnownBank(bank).invert(p) for p in proxies]
        est = np.stack([f.estimate for f in found])
        ms_est = msssim_3d_batch(est, targets, data_range=1.0)
        assert out["reference_hit_rate"] == pytest.approx(np.mean([f.reference == r for f, r in zip(found, refs)]))
        assert out["alpha_abs_error_mean"] == pytest.approx(np.mean([abs(f.alpha - a) for f, a in zip(found, alphas)]))
        assert out["estimate_msssim_mean"] == pytest.approx(ms_est.mean()) and out["estimate_msssim_min"] == pytest.approx(ms_est.min())
        assert out["proxy_msssim_mean"] == pytest.approx(msssim_3d_batch(proxies, targets, data_range=1.0).mean())
        assert out["estimate_reid_map"] == pytest.approx(reid.retrieval(est, ids).map)
        assert out["proxy_reid_map"] == pytest.approx(reid.retrieval(proxies, ids).map)
        assert out["alpha_abs_error_mean"] < 0.03 and out["estimate_msssim_mean"] > out["proxy_msssim_mean"]
    assert out["estimate_reid_map"] > out["proxy_reid_map"]
    assert known_bank_experiment(targets, ids, bank, alpha_range=(0.6, 0.9), n_draws=1)["reference_hit_rate"] < 1


def test_known_bank_on_large_volumes_searches_pooled_copies_and_unmixes_at_full_resolution() -> None:
    from mixdemo.attacks.known_bank import invert_downsampled

    cohort, _ = synthetic_cohort(8, scans=1, seed=9)
    target, bank = cohort[0], cohort[1:]
    proxy = 0.4 * target + 0.6 * bank[2]
    found = invert_downsampled(proxy, bank, max_voxels=16**3)  # 32³ volumes: searched at 16³
    assert found.reference == 2 and found.estimate.shape == target.shape
    assert found.alpha == pytest.approx(0.4, abs=0.03)
    np.testing.assert_allclose(found.estimate, np.clip((proxy - (1 - found.alpha) * bank[2]) / found.alpha, 0, 1),
                               atol=1e-6)


def test_downsample_average_pools() -> None:
    v = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    d = reid.downsample(v, 2)
    assert d.shape == (2, 2, 2)
    assert d[0, 0, 0] == pytest.approx(v[:2, :2, :2].mean())
    assert reid.downsample(v[None], 1).shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match="factor"):
        reid.downsample(v, 0)


# ---------------------------------------------------------------------------------- attacks of issue 5


def test_tta_average_estimate_improves_with_k() -> None:
    rng = np.random.default_rng(0)
    side = 32
    mu = smooth_volumes(1, side, seed=11, sigma=4)[0]
    population = np.clip(mu + 0.4 * (smooth_volumes(41, side, seed=12) - 0.5), 0, None)
    target, refs = population[0], population[1:]
    alpha = 0.5
    proxies = alpha * target[None] + (1 - alpha) * refs[rng.permutation(40)[:20]]
    est = tta.running_tta_estimates(proxies, mu, alpha_guess=0.5, ks=[1, 20])
    single = tta.tta_average_estimate(proxies[:1], mu, 0.5)
    np.testing.assert_allclose(single, est[1], atol=1e-5)
    s1, s20 = (msssim_3d_batch(est[k][None], target[None], data_range=1.0)[0] for k in (1, 20))
    assert s20 > s1


def test_link_requests_positive_control() -> None:
    vols, _ = synthetic_cohort(3, scans=1, seed=3)
    refs, _ = synthetic_cohort(12, scans=1, seed=4)
    mu = refs.mean(0)
    proxies = np.concatenate([0.7 * vols[t][None] + 0.3 * refs[4 * t : 4 * t + 4] for t in range(3)])
    owner = np.repeat(np.arange(3), 4)
    groups = tta.link_requests(proxies, mu, 4)
    assert groups.shape == (12, 4) and (groups[:, 0] == np.arange(12)).all()
    assert np.mean(owner[groups] == owner[:, None]) >= 0.9


def test_reference_reuse_recovers_the_bank() -> None:
    rng = np.random.default_rng(0)
    targets, _ = synthetic_cohort(30, scans=1, seed=5)
    bank, _ = synthetic_cohort(2, scans=1, seed=6)
    mu = targets.mean(0)
    which = rng.integers(2, size=30)
    proxies = 0.5 * targets + 0.5 * bank[which]
    labels, refs_hat, targets_hat = tta.reference_reuse_attack(proxies, mu, 2, alpha_guess=0.5)
    assert refs_hat.shape == bank.shape and targets_hat.shape == targets.shape
    best = max(msssim_3d_batch(refs_hat, bank, data_range=1.0).mean(), msssim_3d_batch(refs_hat[::-1].copy(), bank, data_range=1.0).mean())
    assert best >= 0.85
    purity = max(np.mean(labels == which), np.mean(labels != which))
    assert purity >= 0.9



def test_reference_reuse_inverts_eq_2_with_alpha_guess_in_closed_form(monkeypatch) -> None:
    """With α̂ ≠ 0.5 (where α̂ and 1 − α̂ coincide) and the clusters given: each reference is (group mean − α̂μ)/(1 − α̂)
    and each target (m − (1 − α̂)·x̂_ref)/α̂, clipped at 0 and rescaled."""
    rng = np.random.default_rng(2)
    proxies, mu = rng.random((6, 8, 8, 8)).astype(np.float32), rng.random((8, 8, 8)).astype(np.float32)
    which = np.array([0, 1, 1, 0, 1, 0])
    monkeypatch.setattr(tta, "cluster_by_reference", lambda p, n, seed=0: which)
    labels, refs_hat, targets_hat = tta.reference_reuse_attack(proxies, mu, 2, alpha_guess=0.3)
    refs_raw = np.stack([np.clip((proxies[which == c].mean(0) - 0.3 * mu) / 0.7, 0, None) for c in range(2)])
    expected = np.clip((proxies - 0.7 * refs_raw[which]) / 0.3, 0, None)
    assert (labels == which).all()
    np.testing.assert_allclose(refs_hat, tta.rescale(refs_raw), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets_hat, tta.rescale(expected.astype(np.float32)), rtol=1e-5, atol=1e-6)


class _LabelReader(torch.nn.Module):
    """A stand-in S for images that are labels / 3: one-hot logits of round(3x), the labels themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # patch_study asks S for its device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.round(3 * x[:, 0]).clamp(0, 3).long()
        return 50.0 * torch.nn.functional.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()

def test_patch_study_and_output_leakage_with_untrained_models() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vols = [SimpleNamespace(image=smooth_volumes(1, 48, seed=s)[0], labels=rng.integers(0, 4, (48,) * 3).astype(np.uint8))
            for s in range(5)]
    patches = leakage.sample_patch_set(vols[:2], vols[2:], 3, 2, rng)
    assert patches.refs.shape == (3, 2, 32, 32, 32)
    seg, unmix = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval(), UnmixingNet(features=(4, 8)).eval()
    out = leakage.patch_study(seg, unmix, patches, np.full((3, 2), 0.6))
    for key in ("dice_learned_tta", "dice_learned", "dice_naive_tta", "output_leakage_dice"):
        assert 0.0 <= out[key] <= 1.0
    # positive control: targets whose image is their labels / 3, α = 1 (the proxy is the target) and a "server"
    # that reads the labels off the image: its output leaks every label, and Eq. 4 + TTA recovers every label
    exact = leakage.PatchSet(patches.target_labels.astype(np.float32) / 3, patches.target_labels, patches.refs,
                             patches.ref_labels)
    reads_labels = _LabelReader()
    out = leakage.patch_study(reads_labels, unmix, exact, np.ones((3, 2)))
    assert out["output_leakage_dice"] == 1.0 and out["dice_naive_tta"] == 1.0
    out = leakage.patch_study(reads_labels, unmix, exact, np.full((3, 2), 0.6))
    assert out["output_leakage_dice"] < 1.0  # mixed with the references, the output no longer is the target's
    with pytest.raises(ValueError, match="alphas"):
        leakage.patch_study(seg, unmix, patches, np.full((3, 1), 0.6))
    # a public label map cut at the same places gives the chance level that needs no scan: the truth itself scores 1
    truth_map = vols[0].labels
    with_public = leakage.sample_patch_set(vols[:1], vols[2:], 3, 2, np.random.default_rng(1), public_labels=truth_map)
    out = leakage.patch_study(seg, unmix, with_public, np.full((3, 2), 0.6))
    assert out["chance_dice_template"] == 1.0 and "chance_dice_template" not in leakage.patch_study(seg, unmix, patches, np.full((3, 2), 0.6))


def test_patch_study_scores_the_first_mix_eq_4_with_fresh_alphas_and_another_subject_in_closed_form() -> None:
    """A server that reads labels off the image (S(x) = one-hot round(3x)) on label images, α fresh per mix: the
    output leakage is the first mix's arg-max, Eq. 4 removes each mix's (1 − α)·y_ref and divides by its α before the
    K mixes are averaged, and the chance level is the first reference's labels, all against the target's labels."""
    from mixdemo.metrics import dice_per_class, mean_dice

    rng = np.random.default_rng(4)
    n, k, side = 3, 2, 16
    truth = rng.integers(0, 4, (n, side, side, side)).astype(np.uint8)
    ref_labels = rng.integers(0, 4, (n, k, side, side, side)).astype(np.uint8)
    patches = leakage.PatchSet(truth / 3, truth, ref_labels / 3, ref_labels)
    alphas = np.array([[0.6, 0.9], [0.9, 0.6], [0.75, 0.55]])
    out = leakage.patch_study(_LabelReader(), UnmixingNet(features=(4, 8)).eval(), patches, alphas)

    def dice(pred: np.ndarray) -> float:
        return mean_dice(dice_per_class(pred.reshape(-1, side, side), truth.reshape(-1, side, side), [1, 2, 3]))

    a = alphas[..., None, None, None]
    read = np.clip(np.round(a * truth[:, None] + (1 - a) * ref_labels), 0, 3).astype(int)  # (n, k, ...) the server's labels
    one_hot = np.eye(4)[read]  # (n, k, X, Y, Z, C)
    naive = (one_hot - (1 - a)[..., None] * np.eye(4)[ref_labels]) / a[..., None]
    assert out["output_leakage_dice"] == pytest.approx(dice(read[:, 0]))
    assert out["dice_naive_tta"] == pytest.approx(dice(naive.mean(1).argmax(-1)))
    assert out["chance_dice_other_subject"] == pytest.approx(dice(ref_labels[:, 0]))
    assert len({out["output_leakage_dice"], dice(read[:, 1]), out["chance_dice_other_subject"]}) == 3


def test_patch_study_two_references_matches_one_when_the_references_coincide() -> None:
    """Three-source plumbing: mixing each reference with itself at half weight, through the widened D
    (which then computes what the one-reference D does), gives the one-reference study's numbers."""
    from mixdemo.models import widen_references

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    vols = [SimpleNamespace(image=smooth_volumes(1, 48, seed=s)[0], labels=rng.integers(0, 4, (48,) * 3).astype(np.uint8))
            for s in range(5)]
    patches = leakage.sample_patch_set(vols[:2], vols[2:], 3, 2, rng)
    seg, unmix = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval(), UnmixingNet(features=(4, 8)).eval()
    alphas = np.array([[0.3, 0.3], [0.45, 0.45], [0.6, 0.6]])
    one = leakage.patch_study(seg, unmix, patches, alphas)
    doubled = leakage.PatchSet(patches.target, patches.target_labels,
                               np.repeat(patches.refs, 2, axis=1), np.repeat(patches.ref_labels, 2, axis=1))
    weights = np.stack([alphas, (1 - alphas) / 2, (1 - alphas) / 2], -1)
    two = leakage.patch_study(seg, widen_references(unmix, 2).eval(), doubled, weights)
    for key in ("dice_learned_tta", "dice_learned", "dice_naive_tta", "output_leakage_dice"):
        assert two[key] == pytest.approx(one[key], abs=1e-3)
    with pytest.raises(ValueError, match="references"):
        leakage.patch_study(seg, unmix, patches, weights)  # 2 refs per mix need 4 reference patches per target


# ---------------------------------------------------------------------------------- evaluation script


@pytest.mark.slow
def test_evaluate_privacy_smoke(tmp_path: Path, small_cohort: Path) -> None:
    """Every section of the attack evaluation on a small cohort, run in this process (the command line's own
    path is the same ``main``; a fresh process would pay ~8 s of imports). ``--smoke`` never asks the Hub for
    weights (``load_models(allow_hub=False)``)."""
    from training import evaluate_privacy

    out = tmp_path / "privacy.json"
    evaluate_privacy.main(["--smoke", "--out", str(out), "--data", str(small_cohort)])
    d = json.loads(out.read_text())
    for key in ("command", "seed", "date", "weights_sha256", "data", "bss", "reid", "tta_average", "output_leakage",
                "reference_reuse", "known_bank", "defences", "alpha_sweep"):
        assert key in d
    assert d["data"] == "MNI152 phantoms (no patient data)"
    from mixdemo.weights import DEFAULT_UNMIXING
    assert d["models"]["unmixing"] == DEFAULT_UNMIXING and set(d["models"].values()) == set(d["weights_sha256"])
    for k in ("alpha_known", "alpha_unknown"):
        assert set(d["bss"][k]) >= {"msssim_mean", "msssim_std", "n"}
    assert d["bss"]["control"]["exact_inverse_msssim_mean"] >= 0.85
    assert d["reid"]["no_proxy"]["map"] >= 0.95  # positive control on the phantoms
    assert 0 < d["reid"]["chance"]["map"] < d["reid"]["no_proxy"]["map"]
    assert {"reference_hit_rate", "alpha_abs_error_mean", "estimate_msssim_mean", "estimate_reid_map"} <= set(d["known_bank"])
    assert {"estimate_msssim_mean", "estimate_reid_map", "proxy_reid_map"} <= set(d["inversion"])
    assert not d["inversion"]["trained"] or d["inversion"]["steps"] > 0  # a stand-in where no weights/inversion
    assert set(d["sections_run"]) == set(evaluate_privacy.SECTIONS)  # which command measured each section
    assert {run["command"] for run in d["sections_run"].values()} == {d["command"]}
    assert [row[0] for row in d["tta_average"]] == list(range(1, len(d["tta_average"]) + 1))
    assert set(d["defences"]) >= {"fresh_alpha", "separate_shuffled_requests", "restricted_alpha", "two_references"}
    assert {"attack_msssim", "reid_map", "dice_avg", "bss_weights_known_msssim", "reid_single_proxy_map"} <= set(d["defences"]["two_references"])
    assert {"alpha_range", "dice_learned_tta", "reid_map", "bss_msssim", "output_leakage_dice"} <= set(d["alpha_sweep"][0])
    for fig in ("bss_examples.png", "reid.png", "tta_average.png", "privacy_utility.png"):
        assert (tmp_path / fig).stat().st_size > 0


@pytest.fixture
def drawn_figures(monkeypatch: pytest.MonkeyPatch):
    """The figures evaluate_privacy's plot functions draw, kept open instead of written as PNGs."""
    from training import evaluate_privacy
    from mixdemo.figures import plt

    figs: list = []
    monkeypatch.setattr(evaluate_privacy, "save_figure", lambda fig, path: figs.append(fig))
    yield figs
    for fig in figs:
        plt.close(fig)


def test_plot_reid_draws_f1_and_map_of_each_condition(drawn_figures: list) -> None:
    """reid.png: F1 bars left, mAP bars right of each tick, 'No proxy' then 'Mixup', from their own JSON fields."""
    from training.evaluate_privacy import plot_reid

    r = {"no_proxy": {"f1": 0.91, "map": 0.97, "top1": 1.0}, "mixup": {"f1": 0.12, "map": 0.34, "top1": 0.2},
         "n_scans": 7, "alpha_range": [0.3, 0.5]}
    plot_reid(Path("unused.png"), r)
    (ax,) = drawn_figures[0].axes
    f1, mean_ap = ax.containers
    assert [f1.get_label(), mean_ap.get_label()] == ["F1", "mAP"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["F1", "mAP"]
    assert [b.get_height() for b in f1] == pytest.approx([0.91, 0.12])
    assert [b.get_height() for b in mean_ap] == pytest.approx([0.97, 0.34])
    ticks = list(ax.get_xticks())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["No proxy", "Mixup α~U(0.3, 0.5)"]
    for bars, side in ((f1, -1), (mean_ap, 1)):  # each bar beside its own condition's tick
        centres = [b.get_x() + b.get_width() / 2 for b in bars]
        assert centres == pytest.approx([t + side * 0.2 for t in ticks])
    assert "7 test scans" in ax.get_title()
    assert "F1" in ax.get_ylabel() and "mAP" in ax.get_ylabel()


def test_plot_tta_draws_each_column_against_the_recorded_k(drawn_figures: list) -> None:
    """tta_average.png: MS-SSIM and re-id mAP against the rows' own K (not their position), the template's line."""
    from training.evaluate_privacy import plot_tta

    rows = [[2, 0.41, 0.52], [5, 0.63, 0.74], [9, 0.85, 0.96]]
    plot_tta(Path("unused.png"), rows, {"template_vs_target_msssim_mean": 0.27, "other_subject_vs_target_msssim_mean": 0.11})
    (ax,) = drawn_figures[0].axes
    ms, mean_ap, template = ax.get_lines()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "MS-SSIM(estimate, target)", "re-id mAP of estimates", "MS-SSIM(template, target)"]
    assert list(ms.get_xdata()) == [2, 5, 9] and list(mean_ap.get_xdata()) == [2, 5, 9]
    assert list(ms.get_ydata()) == pytest.approx([0.41, 0.63, 0.85])
    assert list(mean_ap.get_ydata()) == pytest.approx([0.52, 0.74, 0.96])
    assert list(template.get_ydata()) == pytest.approx([0.27, 0.27])
    assert ax.get_xlabel().startswith("K proxies averaged")
    assert "MS-SSIM" in ax.get_ylabel() and "mAP" in ax.get_ylabel()


def test_plot_sweep_draws_each_attack_against_the_learned_tta_dice(drawn_figures: list) -> None:
    """privacy_utility.png: every attack's series at its own α range's Learned+TTA Dice, labelled by that range."""
    from training.evaluate_privacy import plot_sweep

    rows = [{"alpha_range": [0.1, 0.3], "dice_learned_tta": 0.61, "dice_learned": 0.51, "reid_map": 0.21,
             "tta_average_reid_map": 0.31, "bss_msssim": 0.41, "output_leakage_dice": 0.11},
            {"alpha_range": [0.3, 0.5], "dice_learned_tta": 0.82, "dice_learned": 0.72, "reid_map": 0.42,
             "tta_average_reid_map": 0.52, "bss_msssim": 0.62, "output_leakage_dice": 0.32}]
    plot_sweep(Path("unused.png"), rows)
    (ax,) = drawn_figures[0].axes
    labels = ["re-id mAP (single proxy)", "re-id mAP (TTA averaging)", "BSS MS-SSIM (α known)", "output-leakage Dice"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
    assert [c.get_label() for c in ax.collections] == labels
    for series, key in zip(ax.collections, ("reid_map", "tta_average_reid_map", "bss_msssim", "output_leakage_dice")):
        np.testing.assert_allclose(series.get_offsets(), [[r["dice_learned_tta"], r[key]] for r in rows])
    assert [(a.get_text(), tuple(a.xy)) for a in ax.texts] == [("0.1–0.3", (0.61, 0.21)), ("0.3–0.5", (0.82, 0.42))]
    assert "Dice" in ax.get_xlabel() and "utility" in ax.get_xlabel() and "privacy" in ax.get_ylabel()


def test_plot_bss_shows_each_rows_volumes_and_the_source_its_score_is_of(drawn_figures: list) -> None:
    """bss_examples.png: target, reference, proxy (its α) and per initialisation the recovered source that
    best_assignment_msssim scored, under that score. The shown source used to be the one nearest the target
    alone, which under a poor separation is the reference-like one, above another source's score."""
    from training.evaluate_privacy import plot_bss

    t, ref, other = smooth_volumes(3, seed=3)
    t2, ref2 = smooth_volumes(2, seed=4)
    ref_like, target_like = 0.5 * ref + 0.5 * t, 0.3 * t + 0.7 * other  # ref_like is nearer t, target_like wins the assignment
    p = {"target": np.stack([t, t2]), "ref": np.stack([ref, ref2]), "alpha": np.array([0.37, 0.44], np.float32)}
    p["proxy"] = p["alpha"][:, None, None, None] * p["target"] + (1 - p["alpha"][:, None, None, None]) * p["ref"]
    sources = np.stack([np.stack([[ref_like, target_like], [ref, t]]), np.stack([[t2, ref2], [ref2, t2]])])
    scores, shown = bss.best_assignment(sources, p["target"], p["ref"])
    assert np.array_equal(scores, bss.best_assignment_msssim(sources, p["target"], p["ref"]))
    plot_bss(Path("unused.png"), p, SimpleNamespace(sources=sources), scores, shown)
    axes = drawn_figures[0].axes
    mid = t.shape[-1] // 2
    shown = [(ax.get_title(), np.asarray(ax.get_images()[0].get_array())) for ax in axes]
    expected = [("target", t), ("reference", ref), ("proxy α=0.37", p["proxy"][0]),
                (f"init 1: {scores[0, 0]:.2f}", target_like), (f"init 2: {scores[0, 1]:.2f}", t),
                ("target", t2), ("reference", ref2), ("proxy α=0.44", p["proxy"][1]),
                (f"init 1: {scores[1, 0]:.2f}", t2), (f"init 2: {scores[1, 1]:.2f}", t2)]
    assert [title for title, _ in shown] == [title for title, _ in expected]
    for (_, img), (_, vol) in zip(shown, expected):
        np.testing.assert_array_equal(img, np.rot90(vol[:, :, mid]))


def test_evaluate_privacy_keeps_the_other_sections_of_an_existing_file(tmp_path: Path) -> None:
    """Some sections into an existing results file need --merge: without it they replaced the whole file."""
    from training import evaluate_privacy

    out = tmp_path / "privacy.json"
    out.write_text('{"bss": {}}')
    with pytest.raises(SystemExit, match="add --merge"):
        evaluate_privacy.main(["--smoke", "--sections", "reid", "--out", str(out)])
    assert out.read_text() == '{"bss": {}}'


def test_the_inversion_section_scores_a_stand_in_only_when_there_are_no_weights(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Without weights/inversion the section's network is an untrained stand-in on the run's pooling with an empty
    record ("trained": false); weights that fail their checksum stop the run instead of being scored as a stand-in
    under their record's name (the same for every model the evaluation loads)."""
    import torch

    from mixdemo.attacks.inversion import InversionNet
    from mixdemo.weights import WEIGHTS_DIR_ENV, WeightsError, write_training_record
    from training.evaluate_privacy import load_inversion, load_models

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net, record, sha = load_inversion(torch.device("cpu"), 4, 0, allow_hub=False)
    assert (net.downsample, record) == (4, {}) and sha.startswith("untrained")
    InversionNet(features=(4, 4, 8, 8, 16, 4), downsample=2).save_pretrained(tmp_path / "inversion")
    write_training_record(tmp_path / "inversion", {"steps": 3}, "mixdemo.attacks.inversion.InversionNet")
    net, record, sha = load_inversion(torch.device("cpu"), 4, 0, allow_hub=False)
    assert net.downsample == 2 and record["steps"] == 3 and len(sha) == 64
    for folder in ("inversion", "score"):
        if folder == "score":
            from mixdemo.attacks.score import ScoreNet

            ScoreNet().save_pretrained(tmp_path / "score")
            write_training_record(tmp_path / "score", {}, "mixdemo.attacks.score.ScoreNet")
        data = bytearray((tmp_path / folder / "model.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (tmp_path / folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum"):
        load_inversion(torch.device("cpu"), 4, 0, allow_hub=False)
    with pytest.raises(WeightsError, match="checksum"):
        load_models(torch.device("cpu"), need_seg=False, allow_hub=False)


@pytest.mark.parametrize("module", ["evaluate_privacy", "train_inversion"])
def test_the_attack_commands_refuse_an_alpha_range_that_mixing_does_not_take(module: str, capsys) -> None:
    """``--alpha-range 0.3 1.5`` ran every attack with α above 1 (the reference weighed negatively) and recorded it;
    a reversed range ran too. Both are usage errors, as in the other commands that take the option."""
    import importlib

    parse_args = importlib.import_module(f"training.{module}").parse_args
    assert parse_args(["--alpha-range", "0.1", "0.9"]).alpha_range == [0.1, 0.9]
    for bad in (["0.3", "1.5"], ["0.5", "0.3"], ["0", "0.5"]):
        with pytest.raises(SystemExit) as raised:
            parse_args(["--alpha-range", *bad])
        assert raised.value.code == 2 and f"--alpha-range {float(bad[0]):g} {float(bad[1]):g}" in capsys.readouterr().err


def test_evaluate_privacy_refuses_an_unknown_section_as_a_usage_error(capsys) -> None:
    """A typo in --sections (``bs``) ended in a traceback (ValueError from main); it is now a usage error that lists
    the sections, before any model or cohort is loaded."""
    from training.evaluate_privacy import SECTIONS, parse_args

    assert parse_args(["--sections", "bss, reid"]).section_list == ["bss", "reid"]
    with pytest.raises(SystemExit) as raised:
        parse_args(["--sections", "bs,reid"])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and "--sections: unknown bs; expected a subset of " + ", ".join(SECTIONS) in err


def test_evaluate_privacy_checks_its_seed_and_langevin_steps_when_parsed(capsys) -> None:
    """``--steps-per-level -1`` loaded the models and the cohort, then ended in LangevinConfig's ValueError traceback,
    and ``0`` ran the run size's default without a word; ``--seed -1`` failed in numpy's generator. Usage errors now."""
    from training.evaluate_privacy import parse_args

    assert parse_args(["--steps-per-level", "2", "--seed", "3"]).steps_per_level == 2
    for option, bad in (("--steps-per-level", "0"), ("--steps-per-level", "-1"), ("--seed", "-1")):
        with pytest.raises(SystemExit) as raised:
            parse_args([option, bad])
        assert raised.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_evaluate_privacy_unmixes_with_the_d_it_is_told() -> None:
    """``--unmixing NAME``: the sections that unmix load that D and record its checksum under its name."""
    import torch

    from mixdemo.weights import DEFAULT_UNMIXING, WeightsError, load_model
    from training.evaluate_privacy import load_models, model_names, parse_args

    assert parse_args([]).unmixing is None and parse_args(["--unmixing", "unmixing-p2"]).unmixing == "unmixing-p2"
    try:
        expected = load_model("unmixing-p2")
    except WeightsError:
        pytest.skip("no local unmixing-p2 weights")
    models, shas = load_models(torch.device("cpu"), need_seg=True, allow_hub=False, unmixing="unmixing-p2")
    assert "unmixing-p2" in shas and DEFAULT_UNMIXING not in shas
    assert model_names(True, "unmixing-p2")["unmixing"] == "unmixing-p2" and model_names(False) == {"score": "score"}
    assert all(torch.equal(a, b) for a, b in zip(models["unmixing"].state_dict().values(), expected.state_dict().values()))


def test_gaussian_tail_starts_at_sigma_1_and_equals_the_exact_prior_there() -> None:
    """With the tail set to the analytic prior's own Gaussian, the hybrid sampler from σ_1 is the exact
    full-schedule sampler; and it separates (positive control: α = 1) from σ_1 = 50."""
    prior = GaussianScore(mu=0.5, tau=0.3, sigma_1=50.0)
    x = smooth_volumes(2, 16, seed=12)
    m = 0.6 * x + 0.4 * smooth_volumes(2, 16, seed=13)
    full = bss.separate(prior, m, 0.6, n_init=1, config=bss.LangevinConfig(steps_per_level=5, max_sigma=None, clip=False))
    hybrid = bss.separate(prior, m, 0.6, n_init=1,
                          config=bss.LangevinConfig(steps_per_level=5, max_sigma=1.0, tail=(0.5, 0.09), clip=False))
    np.testing.assert_allclose(hybrid.sources, full.sources, rtol=1e-4, atol=1e-4)
    skipped = bss.separate(prior, m, 0.6, n_init=1, config=bss.LangevinConfig(steps_per_level=5, max_sigma=1.0, clip=False))
    assert not np.allclose(skipped.sources, full.sources, atol=1e-3)  # without the tail the high levels are skipped
    assert bss.gaussian_tail(np.array([[0.0, 1.0]])) == (0.5, 0.25)
    control = bss.separate(prior, smooth_volumes(2, 32, seed=14), 1.0, n_init=1,
                           config=bss.LangevinConfig(steps_per_level=10, max_sigma=1.0, tail=(0.5, 0.09)))
    assert bss.best_assignment_msssim(control.sources, smooth_volumes(2, 32, seed=14)).min() >= 0.85


def test_max_sigma_skips_high_levels() -> None:
    prior = GaussianScore(sigma_1=50.0)
    levels = bss._levels(prior, max_sigma=1.0)
    assert float(levels.max()) <= 1.0 and float(levels[-1]) == pytest.approx(0.01)
    assert len(bss._levels(prior)) == 10
    assert len(bss._levels(prior, max_sigma=1e-4)) == 1  # the last level is always kept


@pytest.mark.slow
def test_train_score_smoke_exports_hub_folder(tmp_path: Path, small_cohort: Path) -> None:
    from training import train_score

    info = train_score.main(["--data", str(small_cohort), "--steps", "3", "--batch-size", "2", "--max-subjects", "1",
                             "--features", ",".join(map(str, TINY)), "--out", str(tmp_path / "w"),
                             "--run-dir", str(tmp_path / "run"), "--device", "cpu"])
    folder = tmp_path / "w" / "score"
    for name in ("config.json", "model.safetensors", "training.json", "README.md"):
        assert (folder / name).exists()
    record = json.loads((folder / "training.json").read_text())
    assert record["model_class"] == "mixdemo.attacks.score.ScoreNet" and record["steps"] == 3
    assert info["sigma_1"] > 1.0  # of the order of the largest distance between patches
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert log[0].startswith("step") and len(log) >= 2
    model = ScoreNet.from_pretrained(str(folder))
    assert model.sigma_1 == pytest.approx(info["sigma_1"])


def test_known_bank_alpha_refinement_takes_the_spread_root_nearest_its_start() -> None:
    """α refined so that x̂ = (m − (1 − α)·r)/α has a normalised scan's spread s²: with the target's deviation of
    squared norm s² and orthogonal to the reference's, the true α is a root of ‖m − u·r‖² = (1 − u)²·s² (u = 1 − α).
    A reference of high contrast puts the quadratic's other root in range too: the root nearest the starting α is
    kept, and the starting α itself where no root lies in the grid's range."""
    from mixdemo.attacks.known_bank import KnownBank

    rng = np.random.default_rng(5)
    bank = rng.random((3, 6, 6, 6))
    bank[1] = 0.5 + 3 * (bank[1] - 0.5)  # thrice the others' contrast
    attacker = KnownBank(bank)
    r = attacker.scans[1]
    x = rng.standard_normal(r.size)
    x -= x.mean()
    x -= (x @ r) / (r @ r) * r  # orthogonal to the reference's deviation, still centred
    x *= np.sqrt(attacker.spread / (x @ x))  # a normalised scan's spread
    alpha = 0.3
    proxy = (alpha * x + (1 - alpha) * r).reshape(bank.shape[1:]) + 0.5  # any offset: the refinement centres it
    m = proxy.ravel() - proxy.mean()
    mm, mr, rr, s2 = m @ m, m @ r, r @ r, attacker.spread
    roots = sorted(1 - u.real for u in np.roots([rr - s2, 2 * (s2 - mr), mm - s2]))
    assert roots[0] == pytest.approx(alpha, abs=1e-9) and 0.6 < roots[1] < 0.8  # the construction holds
    assert attacker._refined_alpha(proxy, 1, 0.4) == pytest.approx(alpha, abs=1e-9)
    assert attacker._refined_alpha(proxy, 1, 0.6) == pytest.approx(roots[1], abs=1e-9)
    assert KnownBank(bank, alpha_grid=np.array([0.35, 0.6]))._refined_alpha(proxy, 1, 0.5) == 0.5


def test_inversion_training_batches_mix_a_target_with_another_subjects_scan_as_the_client_does() -> None:
    """Each pair is Eq. 2 on one patch: proxy = α·target + (1 − α)·reference with α in the range and the reference the
    other subject's scan (one scan each); the patch holds target brain even where brain fills a corner of the volume.
    Pairs never take two scans of one subject, and every pair of subjects comes up."""
    from mixdemo.attacks.inversion import subjects_apart, training_batch

    values = np.array([0.2, 0.8])  # scan i is v_i in its brain
    scans = np.zeros((2, 40, 40, 40), np.float32)
    for i, v in enumerate(values):
        scans[i, :12, :12, :12] = v  # brain in one corner only
    proxies, targets = training_batch(scans, ["a", "b"], (0.3, 0.5), np.random.default_rng(0), batch=12, patch=16)
    assert proxies.shape == targets.shape == (12, 1, 16, 16, 16)
    alphas = []
    for proxy, target in zip(proxies[:, 0].numpy(), targets[:, 0].numpy()):
        brain = target > 0
        assert brain.any()
        t = int(np.argmin(abs(values - target[brain][0])))
        alpha = (proxy[brain][0] - values[1 - t]) / (values[t] - values[1 - t])
        assert 0.3 <= alpha <= 0.5
        np.testing.assert_allclose(proxy, alpha * target + (1 - alpha) * brain * values[1 - t], atol=1e-6)
        alphas.append(alpha)
    assert np.ptp(alphas) > 0.05  # α drawn per pair
    rng, subjects = np.random.default_rng(1), ["a", "a", "b", "b", "c"]
    pairs = {subjects_apart(5, subjects, rng) for _ in range(400)}
    assert pairs == {(t, r) for t in range(5) for r in range(5) if subjects[t] != subjects[r]}


def test_inversion_runs_whole_volumes_or_windows_of_its_training_patches() -> None:
    """``invert`` runs the network on the whole proxy (zero-padded to its multiple of 16, 32 at least) or on windows
    of its training patch size, and brings the answer back onto the proxy's own voxels, clipped to [0, 1]: a network
    that doubles its input returns 2·proxy, aligned voxel for voxel, either way; at full resolution a network on
    pooled volumes answers on the proxy's own grid."""
    from mixdemo.attacks.inversion import invert, invert_full_resolution, padded_to_multiple

    class Doubler(torch.nn.Module):
        patch_size, downsample = 16, 2

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))
            self.inputs: list[tuple[int, ...]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.inputs.append(tuple(x.shape[2:]))
            return x * self.scale

    proxies = np.random.default_rng(1).random((2, 17, 20, 35)).astype(np.float32) * 0.6
    net = Doubler()
    np.testing.assert_allclose(invert(net, proxies), np.clip(2 * proxies, 0, 1), rtol=1e-5)
    assert set(net.inputs) == {(32, 32, 48)}
    net.inputs.clear()
    np.testing.assert_allclose(invert(net, proxies, windows=True), np.clip(2 * proxies, 0, 1), rtol=1e-5)
    assert set(net.inputs) == {(16, 16, 16)}
    small = np.full((1, 8, 12, 20), 0.3, np.float32)
    np.testing.assert_allclose(invert(net, small, windows=True), 0.6, rtol=1e-5)  # under a window: padded, cropped
    flat = np.full((32, 16, 48), 0.3, np.float32)
    np.testing.assert_allclose(invert_full_resolution(net, flat), 0.6, rtol=1e-5)  # pooled 2×, back on its grid
    padded, crop = padded_to_multiple(torch.ones(1, 1, 17, 20, 35))
    assert padded.shape == (1, 1, 32, 32, 48) and padded[crop].shape == (1, 1, 17, 20, 35) and padded[crop].min() == 1
    assert padded.sum() == 17 * 20 * 35  # zeros only beyond the volume's far ends
    assert padded_to_multiple(torch.ones(1, 1, 16, 48, 40))[0].shape == (1, 1, 32, 48, 48)  # 32 at least


def test_invert_and_score_scores_at_the_network_s_pooling_as_the_experiment_does() -> None:
    """One proxy: invert_full_resolution's estimate, and the MS-SSIM of the pooled estimate and of the pooled proxy
    to the pooled target (data range 1), the resolution inversion_experiment scores at."""
    from mixdemo.attacks.inversion import invert, invert_and_score, invert_full_resolution

    class Halver(torch.nn.Module):
        patch_size, downsample = 32, 2

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    target, reference = smooth_volumes(2, 64, seed=5)
    proxy = (0.4 * target + 0.6 * reference).astype(np.float32)
    net = Halver()
    estimate, ms_est, ms_proxy = invert_and_score(net, proxy, target)
    np.testing.assert_allclose(estimate, invert_full_resolution(net, proxy), atol=1e-6)
    small_p, small_t = reid.downsample(proxy[None]), reid.downsample(target[None])
    assert ms_est == pytest.approx(msssim_3d_batch(invert(net, small_p), small_t, data_range=1.0)[0])
    assert ms_proxy == pytest.approx(msssim_3d_batch(small_p, small_t, data_range=1.0)[0])
    net.downsample = 1  # a network on full-resolution volumes: scored there
    estimate, ms_est, _ = invert_and_score(net, proxy, target)
    np.testing.assert_allclose(estimate, invert(net, proxy[None])[0], atol=1e-6)
    assert ms_est == pytest.approx(msssim_3d_batch(estimate[None], target[None], data_range=1.0)[0])


def test_inversion_training_is_seeded_and_refuses_what_it_cannot_train_on() -> None:
    """Two runs with one seed give the same weights, another seed others; the network records its pooling and α range;
    one subject (no reference of another) or volumes under its 32-voxel patches are refused before any step."""
    from mixdemo.attacks.inversion import train_inversion

    scans = np.random.default_rng(2).random((3, 32, 32, 32)).astype(np.float32)
    runs = [train_inversion(scans, ["a", "b", "c"], alpha_range=(0.3, 0.5), steps=2, seed=s, batch=1, downsample=3)
            for s in (4, 4, 5)]
    weights = [torch.cat([p.detach().ravel() for p in net.parameters()]) for net in runs]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert not runs[0].training and runs[0].downsample == 3 and runs[0].alpha_range == (0.3, 0.5)
    assert runs[0].patch_size == 32  # the patch it trained on, the windows it runs on
    with pytest.raises(ValueError, match="2 subjects"):
        train_inversion(scans, ["a", "a", "a"], alpha_range=(0.3, 0.5), steps=1)
    with pytest.raises(ValueError, match="too small"):
        train_inversion(scans[:, :31], ["a", "b", "c"], alpha_range=(0.3, 0.5), steps=1)


def test_inversion_experiment_scores_estimates_as_the_proxies_are_scored() -> None:
    """With a network that returns its input, the estimates are the proxies: the same MS-SSIM and re-identification
    mAP on every draw, so the two columns are computed alike and on the same proxies."""
    from mixdemo.attacks import inversion

    class Identity(inversion.InversionNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    cohort, subjects = synthetic_cohort(6, seed=3)
    out = inversion.inversion_experiment(Identity(), cohort[:4], subjects[:4], cohort[4:6], alpha_range=(0.3, 0.5),
                                         n_draws=2, seed=1)
    assert out["estimate_msssim_mean"] == pytest.approx(out["proxy_msssim_mean"], abs=1e-6)
    assert out["estimate_reid_map"] == pytest.approx(out["proxy_reid_map"]) and out["estimate_reid_map_std"] >= 0
    assert (out["reference_pool"], out["n_targets"], out["n_draws"]) == (2, 4, 2)
    assert out["estimate_reid_map_per_draw"] == pytest.approx(out["proxy_reid_map_per_draw"])
    assert out["on_windows"]["estimate_reid_map_per_draw"] == pytest.approx(out["proxy_reid_map_per_draw"])
    assert np.mean(out["estimate_reid_map_per_draw"]) == pytest.approx(out["estimate_reid_map"])


def test_inversion_experiment_without_windows_scores_the_same_draws_on_whole_volumes_only() -> None:
    """The α sweep's rows skip the windowed pass (not reported there): the whole-volume figures are the same draws'."""
    from mixdemo.attacks import inversion

    torch.manual_seed(0)
    net = inversion.InversionNet(features=(4, 4, 8, 8, 16, 4)).eval()
    cohort, subjects = synthetic_cohort(4, seed=5)
    both = inversion.inversion_experiment(net, cohort[:4], subjects[:4], cohort[4:], alpha_range=(0.3, 0.5), n_draws=1)
    whole = inversion.inversion_experiment(net, cohort[:4], subjects[:4], cohort[4:], alpha_range=(0.3, 0.5), n_draws=1,
                                           windows=False)
    assert "on_windows" in both and "on_windows" not in whole
    assert {k: v for k, v in both.items() if k != "on_windows"} == whole


def test_the_chained_attack_inverts_the_average_of_one_request_s_proxies() -> None:
    """The network is given the average of K proxies mixed with one α and K distinct references (α·x + (1 − α)·their
    mean, exactly); with a network that returns its input its scores are the average's, and the closed form is the
    averaging attack's on the same proxies."""
    from mixdemo.attacks import inversion
    from mixdemo.attacks.reid import retrieval
    from mixdemo.attacks.tta_average import rescale

    seen = []

    class Identity(inversion.InversionNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x[0, 0].numpy().copy())
            return x

    cohort, subjects = synthetic_cohort(5, seed=4)
    targets, references = cohort[:4], cohort[6:10]
    mu = cohort.mean(0)
    out = inversion.averaged_inversion_experiment(Identity(), targets, subjects[:4], references, k=4,
                                                  alpha_range=(0.3, 0.5), population_mean=mu, n_draws=2, seed=0)
    assert len(seen) == 8 and (out["k"], out["n_targets"], out["n_draws"], out["reference_pool"]) == (4, 4, 2, 4)
    mean_ref = references.mean(0)
    for i, average in enumerate(seen):  # every reference once (k = R), one α: average − r̄ = α·(x − r̄)
        x = targets[i % 4]
        alpha = float(((average - mean_ref) * (x - mean_ref)).sum() / ((x - mean_ref) ** 2).sum())
        assert 0.3 <= alpha <= 0.5
        np.testing.assert_allclose(average, alpha * x + (1 - alpha) * mean_ref, atol=1e-5)
    assert out["network"]["msssim_mean"] == pytest.approx(out["average"]["msssim_mean"], abs=1e-6)
    assert out["network"]["reid_map"] == pytest.approx(out["average"]["reid_map"])
    assert len(out["network"]["reid_map_per_draw"]) == 2
    closed = [retrieval(np.stack([rescale(a - 0.6 * mu) for a in seen[j:j + 4]]), subjects[:4]).map for j in (0, 4)]
    assert out["closed_form"]["reid_map"] == pytest.approx(np.mean(closed))  # α̂ = 0.4, the range's middle
    with pytest.raises(ValueError, match="k must be between 1 and the 4 references"):
        inversion.averaged_inversion_experiment(Identity(), targets, subjects[:4], references, k=5,
                                                alpha_range=(0.3, 0.5), population_mean=mu)


def test_the_inversion_server_never_trains_on_the_clients_bank_subjects(tmp_path: Path, small_cohort: Path) -> None:
    """``training.train_inversion`` leaves the first --bank-subjects training subjects out (the demo client's bank),
    records both sides, and writes a network that loads by name; too few subjects left is refused by name."""
    from mixdemo.attacks.inversion import InversionNet, split_subjects
    from mixdemo.weights import read_training_record
    from training import train_inversion

    assert split_subjects(["s1", "s0", "s1", "s2", "s3"], 2) == (["s1", "s0"], ["s2", "s3"])
    with pytest.raises(ValueError, match="needs 2 at least"):
        split_subjects(["s0", "s1", "s2"], 2)
    train_inversion.main(["--data", str(small_cohort), "--steps", "2", "--batch-size", "1", "--bank-subjects", "0",
                          "--downsample", "4", "--out", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    record = read_training_record(tmp_path / "inversion")
    assert record["client_bank_subjects"] == [] and len(record["server_subjects"]) == 2 and record["server_scans"] == 4
    assert record["model_class"] == "mixdemo.attacks.inversion.InversionNet" and record["downsample"] == 4
    assert InversionNet.from_pretrained(str(tmp_path / "inversion")).downsample == 4
    assert (tmp_path / "run" / "train.log").read_text().splitlines()[-1].startswith("2\t")
    with pytest.raises(ValueError, match="needs 2 at least"):
        train_inversion.main(["--data", str(small_cohort), "--steps", "1", "--bank-subjects", "1", "--out", str(tmp_path)])


def test_a_server_with_a_public_cohort_trains_on_every_scan_of_it(tmp_path: Path, small_cohort: Path) -> None:
    """``--server-data``: every scan of another cohort (both splits) joins the server's own, its subjects named by their
    folder; the cohort of ``--data`` itself is refused (its bank subjects would be trained on)."""
    from mixdemo.weights import read_training_record
    from training import train_inversion

    public = tmp_path / "public"
    shutil.copytree(small_cohort, public)
    common = ["--data", str(small_cohort), "--steps", "1", "--batch-size", "1", "--bank-subjects", "0", "--downsample", "4",
              "--out", str(tmp_path), "--run-dir", str(tmp_path / "run")]
    train_inversion.main([*common, "--server-data", str(public)])
    record = read_training_record(tmp_path / "inversion")
    assert record["server_scans"] == 4 + 8 and record["server_cohorts"] == [str(small_cohort), str(public)]
    assert sum(s.startswith("public/") for s in record["server_subjects"]) == 4 and len(record["server_subjects"]) == 6
    with pytest.raises(ValueError, match="is --data itself"):
        train_inversion.main([*common, "--server-data", str(small_cohort)])


def test_inversion_variants_trains_each_variant_and_scores_it_beside_the_shipped_network(tmp_path: Path,
                                                                                        small_cohort: Path) -> None:
    """``training.inversion_variants``: the shipped network's row, then each variant trained by train_inversion with
    its own arguments (the public cohort's folder substituted; --steps overriding) and scored by the privacy section."""
    from training import inversion_variants as iv

    assert iv.variant_arguments("64³ patches, batch 2, 600 steps", 3) == ["--patch-size", "64", "--batch-size", "2",
                                                                          "--steps", "3"]
    assert iv.variant_arguments("+ a public cohort (24 more subjects)", None, tmp_path) == ["--server-data", str(tmp_path)]
    public = tmp_path / "public"
    shutil.copytree(small_cohort, public)
    doc = iv.main(["--data", str(small_cohort), "--smoke", "--steps", "1", "--bank-subjects", "0", "--public-cohort",
                   str(public), "--variants", "seed1", "+ a public cohort (24 more subjects)", "--out", str(tmp_path / "v.json")])
    assert json.loads((tmp_path / "v.json").read_text()) == doc
    shipped, seed1, public_row = doc["rows"]
    assert shipped["variant"] == iv.SHIPPED and shipped["train_command"].startswith("python -m training.train_inversion")
    assert seed1["seed"] == 1 and seed1["steps"] == 1 and seed1["train_command"].endswith("--seed 1 --steps 1")
    assert public_row["server_scans"] == seed1["server_scans"] + 8
    for r in doc["rows"]:
        assert 0 <= r["estimate_reid_map"] <= 1 and r["higher_in_draws"] <= r["n_draws"]


def test_inversion_variants_are_named_by_short_keys_or_their_labels_and_an_unknown_name_lists_them(capsys) -> None:
    """``--variants seed1 patch64`` picks the variants labelled "seed 1" and "64³ patches, …" (the labels, the JSON's
    row names, work too); a name that is neither stops with the keys and labels to choose from."""
    from training import inversion_variants as iv

    args = iv.parse_args(["--variants", "seed1", "PATCH64", "+ a public cohort (24 more subjects)"])
    assert args.variants == ["seed 1", "64³ patches, batch 2, 600 steps", "+ a public cohort (24 more subjects)"]
    assert iv.parse_args([]).variants == list(iv.VARIANTS)
    with pytest.raises(SystemExit):
        iv.parse_args(["--variants", "seed3"])
    err = capsys.readouterr().err
    assert "no variant 'seed3'" in err and "seed1, seed2, patch64, public" in err and "'seed 1'" in err


def test_the_inversion_section_mixes_with_the_bank_subjects_its_network_never_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    """The section's references are the scans of the subjects the network's record names as the client's bank, and
    it says whether any of them was among the server's; targets and references are pooled as the network's training
    scans were, whatever the run's own pooling."""
    from training import evaluate_privacy

    seen = {}

    def fake_experiment(net, targets, identities, references, **kwargs):
        seen["references"] = references
        seen.setdefault("ranges", []).append(kwargs["alpha_range"])
        lo = kwargs["alpha_range"][0]
        return {"estimate_reid_map": lo, "proxy_reid_map": lo / 2, "estimate_msssim_mean": 1.0, "proxy_msssim_mean": 0.5}

    def fake_chained(net, targets, identities, references, **kwargs):
        seen["chained"] = references, kwargs["k"], kwargs["population_mean"].shape
        return {}

    record = {"client_bank_subjects": ["s1", "s3"], "server_subjects": ["s0", "s2"], "steps": 7, "server_scans": 4}
    monkeypatch.setattr(evaluate_privacy.inversion, "inversion_experiment", fake_experiment)
    monkeypatch.setattr(evaluate_privacy.inversion, "averaged_inversion_experiment", fake_chained)
    subjects = ["s3", "s1", "s1", "s0", "s2", "s0", "s3", "s2"]
    small = np.arange(8, dtype=np.float32)[:, None, None, None] * np.ones((8, 2, 2, 2), np.float32)
    c = SimpleNamespace(train=[SimpleNamespace(subject=s) for s in subjects], train_small=small, test_small=small[:2],
                        identities=["t", "t"], template_small=np.zeros((2, 2, 2), np.float32))
    net = evaluate_privacy.inversion.InversionNet(downsample=evaluate_privacy.SMOKE.downsample)
    out = evaluate_privacy.run_inversion(net, record, c, evaluate_privacy.SMOKE, (0.3, 0.5), 0)
    assert sorted(seen["references"][:, 0, 0, 0].tolist()) == [0, 1, 2, 6]  # every scan of s1 and s3
    chained_refs, k, mu_shape = seen["chained"]  # the chained attack: the same references, K of the defences (≤ R)
    assert chained_refs is seen["references"] and k == min(evaluate_privacy.SMOKE.defence_k, 4) and mu_shape == (2, 2, 2)
    ranges = evaluate_privacy.SMOKE.sweep_ranges  # then the same single-proxy attack at each α range of the sweep
    assert seen["ranges"] == [(0.3, 0.5), *ranges]
    assert [r["alpha_range"] for r in out["alpha_sweep"]] == [list(r) for r in ranges]
    assert [r["estimate_reid_map"] for r in out["alpha_sweep"]] == [lo for lo, _ in ranges]
    assert all(r["n_draws"] == evaluate_privacy.SMOKE.sweep_reid_draws for r in out["alpha_sweep"])
    assert out["references_among_server_scans"] is False and out["trained"] and out["steps"] == 7
    record["server_subjects"] = ["s0", "s1"]
    assert evaluate_privacy.run_inversion(net, record, c, evaluate_privacy.SMOKE, (0.3, 0.5), 0)["references_among_server_scans"]
    assert not evaluate_privacy.run_inversion(net, {}, c, evaluate_privacy.SMOKE, (0.3, 0.5), 0)["trained"]  # a stand-in's
    full = SimpleNamespace(**vars(c), test=[SimpleNamespace(image=np.full((4, 4, 4), 9.0))] * 2)
    full.train = [SimpleNamespace(subject=s, image=np.full((4, 4, 4), float(i))) for i, s in enumerate(subjects)]
    out = evaluate_privacy.run_inversion(evaluate_privacy.inversion.InversionNet(downsample=2), record, full,
                                         evaluate_privacy.SMOKE, (0.3, 0.5), 0)  # the network's own pooling, not the run's
    assert seen["references"].shape == (4, 2, 2, 2) and sorted(seen["references"][:, 0, 0, 0].tolist()) == [0, 1, 2, 6]
    assert out["downsample"] == 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")  # the meta stand-in's no-op copies
def test_train_score_resumes_on_another_device_than_the_cpu(tmp_path: Path, small_cohort: Path, monkeypatch) -> None:
    """A checkpoint resumed on a GPU: its CPU random-number state must stay on the CPU (torch.set_rng_state takes
    nothing else; mapped onto the GPU it was 'TypeError: RNG state must be a torch.ByteTensor'). The meta device
    stands in for the GPU here: the resume loads the checkpoint and sets every state, then exports (stubbed)."""
    from training import train_score

    argv = ["--data", str(small_cohort), "--steps", "2", "--batch-size", "2", "--max-subjects", "1",
            "--features", ",".join(map(str, TINY)), "--out", str(tmp_path / "w"), "--run-dir", str(tmp_path / "run")]
    train_score.main([*argv, "--device", "cpu"])
    monkeypatch.setattr(train_score, "pick_device", lambda prefer=None: torch.device("meta"))
    monkeypatch.setattr(train_score, "export", lambda model, args, *rest: {"device": next(model.parameters()).device})
    assert train_score.main(argv)["device"].type == "meta"  # resumed at its last step: nothing left to train


def test_evaluate_privacy_refuses_a_reference_pool_too_small_for_its_sections_before_any_runs() -> None:
    """A retraining user's cohort with few training scans: the defences drew 2 × tta_k distinct references per patch
    and ended in a ValueError traceback after the earlier sections had run (an hour of a full run lost). The
    sections that cannot run are named before any runs."""
    from types import SimpleNamespace

    from training.evaluate_privacy import FULL, check_reference_pool

    cohort = SimpleNamespace(train=[object()] * (2 * FULL.tta_k - 1))
    check_reference_pool(cohort, FULL, ["bss", "reid", "leakage"])  # tta_k references are enough for the leakage
    with pytest.raises(SystemExit, match=rf"defences.* {2 * FULL.tta_k} training scans .* holds {2 * FULL.tta_k - 1}"):
        check_reference_pool(cohort, FULL, ["bss", "defences"])
    with pytest.raises(SystemExit, match=rf"leakage, sweep.* {FULL.tta_k} training scans"):
        check_reference_pool(SimpleNamespace(train=[object()]), FULL, ["leakage", "sweep"])


def test_the_shuffled_requests_attack_draws_references_again_from_a_pool_smaller_than_k() -> None:
    """K proxies per target from a reference pool of fewer than K scans: drawn with replacement, as the averaging
    curve draws them (it was a ValueError from numpy's choice)."""
    from types import SimpleNamespace

    from training.evaluate_privacy import shuffled_attack

    rng = np.random.default_rng(0)
    c = SimpleNamespace(test_small=rng.random((3, 8, 8, 8), np.float32), train_small=rng.random((2, 8, 8, 8), np.float32),
                        template_small=rng.random((8, 8, 8), np.float32), identities=["a", "a", "b"])
    out = shuffled_attack(c, 4, (0.3, 0.5), seed=0)
    assert out["k"] == 4 and 0 <= out["link_precision"] <= 1 and np.isfinite(out["attack_msssim"])
