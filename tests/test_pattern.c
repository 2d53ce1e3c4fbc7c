/* test_pattern: index semantics of every pattern (dense, A-shape, vertical-slash, block-sparse)
 * checked against independent definitions, VS merge details against hand-worked cases, and CPU
 * sparse attention against a brute-force masked softmax on fresh random Q/K/V (many N incl.
 * N % 64 != 0 and N < 64, GQA 1/4/8). */
#include "test_util.h"

#include "eng_attn.h"
#include "eng_index.h"
#include "eng_pattern.h"

/* ---- helpers ---------------------------------------------------------------------------------- */

typedef struct {
    int n, H, Hkv, d;
    float *q, *k, *v; /* (n, H*d), (n, Hkv*d) x2 */
} qkv;

static qkv qkv_make(int n, int H, int Hkv, int d, uint64_t *s, float qscale) {
    qkv t = {n, H, Hkv, d, malloc(sizeof(float) * n * H * d), malloc(sizeof(float) * n * Hkv * d),
             malloc(sizeof(float) * n * Hkv * d)};
    tu_fill(t.q, (size_t)n * H * d, s, qscale);
    tu_fill(t.k, (size_t)n * Hkv * d, s, 1.0f);
    tu_fill(t.v, (size_t)n * Hkv * d, s, 1.0f);
    return t;
}
static void qkv_free(qkv *t) { free(t->q), free(t->k), free(t->v); }
static const float *qh(const qkv *t, int h) { return t->q + (size_t)h * t->d; }
static const float *kh(const qkv *t, int h) { return t->k + (size_t)(h / (t->H / t->Hkv)) * t->d; }
static const float *vh(const qkv *t, int h) { return t->v + (size_t)(h / (t->H / t->Hkv)) * t->d; }

static eng_pattern pat(eng_pat_kind k, int a, int b) {
    eng_pattern p = eng_pattern_make(k);
    if (k == ENG_PAT_ASHAPE) p.n_init = a, p.n_local = b;
    if (k == ENG_PAT_VS) p.vertical = a, p.slash = b;
    if (k == ENG_PAT_BS) p.topk = a;
    return p;
}

static void build_ok(const eng_pattern *p, const qkv *t, int h, eng_head_index *ix) {
    eng_err err = {{0}};
    int rc = eng_pattern_build(p, qh(t, h), t->H * t->d, kh(t, h), t->Hkv * t->d, t->n, t->d, ix, &err);
    if (rc) fail_msg("build failed: %s", err.msg);
    if (eng_index_validate(ix, &err)) fail_msg("invalid index: %s", err.msg);
}

/* Brute force: softmax in double over the keys eng_index_covers names; returns max |lse diff|
 * and the rel-L2 of out in *rel; also checks the pair count. */
static void check_attention(const qkv *t, int h, const eng_head_index *ix) {
    const int n = t->n, d = t->d, qs = t->H * d, ks = t->Hkv * d;
    float *out = malloc(sizeof(float) * n * d), *lse = malloc(sizeof(float) * n);
    float *ref = malloc(sizeof(float) * n * d);
    double *s = malloc(sizeof(double) * n);
    /* poison: every row must be written */
    for (int i = 0; i < n * d; i++) out[i] = NAN;
    eng_attn_sparse_head(qh(t, h), qs, kh(t, h), vh(t, h), ks, n, d, ix, out, d, lse);
    long long pairs = 0;
    double max_lse = 0;
    for (int i = 0; i < n; i++) {
        const float *qi = qh(t, h) + (size_t)i * qs;
        double mx = -INFINITY;
        for (int j = 0; j <= i; j++) {
            if (!eng_index_covers(ix, i, j)) {
                s[j] = -INFINITY;
                continue;
            }
            pairs++;
            const float *kj = kh(t, h) + (size_t)j * ks;
            double a = 0;
            for (int c = 0; c < d; c++) a += (double)qi[c] * kj[c];
            s[j] = a / sqrt((double)d);
            if (s[j] > mx) mx = s[j];
        }
        double den = 0;
        for (int c = 0; c < d; c++) ref[(size_t)i * d + c] = 0;
        double acc[512] = {0};
        for (int j = 0; j <= i; j++) {
            if (s[j] == -INFINITY) continue;
            double p = exp(s[j] - mx);
            den += p;
            const float *vj = vh(t, h) + (size_t)j * ks;
            for (int c = 0; c < d; c++) acc[c] += p * vj[c];
        }
        assert_true(den > 0); /* every pattern keeps the diagonal */
        for (int c = 0; c < d; c++) ref[(size_t)i * d + c] = (float)(acc[c] / den);
        double l = mx + log(den);
        if (fabs(l - lse[i]) > max_lse) max_lse = fabs(l - lse[i]);
    }
    double rel = tu_rel_l2(out, ref, (size_t)n * d);
    if (!(rel < 2e-6) || !(max_lse < 2e-5))
        fail_msg("n %d h %d: rel-L2 %.3g, max |lse diff| %.3g", n, h, rel, max_lse);
    assert_int_equal(pairs, eng_index_count(ix));
    free(out), free(lse), free(ref), free(s);
}

