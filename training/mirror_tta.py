"""Mirrored targets in the client's test-time augmentation: does flipping the target left–right in half of the K
mixes lift Learned + TTA at the same server cost?

    python -m training.mirror_tta            # → results/mirror_tta.json (the table's 6 Dice volumes, K = 10)
    python -m training.mirror_tta --quick    # smoke run (the test's) → results/quick/mirror_tta.json

The paper's TTA (Eq. 5–6) varies the reference of each mix (one α shared by the K mixes). Mirroring, the usual TTA
of segmentation networks, is a variation the client can add for free: it mixes the mirrored target, x_mix = α·flip(x) + (1 − α)·x_ref,
unmixes as usual with the reference's labels, and flips D's answer back before the average of Eq. 6. The server sees
one proxy per mix as before; flipping that proxy (public) gives α·x + (1 − α)·flip(x_ref), a mix of the unflipped target
with a mirrored reference, so to the server mirroring is a reference bank that also holds each reference's mirror
image. The phantoms' template (MNI152, symmetric) is its own mirror image about its midline
(:data:`mixdemo.mixing.MIRROR_AXIS`), so a mirrored phantom is a phantom seen one voxel off centre.

Each Dice volume of the segmentation table (``training.evaluate``'s protocol: its scans, references, α and networks)
goes through the server twice per reference, as it is and mirrored, which gives, on the same draws:

* ``learned_tta``: the table's Learned + TTA (K mixes, none mirrored);
* ``learned_tta_mirror_half``: K mixes of which every second one is mirrored (the same server cost);
* ``learned_tta_mirror_all``: K mixes, all mirrored (does a mirrored target do as well as the target?);
* ``learned_tta_2k``: all 2·K mixes (twice the server's work: what more mixes of either kind give);
* the naive rows likewise, the first mix alone (``learned``, ``learned_mirrored``), and the baseline, alone and
  with its own mirroring TTA (``baseline_mirror``: the mean of its probabilities on the scan and its mirror image).

The rule, set before the first full run: mirroring half the mixes would be worth the client's default only if
Learned + TTA rises by at least 0.003 (average Dice) on the Dice volumes; the ratio to the baseline is given against
both baseline rows, since the baseline could be mirrored too.

``--part privacy`` (added after that run, and written into the same file beside its rows) measures what mirroring
changes for the attack lab's averaging attack on one request's K proxies (``mixdemo.attacks.tta_average``), on every
test scan downsampled ×2 with K random references and α ~ U(0.3, 0.5): the paper's proxies; half of them mirrored,
against an attacker who averages them as they come; and against one who knows the scheme (it is public) and mirrors
every second proxy back before averaging, which leaves mixes of the target with mirrored references.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from mixdemo.mixing import mirror
from training import command_line, count, evaluate, parse_with_out, user_errors, write_record

LEARNED_ROWS = ("learned", "learned_mirrored", "learned_tta", "learned_tta_mirror_half", "learned_tta_mirror_all",
                "learned_tta_2k")
NAIVE_ROWS = ("naive_tta", "naive_tta_mirror_half")
BASELINE_ROWS = ("baseline", "baseline_mirror")
ROWS = BASELINE_ROWS + NAIVE_ROWS + LEARNED_ROWS
GAIN_NEEDED = 0.003
PARTS = ("all", "utility", "privacy")
ATTACKERS = ("plain", "mirrored_unaware", "mirrored_aware")
ALPHA_RANGE_ATTACKS = (0.3, 0.5)  # the deployment's α (mixdemo.mixing.DEFAULT_ALPHA_RANGE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_table_draw_options(p)
    p.add_argument("--part", choices=PARTS, default="all",
                   help="utility (the Dice rows), privacy (the averaging attack; kept beside the Dice rows of an "
                        "existing --out) or all")
    p.add_argument("--attack-draws", type=count(1), default=5, help="draws of references and α for the privacy rows")
    args = parse_with_out(p, argv, "mirror_tta.json")
    return args


def mirrored_volume(vol: evaluate.Volume) -> evaluate.Volume:
    """The scan and its labels mirrored left–right (:func:`mixdemo.mixing.mirror`)."""
    return dataclasses.replace(vol, image=mirror(vol.image), labels=mirror(vol.labels))


def unflip(probs: torch.Tensor) -> torch.Tensor:
    """(K, C, X, Y, Z) answers for the mirrored target, back in the target's orientation."""
    return mirror(probs)


