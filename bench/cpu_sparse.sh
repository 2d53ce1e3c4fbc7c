#!/usr/bin/env bash
# cpu_sparse.sh: build bench/cpu_sparse.c against a library and run it (see the .c for options).
#   usage: bench/cpu_sparse.sh [path/to/libattnscope.a] [cpu_sparse options]
#   e.g.   bench/cpu_sparse.sh build/libattnscope.a --n 4096,16384 --d 64,128
#          bench/cpu_sparse.sh build/libattnscope.a --model samples/models/byte-llama-11m \
#              --prompt samples/prompts/passkey_4k.txt --patterns samples/patterns/byte-llama-11m.json
# Linking the same tool against an older build's library gives the before/after comparison.
set -eu
lib=${1:-build/libattnscope.a}
[ $# -gt 0 ] && shift
[ -f "$lib" ] || { echo "cpu_sparse: $lib not built (make first)" >&2; exit 1; }
bin=${TMPDIR:-/tmp}/cpu_sparse.$$
trap 'rm -f "$bin"' EXIT
cuda=/usr/local/cuda
extra=
if nm "$lib" 2>/dev/null | grep -q ' U cudaMalloc'; then
    extra="-L$cuda/lib64 -lcublas -lcudart_static -ldl -lrt -lstdc++ -Wl,-rpath,$cuda/lib64"
fi
cc -std=c11 -O2 -D_GNU_SOURCE -pthread -Iengine -I/usr/include/x86_64-linux-gnu/openblas-pthread \
    bench/cpu_sparse.c "$lib" -o "$bin" -lcjson -lpng -lncursesw -lopenblas -lpthread -lm $extra
"$bin" "$@"
