/* eng_map: pooled attention maps for one query head without N x N memory, for pictures (PNG,
 * terminal, TUI). The output is a grid of W x H pixels over a query range [q0, q1) (rows) and a key
 * range [k0, k1) (columns); each pixel pools the exact causal softmax probabilities
 *   p(q, k) = exp(scale * q.k - lse[q]),  k <= q,  scale = 1/sqrt(d)
 * of the tokens in its tile. Q and K are after RoPE, strides as in eng_attn.h: q row t at
 * q[t*q_stride .. + d), k row t at k[t*k_stride .. + d). Memory: O(n*d + W*H) per call.
 *
 * Tiles. Pixel column x covers keys [k0 + floor(x*nk/W), k0 + floor((x+1)*nk/W)) with nk = k1 - k0;
 * rows likewise over queries. When W > nk (zoomed in) each pixel shows the single key
 * k0 + floor(x*nk/W), so a token spans several pixels (nearest-neighbour); the same for rows.
 *
 * Pooling. MAX: the largest p over the tile's causal (k <= q) entries. MEAN: the sum of p over the
 * tile's causal entries divided by the tile's FULL area (rows x cols): non-causal entries count
 * as 0, so a tile cut by the diagonal shows its mass density, and summing MEAN pixels times their
 * areas gives the total mass. A tile with no causal entry at all gets opts->empty (pass NAN to let
 * renderers draw "no data"). With an index (sparse attention), entries the index does not compute
 * have p = 0 (they still count for the tile area and make a causal tile non-empty); "computes" is
 * eng_index_covers exactly: block keys under the index's band mask (sink, window), then columns. */
#ifndef ENG_MAP_H
#define ENG_MAP_H

#include "eng_dma.h"
#include "eng_err.h"
#include "eng_index.h"

typedef enum { ENG_POOL_MAX = 0, ENG_POOL_MEAN } eng_pool;

typedef struct {
    int q0, q1;      /* query rows [q0, q1) */
    int k0, k1;      /* key columns [k0, k1) */
    int w, h;        /* output pixels: w across (keys), h down (queries) */
    eng_pool pool;
    float empty;     /* value of tiles with no causal entry (0 by zero-init; NAN for "no data") */
    int threads;     /* <= 0: one per online CPU */
} eng_map_opts;

/* Pooled map of one head into out[h][w] (row-major, row y = query tiles). lse[t] (natural log,
 * scaled logits, as eng_attn_*_head and eng_prefill_out.lse give it) may be NULL: then a first
 * pass computes it over keys [0, q] (or over the index's entries when ix is given). ix (may be
 * NULL = dense causal) restricts p to the entries the index computes, with lse the sparse row's.
 * n tokens; 0 <= q0 < q1 <= n, 0 <= k0 < k1 <= n, 1 <= w, h <= 16384. */
int eng_map_pool(const float *q, int q_stride, const float *k, int k_stride, int n, int d, const float *lse,
                 const eng_head_index *ix, const eng_map_opts *opts, float *out, eng_err *err);

struct eng_backend; /* eng_backend.h (which includes this header) */

/* eng_map_pool on backend be: be->map_pool (the GPU's) when be has one, else eng_map_pool on the
 * CPU (be NULL too). Same arguments and results; the viewer paths call this. */
int eng_map_pool_on(struct eng_backend *be, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                    const float *lse, const eng_head_index *ix, const eng_map_opts *opts, float *out, eng_err *err);

/* For the index overlay: out[h][w] = the fraction of each tile's causal entries that ix computes
 * (1 = all computed, 0 = all skipped; band mask applied as in eng_index_covers), opts->empty where
 * a tile has no causal entry. Same tiles as eng_map_pool (pool and threads ignored).
 * O(n * (blocks + columns) + w*h), no N x N. */
int eng_map_index_mask(const eng_head_index *ix, const eng_map_opts *opts, float *out, eng_err *err);

/* Any pattern's head mask (eng_dma.h: index, DMA, N:M), for the sparse views of every kind:
 * eng_map_pool_mask = eng_map_pool restricted to the pairs eng_dma_mask_covers accepts (row LSE over
 * those pairs, computed here); index masks go to eng_map_pool_on (be's GPU map when it has one),
 * DMA and N:M masks run on the CPU (each query row's keys from eng_dma_mask_row: O(n) per row for
 * DMA, O(n * d) for N:M). eng_map_mask_cover = eng_map_index_mask for any mask (same tiles). */
int eng_map_pool_mask(struct eng_backend *be, const float *q, int q_stride, const float *k, int k_stride, int n,
                      int d, const eng_head_mask *m, const eng_map_opts *opts, float *out, eng_err *err);
int eng_map_mask_cover(const eng_head_mask *m, const eng_map_opts *opts, float *out, eng_err *err);

/* Tile edges used by both functions: e[i] = a + floor(i * (b - a) / px) for i in 0..px when
 * px <= b - a; callers that label axes can use it. */
int eng_map_edge(int a, int b, int px, int i);

#endif
