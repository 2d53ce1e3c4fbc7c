/* test_search: per-head pattern search. Heads are constructed so that their true attention is a
 * known A-shape, vertical, slash or block structure; the search (paper's cost-matched set, scaled
 * to the prompt) must pick the matching pattern, keep every candidate's score, and the whole-model
 * search must run on a tiny checkpoint and export to MInference's format. */
#include "test_util.h"

#include <sys/wait.h>

#include "eng_backend.h"
#include "eng_model.h"
#include "eng_patcfg.h"
#include "eng_search.h"

#define PI 3.14159265358979323846

typedef struct {
    int n, d;
    float *q, *k, *v;
} head;

static head head_make(int n, int d, uint64_t *s) {
    head h = {n, d, calloc((size_t)n * d, sizeof(float)), calloc((size_t)n * d, sizeof(float)),
              malloc(sizeof(float) * n * d)};
    tu_fill(h.v, (size_t)n * d, s, 1.0f);
    return h;
}
static void head_free(head *h) { free(h->q), free(h->k), free(h->v); }

/* Scale logits: q . k / sqrt(d) = beta * (q_unit . k_unit). */
static void scale_q(head *h, double beta) {
    for (int i = 0; i < h->n * h->d; i++) h->q[i] *= (float)(beta * sqrt((double)h->d));
}

typedef struct {
    int best;
    eng_pat_eval ev[16];
    int n_cand;
} result;

static result search(const head *h, eng_search_objective ob) {
    eng_search_set set;
    eng_err err = {{0}};
    assert_int_equal(eng_search_set_default(&set, &err), 0);
    result r = {.n_cand = set.n_cand};
    eng_pattern cand[16];
    for (int c = 0; c < set.n_cand; c++) cand[c] = eng_search_scale(&set.cand[c], h->n, set.reference_len);
    eng_search_opts o = {.objective = ob, .tie_tol = 1e-3};
    if (eng_search_head(h->q, h->d, h->k, h->v, h->d, h->n, h->d, cand, set.n_cand, &o, r.ev, &r.best, &err))
        fail_msg("%s", err.msg);
    for (int c = 0; c < r.n_cand; c++) {
        char buf[96];
        eng_pattern_describe(&r.ev[c].pat, buf, sizeof buf);
        printf("    %-28s score %.5f density %.4f recall %.5f error %.5f%s\n", buf, r.ev[c].score, r.ev[c].density,
               r.ev[c].recall, r.ev[c].error, c == r.best ? "  <- picked" : "");
    }
    eng_search_set_free(&set);
    return r;
}

static void test_scaling(void **state) {
    (void)state;
    eng_search_set set;
    eng_err err;
    assert_int_equal(eng_search_set_default(&set, &err), 0);
    assert_int_equal(set.n_cand, 6);
    /* 2048 / 32768 = 1/16 */
    eng_pattern a = eng_search_scale(&set.cand[0], 2048, set.reference_len);
    assert_int_equal(a.kind, ENG_PAT_ASHAPE);
    assert_int_equal(a.n_init, 64);
    assert_int_equal(a.n_local, 256);
    eng_pattern v1 = eng_search_scale(&set.cand[1], 2048, set.reference_len);
    assert_int_equal(v1.vertical, 30); /* 30/16 -> the builder's floor 30 */
    assert_int_equal(v1.slash, 128);
    eng_pattern v4 = eng_search_scale(&set.cand[4], 2048, set.reference_len);
    assert_int_equal(v4.vertical, 188);
    assert_int_equal(v4.slash, 50);
    eng_pattern b = eng_search_scale(&set.cand[5], 2048, set.reference_len);
    assert_int_equal(b.topk, 6);
    /* never scaled up */
    eng_pattern same = eng_search_scale(&set.cand[1], 100000, set.reference_len);
    assert_int_equal(same.slash, 2048);
    eng_search_set_free(&set);
}

