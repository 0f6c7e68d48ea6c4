"""Re-measure the baseline's rows in the committed results after ``weights/baseline`` changes.

    python -m training.refresh_baseline --threads 2

The baseline (a U-Net++ of S's shape trained on unmixed scans) enters the segmentation tables only
through its own Dice row and the "× baseline" ratios, and its prediction depends on nothing but the
scan: not on the private S, D, the references or α. So when only the baseline's weights change, its
rows can be re-measured alone, on each file's own protocol (its test scans, brain mask and crop),
instead of re-running each file's command (the main table's took 47 min). What this writes is what those commands
would write: ``tests/test_evaluate.py`` checks it against a quick evaluation. Each file it touches
records the refresh (``baseline_refresh``: this command, the date, the baseline's SHA-256).

Files: ``training.evaluate`` outputs (``dice.baseline``, the per-volume baseline and ``ratio_to_baseline``) and the
``training.compare_unmixing``-protocol files (every row with a ``baseline`` and a ``tta_over_baseline``). Files other
scripts measured on their own protocol (``training.mirror_tta``'s, ``training.reference_choice``'s, ``--ensembles``')
are not among them: their own commands re-measure them; nor, by default, files measured with another baseline
than the one the segmentation table records (the lesion cohorts', trained and evaluated in their own weights folder).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch

from mixdemo.data import load_cohort, load_volumes
from mixdemo.models import pick_device
from mixdemo.weights import load_model, read_training_record, resolve_model_dir
from training import command_line, count, evaluate, user_errors, write_record

RESULTS = Path(__file__).resolve().parents[1] / "results"


def comparison_rows(doc: dict) -> list[dict]:
    """The rows of a ``training.compare_unmixing``-protocol file that are compared with the baseline (each with a
    ``baseline`` row and a ``learned_tta`` one; a record that trains the baseline itself has none)."""
    rows = [*doc.get("rows", []), doc.get("before"), doc.get("after")]
    return [r for r in rows if isinstance(r, dict) and "baseline" in r and "learned_tta" in r]


def evaluate_line(doc: dict) -> str | None:
    """The ``training.evaluate`` command (or compare_unmixing's protocol) ``doc`` was measured with; None for a file
    another script measured on its own protocol (e.g. ``training.mirror_tta``'s: its command re-measures it)."""
    for line in (doc.get("command"), doc.get("protocol")):
        if isinstance(line, str) and line.startswith("python -m training.evaluate"):
            return line
    return None


def has_baseline_rows(doc: dict) -> bool:
    """Whether ``doc`` quotes the baseline beside private networks on a ``training.evaluate`` protocol: an output of
    ``training.evaluate`` or a comparison."""
    if evaluate_line(doc) is None:
        return False
    return (isinstance(doc.get("dice"), dict) and "baseline" in doc["dice"]) or bool(comparison_rows(doc))


TABLE = "segmentation.json"
"""The segmentation table's results: always measured with the shipped weights, so the baseline it records is theirs."""


def recorded_baseline(doc: dict) -> str | None:
    """The SHA-256 of the baseline ``doc``'s rows were measured with (its last refresh's, else its evaluation's);
    None where it records none (the D comparisons, measured with the shipped weights)."""
    refresh_record, weights = doc.get("baseline_refresh"), doc.get("weights_sha256")
    if isinstance(refresh_record, dict) and refresh_record.get("baseline_sha256"):
        return refresh_record["baseline_sha256"]
    return weights.get("baseline") if isinstance(weights, dict) else None


def default_files(results: Path = RESULTS) -> list[Path]:
    """Every committed results JSON with baseline rows of the shipped baseline: those recording the baseline the
    table's file records, or none. Files measured with another baseline (the lesion cohorts', from their own
    weights folder) are left to their own commands."""
    docs = {p: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    shipped = recorded_baseline(docs.get(results / TABLE, {}))
    return [p for p, doc in docs.items()
            if has_baseline_rows(doc) and recorded_baseline(doc) in (None, shipped)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path,
                   help="results JSONs to refresh (default: every committed one with baseline rows)")
    p.add_argument("--threads", type=count(0), default=0)
    return p.parse_args(argv)


def protocol_args(doc: dict) -> argparse.Namespace:
    """The ``training.evaluate`` arguments a results file was measured with (its command or protocol)."""
    line = evaluate_line(doc)
    if line is None:
        raise SystemExit("no training.evaluate command or protocol in this file; its baseline rows cannot be re-measured")
    words = shlex.split(line.replace("<model>", "unused"))[3:]
    return evaluate.parse_args(words)


class BaselineRows:
    """The baseline's Dice per test scan, measured once per (cohort, scan, crop, brain mask)."""

    def __init__(self) -> None:
        self.model = load_model("baseline", device=str(pick_device()))  # where training.evaluate runs it
        self._rows: dict[tuple, dict[str, float]] = {}

    def rows(self, args: argparse.Namespace) -> dict[str, dict[str, float]]:
        """The baseline's Dice row of each Dice scan of the protocol ``args`` (by scan name), scored on the cohort's
        classes as ``training.evaluate`` scores them."""
        cohort = load_cohort(args.data)
        dice_records, _ = evaluate.select_scans(cohort.split("test"), args.volumes, args.icc_all, args.quick)
        rows = {}
        for rec in dice_records:
            key = (str(args.data), rec.name, args.crop, args.brain_mask)
            if key not in self._rows:
                vol = evaluate.crop_volume(load_volumes([rec])[0], args.crop)
                brain = vol.image > 0 if args.brain_mask else None
                self._rows[key] = evaluate.dice_row(evaluate.baseline_labels(self.model, vol, brain), vol.labels,
                                                    cohort.foreground_classes)
            rows[rec.name] = self._rows[key]
        return rows

    def row(self, args: argparse.Namespace) -> dict[str, float]:
        """The baseline row of the protocol ``args``: the mean over its Dice scans, as ``training.evaluate``."""
        return evaluate.mean_rows(list(self.rows(args).values()))


def refresh(doc: dict, per_scan: dict[str, dict[str, float]]) -> int:
    """Replace every baseline row of ``doc`` by the mean of ``per_scan`` (the baseline's row of each Dice scan), and
    what is made with them: compare_unmixing's ratios, an evaluation's per-volume baseline and its ratios to the
    baseline where it changed (from the per-volume averages it records, 4 decimals: within 0.0001 of the command's);
    returns how many rows."""
    baseline = evaluate.mean_rows(list(per_scan.values()))
    if isinstance(doc.get("dice"), dict) and "baseline" in doc["dice"]:
        doc["dice"]["baseline"] = baseline
        volumes = doc.get("dice_per_volume") or {}
        changed = False
        for scan, row in volumes.items():
            new = round(per_scan[scan]["avg"], 4)
            changed |= row["baseline"] != new
            row["baseline"] = new
        if changed and "ratio_to_baseline" in doc:
            methods = {m: [{"avg": row[m]} for row in volumes.values()] for m in evaluate.METHODS}
            doc["ratio_to_baseline"] = evaluate.ratios_to_baseline(methods)
        return 1
    rows = comparison_rows(doc)
    for row in rows:
        row["baseline"] = baseline
        row["tta_over_baseline"] = round(row["learned_tta"]["avg"] / baseline["avg"], 4)
    return len(rows)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    measured = BaselineRows()
    sha = read_training_record(resolve_model_dir("baseline")).get("sha256")
    command = command_line("training.refresh_baseline", argv)
    refreshed = {}  # every file is measured before any is written: a file that cannot be leaves all as they were
    for path in args.files or default_files():
        doc = json.loads(path.read_text())
        t0 = time.perf_counter()
        per_scan = measured.rows(protocol_args(doc))
        row = evaluate.mean_rows(list(per_scan.values()))
        if not refresh(doc, per_scan):
            raise SystemExit(f"{path}: no baseline rows")
        if isinstance(doc.get("weights_sha256"), dict) and "baseline" in doc["weights_sha256"]:
            doc["weights_sha256"]["baseline"] = sha
        doc["baseline_refresh"] = {"command": command, "date": time.strftime("%Y-%m-%d"), "baseline_sha256": sha,
                                   "note": "baseline rows re-measured alone on this file's protocol; its command reproduces them"}
        refreshed[path] = doc
        print(f"{path}: baseline average Dice {row['avg']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for path, doc in refreshed.items():
        write_record(path, doc)
    return list(refreshed)


if __name__ == "__main__":
    with user_errors():
        main()
