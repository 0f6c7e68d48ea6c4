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

from collections.abc import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from monai.networks.nets import BasicUNetPlusPlus
from torch import nn

from mixdemo.phantoms import NUM_CLASSES

SMALL_FEATURES: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
"""U-Net++ widths of the shipped weights (1.75 M parameters; trains on 2 CPU cores)."""

PAPER_FEATURES: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
"""MONAI's default U-Net++ widths (7.0 M parameters): the paper-size configuration for GPUs."""

HUB_TAGS = ["mixup-privacy", "medical-imaging", "brain-mri", "segmentation", "monai"]


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present, else the CPU (``prefer`` forces one, e.g. ``"cpu"``)."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SegmentationNet(nn.Module, PyTorchModelHubMixin, library_name="mixdemo", tags=HUB_TAGS):
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

    def use_channels_last(self) -> SegmentationNet:
        """Channels-last 3D weights and inputs: oneDNN's CPU convolutions run ~15 % faster, same outputs
        to float rounding (``mixdemo.weights.load_model`` turns it on for models on the CPU)."""
        self.to(memory_format=torch.channels_last_3d)
        self.channels_last = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) with sides divisible by 16 → (B, C, X, Y, Z) logits."""
        if self.channels_last and x.ndim == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.net(x)[-1]  # BasicUNetPlusPlus always returns a list; the final output is last


class AdaIN3d(nn.Module):
    """Adaptive instance norm: InstanceNorm3d(affine=False), then γ(α)·x + β(α)."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(channels, affine=False)
        self.to_scale_shift = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.to_scale_shift(cond).chunk(2, dim=1)
        view = (-1, x.shape[1], 1, 1, 1)
        return self.norm(x) * (1 + gamma.view(view)) + beta.view(view)


class ConvBlock(nn.Module):
    """Two (conv 3³ → AdaIN → LeakyReLU) layers."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.norm1 = AdaIN3d(out_ch, cond_dim)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.norm2 = AdaIN3d(out_ch, cond_dim)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x), cond))
        return self.act(self.norm2(self.conv2(x), cond))


class UnmixingNet(nn.Module, PyTorchModelHubMixin, library_name="mixdemo", tags=HUB_TAGS):
    """Client-side D(ŷ_mix, y_ref, α): a four-block U-Net with AdaIN on the mixing weights.

    Args:
        num_classes: classes of the label maps.
        n_references: references per mix (1: the paper's Eq. 2; 2: three sources).
        features: widths of the two resolution levels.
        cond_dim: width of the embedding of the mixing weights.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        n_references: int = 1,
        features: Sequence[int] = (16, 32),
        cond_dim: int = 32,
    ) -> None:
        super().__init__()
        f0, f1 = features
        self.num_classes = num_classes
        self.n_references = n_references
        self.embed = nn.Sequential(nn.Linear(1 + n_references, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim), nn.SiLU())
        self.enc1 = ConvBlock(num_classes * (1 + n_references), f0, cond_dim)
        self.enc2 = ConvBlock(f0, f1, cond_dim)
        self.up = nn.ConvTranspose3d(f1, f0, 2, stride=2)
        self.dec1 = ConvBlock(2 * f0, f0, cond_dim)
        self.head = ConvBlock(f0, f0, cond_dim)
        self.out = nn.Conv3d(f0, num_classes, 1)

    def forward(self, mixed_prob: torch.Tensor, reference_onehot: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Predict the target's logits.

        Args:
            mixed_prob: (B, C, X, Y, Z) softmax of S's output; X, Y, Z even.
            reference_onehot: (B, R·C, X, Y, Z) one-hot labels of the R references.
            weights: (B,) α, or (B, 1 + R) α followed by each reference's weight.
        """
        if weights.ndim == 1:
            weights = torch.stack([weights, 1 - weights], dim=1)
        if weights.shape[1] != 1 + self.n_references:
            raise ValueError(f"Expected {1 + self.n_references} mixing weights per sample, got {weights.shape[1]}.")
        cond = self.embed(weights.to(mixed_prob.dtype))
        e1 = self.enc1(torch.cat([mixed_prob, reference_onehot], dim=1), cond)
        e2 = self.enc2(nn.functional.max_pool3d(e1, 2), cond)
        d1 = self.dec1(torch.cat([self.up(e2), e1], dim=1), cond)
        return self.out(self.head(d1, cond))


@torch.no_grad()
def widen_references(one_ref: UnmixingNet, n_references: int) -> UnmixingNet:
    """A D for ``n_references`` references that starts from a one-reference D.

    The new reference channels of the first convolution get the one-reference weights, each
    divided by ``n_references``, and every reference-weight input of the α embedding gets the
    old (1 − α) column; so with R identical references and equal reference weights the widened
    net computes exactly what ``one_ref`` computes. Used to warm-start three-source training.
    """
    if one_ref.n_references != 1:
        raise ValueError("widen_references starts from a one-reference UnmixingNet.")
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
