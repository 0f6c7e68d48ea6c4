"""The attack lab's evaluation: what an honest-but-curious server learns from mixup proxies.

::

    python -m training.evaluate_privacy                 # full run, results/privacy.json + figures
    python -m training.evaluate_privacy --quick --out /tmp/p.json   # < 5 min on 2 cores
    python -m training.evaluate_privacy --smoke --out /tmp/p.json   # about a minute on 2 cores (the tests')

Sections (``--sections``, default all; ``--merge`` updates an existing JSON in place):

* ``bss`` — Langevin blind source separation (Kim et al. Table 1; Jayaram & Thickstun 2020) of
  32³ proxies of test patches, α known / α unknown, several initialisations; controls.
* ``reid`` — re-identification by MS-SSIM retrieval (Kim et al. Table 2), no proxy vs mixup.
* ``tta`` — averaging the K TTA proxies of one target (K = 1…20).
* ``reuse`` — a small reference bank reused for many targets.
* ``known_bank`` — the client's bank known to the server (public, as the demo's, or leaked): each single proxy
  inverted by trying every bank scan and α (:mod:`mixdemo.attacks.known_bank`).
* ``inversion`` — a network the server trained on scans of its own, mixed as the client mixes, to take a proxy
  back to its target (:mod:`mixdemo.attacks.inversion`, ``python -m training.train_inversion``); the client's
  references are none of its scans.
* ``leakage`` — arg-max of the server's own ŷ_mix against the target's labels (trained S).
* ``defences`` — fresh α per mix, separate shuffled requests, restricted α range.
* ``sweep`` — α range sweep: Learned+TTA Dice against each attack (privacy–utility figure).

Everything uses phantoms of the test subjects as victims and the training subjects as the
reference pool; α ~ U(range) with a fixed seed; the JSON names the command, seed, date and the
SHA-256 of the weights used. Without trained weights the script still runs (untrained models)
and says so in ``weights_sha256``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mixdemo.attacks import bss, inversion, known_bank, leakage, reid
from mixdemo.attacks import tta_average as tta
from mixdemo.attacks.score import ScoreNet, tweedie_denoise
from mixdemo.data import load_cohort, load_volumes
from mixdemo.metrics import msssim_3d_batch
from mixdemo.mixing import DEFAULT_ALPHA_RANGE, patch_slices, sample_patch_corner
from mixdemo.models import SegmentationNet, UnmixingNet, pick_device
from mixdemo.phantoms import DEFAULT_COHORT, ensure_default_cohort
from training import (add_device_option, check_alpha_range_option, command_line, count, default_out, user_errors,
                      write_record)

SECTIONS = ("bss", "reid", "tta", "reuse", "known_bank", "inversion", "leakage", "defences", "sweep")
DATA_NOTE = "MNI152 phantoms (no patient data)"


@dataclass(frozen=True)
class Config:
    """Sizes of one evaluation run (``full``, ``quick`` or ``smoke``)."""

    bss_known: int = 8  # proxies, α known
    bss_unknown: int = 3  # proxies, α unknown
    n_init: int = 3  # initialisations per proxy (α known)
    n_init_unknown: int = 2
    steps_per_level: int = 10  # Langevin T
    max_sigma: float | None = 3.0  # the network's score at σ ≤ this (None: at every level)
    tail: bool = True  # above max_sigma: the Gaussian tail of the population (False: skip those levels)
    reid_draws: int = 5
    sweep_reid_draws: int = 3
    tta_max_k: int = 20
    reuse_bank: int = 2
    reuse_bank_larger: int = 10  # the reuse attack again with the demo client's bank size
    patches: int = 32  # 32³ test patches for Dice / leakage
    tta_k: int = 4  # TTA mixes per patch for Dice
    sweep_bss: int = 4  # proxies per α range for the sweep's BSS (α known, 1 init)
    defence_k: int = 10  # proxies per target for the averaging attacks in the defences
    downsample: int = 2  # average pooling of whole volumes
    max_test_scans: int = 0  # 0: all
    max_ref_scans: int = 0  # 0: all
    sweep_ranges: tuple[tuple[float, float], ...] = ((0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.3, 0.7), (0.1, 0.9))


FULL = Config()
QUICK = Config(bss_known=3, bss_unknown=2, n_init=2, n_init_unknown=1, steps_per_level=3, reid_draws=2, sweep_reid_draws=1, tta_max_k=10,
               patches=16, tta_k=3, sweep_bss=2, defence_k=6, downsample=3, sweep_ranges=((0.1, 0.3), (0.3, 0.7), (0.7, 0.9)))
SMOKE = Config(bss_known=1, bss_unknown=1, n_init=2, n_init_unknown=1, steps_per_level=1, reid_draws=1, sweep_reid_draws=1, tta_max_k=3,
               patches=2, tta_k=2, sweep_bss=1, defence_k=3, downsample=4, max_test_scans=6, max_ref_scans=6,
               sweep_ranges=((0.1, 0.3), (0.7, 0.9)))
TWO_REF_SEG, TWO_REF_UNMIX = "segmentation-2ref", "unmixing-2ref"
"""Model folders of S and D trained on three-source proxies (``training.train --n-references 2``)."""
RESTRICTED_RANGE = (0.3, 0.4)
"""The "restricted α" defence: a narrower, lower range than the default U(0.3, 0.5)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller run (< 5 min on 2 cores)")
    p.add_argument("--smoke", action="store_true", help="tiny run for tests (about a minute on 2 cores; numbers meaningless)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path; figures go next to it (default results/privacy.json; results/quick/privacy.json "
                        "with --quick or --smoke)")
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help="cohort folder (phantoms are generated if absent)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--merge", action="store_true", help="update the keys of an existing --out JSON")
    p.add_argument("--alpha-range", type=float, nargs=2, default=DEFAULT_ALPHA_RANGE, help="α range of the main attacks")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--steps-per-level", type=count(1), default=None, help="Langevin T (default by run size)")
    p.add_argument("--max-sigma", type=float, default=3.0,
                   help="the score network at levels σ ≤ this, the population's Gaussian tail above it (≤ 0: the network at every level)")
    p.add_argument("--no-tail", action="store_true", help="skip the levels above --max-sigma instead (start Langevin there)")
    p.add_argument("--threads", type=count(0), default=0, help="torch CPU threads (0: torch's default)")
    add_device_option(p)
    p.add_argument("--unmixing", default=None,
                   help="the one-reference D model folder of the sections that unmix (leakage, defences, sweep); "
                        "default: the client's default D (mixdemo.weights.DEFAULT_UNMIXING)")
    args = p.parse_args(argv)
    check_alpha_range_option(p, args)
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := sorted(set(args.section_list) - set(SECTIONS)):
        p.error(f"--sections: unknown {', '.join(unknown)}; expected a subset of {', '.join(SECTIONS)}")
    if args.out is None:
        args.out = default_out("privacy.json", args.quick or args.smoke)
    return args


