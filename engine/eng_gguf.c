/* eng_gguf: GGUF reader, GGUF -> eng_model loader and GGUF tokenizer (see eng_gguf.h). Layout of a
 * file (all little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv x (string key, u32
 * type, value), n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset),
 * padding to general.alignment (default 32), data. A string is u64 length + bytes (no NUL). */
#include "eng_gguf.h"

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

/* ---------------------------------------------------------------- types */

typedef struct {
    int id;
    const char *name;
    int block;      /* elements per block */
    int bytes;      /* bytes per block */
} ggml_type_info;

static const ggml_type_info TYPES[] = {
    {0, "F32", 1, 4},      {1, "F16", 1, 2},        {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},   {7, "Q5_1", 32, 24},     {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84}, {11, "Q3_K", 256, 110},  {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50}, {20, "IQ4_NL", 32, 18}, {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82}, {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},      {25, "I16", 1, 2},
    {26, "I32", 1, 4},     {27, "I64", 1, 8},       {28, "F64", 1, 8},       {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},
};

static const ggml_type_info *type_info(int id) {
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (TYPES[i].id == id) return &TYPES[i];
    return NULL;
}

const char *eng_gguf_type_name(int t) {
    const ggml_type_info *ti = type_info(t);
    return ti ? ti->name : "?";
}

