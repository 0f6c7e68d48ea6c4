"""Inverting a proxy with a reference bank the server knows (an attack the paper did not try).

The key of mixup privacy is the reference: x_mix = α·x + (1−α)·x_ref (Eq. 2) hides x only while x_ref is
secret. A bank that is public (the demo's phantom bank, which ``python -m mixdemo.client`` mixes with unless
given ``--references``) or has leaked turns the key into a choice among R scans. For each bank scan r_j and α
on a grid, the candidate target is x̂ = (x_mix − (1−α)·r_j)/α (Eq. 2 solved for x). With the right (r_j, α),
x̂ is the target, a scan of another subject, whose deviation from the bank's mean is about as unlike every bank
scan's deviation as subjects are unlike each other; a wrong r_j or α leaves ± a bank scan's deviation in x̂,
which correlates with it. The attack keeps the (r_j, α) whose x̂ correlates least with any bank deviation. It
then refines α with r_j: normalised scans share an intensity spread, so α is the root of
Var(x_mix − (1−α)·r_j) = α²·s² (s² the bank scans' mean variance) nearest to where x̂'s correlation with r_j's
own deviation crosses zero. Every quantity is a dot product of the proxy and the bank, so R references and a
fine α grid cost seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from mixdemo.metrics import msssim_3d_batch

ALPHA_GRID = np.round(np.arange(0.05, 0.951, 0.005), 3)
"""The α the attacker tries: it needs no knowledge of the client's α range."""
FLAT_RMS = 1e-6
"""Per-voxel RMS deviation from the bank's mean at or below which every bank scan counts as the same (intensities
lie in [0, 1])."""


@dataclass(frozen=True)
class BankInversion:
    """One proxy inverted: the bank scan taken for its reference, α, the estimated target, the criterion."""

    reference: int  # index into the bank
    alpha: float
    estimate: np.ndarray  # x̂, clipped to [0, 1] (the range of normalised scans)
    max_correlation: float  # the criterion at the chosen (reference, α grid point): lower is more plausible


class KnownBank:
    """A bank of R reference scans (R, X, Y, Z) as the attacker holds it: deviations from their mean."""

    def __init__(self, bank: np.ndarray, alpha_grid: np.ndarray = ALPHA_GRID) -> None:
        bank = np.asarray(bank, np.float64)
        if bank.ndim != 4 or len(bank) < 2:
            raise ValueError(f"Expected a bank of 2 or more volumes (R, X, Y, Z); got shape {bank.shape}.")
        self.bank = bank
        self.mean = bank.mean(0)
        self.deviations = _centred((bank - self.mean).reshape(len(bank), -1))  # (R, V)
        self.gram = self.deviations @ self.deviations.T  # ⟨D_j, D_k⟩
        self.norms = np.sqrt(np.diag(self.gram))
        if not (self.norms > FLAT_RMS * np.sqrt(self.deviations.shape[1])).any():
            raise ValueError("The bank's scans do not differ here (a region of background, or of one flat intensity): "
                             "the known-bank attack has nothing to tell them apart by. Try a region of brain.")
        self.scans = _centred(bank.reshape(len(bank), -1))  # each scan less its mean: for the variance match
        self.spread = float((self.scans**2).sum(1).mean())  # s²·V, a normalised scan's variance (× voxels)
        self.alpha_grid = np.asarray(alpha_grid, np.float64)

    def invert(self, proxy: np.ndarray) -> BankInversion:
        """Eq. 2 solved for the target with the most plausible (bank scan, α)."""
        proxy = np.asarray(proxy, np.float64)
        m = _centred((proxy - self.mean).reshape(1, -1))[0]
        g_m = self.deviations @ m  # ⟨m, D_k⟩
        mm = float(m @ m)
        a = self.alpha_grid[:, None, None]  # (A, 1, 1) against (j, k)
        # v(j, α) = (m − (1−α)·D_j)/α: ⟨v, D_k⟩ and ‖v‖ from the Gram products
        dot = (g_m[None, None, :] - (1 - a) * self.gram[None]) / a  # (A, R, R)
        norm_v = np.sqrt(np.maximum(mm - 2 * (1 - a[..., 0]) * g_m[None] + (1 - a[..., 0]) ** 2 * self.norms[None] ** 2,
                                    1e-12)) / a[..., 0]  # (A, R)
        corr = np.abs(dot) / (norm_v[..., None] * self.norms[None, None])
        criterion = corr.max(2)  # (A, R): the strongest correlation left with any bank scan
        ai, j = np.unravel_index(int(criterion.argmin()), criterion.shape)
        alpha = self._refined_alpha(proxy, j, self._zero_crossing_alpha(g_m[j], float(self.gram[j, j])))
        estimate = np.clip((proxy - (1 - alpha) * self.bank[j]) / alpha, 0, 1)
        return BankInversion(int(j), alpha, estimate.astype(np.float32), float(criterion[ai, j]))

    def _zero_crossing_alpha(self, g_mj: float, g_jj: float) -> float:
        """α at which x̂ is uncorrelated with the chosen reference's deviation: ⟨m − (1−α)·D_j, D_j⟩ = 0."""
        lo, hi = float(self.alpha_grid[0]), float(self.alpha_grid[-1])
        return float(np.clip(1.0 - g_mj / g_jj, lo, hi))


    def _refined_alpha(self, proxy: np.ndarray, j: int, near: float) -> float:
        """The α in the grid's range for which x̂ has a normalised scan's spread, the root nearest ``near``
        (``near`` itself without one): with u = 1 − α, ‖m − u·r‖² = (1 − u)²·s² is a quadratic in u."""
        m = _centred(proxy.reshape(1, -1))[0]
        r = self.scans[j]
        mm, mr, rr, s2 = float(m @ m), float(m @ r), float(r @ r), self.spread
        lo, hi = float(self.alpha_grid[0]), float(self.alpha_grid[-1])
        roots = [1 - u.real for u in np.roots([rr - s2, 2 * (s2 - mr), mm - s2]) if abs(u.imag) < 1e-9]
        roots = [a for a in roots if lo <= a <= hi]
        return float(min(roots, key=lambda a: abs(a - near))) if roots else near


