/* test_eval: the accuracy benchmarks (engine/eng_eval.c) and `attnscope eval`: passkey prompts byte
 * for byte as tools/train_sample.py builds them (samples/prompts/passkey_4k.txt), answer checking,
 * passkey runs on the shipped sample model (dense retrieves, a tiny A-shape window does not),
 * perplexity windows, per-length budget scaling, length parsing, and the CLI's output and errors. */
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

#include <cjson/cJSON.h>

#include "eng_backend.h"
#include "eng_eval.h"
#include "eng_model.h"
#include "eng_pattern.h"
#include "eng_tok.h"

#define SAMPLE "samples/models/byte-llama-11m"

typedef struct {
    eng_model *m;
    eng_tokenizer *tok;
    eng_backend *be;
} fx;

static int setup(void **state) {
    fx *f = calloc(1, sizeof *f);
    eng_err err;
    if (eng_model_load(&f->m, SAMPLE, &err)) fail_msg("%s", err.msg);
    if (!(f->tok = eng_tok_load(SAMPLE, &f->m->cfg, &err))) fail_msg("%s", err.msg);
    if (!(f->be = eng_backend_cpu_create(&err))) fail_msg("%s", err.msg);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx *f = *state;
    f->be->destroy(f->be);
    eng_tok_free(f->tok);
    eng_model_free(f->m);
    free(f);
    return 0;
}

static char *read_all(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, fp);
    b[*len] = 0;
    fclose(fp);
    return b;
}

