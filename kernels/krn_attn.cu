/* krn_attn: FA2-class flash attention kernels (mma.sync m16n8k16 bf16, ldmatrix, cp.async, online
 * softmax in fp32, exp2 domain) for dense causal and index-driven sparse attention. Templates,
 * selected by the variant (krn_attn.h): attn2_kernel (dense default; FA2's tiling, 32 query rows
 * per warp), attn_pair_kernel (sparse default: attn2's warps on two row blocks sharing K/V tiles)
 * and attn_kernel (the first kernel, 16 rows per warp), serving both modes: a CTA owns a
 * block of query rows of one query head and walks a list of 64-key tiles; a tile is either 64
 * consecutive keys from a token offset (dense tiles, index key blocks; causal mask where it
 * reaches past a row) or up to 64 gathered key columns (index columns; no mask needed, they lie
 * left of the row block). Tests: tests/gpu_attn.c against the CPU references; numbers:
 * bench/RESULTS.md. */
#include "krn_attn.h"
#include "krn_hattn.h"

#include "krn_common.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

constexpr int kBN = 64; /* keys per tile */

enum { MODE_DENSE = 0, MODE_SPARSE = 1 };

/* Swizzled element offset of 16-byte chunk `ch` of row `r` in a [rows][D] bf16 tile: chunk index
 * XOR (row & 7) keeps the 8 rows an ldmatrix phase reads in 8 distinct bank groups. */
template <int D> __device__ __forceinline__ int swz(int r, int ch) { return r * D + ((ch ^ (r & 7)) << 3); }

struct Tile {
    int start;        /* first key (block tiles) */
    int count;        /* keys in this tile (gather tiles may be short) */
    const int *cols;  /* gathered key indexes, or nullptr for a block tile */
};

template <int D, int NW>
__device__ __forceinline__ void load_kv(__nv_bfloat16 *sk, __nv_bfloat16 *sv, const Tile &t,
                                        const __nv_bfloat16 *k, const __nv_bfloat16 *v, int kv_stride,
                                        int n, int tid) {
    constexpr int CH = D / 8, NT = NW * 32;
#pragma unroll
    for (int c = tid; c < kBN * CH; c += NT) {
        int r = c / CH, ch = c % CH;
        int key;
        bool ok;
        if (t.cols) {
            ok = r < t.count;
            key = ok ? __ldg(t.cols + r) : 0;
        } else {
            key = t.start + r;
            ok = key < n;
        }
        size_t off = ok ? (size_t)key * kv_stride + ch * 8 : 0;
        krn_cp_async16(krn_smem_u32(sk + swz<D>(r, ch)), k + off, ok ? 16 : 0);
        krn_cp_async16(krn_smem_u32(sv + swz<D>(r, ch)), v + off, ok ? 16 : 0);
    }
}

template <int D, int NW, int MODE>
__global__ void __launch_bounds__(NW * 32, 1)
attn_kernel(krn_attn_args a, krn_index_dev ix, float scale_log2) {
    constexpr int BM = 16 * NW, CH = D / 8, NT = NW * 32, KS = D / 16, DT = D / 8;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __nv_bfloat16 *sQ = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    __nv_bfloat16 *sK = sQ + BM * D;      /* [2][64][D] */
    __nv_bfloat16 *sV = sK + 2 * kBN * D; /* [2][64][D] */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int n = a.n;
    const int n_mb = (n + BM - 1) / BM;
    const int mb = n_mb - 1 - (int)blockIdx.x; /* heaviest row blocks first */
    const int h = blockIdx.y, hk = h / (a.H / a.Hkv);
    const int m0 = mb * BM;
    const int q0w = m0 + warp * 16; /* this warp's first row */

    const __nv_bfloat16 *q = reinterpret_cast<const __nv_bfloat16 *>(a.q) + h * D;
    const __nv_bfloat16 *k = reinterpret_cast<const __nv_bfloat16 *>(a.k) + hk * D;
    const __nv_bfloat16 *v = reinterpret_cast<const __nv_bfloat16 *>(a.v) + hk * D;

    const krn_tiles tls = krn_tiles_of<MODE == MODE_DENSE>(ix, h, mb, min(m0 + BM, n) - 1);
    const int n_blocks = tls.n_blocks, n_tiles = tls.n_tiles, n_cols = tls.n_cols, sink = tls.sink, window = tls.window;
    const int *boff = tls.boff, *cidx = tls.cidx;
    auto tile_at = [&](int t) {
        Tile tl;
        if (t < n_blocks) {
            tl.start = MODE == MODE_DENSE ? t * kBN : boff[t];
            tl.count = kBN;
            tl.cols = nullptr;
        } else {
            int g = t - n_blocks;
            tl.start = 0;
            tl.count = min(kBN, n_cols - g * kBN);
            tl.cols = cidx + g * kBN;
        }
        return tl;
    };

    /* Q tile (rows past n zero-filled) and the first K/V tile. */
#pragma unroll
    for (int c = tid; c < BM * CH; c += NT) {
        int r = c / CH, ch = c % CH, row = m0 + r;
        bool ok = row < n;
        krn_cp_async16(krn_smem_u32(sQ + swz<D>(r, ch)), q + (ok ? (size_t)row * a.q_stride + ch * 8 : 0),
                       ok ? 16 : 0);
    }
    if (n_tiles > 0) load_kv<D, NW>(sK, sV, tile_at(0), k, v, a.kv_stride, n, tid);
    krn_cp_async_commit();

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
    uint32_t qf[KS][4];
    const int row_a = q0w + (lane >> 2), row_b = row_a + 8;

    for (int t = 0; t < n_tiles; t++) {
        krn_cp_async_wait<0>();
        __syncthreads();
        if (t == 0) {
#pragma unroll
            for (int kk = 0; kk < KS; kk++)
                krn_ldmatrix_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3],
                                krn_smem_u32(sQ + swz<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))));
        }
        if (t + 1 < n_tiles)
            load_kv<D, NW>(sK + ((t + 1) & 1) * kBN * D, sV + ((t + 1) & 1) * kBN * D, tile_at(t + 1), k, v,
                           a.kv_stride, n, tid);
        krn_cp_async_commit();

        const Tile tl = tile_at(t);
        const bool gather = tl.cols != nullptr;
        if (!gather && tl.start > q0w + 15) continue; /* every key is after every row of this warp */
        const __nv_bfloat16 *cK = sK + (t & 1) * kBN * D, *cV = sV + (t & 1) * kBN * D;

        /* S = Q K^T for 16 rows x 64 keys: 8 n-tiles of 8 keys. */
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
#pragma unroll
            for (int p = 0; p < 4; p++) {
                uint32_t b0, b1, b2, b3;
                int mi = lane >> 3;
                krn_ldmatrix_x4(b0, b1, b2, b3,
                                krn_smem_u32(cK + swz<D>(p * 16 + (mi >> 1) * 8 + (lane & 7), kk * 2 + (mi & 1))));
                krn_mma_bf16(s[2 * p], qf[kk], b0, b1);
                krn_mma_bf16(s[2 * p + 1], qf[kk], b2, b3);
            }
        }
        /* Scale into the exp2 domain and mask: keys after the row (block tiles reaching past this
         * warp's first row) or past the gathered count. */
        const bool band = !gather && window > 0 && q0w + 15 - tl.start >= window && tl.start + kBN - 1 >= sink;
        const bool need_mask = gather ? tl.count < kBN : (tl.start + kBN - 1 > q0w || band);
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[j][e] * scale_log2;
                if (need_mask) {
                    int col = j * 8 + (lane & 3) * 2 + (e & 1);
                    int row = e < 2 ? row_a : row_b;
                    int key = tl.start + col;
                    bool dead = gather ? col >= tl.count
                                       : (key > row || (band && key >= sink && row - key >= window));
                    if (dead) x = -INFINITY;
                }
                s[j][e] = x;
            }
        }
        /* Online softmax: row max over the quad, rescale, exponentiate. */
        float mx_a = m_a, mx_b = m_b;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            mx_a = fmaxf(mx_a, fmaxf(s[j][0], s[j][1]));
            mx_b = fmaxf(mx_b, fmaxf(s[j][2], s[j][3]));
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        const float use_a = mx_a == -INFINITY ? 0.f : mx_a, use_b = mx_b == -INFINITY ? 0.f : mx_b;
        const float al_a = exp2f(m_a - use_a), al_b = exp2f(m_b - use_b);
        m_a = mx_a;
        m_b = mx_b;
        float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            s[j][0] = exp2f(s[j][0] - use_a);
            s[j][1] = exp2f(s[j][1] - use_a);
            s[j][2] = exp2f(s[j][2] - use_b);
            s[j][3] = exp2f(s[j][3] - use_b);
            sum_a += s[j][0] + s[j][1];
            sum_b += s[j][2] + s[j][3];
        }
        l_a = l_a * al_a + sum_a;
        l_b = l_b * al_b + sum_b;
