/* test_forward: the CPU reference prefill (eng_cpu.c, eng_attn_dense.c) and `attnscope run`:
 * RoPE and RMSNorm against direct formulas, dense attention against brute-force softmax, whole
 * prefills against a plain double-precision forward written here, against Hugging Face
 * transformers (tests/fixtures/<name>/reference.json), and the CLI's errors. */
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

#include <cjson/cJSON.h>

#include "eng_attn.h"
#include "eng_backend.h"
#include "eng_cpu.h"
#include "eng_model.h"
#include "eng_pattern.h"

/* ------------------------------------------------------------ RoPE, RMSNorm, exp */

static void test_rope_formula(void **state) {
    (void)state;
    eng_config cfg = {0};
    cfg.rope_theta = 10000.0f;
    const int n = 9, H = 3, d = 18, pos0 = 5;
    float inv[9], x[9 * 3 * 18], ref[9 * 3 * 18];
    uint64_t s = 11;
    tu_fill(x, sizeof x / sizeof x[0], &s, 1.0f);
    eng_cpu_rope_freqs(&cfg, d, inv);
    for (int i = 0; i < d / 2; i++) assert_true(fabs(inv[i] - pow(10000.0, -2.0 * i / d)) < 1e-6 * pow(10000.0, -2.0 * i / d) + 1e-12);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < H; h++) {
            const float *a = x + (t * H + h) * d;
            double *dummy = NULL;
            (void)dummy;
            for (int i = 0; i < d / 2; i++) {
                double ang = (pos0 + t) * pow(10000.0, -2.0 * i / d);
                ref[(t * H + h) * d + i] = (float)(a[i] * cos(ang) - a[i + d / 2] * sin(ang));
                ref[(t * H + h) * d + i + d / 2] = (float)(a[i + d / 2] * cos(ang) + a[i] * sin(ang));
            }
        }
    eng_cpu_rope_apply(x, n, H, d, pos0, inv);
    for (int i = 0; i < n * H * d; i++) assert_true(fabsf(x[i] - ref[i]) < 2e-5f);
}

/* transformers' _compute_llama3_parameters in double: low frequencies divided by factor, high ones
 * kept, the band between interpolated. */
static void test_rope_llama3(void **state) {
    (void)state;
    eng_config cfg = {0};
    cfg.rope_theta = 500000.0f, cfg.rope_llama3 = 1, cfg.rope_factor = 8.0f;
    cfg.rope_low_freq_factor = 1.0f, cfg.rope_high_freq_factor = 4.0f, cfg.rope_original_max_pos = 64;
    const int d = 18;
    float inv[9];
    eng_cpu_rope_freqs(&cfg, d, inv);
    int nlow = 0, nhigh = 0, nmid = 0;
    for (int i = 0; i < d / 2; i++) {
        double f = pow(500000.0, -2.0 * i / d), wl = 2 * M_PI / f, want;
        if (wl < 64.0 / 4.0)
            want = f, nhigh++;
        else if (wl > 64.0 / 1.0)
            want = f / 8.0, nlow++;
        else {
            double sm = (64.0 / wl - 1.0) / (4.0 - 1.0);
            want = (1 - sm) * f / 8.0 + sm * f, nmid++;
        }
        assert_true(fabs(inv[i] - want) <= 1e-5 * want);
    }
    assert_true(nlow > 0 && nhigh > 0 && nmid > 0); /* the test covers all three branches */
}

static void test_rmsnorm(void **state) {
    (void)state;
    const int n = 4, C = 37;
    float x[4 * 37], w[37], y[4 * 37];
    uint64_t s = 12;
    tu_fill(x, n * C, &s, 3.0f);
    tu_fill(w, C, &s, 1.0f);
    eng_cpu_rmsnorm(x, w, n, C, 1e-5f, y);
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[t * C + c] * x[t * C + c];
        double r = 1.0 / sqrt(ss / C + 1e-5);
        for (int c = 0; c < C; c++) assert_true(fabs(y[t * C + c] - w[c] * x[t * C + c] * r) < 1e-5);
    }
    eng_cpu_rmsnorm(x, w, n, C, 1e-5f, x); /* in place gives the same */
    for (int i = 0; i < n * C; i++) assert_true(x[i] == y[i]);
}

