#!/usr/bin/env bash
# Runs one training into runs/results/<model>/<run> and copies what a reader of the results
# needs (metrics.csv, pruning.csv, command.txt; never checkpoints) into results/<model>/<run>/.
# Resumes the run when runs/results/<model>/<run>/last.ckpt exists (a run cut off by the end of a
# session). Usage:
#   scripts/run_into_results.sh MODEL RUN [sbfnet train flags...]
# e.g. scripts/run_into_results.sh resnet20 sbf-50-lstsq --epochs 8 --warmup-epochs 1 --prune-rate 0.55
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 run=$2
shift 2
out=runs/results/$model/$run
mkdir -p "$(dirname "$out")" "results/$model/$run"
if [ -f "$out/last.ckpt" ]; then
  target/release/sbfnet train --resume "$out/last.ckpt"
else
  target/release/sbfnet train --model "$model" "$@" --out "$out"
fi
for file in metrics.csv pruning.csv command.txt; do
  if [ -f "$out/$file" ]; then cp "$out/$file" "results/$model/$run/"; fi
done
