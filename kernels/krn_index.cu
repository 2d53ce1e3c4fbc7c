/* krn_index: GPU index builders mirroring engine/eng_pattern.c (the CPU reference) step by step so
 * that index content matches it wherever float rounding leaves no near-tie:
 *   VS: S = scale * Q[-64:] K^T (cuBLAS, fp32) -> per-row max / sum -> vertical and slash scores
 *       (double sums over the 64 rows in row order, as the CPU) -> radix top-k (ties: lower index)
 *       -> MInference's convert_vertical_slash_indexes per (head, row block), CPU departure included.
 *   BS: 64-token mean pooling (float, token order), q_pool . k_pool in double, radix top-k of the
 *       earlier blocks (ties: later block) + the diagonal.
 *   A-shape / dense: closed-form blocks (+ band for A-shape).
 * Tests: tests/gpu_index.c (against eng_pattern_build); timings: attnscope bench. */
#include "krn_index.h"

#include "krn_common.cuh"

#include <cublas_v2.h>
#include <math.h>
#include <stdlib.h>

#define VS_SINKS 30
#define VS_LOCAL 100
#define VS_MIN_V 30
#define VS_MIN_S 50
#define VS_LAST_Q 64
#define B64 64

struct krn_index_ws {
    cublasHandle_t blas;
    void *buf;
    size_t cap;
};