static void test_parse_len(void **state) {
    (void)state;
    int v = 0;
    assert_int_equal(eng_eval_parse_len("4k", &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(eng_eval_parse_len("1500", &v), 0);
    assert_int_equal(v, 1500);
    assert_int_equal(eng_eval_parse_len("1M", &v), 0);
    assert_int_equal(v, 1 << 20);
    assert_int_equal(eng_eval_parse_len("", &v), -1);
    assert_int_equal(eng_eval_parse_len("0", &v), -1);
    assert_int_equal(eng_eval_parse_len("4kb", &v), -1);
    assert_int_equal(eng_eval_parse_len("-4", &v), -1);
    assert_int_equal(eng_eval_parse_len("99999999999", &v), -1);
    assert_int_equal(eng_eval_parse_len("1024m", &v), -1); /* 2^30: too large */
}

/* The shipped prompt was written by the training script's construction (length 4096, depth 50%,
 * trial 0, key 71432, haystack.txt); the engine must build the same tokens. */
static void test_prompt_matches_training_script(void **state) {
    fx *f = *state;
    size_t hl = 0, pl = 0;
    char *hay = read_all("samples/prompts/haystack.txt", &hl);
    char *want = read_all("samples/prompts/passkey_4k.txt", &pl);
    assert_non_null(hay);
    assert_non_null(want);
    eng_err err;
    eng_passkey *pk = NULL;
    assert_int_equal(eng_passkey_new(&pk, f->tok, hay, hl, &err), 0);
    int *ids = NULL, n = 0;
    assert_int_equal(eng_passkey_prompt(pk, 4096, 50, 0, 71432, &ids, &n, &err), 0);
    assert_int_equal(n, 4096);
    assert_int_equal(ids[0], f->m->cfg.bos_token_id);
    assert_int_equal((size_t)n - 1, pl);
    for (int i = 1; i < n; i++)
        if (ids[i] != (unsigned char)want[i - 1]) fail_msg("token %d: %d, want %d", i, ids[i], (unsigned char)want[i - 1]);
    /* the answer's leading space ends the prompt; 5 digits + 1 more are generated */
    assert_int_equal(ids[n - 1], ' ');
    assert_int_equal(eng_passkey_answer_tokens(pk, 71432), 6);
    free(ids);
    eng_passkey_free(pk);
    free(hay);
    free(want);
}

static void test_prompt_depths_and_errors(void **state) {
    fx *f = *state;
    eng_err err;
    eng_passkey *pk = NULL;
    assert_int_equal(eng_passkey_new(&pk, f->tok, NULL, 0, &err), 0); /* built-in filler */
    const char *needle = " The pass key is 12345. Remember it. 12345 is the pass key. ";
    const char *q = "\nWhat is the pass key? The pass key is ";
    const int nl = (int)strlen(needle), ql = (int)strlen(q);
    for (int depth = 0; depth <= 100; depth += 25) {
        int *ids = NULL, n = 0;
        assert_int_equal(eng_passkey_prompt(pk, 700, depth, 3, 12345, &ids, &n, &err), 0);
        assert_int_equal(n, 700);
        char *s = malloc((size_t)n);
        for (int i = 1; i < n; i++) s[i - 1] = (char)ids[i];
        s[n - 1] = 0;
        char *at = strstr(s, needle);
        assert_non_null(at);
        assert_string_equal(s + n - 1 - ql, q);
        const int pos = (int)(at - s), hay = n - 1 - nl - ql;
        if (depth == 0) assert_int_equal(pos, 0);
        if (depth == 100) assert_int_equal(pos, hay);
        if (depth == 50) {
            assert_true(pos >= hay / 2 && pos <= hay / 2 + 40);
            assert_int_equal(s[pos - 1], ' '); /* after a space: no word is split */
        }
        free(s);
        free(ids);
    }
    int *ids = NULL, n = 0;
    assert_int_equal(eng_passkey_prompt(pk, 60, 50, 0, 12345, &ids, &n, &err), -1);
    assert_non_null(strstr(err.msg, "too short"));
    assert_int_equal(eng_passkey_prompt(pk, 700, 101, 0, 12345, &ids, &n, &err), -1);
    assert_non_null(strstr(err.msg, "depth"));
    eng_passkey_free(pk);
}

static void test_keys_and_answers(void **state) {
    fx *f = *state;
    int k = eng_passkey_key(1, 4096, 50, 0);
    assert_int_equal(k, eng_passkey_key(1, 4096, 50, 0));
    int diff = 0;
    for (int t = 0; t < 50; t++) {
        int v = eng_passkey_key(7, 1024, 25, t);
        assert_true(v >= 10000 && v <= 99999);
        diff += v != eng_passkey_key(8, 1024, 25, t);
    }
    assert_true(diff > 45);
    eng_err err;
    eng_passkey *pk = NULL;
    assert_int_equal(eng_passkey_new(&pk, f->tok, NULL, 0, &err), 0);
    int g1[] = {'7', '1', '4', '3', '2', '.'}, g2[] = {' ', '7', '1', '4', '3', '2'}, g3[] = {'7', '1', '4', '3', '2', '1'},
        g4[] = {'7', '1', '4', '3', '.', '2'};
    assert_int_equal(eng_passkey_correct(pk, g1, 6, 71432), 1);
    assert_int_equal(eng_passkey_correct(pk, g2, 6, 71432), 1);
    assert_int_equal(eng_passkey_correct(pk, g3, 6, 71432), 0);
    assert_int_equal(eng_passkey_correct(pk, g4, 6, 71432), 0);
    assert_int_equal(eng_passkey_correct(pk, g1, 0, 71432), 0);
    eng_passkey_free(pk);
}

static void test_passkey_run_dense_vs_tiny_window(void **state) {
    fx *f = *state;
    eng_err err;
    size_t hl = 0;
    char *hay = read_all("samples/prompts/haystack.txt", &hl);
    eng_passkey *pk = NULL;
    assert_int_equal(eng_passkey_new(&pk, f->tok, hay, hl, &err), 0);
    eng_passkey_cell c;
    assert_int_equal(eng_passkey_run(f->be, f->m, pk, NULL, 400, 50, 3, 1, &c, &err), 0);
    assert_int_equal(c.trials, 3);
    assert_int_equal(c.correct, 3);
    assert_true(c.prefill_s > 0);
    assert_true(strlen(c.sample) >= 5);
    /* 4 sinks + 16 local tokens cannot see a needle ~200 tokens back */
    eng_pattern_cfg cfg = {.n_layers = f->m->cfg.n_layers, .n_heads = f->m->cfg.n_heads};
    cfg.def = eng_pattern_make(ENG_PAT_ASHAPE);
    cfg.def.n_init = 4, cfg.def.n_local = 16;
    assert_int_equal(eng_passkey_run(f->be, f->m, pk, &cfg, 400, 50, 3, 1, &c, &err), 0);
    assert_int_equal(c.trials, 3);
    assert_true(c.correct < 3);
    assert_int_equal(eng_passkey_run(f->be, f->m, pk, NULL, 400, 50, 0, 1, &c, &err), -1);
    eng_passkey_free(pk);
    free(hay);
}

static void test_ppl_windows(void **state) {
    fx *f = *state;
    eng_err err;
    size_t hl = 0;
    char *hay = read_all("samples/prompts/haystack.txt", &hl);
    int *ids = NULL, n = 0;
    assert_int_equal(eng_tok_encode(f->tok, hay, 3000, 0, &ids, &n, &err), 0);
    assert_int_equal(n, 3000);
    eng_ppl_cell dense, narrow;
    assert_int_equal(eng_ppl_run(f->be, f->m, ids, n, 256, NULL, 512, 3, &dense, &err), 0);
    assert_int_equal(dense.windows, 3);
    assert_int_equal(dense.predicted, 3 * 511);
    assert_true(dense.ppl > 1.0 && dense.ppl < 10.0); /* English text, ~1 bit per byte */
    assert_true(fabs(dense.ppl - exp(dense.nll)) < 1e-9);
    eng_pattern_cfg cfg = {.n_layers = f->m->cfg.n_layers, .n_heads = f->m->cfg.n_heads};
    cfg.def = eng_pattern_make(ENG_PAT_ASHAPE);
    cfg.def.n_init = 1, cfg.def.n_local = 4;
    assert_int_equal(eng_ppl_run(f->be, f->m, ids, n, 256, &cfg, 512, 3, &narrow, &err), 0);
    assert_true(narrow.ppl > dense.ppl * 1.2);
    /* all windows that fit: 3000 / 1023 = 2 */
    assert_int_equal(eng_ppl_run(f->be, f->m, ids, n, 256, NULL, 1024, 0, &dense, &err), 0);
    assert_int_equal(dense.windows, 2);
    assert_int_equal(eng_ppl_run(f->be, f->m, ids, n, 256, NULL, 4096, 0, &dense, &err), -1);
    assert_non_null(strstr(err.msg, "fewer than one window"));
    assert_int_equal(eng_ppl_run(f->be, f->m, ids, n, 256, NULL, 2, 0, &dense, &err), -1);
    free(ids);
    free(hay);
}

static void test_cfg_scaled(void **state) {
    (void)state;
    eng_err err;
    eng_pattern heads[4];
    for (int i = 0; i < 4; i++) heads[i] = eng_pattern_make(i % 2 ? ENG_PAT_VS : ENG_PAT_BS);
    eng_pattern_cfg src = {.n_layers = 2, .n_heads = 2, .def = eng_pattern_make(ENG_PAT_VS), .heads = heads}, dst;
    assert_int_equal(eng_eval_cfg_scaled(&src, 4096, 32768, &dst, &err), 0);
    assert_int_equal(dst.def.vertical, 125);
    assert_int_equal(dst.def.slash, 762);
    assert_int_equal(dst.heads[1].vertical, 125);
    assert_int_equal(dst.heads[0].topk, 13); /* 100 / 8 = 12.5, rounded */
    assert_int_equal(heads[1].vertical, 1000); /* the source is untouched */
    eng_eval_cfg_free(&dst);
    assert_null(dst.heads);
    assert_int_equal(eng_eval_cfg_scaled(&src, 4096, 0, &dst, &err), 0); /* as written */
    assert_int_equal(dst.heads[1].slash, 6096);
    eng_eval_cfg_free(&dst);
    src.heads = NULL;
    assert_int_equal(eng_eval_cfg_scaled(&src, 65536, 32768, &dst, &err), 0); /* longer: unchanged */
    assert_null(dst.heads);
    assert_int_equal(dst.def.vertical, 1000);
}

static int run_cli(const char *args, char *buf, size_t cap) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", tu_bin(), args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(buf, 1, cap - 1, p);
    buf[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_eval(void **state) {
    (void)state;
    if (access(tu_bin(), X_OK) != 0) skip();
    static char out[65536];
    assert_int_equal(run_cli("eval", out, sizeof out), 2);
    assert_non_null(strstr(out, "usage: attnscope eval passkey"));
    assert_int_equal(run_cli("eval needle", out, sizeof out), 2);
    assert_non_null(strstr(out, "unknown benchmark 'needle'"));
    assert_int_equal(run_cli("eval passkey --lengths 1k", out, sizeof out), 2);
    assert_non_null(strstr(out, "--model DIR is required"));
    assert_int_equal(run_cli("eval passkey --model " SAMPLE " --lengths 1k,,2k", out, sizeof out), 2);
    assert_non_null(strstr(out, "--lengths: bad list"));
    assert_int_equal(run_cli("eval passkey --model " SAMPLE " --lengths 4q", out, sizeof out), 2);
    assert_non_null(strstr(out, "bad length '4q'"));
    assert_int_equal(run_cli("eval passkey --model " SAMPLE " --depths 0,120", out, sizeof out), 2);
    assert_int_equal(run_cli("eval passkey --model " SAMPLE " --patterns dense,nope", out, sizeof out), 2);
    assert_non_null(strstr(out, "'nope' is neither a pattern"));
    assert_int_equal(run_cli("eval passkey --model " SAMPLE " --patterns tests/test_eval.c", out, sizeof out), 2);
    assert_non_null(strstr(out, "--patterns tests/test_eval.c"));
    assert_int_equal(run_cli("eval passkey --model " SAMPLE " --text x", out, sizeof out), 2);
    assert_int_equal(run_cli("eval ppl --model " SAMPLE, out, sizeof out), 2);
    assert_non_null(strstr(out, "--text FILE is required"));
    assert_int_equal(run_cli("eval ppl --model " SAMPLE " --text samples/prompts/short.txt --lengths 4k --backend cpu",
                             out, sizeof out), 1);
    assert_non_null(strstr(out, "fewer than one window"));

    char dir[] = "/tmp/attnscope-test-eval-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char a[1024], path[1200];
    snprintf(a, sizeof a,
             "eval passkey --model " SAMPLE " --lengths 300 --depths 0,100 --trials 1 --patterns dense,ashape "
             "--backend cpu --ref-len 1200 --json %s/pk.json --png-dir %s/png",
             dir, dir);
    assert_int_equal(run_cli(a, out, sizeof out), 0);
    assert_non_null(strstr(out, "accuracy (%, over 2 depths x 1 trials)"));
    assert_non_null(strstr(out, "ashape(n_init=256,n_local=1024)")); /* 1024+4096 scaled by 300/1200 */
    snprintf(path, sizeof path, "%s/png/passkey_dense.png", dir);
    assert_int_equal(access(path, R_OK), 0);
    snprintf(path, sizeof path, "%s/png/passkey_ashape.png", dir);
    assert_int_equal(access(path, R_OK), 0);
    snprintf(path, sizeof path, "%s/pk.json", dir);
    size_t len = 0;
    char *js = read_all(path, &len);
    assert_non_null(js);
    cJSON *r = cJSON_Parse(js);
    assert_non_null(r);
    cJSON *pa = cJSON_GetObjectItem(r, "patterns");
    assert_int_equal(cJSON_GetArraySize(pa), 2);
    cJSON *d0 = cJSON_GetArrayItem(pa, 0);
    assert_string_equal(cJSON_GetObjectItem(d0, "name")->valuestring, "dense");
    assert_true(cJSON_GetObjectItem(d0, "accuracy")->valuedouble == 1.0);
    cJSON_Delete(r);
    free(js);

    snprintf(a, sizeof a,
             "eval ppl --model " SAMPLE " --text samples/prompts/haystack.txt --lengths 256,512 --windows 1 "
             "--patterns dense --backend cpu --json %s/ppl.json",
             dir);
    assert_int_equal(run_cli(a, out, sizeof out), 0);
    assert_non_null(strstr(out, "perplexity (windows scored)"));
    snprintf(path, sizeof path, "%s/ppl.json", dir);
    js = read_all(path, &len);
    assert_non_null(js);
    r = cJSON_Parse(js);
    cJSON *l = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "patterns"), 0), "lengths"), 1);
    assert_int_equal(cJSON_GetObjectItem(l, "length")->valueint, 512);
    assert_true(cJSON_GetObjectItem(l, "ppl")->valuedouble > 1.0);
    cJSON_Delete(r);
    free(js);
    snprintf(a, sizeof a, "rm -rf %s", dir);
    assert_int_equal(system(a), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_len),
        cmocka_unit_test_setup_teardown(test_prompt_matches_training_script, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prompt_depths_and_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys_and_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_passkey_run_dense_vs_tiny_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ppl_windows, setup, teardown),
        cmocka_unit_test(test_cfg_scaled),
        cmocka_unit_test(test_cli_eval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
