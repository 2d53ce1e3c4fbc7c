/* krn_xflex: XAttention and FlexPrefill index building on the GPU (eng_pattern.h semantics,
 * docs/patterns.md), writing the krn_index_dev (krn_attn.h) that krn_attn_sparse consumes, so the
 * CUDA prefill and `attnscope bench` no longer copy Q/K back for these kinds. The CPU reference is
 * eng_pattern_build; tests/gpu_xflex.c compares the two. Q/K are bf16 device tensors laid out as in
 * krn_attn_args (after RoPE). */
#ifndef KRN_XFLEX_H
#define KRN_XFLEX_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#include "krn_attn.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "eng_pattern.h"

/* Device scratch (grown on demand, freed with the workspace) and a cuBLAS handle made on first
 * XAttention use; opaque. One workspace per stream. */
typedef struct krn_xflex_ws krn_xflex_ws;
int krn_xflex_ws_create(krn_xflex_ws **ws, eng_err *err);
void krn_xflex_ws_free(krn_xflex_ws *ws);

/* 1 for the kinds built here (ENG_PAT_XATTN, ENG_PAT_FLEX). */
int krn_xflex_kind(eng_pat_kind k);

/* Upper bound of the scratch bytes one krn_xflex_build call over H heads reserves (for memory
 * estimates; the index itself not included). */
size_t krn_xflex_ws_bytes(const eng_pattern *p, int n, int H, int d);

/* Build the index of query heads [h0, h0 + nh) with pattern p (xattn or flex) into ix, allocated
 * for a->H heads. Every row block needs at most n_rb blocks (krn_index_capacity's default); a
 * FlexPrefill head that picks vertical-slash may need more columns than ix holds: ix is then
 * reallocated larger with the content of all a->H heads kept (so *ix may change; the old arrays are
 * freed). Band of the built heads: 0. FlexPrefill synchronises the stream once per call. */
int krn_xflex_build(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_index_dev *ix,
                    krn_xflex_ws *ws, cudaStream_t s, eng_err *err);

/* XAttention's block scores of query head h as eng_pattern_xattn_scores gives them: s[I * nb + J]
 * (host, nb = ceil(n / 128), zero above the diagonal). Synchronises the stream. */
int krn_xflex_xattn_scores(const eng_pattern *p, const krn_attn_args *a, int h, double *s, krn_xflex_ws *ws,
                           cudaStream_t st, eng_err *err);

/* FlexPrefill's decision for heads [h0, h0 + nh) as eng_pattern_flex_decide: js[i] (NAN when
 * dense), query_aware[i], *dense (host arrays of nh). Synchronises the stream. */
int krn_xflex_flex_decide(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, double *js,
                          int *query_aware, int *dense, krn_xflex_ws *ws, cudaStream_t st, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
