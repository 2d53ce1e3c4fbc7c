/* eng_report: the sparse-vs-dense report behind `attnscope run --patterns`. Runs the dense prefill
 * (keeping Q/K/V and the dense row LSE) and the sparse prefill with a per-head config, then
 * measures every head on the dense pass's Q/K/V (density, recall, output error), aggregates per
 * layer and compares the two prefills end to end. Plain structs in, plain structs + cJSON out. */
#ifndef ENG_REPORT_H
#define ENG_REPORT_H

#include <cjson/cJSON.h>

#include "eng_backend.h"
#include "eng_metrics.h"
#include "eng_pattern.h"

typedef struct {
    int n_layers, n_heads, n_kv_heads, head_dim, n_tokens;
    eng_pattern *pattern;        /* [L*H] the pattern each head ran */
    eng_head_metrics *head;      /* [L*H] measured on the dense pass's Q/K/V */
    eng_layer_metrics *layer;    /* [L] */
    eng_layer_metrics model;     /* all layers together (density/error pooled, recall averaged) */
    eng_e2e_metrics e2e;         /* sparse prefill (errors propagate) vs dense prefill */
    double dense_seconds, sparse_seconds;          /* wall time of each prefill */
    double dense_attn_seconds, sparse_attn_seconds; /* attention time inside them (incl. index building) */
    double metrics_seconds;      /* the per-head measurement pass */
    char backend[32], device[128];
} eng_report;

typedef struct {
    /* stage: "dense prefill", "sparse prefill" or "metrics"; done/total layers. May be NULL. */
    void (*progress)(void *ctx, const char *stage, int done, int total);
    void *ctx;
} eng_report_opts;

/* cfg NULL = dense everywhere (a report of zero error). sparse_out, when non-NULL, receives the
 * sparse prefill's output (free with eng_prefill_out_free); else it is freed here. */
int eng_report_run(eng_backend *be, const eng_model *m, const int *tokens, int n, const eng_pattern_cfg *cfg,
                   const eng_report_opts *opts, eng_report *rep, eng_prefill_out *sparse_out, eng_err *err);
void eng_report_free(eng_report *rep);

/* One layer's per-head metrics from its Q (n, H*d), K/V (n, Hkv*d), dense row LSE (H, n) and
 * dense output (n, H*d): build each head's index with pats[h] from Q/K, run sparse attention
 * (be->attention, or the CPU reference when be is NULL), fill m[H]. lse_dense / out_dense NULL =
 * computed here (one dense pass). */
int eng_report_layer(eng_backend *be, const float *q, const float *k, const float *v, const float *lse_dense,
                     const float *out_dense, int n, int H, int Hkv, int d, const eng_pattern *const *pats,
                     eng_head_metrics *m, eng_err *err);
/* One layer's attention with per-head indexes ix (NULL = dense) on be, or on the CPU reference
 * when be is NULL. out (n, H*d); lse (H, n) may be NULL. */
int eng_report_attention(eng_backend *be, const float *q, const float *k, const float *v, int n, int H, int Hkv,
                         int d, const eng_head_index *ix, float *out, float *lse, eng_err *err);

/* Everything in rep (every per-head number) as a JSON object; NULL when out of memory. */
cJSON *eng_report_to_json(const eng_report *rep);

#endif