static void test_pick_rule(void **state) {
    (void)state;
    eng_pat_eval ev[3] = {{.score = 0.0100, .density = 0.5}, {.score = 0.0105, .density = 0.2},
                          {.score = 0.3, .density = 0.01}};
    eng_search_opts o = {.objective = ENG_SEARCH_OUTPUT, .tie_tol = 1e-3};
    assert_int_equal(eng_search_pick(ev, 3, &o), 1); /* within the tolerance and cheaper */
    o.tie_tol = 0;
    assert_int_equal(eng_search_pick(ev, 3, &o), 0);
    eng_pat_eval rv[2] = {{.score = 0.90, .density = 0.1}, {.score = 0.99, .density = 0.3}};
    o.objective = ENG_SEARCH_RECALL;
    assert_int_equal(eng_search_pick(rv, 2, &o), 1);
}

/* A-shape: 32 sink keys and a local band of ~110 offsets (a smoothed box built from 63 cosine
 * pairs, as RoPE would), n = 1024 -> candidates A(32, 128), VS(30, 64), VS(30, 56), VS(31, 50),
 * VS(94, 50), BS(3). */
static void test_search_finds_ashape(void **state) {
    (void)state;
    uint64_t s = 11;
    const int n = 1024, d = 128, M = 63, T = 2 * n;
    const double W = 80; /* box half-width; Lanczos smoothing spreads the edge to ~W + 40 */
    head h = head_make(n, d, &s);
    double c0 = 2 * W / T, cm[64], norm = c0;
    for (int m = 1; m <= M; m++) {
        double x = PI * m / (M + 1);
        cm[m] = 2.0 / (PI * m) * sin(2 * PI * m * W / T) * sin(x) / x;
        norm += cm[m];
    }
    for (int i = 0; i < n; i++) {
        float *q = h.q + (size_t)i * d, *k = h.k + (size_t)i * d;
        q[0] = 1, k[0] = i < 32 ? 1.0f : 0.0f; /* sinks */
        q[1] = (float)(c0 / norm), k[1] = 1;
        for (int m = 1; m <= M; m++) {
            double th = 2 * PI * m * i / T;
            q[2 * m] = (float)(cm[m] / norm * cos(th)), q[2 * m + 1] = (float)(cm[m] / norm * sin(th));
            k[2 * m] = (float)cos(th), k[2 * m + 1] = (float)sin(th);
        }
    }
    scale_q(&h, 14.0);
    result r = search(&h, ENG_SEARCH_OUTPUT);
    assert_int_equal(r.ev[r.best].pat.kind, ENG_PAT_ASHAPE);
    assert_true(r.ev[r.best].error < 1e-3);
    /* BS(3) comes closest (its blocks hold most of the band) but still loses mass at the edge */
    for (int c = 0; c < r.n_cand; c++)
        if (c != r.best) assert_true(r.ev[c].error > 0.005 && r.ev[c].error > 10 * r.ev[r.best].error);
    head_free(&h);
}

/* Slash: attention on diagonals o = 0, 200, 400, ... (a Dirichlet kernel of period 200 in 63
 * cosine pairs), n = 2048 -> VS with spare slash budget must win. */
static void test_search_finds_slash(void **state) {
    (void)state;
    uint64_t s = 12;
    const int n = 2048, d = 128, M = 63, P = 200;
    head h = head_make(n, d, &s);
    for (int i = 0; i < n; i++) {
        float *q = h.q + (size_t)i * d, *k = h.k + (size_t)i * d;
        for (int m = 1; m <= M; m++) {
            double th = 2 * PI * m * i / P;
            q[2 * m] = (float)(cos(th) / M), q[2 * m + 1] = (float)(sin(th) / M);
            k[2 * m] = (float)cos(th), k[2 * m + 1] = (float)sin(th);
        }
    }
    scale_q(&h, 16.0);
    result r = search(&h, ENG_SEARCH_OUTPUT);
    const eng_pattern *w = &r.ev[r.best].pat;
    assert_int_equal(w->kind, ENG_PAT_VS);
    assert_true(w->slash >= 110); /* needs slash lines beyond the 100 forced local ones */
    assert_true(r.ev[r.best].error < 0.01);
    for (int c = 0; c < r.n_cand; c++)
        if (r.ev[c].pat.kind != ENG_PAT_VS || r.ev[c].pat.slash < 100) assert_true(r.ev[c].error > 0.1);
    head_free(&h);
}

