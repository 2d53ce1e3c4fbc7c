/* eng_pattern: pattern kinds and their named parameters, and the CPU reference index builders
 * (dense, A-shape, vertical-slash, block-sparse) with MInference's semantics (ALGORITHMS.md). */
#include "eng_pattern.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VS_SINKS 30      /* keys 0..29 always vertical */
#define VS_LOCAL 100     /* offsets 0..99 always slash */
#define VS_MIN_V 30
#define VS_MIN_S 50
#define VS_LAST_Q 64

static const char *const kind_names[ENG_PAT__COUNT] = {"dense", "ashape", "vs", "bs", "xattn", "flex", "dma", "nm"};
static const char *const kind_upstream[ENG_PAT__COUNT] = {NULL, "stream_llm", "vertical_and_slash",
                                                          "block_sparse", NULL, NULL, NULL, NULL};
static const char *const kind_labels[ENG_PAT__COUNT] = {
    "dense causal attention",
    "A-shape: sinks + local window (MInference stream_llm)",
    "vertical-slash lines (MInference)",
    "block-sparse top-k 64x64 blocks (MInference)",
    "XAttention: antidiagonal-scored 128x128 blocks, cumulative threshold",
    "FlexPrefill: query-aware blocks or vertical-slash per head, cumulative mass",
    "DMA-style dynamic mask: top-w keys by key score (training-free adaptation)",
    "N:M on attention probabilities (top-n of every m keys per query)",
};

const char *eng_pattern_kind_name(eng_pat_kind k) {
    return (int)k >= 0 && k < ENG_PAT__COUNT ? kind_names[k] : "unknown";
}

const char *eng_pattern_kind_label(eng_pat_kind k) {
    return (int)k >= 0 && k < ENG_PAT__COUNT ? kind_labels[k] : "unknown pattern";
}

int eng_pattern_is_index(eng_pat_kind k) { return (int)k >= 0 && k < ENG_PAT__COUNT && k != ENG_PAT_DMA && k != ENG_PAT_NM; }

int eng_pattern_kind_parse(const char *name, eng_pat_kind *k) {
    if (!name) return -1;
    for (int i = 0; i < ENG_PAT__COUNT; i++)
        if (!strcmp(name, kind_names[i]) || (kind_upstream[i] && !strcmp(name, kind_upstream[i]))) {
            *k = (eng_pat_kind)i;
            return 0;
        }
    if (!strcmp(name, "a_shape") || !strcmp(name, "a-shape") || !strcmp(name, "vertical_slash") ||
        !strcmp(name, "block-sparse")) {
        *k = name[0] == 'a' ? ENG_PAT_ASHAPE : name[0] == 'v' ? ENG_PAT_VS : ENG_PAT_BS;
        return 0;
    }
    static const struct {
        const char *alias;
        eng_pat_kind kind;
    } more[] = {{"xattention", ENG_PAT_XATTN}, {"flexprefill", ENG_PAT_FLEX}, {"dynamic_mask", ENG_PAT_DMA},
                {"n:m", ENG_PAT_NM}};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        if (!strcmp(name, more[i].alias)) {
            *k = more[i].kind;
            return 0;
        }
    return -1;
}

#define P_INT(field) .offset = offsetof(eng_pattern, field), .is_float = 0
#define P_FLT(field) .offset = offsetof(eng_pattern, field), .is_float = 1
/* The reshape option every sparse kind carries (eng_reshape.h); quiet: absent from text at 0. */
#define P_RESHAPE                                                                                    \
    {.name = "reshape", P_INT(reshape), .lo = 0, .hi = 1, .def = 0, .quiet = 1,                      \
     .help = "1: add dropped 64-key blocks' estimated mass and values (Re-ttention-style adaptation)"}
static const eng_pat_param params_ashape[] = {
    {.name = "n_init", P_INT(n_init), .lo = 0, .hi = 1 << 30, .def = 1024, .budget = 1, .budget_min = 1,
     .help = "sink tokens every query sees (keys 0..n_init-1)"},
    {.name = "n_local", P_INT(n_local), .lo = 1, .hi = 1 << 30, .def = 4096, .budget = 1, .budget_min = 1,
     .help = "local window: keys with 0 <= q - k < n_local"},
    P_RESHAPE,
};
static const eng_pat_param params_vs[] = {
    {.name = "vertical", P_INT(vertical), .lo = 0, .hi = 1 << 30, .def = 1000, .budget = 1, .budget_min = VS_MIN_V,
     .help = "vertical lines (key columns); built with max(v, 30), <= N"},
    {.name = "slash", P_INT(slash), .lo = 0, .hi = 1 << 30, .def = 6096, .budget = 1, .budget_min = VS_MIN_S,
     .help = "slash lines (diagonal offsets); built with max(s, 50), <= N"},
    P_RESHAPE,
};
static const eng_pat_param params_bs[] = {
    {.name = "topk", P_INT(topk), .lo = 1, .hi = 1 << 30, .def = 100, .budget = 1, .budget_min = 1,
     .help = "64x64 key blocks per 64-query row block, diagonal included"},
    P_RESHAPE,
};
static const eng_pat_param params_xattn[] = {
    {.name = "stride", P_INT(stride), .lo = 1, .hi = 128, .def = 8,
     .help = "antidiagonal stride S (divides 128; upstream 8 or 16)"},
    {.name = "threshold", P_FLT(threshold), .lo = 0, .hi = 1, .def = 0.9,
     .help = "cumulative share of block score kept per 128-query block (tau, 0.8-0.9)"},
    P_RESHAPE,
};
static const eng_pat_param params_flex[] = {
    {.name = "gamma", P_FLT(gamma), .lo = 0, .hi = 1, .def = 0.9,
     .help = "estimated attention mass the kept lines / blocks must cover"},
    {.name = "tau", P_FLT(tau), .lo = 0, .hi = 1, .def = 0.1,
     .help = "JS-distance threshold: below it the head uses query-aware blocks, else vertical-slash"},
    {.name = "min_budget", P_INT(min_budget), .lo = 0, .hi = 1 << 30, .def = 512, .budget = 1, .budget_min = 1,
     .help = "minimum tokens: vertical and slash lines each, or blocks x 128 per query block"},
    P_RESHAPE,
};
static const eng_pat_param params_dma[] = {
    {.name = "keep", P_INT(keep), .lo = 1, .hi = 1 << 30, .def = 2048, .budget = 1, .budget_min = 1,
     .help = "top-w keys per query by key score among keys <= query (dense when N <= w)"},
    {.name = "n_init", P_INT(n_init), .lo = 0, .hi = 1 << 30, .def = 64, .budget = 1, .budget_min = 1,
     .help = "sink keys 0..n_init-1 always kept"},
    {.name = "n_local", P_INT(n_local), .lo = 1, .hi = 1 << 30, .def = 256, .budget = 1, .budget_min = 1,
     .help = "local window: keys with q - k < n_local always kept"},
    {.name = "key_score", P_INT(key_score), .lo = 0, .hi = 1, .def = 0,
     .help = "key score: 0 = value norm ||v_j||, 1 = VS vertical score (last 64 queries)"},
    P_RESHAPE,
};
static const eng_pat_param params_nm[] = {
    {.name = "n", P_INT(nm_n), .lo = 1, .hi = 64, .def = 2, .help = "probabilities kept per group (largest first)"},
    {.name = "m", P_INT(nm_m), .lo = 1, .hi = 64, .def = 4, .help = "group size: keys [m*g, m*g+m)"},
    P_RESHAPE,
};

