"""Train the attack lab's score prior on 32³ brain patches (NCSN, Song & Ermon 2019; NCSNv2 2020).

::

    python -m training.train_score --steps 2600 --threads 1 --time-limit 35

Data: patches centred on brain voxels of the *training* subjects' scans only (the test subjects
are the attack's victims and are never seen). σ_1 is set to the largest Euclidean distance
between 512 such patches (NCSNv2 technique 1), σ_L = 0.01, L = 10 geometric levels.
Loss: denoising score matching with λ(σ) = σ² (:func:`mixdemo.attacks.score.dsm_loss`); Adam
with cosine decay; an exponential moving average of the weights (NCSNv2 technique 5) is what
gets exported. Checkpoints in ``runs/score/checkpoint.pt`` (resumed automatically), losses in
``runs/score/train.log`` (tab-separated), weights in ``weights/score/`` (Hub format + card).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mixdemo.attacks.score import SCORE_FEATURES, ScoreNet, dsm_loss, max_pairwise_distance, sample_brain_patches
from mixdemo.data import load_cohort, load_volumes
from mixdemo.models import count_parameters, pick_device
from mixdemo.phantoms import DEFAULT_COHORT, ensure_default_cohort
from training import add_device_option, command_line, count, user_errors



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help="cohort folder (its training subjects are used; phantoms are generated if absent)")
    p.add_argument("--steps", type=count(1), default=2600)
    p.add_argument("--batch-size", type=count(1), default=8)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sigma-L", type=float, default=0.01, help="smallest noise level")
    p.add_argument("--levels", type=count(1), default=10, help="number of noise levels L")
    p.add_argument("--sigma-1", type=float, default=None, help="largest noise level (default: measured on the data)")
    p.add_argument("--features", default=",".join(map(str, SCORE_FEATURES)), help="6 comma-separated widths")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights (0: off)")
    p.add_argument("--max-subjects", type=count(0), default=0, help="use only the first N training subjects (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("weights"), help="model folder parent")
    p.add_argument("--name", default="score")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoint + log (default runs/<name>)")
    p.add_argument("--ckpt-every", type=count(1), default=100)
    p.add_argument("--time-limit", type=float, default=0.0, help="minutes; stop early and export (0: none)")
    p.add_argument("--threads", type=count(0), default=0, help="torch CPU threads (0: torch's default)")
    add_device_option(p)
    return p.parse_args(argv)


def load_training_images(data: Path, max_subjects: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and brain voxel coordinates (labels > 0, as (M, 3) arrays) of the training subjects' scans."""
    cohort = load_cohort(ensure_default_cohort(data))
    records = cohort.split("train")
    if max_subjects:
        keep = set(sorted({r.subject for r in records})[:max_subjects])
        records = [r for r in records if r.subject in keep]
    volumes = load_volumes(records)
    return [v.image for v in volumes], [np.argwhere(v.labels > 0) for v in volumes]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    run_dir = args.run_dir or Path("runs") / args.name
    features = tuple(int(v) for v in args.features.split(","))

    # 1. data: brain patches of the training subjects
    images, foregrounds = load_training_images(args.data, args.max_subjects)
    rng = np.random.default_rng(args.seed)

    # 2. σ_1 of the order of the largest distance between training patches (NCSNv2 technique 1)
    ckpt_path = run_dir / "checkpoint.pt"
    # on the CPU: its random-number state is the CPU generator's (set_rng_state takes no other); the weights and the
    # optimiser's state go to the device as they are loaded into the model and the optimiser
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    if state is not None:
        sigma_1 = state["sigma_1"]
    elif args.sigma_1 is not None:
        sigma_1 = float(args.sigma_1)
    else:
        probe = sample_brain_patches(images, foregrounds, 512, np.random.default_rng(args.seed + 1), args.patch_size)
        sigma_1 = max_pairwise_distance(probe)
    print(f"sigma_1 = {sigma_1:.2f}  (max distance between 512 training patches)", flush=True)

    # 3. model, EMA copy, optimiser
    model = ScoreNet(sigma_1=sigma_1, sigma_L=args.sigma_L, n_levels=args.levels, features=features,
                     patch_size=args.patch_size).to(device)
    ema = copy.deepcopy(model).eval()
    optim = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=args.steps, eta_min=args.lr * 0.05)
    step, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed from step {step}", flush=True)

    # 4. training loop: DSM with λ(σ) = σ²
    run_dir.mkdir(parents=True, exist_ok=True)  # once the scans loaded: a refused command leaves no empty run folder
    log = open(run_dir / "train.log", "a")
    if step == 0:
        log.write("step\tloss\tlr\tseconds\n")
    levels = model.sigma_levels
    bar = tqdm(total=args.steps, initial=step, desc="score", mininterval=5)
    t0 = time.perf_counter()
    running = []
    while step < args.steps:
        x = torch.from_numpy(sample_brain_patches(images, foregrounds, args.batch_size, rng, args.patch_size))[:, None]
        loss = dsm_loss(model, x.to(device), levels)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        if args.ema:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1.0 - args.ema)
        step += 1
        running.append(loss.item())
        bar.update(1)
        secs = elapsed + time.perf_counter() - t0
        out_of_time = bool(args.time_limit) and secs > args.time_limit * 60
        if step % 10 == 0 or step == args.steps or out_of_time:
            log.write(f"{step}\t{np.mean(running):.5f}\t{sched.get_last_lr()[0]:.2e}\t{secs:.0f}\n")
            log.flush()
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
        if step % args.ckpt_every == 0 or step == args.steps or out_of_time:
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optim": optim.state_dict(),
                        "sched": sched.state_dict(), "step": step, "elapsed": secs, "sigma_1": sigma_1,
                        "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, ckpt_path)
        if out_of_time:
            print(f"time limit of {args.time_limit} min reached at step {step}", flush=True)
            break
    bar.close()
    log.close()
    return export(ema if args.ema else model, args, features, sigma_1, step, elapsed + time.perf_counter() - t0, device,
                  command_line("training.train_score", argv))