#pragma unroll
        for (int i = 0; i < DT; i++) {
            o[i][0] *= al_a;
            o[i][1] *= al_a;
            o[i][2] *= al_b;
            o[i][3] *= al_b;
        }
        /* O += P V: P from the S accumulators (bf16), V through ldmatrix.trans. */
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t pa[4] = {krn_pack_bf16(s[2 * kk][0], s[2 * kk][1]), krn_pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              krn_pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              krn_pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t b0, b1, b2, b3;
                int mi = lane >> 3;
                krn_ldmatrix_x4_trans(b0, b1, b2, b3,
                                      krn_smem_u32(cV + swz<D>(kk * 16 + (mi & 1) * 8 + (lane & 7), dp * 2 + (mi >> 1))));
                krn_mma_bf16(o[2 * dp], pa, b0, b1);
                krn_mma_bf16(o[2 * dp + 1], pa, b2, b3);
            }
        }
    }
    krn_cp_async_wait<0>();

    /* Finish: full row sums over the quad, normalise, store bf16 and the natural-log LSE. */
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
    __nv_bfloat16 *out = reinterpret_cast<__nv_bfloat16 *>(a.out) + h * D;
#pragma unroll
    for (int i = 0; i < DT; i++) {
        int col = i * 8 + (lane & 3) * 2;
        if (row_a < n)
            *reinterpret_cast<uint32_t *>(out + (size_t)row_a * a.out_stride + col) =
                krn_pack_bf16(o[i][0] * inv_a, o[i][1] * inv_a);
        if (row_b < n)
            *reinterpret_cast<uint32_t *>(out + (size_t)row_b * a.out_stride + col) =
                krn_pack_bf16(o[i][2] * inv_b, o[i][3] * inv_b);
    }
    if (a.lse && (lane & 3) == 0) {
        const float ln2 = 0.69314718055994531f;
        if (row_a < n) a.lse[(size_t)h * n + row_a] = l_a > 0.f ? (m_a + log2f(l_a)) * ln2 : -INFINITY;
        if (row_b < n) a.lse[(size_t)h * n + row_b] = l_b > 0.f ? (m_b + log2f(l_b)) * ln2 : -INFINITY;
    }
}

/* One 64-key tile (K or V) into a [64][D] swizzled shared buffer; rows past the tile's keys (or
 * past n) are zero-filled. A gather tile's key indexes come from sidx (shared, prefetched) when
 * given, else from global memory. */
template <int D, int NT>
__device__ __forceinline__ void load_rows(__nv_bfloat16 *dst, const Tile &t, const __nv_bfloat16 *src, int stride,
                                          int n, int tid, const int *sidx = nullptr) {
    constexpr int CH = D / 8;
#pragma unroll
    for (int c = tid; c < kBN * CH; c += NT) {
        int r = c / CH, ch = c % CH;
        int key;
        bool ok;
        if (t.cols) {
            ok = r < t.count;
            key = ok ? (sidx ? sidx[r] : __ldg(t.cols + r)) : 0;
        } else {
            key = t.start + r;
            ok = key < n;
        }
        krn_cp_async16(krn_smem_u32(dst + swz<D>(r, ch)), src + (ok ? (size_t)key * stride + ch * 8 : 0), ok ? 16 : 0);
    }
}

/* The second-generation kernel (FA2's tiling): each warp owns MR 16-row m-tiles (32 query rows at
 * MR = 2), so every K/V fragment read from shared memory feeds MR mma.sync instead of one (the
 * first kernel's 16-row warps read 256 B of shared memory per mma, which bounds them near half the
 * tensor rate). Q stays in shared memory and is re-read per tile (registers hold O: MR*D/2 floats,
 * and S: MR*32). Softmax keeps raw scores; p = 2^(s*scale_log2 - m) is one FFMA + MUFU.EX2.
 * ST = 2: K and V double-buffered (load tile t+1 during tile t; one barrier per tile);
 * ST = 1: single K and V buffers, FA2's overlap (V_t loads during S = Q K_t^T, K_{t+1} during
 * O += P V_t; two barriers per tile) for a small footprint (more CTAs per SM).
 * PF (sparse, ST = 1): a gather tile's 64 key indexes are copied into shared memory one tile ahead
 * (with V_t's copy), so the K/V gathers of the next tile do not wait on dependent global loads.
 * Measured ~3% slower than without (H200, bench/RESULTS.md), so only variant 3 uses it.
 * O is rescaled only when some row max of the warp moved (a warp-uniform vote).
 * Grid (H, row blocks), row blocks in reverse: the heaviest causal row blocks of all heads first. */