/* ---- dense and A-shape: membership is a closed formula ------------------------------------------ */

static void test_dense_and_ashape_membership(void **state) {
    (void)state;
    uint64_t seed = 0x1234;
    const int ns[] = {1, 7, 63, 64, 65, 130, 257};
    const int shapes[][2] = {{0, 1}, {4, 16}, {30, 64}, {64, 100}, {1, 300}, {200, 50}, {17, 129}};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
        qkv t = qkv_make(ns[a], 1, 1, 16, &seed, 1.0f);
        eng_head_index ix;
        eng_pattern p = pat(ENG_PAT_DENSE, 0, 0);
        build_ok(&p, &t, 0, &ix);
        for (int i = 0; i < t.n; i++)
            for (int j = 0; j < t.n; j++) assert_int_equal(eng_index_covers(&ix, i, j), j <= i);
        assert_int_equal(eng_index_count(&ix), (long long)t.n * (t.n + 1) / 2);
        eng_index_free(&ix);
        for (size_t b = 0; b < sizeof shapes / sizeof *shapes; b++) {
            p = pat(ENG_PAT_ASHAPE, shapes[b][0], shapes[b][1]);
            build_ok(&p, &t, 0, &ix);
            long long cnt = 0;
            for (int i = 0; i < t.n; i++)
                for (int j = 0; j < t.n; j++) {
                    int want = j <= i && (j < p.n_init || i - j < p.n_local);
                    cnt += want;
                    if (eng_index_covers(&ix, i, j) != want)
                        fail_msg("ashape(%d,%d) n %d: (%d,%d) covers %d want %d", p.n_init, p.n_local, t.n, i, j,
                                 !want, want);
                }
            assert_int_equal(eng_index_count(&ix), cnt);
            eng_index_free(&ix);
        }
        qkv_free(&t);
    }
}

/* ---- vertical-slash ------------------------------------------------------------------------------ */

/* Reference estimate in double: vertical and slash scores from the last min(64, n) queries. */
static void vs_scores(const qkv *t, int h, double *vert, double *slash) {
    const int n = t->n, d = t->d, qs = t->H * d, ks = t->Hkv * d, lq = n < 64 ? n : 64;
    double *a = malloc(sizeof(double) * n);
    for (int j = 0; j < n; j++) vert[j] = slash[j] = 0;
    for (int r = 0; r < lq; r++) {
        int i = n - lq + r;
        double mx = -INFINITY, den = 0;
        for (int j = 0; j <= i; j++) {
            double s = 0;
            for (int c = 0; c < d; c++) s += (double)qh(t, h)[(size_t)i * qs + c] * kh(t, h)[(size_t)j * ks + c];
            a[j] = s / sqrt((double)d);
            if (a[j] > mx) mx = a[j];
        }
        for (int j = 0; j <= i; j++) den += (a[j] = exp(a[j] - mx));
        for (int j = 0; j <= i; j++) vert[j] += a[j] / den, slash[i - j] += a[j] / den;
    }
    free(a);
}

/* Selected set vs reference scores: every forced line in, and no unselected line scoring above a
 * selected non-forced one (beyond float-vs-double rounding). */
