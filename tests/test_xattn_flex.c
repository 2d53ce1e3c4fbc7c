/* test_xattn_flex: XAttention and FlexPrefill as index patterns — block scores and selections
 * against independent brute-force definitions, the CPU sparse attention over their index against a
 * masked softmax, the new kinds in the native config schema and in search candidates. */
#include "test_util.h"

#include "eng_dma.h"
#include "eng_index.h"
#include "eng_patcfg.h"
#include "eng_pattern.h"
#include "eng_search.h"

static float *rnd(int n, int d, uint64_t *s, float sc) {
    float *x = malloc(sizeof(float) * (size_t)n * d);
    tu_fill(x, (size_t)n * d, s, sc);
    return x;
}

/* Masked softmax in double over the pairs the mask covers vs eng_dma_attn_head. */
static void check_attention(const eng_head_mask *m, const float *q, const float *k, const float *v, int n, int d) {
    float *out = malloc(sizeof(float) * (size_t)n * d), *lse = malloc(sizeof(float) * (size_t)n);
    float *ref = malloc(sizeof(float) * (size_t)n * d);
    double *s = malloc(sizeof(double) * (size_t)n);
    eng_err err = {{0}};
    assert_int_equal(eng_dma_attn_head(m, q, d, k, v, d, n, d, out, d, lse, NULL, &err), 0);
    for (int i = 0; i < n; i++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; j++) {
            s[j] = -INFINITY;
            if (!eng_dma_mask_covers(m, i, j)) continue;
            double a = 0;
            for (int c = 0; c < d; c++) a += (double)q[i * d + c] * k[j * d + c];
            s[j] = a / sqrt((double)d);
            if (s[j] > mx) mx = s[j];
        }
        for (int c = 0; c < d; c++) ref[i * d + c] = 0;
        for (int j = 0; j <= i; j++) {
            if (s[j] == -INFINITY) continue;
            double p = exp(s[j] - mx);
            sum += p;
            for (int c = 0; c < d; c++) ref[i * d + c] += (float)(p * v[j * d + c]);
        }
        assert_true(sum > 0); /* every pattern keeps the diagonal */
        for (int c = 0; c < d; c++) ref[i * d + c] /= (float)sum;
        assert_true(fabs(lse[i] - (mx + log(sum))) < 1e-4);
    }
    double e = tu_rel_l2(out, ref, (size_t)n * d);
    if (e > 1e-5) fail_msg("attention rel err %g", e);
    free(out), free(lse), free(ref), free(s);
}

/* XAttention scores by the antidiagonal definition: entries (i, j) of stride group pair
 * (i / S, j / S) with i % S + j % S == S - 1, averaged, softmaxed per query group, block-summed. */
static void xattn_brute(const float *q, const float *k, int n, int d, int S, double *out) {
    const int nb = (n + 127) / 128, na = n / S;
    memset(out, 0, sizeof(double) * (size_t)nb * nb);
    double *lg = malloc(sizeof(double) * (size_t)(na + 1));
    for (int a = 0; a < na; a++) {
        double mx = -INFINITY, sum = 0;
        for (int b = 0; b <= a; b++) {
            double acc = 0;
            for (int i = a * S; i < a * S + S; i++)
                for (int j = b * S; j < b * S + S; j++)
                    if (i % S + j % S == S - 1)
                        for (int c = 0; c < d; c++) acc += (double)q[i * d + c] * k[j * d + c];
            lg[b] = acc / S / sqrt((double)d);
            if (lg[b] > mx) mx = lg[b];
        }
        for (int b = 0; b <= a; b++) sum += exp(lg[b] - mx);
        for (int b = 0; b <= a; b++) out[(a * S / 128) * nb + b * S / 128] += exp(lg[b] - mx) / sum;
    }
    for (int I = 0; I < nb; I++) {
        double t = 0;
        for (int J = 0; J < nb; J++) t += out[I * nb + J];
        for (int J = 0; J < nb && t > 0; J++) out[I * nb + J] /= t;
    }
    free(lg);
}

