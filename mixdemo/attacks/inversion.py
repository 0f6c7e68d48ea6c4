"""A learned inversion: the server trains a network to take a proxy back to its target (an attack the paper did not try).

The server holds scans of its own (any public cohort; here training subjects outside the client's bank) and
knows the client's α range (the default is public), but neither the client's references nor a proxy's α. It
mixes its own scans as the client would, x_mix = α·x + (1 − α)·x_ref (Eq. 2, the reference another subject's scan,
α ~ U(range)), and trains a 3D U-Net (MONAI's ``BasicUNet``) to predict x from x_mix by L1 on patches. Every proxy
it receives then goes through the network. Separation needs a score prior, the known-bank inversion the bank;
this needs only data like the client's. With α < 0.5 the target is the fainter of the two anatomies in the
proxy, which is what the network can learn to pick out.

Volumes are those of the re-identification protocol (average-pooled, :func:`mixdemo.attacks.reid.downsample`),
so the estimates are scored as the proxies are: MS-SSIM to the target, and re-identification mAP.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from mixdemo.metrics import msssim_3d_batch
from mixdemo.mixing import patch_slices, sample_patch_corner
from mixdemo.models import QuietHubMixin

FEATURES = (16, 16, 32, 64, 128, 16)
"""The inversion network's widths (MONAI ``BasicUNet``: its four poolings need sides that are multiples of 16)."""
SIDE_MULTIPLE = 16
MIN_PATCH = 32
"""The smallest training patch: at 16³ the network's deepest level is one voxel, where instance norm has no statistics."""
INVERSION_TAGS = ["mixup-privacy", "medical-imaging", "brain-mri", "attack-lab", "monai"]


class InversionNet(nn.Module, QuietHubMixin, library_name="mixdemo", tags=INVERSION_TAGS):
    """The attacker's network: a proxy in, its estimated target out (one channel each), on volumes average-pooled
    ``downsample``× (the re-identification protocol's resolution, :func:`mixdemo.attacks.reid.downsample`).

    Args:
        features: the six ``BasicUNet`` widths.
        downsample: the pooling of the volumes it was trained on (informative; :func:`invert_full_resolution` uses it).
        alpha_range: the client's α range it was trained for (informative).
        patch_size: the side of its training patches, and of the windows :func:`invert` runs it on.
    """

    def __init__(self, features: Sequence[int] = FEATURES, downsample: int = 2,
                 alpha_range: Sequence[float] = (0.3, 0.5), patch_size: int = MIN_PATCH) -> None:
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"BasicUNet needs 6 feature widths; got {len(features)}: {features}.")
        self.downsample = int(downsample)
        self.patch_size = int(patch_size)
        self.alpha_range = tuple(float(a) for a in alpha_range)
        self.net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=tuple(features))

    def forward(self, proxy: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) proxies, sides multiples of 16 → (B, 1, X, Y, Z) estimated targets (unclipped)."""
        return self.net(proxy)


def subjects_apart(n: int, subjects: Sequence[Hashable], rng: np.random.Generator) -> tuple[int, int]:
    """Indices (target, reference) of two scans of different subjects, drawn uniformly."""
    while True:
        t, r = (int(i) for i in rng.integers(n, size=2))
        if subjects[t] != subjects[r]:
            return t, r


def training_batch(scans: np.ndarray, subjects: Sequence[Hashable], alpha_range: tuple[float, float],
                   rng: np.random.Generator, batch: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(proxies, targets), each (batch, 1, p, p, p): the server's own scans mixed as the client mixes (Eq. 2), a
    patch of each centred on one of the target's brain voxels (:func:`mixdemo.mixing.sample_patch_corner`)."""
    proxies, targets = [], []
    for _ in range(batch):
        t, r = subjects_apart(len(scans), subjects, rng)
        alpha = rng.uniform(*alpha_range)
        sl = patch_slices(sample_patch_corner(scans.shape[1:], patch, rng, np.argwhere(scans[t] > 0)), patch)
        proxies.append(alpha * scans[t][sl] + (1 - alpha) * scans[r][sl])
        targets.append(scans[t][sl])
    as_tensor = lambda vols: torch.from_numpy(np.stack(vols).astype(np.float32))[:, None]  # noqa: E731
    return as_tensor(proxies), as_tensor(targets)


