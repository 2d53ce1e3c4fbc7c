/* test_map_mask: pooled maps and coverage overlays of per-row head masks (eng_map_pool_mask,
 * eng_map_mask_cover over DMA, N:M and index masks from eng_dma_mask_build) against a brute-force
 * N x N computation in double, with eng_dma_mask_covers as the oracle of "is (q, k) computed". */
#include "test_util.h"

#include "eng_dma.h"
#include "eng_map.h"
#include "eng_pattern.h"

static int edge(int a, int b, int g, int i) { return a + (int)((long long)i * (b - a) / g); }

/* ref[h][w]: p(q, k) over the mask's pairs (softmax renormalised over them), pooled per tile as
 * eng_map.h says (max; mean over the tile's full area); NaN for tiles with no causal entry. */
static void brute_pool(const eng_head_mask *m, const float *q, const float *k, int n, int d,
                       const eng_map_opts *o, double *ref) {
    double *lse = malloc(sizeof(double) * (size_t)n), sc = 1.0 / sqrt((double)d);
    for (int t = 0; t < n; t++) {
        double mx = -INFINITY, s = 0;
        for (int j = 0; j <= t; j++) {
            if (!eng_dma_mask_covers(m, t, j)) continue;
            double dot = 0;
            for (int c = 0; c < d; c++) dot += (double)q[(size_t)t * d + c] * k[(size_t)j * d + c];
            dot *= sc;
            if (dot > mx) s = s * exp(mx - dot) + 1, mx = dot;
            else s += exp(dot - mx);
        }
        lse[t] = s > 0 ? mx + log(s) : INFINITY;
    }
    const int nq = o->q1 - o->q0, nk = o->k1 - o->k0;
    assert_true(o->w <= nk && o->h <= nq); /* no zoom here: one tile per pixel */
    for (int y = 0; y < o->h; y++)
        for (int x = 0; x < o->w; x++) {
            int qa = edge(o->q0, o->q1, o->h, y), qb = edge(o->q0, o->q1, o->h, y + 1);
            int ka = edge(o->k0, o->k1, o->w, x), kb = edge(o->k0, o->k1, o->w, x + 1);
            double acc = o->pool == ENG_POOL_MAX ? 0 : 0, any = 0;
            for (int t = qa; t < qb; t++)
                for (int j = ka; j < kb && j <= t; j++) {
                    any = 1;
                    if (!eng_dma_mask_covers(m, t, j)) continue;
                    double dot = 0;
                    for (int c = 0; c < d; c++) dot += (double)q[(size_t)t * d + c] * k[(size_t)j * d + c];
                    double p = exp(dot * sc - lse[t]);
                    if (o->pool == ENG_POOL_MAX) acc = p > acc ? p : acc;
                    else acc += p;
                }
            if (o->pool == ENG_POOL_MEAN) acc /= (double)(qb - qa) * (kb - ka);
            ref[(size_t)y * o->w + x] = any ? acc : NAN;
        }
    free(lse);
}

static void brute_cover(const eng_head_mask *m, const eng_map_opts *o, double *ref) {
    for (int y = 0; y < o->h; y++)
        for (int x = 0; x < o->w; x++) {
            int qa = edge(o->q0, o->q1, o->h, y), qb = edge(o->q0, o->q1, o->h, y + 1);
            int ka = edge(o->k0, o->k1, o->w, x), kb = edge(o->k0, o->k1, o->w, x + 1);
            double tot = 0, done = 0;
            for (int t = qa; t < qb; t++)
                for (int j = ka; j < kb && j <= t; j++) tot++, done += eng_dma_mask_covers(m, t, j);
            ref[(size_t)y * o->w + x] = tot > 0 ? done / tot : NAN;
        }
}

static void check(const float *got, const double *ref, int np, double tol, const char *what) {
    for (int i = 0; i < np; i++) {
        if (isnan(ref[i])) {
            if (!isnan(got[i])) fail_msg("%s: pixel %d: %g, want NaN", what, i, (double)got[i]);
            continue;
        }
        if (!(fabs(got[i] - ref[i]) <= tol * (ref[i] > 1e-3 ? ref[i] : 1e-3)))
            fail_msg("%s: pixel %d: %.9g, want %.9g", what, i, (double)got[i], ref[i]);
    }
}

