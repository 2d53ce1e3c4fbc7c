/* eng_decode: the KV-cache decoder and greedy generation (engine/eng_decode.h). One token at a time
 * through the same Llama block as the CPU prefill (engine/eng_cpu.c): RMSNorm, q/k/v (+bias), RoPE at
 * the token's position, dense attention over the cache (Mistral's window honoured), o-proj, SwiGLU MLP,
 * final norm, lm head. f32 throughout; matrix-vector products via cblas_sgemv. */
#include "eng_decode.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_cpu.h"

#define GEMV_ROWS 64 /* rows converted at a time for weights not kept in f32 */

/* A linear weight (out, in) readable as f32: kept converted, used in place (f32 file), or NULL
 * (converted GEMV_ROWS rows at a time into the decoder's scratch). */
typedef struct {
    const eng_tensor *t;
    const float *f32;
    float *owned;
} dec_w;

enum { W_Q, W_K, W_V, W_O, W_GATE, W_UP, W_DOWN, W__COUNT };

struct eng_decoder {
    const eng_model *m;
    int n, cap;              /* positions in the cache, capacity */
    float *k, *v;            /* [L][cap][Hkv*d] after RoPE / as projected */
    float *inv_freq;         /* [d/2] */
    dec_w *w;                /* [L][W__COUNT] */
    dec_w head;              /* lm head (V, C) */
    float *norms;            /* [L][2][C] attn_norm, ffn_norm, then final [C] */
    float *bias;             /* [L][qd + 2 kvd] when the model has q/k/v biases, else NULL */
    float *x, *xn, *q, *att, *g, *u, *scores, *scratch;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Make w usable; *budget is the f32 bytes still allowed for kept copies. */
static int w_init(dec_w *w, const eng_tensor *t, size_t *budget) {
    w->t = t, w->f32 = NULL, w->owned = NULL;
    if (t->dtype == ENG_DT_F32) {
        w->f32 = t->data;
        return 0;
    }
    size_t bytes = sizeof(float) * (size_t)t->numel;
    if (bytes > *budget) return 0;
    if (!(w->owned = malloc(bytes))) return -1;
    eng_tensor_to_f32(t, 0, t->numel, w->owned);
    w->f32 = w->owned;
    *budget -= bytes;
    return 0;
}

/* y (out) = W (out, in) x (in). */
static void gemv(const dec_w *w, const float *x, int out, int in, float *y, float *scratch) {
    if (w->f32) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w->f32, in, x, 1, 0.0f, y, 1);
        return;
    }
    for (int r0 = 0; r0 < out; r0 += GEMV_ROWS) {
        int rows = out - r0 < GEMV_ROWS ? out - r0 : GEMV_ROWS;
        eng_tensor_to_f32(w->t, (int64_t)r0 * in, (int64_t)rows * in, scratch);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, in, 1.0f, scratch, in, x, 1, 0.0f, y + r0, 1);
    }
}

void eng_decoder_free(eng_decoder *d) {
    if (!d) return;
    if (d->w) {
        int L = d->m->cfg.n_layers;
        for (int i = 0; i < L * W__COUNT; i++) free(d->w[i].owned);
    }
    free(d->head.owned);
    free(d->w);
    free(d->k);
    free(d->v);
    free(d->inv_freq);
    free(d->norms);
    free(d->bias);
    free(d->x);
    free(d->xn);
    free(d->q);
    free(d->att);
    free(d->g);
    free(d->u);
    free(d->scores);
    free(d->scratch);
    free(d);
}

