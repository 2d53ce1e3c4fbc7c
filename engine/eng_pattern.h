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

/* The pattern of (layer, head): cfg->heads[layer * n_heads + head], or cfg->def. */
const eng_pattern *eng_pattern_cfg_get(const eng_pattern_cfg *cfg, int layer, int head);

/* Build one head's index from its Q and K (after RoPE). q row t is q[t * q_stride .. + d),
 * k row t is k[t * k_stride .. + d); n tokens. Static patterns ignore q/k. ix is allocated here
 * (free with eng_index_free). */
int eng_pattern_build(const eng_pattern *p, const float *q, int q_stride, const float *k,
                      int k_stride, int n, int d, eng_head_index *ix, eng_err *err);

#endif