static void check_topk(const double *score, int n, const int *sel, int ns, int forced, int want) {
    assert_int_equal(ns, want);
    char *in = calloc((size_t)n, 1);
    for (int i = 0; i < ns; i++) in[sel[i]] = 1;
    int f = forced < want ? forced : want;
    for (int i = 0; i < f; i++) assert_true(in[i]); /* ties among forced go to the lowest index */
    double min_in = INFINITY, max_out = -INFINITY;
    for (int i = forced; i < n; i++) {
        if (in[i] && score[i] < min_in) min_in = score[i];
        if (!in[i] && score[i] > max_out) max_out = score[i];
    }
    if (forced < want && max_out > min_in + 1e-6) fail_msg("top-k: unselected %.9g > selected %.9g", max_out, min_in);
    free(in);
}

static void test_vs_lines(void **state) {
    (void)state;
    uint64_t seed = 0xfeed;
    const int ns[] = {20, 64, 100, 150, 333, 700};
    const int budgets[][2] = {{0, 0}, {30, 50}, {40, 120}, {100, 80}, {5000, 5000}};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
        qkv t = qkv_make(ns[a], 4, 1, 32, &seed, 3.0f);
        double *vs = malloc(sizeof(double) * t.n), *ss = malloc(sizeof(double) * t.n);
        int *vert = malloc(sizeof(int) * t.n), *sl = malloc(sizeof(int) * t.n), nv, nsl;
        for (int h = 0; h < 4; h++) {
            vs_scores(&t, h, vs, ss);
            for (size_t b = 0; b < sizeof budgets / sizeof *budgets; b++) {
                eng_pattern p = pat(ENG_PAT_VS, budgets[b][0], budgets[b][1]);
                eng_err err;
                assert_int_equal(eng_pattern_vs_lines(&p, qh(&t, h), t.H * t.d, kh(&t, h), t.Hkv * t.d, t.n, t.d,
                                                      vert, &nv, sl, &nsl, &err), 0);
                int kv = p.vertical < 30 ? 30 : p.vertical, ks = p.slash < 50 ? 50 : p.slash;
                kv = kv > t.n ? t.n : kv, ks = ks > t.n ? t.n : ks;
                for (int i = 1; i < nv; i++) assert_true(vert[i - 1] < vert[i]);
                for (int i = 1; i < nsl; i++) assert_true(sl[i - 1] > sl[i]);
                check_topk(vs, t.n, vert, nv, 30, kv);
                check_topk(ss, t.n, sl, nsl, 100, ks);
                assert_int_equal(sl[nsl - 1], 0); /* the main diagonal is always kept */
            }
        }
        free(vs), free(ss), free(vert), free(sl);
        qkv_free(&t);
    }
}

/* Index from lines: every kept vertical <= q and every kept slash's 64-wide range is covered,
 * columns lie left of every range, and the hand-worked merges below hold exactly. */
