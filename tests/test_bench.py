"""The benchmark's --quick mode runs and writes every key (no timing is asserted)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO

KEYS = {"command", "cpu", "threads", "baseline_s", "private_k1_s", "private_k10_s", "patch_k10_s", "privacy_tax",
        "tta10_over_k1", "client_share", "s_gflops", "matmul_peak_gflops", "flop_efficiency", "peak_rss_mb"}


@pytest.mark.slow
def test_quick_bench_writes_results(tmp_path):
    from mixdemo import bench

    out = tmp_path / "bench.json"
    bench.main(["--quick", "--out", str(out), "--untrained"])
    doc = json.loads(out.read_text())
    assert KEYS <= set(doc) and doc["trained_weights"] is False
    assert doc["volume_shape"] == [bench.QUICK_CROP] * 3
    assert doc["privacy_tax"] == pytest.approx(doc["private_k1_s"] / doc["baseline_s"], rel=0.01)
    assert 0 < doc["client_share"] < 1 and doc["flop_efficiency"] > 0
    fresh = doc["levers"]["private_k10_memory"]  # the headline peak: a fresh process serving K = 10 and 1
    assert [r["k"] for r in fresh] == [10]  # one process, with the default allocation
    assert [r["keeps_freed_memory"] for r in fresh] == [doc["keeps_freed_memory"]]
    default = [r for r in fresh if r["keeps_freed_memory"] == doc["keeps_freed_memory"]]
    assert max(r["peak_rss_mb"] for r in default) == doc["peak_rss_mb"] > 0
    assert all(len(r["k10_runs"]) == 1 and len(r["k1_runs"]) == 1 for r in fresh)  # QUICK_PROBE_REQUESTS: one of each
    assert all(r["seconds"] > 0 and r["k1_seconds"] > 0 and 0 < r["rss_after_mb"] <= r["peak_rss_mb"] for r in fresh)
    assert doc["levers"]["allocator_rule"] is None  # one process: no allocation to weigh the default against
    rows = doc["levers"]["s_precision"]  # S and the baseline in each precision, the same D
    native = doc["levers"]["bfloat16_native"]  # emulated bfloat16 is not measured (hours on the whole volume)
    assert [r["precision"] for r in rows] == (["float32", "bfloat16"] if native else ["float32"])
    assert all(r["privacy_tax"] == pytest.approx(r["private_k1_s"] / r["baseline_s"], rel=0.01) for r in rows)
    assert all(0 <= r["baseline_dice_avg"] <= 1 and 0 <= r["private_k1_dice_avg"] <= 1 for r in rows)
    assert isinstance(doc["levers"]["bfloat16_native"], bool)
    d_rows = doc["levers"]["d_precision"]  # the client's D in each precision, the same S (native bfloat16 only)
    assert [r["precision"] for r in d_rows] == (["float32", "bfloat16"] if doc["levers"]["bfloat16_native"] else [])
    assert all(r["privacy_tax"] == pytest.approx(r["private_k1_s"] / doc["baseline_s"], rel=0.01) for r in d_rows)
    assert all(0 < r["client_share"] < 1 and 0 <= r["dice_avg"] <= 1 and r["seconds"] > 0 for r in d_rows)
    assert doc["unmixing_precision"] in ("float32", "bfloat16")
    assert isinstance(doc["cpu"], str) and doc["cpu"] and isinstance(doc["cpu_features"], list)


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 sha_ni
power management:

processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 sha_ni
"""


def test_cpu_description_names_the_model_and_the_instruction_sets_that_set_the_speed():
    from mixdemo.bench import cpu_description

    assert cpu_description(CPUINFO) == {"model": "AMD EPYC 9R14 96-Core Processor",
                                        "features": ["AVX2", "AVX-512", "AVX512-BF16"]}
    avx2_only = CPUINFO.replace(" avx512f avx512bw avx512_bf16", "")
    assert cpu_description(avx2_only)["features"] == ["AVX2"]
    assert cpu_description("")["model"]  # no /proc/cpuinfo: the platform's name, no features
    assert cpu_description("")["features"] == []


def test_flops_per_voxel_counts_the_convolutions():
    from mixdemo.bench import flops_per_voxel
    from mixdemo.models import SegmentationNet

    small = flops_per_voxel(SegmentationNet(features=(4, 4, 8, 8, 16, 4)))
    big = flops_per_voxel(SegmentationNet(features=(8, 8, 16, 16, 32, 8)))
    assert 0 < small < big  # doubling the widths roughly quadruples the FLOPs
    assert 3 < big / small < 5


def test_flops_of_the_cpu_fast_path_count_its_onednn_convolutions():
    """S and D prepared as load_model prepares them on the CPU (their convolutions sent to
    aten.mkldnn_convolution) count the FLOPs of the same modules on PyTorch's own convolutions."""
    import copy

    from mixdemo.bench import d_flops_per_voxel, flops_per_voxel
    from mixdemo.models import SegmentationNet, UnmixingNet

    seg = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval()
    fast_seg = copy.deepcopy(seg).use_channels_last()
    assert flops_per_voxel(fast_seg) == pytest.approx(flops_per_voxel(seg), rel=1e-6) and flops_per_voxel(seg) > 0
    unmix = UnmixingNet().eval()
    fast_unmix = copy.deepcopy(unmix).use_channels_last()
    # D's fast path runs a few of its products as batched matrix products (aten.bmm), a little more arithmetic
    assert d_flops_per_voxel(unmix) <= d_flops_per_voxel(fast_unmix) < 1.1 * d_flops_per_voxel(unmix)


def test_d_flops_per_voxel_counts_the_patch_ds_smaller_arithmetic():
    """D on 2³ patches runs its blocks on an eighth of the voxels: several times fewer FLOPs per voxel
    than the full-resolution D (the bench's floor under each D's time, ``seconds_at_gemm_peak``)."""
    from mixdemo.bench import d_flops_per_voxel
    from mixdemo.models import UnmixingNet

    full, patches = d_flops_per_voxel(UnmixingNet().eval()), d_flops_per_voxel(UnmixingNet(patch=2).eval())
    assert 0 < patches < full
    assert 5 < full / patches < 10


def test_interleaved_runs_alternate_paths_and_rotate_their_order():
    """Each repetition times the baseline and every client network once, in an order shifted by one per
    repetition, after one warm-up of each; the result keeps each path's own timings."""
    from mixdemo.bench import interleaved_runs

    calls: list[str] = []

    def private(name: str) -> tuple[float, float]:
        calls.append(name)
        return float(len(calls)), 0.1

    base, runs = interleaved_runs(lambda: calls.append("base"), private, ["d1", "d2"], reps=3)
    assert calls[:3] == ["base", "d1", "d2"]  # warm-up, untimed
    assert calls[3:] == ["base", "d1", "d2", "d1", "d2", "base", "d2", "base", "d1"]
    assert len(base) == 3 and all(t >= 0 for t in base)
    assert [t for t, _ in runs["d1"]] == [5.0, 7.0, 12.0] and [t for t, _ in runs["d2"]] == [6.0, 8.0, 10.0]