static void test_exp_sum(void **state) {
    (void)state;
    float x[203];
    double want = 0;
    for (int i = 0; i < 203; i++) x[i] = -85.0f + 85.0f * i / 202.0f;
    for (int i = 0; i < 203; i++) want += exp((double)x[i] - 0.5);
    float ref[203];
    for (int i = 0; i < 203; i++) ref[i] = (float)exp((double)x[i] - 0.5);
    float got = eng_cpu_exp_sum(x, 203, 0.5f);
    for (int i = 0; i < 203; i++) assert_true(fabsf(x[i] - ref[i]) <= 1e-6f * ref[i] + 1e-37f);
    assert_true(fabs(got - want) < 1e-6 * want);
}

/* ------------------------------------------------------------ dense attention */

/* Brute force in double: out (n, H*d), lse (H, n). window > 0: query i sees key j only when
 * j < sink or i - j < window (A-shape). */
static void attn_brute_mask(const float *q, const float *k, const float *v, int n, int H, int Hkv, int d, int sink,
                            int window, float *out, float *lse) {
    double *p = malloc(sizeof(double) * (size_t)n);
    const double sc = 1.0 / sqrt((double)d);
    for (int h = 0; h < H; h++) {
        const int g = h / (H / Hkv);
        for (int i = 0; i < n; i++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= i; j++) {
                double s = 0;
                for (int c = 0; c < d; c++) s += (double)q[(size_t)i * H * d + h * d + c] * k[(size_t)j * Hkv * d + g * d + c];
                p[j] = window > 0 && j >= sink && i - j >= window ? -INFINITY : s * sc;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - mx));
            for (int c = 0; c < d; c++) {
                double o = 0;
                for (int j = 0; j <= i; j++) o += p[j] * v[(size_t)j * Hkv * d + g * d + c];
                out[(size_t)i * H * d + h * d + c] = (float)(o / sum);
            }
            lse[(size_t)h * n + i] = (float)(mx + log(sum));
        }
    }
    free(p);
}

static void attn_brute(const float *q, const float *k, const float *v, int n, int H, int Hkv, int d, float *out,
                       float *lse) {
    attn_brute_mask(q, k, v, n, H, Hkv, d, 0, 0, out, lse);
}

static void test_dense_attention(void **state) {
    (void)state;
    const int ns[] = {1, 7, 33, 63, 64, 65, 129, 300};
    const int groups[] = {1, 4, 8};
    eng_err err;
    eng_backend *be = eng_backend_cpu_create(&err);
    assert_non_null(be);
    uint64_t s = 21;
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t g = 0; g < 3; g++) {
            const int n = ns[a], Hkv = groups[g] == 8 ? 1 : 2, H = Hkv * groups[g], d = (a & 1) ? 18 : 64;
            float *q = malloc(sizeof(float) * n * H * d), *k = malloc(sizeof(float) * n * Hkv * d);
            float *v = malloc(sizeof(float) * n * Hkv * d), *o = malloc(sizeof(float) * n * H * d);
            float *ro = malloc(sizeof(float) * n * H * d), *l = malloc(sizeof(float) * H * n);
            float *rl = malloc(sizeof(float) * H * n);
            tu_fill(q, (size_t)n * H * d, &s, 2.0f);
            tu_fill(k, (size_t)n * Hkv * d, &s, 2.0f);
            tu_fill(v, (size_t)n * Hkv * d, &s, 1.0f);
            for (int i = 0; i < n * H * d; i++) o[i] = NAN; /* poison: every output must be written */
            attn_brute(q, k, v, n, H, Hkv, d, ro, rl);
            double secs = -1;
            assert_int_equal(be->attention(be, q, k, v, n, H, Hkv, d, NULL, o, l, &secs, &err), 0);
            assert_true(secs >= 0);
            assert_true(tu_rel_l2(o, ro, (size_t)n * H * d) < 1e-5);
            for (int i = 0; i < H * n; i++) assert_true(fabsf(l[i] - rl[i]) < 1e-4f);
            /* the single-head entry point with its own strides */
            float *o1 = malloc(sizeof(float) * n * d), *l1 = malloc(sizeof(float) * n);
            const int kv1 = (1 / (H / Hkv)) * d; /* head 1's KV head */
            eng_attn_dense_head(q + d, H * d, k + kv1, v + kv1, Hkv * d, n, d, o1, d, l1);
            for (int i = 0; i < n; i++)
                for (int c = 0; c < d; c++) assert_true(fabsf(o1[i * d + c] - o[(size_t)i * H * d + d + c]) < 1e-6f);
            free(o1), free(l1);
            free(q), free(k), free(v), free(o), free(ro), free(l), free(rl);
        }
    assert_int_not_equal(be->attention(be, NULL, NULL, NULL, 4, 3, 2, 8, NULL, NULL, NULL, NULL, &err), 0);
    be->destroy(be);
}

