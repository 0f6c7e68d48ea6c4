"""Raw labelled T1 scans → a cohort folder the models train on (MNI 144×192×160 grid, 1 mm, skull-stripped).

    python -m training.prepare_cohort /data/ppmi_freesurfer --out data/ppmi
    python -m training.train --data data/ppmi

Each folder of ``SRC`` is one scan, named ``<subject>_<scan>`` (the subject is the text up to the last
underscore, so a subject's visits stay on one side of the split), holding either

- ``t1.nii.gz`` (or ``.nii``) and ``seg.nii.gz`` with tissue labels 0 background, 1 GM, 2 WM, 3 CSF on the
  T1's grid, in any space, skull included or not; or
- a FreeSurfer subject: ``mri/orig.mgz`` (else ``mri/T1.mgz``, else ``mri/brain.mgz``) and ``mri/aseg.mgz``,
  whose labels become the tissue classes as the paper's PPMI pseudo ground truth did
  (:data:`mixdemo.data.FREESURFER_TISSUE`).

Each T1 goes through :func:`mixdemo.preprocess.to_model_space` (affine registration to the MNI152 template,
brain extraction, intensity normalisation: what the client does to a raw scan at inference), and its labels
through the same transform (nearest neighbour), kept inside the extracted brain. The output is the mixdemo
layout (:mod:`mixdemo.data`) with a ``split.json`` (by subject) and ``prepare.json``: per scan, the
registration's similarity to the template, its warning if any, and the share of labelled voxels kept inside
the extracted brain, to check before training. A scan that cannot be used (an unreadable file, labels
outside 0-3, a failed registration) is skipped with its reason in ``prepare.json``; scans already written
by an earlier run into ``--out`` are kept, so an interrupted run goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixdemo.data import MIXDEMO_LAYOUT, classes_of, freesurfer_tissue, subject_of
from mixdemo.phantoms import CLASS_NAMES, split_subjects
from training import command_line, user_errors

FREESURFER_IMAGES = ("orig.mgz", "T1.mgz", "brain.mgz")
"""The FreeSurfer image used, first present first: the conformed raw T1 (skull included) is what a client's
raw scan looks like."""


@dataclass(frozen=True)
class RawScan:
    """One scan of the source folder: its name, T1 and labels, and what the labels are."""

    name: str
    image: Path
    labels: Path
    kind: str  # "tissue" (0-3) or "freesurfer" (aseg)


def find_scans(src: Path) -> list[RawScan]:
    """The scans of ``src`` in either form (module docstring); SystemExit naming both if there is none."""
    scans = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        t1 = _first(folder, ("t1.nii.gz", "t1.nii"))
        seg = _first(folder, ("seg.nii.gz", "seg.nii"))
        fs_image = _first(folder / "mri", FREESURFER_IMAGES)
        aseg = _first(folder / "mri", ("aseg.mgz",))
        if t1 and seg:
            scans.append(RawScan(folder.name, t1, seg, "tissue"))
        elif fs_image and aseg:
            scans.append(RawScan(folder.name, fs_image, aseg, "freesurfer"))
    if not scans:
        raise SystemExit(f"{src} holds no <name>/t1.nii.gz + seg.nii.gz folders nor FreeSurfer subjects "
                         "(<name>/mri/orig.mgz + mri/aseg.mgz).")
    return scans


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def as_nifti(path: Path, tmp: Path, labels: str | None = None) -> Path:
    """``path`` itself if it is NIfTI; a FreeSurfer ``.mgz`` written as NIfTI in ``tmp`` (with ``labels="freesurfer"``,
    its aseg labels as tissue classes first)."""
    if path.suffix != ".mgz":
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


def prepare_scan(scan: RawScan, out: Path, threads: int | None = None) -> dict:
    """Register one scan to the model grid, carry its labels, write ``<out>/<name>/t1.nii.gz`` + ``seg.nii.gz``;
    returns its quality record."""
    from mixdemo import io as mio
    from mixdemo.preprocess import labels_to_model_grid, to_model_space

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = mio.load_scan(as_nifti(scan.image, Path(tmp)), normalize=False)
        labels = mio.load_labels(as_nifti(scan.labels, Path(tmp), scan.kind), like=raw)
    labels = classes_of(labels, MIXDEMO_LAYOUT, scan.name)  # tissue labels 0-3, or a ValueError naming others
    prepared = to_model_space(raw, threads=threads)
    on_grid = labels_to_model_grid(labels, prepared, raw)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="folder of scan folders (module docstring)")
    p.add_argument("--out", type=Path, required=True, help="the cohort folder to write (mixdemo layout)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of subjects held out for testing")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by subject")
    p.add_argument("--threads", type=int, default=None, help="threads of the registration (SimpleITK)")
    args = p.parse_args(argv)
    if not args.src.is_dir():
        p.error(f"{args.src} is not a folder")
    if not 0 < args.test_fraction < 1:
        p.error("--test-fraction must lie between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from mixdemo.io import ScanError

    scans = find_scans(args.src)
    args.out.mkdir(parents=True, exist_ok=True)
    report_file = args.out / "prepare.json"
    earlier = {r["name"]: r for r in json.loads(report_file.read_text())["scans"]} if report_file.exists() else {}
    records, failed = [], []
    for i, scan in enumerate(scans, start=1):
        done = earlier.get(scan.name)
        if done and "error" not in done and all((args.out / scan.name / f).is_file() for f in ("t1.nii.gz", "seg.nii.gz")):
            records.append(done)  # prepared by an earlier run of this command: kept
            continue
        try:
            records.append(prepare_scan(scan, args.out, args.threads))
        except (ScanError, ValueError) as exc:  # this scan is unusable; the others go on
            records.append({"name": scan.name, "error": str(exc)})
            failed.append(scan.name)
            print(f"[{i}/{len(scans)}] {scan.name}: skipped: {exc}", flush=True)
            continue
        note = f"; warning: {records[-1]['warning']}" if records[-1]["warning"] else ""
        print(f"[{i}/{len(scans)}] {scan.name}: similarity {records[-1]['similarity']}, labels kept "
              f"{records[-1]['labels_kept']}{note}", flush=True)
    command = command_line("training.prepare_cohort", argv)
    report_file.write_text(json.dumps({"command": command, "scans": records}, indent=2) + "\n")
    written = [r["name"] for r in records if "error" not in r]
    if not written:
        raise SystemExit(f"No scan of {args.src} could be prepared (prepare.json says why).")
    subjects = sorted({subject_of(name) for name in written})
    split = split_subjects(subjects, args.test_fraction, args.seed) if len(subjects) > 1 else {"train": subjects, "test": []}
    meta = {"dataset": args.out.name, "source": str(args.src), "command": command, "classes": list(CLASS_NAMES), **split}
    (args.out / "split.json").write_text(json.dumps(meta, indent=2) + "\n")
    flagged = [r["name"] for r in records if r.get("warning")]
    print(f"wrote {len(written)} scans of {len(subjects)} subjects to {args.out}"
          + (f"; skipped {', '.join(failed)}" if failed else "")
          + (f"; check {', '.join(flagged)} (registration warnings in prepare.json)" if flagged else ""))
    return args.out


if __name__ == "__main__":
    with user_errors():
        main()