template <int D, int NW, int MR, int ST, int MODE, int PF = 0>
__global__ void __launch_bounds__(NW * 32, (NW == 2 && ST == 1) ? 4 : 2)
attn2_kernel(krn_attn_args a, krn_index_dev ix, float scale_log2) {
    constexpr int RW = 16 * MR, BM = RW * NW, CH = D / 8, NT = NW * 32, KS = D / 16, DT = D / 8;
    static_assert(MODE == MODE_DENSE || BM == 64, "sparse row blocks are 64 queries (ENG_BLOCK)");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __nv_bfloat16 *sQ = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    __nv_bfloat16 *sK = sQ + BM * D;       /* [ST][64][D] */
    __nv_bfloat16 *sV = sK + ST * kBN * D; /* [ST][64][D] */
    int *sIdx = reinterpret_cast<int *>(sV + ST * kBN * D); /* PF: [2][64] gather indexes, by tile parity */
    static_assert(!PF || (ST == 1 && MODE == MODE_SPARSE && NW * 32 >= kBN), "index prefetch: sparse, ST 1");

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int n = a.n;
    const int mb = (int)gridDim.y - 1 - (int)blockIdx.y; /* heaviest row blocks first */
    const int h = blockIdx.x, hk = h / (a.H / a.Hkv);
    const int m0 = mb * BM;
    const int q0w = m0 + warp * RW; /* this warp's first row */

    const __nv_bfloat16 *q = reinterpret_cast<const __nv_bfloat16 *>(a.q) + h * D;
    const __nv_bfloat16 *k = reinterpret_cast<const __nv_bfloat16 *>(a.k) + hk * D;
    const __nv_bfloat16 *v = reinterpret_cast<const __nv_bfloat16 *>(a.v) + hk * D;

    const krn_tiles tls = krn_tiles_of<MODE == MODE_DENSE>(ix, h, mb, min(m0 + BM, n) - 1);
    const int n_blocks = tls.n_blocks, n_tiles = tls.n_tiles, n_cols = tls.n_cols, sink = tls.sink, window = tls.window;
    const int *boff = tls.boff, *cidx = tls.cidx;
    auto tile_at = [&](int t) {
        Tile tl;
        if (MODE == MODE_DENSE || t < n_blocks) { /* dense: every tile is a block tile */
            tl.start = MODE == MODE_DENSE ? t * kBN : __ldg(boff + t);
            tl.count = kBN;
            tl.cols = nullptr;
        } else {
            int g = t - n_blocks;
            tl.start = 0;
            tl.count = min(kBN, n_cols - g * kBN);
            tl.cols = cidx + g * kBN;
        }
        return tl;
    };

#pragma unroll
    for (int c = tid; c < BM * CH; c += NT) {
        int r = c / CH, ch = c % CH, row = m0 + r;
        bool ok = row < n;
        krn_cp_async16(krn_smem_u32(sQ + swz<D>(r, ch)), q + (ok ? (size_t)row * a.q_stride + ch * 8 : 0),
                       ok ? 16 : 0);
    }
    Tile nxt = {0, 0, nullptr};
    /* PF: copy a gather tile's indexes (zero past its count) into sIdx[slot]. */
    auto prefetch_idx = [&](const Tile &g, int slot) {
        if (PF && g.cols && tid < kBN)
            krn_cp_async4(krn_smem_u32(sIdx + slot * kBN + tid), g.cols + (tid < g.count ? tid : 0),
                          tid < g.count ? 4 : 0);
    };
    if (n_tiles > 0) {
        nxt = tile_at(0);
        if (PF && nxt.cols) {
            if (tid < kBN) sIdx[tid] = tid < nxt.count ? __ldg(nxt.cols + tid) : 0;
            __syncthreads();
        }
        load_rows<D, NT>(sK, nxt, k, a.kv_stride, n, tid, PF && nxt.cols ? sIdx : nullptr);
        if (ST == 2) load_rows<D, NT>(sV, nxt, v, a.kv_stride, n, tid);
    }
    krn_cp_async_commit();

    float o[MR][DT][4];
#pragma unroll
    for (int i = 0; i < MR; i++)
#pragma unroll
        for (int j = 0; j < DT; j++) o[i][j][0] = o[i][j][1] = o[i][j][2] = o[i][j][3] = 0.f;
    float m_s[MR][2], l_s[MR][2]; /* running max (scaled, log2 domain) and partial row sums */
#pragma unroll
    for (int i = 0; i < MR; i++) m_s[i][0] = m_s[i][1] = -INFINITY, l_s[i][0] = l_s[i][1] = 0.f;

    for (int t = 0; t < n_tiles; t++) {
        const Tile tl = nxt;
        const int buf = ST == 2 ? (t & 1) : 0;
        krn_cp_async_wait<0>();
        __syncthreads(); /* K_t (and V_t at ST 2) landed; every warp is done with the buffers refilled next */
        if (ST == 2) {
            if (t + 1 < n_tiles) {
                nxt = tile_at(t + 1);
                load_rows<D, NT>(sK + (buf ^ 1) * kBN * D, nxt, k, a.kv_stride, n, tid);
                load_rows<D, NT>(sV + (buf ^ 1) * kBN * D, nxt, v, a.kv_stride, n, tid);
            }
        } else {
            load_rows<D, NT>(sV, tl, v, a.kv_stride, n, tid, PF && tl.cols ? sIdx + (t & 1) * kBN : nullptr);
            if (PF && t + 1 < n_tiles) { /* sIdx[(t+1)&1] was last read by V_{t-1}'s copy, before the barrier */
                nxt = tile_at(t + 1);
                prefetch_idx(nxt, (t + 1) & 1);
            }
        }
        krn_cp_async_commit();

        const bool gather = MODE != MODE_DENSE && tl.cols != nullptr;
        const bool active = gather || tl.start <= q0w + RW - 1; /* some key at or before some row */
        const __nv_bfloat16 *cK = sK + buf * kBN * D, *cV = sV + buf * kBN * D;
        uint32_t pf[MR][4][4]; /* P as bf16 A fragments: [m-tile][16-key step][4] */
        float al[MR][2];
        if (active) {
            float s[MR][8][4];
#pragma unroll
            for (int i = 0; i < MR; i++)
#pragma unroll
                for (int j = 0; j < 8; j++) s[i][j][0] = s[i][j][1] = s[i][j][2] = s[i][j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                uint32_t qa[MR][4];
#pragma unroll
                for (int i = 0; i < MR; i++)
                    krn_ldmatrix_x4(qa[i][0], qa[i][1], qa[i][2], qa[i][3],
                                    krn_smem_u32(sQ + swz<D>(warp * RW + i * 16 + (lane & 15), kk * 2 + (lane >> 4))));
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    uint32_t b0, b1, b2, b3;
                    int mi = lane >> 3;
                    krn_ldmatrix_x4(b0, b1, b2, b3,
                                    krn_smem_u32(cK + swz<D>(p * 16 + (mi >> 1) * 8 + (lane & 7), kk * 2 + (mi & 1))));
#pragma unroll
                    for (int i = 0; i < MR; i++) {
                        krn_mma_bf16(s[i][2 * p], qa[i], b0, b1);
                        krn_mma_bf16(s[i][2 * p + 1], qa[i], b2, b3);
                    }
                }
            }
            /* Mask only tiles that reach past this warp's first row, carry a band, or are short. */
            const bool band = !gather && window > 0 && q0w + RW - 1 - tl.start >= window && tl.start + kBN - 1 >= sink;
            const bool need_mask = gather ? tl.count < kBN : (tl.start + kBN - 1 > q0w || band);
            if (need_mask) {
#pragma unroll
                for (int i = 0; i < MR; i++)
#pragma unroll
                    for (int j = 0; j < 8; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            int col = j * 8 + (lane & 3) * 2 + (e & 1);
                            int row = q0w + i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
                            int key = tl.start + col;
                            bool dead = gather ? col >= tl.count
                                               : (key > row || (band && key >= sink && row - key >= window));
                            if (dead) s[i][j][e] = -INFINITY;
                        }
            }
#pragma unroll
            for (int i = 0; i < MR; i++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    float mx = s[i][0][2 * hh];
#pragma unroll
                    for (int j = 0; j < 8; j++) mx = fmaxf(mx, fmaxf(s[i][j][2 * hh], s[i][j][2 * hh + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    const float mn = fmaxf(m_s[i][hh], mx * scale_log2);
                    const float use = mn == -INFINITY ? 0.f : mn;
                    al[i][hh] = krn_ex2(m_s[i][hh] - use);
                    m_s[i][hh] = mn;
                    float sum = 0.f;
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        float p0 = krn_ex2(fmaf(s[i][j][2 * hh], scale_log2, -use));
                        float p1 = krn_ex2(fmaf(s[i][j][2 * hh + 1], scale_log2, -use));
                        sum += p0 + p1;
                        pf[i][j >> 1][(j & 1) * 2 + hh] = krn_pack_bf16(p0, p1);
                    }
                    l_s[i][hh] = l_s[i][hh] * al[i][hh] + sum;
                }
        }
        if (ST == 1) {
            krn_cp_async_wait<0>();
            __syncthreads(); /* V_t landed; every warp is done reading K_t */
            if (t + 1 < n_tiles) {
                if (!PF) nxt = tile_at(t + 1);
                load_rows<D, NT>(sK, nxt, k, a.kv_stride, n, tid, PF && nxt.cols ? sIdx + ((t + 1) & 1) * kBN : nullptr);
            }
            krn_cp_async_commit();
        }
        if (active) {
            bool moved = false;
#pragma unroll
            for (int i = 0; i < MR; i++) moved |= al[i][0] != 1.f || al[i][1] != 1.f;
            if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
                for (int i = 0; i < MR; i++)
#pragma unroll
                    for (int j = 0; j < DT; j++) {
                        o[i][j][0] *= al[i][0];
                        o[i][j][1] *= al[i][0];
                        o[i][j][2] *= al[i][1];
                        o[i][j][3] *= al[i][1];
                    }
            }
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    uint32_t b0, b1, b2, b3;
                    int mi = lane >> 3;
                    krn_ldmatrix_x4_trans(b0, b1, b2, b3,
                                          krn_smem_u32(cV + swz<D>(kk * 16 + (mi & 1) * 8 + (lane & 7), dp * 2 + (mi >> 1))));
#pragma unroll
                    for (int i = 0; i < MR; i++) {
                        krn_mma_bf16(o[i][2 * dp], pf[i][kk], b0, b1);
                        krn_mma_bf16(o[i][2 * dp + 1], pf[i][kk], b2, b3);
                    }
                }
            }
        }
    }
    krn_cp_async_wait<0>();

    __nv_bfloat16 *out = reinterpret_cast<__nv_bfloat16 *>(a.out) + h * D;
    const float ln2 = 0.69314718055994531f;