/* The backend's attention op with per-head indexes: A-shape heads vs masked brute force, and the
 * LSE is that of the sparse rows. */
static void test_sparse_attention_op(void **state) {
    (void)state;
    const int n = 200, H = 4, Hkv = 2, d = 32, sink = 5, window = 70;
    eng_err err;
    eng_backend *be = eng_backend_cpu_create(&err);
    uint64_t s = 22;
    float *q = malloc(sizeof(float) * n * H * d), *k = malloc(sizeof(float) * n * Hkv * d);
    float *v = malloc(sizeof(float) * n * Hkv * d), *o = malloc(sizeof(float) * n * H * d);
    float *ro = malloc(sizeof(float) * n * H * d), *l = malloc(sizeof(float) * H * n), *rl = malloc(sizeof(float) * H * n);
    tu_fill(q, (size_t)n * H * d, &s, 2.0f);
    tu_fill(k, (size_t)n * Hkv * d, &s, 2.0f);
    tu_fill(v, (size_t)n * Hkv * d, &s, 1.0f);
    eng_pattern p = eng_pattern_make(ENG_PAT_ASHAPE);
    p.n_init = sink, p.n_local = window;
    eng_head_index ix[4];
    for (int h = 0; h < H; h++) {
        memset(&ix[h], 0, sizeof ix[h]);
        assert_int_equal(eng_pattern_build(&p, q + h * d, H * d, k + (h / 2) * d, Hkv * d, n, d, &ix[h], &err), 0);
    }
    attn_brute_mask(q, k, v, n, H, Hkv, d, sink, window, ro, rl);
    double secs = -1;
    assert_int_equal(be->attention(be, q, k, v, n, H, Hkv, d, ix, o, l, &secs, &err), 0);
    assert_true(tu_rel_l2(o, ro, (size_t)n * H * d) < 1e-5);
    for (int i = 0; i < H * n; i++) assert_true(fabsf(l[i] - rl[i]) < 1e-4f);
    ix[1].n = n - 1; /* an index for another length is refused */
    assert_int_not_equal(be->attention(be, q, k, v, n, H, Hkv, d, ix, o, l, &secs, &err), 0);
    assert_non_null(strstr(err.msg, "head 1"));
    ix[1].n = n;
    for (int h = 0; h < H; h++) eng_index_free(&ix[h]);
    free(q), free(k), free(v), free(o), free(ro), free(l), free(rl);
    be->destroy(be);
}

/* ------------------------------------------------------------ whole prefill on an in-memory model */

typedef struct {
    eng_model m;
    eng_layer_weights lw[3];
    void *blobs[64];
    int nblobs;
} mem_model;

static void mm_tensor(mem_model *mm, eng_tensor *t, const char *name, eng_dtype dt, int64_t r, int64_t c,
                      uint64_t *s, float lo, float scale) {
    const int64_t n = r * c;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt, t->ndim = c > 1 ? 2 : 1, t->shape[0] = c > 1 ? r : n, t->shape[1] = c, t->numel = n;
    float *f = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) f[i] = lo + tu_randf(s) * scale;
    if (dt == ENG_DT_BF16) {
        uint16_t *b = malloc(2 * (size_t)n);
        for (int64_t i = 0; i < n; i++) b[i] = eng_f32_to_bf16(f[i]);
        free(f);
        t->data = b, mm->blobs[mm->nblobs++] = b;
    } else
        t->data = f, mm->blobs[mm->nblobs++] = f;
}

