/* krn_map: pooled attention map of one head on the GPU (see krn_map.h; CPU reference
 * engine/eng_map.c). One CTA of 256 threads per 64-query row block (aligned to 64, so one index
 * row block), walking 64-key tiles left of the diagonal; Q (pre-scaled) and K tiles transposed in
 * shared memory as [d][64]; each thread owns a 4 x 4 score block (fp32 fma over c in order, the
 * CPU's sums). Tiles with no index entry are skipped whole; the index's band mask (sink, window)
 * is applied per (query, block key) as in eng_index_covers. Pass 1 (no lse given): online max/sum
 * per row -> lse. Pass 2: every entry of the requested window adds exp(s - lse) (MEAN) or takes
 * max(s - lse) (MAX) into its pixel: a thread first merges its own entries that share a pixel, a
 * warp whose lanes all hit one pixel merges by shuffles, and what remains goes to global atomics
 * on the (gh, gw) grid; a last kernel turns sums into densities / exps and marks empty tiles. */
#include "krn_map.h"

#include "krn_common.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MB 64   /* queries per CTA = keys per tile */
#define MT 256  /* threads */
#define MAP_MAX_SIDE 16384

namespace {

struct map_args {
    int n, d, q0, q1, k0, k1, gw, gh, pool_max;
    const float *q, *k;                 /* compact rows [0, q1) x d */
    const int *row_of, *col_of;         /* pixel row of query q0 + i, pixel column of key k0 + i */
    const int *bc, *bo, *cc, *ci;       /* index (bc NULL = dense causal) */
    int max_blocks, max_cols;
    int sink, window;                   /* index band mask on block keys (window 0 = off) */
    float *lse;                         /* [n]: read (pass 2) or written (pass 1) at [q0, q1) */
    unsigned *acc;                      /* [gh][gw]: float bits (MEAN) or ordered keys (MAX) */
};

__device__ __forceinline__ unsigned fkey(float f) { /* order-preserving float -> unsigned */
    unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float fkey_inv(unsigned u) {
    return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}

/* rows [row0, row0 + 64) of src (compact, d wide) into dst[c][64] times scale; rows >= end are 0.
 * Thread e reads a float4 along c of row e % 64: shared stores of a warp hit consecutive words. */
__device__ void load_tile(float *dst, const float *src, int row0, int end, int d, float scale) {
    const int d4 = d / 4;
    for (int e = threadIdx.x; e < MB * d4; e += MT) {
        const int r = e % MB, c = (e / MB) * 4, t = row0 + r;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (t < end) v = __ldg(reinterpret_cast<const float4 *>(src + (size_t)t * d + c));
        dst[(c + 0) * MB + r] = v.x * scale;
        dst[(c + 1) * MB + r] = v.y * scale;
        dst[(c + 2) * MB + r] = v.z * scale;
        dst[(c + 3) * MB + r] = v.w * scale;
    }
}

/* allow[j] for key kt + j in row block rb: 0 not computed, 1 a block key (dense: every key < n),
 * subject to the band mask per query (computed()), 2 a column key (never band-masked). Columns
 * are marked first and blocks overwrite them, so a key in both is a block key, as in
 * eng_index_covers. Returns whether any key of the tile is marked (uniform over the CTA). */
__device__ bool tile_allow(const map_args &A, int rb, int kt, unsigned char *allow) {
    if (!A.bc) {
        if (threadIdx.x < MB) allow[threadIdx.x] = kt + (int)threadIdx.x < A.n;
        __syncthreads();
        return true;
    }
    if (threadIdx.x < MB) allow[threadIdx.x] = 0;
    __syncthreads();
    const int nb = A.bc[rb], nc = A.cc[rb];
    const int *bo = A.bo + (size_t)rb * A.max_blocks, *ci = A.ci + (size_t)rb * A.max_cols;
    for (int i = threadIdx.x; i < nc; i += MT)
        if (ci[i] >= kt && ci[i] < kt + MB) allow[ci[i] - kt] = 2;
    __syncthreads(); /* column marks before block marks */
    for (int i = threadIdx.x; i < nb; i += MT) {
        const int a = max(bo[i], kt), b = min(min(bo[i] + MB, kt + MB), A.n);
        for (int x = a; x < b; x++) allow[x - kt] = 1;
    }
    __syncthreads(); /* every thread's marks visible before any thread reads allow[] */
    return __syncthreads_or(threadIdx.x < MB && allow[threadIdx.x]) != 0;
}

/* Does query q compute key kk, given kk's mark al from tile_allow? Causal, then the band on block
 * keys: k < sink or q - k < window (eng_index_covers). */
__device__ __forceinline__ bool computed(const map_args &A, unsigned char al, int q, int kk) {
    if (kk > q || !al) return false;
    return al == 2 || A.window <= 0 || kk < A.sink || q - kk < A.window;
}

/* s[i][j] = Qs row (ty*4 + i) . Ks row (tx*4 + j), fma over c = 0..d-1 in order. */
__device__ __forceinline__ void tile_scores(const float *Qs, const float *Ks, int d, int ty, int tx, float s[4][4]) {
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) s[i][j] = 0.f;
    for (int c = 0; c < d; c++) {
        const float4 a = *reinterpret_cast<const float4 *>(Qs + c * MB + ty * 4);
        const float4 b = *reinterpret_cast<const float4 *>(Ks + c * MB + tx * 4);
        const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) s[i][j] = fmaf(av[i], bv[j], s[i][j]);
    }
}

