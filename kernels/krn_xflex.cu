/* krn_xflex: XAttention and FlexPrefill index builders on the GPU, step by step as the CPU reference
 * (engine/eng_pattern.c build_xattn / build_flex) so that the indexes agree wherever rounding leaves
 * no near-tie:
 *   XAttention: stride groups gathered into (na, S*d) bf16 rows (queries reversed inside a group),
 *     one cuBLAS GEMM per chunk of query blocks gives every group pair's antidiagonal sum (fp32
 *     accumulate: the one step not in double; the CPU sums in double), then per query block the
 *     softmax over b <= a, block sums and row normalisation in double (xa_rows), and the cumulative
 *     threshold selection after a shared-memory bitonic sort (xa_select; ties: the later block).
 *   FlexPrefill: last-128-query logits in double (bf16 products are exact, sums in c order: the
 *     CPU's values bit for bit), softmax rows, vertical / slash scores summed over the rows in order,
 *     the pooled-query estimate and the JS distance (double, the CPU's order of operations;
 *     only exp/log may differ from glibc by an ulp), then per head either query-aware blocks
 *     (fx_blocks, sort + cumulative gamma) or vertical-slash lines (CUB stable segmented sort,
 *     cumulative gamma, key/offset 0 forced) merged by MInference's conversion (fx_vs_rows).
 * Which float differences can flip a choice: XAttention's fp32 GEMM sums (relative ~1e-6 on a
 * logit) flip a row block only when two block scores, or the kept share and tau * total, lie within
 * ~1e-6 of each other; FlexPrefill differs from the CPU only by exp/log ulps and blocked (not
 * sequential) double sums (~1e-16). Exact ties are broken as on the CPU.
 * Tests: tests/gpu_xflex.c; timings: attnscope bench. */
#include "krn_xflex.h"

#include "krn_common.cuh"

#include <cub/device/device_segmented_radix_sort.cuh>
#include <cublas_v2.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define XB 128                               /* XAttention / FlexPrefill block */
#define B64 64                               /* index block */
#define FLEX_LAST_Q 128                      /* FlexPrefill estimates from the last 128 queries */
#define XF_MAX_NB 8192                       /* 128-blocks a row CTA holds in shared memory (n <= 1M) */
#define XA_LOGIT_FLOATS ((size_t)64 << 20)   /* one XAttention logit chunk: 256 MiB of fp32 */
#define FX_CHUNK_BYTES ((size_t)512 << 20)   /* FlexPrefill scratch per chunk of heads */
#define NT_SEL 256                           /* threads of the selection CTAs */

struct krn_xflex_ws {
    cublasHandle_t blas; /* made on first XAttention use */
    void *buf;
    size_t cap;
};

namespace {

typedef __nv_bfloat16 bf16;

#define BLAS_TRY(stmt)                                                                      \
    do {                                                                                    \
        cublasStatus_t s_ = (stmt);                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                  \
            eng_err_set(err, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #stmt, (int)s_); \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* Bump allocator over the workspace; with base == nullptr it only measures. */
struct carve {
    char *base;
    size_t off;
    template <class T> T *take(size_t count) {
        T *p = base ? (T *)(base + off) : nullptr;
        off += align256(count * sizeof(T) + 1);
        return p;
    }
};

__host__ __device__ int pow2_at_least(int m) {
    int p = 1;
    while (p < m) p <<= 1;
    return p;
}

/* ---- CTA helpers ----------------------------------------------------------------------------- */

/* Sum over the CTA in a fixed order (warp butterflies, then the warp sums in order): deterministic.
 * sh: NT/32 + 1 doubles. Every thread gets the result. */
template <int NT> __device__ double cta_sum_d(double x, double *sh) {
#pragma unroll
    for (int o = 16; o; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0;
        for (int i = 0; i < NT / 32; i++) t += sh[i];
        sh[NT / 32] = t;
    }
    __syncthreads();
    return sh[NT / 32];
}

template <int NT> __device__ double cta_max_d(double x, double *sh) {
#pragma unroll
    for (int o = 16; o; o >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = sh[0];
        for (int i = 1; i < NT / 32; i++) t = fmax(t, sh[i]);
        sh[NT / 32] = t;
    }
    __syncthreads();
    return sh[NT / 32];
}

template <int NT> __device__ float cta_max_f(float x, float *sh) {
#pragma unroll
    for (int o = 16; o; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = sh[0];
        for (int i = 1; i < NT / 32; i++) t = fmaxf(t, sh[i]);
        sh[NT / 32] = t;
    }
    __syncthreads();
    return sh[NT / 32];
}

/* Exclusive prefix sum over the CTA; sh: NT/32 + 1 ints; the total into *tot. */
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
        if (lane < NT / 32) sh[lane] = t;
    }
    __syncthreads();
    const int base = w ? sh[w - 1] : 0;
    *tot = sh[NT / 32 - 1];
    __syncthreads();
    return base + x - v;
}

/* (va, ja) comes before (vb, jb): larger score first; ties: larger index first when tie_high. */
__device__ __forceinline__ bool ranks_before(double va, int ja, double vb, int jb, bool tie_high) {
    return va > vb || (va == vb && (tie_high ? ja > jb : ja < jb));
}

/* Bitonic sort of (v, jx)[0..P) (P a power of two) into ranks_before order. The order is total on
 * the real entries (distinct indices); padding (-inf, -1) entries go last. */
template <int NT> __device__ void cta_sort(double *v, int *jx, int P, bool tie_high) {
    __syncthreads();
    for (int k = 2; k <= P; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < P; i += NT) {
                const int l = i ^ j;
                if (l <= i) continue;
                const bool up = (i & k) == 0;
                const bool sw = up ? ranks_before(v[l], jx[l], v[i], jx[i], tie_high)
                                   : ranks_before(v[i], jx[i], v[l], jx[l], tie_high);
                if (sw) {
                    const double tv = v[i];
                    v[i] = v[l], v[l] = tv;
                    const int tj = jx[i];
                    jx[i] = jx[l], jx[l] = tj;
                }
            }
            __syncthreads();
        }
}

/* Row blocks 2I and 2I + 1 of head h from keep[0..I] (shared): each kept 128-key block as its
 * 64-key halves that start at or before the row block's last query, ascending; no columns
 * (eng_pattern.c index_from_blocks128). Blocks J < I always contribute both halves. */
