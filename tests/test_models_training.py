"""Networks, Hub-format model folders, weight resolution, and training (single process and DDP)."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mixdemo import weights
from mixdemo.data import CohortError, MixedPatchSampler, load_cohort, load_volumes
from mixdemo.io import save_volume
from mixdemo.metrics import dice_per_class
from mixdemo.mixing import DEFAULT_ALPHA_RANGE, corner_around
from mixdemo.models import SegmentationNet, UnmixingNet, count_parameters
from mixdemo.weights import native_bfloat16

REPO = Path(__file__).resolve().parent.parent
TINY = "4,4,8,8,16,4"


def test_segmentation_net_returns_logits_of_the_final_output():
    net = SegmentationNet(features=(4, 4, 8, 8, 16, 4)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 16, 32, 16))
    assert out.shape == (2, 4, 16, 32, 16)
    with pytest.raises(ValueError, match="6 feature widths"):
        SegmentationNet(features=(4, 4))


def test_unmixing_net_is_conditioned_on_alpha():
    torch.manual_seed(0)
    net = UnmixingNet()
    for p in net.parameters():  # AdaIN starts as identity; perturb so α matters
        torch.nn.init.normal_(p, std=0.1)
    y = torch.softmax(torch.randn(1, 4, 8, 8, 8), 1)
    r = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 8, 8, 8)), 4).permute(0, 4, 1, 2, 3).float()
    a = net(y, r, torch.tensor([0.2]))
    b = net(y, r, torch.tensor([0.8]))
    assert a.shape == (1, 4, 8, 8, 8)
    assert not torch.allclose(a, b)
    both = net(y.expand(2, -1, -1, -1, -1), r.expand(2, -1, -1, -1, -1), torch.tensor([0.2, 0.8]))  # one batch:
    torch.testing.assert_close(both[0], a[0], atol=1e-5, rtol=1e-5)  # each sample with its own α, as alone
    torch.testing.assert_close(both[1], b[0], atol=1e-5, rtol=1e-5)
    assert count_parameters(net) < 200_000  # "small" U-Net
    with pytest.raises(ValueError, match="mixing weights"):
        net(y, r, torch.tensor([[0.2, 0.4, 0.4]]))


def test_three_source_unmixing_net_takes_two_references():
    net = UnmixingNet(n_references=2)
    y = torch.rand(2, 4, 8, 8, 8)
    out = net(y, torch.rand(2, 8, 8, 8, 8), torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]]))
    assert out.shape == (2, 4, 8, 8, 8)


def test_patch_unmixing_net_runs_its_blocks_on_2x2x2_patches():
    """D with ``patch=2``: full-resolution logits from blocks at half resolution, conditioned on α,
    with each voxel's own inputs reaching its output through the per-voxel skip; a quarter of the
    arithmetic of the full-resolution D at about its parameter count."""
    import copy

    torch.manual_seed(0)
    net = UnmixingNet(patch=2)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    net.eval()
    assert net.size_multiple == 4 and UnmixingNet().size_multiple == 2
    y = torch.softmax(torch.randn(2, 4, 16, 12, 8), 1)
    r = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 16, 12, 8)), 4).permute(0, 4, 1, 2, 3).float()
    with torch.no_grad():
        out = net(y, r, torch.tensor([0.2, 0.2]))
        assert out.shape == (2, 4, 16, 12, 8)
        assert not torch.allclose(out, net(y, r, torch.tensor([0.8, 0.8])))
        skip_only = copy.deepcopy(net)  # with the patch path silenced, each voxel's logits are its own inputs'
        torch.nn.init.zeros_(skip_only.out.weight)
        torch.nn.init.zeros_(skip_only.out.bias)
        poked = y.clone()
        poked[:, :, 4, 4, 4] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        changed = (skip_only(poked, r, torch.tensor([0.2, 0.2])) - skip_only(y, r, torch.tensor([0.2, 0.2]))).abs().sum(1) > 0
        assert changed[:, 4, 4, 4].all() and changed.sum() == 2
    assert count_parameters(net) < 200_000
    fast = copy.deepcopy(net).use_channels_last()
    with torch.inference_mode():
        torch.testing.assert_close(fast(y, r, torch.tensor([0.3, 0.7])), net(y, r, torch.tensor([0.3, 0.7])),
                                   rtol=0, atol=1e-4)
    from mixdemo.models import widen_references

    with pytest.raises(ValueError, match="patch 1"):
        widen_references(net, 2)


@pytest.mark.parametrize("patch,voxel_hidden", [(2, 0), (3, 0), (2, 8), (4, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_patch_inference_computes_what_the_convolutions_compute(patch, voxel_hidden, channels_last):
    """D's inference path for ``patch`` > 1 (patches gathered once, matrix products at patch
    resolution; the per-voxel MLP a slab at a time) gives the logits of its convolutions."""
    torch.manual_seed(patch)
    net = UnmixingNet(patch=patch, voxel_hidden=voxel_hidden)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    net.eval()
    if channels_last:
        net.use_channels_last()
    side = 2 * patch
    y = torch.softmax(torch.randn(2, 4, 2 * side, side, 3 * side), 1)
    r = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 2 * side, side, 3 * side)), 4).permute(0, 4, 1, 2, 3).float()
    alphas = torch.tensor([0.25, 0.75])
    with torch.no_grad():
        fused = net(y, r, alphas)
        net.fused_patches = False
        convolutions = net(y, r, alphas)
    assert fused.shape == convolutions.shape == (2, 4, 2 * side, side, 3 * side)
    torch.testing.assert_close(fused, convolutions, rtol=0, atol=1e-4)
    assert not torch.allclose(fused[0], fused[1])  # each sample with its own α


def test_load_model_reference_path_runs_a_patch_d_through_its_convolutions(tmp_path, monkeypatch):
    """``load_model(fast=False)`` is the modules as trained: a D on patches through its convolutions (what
    ONNX Runtime and OpenVINO are given in ``mixdemo.runtimes``), the fast path through its fused inference."""
    from mixdemo.weights import WEIGHTS_DIR_ENV, load_model, write_training_record

    UnmixingNet(patch=2).save_pretrained(tmp_path / "unmixing-px")
    write_training_record(tmp_path / "unmixing-px", {}, "mixdemo.models.UnmixingNet")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    assert load_model("unmixing-px").fused_patches and not load_model("unmixing-px", fast=False).fused_patches


def test_per_voxel_mlp_d_keeps_each_voxel_its_own_nonlinear_path():
    """D with ``voxel_hidden``: with the patch path silenced each voxel's logits depend on its own
    inputs only, nonlinearly and through α; α also changes the output; the option needs patches."""
    import copy

    torch.manual_seed(1)
    net = UnmixingNet(patch=4, voxel_hidden=8)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net.eval()
    assert net.size_multiple == 8
    y = torch.softmax(torch.randn(1, 4, 16, 8, 8), 1)
    r = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 16, 8, 8)), 4).permute(0, 4, 1, 2, 3).float()
    with torch.no_grad():
        assert not torch.allclose(net(y, r, torch.tensor([0.2])), net(y, r, torch.tensor([0.8])))
        local = copy.deepcopy(net)
        torch.nn.init.zeros_(local.out.weight)
        torch.nn.init.zeros_(local.out.bias)
        poked = y.clone()
        poked[:, :, 5, 3, 2] = torch.tensor([0.0, 1.0, 0.0, 0.0])
        alpha = torch.tensor([0.3])
        changed = (local(poked, r, alpha) - local(y, r, alpha)).abs().sum(1) > 0
        assert changed[0, 5, 3, 2] and changed.sum() == 1
        double = local(2 * y, r, alpha) - local.voxel_out.bias.view(1, -1, 1, 1, 1)  # not linear in the input
        assert not torch.allclose(double, 2 * (local(y, r, alpha) - local.voxel_out.bias.view(1, -1, 1, 1, 1)), atol=1e-4)
    with pytest.raises(ValueError, match="patch > 1"):
        UnmixingNet(voxel_hidden=8)


def _with_batch_norm_statistics(net: SegmentationNet) -> SegmentationNet:
    """Random weights and running statistics, so that folding the batch norms is not a no-op."""
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_segmentation_net_computes_monais_forward(channels_last):
    import copy

    net = _with_batch_norm_statistics(SegmentationNet(features=(4, 4, 8, 8, 16, 4)))
    fused = copy.deepcopy(net)
    if channels_last:
        fused.use_channels_last()
    fused.fuse_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
    with torch.inference_mode():
        for shape in ((2, 1, 32, 48, 16), (1, 1, 20, 24, 18)):  # sides of 16 (lean path) and not (MONAI's)
            x = torch.randn(shape)
            torch.testing.assert_close(fused(x), net(x), rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="fused for inference"):
        fused.train()
    with pytest.raises(RuntimeError, match="fused"):
        fused.save_pretrained(Path("/nonexistent"))
    with pytest.raises(RuntimeError, match="eval mode"):
        SegmentationNet(features=(4, 4, 8, 8, 16, 4)).fuse_for_inference()


def _convolution_kernels(fn) -> set[str]:
    """The convolution kernels ``fn()`` runs: oneDNN's, or PyTorch's own (``slow_conv3d``)."""
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key in ("aten::mkldnn_convolution", "aten::slow_conv3d_forward")}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a torch build without oneDNN")
def test_inference_on_the_cpu_sends_every_convolution_to_onednn_with_the_same_outputs():
    """PyTorch gives a one-sample float32 convolution of a small grid to its own kernel, several times slower
    in 3D; the fast path (use_channels_last, as load_model sets it up on the CPU) sends each to oneDNN, for S
    (its fused path included) and D, and training keeps PyTorch's choice."""
    import copy

    torch.manual_seed(0)
    net = _with_batch_norm_statistics(SegmentationNet(features=(4, 4, 8, 8, 16, 4)))
    unmix = UnmixingNet(features=(4, 8)).eval()
    fast_s, fast_d = copy.deepcopy(net).use_channels_last().fuse_for_inference(), copy.deepcopy(unmix).use_channels_last()
    x = torch.randn(1, 1, 16, 16, 16)
    d_in = (torch.softmax(torch.randn(1, 4, 16, 16, 16), 1), torch.zeros(1, 4, 16, 16, 16), torch.tensor([0.4]))
    with torch.inference_mode():
        assert "aten::slow_conv3d_forward" in _convolution_kernels(lambda: net(x))  # PyTorch's choice
        assert _convolution_kernels(lambda: fast_s(x)) == {"aten::mkldnn_convolution"}
        assert _convolution_kernels(lambda: fast_d(*d_in)) == {"aten::mkldnn_convolution"}
        torch.testing.assert_close(fast_s(x), net(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(fast_d(*d_in), unmix(*d_in), rtol=0, atol=1e-5)
    trained = copy.deepcopy(unmix).use_channels_last().train()
    assert "aten::slow_conv3d_forward" in _convolution_kernels(lambda: trained(*d_in).sum().backward())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained.parameters() if p.requires_grad)


def test_bfloat16_segmentation_net_returns_float32_logits_close_to_float32s():
    import copy

    net = _with_batch_norm_statistics(SegmentationNet(features=(4, 4, 8, 8, 16, 4)))
    reduced = copy.deepcopy(net).use_channels_last().fuse_for_inference().use_bfloat16()
    assert next(reduced.parameters()).dtype == torch.bfloat16
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.inference_mode():
        expected, given = net(x), reduced(x)
    assert given.dtype == torch.float32 and given.shape == expected.shape
    scale = expected.abs().max()
    assert (given - expected).abs().max() < 0.05 * scale  # bfloat16's 8-bit mantissa, not another function
    assert (given.argmax(1) == expected.argmax(1)).float().mean() > 0.95
    unfused = copy.deepcopy(net).use_bfloat16()  # MONAI's forward in bfloat16: float32 logits as well
    with torch.inference_mode():
        assert (unfused(x) - expected).abs().max() < 0.05 * scale
    with pytest.raises(RuntimeError, match="bfloat16"):
        unfused.train()
    with pytest.raises(RuntimeError, match="cast for inference"):
        unfused.save_pretrained(Path("/nonexistent"))
    with pytest.raises(RuntimeError, match="eval"):
        SegmentationNet(features=(4, 4, 8, 8, 16, 4)).use_bfloat16()


@pytest.mark.parametrize("patch,voxel_hidden", [(1, 0), (2, 0), (4, 8)])
def test_bfloat16_unmixing_net_returns_float32_logits_close_to_float32s(patch, voxel_hidden):
    """D with its four blocks in bfloat16 (instance-norm statistics in float32) computes D's function to
    bfloat16 rounding on every inference path, each sample of a batch with its own α, and cannot be trained
    or saved so."""
    import copy

    torch.manual_seed(patch)
    net = UnmixingNet(patch=patch, voxel_hidden=voxel_hidden)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    net.eval().use_channels_last()
    reduced = copy.deepcopy(net).use_bfloat16()
    assert reduced.enc1.conv1.weight.dtype == torch.bfloat16 and reduced.embed[0].weight.dtype == torch.float32
    side = 4 * patch
    y = torch.softmax(torch.randn(2, 4, 2 * side, side, 3 * side), 1)
    r = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 2 * side, side, 3 * side)), 4).permute(0, 4, 1, 2, 3)
    alphas = torch.tensor([0.3, 0.45])
    with torch.inference_mode():
        expected, given = net(y, r.float(), alphas), reduced(y, r.to(torch.uint8), alphas)
    assert given.dtype == torch.float32 and given.shape == expected.shape
    assert (given - expected).abs().max() < 0.05 * expected.abs().max()  # bfloat16's 8-bit mantissa
    assert (given.argmax(1) == expected.argmax(1)).float().mean() > 0.95
    assert not torch.allclose(given[0], given[1])
    with pytest.raises(RuntimeError, match="bfloat16"):
        reduced.train()
    with pytest.raises(RuntimeError, match="cast for inference"):
        reduced.save_pretrained(Path("/nonexistent"))
    with pytest.raises(RuntimeError, match="eval"):
        UnmixingNet().use_bfloat16()


def test_adain_in_bfloat16_normalises_each_sample_by_its_own_statistics():
    """The bfloat16 inference path of adaptive instance norm (group norm per sample, float32 statistics) gives the
    float32 path's output on the same bfloat16 input, to bfloat16's rounding of the output, each sample with its
    own statistics and α."""
    from mixdemo.models import AdaIN3d

    torch.manual_seed(0)
    norm = AdaIN3d(6, 3).eval()
    torch.nn.init.normal_(norm.to_scale_shift.weight, std=0.5)
    x = torch.randn(2, 6, 8, 10, 12) * 2 + torch.arange(6.0).view(1, 6, 1, 1, 1)
    x[1] = x[1] * 3 + 4  # the second sample: other statistics
    cond = torch.randn(2, 3)
    reduced = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        expected, given = norm(reduced.float(), cond), norm(reduced, cond)
    assert given.dtype == torch.bfloat16 and given.is_contiguous(memory_format=torch.channels_last_3d)
    assert (given.float() - expected).abs().max() < 0.01 * expected.abs().max()


def test_precision_setting_picks_s_precision_and_refuses_unknown_values(monkeypatch):
    monkeypatch.delenv(weights.PRECISION_ENV, raising=False)  # the default, auto: bfloat16 where the CPU has it
    assert weights.DEFAULT_PRECISION == "auto"
    assert weights.s_precision("cpu") == ("bfloat16" if weights.native_bfloat16() else "float32")
    assert weights.s_precision("cuda") == "float32"  # auto is measured on CPUs only
    monkeypatch.setenv(weights.PRECISION_ENV, "bfloat16")
    assert weights.s_precision("cpu") == "bfloat16"
    monkeypatch.setenv(weights.PRECISION_ENV, "auto")
    assert weights.s_precision("cpu") == ("bfloat16" if weights.native_bfloat16() else "float32")
    monkeypatch.setattr(weights, "native_bfloat16", lambda: False)
    assert weights.s_precision("cpu") == "float32"
    monkeypatch.setenv(weights.PRECISION_ENV, "fp8")
    with pytest.raises(weights.WeightsError, match="MIXDEMO_PRECISION"):
        weights.s_precision("cpu")


def test_bfloat16_asked_for_on_a_cpu_without_it_is_kept_with_a_warning(monkeypatch, caplog):
    """Forced bfloat16 stays what was asked for, but where the CPU would emulate it the log says how slow that is
    (and 'auto' picks float32); on a CPU that has it, or for CUDA, nothing is said."""
    monkeypatch.setenv(weights.UNMIXING_PRECISION_ENV, "bfloat16")
    monkeypatch.setattr(weights, "native_bfloat16", lambda: False)
    with caplog.at_level("WARNING", logger="mixdemo.weights"):
        assert weights.unmixing_precision("cpu") == "bfloat16"
    assert "emulated" in caplog.text and weights.UNMIXING_PRECISION_ENV in caplog.text
    caplog.clear()
    monkeypatch.setattr(weights, "native_bfloat16", lambda: True)
    with caplog.at_level("WARNING", logger="mixdemo.weights"):
        assert weights.unmixing_precision("cpu") == "bfloat16"
        assert weights.unmixing_precision("cuda") == "bfloat16"
    assert caplog.text == ""


