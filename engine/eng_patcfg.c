/* eng_patcfg: MInference and native per-head pattern config files (see eng_patcfg.h and
 * docs/patterns.md): strict parsing with errors naming layer, head and field, and exact export. */
#include "eng_patcfg.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#define NATIVE_FORMAT "attnscope-patterns"
#define NATIVE_VERSION 1
#define MAX_DIM 100000 /* layers or heads: far above any model, low enough to refuse garbage */

/* ---- life cycle ------------------------------------------------------------------------- */

int eng_patcfg_init(eng_patcfg *pc, int n_layers, int n_heads, const eng_pattern *def, eng_err *err) {
    memset(pc, 0, sizeof *pc);
    if (n_layers < 1 || n_layers > MAX_DIM || n_heads < 1 || n_heads > MAX_DIM)
        return eng_err_set(err, "pattern config: %d layers x %d heads is out of range", n_layers, n_heads);
    size_t nh = (size_t)n_layers * n_heads;
    pc->cfg.n_layers = n_layers;
    pc->cfg.n_heads = n_heads;
    pc->cfg.def = def ? *def : eng_pattern_make(ENG_PAT_DENSE);
    pc->cfg.heads = malloc(nh * sizeof *pc->cfg.heads);
    pc->score = calloc(nh, sizeof *pc->score);
    pc->listed = calloc(nh, 1);
    if (!pc->cfg.heads || !pc->score || !pc->listed) {
        eng_patcfg_free(pc);
        return eng_err_set(err, "pattern config: out of memory for %d x %d heads", n_layers, n_heads);
    }
    for (size_t i = 0; i < nh; i++) pc->cfg.heads[i] = pc->cfg.def;
    return 0;
}

void eng_patcfg_free(eng_patcfg *pc) {
    if (!pc) return;
    free(pc->cfg.heads);
    free(pc->score);
    free(pc->listed);
    free(pc->n_cand);
    free(pc->cand);
    memset(pc, 0, sizeof *pc);
}

int eng_patcfg_reserve_candidates(eng_patcfg *pc, int cap, eng_err *err) {
    free(pc->n_cand);
    free(pc->cand);
    pc->n_cand = NULL;
    pc->cand = NULL;
    pc->cand_cap = 0;
    if (cap <= 0) return 0;
    size_t nh = (size_t)pc->cfg.n_layers * pc->cfg.n_heads;
    pc->n_cand = calloc(nh, sizeof *pc->n_cand);
    pc->cand = calloc(nh * (size_t)cap, sizeof *pc->cand);
    if (!pc->n_cand || !pc->cand) {
        free(pc->n_cand);
        free(pc->cand);
        pc->n_cand = NULL;
        pc->cand = NULL;
        return eng_err_set(err, "pattern config: out of memory for %d candidates per head", cap);
    }
    pc->cand_cap = cap;
    return 0;
}

void eng_patcfg_set(eng_patcfg *pc, int layer, int head, const eng_pattern *p, double score) {
    size_t i = (size_t)layer * pc->cfg.n_heads + head;
    pc->cfg.heads[i] = *p;
    pc->cfg.heads[i].score = (float)score;
    pc->score[i] = score;
    pc->listed[i] = 1;
}

/* ---- text building ------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)w < b->cap) {
            b->len += (size_t)w;
            return;
        }
        size_t nc = (b->cap ? b->cap * 2 : 4096) + (size_t)w;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
}

/* Python's repr(float): the shortest digits that round-trip, fixed notation for exponents in
 * [-4, 16), else d.ddde+XX. This is what json.dumps writes, so exports match upstream files. */
static int py_float(double v, char *out, size_t cap) {
    if (!isfinite(v)) return -1;
    char e[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, v);
        if (strtod(e, NULL) == v) break;
    }
    const char *s = e;
    char sign[2] = {0, 0};
    if (*s == '-') sign[0] = '-', s++;
    char dig[24];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9') dig[nd++] = *s;
    dig[nd] = 0;
    int ex = atoi(s + 1);
    while (nd > 1 && dig[nd - 1] == '0') dig[--nd] = 0;
    if (ex >= -4 && ex < 16) {
        char buf[64];
        int w = 0;
        if (ex >= 0) {
            for (int i = 0; i <= ex; i++) buf[w++] = i < nd ? dig[i] : '0';
            buf[w++] = '.';
            if (nd > ex + 1)
                for (int i = ex + 1; i < nd; i++) buf[w++] = dig[i];
            else
                buf[w++] = '0';
        } else {
            buf[w++] = '0';
            buf[w++] = '.';
            for (int i = 0; i < -ex - 1; i++) buf[w++] = '0';
            for (int i = 0; i < nd; i++) buf[w++] = dig[i];
        }
        buf[w] = 0;
        snprintf(out, cap, "%s%s", sign, buf);
    } else {
        snprintf(out, cap, "%s%c%s%se%c%02d", sign, dig[0], nd > 1 ? "." : "", nd > 1 ? dig + 1 : "",
                 ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
    }
    return 0;
}