#pragma unroll
    for (int i = 0; i < MR; i++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            float l = l_s[i][hh];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int row = q0w + i * 16 + (lane >> 2) + hh * 8;
            if (row < n) {
#pragma unroll
                for (int j = 0; j < DT; j++)
                    *reinterpret_cast<uint32_t *>(out + (size_t)row * a.out_stride + j * 8 + (lane & 3) * 2) =
                        krn_pack_bf16(o[i][j][2 * hh] * inv, o[i][j][2 * hh + 1] * inv);
                if (a.lse && (lane & 3) == 0)
                    a.lse[(size_t)h * n + row] = l > 0.f ? (m_s[i][hh] + log2f(l)) * ln2 : -INFINITY;
            }
        }
}

template <int D, int NW, int MR, int ST, int MODE, int PF = 0>
int launch2(const krn_attn_args *a, const krn_index_dev *ix, cudaStream_t st, eng_err *err) {
    constexpr int BM = 16 * MR * NW;
    const size_t smem = (size_t)(BM * D + 2 * ST * kBN * D) * sizeof(__nv_bfloat16) + (PF ? 2 * kBN * sizeof(int) : 0);
    CUDA_RET(cudaFuncSetAttribute(attn2_kernel<D, NW, MR, ST, MODE, PF>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)smem));
    const int n_mb = (a->n + BM - 1) / BM;
    if (n_mb > 65535) return eng_err_set(err, "attention: n = %d needs %d row blocks (grid limit 65535)", a->n, n_mb);
    dim3 grid(a->H, n_mb);
    krn_index_dev none = {};
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)D);
    attn2_kernel<D, NW, MR, ST, MODE, PF><<<grid, NW * 32, smem, st>>>(*a, ix ? *ix : none, scale_log2);
    LAUNCH_RET("attn2_kernel");
    return 0;
}

