"""The CUDA path: what a user with a GPU runs (the app's S and D, training, the evaluation).

Skipped where no GPU is present (CI has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mixdemo import weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def case(small_cohort):
    """(target volume cropped to 64³, two references, their key) from the small cohort."""
    from mixdemo.data import load_cohort, load_volumes
    from mixdemo.mixing import MixKey
    from mixdemo.pipeline import Reference
    from training import evaluate

    cohort = load_cohort(small_cohort)
    target = evaluate.crop_volume(load_volumes(cohort.split("test")[:1])[0], 64)
    refs = [Reference(v.name, v.image, v.labels) for v in
            (evaluate.crop_volume(v, 64) for v in load_volumes(cohort.split("train")[:2]))]
    return target, refs, MixKey(tuple(r.ref_id for r in refs), (0.35, 0.45))


def _learned_tta(device: str, case, precision: str | None = None) -> tuple[np.ndarray, dict]:
    """(label map, Dice row) of Learned + TTA on ``device``, S and D loaded as the app loads them."""
    from mixdemo.pipeline import private_segment, segment_proxies
    from training import evaluate

    target, refs, key = case
    seg = weights.load_model("segmentation", device=device)
    unmix = weights.load_model(weights.DEFAULT_UNMIXING, device=device, precision=precision)
    result = private_segment(target.image, refs, key, lambda p: segment_proxies(seg, p), unmix)
    labels = result.labels("learned_tta")
    return labels, evaluate.dice_row(labels, target.labels)


def test_the_server_picks_the_gpu_keeps_float32_there_and_answers_on_the_cpu(case):
    from mixdemo import server
    from mixdemo.models import pick_device
    from mixdemo.pipeline import make_proxies

    assert pick_device().type == "cuda"
    seg = server.segmentation_model()
    assert next(seg.parameters()).device.type == "cuda" and seg.compute_dtype == torch.float32
    assert weights.s_precision("cuda") == weights.unmixing_precision("cuda") == "float32"
    target, refs, key = case
    probs = server.segment(make_proxies(target.image, refs, key))
    assert probs.device.type == "cpu" and probs.shape[:2] == (2, 4)
    assert torch.allclose(probs.sum(1), torch.ones(()), atol=1e-4)


def test_private_segmentation_on_the_gpu_matches_the_cpu(case):
    gpu_labels, gpu_dice = _learned_tta("cuda", case)
    cpu_labels, cpu_dice = _learned_tta("cpu", case)
    assert np.mean(gpu_labels == cpu_labels) > 0.999
    assert all(abs(gpu_dice[c] - cpu_dice[c]) <= 0.002 for c in cpu_dice)


def test_d_forced_to_bfloat16_on_the_gpu_keeps_the_dice(case):
    """On a GPU ``auto`` keeps D in float32; forced to bfloat16 its norms take an affine in the input's dtype."""
    labels, dice = _learned_tta("cuda", case, precision="bfloat16")
    labels32, dice32 = _learned_tta("cuda", case)
    assert np.mean(labels == labels32) > 0.99
    assert all(abs(dice[c] - dice32[c]) <= 0.01 for c in dice32)


@pytest.mark.parametrize("extra", [[], ["--precision", "bfloat16", "--channels-last"]])
def test_training_runs_on_the_gpu_and_says_so(small_cohort, tmp_path, extra):
    from training import train

    info = train.main(["--mode", "private", "--data", str(small_cohort), "--steps", "3", "--batch-size", "2",
                       "--patch-size", "16", "--out", str(tmp_path), "--run-dir", str(tmp_path / "run"), *extra])
    record = json.loads((tmp_path / "segmentation" / "training.json").read_text())
    assert record["device"].startswith("cuda") and torch.cuda.get_device_name(0) in record["hardware"]
    losses = [float(line.split("\t")[1]) for line in (tmp_path / "run" / "train.log").read_text().splitlines()[1:]]
    assert info and losses and np.isfinite(losses).all()


def test_the_evaluation_runs_on_the_gpu(small_cohort, tmp_path):
    from training import evaluate

    doc = evaluate.main(["--data", str(small_cohort), "--quick", "--no-figures", "--brain-mask", "--device", "cuda",
                         "--out", str(tmp_path / "e.json")])
    assert 0.0 <= doc["dice"]["learned_tta"]["avg"] <= 1.0
    assert doc["device"] == "cuda" and doc["hardware"] == torch.cuda.get_device_name(0)  # where it ran, recorded


def test_the_score_prior_resumes_its_training_on_the_gpu(small_cohort, tmp_path):
    """A checkpoint of training.train_score resumed on the GPU: its CPU random-number state is set as it was saved."""
    from training import train_score

    argv = ["--data", str(small_cohort), "--batch-size", "2", "--max-subjects", "1", "--features", "4,4,8,8,16,4",
            "--out", str(tmp_path / "w"), "--run-dir", str(tmp_path / "run"), "--device", "cuda"]
    train_score.main([*argv, "--steps", "2"])
    info = train_score.main([*argv, "--steps", "3"])  # resumes at step 2, trains one more
    assert info["steps"] == 3
    assert json.loads((tmp_path / "w" / "score" / "training.json").read_text())["device"].startswith("cuda")


def test_the_gpu_memory_budget_does_not_shrink_by_what_a_pass_left_cached(monkeypatch):
    """The blocks a whole-volume pass of S leaves in PyTorch's cache count as free for the next pass's budget."""
    from mixdemo import inference

    monkeypatch.delenv(inference.MEMORY_ENV, raising=False)
    seg = weights.load_model("segmentation", device="cuda")
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    before = inference.memory_budget(device)
    inference.segment_proxies(seg, np.random.default_rng(0).random((1, 144, 192, 160), dtype=np.float32))
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    assert cached > 2**28  # the pass's activations (about 2 GB), kept by the caching allocator
    assert inference.memory_budget(device) > before - 0.5 * 0.8 * cached