/* ---- MInference format -------------------------------------------------------------------- */

static const char *upstream_name(eng_pat_kind k) {
    switch (k) {
    case ENG_PAT_ASHAPE: return "stream_llm";
    case ENG_PAT_VS: return "vertical_and_slash";
    case ENG_PAT_BS: return "block_sparse";
    default: return NULL;
    }
}

static eng_pattern upstream_default(void) {
    eng_pattern p = eng_pattern_make(ENG_PAT_VS);
    p.vertical = 1000;
    p.slash = 6096;
    return p;
}

/* "at line L column C" for a cJSON parse failure. */
static int parse_fail(const char *json, size_t len, const char *end, const char *what, eng_err *err) {
    int line = 1, col = 1;
    if (!end || end < json || end > json + len) end = json + len;
    for (const char *p = json; p < end; p++) {
        if (*p == '\n') line++, col = 1;
        else col++;
    }
    return eng_err_set(err, "%s: not valid JSON (at line %d, column %d)", what, line, col);
}

static cJSON *parse_json(const char *json, size_t len, const char *what, eng_err *err) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        parse_fail(json, len, end, what, err);
        return NULL;
    }
    /* Anything but whitespace after the value is an error, not silently ignored. */
    for (const char *p = end; p && p < json + len && *p; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
            cJSON_Delete(root);
            parse_fail(json, len, p, what, err);
            return NULL;
        }
    return root;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* A key given twice in one object: cJSON keeps both and lookups see only the first, so the file
 * would silently mean something else than it says. Sorted per object: O(k log k). *dup is the key. */
static int find_dup_key(const cJSON *o, const char **dup) {
    int n = 0;
    for (const cJSON *c = o ? o->child : NULL; c; c = c->next) {
        if (find_dup_key(c, dup)) return 1;
        n += cJSON_IsObject(o) && c->string;
    }
    if (n < 2) return 0;
    const char **keys = malloc(sizeof(char *) * (size_t)n);
    if (!keys) return 0; /* out of memory: the lookups still work */
    int k = 0;
    for (const cJSON *c = o->child; c; c = c->next)
        if (c->string) keys[k++] = c->string;
    qsort(keys, (size_t)k, sizeof *keys, cmp_str);
    int found = 0;
    for (int i = 1; i < k && !found; i++)
        if (!strcmp(keys[i - 1], keys[i])) *dup = keys[i], found = 1;
    free(keys);
    return found;
}

/* Strict non-negative integer from a JSON number. */
static int json_int(const cJSON *x, long long lo, long long hi, long long *out) {
    if (!cJSON_IsNumber(x)) return -1;
    double v = x->valuedouble;
    if (!isfinite(v) || v != floor(v) || v < (double)lo || v > (double)hi) return -1;
    *out = (long long)v;
    return 0;
}

/* Head key: decimal digits only, no sign or leading zeros. */
static int head_key(const char *s, int *out) {
    if (!s || !*s || strlen(s) > 9) return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    if (s[0] == '0' && s[1]) return -1;
    *out = atoi(s);
    return 0;
}

