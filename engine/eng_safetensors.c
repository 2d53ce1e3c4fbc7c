/* eng_safetensors: validating parser for the safetensors header (see eng_safetensors.h). Nothing
 * here reads tensor data; it only proves that every byte range a caller will read lies inside
 * the buffer, matches its dtype and shape, and overlaps no other tensor. */
#include "eng_safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

static const struct {
    const char *name;
    int size;
    int dtype; /* eng_dtype or -1 */
} st_dtypes[] = {
    {"F32", 4, ENG_DT_F32}, {"F16", 2, ENG_DT_F16}, {"BF16", 2, ENG_DT_BF16},
    {"F64", 8, -1},         {"I64", 8, -1},         {"U64", 8, -1},
    {"I32", 4, -1},         {"U32", 4, -1},         {"I16", 2, -1},
    {"U16", 2, -1},         {"I8", 1, -1},          {"U8", 1, -1},
    {"BOOL", 1, -1},        {"F8_E4M3", 1, -1},     {"F8_E5M2", 1, -1},
};

/* A JSON number that is a non-negative integer exactly representable in a double. */
static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!isfinite(v) || v < 0 || v > 9007199254740992.0 || v != floor(v)) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const eng_st_entry *)a)->name, ((const eng_st_entry *)b)->name);
}

typedef struct {
    uint64_t begin, end;
    int idx;
} st_range;

static int cmp_begin(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Fill e from one header entry; 0 ok, -1 with err naming file and tensor. */
static int parse_entry(eng_st_entry *e, const cJSON *j, uint64_t data_len, const char *what, eng_err *err) {
    const char *nm = e->name;
    if (!cJSON_IsObject(j)) return eng_err_set(err, "%s: tensor '%s': header entry is not a JSON object", what, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    if (!cJSON_IsString(dt)) return eng_err_set(err, "%s: tensor '%s': missing or non-string \"dtype\"", what, nm);
    e->elem_size = 0;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(dt->valuestring, st_dtypes[i].name)) {
            e->elem_size = st_dtypes[i].size;
            e->dtype = st_dtypes[i].dtype;
            snprintf(e->dtype_str, sizeof e->dtype_str, "%s", st_dtypes[i].name);
        }
    if (!e->elem_size)
        return eng_err_set(err, "%s: tensor '%s': unknown dtype '%.32s'", what, nm, dt->valuestring);
    if (!cJSON_IsArray(sh)) return eng_err_set(err, "%s: tensor '%s': missing or non-array \"shape\"", what, nm);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ENG_ST_MAX_DIMS)
        return eng_err_set(err, "%s: tensor '%s': %d dimensions (at most %d supported)", what, nm, nd, ENG_ST_MAX_DIMS);
    e->ndim = nd;
    uint64_t numel = 1;
    int k = 0;
    for (const cJSON *d = sh->child; d; d = d->next, k++) {
        if (cJSON_IsNumber(d) && d->valuedouble < 0)
            return eng_err_set(err, "%s: tensor '%s': negative dimension %g in shape", what, nm, d->valuedouble);
        uint64_t v;
        if (json_u64(d, &v) || v > INT64_MAX)
            return eng_err_set(err, "%s: tensor '%s': shape dimension %d is not a non-negative integer", what, nm, k);
        if (v && numel > UINT64_MAX / v)
            return eng_err_set(err, "%s: tensor '%s': shape product overflows", what, nm);
        numel *= v;
        e->shape[k] = (int64_t)v;
    }
    if (numel > (uint64_t)INT64_MAX / 8)
        return eng_err_set(err, "%s: tensor '%s': shape product overflows", what, nm);
    e->numel = (int64_t)numel;
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2)
        return eng_err_set(err, "%s: tensor '%s': \"data_offsets\" is not an array of two integers", what, nm);
    if (json_u64(of->child, &e->begin) || json_u64(of->child->next, &e->end))
        return eng_err_set(err, "%s: tensor '%s': \"data_offsets\" are not non-negative integers", what, nm);
    if (e->begin > e->end)
        return eng_err_set(err, "%s: tensor '%s': data_offsets begin %llu > end %llu", what, nm,
                           (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > data_len)
        return eng_err_set(err, "%s: tensor '%s': data_offsets end %llu beyond the %llu data bytes (truncated file?)",
                           what, nm, (unsigned long long)e->end, (unsigned long long)data_len);
    if (e->begin % (uint64_t)e->elem_size)
        return eng_err_set(err, "%s: tensor '%s': data offset %llu is not aligned to its %s element size %d", what, nm,
                           (unsigned long long)e->begin, e->dtype_str, e->elem_size);
    if (e->end - e->begin != numel * (uint64_t)e->elem_size)
        return eng_err_set(err, "%s: tensor '%s': %llu data bytes but shape needs %llu (%llu x %d)", what, nm,
                           (unsigned long long)(e->end - e->begin), (unsigned long long)(numel * e->elem_size),
                           (unsigned long long)numel, e->elem_size);
    return 0;
}

