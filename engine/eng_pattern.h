/* eng_pattern: sparse attention patterns, per-(layer, head) configs, and index building on the
 * CPU (the reference the CUDA index builders are tested against). Semantics: ALGORITHMS.md. */
#ifndef ENG_PATTERN_H
#define ENG_PATTERN_H

#include "eng_err.h"
#include "eng_index.h"

typedef enum {
    ENG_PAT_DENSE = 0,
    ENG_PAT_ASHAPE,      /* MInference "stream_llm": n_init sinks + n_local window */
    ENG_PAT_VS,          /* MInference "vertical_and_slash": vertical + slash lines, dynamic */
    ENG_PAT_BS,          /* MInference "block_sparse": top-k 64x64 blocks, dynamic */
    ENG_PAT_XATTN,       /* XAttention: 128x128 blocks by antidiagonal score, cumulative threshold */
    ENG_PAT_FLEX,        /* FlexPrefill: per head query-aware blocks or VS, JS-distance test, gamma */
    ENG_PAT_DMA,         /* DMA-style per-row top-w keys by a key score (training-free adaptation) */
    ENG_PAT_NM,          /* N:M on attention probabilities: top-n of every m consecutive keys */
    ENG_PAT__COUNT
} eng_pat_kind;

typedef struct {
    eng_pat_kind kind;
    int n_init, n_local; /* A-shape */
    int vertical, slash; /* VS budgets (clamped to >= 30 / >= 50 and <= n when built) */
    int topk;            /* BS blocks per row block (diagonal included) */
    int stride;          /* XAttention antidiagonal stride (divides 128) */
    float threshold;     /* XAttention cumulative block-score share kept (tau) */
    float gamma;         /* FlexPrefill cumulative mass covered */
    float tau;           /* FlexPrefill JS-distance threshold: below it, query-aware blocks */
    int min_budget;      /* FlexPrefill minimum tokens per line set / block row */
    int keep;            /* DMA top-w keys per query (n_init sinks, n_local window also kept) */
    int key_score;       /* DMA key score: 0 = ||v_j||, 1 = VS vertical score (last 64 queries) */
    int nm_n, nm_m;      /* N:M: keep nm_n of every nm_m consecutive keys (aligned groups) */
    int reshape;         /* any sparse kind: Re-ttention-style estimate of dropped blocks (eng_reshape.h) */
    float score;         /* informational (search score / imported file's score) */
} eng_pattern;

/* A pattern for every (layer, query head); heads[] may be NULL meaning "all use def". */
typedef struct {
    int n_layers, n_heads;
    eng_pattern def;
    eng_pattern *heads;  /* [n_layers * n_heads] */
} eng_pattern_cfg;

const char *eng_pattern_kind_name(eng_pat_kind k); /* "dense", "ashape", "vs", "bs", "xattn", "flex", "dma", "nm" */
/* One line for the UI: what the kind is and whether it is an adaptation ("DMA-style dynamic mask
 * (training-free adaptation)"). */
const char *eng_pattern_kind_label(eng_pat_kind k);
/* 1 when eng_pattern_build yields an eng_head_index for the kind (every kind but dma and nm, whose
 * per-row key sets need eng_dma_mask_build / eng_dma_attend in eng_dma.h). */
int eng_pattern_is_index(eng_pat_kind k);

/* Native name ("vs") or MInference name ("vertical_and_slash", "stream_llm", "block_sparse") ->
 * kind; 0 ok, -1 unknown. */
int eng_pattern_kind_parse(const char *name, eng_pat_kind *k);

/* The named parameters of a kind, as the native JSON schema and the CLI spell them. A new pattern
 * adds its fields to eng_pattern and one table row per field in eng_pattern.c; the config reader
 * and writer, search candidates and docs then handle it by name with no other change. */
