/* test_loader: the Hugging Face checkpoint loader (eng_model, eng_safetensors): the committed tiny
 * fixtures load with the right config and shapes, weights are mapped, dtype conversions are exact,
 * and every kind of malformed file or config is refused with a message naming file and tensor. */
#include "test_util.h"

#include <dirent.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_model.h"
#include "eng_safetensors.h"

#define FIX "tests/fixtures/"

/* ------------------------------------------------------------------ helpers */

static char *slurp(const char *path, size_t *len) {
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    if (n < 0) n = 0;
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    size_t got = fread(b, 1, (size_t)n, f);
    fclose(f);
    b[got] = 0;
    if (len) *len = got;
    return b;
}

static void spit(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1200];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

/* A fresh temp dir holding the config.json and model.safetensors of fixture `fix`. */
static void tmp_copy(char *dir, const char *fix) {
    strcpy(dir, "/tmp/attnscope-loader-XXXXXX");
    assert_non_null(mkdtemp(dir));
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char src[600], dst[600];
        snprintf(src, sizeof src, FIX "%s/%s", fix, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        size_t n = 0;
        char *b = slurp(src, &n);
        assert_non_null(b);
        spit(dst, b, n);
        free(b);
    }
}

/* Load dir, expect failure, and check the message holds every needle. */
static void expect_fail(const char *dir, const char *n1, const char *n2) {
    eng_model *m = (eng_model *)1;
    eng_err err = {{0}};
    int rc = eng_model_load(&m, dir, &err);
    if (rc == 0 || (n1 && !strstr(err.msg, n1)) || (n2 && !strstr(err.msg, n2)))
        print_error("load of %s: rc %d, message '%s', wanted '%s' and '%s'\n", dir, rc, err.msg, n1 ? n1 : "",
                    n2 ? n2 : "");
    assert_int_equal(rc, -1);
    assert_null(m);
    if (n1) assert_non_null(strstr(err.msg, n1));
    if (n2) assert_non_null(strstr(err.msg, n2));
}

/* Rewrite dir/model.safetensors with its header JSON passed through `edit` (data unchanged). */
typedef void (*hdr_edit)(cJSON *root);
static void rewrite_header(const char *dir, hdr_edit edit) {
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    size_t n = 0;
    unsigned char *b = (unsigned char *)slurp(p, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | b[i];
    char *h = malloc(hl + 1);
    memcpy(h, b + 8, hl);
    h[hl] = 0;
    cJSON *root = cJSON_Parse(h);
    assert_non_null(root);
    edit(root);
    char *nh = cJSON_PrintUnformatted(root);
    size_t nl = strlen(nh);
    size_t dl = n - 8 - hl;
    unsigned char *out = malloc(8 + nl + dl);
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)nl >> (8 * i));
    memcpy(out + 8, nh, nl);
    memcpy(out + 8 + nl, b + 8 + hl, dl);
    spit(p, out, 8 + nl + dl);
    free(out);
    free(nh);
    cJSON_Delete(root);
    free(h);
    free(b);
}

static cJSON *entry(cJSON *root, const char *name) {
    cJSON *e = cJSON_GetObjectItemCaseSensitive(root, name);
    assert_non_null(e);
    return e;
}
static void set_offsets(cJSON *root, const char *name, double b, double e) {
    cJSON *t = entry(root, name);
    cJSON_ReplaceItemInObjectCaseSensitive(t, "data_offsets", cJSON_CreateDoubleArray((double[]){b, e}, 2));
}
static void set_shape(cJSON *root, const char *name, const double *dims, int n) {
    cJSON *t = entry(root, name);
    cJSON_ReplaceItemInObjectCaseSensitive(t, "shape", cJSON_CreateDoubleArray(dims, n));
}

/* Run one header edit on a copy of tiny-llama and expect a refusal naming n1 and n2. */
static void header_case(hdr_edit edit, const char *n1, const char *n2) {
    char dir[64];
    tmp_copy(dir, "tiny-llama");
    rewrite_header(dir, edit);
    expect_fail(dir, n1, n2);
    rm_tree(dir);
}

/* Run one config.json edit (a text substitution) on a copy of tiny-llama. */
static void config_case(const char *from, const char *to, const char *n1, const char *n2) {
    char dir[64], p[600];
    tmp_copy(dir, "tiny-llama");
    snprintf(p, sizeof p, "%s/config.json", dir);
    char *c = slurp(p, NULL);
    char *at = strstr(c, from);
    assert_non_null(at);
    size_t out_len = strlen(c) - strlen(from) + strlen(to);
    char *o = malloc(out_len + 1);
    memcpy(o, c, (size_t)(at - c));
    strcpy(o + (at - c), to);
    strcat(o, at + strlen(from));
    spit(p, o, out_len);
    free(o);
    free(c);
    expect_fail(dir, n1, n2);
    rm_tree(dir);
}