/* Pass 1: lse of rows [max(q0, r0), min(q1, r0 + 64)) over their computed causal keys. */
__global__ void __launch_bounds__(MT) map_lse(map_args A, int rb0, int rb1, float scale) {
    extern __shared__ float sm[];
    __shared__ unsigned char allow[MB];
    float *Qs = sm, *Ks = sm + (size_t)A.d * MB;
    const int rb = rb1 - 1 - (int)blockIdx.x; /* later rows have more keys: start them first */
    if (rb < rb0) return;
    const int r0 = rb * MB, tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    load_tile(Qs, A.q, r0, A.q1, A.d, scale);
    float m[4], l[4];
#pragma unroll
    for (int i = 0; i < 4; i++) m[i] = -INFINITY, l[i] = 0.f;
    const int kend = min(r0 + MB, A.q1);
    for (int kt = 0; kt < kend; kt += MB) {
        __syncthreads(); /* Ks and allow of the previous tile are no longer read */
        if (!tile_allow(A, rb, kt, allow)) continue;
        load_tile(Ks, A.k, kt, A.q1, A.d, 1.0f);
        __syncthreads();
        float s[4][4];
        tile_scores(Qs, Ks, A.d, ty, tx, s);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int q = r0 + ty * 4 + i;
            float tm = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int kk = kt + tx * 4 + j;
                if (!computed(A, allow[tx * 4 + j], q, kk)) s[i][j] = -INFINITY;
                tm = fmaxf(tm, s[i][j]);
            }
            /* xor 8..1 stays inside the 16 lanes of one row; every lane shuffles (no early exit) */
#pragma unroll
            for (int o = 8; o; o >>= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, o));
            const float nm = fmaxf(m[i], tm);
            float ts = 0.f;
#pragma unroll
            for (int j = 0; j < 4; j++) ts += s[i][j] == -INFINITY ? 0.f : expf(s[i][j] - nm);
#pragma unroll
            for (int o = 8; o; o >>= 1) ts += __shfl_xor_sync(0xffffffffu, ts, o);
            if (tm != -INFINITY) {
                l[i] = l[i] * (m[i] == -INFINITY ? 0.f : expf(m[i] - nm)) + ts;
                m[i] = nm;
            }
        }
    }
    if (tx == 0)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int q = r0 + ty * 4 + i;
            if (q >= A.q0 && q < A.q1) A.lse[q] = l[i] > 0.f ? m[i] + logf(l[i]) : INFINITY;
        }
}

/* Merge value v into pixel p's accumulator. */
__device__ __forceinline__ void acc_put(const map_args &A, int p, float v) {
    if (A.pool_max) atomicMax(&A.acc[p], fkey(v));
    else atomicAdd(reinterpret_cast<float *>(&A.acc[p]), v);
}