const eng_pat_param *eng_pattern_params(eng_pat_kind k, int *n) {
#define TAB(t) (*n = (int)(sizeof t / sizeof t[0]), t)
    switch (k) {
    case ENG_PAT_ASHAPE: return TAB(params_ashape);
    case ENG_PAT_VS: return TAB(params_vs);
    case ENG_PAT_BS: return TAB(params_bs);
    case ENG_PAT_XATTN: return TAB(params_xattn);
    case ENG_PAT_FLEX: return TAB(params_flex);
    case ENG_PAT_DMA: return TAB(params_dma);
    case ENG_PAT_NM: return TAB(params_nm);
    default: *n = 0; return NULL;
    }
#undef TAB
}

double eng_pattern_param_get(const eng_pattern *p, const eng_pat_param *par) {
    const char *base = (const char *)p + par->offset;
    if (par->is_float) {
        float f;
        memcpy(&f, base, sizeof f);
        return f;
    }
    int i;
    memcpy(&i, base, sizeof i);
    return i;
}

void eng_pattern_param_set(eng_pattern *p, const eng_pat_param *par, double v) {
    char *base = (char *)p + par->offset;
    if (par->is_float) {
        float f = (float)v;
        memcpy(base, &f, sizeof f);
    } else {
        int i = (int)llround(v);
        memcpy(base, &i, sizeof i);
    }
}

eng_pattern eng_pattern_make(eng_pat_kind k) {
    eng_pattern p;
    memset(&p, 0, sizeof p);
    p.kind = k;
    int np;
    const eng_pat_param *par = eng_pattern_params(k, &np);
    for (int i = 0; i < np; i++) eng_pattern_param_set(&p, &par[i], par[i].def);
    return p;
}

int eng_pattern_validate(const eng_pattern *p, eng_err *err) {
    if ((int)p->kind < 0 || p->kind >= ENG_PAT__COUNT) return eng_err_set(err, "unknown pattern kind %d", (int)p->kind);
    int np;
    const eng_pat_param *par = eng_pattern_params(p->kind, &np);
    for (int i = 0; i < np; i++) {
        double v = eng_pattern_param_get(p, &par[i]);
        if (!(v >= par[i].lo && v <= par[i].hi))
            return eng_err_set(err, "pattern %s: %s = %g outside [%g, %g]", kind_names[p->kind], par[i].name, v,
                               par[i].lo, par[i].hi);
    }
    if (p->kind == ENG_PAT_NM && p->nm_n > p->nm_m)
        return eng_err_set(err, "pattern nm: n = %d must not exceed m = %d", p->nm_n, p->nm_m);
    if (p->kind == ENG_PAT_XATTN && 128 % p->stride)
        return eng_err_set(err, "pattern xattn: stride = %d must divide the 128-token block (1, 2, 4, 8, 16, ...)",
                           p->stride);
    return 0;
}

int eng_pattern_describe(const eng_pattern *p, char *buf, int cap) {
    int np, w = snprintf(buf, (size_t)cap, "%s", eng_pattern_kind_name(p->kind)), shown = 0;
    const eng_pat_param *par = eng_pattern_params(p->kind, &np);
    for (int i = 0; i < np && w >= 0 && w < cap; i++) {
        double v = eng_pattern_param_get(p, &par[i]);
        if (par[i].quiet && v == par[i].def) continue;
        w += snprintf(buf + w, (size_t)(cap - w), "%s%s=%g", shown++ ? "," : "(", par[i].name, v);
    }
    if (shown && w >= 0 && w < cap) w += snprintf(buf + w, (size_t)(cap - w), ")");
    return w;
}

const eng_pattern *eng_pattern_cfg_get(const eng_pattern_cfg *cfg, int layer, int head) {
    if (!cfg) return NULL;
    if (cfg->heads && layer >= 0 && layer < cfg->n_layers && head >= 0 && head < cfg->n_heads)
        return &cfg->heads[(size_t)layer * cfg->n_heads + head];
    return &cfg->def;
}

/* ---- index builders ---------------------------------------------------------------------- */

static int last_query(int rb, int n) { return (rb * ENG_BLOCK + ENG_BLOCK < n ? rb * ENG_BLOCK + ENG_BLOCK : n) - 1; }