/* A random Llama-shaped model: C 40, heads 4 over 2 KV heads of 10, F 52, V 50, L layers. */
static void mm_build(mem_model *mm, eng_dtype dt, int L, int bias, uint64_t seed) {
    memset(mm, 0, sizeof *mm);
    eng_config *c = &mm->m.cfg;
    c->hidden_size = 40, c->intermediate_size = 52, c->n_layers = L, c->n_heads = 4, c->n_kv_heads = 2;
    c->head_dim = 10, c->vocab_size = 50, c->rms_norm_eps = 1e-5f, c->rope_theta = 10000.0f, c->qkv_bias = bias;
    snprintf(mm->m.dir, sizeof mm->m.dir, "in-memory");
    uint64_t s = seed;
    const int C = 40, F = 52, V = 50, qd = 40, kvd = 20;
    mm_tensor(mm, &mm->m.embed, "embed", dt, V, C, &s, 0, 1);
    mm_tensor(mm, &mm->m.final_norm, "norm", dt, C, 1, &s, 1, 0.2f);
    mm_tensor(mm, &mm->m.lm_head, "lm_head", dt, V, C, &s, 0, 0.3f);
    for (int l = 0; l < L; l++) {
        eng_layer_weights *w = &mm->lw[l];
        mm_tensor(mm, &w->attn_norm, "an", dt, C, 1, &s, 1, 0.2f);
        mm_tensor(mm, &w->wq, "wq", dt, qd, C, &s, 0, 0.4f);
        mm_tensor(mm, &w->wk, "wk", dt, kvd, C, &s, 0, 0.4f);
        mm_tensor(mm, &w->wv, "wv", dt, kvd, C, &s, 0, 0.4f);
        mm_tensor(mm, &w->wo, "wo", dt, C, qd, &s, 0, 0.3f);
        if (bias) {
            mm_tensor(mm, &w->bq, "bq", dt, qd, 1, &s, 0, 0.5f);
            mm_tensor(mm, &w->bk, "bk", dt, kvd, 1, &s, 0, 0.5f);
            mm_tensor(mm, &w->bv, "bv", dt, kvd, 1, &s, 0, 0.5f);
        }
        mm_tensor(mm, &w->ffn_norm, "fn", dt, C, 1, &s, 1, 0.2f);
        mm_tensor(mm, &w->w_gate, "wg", dt, F, C, &s, 0, 0.3f);
        mm_tensor(mm, &w->w_up, "wu", dt, F, C, &s, 0, 0.3f);
        mm_tensor(mm, &w->w_down, "wd", dt, C, F, &s, 0, 0.25f);
    }
    mm->m.layers = mm->lw;
}

static void mm_free(mem_model *mm) {
    for (int i = 0; i < mm->nblobs; i++) free(mm->blobs[i]);
}

static double tval(const eng_tensor *t, int64_t i) {
    float f;
    eng_tensor_to_f32(t, i, 1, &f);
    return f;
}

/* y (n, out) = x (n, in) W^T + b, in double. */
static void ref_linear(const double *x, int n, int in, const eng_tensor *w, int out, const eng_tensor *b, double *y) {
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++) {
            double s = b && b->data ? tval(b, o) : 0;
            for (int i = 0; i < in; i++) s += x[t * in + i] * tval(w, (int64_t)o * in + i);
            y[t * out + o] = s;
        }
}

static void ref_norm(const double *x, int n, int C, const eng_tensor *w, double eps, double *y) {
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += x[t * C + c] * x[t * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) y[t * C + c] = tval(w, c) * x[t * C + c] * r;
    }
}

