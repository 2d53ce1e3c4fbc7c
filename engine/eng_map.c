/* eng_map: pooled attention maps (see eng_map.h). Work is split into units of consecutive pixel
 * rows (at least 64 query rows each, so every key panel loaded into cache serves many queries);
 * threads take units largest-first. Inside a unit: key chunks of 256 (16 panels of 16 keys,
 * K transposed per panel as [d][16] so the 4 x 16 micro-kernel reads contiguous memory) outer,
 * 4-query micro-blocks inner; each 4 x 256 score block is reduced into the unit's pixel
 * accumulators at once, so no score matrix is ever stored. MAX pooling needs no exp per entry:
 * max over a tile of exp(s - lse) = exp(max(s - lse)). */
#include "eng_map.h"

#include "eng_backend.h"
#include "eng_dma.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#define PANEL 16            /* keys per K panel (two AVX vectors) */
#define CHUNK 256           /* keys per chunk: 16 panels, 128 KiB of K at d = 128 */
#define MR 4                /* query rows per micro-block */
#define RG 64               /* query rows per group sharing one K panel in L1 */
#define UNIT_ROWS 64        /* minimum query rows per work unit */
#define MAX_SIDE 16384

int eng_map_edge(int a, int b, int px, int i) {
    return a + (int)((int64_t)i * (b - a) / px);
}

/* exp(x) for x <= 88 with ~2 ulp error; 0 for x < -87 (incl. -inf). Branch-free so loops over it
 * vectorise; range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor polynomial for e^r. */
static inline float fast_exp(float x) {
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = floorf(xc * 1.44269504f + 0.5f);
    float r = xc - n * 0.693145752f;
    r = r - n * 1.42860677e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } u;
    u.i = ((int32_t)n + 127) << 23;
    float y = p * u.f;
    return x < -87.0f ? 0.0f : y;
}

/* Row helpers over n floats: out = exp(s + bias - shift) (bias may be NULL), out = s + bias,
 * max and sum. AVX2 versions where available (the mean pass spends most of its time here). */
#if defined(__AVX2__) && defined(__FMA__)
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
static void row_exp(const float *s, const float *bias, float shift, float *out, int n) {
    int j = 0;
    __m256 sh = _mm256_set1_ps(shift);
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(s + j);
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
        _mm256_storeu_ps(out + j, exp8(_mm256_sub_ps(v, sh)));
    }
    for (; j < n; j++) out[j] = fast_exp((bias ? s[j] + bias[j] : s[j]) - shift);
}
static float row_max(const float *v, int n) {
    int j = 0;
    float m = -INFINITY;
    if (n >= 8) {
        __m256 a = _mm256_loadu_ps(v);
        for (j = 8; j + 8 <= n; j += 8) a = _mm256_max_ps(a, _mm256_loadu_ps(v + j));
        __m128 b = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        b = _mm_max_ps(b, _mm_movehl_ps(b, b));
        b = _mm_max_ss(b, _mm_movehdup_ps(b));
        m = _mm_cvtss_f32(b);
    }
    for (; j < n; j++) m = v[j] > m ? v[j] : m;
    return m;
}
static float row_sum(const float *v, int n) {
    int j = 0;
    float t = 0.0f;
    if (n >= 8) {
        __m256 a = _mm256_loadu_ps(v);
        for (j = 8; j + 8 <= n; j += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(v + j));
        __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        b = _mm_add_ps(b, _mm_movehl_ps(b, b));
        b = _mm_add_ss(b, _mm_movehdup_ps(b));
        t = _mm_cvtss_f32(b);
    }
    for (; j < n; j++) t += v[j];
    return t;
}
#else
static void row_exp(const float *s, const float *bias, float shift, float *out, int n) {
    for (int j = 0; j < n; j++) out[j] = fast_exp((bias ? s[j] + bias[j] : s[j]) - shift);
}
static float row_max(const float *v, int n) {
    float m = -INFINITY;
    for (int j = 0; j < n; j++) m = v[j] > m ? v[j] : m;
    return m;
}
static float row_sum(const float *v, int n) {
    float t = 0.0f;
    for (int j = 0; j < n; j++) t += v[j];
    return t;
}
#endif

static void row_add(const float *s, const float *bias, float *out, int n) {
    for (int j = 0; j < n; j++) out[j] = s[j] + bias[j];
}

