"""The learned inversion's recipe varied, each network scored as the privacy record scores the shipped one.

::

    python -m training.inversion_variants --threads 2     # ~50 min on 2 cores → results/inversion_variants.json

How much of the shipped network's score (``results/privacy.json``'s ``inversion`` section, ``weights/inversion``) is
its recipe and how much its draw: the shipped network itself (not retrained: its section's figures again), the same
recipe with other seeds, larger patches at about the same arithmetic (64³, batch 2, 600 steps), and a server that also
holds a public cohort of other people (a phantom cohort of another seed, ``data/phantoms-seed3``, generated if absent;
``python -m training.train_inversion --server-data``). Each variant is trained by ``training.train_inversion`` into a
temporary folder and scored by ``training.evaluate_privacy``'s inversion section (the same 12 test scans, bank, α range,
draws and seed); its weights are not kept. MNI152-derived phantoms, not patients.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mixdemo.attacks.inversion import InversionNet
from mixdemo.examples import N_REFERENCES
from mixdemo.mixing import DEFAULT_ALPHA_RANGE
from mixdemo.models import pick_device
from mixdemo.phantoms import DEFAULT_COHORT, generate_cohort
from mixdemo.weights import read_training_record
from training import add_device_option, command_line, count, default_out, user_errors, write_record
from training import evaluate_privacy, train_inversion

PUBLIC_COHORT = Path("data/phantoms-seed3")
"""The server's public cohort of the last variant: ``python -m mixdemo.phantoms --out data/phantoms-seed3 --seed 3``
(24 subjects, 2 scans each; seed 3 is used nowhere else, so none of them is a subject of any other figure)."""
PUBLIC_COHORT_SEED = 3

VARIANTS: dict[str, list[str]] = {
    "seed 1": ["--seed", "1"],
    "seed 2": ["--seed", "2"],
    "64³ patches, batch 2, 600 steps": ["--patch-size", "64", "--batch-size", "2", "--steps", "600"],
    "+ a public cohort (24 more subjects)": ["--server-data", str(PUBLIC_COHORT)],
}
"""Each variant's arguments to ``python -m training.train_inversion`` beyond the shipped recipe's (its defaults); the
public cohort's folder is ``--public-cohort``'s."""

VARIANT_KEYS = {"seed1": "seed 1", "seed2": "seed 2", "patch64": "64³ patches, batch 2, 600 steps",
                "public": "+ a public cohort (24 more subjects)"}
"""A short name for each variant, for ``--variants`` (its label, the row's name in the JSON, is accepted too)."""

SHIPPED = "shipped (weights/inversion, seed 0)"


def variant_label(name: str) -> str:
    """The label of the variant ``name`` (a key of :data:`VARIANT_KEYS` or a label itself), for argparse."""
    label = VARIANT_KEYS.get(name.strip().lower(), name)
    if label not in VARIANTS:
        raise argparse.ArgumentTypeError(f"no variant {name!r}; choose among {', '.join(VARIANT_KEYS)} "
                                         "(or their labels: " + "; ".join(map(repr, VARIANTS)) + ")")
    return label


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_COHORT, help="cohort folder (phantoms are generated if absent)")
    p.add_argument("--variants", nargs="+", type=variant_label, default=list(VARIANTS), metavar="NAME",
                   help="which variants to train (default all): "
                        + "; ".join(f"{key} ({label})" for key, label in VARIANT_KEYS.items()))
    p.add_argument("--steps", type=count(1), default=None, help="override every variant's steps (smoke runs)")
    p.add_argument("--public-cohort", type=Path, default=PUBLIC_COHORT,
                   help=f"the server's public cohort (generated there if absent, seed {PUBLIC_COHORT_SEED})")
    p.add_argument("--bank-subjects", type=count(0), default=N_REFERENCES,
                   help="train_inversion's --bank-subjects (the demo client's bank: never trained on)")
    p.add_argument("--smoke", action="store_true", help="the evaluation's smoke configuration (tests; numbers meaningless)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/inversion_variants.json)")
    p.add_argument("--threads", type=count(0), default=0, help="torch CPU threads (0: torch's default)")
    add_device_option(p)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = default_out("inversion_variants.json", args.smoke)
    return args