int eng_patcfg_parse_minference(eng_patcfg *pc, const char *json, size_t len, const char *what, eng_err *err) {
    memset(pc, 0, sizeof *pc);
    if (!what) what = "MInference config";
    cJSON *root = parse_json(json, len, what, err);
    if (!root) return -1;
    int rc = -1;
    if (!cJSON_IsArray(root)) {
        eng_err_set(err, "%s: top level must be a JSON list (one object per layer)", what);
        goto done;
    }
    int n_layers = cJSON_GetArraySize(root), n_heads = 0;
    if (n_layers < 1 || n_layers > MAX_DIM) {
        eng_err_set(err, "%s: %d layers (want 1..%d)", what, n_layers, MAX_DIM);
        goto done;
    }
    /* Pass 1: shapes and head keys. */
    int li = 0;
    for (const cJSON *layer = root->child; layer; layer = layer->next, li++) {
        if (!cJSON_IsObject(layer)) {
            eng_err_set(err, "%s: layer %d: must be an object mapping head index to [pattern, vertical_size, "
                             "slash_size, score]", what, li);
            goto done;
        }
        for (const cJSON *h = layer->child; h; h = h->next) {
            int hi;
            if (head_key(h->string, &hi) || hi >= MAX_DIM) {
                eng_err_set(err, "%s: layer %d: head key \"%s\" is not a head index (want \"0\", \"1\", ...)", what,
                            li, h->string ? h->string : "");
                goto done;
            }
            for (const cJSON *g = layer->child; g != h; g = g->next)
                if (!strcmp(g->string, h->string)) {
                    eng_err_set(err, "%s: layer %d: head %d is listed twice", what, li, hi);
                    goto done;
                }
            if (hi + 1 > n_heads) n_heads = hi + 1;
        }
    }
    if (n_heads == 0) {
        eng_err_set(err, "%s: no heads in any layer", what);
        goto done;
    }
    eng_pattern def = upstream_default();
    if (eng_patcfg_init(pc, n_layers, n_heads, &def, err)) goto done;
    int all_int = 1;
    li = 0;
    for (const cJSON *layer = root->child; layer; layer = layer->next, li++) {
        for (const cJSON *h = layer->child; h; h = h->next) {
            int hi = 0;
            head_key(h->string, &hi);
            if (!cJSON_IsArray(h) || cJSON_GetArraySize(h) != 4) {
                eng_err_set(err, "%s: layer %d head %d: want [pattern, vertical_size, slash_size, score]", what, li, hi);
                goto fail;
            }
            const cJSON *ty = cJSON_GetArrayItem(h, 0), *vs = cJSON_GetArrayItem(h, 1),
                        *ss = cJSON_GetArrayItem(h, 2), *sc = cJSON_GetArrayItem(h, 3);
            eng_pat_kind kind;
            if (!cJSON_IsString(ty) || eng_pattern_kind_parse(ty->valuestring, &kind) || !upstream_name(kind) ||
                strcmp(upstream_name(kind), ty->valuestring)) {
                eng_err_set(err, "%s: layer %d head %d: pattern: %s%s%s is not vertical_and_slash, stream_llm or "
                                 "block_sparse", what, li, hi, cJSON_IsString(ty) ? "\"" : "",
                            cJSON_IsString(ty) ? ty->valuestring : "a non-string", cJSON_IsString(ty) ? "\"" : "");
                goto fail;
            }
            long long v, s;
            if (json_int(vs, 0, 1 << 30, &v)) {
                eng_err_set(err, "%s: layer %d head %d: vertical_size must be an integer in [0, 2^30]", what, li, hi);
                goto fail;
            }
            if (json_int(ss, 0, 1 << 30, &s)) {
                eng_err_set(err, "%s: layer %d head %d: slash_size must be an integer in [0, 2^30]", what, li, hi);
                goto fail;
            }
            if (!cJSON_IsNumber(sc) || !isfinite(sc->valuedouble)) {
                eng_err_set(err, "%s: layer %d head %d: score must be a number", what, li, hi);
                goto fail;
            }
            eng_pattern p = eng_pattern_make(kind);
            if (kind == ENG_PAT_ASHAPE) {
                p.n_init = (int)v;
                p.n_local = (int)s;
                if (p.n_local < 1) {
                    eng_err_set(err, "%s: layer %d head %d: slash_size (stream_llm local window) must be >= 1", what,
                                li, hi);
                    goto fail;
                }
            }
            /* VS: the sizes; BS: upstream ignores them (topk 100) but we keep them for export. */
            if (kind == ENG_PAT_VS || kind == ENG_PAT_BS) {
                p.vertical = (int)v;
                p.slash = (int)s;
            }
            double score = sc->valuedouble;
            if (score != floor(score) || fabs(score) > 9007199254740992.0) all_int = 0;
            eng_patcfg_set(pc, li, hi, &p, score);
        }
    }
    pc->scores_are_int = all_int;
    snprintf(pc->source, sizeof pc->source, "%s", what);
    rc = 0;
    goto done;
fail:
    eng_patcfg_free(pc);
done:
    cJSON_Delete(root);
    return rc;
}

static int minference_sizes(const eng_pattern *p, long long *v, long long *s) {
    switch (p->kind) {
    case ENG_PAT_ASHAPE: *v = p->n_init, *s = p->n_local; return 0;
    case ENG_PAT_VS: *v = p->vertical, *s = p->slash; return 0;
    case ENG_PAT_BS: *v = p->vertical, *s = p->slash; return 0;
    default: return -1;
    }
}