def test_load_model_casts_s_and_d_each_to_its_own_precision_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), tmp_path / "segmentation", "mixdemo.models.SegmentationNet")
    UnmixingNet(patch=2).save_pretrained(tmp_path / "unmixing-px")
    weights.write_training_record(tmp_path / "unmixing-px", {}, "mixdemo.models.UnmixingNet")
    monkeypatch.setenv(weights.PRECISION_ENV, "bfloat16")
    monkeypatch.setenv(weights.UNMIXING_PRECISION_ENV, "float32")
    assert weights.load_model("segmentation").compute_dtype == torch.bfloat16
    assert weights.load_model("segmentation", fast=False).compute_dtype == torch.float32  # the reference path
    assert weights.load_model("unmixing-px").compute_dtype == torch.float32  # S's setting is not D's
    monkeypatch.setenv(weights.PRECISION_ENV, "float32")
    monkeypatch.setenv(weights.UNMIXING_PRECISION_ENV, "bfloat16")
    assert weights.load_model("segmentation").compute_dtype == torch.float32
    assert weights.load_model("unmixing-px").compute_dtype == torch.bfloat16
    assert weights.load_model("unmixing-px", fast=False).compute_dtype == torch.float32
    assert weights.load_model("unmixing-px", precision="float32").compute_dtype == torch.float32
    monkeypatch.setenv(weights.UNMIXING_PRECISION_ENV, "half")
    with pytest.raises(weights.WeightsError, match="MIXDEMO_UNMIXING_PRECISION"):
        weights.load_model("unmixing-px")
    monkeypatch.setenv(weights.UNMIXING_PRECISION_ENV, "auto")
    assert weights.unmixing_precision("cuda") == "float32"
    monkeypatch.setattr(weights, "native_bfloat16", lambda: False)
    assert weights.unmixing_precision("cpu") == "float32"


def test_conv_of_concat_is_the_convolution_of_the_concatenation():
    from mixdemo.models import conv_of_concat

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(7, 5, 3, padding=1)
    parts = [torch.randn(2, c, 6, 5, 4) for c in (3, 4)]
    expected = conv(torch.cat(parts, 1))
    given = list(parts)
    with torch.inference_mode():
        torch.testing.assert_close(conv_of_concat(conv, given), expected, rtol=0, atol=1e-5)
    assert given == []  # the parts are released as they are used


def test_channels_last_unmixing_net_computes_the_same_adain():
    import copy

    from mixdemo.models import channel_moments

    torch.manual_seed(0)
    net = UnmixingNet()
    for p in net.parameters():  # AdaIN starts as identity; perturb so γ(α), β(α) matter
        torch.nn.init.normal_(p, std=0.1)
    net.eval()
    fast = copy.deepcopy(net).use_channels_last()
    y = torch.softmax(torch.randn(2, 4, 16, 12, 10), 1)
    r = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 16, 12, 10)), 4).permute(0, 4, 1, 2, 3).float()
    w = torch.tensor([0.3, 0.7])
    with torch.inference_mode():
        torch.testing.assert_close(fast(y, r, w), net(y, r, w), rtol=0, atol=1e-4)
    for shape in [(2, 3, 20, 16, 12), (2, 3, 7, 9, 11)]:  # voxels a multiple of 64, and with a remainder
        x = (torch.randn(*shape) * 0.5 + 4.0).contiguous(memory_format=torch.channels_last_3d)
        mean, var = channel_moments(x)  # an offset mean: E[x²] − mean² must not cancel badly
        ref_var, ref_mean = torch.var_mean(x.double(), dim=(2, 3, 4), correction=0)
        torch.testing.assert_close(mean.double(), ref_mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(var.double(), ref_var, rtol=1e-3, atol=0)


def _save(model, folder: Path, cls: str) -> None:
    model.save_pretrained(folder)
    weights.write_training_record(folder, {"command": "test"}, cls)


def test_model_folder_round_trip_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    net = SegmentationNet(features=(4, 4, 8, 8, 16, 4))
    _save(net, tmp_path / "segmentation", "mixdemo.models.SegmentationNet")
    assert {p.name for p in (tmp_path / "segmentation").iterdir()} >= {"config.json", "model.safetensors", "training.json"}
    assert json.loads((tmp_path / "segmentation" / "config.json").read_text())["features"] == [4, 4, 8, 8, 16, 4]
    loaded = weights.load_model("segmentation", fast=False)
    assert not loaded.training
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    # the inference default: fused, channels-last on the CPU; in float32 here, whatever $MIXDEMO_PRECISION the
    # tests before this one left (``import training`` sets float32; bfloat16 has its own test above)
    fast = weights.load_model("segmentation", precision="float32")
    assert fast.fused and fast.channels_last
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), net.eval()(x), rtol=0, atol=1e-5)
    # corrupt the weights: the checksum in training.json catches it
    path = tmp_path / "segmentation" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="checksum"):
        weights.load_model("segmentation")


def test_a_weights_file_or_config_that_does_not_fit_the_network_is_refused(tmp_path, monkeypatch):
    """The mixin loads non-strictly: a model.safetensors lacking a tensor loaded with that layer at its random start,
    one with a tensor the network lacks loaded without it, and a config.json setting the class does not take (another
    version's, or a typo: ``"nrom"``) was dropped; each a network other than the one saved, without a word."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    folder = tmp_path / "segmentation"
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), folder, "mixdemo.models.SegmentationNet")
    saved, config = load_file(folder / "model.safetensors"), (folder / "config.json").read_text()
    weights.load_model("segmentation", fast=False)  # the control: as saved, it loads
    first = sorted(saved)[0]
    for tensors in ({k: v for k, v in saved.items() if k != first}, {**saved, "extra.weight": saved[first].clone()}):
        save_file(tensors, folder / "model.safetensors")
        weights.write_training_record(folder, {"command": "test"}, "mixdemo.models.SegmentationNet")
        with pytest.raises(weights.WeightsError, match="Could not load the weights"):
            weights.load_model("segmentation", fast=False)
    save_file(saved, folder / "model.safetensors")
    weights.write_training_record(folder, {"command": "test"}, "mixdemo.models.SegmentationNet")
    (folder / "config.json").write_text(json.dumps({**json.loads(config), "nrom": "instance"}))
    with pytest.raises(weights.WeightsError, match="config.json names 'nrom', which SegmentationNet does not take"):
        weights.load_model("segmentation", fast=False)


def test_missing_weights_offline_name_both_places(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(weights.HUB_REPO_ENV, "nobody/nothing-here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsError) as err:
        weights.resolve_model_dir("segmentation")
    assert str(tmp_path) in str(err.value) and "nobody/nothing-here" in str(err.value)
    assert "holds no model folder" in str(err.value)
    UnmixingNet().save_pretrained(tmp_path / "unmixing-mine")  # a misspelt name: the message lists what is there
    with pytest.raises(weights.WeightsError, match="which holds unmixing-mine\\)"):
        weights.resolve_model_dir("unmixing-mnie")


def test_an_unreadable_training_record_is_named_and_leaves_the_others_listed(tmp_path, monkeypatch):
    """A truncated or hand-edited ``training.json`` was a JSONDecodeError traceback from load_model, and from the D
    menu (``unmixing_choices``) whichever folder held it: ``python app.py`` did not start. Now loading names the file,
    and the menu and the server's info leave it out."""
    from mixdemo import server

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), tmp_path / "segmentation", "mixdemo.models.SegmentationNet")
    _save(UnmixingNet(), tmp_path / "unmixing", "mixdemo.models.UnmixingNet")
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), tmp_path / "baseline", "mixdemo.models.SegmentationNet")
    (tmp_path / "baseline" / "training.json").write_text('{"command": "python -m training.tr')
    with pytest.raises(weights.WeightsError, match="baseline/training.json cannot be read"):
        weights.load_model("baseline", fast=False)
    assert [name for name, _ in weights.unmixing_choices()] == [weights.DEFAULT_UNMIXING, "unmixing"]
    (tmp_path / "segmentation" / "training.json").write_text("[]")
    with pytest.raises(weights.WeightsError, match="segmentation/training.json is not a JSON object"):
        weights.load_model("segmentation", fast=False)
    assert server.model_info()["model_sha256"] is None and server.model_classes()


def test_a_model_folder_that_lacks_a_file_is_named_as_broken_and_offline_mode_as_such(tmp_path, monkeypatch):
    """``weights/segmentation`` without its config.json (or its model.safetensors) was reported as "not in the local
    folder ... which holds no model folder" (a WeightsNotFound, so the client fell back to the naive unmixing for
    a broken default D); and under HF_HUB_OFFLINE=1, ``python app.py``'s default, the cause read "the Hub could not
    be reached", which sends the user to their network. Now the folder and its missing file are named, and the
    offline switch."""
    from huggingface_hub import constants

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), tmp_path / "segmentation", "mixdemo.models.SegmentationNet")
    for lost in ("config.json", "model.safetensors"):
        kept = (tmp_path / "segmentation" / lost).read_bytes()
        (tmp_path / "segmentation" / lost).unlink()
        with pytest.raises(weights.WeightsError) as err:
            weights.resolve_model_dir("segmentation")
        assert not isinstance(err.value, weights.WeightsNotFound)
        assert f"{tmp_path / 'segmentation'} lacks {lost}" in str(err.value)
        assert "HF_HUB_OFFLINE=1, so the Hub was not asked" in str(err.value)
        (tmp_path / "segmentation" / lost).write_bytes(kept)
    with pytest.raises(weights.WeightsNotFound, match="HF_HUB_OFFLINE=1, so the Hub was not asked"):
        weights.resolve_model_dir("baseline")


def test_an_unreachable_hub_is_not_retried(tmp_path, monkeypatch):
    """Online but with the Hub unreachable, the weights come from the Hub's local cache only (huggingface_hub
    retried for ~25 s before failing) and the message says the Hub could not be reached; a reachable Hub is asked."""
    import socket

    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked: list[bool] = []

    def download(repo_id, filename, local_files_only=False, **kwargs):
        asked.append(local_files_only)
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)

    def refused(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refused)
    with pytest.raises(weights.WeightsError, match="Hub could not be reached"):
        weights.resolve_model_dir("segmentation")
    assert asked == [True]
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: io.BytesIO())  # answers (closed at once)
    with pytest.raises(weights.WeightsError, match="LocalEntryNotFoundError"):
        weights.resolve_model_dir("segmentation")
    assert asked == [True, False]


def test_weights_come_from_the_local_folder_first_then_from_the_hub_repo_the_environment_names(tmp_path, monkeypatch):
    """No local folder: each of the model's files from ``$MIXDEMO_HUB_REPO`` (its ``<name>/`` subfolder, the layout
    ``training.publish`` uploads; the default repo when the variable is empty), loaded from the folder they land in.
    A local folder wins: the Hub is not asked. Here the Hub is a stand-in: nothing is downloaded."""
    import huggingface_hub

    net = SegmentationNet(features=(4, 4, 8, 8, 16, 4))
    _save(net, tmp_path / "hub" / "segmentation", "mixdemo.models.SegmentationNet")
    asked: list[tuple[str, str]] = []

    def download(repo_id, filename, local_files_only=False, **kwargs):
        asked.append((repo_id, filename))
        cached = tmp_path / "snapshot" / filename
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "hub" / filename, cached)
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "local"))
    monkeypatch.setenv(weights.HUB_REPO_ENV, "someone/their-weights")
    loaded = weights.load_model("segmentation", fast=False)
    assert asked == [("someone/their-weights", f"segmentation/{f}") for f in weights.MODEL_FILES]
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert weights.resolve_model_dir("segmentation") == tmp_path / "snapshot" / "segmentation"
    monkeypatch.setenv(weights.HUB_REPO_ENV, "")
    asked.clear()
    weights.resolve_model_dir("segmentation")
    assert {repo for repo, _ in asked} == {weights.DEFAULT_HUB_REPO}
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), tmp_path / "local" / "segmentation",
          "mixdemo.models.SegmentationNet")
    asked.clear()
    assert weights.resolve_model_dir("segmentation") == tmp_path / "local" / "segmentation" and asked == []


