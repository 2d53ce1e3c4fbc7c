/* eng_model: a transformer checkpoint as read from a Hugging Face directory (config.json +
 * safetensors, single or sharded). Weights stay memory-mapped in their file dtype; backends
 * convert what they need (the CPU backend to f32 per layer, the CUDA backend to bf16 on upload).
 * Every file is untrusted input: the loader validates before anything reads tensor data. */
#ifndef ENG_MODEL_H
#define ENG_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "eng_err.h"

typedef enum { ENG_DT_F32 = 0, ENG_DT_F16, ENG_DT_BF16, ENG_DT__COUNT } eng_dtype;

typedef enum { ENG_ARCH_LLAMA = 0, ENG_ARCH_MISTRAL, ENG_ARCH_QWEN2, ENG_ARCH_PHI3, ENG_ARCH__COUNT } eng_arch;

#define ENG_ROPE_MAX_FACTORS 512 /* longrope factors per list: head_dim / 2, head_dim <= 1024 */

typedef struct {
    eng_arch arch;
    char arch_name[64];          /* as written in config.json "architectures"[0] */
    int vocab_size;
    int hidden_size;             /* C */
    int intermediate_size;       /* F (MLP width) */
    int n_layers;
    int n_heads;                 /* H query heads */
    int n_kv_heads;              /* Hkv; H % Hkv == 0 */
    int head_dim;                /* d; config "head_dim" or C / H */
    float rms_norm_eps;
    float rope_theta;
    int max_position_embeddings;
    int tie_word_embeddings;
    int qkv_bias;                /* Qwen2: q/k/v projections carry biases */
    int sliding_window;          /* Mistral, Phi-3; 0 = none */
    int bos_token_id, eos_token_id; /* -1 when absent */
    /* rope_scaling {"rope_type": "llama3", ...}; rope_llama3 = 0 means plain RoPE */
    int rope_llama3;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    /* rope_scaling {"rope_type": "longrope"} (or the older "su"; Phi-3): inv_freq[i] is divided by
     * rope_short_factor[i] while the sequence fits rope_original_max_pos, by rope_long_factor[i]
     * beyond it, and cos/sin are multiplied by rope_attn_factor (eng_cpu_rope_table). rope_factor
     * holds longrope's factor (config "factor", else max_position_embeddings / original). */
    int rope_longrope;
    float rope_attn_factor;
    float rope_short_factor[ENG_ROPE_MAX_FACTORS], rope_long_factor[ENG_ROPE_MAX_FACTORS]; /* [head_dim/2] */
    char torch_dtype[16];
} eng_config;

/* A tensor view into a mapped file. data is never written. Row-major, shape[0] outermost.
 * A linear layer's weight is (out_features, in_features) as in PyTorch. */
typedef struct {
    char name[128];
    eng_dtype dtype;
    int ndim;
    int64_t shape[4];
    int64_t numel;
    const void *data;            /* NULL for an absent optional tensor (e.g. no bias) */
} eng_tensor;

/* Phi-3's fused self_attn.qkv_proj (rows q, k, v) and mlp.gate_up_proj (rows gate, up) are
 * exposed as row-slice views: wq/wk/wv and w_gate/w_up point into the fused matrix. */
typedef struct {
    eng_tensor attn_norm;        /* (C) */
    eng_tensor wq, wk, wv, wo;   /* (H*d, C) (Hkv*d, C) (Hkv*d, C) (C, H*d) */
    eng_tensor bq, bk, bv;       /* (H*d) (Hkv*d) (Hkv*d); data NULL unless qkv_bias */
    eng_tensor ffn_norm;         /* (C) */
    eng_tensor w_gate, w_up;     /* (F, C) */
    eng_tensor w_down;           /* (C, F) */
} eng_layer_weights;

typedef struct eng_model {
    eng_config cfg;
    char dir[1024];
    eng_tensor embed;            /* (V, C) */
    eng_tensor final_norm;       /* (C) */
    eng_tensor lm_head;          /* (V, C); same data as embed when tie_word_embeddings */
    eng_layer_weights *layers;   /* [n_layers] */
    int64_t n_params;
    void *impl;                  /* loader-private: mappings, buffers for converted data */
    void (*impl_free)(void *impl); /* frees impl; NULL = the safetensors loader's (GGUF sets its own) */
} eng_model;

/* Parse and validate config.json text (NUL-terminated, len bytes). `what` names the source in
 * messages. Unsupported architectures or fields are refused by name. */
int eng_config_parse(eng_config *cfg, const char *json, size_t len, const char *what, eng_err *err);

/* Load a model directory. On failure *out is NULL and err names the file and tensor. */
int eng_model_load(eng_model **out, const char *dir, eng_err *err);
void eng_model_free(eng_model *m);

/* Convert n elements of t starting at element offset off into f32 dst. */
void eng_tensor_to_f32(const eng_tensor *t, int64_t off, int64_t n, float *dst);

size_t eng_dtype_size(eng_dtype dt);
const char *eng_dtype_name(eng_dtype dt);
float eng_bf16_to_f32(uint16_t h);
float eng_f16_to_f32(uint16_t h);
uint16_t eng_f32_to_bf16(float f);

#endif
