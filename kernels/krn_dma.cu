/* krn_dma: DMA-style threshold masks and N:M masks on the GPU (see krn_dma.h). Mask building:
 * key scores (vnorm_kernel, or vs_rows_kernel + vs_cols_kernel for the VS vertical score, in
 * double like eng_dma_scores), thresholds (thresh_kernel: one warp per head keeping the keep
 * largest scores in a min-heap, as eng_dma_thresholds) and tile maxima (zmax_kernel). Attention:
 * mask_attn_kernel, krn_attn.cu's attn2 structure (mma.sync m16n8k16 bf16, ldmatrix, cp.async, FA2
 * tiling with 32 query rows per warp, single K/V buffers: V_t loads during Q K_t^T, K_t+1 during
 * P V_t, online softmax in the exp2 domain) with a per-element mask predicate:
 *   KIND_DMA: 64-query CTAs (2 warps), so tiles are eng_dma.c's 64x64 tiles; a CTA visits only the
 *             key tiles eng_dma_tile_active accepts (zmax[J] >= theta of the block's first row, or J
 *             holds a sink or reaches the window) and keeps j iff j < sink || i - j < window ||
 *             z_j >= theta_i (causal).
 *   KIND_NM:  128-query CTAs (4 warps) over every causal tile; per row and aligned group of M keys
 *             (M a power of two, so groups never straddle a 64-key tile) a logit is dropped when n
 *             others beat it (greater, or equal at a lower key). M <= 8: the group's logits are in
 *             one quad of lanes (shfl_xor); M >= 16: through a per-warp shared-memory logit tile.
 * On sm_90 cards krn_attn_dma runs krn_hattn.cu's wgmma kernel instead (same mask, same counts).
 * Tests: tests/gpu_dma.c against eng_dma_attend / eng_dma_attn_head. */
#include "krn_dma.h"

#include "krn_common.cuh"
#include "krn_hattn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

typedef __nv_bfloat16 bf16;

constexpr int kBN = 64;          /* keys per tile, queries per DMA row block (ENG_BLOCK) */
constexpr int kVsLast = 64;      /* VS vertical score: the last 64 queries (eng_dma.c VS_LAST) */
constexpr int kHeapSmem = 12288; /* threshold heap entries held in shared memory (48 KB) */
constexpr int kSS = kBN + 4;     /* row stride (floats) of the N:M per-warp logit tile */

enum { KIND_DMA = 0, KIND_NM = 1 };

/* Swizzled element offset of 16-byte chunk ch of row r in a [rows][D] bf16 tile (krn_attn.cu's). */
template <int D> __device__ __forceinline__ int swz(int r, int ch) { return r * D + ((ch ^ (r & 7)) << 3); }

/* Keys [start, start + 64) (rows past n zero-filled) into a swizzled [64][D] tile. */
template <int D, int NT>
__device__ __forceinline__ void load_tile(bf16 *dst, int start, const bf16 *src, int stride, int n, int tid) {
    constexpr int CH = D / 8;
#pragma unroll
    for (int c = tid; c < kBN * CH; c += NT) {
        const int r = c / CH, ch = c % CH, key = start + r;
        const bool ok = key < n;
        krn_cp_async16(krn_smem_u32(dst + swz<D>(r, ch)), src + (ok ? (size_t)key * stride + ch * 8 : 0), ok ? 16 : 0);
    }
}

struct mask_params {
    const float *z, *theta, *zmax; /* DMA: head h at z + h n, theta + h n, zmax + h n_kt */
    int sink, window;              /* DMA */
    int nm_n;                      /* N:M: kept per group */
    unsigned long long *count;     /* [2] tiles run, pairs kept; nullptr = not counted */
};

/* N:M selection on one warp's S fragments (s[i][j][e]: row i*16 + lane/4 + 8*(e/2), key j*8 +
 * 2*(lane%4) + e%2 of the tile), masked entries already -inf. M <= 8: a group is the pair of this
 * lane plus the pairs of lanes quad ^ x, x < M/2, in the same 8-key column block. */