/* Vertical: 50 random key columns (>= 64) that every later query attends to, n = 1024 -> VS(94, 50)
 * (the only candidate with 50 spare vertical lines) must win, by output and by recall. */
static void test_search_finds_vertical(void **state) {
    (void)state;
    uint64_t s = 13;
    const int n = 1024, d = 16;
    head h = head_make(n, d, &s);
    char is_v[1024] = {0};
    for (int placed = 0; placed < 50;) {
        int j = 64 + (int)(tu_rand_u64(&s) % (uint64_t)(n - 64));
        if (!is_v[j]) is_v[j] = 1, placed++;
    }
    for (int i = 0; i < n; i++) {
        float *q = h.q + (size_t)i * d, *k = h.k + (size_t)i * d;
        q[0] = 1;
        k[0] = is_v[i] ? 1.0f : 0.0f;
        for (int c = 1; c < d; c++) q[c] = 0.02f * tu_randf(&s), k[c] = tu_randf(&s);
    }
    scale_q(&h, 12.0);
    for (int ob = 0; ob < 2; ob++) {
        result r = search(&h, (eng_search_objective)ob);
        const eng_pattern *w = &r.ev[r.best].pat;
        assert_int_equal(w->kind, ENG_PAT_VS);
        assert_int_equal(w->vertical, 94);
        assert_true(r.ev[r.best].recall > 0.99);
        for (int c = 0; c < r.n_cand; c++)
            if (c != r.best) assert_true(r.ev[c].recall < 0.95);
    }
    head_free(&h);
}

/* Block: 16 blocks in 8 topics of 2 blocks each (seeded shuffle); a query attends to every earlier
 * key of its block's topic, n = 1024 -> BS(3) (own block + the other topic block) must win. */
static void test_search_finds_blocks(void **state) {
    (void)state;
    uint64_t s = 14;
    const int n = 1024, d = 16, nb = 16;
    head h = head_make(n, d, &s);
    int perm[16];
    for (int b = 0; b < nb; b++) perm[b] = b;
    for (int b = nb - 1; b > 0; b--) {
        int j = (int)(tu_rand_u64(&s) % (uint64_t)(b + 1)), t = perm[b];
        perm[b] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < n; i++) {
        int topic = perm[i / 64] / 2;
        h.q[(size_t)i * d + topic] = 1;
        h.k[(size_t)i * d + topic] = 1;
        for (int c = 8; c < d; c++) h.k[(size_t)i * d + c] = 0.3f * tu_randf(&s);
    }
    scale_q(&h, 12.0);
    result r = search(&h, ENG_SEARCH_OUTPUT);
    assert_int_equal(r.ev[r.best].pat.kind, ENG_PAT_BS);
    assert_int_equal(r.ev[r.best].pat.topk, 3);
    assert_true(r.ev[r.best].error < 0.01);
    for (int c = 0; c < r.n_cand; c++)
        if (c != r.best) assert_true(r.ev[c].error > 0.1);
    head_free(&h);
}

