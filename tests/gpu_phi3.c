/* gpu_phi3: the CUDA prefill (kernels/krn_prefill.cu) on a Phi-3-shaped model against the CPU
 * backend: config parsed from Phi-3 JSON (longrope short/long factors, original context 32), fused
 * qkv_proj / gate_up_proj held as row-slice views as the loader makes them, head dim 64. A 24-token
 * prompt uses the short factors, a 100-token one the long factors; longrope's cos/sin factor is
 * folded into the GPU's q/k weights, so the GPU must land near the CPU with the factor and clearly
 * farther from a CPU run without it. Tolerances as tests/gpu_prefill.c (bf16 vs f32). */
#include "gpu_util.h"

#include <cuda_runtime_api.h>

#include "eng_backend.h"
#include "eng_cpu.h"
#include "eng_model.h"

#define C_ 256
#define F_ 512
#define H_ 4
#define HKV_ 2
#define D_ 64
#define V_ 1000
#define L_ 2

typedef struct {
    eng_model m;
    float *pool;
} phi3_model;

static void slice(eng_tensor *out, const eng_tensor *f, int64_t r0, int64_t rows) {
    *out = *f;
    out->shape[0] = rows;
    out->numel = rows * f->shape[1];
    out->data = (const float *)f->data + r0 * f->shape[1];
}

static void phi3_init(phi3_model *f, uint64_t seed) {
    memset(f, 0, sizeof *f);
    char js[4096];
    int o = snprintf(js, sizeof js,
                     "{\"architectures\": [\"Phi3ForCausalLM\"], \"vocab_size\": %d, \"hidden_size\": %d, "
                     "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
                     "\"num_key_value_heads\": %d, \"max_position_embeddings\": 4096, "
                     "\"original_max_position_embeddings\": 32, \"rope_scaling\": {\"type\": \"longrope\", "
                     "\"short_factor\": [",
                     V_, C_, F_, L_, H_, HKV_);
    for (int i = 0; i < D_ / 2; i++) o += snprintf(js + o, sizeof js - (size_t)o, "%s%g", i ? "," : "", 1.0 + 0.01 * i);
    o += snprintf(js + o, sizeof js - (size_t)o, "], \"long_factor\": [");
    for (int i = 0; i < D_ / 2; i++)
        o += snprintf(js + o, sizeof js - (size_t)o, "%s%g", i ? "," : "", 1.0 + 0.05 * i * i);
    snprintf(js + o, sizeof js - (size_t)o, "]}}");
    eng_err err = {{0}};
    if (eng_config_parse(&f->m.cfg, js, strlen(js), "gpu_phi3 config", &err)) fail_msg("%s", err.msg);
    assert_int_equal(f->m.cfg.arch, ENG_ARCH_PHI3);
    assert_true(f->m.cfg.rope_longrope && f->m.cfg.rope_attn_factor > 1.5f);
    snprintf(f->m.dir, sizeof f->m.dir, "<random Phi-3 model>");
    const int qd = H_ * D_, kvd = HKV_ * D_;
    size_t per = (size_t)2 * C_ + (size_t)(qd + 2 * kvd) * C_ + (size_t)C_ * qd + (size_t)3 * F_ * C_;
    f->pool = malloc((per * L_ + (size_t)2 * V_ * C_ + C_) * sizeof(float));
    f->m.layers = calloc(L_, sizeof *f->m.layers);
    assert_non_null(f->pool), assert_non_null(f->m.layers);
    float *p = f->pool;
    const float ws = 1.7f / sqrtf((float)C_);
    tensor(&f->m.embed, "embed", &p, V_, C_, &seed, 1.0f, 0);
    tensor(&f->m.lm_head, "lm_head", &p, V_, C_, &seed, ws, 0);
    tensor(&f->m.final_norm, "norm", &p, C_, 0, &seed, 0.1f, 1.0f);
    for (int l = 0; l < L_; l++) {
        eng_layer_weights *w = &f->m.layers[l];
        eng_tensor qkv, gu;
        tensor(&w->attn_norm, "attn_norm", &p, C_, 0, &seed, 0.1f, 1.0f);
        tensor(&w->ffn_norm, "ffn_norm", &p, C_, 0, &seed, 0.1f, 1.0f);
        tensor(&qkv, "qkv_proj", &p, qd + 2 * kvd, C_, &seed, ws, 0);
        slice(&w->wq, &qkv, 0, qd), slice(&w->wk, &qkv, qd, kvd), slice(&w->wv, &qkv, qd + kvd, kvd);
        tensor(&w->wo, "wo", &p, C_, qd, &seed, 1.0f / sqrtf((float)qd), 0);
        tensor(&gu, "gate_up_proj", &p, 2 * F_, C_, &seed, ws, 0);
        slice(&w->w_gate, &gu, 0, F_), slice(&w->w_up, &gu, F_, F_);
        tensor(&w->w_down, "w_down", &p, C_, F_, &seed, 1.0f / sqrtf((float)F_), 0);
    }
}