def variant_arguments(name: str, steps: int | None = None, public_cohort: Path = PUBLIC_COHORT) -> list[str]:
    """A variant's arguments to ``python -m training.train_inversion`` beyond the shipped recipe's, the public cohort
    at ``public_cohort``, ``--steps`` replaced by ``steps`` when given."""
    extra = [str(public_cohort) if a == str(PUBLIC_COHORT) else a for a in VARIANTS[name]]
    if steps is None:
        return extra
    if "--steps" in extra:
        at = extra.index("--steps")
        del extra[at : at + 2]
    return [*extra, "--steps", str(steps)]


def row(variant: str, net: InversionNet, record: dict, scored: dict, command: str | None) -> dict:
    """One variant's row: its recipe (from its training record) and its scores (the inversion section's)."""
    per_draw = zip(scored["estimate_reid_map_per_draw"], scored["proxy_reid_map_per_draw"])
    windows = scored.get("on_windows", {})
    return {"variant": variant, "train_command": command or record.get("command"), "seed": record.get("seed"),
            "steps": record.get("steps"), "batch_size": record.get("batch_size"), "patch_size": net.patch_size,
            "server_scans": record.get("server_scans"), "server_subjects": len(record.get("server_subjects", [])),
            "train_seconds": record.get("train_seconds"), "trained": bool(record),
            "estimate_reid_map": scored["estimate_reid_map"], "proxy_reid_map": scored["proxy_reid_map"],
            "higher_in_draws": sum(e > p for e, p in per_draw), "n_draws": scored["n_draws"],
            "estimate_msssim_mean": scored["estimate_msssim_mean"], "proxy_msssim_mean": scored["proxy_msssim_mean"],
            "on_windows_reid_map": windows.get("estimate_reid_map"), "on_windows_msssim_mean": windows.get("estimate_msssim_mean"),
            "references_among_server_scans": scored["references_among_server_scans"]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cfg = evaluate_privacy.SMOKE if args.smoke else evaluate_privacy.FULL
    cohort = evaluate_privacy.load_data(args.data, cfg)
    alpha_range, seed = tuple(DEFAULT_ALPHA_RANGE), 0  # the privacy record's inversion section's

    def score(net: InversionNet, record: dict) -> dict:
        return evaluate_privacy.run_inversion(net, record, cohort, cfg, alpha_range, seed)

    t0 = time.perf_counter()
    net, record, _ = evaluate_privacy.load_inversion(device, cfg.downsample, seed, allow_hub=not args.smoke)
    rows = [row(SHIPPED, net, record, score(net, record), None)]
    print(f"[inversion_variants] {SHIPPED}: mAP {rows[-1]['estimate_reid_map']:.3f}", flush=True)
    for name in args.variants:
        if "--server-data" in VARIANTS[name] and not (args.public_cohort / "split.json").exists():
            print(f"generating the server's public cohort in {args.public_cohort} (once, a few minutes) ...", flush=True)
            generate_cohort(args.public_cohort, seed=PUBLIC_COHORT_SEED, n_subjects=4 if args.smoke else 24,
                            n_scans=2, progress=True)
        with tempfile.TemporaryDirectory(prefix="inversion-variant-") as tmp:
            folder = Path(tmp)
            extra = variant_arguments(name, args.steps, args.public_cohort)
            train_inversion.main(["--data", str(args.data), "--bank-subjects", str(args.bank_subjects), *extra,
                                  "--out", str(folder), "--run-dir", str(folder / "run"),
                                  "--threads", str(args.threads), *(["--device", args.device] if args.device else [])])
            record = read_training_record(folder / "inversion")
            net = InversionNet.from_pretrained(str(folder / "inversion")).to(device).eval()
            rows.append(row(name, net, record, score(net, record), command_line("training.train_inversion", extra)))
        print(f"[inversion_variants] {name}: mAP {rows[-1]['estimate_reid_map']:.3f}", flush=True)
    doc = {"command": command_line("training.inversion_variants", argv), "date": time.strftime("%Y-%m-%d"),
           "data": evaluate_privacy.DATA_NOTE, "alpha_range": list(alpha_range), "seed": seed,
           "n_targets": len(cohort.test_small), "seconds": round(time.perf_counter() - t0), "rows": rows,
           "what": "each network scored by training.evaluate_privacy's inversion section: single proxies of the test "
                   "scans mixed with the client's bank, re-identification mAP and MS-SSIM of its whole-volume estimates "
                   "(on_windows_*: on windows of its training patches) against the proxies'"}
    write_record(args.out, doc)
    print(f"[inversion_variants] wrote {args.out}", flush=True)
    return doc


if __name__ == "__main__":
    with user_errors():
        main()