def export(model: ScoreNet, args: argparse.Namespace, features: tuple[int, ...], sigma_1: float, steps_done: int,
           seconds: float, device: torch.device, command: str) -> dict:
    """Write ``weights/<name>`` in Hub format with training.json and a model card."""
    from mixdemo.weights import write_model_card, write_training_record

    folder = args.out / args.name
    model = model.cpu().eval()
    model.save_pretrained(folder)
    training = {
        "command": command,
        "steps": steps_done, "steps_planned": args.steps, "batch_size": args.batch_size,
        "patch_size": args.patch_size, "lr": args.lr, "seed": args.seed, "features": list(features),
        "sigma_1": sigma_1, "sigma_L": args.sigma_L, "n_levels": args.levels, "ema": args.ema,
        "parameters": count_parameters(model), "device": str(device),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "train_seconds": round(seconds), "data": str(args.data), "date": time.strftime("%Y-%m-%d"),
    }
    write_training_record(folder, training, model_class="mixdemo.attacks.score.ScoreNet")
    write_model_card(
        folder,
        title="Mixup-Privacy attack lab: score prior for 32³ brain patches (NCSN)",
        tags=("mixup-privacy", "medical-imaging", "brain-mri", "score-based-prior", "attack-lab"),
        summary=(
            "A noise-conditional score network s(x, σ) = f(x)/σ (NCSN, Song & Ermon 2019, with the NCSNv2 "
            "output scaling) for 32³ T1 patches normalised to [0, 1]. The attack lab uses it as the prior "
            "of Langevin blind source separation of mixup proxies (Jayaram & Thickstun, ICML 2020), the "
            "attack of Kim et al. (Mixup-Privacy, Table 1)."
        ),
        sections={
            "Model": f"MONAI BasicUNet (3D), widths {list(features)}, group norm, {count_parameters(model):,} "
                     "parameters; no σ input, output divided by σ.",
            "Noise schedule": f"Geometric, L = {args.levels}, σ_1 = {sigma_1:.2f} (the largest Euclidean distance "
                              f"between 512 training patches, NCSNv2 technique 1), σ_L = {args.sigma_L}.",
            "Training": f"Denoising score matching with λ(σ) = σ², σ uniform over the levels; Adam lr {args.lr} "
                        f"with cosine decay, batch {args.batch_size}, {steps_done} steps; EMA {args.ema} of the "
                        "weights exported. Patches centred on brain voxels of the phantom training subjects only.",
            "Use": "`from mixdemo.weights import load_model; score = load_model('score')`, then "
                   "`mixdemo.attacks.bss.separate(...)`.",
            "Limitations": "Trained for minutes on one CPU thread (the paper trains 100k iterations on a GPU): "
                           "a weak prior makes the separation attack weaker, so separation scores are a lower "
                           "bound on what a stronger attacker achieves.",
        },
    )
    info = {"saved": str(folder), "steps": steps_done, "train_seconds": round(seconds), "sigma_1": sigma_1}
    print(json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    with user_errors():
        main()