static void test_vs_merge_semantics(void **state) {
    (void)state;
    uint64_t seed = 0xabc;
    for (int trial = 0; trial < 40; trial++) {
        int n = 1 + (int)(tu_rand_u64(&seed) % 600);
        char *isv = calloc((size_t)n, 1), *iss = calloc((size_t)n, 1);
        int *vert = malloc(sizeof(int) * n), *sl = malloc(sizeof(int) * n), nv = 0, nsl = 0;
        for (int j = 0; j < n; j++) isv[j] = j < 30 || tu_rand_u64(&seed) % 7 == 0;
        for (int o = 0; o < n; o++) iss[o] = o == 0 || tu_rand_u64(&seed) % 5 == 0;
        for (int j = 0; j < n; j++)
            if (isv[j]) vert[nv++] = j;
        for (int o = n - 1; o >= 0; o--)
            if (iss[o]) sl[nsl++] = o;
        eng_head_index ix;
        eng_err err;
        assert_int_equal(eng_pattern_vs_index(vert, nv, sl, nsl, n, &ix, &err), 0);
        if (eng_index_validate(&ix, &err)) fail_msg("%s", err.msg);
        for (int i = 0; i < n; i++) {
            int m1 = (i / 64) * 64 + 64;
            for (int j = 0; j <= i; j++) {
                int want = isv[j];
                for (int s = 0; s < nsl && !want; s++) {
                    int o = sl[s];
                    if (o >= m1) continue;
                    int e = m1 - o > 64 ? m1 - o : 64;
                    want = j >= e - 64 && j < e;
                }
                if (want && !eng_index_covers(&ix, i, j)) fail_msg("n %d: line entry (%d,%d) not covered", n, i, j);
            }
        }
        eng_index_free(&ix);
        free(isv), free(iss), free(vert), free(sl);
    }
    /* Hand-worked (ALGORITHMS.md step 4 + upstream's 64-step range extension), n = 256:
     * row block 1 (m0 64, m1 128), offsets {28, 0}: 28 -> keys [36, 100); 0 -> e 128 lies within
     * 64 of 100, so the range grows by one 64-step to [36, 164): blocks at 36 and 100. Verticals
     * {0..29, 33}: 33 < 36 becomes a column, 0..29 columns too. */
    {
        int vert[31], nv = 0, sl[] = {28, 0};
        for (int j = 0; j < 30; j++) vert[nv++] = j;
        vert[nv++] = 33;
        eng_head_index ix;
        eng_err err;
        assert_int_equal(eng_pattern_vs_index(vert, nv, sl, 2, 256, &ix, &err), 0);
        const int *bo = ix.block_offset + 1 * ix.max_blocks, *ci = ix.column_index + 1 * ix.max_cols;
        assert_int_equal(ix.block_count[1], 2);
        assert_int_equal(bo[0], 36);
        assert_int_equal(bo[1], 100);
        assert_int_equal(ix.column_count[1], 31);
        assert_int_equal(ci[30], 33);
        /* row block 0 (m1 64): offset 28 -> e = max(36, 64) = 64 -> [0, 64); offset 0 -> same. */
        assert_int_equal(ix.block_count[0], 1);
        assert_int_equal(ix.block_offset[0], 0);
        assert_int_equal(ix.column_count[0], 0);
        /* row block 3 (m1 256): 28 -> [164, 228); 0 -> 256 within 64 -> [164, 292): 164, 228;
         * verticals < 164 are columns: 0..29 and 33. */
        bo = ix.block_offset + 3 * ix.max_blocks;
        assert_int_equal(ix.block_count[3], 2);
        assert_int_equal(bo[0], 164);
        assert_int_equal(bo[1], 228);
        assert_int_equal(ix.column_count[3], 31);
        /* (255, 229) covered by block 228; (255, 163) not covered; (200, 33) by column */
        assert_true(eng_index_covers(&ix, 255, 229));
        assert_false(eng_index_covers(&ix, 255, 163));
        assert_true(eng_index_covers(&ix, 200, 33));
        assert_false(eng_index_covers(&ix, 200, 34));
        eng_index_free(&ix);
    }
    /* Separate ranges: offsets {200, 0} at m1 256: 200 -> [0, 64) (e = max(56, 64)); 0 -> [192, 256)
     * is more than 64 past 64, so a new range; vertical 100 (between ranges) is a column, vertical
     * 10 (inside [0, 64)) is dropped as covered, vertical 250 (inside the last range) too. */
    {
        int vert[] = {10, 100, 250}, sl[] = {200, 0};
        eng_head_index ix;
        eng_err err;
        assert_int_equal(eng_pattern_vs_index(vert, 3, sl, 2, 256, &ix, &err), 0);
        const int *bo = ix.block_offset + 3 * ix.max_blocks;
        assert_int_equal(ix.block_count[3], 2);
        assert_int_equal(bo[0], 0);
        assert_int_equal(bo[1], 192);
        assert_int_equal(ix.column_count[3], 1);
        assert_int_equal(ix.column_index[3 * ix.max_cols], 100);
        eng_index_free(&ix);
    }
    /* Partial last row block: n = 100, m1 = 128 (upstream's end_m), offsets {40, 0}: 40 -> [24, 88);
     * 0 -> 128 is within 64 of 88 -> [24, 152): blocks 24 and 88 (88 <= last query 99). */
    {
        int vert[] = {0}, sl[] = {40, 0};
        eng_head_index ix;
        eng_err err;
        assert_int_equal(eng_pattern_vs_index(vert, 1, sl, 2, 100, &ix, &err), 0);
        assert_int_equal(ix.block_count[1], 2);
        assert_int_equal(ix.block_offset[ix.max_blocks], 24);
        assert_int_equal(ix.block_offset[ix.max_blocks + 1], 88);
        assert_int_equal(ix.column_count[1], 1);
        eng_index_free(&ix);
    }
    /* Bad lines are refused. */
    {
        int vert[] = {5, 3}, sl[] = {0};
        eng_head_index ix;
        eng_err err;
        assert_int_equal(eng_pattern_vs_index(vert, 2, sl, 1, 100, &ix, &err), -1);
        assert_non_null(strstr(err.msg, "ascending"));
    }
}