def test_report_quotes_the_hosts_spread_when_the_bench_recorded_it():
    """The README's performance paragraph says how noisy the run was (interleaved repetitions' range, GEMM
    peak at start and end) when bench.json has it, and stays as it was for an older bench.json."""
    from pathlib import Path

    from training.report import bench_md

    doc = json.loads((Path(__file__).resolve().parents[1] / "results" / "bench.json").read_text())
    doc.pop("host", None)
    assert "interleaved" not in bench_md(doc)
    doc["host"] = {"matmul_peak_gflops_start_end": [300.0, 250.0], "baseline_s_min_max": [7.0, 9.5],
                   "private_k1_s_min_max": [10.0, 12.0]}
    text = bench_md(doc)
    assert "7.0–9.5 s" in text and "10.0–12.0 s" in text and "300 GFLOP/s at the start, 250 at the end" in text
    assert "just before and after" not in text
    doc["host"]["tta10_over_k1_runs"] = [9.81]
    assert "just before and after it (9.81)" in bench_md(doc)


def test_bracketed_runs_divide_each_long_run_by_the_short_runs_around_it(monkeypatch):
    """short, long, short per repetition; the ratio uses the two short runs around each long one, so a
    host that slows down between repetitions does not move it."""
    from mixdemo import bench
    from mixdemo.bench import bracketed_runs

    clock = iter([0.0, 1.0, 1.0, 11.0, 11.0, 12.0,      # rep 1: short 1 s, long 10 s, short 1 s
                  20.0, 22.0, 22.0, 42.0, 42.0, 44.0])  # rep 2, host twice as slow: 2 s, 20 s, 2 s
    calls: list[str] = []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    longs, ratios = bracketed_runs(lambda: calls.append("long"), lambda: calls.append("short"), reps=2)
    assert calls == ["short", "long", "short"] * 2
    assert longs == [10.0, 20.0] and ratios == [10.0, 10.0]


def test_channels_last_speedup_times_both_layouts_of_a_copy():
    """The lever compares S's two layouts on copies: the model passed in keeps its own layout."""
    from mixdemo.bench import channels_last_speedup
    from mixdemo.models import SegmentationNet

    seg = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval()
    assert isinstance(channels_last_speedup(seg, 16, 1), float)
    assert not getattr(seg, "channels_last", False)


def test_s_probe_child_reports_time_faults_memory_and_dice(tmp_path, monkeypatch):
    """The child side of the benchmark's fresh-process S probe (which --quick skips), run in this process on a
    small volume with an untrained S when no weights are found."""
    import numpy as np

    from mixdemo import bench

    monkeypatch.setattr(bench, "load_model", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("no weights")))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (32, 32, 32)).astype(np.uint8)
    path = tmp_path / "volume.npz"
    np.savez(path, image=(labels / 3).astype(np.float32), labels=labels)
    row = bench._probe_s(path, fused=True)
    assert row["slabs"] == 1 and "seconds" in row and row["peak_rss_mb"] > 0
    assert row["minor_page_faults"] >= 0 and 0 <= row["dice_avg"] <= 1
    assert isinstance(row["keeps_freed_memory"], bool) and isinstance(row["huge_pages"], bool)
    assert row["precision"] == "float32"  # the untrained S's: MONAI's forward (the reference path) always is


def test_s_probe_rows_say_the_precision_s_ran_in(tmp_path, monkeypatch):
    """The fused S runs in ``$MIXDEMO_PRECISION`` (bfloat16 where the CPU has it), MONAI's forward (the reference path)
    in float32: each row says which, since their peak memory and time differ by the precision too."""
    import numpy as np

    from mixdemo import bench

    monkeypatch.setattr(bench, "load_model", lambda name, fast=True: bench.untrained_s(fast).use_bfloat16() if fast
                        else bench.untrained_s(fast))
    labels = np.zeros((16, 16, 16), np.uint8)
    np.savez(tmp_path / "volume.npz", image=labels.astype(np.float32), labels=labels)
    assert bench._probe_s(tmp_path / "volume.npz", fused=True)["precision"] == "bfloat16"
    assert bench._probe_s(tmp_path / "volume.npz", fused=False)["precision"] == "float32"


def test_report_names_each_s_memory_rows_precision_when_the_record_has_it():
    from pathlib import Path

    from training.report import bench_md

    doc = json.loads((Path(__file__).resolve().parents[1] / "results" / "bench.json").read_text())
    before = bench_md(doc)  # a record from before the field: its rows as they were
    assert "S (baseline), fused, default budget" in before and " in bfloat16, default budget" not in before
    rows = doc["levers"]["s_memory_budget"]
    for row in rows:
        row["precision"] = "bfloat16" if row["path"] == "fused" else "float32"
    text = bench_md(doc)
    assert "| lever (on: the default): S (baseline), fused in bfloat16, default budget" in text
    assert "| lever (off): S (baseline), reference (MONAI forward) in float32, default budget" in text


def test_a_fresh_process_that_dies_before_it_is_ready_raises_with_its_stderr(monkeypatch):
    """A probe child that fails while starting (here: a module that is not there, which fails in a fraction of
    the benchmark's imports) raises at once with what it said, instead of leaving the benchmark waiting for a
    "ready" that never comes."""
    import subprocess

    from mixdemo.bench import FreshProcess

    monkeypatch.setattr(FreshProcess, "module", "mixdemo.no_such_probe")
    process = FreshProcess("--probe-private", 1, {})
    with pytest.raises(subprocess.CalledProcessError) as failure:
        process.result({})
    assert failure.value.returncode != 0 and "mixdemo.no_such_probe" in failure.value.stderr


def test_a_probe_child_says_ready_and_measures_nothing_if_its_parent_goes_away(tmp_path, monkeypatch, capsys):
    """The child side of FreshProcess: it prints "ready" and waits on stdin; at end of input (its parent gone)
    it returns without reading any volumes; given a line, it goes on."""
    import io

    from mixdemo import bench

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert bench.main(["--probe-private", str(tmp_path / "never-written.npz")]) == {}
    assert capsys.readouterr().out.splitlines() == [bench.CHILD_READY]
    monkeypatch.setattr("sys.stdin", io.StringIO("go\n"))
    assert bench._await_volumes() and capsys.readouterr().out.splitlines() == [bench.CHILD_READY]


