"""Cohort folders and training batches.

Two layouts are read (:func:`load_cohort` tells them apart):

``mixdemo`` (the phantoms, and any registered T1 cohort: PPMI-like, several scans per subject)::

    <root>/<subject>_<scan>/t1.nii.gz     T1 image (skull-stripped, MNI space, 1 mm)
    <root>/<subject>_<scan>/seg.nii.gz    labels 0 background, 1 GM, 2 WM, 3 CSF
    <root>/split.json                     {"train": [subject, ...], "test": [subject, ...]}

With ``"classes"`` in ``split.json`` (background first, N names) the labels are 0 … N − 1 instead, and the
models trained on the cohort give N classes.

The subject id is the folder name up to its last underscore, so test-retest scans of one
subject share it.

``brats`` (the BraTS challenge's folders, as downloaded; the paper's second dataset)::

    <root>/<case>/<case>_t1ce.nii.gz      one modality per file (BraTS 2021: _t1, _t1ce, _t2, _flair;
    <root>/<case>/<case>_seg.nii.gz       BraTS 2023: -t1n, -t1c, -t2w, -t2f, -seg)

The modality read is T1CE (``t1ce``, or ``t1c``), the paper's, unless one is named. Labels 1 (necrotic
core), 2 (edema) and 4 (enhancing tumour; 3 in BraTS 2023) become classes 1, 2, 3 (NCR, ED, ET). Each
case is one subject (BraTS 2023's ``-000`` time-point suffix stripped).

Either layout may hold a ``split.json`` (optionally with ``"classes"``, background first: any number from 2 in
the mixdemo layout, four in a BraTS folder, whose label values define four);
without one a deterministic 75/25 split by subject is made. Scans must share one grid to be mixed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mixdemo.classes import CLASS_NAMES, NUM_CLASSES
from mixdemo.mixing import TRAIN_ALPHA_RANGE, corner_around, mix, one_hot, patch_slices, sample_patch_corner
from mixdemo.phantoms import DEFAULT_COHORT, split_subjects
from mixdemo.phantoms import DATASET as PHANTOM_DATASET


class CohortError(ValueError):
    """A cohort folder that cannot be used as it is; the message says what is wrong and where (the training
    commands print it without a traceback)."""


class LabelValueError(CohortError):
    """A label file holding values its layout does not define (classes the user may mean to name)."""


class CohortNotFoundError(CohortError, FileNotFoundError):
    """No cohort folder, or a folder holding neither layout's scans."""


@dataclass(frozen=True)
class Layout:
    """How a cohort folder names its scans, what its label values mean, and where training patches centre."""

    name: str
    class_names: tuple[str, ...]  # background first
    label_values: tuple[tuple[int, int], ...]  # (value in the label file, class)
    patch_centres: str  # one of PATCH_CENTRES (MixedPatchSampler's docstring says what each does)

    def describe_values(self) -> str:
        """The label values this layout defines, for error messages."""
        return ", ".join(str(v) for v, _ in self.label_values)


PATCH_CENTRES = ("labels", "brain_and_labels", "classes")
"""Where training patches may centre (:class:`MixedPatchSampler`'s ``patch_centres``)."""

MAX_CLASSES = 64
"""The most classes a cohort may name (a label map is uint8; S's output and D's inputs grow with the count)."""


def mixdemo_layout(class_names: Sequence[str] = CLASS_NAMES) -> Layout:
    """The mixdemo layout with these classes (background first): label value ``c`` is class ``c``."""
    return Layout("mixdemo", tuple(class_names), tuple((c, c) for c in range(len(class_names))), "labels")


MIXDEMO_LAYOUT = mixdemo_layout()
BRATS_LAYOUT = Layout("brats", ("background", "NCR", "ED", "ET"), ((0, 0), (1, 1), (2, 2), (3, 3), (4, 3)),
                      "brain_and_labels")
PHANTOM_DESCRIPTION = "MNI152-derived phantoms (python -m mixdemo.phantoms), not patients"
BRATS_MODALITIES = ("t1ce", "t1c")
"""The modalities read from a BraTS folder when none is named, in order (2021's name, then 2023's)."""