# ------------------------------------------------------------------------------------------ setup


def model_names(need_seg: bool, unmixing: str | None = None, need_inversion: bool = False) -> dict[str, str]:
    """The weights folder each role loads: the score model, and with ``need_seg`` S, D (``unmixing``, default the
    client's default D) and the two-reference pair, with ``need_inversion`` the learned inversion's network
    (:func:`load_inversion`). The record keeps it as ``models``."""
    from mixdemo.weights import DEFAULT_UNMIXING

    names = {"score": "score", "segmentation": "segmentation", "unmixing": unmixing or DEFAULT_UNMIXING,
             TWO_REF_SEG: TWO_REF_SEG, TWO_REF_UNMIX: TWO_REF_UNMIX}
    names = names if need_seg else {"score": "score"}
    return {**names, "inversion": "inversion"} if need_inversion else names


def _load_trained(name: str, device: torch.device, allow_hub: bool):
    """(model, sha256 of its weights) of a weights folder; WeightsNotFound when it is nowhere (``allow_hub=False``:
    not in the local folder), WeightsError when it is there but corrupt or unloadable (never scored as a stand-in)."""
    from mixdemo.weights import WeightsNotFound, load_model, resolve_model_dir, sha256_file, weights_dir

    if not allow_hub and not (weights_dir() / name / "model.safetensors").exists():
        raise WeightsNotFound(f"no local {name} weights")
    return load_model(name, device=str(device)), sha256_file(resolve_model_dir(name) / "model.safetensors")


def _stand_in_sha(name: str) -> str:
    return f"untrained ({name} weights missing)"


def load_models(device: torch.device, need_seg: bool, allow_hub: bool = True,
                unmixing: str | None = None) -> tuple[dict, dict]:
    """Trained models of :func:`model_names` when their folders exist, else untrained stand-ins (said in the
    record): (role → model, weights folder → sha256). Weights that exist but fail their checksum or do not load
    stop the run (WeightsError): they are never replaced by a stand-in.

    ``allow_hub=False`` skips the Hub look-up when the local folder is missing (offline tests).
    """
    from mixdemo.weights import WeightsNotFound

    models, shas = {}, {}
    classes = {"score": ScoreNet, "segmentation": SegmentationNet, "unmixing": UnmixingNet,
               TWO_REF_SEG: SegmentationNet, TWO_REF_UNMIX: lambda: UnmixingNet(n_references=2)}
    for role, name in model_names(need_seg, unmixing).items():
        try:
            models[role], shas[name] = _load_trained(name, device, allow_hub)
        except WeightsNotFound:
            torch.manual_seed(0)
            models[role], shas[name] = classes[role]().to(device).eval(), _stand_in_sha(name)
    return models, shas


def load_inversion(device: torch.device, downsample: int, seed: int,
                   allow_hub: bool = True) -> tuple[inversion.InversionNet, dict, str]:
    """The learned inversion's network (``python -m training.train_inversion``), its ``training.json`` and the sha256
    of its weights; without them an untrained stand-in on this run's pooling, an empty record and a note saying so
    (the section then says ``"trained": false``). Corrupt weights stop the run, as in :func:`load_models`."""
    from mixdemo.weights import WeightsNotFound, read_training_record, resolve_model_dir

    try:
        net, sha = _load_trained("inversion", device, allow_hub)
    except WeightsNotFound:
        torch.manual_seed(seed)
        return inversion.InversionNet(downsample=downsample).to(device).eval(), {}, _stand_in_sha("inversion")
    return net, read_training_record(resolve_model_dir("inversion")), sha


@dataclass
class Cohort:
    """Victims (test scans) and the reference pool (training scans), full size and pooled."""

    test: list
    train: list
    test_small: np.ndarray
    train_small: np.ndarray
    template_small: np.ndarray
    identities: list[str]

    @functools.cached_property
    def tail(self) -> tuple[float, float]:
        """Gaussian tail of the separation's prior: the training scans' brain patches (computed once)."""
        return bss.population_tail([v.image for v in self.train], [v.labels for v in self.train])


def load_data(data: Path, cfg: Config) -> Cohort:
    cohort = load_cohort(ensure_default_cohort(data))
    test_records, train_records = cohort.split("test"), cohort.split("train")
    test = load_volumes(test_records[: cfg.max_test_scans or None])
    train = load_volumes(train_records[: cfg.max_ref_scans or None])
    f = cfg.downsample
    return Cohort(
        test=test, train=train,
        test_small=reid.downsample(np.stack([v.image for v in test]), f),
        train_small=reid.downsample(np.stack([v.image for v in train]), f),
        template_small=reid.downsample(tta.template_brain(), f),
        identities=[v.subject for v in test],
    )


def check_reference_pool(c: Cohort, cfg: Config, sections: list[str]) -> None:
    """SystemExit naming the sections that need more distinct references per patch than the cohort's training scans
    offer (the Dice of the client's TTA: ``tta_k``; the two-reference defence: 2 × ``tta_k``), before any section
    runs: they would end in a traceback after the others had run."""
    needs = {"leakage": cfg.tta_k, "sweep": cfg.tta_k, "defences": 2 * cfg.tta_k}
    short = [name for name in sections if needs.get(name, 0) > len(c.train)]
    if short:
        most = max(needs[name] for name in short)
        raise SystemExit(f"error: the sections {', '.join(short)} need {most} training scans or more as references "
                         f"(distinct ones for each patch's TTA); the cohort holds {len(c.train)}. Use a larger cohort, "
                         f"or leave them out (--sections).")


