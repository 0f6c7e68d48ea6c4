"""Render the figures of ``results/*.json`` into the README and the model cards.

    python -m training.report            # rewrite the marked README sections and weights/*/README.md
    python -m training.report --check    # exit 1 if the README is out of date with results/ (or lost a block's marker)

The README holds blocks between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; each
is generated here from the JSON that a committed command wrote, so no number is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from mixdemo.attacks.reid import DOWNSAMPLE as REID_DOWNSAMPLE  # reference_choice's factor
from mixdemo.mixing import TRAIN_ALPHA_RANGE
from mixdemo.weights import DEFAULT_UNMIXING, read_training_record, write_model_card
from mixdemo.weights import unmixing_where as d_where  # the tables' words for where a D's blocks run

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
LABELS = {"baseline": "Baseline (no mixing)", "naive": "Naive (Eq. 4)", "naive_tta": "Naive + TTA",
          "learned": "Learned (D)", "learned_tta": "Learned + TTA"}
PAPER = {"baseline": 0.896, "naive": 0.693, "naive_tta": 0.825, "learned": 0.840, "learned_tta": 0.889}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def refreshed(doc: dict) -> str:
    """The sentence saying a file's baseline rows were re-measured alone (``training.refresh_baseline``), if they were."""
    r = doc.get("baseline_refresh")
    return (f"The baseline's rows re-measured alone with the current baseline by `{r['command']}` ({r['date']}); "
            "the command(s) above reproduce them. ") if r else ""


def evaluation_protocol(doc: dict, volumes: str = "phantom test volumes") -> str:
    """How a ``training.evaluate`` JSON was measured: its command, volumes and their extent, α, TTA, seed, date."""
    extent = f"central {doc['crop']}³ crop" if doc.get("crop") else "whole volumes"
    if doc.get("brain_mask"):
        extent += ", predictions restricted to the target's own brain"
    return (f"measured by `{doc['command']}` on {doc['n_volumes']} held-out {volumes} ({extent}), "
            f"α ~ U{tuple(doc['alpha_range'])}, TTA with K = {doc['tta_k']} references from a pool of "
            f"{doc['reference_pool']} training scans, seed {doc['seed']}, {doc['date']}"
            + (f" ({doc['seconds'] / 60:.0f} min)" if "seconds" in doc else "") + ". " + refreshed(doc))