/* Pass 2: rows [max(q0, r0), min(q1, r0 + 64)) x keys [k0, min(k1, r0 + 64)) into the grid. */
__global__ void __launch_bounds__(MT) map_pool(map_args A, int rb0, int rb1, float scale) {
    extern __shared__ float sm[];
    __shared__ unsigned char allow[MB];
    float *Qs = sm, *Ks = sm + (size_t)A.d * MB;
    const int rb = rb1 - 1 - (int)blockIdx.x;
    if (rb < rb0) return;
    const int r0 = rb * MB, tx = threadIdx.x & 15, ty = threadIdx.x >> 4, lane = threadIdx.x & 31;
    load_tile(Qs, A.q, r0, A.q1, A.d, scale);
    float lse[4];
    int gy[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = r0 + ty * 4 + i;
        const bool in = q >= A.q0 && q < A.q1;
        lse[i] = in ? A.lse[q] : INFINITY;
        gy[i] = in ? A.row_of[q - A.q0] : -1;
    }
    const int kend = min(A.k1, min(r0 + MB, A.q1));
    for (int kt = A.k0 / MB * MB; kt < kend; kt += MB) {
        __syncthreads();
        if (!tile_allow(A, rb, kt, allow)) continue;
        load_tile(Ks, A.k, kt, A.q1, A.d, 1.0f);
        __syncthreads();
        float s[4][4];
        tile_scores(Qs, Ks, A.d, ty, tx, s);
        int cur = -1;
        float cv = 0.f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int q = r0 + ty * 4 + i;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int kk = kt + tx * 4 + j;
                if (gy[i] < 0 || kk < A.k0 || kk >= A.k1 || !computed(A, allow[tx * 4 + j], q, kk)) continue;
                const int p = gy[i] * A.gw + A.col_of[kk - A.k0];
                const float v = A.pool_max ? s[i][j] - lse[i] : expf(s[i][j] - lse[i]);
                if (p == cur) {
                    cv = A.pool_max ? fmaxf(cv, v) : cv + v;
                } else {
                    if (cur >= 0) acc_put(A, cur, cv);
                    cur = p, cv = v;
                }
            }
        }
        /* the last run: merged across the warp when every lane holds the same pixel */
        const int p0 = __shfl_sync(0xffffffffu, cur, 0);
        if (__all_sync(0xffffffffu, cur == p0) && p0 >= 0) {
#pragma unroll
            for (int o = 16; o; o >>= 1) {
                const float w = __shfl_xor_sync(0xffffffffu, cv, o);
                cv = A.pool_max ? fmaxf(cv, w) : cv + w;
            }
            if (lane == 0) acc_put(A, p0, cv);
        } else if (cur >= 0) {
            acc_put(A, cur, cv);
        }
    }
}

__global__ void map_init(unsigned *acc, size_t cnt, unsigned v) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < cnt; i += (size_t)gridDim.x * blockDim.x)
        acc[i] = v;
}

__device__ __forceinline__ int edge(int a, int b, int px, int i) { return a + (int)((long long)i * (b - a) / px); }

/* Grid cell -> final value (eng_map.c unit_pool's finalize). */
__global__ void map_finish(const unsigned *acc, int q0, int q1, int k0, int k1, int gw, int gh, int pool_max,
                           float empty, float *grid) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)gw * gh) return;
    const int gy = (int)(i / gw), gx = (int)(i % gw);
    const int qa = edge(q0, q1, gh, gy), qb = edge(q0, q1, gh, gy + 1);
    const int ka = edge(k0, k1, gw, gx), kb = edge(k0, k1, gw, gx + 1);
    float r;
    if (ka > qb - 1) r = empty;
    else if (pool_max) {
        const float v = fkey_inv(acc[i]);
        r = v == -INFINITY ? 0.f : expf(v);
    } else {
        r = (float)((double)__uint_as_float(acc[i]) / ((double)(qb - qa) * (double)(kb - ka)));
    }
    grid[i] = r;
}

int host_edge(int a, int b, int px, int i) { return a + (int)((long long)i * (b - a) / px); }

} /* namespace */

