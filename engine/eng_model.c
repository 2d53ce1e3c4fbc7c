/* eng_model: load a Hugging Face checkpoint directory (config.json + one or more safetensors
 * files) into eng_model views over read-only mappings; dtype conversion helpers. Everything read
 * from disk is validated here before any caller touches tensor data (see eng_model.h). */
#include "eng_model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_gguf.h"
#include "eng_safetensors.h"

#define CONFIG_MAX_BYTES (16u << 20)
#define INDEX_MAX_BYTES (64u << 20)
#define MAX_SHARDS 4096

/* ---------------------------------------------------------------- dtype conversion */

size_t eng_dtype_size(eng_dtype dt) {
    switch (dt) {
    case ENG_DT_F32: return 4;
    case ENG_DT_F16: return 2;
    case ENG_DT_BF16: return 2;
    default: return 0;
    }
}

const char *eng_dtype_name(eng_dtype dt) {
    switch (dt) {
    case ENG_DT_F32: return "f32";
    case ENG_DT_F16: return "f16";
    case ENG_DT_BF16: return "bf16";
    default: return "?";
    }
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float eng_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* Exact for every half: normals rebias the exponent, subnormals are renormalised by one float
 * subtraction (exact), inf/nan keep an all-ones exponent and their payload. */
float eng_f16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)(h & 0x7fff) << 13; /* exponent and mantissa moved into place */
    uint32_t exp = u & 0x0f800000u;            /* 0x7c00 << 13 */
    u += (uint32_t)(127 - 15) << 23;
    if (exp == 0x0f800000u) {
        u += (uint32_t)(128 - 16) << 23;       /* inf / nan */
    } else if (exp == 0) {                     /* zero / subnormal: m * 2^-24 */
        u += 1u << 23;
        float f = bits_f32(u) - bits_f32(113u << 23);
        memcpy(&u, &f, 4);
    }
    return bits_f32(u | (uint32_t)(h & 0x8000) << 16);
}

/* Round to nearest, ties to even; NaN stays a (quiet) NaN, overflow rounds to inf. */
uint16_t eng_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

void eng_tensor_to_f32(const eng_tensor *t, int64_t off, int64_t n, float *dst) {
    const unsigned char *p = (const unsigned char *)t->data + off * (int64_t)eng_dtype_size(t->dtype);
    switch (t->dtype) {
    case ENG_DT_F32:
        memcpy(dst, p, (size_t)n * 4);
        break;
    case ENG_DT_BF16: {
        const uint16_t *s = (const uint16_t *)p;
        for (int64_t i = 0; i < n; i++) dst[i] = bits_f32((uint32_t)s[i] << 16);
        break;
    }
    case ENG_DT_F16: {
        const uint16_t *s = (const uint16_t *)p;
        for (int64_t i = 0; i < n; i++) dst[i] = eng_f16_to_f32(s[i]);
        break;
    }
    default:
        break;
    }
}

/* ---------------------------------------------------------------- config.json */

/* Integer field `key`: absent -> def (or an error when def < 0 marks it required); present ->
 * an integral number in [lo, hi]. */
static int cfg_int(const cJSON *root, const char *key, long def, long lo, long hi, int *out, const char *what,
                   eng_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (def < 0) return eng_err_set(err, "%s: missing required field \"%s\"", what, key);
        *out = (int)def;
        return 0;
    }
    if (!cJSON_IsNumber(j)) return eng_err_set(err, "%s: field \"%s\" is not a number", what, key);
    double v = j->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return eng_err_set(err, "%s: field \"%s\" = %g is not an integer", what, key, v);
    if (v < (double)lo || v > (double)hi)
        return eng_err_set(err, "%s: field \"%s\" = %.0f out of range [%ld, %ld]", what, key, v, lo, hi);
    *out = (int)v;
    return 0;
}