/* The whole forward pass in double, written as plainly as possible: logits (n, V). window > 0
 * restricts query i to keys j < sink or i - j < window (A-shape); 0 is dense causal. */
static void ref_forward(const eng_model *m, const int *tok, int n, int sink, int window, double *logits) {
    const eng_config *c = &m->cfg;
    const int C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, H = c->n_heads, Hkv = c->n_kv_heads;
    const int d = c->head_dim, qd = H * d, kvd = Hkv * d;
    double *x = calloc((size_t)n * C, 8), *xn = calloc((size_t)n * C, 8), *q = calloc((size_t)n * qd, 8);
    double *k = calloc((size_t)n * kvd, 8), *v = calloc((size_t)n * kvd, 8), *att = calloc((size_t)n * qd, 8);
    double *o = calloc((size_t)n * C, 8), *g = calloc((size_t)n * F, 8), *u = calloc((size_t)n * F, 8);
    double *p = calloc((size_t)n, 8);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < C; i++) x[t * C + i] = tval(&m->embed, (int64_t)tok[t] * C + i);
    for (int l = 0; l < c->n_layers; l++) {
        const eng_layer_weights *w = &m->layers[l];
        ref_norm(x, n, C, &w->attn_norm, c->rms_norm_eps, xn);
        ref_linear(xn, n, C, &w->wq, qd, &w->bq, q);
        ref_linear(xn, n, C, &w->wk, kvd, &w->bk, k);
        ref_linear(xn, n, C, &w->wv, kvd, &w->bv, v);
        for (int t = 0; t < n; t++)
            for (int h = 0; h < H + Hkv; h++) {
                double *r = h < H ? q + t * qd + h * d : k + t * kvd + (h - H) * d;
                for (int i = 0; i < d / 2; i++) {
                    double a = t * pow(c->rope_theta, -2.0 * i / d), x1 = r[i], x2 = r[i + d / 2];
                    r[i] = x1 * cos(a) - x2 * sin(a);
                    r[i + d / 2] = x2 * cos(a) + x1 * sin(a);
                }
            }
        for (int h = 0; h < H; h++) {
            const int gg = h / (H / Hkv);
            for (int i = 0; i < n; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= i; j++) {
                    double s = 0;
                    for (int e = 0; e < d; e++) s += q[i * qd + h * d + e] * k[j * kvd + gg * d + e];
                    p[j] = window > 0 && j >= sink && i - j >= window ? -INFINITY : s / sqrt((double)d);
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - mx));
                for (int e = 0; e < d; e++) {
                    double acc = 0;
                    for (int j = 0; j <= i; j++) acc += p[j] * v[j * kvd + gg * d + e];
                    att[i * qd + h * d + e] = acc / sum;
                }
            }
        }
        ref_linear(att, n, qd, &w->wo, C, NULL, o);
        for (int i = 0; i < n * C; i++) x[i] += o[i];
        ref_norm(x, n, C, &w->ffn_norm, c->rms_norm_eps, xn);
        ref_linear(xn, n, C, &w->w_gate, F, NULL, g);
        ref_linear(xn, n, C, &w->w_up, F, NULL, u);
        for (int i = 0; i < n * F; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
        ref_linear(g, n, F, &w->w_down, C, NULL, o);
        for (int i = 0; i < n * C; i++) x[i] += o[i];
    }
    ref_norm(x, n, C, &m->final_norm, c->rms_norm_eps, xn);
    ref_linear(xn, n, C, &m->lm_head, V, NULL, logits);
    free(x), free(xn), free(q), free(k), free(v), free(att), free(o), free(g), free(u), free(p);
}