def scan_rows(rec, eval_args: argparse.Namespace, setup: evaluate.Setup) -> dict[str, dict[str, float]]:
    """Every row's Dice for one scan, each mix through the server as it is and mirrored."""
    from mixdemo.inference import segment_proxies
    from mixdemo.mixing import hard_labels

    k = eval_args.tta_k
    vol, refs, alphas, brain = evaluate.scan_draw(rec, eval_args.k_max, eval_args, setup)  # the table's draw,
    refs, alphas = refs[:k], alphas[:k]  # of which its Learned + TTA takes the first K
    naive, learned, _ = evaluate.predict_k(vol, refs, alphas, setup.seg, setup.unmix, brain)
    mirror_brain = None if brain is None else mirror(brain)
    m_naive, m_learned, _ = evaluate.predict_k(mirrored_volume(vol), refs, alphas, setup.seg, setup.unmix, mirror_brain)
    m_naive, m_learned = unflip(m_naive), unflip(m_learned)
    half = lambda plain, mirrored: torch.stack([plain[i] if i % 2 == 0 else mirrored[i] for i in range(k)])  # noqa: E731
    base = segment_proxies(setup.base, vol.image[None])[0].float()
    base_mirror = unflip(segment_proxies(setup.base, mirrored_volume(vol).image[None]))[0].float()
    probs = {
        "baseline": base, "baseline_mirror": (base + base_mirror) / 2,
        "naive_tta": naive[:k].float().mean(0), "naive_tta_mirror_half": half(naive, m_naive).float().mean(0),
        "learned": learned[0].float(), "learned_mirrored": m_learned[0].float(),
        "learned_tta": learned[:k].float().mean(0), "learned_tta_mirror_half": half(learned, m_learned).float().mean(0),
        "learned_tta_mirror_all": m_learned[:k].float().mean(0),
        "learned_tta_2k": torch.cat([learned[:k], m_learned[:k]]).float().mean(0),
    }
    return {row: evaluate.dice_row(evaluate.masked(hard_labels(p).numpy(), brain), vol.labels, setup.classes)
            for row, p in probs.items()}


def privacy(args: argparse.Namespace, eval_args: argparse.Namespace, setup: evaluate.Setup, argv: list[str] | None) -> dict:
    """The averaging attack on one request's K proxies of each test scan, for each attacker (:data:`ATTACKERS`)."""
    from mixdemo.attacks import reid
    from mixdemo.attacks import tta_average as tta
    from mixdemo.data import load_cohort, load_volumes
    from mixdemo.metrics import msssim_3d_batch
    from mixdemo.mixing import alternate_mirroring

    t0 = time.perf_counter()
    test = [evaluate.crop_volume(v, eval_args.crop) for v in load_volumes(load_cohort(eval_args.data).split("test"))]
    targets = reid.downsample(np.stack([v.image for v in test]))
    pool = reid.downsample(np.stack([r.image for r in setup.by_id.values()]))
    template = reid.downsample(evaluate.central_cube(tta.template_brain(), eval_args.crop))
    identities = [v.subject for v in test]
    k = min(eval_args.tta_k, len(pool))
    flags = np.array(alternate_mirroring(k))
    lo, hi = ALPHA_RANGE_ATTACKS
    guess = float(np.mean(ALPHA_RANGE_ATTACKS))
    rng = np.random.default_rng(args.seed)
    scores: dict[str, dict[str, list[float]]] = {a: {"msssim": [], "reid_map": []} for a in ATTACKERS}
    for _ in range(args.attack_draws):
        estimates: dict[str, list[np.ndarray]] = {a: [] for a in ATTACKERS}
        for target in targets:
            refs = pool[rng.choice(len(pool), size=k, replace=False)]
            alpha = np.float32(rng.uniform(lo, hi))
            plain = alpha * target[None] + (1 - alpha) * refs
            mirrored = plain.copy()
            mirrored[flags] = alpha * mirror(target)[None] + (1 - alpha) * refs[flags]
            aware = mirrored.copy()
            aware[flags] = mirror(mirrored[flags])  # every second proxy mirrored back
            for attacker, proxies in zip(ATTACKERS, (plain, mirrored, aware)):
                estimates[attacker].append(tta.running_tta_estimates(proxies, template, guess, [k])[k])
        for attacker, est in estimates.items():
            est = np.stack(est)
            scores[attacker]["msssim"].append(float(msssim_3d_batch(est, targets, data_range=1.0).mean()))
            scores[attacker]["reid_map"].append(reid.retrieval(est, identities).map)
    return {"command": command_line("training.mirror_tta", argv), "date": time.strftime("%Y-%m-%d"),
            "alpha_range": [lo, hi], "k": k, "n_scans": len(targets), "draws": args.attack_draws,
            "downsample": reid.DOWNSAMPLE,
            **{a: {f"averaging_attack_{m}": round(float(np.mean(v)), 4) for m, v in scores[a].items()}
               | {f"averaging_attack_{m}_std": round(float(np.std(v)), 4) for m, v in scores[a].items()}
               for a in ATTACKERS},
            "seconds": round(time.perf_counter() - t0)}


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """The parts asked for; returns the JSON document (with ``--part privacy``, the existing one with its privacy
    rows replaced)."""
    eval_args = evaluate.table_draw_arguments(args)
    setup = evaluate.set_up(eval_args)
    if args.part == "privacy":
        if not args.out.exists():
            raise SystemExit(f"--part privacy adds its rows to {args.out}, which does not exist: run --part utility first.")
        doc = json.loads(args.out.read_text())
    else:
        doc = utility(args, eval_args, setup, argv)
    if args.part != "utility":
        doc["privacy"] = privacy(args, eval_args, setup, argv)
    write_record(args.out, doc)
    return doc