template <int M>
__device__ __forceinline__ void nm_select_quad(float (&s)[2][8][4], int nkeep, int quad) {
    static_assert(M == 2 || M == 4 || M == 8, "quad path: M in {2, 4, 8}");
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const float a0 = s[i][j][2 * hh], a1 = s[i][j][2 * hh + 1];
                int b0 = a1 > a0, b1 = a0 >= a1; /* the lane's other key: higher for a0, lower for a1 */
#pragma unroll
                for (int x = 1; x < M / 2; x++) {
                    const float p0 = __shfl_xor_sync(0xffffffffu, a0, x), p1 = __shfl_xor_sync(0xffffffffu, a1, x);
                    const bool lo = (quad ^ x) < quad; /* the partner's keys are lower than ours */
                    b0 += (p0 > a0 || (p0 == a0 && lo)) + (p1 > a0 || (p1 == a0 && lo));
                    b1 += (p0 > a1 || (p0 == a1 && lo)) + (p1 > a1 || (p1 == a1 && lo));
                }
                if (b0 >= nkeep) s[i][j][2 * hh] = -INFINITY;
                if (b1 >= nkeep) s[i][j][2 * hh + 1] = -INFINITY;
            }
}

/* M >= 16: the warp's 32 x 64 logits go to w ([32][kSS] floats), each entry is ranked against
 * its group's M entries of the same row. */
template <int M>
__device__ __forceinline__ void nm_select_smem(float (&s)[2][8][4], int nkeep, int lane, float *w) {
    static_assert(M >= 16 && M <= 64 && (M & (M - 1)) == 0, "shared path: M in {16, 32, 64}");
    const int quad = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                w[(i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0)) * kSS + j * 8 + quad * 2 + (e & 1)] = s[i][j][e];
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float x = s[i][j][e];
                const int c = j * 8 + quad * 2 + (e & 1), g0 = (j * 8 / M) * M;
                const float *row = w + (i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0)) * kSS + g0;
                int better = 0;
#pragma unroll 8
                for (int u = 0; u < M; u++) {
                    const float y = row[u];
                    better += y > x || (y == x && g0 + u < c);
                }
                if (better >= nkeep) s[i][j][e] = -INFINITY;
            }
    __syncwarp(); /* every lane has read w before the next tile overwrites it */
}

/* The masked flash kernel. Grid (nh heads, row blocks in reverse: the heaviest first), NW warps of
 * 32 query rows each. Shared memory: Q [BM][D], K [64][D], V [64][D] bf16 (+ N:M M >= 16: the
 * per-warp logit tiles [NW][32][kSS] f32). */
