"""Raw labelled T1 scans → a cohort folder the models train on (MNI 144×192×160 grid, 1 mm, skull-stripped).

    python -m training.prepare_cohort /data/ppmi_freesurfer --out data/ppmi
    python -m training.train --data data/ppmi

Each folder of ``SRC`` is one scan, named ``<subject>_<scan>`` (the subject is the text up to the last
underscore, so a subject's visits stay on one side of the split), holding either

- ``t1.nii.gz`` (or ``.nii``) and ``seg.nii.gz`` with tissue labels 0 background, 1 GM, 2 WM, 3 CSF on the
  T1's grid, in any space, skull included or not (with ``--classes``, labels 0 … N − 1 of the N classes named,
  which ``split.json`` then names and the models trained on the cohort give); or
- a FreeSurfer subject: ``mri/orig.mgz`` (else ``mri/T1.mgz``, else ``mri/brain.mgz``) and ``mri/aseg.mgz``,
  whose labels become the tissue classes as the paper's PPMI pseudo ground truth did
  (:data:`mixdemo.data.FREESURFER_TISSUE`).

Each T1 goes through :func:`mixdemo.preprocess.to_model_space` (affine registration to the MNI152 template,
brain extraction, intensity normalisation: what the client does to a raw scan at inference), and its labels
through the same transform from their file's own grid (each label's share interpolated,
:func:`mixdemo.preprocess.labels_to_model_grid`), kept inside the extracted brain. The output is the mixdemo layout
(:mod:`mixdemo.data`) with a ``split.json`` (by subject) and ``prepare.json``: per scan, the registration's
similarity to the template, its warning if any, and the share of labelled voxels kept inside the extracted brain,
to check before training. A scan that cannot be used (an unreadable file, labels outside the classes, a failed
registration) is skipped with its reason in ``prepare.json``, and a folder of neither form is listed with what it
lacks (FreeSurfer's average subjects, ``fsaverage`` and the like, which recon-all links into a subjects folder, are
listed as such). Scans already written by an earlier run into ``--out`` are kept while their source files (T1 and labels:
path, size, modification time) are unchanged, and prepared again otherwise, so an interrupted run goes on where it
stopped and an edited scan is not left stale.

``--out`` must lie apart from ``SRC`` (neither the same folder nor inside the other), and be a new or empty
folder or one this command prepared from the same ``SRC``: any other folder with something in it (a cohort
it did not write, BraTS case folders...) is refused and left as it is. A split with fewer than 2 training subjects (training mixes a target with
another subject's scan) or 2 test scans (evaluation scores them; its test-retest ICC needs 2) is written
all the same, with a warning. A rerun with the same ``--test-fraction`` and ``--seed`` keeps each subject of the
earlier run's split on its side and draws sides for new subjects only (so adding subjects never moves a test subject
into training, where weights trained before would be scored on scans they trained on); with others it draws the
split anew, and a warning names the subjects that changed sides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixdemo.data import (BRATS_LAYOUT, MIXDEMO_LAYOUT, CohortError, LabelValueError, Layout, classes_of, cohort_classes,
                          first_file, freesurfer_tissue, load_cohort, mixdemo_layout, subject_of)
from mixdemo.classes import CLASS_NAMES
from mixdemo.phantoms import moved_subjects, split_keeping_earlier_sides
from training import LISTED, command_line, first_few, user_errors

FREESURFER_IMAGES = ("orig.mgz", "T1.mgz", "brain.mgz")
"""The FreeSurfer image used, first present first: the conformed raw T1 (skull included) is what a client's
raw scan looks like."""
FREESURFER_TEMPLATES = ("fsaverage", "cvs_avg35")
"""Name beginnings of FreeSurfer's average subjects (templates, not scans; ``fsaverage``, ``fsaverage_sym``,
``cvs_avg35_inMNI152`` ...), which recon-all links into a subjects folder: left out."""
T1_NAMES = ("t1.nii.gz", "t1.nii")
SEG_NAMES = ("seg.nii.gz", "seg.nii")
OUTPUTS = ("t1.nii.gz", "seg.nii.gz")
"""The files :func:`prepare_scan` writes in ``<out>/<name>/``."""


@dataclass(frozen=True)
class RawScan:
    """One scan of the source folder: its name, T1 and labels, and what the labels are."""

    name: str
    image: Path
    labels: Path
    kind: str  # "tissue" (0-3) or "freesurfer" (aseg)


def find_scans(src: Path) -> tuple[list[RawScan], dict[str, str]]:
    """The scans of ``src`` in either form (module docstring), and its other folders with why each is none;
    SystemExit naming both forms (and the folders ignored) if there is no scan."""
    scans, ignored = [], {}
    for folder in sorted(p for p in src.iterdir() if p.is_dir() or p.is_symlink()):
        if not folder.is_dir():  # a link to a file, or to storage not mounted
            if not folder.exists():
                ignored[folder.name] = f"a link to {os.readlink(folder)}, which is not there"
            continue
        if folder.name.startswith(FREESURFER_TEMPLATES):
            ignored[folder.name] = "FreeSurfer's average subject (a template), not a scan"
            continue
        t1, seg = first_file(folder, T1_NAMES), first_file(folder, SEG_NAMES)
        fs_image, aseg = first_file(folder / "mri", FREESURFER_IMAGES), first_file(folder / "mri", ("aseg.mgz",))
        if t1 and seg:
            scans.append(RawScan(folder.name, t1, seg, "tissue"))
        elif fs_image and aseg:
            scans.append(RawScan(folder.name, fs_image, aseg, "freesurfer"))
        else:
            ignored[folder.name] = why_not_a_scan(folder, t1 or seg, fs_image or aseg)
    if not scans:
        if brats := brats_cases(src):
            raise SystemExit(f"{src} holds BraTS case folders ({brats} cases), which training reads as they are: "
                             f"python -m training.train --data {src} (co-registered and skull-stripped already, on their "
                             "own grid; this command prepares raw scans for the PPMI-like layout).")
        if ignored:
            held = f"its folders: {first_few(list(ignored))}"
        else:  # nothing, or a scan's files loose in SRC
            files = sorted(p.name for p in src.iterdir())
            held = (f"it holds no folder (its files: {first_few(files)}): each scan is a folder <subject>_<scan>/ "
                    "holding its files" if files else "it holds no folder (it is empty)")
        raise SystemExit(f"{src} holds no <name>/t1.nii.gz + seg.nii.gz folders nor FreeSurfer subjects "
                         f"(<name>/mri/orig.mgz + mri/aseg.mgz); {held}.")
    return scans, ignored


def brats_cases(src: Path) -> int:
    """How many BraTS case folders ``src`` holds, as ``training.train --data`` reads them (0: it is no BraTS cohort)."""
    try:
        cohort = load_cohort(src)
    except (CohortError, OSError, ValueError):
        return 0
    return len(cohort.records) if cohort.layout.name == BRATS_LAYOUT.name else 0


def why_not_a_scan(folder: Path, half: Path | None, fs_half: Path | None) -> str:
    """What ``folder`` lacks of either form, given the one file of a pair it holds (``half``, ``fs_half``), and
    the files it holds when it holds no such file (labels under another name, as ``aseg.nii.gz``)."""
    if half is not None:
        lacking = "seg.nii.gz (its label map)" if half.name.lower() in T1_NAMES else "t1.nii.gz"
        return f"{half.name} without {lacking}{_holding(folder)}"
    if fs_half is not None:
        lacking = "mri/aseg.mgz" if fs_half.name.lower() != "aseg.mgz" else "mri/orig.mgz (or T1.mgz, brain.mgz)"
        return f"mri/{fs_half.name} without {lacking}"
    return "neither t1.nii.gz + seg.nii.gz nor mri/orig.mgz + mri/aseg.mgz" + (_holding(folder) or "; empty")


def _holding(folder: Path) -> str:
    files = sorted(p.name for p in folder.iterdir())
    return f"; holds {', '.join(files[:4])}{', ...' if len(files) > 4 else ''}" if files else ""


def print_ignored(ignored: dict[str, str], src: Path, n_folders: int) -> None:
    """The folders of ``src`` that are not scans, one line each with why (the first :data:`LISTED`)."""
    if ignored:
        print(f"ignored {len(ignored)} of the {n_folders} folders of {src}, not scans:")
        for name, why in list(ignored.items())[:LISTED]:
            print(f"  {name}: {why}")
        if len(ignored) > LISTED:
            print(f"  ... and {len(ignored) - LISTED} more")


def check_apart(src: Path, out: Path) -> None:
    """SystemExit unless ``out`` lies apart from ``src`` (resolved): the same folder would have its raw scans
    overwritten, one inside the other mixes prepared scans with raw ones."""
    s, o = src.resolve(), out.resolve()
    where = "is" if o == s else "lies inside" if o.is_relative_to(s) else "holds" if s.is_relative_to(o) else None
    if where:
        raise SystemExit(f"error: --out {out} {where} the source folder {src}: its raw scans would be overwritten or "
                         "mixed with the prepared ones; give --out a folder outside it.")


def check_out_folder(out: Path, src: Path) -> None:
    """SystemExit if ``out`` holds a cohort (``split.json`` or scan folders) that this command did not prepare
    from ``src``: its split would be replaced and its scans left in neither split."""
    if not out.is_dir():
        return
    meta = {**_json_of(out / "split.json"), **_json_of(out / "prepare.json")}  # prepare.json's source: resolved
    if "training.prepare_cohort" in str(meta.get("command", "")):
        if meta.get("source") is None or Path(meta["source"]).resolve() == src.resolve():
            return
        raise SystemExit(f"error: --out {out} holds a cohort prepared from another folder ({meta['source']}), not "
                         f"{src}; give --out a new folder (a cohort is prepared from one source folder).")
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]  # a Mac's .DS_Store: still empty
    if not entries:
        return
    scans = [p for p in entries if p.is_dir() and first_file(p, T1_NAMES)]
    held = ["split.json"] * (out / "split.json").exists() + [f"{len(scans)} scan folder(s)"] * bool(scans)
    if held:
        raise SystemExit(f"error: --out {out} already holds a cohort that training.prepare_cohort did not write "
                         f"({' and '.join(held)}); its split would be replaced, leaving its scans in neither split. "
                         "Give --out a new folder.")
    raise SystemExit(f"error: --out {out} is not empty ({len(entries)} item(s), e.g. {sorted(e.name for e in entries)[0]!r}) "
                     "and training.prepare_cohort did not write it: the prepared scans and split.json would be mixed "
                     "with what is there (another cohort's case folders, say). Give --out a new or empty folder.")


def _json_of(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def as_nifti(path: Path, tmp: Path, labels: str | None = None) -> Path:
    """``path`` itself if it is NIfTI; a FreeSurfer ``.mgz`` written as NIfTI in ``tmp`` (with ``labels="freesurfer"``,
    its aseg labels as tissue classes first)."""
    if path.suffix.lower() != ".mgz":
        return path
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - a damaged file of the user's: skipped with a message
        raise ValueError(f"{path.name} could not be read as a FreeSurfer .mgz volume ({type(exc).__name__}).") from exc
    if labels == "freesurfer":
        data = freesurfer_tissue(data)
    out = tmp / (path.stem + ("_tissue" if labels else "") + ".nii.gz")
    nib.save(nib.Nifti1Image(data, img.affine), str(out))
    return out


def prepare_scan(scan: RawScan, out: Path, threads: int | None = None, layout: Layout = MIXDEMO_LAYOUT) -> dict:
    """Register one scan to the model grid, carry its labels (those of ``layout``'s classes), write
    ``<out>/<name>/t1.nii.gz`` + ``seg.nii.gz``; returns its quality record."""
    from mixdemo import io as mio
    from mixdemo.preprocess import labels_to_model_grid, to_model_space

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = mio.load_scan(as_nifti(scan.image, Path(tmp)), normalize=False)
        labels, affine = mio.load_labels_for(as_nifti(scan.labels, Path(tmp), scan.kind), like=raw)  # its own grid
    labels = classes_of(labels, layout, scan.name)  # labels of the classes, or a ValueError naming others
    prepared = to_model_space(raw, threads=threads)
    on_grid = labels_to_model_grid(labels, prepared, raw, affine=affine)  # one resampling, from the file's grid
    inside = prepared.image > 0
    kept = np.where(inside, on_grid, 0).astype(np.uint8)
    folder = out / scan.name
    folder.mkdir(parents=True, exist_ok=True)
    mio.save_volume(prepared.image, prepared.affine, folder / "t1.nii.gz")
    mio.save_volume(kept, prepared.affine, folder / "seg.nii.gz", dtype=np.uint8)
    labelled = int((on_grid > 0).sum())
    return {"name": scan.name, "labels": scan.kind, "image": scan.image.name, "registered": prepared.registered,
            "similarity": round(float(prepared.similarity), 4), "warning": prepared.warning,
            "labels_kept": round(float((kept > 0).sum() / labelled), 4) if labelled else None,
            "seconds": round(time.perf_counter() - t0, 1)}


BACKGROUND_NAMES = ("background", "bg", "unlabelled", "unlabeled", "none", "other", "void", "0")
"""First names of ``--classes`` taken as the background's without a note."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="folder of scan folders (module docstring)")
    p.add_argument("--out", type=Path, required=True,
                   help="the cohort folder to write (mixdemo layout): a new one, or one this command wrote from SRC")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of subjects held out for testing")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by subject")
    p.add_argument("--threads", type=int, default=None, help="threads of the registration (SimpleITK)")
    p.add_argument("--classes", default=",".join(CLASS_NAMES), metavar="NAMES",
                   help="the classes of the labels, background first, comma-separated: label c is the c-th name "
                        f"(default: {','.join(CLASS_NAMES)}; a FreeSurfer subject's labels become the first four)")
    args = p.parse_args(argv)
    if not args.src.is_dir():
        p.error(f"{args.src} is not a folder")
    if not 0 < args.test_fraction < 1:
        p.error("--test-fraction must lie between 0 and 1")
    try:
        args.layout = mixdemo_layout(cohort_classes([c.strip() for c in args.classes.split(",")], MIXDEMO_LAYOUT,
                                                    "--classes"))
    except CohortError as exc:
        p.error(str(exc))
    first = args.layout.class_names[0]
    if first.lower() not in BACKGROUND_NAMES:
        print(f"note: --classes names label 0 {first!r}: its first name is the background's (unlike mixdemo.score's "
              "--classes, which starts at label 1)", file=sys.stderr)
    return args