def test_server_info_describes_the_s_it_serves_from_the_hub(tmp_path, monkeypatch):
    """Without a local S, the server serves the Hub's, but ``server_info`` read only the local folder's record: it
    named the phantoms' classes, the default grid and no checksum, whatever the Hub's S was trained on. It now reads
    the record beside the S it loads, from the Hub's local cache (no request of its own)."""
    import huggingface_hub

    from mixdemo import server

    net = SegmentationNet(features=(4, 4, 8, 8, 16, 4), num_classes=3)
    net.save_pretrained(tmp_path / "hub" / "segmentation")
    weights.write_training_record(tmp_path / "hub" / "segmentation",
                                  {"command": "test", "classes": ["background", "lesion", "oedema"], "steps": 7},
                                  "mixdemo.models.SegmentationNet")
    sha = weights.read_training_record(tmp_path / "hub" / "segmentation")["sha256"]
    asked: list[bool] = []

    def download(repo_id, filename, local_files_only=False, **kwargs):
        asked.append(local_files_only)
        cached = tmp_path / "snapshot" / filename
        if not local_files_only:
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / "hub" / filename, cached)
        if not cached.exists():
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(weights, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "local"))
    assert weights.served_model_dir("segmentation") is None and set(asked) == {True}  # not cached yet: not fetched
    assert server.model_info()["model_sha256"] is None
    weights.load_model("segmentation", fast=False)  # as the server loads it: from the Hub, into its cache
    asked.clear()
    info = server.model_info()
    assert info["classes"] == ["background", "lesion", "oedema"] and server.model_classes() == info["classes"]
    assert info["model_sha256"] == sha and info["model_steps"] == 7 and set(asked) == {True}


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory) -> Path:
    """Three subjects of 32³ blocky volumes in the cohort layout."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for s in range(3):
        labels = np.zeros((32, 32, 32), np.uint8)
        labels[4:28, 4:28, 4:28] = 1
        labels[8 + s : 24, 8:24, 8:24] = 2
        labels[14:18, 14:18, 12 + s : 20] = 3
        image = np.choose(labels, [0.0, 0.6, 1.0, 0.2]).astype(np.float32) + rng.normal(0, 0.01, labels.shape).astype(np.float32)
        image[labels == 0] = 0
        folder = root / f"s{s}_scan-0"
        folder.mkdir()
        save_volume(image, np.eye(4), folder / "t1.nii.gz")
        save_volume(labels, np.eye(4), folder / "seg.nii.gz", dtype=np.uint8)
    (root / "split.json").write_text(json.dumps({"train": ["s0", "s1", "s2"], "test": []}))
    return root


def test_sampler_mixes_target_and_reference_of_other_subjects(tiny_cohort):
    vols = load_volumes(load_cohort(tiny_cohort).split("train"))
    batch = MixedPatchSampler(vols, patch_size=16, alpha_range=(0.3, 0.7), seed=0).batch(3)
    assert batch.x_mix.shape == (3, 1, 16, 16, 16) and batch.y_mix.shape == (3, 4, 16, 16, 16)
    torch.testing.assert_close(batch.y_mix.sum(1), torch.ones(3, 16, 16, 16))  # Eq. 3 stays a distribution
    alpha = batch.weights[:, 0]
    assert torch.all((alpha >= 0.3) & (alpha <= 0.7))
    torch.testing.assert_close(batch.weights.sum(1), torch.ones(3))
    a = alpha.view(3, 1, 1, 1, 1)
    y_target = torch.nn.functional.one_hot(batch.y_target, 4).permute(0, 4, 1, 2, 3).float()
    torch.testing.assert_close(batch.y_mix, a * y_target + (1 - a) * batch.y_ref)  # Eq. 3: α on the target's labels
    assert not torch.allclose(batch.y_mix, (1 - a) * y_target + a * batch.y_ref)  # α ≠ 0.5: swapped weights differ
    plain = MixedPatchSampler(vols, patch_size=16, mixed=False, seed=0).batch(2)
    torch.testing.assert_close(plain.x_mix, plain.x_target)


def test_sampler_references_come_from_other_subjects_than_the_target_s():
    """A subject's other scan is never its reference (scans of one subject look alike), and Eq. 2 weighs the
    target by α: each reference recovered from the proxy is a scan of another subject."""
    from mixdemo.data import Volume

    subjects = ["a", "a", "b", "b", "c"]
    volumes = [Volume(f"{s}_{i}", s, np.full((8, 8, 8), i + 1.0, np.float32), np.ones((8, 8, 8), np.uint8), np.eye(4))
               for i, s in enumerate(subjects)]
    sampler = MixedPatchSampler(volumes, patch_size=8, alpha_range=(0.3, 0.5), seed=1)
    for _ in range(100):
        batch = sampler.batch(1)
        alpha = batch.weights[0, 0].item()
        target = round(batch.x_target[0].mean().item()) - 1
        reference = (batch.x_mix[0] - alpha * batch.x_target[0]) / (1 - alpha)  # Eq. 2 solved for the reference
        assert torch.allclose(reference, reference.mean(), atol=1e-4)  # one scan's constant: the weights are right
        assert subjects[round(reference.mean().item()) - 1] != subjects[target]


def _train_cmd(cohort: Path, out: Path, run: Path, steps: int, extra: list[str] = ()) -> list[str]:
    return ["--data", str(cohort), "--steps", str(steps), "--batch-size", "2", "--patch-size", "16",
            "--features", TINY, "--out", str(out), "--run-dir", str(run), "--ckpt-every", "2", *extra]


def test_training_writes_hub_folders_and_resumes(tiny_cohort, tmp_path, capsys):
    from training import train

    out, run = tmp_path / "w", tmp_path / "run"
    train.main(_train_cmd(tiny_cohort, out, run, 3))
    assert (out / "segmentation" / "model.safetensors").exists() and (out / "unmixing" / "model.safetensors").exists()
    record = json.loads((out / "segmentation" / "training.json").read_text())
    assert record["steps"] == 3 and record["sha256"]
    log = (run / "train.log").read_text().splitlines()
    assert log[0].startswith("step\tloss") and log[-1].startswith("3\t")
    train.main(_train_cmd(tiny_cohort, out, run, 5, ["--batch-size", "3"]))  # resumes at step 3, runs 2 more
    assert (run / "train.log").read_text().splitlines()[-1].startswith("5\t")
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 5
    sessions = json.loads((out / "segmentation" / "training.json").read_text())["sessions"]
    assert [(s["from_step"], s["to_step"], s["batch_size"]) for s in sessions] == [(0, 3, 2), (3, 5, 3)]  # both legs
    assert "--batch-size 3" in sessions[1]["command"]
    capsys.readouterr()
    train.main(_train_cmd(tiny_cohort, out, run, 5))  # a finished run: nothing to train, and it says so
    assert "has run all --steps 5: nothing to train" in capsys.readouterr().out
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 5


def test_a_stopped_run_resumes_with_the_logs_and_the_validations_of_its_checkpoint(tiny_cohort, tmp_path, monkeypatch):
    """A run stopped after its last checkpoint: each validation checkpoints too (best.pt may hold that step's weights,
    and the resume must know it), and the resume drops the log rows past its checkpoint, whose steps it trains
    again; a new run (no checkpoint) starts both logs afresh."""
    from training import train

    out, run = tmp_path / "w", tmp_path / "run"
    run.mkdir()
    for name in ("train.log", "validation.log"):  # left by an attempt stopped before its first checkpoint
        (run / name).write_text("step\tloss\n5\t9.9\n")
    argv = _train_cmd(tiny_cohort, out, run, 12, ["--mode", "baseline", "--val-subjects", "1", "--val-every", "3",
                                                  "--ckpt-every", "100"])
    real_step, calls = train.training_step, []

    def stopped_in_step_11(*args):
        calls.append(args)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train, "training_step", stopped_in_step_11)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    first_column = lambda name: [line.split("\t")[0] for line in (run / name).read_text().splitlines()]  # noqa: E731
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 9 and [h[0] for h in state["validation"]] == [3, 6, 9]
    assert first_column("validation.log") == ["step", "3", "6", "9"] and first_column("train.log") == ["step", "10"]
    monkeypatch.setattr(train, "training_step", real_step)
    train.main(argv)  # resumes at step 9
    assert first_column("train.log") == ["step", "10", "12"]  # step 10 once, as trained by the resume
    assert first_column("validation.log") == ["step", "3", "6", "9", "12"]


def _lesioned_volumes(n: int = 3) -> list:
    """Volumes whose label maps are mostly class 1 with a 2³ block of class 2 (a small lesion)."""
    from mixdemo.data import Volume

    volumes = []
    for s in range(n):
        labels = np.zeros((24, 24, 24), np.uint8)
        labels[2:22, 2:22, 2:22] = 1
        labels[4 + s : 6 + s, 10:12, 10:12] = 2
        volumes.append(Volume(f"s{s}", f"s{s}", labels.astype(np.float32), labels, np.eye(4)))
    return volumes


def test_class_balanced_patches_centre_on_a_small_class_as_often_as_on_a_large_one():
    volumes = _lesioned_volumes()
    lesion_share = {}
    for centres in ("labels", "classes"):
        sampler = MixedPatchSampler(volumes, patch_size=4, mixed=False, patch_centres=centres, seed=0)
        centred = [sampler.batch(1).y_target[0, 2, 2, 2].item() for _ in range(400)]  # the voxel each patch centres on
        lesion_share[centres] = centred.count(2) / len(centred)
        assert set(centred) <= {1, 2}
    assert lesion_share["labels"] < 0.02  # 8 of 8,000 labelled voxels
    assert 0.4 < lesion_share["classes"] < 0.6  # one class of two


def test_label_centred_patches_draw_as_they_did_before_class_balance():
    """The default centring draws the voxels it drew when the shipped weights were trained (flat order): the
    same seed gives the same corners as an index of every labelled voxel in flat order."""
    volumes = _lesioned_volumes()
    sampler = MixedPatchSampler(volumes, patch_size=4, mixed=False, seed=3)
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = int(rng.integers(len(volumes)))
        labelled = np.flatnonzero(volumes[t].labels)
        expected = corner_around(np.unravel_index(labelled[rng.integers(len(labelled))], (24,) * 3), (24,) * 3, 4)
        assert sampler._corner(int(sampler.rng.integers(len(volumes)))) == expected


def test_patch_centres_are_recorded_and_a_run_resumes_only_with_its_own(tiny_cohort, tmp_path):
    from training import train

    out, run = tmp_path / "w", tmp_path / "run"
    train.main(_train_cmd(tiny_cohort, out, run, 2, ["--mode", "baseline", "--patch-centres", "classes"]))
    assert json.loads((out / "baseline" / "training.json").read_text())["patch_centres"] == "classes"
    with pytest.raises(SystemExit, match="patch_centres: 'classes' → the cohort's default"):
        train.main(_train_cmd(tiny_cohort, out, run, 3, ["--mode", "baseline"]))
    plain = tmp_path / "plain"
    train.main(_train_cmd(tiny_cohort, out, plain, 2, ["--mode", "baseline"]))
    assert json.loads((out / "baseline" / "training.json").read_text())["patch_centres"] == "labels"
    train.main(_train_cmd(tiny_cohort, out, plain, 3, ["--mode", "baseline", "--patch-centres", "labels"]))  # the default
    state = torch.load(plain / "checkpoint.pt", weights_only=False)
    del state["settings"]["patch_centres"]  # saved before the centres were recorded: read as the layout's
    torch.save(state, plain / "checkpoint.pt")
    train.main(_train_cmd(tiny_cohort, out, plain, 4, ["--mode", "baseline"]))
    assert torch.load(plain / "checkpoint.pt", weights_only=False)["step"] == 4


def test_paired_views_mix_one_target_twice_with_one_alpha_and_disjoint_references(tiny_cohort):
    vols = load_volumes(load_cohort(tiny_cohort).split("train"))
    paired = MixedPatchSampler(vols, patch_size=16, alpha_range=(0.3, 0.7), seed=4, views=2).batch(3)
    assert paired.x_mix.shape == (6, 1, 16, 16, 16)
    for first, second in ((0, 1), (2, 3), (4, 5)):
        torch.testing.assert_close(paired.x_target[first], paired.x_target[second])
        assert torch.equal(paired.y_target[first], paired.y_target[second])
        assert paired.weights[first, 0] == paired.weights[second, 0]  # one α
        alpha = paired.weights[first, 0]
        refs = [(paired.x_mix[i] - alpha * paired.x_target[i]) / (1 - alpha) for i in (first, second)]  # Eq. 2
        for ref in refs:  # each the patch of another subject than the target (its own noise)
            assert (ref - paired.x_target[first]).abs().max() > 0.02
        assert (refs[0] - refs[1]).abs().max() > 0.02  # and of two different ones
    single = MixedPatchSampler(vols, patch_size=16, alpha_range=(0.3, 0.7), seed=4).batch(1)
    torch.testing.assert_close(paired.x_mix[0], single.x_mix[0])  # the first mix is drawn as without pairs
    with pytest.raises(ValueError, match="3 subjects or more"):
        MixedPatchSampler(vols[:2], patch_size=16, seed=0, views=2)
def test_paired_views_take_their_references_from_subjects_neither_the_target_nor_the_other_mix_holds():
    """Scans, not subjects, are drawn: a subject's second scan is never the other mix's reference."""
    from mixdemo.data import Volume

    subjects = ["a", "a", "b", "c", "c", "d"]  # a and c have two scans each
    volumes = [Volume(f"{s}_{i}", s, np.full((8, 8, 8), i + 1.0, np.float32), np.ones((8, 8, 8), np.uint8), np.eye(4))
               for i, s in enumerate(subjects)]
    sampler = MixedPatchSampler(volumes, patch_size=8, alpha_range=(0.3, 0.5), seed=0, views=2)
    for _ in range(100):
        batch = sampler.batch(1)
        alpha = batch.weights[0, 0].item()
        target = subjects[round(batch.x_target[0].mean().item()) - 1]
        refs = [subjects[round(((batch.x_mix[i] - alpha * batch.x_target[i]) / (1 - alpha)).mean().item()) - 1]
                for i in (0, 1)]  # each reference's scan from its constant value (Eq. 2)
        assert target not in refs and refs[0] != refs[1]
    with pytest.raises(ValueError, match="unmixed"):
        MixedPatchSampler(volumes, patch_size=8, mixed=False, seed=0, views=2)


def test_consistency_loss_is_the_squared_distance_of_paired_probabilities():
    from training.train import consistency_loss

    logits = torch.randn(2, 4, 3, 3, 3)
    assert consistency_loss(torch.cat([logits[:1], logits[:1]])).item() == 0.0
    probs = torch.softmax(logits, dim=1)
    expected = ((probs[0] - probs[1]) ** 2).sum(0).mean()
    torch.testing.assert_close(consistency_loss(logits), expected)
    far = torch.zeros(2, 4, 1, 1, 1)
    far[0, 0], far[1, 1] = 50.0, 50.0  # certain of two different classes: distance 1² + 1²
    torch.testing.assert_close(consistency_loss(far), torch.tensor(2.0))
    a, b = logits[:1], logits[1:]
    assert consistency_loss(torch.cat([a, a, b, b])).item() == 0.0  # pairs are consecutive samples,
    assert consistency_loss(torch.cat([a, b, a, b])).item() > 0.1  # not the two halves of the batch


def test_consistency_trains_on_pairs_logs_its_term_and_resumes_only_with_its_weight(tiny_cohort, tmp_path, monkeypatch):
    from training import train

    out, run = tmp_path / "w", tmp_path / "run"
    seen = []
    real_step = train.training_step
    monkeypatch.setattr(train, "training_step", lambda ddp, optim, batch, *a: seen.append((batch, a)) or
                        real_step(ddp, optim, batch, *a))
    train.main(_train_cmd(tiny_cohort, out, run, 2, ["--consistency", "2"]))
    for batch, (*_, weight) in seen:  # --batch-size 2: two targets, each mixed twice, consecutively
        assert weight == 2.0 and batch.x_mix.shape[0] == 4
        assert torch.equal(batch.x_target[0::2], batch.x_target[1::2]) and not torch.equal(batch.x_mix[0::2], batch.x_mix[1::2])
    assert json.loads((out / "unmixing" / "training.json").read_text())["consistency"] == 2.0
    card = weights.write_model_card(out / "unmixing", title="t", summary="s", sections={})
    assert "consistency weight 2 (each target mixed twice, so 2 × 2 mixes a step)" in card.read_text()
    header, *rows = (run / "train.log").read_text().splitlines()
    assert header.split("\t")[4] == "loss_consistency" and float(rows[-1].split("\t")[4]) > 0
    with pytest.raises(SystemExit, match="consistency: 2.0 → off"):
        train.main(_train_cmd(tiny_cohort, out, run, 3))
    with pytest.raises(SystemExit, match="--mode baseline trains no D"):
        train.main(_train_cmd(tiny_cohort, out, tmp_path / "b", 1, ["--mode", "baseline", "--consistency", "1"]))
    with pytest.raises(SystemExit, match="a finite number 0 or more"):
        train.main(_train_cmd(tiny_cohort, out, tmp_path / "b", 1, ["--consistency", "nan"]))
    with pytest.raises(CohortError, match="holds 3 subject.*needs 5: --consistency mixes each target twice"):
        train.main(_train_cmd(tiny_cohort, out, tmp_path / "b", 1, ["--consistency", "1", "--n-references", "2"]))
    plain = tmp_path / "plain"
    train.main(_train_cmd(tiny_cohort, out, plain, 2))
    assert json.loads((out / "unmixing" / "training.json").read_text())["consistency"] == 0.0
    state = torch.load(plain / "checkpoint.pt", weights_only=False)
    del state["settings"]["consistency"]  # saved before the option existed: read as off
    torch.save(state, plain / "checkpoint.pt")
    train.main(_train_cmd(tiny_cohort, out, plain, 3))
    assert torch.load(plain / "checkpoint.pt", weights_only=False)["step"] == 3


def test_precise_bn_draws_patches_centred_as_the_model_was_trained(tiny_cohort, monkeypatch):
    """training.precise_bn's patches follow the training record's centres (the layout's for an older record)."""
    from training import precise_bn

    seen = []
    real = precise_bn.MixedPatchSampler
    monkeypatch.setattr(precise_bn, "MixedPatchSampler", lambda *a, **kw: seen.append(kw["patch_centres"]) or real(*a, **kw))
    cohort = load_cohort(tiny_cohort)
    for record in ({"mode": "baseline", "patch_centres": "classes"}, {"mode": "baseline"}):
        assert len(list(precise_bn.training_batches(record, cohort, 2, 16, seed=0))) == 2
    assert seen == ["classes", "labels"]


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tiny_cohort, tmp_path):
    """Another cohort, other widths, or fewer --steps than the checkpoint has run end the command with a message
    naming why; the checkpoint is left as it was."""
    from training import train

    out, run = tmp_path / "w", tmp_path / "run"
    train.main(_train_cmd(tiny_cohort, out, run, 2))
    other = tmp_path / "other"
    shutil.copytree(tiny_cohort, other)
    with pytest.raises(SystemExit, match="data: .*other"):
        train.main(_train_cmd(other, out, run, 4))
    with pytest.raises(SystemExit, match="unmix_features: \\[16, 32\\] → \\[4, 8\\]"):
        train.main(_train_cmd(tiny_cohort, out, run, 4, ["--unmix-features", "4,8"]))
    with pytest.raises(SystemExit, match="at step 2, past --steps 1"):
        train.main(_train_cmd(tiny_cohort, out, run, 1))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2
    del state["settings"]  # a checkpoint from before settings were recorded: its networks' shapes still are checked
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(SystemExit, match="networks of another shape"):
        train.main(_train_cmd(tiny_cohort, out, run, 4, ["--unmix-features", "4,8"]))


def test_a_checkpoint_resumes_only_on_the_cohort_it_trained_on(tiny_cohort, tmp_path):
    """The same --data path with other contents (a subject moved out of training, or other classes) is refused
    naming what changed; the same contents resume; a checkpoint from before the cohort was recorded is trusted."""
    from training import train

    data, out, run = tmp_path / "data", tmp_path / "w", tmp_path / "run"
    shutil.copytree(tiny_cohort, data)
    train.main(_train_cmd(data, out, run, 2))
    assert torch.load(run / "checkpoint.pt", weights_only=False)["cohort"] == {
        "layout": "mixdemo", "classes": ["background", "GM", "WM", "CSF"], "train_subjects": ["s0", "s1", "s2"]}
    split = json.loads((data / "split.json").read_text())
    (data / "split.json").write_text(json.dumps({"train": ["s0", "s1"], "test": ["s2"]}))
    with pytest.raises(SystemExit, match=r"trained on another cohort than --data holds now \(training subjects gone: s2\)"):
        train.main(_train_cmd(data, out, run, 4))
    (data / "split.json").write_text(json.dumps(split | {"classes": ["background", "A", "B", "C"]}))
    with pytest.raises(SystemExit, match=r"classes: \['background', 'GM', 'WM', 'CSF'\] → \['background', 'A', 'B', 'C'\]"):
        train.main(_train_cmd(data, out, run, 4))
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 2  # left as it was
    (data / "split.json").write_text(json.dumps({"train": ["s0", "s1"], "test": ["s2"]}))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    del state["cohort"]  # saved before the cohort was recorded: trusted
    torch.save(state, run / "checkpoint.pt")
    train.main(_train_cmd(data, out, run, 3))
    assert torch.load(run / "checkpoint.pt", weights_only=False)["cohort"]["train_subjects"] == ["s0", "s1"]


