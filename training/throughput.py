"""Training throughput for each precision and memory layout of ``training.train`` (steps per second).

    python -m training.throughput --threads 2                  # results/train_throughput.json
    python -m training.throughput --quick --out /tmp/tp.json   # a few seconds a configuration

For each mode (``private``: S + D end to end, Eq. 3's loss and D's; ``baseline``: S on raw images) it times
the optimiser steps of :func:`training.train.training_step` (the one ``training.train`` runs) with the
networks ``training.train`` builds by default (random weights: a step's cost does not depend on them),
on batches drawn from the cohort's training scans as training draws them, in four configurations:
float32 (the default, which trained the shipped weights), float32 in channels-last 3D, bfloat16 mixed
precision, and both (``--precision bfloat16 --channels-last``); the bfloat16 ones only where the device has
bfloat16 arithmetic (a GPU, or a CPU with AVX512-BF16 or AMX: :func:`configurations`). ``--check-gradients N`` also counts how often
bfloat16 convolutions return broken weight gradients (:func:`gradient_check`), the reason ``training.train``
runs convolutions on grids smaller than their kernel in float32. The configurations are interleaved over
``--reps`` repetitions, each after warm-up steps, and the medians are kept, so a host whose speed
wanders affects them alike. Whether a precision trains as well is another question: ``--runs`` copies
the records of training runs (each ``training.train --val-subjects``, e.g. one per precision on the same
schedule) into the JSON, with the validation Dice of each validated step, for the README to quote.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mixdemo.bench import cpu_description
from mixdemo.data import MixedPatchSampler, load_cohort, load_volumes
from mixdemo.models import SMALL_FEATURES, SegmentationNet, UnmixingNet, pick_device
from mixdemo.phantoms import DEFAULT_COHORT, ensure_default_cohort
from mixdemo.weights import native_bfloat16
from training import DATA_HELP, add_device_option, command_line, count, parse_with_out, user_errors, write_record
from training.train import EndToEnd, set_up_for, tiny_grid_convolutions_in_float32, training_step

CONFIGS: tuple[tuple[str, bool], ...] = (("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True))
"""(precision, channels-last) of each configuration timed, the default first."""


def configurations(device: torch.device) -> tuple[tuple[str, bool], ...]:
    """The configurations timed on ``device``: :data:`CONFIGS`, less the bfloat16 ones on a CPU without bfloat16
    instructions, where oneDNN emulates them about a hundred times slower (``training.train --precision bfloat16``
    warns there)."""
    if device.type == "cpu" and not native_bfloat16():
        return tuple(c for c in CONFIGS if c[0] != "bfloat16")
    return CONFIGS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help=DATA_HELP)
    p.add_argument("--modes", nargs="+", choices=["private", "baseline"], default=["private", "baseline"])
    p.add_argument("--batch-size", type=count(1), default=4)
    p.add_argument("--patch-size", type=count(1), default=32)
    p.add_argument("--steps", type=count(1), default=10, help="steps timed per repetition")
    p.add_argument("--warmup", type=count(0), default=3, help="steps before each timed repetition")
    p.add_argument("--reps", type=count(1), default=3, help="repetitions of each configuration, interleaved")
    p.add_argument("--scans", type=count(1), default=6, help="training scans the batches are drawn from")
    p.add_argument("--quick", action="store_true", help="one repetition of 2 steps on 16³ patches (a smoke run)")
    p.add_argument("--threads", type=count(0), default=0, help="torch CPU threads (0: leave torch's default)")
    add_device_option(p)
    p.add_argument("--check-gradients", type=count(0), default=0, metavar="N",
                   help="also count, over N steps per case, the bfloat16 convolutions whose weight gradients come out "
                        "non-finite or huge (gradient_check), with and without training.train's guard")
    p.add_argument("--runs", type=Path, nargs="*", default=[], metavar="MODEL_FOLDER",
                   help="model folders written by training.train with --val-subjects (e.g. one run in each "
                        "precision): their commands, precision, time and validation Dice go into the JSON beside "
                        "the throughput, so that how each precision trained is quoted from its record")
    args = parse_with_out(p, argv, "train_throughput.json")
    if args.quick:
        args.steps, args.warmup, args.reps, args.patch_size, args.scans = 2, 1, 1, 16, 3
    return args


def build_model(mode: str, device: torch.device, precision: str, channels_last: bool, seed: int = 0) -> EndToEnd:
    """The networks ``training.train --mode MODE`` starts from (default widths, a new D at full resolution), set up
    for ``precision`` and the layout as ``training.train`` sets them up."""
    torch.manual_seed(seed)
    unmix = UnmixingNet() if mode == "private" else None
    return set_up_for(EndToEnd(SegmentationNet(features=SMALL_FEATURES), unmix).to(device).train(), precision, channels_last)


GRADIENT_CASES: tuple[tuple[int, int, int], ...] = ((16, 16, 2), (64, 128, 2), (128, 128, 2), (64, 128, 4), (32, 64, 8))
"""(in channels, out channels, grid side) of the 3³ convolutions (padding 1) whose weight gradients are checked:
S's deepest blocks on 32³ patches (2³), a narrow one there, and the grids above them."""


