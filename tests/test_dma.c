/* test_dma: the DMA-style threshold mask and the N:M mask against brute-force definitions —
 * scores, thresholds (exact and non-decreasing), membership, counts, the kernel's tile skipping
 * (a tile runs iff it holds a kept pair), attention vs a masked softmax, 2:4 keeping exactly the 2
 * largest of every 4 — and both kinds through the prefill entry point and the layer metrics. */
#include "test_util.h"

#include "eng_attn.h"
#include "eng_dma.h"
#include "eng_metrics.h"
#include "eng_pattern.h"
#include "eng_report.h"

static float *rnd(int n, int d, uint64_t *s, float sc) {
    float *x = malloc(sizeof(float) * (size_t)n * d);
    tu_fill(x, (size_t)n * d, s, sc);
    return x;
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void test_thresholds(void **state) {
    (void)state;
    uint64_t seed = 0xd4a1;
    const int n = 300;
    float *z = rnd(n, 1, &seed, 1), *th = malloc(sizeof(float) * n), *tmp = malloc(sizeof(float) * n);
    z[7] = z[8] = z[9]; /* ties */
    z[20] = NAN;        /* treated as -inf */
    eng_err err = {{0}};
    const int keeps[] = {1, 5, 64, 299, 300, 1000};
    for (int t = 0; t < 6; t++) {
        assert_int_equal(eng_dma_thresholds(z, n, keeps[t], th, &err), 0);
        for (int i = 0; i < n; i++) {
            if (i + 1 <= keeps[t]) {
                assert_true(th[i] == -INFINITY);
                continue;
            }
            for (int j = 0; j <= i; j++) tmp[j] = isnan(z[j]) ? -INFINITY : z[j];
            qsort(tmp, (size_t)i + 1, sizeof *tmp, cmp_desc);
            assert_true(th[i] == tmp[keeps[t] - 1]);
            assert_true(i == 0 || th[i] >= th[i - 1]); /* non-decreasing */
        }
    }
    assert_int_not_equal(eng_dma_thresholds(z, n, 0, th, &err), 0);
    free(z), free(th), free(tmp);
}

static void test_scores(void **state) {
    (void)state;
    uint64_t seed = 0x5c0e;
    const int n = 150, d = 12;
    float *q = rnd(n, d, &seed, 2), *k = rnd(n, d, &seed, 1), *v = rnd(n, d, &seed, 1);
    float *z = malloc(sizeof(float) * n);
    eng_err err = {{0}};
    assert_int_equal(eng_dma_scores(0, q, d, k, d, v, d, n, d, z, &err), 0);
    for (int j = 0; j < n; j++) {
        double s = 0;
        for (int c = 0; c < d; c++) s += (double)v[j * d + c] * v[j * d + c];
        assert_true(fabs(z[j] - sqrt(s)) < 1e-5);
    }
    assert_int_equal(eng_dma_scores(1, q, d, k, d, v, d, n, d, z, &err), 0);
    double tot = 0;
    for (int j = 0; j < n; j++) {
        double ref = 0;
        for (int i = n - 64; i < n; i++) {
            if (j > i) continue;
            double mx = -INFINITY, sum = 0, sj = 0;
            for (int t = 0; t <= i; t++) {
                double a = 0;
                for (int c = 0; c < d; c++) a += (double)q[i * d + c] * k[t * d + c];
                a /= sqrt((double)d);
                mx = a > mx ? a : mx;
            }
            for (int t = 0; t <= i; t++) {
                double a = 0;
                for (int c = 0; c < d; c++) a += (double)q[i * d + c] * k[t * d + c];
                a = exp(a / sqrt((double)d) - mx);
                sum += a;
                if (t == j) sj = a;
            }
            ref += sj / sum;
        }
        assert_true(fabs(z[j] - ref) < 1e-5);
        tot += z[j];
    }
    assert_true(fabs(tot - 64) < 1e-3); /* 64 rows of probabilities */
    assert_int_not_equal(eng_dma_scores(2, q, d, k, d, v, d, n, d, z, &err), 0);
    free(q), free(k), free(v), free(z);
}

/* Masked softmax in double over the pairs the mask covers; checks out, lse and the pair count. */
static void check_attention(const eng_head_mask *m, const float *q, const float *k, const float *v, int n, int d,
                            eng_dma_stats *st) {
    float *out = malloc(sizeof(float) * (size_t)n * d), *lse = malloc(sizeof(float) * (size_t)n);
    float *ref = malloc(sizeof(float) * (size_t)n * d);
    double *s = malloc(sizeof(double) * (size_t)n);
    eng_err err = {{0}};
    for (int i = 0; i < n * d; i++) out[i] = NAN;
    assert_int_equal(eng_dma_attn_head(m, q, d, k, v, d, n, d, out, d, lse, st, &err), 0);
    long long pairs = 0;
    for (int i = 0; i < n; i++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; j++) {
            s[j] = -INFINITY;
            if (!eng_dma_mask_covers(m, i, j)) continue;
            pairs++;
            double a = 0;
            for (int c = 0; c < d; c++) a += (double)q[i * d + c] * k[j * d + c];
            s[j] = a / sqrt((double)d);
            mx = s[j] > mx ? s[j] : mx;
        }
        for (int c = 0; c < d; c++) ref[i * d + c] = 0;
        for (int j = 0; j <= i; j++) {
            if (s[j] == -INFINITY) continue;
            double p = exp(s[j] - mx);
            sum += p;
            for (int c = 0; c < d; c++) ref[i * d + c] += (float)(p * v[j * d + c]);
        }
        assert_true(sum > 0);
        for (int c = 0; c < d; c++) ref[i * d + c] /= (float)sum;
        if (fabs(lse[i] - (mx + log(sum))) > 1e-4) fail_msg("row %d lse %g vs %g", i, lse[i], mx + log(sum));
    }
    assert_int_equal(pairs, eng_dma_mask_count(m));
    double e = tu_rel_l2(out, ref, (size_t)n * d);
    if (e > 1e-5) fail_msg("attention rel err %g", e);
    free(out), free(lse), free(ref), free(s);
}

