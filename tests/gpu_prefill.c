/* gpu_prefill: the CUDA backend's full prefill (kernels/krn_prefill.cu) against the CPU backend on
 * an in-memory random Llama-shaped model (head dim 64 and 128, GQA 2 and 1, odd N), dense and with
 * a block-sparse pattern on every head. Tolerances are for bf16 weights/activations vs f32: dense
 * last-logits rel-L2 < 5e-2, mean |dlogprob| < 5e-2, argmax agreement >= 90%, LSE |d| / (1 + |lse|)
 * < 5e-2; block-sparse 1e-1 / 1e-1 / 85% (each side's index comes from its own bf16 or f32 Q/K, so
 * a near-tied block may differ and the difference propagates). Also: the
 * backend's name/device and the clear refusal of a prefill that cannot fit in GPU memory. */
#include "gpu_util.h"

#include <time.h>

#include <cuda_runtime_api.h>

#include "eng_backend.h"
#include "eng_model.h"
#include "eng_pattern.h"
#include "krn_prefill.h"

static void compare_prefill(int n, int d, int H, int Hkv, const eng_pattern_cfg *pc, uint64_t seed) {
    fake_model f;
    fake_init(&f, 2, 256, 512, H, Hkv, d, 1000, seed);
    int *tok = malloc(sizeof(int) * (size_t)n);
    assert_non_null(tok);
    for (int i = 0; i < n; i++) tok[i] = (int)(tu_rand_u64(&seed) % 1000);
    eng_err err = {{0}};
    eng_backend *cpu = eng_backend_cpu_create(&err), *gpu = eng_backend_cuda_create(&err);
    if (!cpu || !gpu) fail_msg("backend: %s", err.msg);
    assert_string_equal(gpu->name, "cuda");
    assert_true(strlen(gpu->device) > 0);
    eng_prefill_opts o;
    memset(&o, 0, sizeof o);
    o.patterns = pc;
    o.keep_lse = 1;
    eng_prefill_out a, b;
    if (cpu->prefill(cpu, &f.m, tok, n, &o, &a, &err)) fail_msg("cpu prefill: %s", err.msg);
    if (gpu->prefill(gpu, &f.m, tok, n, &o, &b, &err)) fail_msg("gpu prefill: %s", err.msg);
    double rel = tu_rel_l2(b.last_logits, a.last_logits, 1000), dl = 0, lse = 0;
    int agree = 0;
    for (int i = 0; i < n; i++) agree += a.argmax[i] == b.argmax[i];
    for (int i = 0; i + 1 < n; i++) {
        if (!isfinite(b.next_logprob[i])) fail_msg("gpu next_logprob[%d] not finite", i);
        dl += fabs((double)a.next_logprob[i] - b.next_logprob[i]);
    }
    dl = n > 1 ? dl / (n - 1) : 0;
    for (size_t i = 0; i < (size_t)2 * H * n; i++) {
        double e = fabs((double)a.lse[i] - b.lse[i]) / (1.0 + fabs((double)a.lse[i]));
        lse = e > lse ? e : lse;
    }
    printf("  prefill n=%d d=%d H=%d Hkv=%d %s: logits rel-L2 %.2e, mean |dlogp| %.3f, argmax agree %d/%d, lse max rel %.3f, "
           "gpu %.3f s\n",
           n, d, H, Hkv, pc ? "bs" : "dense", rel, dl, agree, n, lse, b.seconds);
    /* Sparse heads: each side builds its index from its own Q/K (bf16 vs f32), so a near-tied block
     * can differ and the difference propagates; the looser bounds say so. */
    if (!(rel < (pc ? 1e-1 : 5e-2))) fail_msg("last logits rel-L2 %.3e", rel);
    if (!(dl < (pc ? 1e-1 : 5e-2))) fail_msg("mean |dlogprob| %.3e", dl);
    if (agree < n * (pc ? 85 : 90) / 100) fail_msg("argmax agrees on %d of %d", agree, n);
    if (!pc && !(lse < 5e-2)) fail_msg("lse max relative error %.3e", lse);
    eng_prefill_out_free(&a), eng_prefill_out_free(&b);
    cpu->destroy(cpu), gpu->destroy(gpu);
    free(tok);
    fake_free(&f);
}

static void test_prefill_dense(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    uint64_t seed = 0xabcdef12345ULL ^ (uint64_t)time(NULL);
    compare_prefill(1, 64, 4, 2, NULL, seed++);
    compare_prefill(77, 64, 4, 2, NULL, seed++);
    compare_prefill(333, 128, 4, 4, NULL, seed++);
    compare_prefill(200, 128, 4, 1, NULL, seed++);
}

static void test_prefill_bs(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    eng_pattern_cfg pc;
    memset(&pc, 0, sizeof pc);
    pc.n_layers = 2, pc.n_heads = 4;
    pc.def.kind = ENG_PAT_BS, pc.def.topk = 3;
    compare_prefill(517, 64, 4, 2, &pc, 0x777ULL ^ (uint64_t)time(NULL));
}