template <int NT> __device__ void write_rows128(const unsigned char *keep, int I, int h, int n, krn_index_dev ix,
                                               int *scan_sh) {
    const int chunk = (I + NT - 1) / NT;
    const int j0 = min(I, (int)threadIdx.x * chunk), j1 = min(I, j0 + chunk);
    int cnt = 0;
    for (int J = j0; J < j1; J++) cnt += keep[J];
    int K;
    const int pos = cta_excl_scan<NT>(cnt, scan_sh, &K);
    for (int r = 0; r < 2; r++) {
        const int rb = 2 * I + r;
        if (rb >= ix.n_rb) break;
        const size_t row = (size_t)h * ix.n_rb + rb;
        int *bo = ix.block_offset + row * ix.max_blocks;
        const int last = min(rb * B64 + B64 - 1, n - 1);
        int p = 2 * pos;
        for (int J = j0; J < j1; J++)
            if (keep[J]) {
                bo[p] = J * XB;
                bo[p + 1] = J * XB + B64;
                p += 2;
            }
        if (threadIdx.x == 0) {
            int c = 2 * K;
            if (keep[I])
                for (int o = I * XB; o < I * XB + XB && o <= last; o += B64) bo[c++] = o;
            ix.block_count[row] = c;
            ix.column_count[row] = 0;
        }
    }
}

/* ---- XAttention ------------------------------------------------------------------------------ */

/* dst[a][r*d .. r*d + d) = src row a*S + (rev ? S-1-r : r), a < na: the S rows of stride group a
 * (reversed for queries), so that a row dot product is the group pair's antidiagonal sum
 * sum_r q[aS+S-1-r] . k[bS+r]. 16-byte copies (d, strides, head offsets: multiples of 8). */
__global__ void xa_gather(const bf16 *src, int stride, int S, int d, int na, int rev, bf16 *dst) {
    const int d8 = d / 8;
    const size_t total = (size_t)na * S * d8;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        const int c8 = (int)(e % d8);
        const size_t t = e / d8;
        const int r = (int)(t % S);
        const size_t a = t / S, row = a * S + (rev ? S - 1 - r : r);
        reinterpret_cast<uint4 *>(dst)[e] = *reinterpret_cast<const uint4 *>(src + row * stride + (size_t)c8 * 8);
    }
}

/* One CTA per query block I = I0 + blockIdx.x: XAttention's block-score row (eng_pattern_xattn_scores).
 * Per stride group a of the block, in order: logits L[a][b] * scale (b <= a), softmax in double,
 * the probabilities summed per key block J = b / G (G = 128 / S groups a block) by warp segments
 * in a fixed order into part[J]; acc[J] += part[J] / (row sum). Then the row normalised to 1 (sum
 * in J order, as the CPU). L: (a - a0, b) at L[(a - a0) * ldl + b]; out: (I - I0, J) at
 * out[(I - I0) * nb + J], zero above the diagonal. Shared: 2 * nb doubles. */
template <int NT>
__global__ void __launch_bounds__(NT) xa_rows(const float *L, int ldl, int a0, int na, int G, int I0, int nb,
                                              double scale, double *out) {
    extern __shared__ double xs[];
    double *part = xs, *acc = xs + nb;
    __shared__ double red[NT / 32 + 1];
    __shared__ float redf[NT / 32 + 1];
    const int I = I0 + blockIdx.x, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    for (int J = tid; J < nb; J += NT) acc[J] = 0;
    __syncthreads();
    const int ab = I * G, ae = min(ab + G, na);
    const int U = G > 32 ? G : 32, W = G < 32 ? G : 32; /* elements per warp unit; lanes per bucket */
    for (int a = ab; a < ae; a++) {
        const float *row = L + (size_t)(a - a0) * ldl;
        float m = -INFINITY;
        for (int b = tid; b <= a; b += NT) m = fmaxf(m, row[b]);
        m = cta_max_f<NT>(m, redf);
        const double mx = __dmul_rn((double)m, scale); /* x -> x * scale is monotone: the max logit */
        const int units = (a + U) / U;
        for (int u = w; u < units; u += NT / 32) {
            double v = 0;
            for (int t = lane; t < U; t += 32) {
                const int b = u * U + t;
                if (b <= a) v += exp(__dsub_rn(__dmul_rn((double)row[b], scale), mx));
            }
            for (int o = W / 2; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            const int b0 = u * U + lane;
            if (lane % W == 0 && b0 <= a) part[b0 / G] = v;
        }
        __syncthreads();
        double t = 0;
        for (int J = tid; J <= I; J += NT) t += part[J];
        const double tot = cta_sum_d<NT>(t, red);
        for (int J = tid; J <= I; J += NT) acc[J] += part[J] / tot;
        __syncthreads();
    }
    if (tid == 0) {
        double t = 0;
        for (int J = 0; J <= I; J++) t += acc[J];
        red[0] = t;
    }
    __syncthreads();
    const double t = red[0];
    double *o = out + (size_t)blockIdx.x * nb;
    for (int J = tid; J < nb; J += NT) o[J] = J <= I ? (t > 0 ? acc[J] / t : acc[J]) : 0.0;
}

/* One CTA per query block I = I0 + blockIdx.x: build_xattn's choice — the diagonal and the first
 * block, then blocks 1..I-1 by score (ties: the later block) while the kept share is below
 * thr * total; an all-zero row keeps every causal block. Shared: P doubles, P ints, nb bytes. */
template <int NT>
__global__ void __launch_bounds__(NT) xa_select(const double *sc, int I0, int nb, double thr, int h, int n,
                                                krn_index_dev ix) {
    extern __shared__ double xs[];
    __shared__ int scan_sh[NT / 32 + 1];
    __shared__ double s_tot;
    const int I = I0 + blockIdx.x, m = I > 1 ? I - 1 : 0, P = pow2_at_least(m);
    double *v = xs;
    int *jx = (int *)(v + P);
    unsigned char *keep = (unsigned char *)(jx + P);
    const double *row = sc + (size_t)blockIdx.x * nb;
    if (threadIdx.x == 0) {
        double t = 0;
        for (int J = 0; J <= I; J++) t += row[J];
        s_tot = t;
    }
    for (int i = threadIdx.x; i < P; i += NT) {
        v[i] = i < m ? row[1 + i] : -INFINITY;
        jx[i] = i < m ? 1 + i : -1;
    }
    __syncthreads();
    const double tot = s_tot;
    for (int J = threadIdx.x; J <= I; J += NT) keep[J] = tot <= 0;
    if (tot > 0) {
        cta_sort<NT>(v, jx, P, true);
        if (threadIdx.x == 0) {
            keep[I] = keep[0] = 1;
            double cum = row[I] + (I ? row[0] : 0);
            for (int i = 0; i < m && cum < thr * tot; i++) {
                keep[jx[i]] = 1;
                cum += v[i];
            }
        }
    }
    __syncthreads();
    write_rows128<NT>(keep, I, h, n, ix, scan_sh);
}

/* ---- FlexPrefill ----------------------------------------------------------------------------- */

/* out[(hh * nb + J) * d + c] = mean of rows [J*128, min(J*128 + 128, n)) of head head0 + hh: double
 * sums in token order, then / count (eng_pattern.c pool128). grid (nb, heads). */
__global__ void fx_pool(const bf16 *x, int stride, int head0, int d, int n, double *out) {
    const int J = blockIdx.x, hh = blockIdx.y, nb = gridDim.x, t0 = J * XB, t1 = min(t0 + XB, n);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        double acc = 0;
        for (int t = t0; t < t1; t++) acc += (double)__bfloat162float(x[(size_t)t * stride + (size_t)(head0 + hh) * d + c]);
        out[((size_t)hh * nb + J) * d + c] = acc / (double)(t1 - t0);
    }
}