/* Float field in (lo, hi], default def when absent. */
static int cfg_float(const cJSON *root, const char *key, double def, double lo, double hi, float *out,
                     const char *what, eng_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        *out = (float)def;
        return 0;
    }
    if (!cJSON_IsNumber(j)) return eng_err_set(err, "%s: field \"%s\" is not a number", what, key);
    double v = j->valuedouble;
    float fv = (float)v; /* the range applies to the float actually used (1e-50 would round to 0) */
    if (!isfinite(v) || !(fv > lo && v <= hi))
        return eng_err_set(err, "%s: field \"%s\" = %g out of range (%g, %g]", what, key, v, lo, hi);
    *out = fv;
    return 0;
}

static int cfg_bool(const cJSON *root, const char *key, int def, int *out, const char *what, eng_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(j)) return eng_err_set(err, "%s: field \"%s\" is not true/false", what, key);
    *out = cJSON_IsTrue(j);
    return 0;
}

/* bos/eos ids: an int, a list of ints (first taken) or null. */
static int cfg_token_id(const cJSON *root, const char *key, int *out, const char *what, eng_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = -1;
    if (!j || cJSON_IsNull(j)) return 0;
    if (cJSON_IsArray(j)) j = j->child;
    if (!j) return 0;
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= 0 && j->valuedouble < 2147483647.0) ||
        j->valuedouble != floor(j->valuedouble))
        return eng_err_set(err, "%s: field \"%s\" is not a token id", what, key);
    *out = (int)j->valuedouble;
    return 0;
}

/* rope_scaling's `key`: a list of exactly n positive finite numbers, as float32 (transformers
 * makes a float32 tensor of it). */
static int cfg_factor_list(const cJSON *rs, const char *key, int n, float *out, const char *what, eng_err *err) {
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(rs, key);
    if (!cJSON_IsArray(l)) return eng_err_set(err, "%s: missing or non-list required field \"%s\"", what, key);
    int len = cJSON_GetArraySize(l);
    if (len != n)
        return eng_err_set(err, "%s: \"%s\" has %d entries, head_dim / 2 = %d expected", what, key, len, n);
    int i = 0;
    for (const cJSON *j = l->child; j; j = j->next, i++) {
        float f = cJSON_IsNumber(j) ? (float)j->valuedouble : 0.0f;
        if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || !(f > 0) || !isfinite(f))
            return eng_err_set(err, "%s: \"%s\"[%d] is not a positive number", what, key, i);
        out[i] = f;
    }
    return 0;
}

/* longrope / su (Phi-3), as transformers' _compute_longrope_parameters and Phi3Config: the
 * original context is rope_scaling's original_max_position_embeddings, else the top-level one,
 * else (Phi3Config's default) 4096 for Phi-3 and max_position_embeddings otherwise; factor is
 * rope_scaling's "factor", else max_position_embeddings / original; the cos/sin factor is
 * rope_scaling's "attention_factor", else sqrt(1 + ln(factor) / ln(original)) (1 when factor <= 1). */
static int cfg_longrope(eng_config *c, const cJSON *root, const cJSON *rs, const char *what, const char *sub,
                        eng_err *err) {
    const int half = c->head_dim / 2;
    if (half > ENG_ROPE_MAX_FACTORS)
        return eng_err_set(err, "%s: head_dim %d too large for longrope", sub, c->head_dim);
    if (cfg_factor_list(rs, "short_factor", half, c->rope_short_factor, sub, err) ||
        cfg_factor_list(rs, "long_factor", half, c->rope_long_factor, sub, err))
        return -1;
    int orig = 0;
    if (cJSON_GetObjectItemCaseSensitive(rs, "original_max_position_embeddings")) {
        if (cfg_int(rs, "original_max_position_embeddings", -1, 2, 1 << 27, &orig, sub, err)) return -1;
    } else if (cfg_int(root, "original_max_position_embeddings",
                       c->arch == ENG_ARCH_PHI3 ? 4096 : c->max_position_embeddings, 2, 1 << 27, &orig, what, err)) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return eng_err_set(err, "%s (needed by longrope rope_scaling)", msg);
    }
    double factor = (double)c->max_position_embeddings / (double)orig;
    if (cJSON_GetObjectItemCaseSensitive(rs, "factor")) {
        float f;
        if (cfg_float(rs, "factor", 0, 0, 1e6, &f, sub, err)) return -1;
        factor = f;
    }
    double attn = factor <= 1.0 ? 1.0 : sqrt(1.0 + log(factor) / log((double)orig));
    if (cJSON_GetObjectItemCaseSensitive(rs, "attention_factor")) {
        float f;
        if (cfg_float(rs, "attention_factor", 0, 0, 1e6, &f, sub, err)) return -1;
        attn = f;
    }
    c->rope_original_max_pos = orig;
    c->rope_factor = (float)factor;
    c->rope_attn_factor = (float)attn;
    c->rope_longrope = 1;
    return 0;
}

