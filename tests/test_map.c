/* test_map: pooled attention maps (engine/eng_map) against a brute-force N x N computation in
 * double on small N: max and mean pooling, given and self-computed LSE, key/query sub-ranges,
 * zoomed-in outputs, odd head dims, threads, sparse indexes (incl. the band mask of A-shape
 * indexes from eng_pattern_build), and the index coverage mask; eng_index_covers is the oracle. */
#include "test_util.h"

#include "eng_map.h"
#include "eng_pattern.h"

/* A hand-made index over n tokens: per row block rb, a block ending at the diagonal, one or two
 * blocks at odd token offsets further left, and a few single columns left of all blocks. */
typedef struct {
    eng_head_index ix;
    int bc[64], bo[64 * 4], cc[64], ci[64 * 4];
} test_index;

static void make_index(test_index *t, int n, uint64_t *seed) {
    memset(t, 0, sizeof *t);
    eng_head_index *ix = &t->ix;
    ix->n = n;
    ix->n_rb = (n + 63) / 64;
    ix->max_blocks = 4;
    ix->max_cols = 4;
    ix->block_count = t->bc;
    ix->block_offset = t->bo;
    ix->column_count = t->cc;
    ix->column_index = t->ci;
    for (int rb = 0; rb < ix->n_rb; rb++) {
        int m0 = rb * 64, m1 = m0 + 64 < n ? m0 + 64 : n;
        int diag = m1 - 64 > 0 ? m1 - 64 : 0;
        int nb = 0, offs[4];
        int lo = diag; /* everything else lies left of lo */
        if (lo >= 64 + 3) {
            int o = (int)(tu_rand_u64(seed) % (uint64_t)(lo - 64 - 2)) + 1; /* odd offset block */
            offs[nb++] = o;
            lo = o;
        }
        offs[nb++] = diag;
        for (int i = 0; i < nb; i++) t->bo[rb * 4 + i] = offs[i];
        t->bc[rb] = nb;
        int nc = 0;
        for (int c = 0; c < lo && nc < 3; c += 1 + (int)(tu_rand_u64(seed) % 23)) t->ci[rb * 4 + nc++] = c;
        t->cc[rb] = nc;
    }
}

/* The oracle: what the attention computes (causal, blocks under the band mask, columns). */
static int covers(const eng_head_index *ix, int q, int k) { return eng_index_covers(ix, q, k); }

static int edge(int a, int b, int g, int i) { return a + (int)((long long)i * (b - a) / g); }

/* Brute force: p(q,k) in double over the causal (and covered) entries, pooled per pixel with the
 * semantics of eng_map.h. ref[h][w]. */
static void brute(const float *q, const float *k, int n, int d, const eng_head_index *ix, const eng_map_opts *o,
                  double *ref) {
    double *lse = malloc(sizeof(double) * (size_t)n);
    double sc = 1.0 / sqrt((double)d);
    for (int t = 0; t < n; t++) {
        double m = -INFINITY, s = 0;
        for (int j = 0; j <= t; j++) {
            if (ix && !covers(ix, t, j)) continue;
            double dot = 0;
            for (int c = 0; c < d; c++) dot += (double)q[t * d + c] * k[j * d + c];
            dot *= sc;
            if (dot > m) { s = s * exp(m - dot) + 1; m = dot; } else s += exp(dot - m);
        }
        lse[t] = m + log(s);
    }
    int nq = o->q1 - o->q0, nk = o->k1 - o->k0;
    int gh = o->h < nq ? o->h : nq, gw = o->w < nk ? o->w : nk;
    for (int y = 0; y < o->h; y++)
        for (int x = 0; x < o->w; x++) {
            int gy = (int)((long long)y * gh / o->h), gx = (int)((long long)x * gw / o->w);
            int qa = edge(o->q0, o->q1, gh, gy), qb = edge(o->q0, o->q1, gh, gy + 1);
            int ka = edge(o->k0, o->k1, gw, gx), kb = edge(o->k0, o->k1, gw, gx + 1);
            double mx = 0, sum = 0;
            int causal = 0;
            for (int t = qa; t < qb; t++)
                for (int j = ka; j < kb && j <= t; j++) {
                    causal = 1;
                    if (ix && !covers(ix, t, j)) continue;
                    double dot = 0;
                    for (int c = 0; c < d; c++) dot += (double)q[t * d + c] * k[j * d + c];
                    double p = exp(dot * sc - lse[t]);
                    if (p > mx) mx = p;
                    sum += p;
                }
            ref[y * o->w + x] = !causal ? NAN : o->pool == ENG_POOL_MAX ? mx : sum / ((double)(qb - qa) * (kb - ka));
        }
    free(lse);
}

