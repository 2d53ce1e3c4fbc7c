#!/usr/bin/env bash
# bench/gpu_k7.sh: one device call for the issue-7 CUDA work (build, the GPU tests, kernel bench with
# the fixed-index VS row, end-to-end synthetic prefill), logs under $OUT, short summary last.
# Usage on the GPU machine (.carry carried): bench/gpu_k7.sh
set -u
OUT=${OUT:-/tmp/attnscope-gpu-out}
mkdir -p "$OUT"
B=build-gpu
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$OUT/device.txt"
t0=$(date +%s)
tools/gpu_build.sh build $B >"$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "error|undefined" "$OUT/build.log" | head -20
: >"$OUT/tests.log"
for t in ${K7_TESTS:-gpu_index gpu_map gpu_prefill}; do
    t1=$(date +%s)
    timeout ${K7_TEST_TIMEOUT:-240} "$B/tests/$t" >"$OUT/t.log" 2>&1
    echo "$t rc=$? in $(( $(date +%s) - t1 )) s"
    cat "$OUT/t.log" >>"$OUT/tests.log"
    grep -E "FAILED|bs\(topk|worst|refusal|synthetic|equal to the CPU merge|gpu map" "$OUT/t.log" | tail -12
done
t1=$(date +%s)
"$B/attnscope" bench --n ${K7_NS:-32768,131072} --reps 5 --patterns vs,bs,ashape --vs-fixed 1000,6096 \
    --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log"
echo "kernel bench in $(( $(date +%s) - t1 )) s"
t1=$(date +%s)
"$B/attnscope" bench --synthetic llama3-8b --n ${K7_E2E_NS:-32768,131072} --json "$OUT/e2e_llama3_8b.json" 2>&1 | tee "$OUT/e2e.log"
"$B/attnscope" bench --synthetic llama3-70b-layer --n 131072 2>&1 | tee -a "$OUT/e2e.log"
"$B/attnscope" bench --synthetic qwen2-7b --n 32768 2>&1 | tee -a "$OUT/e2e.log"
"$B/attnscope" bench --synthetic llama3-8b --n 4194304 2>&1 | tee -a "$OUT/e2e.log"
echo "e2e bench in $(( $(date +%s) - t1 )) s"
if [ -n "${K7_LAST_TESTS:-gpu_attn}" ]; then
    for t in ${K7_LAST_TESTS:-gpu_attn}; do
        t1=$(date +%s)
        timeout ${K7_TEST_TIMEOUT:-240} "$B/tests/$t" >"$OUT/t.log" 2>&1
        echo "$t rc=$? in $(( $(date +%s) - t1 )) s"
        cat "$OUT/t.log" >>"$OUT/tests.log"
        grep -E "FAILED|worst" "$OUT/t.log" | tail -5
    done
fi
rm -f "$OUT/t.log"
