/* eng_dma: DMA-style threshold masks and N:M masks, the head-mask abstraction over every pattern
 * kind, their CPU attention (tile-skipping for DMA) and eng_dma_attend (see eng_dma.h). */
#include "eng_dma.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eng_attn.h"
#include "eng_reshape.h"

#define T ENG_BLOCK   /* 64: query tile and key tile */
#define VS_LAST 64    /* VS vertical score: the last 64 queries */

/* ---- key scores and thresholds ------------------------------------------------------------ */

int eng_dma_scores(int key_score, const float *q, int q_stride, const float *k, int k_stride, const float *v,
                   int v_stride, int n, int d, float *z, eng_err *err) {
    if (n < 1 || d < 1) return eng_err_set(err, "dma: bad shape (n %d, d %d)", n, d);
    if (key_score == 0) {
        if (!v) return eng_err_set(err, "dma: value-norm score needs V");
        for (int j = 0; j < n; j++) {
            double s = 0;
            const float *vj = v + (size_t)j * v_stride;
            for (int c = 0; c < d; c++) s += (double)vj[c] * vj[c];
            z[j] = (float)sqrt(s);
        }
        return 0;
    }
    if (key_score != 1) return eng_err_set(err, "dma: key_score %d unknown (0 = value norm, 1 = VS vertical)", key_score);
    if (!q || !k) return eng_err_set(err, "dma: VS vertical score needs Q and K");
    const int lq = n < VS_LAST ? n : VS_LAST;
    const double scale = 1.0 / sqrt((double)d);
    double *row = malloc(sizeof *row * (size_t)n), *acc = calloc((size_t)n, sizeof *acc);
    if (!row || !acc) {
        free(row), free(acc);
        return eng_err_set(err, "dma: out of memory (n = %d)", n);
    }
    for (int i = n - lq; i < n; i++) {
        const float *qi = q + (size_t)i * q_stride;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; j++) {
            const float *kj = k + (size_t)j * k_stride;
            double s = 0;
            for (int c = 0; c < d; c++) s += (double)qi[c] * kj[c];
            row[j] = s * scale;
            if (row[j] > mx) mx = row[j];
        }
        for (int j = 0; j <= i; j++) sum += (row[j] = exp(row[j] - mx));
        for (int j = 0; j <= i; j++) acc[j] += row[j] / sum;
    }
    for (int j = 0; j < n; j++) z[j] = (float)acc[j];
    free(row), free(acc);
    return 0;
}

/* Min-heap of floats (the keep largest seen so far; the root is the keep-th largest). */
static void heap_down(float *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l] < h[m]) m = l;
        if (r < n && h[r] < h[m]) m = r;
        if (m == i) return;
        float t = h[i];
        h[i] = h[m], h[m] = t, i = m;
    }
}

int eng_dma_thresholds(const float *z, int n, int keep, float *theta, eng_err *err) {
    if (n < 1 || keep < 1) return eng_err_set(err, "dma thresholds: bad shape (n %d, keep %d)", n, keep);
    int cap = keep < n ? keep : n, sz = 0;
    float *h = malloc(sizeof *h * (size_t)cap);
    if (!h) return eng_err_set(err, "dma thresholds: out of memory (keep %d)", keep);
    for (int i = 0; i < n; i++) {
        float x = isnan(z[i]) ? -INFINITY : z[i];
        if (sz < cap) { /* sift up */
            int c = sz++;
            h[c] = x;
            while (c > 0 && h[(c - 1) / 2] > h[c]) {
                float t = h[c];
                h[c] = h[(c - 1) / 2], h[(c - 1) / 2] = t, c = (c - 1) / 2;
            }
        } else if (x > h[0]) {
            h[0] = x;
            heap_down(h, sz, 0);
        }
        theta[i] = i + 1 <= keep ? -INFINITY : h[0];
    }
    free(h);
    return 0;
}

/* ---- the head mask ------------------------------------------------------------------------- */

void eng_dma_mask_free(eng_head_mask *m) {
    if (!m) return;
    eng_index_free(&m->ix);
    free(m->z);
    free(m->theta);
    free(m->zmax);
    memset(m, 0, sizeof *m);
}