def test_scans_on_other_grids_are_named(tiny_cohort, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_cohort, mixed)
    folder = mixed / "s9_scan-0"
    folder.mkdir()
    labels = np.zeros((30, 32, 32), np.uint8)
    labels[8:20, 8:24, 8:24] = 2
    save_volume(labels.astype(np.float32), np.eye(4), folder / "t1.nii.gz")
    save_volume(labels, np.eye(4), folder / "seg.nii.gz", dtype=np.uint8)
    with pytest.raises(CohortError, match=r"\(32, 32, 32\): 3 scan\(s\), e\.g\. s0_scan-0.*\(30, 32, 32\): 1 scan\(s\), e\.g\. s9_scan-0"):
        load_volumes(load_cohort(mixed).records)


@pytest.mark.parametrize("mode, train_subjects", [("private", ["s0"]), ("baseline", [])])
def test_a_training_split_too_small_to_train_is_a_cohort_error(tiny_cohort, tmp_path, mode, train_subjects):
    from training import train

    small = tmp_path / "small"
    shutil.copytree(tiny_cohort, small)
    (small / "split.json").write_text(json.dumps({"train": train_subjects, "test": ["s2"]}))
    with pytest.raises(CohortError, match=f"holds {len(train_subjects)} subject.*training needs"):
        train.main(_train_cmd(small, tmp_path / "w", tmp_path / "run", 2, ["--mode", mode]))


def test_a_training_split_too_small_without_a_split_json_says_where_its_subjects_went(tiny_cohort, tmp_path):
    from training import train

    two = tmp_path / "two"
    for name in ("s0_scan-0", "s1_scan-0"):
        shutil.copytree(tiny_cohort / name, two / name)
    with pytest.raises(CohortError, match=r"holds 1 subject.*It has no split.json, so the default split put a quarter "
                                          r"\(at least one\) of its 2 subject\(s\) in the test split"):
        train.main(_train_cmd(two, tmp_path / "w", tmp_path / "run", 2))


def test_a_patch_larger_than_the_grid_is_refused_with_the_largest_that_fits(tiny_cohort, tmp_path):
    from training import train

    argv = _train_cmd(tiny_cohort, tmp_path / "w", tmp_path / "run", 1)
    argv[argv.index("--patch-size") + 1] = "48"
    with pytest.raises(SystemExit, match="--patch-size 48 does not fit the cohort's grid 32×32×32: give 32 or less"):
        train.main(argv)
    argv[argv.index("--patch-size") + 1], argv[argv.index("--batch-size") + 1] = "16", "1"
    with pytest.raises(SystemExit, match="leaves 1 voxel.*--batch-size 2 or more, or --patch-size 32 or more"):
        train.main(argv)  # batch norm would raise deep in the first step
    argv[argv.index("--patch-size") + 1], argv[argv.index("--batch-size") + 1] = "8", "4"
    with pytest.raises(SystemExit) as stop:  # no batch size helps: U-Net++ halves a patch 4 times
        train.main(argv)
    assert "--patch-size 8 is smaller than 16" in str(stop.value) and "--batch-size 2 or more" not in str(stop.value)


@pytest.mark.parametrize("extra, says", [
    (["--alpha-range", "0.9", "0.1"], "--alpha-range"),  # was a traceback at the first step
    (["--alpha-range", "0.5", "1.5"], "--alpha-range"),  # was trained on, α > 1 weighing the reference negatively
    (["--n-references", "0"], "--n-references"),
    (["--unmix-patch", "0"], "--unmix-patch"),
    (["--unmix-patch", "3"], "--patch-size 16 is not a multiple of 6"),  # D's 3³ patches, then a pooling
    (["--patch-size", "21"], "--patch-size 21 is not a multiple of 2"),
])
def test_options_that_cannot_train_are_refused_before_the_cohort_loads(tiny_cohort, tmp_path, capsys, extra, says):
    from training import train

    with pytest.raises(SystemExit) as stop:
        train.main(_train_cmd(tiny_cohort, tmp_path / "w", tmp_path / "run", 1, extra))
    assert says in f"{stop.value.code} {capsys.readouterr().err}" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("module", ["evaluate", "calibrate"])
def test_an_alpha_range_outside_what_d_unmixes_is_a_usage_error(module, capsys):
    import importlib

    parse = importlib.import_module(f"training.{module}").parse_args
    base = ["--out", "unused"] if module == "calibrate" else []
    for bad in (["0.6", "0.2"], ["0.5", "1.5"], ["0", "0.5"]):
        with pytest.raises(SystemExit) as stop:
            parse([*base, "--alpha-range", *bad])
        assert stop.value.code == 2 and "--alpha-range" in capsys.readouterr().err


@pytest.mark.parametrize("precision, channels_last", [
    ("float32", False), ("float32", True), ("bfloat16", False),
    # the layout of a bfloat16 convolution's output is oneDNN's choice: an emulating CPU returns it contiguous
    pytest.param("bfloat16", True, marks=pytest.mark.skipif(not native_bfloat16(), reason="no bfloat16 instructions"))])
def test_training_step_runs_the_forward_in_the_precision_and_layout_asked_for(tiny_cohort, precision, channels_last):
    from training.train import EndToEnd, training_step

    vols = load_volumes(load_cohort(tiny_cohort).split("train"))
    batch = MixedPatchSampler(vols, patch_size=16, alpha_range=(0.3, 0.5), seed=0).batch(2)
    model = EndToEnd(SegmentationNet(features=[int(v) for v in TINY.split(",")]), UnmixingNet(features=(4, 8))).train()
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    seen = {}
    first_conv = next(m for m in model.seg.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_hook(lambda m, i, o: seen.update(
        dtype=o.dtype, channels_last=o.is_contiguous(memory_format=torch.channels_last_3d) and not o.is_contiguous()))
    before = [p.detach().clone() for p in model.parameters()]
    untrained = copy.deepcopy(model)  # for the consistency step below: a first step's weights, not this one's
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, l_seg, l_unmix, _ = training_step(model, optim, batch, torch.device("cpu"), precision, channels_last)
    assert seen == {"dtype": getattr(torch, precision), "channels_last": channels_last}
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isclose(loss, l_seg + l_unmix)
    pairs = MixedPatchSampler(vols, patch_size=16, alpha_range=(0.3, 0.5), seed=0, views=2).batch(1)
    loss, l_seg, l_unmix, l_cons = training_step(untrained, torch.optim.Adam(untrained.parameters(), lr=1e-3), pairs,
                                                 torch.device("cpu"), precision, channels_last, 1.5)
    assert l_cons.dtype == torch.float32 and l_cons > 0 and torch.isclose(loss, l_seg + l_unmix + 1.5 * l_cons)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed precision: the weights stay float32
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > len(before) // 2  # S and D both stepped


def test_training_step_trains_s_on_the_mixed_labels_and_d_on_the_targets_labels(tiny_cohort):
    """Eq. 3: S sees the proxies and its loss is against their mixed one-hot labels, never the target's own; D's
    loss is against the target's labels. A frozen S (``--mode unmixing``) leaves D's loss alone."""
    from monai.losses import DiceCELoss

    from training.train import EndToEnd, training_step

    vols = load_volumes(load_cohort(tiny_cohort).split("train"))
    batch = MixedPatchSampler(vols, patch_size=16, alpha_range=(0.2, 0.4), seed=0).batch(2)
    torch.manual_seed(0)
    for frozen in (False, True):
        model = EndToEnd(SegmentationNet(features=[int(v) for v in TINY.split(",")]), UnmixingNet(features=(4, 8)),
                         freeze_seg=frozen).train()
        with torch.no_grad():  # the same weights and batch statistics as the step's forward
            logits_mix, logits_target = copy.deepcopy(model)(batch.x_mix, batch.y_ref, batch.weights)
        seen = []
        model.seg.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].clone()))
        optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        loss, l_seg, l_unmix, _ = training_step(model, optim, batch, torch.device("cpu"))
        assert torch.equal(seen[0], batch.x_mix)
        y_target = torch.nn.functional.one_hot(batch.y_target, 4).permute(0, 4, 1, 2, 3).float()
        dice_ce = DiceCELoss(softmax=True)
        torch.testing.assert_close(l_seg, dice_ce(logits_mix, batch.y_mix))
        torch.testing.assert_close(l_unmix, dice_ce(logits_target, y_target))
        assert abs(l_seg - dice_ce(logits_mix, y_target)) > 1e-4  # the two label maps give other losses
        assert abs(l_unmix - dice_ce(logits_target, batch.y_mix)) > 1e-4
        torch.testing.assert_close(loss, l_unmix if frozen else l_seg + l_unmix)


def test_the_consistency_weight_scales_the_gradient_of_its_term(tiny_cohort):
    """--consistency W adds W × the term to what is back-propagated: D's gradient moves linearly in W."""
    from training.train import EndToEnd, training_step

    vols = load_volumes(load_cohort(tiny_cohort).split("train"))
    pairs = MixedPatchSampler(vols, patch_size=16, alpha_range=(0.3, 0.5), seed=0, views=2).batch(1)
    torch.manual_seed(0)
    model = EndToEnd(SegmentationNet(features=[int(v) for v in TINY.split(",")]), UnmixingNet(features=(4, 8))).train()
    grads = {}
    for weight in (0.0, 1.0, 2.0):
        trained = copy.deepcopy(model)
        optim = torch.optim.SGD(trained.parameters(), lr=0.0)
        training_step(trained, optim, pairs, torch.device("cpu"), consistency=weight)
        grads[weight] = torch.cat([p.grad.flatten() for p in trained.unmix.parameters()])
    step = grads[1.0] - grads[0.0]
    assert step.abs().max() > 1e-5  # the term reaches D's weights
    torch.testing.assert_close(grads[2.0] - grads[0.0], 2 * step, rtol=0, atol=1e-2 * step.abs().max().item())


def test_convolutions_on_grids_smaller_than_their_kernel_train_in_float32_with_finite_gradients():
    """CPU bfloat16 convolutions on 2³ grids return broken weight gradients about every other step here (torch 2.13,
    oneDNN); training.train runs those in float32 and leaves the others to autocast."""
    from training.train import tiny_grid_convolutions_in_float32

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    assert tiny_grid_convolutions_in_float32(conv) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 16, 4, 4, 4)).dtype == torch.bfloat16
        assert conv(torch.randn(1, 16, 2, 4, 4)).dtype == torch.float32
    assert conv(torch.randn(1, 16, 2, 2, 2)).dtype == torch.float32
    for _ in range(30):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(torch.randn(4, 16, 2, 2, 2))
        conv.zero_grad()
        y.backward(torch.randn(y.shape))
        assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().max() < 1e4


def test_mixed_precision_training_is_recorded_and_exports_plain_float32_weights(tiny_cohort, tmp_path):
    from training import train

    out = tmp_path / "w"
    train.main(_train_cmd(tiny_cohort, out, tmp_path / "run", 3, ["--precision", "bfloat16", "--channels-last"]))
    for name in ("segmentation", "unmixing"):
        record = json.loads((out / name / "training.json").read_text())
        assert record["precision"] == "bfloat16" and record["channels_last"] is True
        card = weights.write_model_card(out / name, title="t", summary="s", sections={})
        assert "mixed precision (bfloat16 forward)" in card.read_text()
    seg = SegmentationNet.from_pretrained(out / "segmentation")
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in seg.state_dict().values() if t.is_floating_point())
    losses = [float(line.split("\t")[1]) for line in (tmp_path / "run" / "train.log").read_text().splitlines()[1:]]
    assert losses and all(np.isfinite(losses))
    plain = tmp_path / "plain"
    train.main(_train_cmd(tiny_cohort, plain, tmp_path / "run-plain", 1))
    record = json.loads((plain / "segmentation" / "training.json").read_text())
    assert record["precision"] == "float32" and record["channels_last"] is False
    card = weights.write_model_card(plain / "segmentation", title="t", summary="s", sections={})
    assert "mixed precision" not in card.read_text()


def test_throughput_times_every_precision_and_layout_with_the_training_step(tiny_cohort, tmp_path, monkeypatch):
    from training import throughput

    calls = []
    real_step = throughput.training_step
    monkeypatch.setattr(throughput, "training_step", lambda *a: calls.append(a[-2:]) or real_step(*a))
    doc = throughput.main(["--data", str(tiny_cohort), "--quick", "--check-gradients", "1",
                           "--out", str(tmp_path / "tp.json")])
    assert json.loads((tmp_path / "tp.json").read_text()) == doc and doc["command"].startswith("python -m training.throughput")
    timed = throughput.configurations(torch.device("cpu"))  # the bfloat16 ones where the CPU has the instructions
    configs = [(r["precision"], r["channels_last"]) for r in doc["rows"]]
    assert [r["mode"] for r in doc["rows"]] == ["private"] * len(timed) + ["baseline"] * len(timed)
    assert configs == list(timed) * 2 and doc["rows"][0]["speedup"] == 1.0
    assert all(r["steps_per_second"] > 0 and len(r["runs"]) == 1 for r in doc["rows"])
    assert calls == [c for c in timed for _ in range(3)] * 2  # 1 warm-up + 2 timed steps each
    checks = doc["gradient_check"]
    assert [(r["in_channels"], r["out_channels"], r["grid"]) for r in checks[::2]] == list(throughput.GRADIENT_CASES)
    assert all(set(r["bad_weight_gradients"]) == {"autocast", "training_train"} and r["iterations"] == 1 for r in checks)


def test_throughput_keeps_the_median_of_the_repetitions_and_the_speedup_over_the_default(tiny_cohort, monkeypatch):
    """Each row's seconds are the median of its interleaved repetitions, and its speedup is the default's median
    over its own (above 1: faster than float32)."""
    from training import throughput

    timings = {("float32", False): iter([0.2, 0.3, 0.7]), ("float32", True): iter([0.1, 0.5, 0.15])}
    monkeypatch.setattr(throughput, "configurations", lambda device: tuple(timings))
    monkeypatch.setattr(throughput, "build_model", lambda *a: None)
    monkeypatch.setattr(throughput, "time_steps", lambda model, sampler, args, device, precision, channels_last:
                        next(timings[(precision, channels_last)]))
    args = throughput.parse_args(["--data", str(tiny_cohort), "--modes", "baseline", "--reps", "3", "--scans", "1"])
    default, channels_last = throughput.measure(args)["rows"]
    assert default["seconds_per_step"] == 0.3 and default["speedup"] == 1.0 and default["runs"] == [0.2, 0.3, 0.7]
    assert channels_last["seconds_per_step"] == 0.15 and channels_last["steps_per_second"] == round(1 / 0.15, 3)
    assert channels_last["speedup"] == 2.0


def test_throughput_records_the_cpus_model_and_instruction_sets_as_the_benchmark_does(tiny_cohort, monkeypatch):
    """Steps per second compare only across runs on the same kind of CPU: the record names its model and the
    instruction sets that set the speed (``mixdemo.bench.cpu_description``), not ``platform.processor()``'s
    'x86_64' or empty string."""
    from mixdemo.bench import cpu_description
    from training import throughput

    monkeypatch.setattr(throughput, "configurations", lambda device: (("float32", False),))
    monkeypatch.setattr(throughput, "build_model", lambda *a: None)
    monkeypatch.setattr(throughput, "time_steps", lambda *a: 0.1)
    args = throughput.parse_args(["--data", str(tiny_cohort), "--modes", "baseline", "--reps", "1", "--scans", "1"])
    doc = throughput.measure(args)
    assert (doc["cpu"], doc["cpu_features"]) == (cpu_description()["model"], cpu_description()["features"])


