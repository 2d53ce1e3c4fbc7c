/* gpu_attn: the CUDA attention kernels (kernels/krn_attn.cu) against the CPU references on fresh
 * random bf16-representable inputs: dense causal vs eng_attn_dense_head, sparse (random indexes with
 * block offsets that are not multiples of 64, gathered columns, short column groups) vs a direct
 * per-entry reference. Odd N, N < 64, GQA 1/4/8, head dim 64 and 128; outputs poisoned first.
 * Every kernel variant (KRN_ATTN_VARIANTS; the wgmma ones, 7-9, where the card and build have them). Tolerance: rel-L2 of out < 1e-2 (bf16 P and output rounding), |lse - ref| < 2e-3. */
#include "gpu_util.h"

#include <time.h>

#include <cuda_runtime_api.h>

#include "eng_attn.h"
#include "krn_attn.h"
#include "krn_hattn.h"

/* Random (n, heads*d) data rounded to bf16: f keeps the rounded floats, b the bf16 bits. */
static void rand_bf16(float *f, uint16_t *b, size_t cnt, uint64_t *seed, float scale) {
    for (size_t i = 0; i < cnt; i++) {
        b[i] = eng_f32_to_bf16(tu_randf(seed) * scale);
        f[i] = eng_bf16_to_f32(b[i]);
    }
}

typedef struct {
    int n, H, Hkv, d;
    float *q, *k, *v;       /* host, bf16-rounded */
    uint16_t *qb, *kb, *vb; /* host bf16 */
    void *dq, *dk, *dv, *dout;
    float *dlse;
} prob;