def segmentation_md(doc: dict) -> str:
    """Table 1 (Dice and ICC) and the Fig. 3 summary."""
    lines = [
        "M" + evaluation_protocol(doc)[1:] + "**MNI152-derived phantoms, not patients.**",
        "",
        "| Dice | GM | WM | CSF | Avg | paper (PPMI) Avg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in LABELS.items():
        row = doc["dice"][key]
        lines.append(f"| {label} | {_f(row['GM'])} | {_f(row['WM'])} | {_f(row['CSF'])} | **{_f(row['avg'])}** | {PAPER[key]:.3f} |")
    base, ltta = doc["dice"]["baseline"]["avg"], doc["dice"]["learned_tta"]["avg"]
    lines += ["", f"Learned + TTA reaches {ltta / base:.3f} × the baseline's average Dice (paper: 0.992 ×)"
              + ratio_interval(doc) + ".", ""]
    icc = doc["icc"]
    components = all("scan_sd" in icc[c] for c in ("GM", "WM", "CSF"))
    lines += icc_table(icc, "test–retest ICC(C,1)", "references" if components else None)
    lines.append(f"\n(ICC of the per-scan Dice of two learned predictions with disjoint references, n = {doc['n_icc_scans']} scans"
                 + ("; ICC = s² / (s² + r²).)" if components else ".)"))
    if "icc_tta" in doc:
        lines += ["", *icc_tta_md(doc)]
    curve = {m: dict(map(tuple, doc["dice_vs_k"][m])) for m in ("naive", "learned")}
    ks = [k for k in (1, 2, 5, 10, 15, 20, 30) if k in curve["naive"]]
    lines += ["", "| K (Fig. 3) | " + " | ".join(str(k) for k in ks) + " |", "| --- |" + " --- |" * len(ks)]
    for m in ("naive", "learned"):
        lines.append(f"| {m.capitalize()} + TTA | " + " | ".join(_f(curve[m][k]) for k in ks) + " |")
    return "\n".join(lines)


LESION_COHORT = "python -m mixdemo.phantoms --out data/phantoms-lesions --lesions 15 --jobs 2"


def _lesion_training(out: str, centres: str = "", seed: int = 0) -> tuple[tuple[str, ...], str]:
    """The commands that trained a lesion block's three networks under ``out`` (``centres``: the
    ``--patch-centres`` option they were given, if any), and the weights folder they wrote."""
    option = f" --patch-centres {centres}" if centres else ""
    return ((f"python -m training.train --mode private --data data/phantoms-lesions{option} --steps 2400 --lr 1.5e-3 "
             f"--unmix-patch 2 --precision bfloat16 --channels-last --threads 2 --seed {seed} --out {out}/weights "
             f"--run-dir {out}/runs/private",
             f"python -m training.train --mode baseline --data data/phantoms-lesions{option} --steps 2000 --lr 1.5e-3 "
             f"--precision bfloat16 --channels-last --threads 2 --seed {seed} --out {out}/weights "
             f"--run-dir {out}/runs/baseline"),
            f"{out}/weights")


LESION_RUNS = {"lesion_cohort": _lesion_training("/tmp/lesions"),
               "lesion_cohort_balanced": _lesion_training("/tmp/lb", "classes")}
LESION_SEED_RUN = ("lesion_cohort_balanced_seed1", *_lesion_training("/tmp/lb1", "classes", seed=1))
"""The class-balanced S + D again with another seed (its results file, training command and weights folder, where
``baseline`` links to the class-balanced run's): evaluated as the lesion blocks are."""
"""Each lesion block's results file: the commands that trained the networks its evaluation scored, and the
weights folder they wrote (``MIXDEMO_WEIGHTS_DIR`` of the evaluation, whose own command is in the JSON)."""

MISSED_DICE = 0.05
"""A class whose baseline Dice is below this the baseline does not find: no ratio to it is given."""


def lesions_md(doc: dict, run: str = "lesion_cohort") -> str:
    """A cohort with its own classes, trained: every class's Dice (the evaluation's five rows) and test-retest ICC."""
    classes = list(doc["classes"])
    training, weights_dir = LESION_RUNS[run]
    if doc.get("weights_dir", weights_dir) != weights_dir:
        raise ValueError(f"results/{run}.json scored the networks in {doc['weights_dir']}, not in {weights_dir}, "
                         "which LESION_RUNS's commands wrote: name the commands that trained them there.")
    lines = [
        "Made by " + "; ".join(f"`{c}`" for c in (LESION_COHORT, *training))
        + f"; with `MIXDEMO_WEIGHTS_DIR={weights_dir}`, "
        + evaluation_protocol(doc, "test volumes of that cohort") + "**MNI152-derived phantoms with synthetic "
        "lesions, not patients.**",
        "",
        "| Dice | " + " | ".join(classes) + " | Avg |",
        "| --- |" + " --- |" * (len(classes) + 1),
    ]
    for key, label in LABELS.items():
        row = doc["dice"][key]
        lines.append(f"| {label} | " + " | ".join(_f(row[c]) for c in classes) + f" | **{_f(row['avg'])}** |")
    base, ltta = doc["dice"]["baseline"]["avg"], doc["dice"]["learned_tta"]["avg"]
    lines += ["", f"Learned + TTA reaches {ltta / base:.3f} × the baseline's average Dice" + ratio_interval(doc) + "."]
    missed = [c for c in classes if doc["dice"]["baseline"][c] < MISSED_DICE]
    if missed:
        found = [c for c in classes if c not in missed]
        mean = lambda key: sum(doc["dice"][key][c] for c in found) / len(found)  # noqa: E731
        lines[-1] += (f" That ratio says nothing about what privacy costs: the baseline, trained as briefly, labels "
                      f"almost none of the {', '.join(missed)} voxels (Dice below {MISSED_DICE}), where Learned + TTA scores "
                      + ", ".join(_f(doc["dice"]["learned_tta"][c]) for c in missed)
                      + f". Over the other classes ({', '.join(found)}) Learned + TTA reaches "
                      f"{mean('learned_tta') / mean('baseline'):.3f} × the baseline.")
    lines += ["", f"| test–retest ICC(C,1), n = {doc['n_icc_scans']} scans | " + " | ".join(classes) + " |",
              "| --- |" + " --- |" * len(classes),
              "| ICC [95 % CI] | " + " | ".join(icc_cell(doc["icc"][c]) for c in classes) + " |"]
    return "\n".join(lines)


def lesions_balanced_md(doc: dict) -> str:
    """The lesion cohort trained on class-balanced patches, and each row's Dice beside the label-centred run's."""
    text = lesions_md(doc, "lesion_cohort_balanced")
    labelled = _load("lesion_cohort")
    if labelled is None or labelled["classes"] != doc["classes"]:
        return text
    classes = list(doc["classes"])
    lines = ["", "| Dice, label-centred → class-balanced patches | " + " | ".join(classes) + " | Avg |",
             "| --- |" + " --- |" * (len(classes) + 1)]
    for key, label in LABELS.items():
        pairs = [(labelled["dice"][key][c], doc["dice"][key][c]) for c in (*classes, "avg")]
        lines.append(f"| {label} | " + " | ".join(f"{_f(a)} → {_f(b)}" for a, b in pairs) + " |")
    runs = {"label-centred": labelled, "class-balanced": doc}
    better = max(runs, key=lambda run: runs[run]["dice"]["learned_tta"]["avg"])
    best, base = runs[better]["dice"]["learned_tta"], doc["dice"]["baseline"]
    per_volume = [runs[better]["dice_per_volume"][scan]["learned_tta"] / doc["dice_per_volume"][scan]["baseline"]
                  for scan in sorted(doc["dice_per_volume"]) if scan in runs[better]["dice_per_volume"]]
    lines += ["", f"The better Learned + TTA of the two ({better} patches) reaches {best['avg'] / base['avg']:.3f} × "
              "the class-balanced baseline's average Dice (each volume's own ratio: "
              + ", ".join(f"{r:.3f}" for r in per_volume) + "), class by class "
              + ", ".join(f"{c} {best[c] / base[c]:.3f} ×" for c in classes if base[c] >= MISSED_DICE) + "."]
    return text + "\n" + "\n".join(lines + lesion_seed_lines(doc))


def lesion_seed_lines(doc: dict) -> list[str]:
    """The class-balanced S + D of :data:`LESION_SEED_RUN` (another seed) beside ``doc``'s, row by row."""
    name, (command, _), weights_dir = LESION_SEED_RUN  # its S + D (the baseline is the class-balanced run's)
    seed = _load(name)
    if seed is None:
        return []
    if (seed.get("weights_dir") != weights_dir or seed["classes"] != doc["classes"]
            or seed["weights_sha256"]["baseline"] != doc["weights_sha256"]["baseline"]):
        raise ValueError(f"results/{name}.json scored other networks or classes than LESION_SEED_RUN names "
                         "(its baseline: the class-balanced run's).")
    classes = list(doc["classes"])
    lines = ["", f"Another seed of the class-balanced S + D, `{command}` (the same baseline, linked into "
             f"`{weights_dir}`), measured by `{seed['command']}` with `MIXDEMO_WEIGHTS_DIR={weights_dir}`:", "",
             "| Dice, class-balanced S + D: seed 0 → seed 1 | " + " | ".join(classes) + " | Avg |",
             "| --- |" + " --- |" * (len(classes) + 1)]
    for key, label in LABELS.items():
        if key != "baseline":
            pairs = [(doc["dice"][key][c], seed["dice"][key][c]) for c in (*classes, "avg")]
            lines.append(f"| {label} | " + " | ".join(f"{_f(a)} → {_f(b)}" for a, b in pairs) + " |")
    return lines


def icc_tta_md(doc: dict) -> list[str]:
    """The test–retest ICC of the deployed output: two Learned + TTA predictions of each scan (``icc_tta``)."""
    icc, k = doc["icc_tta"], doc["icc_tta_k"]
    return [f"The same for what the client keeps, Learned + TTA: two predictions of each scan with K = {k} references "
            "each, disjoint (not the paper's measure, which is the one above, of single predictions):", "",
            *icc_table(icc, f"test–retest ICC(C,1), Learned + TTA (K = {k} each)", "reference sets")]


def icc_cell(entry: dict) -> str:
    """One class's ICC with its 95 % interval, as every ICC table shows it."""
    return f"{_f(entry['icc'])} [{_f(entry['ci95'][0], 2)}, {_f(entry['ci95'][1], 2)}]"


def icc_table(icc: dict, title: str, varied: str | None) -> list[str]:
    """An ICC table per class: the ICC row, then (``varied`` naming what differs between a scan's two predictions)
    the two SD rows of its variance components."""
    classes = ("GM", "WM", "CSF")
    lines = [f"| {title} | GM | WM | CSF |", "| --- | --- | --- | --- |",
             "| ICC [95 % CI] | " + " | ".join(icc_cell(icc[c]) for c in classes) + " |"]
    if varied:
        for key, label in (("scan_sd", "SD of Dice between scans (s)"), ("reference_sd", f"SD of Dice between {varied} (r)")):
            lines.append(f"| {label} | " + " | ".join(_f(icc[c][key]) for c in classes) + " |")
    return lines


def ratio_interval(doc: dict) -> str:
    """The ratio's paired bootstrap interval over the volumes and each volume's own ratio, when recorded."""
    entry = doc.get("ratio_to_baseline", {}).get("learned_tta")
    if not entry or entry["ci95"][0] is None:
        return ""
    per_volume = doc.get("dice_per_volume", {})
    each = ", ".join(f"{v['learned_tta'] / v['baseline']:.3f}" for _, v in sorted(per_volume.items()))
    return (f"; 95 % interval {entry['ci95'][0]:.3f}–{entry['ci95'][1]:.3f} by a paired bootstrap over the "
            f"{doc['n_volumes']} volumes" + (f" (each volume's own ratio: {each})" if each else ""))


def privacy_md(doc: dict) -> str:
    """The paper's attacks (BSS, re-identification) and, where measured, the stronger ones."""
    bss, reid = doc.get("bss", {}), doc.get("reid", {})
    commands = doc.get("commands") or [doc.get("command", "?")]
    d = doc.get("models", {}).get("unmixing") or next(  # files written before the record named its networks
        (n for n in doc.get("weights_sha256", {}) if n.startswith("unmixing") and not n.endswith("-2ref")), None)
    networks = f"The sections that unmix use S `segmentation` and D {d_label(d)}. " if d else ""
    lines = [f"Measured by {' then '.join(f'`{c}`' for c in commands)} ({doc.get('date', '?')}). " + networks
             + "**MNI152-derived phantoms, not patients.**", ""]
    if bss:
        lines += ["| Blind source separation (MS-SSIM to the true target) | mean ± sd | n |", "| --- | --- | --- |"]
        for key, label in (("alpha_known", "Langevin, α known"), ("alpha_unknown", "Langevin, α unknown"),
                           ("control", "positive control (reference known to the attacker)"),
                           ("alpha_known_same_proxies", "schedule: from σ_1, Gaussian tail above σ = 3 (the attack's), 1 chain"),
                           ("alpha_known_full_schedule", "ablation: the network's score at every level from σ_1"),
                           ("alpha_known_skip_high_levels", "ablation: levels above σ = 3 skipped")):
            if key in bss:
                b = bss[key]
                if b.get("alpha_grid"):  # α unknown: the α the attacker searched
                    label += f" (searched over α ∈ [{min(b['alpha_grid']):.2f}, {max(b['alpha_grid']):.2f}])"
                sd = f" ± {_f(b.get('msssim_std'))}" if b.get("msssim_std") is not None else ""
                n = f"{b['n_proxies']} proxies × {b['n_init']} chains" if "n_proxies" in b and "n_init" in b else b.get("n", "—")
                lines.append(f"| {label} | {_f(b.get('msssim_mean'))}{sd} | {n} |")
        chance = bss.get("chance", {})
        if chance:
            lines += ["", f"Chance levels: the proxy itself has MS-SSIM {_f(chance.get('proxy_vs_target_msssim_mean'))} "
                      f"to the target, another subject's patch {_f(chance.get('other_subject_vs_target_msssim_mean'))}."]
        denoise = bss.get("control", {}).get("denoise")
        if denoise:
            verdict = ("denoises" if denoise["msssim_langevin_denoised"] > denoise["msssim_noisy"]
                       else "does not denoise")
            lines += ["", f"The prior alone, on test patches with noise σ = {_f(denoise['sigma'], 2)} (MS-SSIM "
                      f"{_f(denoise['msssim_noisy'])} to the clean patch): one Tweedie step gives "
                      f"{_f(denoise['msssim_tweedie_denoised'])}, annealed Langevin from the noisy patch "
                      f"{_f(denoise['msssim_langevin_denoised'])}: the chain {verdict}."]
        lang = bss.get("langevin", {})
        if lang.get("tail"):
            lines += ["", f"Langevin: {lang.get('levels_run')} levels from σ_1 = {_f(lang.get('sigma_1'), 1)} to σ_L = "
                      f"{_f(lang.get('sigma_L'), 2)}, T = {lang.get('steps_per_level')} steps each, δ = {lang.get('delta')}; "
                      f"the score network at the {lang.get('levels_with_network_score')} levels with σ ≤ {lang.get('max_sigma')}, "
                      f"above them the Gaussian N({_f(lang['tail'][0])}, {_f(lang['tail'][1])} + σ²) of the training scans' brain patches."]
        lines += ["", "Paper (PPMI): 0.602 ± 0.104.", ""]
    if reid:
        lines += ["| Re-identification | F1 | mAP | paper mAP |", "| --- | --- | --- | --- |"]
        for key, label, paper in (("no_proxy", "No proxy", "0.998"), ("mixup", "Mixup proxy", "0.352"),
                                  ("proxy_vs_raw_scans", "Mixup proxy against identified raw scans (a server that "
                                   "holds earlier visits; deviations from the template correlated)", "—"),
                                  ("chance", "Chance (a random ranking of this gallery)", "—")):
            if key in reid:
                lines.append(f"| {label} | {_f(reid[key].get('f1'))} | {_f(reid[key].get('map'))} | {paper} |")
        if "chance" in reid and "mixup" in reid:
            paper_chance = sum(1 / r for r in range(1, 181)) / 180  # 181 test images, one other scan each, at best
            kept = (reid["mixup"]["map"] - reid["chance"]["map"]) / (1 - reid["chance"]["map"])
            lines += ["", f"Chance falls as the gallery grows: {reid.get('n_scans')} scans here; the paper encoded "
                      f"PPMI's 181 test images (or all 773), where a random ranking's mAP is {paper_chance:.2f} or "
                      f"less. Measured from chance (mAP − chance) / (1 − chance), the mixup proxies keep "
                      f"{kept:.2f} of the way to perfect re-identification here, the paper's "
                      f"{(0.352 - paper_chance) / (1 - paper_chance):.2f}."]
        lines.append("")
    if doc.get("tta_average"):
        pts = doc["tta_average"]
        lines += ["| TTA-averaging attack: K proxies of one target averaged | " + " | ".join(f"K={int(p[0])}" for p in pts) + " |",
                  "| --- |" + " --- |" * len(pts),
                  "| MS-SSIM to target | " + " | ".join(_f(p[1]) for p in pts) + " |",
                  "| re-id mAP | " + " | ".join(_f(p[2]) for p in pts) + " |", ""]
    if doc.get("output_leakage"):
        leak = doc["output_leakage"]
        chance = ""
        if leak.get("chance_dice_template") is not None:
            chance = (f" Without any proxy, the public template's labels at the same places score "
                      f"{_f(leak['chance_dice_template'])} and another subject's {_f(leak.get('chance_dice_other_subject'))}: "
                      f"the output adds {leak['dice_vs_target'] - leak['chance_dice_template']:+.3f} over what is public.")
        lines += [f"Output leakage: the arg-max of the server's own mixed segmentation matches the target's labels "
                  f"with Dice {_f(leak.get('dice_vs_target'))}.{chance}", ""]
    reuse = doc.get("reference_reuse")
    if isinstance(reuse, dict) and "reference_msssim_mean" in reuse:
        lines += [f"Reference reuse: with a bank of {reuse.get('bank_size')} references and {reuse.get('n_targets')} targets, "
                  f"averaging the proxies that share a reference recovers it with MS-SSIM "
                  f"{_f(reuse.get('reference_msssim_mean'))}; subtracting it recovers targets with MS-SSIM "
                  f"{_f(reuse.get('target_msssim_mean'))} and re-identification mAP {_f(reuse.get('target_reid_map'))}"
                  f" (the proxies themselves: {_f(reuse.get('baseline_proxy_reid_map'))}).", ""]
        larger = doc.get("reference_reuse_larger_bank")
        if isinstance(larger, dict):
            lines[-1:-1] = [f"With a bank of {larger['bank_size']} (the demo client's size) the same attack recovers "
                            f"references with MS-SSIM {_f(larger.get('reference_msssim_mean'))} and targets with "
                            f"re-identification mAP {_f(larger.get('target_reid_map'))} (the proxies: "
                            f"{_f(larger.get('baseline_proxy_reid_map'))})."]
    bank = doc.get("known_bank")
    if isinstance(bank, dict):
        lines += [f"Known bank: a server that knows the client's bank of {bank['bank_size']} references (public, as the "
                  f"demo's, or leaked) but neither which one nor α inverts each single proxy: it finds the reference in "
                  f"{bank['reference_hit_rate']:.0%} of {bank['n_targets'] * bank['n_draws']} proxies, α to "
                  f"{_f(bank['alpha_abs_error_mean'])} on average, and recovers the target with MS-SSIM "
                  f"{_f(bank['estimate_msssim_mean'])} (the proxy itself: {_f(bank['proxy_msssim_mean'])}) and "
                  f"re-identification mAP {_f(bank['estimate_reid_map'])} (the proxies: {_f(bank['proxy_reid_map'])}).", ""]
    inv = doc.get("inversion")
    if isinstance(inv, dict):
        minutes = f", {inv['train_seconds'] / 60:.0f} minutes on {inv['hardware']}" if inv.get("train_seconds") else ""
        trained = (f"trained on {inv['server_scans']} scans of {inv['server_subjects']} subjects of its own for "
                   f"{inv['steps']:,} steps (`python -m training.train_inversion`{minutes})" if inv.get("trained")
                   else "untrained (no `weights/inversion`: a stand-in, its figures say nothing)")
        higher = sum(e > p for e, p in zip(inv.get("estimate_reid_map_per_draw", []), inv.get("proxy_reid_map_per_draw", [])))
        seen = ("some of them among its own" if inv.get("references_among_server_scans") else "none of them among its own")
        win = inv.get("on_windows")
        windows = "" if not isinstance(win, dict) else (
            f" On windows of its training patches instead: MS-SSIM {_f(win['estimate_msssim_mean'])}, mAP "
            f"{_f(win['estimate_reid_map'])} (higher in "
            f"{sum(e > p for e, p in zip(win['estimate_reid_map_per_draw'], inv['proxy_reid_map_per_draw']))} of "
            f"{inv['n_draws']}).")
        lines += [f"Learned inversion: a server's 3D U-Net that predicts the target from the proxy, {trained}, inverts "
                  f"single proxies mixed with the client's bank ({inv['client_bank_subjects']} subjects, {seen}): it "
                  f"recovers targets with MS-SSIM {_f(inv['estimate_msssim_mean'])} (the proxy itself: "
                  f"{_f(inv['proxy_msssim_mean'])}) and re-identification mAP {_f(inv['estimate_reid_map'])} (the "
                  f"proxies: {_f(inv['proxy_reid_map'])}; higher in {higher} of {inv['n_draws']} draws of the "
                  f"{inv['n_targets']} test scans' proxies), inverting each whole volume.{windows}", ""]
        chained = inv.get("tta_request")
        if isinstance(chained, dict):
            net, closed, avg = chained["network"], chained["closed_form"], chained["average"]
            lines[-1:-1] = [
                f"The two chained on the paper's TTA request: the server averages the K = {chained['k']} proxies of "
                f"one request (one α, K references from the same bank) and gives the average to the same network. "
                f"It recovers targets with MS-SSIM {_f(net['msssim_mean'])} and re-identification mAP "
                f"{_f(net['reid_map'])}, against {_f(closed['msssim_mean'])} and {_f(closed['reid_map'])} for the "
                f"averaging attack's closed form and {_f(avg['msssim_mean'])} and {_f(avg['reid_map'])} for the "
                f"average itself, on the same {chained['n_draws']} draws of the {chained['n_targets']} test scans' "
                f"requests (`inversion.averaged_inversion_experiment`)."]
    if doc.get("alpha_sweep"):
        inverted = {tuple(r["alpha_range"]): r for r in (inv or {}).get("alpha_sweep", [])} if isinstance(inv, dict) else {}
        extra = " learned inversion mAP [its proxies'] |" if inverted else ""
        lines += ["| α range | Learned+TTA Dice | re-id mAP | BSS MS-SSIM | output-leakage Dice |" + extra,
                  "| --- | --- | --- | --- | --- |" + (" --- |" if inverted else "")]
        for row in doc["alpha_sweep"]:
            lo, hi = row["alpha_range"]
            cell = ""
            if inverted:
                r = inverted.get((lo, hi))
                cell = f" {_f(r['estimate_reid_map'])} [{_f(r['proxy_reid_map'])}] |" if r else " — |"
            lines.append(f"| [{lo:.2f}, {hi:.2f}] | {_f(row.get('dice_learned_tta'))} | {_f(row.get('reid_map'))} | "
                         f"{_f(row.get('bss_msssim'))} | {_f(row.get('output_leakage_dice'))} |" + cell)
        if inverted:
            n = next(iter(inverted.values()))["n_draws"]
            lines += ["", f"(The learned inversion's column: the network trained at the client's range, on single proxies "
                          f"mixed with the client's bank at each range, {n} draws (the inversion section's protocol); its "
                          f"proxies' own mAP in brackets, with that bank as references, where the re-id column's "
                          f"references are every training scan.)"]
        lines.append("")
    if doc.get("defences"):
        lines += ["| Defence | attack MS-SSIM | re-id mAP | Dice |", "| --- | --- | --- | --- |"]
        for name, row in doc["defences"].items():
            if not isinstance(row, dict):
                if isinstance(row, str):
                    lines.append(f"| {name.replace('_', ' ')} | {row} | | |")
                continue
            lines.append(f"| {name.replace('_', ' ')} | {_f(row.get('attack_msssim'))} | {_f(row.get('reid_map'))} | {_f(row.get('dice_avg'))} |")
        shuffled = doc["defences"].get("separate_shuffled_requests")
        if reid.get("mixup") and isinstance(shuffled, dict):
            lines += ["", f"Separate shuffled requests stop the server linking the K proxies (re-id mAP "
                      f"{_f(shuffled.get('reid_map'))} by averaging the proxies it links), but each proxy is still there "
                      f"on its own: single proxies are re-identified with mAP {_f(reid['mixup']['map'])} at the same α "
                      f"range (the re-identification table), which is what this defence leaves a server."]
        if isinstance(doc["defences"].get("two_references"), dict):
            lines += ["", "Two references per mix (three sources, S and D trained for it) against one reference, same "
                      "targets, references and α:", "", two_references_md(doc, header=False)]
    return "\n".join(lines).rstrip()


BENCH_TARGETS = {  # key: (target text, test) — the performance issue's targets on 2 cores
    "private_k1_s": ("≤ 20 s", lambda v: v <= 20),
    "patch_k10_s": ("≤ 1 s", lambda v: v <= 1),
    "app_patch_k3_s": ("< 2 s (app issue)", lambda v: v < 2),
    "privacy_tax": ("≤ 1.10", lambda v: v <= 1.10),
    "tta10_over_k1": ("≤ 10", lambda v: v <= 10),
    "client_share": ("≤ 0.05", lambda v: v <= 0.05),
    "flop_efficiency": ("≥ 0.5", lambda v: v >= 0.5),
    "peak_rss_mb": ("≤ 4096 MB", lambda v: v <= 4096),
}


def target_verdict(key: str, value: float) -> str:
    """'met' or '**missed**': ``value`` against the benchmark target of ``key`` (:data:`BENCH_TARGETS`)."""
    return "met" if BENCH_TARGETS[key][1](value) else "**missed**"


def allocation(row: dict, kept_by_default: bool | None = None) -> tuple[str, bool]:
    """How a bench row's process allocated, in words, and whether that is the default. ``kept_by_default``:
    the run's own default (its ``keeps_freed_memory``; runs since freed memory is handed back after each pass
    record it), else older runs: with ``huge_pages`` the allocator as it comes was their default; before the
    huge pages lever (no ``huge_pages``) freed memory kept; before the allocator lever they carry neither."""
    kept, huge = row.get("keeps_freed_memory"), row.get("huge_pages")
    if kept is None:
        return "", True
    kept_memory = ("allocator keeps freed memory within a pass, hands it back after" if kept_by_default is not None
                   else "allocator keeps freed memory")
    memory = kept_memory if kept else "allocator as it comes"
    if huge is None:
        return memory, kept
    default_kept = False if kept_by_default is None else kept_by_default
    return f"{'huge pages' if huge else 'no huge pages'}, {memory}", huge and kept == default_kept


def patch_floor(doc: dict) -> str:
    """Patch mode's arithmetic (S and the default D on K = 10 proxies of 32³), from S's and D's GFLOP on the
    benchmark's volume, and its time at the run's convolution peak: how fast the host could answer at best."""
    d_row = next((r for r in (doc.get("levers") or {}).get("unmix_nets") or [] if r["model"] == DEFAULT_UNMIXING), None)
    if "conv_peak_gflops" not in doc or d_row is None or "gflop" not in d_row:
        return ""
    per_voxel = (doc["s_gflops"] * doc["baseline_s"] + d_row["gflop"]) / math.prod(doc["volume_shape"])
    gflop = per_voxel * 10 * 32**3
    seconds = gflop / doc["conv_peak_gflops"]
    return f" (S's and D's arithmetic: {gflop:.0f} GFLOP, {seconds:.2f} s at the convolution peak below)"


def cpu_md(doc: dict) -> str:
    """The benchmark's CPU in words: its model and the instruction sets that set S's and D's speed (runs before
    ``cpu_features`` was recorded: whether it had native bfloat16, from the precision levers)."""
    features = doc.get("cpu_features")
    if features is None:
        native = (doc.get("levers") or {}).get("bfloat16_native")
        return doc["cpu"] if native is None else f"{doc['cpu']} ({'with' if native else 'without'} bfloat16 instructions)"
    bfloat16 = any(name.endswith("BF16") for name in features)
    return (f"{doc['cpu']} ({', '.join(features) or 'neither AVX2 nor AVX-512'}; "
            f"{'with' if bfloat16 else 'without'} bfloat16 instructions)")


def bench_md(doc: dict) -> str:
    """The performance table, each figure beside its target (met or missed)."""

    def target(key: str) -> str:
        return f"{BENCH_TARGETS[key][0]}: {target_verdict(key, doc[key])}" if key in BENCH_TARGETS else ""

    peak_in = f", both in {doc['peak_dtype']}" if doc.get("peak_dtype", "float32") != "float32" else ""
    app_on = f", on {doc['app_device']}" if doc.get("app_device", "cpu") != "cpu" else ""  # the app's networks: on a GPU
    rows = [
        ("baseline whole brain", f"{doc['baseline_s']:.1f} s", ""),
        ("private, learned unmixing, K = 1", f"{doc['private_k1_s']:.1f} s", target("private_k1_s")),
        ("private, K = 10", f"{doc['private_k10_s']:.1f} s", ""),
        ("patch mode (32³), K = 10", f"{doc['patch_k10_s']:.2f} s{patch_floor(doc)}", target("patch_k10_s")),
        *([("app, Segment tab, patch mode, K = 3 (mix → server → unmix → render)" + app_on, f"{doc['app_patch_k3_s']:.2f} s",
            target("app_patch_k3_s"))] if doc.get("app_patch_k3_s") is not None else []),
        ("privacy tax (K=1 / baseline)", f"{doc['privacy_tax']:.2f}", target("privacy_tax")),
        ("K = 10 over K = 1", f"{doc['tta10_over_k1']:.2f}", target("tta10_over_k1")),
        ("client share (mixing + D)", f"{doc['client_share']:.2f}", target("client_share")),
        (f"S throughput / GEMM peak{peak_in}", f"{doc['s_gflops']:.0f} / {doc['matmul_peak_gflops']:.0f} GFLOP/s "
         f"({doc['flop_efficiency']:.2f})", target("flop_efficiency")),
        *([(f"S throughput / peak of a wide 3³ convolution (S's kernels at their best){peak_in}",
            f"{doc['s_gflops']:.0f} / {doc['conv_peak_gflops']:.0f} GFLOP/s ({doc['s_over_conv_peak']:.2f})", "")]
          if "conv_peak_gflops" in doc else []),
    ]
    levers = doc.get("levers") or {}
    fresh = levers.get("private_k10_memory")  # absent in runs before the fresh-process probe: the whole run's peak
    serving = fresh and "k1_seconds" in fresh[0]  # since the probe serves several requests
    from mixdemo.bench import PROBE_REQUESTS  # here, not at import: torch and MONAI load only for this table

    requests = ", ".join(map(str, PROBE_REQUESTS))
    rows.append((f"peak memory, a fresh process serving private requests K = {requests}, whole brain" if serving
                 else "peak memory, private K = 10, whole brain (alone in a fresh process)" if fresh
                 else "peak memory (whole run)",
                 f"{doc['peak_rss_mb']:.0f} MB", target("peak_rss_mb")))
    for row in fresh or []:
        how, default = allocation(row, doc.get("keeps_freed_memory"))
        state = "on: the default" if default else "off"
        if "k1_seconds" in row:  # a fresh process serving several requests
            rows.append((f"lever ({state}): private requests K = {requests}, whole brain, {how}, in a fresh "
                         "process", f"K = 10 {row['seconds']:.1f} s, K = 1 {row['k1_seconds']:.1f} s (medians), "
                         f"{row['peak_rss_mb']:.0f} MB peak, {row['rss_after_mb']:.0f} MB resident after", ""))
        else:
            rows.append((f"lever ({state}): private K = {row['k']}, whole brain, {how}, in a fresh process",
                         f"{row['seconds']:.1f} s, {row['peak_rss_mb']:.0f} MB peak", ""))
    rule = levers.get("allocator_rule")
    if rule:
        failed = [k.replace("_", " ") for k, v in rule.items() if v is False and k != "held"]
        verdict = "held in this run" if rule["held"] else f"**not held** in this run: {'; '.join(failed)}"
        if "kept" in rule:  # since each allocation's processes are pooled
            kept, plain = rule["kept"], rule["as_it_comes"]
            verdict += (f" (pooled, kept vs as it comes: K = 10 {kept['seconds']:.1f} vs {plain['seconds']:.1f} s, "
                        f"K = 1 {kept['k1_seconds']:.2f} vs {plain['k1_seconds']:.2f} s, peak {kept['peak_rss_mb']:.0f} "
                        f"vs {plain['peak_rss_mb']:.0f} MB, resident after {kept['rss_after_mb']:.0f} vs "
                        f"{plain['rss_after_mb']:.0f} MB)")
        rows.append((f"rule for the allocator lever ({rule['rule']})", verdict, ""))
    if levers.get("s_channels_last_speedup"):
        rows.append(("lever: S in channels-last 3D (on)", f"{levers['s_channels_last_speedup']:.2f} × faster", ""))
    for row in levers.get("s_memory_budget") or []:
        how = "default budget" if row["budget_mb"] is None else f"MIXDEMO_S_MEMORY_MB={row['budget_mb']}"
        path = row.get("path", "MONAI forward") + (f" in {row['precision']}" if "precision" in row else "")
        memory, default = allocation(row, doc.get("keeps_freed_memory"))
        how += f", {memory}" if memory else ""
        state = "on: the default" if row.get("path") == "fused" and row["budget_mb"] is None and default else "off"
        faults = f", {row['minor_page_faults'] / 1e3:.0f} k page faults" if "minor_page_faults" in row else ""
        rows.append((f"lever ({state}): S (baseline), {path}, {how}: {row['slabs']} slab(s), in a fresh process",
                     f"{row['seconds']:.1f} s{faults}, {row['peak_rss_mb']:.0f} MB peak, Dice {row['dice_avg']:.3f}", ""))
    for row in levers.get("s_precision") or []:
        native = "native on this CPU" if levers.get("bfloat16_native") else "emulated: no bfloat16 instructions here"
        state = "on: the default" if row["precision"] == doc.get("s_precision", "float32") else "off"
        what = "float32" if row["precision"] == "float32" else f"bfloat16 ({native}; MIXDEMO_PRECISION=bfloat16)"
        rows.append((f"lever ({state}): S and the baseline in {what}, K = 1",
                     f"baseline {row['baseline_s']:.1f} s, private {row['private_k1_s']:.1f} s (privacy tax "
                     f"{row['privacy_tax']:.2f}, client share {row['client_share']:.2f}); Dice baseline "
                     f"{row['baseline_dice_avg']:.3f}, private {row['private_k1_dice_avg']:.3f}", ""))
    for row in levers.get("d_precision") or []:
        state = "on: the default" if row["precision"] == doc.get("unmixing_precision", "float32") else "off"
        what = "float32" if row["precision"] == "float32" else "bfloat16 (MIXDEMO_UNMIXING_PRECISION=bfloat16)"
        rows.append((f"lever ({state}): D's blocks in {what}, K = 1",
                     f"D {row['seconds']:.2f} s, Dice {row['dice_avg']:.3f}; private {row['private_k1_s']:.1f} s "
                     f"(privacy tax {row['privacy_tax']:.2f}, client share {row['client_share']:.2f})", ""))
    for row in levers.get("d_widths") or []:
        rows.append((f"lever: an untrained D of the default's design, widths {tuple(row['features'])}, "
                     f"{row['parameters'] / 1e3:.0f} k parameters, blocks in {row['precision']}, K = 1",
                     f"{row['seconds']:.2f} s for {row['gflop']:.0f} GFLOP", ""))
    for row in [r for r in levers.get("unmix_windows") or [] if isinstance(r, dict)]:  # older runs: counts only
        if row["roi"] == "whole volume":
            what, state = "D on the whole volume", "on"
        else:
            what, state = f"D on {row['roi'][0]}³ windows, overlap {row['overlap']}", "off"
            if row.get("windows_with_brain"):
                what += f" ({row['windows_with_brain'][0]} of {row['windows_with_brain'][1]} windows hold brain)"
        rows.append((f"lever: {what} ({state}), K = 1", f"{row['seconds']:.1f} s, Dice {row['dice_avg']:.3f}", ""))
    for row in levers.get("unmix_nets") or []:
        state = "on" if row["model"] == DEFAULT_UNMIXING else "off"
        where = d_where(row["patch"], row.get("voxel_hidden", 0))
        with_it = (f"; with it, privacy tax {row['privacy_tax']:.2f}, client share {row['client_share']:.2f}"
                   if "privacy_tax" in row else "")
        if "gflop" in row:
            with_it += (f"; {row['gflop']:.0f} GFLOP, {row['seconds_at_gemm_peak']:.2f} s even at the "
                        f"{row.get('gemm_peak_dtype', 'float32')} GEMM peak "
                        f"(privacy tax {row['privacy_tax_at_gemm_peak']:.2f} then)")
        rows.append((f"lever: D `{row['model']}`, its blocks {where}, {row['parameters'] / 1e3:.0f} k parameters ({state}), K = 1",
                     f"{row['seconds']:.2f} s, Dice {row['dice_avg']:.3f}{with_it}", ""))
    load = doc.get("load_average_at_end")
    busy = (f" The machine's 1-minute load average was {load[0]:.1f} on {doc['threads']} threads at the end of the run: "
            "other jobs shared the cores, so these times are upper bounds." if load and load[0] > doc["threads"] * 1.2 else "")
    host = doc.get("host")
    spread = (f" The baseline and the private K = 1 runs were interleaved; their repetitions took "
              f"{host['baseline_s_min_max'][0]:.1f}–{host['baseline_s_min_max'][1]:.1f} s and "
              f"{host['private_k1_s_min_max'][0]:.1f}–{host['private_k1_s_min_max'][1]:.1f} s, and the GEMM peak was "
              f"{host['matmul_peak_gflops_start_end'][0]:.0f} GFLOP/s at the start, "
              f"{host['matmul_peak_gflops_start_end'][1]:.0f} at the end." if host else "")
    if host and host.get("tta10_over_k1_runs"):
        spread += (" K = 10 over K = 1 divides each K = 10 run by the mean of the K = 1 runs just before and "
                   "after it (" + ", ".join(f"{r:.2f}" for r in host["tta10_over_k1_runs"]) + ").")
    return "\n".join([f"Measured by `{doc['command'].strip()}` on {cpu_md(doc)}, {doc['threads']} threads, volume "
                      f"{'×'.join(map(str, doc['volume_shape']))}, median of {doc['reps']}, {doc['date']}.{busy}{spread}", "",
                      "| what | figure | target |", "| --- | --- | --- |", *[f"| {a} | {b} | {c} |" for a, b, c in rows]])



BENCH_RECORDS = ("bench", "bench-avx2")
"""The benchmark's records, one per kind of CPU it was run on (``python -m mixdemo.bench --out``): the headline's
first, then an AVX2-only CPU's (no bfloat16 instructions: S and D in float32)."""

BENCH_HEADLINE = (("baseline whole brain", "baseline_s", "{:.1f} s"), ("private, K = 1", "private_k1_s", "{:.1f} s"),
                  ("private, K = 10", "private_k10_s", "{:.1f} s"), ("patch mode (32³), K = 10", "patch_k10_s", "{:.2f} s"),
                  ("privacy tax", "privacy_tax", "{:.2f}"), ("K = 10 over K = 1", "tta10_over_k1", "{:.2f}"),
                  ("client share (mixing + D)", "client_share", "{:.3f}"),
                  ("S's FLOP efficiency (of the GEMM peak in S's precision)", "flop_efficiency", "{:.2f}"),
                  ("peak memory", "peak_rss_mb", "{:.0f} MB"))


def bench_cpus_md(docs: list[dict]) -> str:
    """The headline figures of each benchmark record side by side, each against its target (met or missed), one
    column per CPU: how much of the performance table holds where bfloat16 is not available."""
    def cell(doc: dict, key: str, fmt: str) -> str:
        if doc.get(key) is None:
            return "—"
        return fmt.format(doc[key]) + (f" ({target_verdict(key, doc[key])})" if key in BENCH_TARGETS else "")

    def precisions(doc: dict) -> str:
        s, d = doc.get("s_precision", "float32"), doc.get("unmixing_precision", "float32")
        return f"S and D in {s}" if s == d else f"S in {s}, D in {d}"

    head = [f"{cpu_md(d)}: {precisions(d)}, {d['date']}" for d in docs]
    lines = ["| figure | target | " + " | ".join(head) + " |", "| --- | --- |" + " --- |" * len(docs)]
    for label, key, fmt in BENCH_HEADLINE:
        target = BENCH_TARGETS[key][0] if key in BENCH_TARGETS else ""
        lines.append(f"| {label} | {target} | " + " | ".join(cell(d, key, fmt) for d in docs) + " |")
    return "\n".join(lines)


def bench_cpus_block(_: dict) -> str:
    """The README's block of :func:`bench_cpus_md` over every record of :data:`BENCH_RECORDS` present."""
    docs = [doc for doc in map(_load, BENCH_RECORDS) if doc is not None]
    commands = "; ".join(f"`{d['command'].strip()}`" for d in docs)
    return (f"Measured by {commands}, each on its own machine with {' and '.join(str(d['threads']) for d in docs)} "
            "threads, the same volume and weights. **MNI152-derived phantoms, not patients.**\n\n" + bench_cpus_md(docs))


RUNTIME_WORKLOADS = {"s_patches": "S, patch mode ({k} × 32³)", "s_volume": "S, whole volume",
                     "d_volume": "D, whole volume, K = 1"}


def runtimes_md(doc: dict) -> str:
    """Other runtimes against the PyTorch fast path, per workload (``python -m mixdemo.runtimes``)."""
    versions = ", ".join(f"{name} {v}" for name, v in doc.get("versions", {}).items())
    lines = [f"Measured by `{doc['command'].strip()}` ({doc['date']}), torch {doc['torch']}"
             f"{', ' + versions if versions else ''}, {doc['threads']} threads, volume "
             f"{'×'.join(map(str, doc['volume_shape']))}, median of {doc['reps']} calls after the first, each runtime "
             "in a fresh process. **MNI152-derived phantoms, not patients.**", "",
             "| workload | runtime | time | × PyTorch | first call | prepare | peak memory | largest logit difference "
             "| labels differing |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in doc["rows"]:
        what = RUNTIME_WORKLOADS[row["workload"]].format(k=doc["patches"][0])
        if row["workload"].startswith("d_") and doc.get("models", {}).get("d"):
            what += f" (`{doc['models']['d']}`)"
        if not row.get("available"):
            lines.append(f"| {what} | {row['runtime']} | {row['reason']} |  |  |  |  |  |  |")
            continue
        lines.append(f"| {what} | {row['runtime']}{' (the fast path)' if row['runtime'] == 'pytorch' else ''} | "
                     f"{row['seconds']:.2f} s | {row['speedup']:.2f} | {row['first_call_s']:.1f} s | "
                     f"{row['prepare_s']:.1f} s | {row['peak_rss_mb']:.0f} MB | {row['max_abs_logit_diff']:.1e} | "
                     f"{100 * row['labels_differing']:.3f} % |")
    return "\n".join(lines)


def reliability_md(doc: dict) -> str:
    """The reliability evidence."""
    keys = [k for k in doc if k not in ("command", "date")]
    rows = [f"| {k.replace('_', ' ')} | {doc[k]} |" for k in keys if not isinstance(doc[k], (dict, list))]
    malformed = doc.get("malformed_requests")
    if malformed:
        rows.append(f"| malformed requests: sent, then server errors, tracebacks and values in the log | "
                    f"{malformed['requests']}: {malformed['server_errors']}, {malformed['tracebacks_in_log']}, "
                    f"{malformed['values_in_log']} |")
    return "\n".join([f"Measured by `{doc.get('command', '?')}`.", "", "| check | result |", "| --- | --- |", *rows])


# a D made from another shipped D -> the record of that step (``before``: its start, ``after``: it, both on the
# D designs' protocol): more training on larger patches (``training.train``) or per-class logit offsets
# (``training.calibrate``). The one registry of these records: the D designs table, the README blocks, the model
# cards and ``training.refresh_baseline`` all follow it.
D_TRAINED_ON = {"unmixing-96": "d_large_patches", "unmixing-p2-96": "d_p2_large_patches",
                "unmixing-p4-96": "d_p4_large_patches", "unmixing-p2-96-cal": "d_p2_calibrated",
                "unmixing-p2-96-a35-cal": "d_p2_96_alpha_deployment"}


def d_designs_rows(doc: dict) -> tuple[list[dict], list[str]]:
    """The D designs table's rows: ``doc``'s, with the shipped Ds of ``D_TRAINED_ON`` measured on the same protocol
    (the default first), and a sentence naming where each of those rows comes from."""
    rows, notes = list(doc["rows"]), []
    shipped = sorted(D_TRAINED_ON.items(), key=lambda item: item[0] != DEFAULT_UNMIXING)
    for name, record in reversed(shipped):
        trained_on = _load(record) or {}
        after = trained_on.get("after", {})
        if trained_on.get("shipped") and trained_on.get("protocol") == doc["protocol"] \
                and after.get("model") == name and name not in {r["model"] for r in rows}:
            rows.insert(0, after)
            whose = "The default D's row" if name == DEFAULT_UNMIXING else f"The row of `{name}`"
            notes.insert(0, f"{whose}: `results/{record}.json` (`{compare_command(trained_on)}`).")
    return rows, notes


def d_designs_md(doc: dict) -> str:
    """The client networks D compared on one protocol, with each one's client time from the benchmark."""
    bench = {r["model"]: r for r in ((_load("bench") or {}).get("levers") or {}).get("unmix_nets") or []}
    lines = [f"Measured by `{doc['command'].strip()}` ({doc['date']}): for each D, `{doc['protocol']}`; the same "
             "proxies, S and references for every D. D's time, the privacy tax and the client share with it: "
             "`python -m mixdemo.bench` (whole volume, K = 1). " + refreshed(doc) + "**MNI152-derived phantoms, not patients.**", "",
             "| D | its blocks run | parameters | D's time | privacy tax | client share | Learned | Learned + TTA | × baseline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows, notes = d_designs_rows(doc)
    lines[0] += "".join(f" {note}" for note in notes)
    for row in rows:
        where = d_where(row["patch"], row.get("voxel_hidden", 0))
        timed = bench.get(row["model"], {})
        seconds = f"{timed['seconds']:.2f} s" if "seconds" in timed else "—"
        lines.append(f"| {d_label(row['model'])} | {where} | "
                     f"{row['parameters'] / 1e3:.0f} k | {seconds} | {_f(timed.get('privacy_tax'))} | "
                     f"{_f(timed.get('client_share'))} | {_f(row['learned']['avg'])} | "
                     f"{_f(row['learned_tta']['avg'])} | {_f(row['tta_over_baseline'])} |")
    return "\n".join(lines)


def d_label(name: str) -> str:
    """A D's name for a table: the default marked, and the D the default was trained on from."""
    if name == DEFAULT_UNMIXING:
        return f"`{name}` (default)"
    return f"`{name}` (the default's start)" if name == default_start() else f"`{name}`"


def default_start() -> str | None:
    """The D the default D was made from: the D it was calibrated from (``training.calibrate``), else the D it
    was trained on from (its training record's ``init_unmixing``)."""
    record = read_training_record(REPO / "weights" / DEFAULT_UNMIXING)
    return record.get("calibration", {}).get("from_model") or record.get("init_unmixing")


def _d_name(evaluation: dict) -> str:
    """The D a ``training.evaluate`` JSON was made with: its ``models`` (or, in files written before it, the
    one name in its weights record other than S's and the baseline's)."""
    if "models" in evaluation:
        return evaluation["models"]["unmixing"]
    return next((n for n in evaluation.get("weights_sha256", {}) if n not in ("segmentation", "baseline")), "?")


def _s_name(evaluation: dict) -> str:
    """The S a ``training.evaluate`` JSON was made with (``segmentation`` in files written before ``models``)."""
    return evaluation.get("models", {}).get("segmentation", "segmentation")


FULL_PROTOCOL_SECTION = "Against the other Ds on the segmentation table's protocol"
ENSEMBLES_SECTION = "Averaged with other Ds (phantom test set)"
PROTOCOL_KEYS = ("n_volumes", "tta_k", "k_max", "n_icc_scans", "crop", "brain_mask", "seed", "alpha_range", "reference_pool")


REPLICATION_PREFIX = "segmentation-replication-"
"""``results/segmentation-replication-<name>.json``: the segmentation table's command on another test cohort."""
REPLICATION_KEYS = ("tta_k", "k_max", "draws", "crop", "brain_mask", "seed", "alpha_range", "models", "weights_sha256",
                    "s_precision")
"""What a replication shares with the table: the protocol and the networks, not the cohort (nor its size)."""


def replications(default: dict) -> list[tuple[str, dict]]:
    """(results file stem, JSON) of the segmentation table (``default``) and each replication of it on another cohort
    with the same protocol and networks (:data:`REPLICATION_KEYS`); a file that differs in any of them is left out."""
    found = [(p.stem, json.loads(p.read_text())) for p in sorted(RESULTS.glob(f"{REPLICATION_PREFIX}*.json"))]
    return [("segmentation", default)] + [(n, d) for n, d in found
                                         if all(d.get(k) == default.get(k) for k in REPLICATION_KEYS)]


def _data_flag(command: str) -> str:
    """The cohort folder a ``training.evaluate`` command names (its default otherwise)."""
    words = command.split()
    return words[words.index("--data") + 1] if "--data" in words[:-1] else "data/phantoms"


def replication_md(default: dict) -> str:
    """The segmentation table's Learned + TTA ratio and ICC on its own test cohort and on fresh phantom cohorts (other
    generator seeds, so other subjects), then pooled over every volume and scan: how far those figures move between
    test sets of this size."""
    from mixdemo.metrics import icc_c1, ratio_of_means_ci

    rows = replications(default)
    if len(rows) < 2:
        return "No replication on another cohort yet."
    classes = ("GM", "WM", "CSF")
    lines = ["| test cohort | volumes | Baseline | Learned + TTA | × baseline [95 % interval] | ICC GM | ICC WM | ICC CSF "
             "| measured by |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    pooled_base, pooled_ltta, pooled_pairs = [], [], {c: [] for c in classes}
    for name, d in rows:
        per_volume = d.get("dice_per_volume")
        if not per_volume:
            return (f"`results/{name}.json` has no per-volume Dice (an older file): run its command again to compare "
                    "the cohorts.")
        base = [v["baseline"] for v in per_volume.values()]
        ltta = [v["learned_tta"] for v in per_volume.values()]
        pooled_base += base
        pooled_ltta += ltta
        for c in classes:
            pooled_pairs[c] += [pair[c] for pair in d["retest_dice"].values()]
        ratio, lo, hi = ratio_of_means_ci(ltta, base)
        lines.append(f"| `{_data_flag(d['command'])}` | {len(base)} | {_f(d['dice']['baseline']['avg'])} | "
                     f"{_f(d['dice']['learned_tta']['avg'])} | {_f(ratio)} [{_f(lo)}, {_f(hi)}] | "
                     + " | ".join(_f(d["icc"][c]["icc"]) for c in classes) + f" | `results/{name}.json` |")
    ratio, lo, hi = ratio_of_means_ci(pooled_ltta, pooled_base)
    iccs = [icc_c1(pooled_pairs[c]) for c in classes]
    lines.append(f"| pooled | {len(pooled_base)} | {_f(sum(pooled_base) / len(pooled_base))} | "
                 f"{_f(sum(pooled_ltta) / len(pooled_ltta))} | **{_f(ratio)}** [{_f(lo)}, {_f(hi)}] | "
                 + " | ".join(f"{_f(r.icc)} [{_f(r.ci_low, 2)}, {_f(r.ci_high, 2)}]" for r in iccs)
                 + f" | the rows above ({len(pooled_pairs['GM'])} scans for the ICC) |")
    lines += ["", "Each row's command: " + "; ".join(f"`{d['command']}`" for _, d in rows) + ". Its cohort is made by "
              "`python -m mixdemo.phantoms --out <folder> --subjects 24 --scans 2 --seed <n>`: seed 0 is `data/phantoms`, on "
              "whose training subjects the networks trained; the other seeds draw new subjects, none trained on, and "
              "their own training subjects are the references. The intervals are "
              "paired bootstrap intervals over the volumes (`mixdemo.metrics.ratio_of_means_ci`); the pooled ICC is "
              "ICC(C,1) of every scan's two predictions with disjoint references. **MNI152-derived phantoms, not "
              "patients.**"]
    return "\n".join(lines)


def ds_on_full_protocol(default: dict) -> list[tuple[str, dict]]:
    """(results file stem, its ``training.evaluate`` JSON) of every D on the segmentation table's full protocol:
    the default's ``default`` (``results/segmentation.json``) first, then each ``results/segmentation-<D>.json``
    of the same protocol (the same S, volumes, α, references and baseline), best Learned + TTA first."""
    others = [(p.stem, json.loads(p.read_text())) for p in sorted(RESULTS.glob("segmentation-*.json"))
              if not p.stem.startswith(REPLICATION_PREFIX)]
    same = [(n, d) for n, d in others if all(d.get(k) == default.get(k) for k in PROTOCOL_KEYS)
            and _s_name(d) == _s_name(default) and d["dice"]["baseline"] == default["dice"]["baseline"]]
    return [("segmentation", default)] + sorted(same, key=lambda nd: -nd[1]["dice"]["learned_tta"]["avg"])


def ds_full_protocol_md(default: dict) -> str:
    """Every D on the segmentation table's full protocol (:func:`ds_on_full_protocol`), one row each."""
    rows = ds_on_full_protocol(default)
    lines = [f"Each D on the segmentation table's protocol ({default['n_volumes']} test volumes, TTA K = "
             f"{default['tta_k']}, ICC on {default['n_icc_scans']} scans): the same S, volumes, α and references, so "
             f"the baseline ({_f(default['dice']['baseline']['avg'])}) and the naive rows (Naive + TTA "
             f"{_f(default['dice']['naive_tta']['avg'])}) are the table's. **MNI152-derived phantoms, not patients.**", "",
             "| D | its blocks run | Learned | Learned + TTA | + TTA: GM | WM | CSF | × baseline | ICC GM | ICC WM "
             "| ICC CSF | measured by |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, d in rows:
        dice, tta = d["dice"], d["dice"]["learned_tta"]
        config_path = REPO / "weights" / _d_name(d) / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        where = d_where(config.get("patch", 1), config.get("voxel_hidden", 0)) if config else "—"
        lines.append(f"| {d_label(_d_name(d))} | {where} | {_f(dice['learned']['avg'])} | {_f(tta['avg'])} | "
                     + " | ".join(_f(tta[c]) for c in ("GM", "WM", "CSF")) + f" | {_f(tta['avg'] / dice['baseline']['avg'])} | "
                     + " | ".join(_f(d['icc'][c]['icc']) for c in ("GM", "WM", "CSF"))
                     + f" | `results/{name}.json` ({d['date']}) |")
    lines += ["", "Each file's command reproduces its row: "
              + "; ".join(f"`{d['command']}`" for _, d in rows) + "."]
    refreshes = {d["baseline_refresh"]["command"] for _, d in rows if d.get("baseline_refresh")}
    if refreshes:
        lines[-1] += (" The baseline rows of some were re-measured alone with the current baseline by "
                      + ", ".join(f"`{c}`" for c in sorted(refreshes)) + " (the same baseline as the table's).")
    return "\n".join(lines)


def d_made_by(name: str) -> str:
    """How a shipped D was made, from its folder's ``training.json`` (and those of the Ds it was made from):
    e.g. "32³ patches, then 320 steps on 96³ patches, calibrated"."""
    record = read_training_record(REPO / "weights" / name)
    if "calibration" in record:
        return f"{d_made_by(record['calibration']['from_model'])}, calibrated"
    alphas = record.get("alpha_range")
    on_alphas = (f" with α ~ U({alphas[0]:g}, {alphas[1]:g})"
                 if alphas and tuple(alphas) != tuple(TRAIN_ALPHA_RANGE) else "")  # said when not the usual range
    if record.get("init_unmixing"):
        return (f"{d_made_by(record['init_unmixing'])}, then {record['steps']} steps on {record['patch_size']}³ "
                f"patches{on_alphas}")
    return f"{record['patch_size']}³ patches{on_alphas}" if record.get("patch_size") else "?"


def linked_folders_note(commands: list[str]) -> str:
    """A sentence for records whose commands linked a scratch folder into ``weights/`` (``ln -s /tmp/x/NAME
    weights/``) that has shipped there since: the link now fails, and the command runs without it."""
    shipped = sorted({m.group(1) for c in commands for m in re.finditer(r"ln -s \S+/([\w.-]+) weights/ &&", c)
                      if (REPO / "weights" / m.group(1)).is_dir()})
    if not shipped:
        return ""
    names = ", ".join(f"`weights/{n}`" for n in shipped)
    return (f"The `ln -s … weights/ &&` steps linked scratch folders in before they shipped; {names} ship now, so "
            "run those commands without them. ")


def d_alpha_outside_md(doc: dict) -> str:
    """A D trained on a narrower α range against the D it would replace: on the full protocol at the client's α and on
    the D designs' volumes at α outside that range (``outside_deployment_range`` of its record)."""
    full, outside = doc["full_protocol"], doc["outside_deployment_range"]
    old, new = full["default"]["model"], full["candidate"]["model"]
    lo, hi = doc["training"]["alpha_range"]
    full_cmd = next(c for c in doc["commands"] if "-m training.evaluate " in c)
    lines = [f"Full protocol: `{full_cmd}` against `results/segmentation-{old}.json` (the same draws); outside the "
             f"range: `{outside['command']}` (3 volumes, the same proxies for both Ds in each range). "
             + linked_folders_note(doc["commands"]) + "**MNI152-derived phantoms, not patients.**", "",
             f"| α | volumes | Learned: `{old}` | `{new}` | Learned + TTA: `{old}` | `{new}` | difference |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = [(f"U({lo:g}, {hi:g}), trained on", "6 (full protocol)", full["default"], full["candidate"])]
    rows += [(f"U({r['alpha_range'][0]:g}, {r['alpha_range'][1]:g})", "3", r["default"], r["candidate"]) for r in outside["rows"]]
    for alphas, volumes, a, b in rows:
        diff = b["learned_tta"]["avg"] - a["learned_tta"]["avg"]
        lines.append(f"| {alphas} | {volumes} | {_f(a['learned']['avg'])} | {_f(b['learned']['avg'])} | "
                     f"{_f(a['learned_tta']['avg'])} | {_f(b['learned_tta']['avg'])} | {diff:+.4f} |")
    return "\n".join(lines)


def s_bfloat16_md(doc: dict) -> str:
    """The segmentation table's protocol with S and the baseline in bfloat16 against float32, the same draws."""
    return _precision_md(doc, "`results/segmentation.json`", "float32")


def d_bfloat16_md(doc: dict) -> str:
    """The segmentation table's protocol with D's blocks in bfloat16 against float32 (S in bfloat16 in both), the
    same draws; the record written by its second command (``training.d_precision_record``)."""
    return _precision_md(doc, "its run in `results/s_bfloat16.json`", "S in bfloat16, D in float32")


def _precision_md(doc: dict, against: str, against_ran: str) -> str:
    """A precision record's average Dice rows in float32 and bfloat16 (``results/s_bfloat16.json``, ``d_bfloat16.json``)
    against the run ``against`` (which ran as ``against_ran``)."""
    f32, b16 = doc["float32"], doc["bfloat16"]
    assembled = f"; the record written by `{doc['commands'][1]}`" if len(doc["commands"]) > 1 else ""
    lines = [f"Measured by `{doc['commands'][0]}` ({doc['date']}, {b16['seconds'] / 60:.0f} min) against "
             f"{against} ({against_ran}, {f32['seconds'] / 60:.0f} min, as it stood when this record was made): the "
             f"same weights, volumes, α and "
             f"references{assembled}. **MNI152-derived phantoms, not patients.**", "",
             "| average Dice | float32 | bfloat16 | difference |", "| --- | --- | --- | --- |"]
    for key, label in LABELS.items():
        a, b = f32["dice"][key]["avg"], b16["dice"][key]["avg"]
        lines.append(f"| {label} | {_f(a)} | {_f(b)} | {b - a:+.4f} |")
    icc = " · ".join(f"{c} {f32['icc'][c]['icc']:.3f} → {b16['icc'][c]['icc']:.3f}" for c in f32["icc"])
    lines += ["", f"Test–retest ICC, float32 → bfloat16: {icc}."]
    return "\n".join(lines)


def d_ensembles_md(doc: dict) -> str:
    """Learned + TTA of each D alone and of the mean of several Ds' probabilities (``results/d_ensembles.json``)."""
    proto = doc["protocol"]
    lines = [f"Measured by `{doc['command']}` ({doc['date']}, {doc['seconds'] / 60:.0f} min): the segmentation table's "
             f"{proto['n_volumes']} volumes, with the first K = {proto['tta_k']} of each scan's references and α there; "
             "S runs once per proxy and every D unmixes the same output. **MNI152-derived phantoms, not patients.**", "",
             "| D (probabilities averaged) | Learned + TTA | GM | WM | CSF | × baseline |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in doc["rows"]:
        tta = row["learned_tta"]
        lines.append(f"| {' + '.join(f'`{m}`' for m in row['models'])} | {_f(tta['avg'])} | {_f(tta['GM'])} | "
                     f"{_f(tta['WM'])} | {_f(tta['CSF'])} | {_f(row['tta_over_baseline'])} |")
    gain = doc["best_ensemble_gain"]
    verdict = "above" if gain > 0 else "not above"
    lines += ["", f"The best combination's Learned + TTA is {verdict} the best D alone ({gain:+.4f}); baseline "
                  f"{_f(doc['baseline']['avg'])}."]
    return "\n".join(lines)


def reference_choice_md(doc: dict) -> str:
    """Random references against the client's most similar ones, utility and privacy (``results/reference_choice.json``)."""
    proto, priv = doc["protocol"], doc["privacy"]
    lines = [f"Measured by `{doc['command']}` ({doc['date']}, {doc['seconds'] / 60:.0f} min): the D designs' protocol "
             f"({proto['n_volumes']} test volumes, K = {proto['tta_k']}, each scan's α from the evaluation's per-scan "
             f"seed), the ICC over {proto['n_icc_scans']} test scans; the privacy rows on the attack lab's scans downsampled "
             f"×{REID_DOWNSAMPLE}, α ~ U({priv['alpha_range'][0]}, {priv['alpha_range'][1]}), {priv['reid_draws']} draws. "
             "**MNI152-derived phantoms, not patients.**", "",
             "| references | Learned | Naive + TTA | Learned + TTA | × baseline | ICC GM | ICC WM | ICC CSF | "
             f"re-id mAP, one proxy | averaging attack (K = {priv['k']} proxies): MS-SSIM | its re-id mAP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for choice, label in (("random", "random (the paper's)"), ("similar", "most similar to the target")):
        row, icc, p = doc[choice], doc[choice]["icc"], priv[choice]
        lines.append(f"| {label} | {_f(row['learned']['avg'])} | {_f(row['naive_tta']['avg'])} | "
                     f"{_f(row['learned_tta']['avg'])} | {_f(row['tta_over_baseline'])} | "
                     + " | ".join(icc_cell(icc[c]) for c in ("GM", "WM", "CSF"))
                     + f" | {_f(p['single_proxy_reid_map'])} ± {_f(p['single_proxy_reid_map_std'])} | "
                     f"{_f(p['averaging_attack_msssim'])} | {_f(p['averaging_attack_reid_map'])} |")
    verdict = "passes" if doc["passes_rule"] else "does not pass"
    lines += ["", f"Learned + TTA moves by {doc['learned_tta_gain']:+.4f} with the most similar references, so the choice "
                  f"{verdict} its rule, {doc['rule']}. Baseline {_f(doc['baseline']['avg'])}; re-identification from "
                  f"the unmixed scans {_f(priv['no_proxy_reid_map'])}."]
    return "\n".join(lines)


def inversion_variants_md(doc: dict) -> str:
    """The learned inversion's recipe varied (``results/inversion_variants.json``): each network's re-identification
    and MS-SSIM beside the proxies', with how often it beat them draw by draw."""
    rows = doc["rows"]
    proxies = rows[0]
    lines = [f"Measured by `{doc['command']}` ({doc['date']}, {doc['seconds'] / 60:.0f} min): each network scored as the "
             f"privacy record's inversion section scores the shipped one, single proxies of the {doc['n_targets']} test "
             f"scans mixed with the client's bank, α ~ U({doc['alpha_range'][0]}, {doc['alpha_range'][1]}), "
             f"{proxies['n_draws']} draws (the proxies themselves: mAP {_f(proxies['proxy_reid_map'])}, MS-SSIM "
             f"{_f(proxies['proxy_msssim_mean'])}). **MNI152-derived phantoms, not patients.**", "",
             "| network | trained by | server's scans (subjects) | re-id mAP | higher than the proxies' in | MS-SSIM | "
             "on windows: mAP | MS-SSIM |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        minutes = f", {r['train_seconds'] / 60:.0f} min" if r.get("train_seconds") else ""
        lines.append(f"| {r['variant']} | `{r['train_command']}`{minutes} | {r['server_scans']} ({r['server_subjects']}) | "
                     f"{_f(r['estimate_reid_map'])} | {r['higher_in_draws']} of {r['n_draws']} draws | "
                     f"{_f(r['estimate_msssim_mean'])} | {_f(r['on_windows_reid_map'])} | {_f(r['on_windows_msssim_mean'])} |")
    maps = [r["estimate_reid_map"] for r in rows]
    lines += ["", f"Across these {len(rows)} networks the inversion's mAP spans {_f(min(maps))}–{_f(max(maps))} against "
                  f"the proxies' {_f(proxies['proxy_reid_map'])}."]
    return "\n".join(lines)


MIRROR_ROWS = (  # (row, what it is, proxies the server segments per scan: "K", "2K", "1" or "2" plain scans)
    ("baseline", "Baseline (the scan itself, not private)", "1 scan"),
    ("baseline_mirror", "Baseline, mirroring TTA (scan and mirror image, not private)", "2 scans"),
    ("naive_tta", "Naive + TTA", "K"),
    ("naive_tta_mirror_half", "Naive + TTA, every second mix mirrored", "K"),
    ("learned", "Learned, the first mix", "1"),
    ("learned_mirrored", "Learned, the first mix mirrored", "1"),
    ("learned_tta", "Learned + TTA (the table's)", "K"),
    ("learned_tta_mirror_half", "Learned + TTA, every second mix mirrored", "K"),
    ("learned_tta_mirror_all", "Learned + TTA, every mix mirrored", "K"),
    ("learned_tta_2k", "Learned + TTA over both: the K mixes and their K mirrored ones", "2K"),
)
MIRROR_ATTACKERS = (("plain", "the paper's proxies"), ("mirrored_unaware", "every second mirrored, averaged as they come"),
                    ("mirrored_aware", "every second mirrored, mirrored back by an attacker who knows the scheme"))


def mirror_tta_md(doc: dict) -> str:
    """Mirrored targets in the client's TTA: the Dice rows on the table's draws and the averaging attack
    (``results/mirror_tta.json``)."""
    k = doc["protocol"]["tta_k"]
    lines = [f"Measured by `{doc['command']}` ({doc['date']}, {doc['seconds'] / 60:.0f} min): the segmentation table's "
             f"protocol and networks ({doc['protocol']['n_volumes']} test volumes, each with the first K = {k} references "
             "and α of its draw), each mix through S as it is and with the target mirrored. "
             "**MNI152-derived phantoms, not patients.**", "",
             "| row | server segments, per scan | average Dice | GM | WM | CSF | × baseline | × mirrored baseline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base, base_mirror = doc["dice"]["baseline"]["avg"], doc["dice"]["baseline_mirror"]["avg"]
    for row, label, cost in MIRROR_ROWS:
        d = doc["dice"][row]
        proxies = {"K": f"{k} proxies", "2K": f"{2 * k} proxies", "1": "1 proxy"}.get(cost, cost)
        lines.append(f"| {label} | {proxies} | {_f(d['avg'])} | {_f(d['GM'])} | {_f(d['WM'])} | {_f(d['CSF'])} | "
                     f"{_f(d['avg'] / base, 4)} | {_f(d['avg'] / base_mirror, 4)} |")
    verdict = "passes" if doc["passes_rule"] else "does not pass"
    per_volume = ", ".join(f"{g:+.4f}" for g in doc["learned_tta_gain_per_volume"])
    lines += ["", f"Learned + TTA moves by {doc['learned_tta_gain']:+.4f} with every second mix mirrored (per volume: "
                  f"{per_volume}), so mirroring {verdict} its rule, {doc['rule']}."]
    priv = doc.get("privacy")
    if priv:
        lines += ["", f"The averaging attack on one request's K = {priv['k']} proxies of each of {priv['n_scans']} test "
                      f"scans, downsampled ×{priv['downsample']}, α ~ U({priv['alpha_range'][0]}, "
                      f"{priv['alpha_range'][1]}), mean ± SD over {priv['draws']} draw{'s' if priv['draws'] != 1 else ''} of references and α "
                      f"(`{priv['command']}`, {priv['date']}):", "",
                  "| proxies | MS-SSIM of the estimate to the target | re-identification mAP of the estimates |",
                  "| --- | --- | --- |"]
        for attacker, label in MIRROR_ATTACKERS:
            a = priv[attacker]
            lines.append(f"| {label} | {_f(a['averaging_attack_msssim'])} ± {_f(a['averaging_attack_msssim_std'])} | "
                         f"{_f(a['averaging_attack_reid_map'])} ± {_f(a['averaging_attack_reid_map_std'])} |")
    return "\n".join(lines)


def _raw_head_label() -> str:
    """How ``training.raw_scans`` gives a raw head: its scanner grid's voxel sizes and axes."""
    import nibabel as nib
    import numpy as np

    from mixdemo.phantoms import AXES_PIR, RAW_SPACING

    affine = np.eye(4)
    affine[:3, :3] = 0
    for voxel_axis, (world_axis, sign) in enumerate(AXES_PIR):
        affine[world_axis, voxel_axis] = sign
    axes = "".join(nib.aff2axcodes(affine))
    return f"in a head of a random pose, on a {' × '.join(f'{s:g}' for s in RAW_SPACING)} mm grid ({axes}), int16"


RAW_SCAN_FORMS = (("cohort_file", "the cohort's file as it is (skull-stripped, in MNI space)"),
                  ("cohort_file_registered", "the same file, registered anyway"),
                  ("raw_head", None))  # _raw_head_label(), drawn when rendered (it imports the generator)
RAW_SCAN_ROWS = (("baseline", "Baseline"), ("learned", "Learned"), ("learned_tta", "Learned + TTA"))


def raw_scans_md(doc: dict) -> str:
    """The raw-scan path's Dice on the table's test scans in three forms (``results/raw_scans.json``)."""
    protocol, path = doc["protocol"], doc["path"]
    n = protocol["n_volumes"]
    lines = [f"Measured by `{doc['command']}` ({doc['date']}, {doc['seconds'] / 60:.0f} min): the segmentation table's "
             f"{n} test scans, networks and draws (Learned + TTA: the first K = {protocol['tta_k']} references and α of "
             "each scan's draw), each through `mixdemo.preprocess.to_model_space` as a user's scan goes, the labels "
             f"carried back onto the file's grid ({_carried_back(doc)}) and scored there against the file's own. "
             "**MNI152-derived phantoms, not patients**; the heads' skull, neck and noise are simple.", "",
             "| scan given as | registered | " + " | ".join(label for _, label in RAW_SCAN_ROWS) + " | GM | WM | CSF |",
             "| --- | --- | " + " | ".join("---" for _ in RAW_SCAN_ROWS) + " | --- | --- | --- |"]
    for form, label in RAW_SCAN_FORMS:
        label = label or _raw_head_label()
        d, p = doc["dice"][form], path[form]
        tta = d["learned_tta"]
        lines.append(f"| {label} | {p['registered']} of {n} | " + " | ".join(_f(d[row]["avg"]) for row, _ in RAW_SCAN_ROWS)
                     + f" | {_f(tta['GM'])} | {_f(tta['WM'])} | {_f(tta['CSF'])} |")
    head, registered = path["raw_head"], path["cohort_file_registered"]
    lines += ["", f"GM, WM and CSF: Learned + TTA's. Registration took {head['registration_seconds_mean']:.0f} s on "
                  f"average for a head and {registered['registration_seconds_mean']:.0f} s for a file already in MNI "
                  f"space; its similarity to the template averaged {_f(head['similarity_mean'])} and "
                  f"{_f(registered['similarity_mean'])}, and {head['warnings'] + registered['warnings']} of "
                  f"{head['registered'] + registered['registered']} registrations were flagged as poor."]
    return "\n".join(lines)


def _carried_back(doc: dict) -> str:
    """How a raw_scans record carried its labels back (a record made before it said so carried each class's share)."""
    if doc.get("carried_back", "").startswith("each class's score"):
        return "each class's score interpolated, then the arg-max, as the client and the app do"
    return "each class's share of the labels interpolated"


TTA_AVERAGES = (("mean", "the mean of the probabilities (Eq. 6, the table's)"),
                ("log_mean", "the mean of the log-probabilities (a geometric mean)"),
                ("alpha_weighted", "the probabilities weighted by each mix's α"),
                ("vote", "each mix's labels counted (ties: the mean)"))


def tta_aggregation_md(doc: dict) -> str:
    """Other averages of the client's K answers than Eq. 6's, on the table's draws (``results/tta_aggregation.json``)."""
    k = doc["protocol"]["tta_k"]
    base = doc["dice"]["baseline"]["avg"]
    lines = [f"Measured by `{doc['command']}` ({doc['date']}, {doc['seconds'] / 60:.0f} min): the segmentation table's "
             f"protocol and networks ({doc['protocol']['n_volumes']} test volumes, each with the first K = {k} references "
             "and α of its draw, each mix through S once); every row averages the same K answers. "
             "**MNI152-derived phantoms, not patients.**", "",
             "| average of the K answers | Naive + TTA | Learned + TTA | GM | WM | CSF | × baseline | against Eq. 6 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for how, label in TTA_AVERAGES:
        learned = doc["dice"][f"learned_{how}"]
        gain = "" if how == "mean" else f"{doc['gain_over_eq6'][f'learned_{how}']:+.4f}"
        lines.append(f"| {label} | {_f(doc['dice'][f'naive_{how}']['avg'])} | {_f(learned['avg'])} | {_f(learned['GM'])} | "
                     f"{_f(learned['WM'])} | {_f(learned['CSF'])} | {_f(learned['avg'] / base, 4)} | {gain} |")
    best = doc["best_learned_average"]
    per_volume = ", ".join(f"{g:+.4f}" for g in doc["gain_over_eq6_per_volume"][f"learned_{best}"])
    verdict = "passes" if doc["passes_rule"] else "does not pass"
    lines += ["", f"Baseline {_f(base)}. The best of the other averages for D's answers, {dict(TTA_AVERAGES)[best]}, "
                  f"moves Learned + TTA by {doc['gain_over_eq6'][f'learned_{best}']:+.4f} (per volume: {per_volume}), so "
                  f"it {verdict} the rule, {doc['rule']}."]
    return "\n".join(lines)


CONSISTENCY_RECORD = "d_consistency"
"""A D trained on with ``training.train --consistency``, judged against the default by a rule set before it trained."""


def consistency_gates(doc: dict) -> dict[str, bool]:
    """Each gate of ``doc``'s rule (``results/d_consistency.json``), held or not by its evaluation."""
    gates, ev = doc["gates"], doc["evaluation"]
    return {"learned_tta": ev["dice"]["learned_tta"]["avg"] >= gates["learned_tta_avg_at_least"],
            "csf_icc": ev["icc"]["CSF"]["icc"] > gates["csf_icc_above"],
            "other_icc": all(ev["icc"][c]["icc"] >= gates["other_icc_at_least"] for c in ("GM", "WM"))}


def d_consistency_md(doc: dict) -> str:
    """The D trained on with a consistency loss beside the default, on the segmentation table's protocol and draws,
    and its rule's verdict (``results/d_consistency.json``)."""
    ev, t, cal = doc["evaluation"], doc["training"], doc["calibration"]
    default = _load("segmentation")
    rows = [(f"`{_d_name(default)}` (default)", default), (f"`{_d_name(ev)}`", ev)]
    lines = [f"Trained by `{t['command']}` ({t['train_seconds'] / 60:.0f} min), calibrated by `{cal['command']}` "
             f"({calibrated_how(cal)}), measured by `{ev['command']}` ({ev['date']}, {ev['seconds'] / 60:.0f} min) with "
             "`MIXDEMO_WEIGHTS_DIR` a folder of links to the shipped models and these two: the segmentation table's "
             f"{ev['n_volumes']} volumes, α and references, and its {ev['n_icc_scans']} scans for the ICC. "
             "**MNI152-derived phantoms, not patients.**", "",
             "| D | Learned | Learned + TTA | × baseline | ICC GM | ICC WM | ICC CSF | r GM | r WM | r CSF |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, d in rows:
        icc = d["icc"]
        lines.append(f"| {label} | {_f(d['dice']['learned']['avg'])} | {_f(d['dice']['learned_tta']['avg'])} | "
                     f"{_f(d['ratio_to_baseline']['learned_tta']['ratio'])} | "
                     + " | ".join(_f(icc[c]["icc"]) for c in ("GM", "WM", "CSF")) + " | "
                     + " | ".join(_f(icc[c]["reference_sd"]) for c in ("GM", "WM", "CSF")) + " |")
    held = consistency_gates(doc)
    said = lambda ok: "held" if ok else "**not held**"  # noqa: E731
    g = doc["gates"]
    lines += ["", f"r: the SD of a single prediction's Dice between references (the ICC table's second SD row). The rule, "
                  f"set before the candidate trained: it becomes the default D only if Learned + TTA is at least the "
                  f"default's {g['learned_tta_avg_at_least']:.4f} ({said(held['learned_tta'])}: "
                  f"{ev['dice']['learned_tta']['avg']:.4f}), CSF's ICC is above the default's {g['csf_icc_above']:.4f} "
                  f"({said(held['csf_icc'])}: {ev['icc']['CSF']['icc']:.4f}), and GM's and WM's stay at "
                  f"{g['other_icc_at_least']} or more ({said(held['other_icc'])}). "
                  + ("So it is the default D." if all(held.values()) else
                     "So it is not the default; its weights are not shipped.")]
    return "\n".join(lines)


def train_throughput_md(doc: dict) -> str:
    """Training steps per second in each precision and layout (``results/train_throughput.json``), and the
    validated runs it quotes (``--runs``)."""
    native = "native bfloat16" if doc["native_bfloat16"] else "no native bfloat16"
    lines = [f"Measured by `{doc['command']}` on {doc['cpu']} ({doc['device']}, {native}), {doc['threads']} threads, "
             f"batches of {doc['batch_size']} patches of {doc['patch_size']}³, median of {doc['reps']} interleaved "
             f"repetitions of {doc['steps']} steps, {doc['date']}.", "",
             "| mode | precision | layout | s / step | steps / s | × float32 |", "| --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        what = "S + D end to end" if r["mode"] == "private" else "baseline S"
        layout = "channels-last 3D" if r["channels_last"] else "default"
        lines.append(f"| {what} | {r['precision']} | {layout} | {r['seconds_per_step']:.2f} | "
                     f"{r['steps_per_second']:.2f} | {r['speedup']:.2f} |")
    if doc.get("gradient_check"):
        n = doc["gradient_check"][0]["iterations"]
        lines += ["", f"Weight gradients of a 3³ convolution (padding 1) under bfloat16 autocast that came out non-finite "
                  f"or above 10⁴, out of {n} steps each (`--check-gradients {n}`; standard normal inputs and output "
                  "gradients, batch 4):", "",
                  "| convolution | grid | layout | autocast as it is | as `training.train` runs it |",
                  "| --- | --- | --- | --- | --- |"]
        for r in doc["gradient_check"]:
            layout = "channels-last 3D" if r["channels_last"] else "default"
            bad = r["bad_weight_gradients"]
            lines.append(f"| {r['in_channels']} → {r['out_channels']} channels | {r['grid']}³ | {layout} | "
                         f"{bad['autocast']} | {bad['training_train']} |")
    if doc.get("runs"):
        steps = [h[0] for h in doc["runs"][0]["validation"]]
        lines += ["", "The runs it quotes (`--runs`): whole-volume Dice of the scans of held-out training subjects "
                  f"{', '.join(doc['runs'][0]['validation_subjects'])} (`training.validate`), with the weights of "
                  "each validated step:", "",
                  "| run | precision | layout | minutes | " + " | ".join(f"Dice at step {s}" for s in steps) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in steps) + " |"]
        for run in doc["runs"]:
            layout = "channels-last 3D" if run["channels_last"] else "default"
            dice = " | ".join(_f(d) for _, d in run["validation"])
            lines.append(f"| `{run['command']}` | {run['precision']} | {layout} | {run['train_seconds'] / 60:.0f} | {dice} |")
    return "\n".join(lines)


def compare_command(doc: dict) -> str:
    """The command of a D record that measured it on the D designs' protocol (``training.compare_unmixing``)."""
    return next(c for c in doc["commands"] if "-m training.compare_unmixing " in c)


def calibrated_how(calibration: dict) -> str:
    """A calibration record (``training.calibrate``) in words: its minutes and the offsets of GM, WM and CSF."""
    return (f"{calibration['seconds'] / 60:.0f} min; offsets GM, WM, CSF "
            f"{', '.join(f'{o:+.1f}' for o in calibration['offsets'][1:])}")


def d_large_patches_md(doc: dict) -> str:
    """A D before and after the step that made it from another (``D_TRAINED_ON``): training on patches closer to
    the whole volume it runs on (``results/d_large_patches.json``: the end-to-end D; ``d_p2_large_patches.json``,
    ``d_p4_large_patches.json``: the Ds on 2³ and 4³ patches) or calibration (``d_p2_calibrated.json``)."""
    t = doc["training"]
    if "offsets" in t:  # training.calibrate's record
        made = f"Calibrated by `{doc['commands'][0]}` ({calibrated_how(t)})"
    else:
        made = f"Trained by `{doc['commands'][0]}` ({t['train_seconds'] / 60:.0f} min, {t['hardware']})"
        if doc.get("calibration"):  # trained, then calibrated: the second command
            made += f", calibrated by `{doc['commands'][1]}` ({calibrated_how(doc['calibration'])})"
    lines = [f"{made}; compared by `{compare_command(doc)}` ({doc['date']}), the D designs' protocol: "
             f"`{doc['protocol']}`. " + refreshed(doc) + linked_folders_note(doc["commands"])
             + "**MNI152-derived phantoms, not patients.**", "",
             "| D | made by | Learned | Learned + TTA | + TTA: GM | WM | CSF | × baseline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in (doc["before"], doc["after"]):
        tta = row["learned_tta"]
        lines.append(f"| {d_label(row['model'])} | {d_made_by(row['model'])} | {_f(row['learned']['avg'])} | "
                     f"{_f(tta['avg'])} | {_f(tta['GM'])} | {_f(tta['WM'])} | {_f(tta['CSF'])} | "
                     f"{_f(row['tta_over_baseline'])} |")
    return "\n".join(lines)


GPU_RUN = "gpu-h200"
"""The folder under results/ of the recipe's run on an NVIDIA H200 (training/recipe.sh): the evaluation's JSON
(``segmentation.json``), each model's ``training-<name>.json``, the step-time probe (``train_throughput.json``) and
the CUDA tests' log, each as the machine wrote it."""
GPU_MODELS = ("segmentation", "baseline", "unmixing-p2", "unmixing-p2-96-a35")


GPU_RUN_PREDATES = (", which includes the test–retest pairs of Learned + TTA that the GPU's run predates: 20 more "
                    "proxies for each scan outside the Dice volumes")


def gpu_run_md(doc: dict) -> str:
    """The recipe's run on a GPU (``results/gpu-h200/``): its training, its evaluation beside the shipped weights'
    (``results/segmentation.json``), and the CUDA tests' summary line."""
    folder = RESULTS / GPU_RUN
    trained = {m: json.loads((folder / f"training-{m}.json").read_text()) for m in GPU_MODELS}
    probe = json.loads((folder / "train_throughput.json").read_text())
    tests = (folder / "cuda_tests.log").read_text().splitlines()
    passed = next(line for line in reversed(tests) if " in " in line and ("passed" in line or "failed" in line))
    shipped = _load("segmentation")
    step = {r["mode"]: r["seconds_per_step"] for r in probe["rows"] if r["precision"] == "float32"
            and not r["channels_last"]}
    lines = [f"On one {trained['segmentation']['hardware'].split(', ')[-1]} ({doc['date']}): `python -m pytest "
             f"tests/test_cuda.py` — {passed.strip('= ').split(' in ')[0]}. A training step on batches of "
             f"{probe['batch_size']} patches of {probe['patch_size']}³ took {step['private']:.3f} s for S + D and "
             f"{step['baseline']:.3f} s for the baseline (`{probe['command']}`, float32). The recipe, with step counts "
             "that fit one 10-minute call on that machine:", "",
             "| model | command | steps × batch | minutes |", "| --- | --- | --- | --- |"]
    for name, t in trained.items():
        lines.append(f"| `{name}` | `{t['command']}` | {t['steps']} × {t['batch_size']} | {t['train_seconds'] / 60:.1f} |")
    lines += ["", f"Evaluated on that GPU by `MIXDEMO_WEIGHTS_DIR=/tmp/gpu {doc['command']}` (the recipe's OUT; "
              f"{doc['seconds'] / 60:.1f} min; the calibration stage "
              "was cut by the call's time limit, so D is the uncalibrated one), beside the shipped weights' evaluation "
              f"on 2 CPU cores ({shipped['seconds'] / 60:.0f} min{GPU_RUN_PREDATES if 'icc_tta' in shipped and 'icc_tta' not in doc else ''}). "
              "Same table protocol, same volumes. "
              "**MNI152-derived phantoms, not patients.**", "",
              "| average Dice | Baseline | Naive | Naive + TTA | Learned | Learned + TTA | Learned + TTA / Baseline | ICC GM | WM | CSF |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    followup = _load(f"{GPU_RUN}/{GPU_FOLLOWUP}")
    runs = [(f"recipe on the GPU, {trained['segmentation']['steps']} steps", doc)]
    if followup is not None:
        runs.append(("its S, D trained on on the CPU (below)", followup))
    for label, run in (*runs, ("shipped weights", shipped)):
        d = run["dice"]
        ratio = d["learned_tta"]["avg"] / d["baseline"]["avg"]
        icc = " | ".join(_f(run["icc"][c]["icc"]) for c in ("GM", "WM", "CSF"))
        lines.append(f"| {label} | " + " | ".join(_f(d[row]["avg"]) for row in
                     ("baseline", "naive", "naive_tta", "learned", "learned_tta")) + f" | {_f(ratio)} | {icc} |")
    per_volume = ", ".join(f"{v['baseline']:.2f}" for v in doc["dice_per_volume"].values())
    lines += ["", f"The GPU-trained baseline's Dice per volume: {per_volume}."]
    if followup is not None:
        lines += ["", gpu_followup_md(followup, shipped)]
    return "\n".join(lines)


GPU_FOLLOWUP = "segmentation-cpu-d"
"""The follow-up's evaluation under results/gpu-h200/: the GPU's S with its D trained on on the CPU, calibrated, and
the shipped baseline (its rule: ``followup_rule.md`` there, committed before it ran)."""


def gpu_followup_md(followup: dict, shipped: dict) -> str:
    """The follow-up's commands and what its declared rule makes of its ratio."""
    folder = RESULTS / GPU_RUN
    d_name = followup["models"]["unmixing"]
    d = json.loads((folder / f"training-{d_name}.json").read_text())
    ratio = followup["dice"]["learned_tta"]["avg"] / followup["dice"]["baseline"]["avg"]
    shipped_ratio = shipped["dice"]["learned_tta"]["avg"] / shipped["dice"]["baseline"]["avg"]
    verdict = ("holds" if ratio >= 0.99 else "fails" if ratio < shipped_ratio else "is not decided by this run")
    return (f"The follow-up, declared with its rule before it ran (`results/{GPU_RUN}/followup_rule.md`): is S's "
            "training budget what holds the ratio under 0.99? The GPU's S stayed frozen while its D trained on, on "
            f"2 CPU cores: `{d['command']}` "
            f"({d['train_seconds'] / 60:.0f} min), calibrated by `{d['calibration']['command']}` "
            f"({calibrated_how(d['calibration'])}), then evaluated by `{followup['command']}` "
            f"({followup['seconds'] / 60:.0f} min) with the shipped baseline, `MIXDEMO_WEIGHTS_DIR` a folder of links "
            f"to those models. `bash training/gpu_followup.sh OUT` redoes the evaluation from the folders committed "
            f"in `results/{GPU_RUN}/weights` (`RETRAIN=1`: the training and calibration too). Learned + TTA came to {ratio:.3f} × "
            f"the baseline (the shipped pair: {shipped_ratio:.3f} ×), so the hypothesis {verdict}. Nothing of it "
            "is shipped, as the rule said.")


RENDERERS: dict[str, Callable[[dict], str]] = {
    "segmentation": segmentation_md, "privacy": privacy_md, "bench": bench_md, "reliability": reliability_md,
    "d_designs": d_designs_md, "runtimes": runtimes_md, "ds_full_protocol": ds_full_protocol_md,
    "d_alpha_outside": d_alpha_outside_md, "s_bfloat16": s_bfloat16_md, "d_bfloat16": d_bfloat16_md,
    "replication": replication_md,
    "train_throughput": train_throughput_md, "d_ensembles": d_ensembles_md, "gpu_run": gpu_run_md,
    "reference_choice": reference_choice_md, "bench_cpus": bench_cpus_block, "bench_avx2": bench_md,
    "mirror_tta": mirror_tta_md, "segmentation_lesions": lesions_md,
    "segmentation_lesions_balanced": lesions_balanced_md, CONSISTENCY_RECORD: d_consistency_md,
    "inversion_variants": inversion_variants_md, "tta_aggregation": tta_aggregation_md, "raw_scans": raw_scans_md,
}
# README blocks drawn from another results file than their own name
BLOCK_SOURCES = {"ds_full_protocol": "segmentation", "d_alpha_outside": "d_p2_96_alpha_deployment",
                 "replication": "segmentation", "gpu_run": f"{GPU_RUN}/segmentation", "bench_cpus": BENCH_RECORDS[0],
                 "bench_avx2": BENCH_RECORDS[1], "segmentation_lesions": "lesion_cohort",
                 "segmentation_lesions_balanced": "lesion_cohort_balanced"}


def renderers() -> dict[str, Callable[[dict], str]]:
    """Every README block: the fixed ones and each D's training-on record (``D_TRAINED_ON``)."""
    return {**RENDERERS, **{record: d_large_patches_md for record in D_TRAINED_ON.values()}}


def _block(name: str) -> re.Pattern:
    """The README block ``name``: its opening marker, its lines, its closing marker."""
    return re.compile(rf"(<!-- results:{name} -->)\n(?:.*?\n)?(<!-- /results:{name} -->)", re.S)


def render_readme(text: str) -> str:
    """Replace every marked block whose JSON exists."""
    for name, render in renderers().items():
        doc = _load(BLOCK_SOURCES.get(name, name))
        if doc is None:
            continue
        text = _block(name).sub(lambda m: m.group(1) + "\n" + render(doc) + "\n" + m.group(2), text)
    return text


def unmarked_blocks(text: str) -> list[str]:
    """The blocks whose JSON exists but which ``text`` does not mark (a marker lost in an edit): nothing renders
    them, so their figures would go stale unseen."""
    return [name for name in renderers()
            if _load(BLOCK_SOURCES.get(name, name)) is not None and not _block(name).search(text)]


CARDS = {
    "segmentation": ("Mixup-Privacy server segmentation network S (3D U-Net++)",
                     "The server-side network of Mixup-Privacy: segments a *proxy* (target mixed with a private "
                     "reference, Eq. 2) into the mixed segmentation ŷ_mix (Eq. 3). MONAI `BasicUNetPlusPlus` with "
                     "batch norm. Load with `mixdemo.weights.load_model(\"segmentation\")`."),
    "unmixing-96": ("Mixup-Privacy client unmixing network D (AdaIN U-Net) at full resolution, trained on 96³ patches",
                    "The client-side unmixing network: from softmax(ŷ_mix), the reference's one-hot labels and α "
                    "(through adaptive instance norm) it predicts the target's segmentation. {how} The client runs "
                    "D on the whole volume, where its adaptive instance norm takes statistics over the whole grid, "
                    "so it was trained on last on patches closer to that."),
    "unmixing": ("Mixup-Privacy client unmixing network D trained end to end with S (32³ patches)",
                 "The client-side unmixing network: from softmax(ŷ_mix), the reference's one-hot labels and α "
                 "(through adaptive instance norm) it predicts the target's segmentation. {how} It "
                 "is the start of `unmixing-96`, which trained on from it on 96³ patches and scores "
                 "higher at the same client time (the tables below)."),
    "unmixing-p2": ("Mixup-Privacy client unmixing network D on 2³ patches (cheaper)",
                    "A cheaper client D: the four AdaIN blocks and widths of `unmixing`. {how} A fraction of the "
                    "full-resolution Ds' client time (the table below). It is the start of `unmixing-p2-96`, which "
                    "trained on from it on 96³ patches."),
    "unmixing-p2-96": ("Mixup-Privacy client unmixing network D on 2³ patches, trained on 96³ patches",
                       "The cheaper client D `unmixing-p2` (the four AdaIN blocks and widths of `unmixing`) trained "
                       "on where it runs. {how} The same network as `unmixing-p2`, so the same client time."),
    "unmixing-p2-96-cal": ("Mixup-Privacy client unmixing network D on 2³ patches, trained on 96³ patches, with "
                           "calibrated class offsets",
                           "The client D `unmixing-p2-96` with one logit offset per class fitted on training scans "
                           "(`python -m training.calibrate`). {how} The same network as `unmixing-p2-96`, so the same "
                           "client time."),
    "unmixing-p2-96-a35": ("Mixup-Privacy client unmixing network D on 2³ patches, trained on 96³ patches, then on "
                           "the client's α range",
                           "The client D `unmixing-p2-96` trained on for 320 more steps on 96³ patches with α drawn "
                           "from the range the client draws it from, U(0.3, 0.5), instead of U(0.1, 0.9). {how} The "
                           "same network as `unmixing-p2-96`, so the same client time. It is the start of "
                           "`unmixing-p2-96-a35-cal`, the default D, and was not evaluated on its own (its calibrated "
                           "copy was: that card has the figures)."),
    "unmixing-p2-96-a35-cal": ("Mixup-Privacy client unmixing network D on 2³ patches, trained on 96³ patches and on "
                               "the client's α range, with calibrated class offsets",
                               "The client D `unmixing-p2-96-a35` with one logit offset per class fitted on training "
                               "scans (`python -m training.calibrate`). {how} The same network as `unmixing-p2-96`, "
                               "so the same client time. It was trained on α ~ U(0.3, 0.5) only, so before it became "
                               "the default it was also measured at α ~ U(0.1, 0.3) and U(0.5, 0.9) against the D it "
                               "replaced (`results/d_p2_96_alpha_deployment.json`, `outside_deployment_range`)."),
    "unmixing-p4": ("Mixup-Privacy client unmixing network D on 4³ patches with a per-voxel MLP (cheapest)",
                    "The cheapest client D: the four AdaIN blocks and widths of `unmixing`. {how} A small fraction of "
                    "the full-resolution Ds' client time and a lower Dice (the table below). It is the start of "
                    "`unmixing-p4-96`, which trained on from it on 96³ patches."),
    "unmixing-p4-96": ("Mixup-Privacy client unmixing network D on 4³ patches with a per-voxel MLP, trained on 96³ "
                       "patches",
                       "The cheapest client D `unmixing-p4` (the four AdaIN blocks and widths of `unmixing`) trained "
                       "on where it runs. {how} The same network as `unmixing-p4`, so the same client time."),
    "baseline": ("Mixup-Privacy baseline (U-Net++ on unmixed images)",
                 "The same U-Net++ as S trained on raw (unmixed) images: the accuracy that privacy costs is "
                 "measured against it. Load with `mixdemo.weights.load_model(\"baseline\")`."),
    "segmentation-2ref": ("Mixup-Privacy S for two references per mix (three sources)",
                          "S trained on proxies that mix the target with two references, "
                          "x_mix = α·x + (1 − α)·(u·r₁ + (1 − u)·r₂) (the paper's future work), for the two-reference "
                          "defence of the attack lab. Warm-started from the one-reference S (`--init-from weights`). "
                          "Load with `mixdemo.weights.load_model(\"segmentation-2ref\")`."),
    "unmixing-2ref": ("Mixup-Privacy D for two references per mix (three sources)",
                      "D for three-source proxies: inputs softmax(ŷ_mix), both references' one-hot labels and the "
                      "weights (α, w₁, w₂) through AdaIN. Widened from the one-reference D "
                      "(`mixdemo.models.widen_references`) and trained on with S. "
                      "Load with `mixdemo.weights.load_model(\"unmixing-2ref\")`."),
}


def section_run(doc: dict, section: str) -> dict:
    """The command and date that measured one section of ``results/privacy.json`` (``sections_run``; a file
    from before it was recorded: its last command and date)."""
    return doc.get("sections_run", {}).get(section) or {"command": doc.get("command", "?"), "date": doc.get("date", "?")}


def two_references_md(doc: dict, header: bool = True) -> str:
    """The two-reference defence, measured against one reference on the same patches."""
    row = (doc.get("defences") or {}).get("two_references")
    if not isinstance(row, dict):
        return "Not measured yet: run `python -m training.evaluate_privacy --sections defences --merge`."
    one = row.get("one_reference_same_patches", {})
    ran = section_run(doc, "defences")
    head = (f"Measured by `{ran['command']}` ({ran['date']}), " if header else "") + (
        f"α ~ U{tuple(row.get('alpha_range', []))}, {row.get('n_patches')} test patches of 32³, TTA over "
        f"{row.get('tta_k')} mixes; re-identification on whole scans; separation on {row.get('n_bss_proxies')} patches, 1 chain each."
        + (" **MNI152-derived phantoms, not patients.**" if header else ""))
    return "\n".join([
        head, "",
        "| | one reference | two references |", "| --- | --- | --- |",
        f"| Learned + TTA Dice | {_f(one.get('dice_avg'))} | {_f(row.get('dice_avg'))} |",
        f"| Learned Dice (one mix) | {_f(one.get('dice_learned'))} | {_f(row.get('dice_learned'))} |",
        f"| output-leakage Dice (server's arg-max) | {_f(one.get('output_leakage_dice'))} | {_f(row.get('output_leakage_dice'))} |",
        f"| single-proxy re-id mAP | {_f(row.get('reid_single_proxy_map_one_reference'))} | {_f(row.get('reid_single_proxy_map'))} |",
        f"| separation, weights known: MS-SSIM | {_f(row.get('bss_alpha_known_one_reference_msssim'))} | {_f(row.get('bss_weights_known_msssim'))} |",
    ])


def unmixing_how(folder: Path) -> str:
    """How a D folder was trained and where its blocks run, from its config and training record."""
    record = read_training_record(folder)
    config = json.loads((folder / "config.json").read_text())
    patch, hidden = config.get("patch", 1), config.get("voxel_hidden", 0)
    per_voxel = (f"a per-voxel MLP of {hidden} channels conditioned on α (FiLM) that takes each voxel's own "
                 "inputs and the blocks' features brought back to it" if hidden else
                 "an α-gated per-voxel skip from the inputs to the logits")
    where = (f"Its four blocks run on {patch}³ patches (a stride-{patch} convolution in, a transposed one out, "
             f"and {per_voxel})." if patch > 1 else "")
    if record.get("init_unmixing"):
        how = (f"Started from the D `{record['init_unmixing']}` and trained on alone against the frozen S "
               f"(`--mode unmixing --init-unmixing {record['init_unmixing']}`)")
        size = record.get("patch_size", 32)
        how += f" on {size}³ patches (`--patch-size {size}`)." if size != 32 else "."
    elif record.get("mode") == "unmixing":
        how = "Trained on the outputs of the frozen S (`--mode unmixing`)."
    else:
        how = f"Trained end to end with S on {record.get('patch_size', 32)}³ patches."
    return f"{where} {how}".strip()


def calibration_sentence(record: dict) -> str:
    """How a model folder made by ``training.calibrate`` differs from the weights it came from ('' for others)."""
    cal = record.get("calibration")
    if not cal:
        return ""
    offsets = ", ".join(f"{c} {v:+.1f}" for c, v in zip(("GM", "WM", "CSF"), cal["offsets"][1:]))
    what = ("its labels" if "tta_k" not in cal else
            f"the client's labels after TTA over {cal['tta_k']} mixes through `{cal['segmentation']}`")
    return (f"Its final layer's bias carries per-class logit offsets ({offsets}; background 0) fitted on "
            f"{len(cal['scans'])} training scans' mean Dice of {what}, {cal['train_dice_before']:.4f} → "
            f"{cal['train_dice_after']:.4f}, by `{cal['command']}`, from the weights with SHA-256 "
            f"`{cal['from_sha256'][:12]}…`; nothing else changed.")


def d_card_use(name: str, title: str, summary: str) -> tuple[str, str]:
    """A one-reference D card's title and summary with how the app and the client use it: the default D
    (:data:`mixdemo.weights.DEFAULT_UNMIXING`) says so, another names its switch."""
    load = f"Load with `mixdemo.weights.load_model(\"{name}\")`."
    if name == DEFAULT_UNMIXING:
        return f"{title} (the default)", f"{summary} The default D of the app and the client. {load}"
    return title, (f"{summary} Not the default; the app and the client use it with `MIXDEMO_UNMIXING={name}` "
                   f"(or `python -m mixdemo.client --unmixing {name}`). {load}")


def compared_with_title(name: str, before: str) -> str:
    """The card section's title for a D's record against ``before``: the D it was made from (trained on from or
    calibrated), or else the default D it was measured against on the same proxies."""
    record = read_training_record(REPO / "weights" / name)
    made_from = (record.get("calibration") or {}).get("from_model") or record.get("init_unmixing")
    if before == made_from:
        return f"Against the D it was made from (`{before}`)"
    return f"Against `{before}`, the default D when it was measured (the same proxies)"


def d_comparisons(name: str) -> dict[str, str]:
    """A D's card sections that compare it with other Ds: the D designs table (with the default D, when ``name``
    is one of its rows and not the default), the record of the step that made it from another D (``D_TRAINED_ON``),
    and the tables of every D on the segmentation table's protocol and of Ds averaged there when it has a row in them."""
    sections = {}
    designs = _load("d_designs")
    if designs and name != DEFAULT_UNMIXING and name in {r["model"] for r in d_designs_rows(designs)[0]}:
        sections["Evaluation against the default D (phantom test set)"] = d_designs_md(designs)
    trained_on = _load(D_TRAINED_ON[name]) if name in D_TRAINED_ON else None
    if trained_on:
        sections[compared_with_title(name, trained_on['before']['model'])] = d_large_patches_md(trained_on)
    seg = _load("segmentation")
    if seg and name in {_d_name(d) for _, d in ds_on_full_protocol(seg)}:
        sections[FULL_PROTOCOL_SECTION] = ds_full_protocol_md(seg)
    ensembles = _load("d_ensembles")
    if ensembles and any(row["models"] == [name] for row in ensembles["rows"]):
        sections[ENSEMBLES_SECTION] = d_ensembles_md(ensembles)
    return sections


def segmentation_configuration(folder: Path) -> str:
    """The Configurations line of an S folder (S, the baseline): its widths and parameters, from its config.json,
    beside the paper-size configuration's (:data:`mixdemo.models.PAPER_FEATURES`) for GPUs."""
    from mixdemo.models import PAPER_FEATURES, SegmentationNet, count_parameters

    config = json.loads((folder / "config.json").read_text())
    mine = count_parameters(SegmentationNet(**config))
    paper = count_parameters(SegmentationNet(**{**config, "features": PAPER_FEATURES}))
    return (f"This network: U-Net++ features {tuple(config['features'])}, {mine / 1e6:.2f} M parameters (its Training "
            "record says on what and for how long it was trained). Paper size for GPUs: `--features paper` "
            f"{PAPER_FEATURES}, {paper / 1e6:.2f} M parameters; scale with `torchrun --nproc_per_node=N -m training.train`.")


def write_cards(weights_root: Path) -> list[Path]:
    """Model cards quoting the measured table and the commands."""
    seg = _load("segmentation")
    written = []
    for name, (title, summary) in CARDS.items():
        folder = weights_root / name
        if not (folder / "model.safetensors").exists():
            continue
        sections = {"How to use": "```python\nfrom mixdemo.models import pick_device\nfrom mixdemo.weights import load_model\n"
                                  f"model = load_model(\"{name}\", device=str(pick_device()))\n```\n"
                                  "`pick_device()`: CUDA when present, else the CPU (without `device`, the model stays "
                                  "on the CPU)."}
        if name.endswith("-2ref"):
            privacy = _load("privacy")
            if privacy:
                sections["Evaluation (phantom test patches)"] = two_references_md(privacy)
        elif name.startswith("unmixing") and name != DEFAULT_UNMIXING:
            sections.update(d_comparisons(name))
        elif seg:
            sections["Evaluation (phantom test set)"] = segmentation_md(seg)
            if name == DEFAULT_UNMIXING:
                sections.update(d_comparisons(name))
        if not name.startswith("unmixing"):
            sections["Configurations"] = segmentation_configuration(folder)
        else:
            config = json.loads((folder / "config.json").read_text())
            hidden = f", per-voxel MLP {config['voxel_hidden']} channels" if config.get("voxel_hidden") else ""
            sections["Configurations"] = (f"D: widths {tuple(config['features'])}, patch {config.get('patch', 1)}{hidden}, "
                                          f"{config['n_references']} reference(s) per mix; the same configuration "
                                          "trains on CPUs and GPUs (`python -m training.train --help`).")
        note = folder / "TRAINING_NOTE.md"
        if note.exists():
            sections["Training history"] = note.read_text(encoding="utf-8")
        summary = summary.replace("{how}", unmixing_how(folder)) if "{how}" in summary else summary
        summary = f"{summary} {calibration_sentence(read_training_record(folder))}".strip()
        if name.startswith("unmixing") and not name.endswith("-2ref"):
            title, summary = d_card_use(name, title, summary)
        written.append(write_model_card(folder, title=title, summary=summary, sections=sections))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = p.parse_args(argv)
    readme = REPO / "README.md"
    current = readme.read_text(encoding="utf-8")
    fresh = render_readme(current)
    unmarked = unmarked_blocks(current)
    if unmarked:
        print(f"README.md lacks the markers of block(s) {', '.join(unmarked)}: <!-- results:NAME --> and "
              "<!-- /results:NAME -->", file=sys.stderr)
    if args.check:
        if fresh != current or unmarked:
            print("README.md is out of date with results/: run python -m training.report", file=sys.stderr)
            return 1
        print("README.md is up to date with results/")
        return 0
    readme.write_text(fresh, encoding="utf-8")
    cards = write_cards(REPO / "weights")
    print(f"README.md updated; {len(cards)} model cards written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