static void test_dma_mask_tiles_attention(void **state) {
    (void)state;
    uint64_t seed = 0xd3a;
    const int ns[] = {37, 200, 333};
    for (int t = 0; t < 3; t++) {
        const int n = ns[t], d = 16;
        float *q = rnd(n, d, &seed, 2), *k = rnd(n, d, &seed, 1), *v = rnd(n, d, &seed, 1);
        for (int j = 0; j < n; j++) /* a few heavy value rows so the top-w is structured */
            if (j % 37 == 5)
                for (int c = 0; c < d; c++) v[j * d + c] *= 4;
        for (int ks = 0; ks < 2; ks++) {
            eng_pattern p = eng_pattern_make(ENG_PAT_DMA);
            p.keep = 24, p.n_init = 3, p.n_local = 10, p.key_score = ks;
            eng_head_mask m;
            eng_err err = {{0}};
            assert_int_equal(eng_dma_mask_build(&p, q, d, k, v, d, n, d, &m, &err), 0);
            assert_int_equal(m.kind, ENG_MASK_DMA);
            unsigned char *row = malloc((size_t)n);
            for (int i = 0; i < n; i++) {
                /* membership by the definition: sinks, window, or among the keep largest z (ties kept) */
                eng_dma_mask_row(&m, i, row);
                for (int j = 0; j <= i; j++) {
                    int larger = 0;
                    for (int u = 0; u <= i; u++) larger += m.z[u] > m.z[j];
                    int want = j < 3 || i - j < 10 || larger < p.keep;
                    assert_int_equal(eng_dma_mask_covers(&m, i, j), want);
                    assert_int_equal(row[j], want);
                }
            }
            free(row);
            /* Tile skipping is exact: a tile runs iff it holds a kept pair. */
            const int nt = (n + 63) / 64;
            long long active = 0;
            for (int rb = 0; rb < nt; rb++)
                for (int kt = 0; kt < nt; kt++) {
                    int any = 0;
                    for (int i = rb * 64; i < rb * 64 + 64 && i < n && !any; i++)
                        for (int j = kt * 64; j < kt * 64 + 64 && j <= i && !any; j++) any = eng_dma_mask_covers(&m, i, j);
                    if (eng_dma_tile_active(&m, rb, kt) != any) fail_msg("n %d tile (%d, %d): active %d, kept pair %d", n, rb, kt, !any, any);
                    active += any;
                }
            eng_dma_stats st;
            check_attention(&m, q, k, v, n, d, &st);
            assert_int_equal(st.tiles_causal, (long long)nt * (nt + 1) / 2);
            assert_int_equal(st.tiles_run, active);
            eng_dma_mask_free(&m);
        }
        free(q), free(k), free(v);
    }
}