static void test_candidates_file(void **state) {
    (void)state;
    eng_search_set set;
    eng_err err = {{0}};
    const char *js = "{\"reference_len\": 4096, \"candidates\": [{\"pattern\": \"vs\", \"vertical\": 64, \"slash\": 512},"
                     " {\"pattern\": \"ashape\", \"n_init\": 16, \"n_local\": 256}, {\"pattern\": \"dense\"}]}";
    assert_int_equal(eng_search_set_parse(&set, js, strlen(js), "c.json", &err), 0);
    assert_int_equal(set.n_cand, 3);
    assert_int_equal(set.reference_len, 4096);
    eng_pattern p = eng_search_scale(&set.cand[0], 1024, set.reference_len);
    assert_int_equal(p.vertical, 30); /* 16 -> floor 30 */
    assert_int_equal(p.slash, 128);
    eng_search_set_free(&set);
    const char *list = "[{\"pattern\": \"bs\", \"topk\": 4}]";
    assert_int_equal(eng_search_set_parse(&set, list, strlen(list), "c.json", &err), 0);
    assert_int_equal(set.reference_len, 0);
    assert_int_equal(set.cand[0].topk, 4);
    eng_search_set_free(&set);
    const char *bad[] = {"[]", "{\"candidates\": 3}", "[{\"pattern\": \"vs\", \"slashes\": 3}]",
                         "{\"reference\": 1, \"candidates\": []}", "[{\"pattern\": \"bs\", \"topk\": 0}]", "[{"};
    const char *want[] = {"0 candidates", "want a list", "candidates[0]: slashes", "unknown field \"reference\"",
                          "topk: 0 outside", "not valid JSON"};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(eng_search_set_parse(&set, bad[i], strlen(bad[i]), "c.json", &err), -1);
        if (!strstr(err.msg, want[i])) fail_msg("case %d: '%s' lacks '%s'", i, err.msg, want[i]);
    }
}

/* Whole model on the tiny checkpoint: every head listed with all candidates, winners consistent
 * with the pick rule, native and MInference exports re-import to the same assignment. */
static void test_search_run_tiny_model(void **state) {
    (void)state;
    eng_err err = {{0}};
    eng_model *m = NULL;
    if (eng_model_load(&m, "tests/fixtures/tiny-llama", &err)) skip();
    eng_backend *be = eng_backend_cpu_create(&err);
    assert_non_null(be);
    const int n = 300;
    int *tok = malloc(sizeof(int) * n);
    uint64_t s = 77;
    for (int i = 0; i < n; i++) tok[i] = (int)(tu_rand_u64(&s) % 256);
    eng_search_set set;
    assert_int_equal(eng_search_set_default(&set, &err), 0);
    eng_search_opts o = {.objective = ENG_SEARCH_OUTPUT, .tie_tol = 1e-3};
    eng_patcfg pc;
    if (eng_search_run(be, m, tok, n, &set, &o, &pc, &err)) fail_msg("%s", err.msg);
    assert_int_equal(pc.cfg.n_layers, m->cfg.n_layers);
    assert_int_equal(pc.cfg.n_heads, m->cfg.n_heads);
    assert_string_equal(pc.objective, "output");
    assert_int_equal(pc.n_tokens, n);
    for (int i = 0; i < pc.cfg.n_layers * pc.cfg.n_heads; i++) {
        assert_true(pc.listed[i]);
        assert_int_equal(pc.n_cand[i], 6);
        const eng_pat_eval *ev = pc.cand + (size_t)i * pc.cand_cap;
        int b = eng_search_pick(ev, 6, &o);
        assert_int_equal(pc.cfg.heads[i].kind, ev[b].pat.kind);
        assert_true(pc.score[i] == ev[b].score);
        for (int c = 0; c < 6; c++) {
            assert_true(ev[c].density > 0 && ev[c].density <= 1);
            assert_true(ev[c].recall > 0 && ev[c].recall <= 1);
            assert_true(ev[c].error >= 0 && ev[c].error < 2);
        }
    }
    char *nat = eng_patcfg_native_text(&pc, &err), *mi = eng_patcfg_minference_text(&pc, &err);
    assert_non_null(nat);
    assert_non_null(mi);
    eng_patcfg a, b;
    assert_int_equal(eng_patcfg_parse(&a, nat, strlen(nat), "native", &err), 0);
    char why[256];
    if (!eng_patcfg_same(&a, &pc, why, sizeof why)) fail_msg("%s", why);
    assert_int_equal(eng_patcfg_parse(&b, mi, strlen(mi), "minference", &err), 0);
    for (int i = 0; i < pc.cfg.n_layers * pc.cfg.n_heads; i++) {
        const eng_pattern *x = &pc.cfg.heads[i], *y = &b.cfg.heads[i];
        assert_int_equal(x->kind, y->kind);
        if (x->kind == ENG_PAT_VS) assert_true(x->vertical == y->vertical && x->slash == y->slash);
        if (x->kind == ENG_PAT_ASHAPE) assert_true(x->n_init == y->n_init && x->n_local == y->n_local);
    }
    free(nat), free(mi), free(tok);
    eng_patcfg_free(&a), eng_patcfg_free(&b), eng_patcfg_free(&pc);
    eng_search_set_free(&set);
    be->destroy(be);
    eng_model_free(m);
}

