"""Segmentation figures of the paper on a cohort's test set (the phantoms by default; any cohort folder of
:mod:`mixdemo.data`, BraTS's included): Table 1 (Dice, ICC) and Fig. 2-3.

    python -m training.evaluate            # full run, writes results/segmentation.json + figures
    python -m training.evaluate --quick    # 2 test volumes, K ≤ 5, a central 32³ cube: a smoke run of about a minute,
                                           # writes results/quick/segmentation.json + figures
    python -m training.evaluate --figures-only   # the figures of results/segmentation.json, from it and one volume

Protocol: test subjects are never references; the reference pool is the
training scans; whole-volume 3D Dice per class (the cohort's: GM, WM, CSF for the phantoms) then the mean
over volumes, one scan a subject (its first by name); α drawn
from ``--alpha-range`` with a fixed seed; Dice against K averaged over ``--draws`` random orders
of the K_max references; ICC(C,1) of the per-scan Dice of two predictions with disjoint references,
with its two variance components (``scan_sd``: between scans; ``reference_sd``: between the two
predictions of a scan) and the per-scan Dice pairs (``retest_dice``) it is computed from. That ICC is the
paper's, of single predictions (K = 1): the reference is the variability it measures. The same for the
deployed output, two Learned + TTA predictions of each scan from disjoint references (``icc_tta``, K =
``icc_tta_k`` each, ``retest_tta_dice``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixdemo.bench import QUICK_CROP
from mixdemo.data import (CohortError, Volume, first_scans, header_problems, load_cohort, load_volumes,
                          trained_modality)
from mixdemo.metrics import dice_per_class, icc_c1, icc_variance_components, ratio_of_means_ci
from mixdemo.mixing import DEFAULT_ALPHA_RANGE, hard_labels, sample_key
from mixdemo.models import pick_device
from mixdemo.phantoms import DEFAULT_COHORT, ensure_default_cohort
from mixdemo.pipeline import Reference, make_proxies, reference_onehots, segment_proxies, unmix_learned, unmix_naive
from mixdemo.weights import (DEFAULT_UNMIXING, WEIGHTS_DIR_ENV, load_model, other_segmentation, read_training_record,
                             resolve_model_dir, s_precision, unmixing_precision)
from training import (DATA_HELP, add_device_option, check_alpha_range_option, check_model_classes, command_line, count,
                      first_few, parse_with_out, user_errors, write_record)

CLASSES = {1: "GM", 2: "WM", 3: "CSF"}
"""The phantoms' scored classes; an evaluation names those of its cohort (``Cohort.foreground_classes``)."""
METHODS = ("baseline", "naive", "naive_tta", "learned", "learned_tta")
DEFAULT_K_MAX = 30
"""The Dice-against-K curve's largest K unless ``--k-max`` says otherwise (or the reference pool is smaller)."""


def add_table_draw_options(p: argparse.ArgumentParser) -> None:
    """The options of a study scored on the segmentation table's draws (``training.mirror_tta``,
    ``training.tta_aggregation``, ``training.raw_scans``): its cohort, volumes, K, D, seed and threads, and
    ``--quick``."""
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help="cohort folder (phantoms are generated if absent)")
    p.add_argument("--volumes", type=count(0), default=0, help="test volumes scored (0: every test subject's first scan, as the table)")
    p.add_argument("--k", type=count(1), default=10, help="K of Learned + TTA (the table's)")
    p.add_argument("--unmixing", default=None, help="D's model folder (default: the evaluation's default D)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=count(0), default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: evaluate --quick's volumes, crop and K")