static void prob_init(prob *p, int n, int H, int Hkv, int d, uint64_t seed, float qscale) {
    memset(p, 0, sizeof *p);
    p->n = n, p->H = H, p->Hkv = Hkv, p->d = d;
    size_t nq = (size_t)n * H * d, nk = (size_t)n * Hkv * d;
    p->q = malloc(nq * 4), p->k = malloc(nk * 4), p->v = malloc(nk * 4);
    p->qb = malloc(nq * 2), p->kb = malloc(nk * 2), p->vb = malloc(nk * 2);
    assert_non_null(p->q), assert_non_null(p->k), assert_non_null(p->v);
    assert_non_null(p->qb), assert_non_null(p->kb), assert_non_null(p->vb);
    rand_bf16(p->q, p->qb, nq, &seed, qscale);
    rand_bf16(p->k, p->kb, nk, &seed, 1.0f);
    rand_bf16(p->v, p->vb, nk, &seed, 1.0f);
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

/* Fetch GPU results and compare with ref (n, H*d) / ref_lse [H][n]. */
static void compare(const prob *p, const float *ref, const float *ref_lse, const char *what) {
    size_t nq = (size_t)p->n * p->H * p->d;
    uint16_t *ob = malloc(nq * 2);
    float *o = malloc(nq * 4), *lse = malloc((size_t)p->H * p->n * 4);
    assert_non_null(ob), assert_non_null(o), assert_non_null(lse);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(ob, p->dout, nq * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse, p->dlse, (size_t)p->H * p->n * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < nq; i++) {
        o[i] = eng_bf16_to_f32(ob[i]);
        if (!isfinite(o[i])) fail_msg("%s: out[%zu] not written / not finite", what, i);
    }
    double rel = tu_rel_l2(o, ref, nq), lerr = 0;
    for (size_t i = 0; i < (size_t)p->H * p->n; i++) {
        if (!isfinite(lse[i]) && !(isinf(ref_lse[i]) && isinf(lse[i])))
            fail_msg("%s: lse[%zu] = %g not written / not finite (ref %g)", what, i, lse[i], ref_lse[i]);
        double e = isinf(ref_lse[i]) ? 0 : fabs((double)lse[i] - ref_lse[i]);
        if (e > lerr) lerr = e;
    }
    printf("  %-44s rel-L2 %.2e  lse max-abs %.2e\n", what, rel, lerr);
    if (!(rel < 1e-2)) fail_msg("%s: rel-L2 %.3e >= 1e-2", what, rel);
    if (!(lerr < 2e-3)) fail_msg("%s: lse error %.3e >= 2e-3", what, lerr);
    free(ob), free(o), free(lse);
}

/* Variants 7-9 need an sm_90 card and an sm_90a build. */
static int variant_runs(int v) { return v < 7 || krn_hattn_available(); }

static void dense_case(int n, int H, int Hkv, int d, int variant, uint64_t seed) {
    prob p;
    prob_init(&p, n, H, Hkv, d, seed, 2.0f);
    krn_attn_args a = prob_args(&p);
    eng_err err = {{0}};
    if (krn_attn_dense(&a, variant, 0, &err)) fail_msg("krn_attn_dense: %s", err.msg);
    float *ref = malloc((size_t)n * H * d * 4), *rl = malloc((size_t)H * n * 4);
    assert_non_null(ref), assert_non_null(rl);
    const int g = H / Hkv;
    for (int h = 0; h < H; h++)
        eng_attn_dense_head(p.q + h * d, H * d, p.k + (h / g) * d, p.v + (h / g) * d, Hkv * d, n, d, ref + h * d,
                            H * d, rl + (size_t)h * n);
    char what[96];
    snprintf(what, sizeof what, "dense v%d n=%d H=%d Hkv=%d d=%d", variant, n, H, Hkv, d);
    compare(&p, ref, rl, what);
    free(ref), free(rl);
    prob_free(&p);
}

static void test_dense(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    static const int ns[] = {1, 5, 63, 64, 65, 130, 257, 701};
    static const int gq[][2] = {{8, 8}, {8, 2}, {8, 1}};
    uint64_t seed = 0x9e3779b97f4a7c15ULL ^ (uint64_t)time(NULL);
    for (int di = 0; di < 2; di++)
        for (int v = 0; v < KRN_ATTN_VARIANTS; v++)
            for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
                for (int gi = 0; gi < 3; gi++) {
                    if (ns[ni] > 300 && gi != 1) continue; /* keep the CPU reference quick */
                    if (!variant_runs(v)) continue;
                    dense_case(ns[ni], gq[gi][0], gq[gi][1], di ? 128 : 64, v, seed += 0x1234567ULL);
                }
}

/* A random index in the eng_index.h format for H heads: per row block [m0, m1) some disjoint key
 * blocks at arbitrary token offsets <= m1 - 1 (the last often the diagonal), then columns < m0
 * outside the blocks. Host arrays laid out as krn_index_dev. */
typedef struct {
    int n, n_rb, mb, mc;
    int *bc, *bo, *cc, *ci;
    int *band; /* [H][2] sink, window (eng_index.h band mask); window 0 = off */
} hidx;

static void hidx_random(hidx *x, int H, int n, uint64_t *seed) {
    x->n = n, x->n_rb = (n + 63) / 64, x->mb = 8, x->mc = 200;
    size_t rows = (size_t)H * x->n_rb;
    x->bc = calloc(rows, 4), x->cc = calloc(rows, 4);
    x->bo = calloc(rows * x->mb, 4), x->ci = calloc(rows * x->mc, 4);
    assert_non_null(x->bc), assert_non_null(x->cc), assert_non_null(x->bo), assert_non_null(x->ci);
    char *used = malloc((size_t)n);
    x->band = calloc((size_t)H * 2, 4);
    assert_non_null(used), assert_non_null(x->band);
    for (int h = 0; h < H; h++)
        if (tu_rand_u64(seed) % 3 == 0) {
            x->band[2 * h] = (int)(tu_rand_u64(seed) % 100);
            x->band[2 * h + 1] = 1 + (int)(tu_rand_u64(seed) % 300);
        }
    for (size_t r = 0; r < rows; r++) {
        int rb = (int)(r % x->n_rb), m0 = rb * 64, m1 = m0 + 64 < n ? m0 + 64 : n;
        /* Sometimes the previous row block's lists again (plus its own diagonal block when that
         * does not overlap): neighbours sharing blocks and columns, as VS and A-shape indexes
         * have them (the paired sparse kernel, variant 0, loads such tiles once for both). */
        if (rb > 0 && tu_rand_u64(seed) % 3 == 0) {
            int nb = x->bc[r - 1], *bo = x->bo + r * x->mb;
            memcpy(bo, x->bo + (r - 1) * x->mb, (size_t)nb * 4);
            if (m1 - 64 >= m0 && nb < x->mb && tu_rand_u64(seed) % 2) bo[nb++] = m1 - 64;
            x->bc[r] = nb;
            x->cc[r] = x->cc[r - 1];
            memcpy(x->ci + r * x->mc, x->ci + (r - 1) * x->mc, (size_t)x->cc[r] * 4);
            continue;
        }
        memset(used, 0, (size_t)n);
        int *bo = x->bo + r * x->mb, nb = 0;
        /* Diagonal block ending at m1 (start may be < m0 when m1 - 64 is), sometimes absent. */
        int diag = m1 - 64 > 0 ? m1 - 64 : 0;
        int have_diag = (tu_rand_u64(seed) % 5) != 0 || m0 == 0;
        /* Earlier blocks: random starts walking left from the diagonal, non-overlapping. */
        int tmp[8], nt = 0, lim = have_diag ? diag : m1; /* a block [s, s+64) must end <= lim */
        int want = (int)(tu_rand_u64(seed) % 4);
        while (nt < want && lim - 64 >= 0) {
            int gap = (int)(tu_rand_u64(seed) % 150);
            int s = lim - 64 - gap;
            if (s < 0) s = 0;
            if (s + 64 > lim) break;
            tmp[nt++] = s;
            lim = s;
        }
        for (int i = nt - 1; i >= 0; i--) bo[nb++] = tmp[i];
        if (have_diag) bo[nb++] = diag;
        for (int i = 0; i < nb; i++)
            for (int k = bo[i]; k < bo[i] + 64 && k < n; k++) used[k] = 1;
        x->bc[r] = nb;
        /* Columns: a random subset of [0, m0) not covered by blocks, sorted ascending. */
        int *ci = x->ci + r * x->mc, nc = 0;
        int want_c = (int)(tu_rand_u64(seed) % (x->mc + 1));
        for (int k = 0; k < m0 && nc < x->mc; k++)
            if (!used[k] && (int)(tu_rand_u64(seed) % (m0 + 1)) < want_c) ci[nc++] = k;
        x->cc[r] = nc;
    }
    free(used);
}

static void hidx_free(hidx *x) { free(x->bc), free(x->cc), free(x->bo), free(x->ci), free(x->band); }

/* Direct reference: for each query row, the keys the index names (blocks masked causally,
 * columns as given), softmax in double. */
static void sparse_ref(const prob *p, const hidx *x, float *out, float *lse) {
    const int n = p->n, H = p->H, d = p->d, g = H / p->Hkv;
    double *s = malloc((size_t)n * 8 + 64 * 8), *acc = malloc((size_t)d * 8);
    int *keys = malloc(((size_t)n + 64) * 4);
    assert_non_null(s), assert_non_null(acc), assert_non_null(keys);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < n; i++) {
            size_t r = (size_t)h * x->n_rb + i / 64;
            int nk = 0, sink = x->band[2 * h], win = x->band[2 * h + 1];
            for (int b = 0; b < x->bc[r]; b++)
                for (int k = x->bo[r * x->mb + b]; k < x->bo[r * x->mb + b] + 64; k++)
                    if (k <= i && !(win > 0 && k >= sink && i - k >= win)) keys[nk++] = k;
            for (int c = 0; c < x->cc[r]; c++) keys[nk++] = x->ci[r * x->mc + c];
            const float *qi = p->q + (size_t)i * H * d + h * d;
            double mx = -INFINITY;
            for (int t = 0; t < nk; t++) {
                const float *kt = p->k + (size_t)keys[t] * p->Hkv * d + (h / g) * d;
                double dot = 0;
                for (int c = 0; c < d; c++) dot += (double)qi[c] * kt[c];
                s[t] = dot / sqrt((double)d);
                if (s[t] > mx) mx = s[t];
            }
            double l = 0;
            for (int c = 0; c < d; c++) acc[c] = 0;
            for (int t = 0; t < nk; t++) {
                double e = exp(s[t] - mx);
                l += e;
                const float *vt = p->v + (size_t)keys[t] * p->Hkv * d + (h / g) * d;
                for (int c = 0; c < d; c++) acc[c] += e * vt[c];
            }
            float *o = out + (size_t)i * H * d + h * d;
            for (int c = 0; c < d; c++) o[c] = nk ? (float)(acc[c] / l) : 0.0f;
            lse[(size_t)h * n + i] = nk ? (float)(mx + log(l)) : -INFINITY;
        }
    free(s), free(acc), free(keys);
}

