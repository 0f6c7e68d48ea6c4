"""What the server's own output leaks, and the utility side of the privacy–utility trade-off, on patches.

* Output leakage: the server computes ŷ_mix = S(x_mix) and keeps it. Without any unmixing its
  arg-max is a guess of the target's labels whenever α > 0.5 (Eq. 3: the target dominates
  y_mix), of the reference's otherwise. :func:`output_leakage_dice` measures that guess against
  the target's true labels.
* Utility: Learned + TTA Dice (Eq. 5-6 with D) of the client, :func:`patch_study`, measured on
  random 32³ brain patches of the test subjects mixed with reference patches of the training
  subjects cut at the same coordinates (as S and D were trained), so a setting costs seconds.

Dice is pooled over all patches (the patches are stacked into one volume) per class 1…C−1,
then averaged over classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mixdemo.mixing import one_hot, patch_slices, sample_patch_corner
from mixdemo.metrics import dice_per_class, mean_dice
from mixdemo.classes import NUM_CLASSES


@dataclass
class PatchSet:
    """Target patches of test scans with K reference patches each, cut at the same coordinates.

    Attributes:
        target: (N, P, P, P) target images.
        target_labels: (N, P, P, P) target labels.
        refs: (N, K, P, P, P) reference images (distinct training scans per target).
        ref_labels: (N, K, P, P, P) reference labels.
        public_labels: (N, P, P, P) the public template's labels at the same coordinates, when given.
    """

    target: np.ndarray
    target_labels: np.ndarray
    refs: np.ndarray
    ref_labels: np.ndarray
    public_labels: np.ndarray | None = None


def sample_patch_set(
    targets: Sequence, references: Sequence, n: int, k: int, rng: np.random.Generator, size: int = 32,
    public_labels: np.ndarray | None = None,
) -> PatchSet:
    """``n`` brain-centred patches of random ``targets`` (Volumes), each with ``k`` distinct references (and the
    patches of ``public_labels``, a label volume on the same grid, e.g. the template's)."""
    if k > len(references):
        raise ValueError(f"Asked for {k} distinct references per patch; the pool holds {len(references)}.")
    fg = [np.argwhere(v.labels > 0) for v in targets]
    tx, ty, rx, ry, py = [], [], [], [], []
    for _ in range(n):
        t = int(rng.integers(len(targets)))
        sl = patch_slices(sample_patch_corner(targets[t].image.shape, size, rng, fg[t]), size)
        chosen = rng.choice(len(references), size=k, replace=False)
        tx.append(targets[t].image[sl])
        ty.append(targets[t].labels[sl])
        rx.append(np.stack([references[r].image[sl] for r in chosen]))
        ry.append(np.stack([references[r].labels[sl] for r in chosen]))
        if public_labels is not None:
            py.append(public_labels[sl])
    return PatchSet(np.stack(tx), np.stack(ty), np.stack(rx), np.stack(ry), np.stack(py) if py else None)


def pooled_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int = NUM_CLASSES) -> dict[int, float]:
    """Per-class Dice (classes 1…C−1, C = ``num_classes``) of (N, P, P, P) label patches pooled into one volume."""
    return dice_per_class(pred.reshape(-1, *pred.shape[2:]), truth.reshape(-1, *truth.shape[2:]), range(1, num_classes))


@torch.no_grad()
def _segment(seg: nn.Module, x: np.ndarray, batch: int = 16) -> torch.Tensor:
    """Softmax of S on (M, P, P, P) patches → (M, C, P, P, P) on the CPU."""
    device = next(seg.parameters()).device
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.cat([torch.softmax(seg(t[i : i + batch, None].to(device)), 1).cpu() for i in range(0, len(t), batch)])


def output_leakage_dice(seg: nn.Module, proxies: np.ndarray, target_labels: np.ndarray) -> dict:
    """Dice of arg-max S(x_mix) against the target's labels: what the server's output alone reveals.

    Args:
        proxies: (N, P, P, P) proxies.
        target_labels: (N, P, P, P) true labels of the targets.
    """
    probs = _segment(seg, proxies)
    per = pooled_dice(probs.argmax(1).numpy(), target_labels, probs.shape[1])
    return {"dice_vs_target": mean_dice(per), "per_class": {str(c): v for c, v in per.items()}, "n_patches": len(proxies)}


