/* eng_report: dense + sparse prefill, per-head/per-layer metrics on the dense Q/K/V, end-to-end
 * comparison, and the report as JSON (see eng_report.h). */
#include "eng_report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_attn.h"
#include "eng_dma.h"
#include "eng_reshape.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One layer's attention with per-head indexes ix (NULL = dense): the backend's op, or the CPU
 * reference (a dense index through eng_attn_sparse_head) when be is NULL. */
int eng_report_attention(eng_backend *be, const float *q, const float *k, const float *v, int n, int H, int Hkv,
                         int d, const eng_head_index *ix, float *out, float *lse, eng_err *err) {
    if (be) return be->attention(be, q, k, v, n, H, Hkv, d, ix, out, lse, NULL, err);
    eng_head_index dense;
    memset(&dense, 0, sizeof dense);
    if (!ix) {
        eng_pattern p = eng_pattern_make(ENG_PAT_DENSE);
        if (eng_pattern_build(&p, NULL, 0, NULL, 0, n, d, &dense, err)) return -1;
    }
    const int grp = H / Hkv;
    for (int h = 0; h < H; h++)
        eng_attn_sparse_head(q + (size_t)h * d, H * d, k + (size_t)(h / grp) * d, v + (size_t)(h / grp) * d, Hkv * d,
                             n, d, ix ? &ix[h] : &dense, out + (size_t)h * d, H * d, lse ? lse + (size_t)h * n : NULL);
    eng_index_free(&dense);
    return 0;
}

int eng_report_layer(eng_backend *be, const float *q, const float *k, const float *v, const float *lse_dense,
                     const float *out_dense, int n, int H, int Hkv, int d, const eng_pattern *const *pats,
                     eng_head_metrics *m, eng_err *err) {
    if (n < 1 || H < 1 || Hkv < 1 || H % Hkv || d < 1)
        return eng_err_set(err, "layer metrics: bad shape (n %d, heads %d/%d, d %d)", n, H, Hkv, d);
    const int grp = H / Hkv, qd = H * d, kvd = Hkv * d;
    int rc = -1;
    /* Index kinds run as one layer op on be; DMA / N:M heads get an empty index there (nothing
     * computed) and run on the CPU mask path (eng_dma.h); reshape heads add the estimate on the
     * CPU after the sparse pass, keeping the plain output for error_plain. */
    eng_head_mask *mk = calloc((size_t)H, sizeof *mk);
    eng_head_index *ix = calloc((size_t)H, sizeof *ix);
    const int need_dense = !lse_dense || !out_dense;
    float *od = need_dense ? malloc(sizeof(float) * (size_t)n * qd) : NULL;
    float *ld = need_dense ? malloc(sizeof(float) * (size_t)H * n) : NULL;
    float *os = malloc(sizeof(float) * (size_t)n * qd), *ls = malloc(sizeof(float) * (size_t)H * n);
    float *plain = NULL;
    int any_reshape = 0;
    for (int h = 0; h < H; h++) any_reshape |= pats[h]->reshape;
    if (any_reshape) plain = malloc(sizeof(float) * (size_t)n * qd);
    if (!mk || !ix || !os || !ls || (need_dense && (!od || !ld)) || (any_reshape && !plain)) {
        eng_err_set(err, "layer metrics: out of memory (%d tokens x %d heads)", n, H);
        goto done;
    }
    for (int h = 0; h < H; h++) {
        eng_err e;
        if (eng_dma_mask_build(pats[h], q + (size_t)h * d, qd, k + (size_t)(h / grp) * d, v + (size_t)(h / grp) * d,
                               kvd, n, d, &mk[h], &e)) {
            eng_err_set(err, "head %d: %s", h, e.msg);
            goto done;
        }
        if (mk[h].kind == ENG_MASK_INDEX)
            ix[h] = mk[h].ix; /* borrowed: freed with the mask */
        else if (eng_index_alloc(&ix[h], n, 0, 0, err))
            goto done;
    }
    if (need_dense && eng_report_attention(be, q, k, v, n, H, Hkv, d, NULL, od, ld, err)) goto done;
    if (eng_report_attention(be, q, k, v, n, H, Hkv, d, ix, os, ls, err)) goto done;
    for (int h = 0; h < H; h++) {
        const float *qh = q + (size_t)h * d, *kh = k + (size_t)(h / grp) * d, *vh = v + (size_t)(h / grp) * d;
        if (mk[h].kind != ENG_MASK_INDEX &&
            eng_dma_attn_head(&mk[h], qh, qd, kh, vh, kvd, n, d, os + (size_t)h * d, qd, ls + (size_t)h * n, NULL, err))
            goto done;
        if (!pats[h]->reshape) continue;
        for (int t = 0; t < n; t++)
            memcpy(plain + (size_t)t * qd + (size_t)h * d, os + (size_t)t * qd + (size_t)h * d, sizeof(float) * (size_t)d);
        if (eng_reshape_apply(&mk[h], qh, qd, kh, vh, kvd, n, d, os + (size_t)h * d, qd, ls + (size_t)h * n, NULL,
                              NULL, err))
            goto done;
    }
    const float *lse_d = lse_dense ? lse_dense : ld, *out_d = out_dense ? out_dense : od;
    for (int h = 0; h < H; h++) {
        const int is_ix = mk[h].kind == ENG_MASK_INDEX;
        eng_metrics_head(is_ix ? &ix[h] : NULL, n, d, lse_d + (size_t)h * n, ls + (size_t)h * n, out_d + (size_t)h * d,
                         os + (size_t)h * d, qd, &m[h]);
        if (!is_ix) eng_metrics_set_computed(&m[h], eng_dma_mask_count(&mk[h]));
        if (pats[h]->reshape)
            eng_metrics_set_plain(&m[h], n, d, out_d + (size_t)h * d, plain + (size_t)h * d, qd);
    }
    rc = 0;
done:
    if (mk)
        for (int h = 0; h < H; h++) {
            if (ix && mk[h].kind != ENG_MASK_INDEX) eng_index_free(&ix[h]);
            eng_dma_mask_free(&mk[h]);
        }
    free(mk);
    free(ix);
    free(od);
    free(os);
    free(ls);
    free(ld);
    free(plain);
    return rc;
}