static void test_xattn_scores_and_selection(void **state) {
    (void)state;
    uint64_t seed = 0x9a77e1;
    const int ns[] = {128, 300, 517};
    const int strides[] = {8, 16, 4};
    for (int t = 0; t < 3; t++) {
        const int n = ns[t], d = 16, S = strides[t], nb = (n + 127) / 128;
        float *q = rnd(n, d, &seed, 2.0f), *k = rnd(n, d, &seed, 1.0f), *v = rnd(n, d, &seed, 1.0f);
        eng_pattern p = eng_pattern_make(ENG_PAT_XATTN);
        p.stride = S;
        double *s = malloc(sizeof(double) * nb * nb), *b = malloc(sizeof(double) * nb * nb);
        eng_err err = {{0}};
        assert_int_equal(eng_pattern_xattn_scores(&p, q, d, k, d, n, d, s, &err), 0);
        xattn_brute(q, k, n, d, S, b);
        for (int i = 0; i < nb * nb; i++) assert_true(fabs(s[i] - b[i]) < 1e-9);
        const float ths[] = {0.0f, 0.5f, 0.9f, 1.0f};
        for (int h = 0; h < 4; h++) {
            p.threshold = ths[h];
            eng_head_mask m;
            assert_int_equal(eng_dma_mask_build(&p, q, d, k, v, d, n, d, &m, &err), 0);
            assert_int_equal(m.kind, ENG_MASK_INDEX);
            assert_int_equal(eng_index_validate(&m.ix, &err), 0);
            /* Selection by the rule: diagonal + first, then descending until the share >= threshold. */
            for (int I = 0; I < nb; I++) {
                unsigned char keep[8] = {0};
                keep[I] = keep[0] = 1;
                double cum = b[I * nb + I] + (I ? b[I * nb] : 0);
                for (;;) {
                    if (cum >= ths[h]) break;
                    int best = -1;
                    for (int J = 1; J < I; J++)
                        if (!keep[J] && (best < 0 || b[I * nb + J] >= b[I * nb + best])) best = J;
                    if (best < 0) break;
                    keep[best] = 1;
                    cum += b[I * nb + best];
                }
                for (int i = I * 128; i < I * 128 + 128 && i < n; i++)
                    for (int j = 0; j <= i; j++)
                        if (eng_dma_mask_covers(&m, i, j) != keep[j / 128]) fail_msg("xattn n %d S %d th %g: (%d, %d)", n, S, ths[h], i, j);
            }
            if (ths[h] == 1.0f) assert_int_equal(eng_dma_mask_count(&m), (long long)n * (n + 1) / 2);
            check_attention(&m, q, k, v, n, d);
            eng_dma_mask_free(&m);
        }
        free(s), free(b), free(q), free(k), free(v);
    }
}

/* FlexPrefill reference pieces, written from the definitions. */
static void flex_estimate_brute(const float *q, const float *k, int n, int d, double *vert, double *slash) {
    const int lq = n < 128 ? n : 128;
    memset(vert, 0, sizeof(double) * n);
    memset(slash, 0, sizeof(double) * n);
    double *r = malloc(sizeof(double) * n);
    for (int i = n - lq; i < n; i++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; j++) {
            double a = 0;
            for (int c = 0; c < d; c++) a += (double)q[i * d + c] * k[j * d + c];
            r[j] = a / sqrt((double)d);
            mx = r[j] > mx ? r[j] : mx;
        }
        for (int j = 0; j <= i; j++) sum += exp(r[j] - mx);
        for (int j = 0; j <= i; j++) {
            vert[j] += exp(r[j] - mx) / sum / lq;
            slash[i - j] += exp(r[j] - mx) / sum / lq;
        }
    }
    free(r);
}

static double flex_js_brute(const float *q, const float *k, int n, int d, const double *vert) {
    const int nb = (n + 127) / 128, lq = n < 128 ? n : 128;
    double qm[64] = {0}, est[64], pool[64] = {0}, mx = -INFINITY, sum = 0, js = 0;
    for (int i = n - lq; i < n; i++)
        for (int c = 0; c < d; c++) qm[c] += q[i * d + c] / (double)lq;
    for (int J = 0; J < nb; J++) {
        int j1 = J * 128 + 128 < n ? J * 128 + 128 : n;
        double a = 0;
        for (int c = 0; c < d; c++) {
            double kb = 0;
            for (int j = J * 128; j < j1; j++) kb += k[j * d + c];
            a += qm[c] * kb / (j1 - J * 128);
        }
        est[J] = a / sqrt((double)d);
        mx = est[J] > mx ? est[J] : mx;
    }
    for (int J = 0; J < nb; J++) sum += exp(est[J] - mx);
    for (int j = 0; j < n; j++) pool[j / 128] += vert[j];
    for (int J = 0; J < nb; J++) {
        double a = exp(est[J] - mx) / sum, b = pool[J], m = (a + b) / 2;
        if (a > 0) js += 0.5 * a * log(a / m);
        if (b > 0) js += 0.5 * b * log(b / m);
    }
    return sqrt(js);
}

