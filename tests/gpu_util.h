/* gpu_util: shared helpers for the GPU tests (tests/gpu_*.c): GPU detection, CUDA call checks, and an in-memory random
 * Llama-3-shaped model held in f32 (llama3 RoPE scaling), so prefills can be compared without files. */
#ifndef GPU_UTIL_H
#define GPU_UTIL_H

#include "test_util.h"

#include <cuda_runtime_api.h>

#include "eng_model.h"

/* Check a CUDA runtime call inside a test: fails the test naming the call and the error. */
#define CK(x)                                                                                        \
    do {                                                                                             \
        cudaError_t e_ = (x);                                                                        \
        if (e_ != cudaSuccess) fail_msg("%s:%d: %s: %s", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
    } while (0)

static inline int have_gpu(void) {
    int c = 0;
    return cudaGetDeviceCount(&c) == cudaSuccess && c > 0;
}

typedef struct {
    eng_model m;
    float *pool;
} fake_model;

static inline void tensor(eng_tensor *t, const char *name, float **p, int64_t r, int64_t c, uint64_t *seed, float scale,
                   float add) {
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = ENG_DT_F32;
    t->ndim = c ? 2 : 1;
    t->shape[0] = r, t->shape[1] = c;
    t->numel = c ? r * c : r;
    t->data = *p;
    for (int64_t i = 0; i < t->numel; i++) (*p)[i] = tu_randf(seed) * scale + add;
    *p += t->numel;
}

static inline void fake_init(fake_model *f, int L, int C, int F, int H, int Hkv, int d, int V, uint64_t seed) {
    memset(f, 0, sizeof *f);
    eng_config *c = &f->m.cfg;
    c->arch = ENG_ARCH_LLAMA;
    snprintf(c->arch_name, sizeof c->arch_name, "LlamaForCausalLM");
    c->vocab_size = V, c->hidden_size = C, c->intermediate_size = F, c->n_layers = L;
    c->n_heads = H, c->n_kv_heads = Hkv, c->head_dim = d, c->rms_norm_eps = 1e-5f, c->rope_theta = 500000.0f;
    c->max_position_embeddings = 1 << 20, c->bos_token_id = c->eos_token_id = -1;
    c->rope_llama3 = 1, c->rope_factor = 8, c->rope_low_freq_factor = 1, c->rope_high_freq_factor = 4;
    c->rope_original_max_pos = 8192;
    snprintf(f->m.dir, sizeof f->m.dir, "<random model>");
    size_t per = (size_t)2 * C + (size_t)(H + 2 * Hkv) * d * C + (size_t)C * H * d + (size_t)3 * F * C;
    size_t total = per * L + (size_t)2 * V * C + C;
    f->pool = malloc(total * sizeof(float));
    assert_non_null(f->pool);
    f->m.layers = calloc((size_t)L, sizeof *f->m.layers);
    assert_non_null(f->m.layers);
    float *p = f->pool;
    const float ws = 1.0f / sqrtf((float)C) * 1.7f;
    tensor(&f->m.embed, "embed", &p, V, C, &seed, 1.0f, 0);
    tensor(&f->m.lm_head, "lm_head", &p, V, C, &seed, ws, 0);
    tensor(&f->m.final_norm, "norm", &p, C, 0, &seed, 0.1f, 1.0f);
    for (int l = 0; l < L; l++) {
        eng_layer_weights *w = &f->m.layers[l];
        tensor(&w->attn_norm, "attn_norm", &p, C, 0, &seed, 0.1f, 1.0f);
        tensor(&w->ffn_norm, "ffn_norm", &p, C, 0, &seed, 0.1f, 1.0f);
        tensor(&w->wq, "wq", &p, (int64_t)H * d, C, &seed, ws, 0);
        tensor(&w->wk, "wk", &p, (int64_t)Hkv * d, C, &seed, ws, 0);
        tensor(&w->wv, "wv", &p, (int64_t)Hkv * d, C, &seed, ws, 0);
        tensor(&w->wo, "wo", &p, C, (int64_t)H * d, &seed, 1.0f / sqrtf((float)H * d), 0);
        tensor(&w->w_gate, "w_gate", &p, F, C, &seed, ws, 0);
        tensor(&w->w_up, "w_up", &p, F, C, &seed, ws, 0);
        tensor(&w->w_down, "w_down", &p, C, F, &seed, 1.0f / sqrtf((float)F), 0);
    }
}

static inline void fake_free(fake_model *f) {
    free(f->pool);
    free(f->m.layers);
}

#endif