/* A layout where whole tiles are skipped: z large only for the first keys, sinks/window small. */
static void test_dma_skips_tiles(void **state) {
    (void)state;
    uint64_t seed = 0x51f;
    const int n = 512, d = 8;
    float *q = rnd(n, d, &seed, 1), *k = rnd(n, d, &seed, 1), *v = rnd(n, d, &seed, 0.1f);
    for (int c = 0; c < d; c++) v[70 * d + c] = 10; /* key 70: the one heavy value */
    eng_pattern p = eng_pattern_make(ENG_PAT_DMA);
    p.keep = 1, p.n_init = 1, p.n_local = 16;
    eng_head_mask m;
    eng_err err = {{0}};
    assert_int_equal(eng_dma_mask_build(&p, q, d, k, v, d, n, d, &m, &err), 0);
    eng_dma_stats st;
    check_attention(&m, q, k, v, n, d, &st);
    /* Row block 0 runs its diagonal tile; 1: tile 0 (sink) and 1; 2: tiles 0, 1 (key 70, also the
     * window tile) and 2; 3..7: tile 0 (sink), 1 (key 70), rb - 1 (the window crosses the
     * boundary) and rb. */
    assert_int_equal(st.tiles_causal, 36);
    assert_int_equal(st.tiles_run, 1 + 2 + 3 + 5 * 4);
    eng_dma_mask_free(&m);
    free(q), free(k), free(v);
}

static void test_nm(void **state) {
    (void)state;
    uint64_t seed = 0x24;
    const int n = 130, d = 8;
    float *q = rnd(n, d, &seed, 2), *k = rnd(n, d, &seed, 1), *v = rnd(n, d, &seed, 1);
    const int cfg[][2] = {{2, 4}, {1, 3}, {3, 5}, {4, 4}};
    for (int t = 0; t < 4; t++) {
        eng_pattern p = eng_pattern_make(ENG_PAT_NM);
        p.nm_n = cfg[t][0], p.nm_m = cfg[t][1];
        eng_head_mask m;
        eng_err err = {{0}};
        assert_int_equal(eng_dma_mask_build(&p, q, d, k, v, d, n, d, &m, &err), 0);
        assert_int_equal(m.kind, ENG_MASK_NM);
        for (int i = 0; i < n; i++)
            for (int g0 = 0; g0 <= i; g0 += p.nm_m) {
                int g1 = g0 + p.nm_m <= i + 1 ? g0 + p.nm_m : i + 1, kept = 0;
                for (int j = g0; j < g1; j++) {
                    double sj = 0;
                    for (int c = 0; c < d; c++) sj += (double)q[i * d + c] * k[j * d + c];
                    int larger = 0;
                    for (int u = g0; u < g1; u++) {
                        double su = 0;
                        for (int c = 0; c < d; c++) su += (double)q[i * d + c] * k[u * d + c];
                        larger += su > sj;
                    }
                    int cov = eng_dma_mask_covers(&m, i, j);
                    kept += cov;
                    assert_int_equal(cov, larger < p.nm_n); /* kept iff among the n largest */
                }
                int want = g1 - g0 < p.nm_n ? g1 - g0 : p.nm_n;
                assert_int_equal(kept, want); /* exactly n of every full group */
            }
        check_attention(&m, q, k, v, n, d, NULL);
        if (t == 3) assert_int_equal(eng_dma_mask_count(&m), (long long)n * (n + 1) / 2);
        eng_dma_mask_free(&m);
    }
    free(q), free(k), free(v);
}