static int cfg_rope_scaling(eng_config *c, const cJSON *root, const char *what, eng_err *err) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) return 0;
    if (!cJSON_IsObject(rs)) return eng_err_set(err, "%s: field \"rope_scaling\" is not an object", what);
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!ty) ty = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsString(ty))
        return eng_err_set(err, "%s: \"rope_scaling\" has no string \"rope_type\" (or \"type\")", what);
    if (!strcmp(ty->valuestring, "default")) return 0;
    char sub[600];
    snprintf(sub, sizeof sub, "%s: rope_scaling", what);
    if (!strcmp(ty->valuestring, "longrope") || !strcmp(ty->valuestring, "su"))
        return cfg_longrope(c, root, rs, what, sub, err);
    if (strcmp(ty->valuestring, "llama3"))
        return eng_err_set(err, "%s: unsupported rope_scaling type \"%.40s\" (supported: llama3, longrope, su)", what,
                           ty->valuestring);
    const char *need[] = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
    for (int i = 0; i < 4; i++)
        if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(rs, need[i])))
            return eng_err_set(err, "%s: missing or non-number required field \"%s\"", sub, need[i]);
    if (cfg_float(rs, "factor", 0, 0, 1e6, &c->rope_factor, sub, err) ||
        cfg_float(rs, "low_freq_factor", 0, 0, 1e6, &c->rope_low_freq_factor, sub, err) ||
        cfg_float(rs, "high_freq_factor", 0, 0, 1e6, &c->rope_high_freq_factor, sub, err) ||
        cfg_int(rs, "original_max_position_embeddings", -1, 1, 1 << 27, &c->rope_original_max_pos, sub, err))
        return -1;
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return eng_err_set(err, "%s: high_freq_factor %g must exceed low_freq_factor %g", sub,
                           c->rope_high_freq_factor, c->rope_low_freq_factor);
    c->rope_llama3 = 1;
    return 0;
}

static int cfg_refuse_true(const cJSON *root, const char *key, const char *why, const char *what, eng_err *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsTrue(j)) return eng_err_set(err, "%s: unsupported \"%s\": true (%s)", what, key, why);
    return 0;
}

