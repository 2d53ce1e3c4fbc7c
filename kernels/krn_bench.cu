/* krn_bench: the kernel-level benchmark behind `attnscope bench` (see krn_bench.h). Inputs are
 * random bf16 made on the GPU (never zeros); each measurement is the median of c->reps runs
 * timed with CUDA events after two warm-ups. The dense kernel's output is the reference the
 * dense-index run of the sparse kernel is checked against (same function, different kernel). */
#include "krn_bench.h"

#include "krn_attn.h"
#include "krn_common.cuh"
#include "krn_dma.h"
#include "krn_index.h"
#include "krn_ops.h"
#include "krn_prefill.h"
#include "krn_xflex.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace {

int cmp_double(const void *a, const void *b);

/* A DMA / N:M row (krn_dma.h): index time = the DMA mask build (key scores, thresholds, tile
 * maxima; 0 for N:M), attention time = the masked kernel; pairs = the kept (row, key) pairs the
 * kernel counts in a first, untimed run. N:M computes every causal logit, so its TFLOP/s count
 * all causal entries; DMA's count the kept ones. */
int bench_masked(const eng_pattern *p, const krn_attn_args *a, int reps, double causal, cudaEvent_t e0, cudaEvent_t e1,
                 cudaEvent_t e2, cudaStream_t st, double *ti, double *ta, double *tt, krn_bench_row *row, eng_err *err) {
    const bool dma = p->kind == ENG_PAT_DMA;
    krn_mask_ws w = {};
    unsigned long long cnt[2] = {0, 0};
    int rc = -1;
    if (krn_mask_ws_alloc(&w, a->H, a->n, err)) return -1;
    if (krn_mask_attend(p, a, 0, a->H, &w, w.count, st, err)) goto fail;
    CUDA_TRY(cudaMemcpyAsync(cnt, w.count, sizeof cnt, cudaMemcpyDeviceToHost, st));
    CUDA_TRY(cudaStreamSynchronize(st));
    for (int r = -1; r < reps; r++) { /* the counting run warmed up: one more warm-up */
        CUDA_TRY(cudaEventRecord(e0, st));
        if (dma && krn_dma_build(p, a, 0, a->H, &w, st, err)) goto fail;
        CUDA_TRY(cudaEventRecord(e1, st));
        if (dma ? krn_attn_dma(a, 0, a->H, &w, p->n_init, p->n_local, nullptr, st, err)
                : krn_attn_nm(a, 0, a->H, p->nm_n, p->nm_m, nullptr, st, err))
            goto fail;
        CUDA_TRY(cudaEventRecord(e2, st));
        CUDA_TRY(cudaEventSynchronize(e2));
        float m1, m2;
        CUDA_TRY(cudaEventElapsedTime(&m1, e0, e1));
        CUDA_TRY(cudaEventElapsedTime(&m2, e1, e2));
        if (r >= 0) ti[r] = m1, ta[r] = m2, tt[r] = m1 + m2;
    }
    qsort(ti, (size_t)reps, sizeof *ti, cmp_double);
    qsort(ta, (size_t)reps, sizeof *ta, cmp_double);
    qsort(tt, (size_t)reps, sizeof *tt, cmp_double);
    memset(row, 0, sizeof *row);
    eng_pattern_describe(p, row->name, (int)sizeof row->name);
    row->index_ms = ti[reps / 2];
    row->attn_ms = ta[reps / 2];
    row->total_ms = tt[reps / 2];
    row->pairs = (long long)cnt[1];
    row->density = row->pairs / causal;
    {
        const double work = 4.0 * a->d * (dma ? (double)row->pairs : causal);
        row->tflops = work / (row->attn_ms * 1e-3) / 1e12;
        row->tflops_total = work / (row->total_ms * 1e-3) / 1e12;
    }
    rc = 0;
fail:
    krn_mask_ws_free(&w);
    return rc;
}

int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

} /* namespace */

extern "C" int krn_bench_device(char *buf, int cap, eng_err *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count < 1) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return eng_err_set(err, "no usable CUDA GPU (%s): the benchmark times GPU kernels; on the CPU use "
                                "attnscope run --patterns CFG.json (per-layer attention times) or bench/cpu_sparse.sh",
                           e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    cudaDeviceProp p;
    CUDA_RET(cudaGetDeviceProperties(&p, 0));
    snprintf(buf, (size_t)cap, "%s", p.name);
    return 0;
}