/* ------------------------------------------------------------------ valid fixtures */

static void check_common(const eng_model *m, int layers) {
    const eng_config *c = &m->cfg;
    assert_int_equal(c->vocab_size, 272);
    assert_int_equal(c->hidden_size, 72);
    assert_int_equal(c->intermediate_size, 92);
    assert_int_equal(c->n_layers, layers);
    assert_int_equal(c->n_heads, 4);
    assert_int_equal(c->n_kv_heads, 2);
    assert_int_equal(c->head_dim, 18);
    assert_true(fabsf(c->rms_norm_eps - 1e-5f) < 1e-12f);
    assert_int_equal(c->bos_token_id, 256);
    assert_int_equal(c->eos_token_id, 257);
    assert_int_equal(m->embed.shape[0], 272);
    assert_int_equal(m->embed.shape[1], 72);
    assert_int_equal(m->lm_head.shape[0], 272);
    assert_int_equal(m->final_norm.ndim, 1);
    for (int l = 0; l < layers; l++) {
        const eng_layer_weights *w = &m->layers[l];
        assert_int_equal(w->wq.shape[0], 72);
        assert_int_equal(w->wq.shape[1], 72);
        assert_int_equal(w->wk.shape[0], 36);
        assert_int_equal(w->wv.shape[0], 36);
        assert_int_equal(w->wo.shape[0], 72);
        assert_int_equal(w->wo.shape[1], 72);
        assert_int_equal(w->w_gate.shape[0], 92);
        assert_int_equal(w->w_up.shape[1], 72);
        assert_int_equal(w->w_down.shape[0], 72);
        assert_int_equal(w->w_down.shape[1], 92);
        assert_non_null(w->attn_norm.data);
        assert_non_null(w->ffn_norm.data);
        assert_non_null(w->w_down.data);
    }
    /* Norm weights were generated in 1 +- 0.2: a sanity check on conversion and offsets. */
    float nw[72];
    eng_tensor_to_f32(&m->final_norm, 0, 72, nw);
    for (int i = 0; i < 72; i++) assert_true(nw[i] > 0.79f && nw[i] < 1.21f);
    eng_tensor_to_f32(&m->layers[layers - 1].ffn_norm, 0, 72, nw);
    for (int i = 0; i < 72; i++) assert_true(nw[i] > 0.79f && nw[i] < 1.21f);
}

/* Is p inside a file mapping of a path containing `file` (per /proc/self/maps)? */
static int mapped_from(const void *p, const char *file) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    char line[1400];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) != 2) continue;
        if ((uintptr_t)p >= lo && (uintptr_t)p < hi && strstr(line, file)) found = 1;
    }
    fclose(f);
    return found;
}