extern "C" int krn_map_pool(const float *q, int q_stride, const float *k, int k_stride, int n, int d, const float *lse,
                            const eng_head_index *ix, const eng_map_opts *o, float *out, cudaStream_t st, eng_err *err) {
    if (!q || !k || !out || !o) return eng_err_set(err, "map: missing Q, K, options or output");
    if (n < 1 || d < 4 || d > 256 || d % 4 || q_stride < d || k_stride < d)
        return eng_err_set(err, "map (gpu): bad shape n=%d d=%d q_stride=%d k_stride=%d (d a multiple of 4 up to 256)",
                           n, d, q_stride, k_stride);
    if (o->q0 < 0 || o->q1 > n || o->q0 >= o->q1)
        return eng_err_set(err, "map: query range [%d, %d) is empty or outside [0, %d)", o->q0, o->q1, n);
    if (o->k0 < 0 || o->k1 > n || o->k0 >= o->k1)
        return eng_err_set(err, "map: key range [%d, %d) is empty or outside [0, %d)", o->k0, o->k1, n);
    if (o->w < 1 || o->h < 1 || o->w > MAP_MAX_SIDE || o->h > MAP_MAX_SIDE)
        return eng_err_set(err, "map: output size %d x %d outside [1, %d] per side", o->w, o->h, MAP_MAX_SIDE);
    if (o->pool != ENG_POOL_MAX && o->pool != ENG_POOL_MEAN) return eng_err_set(err, "map: unknown pooling %d", (int)o->pool);
    if (ix && (ix->n != n || ix->n_rb != (n + ENG_BLOCK - 1) / ENG_BLOCK || !ix->block_count || !ix->column_count))
        return eng_err_set(err, "map: index is for %d tokens (%d row blocks), the map for %d", ix->n, ix->n_rb, n);

    const int q0 = o->q0, q1 = o->q1, k0 = o->k0, k1 = o->k1, nq = q1 - q0, nk = k1 - k0;
    const int gw = o->w < nk ? o->w : nk, gh = o->h < nq ? o->h : nq;
    const size_t cells = (size_t)gw * gh;
    int *h_row = (int *)malloc(sizeof(int) * (size_t)nq), *h_col = (int *)malloc(sizeof(int) * (size_t)nk);
    float *h_grid = (float *)malloc(sizeof(float) * cells);
    float *dq = nullptr, *dk = nullptr, *dlse = nullptr, *dgrid = nullptr;
    int *drow = nullptr, *dcol = nullptr, *dbc = nullptr, *dbo = nullptr, *dcc = nullptr, *dci = nullptr;
    unsigned *dacc = nullptr;
    int rc = -1;
    if (!h_row || !h_col || !h_grid) {
        eng_err_set(err, "map (gpu): out of host memory");
        goto fail;
    }
    for (int y = 0; y < gh; y++)
        for (int t = host_edge(q0, q1, gh, y); t < host_edge(q0, q1, gh, y + 1); t++) h_row[t - q0] = y;
    for (int x = 0; x < gw; x++)
        for (int t = host_edge(k0, k1, gw, x); t < host_edge(k0, k1, gw, x + 1); t++) h_col[t - k0] = x;
    {
        /* Q and K rows [0, q1) (pass 1 and the key tiles need nothing later than the last query). */
        const size_t rows = (size_t)q1;
        CUDA_TRY(cudaMalloc((void **)&dq, rows * d * 4));
        CUDA_TRY(cudaMalloc((void **)&dk, rows * d * 4));
        CUDA_TRY(cudaMalloc((void **)&dlse, (size_t)n * 4));
        CUDA_TRY(cudaMalloc((void **)&drow, (size_t)nq * 4));
        CUDA_TRY(cudaMalloc((void **)&dcol, (size_t)nk * 4));
        CUDA_TRY(cudaMalloc((void **)&dacc, cells * 4));
        CUDA_TRY(cudaMalloc((void **)&dgrid, cells * 4));
        CUDA_TRY(cudaMemcpy2DAsync(dq, (size_t)d * 4, q, (size_t)q_stride * 4, (size_t)d * 4, rows,
                                   cudaMemcpyHostToDevice, st));
        CUDA_TRY(cudaMemcpy2DAsync(dk, (size_t)d * 4, k, (size_t)k_stride * 4, (size_t)d * 4, rows,
                                   cudaMemcpyHostToDevice, st));
        CUDA_TRY(cudaMemcpyAsync(drow, h_row, (size_t)nq * 4, cudaMemcpyHostToDevice, st));
        CUDA_TRY(cudaMemcpyAsync(dcol, h_col, (size_t)nk * 4, cudaMemcpyHostToDevice, st));
        if (lse) CUDA_TRY(cudaMemcpyAsync(dlse + q0, lse + q0, (size_t)nq * 4, cudaMemcpyHostToDevice, st));
        map_args A = {};
        A.n = n, A.d = d, A.q0 = q0, A.q1 = q1, A.k0 = k0, A.k1 = k1, A.gw = gw, A.gh = gh;
        A.pool_max = o->pool == ENG_POOL_MAX;
        A.q = dq, A.k = dk, A.row_of = drow, A.col_of = dcol, A.lse = dlse, A.acc = dacc;
        if (ix) {
            const size_t nrb = (size_t)ix->n_rb, mb = ix->max_blocks > 0 ? ix->max_blocks : 1,
                         mc = ix->max_cols > 0 ? ix->max_cols : 1;
            CUDA_TRY(cudaMalloc((void **)&dbc, nrb * 4));
            CUDA_TRY(cudaMalloc((void **)&dcc, nrb * 4));
            CUDA_TRY(cudaMalloc((void **)&dbo, nrb * mb * 4));
            CUDA_TRY(cudaMalloc((void **)&dci, nrb * mc * 4));
            CUDA_TRY(cudaMemcpyAsync(dbc, ix->block_count, nrb * 4, cudaMemcpyHostToDevice, st));
            CUDA_TRY(cudaMemcpyAsync(dcc, ix->column_count, nrb * 4, cudaMemcpyHostToDevice, st));
            if (ix->max_blocks > 0)
                CUDA_TRY(cudaMemcpyAsync(dbo, ix->block_offset, nrb * ix->max_blocks * 4, cudaMemcpyHostToDevice, st));
            if (ix->max_cols > 0)
                CUDA_TRY(cudaMemcpyAsync(dci, ix->column_index, nrb * ix->max_cols * 4, cudaMemcpyHostToDevice, st));
            A.bc = dbc, A.bo = dbo, A.cc = dcc, A.ci = dci, A.max_blocks = ix->max_blocks, A.max_cols = ix->max_cols;
            A.sink = ix->sink, A.window = ix->window;
        }
        const float scale = 1.0f / sqrtf((float)d);
        const size_t smem = (size_t)2 * d * MB * 4;
        const int rb0 = q0 / MB, rb1 = (q1 - 1) / MB + 1;
        CUDA_TRY(cudaFuncSetAttribute(map_lse, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        CUDA_TRY(cudaFuncSetAttribute(map_pool, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        if (!lse) {
            map_lse<<<rb1 - rb0, MT, smem, st>>>(A, rb0, rb1, scale);
            LAUNCH_TRY("map_lse");
        }
        const unsigned init = A.pool_max ? 0x007fffffu /* fkey(-inf) */ : 0u /* +0.0f */;
        map_init<<<(unsigned)((cells + 255) / 256 < 4096 ? (cells + 255) / 256 : 4096), 256, 0, st>>>(dacc, cells, init);
        LAUNCH_TRY("map_init");
        map_pool<<<rb1 - rb0, MT, smem, st>>>(A, rb0, rb1, scale);
        LAUNCH_TRY("map_pool");
        map_finish<<<(unsigned)((cells + 255) / 256), 256, 0, st>>>(dacc, q0, q1, k0, k1, gw, gh, A.pool_max, o->empty,
                                                                    dgrid);
        LAUNCH_TRY("map_finish");
        CUDA_TRY(cudaMemcpyAsync(h_grid, dgrid, cells * 4, cudaMemcpyDeviceToHost, st));
        CUDA_TRY(cudaStreamSynchronize(st));
    }
    /* nearest-neighbour expansion to w x h (identity unless zoomed in), as eng_map.c grid_expand */
    for (int y = 0; y < o->h; y++) {
        const int gy = (int)((long long)y * gh / o->h);
        for (int x = 0; x < o->w; x++)
            out[(size_t)y * o->w + x] = h_grid[(size_t)gy * gw + (int)((long long)x * gw / o->w)];
    }
    rc = 0;
fail:
    if (rc) cudaStreamSynchronize(st); /* nothing in flight may still read the host buffers */
    cudaFree(dq), cudaFree(dk), cudaFree(dlse), cudaFree(dgrid), cudaFree(drow), cudaFree(dcol), cudaFree(dacc);
    cudaFree(dbc), cudaFree(dbo), cudaFree(dcc), cudaFree(dci);
    free(h_row), free(h_col), free(h_grid);
    return rc;
}