def test_probes_compare_each_allocation_with_the_default_and_quick_runs_only_the_default():
    """The full bench runs S with the default allocation (huge pages; freed memory kept within a pass where S runs in
    bfloat16), with the other choice of keeping freed memory and without huge pages, and the private requests in
    two processes of each of kept and as it comes, alternating, then one of the default without huge pages;
    --quick runs no S probe and one private process with the default allocation."""
    from mixdemo.bench import Allocation, SProbe, private_probe_settings, s_probe_settings
    from mixdemo.inference import HUGE_PAGES_ENV, KEEP_FREED_ENV

    assert Allocation().env() == {HUGE_PAGES_ENV: "1", KEEP_FREED_ENV: "1"}
    assert Allocation(huge_pages=False, keep_freed=False).env() == {HUGE_PAGES_ENV: "0", KEEP_FREED_ENV: "0"}
    kept, as_it_comes = Allocation(), Allocation(keep_freed=False)
    for default, other in [(kept, as_it_comes), (as_it_comes, kept)]:
        full = s_probe_settings(False, default)
        assert full[0] == SProbe(allocation=default) and len(set(full)) == len(full)
        assert [p.allocation for p in full] == [default, default, default, other, default._replace(huge_pages=False)]
        assert private_probe_settings(False, default) == [kept, as_it_comes, kept, as_it_comes,
                                                          default._replace(huge_pages=False)]
        assert s_probe_settings(True, default) == [] and private_probe_settings(True, default) == [default]


def test_the_default_allocation_keeps_freed_memory_where_s_runs_in_bfloat16(monkeypatch):
    """Unset or auto: freed memory kept where S runs in bfloat16 (the allocator rule held there), the allocator as it
    comes where S runs in float32 (it did not); 1 and 0 whatever the precision."""
    from mixdemo import inference
    from mixdemo.bench import Allocation
    from mixdemo.weights import PRECISION_ENV

    for precision, kept in [("bfloat16", True), ("float32", False), ("no-such-precision", False)]:
        monkeypatch.setenv(PRECISION_ENV, precision)
        for choice in (None, "auto"):
            if choice is None:
                monkeypatch.delenv(inference.KEEP_FREED_ENV, raising=False)
            else:
                monkeypatch.setenv(inference.KEEP_FREED_ENV, choice)
            assert inference.freed_memory_kept_by_choice() is kept, (precision, choice)
            assert Allocation.default() == Allocation(keep_freed=kept)
        for choice, chosen in [("1", True), ("0", False)]:
            monkeypatch.setenv(inference.KEEP_FREED_ENV, choice)
            assert inference.freed_memory_kept_by_choice() is chosen


def test_the_default_allocation_leaves_the_allocator_alone_where_s_runs_on_a_gpu(monkeypatch):
    """Unset or auto on a machine with a CUDA GPU, where S runs (pick_device): the allocator as it comes, whatever the
    host CPU's bfloat16 (the segmentation steps' reusing_freed_memory applied the CPU rule there, although load_model
    keeps it for models on the CPU); 1 still keeps freed memory."""
    import torch

    from mixdemo import inference
    from mixdemo.weights import PRECISION_ENV

    monkeypatch.setenv(PRECISION_ENV, "bfloat16")  # what auto gives on a host CPU with bfloat16 instructions
    monkeypatch.delenv(inference.KEEP_FREED_ENV, raising=False)
    assert inference.freed_memory_kept_by_choice() is True  # no GPU: the CPU rule
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert inference.freed_memory_kept_by_choice() is False
    monkeypatch.setenv(inference.KEEP_FREED_ENV, "1")
    assert inference.freed_memory_kept_by_choice() is True


def test_report_names_each_rows_allocation_and_which_is_the_default():
    """Runs that record their default name it; in older ones a row with huge pages and the allocator as it
    comes is the default, runs without a huge_pages field had freed memory kept as theirs, and rows from before
    the allocator lever name none."""
    from training.report import allocation

    assert allocation({"huge_pages": True, "keeps_freed_memory": False}) == ("huge pages, allocator as it comes", True)
    assert allocation({"huge_pages": True, "keeps_freed_memory": True})[1] is False
    no_huge_pages = {"huge_pages": False, "keeps_freed_memory": False}
    assert allocation(no_huge_pages) == ("no huge pages, allocator as it comes", False)
    assert allocation({"keeps_freed_memory": True}) == ("allocator keeps freed memory", True)
    assert allocation({}) == ("", True)
    # runs that record their default (freed memory kept within a pass, handed back after it)
    kept, plain = {"huge_pages": True, "keeps_freed_memory": True}, {"huge_pages": True, "keeps_freed_memory": False}
    assert allocation(kept, True) == ("huge pages, allocator keeps freed memory within a pass, hands it back after", True)
    assert allocation(plain, True) == ("huge pages, allocator as it comes", False)
    assert allocation(plain, False)[1] is True and allocation(kept, False)[1] is False


def test_report_bounds_patch_mode_by_s_and_ds_arithmetic_at_the_convolution_peak():
    from mixdemo.weights import DEFAULT_UNMIXING
    from training.report import patch_floor

    doc = {"s_gflops": 100.0, "baseline_s": 10.0, "volume_shape": [64, 64, 64], "conv_peak_gflops": 125.0,
           "levers": {"unmix_nets": [{"model": "unmixing-p4", "gflop": 1.0}, {"model": DEFAULT_UNMIXING, "gflop": 1000.0}]}}
    # (1000 GFLOP of S + 1000 of D) / 64³ voxels × 10 proxies of 32³ = 2000 × 10 / 8 = 2500 GFLOP; / 125 = 20 s
    assert patch_floor(doc) == " (S's and D's arithmetic: 2500 GFLOP, 20.00 s at the convolution peak below)"
    assert patch_floor({k: v for k, v in doc.items() if k != "conv_peak_gflops"}) == ""  # older runs: no figure


def test_allocator_rule_holds_only_when_every_criterion_does():
    """The rule compares the kept-memory row with the allocator-as-it-comes row (huge pages both): K = 10 at
    least 10 % faster, K = 1 at most 2 % slower, peak ≤ 4096 MB, resident after ≤ 1.1 ×; one miss and it fails."""
    from mixdemo.bench import allocator_rule

    plain = {"huge_pages": True, "keeps_freed_memory": False, "k10_runs": [40.0], "k1_runs": [3.0],
             "peak_rss_mb": 2500.0, "rss_after_mb": 900.0}
    kept = {**plain, "keeps_freed_memory": True, "k10_runs": [35.9], "k1_runs": [3.06], "peak_rss_mb": 4000.0,
            "rss_after_mb": 990.0}
    no_huge = {**plain, "huge_pages": False, "k10_runs": [60.0]}
    assert allocator_rule([kept, plain, no_huge])["held"] is True
    for key, value in [("k10_runs", [36.1]), ("k1_runs", [3.07]), ("peak_rss_mb", 4097.0), ("rss_after_mb", 991.0)]:
        assert allocator_rule([{**kept, key: value}, plain])["held"] is False, key
    assert allocator_rule([kept, no_huge]) is None  # no allocator-as-it-comes row with huge pages


