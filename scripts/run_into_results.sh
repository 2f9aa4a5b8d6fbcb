#!/usr/bin/env bash
# Runs one training into runs/results/<group>/<run> and copies what a reader of the results
# needs into results/<group>/<run>/: metrics.csv, pruning.csv, command.txt and summary.txt (what
# `sbfnet report` needs of the checkpoint), never checkpoints. Resumes the run when
# runs/results/<group>/<run>/last.ckpt exists (a run cut off by the end of a session). The group
# is the model's name without its width, so a thin baseline (resnet20-w11) lands beside the
# resnet20 runs; GROUP=name files the copy under results/<name>/ instead (one table per recipe,
# e.g. GROUP=resnet20-40ep). Usage:
#   scripts/run_into_results.sh MODEL RUN [sbfnet train flags...]
# e.g. scripts/run_into_results.sh resnet20 sbf-55-lstsq-8ep --epochs 8 --warmup-epochs 1 --prune-rate 0.55
# then: target/release/sbfnet report results/resnet20 --plot docs/results-resnet20.png
# SBFNET_BIN=path runs another binary (e.g. a copy, so a rebuild mid-run cannot change it).
# runs/ may be a link to a folder outside the checkout (ln -s ~/sbfnet-runs runs), so that the
# checkpoints of a run cut off by a session's end survive a fresh checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 run=$2
shift 2
bin=${SBFNET_BIN:-target/release/sbfnet}
group=${model%%-w*}
out=runs/results/$group/$run
dest=results/${GROUP:-$group}/$run
mkdir -p "$(dirname "$out")" "$dest"
# A run stopped with Ctrl-C (exit 130) still has its metrics copied; its status is the script's.
status=0
if [ -f "$out/last.ckpt" ]; then
  "$bin" train --resume "$out/last.ckpt" || status=$?
else
  "$bin" train --model "$model" "$@" --out "$out" || status=$?
fi
"$bin" report "runs/results/$group" --write-summaries > /dev/null
for file in metrics.csv pruning.csv command.txt summary.txt; do
  if [ -f "$out/$file" ]; then cp "$out/$file" "$dest/"; fi
done
exit "$status"