extern "C" int krn_bench_memory(const krn_bench_cfg *c, double *need, double *free_bytes, eng_err *err) {
    const double n = c->n, n_rb = (c->n + 63) / 64;
    double b = n * c->H * c->d * 2 * 2 + n * c->Hkv * c->d * 2 * 2 + 4.0 * c->H * n; /* q, out, k, v, lse */
    double ix = 0, ws = 0;
    for (int i = 0; i <= c->n_pats; i++) {
        eng_pattern vx;
        memset(&vx, 0, sizeof vx);
        vx.kind = ENG_PAT_VS, vx.vertical = c->vsx_cols, vx.slash = c->vsx_diags;
        if (i == c->n_pats && c->vsx_cols <= 0) break;
        const eng_pattern *p = i < c->n_pats ? &c->pats[i] : &vx;
        if (p->kind == ENG_PAT_DMA || p->kind == ENG_PAT_NM) { /* krn_mask_ws, no index */
            const double w = 16.0 * c->H * n + 4.0 * c->H * n_rb + 1024.0 * c->H + 16;
            ws = w > ws ? w : ws;
            continue;
        }
        int mb, mc;
        krn_index_capacity(p, c->n, &mb, &mc);
        double x = 4.0 * c->H * n_rb * (2 + mb + mc);
        ix = x > ix ? x : ix;
        if (p->kind == ENG_PAT_VS) {
            double w = 4.0 * c->H * 64 * n + 16.0 * c->H * n + 4.0 * c->H * (mb + mc) + 4.0 * n;
            ws = w > ws ? w : ws;
        }
        if (p->kind == ENG_PAT_BS) {
            double w = (double)krn_index_bs_ws_bytes(c->n, c->H, c->Hkv, c->d);
            ws = w > ws ? w : ws;
        }
        if (krn_xflex_kind(p->kind)) {
            double w = (double)krn_xflex_ws_bytes(p, c->n, c->H, c->d);
            ws = w > ws ? w : ws;
        }
    }
    *need = b + ix + ws + 256.0 * 1024 * 1024; /* + cuBLAS workspace and slack */
    size_t fr = 0, tot = 0;
    CUDA_RET(cudaMemGetInfo(&fr, &tot));
    *free_bytes = (double)fr;
    return 0;
}