typedef struct {
    /* inputs */
    const float *q, *k, *lse_in;
    int q_stride, k_stride, n, d;
    const eng_head_index *ix;
    const eng_head_mask *mk;  /* per-row mask (DMA, N:M) instead of ix, or NULL */
    eng_map_opts o;
    float scale;
    /* derived */
    int nq, nk, gw, gh;       /* grid: gw = min(w, nk), gh = min(h, nq) */
    int *col_edge;            /* [gw + 1] key edges (absolute) */
    int *row_edge;            /* [gh + 1] query edges (absolute) */
    int *col_of;              /* [nk] grid column of key k0 + i */
    int kt0, kt1;             /* keys held in kp: [kt0, kt1) */
    float *kp;                /* panels: [(kt1 - kt0 + 15) / 16][d][16], zero padded */
    int units, unit_g;        /* units of unit_g grid rows */
    float *grid;              /* [gh][gw] */
    /* scheduling */
    int next;
    pthread_mutex_t mu;
    int failed;
} map_job;

/* s[r*CHUNK + j] = sum_c qb[r][c] * K[j][c] for MR query rows and the 16 keys of one panel
 * ([d][16]). qb is pre-scaled by 1/sqrt(d), so s holds the scaled logits. AVX2+FMA path: 4 rows x 16 keys in 8
 * accumulators (2 loads + 4 broadcasts per 8 FMAs); the portable path is the same loop in C. */
#if defined(__AVX2__) && defined(__FMA__)
static void micro_scores(const float *qb, const float *kpan, int d, float *s) {
    {
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
        __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        const float *q0 = qb, *q1 = qb + d, *q2 = qb + 2 * d, *q3 = qb + 3 * d;
        for (int c = 0; c < d; c++) {
            __m256 k0 = _mm256_load_ps(kpan + (size_t)c * PANEL);
            __m256 k1 = _mm256_load_ps(kpan + (size_t)c * PANEL + 8);
            __m256 b = _mm256_broadcast_ss(q0 + c);
            a00 = _mm256_fmadd_ps(b, k0, a00);
            a01 = _mm256_fmadd_ps(b, k1, a01);
            b = _mm256_broadcast_ss(q1 + c);
            a10 = _mm256_fmadd_ps(b, k0, a10);
            a11 = _mm256_fmadd_ps(b, k1, a11);
            b = _mm256_broadcast_ss(q2 + c);
            a20 = _mm256_fmadd_ps(b, k0, a20);
            a21 = _mm256_fmadd_ps(b, k1, a21);
            b = _mm256_broadcast_ss(q3 + c);
            a30 = _mm256_fmadd_ps(b, k0, a30);
            a31 = _mm256_fmadd_ps(b, k1, a31);
        }
        _mm256_storeu_ps(s, a00);
        _mm256_storeu_ps(s + 8, a01);
        _mm256_storeu_ps(s + CHUNK, a10);
        _mm256_storeu_ps(s + CHUNK + 8, a11);
        _mm256_storeu_ps(s + 2 * CHUNK, a20);
        _mm256_storeu_ps(s + 2 * CHUNK + 8, a21);
        _mm256_storeu_ps(s + 3 * CHUNK, a30);
        _mm256_storeu_ps(s + 3 * CHUNK + 8, a31);
    }
}
#else
static void micro_scores(const float *qb, const float *kpan, int d, float *s) {
    {
        float acc[MR][PANEL];
        memset(acc, 0, sizeof acc);
        for (int c = 0; c < d; c++) {
            const float *kr = kpan + (size_t)c * PANEL;
            for (int r = 0; r < MR; r++) {
                float qv = qb[r * d + c];
                for (int j = 0; j < PANEL; j++) acc[r][j] = fmaf(qv, kr[j], acc[r][j]);
            }
        }
        for (int r = 0; r < MR; r++) memcpy(s + r * CHUNK, acc[r], sizeof acc[r]);
    }
}
#endif

/* bias[j] = 0 where index row block rb computes key ks + j for some query, -inf elsewhere
 * (j < len); blk[j] = 1 where that key comes from a block (band-masked per query, see
 * band_bias), 0 for a column. Columns first, then blocks, so a key in both counts as a block key,
 * as in eng_index_covers (the index contract keeps them disjoint anyway). */
static void build_bias(const eng_head_index *ix, int rb, int ks, int len, float *bias, unsigned char *blk) {
    for (int j = 0; j < len; j++) bias[j] = -INFINITY, blk[j] = 0;
    int nb = ix->block_count[rb], nc = ix->column_count[rb];
    const int *bo = ix->block_offset + (size_t)rb * (size_t)ix->max_blocks;
    const int *ci = ix->column_index + (size_t)rb * (size_t)ix->max_cols;
    for (int i = 0; i < nc; i++)
        if (ci[i] >= ks && ci[i] < ks + len) bias[ci[i] - ks] = 0.0f;
    for (int i = 0; i < nb; i++) {
        int a = bo[i] > ks ? bo[i] : ks, b = bo[i] + ENG_BLOCK < ks + len ? bo[i] + ENG_BLOCK : ks + len;
        for (int kk = a; kk < b; kk++) bias[kk - ks] = 0.0f, blk[kk - ks] = 1;
    }
}

