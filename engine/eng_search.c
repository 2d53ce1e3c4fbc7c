/* eng_search: per-head pattern search over a cost-matched candidate set (see eng_search.h). */
#include "eng_search.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "eng_attn.h"
#include "eng_dma.h"
#include "eng_metrics.h"
#include "eng_report.h"

int eng_search_set_default(eng_search_set *s, eng_err *err) {
    memset(s, 0, sizeof *s);
    static const int vs[4][2] = {{30, 2048}, {100, 1800}, {500, 1500}, {3000, 200}};
    s->cand = malloc(6 * sizeof *s->cand);
    if (!s->cand) return eng_err_set(err, "search: out of memory");
    s->cand[0] = eng_pattern_make(ENG_PAT_ASHAPE);
    s->cand[0].n_init = 1024;
    s->cand[0].n_local = 4096;
    for (int i = 0; i < 4; i++) {
        s->cand[1 + i] = eng_pattern_make(ENG_PAT_VS);
        s->cand[1 + i].vertical = vs[i][0];
        s->cand[1 + i].slash = vs[i][1];
    }
    s->cand[5] = eng_pattern_make(ENG_PAT_BS);
    s->cand[5].topk = 100;
    s->n_cand = 6;
    s->reference_len = ENG_SEARCH_REFERENCE_LEN;
    return 0;
}

void eng_search_set_free(eng_search_set *s) {
    if (!s) return;
    free(s->cand);
    memset(s, 0, sizeof *s);
}

int eng_search_set_parse(eng_search_set *s, const char *json, size_t len, const char *what, eng_err *err) {
    memset(s, 0, sizeof *s);
    if (!what) what = "candidates";
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) return eng_err_set(err, "%s: not valid JSON (near byte %ld)", what, end ? (long)(end - json) : -1L);
    int rc = -1;
    const cJSON *list = root;
    if (cJSON_IsObject(root)) {
        for (const cJSON *f = root->child; f; f = f->next)
            if (strcmp(f->string, "reference_len") && strcmp(f->string, "candidates")) {
                eng_err_set(err, "%s: unknown field \"%s\" (want reference_len, candidates)", what, f->string);
                goto done;
            }
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "reference_len");
        if (r) {
            if (!cJSON_IsNumber(r) || r->valuedouble != floor(r->valuedouble) || r->valuedouble < 0 ||
                r->valuedouble > (1 << 30)) {
                eng_err_set(err, "%s: reference_len: must be an integer in [0, 2^30]", what);
                goto done;
            }
            s->reference_len = (int)r->valuedouble;
        }
        list = cJSON_GetObjectItemCaseSensitive(root, "candidates");
    }
    if (!cJSON_IsArray(list)) {
        eng_err_set(err, "%s: want a list of pattern objects, or {\"candidates\": [...]}", what);
        goto done;
    }
    int n = cJSON_GetArraySize(list);
    if (n < 1 || n > 256) {
        eng_err_set(err, "%s: %d candidates (want 1..256)", what, n);
        goto done;
    }
    s->cand = malloc((size_t)n * sizeof *s->cand);
    if (!s->cand) {
        eng_err_set(err, "%s: out of memory", what);
        goto done;
    }
    int i = 0;
    for (const cJSON *c = list->child; c; c = c->next, i++) {
        char where[600];
        snprintf(where, sizeof where, "%s: candidates[%d]", what, i);
        if (eng_patcfg_pattern_from_json(c, &s->cand[i], NULL, where, err)) goto done;
    }
    s->n_cand = n;
    rc = 0;
done:
    cJSON_Delete(root);
    if (rc) eng_search_set_free(s);
    return rc;
}