def bss_patches(c: Cohort, n: int, alpha_range: tuple[float, float], rng: np.random.Generator,
                n_references: int = 1) -> dict:
    """n test patches (32³, brain-centred), each with ``n_references`` training references and α ~ U(range).

    With two references the reference weights split 1 − α by a flat Dirichlet (as in training);
    ``ref`` is the first reference, ``refs`` all of them, ``weights`` (n, 1 + R).
    """
    fg = [np.argwhere(v.labels > 0) for v in c.test]
    tx, rx = [], []
    for _ in range(n):
        t = int(rng.integers(len(c.test)))
        sl = patch_slices(sample_patch_corner(c.test[t].image.shape, 32, rng, fg[t]), 32)
        tx.append(c.test[t].image[sl])
        rx.append(np.stack([c.train[int(rng.integers(len(c.train)))].image[sl] for _ in range(n_references)]))
    target, refs = np.stack(tx), np.stack(rx)
    alphas = rng.uniform(*alpha_range, size=n).astype(np.float32)
    split = rng.dirichlet(np.ones(n_references), size=n) if n_references > 1 else np.ones((n, 1))
    weights = np.concatenate([alphas[:, None], (1 - alphas[:, None]) * split], 1).astype(np.float32)
    proxy = weights[:, 0, None, None, None] * target + np.einsum("nr,nrxyz->nxyz", weights[:, 1:], refs)
    return {"target": target, "ref": refs[:, 0], "refs": refs, "alpha": alphas, "weights": weights,
            "proxy": proxy.astype(np.float32)}


def langevin_config(cfg: Config, c: Cohort) -> bss.LangevinConfig:
    """The sampler of every separation here: the network's score at σ ≤ ``max_sigma``, and above it (from the
    prior's σ_1) the Gaussian tail of the training scans' brain patches, unless ``cfg.tail`` is off."""
    tail = c.tail if cfg.tail and cfg.max_sigma else None
    return bss.LangevinConfig(steps_per_level=cfg.steps_per_level, max_sigma=cfg.max_sigma, tail=tail)


def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64).ravel()
    return {"msssim_mean": float(v.mean()), "msssim_std": float(v.std()), "n": int(v.size)}


# ------------------------------------------------------------------------------------------ sections


def run_bss(score, c: Cohort, cfg: Config, alpha_range, seed: int, figure: Path | None) -> dict:
    """Table 1's separation attack with its controls."""
    rng = np.random.default_rng(seed)
    lc = langevin_config(cfg, c)
    p = bss_patches(c, cfg.bss_known, alpha_range, rng)
    # 1. α known: upper bound on the attacker
    known = bss.separate(score, p["proxy"], p["alpha"], n_init=cfg.n_init, config=lc, seed=seed)
    s_known, shown = bss.best_assignment(known.sources, p["target"], p["ref"])
    # 2. α unknown: grid search over the client's public α range (folded), selection by prior energy
    nu = cfg.bss_unknown
    grid = bss.folded_alpha_grid(alpha_range)
    unknown = bss.separate(score, p["proxy"][:nu], None, n_init=cfg.n_init_unknown, config=lc, seed=seed + 1,
                           alpha_grid=grid)
    s_unknown = bss.best_assignment_msssim(unknown.sources, p["target"][:nu], p["ref"][:nu])
    true_fold = np.maximum(p["alpha"][:nu], 1 - p["alpha"][:nu])[:, None]
    # 3. positive controls: reference known (exact Eq. 2 inverse, and the same Langevin with x_ref clamped); α = 1
    exact = bss.known_reference_recovery(p["proxy"], p["ref"], p["alpha"][:, None, None, None])
    langevin_ref = bss.separate_known_reference(score, p["proxy"], p["ref"], p["alpha"], config=lc, seed=seed + 2)
    alpha1 = bss.separate(score, p["target"], 1.0, n_init=1, config=lc, seed=seed + 3)
    s_alpha1 = bss.best_assignment_msssim(alpha1.sources, p["target"])
    # 4. sanity: the prior alone denoises (Langevin from x + σ z at a mid level)
    levels = score.sigma_levels.cpu()
    start = int(np.argmin(np.abs(np.log(levels.numpy() / 0.2))))
    sigma0 = float(levels[start])
    gen = torch.Generator().manual_seed(seed + 4)
    clean = torch.from_numpy(p["target"])
    noisy = clean + sigma0 * torch.randn(clean.shape, generator=gen)
    den = bss.langevin_denoise(score, noisy, start, config=lc, seed=seed + 5).cpu()
    device = next(score.parameters()).device
    tweedie = tweedie_denoise(score, noisy[:, None].to(device), sigma0)[:, 0].clamp(0, 1).cpu()
    # 5. ablations of the schedule, α known, one init, on the first proxies: the network's score at every
    #    level from σ_1 (no Gaussian tail), and the high levels skipped (start at σ ≤ max_sigma)
    nf = min(4, len(p["proxy"]))
    full = bss.separate(score, p["proxy"][:nf], p["alpha"][:nf], n_init=1, config=replace(lc, max_sigma=None, tail=None), seed=seed + 6)
    s_full = bss.best_assignment_msssim(full.sources, p["target"][:nf], p["ref"][:nf])
    cut = bss.separate(score, p["proxy"][:nf], p["alpha"][:nf], n_init=1, config=replace(lc, tail=None), seed=seed + 6)
    s_cut = bss.best_assignment_msssim(cut.sources, p["target"][:nf], p["ref"][:nf])
    same = bss.separate(score, p["proxy"][:nf], p["alpha"][:nf], n_init=1, config=lc, seed=seed + 6)
    s_same = bss.best_assignment_msssim(same.sources, p["target"][:nf], p["ref"][:nf])
    out = {
        "alpha_range": list(alpha_range),
        "alpha_known": {**_stats(s_known), "best_of_inits_mean": float(s_known.max(1).mean()), "n_proxies": len(s_known),
                        "n_init": cfg.n_init, "consistency_rms": float(known.consistency.mean())},
        "alpha_unknown": {**_stats(s_unknown), "n_proxies": nu, "n_init": cfg.n_init_unknown,
                          "alpha_grid": list(grid), "alpha_abs_error": float(np.abs(unknown.alphas - true_fold).mean())},
        "control": {
            "msssim_mean": float(msssim_3d_batch(langevin_ref, p["target"], data_range=1.0).mean()),
            "what": "Langevin with the reference known (source 2 clamped to x_ref), α known",
            "exact_inverse_msssim_mean": float(msssim_3d_batch(np.clip(exact, 0, 1), p["target"], data_range=1.0).mean()),
            "alpha_1_msssim_mean": float(s_alpha1.mean()),
            "denoise": {"sigma": sigma0, "msssim_noisy": float(msssim_3d_batch(noisy.clamp(0, 1), clean, data_range=1.0).mean()),
                        "msssim_langevin_denoised": float(msssim_3d_batch(den, clean, data_range=1.0).mean()),
                        "msssim_tweedie_denoised": float(msssim_3d_batch(tweedie, clean, data_range=1.0).mean()),
                        "what": "x + σz at the prior level nearest 0.2; Tweedie x̃ + σ² s(x̃, σ), and annealed Langevin from x̃"},
        },
        "alpha_known_full_schedule": {**_stats(s_full), "consistency_rms": float(full.consistency.mean()),
                                      "what": "ablation: the network's score at every level from σ_1 (no Gaussian tail), 1 init"},
        "alpha_known_skip_high_levels": {**_stats(s_cut), "consistency_rms": float(cut.consistency.mean()),
                                         "what": "ablation: levels above max_sigma skipped (start at σ ≤ max_sigma), 1 init"},
        "alpha_known_same_proxies": {**_stats(s_same), "consistency_rms": float(same.consistency.mean()),
                                     "what": "the attack's own sampler on the ablations' proxies, 1 init"},
        "chance": {  # what an attacker gets with no separation at all: read these before the attack numbers
            "proxy_vs_target_msssim_mean": float(msssim_3d_batch(p["proxy"], p["target"], data_range=1.0).mean()),
            "other_subject_vs_target_msssim_mean": float(msssim_3d_batch(p["ref"], p["target"], data_range=1.0).mean()),
        },
        "langevin": {"prior_levels": len(levels), "sigma_1": float(levels[0]), "sigma_L": float(levels[-1]),
                     "max_sigma": lc.max_sigma, "steps_per_level": lc.steps_per_level, "delta": lc.delta,
                     "tail": None if lc.tail is None else list(lc.tail),
                     "levels_run": len(bss._schedule(score, lc)),
                     "levels_with_network_score": sum(learned for _, learned in bss._schedule(score, lc))},
        "patch_size": 32,
    }
    if figure is not None:
        plot_bss(figure, p, known, s_known, shown)
    return out