/* Band mask (eng_index.h): query t drops the block keys k with sink <= k <= t - window, i.e.
 * [lo, hi) = [max(sink, ks), min(t - window + 1, ks + len)) within the chunk at ks. Empty when the
 * index has no band (window <= 0) or the cut misses the chunk. */
static void band_cut(const eng_head_index *ix, int t, int ks, int len, int *lo, int *hi) {
    *lo = *hi = 0;
    if (ix->window <= 0) return;
    long long a = ix->sink > ks ? ix->sink : ks, b = (long long)t - ix->window + 1;
    if (b > (long long)ks + len) b = (long long)ks + len;
    if (a < b) *lo = (int)(a - ks), *hi = (int)(b - ks);
}

typedef struct {
    float *qg;       /* [RG][d] scaled queries of the current row group */
    float *S;        /* [RG][CHUNK] scores of the group against one key chunk */
    float *tmp;      /* [CHUNK] */
    float *bias;     /* [CHUNK] row block rb's bias for the chunk (build_bias) */
    unsigned char *blk; /* [CHUNK] block-key flags of that chunk */
    float *bband;    /* [CHUNK] bias of one query row with the band mask applied */
    float *acc;      /* [grid rows of the unit][gw] */
    float *lse;      /* [rows of unit] */
    float *m, *l;    /* online softmax state, [rows of unit] */
    int bias_rb, bias_chunk, band_row; /* what bias / bband hold (-1: nothing) */
    unsigned char *keepg; /* mask path: [RG][n] computed keys of the rows of the current group */
    int keep_g0;          /* first row keepg holds (-1: nothing) */
} worker_buf;

/* Mask path: the computed keys of rows [g0, g0 + RG) (those < n) into keepg, one
 * eng_dma_mask_row per row and group, so a row's mask is made once per pass, not per chunk. */
static void load_keep(const map_job *J, worker_buf *B, int g0) {
    if (!J->mk || B->keep_g0 == g0) return;
    for (int r = 0; r < RG && g0 + r < J->n; r++)
        if (g0 + r >= 0) eng_dma_mask_row(J->mk, g0 + r, B->keepg + (size_t)r * (size_t)J->n);
    B->keep_g0 = g0;
}

/* Scaled query rows [g0, g0 + RG) into qg (rows outside [0, n) are zero). */
static void load_group(const map_job *J, int g0, float *qg) {
    for (int r = 0; r < RG; r++) {
        int t = g0 + r;
        float *dst = qg + (size_t)r * (size_t)J->d;
        if (t < 0 || t >= J->n) {
            memset(dst, 0, sizeof(float) * (size_t)J->d);
            continue;
        }
        const float *src = J->q + (size_t)t * (size_t)J->q_stride;
        for (int c = 0; c < J->d; c++) dst[c] = src[c] * J->scale;
    }
}

/* S rows of group [g0, g0 + RG) (g0 a multiple of MR) against keys [ks, khi) of the chunk at ks:
 * only the panels each micro-block's causal limit reaches. Panel outer, micro-blocks inner, so
 * one 8 KiB K panel stays in L1 while the group's queries stream past it. */
static void group_scores(const map_job *J, worker_buf *B, int g0, int g1, int ks, int khi) {
    int np = (khi - ks + PANEL - 1) / PANEL;
    const float *kp0 = J->kp + (size_t)((ks - J->kt0) / PANEL) * (size_t)J->d * PANEL;
    for (int p = 0; p < np; p++) {
        const float *kpan = kp0 + (size_t)p * (size_t)J->d * PANEL;
        int pk = ks + p * PANEL; /* first key of the panel */
        for (int r0 = g0; r0 < g1; r0 += MR) {
            if (pk > r0 + MR - 1) continue; /* panel entirely right of the diagonal */
            micro_scores(B->qg + (size_t)(r0 - g0) * (size_t)J->d, kpan, J->d,
                         B->S + (size_t)(r0 - g0) * CHUNK + (size_t)p * PANEL);
        }
    }
}

/* The bias of query row `row` over the chunk at ks: row block's bias, band-masked per row when
 * the index has a band that cuts into this chunk for this row. NULL without an index. */
