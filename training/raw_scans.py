"""What the raw-scan path costs: Dice of the test phantoms brought through ``mixdemo.preprocess`` as a user's scans are.

    python -m training.raw_scans            # → results/raw_scans.json (the table's 6 Dice volumes, K = 10)
    python -m training.raw_scans --quick    # smoke run (the test's) → results/quick/raw_scans.json

The segmentation table scores the networks on the cohort's own files: skull-stripped, on the model grid, in MNI
space. A user's scan comes off a scanner in its own pose, grid and orientation, with skull and neck, and goes
through :func:`mixdemo.preprocess.to_model_space` (affine registration to the template, brain extraction,
normalisation) before the networks see it; the labels go back onto the file's grid. Each test scan of the table
goes through that path in three forms, with the segmentation table's references and α (its draw for the scan):

* ``cohort_file``: the cohort's file itself, as a user would upload it; the path's own check
  (:func:`mixdemo.preprocess.check_model_space`) decides whether to register (it should not: it is in MNI space);
* ``cohort_file_registered``: the same file registered anyway (what registration alone costs);
* ``raw_head``: the scan's brain in a skull and neck, in a random pose (rotations up to 15°, scaling ±10 %,
  shifts up to 15 mm), on an anisotropic, non-RAS grid, saved as an int16 NIfTI
  (:func:`mixdemo.phantoms.make_raw_head`, the preprocessing tests' raw head); its labels travel with it.

For each, the baseline, Learned (the first mix) and Learned + TTA (K mixes, Eq. 6), each as the client keeps it
(class scores, background outside the prepared brain), carried back onto the file's grid as the client carries them
(:func:`mixdemo.preprocess.scores_to_source_grid`) and scored there against the file's own labels. The phantoms' heads are generated, not scanned: their skull, neck and noise are simple, so this measures the
path's geometry and its resampling, not how it fares on a real scanner's images.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from training import evaluate, parse_with_out, user_errors, write_record

FORMS = ("cohort_file", "cohort_file_registered", "raw_head")
ROWS = ("baseline", "learned", "learned_tta")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_table_draw_options(p)
    args = parse_with_out(p, argv, "raw_scans.json")
    if args.quick:
        args.volumes, args.k = 1, min(args.k, 2)
    return args


def raw_head_file(image: np.ndarray, labels: np.ndarray, folder: Path, seed: int) -> tuple[Path, np.ndarray]:
    """The scan's brain in a head of a random pose (drawn from ``seed``), saved as int16 NIfTI: (path, labels on its
    grid)."""
    from mixdemo.phantoms import make_raw_head, random_head_pose

    raw, truth, affine = make_raw_head(image, labels, random_head_pose(np.random.default_rng(seed)), seed=seed)
    path = folder / f"raw-{seed}.nii.gz"
    nib.save(nib.Nifti1Image(raw, affine), str(path))
    return path, truth


def form_rows(scan, truth: np.ndarray, register: bool | None, refs: list, alphas: tuple,  # noqa: ANN001 - a Scan
              setup: evaluate.Setup, threads: int) -> dict:
    """One form of one scan (loaded as the client loads it, not normalised) through the raw-scan path: its Dice rows
    on the file's grid and what the path did."""
    from mixdemo import preprocess as pp
    from mixdemo.data import Volume

    prepared = pp.to_model_space(scan, register=register, threads=threads or None)
    brain = prepared.image > 0  # the client's: the prepared target's brain
    target = Volume("target", "target", prepared.image, np.zeros(prepared.image.shape, np.uint8), prepared.affine)
    _, learned, _ = evaluate.predict_k(target, refs, alphas, setup.seg, setup.unmix, brain)
    scores = {"baseline": evaluate.segment_proxies(setup.base, target.image[None])[0],
              "learned": learned[0], "learned_tta": learned.float().mean(0)}
    rows = {row: evaluate.dice_row(pp.scores_to_source_grid(client_scores(s, brain), prepared, scan), truth,
                                   setup.classes) for row, s in scores.items()}
    return {"dice": rows, "registered": prepared.registered, "similarity": round(float(prepared.similarity), 4),
            "warning": prepared.warning is not None, "registration_seconds": round(prepared.seconds, 1)}


