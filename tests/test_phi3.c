/* test_phi3: Phi-3 (Phi3ForCausalLM) support end to end: config.json parsing (longrope / su factor
 * lists, original context, derived factor and cos/sin factor, refusals by name), the loader's
 * row-slice views of the fused qkv_proj / gate_up_proj, the shared RoPE table (short vs long
 * factors by sequence length), the CPU prefill against transformers for a sequence within and one
 * beyond original_max_position_embeddings (tests/fixtures/tiny-phi3/reference_short.json and
 * reference.json, made by tools/hf_reference.py), the KV-cache decoder, and `attnscope info`. */
#include "test_util.h"

#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_backend.h"
#include "eng_cpu.h"
#include "eng_decode.h"
#include "eng_model.h"

#define PHI3 "tests/fixtures/tiny-phi3"

/* ------------------------------------------------------------------ helpers */

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t got = b ? fread(b, 1, (size_t)(n > 0 ? n : 0), f) : 0;
    fclose(f);
    if (b) b[got] = 0;
    if (len) *len = got;
    return b;
}

static void spit(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static int parse(const char *json, eng_config *c, eng_err *e) {
    return eng_config_parse(c, json, strlen(json), "cfg.json", e);
}

static void expect_cfg_fail(const char *json, const char *n1, const char *n2) {
    eng_config c;
    eng_err e = {{0}};
    int rc = parse(json, &c, &e);
    if (rc == 0 || !strstr(e.msg, n1) || (n2 && !strstr(e.msg, n2)))
        print_error("config %s: rc %d, message '%s', wanted '%s' and '%s'\n", json, rc, e.msg, n1, n2 ? n2 : "");
    assert_int_equal(rc, -1);
    assert_non_null(strstr(e.msg, n1));
    if (n2) assert_non_null(strstr(e.msg, n2));
}

/* "[a, a+step, ...]" with n entries into buf. */
static const char *list(char *buf, size_t cap, int n, double a, double step) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%.9g", i ? "," : "", a + step * i);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* Phi-3-mini-128k-instruct's shapes (head dim 96: 48 factors per list) with rope_scaling `rs`. */
static int parse_mini(const char *rs, const char *extra, eng_config *c, eng_err *e) {
    char js[8192];
    snprintf(js, sizeof js,
             "{\"architectures\":[\"Phi3ForCausalLM\"],\"model_type\":\"phi3\",\"hidden_size\":3072,"
             "\"intermediate_size\":8192,\"num_hidden_layers\":32,\"num_attention_heads\":32,"
             "\"num_key_value_heads\":32,\"vocab_size\":32064,\"max_position_embeddings\":131072,"
             "\"original_max_position_embeddings\":4096,\"rms_norm_eps\":1e-05,\"rope_theta\":10000.0,"
             "\"sliding_window\":262144,\"hidden_act\":\"silu\",\"bos_token_id\":1,\"eos_token_id\":32000,"
             "\"pad_token_id\":32000,\"tie_word_embeddings\":false,\"rope_scaling\":%s%s}",
             rs, extra ? extra : "");
    return parse(js, c, e);
}

/* ------------------------------------------------------------------ config */

static void test_phi3_config(void **state) {
    (void)state;
    eng_config c;
    eng_err e = {{0}};
    char s[2048], l[2048], rs[4400];
    list(s, sizeof s, 48, 1.0, 0.01), list(l, sizeof l, 48, 1.08, 1.25);
    snprintf(rs, sizeof rs, "{\"type\":\"longrope\",\"short_factor\":%s,\"long_factor\":%s}", s, l);
    if (parse_mini(rs, NULL, &c, &e)) fail_msg("%s", e.msg);
    assert_int_equal(c.arch, ENG_ARCH_PHI3);
    assert_string_equal(c.arch_name, "Phi3ForCausalLM");
    assert_int_equal(c.head_dim, 96);
    assert_int_equal(c.sliding_window, 262144);
    assert_int_equal(c.qkv_bias, 0);
    assert_int_equal(c.rope_llama3, 0);
    assert_int_equal(c.rope_longrope, 1);
    assert_int_equal(c.rope_original_max_pos, 4096);
    /* factor = 131072 / 4096 = 32; cos/sin factor sqrt(1 + ln 32 / ln 4096) = sqrt(1 + 5/12) */
    assert_true(c.rope_factor == 32.0f);
    assert_true(fabs(c.rope_attn_factor - sqrt(17.0 / 12.0)) < 1e-6);
    for (int i = 0; i < 48; i++) {
        assert_true(c.rope_short_factor[i] == (float)(1.0 + 0.01 * i));
        assert_true(c.rope_long_factor[i] == (float)(1.08 + 1.25 * i));
    }
    /* the older "su" name, rope_type spelling, explicit factor and attention_factor win */
    snprintf(rs, sizeof rs,
             "{\"rope_type\":\"su\",\"short_factor\":%s,\"long_factor\":%s,\"factor\":4.0,\"attention_factor\":1.25,"
             "\"original_max_position_embeddings\":2048}", s, l);
    if (parse_mini(rs, NULL, &c, &e)) fail_msg("%s", e.msg);
    assert_int_equal(c.rope_longrope, 1);
    assert_int_equal(c.rope_original_max_pos, 2048); /* rope_scaling's own beats the top-level one */
    assert_true(c.rope_factor == 4.0f);
    assert_true(c.rope_attn_factor == 1.25f);
    /* factor <= 1 (max context == original): cos/sin untouched */
    snprintf(rs, sizeof rs, "{\"type\":\"longrope\",\"short_factor\":%s,\"long_factor\":%s,\"factor\":1.0}", s, l);
    if (parse_mini(rs, NULL, &c, &e)) fail_msg("%s", e.msg);
    assert_true(c.rope_attn_factor == 1.0f);
    /* Phi-3-mini-4k: no rope_scaling, sliding window 2047; partial_rotary_factor 1.0 is fine */
    if (parse_mini("null", ",\"partial_rotary_factor\":1.0", &c, &e)) fail_msg("%s", e.msg);
    assert_int_equal(c.rope_longrope, 0);
    assert_int_equal(c.sliding_window, 262144);
    assert_int_equal(parse("{\"model_type\":\"phi3\",\"hidden_size\":64,\"intermediate_size\":100,"
                           "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":300,"
                           "\"sliding_window\":2047}", &c, &e), 0);
    assert_int_equal(c.arch, ENG_ARCH_PHI3);
    assert_int_equal(c.sliding_window, 2047);
    assert_int_equal(c.max_position_embeddings, 4096); /* Phi3Config's default */
}

static void test_phi3_config_refusals(void **state) {
    (void)state;
    eng_config c;
    eng_err e = {{0}};
    char s[2048], l[2048], rs[4400];
    list(s, sizeof s, 48, 1.0, 0.01), list(l, sizeof l, 48, 1.08, 1.25);
    char s47[2048], l49[2048];
    list(s47, sizeof s47, 47, 1.0, 0.01), list(l49, sizeof l49, 49, 1.0, 0.5);
    struct { const char *rs, *extra, *n1, *n2; } cases[] = {
        {"{\"type\":\"longrope\",\"short_factor\":S47,\"long_factor\":L}", NULL, "short_factor", "47 entries"},
        {"{\"type\":\"longrope\",\"short_factor\":S,\"long_factor\":L49}", NULL, "long_factor", "48 expected"},
        {"{\"type\":\"longrope\",\"short_factor\":S}", NULL, "long_factor", "missing"},
        {"{\"type\":\"longrope\",\"short_factor\":3,\"long_factor\":L}", NULL, "short_factor", "list"},
        {"{\"type\":\"longrope\",\"short_factor\":S,\"long_factor\":L,\"original_max_position_embeddings\":1}", NULL,
         "original_max_position_embeddings", "rope_scaling"},
        {"{\"type\":\"longrope\",\"short_factor\":S,\"long_factor\":L,\"attention_factor\":\"big\"}", NULL,
         "attention_factor", NULL},
        {"{\"type\":\"yarn\",\"factor\":4}", NULL, "yarn", "longrope"},
        {"null", ",\"partial_rotary_factor\":0.75", "partial_rotary_factor", "0.75"},
        {"null", ",\"attention_bias\":true", "attention_bias", NULL},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        /* substitute the lists: S47, L49, S, L (longest names first) */
        char t[4400] = "";
        const char *p = cases[k].rs;
        size_t o = 0;
        while (*p && o < sizeof t - 1) {
            const char *sub = NULL;
            size_t skip = 0;
            if (!strncmp(p, "S47", 3)) sub = s47, skip = 3;
            else if (!strncmp(p, "L49", 3)) sub = l49, skip = 3;
            else if (*p == 'S' && (p[1] == ',' || p[1] == '}')) sub = s, skip = 1;
            else if (*p == 'L' && (p[1] == ',' || p[1] == '}')) sub = l, skip = 1;
            if (sub) {
                o += (size_t)snprintf(t + o, sizeof t - o, "%s", sub);
                p += skip;
            } else
                t[o++] = *p++, t[o] = 0;
        }
        snprintf(rs, sizeof rs, "%s", t);
        int rc = parse_mini(rs, cases[k].extra, &c, &e);
        if (rc == 0 || !strstr(e.msg, cases[k].n1) || (cases[k].n2 && !strstr(e.msg, cases[k].n2)))
            print_error("case %zu: rc %d, message '%s', wanted '%s' and '%s'\n", k, rc, e.msg, cases[k].n1,
                        cases[k].n2 ? cases[k].n2 : "");
        assert_int_equal(rc, -1);
        assert_non_null(strstr(e.msg, cases[k].n1));
        if (cases[k].n2) assert_non_null(strstr(e.msg, cases[k].n2));
        assert_non_null(strstr(e.msg, "cfg.json"));
    }
    /* a zero or non-number factor entry is named with its index */
    list(s, sizeof s, 48, 0.0, 0.01);
    snprintf(rs, sizeof rs, "{\"type\":\"longrope\",\"short_factor\":%s,\"long_factor\":%s}", s, l);
    assert_int_equal(parse_mini(rs, NULL, &c, &e), -1);
    assert_non_null(strstr(e.msg, "\"short_factor\"[0] is not a positive number"));
    list(s47, sizeof s47, 47, 1.0, 0.01);
    snprintf(rs, sizeof rs, "{\"type\":\"longrope\",\"short_factor\":[\"x\",%s,\"long_factor\":%s}", s47 + 1, l);
    assert_int_equal(parse_mini(rs, NULL, &c, &e), -1);
    assert_non_null(strstr(e.msg, "[0]"));
    /* unknown architectures list Phi3ForCausalLM among the supported */
    expect_cfg_fail("{\"architectures\":[\"PhiForCausalLM\"],\"hidden_size\":64}", "PhiForCausalLM", "Phi3ForCausalLM");
}

/* ------------------------------------------------------------------ RoPE table */

static void test_phi3_rope_table(void **state) {
    (void)state;
    eng_config c;
    memset(&c, 0, sizeof c);
    c.rope_theta = 10000.0f, c.rope_longrope = 1, c.rope_original_max_pos = 32, c.rope_attn_factor = 1.5f;
    const int d = 18;
    for (int i = 0; i < d / 2; i++) c.rope_short_factor[i] = 1.0f + 0.1f * i, c.rope_long_factor[i] = 2.0f + 3.0f * i;
    float inv[9], plain[9];
    for (int len = 1; len <= 200; len += 31) {
        const float sc = eng_cpu_rope_table(&c, d, len, inv);
        assert_true(sc == 1.5f);
        const float *ext = len > 32 ? c.rope_long_factor : c.rope_short_factor;
        for (int i = 0; i < d / 2; i++) {
            const double want = 1.0 / (ext[i] * pow(10000.0, 2.0 * i / d));
            assert_true(fabs(inv[i] - want) <= 1e-6 * want); /* float32 exponent and powf, as transformers */
        }
    }
    /* the switch is at seq_len > original: 32 positions use the short factors, 33 the long */
    eng_cpu_rope_table(&c, d, 32, inv);
    assert_true(fabsf(inv[8] * c.rope_short_factor[8] - inv[0] * c.rope_short_factor[0] * powf(10000.0f, -16.0f / 18)) <
                1e-6f);
    float inv33[9];
    eng_cpu_rope_table(&c, d, 33, inv33);
    for (int i = 1; i < d / 2; i++) assert_true(inv33[i] < inv[i]);
    /* eng_cpu_rope_freqs is the short table; plain RoPE has factor 1 */
    eng_cpu_rope_freqs(&c, d, plain);
    eng_cpu_rope_table(&c, d, 1, inv);
    assert_memory_equal(plain, inv, sizeof inv);
    c.rope_longrope = 0;
    assert_true(eng_cpu_rope_table(&c, d, 1000, inv) == 1.0f);
    for (int i = 0; i < d / 2; i++) {
        const double want = pow(10000.0, -2.0 * i / d);
        assert_true(fabs(inv[i] - want) < 1e-6 * want);
    }
}

/* ------------------------------------------------------------------ loader */

static void test_phi3_load(void **state) {
    (void)state;
    if (access(PHI3 "/config.json", R_OK)) skip();
    eng_model *m = NULL;
    eng_err err = {{0}};
    if (eng_model_load(&m, PHI3, &err)) fail_msg("%s", err.msg);
    const eng_config *c = &m->cfg;
    assert_int_equal(c->arch, ENG_ARCH_PHI3);
    assert_int_equal(c->rope_longrope, 1);
    assert_int_equal(c->rope_original_max_pos, 32);
    assert_int_equal(c->sliding_window, 48);
    assert_true(c->rope_factor == 128.0f); /* 4096 / 32 */
    assert_true(fabs(c->rope_attn_factor - sqrt(1.0 + log(128.0) / log(32.0))) < 1e-6);
    const int64_t C = 72, Dq = 72, Dkv = 36, F = 92;
    assert_int_equal(m->n_params, 110376); /* as tools/make_tiny_model.py counts: each fused matrix once */
    for (int l = 0; l < c->n_layers; l++) {
        const eng_layer_weights *w = &m->layers[l];
        const unsigned char *q = w->wq.data;
        assert_int_equal(w->wq.dtype, ENG_DT_BF16);
        assert_int_equal(w->wq.shape[0], Dq), assert_int_equal(w->wq.shape[1], C);
        assert_int_equal(w->wk.shape[0], Dkv), assert_int_equal(w->wv.shape[0], Dkv);
        assert_int_equal(w->wk.numel, Dkv * C);
        /* q rows, then k rows, then v rows of one mapped matrix */
        assert_ptr_equal(w->wk.data, q + Dq * C * 2);
        assert_ptr_equal(w->wv.data, q + (Dq + Dkv) * C * 2);
        assert_non_null(strstr(w->wk.name, "self_attn.qkv_proj.weight"));
        const unsigned char *g = w->w_gate.data;
        assert_int_equal(w->w_gate.shape[0], F), assert_int_equal(w->w_up.shape[0], F);
        assert_ptr_equal(w->w_up.data, g + F * C * 2);
        assert_non_null(strstr(w->w_up.name, "mlp.gate_up_proj.weight"));
        assert_null(w->bq.data);
    }
    eng_model_free(m);
}

/* fixture copy with model.safetensors's header edited by `edit` */
static void copy_edit(char *dir, void (*edit)(cJSON *)) {
    strcpy(dir, "/tmp/attnscope-phi3-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char p[600];
    size_t n = 0;
    char *cfg = slurp(PHI3 "/config.json", &n);
    assert_non_null(cfg);
    snprintf(p, sizeof p, "%s/config.json", dir);
    spit(p, cfg, n);
    free(cfg);
    unsigned char *b = (unsigned char *)slurp(PHI3 "/model.safetensors", &n);
    assert_non_null(b);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | b[i];
    char *h = malloc(hl + 1);
    memcpy(h, b + 8, hl);
    h[hl] = 0;
    cJSON *root = cJSON_Parse(h);
    assert_non_null(root);
    edit(root);
    char *nh = cJSON_PrintUnformatted(root);
    size_t nl = strlen(nh), dl = n - 8 - hl;
    unsigned char *out = malloc(8 + nl + dl);
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)nl >> (8 * i));
    memcpy(out + 8, nh, nl);
    memcpy(out + 8 + nl, b + 8 + hl, dl);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    spit(p, out, 8 + nl + dl);
    free(out), free(nh), free(h), free(b);
    cJSON_Delete(root);
}