template <int D, int NW, int KIND, int M>
__global__ void __launch_bounds__(NW * 32, NW == 2 ? 4 : 2)
mask_attn_kernel(krn_attn_args a, int h0, mask_params mp, float scale_log2) {
    constexpr int MR = 2, RW = 32, BM = RW * NW, CH = D / 8, NT = NW * 32, KS = D / 16, DT = D / 8;
    constexpr bool SMEM_RANK = KIND == KIND_NM && M >= 16;
    static_assert(KIND != KIND_DMA || BM == kBN, "DMA row blocks are the CPU's 64-query tiles");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *sQ = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *sK = sQ + BM * D, *sV = sK + kBN * D;
    float *sS = reinterpret_cast<float *>(sV + kBN * D);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, quad = lane & 3;
    const int n = a.n;
    const int mb = (int)gridDim.y - 1 - (int)blockIdx.y;
    const int h = h0 + (int)blockIdx.x, hk = h / (a.H / a.Hkv);
    const int m0 = mb * BM, q0w = m0 + warp * RW;
    const int n_kt = (min(m0 + BM, n) - 1) / kBN + 1; /* causal key tiles of this row block */

    const bf16 *q = reinterpret_cast<const bf16 *>(a.q) + h * D;
    const bf16 *k = reinterpret_cast<const bf16 *>(a.k) + hk * D;
    const bf16 *v = reinterpret_cast<const bf16 *>(a.v) + hk * D;

    /* DMA: the row block's tile test (theta is non-decreasing, so its first row's is the smallest)
     * and the thresholds of this thread's 4 rows (+inf past n: such rows are never stored). */
    const float *zh = nullptr, *zmh = nullptr;
    float th0 = 0.f, th[MR][2];
#pragma unroll
    for (int i = 0; i < MR; i++) th[i][0] = th[i][1] = INFINITY;
    if (KIND == KIND_DMA) {
        const float *thh = mp.theta + (size_t)h * n;
        zh = mp.z + (size_t)h * n;
        zmh = mp.zmax + (size_t)h * ((n + kBN - 1) / kBN);
        th0 = __ldg(thh + m0);
#pragma unroll
        for (int i = 0; i < MR; i++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int row = q0w + i * 16 + (lane >> 2) + hh * 8;
                if (row < n) th[i][hh] = __ldg(thh + row);
            }
    }
    auto tile_on = [&](int kt) -> bool {
        if (KIND != KIND_DMA) return true;
        const int j0 = kt * kBN, j1 = min(j0 + kBN, n) - 1;
        return j0 < mp.sink || m0 - j1 < mp.window || __ldg(zmh + kt) >= th0;
    };
    auto next_tile = [&](int kt) {
        while (kt < n_kt && !tile_on(kt)) kt++;
        return kt;
    };

#pragma unroll
    for (int c = tid; c < BM * CH; c += NT) {
        const int r = c / CH, ch = c % CH, row = m0 + r;
        const bool ok = row < n;
        krn_cp_async16(krn_smem_u32(sQ + swz<D>(r, ch)), q + (ok ? (size_t)row * a.q_stride + ch * 8 : 0), ok ? 16 : 0);
    }
    int cur = next_tile(0);
    if (cur < n_kt) load_tile<D, NT>(sK, cur * kBN, k, a.kv_stride, n, tid);
    krn_cp_async_commit();

    float o[MR][DT][4];
#pragma unroll
    for (int i = 0; i < MR; i++)
#pragma unroll
        for (int j = 0; j < DT; j++) o[i][j][0] = o[i][j][1] = o[i][j][2] = o[i][j][3] = 0.f;
    float m_s[MR][2], l_s[MR][2];
#pragma unroll
    for (int i = 0; i < MR; i++) m_s[i][0] = m_s[i][1] = -INFINITY, l_s[i][0] = l_s[i][1] = 0.f;
    const bool counting = mp.count != nullptr;
    unsigned kept = 0, tiles = 0; /* per thread: at most 64 entries x 65535 tiles each */

    while (cur < n_kt) {
        krn_cp_async_wait<0>();
        __syncthreads(); /* K_t landed; every warp is done with V_{t-1} */
        load_tile<D, NT>(sV, cur * kBN, v, a.kv_stride, n, tid);
        krn_cp_async_commit();
        tiles++;

        const int j0 = cur * kBN;
        const bool active = j0 <= q0w + RW - 1; /* some key at or before some row of this warp */
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
                    const int mi = lane >> 3;
                    krn_ldmatrix_x4(b0, b1, b2, b3,
                                    krn_smem_u32(sK + swz<D>(p * 16 + (mi >> 1) * 8 + (lane & 7), kk * 2 + (mi & 1))));
#pragma unroll
                    for (int i = 0; i < MR; i++) {
                        krn_mma_bf16(s[i][2 * p], qa[i], b0, b1);
                        krn_mma_bf16(s[i][2 * p + 1], qa[i], b2, b3);
                    }
                }
            }
            /* The mask: causal everywhere it reaches past this warp's first row; DMA's keep rule on
             * every entry (z of this thread's 16 keys loaded once per tile). */
            if (KIND == KIND_DMA) {
                float zc[8][2];
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int key = j0 + j * 8 + quad * 2 + e;
                        zc[j][e] = key < n ? __ldg(zh + key) : NAN;
                    }
#pragma unroll
                for (int i = 0; i < MR; i++)
#pragma unroll
                    for (int j = 0; j < 8; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int key = j0 + j * 8 + quad * 2 + (e & 1);
                            const int row = q0w + i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
                            const bool keep = key <= row && (key < mp.sink || row - key < mp.window ||
                                                             zc[j][e & 1] >= th[i][e >> 1]);
                            if (!keep) s[i][j][e] = -INFINITY;
                        }
            } else if (j0 + kBN - 1 > q0w) {
#pragma unroll
                for (int i = 0; i < MR; i++)
#pragma unroll
                    for (int j = 0; j < 8; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int key = j0 + j * 8 + quad * 2 + (e & 1);
                            const int row = q0w + i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
                            if (key > row) s[i][j][e] = -INFINITY;
                        }
            }
            if constexpr (KIND == KIND_NM) {
                if (mp.nm_n < M) {
                    if constexpr (SMEM_RANK) nm_select_smem<M>(s, mp.nm_n, lane, sS + warp * RW * kSS);
                    else nm_select_quad<M>(s, mp.nm_n, quad);
                }
            }
            if (counting) {
#pragma unroll
                for (int i = 0; i < MR; i++)
#pragma unroll
                    for (int j = 0; j < 8; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            kept += s[i][j][e] != -INFINITY && q0w + i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0) < n;
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
                        const float p0 = krn_ex2(fmaf(s[i][j][2 * hh], scale_log2, -use));
                        const float p1 = krn_ex2(fmaf(s[i][j][2 * hh + 1], scale_log2, -use));
                        sum += p0 + p1;
                        pf[i][j >> 1][(j & 1) * 2 + hh] = krn_pack_bf16(p0, p1);
                    }
                    l_s[i][hh] = l_s[i][hh] * al[i][hh] + sum;
                }
        }
        krn_cp_async_wait<0>();
        __syncthreads(); /* V_t landed; every warp is done reading K_t */
        const int nxt = next_tile(cur + 1);
        if (nxt < n_kt) load_tile<D, NT>(sK, nxt * kBN, k, a.kv_stride, n, tid);
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
                    const int mi = lane >> 3;
                    krn_ldmatrix_x4_trans(b0, b1, b2, b3,
                                          krn_smem_u32(sV + swz<D>(kk * 16 + (mi & 1) * 8 + (lane & 7), dp * 2 + (mi >> 1))));