def test_allocator_rule_pools_each_allocations_processes():
    """Two processes per allocation: the medians of all their requests, the larger peak and resident size."""
    from mixdemo.bench import allocator_rule

    def row(kept: bool, k10: list[float], k1: list[float], peak: float, after: float) -> dict:
        return {"huge_pages": True, "keeps_freed_memory": kept, "seconds": 0.0, "k1_seconds": 0.0,
                "k10_runs": k10, "k1_runs": k1, "peak_rss_mb": peak, "rss_after_mb": after}

    rule = allocator_rule([row(True, [30.0, 50.0], [2.0, 3.0, 9.0], 3000.0, 800.0),
                           row(False, [40.0, 44.0], [3.0, 3.0, 3.0], 2400.0, 790.0),
                           row(True, [31.0, 32.0], [2.9, 3.0, 3.0], 4000.0, 870.0),
                           row(False, [41.0, 43.0], [3.0, 3.1, 3.0], 2500.0, 800.0)])
    assert rule["kept"] == {"seconds": 31.5, "k1_seconds": 3.0, "peak_rss_mb": 4000.0, "rss_after_mb": 870.0,
                            "processes": 2}
    assert rule["as_it_comes"]["seconds"] == 42.0 and rule["as_it_comes"]["rss_after_mb"] == 800.0
    assert rule["held"] is True  # 31.5 ≤ 0.9 × 42; 3.0 ≤ 1.02 × 3.0; 4000 ≤ 4096; 870 ≤ 1.1 × 800


def test_report_puts_each_cpus_headline_figures_side_by_side_against_the_targets():
    """One column per benchmark record, named by its CPU and precisions; each figure with a target says met or
    missed by that target's own test, and a record without a figure shows a dash."""
    from training.report import bench_cpus_md, cpu_md

    fast = {"cpu": "CPU A", "cpu_features": ["AVX2", "AVX-512", "AVX512-BF16"], "s_precision": "bfloat16",
            "unmixing_precision": "bfloat16", "date": "2026-12-01", "baseline_s": 5.0, "private_k1_s": 5.2,
            "private_k10_s": 52.0, "patch_k10_s": 0.4, "privacy_tax": 1.04, "tta10_over_k1": 10.2,
            "client_share": 0.09, "flop_efficiency": 0.66, "peak_rss_mb": 2900.0}
    slow = {**fast, "cpu": "CPU B", "cpu_features": ["AVX2"], "s_precision": "float32", "unmixing_precision": "float32",
            "private_k1_s": 21.0, "tta10_over_k1": 9.5, "patch_k10_s": None}
    lines = bench_cpus_md([fast, slow]).splitlines()
    assert "CPU A (AVX2, AVX-512, AVX512-BF16; with bfloat16 instructions): S and D in bfloat16" in lines[0]
    assert "CPU B (AVX2; without bfloat16 instructions): S and D in float32" in lines[0]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines[2:]}
    assert rows["private, K = 1"] == ["≤ 20 s", "5.2 s (met)", "21.0 s (**missed**) |"]
    assert rows["K = 10 over K = 1"] == ["≤ 10", "10.20 (**missed**)", "9.50 (met) |"]
    assert rows["patch mode (32³), K = 10"][2] == "— |"
    assert rows["baseline whole brain"] == ["", "5.0 s", "5.0 s |"]  # no target
    assert cpu_md({"cpu": "x86_64", "levers": {"bfloat16_native": True}}) == "x86_64 (with bfloat16 instructions)"
    assert cpu_md({"cpu": "x86_64"}) == "x86_64"  # older records say neither


def _stand_in_run(monkeypatch, tmp_path, s_dtype, huge_pages: bool = True, shape: tuple[int, ...] = (10, 10, 10),
                  timed_shapes: list | None = None) -> dict:
    """``bench.run`` with every measurement a stand-in of known figures (nothing is timed): S in ``s_dtype``, the
    default D (in bfloat16), one other shipped D and the default D's float32 twin, on a target of ``shape``; the fresh
    processes report ``huge_pages`` as they saw them; ``timed_shapes``: the target and reference shapes of each
    private run the patch-mode figure times."""
    import argparse
    import types

    import numpy as np
    import torch

    from mixdemo import bench
    from mixdemo.weights import DEFAULT_UNMIXING

    seg = types.SimpleNamespace(compute_dtype=s_dtype)  # no use_channels_last: no layout lever
    default_d = types.SimpleNamespace(compute_dtype=torch.bfloat16)  # the default D's blocks run in bfloat16
    other_d, float32_d = types.SimpleNamespace(), types.SimpleNamespace()

    def volumes(n: int, crop: int, distinct: bool = True):
        refs = [bench.Reference(f"ref{i}", np.zeros(shape, np.float32), np.zeros(shape, np.uint8)) for i in range(n)]
        return np.zeros(shape, np.float32), refs, np.zeros(shape, np.uint8)

    def interleaved(baseline, private, names, reps):
        assert names == [DEFAULT_UNMIXING, "unmixing-p4", "D in float32"]
        return [10.0, 12.0, 30.0], {DEFAULT_UNMIXING: [(13.0, 1.0), (15.0, 3.0), (40.0, 2.0)],
                                    "unmixing-p4": [(11.0, 0.5), (14.0, 0.7), (20.0, 2.0)],
                                    "D in float32": [(16.0, 4.0), (18.0, 3.6), (19.0, 1.0)]}

    def private_seconds(seg, d, key, target, refs):
        if timed_shapes is not None:
            timed_shapes.append([target.shape, *(r.image.shape for r in refs)])
        return 1.0, 0.1

    float32_peaks = iter([150.0, 200.0])  # the GEMM peak at the start and at the end of the run

    def matmul_peak(sizes, reps=3, dtype=torch.float32):
        return 400.0 if dtype == torch.bfloat16 else next(float32_peaks)

    peaks = iter([3000.0, 5000.0, 3500.0, 2000.0, 9000.0])  # each fresh process's, in private_probe_settings' order

    def probe(target, refs, process):
        allocation = process.allocation
        return {"k": len(refs), "huge_pages": huge_pages and allocation.huge_pages,
                "keeps_freed_memory": allocation.keep_freed, "seconds": 1.0, "k1_seconds": 0.1,
                "peak_rss_mb": next(peaks), "rss_after_mb": 900.0, "k10_runs": [1.0], "k1_runs": [0.1]}

    stand_ins = {
        "keep_freed_memory": lambda: True, "freed_memory_kept_by_choice": lambda: True,
        "start_private_probe": lambda threads, untrained, allocation, quick: types.SimpleNamespace(
            allocation=allocation, wait_ready=lambda: None),
        "private_probe": probe, "load_models": lambda trained: (seg, default_d, "the baseline"),
        "phantom_volumes": volumes, "matmul_peak_gflops": matmul_peak,
        "shipped_ds": lambda unmix: {DEFAULT_UNMIXING: unmix, "unmixing-p4": other_d},
        "d_in_each_precision": lambda unmix, untrained: {"bfloat16": unmix, "float32": float32_d},
        "interleaved_runs": interleaved, "private_seconds": private_seconds,
        "bracketed_runs": lambda long, short, reps: ([100.0, 130.0, 400.0], [9.0, 10.0, 14.0]),
        "median_seconds": lambda fn, reps: (fn(), 0.5)[1], "app_patch_seconds": lambda k, reps: 0.3,
        "d_study_input": lambda seg, target, ref: (None, None), "unmix_window_study": lambda *a: [],
        "unmix_net_study": lambda nets, *a: [{"model": n, "seconds": 1.0, "dice_avg": 0.9} for n in nets],
        "precision_study": lambda *a: [], "s_probe_settings": lambda quick, default: [],
        "width_study": lambda *a: [{"features": [16, 32], "parameters": 107564, "precision": "bfloat16",
                                    "gflop": 62.0, "seconds": 0.3}],
        "flops_per_voxel": lambda model: 1.2e9,  # 1200 GFLOP on the volume
        "d_flops_per_voxel": lambda d: 0.06e9 if d is default_d else 0.012e9,
        "conv_peak_gflops": lambda dtype=torch.float32: 500.0 if dtype == torch.bfloat16 else 250.0,
    }
    for name, stand_in in stand_ins.items():
        monkeypatch.setattr(bench, name, stand_in)
    args = argparse.Namespace(threads=0, untrained=False, quick=False, crop=0, reps=3, out=tmp_path / "bench.json")
    doc = bench.run(args)
    assert json.loads(args.out.read_text()) == doc
    return doc


