/* gpu_dma: the DMA-style and N:M kernels (kernels/krn_dma.cu) against the CPU reference
 * (engine/eng_dma.c) on fresh random bf16-representable inputs: odd N, N < 64, GQA 1/4/8, head dim
 * 64 and 128, outputs poisoned (NaN) first, head ranges split over two launches.
 *   - DMA: GPU key scores (value norm: bit-identical; VS score: within one float ulp), thresholds
 *     (exactly eng_dma_thresholds of the GPU's scores, shared-memory and global heaps, rising and
 *     tied scores), tile maxima exact; output vs eng_dma_attend (rel-L2 < 1e-2, |lse| < 2e-3 as
 *     gpu_attn); tiles run == the CPU's active tiles and kept pairs == eng_dma_mask_count, exactly.
 *   - N:M: output vs eng_dma_attend, kept pairs == the closed form, unsupported m refused.
 *   - Exact masks: V row j = a_j e_j (n <= d) makes out[i][j] != 0 iff (i, j) is kept; Q/K on a
 *     1/4 grid make every logit exact in fp32 and in double, so ties (duplicated keys, equal a_j)
 *     must break exactly as eng_dma_mask_row says.
 *   - The CUDA prefill with DMA / N:M heads (reshape, VS score, an N:M left on the CPU) against the
 *     CPU prefill. */
#include "gpu_util.h"

#include <time.h>

#include <cuda_runtime_api.h>

#include "eng_backend.h"
#include "eng_dma.h"
#include "eng_pattern.h"
#include "krn_attn.h"
#include "krn_dma.h"

typedef struct {
    int n, H, Hkv, d;
    float *q, *k, *v;       /* host (n, H*d) / (n, Hkv*d), bf16-rounded */
    uint16_t *qb, *kb, *vb; /* the same as bf16 bits */
    void *dq, *dk, *dv, *dout;
    float *dlse;
} prob;

enum { IN_RANDOM = 0, IN_RISING = 1, IN_TIED = 2, IN_READOUT = 3 };

/* Inputs: IN_RANDOM q in [-2, 2), k, v in [-1, 1) with each V row scaled by e^u, u in [-1.5, 1.5]
 * (varied value norms, so DMA skips tiles); IN_RISING V rows scaled by 1 + 2 j / n (rising key
 * scores: every key beats the heap root); IN_TIED V rows repeat in runs of 3 (tied scores);
 * IN_READOUT Q/K on the 1/4 grid in [-1, 1] with some key rows repeated (exact, tied logits) and
 * V row j = a_j e_(j mod d), a_j in {0.5, 0.75, ..., 2} (tied value norms). */
