#!/usr/bin/env bash
# Runs each cmocka test binary, then prints one closing line: "tests: N passed, N failed, N skipped".
set -u
build=$1; shift
pass=0; fail=0; skip=0; failed_bins=()
for t in "$@"; do
    log=$(mktemp)
    ATTNSCOPE_BIN="$build/attnscope" "$t" >"$log" 2>&1
    rc=$?
    cat "$log"
    p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | head -1)
    f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | head -1)
    s=$(grep -E '^\[  SKIPPED \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | head -1)
    pass=$((pass + ${p:-0})); skip=$((skip + ${s:-0}))
    if [ $rc -ne 0 ] && [ -z "$f" ]; then f=1; fi   # crashed before cmocka's summary
    fail=$((fail + ${f:-0}))
    [ $rc -ne 0 ] && failed_bins+=("$(basename "$t")")
    rm -f "$log"
done
[ ${#failed_bins[@]} -gt 0 ] && echo "failing binaries: ${failed_bins[*]}"
echo "tests: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ] && [ ${#failed_bins[@]} -eq 0 ]