namespace {

#define BLAS_TRY(stmt)                                                                      \
    do {                                                                                    \
        cublasStatus_t s_ = (stmt);                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                  \
            eng_err_set(err, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #stmt, (int)s_); \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

/* Order-preserving map of a double onto unsigned 64-bit keys (larger double -> larger key). */
__device__ __forceinline__ unsigned long long dkey(double x) {
    x += 0.0; /* -0.0 -> +0.0: the CPU's comparison treats them as equal */
    unsigned long long u = (unsigned long long)__double_as_longlong(x);
    return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

/* Exclusive prefix sum over the CTA (NT threads); sh holds NT/32 + 1 ints. Returns the total in *tot. */
template <int NT> __device__ int cta_excl_scan(int v, int *sh, int *tot) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) sh[w] = x;
    __syncthreads();
    if (w == 0) {
        int t = lane < NT / 32 ? sh[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o) t += y;
        }
        if (lane < NT / 32) sh[lane] = t; /* inclusive warp totals */
    }
    __syncthreads();
    int base = w ? sh[w - 1] : 0;
    *tot = sh[NT / 32 - 1];
    __syncthreads();
    return base + x - v;
}

/* The k largest of sc[0..L) by the CPU's rule (score descending; ties: lower index first, or
 * higher index first when tie_high), written in ascending index order to out[0..k) (or in
 * descending order when reverse). Parallel radix select: a min/max reduction skips the key bits
 * every score shares (scores of one row share sign and exponent bits, which made the old 8-pass
 * select pile every key into one histogram bin), then 8-bit digits from the highest differing bit
 * with warp-aggregated histogram updates (__match_any_sync) and a parallel bin search (scan over
 * the 256 bins), stopping as soon as the chosen bin is taken whole; one ordered pass writes out.
 * NT >= 256. Keys of +0.0 and -0.0 compare equal (as the CPU's comparison). */
template <int NT>
__device__ void cta_topk(const double *sc, int L, int k, bool tie_high, int *out, bool reverse) {
    static_assert(NT >= 256 && NT % 32 == 0, "cta_topk needs >= 256 threads");
    __shared__ unsigned int hist[256];
    __shared__ int scan_sh[NT / 32 + 1];
    __shared__ unsigned long long s_mm[2][NT / 32];
    __shared__ unsigned long long s_prefix;
    __shared__ int s_need, s_done;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    if (k <= 0) return;
    if (k >= L) {
        for (int i = tid; i < L; i += NT) out[reverse ? L - 1 - i : i] = i;
        return;
    }
    /* min and max key -> the common prefix of every key */
    unsigned long long mn = ~0ull, mx = 0;
    for (int i = tid; i < L; i += NT) {
        unsigned long long u = dkey(sc[i]);
        mn = u < mn ? u : mn;
        mx = u > mx ? u : mx;
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) {
        unsigned long long a = __shfl_xor_sync(0xffffffffu, mn, o), b = __shfl_xor_sync(0xffffffffu, mx, o);
        mn = a < mn ? a : mn;
        mx = b > mx ? b : mx;
    }
    if (lane == 0) s_mm[0][w] = mn, s_mm[1][w] = mx;
    __syncthreads();
    mn = s_mm[0][0], mx = s_mm[1][0];
    for (int i = 1; i < NT / 32; i++) {
        mn = s_mm[0][i] < mn ? s_mm[0][i] : mn;
        mx = s_mm[1][i] > mx ? s_mm[1][i] : mx;
    }
    int pos = mn == mx ? -1 : 63 - __clzll((long long)(mn ^ mx)); /* highest differing bit */
    unsigned long long mask = pos >= 63 ? 0ull : ~0ull << (pos + 1);
    unsigned long long prefix = mn & mask;
    int need = k;
    while (pos >= 0) {
        const int wd = pos + 1 < 8 ? pos + 1 : 8, shift = pos + 1 - wd;
        const unsigned int dmask = (1u << wd) - 1u;
        for (int i = tid; i < 256; i += NT) hist[i] = 0;
        __syncthreads();
        for (int base = 0; base < L; base += NT) { /* warp-uniform trip count for __match_any_sync */
            const int i = base + tid;
            int dg = -1;
            if (i < L) {
                unsigned long long u = dkey(sc[i]);
                if ((u & mask) == prefix) dg = (int)((u >> shift) & dmask);
            }
            const unsigned peers = __match_any_sync(0xffffffffu, dg);
            if (dg >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[dg], (unsigned)__popc(peers));
        }
        __syncthreads();
        /* bins in descending digit order: thread t looks at digit 255 - t */
        const int dig = 255 - tid;
        const int c = (tid < 256 && dig <= (int)dmask) ? (int)hist[dig] : 0;
        int tot;
        const int before = cta_excl_scan<NT>(c, scan_sh, &tot);
        if (c > 0 && before < need && need <= before + c) {
            s_need = need - before;
            s_prefix = prefix | ((unsigned long long)dig << shift);
            s_done = need - before == c; /* the whole bin is taken: no further digit matters */
        }
        __syncthreads();
        prefix = s_prefix;
        need = s_need;
        mask |= (unsigned long long)dmask << shift;
        pos -= wd;
        const int done = s_done;
        __syncthreads();
        if (done) break;
    }
    /* Keys whose masked value is > prefix are in; `need` of those equal to it (all of them when the
     * loop stopped early) are taken by the tie rule. */
    const int chunk = (L + NT - 1) / NT, i0 = min(L, tid * chunk), i1 = min(L, i0 + chunk);
    int gt = 0, eq = 0;
    for (int i = i0; i < i1; i++) {
        unsigned long long u = dkey(sc[i]) & mask;
        gt += u > prefix;
        eq += u == prefix;
    }
    int eq_tot, sel_tot;
    int eq_before = cta_excl_scan<NT>(eq, scan_sh, &eq_tot);
    int take;
    if (!tie_high) take = max(0, min(eq, need - eq_before));
    else take = max(0, min(eq, need - (eq_tot - eq_before - eq)));
    int p = cta_excl_scan<NT>(gt + take, scan_sh, &sel_tot);
    int skip = tie_high ? eq - take : 0; /* equal keys to pass over before taking (tie_high) */
    for (int i = i0; i < i1; i++) {
        unsigned long long u = dkey(sc[i]) & mask;
        bool s = u > prefix;
        if (u == prefix) {
            if (skip > 0) skip--;
            else if (take > 0) {
                take--;
                s = true;
            }
        }
        if (s) {
            out[reverse ? k - 1 - p : p] = i;
            p++;
        }
    }
}

/* ---- vertical-slash ------------------------------------------------------------------------ */

/* Per (head, estimate row r): max and 1/sum of exp over keys j <= qi (S already scaled). */
__global__ void vs_rowstats(const float *S, int n, int last_q, float *mx_out, float *inv_out) {
    const int row = blockIdx.x, r = row % last_q, qi = n - last_q + r;
    const float *s = S + (size_t)row * n;
    __shared__ float red[32];
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= qi; j += blockDim.x) m = fmaxf(m, s[j]);
    for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        m = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : -INFINITY;
        for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if (threadIdx.x == 0) red[0] = m;
    }
    __syncthreads();
    m = red[0];
    __syncthreads();
    float sum = 0.f;
    for (int j = threadIdx.x; j <= qi; j += blockDim.x) sum += expf(s[j] - m);
    for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < (int)blockDim.x / 32; w++) t += red[w];
        mx_out[row] = m;
        inv_out[row] = 1.0f / t;
    }
}

