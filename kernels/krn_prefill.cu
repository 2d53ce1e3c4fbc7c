/* krn_prefill: the GPU prefill (see krn_prefill.h), layer by layer, readable top to bottom like
 * engine/eng_cpu.c: embedding, RMSNorm, fused QKV projection (+ Qwen2 biases), rotate-half RoPE,
 * causal GQA attention (dense kernel, or per-head patterns through GPU-built indexes and the sparse
 * kernel), o_proj with the residual folded into the GEMM (beta = 1), SwiGLU MLP in row chunks,
 * final norm, LM head in row chunks (argmax, next-token log-probs, last logits). Weights are
 * uploaded once as bf16 (raw copy for bf16 files). Memory is estimated before any work and a
 * model that does not fit is refused with the estimate. */
#include "krn_prefill.h"

#include "krn_attn.h"
#include "krn_common.cuh"
#include "krn_dma.h"
#include "krn_index.h"
#include "krn_ops.h"
#include "krn_xflex.h"

#include <cublas_v2.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "eng_cpu.h"
#include "eng_dma.h"
#include "eng_pattern.h"
#include "eng_reshape.h"
}

#define LM_ROWS 1024  /* LM-head rows per chunk: (LM_ROWS, V) f32 logits */
#define MLP_ROWS 8192 /* MLP rows per chunk: (MLP_ROWS, 2F) + (MLP_ROWS, F) bf16 */

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

double now_s() {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

struct dlayer {
    bf16 *attn_norm, *wqkv, *bqkv, *wo, *ffn_norm, *wgu, *wdown;
};

/* Copy a tensor's elements [0, numel) to dst (bf16 device). Synthetic models (seed != 0, no data)
 * fill on the device instead: 1-D tensors of a norm get 1, biases uniform +-0.02, matrices uniform
 * with std 1/sqrt(in_features) (shape[1]) so activations keep their scale through the layers, the
 * embedding uniform [-1, 1). `salt` makes every tensor's stream different. */
int upload(const eng_tensor *t, bf16 *dst, float *stage, size_t stage_elems, cudaStream_t st, eng_err *err,
           uint64_t seed = 0, uint64_t salt = 0) {
    if (seed) {
        if (t->ndim == 1 && strstr(t->name, "norm")) return krn_fill_bf16(dst, (size_t)t->numel, 1.0f, st, err);
        const float sc = t->ndim == 1 ? 0.02f : strstr(t->name, "embed") ? 1.0f : sqrtf(3.0f / (float)t->shape[1]);
        return krn_fill_random_bf16(dst, (size_t)t->numel, seed * 0x9e3779b97f4a7c15ull + salt, sc, st, err);
    }
    /* Every copy is ordered on st (a non-blocking stream: a plain cudaMemcpy from pageable memory
     * may still be in flight when st's kernels read the destination). */
    if (t->dtype == ENG_DT_BF16) {
        CUDA_RET(cudaMemcpyAsync(dst, t->data, (size_t)t->numel * 2, cudaMemcpyHostToDevice, st));
        CUDA_RET(cudaStreamSynchronize(st));
        return 0;
    }
    float *h = (float *)malloc(stage_elems * sizeof(float));
    if (!h) return eng_err_set(err, "out of host memory converting %s", t->name);
    for (int64_t o = 0; o < t->numel; o += (int64_t)stage_elems) {
        int64_t m = t->numel - o < (int64_t)stage_elems ? t->numel - o : (int64_t)stage_elems;
        eng_tensor_to_f32(t, o, m, h);
        cudaError_t e = cudaMemcpyAsync(stage, h, (size_t)m * 4, cudaMemcpyHostToDevice, st);
        if (e != cudaSuccess) {
            free(h);
            return eng_err_set(err, "upload %s: %s", t->name, cudaGetErrorString(e));
        }
        if (krn_f32_to_bf16(stage, dst + o, (size_t)m, st, err)) {
            free(h);
            return -1;
        }
        e = cudaStreamSynchronize(st);
        if (e != cudaSuccess) {
            free(h);
            return eng_err_set(err, "upload %s: %s", t->name, cudaGetErrorString(e));
        }
    }
    free(h);
    return 0;
}

/* upload of t times s: longrope's cos/sin factor (eng_cpu_rope_table) folded into the q and k
 * projections, since RoPE is linear (rope(s q) = s rope(q)); the RoPE kernel stays as it is. */
int upload_scaled(const eng_tensor *t, float s, bf16 *dst, float *stage, size_t stage_elems, cudaStream_t st,
                  eng_err *err, uint64_t seed, uint64_t salt) {
    if (s == 1.f || seed || !t->data) return upload(t, dst, stage, stage_elems, st, err, seed, salt);
    float *h = (float *)malloc(sizeof(float) * (size_t)t->numel);
    if (!h) return eng_err_set(err, "out of host memory scaling %s", t->name);
    eng_tensor_to_f32(t, 0, t->numel, h);
    for (int64_t i = 0; i < t->numel; i++) h[i] *= s;
    eng_tensor f = *t;
    f.dtype = ENG_DT_F32, f.data = h;
    const int rc = upload(&f, dst, stage, stage_elems, st, err);
    free(h);
    return rc;
}

/* Y (n, out) = X (n, in) W^T (+ beta Y); W (out, in) row-major, all bf16, f32 accumulate. */
int linear(cublasHandle_t h, const bf16 *x, int n, int in, const bf16 *w, int out, float beta, bf16 *y, int ldy,
           eng_err *err) {
    const float one = 1.f;
    cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, w, CUDA_R_16BF, in, x, CUDA_R_16BF,
                                    in, &beta, y, CUDA_R_16BF, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) return eng_err_set(err, "cuBLAS GEMM (%d x %d x %d): status %d", n, out, in, (int)s);
    return 0;
}

/* Per LM-head row r (of nr, global row p0 + r): max / first argmax / log-sum-exp over the chunk's
 * vocab slice, merged online into rmax/rsum/amv/am; the next token's logit into tgt. */