static int build_dense(int n, eng_head_index *ix, eng_err *err) {
    int n_rb = (n + ENG_BLOCK - 1) / ENG_BLOCK;
    if (eng_index_alloc(ix, n, n_rb, 0, err)) return -1;
    for (int rb = 0; rb < n_rb; rb++) {
        int *bo = ix->block_offset + (size_t)rb * ix->max_blocks;
        for (int b = 0; b <= rb; b++) bo[b] = b * ENG_BLOCK;
        ix->block_count[rb] = rb + 1;
    }
    return 0;
}

/* A-shape: per-query exact through the index band mask. Blocks cover the sink range [0, n_init)
 * and the union of the row block's windows [m0 - n_local + 1, last]; merged when they touch. */
static int build_ashape(const eng_pattern *p, int n, eng_head_index *ix, eng_err *err) {
    int n_rb = (n + ENG_BLOCK - 1) / ENG_BLOCK;
    long long cap = ((long long)p->n_init + ENG_BLOCK - 1) / ENG_BLOCK + ((long long)p->n_local + ENG_BLOCK - 1) / ENG_BLOCK + 2;
    if (cap > n_rb) cap = n_rb;
    if (eng_index_alloc(ix, n, (int)cap, 0, err)) return -1;
    ix->sink = p->n_init;
    ix->window = p->n_local;
    for (int rb = 0; rb < n_rb; rb++) {
        int m0 = rb * ENG_BLOCK, last = last_query(rb, n);
        long long ls = (long long)m0 - p->n_local + 1;
        if (ls < 0) ls = 0;
        long long se = p->n_init < last + 1 ? p->n_init : last + 1;            /* sink keys [0, se) */
        long long se_blocks = (se + ENG_BLOCK - 1) / ENG_BLOCK * ENG_BLOCK;   /* as 64-wide blocks */
        int *bo = ix->block_offset + (size_t)rb * ix->max_blocks, nb = 0;
        if (se_blocks >= ls) {
            for (long long o = 0; o <= last; o += ENG_BLOCK) bo[nb++] = (int)o;
        } else {
            for (long long o = 0; o < se; o += ENG_BLOCK) bo[nb++] = (int)o;
            for (long long o = ls; o <= last; o += ENG_BLOCK) bo[nb++] = (int)o;
        }
        ix->block_count[rb] = nb;
    }
    return 0;
}

/* Sort keys: score descending, then index ascending (the deterministic tie rule). */
typedef struct {
    double s;
    int i;
} scored;

static int cmp_scored(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->s > y->s) return -1;
    if (x->s < y->s) return 1;
    return (x->i > y->i) - (x->i < y->i);
}
static int cmp_int_asc(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}
static int cmp_int_desc(const void *a, const void *b) { return cmp_int_asc(b, a); }

/* The sort order of cmp_scored as a predicate: x ranks before y. */
static inline int ranks_before(scored x, scored y) { return x.s > y.s || (x.s == y.s && x.i < y.i); }

/* Partial selection (quickselect, O(n) on average): reorders t[0..n) so that t[0..k) holds the k
 * entries that come first in cmp_scored's order, in no particular order. The order is total
 * (indices are distinct), so this is exactly the set a full sort's first k entries would be. */
static void select_top(scored *t, int n, int k) {
    if (k <= 0 || k >= n) return;
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        scored x;
#define SWAP_(a, b) (x = t[a], t[a] = t[b], t[b] = x)
        if (ranks_before(t[mid], t[lo])) SWAP_(lo, mid);
        if (ranks_before(t[hi], t[lo])) SWAP_(lo, hi);
        if (ranks_before(t[hi], t[mid])) SWAP_(mid, hi);
        const scored pv = t[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (ranks_before(t[i], pv)) i++;
            while (ranks_before(pv, t[j])) j--;
            if (i <= j) {
                SWAP_(i, j);
                i++, j--;
            }
        }
#undef SWAP_
        if (k - 1 <= j) hi = j;      /* the boundary lies in the front part */
        else if (k - 1 >= i) lo = i; /* ... or in the back part */
        else break;                  /* between: t[j+1..i) equal the pivot, the split is done */
    }
}

/* Indices of the k largest of s[0..n) (ties: lower index), ascending (desc = 0) or descending
 * (desc = 1) into out; t and mark (n entries each) are scratch. O(n) apart from the selection. */
static void top_k(const double *s, int n, int k, int desc, scored *t, unsigned char *mark, int *out) {
    for (int i = 0; i < n; i++) t[i] = (scored){s[i], i};
    select_top(t, n, k);
    memset(mark, 0, (size_t)n);
    for (int i = 0; i < k; i++) mark[t[i].i] = 1;
    int c = 0;
    if (desc) {
        for (int i = n - 1; i >= 0; i--)
            if (mark[i]) out[c++] = i;
    } else {
        for (int i = 0; i < n; i++)
            if (mark[i]) out[c++] = i;
    }
}

/* MInference's convert_vertical_slash_indexes for one row block [m0, m0 + 64) (upstream uses
 * end_m = m0 + 64 even for a partial last block). v: k_v keys ascending; s: k_s offsets
 * descending. Writes blocks/columns when bo/ci are non-NULL; returns counts. Blocks that start
 * after the row block's last query compute nothing and are dropped (the only departure). */