def gradient_check(device: torch.device, iters: int, batch: int = 4, seed: int = 0) -> list[dict]:
    """How often a 3³ convolution's weight gradient comes out non-finite or above 10⁴ (from standard normal
    inputs and output gradients, where it is of order 10) under bfloat16 autocast, by grid side and layout,
    with the convolution as autocast runs it and as ``training.train`` runs it
    (:func:`training.train.tiny_grid_convolutions_in_float32`)."""
    torch.manual_seed(seed)
    rows = []
    for c_in, c_out, side in GRADIENT_CASES:
        for channels_last in (False, True):
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
            counts = {}
            for guarded in (False, True):
                conv = torch.nn.Conv3d(c_in, c_out, 3, padding=1).to(device, memory_format=fmt)
                if guarded:
                    tiny_grid_convolutions_in_float32(conv)
                bad = 0
                for _ in range(iters):
                    x = torch.randn(batch, c_in, side, side, side, device=device).contiguous(memory_format=fmt)
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        y = conv(x)
                    conv.zero_grad()
                    y.backward(torch.randn(y.shape, device=device).to(y.dtype).contiguous(memory_format=fmt))
                    g = conv.weight.grad
                    bad += int(not torch.isfinite(g).all() or g.abs().max() > 1e4)
                counts["training_train" if guarded else "autocast"] = bad
            rows.append({"in_channels": c_in, "out_channels": c_out, "grid": side, "channels_last": channels_last,
                         "iterations": iters, "bad_weight_gradients": counts})
            print(f"gradients {c_in}→{c_out} on {side}³{' channels-last' if channels_last else ''}: {counts}", flush=True)
    return rows


def time_steps(model: EndToEnd, sampler: MixedPatchSampler, args: argparse.Namespace, device: torch.device,
               precision: str, channels_last: bool) -> float:
    """Seconds per optimiser step over ``args.steps`` steps, after ``args.warmup`` untimed ones."""
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = [sampler.batch(args.batch_size) for _ in range(args.warmup + args.steps)]
    for batch in batches[: args.warmup]:
        training_step(model, optim, batch, device, precision, channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for batch in batches[args.warmup :]:
        training_step(model, optim, batch, device, precision, channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / args.steps


def measure(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Every mode and configuration, interleaved; the JSON document."""
    device = pick_device(args.device)
    ensure_default_cohort(args.data)
    cohort = load_cohort(args.data)
    volumes = load_volumes(cohort.split("train")[: args.scans])
    configs = configurations(device)
    if configs != CONFIGS:
        print("no bfloat16 instructions on this CPU: timing float32 only", flush=True)
    rows = []
    for mode in args.modes:
        sampler = MixedPatchSampler(volumes, patch_size=args.patch_size, mixed=mode != "baseline",
                                    patch_centres=cohort.layout.patch_centres, seed=0)
        seconds: dict[tuple[str, bool], list[float]] = {c: [] for c in configs}
        for _ in range(args.reps):
            for precision, channels_last in configs:
                model = build_model(mode, device, precision, channels_last)
                seconds[(precision, channels_last)].append(time_steps(model, sampler, args, device, precision, channels_last))
                print(f"{mode} {precision}{' channels-last' if channels_last else ''}: "
                      f"{seconds[(precision, channels_last)][-1]:.3f} s/step", flush=True)
        base = statistics.median(seconds[configs[0]])
        for (precision, channels_last), runs in seconds.items():
            median = statistics.median(runs)
            rows.append({"mode": mode, "precision": precision, "channels_last": channels_last,
                         "seconds_per_step": round(median, 4), "steps_per_second": round(1 / median, 3),
                         "speedup": round(base / median, 3), "runs": [round(r, 4) for r in runs]})
    cpu = cpu_description()
    return {
        "command": command_line("training.throughput", argv),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu["model"],
        "cpu_features": cpu["features"],  # timings compare only on the same kind of CPU
        "device": str(device) + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "native_bfloat16": (native_bfloat16() if device.type == "cpu"  # the device's own: the GPU's on CUDA
                            else device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "patch_size": args.patch_size, "steps": args.steps, "warmup": args.warmup,
        "reps": args.reps, "quick": args.quick,
        "rows": rows,
    }


def run_record(folder: Path) -> dict:
    """What a training run's record (``training.json``) says of how it trained: its command, precision, layout,
    steps, time, and the validation Dice at each validated step."""
    from mixdemo.weights import read_training_record

    record = read_training_record(folder)
    if not record.get("validation"):
        raise SystemExit(f"--runs: {folder} has no validation history (train it with --val-subjects).")
    return {"model": folder.name, "command": record["command"], "precision": record.get("precision", "float32"),
            "channels_last": record.get("channels_last", False), "steps": record["steps"],
            "train_seconds": record["train_seconds"], "hardware": record["hardware"],
            "validation_subjects": record["validation"]["subjects"], "validation": record["validation"]["history"],
            "sha256": record["sha256"]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [run_record(folder) for folder in args.runs]  # before the measurement: a wrong folder costs no time
    doc = measure(args, argv)
    if args.check_gradients:
        doc["gradient_check"] = gradient_check(pick_device(args.device), args.check_gradients)
    if runs:
        doc["runs"] = runs
    write_record(args.out, doc)
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    with user_errors():
        main()
