#!/usr/bin/env bash
# gpu_build: build attnscope on the lent GPU machine, which lacks the Debian -dev packages.
#   tools/gpu_build.sh prepare   (here, Debian 12) apt-get download the .debs into .carry/debs
#                                (git-ignored; ~10 MB compressed), to be passed with the device's carry.
#   tools/gpu_build.sh build [BUILD] [make targets...]
#                                (on the GPU machine) unpack .carry/debs into /tmp/attnscope-sysroot
#                                and run make with include/lib paths and an rpath into it; skips
#                                tools/deps.sh (no network there). Default targets: the binary and
#                                every tests/gpu_* binary.
#   tools/gpu_build.sh test-gpu [BUILD]
#                                (on the GPU machine) build, then run every GPU test (make test-gpu
#                                calls this when the -dev packages are missing and .carry/debs exists).
#   tools/gpu_build.sh env       print the make variables (for calling make by hand).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="libcjson-dev libcjson1 libncurses-dev libncursesw6 libncurses6 libtinfo6 libcmocka-dev libcmocka0
      libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libopenblas0 libgfortran5 libquadmath0
      libpng-dev libpng16-16 zlib1g-dev zlib1g"
SYSROOT=${ATTNSCOPE_SYSROOT:-/tmp/attnscope-sysroot}

mode=${1:-}
case "$mode" in
prepare)
    mkdir -p .carry/debs
    rm -f .carry/debs/*.deb
    # shellcheck disable=SC2086
    (cd .carry/debs && apt-get download $PKGS)
    du -sh .carry/debs
    ;;
env|build|test-gpu)
    if [ ! -d "$SYSROOT/usr/include" ]; then
        ls .carry/debs/*.deb >/dev/null 2>&1 || { echo "gpu_build: no .carry/debs (run 'tools/gpu_build.sh prepare' here and carry .carry)" >&2; exit 1; }
        mkdir -p "$SYSROOT"
        for f in .carry/debs/*.deb; do dpkg -x "$f" "$SYSROOT"; done
    fi
    L="$SYSROOT/usr/lib/x86_64-linux-gnu"
    # The Debian alternatives that name libopenblas.so.0 are made by postinst, which dpkg -x skips.
    ln -sf openblas-pthread/libopenblas.so.0 "$L/libopenblas.so.0"
    ln -sf openblas-pthread/libblas.so.3 "$L/libblas.so.3" 2>/dev/null || true
    inc="-I$SYSROOT/usr/include -I$SYSROOT/usr/include/x86_64-linux-gnu/openblas-pthread"
    L2="$SYSROOT/lib/x86_64-linux-gnu" # ncursesw6/tinfo6 live in /lib (the -dev linker script names them)
    lib="-L$L -L$L/openblas-pthread -L$L2 -Wl,-rpath,$L -Wl,-rpath,$L/openblas-pthread -Wl,-rpath,$L2"
    if [ "$mode" = env ]; then echo "EXTRA_CFLAGS=$inc $lib"; exit 0; fi
    if [ "$mode" = test-gpu ]; then
        build=${2:-build-gpu}
        gpu=(); for t in tests/gpu_*.c; do [ -e "$t" ] && gpu+=("$build/tests/$(basename "$t" .c)"); done
        make -k -j"$(nproc)" WERROR=${WERROR:-0} BUILD="$build" EXTRA_CFLAGS="$inc $lib" "$build/attnscope" "${gpu[@]}" \
            >"${TMPDIR:-/tmp}/attnscope-gpu-build.log" 2>&1 || {
            grep -E "error|undefined" "${TMPDIR:-/tmp}/attnscope-gpu-build.log" | head -20
            echo "gpu_build: build failed (log: ${TMPDIR:-/tmp}/attnscope-gpu-build.log)" >&2; exit 1; }
        exec tests/run_gpu.sh "$build" "${gpu[@]}"
    fi
    shift
    build=${1:-build}; [ $# -gt 0 ] && shift
    targets=("$@")
    if [ ${#targets[@]} -eq 0 ]; then
        targets=("$build/attnscope")
        for t in tests/gpu_*.c; do [ -e "$t" ] && targets+=("$build/tests/$(basename "$t" .c)"); done
    fi
    make -k -j"$(nproc)" WERROR=${WERROR:-0} BUILD="$build" EXTRA_CFLAGS="$inc $lib" "${targets[@]}"
    ;;
*)
    echo "usage: tools/gpu_build.sh prepare | build [BUILD] [targets...] | test-gpu [BUILD] | env" >&2; exit 2 ;;
esac
