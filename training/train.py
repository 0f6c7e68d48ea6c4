"""Train the server's S and the client's D end to end (Kim et al., Sec. 3.3), or the baseline.

Single process::

    python -m training.train --mode private --steps 3000 --out weights

Several processes or GPUs (PyTorch DDP; gloo on CPU, nccl on GPU)::

    torchrun --nproc_per_node=4 -m training.train --mode private --steps 3000 --features paper

Loss: cross-entropy + Dice for S against the mixed one-hot labels (Eq. 3) and for D against
the target's labels, as in the paper, which trains S and D end to end; summing the two is this project's choice
(the paper does not say how they are combined); ``--consistency W`` adds W × the distance between D's
predictions of one target mixed with two disjoint sets of references (not in the paper). Checkpoints every ``--ckpt-every`` steps
(and at each validation) and resumes from the last one; losses go to ``<run>/train.log`` (tab-separated; a resume drops
the rows past its checkpoint, whose steps it trains again). ``--val-subjects N`` holds
the last N training subjects out and exports the step with the best whole-volume Dice on their scans
(``training.validate``; ``<run>/validation.log``); with ``--init-from`` the starting weights are validated
as step 0, so a run that never beats them exports them unchanged.

``--precision bfloat16`` trains in mixed precision (the forward under autocast; convolutions on grids smaller
than their kernel stay float32, see :func:`tiny_grid_convolutions_in_float32`) and ``--channels-last`` keeps the
networks in channels-last 3D; both are off by default (``python -m training.throughput`` measures them).

``--mode unmixing`` trains a new D alone on the outputs of a trained S that stays frozen
(``--init-from weights``), e.g. the cheaper D on 2³ patches::

    python -m training.train --mode unmixing --init-from weights --unmix-patch 2 --name unmixing-p2

or trains a saved D on against its frozen S (``--init-unmixing NAME``: the D in ``<init-from>/NAME``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.losses import DiceCELoss
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mixdemo.classes import CLASS_NAMES
from mixdemo.data import (PATCH_CENTRES, Cohort, CohortError, MixedPatchSampler, header_problems, load_cohort,
                          load_volumes)
from mixdemo.launch import widths
from mixdemo.mixing import DEFAULT_ALPHA_RANGE, TRAIN_ALPHA_RANGE
from mixdemo.models import (PAPER_FEATURES, SMALL_FEATURES, SegmentationNet, UnmixingNet, pick_device,
                            widen_references)
from mixdemo.phantoms import DEFAULT_COHORT, ensure_default_cohort
from mixdemo.weights import native_bfloat16
from training import (DATA_HELP, add_device_option, check_alpha_range_option, command_line, count, first_few,
                      user_errors)
from training.validate import hold_out, make_validation, validation_dice



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["private", "baseline", "unmixing"], default="private",
                   help="private: S on proxies + D end to end; baseline: S on raw images; "
                        "unmixing: D alone (new, or --init-unmixing) on the outputs of the frozen S of --init-from")
    p.add_argument("--data", type=Path, default=None, help=DATA_HELP)
    p.add_argument("--modality", default=None,
                   help="BraTS folders: the modality read (t1ce by default, the paper's; t1, t2, flair, ...)")
    p.add_argument("--volume-cache", type=Path, default=None, metavar="DIR",
                   help="write each training scan once to DIR as .npy and read it memory-mapped: for cohorts larger "
                        "than the memory (BraTS); default: every scan in memory")
    p.add_argument("--steps", type=count(1), default=3000)
    p.add_argument("--batch-size", type=count(1), default=4)
    p.add_argument("--patch-size", type=count(1), default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--features", type=widths(6, ("small", "paper")), default=None,
                   help="S's widths: 'small', 'paper' or 6 comma-separated widths (default: small; with --init-from, "
                        "its S's)")
    p.add_argument("--unmix-features", type=widths(2), default=None,
                   help="D's two widths (default: 16,32; when a warm start goes on from a D, that D's)")
    p.add_argument("--unmix-patch", type=count(1), default=None,
                   help="D's patch: 1 full resolution; p > 1 its blocks on p³ patches (mixdemo.models.UnmixingNet) "
                        "(default: 1; when a warm start goes on from a D, that D's)")
    p.add_argument("--unmix-hidden", type=count(0), default=None,
                   help="with --unmix-patch > 1: 0 an α-gated linear per-voxel skip; H a per-voxel MLP with H channels "
                        "(default: 0; when a warm start goes on from a D, that D's)")
    p.add_argument("--alpha-range", type=float, nargs=2, default=TRAIN_ALPHA_RANGE)
    p.add_argument("--n-references", type=count(1), default=1, help="references per mix (2: three sources)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the model folders in this directory (e.g. weights): its segmentation (or "
                        "baseline) S, and for --n-references 2 its one-reference D widened by "
                        "mixdemo.models.widen_references")
    p.add_argument("--init-unmixing", default=None, metavar="NAME",
                   help="start D from the model folder NAME under --init-from (e.g. unmixing-96) instead of a "
                        "new D (--mode unmixing: trained on against the frozen S) or its 'unmixing' (--mode private)")
    p.add_argument("--augment", action="store_true",
                   help="augment targets for real scans (residual misregistration, contrast); off for the shipped weights")
    p.add_argument("--patch-centres", choices=PATCH_CENTRES, default=None,
                   help="where training patches centre: 'labels' (a labelled voxel; the PPMI-like layout's "
                        "default), 'brain_and_labels' (half on the brain, half on labels; BraTS's default) or "
                        "'classes' (class-balanced: a labelled class drawn uniformly, then one of its voxels; for "
                        "small classes such as lesions)")
    p.add_argument("--consistency", type=float, default=0.0, metavar="WEIGHT",
                   help="with a D (private, unmixing): mix each target patch twice, with the same α and references "
                        "of disjoint subjects, and add WEIGHT × the squared distance between D's two class-probability "
                        "vectors, averaged over voxels (0 to 2), to the loss (S's too in --mode private), so that D's "
                        "output depends on the target more than on the reference: it aims at the spread between "
                        "references that the test-retest ICC measures. S and D then run on 2 × --batch-size mixes a "
                        "step (about twice the time and memory). 0 (default): off")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--out", type=Path, default=Path("weights"), help="where model folders are written")
    p.add_argument("--name", default=None, help="model folder name (default by mode)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="checkpoints and log (default runs/<name>); a run resumes from its checkpoint there only with "
                        "the same settings (RUN_SETTINGS: data, widths, seed, ...): give another folder for a new run")
    p.add_argument("--ckpt-every", type=count(1), default=100)
    p.add_argument("--val-subjects", type=count(0), default=0,
                   help="hold the last N training subjects out as a validation set: their whole-volume Dice, every "
                        "--val-every steps, picks the step whose weights are exported (training.validate); with "
                        "--init-from, step 0 (the starting weights) is one of the candidates")
    p.add_argument("--val-every", type=count(0), default=0,
                   help="steps between validations (default: --ckpt-every); each also writes a checkpoint, so that a "
                        "resume knows every step whose weights <run>/best.pt may hold")
    p.add_argument("--legs", type=parse_legs, default=None,
                   help="replay a run that was resumed with changed --steps: comma-separated TOTAL:START legs "
                        "(the learning rate follows the cosine of TOTAL from step START on, and the data stream "
                        "is reseeded at each START as a resume does); the shipped weights' training.json names theirs")
    p.add_argument("--threads", type=count(0), default=0, help="torch CPU threads (0: leave torch's default)")
    add_device_option(p)
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16: mixed precision, the forward pass under torch.autocast in bfloat16 (weights, "
                        "optimiser and losses stay float32; no loss scaling needed), for GPUs and CPUs with "
                        "bfloat16 instructions; float32 (the default) is what trained the shipped weights")
    p.add_argument("--channels-last", action="store_true",
                   help="networks and inputs in channels-last 3D (faster convolutions on CPUs, and on GPUs in "
                        "bfloat16); off by default, so the shipped weights' commands reproduce them exactly")
    args = p.parse_args(argv)
    check_alpha_range_option(p, args)
    args.data_given = args.data is not None
    args.data = DEFAULT_COHORT if args.data is None else args.data
    if args.init_from is None or start_folders(args.mode, args.init_unmixing)[1] is None:
        fill_unmixing_defaults(args)  # no D to go on from: D's design is settled here (start_unmixing_design otherwise)
    return args


def resolve_widths(spec: str) -> tuple[int, ...]:
    """'16,32' → (16, 32)."""
    return tuple(int(v) for v in spec.split(","))


def resolve_features(spec: str | None) -> tuple[int, ...]:
    """'small' (or None, the default) | 'paper' | '16,16,32,64,128,16' → widths."""
    named = {"small": SMALL_FEATURES, "paper": PAPER_FEATURES, None: SMALL_FEATURES}
    if spec in named:
        return named[spec]
    return resolve_widths(spec)


def init_distributed(device_pref: str | None) -> tuple[int, int, torch.device]:
    """Start DDP when launched by torchrun (WORLD_SIZE set); returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_pref)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        return dist.get_rank(), world, device
    return 0, 1, device