/* ---- block-sparse ---------------------------------------------------------------------------------- */

static void test_bs_blocks(void **state) {
    (void)state;
    uint64_t seed = 0xb10c;
    const int ns[] = {30, 64, 200, 640, 1000};
    const int ks[] = {1, 2, 3, 5, 100};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
        qkv t = qkv_make(ns[a], 2, 2, 24, &seed, 1.0f);
        int nrb = (t.n + 63) / 64, d = t.d;
        double *qp = calloc((size_t)nrb * d, sizeof(double)), *kp = calloc((size_t)nrb * d, sizeof(double));
        for (int i = 0; i < t.n; i++)
            for (int c = 0; c < d; c++) {
                qp[(i / 64) * d + c] += qh(&t, 1)[(size_t)i * t.H * d + c];
                kp[(i / 64) * d + c] += kh(&t, 1)[(size_t)i * t.Hkv * d + c];
            }
        for (int b = 0; b < nrb; b++) {
            int cnt = b == nrb - 1 ? t.n - b * 64 : 64;
            for (int c = 0; c < d; c++) qp[b * d + c] /= cnt, kp[b * d + c] /= cnt;
        }
        for (size_t b = 0; b < sizeof ks / sizeof *ks; b++) {
            eng_pattern p = pat(ENG_PAT_BS, ks[b], 0);
            eng_head_index ix;
            build_ok(&p, &t, 1, &ix);
            for (int rb = 0; rb < nrb; rb++) {
                int want = ks[b] < rb + 1 ? ks[b] : rb + 1;
                assert_int_equal(ix.block_count[rb], want);
                assert_int_equal(ix.column_count[rb], 0);
                const int *bo = ix.block_offset + (size_t)rb * ix.max_blocks;
                char in[64] = {0};
                for (int i = 0; i < want; i++) {
                    assert_int_equal(bo[i] % 64, 0);
                    in[bo[i] / 64] = 1;
                }
                assert_true(in[rb]); /* diagonal always */
                double min_in = INFINITY, max_out = -INFINITY;
                for (int kb = 0; kb < rb; kb++) {
                    double s = 0;
                    for (int c = 0; c < d; c++) s += qp[rb * d + c] * kp[kb * d + c];
                    if (in[kb] && s < min_in) min_in = s;
                    if (!in[kb] && s > max_out) max_out = s;
                }
                if (max_out > min_in + 1e-5) fail_msg("bs n %d k %d rb %d: dropped %.6g > kept %.6g", t.n, ks[b], rb,
                                                      max_out, min_in);
            }
            eng_index_free(&ix);
        }
        free(qp), free(kp);
        qkv_free(&t);
    }
}

/* ---- sparse attention vs brute force ----------------------------------------------------------------- */

