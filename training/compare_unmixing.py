"""Compare the shipped client networks D on one protocol of ``training.evaluate``.

    python -m training.compare_unmixing            # the Ds trained on 32³ patches → results/d_designs.json

By default the Ds of equal training: the end-to-end D ``unmixing`` and the Ds on 2³ and 4³ patches
(``unmixing-p2``, the start of ``unmixing-p2-96``, whose calibrated copy is the default D, and ``unmixing-p4``); ``--models``
names others. The Ds made from them (trained on 96³ patches or calibrated: ``training.report.D_TRAINED_ON``)
have their rows on this protocol in their records (e.g. ``results/d_p2_large_patches.json``,
``results/d_p2_calibrated.json``).

Each D unmixes the same proxies (same S, test scans, references and α: the evaluation's per-scan
seeds), so the rows differ only by D. The protocol is smaller than the main table's (K ≤ 10, one
draw of the Fig. 3 orders) to keep the run near ten minutes on 2 cores; the client time of each D is
in the benchmark (``python -m mixdemo.bench``, ``levers.unmix_nets``).

    python -m training.compare_unmixing --ensembles --models A B C --out results/d_ensembles.json

``--ensembles`` asks whether averaging several Ds helps: on the segmentation table's protocol (its Dice volumes,
and the first ``--tta-k`` of each scan's references and α there), S runs once per proxy, every named D unmixes its
output, and Learned + TTA is scored for each D alone and for the mean of the probabilities of each combination
of two or more of them (each D's K predictions averaged first, Eq. 6, then the Ds').
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import tempfile
import time
from pathlib import Path

from mixdemo.phantoms import DEFAULT_COHORT
from training import command_line, count, default_out, evaluate, user_errors, write_record

DEFAULT_MODELS = ("unmixing", "unmixing-p2", "unmixing-p4")  # the designs, each trained on 32³ patches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="D model folders to compare")
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help="cohort folder (phantoms are generated if absent)")
    p.add_argument("--volumes", type=count(0), default=None, help="test volumes (default 3; 6 with --ensembles)")
    p.add_argument("--k-max", type=count(1), default=10)
    p.add_argument("--threads", type=count(0), default=0)
    p.add_argument("--ensembles", action="store_true",
                   help="score each D and the average of each combination of them on the segmentation table's "
                        "protocol (--volumes defaults to its 6 there)")
    p.add_argument("--tta-k", type=count(1), default=10,
                   help="with --ensembles: K of Learned + TTA (the references among the table's K_max; --k-max is "
                        "not used there)")
    p.add_argument("--quick", action="store_true", help="smoke run (evaluate --quick for each D)")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON written (default results/d_designs.json; results/d_ensembles.json with --ensembles; "
                        "under results/quick/ with --quick)")
    args = p.parse_args(argv)
    if args.volumes is None:
        args.volumes = 6 if args.ensembles else 3
    if args.out is None:
        args.out = default_out("d_ensembles.json" if args.ensembles else "d_designs.json", args.quick)
    if args.ensembles and len(set(args.models)) < 2:
        p.error("--ensembles needs at least two --models")
    if len(set(args.models)) < len(args.models):
        p.error("--models names a D twice")
    return args


def d_row(name: str, doc: dict) -> dict:
    """One D's row: its design and the Dice of the evaluation run with it."""
    from mixdemo.models import unmixing_design
    from mixdemo.weights import load_model

    unmix = load_model(name)
    dice = doc["dice"]
    return {"model": name, **unmixing_design(unmix),
            "learned": dice["learned"], "learned_tta": dice["learned_tta"], "baseline": dice["baseline"],
            "naive_tta": dice["naive_tta"], "tta_over_baseline": round(dice["learned_tta"]["avg"] / dice["baseline"]["avg"], 4),
            "weights_sha256": doc["weights_sha256"].get(name)}


