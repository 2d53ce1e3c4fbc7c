/* eng_session: one prompt on one model, analysed for the explorer (see eng_session.h). Holds the
 * dense prefill's Q/K/V (L, n, H*d) and row LSE (L, H, n), each head's index, the dense attention
 * output per layer (cached: Q/K/V never change), and derives every number and picture from them. */
#include "eng_session.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eng_backend.h"
#include "eng_dma.h"
#include "eng_index.h"
#include "eng_map.h"
#include "eng_metrics.h"
#include "eng_model.h"
#include "eng_patcfg.h"
#include "eng_reshape.h"
#include "eng_tok.h"
#include "eng_transform.h"

#define PROMPT_MAX_BYTES (64u << 20)

struct eng_session {
    eng_model *m;            /* as loaded */
    eng_transformed xf;      /* opts.transform: the transformed copy (its untouched tensors are m's) */
    unsigned xf_flags;       /* the session's transform; 0: none */
    int xf_on;               /* analyse xf.model (else m) */
    const eng_model *mr;     /* the model analysed: m or &xf.model */
    eng_prefill_out orig;    /* the original model's dense prefill (logits only), the transform's reference */
    int have_orig;
    eng_tokenizer *tok;
    eng_backend *be;
    int *tokens, n;
    int L, H, Hkv, d;
    char model_name[160];
    const char **labels;     /* [n] token display texts (owned by tok) */
    eng_patcfg pc;           /* the per-head config; pc.cfg.heads[L*H] always allocated */
    eng_head_mask *mk;       /* [L*H] current mask of every head (after the prefill): an index for
                                index kinds, per-row thresholds (DMA) or borrowed Q/K (N:M) */
    eng_prefill_out pre;     /* the analysis prefill: dense, q/k/v and lse kept */
    int ready;
    float **dense_out;       /* [L] -> (n, H*d) dense attention output, made on first use */
    float *sparse_out;       /* scratch (n, H*d) */
    float *sparse_lse;       /* scratch (H, n) */
    eng_head_stat *hs;       /* [L*H] */
    eng_layer_stat *ls;      /* [L] */
    eng_e2e_stat e2e;
    double dense_plain_s;    /* a dense prefill without keeping anything; 0 until run */
    volatile int *cancel;    /* set by another thread to stop a prefill (eng_session_set_cancel) */
};

void eng_session_set_cancel(eng_session *s, volatile int *cancel) { s->cancel = cancel; }