int eng_config_parse(eng_config *cfg, const char *json, size_t len, const char *what, eng_err *err) {
    memset(cfg, 0, sizeof *cfg);
    if (!what) what = "config.json";
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return eng_err_set(err, "%s: not valid JSON", what);
    int rc = -1;
    eng_config c;
    memset(&c, 0, sizeof c);
    if (!cJSON_IsObject(root)) {
        eng_err_set(err, "%s: not a JSON object", what);
        goto out;
    }

    /* Architecture: "architectures"[0], else "model_type". */
    static const struct { const char *arch, *type; eng_arch id; } archs[] = {
        {"LlamaForCausalLM", "llama", ENG_ARCH_LLAMA},
        {"MistralForCausalLM", "mistral", ENG_ARCH_MISTRAL},
        {"Qwen2ForCausalLM", "qwen2", ENG_ARCH_QWEN2},
        {"Phi3ForCausalLM", "phi3", ENG_ARCH_PHI3},
    };
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const char *name = NULL;
    int by_type = 0;
    if (ar && !cJSON_IsNull(ar)) {
        if (!cJSON_IsArray(ar) || !cJSON_IsString(ar->child)) {
            eng_err_set(err, "%s: field \"architectures\" is not a list of strings", what);
            goto out;
        }
        name = ar->child->valuestring;
    } else if (cJSON_IsString(mt)) {
        name = mt->valuestring;
        by_type = 1;
    } else {
        eng_err_set(err, "%s: missing required field \"architectures\" (and no \"model_type\")", what);
        goto out;
    }
    int found = 0;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (!strcmp(name, by_type ? archs[i].type : archs[i].arch)) {
            c.arch = archs[i].id;
            snprintf(c.arch_name, sizeof c.arch_name, "%s", archs[i].arch);
            found = 1;
        }
    if (!found) {
        eng_err_set(err, "%s: unsupported %s \"%.60s\" (supported: LlamaForCausalLM, MistralForCausalLM, "
                    "Qwen2ForCausalLM, Phi3ForCausalLM)", what, by_type ? "model_type" : "architecture", name);
        goto out;
    }

    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !cJSON_IsNull(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu"))) {
        eng_err_set(err, "%s: unsupported hidden_act \"%.40s\" (supported: silu)", what,
                    cJSON_IsString(act) ? act->valuestring : "(not a string)");
        goto out;
    }
    if (cfg_refuse_true(root, "attention_bias", "o_proj bias is not supported", what, err) ||
        cfg_refuse_true(root, "mlp_bias", "MLP biases are not supported", what, err) ||
        cfg_refuse_true(root, "use_sliding_window", "sliding-window layers are not supported", what, err))
        goto out;
    const cJSON *prf = cJSON_GetObjectItemCaseSensitive(root, "partial_rotary_factor");
    if (prf && !cJSON_IsNull(prf) && !(cJSON_IsNumber(prf) && prf->valuedouble == 1.0)) {
        if (cJSON_IsNumber(prf))
            eng_err_set(err, "%s: unsupported \"partial_rotary_factor\" %g (only 1.0: RoPE on the whole head)", what,
                        prf->valuedouble);
        else
            eng_err_set(err, "%s: unsupported \"partial_rotary_factor\" (only 1.0)", what);
        goto out;
    }

    int default_ctx = c.arch == ENG_ARCH_LLAMA ? 2048 : c.arch == ENG_ARCH_PHI3 ? 4096 : 32768;
    if (cfg_int(root, "vocab_size", -1, 1, 1 << 22, &c.vocab_size, what, err) ||
        cfg_int(root, "hidden_size", -1, 1, 1 << 16, &c.hidden_size, what, err) ||
        cfg_int(root, "intermediate_size", -1, 1, 1 << 20, &c.intermediate_size, what, err) ||
        cfg_int(root, "num_hidden_layers", -1, 1, 1024, &c.n_layers, what, err) ||
        cfg_int(root, "num_attention_heads", -1, 1, 1024, &c.n_heads, what, err) ||
        cfg_int(root, "num_key_value_heads", c.n_heads, 1, 1024, &c.n_kv_heads, what, err) ||
        cfg_int(root, "max_position_embeddings", default_ctx, 1, 1 << 27, &c.max_position_embeddings, what, err) ||
        cfg_float(root, "rms_norm_eps", 1e-6, 0, 1, &c.rms_norm_eps, what, err) ||
        cfg_float(root, "rope_theta", 10000.0, 0, 1e12, &c.rope_theta, what, err) ||
        cfg_bool(root, "tie_word_embeddings", 0, &c.tie_word_embeddings, what, err) ||
        cfg_token_id(root, "bos_token_id", &c.bos_token_id, what, err) ||
        cfg_token_id(root, "eos_token_id", &c.eos_token_id, what, err))
        goto out;
    if (c.n_heads % c.n_kv_heads) {
        eng_err_set(err, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", what, c.n_heads,
                    c.n_kv_heads);
        goto out;
    }
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (hd && !cJSON_IsNull(hd)) {
        if (cfg_int(root, "head_dim", -1, 1, 1024, &c.head_dim, what, err)) goto out;
    } else {
        if (c.hidden_size % c.n_heads) {
            eng_err_set(err, "%s: hidden_size %d is not a multiple of num_attention_heads %d (and no head_dim)",
                        what, c.hidden_size, c.n_heads);
            goto out;
        }
        c.head_dim = c.hidden_size / c.n_heads;
    }
    if (c.head_dim % 2 || c.head_dim > 1024) {
        eng_err_set(err, "%s: head_dim %d must be even (RoPE rotates pairs) and at most 1024", what, c.head_dim);
        goto out;
    }
    if (c.bos_token_id >= c.vocab_size) c.bos_token_id = -1;
    if (c.eos_token_id >= c.vocab_size) c.eos_token_id = -1;
    /* Phi-3 too: transformers' Phi3Model masks with its sliding_window (Phi-3-mini-4k: 2047). */
    if ((c.arch == ENG_ARCH_MISTRAL || c.arch == ENG_ARCH_PHI3) &&
        cfg_int(root, "sliding_window", 0, 0, 1 << 27, &c.sliding_window, what, err))
        goto out;
    c.qkv_bias = c.arch == ENG_ARCH_QWEN2;
    if (cfg_rope_scaling(&c, root, what, err)) goto out;
    const cJSON *td = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    if (!cJSON_IsString(td)) td = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    if (cJSON_IsString(td)) snprintf(c.torch_dtype, sizeof c.torch_dtype, "%s", td->valuestring);
    *cfg = c;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* ---------------------------------------------------------------- files and mappings */

typedef struct {
    char path[1400];
    const unsigned char *map;
    size_t len;
    eng_st_header hdr;
} shard;

typedef struct {
    shard *shards;
    int n_shards;
    void **copies; /* aligned copies of tensors whose file offset was misaligned */
    int n_copies, cap_copies;
    cJSON *index;  /* weight_map of a sharded checkpoint, NULL for one file */
    char index_path[1400];
} model_impl;

static char *read_file(const char *path, size_t cap, size_t *len, eng_err *err) {
    /* O_NONBLOCK: opening a FIFO must not block (the fstat below refuses it); no effect on files */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        eng_err_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        eng_err_set(err, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if ((unsigned long long)st.st_size > cap) {
        eng_err_set(err, "%s: %lld bytes, more than the %zu allowed", path, (long long)st.st_size, cap);
        close(fd);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        eng_err_set(err, "%s: out of memory", path);
        close(fd);
        return NULL;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = 0;
    *len = got;
    return buf;
}

static int shard_open(shard *s, const char *path, eng_err *err) {
    snprintf(s->path, sizeof s->path, "%s", path);
    int fd = open(path, O_RDONLY | O_NONBLOCK); /* a FIFO must not block: refused below */
    if (fd < 0) return eng_err_set(err, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return eng_err_set(err, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return eng_err_set(err, "%s: %lld bytes, too short for a safetensors file (truncated?)", path,
                           (long long)st.st_size);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return eng_err_set(err, "%s: mmap failed: %s", path, strerror(errno));
    s->map = p;
    s->len = (size_t)st.st_size;
    return eng_st_parse(&s->hdr, s->map, s->len, path, err);
}

static void impl_free(model_impl *im) {
    if (!im) return;
    for (int i = 0; i < im->n_shards; i++) {
        eng_st_free(&im->shards[i].hdr);
        if (im->shards[i].map) munmap((void *)im->shards[i].map, im->shards[i].len);
    }
    free(im->shards);
    for (int i = 0; i < im->n_copies; i++) free(im->copies[i]);
    free(im->copies);
    cJSON_Delete(im->index);
    free(im);
}

/* A shard file name from the index must name a plain file inside the model directory. */
static int safe_shard_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 255 || s[0] == '.') return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '/' || s[i] == '\\' || (unsigned char)s[i] < 0x20) return 0;
    return 1;
}

static int open_sharded(model_impl *im, const char *dir, eng_err *err) {
    size_t len;
    char *txt = read_file(im->index_path, INDEX_MAX_BYTES, &len, err);
    if (!txt) return -1;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!root) return eng_err_set(err, "%s: not valid JSON", im->index_path);
    im->index = root;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) return eng_err_set(err, "%s: missing \"weight_map\" object", im->index_path);
    /* Distinct file names, in first-seen order; the count stays small (one per shard). */
    const char **names = NULL;
    int n = 0, rc = -1;
    for (const cJSON *j = wm->child; j; j = j->next) {
        if (!cJSON_IsString(j)) {
            eng_err_set(err, "%s: weight_map entry '%.100s' is not a file name", im->index_path, j->string);
            goto out;
        }
        if (!safe_shard_name(j->valuestring)) {
            eng_err_set(err, "%s: weight_map entry '%.100s' points at '%.100s', not a file inside %s",
                        im->index_path, j->string, j->valuestring, dir);
            goto out;
        }
        int seen = 0;
        for (int i = 0; i < n && !seen; i++) seen = !strcmp(names[i], j->valuestring);
        if (seen) continue;
        if (n >= MAX_SHARDS) {
            eng_err_set(err, "%s: more than %d shard files", im->index_path, MAX_SHARDS);
            goto out;
        }
        const char **nn = realloc(names, (size_t)(n + 1) * sizeof *names);
        if (!nn) {
            eng_err_set(err, "%s: out of memory", im->index_path);
            goto out;
        }
        names = nn;
        names[n++] = j->valuestring;
    }
    if (n == 0) {
        eng_err_set(err, "%s: \"weight_map\" is empty", im->index_path);
        goto out;
    }
    im->shards = calloc((size_t)n, sizeof *im->shards);
    if (!im->shards) {
        eng_err_set(err, "%s: out of memory", im->index_path);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        im->n_shards++;
        if (access(path, F_OK)) {
            eng_err_set(err, "%s: shard '%s' listed in weight_map is missing (%s)", im->index_path, names[i], path);
            goto out;
        }
        if (shard_open(&im->shards[i], path, err)) goto out;
    }
    rc = 0;
out:
    free(names);
    return rc;
}