/* Prefill (dense, or A-shape(sink, window) on every head when window > 0) vs ref_forward. */
static void check_vs_ref(const eng_model *m, int n, int keep, int sink, int window) {
    int *tok = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) tok[i] = (i * 17 + 3) % m->cfg.vocab_size;
    const int V = m->cfg.vocab_size;
    double *ref = malloc(sizeof(double) * (size_t)n * V);
    ref_forward(m, tok, n, sink, window, ref);
    eng_err err;
    eng_backend *be = eng_backend_cpu_create(&err);
    eng_prefill_out out;
    eng_prefill_opts po = {.keep_qkv = keep, .keep_lse = keep};
    eng_pattern_cfg pc = {.n_layers = m->cfg.n_layers, .n_heads = m->cfg.n_heads};
    if (window > 0 && !m->cfg.sliding_window) {
        pc.def = eng_pattern_make(ENG_PAT_ASHAPE);
        pc.def.n_init = sink, pc.def.n_local = window;
        po.patterns = &pc;
    }
    assert_int_equal(be->prefill(be, m, tok, n, &po, &out, &err), 0);
    assert_int_equal(out.n, n);
    assert_int_equal(out.vocab, V);
    float *last = malloc(sizeof(float) * (size_t)V);
    for (int i = 0; i < V; i++) last[i] = (float)ref[(size_t)(n - 1) * V + i];
    assert_true(tu_rel_l2(out.last_logits, last, (size_t)V) < 1e-5);
    for (int t = 0; t < n; t++) {
        const double *r = ref + (size_t)t * V;
        int am = 0;
        double mx = r[0], sum = 0;
        for (int i = 1; i < V; i++)
            if (r[i] > mx) mx = r[i], am = i;
        for (int i = 0; i < V; i++) sum += exp(r[i] - mx);
        assert_true(out.argmax[t] == am || fabs(r[out.argmax[t]] - mx) < 1e-4);
        if (t + 1 < n) assert_true(fabs(out.next_logprob[t] - (r[tok[t + 1]] - mx - log(sum))) < 1e-4);
    }
    assert_true(out.seconds > 0);
    for (int l = 0; l < m->cfg.n_layers; l++) assert_true(out.attn_seconds[l] >= 0);
    if (keep) {
        /* kept Q/K (after RoPE) and LSE agree with each other: lse = brute-force dense LSE of
         * kept q, k (dense even when the prefill ran sparse) */
        const int H = m->cfg.n_heads, Hkv = m->cfg.n_kv_heads, d = m->cfg.head_dim, L = m->cfg.n_layers;
        assert_non_null(out.q), assert_non_null(out.k), assert_non_null(out.v), assert_non_null(out.lse);
        float *o = malloc(sizeof(float) * (size_t)n * H * d), *rl = malloc(sizeof(float) * (size_t)H * n);
        const size_t l = (size_t)L - 1;
        attn_brute(out.q + l * n * H * d, out.k + l * n * Hkv * d, out.v + l * n * Hkv * d, n, H, Hkv, d, o, rl);
        for (int i = 0; i < H * n; i++) assert_true(fabsf(out.lse[l * H * n + i] - rl[i]) < 1e-4f);
        free(o), free(rl);
    } else
        assert_null(out.q);
    eng_prefill_out_free(&out);
    assert_null(out.last_logits);
    be->destroy(be);
    free(last), free(ref), free(tok);
}

static void test_prefill_vs_double(void **state) {
    (void)state;
    mem_model mm;
    mm_build(&mm, ENG_DT_F32, 2, 0, 31);
    check_vs_ref(&mm.m, 1, 0, 0, 0);
    check_vs_ref(&mm.m, 70, 1, 0, 0); /* two 64-query tiles */
    check_vs_ref(&mm.m, 90, 0, 3, 20); /* sparse prefill: A-shape on every head */
    check_vs_ref(&mm.m, 90, 1, 3, 20); /* ... keeping the dense LSE alongside */
    mm_free(&mm);
    mm_build(&mm, ENG_DT_F32, 1, 1, 32); /* Qwen2-style q/k/v biases */
    check_vs_ref(&mm.m, 23, 0, 0, 0);
    mm.m.cfg.sliding_window = 7; /* Mistral: q sees k iff q - k < 7 */
    check_vs_ref(&mm.m, 7, 0, 0, 0); /* within the window: dense */
    check_vs_ref(&mm.m, 80, 1, 0, 7);
    mm_free(&mm);
    mm_build(&mm, ENG_DT_BF16, 2, 1, 33); /* bf16 weights widened per layer */
    check_vs_ref(&mm.m, 40, 1, 0, 0);
    mm_free(&mm);
}

