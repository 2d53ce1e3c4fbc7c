/* test_transform: 2:4 pruning keeps exactly the 2 largest |w| of every 4 input weights, INT8
 * per-channel quantisation stays within half a step, and a transformed tiny model runs through the
 * CPU prefill with the source model untouched (fixture tests/fixtures/tiny-llama). */
#include "test_util.h"

#include "eng_backend.h"
#include "eng_metrics.h"
#include "eng_model.h"
#include "eng_transform.h"

static void test_prune24(void **state) {
    (void)state;
    uint64_t seed = 0x2424;
    const int rows = 7, cols = 23; /* a partial last group of 3 */
    float *w = malloc(sizeof(float) * rows * cols), *o = malloc(sizeof(float) * rows * cols);
    tu_fill(w, (size_t)rows * cols, &seed, 1);
    w[5] = w[6]; /* a tie inside a group (ties: the lower column stays) */
    w[4] = -w[6];
    w[7] = 0.5f * w[6];
    memcpy(o, w, sizeof(float) * rows * cols);
    eng_transform_prune24(w, rows, cols);
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < cols; g += 4) {
            int c = cols - g < 4 ? cols - g : 4, kept = 0;
            for (int i = 0; i < c; i++) {
                const float x = o[r * cols + g + i], y = w[r * cols + g + i];
                int better = 0;
                for (int j = 0; j < c; j++) {
                    float a = fabsf(o[r * cols + g + j]);
                    better += a > fabsf(x) || (a == fabsf(x) && j < i);
                }
                if (c <= 2 || better < 2) {
                    assert_true(y == x);
                    kept++;
                } else {
                    assert_true(y == 0.0f);
                }
            }
            assert_int_equal(kept, c < 2 ? c : 2);
        }
    assert_true(w[4] != 0 && w[5] != 0 && w[6] == 0); /* |w4| == |w5| == |w6|: the lower two */
    free(w), free(o);
}

static void test_int8(void **state) {
    (void)state;
    uint64_t seed = 0x1e8;
    const int rows = 9, cols = 50;
    float *w = malloc(sizeof(float) * rows * cols), *o = malloc(sizeof(float) * rows * cols), sc[9];
    tu_fill(w, (size_t)rows * cols, &seed, 3);
    for (int c = 0; c < cols; c++) w[2 * cols + c] = 0; /* an all-zero row */
    w[3 * cols + 7] = 1e-30f;                            /* a tiny entry */
    memcpy(o, w, sizeof(float) * rows * cols);
    eng_transform_int8(w, rows, cols, sc);
    for (int r = 0; r < rows; r++) {
        float mx = 0;
        for (int c = 0; c < cols; c++) mx = fabsf(o[r * cols + c]) > mx ? fabsf(o[r * cols + c]) : mx;
        assert_true(sc[r] == mx / 127.0f);
        for (int c = 0; c < cols; c++) {
            float x = o[r * cols + c], y = w[r * cols + c];
            if (sc[r] == 0) {
                assert_true(y == 0);
                continue;
            }
            float qv = y / sc[r];
            assert_true(fabsf(qv - rintf(qv)) < 1e-3f && fabsf(qv) <= 127.0f + 1e-3f); /* on the INT8 grid */
            assert_true(fabsf(x - y) <= 0.5f * sc[r] * (1 + 1e-5f));                 /* half a step */
        }
    }
    unsigned f;
    eng_err err = {{0}};
    assert_int_equal(eng_transform_parse("24+int8", &f, &err), 0);
    assert_int_equal(f, ENG_XF_24 | ENG_XF_INT8);
    assert_int_equal(eng_transform_parse("2:4", &f, &err), 0);
    assert_int_equal(f, ENG_XF_24);
    assert_int_not_equal(eng_transform_parse("int4", &f, &err), 0);
    assert_non_null(strstr(err.msg, "int4"));
    free(w), free(o);
}

static void test_model(void **state) {
    (void)state;
    eng_model *m = NULL;
    eng_err err = {{0}};
    if (eng_model_load(&m, "tests/fixtures/tiny-llama", &err)) fail_msg("%s", err.msg);
    const eng_tensor before = m->layers[0].wq;
    float *w0 = malloc(sizeof(float) * (size_t)before.numel);
    eng_tensor_to_f32(&before, 0, before.numel, w0);
    eng_backend *be = eng_backend_cpu_create(&err);
    assert_non_null(be);
    int toks[40];
    for (int i = 0; i < 40; i++) toks[i] = (i * 37 + 11) % m->cfg.vocab_size;
    eng_prefill_opts po = {0};
    eng_prefill_out base, out;
    assert_int_equal(be->prefill(be, m, toks, 40, &po, &base, &err), 0);
    const unsigned fl[3] = {ENG_XF_24, ENG_XF_INT8, ENG_XF_24 | ENG_XF_INT8};
    double kl[3];
    for (int t = 0; t < 3; t++) {
        eng_transformed x;
        if (eng_transform_model(m, fl[t], &x, &err)) fail_msg("%s", err.msg);
        assert_true(x.model.layers[0].wq.dtype == ENG_DT_F32 && x.model.layers[0].wq.data != before.data);
        assert_true(x.model.embed.data == m->embed.data); /* untouched tensors are shared */
        if (fl[t] & ENG_XF_24) /* every input dim here is a multiple of 4: exactly half zero */
            assert_true(fabs((double)x.n_zero / x.n_weights - 0.5) < 1e-3);
        assert_true(x.rel_err > 0 && x.rel_err < (fl[t] & ENG_XF_24 ? 0.9 : 0.02));
        assert_int_equal(be->prefill(be, &x.model, toks, 40, &po, &out, &err), 0);
        eng_e2e_metrics em;
        assert_int_equal(eng_metrics_e2e(&base, &out, &em, &err), 0);
        kl[t] = em.kl_last;
        assert_true(isfinite(em.kl_last) && em.kl_last >= 0);
        eng_prefill_out_free(&out);
        eng_transform_free(&x);
    }
    assert_true(kl[1] < kl[0]); /* INT8 moves the logits far less than 2:4 */
    /* The source model is unchanged. */
    float *w1 = malloc(sizeof(float) * (size_t)before.numel);
    eng_tensor_to_f32(&m->layers[0].wq, 0, before.numel, w1);
    assert_memory_equal(w0, w1, sizeof(float) * (size_t)before.numel);
    assert_int_not_equal(eng_transform_model(m, 0, &(eng_transformed){0}, &err), 0);
    eng_prefill_out_free(&base);
    be->destroy(be);
    eng_model_free(m);
    free(w0), free(w1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prune24),
        cmocka_unit_test(test_int8),
        cmocka_unit_test(test_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