static const float *get_bias(const map_job *J, worker_buf *B, int row, int ks) {
    if (J->mk) { /* per-row mask: keys [ks, row] of the chunk from the group's keep rows */
        const unsigned char *kr = B->keepg + (size_t)(row - B->keep_g0) * (size_t)J->n;
        int len = row + 1 - ks < CHUNK ? row + 1 - ks : CHUNK;
        for (int j = 0; j < CHUNK; j++) B->bband[j] = j < len && kr[ks + j] ? 0.0f : -INFINITY;
        B->band_row = -1;
        return B->bband;
    }
    if (!J->ix) return NULL;
    int rb = row / ENG_BLOCK;
    if (rb != B->bias_rb || ks != B->bias_chunk) {
        build_bias(J->ix, rb, ks, CHUNK, B->bias, B->blk);
        B->bias_rb = rb;
        B->bias_chunk = ks;
        B->band_row = -1;
    }
    int lo, hi;
    band_cut(J->ix, row, ks, CHUNK, &lo, &hi);
    if (lo >= hi) return B->bias;
    if (B->band_row != row) {
        memcpy(B->bband, B->bias, sizeof(float) * CHUNK);
        for (int j = lo; j < hi; j++)
            if (B->blk[j]) B->bband[j] = -INFINITY;
        B->band_row = row;
    }
    return B->bband;
}

/* Pass 1: row LSE over keys [0, t] (index entries only when ix) for rows [ra, rb). */
static void unit_lse(const map_job *J, worker_buf *B, int ra, int rb) {
    for (int i = 0; i < rb - ra; i++) { B->m[i] = -INFINITY; B->l[i] = 0.0f; }
    for (int g0 = ra / MR * MR; g0 < rb; g0 += RG) {
        int g1 = g0 + RG < rb ? g0 + RG : rb;
        g1 = (g1 + MR - 1) / MR * MR;
        load_group(J, g0, B->qg);
        load_keep(J, B, g0);
        for (int ks = J->kt0; ks < g1 && ks < rb; ks += CHUNK) {
            int khi = ks + CHUNK < rb ? ks + CHUNK : rb;
            if (khi > g1) khi = g1;
            group_scores(J, B, g0, g1, ks, khi);
            for (int t = g0 > ra ? g0 : ra; t < g1 && t < rb; t++) {
                if (ks > t) continue;
                int len = t + 1 - ks < CHUNK ? t + 1 - ks : CHUNK;
                const float *v = B->S + (size_t)(t - g0) * CHUNK;
                const float *bias = get_bias(J, B, t, ks);
                if (bias) { row_add(v, bias, B->tmp, len); v = B->tmp; }
                float m = row_max(v, len);
                if (m == -INFINITY) continue;
                float *mi = &B->m[t - ra], *li = &B->l[t - ra];
                if (m > *mi) {
                    *li *= fast_exp(*mi - m);
                    *mi = m;
                }
                row_exp(v, NULL, *mi, B->tmp, len);
                *li += row_sum(B->tmp, len);
            }
        }
    }
    for (int i = 0; i < rb - ra; i++) B->lse[i] = B->l[i] > 0.0f ? B->m[i] + logf(B->l[i]) : INFINITY;
}