def client_scores(probs: torch.Tensor, brain: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) scores as the client keeps them (``PrivateResult.scores``): background's 1, every other class's 0,
    outside the target's brain (:func:`mixdemo.pipeline.background_where`)."""
    from mixdemo.pipeline import background_where

    out = probs.float().clone()
    background_where(out[None], torch.from_numpy(~brain))
    return out.numpy()


def scan_forms(rec, eval_args: argparse.Namespace, setup: evaluate.Setup, folder: Path, seed: int) -> dict[str, dict]:
    """Every form of one test scan (:data:`FORMS`), each mixed with the first K references and α of the table's draw."""
    from mixdemo.data import CohortError
    from mixdemo.phantoms import GRID_SHAPE

    vol, refs, alphas, _ = evaluate.scan_draw(rec, eval_args.k_max, eval_args, setup)
    if vol.image.shape != GRID_SHAPE:
        raise CohortError(f"{rec.name} is on a {'×'.join(map(str, vol.image.shape))} grid: the raw heads are built "
                          f"from scans on the models' {'×'.join(map(str, GRID_SHAPE))} MNI grid (a phantom cohort's).")
    refs, alphas = refs[: eval_args.tta_k], alphas[: eval_args.tta_k]
    from mixdemo.io import load_scan

    raw_path, raw_truth = raw_head_file(vol.image, vol.labels, folder, seed)
    threads = eval_args.threads
    cohort_file = load_scan(rec.image_path, normalize=False)  # read once for both of its forms
    return {"cohort_file": form_rows(cohort_file, vol.labels, None, refs, alphas, setup, threads),
            "cohort_file_registered": form_rows(cohort_file, vol.labels, True, refs, alphas, setup, threads),
            "raw_head": form_rows(load_scan(raw_path, normalize=False), raw_truth, None, refs, alphas, setup, threads)}


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Every form of every Dice volume; returns the JSON document."""
    eval_args = evaluate.table_draw_arguments(args)
    eval_args.crop = 0  # the raw-scan path works on whole scans
    setup = evaluate.set_up(eval_args)
    t0 = time.perf_counter()
    per_scan: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="raw-scans-") as tmp:
        for i, rec in enumerate(sorted(setup.dice_records, key=lambda r: r.name)):
            per_scan[rec.name] = forms = scan_forms(rec, eval_args, setup, Path(tmp), args.seed * 1000 + i)
            print(f"[{time.perf_counter() - t0:5.0f} s] {rec.name}: " + "; ".join(
                f"{form} (registered {forms[form]['registered']}) " + ", ".join(
                    f"{row} {forms[form]['dice'][row]['avg']:.4f}" for row in ROWS) for form in FORMS), flush=True)
    dice = {form: {row: evaluate.mean_rows([scan[form]["dice"][row] for scan in per_scan.values()]) for row in ROWS}
            for form in FORMS}
    path = {form: {"registered": sum(scan[form]["registered"] for scan in per_scan.values()),
                   "warnings": sum(scan[form]["warning"] for scan in per_scan.values()),
                   "similarity_mean": round(float(np.mean([scan[form]["similarity"] for scan in per_scan.values()])), 4),
                   "registration_seconds_mean": round(float(np.mean(
                       [scan[form]["registration_seconds"] for scan in per_scan.values()])), 1)}
            for form in FORMS}
    return evaluate.study_record(
        "training.raw_scans", argv,
        "What does the raw-scan path (registration, brain extraction, labels carried back to the file's grid) cost "
        "in Dice, on the test phantoms as the cohort holds them and in a head in a random pose?",
        "none: a measurement (no default rests on it)",
        evaluate.protocol(eval_args, len(per_scan), len(setup.by_id)), setup, t0,
        {"classes": list(setup.classes.values()), "forms": list(FORMS),
         "carried_back": "each class's score interpolated linearly onto the file's grid, then the arg-max "
                         "(mixdemo.preprocess.scores_to_source_grid, as the client and the app do)",
         "dice": dice, "path": path,
         "dice_per_volume": {scan: {form: {row: round(f[form]["dice"][row]["avg"], 4) for row in ROWS} for form in FORMS}
                             for scan, f in per_scan.items()},
         "similarity_per_volume": {scan: {form: f[form]["similarity"] for form in FORMS} for scan, f in per_scan.items()}})


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    doc = write_record(args.out, run(args, argv))
    print(json.dumps({form: {row: v["avg"] for row, v in rows.items()} for form, rows in doc["dice"].items()}, indent=1))
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    with user_errors():
        main()