@pytest.mark.parametrize("gpu_has_it", [True, False])
def test_throughput_on_a_gpu_records_whether_the_gpu_has_bfloat16(tiny_cohort, monkeypatch, gpu_has_it):
    """On CUDA the bfloat16 configurations are timed, and the record says whether the GPU computes in bfloat16
    natively (it said 'no native bfloat16' on an H200, reading the CPU's flag as False off the CPU)."""
    from training import throughput

    monkeypatch.setattr(throughput, "pick_device", lambda prefer=None: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "A GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpu_has_it)
    monkeypatch.setattr(throughput, "native_bfloat16", lambda: not gpu_has_it)  # the CPU's: not what is recorded
    monkeypatch.setattr(throughput, "configurations", lambda device: (("float32", False),))
    monkeypatch.setattr(throughput, "build_model", lambda *a: None)
    monkeypatch.setattr(throughput, "time_steps", lambda *a: 0.1)
    args = throughput.parse_args(["--data", str(tiny_cohort), "--modes", "baseline", "--reps", "1", "--scans", "1"])
    doc = throughput.measure(args)
    assert doc["device"] == "cuda, A GPU" and doc["native_bfloat16"] is gpu_has_it


@pytest.mark.parametrize("argv, says", [(["--check-gradients", "-5"], "argument --check-gradients: -5 is less than 0"),
                                         (["--patch-size", "0"], "argument --patch-size: 0 is less than 1")])
def test_throughput_refuses_a_count_out_of_range_when_parsed(argv, says, capsys):
    """``--check-gradients -5`` wrote gradient rows of -5 iterations and 0 bad gradients; ``--patch-size 0`` reached the
    patch sampler: both are usage errors, as every other count of the command is (``mixdemo.launch.count``)."""
    from training import throughput

    with pytest.raises(SystemExit) as stop:
        throughput.parse_args(argv)
    assert stop.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("native", [True, False])
def test_throughput_times_bfloat16_only_where_the_device_has_it(monkeypatch, native):
    from training import throughput

    monkeypatch.setattr(throughput, "native_bfloat16", lambda: native)
    on_cpu = throughput.configurations(torch.device("cpu"))
    assert on_cpu == (throughput.CONFIGS if native else (("float32", False), ("float32", True)))
    assert throughput.configurations(torch.device("cuda")) == throughput.CONFIGS


def test_throughput_quotes_each_runs_record_and_refuses_a_run_without_validation(tiny_cohort, tmp_path):
    from training import throughput, train

    validated = Path(train.main(_train_cmd(tiny_cohort, tmp_path / "w", tmp_path / "run", 2,
                                           ["--mode", "baseline", "--val-subjects", "1", "--val-every", "1",
                                            "--precision", "bfloat16"]))["segmentation"])
    plain = Path(train.main(_train_cmd(tiny_cohort, tmp_path / "p", tmp_path / "run-p", 1, ["--mode", "baseline"]))["segmentation"])
    common = ["--data", str(tiny_cohort), "--quick", "--modes", "baseline"]
    doc = throughput.main([*common, "--out", str(tmp_path / "tp.json"), "--runs", str(validated)])
    record = json.loads((validated / "training.json").read_text())
    (run,) = doc["runs"]
    assert run["validation"] == record["validation"]["history"] and [h[0] for h in run["validation"]] == [1, 2]
    assert run["precision"] == "bfloat16" and run["command"] == record["command"] and run["sha256"] == record["sha256"]
    with pytest.raises(SystemExit, match="no validation history"):
        throughput.main([*common, "--out", str(tmp_path / "never.json"), "--runs", str(plain)])
    assert not (tmp_path / "never.json").exists()


def test_baseline_mode_trains_segmentation_only(tiny_cohort, tmp_path, capsys):
    from training import train

    folders = train.main(_train_cmd(tiny_cohort, tmp_path / "w", tmp_path / "run", 2, ["--mode", "baseline"]))
    assert set(folders) == {"segmentation"} and Path(folders["segmentation"]).name == "baseline"
    saved = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["saved"]
    assert saved == {"baseline": folders["segmentation"]}  # the line says which network it saved
    header, *rows = (tmp_path / "run" / "train.log").read_text().splitlines()
    row = dict(zip(header.split("\t"), rows[-1].split("\t")))  # the loss is S's alone, in its own column
    assert row["step"] == "2" and float(row["loss_unmix"]) == 0 and row["loss"] == row["loss_seg"] != "0.0000"


def test_hold_out_keeps_the_last_subjects_for_validation_and_two_for_training(tiny_cohort, tmp_path):
    from training.validate import hold_out

    records = load_cohort(tiny_cohort).split("train")
    train_recs, val_recs = hold_out(records, 1)
    assert {r.subject for r in val_recs} == {"s2"} and {r.subject for r in train_recs} == {"s0", "s1"}
    assert hold_out(records, 0) == (list(records), [])
    with pytest.raises(SystemExit, match="at least 2"):
        hold_out(records, 2)
    with pytest.raises(SystemExit, match="at least 2"):
        hold_out(records, -1)
    assert hold_out(records[:1], 0) == (list(records[:1]), [])  # no hold-out asked: nothing checked
    from training import train

    with pytest.raises(SystemExit, match="one reference"):
        train.main(["--data", str(tiny_cohort), "--n-references", "2", "--val-subjects", "1", "--steps", "1"])
    # --consistency mixes a target with references of two disjoint subjects: 3 must stay, said before any step
    with pytest.raises(SystemExit, match=r"--val-subjects 1: the training split has 3 subjects and at least 3 must "
                                         r"stay for training \(none can be held out\)"):
        train.main(["--data", str(tiny_cohort), "--consistency", "0.5", "--val-subjects", "1", "--steps", "1",
                    "--patch-size", "16", "--batch-size", "2", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "w")])
    assert not (tmp_path / "run").exists()


def test_validation_scores_a_baselines_labels_inside_the_held_out_brains(tiny_cohort):
    """Without a D, the validation Dice is the average over the cohort's classes but background of S's labels of each
    held-out scan, background outside its brain (x > 0): 1 for S's labels equal to the truth."""
    from training.validate import make_validation, validation_dice

    cohort = load_cohort(tiny_cohort)
    vols = load_volumes(cohort.split("train"))
    val = make_validation(vols[2:], vols[:2], DEFAULT_ALPHA_RANGE, 0, cohort.foreground_classes)
    net = SegmentationNet(features=[int(v) for v in TINY.split(",")])
    levels = torch.tensor([0.0, 0.6, 1.0, 0.2]).view(1, 4, 1, 1, 1)  # tiny_cohort's intensity of each class
    net.forward = lambda x: -100 * (x - levels) ** 2  # the class of the nearest intensity: the truth
    assert validation_dice(net, None, val) == 1.0
    net.forward = lambda x: torch.zeros_like(x).repeat(1, 4, 1, 1, 1) + levels  # WM everywhere: inside the brain
    truth, brain = vols[2].labels, vols[2].image > 0
    wm = 2 * (truth == 2).sum() / (brain.sum() + (truth == 2).sum())
    assert validation_dice(net, None, val) == round(float(wm) / 3, 4)  # GM and CSF: never found, Dice 0


@pytest.mark.parametrize("mode", ["baseline", "private"])
def test_validation_exports_the_best_validated_step(tiny_cohort, tmp_path, mode):
    """--val-subjects: the held-out subject's Dice every --val-every steps; the exported weights are those of the
    best step (the record says which), not of the last one unless it is the best."""
    from safetensors.torch import load_file

    from training import train

    out, run = tmp_path / "w", tmp_path / "run"
    folders = train.main(_train_cmd(tiny_cohort, out, run, 4, ["--mode", mode, "--val-subjects", "1", "--val-every", "2",
                                                               "--lr", "0.05"]))
    folder = Path(folders["segmentation"])
    record = json.loads((folder / "training.json").read_text())["validation"]
    steps = [h[0] for h in record["history"]]
    assert steps == [2, 4] and record["subjects"] == ["s2"] and record["every"] == 2
    lo, hi = DEFAULT_ALPHA_RANGE  # the client's α, as the evaluation draws it
    assert len(record["alphas"]) == 1 and lo <= record["alphas"][0] <= hi
    assert record["references"] == (None if mode == "baseline" else [record["references"][0]])
    assert mode == "baseline" or record["references"][0] in {"s0_scan-0", "s1_scan-0"}  # never the held-out subject
    best_step, best_dice = max(record["history"], key=lambda h: (h[1], -h[0]))
    assert record["exported_step"] == best_step and record["dice"] == best_dice and 0.0 <= best_dice <= 1.0
    assert (run / "validation.log").read_text().splitlines() == ["step\tdice", *(f"{s}\t{d:.4f}" for s, d in record["history"])]
    best = torch.load(run / "best.pt", weights_only=True)
    last = torch.load(run / "checkpoint.pt", weights_only=False)
    assert last["validation"] == record["history"]
    assert set(folders) == ({"segmentation"} if mode == "baseline" else {"segmentation", "unmixing"})
    for role, prefix in (("segmentation", "seg."), ("unmixing", "unmix.")):
        if role not in folders:
            continue
        exported = load_file(Path(folders[role]) / "model.safetensors")
        assert all(torch.equal(v, best[prefix + k]) for k, v in exported.items()), role
        same_as_last = all(torch.equal(v, last["model"][prefix + k]) for k, v in exported.items())
        assert same_as_last == (best_step == 4), role  # seeded: the baseline's best is step 2 (not the last)
        assert json.loads((Path(folders[role]) / "training.json").read_text())["validation"] == record


def test_validation_of_a_warm_start_counts_the_starting_weights_as_step_0(tiny_cohort, tmp_path):
    """With --init-from, the starting weights are validated first (step 0): a run that does not beat them on the
    held-out subject exports them unchanged."""
    from safetensors.torch import load_file

    from training import train

    start = tmp_path / "start"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run0", 4, ["--mode", "baseline", "--lr", "0.05"]))
    out, run = tmp_path / "w", tmp_path / "run"
    folders = train.main(_train_cmd(tiny_cohort, out, run, 2, ["--mode", "baseline", "--init-from", str(start),
                                                               "--val-subjects", "1", "--val-every", "2", "--lr", "1.0"]))
    record = json.loads((Path(folders["segmentation"]) / "training.json").read_text())["validation"]
    assert [h[0] for h in record["history"]] == [0, 2]
    assert (run / "validation.log").read_text().splitlines()[1].startswith("0\t")
    exported = load_file(Path(folders["segmentation"]) / "model.safetensors")
    started = load_file(start / "baseline" / "model.safetensors")
    assert record["exported_step"] == 0  # seeded: one step at lr 1.0 does worse than the start
    assert exported.keys() == started.keys() and all(torch.equal(exported[k], started[k]) for k in started)
    train.main(_train_cmd(tiny_cohort, out, run, 2, ["--mode", "baseline", "--init-from", str(start),
                                                     "--val-subjects", "1", "--val-every", "2", "--lr", "1.0"]))
    assert [h[0] for h in torch.load(run / "checkpoint.pt", weights_only=False)["validation"]] == [0, 2]  # resumed: not again


def test_a_warm_start_takes_its_s_widths_unless_told_others_which_are_refused_naming_them(tiny_cohort, tmp_path):
    """--init-from of an S trained with --features X: a new D on it needs no --features again (its S's are the
    only ones that fit); other widths stop the run before the cohort loads, saying what to give."""
    from training import train

    start = tmp_path / "start"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run0", 1))
    common = ["--mode", "unmixing", "--init-from", str(start), "--data", str(tiny_cohort), "--steps", "1",
              "--batch-size", "2", "--patch-size", "16", "--out", str(tmp_path / "w")]
    folders = train.main([*common, "--run-dir", str(tmp_path / "run1")])
    assert json.loads((Path(folders["unmixing"]) / "training.json").read_text())["features"] == [4, 4, 8, 8, 16, 4]
    with pytest.raises(SystemExit, match=r"S in .*start.segmentation has features 4,4,8,8,16,4, not 16,16,32,64,128,16 "
                                         r"\(--features small\): give --features 4,4,8,8,16,4, or leave it out"):
        train.main([*common, "--features", "small", "--run-dir", str(tmp_path / "run2")])


def test_a_warm_start_folder_without_its_s_config_is_named_before_its_widths_are_read(tmp_path):
    """check_start_folders asked for model.safetensors alone, though its message names config.json too: a folder
    without it went on to start_features, a FileNotFoundError traceback, not the message."""
    from training.train import check_start_folders

    (tmp_path / "segmentation").mkdir()
    (tmp_path / "segmentation" / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"no saved model 'segmentation' in .*config\.json and model\.safetensors"):
        check_start_folders(tmp_path, "unmixing", None)
    (tmp_path / "segmentation" / "config.json").write_text("{}")
    check_start_folders(tmp_path, "unmixing", None)


def test_recalibrate_batch_norm_sets_the_plain_average_of_the_batches_and_keeps_the_weights():
    from training.precise_bn import recalibrate_batch_norm

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    net[1].running_mean.fill_(5.0)  # stale statistics, as after training
    weight = net[0].weight.clone()
    batches = [torch.full((1, 1, 2, 2, 2), v) + torch.arange(8.0).view(1, 1, 2, 2, 2) for v in (0.0, 10.0, 20.0)]
    assert recalibrate_batch_norm(net, batches) == 1
    with torch.no_grad():
        means = torch.stack([net[0](x).mean((0, 2, 3, 4)) for x in batches])
    assert torch.allclose(net[1].running_mean, means.mean(0), atol=1e-5)  # equal weights, not momentum 0.1
    assert net[1].momentum == 0.1 and not net.training and torch.equal(net[0].weight, weight)
    with pytest.raises(ValueError, match="no batch norm"):
        recalibrate_batch_norm(torch.nn.Conv3d(1, 1, 1), batches)


def test_without_data_a_derived_model_reads_the_cohort_its_record_names_or_stops(tmp_path, monkeypatch):
    """calibrate and precise_bn without --data read the cohort the model was trained on; a record naming a folder
    that is not there (moved, or a relative path read from another folder) stops them with the path, instead of
    fitting on the phantom cohort without a word (a tissue model on another tissue cohort passes the class check)."""
    from mixdemo.phantoms import DEFAULT_COHORT
    from training import trained_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert trained_data({"data": "mine"}) == Path("mine")
    assert trained_data({}) == trained_data({"data": str(DEFAULT_COHORT)}) == DEFAULT_COHORT  # the phantoms'
    with pytest.raises(CohortError, match=r"trained on elsewhere/ppmi, which is not a folder here.*--data"):
        trained_data({"data": "elsewhere/ppmi"})


def test_precise_bn_writes_a_loadable_folder_that_differs_only_in_the_statistics(tiny_cohort, tmp_path, monkeypatch,
                                                                                    capsys):
    """S trained on 16³ patches: its statistics are averaged over 32³ ones (one patch a pass leaves a 16³ patch one
    voxel at U-Net++'s deepest level, where batch norm needs two); --patch-size 16 is refused with why."""
    from safetensors.torch import load_file

    from training import precise_bn, train

    start = tmp_path / "w"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run", 2, ["--mode", "baseline"]))
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(start))
    assert json.loads((start / "baseline" / "training.json").read_text())["patch_size"] == 16
    with pytest.raises(SystemExit, match="--patch-size 16: each pass is one patch.*--patch-size 32 or more"):
        precise_bn.main(["--model", "baseline", "--data", str(tiny_cohort), "--out", str(tmp_path / "p"),
                         "--patch-size", "16"])
    capsys.readouterr()
    out = precise_bn.main(["--model", "baseline", "--data", str(tiny_cohort), "--batches", "3", "--out", str(tmp_path / "p")])
    assert "trained on 16³ patches; its statistics are averaged over 32³ ones" in capsys.readouterr().out
    before, after = load_file(start / "baseline" / "model.safetensors"), load_file(out / "model.safetensors")
    stats = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert stats and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before.keys() - stats)  # the weights themselves are kept
    assert not all(torch.equal(before[k], after[k]) for k in stats)
    record = json.loads((out / "training.json").read_text())
    old = json.loads((start / "baseline" / "training.json").read_text())
    assert record["precise_bn"]["from_sha256"] == old["sha256"] and record["precise_bn"]["patch_size"] == 32
    assert record["precise_bn"]["command"].startswith("python -m training.precise_bn") and record["mode"] == "baseline"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "p"))
    weights.load_model("baseline")  # its checksum is the new file's


def test_fit_offsets_finds_the_smallest_offset_that_undoes_a_class_bias():
    from training.calibrate import fit_case, fit_offsets, labels_with_offsets

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (8, 8, 8)).astype(np.uint8)
    brain = np.ones(truth.shape, bool)
    logits = torch.nn.functional.one_hot(torch.from_numpy(truth[brain]).long(), 4).T.float()
    logits[3] -= 1.5  # CSF under-called: its voxels go to background unless the offset is in (0.5, 1.5)
    case = fit_case(torch.softmax(logits, 0)[None], truth, brain)
    assert (labels_with_offsets(case, np.zeros(4)) == 3).sum() == 0
    offsets, dice = fit_offsets([case], np.round(np.arange(-1.0, 1.05, 0.1), 6), rounds=2)
    assert offsets.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.6]) and dice == pytest.approx(1.0)
    assert (labels_with_offsets(case, offsets) == truth).all()