/* The c best entries by value with entry 0 forced: returns the count and fills sel (sorted). */
static int cover_brute(const double *v, int n, double gamma, int minl, int *sel) {
    unsigned char *used = calloc(n, 1);
    double tot = 0, cum = 0;
    for (int i = 0; i < n; i++) tot += v[i];
    int c = 0;
    while (c < n && cum < gamma * tot) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!used[i] && (best < 0 || v[i] > v[best])) best = i;
        used[best] = 1, cum += v[best], c++;
    }
    if (c < minl) c = minl;
    if (c < 1) c = 1;
    if (c > n) c = n;
    /* entry 0 first, then the ranking */
    memset(used, 0, n);
    used[0] = 1;
    int got = 1;
    while (got < c) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!used[i] && (best < 0 || v[i] > v[best])) best = i;
        used[best] = 1, got++;
    }
    int w = 0;
    for (int i = 0; i < n; i++)
        if (used[i]) sel[w++] = i;
    free(used);
    return c;
}

static void test_flex(void **state) {
    (void)state;
    uint64_t seed = 0xf1e8;
    const int ns[] = {400, 641};
    for (int t = 0; t < 2; t++) {
        const int n = ns[t], d = 32, nb = (n + 127) / 128;
        float *q = rnd(n, d, &seed, 3.0f), *k = rnd(n, d, &seed, 1.0f), *v = rnd(n, d, &seed, 1.0f);
        double *vert = malloc(sizeof(double) * n), *slash = malloc(sizeof(double) * n);
        flex_estimate_brute(q, k, n, d, vert, slash);
        const double js_ref = flex_js_brute(q, k, n, d, vert);
        eng_err err = {{0}};
        for (int mode = 0; mode < 2; mode++) {
            eng_pattern p = eng_pattern_make(ENG_PAT_FLEX);
            p.min_budget = 64;
            p.gamma = 0.8f;
            p.tau = mode ? 1.0f : 0.0f; /* 1: js (<= sqrt(ln 2)) always below -> query-aware; 0: never */
            double js;
            int qa, dense;
            assert_int_equal(eng_pattern_flex_decide(&p, q, d, k, d, n, d, &js, &qa, &dense, &err), 0);
            assert_int_equal(dense, 0);
            assert_true(fabs(js - js_ref) < 1e-9);
            assert_int_equal(qa, mode);
            eng_head_mask m;
            assert_int_equal(eng_dma_mask_build(&p, q, d, k, v, d, n, d, &m, &err), 0);
            assert_int_equal(eng_index_validate(&m.ix, &err), 0);
            if (mode) { /* query-aware blocks, brute force */
                for (int I = 0; I < nb; I++) {
                    double sc[8], qp[32] = {0}, mx = -INFINITY;
                    int i1 = I * 128 + 128 < n ? I * 128 + 128 : n;
                    for (int i = I * 128; i < i1; i++)
                        for (int c = 0; c < d; c++) qp[c] += q[i * d + c] / (double)(i1 - I * 128);
                    for (int J = 0; J <= I; J++) {
                        int j1 = J * 128 + 128 < n ? J * 128 + 128 : n;
                        double a = 0;
                        for (int c = 0; c < d; c++) {
                            double kb = 0;
                            for (int j = J * 128; j < j1; j++) kb += k[j * d + c];
                            a += qp[c] * kb / (j1 - J * 128);
                        }
                        sc[J] = a / sqrt((double)d);
                        mx = sc[J] > mx ? sc[J] : mx;
                    }
                    for (int J = 0; J <= I; J++) sc[J] = exp(sc[J] - mx);
                    unsigned char keep[8] = {0};
                    /* fewest covering gamma (no forced entry), at least 1 block, plus the diagonal */
                    double tot = 0, cum = 0;
                    for (int J = 0; J <= I; J++) tot += sc[J];
                    int c = 0;
                    unsigned char used[8] = {0};
                    while (c <= I && cum < p.gamma * tot) {
                        int best = -1;
                        for (int J = 0; J <= I; J++)
                            if (!used[J] && (best < 0 || sc[J] > sc[best])) best = J;
                        used[best] = 1, cum += sc[best], c++;
                    }
                    if (c < 1) used[0] = 1; /* min budget 64 tokens = 1 block: the best */
                    for (int J = 0; J <= I; J++) keep[J] = used[J];
                    keep[I] = 1;
                    for (int i = I * 128; i < i1; i++)
                        for (int j = 0; j <= i; j++)
                            if (eng_dma_mask_covers(&m, i, j) != keep[j / 128]) fail_msg("flex blocks (%d, %d)", i, j);
                }
            } else { /* vertical-slash: same lines through MInference's merge */
                int *vl = malloc(sizeof(int) * n), *sl = malloc(sizeof(int) * n), *sd = malloc(sizeof(int) * n);
                int nv = cover_brute(vert, n, p.gamma, p.min_budget, vl);
                int ns_ = cover_brute(slash, n, p.gamma, p.min_budget, sl);
                for (int i = 0; i < ns_; i++) sd[i] = sl[ns_ - 1 - i]; /* descending offsets */
                eng_head_index ref;
                assert_int_equal(eng_pattern_vs_index(vl, nv, sd, ns_, n, &ref, &err), 0);
                for (int i = 0; i < n; i++) {
                    assert_true(eng_dma_mask_covers(&m, i, 0));
                    assert_true(eng_dma_mask_covers(&m, i, i));
                    for (int j = 0; j <= i; j++)
                        if (eng_dma_mask_covers(&m, i, j) != eng_index_covers(&ref, i, j)) fail_msg("flex vs (%d, %d)", i, j);
                }
                eng_index_free(&ref);
                free(vl), free(sl), free(sd);
            }
            check_attention(&m, q, k, v, n, d);
            eng_dma_mask_free(&m);
        }
        free(vert), free(slash), free(q), free(k), free(v);
    }
    /* Too short for the pattern (n <= max(256, ceil(min_budget / 128) * 128)): dense. */
    eng_pattern p = eng_pattern_make(ENG_PAT_FLEX); /* min_budget 512 */
    const int n = 512, d = 8;
    float *q = rnd(n, d, &seed, 1), *k = rnd(n, d, &seed, 1);
    eng_head_index ix;
    eng_err err = {{0}};
    assert_int_equal(eng_pattern_build(&p, q, d, k, d, n, d, &ix, &err), 0);
    assert_int_equal(eng_index_count(&ix), (long long)n * (n + 1) / 2);
    eng_index_free(&ix);
    free(q), free(k);
}