int eng_dma_mask_build(const eng_pattern *p, const float *q, int q_stride, const float *k, const float *v,
                       int kv_stride, int n, int d, eng_head_mask *m, eng_err *err) {
    memset(m, 0, sizeof *m);
    if (!p) return eng_err_set(err, "mask build: no pattern");
    if (n < 1 || d < 1) return eng_err_set(err, "mask build: bad shape (n %d, d %d)", n, d);
    if (eng_pattern_validate(p, err)) return -1;
    m->n = n;
    if (eng_pattern_is_index(p->kind)) {
        m->kind = ENG_MASK_INDEX;
        return eng_pattern_build(p, q, q_stride, k, kv_stride, n, d, &m->ix, err);
    }
    if (p->kind == ENG_PAT_NM) {
        if (!q || !k) return eng_err_set(err, "nm: needs Q and K");
        m->kind = ENG_MASK_NM;
        m->nm_n = p->nm_n, m->nm_m = p->nm_m;
        m->q = q, m->k = k, m->q_stride = q_stride, m->k_stride = kv_stride, m->d = d;
        return 0;
    }
    m->kind = ENG_MASK_DMA;
    m->sink = p->n_init, m->window = p->n_local;
    const int nkt = (n + T - 1) / T;
    m->z = malloc(sizeof *m->z * (size_t)n);
    m->theta = malloc(sizeof *m->theta * (size_t)n);
    m->zmax = malloc(sizeof *m->zmax * (size_t)nkt);
    if (!m->z || !m->theta || !m->zmax) {
        eng_dma_mask_free(m);
        return eng_err_set(err, "dma: out of memory (n = %d)", n);
    }
    if (eng_dma_scores(p->key_score, q, q_stride, k, kv_stride, v, kv_stride, n, d, m->z, err) ||
        eng_dma_thresholds(m->z, n, p->keep, m->theta, err)) {
        eng_dma_mask_free(m);
        return -1;
    }
    for (int t = 0; t < nkt; t++) {
        float mx = -INFINITY;
        for (int j = t * T; j < t * T + T && j < n; j++)
            if (m->z[j] > mx) mx = m->z[j];
        m->zmax[t] = mx;
    }
    return 0;
}

static int dma_keeps(const eng_head_mask *m, int i, int j) {
    return j < m->sink || i - j < m->window || m->z[j] >= m->theta[i];
}

static double logit(const eng_head_mask *m, int i, int j) {
    const float *qi = m->q + (size_t)i * m->q_stride, *kj = m->k + (size_t)j * m->k_stride;
    double s = 0;
    for (int c = 0; c < m->d; c++) s += (double)qi[c] * kj[c];
    return s;
}

/* N:M: within group [g0, g1) of row i, is key j among the n largest logits (ties: lower key)? */
static int nm_keeps_in(const double *s, int g0, int g1, int j, int nkeep) {
    int better = 0;
    for (int t = g0; t < g1; t++)
        if (s[t - g0] > s[j - g0] || (s[t - g0] == s[j - g0] && t < j)) better++;
    return better < nkeep;
}

int eng_dma_mask_covers(const eng_head_mask *m, int q, int k) {
    if (q < 0 || q >= m->n || k < 0 || k > q) return 0;
    switch (m->kind) {
    case ENG_MASK_INDEX: return eng_index_covers(&m->ix, q, k);
    case ENG_MASK_DMA: return dma_keeps(m, q, k);
    case ENG_MASK_NM: {
        int g0 = k / m->nm_m * m->nm_m, g1 = g0 + m->nm_m <= q + 1 ? g0 + m->nm_m : q + 1;
        double s[64];
        for (int t = g0; t < g1; t++) s[t - g0] = logit(m, q, t);
        return nm_keeps_in(s, g0, g1, k, m->nm_n);
    }
    }
    return 0;
}

void eng_dma_mask_row(const eng_head_mask *m, int q, unsigned char *keep) {
    memset(keep, 0, (size_t)q + 1);
    switch (m->kind) {
    case ENG_MASK_INDEX: {
        const eng_head_index *ix = &m->ix;
        int rb = q / ENG_BLOCK;
        const int *bo = ix->block_offset + (size_t)rb * ix->max_blocks;
        for (int b = 0; b < ix->block_count[rb]; b++)
            for (int j = bo[b]; j < bo[b] + ENG_BLOCK && j <= q; j++)
                keep[j] = ix->window <= 0 || j < ix->sink || q - j < ix->window;
        const int *ci = ix->column_index + (size_t)rb * ix->max_cols;
        for (int c = 0; c < ix->column_count[rb]; c++)
            if (ci[c] >= 0 && ci[c] <= q) keep[ci[c]] = 1;
        return;
    }
    case ENG_MASK_DMA:
        for (int j = 0; j <= q; j++) keep[j] = (unsigned char)dma_keeps(m, q, j);
        return;
    case ENG_MASK_NM: {
        double s[64];
        for (int g0 = 0; g0 <= q; g0 += m->nm_m) {
            int g1 = g0 + m->nm_m <= q + 1 ? g0 + m->nm_m : q + 1;
            for (int t = g0; t < g1; t++) s[t - g0] = logit(m, q, t);
            for (int t = g0; t < g1; t++) keep[t] = (unsigned char)nm_keeps_in(s, g0, g1, t, m->nm_n);
        }
        return;
    }
    }
}