def run_reid(c: Cohort, cfg: Config, alpha_range, seed: int, figure: Path | None) -> dict:
    out = reid.reid_experiment(c.test_small, c.identities, c.train_small, alpha_range=alpha_range,
                               n_draws=cfg.reid_draws, seed=seed)
    out["proxy_vs_raw_scans"] = reid.proxy_to_scan_experiment(c.test_small, c.identities, c.train_small, c.template_small,
                                                              alpha_range=alpha_range, n_draws=cfg.reid_draws, seed=seed)
    out["downsample"] = cfg.downsample
    if figure is not None:
        plot_reid(figure, out)
    return out


def tta_curve(c: Cohort, max_k: int, alpha_range, seed: int, *, fresh_alpha: bool = False,
              only_last: bool = False, n_references: int = 1) -> tuple[list, dict]:
    """[[K, msssim, reid_map], ...] of the averaging attack on the TTA proxies of every test scan.

    ``only_last`` scores K = ``max_k`` only (the defences and the sweep need no curve);
    ``n_references=2`` mixes each proxy with two references (weights 1 − α split at random).
    """
    rng = np.random.default_rng(seed)
    ks = [max_k] if only_last else list(range(1, max_k + 1))
    per_k: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    guess = float(np.mean(alpha_range))
    for target in c.test_small:
        refs = c.train_small[rng.choice(len(c.train_small), size=max_k * n_references,
                                          replace=max_k * n_references > len(c.train_small))]
        a = rng.uniform(*alpha_range, size=max_k if fresh_alpha else 1).astype(np.float32)
        a = np.broadcast_to(a, (max_k,))[:, None, None, None]
        if n_references == 1:
            proxies = a * target[None] + (1 - a) * refs  # Eq. 5
        else:
            split = rng.dirichlet(np.ones(n_references), size=max_k).astype(np.float32)
            ref_mix = np.einsum("kr,krxyz->kxyz", split, refs.reshape(max_k, n_references, *refs.shape[1:]))
            proxies = a * target[None] + (1 - a) * ref_mix
        for k, est in tta.running_tta_estimates(proxies, c.template_small, guess, ks).items():
            per_k[k].append(est)
    rows, estimates = [], {}
    for k in ks:
        est = np.stack(per_k[k])
        ms = float(msssim_3d_batch(est, c.test_small, data_range=1.0).mean())
        rows.append([k, ms, reid.retrieval(est, c.identities).map])
        estimates[k] = est
    return rows, estimates


def run_tta(c: Cohort, cfg: Config, alpha_range, seed: int, figure: Path | None) -> list:
    rows, _ = tta_curve(c, cfg.tta_max_k, alpha_range, seed)
    if figure is not None:
        plot_tta(figure, rows, chance_baselines(c))
    return rows


def chance_baselines(c: Cohort) -> dict:
    """Whole-volume MS-SSIM an attacker gets without any attack: the public template, another subject."""
    n = len(c.test_small)
    template = np.broadcast_to(c.template_small, c.test_small.shape)
    others = c.train_small[np.arange(n) % len(c.train_small)]
    return {"template_vs_target_msssim_mean": float(msssim_3d_batch(template, c.test_small, data_range=1.0).mean()),
            "other_subject_vs_target_msssim_mean": float(msssim_3d_batch(others, c.test_small, data_range=1.0).mean()),
            "downsample": None}


