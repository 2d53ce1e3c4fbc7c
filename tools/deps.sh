#!/usr/bin/env bash
# Installs the Debian packages attnscope needs when something is missing (called by make).
# --check: only report (exit 1 when something is missing).
set -u
need=()
h() { [ -e "$1" ] || need+=("$2"); }
h /usr/include/cjson/cJSON.h libcjson-dev
h /usr/include/png.h libpng-dev
h /usr/include/ncursesw/ncurses.h libncurses-dev
h /usr/include/cmocka.h libcmocka-dev
[ -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || [ -e /usr/include/cblas.h ] || need+=(libopenblas-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "${1:-}" = --check ]; then echo "attnscope: missing packages: ${need[*]}" >&2; exit 1; fi
echo "attnscope: installing missing packages: ${need[*]}"
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then SUDO=sudo; else
        echo "attnscope: run as root: apt-get install -y ${need[*]}" >&2; exit 1; fi
else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}" >/dev/null || {
    echo "attnscope: apt-get install ${need[*]} failed" >&2; exit 1; }
