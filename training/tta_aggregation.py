"""How the client averages its K answers: does another average than Eq. 6's lift Learned + TTA?

    python -m training.tta_aggregation            # → results/tta_aggregation.json (the table's 6 Dice volumes, K = 10)
    python -m training.tta_aggregation --quick    # smoke run (the test's) → results/quick/tta_aggregation.json

Eq. 6 averages the K unmixed answers' class probabilities. The K answers are those of one D given K different
references at one α (Eq. 5), an ensemble of sorts, and ensembles are also averaged in other ways. On the same draws as the
segmentation table (``training.evaluate``'s protocol: its scans, references, α and networks; each mix through S
once), this scores, for the learned and the naive unmixing alike:

* ``mean``: Eq. 6, the mean of the probabilities (the table's Learned + TTA and Naive + TTA);
* ``log_mean``: the mean of the log-probabilities (a normalised geometric mean; for D, the mean of its logits);
* ``alpha_weighted``: the probabilities weighted by each mix's α (a mix holds more of the target where α is larger):
  Eq. 6 itself when the K mixes share one α, as Eq. 5 and the table's draws do; it differs only with a fresh α per mix;
* ``vote``: each mix's labels counted, ties broken by the mean probability.

The rule, set before the first full run: an average other than Eq. 6's would become the client's default only if
its Learned + TTA is at least 0.003 (average Dice) above Eq. 6's on the Dice volumes, as the mirrored-mixes rule
asked (``training.mirror_tta``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from training import evaluate, parse_with_out, user_errors, write_record

AVERAGES = ("mean", "log_mean", "alpha_weighted", "vote")
METHODS = ("naive", "learned")
GAIN_NEEDED = 0.003
LOG_FLOOR = 1e-6  # the answers are float16 and D's are exactly 0 outside the brain: log of at least this


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_table_draw_options(p)
    return parse_with_out(p, argv, "tta_aggregation.json")


def average(answers: torch.Tensor, alphas: Sequence[float], how: str) -> torch.Tensor:
    """(C, X, Y, Z) scores of K answers (K, C, X, Y, Z) whose arg-max over the classes is the labels, averaged
    ``how`` (:data:`AVERAGES`); the answers are left as they are."""
    probs = answers.float()  # the same tensor where the answers are float32 already: no in-place step below
    if how == "mean":  # Eq. 6
        return probs.mean(0)
    if how == "log_mean":
        return probs.clamp_min(LOG_FLOOR).log().mean(0)
    if how == "alpha_weighted":
        weights = torch.tensor(alphas, dtype=torch.float32)
        return torch.einsum("k,k...->...", weights / weights.sum(), probs)
    if how == "vote":
        labels = probs.argmax(1)  # (K, X, Y, Z)
        votes = torch.nn.functional.one_hot(labels, probs.shape[1]).sum(0).movedim(-1, 0).float()
        return votes + 0.5 * probs.mean(0)  # a mean probability (under 1) only breaks ties between counts
    raise ValueError(f"Unknown average {how!r}; expected one of {', '.join(AVERAGES)}.")


def scan_rows(rec, eval_args: argparse.Namespace, setup: evaluate.Setup) -> dict[str, dict[str, float]]:
    """Every row's Dice for one scan: the baseline, then each unmixing with each average of its first K mixes."""
    from mixdemo.inference import segment_proxies
    from mixdemo.mixing import hard_labels

    k = eval_args.tta_k
    vol, refs, alphas, brain = evaluate.scan_draw(rec, eval_args.k_max, eval_args, setup)  # the table's draw,
    refs, alphas = refs[:k], alphas[:k]  # of which its Learned + TTA takes the first K
    naive, learned, _ = evaluate.predict_k(vol, refs, alphas, setup.seg, setup.unmix, brain)
    scores = {"baseline": segment_proxies(setup.base, vol.image[None])[0].float()}
    for method, answers in (("naive", naive), ("learned", learned)):
        for how in AVERAGES:
            scores[f"{method}_{how}"] = average(answers[:k], alphas, how)
    return {row: evaluate.dice_row(evaluate.masked(hard_labels(s).numpy(), brain), vol.labels, setup.classes)
            for row, s in scores.items()}


def rows() -> tuple[str, ...]:
    """The record's rows: the baseline, then each unmixing with each average."""
    return ("baseline", *(f"{m}_{how}" for m in METHODS for how in AVERAGES))


def summary(per_scan: dict[str, dict[str, dict[str, float]]]) -> dict:
    """The Dice rows averaged over the volumes, each average's gain over Eq. 6 (per volume too) and the rule."""
    dice = {row: evaluate.mean_rows([scan[row] for scan in per_scan.values()]) for row in rows()}
    gains, per_volume = {}, {}
    for method in METHODS:
        for how in AVERAGES[1:]:
            row = f"{method}_{how}"
            gains[row] = round(dice[row]["avg"] - dice[f"{method}_mean"]["avg"], 4)
            per_volume[row] = [round(s[row]["avg"] - s[f"{method}_mean"]["avg"], 4) for s in per_scan.values()]
    best = max(AVERAGES[1:], key=lambda how: gains[f"learned_{how}"])
    base = dice["baseline"]["avg"]
    return {"dice": dice, "gain_over_eq6": gains, "gain_over_eq6_per_volume": per_volume,
            "best_learned_average": best, "passes_rule": gains[f"learned_{best}"] >= GAIN_NEEDED,
            "ratio_to_baseline": {f"learned_{how}": round(dice[f"learned_{how}"]["avg"] / base, 4) for how in AVERAGES}}


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Score every row on the table's Dice volumes; returns the JSON document (written to ``--out``)."""
    eval_args = evaluate.table_draw_arguments(args)
    setup = evaluate.set_up(eval_args)
    t0 = time.perf_counter()
    per_scan: dict[str, dict[str, dict[str, float]]] = {}
    for rec in sorted(setup.dice_records, key=lambda r: r.name):
        per_scan[rec.name] = scan_rows(rec, eval_args, setup)
        print(f"[{time.perf_counter() - t0:5.0f} s] {rec.name}: "
              + ", ".join(f"{r} {per_scan[rec.name][r]['avg']:.4f}" for r in rows()), flush=True)
    doc = evaluate.study_record(
        "training.tta_aggregation", argv,
        "Does another average of the client's K unmixed answers than Eq. 6's mean of probabilities lift Learned + TTA?",
        f"set before the first full run: an average other than Eq. 6's would become the client's default only if its "
        f"Learned + TTA is at least {GAIN_NEEDED} (average Dice) above Eq. 6's on the Dice volumes",
        evaluate.protocol(eval_args, len(per_scan), len(setup.by_id)), setup, t0,
        {"classes": list(setup.classes.values()), **summary(per_scan),
         "dice_per_volume": {scan: {row: round(r[row]["avg"], 4) for row in rows()} for scan, r in per_scan.items()}})
    write_record(args.out, doc)
    return doc


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    doc = run(args, argv)
    print(json.dumps({"dice": {r: v["avg"] for r, v in doc["dice"].items()}, "gain_over_eq6": doc["gain_over_eq6"],
                      "passes_rule": doc["passes_rule"]}, indent=1))
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    with user_errors():
        main()