/* qm[hh * d + c] = sum over the last lq queries, in order, of the float quotient q / lq (the CPU
 * divides the float by the int in float). grid (heads). */
__global__ void fx_qmean(const bf16 *q, int stride, int h0, int d, int n, int lq, double *qm) {
    const int hh = blockIdx.x;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        double acc = 0;
        for (int i = n - lq; i < n; i++)
            acc += (double)__fdiv_rn(__bfloat162float(q[(size_t)i * stride + (size_t)(h0 + hh) * d + c]), (float)lq);
        qm[(size_t)hh * d + c] = acc;
    }
}

/* Lg[(hh * lq + r) * n + j] = (sum_c q[c] k[c]) * scale for the estimate row r (query n - lq + r)
 * and keys j <= that query: double sums in c order of exact bf16 products (the CPU's logits bit for
 * bit). CTA: 32 keys x all lq (<= 128) rows, 256 threads; thread: one key, rows r0, r0 + 8, ...
 * Shared: q rows (lq, d) and the key tile transposed (d, 32), f32. grid (ceil(n / 32), heads). */
__global__ void __launch_bounds__(256) fx_logits(const bf16 *q, int q_stride, const bf16 *k, int kv_stride, int h0,
                                                 int g, int d, int n, int lq, double scale, double *Lg) {
    extern __shared__ float fs[];
    float *qs = fs, *kt = fs + (size_t)lq * d;
    const int hh = blockIdx.y, h = h0 + hh, hk = h / g, j0 = blockIdx.x * 32, tid = threadIdx.x;
    for (int e = tid; e < lq * d; e += 256)
        qs[e] = __bfloat162float(q[(size_t)(n - lq + e / d) * q_stride + (size_t)h * d + e % d]);
    for (int e = tid; e < 32 * d; e += 256) {
        const int jj = e / d, c = e % d, j = j0 + jj;
        kt[c * 32 + jj] = j < n ? __bfloat162float(k[(size_t)j * kv_stride + (size_t)hk * d + c]) : 0.f;
    }
    __syncthreads();
    const int jj = tid & 31, r0 = tid >> 5, j = j0 + jj;
    double acc[16];
#pragma unroll
    for (int i = 0; i < 16; i++) acc[i] = 0;
    for (int c = 0; c < d; c++) {
        const double kv = (double)kt[c * 32 + jj];
#pragma unroll
        for (int i = 0; i < 16; i++)
            if (r0 + 8 * i < lq) acc[i] = fma((double)qs[(r0 + 8 * i) * d + c], kv, acc[i]);
    }
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const int r = r0 + 8 * i;
        if (r < lq && j < n && j <= n - lq + r) Lg[((size_t)hh * lq + r) * n + j] = __dmul_rn(acc[i], scale);
    }
}

/* Per estimate row (blockIdx.x = hh * lq + r): e = exp(logit - max) in place over keys j <= its
 * query, their sum (fixed-order tree) into sum[row]. */
template <int NT> __global__ void __launch_bounds__(NT) fx_rowstats(double *Lg, int n, int lq, double *sum) {
    __shared__ double red[NT / 32 + 1];
    const int row = blockIdx.x, qi = n - lq + row % lq;
    double *x = Lg + (size_t)row * n;
    double m = -INFINITY;
    for (int j = threadIdx.x; j <= qi; j += NT) m = fmax(m, x[j]);
    m = cta_max_d<NT>(m, red);
    double s = 0;
    for (int j = threadIdx.x; j <= qi; j += NT) {
        const double e = exp(__dsub_rn(x[j], m));
        x[j] = e;
        s += e;
    }
    s = cta_sum_d<NT>(s, red);
    if (threadIdx.x == 0) sum[row] = s;
}

/* Thread per key j (= diagonal offset o): vertical[j] = sum_r e[r][j] / sum_r / lq and
 * slash[o] = sum_r e[r][q_r - o] / sum_r / lq over the rows in order (the CPU's accumulation
 * order). lines[(hh * 2) * n + j] vertical, lines[(hh * 2 + 1) * n + o] slash. grid (ceil(n/256), heads). */
__global__ void fx_lines(const double *E, const double *sum, int n, int lq, double *lines) {
    const int hh = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const double *e = E + (size_t)hh * lq * n, *sm = sum + (size_t)hh * lq;
    double v = 0, s = 0;
    for (int r = 0; r < lq; r++) {
        const int qi = n - lq + r;
        if (j <= qi) v += e[(size_t)r * n + j] / sm[r] / lq;
        if (qi - j >= 0) s += e[(size_t)r * n + qi - j] / sm[r] / lq;
    }
    lines[(size_t)hh * 2 * n + j] = v;
    lines[((size_t)hh * 2 + 1) * n + j] = s;
}

__device__ __forceinline__ double kl_term(double a, double m) { return a > 0 ? __dmul_rn(a, log(a / m)) : 0.0; }

/* One CTA per head: eng_pattern.c flex_js — est[J] = qm . kbar_J / sqrt(d), softmax (sum in J
 * order), pool[J] = the vertical score summed over block J in key order, the JS divergence summed in
 * J order, js = sqrt, query_aware = js < tau. scratch: 2 * nb doubles per head. */
template <int NT>
__global__ void __launch_bounds__(NT) fx_js(const double *qm, const double *kp, const double *lines, int h0, int g,
                                            int hk0, int d, int n, int nb, double tau, double *scratch, double *js,
                                            int *qa) {
    __shared__ double red[NT / 32 + 1];
    __shared__ double s_sum;
    const int hh = blockIdx.x, kvi = (h0 + hh) / g - hk0, tid = threadIdx.x;
    const double *q = qm + (size_t)hh * d, *K = kp + (size_t)kvi * nb * d, *vert = lines + (size_t)hh * 2 * n;
    double *est = scratch + (size_t)hh * 2 * nb, *pool = est + nb;
    const double sq = sqrt((double)d);
    double m = -INFINITY;
    for (int J = tid; J < nb; J += NT) {
        double a = 0;
        for (int c = 0; c < d; c++) a = __dadd_rn(a, __dmul_rn(q[c], K[(size_t)J * d + c]));
        est[J] = a / sq;
        m = fmax(m, est[J]);
        double p = 0;
        for (int j = J * XB; j < min(J * XB + XB, n); j++) p += vert[j];
        pool[J] = p;
    }
    m = cta_max_d<NT>(m, red);
    for (int J = tid; J < nb; J += NT) est[J] = exp(__dsub_rn(est[J], m));
    __syncthreads();
    if (tid == 0) {
        double s = 0;
        for (int J = 0; J < nb; J++) s += est[J];
        s_sum = s;
    }
    __syncthreads();
    const double sum = s_sum;
    for (int J = tid; J < nb; J += NT) {
        const double a = est[J] / sum, b = pool[J], mm = __dmul_rn(0.5, __dadd_rn(a, b));
        est[J] = mm > 0 ? __dadd_rn(__dmul_rn(0.5, kl_term(a, mm)), __dmul_rn(0.5, kl_term(b, mm))) : 0.0;
        pool[J] = mm > 0 ? 1.0 : 0.0;
    }
    __syncthreads();
    if (tid == 0) {
        double jsd = 0;
        for (int J = 0; J < nb; J++)
            if (pool[J] != 0) jsd += est[J];
        const double r = sqrt(jsd > 0 ? jsd : 0);
        js[hh] = r;
        qa[hh] = r < tau;
    }
}