def source_stamp(scan: RawScan) -> dict:
    """What a prepared scan records of its source files, to tell when they changed (:func:`mixdemo.io.file_stamp`)."""
    from mixdemo.io import file_stamp

    return {"image": file_stamp(scan.image), "labels": file_stamp(scan.labels)}


def still_valid(done: dict | None, scan: RawScan, out: Path, classes: Sequence[str] = CLASS_NAMES) -> bool:
    """Whether an earlier run's record ``done`` of ``scan`` stands: prepared without error from the same source
    files (:func:`source_stamp`) with the same classes (a record without them: the phantoms'), its output still
    on disk."""
    return (bool(done) and "error" not in done and done.get("source") == source_stamp(scan)
            and done.get("classes", list(CLASS_NAMES)) == list(classes)
            and all((out / scan.name / f).is_file() for f in OUTPUTS))


def prepare_or_skip(scan: RawScan, out: Path, threads: int | None, layout: Layout = MIXDEMO_LAYOUT) -> dict:
    """:func:`prepare_scan`'s record with the source's :func:`source_stamp`, or the scan's error record if it is
    unusable. An earlier output of the scan is removed first: it must not outlive a failure now."""
    from mixdemo.io import ScanError

    for f in OUTPUTS:
        (out / scan.name / f).unlink(missing_ok=True)
    stamp = source_stamp(scan)
    try:
        return {**prepare_scan(scan, out, threads, layout), "source": stamp, "classes": list(layout.class_names)}
    except LabelValueError as exc:  # classes the user may mean: say how to name them
        return {"name": scan.name, "error": f"{exc} If those are classes of yours, name every class with --classes "
                                           "(background first: label c is the c-th name)."}
    except (ScanError, ValueError) as exc:  # this scan is unusable; the others go on
        return {"name": scan.name, "error": str(exc)}


