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
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

from mixdemo.phantoms import DEFAULT_COHORT
from training import command_line, evaluate, user_errors

DEFAULT_MODELS = ("unmixing", "unmixing-p2", "unmixing-p4")  # the designs, each trained on 32³ patches


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="D model folders to compare")
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help="cohort folder (phantoms are generated if absent)")
    p.add_argument("--volumes", type=int, default=3)
    p.add_argument("--k-max", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run (evaluate --quick for each D)")
    p.add_argument("--out", type=Path, default=Path("results/d_designs.json"))
    return p.parse_args(argv)


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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    with user_errors():
        main()