template <int D, int NW, int MODE>
int launch(const krn_attn_args *a, const krn_index_dev *ix, cudaStream_t st, eng_err *err) {
    constexpr int BM = 16 * NW;
    const size_t smem = (size_t)(BM * D + 4 * kBN * D) * sizeof(__nv_bfloat16);
    CUDA_RET(cudaFuncSetAttribute(attn_kernel<D, NW, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((a->n + BM - 1) / BM, a->H);
    krn_index_dev none = {};
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)D);
    attn_kernel<D, NW, MODE><<<grid, NW * 32, smem, st>>>(*a, ix ? *ix : none, scale_log2);
    LAUNCH_RET("attn_kernel");
    return 0;
}

/* The paired sparse kernel (the sparse default, variant 0; variant 4 keeps attn2's 2-warp CTAs).
 * Two 2-warp CTAs of attn2 on neighbouring row blocks each copy their K/V tiles on their own: at
 * 64 query rows per 64-key tile, twice dense's copy traffic per flop. Here one CTA of 4 warps takes two
 * consecutive 64-query row blocks (rb0 = 2 pb: warps 0-1, rb1 = rb0 + 1: warps 2-3; 32 rows per
 * warp as attn2) and walks one step list, built on the fly from both row blocks' index lists:
 *   1. shared steps: key blocks with the same start in both lists (sorted, so one merge walk);
 *      one K/V copy (stage A) feeds all 4 warps;
 *   2. shared gather steps, when both column lists are identical (VS: often);
 *   3. split steps: the next block only rb0 has (then its own gather tiles) in stage A for warps
 *      0-1, next to rb1's in stage B for warps 2-3; a pair whose list has ended idles.
 * SHARE = 0 (variant 5, the control): split steps only, each pair its own list in its own stage.
 * The online softmax does not depend on the tile order (beyond rounding). Staging as attn2 at
 * ST = 1, per stage: V_t copies during S = Q K_t^T, K_t+1 during O += P V_t.
 * Shared memory: Q [128][D] + K, V [2 stages][64][D] (96 KB at d 128, 2 CTAs per SM).
 * Measured (H200, bench/RESULTS.md): +4% (A-shape, fixed VS) to +10% (dynamic VS at 128K) over
 * attn2's 2-warp CTAs, BS even; without sharing (SHARE 0) the same CTA is 12-14% slower than attn2. */
constexpr int kNone = -2147483647 - 1; /* no tile for this stage */

struct PStep {
    int ka, kb; /* tile codes: >= 0 a block's first key, < 0 gather tile -1-code */
    int mode;   /* 0 end, 1 shared (ka for both pairs), 2 split (ka pair 0, kb pair 1) */
};

__device__ __forceinline__ Tile tile_of(int code, const int *cidx, int nc) {
    Tile t;
    if (code >= 0) {
        t.start = code, t.count = kBN, t.cols = nullptr;
    } else {
        const int g = -1 - code;
        t.start = 0, t.count = min(kBN, nc - g * kBN), t.cols = cidx + g * kBN;
    }
    return t;
}