def test_fit_offsets_reaches_the_best_offsets_of_a_brute_force_search():
    """Where each voxel hesitates between background and one class, each class's Dice depends on its own offset
    alone: one round of the coordinate search must reach the best mean Dice of every combination on the grid."""
    import itertools

    from training.calibrate import fit_case, fit_offsets, mean_dice

    rng = np.random.default_rng(2)
    n = 600
    own = rng.integers(1, 4, n)  # the one class each voxel may be
    truth = np.where(rng.random(n) < 0.6, own, 0).astype(np.uint8)
    p_own = np.clip(rng.normal(np.where(truth > 0, 0.45, 0.3), 0.12), 0.01, 0.99)  # every class under-called ...
    p_own[own == 2] = np.clip(p_own[own == 2] + 0.3, 0.01, 0.99)  # ... but GM, over-called
    probs = torch.zeros(1, 4, n)
    probs[0, 0] = torch.from_numpy(1 - p_own).float()
    probs[0, torch.from_numpy(own), torch.arange(n)] = torch.from_numpy(p_own).float()
    case = fit_case(probs, truth.reshape(6, 10, 10), np.ones((6, 10, 10), bool))
    grid = np.round(np.arange(-1.0, 1.05, 0.25), 6)
    best = max(mean_dice([case], np.array([0.0, *trial], np.float32)) for trial in itertools.product(grid, repeat=3))
    offsets, dice = fit_offsets([case], grid, rounds=1)
    assert dice == pytest.approx(best, abs=1e-9) and dice == pytest.approx(mean_dice([case], offsets), abs=1e-9)
    assert dice > mean_dice([case], np.zeros(4, np.float32)) + 0.01  # the case needs calibrating
    assert offsets[1] > 0 and offsets[2] < 0 and offsets[3] > 0  # the under-called classes up, GM down


def _baseline_train_dice(folder: Path, cohort: Path, scans: list[str]) -> float:
    """The mean over ``scans`` of the average Dice (classes but background) of the baseline saved in ``folder``,
    its labels inside each scan's brain: what training.calibrate reports, measured from the weights it wrote."""
    from training.evaluate import baseline_labels

    model = SegmentationNet.from_pretrained(folder).eval()
    volumes = [v for v in load_volumes(load_cohort(cohort).split("train")) if v.name in scans]
    rows = [dice_per_class(baseline_labels(model, v, v.image > 0), v.labels, [1, 2, 3]) for v in volumes]
    return float(np.mean([np.mean(list(r.values())) for r in rows]))


def test_offsets_shift_each_mix_before_the_tta_mean():
    from training.calibrate import fit_case, labels_with_offsets

    truth = np.array([[[1, 2]]], np.uint8)
    brain = np.array([[[True, False]]])
    probs = torch.tensor([[[0.0], [0.5], [0.0], [0.5]], [[0.0], [0.9], [0.0], [0.1]]])  # 2 mixes, 4 classes, 1 voxel
    case = fit_case(probs, truth, brain)
    assert labels_with_offsets(case, np.zeros(4)).tolist() == [[[1, 0]]]  # mean (0.7 GM, 0.3 CSF); outside: 0
    # ×2.5 on CSF: mix 1 → CSF 0.71, mix 2 → CSF 0.22, mean 0.47: still GM (shifting the mean instead,
    # 0.3 × 2.5 > 0.7, would call CSF); ×4: CSF 0.8 and 0.31, mean 0.55 → CSF
    assert labels_with_offsets(case, np.array([0, 0, 0, np.log(2.5)])).tolist() == [[[1, 0]]]
    assert labels_with_offsets(case, np.array([0, 0, 0, np.log(4.0)])).tolist() == [[[3, 0]]]


def test_settled_voxels_keep_the_labels_every_offset_on_the_grid_gives():
    from training.calibrate import fit_case, labels_with_offsets

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, (6, 6, 6)).astype(np.uint8)
    brain = rng.random(truth.shape) > 0.2
    n = int(brain.sum())  # 3 mixes that mostly agree, confidently
    sharp = torch.from_numpy(rng.normal(0, 6, (1, 4, n)) + rng.normal(0, 1, (3, 4, n))).float()
    probs = torch.softmax(sharp, 1)
    full, fast = fit_case(probs, truth, brain), fit_case(probs, truth, brain, span=2.0)
    assert fast.probs.shape[2] < full.probs.shape[2] / 2  # most voxels settled
    for _ in range(20):
        offsets = np.concatenate([[0.0], rng.uniform(-1.0, 1.0, 3)])  # within the span: |b_c − b_d| ≤ 2
        assert (labels_with_offsets(fast, offsets) == labels_with_offsets(full, offsets)).all()


@pytest.mark.parametrize("design", [{"patch": 1}, {"patch": 2}, {"patch": 2, "voxel_hidden": 4}])
def test_the_final_bias_shifts_every_voxels_logits_on_the_fast_path(design):
    from training.calibrate import final_bias

    torch.manual_seed(0)
    net = UnmixingNet(features=(4, 8), cond_dim=8, **design).eval()
    y_mix = torch.softmax(torch.randn(1, 4, 8, 8, 8), 1)
    y_ref = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 8, 8, 8)), 4).permute(0, 4, 1, 2, 3).float()
    alpha = torch.tensor([0.4])
    offsets = torch.tensor([0.0, -0.5, 0.3, 1.2])
    with torch.inference_mode():
        before = net(y_mix, y_ref, alpha)
    with torch.no_grad():
        final_bias(net).add_(offsets)
    with torch.inference_mode():
        after = net.use_channels_last()(y_mix, y_ref, alpha)
    assert torch.allclose(after - before, offsets.view(1, 4, 1, 1, 1).expand_as(before), atol=1e-5)


def test_calibrate_writes_a_baseline_whose_final_bias_carries_the_offsets(tiny_cohort, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from training import calibrate, train

    start = tmp_path / "w"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run", 2, ["--mode", "baseline"]))
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(start))
    out = calibrate.main(["--model", "baseline", "--data", str(tiny_cohort), "--scans", "2", "--grid", "-0.4", "0.4", "0.2",
                          "--rounds", "1", "--out", str(tmp_path / "c")])
    record = json.loads((out / "training.json").read_text())
    cal = record["calibration"]
    assert cal["scans"] == ["s1_scan-0", "s2_scan-0"] and cal["offsets"][0] == 0.0 and record["mode"] == "baseline"
    assert cal["command"].startswith("python -m training.calibrate")
    # the Dice it reports, before and after, is that of the weights it started from and of those it wrote
    measured = [_baseline_train_dice(folder, tiny_cohort, cal["scans"]) for folder in (start / "baseline", out)]
    assert [cal["train_dice_before"], cal["train_dice_after"]] == pytest.approx(measured, abs=2e-4)
    before, after = load_file(start / "baseline" / "model.safetensors"), load_file(out / "model.safetensors")
    bias = "net.final_conv_0_4.bias"
    assert torch.allclose(after[bias] - before[bias], torch.tensor(cal["offsets"]), atol=1e-6)
    assert all(torch.equal(before[k], after[k]) for k in before if k != bias)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "c"))
    weights.load_model("baseline")  # loads on the fast path; its checksum is the new file's
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run1", 1))  # an S trained on proxies
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(start))
    with pytest.raises(SystemExit, match="raw scans"):
        calibrate.main(["--model", "segmentation", "--data", str(tiny_cohort), "--out", str(tmp_path / "d")])


def test_calibrate_fits_d_on_the_client_labels_after_tta(tiny_cohort, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from training import calibrate, train

    start = tmp_path / "w"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run", 1))  # S and D trained together
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(start))
    fitted = []
    real_cases = calibrate.unmixing_cases
    monkeypatch.setattr(calibrate, "unmixing_cases", lambda *a, **kw: fitted.append(real_cases(*a, **kw)) or fitted[-1])
    out = calibrate.main(["--model", "unmixing", "--data", str(tiny_cohort), "--scans", "2", "--tta-k", "2",
                          "--grid", "-0.4", "0.4", "0.2", "--rounds", "1", "--out", str(tmp_path / "c"),
                          "--name", "unmixing-cal"])
    assert out == tmp_path / "c" / "unmixing-cal"
    cal = json.loads((out / "training.json").read_text())["calibration"]
    assert cal["scans"] == ["s1_scan-0", "s2_scan-0"] and cal["tta_k"] == 2 and cal["segmentation"] == "segmentation"
    (names, cases), = fitted  # the Dice it reports is that of the offsets it reports, on the scans it names
    assert names == cal["scans"] and len(cases) == 2 and cases[0].probs.shape[0] == 2
    assert cal["train_dice_before"] == round(calibrate.mean_dice(cases, np.zeros(4, np.float32)), 4)
    assert cal["train_dice_after"] == round(calibrate.mean_dice(cases, np.array(cal["offsets"], np.float32)), 4)
    before, after = load_file(start / "unmixing" / "model.safetensors"), load_file(out / "model.safetensors")
    assert torch.allclose(after["out.bias"] - before["out.bias"], torch.tensor(cal["offsets"]), atol=1e-6)
    assert all(torch.equal(before[k], after[k]) for k in before if k != "out.bias")


def test_unmixing_mode_trains_a_new_d_on_a_frozen_s(tiny_cohort, tmp_path):
    from training import train

    start = tmp_path / "w"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run0", 1))
    s_before = (start / "segmentation" / "model.safetensors").read_bytes()
    out = tmp_path / "d"
    folders = train.main(_train_cmd(tiny_cohort, out, tmp_path / "run1", 2,
                                    ["--mode", "unmixing", "--init-from", str(start), "--unmix-patch", "2",
                                     "--unmix-hidden", "4"]))
    assert set(folders) == {"unmixing"} and not (out / "segmentation").exists()
    assert (start / "segmentation" / "model.safetensors").read_bytes() == s_before
    record = json.loads((out / "unmixing" / "training.json").read_text())
    assert record["mode"] == "unmixing" and record["unmix_patch"] == 2 and record["init_from_sha256"]["segmentation"]
    assert record["unmix_hidden"] == 4
    saved = UnmixingNet.from_pretrained(out / "unmixing")
    assert saved.patch == 2 and saved.voxel_hidden == 4
    assert float((tmp_path / "run1" / "train.log").read_text().splitlines()[-1].split("\t")[3]) > 0  # D's loss
    with pytest.raises(SystemExit, match="init-from"):
        train.main(_train_cmd(tiny_cohort, out, tmp_path / "run2", 1, ["--mode", "unmixing"]))
    record = json.loads((start / "segmentation" / "training.json").read_text())
    (start / "segmentation" / "training.json").write_text(json.dumps({**record, "classes": ["background", "NCR", "ED", "ET"]}))
    with pytest.raises(SystemExit, match=r"trained on the classes \['background', 'NCR', 'ED', 'ET'\].*"
                                         r"\['background', 'GM', 'WM', 'CSF'\]"):  # a BraTS S for a tissue cohort
        train.main(_train_cmd(tiny_cohort, out, tmp_path / "run3", 1, ["--mode", "unmixing", "--init-from", str(start)]))


def test_unmixing_mode_can_train_on_a_saved_d(tiny_cohort, tmp_path):
    from safetensors.torch import load_file

    from training import train

    start = tmp_path / "w"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run0", 1))
    d_before = load_file(start / "unmixing" / "model.safetensors")
    extra = ["--mode", "unmixing", "--init-from", str(start), "--init-unmixing", "unmixing", "--lr", "0"]
    train.main(_train_cmd(tiny_cohort, tmp_path / "d", tmp_path / "run1", 1, extra))
    record = json.loads((tmp_path / "d" / "unmixing" / "training.json").read_text())
    assert record["init_unmixing"] == "unmixing" and set(record["init_from_sha256"]) == {"segmentation", "unmixing"}
    d_after = load_file(tmp_path / "d" / "unmixing" / "model.safetensors")  # lr 0: the saved D, unchanged
    assert d_after.keys() == d_before.keys() and all(torch.equal(d_after[k], d_before[k]) for k in d_before)
    with pytest.raises(SystemExit, match="--unmix-patch 1 --unmix-hidden 0, not --unmix-patch 2: give --unmix-patch 1, or leave them out"):
        # a D of another design than the one asked for: refused before the cohort loads
        train.main(_train_cmd(tiny_cohort, tmp_path / "d2", tmp_path / "run2", 1, [*extra, "--unmix-patch", "2"]))
    with pytest.raises(SystemExit, match="no saved model 'nowhere'"):
        train.main(_train_cmd(tiny_cohort, tmp_path / "d4", tmp_path / "run4", 1, [*extra[:-3], "nowhere"]))
    with pytest.raises(SystemExit, match="no saved model 'baseline'"):  # a start folder without the model named
        train.main(_train_cmd(tiny_cohort, tmp_path / "d6", tmp_path / "run6", 1,
                              ["--mode", "baseline", "--init-from", str(tmp_path / "d4")]))
    assert not (tmp_path / "run6").exists()  # refused before the run began
    with pytest.raises(SystemExit, match="give --init-from"):
        train.main(_train_cmd(tiny_cohort, tmp_path / "d3", tmp_path / "run3", 1, ["--init-unmixing", "unmixing"]))
    with pytest.raises(SystemExit, match="trains no D"):
        train.main(_train_cmd(tiny_cohort, tmp_path / "d5", tmp_path / "run5", 1,
                              ["--mode", "baseline", *extra[2:]]))


def test_private_mode_can_start_from_a_named_d(tiny_cohort, tmp_path):
    """--mode private --init-unmixing NAME: S and D trained on together, D starting from NAME (not 'unmixing')."""
    from safetensors.torch import load_file

    from training import train

    start = tmp_path / "w"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run0", 1))
    (start / "unmixing").rename(start / "unmixing-other")
    extra = ["--init-from", str(start), "--init-unmixing", "unmixing-other", "--lr", "0"]
    train.main(_train_cmd(tiny_cohort, tmp_path / "d", tmp_path / "run1", 1, extra))
    record = json.loads((tmp_path / "d" / "unmixing" / "training.json").read_text())
    assert record["mode"] == "private" and record["init_unmixing"] == "unmixing-other"
    assert set(record["init_from_sha256"]) == {"segmentation", "unmixing-other"}
    s_record = json.loads((tmp_path / "d" / "segmentation" / "training.json").read_text())
    assert record["segmentation_sha256"] == s_record["sha256"] and "segmentation_sha256" not in s_record
    before, after = (load_file(f / "model.safetensors") for f in (start / "unmixing-other", tmp_path / "d" / "unmixing"))
    assert all(torch.equal(after[k], before[k]) for k in before)  # lr 0: the named D, unchanged


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not native_bfloat16(), reason="no bfloat16 instructions: emulated, training.train warns against it there"))])
def test_torchrun_two_cpu_processes(tiny_cohort, tmp_path, precision):
    """Two processes train together; both read the scans through one volume cache, which they build at once.
    DDP also runs with mixed precision and channels-last networks (the options a GPU user would add)."""
    out, run = tmp_path / "w", tmp_path / "run"
    extra = ["--volume-cache", str(tmp_path / "cache"), "--precision", precision]
    extra += ["--channels-last"] if precision == "bfloat16" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.train", *_train_cmd(tiny_cohort, out, run, 4, extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "segmentation" / "training.json").read_text())
    assert record["processes"] == 2 and record["batch_size"] == 4
    assert record["command"].startswith("torchrun --nproc_per_node=2 -m training.train --data ")  # how to rerun it
    assert record["precision"] == precision and record["channels_last"] == (precision == "bfloat16")
    assert (out / "unmixing" / "model.safetensors").exists()
    assert sorted(f.name for f in (tmp_path / "cache").iterdir()) == sorted(  # no temporary file left behind
        f"s{i}_scan-0.{ext}" for i in range(3) for ext in ("image.npy", "labels.npy", "affine.npy", "json"))


def test_each_ddp_rank_draws_its_own_patches_and_only_rank_0_writes(tiny_cohort, tmp_path, monkeypatch):
    """Under torchrun each rank seeds its own patch stream (from the start and on a resume), draws α from
    --alpha-range, and only rank 0 writes the log, checkpoints, validation and model folders. The ranks run here
    one after the other in this process, the process group stubbed (test_torchrun_two_cpu_processes runs two)."""
    from training import train

    monkeypatch.setattr(train.dist, "barrier", lambda: None)
    monkeypatch.setattr(train.dist, "destroy_process_group", lambda: None)
    monkeypatch.setattr(train, "DistributedDataParallel", lambda model, **kwargs: model)
    batches: list = []
    real_step = train.training_step
    monkeypatch.setattr(train, "training_step", lambda ddp, optim, batch, *a: batches.append(batch) or
                        real_step(ddp, optim, batch, *a))

    def first_batch_as(rank: int, out: Path, run: Path, steps: int):
        monkeypatch.setattr(train, "init_distributed", lambda device: (rank, 2, torch.device("cpu")))
        batches.clear()
        train.main(_train_cmd(tiny_cohort, out, run, steps, ["--val-subjects", "1", "--val-every", "2",
                                                             "--alpha-range", "0.6", "0.7"]))
        assert all(0.6 <= a <= 0.7 for b in batches for a in b.weights[:, 0].tolist())
        return batches[0]

    run0, run1 = tmp_path / "run0", tmp_path / "run1"
    run1.mkdir()  # rank 0 makes the folder in a real run
    first0 = first_batch_as(0, tmp_path / "w0", run0, 2)
    first1 = first_batch_as(1, tmp_path / "w1", run1, 2)
    assert not torch.equal(first0.x_mix, first1.x_mix)
    assert list(run1.iterdir()) == [] and not (tmp_path / "w1").exists()
    assert {"checkpoint.pt", "train.log", "validation.log", "best.pt"} <= {p.name for p in run0.iterdir()}
    shutil.copytree(run0, tmp_path / "run0-copy")
    written = {p.name: p.read_bytes() for p in run0.iterdir()}
    resumed1 = first_batch_as(1, tmp_path / "w1", run0, 3)  # both resume from step 2
    assert {p.name: p.read_bytes() for p in run0.iterdir()} == written  # rank 1 left the run as it was
    resumed0 = first_batch_as(0, tmp_path / "w0", tmp_path / "run0-copy", 3)
    assert not torch.equal(resumed0.x_mix, resumed1.x_mix)