static void compare(phi3_model *f, int n, uint64_t seed) {
    int *tok = malloc(sizeof(int) * (size_t)n);
    assert_non_null(tok);
    for (int i = 0; i < n; i++) tok[i] = (int)(tu_rand_u64(&seed) % V_);
    eng_err err = {{0}};
    eng_backend *cpu = eng_backend_cpu_create(&err), *gpu = eng_backend_cuda_create(&err);
    if (!cpu || !gpu) fail_msg("backend: %s", err.msg);
    eng_prefill_out a, b, w;
    if (cpu->prefill(cpu, &f->m, tok, n, NULL, &a, &err)) fail_msg("cpu prefill: %s", err.msg);
    if (gpu->prefill(gpu, &f->m, tok, n, NULL, &b, &err)) fail_msg("gpu prefill: %s", err.msg);
    const float keep = f->m.cfg.rope_attn_factor;
    f->m.cfg.rope_attn_factor = 1.0f; /* the CPU without longrope's cos/sin factor */
    if (cpu->prefill(cpu, &f->m, tok, n, NULL, &w, &err)) fail_msg("cpu prefill: %s", err.msg);
    f->m.cfg.rope_attn_factor = keep;
    const double rel = tu_rel_l2(b.last_logits, a.last_logits, V_), wrong = tu_rel_l2(b.last_logits, w.last_logits, V_);
    double dl = 0;
    int agree = 0;
    for (int i = 0; i < n; i++) agree += a.argmax[i] == b.argmax[i];
    for (int i = 0; i + 1 < n; i++) dl += fabs((double)a.next_logprob[i] - b.next_logprob[i]);
    dl = n > 1 ? dl / (n - 1) : 0;
    printf("  phi3 prefill n=%d (%s factors): gpu vs cpu logits rel-L2 %.2e (vs cpu without the cos/sin factor "
           "%.2e), mean |dlogp| %.3f, argmax agree %d/%d\n",
           n, n > f->m.cfg.rope_original_max_pos ? "long" : "short", rel, wrong, dl, agree, n);
    if (!(rel < 5e-2)) fail_msg("last logits rel-L2 %.3e", rel);
    if (!(dl < 5e-2)) fail_msg("mean |dlogprob| %.3e", dl);
    if (agree < n * 90 / 100) fail_msg("argmax agrees on %d of %d", agree, n);
    if (!(rel * 3 < wrong)) fail_msg("the GPU is not clearly nearer the scaled CPU run (%.3e vs %.3e)", rel, wrong);
    eng_prefill_out_free(&a), eng_prefill_out_free(&b), eng_prefill_out_free(&w);
    cpu->destroy(cpu), gpu->destroy(gpu);
    free(tok);
}

static void test_phi3_gpu_vs_cpu(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    phi3_model f;
    phi3_init(&f, 0x9e3779b9ULL);
    compare(&f, 24, 11);  /* within original_max_position_embeddings: short factors */
    compare(&f, 100, 12); /* beyond: long factors */
    free(f.pool);
    free(f.m.layers);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phi3_gpu_vs_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