template <int D, int SHARE>
__global__ void __launch_bounds__(128, 2) attn_pair_kernel(krn_attn_args a, krn_index_dev ix, float scale_log2) {
    constexpr int MR = 2, RW = 32, BM = 128, CH = D / 8, NT = 128, KS = D / 16, DT = D / 8;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __nv_bfloat16 *sQ = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    __nv_bfloat16 *sK = sQ + BM * D;      /* [2][64][D] */
    __nv_bfloat16 *sV = sK + 2 * kBN * D; /* [2][64][D] */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, pair = warp >> 1;
    const int n = a.n;
    const int pb = (int)gridDim.y - 1 - (int)blockIdx.y; /* heaviest pairs first */
    const int h = blockIdx.x, hk = h / (a.H / a.Hkv);
    const int rb0 = 2 * pb, m0 = rb0 * 64;
    const int q0w = m0 + warp * RW;

    const __nv_bfloat16 *q = reinterpret_cast<const __nv_bfloat16 *>(a.q) + h * D;
    const __nv_bfloat16 *k = reinterpret_cast<const __nv_bfloat16 *>(a.k) + hk * D;
    const __nv_bfloat16 *v = reinterpret_cast<const __nv_bfloat16 *>(a.v) + hk * D;

#pragma unroll
    for (int c = tid; c < BM * CH; c += NT) {
        int r = c / CH, ch = c % CH, row = m0 + r;
        bool ok = row < n;
        krn_cp_async16(krn_smem_u32(sQ + swz<D>(r, ch)), q + (ok ? (size_t)row * a.q_stride + ch * 8 : 0),
                       ok ? 16 : 0);
    }

    /* Both row blocks' lists (rb1 may be past the last row block: empty). */
    const size_t hr0 = (size_t)h * ix.n_rb + rb0;
    const bool has1 = rb0 + 1 < ix.n_rb;
    const int n0 = ix.block_count[hr0], c0 = ix.column_count[hr0];
    const int n1 = has1 ? ix.block_count[hr0 + 1] : 0, c1 = has1 ? ix.column_count[hr0 + 1] : 0;
    const int *L0 = ix.block_offset + hr0 * ix.max_blocks, *L1 = L0 + ix.max_blocks;
    const int *C0 = ix.column_index + hr0 * ix.max_cols, *C1 = C0 + ix.max_cols;
    const int gt0 = (c0 + kBN - 1) / kBN, gt1 = (c1 + kBN - 1) / kBN;
    const int sink = ix.band ? ix.band[2 * h] : 0, window = ix.band ? ix.band[2 * h + 1] : 0;
    bool csh = false; /* identical column lists: gather tiles shared too */
    if (SHARE && c0 == c1 && c0 > 0) {
        int diff = 0;
        for (int j = tid; j < c0; j += NT) diff |= __ldg(C0 + j) != __ldg(C1 + j);
        csh = !__syncthreads_or(diff);
    }

    /* The step generator; every thread runs it alike (uniform control flow, broadcast loads). */
    int phase = SHARE ? 0 : 2, i0 = 0, i1 = 0, k0 = 0, k1 = 0;
    /* Next entry of list L (then its gather tiles unless shared) that list M lacks; kk walks M. */
    auto excl = [&](const int *L, int nl, int gt, const int *M, int nm, int &i, int &kk) -> int {
        while (i < nl) {
            const int x = __ldg(L + i++);
            while (kk < nm && __ldg(M + kk) < x) kk++;
            if (kk < nm && __ldg(M + kk) == x) continue;
            return x;
        }
        if (!csh && i < nl + gt) return -1 - (i++ - nl);
        return kNone;
    };
    auto next = [&]() -> PStep {
        PStep s = {kNone, kNone, 0};
        if (phase == 0) {
            while (i0 < n0 && i1 < n1) {
                const int x = __ldg(L0 + i0), y = __ldg(L1 + i1);
                if (x == y) {
                    i0++, i1++;
                    s.ka = x, s.mode = 1;
                    return s;
                }
                if (x < y) i0++;
                else i1++;
            }
            phase = 1, i0 = 0;
        }
        if (phase == 1) {
            if (csh && i0 < gt0) {
                s.ka = -1 - i0++, s.mode = 1;
                return s;
            }
            phase = 2, i0 = i1 = k0 = k1 = 0;
        }
        s.ka = excl(L0, n0, gt0, L1, SHARE ? n1 : 0, i0, k1);
        s.kb = excl(L1, n1, gt1, L0, SHARE ? n0 : 0, i1, k0);
        s.mode = (s.ka != kNone || s.kb != kNone) ? 2 : 0;
        return s;
    };
    auto load_step = [&](const PStep &s, __nv_bfloat16 *dst, const __nv_bfloat16 *src) {
        if (s.ka != kNone) load_rows<D, NT>(dst, tile_of(s.ka, C0, c0), src, a.kv_stride, n, tid);
        if (s.mode == 2 && s.kb != kNone) load_rows<D, NT>(dst + kBN * D, tile_of(s.kb, C1, c1), src, a.kv_stride, n, tid);
    };

    PStep cur = next();
    load_step(cur, sK, k);
    krn_cp_async_commit();

    float o[MR][DT][4];
#pragma unroll
    for (int i = 0; i < MR; i++)
#pragma unroll
        for (int j = 0; j < DT; j++) o[i][j][0] = o[i][j][1] = o[i][j][2] = o[i][j][3] = 0.f;
    float m_s[MR][2], l_s[MR][2];
#pragma unroll
    for (int i = 0; i < MR; i++) m_s[i][0] = m_s[i][1] = -INFINITY, l_s[i][0] = l_s[i][1] = 0.f;

    while (cur.mode != 0) {
        krn_cp_async_wait<0>();
        __syncthreads(); /* K of this step landed; every warp is done with the V buffers */
        load_step(cur, sV, v);
        krn_cp_async_commit();

        /* This warp's tile: stage A for pair 0 and for shared steps, stage B for pair 1 when split. */
        const bool split1 = pair == 1 && cur.mode == 2;
        const int code = split1 ? cur.kb : cur.ka;
        const Tile tl = code != kNone ? tile_of(code, split1 ? C1 : C0, split1 ? c1 : c0) : Tile{0, 0, nullptr};
        const bool gather = tl.cols != nullptr;
        const bool active = code != kNone && (gather || tl.start <= q0w + RW - 1);
        const int buf = split1 ? 1 : 0;
        const __nv_bfloat16 *cK = sK + buf * kBN * D, *cV = sV + buf * kBN * D;
        uint32_t pf[MR][4][4];
        float al[MR][2];
        if (active) {
            float s[MR][8][4];
#pragma unroll
            for (int i = 0; i < MR; i++)
#pragma unroll
                for (int j = 0; j < 8; j++) s[i][j][0] = s[i][j][1] = s[i][j][2] = s[i][j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                uint32_t qa[MR][4];
#pragma unroll
                for (int i = 0; i < MR; i++)
                    krn_ldmatrix_x4(qa[i][0], qa[i][1], qa[i][2], qa[i][3],
                                    krn_smem_u32(sQ + swz<D>(warp * RW + i * 16 + (lane & 15), kk * 2 + (lane >> 4))));
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    uint32_t b0, b1, b2, b3;
                    int mi = lane >> 3;
                    krn_ldmatrix_x4(b0, b1, b2, b3,
                                    krn_smem_u32(cK + swz<D>(p * 16 + (mi >> 1) * 8 + (lane & 7), kk * 2 + (mi & 1))));
#pragma unroll
                    for (int i = 0; i < MR; i++) {
                        krn_mma_bf16(s[i][2 * p], qa[i], b0, b1);
                        krn_mma_bf16(s[i][2 * p + 1], qa[i], b2, b3);
                    }
                }
            }
            const bool band = !gather && window > 0 && q0w + RW - 1 - tl.start >= window && tl.start + kBN - 1 >= sink;
            const bool need_mask = gather ? tl.count < kBN : (tl.start + kBN - 1 > q0w || band);
            if (need_mask) {
#pragma unroll
                for (int i = 0; i < MR; i++)
#pragma unroll
                    for (int j = 0; j < 8; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            int col = j * 8 + (lane & 3) * 2 + (e & 1);
                            int row = q0w + i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
                            int key = tl.start + col;
                            bool dead = gather ? col >= tl.count
                                               : (key > row || (band && key >= sink && row - key >= window));
                            if (dead) s[i][j][e] = -INFINITY;
                        }
            }
#pragma unroll
            for (int i = 0; i < MR; i++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    float mx = s[i][0][2 * hh];
#pragma unroll
                    for (int j = 0; j < 8; j++) mx = fmaxf(mx, fmaxf(s[i][j][2 * hh], s[i][j][2 * hh + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    const float mn = fmaxf(m_s[i][hh], mx * scale_log2);
                    const float use = mn == -INFINITY ? 0.f : mn;
                    al[i][hh] = krn_ex2(m_s[i][hh] - use);
                    m_s[i][hh] = mn;
                    float sum = 0.f;
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        float p0 = krn_ex2(fmaf(s[i][j][2 * hh], scale_log2, -use));
                        float p1 = krn_ex2(fmaf(s[i][j][2 * hh + 1], scale_log2, -use));
                        sum += p0 + p1;
                        pf[i][j >> 1][(j & 1) * 2 + hh] = krn_pack_bf16(p0, p1);
                    }
                    l_s[i][hh] = l_s[i][hh] * al[i][hh] + sum;
                }
        }
        krn_cp_async_wait<0>();
        __syncthreads(); /* V landed; every warp is done reading K */
        const PStep nx = next();
        load_step(nx, sK, k);
        krn_cp_async_commit();
        if (active) {
            bool moved = false;
#pragma unroll
            for (int i = 0; i < MR; i++) moved |= al[i][0] != 1.f || al[i][1] != 1.f;
            if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
                for (int i = 0; i < MR; i++)
#pragma unroll
                    for (int j = 0; j < DT; j++) {
                        o[i][j][0] *= al[i][0];
                        o[i][j][1] *= al[i][0];
                        o[i][j][2] *= al[i][1];
                        o[i][j][3] *= al[i][1];
                    }
            }
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    uint32_t b0, b1, b2, b3;
                    int mi = lane >> 3;
                    krn_ldmatrix_x4_trans(b0, b1, b2, b3,
                                          krn_smem_u32(cV + swz<D>(kk * 16 + (mi & 1) * 8 + (lane & 7), dp * 2 + (mi >> 1))));
#pragma unroll
                    for (int i = 0; i < MR; i++) {
                        krn_mma_bf16(o[i][2 * dp], pf[i][kk], b0, b1);
                        krn_mma_bf16(o[i][2 * dp + 1], pf[i][kk], b2, b3);
                    }
                }
            }
        }
        cur = nx;
    }
    krn_cp_async_wait<0>();

    __nv_bfloat16 *out = reinterpret_cast<__nv_bfloat16 *>(a.out) + h * D;
    const float ln2 = 0.69314718055994531f;