static const int VAL_SIZE[ENG_GGUF__NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* ---------------------------------------------------------------- reader */

typedef struct {
    const unsigned char *p;
    size_t len, pos;
    const char *what;
    eng_err *err;
} rd;

static int rd_need(rd *r, uint64_t n, const char *field) {
    if (n > r->len - r->pos)
        return eng_err_set(r->err, "%s: truncated: %s at byte %zu needs %llu bytes, %zu remain", r->what, field,
                           r->pos, (unsigned long long)n, r->len - r->pos);
    return 0;
}
static uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static int rd_u32(rd *r, uint32_t *v, const char *field) {
    if (rd_need(r, 4, field)) return -1;
    *v = (uint32_t)le(r->p + r->pos, 4);
    r->pos += 4;
    return 0;
}
static int rd_u64(rd *r, uint64_t *v, const char *field) {
    if (rd_need(r, 8, field)) return -1;
    *v = le(r->p + r->pos, 8);
    r->pos += 8;
    return 0;
}
static int rd_str(rd *r, const char **s, uint64_t *n, const char *field) {
    if (rd_u64(r, n, field) || rd_need(r, *n, field)) return -1;
    *s = (const char *)r->p + r->pos;
    r->pos += (size_t)*n;
    return 0;
}

static int key_is(const char *k, uint64_t kn, const char *s) { return strlen(s) == kn && !memcmp(k, s, kn); }

static void read_scalar(eng_gguf_kv *kv, const unsigned char *p) {
    switch (kv->type) {
    case ENG_GGUF_U8: kv->u = p[0], kv->i = (int64_t)kv->u, kv->f = (double)kv->u; break;
    case ENG_GGUF_I8: kv->i = (int8_t)p[0], kv->u = (uint64_t)kv->i, kv->f = (double)kv->i; break;
    case ENG_GGUF_U16: kv->u = le(p, 2), kv->i = (int64_t)kv->u, kv->f = (double)kv->u; break;
    case ENG_GGUF_I16: kv->i = (int16_t)le(p, 2), kv->u = (uint64_t)kv->i, kv->f = (double)kv->i; break;
    case ENG_GGUF_U32: kv->u = le(p, 4), kv->i = (int64_t)kv->u, kv->f = (double)kv->u; break;
    case ENG_GGUF_I32: kv->i = (int32_t)le(p, 4), kv->u = (uint64_t)kv->i, kv->f = (double)kv->i; break;
    case ENG_GGUF_U64: kv->u = le(p, 8), kv->i = (int64_t)kv->u, kv->f = (double)kv->u; break;
    case ENG_GGUF_I64: kv->i = (int64_t)le(p, 8), kv->u = (uint64_t)kv->i, kv->f = (double)kv->i; break;
    case ENG_GGUF_BOOL: kv->u = p[0] != 0, kv->i = (int64_t)kv->u, kv->f = (double)kv->u; break;
    case ENG_GGUF_F32: {
        uint32_t b = (uint32_t)le(p, 4);
        float f;
        memcpy(&f, &b, 4);
        kv->f = f;
        break;
    }
    case ENG_GGUF_F64: {
        uint64_t b = le(p, 8);
        memcpy(&kv->f, &b, 8);
        break;
    }
    default: break;
    }
}

void eng_gguf_free(eng_gguf *g) {
    if (!g) return;
    free(g->kv);
    free(g->t);
    memset(g, 0, sizeof *g);
}

static int cmp_off(const void *a, const void *b) {
    const eng_gguf_tensor *x = *(eng_gguf_tensor *const *)a, *y = *(eng_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Hash-free uniqueness check: sort pointers by name. */
typedef struct {
    const char *s;
    uint64_t n;
} sref;
static int cmp_sref(const void *a, const void *b) {
    const sref *x = a, *y = b;
    uint64_t m = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, (size_t)m);
    return c ? c : (x->n < y->n ? -1 : x->n > y->n);
}
static int find_dup(sref *v, int64_t n) {
    qsort(v, (size_t)n, sizeof *v, cmp_sref);
    for (int64_t i = 1; i < n; i++)
        if (!cmp_sref(&v[i - 1], &v[i])) return (int)i;
    return -1;
}

int eng_gguf_parse(eng_gguf *g, const void *buf, size_t len, const char *what, eng_err *err) {
    memset(g, 0, sizeof *g);
    if (!what) what = "gguf";
    rd r = {buf, len, 0, what, err};
    sref *names = NULL;
    eng_gguf_tensor **byoff = NULL;
    if (len < 4 || memcmp(buf, "GGUF", 4)) return eng_err_set(err, "%s: not a GGUF file (no \"GGUF\" magic)", what);
    r.pos = 4;
    uint32_t ver;
    uint64_t nt, nkv;
    if (rd_u32(&r, &ver, "version")) return -1;
    if (ver == 1) return eng_err_set(err, "%s: GGUF version 1 is not supported (convert again: v2/v3)", what);
    if (ver != 2 && ver != 3) {
        if (ver == 0x02000000u || ver == 0x03000000u)
            return eng_err_set(err, "%s: big-endian GGUF is not supported", what);
        return eng_err_set(err, "%s: unknown GGUF version %u (2 and 3 are supported)", what, ver);
    }
    if (rd_u64(&r, &nt, "tensor count") || rd_u64(&r, &nkv, "metadata count")) return -1;
    if (nt > ENG_GGUF_MAX_TENSORS) return eng_err_set(err, "%s: %llu tensors is over the cap", what, (unsigned long long)nt);
    if (nkv > ENG_GGUF_MAX_KV) return eng_err_set(err, "%s: %llu metadata pairs is over the cap", what, (unsigned long long)nkv);
    /* each KV takes >= 13 bytes and each tensor info >= 24: refuse counts the file cannot hold */
    if (nkv * 13 > len || nt * 24 > len)
        return eng_err_set(err, "%s: counts (%llu tensors, %llu metadata) do not fit a %zu-byte file", what,
                           (unsigned long long)nt, (unsigned long long)nkv, len);
    g->version = ver;
    g->buf = buf;
    g->len = len;
    g->alignment = 32;
    g->kv = calloc((size_t)nkv + 1, sizeof *g->kv);
    g->t = calloc((size_t)nt + 1, sizeof *g->t);
    names = malloc(((size_t)(nkv > nt ? nkv : nt) + 1) * sizeof *names);
    byoff = malloc(((size_t)nt + 1) * sizeof *byoff);
    if (!g->kv || !g->t || !names || !byoff) {
        eng_err_set(err, "%s: out of memory", what);
        goto fail;
    }
    for (uint64_t i = 0; i < nkv; i++) {
        eng_gguf_kv *kv = &g->kv[i];
        uint32_t ty;
        if (rd_str(&r, &kv->key, &kv->key_len, "metadata key") || rd_u32(&r, &ty, "metadata type")) goto fail;
        if (kv->key_len == 0 || kv->key_len > 65535) {
            eng_err_set(err, "%s: metadata key %llu has length %llu", what, (unsigned long long)i,
                        (unsigned long long)kv->key_len);
            goto fail;
        }
        int kl = kv->key_len > 80 ? 80 : (int)kv->key_len;
        if (ty >= ENG_GGUF__NTYPES) {
            eng_err_set(err, "%s: metadata \"%.*s\" has unknown type %u", what, kl, kv->key, ty);
            goto fail;
        }
        kv->type = (int)ty;
        if (ty == ENG_GGUF_STRING) {
            if (rd_str(&r, &kv->str, &kv->str_len, "metadata string")) goto fail;
        } else if (ty == ENG_GGUF_ARRAY) {
            uint32_t at;
            if (rd_u32(&r, &at, "array type") || rd_u64(&r, &kv->arr_n, "array length")) goto fail;
            if (at >= ENG_GGUF__NTYPES || at == ENG_GGUF_ARRAY) {
                eng_err_set(err, "%s: metadata \"%.*s\": array element type %u is %s", what, kl, kv->key, at,
                            at == ENG_GGUF_ARRAY ? "a nested array (not supported)" : "unknown");
                goto fail;
            }
            if (kv->arr_n > ENG_GGUF_MAX_ARRAY) {
                eng_err_set(err, "%s: metadata \"%.*s\": array of %llu elements is over the cap", what, kl, kv->key,
                            (unsigned long long)kv->arr_n);
                goto fail;
            }
            kv->arr_type = (int)at;
            kv->arr = r.p + r.pos;
            if (at == ENG_GGUF_STRING) {
                for (uint64_t k = 0; k < kv->arr_n; k++) {
                    const char *s;
                    uint64_t sn;
                    if (rd_str(&r, &s, &sn, "array string")) goto fail;
                }
            } else {
                if (rd_need(&r, kv->arr_n * (uint64_t)VAL_SIZE[at], "array data")) goto fail;
                r.pos += (size_t)(kv->arr_n * (uint64_t)VAL_SIZE[at]);
            }
        } else {
            if (rd_need(&r, (uint64_t)VAL_SIZE[ty], "metadata value")) goto fail;
            read_scalar(kv, r.p + r.pos);
            r.pos += (size_t)VAL_SIZE[ty];
        }
        if (key_is(kv->key, kv->key_len, "general.alignment")) {
            if (kv->type != ENG_GGUF_U32 || kv->u == 0 || (kv->u & (kv->u - 1)) || kv->u > (1u << 20)) {
                eng_err_set(err, "%s: general.alignment must be a u32 power of two up to 1 MiB", what);
                goto fail;
            }
            g->alignment = kv->u;
        }
        names[i] = (sref){kv->key, kv->key_len};
    }
    g->n_kv = (int64_t)nkv;
    int d = find_dup(names, g->n_kv);
    if (d >= 0) {
        eng_err_set(err, "%s: metadata key \"%.*s\" appears twice", what, (int)(names[d].n > 80 ? 80 : names[d].n),
                    names[d].s);
        goto fail;
    }
    for (uint64_t i = 0; i < nt; i++) {
        eng_gguf_tensor *t = &g->t[i];
        uint32_t nd, ty;
        if (rd_str(&r, &t->name, &t->name_len, "tensor name") || rd_u32(&r, &nd, "tensor dims")) goto fail;
        if (t->name_len == 0 || t->name_len >= ENG_GGUF_MAX_NAME) {
            eng_err_set(err, "%s: tensor %llu has a name of %llu bytes", what, (unsigned long long)i,
                        (unsigned long long)t->name_len);
            goto fail;
        }
        int nl = (int)t->name_len;
        if (nd < 1 || nd > 4) {
            eng_err_set(err, "%s: tensor \"%.*s\" has %u dims (1..4 supported)", what, nl, t->name, nd);
            goto fail;
        }
        t->ndim = (int)nd;
        uint64_t numel = 1;
        for (uint32_t k = 0; k < nd; k++) {
            uint64_t ne;
            if (rd_u64(&r, &ne, "tensor dim")) goto fail;
            if (ne > (1ull << 40) || (ne && numel > (1ull << 50) / ne)) {
                eng_err_set(err, "%s: tensor \"%.*s\" has a dimension too large", what, nl, t->name);
                goto fail;
            }
            t->ne[k] = (int64_t)ne;
            numel *= ne;
        }
        for (int k = (int)nd; k < 4; k++) t->ne[k] = 1;
        if (rd_u32(&r, &ty, "tensor type") || rd_u64(&r, &t->offset, "tensor offset")) goto fail;
        const ggml_type_info *ti = type_info((int)ty);
        if (!ti) {
            eng_err_set(err, "%s: tensor \"%.*s\" has unknown ggml type %u", what, nl, t->name, ty);
            goto fail;
        }
        t->type = (int)ty;
        if (t->ne[0] % ti->block) {
            eng_err_set(err, "%s: tensor \"%.*s\" (%s): row of %lld is not a whole number of %d-element blocks", what,
                        nl, t->name, ti->name, (long long)t->ne[0], ti->block);
            goto fail;
        }
        t->nbytes = numel / (uint64_t)ti->block * (uint64_t)ti->bytes;
        names[i] = (sref){t->name, t->name_len};
        byoff[i] = t;
    }
    g->n_tensors = (int64_t)nt;
    d = find_dup(names, g->n_tensors);
    if (d >= 0) {
        eng_err_set(err, "%s: tensor \"%.*s\" appears twice", what, (int)names[d].n, names[d].s);
        goto fail;
    }
    uint64_t data_off = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (nt > 0 && data_off > len) {
        eng_err_set(err, "%s: truncated: data section at %llu is past the end (%zu bytes)", what,
                    (unsigned long long)data_off, len);
        goto fail;
    }
    g->data_off = data_off > len ? len : data_off;
    uint64_t data_len = len - g->data_off;
    qsort(byoff, (size_t)nt, sizeof *byoff, cmp_off);
    uint64_t end = 0;
    for (uint64_t i = 0; i < nt; i++) {
        const eng_gguf_tensor *t = byoff[i];
        int nl = (int)t->name_len;
        if (t->offset % g->alignment) {
            eng_err_set(err, "%s: tensor \"%.*s\" offset %llu is not a multiple of the alignment %llu", what, nl,
                        t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
            goto fail;
        }
        if (t->offset > data_len || t->nbytes > data_len - t->offset) {
            eng_err_set(err, "%s: tensor \"%.*s\" (%llu bytes at %llu) runs past the end of the file (truncated?)",
                        what, nl, t->name, (unsigned long long)t->nbytes, (unsigned long long)t->offset);
            goto fail;
        }
        if (t->offset < end) {
            eng_err_set(err, "%s: tensor \"%.*s\" overlaps the previous tensor", what, nl, t->name);
            goto fail;
        }
        end = t->offset + t->nbytes;
    }
    free(names);
    free(byoff);
    return 0;
fail:
    free(names);
    free(byoff);
    eng_gguf_free(g);
    return -1;
}

const eng_gguf_kv *eng_gguf_find_kv(const eng_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (key_is(g->kv[i].key, g->kv[i].key_len, key)) return &g->kv[i];
    return NULL;
}

const eng_gguf_tensor *eng_gguf_find_tensor(const eng_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (key_is(g->t[i].name, g->t[i].name_len, name)) return &g->t[i];
    return NULL;
}

static int is_int_type(int t) {
    return t == ENG_GGUF_U8 || t == ENG_GGUF_I8 || t == ENG_GGUF_U16 || t == ENG_GGUF_I16 || t == ENG_GGUF_U32 ||
           t == ENG_GGUF_I32 || t == ENG_GGUF_U64 || t == ENG_GGUF_I64 || t == ENG_GGUF_BOOL;
}

int eng_gguf_get_int(const eng_gguf *g, const char *key, int64_t def, int64_t lo, int64_t hi, int64_t *out,
                     const char *what, eng_err *err) {
    const eng_gguf_kv *kv = eng_gguf_find_kv(g, key);
    if (!kv) {
        *out = def;
        return 0;
    }
    if (!is_int_type(kv->type)) return eng_err_set(err, "%s: metadata \"%s\" is not an integer", what, key);
    if ((kv->type == ENG_GGUF_U64 && kv->u > (uint64_t)INT64_MAX) || kv->i < lo || kv->i > hi)
        return eng_err_set(err, "%s: metadata \"%s\" = %lld is out of range [%lld, %lld]", what, key, (long long)kv->i,
                           (long long)lo, (long long)hi);
    *out = kv->i;
    return 0;
}

int eng_gguf_get_float(const eng_gguf *g, const char *key, double def, double *out, const char *what, eng_err *err) {
    const eng_gguf_kv *kv = eng_gguf_find_kv(g, key);
    if (!kv) {
        *out = def;
        return 0;
    }
    if (kv->type != ENG_GGUF_F32 && kv->type != ENG_GGUF_F64 && !is_int_type(kv->type))
        return eng_err_set(err, "%s: metadata \"%s\" is not a number", what, key);
    if (!isfinite(kv->f)) return eng_err_set(err, "%s: metadata \"%s\" is not finite", what, key);
    *out = kv->f;
    return 0;
}

int eng_gguf_get_str(const eng_gguf *g, const char *key, const char **s, uint64_t *n) {
    const eng_gguf_kv *kv = eng_gguf_find_kv(g, key);
    if (!kv || kv->type != ENG_GGUF_STRING) return -1;
    *s = kv->str;
    *n = kv->str_len;
    return 0;
}

int eng_gguf_is_path(const char *path) {
    size_t n = path ? strlen(path) : 0;
    struct stat st;
    return n > 5 && !strcmp(path + n - 5, ".gguf") && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---------------------------------------------------------------- config */

/* Recover Llama-3.1 rope scaling parameters from the rope_freqs tensor llama.cpp's converter
 * writes in their place (per frequency i of d/2: 1 for short wavelengths, `factor` for long ones,
 * a smooth blend between). Tries the parameter sets in use and keeps the one that reproduces every
 * entry; 0 found, -1 none. */
static int rope_freqs_fit(const float *rf, int half, double theta, int hd, double *factor, double *low, double *high,
                          int *orig) {
    double fmax = 0;
    for (int i = 0; i < half; i++) fmax = rf[i] > fmax ? rf[i] : fmax;
    static const int origs[] = {8192, 4096, 2048, 16384, 32768, 65536, 131072, 1024, 512, 256, 128, 64, 32};
    static const double lows[] = {1, 0.5, 2, 0.25}, highs[] = {4, 2, 8, 1, 16, 32};
    /* low/high outermost so that the usual (1, 4) wins among equivalent parameter sets */
    for (size_t b = 0; b < sizeof lows / sizeof lows[0]; b++)
        for (size_t c = 0; c < sizeof highs / sizeof highs[0]; c++)
            for (size_t a = 0; a < sizeof origs / sizeof origs[0]; a++) {
                if (highs[c] <= lows[b]) continue;
                double lw = origs[a] / lows[b], hw = origs[a] / highs[c];
                int ok = 1;
                for (int i = 0; i < half && ok; i++) {
                    double freq = 1.0 / pow(theta, (double)(2 * i) / hd), wl = 2 * M_PI / freq, want;
                    if (wl < hw) want = 1;
                    else if (wl > lw) want = fmax;
                    else {
                        double s = (origs[a] / wl - lows[b]) / (highs[c] - lows[b]);
                        want = 1 / ((1 - s) / fmax + s);
                    }
                    ok = fabs(want - rf[i]) <= 1e-4 * fabs(want) + 1e-6;
                }
                if (ok) {
                    *factor = fmax, *low = lows[b], *high = highs[c], *orig = origs[a];
                    return 0;
                }
            }
    return -1;
}

/* A longrope factor tensor (rope_factors_long/short.weight): F32 [d/2], every entry finite and
 * positive (inv_freq is divided by it). Read with memcpy: general.alignment may be 1. */
static int phi3_factors(const eng_gguf *g, const eng_gguf_tensor *t, const char *name, int64_t half, float *out,
                        const char *what, eng_err *err) {
    if (t->type != ENG_GGML_F32)
        return eng_err_set(err, "%s: %s is %s; longrope factors must be F32", what, name, eng_gguf_type_name(t->type));
    if (t->ndim != 1)
        return eng_err_set(err, "%s: %s has %d dims; a 1-D list of rope.dimension_count / 2 = %lld factors expected",
                           what, name, t->ndim, (long long)half);
    if (t->ne[0] != half)
        return eng_err_set(err, "%s: %s has %lld entries; rope.dimension_count / 2 = %lld expected", what, name,
                           (long long)t->ne[0], (long long)half);
    const unsigned char *p = g->buf + g->data_off + t->offset;
    for (int64_t i = 0; i < half; i++) {
        uint32_t b = (uint32_t)le(p + 4 * i, 4);
        memcpy(&out[i], &b, 4);
        if (!isfinite(out[i]) || !(out[i] > 0))
            return eng_err_set(err, "%s: %s[%lld] = %g is not a positive finite factor", what, name, (long long)i,
                               (double)out[i]);
    }
    return 0;
}

/* Phi-3 as llama.cpp's convert_hf_to_gguf.py (Phi3MiniModel) writes it, into the config.json j:
 * phi3.attention.sliding_window (0: none, as Phi-4), and for the long-context models the longrope
 * factors as the tensors rope_factors_long.weight / rope_factors_short.weight (F32 [d/2]), the
 * original context as phi3.rope.scaling.original_context_length and the cos/sin factor as
 * phi3.rope.scaling.attn_factor (the converter writes sqrt(1 + ln(ctx/orig) / ln(orig)); absent,
 * eng_config derives the same). The factors go back into a rope_scaling {"rope_type": "longrope"}
 * object so that eng_config_parse validates and stores them as for a safetensors checkpoint. */
static int phi3_config(const eng_gguf *g, cJSON *j, int64_t hd, const char *what, eng_err *err) {
    int64_t swa, orig;
    double af = 0;
    if (eng_gguf_get_int(g, "phi3.attention.sliding_window", 0, 0, 1 << 27, &swa, what, err) ||
        eng_gguf_get_int(g, "phi3.rope.scaling.original_context_length", -1, 2, 1 << 27, &orig, what, err))
        return -1;
    cJSON_AddNumberToObject(j, "sliding_window", (double)swa);
    const eng_gguf_tensor *tl = eng_gguf_find_tensor(g, "rope_factors_long.weight");
    const eng_gguf_tensor *ts = eng_gguf_find_tensor(g, "rope_factors_short.weight");
    if (!tl && !ts) return 0; /* Phi-3-mini-4k, Phi-4: plain RoPE */
    if (!tl || !ts)
        return eng_err_set(err, "%s: %s without %s (longrope needs both factor lists)", what,
                           tl ? "rope_factors_long.weight" : "rope_factors_short.weight",
                           tl ? "rope_factors_short.weight" : "rope_factors_long.weight");
    if (orig < 0)
        return eng_err_set(err, "%s: rope_factors_long/short.weight present but no "
                                "phi3.rope.scaling.original_context_length (longrope needs the original context)",
                           what);
    const eng_gguf_kv *afk = eng_gguf_find_kv(g, "phi3.rope.scaling.attn_factor");
    if (afk) {
        if (eng_gguf_get_float(g, "phi3.rope.scaling.attn_factor", 1.0, &af, what, err)) return -1;
        if (!(af > 0) || af > 1e6)
            return eng_err_set(err, "%s: phi3.rope.scaling.attn_factor = %g is not in (0, 1e6]", what, af);
    }
    const int64_t half = hd / 2;
    float fl[ENG_ROPE_MAX_FACTORS], fs[ENG_ROPE_MAX_FACTORS];
    if (half > ENG_ROPE_MAX_FACTORS)
        return eng_err_set(err, "%s: head dim %lld too large for longrope", what, (long long)hd);
    if (phi3_factors(g, tl, "rope_factors_long.weight", half, fl, what, err) ||
        phi3_factors(g, ts, "rope_factors_short.weight", half, fs, what, err))
        return -1;
    cJSON_AddNumberToObject(j, "original_max_position_embeddings", (double)orig);
    cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
    cJSON_AddStringToObject(rs, "rope_type", "longrope");
    cJSON_AddItemToObject(rs, "short_factor", cJSON_CreateFloatArray(fs, (int)half));
    cJSON_AddItemToObject(rs, "long_factor", cJSON_CreateFloatArray(fl, (int)half));
    cJSON_AddNumberToObject(rs, "original_max_position_embeddings", (double)orig);
    if (afk) cJSON_AddNumberToObject(rs, "attention_factor", af);
    return 0;
}

int eng_gguf_config(const eng_gguf *g, eng_config *cfg, const char *what, eng_err *err) {
    const char *as;
    uint64_t an;
    char arch[32], k[128];
    if (eng_gguf_get_str(g, "general.architecture", &as, &an))
        return eng_err_set(err, "%s: no general.architecture string", what);
    if (an == 0 || an >= sizeof arch) return eng_err_set(err, "%s: bad general.architecture", what);
    memcpy(arch, as, an);
    arch[an] = 0;
    const char *hf = !strcmp(arch, "llama")   ? "LlamaForCausalLM"
                     : !strcmp(arch, "qwen2") ? "Qwen2ForCausalLM"
                     : !strcmp(arch, "phi3")  ? "Phi3ForCausalLM"
                                              : NULL;
    if (!hf)
        return eng_err_set(err, "%s: GGUF architecture \"%s\" is not supported (llama, qwen2, phi3 are)", what,
                           arch);
    const int phi3 = !strcmp(arch, "phi3");
    int64_t C, L, F, H, Hkv, ctx, hd, rdim, V, bos, eos;
    double eps, theta;
    const eng_gguf_tensor *emb = eng_gguf_find_tensor(g, "token_embd.weight");
    const eng_gguf_kv *toks = eng_gguf_find_kv(g, "tokenizer.ggml.tokens");
    int64_t vdef = emb && emb->ndim == 2 ? emb->ne[1] : toks ? (int64_t)toks->arr_n : -1;
#define KEY(s) (snprintf(k, sizeof k, "%s.%s", arch, s), k)
    if (eng_gguf_get_int(g, KEY("embedding_length"), -1, 1, 1 << 16, &C, what, err) ||
        eng_gguf_get_int(g, KEY("block_count"), -1, 1, 1024, &L, what, err) ||
        eng_gguf_get_int(g, KEY("feed_forward_length"), -1, 1, 1 << 20, &F, what, err) ||
        eng_gguf_get_int(g, KEY("attention.head_count"), -1, 1, 1024, &H, what, err))
        return -1;
    if (C < 0 || L < 0 || F < 0 || H < 0)
        return eng_err_set(err, "%s: missing %s.embedding_length / block_count / feed_forward_length / "
                                "attention.head_count", what, arch);
    if (eng_gguf_get_int(g, KEY("attention.head_count_kv"), H, 1, 1024, &Hkv, what, err) ||
        eng_gguf_get_int(g, KEY("context_length"), 4096, 1, 1 << 27, &ctx, what, err) ||
        eng_gguf_get_int(g, KEY("attention.key_length"), H ? C / H : 0, 1, 1024, &hd, what, err) ||
        eng_gguf_get_int(g, KEY("rope.dimension_count"), hd, 1, 1024, &rdim, what, err) ||
        eng_gguf_get_int(g, KEY("vocab_size"), vdef, 1, 1 << 22, &V, what, err) ||
        eng_gguf_get_float(g, KEY("attention.layer_norm_rms_epsilon"), 1e-5, &eps, what, err) ||
        eng_gguf_get_float(g, KEY("rope.freq_base"), 10000.0, &theta, what, err) ||
        eng_gguf_get_int(g, "tokenizer.ggml.bos_token_id", -1, -1, 1 << 30, &bos, what, err) ||
        eng_gguf_get_int(g, "tokenizer.ggml.eos_token_id", -1, -1, 1 << 30, &eos, what, err))
        return -1;
    if (V < 0) return eng_err_set(err, "%s: vocabulary size unknown (no token_embd.weight, no tokens)", what);
    const eng_gguf_kv *vl = eng_gguf_find_kv(g, KEY("attention.value_length"));
    if (vl && (!is_int_type(vl->type) || vl->i != hd))
        return eng_err_set(err, "%s: attention.value_length differs from key_length (not supported)", what);
    if (rdim != hd)
        return eng_err_set(err, "%s: partial rotary (rope.dimension_count %lld < head dim %lld) is not supported", what,
                           (long long)rdim, (long long)hd);
    const char *st;
    uint64_t sn;
    if (!eng_gguf_get_str(g, KEY("rope.scaling.type"), &st, &sn) && !(sn == 4 && !memcmp(st, "none", 4)))
        return eng_err_set(err, "%s: rope scaling \"%.*s\" is not supported", what, (int)(sn > 40 ? 40 : sn), st);
    cJSON *j = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(archs, cJSON_CreateString(hf));
    cJSON_AddNumberToObject(j, "vocab_size", (double)V);
    cJSON_AddNumberToObject(j, "hidden_size", (double)C);
    cJSON_AddNumberToObject(j, "intermediate_size", (double)F);
    cJSON_AddNumberToObject(j, "num_hidden_layers", (double)L);
    cJSON_AddNumberToObject(j, "num_attention_heads", (double)H);
    cJSON_AddNumberToObject(j, "num_key_value_heads", (double)Hkv);
    cJSON_AddNumberToObject(j, "head_dim", (double)hd);
    cJSON_AddNumberToObject(j, "max_position_embeddings", (double)ctx);
    cJSON_AddNumberToObject(j, "rms_norm_eps", eps);
    cJSON_AddNumberToObject(j, "rope_theta", theta);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", eng_gguf_find_tensor(g, "output.weight") == NULL);
    if (bos >= 0) cJSON_AddNumberToObject(j, "bos_token_id", (double)bos);
    if (eos >= 0) cJSON_AddNumberToObject(j, "eos_token_id", (double)eos);
    const eng_gguf_tensor *rf = eng_gguf_find_tensor(g, "rope_freqs.weight");
    if (phi3) {
        if (rf) {
            cJSON_Delete(j);
            return eng_err_set(err, "%s: rope_freqs.weight in a phi3 file is not supported (Phi-3 scales RoPE with "
                                    "rope_factors_long/short.weight)", what);
        }
        if (phi3_config(g, j, hd, what, err)) {
            cJSON_Delete(j);
            return -1;
        }
    } else if (rf) {
        double factor, low, high;
        int orig;
        if (rf->type != ENG_GGML_F32 || rf->ne[0] != hd / 2 || rf->ndim != 1 ||
            rope_freqs_fit((const float *)(g->buf + g->data_off + rf->offset), (int)(hd / 2), theta, (int)hd, &factor,
                           &low, &high, &orig)) {
            cJSON_Delete(j);
            return eng_err_set(err, "%s: rope_freqs.weight does not match Llama-3 rope scaling (not supported)", what);
        }
        cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
        cJSON_AddNumberToObject(rs, "factor", factor);
        cJSON_AddNumberToObject(rs, "low_freq_factor", low);
        cJSON_AddNumberToObject(rs, "high_freq_factor", high);
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", orig);
    }
#undef KEY
    char *txt = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!txt) return eng_err_set(err, "%s: out of memory", what);
    char w2[600];
    snprintf(w2, sizeof w2, "%s (GGUF metadata)", what);
    int rc = eng_config_parse(cfg, txt, strlen(txt), w2, err);
    free(txt);
    if (rc == 0) {
        const eng_gguf_tensor *big = eng_gguf_find_tensor(g, "blk.0.attn_q.weight");
        if (!big) big = eng_gguf_find_tensor(g, "blk.0.attn_qkv.weight"); /* phi3: fused */
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "gguf-%s", big ? eng_gguf_type_name(big->type) : "?");
    }
    return rc;
}

/* ---------------------------------------------------------------- model */

typedef struct {
    const unsigned char *map;
    size_t len;
    eng_gguf g;
    void **bufs;             /* dequantised / un-permuted copies */
    int nbufs, capbufs;
} gguf_impl;

static void impl_free(void *p) {
    gguf_impl *im = p;
    if (!im) return;
    eng_gguf_free(&im->g);
    if (im->map) munmap((void *)im->map, im->len);
    for (int i = 0; i < im->nbufs; i++) free(im->bufs[i]);
    free(im->bufs);
    free(im);
}

static void *impl_buf(gguf_impl *im, size_t bytes) {
    if (im->nbufs == im->capbufs) {
        int nc = im->capbufs ? im->capbufs * 2 : 64;
        void **nb = realloc(im->bufs, (size_t)nc * sizeof *nb);
        if (!nb) return NULL;
        im->bufs = nb;
        im->capbufs = nc;
    }
    void *p = malloc(bytes ? bytes : 1);
    if (p) im->bufs[im->nbufs++] = p;
    return p;
}

/* Q8_0 block: f16 scale d, then 32 int8 q; value = d * q. Written as bf16 (round to nearest even):
 * the CUDA backend computes in bf16 anyway, and bf16 rounding (2^-9 relative) is below Q8_0's own
 * quantisation step. */
static void dequant_q8_0(const unsigned char *src, int64_t n, uint16_t *dst) {
    for (int64_t b = 0; b < n / 32; b++) {
        const unsigned char *blk = src + b * 34;
        float d = eng_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
        for (int i = 0; i < 32; i++) dst[b * 32 + i] = eng_f32_to_bf16(d * (float)(int8_t)blk[2 + i]);
    }
}

/* llama.cpp's convert_hf_to_gguf.py permutes the rows of q_proj / k_proj (and their biases) for
 * the llama architecture so that its interleaved RoPE (pairs 2j, 2j+1) equals HF's rotate-half
 * RoPE (pairs j, j + d/2):
 *     w.reshape(n_head, 2, d/2, C).swapaxes(1, 2).reshape(n_head * d, C)
 * i.e. GGUF row h*d + 2j + i holds HF row h*d + i*d/2 + j (i in {0,1}, j < d/2). We invert it:
 * HF row h*d + i*d/2 + j <- GGUF row h*d + 2j + i, so the forward keeps HF rotate-half. */
static void unpermute_rows(const unsigned char *src, unsigned char *dst, int n_head, int d, size_t row_bytes) {
    int half = d / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < half; j++) {
                size_t to = (size_t)h * (size_t)d + (size_t)i * (size_t)half + (size_t)j;
                size_t from = (size_t)h * (size_t)d + 2 * (size_t)j + (size_t)i;
                memcpy(dst + to * row_bytes, src + from * row_bytes, row_bytes);
            }
}

static void fmt_ne(char *b, size_t n, const eng_gguf_tensor *t) {
    int k = snprintf(b, n, "[");
    for (int i = 0; i < t->ndim && k > 0 && (size_t)k < n; i++)
        k += snprintf(b + k, n - (size_t)k, "%s%lld", i ? ", " : "", (long long)t->ne[i]);
    if (k > 0 && (size_t)k < n) snprintf(b + k, n - (size_t)k, "]");
}

/* Bind GGUF tensor `name` as a PyTorch-shaped (d0[, d1]) tensor: ggml ne = [d1, d0] for 2-D.
 * permute_heads > 0 un-permutes rows for RoPE (llama q/k). */
static int bind(gguf_impl *im, eng_tensor *out, const char *name, int optional, int nd, int64_t d0, int64_t d1,
                int permute_heads, const char *what, eng_err *err) {
    memset(out, 0, sizeof *out);
    const eng_gguf_tensor *t = eng_gguf_find_tensor(&im->g, name);
    if (!t) return optional ? 0 : eng_err_set(err, "%s: missing tensor \"%s\"", what, name);
    int64_t want0 = nd == 2 ? d1 : d0, want1 = nd == 2 ? d0 : 1;
    if (t->ndim != nd || t->ne[0] != want0 || (nd == 2 && t->ne[1] != want1)) {
        char got[96];
        fmt_ne(got, sizeof got, t);
        return eng_err_set(err, "%s: tensor \"%s\" has ggml shape %s, expected [%lld%s%lld]", what, name, got,
                           (long long)want0, nd == 2 ? ", " : "", nd == 2 ? (long long)want1 : 0LL);
    }
    snprintf(out->name, sizeof out->name, "%s", name);
    out->ndim = nd;
    out->shape[0] = d0;
    if (nd == 2) out->shape[1] = d1;
    out->numel = nd == 2 ? d0 * d1 : d0;
    const unsigned char *src = im->g.buf + im->g.data_off + t->offset;
    switch (t->type) {
    case ENG_GGML_F32: out->dtype = ENG_DT_F32; break;
    case ENG_GGML_F16: out->dtype = ENG_DT_F16; break;
    case ENG_GGML_BF16: out->dtype = ENG_DT_BF16; break;
    case ENG_GGML_Q8_0: {
        uint16_t *b = impl_buf(im, (size_t)out->numel * 2);
        if (!b) return eng_err_set(err, "%s: out of memory dequantising \"%s\"", what, name);
        dequant_q8_0(src, out->numel, b);
        src = (const unsigned char *)b;
        out->dtype = ENG_DT_BF16;
        break;
    }
    default:
        return eng_err_set(err,
                           "%s: tensor \"%s\" is %s; supported GGUF tensor types are F32, F16, BF16 and Q8_0 "
                           "(re-convert with --outtype f16/bf16/q8_0)",
                           what, name, eng_gguf_type_name(t->type));
    }
    if (permute_heads > 0) {
        int64_t rows = nd == 2 ? d0 : d0, cols = nd == 2 ? d1 : 1;
        int d = (int)(rows / permute_heads);
        if (d % 2 || (int64_t)d * permute_heads != rows)
            return eng_err_set(err, "%s: tensor \"%s\": %lld rows do not split into %d heads of even size", what,
                               name, (long long)rows, permute_heads);
        size_t rb = (size_t)cols * eng_dtype_size(out->dtype);
        unsigned char *b = impl_buf(im, (size_t)rows * rb);
        if (!b) return eng_err_set(err, "%s: out of memory permuting \"%s\"", what, name);
        unpermute_rows(src, b, permute_heads, d, rb);
        src = b;
    }
    out->data = src;
    return 0;
}

/* A fused phi3 matrix (rows x C), with what its rows hold added to a shape mismatch message. */
static int bind_fused(gguf_impl *im, eng_tensor *out, const char *name, int64_t rows, int64_t C, const char *parts,
                      const char *what, eng_err *err) {
    if (!bind(im, out, name, 0, 2, rows, C, 0, what, err)) return 0;
    if (strstr(err->msg, "ggml shape")) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        eng_err_set(err, "%.400s (phi3 fuses %s)", msg, parts);
    }
    return -1;
}