def parse_legs(text: str) -> list[tuple[int, int]]:
    """``"1800:0,1000:400"`` → [(1800, 0), (1000, 400)]: (cosine length, first step) of each leg."""
    try:
        legs = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"legs must look like 1800:0,1000:400; got {text!r}") from None
    starts = [leg[-1] for leg in legs]
    if any(len(leg) != 2 for leg in legs) or starts[0] != 0 or starts != sorted(set(starts)):
        raise argparse.ArgumentTypeError(f"legs need TOTAL:START pairs with starts rising from 0; got {text!r}")
    return legs  # type: ignore[return-value]


def schedule_total(step: int, steps: int, legs: list[tuple[int, int]] | None) -> int:
    """Length of the cosine that step ``step`` follows: ``steps``, or that of the leg it falls in."""
    if not legs:
        return steps
    return [total for total, start in legs if start <= step][-1]


def cosine_factor(step: int, total: int, floor: float = 0.05) -> float:
    """Cosine decay of the learning rate from 1 to ``floor`` over ``total`` steps (closed form, resumable)."""
    t = min(step, total) / max(total, 1)
    return floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * t))


def start_folders(mode: str, init_unmixing: str | None) -> tuple[str, str | None]:
    """(S's model folder, D's or None) under ``--init-from`` that a run of ``mode`` starts from: the baseline's or
    the segmentation's S; the D named by ``--init-unmixing``, else the end-to-end ``unmixing`` in private mode."""
    s_name = "baseline" if mode == "baseline" else "segmentation"
    return s_name, init_unmixing or ("unmixing" if mode == "private" else None)


def check_start_folders(folder: Path, mode: str, init_unmixing: str | None) -> None:
    """SystemExit naming the first model folder under ``folder`` that a warm start needs and lacks (its
    ``config.json`` too: :func:`start_features` reads the S's before the cohort loads)."""
    for name in filter(None, start_folders(mode, init_unmixing)):
        if not all((folder / name / file).is_file() for file in ("config.json", "model.safetensors")):
            raise SystemExit(f"--init-from: no saved model {name!r} in {folder} (a model folder with config.json and "
                             "model.safetensors, as training writes under --out).")


def start_features(folder: Path, mode: str, features: str | None) -> str:
    """``--features`` of a warm start from ``folder``: its S's widths when none are given (the only ones that fit);
    SystemExit, before the cohort loads, when the widths given are others."""
    s_name, _ = start_folders(mode, None)
    config = json.loads((folder / s_name / "config.json").read_text())
    shipped = ",".join(str(w) for w in config.get("features", SMALL_FEATURES))
    asked = ",".join(str(w) for w in resolve_features(features))
    if features is not None and asked != shipped:
        raise SystemExit(f"--init-from: the S in {folder / s_name} has features {shipped}, not {asked} (--features "
                         f"{features}): give --features {shipped}, or leave it out (a warm start takes its S's).")
    return shipped


