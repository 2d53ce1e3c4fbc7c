#!/usr/bin/env bash
# bench/sass_stats.sh OBJ|FILE.sass: per kernel, counts of the instructions that tell whether the
# matrix pipeline is what we meant (an object needs cuobjdump: the GPU machine has it). HGMMA =
# wgmma; one WARPGROUP.DEPBAR per HGMMA means ptxas serialised them; LDL/STL = local memory.
set -u
if [[ "$1" == *.sass ]]; then cat "$1"
elif command -v cuobjdump >/dev/null; then cuobjdump -sass "$1"
else echo "sass_stats: no cuobjdump" >&2; exit 0; fi | awk '
function out() { if (name != "") printf "%-48s HGMMA %3d ARRIVE %3d DEPBAR %3d HMMA %4d LDL %3d STL %3d\n", name, g, ar, dp, hm, ldl, stl }
/Function :/ { out(); name = $3; sub(/^_ZN.*_cu_[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]/, "", name); sub(/EEEv.*/, "", name); g = ar = dp = hm = ldl = stl = 0 }
/HGMMA/ { g++ }
/WARPGROUP.ARRIVE/ { ar++ }
/WARPGROUP.DEPBAR/ { dp++ }
/ HMMA/ { hm++ }
/ LDL/ { ldl++ }
/ STL/ { stl++ }
END { out() }'