#pragma unroll
                    for (int i = 0; i < MR; i++) {
                        krn_mma_bf16(o[i][2 * dp], pf[i][kk], b0, b1);
                        krn_mma_bf16(o[i][2 * dp + 1], pf[i][kk], b2, b3);
                    }
                }
            }
        }
        cur = nxt;
    }
    krn_cp_async_wait<0>();

    if (counting) {
#pragma unroll
        for (int off = 16; off; off >>= 1) kept += __shfl_xor_sync(0xffffffffu, kept, off);
        if (lane == 0 && kept) atomicAdd(mp.count + 1, (unsigned long long)kept);
        if (tid == 0) atomicAdd(mp.count, (unsigned long long)tiles);
    }

    bf16 *out = reinterpret_cast<bf16 *>(a.out) + h * D;
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
                    *reinterpret_cast<uint32_t *>(out + (size_t)row * a.out_stride + j * 8 + quad * 2) =
                        krn_pack_bf16(o[i][j][2 * hh] * inv, o[i][j][2 * hh + 1] * inv);
                if (a.lse && quad == 0)
                    a.lse[(size_t)h * n + row] = l > 0.f ? (m_s[i][hh] + log2f(l)) * ln2 : -INFINITY;
            }
        }
}

template <int D, int NW, int KIND, int M>
int launch_mask(const krn_attn_args *a, int h0, int nh, const mask_params &mp, cudaStream_t st, eng_err *err) {
    constexpr int BM = 32 * NW;
    const size_t smem = (size_t)(BM * D + 2 * kBN * D) * sizeof(bf16) +
                        (KIND == KIND_NM && M >= 16 ? (size_t)NW * 32 * kSS * sizeof(float) : 0);
    CUDA_RET(cudaFuncSetAttribute(mask_attn_kernel<D, NW, KIND, M>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)smem));
    const int n_mb = (a->n + BM - 1) / BM;
    if (n_mb > 65535) return eng_err_set(err, "mask attention: n = %d needs %d row blocks (grid limit 65535)", a->n, n_mb);
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)D);
    mask_attn_kernel<D, NW, KIND, M><<<dim3(nh, n_mb), NW * 32, smem, st>>>(*a, h0, mp, scale_log2);
    LAUNCH_RET("mask_attn_kernel");
    return 0;
}

/* ---- DMA mask building ---------------------------------------------------------------------- */

/* z[h][j] = ||v_j|| of head h's KV head: a double sum in index order of exact products, then a
 * correctly rounded sqrt, exactly as eng_dma_scores. Grid (ceil(n/128), nh), 128 threads. */
__global__ void vnorm_kernel(const bf16 *v, int kv_stride, int n, int d, int group, int h0, float *z) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x, h = h0 + (int)blockIdx.y;
    if (j >= n) return;
    const bf16 *vj = v + (size_t)j * kv_stride + (size_t)(h / group) * d;
    double s = 0;
    for (int c = 0; c < d; c++) {
        const double x = (double)__bfloat162float(vj[c]);
        s += x * x;
    }
    z[(size_t)h * n + j] = (float)sqrt(s);
}

/* Logit q . k_j in double, products in index order (the CPU's order: bit-identical). */
__device__ __forceinline__ double dot_qk(const float *q, const bf16 *kj, int d) {
    double s = 0;
    for (int c = 0; c < d; c++) s += (double)q[c] * (double)__bfloat162float(kj[c]);
    return s;
}

/* VS score, pass 1: for query row i = n - lq + blockIdx.y of head h0 + blockIdx.x, the max and the
 * exp-sum of its scaled logits over j <= i, into rowstat[h][r][2]. 256 threads. */