eng_pattern eng_search_scale(const eng_pattern *p, int n, int reference_len) {
    eng_pattern o = *p;
    if (reference_len <= 0 || n >= reference_len) return o;
    const double f = (double)n / reference_len;
    int np;
    const eng_pat_param *par = eng_pattern_params(p->kind, &np);
    for (int i = 0; i < np; i++) {
        if (!par[i].budget) continue;
        double v = eng_pattern_param_get(p, &par[i]);
        double sv = floor(v * f + 0.5);
        if (v > 0 && sv < par[i].budget_min) sv = par[i].budget_min;
        if (sv < par[i].lo) sv = par[i].lo;
        eng_pattern_param_set(&o, &par[i], sv);
    }
    return o;
}

int eng_search_pick(const eng_pat_eval *ev, int n, const eng_search_opts *o) {
    if (n < 1) return -1;
    const int higher = o->objective == ENG_SEARCH_RECALL;
    int best = 0;
    for (int i = 1; i < n; i++)
        if (higher ? ev[i].score > ev[best].score : ev[i].score < ev[best].score) best = i;
    int pick = best;
    for (int i = 0; i < n; i++) {
        if (fabs(ev[i].score - ev[best].score) > o->tie_tol) continue;
        if (ev[i].density < ev[pick].density || (ev[i].density == ev[pick].density && i < pick)) pick = i;
    }
    return pick;
}

static double objective_score(const eng_head_metrics *hm, eng_search_objective ob) {
    return ob == ENG_SEARCH_RECALL ? hm->recall : hm->error;
}

static void fill_eval(eng_pat_eval *ev, const eng_pattern *p, const eng_head_metrics *hm, eng_search_objective ob) {
    ev->pat = *p;
    ev->score = objective_score(hm, ob);
    ev->density = hm->density;
    ev->recall = hm->recall;
    ev->error = hm->error;
}

int eng_search_head(const float *q, int q_stride, const float *k, const float *v, int kv_stride, int n, int d,
                    const eng_pattern *cand, int n_cand, const eng_search_opts *o, eng_pat_eval *ev, int *best,
                    eng_err *err) {
    if (n < 1 || d < 1 || n_cand < 1) return eng_err_set(err, "search: nothing to score (n %d, d %d, %d candidates)", n, d, n_cand);
    int rc = -1;
    float *od = malloc(sizeof(float) * (size_t)n * d), *os = malloc(sizeof(float) * (size_t)n * d);
    float *ld = malloc(sizeof(float) * (size_t)n), *ls = malloc(sizeof(float) * (size_t)n);
    eng_head_index ix;
    memset(&ix, 0, sizeof ix);
    if (!od || !os || !ld || !ls) {
        eng_err_set(err, "search: out of memory (n %d)", n);
        goto done;
    }
    eng_pattern dp = eng_pattern_make(ENG_PAT_DENSE);
    if (eng_pattern_build(&dp, q, q_stride, k, kv_stride, n, d, &ix, err)) goto done;
    eng_attn_sparse_head(q, q_stride, k, v, kv_stride, n, d, &ix, od, d, ld);
    eng_index_free(&ix);
    for (int c = 0; c < n_cand; c++) {
        eng_err e;
        long long computed = 0;
        /* Any kind (index or per-row mask, reshape or not) through the one head entry point. */
        if (eng_dma_attend(&cand[c], q, q_stride, k, v, kv_stride, n, d, os, d, ls, NULL, &computed, &e)) {
            char desc[128];
            eng_pattern_describe(&cand[c], desc, sizeof desc);
            eng_err_set(err, "search: candidate %d %s: %s", c, desc, e.msg);
            goto done;
        }
        eng_head_metrics hm;
        eng_metrics_head(NULL, n, d, ld, ls, od, os, d, &hm);
        eng_metrics_set_computed(&hm, computed);
        fill_eval(&ev[c], &cand[c], &hm, o->objective);
    }
    *best = eng_search_pick(ev, n_cand, o);
    rc = 0;
done:
    eng_index_free(&ix);
    free(od);
    free(os);
    free(ld);
    free(ls);
    return rc;
}

