#!/usr/bin/env bash
# The follow-up of results/gpu-h200/ (its rule: results/gpu-h200/followup_rule.md), from the committed folders in
# results/gpu-h200/weights: the H200's S and D (recipe.sh's run), and the D trained on from them on the CPU, then
# calibrated. Evaluates that S and D with the shipped baseline (weights/baseline) on the table's protocol:
#   bash training/gpu_followup.sh OUT            # OUT/segmentation-cpu-d.json (about 25 min on 2 cores)
#   RETRAIN=1 bash training/gpu_followup.sh OUT  # first trains and calibrates the D again into OUT (about 40 min more)
# (results/gpu-h200/segmentation.json, the run's own evaluation, needs the GPU-trained baseline, which is not
# committed: it comes from running training/recipe.sh on a GPU again.)
set -euo pipefail
out=${1:?usage: bash training/gpu_followup.sh OUT}
repo=$(cd "$(dirname "$0")/.." && pwd)
gpu="$repo/results/gpu-h200/weights"
mkdir -p "$out"
links=$(mktemp -d)
ln -s "$gpu/segmentation" "$links/segmentation"
ln -s "$gpu/unmixing-p2-96-a35" "$links/unmixing-p2-96-a35"
ln -s "$repo/weights/baseline" "$links/baseline"
d="$gpu/unmixing-p2-96-a35b-cal"
if [[ ${RETRAIN:-0} == 1 ]]; then
  python -m training.train --mode unmixing --init-from "$links" --init-unmixing unmixing-p2-96-a35 --unmix-patch 2 \
    --patch-size 96 --steps 320 --batch-size 1 --lr 3e-4 --alpha-range 0.3 0.5 --threads 2 --seed 3 --out "$out" \
    --name unmixing-p2-96-a35b --run-dir "$out/run"
  ln -s "$out/unmixing-p2-96-a35b" "$links/unmixing-p2-96-a35b"
  MIXDEMO_WEIGHTS_DIR="$links" python -m training.calibrate --model unmixing-p2-96-a35b --scans 6 --grid -1 2 0.1 \
    --threads 2 --out "$out" --name unmixing-p2-96-a35b-cal
  d="$out/unmixing-p2-96-a35b-cal"
fi
ln -s "$d" "$links/unmixing-p2-96-a35b-cal"
MIXDEMO_WEIGHTS_DIR="$links" python -m training.evaluate --brain-mask --threads 2 --no-figures \
  --unmixing unmixing-p2-96-a35b-cal --out "$out/segmentation-cpu-d.json"