extern "C" int krn_bench_attention(const krn_bench_cfg *c, krn_bench_row *rows, eng_err *err) {
    const int n = c->n, H = c->H, Hkv = c->Hkv, d = c->d, reps = c->reps > 0 ? c->reps : 5;
    const size_t nq = (size_t)n * H * d, nk = (size_t)n * Hkv * d;
    void *dq = nullptr, *dk = nullptr, *dv = nullptr, *dout = nullptr;
    float *dlse = nullptr;
    krn_index_ws *ws = nullptr;
    krn_index_dev ix = {};
    krn_xflex_ws *xws = nullptr; /* XAttention / FlexPrefill builders */
    cudaStream_t st = nullptr;
    cudaEvent_t e0 = nullptr, e1 = nullptr, e2 = nullptr;
    double *ti = (double *)calloc((size_t)reps, sizeof(double)), *ta = (double *)calloc((size_t)reps, sizeof(double)),
           *tt = (double *)calloc((size_t)reps, sizeof(double));
    int rc = -1;
    const double causal = (double)n * (n + 1) / 2 * H;
    if (!ti || !ta || !tt) {
        eng_err_set(err, "bench: out of host memory");
        goto fail;
    }
    CUDA_TRY(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreate(&e0));
    CUDA_TRY(cudaEventCreate(&e1));
    CUDA_TRY(cudaEventCreate(&e2));
    CUDA_TRY(cudaMalloc(&dq, nq * 2));
    CUDA_TRY(cudaMalloc(&dk, nk * 2));
    CUDA_TRY(cudaMalloc(&dv, nk * 2));
    CUDA_TRY(cudaMalloc(&dout, nq * 2));
    CUDA_TRY(cudaMalloc((void **)&dlse, (size_t)H * n * 4));
    /* Inputs with LLM-like locality (so the VS estimate picks mostly local slashes, as on real
     * prompts): q and k of a GQA group share a random direction u (plus noise), then rotate-half RoPE
     * (theta 500000) makes q_i . k_j decay and oscillate with i - j. v is plain noise. */
    if (krn_fill_random_bf16(dq, nq, 1, 1.0f, st, err) || krn_fill_random_bf16(dk, nk, 2, 1.0f, st, err) ||
        krn_fill_random_bf16(dv, nk, 3, 1.0f, st, err))
        goto fail;
    {
        const int g = H / Hkv;
        float *hu = (float *)malloc(sizeof(float) * ((size_t)H * d + (size_t)Hkv * d + d / 2));
        if (!hu) {
            eng_err_set(err, "bench: out of host memory");
            goto fail;
        }
        float *hq = hu, *hk = hu + (size_t)H * d, *hinv = hk + (size_t)Hkv * d;
        uint64_t r = 0x853c49e6748fea9bull;
        for (int i = 0; i < Hkv * d; i++) {
            r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
            hk[i] = (float)((r * 2685821657736338717ull) >> 40) * (2.0f / 16777216.0f) - 1.0f;
        }
        for (int h = 0; h < H; h++) memcpy(hq + (size_t)h * d, hk + (size_t)(h / g) * d, sizeof(float) * d);
        for (int i = 0; i < d / 2; i++) hinv[i] = powf(500000.0f, -2.0f * i / d);
        float *dtmp = nullptr;
        void *bq = nullptr, *bk = nullptr;
        cudaError_t e = cudaMalloc((void **)&dtmp, sizeof(float) * ((size_t)H * d + (size_t)Hkv * d + d / 2));
        if (e == cudaSuccess) e = cudaMalloc(&bq, (size_t)H * d * 2);
        if (e == cudaSuccess) e = cudaMalloc(&bk, (size_t)Hkv * d * 2);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(dtmp, hu, sizeof(float) * ((size_t)H * d + (size_t)Hkv * d + d / 2),
                                cudaMemcpyHostToDevice, st);
        int bad = e != cudaSuccess;
        if (bad) eng_err_set(err, "bench inputs: %s", cudaGetErrorString(e));
        bad = bad || krn_f32_to_bf16(dtmp, bq, (size_t)H * d, st, err) ||
              krn_f32_to_bf16(dtmp + (size_t)H * d, bk, (size_t)Hkv * d, st, err) ||
              krn_add_bias(dq, bq, n, H * d, st, err) || krn_add_bias(dk, bk, n, Hkv * d, st, err) ||
              krn_rope(dq, n, H, d, H * d, 0, dtmp + (size_t)H * d + (size_t)Hkv * d, st, err) ||
              krn_rope(dk, n, Hkv, d, Hkv * d, 0, dtmp + (size_t)H * d + (size_t)Hkv * d, st, err);
        if (!bad && (e = cudaStreamSynchronize(st)) != cudaSuccess) {
            eng_err_set(err, "bench inputs: %s", cudaGetErrorString(e));
            bad = 1;
        }
        cudaFree(dtmp), cudaFree(bq), cudaFree(bk);
        free(hu);
        if (bad) goto fail;
    }
    if (krn_index_ws_create(&ws, err)) goto fail;
    {
        krn_attn_args a = {n, H, Hkv, d, dq, dk, dv, H * d, Hkv * d, dout, H * d, dlse};
        /* Dense kernel. */
        for (int r = -2; r < reps; r++) {
            CUDA_TRY(cudaEventRecord(e0, st));
            if (krn_attn_dense(&a, c->dense_variant, st, err)) goto fail;
            CUDA_TRY(cudaEventRecord(e1, st));
            CUDA_TRY(cudaEventSynchronize(e1));
            float ms;
            CUDA_TRY(cudaEventElapsedTime(&ms, e0, e1));
            if (r >= 0) ta[r] = ms;
        }
        qsort(ta, (size_t)reps, sizeof *ta, cmp_double);
        krn_bench_row *row = &rows[0];
        memset(row, 0, sizeof *row);
        snprintf(row->name, sizeof row->name, "dense (kernel v%d)", c->dense_variant);
        row->attn_ms = row->total_ms = ta[reps / 2];
        row->pairs = (long long)causal;
        row->density = 1.0;
        row->tflops = row->tflops_total = 4.0 * d * causal / (row->attn_ms * 1e-3) / 1e12;

        /* Each pattern: index build (krn_index_build; XAttention / FlexPrefill: krn_xflex_build) +
         * sparse kernel; DMA / N:M run their own kernels (bench_masked). */
        for (int i = 0; i < c->n_pats; i++) {
            const eng_pattern *p = &c->pats[i];
            const int xf = krn_xflex_kind(p->kind);
            if (p->kind == ENG_PAT_DMA || p->kind == ENG_PAT_NM) {
                if (bench_masked(p, &a, reps, causal, e0, e1, e2, st, ti, ta, tt, &rows[1 + i], err)) goto fail;
                continue;
            }
            if (!xf && !(p->kind == ENG_PAT_DENSE || p->kind == ENG_PAT_ASHAPE || p->kind == ENG_PAT_VS ||
                           p->kind == ENG_PAT_BS)) {
                eng_err_set(err, "bench: pattern %s has no GPU kernel (CPU only)", eng_pattern_kind_name(p->kind));
                goto fail;
            }
            int mb, mc;
            krn_index_capacity(p, n, &mb, &mc);
            if (krn_index_dev_alloc(&ix, H, n, mb, mc, err)) goto fail;
            if (xf && !xws && krn_xflex_ws_create(&xws, err)) goto fail;
            for (int r = -2; r < reps; r++) {
                CUDA_TRY(cudaEventRecord(e0, st));
                if (xf ? krn_xflex_build(p, &a, 0, H, &ix, xws, st, err) : krn_index_build(p, &a, 0, H, &ix, ws, st, err))
                    goto fail;
                CUDA_TRY(cudaEventRecord(e1, st));
                if (krn_attn_sparse_variant(&a, &ix, c->dense_variant, st, err)) goto fail;
                CUDA_TRY(cudaEventRecord(e2, st));
                CUDA_TRY(cudaEventSynchronize(e2));
                float m1, m2;
                CUDA_TRY(cudaEventElapsedTime(&m1, e0, e1));
                CUDA_TRY(cudaEventElapsedTime(&m2, e1, e2));
                if (r >= 0) ti[r] = m1, ta[r] = m2, tt[r] = m1 + m2;
            }
            qsort(ti, (size_t)reps, sizeof *ti, cmp_double);
            qsort(ta, (size_t)reps, sizeof *ta, cmp_double);
            qsort(tt, (size_t)reps, sizeof *tt, cmp_double);
            row = &rows[1 + i];
            memset(row, 0, sizeof *row);
            eng_pattern_describe(p, row->name, (int)sizeof row->name);
            row->index_ms = ti[reps / 2];
            row->attn_ms = ta[reps / 2];
            row->total_ms = tt[reps / 2];
            if (krn_index_count(&ix, H, &row->pairs, st, err)) goto fail;
            row->density = row->pairs / causal;
            row->tflops = 4.0 * d * row->pairs / (row->attn_ms * 1e-3) / 1e12;
            row->tflops_total = 4.0 * d * row->pairs / (row->total_ms * 1e-3) / 1e12;
            krn_index_dev_free(&ix);
        }
    }
    if (c->vsx_cols > 0) { /* VS on PERF.md's fixed index */
        krn_attn_args a = {n, H, Hkv, d, dq, dk, dv, H * d, Hkv * d, dout, H * d, dlse};
        const int kv = c->vsx_cols < n ? c->vsx_cols : n, ks = c->vsx_diags < n ? c->vsx_diags : n;
        const int sinks = kv < 30 ? kv : 30;
        eng_pattern pd;
        memset(&pd, 0, sizeof pd);
        pd.kind = ENG_PAT_VS, pd.vertical = kv, pd.slash = ks;
        int mb, mc;
        krn_index_capacity(&pd, n, &mb, &mc);
        int *hl = (int *)malloc(sizeof(int) * ((size_t)H * (kv + ks) + (size_t)n));
        if (!hl) {
            eng_err_set(err, "bench: out of host memory");
            goto fail;
        }
        int *perm = hl + (size_t)H * (kv + ks);
        uint64_t r = 0x9e3779b97f4a7c15ull;
        for (int h = 0; h < H; h++) {
            int *v = hl + (size_t)h * kv, *sl = hl + (size_t)H * kv + (size_t)h * ks;
            for (int i = 0; i < sinks; i++) v[i] = i;
            /* kv - sinks distinct random keys from [sinks, n): partial Fisher-Yates */
            for (int i = sinks; i < n; i++) perm[i] = i;
            for (int i = 0; i < kv - sinks; i++) {
                r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
                const int span = n - sinks - i, j = sinks + i + (int)((r * 2685821657736338717ull >> 33) % (uint64_t)span);
                const int t = perm[sinks + i];
                perm[sinks + i] = perm[j], perm[j] = t;
                v[sinks + i] = perm[sinks + i];
            }
            qsort(v, (size_t)kv, sizeof *v, cmp_int);
            for (int i = 0; i < ks; i++) sl[i] = ks - 1 - i; /* the ks most local diagonals, descending */
        }
        int *dl = nullptr;
        cudaError_t e = cudaMalloc((void **)&dl, sizeof(int) * (size_t)H * (kv + ks));
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(dl, hl, sizeof(int) * (size_t)H * (kv + ks), cudaMemcpyHostToDevice, st);
        if (e == cudaSuccess) e = cudaStreamSynchronize(st);
        free(hl);
        if (e != cudaSuccess) {
            cudaFree(dl);
            eng_err_set(err, "bench vs lines: %s", cudaGetErrorString(e));
            goto fail;
        }
        if (krn_index_dev_alloc(&ix, H, n, mb, mc, err)) {
            cudaFree(dl);
            goto fail;
        }
        double *tc = (double *)calloc((size_t)reps, sizeof(double));
        int bad = !tc;
        if (bad) eng_err_set(err, "bench: out of host memory");
        for (int rr = -2; rr < reps && !bad; rr++) {
            float m1 = 0, m2 = 0, m3 = 0;
            bad = cudaEventRecord(e0, st) != cudaSuccess || krn_index_build(&pd, &a, 0, H, &ix, ws, st, err) ||
                  cudaEventRecord(e1, st) != cudaSuccess ||
                  krn_index_vs_from_lines(dl, kv, dl + (size_t)H * kv, ks, 0, H, &ix, st, err) ||
                  cudaEventRecord(e2, st) != cudaSuccess || krn_attn_sparse_variant(&a, &ix, c->dense_variant, st, err);
            cudaEvent_t e3 = e0; /* reuse e0 as the end mark once e0 -> e1 has been read */
            if (!bad) bad = cudaEventSynchronize(e2) != cudaSuccess || cudaEventElapsedTime(&m1, e0, e1) != cudaSuccess ||
                            cudaEventElapsedTime(&m2, e1, e2) != cudaSuccess || cudaEventRecord(e3, st) != cudaSuccess ||
                            cudaEventSynchronize(e3) != cudaSuccess || cudaEventElapsedTime(&m3, e2, e3) != cudaSuccess;
            if (bad && !err->msg[0]) eng_err_set(err, "bench vs fixed index: CUDA error %s", cudaGetErrorString(cudaGetLastError()));
            if (!bad && rr >= 0) ti[rr] = m1, tc[rr] = m2, ta[rr] = m3, tt[rr] = m1 + m3;
        }
        cudaFree(dl);
        if (bad) {
            free(tc);
            goto fail;
        }
        qsort(ti, (size_t)reps, sizeof *ti, cmp_double);
        qsort(ta, (size_t)reps, sizeof *ta, cmp_double);
        qsort(tt, (size_t)reps, sizeof *tt, cmp_double);
        qsort(tc, (size_t)reps, sizeof *tc, cmp_double);
        krn_bench_row *row = &rows[1 + c->n_pats];
        memset(row, 0, sizeof *row);
        snprintf(row->name, sizeof row->name, "VS fixed (%d cols, %d diags)", kv, ks);
        row->index_ms = ti[reps / 2];
        row->attn_ms = ta[reps / 2];
        row->total_ms = tt[reps / 2];
        row->aux_ms = tc[reps / 2];
        free(tc);
        if (krn_index_count(&ix, H, &row->pairs, st, err)) goto fail;
        row->density = row->pairs / causal;
        row->tflops = 4.0 * d * row->pairs / (row->attn_ms * 1e-3) / 1e12;
        row->tflops_total = 4.0 * d * row->pairs / (row->total_ms * 1e-3) / 1e12;
        krn_index_dev_free(&ix);
    }
    rc = 0;
fail:
    krn_index_dev_free(&ix);
    krn_index_ws_free(ws);
    krn_xflex_ws_free(xws);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    if (e2) cudaEventDestroy(e2);
    if (st) cudaStreamDestroy(st);
    free(ti), free(ta), free(tt);
    return rc;
}