static void sparse_case(int n, int H, int Hkv, int d, int variant, uint64_t seed) {
    prob p;
    prob_init(&p, n, H, Hkv, d, seed, 2.0f);
    hidx x;
    hidx_random(&x, H, n, &seed);
    krn_index_dev dx;
    eng_err err = {{0}};
    if (krn_index_dev_alloc(&dx, H, n, x.mb, x.mc, &err)) fail_msg("%s", err.msg);
    size_t rows = (size_t)H * x.n_rb;
    CK(cudaMemcpy(dx.block_count, x.bc, rows * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx.column_count, x.cc, rows * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx.block_offset, x.bo, rows * x.mb * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx.column_index, x.ci, rows * x.mc * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx.band, x.band, (size_t)H * 2 * 4, cudaMemcpyHostToDevice));
    krn_attn_args a = prob_args(&p);
    if (krn_attn_sparse_variant(&a, &dx, variant, 0, &err)) fail_msg("krn_attn_sparse: %s", err.msg);
    float *ref = malloc((size_t)n * H * d * 4), *rl = malloc((size_t)H * n * 4);
    assert_non_null(ref), assert_non_null(rl);
    sparse_ref(&p, &x, ref, rl);
    char what[96];
    snprintf(what, sizeof what, "sparse v%d n=%d H=%d Hkv=%d d=%d", variant, n, H, Hkv, d);
    compare(&p, ref, rl, what);
    free(ref), free(rl);
    krn_index_dev_free(&dx);
    hidx_free(&x);
    prob_free(&p);
}

