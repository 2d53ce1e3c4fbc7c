/* krn_attn: flash attention on the GPU (bf16 in, fp32 accumulate, one online softmax), dense causal
 * and sparse from the engine's index (eng_index.h), C-callable launchers over device pointers.
 * Shapes (all bf16, row-major, element strides): q row t head h at q + t*q_stride + h*d;
 * k/v row t KV head g at k + t*kv_stride + g*d; out like q (out_stride); lse [H][n] f32 natural-log
 * log-sum-exp of the scaled logits (may be NULL). Query head h reads KV head h / (H / Hkv).
 * d is 64 or 128; strides are multiples of 8 elements (16-byte rows). */
#ifndef KRN_ATTN_H
#define KRN_ATTN_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "eng_err.h"
#include "eng_index.h"

typedef struct {
    int n, H, Hkv, d;
    const void *q, *k, *v; /* __nv_bfloat16 */
    int q_stride, kv_stride;
    void *out;             /* __nv_bfloat16 */
    int out_stride;
    float *lse;            /* [H][n] or NULL */
} krn_attn_args;

/* A device-resident index for H query heads: head h's arrays start at h * n_rb (counts),
 * h * n_rb * max_blocks (offsets), h * n_rb * max_cols (columns). Semantics: eng_index.h. */
typedef struct {
    int n, n_rb, max_blocks, max_cols;
    int *block_count;  /* [H][n_rb] */
    int *block_offset; /* [H][n_rb][max_blocks] */
    int *column_count; /* [H][n_rb] */
    int *column_index; /* [H][n_rb][max_cols] */
    int *band;         /* [H][2] (sink, window): eng_head_index's band mask on block keys; 0 = off */
} krn_index_dev;

/* Kernel variants, all the same function, kept so old and new can be timed in one run:
 * 0 = default: where krn_hattn_available() (an sm_90 card and an sm_90a build) dense 7 and sparse
 *     krn_hattn_sparse_auto (10 where head pairs name nearly the same blocks, else 7), else 6;
 * 1 = first mma.sync kernel, 64-query tiles, 4 warps (16 rows per warp);
 * 2 = first kernel, dense: 128-query tiles, 8 warps; sparse: as 1;
 * 3 = FA2 tiling, dense: K/V double-buffered; sparse: as 6 plus gather indexes prefetched into
 *     shared memory a tile ahead (measured slower on the H200);
 * 4 = sparse: 64-query row blocks, 2 warps, 4 CTAs per SM; dense: as 6;
 * 5 = sparse: the paired CTA without sharing (each pair walks its own list; the control); dense:
 *     as 6;
 * 6 = the mma.sync default (m16n8k16, ldmatrix, cp.async): FA2 tiling, 32 query rows per warp,
 *     single K/V buffers; dense: 128-query tiles, 4 warps; sparse: paired row blocks, one 4-warp
 *     CTA per two consecutive 64-query row blocks, loading the K/V tiles both index lists name
 *     once for both (blocks with the same start; gather tiles when the column lists are equal);
 * 7, 8, 9 = the Hopper wgmma kernels (krn_hattn.h) in configurations 0, 1, 2 (7: pipelined, Q in
 *     registers; dense 2 warpgroups sharing K/V, sparse 1 warpgroup per row block);
 * 10 = sparse: wgmma configuration 3 (head pairs of a KV group sharing tiles); dense: as 7. */
#define KRN_ATTN_VARIANTS 11

/* Dense causal attention; variant as above (0 unless benchmarking). */
int krn_attn_dense(const krn_attn_args *a, int variant, cudaStream_t s, eng_err *err);

/* Sparse attention: per (head, 64-query row block) the index's key blocks (causal mask where a
 * block reaches past a query) and then its gathered columns, under one online softmax. */
int krn_attn_sparse(const krn_attn_args *a, const krn_index_dev *ix, cudaStream_t s, eng_err *err);
/* The same with an explicit kernel variant (KRN_ATTN_VARIANTS; krn_attn_sparse uses 0). */
int krn_attn_sparse_variant(const krn_attn_args *a, const krn_index_dev *ix, int variant, cudaStream_t s,
                            eng_err *err);

/* Device index storage for H heads (cudaMalloc'd, counts and bands zeroed; free with
 * krn_index_dev_free). */
int krn_index_dev_alloc(krn_index_dev *ix, int H, int n, int max_blocks, int max_cols, eng_err *err);
void krn_index_dev_free(krn_index_dev *ix);
/* Upload H host indexes (eng_index.h, one per query head, all for the same n) into a fresh device
 * index whose capacities are the largest of the heads'. */
int krn_index_dev_upload(krn_index_dev *ix, const eng_head_index *heads, int H, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