static void test_config_and_search(void **state) {
    (void)state;
    const char *txt =
        "{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1, \"n_heads\": 6, \"layers\": [{\"layer\": 0, "
        "\"heads\": [{\"head\": 0, \"pattern\": \"xattn\", \"stride\": 16, \"threshold\": 0.8},"
        "{\"head\": 1, \"pattern\": \"flex\", \"gamma\": 0.95, \"tau\": 0.2, \"min_budget\": 256},"
        "{\"head\": 2, \"pattern\": \"dma\", \"keep\": 100, \"n_init\": 4, \"n_local\": 16, \"key_score\": 1},"
        "{\"head\": 3, \"pattern\": \"nm\", \"n\": 1, \"m\": 3},"
        "{\"head\": 4, \"pattern\": \"vs\", \"vertical\": 30, \"slash\": 60, \"reshape\": 1},"
        "{\"head\": 5, \"pattern\": \"vs\", \"vertical\": 30, \"slash\": 60}]}]}";
    eng_patcfg a, b;
    eng_err err = {{0}};
    if (eng_patcfg_parse(&a, txt, strlen(txt), "t", &err)) fail_msg("%s", err.msg);
    assert_int_equal(a.cfg.heads[0].kind, ENG_PAT_XATTN);
    assert_int_equal(a.cfg.heads[0].stride, 16);
    assert_true(fabs(a.cfg.heads[1].tau - 0.2f) < 1e-7);
    assert_int_equal(a.cfg.heads[2].key_score, 1);
    assert_int_equal(a.cfg.heads[3].nm_m, 3);
    assert_int_equal(a.cfg.heads[4].reshape, 1);
    char *out = eng_patcfg_native_text(&a, &err);
    assert_non_null(out);
    assert_null(strstr(strstr(out, "\"head\":\t5") ? strstr(out, "\"head\":\t5") : out + strlen(out), "reshape"));
    assert_non_null(strstr(out, "\"reshape\":\t1"));
    assert_int_equal(eng_patcfg_parse(&b, out, strlen(out), "t2", &err), 0);
    char why[128];
    assert_true(eng_patcfg_same(&a, &b, why, sizeof why));
    /* A reshape head has no MInference spelling. */
    char *mi = eng_patcfg_minference_text(&a, &err);
    assert_null(mi);
    free(out);
    eng_patcfg_free(&a), eng_patcfg_free(&b);
    /* Cross-field rules name the field. */
    const char *bad[][2] = {
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1, \"n_heads\": 1, \"default\": "
         "{\"pattern\": \"nm\", \"n\": 5, \"m\": 4}}", "must not exceed"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1, \"n_heads\": 1, \"default\": "
         "{\"pattern\": \"xattn\", \"stride\": 12}}", "stride"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1, \"n_heads\": 1, \"default\": "
         "{\"pattern\": \"flex\", \"gamma\": 1.5}}", "gamma"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1, \"n_heads\": 1, \"default\": "
         "{\"pattern\": \"dma\", \"reshape\": 2}}", "reshape"},
    };
    for (int i = 0; i < 4; i++) {
        assert_int_not_equal(eng_patcfg_parse(&a, bad[i][0], strlen(bad[i][0]), "bad", &err), 0);
        if (!strstr(err.msg, bad[i][1])) fail_msg("case %d: '%s' lacks '%s'", i, err.msg, bad[i][1]);
    }
    /* Every new kind as a search candidate (--candidates FILE content). */
    const char *cands = "[{\"pattern\": \"xattn\"}, {\"pattern\": \"flex\", \"min_budget\": 64}, "
                        "{\"pattern\": \"dma\", \"keep\": 64, \"n_init\": 4, \"n_local\": 32}, {\"pattern\": \"nm\"},"
                        "{\"pattern\": \"ashape\", \"n_init\": 4, \"n_local\": 64, \"reshape\": 1}, {\"pattern\": \"dense\"}]";
    eng_search_set set;
    assert_int_equal(eng_search_set_parse(&set, cands, strlen(cands), "c", &err), 0);
    assert_int_equal(set.n_cand, 6);
    uint64_t seed = 0x5ea7;
    const int n = 384, d = 16;
    float *q = rnd(n, d, &seed, 2), *k = rnd(n, d, &seed, 1), *v = rnd(n, d, &seed, 1);
    eng_pat_eval ev[6];
    int best = -1;
    eng_search_opts o = {.objective = ENG_SEARCH_OUTPUT, .tie_tol = 0.001};
    if (eng_search_head(q, d, k, v, d, n, d, set.cand, set.n_cand, &o, ev, &best, &err)) fail_msg("%s", err.msg);
    for (int c = 0; c < 6; c++) {
        assert_true(ev[c].density > 0 && ev[c].density <= 1.0);
        assert_true(isfinite(ev[c].error) && ev[c].error >= 0);
        assert_true(ev[c].recall > 0 && ev[c].recall <= 1.0);
    }
    assert_true(fabs(ev[3].density - 0.5) < 0.01); /* 2:4 keeps half the causal entries */
    assert_true(ev[5].error < 1e-6 && ev[5].density == 1.0);
    /* Flat random attention: xattn / flex keep every block here (error 0, density 1), as dense;
     * the first of the exact candidates wins. */
    assert_true(ev[best].error < 1e-6 && ev[best].density == 1.0 && best <= 1);
    eng_search_set_free(&set);
    free(q), free(k), free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xattn_scores_and_selection),
        cmocka_unit_test(test_flex),
        cmocka_unit_test(test_config_and_search),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