/* One CTA per (query block I, head) of a query-aware head (others return at once): eng_pattern.c
 * flex_blocks — softmax over J <= I of qbar_I . kbar_J / sqrt(d) (double, c order), the fewest
 * blocks covering gamma (total in J order; sorted: larger first, ties lower J), at least minb
 * (<= I + 1), plus the diagonal. Shared: P doubles, P ints, nb bytes. grid (nb, heads). */
template <int NT>
__global__ void __launch_bounds__(NT) fx_blocks(const double *qp, const double *kp, int h0, int g, int hk0, int d,
                                                int nb, double gamma, int minb, const int *qa, int n,
                                                krn_index_dev ix) {
    extern __shared__ double xs[];
    __shared__ double red[NT / 32 + 1];
    __shared__ int scan_sh[NT / 32 + 1];
    __shared__ double s_tot;
    const int I = blockIdx.x, hh = blockIdx.y, tid = threadIdx.x;
    if (!qa[hh]) return;
    const int m = I + 1, P = pow2_at_least(m), kvi = (h0 + hh) / g - hk0;
    double *v = xs;
    int *jx = (int *)(v + P);
    unsigned char *keep = (unsigned char *)(jx + P);
    const double *q = qp + ((size_t)hh * nb + I) * d, *K = kp + (size_t)kvi * nb * d;
    const double sq = sqrt((double)d);
    double mx = -INFINITY;
    for (int J = tid; J < P; J += NT) {
        if (J < m) {
            double a = 0;
            for (int c = 0; c < d; c++) a = __dadd_rn(a, __dmul_rn(q[c], K[(size_t)J * d + c]));
            v[J] = a / sq;
            jx[J] = J;
            mx = fmax(mx, v[J]);
        } else {
            v[J] = -INFINITY;
            jx[J] = -1;
        }
    }
    mx = cta_max_d<NT>(mx, red);
    for (int J = tid; J < m; J += NT) v[J] = exp(__dsub_rn(v[J], mx));
    for (int J = tid; J <= I; J += NT) keep[J] = 0;
    __syncthreads();
    if (tid == 0) {
        double t = 0;
        for (int J = 0; J < m; J++) t += v[J];
        s_tot = t;
    }
    cta_sort<NT>(v, jx, P, false);
    if (tid == 0) {
        const double target = gamma * s_tot;
        double cum = 0;
        int c = 0;
        while (c < m && cum < target) cum += v[c++];
        if (c < minb) c = minb < m ? minb : m;
        for (int i = 0; i < c; i++) keep[jx[i]] = 1;
        keep[I] = 1;
    }
    __syncthreads();
    write_rows128<NT>(keep, I, h0 + hh, n, ix, scan_sh);
}

/* Sort inputs: idx[s * n + i] = i, offs[s] = s * n (s <= segs). */
__global__ void fx_sort_prep(int n, int segs, int *idx, int *offs) {
    const size_t total = (size_t)segs * n;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x)
        idx[e] = (int)(e % n);
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t <= segs) offs[t] = t * n;
}

/* One CTA per line set (seg = hh * 2 + {0 vertical, 1 slash}) of a vertical-slash head (query-aware
 * heads return at once): eng_pattern.c flex_lines — c = the fewest entries of the sorted scores
 * (larger first, ties lower index: CUB's stable descending sort) whose sum reaches gamma of the
 * total, then max(c, minl), clamped to [1, n]; index 0 forced in (the c - 1 best others with it
 * when it is not among the c best); out ascending keys (vertical) / descending offsets (slash),
 * count into cnt[seg]. Sums: per-thread chunks in order, then the chunk sums in order (the CPU sums
 * sequentially: equal to rounding). */
template <int NT>
__global__ void __launch_bounds__(NT) fx_select_lines(const double *lines, const double *skeys, const int *sidx,
                                                      int n, double gamma, int minl, const int *qa,
                                                      unsigned char *mark, int *sel, int *cnt) {
    __shared__ double cs[NT];
    __shared__ int scan_sh[NT / 32 + 1];
    __shared__ int s_c, s_z;
    __shared__ double s_tot;
    const int seg = blockIdx.x, tid = threadIdx.x;
    if (qa[seg >> 1]) return;
    const double *v = lines + (size_t)seg * n, *sk = skeys + (size_t)seg * n;
    const int *si = sidx + (size_t)seg * n;
    unsigned char *mk = mark + (size_t)seg * n;
    int *out = sel + (size_t)seg * n;
    const int chunk = (n + NT - 1) / NT, i0 = min(n, tid * chunk), i1 = min(n, i0 + chunk);
    double t = 0;
    for (int i = i0; i < i1; i++) t += v[i];
    cs[tid] = t;
    __syncthreads();
    if (tid == 0) {
        double tot = 0;
        for (int k = 0; k < NT; k++) tot += cs[k];
        s_tot = tot;
    }
    __syncthreads();
    const double target = gamma * s_tot;
    t = 0;
    for (int i = i0; i < i1; i++) {
        t += sk[i];
        mk[i] = 0;
        if (si[i] == 0) s_z = i;
    }
    cs[tid] = t;
    __syncthreads();
    if (tid == 0) {
        double run = 0;
        int k = 0;
        while (k < NT && run + cs[k] < target) run += cs[k++];
        int i = min(n, k * chunk);
        double cum = run;
        while (i < n && cum < target) cum += sk[i++];
        int c = i;
        if (c < minl) c = minl;
        if (c < 1) c = 1;
        if (c > n) c = n;
        s_c = c;
    }
    __syncthreads();
    const int c = s_c, take = s_z < c ? c : c - 1;
    for (int i = tid; i < take; i += NT) mk[si[i]] = 1;
    __syncthreads();
    if (tid == 0) mk[0] = 1;
    __syncthreads();
    int ct = 0;
    for (int i = i0; i < i1; i++) ct += mk[i];
    int total;
    int pos = cta_excl_scan<NT>(ct, scan_sh, &total);
    for (int i = i0; i < i1; i++)
        if (mk[i]) {
            out[(seg & 1) ? total - 1 - pos : pos] = i;
            pos++;
        }
    if (tid == 0) cnt[seg] = total;
}

