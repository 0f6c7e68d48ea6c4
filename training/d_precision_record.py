"""Assemble ``results/d_bfloat16.json``: the segmentation table's protocol with D's blocks in bfloat16, against the
same run with D in float32 (``results/s_bfloat16.json``'s bfloat16 run: S in bfloat16 in both), and the decision of
the rule fixed before the run.

    MIXDEMO_PRECISION=bfloat16 MIXDEMO_UNMIXING_PRECISION=bfloat16 python -m training.evaluate --brain-mask \\
        --threads 2 --no-figures --unmixing unmixing-p2-96-a35-cal --out /tmp/eval_dbf16/segmentation-dbf16.json
    python -m training.d_precision_record --evaluation /tmp/eval_dbf16/segmentation-dbf16.json

The figures are the evaluation's; this copies them beside the float32 run's and applies the rule
(:data:`TOLERANCE` on every average Dice row). ``mixdemo.weights.DEFAULT_UNMIXING_PRECISION`` follows the decision
(``tests/test_repo.py`` checks it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training import command_line, write_record

TOLERANCE = 0.001
"""Largest difference of any average Dice row for D's bfloat16 to become the default."""

QUESTION = ("Does running D's four blocks in bfloat16 (instance-norm statistics in float32) keep the segmentation "
            "table's Dice, with S and the baseline in bfloat16 as shipped?")
RULE = ("set 2026-12-04 when the full-protocol run was launched, before its result (known before it: one probe on two "
        "test volumes, K = 4, S in bfloat16: D 0.53 s in float32 vs 0.35 s, Learned + TTA Dice per class within "
        "0.0005): D's blocks in bfloat16 become the default on CPUs with native bfloat16 (DEFAULT_UNMIXING_PRECISION "
        "= \"auto\") if, on the full protocol with S and the baseline in bfloat16 (MIXDEMO_PRECISION=bfloat16 "
        "MIXDEMO_UNMIXING_PRECISION=bfloat16 python -m training.evaluate --brain-mask --threads 2 --no-figures "
        "--unmixing <the default D>), each of the five average Dice rows (baseline, naive, naive + TTA, learned, "
        "learned + TTA) is within 0.001 of the same run with D in float32 on the same draws (results/s_bfloat16.json's "
        "bfloat16 run). Otherwise D's bfloat16 stays an opt-in (MIXDEMO_UNMIXING_PRECISION=bfloat16 or auto), its "
        "Dice difference quoted.")
ENV = "MIXDEMO_PRECISION=bfloat16 MIXDEMO_UNMIXING_PRECISION=bfloat16 "
"""The settings the evaluation ran with (its JSON records them as ``s_precision`` and ``unmixing_precision``)."""


def within_tolerance(candidate: dict, reference: dict) -> bool:
    """Whether every average Dice row of ``candidate`` is within :data:`TOLERANCE` of ``reference``'s (the rows are
    rounded to 4 decimals, and so is their difference: 0.8510 against 0.8500 is within 0.001)."""
    return all(round(abs(candidate[k]["avg"] - reference[k]["avg"]), 4) <= TOLERANCE for k in reference)


def assemble(evaluation: dict, float32_run: dict, native: bool, command: str) -> dict:
    """The record from the bfloat16 evaluation and the float32 run (``results/s_bfloat16.json``'s ``bfloat16``)."""
    if evaluation.get("s_precision") != "bfloat16" or evaluation.get("unmixing_precision") != "bfloat16":
        raise SystemExit("The evaluation did not run S and D in bfloat16: run it with " + ENV.strip() + ".")
    if evaluation["weights_sha256"] != float32_run["weights_sha256"]:
        raise SystemExit("The evaluation used other weights than the float32 run it is compared with.")
    within = within_tolerance(evaluation["dice"], float32_run["dice"])
    return {
        "question": QUESTION, "rule": RULE, "commands": [ENV + evaluation["command"], command],
        "date": evaluation.get("date"), "data": "MNI152-derived phantoms (python -m mixdemo.phantoms), not patients",
        "cpu_bfloat16_native": native,
        "float32": {"source": "results/s_bfloat16.json, its bfloat16 run (S and the baseline in bfloat16, D in float32)",
                    "dice": float32_run["dice"], "icc": float32_run["icc"], "seconds": float32_run["seconds"]},
        "bfloat16": {"dice": evaluation["dice"], "icc": evaluation["icc"], "dice_vs_k": evaluation["dice_vs_k"],
                     "seconds": evaluation["seconds"], "weights_sha256": evaluation["weights_sha256"],
                     "protocol": {k: evaluation[k] for k in ("s_precision", "unmixing_precision")}},
        "assembled": "'bfloat16' copies fields of the first command's output (its Dice, ICC, Dice against K, seconds, "
                     "weights and the two precisions it ran in); 'float32' copies results/s_bfloat16.json's bfloat16 "
                     "run, the same command with D in float32; the second command wrote this file",
        "within_0_001": within,
        "decision": ("D's blocks run in bfloat16 by default on CPUs with native bfloat16 (DEFAULT_UNMIXING_PRECISION = "
                     "'auto')" if within else
                     "D stays in float32 by default (DEFAULT_UNMIXING_PRECISION = 'float32'); bfloat16 is an opt-in"),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--evaluation", type=Path, required=True, help="training.evaluate's JSON with S and D in bfloat16")
    p.add_argument("--float32-run", type=Path, default=Path("results/s_bfloat16.json"),
                   help="the record whose 'bfloat16' run (S in bfloat16, D in float32) is the comparison")
    p.add_argument("--out", type=Path, default=Path("results/d_bfloat16.json"))
    args = p.parse_args(argv)
    from mixdemo.weights import native_bfloat16

    record = assemble(json.loads(args.evaluation.read_text()), json.loads(args.float32_run.read_text())["bfloat16"],
                      native_bfloat16(), command_line("training.d_precision_record", argv))
    write_record(args.out, record)
    print(f"within {TOLERANCE}: {record['within_0_001']}; {record['decision']}")
    return record


if __name__ == "__main__":
    main()