int eng_decoder_create(eng_decoder **out, const eng_model *m, const eng_prefill_out *pre, int max_new,
                       eng_err *err) {
    *out = NULL;
    const eng_config *c = &m->cfg;
    const int L = c->n_layers, C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    const int H = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim, qd = H * hd, kvd = Hkv * hd;
    if (!pre || !pre->k || !pre->v)
        return eng_err_set(err, "decode needs the prefill's K/V: run the prefill with keep_qkv");
    if (pre->n_layers != L || pre->n_heads != H || pre->n_kv_heads != Hkv || pre->head_dim != hd || pre->n < 1)
        return eng_err_set(err, "prefill output (%d layers, %d/%d heads, head dim %d, %d tokens) does not match "
                           "the model (%d layers, %d/%d heads, head dim %d)", pre->n_layers, pre->n_heads,
                           pre->n_kv_heads, pre->head_dim, pre->n, L, H, Hkv, hd);
    if (max_new < 0 || max_new > (1 << 24) || (int64_t)pre->n + max_new > (1 << 30))
        return eng_err_set(err, "decode: bad number of new tokens %d after %d", max_new, pre->n);
    if (H % Hkv || hd % 2 || hd > 1024) return eng_err_set(err, "decode: model shape not runnable");
    eng_decoder *d = calloc(1, sizeof *d);
    if (!d) return eng_err_set(err, "out of memory for the decoder");
    d->m = m;
    d->n = pre->n;
    d->cap = pre->n + max_new;
    const size_t cap = (size_t)d->cap, N = (size_t)pre->n;
    const int big = C > F ? (C > qd ? C : qd) : (F > qd ? F : qd);
    d->k = malloc(sizeof(float) * L * cap * kvd);
    d->v = malloc(sizeof(float) * L * cap * kvd);
    d->inv_freq = malloc(sizeof(float) * (size_t)(hd / 2));
    d->w = calloc((size_t)L * W__COUNT, sizeof *d->w);
    d->norms = malloc(sizeof(float) * ((size_t)L * 2 + 1) * C);
    d->x = malloc(sizeof(float) * C);
    d->xn = malloc(sizeof(float) * C);
    d->q = malloc(sizeof(float) * (size_t)(qd + 2 * kvd));
    d->att = malloc(sizeof(float) * qd);
    d->g = malloc(sizeof(float) * F);
    d->u = malloc(sizeof(float) * F);
    d->scores = malloc(sizeof(float) * cap);
    d->scratch = malloc(sizeof(float) * GEMV_ROWS * (size_t)big);
    if (!d->k || !d->v || !d->inv_freq || !d->w || !d->norms || !d->x || !d->xn || !d->q || !d->att || !d->g ||
        !d->u || !d->scores || !d->scratch) {
        eng_decoder_free(d);
        return eng_err_set(err, "out of memory for the KV cache (%d positions, %.2f GB)", d->cap,
                           8.0 * L * (double)cap * kvd / 1e9);
    }
    for (int l = 0; l < L; l++) {
        memcpy(d->k + (size_t)l * cap * kvd, pre->k + (size_t)l * N * kvd, sizeof(float) * N * kvd);
        memcpy(d->v + (size_t)l * cap * kvd, pre->v + (size_t)l * N * kvd, sizeof(float) * N * kvd);
    }
    eng_cpu_rope_freqs(c, hd, d->inv_freq);
    size_t budget = ENG_DECODE_CACHE_BYTES;
    for (int l = 0; l < L; l++) {
        const eng_layer_weights *lw = &m->layers[l];
        const eng_tensor *ts[W__COUNT] = {&lw->wq, &lw->wk, &lw->wv, &lw->wo, &lw->w_gate, &lw->w_up, &lw->w_down};
        for (int i = 0; i < W__COUNT; i++)
            if (w_init(&d->w[l * W__COUNT + i], ts[i], &budget)) {
                eng_decoder_free(d);
                return eng_err_set(err, "out of memory converting layer %d weights", l);
            }
        eng_tensor_to_f32(&lw->attn_norm, 0, C, d->norms + ((size_t)l * 2) * C);
        eng_tensor_to_f32(&lw->ffn_norm, 0, C, d->norms + ((size_t)l * 2 + 1) * C);
        if (lw->bq.data) {
            if (!d->bias && !(d->bias = calloc((size_t)L * (qd + 2 * kvd), sizeof(float)))) {
                eng_decoder_free(d);
                return eng_err_set(err, "out of memory for the biases");
            }
            float *b = d->bias + (size_t)l * (qd + 2 * kvd);
            eng_tensor_to_f32(&lw->bq, 0, qd, b);
            if (lw->bk.data) eng_tensor_to_f32(&lw->bk, 0, kvd, b + qd);
            if (lw->bv.data) eng_tensor_to_f32(&lw->bv, 0, kvd, b + qd + kvd);
        }
    }
    eng_tensor_to_f32(&m->final_norm, 0, C, d->norms + (size_t)L * 2 * C);
    if (w_init(&d->head, &m->lm_head, &budget)) {
        eng_decoder_free(d);
        return eng_err_set(err, "out of memory converting the lm head");
    }
    (void)V;
    *out = d;
    return 0;
}