def test_publish_dry_run_builds_the_upload(tmp_path, monkeypatch):
    import huggingface_hub

    from training import publish

    src = tmp_path / "weights"
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), src / "segmentation", "mixdemo.models.SegmentationNet")
    (src / "segmentation" / "TRAINING_NOTE.md").write_text("How it was trained.")  # cards point to their note
    (src / "segmentation" / "checkpoint.pt").write_bytes(b"optimizer state")  # not part of a model folder
    (src / "incomplete").mkdir()
    shutil.copytree(src / "segmentation", src / "no-record", ignore=shutil.ignore_patterns("training.json"))
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: pytest.fail("--dry-run asked the Hub"))
    staging = publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st"), "--dry-run"])
    assert sorted(p.name for p in staging.iterdir()) == [publish.STAGING_MARK, "README.md", "segmentation"]
    assert {p.name for p in (staging / "segmentation").iterdir()} == {"config.json", "model.safetensors", "training.json",
                                                                     "README.md", "TRAINING_NOTE.md"}
    top = (staging / "README.md").read_text()
    assert "me/mixup" in top and weights.PHANTOM_NOTICE not in top  # its record names no data: no phantom claim
    assert "- [`segmentation/`](segmentation/README.md): `not recorded`" in top.splitlines()
    card = (staging / "segmentation" / "README.md").read_text()  # the mixin's stub replaced from training.json
    assert "# Segmentation network (3D U-Net++)" in card and "More Information Needed" not in card
    assert "trained on is not recorded" in card and "- Command: `test`" in card
    assert "More Information Needed" in (src / "segmentation" / "README.md").read_text()  # the source left as it was
    uploads: list[tuple[str, dict]] = []

    class Api:  # a stand-in: nothing leaves this machine
        def create_repo(self, repo_id, **kwargs):
            uploads.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self, **kwargs):
            uploads.append(("upload_folder", kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st")])
    assert [what for what, _ in uploads] == ["create_repo", "upload_folder"]
    assert uploads[0][1]["repo_id"] == uploads[1][1]["repo_id"] == "me/mixup"
    assert uploads[1][1]["folder_path"] == str(tmp_path / "st") and uploads[1][1]["ignore_patterns"] == [publish.STAGING_MARK]
    for staging_arg in (src, tmp_path):  # emptied before staging: the weights would be deleted
        with pytest.raises(SystemExit):
            publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(staging_arg), "--dry-run"])
    notes = tmp_path / "notes"  # a folder of the user's: refused, not emptied
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not empty and was not staged by training.publish"):
        publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(notes), "--dry-run"])
    assert (notes / "notes.txt").read_text() == "mine"
    record = json.loads((src / "segmentation" / "training.json").read_text())
    weights.write_training_record(src / "segmentation", {**record, "data": "data/phantoms"}, record["model_class"])
    publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st"), "--dry-run"])
    assert weights.PHANTOM_NOTICE in (tmp_path / "st" / "README.md").read_text()
    assert weights.PHANTOM_NOTICE in (tmp_path / "st" / "segmentation" / "README.md").read_text()
    assert (src / "segmentation" / "model.safetensors").exists()
    (src / "segmentation" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(weights.WeightsError, match="checksum"):
        publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st"), "--dry-run"])


def test_publish_lists_the_local_paths_of_an_upload_and_refuses_it_unless_told(tmp_path, monkeypatch, capsys):
    """A researcher's record names the paths a run was given (``--data /home/...``): an upload that would publish
    them is refused unless --redact-paths (each becomes <local>/ and its last part, in the upload only, not inside a
    URL) or --keep-paths; a dry run lists them."""
    import huggingface_hub

    from training import publish

    src = tmp_path / "weights"
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), src / "segmentation", "mixdemo.models.SegmentationNet")
    record = json.loads((src / "segmentation" / "training.json").read_text())
    command = "python -m training.train --data /home/jdoe/ppmi_restricted --out ~/runs/s1 --init-from C:\\Users\\jdoe\\w"
    weights.write_training_record(src / "segmentation", {**record, "command": command, "data": "/home/jdoe/ppmi_restricted",
                                                        "see": "https://huggingface.co/home/jdoe/x"},
                                  record["model_class"])
    uploads: list[dict] = []

    class Api:  # a stand-in: nothing leaves this machine
        def create_repo(self, repo_id, **kwargs):
            pass

        def upload_folder(self, **kwargs):
            uploads.append(kwargs)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    args = ["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st")]
    publish.main([*args, "--dry-run"])
    out = capsys.readouterr().out
    assert "3 paths of this machine named" in out  # the Windows one once, as written (JSON doubles its backslashes)
    assert "C:\\Users\\jdoe\\w  (segmentation/README.md, segmentation/training.json)" in out
    assert "/home/jdoe/ppmi_restricted  (README.md, segmentation/README.md" in out
    assert "~/runs/s1" in out and "C:\\Users\\jdoe\\w" in out
    with pytest.raises(SystemExit, match="--redact-paths"):
        publish.main(args)
    assert uploads == []
    publish.main([*args, "--redact-paths"])
    assert len(uploads) == 1
    staged = tmp_path / "st"
    texts = [f.read_text() for f in staged.rglob("*") if f.name in publish.TEXT_FILES]
    assert not any("jdoe/ppmi" in t or "~/runs" in t or "Users" in t for t in texts)
    published = json.loads((staged / "segmentation" / "training.json").read_text())
    assert published["data"] == "<local>/ppmi_restricted" and published["see"] == "https://huggingface.co/home/jdoe/x"
    assert published["command"].endswith("--data <local>/ppmi_restricted --out <local>/s1 --init-from <local>/w")
    assert "<local>/ppmi_restricted" in (staged / "README.md").read_text()
    assert json.loads((src / "segmentation" / "training.json").read_text())["data"] == "/home/jdoe/ppmi_restricted"
    publish.main([*args, "--keep-paths"])
    assert len(uploads) == 2 and "/home/jdoe/ppmi_restricted" in (staged / "segmentation" / "training.json").read_text()


def test_publish_redacts_a_recorded_path_with_a_space_whole(tmp_path, capsys):
    """A folder's name with a space (``/home/Jane Doe/ppmi``, a Windows profile ``C:\\Users\\John Smith``): the path
    pattern stopped at the space, so the listing named ``/home/Jane`` and --redact-paths published
    ``<local>/Jane Doe/ppmi``, the user's name with it. Recorded paths are listed and replaced whole."""
    import shlex

    from training import publish

    src = tmp_path / "weights"
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), src / "segmentation", "mixdemo.models.SegmentationNet")
    record = json.loads((src / "segmentation" / "training.json").read_text())
    data, start, out = "/home/Jane Doe/ppmi scans", "C:\\Users\\John Smith\\w", "/home/Jane Doe/runs/s 1"
    command = shlex.join(["python", "-m", "training.train", "--data", data, "--init-from", start, f"--out={out}"])
    weights.write_training_record(src / "segmentation", {**record, "command": command, "data": data, "init_from": start,
                                                        "sessions": [{"command": command}]}, record["model_class"])
    args = ["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st")]
    publish.main([*args, "--dry-run"])
    listed = capsys.readouterr().out
    assert f"  {data}  (README.md, segmentation/README.md" in listed and f"  {start}  (" in listed, listed
    assert f"  {out}  (" in listed and "  /home/Jane  (" not in listed and "  C:\\Users\\John  (" not in listed, listed
    publish.main([*args, "--dry-run", "--redact-paths"])
    staged = tmp_path / "st"
    texts = [f.read_text() for f in staged.rglob("*") if f.name in publish.TEXT_FILES]
    assert not any(name in t for t in texts for name in ("Jane", "Doe", "John", "Smith", "/home")), texts
    published = json.loads((staged / "segmentation" / "training.json").read_text())
    assert (published["data"], published["init_from"]) == ("<local>/ppmi scans", "<local>/w")
    assert shlex.split(published["command"])[3:] == ["--data", "<local>/ppmi scans", "--init-from", "<local>/w",
                                                     "--out=<local>/s 1"]
    assert json.loads((src / "segmentation" / "training.json").read_text())["data"] == data  # weights/ keeps them


def test_publish_redacts_a_recorded_path_with_a_non_ascii_letter_whole(tmp_path, capsys):
    """A record is written JSON-escaped (``json.dumps``: ``/home/j\\u00f6rg``), where the path pattern stops at the
    backslash: the listing named ``/home/j`` and --redact-paths published ``<local>/j\\u00f6rg/ppmi``, the user's
    name with it. Recorded paths are found whole in their escaped form too."""
    import shlex

    from training import publish

    src = tmp_path / "weights"
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), src / "segmentation", "mixdemo.models.SegmentationNet")
    record = json.loads((src / "segmentation" / "training.json").read_text())
    data, start = "/home/jörg/ppmi", "C:\\Users\\José\\w"
    command = " ".join(["python -m training.train", *(shlex.quote(a) for a in ["--data", data, "--init-from", start])])
    weights.write_training_record(src / "segmentation", {**record, "command": command, "data": data, "init_from": start},
                                  record["model_class"])
    assert "j\\u00f6rg" in (src / "segmentation" / "training.json").read_text()  # as a record writes it
    args = ["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st")]
    publish.main([*args, "--dry-run"])
    listed = capsys.readouterr().out
    assert f"  {data}  (" in listed and f"  {start}  (" in listed and "  /home/j  (" not in listed, listed
    publish.main([*args, "--dry-run", "--redact-paths"])
    published = json.loads((tmp_path / "st" / "segmentation" / "training.json").read_text())
    assert (published["data"], published["init_from"]) == ("<local>/ppmi", "<local>/w"), published
    assert not any(name in json.dumps(published, ensure_ascii=False) for name in ("jörg", "José", "/home")), published


def test_publish_finds_paths_after_a_json_escape_and_in_file_urls(tmp_path):
    """A path right after an escaped newline or tab of a record (``"...\\n/home/you/ppmi"``: the pattern took the
    ``n`` for a name's letter) and a ``file://`` URL's path (its slashes follow ``/``, as in any URL, and a space is
    ``%20``) were neither listed nor redacted; another URL's path is still left alone."""
    from training import publish

    folder = tmp_path / "st" / "m"
    folder.mkdir(parents=True)
    record = {"note": "trained here\n/home/you/ppmi held the data\t/home/you/tab/x",
              "cache": "file:///home/Jane%20Doe/cache/x.nii", "windows": "file:///C:/Users/Jose/x.nii",
              "hub": "https://huggingface.co/me/mixup/blob/main/x"}
    (folder / "training.json").write_text(json.dumps(record))
    (folder / "README.md").write_text("figures in file:///home/you/card/y.png; https://host/a/b\n")
    found = publish.local_paths(tmp_path / "st")
    assert set(found) == {"/home/you/ppmi", "/home/you/tab/x", "/home/Jane%20Doe/cache/x.nii", "C:/Users/Jose/x.nii",
                          "/home/you/card/y.png"}, found
    publish.redact_paths(tmp_path / "st")
    published = json.loads((folder / "training.json").read_text())
    assert published == {"note": "trained here\n<local>/ppmi held the data\t<local>/x", "cache": "file://<local>/x.nii",
                         "windows": "file:///<local>/x.nii", "hub": record["hub"]}, published
    assert (folder / "README.md").read_text() == "figures in file://<local>/y.png; https://host/a/b\n"


def test_publish_reads_the_upload_again_after_redacting_and_refuses_what_is_left(tmp_path, monkeypatch):
    """A path a replacement missed (here: a redaction that does nothing) is named and nothing is uploaded."""
    from training import publish

    src = tmp_path / "weights"
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), src / "segmentation", "mixdemo.models.SegmentationNet")
    record = json.loads((src / "segmentation" / "training.json").read_text())
    weights.write_training_record(src / "segmentation", {**record, "data": "/home/you/ppmi"}, record["model_class"])
    monkeypatch.setattr(publish, "redact_paths", lambda staging: None)
    uploaded = []
    monkeypatch.setattr("huggingface_hub.HfApi.upload_folder", lambda *a, **k: uploaded.append(k))
    with pytest.raises(SystemExit, match=r"1 path still named in the upload after --redact-paths:\n  /home/you/ppmi"):
        publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st"),
                      "--redact-paths"])
    assert uploaded == []


def test_publish_takes_percentages_for_no_path(tmp_path):
    """A percent sign is part of a name only as a URL's escape (``%20``): ``80%/10%/10%`` in a card was listed as the
    path ``/10%/10%`` and redacted to ``80%<local>/10%``."""
    from training import publish

    folder = tmp_path / "st" / "m"
    folder.mkdir(parents=True)
    card = "Split 80%/10%/10% of subjects; Dice 0.5%/0.7%/0.9% lower; data in file:///home/Jane%20Doe/ppmi\n"
    (folder / "README.md").write_text(card)
    assert publish.local_paths(tmp_path / "st") == {"/home/Jane%20Doe/ppmi": ["m/README.md"]}
    publish.redact_paths(tmp_path / "st")
    assert (folder / "README.md").read_text() == card.replace("/home/Jane%20Doe/ppmi", "<local>/ppmi")


@pytest.mark.parametrize("module, argv", [("train", []), ("train", ["--mode", "baseline"]), ("train_inversion", []),
                                          ("train_score", [])])
def test_a_training_command_refused_on_its_cohort_leaves_no_run_folder(tmp_path, monkeypatch, module, argv):
    """A command that stops on a folder it cannot use made its run folder first: the test suite's own refused commands
    (run in the repository, without --run-dir) left empty runs/segmentation and runs/inversion there, and a user's
    mistyped --data an empty runs/<name> in the current folder."""
    import importlib

    from mixdemo.data import CohortError

    (tmp_path / "not-a-cohort").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises((CohortError, SystemExit, ValueError)):
        importlib.import_module(f"training.{module}").main(["--data", str(tmp_path / "not-a-cohort"), "--steps", "1",
                                                            *argv])
    assert not (tmp_path / "runs").exists(), sorted(p.name for p in (tmp_path / "runs").rglob("*"))


def test_publish_refuses_a_weights_folder_it_cannot_read_and_a_staging_inside_it(tmp_path):
    """--weights missing or a file was a traceback (iterdir), after the previous staging had been emptied; --staging
    inside --weights left a copy of every model among the models (36 MB in weights/ for the shipped ones)."""
    from training import publish

    src = tmp_path / "weights"
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), src / "segmentation", "mixdemo.models.SegmentationNet")
    staging = tmp_path / "st"
    publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(staging), "--dry-run"])
    for missing, why in ((tmp_path / "nowhere", "does not exist"), (src / "segmentation" / "config.json", "is not a folder")):
        with pytest.raises(SystemExit, match=f"^error: the weights folder .* {why}: give --weights"):
            publish.main(["--repo-id", "me/mixup", "--weights", str(missing), "--staging", str(staging), "--dry-run"])
    assert (staging / "segmentation" / "model.safetensors").exists()  # the previous staging left as it was
    with pytest.raises(SystemExit, match="lies inside the weights it would stage"):
        publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(src / "upload"), "--dry-run"])
    assert sorted(p.name for p in src.iterdir()) == ["segmentation"]