/* Thread per key j / offset o = j: vertical[j] = sum_r A[r][j], slash[o] = sum_r A[r][qi_r - o],
 * double sums in row order; sinks and local offsets forced to +inf. */
__global__ void vs_scores(const float *S, int n, int last_q, const float *mx, const float *inv, double *vert,
                          double *slash) {
    const int hh = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const float *s = S + (size_t)hh * last_q * n;
    const float *m = mx + hh * last_q, *iv = inv + hh * last_q;
    double v = 0, sl = 0;
    for (int r = 0; r < last_q; r++) {
        int qi = n - last_q + r;
        if (j <= qi) v += (double)(expf(s[(size_t)r * n + j] - m[r]) * iv[r]);
        int kj = qi - j; /* the key on offset j in row r */
        if (kj >= 0) sl += (double)(expf(s[(size_t)r * n + kj] - m[r]) * iv[r]);
    }
    vert[(size_t)hh * n + j] = j < VS_SINKS ? INFINITY : v;
    slash[(size_t)hh * n + j] = j < VS_LOCAL ? INFINITY : sl;
}

/* blockIdx.y 0: vertical top-kv (ascending keys); 1: slash top-ks (descending offsets). */
template <int NT>
__global__ void vs_topk(const double *vert, const double *slash, int n, int kv, int ks, int *vsel, int *ssel) {
    const int hh = blockIdx.x;
    if (blockIdx.y == 0) cta_topk<NT>(vert + (size_t)hh * n, n, kv, false, vsel + (size_t)hh * kv, false);
    else cta_topk<NT>(slash + (size_t)hh * n, n, ks, false, ssel + (size_t)hh * ks, true);
}

/* engine/eng_pattern.c vs_convert_row, one thread per (head, row block). */
__global__ void vs_convert(int n, int nh, int h0, int kv, int ks, const int *vsel, const int *ssel, krn_index_dev ix) {
    const int n_rb = ix.n_rb;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= nh * n_rb) return;
    const int hh = t / n_rb, rb = t % n_rb;
    const int *v = vsel + (size_t)hh * kv, *s = ssel + (size_t)hh * ks;
    const size_t row = (size_t)(h0 + hh) * n_rb + rb;
    int *bo = ix.block_offset + row * ix.max_blocks, *ci = ix.column_index + row * ix.max_cols;
    const int B = B64, m0 = rb * B, last = min(m0 + B, n) - 1, end_m = m0 + B;
    int nb = 0, nc = 0, iv = 0, is = 0;
    int v_idx = iv < kv ? v[iv++] : end_m + B;
    /* offsets are descending: binary-search the first one < end_m instead of walking to it */
    int lo = 0, hi = ks;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (s[mid] >= end_m) lo = mid + 1;
        else hi = mid;
    }
    int s_idx;
    if (lo < ks) {
        is = lo + 1;
        s_idx = s[lo];
    } else {
        is = ks;
        s_idx = ks ? s[ks - 1] : -1;
    }
    s_idx = s_idx >= end_m ? end_m + B : (end_m - s_idx > B ? end_m - s_idx : B);
    int range_start = s_idx - B, range_end = s_idx;
    bool overflow = false;
    for (;;) {
        if (v_idx < range_end) {
            if (v_idx < range_start) {
                if (nc < ix.max_cols) ci[nc] = v_idx;
                else overflow = true;
                nc++;
            }
            v_idx = iv < kv ? v[iv++] : end_m + B;
        } else {
            bool done = false;
            if (is < ks) {
                int e = end_m - s[is++];
                s_idx = e > B ? e : B;
            } else {
                done = true;
            }
            if (done || s_idx > range_end + B) {
                for (int o = range_start; o < range_end && o <= last; o += B) {
                    if (nb < ix.max_blocks) bo[nb] = o;
                    else overflow = true;
                    nb++;
                }
                if (done) break;
                range_start = s_idx - B;
                range_end = s_idx;
            } else if (s_idx > range_end) {
                range_end += B;
            }
        }
    }
    /* Capacities come from krn_index_capacity's bound, so overflow cannot happen; if it did, the
     * row computes nothing rather than reading past its arrays. */
    ix.block_count[row] = overflow ? 0 : nb;
    ix.column_count[row] = overflow ? 0 : nc;
}

