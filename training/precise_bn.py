"""Precise batch-norm statistics for a trained S or baseline (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm").

    python -m training.precise_bn --model baseline --batches 200 --out /tmp/precise

S's batch norms keep their running mean and variance as an exponential average (momentum 0.1) of the
batches seen last in training. Trained one 64³ patch a step, those statistics follow the last ten or
twenty patches of the run, not the training population, and they are what S normalises with at
inference. This recomputes them, with every weight frozen, as the plain average over ``--batches``
patches drawn as training draws them (the baseline: raw patches; S: proxies with α from its training
record), and writes a model folder ``<out>/<model>`` whose ``training.json`` keeps the training record
and adds ``precise_bn`` (this command, the patches, the starting weights' SHA-256).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from mixdemo.data import Cohort, MixedPatchSampler, load_cohort, load_volumes, trained_modality
from mixdemo.weights import load_model
from training import check_model_classes, command_line, count, save_derived_model, source_model, trained_data, user_errors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="baseline", help="model folder name: baseline or a segmentation S")
    p.add_argument("--data", type=Path, default=None,
                   help="cohort whose training split is sampled (default: the one the model's record names, else "
                        "data/phantoms)")
    p.add_argument("--batches", type=count(1), default=200, help="patches averaged (one per forward pass)")
    p.add_argument("--patch-size", type=int, default=None, help="default: the patch size S was trained on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the new folder is <out>/<model>")
    p.add_argument("--volume-cache", type=Path, default=None, metavar="DIR",
                   help="read the training scans memory-mapped from DIR, written once (mixdemo.data.load_volumes)")
    p.add_argument("--threads", type=count(0), default=0)
    return p.parse_args(argv)


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every batch norm's running statistics by their plain average over ``batches`` (forward passes in
    training mode, no gradient; the weights do not change). Returns the number of batch norms; leaves ``model``
    in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("The model has no batch norm to recalibrate (a fused S: load it with fast=False).")
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
    model.train()
    seen = 0
    for x in batches:
        model(x)
        seen += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    if not seen:
        raise ValueError("No batches: the statistics would be reset to 0 and 1.")
    return len(norms)


def training_batches(record: dict, cohort: Cohort, n: int, patch_size: int, seed: int,
                     cache: Path | None = None) -> Iterable[torch.Tensor]:
    """``n`` single-patch inputs drawn as ``training.train`` draws them for this model (its mode, α range,
    references and patch centres; a record from before the centres were recorded: the layout's), from the
    training split of ``cohort``."""
    mixed = record.get("mode", "baseline") != "baseline"
    volumes = load_volumes(cohort.split("train"), cache=cache)
    sampler = MixedPatchSampler(volumes, patch_size=patch_size, mixed=mixed, seed=seed,
                                alpha_range=tuple(record.get("alpha_range", (0.1, 0.9))),
                                n_references=record.get("n_references", 1),
                                patch_centres=record.get("patch_centres", cohort.layout.patch_centres),
                                num_classes=cohort.num_classes)
    for _ in range(n):
        batch = sampler.batch(1)
        yield (batch.x_mix if mixed else batch.x_target).float()


def precise_patch(asked: int | None, trained: int) -> int:
    """The patch side of the passes: ``asked``, else the one S was trained on, raised to the smallest that leaves
    U-Net++'s deepest level 2 voxels (one patch a pass: batch norm needs 2 values there); SystemExit for an asked
    side below it."""
    from mixdemo.models import SegmentationNet

    least = 2 ** (SegmentationNet.POOLINGS + 1)
    if asked is not None and asked < least:
        raise SystemExit(f"--patch-size {asked}: each pass is one patch, and U-Net++'s batch norms need 2 or more voxels "
                         f"at its deepest level, which takes --patch-size {least} or more.")
    if asked is None and trained < least:
        print(f"note: S was trained on {trained}³ patches; its statistics are averaged over {least}³ ones (one patch a "
              f"pass needs {least} or more)", flush=True)
        return least
    return asked or trained


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    record = source_model(args.model, args.threads)
    if record.get("model_class", "").rsplit(".", 1)[-1] != "SegmentationNet":
        raise SystemExit(f"{args.model} is not a segmentation network (S or baseline); D has no batch norm.")
    patch = precise_patch(args.patch_size, record.get("patch_size", 32))
    args.data = args.data or trained_data(record)
    cohort = load_cohort(args.data, trained_modality(record))
    check_model_classes([args.model], cohort)
    model = load_model(args.model, fast=False)  # the batch norms as trained (the fast path folds them away)
    t0 = time.perf_counter()
    batches = training_batches(record, cohort, args.batches, patch, args.seed, args.volume_cache)
    n_norms = recalibrate_batch_norm(model, batches)
    precise = {"command": command_line("training.precise_bn", argv), "batches": args.batches, "patch_size": patch,
               "seed": args.seed, "data": str(args.data), "batch_norms": n_norms, "from_sha256": record.get("sha256"),
               "seconds": round(time.perf_counter() - t0), "date": time.strftime("%Y-%m-%d")}
    out = save_derived_model(model, args.out / args.model, record, "precise_bn", precise)
    print(f"{n_norms} batch norms recalibrated over {args.batches} patches of {patch}³ → {out}", flush=True)
    return out


if __name__ == "__main__":
    with user_errors():
        main()