static void vs_convert_row(int m0, int last, const int *v, int nv, const int *s, int ns, int *bo, int *nb_out,
                           int *ci, int *nc_out) {
    const int B = ENG_BLOCK;
    int end_m = m0 + B, nb = 0, nc = 0;
    int iv = 0, is = 0;
    int v_idx = iv < nv ? v[iv++] : end_m + B;
    /* Skip the offsets >= end_m (they reach no key of this row block): binary search over the
     * descending s for the first one below end_m, where upstream steps one at a time. */
    int s_idx = -1;
    if (ns > 0) {
        int lo = 0, hi = ns;
        while (lo < hi) {
            int mid = lo + (hi - lo) / 2;
            if (s[mid] >= end_m) lo = mid + 1;
            else hi = mid;
        }
        if (lo < ns) s_idx = s[lo], is = lo + 1;
        else s_idx = s[ns - 1], is = ns;
    }
    s_idx = s_idx >= end_m ? end_m + B : (end_m - s_idx > B ? end_m - s_idx : B);
    int range_start = s_idx - B, range_end = s_idx;
#define SAVE_RANGE()                                                            \
    for (int o_ = range_start; o_ < range_end && o_ <= last; o_ += B) {         \
        if (bo) bo[nb] = o_;                                                    \
        nb++;                                                                   \
    }
    for (;;) {
        if (v_idx < range_end) {
            if (v_idx < range_start) {
                if (ci) ci[nc] = v_idx;
                nc++;
            }
            v_idx = iv < nv ? v[iv++] : end_m + B;
        } else {
            if (is < ns) {
                int e = end_m - s[is++];
                s_idx = e > B ? e : B;
            } else {
                SAVE_RANGE();
                break;
            }
            if (s_idx > range_end + B) {
                SAVE_RANGE();
                range_start = s_idx - B;
                range_end = s_idx;
            } else if (s_idx > range_end) {
                range_end += B;
            }
        }
    }
#undef SAVE_RANGE
    *nb_out = nb;
    *nc_out = nc;
}

/* Below log(2^-150) expf is +0 (glibc's own cut-off, taken through a slow underflow path that
 * sets errno); peaked heads send most estimate logits there, so the call is skipped: same values. */
#define VS_EXPF_ZERO (-0x1.9fe368p6f)
#define VS_KT 64 /* keys per transposed tile of the estimate */
#define VS_QG 64 /* queries per pass over K: all 64 in one pass (logit buffer 64 x n floats) */

/* out[jj] = (sum_c q[c] * kt[c][jj]) * scale for jj < nk: per key the same fp32 operations, in
 * the same order, as the scalar loop `acc = 0; for c: acc += q[c] * k[c]`, 64 keys at a time. */
static void vs_dot_tile(const float *restrict q, const float *restrict kt, int d, float scale, int nk,
                        float *restrict out) {
    float acc[VS_KT];
    for (int jj = 0; jj < VS_KT; jj++) acc[jj] = 0.0f;
    for (int c = 0; c < d; c++) {
        const float qc = q[c];
        const float *kc = kt + (size_t)c * VS_KT;
        for (int jj = 0; jj < VS_KT; jj++) acc[jj] += qc * kc[jj];
    }
    for (int jj = 0; jj < nk; jj++) out[jj] = acc[jj] * scale;
}

/* max of x[0..n) (n >= 1) in 8 lanes; a maximum does not depend on the order (the sign of a zero
 * maximum may, which exp(x - max) cannot see). */
static float row_max(const float *x, int n) {
    float m8[8];
    for (int l = 0; l < 8; l++) m8[l] = -INFINITY;
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) m8[l] = x[j + l] > m8[l] ? x[j + l] : m8[l];
    float mx = -INFINITY;
    for (int l = 0; l < 8; l++) mx = m8[l] > mx ? m8[l] : mx;
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

int eng_pattern_vs_lines(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n,
                         int d, int *vert, int *n_vert, int *slash, int *n_slash, eng_err *err) {
    if (!q || !k) return eng_err_set(err, "vs: needs Q and K");
    if (n <= 0 || d <= 0) return eng_err_set(err, "vs: bad shape (n %d, d %d)", n, d);
    int kv = p->vertical > VS_MIN_V ? p->vertical : VS_MIN_V;
    int ks = p->slash > VS_MIN_S ? p->slash : VS_MIN_S;
    if (kv > n) kv = n;
    if (ks > n) ks = n;
    int last_q = n < VS_LAST_Q ? n : VS_LAST_Q, rc = -1;
    const int rows_max = last_q < VS_QG ? last_q : VS_QG;
    double *vs = calloc((size_t)n, sizeof *vs), *ss = calloc((size_t)n, sizeof *ss);
    float *a = malloc((size_t)rows_max * n * sizeof *a); /* (rows, n) logits of a query group */
    float *kt = malloc((size_t)d * VS_KT * sizeof *kt);   /* (d, 64) transposed key tile */
    scored *t = malloc((size_t)n * sizeof *t);
    unsigned char *mark = malloc((size_t)n);
    if (!vs || !ss || !a || !kt || !t || !mark) {
        eng_err_set(err, "vs: out of memory (n = %d)", n);
        goto done;
    }
    /* 1. A = softmax(Q[-64:] K^T * scale), causal inside the trailing square; fp32 like upstream.
     * Each logit is the same sequential fp32 sum over c as a plain dot product (bit-exact); the
     * SIMD lanes run over 64 keys of a transposed K tile, for groups of VS_QG queries. */
    const float scale = 1.0f / sqrtf((float)d);
    for (int g0 = 0; g0 < last_q; g0 += VS_QG) {
        const int rows = last_q - g0 < VS_QG ? last_q - g0 : VS_QG;
        const int qlast = n - last_q + g0 + rows - 1; /* keys [0, qlast] reach some row */
        for (int j0 = 0; j0 <= qlast; j0 += VS_KT) {
            const int nk = qlast + 1 - j0 < VS_KT ? qlast + 1 - j0 : VS_KT;
            for (int jj = 0; jj < nk; jj++) {
                const float *kr = k + (size_t)(j0 + jj) * k_stride;
                for (int c = 0; c < d; c++) kt[(size_t)c * VS_KT + jj] = kr[c];
            }
            for (int c = 0; c < d && nk < VS_KT; c++) /* a short last tile: zero lanes, never stored */
                memset(kt + (size_t)c * VS_KT + nk, 0, sizeof *kt * (VS_KT - nk));
            for (int r = 0; r < rows; r++)
                vs_dot_tile(q + (size_t)(n - last_q + g0 + r) * q_stride, kt, d, scale, nk, a + (size_t)r * n + j0);
        }
        for (int r = 0; r < rows; r++) {
            const int qi = n - last_q + g0 + r;
            float *ar = a + (size_t)r * n;
            const float mx = row_max(ar, qi + 1);
            float sum = 0;
            for (int j = 0; j <= qi; j++) {
                const float x = ar[j] - mx;
                ar[j] = x < VS_EXPF_ZERO ? 0.0f : expf(x);
                sum += ar[j];
            }
            float inv = 1.0f / sum;
            /* 2./3. column sums and diagonal sums (offset o = qi - j), rows in query order */
            for (int j = 0; j <= qi; j++) {
                float w = ar[j] * inv;
                vs[j] += w;
                ss[qi - j] += w;
            }
        }
    }
    for (int j = 0; j < VS_SINKS && j < n; j++) vs[j] = INFINITY;
    for (int o = 0; o < VS_LOCAL && o < n; o++) ss[o] = INFINITY;
    top_k(vs, n, kv, 0, t, mark, vert);
    top_k(ss, n, ks, 1, t, mark, slash);
    *n_vert = kv;
    *n_slash = ks;
    rc = 0;
done:
    free(vs);
    free(ss);
    free(a);
    free(kt);
    free(t);
    free(mark);
    return rc;
}