FREESURFER_TISSUE: dict[int, int] = {
    **dict.fromkeys((3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 28, 60), 1),  # GM
    **dict.fromkeys((2, 41, 7, 46, 16, 77, 85, 251, 252, 253, 254, 255), 2),  # WM
    **dict.fromkeys((4, 43, 5, 44, 14, 15, 24, 31, 63, 72), 3),  # CSF
}
"""FreeSurfer ``aseg`` labels as the three tissue classes (1 GM, 2 WM, 3 CSF), the paper's PPMI pseudo ground
truth: cortex, cerebellar cortex and the deep grey nuclei (thalamus, caudate, putamen, pallidum, hippocampus,
amygdala, accumbens, ventral DC) as GM; cerebral and cerebellar WM, brainstem, WM hypointensities, optic
chiasm and corpus callosum as WM; the ventricles, CSF and choroid plexus as CSF; every other label
background. (The phantoms' CSF, from the template's tissue map, also covers the sulci, which aseg leaves
unlabelled.)"""


def freesurfer_tissue(aseg: np.ndarray) -> np.ndarray:
    """An ``aseg`` label map (any integer dtype) as tissue classes, uint8 (:data:`FREESURFER_TISSUE`)."""
    aseg = np.asarray(aseg)
    table = np.zeros(max(int(aseg.max(initial=0)), max(FREESURFER_TISSUE)) + 1, np.uint8)
    for value, cls in FREESURFER_TISSUE.items():
        table[value] = cls
    if aseg.min(initial=0) < 0:
        raise ValueError("An aseg label map holds no negative labels.")
    return table[aseg.astype(np.int64)]


@dataclass(frozen=True)
class ScanRecord:
    """One scan of a cohort folder."""

    name: str
    subject: str
    image_path: Path
    label_path: Path | None
    layout: Layout = field(default=MIXDEMO_LAYOUT, compare=False)


@dataclass(frozen=True)
class Cohort:
    """A cohort folder: its scans, its train/test split by subject, and its layout and class names."""

    root: Path
    records: tuple[ScanRecord, ...]
    train_subjects: tuple[str, ...]
    test_subjects: tuple[str, ...]
    layout: Layout = MIXDEMO_LAYOUT
    class_names: tuple[str, ...] = CLASS_NAMES
    dataset: str | None = None  # split.json's "dataset" ("MNI152-phantom" for the phantoms)
    left_out: tuple[str, ...] = ()  # its folders that hold no scan of the layout read (a BraTS case without the modality,
    # a link to a folder that is not there)

    def left_out_note(self) -> str | None:
        """A line naming the folders left out (None if none), for the commands that read the cohort to print."""
        if not self.left_out:
            return None
        what = f"{self.modality} image" if self.layout.name != MIXDEMO_LAYOUT.name else "t1.nii.gz"
        shown = ", ".join(self.left_out[:5]) + (f" and {len(self.left_out) - 5} more" if len(self.left_out) > 5 else "")
        return f"note: {len(self.left_out)} folder(s) of {self.root} hold no {what} and are left out: {shown}"

    def split(self, which: str) -> list[ScanRecord]:
        """Records of the ``"train"`` or ``"test"`` subjects."""
        subjects = {"train": self.train_subjects, "test": self.test_subjects}[which]
        return [r for r in self.records if r.subject in set(subjects)]

    @property
    def modality(self) -> str:
        """The images' modality: ``t1`` in the mixdemo layout, the file name's suffix in a BraTS folder."""
        if self.layout.name == MIXDEMO_LAYOUT.name:
            return "t1"
        first = self.records[0]
        return first.image_path.name[len(first.name) + 1 :].split(".")[0].lower()

    @property
    def description(self) -> str:
        """What the scans are, for the records of figures measured on them."""
        if self.dataset == PHANTOM_DATASET:
            return PHANTOM_DESCRIPTION
        return f"{self.dataset or self.root.name}: {self.layout.name} layout, {self.modality}, {len(self.records)} scans"

    @property
    def num_classes(self) -> int:
        """How many classes its models give, background included."""
        return len(self.class_names)

    @property
    def foreground_classes(self) -> dict[int, str]:
        """{class: name} of the classes scored (every class but background)."""
        return dict(enumerate(self.class_names[1:], start=1))