__global__ void vs_rows_kernel(const bf16 *q, const bf16 *k, int q_stride, int kv_stride, int n, int d, int group,
                               int h0, double scale, double *rowstat) {
    __shared__ float sq[128];
    __shared__ double red[8];
    const int h = h0 + (int)blockIdx.x, r = blockIdx.y, lq = min(n, kVsLast), i = n - lq + r, tid = threadIdx.x;
    const bf16 *kh = k + (size_t)(h / group) * d;
    for (int c = tid; c < d; c += blockDim.x) sq[c] = __bfloat162float(q[(size_t)i * q_stride + (size_t)h * d + c]);
    __syncthreads();
    double mx = -INFINITY;
    for (int j = tid; j <= i; j += blockDim.x) mx = fmax(mx, dot_qk(sq, kh + (size_t)j * kv_stride, d) * scale);
    for (int off = 16; off; off >>= 1) mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if ((tid & 31) == 0) red[tid >> 5] = mx;
    __syncthreads();
    mx = red[0];
    for (int w = 1; w < (int)blockDim.x / 32; w++) mx = fmax(mx, red[w]);
    __syncthreads();
    double sum = 0;
    for (int j = tid; j <= i; j += blockDim.x) sum += exp(dot_qk(sq, kh + (size_t)j * kv_stride, d) * scale - mx);
    for (int off = 16; off; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if ((tid & 31) == 0) red[tid >> 5] = sum;
    __syncthreads();
    if (tid == 0) {
        double t = red[0];
        for (int w = 1; w < (int)blockDim.x / 32; w++) t += red[w];
        double *st = rowstat + ((size_t)h * kVsLast + r) * 2;
        st[0] = mx, st[1] = t;
    }
}

/* VS score, pass 2: z_j = sum over the last lq queries i >= j, in order, of exp(logit - max) / sum
 * (eng_dma_scores' accumulation). Grid (nh, ceil(n/128)), 128 threads; the lq query rows in shared
 * memory as f32 (exact: bf16 widened). */
__global__ void vs_cols_kernel(const bf16 *q, const bf16 *k, int q_stride, int kv_stride, int n, int d, int group,
                               int h0, double scale, const double *rowstat, float *z) {
    __shared__ float sq[kVsLast * 128];
    __shared__ double st[kVsLast * 2];
    const int h = h0 + (int)blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x, lq = min(n, kVsLast), i0 = n - lq;
    for (int c = threadIdx.x; c < lq * d; c += blockDim.x)
        sq[c] = __bfloat162float(q[(size_t)(i0 + c / d) * q_stride + (size_t)h * d + c % d]);
    for (int c = threadIdx.x; c < lq * 2; c += blockDim.x) st[c] = rowstat[(size_t)h * kVsLast * 2 + c];
    __syncthreads();
    if (j >= n) return;
    const bf16 *kj = k + (size_t)j * kv_stride + (size_t)(h / group) * d;
    double acc = 0;
    for (int r = 0; r < lq; r++)
        if (j <= i0 + r) acc += exp(dot_qk(sq + r * d, kj, d) * scale - st[2 * r]) / st[2 * r + 1];
    z[(size_t)h * n + j] = (float)acc;
}

/* Min-heap sift-down (eng_dma.c's heap_down). */
__device__ void heap_down(float *hp, int sz, int i) {
    for (;;) {
        const int l = 2 * i + 1, r = l + 1;
        int m = i;
        if (l < sz && hp[l] < hp[m]) m = l;
        if (r < sz && hp[r] < hp[m]) m = r;
        if (m == i) return;
        const float t = hp[i];
        hp[i] = hp[m], hp[m] = t, i = m;
    }
}

__device__ __forceinline__ float nan_low(float x) { return isnan(x) ? -INFINITY : x; }

/* theta[h][i] = the keep-th largest of z[h][0..i] (-inf while i + 1 <= keep; NaN counts as -inf),
 * eng_dma_thresholds' values: the heap of the cap = min(keep, n) largest is built from the first
 * cap scores at once (Floyd), then each further score larger than the root replaces it. One warp
 * per head: 32 scores at a time are tested against the root (which only grows), and lane 0 inserts
 * the few that beat it in index order. The heap is in shared memory up to kHeapSmem entries, else
 * in heap_g[h][n]. Grid nh, 32 threads. */
__global__ void thresh_kernel(const float *z, int n, int keep, int h0, float *theta, float *heap_g) {
    extern __shared__ float sh[];
    const int h = h0 + (int)blockIdx.x, lane = threadIdx.x, cap = min(keep, n);
    const float *zh = z + (size_t)h * n;
    float *th = theta + (size_t)h * n, *hp = cap <= kHeapSmem ? sh : heap_g + (size_t)h * n;
    for (int i = lane; i < cap; i += 32) hp[i] = nan_low(zh[i]), th[i] = -INFINITY;
    __syncwarp();
    if (lane == 0)
        for (int p = cap / 2 - 1; p >= 0; p--) heap_down(hp, cap, p);
    __syncwarp();
    float root = hp[0];
    for (int base = cap; base < n; base += 32) {
        const int i = base + lane;
        const float x = i < n ? nan_low(zh[i]) : -INFINITY;
        const unsigned cand = __ballot_sync(0xffffffffu, i < n && x > root);
        if (!cand) {
            if (i < n) th[i] = root;
            continue;
        }
        if (lane == 0)
            for (int u = 0; u < 32 && base + u < n; u++) {
                if ((cand >> u) & 1u) {
                    const float y = nan_low(zh[base + u]);
                    if (y > hp[0]) {
                        hp[0] = y;
                        heap_down(hp, cap, 0);
                    }
                }
                th[base + u] = hp[0];
            }
        __syncwarp();
        root = hp[0];
        __syncwarp(); /* every lane has read the root before lane 0 changes the heap again */
    }
}

/* zmax[h][t] = max of z[h][64 t .. 64 t + 63] (clipped to n), NaN ignored, -inf when none (the
 * CPU's loop). Grid (ceil(n_kt/128), nh), 128 threads. */
__global__ void zmax_kernel(const float *z, int n, int h0, float *zmax) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x, h = h0 + (int)blockIdx.y, n_kt = (n + kBN - 1) / kBN;
    if (t >= n_kt) return;
    const float *zh = z + (size_t)h * n;
    float mx = -INFINITY;
    for (int j = t * kBN; j < t * kBN + kBN && j < n; j++)
        if (zh[j] > mx) mx = zh[j];
    zmax[(size_t)h * n_kt + t] = mx;
}

