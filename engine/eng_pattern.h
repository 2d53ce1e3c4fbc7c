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
    ENG_PAT__COUNT       /* issue 9 adds DMA, XAttention, FlexPrefill, N:M before this */
} eng_pat_kind;

typedef struct {
    eng_pat_kind kind;
    int n_init, n_local; /* A-shape */
    int vertical, slash; /* VS budgets (clamped to >= 30 / >= 50 and <= n when built) */
    int topk;            /* BS blocks per row block (diagonal included) */
    float score;         /* informational (search score / imported file's score) */
} eng_pattern;

/* A pattern for every (layer, query head); heads[] may be NULL meaning "all use def". */
typedef struct {
    int n_layers, n_heads;
    eng_pattern def;
    eng_pattern *heads;  /* [n_layers * n_heads] */
} eng_pattern_cfg;

const char *eng_pattern_kind_name(eng_pat_kind k); /* "dense", "ashape", "vs", "bs" */

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
} eng_pat_param;

/* Parameter table of kind k (count in *n; NULL and 0 for dense). */
const eng_pat_param *eng_pattern_params(eng_pat_kind k, int *n);
double eng_pattern_param_get(const eng_pattern *p, const eng_pat_param *par);
void eng_pattern_param_set(eng_pattern *p, const eng_pat_param *par, double v);
/* A pattern of kind k with every parameter at its default (A-shape 1024+4096, VS 1000/6096 as
 * upstream's default head, BS 100 blocks), score 0. */
eng_pattern eng_pattern_make(eng_pat_kind k);
/* Kind known and every parameter inside its range; err names the parameter. */
int eng_pattern_validate(const eng_pattern *p, eng_err *err);
/* "vs(vertical=1000,slash=6096)"; returns snprintf's count. */
int eng_pattern_describe(const eng_pattern *p, char *buf, int cap);

/* The pattern of (layer, head): cfg->heads[layer * n_heads + head], or cfg->def. */
const eng_pattern *eng_pattern_cfg_get(const eng_pattern_cfg *cfg, int layer, int head);

/* Build one head's index from its Q and K (after RoPE). q row t is q[t * q_stride .. + d),
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

#endif