/* Locate name: its shard and header entry. NULL when absent (missing_in gets the file to blame). */
static const eng_st_entry *find_tensor(const model_impl *im, const char *name, const shard **sh,
                                       const char **missing_in, eng_err *err, int *bad) {
    *bad = 0;
    if (!im->index) {
        *sh = &im->shards[0];
        *missing_in = im->shards[0].path;
        return eng_st_find(&im->shards[0].hdr, name);
    }
    *missing_in = im->index_path;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(im->index, "weight_map");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(wm, name);
    if (!f) return NULL;
    for (int i = 0; i < im->n_shards; i++) {
        const char *base = strrchr(im->shards[i].path, '/');
        base = base ? base + 1 : im->shards[i].path;
        if (strcmp(base, f->valuestring)) continue;
        *sh = &im->shards[i];
        const eng_st_entry *e = eng_st_find(&im->shards[i].hdr, name);
        if (!e) {
            *bad = 1;
            eng_err_set(err, "%s: missing tensor '%s' (weight_map in %s places it there)", im->shards[i].path, name,
                        im->index_path);
        }
        return e;
    }
    return NULL;
}

static void fmt_shape(char *buf, size_t n, int nd, const int64_t *s) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < nd && o < n; i++) o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Bind tensor `name` of shape (d0[, d1]) into out. A missing optional tensor leaves data NULL. */
static int bind(model_impl *im, eng_tensor *out, const char *name, int optional, int nd, int64_t d0, int64_t d1,
                eng_err *err) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name);
    const shard *sh = NULL;
    const char *miss = NULL;
    int bad;
    const eng_st_entry *e = find_tensor(im, name, &sh, &miss, err, &bad);
    if (bad) return -1;
    if (!e) {
        if (optional) return 0;
        return eng_err_set(err, "%s: missing tensor '%s'", miss, name);
    }
    if (e->dtype < 0)
        return eng_err_set(err, "%s: tensor '%s' has dtype %s (supported: F32, F16, BF16)", sh->path, name,
                           e->dtype_str);
    int64_t want[2] = {d0, d1};
    if (e->ndim != nd || e->shape[0] != d0 || (nd == 2 && e->shape[1] != d1)) {
        char got[128], exp[64];
        fmt_shape(got, sizeof got, e->ndim, e->shape);
        fmt_shape(exp, sizeof exp, nd, want);
        return eng_err_set(err, "%s: tensor '%s' has shape %s but config.json implies %s", sh->path, name, got, exp);
    }
    out->dtype = (eng_dtype)e->dtype;
    out->ndim = nd;
    out->shape[0] = d0;
    out->shape[1] = nd == 2 ? d1 : 0;
    out->numel = e->numel;
    const unsigned char *p = sh->map + sh->hdr.data_off + e->begin;
    if ((uintptr_t)p % (uintptr_t)e->elem_size) {
        /* The header length left the data section misaligned: copy this tensor once. */
        if (im->n_copies == im->cap_copies) {
            int nc = im->cap_copies ? im->cap_copies * 2 : 64;
            void **np = realloc(im->copies, (size_t)nc * sizeof *np);
            if (!np) return eng_err_set(err, "%s: out of memory", sh->path);
            im->copies = np;
            im->cap_copies = nc;
        }
        size_t bytes = (size_t)(e->end - e->begin);
        void *c = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!c) return eng_err_set(err, "%s: out of memory copying tensor '%s'", sh->path, name);
        memcpy(c, p, bytes);
        im->copies[im->n_copies++] = c;
        p = c;
    }
    out->data = p;
    return 0;
}

