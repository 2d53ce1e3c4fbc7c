/* eng_transform: 2:4 magnitude pruning and symmetric per-channel INT8 of a model's attention and
 * MLP weights into owned f32 copies (see eng_transform.h). */
#include "eng_transform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int eng_transform_parse(const char *s, unsigned *flags, eng_err *err) {
    static const struct {
        const char *name;
        unsigned flags;
    } t[] = {{"24", ENG_XF_24},           {"2:4", ENG_XF_24},           {"int8", ENG_XF_INT8},
             {"24+int8", ENG_XF_24 | ENG_XF_INT8}, {"2:4+int8", ENG_XF_24 | ENG_XF_INT8},
             {"int8+24", ENG_XF_24 | ENG_XF_INT8}, {"int8+2:4", ENG_XF_24 | ENG_XF_INT8}};
    for (size_t i = 0; s && i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].name)) {
            *flags = t[i].flags;
            return 0;
        }
    return eng_err_set(err, "transform: unknown '%s' (want 24, int8 or 24+int8)", s ? s : "");
}

const char *eng_transform_name(unsigned flags) {
    switch (flags) {
    case ENG_XF_24: return "2:4";
    case ENG_XF_INT8: return "int8";
    case ENG_XF_24 | ENG_XF_INT8: return "2:4+int8";
    default: return "none";
    }
}

void eng_transform_prune24(float *w, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = w + r * cols;
        for (int64_t g = 0; g < cols; g += 4) {
            int c = cols - g < 4 ? (int)(cols - g) : 4;
            if (c <= 2) continue;
            /* Rank each of the c entries: kept iff fewer than 2 entries beat it. */
            int drop[4] = {0, 0, 0, 0};
            for (int i = 0; i < c; i++) {
                int better = 0;
                for (int j = 0; j < c; j++) {
                    float a = fabsf(row[g + j]), b = fabsf(row[g + i]);
                    if (a > b || (a == b && j < i)) better++;
                }
                drop[i] = better >= 2;
            }
            for (int i = 0; i < c; i++)
                if (drop[i]) row[g + i] = 0.0f;
        }
    }
}

void eng_transform_int8(float *w, int64_t rows, int64_t cols, float *scale) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = w + r * cols, mx = 0;
        for (int64_t c = 0; c < cols; c++)
            if (fabsf(row[c]) > mx) mx = fabsf(row[c]);
        float s = mx / 127.0f;
        if (scale) scale[r] = s;
        if (!(s > 0)) {
            for (int64_t c = 0; c < cols; c++) row[c] = 0.0f;
            continue;
        }
        for (int64_t c = 0; c < cols; c++) {
            float qv = rintf(row[c] / s);
            if (qv > 127) qv = 127;
            if (qv < -127) qv = -127;
            row[c] = qv * s;
        }
    }
}

void eng_transform_free(eng_transformed *t) {
    if (!t) return;
    for (int i = 0; i < t->n_bufs; i++) free(t->bufs[i]);
    free(t->bufs);
    free(t->model.layers);
    memset(t, 0, sizeof *t);
}

/* An owned, transformed f32 copy of a (rows, cols) weight; *t points at it afterwards. */
static int transform_tensor(eng_transformed *x, eng_tensor *t, double *num, double *den, eng_err *err) {
    if (!t->data) return 0;
    if (t->ndim != 2) return eng_err_set(err, "transform: %s is not a matrix (%d dims)", t->name, t->ndim);
    const int64_t rows = t->shape[0], cols = t->shape[1];
    float *w = malloc(sizeof *w * (size_t)t->numel);
    if (!w) return eng_err_set(err, "transform: out of memory for %s (%lld weights)", t->name, (long long)t->numel);
    eng_tensor_to_f32(t, 0, t->numel, w);
    float *orig = malloc(sizeof *orig * (size_t)cols);
    if (!orig) {
        free(w);
        return eng_err_set(err, "transform: out of memory");
    }
    for (int64_t r = 0; r < rows; r++) {
        float *row = w + r * cols;
        memcpy(orig, row, sizeof *orig * (size_t)cols);
        if (x->flags & ENG_XF_24) eng_transform_prune24(row, 1, cols);
        if (x->flags & ENG_XF_INT8) eng_transform_int8(row, 1, cols, NULL);
        for (int64_t c = 0; c < cols; c++) {
            double e = (double)row[c] - orig[c];
            *num += e * e;
            *den += (double)orig[c] * orig[c];
            x->n_zero += row[c] == 0.0f;
        }
    }
    free(orig);
    x->bufs[x->n_bufs++] = w;
    x->n_weights += t->numel;
    t->dtype = ENG_DT_F32;
    t->data = w;
    return 0;
}

int eng_transform_model(const eng_model *src, unsigned flags, eng_transformed *out, eng_err *err) {
    memset(out, 0, sizeof *out);
    if (!flags || (flags & ~(unsigned)(ENG_XF_24 | ENG_XF_INT8)))
        return eng_err_set(err, "transform: bad flags %u", flags);
    const int L = src->cfg.n_layers;
    out->flags = flags;
    out->model = *src;
    out->model.impl = NULL;
    out->model.impl_free = NULL;
    out->model.layers = malloc(sizeof *out->model.layers * (size_t)L);
    out->bufs = calloc((size_t)L * 7, sizeof *out->bufs);
    if (!out->model.layers || !out->bufs) {
        eng_transform_free(out);
        return eng_err_set(err, "transform: out of memory (%d layers)", L);
    }
    memcpy(out->model.layers, src->layers, sizeof *out->model.layers * (size_t)L);
    double num = 0, den = 0;
    for (int l = 0; l < L; l++) {
        eng_layer_weights *lw = &out->model.layers[l];
        eng_tensor *ts[7] = {&lw->wq, &lw->wk, &lw->wv, &lw->wo, &lw->w_gate, &lw->w_up, &lw->w_down};
        for (int i = 0; i < 7; i++)
            if (transform_tensor(out, ts[i], &num, &den, err)) {
                eng_transform_free(out);
                return -1;
            }
    }
    out->rel_err = den > 0 ? sqrt(num / den) : 0;
    return 0;
}
