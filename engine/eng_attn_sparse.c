/* eng_attn_sparse: CPU reference sparse attention for one query head. Computes exactly the (q, k)
 * entries an eng_head_index names (key blocks with causal + band mask, then gathered columns),
 * with ONE online softmax per query across both, fp32, in 64-query x 64-key tiles. */
#include "eng_attn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int d, rows;      /* head dim; queries in this row block */
    int q0;           /* first query */
    const float *q;   /* [rows][d], pre-scaled by 1/sqrt(d) */
    float *kt;        /* [d][64] the key tile, transposed so the score loop runs over keys */
    const float *vrow[ENG_BLOCK];
    int key[ENG_BLOCK];
    float *s;         /* [rows][64] */
    float *m, *l;     /* [rows] running max and denominator */
    float *acc;       /* [rows][d] unnormalised output */
} tile_state;

/* Fold one tile of nk keys (key[j], rows kt[.][j] / vrow[j]) into the online softmax. block != 0
 * applies the band mask of ix (columns are never band-masked). */
static void tile_update(tile_state *t, int nk, const eng_head_index *ix, int block) {
    const int d = t->d;
    for (int r = 0; r < t->rows; r++) {
        float *s = t->s + (size_t)r * ENG_BLOCK;
        const float *qr = t->q + (size_t)r * d;
        for (int j = 0; j < nk; j++) s[j] = 0;
        for (int c = 0; c < d; c++) {
            float qc = qr[c];
            const float *kc = t->kt + (size_t)c * ENG_BLOCK;
            for (int j = 0; j < nk; j++) s[j] += qc * kc[j];
        }
        int qi = t->q0 + r;
        float bm = -INFINITY;
        for (int j = 0; j < nk; j++) {
            int k = t->key[j];
            int keep = k <= qi;
            if (keep && block && ix->window > 0) keep = k < ix->sink || qi - k < ix->window;
            if (!keep) s[j] = -INFINITY;
            else if (s[j] > bm) bm = s[j];
        }
        if (bm == -INFINITY) continue;
        float mnew = t->m[r] > bm ? t->m[r] : bm;
        float corr = expf(t->m[r] - mnew); /* 0 when m was -inf */
        float *acc = t->acc + (size_t)r * d;
        if (corr != 1.0f)
            for (int c = 0; c < d; c++) acc[c] *= corr;
        float lsum = t->l[r] * corr;
        for (int j = 0; j < nk; j++) {
            if (s[j] == -INFINITY) continue;
            float p = expf(s[j] - mnew);
            lsum += p;
            const float *v = t->vrow[j];
            for (int c = 0; c < d; c++) acc[c] += p * v[c];
        }
        t->l[r] = lsum;
        t->m[r] = mnew;
    }
}

void eng_attn_sparse_head(const float *q, int q_stride, const float *k, const float *v, int kv_stride, int n, int d,
                          const eng_head_index *ix, float *out, int out_stride, float *lse) {
    if (n <= 0 || d <= 0) return;
    const float scale = 1.0f / sqrtf((float)d);
    float *qs = malloc((size_t)ENG_BLOCK * d * sizeof *qs);
    float *kt = malloc((size_t)ENG_BLOCK * d * sizeof *kt);
    float *s = malloc((size_t)ENG_BLOCK * ENG_BLOCK * sizeof *s);
    float *acc = malloc((size_t)ENG_BLOCK * d * sizeof *acc);
    float m[ENG_BLOCK], l[ENG_BLOCK];
    if (!qs || !kt || !s || !acc) {
        /* No error channel in this contract: poison the output so a failure cannot pass as data. */
        for (int t = 0; t < n; t++) {
            for (int c = 0; c < d; c++) out[(size_t)t * out_stride + c] = NAN;
            if (lse) lse[t] = NAN;
        }
        goto done;
    }
    for (int rb = 0; rb < ix->n_rb && rb * ENG_BLOCK < n; rb++) {
        tile_state t = {.d = d, .q0 = rb * ENG_BLOCK, .q = qs, .kt = kt, .s = s, .m = m, .l = l, .acc = acc};
        t.rows = n - t.q0 < ENG_BLOCK ? n - t.q0 : ENG_BLOCK;
        for (int r = 0; r < t.rows; r++) {
            const float *src = q + (size_t)(t.q0 + r) * q_stride;
            for (int c = 0; c < d; c++) qs[(size_t)r * d + c] = src[c] * scale;
            m[r] = -INFINITY;
            l[r] = 0;
        }
        memset(acc, 0, (size_t)t.rows * d * sizeof *acc);
        int last = t.q0 + t.rows - 1;
        const int *bo = ix->block_offset + (size_t)rb * ix->max_blocks;
        for (int b = 0; b < ix->block_count[rb]; b++) {
            int k0 = bo[b], nk = 0;
            for (int kk = k0; kk < k0 + ENG_BLOCK && kk <= last && kk < n; kk++) t.key[nk++] = kk;
            if (!nk) continue;
            for (int j = 0; j < nk; j++) {
                const float *kr = k + (size_t)t.key[j] * kv_stride;
                for (int c = 0; c < d; c++) kt[(size_t)c * ENG_BLOCK + j] = kr[c];
                t.vrow[j] = v + (size_t)t.key[j] * kv_stride;
            }
            tile_update(&t, nk, ix, 1);
        }
        const int *ci = ix->column_index + (size_t)rb * ix->max_cols;
        for (int j0 = 0; j0 < ix->column_count[rb]; j0 += ENG_BLOCK) {
            int nk = 0;
            for (int j = j0; j < ix->column_count[rb] && j < j0 + ENG_BLOCK; j++) {
                int key = ci[j];
                if (key < 0 || key >= n) continue;
                const float *kr = k + (size_t)key * kv_stride;
                for (int c = 0; c < d; c++) kt[(size_t)c * ENG_BLOCK + nk] = kr[c];
                t.vrow[nk] = v + (size_t)key * kv_stride;
                t.key[nk++] = key;
            }
            if (nk) tile_update(&t, nk, ix, 0);
        }
        for (int r = 0; r < t.rows; r++) {
            float *o = out + (size_t)(t.q0 + r) * out_stride;
            if (l[r] > 0) {
                float inv = 1.0f / l[r];
                for (int c = 0; c < d; c++) o[c] = acc[(size_t)r * d + c] * inv;
                if (lse) lse[t.q0 + r] = m[r] + logf(l[r]);
            } else { /* a row the index leaves empty: nothing attended */
                for (int c = 0; c < d; c++) o[c] = 0;
                if (lse) lse[t.q0 + r] = -INFINITY;
            }
        }
    }
done:
    free(qs);
    free(kt);
    free(s);
    free(acc);
}
