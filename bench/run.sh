#!/usr/bin/env bash
# bench/run.sh BIN [attnscope bench options]: what `make bench` runs. Without a usable GPU it runs
# the CPU benchmarks (bench/cpu_prefill.sh, bench/cpu_sparse.sh). With one it times our kernels
# (attnscope bench, JSON kept in $BENCH_OUT or /tmp), then PyTorch SDPA (flash and cuDNN backends)
# on the same shapes in the same run when python3 has torch with CUDA, and prints our/their ratios.
set -u
bin=${1:?usage: bench/run.sh BIN [bench options]}; shift
out=${BENCH_OUT:-/tmp}
mkdir -p "$out"
ns=${BENCH_NS:-8192,16384,32768,65536,131072}
if ! "$bin" bench --n "$ns" --json "$out/attnscope_bench.json" "$@"; then
    # no usable GPU (or no CUDA build): the CPU benchmarks instead, so `make bench` means something on
    # a laptop too: the prefill target (issue 2) and sparse vs dense attention on the CPU
    echo "bench: GPU benchmark unavailable; running the CPU benchmarks"
    here=$(dirname "$0")
    "$here/cpu_prefill.sh" "$bin" || exit $?
    lib=$(dirname "$bin")/libattnscope.a
    "$here/cpu_sparse.sh" "$lib" --n 4096,16384 --d 128 || exit $?
    exit 0
fi
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    python3 "$(dirname "$0")/sdpa.py" --n "$ns" --ours "$out/attnscope_bench.json" --json "$out/sdpa.json"
else
    echo "bench: PyTorch with CUDA not found: SDPA comparison skipped"
fi
