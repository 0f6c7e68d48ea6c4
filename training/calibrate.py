"""Per-class logit offsets for the baseline or for D, fitted on training scans.

    python -m training.calibrate --model baseline --scans 6 --out /tmp/calibrated
    python -m training.calibrate --model unmixing-p2-96 --scans 6 --out /tmp/calibrated

A network trained with cross-entropy + Dice on patches can carry a systematic class bias on whole
volumes: the shipped baseline under-segments CSF on its own training scans, mostly as GM. This fits one offset per class (background's fixed at 0), added to the network's logits —
a prior correction, softmax(log p + b) — by coordinate search on a grid, maximising the mean over
``--scans`` training scans (the first scan of the last training subjects; never a test scan) of the
average Dice of the classes, measured as ``training.evaluate --brain-mask`` measures it:

- the baseline (a network on raw scans): its labels of each scan;
- D: the client's labels after TTA (Eq. 6), the mean over ``--tta-k`` mixes of D's corrected
  probabilities, each mix through S (``--segmentation``) with references from the other training
  subjects and α drawn as ``training.evaluate`` draws them for a scan (its seed, α range).

The offsets go into the bias of the network's final layer, so the written model folder ``<out>/<name>``
runs on the unchanged inference path; its ``training.json`` keeps the training record and adds
``calibration`` (this command, the scans, the offsets, the training scans' Dice before and after).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixdemo.data import Cohort, first_scans, load_cohort, load_volumes, trained_modality
from mixdemo.inference import segment_proxies
from mixdemo.mixing import DEFAULT_ALPHA_RANGE, sample_key
from mixdemo.metrics import dice_per_class
from mixdemo.models import SegmentationNet, UnmixingNet, pick_device
from mixdemo.pipeline import Reference
from mixdemo.weights import load_model
from training import (add_device_option, check_alpha_range_option, check_model_classes, command_line, count,
                      save_derived_model, source_model, trained_data, user_errors)



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="baseline", help="the baseline (a network on raw scans) or a D")
    p.add_argument("--data", type=Path, default=None,
                   help="cohort whose training split is used (default: the one the model's record names, else "
                        "data/phantoms)")
    p.add_argument("--scans", type=count(1), default=6, help="training scans fitted on (first scans of the last subjects)")
    p.add_argument("--grid", type=float, nargs=3, default=(-1.0, 1.0, 0.1), metavar=("LO", "HI", "STEP"),
                   help="offsets tried per class")
    p.add_argument("--rounds", type=count(1), default=2, help="passes of the coordinate search over the classes")
    p.add_argument("--segmentation", default="segmentation", help="D only: the S whose mixed segmentations D unmixes")
    p.add_argument("--tta-k", type=count(1), default=10, help="D only: mixes averaged per scan (Eq. 6)")
    p.add_argument("--alpha-range", type=float, nargs=2, default=DEFAULT_ALPHA_RANGE, help="D only: α ~ U(lo, hi)")
    p.add_argument("--seed", type=int, default=0, help="D only: references and α per scan as training.evaluate's seed")
    p.add_argument("--out", type=Path, required=True, help="the new folder is <out>/<name>")
    p.add_argument("--name", default=None, help="the new folder's name (default: --model's)")
    p.add_argument("--volume-cache", type=Path, default=None, metavar="DIR",
                   help="D only: read the training scans memory-mapped from DIR, written once (mixdemo.data.load_volumes)")
    p.add_argument("--threads", type=count(0), default=0)
    add_device_option(p)
    args = p.parse_args(argv)
    check_alpha_range_option(p, args)
    return args


@dataclass
class FitCase:
    """One training scan: its labels; ``settled``, the labels no offset on the grid can change (background
    outside the brain); and the network's probabilities (K, C, N) at the N voxels of ``open`` (K = 1 for
    the baseline, the K mixes of Eq. 6 for D), whose labels the offsets decide."""
    truth: np.ndarray
    settled: np.ndarray
    open: np.ndarray
    probs: torch.Tensor


def fit_case(probs: torch.Tensor, truth: np.ndarray, brain: np.ndarray, span: float | None = None) -> FitCase:
    """A :class:`FitCase` from the probabilities (K, C, N) at the N voxels of ``brain``.

    With ``span`` (the largest difference between two classes' offsets on the grid, background's 0
    included), a voxel where every mix gives one class more than e^span / (1 + e^span) is settled: that
    class keeps more than half of every mix's probability under any offsets, so the mean's argmax is it.
    """
    settled = np.zeros(truth.shape, np.uint8)
    open_ = brain.copy()
    if span is not None:
        top_p, top_c = probs.max(1)
        sure = ((top_c == top_c[:1]).all(0) & (top_p > np.exp(span) / (1 + np.exp(span))).all(0)).numpy()
        settled[brain] = np.where(sure, top_c[0].numpy(), 0)
        open_[brain] = ~sure
        probs = probs[:, :, torch.from_numpy(~sure)]
    return FitCase(truth, settled, open_, probs.contiguous())


def labels_with_offsets(case: FitCase, offsets: np.ndarray) -> np.ndarray:
    """argmax over classes of the mean over the K mixes of softmax(log p_k + offsets) (Eq. 6 with each
    mix's logits shifted), background outside the brain."""
    shifted = case.probs * torch.exp(torch.as_tensor(offsets, dtype=case.probs.dtype)).view(1, -1, 1)
    shifted /= shifted.sum(1, keepdim=True)
    labels = case.settled.copy()
    labels[case.open] = shifted.mean(0).argmax(0).numpy()
    return labels


def foreground(cases: list[FitCase]) -> list[int]:
    """The classes whose average Dice is maximised: every class of the network's output but background."""
    return list(range(1, cases[0].probs.shape[1]))


def mean_dice(cases: list[FitCase], offsets: np.ndarray) -> float:
    """The mean over ``cases`` of the average Dice of the :func:`foreground` classes of :func:`labels_with_offsets`."""
    rows = [dice_per_class(labels_with_offsets(case, offsets), case.truth, foreground(cases)) for case in cases]
    return float(np.mean([np.mean(list(r.values())) for r in rows]))


def fit_offsets(cases: list[FitCase], grid: np.ndarray, rounds: int) -> tuple[np.ndarray, float]:
    """Coordinate search: each foreground class's offset in turn set to the grid value with the best
    :func:`mean_dice` (ties: the smallest offset in magnitude), ``rounds`` times. Returns (offsets, Dice)."""
    classes = foreground(cases)
    offsets = np.zeros(len(classes) + 1, np.float32)
    best = mean_dice(cases, offsets)
    for _ in range(rounds):
        for c in classes:
            for value in sorted(grid, key=abs):
                trial = offsets.copy()
                trial[c] = value
                dice = mean_dice(cases, trial)
                if dice > best + 1e-9:
                    best, offsets = dice, trial
    return offsets, best


def final_bias(model: torch.nn.Module) -> torch.Tensor:
    """The bias added to every voxel's logits by the network's last layer."""
    if isinstance(model, SegmentationNet):
        return model.net.final_conv_0_4.bias
    if isinstance(model, UnmixingNet):
        return model.voxel_out.bias if model.voxel_hidden else model.out.bias
    raise TypeError(f"No known final layer in {type(model).__name__}.")


def fitting_scans(cohort: Cohort, n_scans: int) -> tuple[list, list]:
    """(chosen, training records): the first scan of each of the last ``n_scans`` training subjects of ``cohort``
    (read with the modality the model was trained on)."""
    records = cohort.split("train")
    first = first_scans(records)
    return first[-n_scans:], records


def baseline_cases(model: torch.nn.Module, cohort: Cohort, n_scans: int, span: float) -> tuple[list[str], list[FitCase]]:
    """(scan names, cases): the baseline's probabilities on each chosen scan."""
    chosen, _ = fitting_scans(cohort, n_scans)
    cases = []
    for vol in load_volumes(chosen):
        brain = vol.image > 0
        probs = segment_proxies(model, vol.image[None])[0].float()
        cases.append(fit_case(probs[:, brain][None], np.asarray(vol.labels), brain, span))
    return [r.name for r in chosen], cases


def unmixing_cases(seg: torch.nn.Module, unmix: torch.nn.Module, cohort: Cohort, n_scans: int, k: int,
                   alpha_range: tuple[float, float], seed: int, span: float,
                   cache: Path | None = None) -> tuple[list[str], list[FitCase]]:
    """(scan names, cases): D's probabilities for K mixes of each chosen scan, with references from the
    other training subjects and α drawn as ``training.evaluate`` draws them for a scan."""
    from training.evaluate import predict_k, scan_seed

    chosen, records = fitting_scans(cohort, n_scans)
    volumes = {v.name: v for v in load_volumes(records, cache=cache)}
    bank = {v.name: Reference(v.name, v.image, v.labels) for v in volumes.values()}
    subject_of = {r.name: r.subject for r in records}
    cases = []
    for rec in chosen:
        vol = volumes[rec.name]
        others = [name for name in bank if subject_of[name] != rec.subject]
        key = sample_key(others, k, alpha_range=alpha_range, seed=scan_seed(seed, rec.name))
        brain = vol.image > 0
        _, learned, _ = predict_k(vol, [bank[r] for r in key.reference_ids], key.alphas, seg, unmix, brain)
        cases.append(fit_case(learned[:, :, brain].float(), np.asarray(vol.labels), brain, span))
        del learned
    return [r.name for r in chosen], cases


def check_model(name: str, record: dict) -> str:
    """'baseline' or 'unmixing' (which cases to fit), or SystemExit for S (its output is a mixed segmentation)."""
    kind = record.get("model_class", "").rsplit(".", 1)[-1]
    if kind == "UnmixingNet":
        return "unmixing"
    if kind == "SegmentationNet" and record.get("mode") == "baseline":
        return "baseline"
    raise SystemExit(f"{name} is neither a segmentation network trained on raw scans (--mode baseline) nor a D; "
                     "S's output is a mixed segmentation, whose classes D turns into the target's.")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    record = source_model(args.model, args.threads)
    kind = check_model(args.model, record)
    t0 = time.perf_counter()
    lo, hi, step = args.grid
    grid = np.round(np.arange(lo, hi + step / 2, step), 6)
    span = max(hi, 0.0) - min(lo, 0.0)  # background's offset stays 0
    modality = trained_modality(record)  # a BraTS folder: the modality the model was trained on
    args.data = args.data or trained_data(record)
    cohort = load_cohort(args.data, modality)
    check_model_classes([args.model] + ([args.segmentation] if kind == "unmixing" else []), cohort)
    device = str(pick_device(args.device))
    if kind == "baseline":
        names, cases = baseline_cases(load_model(args.model, device=device), cohort, args.scans, span)
    else:
        seg, unmix = (load_model(name, device=device) for name in (args.segmentation, args.model))
        names, cases = unmixing_cases(seg, unmix, cohort, args.scans, args.tta_k, tuple(args.alpha_range), args.seed,
                                      span, args.volume_cache)
    before = mean_dice(cases, np.zeros(len(foreground(cases)) + 1, np.float32))
    offsets, after = fit_offsets(cases, grid, args.rounds)
    model = load_model(args.model, fast=False)  # the modules as trained: the final layer keeps its own bias
    with torch.no_grad():
        final_bias(model).add_(torch.as_tensor(offsets))
    calibration = {"command": command_line("training.calibrate", argv), "scans": names, "grid": list(args.grid),
                   "rounds": args.rounds, "offsets": [round(float(v), 6) for v in offsets],
                   "train_dice_before": round(before, 4), "train_dice_after": round(after, 4),
                   "from_model": args.model, "from_sha256": record.get("sha256"), "seconds": round(time.perf_counter() - t0),
                   "date": time.strftime("%Y-%m-%d")}
    if kind == "unmixing":
        calibration.update(segmentation=args.segmentation, tta_k=args.tta_k, alpha_range=list(args.alpha_range),
                           seed=args.seed)
    out = save_derived_model(model, args.out / (args.name or args.model), record, "calibration", calibration)
    print(f"offsets {calibration['offsets']}: mean Dice on {len(names)} training scans {before:.4f} → {after:.4f}; {out}",
          flush=True)
    return out


if __name__ == "__main__":
    with user_errors():
        main()