def outcome(record: dict) -> str:
    """A scan's line of progress: why it was skipped, or its registration's quality."""
    if "error" in record:
        return f"skipped: {record['error']}"
    note = f"; warning: {record['warning']}" if record["warning"] else ""
    kept = "" if record.get("registered", True) else "not registered (read as skull-stripped and in MNI space already), "
    return f"{kept}similarity {record['similarity']}, labels kept {record['labels_kept']}{note}"


def write_report(path: Path, command: str, src: Path, records: list[dict]) -> None:
    """``prepare.json``, atomically: the command, the source folder (resolved) and each scan's record."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"command": command, "source": str(src.resolve()), "scans": records}, indent=2) + "\n")
    os.replace(tmp, path)


def warn_thin_split(split: dict[str, list[str]], written: list[str]) -> None:
    """A warning on stderr for each split too small for what reads it (the cohort is written all the same: the
    scans prepared are kept, so a rerun with more subjects in SRC only prepares those)."""
    train, test_scans = split["train"], [n for n in written if subject_of(n) in split["test"]]
    more = "add scans of more subjects to SRC and run again (the scans prepared are kept)"
    if len(train) < 2:
        print(f"warning: the training split holds {len(train)} subject(s) ({', '.join(train) or 'none'}); training "
              "(training.train) needs at least 2 training subjects to mix (a target's reference comes from another "
              f"subject): {more}.", file=sys.stderr)
    if not test_scans:
        print("warning: the test split is empty; evaluation (training.evaluate) needs test scans to score (2 or more "
              f"for its test-retest ICC): {more}.", file=sys.stderr)
    elif len(test_scans) < 2:
        print(f"warning: the test split holds 1 scan ({test_scans[0]}); evaluation (training.evaluate) leaves its "
              f"test-retest ICC out below 2 test scans: {more}.", file=sys.stderr)


def warn_moved_subjects(earlier: dict, split: dict[str, list[str]]) -> None:
    """A warning on stderr when subjects of the earlier run's split (``earlier``: its ``split.json``) changed sides:
    a split drawn anew (another ``--test-fraction`` or ``--seed``; a split.json that records neither keeps its sides)
    can move earlier test subjects into training, and weights trained on the earlier split would then be scored on
    scans they trained on."""
    if moved := moved_subjects(earlier, split):
        print(f"warning: {len(moved)} subject(s) changed sides since the earlier split.json ({first_few(moved)}): "
              "models trained or scores measured on the earlier split do not hold on this one; train and evaluate "
              "again on it.", file=sys.stderr)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    check_apart(args.src, args.out)
    check_out_folder(args.out, args.src)
    scans, ignored = find_scans(args.src)
    print_ignored(ignored, args.src, len(scans) + len(ignored))
    args.out.mkdir(parents=True, exist_ok=True)
    report_file, command = args.out / "prepare.json", command_line("training.prepare_cohort", argv)
    earlier = {r["name"]: r for r in _json_of(report_file).get("scans", [])}
    classes = args.layout.class_names
    kept = [s.name for s in scans if still_valid(earlier.get(s.name), s, args.out, classes)]
    if kept:
        print(f"kept {len(kept)} scan(s) prepared by an earlier run (sources unchanged): {first_few(kept)}", flush=True)
    records = {s.name: earlier[s.name] for s in scans if s.name in earlier}  # each scan's latest record
    write_report(report_file, command, args.src, list(records.values()))  # from now on --out is this command's
    for i, scan in enumerate(scans, start=1):
        if scan.name in kept:
            continue
        done = records.get(scan.name)
        changed = done and "source" in done and "error" not in done
        again = "its source or the classes changed since the earlier run: " if changed else ""
        records[scan.name] = prepare_or_skip(scan, args.out, args.threads, args.layout)
        write_report(report_file, command, args.src, [records[s.name] for s in scans if s.name in records])
        print(f"[{i}/{len(scans)}] {scan.name}: {again}{outcome(records[scan.name])}", flush=True)
    written = [s.name for s in scans if "error" not in records[s.name]]
    failed = [s.name for s in scans if "error" in records[s.name]]
    if not written:
        raise SystemExit(f"No scan of {args.src} could be prepared (prepare.json says why).")
    subjects = sorted({subject_of(name) for name in written})
    earlier_split = _json_of(args.out / "split.json")  # an earlier run's (check_out_folder refused any other)
    split = (split_keeping_earlier_sides(earlier_split, subjects, args.test_fraction, args.seed) if len(subjects) > 1
             else {"train": subjects, "test": []})
    meta = {"dataset": args.out.name, "source": str(args.src), "command": command, "classes": list(classes),
            "test_fraction": args.test_fraction, "seed": args.seed, **split}
    (args.out / "split.json").write_text(json.dumps(meta, indent=2) + "\n")
    flagged = [r["name"] for r in records.values() if r.get("warning")]
    print(f"wrote {len(written)} scans of {len(subjects)} subjects to {args.out}"
          + (f" ({len(kept)} kept from an earlier run)" if kept else "")
          + (f"; skipped {', '.join(failed)}" if failed else "")
          + (f"; ignored {len(ignored)} folder(s) of {args.src} (listed above)" if ignored else "")
          + (f"; check {', '.join(flagged)} (registration warnings in prepare.json)" if flagged else ""))
    warn_thin_split(split, written)
    warn_moved_subjects(earlier_split, split)
    stray = [p.name for p in sorted(args.out.iterdir()) if p.is_dir() and first_file(p, T1_NAMES) and p.name not in written]
    if stray:
        print(f"warning: {args.out} also holds {len(stray)} scan folder(s) whose source is not in {args.src} any more, "
              f"in neither split: {first_few(stray)}", file=sys.stderr)
    return args.out


if __name__ == "__main__":
    with user_errors():
        main()
