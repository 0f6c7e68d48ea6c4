"""Score segmentations against labels: Dice per class and their mean, as the README's tables report them.

::

    python -m mixdemo.score seg.nii.gz scans/labels/sub-002_seg.nii.gz
    python -m mixdemo.score segs/ scans/labels/            # each segs/<name>_seg.nii.gz against labels/<name>_seg.nii.gz

Both files must lie on the same grid (the client writes its segmentation on the input scan's own grid, and
``python -m mixdemo.examples`` writes the labels of its scans on theirs). A DICOM SEG (``.dcm``, the client's
``--dicom-seg``) lies on its series' images and is carried onto the labels' grid (nearest neighbour). Prints one row per pair and, for
several, their mean; ``--json`` prints the numbers as JSON instead. A patch-mode segmentation labels one block
and leaves the rest 0: scored over the whole grid, the rest of the brain counts as missed, which a note says;
``--in-box`` scores inside the block the segmentation labels (its labelled voxels' bounding box; the app's Dice
table in patch mode scores the whole patch, which may reach a little further). ``--brats`` reads labels files in
BraTS's values (enhancing tumour 4 in 2021) as the client's classes 1 NCR, 2 ED, 3 ET.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from mixdemo.classes import CLASS_NAMES
from mixdemo.metrics import dice_per_class, mean_dice

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SEGMENTATION_SUFFIXES = (*NIFTI_SUFFIXES, ".dcm")
"""A segmentation is NIfTI, or a DICOM SEG the client wrote (``--dicom-seg``); labels are NIfTI."""


T = TypeVar("T")


class ScoreError(ValueError):
    """Files that cannot be scored against each other; the message says why."""


PARTIAL_BOX = 0.25
"""A segmentation whose labelled box is under this fraction of the labels' box is noted as partial (patch mode)."""


def score_pair(segmentation: Path, labels: Path, classes: dict[int, str], *, in_box: bool = False,
               note: Callable[[str], None] | None = None, brats: bool = False) -> dict[str, float]:
    """Dice of each class of ``classes`` ({label value: name}) and their mean (``avg``); with ``in_box``, inside the
    bounding box of the segmentation's labelled voxels. ``note`` hears of a segmentation that labels only part of
    the labels' extent (a patch). With ``brats`` the labels file holds BraTS's values (1 NCR, 2 ED, 4 ET in 2021,
    3 in 2023), read as the classes 1-3 the client writes."""
    from mixdemo.io import load_labels_on_file_grid

    on_file_grid, file_affine = _named(labels, load_labels_on_file_grid)
    if brats:
        from mixdemo.data import BRATS_LAYOUT, CohortError, classes_of

        try:
            on_file_grid = classes_of(on_file_grid, BRATS_LAYOUT, labels.name)
        except CohortError as exc:
            raise ScoreError(str(exc)) from None
    if segmentation.name.lower().endswith(".dcm"):  # onto the labels file's grid
        seg_on_file = (_named(segmentation, _seg_on_grid, on_file_grid.shape, file_affine), file_affine)
    else:
        seg_on_file = _named(segmentation, load_labels_on_file_grid)
    pred, truth = _on_one_grid(segmentation.name, seg_on_file, labels.name, (on_file_grid, file_affine))
    box = labelled_box(pred)
    if box is not None and in_box:
        pred, truth = pred[box], truth[box]
    elif box is not None and note is not None and _volume(box) < PARTIAL_BOX * _volume(labelled_box(truth) or box):
        sides = "×".join(str(s.stop - s.start) for s in box)
        note(f"{segmentation.name} labels only a {sides} block (patch mode?): scored over the whole grid, the rest "
             "counts as missed; --in-box scores inside that block.")
    truth_values = set(np.unique(truth).tolist())
    unnamed = sorted((set(np.unique(pred).tolist()) | truth_values) - set(classes) - {0})
    if unnamed and note is not None:
        brats_hint = " (or, for BraTS labels with ET as 4, --brats)" if unnamed == [4] and not brats else ""
        which = f"label {unnamed[0]}" if len(unnamed) == 1 else f"labels {', '.join(map(str, unnamed))}"
        note(f"{segmentation.name} or its labels hold {which}, which --classes does not name: scored are "
             f"{', '.join(classes.values())} only; name every class (e.g. --classes GM,WM,CSF,lesion) to score it"
             f"{brats_hint}.")
    if note is not None and truth_values.isdisjoint(classes) and truth_values - {0}:
        note(f"{labels.name} holds none of the values {', '.join(map(str, classes))} that --classes names, so every "
             "class scores 0: write its labels in those values (1, 2, ... as the segmentation's) to score it.")
    pred_values = set(np.unique(pred).tolist())
    neither = [name for c, name in classes.items() if c not in truth_values and c not in pred_values]
    if neither and note is not None:
        note(f"{', '.join(neither)} {'is' if len(neither) == 1 else 'are'} in neither {segmentation.name} nor its "
             f"labels: {'its' if len(neither) == 1 else 'their'} Dice is 1 by convention (nothing to find, nothing "
             "found), counted in avg.")
    dice = dice_per_class(pred, truth, list(classes))
    return {**{classes[c]: round(float(d), 4) for c, d in dice.items()}, "avg": round(float(mean_dice(dice)), 4)}