/* LSE in float via the same double brute force (what a prefill would hand in); over the entries
 * ix computes when ix is given (the sparse row's LSE). */
static void ref_lse(const float *q, const float *k, int n, int d, const eng_head_index *ix, float *lse) {
    double sc = 1.0 / sqrt((double)d);
    for (int t = 0; t < n; t++) {
        double m = -INFINITY, s = 0;
        for (int j = 0; j <= t; j++) {
            if (ix && !covers(ix, t, j)) continue;
            double dot = 0;
            for (int c = 0; c < d; c++) dot += (double)q[t * d + c] * k[j * d + c];
            dot *= sc;
            if (dot > m) { s = s * exp(m - dot) + 1; m = dot; } else s += exp(dot - m);
        }
        lse[t] = (float)(m + log(s));
    }
}

/* eng_map_pool on random Q/K (seeded) against brute(), restricted to ix when given; lse handed
 * in (the brute-force row LSE over ix's entries) when give_lse. */
static void check_case_ix(int n, int d, eng_map_opts o, int give_lse, const eng_head_index *ix, uint64_t seed) {
    int use_index = ix != NULL;
    float *q = malloc(sizeof(float) * (size_t)n * d), *k = malloc(sizeof(float) * (size_t)n * d);
    tu_fill(q, (size_t)n * d, &seed, 2.0f);
    tu_fill(k, (size_t)n * d, &seed, 2.0f);
    /* a planted strong key so max pooling sees values near 1 somewhere */
    for (int c = 0; c < d; c++) k[5 * d + c] = q[(n - 1) * d + c] * 3.0f;
    float *lse = NULL;
    if (give_lse) {
        lse = malloc(sizeof(float) * (size_t)n);
        ref_lse(q, k, n, d, ix, lse);
    }
    float *out = malloc(sizeof(float) * (size_t)o.w * o.h);
    double *ref = malloc(sizeof(double) * (size_t)o.w * o.h);
    o.empty = NAN;
    eng_err err = {{0}};
    int rc = eng_map_pool(q, d, k, d, n, d, lse, ix, &o, out, &err);
    if (rc) fprintf(stderr, "eng_map_pool: %s\n", err.msg);
    assert_int_equal(rc, 0);
    brute(q, k, n, d, ix, &o, ref);
    int nonempty = 0;
    double maxv = 0;
    for (int i = 0; i < o.w * o.h; i++) {
        if (isnan(ref[i])) {
            if (!isnan(out[i])) fprintf(stderr, "pixel %d: want empty, got %g\n", i, out[i]);
            assert_true(isnan(out[i]));
            continue;
        }
        nonempty++;
        if (ref[i] > maxv) maxv = ref[i];
        double tol = 2e-4 * fabs(ref[i]) + 1e-7;
        if (!(fabs(out[i] - ref[i]) <= tol))
            fprintf(stderr, "n=%d d=%d pool=%d lse=%d ix=%d pixel (%d,%d): got %.9g want %.9g\n", n, d, o.pool,
                    give_lse, use_index, i % o.w, i / o.w, out[i], ref[i]);
        assert_true(fabs(out[i] - ref[i]) <= tol);
    }
    assert_true(nonempty > 0);
    assert_true(maxv > 0);
    free(q); free(k); free(lse); free(out); free(ref);
}

static void check_case(int n, int d, eng_map_opts o, int give_lse, int use_index, uint64_t seed) {
    test_index ti;
    uint64_t s = seed ^ 0x9e3779b97f4a7c15ULL;
    make_index(&ti, n, &s);
    check_case_ix(n, d, o, give_lse, use_index ? &ti.ix : NULL, seed);
}

