/* eng_dma: per-row dynamic masks that the 64-block index cannot express — DMA-style top-w keys by
 * a key score (stored as N per-row thresholds) and N:M on attention probabilities — plus the head
 * mask every pattern kind goes through (index | dma | nm): membership, counting, CPU attention with
 * one online softmax, and eng_dma_attend, the one call that runs any pattern on one head.
 *
 * DMA-style mask (a TRAINING-FREE ADAPTATION of "Trainable Dynamic Mask Sparse Attention": the
 * paper's learned z = A * softplus(v . W_dt) and its logit bias need trained weights; here z is a
 * key score computed without training and no bias is added). For query i the kept set is
 *   { j <= i : j < n_init  or  i - j < n_local  or  z_j >= theta_i },
 * theta_i = the keep-th largest z over j <= i (-inf while i + 1 <= keep), non-decreasing in i, so
 * N floats describe the whole mask; ties at the threshold are all kept. Tile (I, J) of 64 queries x
 * 64 keys is run iff it holds a kept pair: J starts <= I's last query and (J starts < n_init, or
 * J's last key > I's first query - n_local, or max_{j in J} z_j >= theta_{I's first query}).
 *
 * N:M mask: per query i, keys are grouped [m*g, m*g + m) (aligned, clipped to j <= i); in each
 * group the n largest logits q_i . k_j are kept (ties: the lower key), which are also the n largest
 * probabilities of the row. A quality probe: it needs every logit (dense cost on the CPU). */
#ifndef ENG_DMA_H
#define ENG_DMA_H

#include "eng_err.h"
#include "eng_index.h"
#include "eng_pattern.h"

typedef enum { ENG_MASK_INDEX = 0, ENG_MASK_DMA, ENG_MASK_NM } eng_mask_kind;

typedef struct {
    eng_mask_kind kind;
    int n;
    eng_head_index ix;          /* INDEX: every kind eng_pattern_is_index() accepts */
    float *z;                   /* DMA [n] key score */
    float *theta;               /* DMA [n] per-row threshold, non-decreasing (-INFINITY = every key) */
    float *zmax;                /* DMA [ceil(n/64)] max z per 64-key tile */
    int sink, window;           /* DMA always-kept sinks [0, sink) and window q - k < window */
    int nm_n, nm_m;             /* NM */
    const float *q, *k;         /* NM: BORROWED head Q/K rows (must outlive the mask) */
    int q_stride, k_stride, d;  /* NM */
} eng_head_mask;

typedef struct {
    long long tiles_causal;     /* 64x64 (query, key) tiles on or below the diagonal */
    long long tiles_run;        /* of those, tiles the kernel computed */
} eng_dma_stats;

/* DMA key score for keys 0..n-1 into z[n]: key_score 0 = ||v_j||_2, 1 = VS vertical score (column
 * sum of softmax(Q[-64:] K^T / sqrt(d)), causal inside the trailing square). */
int eng_dma_scores(int key_score, const float *q, int q_stride, const float *k, int k_stride, const float *v,
                   int v_stride, int n, int d, float *z, eng_err *err);
/* theta[i] = keep-th largest of z[0..i] (-INFINITY while i + 1 <= keep); NaN scores count as
 * -INFINITY. O(n log keep). */
int eng_dma_thresholds(const float *z, int n, int keep, float *theta, eng_err *err);

/* Any pattern's mask for one head from its Q, K, V rows (strides in floats). Index kinds build the
 * eng_head_index (eng_pattern_build); DMA its thresholds; NM borrows q and k. Free with
 * eng_dma_mask_free. */
int eng_dma_mask_build(const eng_pattern *p, const float *q, int q_stride, const float *k, const float *v,
                       int kv_stride, int n, int d, eng_head_mask *m, eng_err *err);
void eng_dma_mask_free(eng_head_mask *m);
/* Is (q, k) computed? 0 outside the causal triangle. For drawing and tests (NM: O(m * d)). */
int eng_dma_mask_covers(const eng_head_mask *m, int q, int k);
/* keep[0..q] = 1 for each key row q computes (0 elsewhere). */
void eng_dma_mask_row(const eng_head_mask *m, int q, unsigned char *keep);
/* Computed causal pairs (DMA: O(n^2); NM: a closed form, no logits needed). */
long long eng_dma_mask_count(const eng_head_mask *m);
/* DMA: does tile (row block rb, key tile kt) hold a kept pair (the kernel's skip test)? */
int eng_dma_tile_active(const eng_head_mask *m, int rb, int kt);

/* Attention over exactly the mask's pairs, fp32, one online softmax per row; row LSE in lse[n]
 * (may be NULL; -INFINITY and a zero row when nothing is kept). Index masks run
 * eng_attn_sparse_head. st (may be NULL) receives tile counts (DMA; other kinds report every
 * causal tile as run). Returns -1 only when out of memory (outputs then NaN). */
int eng_dma_attn_head(const eng_head_mask *m, const float *q, int q_stride, const float *k, const float *v,
                      int kv_stride, int n, int d, float *out, int out_stride, float *lse, eng_dma_stats *st,
                      eng_err *err);

/* Run pattern p on one head: build its mask, attend, and when p->reshape add the Re-ttention-style
 * estimate (eng_reshape.h). lse = the computed set's LSE (before any estimate), so recall stays
 * the dense mass inside the set. out_plain (may be NULL, stride out_stride): the output before the
 * estimate (a copy of out when reshape is off). computed (may be NULL): pairs computed. */
int eng_dma_attend(const eng_pattern *p, const float *q, int q_stride, const float *k, const float *v, int kv_stride,
                   int n, int d, float *out, int out_stride, float *lse, float *out_plain, long long *computed,
                   eng_err *err);

#endif