def table_draw_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The segmentation table's arguments for a study of :func:`add_table_draw_options` (its brain mask, volumes, K,
    seed, and the K = 1…30 draw whose first K mixes make its Learned + TTA)."""
    return parse_args(["--data", str(args.data), "--brain-mask", "--volumes", str(args.volumes),
                       "--tta-k", str(args.k), "--draws", "1", "--no-figures", "--seed", str(args.seed),
                       "--threads", str(args.threads)] + (["--unmixing", args.unmixing] if args.unmixing else [])
                      + (["--quick"] if args.quick else []))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help=DATA_HELP)
    p.add_argument("--modality", default=None,
                   help="BraTS folders: the modality read (default: the one S's training record names, else t1ce)")
    p.add_argument("--volume-cache", type=Path, default=None, metavar="DIR",
                   help="read the reference pool (the training scans) memory-mapped from DIR, written once "
                        "(mixdemo.data.load_volumes): for cohorts larger than the memory")
    p.add_argument("--volumes", type=count(0), default=6,
                   help="test volumes for Dice (first scan of each test subject; 0: every test subject)")
    p.add_argument("--k-max", type=count(1), default=None,
                   help=f"largest K of the Dice-against-K curve (default {DEFAULT_K_MAX}, or the reference pool's size "
                        "where smaller, the +TTA rows' K then at most that)")
    p.add_argument("--tta-k", type=count(1), default=10, help="K of the +TTA rows of the table")
    p.add_argument("--draws", type=count(1), default=5, help="random orders of the references for Dice against K")
    p.add_argument("--alpha-range", type=float, nargs=2, default=DEFAULT_ALPHA_RANGE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=count(0), default=0)
    add_device_option(p)
    p.add_argument("--brain-mask", action="store_true",
                   help="restrict every predicted label map to the target's own brain (x > 0), which the client knows")
    p.add_argument("--segmentation", default="segmentation",
                   help="the S model folder to evaluate (default segmentation; another S goes with the D trained "
                        "with it, e.g. --segmentation segmentation-64 --unmixing unmixing-64)")
    p.add_argument("--unmixing", default=DEFAULT_UNMIXING,
                   help=f"the D model folder to evaluate (default {DEFAULT_UNMIXING}; e.g. unmixing-p2, the cheaper "
                        "D on 2³ patches, or unmixing, the D trained end-to-end on 32³ patches)")
    p.add_argument("--mirror", action="store_true",
                   help="mirror the target left-right in every second mix of each scan's draw, as the client's "
                        "--mirror does (the answers mirrored back); default: the paper's TTA, no mix mirrored")
    p.add_argument("--icc-all", action="store_true",
                   help="test-retest ICC over every test scan (default: the scans of the --volumes subjects); "
                        "two K = 1 predictions per extra scan")
    p.add_argument("--crop", type=count(0), default=0, help="evaluate a central cube of this side (0: whole volume)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: 2 volumes, K ≤ 5, 2 draws, ICC on 4 scans, central {QUICK_CROP}³ cube (--crop overrides it)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--figures-only", action="store_true",
                   help="draw the figures of the JSON at --out, made by this command without --figures-only and "
                        "with the same weights, without re-running its protocol: the Dice-against-K curve from the "
                        "JSON, the panels from its first volume predicted again with the same references and α")
    args = parse_with_out(p, argv, "segmentation.json", " (and read by --figures-only; figures go beside it)")
    if args.figures_only and args.no_figures:
        p.error("--figures-only and --no-figures exclude each other")
    check_alpha_range_option(p, args)
    if args.quick:
        args.volumes, args.k_max, args.tta_k, args.draws = min(args.volumes or 2, 2), min(args.k_max or DEFAULT_K_MAX, 5), min(args.tta_k, 3), 2
        args.crop = args.crop or QUICK_CROP
    if args.tta_k > (args.k_max or DEFAULT_K_MAX):
        given = f"--k-max {args.k_max}" if args.k_max else f"--k-max (not given: {DEFAULT_K_MAX})"
        p.error(f"--tta-k {args.tta_k} must not exceed {given}")
    return args


def central_cube(volume: np.ndarray, side: int) -> np.ndarray:
    """The central cube of ``side`` voxels of an array (a view; ``side=0``: the whole array)."""
    if not side:
        return volume
    return volume[tuple(slice(max(0, n // 2 - side // 2), max(0, n // 2 - side // 2) + side) for n in volume.shape)]


def crop_volume(vol: Volume, side: int) -> Volume:
    """Central cube of ``side`` voxels (multiple of 16) around the grid centre; ``side=0``: unchanged."""
    if not side:
        return vol
    return Volume(vol.name, vol.subject, central_cube(vol.image, side).copy(), central_cube(vol.labels, side).copy(), vol.affine)


def dice_row(pred: np.ndarray, truth: np.ndarray, classes: dict[int, str] = CLASSES) -> dict[str, float]:
    """Dice per named class and their average."""
    d = dice_per_class(pred, truth, list(classes))
    row = {classes[c]: float(v) for c, v in d.items()}
    row["avg"] = float(np.mean(list(row.values())))
    return row


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean over volumes, per key."""
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}