static void test_full_range_max_mean(void **state) {
    (void)state;
    for (int pool = 0; pool < 2; pool++)
        for (int give = 0; give < 2; give++) {
            eng_map_opts o = {0, 300, 0, 300, 37, 23, (eng_pool)pool, 0, 2};
            check_case(300, 32, o, give, 0, 11 + pool * 2 + give);
        }
}

static void test_subrange_odd_dims(void **state) {
    (void)state;
    eng_map_opts o = {70, 251, 13, 200, 19, 31, ENG_POOL_MAX, 0, 3};
    check_case(251, 7, o, 1, 0, 5);
    o.pool = ENG_POOL_MEAN;
    check_case(251, 24, o, 0, 0, 6);
    /* key range entirely right of the query range: every tile is empty */
    eng_map_opts e = {0, 50, 60, 100, 8, 8, ENG_POOL_MAX, 0, 1};
    float q[100 * 4] = {0}, k[100 * 4] = {0}, out[64];
    eng_err err;
    assert_int_equal(eng_map_pool(q, 4, k, 4, 100, 4, NULL, NULL, &e, out, &err), 0);
    e.empty = -1.0f;
    assert_int_equal(eng_map_pool(q, 4, k, 4, 100, 4, NULL, NULL, &e, out, &err), 0);
    for (int i = 0; i < 64; i++) assert_true(out[i] == -1.0f);
}

static void test_zoomed_in(void **state) {
    (void)state;
    /* 12 queries x 9 keys drawn on 40 x 30 pixels: every pixel shows one entry */
    eng_map_opts o = {100, 112, 95, 104, 40, 30, ENG_POOL_MAX, 0, 0};
    check_case(130, 16, o, 1, 0, 8);
    o.pool = ENG_POOL_MEAN;
    check_case(130, 16, o, 0, 0, 9);
}

static void test_sparse_index(void **state) {
    (void)state;
    eng_map_opts o = {0, 333, 0, 333, 41, 29, ENG_POOL_MAX, 0, 2};
    check_case(333, 16, o, 0, 1, 21);
    o.pool = ENG_POOL_MEAN;
    check_case(333, 16, o, 0, 1, 22);
    eng_map_opts z = {130, 150, 0, 150, 150, 20, ENG_POOL_MAX, 0, 2};
    check_case(333, 8, z, 0, 1, 23);
}

static void test_threads_agree(void **state) {
    (void)state;
    int n = 700, d = 64;
    uint64_t seed = 77;
    float *q = malloc(sizeof(float) * n * d), *k = malloc(sizeof(float) * n * d);
    tu_fill(q, (size_t)n * d, &seed, 1.5f);
    tu_fill(k, (size_t)n * d, &seed, 1.5f);
    float a[64 * 48], b[64 * 48];
    eng_err err;
    eng_map_opts o = {0, n, 0, n, 64, 48, ENG_POOL_MEAN, 0, 1};
    assert_int_equal(eng_map_pool(q, d, k, d, n, d, NULL, NULL, &o, a, &err), 0);
    o.threads = 5;
    assert_int_equal(eng_map_pool(q, d, k, d, n, d, NULL, NULL, &o, b, &err), 0);
    assert_memory_equal(a, b, sizeof a); /* each pixel row has one owner: bitwise identical */
    /* mean pooling conserves mass: sum over pixels of value x tile area = number of query rows */
    double mass = 0;
    for (int y = 0; y < 48; y++)
        for (int x = 0; x < 64; x++) {
            int qa = edge(0, n, 48, y), qb = edge(0, n, 48, y + 1), ka = edge(0, n, 64, x), kb = edge(0, n, 64, x + 1);
            mass += (double)a[y * 64 + x] * (qb - qa) * (kb - ka);
        }
    assert_true(fabs(mass - n) < 1e-3 * n);
    free(q);
    free(k);
}