def first_scans(records: Sequence[ScanRecord]) -> list[ScanRecord]:
    """The first scan (by name) of each subject, in the records' order: one scan a subject, as the Dice of an
    evaluation and a calibration count them (``sub-001_scan-0``, ``sub-01_ses-1``, a BraTS case)."""
    firsts: dict[str, ScanRecord] = {}
    for r in records:
        if r.subject not in firsts or r.name < firsts[r.subject].name:
            firsts[r.subject] = r
    return [r for r in records if firsts[r.subject] is r]


def subject_of(folder_name: str) -> str:
    """``sub-001_scan-0`` → ``sub-001`` (text up to the last underscore)."""
    return folder_name.rsplit("_", 1)[0] if "_" in folder_name else folder_name


def brats_subject(case: str) -> str:
    """``BraTS-GLI-00000-001`` → ``BraTS-GLI-00000`` (BraTS 2023's time point); ``BraTS2021_00000`` unchanged."""
    return re.sub(r"-\d{3}$", "", case) if case.count("-") >= 3 else case


def load_cohort(root: str | Path, modality: str | None = None) -> Cohort:
    """Read a cohort folder in either layout (the module docstring has both).

    ``modality``: for a BraTS folder, the modality file read (``t1ce``, ``flair``, ...; default T1CE). The
    ``mixdemo`` layout holds T1 only.
    """
    root = Path(root)
    if not root.is_dir():
        hint = (f"; generate one with python -m mixdemo.phantoms --out {root}" if root == Path(DEFAULT_COHORT)
                else " (check the path)")
        raise CohortNotFoundError(f"No cohort folder at {root}{hint}.")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    records = _mixdemo_records(folders)
    layout = MIXDEMO_LAYOUT
    if records and modality not in (None, "t1"):
        raise CohortError(f"{root} is in the mixdemo layout, which holds T1 only (t1.nii.gz), not {modality!r}.")
    if not records:
        records, layout = _brats_records(folders, modality), BRATS_LAYOUT
    if not records:
        if cases := [f for f in folders if _case_file(f, "seg") is not None]:  # BraTS cases, none with the modality
            files = (f"<case>_{modality}.nii.gz or <case>-{modality}.nii.gz" if modality else
                     "<case>_t1ce.nii.gz, or BraTS 2023's <case>-t1c.nii.gz")
            raise CohortNotFoundError(
                f"{root}'s {len(cases)} BraTS case folder(s) hold no {modality or 'T1CE'} image ({files}): name a "
                "modality they hold (BraTS 2021: t1, t1ce, t2, flair; BraTS 2023: t1n, t1c, t2w, t2f).")
        raise CohortNotFoundError(
            f"{root} holds neither <subject>_<scan>/t1.nii.gz folders nor BraTS case folders "
            f"(<case>/<case>_{modality or 't1ce'}.nii.gz with <case>_seg.nii.gz).")
    subjects = sorted({r.subject for r in records})
    read = {r.image_path.parent for r in records}
    broken = [p for p in root.iterdir() if p.is_symlink() and not p.exists()]  # a link to storage not mounted
    left_out = tuple(f.name for f in sorted([*folders, *broken]) if f not in read and not f.name.startswith("."))
    subject_of_folder = brats_subject if layout.name == BRATS_LAYOUT.name else subject_of
    meta = read_split_file(root / "split.json")
    train, test = cohort_split(meta, subjects, {subject_of_folder(name) for name in left_out})
    names = cohort_classes(meta.get("classes", layout.class_names), layout)
    if layout.name == MIXDEMO_LAYOUT.name and names != layout.class_names:
        layout = mixdemo_layout(names)
        records = [replace(r, layout=layout) for r in records]
    return Cohort(root, tuple(records), tuple(train), tuple(test), layout, names, meta.get("dataset"), left_out)


SPLIT_KEYS = ("train", "test", "classes", "dataset")
"""The keys of ``split.json`` that the cohort reads (others, such as the generators' ``seed`` or ``note``, are
kept for people and ignored; one spelled close to the first three is refused as a typo)."""


def read_split_file(path: Path) -> dict:
    """``split.json`` as a dict ({} without one); a CohortError if it is not a JSON object."""
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))  # a user's notes may hold any text; a BOM (Notepad) skipped
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CohortError(f"{path} is not readable JSON ({exc}).") from None
    if not isinstance(meta, dict):
        raise CohortError(f'{path} must hold a JSON object: {{"train": [subject, ...], "test": [subject, ...]}}.')
    for key in meta:
        if key not in SPLIT_KEYS and (near := difflib.get_close_matches(key, SPLIT_KEYS[:3], n=1, cutoff=0.7)):
            raise CohortError(f'{path} has a key "{key}": did you mean "{near[0]}"? (As written, it would be ignored '
                              f'and every subject not listed would go to the other side.)')
    return meta