def ratios_to_baseline(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict]:
    """Each private method's average Dice over the baseline's, on the same volumes, with a paired bootstrap
    95 % interval over the volumes (the issue's "× Baseline" target, and how far a few volumes leave it). None
    where the baseline's mean Dice is 0 (a baseline that labels nothing, as after a smoke run's few steps)."""
    base = [r["avg"] for r in rows["baseline"]]
    out = {}
    for m in METHODS:
        if m == "baseline":
            continue
        if not np.mean(base) > 0:
            out[m] = {"ratio": None, "ci95": [None, None]}
            continue
        ratio, lo, hi = ratio_of_means_ci([r["avg"] for r in rows[m]], base)
        out[m] = {"ratio": round(ratio, 4), "ci95": [None if np.isnan(lo) else round(lo, 4), None if np.isnan(hi) else round(hi, 4)]}
    return out


def masked(labels: np.ndarray, brain: np.ndarray | None) -> np.ndarray:
    """Labels outside the target's brain set to background (``brain=None``: unchanged)."""
    return labels if brain is None else np.where(brain, labels, 0)


def prefix_dice_curve(preds: torch.Tensor, truth: np.ndarray, order: np.ndarray, brain: np.ndarray | None = None) -> list[float]:
    """Average Dice (every class but background) of the running mean of ``preds[order[:K]]`` (Eq. 6), for
    K = 1 … len(order)."""
    classes = {c: str(c) for c in range(1, preds.shape[1])}
    running = torch.zeros(preds.shape[1:], dtype=torch.float32)
    curve = []
    for k, idx in enumerate(order, start=1):
        running += preds[idx].float()
        curve.append(dice_row(masked(hard_labels(running).numpy(), brain), truth, classes)["avg"])
    return curve


def unmix_each(volume: Volume, refs: list[Reference], alphas, seg, unmixers: list[torch.nn.Module],
               brain: np.ndarray | None = None, mirror: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], np.ndarray]:
    """K proxies of one target through S once, then naive (Eq. 4) and each D's learned unmixing, as float16.

    With ``brain`` (the target's own brain) D's output is background outside it, as the client's is. With ``mirror``
    every second mix holds the mirrored target (:func:`mixdemo.mixing.alternate_mirroring`) and its answers are
    mirrored back, as the client's are.
    """
    from mixdemo.mixing import MixKey, alternate_mirroring
    from mixdemo.mixing import mirror as mirrored

    key = MixKey(tuple(r.ref_id for r in refs), tuple(alphas), mirrored=alternate_mirroring(len(refs)) if mirror else ())
    proxies = make_proxies(volume.image, refs, key)
    naive, learned = [], [[] for _ in unmixers]
    for k in range(key.k):  # one proxy at a time keeps memory flat
        flip = key.is_mirrored(k)
        back = mirrored if flip else (lambda answer: answer)
        mixed = segment_proxies(seg, proxies[k : k + 1])
        ref_oh = reference_onehots(refs[k : k + 1], num_classes=mixed.shape[1])
        naive.append(back(unmix_naive(mixed, ref_oh, key.alphas[k : k + 1])[0]).half())
        mix_brain = mirrored(brain) if flip and brain is not None else brain  # the mix's target's brain
        for unmix, outputs in zip(unmixers, learned):
            outputs.append(back(unmix_learned(unmix, mixed, ref_oh, key.alphas[k : k + 1], brain_mask=mix_brain)[0]).half())
    return torch.stack(naive), [torch.stack(outputs) for outputs in learned], proxies