typedef struct {
    const eng_report_opts *o;
    const char *stage;
} prog_ctx;

static void prefill_progress(void *ctx, int layer, int n_layers) {
    prog_ctx *p = ctx;
    p->o->progress(p->o->ctx, p->stage, layer, n_layers);
}

void eng_report_free(eng_report *rep) {
    if (!rep) return;
    free(rep->pattern);
    free(rep->head);
    free(rep->layer);
    memset(rep, 0, sizeof *rep);
}

int eng_report_run(eng_backend *be, const eng_model *m, const int *tokens, int n, const eng_pattern_cfg *cfg,
                   const eng_report_opts *opts, eng_report *rep, eng_prefill_out *sparse_out, eng_err *err) {
    memset(rep, 0, sizeof *rep);
    if (sparse_out) memset(sparse_out, 0, sizeof *sparse_out);
    const int L = m->cfg.n_layers, H = m->cfg.n_heads, Hkv = m->cfg.n_kv_heads, d = m->cfg.head_dim;
    eng_prefill_out dense, sparse;
    memset(&dense, 0, sizeof dense);
    memset(&sparse, 0, sizeof sparse);
    int rc = -1;
    char msg[sizeof err->msg];
    rep->n_layers = L, rep->n_heads = H, rep->n_kv_heads = Hkv, rep->head_dim = d, rep->n_tokens = n;
    snprintf(rep->backend, sizeof rep->backend, "%s", be->name);
    snprintf(rep->device, sizeof rep->device, "%s", be->device);
    rep->pattern = malloc(sizeof *rep->pattern * (size_t)L * H);
    rep->head = calloc((size_t)L * H, sizeof *rep->head);
    rep->layer = calloc((size_t)L, sizeof *rep->layer);
    const eng_pattern **pats = malloc(sizeof *pats * (size_t)H);
    if (!rep->pattern || !rep->head || !rep->layer || !pats) {
        eng_err_set(err, "report: out of memory");
        goto done;
    }
    eng_pattern dense_p = eng_pattern_make(ENG_PAT_DENSE);
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            const eng_pattern *p = cfg ? eng_pattern_cfg_get(cfg, l, h) : &dense_p;
            rep->pattern[(size_t)l * H + h] = *p;
        }

    prog_ctx pd = {opts, "dense prefill"}, ps = {opts, "sparse prefill"};
    const int prog = opts && opts->progress;
    eng_prefill_opts po = {.patterns = NULL, .keep_qkv = 1, .keep_lse = 1,
                           .progress = prog ? prefill_progress : NULL, .progress_ctx = &pd};
    if (be->prefill(be, m, tokens, n, &po, &dense, err)) {
        snprintf(msg, sizeof msg, "%s", err->msg);
        eng_err_set(err, "dense prefill: %s", msg);
        goto done;
    }
    if (!dense.q || !dense.k || !dense.v || !dense.lse) {
        eng_err_set(err, "dense prefill: backend %s did not keep Q/K/V and LSE", be->name);
        goto done;
    }
    eng_prefill_opts sp = {.patterns = cfg, .progress = prog ? prefill_progress : NULL, .progress_ctx = &ps};
    if (be->prefill(be, m, tokens, n, &sp, &sparse, err)) {
        snprintf(msg, sizeof msg, "%s", err->msg);
        eng_err_set(err, "sparse prefill: %s", msg);
        goto done;
    }
    rep->dense_seconds = dense.seconds;
    rep->sparse_seconds = sparse.seconds;
    for (int l = 0; l < L; l++) {
        rep->dense_attn_seconds += dense.attn_seconds ? dense.attn_seconds[l] : 0;
        rep->sparse_attn_seconds += sparse.attn_seconds ? sparse.attn_seconds[l] : 0;
    }
    if (eng_metrics_e2e(&dense, &sparse, &rep->e2e, err)) goto done;

    const double t0 = now_s();
    const size_t qd = (size_t)H * d, kvd = (size_t)Hkv * d;
    for (int l = 0; l < L; l++) {
        for (int h = 0; h < H; h++) pats[h] = &rep->pattern[(size_t)l * H + h];
        if (eng_report_layer(be, dense.q + (size_t)l * n * qd, dense.k + (size_t)l * n * kvd,
                             dense.v + (size_t)l * n * kvd, dense.lse + (size_t)l * H * n, NULL, n, H, Hkv, d, pats,
                             rep->head + (size_t)l * H, err)) {
            snprintf(msg, sizeof msg, "%s", err->msg);
            eng_err_set(err, "metrics, layer %d: %s", l, msg);
            goto done;
        }
        eng_metrics_layer(rep->head + (size_t)l * H, H, &rep->layer[l]);
        if (prog) opts->progress(opts->ctx, "metrics", l + 1, L);
    }
    eng_metrics_layer(rep->head, L * H, &rep->model);
    rep->metrics_seconds = now_s() - t0;
    rc = 0;
