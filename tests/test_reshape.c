/* test_reshape: the Re-ttention-style dropped-block estimate against a direct computation of its
 * formula (kept keys exactly + every wholly dropped 64-key block as |J| exp(scale q . kbar_J) with
 * value vbar_J), for index and mask kinds; partly kept blocks get nothing; reshape off changes
 * nothing; the layer metrics report the error with and without it, and the estimate helps when
 * blocks are homogeneous. */
#include "test_util.h"

#include "eng_dma.h"
#include "eng_metrics.h"
#include "eng_pattern.h"
#include "eng_report.h"
#include "eng_reshape.h"

static float *rnd(int n, int d, uint64_t *s, float sc) {
    float *x = malloc(sizeof(float) * (size_t)n * d);
    tu_fill(x, (size_t)n * d, s, sc);
    return x;
}

/* The formula, directly, in double; returns the number of (row, block) estimates. */
static long long reshape_direct(const eng_head_mask *m, const float *q, const float *k, const float *v, int n, int d,
                                float *out) {
    const double sc = 1.0 / sqrt((double)d);
    long long cnt = 0;
    for (int i = 0; i < n; i++) {
        double num[64] = {0}, den = 0;
        for (int j = 0; j <= i; j++) {
            if (!eng_dma_mask_covers(m, i, j)) continue;
            double a = 0;
            for (int c = 0; c < d; c++) a += (double)q[i * d + c] * k[j * d + c];
            a = exp(a * sc);
            den += a;
            for (int c = 0; c < d; c++) num[c] += a * v[j * d + c];
        }
        for (int j0 = 0; j0 <= i; j0 += 64) {
            int j1 = j0 + 63 < i ? j0 + 63 : i, any = 0;
            for (int j = j0; j <= j1; j++) any |= eng_dma_mask_covers(m, i, j);
            if (any) continue;
            double kb[64] = {0}, vb[64] = {0}, a = 0;
            const int sz = j1 - j0 + 1;
            for (int j = j0; j <= j1; j++)
                for (int c = 0; c < d; c++) kb[c] += k[j * d + c] / (double)sz, vb[c] += v[j * d + c] / (double)sz;
            for (int c = 0; c < d; c++) a += q[i * d + c] * kb[c];
            a = sz * exp(a * sc);
            den += a;
            for (int c = 0; c < d; c++) num[c] += a * vb[c];
            cnt++;
        }
        for (int c = 0; c < d; c++) out[i * d + c] = (float)(num[c] / den);
    }
    return cnt;
}

static void test_formula(void **state) {
    (void)state;
    uint64_t seed = 0x7e77;
    const int n = 333, d = 16;
    float *q = rnd(n, d, &seed, 1.5f), *k = rnd(n, d, &seed, 1), *v = rnd(n, d, &seed, 1);
    eng_pattern pats[5];
    pats[0] = eng_pattern_make(ENG_PAT_ASHAPE), pats[0].n_init = 10, pats[0].n_local = 70;
    pats[1] = eng_pattern_make(ENG_PAT_VS), pats[1].vertical = 30, pats[1].slash = 50;
    pats[2] = eng_pattern_make(ENG_PAT_DMA), pats[2].keep = 8, pats[2].n_init = 2, pats[2].n_local = 20;
    pats[3] = eng_pattern_make(ENG_PAT_BS), pats[3].topk = 2;
    pats[4] = eng_pattern_make(ENG_PAT_NM);
    float *ref = malloc(sizeof(float) * n * d), *out = malloc(sizeof(float) * n * d);
    float *plain = malloc(sizeof(float) * n * d), *off = malloc(sizeof(float) * n * d);
    float *lse = malloc(sizeof(float) * n), *lse2 = malloc(sizeof(float) * n);
    eng_err err = {{0}};
    for (int t = 0; t < 5; t++) {
        eng_pattern p = pats[t];
        eng_head_mask m;
        assert_int_equal(eng_dma_mask_build(&p, q, d, k, v, d, n, d, &m, &err), 0);
        long long want = reshape_direct(&m, q, k, v, n, d, ref);
        /* reshape off: the plain sparse output; on: the estimate added, out_plain = the plain one */
        assert_int_equal(eng_dma_attend(&p, q, d, k, v, d, n, d, off, d, lse2, NULL, NULL, &err), 0);
        p.reshape = 1;
        assert_int_equal(eng_dma_attend(&p, q, d, k, v, d, n, d, out, d, lse, plain, NULL, &err), 0);
        assert_true(tu_rel_l2(plain, off, (size_t)n * d) == 0);
        for (int i = 0; i < n; i++) assert_true(lse[i] == lse2[i]); /* lse: the computed set's */
        double e = tu_rel_l2(out, ref, (size_t)n * d);
        if (e > 2e-5) fail_msg("pattern %d: reshape vs direct rel err %g", t, e);
        /* the pass reports as many estimates as the definition has */
        long long got = 0;
        memcpy(out, off, sizeof(float) * n * d);
        assert_int_equal(eng_reshape_apply(&m, q, d, k, v, d, n, d, out, d, lse2, lse, &got, &err), 0);
        assert_int_equal(got, want);
        if (t == 0 || t == 2 || t == 3) assert_true(want > 0);
        if (t == 4) assert_int_equal(want, 0); /* 2:4 keeps keys in every block: nothing to estimate */
        if (want == 0) assert_true(tu_rel_l2(out, off, (size_t)n * d) == 0);
        for (int i = 0; i < n; i++) assert_true(lse[i] >= lse2[i] - 1e-6); /* more mass, never less */
        eng_dma_mask_free(&m);
    }
    free(q), free(k), free(v), free(ref), free(out), free(plain), free(off), free(lse), free(lse2);
}

