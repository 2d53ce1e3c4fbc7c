/* test_gguf: llama.cpp GGUF files (eng_gguf): the tiny fixtures converted by tools/gguf_write.py
 * (as convert_hf_to_gguf.py does: renamed tensors, permuted llama q/k rows, rope_freqs) load into
 * the same eng_model as their safetensors, prefill to Hugging Face's logits (reference.json), Q8_0
 * dequantises within its quantisation step, and malformed files are refused with a message. */
#include "test_util.h"

#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_backend.h"
#include "eng_gguf.h"
#include "eng_model.h"
#include "eng_tok.h"

#define FIX "tests/fixtures/"

static char tmpdir[64];
static int have_python;

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            struct stat st;
            if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_tree(p);
            else unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static int sh(const char *fmt, ...) {
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Set-up: GGUF versions of the fixtures (python3 stdlib only) in a temp dir. */
static int setup(void **st) {
    (void)st;
    strcpy(tmpdir, "/tmp/attnscope-gguf-XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    have_python = sh("python3 -c 'import struct, json' >/dev/null 2>&1") == 0;
    if (!have_python) return 0;
    static const char *conv[][3] = {
        {"tiny-llama", "f32", "tiny-llama.gguf"},
        {"tiny-llama", "bf16", "tiny-llama-bf16.gguf"},
        {"tiny-qwen2", "f16", "tiny-qwen2.gguf"},
        {"tiny-llama-bf16-sharded", "bf16", "tiny-llama-bf16-sharded.gguf"},
        {"tiny-llama3-rope", "f32", "tiny-llama3-rope.gguf"},
    };
    for (size_t i = 0; i < sizeof conv / sizeof conv[0]; i++)
        if (sh("python3 tools/gguf_write.py --model " FIX "%s --outtype %s %s/%s >/dev/null", conv[i][0], conv[i][1],
               tmpdir, conv[i][2]))
            return -1;
    /* Q8_0 needs rows of whole 32-element blocks: a 64-wide model */
    if (sh("python3 tools/make_tiny_model.py %s/tiny64 --hidden 64 --intermediate 96 --heads 4 --kv-heads 2 "
           "--vocab 272 --layers 2 --seed 9 >/dev/null && "
           "python3 tools/gguf_write.py --model %s/tiny64 --outtype q8_0 %s/tiny64-q8_0.gguf >/dev/null",
           tmpdir, tmpdir, tmpdir))
        return -1;
    return 0;
}

static int teardown(void **st) {
    (void)st;
    if (tmpdir[0]) rm_tree(tmpdir);
    return 0;
}

static void need_python(void) {
    if (!have_python) {
        printf("skip: python3 not available to write GGUF fixtures\n");
        skip();
    }
}

/* ------------------------------------------------------------------ conversions */

static void tensors_equal(const eng_tensor *a, const eng_tensor *b, double tol, const char *what) {
    if (!a->data && !b->data) return;
    assert_non_null(a->data);
    assert_non_null(b->data);
    assert_int_equal(a->ndim, b->ndim);
    for (int i = 0; i < a->ndim; i++) assert_int_equal(a->shape[i], b->shape[i]);
    assert_int_equal(a->numel, b->numel);
    float *x = malloc((size_t)a->numel * 4), *y = malloc((size_t)a->numel * 4);
    eng_tensor_to_f32(a, 0, a->numel, x);
    eng_tensor_to_f32(b, 0, b->numel, y);
    double worst = 0, amax = 0;
    for (int64_t i = 0; i < a->numel; i++) {
        double d = fabs((double)x[i] - (double)y[i]);
        worst = d > worst ? d : worst;
        amax = fabs(y[i]) > amax ? fabs(y[i]) : amax;
    }
    if (worst > tol * (amax > 0 ? amax : 1)) fail_msg("%s: max |diff| %g (max |x| %g, tol %g)", what, worst, amax, tol);
    free(x);
    free(y);
}

/* Every tensor of the GGUF model equals the safetensors one (q/k un-permuted back). */
static void compare_models(const char *st_dir, const char *gguf, double tol) {
    char gp[256];
    snprintf(gp, sizeof gp, "%s/%s", tmpdir, gguf);
    eng_model *a = NULL, *b = NULL;
    eng_err err = {{0}};
    if (eng_model_load(&a, st_dir, &err)) fail_msg("%s: %s", st_dir, err.msg);
    if (eng_model_load(&b, gp, &err)) fail_msg("%s: %s", gp, err.msg); /* through eng_model_load's hook */
    const eng_config *x = &a->cfg, *y = &b->cfg;
    assert_int_equal(x->arch, y->arch);
    assert_int_equal(x->vocab_size, y->vocab_size);
    assert_int_equal(x->hidden_size, y->hidden_size);
    assert_int_equal(x->intermediate_size, y->intermediate_size);
    assert_int_equal(x->n_layers, y->n_layers);
    assert_int_equal(x->n_heads, y->n_heads);
    assert_int_equal(x->n_kv_heads, y->n_kv_heads);
    assert_int_equal(x->head_dim, y->head_dim);
    assert_int_equal(x->qkv_bias, y->qkv_bias);
    assert_int_equal(x->tie_word_embeddings, y->tie_word_embeddings);
    assert_int_equal(x->bos_token_id, y->bos_token_id);
    assert_int_equal(x->max_position_embeddings, y->max_position_embeddings);
    assert_true(fabsf(x->rope_theta - y->rope_theta) <= 1e-6f * x->rope_theta);
    assert_true(fabsf(x->rms_norm_eps - y->rms_norm_eps) <= 1e-6f * x->rms_norm_eps + 1e-12f);
    assert_int_equal(x->rope_llama3, y->rope_llama3);
    if (x->rope_llama3) {
        assert_true(fabsf(x->rope_factor - y->rope_factor) < 1e-4f);
        assert_true(fabsf(x->rope_low_freq_factor - y->rope_low_freq_factor) < 1e-6f);
        assert_true(fabsf(x->rope_high_freq_factor - y->rope_high_freq_factor) < 1e-6f);
        assert_int_equal(x->rope_original_max_pos, y->rope_original_max_pos);
    }
    assert_int_equal(a->n_params, b->n_params);
    tensors_equal(&a->embed, &b->embed, tol, "embed");
    tensors_equal(&a->final_norm, &b->final_norm, tol, "final_norm");
    tensors_equal(&a->lm_head, &b->lm_head, tol, "lm_head");
    for (int l = 0; l < x->n_layers; l++) {
        const eng_layer_weights *p = &a->layers[l], *q = &b->layers[l];
        tensors_equal(&p->attn_norm, &q->attn_norm, tol, "attn_norm");
        tensors_equal(&p->wq, &q->wq, tol, "wq");
        tensors_equal(&p->wk, &q->wk, tol, "wk");
        tensors_equal(&p->wv, &q->wv, tol, "wv");
        tensors_equal(&p->wo, &q->wo, tol, "wo");
        tensors_equal(&p->bq, &q->bq, tol, "bq");
        tensors_equal(&p->bk, &q->bk, tol, "bk");
        tensors_equal(&p->bv, &q->bv, tol, "bv");
        tensors_equal(&p->ffn_norm, &q->ffn_norm, tol, "ffn_norm");
        tensors_equal(&p->w_gate, &q->w_gate, tol, "w_gate");
        tensors_equal(&p->w_up, &q->w_up, tol, "w_up");
        tensors_equal(&p->w_down, &q->w_down, tol, "w_down");
    }
    eng_model_free(a);
    eng_model_free(b);
}

static void test_llama_f32(void **st) { (void)st; need_python(); compare_models(FIX "tiny-llama", "tiny-llama.gguf", 0); }
/* bf16 of f32 weights: within bf16 rounding (2^-9 relative to the largest element is generous) */
static void test_llama_bf16(void **st) {
    (void)st;
    need_python();
    compare_models(FIX "tiny-llama", "tiny-llama-bf16.gguf", 1.0 / 256);
}
static void test_qwen2_f16(void **st) { (void)st; need_python(); compare_models(FIX "tiny-qwen2", "tiny-qwen2.gguf", 0); }
static void test_sharded_bf16(void **st) {
    (void)st;
    need_python();
    compare_models(FIX "tiny-llama-bf16-sharded", "tiny-llama-bf16-sharded.gguf", 0);
}
/* Llama-3 rope scaling travels as rope_freqs.weight and is recovered into eng_config. */
static void test_llama3_rope(void **st) {
    (void)st;
    need_python();
    compare_models(FIX "tiny-llama3-rope", "tiny-llama3-rope.gguf", 0);
}
/* Q8_0: each element within half a quantisation step (amax/127/2 per 32-block) plus bf16 rounding. */
static void test_q8_0(void **st) {
    (void)st;
    need_python();
    char dir[128];
    snprintf(dir, sizeof dir, "%s/tiny64", tmpdir);
    compare_models(dir, "tiny64-q8_0.gguf", 1.0 / 127 / 2 + 1.0 / 256);
}

/* The GGUF models prefill to the logits transformers gave for their safetensors (reference.json). */
static void test_prefill_vs_transformers(void **st) {
    (void)st;
    need_python();
    static const char *pairs[][2] = {
        {"tiny-llama", "tiny-llama.gguf"},
        {"tiny-qwen2", "tiny-qwen2.gguf"},
        {"tiny-llama3-rope", "tiny-llama3-rope.gguf"},
    };
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
        char rp[256], gp[256];
        snprintf(rp, sizeof rp, FIX "%s/reference.json", pairs[k][0]);
        snprintf(gp, sizeof gp, "%s/%s", tmpdir, pairs[k][1]);
        FILE *f = fopen(rp, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *txt = malloc((size_t)n + 1);
        txt[fread(txt, 1, (size_t)n, f)] = 0;
        fclose(f);
        cJSON *r = cJSON_Parse(txt);
        free(txt);
        assert_non_null(r);
        const cJSON *jt = cJSON_GetObjectItem(r, "tokens"), *jl = cJSON_GetObjectItem(r, "last_logits");
        int nt = cJSON_GetArraySize(jt), V = cJSON_GetArraySize(jl);
        int *tok = malloc(sizeof(int) * (size_t)nt);
        float *want = malloc(sizeof(float) * (size_t)V);
        for (int i = 0; i < nt; i++) tok[i] = cJSON_GetArrayItem(jt, i)->valueint;
        for (int i = 0; i < V; i++) want[i] = (float)cJSON_GetArrayItem(jl, i)->valuedouble;
        eng_model *m = NULL;
        eng_err err = {{0}};
        if (eng_model_load(&m, gp, &err)) fail_msg("%s: %s", gp, err.msg);
        eng_backend *be = eng_backend_cpu_create(&err);
        assert_non_null(be);
        eng_prefill_out out;
        if (be->prefill(be, m, tok, nt, NULL, &out, &err)) fail_msg("%s: prefill: %s", gp, err.msg);
        double rel = tu_rel_l2(out.last_logits, want, (size_t)V);
        printf("%s: %d tokens, last-logits rel L2 vs transformers %.2e\n", gp, nt, rel);
        assert_true(rel < 1e-4);
        eng_prefill_out_free(&out);
        be->destroy(be);
        eng_model_free(m);
        free(tok);
        free(want);
        cJSON_Delete(r);
    }
}

/* ------------------------------------------------------------------ malformed files */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} gb;

static void gb_raw(gb *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void gb_u32(gb *b, uint32_t v) { gb_raw(b, &v, 4); } /* x86: little-endian */
static void gb_u64(gb *b, uint64_t v) { gb_raw(b, &v, 8); }
static void gb_str(gb *b, const char *s) {
    gb_u64(b, strlen(s));
    gb_raw(b, s, strlen(s));
}
static void gb_pad(gb *b, size_t a) {
    static const unsigned char z[64] = {0};
    gb_raw(b, z, (a - b->n % a) % a);
}

/* A valid little GGUF: 3 KV (u32, string, string array), 2 tensors (F32 [4], Q8_0 [32, 2]). The
 * knobs break one thing each. */
typedef struct {
    uint32_t version, type0, ndim0, kv_type;
    uint64_t ne0_1, off1, n_kv_extra, arr_n;
    int dup_key, dup_tensor, nested, align;
    const char *magic;
} gopt;

static gb make_gguf(gopt o) {
    gb b = {0};
    gb_raw(&b, o.magic ? o.magic : "GGUF", 4);
    gb_u32(&b, o.version ? o.version : 3);
    gb_u64(&b, 2);
    gb_u64(&b, 3 + o.n_kv_extra);
    gb_str(&b, "general.architecture");
    gb_u32(&b, o.kv_type ? o.kv_type : 8);
    gb_str(&b, "llama");
    gb_str(&b, o.dup_key ? "general.architecture" : "general.alignment");
    gb_u32(&b, 4);
    gb_u32(&b, o.align ? (uint32_t)o.align : 32);
    gb_str(&b, "tokenizer.ggml.tokens");
    gb_u32(&b, 9);
    gb_u32(&b, o.nested ? 9 : 8);
    gb_u64(&b, o.arr_n ? o.arr_n : 2);
    gb_str(&b, "a");
    gb_str(&b, "b");
    gb_str(&b, "t0");
    gb_u32(&b, o.ndim0 ? o.ndim0 : 1);
    gb_u64(&b, o.ne0_1 ? o.ne0_1 : 4);
    gb_u32(&b, o.type0);
    gb_u64(&b, 0);
    gb_str(&b, o.dup_tensor ? "t0" : "t1");
    gb_u32(&b, 2);
    gb_u64(&b, 32);
    gb_u64(&b, 2);
    gb_u32(&b, 8);
    gb_u64(&b, o.off1 ? o.off1 : 32);
    gb_pad(&b, o.align > 0 ? (size_t)o.align : 32);
    unsigned char data[32 + 68];
    memset(data, 0, sizeof data);
    gb_raw(&b, data, sizeof data);
    return b;
}

static void expect_refusal(gopt o, const char *want) {
    gb b = make_gguf(o);
    eng_gguf g;
    eng_err err = {{0}};
    int rc = eng_gguf_parse(&g, b.p, b.n, "t.gguf", &err);
    if (rc == 0 || !strstr(err.msg, want) || strncmp(err.msg, "t.gguf: ", 8))
        fail_msg("want refusal \"%s\"; got rc %d \"%s\"", want, rc, err.msg);
    free(b.p);
}

static void test_parse_valid(void **st) {
    (void)st;
    gb b = make_gguf((gopt){0});
    eng_gguf g;
    eng_err err = {{0}};
    if (eng_gguf_parse(&g, b.p, b.n, "t.gguf", &err)) fail_msg("%s", err.msg);
    assert_int_equal(g.version, 3);
    assert_int_equal(g.n_kv, 3);
    assert_int_equal(g.n_tensors, 2);
    const eng_gguf_tensor *t1 = eng_gguf_find_tensor(&g, "t1");
    assert_non_null(t1);
    assert_int_equal(t1->type, ENG_GGML_Q8_0);
    assert_int_equal(t1->nbytes, 68);
    assert_int_equal(t1->ne[0], 32);
    assert_int_equal(t1->ne[1], 2);
    const char *s;
    uint64_t n;
    assert_int_equal(eng_gguf_get_str(&g, "general.architecture", &s, &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(s, "llama", 5);
    int64_t v;
    assert_int_equal(eng_gguf_get_int(&g, "general.alignment", 0, 0, 100, &v, "t", &err), 0);
    assert_int_equal(v, 32);
    assert_int_equal(eng_gguf_get_int(&g, "general.architecture", 0, 0, 100, &v, "t", &err), -1);
    assert_non_null(strstr(err.msg, "not an integer"));
    const eng_gguf_kv *kv = eng_gguf_find_kv(&g, "tokenizer.ggml.tokens");
    assert_int_equal(kv->arr_n, 2);
    eng_gguf_free(&g);
    /* every truncation is refused (and never read past the end: ASan) */
    for (size_t cut = 0; cut < b.n; cut++) {
        unsigned char *c = malloc(cut ? cut : 1);
        memcpy(c, b.p, cut);
        err.msg[0] = 0;
        if (eng_gguf_parse(&g, c, cut, "t.gguf", &err) == 0) fail_msg("truncated to %zu bytes: accepted", cut);
        assert_true(err.msg[0] != 0);
        free(c);
    }
    free(b.p);
}

static void test_parse_refusals(void **st) {
    (void)st;
    expect_refusal((gopt){.magic = "GGUX"}, "no \"GGUF\" magic");
    expect_refusal((gopt){.version = 1}, "version 1 is not supported");
    expect_refusal((gopt){.version = 7}, "unknown GGUF version 7");
    expect_refusal((gopt){.version = 0x03000000u}, "big-endian");
    expect_refusal((gopt){.n_kv_extra = 1000000000}, "over the cap");
    expect_refusal((gopt){.n_kv_extra = 50000}, "do not fit");
    expect_refusal((gopt){.kv_type = 13}, "unknown type 13");
    expect_refusal((gopt){.nested = 1}, "nested array");
    expect_refusal((gopt){.arr_n = 1u << 30}, "over the cap");
    expect_refusal((gopt){.arr_n = 1000}, "truncated");
    expect_refusal((gopt){.dup_key = 1}, "appears twice");
    expect_refusal((gopt){.align = 24}, "power of two");
    expect_refusal((gopt){.ndim0 = 5}, "5 dims");
    expect_refusal((gopt){.type0 = 99}, "unknown ggml type 99");
    expect_refusal((gopt){.type0 = 8}, "whole number of 32-element blocks");
    expect_refusal((gopt){.off1 = 40}, "not a multiple of the alignment");
    expect_refusal((gopt){.off1 = 1 << 20}, "past the end");
    expect_refusal((gopt){.ne0_1 = 16}, "overlaps");
    expect_refusal((gopt){.dup_tensor = 1}, "\"t0\" appears twice");
    expect_refusal((gopt){.ne0_1 = 1ull << 62}, "too large");
}

/* Model-level refusals: by name, never a crash. */
static void test_model_refusals(void **st) {
    (void)st;
    need_python();
    char p[256];
    eng_model *m = NULL;
    eng_err err = {{0}};
    /* the toy file above is not a model: no hidden size */
    gb b = make_gguf((gopt){0});
    snprintf(p, sizeof p, "%s/toy.gguf", tmpdir);
    FILE *f = fopen(p, "wb");
    fwrite(b.p, 1, b.n, f);
    fclose(f);
    free(b.p);
    assert_int_equal(eng_model_load(&m, p, &err), -1);
    assert_null(m);
    assert_non_null(strstr(err.msg, "embedding_length"));
    /* a real file truncated in its data section */
    char src[256];
    snprintf(src, sizeof src, "%s/tiny-llama.gguf", tmpdir);
    snprintf(p, sizeof p, "%s/cut.gguf", tmpdir);
    assert_int_equal(sh("head -c 20000 %s > %s", src, p), 0);
    assert_int_equal(eng_model_load(&m, p, &err), -1);
    assert_non_null(strstr(err.msg, "past the end"));
    /* no tokenizer in a model-only GGUF: the byte vocabulary needs the config (vocab 272) */
    eng_tokenizer *t = eng_tok_load(src, NULL, &err);
    assert_null(t);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.model"));
    assert_int_equal(eng_model_load(&m, src, &err), 0);
    t = eng_tok_load(src, &m->cfg, &err);
    assert_non_null(t);
    assert_int_equal(eng_tok_get_kind(t), ENG_TOK_BYTE);
    assert_int_equal(eng_tok_bos_id(t), 256);
    eng_tok_free(t);
    eng_model_free(m);
    m = NULL;
    if (access(tu_bin(), X_OK) == 0)
        assert_int_equal(sh("%s tokenize --model %s --text hi --quiet >/dev/null", tu_bin(), src), 0);
    /* `attnscope info` reads GGUF files through the same hook */
    if (access(tu_bin(), X_OK) == 0) assert_int_equal(sh("%s info --model %s >/dev/null", tu_bin(), src), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),       cmocka_unit_test(test_parse_refusals),
        cmocka_unit_test(test_llama_f32),         cmocka_unit_test(test_llama_bf16),
        cmocka_unit_test(test_qwen2_f16),         cmocka_unit_test(test_sharded_bf16),
        cmocka_unit_test(test_llama3_rope),       cmocka_unit_test(test_q8_0),
        cmocka_unit_test(test_prefill_vs_transformers), cmocka_unit_test(test_model_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