done:
    free(pats);
    eng_prefill_out_free(&dense);
    if (rc == 0 && sparse_out)
        *sparse_out = sparse;
    else
        eng_prefill_out_free(&sparse);
    if (rc) eng_report_free(rep);
    return rc;
}

static cJSON *num(double x) { return isfinite(x) ? cJSON_CreateNumber(x) : cJSON_CreateNull(); }

static void add_layer_metrics(cJSON *o, const eng_layer_metrics *lm) {
    cJSON_AddItemToObject(o, "density", num(lm->density));
    cJSON_AddItemToObject(o, "recall", num(lm->recall));
    cJSON_AddItemToObject(o, "min_head_recall", num(lm->min_recall));
    cJSON_AddItemToObject(o, "error", num(lm->error));
    cJSON_AddItemToObject(o, "max_head_error", num(lm->max_error));
    if (lm->n_reshape) { /* reshape heads present: the same layer without their estimate */
        cJSON_AddItemToObject(o, "error_without_reshape", num(lm->error_plain));
        cJSON_AddNumberToObject(o, "reshape_heads", lm->n_reshape);
    }
}

cJSON *eng_report_to_json(const eng_report *rep) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return NULL;
    cJSON_AddNumberToObject(r, "n_tokens", rep->n_tokens);
    cJSON_AddNumberToObject(r, "n_layers", rep->n_layers);
    cJSON_AddNumberToObject(r, "n_heads", rep->n_heads);
    cJSON_AddNumberToObject(r, "n_kv_heads", rep->n_kv_heads);
    cJSON_AddStringToObject(r, "backend", rep->backend);
    cJSON_AddStringToObject(r, "device", rep->device);
    cJSON_AddStringToObject(r, "metrics_on",
                            "per-head numbers use the dense prefill's Q/K/V; end-to-end numbers compare the two "
                            "prefills (errors propagate)");
    cJSON *t = cJSON_AddObjectToObject(r, "seconds");
    cJSON_AddItemToObject(t, "dense_prefill", num(rep->dense_seconds));
    cJSON_AddItemToObject(t, "sparse_prefill", num(rep->sparse_seconds));
    cJSON_AddItemToObject(t, "dense_attention", num(rep->dense_attn_seconds));
    cJSON_AddItemToObject(t, "sparse_attention", num(rep->sparse_attn_seconds));
    cJSON_AddItemToObject(t, "metrics", num(rep->metrics_seconds));
    cJSON *e = cJSON_AddObjectToObject(r, "end_to_end");
    cJSON_AddItemToObject(e, "kl_last", num(rep->e2e.kl_last));
    cJSON_AddItemToObject(e, "top1_agree", num(rep->e2e.top1_agree));
    cJSON_AddItemToObject(e, "nll_dense", num(rep->e2e.nll_dense));
    cJSON_AddItemToObject(e, "nll_sparse", num(rep->e2e.nll_sparse));
    cJSON_AddItemToObject(e, "ppl_dense", num(rep->e2e.ppl_dense));
    cJSON_AddItemToObject(e, "ppl_sparse", num(rep->e2e.ppl_sparse));
    cJSON *all = cJSON_AddObjectToObject(r, "model");
    add_layer_metrics(all, &rep->model);
    cJSON *layers = cJSON_AddArrayToObject(r, "layers");
    for (int l = 0; l < rep->n_layers; l++) {
        cJSON *L = cJSON_CreateObject();
        cJSON_AddItemToArray(layers, L);
        cJSON_AddNumberToObject(L, "layer", l);
        add_layer_metrics(L, &rep->layer[l]);
        cJSON *heads = cJSON_AddArrayToObject(L, "heads");
        for (int h = 0; h < rep->n_heads; h++) {
            const eng_head_metrics *hm = &rep->head[(size_t)l * rep->n_heads + h];
            const eng_pattern *p = &rep->pattern[(size_t)l * rep->n_heads + h];
            cJSON *H = cJSON_CreateObject();
            cJSON_AddItemToArray(heads, H);
            cJSON_AddNumberToObject(H, "head", h);
            cJSON_AddStringToObject(H, "pattern", eng_pattern_kind_name(p->kind));
            int np;
            const eng_pat_param *par = eng_pattern_params(p->kind, &np);
            for (int i = 0; i < np; i++) cJSON_AddNumberToObject(H, par[i].name, eng_pattern_param_get(p, &par[i]));
            cJSON_AddItemToObject(H, "density", num(hm->density));
            cJSON_AddNumberToObject(H, "computed", (double)hm->computed);
            cJSON_AddItemToObject(H, "recall", num(hm->recall));
            cJSON_AddItemToObject(H, "min_recall", num(hm->min_recall));
            cJSON_AddItemToObject(H, "error", num(hm->error));
            if (p->reshape) cJSON_AddItemToObject(H, "error_without_reshape", num(hm->error_plain));
        }
    }
    return r;
}