static void test_index_mask(void **state) {
    (void)state;
    uint64_t seed = 3;
    int n = 300;
    test_index ti;
    make_index(&ti, n, &seed);
    eng_map_opts opts[2] = {{0, n, 0, n, 23, 17, ENG_POOL_MAX, NAN, 0}, {64, 140, 30, 140, 200, 100, ENG_POOL_MAX, NAN, 0}};
    for (int c = 0; c < 2; c++) {
        eng_map_opts o = opts[c];
        float *out = malloc(sizeof(float) * o.w * o.h);
        eng_err err;
        assert_int_equal(eng_map_index_mask(&ti.ix, &o, out, &err), 0);
        int nq = o.q1 - o.q0, nk = o.k1 - o.k0, gh = o.h < nq ? o.h : nq, gw = o.w < nk ? o.w : nk;
        int partial = 0, zero = 0, one = 0;
        for (int y = 0; y < o.h; y++)
            for (int x = 0; x < o.w; x++) {
                int gy = y * gh / o.h, gx = x * gw / o.w;
                int qa = edge(o.q0, o.q1, gh, gy), qb = edge(o.q0, o.q1, gh, gy + 1);
                int ka = edge(o.k0, o.k1, gw, gx), kb = edge(o.k0, o.k1, gw, gx + 1);
                long tot = 0, cov = 0;
                for (int t = qa; t < qb; t++)
                    for (int j = ka; j < kb && j <= t; j++) { tot++; cov += covers(&ti.ix, t, j); }
                float v = out[y * o.w + x];
                if (!tot) { assert_true(isnan(v)); continue; }
                assert_true(fabs(v - (double)cov / tot) < 1e-6);
                partial += cov > 0 && cov < tot; zero += cov == 0; one += cov == tot;
            }
        assert_true(zero > 0 && one > 0);
        if (c == 0) assert_true(partial > 0);
        free(out);
    }
}

/* Pairs (q, k) that lie in one of q's row-block blocks (causal) but that the band drops: the
 * entries a band-blind map would wrongly count. */
static long long band_dropped(const eng_head_index *ix) {
    long long c = 0;
    for (int q = 0; q < ix->n; q++) {
        int rb = q / ENG_BLOCK;
        for (int i = 0; i < ix->block_count[rb]; i++) {
            int o = ix->block_offset[rb * ix->max_blocks + i];
            for (int k = o; k < o + ENG_BLOCK && k <= q; k++) c += !eng_index_covers(ix, q, k);
        }
    }
    return c;
}

/* A-shape cases: n % 64 != 0, sink and window not multiples of 64 (incl. n_init 0, window 1,
 * a window shorter than a block, sinks past the first block). */
static const int ashape_cases[][3] = {{333, 40, 150}, {200, 1, 65}, {230, 100, 30}, {257, 0, 7}, {301, 70, 1}};

static void make_ashape(int n, int n_init, int n_local, eng_head_index *ix) {
    eng_pattern p = eng_pattern_make(ENG_PAT_ASHAPE);
    p.n_init = n_init;
    p.n_local = n_local;
    eng_err err = {{0}};
    if (eng_pattern_build(&p, NULL, 0, NULL, 0, n, 8, ix, &err)) fail_msg("ashape: %s", err.msg);
    assert_int_equal(eng_index_validate(ix, &err), 0);
    assert_int_equal(ix->window, n_local);
    assert_true(band_dropped(ix) > 0); /* the band matters for this case */
}

