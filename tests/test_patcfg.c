/* test_patcfg: per-head pattern configs. MInference's two published files import, export
 * byte-identically, go through the native schema and back to the same assignment; the native
 * schema round-trips every pattern with search candidates; malformed input gets errors naming
 * layer, head and field. */
#include "test_util.h"

#include "eng_patcfg.h"

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    size_t r = fread(b, 1, (size_t)n, f);
    fclose(f);
    b[r] = 0;
    *len = r;
    return b;
}

typedef struct {
    const char *file;
    int layers, heads;
    int l, h, v, s; /* one head to spot-check */
    double score;
    int ints;
} real_file;

static const real_file real_files[] = {
    {"Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json", 32, 32, 0, 0, 1000, 6096, 336, 1},
    {"Qwen2_7B_Instruct_128k_instruct_kv_out_v32_fit_o_best_pattern.json", 28, 28, 0, 0, 1000, 6096,
     0.7636861205101013, 0},
};

static void test_minference_real_files(void **state) {
    (void)state;
    const char *sh = tu_shared_dir();
    if (!sh) skip();
    for (size_t f = 0; f < sizeof real_files / sizeof *real_files; f++) {
        const real_file *rf = &real_files[f];
        char path[1024];
        snprintf(path, sizeof path, "%s/data/minference-configs/%s", sh, rf->file);
        size_t len;
        char *text = read_all(path, &len);
        if (!text) skip();
        eng_patcfg a, b, c;
        eng_err err = {{0}};
        if (eng_patcfg_load(&a, path, &err)) fail_msg("%s", err.msg);
        assert_int_equal(a.cfg.n_layers, rf->layers);
        assert_int_equal(a.cfg.n_heads, rf->heads);
        assert_int_equal(a.scores_are_int, rf->ints);
        int vs = 0, listed = 0;
        for (int i = 0; i < rf->layers * rf->heads; i++) vs += a.cfg.heads[i].kind == ENG_PAT_VS, listed += a.listed[i];
        assert_int_equal(listed, rf->layers * rf->heads);
        assert_int_equal(vs, rf->layers * rf->heads); /* upstream rewrote every winner as VS */
        const eng_pattern *p = eng_pattern_cfg_get(&a.cfg, rf->l, rf->h);
        assert_int_equal(p->vertical, rf->v);
        assert_int_equal(p->slash, rf->s);
        assert_true(a.score[rf->l * rf->heads + rf->h] == rf->score);
        assert_int_equal(eng_patcfg_check_model(&a, rf->layers, rf->heads, &err), 0);
        assert_int_equal(eng_patcfg_check_model(&a, rf->layers - 1, rf->heads, &err), -1);
        assert_non_null(strstr(err.msg, "layer"));

        /* export: byte-identical to the published file (Python json.dumps layout) */
        char *out = eng_patcfg_minference_text(&a, &err);
        assert_non_null(out);
        assert_int_equal(strlen(out), len);
        assert_string_equal(out, text);
        /* re-import: same assignment */
        assert_int_equal(eng_patcfg_parse(&b, out, strlen(out), "export", &err), 0);
        char why[256];
        if (!eng_patcfg_same(&a, &b, why, sizeof why)) fail_msg("re-import differs: %s", why);
        /* through the native schema and back */
        char *nat = eng_patcfg_native_text(&a, &err);
        assert_non_null(nat);
        assert_int_equal(eng_patcfg_parse(&c, nat, strlen(nat), "native", &err), 0);
        if (!eng_patcfg_same(&a, &c, why, sizeof why)) fail_msg("native round trip differs: %s", why);
        char *out2 = eng_patcfg_minference_text(&c, &err);
        assert_string_equal(out2, text);
        free(out), free(nat), free(out2), free(text);
        eng_patcfg_free(&a), eng_patcfg_free(&b), eng_patcfg_free(&c);
    }
}