/* Pass 2 for the unit of grid rows [ya, yb): pooled values into J->grid. */
static void unit_pool(const map_job *J, worker_buf *B, int ya, int yb) {
    int ra = J->row_edge[ya], rb = J->row_edge[yb], gw = J->gw;
    int max_pool = J->o.pool == ENG_POOL_MAX;
    size_t ncell = (size_t)(yb - ya) * (size_t)gw;
    for (size_t i = 0; i < ncell; i++) B->acc[i] = max_pool ? -INFINITY : 0.0f;
    if (!J->lse_in) unit_lse(J, B, ra, rb);
    for (int g0 = ra / MR * MR; g0 < rb; g0 += RG) {
        int g1 = g0 + RG < rb ? g0 + RG : rb;
        g1 = (g1 + MR - 1) / MR * MR;
        int kend = J->o.k1 < g1 ? J->o.k1 : g1; /* causal: keys < g1 */
        if (kend > rb) kend = rb;
        if (J->o.k0 >= kend) continue;
        load_group(J, g0, B->qg);
        load_keep(J, B, g0);
        for (int ks = J->kt0 + (J->o.k0 - J->kt0) / CHUNK * CHUNK; ks < kend; ks += CHUNK) {
            int khi = ks + CHUNK < kend ? ks + CHUNK : kend;
            int klo = ks > J->o.k0 ? ks : J->o.k0;
            group_scores(J, B, g0, g1, ks, khi);
            int yy = ya;
            for (int t = g0 > ra ? g0 : ra; t < g1 && t < rb; t++) {
                while (J->row_edge[yy + 1] <= t) yy++;
                int ke = t + 1 < khi ? t + 1 : khi;
                if (ke <= klo) continue;
                float lse = J->lse_in ? J->lse_in[t] : B->lse[t - ra];
                const float *bias = get_bias(J, B, t, ks);
                const float *sv = B->S + (size_t)(t - g0) * CHUNK + (klo - ks);
                const float *bi = bias ? bias + (klo - ks) : NULL;
                int len = ke - klo;
                const float *v = sv;
                if (max_pool) {
                    if (bi) { row_add(sv, bi, B->tmp, len); v = B->tmp; }
                } else {
                    row_exp(sv, bi, lse, B->tmp, len);
                    v = B->tmp;
                }
                float *arow = B->acc + (size_t)(yy - ya) * (size_t)gw;
                for (int kk = klo; kk < ke;) {
                    int x = J->col_of[kk - J->o.k0];
                    int se = J->col_edge[x + 1] < ke ? J->col_edge[x + 1] : ke;
                    const float *vs = v + (kk - klo);
                    if (max_pool) {
                        float m = row_max(vs, se - kk) - lse;
                        if (m > arow[x]) arow[x] = m;
                    } else {
                        arow[x] += row_sum(vs, se - kk);
                    }
                    kk = se;
                }
            }
        }
    }
    /* finalize: empty tiles, exp for max, area for mean */
    for (int gy = ya; gy < yb; gy++) {
        int qa = J->row_edge[gy], qb = J->row_edge[gy + 1];
        float *arow = B->acc + (size_t)(gy - ya) * (size_t)gw;
        float *g = J->grid + (size_t)gy * (size_t)gw;
        for (int x = 0; x < gw; x++) {
            int ka = J->col_edge[x], kb = J->col_edge[x + 1];
            if (ka > qb - 1) {
                g[x] = J->o.empty;
            } else if (max_pool) {
                g[x] = arow[x] == -INFINITY ? 0.0f : expf(arow[x]);
            } else {
                g[x] = (float)((double)arow[x] / ((double)(qb - qa) * (double)(kb - ka)));
            }
        }
    }
}

static void *worker(void *arg) {
    map_job *J = arg;
    worker_buf B;
    memset(&B, 0, sizeof B);
    int max_rows = 0, max_grows = 0;
    for (int u = 0; u < J->units; u++) {
        int ya = u * J->unit_g, yb = ya + J->unit_g < J->gh ? ya + J->unit_g : J->gh;
        int rows = J->row_edge[yb] - J->row_edge[ya];
        if (rows > max_rows) max_rows = rows;
        if (yb - ya > max_grows) max_grows = yb - ya;
    }
    B.qg = aligned_alloc(64, sizeof(float) * (size_t)((RG * J->d + 15) / 16 * 16));
    B.S = aligned_alloc(64, sizeof(float) * RG * CHUNK);
    B.tmp = aligned_alloc(64, sizeof(float) * CHUNK);
    B.bias = aligned_alloc(64, sizeof(float) * CHUNK);
    B.blk = malloc(CHUNK);
    B.bband = aligned_alloc(64, sizeof(float) * CHUNK);
    B.acc = malloc(sizeof(float) * (size_t)max_grows * (size_t)J->gw);
    B.lse = malloc(sizeof(float) * (size_t)max_rows);
    B.m = malloc(sizeof(float) * (size_t)max_rows);
    B.l = malloc(sizeof(float) * (size_t)max_rows);
    B.bias_rb = -1;
    B.bias_chunk = -1;
    B.band_row = -1;
    B.keep_g0 = -1;
    if (J->mk) B.keepg = malloc((size_t)RG * (size_t)J->n);
    int ok = B.qg && B.S && B.tmp && B.bias && B.blk && B.bband && B.acc && B.lse && B.m && B.l && (!J->mk || B.keepg);
    for (;;) {
        pthread_mutex_lock(&J->mu);
        if (!ok) J->failed = 1;
        int i = J->failed ? J->units : J->next++;
        pthread_mutex_unlock(&J->mu);
        if (i >= J->units) break;
        int u = J->units - 1 - i; /* later rows see more keys: largest first */
        int ya = u * J->unit_g, yb = ya + J->unit_g < J->gh ? ya + J->unit_g : J->gh;
        unit_pool(J, &B, ya, yb);
    }
    free(B.qg);
    free(B.S);
    free(B.tmp);
    free(B.bias);
    free(B.blk);
    free(B.bband);
    free(B.acc);
    free(B.lse);
    free(B.m);
    free(B.l);
    free(B.keepg);
    return NULL;
}