static void test_ashape_band_pool(void **state) {
    (void)state;
    for (size_t c = 0; c < sizeof ashape_cases / sizeof *ashape_cases; c++) {
        int n = ashape_cases[c][0];
        eng_head_index ix;
        make_ashape(n, ashape_cases[c][1], ashape_cases[c][2], &ix);
        uint64_t seed = 100 + c * 8;
        for (int pool = 0; pool < 2; pool++) {
            /* whole prompt zoomed out, lse computed and given */
            eng_map_opts o = {0, n, 0, n, 37, 29, (eng_pool)pool, 0, 2};
            check_case_ix(n, 8 + 4 * (int)c, o, (int)(c + pool) % 2, &ix, seed++);
            /* a sub-window across the sink edge and the band edge, one token per pixel */
            int q0 = n / 2, k0 = ashape_cases[c][1] > 5 ? ashape_cases[c][1] - 5 : 0;
            eng_map_opts z = {q0, n, k0, n, n - k0, n - q0, (eng_pool)pool, 0, 1};
            check_case_ix(n, 16, z, (int)(c + pool + 1) % 2, &ix, seed++);
        }
        eng_index_free(&ix);
    }
    /* a hand-made index (blocks at odd offsets, single columns) with a band: columns stay */
    uint64_t s = 41;
    test_index ti;
    make_index(&ti, 333, &s);
    ti.ix.sink = 17;
    ti.ix.window = 45;
    assert_true(band_dropped(&ti.ix) > 0);
    eng_map_opts o = {0, 333, 0, 333, 41, 29, ENG_POOL_MEAN, 0, 2};
    check_case_ix(333, 16, o, 0, &ti.ix, 42);
    o.pool = ENG_POOL_MAX;
    check_case_ix(333, 16, o, 1, &ti.ix, 43);
}

/* MEAN with the sparse row LSE computed: each row's computed probabilities sum to 1, so the
 * pixels' value x area adds up to the number of query rows only if the map and its LSE pass
 * agree on the (band-masked) entries. */
static void test_ashape_band_mass(void **state) {
    (void)state;
    int n = 1000, d = 32, W = 50;
    eng_head_index ix;
    make_ashape(n, 90, 200, &ix);
    uint64_t seed = 5;
    float *q = malloc(sizeof(float) * (size_t)n * d), *k = malloc(sizeof(float) * (size_t)n * d);
    float *out = malloc(sizeof(float) * W * W);
    tu_fill(q, (size_t)n * d, &seed, 2.0f);
    tu_fill(k, (size_t)n * d, &seed, 2.0f);
    eng_err err = {{0}};
    eng_map_opts o = {0, n, 0, n, W, W, ENG_POOL_MEAN, NAN, 2};
    assert_int_equal(eng_map_pool(q, d, k, d, n, d, NULL, &ix, &o, out, &err), 0);
    double mass = 0;
    for (int y = 0; y < W; y++)
        for (int x = 0; x < W; x++) {
            int qa = edge(0, n, W, y), qb = edge(0, n, W, y + 1), ka = edge(0, n, W, x), kb = edge(0, n, W, x + 1);
            if (isnan(out[y * W + x])) continue;
            mass += (double)out[y * W + x] * (qb - qa) * (kb - ka);
        }
    assert_true(fabs(mass - n) < 1e-3 * n);
    /* tiles wholly between the sinks and the window: nothing computed there */
    int y = W - 1, x = (n / 2) * W / n;
    assert_true(out[y * W + x] == 0.0f);
    free(q), free(k), free(out);
    eng_index_free(&ix);
}

/* The coverage mask of A-shape indexes against eng_index_covers, tile by tile. */
static void test_ashape_band_mask(void **state) {
    (void)state;
    for (size_t c = 0; c < sizeof ashape_cases / sizeof *ashape_cases; c++) {
        int n = ashape_cases[c][0];
        eng_head_index ix;
        make_ashape(n, ashape_cases[c][1], ashape_cases[c][2], &ix);
        eng_map_opts opts[3] = {{0, n, 0, n, 23, 17, ENG_POOL_MAX, NAN, 0},
                                {n / 3, n, 0, n, n, n - n / 3, ENG_POOL_MAX, NAN, 0},
                                {n / 2, n - 3, 3, n - 10, 300, 200, ENG_POOL_MAX, NAN, 0}};
        for (int v = 0; v < 3; v++) {
            eng_map_opts o = opts[v];
            float *out = malloc(sizeof(float) * o.w * o.h);
            eng_err err = {{0}};
            assert_int_equal(eng_map_index_mask(&ix, &o, out, &err), 0);
            int nq = o.q1 - o.q0, nk = o.k1 - o.k0, gh = o.h < nq ? o.h : nq, gw = o.w < nk ? o.w : nk;
            int zero = 0;
            for (int yy = 0; yy < o.h; yy++)
                for (int xx = 0; xx < o.w; xx++) {
                    int gy = yy * gh / o.h, gx = xx * gw / o.w;
                    int qa = edge(o.q0, o.q1, gh, gy), qb = edge(o.q0, o.q1, gh, gy + 1);
                    int ka = edge(o.k0, o.k1, gw, gx), kb = edge(o.k0, o.k1, gw, gx + 1);
                    long tot = 0, cov = 0;
                    for (int t = qa; t < qb; t++)
                        for (int j = ka; j < kb && j <= t; j++) { tot++; cov += covers(&ix, t, j); }
                    float val = out[yy * o.w + xx];
                    if (!tot) { assert_true(isnan(val)); continue; }
                    if (!(fabs(val - (double)cov / tot) < 1e-6))
                        fail_msg("ashape n=%d view %d pixel (%d,%d): mask %g, covers %ld/%ld", n, v, xx, yy, val, cov,
                                 tot);
                    zero += cov == 0;
                }
            if (v == 1) assert_true(zero > 0); /* 1:1 view: some single entries are band-dropped */
            free(out);
        }
        eng_index_free(&ix);
    }
}

