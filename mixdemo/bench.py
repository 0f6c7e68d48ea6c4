"""One-run benchmark of the inference path on this machine.

    python -m mixdemo.bench             # whole phantom volume, 3 repetitions → results/bench.json
    python -m mixdemo.bench --quick     # a 32³ cube, 1 repetition, fewer levers: a smoke run (under a minute on 2 cores)

Measures on the same volume: baseline whole-brain segmentation; private segmentation with
learned unmixing at K = 1 and K = 10; patch mode (one 32³ patch, K = 10) and the app's patch-mode
answer (K = 3, rendering included); the client's share (mixing + D); S's fast path against MONAI's
forward, its memory budget (one pass vs slabs), huge pages and the allocator keeping freed memory within
a pass (time, page faults, peak memory, Dice, each in a fresh process);
achieved GFLOP/s of S against a float32 matrix-multiply peak measured at the start and the end of the
run (the higher counts) and against a wide 3³ convolution's (S's kernels at their best); peak memory
of a fresh process serving private requests at K = 10 and 1. Medians over repetitions; the baseline and the
private K = 1 runs with each shipped D are interleaved
(:func:`interleaved_runs`), so a host that slows down for a while slows all of them alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mixdemo.inference import (HUGE_PAGES_ENV, KEEP_FREED_ENV, MEMORY_ENV, freed_memory_kept_by_choice, huge_pages,
                               keep_freed_memory)
from mixdemo.launch import check_setting_variables, count, out_file
from mixdemo.mixing import MixKey, corner_around, hard_labels, patch_slices
from mixdemo.models import SegmentationNet, UnmixingNet, pick_device
from mixdemo.phantoms import GRID_SHAPE, load_template, sample_scan, sample_subject, synthesize_scan
from mixdemo.pipeline import Reference, make_proxies, reference_onehots, segment_proxies, unmix_learned, unmix_learned_labels
from mixdemo.weights import DEFAULT_UNMIXING, load_model, native_bfloat16


S_SLAB_BUDGET_MB = 1200
"""The smaller memory budget the benchmark compares with the default (2 slabs of 96 for the fused S on the
phantom grid)."""


CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
"""The instruction sets that decide S's and D's speed here (Linux ``/proc/cpuinfo`` flag → name): oneDNN runs
bfloat16 natively with AVX512-BF16 or AMX and emulates it (slowly) without them."""


def cpu_description(cpuinfo: str | None = None) -> dict:
    """This CPU's model name and which of :data:`CPU_FEATURES` it has (from ``/proc/cpuinfo``; the platform's
    machine name and no features where that file is absent, as off Linux). Timings only compare across runs
    on the same kind of CPU."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "features": [name for flag, name in CPU_FEATURES.items() if flag in flags]}


def wall_seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn`` over ``reps`` runs."""
    return statistics.median(wall_seconds(fn) for _ in range(reps))


def interleaved_runs(baseline: Callable[[], object], private: Callable[[str], tuple[float, float]], names: list[str],
                     reps: int) -> tuple[list[float], dict[str, list[tuple[float, float]]]]:
    """Baseline and private K = 1 runs, interleaved: each repetition times the baseline once and one
    private run with each client network of ``names`` (``private(name)`` → (total s, client s)), in an
    order rotated by one each repetition, after one untimed warm-up of each. A host that slows down
    for part of the run then slows every path alike, not whichever happened to be timed then, so the
    ratios (privacy tax, client share) stay meaningful on a shared machine.

    Returns (baseline seconds per repetition, {name: [(total, client) per repetition]})."""
    paths: list[str | None] = [None, *names]  # None: the baseline
    for path in paths:
        baseline() if path is None else private(path)
    base_times: list[float] = []
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for rep in range(reps):
        shift = rep % len(paths)
        for path in paths[shift:] + paths[:shift]:
            if path is None:
                base_times.append(wall_seconds(baseline))
            else:
                runs[path].append(private(path))
    return base_times, runs


def bracketed_runs(long: Callable[[], object], short: Callable[[], object], reps: int) -> tuple[list[float], list[float]]:
    """``reps`` times: ``short``, ``long``, ``short`` back to back. Returns (the long run's seconds, its
    ratio to the mean of the two short runs around it) per repetition. The ratio (K = 10 over K = 1)
    then compares runs made minutes apart at most, not a long run against short ones made earlier on a
    host whose speed may have drifted since."""
    longs, ratios = [], []
    for _ in range(reps):
        before, middle, after = wall_seconds(short), wall_seconds(long), wall_seconds(short)
        longs.append(middle)
        ratios.append(middle / ((before + after) / 2))
    return longs, ratios


def best_gflops(fn: Callable[[], object], flop: float, reps: int) -> float:
    """GFLOP/s of the fastest of ``reps`` calls of ``fn`` (after a warm-up call) that each do ``flop`` FLOPs: a
    peak is a best case, and a host's hiccups only ever slow a call down."""
    fn()
    return flop / min(wall_seconds(fn) for _ in range(reps)) / 1e9