/* The CLI: search writes both formats; run --patterns reads them and prints the report; bad
 * input gets exit code 2 and a message naming the problem. */
static int sh(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void **state) {
    (void)state;
    struct stat st;
    if (stat(tu_bin(), &st) || stat("tests/fixtures/tiny-llama/config.json", &st)) skip();
    char cmd[2048], out[16384], toks[1200] = "";
    for (int i = 0; i < 200; i++) snprintf(toks + strlen(toks), sizeof toks - strlen(toks), "%s%d", i ? "," : "", (i * 37) % 256);
    char dir[] = "/tmp/attnscope-search-XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "%s search --model tests/fixtures/tiny-llama --tokens %s --out %s/n.json "
             "--minference-out %s/m.json --objective recall 2>&1", tu_bin(), toks, dir, dir);
    assert_int_equal(sh(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "objective recall"));
    assert_non_null(strstr(out, "bs(topk="));
    for (int f = 0; f < 2; f++) {
        snprintf(cmd, sizeof cmd, "%s run --model tests/fixtures/tiny-llama --tokens %s --patterns %s/%s --json %s/r.json 2>&1",
                 tu_bin(), toks, dir, f ? "m.json" : "n.json", dir);
        assert_int_equal(sh(cmd, out, sizeof out), 0);
        assert_non_null(strstr(out, "sparse vs dense, per layer"));
        assert_non_null(strstr(out, "KL(dense || sparse)"));
        assert_non_null(strstr(out, "top-1 agreement"));
    }
    snprintf(cmd, sizeof cmd, "grep -c '\"min_recall\"' %s/r.json", dir);
    assert_int_equal(sh(cmd, out, sizeof out), 0);
    assert_int_equal(atoi(out), 8); /* 2 layers x 4 heads */
    /* bad input */
    snprintf(cmd, sizeof cmd, "%s search --model tests/fixtures/tiny-llama --tokens 1,2 --out %s/x.json --objective best 2>&1",
             tu_bin(), dir);
    assert_int_equal(sh(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "--objective"));
    snprintf(cmd, sizeof cmd, "printf '[{\"pattern\": \"vs\", \"vert\": 1}]' > %s/c.json && %s search --model "
             "tests/fixtures/tiny-llama --tokens 1,2 --out %s/x.json --candidates %s/c.json 2>&1", dir, tu_bin(), dir, dir);
    assert_int_equal(sh(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "candidates[0]: vert"));
    snprintf(cmd, sizeof cmd, "printf '[{\"0\": [\"vertical_and_slash\", 1, 2, 3]}, {\"9\": [\"stream_llm\", 1, 2, 3]}]' > "
             "%s/b.json && %s run --model tests/fixtures/tiny-llama --tokens 1,2 --patterns %s/b.json 2>&1", dir, tu_bin(), dir);
    assert_int_not_equal(sh(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "layer 1 head 9"));
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scaling),
        cmocka_unit_test(test_pick_rule),
        cmocka_unit_test(test_search_finds_ashape),
        cmocka_unit_test(test_search_finds_slash),
        cmocka_unit_test(test_search_finds_vertical),
        cmocka_unit_test(test_search_finds_blocks),
        cmocka_unit_test(test_candidates_file),
        cmocka_unit_test(test_search_run_tiny_model),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