static void test_load_tiny_llama(void **state) {
    (void)state;
    eng_model *m;
    eng_err err = {{0}};
    assert_int_equal(eng_model_load(&m, FIX "tiny-llama/", &err), 0);
    check_common(m, 2);
    assert_int_equal(m->cfg.arch, ENG_ARCH_LLAMA);
    assert_string_equal(m->cfg.arch_name, "LlamaForCausalLM");
    assert_string_equal(m->dir, FIX "tiny-llama");
    assert_int_equal(m->cfg.tie_word_embeddings, 0);
    assert_int_equal(m->cfg.qkv_bias, 0);
    assert_int_equal(m->cfg.rope_llama3, 0);
    assert_true(m->cfg.rope_theta == 10000.0f);
    assert_int_equal(m->cfg.max_position_embeddings, 4096);
    assert_int_equal(m->embed.dtype, ENG_DT_F32);
    assert_ptr_not_equal(m->lm_head.data, m->embed.data);
    assert_null(m->layers[0].bq.data);
    /* 272*72*2 + 72 + 2 * (72 + 72*72 + 2*36*72 + 72*72 + 72 + 3*92*72) */
    assert_int_equal(m->n_params, 110376);
    /* Weights are views into the file mapping, not copies. */
    assert_int_equal(mapped_from(m->layers[1].w_down.data, "tiny-llama/model.safetensors"), 1);
    assert_int_equal(mapped_from(m->embed.data, "tiny-llama/model.safetensors"), 1);
    /* The first embedding element equals the file's first data bytes. */
    size_t n = 0;
    unsigned char *b = (unsigned char *)slurp(FIX "tiny-llama/model.safetensors", &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | b[i];
    float want, got;
    memcpy(&want, b + 8 + hl, 4); /* the generator writes the embedding first */
    eng_tensor_to_f32(&m->embed, 0, 1, &got);
    assert_true(want == got);
    free(b);
    eng_model_free(m);
}

static void test_load_sharded_bf16(void **state) {
    (void)state;
    eng_model *m;
    eng_err err = {{0}};
    assert_int_equal(eng_model_load(&m, FIX "tiny-llama-bf16-sharded", &err), 0);
    check_common(m, 2);
    assert_int_equal(m->cfg.tie_word_embeddings, 1);
    assert_ptr_equal(m->lm_head.data, m->embed.data);
    assert_int_equal(m->embed.dtype, ENG_DT_BF16);
    assert_int_equal(m->layers[1].w_down.dtype, ENG_DT_BF16);
    assert_int_equal(m->n_params, 110376 - 272 * 72);
    /* Tensors come from different shards, each mapped. */
    assert_int_equal(mapped_from(m->embed.data, "model-00001-of-00003.safetensors"), 1);
    assert_int_equal(mapped_from(m->final_norm.data, "model-00003-of-00003.safetensors"), 1);
    eng_model_free(m);
}

static void test_load_qwen2_f16(void **state) {
    (void)state;
    eng_model *m;
    eng_err err = {{0}};
    assert_int_equal(eng_model_load(&m, FIX "tiny-qwen2", &err), 0);
    check_common(m, 2);
    assert_int_equal(m->cfg.arch, ENG_ARCH_QWEN2);
    assert_int_equal(m->cfg.qkv_bias, 1);
    assert_int_equal(m->embed.dtype, ENG_DT_F16);
    for (int l = 0; l < 2; l++) {
        assert_non_null(m->layers[l].bq.data);
        assert_int_equal(m->layers[l].bq.shape[0], 72);
        assert_int_equal(m->layers[l].bk.shape[0], 36);
        assert_int_equal(m->layers[l].bv.shape[0], 36);
        float bias[72];
        eng_tensor_to_f32(&m->layers[l].bq, 0, 72, bias);
        for (int i = 0; i < 72; i++) assert_true(fabsf(bias[i]) <= 0.5f);
    }
    assert_int_equal(m->n_params, 110376 - 272 * 72 + 2 * (72 + 36 + 36));
    eng_model_free(m);
}

static void test_load_llama3_rope(void **state) {
    (void)state;
    eng_model *m;
    eng_err err = {{0}};
    assert_int_equal(eng_model_load(&m, FIX "tiny-llama3-rope", &err), 0);
    check_common(m, 1);
    assert_int_equal(m->cfg.rope_llama3, 1);
    assert_true(m->cfg.rope_factor == 8.0f);
    assert_true(m->cfg.rope_low_freq_factor == 1.0f);
    assert_true(m->cfg.rope_high_freq_factor == 4.0f);
    assert_int_equal(m->cfg.rope_original_max_pos, 64);
    assert_true(m->cfg.rope_theta == 500000.0f);
    assert_int_equal(m->cfg.max_position_embeddings, 8192);
    assert_string_equal(m->cfg.torch_dtype, "bfloat16");
    eng_model_free(m);
}

/* ------------------------------------------------------------------ conversions */

static void test_bf16_exact(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = eng_bf16_to_f32((uint16_t)h);
        uint32_t u;
        memcpy(&u, &f, 4);
        assert_int_equal(u, h << 16);
        if (!isnan(f)) assert_int_equal(eng_f32_to_bf16(f), h); /* exact values round-trip */
    }
    struct { uint32_t in; uint16_t out; } rne[] = {
        {0x3f808000u, 0x3f80}, /* tie, even below: down */
        {0x3f818000u, 0x3f82}, /* tie, odd below: up */
        {0x3f808001u, 0x3f81}, /* above the tie: up */
        {0x3f807fffu, 0x3f80}, /* below the tie: down */
        {0x7f7fffffu, 0x7f80}, /* max float rounds to inf */
        {0xbf818000u, 0xbf82}, /* negative tie to even */
        {0x00008000u, 0x0000}, /* subnormal tie to even (zero) */
    };
    for (size_t i = 0; i < sizeof rne / sizeof rne[0]; i++) {
        float f;
        memcpy(&f, &rne[i].in, 4);
        assert_int_equal(eng_f32_to_bf16(f), rne[i].out);
    }
    float nan = NAN;
    assert_true(isnan(eng_bf16_to_f32(eng_f32_to_bf16(nan))));
    uint32_t snan = 0x7f800001u; /* signalling NaN whose top half alone would read as inf */
    float fs;
    memcpy(&fs, &snan, 4);
    assert_true(isnan(eng_bf16_to_f32(eng_f32_to_bf16(fs))));
}