@torch.no_grad()
def patch_study(seg: nn.Module, unmix: nn.Module, patches: PatchSet, alphas: np.ndarray, batch: int = 16) -> dict:
    """Client utility and server leakage for one keying of ``patches``.

    Args:
        seg: the server's S.
        unmix: the client's D.
        patches: targets with K references each (K·R for R references per mix, R consecutive per mix).
        alphas: (N, K) α of each mix (equal along K for the paper's Eq. 5; fresh per mix as a defence),
            or (N, K, 1 + R) weights of the target and of each of R references per mix (three
            sources for R = 2: the two-reference defence; D must be trained for R references).

    Returns:
        ``{"dice_learned_tta", "dice_learned", "dice_naive_tta", "output_leakage_dice", per-class dicts, "k", "n_patches"}``.
    """
    weights = alphas if alphas.ndim == 3 else np.stack([alphas, 1 - alphas], -1)
    n, k, n_src = weights.shape
    r = n_src - 1
    if patches.refs.shape[:2] != (n, k * r):
        raise ValueError(f"alphas {alphas.shape} need patches with {n} targets × {k * r} references; "
                         f"got {patches.refs.shape[:2]}.")
    device = next(unmix.parameters()).device
    spatial = patches.target.shape[1:]
    w = weights.astype(np.float32)
    refs = patches.refs.reshape(n, k, r, *spatial)
    proxies = w[..., 0, None, None, None] * patches.target[:, None] + np.einsum("nkr,nkrxyz->nkxyz", w[..., 1:], refs)  # Eq. 2 / 5
    probs = _segment(seg, proxies.reshape(n * k, *spatial), batch)  # server: ŷ_mix
    n_classes = probs.shape[1]
    ref_oh = one_hot(torch.from_numpy(patches.ref_labels.reshape(n * k, r, *spatial)), n_classes)  # (nk, r, C, ...)
    ref_oh = ref_oh.reshape(n * k, r * n_classes, *spatial)
    wt = torch.from_numpy(w.reshape(n * k, n_src))
    learned = torch.cat([
        torch.softmax(unmix(probs[i : i + batch].to(device), ref_oh[i : i + batch].to(device), wt[i : i + batch].to(device)), 1).cpu()
        for i in range(0, n * k, batch)
    ])  # client: D(ŷ_mix, y_ref, α)
    ref_part = (wt[:, 1:, None, None, None, None] * ref_oh.view(n * k, r, n_classes, *spatial)).sum(1)
    alpha_t = wt[:, 0].view(-1, 1, 1, 1, 1)
    naive = (probs - ref_part) / alpha_t  # Eq. 4 (each reference's share removed)
    shape = (n, k, *probs.shape[1:])
    learned_tta = learned.view(shape).mean(1).argmax(1).numpy()  # Eq. 6
    naive_tta = naive.view(shape).mean(1).argmax(1).numpy()
    single = learned.view(shape)[:, 0].argmax(1).numpy()
    leak = probs.view(shape)[:, 0].argmax(1).numpy()  # server's own output, first mix, no unmixing
    out = {}
    for name, pred in (("learned_tta", learned_tta), ("learned", single), ("naive_tta", naive_tta), ("output_leakage", leak)):
        per = pooled_dice(pred, patches.target_labels, n_classes)
        out[f"dice_{name}" if name != "output_leakage" else "output_leakage_dice"] = mean_dice(per)
        out[f"per_class_{name}"] = {str(c): v for c, v in per.items()}
    # chance: another subject's labels at the same coordinates (what any MNI-space brain gives away)
    out["chance_dice_other_subject"] = mean_dice(pooled_dice(patches.ref_labels[:, 0], patches.target_labels, n_classes))
    if patches.public_labels is not None:  # and the public template's, which needs no scan at all
        out["chance_dice_template"] = mean_dice(pooled_dice(patches.public_labels, patches.target_labels, n_classes))
    out.update({"k": k, "n_patches": n})
    return out
