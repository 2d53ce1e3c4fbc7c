/* eng_attn_dense: the CPU's fast dense causal attention for one query head (eng_attn.h), the path the
 * CPU prefill runs. Flash-style: 64-query x 256-key tiles, S = scale * Q K^T and O += P V through
 * cblas_sgemm, one online softmax per row, row LSE as a by-product. Row tiles are shared by the
 * online CPUs (heaviest first, since causal tile t costs ~t+1 key tiles). */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "eng_attn.h"
#include "eng_cpu.h"

#ifndef BQ
#define BQ 64  /* queries per tile */
#endif
#ifndef BK
#define BK 256 /* keys per tile */
#endif

typedef struct {
    const float *q, *k, *v;
    int qs, kvs, os, n, d;
    float *out, *lse;
    float scale;
    int ntiles;
    atomic_int next;
} dense_job;

/* Fallback that needs no scratch (malloc failed): per row, a scalar online softmax accumulating
 * straight into the output row. Same maths as the tiled path, just slower. */
static void dense_rows_noalloc(const dense_job *j, int i0, int i1) {
    const int d = j->d;
    for (int i = i0; i < i1; i++) {
        const float *qi = j->q + (size_t)i * j->qs;
        float *o = j->out + (size_t)i * j->os;
        float m = -INFINITY, l = 0.0f;
        memset(o, 0, sizeof(float) * (size_t)d);
        for (int t = 0; t <= i; t++) {
            const float *kt = j->k + (size_t)t * j->kvs, *vt = j->v + (size_t)t * j->kvs;
            float s = 0.0f;
            for (int c = 0; c < d; c++) s += qi[c] * kt[c];
            s *= j->scale;
            float mn = s > m ? s : m;
            float a = expf(m - mn), p = expf(s - mn);
            l = l * a + p;
            for (int c = 0; c < d; c++) o[c] = o[c] * a + p * vt[c];
            m = mn;
        }
        for (int c = 0; c < d; c++) o[c] /= l;
        if (j->lse) j->lse[i] = m + logf(l);
    }
}

/* One 64-query tile. S (BQ, BK) scores then probabilities; O (BQ, d) the unnormalised output;
 * m, l (BQ) running row max and row sum. */
static void dense_tile(const dense_job *j, int t, float *S, float *O, float *m, float *l) {
    const int d = j->d, i0 = t * BQ;
    const int rows = j->n - i0 < BQ ? j->n - i0 : BQ;
    const int iend = i0 + rows; /* keys [0, iend) can be seen by some row of the tile */
    for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0.0f;
    memset(O, 0, sizeof(float) * (size_t)rows * (size_t)d);
    for (int j0 = 0; j0 < iend; j0 += BK) {
        const int cols = iend - j0 < BK ? iend - j0 : BK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, d, j->scale, j->q + (size_t)i0 * j->qs,
                    j->qs, j->k + (size_t)j0 * j->kvs, j->kvs, 0.0f, S, BK);
        for (int r = 0; r < rows; r++) {
            /* j0 and i0 are multiples of 64 and j0 < iend, so j0 <= i0 + r: at least one key. */
            int valid = i0 + r - j0 + 1;
            if (valid > cols) valid = cols;
            float *s = S + (size_t)r * BK;
            float mx = s[0];
            for (int c = 1; c < valid; c++) mx = s[c] > mx ? s[c] : mx;
            const float mn = mx > m[r] ? mx : m[r];
            const float alpha = expf(m[r] - mn); /* 0 on the first key tile (m = -inf) */
            const float sum = eng_cpu_exp_sum(s, valid, mn);
            if (valid < cols) memset(s + valid, 0, sizeof(float) * (size_t)(cols - valid));
            l[r] = l[r] * alpha + sum;
            m[r] = mn;
            if (alpha != 1.0f) {
                float *o = O + (size_t)r * d;
                for (int c = 0; c < d; c++) o[c] *= alpha;
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, cols, 1.0f, S, BK,
                    j->v + (size_t)j0 * j->kvs, j->kvs, 1.0f, O, d);
    }
    for (int r = 0; r < rows; r++) {
        const float inv = 1.0f / l[r];
        float *o = j->out + (size_t)(i0 + r) * j->os;
        const float *src = O + (size_t)r * d;
        for (int c = 0; c < d; c++) o[c] = src[c] * inv;
        if (j->lse) j->lse[i0 + r] = m[r] + logf(l[r]);
    }
}

static void *dense_worker(void *arg) {
    dense_job *j = arg;
    float *S = aligned_alloc(64, sizeof(float) * BQ * BK);
    float *O = aligned_alloc(64, sizeof(float) * BQ * (((size_t)j->d + 15) & ~(size_t)15));
    float m[BQ], l[BQ];
    for (;;) {
        int c = atomic_fetch_add(&j->next, 1);
        if (c >= j->ntiles) break;
        int t = j->ntiles - 1 - c;
        if (S && O)
            dense_tile(j, t, S, O, m, l);
        else
            dense_rows_noalloc(j, t * BQ, (t + 1) * BQ < j->n ? (t + 1) * BQ : j->n);
    }
    free(S);
    free(O);
    return NULL;
}

void eng_attn_dense_head(const float *q, int q_stride, const float *k, const float *v, int kv_stride, int n, int d,
                         float *out, int out_stride, float *lse) {
    if (n <= 0 || d <= 0) return;
    dense_job j = {.q = q, .k = k, .v = v, .qs = q_stride, .kvs = kv_stride, .os = out_stride, .n = n, .d = d,
                   .out = out, .lse = lse, .scale = 1.0f / sqrtf((float)d), .ntiles = (n + BQ - 1) / BQ};
    atomic_init(&j.next, 0);
    /* The tile GEMMs are small: OpenBLAS must not fan each one out over its own threads while
     * ours already use every core. Restored on exit. */
    const int blas_prev = openblas_get_num_threads();
    if (blas_prev != 1) openblas_set_num_threads(1);
    int nt = eng_cpu_threads();
    if (nt > j.ntiles) nt = j.ntiles;
    if (nt > 64) nt = 64;
    pthread_t th[64];
    int started = 0;
    for (int i = 1; i < nt; i++) {
        if (pthread_create(&th[started], NULL, dense_worker, &j) != 0) break;
        started++;
    }
    dense_worker(&j);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    if (blas_prev != 1) openblas_set_num_threads(blas_prev);
}