__global__ void lm_rows(const float *logits, int nr, int nv, int v0, int p0, int n, const int *tokens, float *rmax,
                        float *rsum, float *amv, int *am, float *tgt) {
    const int r = blockIdx.x, i = p0 + r;
    const float *row = logits + (size_t)r * nv;
    __shared__ float sm[32];
    __shared__ int si[32];
    float mx = -INFINITY;
    int ai = 0x7fffffff;
    for (int c = threadIdx.x; c < nv; c += blockDim.x)
        if (row[c] > mx) mx = row[c], ai = c;
    for (int o = 16; o; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, mx, o);
        int i2 = __shfl_xor_sync(0xffffffffu, ai, o);
        if (m2 > mx || (m2 == mx && i2 < ai)) mx = m2, ai = i2;
    }
    if ((threadIdx.x & 31) == 0) sm[threadIdx.x >> 5] = mx, si[threadIdx.x >> 5] = ai;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)blockDim.x / 32; w++)
            if (sm[w] > sm[0] || (sm[w] == sm[0] && si[w] < si[0])) sm[0] = sm[w], si[0] = si[w];
    }
    __syncthreads();
    mx = sm[0];
    ai = si[0];
    __syncthreads();
    float s = 0.f;
    for (int c = threadIdx.x; c < nv; c += blockDim.x) s += expf(row[c] - mx);
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) sm[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < (int)blockDim.x / 32; w++) t += sm[w];
        if (mx > amv[i]) amv[i] = mx, am[i] = v0 + ai;
        const float M = fmaxf(mx, rmax[i]);
        rsum[i] = rsum[i] * expf(rmax[i] - M) + t * expf(mx - M);
        rmax[i] = M;
        if (i + 1 < n && tokens[i + 1] >= v0 && tokens[i + 1] < v0 + nv) tgt[i] = row[tokens[i + 1] - v0];
    }
}

__global__ void init_rows(float *rmax, float *rsum, float *amv, float *tgt, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) rmax[i] = -INFINITY, rsum[i] = 0.f, amv[i] = -INFINITY, tgt[i] = 0.f;
}

/* Copy a strided (n, w) bf16 slice into host f32 (n, w) through device scratch (n*w f32). */
int keep_slice(const bf16 *src, int n, int w, int stride, bf16 *tmp, float *tmpf, float *host, cudaStream_t st,
               eng_err *err) {
    CUDA_RET(cudaMemcpy2DAsync(tmp, (size_t)w * 2, src, (size_t)stride * 2, (size_t)w * 2, n, cudaMemcpyDeviceToDevice, st));
    if (krn_bf16_to_f32(tmp, tmpf, (size_t)n * w, st, err)) return -1;
    CUDA_RET(cudaMemcpyAsync(host, tmpf, (size_t)n * w * 4, cudaMemcpyDeviceToHost, st));
    CUDA_RET(cudaStreamSynchronize(st));
    return 0;
}

/* Kinds with a GPU index builder: dense, A-shape, VS, BS (krn_index_build), XAttention and
 * FlexPrefill (krn_xflex_build). */
bool gpu_built(const eng_pattern *p) {
    return p->kind == ENG_PAT_DENSE || p->kind == ENG_PAT_ASHAPE || p->kind == ENG_PAT_VS || p->kind == ENG_PAT_BS ||
           krn_xflex_kind(p->kind);
}

/* DMA / N:M heads run by their own kernels (krn_dma.h); N:M whose m is not a power of two stays
 * on the CPU. */
bool gpu_masked(const eng_pattern *p) {
    return p && (p->kind == ENG_PAT_DMA || (p->kind == ENG_PAT_NM && krn_nm_supported(p->nm_n, p->nm_m)));
}

/* Heads that need host work in the prefill:
 * the whole head on the CPU (N:M without a GPU kernel), or the reshape pass after the kernel. */
bool needs_host(const eng_pattern *p) {
    return p && p->kind != ENG_PAT_DENSE && ((!gpu_built(p) && !gpu_masked(p)) || p->reshape);
}

/* Host f32 (n, d) rows -> head h's columns of the device bf16 (n, stride) tensor dst, through
 * device scratch tmpf (n*d f32) and tmp (n*d bf16). */
int put_head(const float *host, int n, int d, bf16 *dst, int stride, bf16 *tmp, float *tmpf, cudaStream_t st,
             eng_err *err) {
    CUDA_RET(cudaMemcpyAsync(tmpf, host, (size_t)n * d * 4, cudaMemcpyHostToDevice, st));
    if (krn_f32_to_bf16(tmpf, tmp, (size_t)n * d, st, err)) return -1;
    CUDA_RET(cudaMemcpy2DAsync(dst, (size_t)stride * 2, tmp, (size_t)d * 2, (size_t)d * 2, n, cudaMemcpyDeviceToDevice, st));
    CUDA_RET(cudaStreamSynchronize(st));
    return 0;
}

/* Host index hx (eng_index.h) -> head h of the device index ix (ix's capacities must hold hx's
 * counts): rows repacked to ix's strides, band (sink, window) included. Synchronises st. */