static int check_opts(const eng_map_opts *o, int n, eng_err *err) {
    if (!o) return eng_err_set(err, "map: no options");
    if (o->q0 < 0 || o->q1 > n || o->q0 >= o->q1)
        return eng_err_set(err, "map: query range [%d, %d) is empty or outside [0, %d)", o->q0, o->q1, n);
    if (o->k0 < 0 || o->k1 > n || o->k0 >= o->k1)
        return eng_err_set(err, "map: key range [%d, %d) is empty or outside [0, %d)", o->k0, o->k1, n);
    if (o->w < 1 || o->h < 1 || o->w > MAX_SIDE || o->h > MAX_SIDE)
        return eng_err_set(err, "map: output size %d x %d outside [1, %d] per side", o->w, o->h, MAX_SIDE);
    if (o->pool != ENG_POOL_MAX && o->pool != ENG_POOL_MEAN) return eng_err_set(err, "map: unknown pooling %d", (int)o->pool);
    return 0;
}

static int check_index(const eng_head_index *ix, int n, eng_err *err) {
    if (!ix) return 0;
    if (ix->n != n || ix->n_rb != (n + ENG_BLOCK - 1) / ENG_BLOCK || !ix->block_count || !ix->column_count)
        return eng_err_set(err, "map: index is for %d tokens (%d row blocks), the map for %d", ix->n, ix->n_rb, n);
    return 0;
}

/* Grid edges and key -> column map shared by both entry points. */
static int grid_setup(map_job *J, eng_err *err) {
    const eng_map_opts *o = &J->o;
    J->nq = o->q1 - o->q0;
    J->nk = o->k1 - o->k0;
    J->gw = o->w < J->nk ? o->w : J->nk;
    J->gh = o->h < J->nq ? o->h : J->nq;
    J->col_edge = malloc(sizeof(int) * (size_t)(J->gw + 1));
    J->row_edge = malloc(sizeof(int) * (size_t)(J->gh + 1));
    J->col_of = malloc(sizeof(int) * (size_t)J->nk);
    J->grid = malloc(sizeof(float) * (size_t)J->gw * (size_t)J->gh);
    if (!J->col_edge || !J->row_edge || !J->col_of || !J->grid) return eng_err_set(err, "map: out of memory");
    for (int i = 0; i <= J->gw; i++) J->col_edge[i] = eng_map_edge(o->k0, o->k1, J->gw, i);
    for (int i = 0; i <= J->gh; i++) J->row_edge[i] = eng_map_edge(o->q0, o->q1, J->gh, i);
    for (int x = 0; x < J->gw; x++)
        for (int kk = J->col_edge[x]; kk < J->col_edge[x + 1]; kk++) J->col_of[kk - o->k0] = x;
    return 0;
}

/* Nearest-neighbour expansion of the grid to w x h (identity unless zoomed in). */
static void grid_expand(const map_job *J, float *out) {
    const eng_map_opts *o = &J->o;
    for (int y = 0; y < o->h; y++) {
        int gy = (int)((int64_t)y * J->gh / o->h);
        for (int x = 0; x < o->w; x++) {
            int gx = (int)((int64_t)x * J->gw / o->w);
            out[(size_t)y * (size_t)o->w + (size_t)x] = J->grid[(size_t)gy * (size_t)J->gw + (size_t)gx];
        }
    }
}

static void job_free(map_job *J) {
    free(J->col_edge);
    free(J->row_edge);
    free(J->col_of);
    free(J->grid);
    free(J->kp);
}