def run_reuse(c: Cohort, cfg: Config, alpha_range, seed: int, bank_size: int | None = None) -> dict:
    """A bank of ``bank_size`` (default ``cfg.reuse_bank``) references used for every target: test scans + other
    training subjects' scans."""
    rng = np.random.default_rng(seed)
    train_ids = [v.subject for v in c.train]
    bank_subjects = list(rng.choice(sorted(set(train_ids)), size=bank_size or cfg.reuse_bank, replace=False))
    bank_idx = [train_ids.index(s) for s in bank_subjects]
    keep = [i for i, s in enumerate(train_ids) if s not in bank_subjects]
    targets = np.concatenate([c.test_small, c.train_small[keep]])
    ids = c.identities + [train_ids[i] for i in keep]
    bank = c.train_small[bank_idx]
    which = rng.integers(len(bank), size=len(targets))
    a = rng.uniform(*alpha_range, size=len(targets)).astype(np.float32)[:, None, None, None]
    proxies = a * targets + (1 - a) * bank[which]
    guess = float(np.mean(alpha_range))
    labels, refs_hat, targets_hat = tta.reference_reuse_attack(proxies, c.template_small, len(bank), guess, seed)
    # cluster c ↔ reference: the best-matching reference by MS-SSIM
    ref_scores = np.array([[msssim_3d_batch(refs_hat[i : i + 1], bank[j : j + 1], data_range=1.0)[0] for j in range(len(bank))]
                           for i in range(len(bank))])
    match = ref_scores.argmax(1)
    purity = float(np.mean(match[labels] == which))
    return {
        "bank_size": len(bank), "n_targets": len(targets), "cluster_purity": purity,
        "reference_msssim_mean": float(ref_scores.max(1).mean()),
        "target_msssim_mean": float(msssim_3d_batch(targets_hat, targets, data_range=1.0).mean()),
        "target_reid_map": reid.retrieval(targets_hat, ids).map,
        "baseline_proxy_msssim_mean": float(msssim_3d_batch(tta.rescale(proxies), targets, data_range=1.0).mean()),
        "baseline_proxy_reid_map": reid.retrieval(proxies, ids).map,
        "alpha_range": list(alpha_range),
        "note": "targets = test scans + training scans of subjects outside the bank; reid over all of them",
    }


def run_known_bank(c: Cohort, cfg: Config, alpha_range, seed: int) -> dict:
    """The known-bank inversion on single proxies of every test scan; the bank holds one scan per training
    subject (a client's bank holds distinct people, as the demo's: scan 0 of ten training subjects)."""
    subjects = [v.subject for v in c.train]
    first_scans = [subjects.index(s) for s in sorted(set(subjects))]
    return known_bank.known_bank_experiment(c.test_small, c.identities, c.train_small[first_scans],
                                            alpha_range=alpha_range, n_draws=cfg.reid_draws, seed=seed)


def run_inversion(net: inversion.InversionNet, record: dict, c: Cohort, cfg: Config, alpha_range, seed: int) -> dict:
    """The learned inversion (``python -m training.train_inversion``) on single proxies of every test scan, mixed with
    references of the client's bank subjects, which its ``training.json`` (``record``, :func:`load_inversion`) says it
    never trained on (a stand-in, whose record is empty: the first :data:`mixdemo.examples.N_REFERENCES` training
    subjects, as the training script leaves out)."""
    from mixdemo.examples import N_REFERENCES

    train_subjects = sorted({v.subject for v in c.train})
    client = record.get("client_bank_subjects") or train_subjects[:N_REFERENCES]
    server = set(record.get("server_subjects", []))
    pool = [i for i, v in enumerate(c.train) if v.subject in set(client)]
    if net.downsample == cfg.downsample:
        targets, references, template = c.test_small, c.train_small[pool], c.template_small
    else:  # the network's own pooling, for its estimates and the proxies they are compared with alike
        targets = reid.downsample(np.stack([v.image for v in c.test]), net.downsample)
        references = reid.downsample(np.stack([c.train[i].image for i in pool]), net.downsample)
        template = reid.downsample(tta.template_brain(), net.downsample)
    out = inversion.inversion_experiment(net, targets, c.identities, references, alpha_range=alpha_range,
                                         n_draws=cfg.reid_draws, seed=seed)
    out["tta_request"] = inversion.averaged_inversion_experiment(  # the averaging attack's request, then the network
        net, targets, c.identities, references, k=min(cfg.defence_k, len(references)), alpha_range=alpha_range,
        population_mean=template, n_draws=cfg.reid_draws, seed=seed)
    out["alpha_sweep"] = [inversion_sweep_row(net, targets, c.identities, references, (lo, hi), cfg.sweep_reid_draws, seed)
                          for lo, hi in cfg.sweep_ranges]
    return {**out, "downsample": net.downsample, "steps": record.get("steps", 0), "train_seconds": record.get("train_seconds"),
            "hardware": record.get("hardware"), "server_scans": record.get("server_scans", 0),
            "server_subjects": len(server), "client_bank_subjects": len(set(client)),
            "references_among_server_scans": bool(server & set(client)), "trained": bool(record)}


def inversion_sweep_row(net: inversion.InversionNet, targets: np.ndarray, identities: list, references: np.ndarray,
                        alpha_range: tuple[float, float], n_draws: int, seed: int) -> dict:
    """The learned inversion on single proxies mixed with α ~ U(``alpha_range``), as the α sweep's other attacks are
    run at each range (its network trained at the client's default range): the estimates' and the proxies' mAP and
    MS-SSIM, whole volumes."""
    res = inversion.inversion_experiment(net, targets, identities, references, alpha_range=alpha_range,
                                         n_draws=n_draws, seed=seed, windows=False)
    keys = ("estimate_reid_map", "proxy_reid_map", "estimate_msssim_mean", "proxy_msssim_mean")
    return {"alpha_range": list(alpha_range), **{k: res[k] for k in keys}, "n_draws": n_draws}


def public_labels(shape: tuple[int, ...]) -> np.ndarray | None:
    """The template's labels (:func:`mixdemo.attacks.tta_average.template_labels`) when the cohort lies on its grid
    (the phantoms; a cohort on another grid, e.g. BraTS's, has no such chance level here)."""
    labels = tta.template_labels()
    return labels if labels.shape == tuple(shape) else None