static void test_mask_maps(void **state) {
    (void)state;
    const int n = 333, d = 20;
    uint64_t seed = 77;
    float *q = malloc(sizeof(float) * n * d), *k = malloc(sizeof(float) * n * d), *v = malloc(sizeof(float) * n * d);
    tu_fill(q, (size_t)n * d, &seed, 1.5f);
    tu_fill(k, (size_t)n * d, &seed, 1.5f);
    tu_fill(v, (size_t)n * d, &seed, 1.0f);
    for (int t = 0; t < n; t++) v[(size_t)t * d] *= 1.0f + (float)(t % 7); /* spread the value norms */
    eng_pattern pats[4];
    pats[0] = eng_pattern_make(ENG_PAT_DMA);
    pats[0].keep = 40, pats[0].n_init = 5, pats[0].n_local = 17;
    pats[1] = pats[0];
    pats[1].key_score = 1;
    pats[2] = eng_pattern_make(ENG_PAT_NM);
    pats[2].nm_n = 1, pats[2].nm_m = 3;
    pats[3] = eng_pattern_make(ENG_PAT_XATTN); /* an index mask: through eng_map_pool / index_mask */
    pats[3].threshold = 0.5f;
    const eng_map_opts opts[] = {
        {.q0 = 0, .q1 = n, .k0 = 0, .k1 = n, .w = 37, .h = 41, .pool = ENG_POOL_MAX, .empty = NAN, .threads = 2},
        {.q0 = 100, .q1 = 300, .k0 = 20, .k1 = 250, .w = 23, .h = 19, .pool = ENG_POOL_MEAN, .empty = NAN,
         .threads = 3},
        {.q0 = 64, .q1 = 129, .k0 = 0, .k1 = 129, .w = 129, .h = 65, .pool = ENG_POOL_MAX, .empty = NAN,
         .threads = 1},
    };
    for (int pi = 0; pi < 4; pi++) {
        eng_head_mask m;
        eng_err err;
        if (eng_dma_mask_build(&pats[pi], q, d, k, v, d, n, d, &m, &err)) fail_msg("%s", err.msg);
        assert_int_equal(m.kind, pi == 3 ? ENG_MASK_INDEX : pi == 2 ? ENG_MASK_NM : ENG_MASK_DMA);
        /* the mask must be sparse somewhere, or the test proves nothing */
        assert_true(eng_dma_mask_count(&m) < (long long)n * (n + 1) / 2);
        for (size_t oi = 0; oi < sizeof opts / sizeof opts[0]; oi++) {
            const eng_map_opts *o = &opts[oi];
            int np = o->w * o->h;
            float *got = malloc(sizeof(float) * (size_t)np);
            double *ref = malloc(sizeof(double) * (size_t)np);
            char what[64];
            snprintf(what, sizeof what, "pattern %d opts %zu pool", pi, oi);
            if (eng_map_pool_mask(NULL, q, d, k, d, n, d, &m, o, got, &err)) fail_msg("%s", err.msg);
            brute_pool(&m, q, k, n, d, o, ref);
            check(got, ref, np, 2e-4, what);
            snprintf(what, sizeof what, "pattern %d opts %zu cover", pi, oi);
            if (eng_map_mask_cover(&m, o, got, &err)) fail_msg("%s", err.msg);
            brute_cover(&m, o, ref);
            check(got, ref, np, 1e-6, what);
            free(got);
            free(ref);
        }
        eng_dma_mask_free(&m);
    }
    /* bad input: a mask for other n is refused with a message */
    eng_head_mask m;
    eng_err err;
    if (eng_dma_mask_build(&pats[0], q, d, k, v, d, 100, d, &m, &err)) fail_msg("%s", err.msg);
    float out[4];
    eng_map_opts o = {.q0 = 0, .q1 = 200, .k0 = 0, .k1 = 200, .w = 2, .h = 2};
    assert_int_equal(eng_map_pool_mask(NULL, q, d, k, d, 200, d, &m, &o, out, &err), -1);
    assert_non_null(strstr(err.msg, "mask"));
    assert_int_equal(eng_map_mask_cover(&m, &o, out, &err), -1);
    eng_dma_mask_free(&m);
    free(q);
    free(k);
    free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_mask_maps)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