@pytest.mark.parametrize("s_dtype, peak, efficiency, conv_peak", [("bfloat16", 400.0, 0.25, 500.0),
                                                                   ("float32", 200.0, 0.5, 250.0)])
def test_run_derives_the_headline_figures_from_the_measurements(tmp_path, monkeypatch, s_dtype, peak, efficiency,
                                                                conv_peak):
    """Medians of the interleaved repetitions; the privacy tax is private K = 1 over the baseline; the client share
    the median of each run's client seconds over its own total; K = 10 over K = 1 the median of the bracketed
    ratios; S's GFLOP/s its FLOPs over the baseline's seconds, against the larger GEMM peak (start, end) in S's own
    precision; the peak memory the largest of the default allocation's fresh processes; each shipped D's row and
    each precision's of D from its own interleaved runs, D's arithmetic against the GEMM peak in D's precision."""
    import torch

    from mixdemo.weights import DEFAULT_UNMIXING

    doc = _stand_in_run(monkeypatch, tmp_path, getattr(torch, s_dtype))
    assert (doc["baseline_s"], doc["private_k1_s"], doc["privacy_tax"]) == (12.0, 15.0, 1.25)
    assert doc["client_share"] == 0.077  # median of 1/13, 3/15, 2/40 (not 2/15, nor S's share)
    assert (doc["private_k10_s"], doc["tta10_over_k1"]) == (130.0, 10.0)
    assert (doc["patch_k10_s"], doc["app_patch_k3_s"]) == (0.5, 0.3)
    assert doc["s_gflops"] == 100.0  # 1200 GFLOP in 12 s
    assert (doc["matmul_peak_gflops"], doc["flop_efficiency"], doc["peak_dtype"]) == (peak, efficiency, s_dtype)
    assert doc["matmul_peak_gflops_float32"] == 200.0 and doc["host"]["matmul_peak_gflops_start_end"] == [150.0, 200.0]
    assert (doc["conv_peak_gflops"], doc["s_over_conv_peak"]) == (conv_peak, round(100.0 / conv_peak, 3))
    assert doc["peak_rss_mb"] == 3500.0  # the two processes with the default allocation (kept, huge pages)
    assert doc["host"]["baseline_s_min_max"] == [10.0, 30.0] and doc["host"]["private_k1_s_min_max"] == [13.0, 40.0]
    assert doc["host"]["tta10_over_k1_runs"] == [9.0, 10.0, 14.0]
    rows = {r["model"]: r for r in doc["levers"]["unmix_nets"]}
    assert {k: rows[DEFAULT_UNMIXING][k] for k in ("private_k1_s", "privacy_tax", "client_share")} == {
        "private_k1_s": 15.0, "privacy_tax": 1.25, "client_share": 0.077}
    p4 = rows["unmixing-p4"]
    assert (p4["private_k1_s"], p4["privacy_tax"], p4["client_share"]) == (14.0, 1.167, 0.05)
    assert (p4["gflop"], p4["seconds_at_gemm_peak"], p4["privacy_tax_at_gemm_peak"]) == (12.0, 0.06, 1.005)
    assert p4["gemm_peak_dtype"] == "float32"  # a D in float32 against the float32 peak (the larger of start and end)
    default = rows[DEFAULT_UNMIXING]  # a D in bfloat16 against the bfloat16 peak, not the float32 one
    assert (default["gflop"], default["gemm_peak_dtype"], default["seconds_at_gemm_peak"]) == (60.0, "bfloat16", 0.15)
    assert default["privacy_tax_at_gemm_peak"] == round(1 + 0.15 / 12.0, 3)
    precisions = [{k: r[k] for k in ("precision", "private_k1_s", "privacy_tax", "client_share")}
                  for r in doc["levers"]["d_precision"]]
    assert precisions == [{"precision": "float32", "private_k1_s": 18.0, "privacy_tax": 1.5, "client_share": 0.2},
                          {"precision": "bfloat16", "private_k1_s": 15.0, "privacy_tax": 1.25, "client_share": 0.077}]
    assert doc["levers"]["d_widths"][0]["features"] == [16, 32] and "d_widths_note" in doc["levers"]


def test_report_gives_each_untrained_width_of_d_a_lever_row():
    """The README's benchmark table has a row per width of ``levers.d_widths`` (none in runs before the lever)."""
    from pathlib import Path

    from training.report import bench_md

    doc = json.loads((Path(__file__).resolve().parents[1] / "results" / "bench.json").read_text())
    doc["levers"].pop("d_widths", None)
    assert "untrained D" not in bench_md(doc)
    doc["levers"]["d_widths"] = [{"features": [16, 32], "parameters": 107564, "precision": "bfloat16", "gflop": 61.8,
                                  "seconds": 0.3}, {"features": [8, 16], "parameters": 30000, "precision": "bfloat16",
                                                    "gflop": 16.0, "seconds": 0.28}]
    text = bench_md(doc)
    assert "| lever: an untrained D of the default's design, widths (16, 32), 108 k parameters, blocks in bfloat16, " \
           "K = 1 | 0.30 s for 62 GFLOP |" in text
    assert "widths (8, 16), 30 k parameters" in text and "0.28 s for 16 GFLOP" in text