def predict_k(volume: Volume, refs: list[Reference], alphas, seg, unmix,
              brain: np.ndarray | None = None, mirror: bool = False) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """:func:`unmix_each` with one D: (naive, learned, proxies)."""
    naive, (learned,), proxies = unmix_each(volume, refs, alphas, seg, [unmix], brain, mirror)
    return naive, learned, proxies


def baseline_labels(base: torch.nn.Module, vol: Volume, brain: np.ndarray | None) -> np.ndarray:
    """The baseline's labels of the unmixed scan (background outside ``brain``, as every other row)."""
    return masked(hard_labels(segment_proxies(base, vol.image[None])[0].float()).numpy(), brain)


def scan_seed(seed: int, scan_name: str) -> int:
    """The seed of one scan's references and α: fixed by the scan's name, so it does not depend on
    which other scans an evaluation includes."""
    return zlib.crc32(f"{seed}:{scan_name}".encode())


def select_scans(test_records: list, volumes: int, icc_all: bool, quick: bool) -> tuple[list, list]:
    """(Dice scans, test-retest scans): the first scan of the first ``volumes`` test subjects (of every one
    with ``volumes`` 0), and the scans of those subjects (every test scan with ``icc_all``; at most 4 in a quick
    run)."""
    firsts = first_scans(test_records)
    dice_records = firsts[:volumes] if volumes > 0 else firsts
    subjects = {d.subject for d in dice_records}
    retest_records = [r for r in test_records if icc_all or r.subject in subjects]
    return dice_records, retest_records[:4] if quick else retest_records


def weights_record(names: list[str]) -> dict[str, str | None]:
    """The sha256 of each named model folder's weights, as its training record gives it."""
    return {n: read_training_record(resolve_model_dir(n)).get("sha256") for n in names}


def weights_dir_record() -> dict[str, str]:
    """``{"weights_dir": ...}``, the ``$MIXDEMO_WEIGHTS_DIR`` the networks were looked up in (resolved), when it is
    set, else nothing. :attr:`weights_sha256 <Setup.weights_sha256>` identifies the networks themselves."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    return {"weights_dir": str(Path(folder).resolve())} if folder else {}


def protocol(args: argparse.Namespace, n_volumes: int, pool: int) -> dict:
    """The settings that fix an evaluation's volumes, references, α and networks (recorded in its JSON)."""
    return {"seed": args.seed, "alpha_range": list(args.alpha_range), "tta_k": args.tta_k, "k_max": args.k_max,
            "draws": args.draws, "n_volumes": n_volumes, "crop": args.crop or None, "brain_mask": args.brain_mask,
            "reference_pool": pool, **({"mirror": True} if getattr(args, "mirror", False) else {}),
            "models": {"segmentation": args.segmentation, "unmixing": args.unmixing, "baseline": "baseline"},
            **precision_record(str(pick_device(args.device)))}


def study_record(module: str, argv: list[str] | None, question: str, rule: str, protocol_: dict, setup: "Setup",
                 t0: float, body: dict) -> dict:
    """A side study's record on an evaluation's protocol (``training.mirror_tta``, ``reference_choice``,
    ``tta_aggregation``): its command, question, rule (set before it ran), protocol, data and date, then ``body``,
    then the weights' SHA-256 and the seconds since ``t0``."""
    return {"command": command_line(module, argv), "question": question, "rule": rule, "protocol": protocol_,
            "data": setup.data, "date": time.strftime("%Y-%m-%d"), **body,
            "weights_sha256": setup.weights_sha256, "seconds": round(time.perf_counter() - t0)}


def precision_record(device: str = "cpu") -> dict[str, str]:
    """S's and the baseline's precision (``$MIXDEMO_PRECISION``) and D's (``$MIXDEMO_UNMIXING_PRECISION``) on
    ``device``, each when not float32 (absent: float32, as before the settings existed); off the CPU, the device
    and its name too (absent: the CPU, as before GPUs were recorded)."""
    record = {"s_precision": s_precision(device), "unmixing_precision": unmixing_precision(device)}
    record = {name: value for name, value in record.items() if value != "float32"}
    if torch.device(device).type == "cuda":
        record.update(device="cuda", hardware=torch.cuda.get_device_name(torch.device(device)))
    return record


