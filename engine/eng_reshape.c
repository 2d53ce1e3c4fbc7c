/* eng_reshape: the Re-ttention-style dropped-block estimate folded into a sparse head's softmax
 * (formula and adaptation note in eng_reshape.h). */
#include "eng_reshape.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define B ENG_BLOCK

int eng_reshape_apply(const eng_head_mask *m, const float *q, int q_stride, const float *k, const float *v,
                      int kv_stride, int n, int d, float *out, int out_stride, const float *lse, float *lse_out,
                      long long *dropped, eng_err *err) {
    if (dropped) *dropped = 0;
    if (n != m->n || n < 1 || d < 1) return eng_err_set(err, "reshape: mask for %d tokens, tensors %d", m->n, n);
    const int nkb = (n + B - 1) / B;
    const double scale = 1.0 / sqrt((double)d);
    /* Means of every full block (keys [64b, 64b + 64) all < n); a block clipped by the row (the
     * diagonal block, or the last block) is averaged over its keys <= i when needed. */
    double *kbar = malloc(sizeof *kbar * (size_t)nkb * d), *vbar = malloc(sizeof *vbar * (size_t)nkb * d);
    double *kc = malloc(sizeof *kc * (size_t)d), *vc = malloc(sizeof *vc * (size_t)d);
    double *w = malloc(sizeof *w * (size_t)nkb), *acc = malloc(sizeof *acc * (size_t)d);
    unsigned char *keep = malloc((size_t)n);
    int rc = -1;
    if (!kbar || !vbar || !kc || !vc || !w || !acc || !keep) {
        eng_err_set(err, "reshape: out of memory (n = %d)", n);
        goto done;
    }
    for (int b = 0; b < nkb; b++) {
        double *kb = kbar + (size_t)b * d, *vb = vbar + (size_t)b * d;
        int j1 = b * B + B < n ? b * B + B : n;
        for (int c = 0; c < d; c++) kb[c] = vb[c] = 0;
        for (int j = b * B; j < j1; j++)
            for (int c = 0; c < d; c++) {
                kb[c] += k[(size_t)j * kv_stride + c];
                vb[c] += v[(size_t)j * kv_stride + c];
            }
        for (int c = 0; c < d; c++) kb[c] /= (j1 - b * B), vb[c] /= (j1 - b * B);
    }
    long long nd = 0;
    for (int i = 0; i < n; i++) {
        eng_dma_mask_row(m, i, keep);
        const float *qi = q + (size_t)i * q_stride;
        float *o = out + (size_t)i * out_stride;
        /* log-weights: the sparse part lse_i, each dropped block log|J| + scale q . kbar_J */
        double mx = lse[i];
        int nw = 0;
        for (int b = 0; b * B <= i; b++) {
            int j0 = b * B, j1 = j0 + B - 1 < i ? j0 + B - 1 : i, any = 0;
            for (int j = j0; j <= j1 && !any; j++) any = keep[j];
            if (any) {
                w[b] = -INFINITY;
                continue;
            }
            const double *kb = kbar + (size_t)b * d;
            if (j1 - j0 + 1 < B || j0 + B > n) { /* clipped block: mean over its keys <= i */
                for (int c = 0; c < d; c++) kc[c] = 0;
                for (int j = j0; j <= j1; j++)
                    for (int c = 0; c < d; c++) kc[c] += k[(size_t)j * kv_stride + c];
                for (int c = 0; c < d; c++) kc[c] /= (j1 - j0 + 1);
                kb = kc;
            }
            double s = 0;
            for (int c = 0; c < d; c++) s += (double)qi[c] * kb[c];
            w[b] = s * scale + log((double)(j1 - j0 + 1));
            if (w[b] > mx) mx = w[b];
            nw++;
        }
        if (!nw) {
            if (lse_out) lse_out[i] = lse[i];
            continue;
        }
        nd += nw;
        double den = isfinite(lse[i]) ? exp(lse[i] - mx) : 0;
        for (int c = 0; c < d; c++) acc[c] = den * o[c];
        for (int b = 0; b * B <= i; b++) {
            if (w[b] == -INFINITY) continue;
            double a = exp(w[b] - mx);
            den += a;
            int j0 = b * B, j1 = j0 + B - 1 < i ? j0 + B - 1 : i;
            const double *vb = vbar + (size_t)b * d;
            if (j1 - j0 + 1 < B || j0 + B > n) {
                for (int c = 0; c < d; c++) vc[c] = 0;
                for (int j = j0; j <= j1; j++)
                    for (int c = 0; c < d; c++) vc[c] += v[(size_t)j * kv_stride + c];
                for (int c = 0; c < d; c++) vc[c] /= (j1 - j0 + 1);
                vb = vc;
            }
            for (int c = 0; c < d; c++) acc[c] += a * vb[c];
        }
        for (int c = 0; c < d; c++) o[c] = (float)(acc[c] / den);
        if (lse_out) lse_out[i] = (float)(mx + log(den));
    }
    if (dropped) *dropped = nd;
    rc = 0;
done:
    free(kbar), free(vbar), free(kc), free(vc), free(w), free(acc), free(keep);
    return rc;
}
