/* test_metrics: density / recall / output error per head and layer against closed forms and a
 * brute-force softmax, the end-to-end comparison (KL, top-1, perplexity), and the full report on
 * the tiny checkpoint (dense config = no loss; a sparse config measured consistently; JSON holds
 * every head). */
#include "test_util.h"

#include <cjson/cJSON.h>

#include "eng_attn.h"
#include "eng_backend.h"
#include "eng_metrics.h"
#include "eng_model.h"
#include "eng_pattern.h"
#include "eng_report.h"

static void run_head(const float *q, const float *k, const float *v, int n, int d, const eng_pattern *p,
                     eng_head_index *ix, float *out, float *lse) {
    eng_err err;
    if (eng_pattern_build(p, q, d, k, d, n, d, ix, &err)) fail_msg("%s", err.msg);
    eng_attn_sparse_head(q, d, k, v, d, n, d, ix, out, d, lse);
}

/* q = 0: every row is uniform, so recall of A-shape(1, 1) is exactly kept / (i + 1). */
static void test_head_closed_form(void **state) {
    (void)state;
    const int n = 150, d = 8;
    uint64_t s = 3;
    float *q = calloc((size_t)n * d, sizeof(float)), *k = malloc(sizeof(float) * n * d), *v = malloc(sizeof(float) * n * d);
    tu_fill(k, (size_t)n * d, &s, 1);
    tu_fill(v, (size_t)n * d, &s, 1);
    float *od = malloc(sizeof(float) * n * d), *os = malloc(sizeof(float) * n * d);
    float *ld = malloc(sizeof(float) * n), *ls = malloc(sizeof(float) * n);
    eng_head_index dix, six;
    eng_pattern dp = eng_pattern_make(ENG_PAT_DENSE), ap = eng_pattern_make(ENG_PAT_ASHAPE);
    ap.n_init = 1, ap.n_local = 1;
    run_head(q, k, v, n, d, &dp, &dix, od, ld);
    run_head(q, k, v, n, d, &ap, &six, os, ls);
    eng_head_metrics m;
    eng_metrics_head(&dix, n, d, ld, ld, od, od, d, &m);
    assert_true(m.density == 1.0 && m.recall == 1.0 && m.error == 0.0);
    eng_metrics_head(&six, n, d, ld, ls, od, os, d, &m);
    double want_recall = 0, num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        want_recall += (i < 2 ? 1.0 : 2.0 / (i + 1)) / n;
        for (int c = 0; c < d; c++) {
            double ref = 0, sp = i ? 0.5 * (v[c] + v[(size_t)i * d + c]) : v[c];
            for (int j = 0; j <= i; j++) ref += v[(size_t)j * d + c] / (i + 1.0);
            num += (sp - ref) * (sp - ref);
            den += ref * ref;
        }
    }
    assert_int_equal(m.computed, 1 + 2LL * (n - 1));
    assert_true(fabs(m.density - (1 + 2.0 * (n - 1)) / (n * (n + 1) / 2.0)) < 1e-12);
    assert_true(fabs(m.recall - want_recall) < 1e-5);
    assert_true(fabs(m.min_recall - 2.0 / n) < 1e-5);
    assert_true(fabs(m.error - sqrt(num / den)) < 1e-4);
    eng_index_free(&dix), eng_index_free(&six);
    free(q), free(k), free(v), free(od), free(os), free(ld), free(ls);
}

static void test_layer_and_kl(void **state) {
    (void)state;
    eng_head_metrics h[2] = {{.computed = 10, .causal = 20, .recall = 0.8, .err_num = 1, .err_den = 4, .error = 0.5},
                             {.computed = 20, .causal = 20, .recall = 1.0, .err_num = 0, .err_den = 12, .error = 0}};
    eng_layer_metrics l;
    eng_metrics_layer(h, 2, &l);
    assert_true(fabs(l.density - 0.75) < 1e-12);
    assert_true(fabs(l.recall - 0.9) < 1e-12);
    assert_true(fabs(l.min_recall - 0.8) < 1e-12);
    assert_true(fabs(l.error - 0.25) < 1e-12); /* sqrt(1 / 16): pooled, not the mean of 0.5 and 0 */
    assert_true(fabs(l.max_error - 0.5) < 1e-12);
    float a[2] = {0, 0}, b[2] = {(float)log(3.0), 0};
    assert_true(fabs(eng_metrics_kl_logits(a, b, 2) - 0.5 * log(4.0 / 3.0)) < 1e-7);
    assert_true(eng_metrics_kl_logits(b, b, 2) == 0);
    /* shift invariance */
    float c[2] = {(float)log(3.0) + 100, 100};
    assert_true(fabs(eng_metrics_kl_logits(a, c, 2) - 0.5 * log(4.0 / 3.0)) < 1e-5);
}