static int cancelled(const eng_session *s) { return s->cancel && *s->cancel; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int eng_session_n_tokens(const eng_session *s) { return s->n; }
int eng_session_n_layers(const eng_session *s) { return s->L; }
int eng_session_n_heads(const eng_session *s) { return s->H; }
int eng_session_n_kv_heads(const eng_session *s) { return s->Hkv; }

/* A sparse default for heads a config does not name: about 1/32 of the keys as vertical lines and
 * 1/16 as slash lines, so the first screen already shows what sparsity skips. */
static eng_pattern default_pattern(int n) {
    eng_pattern p = eng_pattern_make(ENG_PAT_VS);
    p.vertical = n / 32 > 30 ? n / 32 : 30;
    p.slash = n / 16 > 100 ? n / 16 : 100;
    return p;
}

static char *read_text(const char *path, size_t *len, eng_err *err) {
    /* O_NONBLOCK: opening a FIFO must not block (the fstat below refuses it); no effect on files */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        eng_err_set(err, "%s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        fclose(f);
        eng_err_set(err, "%s: not a regular file", path);
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 131072;
            char *nb = cap <= PROMPT_MAX_BYTES + 131072 ? realloc(buf, cap) : NULL;
            if (!nb) {
                free(buf);
                fclose(f);
                eng_err_set(err, "%s: larger than %u bytes or out of memory", path, PROMPT_MAX_BYTES);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, 65536, f);
        n += r;
        if (r < 65536) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        eng_err_set(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int eng_session_open(eng_session **out, const eng_session_opts *o, eng_err *err) {
    *out = NULL;
    if (!o || !o->model_dir || !o->prompt_path) return eng_err_set(err, "session: a model and a prompt are required");
    eng_session *s = calloc(1, sizeof *s);
    if (!s) return eng_err_set(err, "session: out of memory");
    char *text = NULL;
    if (eng_model_load(&s->m, o->model_dir, err)) goto fail;
    s->mr = s->m;
    if (o->transform) {
        if (eng_transform_model(s->m, o->transform, &s->xf, err)) goto fail;
        s->xf_flags = o->transform;
        s->xf_on = 1;
        s->mr = &s->xf.model;
    }
    const eng_config *c = &s->m->cfg;
    s->L = c->n_layers;
    s->H = c->n_heads;
    s->Hkv = c->n_kv_heads;
    s->d = c->head_dim;
    const char *base = strrchr(o->model_dir, '/');
    base = base && base[1] ? base + 1 : o->model_dir;
    snprintf(s->model_name, sizeof s->model_name, "%.150s", base);
    if (!(s->tok = eng_tok_load(o->model_dir, c, err))) goto fail;
    size_t len = 0;
    if (!(text = read_text(o->prompt_path, &len, err))) goto fail;
    if (eng_tok_encode(s->tok, text, len, 1, &s->tokens, &s->n, err)) goto fail;
    int max = o->max_tokens > 0 ? o->max_tokens : c->max_position_embeddings;
    if (max > 0 && s->n > max) s->n = max;
    if (s->n < 2) {
        eng_err_set(err, "%s: the prompt has %d token(s); at least 2 are needed", o->prompt_path, s->n);
        goto fail;
    }
    if (!(s->be = eng_backend_create(o->backend ? o->backend : "auto", err))) goto fail;

    size_t LH = (size_t)s->L * s->H;
    eng_pattern def = default_pattern(s->n);
    if (o->patterns_path) {
        if (eng_patcfg_load(&s->pc, o->patterns_path, err)) goto fail;
        if (eng_patcfg_check_model(&s->pc, s->L, s->H, err)) { /* it names the provenance: add the file */
            char why[sizeof err->msg];
            snprintf(why, sizeof why, "%s", err->msg);
            eng_err_set(err, "--patterns %s: %s", o->patterns_path, why);
            goto fail;
        }
        if (s->pc.cfg.n_layers != s->L || s->pc.cfg.n_heads != s->H) {
            /* a config naming fewer layers/heads: re-home it on the model's shape, rest default */
            eng_patcfg full;
            if (eng_patcfg_init(&full, s->L, s->H, &s->pc.cfg.def, err)) goto fail;
            for (int l = 0; l < s->pc.cfg.n_layers; l++)
                for (int h = 0; h < s->pc.cfg.n_heads; h++) {
                    size_t i = (size_t)l * s->pc.cfg.n_heads + h;
                    if (s->pc.listed[i]) eng_patcfg_set(&full, l, h, &s->pc.cfg.heads[i], s->pc.score[i]);
                }
            eng_patcfg_free(&s->pc);
            s->pc = full;
        }
    } else if (eng_patcfg_init(&s->pc, s->L, s->H, &def, err)) {
        goto fail;
    }
    s->labels = calloc((size_t)s->n, sizeof *s->labels);
    s->mk = calloc(LH, sizeof *s->mk);
    s->hs = calloc(LH, sizeof *s->hs);
    s->ls = calloc((size_t)s->L, sizeof *s->ls);
    s->dense_out = calloc((size_t)s->L, sizeof *s->dense_out);
    if (!s->labels || !s->mk || !s->hs || !s->ls || !s->dense_out) {
        eng_err_set(err, "session: out of memory");
        goto fail;
    }
    for (int t = 0; t < s->n; t++) s->labels[t] = eng_tok_piece(s->tok, s->tokens[t]);
    for (size_t i = 0; i < LH; i++) {
        s->hs[i].pat = s->pc.cfg.heads[i];
        s->hs[i].density = s->hs[i].recall = s->hs[i].error = s->hs[i].error_plain = NAN;
    }
    free(text);
    *out = s;
    return 0;
fail:
    free(text);
    eng_session_free(s);
    return -1;
}

void eng_session_free(eng_session *s) {
    if (!s) return;
    if (s->mk)
        for (size_t i = 0; i < (size_t)s->L * s->H; i++) eng_dma_mask_free(&s->mk[i]);
    if (s->dense_out)
        for (int l = 0; l < s->L; l++) free(s->dense_out[l]);
    free(s->dense_out);
    free(s->mk);
    free(s->hs);
    free(s->ls);
    eng_patcfg_free(&s->pc);
    free(s->labels);
    free(s->sparse_out);
    free(s->sparse_lse);
    eng_prefill_out_free(&s->pre);
    free(s->tokens);
    if (s->be) s->be->destroy(s->be);
    eng_tok_free(s->tok);
    eng_prefill_out_free(&s->orig);
    eng_transform_free(&s->xf); /* before m: its untouched tensors are m's */
    eng_model_free(s->m);
    free(s);
}

/* ---- analysis ---- */

static const float *layer_q(const eng_session *s, int l) { return s->pre.q + (size_t)l * s->n * s->H * s->d; }
static const float *layer_k(const eng_session *s, int l) { return s->pre.k + (size_t)l * s->n * s->Hkv * s->d; }
static const float *layer_v(const eng_session *s, int l) { return s->pre.v + (size_t)l * s->n * s->Hkv * s->d; }
static const float *head_lse(const eng_session *s, int l, int h) {
    return s->pre.lse + ((size_t)l * s->H + h) * s->n;
}

/* Rebuild every head mask of layer l (eng_dma_mask_build: the index of index kinds, thresholds or
 * borrowed Q/K for DMA / N:M), run its sparse attention and (once) its dense attention, and derive
 * the per-head and per-layer numbers. Index heads run in one backend op; DMA / N:M heads get an
 * empty index there and run on the CPU mask path; reshape heads add the estimate on the CPU after
 * the sparse pass (their error without it is kept too). Both CPU passes count as sparse time. */
static int analyse_layer(eng_session *s, int l, eng_err *err) {
    const int n = s->n, H = s->H, Hkv = s->Hkv, d = s->d, grp = H / Hkv, qd = H * d, kvd = Hkv * d;
    const float *q = layer_q(s, l), *k = layer_k(s, l), *v = layer_v(s, l);
    eng_layer_stat *ls = &s->ls[l];
    if (!s->dense_out[l]) {
        if (!(s->dense_out[l] = malloc(sizeof(float) * (size_t)n * H * d)))
            return eng_err_set(err, "layer %d: out of memory for the dense output", l);
        if (s->be->attention(s->be, q, k, v, n, H, Hkv, d, NULL, s->dense_out[l], NULL, &ls->dense_s, err)) {
            free(s->dense_out[l]);
            s->dense_out[l] = NULL;
            return -1;
        }
    }
    eng_head_mask *mk = s->mk + (size_t)l * H;
    const eng_pattern *pat = s->pc.cfg.heads + (size_t)l * H;
    int any_reshape = 0, rc = -1;
    for (int h = 0; h < H; h++) any_reshape |= pat[h].reshape;
    eng_head_index *ix = calloc((size_t)H, sizeof *ix);
    eng_head_metrics *hm = malloc(sizeof *hm * (size_t)H);
    float *plain = any_reshape ? malloc(sizeof(float) * (size_t)n * qd) : NULL;
    if (!ix || !hm || (any_reshape && !plain)) {
        eng_err_set(err, "layer %d: out of memory for the sparse pass", l);
        goto done;
    }
    double t0 = now_s();
    for (int h = 0; h < H; h++) {
        eng_dma_mask_free(&mk[h]);
        eng_err e;
        if (eng_dma_mask_build(&pat[h], q + (size_t)h * d, qd, k + (size_t)(h / grp) * d, v + (size_t)(h / grp) * d, kvd,
                               n, d, &mk[h], &e)) {
            eng_err_set(err, "layer %d head %d: %s", l, h, e.msg);
            goto done;
        }
        if (mk[h].kind == ENG_MASK_INDEX) ix[h] = mk[h].ix; /* borrowed: freed with the mask */
        else if (eng_index_alloc(&ix[h], n, 0, 0, err)) goto done;
    }
    ls->index_s = now_s() - t0;
    double kern = 0;
    if (s->be->attention(s->be, q, k, v, n, H, Hkv, d, ix, s->sparse_out, s->sparse_lse, &kern, err)) goto done;
    t0 = now_s();
    for (int h = 0; h < H; h++) {
        const float *qh = q + (size_t)h * d, *kh = k + (size_t)(h / grp) * d, *vh = v + (size_t)(h / grp) * d;
        float *oh = s->sparse_out + (size_t)h * d, *lh = s->sparse_lse + (size_t)h * n;
        if (mk[h].kind != ENG_MASK_INDEX && eng_dma_attn_head(&mk[h], qh, qd, kh, vh, kvd, n, d, oh, qd, lh, NULL, err))
            goto done;
        if (!pat[h].reshape) continue;
        for (int t = 0; t < n; t++)
            memcpy(plain + (size_t)t * qd + (size_t)h * d, oh + (size_t)t * qd, sizeof(float) * (size_t)d);
        if (eng_reshape_apply(&mk[h], qh, qd, kh, vh, kvd, n, d, oh, qd, lh, NULL, NULL, err)) goto done;
    }
    ls->sparse_s = ls->index_s + kern + (now_s() - t0);

    for (int h = 0; h < H; h++) {
        eng_head_stat *st = &s->hs[(size_t)l * H + h];
        st->pat = pat[h];
        const int is_ix = mk[h].kind == ENG_MASK_INDEX;
        eng_metrics_head(is_ix ? &ix[h] : NULL, n, d, head_lse(s, l, h), s->sparse_lse + (size_t)h * n,
                         s->dense_out[l] + (size_t)h * d, s->sparse_out + (size_t)h * d, qd, &hm[h]);
        if (!is_ix) eng_metrics_set_computed(&hm[h], eng_dma_mask_count(&mk[h]));
        if (pat[h].reshape) eng_metrics_set_plain(&hm[h], n, d, s->dense_out[l] + (size_t)h * d, plain + (size_t)h * d, qd);
        st->density = (float)hm[h].density;
        st->recall = (float)hm[h].recall;
        st->error = (float)hm[h].error;
        st->error_plain = pat[h].reshape ? (float)hm[h].error_plain : NAN;
    }
    eng_layer_metrics lm;
    eng_metrics_layer(hm, H, &lm);
    ls->density = (float)lm.density;
    ls->recall = (float)lm.recall;
    ls->error = (float)lm.error;
    ls->valid = 1;
    rc = 0;
done:
    if (ix)
        for (int h = 0; h < H; h++)
            if (mk[h].kind != ENG_MASK_INDEX) eng_index_free(&ix[h]);
    free(ix);
    free(hm);
    free(plain);
    return rc;
}

typedef struct {
    eng_session_progress cb;
    void *ctx;
    const char *what;
} progress_fwd;

static void progress_layer(void *p, int layer, int n_layers) {
    progress_fwd *f = p;
    if (f->cb) f->cb(f->ctx, f->what, layer, n_layers);
}

int eng_session_prefill(eng_session *s, eng_session_progress cb, void *ctx, eng_err *err) {
    progress_fwd fwd = {cb, ctx, "prefill (dense, keeping Q/K/V)"};
    eng_prefill_opts po = {.patterns = NULL, .keep_qkv = 1, .keep_lse = 1, .progress = progress_layer,
                           .progress_ctx = &fwd, .cancel = s->cancel};
    eng_prefill_out_free(&s->pre);
    s->ready = 0;
    if (s->be->prefill(s->be, s->mr, s->tokens, s->n, &po, &s->pre, err)) return -1;
    if (!s->pre.q || !s->pre.k || !s->pre.v || !s->pre.lse)
        return eng_err_set(err, "prefill: the %s backend did not keep Q/K/V and LSE", s->be->name);
    free(s->sparse_out);
    free(s->sparse_lse);
    s->sparse_out = malloc(sizeof(float) * (size_t)s->n * s->H * s->d);
    s->sparse_lse = malloc(sizeof(float) * (size_t)s->n * s->H);
    if (!s->sparse_out || !s->sparse_lse) return eng_err_set(err, "session: out of memory for attention scratch");
    for (int l = 0; l < s->L; l++) {
        if (cancelled(s)) return eng_err_set(err, "cancelled");
        if (cb) cb(ctx, "analyse layers (dense vs sparse attention)", l, s->L);
        if (analyse_layer(s, l, err)) return -1;
    }
    if (cb) cb(ctx, "analyse layers (dense vs sparse attention)", s->L, s->L);
    s->ready = 1;
    return 0;
}

int eng_session_set_pattern(eng_session *s, int layer, int head, const eng_pattern *p, eng_err *err) {
    if (layer < 0 || layer >= s->L || head < 0 || head >= s->H)
        return eng_err_set(err, "no head (%d, %d) in a %d x %d model", layer, head, s->L, s->H);
    if (eng_pattern_validate(p, err)) return -1;
    size_t i = (size_t)layer * s->H + head;
    eng_pattern old = s->pc.cfg.heads[i];
    double old_score = s->pc.score[i];
    unsigned char old_listed = s->pc.listed[i];
    eng_patcfg_set(&s->pc, layer, head, p, p->score);
    s->e2e.valid = 0;
    if (!s->ready) {
        s->hs[i].pat = *p;
        return 0;
    }
    if (analyse_layer(s, layer, err)) {
        s->pc.cfg.heads[i] = old;
        s->pc.score[i] = old_score;
        s->pc.listed[i] = old_listed;
        eng_err e2;
        analyse_layer(s, layer, &e2); /* restore the layer's indexes and numbers */
        return -1;
    }
    return 0;
}

int eng_session_set_transform(eng_session *s, int on, eng_err *err) {
    if (!s->xf_flags) return eng_err_set(err, "no weight transform in this session (open it with one: 24, int8 or 24+int8)");
    on = on != 0;
    if (on == s->xf_on) return 0;
    s->xf_on = on;
    s->mr = on ? &s->xf.model : s->m;
    /* everything below came from the other weights' Q/K/V */
    s->ready = 0;
    eng_prefill_out_free(&s->pre);
    for (int l = 0; l < s->L; l++) {
        free(s->dense_out[l]);
        s->dense_out[l] = NULL;
        memset(&s->ls[l], 0, sizeof s->ls[l]);
    }
    for (size_t i = 0; i < (size_t)s->L * s->H; i++) {
        eng_dma_mask_free(&s->mk[i]);
        s->hs[i].density = s->hs[i].recall = s->hs[i].error = s->hs[i].error_plain = NAN;
    }
    memset(&s->e2e, 0, sizeof s->e2e);
    s->dense_plain_s = 0;
    return 0;
}

unsigned eng_session_transform(const eng_session *s, unsigned *avail) {
    if (avail) *avail = s->xf_flags;
    return s->xf_on ? s->xf_flags : 0;
}

int eng_session_run_e2e(eng_session *s, eng_session_progress cb, void *ctx, eng_err *err) {
    if (!s->ready) return eng_err_set(err, "end to end: the analysis prefill has not finished");
    if (s->dense_plain_s <= 0) {
        progress_fwd fwd = {cb, ctx, "dense prefill (timing)"};
        eng_prefill_opts po = {.progress = progress_layer, .progress_ctx = &fwd, .cancel = s->cancel};
        eng_prefill_out o;
        memset(&o, 0, sizeof o);
        if (s->be->prefill(s->be, s->mr, s->tokens, s->n, &po, &o, err)) return -1;
        s->dense_plain_s = o.seconds;
        eng_prefill_out_free(&o);
    }
    progress_fwd fwd = {cb, ctx, "sparse prefill (current patterns)"};
    eng_prefill_opts po = {.patterns = &s->pc.cfg, .progress = progress_layer, .progress_ctx = &fwd,
                           .cancel = s->cancel};
    eng_prefill_out o;
    memset(&o, 0, sizeof o);
    if (s->be->prefill(s->be, s->mr, s->tokens, s->n, &po, &o, err)) return -1;
    eng_e2e_metrics em;
    if (eng_metrics_e2e(&s->pre, &o, &em, err)) {
        eng_prefill_out_free(&o);
        return -1;
    }
    eng_e2e_stat e = {0};
    e.valid = 1;
    e.dense_s = s->dense_plain_s;
    e.sparse_s = o.seconds;
    e.kl = em.kl_last;
    e.top1 = em.top1_agree;
    e.ppl_dense = em.ppl_dense;
    e.ppl_sparse = em.ppl_sparse;
    eng_prefill_out_free(&o);
    if (s->xf_on) {
        /* the reference: the original weights, dense (run once; the prompt never changes) */
        if (!s->have_orig) {
            progress_fwd f2 = {cb, ctx, "original model prefill (transform reference)"};
            eng_prefill_opts ro = {.progress = progress_layer, .progress_ctx = &f2, .cancel = s->cancel};
            if (s->be->prefill(s->be, s->m, s->tokens, s->n, &ro, &s->orig, err)) return -1;
            s->have_orig = 1;
        }
        if (eng_metrics_e2e(&s->orig, &s->pre, &em, err)) return -1;
        e.xf_valid = 1;
        e.xf_kl = em.kl_last;
        e.xf_top1 = em.top1_agree;
        e.xf_ppl_orig = em.ppl_dense;
        e.xf_ppl_xf = em.ppl_sparse;
    }
    s->e2e = e;
    if (cb) cb(ctx, "sparse prefill (current patterns)", s->L, s->L);
    return 0;
}

/* ---- pictures ---- */

/* The pixel grid of view v, clamped to the prompt: rows [q0, qe) and keys [k0, ke) at tpp tokens
 * per pixel; the last pixel of an axis may hold fewer tokens. */
typedef struct {
    int q0, qe, k0, ke, tpp, rows, cols; /* rows/cols: pixels with data (<= the view's) */
} grid;

static grid view_grid(const eng_session *s, const eng_view *v) {
    grid g;
    g.tpp = v->tpp < 1 ? 1 : v->tpp;
    g.q0 = v->q0 < 0 ? 0 : v->q0 >= s->n ? s->n - 1 : v->q0;
    g.k0 = v->k0 < 0 ? 0 : v->k0 >= s->n ? s->n - 1 : v->k0;
    long long qe = (long long)g.q0 + (long long)v->rows * g.tpp, ke = (long long)g.k0 + (long long)v->cols * g.tpp;
    g.qe = qe > s->n ? s->n : (int)qe;
    g.ke = ke > s->n ? s->n : (int)ke;
    g.rows = (g.qe - g.q0 + g.tpp - 1) / g.tpp;
    g.cols = (g.ke - g.k0 + g.tpp - 1) / g.tpp;
    return g;
}

/* Fill dst[view rows][view cols] (NaN outside the data) with the dense probabilities of (l, h)
 * pooled by max (mask = 0) or with the fraction of each tile the head's index computes (mask = 1).
 * eng_map spreads tokens evenly over pixels, so full pixels and a short last pixel per axis are
 * computed as separate rectangles to keep exactly tpp tokens per full pixel. */
static int fill_grid(const eng_session *s, int l, int h, const eng_view *v, const grid *g, int mask, float *dst,
                     eng_err *err) {
    for (size_t i = 0; i < (size_t)v->rows * v->cols; i++) dst[i] = NAN;
    const int grp = s->H / s->Hkv;
    int rfull = (g->qe - g->q0) / g->tpp, cfull = (g->ke - g->k0) / g->tpp;
    int ry[2][3] = {{g->q0, g->q0 + rfull * g->tpp, rfull}, {g->q0 + rfull * g->tpp, g->qe, 1}};
    int cx[2][3] = {{g->k0, g->k0 + cfull * g->tpp, cfull}, {g->k0 + cfull * g->tpp, g->ke, 1}};
    float *tmp = malloc(sizeof(float) * (size_t)(rfull + 1) * (cfull + 1));
    if (!tmp) return eng_err_set(err, "map: out of memory");
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            if (ry[a][1] <= ry[a][0] || cx[b][1] <= cx[b][0]) continue;
            eng_map_opts mo = {.q0 = ry[a][0], .q1 = ry[a][1], .k0 = cx[b][0], .k1 = cx[b][1], .w = cx[b][2],
                               .h = ry[a][2], .pool = ENG_POOL_MAX, .empty = NAN, .threads = 0};
            int rc = mask ? eng_map_mask_cover(&s->mk[(size_t)l * s->H + h], &mo, tmp, err)
                          : eng_map_pool_on(s->be, layer_q(s, l) + (size_t)h * s->d, s->H * s->d,
                                            layer_k(s, l) + (size_t)(h / grp) * s->d, s->Hkv * s->d, s->n, s->d,
                                            head_lse(s, l, h), NULL, &mo, tmp, err);
            if (rc) {
                free(tmp);
                return -1;
            }
            int y0 = a ? rfull : 0, x0 = b ? cfull : 0;
            for (int y = 0; y < mo.h; y++)
                for (int x = 0; x < mo.w; x++) dst[(size_t)(y0 + y) * v->cols + x0 + x] = tmp[(size_t)y * mo.w + x];
        }
    free(tmp);
    return 0;
}

/* Exact dense probability of (q, k) for head (l, h); 0 above the diagonal. */
static float prob_at(const eng_session *s, int l, int h, int q, int k) {
    if (k > q) return 0;
    const int grp = s->H / s->Hkv;
    const float *qr = layer_q(s, l) + (size_t)q * s->H * s->d + (size_t)h * s->d;
    const float *kr = layer_k(s, l) + (size_t)k * s->Hkv * s->d + (size_t)(h / grp) * s->d;
    double dot = 0;
    for (int i = 0; i < s->d; i++) dot += (double)qr[i] * kr[i];
    return (float)exp(dot / sqrt((double)s->d) - head_lse(s, l, h)[q]);
}

/* ---- teach: the vertical-slash build, step by step ---- */

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* The top k of score[0..m) with indexes < forced always in (within the budget, as upstream sets
 * their scores to +inf); ties go to the lower index. Writes ascending indexes; returns the count. */
static int top_k(const double *score, int m, int k, int forced, int *out) {
    if (k > m) k = m;
    if (forced > k) forced = k;
    int c = 0;
    for (int i = 0; i < forced; i++) out[c++] = i;
    const int r = m - forced;
    int *idx = malloc(sizeof(int) * (size_t)(r > 0 ? r : 1)), *tmp = malloc(sizeof(int) * (size_t)(r > 0 ? r : 1));
    if (!idx || !tmp) {
        free(idx);
        free(tmp);
        return -1;
    }
    for (int i = 0; i < r; i++) idx[i] = forced + i;
    /* bottom-up merge sort by (score desc, index asc): stable and needs no qsort context */
    for (int w = 1; w < r; w *= 2)
        for (int lo = 0; lo < r; lo += 2 * w) {
            int mid = lo + w < r ? lo + w : r, hi = lo + 2 * w < r ? lo + 2 * w : r, i = lo, j = mid, o = lo;
            while (i < mid && j < hi) {
                int a = idx[i], b = idx[j];
                if (score[b] > score[a] || (score[b] == score[a] && b < a)) tmp[o++] = idx[j++];
                else tmp[o++] = idx[i++];
            }
            while (i < mid) tmp[o++] = idx[i++];
            while (j < hi) tmp[o++] = idx[j++];
            memcpy(idx + lo, tmp + lo, sizeof(int) * (size_t)(hi - lo));
        }
    for (int i = 0; i < r && c < k; i++) out[c++] = idx[i];
    free(tmp);
    free(idx);
    qsort(out, (size_t)c, sizeof(int), cmp_int);
    return c;
}

static void teach_free(eng_teach *t) {
    free(t->est);
    free(t->vscore);
    free(t->sscore);
    free(t->vert);
    free(t->slash);
    free(t->lines);
    free(t->kind);
    memset(t, 0, sizeof *t);
}

/* Recompute the VS estimate of (l, h) as ALGORITHMS.md states it (last 64 queries, causal inside
 * the trailing square, column and diagonal sums, sinks 0..29 and offsets 0..99 forced) and pool it
 * to the view's size; the final step draws the index eng_pattern_build made for the head. */
static int teach_fill(const eng_session *s, int l, int h, const eng_view *v, eng_teach *t, eng_err *err) {
    memset(t, 0, sizeof *t);
    const eng_pattern *p = &s->pc.cfg.heads[(size_t)l * s->H + h];
    if (p->kind != ENG_PAT_VS) return 0;
    const int n = s->n, d = s->d, grp = s->H / s->Hkv, ne = n < 64 ? n : 64, qs = n - ne;
    const float *Q = layer_q(s, l) + (size_t)h * d, *K = layer_k(s, l) + (size_t)(h / grp) * d;
    const int qst = s->H * d, kst = s->Hkv * d;
    const double scale = 1.0 / sqrt((double)d);
    float *A = calloc((size_t)ne * n, sizeof(float));
    double *vs = calloc((size_t)n, sizeof(double)), *ss = calloc((size_t)n, sizeof(double));
    int *vert = NULL, *sl = NULL;
    if (!A || !vs || !ss) goto oom;
    for (int i = 0; i < ne; i++) {
        const int tq = qs + i;
        float *row = A + (size_t)i * n;
        double m = -INFINITY;
        for (int k = 0; k <= tq; k++) {
            double dot = 0;
            for (int j = 0; j < d; j++) dot += (double)Q[(size_t)tq * qst + j] * K[(size_t)k * kst + j];
            row[k] = (float)(dot * scale);
            if (row[k] > m) m = row[k];
        }
        double sum = 0;
        for (int k = 0; k <= tq; k++) sum += exp(row[k] - m);
        for (int k = 0; k <= tq; k++) {
            row[k] = (float)(exp(row[k] - m) / sum);
            vs[k] += row[k];
            ss[tq - k] += row[k];
        }
    }
    t->k_v = p->vertical < 30 ? 30 : p->vertical > n ? n : p->vertical;
    t->k_s = p->slash < 50 ? 50 : p->slash > n ? n : p->slash;
    if (t->k_v > n) t->k_v = n;
    if (t->k_s > n) t->k_s = n;
    vert = malloc(sizeof(int) * (size_t)t->k_v);
    sl = malloc(sizeof(int) * (size_t)t->k_s);
    if (!vert || !sl) goto oom;
    t->n_vert = top_k(vs, n, t->k_v, 30, vert);
    t->n_slash = top_k(ss, n, t->k_s, 100, sl);
    if (t->n_vert < 0 || t->n_slash < 0) goto oom;
    t->vert = vert;
    t->slash = sl;
    vert = sl = NULL;

    /* one square grid: tpc tokens per column and per row, fitting the view */
    int tc = (n + (v->cols > 0 ? v->cols : 1) - 1) / (v->cols > 0 ? v->cols : 1);
    int tr = (n + (v->rows > 0 ? v->rows : 1) - 1) / (v->rows > 0 ? v->rows : 1);
    t->tpc = tc > tr ? tc : tr;
    if (t->tpc < 1) t->tpc = 1;
    t->cols = t->rows = (n + t->tpc - 1) / t->tpc;
    t->n_est = ne < v->rows ? ne : (v->rows > 0 ? v->rows : 1);
    t->est = calloc((size_t)t->n_est * t->cols, sizeof(float));
    t->vscore = calloc((size_t)t->cols, sizeof(float));
    t->sscore = calloc((size_t)t->cols, sizeof(float));
    t->lines = calloc((size_t)t->rows * t->cols, 1);
    t->kind = calloc((size_t)t->rows * t->cols, 1);
    if (!t->est || !t->vscore || !t->sscore || !t->lines || !t->kind) goto oom;
    for (int r = 0; r < t->n_est; r++)
        for (int i = r * ne / t->n_est; i < (r + 1) * ne / t->n_est; i++)
            for (int k = 0; k < n; k++) {
                float *e = &t->est[(size_t)r * t->cols + k / t->tpc];
                if (A[(size_t)i * n + k] > *e) *e = A[(size_t)i * n + k];
            }
    for (int k = 0; k < n; k++) {
        int c = k / t->tpc;
        if ((float)vs[k] > t->vscore[c]) t->vscore[c] = (float)vs[k];
        if ((float)ss[k] > t->sscore[c]) t->sscore[c] = (float)ss[k];
    }
    /* lines and the final index, per tile */
    const eng_head_index *ix = &s->mk[(size_t)l * s->H + h].ix; /* VS: an index mask */
    for (int r = 0; r < t->rows; r++) {
        const int r0 = r * t->tpc, r1 = (r + 1) * t->tpc < n ? (r + 1) * t->tpc : n;
        for (int c = 0; c < t->cols; c++) {
            const int c0 = c * t->tpc, c1 = (c + 1) * t->tpc < n ? (c + 1) * t->tpc : n;
            uint8_t *ln = &t->lines[(size_t)r * t->cols + c], *kd = &t->kind[(size_t)r * t->cols + c];
            if (c0 > r1 - 1) {
                *kd = 255;
                continue;
            }
            for (int i = 0; i < t->n_vert; i++)
                if (t->vert[i] >= c0 && t->vert[i] < c1 && t->vert[i] <= r1 - 1) *ln |= 1;
            int olo = r0 - (c1 - 1) > 0 ? r0 - (c1 - 1) : 0, ohi = r1 - 1 - c0;
            for (int i = 0; i < t->n_slash; i++)
                if (t->slash[i] >= olo && t->slash[i] <= ohi) *ln |= 2;
            if (!ix->block_count) continue;
            for (int rb = r0 / ENG_BLOCK; rb <= (r1 - 1) / ENG_BLOCK && rb < ix->n_rb; rb++) {
                int qlast = (rb + 1) * ENG_BLOCK - 1;
                if (qlast > r1 - 1) qlast = r1 - 1;
                for (int b = 0; b < ix->block_count[rb]; b++) {
                    int off = ix->block_offset[(size_t)rb * ix->max_blocks + b];
                    int lo = off > c0 ? off : c0, hi = off + ENG_BLOCK < c1 ? off + ENG_BLOCK : c1;
                    if (hi > qlast + 1) hi = qlast + 1;
                    if (hi > lo) *kd |= 1;
                }
                for (int j = 0; j < ix->column_count[rb]; j++) {
                    int col = ix->column_index[(size_t)rb * ix->max_cols + j];
                    if (col >= c0 && col < c1) *kd |= 2;
                }
            }
        }
    }
    t->n_rb = ix->n_rb;
    for (int rb = 0; rb < ix->n_rb; rb++) {
        t->n_ranges += ix->block_count[rb];
        t->n_columns += ix->column_count[rb];
    }
    t->valid = 1;
    free(A);
    free(vs);
    free(ss);
    return 0;
oom:
    free(A);
    free(vs);
    free(ss);
    free(vert);
    free(sl);
    teach_free(t);
    return eng_err_set(err, "teach view: out of memory for a %d-token estimate", n);
}

void eng_snapshot_free(eng_snapshot *snap) {
    if (!snap) return;
    free(snap->heads);
    free(snap->layers);
    free(snap->prob);
    free(snap->cover);
    teach_free(&snap->teach);
    free(snap->vert);
    free(snap->slash);
    free((void *)snap->labels);
    free(snap);
}

/* Every token's display text in one block: n pointers, then the NUL-ended texts. */
static int labels_fill(const eng_session *s, eng_snapshot *sn, eng_err *err) {
    size_t bytes = sizeof(char *) * (size_t)s->n;
    for (int t = 0; t < s->n; t++) bytes += strlen(s->labels[t] ? s->labels[t] : "") + 1;
    char **p = malloc(bytes);
    if (!p) return eng_err_set(err, "snapshot: out of memory for %d token labels", s->n);
    char *text = (char *)(p + s->n);
    for (int t = 0; t < s->n; t++) {
        const char *l = s->labels[t] ? s->labels[t] : "";
        size_t len = strlen(l) + 1;
        memcpy(text, l, len);
        p[t] = text;
        text += len;
    }
    sn->labels = (const char *const *)p;
    return 0;
}

/* The vertical and slash lines the pattern engine picks for VS head (l, h) (none for others). */
static int lines_fill(const eng_session *s, int l, int h, eng_snapshot *sn, eng_err *err) {
    const eng_pattern *p = &s->pc.cfg.heads[(size_t)l * s->H + h];
    if (p->kind != ENG_PAT_VS) return 0;
    const int grp = s->H / s->Hkv;
    if (!(sn->vert = malloc(sizeof(int) * (size_t)s->n)) || !(sn->slash = malloc(sizeof(int) * (size_t)s->n)))
        return eng_err_set(err, "snapshot: out of memory for the index lines");
    return eng_pattern_vs_lines(p, layer_q(s, l) + (size_t)h * s->d, s->H * s->d,
                                layer_k(s, l) + (size_t)(h / grp) * s->d, s->Hkv * s->d, s->n, s->d, sn->vert,
                                &sn->n_vert, sn->slash, &sn->n_slash, err);
}

int eng_session_snapshot(eng_session *s, const eng_view *v, eng_snapshot **out, eng_err *err) {
    *out = NULL;
    eng_snapshot *sn = calloc(1, sizeof *sn);
    size_t LH = (size_t)s->L * s->H;
    if (!sn || !(sn->heads = malloc(sizeof *sn->heads * LH)) || !(sn->layers = malloc(sizeof *sn->layers * s->L))) {
        eng_snapshot_free(sn);
        return eng_err_set(err, "snapshot: out of memory");
    }
    snprintf(sn->model, sizeof sn->model, "%s", s->model_name);
    snprintf(sn->backend, sizeof sn->backend, "%s", s->be->device);
    sn->n_tokens = s->n;
    sn->n_layers = s->L;
    sn->n_heads = s->H;
    sn->n_kv_heads = s->Hkv;
    sn->head_dim = s->d;
    sn->ready = s->ready;
    memcpy(sn->heads, s->hs, sizeof *sn->heads * LH);
    memcpy(sn->layers, s->ls, sizeof *sn->layers * s->L);
    sn->e2e = s->e2e;
    sn->prefill_s = s->pre.seconds;
    sn->transform = s->xf_on ? s->xf_flags : 0;
    sn->transform_avail = s->xf_flags;
    if (s->xf_flags) {
        sn->xf_zero = s->xf.n_weights ? (double)s->xf.n_zero / (double)s->xf.n_weights : 0;
        sn->xf_rel_err = s->xf.rel_err;
    }
    if (v) sn->view = *v;
    if (!v || !s->ready) {
        *out = sn;
        return 0;
    }
    eng_view *cv = &sn->view;
    cv->layer = cv->layer < 0 ? 0 : cv->layer >= s->L ? s->L - 1 : cv->layer;
    cv->head = cv->head < 0 ? 0 : cv->head >= s->H ? s->H - 1 : cv->head;
    cv->cur_q = cv->cur_q < 0 ? 0 : cv->cur_q >= s->n ? s->n - 1 : cv->cur_q;
    cv->cur_k = cv->cur_k < 0 ? 0 : cv->cur_k >= s->n ? s->n - 1 : cv->cur_k;
    const int l = cv->layer, h = cv->head;
    if (cv->rows > 0 && cv->cols > 0 && cv->rows <= 16384 && cv->cols <= 16384) {
        grid g = view_grid(s, cv);
        cv->q0 = g.q0;
        cv->k0 = g.k0;
        cv->tpp = g.tpp;
        size_t np = (size_t)cv->rows * cv->cols;
        if (!(sn->prob = malloc(sizeof(float) * np)) || !(sn->cover = malloc(sizeof(float) * np))) {
            eng_snapshot_free(sn);
            return eng_err_set(err, "snapshot: out of memory for a %d x %d map", cv->rows, cv->cols);
        }
        if (fill_grid(s, l, h, cv, &g, 0, sn->prob, err) || fill_grid(s, l, h, cv, &g, 1, sn->cover, err)) {
            eng_snapshot_free(sn);
            return -1;
        }
        for (size_t i = 0; i < np; i++)
            if (sn->prob[i] > sn->prob_max) sn->prob_max = sn->prob[i];
        sn->map_valid = 1;
    }
    sn->cur_prob = prob_at(s, l, h, cv->cur_q, cv->cur_k);
    sn->cur_computed = cv->cur_k > cv->cur_q ? -1 : eng_dma_mask_covers(&s->mk[(size_t)l * s->H + h], cv->cur_q, cv->cur_k);
    snprintf(sn->q_text, sizeof sn->q_text, "%s", s->labels[cv->cur_q]);
    snprintf(sn->k_text, sizeof sn->k_text, "%s", s->labels[cv->cur_k]);
    if ((cv->teach && teach_fill(s, l, h, cv, &sn->teach, err)) || (cv->lines && lines_fill(s, l, h, sn, err)) ||
        (cv->labels && labels_fill(s, sn, err))) {
        eng_snapshot_free(sn);
        return -1;
    }
    *out = sn;
    return 0;
}

/* ---- files ---- */

static int write_atomic(const char *path, const char *text, eng_err *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp) return eng_err_set(err, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0) return eng_err_set(err, "%s: cannot create a file there: %s", path, strerror(errno));
    FILE *f = fdopen(fd, "w");
    size_t len = strlen(text);
    int bad = !f || fwrite(text, 1, len, f) != len;
    bad |= f ? fflush(f) != 0 || fsync(fileno(f)) != 0 : 0;
    if (f) bad |= fclose(f) != 0;
    else close(fd);
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return eng_err_set(err, "%s: write failed: %s", path, strerror(e));
    }
    return 0;
}

int eng_session_save_patterns(eng_session *s, const char *minference_path, const char *native_path, eng_err *err) {
    /* MInference's format lists heads; write every head so the file stands on its own */
    for (int l = 0; l < s->L; l++)
        for (int h = 0; h < s->H; h++) {
            size_t i = (size_t)l * s->H + h;
            eng_patcfg_set(&s->pc, l, h, &s->pc.cfg.heads[i], s->pc.score[i]);
        }
    char *nat = eng_patcfg_native_text(&s->pc, err);
    if (!nat) return -1;
    int rc = write_atomic(native_path, nat, err);
    free(nat);
    if (rc) return -1;
    char *mi = eng_patcfg_minference_text(&s->pc, err);
    if (!mi) return -1;
    rc = write_atomic(minference_path, mi, err);
    free(mi);
    return rc;
}