static void rm_dir(const char *dir) {
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", dir), unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir), unlink(p);
    rmdir(dir);
}

static void e_no_qkv(cJSON *r) {
    cJSON_DeleteItemFromObjectCaseSensitive(r, "model.layers.1.self_attn.qkv_proj.weight");
}
static void e_gate_up_rows(cJSON *r) {
    /* (184, 72) relabelled (92, 144): same bytes, wrong shape */
    cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "model.layers.0.mlp.gate_up_proj.weight");
    cJSON_ReplaceItemInObjectCaseSensitive(e, "shape", cJSON_CreateIntArray((const int[]){92, 144}, 2));
}

static void test_phi3_load_refusals(void **state) {
    (void)state;
    if (access(PHI3 "/config.json", R_OK)) skip();
    struct { void (*edit)(cJSON *); const char *n1, *n2; } cases[] = {
        {e_no_qkv, "missing tensor", "model.layers.1.self_attn.qkv_proj.weight"},
        {e_gate_up_rows, "model.layers.0.mlp.gate_up_proj.weight", "[184, 72]"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char dir[64];
        copy_edit(dir, cases[k].edit);
        eng_model *m = (eng_model *)1;
        eng_err err = {{0}};
        int rc = eng_model_load(&m, dir, &err);
        if (rc == 0 || !strstr(err.msg, cases[k].n1) || !strstr(err.msg, cases[k].n2))
            print_error("case %zu: rc %d, '%s'\n", k, rc, err.msg);
        assert_int_equal(rc, -1);
        assert_null(m);
        assert_non_null(strstr(err.msg, cases[k].n1));
        assert_non_null(strstr(err.msg, cases[k].n2));
        rm_dir(dir);
    }
}

/* ------------------------------------------------------------------ against transformers */

/* The CPU prefill of fixture tiny-phi3 on the tokens of `ref` (a tools/hf_reference.py file) against
 * its logits; returns the token count. */
static int check_ref(const char *ref) {
    char *txt = slurp(ref, NULL);
    if (!txt) return 0;
    cJSON *r = cJSON_Parse(txt);
    free(txt);
    assert_non_null(r);
    cJSON *jt = cJSON_GetObjectItem(r, "tokens"), *jl = cJSON_GetObjectItem(r, "last_logits");
    cJSON *ja = cJSON_GetObjectItem(r, "argmax"), *jm = cJSON_GetObjectItem(r, "argmax_margin");
    cJSON *jp = cJSON_GetObjectItem(r, "next_logprob");
    assert_true(cJSON_IsArray(jt) && cJSON_IsArray(jl) && cJSON_IsArray(ja) && cJSON_IsArray(jm) && cJSON_IsArray(jp));
    const int n = cJSON_GetArraySize(jt), V = cJSON_GetArraySize(jl);
    int *tok = malloc(sizeof(int) * (size_t)n);
    float *want = malloc(sizeof(float) * (size_t)V);
    for (int i = 0; i < n; i++) tok[i] = cJSON_GetArrayItem(jt, i)->valueint;
    for (int i = 0; i < V; i++) want[i] = (float)cJSON_GetArrayItem(jl, i)->valuedouble;
    eng_model *m = NULL;
    eng_err err = {{0}};
    if (eng_model_load(&m, PHI3, &err)) fail_msg("%s", err.msg);
    assert_int_equal(m->cfg.vocab_size, V);
    eng_backend *be = eng_backend_cpu_create(&err);
    eng_prefill_out out;
    assert_int_equal(be->prefill(be, m, tok, n, NULL, &out, &err), 0);
    const double rel = tu_rel_l2(out.last_logits, want, (size_t)V);
    print_message("%s: %d tokens (%s factors%s), last-logits rel L2 vs transformers %.2e\n", ref, n,
                  n > m->cfg.rope_original_max_pos ? "long" : "short",
                  n > m->cfg.sliding_window ? ", sliding window" : "", rel);
    assert_true(rel < 1e-4);
    for (int i = 0; i < n; i++) {
        if (cJSON_GetArrayItem(jm, i)->valuedouble > 1e-3)
            assert_int_equal(out.argmax[i], cJSON_GetArrayItem(ja, i)->valueint);
        if (i + 1 < n) assert_true(fabs(out.next_logprob[i] - cJSON_GetArrayItem(jp, i)->valuedouble) < 1e-3);
    }
    eng_prefill_out_free(&out);
    be->destroy(be);
    eng_model_free(m);
    free(tok), free(want);
    cJSON_Delete(r);
    return n;
}

static void test_phi3_vs_transformers(void **state) {
    (void)state;
    if (access(PHI3 "/reference.json", R_OK) || access(PHI3 "/reference_short.json", R_OK)) skip();
    const int ns = check_ref(PHI3 "/reference_short.json"), nl = check_ref(PHI3 "/reference.json");
    /* the two sequences sit on either side of original_max_position_embeddings (32) */
    assert_true(ns >= 2 && ns <= 32);
    assert_true(nl > 32);
}

/* ------------------------------------------------------------------ decoder */

/* One decode step after an n-token prefill equals the last logits of an (n+1)-token prefill while
 * both sit on the same side of the original context (transformers picks the factors per forward). */
static void decode_vs_prefill(const eng_model *m, eng_backend *be, const int *tok, int n) {
    eng_err err = {{0}};
    eng_prefill_opts po;
    memset(&po, 0, sizeof po);
    po.keep_qkv = 1;
    eng_prefill_out pre, full;
    assert_int_equal(be->prefill(be, m, tok, n, &po, &pre, &err), 0);
    assert_int_equal(be->prefill(be, m, tok, n + 1, NULL, &full, &err), 0);
    eng_decoder *d = NULL;
    if (eng_decoder_create(&d, m, &pre, 1, &err)) fail_msg("%s", err.msg);
    float *lg = malloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    assert_int_equal(eng_decoder_step(d, tok[n], lg, &err), 0);
    const double rel = tu_rel_l2(lg, full.last_logits, (size_t)m->cfg.vocab_size);
    print_message("decode step at position %d vs %d-token prefill: rel L2 %.2e\n", n, n + 1, rel);
    assert_true(rel < 1e-5);
    free(lg);
    eng_decoder_free(d);
    eng_prefill_out_free(&pre), eng_prefill_out_free(&full);
}

static void test_phi3_decode(void **state) {
    (void)state;
    if (access(PHI3 "/config.json", R_OK)) skip();
    eng_model *m = NULL;
    eng_err err = {{0}};
    if (eng_model_load(&m, PHI3, &err)) fail_msg("%s", err.msg);
    eng_backend *be = eng_backend_cpu_create(&err);
    int tok[64];
    uint64_t s = 5;
    for (int i = 0; i < 64; i++) tok[i] = (int)(tu_rand_u64(&s) % 256);
    decode_vs_prefill(m, be, tok, 12); /* short factors on both sides */
    decode_vs_prefill(m, be, tok, 40); /* long factors on both sides */
    be->destroy(be);
    eng_model_free(m);
}

/* ------------------------------------------------------------------ CLI */

static void test_phi3_cli_info(void **state) {
    (void)state;
    if (access(tu_bin(), X_OK) || access(PHI3 "/config.json", R_OK)) skip();
    char cmd[512], out[8192];
    snprintf(cmd, sizeof cmd, "%s info --model " PHI3 " --json /tmp/attnscope-phi3-info-%d.json 2>&1", tu_bin(),
             (int)getpid());
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(out, "Phi3ForCausalLM"));
    assert_non_null(strstr(out, "longrope scaling (factor 128, cos/sin x 1.54919"));
    assert_non_null(strstr(out, "up to 32 tokens"));
    assert_non_null(strstr(out, "sliding window 48"));
    assert_non_null(strstr(out, "110376"));
    char jp[128];
    snprintf(jp, sizeof jp, "/tmp/attnscope-phi3-info-%d.json", (int)getpid());
    char *js = slurp(jp, NULL);
    assert_non_null(js);
    unlink(jp);
    cJSON *j = cJSON_Parse(js);
    free(js);
    cJSON *rs = cJSON_GetObjectItem(j, "rope_scaling");
    assert_non_null(rs);
    assert_string_equal(cJSON_GetObjectItem(rs, "rope_type")->valuestring, "longrope");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(rs, "long_factor")), 9);
    assert_int_equal(cJSON_GetObjectItem(rs, "original_max_position_embeddings")->valueint, 32);
    cJSON_Delete(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phi3_config),       cmocka_unit_test(test_phi3_config_refusals),
        cmocka_unit_test(test_phi3_rope_table),   cmocka_unit_test(test_phi3_load),
        cmocka_unit_test(test_phi3_load_refusals), cmocka_unit_test(test_phi3_vs_transformers),
        cmocka_unit_test(test_phi3_decode),       cmocka_unit_test(test_phi3_cli_info),
    };
    return cmocka_run_group_tests_name("phi3", tests, NULL, NULL);
}