char *eng_patcfg_minference_text(const eng_patcfg *pc, eng_err *err) {
    sbuf b = {0};
    sb_add(&b, "[");
    for (int l = 0; l < pc->cfg.n_layers; l++) {
        sb_add(&b, "%s{", l ? ", " : "");
        int first = 1;
        for (int h = 0; h < pc->cfg.n_heads; h++) {
            size_t i = (size_t)l * pc->cfg.n_heads + h;
            if (!pc->listed[i]) continue;
            const eng_pattern *p = &pc->cfg.heads[i];
            long long v, s;
            if (p->reshape) {
                free(b.p);
                eng_err_set(err, "MInference export: layer %d head %d: the reshape option has no MInference "
                                 "equivalent", l, h);
                return NULL;
            }
            if (minference_sizes(p, &v, &s)) {
                free(b.p);
                eng_err_set(err, "MInference export: layer %d head %d: pattern %s has no MInference equivalent "
                                 "(only stream_llm, vertical_and_slash, block_sparse)", l, h,
                            eng_pattern_kind_name(p->kind));
                return NULL;
            }
            char num[48];
            if (pc->scores_are_int && pc->score[i] == floor(pc->score[i]) && fabs(pc->score[i]) < 1e18)
                snprintf(num, sizeof num, "%lld", (long long)pc->score[i]);
            else if (py_float(pc->score[i], num, sizeof num)) {
                free(b.p);
                eng_err_set(err, "MInference export: layer %d head %d: score is not a finite number", l, h);
                return NULL;
            }
            sb_add(&b, "%s\"%d\": [\"%s\", %lld, %lld, %s]", first ? "" : ", ", h, upstream_name(p->kind), v, s, num);
            first = 0;
        }
        sb_add(&b, "}");
    }
    sb_add(&b, "]\n");
    if (b.oom) {
        free(b.p);
        eng_err_set(err, "MInference export: out of memory");
        return NULL;
    }
    return b.p;
}

/* ---- native format ------------------------------------------------------------------------ */

/* Fill *p from a native pattern object; `where` prefixes errors. Keys other than "pattern", the
 * kind's parameters and those in `extra` are refused (typos must not pass silently). */
int eng_patcfg_pattern_from_json(const cJSON *o, eng_pattern *p, const char *const *extra, const char *where,
                                 eng_err *err) {
    if (!cJSON_IsObject(o)) return eng_err_set(err, "%s: must be an object {\"pattern\": NAME, ...}", where);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    eng_pat_kind kind;
    if (!cJSON_IsString(name)) return eng_err_set(err, "%s: pattern: missing or not a string", where);
    if (eng_pattern_kind_parse(name->valuestring, &kind)) {
        char known[256] = "";
        for (int k = 0; k < ENG_PAT__COUNT; k++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", k ? ", " : "",
                     eng_pattern_kind_name((eng_pat_kind)k));
        return eng_err_set(err, "%s: pattern: unknown \"%s\" (known: %s)", where, name->valuestring, known);
    }
    *p = eng_pattern_make(kind);
    int np;
    const eng_pat_param *par = eng_pattern_params(kind, &np);
    for (const cJSON *f = o->child; f; f = f->next) {
        if (!strcmp(f->string, "pattern")) continue;
        int ok = 0;
        for (int e = 0; extra && extra[e]; e++)
            if (!strcmp(f->string, extra[e])) ok = 1;
        if (ok) continue;
        const eng_pat_param *pp = NULL;
        for (int i = 0; i < np; i++)
            if (!strcmp(f->string, par[i].name)) pp = &par[i];
        if (!pp) {
            char known[256] = "";
            for (int i = 0; i < np; i++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", par[i].name);
            return eng_err_set(err, "%s: %s: not a parameter of pattern %s (its parameters: %s)", where, f->string,
                               eng_pattern_kind_name(kind), np ? known : "none");
        }
        if (!cJSON_IsNumber(f) || !isfinite(f->valuedouble))
            return eng_err_set(err, "%s: %s: must be a number", where, f->string);
        double v = f->valuedouble;
        if (!pp->is_float && v != floor(v)) return eng_err_set(err, "%s: %s: must be an integer, got %g", where, f->string, v);
        if (!(v >= pp->lo && v <= pp->hi))
            return eng_err_set(err, "%s: %s: %g outside [%g, %g]", where, f->string, v, pp->lo, pp->hi);
        eng_pattern_param_set(p, pp, v);
    }
    eng_err e; /* cross-field rules (nm n <= m, xattn stride divides 128) */
    if (eng_pattern_validate(p, &e)) return eng_err_set(err, "%s: %s", where, e.msg);
    return 0;
}

cJSON *eng_patcfg_pattern_to_json(const eng_pattern *p) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "pattern", eng_pattern_kind_name(p->kind));
    int np;
    const eng_pat_param *par = eng_pattern_params(p->kind, &np);
    for (int i = 0; i < np; i++) {
        double v = eng_pattern_param_get(p, &par[i]);
        if (par[i].quiet && v == par[i].def) continue; /* options at their default stay implicit */
        cJSON_AddNumberToObject(o, par[i].name, v);
    }
    return o;
}

static int get_int_field(const cJSON *o, const char *key, int required, long long lo, long long hi, long long *out,
                         const char *where, eng_err *err) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!x) {
        if (required) return eng_err_set(err, "%s: %s: missing", where, key);
        return 1;
    }
    if (json_int(x, lo, hi, out)) return eng_err_set(err, "%s: %s: must be an integer in [%lld, %lld]", where, key, lo, hi);
    return 0;
}

static double num_or_nan(const cJSON *o, const char *key) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

