/* eng_attn_sparse: CPU sparse attention for one query head (eng_attn.h). Computes exactly the (q, k)
 * entries an eng_head_index names (key blocks with causal + band mask, then gathered columns), with
 * ONE online softmax per query across both, fp32. Per 64-query row block, the named keys form one
 * ascending stream (blocks and columns merged; with a band mask, blocks then columns), cut into
 * equal tiles of at most 256 keys: a tile inside one contiguous run points cblas_sgemm at the K/V
 * rows in place, any other tile (short runs, columns) is gathered into a contiguous copy.
 * S = scale * Q K^T and O += P V run through cblas_sgemm with the online softmax between; masks are
 * applied only to tiles that reach the diagonal or the band. Row blocks are shared by the online
 * CPUs, unless other threads are already running sparse heads (see sp_active). */
#include "eng_attn.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "eng_cpu.h"

#define BQ ENG_BLOCK /* queries per row block */
#define BK 256       /* keys per tile, at most */
#define SROW (BK + 8) /* S row stride: room to pad an exp run to a multiple of 8 lanes */

/* Threads doing sparse row blocks right now, process-wide: callers of eng_attn_sparse_head plus
 * their helpers. The CPU prefill already runs one head per core; a call only starts helpers
 * while cores are free, and helpers leave once the count exceeds the cores, so heads run in
 * parallel by the caller never oversubscribe for more than one row block. */
static atomic_int sp_active;

typedef struct {
    const float *q, *k, *v;
    int qs, kvs, os, n, d, nrb;
    const eng_head_index *ix;
    float *out, *lse;
    float scale;
    atomic_int next;
} sp_job;

/* A run of consecutive keys [start, start + len). */
typedef struct {
    int start, len;
} sp_piece;

/* One tile: nk keys, ascending (a valid index keeps blocks and columns sorted), made of npiece
 * runs; band != 0 applies the index's band mask (block keys only). */
typedef struct {
    int nk, band;
    int key[BK];
    int npiece;
    sp_piece piece[BK];
} sp_tile;

/* Per-thread scratch. S (BQ, SROW) scores then probabilities; O (BQ, d) unnormalised output;
 * kg, vg (BK, d) gathered key / value rows; m, l (BQ) running max and sum; the row block's key
 * stream (cap pieces). */
typedef struct {
    float *S, *O, *kg, *vg;
    float m[BQ], l[BQ];
    sp_piece *stream;
    int cap;
    sp_tile t;
} sp_scratch;

/* x[i] <- exp(x[i] - m) for i < n, returning the sum, through eng_cpu_exp_sum's 8-lane path
 * only: when pad, x[n .. n rounded up to 8) may be overwritten, so the run is padded with
 * -inf, whose lanes give ~1e-38 each (the exp clamps at -87.3): invisible in a row sum >= 1. */
static float exp_run(float *x, int n, float m, int pad) {
    if (n <= 0) return 0.0f;
    int n8 = n;
    if (pad) {
        n8 = (n + 7) & ~7;
        for (int i = n; i < n8; i++) x[i] = -INFINITY;
    }
    return eng_cpu_exp_sum(x, n8, m);
}