typedef struct {
    const char *name;    /* JSON key, e.g. "vertical" */
    int offset;          /* offsetof(eng_pattern, field) */
    int is_float;        /* field is float (else int) */
    double lo, hi;       /* accepted range, inclusive */
    double def;          /* default when a config omits it */
    const char *help;    /* one line for docs and --help */
    int budget;          /* 1: a count (tokens, lines, blocks) that search scales to the prompt */
    int budget_min;      /* scaled budgets never go below this (the builder's own floor) */
    int quiet;           /* option: left out of JSON / describe text while at its default */
} eng_pat_param;

/* Parameter table of kind k (count in *n; NULL and 0 for dense). */
const eng_pat_param *eng_pattern_params(eng_pat_kind k, int *n);
double eng_pattern_param_get(const eng_pattern *p, const eng_pat_param *par);
void eng_pattern_param_set(eng_pattern *p, const eng_pat_param *par, double v);
/* A pattern of kind k with every parameter at its default (A-shape 1024+4096, VS 1000/6096 as
 * upstream's default head, BS 100 blocks, XAttention stride 8 threshold 0.9, FlexPrefill gamma 0.9
 * tau 0.1 min_budget 512, DMA keep 2048 sinks 64 window 256 value-norm score, N:M 2:4), score 0. */
eng_pattern eng_pattern_make(eng_pat_kind k);
/* Kind known, every parameter inside its range, and the cross-field rules (nm_n <= nm_m,
 * 128 % stride == 0); err names the parameter. */
int eng_pattern_validate(const eng_pattern *p, eng_err *err);
/* "vs(vertical=1000,slash=6096)"; returns snprintf's count. */
int eng_pattern_describe(const eng_pattern *p, char *buf, int cap);

/* The pattern of (layer, head): cfg->heads[layer * n_heads + head], or cfg->def. */
const eng_pattern *eng_pattern_cfg_get(const eng_pattern_cfg *cfg, int layer, int head);

/* Build one head's index from its Q and K (after RoPE). Kinds dma and nm have no index: an error
 * (use eng_dma_mask_build). The reshape flag does not change the index. q row t is q[t * q_stride .. + d),
 * k row t is k[t * k_stride .. + d); n tokens. Static patterns ignore q/k. ix is allocated here
 * (free with eng_index_free). A pure function of its inputs (ties in top-k are broken by index:
 * lower key / smaller diagonal offset / later key block first; docs/patterns.md). */
int eng_pattern_build(const eng_pattern *p, const float *q, int q_stride, const float *k,
                      int k_stride, int n, int d, eng_head_index *ix, eng_err *err);

/* Vertical-slash in two steps (eng_pattern_build = both), exposed so other builders (CUDA) and
 * tests can check each: the lines from the last-64-query estimate, then MInference's merge.
 * vs_lines writes k_v = clamp(vertical, 30, n) keys ascending into vert (capacity n) and
 * k_s = clamp(slash, 50, n) diagonal offsets (q - k) descending into slash (capacity n). */
int eng_pattern_vs_lines(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n,
                         int d, int *vert, int *n_vert, int *slash, int *n_slash, eng_err *err);
/* Index from given lines: vert ascending keys, slash descending offsets (each in [0, n)). */
int eng_pattern_vs_index(const int *vert, int n_vert, const int *slash, int n_slash, int n, eng_head_index *ix,
                         eng_err *err);

/* XAttention's 128x128 block scores (exposed for tests and views): s[I * nb + J], nb = ceil(n/128),
 * the strided-antidiagonal softmax mass of query block I on key block J, each row normalised to sum
 * 1 over its causal blocks J <= I (0 above the diagonal; a query block with no complete stride
 * group has an all-zero row and keeps every causal block). docs/patterns.md has the formula. */
int eng_pattern_xattn_scores(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n,
                             int d, double *s, eng_err *err);
/* FlexPrefill's per-head decision from the last 128 queries: *js the Jensen-Shannon distance
 * (sqrt of the divergence, natural log) between the pooled-query block estimate and the
 * block-pooled vertical score; *query_aware = js < tau. *dense = 1 when the prompt is too short
 * for the pattern (n <= max(256, ceil(min_budget/128)*128), upstream's rule) and it runs dense. */
int eng_pattern_flex_decide(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n,
                            int d, double *js, int *query_aware, int *dense, eng_err *err);

#endif
