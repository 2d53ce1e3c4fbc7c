/* krn_bench: kernel-level attention benchmark on the GPU (random bf16 Q/K/V made on the device):
 * dense causal vs each sparse pattern, index building timed with the attention, TFLOP/s on the
 * entries each kernel computes. Used by `attnscope bench` (app/cmd_bench.c). */
#ifndef KRN_BENCH_H
#define KRN_BENCH_H

#ifdef __cplusplus
extern "C" {
#endif

#include "eng_err.h"
#include "eng_pattern.h"

#define KRN_BENCH_MAX_PATS 8

typedef struct {
    int n, H, Hkv, d;
    int reps;          /* timed repetitions (median reported), after 2 warm-ups */
    int dense_variant; /* krn_attn_dense / krn_attn_sparse_variant variant (KRN_ATTN_VARIANTS) */
    int n_pats;
    eng_pattern pats[KRN_BENCH_MAX_PATS];
    /* > 0: one more row, vertical-slash on a FIXED index as PERF.md's MInference measurement: the
     * vsx_diags most local diagonals + vsx_cols columns (30 sinks + random), per head. Its index
     * time is our full dynamic VS(vsx_cols, vsx_diags) build on the same inputs (estimate + top-k +
     * merge, result discarded), its attention time the sparse kernel on the fixed index. */
    int vsx_cols, vsx_diags;
} krn_bench_cfg;

typedef struct {
    char name[64];      /* "dense" (the dense kernel) or the pattern's description */
    double index_ms;    /* index building (0 for the dense kernel) */
    double attn_ms;     /* attention kernel */
    double total_ms;    /* index + attention, medians of the whole sequence */
    long long pairs;    /* (query, key) entries computed, all heads */
    double density;     /* pairs / causal pairs */
    double tflops;      /* 4 * d * pairs / attn time */
    double tflops_total;/* 4 * d * pairs / total time */
    double aux_ms;      /* fixed-index VS row: the merge of the given lines alone (not in total) */
} krn_bench_row;

/* Device name into buf. 0 ok. */
int krn_bench_device(char *buf, int cap, eng_err *err);
/* Bytes of GPU memory the run needs, and what is free now. */
int krn_bench_memory(const krn_bench_cfg *c, double *need, double *free_bytes, eng_err *err);
/* rows[0] is the dense kernel, rows[1 + i] pattern i through the sparse kernel, rows[1 + n_pats]
 * the fixed-index VS row when vsx_cols > 0. */
int krn_bench_attention(const krn_bench_cfg *c, krn_bench_row *rows, eng_err *err);

/* End-to-end prefill of a synthetic model (krn_prefill_synthetic, random weights made on the
 * GPU, random tokens): the dense prefill vs each pattern applied to every layer and head. */
typedef struct {
    char model[32];    /* krn_synthetic_config name */
    int n;
    int reps;          /* timed prefills per row (median), after one short warm-up prefill */
    int n_pats;
    eng_pattern pats[KRN_BENCH_MAX_PATS];
} krn_e2e_cfg;

typedef struct {
    char name[64];      /* "dense" or the pattern's description */
    double prefill_s;   /* whole prefill, weights made on the GPU excluded */
    double attn_s;      /* attention incl. index building, summed over layers */
    double setup_s;     /* random weights and buffers (before the first layer) */
    double density;     /* computed / causal entries, mean over layers (eng_prefill_out.density); 1 dense */
} krn_e2e_row;

/* GPU memory the e2e run of c needs at most (the largest of its rows) and what is free now. */
int krn_bench_prefill_memory(const krn_e2e_cfg *c, double *need, double *free_bytes, eng_err *err);
/* rows[0] dense, rows[1 + i] pattern i. */
int krn_bench_prefill(const krn_e2e_cfg *c, krn_e2e_row *rows, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