/* ---- block-sparse -------------------------------------------------------------------------- */

/* Mean over each 64-token block, float sums in token order (as the CPU). grid (n_rb, heads).
 * Layout: pool[(hh * n_rb + b) * d + c], or transposed pool[(hh * d + c) * n_rb + b] (keys, so
 * that bs_scores' copies of a key tile read consecutive addresses). */
__global__ void bs_pool(const __nv_bfloat16 *x, int stride, int head0, int d, int n, float *pool, int transposed) {
    const int b = blockIdx.x, hh = blockIdx.y, n_rb = gridDim.x;
    const int t0 = b * B64, t1 = min(t0 + B64, n);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.f;
        for (int t = t0; t < t1; t++) acc += __bfloat162float(x[(size_t)t * stride + (size_t)(head0 + hh) * d + c]);
        const float m = acc / (float)(t1 - t0);
        if (transposed) pool[((size_t)hh * d + c) * n_rb + b] = m;
        else pool[((size_t)hh * n_rb + b) * d + c] = m;
    }
}

/* The scores of all causal block pairs as a tiled product kept in global memory, then one CTA per
 * (row block, head) selects from its row. (The first version, one CTA per row block re-reading the
 * whole K pool and holding its row of scores in shared memory, took 219 ms at 512K and 1.57 s at 1M
 * on the H100; this one 42.7 ms and 174.5 ms, same content: bench/RESULTS.md.)
 *
 * bs_scores: one CTA per 64 x 64 tile (query blocks x key blocks) at or below the diagonal
 * (blockIdx.x enumerates them row by row), blockIdx.y = head of the chunk [hh0, hh0 + gridDim.y);
 * pooled q and k staged as doubles 32 dims at a time; each thread owns 4 x 4 scores, each summed
 * over c = 0..d-1 in order with double fma of the float pools: the CPU's sums bit for bit. Output:
 * triangular rows sc[y][rb (rb - 1) / 2 + kb] for kb < rb. */
__global__ void __launch_bounds__(256) bs_scores(const float *qp, const float *kpT, int d, int n_rb, int h0, int hh0,
                                                 int g, double *sc) {
    __shared__ double qs[32][64], ks[32][64];
    const long long x = blockIdx.x;
    int ti = (int)((sqrt(8.0 * (double)x + 1.0) - 1.0) * 0.5); /* x = ti (ti + 1) / 2 + tj, tj <= ti */
    while ((long long)ti * (ti + 1) / 2 > x) ti--;
    while ((long long)(ti + 1) * (ti + 2) / 2 <= x) ti++;
    const int tj = (int)(x - (long long)ti * (ti + 1) / 2);
    const int rb0 = ti * 64, kb0 = tj * 64, hh = hh0 + (int)blockIdx.y, hk = (h0 + hh) / g;
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const float *q = qp + (size_t)hh * n_rb * d, *kt = kpT + (size_t)hk * d * n_rb;
    double acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0;
    for (int c0 = 0; c0 < d; c0 += 32) {
        __syncthreads();
        for (int e = tid; e < 32 * 64; e += 256) {
            const int c = e & 31, i = e >> 5; /* q: consecutive threads read consecutive dims of a row */
            qs[c][i] = rb0 + i < n_rb && c0 + c < d ? (double)q[(size_t)(rb0 + i) * d + c0 + c] : 0.0;
            const int j = e & 63, c2 = e >> 6; /* k (transposed): consecutive threads, consecutive blocks */
            ks[c2][j] = kb0 + j < n_rb && c0 + c2 < d ? (double)kt[(size_t)(c0 + c2) * n_rb + kb0 + j] : 0.0;
        }
        __syncthreads();
        const int cn = min(32, d - c0);
        for (int c = 0; c < cn; c++) {
            double a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = qs[c][ty + 16 * i], b[i] = ks[c][tx + 16 * i];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fma(a[i], b[j], acc[i][j]);
        }
    }
    const size_t tri = (size_t)n_rb * (n_rb - 1) / 2;
    double *out = sc + (size_t)blockIdx.y * tri;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int rb = rb0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int kb = kb0 + tx + 16 * j;
            if (rb < n_rb && kb < rb) out[(size_t)rb * (rb - 1) / 2 + kb] = acc[i][j];
        }
    }
}