static void test_minference_small(void **state) {
    (void)state;
    /* every upstream pattern, a missing head (default), float and int scores, an empty layer */
    const char *js = "[{\"0\": [\"stream_llm\", 100, 800, 0.5], \"2\": [\"block_sparse\", 8, 1, 3]}, {}, "
                     "{\"1\": [\"vertical_and_slash\", 30, 800, 1e-05]}]";
    eng_patcfg a, b;
    eng_err err = {{0}};
    if (eng_patcfg_parse(&a, js, strlen(js), "small", &err)) fail_msg("%s", err.msg);
    assert_int_equal(a.cfg.n_layers, 3);
    assert_int_equal(a.cfg.n_heads, 3);
    const eng_pattern *p = eng_pattern_cfg_get(&a.cfg, 0, 0);
    assert_int_equal(p->kind, ENG_PAT_ASHAPE);
    assert_int_equal(p->n_init, 100);
    assert_int_equal(p->n_local, 800);
    p = eng_pattern_cfg_get(&a.cfg, 0, 2);
    assert_int_equal(p->kind, ENG_PAT_BS);
    assert_int_equal(p->topk, 100); /* upstream's fixed top-k */
    p = eng_pattern_cfg_get(&a.cfg, 0, 1); /* unlisted: upstream default VS (1000, 6096) */
    assert_int_equal(a.listed[1], 0);
    assert_int_equal(p->kind, ENG_PAT_VS);
    assert_int_equal(p->vertical, 1000);
    assert_int_equal(p->slash, 6096);
    assert_false(a.scores_are_int);
    char *out = eng_patcfg_minference_text(&a, &err);
    assert_string_equal(out, "[{\"0\": [\"stream_llm\", 100, 800, 0.5], \"2\": [\"block_sparse\", 8, 1, 3.0]}, {}, "
                             "{\"1\": [\"vertical_and_slash\", 30, 800, 1e-05]}]\n");
    assert_int_equal(eng_patcfg_parse(&b, out, strlen(out), "again", &err), 0);
    assert_true(eng_patcfg_same(&a, &b, NULL, 0));
    free(out);
    eng_patcfg_free(&b);
    /* a dense head has no MInference spelling */
    eng_pattern dense = eng_pattern_make(ENG_PAT_DENSE);
    eng_patcfg_set(&a, 2, 2, &dense, 0);
    assert_null(eng_patcfg_minference_text(&a, &err));
    assert_non_null(strstr(err.msg, "layer 2 head 2"));
    eng_patcfg_free(&a);
}

static void test_native_round_trip(void **state) {
    (void)state;
    eng_patcfg a, b;
    eng_err err = {{0}};
    eng_pattern def = eng_pattern_make(ENG_PAT_ASHAPE);
    def.n_init = 64, def.n_local = 512;
    assert_int_equal(eng_patcfg_init(&a, 3, 4, &def, &err), 0);
    assert_int_equal(eng_patcfg_reserve_candidates(&a, 3, &err), 0);
    eng_pattern ps[4] = {eng_pattern_make(ENG_PAT_DENSE), eng_pattern_make(ENG_PAT_VS), eng_pattern_make(ENG_PAT_BS),
                         eng_pattern_make(ENG_PAT_ASHAPE)};
    ps[1].vertical = 123, ps[1].slash = 456;
    ps[2].topk = 9;
    ps[3].n_init = 0, ps[3].n_local = 33;
    for (int l = 0; l < 3; l++)
        for (int h = 0; h < 4; h++) {
            if (l == 1 && h == 3) continue; /* stays at the default */
            eng_patcfg_set(&a, l, h, &ps[(l + h) % 4], 0.1 * l + 0.01 * h + 1.0 / 3.0);
            size_t i = (size_t)l * 4 + h;
            for (int c = 0; c < 3; c++) {
                eng_pat_eval *ev = &a.cand[i * 3 + c];
                ev->pat = ps[c + 1];
                ev->score = c * 0.25 + 1e-9 * h;
                ev->density = 0.5 / (c + 1);
                ev->recall = 0.9 + 0.01 * c;
                ev->error = 0.1 * c + 1e-7;
            }
            a.n_cand[i] = 3;
        }
    snprintf(a.objective, sizeof a.objective, "output");
    a.n_tokens = 2048;
    a.reference_len = 32768;
    snprintf(a.source, sizeof a.source, "unit test");
    char *t = eng_patcfg_native_text(&a, &err);
    assert_non_null(t);
    assert_non_null(strstr(t, "\"format\":\t\"attnscope-patterns\""));
    if (eng_patcfg_parse(&b, t, strlen(t), "native", &err)) fail_msg("%s\n%s", err.msg, t);
    char why[256];
    if (!eng_patcfg_same(&a, &b, why, sizeof why)) fail_msg("%s", why);
    assert_string_equal(b.objective, "output");
    assert_int_equal(b.n_tokens, 2048);
    assert_int_equal(b.reference_len, 32768);
    assert_string_equal(b.source, "unit test");
    assert_int_equal(b.listed[1 * 4 + 3], 0);
    assert_int_equal(b.cfg.heads[1 * 4 + 3].kind, ENG_PAT_ASHAPE);
    assert_int_equal(b.cfg.heads[1 * 4 + 3].n_local, 512);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(b.n_cand[i], a.n_cand[i]);
        for (int c = 0; c < a.n_cand[i]; c++) {
            const eng_pat_eval *x = &a.cand[i * 3 + c], *y = &b.cand[i * b.cand_cap + c];
            assert_int_equal(x->pat.kind, y->pat.kind);
            if (!(x->score == y->score && x->density == y->density && x->recall == y->recall &&
                  x->error == y->error))
                fail_msg("candidate %d of head %d: %.17g %.17g %.17g %.17g vs %.17g %.17g %.17g %.17g", c, i,
                         x->score, x->density, x->recall, x->error, y->score, y->density, y->recall, y->error);
        }
    }
    free(t);
    eng_patcfg_free(&a), eng_patcfg_free(&b);
}

