#!/usr/bin/env bash
# One seed's airbench94 pair, back to back on this machine with nothing else running: the PyTorch
# reference (../shared/bench/airbench_ref.py, its recipe unchanged) and then `sbfnet train --model
# airbench94` on the same seed, both on 2 threads. Each process runs under GNU time -v, whose
# wall clock and maximum resident set size land beside the run in results/airbench94/<run>/
# (reference.jsonl, reference-time.txt, sbfnet-time.txt, and what scripts/run_into_results.sh
# copies). Usage:
#   scripts/airbench_pair.sh SEED [RUN] [sbfnet train flags...]
# e.g. scripts/airbench_pair.sh 0                       -> results/airbench94/dense-s0
#      scripts/airbench_pair.sh 0 sbf-50 --prune-rate 0.5 (SKIP_REFERENCE=1 to run sbfnet only)
# TORCH_PYTHON=path picks the reference's interpreter (default ~/torchref/bin/python);
# SBFNET_BIN=path runs another sbfnet binary.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:?usage: scripts/airbench_pair.sh SEED [RUN] [sbfnet train flags...]}
name=${2:-dense}
shift $(( $# >= 2 ? 2 : 1 ))
run=$name-s$seed
dest=results/airbench94/$run
data=../shared/data/cifar-10-batches-bin
python=${TORCH_PYTHON:-$HOME/torchref/bin/python}
mkdir -p "$dest"
lscpu | grep -E 'Model name|^CPU\(s\)' > "$dest/cpu.txt"
if [ -z "${SKIP_REFERENCE:-}" ]; then
  /usr/bin/time -v -o "$dest/reference-time.txt" \
    "$python" ../shared/bench/airbench_ref.py "$data" "$dest/reference.jsonl" --threads 2 --seed "$seed"
fi
/usr/bin/time -v -o "$dest/sbfnet-time.txt" env GROUP=airbench94 \
  scripts/run_into_results.sh airbench94 "$run" --threads 2 --seed "$seed" "$@"