static void test_bad_input(void **state) {
    (void)state;
    float q[64] = {0}, k[64] = {0}, out[4];
    eng_err err = {{0}};
    eng_map_opts o = {0, 20, 0, 8, 2, 2, ENG_POOL_MAX, 0, 0};
    assert_int_equal(eng_map_pool(q, 4, k, 4, 16, 4, NULL, NULL, &o, out, &err), -1);
    assert_non_null(strstr(err.msg, "query range"));
    o.q1 = 8;
    o.w = 0;
    assert_int_equal(eng_map_pool(q, 4, k, 4, 16, 4, NULL, NULL, &o, out, &err), -1);
    assert_non_null(strstr(err.msg, "output size"));
    o.w = 2;
    assert_int_equal(eng_map_pool(q, 2, k, 4, 16, 4, NULL, NULL, &o, out, &err), -1);
    assert_non_null(strstr(err.msg, "q_stride"));
    test_index ti;
    uint64_t s = 1;
    make_index(&ti, 100, &s);
    assert_int_equal(eng_map_pool(q, 4, k, 4, 16, 4, NULL, &ti.ix, &o, out, &err), -1);
    assert_non_null(strstr(err.msg, "index"));
}

/* The pooled map at a long context stays fast and keeps the diagonal structure (a planted
 * vertical line at key 100 shows as the brightest column). */
static void test_long_context_planted_column(void **state) {
    (void)state;
    int n = 4096, d = 64, W = 128;
    uint64_t seed = 99;
    float *q = malloc(sizeof(float) * (size_t)n * d), *k = malloc(sizeof(float) * (size_t)n * d);
    tu_fill(q, (size_t)n * d, &seed, 0.3f);
    tu_fill(k, (size_t)n * d, &seed, 0.3f);
    for (int t = 0; t < n; t++) q[(size_t)t * d] = 4.0f; /* every query likes feature 0 */
    for (int c = 0; c < d; c++) k[100 * d + c] = c == 0 ? 6.0f : 0.0f;
    float *out = malloc(sizeof(float) * W * W);
    eng_err err;
    eng_map_opts o = {0, n, 0, n, W, W, ENG_POOL_MAX, NAN, 0};
    assert_int_equal(eng_map_pool(q, d, k, d, n, d, NULL, NULL, &o, out, &err), 0);
    int col = 100 * W / n;
    for (int y = W / 2; y < W; y++) {
        int best = 0;
        for (int x = 1; x < W; x++)
            if (!isnan(out[y * W + x]) && out[y * W + x] > out[y * W + best]) best = x;
        assert_int_equal(best, col);
    }
    free(q);
    free(k);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_range_max_mean),
        cmocka_unit_test(test_subrange_odd_dims),
        cmocka_unit_test(test_zoomed_in),
        cmocka_unit_test(test_sparse_index),
        cmocka_unit_test(test_threads_agree),
        cmocka_unit_test(test_index_mask),
        cmocka_unit_test(test_ashape_band_pool),
        cmocka_unit_test(test_ashape_band_mass),
        cmocka_unit_test(test_ashape_band_mask),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_long_context_planted_column),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