int check_args(const krn_attn_args *a, int h0, int nh, eng_err *err) {
    if (!a || !a->q || !a->k || !a->v || !a->out) return eng_err_set(err, "mask attention: NULL tensor");
    if (a->n <= 0) return eng_err_set(err, "mask attention: n = %d must be > 0", a->n);
    if (a->d != 64 && a->d != 128) return eng_err_set(err, "mask attention: head dim %d unsupported (64 or 128)", a->d);
    if (a->H <= 0 || a->Hkv <= 0 || a->H % a->Hkv)
        return eng_err_set(err, "mask attention: %d query heads not a multiple of %d KV heads", a->H, a->Hkv);
    if (a->q_stride % 8 || a->kv_stride % 8 || a->out_stride % 8 || a->q_stride < a->H * a->d ||
        a->kv_stride < a->Hkv * a->d || a->out_stride < a->H * a->d)
        return eng_err_set(err, "mask attention: strides must be multiples of 8 covering all heads");
    if (h0 < 0 || nh < 1 || h0 + nh > a->H || nh > 65535)
        return eng_err_set(err, "mask attention: heads [%d, %d) outside [0, %d)", h0, h0 + nh, a->H);
    return 0;
}

int check_ws(const krn_mask_ws *w, const krn_attn_args *a, eng_err *err) {
    if (!w || !w->z || !w->theta || !w->zmax) return eng_err_set(err, "dma: no mask storage");
    if (w->H < a->H || w->n < a->n)
        return eng_err_set(err, "dma: mask storage for %d heads x %d tokens, attention has %d x %d", w->H, w->n, a->H,
                           a->n);
    return 0;
}

} /* namespace */

extern "C" int krn_mask_ws_alloc(krn_mask_ws *w, int H, int n, eng_err *err) {
    *w = krn_mask_ws{};
    if (H <= 0 || n <= 0) return eng_err_set(err, "dma: bad mask storage shape H=%d n=%d", H, n);
    const size_t hn = (size_t)H * n, n_kt = (size_t)(n + kBN - 1) / kBN;
    w->H = H, w->n = n;
    CUDA_TRY(cudaMalloc((void **)&w->z, hn * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&w->theta, hn * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&w->heap, hn * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&w->zmax, (size_t)H * n_kt * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&w->rowstat, (size_t)H * kVsLast * 2 * sizeof(double)));
    CUDA_TRY(cudaMalloc((void **)&w->count, 2 * sizeof(unsigned long long)));
    CUDA_TRY(cudaMemset(w->count, 0, 2 * sizeof(unsigned long long)));
    return 0;
fail:
    krn_mask_ws_free(w);
    return -1;
}