int eng_patcfg_parse_native(eng_patcfg *pc, const char *json, size_t len, const char *what, eng_err *err) {
    memset(pc, 0, sizeof *pc);
    if (!what) what = "pattern config";
    cJSON *root = parse_json(json, len, what, err);
    if (!root) return -1;
    int rc = -1;
    char where[640];
    if (!cJSON_IsObject(root)) {
        eng_err_set(err, "%s: top level must be an object with \"format\": \"%s\"", what, NATIVE_FORMAT);
        goto done;
    }
    const char *dup = NULL;
    if (find_dup_key(root, &dup)) {
        eng_err_set(err, "%s: field \"%s\" appears twice in one object", what, dup);
        goto done;
    }
    static const char *const top_keys[] = {"format", "version", "n_layers", "n_heads", "default", "layers",
                                           "source", "search", "scores_are_int", NULL};
    for (const cJSON *f = root->child; f; f = f->next) {
        int ok = 0;
        for (int i = 0; top_keys[i]; i++) ok |= !strcmp(f->string, top_keys[i]);
        if (!ok) {
            eng_err_set(err, "%s: unknown top-level field \"%s\"", what, f->string);
            goto done;
        }
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, NATIVE_FORMAT)) {
        eng_err_set(err, "%s: format: want \"%s\"", what, NATIVE_FORMAT);
        goto done;
    }
    long long ver, nl, nh;
    if (get_int_field(root, "version", 1, 1, 1000, &ver, what, err)) goto done;
    if (ver > NATIVE_VERSION) {
        eng_err_set(err, "%s: version %lld is newer than this attnscope reads (%d)", what, ver, NATIVE_VERSION);
        goto done;
    }
    if (get_int_field(root, "n_layers", 1, 1, MAX_DIM, &nl, what, err) ||
        get_int_field(root, "n_heads", 1, 1, MAX_DIM, &nh, what, err))
        goto done;
    eng_pattern def = eng_pattern_make(ENG_PAT_DENSE);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(root, "default");
    if (jd) {
        snprintf(where, sizeof where, "%s: default", what);
        if (eng_patcfg_pattern_from_json(jd, &def, NULL, where, err)) goto done;
    }
    if (eng_patcfg_init(pc, (int)nl, (int)nh, &def, err)) goto done;
    const cJSON *sai = cJSON_GetObjectItemCaseSensitive(root, "scores_are_int");
    if (sai && !cJSON_IsBool(sai)) {
        eng_err_set(err, "%s: scores_are_int: must be true or false", what);
        goto fail;
    }
    pc->scores_are_int = cJSON_IsTrue(sai);
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(root, "source");
    if (src && !cJSON_IsString(src)) {
        eng_err_set(err, "%s: source: must be a string", what);
        goto fail;
    }
    snprintf(pc->source, sizeof pc->source, "%s", src ? src->valuestring : what);
    const cJSON *search = cJSON_GetObjectItemCaseSensitive(root, "search");
    if (search) {
        snprintf(where, sizeof where, "%s: search", what);
        if (!cJSON_IsObject(search)) {
            eng_err_set(err, "%s: must be an object", where);
            goto fail;
        }
        const cJSON *obj = cJSON_GetObjectItemCaseSensitive(search, "objective");
        if (obj && (!cJSON_IsString(obj) || (strcmp(obj->valuestring, "output") && strcmp(obj->valuestring, "recall")))) {
            eng_err_set(err, "%s: objective: want \"output\" or \"recall\"", where);
            goto fail;
        }
        if (obj) snprintf(pc->objective, sizeof pc->objective, "%s", obj->valuestring);
        long long t;
        int g = get_int_field(search, "n_tokens", 0, 0, 1 << 30, &t, where, err);
        if (g < 0) goto fail;
        if (!g) pc->n_tokens = (int)t;
        g = get_int_field(search, "reference_len", 0, 0, 1 << 30, &t, where, err);
        if (g < 0) goto fail;
        if (!g) pc->reference_len = (int)t;
    }
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    if (layers && !cJSON_IsArray(layers)) {
        eng_err_set(err, "%s: layers: must be a list", what);
        goto fail;
    }
    /* Candidate capacity: the longest per-head list. */
    int cap = 0;
    for (const cJSON *L = layers ? layers->child : NULL; L; L = L->next) {
        const cJSON *heads = cJSON_GetObjectItemCaseSensitive(L, "heads");
        for (const cJSON *H = cJSON_IsArray(heads) ? heads->child : NULL; H; H = H->next) {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(H, "candidates");
            if (cJSON_IsArray(c) && cJSON_GetArraySize(c) > cap) cap = cJSON_GetArraySize(c);
        }
    }
    if (cap > 10000) {
        eng_err_set(err, "%s: %d candidates for one head is more than the 10000 supported", what, cap);
        goto fail;
    }
    if (eng_patcfg_reserve_candidates(pc, cap, err)) goto fail;
    int li = 0;
    for (const cJSON *L = layers ? layers->child : NULL; L; L = L->next, li++) {
        snprintf(where, sizeof where, "%s: layers[%d]", what, li);
        if (!cJSON_IsObject(L)) {
            eng_err_set(err, "%s: must be an object {\"layer\": N, \"heads\": [...]}", where);
            goto fail;
        }
        for (const cJSON *f = L->child; f; f = f->next)
            if (strcmp(f->string, "layer") && strcmp(f->string, "heads")) {
                eng_err_set(err, "%s: unknown field \"%s\"", where, f->string);
                goto fail;
            }
        long long layer;
        if (get_int_field(L, "layer", 1, 0, nl - 1, &layer, where, err)) goto fail;
        const cJSON *heads = cJSON_GetObjectItemCaseSensitive(L, "heads");
        if (!cJSON_IsArray(heads)) {
            eng_err_set(err, "%s (layer %lld): heads: missing or not a list", where, layer);
            goto fail;
        }
        int hj = 0;
        for (const cJSON *H = heads->child; H; H = H->next, hj++) {
            snprintf(where, sizeof where, "%s: layer %lld heads[%d]", what, layer, hj);
            long long head;
            if (!cJSON_IsObject(H)) {
                eng_err_set(err, "%s: must be an object {\"head\": N, \"pattern\": NAME, ...}", where);
                goto fail;
            }
            if (get_int_field(H, "head", 1, 0, nh - 1, &head, where, err)) goto fail;
            snprintf(where, sizeof where, "%s: layer %lld head %lld", what, layer, head);
            size_t idx = (size_t)layer * nh + head;
            if (pc->listed[idx]) {
                eng_err_set(err, "%s: listed twice", where);
                goto fail;
            }
            static const char *const head_extra[] = {"head", "score", "candidates", NULL};
            eng_pattern p;
            if (eng_patcfg_pattern_from_json(H, &p, head_extra, where, err)) goto fail;
            const cJSON *sc = cJSON_GetObjectItemCaseSensitive(H, "score");
            if (sc && (!cJSON_IsNumber(sc) || !isfinite(sc->valuedouble))) {
                eng_err_set(err, "%s: score: must be a number", where);
                goto fail;
            }
            eng_patcfg_set(pc, (int)layer, (int)head, &p, sc ? sc->valuedouble : 0.0);
            const cJSON *cands = cJSON_GetObjectItemCaseSensitive(H, "candidates");
            if (cands && !cJSON_IsArray(cands)) {
                eng_err_set(err, "%s: candidates: must be a list", where);
                goto fail;
            }
            int cj = 0;
            for (const cJSON *C = cands ? cands->child : NULL; C; C = C->next, cj++) {
                char cw[700];
                snprintf(cw, sizeof cw, "%s: candidates[%d]", where, cj);
                static const char *const cand_extra[] = {"score", "density", "recall", "error", NULL};
                eng_pat_eval *ev = &pc->cand[idx * (size_t)pc->cand_cap + cj];
                if (eng_patcfg_pattern_from_json(C, &ev->pat, cand_extra, cw, err)) goto fail;
                for (int m = 0; cand_extra[m]; m++) {
                    const cJSON *x = cJSON_GetObjectItemCaseSensitive(C, cand_extra[m]);
                    if (x && !cJSON_IsNumber(x)) {
                        eng_err_set(err, "%s: %s: must be a number", cw, cand_extra[m]);
                        goto fail;
                    }
                }
                ev->score = num_or_nan(C, "score");
                ev->density = num_or_nan(C, "density");
                ev->recall = num_or_nan(C, "recall");
                ev->error = num_or_nan(C, "error");
            }
            if (pc->n_cand) pc->n_cand[idx] = cj;
        }
    }
    rc = 0;
    goto done;
