/* test_decode: the KV-cache decoder (engine/eng_decode.c) against the prefill: the logits of each
 * decode step must equal the last logits of a prefill over the longer prompt, on every fixture
 * model (f32, bf16 tied, Qwen2 biases, llama3 RoPE) and the shipped sample; greedy generation on the
 * sample model answers a passkey; bad use fails with a message. */
#include "test_util.h"

#include "eng_backend.h"
#include "eng_decode.h"
#include "eng_model.h"

#define SAMPLE "samples/models/byte-llama-11m"

static eng_model *load(const char *dir) {
    eng_model *m = NULL;
    eng_err err;
    if (eng_model_load(&m, dir, &err)) fail_msg("%s: %s", dir, err.msg);
    return m;
}

/* Prefill n tokens, decode `steps` more (teacher-forced), compare each step's logits with the
 * prefill of the longer prompt. */
static void check_model(const char *dir, int n, int steps, double tol) {
    eng_model *m = load(dir);
    eng_err err;
    eng_backend *be = eng_backend_cpu_create(&err);
    assert_non_null(be);
    const int V = m->cfg.vocab_size, total = n + steps;
    int *tok = malloc(sizeof(int) * (size_t)total);
    uint64_t s = 99 + (uint64_t)n;
    for (int i = 0; i < total; i++) tok[i] = (int)(tu_rand_u64(&s) % 256);
    eng_prefill_opts po = {0};
    po.keep_qkv = 1;
    eng_prefill_out pre;
    assert_int_equal(be->prefill(be, m, tok, n, &po, &pre, &err), 0);
    eng_decoder *d = NULL;
    assert_int_equal(eng_decoder_create(&d, m, &pre, steps, &err), 0);
    eng_prefill_out_free(&pre);
    float *lg = malloc(sizeof(float) * (size_t)V);
    for (int k = 0; k < steps; k++) {
        assert_int_equal(eng_decoder_len(d), n + k);
        assert_int_equal(eng_decoder_step(d, tok[n + k], lg, &err), 0);
        eng_prefill_out ref;
        assert_int_equal(be->prefill(be, m, tok, n + k + 1, NULL, &ref, &err), 0);
        double e = tu_rel_l2(lg, ref.last_logits, (size_t)V);
        if (!(e < tol)) fail_msg("%s: step %d: logits rel err %.3g >= %.3g", dir, k, e, tol);
        assert_int_equal(eng_decode_argmax(lg, V), eng_decode_argmax(ref.last_logits, V));
        eng_prefill_out_free(&ref);
    }
    /* the cache is full now */
    assert_int_equal(eng_decoder_step(d, 1, lg, &err), -1);
    assert_non_null(strstr(err.msg, "full"));
    free(lg);
    free(tok);
    eng_decoder_free(d);
    be->destroy(be);
    eng_model_free(m);
}

static void test_decode_matches_prefill_f32(void **state) {
    (void)state;
    check_model("tests/fixtures/tiny-llama", 37, 4, 1e-5);
}

static void test_decode_matches_prefill_bf16_tied(void **state) {
    (void)state;
    check_model("tests/fixtures/tiny-llama-bf16-sharded", 65, 3, 1e-5);
}

static void test_decode_matches_prefill_qwen2_bias(void **state) {
    (void)state;
    check_model("tests/fixtures/tiny-qwen2", 20, 3, 1e-5);
}

static void test_decode_matches_prefill_llama3_rope(void **state) {
    (void)state;
    check_model("tests/fixtures/tiny-llama3-rope", 130, 2, 1e-5);
}

static void test_decode_matches_prefill_sample(void **state) {
    (void)state;
    check_model(SAMPLE, 200, 3, 1e-4);
}

static void test_greedy_passkey_sample(void **state) {
    (void)state;
    eng_model *m = load(SAMPLE);
    eng_err err;
    eng_backend *be = eng_backend_cpu_create(&err);
    const char *text = "The grass is green. The sky is blue. The pass key is 48213. Remember it. 48213 is the pass key. "
                       "The sun is yellow. Here we go. There and back again. The grass is green. The sky is blue.\n"
                       "What is the pass key? The pass key is";
    const int n = (int)strlen(text) + 1;
    int *tok = malloc(sizeof(int) * (size_t)n);
    tok[0] = m->cfg.bos_token_id;
    for (int i = 1; i < n; i++) tok[i] = (unsigned char)text[i - 1];
    eng_generation g;
    assert_int_equal(eng_decode_greedy(be, m, tok, n, NULL, 7, -1, &g, &err), 0);
    assert_int_equal(g.n, 7);
    char out[8];
    for (int i = 0; i < 6; i++) out[i] = (char)g.ids[i];
    out[6] = 0;
    assert_string_equal(out, " 48213");
    assert_true(g.prefill_s > 0);
    eng_generation_free(&g);
    /* zero new tokens: only the prefill runs */
    assert_int_equal(eng_decode_greedy(be, m, tok, n, NULL, 0, -1, &g, &err), 0);
    assert_int_equal(g.n, 0);
    eng_generation_free(&g);
    /* the stop token ends generation and is not returned */
    assert_int_equal(eng_decode_greedy(be, m, tok, n, NULL, 7, ' ', &g, &err), 0);
    assert_int_equal(g.n, 0);
    assert_int_equal(g.stopped, 1);
    eng_generation_free(&g);
    free(tok);
    be->destroy(be);
    eng_model_free(m);
}

static void test_decode_errors(void **state) {
    (void)state;
    eng_model *m = load("tests/fixtures/tiny-llama");
    eng_err err;
    eng_backend *be = eng_backend_cpu_create(&err);
    int tok[5] = {1, 2, 3, 4, 5};
    eng_prefill_out pre;
    assert_int_equal(be->prefill(be, m, tok, 5, NULL, &pre, &err), 0);
    eng_decoder *d = NULL;
    assert_int_equal(eng_decoder_create(&d, m, &pre, 4, &err), -1); /* no keep_qkv */
    assert_null(d);
    assert_non_null(strstr(err.msg, "keep_qkv"));
    eng_prefill_out_free(&pre);
    eng_prefill_opts po = {0};
    po.keep_qkv = 1;
    assert_int_equal(be->prefill(be, m, tok, 5, &po, &pre, &err), 0);
    assert_int_equal(eng_decoder_create(&d, m, &pre, -1, &err), -1);
    assert_int_equal(eng_decoder_create(&d, m, &pre, 2, &err), 0);
    float lg[272];
    assert_int_equal(eng_decoder_step(d, 272, lg, &err), -1);
    assert_non_null(strstr(err.msg, "vocabulary"));
    assert_int_equal(eng_decoder_step(d, -1, lg, &err), -1);
    assert_int_equal(eng_decoder_len(d), 5);
    eng_decoder_free(d);
    eng_prefill_out_free(&pre);
    be->destroy(be);
    eng_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_matches_prefill_f32),
        cmocka_unit_test(test_decode_matches_prefill_bf16_tied),
        cmocka_unit_test(test_decode_matches_prefill_qwen2_bias),
        cmocka_unit_test(test_decode_matches_prefill_llama3_rope),
        cmocka_unit_test(test_decode_matches_prefill_sample),
        cmocka_unit_test(test_greedy_passkey_sample),
        cmocka_unit_test(test_decode_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