/* Per (row block, head of the chunk): top kk-1 of its triangular score row (ties: later block),
 * offsets ascending, then the diagonal. grid (n_rb, heads in the chunk). */
template <int NT>
__global__ void __launch_bounds__(NT) bs_select(const double *sc, int kk, int h0, int hh0, krn_index_dev ix) {
    const int rb = blockIdx.x, n_rb = ix.n_rb;
    const size_t tri = (size_t)n_rb * (n_rb - 1) / 2;
    const double *row = sc + (size_t)blockIdx.y * tri + (size_t)rb * (rb - 1) / 2;
    const int take = min(kk - 1, rb);
    const size_t r = (size_t)(h0 + hh0 + (int)blockIdx.y) * n_rb + rb;
    int *bo = ix.block_offset + r * ix.max_blocks;
    cta_topk<NT>(row, rb, take, true, bo, false);
    __syncthreads();
    for (int i = threadIdx.x; i < take; i += NT) bo[i] *= B64;
    if (threadIdx.x == 0) {
        bo[take] = rb * B64;
        ix.block_count[r] = take + 1;
        ix.column_count[r] = 0;
    }
}

/* ---- A-shape and dense (closed form, one thread per (head, row block)) ----------------------- */

__global__ void ashape_rows(int n, int nh, int h0, int n_init, int n_local, krn_index_dev ix) {
    const int n_rb = ix.n_rb, t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= nh * n_rb) return;
    const int hh = t / n_rb, rb = t % n_rb;
    const size_t row = (size_t)(h0 + hh) * n_rb + rb;
    int *bo = ix.block_offset + row * ix.max_blocks, nb = 0;
    const int m0 = rb * B64, last = min(m0 + B64, n) - 1;
    long long ls = (long long)m0 - n_local + 1;
    if (ls < 0) ls = 0;
    long long se = n_init < last + 1 ? n_init : last + 1;
    long long se_blocks = (se + B64 - 1) / B64 * B64;
    if (se_blocks >= ls) {
        for (long long o = 0; o <= last && nb < ix.max_blocks; o += B64) bo[nb++] = (int)o;
    } else {
        for (long long o = 0; o < se && nb < ix.max_blocks; o += B64) bo[nb++] = (int)o;
        for (long long o = ls; o <= last && nb < ix.max_blocks; o += B64) bo[nb++] = (int)o;
    }
    ix.block_count[row] = nb;
    ix.column_count[row] = 0;
    if (rb == 0) {
        ix.band[2 * (h0 + hh)] = n_init;
        ix.band[2 * (h0 + hh) + 1] = n_local;
    }
}

__global__ void dense_rows(int nh, int h0, krn_index_dev ix) {
    const int n_rb = ix.n_rb, t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= nh * n_rb) return;
    const int hh = t / n_rb, rb = t % n_rb;
    const size_t row = (size_t)(h0 + hh) * n_rb + rb;
    int *bo = ix.block_offset + row * ix.max_blocks;
    for (int b = 0; b <= rb && b < ix.max_blocks; b++) bo[b] = b * B64;
    ix.block_count[row] = min(rb + 1, ix.max_blocks);
    ix.column_count[row] = 0;
    if (rb == 0) ix.band[2 * (h0 + hh)] = ix.band[2 * (h0 + hh) + 1] = 0;
}

