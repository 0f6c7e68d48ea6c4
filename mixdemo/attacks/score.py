"""Score prior of the attack lab: a noise-conditional score network for 32³ brain patches.

NCSN (Song & Ermon, "Generative modeling by estimating gradients of the data distribution",
NeurIPS 2019) with the NCSNv2 simplification (Song & Ermon, "Improved techniques for training
score-based generative models", NeurIPS 2020, technique 3): an *unconditional* network whose
output is divided by σ, s_θ(x, σ) = f_θ(x) / σ ≈ ∇_x log p_σ(x).

* :func:`sigmas` — the geometric noise schedule σ_1 > … > σ_L (NCSN Sec. 4.1).
* :func:`max_pairwise_distance` — σ_1 "of the order of the largest distance between training
  patches" (NCSNv2 technique 1), measured on the data.
* :func:`dsm_loss` — denoising score matching (Vincent 2011) with weighting λ(σ) = σ² (NCSN Eq. 6).
* :class:`ScoreNet` — MONAI ``BasicUNet`` (3D U-Net) with small widths, saved in Hub format
  (``config.json`` + ``model.safetensors``) through ``PyTorchModelHubMixin``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from mixdemo.mixing import patch_slices, sample_patch_corner
from mixdemo.models import QuietHubMixin

SCORE_FEATURES: tuple[int, ...] = (8, 16, 32, 64, 128, 8)
"""BasicUNet widths of the shipped score network (trains in ~30 min on one CPU thread)."""

SCORE_TAGS = ["mixup-privacy", "medical-imaging", "brain-mri", "score-based-model", "ncsn", "monai"]


def sigmas(sigma_1: float, sigma_L: float = 0.01, L: int = 10) -> torch.Tensor:
    """Geometric noise schedule σ_i = σ_1 · (σ_L / σ_1)^((i-1)/(L-1)), i = 1…L (NCSN Sec. 4.1).

    Returns:
        (L,) float32 tensor, strictly decreasing from ``sigma_1`` to ``sigma_L``.

    Raises:
        ValueError: unless σ_1 > σ_L > 0 and L ≥ 2.
    """
    if not (sigma_L > 0 and sigma_1 > sigma_L):
        raise ValueError(f"Expected sigma_1 > sigma_L > 0; got sigma_1={sigma_1}, sigma_L={sigma_L}.")
    if L < 2:
        raise ValueError(f"Expected at least 2 noise levels; got L={L}.")
    return torch.from_numpy(np.geomspace(sigma_1, sigma_L, L).astype(np.float32))


def max_pairwise_distance(patches: torch.Tensor | np.ndarray) -> float:
    """Largest Euclidean distance ‖x_i − x_j‖₂ between N patches (NCSNv2 technique 1: σ_1 ≈ it).

    Args:
        patches: (N, ...) patches, N ≥ 2.
    """
    x = torch.as_tensor(np.asarray(patches) if isinstance(patches, np.ndarray) else patches, dtype=torch.float64)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"Expected at least 2 patches stacked on axis 0; got shape {tuple(x.shape)}.")
    flat = x.flatten(1)
    return float(torch.cdist(flat, flat).max())


def sample_brain_patches(
    images: Sequence[np.ndarray],
    foregrounds: Sequence[np.ndarray],
    n: int,
    rng: np.random.Generator,
    size: int = 32,
) -> np.ndarray:
    """``n`` random ``size``³ patches centred on brain voxels of random images.

    Args:
        images: (X, Y, Z) volumes.
        foregrounds: per image, the (M, 3) brain voxel coordinates (``np.argwhere(labels > 0)``).
        n: number of patches.
        rng: numpy generator.
        size: patch side.

    Returns:
        (n, size, size, size) float32.
    """
    if len(images) != len(foregrounds) or not images:
        raise ValueError(
            f"Expected one foreground array per image and at least one image; got {len(images)} and {len(foregrounds)}."
        )
    fg = foregrounds
    out = np.empty((n, size, size, size), np.float32)
    for k in range(n):
        i = int(rng.integers(len(images)))
        corner = sample_patch_corner(images[i].shape, size, rng, fg[i])
        out[k] = images[i][patch_slices(corner, size)]
    return out


class ScoreNet(nn.Module, QuietHubMixin, library_name="mixdemo", tags=SCORE_TAGS):
    """s_θ(x, σ) = f_θ(x) / σ with f_θ a small 3D U-Net (NCSNv2, technique 3).

    The network is not told σ; dividing its output by σ gives the right 1/σ scale of the
    score of a Gaussian-smoothed density. The noise schedule is stored in the config so that
    the attack uses the levels the prior was trained on.

    Args:
        sigma_1: largest noise level (of the order of the largest distance between patches).
        sigma_L: smallest noise level.
        n_levels: number of levels L of the geometric schedule.
        features: the six BasicUNet widths.
        patch_size: side of the cubic patches it was trained on (informative).
    """

    def __init__(
        self,
        sigma_1: float = 50.0,
        sigma_L: float = 0.01,
        n_levels: int = 10,
        features: Sequence[int] = SCORE_FEATURES,
        patch_size: int = 32,
    ) -> None:
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"BasicUNet needs 6 feature widths; got {len(features)}: {features}.")
        self.sigma_1, self.sigma_L, self.n_levels = float(sigma_1), float(sigma_L), int(n_levels)
        self.patch_size = int(patch_size)
        self.register_buffer("sigma_levels", sigmas(sigma_1, sigma_L, n_levels), persistent=False)
        self.net = BasicUNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            features=tuple(features),
            norm=("group", {"num_groups": 4}),
            upsample="deconv",
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Score ∇_x log p_σ(x) ≈ f_θ(x) / σ.

        Args:
            x: (B, 1, P, P, P) noisy patches, P divisible by 16.
            sigma: scalar or (B,) noise levels.
        """
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"Expected patches of shape (B, 1, P, P, P); got {tuple(x.shape)}.")
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = s.reshape(-1, 1, 1, 1, 1) if s.ndim else s
        return self.net(x) / s


