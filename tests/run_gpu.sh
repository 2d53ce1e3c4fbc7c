#!/usr/bin/env bash
# Runs the GPU tests when a usable NVIDIA GPU exists; says plainly that it skipped them otherwise.
set -u
build=$1; shift
if [ $# -eq 0 ]; then
    echo "test-gpu: SKIPPED: this build has no CUDA backend (nvcc not found or CUDA=0)"; exit 0
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "test-gpu: SKIPPED: no NVIDIA GPU on this machine (nvidia-smi finds none)"; exit 0
fi
nvidia-smi -L
exec "$(dirname "$0")/run.sh" "$build" "$@"
