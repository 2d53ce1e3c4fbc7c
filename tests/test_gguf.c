/* test_gguf: llama.cpp GGUF files (eng_gguf): the tiny fixtures converted by tools/gguf_write.py
 * (as convert_hf_to_gguf.py does: renamed tensors, permuted llama q/k rows, rope_freqs; for phi3
 * the fused attn_qkv / ffn_up and the longrope factor tensors) load into the same eng_model as
 * their safetensors, prefill to Hugging Face's logits (reference*.json), Q8_0 dequantises within
 * its quantisation step, and malformed files (incl. edited phi3 metadata) are refused by name. */
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
        {"tiny-phi3", "f32", "tiny-phi3.gguf"},
        {"tiny-phi3", "bf16", "tiny-phi3-bf16.gguf"},
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
    /* and a 64-wide Phi-3 (longrope, sliding window) for Q8_0 of the fused matrices */
    if (sh("python3 tools/make_tiny_model.py %s/phi3-64 --arch phi3 --hidden 64 --intermediate 96 --heads 4 "
           "--kv-heads 2 --vocab 272 --layers 2 --longrope 32 --sliding-window 48 --seed 9 >/dev/null && "
           "python3 tools/gguf_write.py --model %s/phi3-64 --outtype q8_0 %s/phi3-64-q8_0.gguf >/dev/null",
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
    assert_int_equal(x->sliding_window, y->sliding_window);
    assert_int_equal(x->rope_longrope, y->rope_longrope);
    if (x->rope_longrope) { /* factors travel as F32 tensors: exact */
        assert_int_equal(x->rope_original_max_pos, y->rope_original_max_pos);
        assert_true(fabsf(x->rope_factor - y->rope_factor) <= 1e-6f * x->rope_factor);
        assert_true(fabsf(x->rope_attn_factor - y->rope_attn_factor) <= 1e-6f * x->rope_attn_factor);
        assert_memory_equal(x->rope_short_factor, y->rope_short_factor, sizeof(float) * (size_t)(x->head_dim / 2));
        assert_memory_equal(x->rope_long_factor, y->rope_long_factor, sizeof(float) * (size_t)(x->head_dim / 2));
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

/* Prefill the model file `gp` on the tokens of the tools/hf_reference.py file `ref` and compare its
 * last logits (rel L2 < 1e-4), its argmax where transformers' margin is clear and its next-token
 * log-probabilities with transformers'. Returns the token count (0: no reference file). */
static int prefill_vs_ref(const char *gp, const char *ref) {
    FILE *f = fopen(ref, "rb");
    if (!f) return 0;
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
    const cJSON *ja = cJSON_GetObjectItem(r, "argmax"), *jm = cJSON_GetObjectItem(r, "argmax_margin");
    const cJSON *jp = cJSON_GetObjectItem(r, "next_logprob");
    int nt = cJSON_GetArraySize(jt), V = cJSON_GetArraySize(jl);
    int *tok = malloc(sizeof(int) * (size_t)nt);
    float *want = malloc(sizeof(float) * (size_t)V);
    for (int i = 0; i < nt; i++) tok[i] = cJSON_GetArrayItem(jt, i)->valueint;
    for (int i = 0; i < V; i++) want[i] = (float)cJSON_GetArrayItem(jl, i)->valuedouble;
    eng_model *m = NULL;
    eng_err err = {{0}};
    if (eng_model_load(&m, gp, &err)) fail_msg("%s: %s", gp, err.msg);
    assert_int_equal(m->cfg.vocab_size, V);
    eng_backend *be = eng_backend_cpu_create(&err);
    assert_non_null(be);
    eng_prefill_out out;
    if (be->prefill(be, m, tok, nt, NULL, &out, &err)) fail_msg("%s: prefill: %s", gp, err.msg);
    double rel = tu_rel_l2(out.last_logits, want, (size_t)V);
    const eng_config *c = &m->cfg;
    printf("%s: %d tokens%s%s, last-logits rel L2 vs transformers (%s) %.2e\n", gp, nt,
           c->rope_longrope ? (nt > c->rope_original_max_pos ? " (long factors" : " (short factors") : "",
           c->rope_longrope ? (c->sliding_window && nt > c->sliding_window ? ", sliding window)" : ")") : "",
           strrchr(ref, '/') + 1, rel);
    assert_true(rel < 1e-4);
    for (int i = 0; ja && jm && i < nt && i < cJSON_GetArraySize(ja); i++)
        if (cJSON_GetArrayItem(jm, i)->valuedouble > 1e-3)
            assert_int_equal(out.argmax[i], cJSON_GetArrayItem(ja, i)->valueint);
    for (int i = 0; jp && i + 1 < nt && i < cJSON_GetArraySize(jp); i++)
        assert_true(fabs(out.next_logprob[i] - cJSON_GetArrayItem(jp, i)->valuedouble) < 1e-3);
    eng_prefill_out_free(&out);
    be->destroy(be);
    eng_model_free(m);
    free(tok);
    free(want);
    cJSON_Delete(r);
    return nt;
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
        prefill_vs_ref(gp, rp);
    }
}

/* ------------------------------------------------------------------ phi3 */

/* Every tensor and the longrope fields of the GGUF Phi-3 equal the safetensors ones: the fused
 * attn_qkv / ffn_up as the same row-slice views, the factor tensors as the rope_scaling lists. */
static void test_phi3_f32(void **st) { (void)st; need_python(); compare_models(FIX "tiny-phi3", "tiny-phi3.gguf", 0); }
static void test_phi3_bf16(void **st) {
    (void)st;
    need_python();
    compare_models(FIX "tiny-phi3", "tiny-phi3-bf16.gguf", 0); /* bf16 checkpoint: exact */
}
static void test_phi3_q8_0(void **st) {
    (void)st;
    need_python();
    char dir[128];
    snprintf(dir, sizeof dir, "%s/phi3-64", tmpdir);
    compare_models(dir, "phi3-64-q8_0.gguf", 1.0 / 127 / 2 + 1.0 / 256);
}

/* The GGUF Phi-3 against transformers: 24 tokens (short factors, inside the window) and 116 tokens
 * (long factors, beyond the 48-token sliding window), from f32 and bf16 files. */
static void test_phi3_vs_transformers(void **st) {
    (void)st;
    need_python();
    if (access(FIX "tiny-phi3/reference.json", R_OK) || access(FIX "tiny-phi3/reference_short.json", R_OK)) skip();
    static const char *files[] = {"tiny-phi3.gguf", "tiny-phi3-bf16.gguf"};
    for (size_t k = 0; k < 2; k++) {
        char gp[256];
        snprintf(gp, sizeof gp, "%s/%s", tmpdir, files[k]);
        int ns = prefill_vs_ref(gp, FIX "tiny-phi3/reference_short.json");
        int nl = prefill_vs_ref(gp, FIX "tiny-phi3/reference.json");
        /* either side of original_context_length 32, and the long one past the window (48) */
        assert_true(ns >= 2 && ns <= 32);
        assert_true(nl > 48);
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

/* ------------------------------------------------------------------ phi3 metadata edits */

/* A GGUF file as editable lists: each KV as its raw serialised bytes (key, type, value) and each
 * tensor as name, dims, ggml type and data. ge_write writes them back (v3, alignment 32), so a
 * test can break exactly one thing of a real converted file. */
typedef struct {
    char key[96];
    const unsigned char *raw;
    size_t n;
} ge_kv;
typedef struct {
    char name[96];
    int ndim;
    int64_t ne[4];
    int type;
    const unsigned char *data;
    size_t nbytes;
} ge_t;
typedef struct {
    unsigned char *file;
    ge_kv kv[64];
    int nkv;
    ge_t t[64];
    int nt;
    unsigned char *owned[32]; /* replacement KVs and tensor data */
    int nowned;
} gedit;

static void ge_load(gedit *e, const char *path) {
    memset(e, 0, sizeof *e);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    e->file = malloc((size_t)n);
    assert_int_equal(fread(e->file, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    eng_gguf g;
    eng_err err = {{0}};
    if (eng_gguf_parse(&g, e->file, (size_t)n, path, &err)) fail_msg("%s", err.msg);
    assert_true(g.n_kv <= 64 && g.n_tensors <= 64 && g.n_tensors > 0);
    /* KVs lie back to back; the last one ends where the first tensor info (its name's length) starts */
    for (int64_t i = 0; i < g.n_kv; i++) {
        const unsigned char *a = (const unsigned char *)g.kv[i].key - 8;
        const unsigned char *b = i + 1 < g.n_kv ? (const unsigned char *)g.kv[i + 1].key - 8
                                                : (const unsigned char *)g.t[0].name - 8;
        snprintf(e->kv[i].key, sizeof e->kv[i].key, "%.*s", (int)g.kv[i].key_len, g.kv[i].key);
        e->kv[i].raw = a;
        e->kv[i].n = (size_t)(b - a);
    }
    e->nkv = (int)g.n_kv;
    for (int64_t i = 0; i < g.n_tensors; i++) {
        ge_t *t = &e->t[i];
        snprintf(t->name, sizeof t->name, "%.*s", (int)g.t[i].name_len, g.t[i].name);
        t->ndim = g.t[i].ndim;
        memcpy(t->ne, g.t[i].ne, sizeof t->ne);
        t->type = g.t[i].type;
        t->data = g.buf + g.data_off + g.t[i].offset;
        t->nbytes = (size_t)g.t[i].nbytes;
    }
    e->nt = (int)g.n_tensors;
    eng_gguf_free(&g);
}

static void ge_free(gedit *e) {
    free(e->file);
    for (int i = 0; i < e->nowned; i++) free(e->owned[i]);
}

static unsigned char *ge_own(gedit *e, size_t n) {
    assert_true(e->nowned < 32);
    return e->owned[e->nowned++] = calloc(1, n ? n : 1);
}

static int ge_kv_idx(const gedit *e, const char *key) {
    for (int i = 0; i < e->nkv; i++)
        if (!strcmp(e->kv[i].key, key)) return i;
    return -1;
}
static ge_t *ge_tensor(gedit *e, const char *name) {
    for (int i = 0; i < e->nt; i++)
        if (!strcmp(e->t[i].name, name)) return &e->t[i];
    fail_msg("no tensor %s", name);
    return NULL;
}

static void ge_drop_kv(gedit *e, const char *key) {
    int i = ge_kv_idx(e, key);
    if (i < 0) fail_msg("no key %s", key);
    memmove(&e->kv[i], &e->kv[i + 1], (size_t)(e->nkv - i - 1) * sizeof e->kv[0]);
    e->nkv--;
}
static void ge_drop_t(gedit *e, const char *name) {
    ge_t *t = ge_tensor(e, name);
    int i = (int)(t - e->t);
    memmove(&e->t[i], &e->t[i + 1], (size_t)(e->nt - i - 1) * sizeof e->t[0]);
    e->nt--;
}
static ge_t *ge_add_t(gedit *e, const char *name) {
    assert_true(e->nt < 64);
    ge_t *t = &e->t[e->nt++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    return t;
}

/* Set key to a scalar of GGUF type ty (value bytes vb of vn) or a string (ty 8, vb NUL-terminated). */
static void ge_set_kv(gedit *e, const char *key, uint32_t ty, const void *vb, size_t vn) {
    gb b = {0};
    gb_str(&b, key);
    gb_u32(&b, ty);
    if (ty == 8) gb_str(&b, vb);
    else gb_raw(&b, vb, vn);
    unsigned char *o = ge_own(e, b.n);
    memcpy(o, b.p, b.n);
    free(b.p);
    int i = ge_kv_idx(e, key);
    if (i < 0) {
        assert_true(e->nkv < 64);
        i = e->nkv++;
    }
    snprintf(e->kv[i].key, sizeof e->kv[i].key, "%s", key);
    e->kv[i].raw = o;
    e->kv[i].n = b.n;
}
static void ge_set_u32(gedit *e, const char *key, uint32_t v) { ge_set_kv(e, key, 4, &v, 4); }
static void ge_set_i32(gedit *e, const char *key, int32_t v) { ge_set_kv(e, key, 5, &v, 4); }
static void ge_set_f32(gedit *e, const char *key, float v) { ge_set_kv(e, key, 6, &v, 4); }

static void ge_write(const gedit *e, const char *path) {
    gb b = {0};
    gb_raw(&b, "GGUF", 4);
    gb_u32(&b, 3);
    gb_u64(&b, (uint64_t)e->nt);
    gb_u64(&b, (uint64_t)e->nkv);
    for (int i = 0; i < e->nkv; i++) gb_raw(&b, e->kv[i].raw, e->kv[i].n);
    uint64_t off = 0;
    for (int i = 0; i < e->nt; i++) {
        const ge_t *t = &e->t[i];
        gb_str(&b, t->name);
        gb_u32(&b, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) gb_u64(&b, (uint64_t)t->ne[d]);
        gb_u32(&b, (uint32_t)t->type);
        gb_u64(&b, off);
        off += (t->nbytes + 31) / 32 * 32;
    }
    gb_pad(&b, 32);
    for (int i = 0; i < e->nt; i++) {
        gb_raw(&b, e->t[i].data, e->t[i].nbytes);
        gb_pad(&b, 32);
    }
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b.p, 1, b.n, f), b.n);
    fclose(f);
    free(b.p);
}

/* Write e to a temp file and load it: 0 and the model, or -1 with the message in err. */
static int ge_try(const gedit *e, eng_model **m, eng_err *err) {
    char p[256];
    snprintf(p, sizeof p, "%s/edit.gguf", tmpdir);
    ge_write(e, p);
    *m = NULL;
    memset(err, 0, sizeof *err);
    return eng_model_load(m, p, err);
}

static void ge_base(gedit *e) {
    char p[256];
    snprintf(p, sizeof p, "%s/tiny-phi3.gguf", tmpdir);
    ge_load(e, p);
}

/* Copy of tensor `name`'s data (to modify), installed as its data. */
static float *ge_copy_f32(gedit *e, const char *name) {
    ge_t *t = ge_tensor(e, name);
    unsigned char *o = ge_own(e, t->nbytes);
    memcpy(o, t->data, t->nbytes);
    t->data = o;
    return (float *)o;
}

enum {
    F_LONG_SHORT, F_LONG_F16, F_LONG_2D, F_SHORT_ONLY, F_LONG_ONLY, F_SHORT_ZERO, F_LONG_NAN, F_NO_ORIG,
    F_ORIG_1, F_ATTN_NEG, F_ATTN_STR, F_SWA_STR, F_SWA_NEG, F_QKV_ROWS, F_UP_UNFUSED, F_ROPE_FREQS,
    F_PARTIAL, F_QKV_BIAS, F_NFAULTS
};

static void phi3_fault(gedit *e, int k) {
    switch (k) {
    case F_LONG_SHORT: { /* 8 factors where rope.dimension_count / 2 = 9 */
        ge_t *t = ge_tensor(e, "rope_factors_long.weight");
        t->ne[0] = 8, t->nbytes = 32;
        break;
    }
    case F_LONG_F16: {
        ge_t *t = ge_tensor(e, "rope_factors_long.weight");
        t->type = 1, t->nbytes = 18;
        break;
    }
    case F_LONG_2D: {
        ge_t *t = ge_tensor(e, "rope_factors_long.weight");
        t->ndim = 2, t->ne[1] = 1;
        break;
    }
    case F_SHORT_ONLY: ge_drop_t(e, "rope_factors_long.weight"); break;
    case F_LONG_ONLY: ge_drop_t(e, "rope_factors_short.weight"); break;
    case F_SHORT_ZERO: ge_copy_f32(e, "rope_factors_short.weight")[3] = 0.0f; break;
    case F_LONG_NAN: ge_copy_f32(e, "rope_factors_long.weight")[8] = NAN; break;
    case F_NO_ORIG: ge_drop_kv(e, "phi3.rope.scaling.original_context_length"); break;
    case F_ORIG_1: ge_set_u32(e, "phi3.rope.scaling.original_context_length", 1); break;
    case F_ATTN_NEG: ge_set_f32(e, "phi3.rope.scaling.attn_factor", -1.5f); break;
    case F_ATTN_STR: ge_set_kv(e, "phi3.rope.scaling.attn_factor", 8, "1.2", 0); break;
    case F_SWA_STR: ge_set_kv(e, "phi3.attention.sliding_window", 8, "48", 0); break;
    case F_SWA_NEG: ge_set_i32(e, "phi3.attention.sliding_window", -48); break;
    case F_QKV_ROWS: { /* q and k only: Dq + Dkv rows instead of Dq + 2 Dkv */
        ge_t *t = ge_tensor(e, "blk.1.attn_qkv.weight");
        t->ne[1] = 72 + 36, t->nbytes = (size_t)t->ne[0] * (size_t)t->ne[1] * 4;
        break;
    }
    case F_UP_UNFUSED: { /* a separate up projection (F rows) where llama.cpp's phi3 fuses gate and up */
        ge_t *t = ge_tensor(e, "blk.0.ffn_up.weight");
        t->ne[1] = 92, t->nbytes = (size_t)t->ne[0] * 92 * 4;
        break;
    }
    case F_ROPE_FREQS: {
        ge_t *t = ge_add_t(e, "rope_freqs.weight"), *l = ge_tensor(e, "rope_factors_long.weight");
        t->ndim = 1, t->ne[0] = 9, t->type = 0, t->data = l->data, t->nbytes = 36;
        break;
    }
    case F_PARTIAL: ge_set_u32(e, "phi3.rope.dimension_count", 12); break;
    case F_QKV_BIAS: {
        ge_t *t = ge_add_t(e, "blk.0.attn_qkv.bias"), *emb = ge_tensor(e, "token_embd.weight");
        t->ndim = 1, t->ne[0] = 144, t->type = 0, t->data = emb->data, t->nbytes = 144 * 4;
        break;
    }
    default: break;
    }
}

/* Malformed phi3 metadata and tensors, one fault at a time on the converted tiny-phi3: each is
 * refused naming what is wrong, and never crashes (ASan). */
static void test_phi3_refusals(void **st) {
    (void)st;
    need_python();
    static const char *want[F_NFAULTS][2] = {
        [F_LONG_SHORT] = {"rope_factors_long.weight has 8 entries", "= 9 expected"},
        [F_LONG_F16] = {"rope_factors_long.weight is F16", "must be F32"},
        [F_LONG_2D] = {"rope_factors_long.weight has 2 dims", "1-D list"},
        [F_SHORT_ONLY] = {"rope_factors_short.weight without rope_factors_long.weight", "both"},
        [F_LONG_ONLY] = {"rope_factors_long.weight without rope_factors_short.weight", "both"},
        [F_SHORT_ZERO] = {"rope_factors_short.weight[3] = 0", "positive"},
        [F_LONG_NAN] = {"rope_factors_long.weight[8]", "positive finite"},
        [F_NO_ORIG] = {"phi3.rope.scaling.original_context_length", "original context"},
        [F_ORIG_1] = {"phi3.rope.scaling.original_context_length\" = 1", "out of range"},
        [F_ATTN_NEG] = {"phi3.rope.scaling.attn_factor = -1.5", "(0, 1e6]"},
        [F_ATTN_STR] = {"phi3.rope.scaling.attn_factor", "not a number"},
        [F_SWA_STR] = {"phi3.attention.sliding_window", "not an integer"},
        [F_SWA_NEG] = {"phi3.attention.sliding_window\" = -48", "out of range"},
        [F_QKV_ROWS] = {"blk.1.attn_qkv.weight\" has ggml shape [72, 108], expected [72, 144]", "phi3 fuses q, k, v"},
        [F_UP_UNFUSED] = {"blk.0.ffn_up.weight\" has ggml shape [72, 92], expected [72, 184]", "phi3 fuses gate, up"},
        [F_ROPE_FREQS] = {"rope_freqs.weight in a phi3 file", "rope_factors_long/short"},
        [F_PARTIAL] = {"partial rotary", "12"},
        [F_QKV_BIAS] = {"blk.0.attn_qkv.bias", "no q/k/v biases"},
    };
    for (int k = 0; k < F_NFAULTS; k++) {
        gedit e;
        ge_base(&e);
        phi3_fault(&e, k);
        eng_model *m;
        eng_err err;
        int rc = ge_try(&e, &m, &err);
        if (rc == 0 || !strstr(err.msg, want[k][0]) || !strstr(err.msg, want[k][1]))
            fail_msg("fault %d: rc %d, message \"%s\"; wanted \"%s\" and \"%s\"", k, rc, err.msg, want[k][0],
                     want[k][1]);
        assert_null(m);
        ge_free(&e);
    }
}

/* What llama.cpp's phi3 also accepts: no factor tensors (Phi-3-mini-4k: plain RoPE), no sliding
 * window (Phi-4), no attn_factor (derived as transformers does), separate attn_q/k/v. */
static void test_phi3_variants(void **st) {
    (void)st;
    need_python();
    eng_model *full = NULL, *m = NULL;
    eng_err err = {{0}};
    char p[256];
    snprintf(p, sizeof p, "%s/tiny-phi3.gguf", tmpdir);
    if (eng_model_load(&full, p, &err)) fail_msg("%s", err.msg);
    assert_int_equal(full->cfg.arch, ENG_ARCH_PHI3);
    assert_int_equal(full->cfg.rope_longrope, 1);
    assert_int_equal(full->cfg.rope_original_max_pos, 32);
    assert_int_equal(full->cfg.sliding_window, 48);
    assert_string_equal(full->cfg.torch_dtype, "gguf-F32");
    /* the converter's attn_factor: sqrt(1 + ln(4096 / 32) / ln 32) */
    assert_true(fabs(full->cfg.rope_attn_factor - sqrt(1 + log(128.0) / log(32.0))) < 1e-6);

    gedit e;
    ge_base(&e); /* 4k-style: no factors, no attn factor */
    ge_drop_t(&e, "rope_factors_long.weight");
    ge_drop_t(&e, "rope_factors_short.weight");
    ge_drop_kv(&e, "phi3.rope.scaling.attn_factor");
    if (ge_try(&e, &m, &err)) fail_msg("no factors: %s", err.msg);
    assert_int_equal(m->cfg.rope_longrope, 0);
    assert_int_equal(m->cfg.sliding_window, 48);
    eng_model_free(m);
    ge_free(&e);

    ge_base(&e); /* Phi-4 style: sliding_window 0 means none; absent the same */
    ge_set_u32(&e, "phi3.attention.sliding_window", 0);
    if (ge_try(&e, &m, &err)) fail_msg("window 0: %s", err.msg);
    assert_int_equal(m->cfg.sliding_window, 0);
    eng_model_free(m);
    ge_drop_kv(&e, "phi3.attention.sliding_window");
    if (ge_try(&e, &m, &err)) fail_msg("no window: %s", err.msg);
    assert_int_equal(m->cfg.sliding_window, 0);
    eng_model_free(m);
    ge_free(&e);

    ge_base(&e); /* no attn_factor: eng_config derives the converter's value */
    ge_drop_kv(&e, "phi3.rope.scaling.attn_factor");
    if (ge_try(&e, &m, &err)) fail_msg("no attn_factor: %s", err.msg);
    assert_true(fabsf(m->cfg.rope_attn_factor - full->cfg.rope_attn_factor) <= 1e-6f);
    eng_model_free(m);
    ge_free(&e);

    ge_base(&e); /* attn_qkv split into attn_q / attn_k / attn_v (rows q 72, k 36, v 36 of 72 f32) */
    for (int l = 0; l < 2; l++) {
        char nm[64];
        snprintf(nm, sizeof nm, "blk.%d.attn_qkv.weight", l);
        ge_t f = *ge_tensor(&e, nm);
        ge_drop_t(&e, nm);
        static const char *part[] = {"attn_q", "attn_k", "attn_v"};
        static const int64_t r0[] = {0, 72, 108}, rows[] = {72, 36, 36};
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, part[k]);
            ge_t *t = ge_add_t(&e, nm);
            t->ndim = 2, t->ne[0] = 72, t->ne[1] = rows[k], t->type = f.type;
            t->data = f.data + (size_t)r0[k] * 72 * 4, t->nbytes = (size_t)rows[k] * 72 * 4;
        }
    }
    snprintf(p, sizeof p, "%s/tiny-phi3-split.gguf", tmpdir);
    ge_write(&e, p);
    ge_free(&e);
    if (eng_model_load(&m, p, &err)) fail_msg("split q/k/v: %s", err.msg);
    assert_int_equal(m->n_params, full->n_params);
    tensors_equal(&m->layers[1].wk, &full->layers[1].wk, 0, "split wk");
    tensors_equal(&m->layers[1].wv, &full->layers[1].wv, 0, "split wv");
    eng_model_free(m);
    if (access(FIX "tiny-phi3/reference.json", R_OK) == 0)
        assert_true(prefill_vs_ref(p, FIX "tiny-phi3/reference.json") > 48);
    eng_model_free(full);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),       cmocka_unit_test(test_parse_refusals),
        cmocka_unit_test(test_llama_f32),         cmocka_unit_test(test_llama_bf16),
        cmocka_unit_test(test_qwen2_f16),         cmocka_unit_test(test_sharded_bf16),
        cmocka_unit_test(test_llama3_rope),       cmocka_unit_test(test_q8_0),
        cmocka_unit_test(test_prefill_vs_transformers), cmocka_unit_test(test_model_refusals),
        cmocka_unit_test(test_phi3_f32),          cmocka_unit_test(test_phi3_bf16),
        cmocka_unit_test(test_phi3_q8_0),         cmocka_unit_test(test_phi3_vs_transformers),
        cmocka_unit_test(test_phi3_refusals),     cmocka_unit_test(test_phi3_variants),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
