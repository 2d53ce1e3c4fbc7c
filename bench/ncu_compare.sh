#!/usr/bin/env bash
# bench/ncu_compare.sh: nsight-compute counters for the wgmma attention kernels at 32K (H100/H200),
# one launch each: the dense kernel in the sparse kernel's shape (1 warpgroup per CTA), the sparse
# kernel on A-shape and block-sparse, the 2-warpgroup dense kernel and the head-pair sparse kernel.
# Prints per kernel: time, instructions, issue utilisation, tensor-pipe utilisation, stall reasons
# (cycles per issued instruction). Usage on the GPU machine (.carry carried): bench/ncu_compare.sh
set -u
OUT=${OUT:-/tmp/attnscope-gpu-out}
mkdir -p "$OUT"
B=build-gpu
N=${NCU_N:-32768}
tools/gpu_build.sh build $B $B/attnscope >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
M=gpu__time_duration.sum,sm__inst_executed.sum,sm__cycles_elapsed.avg,smsp__issue_active.avg.pct_of_peak_sustained_active
M=$M,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,lts__t_sector_hit_rate.pct
for r in barrier wait long_scoreboard short_scoreboard math_pipe_throttle mio_throttle dispatch_stall no_instruction \
    lg_throttle branch_resolving membar selected not_selected sleeping misc; do
    M=$M,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio
done
run() { # name regex variant pattern (NCU_RUNS="name ..." picks some)
    case " ${NCU_RUNS:-$1} " in *" $1 "*) ;; *) return ;; esac
    ncu --kernel-name-base demangled -k "regex:$2" --launch-skip 1 --launch-count 1 --metrics "$M" --csv \
        --print-units base $B/attnscope bench --n "$N" --reps 1 --variant "$3" --patterns "$4" >"$OUT/ncu_$1.csv" 2>"$OUT/ncu_$1.err"
    echo "== $1 (rc $?)"
    python3 - "$OUT/ncu_$1.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if len(rows) < 2: print("  no data"); sys.exit()
h = rows[0]; im, iv = h.index("Metric Name"), h.index("Metric Value")
for r in rows[1:]:
    name = r[im].replace("smsp__average_warps_issue_stalled_", "stall_").replace("_per_issue_active.ratio", "")
    print(f"  {name:70s} {r[iv]}")
PY
}
run dense_wg1 "hattn_pipe_kernel<.int.128, .int.1, .int.0" 8 ashape
run ashape_wg1 "hattn_pipe_kernel<.int.128, .int.1, .int.1" 7 ashape
run bs_wg1 "hattn_pipe_kernel<.int.128, .int.1, .int.1" 7 bs
run dense_wg2 "hattn_pipe_kernel<.int.128, .int.2, .int.0" 7 ashape
run ashape_pair "hattn_union_kernel<.int.128, .bool.1" 10 ashape
run dma_wg1 "hattn_dma_kernel<.int.128" 0 dma