/* Rows [r0, r0 + rows) of the bound 2-D tensor f as a view into its data: Phi-3's fused
 * qkv_proj / gate_up_proj seen as the separate projections the backends expect. */
static void row_slice(eng_tensor *out, const eng_tensor *f, int64_t r0, int64_t rows, const char *part) {
    *out = *f;
    snprintf(out->name, sizeof out->name, "%.110s[%s]", f->name, part);
    out->shape[0] = rows;
    out->numel = rows * f->shape[1];
    out->data = (const unsigned char *)f->data + (size_t)(r0 * f->shape[1]) * eng_dtype_size(f->dtype);
}

int eng_model_load(eng_model **out, const char *dir, eng_err *err) {
    *out = NULL;
    if (eng_gguf_is_path(dir)) return eng_gguf_load(out, dir, err); /* a .gguf file: engine/eng_gguf.c */
    eng_model *m = calloc(1, sizeof *m);
    model_impl *im = calloc(1, sizeof *im);
    char path[1400];
    char *txt = NULL;
    if (!m || !im) {
        eng_err_set(err, "out of memory");
        goto fail;
    }
    m->impl = im;
    if (strlen(dir) >= sizeof m->dir) {
        eng_err_set(err, "%.100s...: model directory path too long", dir);
        goto fail;
    }
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    for (size_t n = strlen(m->dir); n > 1 && m->dir[n - 1] == '/'; n--) m->dir[n - 1] = 0;
    dir = m->dir;
    struct stat st;
    if (stat(dir, &st)) {
        eng_err_set(err, "%s: %s", dir, strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) {
        eng_err_set(err, "%s: not a directory (a model directory holds config.json and safetensors)", dir);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len;
    if (!(txt = read_file(path, CONFIG_MAX_BYTES, &len, err))) goto fail;
    if (eng_config_parse(&m->cfg, txt, len, path, err)) goto fail;
    free(txt);
    txt = NULL;

    snprintf(im->index_path, sizeof im->index_path, "%s/model.safetensors.index.json", dir);
    if (access(im->index_path, F_OK) == 0) {
        if (open_sharded(im, dir, err)) goto fail;
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK)) {
            eng_err_set(err, "%s: no model.safetensors or model.safetensors.index.json", dir);
            goto fail;
        }
        im->shards = calloc(1, sizeof *im->shards);
        if (!im->shards) {
            eng_err_set(err, "out of memory");
            goto fail;
        }
        im->n_shards = 1;
        if (shard_open(&im->shards[0], path, err)) goto fail;
    }

    const eng_config *c = &m->cfg;
    int64_t C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    int64_t Dq = (int64_t)c->n_heads * c->head_dim, Dkv = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t np = 0;
    if (bind(im, &m->embed, "model.embed_tokens.weight", 0, 2, V, C, err) ||
        bind(im, &m->final_norm, "model.norm.weight", 0, 1, C, 0, err))
        goto fail;
    np += m->embed.numel + m->final_norm.numel;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else {
        if (bind(im, &m->lm_head, "lm_head.weight", 0, 2, V, C, err)) goto fail;
        np += m->lm_head.numel;
    }
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        eng_err_set(err, "out of memory");
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        eng_layer_weights *w = &m->layers[l];
        char nm[128];
#define B(field, suffix, opt, nd, a, b)                                                                           \
    do {                                                                                                          \
        snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix);                                                \
        if (bind(im, &w->field, nm, opt, nd, a, b, err)) goto fail;                                               \
        np += w->field.numel;                                                                                     \
    } while (0)
        B(attn_norm, "input_layernorm.weight", 0, 1, C, 0);
        if (c->arch == ENG_ARCH_PHI3) {
            /* fused (Dq + 2 Dkv, C): rows q, then k, then v (transformers' Phi3Attention) */
            eng_tensor fused;
            snprintf(nm, sizeof nm, "model.layers.%d.self_attn.qkv_proj.weight", l);
            if (bind(im, &fused, nm, 0, 2, Dq + 2 * Dkv, C, err)) goto fail;
            np += fused.numel;
            row_slice(&w->wq, &fused, 0, Dq, "q");
            row_slice(&w->wk, &fused, Dq, Dkv, "k");
            row_slice(&w->wv, &fused, Dq + Dkv, Dkv, "v");
        } else {
            B(wq, "self_attn.q_proj.weight", 0, 2, Dq, C);
            B(wk, "self_attn.k_proj.weight", 0, 2, Dkv, C);
            B(wv, "self_attn.v_proj.weight", 0, 2, Dkv, C);
        }
        B(wo, "self_attn.o_proj.weight", 0, 2, C, Dq);
        if (c->qkv_bias) {
            B(bq, "self_attn.q_proj.bias", 0, 1, Dq, 0);
            B(bk, "self_attn.k_proj.bias", 0, 1, Dkv, 0);
            B(bv, "self_attn.v_proj.bias", 0, 1, Dkv, 0);
        }
        B(ffn_norm, "post_attention_layernorm.weight", 0, 1, C, 0);
        if (c->arch == ENG_ARCH_PHI3) {
            /* fused (2F, C): rows gate, then up (Phi3MLP's chunk(2)) */
            eng_tensor fused;
            snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate_up_proj.weight", l);
            if (bind(im, &fused, nm, 0, 2, 2 * F, C, err)) goto fail;
            np += fused.numel;
            row_slice(&w->w_gate, &fused, 0, F, "gate");
            row_slice(&w->w_up, &fused, F, F, "up");
        } else {
            B(w_gate, "mlp.gate_proj.weight", 0, 2, F, C);
            B(w_up, "mlp.up_proj.weight", 0, 2, F, C);
        }
        B(w_down, "mlp.down_proj.weight", 0, 2, C, F);
#undef B
    }
    m->n_params = np;
    *out = m;
    return 0;
fail:
    free(txt);
    eng_model_free(m);
    if (!m) impl_free(im);
    return -1;
}

void eng_model_free(eng_model *m) {
    if (!m) return;
    if (m->impl_free) m->impl_free(m->impl);
    else impl_free(m->impl);
    free(m->layers);
    free(m);
}