@dataclass
class Setup:
    """What every scan of an evaluation uses: its scans, the reference pool and the networks (with the SHA-256 of
    the weights loaded, read when they were loaded: a folder moved during a long run cannot change the record)."""
    dice_records: list
    retest_records: list
    by_id: dict[str, Reference]
    seg: torch.nn.Module
    unmix: torch.nn.Module
    base: torch.nn.Module
    weights_sha256: dict[str, str | None]
    classes: dict[int, str]  # the cohort's scored classes
    data: str  # what the scans are (Cohort.description)


def set_up(args: argparse.Namespace) -> Setup:
    """Load the cohort's test scans, the reference pool (the training scans) and the three networks."""
    if args.threads:
        torch.set_num_threads(args.threads)
    modality = args.modality or trained_modality(read_training_record(resolve_model_dir(args.segmentation)))
    cohort = load_cohort(ensure_default_cohort(args.data), modality)
    if note := cohort.left_out_note():
        print(note, flush=True)
    names = [args.segmentation, args.unmixing, "baseline"]
    check_model_classes(names, cohort)
    dice_records, retest_records = select_scans(cohort.split("test"), args.volumes, args.icc_all, args.quick)
    if not dice_records:
        raise CohortError(f"The test split of {cohort.root} holds no scans: the evaluation scores the test subjects "
                          "(list some under \"test\" in its split.json).")
    if not cohort.split("train"):
        raise CohortError(f"The training split of {cohort.root} holds no scans: the evaluation's references come from "
                          "it (list some under \"train\" in its split.json).")
    scored = list({r.name: r for r in [*dice_records, *retest_records]}.values())
    if problems := header_problems(scored):  # each test scan loads when its turn comes: found now, all at once
        raise CohortError(f"{len(problems)} test scan(s) of {cohort.root} will not load: {first_few(problems)}.")
    train_volumes = [crop_volume(v, args.crop) for v in load_volumes(cohort.split("train"), cache=args.volume_cache)]
    bank = [Reference(v.name, v.image, v.labels) for v in train_volumes]
    if len(retest_records) < 2:
        print(f"note: {len(retest_records)} test scan; the test–retest ICC needs 2 or more, so it is left out",
              file=sys.stderr, flush=True)
    elif len(bank) < 2:
        print("note: the reference pool (the training scans) holds 1 scan; the test–retest ICC needs two predictions "
              "of each test scan from different references, so it is left out", file=sys.stderr, flush=True)
        retest_records = []
    if args.k_max is None:  # the default: a cohort of a few subjects gives fewer references than its K
        args.k_max = min(DEFAULT_K_MAX, len(bank))
        if args.k_max < DEFAULT_K_MAX:
            args.tta_k = min(args.tta_k, args.k_max)
            print(f"note: the reference pool (the training scans) holds {len(bank)} scans: Dice against K up to "
                  f"K = {args.k_max} (not {DEFAULT_K_MAX}), the +TTA rows at K = {args.tta_k}", file=sys.stderr, flush=True)
    if args.k_max > len(bank):
        if not args.quick:
            option = getattr(args, "k_option", "--k-max")  # a study's own name for it (training.reference_choice's --k)
            # without --k-max the evaluation caps K at the pool; a study's own option has a default of its own
            leave_out = " (or leave it out)" if option == "--k-max" else ""
            raise SystemExit(f"{option} {args.k_max} needs {args.k_max} distinct references; the pool has {len(bank)}: "
                             f"give {option} {len(bank)} or less{leave_out}.")
        args.k_max, args.tta_k = len(bank), min(args.tta_k, len(bank))
    record = weights_record(names)
    if warning := pairing_mismatch(args.unmixing, args.segmentation, record[args.segmentation]):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    device = str(pick_device(args.device))
    return Setup(dice_records, retest_records, {r.ref_id: r for r in bank}, *(load_model(n, device=device) for n in names), record,
                 cohort.foreground_classes, cohort.description)