static void test_prefill_bad_input(void **state) {
    (void)state;
    mem_model mm;
    mm_build(&mm, ENG_DT_F32, 1, 0, 34);
    eng_err err;
    eng_backend *be = eng_backend_cpu_create(&err);
    eng_prefill_out out;
    int tok[3] = {1, 50, 2};
    assert_int_not_equal(be->prefill(be, &mm.m, tok, 3, NULL, &out, &err), 0);
    assert_non_null(strstr(err.msg, "token 50 at position 1"));
    assert_null(out.last_logits);
    assert_int_not_equal(be->prefill(be, &mm.m, tok, 0, NULL, &out, &err), 0);
    eng_pattern_cfg pc = {.n_layers = 2, .n_heads = 4};
    eng_prefill_opts po = {.patterns = &pc};
    tok[1] = 4;
    assert_int_not_equal(be->prefill(be, &mm.m, tok, 3, &po, &out, &err), 0);
    assert_non_null(strstr(err.msg, "pattern config is for 2 layers"));
    mm.m.cfg.sliding_window = 2;
    pc.n_layers = 1;
    assert_int_not_equal(be->prefill(be, &mm.m, tok, 3, &po, &out, &err), 0);
    assert_non_null(strstr(err.msg, "sliding-window"));
    be->destroy(be);
    mm_free(&mm);
    assert_null(eng_backend_create("tpu", &err));
    assert_non_null(strstr(err.msg, "unknown backend 'tpu'"));
    eng_backend *c = eng_backend_create("cpu", &err);
    assert_non_null(c);
    assert_string_equal(c->name, "cpu");
    c->destroy(c);
}

/* ------------------------------------------------------------ against transformers */

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) free(b), b = NULL;
    if (b) b[n] = 0;
    fclose(f);
    return b;
}

static void test_prefill_vs_transformers(void **state) {
    (void)state;
    DIR *dir = opendir("tests/fixtures");
    if (!dir) skip();
    int checked = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (strncmp(de->d_name, "tiny-", 5)) continue;
        char path[512], mdir[300];
        snprintf(mdir, sizeof mdir, "tests/fixtures/%s", de->d_name);
        snprintf(path, sizeof path, "%s/reference.json", mdir);
        char *txt = slurp(path);
        if (!txt) {
            print_message("%s: no reference.json (tools/hf_reference.py makes it); not compared\n", mdir);
            continue;
        }
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
        eng_err err;
        if (eng_model_load(&m, mdir, &err)) fail_msg("%s: %s", mdir, err.msg);
        assert_int_equal(m->cfg.vocab_size, V);
        eng_backend *be = eng_backend_cpu_create(&err);
        eng_prefill_out out;
        assert_int_equal(be->prefill(be, m, tok, n, NULL, &out, &err), 0);
        const double rel = tu_rel_l2(out.last_logits, want, (size_t)V);
        print_message("%s: %d tokens, last-logits rel L2 vs transformers %.2e\n", mdir, n, rel);
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
        checked++;
    }
    closedir(dir);
    if (!checked) skip();
}

/* ------------------------------------------------------------ CLI */