extern "C" void krn_mask_ws_free(krn_mask_ws *w) {
    if (!w) return;
    cudaFree(w->z), cudaFree(w->theta), cudaFree(w->heap), cudaFree(w->zmax), cudaFree(w->rowstat);
    cudaFree(w->count);
    *w = krn_mask_ws{};
}

extern "C" int krn_dma_build(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_mask_ws *w,
                             cudaStream_t s, eng_err *err) {
    if (!p || p->kind != ENG_PAT_DMA) return eng_err_set(err, "dma build: not a dma pattern");
    if (eng_pattern_validate(p, err) || check_args(a, h0, nh, err) || check_ws(w, a, err)) return -1;
    const int n = a->n, d = a->d, group = a->H / a->Hkv;
    const bf16 *q = (const bf16 *)a->q, *k = (const bf16 *)a->k, *v = (const bf16 *)a->v;
    if (p->key_score == 0) {
        vnorm_kernel<<<dim3((n + 127) / 128, nh), 128, 0, s>>>(v, a->kv_stride, n, d, group, h0, w->z);
        LAUNCH_RET("vnorm_kernel");
    } else {
        const double scale = 1.0 / sqrt((double)d);
        const int lq = n < kVsLast ? n : kVsLast;
        vs_rows_kernel<<<dim3(nh, lq), 256, 0, s>>>(q, k, a->q_stride, a->kv_stride, n, d, group, h0, scale, w->rowstat);
        LAUNCH_RET("vs_rows_kernel");
        if ((n + 127) / 128 > 65535) return eng_err_set(err, "dma: n = %d too long for the VS score grid", n);
        vs_cols_kernel<<<dim3(nh, (n + 127) / 128), 128, 0, s>>>(q, k, a->q_stride, a->kv_stride, n, d, group, h0,
                                                                 scale, w->rowstat, w->z);
        LAUNCH_RET("vs_cols_kernel");
    }
    const int cap = p->keep < n ? p->keep : n;
    thresh_kernel<<<nh, 32, cap <= kHeapSmem ? (size_t)cap * sizeof(float) : 0, s>>>(w->z, n, p->keep, h0, w->theta,
                                                                                     w->heap);
    LAUNCH_RET("thresh_kernel");
    const int n_kt = (n + kBN - 1) / kBN;
    zmax_kernel<<<dim3((n_kt + 127) / 128, nh), 128, 0, s>>>(w->z, n, h0, w->zmax);
    LAUNCH_RET("zmax_kernel");
    return 0;
}

extern "C" int krn_attn_dma(const krn_attn_args *a, int h0, int nh, const krn_mask_ws *w, int sink, int window,
                            unsigned long long *count, cudaStream_t s, eng_err *err) {
    if (check_args(a, h0, nh, err) || check_ws(w, a, err)) return -1;
    if (sink < 0 || window < 0) return eng_err_set(err, "dma: sink %d / window %d must be >= 0", sink, window);
    if (krn_hattn_available()) /* the wgmma kernel (sm_90 cards); the same mask and counts */
        return krn_hattn_dma(a, h0, nh, w->z, w->theta, w->zmax, sink, window, count, s, err);
    mask_params mp = {w->z, w->theta, w->zmax, sink, window, 0, count};
    return a->d == 64 ? launch_mask<64, 2, KIND_DMA, 0>(a, h0, nh, mp, s, err)
                      : launch_mask<128, 2, KIND_DMA, 0>(a, h0, nh, mp, s, err);
}

extern "C" int krn_nm_supported(int nm_n, int nm_m) {
    if (nm_n < 1 || nm_m < 1 || nm_m > 64) return 0;
    return nm_n >= nm_m || (nm_m & (nm_m - 1)) == 0;
}