int eng_pattern_vs_index(const int *vert, int n_vert, const int *slash, int n_slash, int n, eng_head_index *ix,
                         eng_err *err) {
    memset(ix, 0, sizeof *ix);
    if (n <= 0) return eng_err_set(err, "vs index: token count %d must be positive", n);
    for (int i = 0; i < n_vert; i++)
        if (vert[i] < 0 || vert[i] >= n || (i && vert[i] <= vert[i - 1]))
            return eng_err_set(err, "vs index: vertical %d (key %d) out of range or not strictly ascending", i, vert[i]);
    for (int i = 0; i < n_slash; i++)
        if (slash[i] < 0 || slash[i] >= n || (i && slash[i] >= slash[i - 1]))
            return eng_err_set(err, "vs index: slash %d (offset %d) out of range or not strictly descending", i,
                               slash[i]);
    /* Lines -> index; the first pass sizes it exactly (upstream reserves k_s x k_v per row). */
    int n_rb = (n + ENG_BLOCK - 1) / ENG_BLOCK, max_b = 0, max_c = 0;
    int *cnt = malloc((size_t)n_rb * 2 * sizeof *cnt);
    if (!cnt) return eng_err_set(err, "vs index: out of memory (n = %d)", n);
    for (int rb = 0; rb < n_rb; rb++) {
        int *c = cnt + 2 * rb;
        vs_convert_row(rb * ENG_BLOCK, last_query(rb, n), vert, n_vert, slash, n_slash, NULL, &c[0], NULL, &c[1]);
        if (c[0] > max_b) max_b = c[0];
        if (c[1] > max_c) max_c = c[1];
    }
    free(cnt);
    if (eng_index_alloc(ix, n, max_b, max_c, err)) return -1;
    for (int rb = 0; rb < n_rb; rb++)
        vs_convert_row(rb * ENG_BLOCK, last_query(rb, n), vert, n_vert, slash, n_slash,
                       ix->block_offset + (size_t)rb * max_b, &ix->block_count[rb],
                       ix->column_index + (size_t)rb * max_c, &ix->column_count[rb]);
    return 0;
}

static int build_vs(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                    eng_head_index *ix, eng_err *err) {
    int *vert = malloc((size_t)n * sizeof *vert), *slash = malloc((size_t)n * sizeof *slash), nv = 0, ns = 0, rc = -1;
    if (!vert || !slash)
        eng_err_set(err, "vs: out of memory (n = %d)", n);
    else if (!eng_pattern_vs_lines(p, q, q_stride, k, k_stride, n, d, vert, &nv, slash, &ns, err))
        rc = eng_pattern_vs_index(vert, nv, slash, ns, n, ix, err);
    free(vert);
    free(slash);
    return rc;
}

/* Block-sparse: mean-pool Q and K over 64-token blocks (a partial last block is averaged over its
 * real tokens: this only rescales scores that are never ranked against each other); per row block
 * keep the diagonal and the topk-1 best earlier blocks by q_pool . k_pool (ties: later block). */
static int build_bs(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                    eng_head_index *ix, eng_err *err) {
    if (!q || !k) return eng_err_set(err, "bs: needs Q and K");
    int n_rb = (n + ENG_BLOCK - 1) / ENG_BLOCK;
    int kk = p->topk < n_rb ? p->topk : n_rb;
    if (kk < 1) return eng_err_set(err, "bs: topk %d must be >= 1", p->topk);
    float *qp = calloc((size_t)n_rb * d, sizeof *qp), *kp = calloc((size_t)n_rb * d, sizeof *kp);
    float *kpt = malloc((size_t)n_rb * d * sizeof *kpt); /* (d, n_rb): kp transposed */
    double *sc = malloc((size_t)n_rb * sizeof *sc);
    scored *t = malloc((size_t)n_rb * sizeof *t);
    unsigned char *mark = malloc((size_t)n_rb);
    int rc = -1;
    if (!qp || !kp || !kpt || !sc || !t || !mark) {
        eng_err_set(err, "bs: out of memory (n = %d)", n);
        goto done;
    }
    for (int b = 0; b < n_rb; b++) {
        int t0 = b * ENG_BLOCK, t1 = last_query(b, n) + 1;
        float *qo = qp + (size_t)b * d, *ko = kp + (size_t)b * d;
        for (int t_ = t0; t_ < t1; t_++)
            for (int c = 0; c < d; c++) {
                qo[c] += q[(size_t)t_ * q_stride + c];
                ko[c] += k[(size_t)t_ * k_stride + c];
            }
        for (int c = 0; c < d; c++) {
            qo[c] /= (float)(t1 - t0);
            ko[c] /= (float)(t1 - t0);
            kpt[(size_t)c * n_rb + b] = ko[c];
        }
    }
    if (eng_index_alloc(ix, n, kk, 0, err)) goto done;
    for (int rb = 0; rb < n_rb; rb++) {
        int *bo = ix->block_offset + (size_t)rb * kk, nb = 0;
        const float *qo = qp + (size_t)rb * d;
        /* sc[kb] = sum_c (double)qo[c] * ko[c], each the same sequential double sum as a plain
         * dot product, with the SIMD lanes over kb. */
        for (int kb = 0; kb < rb; kb++) sc[kb] = 0;
        for (int c = 0; c < d; c++) {
            const double qc = qo[c];
            const float *kc = kpt + (size_t)c * n_rb;
            for (int kb = 0; kb < rb; kb++) sc[kb] += qc * kc[kb];
        }
        for (int kb = 0; kb < rb; kb++) t[kb] = (scored){sc[kb], -kb}; /* index -kb: ties go to the later block */
        int keep = rb < kk - 1 ? rb : kk - 1;
        select_top(t, rb, keep);
        memset(mark, 0, (size_t)rb);
        for (int i = 0; i < keep; i++) mark[-t[i].i] = 1;
        for (int kb = 0; kb < rb; kb++)
            if (mark[kb]) bo[nb++] = kb * ENG_BLOCK;
        bo[nb++] = rb * ENG_BLOCK;
        ix->block_count[rb] = nb;
    }
    rc = 0;
done:
    free(qp);
    free(kp);
    free(kpt);
    free(sc);
    free(t);
    free(mark);
    return rc;
}

