#!/usr/bin/env bash
# fuzz.sh: build each libFuzzer target given (tests/fuzz/fuzz_NAME.c) into build-fuzz/ with
# clang -fsanitize=fuzzer,address,undefined and run it for FUZZ_SECONDS (default 60) on a copy of
# its seed corpus tests/fuzz/corpus/NAME/ (plus tests/fuzz/NAME.dict when present). The engine
# (engine/*.c) is compiled with the same sanitizers into build-fuzz/libengine-fuzz.a; a target
# links only what it uses. Exit status is non-zero when a build fails or a target finds a crash
# (the reproducer is left in build-fuzz/NAME-crashes/).
set -u
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
CLANG=${CLANG:-clang}
out=build-fuzz
mkdir -p "$out/obj"
[ $# -gt 0 ] || set -- tests/fuzz/fuzz_*.c
command -v "$CLANG" >/dev/null || { echo "fuzz: $CLANG not found (apt-get install clang)" >&2; exit 1; }
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
cflags="-std=c11 -g -O1 -D_GNU_SOURCE -pthread -Iengine -Iviz -Iapp -Ikernels -I/usr/include/x86_64-linux-gnu/openblas-pthread"
objs=()
for src in engine/*.c; do
    o="$out/obj/$(basename "$src" .c).o"
    if [ ! "$o" -nt "$src" ] || [ -n "$(find engine -name '*.h' -newer "$o" -print -quit)" ]; then
        "$CLANG" $cflags $san -fsanitize=fuzzer-no-link -c "$src" -o "$o" ||
            { echo "fuzz: warning: $src does not build with $CLANG; left out" >&2; rm -f "$o"; continue; }
    fi
    objs+=("$o")
done
rm -f "$out/libengine-fuzz.a"
ar rcs "$out/libengine-fuzz.a" "${objs[@]}"
rc=0
for src in "$@"; do
    name=$(basename "$src" .c); short=${name#fuzz_}
    echo "fuzz: building $name"
    if ! "$CLANG" $cflags $san -fsanitize=fuzzer "$src" "$out/libengine-fuzz.a" -o "$out/$name" \
            -lcjson -lopenblas -lpthread -lm; then
        echo "fuzz: build of $name failed" >&2; rc=1; continue
    fi
    work="$out/corpus-$short"; crashes="$out/$short-crashes"
    mkdir -p "$work" "$crashes"
    [ -d "tests/fuzz/corpus/$short" ] && cp -n tests/fuzz/corpus/"$short"/* "$work"/ 2>/dev/null
    dict=(); [ -f "tests/fuzz/$short.dict" ] && dict=(-dict="tests/fuzz/$short.dict")
    echo "fuzz: running $name for ${secs}s"
    start=$(date +%s)
    if "$out/$name" "$work" "${dict[@]}" -max_total_time="$secs" -max_len=65536 -timeout=10 \
            -artifact_prefix="$crashes/" -print_final_stats=1 >"$out/$name.log" 2>&1; then
        echo "fuzz: $name ran clean for $(( $(date +%s) - start ))s ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$out/$name.log" | grep -oE '[0-9]+$') runs)"
    else
        echo "fuzz: $name FAILED after $(( $(date +%s) - start ))s; see $out/$name.log and $crashes/" >&2
        tail -30 "$out/$name.log" >&2
        rc=1
    fi
done
exit $rc
