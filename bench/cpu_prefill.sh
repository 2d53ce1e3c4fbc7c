#!/usr/bin/env bash
# cpu_prefill: the CPU reference prefill's speed target (issue 2): a ~10M-parameter Llama-shaped
# model prefills 4096 tokens in <= 2 s. Makes the model with tools/make_tiny_model.py (hidden 384,
# 6 layers, 6 heads of 64 over 2 KV heads, MLP 1024, byte vocabulary of 512, bf16; 9.8M
# parameters) under $TMPDIR, then times `attnscope run --backend cpu` on a 4096-token prompt
# (BOS + 4095 bytes) RUNS times. The prefill time is the one `run` prints (model load excluded).
#   usage: bench/cpu_prefill.sh [path/to/attnscope]   (env: RUNS=3, DTYPE=bf16, TMPDIR=/tmp)
set -eu
bin=${1:-build/attnscope}
runs=${RUNS:-3}
dtype=${DTYPE:-bf16}
dir=${TMPDIR:-/tmp}/attnscope-bench-10m-$dtype
[ -x "$bin" ] || { echo "cpu_prefill: $bin not built (make first)" >&2; exit 1; }
if [ ! -f "$dir/config.json" ]; then
    echo "cpu_prefill: making the model in $dir ..."
    python3 tools/make_tiny_model.py "$dir" --dtype "$dtype" --hidden 384 --intermediate 1024 --layers 6 \
        --heads 6 --kv-heads 2 --vocab 512 --seed 7 >/dev/null
fi
prompt=$dir/prompt.txt
python3 - "$prompt" <<'PY'
import sys
words = ("sparse attention keeps the few keys that matter for each query while the dense softmax "
         "spends time on all of them; the prefill measures how long that takes. ").encode()
text = (words * (4095 // len(words) + 1))[:4095]
open(sys.argv[1], "wb").write(text)
PY
"$bin" info --model "$dir" | head -n 8 || true
best=
for i in $(seq "$runs"); do
    "$bin" run --model "$dir" --prompt "$prompt" --backend cpu --json "$dir/run.json" >/dev/null
    read -r tok t at < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["n_tokens"], "%.3f" % r["seconds"], "%.3f" % r["attn_seconds_total"])' "$dir/run.json")
    echo "run $i: $tok tokens, prefill $t s (attention $at s)"
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
done
echo "cpu_prefill: best of $runs: $best s for $tok tokens (target <= 2 s) on $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