def scan_draw(rec, k: int, args: argparse.Namespace, setup: Setup,
              salt: str = "") -> tuple[Volume, list[Reference], tuple, np.ndarray | None]:
    """One test scan with its own K references and α, fixed by its name (and ``salt``, for a second draw that
    leaves the first as it was): (volume, references, α, brain mask)."""
    vol = crop_volume(load_volumes([rec])[0], args.crop)
    seed = scan_seed(args.seed, f"{rec.name}/{salt}" if salt else rec.name)
    key = sample_key(list(setup.by_id), k, alpha_range=tuple(args.alpha_range), seed=seed)
    brain = vol.image > 0 if args.brain_mask else None
    return vol, [setup.by_id[r] for r in key.reference_ids], key.alphas, brain


def predict_scan(rec, k: int, args: argparse.Namespace, setup: Setup, salt: str = ""):
    """One test scan through :func:`scan_draw` and :func:`predict_k`: (volume, references, brain mask, naive,
    learned, proxies)."""
    vol, refs, alphas, brain = scan_draw(rec, k, args, setup, salt)
    return (vol, refs, brain, *predict_k(vol, refs, alphas, setup.seg, setup.unmix, brain, getattr(args, "mirror", False)))


def retest_tta_k(args: argparse.Namespace, pool: int) -> int:
    """K of each of the two Learned + TTA predictions of the test–retest ICC with TTA: ``--tta-k``, or half the
    reference pool where it holds fewer than 2·K scans (the two predictions' references are disjoint)."""
    return max(1, min(args.tta_k, pool // 2))


def retest_tta_pair(rec, learned: torch.Tensor, args: argparse.Namespace, setup: Setup, score) -> list:
    """``score`` of two Learned + TTA predictions of one scan, K = :func:`retest_tta_k` each, from disjoint references:
    the scan's own draw where it holds 2·K (with K = ``--tta-k``, the first is the table's Learned + TTA), else a second
    draw of 2·K references and α (its seed salted, so the scan's first draw, the table's and the K = 1 pair's, is
    unchanged)."""
    k = retest_tta_k(args, len(setup.by_id))
    if len(learned) < 2 * k:
        learned = predict_scan(rec, 2 * k, args, setup, salt="tta-retest")[4]
    return [score(learned[:k].float().mean(0)), score(learned[k : 2 * k].float().mean(0))]


def pairing_mismatch(d_name: str, s_name: str, s_sha256: str | None) -> str | None:
    """Why the D ``d_name`` does not fit the S ``s_name`` (checksum ``s_sha256``), when its training record names
    another S (:func:`mixdemo.weights.other_segmentation`); None when they pair or a record does not say."""
    paired = other_segmentation(read_training_record(resolve_model_dir(d_name)), s_sha256)
    if paired is None:
        return None
    return (f"the D {d_name!r} was trained with the S {paired[:12]}…, not with {s_name!r} ({s_sha256[:12]}…): its "
            "learned rows measure a D on outputs it never saw; give --unmixing a D trained with this S")


def icc_rows(pairs: dict[str, list], classes: dict[int, str]) -> dict[str, dict]:
    """ICC(C,1) per class (with its 95 % CI and the two variance components) of each scan's pair of per-class Dice;
    empty with fewer than 2 scans, where it is not defined."""
    out = {}
    if len(pairs) < 2:
        return out
    for c, name in classes.items():
        ratings = np.array([[pair[0][c], pair[1][c]] for pair in pairs.values()])
        r = icc_c1(ratings)
        target_sd, reference_sd = icc_variance_components(ratings)
        out[name] = {"icc": round(float(r.icc), 4), "ci95": [round(float(r.ci_low), 4), round(float(r.ci_high), 4)], "n": r.n,
                     "scan_sd": round(target_sd, 4), "reference_sd": round(reference_sd, 4)}
    return out


def rounded_pairs(pairs: dict[str, list], classes: dict[int, str]) -> dict[str, dict[str, list[float]]]:
    """Each scan's pair of per-class Dice as the JSON records it: {scan: {class name: [first, second]}}, 4 decimals."""
    return {scan: {name: [round(float(pair[j][c]), 4) for j in (0, 1)] for c, name in classes.items()}
            for scan, pair in pairs.items()}


def evaluate(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Run the protocol; returns the JSON document (its command from ``argv``, else the process's)."""
    t0 = time.perf_counter()
    setup = set_up(args)
    dice_records, retest_records = setup.dice_records, setup.retest_records
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    dice_names: list[str] = []  # the Dice volumes' scans, in the order of each method's rows
    curves: dict[str, list[list[float]]] = {"naive": [], "learned": []}
    single_dice: dict[str, list[tuple[float, float]]] = {}  # scan → Dice of two single predictions, per class
    tta_dice: dict[str, list] = {}  # scan → Dice of two Learned + TTA predictions, per class
    figure_case = None
    classes = setup.classes
    row = lambda pred, truth: dice_row(pred, truth, classes)  # noqa: E731
    rng = np.random.default_rng(args.seed)
    for rec in sorted({*dice_records, *retest_records}, key=lambda r: r.name):
        in_dice = rec in dice_records
        vol, refs, brain, naive, learned, proxies = predict_scan(rec, args.k_max if in_dice else 2, args, setup)
        lab = lambda probs: masked(hard_labels(probs.float()).numpy(), brain)  # noqa: E731
        if retest_records:  # two predictions with disjoint references (test-retest ICC; none from a pool of 1)
            single_dice[rec.name] = [dice_per_class(lab(learned[j]), vol.labels, list(classes)) for j in (0, 1)]
            tta_dice[rec.name] = retest_tta_pair(rec, learned, args, setup,
                                                 lambda probs: dice_per_class(lab(probs), vol.labels, list(classes)))
        if in_dice:
            base_pred = baseline_labels(setup.base, vol, brain)
            dice_names.append(rec.name)
            rows["baseline"].append(row(base_pred, vol.labels))
            rows["naive"].append(row(lab(naive[0]), vol.labels))
            rows["learned"].append(row(lab(learned[0]), vol.labels))
            rows["naive_tta"].append(row(lab(naive[: args.tta_k].float().mean(0)), vol.labels))
            rows["learned_tta"].append(row(lab(learned[: args.tta_k].float().mean(0)), vol.labels))
            for _ in range(args.draws):
                order = rng.permutation(args.k_max)
                curves["naive"].append(prefix_dice_curve(naive, vol.labels, order, brain))
                curves["learned"].append(prefix_dice_curve(learned, vol.labels, order, brain))
            if figure_case is None:
                figure_case = _figure_case(vol, refs, proxies, naive, learned, base_pred, args.tta_k, lab)
        print(f"[{time.perf_counter() - t0:6.0f} s] {rec.name}: learned "
              f"{dice_per_class(lab(learned[0]), vol.labels, list(classes))}", flush=True)

    icc = icc_rows(single_dice, classes)
    dice_vs_k = {m: [[k + 1, round(float(v), 4)] for k, v in enumerate(np.mean(curves[m], axis=0))] for m in curves}
    doc = {
        "command": command_line("training.evaluate", argv),
        "data": setup.data,
        "date": time.strftime("%Y-%m-%d"),
        "classes": list(classes.values()),
        **protocol(args, len(rows["baseline"]), len(setup.by_id)),
        "n_icc_scans": len(single_dice),
        "dice": {m: mean_rows(rows[m]) for m in METHODS},
        "ratio_to_baseline": ratios_to_baseline(rows),
        "dice_per_volume": {scan: {m: round(rows[m][i]["avg"], 4) for m in METHODS} for i, scan in enumerate(dice_names)},
        "dice_vs_k": dice_vs_k,
        "icc": icc,
        "retest_dice": rounded_pairs(single_dice, classes),
        "icc_tta": icc_rows(tta_dice, classes),
        "icc_tta_k": retest_tta_k(args, len(setup.by_id)),
        "retest_tta_dice": rounded_pairs(tta_dice, classes),
        "weights_sha256": setup.weights_sha256,
        **weights_dir_record(),
        "seconds": round(time.perf_counter() - t0),
    }
    doc = write_record(args.out, doc)  # as written: a NaN figure is null in both
    if not args.no_figures:
        draw_figures(doc, figure_case, args.out)
    return doc


def draw_figures(doc: dict, figure_case: dict | None, out: Path) -> list[Path]:
    """Fig. 3 (Dice against K) from ``doc`` and the Fig. 2-style panels of ``figure_case``, beside ``out``."""
    from mixdemo.figures import data_note, plot_dice_vs_k_png, plot_unmixing_panels_png

    paths = [out.with_name(out.stem + "_dice_vs_k.png")]
    plot_dice_vs_k_png(doc, paths[0])
    if figure_case is not None:
        paths.append(out.with_name(out.stem + "_panels.png"))
        plot_unmixing_panels_png(figure_case, paths[1], data_note(doc))
    return paths


def figures_only(args: argparse.Namespace) -> dict:
    """The figures of the evaluation JSON at ``args.out`` without re-running its protocol: the panels' volume
    (the first Dice volume by name, as :func:`evaluate` draws it) is predicted again with its own references
    and α. Refuses a JSON of other settings or other weights, whose figures these would not be."""
    if not args.out.exists():
        raise SystemExit(f"--figures-only draws the figures of {args.out}, which does not exist: run without it first.")
    doc = json.loads(args.out.read_text())
    setup = set_up(args)
    expected = {**protocol(args, len(setup.dice_records), len(setup.by_id)),
                "weights_sha256": setup.weights_sha256}
    missing = sorted(k for k in expected if k not in doc)
    if missing:
        raise SystemExit(f"{args.out} does not record its {', '.join(missing)} (an older file): its figures cannot be "
                         "drawn without re-running it.")
    differ = sorted(k for k, v in expected.items() if doc[k] != v)
    if differ:
        raise SystemExit(f"{args.out} was made with other {', '.join(differ)} than these arguments and weights: "
                         "its figures cannot be drawn without re-running it.")
    rec = min(setup.dice_records, key=lambda r: r.name)
    say = lambda text: print(f"[figures-only] {text}", flush=True)  # noqa: E731 - minutes pass between the steps
    say(f"predicting one volume again with its K = {args.k_max} references and α, naive and learned "
        f"(S and D on {args.k_max} whole-volume proxies: several minutes on 2 CPU cores) ...")
    t0 = time.perf_counter()
    vol, refs, brain, naive, learned, proxies = predict_scan(rec, args.k_max, args, setup)
    lab = lambda probs: masked(hard_labels(probs.float()).numpy(), brain)  # noqa: E731
    say(f"predicted in {time.perf_counter() - t0:.0f} s; the baseline on it ...")
    base_pred = baseline_labels(setup.base, vol, brain)
    say("drawing the figures ...")
    draw_figures(doc, _figure_case(vol, refs, proxies, naive, learned, base_pred, args.tta_k, lab), args.out)
    say(f"wrote the figures beside {args.out}")
    return doc


def _figure_case(vol: Volume, refs, proxies, naive, learned, base_pred, tta_k: int, lab) -> dict:
    """Axial slices through the brain centre for the Fig. 2-style panel."""
    z = int(np.argwhere(vol.labels > 0)[:, 2].mean())
    take = lambda t: t[..., z]  # noqa: E731
    return {
        "image": take(vol.image), "truth": take(vol.labels), "baseline": take(base_pred),
        "references": [take(r.image) for r in refs[:3]], "proxies": [take(p) for p in proxies[:3]],
        "naive": [take(lab(n)) for n in naive[:3]],
        "learned": [take(lab(n)) for n in learned[:3]],
        "naive_tta": take(lab(naive[:tta_k].float().mean(0))),
        "learned_tta": take(lab(learned[:tta_k].float().mean(0))),
        "tta_k": tta_k,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.figures_only:
        return figures_only(args)
    doc = evaluate(args, argv)
    print(json.dumps({"dice": doc["dice"], "icc": doc["icc"]}, indent=1))
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    with user_errors():
        main()
