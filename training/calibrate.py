"""Per-class logit offsets for a segmentation network on raw scans (the baseline), fitted on training scans.

    python -m training.calibrate --model baseline --scans 6 --out /tmp/calibrated

A network trained with cross-entropy + Dice on patches can carry a systematic class bias on whole
volumes: the shipped baseline labels only 70–80 % of its own training scans' CSF as CSF (most of the
rest as GM). This fits one offset per class (background's fixed at 0), added to the network's logits —
a prior correction, argmax(log p + b) — by coordinate search on a grid, maximising the mean over
``--scans`` training scans (the first scan of the last training subjects; never a test scan) of the
average Dice of the classes, measured as ``training.evaluate --brain-mask`` measures it. The offsets go
into the bias of the network's final 1×1×1 convolution, so the written model folder ``<out>/<model>``
runs on the unchanged inference path; its ``training.json`` keeps the training record and adds
``calibration`` (this command, the scans, the offsets, the training scans' Dice before and after).

The private path's client labels come from D, not from a network on raw scans; offsets for them are not
fitted here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mixdemo.data import load_cohort, load_volume
from mixdemo.inference import segment_proxies
from mixdemo.metrics import dice_per_class
from mixdemo.weights import load_model, read_training_record, resolve_model_dir, write_training_record
from training import command_line

CLASSES = (1, 2, 3)
"""The foreground classes whose average Dice is maximised (GM, WM, CSF)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="baseline", help="a segmentation network trained on raw scans (the baseline)")
    p.add_argument("--data", type=Path, default=Path("data/phantoms"), help="cohort whose training split is used")
    p.add_argument("--scans", type=int, default=6, help="training scans fitted on (first scans of the last subjects)")
    p.add_argument("--grid", type=float, nargs=3, default=(-1.0, 1.0, 0.1), metavar=("LO", "HI", "STEP"),
                   help="offsets tried per class")
    p.add_argument("--rounds", type=int, default=2, help="passes of the coordinate search over the classes")
    p.add_argument("--out", type=Path, required=True, help="the new folder is <out>/<model>")
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def labels_with_offsets(log_probs: torch.Tensor, offsets: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """argmax over classes of ``log_probs`` (C, X, Y, Z) + ``offsets`` (C,), background outside ``brain``."""
    shifted = log_probs + torch.as_tensor(offsets, dtype=log_probs.dtype).view(-1, 1, 1, 1)
    return np.where(brain, shifted.argmax(0).numpy(), 0)


def mean_dice(cases: list[tuple[torch.Tensor, np.ndarray, np.ndarray]], offsets: np.ndarray) -> float:
    """The mean over ``cases`` (log-probabilities, labels, brain) of the average Dice of :data:`CLASSES`."""
    rows = [dice_per_class(labels_with_offsets(lp, offsets, brain), truth, list(CLASSES)) for lp, truth, brain in cases]
    return float(np.mean([np.mean(list(r.values())) for r in rows]))


def fit_offsets(cases: list[tuple[torch.Tensor, np.ndarray, np.ndarray]], grid: np.ndarray,
                rounds: int) -> tuple[np.ndarray, float]:
    """Coordinate search: each foreground class's offset in turn set to the grid value with the best
    :func:`mean_dice` (ties: the smallest offset in magnitude), ``rounds`` times. Returns (offsets, Dice)."""
    offsets = np.zeros(len(CLASSES) + 1, np.float32)
    best = mean_dice(cases, offsets)
    for _ in range(rounds):
        for c in CLASSES:
            for value in sorted(grid, key=abs):
                trial = offsets.copy()
                trial[c] = value
                dice = mean_dice(cases, trial)
                if dice > best + 1e-9:
                    best, offsets = dice, trial
    return offsets, best


def fitting_cases(model: torch.nn.Module, data: Path, n_scans: int) -> tuple[list[str], list]:
    """(scan names, cases): the model's log-probabilities, labels and brain of the first scan of each of the
    last ``n_scans`` training subjects."""
    records = load_cohort(data).split("train")
    first = [r for r in records if r.name.endswith("_scan-0")] or list(records)
    chosen = first[-n_scans:]
    cases = []
    for rec in chosen:
        vol = load_volume(rec)
        probs = segment_proxies(model, vol.image[None])[0].float()
        cases.append((probs.clamp_min(1e-12).log(), np.asarray(vol.labels), vol.image > 0))
    return [r.name for r in chosen], cases


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.scans < 1:
        raise SystemExit("--scans must be at least 1.")
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = resolve_model_dir(args.model)
    record = read_training_record(folder)
    if record.get("model_class", "").rsplit(".", 1)[-1] != "SegmentationNet" or record.get("mode") != "baseline":
        raise SystemExit(f"{args.model} is not a segmentation network trained on raw scans (--mode baseline); "
                         "S's output is a mixed segmentation and D's offsets are not fitted here.")
    t0 = time.perf_counter()
    names, cases = fitting_cases(load_model(args.model), args.data, args.scans)
    lo, hi, step = args.grid
    grid = np.round(np.arange(lo, hi + step / 2, step), 6)
    before = mean_dice(cases, np.zeros(len(CLASSES) + 1, np.float32))
    offsets, after = fit_offsets(cases, grid, args.rounds)
    model = load_model(args.model, fast=False)  # the modules as trained: the final convolution keeps its own bias
    with torch.no_grad():
        model.net.final_conv_0_4.bias += torch.as_tensor(offsets)
    out = args.out / args.model
    model.save_pretrained(out)
    calibration = {"command": command_line("training.calibrate", argv), "scans": names, "grid": list(args.grid),
                   "rounds": args.rounds, "offsets": [round(float(v), 6) for v in offsets],
                   "train_dice_before": round(before, 4), "train_dice_after": round(after, 4),
                   "from_sha256": record.get("sha256"), "seconds": round(time.perf_counter() - t0),
                   "date": time.strftime("%Y-%m-%d")}
    kept = {k: v for k, v in record.items() if k not in ("sha256", "model_class")}
    write_training_record(out, {**kept, "calibration": calibration}, record.get("model_class"))
    print(f"offsets {calibration['offsets']}: mean Dice on {len(names)} training scans {before:.4f} → {after:.4f}; {out}",
          flush=True)
    return out


if __name__ == "__main__":
    main()