/* Rows [r0, r0 + rows) of the bound 2-D tensor f as a view: the phi3 fused matrices seen as the
 * separate projections the backends take (as eng_model.c does for the safetensors qkv_proj). */
static void row_slice(eng_tensor *out, const eng_tensor *f, int64_t r0, int64_t rows, const char *part) {
    *out = *f;
    snprintf(out->name, sizeof out->name, "%.110s[%s]", f->name, part);
    out->shape[0] = rows;
    out->numel = rows * f->shape[1];
    out->data = (const unsigned char *)f->data + (size_t)(r0 * f->shape[1]) * eng_dtype_size(f->dtype);
}

int eng_gguf_load(eng_model **out, const char *path, eng_err *err) {
    *out = NULL;
    eng_model *m = calloc(1, sizeof *m);
    gguf_impl *im = calloc(1, sizeof *im);
    if (!m || !im) {
        free(m);
        free(im);
        return eng_err_set(err, "%s: out of memory", path);
    }
    m->impl = im;
    m->impl_free = impl_free;
    snprintf(m->dir, sizeof m->dir, "%s", path);
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0) {
        eng_err_set(err, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size < 8) {
        close(fd);
        eng_err_set(err, "%s: not a regular file of at least 8 bytes", path);
        goto fail;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        eng_err_set(err, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    im->map = p;
    im->len = (size_t)st.st_size;
    if (eng_gguf_parse(&im->g, im->map, im->len, path, err) || eng_gguf_config(&im->g, &m->cfg, path, err)) goto fail;
    const eng_config *c = &m->cfg;
    int64_t C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    int64_t Dq = (int64_t)c->n_heads * c->head_dim, Dkv = (int64_t)c->n_kv_heads * c->head_dim;
    int perm = c->arch == ENG_ARCH_LLAMA; /* qwen2, phi3 GGUFs keep HF order (NEOX RoPE in llama.cpp) */
    const int phi3 = c->arch == ENG_ARCH_PHI3;
    int64_t np = 0;
    if (bind(im, &m->embed, "token_embd.weight", 0, 2, V, C, 0, path, err) ||
        bind(im, &m->final_norm, "output_norm.weight", 0, 1, C, 0, 0, path, err))
        goto fail;
    np += m->embed.numel + m->final_norm.numel;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else {
        if (bind(im, &m->lm_head, "output.weight", 0, 2, V, C, 0, path, err)) goto fail;
        np += m->lm_head.numel;
    }
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        eng_err_set(err, "%s: out of memory", path);
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        eng_layer_weights *w = &m->layers[l];
        char nm[96];
#define B(field, suffix, opt, nd, a, b, ph)                                                                       \
    do {                                                                                                          \
        snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix);                                                          \
        if (bind(im, &w->field, nm, opt, nd, a, b, ph, path, err)) goto fail;                                     \
        np += w->field.numel;                                                                                     \
    } while (0)
        B(attn_norm, "attn_norm.weight", 0, 1, C, 0, 0);
        if (phi3 && eng_gguf_find_tensor(&im->g, (snprintf(nm, sizeof nm, "blk.%d.attn_qkv.weight", l), nm))) {
            /* fused (Dq + 2 Dkv, C): rows q, k, v as HF's qkv_proj (phi3 uses NEOX RoPE in llama.cpp, so
             * its converter leaves q/k unpermuted); llama.cpp also takes separate attn_q/k/v (else branch) */
            eng_tensor f;
            if (bind_fused(im, &f, nm, Dq + 2 * Dkv, C, "q, k, v: head_count + 2 head_count_kv heads", path, err))
                goto fail;
            np += f.numel;
            row_slice(&w->wq, &f, 0, Dq, "q");
            row_slice(&w->wk, &f, Dq, Dkv, "k");
            row_slice(&w->wv, &f, Dq + Dkv, Dkv, "v");
        } else {
            B(wq, "attn_q.weight", 0, 2, Dq, C, perm ? c->n_heads : 0);
            B(wk, "attn_k.weight", 0, 2, Dkv, C, perm ? c->n_kv_heads : 0);
            B(wv, "attn_v.weight", 0, 2, Dkv, C, 0);
        }
        B(wo, "attn_output.weight", 0, 2, C, Dq, 0);
        if (c->qkv_bias) {
            B(bq, "attn_q.bias", 0, 1, Dq, 0, 0);
            B(bk, "attn_k.bias", 0, 1, Dkv, 0, 0);
            B(bv, "attn_v.bias", 0, 1, Dkv, 0, 0);
        }
        B(ffn_norm, "ffn_norm.weight", 0, 1, C, 0, 0);
        if (phi3) {
            /* llama.cpp's phi3 has no ffn_gate: ffn_up is HF's gate_up_proj, (2F, C), rows gate then up
             * (its fused SwiGLU takes silu of the first half, as Phi3MLP's chunk(2)) */
            eng_tensor f;
            snprintf(nm, sizeof nm, "blk.%d.ffn_up.weight", l);
            if (bind_fused(im, &f, nm, 2 * F, C, "gate, up: 2 x feed_forward_length", path, err)) goto fail;
            np += f.numel;
            row_slice(&w->w_gate, &f, 0, F, "gate");
            row_slice(&w->w_up, &f, F, F, "up");
        } else {
            B(w_gate, "ffn_gate.weight", 0, 2, F, C, 0);
            B(w_up, "ffn_up.weight", 0, 2, F, C, 0);
        }
        B(w_down, "ffn_down.weight", 0, 2, C, F, 0);
#undef B
        static const char *const nobias[] = {"attn_q.bias", "attn_qkv.bias"};
        for (int k = 0; k < 2 && !c->qkv_bias; k++)
            if (eng_gguf_find_tensor(&im->g, (snprintf(nm, sizeof nm, "blk.%d.%s", l, nobias[k]), nm))) {
                eng_err_set(err, "%s: %s present but the %s architecture has no q/k/v biases", path, nm,
                            phi3 ? "phi3" : "llama");
                goto fail;
            }
    }
    m->n_params = np;
    *out = m;
    return 0;
fail:
    eng_model_free(m);
    return -1;
}

