"""A validation hold-out for ``training.train`` (``--val-subjects N``): the last N subjects of the training
split are kept out of the patch stream and out of the references, and the whole-volume Dice on their
scans, measured every ``--val-every`` steps, picks the step whose weights are exported. The cohort's test
subjects stay untouched, so a checkpoint is never chosen by the figures it is then reported with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mixdemo.data import ScanRecord, Volume
from mixdemo.mixing import hard_labels
from mixdemo.pipeline import Reference
from training.evaluate import baseline_labels, dice_row, masked, predict_k


def hold_out(records: Sequence[ScanRecord], n_subjects: int, keep: int = 2) -> tuple[list[ScanRecord], list[ScanRecord]]:
    """(training scans, validation scans): the scans of the last ``n_subjects`` subjects (sorted by name)
    are the validation ones. At least ``keep`` subjects must stay for training: two (a mix needs a reference from
    another subject), three with ``--consistency`` (two mixes of a target, references of disjoint subjects)."""
    subjects = sorted({r.subject for r in records})
    if n_subjects < 0 or (n_subjects and n_subjects > len(subjects) - keep):
        choice = f"choose 0 to {len(subjects) - keep}" if len(subjects) > keep else "none can be held out"
        raise SystemExit(f"--val-subjects {n_subjects}: the training split has {len(subjects)} subjects and at least "
                         f"{keep} must stay for training ({choice}).")
    held = set(subjects[len(subjects) - n_subjects:])
    return [r for r in records if r.subject not in held], [r for r in records if r.subject in held]


@dataclass
class Validation:
    """The held-out scans and, for a private network, one fixed reference (from the training scans) and α each."""

    volumes: list[Volume]
    references: list[Reference]
    alphas: list[float]
    subjects: list[str]
    classes: dict[int, str]  # the cohort's scored classes (Cohort.foreground_classes)


def make_validation(val_volumes: list[Volume], train_volumes: list[Volume], alpha_range: tuple[float, float],
                    seed: int, classes: dict[int, str]) -> Validation:
    """The same references and α at every validation, drawn once from ``seed`` (``alpha_range``: the client's,
    as ``training.evaluate`` draws it, not the wider training range)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(train_volumes), size=len(val_volumes))
    refs = [Reference(train_volumes[i].name, train_volumes[i].image, train_volumes[i].labels) for i in picks]
    alphas = [float(a) for a in rng.uniform(*alpha_range, size=len(val_volumes))]
    return Validation(val_volumes, refs, alphas, sorted({v.subject for v in val_volumes}), dict(classes))


@torch.inference_mode()
def validation_dice(seg: torch.nn.Module, unmix: torch.nn.Module | None, val: Validation) -> float:
    """Mean Dice (the cohort's classes but background) over the held-out scans, inside each scan's brain, as ``training.evaluate`` predicts
    them: without a D, S's labels of the scan itself (the baseline); with one, D's labels of one proxy per scan
    (Eq. 2, then S, then D; K = 1)."""
    rows = []
    for vol, ref, alpha in zip(val.volumes, val.references, val.alphas):
        brain = vol.image > 0
        if unmix is None:
            labels = baseline_labels(seg, vol, brain)
        else:
            _, learned, _ = predict_k(vol, [ref], [alpha], seg, unmix, brain)
            labels = masked(hard_labels(learned[0].float()).numpy(), brain)
        rows.append(dice_row(labels, vol.labels, val.classes)["avg"])
    return round(float(np.mean(rows)), 4)