int eng_decoder_len(const eng_decoder *d) { return d->n; }

int eng_decode_argmax(const float *logits, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* att (H*d) = softmax(q k^T / sqrt(d)) v per query head over cache positions [lo, n). */
static void attend(eng_decoder *d, const float *kc, const float *vc, int lo, int n) {
    const eng_config *c = &d->m->cfg;
    const int H = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim, kvd = Hkv * hd, grp = H / Hkv;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < H; h++) {
        const float *q = d->q + (size_t)h * hd;
        const int kh = h / grp;
        float mx = -INFINITY;
        for (int j = lo; j < n; j++) {
            const float *k = kc + (size_t)j * kvd + (size_t)kh * hd;
            float s = 0.0f;
            for (int i = 0; i < hd; i++) s += q[i] * k[i];
            s *= scale;
            d->scores[j - lo] = s;
            mx = s > mx ? s : mx;
        }
        const float sum = eng_cpu_exp_sum(d->scores, n - lo, mx);
        float *o = d->att + (size_t)h * hd;
        memset(o, 0, sizeof(float) * hd);
        for (int j = lo; j < n; j++) {
            const float p = d->scores[j - lo] / sum;
            const float *v = vc + (size_t)j * kvd + (size_t)kh * hd;
            for (int i = 0; i < hd; i++) o[i] += p * v[i];
        }
    }
}

int eng_decoder_step(eng_decoder *d, int token, float *logits, eng_err *err) {
    const eng_model *m = d->m;
    const eng_config *c = &m->cfg;
    const int L = c->n_layers, C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    const int H = c->n_heads, Hkv = c->n_kv_heads, hd = c->head_dim, qd = H * hd, kvd = Hkv * hd;
    if (token < 0 || token >= V) return eng_err_set(err, "decode: token %d outside the vocabulary [0, %d)", token, V);
    if (d->n >= d->cap) return eng_err_set(err, "decode: KV cache full (%d positions)", d->cap);
    const int pos = d->n;
    const size_t cap = (size_t)d->cap;
    eng_tensor_to_f32(&m->embed, (int64_t)token * C, C, d->x);
    /* Mistral: key k visible to query q iff q - k < window (as the prefill). */
    const int lo = c->sliding_window > 0 && pos + 1 > c->sliding_window ? pos + 1 - c->sliding_window : 0;
    /* longrope (Phi-3): transformers picks the factors for each step's pos + 1 positions, and scales
     * cos/sin; RoPE is linear, so the scale is applied to the rotated q and k. */
    const float rope_scale = c->rope_longrope ? eng_cpu_rope_table(c, hd, pos + 1, d->inv_freq) : 1.0f;
    for (int l = 0; l < L; l++) {
        const dec_w *w = d->w + (size_t)l * W__COUNT;
        float *kc = d->k + (size_t)l * cap * kvd, *vc = d->v + (size_t)l * cap * kvd;
        float *q = d->q, *k = kc + (size_t)pos * kvd, *v = vc + (size_t)pos * kvd;
        eng_cpu_rmsnorm(d->x, d->norms + ((size_t)l * 2) * C, 1, C, c->rms_norm_eps, d->xn);
        gemv(&w[W_Q], d->xn, qd, C, q, d->scratch);
        gemv(&w[W_K], d->xn, kvd, C, k, d->scratch);
        gemv(&w[W_V], d->xn, kvd, C, v, d->scratch);
        if (d->bias) {
            const float *b = d->bias + (size_t)l * (qd + 2 * kvd);
            for (int i = 0; i < qd; i++) q[i] += b[i];
            for (int i = 0; i < kvd; i++) k[i] += b[qd + i], v[i] += b[qd + kvd + i];
        }
        eng_cpu_rope_apply(q, 1, H, hd, pos, d->inv_freq);
        eng_cpu_rope_apply(k, 1, Hkv, hd, pos, d->inv_freq);
        if (rope_scale != 1.0f) {
            for (int i = 0; i < qd; i++) q[i] *= rope_scale;
            for (int i = 0; i < kvd; i++) k[i] *= rope_scale;
        }
        attend(d, kc, vc, lo, pos + 1);
        gemv(&w[W_O], d->att, C, qd, d->xn, d->scratch);
        for (int i = 0; i < C; i++) d->x[i] += d->xn[i];
        eng_cpu_rmsnorm(d->x, d->norms + ((size_t)l * 2 + 1) * C, 1, C, c->rms_norm_eps, d->xn);
        gemv(&w[W_GATE], d->xn, F, C, d->g, d->scratch);
        gemv(&w[W_UP], d->xn, F, C, d->u, d->scratch);
        for (int i = 0; i < F; i++) d->g[i] = d->g[i] / (1.0f + expf(-d->g[i])) * d->u[i];
        gemv(&w[W_DOWN], d->g, C, F, d->xn, d->scratch);
        for (int i = 0; i < C; i++) d->x[i] += d->xn[i];
    }
    eng_cpu_rmsnorm(d->x, d->norms + (size_t)L * 2 * C, 1, C, c->rms_norm_eps, d->xn);
    gemv(&d->head, d->xn, V, C, logits, d->scratch);
    d->n++;
    return 0;
}