UNMIXING_DESIGN_DEFAULTS = {"unmix_features": "16,32", "unmix_patch": 1, "unmix_hidden": 0}
"""D's design without ``--unmix-features``/``--unmix-patch``/``--unmix-hidden`` and without a D to go on from."""


def fill_unmixing_defaults(args: argparse.Namespace) -> None:
    """Each ``--unmix-*`` option not given takes :data:`UNMIXING_DESIGN_DEFAULTS` (a run with no D to go on from)."""
    for option, default in UNMIXING_DESIGN_DEFAULTS.items():
        if getattr(args, option) is None:
            setattr(args, option, default)


def start_unmixing_design(folder: Path, mode: str, init_unmixing: str | None, args: argparse.Namespace) -> None:
    """Settle D's design on ``args`` before the cohort loads when a warm start goes on from a D (private mode's
    ``unmixing``, or ``--init-unmixing``'s): that D's design for every ``--unmix-*`` flag not given, and SystemExit
    when one given differs (the run trains that D, so the record would name the flags' design, not the one trained).
    Without such a D, :func:`parse_args` has settled it already (:func:`fill_unmixing_defaults`)."""
    d_name = start_folders(mode, init_unmixing)[1]
    if d_name is None:
        return
    config = json.loads((folder / d_name / "config.json").read_text())
    saved = {"unmix_features": ",".join(str(w) for w in config.get("features", (16, 32))),
             "unmix_patch": config.get("patch", 1), "unmix_hidden": config.get("voxel_hidden", 0)}
    given = {option: getattr(args, option) for option in saved if getattr(args, option) is not None}
    if "unmix_features" in given:
        given["unmix_features"] = ",".join(str(w) for w in resolve_widths(given["unmix_features"]))
    flag = lambda option, value: f"--{option.replace('_', '-')} {value}"  # noqa: E731
    differing = [option for option, value in given.items() if value != saved[option]]
    if differing:
        raise SystemExit(f"--init-from: the D in {folder / d_name} is " + " ".join(flag(o, v) for o, v in saved.items())
                         + ", not " + " ".join(flag(o, given[o]) for o in differing) + ": give "
                         + " ".join(flag(o, saved[o]) for o in differing)
                         + ", or leave them out (a warm start goes on from that D, and takes its design).")
    for option, value in saved.items():
        setattr(args, option, value)


def check_start_data(folder: Path, mode: str, data_given: bool) -> None:
    """SystemExit when a warm start's S was trained on a cohort other than the phantoms and ``--data`` is not given:
    the run would otherwise build and train on the phantom cohort (the default) without a word."""
    from mixdemo.weights import read_training_record

    s_name, _ = start_folders(mode, None)
    trained_on = read_training_record(folder / s_name).get("data")
    if data_given or not trained_on or trained_on == str(DEFAULT_COHORT):
        return
    if Path(trained_on).resolve() == Path(DEFAULT_COHORT).resolve():
        return
    raise SystemExit(f"--init-from: the S in {folder / s_name} was trained on {trained_on}, and without --data this run "
                     f"would train on the phantom cohort ({DEFAULT_COHORT}): give --data {trained_on} (or the cohort "
                     "you mean).")


def check_start_classes(folder: Path, mode: str, cohort: Cohort) -> None:
    """SystemExit when the S a warm start begins from was trained on other classes than the cohort's (a BraTS S
    and a tissue cohort); a record that names none is the phantoms' (:func:`mixdemo.server.model_info` reads it so)."""
    from mixdemo.weights import read_training_record, recorded_classes

    s_name, _ = start_folders(mode, None)
    trained = recorded_classes(read_training_record(folder / s_name)) or list(CLASS_NAMES)
    if trained != list(cohort.class_names):
        raise SystemExit(f"--init-from: the S in {folder / s_name} was trained on the classes {trained}, but the cohort "
                         f"{cohort.root} has {list(cohort.class_names)}: start from an S trained on such data, or "
                         "without --init-from.")


def warm_start(folder: Path, mode: str, n_references: int, features: tuple[int, ...],
               init_unmixing: str | None = None):
    """(S, D) loaded from the Hub-format model folders under ``folder`` (D widened to ``n_references``;
    S alone in ``unmixing`` mode, or when ``init_unmixing`` names the D to start from: see warm_unmixing)."""
    s_name, d_name = start_folders(mode, init_unmixing)
    seg = SegmentationNet.from_pretrained(folder / s_name)
    shipped = tuple(seg._hub_mixin_config["features"])
    if shipped != tuple(features):
        raise SystemExit(f"--init-from: S in {folder} has features {shipped}, not {tuple(features)}.")
    if d_name is None or init_unmixing:  # a named D is loaded and checked by warm_unmixing
        return seg, None
    unmix = UnmixingNet.from_pretrained(folder / d_name)
    if unmix.n_references != n_references:
        unmix = widen_references(unmix, n_references)
    return seg, unmix


def warm_unmixing(folder: Path, fresh: UnmixingNet) -> UnmixingNet:
    """The D saved in ``folder`` (there: :func:`check_start_folders`), checked to have the shape asked for
    (``fresh``: a new D of that shape)."""
    unmix = UnmixingNet.from_pretrained(folder)
    if json.loads(json.dumps(unmix._hub_mixin_config)) != json.loads(json.dumps(fresh._hub_mixin_config)):
        raise SystemExit(f"--init-unmixing: the D in {folder} is {unmix._hub_mixin_config}, not the "
                         f"{fresh._hub_mixin_config} asked for by --unmix-features/--unmix-patch/--unmix-hidden/--n-references.")
    return unmix