#pragma unroll
    for (int i = 0; i < MR; i++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            float l = l_s[i][hh];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int row = q0w + i * 16 + (lane >> 2) + hh * 8;
            if (row < n) {
#pragma unroll
                for (int j = 0; j < DT; j++)
                    *reinterpret_cast<uint32_t *>(out + (size_t)row * a.out_stride + j * 8 + (lane & 3) * 2) =
                        krn_pack_bf16(o[i][j][2 * hh] * inv, o[i][j][2 * hh + 1] * inv);
                if (a.lse && (lane & 3) == 0)
                    a.lse[(size_t)h * n + row] = l > 0.f ? (m_s[i][hh] + log2f(l)) * ln2 : -INFINITY;
            }
        }
}

template <int D, int SHARE>
int launch_pair(const krn_attn_args *a, const krn_index_dev *ix, cudaStream_t st, eng_err *err) {
    const size_t smem = (size_t)(128 * D + 4 * kBN * D) * sizeof(__nv_bfloat16);
    CUDA_RET(cudaFuncSetAttribute(attn_pair_kernel<D, SHARE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const int n_pb = (ix->n_rb + 1) / 2;
    if (n_pb > 65535) return eng_err_set(err, "sparse attention: n = %d needs %d row-block pairs (grid limit 65535)", a->n, n_pb);
    dim3 grid(a->H, n_pb);
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)D);
    attn_pair_kernel<D, SHARE><<<grid, 128, smem, st>>>(*a, *ix, scale_log2);
    LAUNCH_RET("attn_pair_kernel");
    return 0;
}

int check_args(const krn_attn_args *a, eng_err *err) {
    if (!a || !a->q || !a->k || !a->v || !a->out) return eng_err_set(err, "attention: NULL tensor");
    if (a->n <= 0) return eng_err_set(err, "attention: n = %d must be > 0", a->n);
    if (a->d != 64 && a->d != 128) return eng_err_set(err, "attention: head dim %d unsupported (64 or 128)", a->d);
    if (a->H <= 0 || a->Hkv <= 0 || a->H % a->Hkv)
        return eng_err_set(err, "attention: %d query heads not a multiple of %d KV heads", a->H, a->Hkv);
    if (a->q_stride % 8 || a->kv_stride % 8 || a->out_stride % 8 || a->q_stride < a->H * a->d ||
        a->kv_stride < a->Hkv * a->d || a->out_stride < a->H * a->d)
        return eng_err_set(err, "attention: strides must be multiples of 8 covering all heads");
    if (a->H > 65535) return eng_err_set(err, "attention: %d heads exceed the grid limit", a->H);
    return 0;
}

} /* namespace */

extern "C" int krn_attn_dense(const krn_attn_args *a, int variant, cudaStream_t s, eng_err *err) {
    if (check_args(a, err)) return -1;
    const bool d64 = a->d == 64;
    if (variant == 0) variant = krn_hattn_available() ? 7 : 6;
    switch (variant) {
    case 6: return d64 ? launch2<64, 4, 2, 1, MODE_DENSE>(a, nullptr, s, err) : launch2<128, 4, 2, 1, MODE_DENSE>(a, nullptr, s, err);
    case 7:
    case 8:
    case 9: return krn_hattn_dense(a, variant - 7, s, err);
    case 1: return d64 ? launch<64, 4, MODE_DENSE>(a, nullptr, s, err) : launch<128, 4, MODE_DENSE>(a, nullptr, s, err);
    case 2: return d64 ? launch<64, 8, MODE_DENSE>(a, nullptr, s, err) : launch<128, 8, MODE_DENSE>(a, nullptr, s, err);
    case 3: return d64 ? launch2<64, 4, 2, 2, MODE_DENSE>(a, nullptr, s, err) : launch2<128, 4, 2, 2, MODE_DENSE>(a, nullptr, s, err);
    case 10: return krn_hattn_dense(a, 0, s, err); /* a sparse-only wgmma configuration */
    case 4: /* the sparse pair kernels' variants; dense runs variant 0 (its rows measure run-to-run spread) */
    case 5:
        return d64 ? launch2<64, 4, 2, 1, MODE_DENSE>(a, nullptr, s, err) : launch2<128, 4, 2, 1, MODE_DENSE>(a, nullptr, s, err);
    default: return eng_err_set(err, "attention: unknown dense kernel variant %d (0..%d)", variant, KRN_ATTN_VARIANTS - 1);
    }
}