def test_run_times_patch_mode_on_a_central_cube_of_at_most_32_per_side(tmp_path, monkeypatch):
    """A volume thinner than 32 along an axis (``--crop 24``) gives the patch all of that axis, not its far edge."""
    import torch

    shapes: list = []
    _stand_in_run(monkeypatch, tmp_path, torch.float32, shape=(24, 24, 48), timed_shapes=shapes)
    assert shapes == [[(24, 24, 32)] * 11]  # the target and its 10 references


def test_run_reports_the_default_allocations_peak_where_the_kernel_grants_no_huge_pages(tmp_path, monkeypatch):
    """Where the kernel's transparent huge pages are off (or off Linux) no fresh process sees huge pages: the
    headline peak is still the largest of the processes started with the default allocation."""
    import torch

    doc = _stand_in_run(monkeypatch, tmp_path, torch.float32, huge_pages=False)
    assert doc["peak_rss_mb"] == 3500.0 and doc["levers"]["allocator_rule"] is None


def test_private_seconds_counts_mixing_and_d_as_the_clients_time_and_s_as_the_servers(monkeypatch):
    """Total: mix, S, D, labels; the client's share of it: mixing, D and labels, never S's time."""
    import numpy as np
    import torch

    from mixdemo import bench
    from mixdemo.mixing import MixKey

    clock = [0.0]

    def spends(seconds: float, result: object = None):
        def step(*args, **kwargs):
            clock[0] += seconds
            return result
        return step

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench, "make_proxies", spends(1.0, np.zeros((1, 2, 2, 2), np.float32)))
    monkeypatch.setattr(bench, "segment_proxies", spends(10.0, torch.zeros(1, 4, 2, 2, 2)))
    monkeypatch.setattr(bench, "reference_onehots", spends(0.5))
    monkeypatch.setattr(bench, "unmix_learned_labels", spends(2.25))
    ref = bench.Reference("ref0", np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.uint8))
    total, client = bench.private_seconds(None, None, MixKey(("ref0",), (0.5,)), np.zeros((2, 2, 2)), [ref])
    assert (total, client) == (13.75, 3.75)


def test_timing_helpers_take_the_median_and_peaks_the_fastest_call(monkeypatch):
    """``median_seconds``: the median of its runs; ``best_gflops``: the FLOPs over the fastest timed call (the
    warm-up call not timed)."""
    from mixdemo import bench

    monkeypatch.setattr(bench, "wall_seconds", lambda fn, times=iter([5.0, 1.0, 2.0]): next(times))
    assert bench.median_seconds(lambda: None, 3) == 2.0
    calls: list[int] = []
    monkeypatch.setattr(bench, "wall_seconds", lambda fn, times=iter([2.0, 1.0, 4.0]): (fn(), next(times))[1])
    assert bench.best_gflops(lambda: calls.append(1), 8e9, 3) == 8.0 and len(calls) == 4


def test_gemm_and_convolution_peaks_count_two_flops_per_multiply_add_in_the_precision_asked(monkeypatch):
    """The GEMM peak is the best over its sizes, each n × n product counted as 2n³ FLOPs and run in the dtype
    asked; the convolution's 2 · 27 · C² FLOPs per voxel, in that dtype too."""
    import torch

    from mixdemo import bench

    seen: list[tuple[float, torch.dtype]] = []

    def best(fn, flop, reps):
        seen.append((flop, fn().dtype))
        return {2 * 4**3: 3.0, 2 * 8**3: 2.0}.get(flop, 1.0)

    monkeypatch.setattr(bench, "best_gflops", best)
    assert bench.matmul_peak_gflops((4, 8), dtype=torch.bfloat16) == 3.0
    assert seen == [(2 * 4**3, torch.bfloat16), (2 * 8**3, torch.bfloat16)]
    seen.clear()
    bench.conv_peak_gflops(channels=2, side=4, reps=1, dtype=torch.bfloat16)
    assert seen == [(2 * 27 * 2**2 * 4**3, torch.bfloat16)]


def test_bracketed_runs_divide_by_the_mean_of_both_short_runs_not_either_one(monkeypatch):
    from mixdemo import bench

    clock = iter([0.0, 1.0, 1.0, 11.0, 11.0, 14.0])  # short 1 s, long 10 s, short 3 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    assert bench.bracketed_runs(lambda: None, lambda: None, reps=1) == ([10.0], [5.0])


@pytest.mark.parametrize("key, limit, met_at_limit", [
    ("private_k1_s", 20, True), ("patch_k10_s", 1, True), ("app_patch_k3_s", 2, False), ("privacy_tax", 1.10, True),
    ("tta10_over_k1", 10, True), ("client_share", 0.05, True), ("peak_rss_mb", 4096, True)])
def test_each_upper_target_is_met_below_its_limit_and_at_it_as_its_text_says(key, limit, met_at_limit):
    """'≤' targets are met at the limit, '<' ones are not; above the limit every one is missed."""
    from training.report import BENCH_TARGETS, target_verdict

    assert BENCH_TARGETS[key][0].startswith("≤" if met_at_limit else "<")
    assert target_verdict(key, limit * 0.99) == "met"
    assert target_verdict(key, limit) == ("met" if met_at_limit else "**missed**")
    assert target_verdict(key, limit * 1.01) == "**missed**"


def test_the_flop_efficiency_target_is_met_at_and_above_half_the_peak():
    from training.report import BENCH_TARGETS, target_verdict

    assert BENCH_TARGETS["flop_efficiency"][0] == "≥ 0.5"
    assert [target_verdict("flop_efficiency", v) for v in (0.49, 0.5, 0.97)] == ["**missed**", "met", "met"]


