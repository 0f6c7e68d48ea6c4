"""Assemble ``results/d_consistency.json``: a D trained on with ``training.train --consistency``, its
calibration and its evaluation on the segmentation table's protocol, with the rule that decides whether it
replaces the default D (set before the candidate trained; ``training.report`` renders the verdict).

    python -m training.record_consistency --candidate DIR/unmixing-p2-96-a35-cons-cal \\
        --evaluation EVAL.json --out results/d_consistency.json

``--candidate`` is the calibrated model folder (``training.calibrate``'s output; its ``training.json`` holds the
training command and the calibration), ``--evaluation`` the JSON ``training.evaluate --unmixing <candidate>``
wrote. The gates are the default's figures in ``results/segmentation.json`` (the same protocol and draws).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mixdemo.weights import REPO_ROOT, read_training_record, sha256_file
from training import user_errors, write_record

QUESTION = ("Does a consistency loss (training.train --consistency: D's predictions of one target mixed with two "
            "disjoint sets of references, one α, pulled together) lower the spread that the reference gives a single "
            "prediction's Dice, and with it raise the test-retest ICC of CSF (target 0.75)?")
RULE = ("Set 2026-12-06 before the candidate trained. Candidate: unmixing-p2-96-a35 trained on for 320 steps on 96³ "
        "patches, one target patch a step mixed twice, α ~ U(0.3, 0.5), lr 2e-4, seed 4, --consistency 2; then "
        "calibrated exactly as unmixing-p2-96-a35-cal was (training.calibrate --scans 6 --grid -1 2 0.1). Judged "
        "once on the full protocol (python -m training.evaluate --brain-mask --threads 2 --no-figures --unmixing "
        "<candidate>; the draws of results/segmentation.json). It becomes the default D only if all hold: "
        "Learned + TTA average at least the default's; CSF ICC above the default's; GM and WM ICC 0.75 or more. "
        "Otherwise it is reported beside the default and not shipped.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidate", type=Path, required=True, help="the calibrated candidate's model folder")
    p.add_argument("--evaluation", type=Path, required=True, help="training.evaluate's JSON for the candidate")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "d_consistency.json")
    return p.parse_args(argv)


def assemble(candidate: Path, evaluation: dict, default: dict) -> dict:
    """The record: question, rule, its gates (``default``'s figures), the candidate's training and calibration
    records, and ``evaluation`` as it was written. SystemExit if the evaluation scored another D."""
    record = read_training_record(candidate)
    if evaluation["models"]["unmixing"] != candidate.name:
        raise SystemExit(f"{candidate.name} is not the D the evaluation scored ({evaluation['models']['unmixing']}).")
    if evaluation["weights_sha256"][candidate.name] != sha256_file(candidate / "model.safetensors"):
        raise SystemExit(f"The evaluation scored other weights than {candidate}'s model.safetensors.")
    calibration = record.pop("calibration")
    return {"question": QUESTION, "rule": RULE,
            "gates": {"learned_tta_avg_at_least": default["dice"]["learned_tta"]["avg"],
                      "csf_icc_above": default["icc"]["CSF"]["icc"], "other_icc_at_least": 0.75,
                      "default": default["models"]["unmixing"]},
            "training": record, "calibration": calibration, "evaluation": evaluation,
            "data": "MNI152-derived phantoms (python -m mixdemo.phantoms), not patients"}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    default = json.loads((REPO_ROOT / "results" / "segmentation.json").read_text())
    doc = assemble(args.candidate, json.loads(args.evaluation.read_text()), default)
    write_record(args.out, doc)
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    with user_errors():
        main()