def ensemble_rows(args: argparse.Namespace) -> tuple[list[dict], dict[tuple[str, ...], list[dict]], argparse.Namespace,
                                                  evaluate.Setup]:
    """(the baseline's Dice per volume, Learned + TTA's per volume for each D and each combination of them, the
    evaluation's arguments, its set-up) on the segmentation table's protocol."""
    from mixdemo.mixing import hard_labels
    from mixdemo.weights import load_model

    eval_args = evaluate.parse_args(["--data", str(args.data), "--brain-mask", "--volumes", str(args.volumes),
                                     "--tta-k", str(args.tta_k), "--threads", str(args.threads), "--no-figures"]
                                    + (["--quick"] if args.quick else []))
    setup = evaluate.set_up(eval_args)
    nets = [load_model(name, device=str(next(setup.seg.parameters()).device)) for name in args.models]  # beside S
    combos = [c for r in range(1, len(nets) + 1) for c in itertools.combinations(range(len(nets)), r)]
    baseline, rows = [], {tuple(args.models[i] for i in c): [] for c in combos}
    for rec in setup.dice_records:
        vol, refs, alphas, brain = evaluate.scan_draw(rec, eval_args.k_max, eval_args, setup)
        k = eval_args.tta_k  # the table's Learned + TTA: the first K of the scan's references and α
        _, learned, _ = evaluate.unmix_each(vol, refs[:k], alphas[:k], setup.seg, nets, brain)
        means = [outputs.float().mean(0) for outputs in learned]
        score = lambda probs: evaluate.dice_row(evaluate.masked(hard_labels(probs).numpy(), brain),  # noqa: E731
                                                vol.labels, setup.classes)
        baseline.append(evaluate.dice_row(evaluate.baseline_labels(setup.base, vol, brain), vol.labels, setup.classes))
        for combo, name in zip(combos, rows):
            rows[name].append(score(sum(means[i] for i in combo) / len(combo)))
        print(f"{rec.name}: " + ", ".join(f"{n} {r[-1]['avg']:.4f}" for (n, *more), r in rows.items() if not more),
              flush=True)
    return baseline, rows, eval_args, setup


def ensembles(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The ``--ensembles`` document: each D and each combination's Learned + TTA, best first."""
    t0 = time.perf_counter()
    per_volume_baseline, rows, eval_args, setup = ensemble_rows(args)
    baseline = evaluate.mean_rows(per_volume_baseline)
    means = {models: evaluate.mean_rows(per_volume) for models, per_volume in rows.items()}
    table = sorted(({"models": list(models), "learned_tta": mean,
                     "tta_over_baseline": round(mean["avg"] / baseline["avg"], 4)} for models, mean in means.items()),
                   key=lambda row: -row["learned_tta"]["avg"])
    best_single = max(row["learned_tta"]["avg"] for row in table if len(row["models"]) == 1)
    return {
        "command": command_line("training.compare_unmixing", argv),
        "question": "Does averaging the probabilities of several client networks D (on the same S outputs) raise "
                    "Learned + TTA above the best D alone?",
        "protocol": {**evaluate.protocol(eval_args, len(per_volume_baseline), len(setup.by_id)),
                     "note": "the segmentation table's volumes, references and α; Learned + TTA on the first tta_k "
                             "of each scan's k_max references"},
        "data": setup.data,
        "date": time.strftime("%Y-%m-%d"),
        "baseline": baseline,
        "rows": table,
        "weights_sha256": evaluate.weights_record([eval_args.segmentation, *args.models, "baseline"]),
        "best_ensemble_gain": round(max(row["learned_tta"]["avg"] for row in table if len(row["models"]) > 1)
                                    - best_single, 4),
        "seconds": round(time.perf_counter() - t0),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.ensembles:
        result = ensembles(args, argv)
        write_record(args.out, result)
        print(f"wrote {args.out}")
        return result
    t0 = time.perf_counter()
    rows = []
    protocol = ["--data", str(args.data), "--brain-mask", "--volumes", str(args.volumes), "--k-max", str(args.k_max),
                "--tta-k", str(min(10, args.k_max)), "--draws", "1", "--no-figures", "--threads", str(args.threads)]
    protocol += ["--quick"] if args.quick else []
    data = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            doc = evaluate.main([*protocol, "--unmixing", name, "--out", str(Path(tmp) / f"{name}.json")])
            rows.append(d_row(name, doc))
            data = doc["data"]
    result = {
        "command": command_line("training.compare_unmixing", argv),
        "protocol": "python -m training.evaluate " + " ".join(shlex.quote(a) for a in protocol) + " --unmixing <model>",
        "data": data,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0),
    }
    write_record(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    with user_errors():
        main()