def invert_downsampled(proxy: np.ndarray, bank: np.ndarray, max_voxels: int = 64**3) -> BankInversion:
    """:meth:`KnownBank.invert` on volumes of any size: the search on copies average-pooled to ``max_voxels`` or
    fewer (a whole brain: 2×), the estimate at full resolution with the (reference, α) found."""
    from mixdemo.attacks.reid import downsample

    factor = 1
    while np.prod([n // factor for n in proxy.shape]) > max_voxels:
        factor += 1
    found = KnownBank(downsample(bank, factor)).invert(downsample(proxy, factor))
    if factor == 1:
        return found
    estimate = np.clip((proxy - (1 - found.alpha) * bank[found.reference]) / found.alpha, 0, 1).astype(np.float32)
    return BankInversion(found.reference, found.alpha, estimate, found.max_correlation)


def _centred(rows: np.ndarray) -> np.ndarray:
    """Each row less its own mean."""
    return rows - rows.mean(1, keepdims=True)


def known_bank_experiment(
    targets: np.ndarray,
    identities: Sequence[Hashable],
    bank: np.ndarray,
    *,
    alpha_range: tuple[float, float],
    n_draws: int = 3,
    seed: int = 0,
) -> dict:
    """Each target mixed with a random bank scan and α ~ U(alpha_range), ``n_draws`` times; every proxy inverted.

    Args:
        targets: (N, X, Y, Z) test scans (downsampled as for re-identification).
        identities: subject of each target (test–retest pairs share one).
        bank: (R, X, Y, Z) the client's reference bank, known to the attacker.

    Returns:
        Reference hit rate, |α̂ − α|, MS-SSIM of x̂ and of the proxy to the target, and re-identification mAP of the
        estimates and of the proxies over the same draws (:func:`mixdemo.attacks.reid.retrieval`).
    """
    from mixdemo.attacks.reid import encode_with_random_references, retrieval

    attacker = KnownBank(bank)
    rng = np.random.default_rng(seed)
    hits, alpha_err, ms_est, ms_proxy, map_est, map_proxy = [], [], [], [], [], []
    for _ in range(n_draws):
        proxies, refs, alphas = encode_with_random_references(targets, bank, alpha_range, rng)
        found = [attacker.invert(p) for p in proxies]
        est = np.stack([f.estimate for f in found])
        hits += [f.reference == int(r) for f, r in zip(found, refs)]
        alpha_err += [abs(f.alpha - float(a)) for f, a in zip(found, alphas)]
        ms_est += list(msssim_3d_batch(est, targets, data_range=1.0))
        ms_proxy += list(msssim_3d_batch(proxies, targets, data_range=1.0))
        map_est.append(retrieval(est, identities).map)
        map_proxy.append(retrieval(proxies, identities).map)
    return {
        "reference_hit_rate": float(np.mean(hits)),
        "alpha_abs_error_mean": float(np.mean(alpha_err)),
        "estimate_msssim_mean": float(np.mean(ms_est)),
        "estimate_msssim_min": float(np.min(ms_est)),
        "proxy_msssim_mean": float(np.mean(ms_proxy)),
        "estimate_reid_map": float(np.mean(map_est)),
        "proxy_reid_map": float(np.mean(map_proxy)),
        "bank_size": int(len(bank)), "n_targets": int(len(targets)), "n_draws": n_draws,
        "alpha_range": list(alpha_range),
        "what": "the server knows the bank (public or leaked) but not which scan nor α: x̂ = (x_mix − (1−α)·r)/α "
                "at the (r, α) leaving x̂ least correlated with any bank scan's deviation (mixdemo.attacks.known_bank)",
    }
