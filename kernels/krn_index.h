/* krn_index: sparse index building on the GPU (eng_pattern.h semantics, ALGORITHMS.md), writing a
 * krn_index_dev (krn_attn.h) that krn_attn_sparse consumes. Vertical-slash: last-64-query estimate
 * (cuBLAS), vertical and slash scores, radix top-k, MInference's merge into ranges + columns;
 * block-sparse: 64-token mean pooling, block-causal scores, top-k with the diagonal forced;
 * A-shape: sink and window blocks with the band mask; dense: every causal block.
 * Q/K are bf16 device tensors laid out as in krn_attn_args (after RoPE). */
#ifndef KRN_INDEX_H
#define KRN_INDEX_H

#include <cuda_runtime_api.h>

#include "krn_attn.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "eng_pattern.h"

/* Scratch reused across calls (grown on demand) plus a cuBLAS handle; opaque. */
typedef struct krn_index_ws krn_index_ws;
int krn_index_ws_create(krn_index_ws **ws, eng_err *err);
void krn_index_ws_free(krn_index_ws *ws);

/* Capacity (blocks, columns per row block) an index of pattern p over n tokens needs. */
void krn_index_capacity(const eng_pattern *p, int n, int *max_blocks, int *max_cols);

/* Scratch bytes krn_index_build takes for a block-sparse pattern (pools + the scores of one chunk of
 * heads; never more than the vertical-slash estimate's H x 64 x n floats unless one head's scores
 * need more). */
size_t krn_index_bs_ws_bytes(int n, int H, int Hkv, int d);

/* Build the index of query heads [h0, h0 + nh) with pattern p into ix (allocated for a->H heads
 * with at least krn_index_capacity's capacities). a supplies n, H, Hkv, d, q, k and strides. */
int krn_index_build(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_index_dev *ix,
                    krn_index_ws *ws, cudaStream_t s, eng_err *err);

/* Vertical-slash index of heads [h0, h0 + nh) from given lines (device arrays, per head: vsel
 * [nh][kv] keys ascending, ssel [nh][ks] diagonal offsets q - k descending): MInference's merge
 * alone, as eng_pattern_vs_index. For fixed-index benchmarks (PERF.md's 6096 local diagonals +
 * 1000 columns) and tests. ix needs capacity min(ks, n_rb + 1) blocks and kv columns. */
int krn_index_vs_from_lines(const int *vsel, int kv, const int *ssel, int ks, int h0, int nh, krn_index_dev *ix,
                            cudaStream_t s, eng_err *err);

/* (query, key) entries the index computes over all H heads (causal, band-masked), into *pairs
 * (synchronises the stream). */
int krn_index_count(const krn_index_dev *ix, int H, long long *pairs, cudaStream_t s, eng_err *err);
/* The same added onto the device counter *total, without synchronising. */
int krn_index_count_add(const krn_index_dev *ix, int H, unsigned long long *total, cudaStream_t s, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