int upload_head(krn_index_dev *ix, int h, const eng_head_index *hx, cudaStream_t st, eng_err *err) {
    const int nrb = ix->n_rb, mb = ix->max_blocks, mc = ix->max_cols;
    if (hx->n != ix->n || hx->n_rb != nrb) return eng_err_set(err, "index upload: head for n = %d, index n = %d", hx->n, ix->n);
    for (int rb = 0; rb < nrb; rb++)
        if (hx->block_count[rb] > mb || hx->column_count[rb] > mc)
            return eng_err_set(err, "index upload: head %d row block %d needs %d blocks / %d columns, capacity %d / %d", h,
                               rb, hx->block_count[rb], hx->column_count[rb], mb, mc);
    int *buf = (int *)calloc((size_t)nrb * (2 + (size_t)mb + (size_t)mc) + 2, sizeof(int));
    if (!buf) return eng_err_set(err, "index upload: out of host memory");
    int *bc = buf, *cc = bc + nrb, *bo = cc + nrb, *ci = bo + (size_t)nrb * mb, *band = ci + (size_t)nrb * mc;
    for (int rb = 0; rb < nrb; rb++) {
        bc[rb] = hx->block_count[rb], cc[rb] = hx->column_count[rb];
        for (int i = 0; i < bc[rb]; i++) bo[(size_t)rb * mb + i] = hx->block_offset[(size_t)rb * hx->max_blocks + i];
        for (int i = 0; i < cc[rb]; i++) ci[(size_t)rb * mc + i] = hx->column_index[(size_t)rb * hx->max_cols + i];
    }
    band[0] = hx->sink, band[1] = hx->window;
    cudaError_t e = cudaMemcpyAsync(ix->block_count + (size_t)h * nrb, bc, sizeof(int) * nrb, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(ix->column_count + (size_t)h * nrb, cc, sizeof(int) * nrb, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess && mb)
        e = cudaMemcpyAsync(ix->block_offset + (size_t)h * nrb * mb, bo, sizeof(int) * nrb * mb, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess && mc)
        e = cudaMemcpyAsync(ix->column_index + (size_t)h * nrb * mc, ci, sizeof(int) * nrb * mc, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess) e = cudaMemcpyAsync(ix->band + 2 * (size_t)h, band, sizeof(int) * 2, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    free(buf);
    if (e != cudaSuccess) return eng_err_set(err, "index upload: %s", cudaGetErrorString(e));
    return 0;
}

/* Head h of the device index ix -> a host index hx with ix's capacities (free with eng_index_free):
 * the exact index the sparse kernel ran, for the reshape pass. Synchronises st. */
int download_head(const krn_index_dev *ix, int h, eng_head_index *hx, cudaStream_t st, eng_err *err) {
    const int nrb = ix->n_rb, mb = ix->max_blocks, mc = ix->max_cols;
    if (eng_index_alloc(hx, ix->n, mb, mc, err)) return -1;
    int band[2] = {0, 0};
    cudaError_t e = cudaMemcpyAsync(hx->block_count, ix->block_count + (size_t)h * nrb, sizeof(int) * nrb,
                                    cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(hx->column_count, ix->column_count + (size_t)h * nrb, sizeof(int) * nrb, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess && mb)
        e = cudaMemcpyAsync(hx->block_offset, ix->block_offset + (size_t)h * nrb * mb, sizeof(int) * nrb * mb,
                            cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess && mc)
        e = cudaMemcpyAsync(hx->column_index, ix->column_index + (size_t)h * nrb * mc, sizeof(int) * nrb * mc,
                            cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaMemcpyAsync(band, ix->band + 2 * (size_t)h, sizeof band, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) {
        eng_index_free(hx);
        return eng_err_set(err, "index download: %s", cudaGetErrorString(e));
    }
    hx->sink = band[0], hx->window = band[1];
    return 0;
}

} /* namespace */

/* Bytes a prefill needs on the GPU: weights, activations, index storage and builder scratch,
 * plus 256 MiB for cuBLAS and slack; *mb / *mc the index capacities over every (layer, head). */
static size_t estimate(const eng_config *c, int n, const eng_pattern_cfg *pc, int keep_qkv, int keep_lse, int tied,
                       size_t *w_out, size_t *act_out, size_t *ix_out, int *mb_out, int *mc_out) {
    const int C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, L = c->n_layers;
    const int H = c->n_heads, Hkv = c->n_kv_heads, d = c->head_dim, qd = H * d, qkvd = qd + 2 * Hkv * d;
    const size_t N = (size_t)n;
    const size_t layer_w = (size_t)2 * C + (size_t)qkvd * C + (c->qkv_bias ? qkvd : 0) + (size_t)C * qd +
                           (size_t)3 * F * C;
    const size_t w_bytes = 2 * (layer_w * L + (size_t)V * C * (tied ? 1 : 2) + C);
    const int mr = n < MLP_ROWS ? n : MLP_ROWS, lr = n < LM_ROWS ? n : LM_ROWS;
    int mb = 0, mc = 0, host = 0, dma = 0, bs = 0;
    if (pc)
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++) {
                int b = 0, cc = 0; /* DMA / N:M heads with a kernel use no index */
                if (!gpu_masked(eng_pattern_cfg_get(pc, l, h))) krn_index_capacity(eng_pattern_cfg_get(pc, l, h), n, &b, &cc);
                mb = b > mb ? b : mb, mc = cc > mc ? cc : mc;
                host |= needs_host(eng_pattern_cfg_get(pc, l, h));
                dma |= eng_pattern_cfg_get(pc, l, h)->kind == ENG_PAT_DMA;
                bs |= eng_pattern_cfg_get(pc, l, h)->kind == ENG_PAT_BS;
            }
    const size_t n_rb = (N + 63) / 64;
    const size_t act = 2 * (2 * N * C + N * qkvd + N * qd) + 2 * (size_t)mr * 3 * F + 4 * (size_t)lr * V + 16 * N +
                       4 * (size_t)H * N + (keep_qkv ? N * qd * 6 : 0) + (pc && keep_lse ? N * qd * 2 : 0);
    /* + host-work heads: one head's bf16 and f32 staging and the sparse LSE */
    /* index scratch (one buffer, grown to the largest need): the VS estimate, or BS scores if larger */
    const size_t vs_ws = 4 * (size_t)H * 64 * N + 16 * (size_t)H * N, bs_ws = bs ? krn_index_bs_ws_bytes(n, H, Hkv, d) : 0;
    const size_t ixb = (pc ? 4 * (size_t)H * n_rb * (2 + mb + mc) + (bs_ws > vs_ws ? bs_ws : vs_ws) : 0) +
                       (host ? 6 * N * d + 4 * (size_t)H * N : 0) +
                       (dma ? 16 * (size_t)H * N + 4 * (size_t)H * n_rb + 1024 * (size_t)H + 16 : 0); /* krn_mask_ws */
    size_t xfw = 0; /* krn_xflex_build scratch (XAttention / FlexPrefill heads), the largest of any head */
    for (int l = 0; pc && l < L; l++)
        for (int h = 0; h < H; h++) {
            const size_t b = krn_xflex_ws_bytes(eng_pattern_cfg_get(pc, l, h), n, H, d);
            xfw = b > xfw ? b : xfw;
        }
    *w_out = w_bytes, *act_out = act, *ix_out = ixb + xfw, *mb_out = mb, *mc_out = mc;
    return w_bytes + act + ixb + xfw + ((size_t)256 << 20);
}

/* Heads h and h + 1 get the same index from one build call when their patterns agree. */
static bool same_pattern(const eng_pattern *a, const eng_pattern *b) {
    if (!a || !b) return a == b;
    return a->kind == b->kind && a->n_init == b->n_init && a->n_local == b->n_local && a->vertical == b->vertical &&
           a->slash == b->slash && a->topk == b->topk && a->stride == b->stride && a->threshold == b->threshold &&
           a->gamma == b->gamma && a->tau == b->tau && a->min_budget == b->min_budget;
}

/* The prefill proper: weights from m's tensors, or (seed != 0) random on the device with m's
 * shapes; *setup_s receives the seconds spent before the first layer (weights, buffers). */
static int prefill_impl(int dev, cudaStream_t st, const eng_model *m, uint64_t seed, const int *tokens, int n,
                 const eng_prefill_opts *opts, eng_prefill_out *out, double *setup_s, eng_err *err) {
    memset(out, 0, sizeof *out);
    const eng_config *c = &m->cfg;
    const int C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, L = c->n_layers;
    const int H = c->n_heads, Hkv = c->n_kv_heads, d = c->head_dim, qd = H * d, kvd = Hkv * d, qkvd = qd + 2 * kvd;
    const size_t N = (size_t)n;
    const int keep_qkv = opts && opts->keep_qkv, keep_lse = opts && opts->keep_lse;
    const eng_pattern_cfg *pc = opts ? opts->patterns : NULL;
    const double t0 = now_s();
    if (n < 1) return eng_err_set(err, "prefill needs at least one token (got %d)", n);
    if (L < 1 || H < 1 || Hkv < 1 || H % Hkv || !m->layers || C < 1 || F < 1 || V < 1)
        return eng_err_set(err, "%s: model shape not runnable", m->dir);
    if (d != 64 && d != 128) return eng_err_set(err, "%s: head dim %d: the CUDA kernels support 64 and 128", m->dir, d);
    if (c->sliding_window > 0 && n > c->sliding_window)
        return eng_err_set(err, "%s: sliding-window attention (window %d) is not implemented", m->dir, c->sliding_window);
    if (pc && (pc->n_layers != L || pc->n_heads != H))
        return eng_err_set(err, "pattern config is for %d layers x %d heads, the model has %d x %d", pc->n_layers,
                           pc->n_heads, L, H);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return eng_err_set(err, "token %d at position %d is outside the vocabulary [0, %d)", tokens[i], i, V);

    /* ---- memory estimate (bytes) before any allocation ---- */
    const int tied = c->tie_word_embeddings || (!seed && m->lm_head.data == m->embed.data);
    const int mr = n < MLP_ROWS ? n : MLP_ROWS, lr = n < LM_ROWS ? n : LM_ROWS;
    int mb = 0, mc = 0;
    size_t w_bytes, act, ixb;
    const size_t need = estimate(c, n, pc, keep_qkv, keep_lse, tied, &w_bytes, &act, &ixb, &mb, &mc);
    size_t fr = 0, tot = 0;
    CUDA_RET(cudaSetDevice(dev));
    CUDA_RET(cudaMemGetInfo(&fr, &tot));
    if (need > fr)
        return eng_err_set(err,
                           "%d-token prefill of %s needs about %.1f GiB of GPU memory (weights %.1f, activations "
                           "%.1f, index %.1f); %.1f GiB free of %.1f",
                           n, m->dir, need / 1073741824.0, w_bytes / 1073741824.0, act / 1073741824.0,
                           ixb / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0);

    cublasHandle_t blas = nullptr;
    krn_index_ws *ws = nullptr;
    krn_xflex_ws *xws = nullptr; /* XAttention / FlexPrefill index builders' scratch */
    krn_index_dev ix = {};
    krn_mask_ws mws = {}; /* DMA heads' scores and thresholds (krn_dma.h) */
    dlayer *dl = (dlayer *)calloc((size_t)L, sizeof *dl);
    bf16 *embed = nullptr, *lmw = nullptr, *fnorm = nullptr, *x = nullptr, *xn = nullptr, *qkv = nullptr, *att = nullptr;
    bf16 *gu = nullptr, *hbuf = nullptr, *tmp = nullptr;
    float *stage = nullptr, *inv = nullptr, *logits = nullptr, *rows = nullptr, *tmpf = nullptr, *lse_d = nullptr;
    int *dtok = nullptr, *am = nullptr;
    float *hinv = (float *)malloc(sizeof(float) * (size_t)d);
    bf16 *scratch_out = nullptr;
    const size_t stage_elems = (size_t)1 << 24;
    int rc = -1, sparse_any = 0, host_any_cfg = 0;
    unsigned long long *d_pairs = nullptr; /* [L] entries the index computed (patterns given) */
    int *ix_heads = nullptr;               /* [L] heads that ran an index; -1: an all-dense layer */
    /* heads with host work (needs_host): one head's Q/K/V, output and LSE as host f32 (n, d) / [n],
     * device staging for them, the sparse LSE (the kept LSE is the dense one), host indexes [H] */
    float *hq = nullptr, *hk = nullptr, *hv = nullptr, *ho = nullptr, *hl = nullptr, *hd_tmpf = nullptr, *lse_sp = nullptr;
    bf16 *hd_tmp = nullptr;
    eng_head_index *hix = nullptr;
    float rope_scale = 1.f;
    const eng_pattern **pat = (const eng_pattern **)calloc((size_t)H, sizeof *pat);
    if (!dl || !hinv || !pat) {
        eng_err_set(err, "out of host memory");
        goto fail;
    }
    out->n = n, out->n_layers = L, out->n_heads = H, out->n_kv_heads = Hkv, out->head_dim = d, out->vocab = V;
    out->last_logits = (float *)malloc(sizeof(float) * (size_t)V);
    out->argmax = (int *)malloc(sizeof(int) * N);
    out->next_logprob = (float *)malloc(sizeof(float) * (N > 1 ? N - 1 : 1));
    out->attn_seconds = (double *)calloc((size_t)L, sizeof(double));
    if (!out->last_logits || !out->argmax || !out->next_logprob || !out->attn_seconds) {
        eng_err_set(err, "out of host memory for the prefill results");
        goto fail;
    }
    if (pc) {
        out->density = (double *)calloc((size_t)L, sizeof(double));
        ix_heads = (int *)calloc((size_t)L, sizeof(int));
        if (!out->density || !ix_heads) {
            eng_err_set(err, "out of host memory for the prefill results");
            goto fail;
        }
        CUDA_TRY(cudaMalloc((void **)&d_pairs, sizeof(unsigned long long) * (size_t)L));
        CUDA_TRY(cudaMemsetAsync(d_pairs, 0, sizeof(unsigned long long) * (size_t)L, st));
    }
    if (keep_qkv) {
        out->q = (float *)malloc(sizeof(float) * L * N * qd);
        out->k = (float *)malloc(sizeof(float) * L * N * kvd);
        out->v = (float *)malloc(sizeof(float) * L * N * kvd);
        if (!out->q || !out->k || !out->v) {
            eng_err_set(err, "out of host memory keeping Q/K/V (%.2f GB)", 4.0 * L * (double)N * (qd + 2.0 * kvd) / 1e9);
            goto fail;
        }
    }
    if (keep_lse && !(out->lse = (float *)malloc(sizeof(float) * L * (size_t)H * N))) {
        eng_err_set(err, "out of host memory keeping the LSE");
        goto fail;
    }

    /* ---- weights ---- */
    BLAS_TRY(cublasCreate(&blas));
    BLAS_TRY(cublasSetStream(blas, st));
    CUDA_TRY(cudaMalloc((void **)&stage, stage_elems * 4));
    CUDA_TRY(cudaMalloc((void **)&embed, (size_t)V * C * 2));
    if (upload(&m->embed, embed, stage, stage_elems, st, err, seed, 1)) goto fail;
    if (tied) lmw = embed;
    else {
        CUDA_TRY(cudaMalloc((void **)&lmw, (size_t)V * C * 2));
        if (upload(&m->lm_head, lmw, stage, stage_elems, st, err, seed, 2)) goto fail;
    }
    CUDA_TRY(cudaMalloc((void **)&fnorm, (size_t)C * 2));
    if (upload(&m->final_norm, fnorm, stage, stage_elems, st, err, seed, 3)) goto fail;
    rope_scale = eng_cpu_rope_table(c, d, n, hinv); /* longrope: factors for n positions, cos/sin scale */
    for (int l = 0; l < L; l++) {
        const eng_layer_weights *w = &m->layers[l];
        dlayer *D = &dl[l];
        CUDA_TRY(cudaMalloc((void **)&D->attn_norm, (size_t)C * 2));
        CUDA_TRY(cudaMalloc((void **)&D->ffn_norm, (size_t)C * 2));
        CUDA_TRY(cudaMalloc((void **)&D->wqkv, (size_t)qkvd * C * 2));
        CUDA_TRY(cudaMalloc((void **)&D->wo, (size_t)C * qd * 2));
        CUDA_TRY(cudaMalloc((void **)&D->wgu, (size_t)2 * F * C * 2));
        CUDA_TRY(cudaMalloc((void **)&D->wdown, (size_t)C * F * 2));
        const uint64_t s0 = 16 + 16 * (uint64_t)l;
        if (upload(&w->attn_norm, D->attn_norm, stage, stage_elems, st, err, seed, s0) ||
            upload(&w->ffn_norm, D->ffn_norm, stage, stage_elems, st, err, seed, s0 + 1) ||
            upload_scaled(&w->wq, rope_scale, D->wqkv, stage, stage_elems, st, err, seed, s0 + 2) ||
            upload_scaled(&w->wk, rope_scale, D->wqkv + (size_t)qd * C, stage, stage_elems, st, err, seed, s0 + 3) ||
            upload(&w->wv, D->wqkv + (size_t)(qd + kvd) * C, stage, stage_elems, st, err, seed, s0 + 4) ||
            upload(&w->wo, D->wo, stage, stage_elems, st, err, seed, s0 + 5) ||
            upload(&w->w_gate, D->wgu, stage, stage_elems, st, err, seed, s0 + 6) ||
            upload(&w->w_up, D->wgu + (size_t)F * C, stage, stage_elems, st, err, seed, s0 + 7) ||
            upload(&w->w_down, D->wdown, stage, stage_elems, st, err, seed, s0 + 8))
            goto fail;
        if (seed ? c->qkv_bias : w->bq.data != nullptr) {
            CUDA_TRY(cudaMalloc((void **)&D->bqkv, (size_t)qkvd * 2));
            if (upload_scaled(&w->bq, rope_scale, D->bqkv, stage, stage_elems, st, err, seed, s0 + 9) ||
                upload_scaled(&w->bk, rope_scale, D->bqkv + qd, stage, stage_elems, st, err, seed, s0 + 10) ||
                upload(&w->bv, D->bqkv + qd + kvd, stage, stage_elems, st, err, seed, s0 + 11))
                goto fail;
        }
    }
    CUDA_TRY(cudaMalloc((void **)&inv, (size_t)d * 4));
    CUDA_TRY(cudaMemcpyAsync(inv, hinv, (size_t)d / 2 * 4, cudaMemcpyHostToDevice, st));

    /* ---- activations ---- */
    CUDA_TRY(cudaMalloc((void **)&x, N * C * 2));
    CUDA_TRY(cudaMalloc((void **)&xn, N * C * 2));
    CUDA_TRY(cudaMalloc((void **)&qkv, N * qkvd * 2));
    CUDA_TRY(cudaMalloc((void **)&att, N * qd * 2));
    CUDA_TRY(cudaMalloc((void **)&gu, (size_t)mr * 2 * F * 2));
    CUDA_TRY(cudaMalloc((void **)&hbuf, (size_t)mr * F * 2));
    CUDA_TRY(cudaMalloc((void **)&dtok, N * 4));
    CUDA_TRY(cudaMalloc((void **)&lse_d, (size_t)H * N * 4));
    CUDA_TRY(cudaMemcpyAsync(dtok, tokens, N * 4, cudaMemcpyHostToDevice, st));
    CUDA_TRY(cudaStreamSynchronize(st));
    if (keep_qkv) {
        CUDA_TRY(cudaMalloc((void **)&tmp, N * qd * 2));
        CUDA_TRY(cudaMalloc((void **)&tmpf, N * qd * 4));
    }
    if (pc) {
        if (krn_index_ws_create(&ws, err) || krn_xflex_ws_create(&xws, err) ||
            krn_index_dev_alloc(&ix, H, n, mb, mc, err))
            goto fail;
        if (keep_lse) CUDA_TRY(cudaMalloc((void **)&scratch_out, N * qd * 2));
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++) host_any_cfg |= needs_host(eng_pattern_cfg_get(pc, l, h));
        for (int l = 0; l < L && !mws.z; l++)
            for (int h = 0; h < H && !mws.z; h++)
                if (eng_pattern_cfg_get(pc, l, h)->kind == ENG_PAT_DMA && krn_mask_ws_alloc(&mws, H, n, err)) goto fail;
    }
    if (host_any_cfg) {
        hq = (float *)malloc(N * d * 4), hk = (float *)malloc(N * d * 4), hv = (float *)malloc(N * d * 4);
        ho = (float *)malloc(N * d * 4), hl = (float *)malloc(N * 4);
        hix = (eng_head_index *)calloc((size_t)H, sizeof *hix);
        if (!hq || !hk || !hv || !ho || !hl || !hix) {
            eng_err_set(err, "out of host memory for the host-built pattern heads");
            goto fail;
        }
        CUDA_TRY(cudaMalloc((void **)&hd_tmp, N * d * 2));
        CUDA_TRY(cudaMalloc((void **)&hd_tmpf, N * d * 4));
        CUDA_TRY(cudaMalloc((void **)&lse_sp, (size_t)H * N * 4));
    }
    if (krn_embed(embed, dtok, n, C, x, st, err)) goto fail;
    CUDA_TRY(cudaStreamSynchronize(st));
    if (setup_s) *setup_s = now_s() - t0;

    for (int l = 0; l < L; l++) {
        const dlayer *D = &dl[l];
        if (opts && opts->cancel && *opts->cancel) {
            eng_err_set(err, "cancelled");
            goto fail;
        }
        if (opts && opts->progress) opts->progress(opts->progress_ctx, l, L);
        if (krn_rmsnorm(x, D->attn_norm, n, C, c->rms_norm_eps, xn, st, err)) goto fail;
        if (linear(blas, xn, n, C, D->wqkv, qkvd, 0.f, qkv, qkvd, err)) goto fail;
        if (D->bqkv && krn_add_bias(qkv, D->bqkv, n, qkvd, st, err)) goto fail;
        if (krn_rope(qkv, n, H, d, qkvd, 0, inv, st, err) || krn_rope(qkv + qd, n, Hkv, d, qkvd, 0, inv, st, err))
            goto fail;
        if (keep_qkv && (keep_slice(qkv, n, qd, qkvd, tmp, tmpf, out->q + (size_t)l * N * qd, st, err) ||
                         keep_slice(qkv + qd, n, kvd, qkvd, tmp, tmpf, out->k + (size_t)l * N * kvd, st, err) ||
                         keep_slice(qkv + qd + kvd, n, kvd, qkvd, tmp, tmpf, out->v + (size_t)l * N * kvd, st, err)))
            goto fail;
        CUDA_TRY(cudaStreamSynchronize(st));
        const double ta = now_s();
        krn_attn_args a = {n, H, Hkv, d, qkv, qkv + qd, qkv + qd + kvd, qkvd, qkvd, att, qd, lse_d};
        sparse_any = 0;
        for (int h = 0; h < H; h++) {
            pat[h] = pc ? eng_pattern_cfg_get(pc, l, h) : NULL;
            sparse_any |= pat[h] && pat[h]->kind != ENG_PAT_DENSE;
        }
        if (!sparse_any) {
            if (krn_attn_dense(&a, 0, st, err)) goto fail;
        } else {
            /* XAttention / FlexPrefill build on the GPU with the others (krn_xflex_build may grow
             * ix for a FlexPrefill vertical-slash head's columns, keeping what is written); DMA /
             * N:M: no index (counts zeroed), their kernels run after the sparse one (an N:M head
             * without a GPU kernel: an empty index here, the head runs on the CPU below) */
            int need_b = 0, need_c = 0, host_any = 0;
            for (int h = 0; h < H; h++) {
                host_any |= needs_host(pat[h]);
                if (gpu_built(pat[h]) || gpu_masked(pat[h])) continue;
                eng_head_index *hx = &hix[h];
                if (eng_pattern_is_index(pat[h]->kind)) {
                    if (keep_slice(qkv + (size_t)h * d, n, d, qkvd, hd_tmp, hd_tmpf, hq, st, err) ||
                        keep_slice(qkv + qd + (size_t)(h / (H / Hkv)) * d, n, d, qkvd, hd_tmp, hd_tmpf, hk, st, err))
                        goto fail;
                    eng_err e;
                    if (eng_pattern_build(pat[h], hq, d, hk, d, n, d, hx, &e)) {
                        eng_err_set(err, "layer %d head %d: %s", l, h, e.msg);
                        goto fail;
                    }
                } else if (eng_index_alloc(hx, n, 0, 0, err)) {
                    goto fail;
                }
                for (int rb = 0; rb < hx->n_rb; rb++) {
                    need_b = hx->block_count[rb] > need_b ? hx->block_count[rb] : need_b;
                    need_c = hx->column_count[rb] > need_c ? hx->column_count[rb] : need_c;
                }
            }
            if (need_b > ix.max_blocks || need_c > ix.max_cols) { /* grow before any head is written */
                const int nb = need_b > ix.max_blocks ? need_b : ix.max_blocks;
                const int nc = need_c > ix.max_cols ? need_c : ix.max_cols;
                krn_index_dev_free(&ix);
                if (krn_index_dev_alloc(&ix, H, n, nb, nc, err)) goto fail;
            }
            for (int h = 0; h < H;) { /* runs of GPU-built heads with one pattern: one build call */
                if (gpu_masked(pat[h])) { /* an empty index row: the sparse kernel writes zeros, overwritten below */
                    CUDA_TRY(cudaMemsetAsync(ix.block_count + (size_t)h * ix.n_rb, 0, sizeof(int) * ix.n_rb, st));
                    CUDA_TRY(cudaMemsetAsync(ix.column_count + (size_t)h * ix.n_rb, 0, sizeof(int) * ix.n_rb, st));
                    h++;
                    continue;
                }
                if (!gpu_built(pat[h])) {
                    if (upload_head(&ix, h, &hix[h], st, err)) goto fail;
                    eng_index_free(&hix[h]);
                    h++;
                    continue;
                }
                int e = h + 1;
                while (e < H && gpu_built(pat[e]) && same_pattern(pat[e], pat[h])) e++;
                if (krn_xflex_kind(pat[h]->kind) ? krn_xflex_build(pat[h], &a, h, e - h, &ix, xws, st, err)
                                                 : krn_index_build(pat[h], &a, h, e - h, &ix, ws, st, err))
                    goto fail;
                h = e;
            }
            if (keep_lse) { /* the kept LSE is the dense one: a dense pass into scratch */
                krn_attn_args ad = a;
                ad.out = scratch_out;
                if (krn_attn_dense(&ad, 0, st, err)) goto fail;
                a.lse = host_any ? lse_sp : nullptr; /* the reshape pass needs the sparse LSE */
            }
            if (krn_attn_sparse(&a, &ix, st, err)) goto fail;
            for (int h = 0; h < H;) { /* DMA / N:M heads: their kernels, runs of one mask in one launch */
                if (!gpu_masked(pat[h])) {
                    h++;
                    continue;
                }
                int e = h + 1;
                while (e < H && krn_mask_same(pat[e], pat[h])) e++;
                eng_err me;
                if (krn_mask_attend(pat[h], &a, h, e - h, &mws, nullptr, st, &me)) {
                    eng_err_set(err, "layer %d heads %d-%d (%s): %s", l, h, e - 1, eng_pattern_kind_name(pat[h]->kind), me.msg);
                    goto fail;
                }
                h = e;
            }
            /* host passes: N:M heads without a GPU kernel on the CPU (eng_dma_attend, reshape
             * included), reshape of index, DMA and N:M heads on the exact mask the kernel ran
             * (eng_reshape_apply on (out, lse)) */
            for (int h = 0; h < H && host_any; h++) {
                if (!needs_host(pat[h]) || (eng_pattern_is_index(pat[h]->kind) && !pat[h]->reshape)) continue;
                const int g = h / (H / Hkv);
                CUDA_TRY(cudaStreamSynchronize(st));
                if (keep_slice(qkv + (size_t)h * d, n, d, qkvd, hd_tmp, hd_tmpf, hq, st, err) ||
                    keep_slice(qkv + qd + (size_t)g * d, n, d, qkvd, hd_tmp, hd_tmpf, hk, st, err) ||
                    keep_slice(qkv + qd + kvd + (size_t)g * d, n, d, qkvd, hd_tmp, hd_tmpf, hv, st, err))
                    goto fail;
                eng_err e;
                if (!eng_pattern_is_index(pat[h]->kind) && !gpu_masked(pat[h])) {
                    if (eng_dma_attend(pat[h], hq, d, hk, hv, d, n, d, ho, d, NULL, NULL, NULL, &e)) {
                        eng_err_set(err, "layer %d head %d (%s, CPU): %s", l, h, eng_pattern_kind_name(pat[h]->kind), e.msg);
                        goto fail;
                    }
                } else {
                    eng_head_mask hm;
                    memset(&hm, 0, sizeof hm);
                    hm.kind = ENG_MASK_INDEX, hm.n = n;
                    if (keep_slice(att + (size_t)h * d, n, d, qd, hd_tmp, hd_tmpf, ho, st, err) ||
                        (pat[h]->kind == ENG_PAT_DMA
                             ? krn_dma_mask_download(&mws, h, n, pat[h]->n_init, pat[h]->n_local, &hm, st, err)
                             : pat[h]->kind == ENG_PAT_NM ? eng_dma_mask_build(pat[h], hq, d, hk, hv, d, n, d, &hm, err)
                                                          : download_head(&ix, h, &hm.ix, st, err)))
                        goto fail;
                    cudaError_t ce = cudaMemcpyAsync(hl, a.lse + (size_t)h * N, N * 4, cudaMemcpyDeviceToHost, st);
                    if (ce == cudaSuccess) ce = cudaStreamSynchronize(st);
                    const int bad = ce != cudaSuccess ||
                                    eng_reshape_apply(&hm, hq, d, hk, hv, d, n, d, ho, d, hl, NULL, NULL, &e) != 0;
                    eng_dma_mask_free(&hm); /* the index, or the DMA copies (N:M borrows hq / hk) */
                    if (bad) {
                        eng_err_set(err, "layer %d head %d: reshape: %s", l, h,
                                    ce != cudaSuccess ? cudaGetErrorString(ce) : e.msg);
                        goto fail;
                    }
                }
                if (put_head(ho, n, d, att + (size_t)h * d, qd, hd_tmp, hd_tmpf, st, err)) goto fail;
            }
        }
        CUDA_TRY(cudaStreamSynchronize(st));
        out->attn_seconds[l] = now_s() - ta;
        if (pc && !sparse_any) ix_heads[l] = -1;
        if (pc && sparse_any) { /* outside the timed part: the entries this layer's index computed */
            for (int h = 0; h < H; h++) ix_heads[l] += !gpu_masked(pat[h]);
            if (ix_heads[l] > 0 && krn_index_count_add(&ix, H, d_pairs + l, st, err)) goto fail;
        }
        if (keep_lse) {
            CUDA_TRY(cudaMemcpyAsync(out->lse + (size_t)l * H * N, lse_d, (size_t)H * N * 4, cudaMemcpyDeviceToHost, st));
            CUDA_TRY(cudaStreamSynchronize(st));
        }
        if (linear(blas, att, n, qd, D->wo, C, 1.f, x, C, err)) goto fail;
        if (krn_rmsnorm(x, D->ffn_norm, n, C, c->rms_norm_eps, xn, st, err)) goto fail;
        for (int r0 = 0; r0 < n; r0 += mr) {
            const int nr = n - r0 < mr ? n - r0 : mr;
            if (linear(blas, xn + (size_t)r0 * C, nr, C, D->wgu, 2 * F, 0.f, gu, 2 * F, err) ||
                krn_swiglu(gu, nr, F, hbuf, st, err) ||
                linear(blas, hbuf, nr, F, D->wdown, C, 1.f, x + (size_t)r0 * C, C, err))
                goto fail;
        }
    }

    /* ---- final norm, LM head in row chunks (f32 logits) ---- */
    if (krn_rmsnorm(x, fnorm, n, C, c->rms_norm_eps, xn, st, err)) goto fail;
    CUDA_TRY(cudaMalloc((void **)&logits, (size_t)lr * V * 4));
    CUDA_TRY(cudaMalloc((void **)&rows, N * 4 * 4));
    CUDA_TRY(cudaMalloc((void **)&am, N * 4));
    {
        float *rmax = rows, *rsum = rows + N, *amv = rows + 2 * N, *tgt = rows + 3 * N;
        init_rows<<<(n + 255) / 256, 256, 0, st>>>(rmax, rsum, amv, tgt, n);
        LAUNCH_TRY("init_rows");
        const float one = 1.f, zero = 0.f;
        for (int p0 = 0; p0 < n; p0 += lr) {
            const int np = n - p0 < lr ? n - p0 : lr;
            BLAS_TRY(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, V, np, C, &one, lmw, CUDA_R_16BF, C,
                                  xn + (size_t)p0 * C, CUDA_R_16BF, C, &zero, logits, CUDA_R_32F, V, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
            lm_rows<<<np, 256, 0, st>>>(logits, np, V, 0, p0, n, dtok, rmax, rsum, amv, am, tgt);
            LAUNCH_TRY("lm_rows");
            if (p0 + np == n)
                CUDA_TRY(cudaMemcpyAsync(out->last_logits, logits + (size_t)(np - 1) * V, (size_t)V * 4,
                                         cudaMemcpyDeviceToHost, st));
        }
        float *h = (float *)malloc(N * 4 * 4);
        if (!h) {
            eng_err_set(err, "out of host memory");
            goto fail;
        }
        cudaError_t e1 = cudaMemcpyAsync(h, rows, N * 16, cudaMemcpyDeviceToHost, st);
        cudaError_t e2 = cudaMemcpyAsync(out->argmax, am, N * 4, cudaMemcpyDeviceToHost, st);
        cudaError_t e3 = cudaStreamSynchronize(st);
        if (e1 != cudaSuccess || e2 != cudaSuccess || e3 != cudaSuccess) {
            free(h);
            eng_err_set(err, "LM head results: %s", cudaGetErrorString(e1 != cudaSuccess ? e1 : e2 != cudaSuccess ? e2 : e3));
            goto fail;
        }
        for (int i = 0; i + 1 < n; i++) out->next_logprob[i] = h[3 * N + i] - (h[i] + logf(h[N + i]));
        free(h);
    }
    if (pc) {
        unsigned long long *hp = (unsigned long long *)malloc(sizeof *hp * (size_t)L);
        cudaError_t e = hp ? cudaMemcpyAsync(hp, d_pairs, sizeof *hp * (size_t)L, cudaMemcpyDeviceToHost, st)
                           : cudaErrorMemoryAllocation;
        if (e == cudaSuccess) e = cudaStreamSynchronize(st);
        if (e != cudaSuccess) {
            free(hp);
            eng_err_set(err, "index density: %s", cudaGetErrorString(e));
            goto fail;
        }
        const double causal = (double)N * (double)(N + 1) / 2;
        for (int l = 0; l < L; l++)
            out->density[l] = ix_heads[l] < 0 ? 1.0 : ix_heads[l] == 0 ? -1.0 : (double)hp[l] / (ix_heads[l] * causal);
        free(hp);
    }
    out->seconds = now_s() - t0;
    rc = 0;
fail:
    cudaFree(d_pairs);
    free(ix_heads);
    if (blas) cublasDestroy(blas);
    krn_index_ws_free(ws);
    krn_xflex_ws_free(xws);
    krn_index_dev_free(&ix);
    krn_mask_ws_free(&mws);
    if (dl)
        for (int l = 0; l < L; l++) {
            cudaFree(dl[l].attn_norm), cudaFree(dl[l].ffn_norm), cudaFree(dl[l].wqkv), cudaFree(dl[l].bqkv);
            cudaFree(dl[l].wo), cudaFree(dl[l].wgu), cudaFree(dl[l].wdown);
        }
    free(dl);
    if (lmw != embed) cudaFree(lmw);
    cudaFree(embed), cudaFree(fnorm), cudaFree(x), cudaFree(xn), cudaFree(qkv), cudaFree(att), cudaFree(gu);
    cudaFree(hbuf), cudaFree(tmp), cudaFree(stage), cudaFree(inv), cudaFree(logits), cudaFree(rows);
    cudaFree(tmpf), cudaFree(lse_d), cudaFree(dtok), cudaFree(am), cudaFree(scratch_out);
    cudaFree(hd_tmp), cudaFree(hd_tmpf), cudaFree(lse_sp);
    if (hix)
        for (int h = 0; h < H; h++) eng_index_free(&hix[h]);
    free(hix), free(hq), free(hk), free(hv), free(ho), free(hl);
    free(hinv);
    free(pat);
    if (rc) eng_prefill_out_free(out);
    return rc;
}

extern "C" int krn_prefill_run(int dev, cudaStream_t st, const eng_model *m, const int *tokens, int n,
                               const eng_prefill_opts *opts, eng_prefill_out *out, eng_err *err) {
    return prefill_impl(dev, st, m, 0, tokens, n, opts, out, nullptr, err);
}

namespace {
struct synth_shape {
    const char *name;
    int V, C, F, L, H, Hkv, d, qkv_bias, tied, llama3;
    float theta;
};
/* Shapes as the published config.json files give them: Llama-3.1-8B (Llama-3-8B's shapes with
 * the llama3 RoPE scaling of the 128K-context release), one layer of Llama-3.1-70B, Qwen2-7B;
 * "tiny" is for tests. */
const synth_shape shapes[] = {
    {"llama3-8b", 128256, 4096, 14336, 32, 32, 8, 128, 0, 0, 1, 500000.f},
    {"llama3-70b-layer", 128256, 8192, 28672, 1, 64, 8, 128, 0, 0, 1, 500000.f},
    {"qwen2-7b", 152064, 3584, 18944, 28, 28, 4, 128, 1, 0, 0, 1000000.f},
    {"tiny", 1000, 256, 512, 2, 4, 2, 64, 0, 1, 0, 10000.f},
};

void tensor_shape(eng_tensor *t, const char *name, int64_t a, int64_t b) {
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = ENG_DT_BF16;
    t->ndim = b ? 2 : 1;
    t->shape[0] = a, t->shape[1] = b;
    t->numel = b ? a * b : a;
    t->data = nullptr;
}
} /* namespace */

extern "C" const char *krn_synthetic_names(void) { return "llama3-8b, llama3-70b-layer, qwen2-7b, tiny"; }

extern "C" int krn_synthetic_config(const char *name, eng_config *c, eng_err *err) {
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const synth_shape *s = &shapes[i];
        if (strcmp(name, s->name)) continue;
        memset(c, 0, sizeof *c);
        c->arch = s->qkv_bias ? ENG_ARCH_QWEN2 : ENG_ARCH_LLAMA;
        snprintf(c->arch_name, sizeof c->arch_name, "synthetic %s", s->name);
        c->vocab_size = s->V, c->hidden_size = s->C, c->intermediate_size = s->F, c->n_layers = s->L;
        c->n_heads = s->H, c->n_kv_heads = s->Hkv, c->head_dim = s->d, c->rms_norm_eps = 1e-5f;
        c->rope_theta = s->theta, c->max_position_embeddings = 1 << 20, c->tie_word_embeddings = s->tied;
        c->qkv_bias = s->qkv_bias, c->bos_token_id = c->eos_token_id = -1;
        c->rope_llama3 = s->llama3, c->rope_factor = 8.f, c->rope_low_freq_factor = 1.f;
        c->rope_high_freq_factor = 4.f, c->rope_original_max_pos = 8192;
        snprintf(c->torch_dtype, sizeof c->torch_dtype, "bfloat16");
        return 0;
    }
    return eng_err_set(err, "unknown synthetic model '%s' (known: %s)", name, krn_synthetic_names());
}

extern "C" int krn_prefill_synthetic(int dev, cudaStream_t st, const eng_config *c, uint64_t seed, const int *tokens,
                                     int n, const eng_prefill_opts *opts, eng_prefill_out *out, double *setup_s,
                                     eng_err *err) {
    memset(out, 0, sizeof *out);
    if (!seed) return eng_err_set(err, "synthetic prefill: seed must be nonzero");
    if (c->n_layers < 1 || c->n_layers > 4096) return eng_err_set(err, "synthetic prefill: %d layers", c->n_layers);
    eng_model m;
    memset(&m, 0, sizeof m);
    m.cfg = *c;
    snprintf(m.dir, sizeof m.dir, "%s", c->arch_name);
    const int64_t C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    const int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    m.layers = (eng_layer_weights *)calloc((size_t)c->n_layers, sizeof *m.layers);
    if (!m.layers) return eng_err_set(err, "out of host memory");
    tensor_shape(&m.embed, "embed_tokens", V, C);
    tensor_shape(&m.lm_head, "lm_head", V, C);
    tensor_shape(&m.final_norm, "final_norm", C, 0);
    for (int l = 0; l < c->n_layers; l++) {
        eng_layer_weights *w = &m.layers[l];
        tensor_shape(&w->attn_norm, "attn_norm", C, 0);
        tensor_shape(&w->ffn_norm, "ffn_norm", C, 0);
        tensor_shape(&w->wq, "wq", qd, C);
        tensor_shape(&w->wk, "wk", kvd, C);
        tensor_shape(&w->wv, "wv", kvd, C);
        tensor_shape(&w->wo, "wo", C, qd);
        tensor_shape(&w->w_gate, "w_gate", F, C);
        tensor_shape(&w->w_up, "w_up", F, C);
        tensor_shape(&w->w_down, "w_down", C, F);
        tensor_shape(&w->bq, "bq", qd, 0);
        tensor_shape(&w->bk, "bk", kvd, 0);
        tensor_shape(&w->bv, "bv", kvd, 0);
    }
    const int rc = prefill_impl(dev, st, &m, seed, tokens, n, opts, out, setup_s, err);
    free(m.layers);
    return rc;
}

extern "C" int krn_prefill_estimate(int dev, const eng_config *c, int n, const eng_prefill_opts *opts, int tied,
                                    double *need, double *free_bytes, eng_err *err) {
    size_t w, a, x, fr = 0, tot = 0;
    int mb, mc;
    *need = (double)estimate(c, n, opts ? opts->patterns : NULL, opts && opts->keep_qkv, opts && opts->keep_lse, tied,
                             &w, &a, &x, &mb, &mc);
    CUDA_RET(cudaSetDevice(dev));
    CUDA_RET(cudaMemGetInfo(&fr, &tot));
    *free_bytes = (double)fr;
    return 0;
}