void eng_generation_free(eng_generation *g) {
    if (!g) return;
    free(g->ids);
    memset(g, 0, sizeof *g);
}

int eng_decode_continue(const eng_model *m, const eng_prefill_out *pre, int n_new, int stop_id, eng_generation *out,
                        eng_err *err) {
    memset(out, 0, sizeof *out);
    if (n_new < 0) return eng_err_set(err, "decode: negative number of new tokens %d", n_new);
    if (!pre->last_logits) return eng_err_set(err, "decode: the prefill has no logits");
    out->prefill_s = pre->seconds;
    if (n_new == 0) return 0;
    const int V = m->cfg.vocab_size;
    eng_decoder *d = NULL;
    float *logits = malloc(sizeof(float) * (size_t)V);
    int rc = -1;
    if (!(out->ids = malloc(sizeof(int) * (size_t)n_new)) || !logits) {
        eng_err_set(err, "out of memory for %d generated tokens", n_new);
        goto done;
    }
    if (eng_decoder_create(&d, m, pre, n_new - 1, err)) goto done;
    const double t0 = now_s();
    int tok = eng_decode_argmax(pre->last_logits, V);
    for (;;) {
        if (stop_id >= 0 && tok == stop_id) {
            out->stopped = 1;
            break;
        }
        out->ids[out->n++] = tok;
        if (out->n == n_new) break;
        if (eng_decoder_step(d, tok, logits, err)) goto done;
        tok = eng_decode_argmax(logits, V);
    }
    out->decode_s = now_s() - t0;
    rc = 0;
done:
    eng_decoder_free(d);
    free(logits);
    if (rc) eng_generation_free(out);
    return rc;
}

int eng_decode_greedy(eng_backend *be, const eng_model *m, const int *prompt, int n, const eng_prefill_opts *opts,
                      int n_new, int stop_id, eng_generation *out, eng_err *err) {
    memset(out, 0, sizeof *out);
    if (n_new < 0) return eng_err_set(err, "decode: negative number of new tokens %d", n_new);
    eng_prefill_opts po;
    if (opts) po = *opts;
    else memset(&po, 0, sizeof po);
    po.keep_qkv = 1;
    eng_prefill_out pre;
    if (be->prefill(be, m, prompt, n, &po, &pre, err)) return -1;
    /* the decoder copies the K/V it needs; Q and the rest go as soon as it exists */
    const int rc = eng_decode_continue(m, &pre, n_new, stop_id, out, err);
    eng_prefill_out_free(&pre);
    return rc;
}