def _on_one_grid(seg_name: str, seg: tuple[np.ndarray, np.ndarray], labels_name: str,
                 labels: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The segmentation's and the labels' maps (each with its file's affine) on one grid: the files' own when they
    share it, so that the score is their Dice there (a resampling to 1 mm drops or doubles planes of voxels); else both
    reoriented to RAS+ on 1 mm (a grid stored in another voxel order over the same box). A ScoreError for grids that
    differ."""
    from mixdemo.io import conform_labels

    if seg[0].shape == labels[0].shape and np.allclose(seg[1], labels[1], atol=1e-3):
        return seg[0], labels[0]
    (pred, pred_affine), (truth, truth_affine) = conform_labels(*seg), conform_labels(*labels)
    if pred.shape != truth.shape:
        raise ScoreError(f"{seg_name} is on a {'×'.join(map(str, pred.shape))} grid and {labels_name} on "
                         f"{'×'.join(map(str, truth.shape))}: score a segmentation against labels on its own grid.")
    if not np.allclose(pred_affine, truth_affine, atol=1e-3):
        raise ScoreError(f"{seg_name} and {labels_name} have grids of the same size in different places "
                         "(their affines differ): score a segmentation against labels on its own grid.")
    return pred, truth


def _named(path: Path, read: Callable[..., T], *args: object) -> T:
    """``read(path, *args)``; its ScanError, whose message names no file (as the app's logs must not), as a ScoreError
    naming the file, so that of two files, or of a folder's, the one to mend is known."""
    from mixdemo.io import ScanError

    try:
        return read(path, *args)
    except ScanError as exc:
        raise ScoreError(f"{path.name}: {exc}") from None


def _seg_on_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """A DICOM SEG carried onto a label file's grid (nearest neighbour): a SEG lies on its series' images, whose
    grid is the labels' only up to the order of axes and slices."""
    from mixdemo.dicomseg import read_segmentation
    from mixdemo.io import resample_labels

    seg, seg_affine = read_segmentation(path)
    return resample_labels(seg, seg_affine, tuple(shape), affine)


def labelled_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the non-zero voxels (None if there are none)."""
    nonzero = np.nonzero(labels)
    if not nonzero[0].size:
        return None
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in nonzero)


def _volume(box: tuple[slice, ...]) -> int:
    return int(np.prod([s.stop - s.start for s in box]))


def pairs_of(segmentations: Path, labels: Path,
             note: Callable[[str], None] | None = None) -> list[tuple[str, Path, Path]]:
    """(name, segmentation, labels): two files, or each ``<name>_seg.nii.gz`` (or the client's ``<name>_seg.dcm``,
    a DICOM SEG) of a folder against the labels folder's NIfTI file of the same name (the client's and
    ``mixdemo.examples``' naming); ``note`` hears of a folder's segmentations that have no labels file (left out)."""
    if missing := [str(p) for p in (segmentations, labels) if not p.exists()]:
        raise ScoreError(f"{' and '.join(missing)} {'do' if len(missing) > 1 else 'does'} not exist.")
    if segmentations.is_file() and labels.is_file():
        return [(_stem(segmentations), segmentations, labels)]
    if not (segmentations.is_dir() and labels.is_dir()):
        raise ScoreError("Give two files (a segmentation and its labels) or two folders.")
    pairs, unmatched = [], []
    labels_of = _labels_by_stem(labels)
    for seg in _listed(segmentations, SEGMENTATION_SUFFIXES):
        if _stem(seg) in labels_of:
            pairs.append((_stem(seg).removesuffix("_seg"), seg, labels_of[_stem(seg)]))
        else:
            unmatched.append(seg.name)
    if pairs and unmatched and note is not None:
        note(f"{', '.join(unmatched)} in {segmentations} {'have' if len(unmatched) > 1 else 'has'} no labels file of "
             f"the same name in {labels}: left out of the table and its mean.")
    if not pairs:
        raise ScoreError(f"No segmentation in {segmentations} has a labels file of the same name in {labels}.")
    names = [name for name, _, _ in pairs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        verb, it = ("have", "them") if len(twice) > 1 else ("has", "it")
        raise ScoreError(f"{', '.join(twice)} {verb} both a NIfTI and a DICOM SEG segmentation in {segmentations}; "
                         f"their mean would count {it} twice: score a folder of one kind.")
    return pairs


def _listed(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """A folder's files ending in one of ``suffixes`` (in any case), sorted; hidden files (a Mac's ``._<name>``
    resource files beside each file copied from it) left out."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name.lower().endswith(suffixes))


def _labels_by_stem(folder: Path) -> dict[str, Path]:
    """A labels folder's NIfTI files by name without the suffix (``.nii.gz`` taken before ``.nii``)."""
    found: dict[str, Path] = {}
    for suffix in NIFTI_SUFFIXES:
        for path in _listed(folder, (suffix,)):
            found.setdefault(_stem(path), path)
    return found


def _stem(path: Path) -> str:
    """The file name without its NIfTI (or DICOM SEG) suffix."""
    return next((path.name[: -len(s)] for s in SEGMENTATION_SUFFIXES if path.name.lower().endswith(s)), path.stem)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixdemo.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("segmentation", type=Path,
                   help="a segmentation NIfTI (or a DICOM SEG the client wrote, .dcm), or a folder of <name>_seg.nii.gz "
                        "(or <name>_seg.dcm)")
    p.add_argument("labels", type=Path, help="its labels NIfTI, or a folder of labels of the same names")
    p.add_argument("--classes", default=None,
                   help="names of label values 1, 2, ..., background (0) left out (default: the phantoms' GM,WM,CSF; "
                        "NCR,ED,ET with --brats)")
    p.add_argument("--brats", action="store_true",
                   help="the labels files hold BraTS's values (1 NCR, 2 ED, 4 ET in 2021, 3 in 2023): read them as the "
                        "client's classes 1 NCR, 2 ED, 3 ET")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--in-box", action="store_true",
                   help="score inside the block the segmentation labels (a patch-mode answer), not the whole grid")
    args = p.parse_args(argv)
    from mixdemo.io import ScanError

    names = [c.strip() for c in (args.classes or ("NCR,ED,ET" if args.brats else ",".join(CLASS_NAMES[1:]))).split(",")]
    if not all(names):
        p.error("--classes: a name is empty (it names label values 1, 2, ... in order, one each)")
    if len(set(names)) != len(names):
        p.error("--classes names a class twice (each column of the table would not be its own class)")
    if names[0].lower() == CLASS_NAMES[0]:
        p.error(f"--classes names label values 1, 2, ...: leave out {names[0]} (label 0 is never scored), or each "
                "class's Dice would be shown under the name before its own")
    classes = dict(enumerate(names, start=1))
    try:
        def note(message: str) -> None:
            print(f"note: {message}", file=sys.stderr)

        rows = {name: score_pair(seg, lab, classes, in_box=args.in_box, brats=args.brats, note=note)
                for name, seg, lab in pairs_of(args.segmentation, args.labels, note)}
    except (ScoreError, ScanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(rows) > 1:
        rows["mean"] = {k: round(float(np.mean([r[k] for r in rows.values()])), 4) for k in [*classes.values(), "avg"]}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = [*classes.values(), "avg"]
    print("| scan | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