/* ---- XAttention and FlexPrefill: 128x128 block selections as a standard index -------------- */

#define XB 128           /* XAttention / FlexPrefill block */
#define FLEX_LAST_Q 128  /* FlexPrefill estimates from the last 128 queries */

/* Index from a per-128-block keep table keep[I * nb + J] (J <= I): each kept 128-key block is two
 * 64-key blocks; blocks starting after the row block's last query are dropped (causal no-ops). */
static int index_from_blocks128(const unsigned char *keep, int nb, int n, eng_head_index *ix, eng_err *err) {
    int n_rb = (n + ENG_BLOCK - 1) / ENG_BLOCK;
    if (eng_index_alloc(ix, n, 2 * nb, 0, err)) return -1;
    for (int rb = 0; rb < n_rb; rb++) {
        int I = rb * ENG_BLOCK / XB, last = last_query(rb, n), nbk = 0;
        int *bo = ix->block_offset + (size_t)rb * ix->max_blocks;
        for (int J = 0; J <= I; J++) {
            if (!keep[(size_t)I * nb + J]) continue;
            for (int o = J * XB; o < J * XB + XB && o <= last; o += ENG_BLOCK) bo[nbk++] = o;
        }
        ix->block_count[rb] = nbk;
    }
    return 0;
}

int eng_pattern_xattn_scores(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n,
                             int d, double *s, eng_err *err) {
    if (!q || !k) return eng_err_set(err, "xattn: needs Q and K");
    if (p->stride < 1 || XB % p->stride) return eng_err_set(err, "xattn: stride %d must divide %d", p->stride, XB);
    const int S = p->stride, nb = (n + XB - 1) / XB, na = n / S; /* complete stride groups */
    memset(s, 0, sizeof *s * (size_t)nb * nb);
    /* Strided logit of group pair (a, b): the mean over the S entries of the antidiagonal of the
     * S x S sub-block, (1/S) sum_r q[aS+S-1-r] . k[bS+r] / sqrt(d); softmax over b <= a per a. */
    const double scale = 1.0 / sqrt((double)d) / S;
    double *lg = malloc(sizeof *lg * (size_t)(na > 0 ? na : 1));
    if (!lg) return eng_err_set(err, "xattn: out of memory (n = %d)", n);
    for (int a = 0; a < na; a++) {
        double mx = -INFINITY;
        for (int b = 0; b <= a; b++) {
            double acc = 0;
            for (int r = 0; r < S; r++) {
                const float *qr = q + (size_t)(a * S + S - 1 - r) * q_stride, *kr = k + (size_t)(b * S + r) * k_stride;
                for (int c = 0; c < d; c++) acc += (double)qr[c] * kr[c];
            }
            lg[b] = acc * scale;
            if (lg[b] > mx) mx = lg[b];
        }
        double sum = 0;
        for (int b = 0; b <= a; b++) sum += (lg[b] = exp(lg[b] - mx));
        double *row = s + (size_t)(a * S / XB) * nb;
        for (int b = 0; b <= a; b++) row[b * S / XB] += lg[b] / sum;
    }
    free(lg);
    for (int I = 0; I < nb; I++) {
        double t = 0;
        for (int J = 0; J <= I; J++) t += s[(size_t)I * nb + J];
        if (t > 0)
            for (int J = 0; J <= I; J++) s[(size_t)I * nb + J] /= t;
    }
    return 0;
}

/* Per query block: keep the diagonal and the first block, then the best remaining blocks (ties:
 * the later block) until the kept share reaches threshold. An all-zero row keeps everything. */
static int build_xattn(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                       eng_head_index *ix, eng_err *err) {
    const int nb = (n + XB - 1) / XB;
    double *s = malloc(sizeof *s * (size_t)nb * nb);
    unsigned char *keep = calloc((size_t)nb * nb, 1);
    scored *t = malloc(sizeof *t * (size_t)nb);
    int rc = -1;
    if (!s || !keep || !t) {
        eng_err_set(err, "xattn: out of memory (n = %d)", n);
        goto done;
    }
    if (eng_pattern_xattn_scores(p, q, q_stride, k, k_stride, n, d, s, err)) goto done;
    for (int I = 0; I < nb; I++) {
        const double *row = s + (size_t)I * nb;
        unsigned char *kr = keep + (size_t)I * nb;
        double tot = 0;
        for (int J = 0; J <= I; J++) tot += row[J];
        if (tot <= 0) {
            memset(kr, 1, (size_t)I + 1);
            continue;
        }
        kr[I] = kr[0] = 1;
        double cum = row[I] + (I ? row[0] : 0);
        int m = 0;
        for (int J = 1; J < I; J++) t[m++] = (scored){row[J], -J};
        qsort(t, (size_t)m, sizeof *t, cmp_scored);
        for (int i = 0; i < m && cum < p->threshold * tot; i++) {
            kr[-t[i].i] = 1;
            cum += t[i].s;
        }
    }
    rc = index_from_blocks128(keep, nb, n, ix, err);
done:
    free(s);
    free(keep);
    free(t);
    return rc;
}