long long eng_dma_mask_count(const eng_head_mask *m) {
    long long c = 0;
    switch (m->kind) {
    case ENG_MASK_INDEX: return eng_index_count(&m->ix);
    case ENG_MASK_DMA:
        for (int i = 0; i < m->n; i++)
            for (int j = 0; j <= i; j++) c += dma_keeps(m, i, j);
        return c;
    case ENG_MASK_NM:
        /* Row i: full groups keep n each; the partial last group min(n, its size). */
        for (int i = 0; i < m->n; i++) {
            int full = (i + 1) / m->nm_m, rest = (i + 1) % m->nm_m;
            c += (long long)full * m->nm_n + (rest < m->nm_n ? rest : m->nm_n);
        }
        return c;
    }
    return 0;
}

int eng_dma_tile_active(const eng_head_mask *m, int rb, int kt) {
    const int i0 = rb * T, i1 = (i0 + T < m->n ? i0 + T : m->n) - 1, j0 = kt * T;
    const int j1 = (j0 + T < m->n ? j0 + T : m->n) - 1;
    if (j0 > i1) return 0;                                /* above the diagonal */
    if (m->kind != ENG_MASK_DMA) return 1;
    if (j0 < m->sink) return 1;                           /* holds a sink column */
    if ((long long)i0 - j1 < m->window) return 1;         /* reaches the local window */
    return m->zmax[kt] >= m->theta[i0];                   /* theta is smallest at the first row */
}

/* ---- attention ----------------------------------------------------------------------------- */

/* One online-softmax row state. */
typedef struct {
    double m, l;
    float *acc;
} row_state;

static void fold(row_state *r, float s, const float *v, int d) {
    if (s == -INFINITY) return;
    if (s > r->m) {
        float corr = (float)exp(r->m - s); /* 0 when m was -inf */
        for (int c = 0; c < d; c++) r->acc[c] *= corr;
        r->l *= corr;
        r->m = s;
    }
    float p = (float)exp(s - r->m);
    r->l += p;
    for (int c = 0; c < d; c++) r->acc[c] += p * v[c];
}

static void finish(const row_state *r, int d, float *o, float *lse) {
    if (r->l > 0) {
        for (int c = 0; c < d; c++) o[c] = (float)(r->acc[c] / r->l);
        if (lse) *lse = (float)(r->m + log(r->l));
    } else {
        for (int c = 0; c < d; c++) o[c] = 0;
        if (lse) *lse = -INFINITY;
    }
}

/* DMA: 64-query row blocks x 64-key tiles; inactive tiles are never touched. Scores per tile, the
 * keep rule per pair, one online softmax per row across the active tiles. */
static int attn_dma(const eng_head_mask *m, const float *q, int q_stride, const float *k, const float *v,
                    int kv_stride, int n, int d, float *out, int out_stride, float *lse, eng_dma_stats *st) {
    const float scale = 1.0f / sqrtf((float)d);
    float *acc = malloc(sizeof *acc * (size_t)T * d), *s = malloc(sizeof *s * T);
    if (!acc || !s) {
        free(acc), free(s);
        return -1;
    }
    row_state rs[T];
    const int n_rb = (n + T - 1) / T;
    for (int rb = 0; rb < n_rb; rb++) {
        const int i0 = rb * T, rows = n - i0 < T ? n - i0 : T;
        for (int r = 0; r < rows; r++) rs[r] = (row_state){-INFINITY, 0, acc + (size_t)r * d};
        memset(acc, 0, sizeof *acc * (size_t)rows * d);
        for (int kt = 0; kt <= rb; kt++) {
            if (st) st->tiles_causal++;
            if (!eng_dma_tile_active(m, rb, kt)) continue;
            if (st) st->tiles_run++;
            const int j0 = kt * T;
            for (int r = 0; r < rows; r++) {
                const int i = i0 + r, j1 = j0 + T - 1 < i ? j0 + T - 1 : i;
                const float *qi = q + (size_t)i * q_stride;
                for (int j = j0; j <= j1; j++) {
                    if (!dma_keeps(m, i, j)) {
                        s[j - j0] = -INFINITY;
                        continue;
                    }
                    const float *kj = k + (size_t)j * kv_stride;
                    float a = 0;
                    for (int c = 0; c < d; c++) a += qi[c] * kj[c];
                    s[j - j0] = a * scale;
                }
                for (int j = j0; j <= j1; j++) fold(&rs[r], s[j - j0], v + (size_t)j * kv_stride, d);
            }
        }
        for (int r = 0; r < rows; r++)
            finish(&rs[r], d, out + (size_t)(i0 + r) * out_stride, lse ? lse + i0 + r : NULL);
    }
    free(acc), free(s);
    return 0;
}