/* ---------------------------------------------------------------- tokenizer */

eng_tokenizer *eng_gguf_tokenizer(const eng_gguf *g, const char *what, eng_err *err) {
    const char *ms;
    uint64_t mn;
    if (eng_gguf_get_str(g, "tokenizer.ggml.model", &ms, &mn))
        return eng_err_set(err, "%s: no tokenizer.ggml.model in the metadata", what), NULL;
    eng_tok_spec sp = {0};
    sp.what = what;
    if (mn == 4 && !memcmp(ms, "gpt2", 4)) sp.kind = ENG_TOK_BPE_BYTES;
    else if (mn == 5 && !memcmp(ms, "llama", 5)) sp.kind = ENG_TOK_BPE_SPM;
    else
        return eng_err_set(err, "%s: tokenizer.ggml.model \"%.*s\" is not supported (gpt2, llama are)", what,
                           (int)(mn > 40 ? 40 : mn), ms),
               NULL;
    const eng_gguf_kv *tk = eng_gguf_find_kv(g, "tokenizer.ggml.tokens");
    const eng_gguf_kv *ty = eng_gguf_find_kv(g, "tokenizer.ggml.token_type");
    const eng_gguf_kv *sc = eng_gguf_find_kv(g, "tokenizer.ggml.scores");
    const eng_gguf_kv *mg = eng_gguf_find_kv(g, "tokenizer.ggml.merges");
    if (!tk || tk->type != ENG_GGUF_ARRAY || tk->arr_type != ENG_GGUF_STRING || tk->arr_n == 0 ||
        tk->arr_n > (1u << 22))
        return eng_err_set(err, "%s: tokenizer.ggml.tokens is missing or not a non-empty string array", what), NULL;
    int n = (int)tk->arr_n;
    if (ty && (ty->type != ENG_GGUF_ARRAY || ty->arr_type != ENG_GGUF_I32 || ty->arr_n != tk->arr_n))
        return eng_err_set(err, "%s: tokenizer.ggml.token_type is not an i32 array of %d", what, n), NULL;
    if (sc && (sc->type != ENG_GGUF_ARRAY || sc->arr_type != ENG_GGUF_F32 || sc->arr_n != tk->arr_n))
        return eng_err_set(err, "%s: tokenizer.ggml.scores is not an f32 array of %d", what, n), NULL;
    if (mg && (mg->type != ENG_GGUF_ARRAY || mg->arr_type != ENG_GGUF_STRING || mg->arr_n > (1u << 24)))
        return eng_err_set(err, "%s: tokenizer.ggml.merges is not a string array", what), NULL;
    if (sp.kind == ENG_TOK_BPE_BYTES && !mg)
        return eng_err_set(err, "%s: a gpt2 tokenizer needs tokenizer.ggml.merges", what), NULL;
    if (sp.kind == ENG_TOK_BPE_SPM && !sc && !mg)
        return eng_err_set(err, "%s: a llama tokenizer needs tokenizer.ggml.scores", what), NULL;
    int nm = mg ? (int)mg->arr_n : 0;
    const char **toks = calloc((size_t)n, sizeof *toks), **merges = calloc((size_t)nm + 1, sizeof *merges);
    size_t *tl = calloc((size_t)n, sizeof *tl), *ml = calloc((size_t)nm + 1, sizeof *ml);
    int *types = ty ? calloc((size_t)n, sizeof *types) : NULL;
    float *scores = sc ? calloc((size_t)n, sizeof *scores) : NULL;
    eng_tokenizer *t = NULL;
    if (!toks || !merges || !tl || !ml || (ty && !types) || (sc && !scores)) {
        eng_err_set(err, "%s: out of memory", what);
        goto done;
    }
    /* arrays were bounds-checked by eng_gguf_parse: walk them again */
    const unsigned char *p = tk->arr;
    for (int i = 0; i < n; i++) {
        uint64_t l = le(p, 8);
        toks[i] = (const char *)p + 8;
        tl[i] = (size_t)l;
        p += 8 + l;
    }
    p = mg ? mg->arr : NULL;
    for (int i = 0; i < nm; i++) {
        uint64_t l = le(p, 8);
        merges[i] = (const char *)p + 8;
        ml[i] = (size_t)l;
        p += 8 + l;
    }
    for (int i = 0; ty && i < n; i++) types[i] = (int32_t)le(ty->arr + 4 * (size_t)i, 4);
    for (int i = 0; sc && i < n; i++) {
        uint32_t b = (uint32_t)le(sc->arr + 4 * (size_t)i, 4);
        memcpy(&scores[i], &b, 4);
        if (!isfinite(scores[i])) scores[i] = -1e30f;
    }
    int64_t bos, eos, add_bos, add_space;
    if (eng_gguf_get_int(g, "tokenizer.ggml.bos_token_id", -1, -1, n - 1, &bos, what, err) ||
        eng_gguf_get_int(g, "tokenizer.ggml.eos_token_id", -1, -1, n - 1, &eos, what, err) ||
        eng_gguf_get_int(g, "tokenizer.ggml.add_bos_token", sp.kind == ENG_TOK_BPE_SPM, 0, 1, &add_bos, what, err) ||
        eng_gguf_get_int(g, "tokenizer.ggml.add_space_prefix", 1, 0, 1, &add_space, what, err))
        goto done;
    char pre[64] = "default";
    const char *ps;
    uint64_t pn;
    if (!eng_gguf_get_str(g, "tokenizer.ggml.pre", &ps, &pn)) {
        snprintf(pre, sizeof pre, "%.*s", (int)(pn > 60 ? 60 : pn), ps);
    }
    if (sp.kind == ENG_TOK_BPE_BYTES && !(sp.pre_regex = eng_tok_pre_regex(pre))) {
        eng_err_set(err, "%s: tokenizer.ggml.pre \"%s\" is not supported (llama-bpe, qwen2, default are)", what, pre);
        goto done;
    }
    sp.n_vocab = n;
    sp.tokens = toks;
    sp.token_lens = tl;
    sp.token_types = types;
    sp.scores = scores;
    sp.n_merges = nm;
    sp.merges = merges;
    sp.merge_lens = ml;
    sp.bos = (int)bos;
    sp.eos = (int)eos;
    sp.add_bos = (int)add_bos;
    sp.add_space_prefix = (int)add_space;
    /* as llama.cpp for llama-bpe; NFC as Qwen2's tokenizer.json (llama.cpp skips it, HF does not) */
    sp.ignore_merges = !strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3");
    sp.nfc = !strcmp(pre, "qwen2");
    t = eng_tok_from_spec(&sp, err);
done:
    free(toks);
    free(merges);
    free(tl);
    free(ml);
    free(types);
    free(scores);
    return t;
}

eng_tokenizer *eng_gguf_load_tokenizer(const char *path, eng_err *err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return eng_err_set(err, "%s: %s", path, strerror(errno)), NULL;
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size < 8) {
        close(fd);
        return eng_err_set(err, "%s: not a regular file of at least 8 bytes", path), NULL;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return eng_err_set(err, "%s: mmap failed: %s", path, strerror(errno)), NULL;
    eng_gguf g;
    eng_tokenizer *t = NULL;
    if (!eng_gguf_parse(&g, p, (size_t)st.st_size, path, err)) {
        t = eng_gguf_tokenizer(&g, path, err);
        eng_gguf_free(&g);
    }
    munmap(p, (size_t)st.st_size);
    return t;
}