fail:
    eng_patcfg_free(pc);
done:
    cJSON_Delete(root);
    return rc;
}

/* cJSON prints doubles with 15 digits when they round-trip within an epsilon, which loses the
 * last bits; write the shortest exact digits instead (what Python's json writes). */
static void add_num(cJSON *o, const char *k, double v) {
    char t[48];
    if (!isfinite(v)) return;
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(t, sizeof t, "%.0f", v);
    else if (py_float(v, t, sizeof t))
        return;
    cJSON_AddRawToObject(o, k, t);
}

char *eng_patcfg_native_text(const eng_patcfg *pc, eng_err *err) {
    cJSON *root = cJSON_CreateObject();
    char *out = NULL;
    if (!root) goto oom;
    cJSON_AddStringToObject(root, "format", NATIVE_FORMAT);
    cJSON_AddNumberToObject(root, "version", NATIVE_VERSION);
    cJSON_AddNumberToObject(root, "n_layers", pc->cfg.n_layers);
    cJSON_AddNumberToObject(root, "n_heads", pc->cfg.n_heads);
    if (pc->source[0]) cJSON_AddStringToObject(root, "source", pc->source);
    if (pc->scores_are_int) cJSON_AddBoolToObject(root, "scores_are_int", 1);
    cJSON_AddItemToObject(root, "default", eng_patcfg_pattern_to_json(&pc->cfg.def));
    if (pc->objective[0] || pc->n_tokens || pc->reference_len) {
        cJSON *s = cJSON_AddObjectToObject(root, "search");
        if (pc->objective[0]) cJSON_AddStringToObject(s, "objective", pc->objective);
        if (pc->n_tokens) cJSON_AddNumberToObject(s, "n_tokens", pc->n_tokens);
        if (pc->reference_len) cJSON_AddNumberToObject(s, "reference_len", pc->reference_len);
    }
    cJSON *layers = cJSON_AddArrayToObject(root, "layers");
    if (!layers) goto oom;
    for (int l = 0; l < pc->cfg.n_layers; l++) {
        cJSON *L = NULL, *heads = NULL;
        for (int h = 0; h < pc->cfg.n_heads; h++) {
            size_t i = (size_t)l * pc->cfg.n_heads + h;
            if (!pc->listed[i]) continue;
            if (!L) {
                L = cJSON_CreateObject();
                cJSON_AddItemToArray(layers, L);
                cJSON_AddNumberToObject(L, "layer", l);
                heads = cJSON_AddArrayToObject(L, "heads");
            }
            if (!isfinite(pc->score[i])) {
                cJSON_Delete(root);
                eng_err_set(err, "native export: layer %d head %d: score is not a finite number", l, h);
                return NULL;
            }
            cJSON *H = cJSON_CreateObject();
            cJSON_AddItemToArray(heads, H);
            cJSON_AddNumberToObject(H, "head", h);
            cJSON *pj = eng_patcfg_pattern_to_json(&pc->cfg.heads[i]);
            if (!pj) goto oom;
            /* Move the pattern's fields into the head object, after "head". */
            while (pj->child) {
                cJSON *it = cJSON_DetachItemViaPointer(pj, pj->child);
                cJSON_AddItemToArray(H, it); /* keeps it->string: the key */
            }
            cJSON_Delete(pj);
            add_num(H, "score", pc->score[i]);
            int nc = pc->n_cand ? pc->n_cand[i] : 0;
            if (nc) {
                cJSON *cands = cJSON_AddArrayToObject(H, "candidates");
                for (int c = 0; c < nc; c++) {
                    const eng_pat_eval *ev = &pc->cand[i * (size_t)pc->cand_cap + c];
                    cJSON *C = eng_patcfg_pattern_to_json(&ev->pat);
                    if (!C) goto oom;
                    add_num(C, "score", ev->score);
                    add_num(C, "density", ev->density);
                    add_num(C, "recall", ev->recall);
                    add_num(C, "error", ev->error);
                    cJSON_AddItemToArray(cands, C);
                }
            }
        }
    }
    out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!out) {
        eng_err_set(err, "native export: out of memory");
        return NULL;
    }
    /* cJSON's allocator is malloc here; hand back a plain malloc'd copy with a newline. */
    size_t n = strlen(out);
    char *t = malloc(n + 2);
    if (t) {
        memcpy(t, out, n);
        t[n] = '\n';
        t[n + 1] = 0;
    } else {
        eng_err_set(err, "native export: out of memory");
    }
    cJSON_free(out);
    return t;