def init_shas(folder: Path, mode: str, init_unmixing: str | None = None) -> dict:
    """SHA-256 of the weights a warm start began from (so that the record names them exactly)."""
    from mixdemo.weights import sha256_file

    names = {"private": ["segmentation", "unmixing"], "unmixing": ["segmentation"]}.get(mode, ["baseline"])
    if init_unmixing:  # the D named instead of (private) or beside (unmixing) the folder 'unmixing'
        names = [n for n in names if n != "unmixing"] + [init_unmixing]
    return {n: sha256_file(folder / n / "model.safetensors") for n in names if (folder / n / "model.safetensors").exists()}


class EndToEnd(torch.nn.Module):
    """S followed by D, so that one DDP wrapper synchronises both."""

    def __init__(self, seg: SegmentationNet, unmix: UnmixingNet | None, freeze_seg: bool = False) -> None:
        super().__init__()
        self.seg = seg
        self.unmix = unmix
        self.freeze_seg = freeze_seg
        if freeze_seg:
            seg.requires_grad_(False)

    def train(self, mode: bool = True) -> EndToEnd:  # a frozen S stays in eval mode (its batch-norm statistics)
        super().train(mode)
        if self.freeze_seg:
            self.seg.eval()
        return self

    def forward(self, x_mix, y_ref, weights):  # noqa: D102
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_seg):
            logits_mix = self.seg(x_mix)
        if self.unmix is None:
            return logits_mix, None
        return logits_mix, self.unmix(torch.softmax(logits_mix.float(), dim=1), y_ref, weights)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = init_distributed(args.device)
    torch.manual_seed(args.seed)
    if args.mode == "unmixing" and args.init_from is None:
        raise SystemExit("--mode unmixing trains D on a trained S: give --init-from (e.g. weights).")
    if args.init_unmixing and args.init_from is None:
        raise SystemExit("--init-unmixing names a model folder under --init-from: give --init-from (e.g. weights).")
    if args.init_unmixing and args.mode == "baseline":
        raise SystemExit("--init-unmixing starts a D; --mode baseline trains no D.")
    if not math.isfinite(args.consistency) or args.consistency < 0:
        raise SystemExit(f"--consistency is a loss weight, a finite number 0 or more (got {args.consistency}).")
    if args.consistency and args.mode == "baseline":
        raise SystemExit("--consistency pulls D's predictions of two mixes together; --mode baseline trains no D.")
    if args.val_subjects and args.n_references != 1 and args.mode != "baseline":
        raise SystemExit("--val-subjects validates mixes with one reference; it does not support --n-references 2 yet.")
    deepest = (args.patch_size // 2 ** SegmentationNet.POOLINGS) ** 3  # voxels a patch keeps at U-Net++'s last level
    views = 2 if args.consistency else 1  # --consistency: each target patch mixed twice (MixedPatchSampler views)
    if deepest == 0:  # no batch size helps: the deepest level has no voxel left
        smallest = 2 ** SegmentationNet.POOLINGS
        raise SystemExit(f"--patch-size {args.patch_size} is smaller than {smallest}: U-Net++ halves a patch "
                         f"{SegmentationNet.POOLINGS} times, which leaves it no voxel; give --patch-size {smallest} or "
                         f"more ({2 * smallest} or more with --batch-size 1).")
    if args.batch_size * views * deepest < 2:
        raise SystemExit(f"--patch-size {args.patch_size} leaves {deepest} voxel(s) at U-Net++'s deepest level, and batch "
                         f"normalisation needs 2 or more values per batch there: give --batch-size 2 or more, or "
                         f"--patch-size {2 ** (SegmentationNet.POOLINGS + 1)} or more.")
    if args.init_from is not None:  # before the cohort loads: a wrong folder costs no time
        check_start_folders(args.init_from, args.mode, args.init_unmixing)
        args.features = start_features(args.init_from, args.mode, args.features)
        check_start_data(args.init_from, args.mode, args.data_given)
        start_unmixing_design(args.init_from, args.mode, args.init_unmixing, args)
    multiple = 2 * args.unmix_patch  # UnmixingNet.size_multiple: D's patches, then one pooling
    if args.mode != "baseline" and args.patch_size % multiple:
        raise SystemExit(f"--patch-size {args.patch_size} is not a multiple of {multiple}, which D's input sides must be "
                         f"(--unmix-patch {args.unmix_patch}: its {args.unmix_patch}³ patches, then a pooling): give "
                         f"--patch-size {args.patch_size // multiple * multiple or multiple} or "
                         f"{(args.patch_size // multiple + 1) * multiple}.")
    name = args.name or {"private": "segmentation"}.get(args.mode, args.mode)
    run_dir = args.run_dir or Path("runs") / name
    if rank == 0:
        ensure_default_cohort(args.data)
    if world > 1:
        dist.barrier()

    cohort = load_cohort(args.data, args.modality)
    if rank == 0 and (note := cohort.left_out_note()):
        print(note, flush=True)
    check_training_split(cohort, mixed=args.mode != "baseline", n_references=args.n_references, views=views)
    if args.init_from is not None:
        check_start_classes(args.init_from, args.mode, cohort)
    if rank == 0:
        warn_unloadable_test_scans(cohort)
    ckpt_path = run_dir / "checkpoint.pt"
    default = cohort.modality if args.modality is None else default_modality(args.data)  # read without --modality
    patch_centres = args.patch_centres or cohort.layout.patch_centres
    settings = run_settings(args, recorded_modality(args.modality, default),
                            None if patch_centres == cohort.layout.patch_centres else patch_centres)
    state = torch.load(ckpt_path, map_location=device, weights_only=False) if ckpt_path.exists() else None
    if state is not None:  # before the scans load: a wrong --run-dir costs no time
        if isinstance(state.get("settings"), dict):  # one saved before the default was recorded as None, too
            state["settings"]["modality"] = recorded_modality(state["settings"].get("modality"), default)
        check_resumable(state, settings, args.steps, ckpt_path)
    train_records, val_records = hold_out(cohort.split("train"), args.val_subjects,  # as many as check_training_split
                                          keep=max(2, 1 + views * args.n_references) if args.mode != "baseline" else 2)
    trained_on = cohort_trained_on(cohort, train_records)
    if state is not None:
        check_same_cohort(state.get("cohort"), trained_on, ckpt_path)
    volumes = load_volumes(train_records, cache=args.volume_cache)
    if args.patch_size > min(volumes[0].image.shape):
        raise SystemExit(f"--patch-size {args.patch_size} does not fit the cohort's grid "
                         f"{'×'.join(map(str, volumes[0].image.shape))}: give {min(volumes[0].image.shape)} or less.")
    mixed = args.mode != "baseline"
    val = (make_validation(load_volumes(val_records, cache=args.volume_cache), volumes, DEFAULT_ALPHA_RANGE, args.seed,
                           cohort.foreground_classes)  # α as the client draws it
           if val_records and rank == 0 else None)
    val_every = args.val_every or args.ckpt_every
    history: list[list[float]] = []  # [step, validation Dice]
    sampler = MixedPatchSampler(
        volumes, patch_size=args.patch_size, alpha_range=tuple(args.alpha_range),
        n_references=args.n_references, mixed=mixed, augment=args.augment,
        patch_centres=patch_centres, num_classes=cohort.num_classes, seed=args.seed * 1000 + rank,
        views=views,
    )
    features = resolve_features(args.features)
    seg = SegmentationNet(num_classes=cohort.num_classes, features=features)
    unmix = UnmixingNet(num_classes=cohort.num_classes, n_references=args.n_references,
                        features=resolve_widths(args.unmix_features),
                        patch=args.unmix_patch, voxel_hidden=args.unmix_hidden) if mixed else None
    if args.init_from is not None:
        seg, warm_unmix = warm_start(args.init_from, args.mode, args.n_references, features, args.init_unmixing)
        unmix = warm_unmix or unmix
        if args.init_unmixing:
            unmix = warm_unmixing(args.init_from / args.init_unmixing, unmix)
    model = set_up_for(EndToEnd(seg, unmix, freeze_seg=args.mode == "unmixing").to(device).train(),
                       args.precision, args.channels_last)
    if args.precision == "bfloat16" and device.type == "cpu" and rank == 0 and not native_bfloat16():
        print("warning: this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX): --precision bfloat16 "
              "will train slower than float32 here", flush=True)
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    lr_factor = lambda s: cosine_factor(s, schedule_total(s, args.steps, args.legs))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    leg_starts = {start for _, start in args.legs or []} - {0}

    step, elapsed = 0, 0.0
    sessions: list[dict] = []  # one per process start of this run (a resume adds one): what trained which steps
    if state is not None:
        load_checkpoint_weights(model, state["model"], ckpt_path)
        optim.load_state_dict(state["optim"])
        sampler.rng = np.random.default_rng(state["seed_state"] + rank)
        step, elapsed = state["step"], state.get("elapsed", 0.0)
        history = state.get("validation", [])
        sessions = state.get("sessions", [])
        for group in optim.param_groups:  # the schedule follows --steps, even if it changed since
            group["initial_lr"] = args.lr
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor, last_epoch=step - 1)
        if rank == 0:
            print(f"resumed from step {step} ({ckpt_path}; a new run needs another --run-dir)", flush=True)
            if step >= args.steps:
                print(f"its checkpoint has run all --steps {args.steps}: nothing to train; its weights are exported "
                      "again (a larger --steps trains on)", flush=True)
    sessions = [*sessions, session_record(args, world, device, launch_command(argv, world), step)]
    # U-Net++ without deep supervision leaves its intermediate heads unused
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model

    if rank == 0:  # what a run stopped after its last checkpoint logged: steps trained again from here
        run_dir.mkdir(parents=True, exist_ok=True)  # once the cohort and the settings are checked: a refused command
        # leaves no empty runs/<name> behind
        for log_name in ("train.log", "validation.log"):
            trim_log(run_dir / log_name, step)
    log = open(run_dir / "train.log", "a") if rank == 0 else None
    if log is not None and step == 0:
        log.write("step\tloss\tloss_seg\tloss_unmix\t" + ("loss_consistency\t" if args.consistency else "")
                  + "lr\tseconds\n")
    if val is not None and args.init_from is not None and step == 0 and not history:
        history = validate_step(model, val, 0, history, run_dir)  # the starting weights: training must beat them
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0, desc=name, mininterval=5)
    t0 = time.perf_counter()
    while step < args.steps:
        if step in leg_starts:  # as the resume that started this leg did (idempotent if we just resumed here)
            sampler.rng = np.random.default_rng(args.seed * 7 + step + rank)
        batch = sampler.batch(args.batch_size)
        loss, l_seg, l_unmix, l_cons = training_step(ddp, optim, batch, device, args.precision, args.channels_last,
                                                     args.consistency)
        sched.step()
        step += 1
        bar.update(1)
        if log is not None and (step % 10 == 0 or step == args.steps):
            secs = elapsed + time.perf_counter() - t0
            cons = f"{l_cons.item():.4f}\t" if args.consistency else ""
            log.write(f"{step}\t{loss.item():.4f}\t{l_seg.item():.4f}\t{l_unmix.item():.4f}\t{cons}"
                      f"{sched.get_last_lr()[0]:.2e}\t{secs:.0f}\n")
            log.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        validated = val is not None and (step % val_every == 0 or step == args.steps)
        if validated:  # best.pt may now hold this step's weights: the checkpoint below names the step
            history = validate_step(model, val, step, history, run_dir)
        if rank == 0 and (validated or step % args.ckpt_every == 0 or step == args.steps):
            sessions[-1] |= {"to_step": step, "seconds": round(time.perf_counter() - t0)}
            torch.save({"model": model.state_dict(), "optim": optim.state_dict(),
                        "step": step, "seed_state": args.seed * 7 + step, "elapsed": elapsed + time.perf_counter() - t0,
                        "validation": history, "settings": settings, "sessions": sessions, "cohort": trained_on},
                       ckpt_path)
    bar.close()
    info = {}
    if rank == 0:
        validation = None
        if val is not None:  # export the best validated step's weights
            best_step, best_dice = max(history, key=lambda h: (h[1], -h[0]))
            model.load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=True))
            validation = {"subjects": val.subjects, "every": val_every, "history": history, "alphas": val.alphas,
                          "references": [r.ref_id for r in val.references] if model.unmix is not None else None,
                          "exported_step": int(best_step), "dice": best_dice,
                          "note": "the weights are those of exported_step, the best mean Dice on the held-out "
                                  "subjects' scans (training.validate)"}
        info = export(model, args, features, name, elapsed + time.perf_counter() - t0, world, device,
                      launch_command(argv, world), validation, data_record(cohort, volumes, patch_centres),
                      sessions)
    if world > 1:  # the ranks part together: rank 1 tearing its group down while rank 0 still exported aborted once
        dist.barrier()  # in CI (SIGABRT, 'terminate called without an active exception'; not reproduced in 5 runs)
        dist.destroy_process_group()
    return info


