#!/usr/bin/env bash
# bench/gpu_all.sh: everything one device call does for the CUDA engine, logs under $OUT:
# build on the GPU machine (tools/gpu_build.sh, .carry carried), the GPU tests, attnscope bench,
# PyTorch SDPA on the same shapes; a short summary last. Usage: bench/gpu_all.sh [bench options].
set -u
OUT=${OUT:-/tmp/attnscope-gpu-out}
mkdir -p "$OUT"
B=build-gpu
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
t0=$(date +%s)
tools/gpu_build.sh build $B >"$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "error|undefined" "$OUT/build.log" | head -20
: >"$OUT/tests.log"
for t in $B/tests/gpu_*; do
    [ -x "$t" ] || continue
    timeout 300 "$t" >>"$OUT/tests.log" 2>&1
    echo "$(basename "$t") rc=$?"
done
grep -E "^\[  (PASSED|FAILED) |FAILED|rel-L2 .*e-0[0-2]|worst" "$OUT/tests.log" | head -40
if [ -x $B/attnscope ]; then
    BENCH_OUT=$OUT BENCH_NS=${BENCH_NS:-8192,16384,32768,65536,131072} bench/run.sh $B/attnscope "$@" 2>&1 | tee "$OUT/bench.log"
else
    echo "no $B/attnscope: bench skipped"
fi