static void test_e2e_fields(void **state) {
    (void)state;
    float la[3] = {1, 2, 3}, lb[3] = {1, 2, 3};
    int ad[4] = {5, 6, 7, 8}, as[4] = {5, 0, 7, 0};
    float pd[3] = {-1, -2, -3}, ps[3] = {-2, -2, -2};
    eng_prefill_out d = {.n = 4, .vocab = 3, .last_logits = la, .argmax = ad, .next_logprob = pd};
    eng_prefill_out s = {.n = 4, .vocab = 3, .last_logits = lb, .argmax = as, .next_logprob = ps};
    eng_e2e_metrics m;
    eng_err err;
    assert_int_equal(eng_metrics_e2e(&d, &s, &m, &err), 0);
    assert_true(m.kl_last == 0);
    assert_true(fabs(m.top1_agree - 0.5) < 1e-12);
    assert_true(fabs(m.nll_dense - 2.0) < 1e-9 && fabs(m.nll_sparse - 2.0) < 1e-9);
    assert_true(fabs(m.ppl_dense - exp(2.0)) < 1e-9);
    s.n = 3;
    assert_int_equal(eng_metrics_e2e(&d, &s, &m, &err), -1);
    assert_non_null(strstr(err.msg, "disagree"));
}

/* Brute-force recall of one head on the dense Q/K: mean over rows of the softmax mass of the
 * covered keys, in double. */
static double brute_recall(const float *q, int qs, const float *k, int ks, int n, int d, const eng_head_index *ix) {
    double tot = 0;
    double *s = malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) {
        double mx = -INFINITY, all = 0, in = 0;
        for (int j = 0; j <= i; j++) {
            double a = 0;
            for (int c = 0; c < d; c++) a += (double)q[(size_t)i * qs + c] * k[(size_t)j * ks + c];
            s[j] = a / sqrt((double)d);
            if (s[j] > mx) mx = s[j];
        }
        for (int j = 0; j <= i; j++) {
            double p = exp(s[j] - mx);
            all += p;
            if (eng_index_covers(ix, i, j)) in += p;
        }
        tot += in / all;
    }
    free(s);
    return tot / n;
}