def dsm_loss(model: nn.Module, x: torch.Tensor, levels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising score matching with λ(σ) = σ² (NCSN Eq. 5-6), averaged over voxels and batch.

    1. draw a level σ uniformly from ``levels`` per sample;
    2. perturb: x̃ = x + σ·z, z ~ N(0, I) (so ∇ log q_σ(x̃ | x) = −z/σ);
    3. ℓ = ½ λ(σ) ‖s_θ(x̃, σ) + z/σ‖² = ½ ‖σ s_θ(x̃, σ) + z‖², here per voxel.

    Args:
        model: a score model ``model(x, sigma)``.
        x: (B, 1, P, P, P) clean patches.
        levels: (L,) noise levels.
        generator: optional torch generator (on x's device) for reproducibility.
    """
    b = x.shape[0]
    # 1. σ ~ U{σ_1, …, σ_L}
    idx = torch.randint(len(levels), (b,), device=x.device, generator=generator)
    sigma = levels.to(x.device)[idx].view(b, 1, 1, 1, 1)
    # 2. x̃ = x + σ z
    z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    x_noisy = x + sigma * z
    # 3. ½ ‖σ s_θ(x̃, σ) + z‖² (λ(σ) = σ² makes every level's term O(1))
    residual = sigma * model(x_noisy, sigma.view(b)) + z
    return 0.5 * residual.pow(2).flatten(1).mean(1).mean()


def tweedie_denoise(model: nn.Module, x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    """One-step denoiser E[x | x̃] ≈ x̃ + σ² s_θ(x̃, σ) (Tweedie's formula; a sanity check of the prior)."""
    with torch.no_grad():
        return x_noisy + sigma**2 * model(x_noisy, sigma)