oom:
    cJSON_Delete(root);
    eng_err_set(err, "native export: out of memory");
    return NULL;
}

/* ---- dispatch, files, checks ---------------------------------------------------------------- */

int eng_patcfg_parse(eng_patcfg *pc, const char *json, size_t len, const char *what, eng_err *err) {
    memset(pc, 0, sizeof *pc);
    size_t i = 0;
    while (i < len && (json[i] == ' ' || json[i] == '\n' || json[i] == '\r' || json[i] == '\t')) i++;
    if (i < len && json[i] == '[') return eng_patcfg_parse_minference(pc, json, len, what, err);
    if (i < len && json[i] == '{') return eng_patcfg_parse_native(pc, json, len, what, err);
    return eng_err_set(err, "%s: not a pattern config (want a JSON list in MInference's format or an object with "
                            "\"format\": \"%s\")", what ? what : "pattern config", NATIVE_FORMAT);
}

int eng_patcfg_load(eng_patcfg *pc, const char *path, eng_err *err) {
    memset(pc, 0, sizeof *pc);
    /* O_NONBLOCK: opening a FIFO must not block (the fstat below refuses it); no effect on files */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f && fd >= 0) close(fd);
    if (!f) return eng_err_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st; /* a directory reads as a bare "read error", a FIFO would block */
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return eng_err_set(err, "%s: not a regular file", path);
    }
    const size_t max = (size_t)64 << 20;
    char *buf = malloc(max + 1);
    if (!buf) {
        fclose(f);
        return eng_err_set(err, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, max + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return eng_err_set(err, "%s: read error", path);
    }
    if (n > max) {
        free(buf);
        return eng_err_set(err, "%s: larger than 64 MiB, not a pattern config", path);
    }
    buf[n] = 0;
    int rc = eng_patcfg_parse(pc, buf, n, path, err);
    free(buf);
    return rc;
}