/* Fewest entries of v[0..m) (largest first, ties: lower index) whose sum reaches frac of the total. */
static int cover_count(const double *v, int m, double frac, scored *t) {
    double tot = 0;
    for (int i = 0; i < m; i++) tot += v[i], t[i] = (scored){v[i], i};
    qsort(t, (size_t)m, sizeof *t, cmp_scored);
    double cum = 0;
    int c = 0;
    while (c < m && cum < frac * tot) cum += t[c++].s;
    return c;
}

static int flex_too_short(const eng_pattern *p, int n) {
    long long lim = ((long long)p->min_budget + XB - 1) / XB * XB;
    if (lim < 2 * XB) lim = 2 * XB;
    return n <= lim;
}

/* The last-128-query estimate: A rows softmax(q_i K^T / sqrt(d)) over keys <= i, as vertical
 * (column mean) and slash (diagonal-offset mean) distributions over [0, n). */
static int flex_estimate(const float *q, int q_stride, const float *k, int k_stride, int n, int d, double *vert,
                         double *slash, eng_err *err) {
    const int lq = n < FLEX_LAST_Q ? n : FLEX_LAST_Q;
    const double scale = 1.0 / sqrt((double)d);
    double *row = malloc(sizeof *row * (size_t)n);
    if (!row) return eng_err_set(err, "flex: out of memory (n = %d)", n);
    memset(vert, 0, sizeof *vert * (size_t)n);
    memset(slash, 0, sizeof *slash * (size_t)n);
    for (int i = n - lq; i < n; i++) {
        const float *qi = q + (size_t)i * q_stride;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j <= i; j++) {
            const float *kj = k + (size_t)j * k_stride;
            double a = 0;
            for (int c = 0; c < d; c++) a += (double)qi[c] * kj[c];
            row[j] = a * scale;
            if (row[j] > mx) mx = row[j];
        }
        for (int j = 0; j <= i; j++) sum += (row[j] = exp(row[j] - mx));
        for (int j = 0; j <= i; j++) {
            vert[j] += row[j] / sum / lq;
            slash[i - j] += row[j] / sum / lq;
        }
    }
    free(row);
    return 0;
}

/* Mean-pool rows [b*XB, min(b*XB+XB, n)) of x into out[d]. */
static void pool128(const float *x, int stride, int n, int d, int b, double *out) {
    int t0 = b * XB, t1 = t0 + XB < n ? t0 + XB : n;
    for (int c = 0; c < d; c++) out[c] = 0;
    for (int t = t0; t < t1; t++)
        for (int c = 0; c < d; c++) out[c] += x[(size_t)t * stride + c];
    for (int c = 0; c < d; c++) out[c] /= (t1 - t0);
}

static double kl_term(double a, double m) { return a > 0 ? a * log(a / m) : 0; }

/* JS distance and the pooled estimates it compares; vert is flex_estimate's vertical score. */
static int flex_js(const float *q, int q_stride, const float *k, int k_stride, int n, int d, const double *vert,
                   double *js, eng_err *err) {
    const int nb = (n + XB - 1) / XB, lq = n < FLEX_LAST_Q ? n : FLEX_LAST_Q;
    double *qm = calloc((size_t)d, sizeof *qm), *kb = malloc(sizeof *kb * (size_t)d);
    double *est = malloc(sizeof *est * (size_t)nb), *pool = calloc((size_t)nb, sizeof *pool);
    if (!qm || !kb || !est || !pool) {
        free(qm), free(kb), free(est), free(pool);
        return eng_err_set(err, "flex: out of memory (n = %d)", n);
    }
    for (int i = n - lq; i < n; i++)
        for (int c = 0; c < d; c++) qm[c] += q[(size_t)i * q_stride + c] / lq;
    double mx = -INFINITY, sum = 0;
    for (int J = 0; J < nb; J++) {
        pool128(k, k_stride, n, d, J, kb);
        double a = 0;
        for (int c = 0; c < d; c++) a += qm[c] * kb[c];
        est[J] = a / sqrt((double)d);
        if (est[J] > mx) mx = est[J];
    }
    for (int J = 0; J < nb; J++) sum += (est[J] = exp(est[J] - mx));
    for (int j = 0; j < n; j++) pool[j / XB] += vert[j];
    double jsd = 0;
    for (int J = 0; J < nb; J++) {
        double a = est[J] / sum, b = pool[J], m = 0.5 * (a + b);
        if (m > 0) jsd += 0.5 * kl_term(a, m) + 0.5 * kl_term(b, m);
    }
    *js = sqrt(jsd > 0 ? jsd : 0);
    free(qm), free(kb), free(est), free(pool);
    return 0;
}

int eng_pattern_flex_decide(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n,
                            int d, double *js, int *query_aware, int *dense, eng_err *err) {
    *js = NAN;
    *query_aware = 0;
    *dense = flex_too_short(p, n);
    if (*dense) return 0;
    if (!q || !k) return eng_err_set(err, "flex: needs Q and K");
    double *vert = malloc(sizeof *vert * (size_t)n), *slash = malloc(sizeof *slash * (size_t)n);
    int rc = -1;
    if (!vert || !slash)
        eng_err_set(err, "flex: out of memory (n = %d)", n);
    else if (!flex_estimate(q, q_stride, k, k_stride, n, d, vert, slash, err) &&
             !flex_js(q, q_stride, k, k_stride, n, d, vert, js, err)) {
        *query_aware = *js < p->tau;
        rc = 0;
    }
    free(vert);
    free(slash);
    return rc;
}

/* Query-aware head: per query block, softmax over causal key blocks of pool(Q_I) . pool(K_J) /
 * sqrt(d); the fewest blocks covering gamma, at least ceil(min_budget / 128), plus the diagonal. */