RUN_SETTINGS = ("mode", "data", "modality", "features", "unmix_features", "unmix_patch", "unmix_hidden",
                "n_references", "alpha_range", "augment", "patch_centres", "consistency", "seed", "init_from",
                "init_unmixing", "val_subjects")
"""The options that make a run this run: a checkpoint resumes only under the same ones. The others may change
between legs (``--steps``, as the shipped weights' legs did; patch size, batch size, learning rate, precision,
threads, the number of processes). The cohort itself is checked apart (:func:`check_same_cohort`)."""


DEFAULTED_SETTINGS = {"modality": "the cohort's default", "patch_centres": "the cohort's default", "consistency": "off"}
"""The settings a checkpoint records as None where they are what the run does without the option (as a
checkpoint saved before the option existed reads), and how a refused resume names that."""


def default_modality(data: Path) -> str | None:
    """What a cohort folder is read as without ``--modality`` (None if it cannot be read so)."""
    try:
        return load_cohort(data).modality
    except CohortError:  # the folder holds no scans of the default modality
        return None


def recorded_modality(modality: str | None, default: str | None) -> str | None:
    """A modality as a checkpoint's settings record it: ``None`` when it is what the folder is read as without
    ``--modality`` (``--modality t1ce`` on a BraTS 2021 folder resumes a run started without it, and the other way
    round)."""
    return None if modality in (None, default) else modality