/* Homogeneous blocks (every key and value of a block close to its mean): the block estimate is
 * nearly exact, so reshape must cut the error of a block-aligned pattern (block-sparse: every
 * block is kept whole or dropped whole); the layer metrics carry both errors. */
static void test_metrics_with_and_without(void **state) {
    (void)state;
    uint64_t seed = 0xb10c;
    const int n = 512, H = 2, Hkv = 1, d = 16, qd = H * d;
    float *q = rnd(n, qd, &seed, 1.0f), *k = malloc(sizeof(float) * n * d), *v = malloc(sizeof(float) * n * d);
    float base_k[8][16], base_v[8][16];
    for (int b = 0; b < 8; b++) {
        tu_fill(base_k[b], 16, &seed, 2.0f);
        tu_fill(base_v[b], 16, &seed, 1.0f);
    }
    for (int j = 0; j < n; j++)
        for (int c = 0; c < d; c++) {
            k[j * d + c] = base_k[j / 64][c] + 0.01f * tu_randf(&seed);
            v[j * d + c] = base_v[j / 64][c] + 0.01f * tu_randf(&seed);
        }
    eng_pattern a = eng_pattern_make(ENG_PAT_BS), b;
    a.topk = 2;
    b = a;
    b.reshape = 1;
    const eng_pattern *pats[2] = {&a, &b};
    eng_head_metrics hm[2];
    eng_err err = {{0}};
    if (eng_report_layer(NULL, q, k, v, NULL, NULL, n, H, Hkv, d, pats, hm, &err)) fail_msg("%s", err.msg);
    assert_true(isnan(hm[0].error_plain));
    assert_true(isfinite(hm[1].error_plain));
    /* head 1 without reshape = head 0's pattern on its own queries: recompute directly */
    float *os = malloc(sizeof(float) * n * d), *od = malloc(sizeof(float) * n * d), *ls = malloc(sizeof(float) * n);
    float *ld = malloc(sizeof(float) * n);
    eng_pattern dn = eng_pattern_make(ENG_PAT_DENSE);
    assert_int_equal(eng_dma_attend(&dn, q + d, qd, k, v, d, n, d, od, d, ld, NULL, NULL, &err), 0);
    assert_int_equal(eng_dma_attend(&a, q + d, qd, k, v, d, n, d, os, d, ls, NULL, NULL, &err), 0);
    double e_plain = tu_rel_l2(os, od, (size_t)n * d);
    assert_true(fabs(hm[1].error_plain - e_plain) < 1e-6);
    assert_true(hm[1].recall < 1 && hm[1].computed == hm[0].computed);
    print_message("block-sparse topk 2, homogeneous blocks: error %.4g with reshape, %.4g without\n", hm[1].error,
                  hm[1].error_plain);
    if (!(hm[1].error < 0.05 * hm[1].error_plain))
        fail_msg("reshape error %g vs plain %g: expected a large cut on homogeneous blocks", hm[1].error, hm[1].error_plain);
    eng_layer_metrics lm;
    eng_metrics_layer(hm, 2, &lm);
    assert_int_equal(lm.n_reshape, 1);
    assert_true(lm.error_plain > lm.error);
    free(q), free(k), free(v), free(os), free(od), free(ls), free(ld);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formula),
        cmocka_unit_test(test_metrics_with_and_without),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