typedef struct {
    const char *json, *want1, *want2;
} bad_case;

static void test_malformed(void **state) {
    (void)state;
    static const bad_case cases[] = {
        {"", "not a pattern config", NULL},
        {"[{\"0\": [\"vertical_and_slash\", 1, 2, 3]}", "not valid JSON", "line 1"},
        {"[{\"0\": [\"vertical_and_slash\", 1, 2, 3]}] x", "not valid JSON", NULL},
        {"[]", "0 layers", NULL},
        {"[{}, {}]", "no heads", NULL},
        {"[5]", "layer 0", "must be an object"},
        {"[{}, {\"x\": [\"vertical_and_slash\", 1, 2, 3]}]", "layer 1", "head key \"x\""},
        {"[{\"01\": [\"vertical_and_slash\", 1, 2, 3]}]", "head key \"01\"", NULL},
        {"[{\"3\": [\"vertical_and_slash\", 1, 2, 3], \"3\": [\"stream_llm\", 1, 2, 3]}]", "head 3 is listed twice", NULL},
        {"[{\"2\": [\"vertical_and_slash\", 1, 2]}]", "layer 0 head 2", "[pattern, vertical_size, slash_size, score]"},
        {"[{\"0\": [\"dense\", 1, 2, 3]}]", "layer 0 head 0", "pattern: \"dense\""},
        {"[{}, {\"4\": [\"vertical_and_slash\", 1.5, 2, 3]}]", "layer 1 head 4", "vertical_size"},
        {"[{\"0\": [\"vertical_and_slash\", 1, -2, 3]}]", "layer 0 head 0", "slash_size"},
        {"[{\"0\": [\"vertical_and_slash\", 1, 2, \"high\"]}]", "layer 0 head 0", "score"},
        {"[{\"0\": [\"stream_llm\", 100, 0, 1]}]", "layer 0 head 0", "local window"},
        {"{\"n_layers\": 1}", "format", NULL},
        {"{\"format\": \"attnscope-patterns\", \"version\": 9, \"n_layers\": 1, \"n_heads\": 1}", "version 9", NULL},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1}", "n_heads", "missing"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1, \"n_heads\": 1, \"extra\": 1}",
         "unknown top-level field \"extra\"", NULL},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1, \"n_heads\": 1, "
         "\"default\": {\"pattern\": \"vs\", \"vertcal\": 3}}",
         "default", "vertcal: not a parameter of pattern vs"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 2, \"n_heads\": 4, \"layers\": "
         "[{\"layer\": 1, \"heads\": [{\"head\": 3, \"pattern\": \"bs\", \"topk\": 2.5}]}]}",
         "layer 1 head 3", "topk: must be an integer"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 2, \"n_heads\": 4, \"layers\": "
         "[{\"layer\": 1, \"heads\": [{\"head\": 4, \"pattern\": \"bs\"}]}]}",
         "layer 1 heads[0]", "head: must be an integer in [0, 3]"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 2, \"n_heads\": 4, \"layers\": "
         "[{\"layer\": 0, \"heads\": [{\"head\": 1, \"pattern\": \"bs\"}, {\"head\": 1, \"pattern\": \"vs\"}]}]}",
         "layer 0 head 1", "listed twice"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 2, \"n_heads\": 4, \"layers\": "
         "[{\"layer\": 0, \"heads\": [{\"head\": 1, \"pattern\": \"lightning\"}]}]}",
         "layer 0 head 1", "unknown \"lightning\""},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 2, \"n_heads\": 4, \"layers\": "
         "[{\"layer\": 0, \"heads\": [{\"head\": 1, \"pattern\": \"ashape\", \"n_local\": 0}]}]}",
         "layer 0 head 1", "n_local: 0 outside"},
        {"{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 2, \"n_heads\": 4, \"layers\": "
         "[{\"layer\": 0, \"heads\": [{\"head\": 1, \"pattern\": \"vs\", \"candidates\": [{\"pattern\": \"bs\", "
         "\"score\": \"x\"}]}]}]}",
         "layer 0 head 1: candidates[0]", "score: must be a number"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        eng_patcfg pc;
        eng_err err = {{0}};
        int rc = eng_patcfg_parse(&pc, cases[i].json, strlen(cases[i].json), "cfg.json", &err);
        if (rc != -1) fail_msg("case %zu accepted: %s", i, cases[i].json);
        if (!strstr(err.msg, cases[i].want1) || (cases[i].want2 && !strstr(err.msg, cases[i].want2)))
            fail_msg("case %zu: message \"%s\" lacks \"%s\" / \"%s\"", i, err.msg, cases[i].want1,
                     cases[i].want2 ? cases[i].want2 : "");
        assert_null(pc.cfg.heads); /* nothing leaks, nothing half-built */
    }
    eng_patcfg pc;
    eng_err err = {{0}};
    assert_int_equal(eng_patcfg_load(&pc, "/nonexistent/cfg.json", &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/cfg.json"));
}

/* A config for fewer layers/heads than the model is fitted (listed heads kept, the rest default);
 * one naming a head the model lacks is refused. */
static void test_fit_to_model(void **st) {
    (void)st;
    const char *js = "[{\"1\": [\"stream_llm\", 16, 64, 7]}]";
    eng_patcfg pc;
    eng_err err;
    if (eng_patcfg_parse(&pc, js, strlen(js), "small", &err)) fail_msg("%s", err.msg);
    assert_int_equal(eng_patcfg_check_model(&pc, 3, 4, &err), 0);
    assert_int_equal(pc.cfg.n_layers, 3);
    assert_int_equal(pc.cfg.n_heads, 4);
    const eng_pattern *p = eng_pattern_cfg_get(&pc.cfg, 0, 1);
    assert_int_equal(p->kind, ENG_PAT_ASHAPE);
    assert_int_equal(p->n_init, 16);
    assert_int_equal(p->n_local, 64);
    assert_true(pc.listed[1] && pc.score[1] == 7.0);
    for (int i = 0; i < 12; i++)
        if (i != 1) {
            assert_false(pc.listed[i]);
            assert_int_equal(pc.cfg.heads[i].kind, pc.cfg.def.kind);
        }
    eng_patcfg_free(&pc);
    if (eng_patcfg_parse(&pc, js, strlen(js), "small", &err)) fail_msg("%s", err.msg);
    assert_int_equal(eng_patcfg_check_model(&pc, 3, 1, &err), -1); /* head 1 does not exist */
    assert_non_null(strstr(err.msg, "head 1"));
    eng_patcfg_free(&pc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minference_real_files),
        cmocka_unit_test(test_minference_small),
        cmocka_unit_test(test_native_round_trip),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_fit_to_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
