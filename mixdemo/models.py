"""The networks of Mixup-Privacy (Kim et al., Sec. 3.3 and 4).

* :class:`SegmentationNet` — the server's S: MONAI's 3D U-Net++ on a proxy x_mix,
  predicting the mixed segmentation ŷ_mix (trained against Eq. 3's y_mix).
* :class:`UnmixingNet` — the client's D: a small U-Net with four convolutional blocks whose
  normalisation layers are adaptive instance norm (AdaIN, Huang & Belongie 2017) conditioned
  on the mixing weights; input ŷ_mix (softmax) and the one-hot reference labels.

Both use :class:`huggingface_hub.PyTorchModelHubMixin`, so a model folder is
``config.json`` + ``model.safetensors`` (+ a ``README.md`` model card).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from monai.networks.nets import BasicUNetPlusPlus
from torch import nn

from mixdemo.classes import NUM_CLASSES

SMALL_FEATURES: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
"""U-Net++ widths of the shipped weights (1.75 M parameters; trains on 2 CPU cores)."""

PAPER_FEATURES: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
"""MONAI's default U-Net++ widths (7.0 M parameters): the paper-size configuration for GPUs."""

HUB_TAGS = ["mixup-privacy", "medical-imaging", "brain-mri", "segmentation", "monai"]
_HUB_DOWNLOAD_OPTIONS = ("revision", "cache_dir", "force_download", "local_files_only", "token")


class QuietHubMixin(PyTorchModelHubMixin):
    """:class:`~huggingface_hub.PyTorchModelHubMixin` whose load from a local folder prints nothing (the mixin prints
    "Loading weights from local directory" to stdout, where the client writes nothing of its own and which a
    server's log need not hold); a Hub repo id loads as the mixin loads it. Strict, unlike the mixin: a weights file
    that lacks a tensor of the network (which kept its random start) or holds one it does not have, or a
    ``config.json`` naming a setting the class does not take (which the mixin dropped), is a ValueError or
    RuntimeError, not a network other than the one saved."""

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True, **kwargs):
        if not os.path.isdir(model_id):
            return super()._from_pretrained(model_id=model_id, map_location=map_location, strict=strict, **kwargs)
        _check_config_keys(cls, os.path.join(model_id, "config.json"))
        model = cls(**{k: v for k, v in kwargs.items() if k not in _HUB_DOWNLOAD_OPTIONS})
        return cls._load_as_safetensor(model, os.path.join(model_id, "model.safetensors"), map_location, strict)


def _check_config_keys(cls: type, path: str) -> None:
    """ValueError naming the settings of the ``config.json`` at ``path`` that ``cls`` does not take (written by
    another version of the class, or edited); nothing when there is no such file."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    unknown = sorted(set(config) - set(cls._hub_mixin_init_parameters)) if isinstance(config, dict) else []
    if unknown:
        raise ValueError(f"its config.json names {', '.join(map(repr, unknown))}, which {cls.__name__} does not take "
                         "(a folder written by another version of this project, or edited)")


class DeviceUnavailable(ValueError):
    """A device was asked for that this machine does not have (a GPU on a machine without one)."""


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present, else the CPU (``prefer`` forces one, e.g. ``"cpu"``; a GPU this machine lacks raises
    :class:`DeviceUnavailable`)."""
    if not prefer:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(prefer)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= (device.index or 0):
            have = "no CUDA GPU (or a torch build without CUDA)" if count == 0 else f"{count} CUDA GPU(s)"
            raise DeviceUnavailable(f"{prefer!r} was asked for, but this machine has {have}; use --device cpu")
    return device