def matmul_peak_gflops(sizes: Sequence[int] = (1024, 2048, 4096), reps: int = 3,
                       dtype: torch.dtype = torch.float32) -> float:
    """GEMM throughput (GFLOP/s) in ``dtype`` of this process's torch threads, the best over square products of
    a few sizes: the machine's practical matrix-multiply peak."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        best = max(best, best_gflops(lambda: a @ b, 2 * n**3, reps))
    return best


def conv_peak_gflops(channels: int = 128, side: int = 32, reps: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """Throughput (GFLOP/s) in ``dtype`` of a wide 3×3×3 convolution in channels-last 3D: the kernels S's own
    convolutions run on (oneDNN), at their best case. S's narrow layers approach it at most; torch's GEMM
    may well be slower than it."""
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False).eval().to(dtype)
    conv = conv.to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, channels, side, side, side, dtype=dtype).to(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        return best_gflops(lambda: conv(x), 2 * 27 * channels**2 * side**3, reps)


def _onednn_convolution_flop(x_shape: list[int], w_shape: list[int], _bias: object, _padding: object,
                             _stride: object, _dilation: object, _groups: int, *, out_shape: list[int], **_: object) -> int:
    """FLOPs of ``aten.mkldnn_convolution``, where the CPU fast path sends S's and D's convolutions
    (:func:`mixdemo.models.conv3d`), which ``FlopCounterMode`` does not count on its own."""
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(x_shape, w_shape, out_shape)


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the oneDNN convolutions of the CPU fast path."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.mkldnn_convolution: _onednn_convolution_flop})


def flops_per_voxel(model: torch.nn.Module) -> float:
    """Forward FLOPs of ``model`` per input voxel (convolutions are linear in the voxel count)."""
    x = torch.zeros(1, 1, 32, 32, 32)
    with flop_counter() as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / x.numel()


def d_flops_per_voxel(unmix: torch.nn.Module) -> float:
    """Forward FLOPs of a client network D per voxel (its convolutions and matrix products; on a 32³ cube)."""
    side, c = 32, unmix.num_classes
    with flop_counter() as counter, torch.inference_mode():
        unmix(torch.zeros(1, c, side, side, side), torch.zeros(1, c * unmix.n_references, side, side, side),
              torch.tensor([0.5]))
    return counter.get_total_flops() / side**3


def channels_last_speedup(seg: torch.nn.Module, side: int, reps: int) -> float:
    """S's forward time in the default layout over its time with channels-last 3D (a ``side``³ cube)."""
    import copy

    plain, fast = copy.deepcopy(seg), copy.deepcopy(seg)
    plain.to(memory_format=torch.contiguous_format)
    plain.channels_last = False
    fast.use_channels_last()
    x = torch.rand(1, 1, side, side, side)
    with torch.inference_mode():
        plain(x), fast(x)  # warm-up
        return median_seconds(lambda: plain(x), reps) / median_seconds(lambda: fast(x), reps)


D_STUDY_KEY_ALPHA = 0.5
"""α of the one mix on which the benchmark's D levers are measured."""


def d_study_input(seg: torch.nn.Module, target: np.ndarray, ref: Reference) -> tuple[MixKey, torch.Tensor]:
    """The one mix the D levers share (K = 1, α = 0.5) and S's output on it, computed once."""
    key = MixKey((ref.ref_id,), (D_STUDY_KEY_ALPHA,))
    return key, segment_proxies(seg, make_proxies(target, [ref], key))


def unmix_window_study(unmix: torch.nn.Module, key: MixKey, mixed: torch.Tensor, target: np.ndarray,
                       truth: np.ndarray, ref: Reference) -> list[dict]:
    """D on the whole volume (the default) against D on 32³ windows (overlap 0.25 and 0, windows without
    brain skipped): time and brain-masked Dice on the shared mix of :func:`d_study_input`."""
    from mixdemo.metrics import dice_per_class
    from mixdemo.pipeline import UNMIX_ROI, window_slices

    brain = target > 0
    rows = []
    for roi, overlap in ((None, None), (UNMIX_ROI, 0.25), (UNMIX_ROI, 0.0)):
        t0 = time.perf_counter()
        ref_oh = reference_onehots([ref], num_classes=mixed.shape[1])
        probs = unmix_learned(unmix, mixed, ref_oh, key.alphas, brain_mask=brain, roi_size=roi, overlap=overlap or 0.0)
        seconds = time.perf_counter() - t0
        labels = np.where(brain, hard_labels(probs[0]).numpy(), 0)
        dice = dice_per_class(labels, truth, [1, 2, 3])
        row = {"roi": "whole volume" if roi is None else list(roi), "overlap": overlap, "seconds": round(seconds, 3),
               "dice_avg": round(float(np.mean(list(dice.values()))), 4)}
        if roi is not None and min(target.shape) >= max(roi):
            windows = window_slices(target.shape, roi, overlap)
            row["windows_with_brain"] = [sum(bool((target[w] > 0).any()) for w in windows), len(windows)]
        rows.append(row)
    return rows


D_VARIANTS = tuple(dict.fromkeys((DEFAULT_UNMIXING, "unmixing-p2-96-cal", "unmixing-96", "unmixing", "unmixing-p2-96",
                                   "unmixing-p2", "unmixing-p4-96", "unmixing-p4")))
"""The D model folders whose whole-volume time and Dice the benchmark compares (those present): the default
first, then each shipped one-reference D (the end-to-end D, the cheaper designs, and those trained on from
them on 96³ patches: the same networks, other weights)."""