static int flex_blocks(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                       eng_head_index *ix, eng_err *err) {
    const int nb = (n + XB - 1) / XB;
    int minb = (int)(((long long)p->min_budget + XB - 1) / XB);
    double *qp = malloc(sizeof *qp * (size_t)nb * d), *kp = malloc(sizeof *kp * (size_t)nb * d);
    double *sc = malloc(sizeof *sc * (size_t)nb);
    scored *t = malloc(sizeof *t * (size_t)nb);
    unsigned char *keep = calloc((size_t)nb * nb, 1);
    int rc = -1;
    if (!qp || !kp || !sc || !t || !keep) {
        eng_err_set(err, "flex: out of memory (n = %d)", n);
        goto done;
    }
    for (int b = 0; b < nb; b++) {
        pool128(q, q_stride, n, d, b, qp + (size_t)b * d);
        pool128(k, k_stride, n, d, b, kp + (size_t)b * d);
    }
    for (int I = 0; I < nb; I++) {
        double mx = -INFINITY;
        for (int J = 0; J <= I; J++) {
            double a = 0;
            for (int c = 0; c < d; c++) a += qp[(size_t)I * d + c] * kp[(size_t)J * d + c];
            sc[J] = a / sqrt((double)d);
            if (sc[J] > mx) mx = sc[J];
        }
        for (int J = 0; J <= I; J++) sc[J] = exp(sc[J] - mx);
        int c = cover_count(sc, I + 1, p->gamma, t);
        if (c < minb) c = minb < I + 1 ? minb : I + 1;
        unsigned char *kr = keep + (size_t)I * nb;
        for (int i = 0; i < c; i++) kr[t[i].i] = 1;
        kr[I] = 1;
    }
    rc = index_from_blocks128(keep, nb, n, ix, err);
done:
    free(qp), free(kp), free(sc), free(t), free(keep);
    return rc;
}

/* The c best of v[0..n) (ties: lower index) with entry 0 forced in, into out ascending (desc = 0)
 * or descending (desc = 1); c = the fewest covering gamma, at least minl, in [1, n]. */
static int flex_lines(const double *v, int n, double gamma, int minl, int desc, scored *t, int *out) {
    int c = cover_count(v, n, gamma, t);
    if (c < minl) c = minl;
    if (c < 1) c = 1;
    if (c > n) c = n;
    int at = 0;
    while (t[at].i != 0) at++;
    for (; at > 0; at--) t[at] = t[at - 1]; /* entry 0 first, the rest keep their order */
    t[0].i = 0;
    for (int i = 0; i < c; i++) out[i] = t[i].i;
    qsort(out, (size_t)c, sizeof *out, desc ? cmp_int_desc : cmp_int_asc);
    return c;
}

/* Vertical-slash head: the fewest key columns / diagonal offsets covering gamma of the estimate,
 * each at least min_budget (<= n); key 0 and offset 0 forced; MInference's merge into the index. */
static int flex_vs(const eng_pattern *p, const double *vert, const double *slash, int n, eng_head_index *ix,
                   eng_err *err) {
    scored *t = malloc(sizeof *t * (size_t)n);
    int *vl = malloc(sizeof *vl * (size_t)n), *sl = malloc(sizeof *sl * (size_t)n), rc = -1;
    if (!t || !vl || !sl) {
        eng_err_set(err, "flex: out of memory (n = %d)", n);
    } else {
        int nv = flex_lines(vert, n, p->gamma, p->min_budget, 0, t, vl);
        int ns = flex_lines(slash, n, p->gamma, p->min_budget, 1, t, sl);
        rc = eng_pattern_vs_index(vl, nv, sl, ns, n, ix, err);
    }
    free(t), free(vl), free(sl);
    return rc;
}

static int build_flex(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                      eng_head_index *ix, eng_err *err) {
    if (flex_too_short(p, n)) return build_dense(n, ix, err);
    if (!q || !k) return eng_err_set(err, "flex: needs Q and K");
    double *vert = malloc(sizeof *vert * (size_t)n), *slash = malloc(sizeof *slash * (size_t)n), js = 0;
    int rc = -1;
    if (!vert || !slash)
        eng_err_set(err, "flex: out of memory (n = %d)", n);
    else if (!flex_estimate(q, q_stride, k, k_stride, n, d, vert, slash, err) &&
             !flex_js(q, q_stride, k, k_stride, n, d, vert, &js, err))
        rc = js < p->tau ? flex_blocks(p, q, q_stride, k, k_stride, n, d, ix, err) : flex_vs(p, vert, slash, n, ix, err);
    free(vert);
    free(slash);
    return rc;
}

int eng_pattern_build(const eng_pattern *p, const float *q, int q_stride, const float *k, int k_stride, int n,
                      int d, eng_head_index *ix, eng_err *err) {
    memset(ix, 0, sizeof *ix);
    if (!p) return eng_err_set(err, "pattern build: no pattern");
    if (n <= 0) return eng_err_set(err, "pattern build: token count %d must be positive", n);
    if (d <= 0) return eng_err_set(err, "pattern build: head dim %d must be positive", d);
    if (eng_pattern_validate(p, err)) return -1;
    switch (p->kind) {
    case ENG_PAT_DENSE: return build_dense(n, ix, err);
    case ENG_PAT_ASHAPE: return build_ashape(p, n, ix, err);
    case ENG_PAT_VS: return build_vs(p, q, q_stride, k, k_stride, n, d, ix, err);
    case ENG_PAT_BS: return build_bs(p, q, q_stride, k, k_stride, n, d, ix, err);
    case ENG_PAT_XATTN: return build_xattn(p, q, q_stride, k, k_stride, n, d, ix, err);
    case ENG_PAT_FLEX: return build_flex(p, q, q_stride, k, k_stride, n, d, ix, err);
    case ENG_PAT_DMA:
    case ENG_PAT_NM:
        return eng_err_set(err, "pattern build: %s keeps a per-row key set that no block index expresses "
                                "(run it through eng_dma_attend / eng_dma_mask_build)", kind_names[p->kind]);
    default: return eng_err_set(err, "pattern build: unknown kind %d", (int)p->kind);
    }
}