def train_inversion(scans: np.ndarray, subjects: Sequence[Hashable], *, alpha_range: tuple[float, float],
                    steps: int, seed: int = 0, batch: int = 4, patch: int = 32, lr: float = 1e-3, downsample: int = 2,
                    features: Sequence[int] = FEATURES, device: torch.device | None = None,
                    progress: Callable[[int, float], None] | None = None) -> InversionNet:
    """The server's network, trained from scratch on its own scans (N, X, Y, Z), normalised as the client's and
    pooled ``downsample``×: Adam, L1 between the estimate and the target, a cosine schedule over ``steps``;
    seeded. ``progress(step, loss)`` is called every 50 steps and at the last."""
    if len(set(subjects)) < 2:
        raise ValueError("The attacker needs scans of 2 subjects at least (a mix's reference is another subject).")
    patch = min(patch, *(n // SIDE_MULTIPLE * SIDE_MULTIPLE for n in scans.shape[1:]))
    if patch < MIN_PATCH:
        raise ValueError(f"Volumes of {scans.shape[1:]} are too small for the inversion network (sides ≥ {MIN_PATCH}).")
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = InversionNet(features, downsample, alpha_range, patch).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for step in range(1, steps + 1):
        proxies, targets = training_batch(scans, subjects, alpha_range, rng, batch, patch)
        loss = torch.nn.functional.l1_loss(net(proxies.to(device)), targets.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if progress is not None and (step % 50 == 0 or step == steps):
            progress(step, loss.item())
    return net.eval()


def padded_to_multiple(volumes: torch.Tensor, multiple: int = SIDE_MULTIPLE) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """(B, 1, X, Y, Z) zero-padded at the far end of each side to a multiple of ``multiple``, and to
    :data:`MIN_PATCH` at least (the network's deepest level needs 2³ voxels; background is 0), and the slices that
    crop the network's output back."""
    pad = [v for n in volumes.shape[:1:-1] for v in (0, max(-n % multiple, MIN_PATCH - n))]
    crop = (slice(None), slice(None), *(slice(0, n) for n in volumes.shape[2:]))
    return torch.nn.functional.pad(volumes, pad), crop


@torch.inference_mode()
def invert(net: InversionNet, proxies: np.ndarray, *, windows: bool = False, overlap: float = 0.25) -> np.ndarray:
    """The network's estimate of each proxy's target, (N, X, Y, Z) proxies → (N, X, Y, Z) in [0, 1], one at a time:
    on the whole volume (zero-padded to the network's multiple of 16), or with ``windows`` on windows of its training
    patches (MONAI's sliding window, Gaussian-weighted ``overlap``), where its instance norms see statistics of the
    size it trained on. Which is better is measured (``training.evaluate_privacy``'s inversion section records both)."""
    from monai.inferers import sliding_window_inference

    device = next(net.parameters()).device
    roi = (getattr(net, "patch_size", MIN_PATCH),) * 3
    out = []
    for proxy in np.asarray(proxies, np.float32):
        x = torch.from_numpy(proxy)[None, None].to(device)
        if windows:
            estimate = sliding_window_inference(x, roi, sw_batch_size=8, predictor=net, overlap=overlap, mode="gaussian")
        else:
            padded, crop = padded_to_multiple(x)
            estimate = net(padded)[crop]
        out.append(estimate[0, 0].clamp(0, 1).cpu().numpy())
    return np.stack(out)


def invert_full_resolution(net: InversionNet, proxy: np.ndarray) -> np.ndarray:
    """One full-resolution proxy (X, Y, Z) through a network that works on pooled volumes: pooled by its
    ``downsample``, inverted, and brought back to the proxy's grid by trilinear interpolation."""
    from mixdemo.attacks.reid import downsample

    if net.downsample == 1:
        return invert(net, proxy[None])[0]
    return _on_grid(invert(net, downsample(proxy[None], net.downsample))[0], proxy.shape)


def _on_grid(small: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A pooled (x, y, z) volume brought back to ``shape`` by trilinear interpolation."""
    up = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=tuple(shape), mode="trilinear",
                                         align_corners=False)
    return up[0, 0].numpy()


def invert_and_score(net: InversionNet, proxy: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, float]:
    """:func:`invert_full_resolution`'s estimate of one proxy (X, Y, Z), and the MS-SSIM (data range 1) of the
    estimate and of the proxy to ``target`` as :func:`inversion_experiment` scores them: at the network's pooling,
    where the estimate was made (at full resolution the interpolated estimate would lose to the proxy's detail)."""
    from mixdemo.attacks.reid import downsample

    small_proxy, small_target = (downsample(np.asarray(v, np.float32)[None], net.downsample) for v in (proxy, target))
    small = invert(net, small_proxy)
    ms_est, ms_proxy = msssim_3d_batch(np.concatenate([small, small_proxy]), np.concatenate([small_target] * 2),
                                       data_range=1.0)
    estimate = small[0] if net.downsample == 1 else _on_grid(small[0], proxy.shape)
    return estimate, float(ms_est), float(ms_proxy)


def split_subjects(train_subjects: Sequence[Hashable], n_client: int) -> tuple[list[Hashable], list[Hashable]]:
    """(the client's, the server's own) subjects from a training split's subjects in their order: the first
    ``n_client`` are the client's bank (the demo's, :func:`mixdemo.examples.reference_subjects`), the rest the
    server's. A ValueError if the server would be left with fewer than 2 (a mix needs another subject)."""
    ordered = list(dict.fromkeys(train_subjects))
    client, own = ordered[:n_client], ordered[n_client:]
    if len(own) < 2:
        raise ValueError(f"{len(ordered)} training subjects leave the server {len(own)} after the client's {len(client)}: "
                         "it needs 2 at least (a mix's reference is another subject).")
    return client, own


def inversion_experiment(
    net: InversionNet,
    targets: np.ndarray,
    identities: Sequence[Hashable],
    references: np.ndarray,
    *,
    alpha_range: tuple[float, float],
    n_draws: int = 3,
    seed: int = 0,
    windows: bool = True,
) -> dict:
    """Single proxies of every target, each mixed with a random reference and α ~ U(alpha_range), ``n_draws`` times,
    inverted by the server's trained network on the whole volume, and with ``windows`` again on windows
    (``on_windows``; the same draws either way).

    Args:
        net: the server's network (:func:`train_inversion`), trained on scans of none of the references' subjects.
        targets: (N, X, Y, Z) test scans (pooled as the network's training scans were).
        identities: subject of each target (test–retest pairs share one).
        references: (R, X, Y, Z) the client's references, unknown to the server.

    Returns:
        MS-SSIM of the estimates and of the proxies to the targets, and re-identification mAP of each over the same
        draws (:func:`mixdemo.attacks.reid.retrieval`).
    """
    from mixdemo.attacks.reid import encode_with_random_references, retrieval

    rng = np.random.default_rng(seed)
    ms_proxy, map_proxy = [], []
    ms_est: dict[bool, list[float]] = {False: [], True: []}  # by inference on windows or not
    map_est: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(n_draws):
        proxies = encode_with_random_references(targets, references, alpha_range, rng)[0]
        ms_proxy += list(msssim_3d_batch(proxies, targets, data_range=1.0))
        map_proxy.append(retrieval(proxies, identities).map)
        for on_windows in (False, True) if windows else (False,):
            est = invert(net, proxies, windows=on_windows)
            ms_est[on_windows] += list(msssim_3d_batch(est, targets, data_range=1.0))
            map_est[on_windows].append(retrieval(est, identities).map)
    windowed = {} if not windows else {"on_windows": {
        "estimate_msssim_mean": float(np.mean(ms_est[True])), "estimate_reid_map": float(np.mean(map_est[True])),
        "estimate_reid_map_per_draw": [float(m) for m in map_est[True]],
        "what": "the same proxies inverted on windows of the network's training patches"}}
    ms_est, map_est = ms_est[False], map_est[False]
    return {
        "estimate_msssim_mean": float(np.mean(ms_est)),
        "proxy_msssim_mean": float(np.mean(ms_proxy)),
        "estimate_reid_map": float(np.mean(map_est)),
        "estimate_reid_map_std": float(np.std(map_est)),
        "proxy_reid_map": float(np.mean(map_proxy)),
        "estimate_reid_map_per_draw": [float(m) for m in map_est], "proxy_reid_map_per_draw": [float(m) for m in map_proxy],
        **windowed,
        "reference_pool": int(len(references)), "n_targets": int(len(targets)), "n_draws": n_draws,
        "alpha_range": list(alpha_range),
        "what": "the server trains a 3D U-Net on its own scans, mixed as the client mixes (α ~ U(range), another "
                "subject as reference), to predict the target from the proxy; the client's references are not among "
                "its scans (mixdemo.attacks.inversion)",
    }


def averaged_inversion_experiment(
    net: InversionNet,
    targets: np.ndarray,
    identities: Sequence[Hashable],
    references: np.ndarray,
    *,
    k: int,
    alpha_range: tuple[float, float],
    population_mean: np.ndarray,
    n_draws: int = 3,
    seed: int = 0,
) -> dict:
    """Two attacks chained on the paper's TTA request (Eq. 5: K proxies of one target, one α, K references): the
    server averages the K proxies (α·x + (1 − α)·mean of the references, :mod:`mixdemo.attacks.tta_average`), then
    gives the average to its inversion network, which was trained on single proxies. Scored on the same averages:
    the average itself, the averaging attack's closed form (the template subtracted, α̂ the range's middle), and the
    network's estimate.

    Args:
        net: the server's network (:func:`train_inversion`), trained on scans of none of the references' subjects.
        targets: (N, X, Y, Z) test scans (pooled as the network's training scans were).
        identities: subject of each target (test–retest pairs share one).
        references: (R, X, Y, Z) the client's references, R ≥ ``k``, unknown to the server.
        k: proxies in the request.
        population_mean: (X, Y, Z) μ of the closed form, on the targets' grid.

    Returns:
        MS-SSIM to the targets and re-identification mAP (:func:`mixdemo.attacks.reid.retrieval`) of each of the three,
        averaged over ``n_draws`` draws of α and the references, and the network's mAP per draw.
    """
    from mixdemo.attacks.reid import retrieval
    from mixdemo.attacks.tta_average import tta_average_estimate

    if not 1 <= k <= len(references):
        raise ValueError(f"k must be between 1 and the {len(references)} references; got {k}.")
    rng = np.random.default_rng(seed)
    guess = float(np.mean(alpha_range))
    scores: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in ("average", "closed_form", "network")}
    for _ in range(n_draws):
        averages, closed = [], []
        for target in np.asarray(targets, np.float32):
            alpha = np.float32(rng.uniform(*alpha_range))
            proxies = alpha * target[None] + (1 - alpha) * references[rng.choice(len(references), size=k, replace=False)]
            averages.append(proxies.mean(0))
            closed.append(tta_average_estimate(proxies, population_mean, guess))
        estimates = {"average": np.stack(averages), "closed_form": np.stack(closed)}
        estimates["network"] = invert(net, estimates["average"])
        for name, est in estimates.items():
            scores[name][0].extend(msssim_3d_batch(est, targets, data_range=1.0))
            scores[name][1].append(retrieval(est, identities).map)
    out = {name: {"msssim_mean": float(np.mean(ms)), "reid_map": float(np.mean(maps))} for name, (ms, maps) in scores.items()}
    out["network"]["reid_map_per_draw"] = [float(m) for m in scores["network"][1]]
    return {**out, "k": k, "alpha_guess": guess, "reference_pool": int(len(references)), "n_targets": int(len(targets)),
            "n_draws": n_draws, "alpha_range": list(alpha_range),
            "what": "the K proxies of one TTA request averaged, then inverted by the server's network (trained on "
                    "single proxies); beside it the average itself and the averaging attack's closed form on the "
                    "same averages (mixdemo.attacks.inversion.averaged_inversion_experiment)"}
