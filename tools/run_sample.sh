#!/usr/bin/env bash
# `make run`: opens the explorer on the shipped sample model (samples/models/*, else the tiny test
# model tests/fixtures/tiny-llama) with the long sample prompt when stdout is a terminal; otherwise
# (CI, pipes) runs `attnscope run` on the same model and prompt and prints its report.
set -euo pipefail
bin=${1:?usage: tools/run_sample.sh PATH/TO/attnscope}
cd "$(dirname "$0")/.."
model=
for d in samples/models/*/; do
    [ -f "$d/config.json" ] && { model=${d%/}; break; }
done
[ -n "$model" ] || model=tests/fixtures/tiny-llama
prompt=
for p in samples/prompts/passkey_4k.txt samples/prompts/haystack.txt; do
    [ -f "$p" ] && { prompt=$p; break; }
done
if [ ! -f "$model/config.json" ] || [ -z "$prompt" ]; then
    echo "run_sample: no sample model or prompt found (samples/models/*, tests/fixtures/tiny-llama, samples/prompts/)" >&2
    exit 1
fi
# the sample's searched per-head config, when shipped
pat=()
cfg=samples/patterns/$(basename "$model").json
[ -f "$cfg" ] && pat=(--patterns "$cfg")
if [ -t 0 ] && [ -t 1 ]; then
    exec "$bin" tui --model "$model" --prompt "$prompt" "${pat[@]}"
fi
# the report covers what the explorer shows: the prompt cut to the model's trained context
maxpos=$(grep -o '"max_position_embeddings"[^,}]*' "$model/config.json" | grep -o '[0-9]*' | head -1)
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
head -c "$(( ${maxpos:-4096} - 1 ))" "$prompt" > "$tmp"
"$bin" run --model "$model" --prompt "$tmp" "${pat[@]}"
