"""Other runtimes against the PyTorch fast path (``python -m mixdemo.runtimes``); no timing is asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_compare_counts_the_largest_logit_difference_and_the_labels_that_differ():
    from mixdemo.runtimes import compare

    reference = np.zeros((1, 3, 2, 2, 1), np.float32)
    reference[:, 1] = 1.0  # every voxel's label: class 1
    other = reference.copy()
    other[0, 2, 0, 0, 0] = 2.0  # one voxel of four now says class 2
    other[0, 0, 1, 1, 0] = 0.5  # a smaller change that keeps the label
    assert compare(reference, other) == {"max_abs_logit_diff": 2.0, "labels_differing": 0.25}


def test_missing_packages_name_what_to_install(monkeypatch):
    import importlib.util

    from mixdemo import runtimes

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert runtimes.missing_packages("onnxruntime") == ["onnx", "onnxruntime"]
    assert runtimes.missing_packages("openvino") == ["openvino"]
    assert runtimes.missing_packages("pytorch") == [] and runtimes.missing_packages("torch.compile") == []


@pytest.mark.slow
def test_quick_runtimes_compare_each_runtime_with_the_fast_path(tmp_path):
    """PyTorch's rows are the reference (identical to themselves); an installed optional runtime computes the
    same labels to within 1 % of the voxels; a missing one says what to install."""
    from mixdemo import runtimes

    out = tmp_path / "runtimes.json"
    runtimes.main(["--quick", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["volume_shape"] == [runtimes.QUICK_CROP] * 3 and doc["patches"][0] == 2
    rows = {(r["workload"], r["runtime"]): r for r in doc["rows"]}
    assert {w for w, _ in rows} == set(runtimes.WORKLOADS)
    assert "torch.compile" not in {r for _, r in rows}  # --quick skips compilation
    for workload in runtimes.WORKLOADS:
        fast = rows[(workload, "pytorch")]
        assert fast["available"] and "seconds" in fast and fast["speedup"] == 1.0
        assert fast["max_abs_logit_diff"] == 0.0 and fast["labels_differing"] == 0.0
        for name in ("onnxruntime", "openvino"):
            row = rows[(workload, name)]
            if row["available"]:
                assert row["labels_differing"] < 0.01 and "seconds" in row
            else:
                assert row["reason"].startswith("not installed: pip install")



def test_run_compares_each_other_runtime_with_the_fast_path(tmp_path, monkeypatch):
    """The comparison of the rows (the other runtimes are not installed here): a stand-in runtime whose logits
    differ at one voxel of eight, twice as fast as the fast path."""
    import argparse

    from mixdemo import runtimes

    logits = np.zeros((1, 4, 2, 2, 2), np.float32)
    logits[:, 1] = 1.0  # label 1 everywhere

    def stand_in(runtime, workload, inputs, reps, threads, tmp):
        out = logits.copy()
        if runtime == "onnxruntime":
            out[0, 2, 0, 0, 0] = 3.0  # one voxel changes label; the largest difference is 3
        np.save(tmp / f"{workload}-{runtime}.npy", out)
        return {"workload": workload, "runtime": runtime, "available": True, "seconds": 2.0 if runtime == "pytorch" else 1.0}

    monkeypatch.setattr(runtimes, "measure", stand_in)
    monkeypatch.setattr(runtimes, "workload_inputs", lambda crop, k: {
        "s_patches": [np.zeros((2, 1, 2, 2, 2), np.float32)], "s_volume": [np.zeros((1, 1, 2, 2, 2), np.float32)],
        "d_volume": []})
    args = argparse.Namespace(threads=1, runtimes=["onnxruntime"], quick=True, crop=48, k_patches=2, reps=1,
                              out=tmp_path / "runtimes.json")
    rows = {(r["workload"], r["runtime"]): r for r in runtimes.run(args)["rows"]}
    for workload in runtimes.WORKLOADS:
        assert rows[(workload, "pytorch")]["labels_differing"] == 0.0
        other = rows[(workload, "onnxruntime")]
        assert (other["max_abs_logit_diff"], other["labels_differing"], other["speedup"]) == (3.0, 0.125, 2.0)

def test_report_renders_available_and_missing_runtimes():
    from training.report import runtimes_md

    doc = {"command": "python -m mixdemo.runtimes", "date": "2026-12-01", "torch": "2.13.0+cpu", "threads": 2,
           "volume_shape": [48, 48, 48], "patches": [10, 1, 32, 32, 32], "reps": 3, "versions": {"openvino": "1.0"},
           "rows": [{"workload": "s_patches", "runtime": "pytorch", "available": True, "prepare_s": 0.1,
                     "first_call_s": 1.0, "seconds": 0.9, "peak_rss_mb": 500.0, "max_abs_logit_diff": 0.0,
                     "labels_differing": 0.0, "speedup": 1.0},
                    {"workload": "s_patches", "runtime": "onnxruntime", "available": False,
                     "reason": "not installed: pip install onnx onnxruntime"}]}
    text = runtimes_md(doc)
    assert "S, patch mode (10 × 32³) | pytorch (the fast path) | 0.90 s | 1.00 |" in text
    assert "| S, patch mode (10 × 32³) | onnxruntime | not installed: pip install onnx onnxruntime |" in text
    assert "openvino 1.0" in text and "not patients" in text


def test_a_runtime_that_fails_in_its_child_gets_a_row_saying_why(tmp_path):
    from mixdemo.runtimes import measure

    row = measure("no-such-runtime", "s_patches", [np.zeros((1, 1, 16, 16, 16), np.float32)], 1, 1, tmp_path)
    assert row["available"] is False and row["reason"].startswith("failed: ValueError: Unknown runtime")


def test_the_child_times_preparation_the_first_call_and_the_median_of_the_others(tmp_path, monkeypatch):
    """Preparation, the first call (where torch.compile compiles) apart, then the median and range of the timed
    calls; the last output saved for the comparison."""
    from mixdemo import runtimes

    clock = [0.0]
    calls = iter([4.0, 3.0, 1.0, 2.0])  # the first call, then three timed ones

    def call() -> np.ndarray:
        clock[0] += next(calls)
        return np.full((1, 2, 1, 1, 1), clock[0], np.float32)

    def prepare(runtime, workload, inputs, threads, tmp):
        clock[0] += 5.0
        return call

    monkeypatch.setattr(runtimes.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(runtimes, "_runner", prepare)
    np.savez(tmp_path / "in.npz", in0=np.zeros((1, 1, 2, 2, 2), np.float32))
    row = runtimes._child("pytorch", "s_volume", tmp_path / "in.npz", tmp_path / "out.npy", reps=3, threads=1)
    assert (row["prepare_s"], row["first_call_s"], row["seconds"], row["seconds_min_max"]) == (5.0, 4.0, 2.0, [1.0, 3.0])
    assert np.load(tmp_path / "out.npy").max() == 15.0  # the last call's output


def test_a_crop_thinner_than_a_patch_gives_the_patches_all_of_it(monkeypatch):
    """``--crop 24``: S's patch-mode inputs are the whole 24³ proxies (they were their far 4³ corner)."""
    import torch

    from mixdemo import bench, runtimes

    grid = np.arange(np.prod(bench.GRID_SHAPE), dtype=np.float32).reshape(bench.GRID_SHAPE) / 1e6
    monkeypatch.setattr(bench, "load_template", lambda: None)
    monkeypatch.setattr(bench, "synthesize_scan", lambda template, subject, scan: (grid, (grid > 2).astype(np.uint8)))
    monkeypatch.setattr(runtimes, "segment_proxies", lambda seg, proxies: torch.zeros(1, 4, *proxies.shape[1:]))
    inputs = runtimes.workload_inputs(24, 2)
    (patches,) = inputs["s_patches"]
    assert patches.shape == (2, 1, 24, 24, 24)
    assert np.array_equal(patches[:1], inputs["s_volume"][0])  # the first proxy, all of it


@pytest.mark.parametrize("fast", [True, False])
def test_without_weights_d_is_an_untrained_d_of_the_default_ds_design(monkeypatch, fast):
    """No weights here: the D rows time an untrained D of the default D's design (blocks on 2³ patches), as the
    benchmark's stand-in is, not a D at full resolution (several times the arithmetic)."""
    from mixdemo import bench, runtimes
    from mixdemo.weights import WeightsNotFound

    def no_weights(name, **kwargs):
        raise WeightsNotFound(f"No weights for '{name}'")

    monkeypatch.setattr(runtimes, "load_model", no_weights)
    unmix = runtimes._model("d_volume", fast=fast)
    assert unmix.patch == bench.UNTRAINED_D_DESIGN["patch"] and not unmix.training
    assert unmix.channels_last == fast and unmix.fused_patches == fast  # fast=False: the convolutions, as trained