def test_precision_study_rows_are_the_medians_of_each_precisions_interleaved_runs(monkeypatch):
    """Per precision (float32, then bfloat16 where native): the medians of its own interleaved baseline and private
    runs, the privacy tax of those and the median of each run's client share."""
    import numpy as np
    import torch

    from mixdemo import bench
    from mixdemo.mixing import MixKey

    class StandInS:
        def use_bfloat16(self) -> StandInS:
            return self

    timings = iter([([10.0, 12.0, 30.0], {"private": [(13.0, 1.0), (15.0, 3.0), (40.0, 2.0)]}),  # float32
                    ([5.0, 6.0, 7.0], {"private": [(6.0, 0.6), (6.6, 0.66), (9.0, 0.1)]})])  # bfloat16
    monkeypatch.setattr(bench, "native_bfloat16", lambda: True)
    monkeypatch.setattr(bench, "untrained_s", StandInS)
    monkeypatch.setattr(bench, "interleaved_runs", lambda baseline, private, names, reps: next(timings))
    for name, result in [("make_proxies", None), ("segment_proxies", torch.zeros(1, 4, 2, 2, 2)),
                         ("reference_onehots", None), ("unmix_learned_labels", torch.zeros(2, 2, 2, dtype=torch.uint8)),
                         ("hard_labels", torch.zeros(2, 2, 2, dtype=torch.uint8))]:
        monkeypatch.setattr(bench, name, lambda *a, result=result, **k: result)
    monkeypatch.setattr(bench, "masked_dice_avg", lambda labels, truth, brain: 0.9)
    ref = bench.Reference("ref0", np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.uint8))
    rows = bench.precision_study(None, MixKey(("ref0",), (0.5,)), np.zeros((2, 2, 2), np.float32),
                                 np.zeros((2, 2, 2), np.uint8), [ref], 3, untrained=True)
    figures = [(r["precision"], r["baseline_s"], r["private_k1_s"], r["privacy_tax"], r["client_share"]) for r in rows]
    assert figures == [("float32", 12.0, 15.0, 1.25, 0.077), ("bfloat16", 6.0, 6.6, 1.1, 0.1)]


def test_the_private_probe_child_serves_each_request_with_its_first_k_references(tmp_path, monkeypatch):
    """The child side of the fresh-process probe: requests in the order given, each with the first K references,
    the median seconds of each K and every request's seconds."""
    import numpy as np

    from mixdemo import bench

    seconds = {10: iter([30.0, 50.0]), 1: iter([3.0, 1.0, 2.0])}
    served: list[list[str]] = []

    def private_seconds(seg, unmix, key, target, refs):
        assert list(key.reference_ids) == [r.ref_id for r in refs]
        served.append([r.ref_id for r in refs])
        return next(seconds[key.k]), 0.0

    monkeypatch.setattr(bench, "load_models", lambda trained: (None, None, None))
    monkeypatch.setattr(bench, "private_seconds", private_seconds)
    path = tmp_path / "volumes.npz"
    np.savez(path, target=np.zeros((2, 2, 2), np.float32), images=np.zeros((10, 2, 2, 2), np.float32),
             labels=np.zeros((10, 2, 2, 2), np.uint8))
    row = bench._probe_private(path, untrained=True, requests=(10, 1, 10, 1, 1))
    everything, first = [f"ref{i}" for i in range(10)], ["ref0"]
    assert served == [everything, first, everything, first, first]
    assert (row["seconds"], row["k1_seconds"], row["k10_runs"], row["k1_runs"]) == (40.0, 2.0, [30.0, 50.0],
                                                                                  [3.0, 1.0, 2.0])


def test_the_untrained_d_has_the_default_ds_design():
    """Without weights (``--untrained``, or none found) the benchmark times an untrained D of the default D's design
    (its config.json), not another design's: the same parameter shapes."""
    from pathlib import Path

    from mixdemo.bench import untrained_d
    from mixdemo.models import UnmixingNet
    from mixdemo.weights import DEFAULT_UNMIXING

    config = Path(__file__).resolve().parent.parent / "weights" / DEFAULT_UNMIXING / "config.json"
    default = UnmixingNet(**json.loads(config.read_text()))
    shapes = {k: v.shape for k, v in default.state_dict().items()}
    assert {k: v.shape for k, v in untrained_d().state_dict().items()} == shapes


def test_the_width_lever_times_untrained_ds_of_the_default_design_first_at_its_own_widths():
    """``levers.d_widths``: an untrained D of the default's design at the default's widths, then at half of them, each
    with fewer parameters and FLOPs than the last, in the given D's precision, timed on the client's path."""
    from pathlib import Path

    import numpy as np

    import torch

    from mixdemo.bench import D_WIDTHS, UNTRAINED_D_DESIGN, width_study
    from mixdemo.mixing import MixKey
    from mixdemo.models import UnmixingNet
    from mixdemo.pipeline import Reference
    from mixdemo.weights import DEFAULT_UNMIXING

    config = json.loads((Path(__file__).resolve().parent.parent / "weights" / DEFAULT_UNMIXING / "config.json").read_text())
    assert list(D_WIDTHS[0]) == config["features"] and UNTRAINED_D_DESIGN["patch"] == config["patch"]
    rng = np.random.default_rng(0)
    target = np.zeros((8, 8, 12), np.float32)
    target[2:6, 2:6, 2:10] = 1.0
    ref = Reference("r", rng.random((8, 8, 12), dtype=np.float32), rng.integers(0, 4, (8, 8, 12)).astype(np.uint8))
    mixed = torch.softmax(torch.randn(1, 4, 8, 8, 12), 1)
    rows = width_study(UnmixingNet(patch=2).eval(), MixKey(("r",), (0.5,)), mixed, target, ref.labels, ref, reps=1)
    assert [tuple(r["features"]) for r in rows] == list(D_WIDTHS)
    assert rows[0]["parameters"] > rows[1]["parameters"] and rows[0]["gflop"] >= rows[1]["gflop"]
    assert all(r["precision"] == "float32" and r["seconds"] > 0 for r in rows)
    assert width_study(torch.nn.Identity(), MixKey(("r",), (0.5,)), mixed, target, ref.labels, ref, reps=1) == []


@pytest.mark.parametrize("module, argv, says", [
    ("bench", ["--reps", "0"], "argument --reps: 0 is less than 1"),
    ("bench", ["--crop", "-32"], "argument --crop: -32 is less than 0"),
    ("runtimes", ["--k-patches", "0"], "argument --k-patches: 0 is less than 1"),
    ("runtimes", ["--threads", "two"], "argument --threads: 'two' is not a whole number"),
    ("phantoms", ["--out", "unused", "--jobs", "0"], "argument --jobs: 0 is less than 1"),
    ("phantoms", ["--out", "unused", "--lesions", "-1"], "argument --lesions: -1 is less than 0"),
])
def test_the_librarys_commands_refuse_a_count_out_of_range_when_parsed(module, argv, says, capsys):
    """The benchmark's, the runtimes' and the phantom cohort's counts are checked when the command line is parsed
    (``mixdemo.launch.count``, which the training commands share): ``--reps 0`` is a usage error, not a run that
    reaches its medians of nothing minutes later."""
    import importlib

    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"mixdemo.{module}").main(argv)
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_the_record_names_the_precision_s_ran_in_not_the_setting(tmp_path, monkeypatch):
    """With untrained models (``--untrained``, or no weights here) S runs in float32 whatever ``$MIXDEMO_PRECISION``
    says: the record's ``s_precision`` and its note name the precision of the S that was timed."""
    import torch

    monkeypatch.setenv("MIXDEMO_PRECISION", "bfloat16")
    doc = _stand_in_run(monkeypatch, tmp_path, torch.float32)
    assert doc["s_precision"] == doc["peak_dtype"] == "float32"
    assert "the headline's is float32" in doc["levers"]["s_precision_note"]


