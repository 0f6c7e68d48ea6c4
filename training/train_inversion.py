"""Train the attack lab's learned inversion: the network a server would train to take a proxy back to its target.

::

    python -m training.train_inversion --steps 2000 --threads 2     # ~15 min on 2 cores → weights/inversion

The server's own scans are those of the training subjects outside the client's bank: the bank is the first
``--bank-subjects`` training subjects by name (10, the demo client's bank, :func:`mixdemo.examples.reference_subjects`),
so the network never sees a reference the client mixes with, in the app or in ``training.evaluate_privacy``. Each step
mixes its own scans as the client does (Eq. 2: a scan of another subject as the reference, α ~ U(``--alpha-range``))
on 32³ patches of volumes average-pooled ``--downsample``× (the re-identification protocol's resolution), and fits
the target by L1 (:func:`mixdemo.attacks.inversion.train_inversion`). Losses go to ``runs/<name>/train.log``; the
weights to ``weights/<name>`` (Hub format, ``training.json``, a card). A run of minutes, not resumed: run it again.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mixdemo.attacks.inversion import FEATURES, InversionNet, split_subjects, train_inversion
from mixdemo.attacks.reid import downsample
from mixdemo.data import load_cohort, load_volumes
from mixdemo.examples import N_REFERENCES
from mixdemo.mixing import DEFAULT_ALPHA_RANGE
from mixdemo.models import count_parameters, pick_device
from mixdemo.phantoms import DEFAULT_COHORT, ensure_default_cohort
from training import add_device_option, check_alpha_range_option, command_line, count, user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help="cohort folder (phantoms are generated if absent)")
    p.add_argument("--steps", type=count(1), default=2000)
    p.add_argument("--batch-size", type=count(1), default=4)
    p.add_argument("--patch-size", type=count(32), default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alpha-range", type=float, nargs=2, default=DEFAULT_ALPHA_RANGE, help="the client's α range")
    p.add_argument("--downsample", type=count(1), default=2, help="average pooling of the volumes")
    p.add_argument("--server-data", type=Path, nargs="+", default=[], metavar="FOLDER",
                   help="further cohorts the server holds, every scan its own (other people than --data's: e.g. "
                        "python -m mixdemo.phantoms --out data/phantoms-seed3 --seed 3)")
    p.add_argument("--bank-subjects", type=count(0), default=N_REFERENCES,
                   help="the first N training subjects are the client's bank, never trained on")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--out", type=Path, default=Path("weights"), help="model folder parent")
    p.add_argument("--name", default="inversion")
    p.add_argument("--run-dir", type=Path, default=None, help="loss log (default runs/<name>)")
    p.add_argument("--threads", type=count(0), default=0, help="torch CPU threads (0: torch's default)")
    add_device_option(p)
    args = p.parse_args(argv)
    check_alpha_range_option(p, args)
    return args


def server_scans(data: Path, bank_subjects: int, factor: int,
                 server_data: Sequence[Path] = ()) -> tuple[np.ndarray, list[str], list[str]]:
    """The server's own scans (pooled ``factor``×), their subjects, and the client's bank subjects it never sees: the
    training subjects of ``data`` outside the bank, then every scan of each cohort of ``server_data`` (both splits),
    whose subjects are named ``<folder>/<subject>`` (other people: a phantom cohort of another seed)."""
    cohort = load_cohort(ensure_default_cohort(data))
    client, own = split_subjects(sorted(cohort.train_subjects), bank_subjects)
    volumes = load_volumes([r for r in cohort.split("train") if r.subject in set(own)])
    subjects = [v.subject for v in volumes]
    for folder in server_data:
        if Path(folder).resolve() == Path(data).resolve():
            raise ValueError(f"--server-data {folder} is --data itself, whose bank subjects the server must never see.")
        other = load_cohort(folder)
        extra = load_volumes(other.split("train") + other.split("test"))
        volumes += extra
        subjects += [f"{Path(folder).name}/{v.subject}" for v in extra]
    return downsample(np.stack([v.image for v in volumes]), factor), subjects, client


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    run_dir = args.run_dir or Path("runs") / args.name
    scans, subjects, client = server_scans(args.data, args.bank_subjects, args.downsample, args.server_data)
    run_dir.mkdir(parents=True, exist_ok=True)  # once the scans loaded: a refused command leaves no empty run folder
    print(f"server's scans: {len(scans)} of {len(set(subjects))} subjects, pooled to {scans.shape[1:]}; "
          f"the client's {len(client)} bank subjects left out", flush=True)
    t0 = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        log.write("step\tloss\tseconds\n")

        def progress(step: int, loss: float) -> None:
            log.write(f"{step}\t{loss:.5f}\t{time.perf_counter() - t0:.0f}\n")
            log.flush()
            print(f"step {step}/{args.steps}: L1 {loss:.4f}", flush=True)

        net = train_inversion(scans, subjects, alpha_range=tuple(args.alpha_range), steps=args.steps, seed=args.seed,
                              batch=args.batch_size, patch=args.patch_size, lr=args.lr, downsample=args.downsample,
                              device=device, progress=progress)
    return export(net, args, subjects, client, time.perf_counter() - t0, device, command_line("training.train_inversion", argv))


def export(net: InversionNet, args: argparse.Namespace, subjects: list[str], client: list[str], seconds: float,
           device: torch.device, command: str) -> dict:
    """Write ``<out>/<name>`` in Hub format with training.json and a model card."""
    from mixdemo.weights import write_model_card, write_training_record

    folder = args.out / args.name
    net = net.cpu().eval()
    net.save_pretrained(folder)
    training = {
        "command": command, "steps": args.steps, "batch_size": args.batch_size, "patch_size": args.patch_size,
        "lr": args.lr, "seed": args.seed, "alpha_range": list(args.alpha_range), "downsample": args.downsample,
        "features": list(FEATURES), "parameters": count_parameters(net), "device": str(device),
        "server_subjects": sorted(set(subjects)), "server_scans": len(subjects), "client_bank_subjects": client,
        "server_cohorts": [str(args.data), *map(str, args.server_data)],
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "train_seconds": round(seconds), "data": str(args.data), "date": time.strftime("%Y-%m-%d"),
    }
    write_training_record(folder, training, model_class="mixdemo.attacks.inversion.InversionNet")
    write_model_card(
        folder,
        title="Mixup-Privacy attack lab: learned inversion of proxies (a server's network)",
        tags=("mixup-privacy", "medical-imaging", "brain-mri", "attack-lab"),
        summary=(
            "What an honest-but-curious server could train to attack mixup proxies (Kim et al., Mixup-Privacy; an "
            "attack the paper did not try): a 3D U-Net that takes a proxy x_mix = α·x + (1 − α)·x_ref to its target x, "
            "trained on the server's own scans mixed as the client mixes. It never saw the client's references."
        ),
        sections={
            "Model": f"MONAI BasicUNet (3D), widths {list(FEATURES)}, {count_parameters(net):,} parameters; one channel "
                     f"in and out, on volumes average-pooled {args.downsample}× (`mixdemo.attacks.reid.downsample`).",
            "Training": f"L1 to the target; Adam lr {args.lr} with cosine decay, batch {args.batch_size} of "
                        f"{args.patch_size}³ patches centred on target brain, {args.steps} steps, α ~ "
                        f"U({args.alpha_range[0]}, {args.alpha_range[1]}), the reference another subject's scan. Data: "
                        f"{len(subjects)} scans of {len(set(subjects))} phantom subjects (training subjects of "
                        f"{args.data}{''.join(f', every subject of {f}' for f in args.server_data)}), not the client's "
                        f"{len(client)} bank subjects. MNI152-derived phantoms, not patients.",
            "Use": "`from mixdemo.weights import load_model; net = load_model('inversion')`, then "
                   "`mixdemo.attacks.inversion.invert_full_resolution(net, proxy)`; its evaluation is the "
                   "`inversion` section of `python -m training.evaluate_privacy` (README, privacy section).",
            "Limitations": "Trained for minutes on 2 CPU cores on a small phantom cohort: a server with more data and "
                           "compute would do better, so its scores are a lower bound on this kind of attack.",
        },
    )
    info = {"saved": str(folder), "steps": args.steps, "train_seconds": round(seconds)}
    print(json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    with user_errors():
        main()