/* An independent f16 decoder: sign * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024. */
static double half_ref(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp(m, -24);
    else v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static void test_f16_exact(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = eng_f16_to_f32((uint16_t)h);
        double r = half_ref((uint16_t)h);
        if (isnan(r)) {
            assert_true(isnan(f));
            continue;
        }
        assert_true((double)f == r);
        assert_int_equal(signbit(f) != 0, (h >> 15) != 0); /* -0 stays -0 */
    }
    assert_true(eng_f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
    assert_true(eng_f16_to_f32(0x03ff) == ldexpf(1023.0f, -24)); /* largest subnormal */
    assert_true(eng_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(isinf(eng_f16_to_f32(0xfc00)) && eng_f16_to_f32(0xfc00) < 0);
}

static void test_tensor_to_f32_offsets(void **state) {
    (void)state;
    uint16_t bf[5] = {0x3f80, 0x4000, 0xc040, 0x0000, 0x7f80};
    uint16_t hf[5] = {0x3c00, 0x4000, 0xc200, 0x0001, 0x7c00};
    float f32[5] = {1, 2, -3, 0.5f, -0.25f};
    eng_tensor t = {.ndim = 1, .shape = {5}, .numel = 5};
    float out[3];
    t.dtype = ENG_DT_BF16;
    t.data = bf;
    eng_tensor_to_f32(&t, 1, 3, out);
    assert_true(out[0] == 2.0f && out[1] == -3.0f && out[2] == 0.0f);
    t.dtype = ENG_DT_F16;
    t.data = hf;
    eng_tensor_to_f32(&t, 2, 3, out);
    assert_true(out[0] == -3.0f && out[1] == ldexpf(1.0f, -24) && isinf(out[2]));
    t.dtype = ENG_DT_F32;
    t.data = f32;
    eng_tensor_to_f32(&t, 2, 3, out);
    assert_true(out[0] == -3.0f && out[1] == 0.5f && out[2] == -0.25f);
    assert_int_equal(eng_dtype_size(ENG_DT_F32), 4);
    assert_int_equal(eng_dtype_size(ENG_DT_F16), 2);
    assert_int_equal(eng_dtype_size(ENG_DT_BF16), 2);
    assert_string_equal(eng_dtype_name(ENG_DT_BF16), "bf16");
    assert_string_equal(eng_dtype_name(ENG_DT_F16), "f16");
    assert_string_equal(eng_dtype_name(ENG_DT_F32), "f32");
}

/* ------------------------------------------------------------------ config.json */

static int parse(const char *json, eng_config *c, eng_err *e) {
    return eng_config_parse(c, json, strlen(json), "cfg.json", e);
}

#define BASE "\"hidden_size\":64,\"intermediate_size\":100,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":300"

static void expect_cfg_fail(const char *json, const char *needle) {
    eng_config c;
    eng_err e = {{0}};
    int rc = parse(json, &c, &e);
    if (rc == 0 || !strstr(e.msg, needle) || !strstr(e.msg, "cfg.json"))
        print_error("config %s: rc %d, message '%s', wanted '%s'\n", json, rc, e.msg, needle);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(e.msg, needle));
    assert_non_null(strstr(e.msg, "cfg.json"));
}

static void test_config_defaults_and_variants(void **state) {
    (void)state;
    eng_config c;
    eng_err e = {{0}};
    assert_int_equal(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE "}", &c, &e), 0);
    assert_int_equal(c.n_kv_heads, 4);     /* defaults to num_attention_heads */
    assert_int_equal(c.head_dim, 16);      /* hidden / heads */
    assert_true(c.rope_theta == 10000.0f);
    assert_true(c.rms_norm_eps == 1e-6f);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.eos_token_id, -1);
    /* Mistral with explicit head_dim (not hidden / heads), sliding window, a list of EOS ids. */
    assert_int_equal(parse("{\"architectures\":[\"MistralForCausalLM\"]," BASE ",\"head_dim\":32,"
                           "\"num_key_value_heads\":2,\"sliding_window\":4096,\"eos_token_id\":[2,7],"
                           "\"rope_scaling\":null,\"hidden_act\":\"silu\"}", &c, &e), 0);
    assert_int_equal(c.arch, ENG_ARCH_MISTRAL);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.eos_token_id, 2);
    /* model_type fallback, rope_scaling "default" = plain RoPE, Qwen2 gets biases. */
    assert_int_equal(parse("{\"model_type\":\"qwen2\"," BASE ",\"rope_scaling\":{\"rope_type\":\"default\"},"
                           "\"use_sliding_window\":false,\"sliding_window\":4096}", &c, &e), 0);
    assert_int_equal(c.arch, ENG_ARCH_QWEN2);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.rope_llama3, 0);
    /* "type" spelling of llama3 scaling. */
    assert_int_equal(parse("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"type\":\"llama3\","
                           "\"factor\":32,\"low_freq_factor\":1,\"high_freq_factor\":4,"
                           "\"original_max_position_embeddings\":8192}}", &c, &e), 0);
    assert_int_equal(c.rope_llama3, 1);
    assert_true(c.rope_factor == 32.0f);
}