/* Keys of t.key[0..nk) (ascending) below x: the first index with key >= x. */
static int keys_below(const int *key, int nk, long long x) {
    int lo = 0, hi = nk;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (key[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Fold the tile into the online softmax of the row block starting at query q0 (rows queries). */
static void tile_run(const sp_job *j, sp_scratch *s, const sp_tile *t, int q0, int rows) {
    const int d = j->d, nk = t->nk;
    const float *kp, *vp;
    int ks;
    if (t->npiece == 1) { /* one contiguous run: BLAS reads K/V in place */
        kp = j->k + (size_t)t->piece[0].start * j->kvs;
        vp = j->v + (size_t)t->piece[0].start * j->kvs;
        ks = j->kvs;
    } else {
        int at = 0;
        for (int p = 0; p < t->npiece; p++)
            for (int i = 0; i < t->piece[p].len; i++, at++) {
                const size_t src = (size_t)(t->piece[p].start + i) * j->kvs;
                memcpy(s->kg + (size_t)at * d, j->k + src, sizeof(float) * (size_t)d);
                memcpy(s->vg + (size_t)at * d, j->v + src, sizeof(float) * (size_t)d);
            }
        kp = s->kg, vp = s->vg, ks = d;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, d, j->scale, j->q + (size_t)q0 * j->qs, j->qs,
                kp, ks, 0.0f, s->S, SROW);
    const int sink = j->ix->sink, window = j->ix->window;
    const int last = q0 + rows - 1;
    /* Masks only where some row drops a key: keys past the first query (causal edge), or band
     * keys (>= sink) at least window behind the last query. */
    const int causal = t->key[nk - 1] > q0;
    const int band =
        t->band && window > 0 && t->key[nk - 1] >= sink && (long long)t->key[0] <= (long long)last - window;
    /* Band: row q keeps key k iff k < sink or k > q - window; keys ascending, so the kept set is
     * [0, a) U [b, c) with a = #keys < sink, b = #keys <= q - window, c = #keys <= q. */
    const int a_sink = band ? keys_below(t->key, nk, sink) : 0;
    int any = 0;
    for (int r = 0; r < rows; r++) {
        float *sr = s->S + (size_t)r * SROW;
        const int qi = q0 + r;
        int c = nk, lo1 = 0, b = 0;
        if (causal) c = keys_below(t->key, nk, (long long)qi + 1);
        if (band) {
            b = keys_below(t->key, nk, (long long)qi - window + 1);
            lo1 = a_sink < c ? a_sink : c; /* first part [0, lo1) */
            if (b < a_sink) b = a_sink;    /* second part [b, c) */
        }
        if (b > c) b = c;
        if (lo1 + (c - b) == 0) { /* nothing kept in this row: contributes no probability */
            memset(sr, 0, sizeof(float) * (size_t)nk);
            continue;
        }
        any = 1;
        float mx = -INFINITY;
        for (int i = 0; i < lo1; i++) mx = sr[i] > mx ? sr[i] : mx;
        for (int i = b; i < c; i++) mx = sr[i] > mx ? sr[i] : mx;
        const float mn = mx > s->m[r] ? mx : s->m[r];
        const float alpha = expf(s->m[r] - mn); /* 0 on the row's first keys (m = -inf) */
        /* padding may overwrite only entries zeroed below: never the second part */
        float sum = exp_run(sr, lo1, mn, lo1 + 7 < b) + exp_run(sr + b, c - b, mn, 1);
        if (b > lo1) memset(sr + lo1, 0, sizeof(float) * (size_t)(b - lo1));
        if (c < nk) memset(sr + c, 0, sizeof(float) * (size_t)(nk - c));
        s->l[r] = s->l[r] * alpha + sum;
        s->m[r] = mn;
        if (alpha != 1.0f) {
            float *o = s->O + (size_t)r * d;
            for (int i = 0; i < d; i++) o[i] *= alpha;
        }
    }
    if (any)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, nk, 1.0f, s->S, SROW, vp, ks, 1.0f, s->O, d);
}

/* Run a stream of ascending pieces as tiles of equal size (at most BK keys, a multiple of 8):
 * 300 keys become two tiles of 152 + 148 rather than 256 + 44. */
static void stream_run(const sp_job *j, sp_scratch *s, int np, int band, int q0, int rows) {
    long long total = 0;
    for (int p = 0; p < np; p++) total += s->stream[p].len;
    if (!total) return;
    const long long ntile = (total + BK - 1) / BK;
    int tsize = (int)((total + ntile - 1) / ntile);
    tsize = (tsize + 7) & ~7;
    if (tsize > BK) tsize = BK;
    sp_tile *t = &s->t;
    t->nk = t->npiece = 0, t->band = band;
    for (int p = 0; p < np; p++) {
        int k0 = s->stream[p].start, len = s->stream[p].len;
        while (len > 0) {
            const int take = tsize - t->nk < len ? tsize - t->nk : len;
            t->piece[t->npiece++] = (sp_piece){k0, take};
            for (int i = 0; i < take; i++) t->key[t->nk++] = k0 + i;
            k0 += take, len -= take;
            if (t->nk == tsize) {
                tile_run(j, s, t, q0, rows);
                t->nk = t->npiece = 0;
            }
        }
    }
    if (t->nk) tile_run(j, s, t, q0, rows);
}

/* Append the run [k0, k0 + len) to the stream, joining it to the previous run when they touch. */
static void stream_push(sp_scratch *s, int *np, int k0, int len) {
    if (len <= 0) return;
    if (*np && s->stream[*np - 1].start + s->stream[*np - 1].len == k0)
        s->stream[*np - 1].len += len;
    else
        s->stream[(*np)++] = (sp_piece){k0, len};
}

static void row_block(const sp_job *j, sp_scratch *s, int rb) {
    const eng_head_index *ix = j->ix;
    const int d = j->d, q0 = rb * BQ;
    const int rows = j->n - q0 < BQ ? j->n - q0 : BQ, last = q0 + rows - 1;
    for (int r = 0; r < rows; r++) s->m[r] = -INFINITY, s->l[r] = 0.0f;
    memset(s->O, 0, sizeof(float) * (size_t)rows * d);
    /* Blocks: keys [off, off + 64) up to the last query (causal) and below n. Columns: single
     * keys, never band-masked (the causal mask still applies). Without a band both merge into
     * one ascending stream, so short runs and columns share tiles. */
    const int *bo = ix->block_offset + (size_t)rb * ix->max_blocks;
    const int *ci = ix->column_index + (size_t)rb * ix->max_cols;
    const int nb = ix->block_count[rb], nc = ix->column_count[rb], merge = ix->window <= 0;
    int np = 0, b = 0, c = 0;
    while (b < nb || (merge && c < nc)) {
        if (merge && c < nc && (b >= nb || ci[c] < bo[b])) {
            if (ci[c] >= 0 && ci[c] < j->n) stream_push(s, &np, ci[c], 1);
            c++;
            continue;
        }
        long long lo = bo[b] < 0 ? 0 : bo[b], hi = (long long)bo[b] + ENG_BLOCK;
        if (hi > last + 1) hi = last + 1;
        if (hi > j->n) hi = j->n;
        if (hi > lo) stream_push(s, &np, (int)lo, (int)(hi - lo));
        b++;
    }
    stream_run(j, s, np, !merge, q0, rows);
    if (!merge) {
        np = 0;
        for (c = 0; c < nc; c++)
            if (ci[c] >= 0 && ci[c] < j->n) stream_push(s, &np, ci[c], 1);
        stream_run(j, s, np, 0, q0, rows);
    }
    for (int r = 0; r < rows; r++) {
        float *o = j->out + (size_t)(q0 + r) * j->os;
        if (s->l[r] > 0) {
            const float inv = 1.0f / s->l[r];
            const float *src = s->O + (size_t)r * d;
            for (int i = 0; i < d; i++) o[i] = src[i] * inv;
            if (j->lse) j->lse[q0 + r] = s->m[r] + logf(s->l[r]);
        } else { /* a row the index leaves empty: nothing attended */
            memset(o, 0, sizeof(float) * (size_t)d);
            if (j->lse) j->lse[q0 + r] = -INFINITY;
        }
    }
}

/* Row blocks from the shared counter, last (heaviest under causal patterns) first. A helper
 * (helper != 0) leaves when more threads do sparse work than there are cores; the caller stays
 * until every row block is taken. A thread without scratch takes none. */
static void sp_work(sp_job *j, int helper) {
    const size_t dp = ((size_t)j->d + 15) & ~(size_t)15;
    sp_scratch *s = malloc(sizeof *s);
    if (!s) return;
    s->cap = j->ix->max_blocks + j->ix->max_cols + 1;
    s->S = aligned_alloc(64, sizeof(float) * BQ * SROW);
    s->O = aligned_alloc(64, sizeof(float) * BQ * dp);
    s->kg = aligned_alloc(64, sizeof(float) * BK * dp);
    s->vg = aligned_alloc(64, sizeof(float) * BK * dp);
    s->stream = malloc(sizeof *s->stream * (size_t)s->cap);
    if (s->S && s->O && s->kg && s->vg && s->stream) {
        const int ncpu = eng_cpu_threads();
        for (;;) {
            if (helper && atomic_load(&sp_active) > ncpu) break;
            int c = atomic_fetch_add(&j->next, 1);
            if (c >= j->nrb) break;
            row_block(j, s, j->nrb - 1 - c);
        }
    }
    free(s->S), free(s->O), free(s->kg), free(s->vg), free(s->stream), free(s);
}

static void *sp_helper(void *arg) {
    sp_work(arg, 1);
    atomic_fetch_sub(&sp_active, 1);
    return NULL;
}

void eng_attn_sparse_head(const float *q, int q_stride, const float *k, const float *v, int kv_stride, int n, int d,
                          const eng_head_index *ix, float *out, int out_stride, float *lse) {
    if (n <= 0 || d <= 0) return;
    sp_job j = {.q = q, .k = k, .v = v, .qs = q_stride, .kvs = kv_stride, .os = out_stride, .n = n, .d = d,
                .ix = ix, .out = out, .lse = lse, .scale = 1.0f / sqrtf((float)d)};
    j.nrb = (n + BQ - 1) / BQ;
    if (j.nrb > ix->n_rb) j.nrb = ix->n_rb;
    atomic_init(&j.next, 0);
    /* The tile GEMMs are small: OpenBLAS must not fan each out over its own threads while ours
     * use the cores. Restored on exit (the CPU prefill already keeps it at 1). */
    const int blas_prev = openblas_get_num_threads();
    if (blas_prev != 1) openblas_set_num_threads(1);
    const int ncpu = eng_cpu_threads();
    const int active = atomic_fetch_add(&sp_active, 1) + 1;
    int helpers = ncpu - active;
    if (helpers > j.nrb / 2) helpers = j.nrb / 2; /* at least two row blocks per thread */
    if (helpers > 63) helpers = 63;
    pthread_t th[63];
    int started = 0;
    for (int i = 0; i < helpers; i++) {
        atomic_fetch_add(&sp_active, 1);
        if (pthread_create(&th[started], NULL, sp_helper, &j) != 0) {
            atomic_fetch_sub(&sp_active, 1);
            break;
        }
        started++;
    }
    sp_work(&j, 0);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    atomic_fetch_sub(&sp_active, 1);
    if (blas_prev != 1) openblas_set_num_threads(blas_prev);
    if (atomic_load(&j.next) < j.nrb) /* row blocks left for want of scratch; no error channel in
                                          this contract: poison so the output cannot pass as data */
        for (int t = 0; t < n; t++) {
            for (int c = 0; c < d; c++) out[(size_t)t * out_stride + c] = NAN;
            if (lse) lse[t] = NAN;
        }
}