/* One thread per (head, row block): entries computed, as eng_index_count_rb. */
__global__ void count_rows(int H, krn_index_dev ix, unsigned long long *total) {
    const int n_rb = ix.n_rb, t = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long c = 0;
    if (t < H * n_rb) {
        const int h = t / n_rb, rb = t % n_rb, n = ix.n;
        const size_t row = (size_t)h * n_rb + rb;
        const int m0 = rb * B64, last = min(m0 + B64, n) - 1, sink = ix.band[2 * h], win = ix.band[2 * h + 1];
        const int *bo = ix.block_offset + row * ix.max_blocks;
        for (int b = 0; b < ix.block_count[row]; b++) {
            const int s = bo[b];
            for (int q = m0; q <= last; q++) {
                int hi = min(q, s + B64 - 1); /* keys s..hi are causal */
                if (hi < s) continue;
                int cnt = hi - s + 1;
                if (win > 0) { /* drop keys k >= sink with q - k >= win, i.e. k in [sink, q - win] */
                    int lo2 = max(s, sink), hi2 = min(hi, q - win);
                    if (hi2 >= lo2) cnt -= hi2 - lo2 + 1;
                }
                c += cnt;
            }
        }
        c += (unsigned long long)ix.column_count[row] * (last - m0 + 1);
    }
    for (int o = 16; o; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    if ((threadIdx.x & 31) == 0 && c) atomicAdd(total, c);
}

int ws_reserve(krn_index_ws *ws, size_t bytes, eng_err *err) {
    if (bytes <= ws->cap) return 0;
    cudaFree(ws->buf);
    ws->buf = nullptr;
    ws->cap = 0;
    CUDA_RET(cudaMalloc(&ws->buf, bytes));
    ws->cap = bytes;
    return 0;
}

size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* Block-sparse scores: bytes of one head's triangle, and how many of nh heads one chunk holds
 * within the vertical-slash estimate's scratch (H x 64 x n floats, which the memory estimates
 * already hold), at least one. */
size_t bs_head_bytes(int n) {
    const size_t n_rb = ((size_t)n + B64 - 1) / B64;
    return n_rb * (n_rb - 1) / 2 * sizeof(double);
}
size_t bs_chunk_heads(int H, int n, int nh) {
    const size_t per_head = bs_head_bytes(n), budget = (size_t)H * 64 * (size_t)n * sizeof(float);
    size_t hcs = per_head ? budget / per_head : (size_t)nh;
    return hcs < 1 ? 1 : hcs > (size_t)nh ? (size_t)nh : hcs;
}

void vs_budgets(const eng_pattern *p, int n, int *kv, int *ks) {
    *kv = p->vertical > VS_MIN_V ? p->vertical : VS_MIN_V;
    *ks = p->slash > VS_MIN_S ? p->slash : VS_MIN_S;
    if (*kv > n) *kv = n;
    if (*ks > n) *ks = n;
}

} /* namespace */

extern "C" size_t krn_index_bs_ws_bytes(int n, int H, int Hkv, int d) {
    const size_t n_rb = ((size_t)n + B64 - 1) / B64;
    return align256((size_t)H * n_rb * d * sizeof(float)) + align256((size_t)Hkv * n_rb * d * sizeof(float)) +
           bs_chunk_heads(H, n, H) * bs_head_bytes(n) + 8;
}

extern "C" int krn_index_count_add(const krn_index_dev *ix, int H, unsigned long long *total, cudaStream_t st,
                                   eng_err *err) {
    const int rows = H * ix->n_rb;
    if (rows <= 0) return 0;
    count_rows<<<(rows + 127) / 128, 128, 0, st>>>(H, *ix, total);
    LAUNCH_RET("count_rows");
    return 0;
}

extern "C" int krn_index_count(const krn_index_dev *ix, int H, long long *pairs, cudaStream_t st, eng_err *err) {
    unsigned long long *d = nullptr, h = 0;
    CUDA_TRY(cudaMalloc((void **)&d, sizeof *d));
    CUDA_TRY(cudaMemsetAsync(d, 0, sizeof *d, st));
    if (krn_index_count_add(ix, H, d, st, err)) goto fail;
    CUDA_TRY(cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, st));
    CUDA_TRY(cudaStreamSynchronize(st));
    cudaFree(d);
    *pairs = (long long)h;
    return 0;
fail:
    cudaFree(d);
    return -1;
}

extern "C" int krn_index_ws_create(krn_index_ws **out, eng_err *err) {
    krn_index_ws *ws = (krn_index_ws *)calloc(1, sizeof *ws);
    *out = nullptr;
    if (!ws) return eng_err_set(err, "index workspace: out of host memory");
    BLAS_TRY(cublasCreate(&ws->blas));
    *out = ws;
    return 0;
fail:
    free(ws);
    return -1;
}

extern "C" void krn_index_ws_free(krn_index_ws *ws) {
    if (!ws) return;
    if (ws->blas) cublasDestroy(ws->blas);
    cudaFree(ws->buf);
    free(ws);
}