def run_settings(args: argparse.Namespace, modality: str | None = None, patch_centres: str | None = None) -> dict:
    """The values of :data:`RUN_SETTINGS` as a checkpoint records them (paths resolved, widths expanded; the
    modality as :func:`recorded_modality` gives it; ``patch_centres`` None where it is the cohort layout's, as a
    checkpoint saved before it was recorded reads)."""
    path = lambda p: str(Path(p).resolve()) if p is not None else None  # noqa: E731
    return {"mode": args.mode, "data": path(args.data), "modality": modality,
            "features": list(resolve_features(args.features)), "unmix_features": list(resolve_widths(args.unmix_features)),
            "unmix_patch": args.unmix_patch, "unmix_hidden": args.unmix_hidden, "n_references": args.n_references,
            "alpha_range": [float(a) for a in args.alpha_range], "augment": args.augment,
            "patch_centres": patch_centres, "consistency": args.consistency or None, "seed": args.seed,
            "init_from": path(args.init_from), "init_unmixing": args.init_unmixing, "val_subjects": args.val_subjects}


def check_resumable(state: dict, settings: dict, steps: int, ckpt_path: Path) -> None:
    """SystemExit unless the checkpoint ``state`` continues this run: recorded with the same settings (a
    checkpoint from before they were recorded is trusted) and not already past ``--steps``."""
    new_run = f"give another --run-dir for a new run, or remove {ckpt_path.parent}"
    saved = state.get("settings")
    if saved is not None:
        shown = lambda k, v: DEFAULTED_SETTINGS[k] if v is None and k in DEFAULTED_SETTINGS else repr(v)  # noqa: E731
        changed = [f"{k}: {shown(k, saved.get(k))} → {shown(k, settings[k])}" for k in settings
                   if saved.get(k) != settings[k]]
        if changed:
            raise SystemExit(f"{ckpt_path} is a run with other settings ({'; '.join(changed)}); resuming it would mix "
                             f"two runs: {new_run}.")
    if state["step"] > steps:
        raise SystemExit(f"{ckpt_path} is at step {state['step']}, past --steps {steps}: give --steps "
                         f"{state['step']} or more to continue it, or {new_run}.")


def launch_command(argv: list[str] | None, world: int) -> str:
    """The command as a training record names it: ``python -m training.train ...``, or with several processes
    the ``torchrun`` line that starts them (``--nproc_per_node``, and ``--nnodes`` across machines)."""
    command = command_line("training.train", argv)
    if world <= 1:
        return command
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = f" --nnodes={world // per_node}" if per_node < world else ""
    return command.replace("python -m", f"torchrun{nodes} --nproc_per_node={per_node} -m", 1)


def cohort_trained_on(cohort: Cohort, train_records: list) -> dict:
    """What a checkpoint records of the scans it trains on, beyond the folder's path (a folder's contents can
    change between legs): the layout, the classes and the training subjects."""
    return {"layout": cohort.layout.name, "classes": list(cohort.class_names),
            "train_subjects": sorted({r.subject for r in train_records})}