extern "C" int krn_attn_nm(const krn_attn_args *a, int h0, int nh, int nm_n, int nm_m, unsigned long long *count,
                           cudaStream_t s, eng_err *err) {
    if (check_args(a, h0, nh, err)) return -1;
    if (!krn_nm_supported(nm_n, nm_m))
        return eng_err_set(err, "nm %d:%d: the GPU kernel needs m a power of two <= 64 (or n >= m)", nm_n, nm_m);
    mask_params mp = {nullptr, nullptr, nullptr, 0, 0, nm_n, count};
    const int m = nm_n >= nm_m ? 2 : nm_m; /* n >= m keeps every key: any group size, no selection */
    mp.nm_n = nm_n >= nm_m ? 2 : nm_n;
    const bool d64 = a->d == 64;
    switch (m) {
    case 2: return d64 ? launch_mask<64, 4, KIND_NM, 2>(a, h0, nh, mp, s, err) : launch_mask<128, 4, KIND_NM, 2>(a, h0, nh, mp, s, err);
    case 4: return d64 ? launch_mask<64, 4, KIND_NM, 4>(a, h0, nh, mp, s, err) : launch_mask<128, 4, KIND_NM, 4>(a, h0, nh, mp, s, err);
    case 8: return d64 ? launch_mask<64, 4, KIND_NM, 8>(a, h0, nh, mp, s, err) : launch_mask<128, 4, KIND_NM, 8>(a, h0, nh, mp, s, err);
    case 16: return d64 ? launch_mask<64, 4, KIND_NM, 16>(a, h0, nh, mp, s, err) : launch_mask<128, 4, KIND_NM, 16>(a, h0, nh, mp, s, err);
    case 32: return d64 ? launch_mask<64, 4, KIND_NM, 32>(a, h0, nh, mp, s, err) : launch_mask<128, 4, KIND_NM, 32>(a, h0, nh, mp, s, err);
    default: return d64 ? launch_mask<64, 4, KIND_NM, 64>(a, h0, nh, mp, s, err) : launch_mask<128, 4, KIND_NM, 64>(a, h0, nh, mp, s, err);
    }
}

extern "C" int krn_mask_attend(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_mask_ws *w,
                               unsigned long long *count, cudaStream_t s, eng_err *err) {
    if (!p) return eng_err_set(err, "mask attention: no pattern");
    if (p->kind == ENG_PAT_NM) {
        if (eng_pattern_validate(p, err)) return -1;
        return krn_attn_nm(a, h0, nh, p->nm_n, p->nm_m, count, s, err);
    }
    if (p->kind != ENG_PAT_DMA)
        return eng_err_set(err, "mask attention: pattern %s is not dma or nm", eng_pattern_kind_name(p->kind));
    if (krn_dma_build(p, a, h0, nh, w, s, err)) return -1;
    return krn_attn_dma(a, h0, nh, w, p->n_init, p->n_local, count, s, err);
}

extern "C" int krn_mask_same(const eng_pattern *x, const eng_pattern *y) {
    if (!x || !y || x->kind != y->kind) return 0;
    if (x->kind == ENG_PAT_DMA)
        return x->keep == y->keep && x->n_init == y->n_init && x->n_local == y->n_local && x->key_score == y->key_score;
    if (x->kind == ENG_PAT_NM) return x->nm_n == y->nm_n && x->nm_m == y->nm_m;
    return 0;
}

extern "C" int krn_dma_mask_download(const krn_mask_ws *w, int h, int n, int sink, int window, eng_head_mask *m,
                                     cudaStream_t s, eng_err *err) {
    memset(m, 0, sizeof *m);
    if (!w || h < 0 || h >= w->H || n < 1 || n > w->n)
        return eng_err_set(err, "dma download: head %d / n %d outside the mask storage", h, n);
    const int n_kt = (n + kBN - 1) / kBN;
    m->kind = ENG_MASK_DMA, m->n = n, m->sink = sink, m->window = window;
    m->z = (float *)malloc(sizeof(float) * (size_t)n);
    m->theta = (float *)malloc(sizeof(float) * (size_t)n);
    m->zmax = (float *)malloc(sizeof(float) * (size_t)n_kt);
    cudaError_t e = cudaErrorMemoryAllocation;
    if (m->z && m->theta && m->zmax) {
        e = cudaMemcpyAsync(m->z, w->z + (size_t)h * n, sizeof(float) * n, cudaMemcpyDeviceToHost, s);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(m->theta, w->theta + (size_t)h * n, sizeof(float) * n, cudaMemcpyDeviceToHost, s);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(m->zmax, w->zmax + (size_t)h * n_kt, sizeof(float) * n_kt, cudaMemcpyDeviceToHost, s);
        if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    }
    if (e != cudaSuccess) {
        eng_dma_mask_free(m);
        return eng_err_set(err, "dma download: %s", cudaGetErrorString(e));
    }
    return 0;
}
