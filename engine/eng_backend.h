/* eng_backend: what a compute backend (CPU reference or CUDA) offers the engine, as a struct of
 * function pointers (ggml style). Host-side tensors are f32, row-major:
 *   q (n, H*d), k and v (n, Hkv*d), out (n, H*d), lse (H, n) natural-log row log-sum-exp of the
 *   scaled logits (scale = 1/sqrt(d)). Query head h reads KV head h / (H / Hkv). */
#ifndef ENG_BACKEND_H
#define ENG_BACKEND_H

#include "eng_err.h"
#include "eng_index.h"
#include "eng_map.h"
#include "eng_model.h"
#include "eng_pattern.h"

typedef struct {
    const eng_pattern_cfg *patterns; /* NULL = dense everywhere */
    int keep_qkv;                    /* keep each layer's Q, K, V (after RoPE) in out */
    int keep_lse;                    /* keep each layer's dense row LSE (needs dense pass) */
    void (*progress)(void *ctx, int layer, int n_layers); /* may be NULL; called per layer */
    void *progress_ctx;
    /* May be NULL. Checked before each layer: once another thread sets *cancel nonzero, the
     * prefill stops there and returns -1 with err "cancelled" (out freed). */
    volatile int *cancel;
} eng_prefill_opts;

/* What a prefill leaves behind. O(n) per position, never O(n * vocab) except last_logits. */
typedef struct {
    int n, n_layers, n_heads, n_kv_heads, head_dim, vocab;
    float *last_logits;      /* [vocab] logits at position n-1 */
    int *argmax;             /* [n] greedy next token at each position */
    float *next_logprob;     /* [n-1] log p(token[i+1] | prefix..i): perplexity */
    float *q, *k, *v;        /* [L][n][H*d], [L][n][Hkv*d] x2 when keep_qkv, else NULL */
    float *lse;              /* [L][H][n] when keep_lse, else NULL */
    double seconds;          /* wall time of the whole prefill */
    double *attn_seconds;    /* [L] time inside attention (incl. index building) */
    /* [L] computed / causal entries over the heads that ran an index (1 for an all-dense layer, -1
     * where every head ran its own masked kernel); GPU prefill with patterns only, else NULL */
    double *density;
} eng_prefill_out;

void eng_prefill_out_free(eng_prefill_out *o);

typedef struct eng_backend eng_backend;
struct eng_backend {
    const char *name;          /* "cpu" or "cuda" */
    char device[128];          /* human-readable: "CPU (2 threads)" / "NVIDIA H100 80GB HBM3" */
    /* Full forward pass over tokens[0..n). */
    int (*prefill)(eng_backend *be, const eng_model *m, const int *tokens, int n,
                   const eng_prefill_opts *opts, eng_prefill_out *out, eng_err *err);
    /* One layer's attention from host Q/K/V. ix is an array of H head indexes, or NULL for
     * dense. out (n, H*d) required; lse (H, n) may be NULL. seconds receives kernel time. */
    int (*attention)(eng_backend *be, const float *q, const float *k, const float *v, int n,
                     int H, int Hkv, int d, const eng_head_index *ix, float *out, float *lse,
                     double *seconds, eng_err *err);
    void (*destroy)(eng_backend *be);
    void *impl;
    /* Optional, NULL when the backend has none (CPU: call eng_map_pool): the pooled attention map
     * of one head with eng_map_pool's arguments and results (eng_map.h; opts->threads ignored). */
    int (*map_pool)(eng_backend *be, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                    const float *lse, const eng_head_index *ix, const eng_map_opts *opts, float *out, eng_err *err);
};

eng_backend *eng_backend_cpu_create(eng_err *err);
/* NULL (with err set) when the CUDA backend was not built or no GPU is usable. */
eng_backend *eng_backend_cuda_create(eng_err *err);
/* "auto" picks CUDA when usable, else CPU; "cpu"/"cuda" force one. */
eng_backend *eng_backend_create(const char *which, eng_err *err);

#endif
