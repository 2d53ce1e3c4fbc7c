#!/usr/bin/env bash
# bench/gpu_attn_speed.sh: one device call for the attention-kernel speed work (issue 7): build,
# gpu_attn (every kernel variant vs the CPU references), then `attnscope bench` for each kernel
# variant in ATTN_VARIANTS (dense + VS/BS/A-shape + fixed-index VS, same inputs), PyTorch SDPA on the
# same shapes (ATTN_SDPA=0 skips it), and last gpu_index / gpu_prefill. Logs under $OUT, a short
# table last.
# Usage on the GPU machine (.carry/debs carried): bench/gpu_attn_speed.sh
set -u
OUT=${OUT:-/tmp/attnscope-gpu-out}
mkdir -p "$OUT"
B=build-gpu
NS=${ATTN_NS:-16384,32768,131072}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$OUT/device.txt"
t0=$(date +%s)
tools/gpu_build.sh build $B >"$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "error|undefined" "$OUT/build.log" | head -20
command -v cuobjdump >/dev/null && cuobjdump -sass $B/obj/kernels/krn_attn.o >"$OUT/attn.sass" 2>/dev/null &&
    echo "sass: $(grep -c 'LDL' "$OUT/attn.sass") LDL, $(grep -c 'STL' "$OUT/attn.sass") STL, $(grep -c 'MUFU.EX2' "$OUT/attn.sass") MUFU.EX2 (all kernels)"
bench/sass_stats.sh $B/obj/kernels/krn_hattn.o
t1=$(date +%s)
timeout ${ATTN_TEST_TIMEOUT:-240} $B/tests/gpu_attn >"$OUT/gpu_attn.log" 2>&1
rc=$?; echo "gpu_attn rc=$rc in $(( $(date +%s) - t1 )) s"
grep -E "FAILED|PASSED|rel-L2 [0-9.]+e-0[0-2]" "$OUT/gpu_attn.log" | tail -8
awk '/rel-L2/ {if ($(NF-3) > m) m = $(NF-3); if ($NF > l) l = $NF} END {print "gpu_attn worst rel-L2", m, "worst lse", l}' "$OUT/gpu_attn.log"
for v in ${ATTN_VARIANTS:-2 0 3}; do
    t1=$(date +%s)
    $B/attnscope bench --n "$NS" --reps ${ATTN_REPS:-5} --variant $v --patterns vs,bs,ashape --vs-fixed 1000,6096 \
        --json "$OUT/bench_v$v.json" >"$OUT/bench_v$v.log" 2>&1
    echo "bench variant $v rc=$? in $(( $(date +%s) - t1 )) s"
done
if [ "${ATTN_SDPA:-1}" = 1 ]; then
    t1=$(date +%s)
    PYTHONUNBUFFERED=1 timeout 180 python3 bench/sdpa.py --n "$NS" --ours "$OUT/bench_v${ATTN_SDPA_VARIANT:-0}.json" --json "$OUT/sdpa.json" >"$OUT/sdpa.log" 2>&1
    echo "sdpa rc=$? in $(( $(date +%s) - t1 )) s"
fi
for t in ${ATTN_LAST_TESTS:-gpu_index gpu_prefill}; do
    t1=$(date +%s)
    timeout ${ATTN_TEST_TIMEOUT:-240} $B/tests/$t >"$OUT/$t.log" 2>&1
    echo "$t rc=$? in $(( $(date +%s) - t1 )) s"; grep -E "FAILED|PASSED" "$OUT/$t.log" | tail -3
done
for v in ${ATTN_VARIANTS:-2 0 3}; do cat "$OUT/bench_v$v.log"; done
[ -f "$OUT/sdpa.log" ] && cat "$OUT/sdpa.log"