extern "C" void krn_index_capacity(const eng_pattern *p, int n, int *max_blocks, int *max_cols) {
    const int n_rb = (n + B64 - 1) / B64;
    *max_cols = 0;
    switch (p ? p->kind : ENG_PAT_DENSE) {
    case ENG_PAT_ASHAPE: {
        long long cap = ((long long)p->n_init + B64 - 1) / B64 + ((long long)p->n_local + B64 - 1) / B64 + 2;
        *max_blocks = (int)(cap < n_rb ? cap : n_rb);
        break;
    }
    case ENG_PAT_VS: {
        int kv, ks;
        vs_budgets(p, n, &kv, &ks);
        *max_blocks = ks < n_rb + 1 ? ks : n_rb + 1; /* disjoint 64-wide blocks starting < end_m */
        *max_cols = kv;
        break;
    }
    case ENG_PAT_BS: *max_blocks = p->topk < n_rb ? p->topk : n_rb; break;
    default: *max_blocks = n_rb; break;
    }
}

extern "C" int krn_index_build(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_index_dev *ix,
                               krn_index_ws *ws, cudaStream_t st, eng_err *err) {
    const int n = a->n, d = a->d, n_rb = (n + B64 - 1) / B64, g = a->H / a->Hkv;
    int need_b, need_c;
    krn_index_capacity(p, n, &need_b, &need_c);
    if (h0 < 0 || nh <= 0 || h0 + nh > a->H) return eng_err_set(err, "index build: heads [%d, %d) outside %d", h0, h0 + nh, a->H);
    if (ix->n != n || ix->n_rb != n_rb) return eng_err_set(err, "index build: index for n = %d, tensors n = %d", ix->n, n);
    if (ix->max_blocks < need_b || ix->max_cols < need_c)
        return eng_err_set(err, "index build: capacity %d blocks / %d columns, pattern needs %d / %d", ix->max_blocks,
                           ix->max_cols, need_b, need_c);
    const int thr = 128, grid_rows = (nh * n_rb + thr - 1) / thr;
    const eng_pat_kind kind = p ? p->kind : ENG_PAT_DENSE;
    if (kind == ENG_PAT_DENSE) {
        dense_rows<<<grid_rows, thr, 0, st>>>(nh, h0, *ix);
        LAUNCH_RET("dense_rows");
        return 0;
    }
    if (kind == ENG_PAT_ASHAPE) {
        ashape_rows<<<grid_rows, thr, 0, st>>>(n, nh, h0, p->n_init, p->n_local, *ix);
        LAUNCH_RET("ashape_rows");
        return 0;
    }
    CUDA_RET(cudaMemsetAsync(ix->band + 2 * h0, 0, 2 * (size_t)nh * sizeof(int), st));
    if (kind == ENG_PAT_BS) {
        if (p->topk < 1) return eng_err_set(err, "bs: topk %d must be >= 1", p->topk);
        const int kk = p->topk < n_rb ? p->topk : n_rb;
        const int hk0 = h0 / g, hk1 = (h0 + nh - 1) / g + 1, nkv = hk1 - hk0;
        size_t qb = align256((size_t)nh * n_rb * d * sizeof(float));
        size_t kb = align256((size_t)a->Hkv * n_rb * d * sizeof(float));
        /* The scores of hcs heads at a time in global memory (triangular rows). */
        const size_t per_head = bs_head_bytes(n), hcs = bs_chunk_heads(a->H, n, nh);
        if (ws_reserve(ws, qb + kb + hcs * per_head + 8, err)) return -1;
        float *qp = (float *)ws->buf, *kp = (float *)((char *)ws->buf + qb);
        bs_pool<<<dim3(n_rb, nh), 128, 0, st>>>((const __nv_bfloat16 *)a->q, a->q_stride, h0, d, n, qp, 0);
        LAUNCH_RET("bs_pool q");
        /* K pools (transposed) stored at their absolute KV head index so bs_scores addresses hk directly. */
        bs_pool<<<dim3(n_rb, nkv), 128, 0, st>>>((const __nv_bfloat16 *)a->k, a->kv_stride, hk0, d, n,
                                                kp + (size_t)hk0 * n_rb * d, 1);
        LAUNCH_RET("bs_pool k");
        double *sc = (double *)((char *)ws->buf + qb + kb);
        const long long tiles = (long long)((n_rb + 63) / 64) * ((n_rb + 63) / 64 + 1) / 2;
        for (int c0 = 0; c0 < nh; c0 += (int)hcs) {
            const int hc = nh - c0 < (int)hcs ? nh - c0 : (int)hcs;
            if (per_head) {
                bs_scores<<<dim3((unsigned)tiles, hc), 256, 0, st>>>(qp, kp, d, n_rb, h0, c0, g, sc);
                LAUNCH_RET("bs_scores");
            }
            bs_select<256><<<dim3(n_rb, hc), 256, 0, st>>>(sc, kk, h0, c0, *ix);
            LAUNCH_RET("bs_select");
        }
        return 0;
    }
    if (kind != ENG_PAT_VS) return eng_err_set(err, "index build: unknown pattern kind %d", (int)kind);

    int kv, ks;
    vs_budgets(p, n, &kv, &ks);
    const int last_q = n < VS_LAST_Q ? n : VS_LAST_Q;
    size_t sb = align256((size_t)nh * last_q * n * sizeof(float));
    size_t mb = align256((size_t)nh * last_q * sizeof(float));
    size_t vb = align256((size_t)nh * n * sizeof(double));
    size_t ib = align256((size_t)nh * (kv + ks) * sizeof(int));
    if (ws_reserve(ws, sb + 2 * mb + 2 * vb + ib, err)) return -1;
    char *w = (char *)ws->buf;
    float *S = (float *)w, *mx = (float *)(w + sb), *inv = (float *)(w + sb + mb);
    double *vert = (double *)(w + sb + 2 * mb), *slash = (double *)(w + sb + 2 * mb + vb);
    int *vsel = (int *)(w + sb + 2 * mb + 2 * vb), *ssel = vsel + (size_t)nh * kv;
    const float scale = 1.0f / sqrtf((float)d), zero = 0.f;
    {
        /* S (per head: last_q x n row-major) = scale * Q_last K^T; column-major view: S^T = K Q^T. */
        BLAS_TRY(cublasSetStream(ws->blas, st));
        for (int hh = 0; hh < nh; hh++) {
            const int h = h0 + hh;
            const __nv_bfloat16 *qb = (const __nv_bfloat16 *)a->q + (size_t)(n - last_q) * a->q_stride + (size_t)h * d;
            const __nv_bfloat16 *kb = (const __nv_bfloat16 *)a->k + (size_t)(h / g) * d;
            BLAS_TRY(cublasGemmEx(ws->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, last_q, d, &scale, kb, CUDA_R_16BF,
                                  a->kv_stride, qb, CUDA_R_16BF, a->q_stride, &zero, S + (size_t)hh * last_q * n,
                                  CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
    }
    vs_rowstats<<<nh * last_q, 256, 0, st>>>(S, n, last_q, mx, inv);
    LAUNCH_RET("vs_rowstats");
    vs_scores<<<dim3((n + 255) / 256, nh), 256, 0, st>>>(S, n, last_q, mx, inv, vert, slash);
    LAUNCH_RET("vs_scores");
    vs_topk<1024><<<dim3(nh, 2), 1024, 0, st>>>(vert, slash, n, kv, ks, vsel, ssel);
    LAUNCH_RET("vs_topk");
    vs_convert<<<grid_rows, thr, 0, st>>>(n, nh, h0, kv, ks, vsel, ssel, *ix);
    LAUNCH_RET("vs_convert");
    return 0;
fail:
    return -1;
}

extern "C" int krn_index_vs_from_lines(const int *vsel, int kv, const int *ssel, int ks, int h0, int nh,
                                       krn_index_dev *ix, cudaStream_t st, eng_err *err) {
    const int n = ix->n, n_rb = ix->n_rb;
    if (kv < 0 || ks < 0 || kv > n || ks > n) return eng_err_set(err, "vs lines: %d / %d lines for n = %d", kv, ks, n);
    if (ix->max_cols < kv || ix->max_blocks < (ks < n_rb + 1 ? ks : n_rb + 1))
        return eng_err_set(err, "vs lines: index capacity %d blocks / %d columns too small", ix->max_blocks, ix->max_cols);
    CUDA_RET(cudaMemsetAsync(ix->band + 2 * h0, 0, 2 * (size_t)nh * sizeof(int), st));
    const int thr = 128, grid = (nh * n_rb + thr - 1) / thr;
    vs_convert<<<grid, thr, 0, st>>>(n, nh, h0, kv, ks, vsel, ssel, *ix);
    LAUNCH_RET("vs_convert (given lines)");
    return 0;
}