def check_same_cohort(saved: dict | None, trained_on: dict, ckpt_path: Path) -> None:
    """SystemExit unless the data folder still holds the cohort the checkpoint trained on (a checkpoint from
    before this was recorded is trusted): another layout or classes, or training subjects added or gone (say,
    a folder without a split.json that grew, so that its default split moved test subjects into training)."""
    if saved is None:
        return
    changed = [f"{k}: {saved.get(k)!r} → {trained_on[k]!r}" for k in ("layout", "classes") if saved.get(k) != trained_on[k]]
    before, now = set(saved.get("train_subjects", [])), set(trained_on["train_subjects"])
    if added := sorted(now - before):
        changed.append(f"training subjects added: {first_few(added)}")
    if gone := sorted(before - now):
        changed.append(f"training subjects gone: {first_few(gone)}")
    if changed:
        raise SystemExit(f"{ckpt_path} trained on another cohort than --data holds now ({'; '.join(changed)}); resuming "
                         "it would mix two cohorts, and scans it trained on could now be scored as test scans. Give "
                         f"another --run-dir for a new run, or restore the folder (a split.json fixes each subject's "
                         "side: training.prepare_cohort writes one).")


def load_checkpoint_weights(model: torch.nn.Module, weights: dict, ckpt_path: Path) -> None:
    """Load a checkpoint's weights; a checkpoint of other networks is a SystemExit naming it, not a traceback."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise SystemExit(f"{ckpt_path} holds networks of another shape than this command's ({str(exc).splitlines()[0]}); "
                         f"give another --run-dir for a new run, or remove {ckpt_path.parent}.") from None


def warn_unloadable_test_scans(cohort: Cohort) -> None:
    """Print which test scans ``training.evaluate`` will not load, from their headers (:func:`header_problems`), so
    that they can be mended while the networks train, not found hours later. Training reads the training split only,
    so it goes on."""
    problems = header_problems(cohort.split("test"))
    if problems:
        print(f"warning: {len(problems)} scan(s) of the test split will not load for python -m training.evaluate "
              f"({first_few(problems)}); training goes on (it reads the training split only): mend them before "
              "evaluating.", flush=True)


def check_training_split(cohort: Cohort, mixed: bool, n_references: int = 1, views: int = 1) -> None:
    """CohortError unless the cohort's training split can train: a scan at least, and for mixed training the scans
    of 1 + ``n_references`` subjects (each mix's references come from subjects other than its target's), or of
    1 + 2 × ``n_references`` with ``views=2`` (``--consistency``: a second mix with references disjoint from the
    first's)."""
    subjects = sorted({r.subject for r in cohort.split("train")})
    needed = 1 + views * n_references if mixed else 1
    if len(subjects) < needed:
        why = ("--consistency mixes each target twice, with references of disjoint subjects, none the target's"
               if mixed and views == 2 else
               f"a mix needs {n_references} reference(s) from subjects other than its target's" if mixed
               else "it trains on them")
        has_split = (cohort.root / "split.json").is_file()
        fix = ("List more subjects under \"train\" in its split.json, or add scans of more subjects." if has_split else
               f"It has no split.json, so the default split put a quarter (at least one) of its "
               f"{len({r.subject for r in cohort.records})} subject(s) in the test split: add scans of more subjects, "
               "or write a split.json listing the \"train\" subjects.")
        raise CohortError(f"The training split of {cohort.root} holds {len(subjects)} subject(s) ({', '.join(subjects) or 'none'}); "
                          f"training needs {needed}: {why}. {fix}")


LOSS_MIX = DiceCELoss(softmax=True)
"""S's loss against the soft mixed labels y_mix of Eq. 3 (cross-entropy + Dice, as the paper)."""
LOSS_TARGET = DiceCELoss(softmax=True, to_onehot_y=True)
"""D's loss against the target's labels."""


def consistency_loss(logits_target: torch.Tensor) -> torch.Tensor:
    """The mean over voxels of the squared distance between the probability maps of consecutive pairs of D's
    predictions (a batch of ``views=2`` mixes: one target, two disjoint references, one α)."""
    probs = torch.softmax(logits_target.float(), dim=1)
    first, second = probs[0::2], probs[1::2]
    return (first - second).pow(2).sum(dim=1).mean()


def training_step(ddp: torch.nn.Module, optim: torch.optim.Optimizer, batch, device: torch.device,
                  precision: str = "float32", channels_last: bool = False,
                  consistency: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on ``batch`` (a :class:`mixdemo.data.MixedPatchSampler` batch) of ``ddp`` (an
    :class:`EndToEnd`, DDP-wrapped or not): S's loss on the proxies (Eq. 3; on the raw images for the
    baseline) plus D's on the target's labels, or D's alone when S is frozen; with ``consistency`` > 0 (a
    ``views=2`` batch) plus that weight × :func:`consistency_loss`. Returns (loss, S's, D's, the consistency
    term unweighted)."""
    model = getattr(ddp, "module", ddp)
    mixed = model.unmix is not None
    x_in = batch.x_mix if mixed else batch.x_target
    with forward_precision(device, precision):
        logits_mix, logits_target = ddp(to_device(x_in, device, channels_last), batch.y_ref.to(device),
                                        batch.weights.to(device))
    l_seg = LOSS_MIX(logits_mix.float(), batch.y_mix.to(device))
    l_unmix = (LOSS_TARGET(logits_target.float(), batch.y_target[:, None].to(device)) if mixed
               else torch.zeros((), device=device))
    l_cons = consistency_loss(logits_target) if consistency and mixed else torch.zeros((), device=device)
    loss = (l_unmix if model.freeze_seg else l_seg + l_unmix) + consistency * l_cons
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    return loss, l_seg, l_unmix, l_cons


def set_up_for(model: EndToEnd, precision: str, channels_last: bool) -> EndToEnd:
    """``model`` set up to train in ``precision`` and the layout asked for (in place; returned)."""
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if precision == "bfloat16":
        tiny_grid_convolutions_in_float32(model)
    return model


def forward_precision(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's precision: ``bfloat16`` runs it under autocast (mixed precision: convolutions and
    matrix products in bfloat16, weights, optimiser state and losses in float32); ``float32`` leaves it as is."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def tiny_grid_convolutions_in_float32(model: torch.nn.Module) -> int:
    """Run each convolution of ``model`` in float32 under autocast whenever a side of its input is smaller than
    its kernel (S's deepest blocks on 32³ patches: 2³ grids). There, on the CPU (torch 2.13, oneDNN), bfloat16
    convolutions now and then return non-finite or huge weight gradients from finite inputs and output
    gradients (``python -m training.throughput --check-gradients`` counts them); training with them turned S's
    deepest weights into NaN within 200 steps. Such convolutions cost little. Returns how many were wrapped."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    for conv in convs:
        conv.forward = _float32_on_tiny_grids(conv, conv.forward)
    return len(convs)


def _float32_on_tiny_grids(conv: torch.nn.Conv3d, forward):
    """``forward`` of ``conv``, outside autocast in float32 when an input side is smaller than the kernel."""
    def run(x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type) and any(n < k for n, k in zip(x.shape[2:], conv.kernel_size)):
            with torch.autocast(x.device.type, enabled=False):
                return forward(x.float())
        return forward(x)
    return run


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A (B, C, X, Y, Z) batch on ``device``, in channels-last 3D when the networks are."""
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def validate_step(model: EndToEnd, val, step: int, history: list[list[float]], run_dir: Path) -> list[list[float]]:
    """Validate the weights of ``step`` (appended to ``<run>/validation.log``); keep them in ``<run>/best.pt``
    when their Dice is the best so far."""
    model.eval()
    dice = validation_dice(model.seg, model.unmix, val)
    model.train()
    if not history or dice > max(h[1] for h in history):
        torch.save(model.state_dict(), run_dir / "best.pt")
    log = run_dir / "validation.log"
    header = "" if log.exists() else "step\tdice\n"
    with log.open("a") as f:
        f.write(f"{header}{step}\t{dice:.4f}\n")
    return [*history, [step, dice]]


def trim_log(path: Path, step: int) -> None:
    """Drop the rows of the tab-separated log ``path`` past ``step``, the whole file at step 0 (a new run): what a
    run stopped after its last checkpoint logged of steps that its resume trains again."""
    if step == 0:
        path.unlink(missing_ok=True)
    elif path.exists():
        header, *rows = path.read_text().splitlines(keepends=True) or [""]
        past = lambda row: row.split("\t", 1)[0].isdigit() and int(row.split("\t", 1)[0]) > step  # noqa: E731
        path.write_text(header + "".join(row for row in rows if not past(row)))


def session_record(args: argparse.Namespace, world: int, device: torch.device, command: str, start: int) -> dict:
    """What one process start of a run trains with: the options a resume may change (:data:`RUN_SETTINGS` names
    those it may not), from step ``start``; its checkpoints add ``to_step`` and ``seconds``."""
    return {"command": command, "from_step": start, "to_step": start, "seconds": 0, "processes": world,
            "device": str(device), "batch_size": args.batch_size * world, "lr": args.lr, "precision": args.precision,
            "channels_last": args.channels_last, "threads": torch.get_num_threads(), "patch_size": args.patch_size}


def data_record(cohort: Cohort, volumes: list, patch_centres: str) -> dict:
    """What the models were trained on, for their training record: the server reports the classes and the grid."""
    return {"data_layout": cohort.layout.name, "modality": cohort.modality, "classes": list(cohort.class_names),
            "grid_shape": list(volumes[0].image.shape), "patch_centres": patch_centres}


def export(model: EndToEnd, args: argparse.Namespace, features, name: str, seconds: float, world: int,
           device: torch.device, command: str, validation: dict | None = None, data: dict | None = None,
           sessions: list[dict] | None = None) -> dict:
    """Write the Hub-format model folders and a training record next to them. The record's top-level command,
    batch size, processes, ... are the last session's; ``sessions`` lists each (a resumed run has several)."""
    from mixdemo.weights import write_training_record

    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    training = {
        "command": command,
        "mode": args.mode, "steps": args.steps, "batch_size": args.batch_size * world, "patch_size": args.patch_size,
        "lr": args.lr, "legs": args.legs, "augment": args.augment, "alpha_range": list(args.alpha_range),
        "n_references": args.n_references, "consistency": args.consistency, "seed": args.seed,
        "init_from": str(args.init_from) if args.init_from else None,
        "init_from_sha256": init_shas(args.init_from, args.mode, args.init_unmixing) if args.init_from else None,
        "init_unmixing": args.init_unmixing,
        "features": list(features), "processes": world, "device": str(device),
        "precision": args.precision, "channels_last": args.channels_last,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "train_seconds": round(seconds), "data": str(args.data), "date": time.strftime("%Y-%m-%d"),
    }
    training |= data or {}
    if sessions:
        training["sessions"] = sessions
    if validation:
        training["validation"] = validation
    training["unmix_features"], training["unmix_patch"] = resolve_widths(args.unmix_features), args.unmix_patch
    training["unmix_hidden"] = args.unmix_hidden
    folders = {}
    if not model.freeze_seg:  # a frozen S is the --init-from one: nothing new to write
        model.seg.save_pretrained(args.out / name)
        s_record = write_training_record(args.out / name, training, "mixdemo.models.SegmentationNet")
        folders["segmentation"] = str(args.out / name)
        if model.unmix is not None:  # D names the S it was trained with (mixdemo.weights.paired_segmentation_sha256)
            training = {**training, "segmentation_sha256": json.loads(s_record.read_text())["sha256"]}
    if model.unmix is not None:
        unmix_name = name if model.freeze_seg else (
            name.replace("segmentation", "unmixing") if "segmentation" in name else name + "-unmixing")
        model.unmix.save_pretrained(args.out / unmix_name)
        write_training_record(args.out / unmix_name, training, "mixdemo.models.UnmixingNet")
        folders["unmixing"] = str(args.out / unmix_name)
    shown = {("baseline" if k == "segmentation" and args.mode == "baseline" else k): v for k, v in folders.items()}
    print(json.dumps({"saved": shown, "train_seconds": round(seconds)}), flush=True)  # by role: the baseline's is named so
    return folders


if __name__ == "__main__":
    with user_errors():
        main()