def cohort_split(meta: dict, subjects: Sequence[str], left_out: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(train, test) subjects: ``split.json``'s lists, the other side being every remaining subject when it names
    one side only; the fixed 75/25 split by subject when it names neither. Subjects of ``left_out`` (folders that
    hold no scan of the layout read: a BraTS case without the modality) drop out of the lists (the cohort names
    those folders). A CohortError for a list that is not one of subject names, a subject named on both sides, or
    a name the folder holds no folder of (a typo would otherwise leave that subject out, or, on the other side,
    put it in)."""
    given = {side: meta[side] for side in ("train", "test") if side in meta}
    for side, names in given.items():
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise CohortError(f'split.json\'s "{side}" must be a list of subject names.')
    if not given:
        split = split_subjects(list(subjects), 0.25, seed=0)
        return split["train"], split["test"]
    given = {side: [n for n in names if n not in left_out or n in subjects] for side, names in given.items()}
    unknown = sorted({n for names in given.values() for n in names} - set(subjects))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise CohortError(f"split.json names subject(s) the folder holds no scan folder of: {shown} (a subject is a "
                          "scan folder's name up to its last underscore, or a BraTS case: in BraTS 2023 without its "
                          "time point, BraTS-GLI-00000 for BraTS-GLI-00000-000).")
    train, test = given.get("train"), given.get("test")
    if train is None:
        train = [s for s in subjects if s not in set(test)]
    if test is None:
        test = [s for s in subjects if s not in set(train)]
    if set(train) & set(test):
        raise CohortError(f"split.json puts subjects on both sides: {sorted(set(train) & set(test))}")
    return list(train), list(test)


def cohort_classes(names: object, layout: Layout, source: str = 'split.json\'s "classes"') -> tuple[str, ...]:
    """Class names checked: distinct, background first, from 2 to :data:`MAX_CLASSES` in the mixdemo layout (label
    values 0 … N − 1), as many as the layout's classes in a BraTS folder. ``source`` names where they came from in
    the messages (``--classes`` for ``training.prepare_cohort``)."""
    if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) and n.strip() for n in names)):
        raise CohortError(f"{source} must be a list of names, background first.")
    names = tuple(names)
    if len(set(names)) != len(names):
        raise CohortError(f"{source} names a class twice: {list(names)}.")
    if (late := [n for n in names[1:] if n.strip().lower() == "background"]):
        raise CohortError(f"{source} names {late[0]!r} at place {names.index(late[0]) + 1}: the first name is label 0, "
                          f"the background, so list it first ({list(names)}).")
    if layout.name != MIXDEMO_LAYOUT.name and len(names) != len(layout.class_names):
        raise CohortError(f"{source} names {len(names)} classes; the {layout.name} layout's label values "
                          f"({layout.describe_values()}) make {len(layout.class_names)} (background first).")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise CohortError(f"{source} names {len(names)} classes; a cohort needs 2 to {MAX_CLASSES} "
                          "(background first).")
    return names


def trained_modality(record: dict) -> str | None:
    """The BraTS modality a model's training record names (None for the mixdemo layout or an older record): what
    to read from a BraTS folder for that model by default."""
    return record.get("modality") if record.get("data_layout") == BRATS_LAYOUT.name else None


def _mixdemo_records(folders: Sequence[Path]) -> list[ScanRecord]:
    records = []
    for folder in folders:
        image = first_file(folder, ("t1.nii.gz", "t1.nii"))
        if image is not None:
            label = first_file(folder, ("seg.nii.gz", "seg.nii"))
            records.append(ScanRecord(folder.name, subject_of(folder.name), image, label))
    return records


def _brats_records(folders: Sequence[Path], modality: str | None) -> list[ScanRecord]:
    records = []
    for folder in folders:
        image = next(filter(None, (_case_file(folder, m) for m in ((modality,) if modality else BRATS_MODALITIES))), None)
        if image is not None:
            records.append(ScanRecord(folder.name, brats_subject(folder.name), image, _case_file(folder, "seg"), BRATS_LAYOUT))
    return records


def _case_file(folder: Path, suffix: str) -> Path | None:
    """``<case>_<suffix>`` or ``<case>-<suffix>`` (.nii.gz or .nii) in a BraTS case folder."""
    return first_file(folder, [f"{folder.name}{sep}{suffix}{ext}" for sep in "_-" for ext in (".nii.gz", ".nii")])


def first_file(folder: Path, names: Sequence[str]) -> Path | None:
    """The file of ``folder`` named as the first of ``names`` it holds, None if none (or no folder). A name is also
    matched in another case (``T1.nii.gz``, ``seg.NII.GZ``), as a Mac's or Windows' file system matches it, when
    the folder holds no file of the exact name."""
    if exact := next((folder / n for n in names if (folder / n).is_file()), None):
        return exact
    try:
        held = {p.name.lower(): p for p in sorted(folder.iterdir(), reverse=True) if p.is_file()}
    except OSError:
        return None
    return next((held[n.lower()] for n in names if n.lower() in held), None)


@dataclass
class Volume:
    """A scan in memory: normalised image, labels and its subject."""

    name: str
    subject: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def load_volume(record: ScanRecord) -> Volume:
    """Load and normalise one labelled scan with :mod:`mixdemo.io`."""
    from mixdemo.io import load_labels, load_scan

    if record.label_path is None:
        raise CohortError(f"Scan {record.name} has no label map (seg); training and evaluation need labels.")
    scan = load_scan(record.image_path)
    labels = classes_of(load_labels(record.label_path, like=scan), record.layout, record.name)
    return Volume(record.name, record.subject, scan.data, labels, scan.affine)


def header_problems(records: Sequence[ScanRecord]) -> list[str]:
    """What keeps scans of ``records`` from loading, found from their headers alone (no voxel data is read: seconds
    for a BraTS-sized split): a missing label map, a file nibabel cannot open, a grid that is not 3D, an
    uncompressed file shorter than its header declares. One ``"name: why"`` per scan; data truncated inside a
    compressed file are found only when the scan is read."""
    problems = []
    for record in records:
        if record.label_path is None:
            problems.append(f"{record.name}: no label map (seg)")
            continue
        for what, path in (("image", record.image_path), ("label map", record.label_path)):
            why = _header_problem(Path(path))
            if why:
                problems.append(f"{record.name}: its {what} {why}")
                break
    return problems


def _header_problem(path: Path) -> str | None:
    """Why the NIfTI at ``path`` cannot load, from its header alone; None if nothing is seen."""
    import nibabel as nib

    try:
        image = nib.load(path)
        shape = tuple(image.shape)
        declared = int(image.dataobj.offset) + int(np.prod(shape)) * image.get_data_dtype().itemsize  # where the data start
    except Exception as exc:  # noqa: BLE001 - untrusted files: whatever nibabel raises, say it and go on
        return f"cannot be opened ({type(exc).__name__})"
    if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
        return f"is not a 3D volume (shape {shape})"
    if not path.name.lower().endswith(".gz") and path.stat().st_size < declared:
        return "is shorter than its header declares (truncated)"
    return None


def classes_of(values: np.ndarray, layout: Layout, scan_name: str = "the scan") -> np.ndarray:
    """The label file's values as the layout's classes (uint8); a CohortError naming any value it does not define."""
    table = np.full(256, 255, np.uint8)
    for value, cls in layout.label_values:
        table[value] = cls
    classes = table[values]
    if (classes == 255).any():
        unknown = sorted(int(v) for v in np.unique(values[classes == 255]))
        raise LabelValueError(f"{scan_name}'s labels hold {unknown}, which the {layout.name} layout does not define "
                         f"(it reads {layout.describe_values()}).")
    return classes


def load_volumes(records: Sequence[ScanRecord], cache: str | Path | None = None) -> list[Volume]:
    """Load scans that must share one grid (mixing cuts them at the same coordinates).

    ``cache``: a folder where each scan is written once, normalised and with its classes, as ``.npy`` files,
    then opened memory-mapped, so a cohort larger than the memory trains (BraTS 2021's 1,251 training cases
    take about 56 GB as arrays): a patch reads only its own voxels from disk. A cached scan is rebuilt when its source
    files change (size or modification time).
    """
    volumes = [_load_named(r, cache) for r in records]
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for volume in volumes:
        by_shape.setdefault(volume.image.shape, []).append(volume.name)
    if len(by_shape) > 1:
        found = "; ".join(f"{shape}: {len(names)} scan(s), e.g. {', '.join(names[:3])}"
                          for shape, names in sorted(by_shape.items(), key=lambda item: -len(item[1])))
        advice = ("BraTS cases share one 240×240×155 grid as the challenge distributes them: resample the others "
                  "onto it" if records and records[0].layout.name == BRATS_LAYOUT.name else
                  "Register them to MNI space first (python -m training.prepare_cohort, mixdemo.preprocess)")
        raise CohortError(
            f"Scans must share one grid to be mixed; found, on the 1 mm RAS grid each is resampled to when read (a "
            f"scan of another voxel size or field of view has another shape there than in its file): {found}. {advice}."
        )
    return volumes


def _load_named(record: ScanRecord, cache: str | Path | None) -> Volume:
    """One scan of a cohort; a file it cannot read is a :class:`CohortError` naming the scan."""
    from mixdemo.io import ScanError

    try:
        return load_volume(record) if cache is None else cached_volume(record, Path(cache))
    except ScanError as exc:
        raise CohortError(f"Scan {record.name}: {exc}") from exc


def cached_volume(record: ScanRecord, cache: Path) -> Volume:
    """:func:`load_volume` through the memory-mapped cache of :func:`load_volumes`."""
    from mixdemo.io import file_stamp

    custom = record.layout not in (MIXDEMO_LAYOUT, BRATS_LAYOUT)  # the classes split.json names: their values
    label_values = [list(pair) for pair in record.layout.label_values]  # as JSON reads them back, to compare
    stamp = {"layout": record.layout.name, **({"label_values": label_values} if custom else {}), **{
        name: file_stamp(path) for name, path in (("image", record.image_path), ("labels", record.label_path))
        if path is not None}}
    base = cache / record.name
    files = {k: base.with_name(f"{record.name}.{k}.npy") for k in ("image", "labels", "affine")}
    meta = base.with_name(f"{record.name}.json")
    if not (meta.exists() and json.loads(meta.read_text()) == stamp and all(f.exists() for f in files.values())):
        volume = load_volume(record)
        cache.mkdir(parents=True, exist_ok=True)
        for key, array in (("image", volume.image), ("labels", volume.labels), ("affine", volume.affine)):
            tmp = files[key].with_name(files[key].name + f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array))
            os.replace(tmp, files[key])  # atomic: processes of one torchrun may build it at once
        tmp = meta.with_name(meta.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, meta)
    image, labels = (np.load(files[k], mmap_mode="r") for k in ("image", "labels"))
    return Volume(record.name, record.subject, image, labels, np.load(files["affine"]))


def _voxels_by_class(labels: np.ndarray, sort: bool = True) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The flat indices of a label map's labelled voxels (int32), sorted by class, and each present class's
    span ``(start, stop)`` in them (``sort=False``: in flat order, one span over all)."""
    voxels = np.flatnonzero(labels).astype(np.int32)
    if not sort:
        return voxels, [(0, len(voxels))]
    classes = np.asarray(labels).reshape(-1)[voxels]
    order = np.argsort(classes, kind="stable")
    voxels, classes = voxels[order], classes[order]
    starts = np.flatnonzero(np.diff(classes, prepend=-1)) if len(classes) else np.zeros(0, int)
    stops = np.append(starts[1:], len(classes))
    return voxels, [(int(a), int(b)) for a, b in zip(starts, stops)]


def _check_patch_fits(volumes: Sequence[Volume], patch_size: int) -> None:
    """A CohortError unless a patch of ``patch_size``³ voxels fits in every volume: the corners of a larger one come out
    negative, and the patches cut would be smaller, from the scans' ends."""
    if volumes and patch_size > (side := min(min(v.image.shape) for v in volumes)):
        smallest = min((v.image.shape for v in volumes), key=min)
        raise CohortError(f"Patches of {patch_size}³ voxels do not fit in the scans ({'×'.join(map(str, smallest))}): "
                          f"give a patch size of at most {side} (--patch-size).")


@dataclass
class Batch:
    """One training batch of mixed patches (B, …)."""

    x_mix: torch.Tensor  # (B, 1, P, P, P) proxy, Eq. 2
    y_mix: torch.Tensor  # (B, C, P, P, P) mixed one-hot labels, Eq. 3
    y_ref: torch.Tensor  # (B, R·C, P, P, P) one-hot reference labels
    y_target: torch.Tensor  # (B, P, P, P) integer labels of the target
    x_target: torch.Tensor  # (B, 1, P, P, P)
    weights: torch.Tensor  # (B, 1 + R): α then each reference's weight


class MixedPatchSampler:
    """Random mixed patches: a target, R references of other subjects, α ~ U(range).

    Reference weights split 1 − α at random (R = 1: the paper's Eq. 2; R = 2: three sources).
    ``mixed=False`` gives plain patches (the baseline's training data); ``augment=True`` passes the
    target through :mod:`mixdemo.augment` (small affine, gamma, bias field, noise) before mixing.
    ``patch_centres`` (a :class:`Layout`'s): ``"labels"`` centres each patch on a labelled voxel (tissue
    classes cover the brain); ``"brain_and_labels"`` on a brain voxel (x > 0) or a labelled one, one or the
    other at random (classes that cover a small part of the brain, as a tumour's, but the network must
    also see the brain without them); ``"classes"`` on a voxel of a class drawn uniformly from the labelled
    (not background) classes the target holds (class-balanced: a class of ~1 % of white matter's voxels, as the
    lesion phantoms', is centred on as often as white matter). ``num_classes``: the cohort's (:attr:`Cohort.num_classes`), for the one-hot labels.
    ``views=2`` mixes each target patch twice, with the same α and references disjoint from the first mix's
    (consecutive in the batch, which then holds 2 × ``batch_size`` samples): D's two predictions of one
    target, for a consistency loss (``training.train --consistency``). The first mix of each pair is drawn
    exactly as with ``views=1``; the second's references are drawn after it.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        *,
        patch_size: int = 32,
        alpha_range: tuple[float, float] = TRAIN_ALPHA_RANGE,
        n_references: int = 1,
        mixed: bool = True,
        augment: bool = False,
        patch_centres: str = "labels",
        num_classes: int = NUM_CLASSES,
        seed: int = 0,
        views: int = 1,
    ) -> None:
        if len({v.subject for v in volumes}) < 1 + n_references and mixed:
            raise ValueError("Mixing needs references from subjects other than the target's.")
        if views not in (1, 2) or (views == 2 and not mixed):
            raise ValueError(f"views is 1, or 2 for mixed patches (got {views}{'' if mixed else ', unmixed'}).")
        if views == 2 and len({v.subject for v in volumes}) < 1 + 2 * n_references:
            raise ValueError(f"Two mixes with disjoint references need {1 + 2 * n_references} subjects or more.")
        _check_patch_fits(volumes, patch_size)
        self.views = views
        self.volumes = list(volumes)
        self.patch_size = patch_size
        self.alpha_range = alpha_range
        self.n_references = n_references
        self.mixed = mixed
        self.augment = augment
        self.num_classes = num_classes
        if patch_centres not in PATCH_CENTRES:
            raise ValueError(f"Unknown patch_centres {patch_centres!r}; one of {', '.join(map(repr, PATCH_CENTRES))}.")
        self.rng = np.random.default_rng(seed)
        # flat indices (4 bytes a labelled voxel, not argwhere's 24): a large cohort's centres fit in memory.
        # Class-balanced centres sort them by class and keep each class's span; the others keep the flat order
        # (the draws that trained the shipped weights).
        self._balanced = patch_centres == "classes"
        by_class = [_voxels_by_class(v.labels, sort=self._balanced) for v in self.volumes]
        self._foreground = [voxels for voxels, _ in by_class]
        self._class_spans = [spans for _, spans in by_class]
        self._brain_centres = patch_centres == "brain_and_labels"

    def _corner(self, t: int) -> tuple[int, int, int]:
        """The corner of the target ``t``'s next patch (module docstring of the class: ``patch_centres``)."""
        shape, labelled = self.volumes[t].image.shape, self._foreground[t]
        if self._brain_centres and (not len(labelled) or self.rng.random() < 0.5):
            if (centre := self._brain_voxel(t)) is not None:
                return corner_around(centre, shape, self.patch_size)
        if not len(labelled):
            return sample_patch_corner(shape, self.patch_size, self.rng)
        start, stop = (0, len(labelled))
        if self._balanced:
            spans = self._class_spans[t]
            start, stop = spans[int(self.rng.integers(len(spans)))]
        voxel = labelled[int(self.rng.integers(start, stop))]
        return corner_around(np.unravel_index(voxel, shape), shape, self.patch_size)

    def _brain_voxel(self, t: int, tries: int = 1000) -> tuple[int, ...] | None:
        """A uniform voxel of the target's brain (x > 0), by rejection: no index of the brain is kept, and a
        volume on disk (:func:`load_volumes` with ``cache``) is read one voxel a try."""
        image = self.volumes[t].image
        for _ in range(tries):
            voxel = tuple(int(self.rng.integers(n)) for n in image.shape)
            if image[voxel] > 0:
                return voxel
        return None

    def _draw(self) -> list[tuple[np.ndarray, ...]]:
        """One target patch: its ``views`` mixes (one plain patch if not ``mixed``)."""
        t = int(self.rng.integers(len(self.volumes)))
        target = self.volumes[t]
        corner = self._corner(t)
        sl = patch_slices(corner, self.patch_size)
        x_t, y_t = target.image[sl], target.labels[sl]
        if self.augment:  # residual misregistration and contrast of real scans (target only, before mixing)
            from mixdemo.augment import augment_patch, sample_augmentation

            x_t, y_t = augment_patch(target.image, target.labels, corner, self.patch_size, sample_augmentation(self.rng))
        if not self.mixed:
            return [(x_t, y_t, x_t, one_hot(y_t, self.num_classes), np.zeros((0, *y_t.shape), np.float32), np.ones(1))]
        others = [i for i, v in enumerate(self.volumes) if v.subject != target.subject]
        refs = self.rng.choice(others, size=self.n_references, replace=False)
        alpha = float(self.rng.uniform(*self.alpha_range))
        views = [self._mix(x_t, y_t, sl, refs, alpha)]
        if self.views == 2:  # the same target and α; references of subjects neither the target nor the first mix's
            taken = {self.volumes[r].subject for r in refs}
            rest = [i for i in others if self.volumes[i].subject not in taken]
            views.append(self._mix(x_t, y_t, sl, self.rng.choice(rest, size=self.n_references, replace=False), alpha))
        return views

    def _mix(self, x_t: np.ndarray, y_t: np.ndarray, sl: tuple[slice, ...], refs: np.ndarray,
             alpha: float) -> tuple[np.ndarray, ...]:
        """The target patch mixed with the references' patches at ``sl`` (Eq. 2 and 3)."""
        split = self.rng.dirichlet(np.ones(self.n_references)) if self.n_references > 1 else np.ones(1)
        weights = np.concatenate([[alpha], (1 - alpha) * split])
        x_mix = alpha * x_t
        y_t1 = one_hot(y_t, self.num_classes)
        y_mix = alpha * y_t1
        y_refs = []
        for r, w in zip(refs, weights[1:]):
            x_r, y_r = self.volumes[r].image[sl], one_hot(self.volumes[r].labels[sl], self.num_classes)
            x_mix = x_mix + w * x_r
            y_mix = y_mix + w * y_r
            y_refs.append(y_r)
        if self.n_references == 1:  # the same numbers through the paper's Eq. 2 and 3
            x_mix = mix(x_t, self.volumes[refs[0]].image[sl], alpha)
        return x_mix, y_t, x_t, y_mix, np.concatenate(y_refs), weights

    def batch(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` target patches (each as ``views`` consecutive samples)."""
        items = [view for _ in range(batch_size) for view in self._draw()]
        x_mix, y_t, x_t, y_mix, y_ref, w = (np.stack(col) for col in zip(*items))
        return Batch(
            x_mix=torch.from_numpy(x_mix[:, None].astype(np.float32)),
            y_mix=torch.from_numpy(y_mix.astype(np.float32)),
            y_ref=torch.from_numpy(y_ref.astype(np.float32)),
            y_target=torch.from_numpy(y_t.astype(np.int64)),
            x_target=torch.from_numpy(x_t[:, None].astype(np.float32)),
            weights=torch.from_numpy(w.astype(np.float32)),
        )

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.batch(4)