static void prob_init(prob *p, int n, int H, int Hkv, int d, uint64_t seed, int kind) {
    memset(p, 0, sizeof *p);
    p->n = n, p->H = H, p->Hkv = Hkv, p->d = d;
    const size_t nq = (size_t)n * H * d, nk = (size_t)n * Hkv * d, kvd = (size_t)Hkv * d;
    p->q = malloc(nq * 4), p->k = malloc(nk * 4), p->v = malloc(nk * 4);
    p->qb = malloc(nq * 2), p->kb = malloc(nk * 2), p->vb = malloc(nk * 2);
    assert_non_null(p->q), assert_non_null(p->k), assert_non_null(p->v);
    assert_non_null(p->qb), assert_non_null(p->kb), assert_non_null(p->vb);
    if (kind == IN_READOUT) {
        for (size_t i = 0; i < nq; i++) p->q[i] = (float)((int)(tu_rand_u64(&seed) % 9) - 4) * 0.25f;
        for (int j = 0; j < n; j++) {
            float *kj = p->k + (size_t)j * kvd;
            if (j > 0 && tu_rand_u64(&seed) % 4 == 0) memcpy(kj, kj - kvd, kvd * 4); /* tie with key j - 1 */
            else
                for (size_t c = 0; c < kvd; c++) kj[c] = (float)((int)(tu_rand_u64(&seed) % 9) - 4) * 0.25f;
            const float a = 0.5f + 0.25f * (float)(tu_rand_u64(&seed) % 7);
            for (size_t c = 0; c < kvd; c++) p->v[(size_t)j * kvd + c] = (int)(c % d) == j % d ? a : 0.f;
        }
    } else {
        for (size_t i = 0; i < nq; i++) p->q[i] = tu_randf(&seed) * 2.0f;
        for (size_t i = 0; i < nk; i++) p->k[i] = tu_randf(&seed);
        for (int j = 0; j < n; j++) {
            float *vj = p->v + (size_t)j * kvd;
            if (kind == IN_TIED && j % 3) {
                memcpy(vj, vj - kvd, kvd * 4);
                continue;
            }
            const float sc = kind == IN_RISING ? 1.0f + 2.0f * j / n : expf(1.5f * tu_randf(&seed));
            for (size_t c = 0; c < kvd; c++) vj[c] = tu_randf(&seed) * sc;
        }
    }
    for (size_t i = 0; i < nq; i++) p->qb[i] = eng_f32_to_bf16(p->q[i]), p->q[i] = eng_bf16_to_f32(p->qb[i]);
    for (size_t i = 0; i < nk; i++) p->kb[i] = eng_f32_to_bf16(p->k[i]), p->k[i] = eng_bf16_to_f32(p->kb[i]);
    for (size_t i = 0; i < nk; i++) p->vb[i] = eng_f32_to_bf16(p->v[i]), p->v[i] = eng_bf16_to_f32(p->vb[i]);
    CK(cudaMalloc(&p->dq, nq * 2));
    CK(cudaMalloc(&p->dk, nk * 2));
    CK(cudaMalloc(&p->dv, nk * 2));
    CK(cudaMalloc(&p->dout, nq * 2));
    CK(cudaMalloc((void **)&p->dlse, (size_t)H * n * 4));
    CK(cudaMemcpy(p->dq, p->qb, nq * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(p->dk, p->kb, nk * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(p->dv, p->vb, nk * 2, cudaMemcpyHostToDevice));
    /* Poison: 0xFF bytes are bf16 / f32 NaNs, so an unwritten element fails the finiteness check. */
    CK(cudaMemset(p->dout, 0xFF, nq * 2));
    CK(cudaMemset(p->dlse, 0xFF, (size_t)H * n * 4));
}

static void prob_free(prob *p) {
    free(p->q), free(p->k), free(p->v), free(p->qb), free(p->kb), free(p->vb);
    cudaFree(p->dq), cudaFree(p->dk), cudaFree(p->dv), cudaFree(p->dout), cudaFree(p->dlse);
}

static krn_attn_args prob_args(const prob *p) {
    krn_attn_args a = {p->n, p->H, p->Hkv, p->d, p->dq, p->dk, p->dv, p->H * p->d, p->Hkv * p->d,
                       p->dout, p->H * p->d, p->dlse};
    return a;
}

/* The GPU output (n, H*d) as f32 and the LSE [H][n]; every element written and finite (LSE -inf
 * only for an empty row). Caller frees. */
static void fetch(const prob *p, float **out, float **lse) {
    const size_t nq = (size_t)p->n * p->H * p->d;
    uint16_t *ob = malloc(nq * 2);
    *out = malloc(nq * 4), *lse = malloc((size_t)p->H * p->n * 4);
    assert_non_null(ob), assert_non_null(*out), assert_non_null(*lse);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(ob, p->dout, nq * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(*lse, p->dlse, (size_t)p->H * p->n * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < nq; i++) {
        (*out)[i] = eng_bf16_to_f32(ob[i]);
        if (!isfinite((*out)[i])) fail_msg("out[%zu] not written / not finite", i);
    }
    for (size_t i = 0; i < (size_t)p->H * p->n; i++)
        if (isnan((*lse)[i]) || (*lse)[i] == INFINITY) fail_msg("lse[%zu] = %g not written", i, (*lse)[i]);
    free(ob);
}

/* GPU (out, lse) vs the reference: rel-L2 < 1e-2, |lse - ref| < 2e-3, -inf exactly where the
 * reference has it. */
static void compare(const prob *p, const float *out, const float *lse, const float *ref, const float *ref_lse,
                    const char *what) {
    const size_t nq = (size_t)p->n * p->H * p->d;
    double rel = tu_rel_l2(out, ref, nq), lerr = 0;
    for (size_t i = 0; i < (size_t)p->H * p->n; i++) {
        if (!!isinf(ref_lse[i]) != !!isinf(lse[i])) fail_msg("%s: lse[%zu] = %g, reference %g", what, i, lse[i], ref_lse[i]);
        double e = isinf(ref_lse[i]) ? 0 : fabs((double)lse[i] - ref_lse[i]);
        if (e > lerr) lerr = e;
    }
    printf("  %-58s rel-L2 %.2e  lse max-abs %.2e\n", what, rel, lerr);
    if (!(rel < 1e-2)) fail_msg("%s: rel-L2 %.3e >= 1e-2", what, rel);
    if (!(lerr < 2e-3)) fail_msg("%s: lse error %.3e >= 2e-3", what, lerr);
}

/* eng_dma_attend on every head: the CPU reference output (n, H*d) and LSE [H][n]. */
static void cpu_attend(const prob *p, const eng_pattern *pat, float *ref, float *ref_lse) {
    const int g = p->H / p->Hkv, d = p->d;
    for (int h = 0; h < p->H; h++) {
        eng_err e = {{0}};
        if (eng_dma_attend(pat, p->q + h * d, p->H * d, p->k + (h / g) * d, p->v + (h / g) * d, p->Hkv * d, p->n, d,
                           ref + h * d, p->H * d, ref_lse + (size_t)h * p->n, NULL, NULL, &e))
            fail_msg("eng_dma_attend head %d: %s", h, e.msg);
    }
}

/* Run pattern pat on the GPU over heads [0, split) and [split, H) (two launches, h0 offsets);
 * counters into cnt[2] (tiles run, kept pairs). */
static void gpu_attend(const prob *p, const eng_pattern *pat, krn_mask_ws *w, unsigned long long cnt[2]) {
    krn_attn_args a = prob_args(p);
    eng_err err = {{0}};
    const int split = p->H > 1 ? p->H - p->H / 3 - 1 : 1; /* 8 -> 5 + 3, 4 -> 2 + 2, 2 -> 1 + 1 */
    CK(cudaMemset(w->count, 0, 2 * sizeof(unsigned long long)));
    if (krn_mask_attend(pat, &a, 0, split, w, w->count, 0, &err)) fail_msg("krn_mask_attend: %s", err.msg);
    if (split < p->H && krn_mask_attend(pat, &a, split, p->H - split, w, w->count, 0, &err))
        fail_msg("krn_mask_attend (heads %d..): %s", split, err.msg);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(cnt, w->count, 2 * sizeof(unsigned long long), cudaMemcpyDeviceToHost));
}

static eng_pattern dma_pat(int keep, int sink, int window, int key_score) {
    eng_pattern p = eng_pattern_make(ENG_PAT_DMA);
    p.keep = keep, p.n_init = sink, p.n_local = window, p.key_score = key_score;
    return p;
}

static eng_pattern nm_pat(int n, int m) {
    eng_pattern p = eng_pattern_make(ENG_PAT_NM);
    p.nm_n = n, p.nm_m = m;
    return p;
}

static long long skipped_total, causal_total; /* over all DMA cases: the kernel did skip tiles */

/* One DMA case: scores, thresholds, tile maxima, counts and output against the CPU. Returns the
 * number of causal tiles the kernel skipped. */
static long long dma_case(int n, int H, int Hkv, int d, const eng_pattern *pat, int input, uint64_t seed) {
    prob p;
    prob_init(&p, n, H, Hkv, d, seed, input);
    krn_mask_ws w;
    eng_err err = {{0}};
    if (krn_mask_ws_alloc(&w, H, n, &err)) fail_msg("krn_mask_ws_alloc: %s", err.msg);
    unsigned long long cnt[2];
    gpu_attend(&p, pat, &w, cnt);
    float *out, *lse;
    fetch(&p, &out, &lse);
    const int g = H / Hkv, n_kt = (n + 63) / 64;
    float *zc = malloc((size_t)n * 4), *tc = malloc((size_t)n * 4);
    assert_non_null(zc), assert_non_null(tc);
    long long pairs = 0, tiles = 0, causal = 0;
    double zerr = 0;
    for (int h = 0; h < H; h++) {
        /* The kernel's mask as the host sees it (also krn_dma_mask_download's test). */
        eng_head_mask hm;
        if (krn_dma_mask_download(&w, h, n, pat->n_init, pat->n_local, &hm, 0, &err)) fail_msg("download: %s", err.msg);
        if (eng_dma_scores(pat->key_score, p.q + h * d, H * d, p.k + (h / g) * d, Hkv * d, p.v + (h / g) * d, Hkv * d, n,
                           d, zc, &err) ||
            eng_dma_thresholds(hm.z, n, pat->keep, tc, &err))
            fail_msg("cpu scores: %s", err.msg);
        for (int j = 0; j < n; j++) {
            if (pat->key_score == 0 && memcmp(&zc[j], &hm.z[j], 4))
                fail_msg("head %d: value-norm score z[%d] = %.9g, CPU %.9g (must be bit-identical)", h, j, hm.z[j], zc[j]);
            const double e = fabs((double)hm.z[j] - zc[j]) / (fabs((double)zc[j]) + 1e-30);
            zerr = e > zerr ? e : zerr;
            if (memcmp(&tc[j], &hm.theta[j], 4))
                fail_msg("head %d: theta[%d] = %.9g, eng_dma_thresholds of the GPU scores %.9g", h, j, hm.theta[j], tc[j]);
        }
        for (int t = 0; t < n_kt; t++) {
            float mx = -INFINITY;
            for (int j = t * 64; j < t * 64 + 64 && j < n; j++)
                if (hm.z[j] > mx) mx = hm.z[j];
            if (memcmp(&mx, &hm.zmax[t], 4)) fail_msg("head %d: zmax[%d] = %g, want %g", h, t, hm.zmax[t], mx);
        }
        float *ro = malloc((size_t)n * d * 4), *rl = malloc((size_t)n * 4);
        assert_non_null(ro), assert_non_null(rl);
        eng_dma_stats st;
        if (eng_dma_attn_head(&hm, p.q + h * d, H * d, p.k + (h / g) * d, p.v + (h / g) * d, Hkv * d, n, d, ro, d, rl,
                              &st, &err))
            fail_msg("eng_dma_attn_head: %s", err.msg);
        pairs += eng_dma_mask_count(&hm), tiles += st.tiles_run, causal += st.tiles_causal;
        free(ro), free(rl);
        eng_dma_mask_free(&hm);
    }
    if (pat->key_score == 1 && !(zerr <= 1.2e-7)) fail_msg("VS score: max relative difference %.3e > 1 float ulp", zerr);
    if ((long long)cnt[0] != tiles) fail_msg("tiles run: GPU %llu, CPU %lld (of %lld causal)", cnt[0], tiles, causal);
    if ((long long)cnt[1] != pairs) fail_msg("kept pairs: GPU %llu, CPU %lld", cnt[1], pairs);
    skipped_total += causal - tiles, causal_total += causal;
    float *ref = malloc((size_t)n * H * d * 4), *rl = malloc((size_t)H * n * 4);
    assert_non_null(ref), assert_non_null(rl);
    cpu_attend(&p, pat, ref, rl);
    char what[128];
    snprintf(what, sizeof what, "dma(%d,%d,%d,ks%d)%s n=%d H=%d Hkv=%d d=%d tiles %llu/%lld", pat->keep, pat->n_init,
             pat->n_local, pat->key_score, input == IN_RISING ? " rising" : input == IN_TIED ? " tied" : "", n, H, Hkv, d,
             cnt[0], causal);
    compare(&p, out, lse, ref, rl, what);
    free(ref), free(rl), free(zc), free(tc), free(out), free(lse);
    krn_mask_ws_free(&w);
    prob_free(&p);
    return causal - tiles;
}

static void test_dma_random(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    static const int ns[] = {1, 5, 63, 64, 65, 130, 257, 700};
    static const int gq[][2] = {{8, 8}, {8, 2}, {8, 1}};
    /* keep, sinks, window: sparse with sinks and window, sparsest (no sinks, window 1), keep >= n */
    static const int cfg[][3] = {{40, 4, 16}, {8, 0, 1}, {2048, 64, 256}, {100, 70, 1}};
    uint64_t seed = 0x5bd1e9955bd1e995ULL ^ (uint64_t)time(NULL);
    int k = 0;
    skipped_total = causal_total = 0;
    for (int di = 0; di < 2; di++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (int gi = 0; gi < 3; gi++)
                for (int ks = 0; ks < 2; ks++, k++) {
                    if (ns[ni] > 300 && gi != 1) continue; /* keep the CPU reference quick */
                    const int *c = cfg[k % 4];
                    const eng_pattern pat = dma_pat(c[0], c[1], c[2], ks);
                    const int input = k % 5 == 4 ? IN_TIED : k % 5 == 2 ? IN_RISING : IN_RANDOM;
                    dma_case(ns[ni], gq[gi][0], gq[gi][1], di ? 128 : 64, &pat, input, seed += 0x9e3779b97f4a7c15ULL);
                }
    printf("  DMA tiles skipped over all cases: %lld of %lld causal\n", skipped_total, causal_total);
    assert_true(skipped_total > 0); /* the kernel really skips (counts checked per case) */
}

/* Longer inputs: many tiles, rising and tied scores (the heap's insert path), a large keep. */
static void test_dma_long(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    uint64_t seed = 0x2545f4914f6cdd1dULL ^ (uint64_t)time(NULL);
    eng_pattern p = dma_pat(96, 16, 64, 0);
    dma_case(3001, 4, 2, 128, &p, IN_RANDOM, seed += 0x1234567ULL);
    /* rising scores: theta follows the newest keys, so the early key tiles of late rows are skipped */
    const long long nrb = (2047 + 63) / 64, skipped = dma_case(2047, 4, 1, 64, &p, IN_RISING, seed += 0x1234567ULL);
    assert_true(skipped * 5 > 2 * 4 * nrb * (nrb + 1) / 2); /* > 40% (about 60% in a host simulation) */
    p.key_score = 1;
    dma_case(2500, 2, 2, 64, &p, IN_TIED, seed += 0x1234567ULL);
    p = dma_pat(1500, 32, 128, 0); /* a heap of 1500 */
    dma_case(2200, 2, 1, 128, &p, IN_RANDOM, seed += 0x1234567ULL);
}

/* Thresholds alone at lengths where the CPU attention would be slow: heaps in shared memory (keep
 * 5000) and in global memory (keep 13000 > 12288 entries), rising / tied / random scores. */
static void test_dma_thresholds(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    static const int keeps[] = {5000, 13000, 1};
    uint64_t seed = 0x853c49e6748fea9bULL ^ (uint64_t)time(NULL);
    for (int input = IN_RANDOM; input <= IN_TIED; input++)
        for (int ki = 0; ki < 3; ki++) {
            const int n = 20011, H = 2, d = 64;
            prob p;
            prob_init(&p, n, H, 1, d, seed += 0x1234567ULL, input);
            krn_mask_ws w;
            eng_err err = {{0}};
            if (krn_mask_ws_alloc(&w, H, n, &err)) fail_msg("%s", err.msg);
            const eng_pattern pat = dma_pat(keeps[ki], 8, 8, 0);
            krn_attn_args a = prob_args(&p);
            if (krn_dma_build(&pat, &a, 0, H, &w, 0, &err)) fail_msg("krn_dma_build: %s", err.msg);
            float *tc = malloc((size_t)n * 4), *zc = malloc((size_t)n * 4);
            assert_non_null(tc), assert_non_null(zc);
            for (int h = 0; h < H; h++) {
                eng_head_mask hm;
                if (krn_dma_mask_download(&w, h, n, 8, 8, &hm, 0, &err)) fail_msg("%s", err.msg);
                if (eng_dma_scores(0, NULL, 0, NULL, 0, p.v, d, n, d, zc, &err) ||
                    eng_dma_thresholds(zc, n, pat.keep, tc, &err))
                    fail_msg("%s", err.msg);
                assert_memory_equal(hm.z, zc, (size_t)n * 4);
                assert_memory_equal(hm.theta, tc, (size_t)n * 4);
                eng_dma_mask_free(&hm);
            }
            printf("  thresholds keep %d n %d (%s scores): exact\n", pat.keep, n,
                   input == IN_RISING ? "rising" : input == IN_TIED ? "tied" : "random");
            free(tc), free(zc);
            krn_mask_ws_free(&w);
            prob_free(&p);
        }
}

/* n:m pairs over n tokens per head (eng_dma_mask_count's closed form). */
static long long nm_pairs(int n, int nn, int m) {
    long long c = 0;
    for (int i = 0; i < n; i++) c += (long long)(i + 1) / m * nn + ((i + 1) % m < nn ? (i + 1) % m : nn);
    return c;
}

static void test_nm_random(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    static const int ns[] = {1, 5, 63, 64, 65, 130, 257, 700};
    static const int gq[][2] = {{8, 8}, {8, 2}, {8, 1}};
    static const int nm[][2] = {{2, 4}, {1, 4}, {1, 2}, {3, 8}, {5, 16}, {7, 32}, {20, 64}, {4, 4}, {1, 1}, {3, 3}};
    uint64_t seed = 0x9e3779b97f4a7c15ULL ^ (uint64_t)time(NULL);
    int k = 0;
    for (int di = 0; di < 2; di++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (int gi = 0; gi < 3; gi++)
                for (int r = 0; r < 2; r++, k++) {
                    if (ns[ni] > 300 && gi != 1) continue;
                    const int n = ns[ni], H = gq[gi][0], Hkv = gq[gi][1], d = di ? 128 : 64;
                    const eng_pattern pat = nm_pat(nm[k % 10][0], nm[k % 10][1]);
                    prob p;
                    prob_init(&p, n, H, Hkv, d, seed += 0x1234567ULL, IN_RANDOM);
                    krn_mask_ws w;
                    eng_err err = {{0}};
                    if (krn_mask_ws_alloc(&w, 1, 1, &err)) fail_msg("%s", err.msg); /* counters only */
                    unsigned long long cnt[2];
                    gpu_attend(&p, &pat, &w, cnt);
                    float *out, *lse;
                    fetch(&p, &out, &lse);
                    float *ref = malloc((size_t)n * H * d * 4), *rl = malloc((size_t)H * n * 4);
                    assert_non_null(ref), assert_non_null(rl);
                    cpu_attend(&p, &pat, ref, rl);
                    long long tiles = 0; /* 128-query CTAs over every causal 64-key tile */
                    for (int m0 = 0; m0 < n; m0 += 128) tiles += (long long)H * (((m0 + 128 < n ? m0 + 128 : n) - 1) / 64 + 1);
                    char what[128];
                    snprintf(what, sizeof what, "nm(%d:%d) n=%d H=%d Hkv=%d d=%d", pat.nm_n, pat.nm_m, n, H, Hkv, d);
                    compare(&p, out, lse, ref, rl, what);
                    if ((long long)cnt[1] != nm_pairs(n, pat.nm_n, pat.nm_m) * H)
                        fail_msg("%s: kept pairs %llu, want %lld", what, cnt[1], nm_pairs(n, pat.nm_n, pat.nm_m) * H);
                    if ((long long)cnt[0] != tiles) fail_msg("%s: tiles %llu, want %lld", what, cnt[0], tiles);
                    free(ref), free(rl), free(out), free(lse);
                    krn_mask_ws_free(&w);
                    prob_free(&p);
                }
}

/* Exact masks through one-hot values: out[i][h*d + j mod d] = p_ij a_j, non-zero iff (i, j) is
 * kept (n <= d, so every key has its own column). Compared with eng_dma_mask_row entry by entry. */
static void readout_case(int n, int H, int Hkv, int d, const eng_pattern *pat, uint64_t seed) {
    prob p;
    prob_init(&p, n, H, Hkv, d, seed, IN_READOUT);
    krn_mask_ws w;
    eng_err err = {{0}};
    if (krn_mask_ws_alloc(&w, H, n, &err)) fail_msg("%s", err.msg);
    unsigned long long cnt[2];
    gpu_attend(&p, pat, &w, cnt);
    float *out, *lse;
    fetch(&p, &out, &lse);
    unsigned char *keep = malloc((size_t)n);
    assert_non_null(keep);
    const int g = H / Hkv;
    long long kept = 0, ties = 0;
    for (int h = 0; h < H; h++) {
        eng_head_mask m;
        if (pat->kind == ENG_PAT_DMA) {
            if (krn_dma_mask_download(&w, h, n, pat->n_init, pat->n_local, &m, 0, &err)) fail_msg("%s", err.msg);
            if (pat->key_score == 0) { /* value norms a_j: exact on both sides */
                float *zc = malloc((size_t)n * 4);
                assert_non_null(zc);
                if (eng_dma_scores(0, NULL, 0, NULL, 0, p.v + (h / g) * d, Hkv * d, n, d, zc, &err)) fail_msg("%s", err.msg);
                assert_memory_equal(zc, m.z, (size_t)n * 4);
                free(zc);
            }
        } else if (eng_dma_mask_build(pat, p.q + h * d, H * d, p.k + (h / g) * d, p.v + (h / g) * d, Hkv * d, n, d, &m,
                                      &err)) {
            fail_msg("%s", err.msg);
        }
        for (int i = 0; i < n; i++) {
            eng_dma_mask_row(&m, i, keep);
            const float *o = out + (size_t)i * H * d + (size_t)h * d;
            for (int j = 0; j < n; j++) {
                const int want = j <= i && keep[j], got = o[j % d] != 0.0f;
                if (want != got)
                    fail_msg("%s head %d: (%d, %d) %s on the GPU, %s on the CPU (out %g)", eng_pattern_kind_name(pat->kind), h,
                             i, j, got ? "kept" : "dropped", want ? "kept" : "dropped", o[j % d]);
                kept += want;
            }
            if (pat->kind == ENG_PAT_NM) /* groups where the kept set was decided by a tie */
                for (int g0 = 0; g0 <= i; g0 += pat->nm_m)
                    for (int j = g0 + 1; j < g0 + pat->nm_m && j <= i; j++)
                        ties += keep[j] != keep[j - 1] && !memcmp(p.k + (size_t)j * Hkv * d + (h / g) * d,
                                                                  p.k + (size_t)(j - 1) * Hkv * d + (h / g) * d,
                                                                  (size_t)d * 4);
        }
        eng_dma_mask_free(&m);
    }
    if ((long long)cnt[1] != kept) fail_msg("kept pairs: GPU %llu, mask %lld", cnt[1], kept);
    printf("  readout %-30s n=%d H=%d Hkv=%d d=%d: %lld kept pairs identical (%lld tie-decided)\n",
           pat->kind == ENG_PAT_NM ? "nm" : "dma", n, H, Hkv, d, kept, ties);
    free(keep), free(out), free(lse);
    krn_mask_ws_free(&w);
    prob_free(&p);
}

static void test_exact_masks(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    static const int nm[][2] = {{2, 4}, {1, 4}, {3, 8}, {5, 16}, {9, 32}, {20, 64}, {1, 2}};
    static const int cases[][4] = {{37, 4, 2, 128}, {64, 4, 4, 64}, {100, 8, 1, 128}, {128, 8, 2, 128}, {50, 4, 1, 64}};
    uint64_t seed = 0xda942042e4dd58b5ULL ^ (uint64_t)time(NULL);
    for (int c = 0; c < 5; c++) {
        const int n = cases[c][0], H = cases[c][1], Hkv = cases[c][2], d = cases[c][3];
        for (int i = 0; i < 7; i++) {
            const eng_pattern p = nm_pat(nm[i][0], nm[i][1]);
            readout_case(n, H, Hkv, d, &p, seed += 0x1234567ULL);
        }
        for (int ks = 0; ks < 2; ks++) {
            eng_pattern p = dma_pat(n / 4 + 1, 3, 5, ks);
            readout_case(n, H, Hkv, d, &p, seed += 0x1234567ULL);
            p = dma_pat(n / 8 + 1, 0, 1, ks);
            readout_case(n, H, Hkv, d, &p, seed += 0x1234567ULL);
        }
    }
}

/* Refusals before any launch (no GPU needed). */
static void test_bad_args(void **state) {
    (void)state;
    assert_int_equal(krn_nm_supported(2, 4), 1);
    assert_int_equal(krn_nm_supported(1, 64), 1);
    assert_int_equal(krn_nm_supported(3, 3), 1); /* n == m: everything kept, any m */
    assert_int_equal(krn_nm_supported(2, 3), 0);
    assert_int_equal(krn_nm_supported(1, 65), 0);
    assert_int_equal(krn_nm_supported(0, 4), 0);
    krn_attn_args a = {100, 8, 2, 128, (void *)16, (void *)16, (void *)16, 1024, 256, (void *)16, 1024, NULL};
    eng_err err = {{0}};
    assert_int_equal(krn_attn_nm(&a, 0, 8, 2, 3, NULL, 0, &err), -1);
    assert_non_null(strstr(err.msg, "power of two"));
    assert_int_equal(krn_attn_nm(&a, 6, 3, 2, 4, NULL, 0, &err), -1);
    assert_non_null(strstr(err.msg, "heads"));
    krn_mask_ws w = {4, 100, (float *)16, (float *)16, (float *)16, (float *)16, (double *)16, NULL};
    eng_pattern p = dma_pat(10, 1, 1, 0);
    assert_int_equal(krn_dma_build(&p, &a, 0, 8, &w, 0, &err), -1); /* storage for 4 heads, 8 asked */
    assert_non_null(strstr(err.msg, "storage"));
    assert_int_equal(krn_attn_dma(&a, 0, 8, &w, 1, 1, NULL, 0, &err), -1);
    w.H = 8;
    assert_int_equal(krn_attn_dma(&a, 0, 8, &w, -1, 1, NULL, 0, &err), -1);
    assert_non_null(strstr(err.msg, "sink"));
    a.d = 96;
    assert_int_equal(krn_attn_dma(&a, 0, 8, &w, 1, 1, NULL, 0, &err), -1);
    assert_non_null(strstr(err.msg, "head dim"));
    a.d = 128;
    p.keep = 0; /* outside the parameter table's range */
    assert_int_equal(krn_dma_build(&p, &a, 0, 8, &w, 0, &err), -1);
    const eng_pattern vs = eng_pattern_make(ENG_PAT_VS);
    assert_int_equal(krn_mask_attend(&vs, &a, 0, 8, &w, NULL, 0, &err), -1);
    assert_non_null(strstr(err.msg, "not dma or nm"));
}

/* The CUDA prefill with DMA / N:M heads against the CPU prefill (as gpu_patterns, whose bounds
 * these are): layer 0 DMA (value norm; VS score), N:M 2:4, 1:4, an N:M with no GPU kernel (1:3,
 * CPU path), VS, dense; layer 1 the same with reshape on. */
static void test_prefill_masks(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    const int n = 700, H = 8, Hkv = 4, d = 64, V = 1000;
    uint64_t seed = 0x7f4a7c159e3779b9ULL ^ (uint64_t)time(NULL);
    fake_model f;
    fake_init(&f, 2, 256, 512, H, Hkv, d, V, seed);
    int *tok = malloc(sizeof(int) * (size_t)n);
    assert_non_null(tok);
    for (int i = 0; i < n; i++) tok[i] = (int)(tu_rand_u64(&seed) % (uint64_t)V);
    eng_pattern heads[16];
    eng_pattern_cfg pc;
    memset(&pc, 0, sizeof pc);
    pc.n_layers = 2, pc.n_heads = H, pc.heads = heads;
    for (int l = 0; l < 2; l++) {
        eng_pattern *hp = heads + l * H;
        hp[0] = dma_pat(32, 4, 32, 0);
        hp[1] = dma_pat(32, 4, 32, 0); /* same mask as head 0: one launch for both */
        hp[2] = dma_pat(48, 0, 16, 1);
        hp[3] = nm_pat(2, 4);
        hp[4] = nm_pat(1, 4);
        hp[5] = nm_pat(1, 3);
        hp[6] = eng_pattern_make(ENG_PAT_VS);
        hp[6].vertical = 30, hp[6].slash = 50;
        hp[7] = eng_pattern_make(ENG_PAT_DENSE);
        for (int h = 0; h < 7; h++) hp[h].reshape = l == 1;
    }
    eng_err err = {{0}};
    eng_backend *cpu = eng_backend_cpu_create(&err), *gpu = eng_backend_cuda_create(&err);
    if (!cpu || !gpu) fail_msg("backend: %s", err.msg);
    eng_prefill_opts o, od;
    memset(&o, 0, sizeof o);
    memset(&od, 0, sizeof od);
    o.patterns = &pc;
    o.keep_lse = 1;
    eng_prefill_out cs, cd, gs, gs2;
    if (cpu->prefill(cpu, &f.m, tok, n, &o, &cs, &err)) fail_msg("cpu sparse prefill: %s", err.msg);
    if (cpu->prefill(cpu, &f.m, tok, n, &od, &cd, &err)) fail_msg("cpu dense prefill: %s", err.msg);
    if (gpu->prefill(gpu, &f.m, tok, n, &o, &gs, &err)) fail_msg("gpu sparse prefill: %s", err.msg);
    o.keep_lse = 0;
    if (gpu->prefill(gpu, &f.m, tok, n, &o, &gs2, &err)) fail_msg("gpu sparse prefill (no LSE): %s", err.msg);
    const double rel = tu_rel_l2(gs.last_logits, cs.last_logits, (size_t)V);
    const double rel_dense = tu_rel_l2(gs.last_logits, cd.last_logits, (size_t)V);
    const double cpu_gap = tu_rel_l2(cs.last_logits, cd.last_logits, (size_t)V);
    const double rel2 = tu_rel_l2(gs2.last_logits, gs.last_logits, (size_t)V);
    double dl = 0;
    int agree = 0;
    for (int i = 0; i < n; i++) agree += cs.argmax[i] == gs.argmax[i];
    for (int i = 0; i + 1 < n; i++) {
        if (!isfinite(gs.next_logprob[i])) fail_msg("gpu next_logprob[%d] not finite", i);
        dl += fabs((double)cs.next_logprob[i] - gs.next_logprob[i]);
    }
    dl /= n - 1;
    printf("  dma/nm prefill n=%d: gpu vs cpu sparse logits rel-L2 %.2e (vs cpu dense %.2e; cpu sparse vs dense "
           "%.2e), mean |dlogp| %.3f, argmax agree %d/%d, keep_lse on/off %.2e, gpu %.3f s\n",
           n, rel, rel_dense, cpu_gap, dl, agree, n, rel2, gs.seconds);
    if (!(cpu_gap > 1e-2)) fail_msg("the config barely changes the CPU logits (%.2e): test too weak", cpu_gap);
    if (!(rel < 1e-1)) fail_msg("last logits rel-L2 %.3e vs the CPU sparse prefill", rel);
    if (!(rel < rel_dense)) fail_msg("GPU logits closer to dense (%.3e) than to CPU sparse (%.3e)", rel_dense, rel);
    if (!(dl < 1e-1)) fail_msg("mean |dlogprob| %.3e", dl);
    if (agree < n * 85 / 100) fail_msg("argmax agrees on %d of %d", agree, n);
    if (!(rel2 < 1e-2)) fail_msg("keep_lse on/off runs differ: rel-L2 %.3e", rel2);
    eng_prefill_out_free(&cs), eng_prefill_out_free(&cd), eng_prefill_out_free(&gs), eng_prefill_out_free(&gs2);
    cpu->destroy(cpu), gpu->destroy(gpu);
    free(tok);
    fake_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_dma_random),
        cmocka_unit_test(test_dma_long),
        cmocka_unit_test(test_dma_thresholds),
        cmocka_unit_test(test_nm_random),
        cmocka_unit_test(test_exact_masks),
        cmocka_unit_test(test_prefill_masks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
