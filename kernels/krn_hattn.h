/* krn_hattn: Hopper (sm_90a) flash attention on warpgroup MMA (wgmma), the same function as
 * krn_attn (dense causal, or the engine's sparse index: key blocks at token offsets, gathered
 * columns, band mask) for head dim 64 and 128. Reached through krn_attn_dense / krn_attn_sparse
 * (krn_attn.h), which pick it where krn_hattn_available() says the build and the card allow. */
#ifndef KRN_HATTN_H
#define KRN_HATTN_H

#include "krn_attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this build carries sm_90a code and the current device is compute capability 9.0. */
int krn_hattn_available(void);

/* cfg picks the kernel. Dense: 0 = pipelined (S_t and P_{t-1} V_{t-1} back to back, softmax
 * overlapping the second), 2 warpgroups x 64 rows sharing each K/V tile, Q in registers; 1 = as 0
 * with one warpgroup per CTA (64 rows, no sharing: the sparse kernel's shape); 2 = as 0 with Q read
 * from shared memory by every S. Sparse: 0 = pipelined, 1 warpgroup per row block, Q in registers;
 * 1 = pipelined, two consecutive row blocks per CTA walking the union of their (sorted) lists, each
 * tile copied once for both; 2 = as 0 with Q from shared memory; 3 = as 1 with two heads of one KV
 * group and the same row block per CTA (identical lists, e.g. A-shape's, share every tile;
 * row-block pairs when H / Hkv is odd).
 * Shapes and semantics: krn_attn.h. */
int krn_hattn_dense(const krn_attn_args *a, int cfg, cudaStream_t s, eng_err *err);
int krn_hattn_sparse(const krn_attn_args *a, const krn_index_dev *ix, int cfg, cudaStream_t s, eng_err *err);
/* The sparse default: configuration 3 (head pairs) where H / Hkv is even, the index has no gathered
 * columns and the two heads of each pair name nearly the same blocks (tiles computed by pairs
 * <= 1.05x those of one warpgroup per row block: measured on the GPU, one small kernel and a stream
 * synchronisation), else configuration 0. */
int krn_hattn_sparse_auto(const krn_attn_args *a, const krn_index_dev *ix, cudaStream_t s, eng_err *err);

/* DMA-style threshold attention (krn_dma.h's semantics, the masks krn_dma_build made: z, theta,
 * zmax packed by n) for query heads [h0, h0 + nh), skipping inactive 64x64 tiles; count (device
 * [2], may be NULL) += tiles run, kept (row, key) pairs. */
int krn_hattn_dma(const krn_attn_args *a, int h0, int nh, const float *z, const float *theta, const float *zmax,
                  int sink, int window, unsigned long long *count, cudaStream_t s, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