/* eng_dma_attend (what the CPU prefill calls) for index and mask kinds, and the layer metrics. */
static void test_attend_and_metrics(void **state) {
    (void)state;
    uint64_t seed = 0xa77e;
    const int n = 260, H = 4, Hkv = 2, d = 16, qd = H * d, kvd = Hkv * d;
    float *q = rnd(n, qd, &seed, 2), *k = rnd(n, kvd, &seed, 1), *v = rnd(n, kvd, &seed, 1);
    float *od = malloc(sizeof(float) * n * d), *os = malloc(sizeof(float) * n * d);
    float *ld = malloc(sizeof(float) * n), *ls = malloc(sizeof(float) * n);
    eng_err err = {{0}};
    eng_pattern dense = eng_pattern_make(ENG_PAT_DENSE);
    long long cnt = 0;
    eng_attn_dense_head(q, qd, k, v, kvd, n, d, od, d, ld);
    assert_int_equal(eng_dma_attend(&dense, q, qd, k, v, kvd, n, d, os, d, ls, NULL, &cnt, &err), 0);
    assert_true(tu_rel_l2(os, od, (size_t)n * d) < 1e-5);
    assert_int_equal(cnt, (long long)n * (n + 1) / 2);
    /* eng_pattern_build refuses the per-row kinds with a message naming the way. */
    eng_pattern dm = eng_pattern_make(ENG_PAT_DMA), nm = eng_pattern_make(ENG_PAT_NM);
    dm.keep = 32, dm.n_init = 4, dm.n_local = 16;
    eng_head_index ix;
    assert_int_not_equal(eng_pattern_build(&dm, q, qd, k, kvd, n, d, &ix, &err), 0);
    assert_non_null(strstr(err.msg, "eng_dma_attend"));
    assert_false(eng_pattern_is_index(ENG_PAT_NM));
    assert_true(eng_pattern_is_index(ENG_PAT_XATTN));
    /* Layer metrics with mixed kinds (CPU reference: be = NULL). */
    eng_pattern vs = eng_pattern_make(ENG_PAT_VS);
    vs.vertical = 30, vs.slash = 50;
    const eng_pattern *pats[4] = {&dm, &nm, &vs, &dense};
    eng_head_metrics hm[4];
    if (eng_report_layer(NULL, q, k, v, NULL, NULL, n, H, Hkv, d, pats, hm, &err)) fail_msg("%s", err.msg);
    for (int h = 0; h < H; h++) {
        const float *qh = q + h * d, *kh = k + (h / 2) * d, *vh = v + (h / 2) * d;
        eng_attn_dense_head(qh, qd, kh, vh, kvd, n, d, od, d, ld);
        assert_int_equal(eng_dma_attend(pats[h], qh, qd, kh, vh, kvd, n, d, os, d, ls, NULL, &cnt, &err), 0);
        eng_head_metrics ref;
        eng_metrics_head(NULL, n, d, ld, ls, od, os, d, &ref);
        eng_metrics_set_computed(&ref, cnt);
        assert_int_equal(hm[h].computed, cnt);
        assert_true(fabs(hm[h].density - ref.density) < 1e-12);
        assert_true(fabs(hm[h].recall - ref.recall) < 1e-5);
        assert_true(fabs(hm[h].error - ref.error) < 1e-5);
        assert_true(isnan(hm[h].error_plain)); /* no reshape here */
    }
    assert_true(hm[0].density < 0.5 && hm[1].density > 0.49 && hm[1].density < 0.51);
    assert_true(hm[3].error < 1e-5 && hm[0].error > 0);
    free(q), free(k), free(v), free(od), free(os), free(ld), free(ls);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thresholds),
        cmocka_unit_test(test_scores),
        cmocka_unit_test(test_dma_mask_tiles_attention),
        cmocka_unit_test(test_dma_skips_tiles),
        cmocka_unit_test(test_nm),
        cmocka_unit_test(test_attend_and_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