def utility(args: argparse.Namespace, eval_args: argparse.Namespace, setup: evaluate.Setup, argv: list[str] | None) -> dict:
    """Every Dice row on the table's Dice volumes."""
    t0 = time.perf_counter()
    per_scan: dict[str, dict[str, dict[str, float]]] = {}
    for rec in sorted(setup.dice_records, key=lambda r: r.name):
        per_scan[rec.name] = scan_rows(rec, eval_args, setup)
        rows = per_scan[rec.name]
        print(f"[{time.perf_counter() - t0:5.0f} s] {rec.name}: " + ", ".join(f"{r} {rows[r]['avg']:.4f}" for r in ROWS), flush=True)
    dice = {row: evaluate.mean_rows([scan[row] for scan in per_scan.values()]) for row in ROWS}
    gains = [scan["learned_tta_mirror_half"]["avg"] - scan["learned_tta"]["avg"] for scan in per_scan.values()]
    gain = round(dice["learned_tta_mirror_half"]["avg"] - dice["learned_tta"]["avg"], 4)
    ratio = lambda row, base: round(dice[row]["avg"] / dice[base]["avg"], 4)  # noqa: E731
    doc = evaluate.study_record(
        "training.mirror_tta", argv,
        "Does mirroring the target left-right in every second mix of the client's TTA lift Learned + TTA at the same "
        "server cost?",
        f"set before the first full run: worth the client's default only if Learned + TTA rises by at least "
        f"{GAIN_NEEDED} (average Dice) on the Dice volumes",
        evaluate.protocol(eval_args, len(per_scan), len(setup.by_id)), setup, t0,
        {"classes": list(setup.classes.values()),
         "dice": dice,
         "learned_tta_gain": gain,
         "learned_tta_gain_per_volume": [round(g, 4) for g in gains],
         "passes_rule": gain >= GAIN_NEEDED,
         "ratio_to_baseline": {row: {"baseline": ratio(row, "baseline"), "baseline_mirror": ratio(row, "baseline_mirror")}
                               for row in ("learned_tta", "learned_tta_mirror_half", "learned_tta_2k")},
         "dice_per_volume": {scan: {row: round(r[row]["avg"], 4) for row in ROWS} for scan, r in per_scan.items()}})
    return doc


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    doc = run(args, argv)
    print(json.dumps({"dice": {r: v["avg"] for r, v in doc["dice"].items()}, "gain": doc["learned_tta_gain"],
                      "passes_rule": doc["passes_rule"], "ratio_to_baseline": doc["ratio_to_baseline"],
                      **({"privacy": {a: doc["privacy"][a] for a in ATTACKERS}} if "privacy" in doc else {})}, indent=1))
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    with user_errors():
        main()