extern "C" int krn_bench_prefill_memory(const krn_e2e_cfg *c, double *need, double *free_bytes, eng_err *err) {
    eng_config cfg;
    if (krn_synthetic_config(c->model, &cfg, err)) return -1;
    double worst = 0, fr = 0;
    for (int i = -1; i < c->n_pats; i++) {
        eng_pattern_cfg pc = {cfg.n_layers, cfg.n_heads, i >= 0 ? c->pats[i] : eng_pattern{}, nullptr};
        eng_prefill_opts o = {};
        o.patterns = i >= 0 ? &pc : nullptr;
        double nd;
        if (krn_prefill_estimate(0, &cfg, c->n, &o, cfg.tie_word_embeddings, &nd, &fr, err)) return -1;
        worst = nd > worst ? nd : worst;
    }
    *need = worst, *free_bytes = fr;
    return 0;
}

extern "C" int krn_bench_prefill(const krn_e2e_cfg *c, krn_e2e_row *rows, eng_err *err) {
    eng_config cfg;
    if (krn_synthetic_config(c->model, &cfg, err)) return -1;
    const int n = c->n, reps = c->reps > 0 ? c->reps : 1, warm_n = n < 2048 ? n : 2048;
    int *tok = (int *)malloc(sizeof(int) * (size_t)n);
    double *tp = (double *)calloc((size_t)reps, sizeof(double)), *ta_ = (double *)calloc((size_t)reps, sizeof(double));
    cudaStream_t st = nullptr;
    eng_prefill_out out = {};
    int rc = -1;
    if (!tok || !tp || !ta_) {
        eng_err_set(err, "bench: out of host memory");
        goto fail;
    }
    {
        uint64_t r = 0x2545f4914f6cdd1dull ^ (uint64_t)n;
        for (int i = 0; i < n; i++) {
            r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
            tok[i] = (int)((r * 2685821657736338717ull) >> 33) % cfg.vocab_size;
        }
    }
    CUDA_TRY(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    /* warm-up: module load, cuBLAS handle and heuristics, at a short length */
    if (krn_prefill_synthetic(0, st, &cfg, 7, tok, warm_n, nullptr, &out, nullptr, err)) goto fail;
    eng_prefill_out_free(&out);
    for (int i = -1; i < c->n_pats; i++) {
        eng_pattern_cfg pc = {cfg.n_layers, cfg.n_heads, i >= 0 ? c->pats[i] : eng_pattern{}, nullptr};
        eng_prefill_opts o = {};
        o.patterns = i >= 0 ? &pc : nullptr;
        krn_e2e_row *row = &rows[i + 1];
        memset(row, 0, sizeof *row);
        if (i >= 0) eng_pattern_describe(&c->pats[i], row->name, (int)sizeof row->name);
        else snprintf(row->name, sizeof row->name, "dense");
        for (int r = 0; r < reps; r++) {
            double setup = 0;
            if (krn_prefill_synthetic(0, st, &cfg, 7, tok, n, &o, &out, &setup, err)) goto fail;
            double at = 0, dn = 0;
            int dl = 0;
            for (int l = 0; l < out.n_layers; l++) at += out.attn_seconds[l];
            for (int l = 0; out.density && l < out.n_layers; l++)
                if (out.density[l] >= 0) dn += out.density[l], dl++;
            tp[r] = out.seconds - setup, ta_[r] = at;
            row->setup_s = setup;
            row->density = i < 0 ? 1.0 : dl ? dn / dl : -1.0; /* the index is the same every repetition */
            eng_prefill_out_free(&out);
        }
        qsort(tp, (size_t)reps, sizeof *tp, cmp_double);
        qsort(ta_, (size_t)reps, sizeof *ta_, cmp_double);
        row->prefill_s = tp[reps / 2];
        row->attn_s = ta_[reps / 2];
    }
    rc = 0;
fail:
    eng_prefill_out_free(&out);
    if (st) cudaStreamDestroy(st);
    free(tok), free(tp), free(ta_);
    return rc;
}