class SegmentationNet(nn.Module, QuietHubMixin, library_name="mixdemo", tags=HUB_TAGS):
    """Server-side S: 3D U-Net++ (Zhou et al. 2018) returning per-class logits.

    Batch norm (not MONAI's default instance norm) makes the network a fixed per-voxel
    function at inference, so a whole volume in one pass equals patch-wise inference away
    from the borders; patches are trained at 32³ as in the paper's PPMI setting.

    Args:
        in_channels: image channels (1: a T1 proxy).
        num_classes: output classes (background, GM, WM, CSF).
        features: U-Net++ widths (see :data:`SMALL_FEATURES`, :data:`PAPER_FEATURES`).
        norm: MONAI norm name.
        dropout: dropout rate.
    """

    POOLINGS = 4
    """Halvings of the grid down to U-Net++'s deepest level (MONAI's ``BasicUNetPlusPlus``): a patch's sides must
    be multiples of 2⁴ = 16."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = NUM_CLASSES,
        features: Sequence[int] = SMALL_FEATURES,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"U-Net++ needs 6 feature widths, got {len(features)}: {features}")
        self.net = BasicUNetPlusPlus(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=num_classes,
            features=tuple(features),
            norm=norm,
            dropout=dropout,
        )

        self.channels_last = False
        self.fused = False
        self.compute_dtype = torch.float32

    def use_channels_last(self) -> SegmentationNet:
        """Channels-last 3D weights and inputs: oneDNN's CPU convolutions run faster (the bench's
        ``levers.s_channels_last_speedup``), same outputs to float rounding
        (``mixdemo.weights.load_model`` turns it on for models on the CPU). Its convolutions go to oneDNN
        whatever their size (:func:`conv3d`)."""
        self.to(memory_format=torch.channels_last_3d)
        use_onednn_convolutions(self)
        self.channels_last = True
        return self

    def fuse_for_inference(self) -> SegmentationNet:
        """Switch to the fast inference path: the same logits to float rounding, with less than half
        the peak memory of MONAI's forward and faster on a whole volume (``python -m mixdemo.bench``
        measures both, ``levers.s_memory_budget``).

        Each batch norm (eval mode: an affine map) is folded into the convolution before it, and
        :func:`lean_unetpp_forward` replaces MONAI's forward. Irreversible, for inference only:
        the module refuses train mode and saving afterwards. ``mixdemo.weights.load_model`` calls it.
        """
        if self.training:
            raise RuntimeError("fuse_for_inference() needs eval mode: batch norm must use its running statistics.")
        fold_batch_norms(self.net)
        self.fused = True
        return self

    def use_bfloat16(self) -> SegmentationNet:
        """Inference in bfloat16: weights and activations in bfloat16, float32 logits out. On a CPU with
        native bfloat16 instructions (AVX512-BF16, AMX) oneDNN's convolutions run at about twice their
        float32 rate; the Dice it costs or gains is measured (``python -m mixdemo.bench``,
        ``levers.s_bfloat16``). Irreversible, for inference only (``mixdemo.weights.load_model`` calls it
        when ``$MIXDEMO_PRECISION`` asks for it)."""
        if self.training:
            raise RuntimeError("use_bfloat16() is for inference: call eval() first.")
        self.to(torch.bfloat16)
        self.compute_dtype = torch.bfloat16
        return self

    def train(self, mode: bool = True) -> SegmentationNet:
        if mode and getattr(self, "fused", False):
            raise RuntimeError("This SegmentationNet was fused for inference (batch norms folded); load it again to train.")
        if mode and self.compute_dtype != torch.float32:
            raise RuntimeError("This SegmentationNet runs in bfloat16 for inference; load it again to train.")
        return super().train(mode)

    def _save_pretrained(self, save_directory) -> None:  # type: ignore[override]
        if self.fused or self.compute_dtype != torch.float32:
            raise RuntimeError("A SegmentationNet fused or cast for inference is not saved as trained; "
                               "load it with mixdemo.weights.load_model(..., fast=False) to save it.")
        super()._save_pretrained(save_directory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) with sides divisible by 16 → (B, C, X, Y, Z) logits (float32)."""
        if self.channels_last and x.ndim == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = x.to(self.compute_dtype)
        if self.fused and all(n % 16 == 0 for n in x.shape[2:]):
            return lean_unetpp_forward(self.net, x).float()
        return self.net(x)[-1].float()  # BasicUNetPlusPlus always returns a list; the final output is last


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
           padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """``torch.nn.functional.conv3d``, sent to oneDNN for inference on the CPU in float32. PyTorch sends a
    convolution of one sample whose channels × first two sides are at most 20480 to its native kernel instead
    (the deep levels of a crop or a patch, and D's second level on 4³ patches of a whole volume), which in 3D
    runs several times slower than oneDNN's (``tests/test_models_training.py`` checks which kernel runs); the
    same outputs to float rounding. Gradients, other dtypes, devices and graph capture take PyTorch's own choice."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not isinstance(padding, str) and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export()):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), list(stride), list(dilation), groups)
    return nn.functional.conv3d(x, weight, bias, stride, padding, dilation, groups)


class OneDnnConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` whose forward goes through :func:`conv3d` (same parameters, same state dict)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        return conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def use_onednn_convolutions(module: nn.Module) -> int:
    """Turn every ``nn.Conv3d`` of ``module`` into an :class:`OneDnnConv3d`, in place; returns how many."""
    swapped = 0
    for m in module.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = OneDnnConv3d
            swapped += 1
    return swapped


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm3d`` of MONAI's ``Convolution`` blocks (conv → ADN) into its
    convolution, in place, and replace the norm by an identity; returns how many were folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for block in module.modules():
        conv, adn = getattr(block, "conv", None), getattr(block, "adn", None)
        norm = getattr(adn, "N", None)
        if isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d):
            block.conv = fuse_conv_bn_eval(conv, norm)
            adn.N = nn.Identity()
            folded += 1
    return folded


def conv_of_concat(conv: nn.Conv3d, parts: list[torch.Tensor]) -> torch.Tensor:
    """``conv(torch.cat(parts, 1))`` without building the concatenation: the sum of one convolution per
    part, the weight split along its input channels (in channels-last 3D also faster than the
    convolution over the concatenation). ``parts`` is emptied as they are used, so their memory can go."""
    weights = torch.split(conv.weight, [p.shape[1] for p in parts], dim=1)
    out = None
    for weight in weights:
        part = parts.pop(0)  # each part's memory can go once it is convolved
        y = conv3d(part, weight, conv.bias if out is None else None, conv.stride, conv.padding, conv.dilation, conv.groups)
        del part
        out = y if out is None else out.add_(y)
        del y
    assert out is not None, "conv_of_concat needs at least one part"
    return out


def _upcat_sum(upcat: nn.Module, low: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
    """MONAI's ``UpCat`` without building ``cat(skips, upsample(low))`` (:func:`conv_of_concat`).
    ``skips`` is emptied as the parts are used, so their memory can go."""
    parts = skips + [upcat.upsample(low)]
    skips.clear()
    first = upcat.convs.conv_0
    return upcat.convs.conv_1(first.adn(conv_of_concat(first.conv, parts)))


def lean_unetpp_forward(net: BasicUNetPlusPlus, x: torch.Tensor) -> torch.Tensor:
    """The final output of MONAI's ``BasicUNetPlusPlus.forward`` (sides divisible by 16), computed
    with :func:`_upcat_sum`, each intermediate feature released after its last use and the unused
    deep-supervision heads skipped."""
    f: dict[str, torch.Tensor] = {"00": net.conv_0_0(x)}
    f["10"] = net.conv_1_0(f["00"])
    f["01"] = _upcat_sum(net.upcat_0_1, f["10"], [f["00"]])
    f["20"] = net.conv_2_0(f["10"])
    f["11"] = _upcat_sum(net.upcat_1_1, f["20"], [f["10"]])
    f["02"] = _upcat_sum(net.upcat_0_2, f["11"], [f["00"], f["01"]])
    f["30"] = net.conv_3_0(f["20"])
    f["21"] = _upcat_sum(net.upcat_2_1, f["30"], [f["20"]])
    f["12"] = _upcat_sum(net.upcat_1_2, f["21"], [f["10"], f["11"]])
    f["03"] = _upcat_sum(net.upcat_0_3, f["12"], [f["00"], f["01"], f["02"]])
    f["40"] = net.conv_4_0(f["30"])
    f["31"] = _upcat_sum(net.upcat_3_1, f.pop("40"), [f.pop("30")])
    f["22"] = _upcat_sum(net.upcat_2_2, f.pop("31"), [f.pop("20"), f.pop("21")])
    f["13"] = _upcat_sum(net.upcat_1_3, f.pop("22"), [f.pop("10"), f.pop("11"), f.pop("12")])
    x04 = _upcat_sum(net.upcat_0_4, f.pop("13"), [f.pop("00"), f.pop("01"), f.pop("02"), f.pop("03")])
    return net.final_conv_0_4(x04)


class AdaIN3d(nn.Module):
    """Adaptive instance norm: InstanceNorm3d(affine=False), then γ(α)·x + β(α)."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(channels, affine=False)
        self.to_scale_shift = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``inplace``: overwrite ``x`` (inference on the fast path only; the caller owns ``x``)."""
        gamma, beta = self.to_scale_shift(cond).chunk(2, dim=1)
        if x.dtype == torch.bfloat16 and not self.training:
            return _adain_bfloat16(x, 1 + gamma, beta, self.norm.eps)
        view = (-1, x.shape[1], 1, 1, 1)
        if self.training or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return self.norm(x) * (1 + gamma.view(view)) + beta.view(view)
        mean, var = channel_moments(x)  # inference in channels-last: the statistics, then one affine pass
        scale = (1 + gamma) * torch.rsqrt(var + self.norm.eps)
        shift = (beta - mean * scale).view(view)
        if inplace:  # one pass: shift + x·scale written over x
            return torch.addcmul(shift, x, scale.view(view), out=x)
        return torch.addcmul(shift, x, scale.view(view))


def _adain_bfloat16(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """Instance norm then ``scale``·x + ``shift`` (each (B, C), float32) of a bfloat16 ``x``, one sample at
    a time: group norm with a group per channel is instance norm, and PyTorch's CPU kernel for it takes
    its statistics in float32 from bfloat16 inputs and writes bfloat16 in one pass (the float32 path's
    Gram-matrix statistics would lose the variance to bfloat16 rounding). Off the CPU (bfloat16 forced on a
    GPU; never chosen there by default) the affine takes ``x``'s dtype, which every backend's kernel accepts."""
    channels = x.shape[1]
    dtype = torch.float32 if x.device.type == "cpu" else x.dtype
    scale, shift = scale.to(dtype), shift.to(dtype)
    if x.shape[0] == 1:
        return nn.functional.group_norm(x, channels, scale[0], shift[0], eps)
    return torch.cat([nn.functional.group_norm(x[i : i + 1], channels, scale[i], shift[i], eps)
                      for i in range(x.shape[0])])


def channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and (biased) variance of a channels-last (B, C, X, Y, Z) tensor,
    as instance norm takes them: the mean by a sum over voxels in groups of 64 (about twice as fast
    as ``mean()`` in this layout, as accurate), E[x²] from the diagonal of the channel Gram matrix (a
    matrix product, ~5× faster on the CPU than ``var_mean`` in this layout)."""
    flat = x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], -1, x.shape[1])  # a view in channels-last
    grouped = flat.shape[1] // 64 * 64
    sums = flat[:, :grouped].reshape(flat.shape[0], -1, 64, flat.shape[2]).sum(2).sum(1)
    if grouped < flat.shape[1]:
        sums += flat[:, grouped:].sum(1)
    mean = sums / flat.shape[1]
    square = torch.bmm(flat.transpose(1, 2), flat).diagonal(dim1=1, dim2=2) / flat.shape[1]
    return mean, (square - mean * mean).clamp_min(0)