static void test_config_refusals(void **state) {
    (void)state;
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE, "not valid JSON");
    expect_cfg_fail("[1,2,3]", "not a JSON object");
    expect_cfg_fail("{\"architectures\":[\"GPT2LMHeadModel\"]," BASE "}", "GPT2LMHeadModel");
    expect_cfg_fail("{\"model_type\":\"gemma\"," BASE "}", "gemma");
    expect_cfg_fail("{" BASE "}", "architectures");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"num_hidden_layers\":2,"
                    "\"num_attention_heads\":4,\"vocab_size\":300}", "intermediate_size");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":300,\"hidden_size\":0,"
                    "\"intermediate_size\":100,\"num_hidden_layers\":2,\"num_attention_heads\":4}", "hidden_size");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":-5,\"hidden_size\":64,"
                    "\"intermediate_size\":100,\"num_hidden_layers\":2,\"num_attention_heads\":4}", "vocab_size");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":\"300\",\"hidden_size\":64,"
                    "\"intermediate_size\":100,\"num_hidden_layers\":2,\"num_attention_heads\":4}", "vocab_size");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":300.5,\"hidden_size\":64,"
                    "\"intermediate_size\":100,\"num_hidden_layers\":2,\"num_attention_heads\":4}", "vocab_size");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"num_key_value_heads\":3}",
                    "num_key_value_heads");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":300,\"hidden_size\":64,"
                    "\"intermediate_size\":100,\"num_hidden_layers\":100000,\"num_attention_heads\":4}",
                    "num_hidden_layers");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":1e12,\"hidden_size\":64,"
                    "\"intermediate_size\":100,\"num_hidden_layers\":2,\"num_attention_heads\":4}", "vocab_size");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rms_norm_eps\":0}", "rms_norm_eps");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rms_norm_eps\":1e-60}", "rms_norm_eps");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_theta\":-1}", "rope_theta");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"hidden_act\":\"gelu\"}", "gelu");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\","
                    "\"factor\":4}}", "yarn");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\","
                    "\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4}}",
                    "original_max_position_embeddings");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\","
                    "\"factor\":null,\"low_freq_factor\":1,\"high_freq_factor\":4,"
                    "\"original_max_position_embeddings\":8192}}", "factor"); /* found by fuzz_config */
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\","
                    "\"factor\":8,\"low_freq_factor\":4,\"high_freq_factor\":1,"
                    "\"original_max_position_embeddings\":8192}}", "high_freq_factor");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"attention_bias\":true}", "attention_bias");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"head_dim\":15}", "head_dim");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":300,\"hidden_size\":66,"
                    "\"intermediate_size\":100,\"num_hidden_layers\":2,\"num_attention_heads\":4}", "hidden_size");
    expect_cfg_fail("{\"architectures\":[\"LlamaForCausalLM\"]," BASE ",\"tie_word_embeddings\":\"yes\"}",
                    "tie_word_embeddings");
    expect_cfg_fail("{\"model_type\":\"qwen2\"," BASE ",\"use_sliding_window\":true}", "use_sliding_window");
}

/* ------------------------------------------------------------------ malformed model files */

static void e_offsets_out_of_range(cJSON *r) { set_offsets(r, "model.norm.weight", 0, 1e9); }
static void e_begin_after_end(cJSON *r) { set_offsets(r, "model.norm.weight", 288, 0); }
static void e_overlap(cJSON *r) {
    /* Point model.norm.weight at the first 288 bytes of the embedding. */
    set_offsets(r, "model.norm.weight", 0, 288);
}
static void e_misaligned(cJSON *r) {
    cJSON *t = cJSON_GetObjectItemCaseSensitive(entry(r, "model.norm.weight"), "data_offsets");
    double b = cJSON_GetArrayItem(t, 0)->valuedouble;
    set_offsets(r, "model.norm.weight", b + 2, b + 2 + 288);
}
static void e_size_mismatch(cJSON *r) {
    cJSON *t = cJSON_GetObjectItemCaseSensitive(entry(r, "model.norm.weight"), "data_offsets");
    double b = cJSON_GetArrayItem(t, 0)->valuedouble;
    set_offsets(r, "model.norm.weight", b, b + 284);
}
static void e_shape_overflow(cJSON *r) {
    set_shape(r, "model.norm.weight", (double[]){4294967296.0, 4294967296.0, 4294967296.0}, 3);
}
static void e_negative_dim(cJSON *r) { set_shape(r, "model.norm.weight", (double[]){-72}, 1); }
static void e_five_dims(cJSON *r) { set_shape(r, "model.norm.weight", (double[]){72, 1, 1, 1, 1}, 5); }
static void e_unknown_dtype(cJSON *r) {
    cJSON_ReplaceItemInObjectCaseSensitive(entry(r, "model.norm.weight"), "dtype", cJSON_CreateString("Q4_K"));
}
static void e_int_dtype(cJSON *r) {
    /* I32 has the same element size, so the offsets stay valid: the loader must refuse the dtype. */
    cJSON_ReplaceItemInObjectCaseSensitive(entry(r, "model.norm.weight"), "dtype", cJSON_CreateString("I32"));
}
static void e_shape_vs_config(cJSON *r) {
    set_shape(r, "model.layers.1.mlp.up_proj.weight", (double[]){72, 92}, 2); /* transposed */
}
static void e_missing_tensor(cJSON *r) { cJSON_DeleteItemFromObjectCaseSensitive(r, "model.layers.1.self_attn.k_proj.weight"); }
static void e_not_object(cJSON *r) {
    cJSON_ReplaceItemInObjectCaseSensitive(r, "model.norm.weight", cJSON_CreateNumber(3));
}

