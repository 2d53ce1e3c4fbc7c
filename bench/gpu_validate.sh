#!/usr/bin/env bash
# bench/gpu_validate.sh: the one device call that checks a whole tree on the GPU machine: make
# test-gpu (all tests/gpu_*), the product end to end on the CUDA backend (sample model, searched
# config, generation, a small passkey eval), the kernel bench with PyTorch SDPA on the same shapes,
# and the synthetic Llama-3-8B end-to-end prefill. Logs under $OUT; a short summary last.
# Usage on the GPU machine (carry .carry): bench/gpu_validate.sh
set -u
OUT=${OUT:-/tmp/attnscope-gpu-out}
mkdir -p "$OUT"
B=build-gpu
M=samples/models/byte-llama-11m
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
t0=$(date +%s)
make test-gpu >"$OUT/test-gpu.log" 2>&1
echo "make test-gpu rc=$? in $(( $(date +%s) - t0 )) s"
grep -E "^\[  FAILED|^tests:|failing binaries|SKIPPED:|rows equal|skipped tiles|worst" "$OUT/test-gpu.log" | tail -30
t0=$(date +%s)
{ $B/attnscope run --model $M --prompt samples/prompts/passkey_4k.txt --backend cuda \
      --patterns samples/patterns/byte-llama-11m.json --generate 6
  $B/attnscope eval passkey --model $M --lengths 4k --depths 0,50,100 --trials 2 \
      --patterns dense,ashape,vs,bs,samples/patterns/byte-llama-11m.json --backend cuda \
      --haystack samples/prompts/haystack.txt; } >"$OUT/product.log" 2>&1
echo "product on cuda rc=$? in $(( $(date +%s) - t0 )) s"
t0=$(date +%s)
$B/attnscope bench --n ${VAL_NS:-16384,32768,131072} --reps 5 --patterns vs,bs,ashape \
    --vs-fixed 1000,6096 --json "$OUT/kernels.json" >"$OUT/kernels.log" 2>&1
echo "kernel bench rc=$? in $(( $(date +%s) - t0 )) s"
# the issue-9 kinds: GPU-built XAttention / FlexPrefill indexes, DMA and N:M kernels
timeout ${VAL_NEW_TIMEOUT:-120} $B/attnscope bench --n ${VAL_NEW_NS:-16384,32768,131072} --reps 3 \
    --patterns xattn,flex,dma,nm --json "$OUT/kernels_new.json" >>"$OUT/kernels.log" 2>&1
echo "issue-9 kinds bench rc=$?"
[ "${VAL_SDPA:-1}" = 1 ] && { t0=$(date +%s)
PYTHONUNBUFFERED=1 timeout 180 python3 bench/sdpa.py --n ${VAL_SDPA_NS:-${VAL_NS:-16384,32768,131072}} --ours "$OUT/kernels.json" \
    --json "$OUT/sdpa.json" >"$OUT/sdpa.log" 2>&1
echo "sdpa rc=$? in $(( $(date +%s) - t0 )) s"; }
[ "${VAL_1M:-0}" = 1 ] && { t0=$(date +%s) # 1M tokens: dense and the MInference-budget kinds, 2 reps
timeout 240 $B/attnscope bench --n 1048576 --reps 2 --patterns bs,ashape --vs-fixed 1000,6096 \
    --json "$OUT/kernels_1m.json" >"$OUT/kernels_1m.log" 2>&1
echo "1M bench rc=$? in $(( $(date +%s) - t0 )) s"; }
[ "${VAL_E2E:-1}" = 1 ] && { t0=$(date +%s)
$B/attnscope bench --synthetic llama3-8b --n ${VAL_E2E_NS:-32768,131072} --json "$OUT/e2e.json" >"$OUT/e2e.log" 2>&1
echo "e2e bench rc=$? in $(( $(date +%s) - t0 )) s"; }
echo "==== product"; grep -vE '^\s*$' "$OUT/product.log" | tail -40
echo "==== kernels"; cat "$OUT/kernels.log"; [ -f "$OUT/kernels_1m.log" ] && cat "$OUT/kernels_1m.log"
echo "==== sdpa"; tail -12 "$OUT/sdpa.log"
echo "==== e2e"; cat "$OUT/e2e.log"
