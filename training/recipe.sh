#!/usr/bin/env bash
# The stages of the shipped weights' training, in one go from scratch, for a machine with a GPU (it runs on CPUs
# too, slowly); the step counts are arguments (the shipped ones in brackets, as each model card gives them):
#   1. the phantom cohort (kept if present; one worker process per core),
#   2. S + D end to end (Eq. 2-4) and the baseline, side by side, on 32³ patches,
#   3. the baseline's leg on 64³ patches, one a step [650], beside
#   4. the default D's design on the frozen S: 2³ patches on 32³ windows [5000, batch 8], then on 96³ windows with
#      α ~ U(0.3, 0.5) (the shipped D had a leg at α ~ U(0.1, 0.9) between: [320 + 320, batch 1]),
#   5. the calibrations (training.calibrate) of the baseline, in place as the shipped one, and of D,
#   6. the evaluation of the three (training.evaluate) into OUT/segmentation.json.
# Every stage writes its model folders into OUT and its log to OUT/logs; evaluate them later with
#   MIXDEMO_WEIGHTS_DIR=OUT python -m training.evaluate --brain-mask --unmixing unmixing-p2-96-a35-cal
#
# Usage: bash training/recipe.sh OUT [S_STEPS] [BATCH] [D_STEPS] [D96_STEPS] [B64_STEPS]
#   S_STEPS, BATCH: S's and the baseline's steps and batch on 32³ patches [3000 and 4000, batch 4]; D_STEPS: D's
#   steps on 32³ (batch 8); D96_STEPS: D's on 96³ windows (batch 2); B64_STEPS: the baseline's on 64³ (0: none).
#   RECIPE_QUICK=1: a smoke run (a small calibration, evaluate --quick).
set -euo pipefail
out=${1:?usage: bash training/recipe.sh OUT [S_STEPS] [BATCH] [D_STEPS] [D96_STEPS] [B64_STEPS]}
s_steps=${2:-6000}; batch=${3:-16}; d_steps=${4:-3000}; d96_steps=${5:-600}; b64_steps=${6:-650}
data=${MIXDEMO_DATA:-data/phantoms}
cal_args=(--scans 6 --grid -1 2 0.1); eval_args=()
if [[ ${RECIPE_QUICK:-0} == 1 ]]; then cal_args=(--scans 1 --tta-k 2 --grid 0 0.2 0.1 --rounds 1); eval_args=(--quick); fi
mkdir -p "$out/logs"
stage() { echo "== $(date -u +%H:%M:%S) $*"; }

stage cohort
python -m mixdemo.phantoms --out "$data" --subjects 24 --scans 2 --seed 0 --jobs "$(nproc)" > "$out/logs/cohort.log"

stage "S + D end to end, and the baseline, side by side"
python -m training.train --mode private --data "$data" --steps "$s_steps" --batch-size "$batch" --lr 1.5e-3 \
  --out "$out" --run-dir "$out/runs/segmentation" > "$out/logs/private.log" 2>&1 &
private=$!
python -m training.train --mode baseline --data "$data" --steps "$s_steps" --batch-size "$batch" --lr 1.5e-3 \
  --out "$out" --run-dir "$out/runs/baseline" > "$out/logs/baseline.log" 2>&1 &
baseline=$!
wait "$private" || { tail -5 "$out/logs/private.log"; exit 1; }
wait "$baseline" || { tail -5 "$out/logs/baseline.log"; exit 1; }

if (( b64_steps > 0 )); then
  stage "the baseline on 64³ patches, beside D"
  python -m training.train --mode baseline --data "$data" --init-from "$out" --steps "$b64_steps" --batch-size 1 \
    --patch-size 64 --lr 5e-4 --out "$out" --run-dir "$out/runs/baseline-64" > "$out/logs/baseline-64.log" 2>&1 &
  baseline64=$!
fi

stage "D on 2³ patches (32³ windows), S frozen"
python -m training.train --mode unmixing --data "$data" --init-from "$out" --unmix-patch 2 --steps "$d_steps" \
  --batch-size 8 --lr 2e-3 --out "$out" --name unmixing-p2 --run-dir "$out/runs/unmixing-p2" > "$out/logs/unmixing-p2.log" 2>&1

stage "D on 96³ windows, α ~ U(0.3, 0.5)"
python -m training.train --mode unmixing --data "$data" --init-from "$out" --init-unmixing unmixing-p2 --unmix-patch 2 \
  --patch-size 96 --batch-size 2 --steps "$d96_steps" --lr 2e-4 --alpha-range 0.3 0.5 --seed 3 --out "$out" \
  --name unmixing-p2-96-a35 --run-dir "$out/runs/unmixing-p2-96-a35" > "$out/logs/unmixing-p2-96-a35.log" 2>&1

if (( b64_steps > 0 )); then wait "$baseline64" || { tail -5 "$out/logs/baseline-64.log"; exit 1; }; fi

stage calibrations
MIXDEMO_WEIGHTS_DIR="$out" python -m training.calibrate --model baseline --data "$data" "${cal_args[@]}" \
  --out "$out" > "$out/logs/calibrate-baseline.log" 2>&1
MIXDEMO_WEIGHTS_DIR="$out" python -m training.calibrate --model unmixing-p2-96-a35 --data "$data" "${cal_args[@]}" \
  --out "$out" --name unmixing-p2-96-a35-cal > "$out/logs/calibrate.log" 2>&1

stage evaluation
MIXDEMO_WEIGHTS_DIR="$out" python -m training.evaluate --data "$data" --brain-mask --no-figures "${eval_args[@]}" \
  --unmixing unmixing-p2-96-a35-cal --out "$out/segmentation.json" > "$out/logs/evaluate.log" 2>&1
stage done