/* MInference's convert_vertical_slash_indexes for one row block [m0, m0 + 64), as eng_pattern.c
 * vs_convert_row (v: nv keys ascending; s: ns offsets descending; blocks after the row block's last
 * query dropped). Writes at most cap_b / cap_c entries when bo / ci are given; returns the counts. */
__device__ void vs_row(int m0, int last, const int *v, int nv, const int *s, int ns, int *bo, int cap_b, int *ci,
                       int cap_c, int *nb_out, int *nc_out) {
    const int B = B64, end_m = m0 + B;
    int nb = 0, nc = 0, iv = 0, is = 0;
    int v_idx = iv < nv ? v[iv++] : end_m + B;
    int s_idx = -1;
    if (ns > 0) {
        int lo = 0, hi = ns;
        while (lo < hi) {
            const int mid = lo + (hi - lo) / 2;
            if (s[mid] >= end_m) lo = mid + 1;
            else hi = mid;
        }
        if (lo < ns) s_idx = s[lo], is = lo + 1;
        else s_idx = s[ns - 1], is = ns;
    }
    s_idx = s_idx >= end_m ? end_m + B : (end_m - s_idx > B ? end_m - s_idx : B);
    int range_start = s_idx - B, range_end = s_idx;
    for (;;) {
        if (v_idx < range_end) {
            if (v_idx < range_start) {
                if (ci && nc < cap_c) ci[nc] = v_idx;
                nc++;
            }
            v_idx = iv < nv ? v[iv++] : end_m + B;
        } else {
            bool done = false;
            if (is < ns) {
                const int e = end_m - s[is++];
                s_idx = e > B ? e : B;
            } else {
                done = true;
            }
            if (done || s_idx > range_end + B) {
                for (int o = range_start; o < range_end && o <= last; o += B) {
                    if (bo && nb < cap_b) bo[nb] = o;
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
    *nb_out = nb;
    *nc_out = nc;
}

/* Thread per (head, row block) of the vertical-slash heads: write = 0 takes the largest block and
 * column counts into need[0..1] (atomicMax); write = 1 writes the rows (counts 0 if a row would
 * overflow, which the capacity check before excludes). */
__global__ void fx_vs_rows(const int *sel, const int *cnt, const int *qa, int n, int h0, int nh, int write, int *need,
                           krn_index_dev ix) {
    const int n_rb = ix.n_rb, t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= nh * n_rb) return;
    const int hh = t / n_rb, rb = t % n_rb;
    if (qa[hh]) return;
    const int *v = sel + (size_t)2 * hh * n, *s = sel + ((size_t)2 * hh + 1) * n;
    const size_t row = (size_t)(h0 + hh) * n_rb + rb;
    int *bo = write ? ix.block_offset + row * ix.max_blocks : nullptr;
    int *ci = write ? ix.column_index + row * ix.max_cols : nullptr;
    int nb, nc;
    vs_row(rb * B64, min(rb * B64 + B64, n) - 1, v, cnt[2 * hh], s, cnt[2 * hh + 1], bo, ix.max_blocks, ci, ix.max_cols,
           &nb, &nc);
    if (!write) {
        atomicMax(&need[0], nb);
        atomicMax(&need[1], nc);
    } else {
        const bool over = nb > ix.max_blocks || nc > ix.max_cols;
        ix.block_count[row] = over ? 0 : nb;
        ix.column_count[row] = over ? 0 : nc;
    }
}

/* Every causal block (FlexPrefill's "too short: dense"), thread per (head, row block). */
__global__ void fx_dense(int nh, int h0, krn_index_dev ix) {
    const int n_rb = ix.n_rb, t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= nh * n_rb) return;
    const int hh = t / n_rb, rb = t % n_rb;
    const size_t row = (size_t)(h0 + hh) * n_rb + rb;
    int *bo = ix.block_offset + row * ix.max_blocks;
    for (int b = 0; b <= rb && b < ix.max_blocks; b++) bo[b] = b * B64;
    ix.block_count[row] = min(rb + 1, ix.max_blocks);
    ix.column_count[row] = 0;
}

/* ---- host side ------------------------------------------------------------------------------- */

int ws_reserve(krn_xflex_ws *ws, size_t bytes, cudaStream_t st, eng_err *err) {
    if (bytes <= ws->cap) return 0;
    CUDA_RET(cudaStreamSynchronize(st)); /* the old buffer may still be in use on st */
    cudaFree(ws->buf);
    ws->buf = nullptr;
    ws->cap = 0;
    CUDA_RET(cudaMalloc(&ws->buf, bytes));
    ws->cap = bytes;
    return 0;
}

/* Reallocate ix (H heads) with at least mb blocks / mc columns per row block, content kept. */
int grow_index(krn_index_dev *ix, int H, int mb, int mc, cudaStream_t st, eng_err *err) {
    if (mb <= ix->max_blocks && mc <= ix->max_cols) return 0;
    mb = mb > ix->max_blocks ? mb : ix->max_blocks;
    mc = mc > ix->max_cols ? mc : ix->max_cols;
    krn_index_dev nx = {};
    const size_t rows = (size_t)H * ix->n_rb;
    CUDA_RET(cudaStreamSynchronize(st));
    if (krn_index_dev_alloc(&nx, H, ix->n, mb, mc, err)) return -1;
    CUDA_TRY(cudaDeviceSynchronize()); /* krn_index_dev_alloc's memsets run on the legacy stream */
    CUDA_TRY(cudaMemcpyAsync(nx.block_count, ix->block_count, rows * sizeof(int), cudaMemcpyDeviceToDevice, st));
    CUDA_TRY(cudaMemcpyAsync(nx.column_count, ix->column_count, rows * sizeof(int), cudaMemcpyDeviceToDevice, st));
    CUDA_TRY(cudaMemcpyAsync(nx.band, ix->band, (size_t)H * 2 * sizeof(int), cudaMemcpyDeviceToDevice, st));
    if (ix->max_blocks > 0)
        CUDA_TRY(cudaMemcpy2DAsync(nx.block_offset, (size_t)mb * sizeof(int), ix->block_offset,
                                   (size_t)ix->max_blocks * sizeof(int), (size_t)ix->max_blocks * sizeof(int), rows,
                                   cudaMemcpyDeviceToDevice, st));
    if (ix->max_cols > 0)
        CUDA_TRY(cudaMemcpy2DAsync(nx.column_index, (size_t)mc * sizeof(int), ix->column_index,
                                   (size_t)ix->max_cols * sizeof(int), (size_t)ix->max_cols * sizeof(int), rows,
                                   cudaMemcpyDeviceToDevice, st));
    CUDA_TRY(cudaStreamSynchronize(st));
    krn_index_dev_free(ix);
    *ix = nx;
    return 0;
fail:
    krn_index_dev_free(&nx);
    return -1;
}

bool flex_too_short(const eng_pattern *p, int n) {
    long long lim = ((long long)p->min_budget + XB - 1) / XB * XB;
    if (lim < 2 * XB) lim = 2 * XB;
    return n <= lim;
}

/* XAttention scratch: gathered Q and K (na * S * d bf16 each), one logit chunk, its score rows. */
struct xa_plan {
    int S, G, na, nb, nIc;
    size_t bytes;
    bf16 *qc, *kc;
    float *L;
    double *sc;
};

void xa_layout(const eng_pattern *p, int n, int d, char *base, xa_plan *x) {
    x->S = p->stride, x->G = XB / p->stride, x->na = n / p->stride, x->nb = (n + XB - 1) / XB;
    const size_t ld = ((size_t)(x->na > 0 ? x->na : 1) + 3) & ~(size_t)3;
    size_t nic = XA_LOGIT_FLOATS / ((size_t)x->G * ld);
    x->nIc = (int)(nic < 1 ? 1 : nic > (size_t)x->nb ? (size_t)x->nb : nic);
    carve c = {base, 0};
    x->qc = c.take<bf16>((size_t)x->na * x->S * d);
    x->kc = c.take<bf16>((size_t)x->na * x->S * d);
    x->L = c.take<float>((size_t)x->nIc * x->G * ld);
    x->sc = c.take<double>((size_t)x->nIc * x->nb);
    x->bytes = c.off;
}

/* FlexPrefill scratch for a chunk of hc heads spanning up to nkv KV heads. */
struct fx_plan {
    int hc, nkv, lq, nb;
    size_t bytes, cub_bytes;
    double *kp, *qp, *qm, *Lg, *rsum, *lines, *skeys, *scratch, *js;
    int *idx, *sidx, *offs, *sel, *cnt, *qa, *need;
    unsigned char *mark;
    void *cub;
};

int fx_layout(int n, int d, int hc, int nkv, char *base, fx_plan *f, eng_err *err) {
    f->hc = hc, f->nkv = nkv, f->lq = n < FLEX_LAST_Q ? n : FLEX_LAST_Q, f->nb = (n + XB - 1) / XB;
    const size_t seg_items = (size_t)2 * hc * n;
    if (seg_items > (size_t)0x7fffffff) return eng_err_set(err, "flex: %d heads x %d tokens too many to sort", hc, n);
    size_t cb = 0;
    cudaError_t e = cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, cb, (const double *)nullptr, (double *)nullptr, (const int *)nullptr, (int *)nullptr, (int)seg_items,
        2 * hc, (const int *)nullptr, (const int *)nullptr, 0, 64, (cudaStream_t)0);
    if (e != cudaSuccess) return eng_err_set(err, "flex: sort workspace size: %s", cudaGetErrorString(e));
    carve c = {base, 0};
    f->kp = c.take<double>((size_t)nkv * f->nb * d);
    f->qp = c.take<double>((size_t)hc * f->nb * d);
    f->qm = c.take<double>((size_t)hc * d);
    f->Lg = c.take<double>((size_t)hc * f->lq * n);
    f->rsum = c.take<double>((size_t)hc * f->lq);
    f->lines = c.take<double>(seg_items);
    f->skeys = c.take<double>(seg_items);
    f->scratch = c.take<double>((size_t)hc * 2 * f->nb);
    f->js = c.take<double>((size_t)hc);
    f->idx = c.take<int>(seg_items);
    f->sidx = c.take<int>(seg_items);
    f->offs = c.take<int>((size_t)2 * hc + 1);
    f->sel = c.take<int>(seg_items);
    f->cnt = c.take<int>((size_t)2 * hc);
    f->qa = c.take<int>((size_t)hc);
    f->need = c.take<int>(2);
    f->mark = c.take<unsigned char>(seg_items);
    f->cub = c.take<char>(cb);
    f->cub_bytes = cb;
    f->bytes = c.off;
    return 0;
}

/* Heads a FlexPrefill chunk holds: per-head scratch (dominated by the lq x n logits) within
 * FX_CHUNK_BYTES, at least one. */
int fx_chunk_heads(int n, int d, int nh) {
    const size_t lq = n < FLEX_LAST_Q ? n : FLEX_LAST_Q, nb = ((size_t)n + XB - 1) / XB;
    const size_t per = 8 * lq * n + 2 * (size_t)n * (8 + 8 + 4 + 4 + 4 + 1) * 2 + 8 * 2 * nb * d + 4096;
    size_t hc = FX_CHUNK_BYTES / per;
    if (hc < 1) hc = 1;
    return (int)(hc < (size_t)nh ? hc : (size_t)nh);
}

int blas_ready(krn_xflex_ws *ws, cudaStream_t st, eng_err *err) {
    if (!ws->blas) BLAS_TRY(cublasCreate(&ws->blas));
    BLAS_TRY(cublasSetStream(ws->blas, st));
    return 0;
fail:
    return -1;
}

/* XAttention for heads [h0, h0 + nh): index rows into ix (if given), score rows to s_host (if
 * given, nb x nb per head, heads consecutive). */
int xattn_run(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_index_dev *ix, double *s_host,
              krn_xflex_ws *ws, cudaStream_t st, eng_err *err) {
    const int n = a->n, d = a->d, g = a->H / a->Hkv;
    xa_plan x;
    xa_layout(p, n, d, nullptr, &x);
    if (ws_reserve(ws, x.bytes, st, err)) return -1;
    xa_layout(p, n, d, (char *)ws->buf, &x);
    if (x.na > 0 && blas_ready(ws, st, err)) return -1;
    const double scale = 1.0 / sqrt((double)d) / x.S, thr = (double)p->threshold;
    const int P = pow2_at_least(x.nb);
    const size_t rows_smem = (size_t)2 * x.nb * sizeof(double);
    const size_t sel_smem = (size_t)P * (sizeof(double) + sizeof(int)) + (size_t)x.nb + 16;
    CUDA_RET(cudaFuncSetAttribute(xa_rows<NT_SEL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)rows_smem));
    CUDA_RET(cudaFuncSetAttribute(xa_select<NT_SEL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sel_smem));
    const float one = 1.f, zero = 0.f;
    int hk_done = -1;
    for (int hh = 0; hh < nh; hh++) {
        const int h = h0 + hh, hk = h / g;
        if (x.na > 0) {
            const size_t items = (size_t)x.na * x.S * d / 8;
            const int grid = (int)((items + 255) / 256 < 4096 ? (items + 255) / 256 : 4096);
            xa_gather<<<grid, 256, 0, st>>>((const bf16 *)a->q + (size_t)h * d, a->q_stride, x.S, d, x.na, 1, x.qc);
            LAUNCH_RET("xa_gather q");
            if (hk != hk_done) {
                xa_gather<<<grid, 256, 0, st>>>((const bf16 *)a->k + (size_t)hk * d, a->kv_stride, x.S, d, x.na, 0, x.kc);
                LAUNCH_RET("xa_gather k");
                hk_done = hk;
            }
        }
        for (int I0 = 0; I0 < x.nb; I0 += x.nIc) {
            const int I1 = I0 + x.nIc < x.nb ? I0 + x.nIc : x.nb;
            const int a0 = I0 * x.G, a1 = I1 * x.G < x.na ? I1 * x.G : x.na;
            const int ldl = (a1 + 3) & ~3;
            if (a1 > a0) {
                /* L (a1 - a0 rows a, a1 columns b; row-major, ld ldl) = Qc[a0:a1] Kc[0:a1]^T, i.e.
                 * column-major L^T = Kc Qc^T: every group pair's antidiagonal sum, f32. */
                const int kd = x.S * d;
                cublasStatus_t bs = cublasGemmEx(ws->blas, CUBLAS_OP_T, CUBLAS_OP_N, a1, a1 - a0, kd, &one, x.kc,
                                                 CUDA_R_16BF, kd, x.qc + (size_t)a0 * kd, CUDA_R_16BF, kd, &zero, x.L,
                                                 CUDA_R_32F, ldl, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                if (bs != CUBLAS_STATUS_SUCCESS)
                    return eng_err_set(err, "xattn: cuBLAS GEMM (%d x %d x %d): status %d", a1 - a0, a1, kd, (int)bs);
            }
            xa_rows<NT_SEL><<<I1 - I0, NT_SEL, rows_smem, st>>>(x.L, ldl, a0, x.na, x.G, I0, x.nb, scale, x.sc);
            LAUNCH_RET("xa_rows");
            if (ix) {
                xa_select<NT_SEL><<<I1 - I0, NT_SEL, sel_smem, st>>>(x.sc, I0, x.nb, thr, h, n, *ix);
                LAUNCH_RET("xa_select");
            }
            if (s_host) {
                CUDA_RET(cudaMemcpyAsync(s_host + ((size_t)hh * x.nb + I0) * x.nb, x.sc,
                                         sizeof(double) * (size_t)(I1 - I0) * x.nb, cudaMemcpyDeviceToHost, st));
                CUDA_RET(cudaStreamSynchronize(st));
            }
        }
    }
    return 0;
}

/* FlexPrefill for heads [h0, h0 + nh) (not too short): index rows into ix (if given; grown when a
 * vertical-slash head needs more columns), decisions to js_host / qa_host (if given). */
int flex_run(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_index_dev *ix, double *js_host,
             int *qa_host, krn_xflex_ws *ws, cudaStream_t st, eng_err *err) {
    const int n = a->n, d = a->d, g = a->H / a->Hkv, nb = (n + XB - 1) / XB;
    const int hc_max = fx_chunk_heads(n, d, nh);
    const double gamma = (double)p->gamma;
    const int minb = (int)(((long long)p->min_budget + XB - 1) / XB);
    const int P = pow2_at_least(nb);
    const size_t sel_smem = (size_t)P * (sizeof(double) + sizeof(int)) + (size_t)nb + 16;
    const size_t lg_smem = (size_t)(FLEX_LAST_Q + 32) * d * sizeof(float);
    CUDA_RET(cudaFuncSetAttribute(fx_blocks<NT_SEL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sel_smem));
    CUDA_RET(cudaFuncSetAttribute(fx_logits, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lg_smem));
    for (int c0 = 0; c0 < nh; c0 += hc_max) {
        const int hc = nh - c0 < hc_max ? nh - c0 : hc_max, hb = h0 + c0;
        const int hk0 = hb / g, nkv = (hb + hc - 1) / g + 1 - hk0;
        fx_plan f;
        if (fx_layout(n, d, hc, nkv, nullptr, &f, err) || ws_reserve(ws, f.bytes, st, err) ||
            fx_layout(n, d, hc, nkv, (char *)ws->buf, &f, err))
            return -1;
        const int lq = f.lq;
        fx_pool<<<dim3(nb, nkv), 128, 0, st>>>((const bf16 *)a->k, a->kv_stride, hk0, d, n, f.kp);
        LAUNCH_RET("fx_pool k");
        fx_pool<<<dim3(nb, hc), 128, 0, st>>>((const bf16 *)a->q, a->q_stride, hb, d, n, f.qp);
        LAUNCH_RET("fx_pool q");
        fx_qmean<<<hc, 128, 0, st>>>((const bf16 *)a->q, a->q_stride, hb, d, n, lq, f.qm);
        LAUNCH_RET("fx_qmean");
        fx_logits<<<dim3((n + 31) / 32, hc), 256, (size_t)(lq + 32) * d * sizeof(float), st>>>(
            (const bf16 *)a->q, a->q_stride, (const bf16 *)a->k, a->kv_stride, hb, g, d, n, lq, 1.0 / sqrt((double)d),
            f.Lg);
        LAUNCH_RET("fx_logits");
        fx_rowstats<256><<<hc * lq, 256, 0, st>>>(f.Lg, n, lq, f.rsum);
        LAUNCH_RET("fx_rowstats");
        fx_lines<<<dim3((n + 255) / 256, hc), 256, 0, st>>>(f.Lg, f.rsum, n, lq, f.lines);
        LAUNCH_RET("fx_lines");
        fx_js<NT_SEL><<<hc, NT_SEL, 0, st>>>(f.qm, f.kp, f.lines, hb, g, hk0, d, n, nb, (double)p->tau, f.scratch,
                                             f.js, f.qa);
        LAUNCH_RET("fx_js");
        if (ix) {
            fx_blocks<NT_SEL><<<dim3(nb, hc), NT_SEL, sel_smem, st>>>(f.qp, f.kp, hb, g, hk0, d, nb, gamma, minb, f.qa,
                                                                      n, *ix);
            LAUNCH_RET("fx_blocks");
            const int segs = 2 * hc;
            const size_t items = (size_t)segs * n;
            const int grid = (int)((items + 255) / 256 < 4096 ? (items + 255) / 256 : 4096);
            fx_sort_prep<<<grid > (segs + 256) / 256 ? grid : (segs + 256) / 256, 256, 0, st>>>(n, segs, f.idx, f.offs);
            LAUNCH_RET("fx_sort_prep");
            size_t cb = f.cub_bytes;
            CUDA_RET(cub::DeviceSegmentedRadixSort::SortPairsDescending(
                f.cub, cb, (const double *)f.lines, f.skeys, (const int *)f.idx, f.sidx, (int)items, segs,
                (const int *)f.offs, (const int *)f.offs + 1, 0, 64, st));
            fx_select_lines<1024><<<segs, 1024, 0, st>>>(f.lines, f.skeys, f.sidx, n, gamma, p->min_budget, f.qa, f.mark,
                                                         f.sel, f.cnt);
            LAUNCH_RET("fx_select_lines");
            CUDA_RET(cudaMemsetAsync(f.need, 0, 2 * sizeof(int), st));
            const int rows = hc * ix->n_rb, thr = 128;
            fx_vs_rows<<<(rows + thr - 1) / thr, thr, 0, st>>>(f.sel, f.cnt, f.qa, n, hb, hc, 0, f.need, *ix);
            LAUNCH_RET("fx_vs_rows (count)");
            int need[2] = {0, 0};
            CUDA_RET(cudaMemcpyAsync(need, f.need, sizeof need, cudaMemcpyDeviceToHost, st));
            CUDA_RET(cudaStreamSynchronize(st));
            if (grow_index(ix, a->H, need[0], need[1], st, err)) return -1;
            fx_vs_rows<<<(rows + thr - 1) / thr, thr, 0, st>>>(f.sel, f.cnt, f.qa, n, hb, hc, 1, f.need, *ix);
            LAUNCH_RET("fx_vs_rows");
        }
        if (js_host || qa_host) {
            if (js_host) CUDA_RET(cudaMemcpyAsync(js_host + c0, f.js, sizeof(double) * hc, cudaMemcpyDeviceToHost, st));
            if (qa_host) CUDA_RET(cudaMemcpyAsync(qa_host + c0, f.qa, sizeof(int) * hc, cudaMemcpyDeviceToHost, st));
            CUDA_RET(cudaStreamSynchronize(st));
        }
    }
    return 0;
}

int check_args(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, eng_err *err) {
    if (!p || !krn_xflex_kind(p->kind))
        return eng_err_set(err, "xflex: pattern %s is not xattn or flex", p ? eng_pattern_kind_name(p->kind) : "(none)");
    if (eng_pattern_validate(p, err)) return -1;
    if (!a || a->n <= 0 || a->H <= 0 || a->Hkv <= 0 || a->H % a->Hkv)
        return eng_err_set(err, "%s: bad shape", eng_pattern_kind_name(p->kind));
    if (h0 < 0 || nh <= 0 || h0 + nh > a->H)
        return eng_err_set(err, "%s: heads [%d, %d) outside %d", eng_pattern_kind_name(p->kind), h0, h0 + nh, a->H);
    if (a->d <= 0 || a->d % 8 || a->d > 256 || a->q_stride % 8 || a->kv_stride % 8)
        return eng_err_set(err, "%s: head dim %d / strides %d, %d must be multiples of 8 (d <= 256)",
                           eng_pattern_kind_name(p->kind), a->d, a->q_stride, a->kv_stride);
    if ((a->n + XB - 1) / XB > XF_MAX_NB)
        return eng_err_set(err, "%s: %d tokens exceed the GPU builder's %d blocks of 128", eng_pattern_kind_name(p->kind),
                           a->n, XF_MAX_NB);
    return 0;
}

} /* namespace */