static void test_sparse_attention_vs_brute_force(void **state) {
    (void)state;
    uint64_t seed = 0x5eed5;
    const int ns[] = {1, 5, 63, 64, 65, 100, 129, 200, 321};
    const int gqa[][2] = {{1, 1}, {4, 1}, {8, 1}, {8, 2}};
    int checked = 0;
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (size_t g = 0; g < sizeof gqa / sizeof *gqa; g++) {
            int H = gqa[g][0], Hkv = gqa[g][1], d = (a % 2) ? 64 : 40;
            qkv t = qkv_make(ns[a], H, Hkv, d, &seed, 2.0f);
            eng_pattern ps[] = {pat(ENG_PAT_DENSE, 0, 0),  pat(ENG_PAT_ASHAPE, 4, 16), pat(ENG_PAT_ASHAPE, 64, 70),
                                pat(ENG_PAT_ASHAPE, 0, 1), pat(ENG_PAT_VS, 30, 50),    pat(ENG_PAT_VS, 60, 150),
                                pat(ENG_PAT_VS, 1000, 6096), pat(ENG_PAT_BS, 1, 0),    pat(ENG_PAT_BS, 3, 0)};
            for (size_t p = 0; p < sizeof ps / sizeof *ps; p++) {
                int h = (int)((a + p) % (size_t)H); /* a different head (and KV head) each time */
                eng_head_index ix;
                build_ok(&ps[p], &t, h, &ix);
                check_attention(&t, h, &ix);
                eng_index_free(&ix);
                checked++;
            }
            qkv_free(&t);
        }
    assert_int_equal(checked, 9 * 4 * 9);
}

/* A larger VS case whose index has many ranges and columns, and a band-masked A-shape. */
static void test_sparse_attention_large(void **state) {
    (void)state;
    uint64_t seed = 0x1a2e;
    qkv t = qkv_make(700, 4, 4, 32, &seed, 4.0f);
    eng_pattern ps[] = {pat(ENG_PAT_VS, 300, 50), pat(ENG_PAT_ASHAPE, 70, 150), pat(ENG_PAT_BS, 4, 0),
                        pat(ENG_PAT_VS, 90, 130)};
    for (int p = 0; p < 4; p++) {
        eng_head_index ix;
        build_ok(&ps[p], &t, p, &ix);
        if (p == 0) {
            int cols = 0, blocks = 0;
            for (int rb = 0; rb < ix.n_rb; rb++) cols += ix.column_count[rb], blocks += ix.block_count[rb];
            assert_true(cols > 100); /* gathered columns are exercised */
            assert_true(blocks > ix.n_rb);
        }
        check_attention(&t, p, &ix);
        eng_index_free(&ix);
    }
    qkv_free(&t);
}

/* ---- purity, validation, errors ------------------------------------------------------------------------ */

static int index_equal(const eng_head_index *a, const eng_head_index *b) {
    if (a->n != b->n || a->n_rb != b->n_rb || a->sink != b->sink || a->window != b->window) return 0;
    for (int rb = 0; rb < a->n_rb; rb++) {
        if (a->block_count[rb] != b->block_count[rb] || a->column_count[rb] != b->column_count[rb]) return 0;
        for (int i = 0; i < a->block_count[rb]; i++)
            if (a->block_offset[rb * a->max_blocks + i] != b->block_offset[rb * b->max_blocks + i]) return 0;
        for (int i = 0; i < a->column_count[rb]; i++)
            if (a->column_index[rb * a->max_cols + i] != b->column_index[rb * b->max_cols + i]) return 0;
    }
    return 1;
}

static void test_build_is_pure(void **state) {
    (void)state;
    uint64_t seed = 0x9999;
    qkv t = qkv_make(300, 1, 1, 32, &seed, 2.0f);
    float *q2 = malloc(sizeof(float) * 300 * 32), *k2 = malloc(sizeof(float) * 300 * 32);
    memcpy(q2, t.q, sizeof(float) * 300 * 32);
    memcpy(k2, t.k, sizeof(float) * 300 * 32);
    eng_pattern ps[] = {pat(ENG_PAT_VS, 40, 70), pat(ENG_PAT_BS, 2, 0), pat(ENG_PAT_ASHAPE, 10, 90)};
    for (int p = 0; p < 3; p++) {
        eng_head_index a, b;
        build_ok(&ps[p], &t, 0, &a);
        build_ok(&ps[p], &t, 0, &b);
        assert_true(index_equal(&a, &b));
        eng_index_free(&a), eng_index_free(&b);
    }
    assert_memory_equal(q2, t.q, sizeof(float) * 300 * 32); /* inputs untouched */
    assert_memory_equal(k2, t.k, sizeof(float) * 300 * 32);
    free(q2), free(k2);
    qkv_free(&t);
}