/* eng_map_pool over the pairs of ix (or of the per-row mask mk; at most one of them). */
static int pool_run(const float *q, int q_stride, const float *k, int k_stride, int n, int d, const float *lse,
                    const eng_head_index *ix, const eng_head_mask *mk, const eng_map_opts *opts, float *out,
                    eng_err *err) {
    if (!q || !k || !out) return eng_err_set(err, "map: missing Q, K or output");
    if (n < 1 || d < 1 || q_stride < d || k_stride < d)
        return eng_err_set(err, "map: bad shape n=%d d=%d q_stride=%d k_stride=%d", n, d, q_stride, k_stride);
    if (check_opts(opts, n, err) || check_index(ix, n, err)) return -1;
    if (mk && mk->n != n) return eng_err_set(err, "map: mask is for %d tokens, the map for %d", mk->n, n);
    map_job J;
    memset(&J, 0, sizeof J);
    J.q = q; J.k = k; J.lse_in = lse; J.q_stride = q_stride; J.k_stride = k_stride; J.n = n; J.d = d;
    J.ix = ix;
    J.mk = mk;
    J.o = *opts;
    J.scale = 1.0f / sqrtf((float)d);
    int rc = -1;
    if (grid_setup(&J, err)) goto done;
    /* Keys needed: pass 2 reads [k0, min(k1, q1)); pass 1 (no lse given) reads [0, q1). */
    J.kt0 = lse ? opts->k0 : 0;
    J.kt1 = lse ? (opts->k1 < opts->q1 ? opts->k1 : opts->q1) : opts->q1;
    if (J.kt1 <= J.kt0) J.kt1 = J.kt0 + 1; /* all tiles empty; keep one panel so loops stay simple */
    int npan = (J.kt1 - J.kt0 + PANEL - 1) / PANEL + CHUNK / PANEL;
    J.kp = aligned_alloc(64, sizeof(float) * (size_t)npan * (size_t)d * PANEL);
    if (!J.kp) { eng_err_set(err, "map: out of memory for %d keys of K", J.kt1 - J.kt0); goto done; }
    memset(J.kp, 0, sizeof(float) * (size_t)npan * (size_t)d * PANEL);
    for (int t = J.kt0; t < J.kt1; t++) {
        int j = t - J.kt0;
        float *pan = J.kp + (size_t)(j / PANEL) * (size_t)d * PANEL + j % PANEL;
        const float *src = k + (size_t)t * (size_t)k_stride;
        for (int c = 0; c < d; c++) pan[(size_t)c * PANEL] = src[c];
    }
    int tile_h = J.nq / J.gh;
    J.unit_g = tile_h >= UNIT_ROWS ? 1 : (UNIT_ROWS + tile_h - 1) / tile_h;
    J.units = (J.gh + J.unit_g - 1) / J.unit_g;
    int nt = opts->threads > 0 ? opts->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nt < 1) nt = 1;
    if (nt > 64) nt = 64;
    if (nt > J.units) nt = J.units;
    pthread_mutex_init(&J.mu, NULL);
    pthread_t th[64];
    int started = 0;
    for (int i = 1; i < nt; i++) {
        if (pthread_create(&th[i], NULL, worker, &J) != 0) break;
        started++;
    }
    worker(&J);
    for (int i = 1; i <= started; i++) pthread_join(th[i], NULL);
    pthread_mutex_destroy(&J.mu);
    if (J.failed) { eng_err_set(err, "map: out of memory for worker buffers"); goto done; }
    grid_expand(&J, out);
    rc = 0;
done:
    job_free(&J);
    return rc;
}

int eng_map_pool(const float *q, int q_stride, const float *k, int k_stride, int n, int d, const float *lse,
                 const eng_head_index *ix, const eng_map_opts *opts, float *out, eng_err *err) {
    return pool_run(q, q_stride, k, k_stride, n, d, lse, ix, NULL, opts, out, err);
}

int eng_map_pool_mask(struct eng_backend *be, const float *q, int q_stride, const float *k, int k_stride, int n,
                      int d, const eng_head_mask *m, const eng_map_opts *opts, float *out, eng_err *err) {
    if (!m) return eng_err_set(err, "map: missing mask");
    if (m->kind == ENG_MASK_INDEX) return eng_map_pool_on(be, q, q_stride, k, k_stride, n, d, NULL, &m->ix, opts, out, err);
    return pool_run(q, q_stride, k, k_stride, n, d, NULL, NULL, m, opts, out, err);
}

int eng_map_pool_on(struct eng_backend *be, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                    const float *lse, const eng_head_index *ix, const eng_map_opts *opts, float *out, eng_err *err) {
    if (be && be->map_pool) return be->map_pool(be, q, q_stride, k, k_stride, n, d, lse, ix, opts, out, err);
    return eng_map_pool(q, q_stride, k, k_stride, n, d, lse, ix, opts, out, err);
}

/* Add the overlap of key interval [a, b) with each grid column to cnt[] (a < b, inside [k0, k1)). */
static void add_interval(const map_job *J, int a, int b, double *cnt) {
    int x = J->col_of[a - J->o.k0];
    while (a < b) {
        int e = J->col_edge[x + 1] < b ? J->col_edge[x + 1] : b;
        cnt[x] += e - a;
        a = e;
        x++;
    }
}