def test_publish_says_in_one_line_what_stops_it_a_repo_id_a_staging_file_or_a_failed_upload(tmp_path, monkeypatch,
                                                                                               capsys):
    """A --staging that is a file, or lies under one, was rmtree's or mkdir's traceback; a --repo-id the Hub refuses
    was accepted and staged, then a traceback from the upload; and an upload that failed (offline, no network, no
    token) was huggingface_hub's traceback."""
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled

    from training import publish

    src = tmp_path / "weights"
    _save(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), src / "segmentation", "mixdemo.models.SegmentationNet")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(SystemExit, match="^error: --staging .*afile is a file, not a folder"):
        publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(afile), "--dry-run"])
    with pytest.raises(SystemExit, match="^error: --staging .*afile/sub cannot be made: Not a directory"):
        publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(afile / "sub"), "--dry-run"])
    assert afile.read_text() == "mine"
    with pytest.raises(SystemExit) as usage:
        publish.main(["--repo-id", "me/my mixup", "--weights", str(src), "--staging", str(tmp_path / "st")])
    assert usage.value.code == 2 and "argument --repo-id: Repo id must use" in capsys.readouterr().err
    assert not (tmp_path / "st").exists()

    class Offline:
        def create_repo(self, *args, **kwargs):
            raise OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled.")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(SystemExit, match="^error: the upload to me/mixup failed: OfflineModeIsEnabled: .*hf auth login"):
        publish.main(["--repo-id", "me/mixup", "--weights", str(src), "--staging", str(tmp_path / "st")])


def test_legs_replay_a_run_resumed_with_a_longer_schedule(tiny_cohort, tmp_path):
    """--legs reproduces in one run what stopping and resuming with a new --steps produced (the shipped weights)."""
    from safetensors.torch import load_file

    from training import train

    resumed, replay = tmp_path / "resumed", tmp_path / "replay"
    train.main(_train_cmd(tiny_cohort, resumed / "w", resumed / "run", 3))  # leg 1: a 3-step cosine
    train.main(_train_cmd(tiny_cohort, resumed / "w", resumed / "run", 5))  # leg 2: resumed at 3 with a 5-step cosine
    train.main(_train_cmd(tiny_cohort, replay / "w", replay / "run", 5, ["--legs", "3:0,5:3"]))
    plain = tmp_path / "plain"
    train.main(_train_cmd(tiny_cohort, plain / "w", plain / "run", 5))  # one 5-step run: a different model
    for name in ("segmentation", "unmixing"):
        a, b = (load_file(root / "w" / name / "model.safetensors") for root in (resumed, replay))
        assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(plain / "w" / "unmixing" / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((replay / "w" / "segmentation" / "training.json").read_text())["legs"] == [[3, 0], [5, 3]]


def test_legs_are_validated():
    import argparse

    from training.train import parse_legs, schedule_total

    assert parse_legs("1800:0,1000:400") == [(1800, 0), (1000, 400)]
    assert [schedule_total(s, 9, [(1800, 0), (1000, 400)]) for s in (0, 399, 400, 999)] == [1800, 1800, 1000, 1000]
    assert schedule_total(7, 9, None) == 9
    for bad in ("1800:5", "1800:0,900:0", "1800", "a:b"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_legs(bad)


def test_cosine_schedule_is_closed_form_and_resumable():
    from training.train import cosine_factor

    assert cosine_factor(0, 100) == 1.0
    assert abs(cosine_factor(100, 100) - 0.05) < 1e-12
    assert cosine_factor(50, 100) > cosine_factor(60, 100) > cosine_factor(99, 100)
    assert cosine_factor(500, 100) == cosine_factor(100, 100)


def test_sampler_augments_targets_when_asked(tiny_cohort):
    vols = load_volumes(load_cohort(tiny_cohort).split("train"))
    plain = MixedPatchSampler(vols, patch_size=16, mixed=False, seed=3).batch(2)
    aug = MixedPatchSampler(vols, patch_size=16, mixed=False, augment=True, seed=3).batch(2)
    assert aug.x_target.shape == plain.x_target.shape
    assert not torch.equal(aug.x_target, plain.x_target)
    assert set(torch.unique(aug.y_target).tolist()) <= {0, 1, 2, 3}


def test_widen_references_starts_where_the_one_reference_net_was() -> None:
    """The warm start of the two-reference D: identical references at equal weights give D's own output."""
    from mixdemo.models import widen_references

    torch.manual_seed(0)
    one = UnmixingNet().eval()
    two = widen_references(one, 2).eval()
    assert two.n_references == 2 and two.enc1.conv1.in_channels == 3 * one.num_classes
    probs = torch.softmax(torch.randn(2, one.num_classes, 8, 8, 8), 1)
    ref = torch.nn.functional.one_hot(torch.randint(0, one.num_classes, (2, 8, 8, 8)), one.num_classes).permute(0, 4, 1, 2, 3).float()
    alpha = torch.tensor([0.3, 0.45])
    expected = one(probs, ref, alpha)
    got = two(probs, torch.cat([ref, ref], 1), torch.stack([alpha, (1 - alpha) / 2, (1 - alpha) / 2], 1))
    assert torch.allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="one-reference"):
        widen_references(two, 3)


def test_an_empty_weights_dir_variable_means_the_repos_weights(monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, "")
    assert weights.weights_dir() == REPO / "weights"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, "/somewhere/else")
    assert weights.weights_dir() == Path("/somewhere/else")


@pytest.mark.parametrize("module", ["train", "evaluate", "calibrate", "throughput", "train_score", "evaluate_privacy"])
def test_every_training_command_refuses_a_device_it_cannot_use_in_one_line(module, capsys):
    """``--device`` is checked when parsed (a typo is a usage error naming it, not a traceback from deep inside
    torch), and a GPU this machine lacks when the command picks it: a one-line error, exit status 1."""
    import importlib

    import torch

    from mixdemo.models import DeviceUnavailable, pick_device
    from training import user_errors

    parse = importlib.import_module(f"training.{module}").parse_args
    base = ["--out", "unused"] if module == "calibrate" else []
    for bad, says in (("gpu", "is not a device"), ("mps", "only cpu and cuda")):
        with pytest.raises(SystemExit) as stop:
            parse([*base, "--device", bad])
        assert stop.value.code == 2 and says in capsys.readouterr().err
    assert parse([*base, "--device", "cpu"]).device == "cpu"
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    assert parse([*base, "--device", missing]).device == missing  # a GPU machine's command parses anywhere
    with pytest.raises(SystemExit) as stop, user_errors():
        pick_device(missing)
    assert "this machine has" in str(stop.value) and "--device cpu" in str(stop.value)
    with pytest.raises(DeviceUnavailable):
        pick_device(missing)


def test_the_device_is_cuda_when_present_else_the_cpu_and_s_keeps_float32_on_cuda(monkeypatch):
    """``pick_device`` follows ``torch.cuda.is_available`` (a stand-in here: no GPU is needed); on CUDA ``auto``
    keeps S and D in float32 even where the CPU has bfloat16."""
    from mixdemo.models import pick_device

    monkeypatch.delenv(weights.PRECISION_ENV, raising=False)
    monkeypatch.delenv(weights.UNMIXING_PRECISION_ENV, raising=False)
    monkeypatch.setattr(weights, "native_bfloat16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda" and pick_device("cpu").type == "cpu"
    assert weights.s_precision(pick_device()) == weights.unmixing_precision(pick_device()) == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device().type == "cpu"
    assert weights.s_precision(pick_device()) == weights.unmixing_precision(pick_device()) == "bfloat16"


def test_loading_a_model_folder_prints_nothing_to_stdout(tmp_path, capsys):
    """huggingface_hub's mixin prints "Loading weights from local directory" to stdout; the client writes nothing of
    its own there, so the models load quietly, with the weights saved."""
    from mixdemo.attacks.score import ScoreNet
    from mixdemo.models import SegmentationNet, UnmixingNet

    for cls, kwargs in ((SegmentationNet, {"features": (4, 4, 8, 8, 16, 4), "num_classes": 5}),
                        (UnmixingNet, {"num_classes": 5, "patch": 2}), (ScoreNet, {})):
        model = cls(**kwargs)
        model.save_pretrained(tmp_path / cls.__name__)
        capsys.readouterr()
        loaded = cls.from_pretrained(tmp_path / cls.__name__)
        assert capsys.readouterr().out == ""
        assert json.loads(json.dumps(loaded._hub_mixin_config)) == json.loads(json.dumps(model._hub_mixin_config))
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("option, bad, says", [("--seed", "-1", "-1 is less than 0"), ("--ckpt-every", "0", "0 is less than 1"),
                                               ("--steps", "1e3", "'1e3' is not a whole number"),
                                               ("--val-every", "-5", "-5 is less than 0")])
def test_training_refuses_a_count_out_of_range_when_parsed(option, bad, says, capsys):
    """A negative seed (NumPy refuses it at the first patch) or a zero checkpoint interval (a modulo by zero after the
    first step) is a usage error naming the option, before any data is read."""
    from training.train import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args([option, bad])
    assert stop.value.code == 2 and f"argument {option}: {says}" in capsys.readouterr().err
    assert getattr(parse_args([option, "7"]), option[2:].replace("-", "_")) == 7


@pytest.mark.parametrize("option, bad, says", [("--features", "foo", "'foo' is not 'small', 'paper' or 6 comma-separated"),
                                               ("--features", "1,2", "'1,2' is not 'small', 'paper' or 6"),
                                               ("--unmix-features", "16,0", "'16,0' is not 2 comma-separated whole numbers")])
def test_training_refuses_widths_it_cannot_build_when_parsed(option, bad, says, capsys):
    """Widths that are no numbers, or too few, are a usage error naming the option, not a traceback once the cohort
    has loaded."""
    from training.train import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args([option, bad])
    assert stop.value.code == 2 and f"argument {option}: {says}" in capsys.readouterr().err
    assert parse_args(["--features", "paper", "--unmix-features", "8,16"]).features == "paper"


@pytest.mark.parametrize("module, option, bad, says", [
    ("evaluate", "--tta-k", "0", "0 is less than 1"), ("evaluate", "--draws", "0", "0 is less than 1"),
    ("evaluate", "--volumes", "-1", "-1 is less than 0"), ("evaluate", "--crop", "-3", "-3 is less than 0"),
    ("mirror_tta", "--k", "0", "0 is less than 1"), ("tta_aggregation", "--k", "0", "0 is less than 1"),
    ("reference_choice", "--reid-draws", "0", "0 is less than 1"), ("compare_unmixing", "--k-max", "0", "0 is less than 1"),
    ("calibrate", "--rounds", "0", "0 is less than 1"), ("calibrate", "--tta-k", "0", "0 is less than 1"),
    ("calibrate", "--scans", "0", "0 is less than 1"), ("precise_bn", "--batches", "0", "0 is less than 1"),
    ("throughput", "--reps", "0", "0 is less than 1"), ("train_score", "--steps", "0", "0 is less than 1"),
    ("evaluate_privacy", "--threads", "-2", "-2 is less than 0"), ("refresh_baseline", "--threads", "x", "'x' is not a whole number"),
])
def test_evaluations_and_studies_refuse_a_count_out_of_range_when_parsed(module, option, bad, says, capsys):
    """The evaluations' and studies' counts (K, draws, volumes, a crop's side, steps, threads) are checked when the
    command line is parsed: a usage error naming the option, not a silent run over no mixes (``--tta-k 0`` wrote a
    table), all but the last volume (``--volumes -1``) or a traceback (``--crop -3``, ``--k 0``) later."""
    import importlib

    parse_args = importlib.import_module(f"training.{module}").parse_args
    with pytest.raises(SystemExit) as stop:
        parse_args([option, bad])
    assert stop.value.code == 2 and f"argument {option}: {says}" in capsys.readouterr().err


def test_a_results_record_is_strict_json_with_null_for_figures_that_are_not_numbers(tmp_path):
    """An ICC of a class no test scan holds is NaN: written as null (strict parsers refuse NaN), nested
    anywhere, and the document returned is the one written."""
    from training import write_record

    doc = {"icc": {"GM": {"icc": float("nan"), "ci95": [float("-inf"), 0.5]}}, "n": 2, "rows": (np.float64("nan"), 1.0)}
    written = write_record(tmp_path / "new" / "r.json", doc)
    text = (tmp_path / "new" / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == written == {"icc": {"GM": {"icc": None, "ci95": [None, 0.5]}}, "n": 2, "rows": [None, 1.0]}


def test_a_distributed_run_records_the_torchrun_line_that_starts_it(monkeypatch):
    from training.train import launch_command

    assert launch_command(["--steps", "3"], 1) == "python -m training.train --steps 3"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launch_command(["--steps", "3"], 4) == "torchrun --nproc_per_node=4 -m training.train --steps 3"
    assert launch_command(["--steps", "3"], 8) == "torchrun --nnodes=2 --nproc_per_node=4 -m training.train --steps 3"


def test_a_training_record_names_the_gpu_it_trained_on(tmp_path, monkeypatch):
    """``--device cuda:1``: the record's hardware names that GPU, not GPU 0 (names patched here: no GPU)."""
    from training import train

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU #{torch.device(device).index}")
    args = train.parse_args(["--mode", "baseline", "--out", str(tmp_path), "--features", "4,4,8,8,16,4"])
    model = train.EndToEnd(SegmentationNet(features=(4, 4, 8, 8, 16, 4)), None)
    train.export(model, args, (4, 4, 8, 8, 16, 4), "baseline", 1.0, 1, torch.device("cuda", 1), "python -m training.train")
    assert json.loads((tmp_path / "baseline" / "training.json").read_text())["hardware"].endswith(", GPU #1")


def test_a_model_card_is_written_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """α, ³, −: Windows' default text encoding (cp1252, emulated) cannot write U+2212, and would write the others in
    another encoding than the Hub and the app read."""
    from mixdemo.weights import write_model_card

    real_write_text = Path.write_text

    def windows_write_text(self, data, encoding=None, errors=None, newline=None):
        return real_write_text(self, data, encoding=encoding or "cp1252", errors=errors, newline=newline)

    monkeypatch.setattr(Path, "write_text", windows_write_text)
    card = write_model_card(tmp_path, title="S", summary="x_mix = α·x + (1 − α)·x_ref", sections={"Use": "32³ − patches"})
    text = card.read_bytes().decode("utf-8")
    assert "x_mix = α·x + (1 − α)·x_ref" in text and "32³ − patches" in text


def test_a_warm_start_s_d_of_another_design_than_the_flags_is_refused_before_the_cohort_loads(tiny_cohort, tmp_path):
    """Private mode goes on from the folder's D as it is: with other --unmix-* flags the run trained that D and
    recorded the flags' design. It now stops first, naming the flags that fit; without the flags it takes the D's
    design (a D of another design than the defaults included)."""
    from training import train

    start = tmp_path / "start"
    train.main(_train_cmd(tiny_cohort, start, tmp_path / "run0", 1))
    common = ["--mode", "private", "--init-from", str(start), "--data", str(tiny_cohort), "--steps", "1",
              "--batch-size", "2", "--patch-size", "16", "--out", str(tmp_path / "w")]
    with pytest.raises(SystemExit, match=r"the D in .*start.unmixing is --unmix-features 16,32 --unmix-patch 1 "
                                         r"--unmix-hidden 0, not --unmix-features 8,16 --unmix-patch 2: "
                                         r"give --unmix-features 16,32 --unmix-patch 1, or leave them out"):
        train.main([*common, "--unmix-features", "8,16", "--unmix-patch", "2", "--run-dir", str(tmp_path / "run1")])
    folders = train.main([*common, "--unmix-hidden", "0", "--run-dir", str(tmp_path / "run2")])  # what fits: it trains
    assert json.loads((Path(folders["unmixing"]) / "training.json").read_text())["unmix_features"] == [16, 32]
    other = tmp_path / "other"  # a D of another design than the defaults, gone on from without the flags
    train.main([*_train_cmd(tiny_cohort, other, tmp_path / "run3", 1), "--unmix-features", "4,8", "--unmix-patch", "2"])
    folders = train.main([*common[:3], str(other), *common[4:-1], str(tmp_path / "w2"), "--run-dir", str(tmp_path / "run4")])
    record = json.loads((Path(folders["unmixing"]) / "training.json").read_text())
    assert (record["unmix_features"], record["unmix_patch"], record["unmix_hidden"]) == ([4, 8], 2, 0)


def test_parse_args_settles_d_s_design_where_no_d_is_gone_on_from(tmp_path):
    """The --unmix-* flags default to None only while a warm start's D may settle them (start_unmixing_design): a run
    with no D to go on from has D's defaults as soon as it is parsed, so what reads the options without main (export,
    run_settings) finds a design, not None."""
    from training import train

    design = lambda a: (a.unmix_features, a.unmix_patch, a.unmix_hidden)  # noqa: E731
    assert design(train.parse_args(["--mode", "baseline"])) == ("16,32", 1, 0)
    assert design(train.parse_args(["--unmix-patch", "2"])) == ("16,32", 2, 0)
    assert design(train.parse_args(["--mode", "unmixing", "--init-from", str(tmp_path)])) == ("16,32", 1, 0)
    assert design(train.parse_args(["--mode", "private", "--init-from", str(tmp_path)])) == (None, None, None)
    assert train.run_settings(train.parse_args(["--mode", "baseline"]))["unmix_features"] == [16, 32]
