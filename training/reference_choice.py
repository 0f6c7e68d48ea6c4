"""Random references against the most similar ones: what the client's choice of references does to
utility and to privacy.

    python -m training.reference_choice            # → results/reference_choice.json
    python -m training.reference_choice --quick    # smoke run (about a minute; the test's) → results/quick/

The client holds the target and its reference bank, so instead of K random references (the paper's
protocol, :func:`mixdemo.mixing.sample_key`) it could take the K whose scans correlate best with the target
(:func:`mixdemo.pipeline.most_similar_references`). Both choices run on the D designs' protocol of
``training.compare_unmixing`` (its test volumes, K ≤ 10, each scan's α from the evaluation's per-scan seed;
the shipped S and D), so the rows differ only by the references:

* utility: Learned, Naive + TTA and Learned + TTA (K = ``--k``) on the Dice volumes, and the test-retest
  ICC over every test scan (two K = 1 predictions with different references: the scan's first two of
  its draw, or its two most similar references);
* privacy, on the attack lab's downsampled scans (``training.evaluate_privacy``'s set-up): re-identification
  (mAP) from single proxies, each with a random reference or with the target's most similar one, α drawn
  anew in each of ``--reid-draws`` draws; and the averaging attack on each target's K proxies (MS-SSIM of
  its estimate to the target, and the estimates' re-identification mAP).

The rule, set before the first run: "similar" would be a gain worth a default only if Learned + TTA rises by at
least 0.003 (average Dice) on the Dice volumes, and the privacy rows then say what it costs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mixdemo.phantoms import DEFAULT_COHORT
from training import count, evaluate, parse_with_out, user_errors, write_record

CHOICES = ("random", "similar")
ALPHA_RANGE_ATTACKS = (0.3, 0.5)  # the deployment's α (mixdemo.mixing.DEFAULT_ALPHA_RANGE) for the attacks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help="cohort folder (phantoms are generated if absent)")
    p.add_argument("--volumes", type=count(0), default=3, help="test volumes scored for Dice (the D designs' protocol: 3)")
    p.add_argument("--k", type=count(1), default=10, help="K of Learned + TTA and of the averaging attack")
    p.add_argument("--reid-draws", type=count(1), default=5, help="draws of α (and of random references) for re-identification")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=count(0), default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: evaluate --quick's volumes, crop and K")
    args = parse_with_out(p, argv, "reference_choice.json")
    return args


def eval_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The evaluation's arguments: the D designs' protocol, with the ICC over every test scan."""
    eval_args = evaluate.parse_args(["--data", str(args.data), "--brain-mask", "--volumes", str(args.volumes), "--k-max",
                                     str(args.k), "--tta-k", str(args.k), "--draws", "1", "--no-figures", "--icc-all",
                                     "--seed", str(args.seed), "--threads", str(args.threads)] + (["--quick"] if args.quick else []))
    eval_args.k_option = "--k"  # a pool too small for it is refused by this study's name for it
    return eval_args


def utility(eval_args: argparse.Namespace, setup: evaluate.Setup) -> tuple[dict, dict[str, list[str]]]:
    """Dice rows and ICC for each choice, and each test scan's most similar references (by id, best first)."""
    from mixdemo.mixing import hard_labels
    from mixdemo.pipeline import most_similar_references

    bank = list(setup.by_id.values())
    rows = {c: {m: [] for m in ("learned", "naive_tta", "learned_tta")} for c in CHOICES}
    baseline, singles = [], {c: {} for c in CHOICES}
    similar_ids: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for rec in sorted({*setup.dice_records, *setup.retest_records}, key=lambda r: r.name):
        in_dice = rec in setup.dice_records
        k = eval_args.k_max if in_dice else 2
        vol, random_refs, alphas, brain = evaluate.scan_draw(rec, k, eval_args, setup)
        ranking = most_similar_references(vol.image, bank, eval_args.k_max)  # every scan's, for the attacks' K proxies
        similar_ids[rec.name] = [r.ref_id for r in ranking]
        similar = ranking[:k]
        score = lambda probs: evaluate.dice_row(evaluate.masked(hard_labels(probs.float()).numpy(), brain),  # noqa: E731
                                                vol.labels, setup.classes)
        for choice, refs in zip(CHOICES, (random_refs, similar)):
            naive, learned, _ = evaluate.predict_k(vol, refs, alphas, setup.seg, setup.unmix, brain)
            singles[choice][rec.name] = [score(learned[j]) for j in (0, 1)]
            if in_dice:
                rows[choice]["learned"].append(singles[choice][rec.name][0])
                rows[choice]["naive_tta"].append(score(naive[: eval_args.tta_k].mean(0)))
                rows[choice]["learned_tta"].append(score(learned[: eval_args.tta_k].float().mean(0)))
        if in_dice:
            baseline.append(evaluate.dice_row(evaluate.baseline_labels(setup.base, vol, brain), vol.labels, setup.classes))
        print(f"[{time.perf_counter() - t0:5.0f} s] {rec.name}: " + ", ".join(
            f"{c} {rows[c]['learned_tta'][-1]['avg']:.4f}" for c in CHOICES if in_dice), flush=True)
    base = evaluate.mean_rows(baseline)
    out = {"baseline": base}
    for choice in CHOICES:
        means = {m: evaluate.mean_rows(r) for m, r in rows[choice].items()}
        out[choice] = {**means, "tta_over_baseline": round(means["learned_tta"]["avg"] / base["avg"], 4),
                       "icc": evaluate.icc_rows({scan: [{c: d[name] for c, name in setup.classes.items()} for d in pair]
                                                 for scan, pair in singles[choice].items()}, setup.classes)}
    out["learned_tta_gain"] = round(out["similar"]["learned_tta"]["avg"] - out["random"]["learned_tta"]["avg"], 4)
    return out, similar_ids