static void test_errors_and_names(void **state) {
    (void)state;
    eng_err err = {{0}};
    eng_head_index ix;
    float q[64] = {0}, k[64] = {0};
    eng_pattern p = pat(ENG_PAT_ASHAPE, 4, 0);
    assert_int_equal(eng_pattern_build(&p, q, 4, k, 4, 16, 4, &ix, &err), -1);
    assert_non_null(strstr(err.msg, "n_local"));
    p = pat(ENG_PAT_BS, 0, 0);
    assert_int_equal(eng_pattern_build(&p, q, 4, k, 4, 16, 4, &ix, &err), -1);
    assert_non_null(strstr(err.msg, "topk"));
    p = pat(ENG_PAT_VS, 30, 50);
    assert_int_equal(eng_pattern_build(&p, NULL, 4, k, 4, 16, 4, &ix, &err), -1);
    assert_int_equal(eng_pattern_build(&p, q, 4, k, 4, 0, 4, &ix, &err), -1);
    p.kind = (eng_pat_kind)77;
    assert_int_equal(eng_pattern_build(&p, q, 4, k, 4, 16, 4, &ix, &err), -1);
    assert_string_equal(eng_pattern_kind_name(ENG_PAT_VS), "vs");
    assert_string_equal(eng_pattern_kind_name(ENG_PAT_ASHAPE), "ashape");
    eng_pat_kind kk;
    assert_int_equal(eng_pattern_kind_parse("vertical_and_slash", &kk), 0);
    assert_int_equal(kk, ENG_PAT_VS);
    assert_int_equal(eng_pattern_kind_parse("stream_llm", &kk), 0);
    assert_int_equal(kk, ENG_PAT_ASHAPE);
    assert_int_equal(eng_pattern_kind_parse("bs", &kk), 0);
    assert_int_equal(kk, ENG_PAT_BS);
    assert_int_equal(eng_pattern_kind_parse("nope", &kk), -1);
    char buf[96];
    p = pat(ENG_PAT_VS, 30, 2048);
    eng_pattern_describe(&p, buf, sizeof buf);
    assert_string_equal(buf, "vs(vertical=30,slash=2048)");
    /* cfg lookup: heads NULL -> default; out of range -> default */
    eng_pattern_cfg cfg = {.n_layers = 2, .n_heads = 2, .def = pat(ENG_PAT_BS, 7, 0), .heads = NULL};
    assert_int_equal(eng_pattern_cfg_get(&cfg, 1, 1)->topk, 7);
    eng_pattern hs[4] = {pat(ENG_PAT_DENSE, 0, 0), pat(ENG_PAT_VS, 1, 2), pat(ENG_PAT_ASHAPE, 3, 4),
                         pat(ENG_PAT_BS, 5, 0)};
    cfg.heads = hs;
    assert_int_equal(eng_pattern_cfg_get(&cfg, 1, 0)->n_init, 3);
    assert_int_equal(eng_pattern_cfg_get(&cfg, 5, 0)->topk, 7);
    /* validate catches broken indexes */
    assert_int_equal(eng_index_alloc(&ix, 130, 2, 2, &err), 0);
    ix.block_count[1] = 2;
    ix.block_offset[2] = 64, ix.block_offset[3] = 100; /* overlap */
    assert_int_equal(eng_index_validate(&ix, &err), -1);
    assert_non_null(strstr(err.msg, "row block 1"));
    ix.block_offset[2] = 0, ix.block_offset[3] = 64;
    assert_int_equal(eng_index_validate(&ix, &err), 0);
    ix.column_count[1] = 1, ix.column_index[2] = 70; /* > m0 */
    assert_int_equal(eng_index_validate(&ix, &err), -1);
    eng_index_free(&ix);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_and_ashape_membership),
        cmocka_unit_test(test_vs_lines),
        cmocka_unit_test(test_vs_merge_semantics),
        cmocka_unit_test(test_bs_blocks),
        cmocka_unit_test(test_sparse_attention_vs_brute_force),
        cmocka_unit_test(test_sparse_attention_large),
        cmocka_unit_test(test_build_is_pure),
        cmocka_unit_test(test_errors_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