def patch_dice(models: dict, c: Cohort, cfg: Config, alpha_range, seed: int, *, fresh_alpha: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    patches = leakage.sample_patch_set(c.test, c.train, cfg.patches, cfg.tta_k, rng,
                                       public_labels=public_labels(c.test[0].labels.shape))
    n, k = cfg.patches, cfg.tta_k
    alphas = rng.uniform(*alpha_range, size=(n, k) if fresh_alpha else (n, 1))
    alphas = np.broadcast_to(alphas, (n, k)).copy()
    return leakage.patch_study(models["segmentation"], models["unmixing"], patches, alphas)


def run_leakage(models: dict, c: Cohort, cfg: Config, alpha_range, seed: int) -> dict:
    res = patch_dice(models, c, cfg, alpha_range, seed)
    return {"dice_vs_target": res["output_leakage_dice"], "per_class": res["per_class_output_leakage"],
            "client_dice_learned_tta": res["dice_learned_tta"], "alpha_range": list(alpha_range),
            "n_patches": res["n_patches"], "what": "arg-max of S(x_mix) vs the target's labels, 32³ test patches"}


def shuffled_attack(c: Cohort, k: int, alpha_range, seed: int) -> dict:
    """K proxies per test scan sent as separate requests, shuffled: re-link by correlation, then average."""
    rng = np.random.default_rng(seed)
    n = len(c.test_small)
    proxies, owner = [], []
    for t, target in enumerate(c.test_small):
        refs = c.train_small[rng.choice(len(c.train_small), size=k, replace=k > len(c.train_small))]  # as tta_curve
        a = np.float32(rng.uniform(*alpha_range))
        proxies.append(a * target[None] + (1 - a) * refs)
        owner += [t] * k
    proxies, owner = np.concatenate(proxies), np.array(owner)
    perm = rng.permutation(len(proxies))
    proxies, owner = proxies[perm], owner[perm]
    groups = tta.link_requests(proxies, c.template_small, k)
    precision = float(np.mean(owner[groups[:, 1:]] == owner[:, None]))
    guess = float(np.mean(alpha_range))
    first = np.array([int(np.flatnonzero(owner == t)[0]) for t in range(n)])
    est = np.stack([tta.tta_average_estimate(proxies[groups[i]], c.template_small, guess) for i in first])
    return {"attack_msssim": float(msssim_3d_batch(est, c.test_small, data_range=1.0).mean()),
            "reid_map": reid.retrieval(est, c.identities).map, "link_precision": precision, "k": k}


def run_defences(models: dict, score, c: Cohort, cfg: Config, alpha_range, seed: int, base_dice: dict | None) -> dict:
    """Each defence: the averaging attack (K = defence_k) and the client's Learned+TTA Dice on patches."""
    k = cfg.defence_k
    out = {}
    rows, _ = tta_curve(c, k, alpha_range, seed, fresh_alpha=False, only_last=True)
    base = base_dice or patch_dice(models, c, cfg, alpha_range, seed)
    out["none"] = {"attack_msssim": rows[-1][1], "reid_map": rows[-1][2], "dice_avg": base["dice_learned_tta"],
                   "alpha_range": list(alpha_range), "what": "paper's TTA: K proxies, one α, one request"}
    rows, _ = tta_curve(c, k, alpha_range, seed, fresh_alpha=True, only_last=True)
    d = patch_dice(models, c, cfg, alpha_range, seed, fresh_alpha=True)
    out["fresh_alpha"] = {"attack_msssim": rows[-1][1], "reid_map": rows[-1][2], "dice_avg": d["dice_learned_tta"],
                          "alpha_range": list(alpha_range)}
    sh = shuffled_attack(c, k, alpha_range, seed)
    out["separate_shuffled_requests"] = {**sh, "dice_avg": base["dice_learned_tta"],
                                         "note": "same proxies as 'none' for the client, so the same Dice"}
    rows, _ = tta_curve(c, k, RESTRICTED_RANGE, seed, only_last=True)
    d = patch_dice(models, c, cfg, RESTRICTED_RANGE, seed)
    out["restricted_alpha"] = {"attack_msssim": rows[-1][1], "reid_map": rows[-1][2], "dice_avg": d["dice_learned_tta"],
                               "output_leakage_dice": d["output_leakage_dice"], "alpha_range": list(RESTRICTED_RANGE)}
    out["k"] = k
    out["two_references"] = run_two_references(models, score, c, cfg, alpha_range, seed)
    return out


def run_two_references(models: dict, score, c: Cohort, cfg: Config, alpha_range, seed: int) -> dict:
    """The three-source defence (the paper's future work): every proxy mixes the target with two references.

    Weights (α, (1 − α)·u, (1 − α)·(1 − u)), u ~ U(0, 1) (a flat Dirichlet, as S and D were trained).
    Measured against the one-reference setting on the same targets, references and α: the client's
    Learned+TTA Dice (with S and D trained for it), the averaging attack at K = ``defence_k``,
    single-proxy re-identification, and separation with every weight known (three sources vs two).
    """
    rng = np.random.default_rng(seed + 20)
    n, k_tta = cfg.patches, cfg.tta_k
    patches = leakage.sample_patch_set(c.test, c.train, n, 2 * k_tta, rng)
    alphas = np.repeat(rng.uniform(*alpha_range, size=(n, 1)), k_tta, 1)
    split = rng.dirichlet([1.0, 1.0], size=(n, k_tta))
    weights = np.concatenate([alphas[..., None], (1 - alphas[..., None]) * split], -1)
    two = leakage.patch_study(models[TWO_REF_SEG], models[TWO_REF_UNMIX], patches, weights)
    first = leakage.PatchSet(patches.target, patches.target_labels, patches.refs[:, ::2], patches.ref_labels[:, ::2])
    one = leakage.patch_study(models["segmentation"], models["unmixing"], first, alphas)
    rows, _ = tta_curve(c, cfg.defence_k, alpha_range, seed, only_last=True, n_references=2)
    reid_two, reid_one = [], []
    for draw in range(cfg.reid_draws):
        d_rng = np.random.default_rng(seed + 30 + draw)
        refs = c.train_small[d_rng.integers(len(c.train_small), size=(len(c.test_small), 2))]
        a = d_rng.uniform(*alpha_range, size=len(c.test_small)).astype(np.float32)[:, None, None, None]
        u = d_rng.uniform(size=len(c.test_small)).astype(np.float32)[:, None, None, None]
        reid_one.append(reid.retrieval(a * c.test_small + (1 - a) * refs[:, 0], c.identities).map)
        reid_two.append(reid.retrieval(a * c.test_small + (1 - a) * (u * refs[:, 0] + (1 - u) * refs[:, 1]), c.identities).map)
    lc = langevin_config(cfg, c)
    p = bss_patches(c, cfg.bss_known, alpha_range, np.random.default_rng(seed + 40), n_references=2)
    sep3 = bss.separate(score, p["proxy"], mixing_weights=p["weights"], n_init=1, config=lc, seed=seed + 41)
    proxy1 = p["alpha"][:, None, None, None] * p["target"] + (1 - p["alpha"][:, None, None, None]) * p["ref"]
    sep2 = bss.separate(score, proxy1, p["alpha"], n_init=1, config=lc, seed=seed + 41)
    return {
        "attack_msssim": rows[-1][1], "reid_map": rows[-1][2], "dice_avg": two["dice_learned_tta"],
        "dice_learned": two["dice_learned"], "dice_naive_tta": two["dice_naive_tta"],
        "output_leakage_dice": two["output_leakage_dice"],
        "one_reference_same_patches": {"dice_avg": one["dice_learned_tta"], "dice_learned": one["dice_learned"],
                                       "output_leakage_dice": one["output_leakage_dice"]},
        "reid_single_proxy_map": float(np.mean(reid_two)), "reid_single_proxy_map_one_reference": float(np.mean(reid_one)),
        "bss_weights_known_msssim": float(bss.best_assignment_msssim(sep3.sources, p["target"]).mean()),
        "bss_alpha_known_one_reference_msssim": float(bss.best_assignment_msssim(sep2.sources, p["target"]).mean()),
        "n_bss_proxies": len(p["proxy"]), "n_patches": n, "tta_k": k_tta, "k": cfg.defence_k,
        "alpha_range": list(alpha_range), "models": [TWO_REF_SEG, TWO_REF_UNMIX],
        "what": "proxy = α·x + (1 − α)·(u·r₁ + (1 − u)·r₂); attack columns: TTA averaging at K = k; "
                "BSS: Langevin with every weight known, best recovered source vs the target, 1 init",
    }


def run_sweep(models: dict, score, c: Cohort, cfg: Config, seed: int, figure: Path | None) -> list:
    rows = []
    lc = langevin_config(cfg, c)
    for lo, hi in cfg.sweep_ranges:
        d = patch_dice(models, c, cfg, (lo, hi), seed)
        r = reid.reid_experiment(c.test_small, c.identities, c.train_small, alpha_range=(lo, hi),
                                 n_draws=cfg.sweep_reid_draws, seed=seed)
        p = bss_patches(c, cfg.sweep_bss, (lo, hi), np.random.default_rng(seed))
        sep = bss.separate(score, p["proxy"], p["alpha"], n_init=1, config=lc, seed=seed)
        tta_rows, _ = tta_curve(c, cfg.defence_k, (lo, hi), seed, only_last=True)
        rows.append({"alpha_range": [lo, hi], "dice_learned_tta": d["dice_learned_tta"], "dice_learned": d["dice_learned"],
                     "reid_map": r["mixup"]["map"],
                     "bss_msssim": float(bss.best_assignment_msssim(sep.sources, p["target"], p["ref"]).mean()),
                     "output_leakage_dice": d["output_leakage_dice"], "chance_dice_other_subject": d["chance_dice_other_subject"],
                     "tta_average_msssim": tta_rows[-1][1], "tta_average_reid_map": tta_rows[-1][2]})
    if figure is not None:
        plot_sweep(figure, rows)
    return rows


# ------------------------------------------------------------------------------------------ figures


def _plt():
    from mixdemo.figures import plt  # Agg backend

    return plt


def save_figure(fig, path: Path) -> None:  # noqa: D103 - lazy: matplotlib loads only when figures are drawn
    from mixdemo.figures import save_figure as save_png

    save_png(fig, path)


def plot_bss(path: Path, p: dict, res: bss.SeparationResult, scores: np.ndarray, shown: np.ndarray,
             rows: int = 3) -> None:
    """Fig. 4 style: target, reference, proxy, then each initialisation's recovered target: source ``shown[r, i]``,
    the one assigned to the target, under its MS-SSIM ``scores[r, i]`` (:func:`mixdemo.attacks.bss.best_assignment`)."""
    plt = _plt()
    rows = min(rows, len(p["target"]))
    n_init = res.sources.shape[1]
    fig, axes = plt.subplots(rows, 3 + n_init, figsize=(2 * (3 + n_init), 2.1 * rows), squeeze=False)
    mid = p["target"].shape[-1] // 2
    for r in range(rows):
        panels = [(p["target"][r], "target"), (p["ref"][r], "reference"), (p["proxy"][r], f"proxy α={p['alpha'][r]:.2f}")]
        for i in range(n_init):
            panels.append((res.sources[r, i, shown[r, i]], f"init {i + 1}: {scores[r, i]:.2f}"))
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(np.rot90(img[:, :, mid]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle("Langevin BSS, α known: recovered target per initialisation (MS-SSIM vs target)", fontsize=9)
    save_figure(fig, path)


def plot_reid(path: Path, r: dict) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    x = np.arange(2)
    ax.bar(x - 0.2, [r["no_proxy"]["f1"], r["mixup"]["f1"]], 0.4, label="F1")
    ax.bar(x + 0.2, [r["no_proxy"]["map"], r["mixup"]["map"]], 0.4, label="mAP")
    ax.set_xticks(x, ["No proxy", f"Mixup α~U{tuple(r['alpha_range'])}"])
    ax.set_ylabel("F1 or mAP (1: every scan found)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Re-identification by MS-SSIM ({r['n_scans']} test scans)", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_tta(path: Path, rows: list, chance: dict) -> None:
    plt = _plt()
    k, ms, mp = (np.array(col) for col in zip(*rows))
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(k, ms, "o-", label="MS-SSIM(estimate, target)")
    ax.plot(k, mp, "s-", label="re-id mAP of estimates")
    ax.axhline(chance["template_vs_target_msssim_mean"], color="gray", ls="--", lw=1, label="MS-SSIM(template, target)")
    ax.set_xlabel("K proxies averaged (TTA, one α)")
    ax.set_ylabel("MS-SSIM or re-id mAP (higher: more leaked)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Averaging the TTA proxies of one target", fontsize=9)
    save_figure(fig, path)


def plot_sweep(path: Path, rows: list) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    dice = [r["dice_learned_tta"] for r in rows]
    for key, marker, label in (("reid_map", "o", "re-id mAP (single proxy)"), ("tta_average_reid_map", "s", "re-id mAP (TTA averaging)"),
                               ("bss_msssim", "^", "BSS MS-SSIM (α known)"), ("output_leakage_dice", "D", "output-leakage Dice")):
        ax.scatter(dice, [r[key] for r in rows], marker=marker, label=label)
    for r, d in zip(rows, dice):
        ax.annotate(f"{r['alpha_range'][0]:.1f}–{r['alpha_range'][1]:.1f}", (d, r["reid_map"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("client Learned+TTA Dice (utility)")
    ax.set_ylabel("attack success (privacy loss)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("Privacy–utility of the α range", fontsize=9)
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = SMOKE if args.smoke else QUICK if args.quick else FULL
    cfg = replace(cfg, max_sigma=args.max_sigma if args.max_sigma and args.max_sigma > 0 else None, tail=not args.no_tail,
                  steps_per_level=args.steps_per_level or cfg.steps_per_level)
    sections = args.section_list
    out_path: Path = args.out
    if set(sections) != set(SECTIONS) and out_path.exists() and not args.merge:
        raise SystemExit(f"--sections {args.sections} would replace {out_path}, and the results of the other sections "
                         f"with it: add --merge to update those sections in it, or give another --out.")
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = out_path.parent
    t0 = time.perf_counter()
    need_seg = bool({"leakage", "defences", "sweep"} & set(sections))
    models, shas = load_models(device, need_seg, allow_hub=not args.smoke, unmixing=args.unmixing)
    if "inversion" in sections:
        inverter, inversion_record, shas["inversion"] = load_inversion(device, cfg.downsample, args.seed,
                                                                       allow_hub=not args.smoke)
    score = models["score"]
    c = load_data(args.data, cfg)
    check_reference_pool(c, cfg, sections)
    ar = tuple(args.alpha_range)
    command = command_line("training.evaluate_privacy", argv)
    result: dict = json.loads(out_path.read_text()) if args.merge and out_path.exists() else {}
    result.setdefault("commands", [])
    result.update({"command": command, "seed": args.seed, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "data": DATA_NOTE, "config": "smoke" if args.smoke else "quick" if args.quick else "full"})
    if command not in result["commands"]:  # a re-run of a recorded command replaces its results
        result["commands"].append(command)
    # the S and D sections re-run together, so their weights replace the recorded ones (no stale D left behind);
    # the inversion's network is recorded by its own section
    names = model_names(need_seg, args.unmixing, "inversion" in sections)
    for key, now in (("weights_sha256", shas), ("models", names)):
        kept = {k: v for k, v in result.get(key, {}).items() if k == "inversion" and "inversion" not in sections}
        result[key] = {**kept, **now} if need_seg else {**result.get(key, {}), **now}
    timings = result.setdefault("seconds", {})
    ran = result.setdefault("sections_run", {})  # section → the command and date of its numbers (a merge keeps others')
    for name in sections:
        ran[name] = {"command": command, "date": result["date"]}

    def step(name: str, fn):
        t = time.perf_counter()
        print(f"[evaluate_privacy] {name} ...", flush=True)
        value = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        print(f"[evaluate_privacy] {name} done in {timings[name]} s", flush=True)
        return value

    base_dice = None
    if "bss" in sections:
        result["bss"] = step("bss", lambda: run_bss(score, c, cfg, ar, args.seed, fig_dir / "bss_examples.png"))
    if "reid" in sections:
        result["reid"] = step("reid", lambda: run_reid(c, cfg, ar, args.seed, fig_dir / "reid.png"))
    if "tta" in sections:
        result["tta_average"] = step("tta", lambda: run_tta(c, cfg, ar, args.seed, fig_dir / "tta_average.png"))
        result["tta_average_meta"] = {**chance_baselines(c), "downsample": cfg.downsample, "alpha_range": list(ar),
                                      "alpha_guess": float(np.mean(ar)), "n_targets": len(c.test_small),
                                      "population_mean": "MNI152 2009a tissue maps x T1 contrast (mixdemo.attacks.tta_average.template_brain)",
                                      "columns": ["K", "msssim_vs_target", "reid_map"]}
    if "reuse" in sections:
        result["reference_reuse"] = step("reuse", lambda: run_reuse(c, cfg, ar, args.seed))
        larger = min(cfg.reuse_bank_larger, len({v.subject for v in c.train}) - 1)  # subjects outside the bank stay
        if larger > cfg.reuse_bank:
            result["reference_reuse_larger_bank"] = step("reuse_larger", lambda: run_reuse(c, cfg, ar, args.seed, larger))
    if "known_bank" in sections:
        result["known_bank"] = step("known_bank", lambda: run_known_bank(c, cfg, ar, args.seed))
    if "inversion" in sections:
        result["inversion"] = step("inversion", lambda: run_inversion(inverter, inversion_record, c, cfg, ar, args.seed))
    if "leakage" in sections:
        base_dice = step("leakage_dice", lambda: patch_dice(models, c, cfg, ar, args.seed))
        result["output_leakage"] = {"dice_vs_target": base_dice["output_leakage_dice"],
                                    "per_class": base_dice["per_class_output_leakage"],
                                    "client_dice_learned_tta": base_dice["dice_learned_tta"],
                                    "client_dice_learned": base_dice["dice_learned"],
                                    "client_dice_naive_tta": base_dice["dice_naive_tta"],
                                    "chance_dice_other_subject": base_dice["chance_dice_other_subject"],
                                    "chance_dice_template": base_dice.get("chance_dice_template"),
                                    "alpha_range": list(ar), "n_patches": base_dice["n_patches"], "k": base_dice["k"],
                                    "what": "arg-max of S(x_mix) (first mix) vs the target's labels, 32³ test patches"}
    if "defences" in sections:
        result["defences"] = step("defences", lambda: run_defences(models, score, c, cfg, ar, args.seed, base_dice))
    if "sweep" in sections:
        result["alpha_sweep"] = step("sweep", lambda: run_sweep(models, score, c, cfg, args.seed, fig_dir / "privacy_utility.png"))
    timings["total_this_command"] = round(time.perf_counter() - t0, 1)
    write_record(out_path, result)
    print(f"[evaluate_privacy] wrote {out_path} in {timings['total_this_command']} s", flush=True)
    return result


if __name__ == "__main__":
    with user_errors():
        main()