static void test_too_big_refused(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    fake_model f;
    fake_init(&f, 1, 64, 64, 4, 2, 64, 16, 1);
    size_t fr = 0, tot = 0;
    assert_int_equal(cudaMemGetInfo(&fr, &tot), cudaSuccess);
    f.m.cfg.vocab_size = 16;
    f.m.cfg.intermediate_size = 64;
    /* Pretend a huge model: 2^20 layers of this shape exceed any GPU; the estimate must refuse it
     * before touching the (absent) weights. */
    eng_layer_weights *many = calloc((size_t)1 << 20, sizeof *many);
    assert_non_null(many);
    free(f.m.layers);
    f.m.layers = many;
    f.m.cfg.n_layers = 1 << 20;
    f.m.cfg.hidden_size = 4096;
    f.m.cfg.intermediate_size = 14336;
    int tok[4] = {1, 2, 3, 4};
    eng_err err = {{0}};
    eng_backend *gpu = eng_backend_cuda_create(&err);
    assert_non_null(gpu);
    eng_prefill_out out;
    assert_int_equal(gpu->prefill(gpu, &f.m, tok, 4, NULL, &out, &err), -1);
    printf("  refusal: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "GiB"));
    gpu->destroy(gpu);
    fake_free(&f);
}

/* Synthetic models (krn_prefill_synthetic): the same seed gives the same logits; A-shape whose
 * window covers the whole prompt computes exactly the dense entries, so the sparse-kernel prefill
 * must match the dense one closely; every shape name resolves and an unknown one is refused by name;
 * a Llama-3-8B prefill of 4M tokens is refused with its memory estimate before any work. */
static void test_synthetic(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    eng_err err = {{0}};
    eng_config cfg;
    const char *names[] = {"llama3-8b", "llama3-70b-layer", "qwen2-7b", "tiny"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(krn_synthetic_config(names[i], &cfg, &err), 0);
        assert_true(cfg.n_heads % cfg.n_kv_heads == 0);
    }
    assert_int_equal(krn_synthetic_config("gpt5", &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "llama3-8b"));
    assert_int_equal(krn_synthetic_config("tiny", &cfg, &err), 0);
    const int n = 333;
    int tok[333];
    uint64_t seed = 0x1234567ULL ^ (uint64_t)time(NULL);
    for (int i = 0; i < n; i++) tok[i] = (int)((tu_randf(&seed) * 0.5f + 0.5f) * (cfg.vocab_size - 1));
    cudaStream_t st;
    assert_int_equal(cudaStreamCreate(&st), cudaSuccess);
    eng_prefill_out a, b, c;
    double setup = -1;
    if (krn_prefill_synthetic(0, st, &cfg, 99, tok, n, NULL, &a, &setup, &err)) fail_msg("%s", err.msg);
    assert_true(setup >= 0 && setup <= a.seconds);
    if (krn_prefill_synthetic(0, st, &cfg, 99, tok, n, NULL, &b, NULL, &err)) fail_msg("%s", err.msg);
    for (int i = 0; i < cfg.vocab_size; i++) {
        if (!isfinite(a.last_logits[i])) fail_msg("logit %d not finite", i);
        assert_true(a.last_logits[i] == b.last_logits[i]);
    }
    eng_pattern_cfg pc;
    memset(&pc, 0, sizeof pc);
    pc.n_layers = cfg.n_layers, pc.n_heads = cfg.n_heads;
    pc.def.kind = ENG_PAT_ASHAPE, pc.def.n_init = 64, pc.def.n_local = 4096;
    eng_prefill_opts o;
    memset(&o, 0, sizeof o);
    o.patterns = &pc;
    if (krn_prefill_synthetic(0, st, &cfg, 99, tok, n, &o, &c, NULL, &err)) fail_msg("%s", err.msg);
    double rel = tu_rel_l2(c.last_logits, a.last_logits, (size_t)cfg.vocab_size);
    int agree = 0;
    for (int i = 0; i < n; i++) agree += a.argmax[i] == c.argmax[i];
    printf("  synthetic tiny n=%d: A-shape(64, 4096) vs dense last-logits rel-L2 %.2e, argmax agreement %d/%d\n", n,
           rel, agree, n);
    assert_true(rel < 2e-2);
    assert_true(agree >= n * 9 / 10);
    /* index density per layer: none without patterns; 1 where the window covers every key; with
     * A-shape(64, 128) exactly the kept share: query q keeps k < 64 or q - k < 128 */
    assert_null(a.density);
    assert_non_null(c.density);
    for (int l = 0; l < cfg.n_layers; l++) assert_true(fabs(c.density[l] - 1.0) < 1e-12);
    eng_prefill_out_free(&c);
    pc.def.n_local = 128;
    if (krn_prefill_synthetic(0, st, &cfg, 99, tok, n, &o, &c, NULL, &err)) fail_msg("%s", err.msg);
    double kept = 0;
    for (int q = 0; q < n; q++) kept += (q + 1) - (q - 128 - 64 + 1 > 0 ? q - 128 - 64 + 1 : 0);
    const double want = kept / ((double)n * (n + 1) / 2);
    printf("  synthetic tiny n=%d: A-shape(64, 128) index density %.6f (layer 0), exact %.6f\n", n, c.density[0], want);
    for (int l = 0; l < cfg.n_layers; l++) assert_true(fabs(c.density[l] - want) < 1e-9);
    eng_prefill_out_free(&a), eng_prefill_out_free(&b), eng_prefill_out_free(&c);
    /* too big: refused with the estimate, quickly */
    assert_int_equal(krn_synthetic_config("llama3-8b", &cfg, &err), 0);
    const int big = 1 << 22;
    int *bt = calloc((size_t)big, sizeof *bt);
    assert_non_null(bt);
    double need = 0, fr = 0;
    assert_int_equal(krn_prefill_estimate(0, &cfg, big, NULL, 0, &need, &fr, &err), 0);
    assert_true(need > fr);
    assert_int_equal(krn_prefill_synthetic(0, st, &cfg, 5, bt, big, NULL, &a, NULL, &err), -1);
    printf("  refusal: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "needs about"));
    free(bt);
    cudaStreamDestroy(st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_dense),
        cmocka_unit_test(test_prefill_bs),
        cmocka_unit_test(test_too_big_refused),
        cmocka_unit_test(test_synthetic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