static void test_sparse_random_index(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    static const int ns[] = {1, 37, 64, 129, 300, 777};
    static const int gq[][2] = {{8, 8}, {8, 2}, {8, 1}};
    uint64_t seed = 0x2545f4914f6cdd1dULL ^ (uint64_t)time(NULL);
    for (int di = 0; di < 2; di++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (int gi = 0; gi < 3; gi++)
                for (int v = 0; v < KRN_ATTN_VARIANTS; v++)
                    if (v != 2 && variant_runs(v)) /* 2 is the same sparse kernel as 1 */
                        sparse_case(ns[ni], gq[gi][0], gq[gi][1], di ? 128 : 64, v, seed += 0x9876543ULL);
}

/* Bad arguments are refused with a message, never launched. */
static void test_bad_args(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    krn_attn_args a = {100, 8, 3, 128, (void *)1, (void *)1, (void *)1, 1024, 384, (void *)1, 1024, NULL};
    eng_err err = {{0}};
    assert_int_equal(krn_attn_dense(&a, 0, 0, &err), -1);
    assert_non_null(strstr(err.msg, "KV heads"));
    a.Hkv = 8, a.d = 96;
    assert_int_equal(krn_attn_dense(&a, 0, 0, &err), -1);
    assert_non_null(strstr(err.msg, "head dim"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense),
        cmocka_unit_test(test_sparse_random_index),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