static void test_bad_offsets(void **state) {
    (void)state;
    header_case(e_offsets_out_of_range, "model.safetensors", "model.norm.weight");
    header_case(e_begin_after_end, "model.norm.weight", "begin");
    header_case(e_overlap, "overlaps", "model.norm.weight");
    header_case(e_misaligned, "model.norm.weight", "aligned");
    header_case(e_size_mismatch, "model.norm.weight", "shape needs");
}

static void test_bad_shapes_and_dtypes(void **state) {
    (void)state;
    header_case(e_shape_overflow, "model.norm.weight", "overflow");
    header_case(e_negative_dim, "model.norm.weight", "negative");
    header_case(e_five_dims, "model.norm.weight", "dimensions");
    header_case(e_unknown_dtype, "model.norm.weight", "Q4_K");
    header_case(e_int_dtype, "model.norm.weight", "I32");
    header_case(e_shape_vs_config, "model.layers.1.mlp.up_proj.weight", "config.json implies [92, 72]");
    header_case(e_missing_tensor, "model.safetensors", "missing tensor 'model.layers.1.self_attn.k_proj.weight'");
    header_case(e_not_object, "model.norm.weight", "not a JSON object");
}

/* Raw byte corruptions of model.safetensors. */
static void test_bad_bytes(void **state) {
    (void)state;
    char dir[64], p[600];
    size_t n = 0;
    tmp_copy(dir, "tiny-llama");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unsigned char *orig = (unsigned char *)slurp(p, &n);
    unsigned char *b = malloc(n);

    /* header length beyond the file */
    memcpy(b, orig, n);
    b[5] = 0x01;
    spit(p, b, n);
    expect_fail(dir, "model.safetensors", "header length");
    /* header not JSON */
    memcpy(b, orig, n);
    b[8] = 'x';
    spit(p, b, n);
    expect_fail(dir, "model.safetensors", "not valid JSON");
    /* header JSON but not an object: '[' ... ']' with the rest blanked */
    memcpy(b, orig, n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | orig[i];
    memset(b + 8, ' ', hl);
    memcpy(b + 8, "[1, 2]", 6);
    spit(p, b, n);
    expect_fail(dir, "model.safetensors", "not an object");
    /* truncated data: the last tensor's end lies past the end */
    spit(p, orig, n - 100);
    expect_fail(dir, "model.safetensors", "truncated");
    /* truncated inside the header */
    spit(p, orig, 100);
    expect_fail(dir, "model.safetensors", "header length");
    /* shorter than the length field */
    spit(p, orig, 5);
    expect_fail(dir, "model.safetensors", "too short");
    /* empty file */
    spit(p, orig, 0);
    expect_fail(dir, "model.safetensors", "too short");
    /* no weights at all */
    unlink(p);
    expect_fail(dir, "no model.safetensors", NULL);
    free(b);
    free(orig);
    rm_tree(dir);
}

static void test_bad_config_in_dir(void **state) {
    (void)state;
    config_case("\"hidden_size\": 72", "\"hidden_size\": 80", "model.embed_tokens.weight",
                "config.json implies [272, 80]");
    config_case("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", "config.json", "num_key_value_heads");
    config_case("\"vocab_size\": 272,", "", "config.json", "vocab_size");
    config_case("\"vocab_size\": 272", "\"vocab_size\": 0", "config.json", "vocab_size");
    config_case("\"num_hidden_layers\": 2", "\"num_hidden_layers\": -2", "config.json", "num_hidden_layers");
    config_case("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3", "model.safetensors",
                "model.layers.2.input_layernorm.weight");
    config_case("{", "[", "config.json", "JSON");
    config_case("LlamaForCausalLM", "FalconForCausalLM", "config.json", "FalconForCausalLM");
}

/* Replace the first `from` in file path by `to`. */
static void subst_file(const char *path, const char *from, const char *to) {
    char *c = slurp(path, NULL);
    assert_non_null(c);
    char *at = strstr(c, from);
    assert_non_null(at);
    size_t ol = strlen(c) - strlen(from) + strlen(to);
    char *o = malloc(ol + 1);
    memcpy(o, c, (size_t)(at - c));
    strcpy(o + (at - c), to);
    strcat(o, at + strlen(from));
    spit(path, o, ol);
    free(o);
    free(c);
}

/* tie_word_embeddings flipped to true on an untied checkpoint loads (lm_head.weight present but
 * unused, embed serves both); flipped to false on a tied one, lm_head.weight is missing and named. */
static void test_tied_flip(void **state) {
    (void)state;
    char dir[64], p[600];
    tmp_copy(dir, "tiny-llama");
    snprintf(p, sizeof p, "%s/config.json", dir);
    subst_file(p, "\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true");
    eng_model *m;
    eng_err err = {{0}};
    assert_int_equal(eng_model_load(&m, dir, &err), 0);
    assert_ptr_equal(m->lm_head.data, m->embed.data);
    assert_int_equal(m->n_params, 110376 - 272 * 72);
    eng_model_free(m);
    rm_tree(dir);

    tmp_copy(dir, "tiny-qwen2");
    snprintf(p, sizeof p, "%s/config.json", dir);
    subst_file(p, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    expect_fail(dir, "model.safetensors", "missing tensor 'lm_head.weight'");
    rm_tree(dir);
}

/* Sharded checkpoints: index entries escaping the directory, missing shards, wrong placement. */
static void shard_case(const char *from, const char *to, const char *n1, const char *n2) {
    char dir[64];
    strcpy(dir, "/tmp/attnscope-loader-XXXXXX");
    assert_non_null(mkdtemp(dir));
    const char *files[] = {"config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors",
                           "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"};
    for (int i = 0; i < 5; i++) {
        char src[600], dst[600];
        size_t n = 0;
        snprintf(src, sizeof src, FIX "tiny-llama-bf16-sharded/%s", files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        char *b = slurp(src, &n);
        assert_non_null(b);
        if (i == 1 && from) {
            char *at = strstr(b, from);
            assert_non_null(at);
            size_t ol = strlen(b) - strlen(from) + strlen(to);
            char *o = malloc(ol + 1);
            memcpy(o, b, (size_t)(at - b));
            strcpy(o + (at - b), to);
            strcat(o, at + strlen(from));
            free(b);
            b = o;
            n = ol;
        }
        spit(dst, b, n);
        free(b);
    }
    if (!from) { /* delete a shard instead */
        char p[600];
        snprintf(p, sizeof p, "%s/model-00002-of-00003.safetensors", dir);
        unlink(p);
    }
    expect_fail(dir, n1, n2);
    rm_tree(dir);
}

static void test_sharded_refusals(void **state) {
    (void)state;
    shard_case("\"model.norm.weight\": \"model-00003-of-00003.safetensors\"",
               "\"model.norm.weight\": \"../model-00003-of-00003.safetensors\"", "model.safetensors.index.json",
               "../model-00003-of-00003.safetensors");
    shard_case("\"model.norm.weight\": \"model-00003-of-00003.safetensors\"",
               "\"model.norm.weight\": \"/etc/passwd\"", "model.safetensors.index.json", "/etc/passwd");
    shard_case(NULL, NULL, "model.safetensors.index.json", "model-00002-of-00003.safetensors");
    shard_case("\"model.norm.weight\": \"model-00003-of-00003.safetensors\"",
               "\"model.norm.weight\": \"model-00004-of-00003.safetensors\"", "missing",
               "model-00004-of-00003.safetensors");
    shard_case("\"model.norm.weight\": \"model-00003-of-00003.safetensors\"",
               "\"model.norm.weight\": \"model-00001-of-00003.safetensors\"", "model-00001-of-00003.safetensors",
               "missing tensor 'model.norm.weight'");
    shard_case("\"model.layers.1.mlp.down_proj.weight\": \"model-00003-of-00003.safetensors\",", "",
               "model.safetensors.index.json", "missing tensor 'model.layers.1.mlp.down_proj.weight'");
    shard_case("\"weight_map\"", "\"weight_mop\"", "model.safetensors.index.json", "weight_map");
    shard_case("{", "{{", "model.safetensors.index.json", "JSON");
}

/* The buffer entry point (used by the fuzz target) on hand-made headers. */
static size_t make_st(unsigned char *buf, const char *hdr, size_t data_len) {
    size_t hl = strlen(hdr);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    memset(buf + 8 + hl, 0, data_len);
    return 8 + hl + data_len;
}

static void test_st_buffer(void **state) {
    (void)state;
    unsigned char buf[512];
    eng_st_header h;
    eng_err e = {{0}};
    size_t n = make_st(buf, "{\"__metadata__\":{\"format\":\"pt\"},\"b\":{\"dtype\":\"F16\",\"shape\":[3],"
                            "\"data_offsets\":[16,22]},\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],"
                            "\"data_offsets\":[0,16]},\"s\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[22,24]},"
                            "\"z\":{\"dtype\":\"F32\",\"shape\":[0,7],\"data_offsets\":[24,24]}}", 24);
    assert_int_equal(eng_st_parse(&h, buf, n, "mem", &e), 0);
    assert_int_equal(h.n, 4);
    const eng_st_entry *a = eng_st_find(&h, "a");
    assert_non_null(a);
    assert_int_equal(a->dtype, ENG_DT_F32);
    assert_int_equal(a->numel, 4);
    assert_int_equal(eng_st_find(&h, "s")->numel, 1); /* scalar */
    assert_int_equal(eng_st_find(&h, "z")->numel, 0);
    assert_null(eng_st_find(&h, "__metadata__"));
    assert_null(eng_st_find(&h, "c"));
    eng_st_free(&h);
    /* duplicate names */
    n = make_st(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
    assert_int_equal(eng_st_parse(&h, buf, n, "mem", &e), -1);
    assert_non_null(strstr(e.msg, "twice"));
    /* trailing garbage after the JSON */
    n = make_st(buf, "{} x", 0);
    assert_int_equal(eng_st_parse(&h, buf, n, "mem", &e), -1);
    assert_non_null(strstr(e.msg, "trailing"));
    n = make_st(buf, "{}   x", 0);
    buf[10] = 0; /* an embedded NUL must not hide what follows */
    assert_int_equal(eng_st_parse(&h, buf, n, "mem", &e), -1);
    assert_non_null(strstr(e.msg, "trailing"));
    n = make_st(buf, "{}      ", 0); /* space padding, as the safetensors library writes */
    assert_int_equal(eng_st_parse(&h, buf, n, "mem", &e), 0);
    assert_int_equal(h.n, 0);
    eng_st_free(&h);
    /* offsets as strings */
    n = make_st(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}", 4);
    assert_int_equal(eng_st_parse(&h, buf, n, "mem", &e), -1);
    assert_non_null(strstr(e.msg, "'a'"));
    /* a 2^64-ish header length */
    memset(buf, 0xff, 8);
    assert_int_equal(eng_st_parse(&h, buf, 16, "mem", &e), -1);
    assert_non_null(strstr(e.msg, "header length"));
}

/* ------------------------------------------------------------------ the CLI */

static int run_cli(const char *args, char *out, size_t cap) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", tu_bin(), args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_info(void **state) {
    (void)state;
    if (access(tu_bin(), X_OK)) skip();
    char out[8192];
    assert_int_equal(run_cli("info --model " FIX "tiny-llama --len 1000", out, sizeof out), 0);
    assert_non_null(strstr(out, "LlamaForCausalLM"));
    assert_non_null(strstr(out, "110376"));
    assert_non_null(strstr(out, "1000 tokens"));
    /* a malformed checkpoint: non-zero exit and the message naming the file and tensor */
    char dir[64], cmdl[200];
    tmp_copy(dir, "tiny-llama");
    rewrite_header(dir, e_shape_vs_config);
    snprintf(cmdl, sizeof cmdl, "info --model %s", dir);
    assert_int_equal(run_cli(cmdl, out, sizeof out), 1);
    assert_non_null(strstr(out, "model.safetensors"));
    assert_non_null(strstr(out, "model.layers.1.mlp.up_proj.weight"));
    rm_tree(dir);
    assert_int_not_equal(run_cli("info --model /nonexistent-attnscope-dir", out, sizeof out), 0);
    assert_non_null(strstr(out, "/nonexistent-attnscope-dir"));
    assert_int_equal(run_cli("info --model " FIX "tiny-llama --bogus", out, sizeof out), 2);
    assert_non_null(strstr(out, "--bogus"));
    assert_int_equal(run_cli("info --model " FIX "tiny-llama --len -3", out, sizeof out), 2);
    assert_int_equal(run_cli("info", out, sizeof out), 2);
    assert_non_null(strstr(out, "--model"));
    assert_int_equal(run_cli("info --help", out, sizeof out), 0);
    assert_non_null(strstr(out, "usage"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_tiny_llama),
        cmocka_unit_test(test_load_sharded_bf16),
        cmocka_unit_test(test_load_qwen2_f16),
        cmocka_unit_test(test_load_llama3_rope),
        cmocka_unit_test(test_bf16_exact),
        cmocka_unit_test(test_f16_exact),
        cmocka_unit_test(test_tensor_to_f32_offsets),
        cmocka_unit_test(test_config_defaults_and_variants),
        cmocka_unit_test(test_config_refusals),
        cmocka_unit_test(test_bad_offsets),
        cmocka_unit_test(test_bad_shapes_and_dtypes),
        cmocka_unit_test(test_bad_bytes),
        cmocka_unit_test(test_bad_config_in_dir),
        cmocka_unit_test(test_tied_flip),
        cmocka_unit_test(test_sharded_refusals),
        cmocka_unit_test(test_st_buffer),
        cmocka_unit_test(test_cli_info),
    };
    return cmocka_run_group_tests_name("loader", tests, NULL, NULL);
}
