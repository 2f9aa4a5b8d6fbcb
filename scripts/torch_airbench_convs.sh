#!/usr/bin/env bash
# PyTorch's figures for airbench94's 3×3 convolutions (the shapes of `sbfnet bench --net
# airbench94`), with ../shared/bench/torch_ref.py's timing and FLOP convention: its conv table
# with the shape list swapped, the ResNets skipped. Writes JSON for `sbfnet bench --torch-json`.
# Usage: scripts/torch_airbench_convs.sh BATCH OUT.json [THREADS]
# e.g.   scripts/torch_airbench_convs.sh 256 /tmp/torch_airbench.json 2
#        target/release/sbfnet bench --net airbench94 --batch 256 --torch-json /tmp/torch_airbench.json
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:?usage: scripts/torch_airbench_convs.sh BATCH OUT.json [THREADS]}
out=${2:?usage: scripts/torch_airbench_convs.sh BATCH OUT.json [THREADS]}
threads=${3:-2}
python=${TORCH_PYTHON:-$HOME/torchref/bin/python}
"$python" - "$batch" "$out" "$threads" <<'PY'
import sys
batch, out, threads = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.path.insert(0, "../shared/bench")
import torch_ref
# (N, C_in, C_out, H = W of the input, stride), as AIRBENCH_CONVS in src/benchmark/conv.rs
torch_ref.CONV_SHAPES = [(batch, c, f, size, 1) for c, f, size in
                         [(24, 64, 31), (64, 64, 15), (64, 256, 15), (256, 256, 7), (256, 256, 3)]]
sys.argv = ["torch_ref.py", "--threads", threads, "--conv-only", "--out", out]
torch_ref.main()
PY