extern "C" int krn_xflex_kind(eng_pat_kind k) { return k == ENG_PAT_XATTN || k == ENG_PAT_FLEX; }

extern "C" int krn_xflex_ws_create(krn_xflex_ws **out, eng_err *err) {
    *out = (krn_xflex_ws *)calloc(1, sizeof **out);
    if (!*out) return eng_err_set(err, "xflex workspace: out of host memory");
    return 0;
}

extern "C" void krn_xflex_ws_free(krn_xflex_ws *ws) {
    if (!ws) return;
    if (ws->blas) cublasDestroy(ws->blas);
    cudaFree(ws->buf);
    free(ws);
}

extern "C" size_t krn_xflex_ws_bytes(const eng_pattern *p, int n, int H, int d) {
    if (!p || n <= 0 || H <= 0 || d <= 0) return 0;
    if (p->kind == ENG_PAT_XATTN && p->stride >= 1 && XB % p->stride == 0) {
        xa_plan x;
        xa_layout(p, n, d, nullptr, &x);
        return x.bytes;
    }
    if (p->kind == ENG_PAT_FLEX) {
        const int hc = fx_chunk_heads(n, d, H);
        fx_plan f;
        eng_err e;
        return fx_layout(n, d, hc, hc, nullptr, &f, &e) ? 0 : f.bytes;
    }
    return 0;
}

