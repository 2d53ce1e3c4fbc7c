/* krn_dma: the per-row masks of engine/eng_dma.h on the GPU — DMA-style threshold masks (key scores,
 * per-row thresholds and per-tile maxima built on the device; flash attention that skips inactive
 * 64x64 tiles and masks per element) and N:M on attention probabilities (every logit computed, the
 * top n of each aligned group of m keys kept per row inside the flash loop). Tensors as krn_attn.h
 * (bf16 Q/K/V/out with element strides, lse [H][n] f32 natural log, GQA, d 64 or 128); launchers take
 * a range of query heads [h0, h0 + nh) of the H heads in the arguments so that heads with different
 * patterns share one set of tensors. Semantics are eng_dma.c's (the CPU reference, tests/gpu_dma.c):
 *   DMA: row i keeps j <= i iff j < sink or i - j < window or z_j >= theta_i; tile (I, J) runs iff
 *        eng_dma_tile_active says so. key_score 0 (||v_j||) is bit-identical to eng_dma_scores (double
 *        sums in the same order, exact products, correctly rounded sqrt); key_score 1 (VS vertical
 *        score) agrees to ~1e-15 relative (double logits identical, exp and the row sums' order
 *        differ); theta is a selection over z and so exactly eng_dma_thresholds of the GPU's z.
 *   N:M: per row, keys [m g, m g + m) clipped to j <= i; keep the n largest logits, ties to the lower
 *        key; logits are fp32 tensor-core sums, so only near-ties (|difference| ~1e-6 relative) can
 *        rank differently from the CPU's double logits. m must be a power of two <= 64 (groups then
 *        never straddle a 64-key tile) unless n >= m (everything kept); krn_nm_supported says. */
#ifndef KRN_DMA_H
#define KRN_DMA_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "eng_dma.h"
#include "eng_err.h"
#include "eng_pattern.h"
#include "krn_attn.h"

/* Device state of DMA masks for up to H query heads of up to n tokens. For a call with n' tokens
 * head h's arrays are z + h n', theta + h n', zmax + h ceil(n'/64) (packed by the actual length). */
typedef struct {
    int H, n;                   /* capacities */
    float *z;                   /* [H][n] key score */
    float *theta;               /* [H][n] per-row threshold, non-decreasing (-INFINITY = every key) */
    float *zmax;                /* [H][ceil(n/64)] max z per 64-key tile (NaN ignored, -INFINITY if none) */
    float *heap;                /* [H][n] threshold heap when min(keep, n) exceeds shared memory */
    double *rowstat;            /* [H][64][2] VS score: row max and exp-sum of the last 64 queries */
    unsigned long long *count;  /* [2] device counters the launchers may add to: tiles run, pairs kept */
} krn_mask_ws;

int krn_mask_ws_alloc(krn_mask_ws *w, int H, int n, eng_err *err);
void krn_mask_ws_free(krn_mask_ws *w);

/* DMA pattern p (keep, key_score) for heads [h0, h0 + nh): z, theta and zmax into w. */
int krn_dma_build(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_mask_ws *w, cudaStream_t s,
                  eng_err *err);
/* DMA attention over w's masks (krn_dma_build first) with sinks [0, sink) and window i - j < window;
 * 64-query CTAs walk only active key tiles. count (device [2], may be NULL) += tiles run, kept
 * (row, key) pairs of these heads. */
int krn_attn_dma(const krn_attn_args *a, int h0, int nh, const krn_mask_ws *w, int sink, int window,
                 unsigned long long *count, cudaStream_t s, eng_err *err);

/* 1 when the N:M kernel runs n:m (m a power of two <= 64, or n >= m). */
int krn_nm_supported(int nm_n, int nm_m);
/* N:M attention (every causal 64-key tile; count as krn_attn_dma's: tiles per 128-query CTA). */
int krn_attn_nm(const krn_attn_args *a, int h0, int nh, int nm_n, int nm_m, unsigned long long *count,
                cudaStream_t s, eng_err *err);

/* Run DMA or N:M pattern p on heads [h0, h0 + nh): build (DMA) then attend. w may be NULL for N:M. */
int krn_mask_attend(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_mask_ws *w,
                    unsigned long long *count, cudaStream_t s, eng_err *err);
/* Do x and y give the same DMA / N:M mask (so consecutive heads can share one launch)? */
int krn_mask_same(const eng_pattern *x, const eng_pattern *y);
/* Head h's DMA mask for n tokens as a host eng_head_mask (kind DMA, own z/theta/zmax copies; free
 * with eng_dma_mask_free), e.g. for eng_reshape_apply on the kernel's exact mask. Syncs s. */
int krn_dma_mask_download(const krn_mask_ws *w, int h, int n, int sink, int window, eng_head_mask *m, cudaStream_t s,
                          eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