int eng_st_parse(eng_st_header *h, const void *buf, size_t len, const char *what, eng_err *err) {
    memset(h, 0, sizeof *h);
    const unsigned char *b = buf;
    if (len < 8) return eng_err_set(err, "%s: %zu bytes, too short for a safetensors header", what, len);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | b[i];
    if (hl > len - 8)
        return eng_err_set(err, "%s: header length %llu runs beyond the file (%zu bytes; truncated?)", what,
                           (unsigned long long)hl, len);
    if (hl > ENG_ST_MAX_HEADER)
        return eng_err_set(err, "%s: header length %llu exceeds the %u-byte cap", what, (unsigned long long)hl,
                           ENG_ST_MAX_HEADER);
    if (hl < 2) return eng_err_set(err, "%s: header length %llu is too small for JSON", what, (unsigned long long)hl);
    /* cJSON gets a NUL-terminated private copy: the mapping is not terminated. */
    char *txt = malloc(hl + 1);
    if (!txt) return eng_err_set(err, "%s: out of memory for a %llu-byte header", what, (unsigned long long)hl);
    memcpy(txt, b + 8, hl);
    txt[hl] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(txt, hl + 1, &end, 0);
    int rc = -1;
    st_range *order = NULL;
    if (!root) {
        eng_err_set(err, "%s: header is not valid JSON (near byte %ld of the header)", what,
                    (long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - txt : -1));
        goto out;
    }
    for (const char *p = end; p && p < txt + hl; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            eng_err_set(err, "%s: trailing bytes after the JSON header (at byte %ld)", what, (long)(p - txt));
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        eng_err_set(err, "%s: header is JSON but not an object", what);
        goto out;
    }
    h->data_off = 8 + hl;
    h->data_len = len - 8 - hl;
    int n = 0;
    for (const cJSON *j = root->child; j; j = j->next) {
        if (j->string && !strcmp(j->string, "__metadata__")) continue;
        if (++n > ENG_ST_MAX_TENSORS) {
            eng_err_set(err, "%s: more than %d tensors", what, ENG_ST_MAX_TENSORS);
            goto out;
        }
    }
    h->t = calloc(n ? (size_t)n : 1, sizeof *h->t);
    order = malloc((n ? (size_t)n : 1) * sizeof *order);
    if (!h->t || !order) {
        eng_err_set(err, "%s: out of memory for %d tensor entries", what, n);
        goto out;
    }
    for (const cJSON *j = root->child; j; j = j->next) {
        if (!j->string) continue;
        if (!strcmp(j->string, "__metadata__")) continue;
        eng_st_entry *e = &h->t[h->n];
        size_t nl = strlen(j->string);
        if (nl == 0 || nl >= sizeof e->name) {
            eng_err_set(err, "%s: tensor name '%.64s%s' is %s", what, j->string, nl > 64 ? "..." : "",
                        nl ? "longer than 127 bytes" : "empty");
            goto out;
        }
        memcpy(e->name, j->string, nl + 1);
        if (parse_entry(e, j, h->data_len, what, err)) goto out;
        order[h->n] = (st_range){e->begin, e->end, h->n};
        h->n++;
    }
    /* Overlap: sort by begin; each non-empty range must start at or after the previous end. */
    qsort(order, (size_t)h->n, sizeof *order, cmp_begin);
    const eng_st_entry *prev = NULL;
    for (int i = 0; i < h->n; i++) {
        const eng_st_entry *e = &h->t[order[i].idx];
        if (e->begin == e->end) continue;
        if (prev && e->begin < prev->end) {
            eng_err_set(err, "%s: tensor '%s' [%llu, %llu) overlaps tensor '%s' [%llu, %llu)", what, e->name,
                        (unsigned long long)e->begin, (unsigned long long)e->end, prev->name,
                        (unsigned long long)prev->begin, (unsigned long long)prev->end);
            goto out;
        }
        prev = e;
    }
    qsort(h->t, (size_t)h->n, sizeof *h->t, cmp_name);
    for (int i = 1; i < h->n; i++)
        if (!strcmp(h->t[i - 1].name, h->t[i].name)) {
            eng_err_set(err, "%s: tensor '%s' appears twice in the header", what, h->t[i].name);
            goto out;
        }
    rc = 0;
out:
    cJSON_Delete(root);
    free(txt);
    free(order);
    if (rc) eng_st_free(h);
    return rc;
}

void eng_st_free(eng_st_header *h) {
    if (!h) return;
    free(h->t);
    h->t = NULL;
    h->n = 0;
}

const eng_st_entry *eng_st_find(const eng_st_header *h, const char *name) {
    int lo = 0, hi = h->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(h->t[mid].name, name);
        if (!c) return &h->t[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}