/* Runs `attnscope ARGS` with stderr folded in; returns the exit status, output in buf. */
static int run_cli(const char *args, char *buf, size_t cap) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", tu_bin(), args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(buf, 1, cap - 1, p);
    buf[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_run(void **state) {
    (void)state;
    if (access(tu_bin(), X_OK) != 0 || access("tests/fixtures/tiny-llama/config.json", R_OK) != 0) skip();
    static char out[65536];
    const char *M = "--model tests/fixtures/tiny-llama";
    char a[1024];
    assert_int_equal(run_cli("run --bogus", out, sizeof out), 2);
    assert_non_null(strstr(out, "unknown option '--bogus'"));
    assert_non_null(strstr(out, "usage: attnscope run"));
    assert_int_equal(run_cli("run --tokens 1,2", out, sizeof out), 2);
    assert_non_null(strstr(out, "--model DIR is required"));
    snprintf(a, sizeof a, "run %s", M);
    assert_int_equal(run_cli(a, out, sizeof out), 2);
    assert_non_null(strstr(out, "exactly one of"));
    snprintf(a, sizeof a, "run %s --text hi --tokens 1", M);
    assert_int_equal(run_cli(a, out, sizeof out), 2);
    snprintf(a, sizeof a, "run %s --tokens 1,,2", M);
    assert_int_equal(run_cli(a, out, sizeof out), 2);
    assert_non_null(strstr(out, "--tokens: bad value '1,,2'"));
    snprintf(a, sizeof a, "run %s --tokens 5,272", M);
    assert_int_equal(run_cli(a, out, sizeof out), 2);
    assert_non_null(strstr(out, "id 272 is outside"));
    snprintf(a, sizeof a, "run %s --tokens 1 --backend tpu", M);
    assert_int_equal(run_cli(a, out, sizeof out), 2);
    assert_non_null(strstr(out, "--backend: bad value 'tpu'"));
    snprintf(a, sizeof a, "run %s --tokens", M);
    assert_int_equal(run_cli(a, out, sizeof out), 2);
    assert_non_null(strstr(out, "needs a value"));
    assert_int_equal(run_cli("run --model /nonexistent/model --tokens 1", out, sizeof out), 1);
    assert_non_null(strstr(out, "/nonexistent/model"));
    snprintf(a, sizeof a, "run %s --prompt /nonexistent/prompt.txt", M);
    assert_int_equal(run_cli(a, out, sizeof out), 1);
    assert_non_null(strstr(out, "/nonexistent/prompt.txt"));
    assert_int_equal(run_cli("run --help", out, sizeof out), 0);
    assert_non_null(strstr(out, "--logits-out"));

    /* a real run: byte-level text, report and logits written */
    char lpath[256], jpath[256];
    snprintf(lpath, sizeof lpath, "/tmp/attnscope-test-logits-%d.json", (int)getpid());
    snprintf(jpath, sizeof jpath, "/tmp/attnscope-test-run-%d.json", (int)getpid());
    snprintf(a, sizeof a, "run %s --backend cpu --text 'Hello, world' --logits-out %s --json %s", M, lpath, jpath);
    assert_int_equal(run_cli(a, out, sizeof out), 0);
    assert_non_null(strstr(out, "tokens:   13")); /* BOS + 12 bytes */
    assert_non_null(strstr(out, "backend:  cpu"));
    assert_non_null(strstr(out, "5. "));
    char *txt = slurp(lpath);
    assert_non_null(txt);
    cJSON *l = cJSON_Parse(txt);
    free(txt);
    assert_true(cJSON_IsArray(l) && cJSON_GetArraySize(l) == 272);
    txt = slurp(jpath);
    assert_non_null(txt);
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    assert_non_null(j);
    assert_int_equal(cJSON_GetObjectItem(j, "n_tokens")->valueint, 13);
    cJSON *top = cJSON_GetObjectItem(j, "top5");
    assert_int_equal(cJSON_GetArraySize(top), 5);
    /* the report's top token is the argmax of the written logits */
    int best = 0;
    for (int i = 1; i < 272; i++)
        if (cJSON_GetArrayItem(l, i)->valuedouble > cJSON_GetArrayItem(l, best)->valuedouble) best = i;
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(top, 0), "id")->valueint, best);
    assert_int_equal(cJSON_GetObjectItem(j, "next_token")->valueint, best);
    cJSON_Delete(l), cJSON_Delete(j);
    unlink(lpath), unlink(jpath);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_formula),        cmocka_unit_test(test_rope_llama3),
        cmocka_unit_test(test_rmsnorm),             cmocka_unit_test(test_exp_sum),
        cmocka_unit_test(test_dense_attention),     cmocka_unit_test(test_sparse_attention_op),
        cmocka_unit_test(test_prefill_vs_double),
        cmocka_unit_test(test_prefill_bad_input),   cmocka_unit_test(test_prefill_vs_transformers),
        cmocka_unit_test(test_cli_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