int eng_search_run(eng_backend *be, const eng_model *m, const int *tokens, int n, const eng_search_set *set,
                   const eng_search_opts *o, eng_patcfg *out, eng_err *err) {
    memset(out, 0, sizeof *out);
    const int L = m->cfg.n_layers, H = m->cfg.n_heads, Hkv = m->cfg.n_kv_heads, d = m->cfg.head_dim;
    const int C = set->n_cand;
    if (C < 1) return eng_err_set(err, "search: no candidates");
    eng_prefill_out dense;
    memset(&dense, 0, sizeof dense);
    eng_pattern *cand = malloc(sizeof *cand * (size_t)C);
    const eng_pattern **pats = malloc(sizeof *pats * (size_t)H);
    eng_head_metrics *hm = malloc(sizeof *hm * (size_t)H * C);
    eng_pat_eval *ev = malloc(sizeof *ev * (size_t)C);
    float *od = malloc(sizeof(float) * (size_t)n * H * d), *ld = malloc(sizeof(float) * (size_t)H * n);
    int rc = -1;
    char msg[sizeof err->msg];
    if (!cand || !pats || !hm || !ev || !od || !ld) {
        eng_err_set(err, "search: out of memory (%d tokens x %d heads)", n, H);
        goto done;
    }
    for (int c = 0; c < C; c++) {
        eng_err e;
        if (eng_pattern_validate(&set->cand[c], &e)) {
            eng_err_set(err, "search: candidate %d: %s", c, e.msg);
            goto done;
        }
        cand[c] = eng_search_scale(&set->cand[c], n, set->reference_len);
    }
    eng_prefill_opts po = {.keep_qkv = 1, .keep_lse = 1};
    if (be->prefill(be, m, tokens, n, &po, &dense, err)) {
        snprintf(msg, sizeof msg, "%s", err->msg);
        eng_err_set(err, "dense prefill: %s", msg);
        goto done;
    }
    if (!dense.q || !dense.k || !dense.v) {
        eng_err_set(err, "dense prefill: backend %s did not keep Q/K/V", be->name);
        goto done;
    }
    if (eng_patcfg_init(out, L, H, NULL, err) || eng_patcfg_reserve_candidates(out, C, err)) goto done;
    snprintf(out->objective, sizeof out->objective, "%s", o->objective == ENG_SEARCH_RECALL ? "recall" : "output");
    out->n_tokens = n;
    out->reference_len = set->reference_len;
    const size_t qd = (size_t)H * d, kvd = (size_t)Hkv * d;
    for (int l = 0; l < L; l++) {
        const float *q = dense.q + (size_t)l * n * qd, *k = dense.k + (size_t)l * n * kvd,
                    *v = dense.v + (size_t)l * n * kvd;
        if (eng_report_attention(be, q, k, v, n, H, Hkv, d, NULL, od, ld, err)) goto layer_fail;
        for (int c = 0; c < C; c++) {
            for (int h = 0; h < H; h++) pats[h] = &cand[c];
            if (eng_report_layer(be, q, k, v, ld, od, n, H, Hkv, d, pats, hm + (size_t)c * H, err)) goto layer_fail;
        }
        for (int h = 0; h < H; h++) {
            for (int c = 0; c < C; c++) fill_eval(&ev[c], &cand[c], &hm[(size_t)c * H + h], o->objective);
            int b = eng_search_pick(ev, C, o);
            eng_patcfg_set(out, l, h, &ev[b].pat, ev[b].score);
            size_t i = (size_t)l * H + h;
            memcpy(out->cand + i * (size_t)C, ev, sizeof *ev * (size_t)C);
            out->n_cand[i] = C;
        }
        if (o->progress) o->progress(o->progress_ctx, l + 1, L);
        continue;
    layer_fail:
        snprintf(msg, sizeof msg, "%s", err->msg);
        eng_err_set(err, "search, layer %d: %s", l, msg);
        goto done;
    }
    rc = 0;
done:
    if (rc) eng_patcfg_free(out);
    eng_prefill_out_free(&dense);
    free(cand);
    free(pats);
    free(hm);
    free(ev);
    free(od);
    free(ld);
    return rc;
}