int eng_patcfg_check_model(eng_patcfg *pc, int n_layers, int n_heads, eng_err *err) {
    for (int l = 0; l < pc->cfg.n_layers; l++)
        for (int h = 0; h < pc->cfg.n_heads; h++)
            if (pc->listed[(size_t)l * pc->cfg.n_heads + h] && (l >= n_layers || h >= n_heads))
                return eng_err_set(err, "%s: names layer %d head %d but the model has %d layers x %d query heads "
                                        "(a config for another model?)", pc->source[0] ? pc->source : "pattern config",
                                   l, h, n_layers, n_heads);
    if (pc->cfg.n_layers == n_layers && pc->cfg.n_heads == n_heads) return 0;
    /* fit to the model: listed heads keep their pattern, score and candidates; the rest get def */
    eng_patcfg fit;
    if (eng_patcfg_init(&fit, n_layers, n_heads, &pc->cfg.def, err) ||
        eng_patcfg_reserve_candidates(&fit, pc->cand_cap, err)) {
        eng_patcfg_free(&fit);
        return -1;
    }
    for (int l = 0; l < pc->cfg.n_layers && l < n_layers; l++)
        for (int h = 0; h < pc->cfg.n_heads && h < n_heads; h++) {
            size_t a = (size_t)l * pc->cfg.n_heads + h, b = (size_t)l * n_heads + h;
            fit.cfg.heads[b] = pc->cfg.heads[a];
            fit.score[b] = pc->score[a];
            fit.listed[b] = pc->listed[a];
            if (pc->cand_cap > 0) {
                fit.n_cand[b] = pc->n_cand[a];
                memcpy(fit.cand + b * (size_t)pc->cand_cap, pc->cand + a * (size_t)pc->cand_cap,
                       (size_t)pc->cand_cap * sizeof *pc->cand);
            }
        }
    fit.scores_are_int = pc->scores_are_int;
    memcpy(fit.objective, pc->objective, sizeof fit.objective);
    fit.n_tokens = pc->n_tokens;
    fit.reference_len = pc->reference_len;
    memcpy(fit.source, pc->source, sizeof fit.source);
    eng_patcfg_free(pc);
    *pc = fit;
    return 0;
}

static int pattern_same(const eng_pattern *a, const eng_pattern *b, char *why, int cap, const char *where) {
    if (a->kind != b->kind) {
        snprintf(why, (size_t)cap, "%s: pattern %s vs %s", where, eng_pattern_kind_name(a->kind),
                 eng_pattern_kind_name(b->kind));
        return 0;
    }
    int np;
    const eng_pat_param *par = eng_pattern_params(a->kind, &np);
    for (int i = 0; i < np; i++) {
        double x = eng_pattern_param_get(a, &par[i]), y = eng_pattern_param_get(b, &par[i]);
        if (x != y) {
            snprintf(why, (size_t)cap, "%s: %s %g vs %g", where, par[i].name, x, y);
            return 0;
        }
    }
    return 1;
}

int eng_patcfg_same(const eng_patcfg *a, const eng_patcfg *b, char *why, int cap) {
    char tmp[8];
    if (!why) why = tmp, cap = (int)sizeof tmp;
    if (a->cfg.n_layers != b->cfg.n_layers || a->cfg.n_heads != b->cfg.n_heads) {
        snprintf(why, (size_t)cap, "shape %dx%d vs %dx%d", a->cfg.n_layers, a->cfg.n_heads, b->cfg.n_layers,
                 b->cfg.n_heads);
        return 0;
    }
    if (!pattern_same(&a->cfg.def, &b->cfg.def, why, cap, "default")) return 0;
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int h = 0; h < a->cfg.n_heads; h++) {
            size_t i = (size_t)l * a->cfg.n_heads + h;
            char where[64];
            snprintf(where, sizeof where, "layer %d head %d", l, h);
            if (a->listed[i] != b->listed[i]) {
                snprintf(why, (size_t)cap, "%s: listed in one config only", where);
                return 0;
            }
            if (!pattern_same(&a->cfg.heads[i], &b->cfg.heads[i], why, cap, where)) return 0;
            if (a->listed[i] && a->score[i] != b->score[i]) {
                snprintf(why, (size_t)cap, "%s: score %.17g vs %.17g", where, a->score[i], b->score[i]);
                return 0;
            }
        }
    return 1;
}