@pytest.mark.parametrize("crop, shape", [(32, (32, 32, 32)), (33, (33, 33, 33)), (1, (1, 1, 1)),
                                         (160, (144, 160, 160)), (1000, (144, 192, 160))])
def test_phantom_volumes_crop_a_central_cube_clipped_to_the_grid(monkeypatch, crop, shape):
    """``--crop N`` takes the central N³ cube, each side clipped to the grid's (144 × 192 × 160): ``--crop 160`` was
    the far 8 voxels of X, ``--crop 1`` an empty volume."""
    import numpy as np

    from mixdemo import bench

    grid = np.arange(np.prod(bench.GRID_SHAPE), dtype=np.float32).reshape(bench.GRID_SHAPE)
    monkeypatch.setattr(bench, "load_template", lambda: None)
    monkeypatch.setattr(bench, "synthesize_scan", lambda template, subject, scan: (grid, grid.astype(np.uint8)))
    target, refs, labels = bench.phantom_volumes(1, crop, distinct=False)
    assert target.shape == labels.shape == refs[0].image.shape == shape
    corner = tuple(int(c) for c in np.unravel_index(int(target[0, 0, 0]), bench.GRID_SHAPE))
    assert corner == tuple(max(n // 2 - s // 2, 0) for n, s in zip(bench.GRID_SHAPE, shape))  # centred on the grid's


@pytest.mark.parametrize("module", ["bench", "runtimes"])
@pytest.mark.parametrize("name, value", [("MIXDEMO_PRECISION", "fp16"), ("MIXDEMO_KEEP_FREED_MEMORY", "maybe"),
                                         ("MIXDEMO_S_MEMORY_MB", "lots")])
def test_the_librarys_benchmarks_refuse_a_setting_they_cannot_use_before_any_work(module, name, value, monkeypatch):
    """A mistyped ``$MIXDEMO_PRECISION`` made the benchmark time untrained float32 models, saying the trained weights
    were unavailable, and end in a traceback; a mistyped allocator switch was taken as off; a memory budget that is no
    number was a traceback at the first pass of S. Both commands refuse
    such a setting at start, as the app and the client do (``mixdemo.launch.check_setting_variables``)."""
    import importlib

    mod = importlib.import_module(f"mixdemo.{module}")
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(mod, "run", lambda args: pytest.fail("measured with a setting it cannot use"))
    with pytest.raises(SystemExit) as stop:
        mod.main(["--quick", "--out", "unused.json"])
    assert f"${name}" in str(stop.value.code) and repr(value) in str(stop.value.code)


@pytest.mark.parametrize("module", ["mixdemo.bench", "mixdemo.runtimes", "training.throughput"])
def test_an_out_that_is_a_folder_is_refused_when_parsed(module, tmp_path, monkeypatch, capsys):
    """``--out /tmp``: a usage error naming the folder, not an IsADirectoryError when the record is written at the
    end of the run (after minutes of measurement)."""
    import importlib

    mod = importlib.import_module(module)
    for name in ("run", "measure"):
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, lambda *a: pytest.fail("measured for an --out it cannot write"))
    with pytest.raises(SystemExit) as stop:
        mod.main(["--quick", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --out" in err and "is a folder" in err and str(tmp_path) in err


@pytest.mark.parametrize("platform, maxrss", [("linux", 2 * 2**20), ("darwin", 2 * 2**30)])
def test_peak_rss_without_proc_reads_ru_maxrss_in_the_platforms_unit(monkeypatch, platform, maxrss):
    """Where /proc/self/status is absent the peak is ``ru_maxrss``: kilobytes on Linux, bytes on macOS (it read 2 GB
    there as 2 million MB)."""
    import types

    from mixdemo import bench

    monkeypatch.setattr(bench, "_proc_status_mb", lambda field: None)
    monkeypatch.setattr(bench.sys, "platform", platform)
    monkeypatch.setattr(bench.resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=maxrss))
    assert bench.own_peak_rss_mb() == bench.ru_maxrss_mb() == 2048.0


def test_the_apps_row_says_when_the_app_ran_on_a_gpu(tmp_path, monkeypatch):
    """Every other figure is the CPU's (``device``), but the app loads its networks where ``pick_device`` says: on a
    machine with CUDA its patch-mode row is the GPU's, and the record and the README's row say so."""
    from pathlib import Path

    import torch

    from mixdemo import bench
    from training.report import bench_md

    monkeypatch.setattr(bench, "pick_device", lambda prefer=None: torch.device("cuda"))
    doc = _stand_in_run(monkeypatch, tmp_path, torch.float32)
    assert (doc["device"], doc["app_device"]) == ("cpu", "cuda")
    record = json.loads((Path(__file__).resolve().parents[1] / "results" / "bench.json").read_text())
    row = f"| app, Segment tab, patch mode, K = 3 (mix → server → unmix → render) | {record['app_patch_k3_s']:.2f} s |"
    assert "app_device" not in record and row in bench_md(record)  # a record from before the field: the CPU's
    record["app_device"] = "cuda"
    assert row.replace(" render) |", " render), on cuda |") in bench_md(record)


def test_the_bench_times_untrained_models_only_when_asked_or_when_the_weights_are_not_there(tmp_path, monkeypatch,
                                                                                              capsys):
    """Any failure to load the weights (a checksum that does not match) fell back to untrained models, with Dice
    rows of untrained models and precisions recorded as the shipped ones'. Weights not there: timed as --untrained
    throughout, with a note; weights there that do not load: an error naming them."""
    from mixdemo import bench, weights

    assert bench.untrained_unless_weights(True) is True
    assert bench.untrained_unless_weights(False) is False  # the repo's weights
    monkeypatch.setattr(weights, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert bench.untrained_unless_weights(False) is True
    assert "note: No weights for 'segmentation'" in capsys.readouterr().err
    for name in bench.TIMED_MODELS:
        shutil.copytree(REPO / "weights" / name, tmp_path / "w" / name)
    record = json.loads((tmp_path / "w" / "baseline" / "training.json").read_text())
    (tmp_path / "w" / "baseline" / "training.json").write_text(json.dumps({**record, "sha256": "0" * 64}))
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "w"))
    monkeypatch.setattr(bench, "run", lambda args: bench.load_models(not args.untrained))
    with pytest.raises(SystemExit, match=r"^error: .*baseline"):
        bench.main(["--quick", "--out", str(tmp_path / "bench.json")])