extern "C" int krn_attn_sparse_variant(const krn_attn_args *a, const krn_index_dev *ix, int variant, cudaStream_t s,
                                       eng_err *err) {
    if (check_args(a, err)) return -1;
    if (!ix || !ix->block_count || !ix->block_offset || !ix->column_count || !ix->column_index)
        return eng_err_set(err, "sparse attention: NULL index");
    if (ix->n != a->n || ix->n_rb != (a->n + 63) / 64)
        return eng_err_set(err, "sparse attention: index built for n = %d, attention has n = %d", ix->n, a->n);
    const bool d64 = a->d == 64;
    if (variant == 0) {
        if (krn_hattn_available()) return krn_hattn_sparse_auto(a, ix, s, err);
        variant = 6;
    }
    switch (variant) {
    case 6: return d64 ? launch_pair<64, 1>(a, ix, s, err) : launch_pair<128, 1>(a, ix, s, err);
    case 7:
    case 8:
    case 9:
    case 10: return krn_hattn_sparse(a, ix, variant - 7, s, err);
    case 1:
    case 2: return d64 ? launch<64, 4, MODE_SPARSE>(a, ix, s, err) : launch<128, 4, MODE_SPARSE>(a, ix, s, err);
    case 3: return d64 ? launch2<64, 2, 2, 1, MODE_SPARSE, 1>(a, ix, s, err) : launch2<128, 2, 2, 1, MODE_SPARSE, 1>(a, ix, s, err);
    case 4: return d64 ? launch2<64, 2, 2, 1, MODE_SPARSE>(a, ix, s, err) : launch2<128, 2, 2, 1, MODE_SPARSE>(a, ix, s, err);
    case 5: return d64 ? launch_pair<64, 0>(a, ix, s, err) : launch_pair<128, 0>(a, ix, s, err);
    default: return eng_err_set(err, "sparse attention: unknown kernel variant %d (0..%d)", variant, KRN_ATTN_VARIANTS - 1);
    }
}

extern "C" int krn_attn_sparse(const krn_attn_args *a, const krn_index_dev *ix, cudaStream_t s, eng_err *err) {
    return krn_attn_sparse_variant(a, ix, 0, s, err);
}

extern "C" int krn_index_dev_alloc(krn_index_dev *ix, int H, int n, int max_blocks, int max_cols, eng_err *err) {
    *ix = krn_index_dev{};
    if (H <= 0 || n <= 0 || max_blocks < 0 || max_cols < 0)
        return eng_err_set(err, "index: bad shape H=%d n=%d max_blocks=%d max_cols=%d", H, n, max_blocks, max_cols);
    ix->n = n;
    ix->n_rb = (n + 63) / 64;
    ix->max_blocks = max_blocks;
    ix->max_cols = max_cols;
    const size_t rows = (size_t)H * ix->n_rb;
    CUDA_TRY(cudaMalloc((void **)&ix->block_count, rows * sizeof(int)));
    CUDA_TRY(cudaMalloc((void **)&ix->column_count, rows * sizeof(int)));
    CUDA_TRY(cudaMalloc((void **)&ix->block_offset, rows * (size_t)(max_blocks > 0 ? max_blocks : 1) * sizeof(int)));
    CUDA_TRY(cudaMalloc((void **)&ix->column_index, rows * (size_t)(max_cols > 0 ? max_cols : 1) * sizeof(int)));
    CUDA_TRY(cudaMalloc((void **)&ix->band, (size_t)H * 2 * sizeof(int)));
    CUDA_TRY(cudaMemset(ix->block_count, 0, rows * sizeof(int)));
    CUDA_TRY(cudaMemset(ix->column_count, 0, rows * sizeof(int)));
    CUDA_TRY(cudaMemset(ix->band, 0, (size_t)H * 2 * sizeof(int)));
    return 0;
fail:
    krn_index_dev_free(ix);
    return -1;
}

extern "C" void krn_index_dev_free(krn_index_dev *ix) {
    if (!ix) return;
    cudaFree(ix->block_count);
    cudaFree(ix->column_count);
    cudaFree(ix->block_offset);
    cudaFree(ix->column_index);
    cudaFree(ix->band);
    *ix = krn_index_dev{};
}

extern "C" int krn_index_dev_upload(krn_index_dev *ix, const eng_head_index *heads, int H, eng_err *err) {
    *ix = krn_index_dev{};
    if (!heads || H <= 0) return eng_err_set(err, "index upload: no heads");
    int n = heads[0].n, mb = 0, mc = 0;
    for (int h = 0; h < H; h++) {
        if (heads[h].n != n || heads[h].n_rb != (n + 63) / 64)
            return eng_err_set(err, "index upload: head %d has n = %d, head 0 has n = %d", h, heads[h].n, n);
        mb = heads[h].max_blocks > mb ? heads[h].max_blocks : mb;
        mc = heads[h].max_cols > mc ? heads[h].max_cols : mc;
    }
    const int n_rb = (n + 63) / 64;
    const size_t rows = (size_t)H * n_rb;
    int *hb = nullptr;
    if (krn_index_dev_alloc(ix, H, n, mb, mc, err)) return -1;
    /* One host staging buffer: counts, offsets, columns, bands, packed as on the device. */
    hb = (int *)calloc(rows * (2 + (size_t)mb + mc) + 2 * (size_t)H, sizeof(int));
    if (!hb) {
        eng_err_set(err, "index upload: out of host memory");
        goto fail;
    }
    {
        int *bc = hb, *cc = bc + rows, *bo = cc + rows, *ci = bo + rows * mb, *band = ci + rows * mc;
        for (int h = 0; h < H; h++) {
            const eng_head_index *x = &heads[h];
            for (int rb = 0; rb < n_rb; rb++) {
                size_t r = (size_t)h * n_rb + rb;
                bc[r] = x->block_count ? x->block_count[rb] : 0;
                cc[r] = x->column_count ? x->column_count[rb] : 0;
                if (bc[r] < 0 || bc[r] > x->max_blocks || cc[r] < 0 || cc[r] > x->max_cols) {
                    eng_err_set(err, "index upload: head %d row block %d counts %d/%d exceed capacity %d/%d", h, rb,
                                bc[r], cc[r], x->max_blocks, x->max_cols);
                    goto fail;
                }
                if (bc[r]) memcpy(bo + r * mb, x->block_offset + (size_t)rb * x->max_blocks, bc[r] * sizeof(int));
                if (cc[r]) memcpy(ci + r * mc, x->column_index + (size_t)rb * x->max_cols, cc[r] * sizeof(int));
            }
            band[2 * h] = x->sink;
            band[2 * h + 1] = x->window;
        }
        CUDA_TRY(cudaMemcpy(ix->block_count, bc, rows * sizeof(int), cudaMemcpyHostToDevice));
        CUDA_TRY(cudaMemcpy(ix->column_count, cc, rows * sizeof(int), cudaMemcpyHostToDevice));
        if (mb) CUDA_TRY(cudaMemcpy(ix->block_offset, bo, rows * mb * sizeof(int), cudaMemcpyHostToDevice));
        if (mc) CUDA_TRY(cudaMemcpy(ix->column_index, ci, rows * mc * sizeof(int), cudaMemcpyHostToDevice));
        CUDA_TRY(cudaMemcpy(ix->band, band, 2 * (size_t)H * sizeof(int), cudaMemcpyHostToDevice));
    }
    free(hb);
    return 0;
fail:
    free(hb);
    krn_index_dev_free(ix);
    return -1;
}