extern "C" int krn_xflex_build(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, krn_index_dev *ix,
                               krn_xflex_ws *ws, cudaStream_t st, eng_err *err) {
    if (check_args(p, a, h0, nh, err)) return -1;
    const int n = a->n, n_rb = (n + B64 - 1) / B64;
    if (!ix || ix->n != n || ix->n_rb != n_rb)
        return eng_err_set(err, "%s: index for n = %d, tensors n = %d", eng_pattern_kind_name(p->kind), ix ? ix->n : 0, n);
    if (grow_index(ix, a->H, n_rb, 0, st, err)) return -1;
    CUDA_RET(cudaMemsetAsync(ix->band + 2 * h0, 0, 2 * (size_t)nh * sizeof(int), st));
    if (p->kind == ENG_PAT_XATTN) return xattn_run(p, a, h0, nh, ix, nullptr, ws, st, err);
    if (flex_too_short(p, n)) {
        const int thr = 128;
        fx_dense<<<(nh * n_rb + thr - 1) / thr, thr, 0, st>>>(nh, h0, *ix);
        LAUNCH_RET("fx_dense");
        return 0;
    }
    return flex_run(p, a, h0, nh, ix, nullptr, nullptr, ws, st, err);
}

extern "C" int krn_xflex_xattn_scores(const eng_pattern *p, const krn_attn_args *a, int h, double *s, krn_xflex_ws *ws,
                                      cudaStream_t st, eng_err *err) {
    if (check_args(p, a, h, 1, err)) return -1;
    if (p->kind != ENG_PAT_XATTN) return eng_err_set(err, "xattn scores: pattern is %s", eng_pattern_kind_name(p->kind));
    return xattn_run(p, a, h, 1, nullptr, s, ws, st, err);
}

extern "C" int krn_xflex_flex_decide(const eng_pattern *p, const krn_attn_args *a, int h0, int nh, double *js,
                                     int *query_aware, int *dense, krn_xflex_ws *ws, cudaStream_t st, eng_err *err) {
    if (check_args(p, a, h0, nh, err)) return -1;
    if (p->kind != ENG_PAT_FLEX) return eng_err_set(err, "flex decide: pattern is %s", eng_pattern_kind_name(p->kind));
    *dense = flex_too_short(p, a->n);
    for (int i = 0; i < nh; i++) js[i] = NAN, query_aware[i] = 0;
    if (*dense) return 0;
    return flex_run(p, a, h0, nh, nullptr, js, query_aware, ws, st, err);
}