int eng_map_index_mask(const eng_head_index *ix, const eng_map_opts *opts, float *out, eng_err *err) {
    if (!ix || !out) return eng_err_set(err, "map mask: missing index or output");
    if (check_opts(opts, ix->n, err) || check_index(ix, ix->n, err)) return -1;
    map_job J;
    memset(&J, 0, sizeof J);
    J.o = *opts;
    J.n = ix->n;
    int rc = -1;
    double *done = NULL, *total = NULL;
    if (grid_setup(&J, err)) goto out;
    done = calloc((size_t)J.gw, sizeof *done);
    total = calloc((size_t)J.gw, sizeof *total);
    if (!done || !total) { eng_err_set(err, "map mask: out of memory"); goto out; }
    int k0 = opts->k0, k1 = opts->k1;
    for (int y = 0; y < J.gh; y++) {
        memset(done, 0, sizeof *done * (size_t)J.gw);
        memset(total, 0, sizeof *total * (size_t)J.gw);
        for (int t = J.row_edge[y]; t < J.row_edge[y + 1]; t++) {
            int kc = k1 < t + 1 ? k1 : t + 1; /* causal keys of row t inside the range: [k0, kc) */
            if (kc <= k0) continue;
            add_interval(&J, k0, kc, total);
            int rb = t / ENG_BLOCK;
            const int *bo = ix->block_offset + (size_t)rb * (size_t)ix->max_blocks;
            const int *ci = ix->column_index + (size_t)rb * (size_t)ix->max_cols;
            /* band (eng_index.h): block keys in [cut_a, cut_b) are dropped for row t */
            long long cut_a = ix->sink, cut_b = ix->window > 0 ? (long long)t - ix->window + 1 : 0;
            for (int i = 0; i < ix->block_count[rb]; i++) {
                int a = bo[i] > k0 ? bo[i] : k0, b = bo[i] + ENG_BLOCK < kc ? bo[i] + ENG_BLOCK : kc;
                if (a >= b) continue;
                if (cut_a >= cut_b || cut_b <= a || cut_a >= b) {
                    add_interval(&J, a, b, done);
                    continue;
                }
                if (cut_a > a) add_interval(&J, a, (int)cut_a, done);
                if (cut_b < b) add_interval(&J, (int)cut_b, b, done);
            }
            for (int i = 0; i < ix->column_count[rb]; i++)
                if (ci[i] >= k0 && ci[i] < kc) done[J.col_of[ci[i] - k0]] += 1.0;
        }
        float *g = J.grid + (size_t)y * (size_t)J.gw;
        for (int x = 0; x < J.gw; x++) g[x] = total[x] > 0 ? (float)(done[x] / total[x]) : opts->empty;
    }
    grid_expand(&J, out);
    rc = 0;
out:
    free(done);
    free(total);
    job_free(&J);
    return rc;
}

int eng_map_mask_cover(const eng_head_mask *m, const eng_map_opts *opts, float *out, eng_err *err) {
    if (!m || !out) return eng_err_set(err, "map mask: missing mask or output");
    if (m->kind == ENG_MASK_INDEX) return eng_map_index_mask(&m->ix, opts, out, err);
    if (check_opts(opts, m->n, err)) return -1;
    map_job J;
    memset(&J, 0, sizeof J);
    J.o = *opts;
    J.n = m->n;
    int rc = -1;
    double *done = NULL, *total = NULL;
    unsigned char *keep = NULL;
    if (grid_setup(&J, err)) goto out;
    done = calloc((size_t)J.gw, sizeof *done);
    total = calloc((size_t)J.gw, sizeof *total);
    keep = malloc((size_t)m->n);
    if (!done || !total || !keep) { eng_err_set(err, "map mask: out of memory"); goto out; }
    int k0 = opts->k0, k1 = opts->k1;
    for (int y = 0; y < J.gh; y++) {
        memset(done, 0, sizeof *done * (size_t)J.gw);
        memset(total, 0, sizeof *total * (size_t)J.gw);
        for (int t = J.row_edge[y]; t < J.row_edge[y + 1]; t++) {
            int kc = k1 < t + 1 ? k1 : t + 1; /* causal keys of row t inside the range: [k0, kc) */
            if (kc <= k0) continue;
            add_interval(&J, k0, kc, total);
            eng_dma_mask_row(m, t, keep);
            for (int kk = k0; kk < kc; kk++)
                if (keep[kk]) done[J.col_of[kk - k0]] += 1.0;
        }
        float *g = J.grid + (size_t)y * (size_t)J.gw;
        for (int x = 0; x < J.gw; x++) g[x] = total[x] > 0 ? (float)(done[x] / total[x]) : opts->empty;
    }
    grid_expand(&J, out);
    rc = 0;
out:
    free(done);
    free(total);
    free(keep);
    job_free(&J);
    return rc;
}