/* N:M: every logit of the row, then the kept n per group, one softmax. */
static int attn_nm(const eng_head_mask *m, const float *q, int q_stride, const float *k, const float *v,
                   int kv_stride, int n, int d, float *out, int out_stride, float *lse) {
    const float scale = 1.0f / sqrtf((float)d);
    double *s = malloc(sizeof *s * (size_t)n);
    float *acc = malloc(sizeof *acc * (size_t)d);
    if (!s || !acc) {
        free(s), free(acc);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const float *qi = q + (size_t)i * q_stride;
        for (int j = 0; j <= i; j++) {
            const float *kj = k + (size_t)j * kv_stride;
            double a = 0;
            for (int c = 0; c < d; c++) a += (double)qi[c] * kj[c];
            s[j] = a;
        }
        row_state r = {-INFINITY, 0, acc};
        memset(acc, 0, sizeof *acc * (size_t)d);
        for (int g0 = 0; g0 <= i; g0 += m->nm_m) {
            int g1 = g0 + m->nm_m <= i + 1 ? g0 + m->nm_m : i + 1;
            for (int j = g0; j < g1; j++)
                if (nm_keeps_in(s + g0, g0, g1, j, m->nm_n))
                    fold(&r, (float)(s[j] * scale), v + (size_t)j * kv_stride, d);
        }
        finish(&r, d, out + (size_t)i * out_stride, lse ? lse + i : NULL);
    }
    free(s), free(acc);
    return 0;
}

int eng_dma_attn_head(const eng_head_mask *m, const float *q, int q_stride, const float *k, const float *v,
                      int kv_stride, int n, int d, float *out, int out_stride, float *lse, eng_dma_stats *st,
                      eng_err *err) {
    if (st) memset(st, 0, sizeof *st);
    if (n != m->n || n < 1 || d < 1) return eng_err_set(err, "mask attention: mask for %d tokens, tensors %d", m->n, n);
    int rc = 0;
    if (m->kind == ENG_MASK_INDEX) {
        eng_attn_sparse_head(q, q_stride, k, v, kv_stride, n, d, &m->ix, out, out_stride, lse);
    } else if (m->kind == ENG_MASK_DMA) {
        rc = attn_dma(m, q, q_stride, k, v, kv_stride, n, d, out, out_stride, lse, st);
    } else {
        rc = attn_nm(m, q, q_stride, k, v, kv_stride, n, d, out, out_stride, lse);
    }
    if (st && m->kind != ENG_MASK_DMA) {
        long long nt = (n + T - 1) / T;
        st->tiles_causal = st->tiles_run = nt * (nt + 1) / 2;
    }
    if (rc) {
        for (int t = 0; t < n; t++) {
            for (int c = 0; c < d; c++) out[(size_t)t * out_stride + c] = NAN;
            if (lse) lse[t] = NAN;
        }
        return eng_err_set(err, "mask attention: out of memory (n = %d, d = %d)", n, d);
    }
    return 0;
}

int eng_dma_attend(const eng_pattern *p, const float *q, int q_stride, const float *k, const float *v, int kv_stride,
                   int n, int d, float *out, int out_stride, float *lse, float *out_plain, long long *computed,
                   eng_err *err) {
    eng_head_mask m;
    if (eng_dma_mask_build(p, q, q_stride, k, v, kv_stride, n, d, &m, err)) return -1;
    float *ls = lse;
    int rc = -1;
    if (p->reshape && !ls && !(ls = malloc(sizeof *ls * (size_t)n))) {
        eng_err_set(err, "reshape: out of memory (n = %d)", n);
        goto done;
    }
    if (eng_dma_attn_head(&m, q, q_stride, k, v, kv_stride, n, d, out, out_stride, ls, NULL, err)) goto done;
    if (out_plain)
        for (int t = 0; t < n; t++)
            memcpy(out_plain + (size_t)t * out_stride, out + (size_t)t * out_stride, sizeof *out * (size_t)d);
    if (p->reshape && eng_reshape_apply(&m, q, q_stride, k, v, kv_stride, n, d, out, out_stride, ls, NULL, NULL, err))
        goto done;
    if (computed) *computed = eng_dma_mask_count(&m);
    rc = 0;
done:
    if (ls != lse) free(ls);
    eng_dma_mask_free(&m);
    return rc;
}