def shipped_ds(default_unmix: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Each D of :data:`D_VARIANTS` in the local weights folder, loaded once (the default one already is)."""
    from mixdemo.weights import weights_dir

    present = [n for n in D_VARIANTS if (weights_dir() / n / "model.safetensors").exists()]  # local only
    return {n: default_unmix if n == D_VARIANTS[0] else load_model(n) for n in present}


def unmix_net_study(nets: dict[str, torch.nn.Module], key: MixKey, mixed: torch.Tensor, target: np.ndarray,
                    truth: np.ndarray, ref: Reference, reps: int) -> list[dict]:
    """Each D of ``nets`` (:func:`shipped_ds`) on the whole volume as the client runs it, on the shared
    mix of :func:`d_study_input`: median seconds, its patch, parameters and brain-masked Dice."""
    from mixdemo.metrics import dice_per_class
    from mixdemo.models import unmixing_design

    brain = target > 0
    rows = []
    for name, unmix in nets.items():

        def run_d() -> torch.Tensor:
            ref_oh = reference_onehots([ref], torch.uint8, num_classes=mixed.shape[1])
            return unmix_learned(unmix, mixed, ref_oh, key.alphas, brain_mask=brain)

        seconds = median_seconds(run_d, reps)
        labels = np.where(brain, hard_labels(run_d()[0]).numpy(), 0)
        dice = dice_per_class(labels, truth, [1, 2, 3])
        rows.append({"model": name, **unmixing_design(unmix),
                     "seconds": round(seconds, 3), "dice_avg": round(float(np.mean(list(dice.values()))), 4)})
    return rows


D_WIDTHS = ((16, 32), (8, 16))
"""The widths of the two resolution levels of the untrained Ds of :func:`width_study`: the default D's, then half."""


def width_study(unmix: torch.nn.Module, key: MixKey, mixed: torch.Tensor, target: np.ndarray, truth: np.ndarray,
                ref: Reference, reps: int) -> list[dict]:
    """Untrained Ds of the default D's design (:data:`UNTRAINED_D_DESIGN`) and precision at each of
    :data:`D_WIDTHS`, timed by :func:`unmix_net_study` on its mix: widths, parameters, precision, GFLOP on the
    volume and median seconds. Whether a D of fewer FLOPs would take less time; no Dice (untrained weights;
    training one is hours)."""
    if not isinstance(unmix, UnmixingNet):
        return []
    nets = {}
    for features in D_WIDTHS:
        net = UnmixingNet(**UNTRAINED_D_DESIGN, features=features).eval().use_channels_last()
        nets[features] = net.use_bfloat16() if unmix.compute_dtype == torch.bfloat16 else net
    voxels = int(np.prod(target.shape))
    timed = unmix_net_study(nets, key, mixed, target, truth, ref, reps)
    return [{"features": list(features), "parameters": row["parameters"],
             "precision": str(net.compute_dtype).removeprefix("torch."),
             "gflop": round(d_flops_per_voxel(net) * voxels / 1e9, 1), "seconds": row["seconds"]}
            for (features, net), row in zip(nets.items(), timed)]


def d_in_each_precision(unmix: torch.nn.Module, untrained: bool) -> dict[str, torch.nn.Module]:
    """The client's D in float32 and in bfloat16 (:meth:`UnmixingNet.use_bfloat16`): ``unmix`` itself for its own
    precision (``$MIXDEMO_UNMIXING_PRECISION``), the same weights loaded again for the other (a copy of the
    untrained D cast to bfloat16 with ``untrained``); empty without native bfloat16, where it is emulated."""
    if not native_bfloat16() or not isinstance(unmix, UnmixingNet):
        return {}
    own = "bfloat16" if unmix.compute_dtype == torch.bfloat16 else "float32"
    other = "float32" if own == "bfloat16" else "bfloat16"
    if untrained:  # load_models' untrained D runs in float32
        twin = copy.deepcopy(unmix).use_bfloat16()
    else:
        twin = load_model(DEFAULT_UNMIXING, precision=other)
    return {own: unmix, other: twin}


def masked_dice_avg(labels: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> float:
    """Average Dice over GM, WM and CSF of ``labels`` restricted to ``brain``, against ``truth``."""
    from mixdemo.metrics import dice_per_class

    dice = dice_per_class(np.where(brain, labels, 0), truth, [1, 2, 3])
    return round(float(np.mean(list(dice.values()))), 4)


def precision_study(unmix: torch.nn.Module, key: MixKey, target: np.ndarray, truth: np.ndarray,
                    refs: list[Reference], reps: int, untrained: bool) -> list[dict]:
    """S and the baseline in float32 and in bfloat16 (``$MIXDEMO_PRECISION``), the same D: per precision the
    baseline's and the private K = 1 run's median seconds (interleaved, as the headline's), the privacy tax
    and client share, and the brain-masked Dice of the baseline's and of the private run's labels. Float32
    only where the CPU has no bfloat16 instructions: emulated, S's bfloat16 pass takes on the order of a hundred
    times longer (hours on the whole volume), and no one would run it."""
    brain = target > 0
    rows = []
    for precision in ("float32", "bfloat16") if native_bfloat16() else ("float32",):
        if untrained:
            seg, base = (untrained_s().use_bfloat16() if precision == "bfloat16" else untrained_s() for _ in range(2))
        else:
            seg, base = (load_model(n, precision=precision) for n in ("segmentation", "baseline"))

        def baseline_labels() -> np.ndarray:
            return hard_labels(segment_proxies(base, target[None])[0]).numpy()

        def private_labels() -> np.ndarray:
            mixed = segment_proxies(seg, make_proxies(target, refs[: key.k], key))
            ref_oh = reference_onehots(refs[: key.k], torch.uint8, num_classes=mixed.shape[1])
            return unmix_learned_labels(unmix, mixed, ref_oh, key.alphas, brain_mask=brain).numpy()

        base_times, runs = interleaved_runs(baseline_labels, lambda _: private_seconds(seg, unmix, key, target, refs),
                                            ["private"], reps)
        base_s, private_s = (round(statistics.median(times), 3) for times in (base_times, (t for t, _ in runs["private"])))
        rows.append({"precision": precision, "baseline_s": base_s, "private_k1_s": private_s,
                     "privacy_tax": round(private_s / base_s, 3),  # of the seconds recorded (quick runs take ms)
                     "client_share": round(statistics.median(c / t for t, c in runs["private"]), 3),
                     "baseline_dice_avg": masked_dice_avg(baseline_labels(), truth, brain),
                     "private_k1_dice_avg": masked_dice_avg(private_labels(), truth, brain)})
        seg = base = None  # the models freed before the next precision loads (a del read as undefined in the closures)
    return rows


class Allocation(NamedTuple):
    """How a fresh process allocates: PyTorch's huge pages (:data:`~mixdemo.HUGE_PAGES_ENV`, the default) and glibc
    keeping freed memory within a pass and handing it back after it (:func:`~mixdemo.inference.keep_freed_memory`;
    the default where S runs in bfloat16: :func:`default`)."""

    huge_pages: bool = True
    keep_freed: bool = True

    @classmethod
    def default(cls) -> Allocation:
        """This process's own allocation, as a fresh process asks for it by default."""
        return cls(keep_freed=freed_memory_kept_by_choice())

    def env(self) -> dict[str, str | None]:
        """The environment variables that ask a fresh process for it."""
        return {HUGE_PAGES_ENV: "1" if self.huge_pages else "0", KEEP_FREED_ENV: "1" if self.keep_freed else "0"}


class SProbe(NamedTuple):
    """One :func:`s_budget_probe`: S's path (fused, the default, or MONAI's forward), budget (None: the
    default) and allocation."""

    fused: bool = True
    budget_mb: int | None = None
    allocation: Allocation = Allocation()  # the benchmark passes Allocation.default()


def s_budget_probe(target: np.ndarray, truth: np.ndarray, threads: int, probe: SProbe = SProbe()) -> dict:
    """The baseline S on the whole target in a fresh process, as ``probe`` says: seconds of one pass (after a
    warm-up pass), the minor page faults of that pass, the process's peak RSS, and the brain-masked Dice."""
    env = {MEMORY_ENV: None if probe.budget_mb is None else str(probe.budget_mb), **probe.allocation.env()}
    process = FreshProcess("--probe-s", threads, env, [] if probe.fused else ["--probe-unfused"])
    row = process.result({"image": target, "labels": truth})
    return {"path": "fused" if probe.fused else "reference (MONAI forward)", "budget_mb": probe.budget_mb, **row}


def json_from_child(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``python ARGS`` in a fresh process (``env``: its whole environment; None: this one's) and return the
    JSON document its last line prints; ``subprocess.CalledProcessError``, with the child's stderr, if it fails."""
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class FreshProcess:
    """``python -m mixdemo.bench PROBE ARRAYS.npz [EXTRA] --threads N`` started ahead of its volumes: the child
    pays its imports (~10 s on 2 cores) while this process does untimed work (synthesising the volumes), says it
    is ready, and waits, idle, until :meth:`result` hands it the volumes; ``env``: variables to set, or with
    None to unset. A child whose parent goes away before that exits without measuring."""

    module = "mixdemo.bench"
    """The module the child runs (this one: its ``main`` takes the probe flags)."""

    def __init__(self, probe: str, threads: int, env: dict[str, str | None], extra: list[str] | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self._path = Path(self._tmp.name) / "volumes.npz"
        child_env = {k: v for k, v in os.environ.items() if k not in env}
        child_env.update({k: v for k, v in env.items() if v is not None})
        self._args = [sys.executable, "-m", self.module, probe, str(self._path), *(extra or []),
                      "--threads", str(threads)]
        self._child = subprocess.Popen(self._args, env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        self._ready = False

    def wait_ready(self) -> None:
        """Block until the child has imported everything (so it no longer competes for the CPU with timed
        work here; at once if it said so already); ``subprocess.CalledProcessError``, with its stderr, if it
        died instead."""
        while not self._ready:
            line = self._child.stdout.readline()
            if not line:
                self._failed("")
            self._ready = line.strip() == CHILD_READY

    def result(self, arrays: dict[str, np.ndarray]) -> dict:
        """Hand the child ``arrays``, wait for it and return the JSON document its last line prints."""
        self.wait_ready()
        np.savez(self._path, **arrays)
        try:
            out, err = self._child.communicate(input="go\n")
        finally:
            self._tmp.cleanup()
        if self._child.returncode != 0:
            self._failed(out, err)
        return json.loads(out.strip().splitlines()[-1])

    def _failed(self, out: str, err: str | None = None) -> NoReturn:
        if err is None:
            out, err = self._child.communicate()
        self._tmp.cleanup()
        raise subprocess.CalledProcessError(self._child.wait(), self._args, out, err)


CHILD_READY = "ready"
"""What a :class:`FreshProcess` child prints once its imports are done."""


def _await_volumes() -> bool:
    """The child side of :class:`FreshProcess`: say it is ready, then wait for the volumes (False: the parent
    went away without handing any)."""
    print(CHILD_READY, flush=True)
    return bool(sys.stdin.readline())


def s_probe_settings(quick: bool, default: Allocation) -> list[SProbe]:
    """Each :func:`s_budget_probe`, with the ``default`` allocation unless it says otherwise: the default path,
    MONAI's forward, Z-slabs under a smaller budget, the other choice of keeping freed memory, and without huge
    pages (``quick``: none; its fresh processes are :func:`private_probe`'s)."""
    settings = [SProbe(allocation=default), SProbe(fused=False, allocation=default),
                SProbe(budget_mb=S_SLAB_BUDGET_MB, allocation=default),
                SProbe(allocation=default._replace(keep_freed=not default.keep_freed)),
                SProbe(allocation=default._replace(huge_pages=False))]
    return [] if quick else settings


def private_probe_settings(quick: bool, default: Allocation) -> list[Allocation]:
    """The allocations of :func:`private_probe`'s fresh processes, in order: freed memory kept within a pass and
    the allocator as it comes, twice, alternating (the allocator rule pools each one's two processes), then the
    ``default`` without huge pages (``quick``: one process with the default allocation, for the headline's peak
    memory; each fresh process pays ~10 s of imports on 2 cores, and a one-repetition smoke run cannot judge the
    allocator)."""
    kept, as_it_comes = Allocation(keep_freed=True), Allocation(keep_freed=False)
    return [default] if quick else [kept, as_it_comes, kept, as_it_comes, default._replace(huge_pages=False)]


def _probe_s(path: Path, fused: bool) -> dict:
    """The child side of :func:`s_budget_probe`."""
    from mixdemo import inference
    from mixdemo.metrics import dice_per_class

    kept = keep_freed_memory()  # as load_model's fast path does ($MIXDEMO_KEEP_FREED_MEMORY=0 turns it off)
    data = np.load(path)
    target, truth = data["image"], data["labels"]
    try:
        base = load_model("baseline", fast=fused)
    except Exception:  # noqa: BLE001 - no weights: an untrained S of the same shape
        base = untrained_s(fused)
    padded = [n + (-n) % 16 for n in target.shape]
    slabs = inference.plan_slabs(padded, inference.activation_bytes_per_voxel(base), inference.memory_budget(torch.device("cpu")))[1]
    segment_proxies(base, target[None])  # warm-up
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    labels = hard_labels(segment_proxies(base, target[None])[0]).numpy()
    seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    dice = dice_per_class(np.where(target > 0, labels, 0), truth, [1, 2, 3])
    return {"slabs": slabs, "precision": str(base.compute_dtype).removeprefix("torch."),  # the reference: float32
            "huge_pages": huge_pages(), "keeps_freed_memory": kept, "seconds": round(seconds, 3),
            "minor_page_faults": faults, "dice_avg": round(float(np.mean(list(dice.values()))), 4),
            "peak_rss_mb": round(own_peak_rss_mb(), 1)}


def private_seconds(seg: torch.nn.Module, unmix: torch.nn.Module, key: MixKey, target: np.ndarray,
                    references: list[Reference]) -> tuple[float, float]:
    """(total seconds, client seconds) of one private segmentation: mix (Eq. 2/5), S, D with Eq. 6 as a
    running sum, labels (:func:`mixdemo.pipeline.unmix_learned_labels`: at K = 1 the arg-max of D's logits); the
    client keeps only what it needs (the proxies go once sent)."""
    t0 = time.perf_counter()
    proxies = make_proxies(target, references[: key.k], key)
    t_mix = time.perf_counter() - t0
    mixed = segment_proxies(seg, proxies)
    del proxies  # sent: the client no longer needs them
    t1 = time.perf_counter()
    ref_oh = reference_onehots(references[: key.k], torch.uint8, num_classes=mixed.shape[1])
    unmix_learned_labels(unmix, mixed, ref_oh, key.alphas, brain_mask=target > 0)
    t_unmix = time.perf_counter() - t1
    return time.perf_counter() - t0, t_mix + t_unmix


QUICK_CROP = 32
"""The side of the central cube of every ``--quick`` smoke run: this benchmark's, ``mixdemo.runtimes``' and
``training.evaluate``'s (its pipeline runs end to end; its figures are not the protocol's)."""

PROBE_REQUESTS = (10, 1, 10, 1, 1)
"""The K of each private request :func:`private_probe`'s fresh process serves, one after the other, as a
client would send them."""

QUICK_PROBE_REQUESTS = (10, 1)
"""``--quick``'s: one request of each K, as its other timings run once."""


def probe_requests(quick: bool) -> tuple[int, ...]:
    """The K of each request a :func:`private_probe` process serves in this mode."""
    return QUICK_PROBE_REQUESTS if quick else PROBE_REQUESTS

ALLOCATOR_RULE = (
    "set before the measurement: freed memory kept within each pass and handed back after it is the default "
    "if, against the allocator as it comes (fresh processes with huge pages serving the probe's requests, "
    "each allocation's processes pooled), K = 10 is at least 10 % faster, K = 1 at most 2 % slower, the peak "
    "RSS at most 4096 MB, and the resident size after the last request at most 10 % larger")


def pooled(rows: list[dict]) -> dict:
    """The probe rows of one allocation pooled: the median of all their K = 10 and K = 1 requests, the largest
    peak RSS and resident size after."""
    k10 = [t for r in rows for t in r["k10_runs"]]
    k1 = [t for r in rows for t in r["k1_runs"]]
    return {"seconds": statistics.median(k10), "k1_seconds": statistics.median(k1),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows), "rss_after_mb": max(r["rss_after_mb"] for r in rows),
            "processes": len(rows)}


def allocator_rule(rows: list[dict]) -> dict | None:
    """:data:`ALLOCATOR_RULE` checked on :func:`private_probe`'s rows with huge pages, each allocation's rows
    pooled (None without rows of both)."""
    kept_rows = [r for r in rows if r.get("keeps_freed_memory") and r.get("huge_pages")]
    plain_rows = [r for r in rows if not r.get("keeps_freed_memory") and r.get("huge_pages")]
    if not kept_rows or not plain_rows:
        return None
    kept, plain = pooled(kept_rows), pooled(plain_rows)
    checks = {
        "k10_at_least_10_percent_faster": kept["seconds"] <= 0.9 * plain["seconds"],
        "k1_at_most_2_percent_slower": kept["k1_seconds"] <= 1.02 * plain["k1_seconds"],
        "peak_rss_at_most_4096_mb": kept["peak_rss_mb"] <= 4096,
        "resident_after_at_most_10_percent_larger": kept["rss_after_mb"] <= 1.1 * plain["rss_after_mb"],
    }
    rounded = lambda d: {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}  # noqa: E731
    return {"rule": ALLOCATOR_RULE, "kept": rounded(kept), "as_it_comes": rounded(plain), **checks,
            "held": all(checks.values())}


def start_private_probe(threads: int, untrained: bool, allocation: Allocation = Allocation(),
                        quick: bool = False) -> FreshProcess:
    """The fresh process of one :func:`private_probe` with ``allocation``, started ahead of its volumes
    (``quick``: it serves :data:`QUICK_PROBE_REQUESTS`)."""
    extra = [*(["--untrained"] if untrained else []), *(["--quick"] if quick else [])]
    return FreshProcess("--probe-private", threads, allocation.env(), extra)


def private_probe(target: np.ndarray, refs: list[Reference], process: FreshProcess) -> dict:
    """A fresh process (its peak memory is its own, not the benchmark's; :func:`start_private_probe`) serves the
    private requests of :func:`probe_requests` (K = 10 with ``refs``, K = 1 with the first): the median seconds
    of each K, its peak RSS, its resident size after the last request, huge pages and kept memory as it saw them."""
    arrays = {"target": target, "images": np.stack([r.image for r in refs]), "labels": np.stack([r.labels for r in refs])}
    return {"k": len(refs), **process.result(arrays)}


def _probe_private(path: Path, untrained: bool, requests: Sequence[int] = PROBE_REQUESTS) -> dict:
    """The child side of :func:`private_probe`."""
    kept = keep_freed_memory()
    seg, unmix, _ = load_models(not untrained)
    data = np.load(path)
    refs = [Reference(f"ref{i}", image, labels) for i, (image, labels) in enumerate(zip(data["images"], data["labels"]))]
    seconds: dict[int, list[float]] = {}
    for k in requests:
        key = MixKey(tuple(r.ref_id for r in refs[:k]), (0.5,) * k)
        seconds.setdefault(k, []).append(private_seconds(seg, unmix, key, data["target"], refs[:k])[0])
    return {"huge_pages": huge_pages(), "keeps_freed_memory": kept, "seconds": round(statistics.median(seconds[10]), 3),
            "k1_seconds": round(statistics.median(seconds[1]), 3), "peak_rss_mb": round(own_peak_rss_mb(), 1),
            "rss_after_mb": round(own_rss_mb(), 1), "k10_runs": [round(t, 3) for t in seconds[10]],
            "k1_runs": [round(t, 3) for t in seconds[1]]}


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def own_rss_mb() -> float:
    """This process's resident size now (VmRSS; 0 where there is none)."""
    return _proc_status_mb("VmRSS") or 0.0


def own_peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM of /proc/self/status on Linux (``ru_maxrss`` of a child started by
    fork + exec also counts the parent's pages at the fork), else ``ru_maxrss``."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """This process's ``ru_maxrss`` in MB (the platform reports kilobytes, macOS bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def app_patch_seconds(k: int, reps: int) -> float | None:
    """The app's Segment tab in patch mode, end to end (mix, server, unmix, TTA, Dice, render), K references."""
    try:
        from mixdemo import examples, ui
    except ImportError:  # gradio absent: library-only install
        return None

    def quiet(*args, **kwargs) -> None:
        return None

    sess = ui.load_example(examples.example_names()[0], progress=quiet)[0]
    answer = lambda: ui.run_segmentation(sess, [], k, 0.4, False, "patch", 0.5, progress=quiet)  # noqa: E731
    answer()  # warm-up: the models load once per process
    return median_seconds(answer, reps)


TIMED_MODELS = ("segmentation", DEFAULT_UNMIXING, "baseline")
"""The model folders the benchmark times: S, the client's default D and the baseline."""


def load_models(use_trained: bool) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Trained S, D and baseline (``use_trained``; a WeightsError as it comes), else untrained ones of the same
    shapes (speed does not depend on the weights' values)."""
    if use_trained:
        return tuple(load_model(name) for name in TIMED_MODELS)  # type: ignore[return-value]
    return untrained_s(), untrained_d(), untrained_s()


def untrained_unless_weights(untrained: bool) -> bool:
    """Whether to time untrained models: asked (``--untrained``), or the trained weights are not there (a note says
    so, and the run is timed as ``--untrained`` throughout: its children too, and no Dice of untrained models
    recorded as the shipped ones'). Weights that are there but do not load (a checksum that does not match) are the
    caller's WeightsError, not timed untrained without a word."""
    from mixdemo.weights import WeightsNotFound, resolve_model_dir

    if untrained:
        return True
    try:
        for name in TIMED_MODELS:
            resolve_model_dir(name)
    except WeightsNotFound as exc:
        print(f"note: {exc} Timing untrained models of the same shapes (as --untrained).", file=sys.stderr)
        return True
    return False


UNTRAINED_D_DESIGN = {"patch": 2}
"""The default D's design (``weights/<DEFAULT_UNMIXING>/config.json``: its blocks on 2³ patches, the rest
:class:`UnmixingNet`'s defaults), for the untrained D that stands in for it (a test checks they agree)."""


def untrained_d(fast: bool = True) -> UnmixingNet:
    """An untrained D of the default D's design, channels-last, in float32 (:func:`d_in_each_precision` casts a copy;
    ``fast=False``: as ``load_model(..., fast=False)`` prepares one, its convolutions as trained)."""
    unmix = UnmixingNet(**UNTRAINED_D_DESIGN).eval()
    unmix.fused_patches = fast
    return unmix.use_channels_last() if fast else unmix


def untrained_s(fast: bool = True) -> SegmentationNet:
    """An untrained S of the shipped shape, as ``load_model`` prepares one (``fast=False``: MONAI's forward)."""
    seg = SegmentationNet().eval()
    return seg.use_channels_last().fuse_for_inference() if fast else seg


def central_cube(shape: Sequence[int], side: int) -> tuple[slice, slice, slice]:
    """Slices of the ``side``³ cube at the centre of a volume of ``shape``, each side at most the volume's."""
    sides = tuple(min(side, n) for n in shape)
    return patch_slices(corner_around([n // 2 for n in shape], shape, sides), sides)


def phantom_volumes(n: int, crop: int, distinct: bool = True) -> tuple[np.ndarray, list[Reference], np.ndarray]:
    """A target, ``n`` references and the target's labels rendered from the phantom generator (optionally the central
    ``crop``³ cube, each side at most the grid's).

    ``distinct=False`` renders two scans and shifts the second for the other references: the
    timings do not depend on the references' content, and it saves ~2.5 s per reference.
    """
    template = load_template()
    count = n + 1 if distinct else 2
    vols = [synthesize_scan(template, sample_subject(1000 + i), sample_scan(2000 + i)) for i in range(count)]
    while len(vols) < n + 1:
        shift = len(vols)
        vols.append((np.roll(vols[1][0], shift, axis=0), np.roll(vols[1][1], shift, axis=0)))
    if crop:
        sl = central_cube(GRID_SHAPE, crop)
        vols = [(img[sl].copy(), lab[sl].copy()) for img, lab in vols]
    target = vols[0][0]
    refs = [Reference(f"ref{i}", img, lab) for i, (img, lab) in enumerate(vols[1:])]
    return target, refs, vols[0][1]


def run(args: argparse.Namespace) -> dict:
    """Time every path and return the JSON document."""
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as load_model's fast path does (when asked for), trained weights or not
    threads = torch.get_num_threads()
    default_allocation = Allocation.default()
    private_allocations = private_probe_settings(args.quick, default_allocation)
    first_private = start_private_probe(threads, args.untrained, private_allocations[0], args.quick)  # imports meanwhile
    seg, unmix, base = load_models(not args.untrained)
    k_max = 10
    target, refs, target_labels = phantom_volumes(k_max, args.crop, distinct=not args.quick)
    first_private.wait_ready()  # idle from here on: nothing timed below shares the CPU with its imports
    key10 = MixKey(tuple(r.ref_id for r in refs), (0.5,) * k_max)
    key1 = MixKey(key10.reference_ids[:1], (0.5,))

    def private(key: MixKey, tgt: np.ndarray, references: list[Reference], d: torch.nn.Module = unmix) -> tuple[float, float]:
        return private_seconds(seg, d, key, tgt, references)

    reps = args.reps
    gemm_sizes = (1024, 2048) if args.quick else (1024, 2048, 4096)
    peak_start = matmul_peak_gflops(gemm_sizes)
    d_nets = shipped_ds(unmix) if not (args.untrained or args.quick) else {}
    d_precisions = d_in_each_precision(unmix, args.untrained)
    clients = {D_VARIANTS[0]: unmix, **d_nets,
               **{f"D in {p}": d for p, d in d_precisions.items() if d is not unmix}}
    base_times, k1_runs = interleaved_runs(lambda: hard_labels(segment_proxies(base, target[None])[0]),
                                           lambda name: private(key1, target, refs, clients[name]), list(clients), reps)
    baseline_s = round(statistics.median(base_times), 3)  # as recorded: every ratio below is of recorded seconds
    k1 = k1_runs[D_VARIANTS[0]]
    private_k1_s = round(statistics.median(t for t, _ in k1), 3)
    client_share = statistics.median(c / t for t, c in k1)
    k10_times, k10_ratios = bracketed_runs(lambda: private(key10, target, refs), lambda: private(key1, target, refs),
                                           max(1, reps - 1) if not args.quick else 1)
    private_k10_s = statistics.median(k10_times)
    sl = central_cube(target.shape, 32)  # all of a side under 32
    patch_refs = [Reference(r.ref_id, r.image[sl], r.labels[sl]) for r in refs]
    patch_k10_s = median_seconds(lambda: private(key10, target[sl], patch_refs), reps)

    cl_speedup = None if args.quick or not hasattr(seg, "use_channels_last") else channels_last_speedup(seg, 96, reps)
    app_patch_k3_s = None if args.quick else app_patch_seconds(3, reps)
    d_key, d_mixed = d_study_input(seg, target, refs[0])
    window_study = unmix_window_study(unmix, d_key, d_mixed, target, target_labels, refs[0])
    d_study = unmix_net_study(d_nets, d_key, d_mixed, target, target_labels, refs[0], reps)
    d_precision_rows = unmix_net_study(d_precisions, d_key, d_mixed, target, target_labels, refs[0], reps)
    d_width_rows = [] if args.quick else width_study(unmix, d_key, d_mixed, target, target_labels, refs[0], reps)
    del d_mixed
    precision_rows = precision_study(unmix, key1, target, target_labels, refs, reps, args.untrained)
    budget_study = [s_budget_probe(target, target_labels, threads, probe)
                    for probe in s_probe_settings(args.quick, default_allocation)]
    memory_study = [private_probe(target, refs, first_private)]
    memory_study += [private_probe(target, refs, start_private_probe(threads, args.untrained, allocation, args.quick))
                     for allocation in private_allocations[1:]]
    voxels = int(np.prod(target.shape))
    s_gflops = flops_per_voxel(seg) * voxels / baseline_s / 1e9
    peak_end = matmul_peak_gflops(gemm_sizes)
    peak = max(peak_start, peak_end)  # float32
    s_dtype = getattr(seg, "compute_dtype", torch.float32)  # S's throughput against peaks in its own precision
    s_peak = peak if s_dtype == torch.float32 else matmul_peak_gflops(gemm_sizes, dtype=s_dtype)
    peaks_by_dtype = {torch.float32: peak, s_dtype: s_peak}  # each D's arithmetic against the peak in its blocks' dtype
    conv_peak = conv_peak_gflops(dtype=s_dtype)
    for row in d_study:  # the headline figures again with each D as the client's network, and D's arithmetic
        d_net = d_nets[row["model"]]
        runs = k1_runs[row["model"]]
        row["private_k1_s"] = round(statistics.median(t for t, _ in runs), 3)
        row["privacy_tax"] = round(row["private_k1_s"] / baseline_s, 3)
        row["client_share"] = round(statistics.median(c / t for t, c in runs), 3)
        row["gflop"] = round(d_flops_per_voxel(d_net) * voxels / 1e9, 1)
        d_dtype = getattr(d_net, "compute_dtype", torch.float32)
        if d_dtype not in peaks_by_dtype:
            peaks_by_dtype[d_dtype] = matmul_peak_gflops(gemm_sizes, dtype=d_dtype)
        row["gemm_peak_dtype"] = str(d_dtype).removeprefix("torch.")
        row["seconds_at_gemm_peak"] = round(row["gflop"] / peaks_by_dtype[d_dtype], 3)
        row["privacy_tax_at_gemm_peak"] = round(1 + row["seconds_at_gemm_peak"] / baseline_s, 3)
    for row in d_precision_rows:  # the headline's K = 1 figures with D in each precision (interleaved with them)
        precision = row.pop("model")
        runs = k1_runs[D_VARIANTS[0] if d_precisions[precision] is unmix else f"D in {precision}"]
        row["precision"] = precision
        row["private_k1_s"] = round(statistics.median(t for t, _ in runs), 3)
        row["privacy_tax"] = round(row["private_k1_s"] / baseline_s, 3)
        row["client_share"] = round(statistics.median(c / t for t, c in runs), 3)
    cpu = cpu_description()
    s_precision = str(s_dtype).removeprefix("torch.")  # as timed: untrained models run in float32
    d_precision = str(getattr(unmix, "compute_dtype", torch.float32)).removeprefix("torch.")
    doc = {
        "command": " ".join(["python -m mixdemo.bench", *(shlex.quote(a) for a in sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu["model"],
        "cpu_features": cpu["features"],
        "device": "cpu",
        "trained_weights": not args.untrained,  # untrained: --untrained, or no weights here (untrained_unless_weights)
        "s_precision": s_precision,
        "unmixing_precision": d_precision,
        "keeps_freed_memory": keep_freed_memory(),
        "threads": torch.get_num_threads(),
        "volume_shape": list(target.shape),
        "reps": reps,
        "baseline_s": baseline_s,
        "private_k1_s": private_k1_s,
        "private_k10_s": round(private_k10_s, 3),
        "patch_k10_s": round(patch_k10_s, 3),
        "app_patch_k3_s": None if app_patch_k3_s is None else round(app_patch_k3_s, 3),
        "app_device": str(pick_device()),  # the app loads its networks there (CUDA when present), the rest on the CPU
        "privacy_tax": round(private_k1_s / baseline_s, 3),
        "tta10_over_k1": round(statistics.median(k10_ratios), 3),
        "client_share": round(client_share, 3),
        "s_gflops": round(s_gflops, 1),
        "matmul_peak_gflops": round(s_peak, 1),
        "flop_efficiency": round(s_gflops / s_peak, 3),
        "peak_dtype": str(s_dtype).removeprefix("torch."),
        "matmul_peak_gflops_float32": round(peak, 1),
        "conv_peak_gflops": round(conv_peak, 1),
        "s_over_conv_peak": round(s_gflops / conv_peak, 3),
        "peak_rss_mb": max(r["peak_rss_mb"] for r, allocation in zip(memory_study, private_allocations)
                           if allocation == default_allocation),  # as asked: a kernel may grant no huge pages
        "levers": {
            "s_channels_last_speedup": None if cl_speedup is None else round(cl_speedup, 3),
            "unmix_windows": window_study,
            "unmix_windows_note": "D on the whole volume (default) vs 32³ windows (skipping those without brain), K = 1, α = 0.5",
            "unmix_nets": d_study,
            "unmix_nets_note": f"each shipped D on the whole volume, K = 1, α = 0.5 ('{DEFAULT_UNMIXING}' is the default), "
                               "and the private K = 1 run, privacy tax and client share with it as the client's D; gflop: D's "
                               "arithmetic on the volume, and the seconds and privacy tax if D ran at the GEMM peak in its blocks' "
                               "precision (gemm_peak_dtype; records without it: the float32 peak) with S as measured",
            "s_precision": precision_rows,
            "s_precision_note": "S and the baseline in float32 and in bfloat16 ($MIXDEMO_PRECISION; the headline's is "
                                f"{s_precision}), the same D, K = 1, α = 0.5: seconds (interleaved), privacy tax, "
                                "client share, and brain-masked Dice of the baseline's and the private run's labels on "
                                "the benchmark's volume; bfloat16_native: whether this CPU has bfloat16 instructions "
                                "(without them bfloat16 is emulated, slowly, and only float32 is measured)",
            "bfloat16_native": native_bfloat16(),
            "d_precision": sorted(d_precision_rows, key=lambda r: r["precision"] != "float32"),
            "d_precision_note": "the client's D with its four blocks in float32 and in bfloat16 "
                                f"($MIXDEMO_UNMIXING_PRECISION; the headline's is {d_precision}), the same "
                                "S, K = 1, α = 0.5: D's seconds and brain-masked Dice on the D levers' mix, and the "
                                "private K = 1 run's seconds (interleaved with the headline's), privacy tax and client "
                                "share with it; measured where the CPU has native bfloat16",
            **({"d_widths": d_width_rows,
                "d_widths_note": "untrained Ds of the default D's design and precision at two widths of its two "
                                 "levels (the default's, then half): GFLOP on the volume and median seconds on the D "
                                 "levers' mix (K = 1, α = 0.5), as the client runs them; no Dice (untrained)"}
               if d_width_rows else {}),
            "private_k10_memory": memory_study,
            "private_k10_memory_note": "a fresh process serves private requests on the whole target (mix, S, D with "
                                       "Eq. 6 as a running sum, labels) with K = "
                                       f"{', '.join(map(str, probe_requests(args.quick)))} "
                                       "in turn: the median seconds at K = 10 "
                                       "(seconds) and K = 1 (k1_seconds), each request's seconds (k10_runs, k1_runs), its "
                                       "peak RSS (the headline peak_rss_mb is the largest of the default allocation's) and "
                                       "its resident size after the last request; two processes each, alternating, with "
                                       "freed memory kept within each pass and handed back after it "
                                       "(MIXDEMO_KEEP_FREED_MEMORY=1) and with the allocator as it comes "
                                       "(MIXDEMO_KEEP_FREED_MEMORY=0), then one with the default allocation without huge pages "
                                       "(THP_MEM_ALLOC_ENABLE=0); "
                                       "--quick: one process with the default allocation",
            "allocator_rule": allocator_rule(memory_study),
            "s_memory_budget": budget_study,
            "s_memory_budget_note": "baseline S on the target in a fresh process: fused (default) and MONAI's forward "
                                    f"(reference) in one pass, fused with MIXDEMO_S_MEMORY_MB={S_SLAB_BUDGET_MB} "
                                    "(Z-slabs), each with this CPU's default allocation (keeps_freed_memory), then fused with the "
                                    "other choice of MIXDEMO_KEEP_FREED_MEMORY and fused without huge pages "
                                    "(THP_MEM_ALLOC_ENABLE=0); peak RSS of that process and the "
                                    "minor page faults of the timed pass; precision: S's (the fused S's is "
                                    "$MIXDEMO_PRECISION's, MONAI's forward runs in float32)",
        },
        "host": {
            "matmul_peak_gflops_start_end": [round(peak_start, 1), round(peak_end, 1)],
            "baseline_s_min_max": [round(min(base_times), 3), round(max(base_times), 3)],
            "private_k1_s_min_max": [round(min(t for t, _ in k1), 3), round(max(t for t, _ in k1), 3)],
            "tta10_over_k1_runs": [round(r, 3) for r in k10_ratios],
            "peak_rss_mb_whole_run": round(ru_maxrss_mb(), 1),
            "note": "the GEMM peak at the start and the end of the run, and the spread of the interleaved K = 1 "
                    "repetitions: a wide spread means a noisy host (the headline figures are medians); "
                    "tta10_over_k1: each K = 10 run over the mean of the K = 1 runs just before and after it",
        },
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=out_file, default=Path("results/bench.json"))
    p.add_argument("--reps", type=count(1), default=3)
    p.add_argument("--threads", type=count(0), default=0, help="torch threads (0: torch's default)")
    p.add_argument("--crop", type=count(0), default=0,
                   help="time a central cube of this side instead of the whole grid (each side at most the grid's)")
    p.add_argument("--untrained", action="store_true", help="time untrained models of the shipped shapes")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_CROP}³ cube, 1 repetition, fewer levers")
    p.add_argument("--probe-s", type=Path, default=None, help=argparse.SUPPRESS)  # child of s_budget_probe
    p.add_argument("--probe-unfused", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--probe-private", type=Path, default=None, help=argparse.SUPPRESS)  # child of private_probe
    args = p.parse_args(argv)
    check_setting_variables()  # a bad precision, allocator switch or memory budget: refused before any timing
    if args.probe_private is not None or args.probe_s is not None:  # a child of FreshProcess
        if not _await_volumes():
            return {}
        if args.threads:
            torch.set_num_threads(args.threads)
        result = (_probe_private(args.probe_private, args.untrained, probe_requests(args.quick))
                  if args.probe_private is not None
                  else _probe_s(args.probe_s, fused=not args.probe_unfused))
        print(json.dumps(result))
        return result
    if args.quick:
        args.crop, args.reps = args.crop or QUICK_CROP, 1
    from mixdemo.weights import WeightsError

    try:
        args.untrained = untrained_unless_weights(args.untrained)
        doc = run(args)
    except WeightsError as exc:  # weights there that do not load: said, not timed untrained
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
