"""The benchmark's --quick mode runs and writes every key (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

KEYS = {"command", "cpu", "threads", "baseline_s", "private_k1_s", "private_k10_s", "patch_k10_s", "privacy_tax",
        "tta10_over_k1", "client_share", "s_gflops", "matmul_peak_gflops", "flop_efficiency", "peak_rss_mb"}


@pytest.mark.slow
def test_quick_bench_writes_results(tmp_path):
    from mixdemo import bench

    out = tmp_path / "bench.json"
    bench.main(["--quick", "--out", str(out), "--untrained", "--threads", "1"])
    doc = json.loads(out.read_text())
    assert KEYS <= set(doc)
    assert doc["volume_shape"] == [64, 64, 64]
    assert doc["privacy_tax"] == pytest.approx(doc["private_k1_s"] / doc["baseline_s"], rel=0.01)
    assert 0 < doc["client_share"] < 1 and doc["flop_efficiency"] > 0


def test_flops_per_voxel_counts_the_convolutions():
    from mixdemo.bench import flops_per_voxel
    from mixdemo.models import SegmentationNet

    small = flops_per_voxel(SegmentationNet(features=(4, 4, 8, 8, 16, 4)))
    big = flops_per_voxel(SegmentationNet(features=(8, 8, 16, 16, 32, 8)))
    assert 0 < small < big  # doubling the widths roughly quadruples the FLOPs
    assert 3 < big / small < 5


def test_d_flops_per_voxel_counts_the_patch_ds_smaller_arithmetic():
    """D on 2³ patches runs its blocks on an eighth of the voxels: several times fewer FLOPs per voxel
    than the full-resolution D (the bench's floor under each D's time, ``seconds_at_gemm_peak``)."""
    from mixdemo.bench import d_flops_per_voxel
    from mixdemo.models import UnmixingNet

    full, patches = d_flops_per_voxel(UnmixingNet().eval()), d_flops_per_voxel(UnmixingNet(patch=2).eval())
    assert 0 < patches < full
    assert 5 < full / patches < 10
