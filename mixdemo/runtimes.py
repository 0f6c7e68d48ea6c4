"""Other inference runtimes for S and D, measured against the PyTorch fast path on the same inputs.

    python -m mixdemo.runtimes           # the phantom grid → results/runtimes.json (13 minutes on 2 cores)
    python -m mixdemo.runtimes --quick   # a 32³ cube, K = 2 patches, no torch.compile: a smoke run

The levers the performance issue names besides PyTorch's own: ``torch.compile`` (inductor; it needs a
C++ compiler at run time), ONNX Runtime and OpenVINO. The last two are optional packages
(``pip install onnx onnxruntime openvino``); a row says so when one is missing. For each workload (S in
patch mode: K = 10 proxies of 32³; S on the whole volume; D on the whole volume, K = 1) each runtime
runs in a fresh process, so its peak memory and its caches are its own: the time to prepare it
(export, conversion), its first call (``torch.compile`` compiles there), the median of the timed calls,
and how far its output is from the PyTorch fast path's (the largest logit difference and the fraction of
voxels whose label differs). ONNX Runtime and OpenVINO take the networks exactly as trained (MONAI's
forward, batch norm and instance norm as layers; OpenVINO at float32); ``torch.compile`` takes the fast
path. Nothing here is used by the app, the server or the client: the PyTorch fast path is what runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mixdemo.bench import (QUICK_CROP, central_cube, json_from_child, own_peak_rss_mb, phantom_volumes, untrained_d,
                           untrained_s, wall_seconds)
from mixdemo.launch import check_setting_variables, count, out_file
from mixdemo.mixing import MixKey
from mixdemo.pipeline import make_proxies, reference_onehots, segment_proxies
from mixdemo.weights import DEFAULT_UNMIXING, load_model

RUNTIMES = ("pytorch", "torch.compile", "onnxruntime", "openvino")
"""``pytorch``: the fast path every other row is compared with."""
WORKLOADS = ("s_patches", "s_volume", "d_volume")
PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("openvino",)}
"""The packages each optional runtime needs (ONNX Runtime runs the graph ``torch.onnx.export`` writes
with the ``onnx`` package; OpenVINO converts the module itself)."""


def missing_packages(runtime: str) -> list[str]:
    """The packages ``runtime`` needs that are not importable here."""
    import importlib.util

    return [name for name in PACKAGES.get(runtime, ()) if importlib.util.find_spec(name) is None]


def _model(workload: str, fast: bool) -> torch.nn.Module:
    """S or D as shipped (``fast``: the fast path, else the modules as trained); untrained ones of the same
    shape when the weights are absent (speed does not depend on the weights' values)."""
    name = DEFAULT_UNMIXING if workload.startswith("d_") else "segmentation"
    try:
        return load_model(name, fast=fast, precision="float32")  # the other runtimes run float32 too
    except Exception:  # noqa: BLE001 - no weights here
        return untrained_s(fast) if name == "segmentation" else untrained_d(fast)


def _runner(runtime: str, workload: str, inputs: list[torch.Tensor], threads: int,
            tmp: Path) -> Callable[[], np.ndarray]:
    """A call of ``workload`` on ``inputs`` with ``runtime``, returning float32 logits."""
    if runtime in ("pytorch", "torch.compile"):
        net = _model(workload, fast=True)
        fn = torch.compile(net) if runtime == "torch.compile" else net

        def call() -> np.ndarray:
            with torch.inference_mode():
                return fn(*inputs).float().contiguous().numpy()
        return call
    module = _model(workload, fast=False)  # the modules as trained: MONAI's forward, norms as layers
    arrays = [t.numpy() for t in inputs]
    if runtime == "onnxruntime":
        import onnxruntime as ort

        path = tmp / "model.onnx"
        with torch.inference_mode():
            torch.onnx.export(module, tuple(inputs), str(path), opset_version=17, dynamo=False,
                              input_names=[f"in{i}" for i in range(len(inputs))], output_names=["logits"])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {f"in{i}": a for i, a in enumerate(arrays)}
        return lambda: session.run(None, feeds)[0]
    if runtime == "openvino":
        import openvino as ov

        with torch.inference_mode():
            converted = ov.convert_model(module, example_input=tuple(inputs))
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        request = ov.Core().compile_model(converted, "CPU", config).create_infer_request()

        def call_ov() -> np.ndarray:
            request.infer(arrays)
            return request.get_output_tensor(0).data.copy()
        return call_ov
    raise ValueError(f"Unknown runtime {runtime!r}; expected one of {RUNTIMES}.")


def _child(runtime: str, workload: str, inputs_path: Path, out_path: Path, reps: int, threads: int) -> dict:
    """The child side: prepare ``runtime``, time its first call and ``reps`` more, save the last output."""
    torch.set_num_threads(threads)
    data = np.load(inputs_path)
    inputs = [torch.from_numpy(data[f"in{i}"]) for i in range(len(data.files))]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        call = _runner(runtime, workload, inputs, threads, Path(tmp))
        prepare_s = time.perf_counter() - t0
        first_s = wall_seconds(call)
        times, out = [], None
        for _ in range(reps):
            t0 = time.perf_counter()
            out = call()
            times.append(time.perf_counter() - t0)
    np.save(out_path, out)
    return {"prepare_s": round(prepare_s, 2), "first_call_s": round(first_s, 3),
            "seconds": round(statistics.median(times), 3),
            "seconds_min_max": [round(min(times), 3), round(max(times), 3)], "peak_rss_mb": round(own_peak_rss_mb(), 1)}


def workload_inputs(crop: int, k_patches: int) -> dict[str, list[np.ndarray]]:
    """Each workload's inputs from the phantom generator: proxies at α = 0.5 (Eq. 2) for S, and for D the
    softmax of the fast S on the whole proxy with the reference's one-hot labels and the mixing weights."""
    target, refs, _ = phantom_volumes(k_patches, crop, distinct=False)
    key = MixKey(tuple(r.ref_id for r in refs), (0.5,) * k_patches)
    proxies = make_proxies(target, refs, key).astype(np.float32)
    centre = central_cube(target.shape, 32)  # all of a side under 32
    volume = proxies[:1, None]
    mixed = segment_proxies(_model("s_volume", fast=True), proxies[:1])
    return {
        "s_patches": [np.ascontiguousarray(proxies[(slice(None), *centre)][:, None])],
        "s_volume": [np.ascontiguousarray(volume)],
        "d_volume": [mixed.float().numpy(), reference_onehots(refs[:1], num_classes=mixed.shape[1]).numpy(),
                     np.array([[0.5, 0.5]], np.float32)],
    }


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    """How far ``other``'s logits are from ``reference``'s: the largest difference and the fraction of voxels
    whose label (argmax over classes) differs."""
    return {"max_abs_logit_diff": float(np.abs(reference - other).max()),
            "labels_differing": float(np.mean(reference.argmax(1) != other.argmax(1)))}


def measure(runtime: str, workload: str, inputs: list[np.ndarray], reps: int, threads: int, tmp: Path) -> dict:
    """One row: ``runtime`` on ``workload`` in a fresh process (or why it could not run)."""
    row: dict = {"workload": workload, "runtime": runtime}
    missing = missing_packages(runtime)
    if missing:
        return {**row, "available": False, "reason": f"not installed: pip install {' '.join(missing)}"}
    in_path, out_path = tmp / f"{workload}.npz", tmp / f"{workload}-{runtime}.npy"
    np.savez(in_path, **{f"in{i}": a for i, a in enumerate(inputs)})
    try:
        timed = json_from_child(["-m", "mixdemo.runtimes", "--child", runtime, workload, str(in_path), str(out_path),
                                 "--reps", str(reps), "--threads", str(threads)])
    except subprocess.CalledProcessError as failed:
        last = (failed.stderr.strip().splitlines() or ["no message"])[-1]
        return {**row, "available": False, "reason": f"failed: {last[:300]}"}
    return {**row, "available": True, **timed}


def run(args: argparse.Namespace) -> dict:
    """Every runtime on every workload; the JSON document."""
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    asked = args.runtimes or [r for r in RUNTIMES if not (args.quick and r == "torch.compile")]
    runtimes = ["pytorch", *[r for r in asked if r != "pytorch"]]  # the fast path first: the others' reference
    inputs = workload_inputs(args.crop, args.k_patches)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for workload in WORKLOADS:
            reference: tuple[np.ndarray, float] | None = None  # the PyTorch fast path's output and seconds
            for runtime in runtimes:
                row = measure(runtime, workload, inputs[workload], args.reps, threads, tmp)
                out_path = tmp / f"{workload}-{runtime}.npy"
                if row.get("available"):
                    out = np.load(out_path)
                    out_path.unlink()
                    if runtime == "pytorch":
                        reference = (out, row["seconds"])
                    if reference is not None:
                        row.update(compare(reference[0], out), speedup=round(reference[1] / row["seconds"], 3))
                rows.append(row)
                print(json.dumps(row), flush=True)
    doc = {
        "command": " ".join(["python -m mixdemo.runtimes", *(shlex.quote(a) for a in sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "threads": threads,
        "torch": torch.__version__,
        "volume_shape": list(inputs["s_volume"][0].shape[2:]),
        "patches": list(inputs["s_patches"][0].shape),
        "reps": args.reps,
        "versions": _versions(),
        "models": {"s": "segmentation", "d": DEFAULT_UNMIXING},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _versions() -> dict[str, str]:
    """The versions of the optional runtimes present here."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("onnx", "onnxruntime", "openvino"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=out_file, default=Path("results/runtimes.json"))
    p.add_argument("--reps", type=count(1), default=3, help="timed calls after the first")
    p.add_argument("--threads", type=count(0), default=0, help="threads of every runtime (0: torch's default)")
    p.add_argument("--crop", type=count(0), default=0,
                   help="a central cube of this side instead of the whole grid (each side at most the grid's)")
    p.add_argument("--k-patches", type=count(1), default=10, help="proxies in the patch-mode batch")
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=None,
                   help="the runtimes to measure (default: all; pytorch, the reference, always runs)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_CROP}³ cube, K = 2 patches, 1 timed call, no torch.compile")
    p.add_argument("--child", nargs=4, metavar=("RUNTIME", "WORKLOAD", "INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_setting_variables()  # a bad precision, allocator switch or memory budget: refused before any work
    if args.child:
        runtime, workload, inputs_path, out_path = args.child
        threads = args.threads or torch.get_num_threads()
        row = _child(runtime, workload, Path(inputs_path), Path(out_path), args.reps, threads)
        print(json.dumps(row))
        return row
    if args.quick:
        args.crop, args.k_patches, args.reps = args.crop or QUICK_CROP, 2, 1
    doc = run(args)
    return doc


if __name__ == "__main__":
    main()