def privacy(eval_args: argparse.Namespace, setup: evaluate.Setup, similar_ids: dict[str, list[str]], args: argparse.Namespace) -> dict:
    """Re-identification from single proxies and the averaging attack on K proxies, for each choice."""
    from mixdemo.attacks import reid
    from mixdemo.attacks import tta_average as tta
    from mixdemo.data import load_volumes
    from mixdemo.metrics import msssim_3d_batch

    test = [evaluate.crop_volume(v, eval_args.crop) for v in load_volumes(setup.retest_records)]
    ids = list(setup.by_id)
    ranked = [[ids.index(r) for r in similar_ids[v.name]] for v in test]
    targets = reid.downsample(np.stack([v.image for v in test]))
    pool = reid.downsample(np.stack([setup.by_id[i].image for i in ids]))
    template = reid.downsample(evaluate.central_cube(tta.template_brain(), eval_args.crop))
    identities = [v.subject for v in test]
    k = eval_args.tta_k  # the averaging attack sees the K proxies of one Learned + TTA request
    rng = np.random.default_rng(args.seed)
    lo, hi = ALPHA_RANGE_ATTACKS
    single = {c: [] for c in CHOICES}
    for _ in range(args.reid_draws):
        alphas = rng.uniform(lo, hi, size=len(targets)).astype(np.float32)[:, None, None, None]
        chosen = {"random": pool[rng.integers(len(pool), size=len(targets))], "similar": pool[[r[0] for r in ranked]]}
        for c in CHOICES:
            single[c].append(reid.retrieval(alphas * targets + (1 - alphas) * chosen[c], identities).map)
    out = {"alpha_range": [lo, hi], "n_scans": len(targets), "k": k, "reid_draws": args.reid_draws,
           "no_proxy_reid_map": round(reid.retrieval(targets, identities).map, 4)}
    guess = float(np.mean(ALPHA_RANGE_ATTACKS))
    for c in CHOICES:
        estimates = []
        for target, best in zip(targets, ranked):
            refs = pool[rng.choice(len(pool), size=k, replace=False)] if c == "random" else pool[best[:k]]
            alpha = np.float32(rng.uniform(lo, hi))
            estimates.append(tta.running_tta_estimates(alpha * target[None] + (1 - alpha) * refs, template, guess, [k])[k])
        estimates = np.stack(estimates)
        out[c] = {"single_proxy_reid_map": round(float(np.mean(single[c])), 4),
                  "single_proxy_reid_map_std": round(float(np.std(single[c])), 4),
                  "averaging_attack_msssim": round(float(msssim_3d_batch(estimates, targets, data_range=1.0).mean()), 4),
                  "averaging_attack_reid_map": round(reid.retrieval(estimates, identities).map, 4)}
    return out


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Both choices on utility and privacy; returns the JSON document."""
    t0 = time.perf_counter()
    eval_args = eval_arguments(args)
    setup = evaluate.set_up(eval_args)
    results, similar_ids = utility(eval_args, setup)
    doc = evaluate.study_record(
        "training.reference_choice", argv,
        "Does the client's taking the references most similar to its target (Pearson correlation of intensities) "
        "instead of random ones lift the private rows, and what does it cost in privacy?",
        "set before the first run: a gain worth a default only if Learned + TTA rises by at least 0.003 (average Dice) "
        "on the Dice volumes",
        {**evaluate.protocol(eval_args, len(setup.dice_records), len(setup.by_id)),
         "n_icc_scans": len(setup.retest_records)}, setup, t0,
        {**results,
         "passes_rule": results["learned_tta_gain"] >= 0.003,
         "privacy": privacy(eval_args, setup, similar_ids, args),
         "similar_references": similar_ids})
    write_record(args.out, doc)
    return doc


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    doc = run(args, argv)
    print(json.dumps({c: {"learned": doc[c]["learned"]["avg"], "learned_tta": doc[c]["learned_tta"]["avg"],
                          "icc": {n: v["icc"] for n, v in doc[c]["icc"].items()}, **doc["privacy"][c]} for c in CHOICES},
                     indent=1))
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    with user_errors():
        main()
