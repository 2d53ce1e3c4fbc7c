#!/usr/bin/env bash
# bench/run.sh BIN [attnscope bench options]: what `make bench` runs. Times our kernels
# (attnscope bench, JSON kept in $BENCH_OUT or /tmp), then PyTorch SDPA (flash and cuDNN backends)
# on the same shapes in the same run when python3 has torch with CUDA, and prints our/their ratios.
set -u
bin=${1:?usage: bench/run.sh BIN [bench options]}; shift
out=${BENCH_OUT:-/tmp}
mkdir -p "$out"
ns=${BENCH_NS:-8192,16384,32768,65536,131072}
"$bin" bench --n "$ns" --json "$out/attnscope_bench.json" "$@" || exit $?
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    python3 "$(dirname "$0")/sdpa.py" --n "$ns" --ours "$out/attnscope_bench.json" --json "$out/sdpa.json"
else
    echo "bench: PyTorch with CUDA not found: SDPA comparison skipped"
fi