static void test_report_tiny_model(void **state) {
    (void)state;
    eng_err err = {{0}};
    eng_model *m = NULL;
    if (eng_model_load(&m, "tests/fixtures/tiny-llama", &err)) skip();
    eng_backend *be = eng_backend_cpu_create(&err);
    assert_non_null(be);
    const int n = 260, L = m->cfg.n_layers, H = m->cfg.n_heads, Hkv = m->cfg.n_kv_heads, d = m->cfg.head_dim;
    int *tok = malloc(sizeof(int) * n);
    uint64_t s = 5;
    for (int i = 0; i < n; i++) tok[i] = (int)(tu_rand_u64(&s) % 256);

    /* dense config: nothing lost */
    eng_pattern_cfg dense = {.n_layers = L, .n_heads = H, .def = eng_pattern_make(ENG_PAT_DENSE)};
    eng_report r;
    if (eng_report_run(be, m, tok, n, &dense, NULL, &r, NULL, &err)) fail_msg("%s", err.msg);
    for (int i = 0; i < L * H; i++) {
        assert_true(r.head[i].density == 1.0);
        assert_true(r.head[i].recall > 0.99999);
        assert_true(r.head[i].error < 1e-5);
    }
    assert_true(r.e2e.kl_last < 1e-6);
    assert_true(r.e2e.top1_agree == 1.0);
    assert_true(fabs(r.e2e.ppl_dense - r.e2e.ppl_sparse) < 1e-3 * r.e2e.ppl_dense);
    eng_report_free(&r);

    /* a per-head mix of sparse patterns */
    eng_pattern heads[64];
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            eng_pattern p = eng_pattern_make((eng_pat_kind)(1 + (l * H + h) % 3));
            p.n_init = 4, p.n_local = 32, p.vertical = 30, p.slash = 50, p.topk = 2;
            heads[l * H + h] = p;
        }
    eng_pattern_cfg cfg = {.n_layers = L, .n_heads = H, .def = eng_pattern_make(ENG_PAT_DENSE), .heads = heads};
    eng_prefill_out sp;
    if (eng_report_run(be, m, tok, n, &cfg, NULL, &r, &sp, &err)) fail_msg("%s", err.msg);
    assert_int_equal(sp.n, n);
    assert_true(r.model.density < 0.8);
    for (int i = 0; i < L * H; i++) {
        assert_int_equal(r.pattern[i].kind, heads[i].kind);
        assert_true(r.head[i].density > 0 && r.head[i].density < 1);
        assert_true(r.head[i].recall > 0 && r.head[i].recall < 1);
        assert_true(r.head[i].error > 0);
    }
    assert_true(r.e2e.kl_last >= 0);
    assert_true(r.e2e.top1_agree >= 0 && r.e2e.top1_agree <= 1);
    /* recall from LSEs equals the brute-force softmax mass on the dense pass's Q/K */
    eng_prefill_opts po = {.keep_qkv = 1, .keep_lse = 1};
    eng_prefill_out dn;
    if (be->prefill(be, m, tok, n, &po, &dn, &err)) fail_msg("%s", err.msg);
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            const float *q = dn.q + (size_t)l * n * H * d + (size_t)h * d;
            const float *k = dn.k + (size_t)l * n * Hkv * d + (size_t)(h / (H / Hkv)) * d;
            eng_head_index ix;
            assert_int_equal(eng_pattern_build(&heads[l * H + h], q, H * d, k, Hkv * d, n, d, &ix, &err), 0);
            double br = brute_recall(q, H * d, k, Hkv * d, n, d, &ix);
            assert_int_equal(eng_index_count(&ix), r.head[l * H + h].computed);
            if (fabs(br - r.head[l * H + h].recall) > 1e-4)
                fail_msg("layer %d head %d: recall %.6f vs brute force %.6f", l, h, r.head[l * H + h].recall, br);
            eng_index_free(&ix);
        }
    /* JSON: every head's numbers */
    cJSON *j = eng_report_to_json(&r);
    assert_non_null(j);
    cJSON *layers = cJSON_GetObjectItem(j, "layers");
    assert_int_equal(cJSON_GetArraySize(layers), L);
    for (int l = 0; l < L; l++) {
        cJSON *hs = cJSON_GetObjectItem(cJSON_GetArrayItem(layers, l), "heads");
        assert_int_equal(cJSON_GetArraySize(hs), H);
        for (int h = 0; h < H; h++) {
            cJSON *o = cJSON_GetArrayItem(hs, h);
            assert_true(fabs(cJSON_GetObjectItem(o, "recall")->valuedouble - r.head[l * H + h].recall) < 1e-12);
            assert_true(fabs(cJSON_GetObjectItem(o, "error")->valuedouble - r.head[l * H + h].error) < 1e-12);
            assert_string_equal(cJSON_GetObjectItem(o, "pattern")->valuestring,
                                eng_pattern_kind_name(heads[l * H + h].kind));
        }
    }
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "end_to_end"), "kl_last"));
    cJSON_Delete(j);
    eng_prefill_out_free(&dn);
    eng_prefill_out_free(&sp);
    eng_report_free(&r);
    free(tok);
    be->destroy(be);
    eng_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_closed_form),
        cmocka_unit_test(test_layer_and_kl),
        cmocka_unit_test(test_e2e_fields),
        cmocka_unit_test(test_report_tiny_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