class ConvBlock(nn.Module):
    """Two (conv 3³ → AdaIN → LeakyReLU) layers."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.norm1 = AdaIN3d(out_ch, cond_dim)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.norm2 = AdaIN3d(out_ch, cond_dim)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor | list[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        """``x``: a tensor, or the parts of its concatenation along the channels, which the first
        convolution then takes one by one (:func:`conv_of_concat`; the list is emptied)."""
        inplace = not torch.is_grad_enabled()  # the convolutions' outputs are ours to overwrite
        first = conv_of_concat(self.conv1, x) if isinstance(x, list) else self.conv1(x)
        x = self.act(self.norm1(first, cond, inplace))
        return self.act(self.norm2(self.conv2(x), cond, inplace))


class UnmixingNet(nn.Module, QuietHubMixin, library_name="mixdemo", tags=HUB_TAGS):
    """Client-side D(ŷ_mix, y_ref, α): a four-block U-Net with AdaIN on the mixing weights.

    Args:
        num_classes: classes of the label maps.
        n_references: references per mix (1: the paper's Eq. 2; 2: three sources).
        features: widths of the two resolution levels.
        cond_dim: width of the embedding of the mixing weights.
        patch: 1 runs the four blocks at full resolution. ``p`` > 1 runs them on ``p``³ patches: a
            stride-``p`` convolution in (each patch's voxels become channels), a transposed one out,
            and a per-voxel skip from the inputs to the logits whose gain depends on α, so each
            voxel's own mixed probability still reaches its output. At ``p`` = 2 and 4 a fraction of
            the client time (``python -m mixdemo.bench``), at some cost in Dice
            (``python -m training.compare_unmixing``) when trained on 32³ patches; trained on 96³ patches
            the ``p`` = 2 D matches ``p`` = 1 (``unmixing-p2-96``; trained on at the client's α and calibrated,
            ``unmixing-p2-96-a35-cal``, the shipped default).
        voxel_hidden: with ``patch`` > 1, 0 keeps the α-gated linear per-voxel skip; ``H`` > 0 makes
            each voxel's logits a small α-conditioned MLP instead: its inputs to ``H`` channels, plus
            the blocks' features brought back to the voxel (the transposed convolution out gives
            ``H`` channels), a FiLM of α, LeakyReLU, then ``H`` → classes. Per voxel this is a
            nonlinear function of its own ŷ_mix, reference label and α (what the naive Eq. 4 is
            too) refined by the patch-level context.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        n_references: int = 1,
        features: Sequence[int] = (16, 32),
        cond_dim: int = 32,
        patch: int = 1,
        voxel_hidden: int = 0,
    ) -> None:
        super().__init__()
        if voxel_hidden and patch == 1:
            raise ValueError("voxel_hidden needs patch > 1 (at full resolution the blocks see each voxel already).")
        f0, f1 = features
        in_ch = num_classes * (1 + n_references)
        self.num_classes = num_classes
        self.n_references = n_references
        self.patch = patch
        self.voxel_hidden = voxel_hidden
        self.embed = nn.Sequential(nn.Linear(1 + n_references, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim), nn.SiLU())
        if patch > 1:
            self.stem = nn.Conv3d(in_ch, f0, patch, stride=patch)
        if patch > 1 and voxel_hidden:
            self.voxel_in = nn.Conv3d(in_ch, voxel_hidden, 1)
            self.voxel_film = nn.Linear(cond_dim, 2 * voxel_hidden)
            nn.init.zeros_(self.voxel_film.weight)
            nn.init.zeros_(self.voxel_film.bias)
            self.voxel_out = nn.Conv3d(voxel_hidden, num_classes, 1)
        elif patch > 1:
            self.voxel_skip = nn.Conv3d(in_ch, num_classes, 1)
            self.voxel_gain = nn.Linear(cond_dim, num_classes)
        self.enc1 = ConvBlock(f0 if patch > 1 else in_ch, f0, cond_dim)
        self.enc2 = ConvBlock(f0, f1, cond_dim)
        self.up = nn.ConvTranspose3d(f1, f0, 2, stride=2)
        self.dec1 = ConvBlock(2 * f0, f0, cond_dim)
        self.head = ConvBlock(f0, f0, cond_dim)
        out_ch = voxel_hidden or num_classes
        self.out = nn.ConvTranspose3d(f0, out_ch, patch, stride=patch) if patch > 1 else nn.Conv3d(f0, num_classes, 1)
        self.channels_last = False
        self.fused_patches = True  # inference with patch > 1: _forward_fused_patches (False: the convolutions)
        self.compute_dtype = torch.float32  # the four blocks' precision (use_bfloat16)

    @property
    def size_multiple(self) -> int:
        """Each input side must be a multiple of this (the patches, then one pooling)."""
        return 2 * self.patch

    def use_channels_last(self) -> UnmixingNet:
        """Channels-last 3D weights and inputs for inference on the CPU: faster convolutions and the
        fast instance-norm statistics of :func:`channel_moments`; the same outputs to float rounding
        (``mixdemo.weights.load_model`` turns it on for models on the CPU). Its convolutions go to oneDNN
        whatever their size (:func:`conv3d`)."""
        self.to(memory_format=torch.channels_last_3d)
        use_onednn_convolutions(self)
        self.channels_last = True
        return self

    def use_bfloat16(self) -> UnmixingNet:
        """Inference with the four blocks in bfloat16 (their convolutions' weights and activations; the
        instance norms' statistics in float32, :func:`_adain_bfloat16`); the inputs, the α embedding, the
        per-voxel paths and the output layer stay in float32, and so do the logits. On a CPU with native
        bfloat16 D runs faster than in float32 in channels-last 3D (``python -m mixdemo.bench``, its ``d_precision``
        rows); the Dice it costs is measured (``python -m training.evaluate`` with ``$MIXDEMO_UNMIXING_PRECISION``,
        ``results/d_bfloat16.json``). Irreversible, for inference only."""
        if self.training:
            raise RuntimeError("use_bfloat16() is for inference: call eval() first.")
        for block in (self.enc1, self.enc2, self.up, self.dec1, self.head):
            for module in block.modules():
                if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                    module.to(torch.bfloat16)
        self.compute_dtype = torch.bfloat16
        return self

    def train(self, mode: bool = True) -> UnmixingNet:
        if mode and self.compute_dtype != torch.float32:
            raise RuntimeError("This UnmixingNet runs in bfloat16 for inference; load it again to train.")
        return super().train(mode)

    def _save_pretrained(self, save_directory) -> None:  # type: ignore[override]
        if self.compute_dtype != torch.float32:
            raise RuntimeError("An UnmixingNet cast for inference is not saved as trained; "
                               "load it with mixdemo.weights.load_model(..., fast=False) to save it.")
        super()._save_pretrained(save_directory)

    def forward(self, mixed_prob: torch.Tensor, reference_onehot: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Predict the target's logits.

        Args:
            mixed_prob: (B, C, X, Y, Z) softmax of S's output; X, Y, Z multiples of ``size_multiple``.
            reference_onehot: (B, R·C, X, Y, Z) one-hot labels of the R references (any dtype: uint8 saves memory).
            weights: (B,) α, or (B, 1 + R) α followed by each reference's weight.
        """
        if weights.ndim == 1:
            weights = torch.stack([weights, 1 - weights], dim=1)
        if weights.shape[1] != 1 + self.n_references:
            raise ValueError(f"Expected {1 + self.n_references} mixing weights per sample, got {weights.shape[1]}.")
        cond = self.embed(weights.to(mixed_prob.dtype))
        if self.patch == 1:  # the input is not bound here, so _blocks can free it after its first layer
            return self.out(self._blocks(self._voxel_input(mixed_prob, reference_onehot), cond))
        if self.fused_patches and not torch.is_grad_enabled():
            if self.voxel_hidden:
                return self._forward_fused_voxel_mlp(mixed_prob, reference_onehot, cond)
            return self._forward_fused_patches(mixed_prob, reference_onehot, cond)
        x = self._voxel_input(mixed_prob, reference_onehot)
        if self.voxel_hidden:
            hidden = self.voxel_in(x) + self.out(self._blocks(self.stem(x), cond))
            scale, shift = self._voxel_film(cond)
            hidden = nn.functional.leaky_relu(hidden * scale.view(*scale.shape, 1, 1, 1) + shift.view(*shift.shape, 1, 1, 1), 0.1)
            return self.voxel_out(hidden)
        direct = self.voxel_skip(x) * self.voxel_gain(cond).view(-1, self.num_classes, 1, 1, 1)
        return self.out(self._blocks(self.stem(x), cond)) + direct

    def _voxel_film(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-voxel MLP's FiLM of α: (B, H) scale 1 + γ and shift β."""
        gamma, beta = self.voxel_film(cond).chunk(2, dim=1)
        return 1 + gamma, beta

    def _voxel_input(self, mixed_prob: torch.Tensor, reference_onehot: torch.Tensor) -> torch.Tensor:
        """D's input channels per voxel: ŷ_mix, then the references' one-hot labels."""
        if self.channels_last:  # copied once into a channels-last buffer: no concatenation, no layout copy
            return self._channels_last_input(mixed_prob, reference_onehot).permute(0, 4, 1, 2, 3)
        return torch.cat([mixed_prob, reference_onehot], dim=1)

    def _blocks(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The four AdaIN blocks with the U-Net's one pooling, skip and up-sampling (in inference each
        feature map is freed after its last use). Cast for inference (:meth:`use_bfloat16`), they run in
        bfloat16 and return float32; otherwise in the input's dtype (autocast's in mixed-precision training)."""
        reduced = self.compute_dtype != torch.float32
        e1 = self.enc1(x.to(self.compute_dtype) if reduced else x, cond)
        del x
        e2 = self.enc2(nn.functional.max_pool3d(e1, 2), cond)
        skip = [self.up(e2), e1]
        del e1, e2
        if not (self.channels_last and not torch.is_grad_enabled()):  # else dec1's first convolution takes the parts
            skip = torch.cat(skip, dim=1)
        out = self.head(self.dec1(skip, cond), cond)
        return out.float() if reduced else out

    def _forward_fused_patches(self, mixed_prob: torch.Tensor, reference_onehot: torch.Tensor,
                               cond: torch.Tensor) -> torch.Tensor:
        """Inference for ``patch`` > 1, the same function as the convolutions of :meth:`forward` with
        less memory traffic at full resolution: the inputs are copied once into a channels-last
        buffer (no concatenation, no layout copy), the per-voxel skip (:meth:`_voxel_skip_logits`) and the
        transposed output convolution are matrix products, and the logits come back channels-last (as a
        (B, C, X, Y, Z) view), the patches' logits added in place."""
        p, c = self.patch, self.num_classes
        b, _, *sides = mixed_prob.shape
        grid = [n // p for n in sides]
        voxels = self._channels_last_input(mixed_prob, reference_onehot)
        logits, skip_bias = self._voxel_skip_logits(voxels, cond)  # (B, X, Y, Z, C), its bias added below
        h = self._blocks(self.stem(voxels.permute(0, 4, 1, 2, 3)), cond).permute(0, 2, 3, 4, 1)
        del voxels
        per_patch = p**3  # the transposed convolution: each patch's features → its voxels' logits
        out_w = self.out.weight.permute(0, 2, 3, 4, 1).reshape(self.out.in_channels, per_patch * c)
        for i in range(b):
            bias = (self.out.bias + skip_bias[i]).repeat(per_patch)  # each voxel gets one patch's logits: both biases
            patch_logits = torch.addmm(bias, h[i].reshape(-1, h.shape[-1]), out_w)
            as_voxels = patch_logits.view(*grid, p, p, p, c).permute(0, 3, 1, 4, 2, 5, 6)
            logits[i].view(grid[0], p, grid[1], p, grid[2], p, c).add_(as_voxels)
        return logits.permute(0, 4, 1, 2, 3)

    def _voxel_skip_logits(self, voxels: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The α-gated per-voxel skip of a (B, X, Y, Z, channels) input without its bias: (B, X, Y, Z, C) logits and
        the (B, C) bias owed to them. The gain of α is folded into the weights, and each sample is one matrix product
        that takes four consecutive voxels per row against a block-diagonal weight (the same sums; a wider product,
        faster than one voxel per row)."""
        b, c = voxels.shape[0], self.num_classes
        gains = self.voxel_gain(cond)  # (B, C)
        per_sample = voxels[0].numel() // voxels.shape[-1]
        group = 4 if per_sample % 4 == 0 else 1
        logits = torch.empty(*voxels.shape[:-1], c, dtype=voxels.dtype, device=voxels.device)
        for i in range(b):
            weight = self.voxel_skip.weight.reshape(c, -1).t() * gains[i]  # (channels, C)
            torch.mm(voxels[i].reshape(-1, group * voxels.shape[-1]), torch.block_diag(*[weight] * group),
                     out=logits[i].view(-1, group * c))
        return logits, self.voxel_skip.bias * gains

    def _channels_last_input(self, mixed_prob: torch.Tensor, reference_onehot: torch.Tensor) -> torch.Tensor:
        """D's input channels copied once into a (B, X, Y, Z, channels) buffer (no concatenation, no layout copy)."""
        b, _, *sides = mixed_prob.shape
        in_ch = mixed_prob.shape[1] + reference_onehot.shape[1]
        voxels = torch.empty(b, *sides, in_ch, dtype=mixed_prob.dtype, device=mixed_prob.device)
        voxels[..., :mixed_prob.shape[1]].copy_(mixed_prob.permute(0, 2, 3, 4, 1))
        voxels[..., mixed_prob.shape[1]:].copy_(reference_onehot.permute(0, 2, 3, 4, 1))
        return voxels

    def _forward_fused_voxel_mlp(self, mixed_prob: torch.Tensor, reference_onehot: torch.Tensor,
                                 cond: torch.Tensor) -> torch.Tensor:
        """Inference for ``voxel_hidden`` > 0, the function of :meth:`forward`'s convolutions: the
        blocks on the patches, then the per-voxel MLP one sample and one slab of patches at a time
        (each slab's hidden channels stay in cache). The FiLM of α is folded into the weights that
        feed the hidden channels, so a slab costs two matrix products, one in-place add of the
        context and the activation. Logits come back channels-last, as a (B, C, X, Y, Z) view."""
        p, c, hid = self.patch, self.num_classes, self.voxel_hidden
        b, _, *sides = mixed_prob.shape
        grid = [n // p for n in sides]
        voxels = self._channels_last_input(mixed_prob, reference_onehot)
        h = self._blocks(self.stem(voxels.permute(0, 4, 1, 2, 3)), cond).permute(0, 2, 3, 4, 1)  # (B, gx, gy, gz, f0)
        out_w = self.out.weight.permute(0, 2, 3, 4, 1).reshape(self.out.in_channels, p**3 * hid).t()
        in_w = self.voxel_in.weight.reshape(hid, -1)
        last_w, last_b = self.voxel_out.weight.reshape(c, hid).t(), self.voxel_out.bias
        scales, shifts = self._voxel_film(cond)
        logits = torch.empty(b, *sides, c, dtype=mixed_prob.dtype, device=mixed_prob.device)
        for i in range(b):  # (W·x + b)·scale + shift, with scale and shift folded into W and b
            scale, shift = scales[i], shifts[i]
            per_patch_scale = scale.repeat(p**3)  # the context's rows are (voxel in the patch, channel)
            ctx_w, ctx_b = out_w * per_patch_scale[:, None], self.out.bias.repeat(p**3) * per_patch_scale
            vox_w, vox_b = (in_w * scale[:, None]).t(), self.voxel_in.bias * scale + shift
            for row in range(grid[0]):
                rows = slice(row * p, (row + 1) * p)
                hidden = torch.addmm(vox_b, voxels[i, rows].reshape(-1, in_w.shape[1]), vox_w)  # (p·Y·Z, H)
                context = torch.addmm(ctx_b, h[i, row].reshape(-1, ctx_w.shape[1]), ctx_w.t())  # (gy·gz, p³·H)
                as_voxels = context.view(grid[1], grid[2], p, p, p, hid).permute(2, 0, 3, 1, 4, 5)
                hidden.view(p, grid[1], p, grid[2], p, hid).add_(as_voxels)
                torch.nn.functional.leaky_relu_(hidden, 0.1)
                torch.addmm(last_b, hidden, last_w, out=logits[i, rows].view(-1, c))
        return logits.permute(0, 4, 1, 2, 3)


def unmixing_design(unmix: nn.Module) -> dict:
    """A D's design as the benchmark and the D comparison record it: patch, per-voxel MLP width, parameters."""
    return {"patch": getattr(unmix, "patch", 1), "voxel_hidden": getattr(unmix, "voxel_hidden", 0),
            "parameters": count_parameters(unmix)}


@torch.no_grad()
def widen_references(one_ref: UnmixingNet, n_references: int) -> UnmixingNet:
    """A D for ``n_references`` references that starts from a one-reference D.

    The new reference channels of the first convolution get the one-reference weights, each
    divided by ``n_references``, and every reference-weight input of the α embedding gets the
    old (1 − α) column; so with R identical references and equal reference weights the widened
    net computes exactly what ``one_ref`` computes. Used to warm-start three-source training.
    """
    if one_ref.n_references != 1 or one_ref.patch != 1:
        raise ValueError("widen_references starts from a one-reference UnmixingNet at full resolution (patch 1).")
    c = one_ref.num_classes
    f0, f1 = one_ref.enc2.conv1.in_channels, one_ref.enc2.conv1.out_channels
    wide = UnmixingNet(num_classes=c, n_references=n_references, features=(f0, f1),
                       cond_dim=one_ref.embed[0].out_features)
    state = {k: v.clone() for k, v in one_ref.state_dict().items()}
    conv_w = state["enc1.conv1.weight"]  # (f0, 2C, 3, 3, 3): ŷ_mix channels, then the reference's
    ref_w = conv_w[:, c:] / n_references
    state["enc1.conv1.weight"] = torch.cat([conv_w[:, :c]] + [ref_w] * n_references, dim=1)
    embed_w = state["embed.0.weight"]  # (cond, 2): α, then 1 − α
    state["embed.0.weight"] = torch.cat([embed_w[:, :1]] + [embed_w[:, 1:]] * n_references, dim=1)
    wide.load_state_dict(state)
    return wide


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
