/* gpu_xflex: the GPU XAttention / FlexPrefill index builders (kernels/krn_xflex.cu) against the CPU
 * reference (eng_pattern_build, eng_pattern_xattn_scores, eng_pattern_flex_decide), and the GPU
 * sparse kernel through the GPU-built index against eng_attn_sparse_head on the same index.
 * XAttention: block scores within 1e-3 of the CPU (fp32 GEMM sums); every row block whose choice has a margin above
 * 4x the observed score error (kept share vs tau, last kept vs first dropped) equal to the CPU's,
 * such rows >= 90% of all; structured inputs (graded hot key blocks; all key blocks equal: exact
 * ties, the later block wins). FlexPrefill: JS distance within 1e-9 and the same decision, indexes
 * equal on >= 99% of row blocks (the GPU differs only by exp/log ulps and summation order), exactly
 * on the exact-tie input. Both: all heads at once == head by head; fresh random bf16 inputs, odd N,
 * N < 128, GQA 1/2/4, d 64 and 128. Skips without a GPU. */
#include "gpu_util.h"

#include <time.h>

#include "eng_attn.h"
#include "eng_index.h"
#include "eng_pattern.h"
#include "krn_attn.h"
#include "krn_index.h"
#include "krn_xflex.h"

enum { IN_RANDOM, IN_HOT, IN_PERIOD128 };

typedef struct {
    int n, H, Hkv, d;
    float *q, *k, *v; /* host copies of the bf16 values, (n, H*d) / (n, Hkv*d) */
    void *dq, *dk, *dv, *dout;
    float *dlse;
} prob;

/* XAttention "hot" key blocks: every third block, strength distinct per block (logit gaps >= 1.2). */
static float hot_alpha(int J) { return J % 3 == 1 ? 0.15f * (float)(1 + (J * 5) % 11) : 0.f; }

/* IN_RANDOM: q uniform +-2, k +-1. IN_HOT: q = u + noise, k = alpha_J u + small noise (u random
 * signs). IN_PERIOD128: random, then every key row t copies row t % 128 (all 128-blocks equal). */
static void prob_init(prob *p, int n, int H, int Hkv, int d, int mode, uint64_t seed) {
    p->n = n, p->H = H, p->Hkv = Hkv, p->d = d;
    const size_t nq = (size_t)n * H * d, nk = (size_t)n * Hkv * d;
    p->q = malloc(nq * 4), p->k = malloc(nk * 4), p->v = malloc(nk * 4);
    uint16_t *b = malloc((nq > nk ? nq : nk) * 2);
    float *u = malloc((size_t)d * 4);
    assert_non_null(p->q), assert_non_null(p->k), assert_non_null(p->v), assert_non_null(b), assert_non_null(u);
    for (int c = 0; c < d; c++) u[c] = tu_rand_u64(&seed) & 1 ? 1.f : -1.f;
    for (int t = 0; t < n; t++)
        for (int c = 0; c < H * d; c++)
            p->q[(size_t)t * H * d + c] = mode == IN_HOT ? 0.3f * tu_randf(&seed) + u[c % d] : 2.f * tu_randf(&seed);
    for (int t = 0; t < n; t++)
        for (int c = 0; c < Hkv * d; c++) {
            float x = tu_randf(&seed);
            if (mode == IN_HOT) x = 0.1f * x + hot_alpha(t / 128) * u[c % d];
            if (mode == IN_PERIOD128 && t >= 128) x = p->k[(size_t)(t % 128) * Hkv * d + c];
            p->k[(size_t)t * Hkv * d + c] = x;
        }
    for (size_t i = 0; i < nk; i++) p->v[i] = tu_randf(&seed);
    float *arrs[3] = {p->q, p->k, p->v};
    void **dst[3] = {&p->dq, &p->dk, &p->dv};
    for (int a = 0; a < 3; a++) {
        const size_t cnt = a ? nk : nq;
        for (size_t i = 0; i < cnt; i++) b[i] = eng_f32_to_bf16(arrs[a][i]), arrs[a][i] = eng_bf16_to_f32(b[i]);
        CK(cudaMalloc(dst[a], cnt * 2));
        CK(cudaMemcpy(*dst[a], b, cnt * 2, cudaMemcpyHostToDevice));
    }
    CK(cudaMalloc(&p->dout, nq * 2));
    CK(cudaMalloc((void **)&p->dlse, (size_t)H * n * 4));
    free(b), free(u);
}

static void prob_free(prob *p) {
    free(p->q), free(p->k), free(p->v);
    cudaFree(p->dq), cudaFree(p->dk), cudaFree(p->dv), cudaFree(p->dout), cudaFree(p->dlse);
}

static krn_attn_args prob_args(const prob *p) {
    krn_attn_args a = {p->n, p->H, p->Hkv, p->d, p->dq, p->dk, p->dv, p->H * p->d, p->Hkv * p->d,
                       p->dout, p->H * p->d, p->dlse};
    return a;
}

/* Device index -> H host indexes (validated). */
static void download(const krn_index_dev *dx, int H, eng_head_index *out) {
    const size_t rows = (size_t)H * dx->n_rb;
    int *bc = malloc(rows * 4), *cc = malloc(rows * 4), *band = malloc((size_t)H * 8);
    int *bo = malloc(rows * (dx->max_blocks ? dx->max_blocks : 1) * 4);
    int *ci = malloc(rows * (dx->max_cols ? dx->max_cols : 1) * 4);
    assert_non_null(bc), assert_non_null(cc), assert_non_null(band), assert_non_null(bo), assert_non_null(ci);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(bc, dx->block_count, rows * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(cc, dx->column_count, rows * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(band, dx->band, (size_t)H * 8, cudaMemcpyDeviceToHost));
    if (dx->max_blocks) CK(cudaMemcpy(bo, dx->block_offset, rows * dx->max_blocks * 4, cudaMemcpyDeviceToHost));
    if (dx->max_cols) CK(cudaMemcpy(ci, dx->column_index, rows * dx->max_cols * 4, cudaMemcpyDeviceToHost));
    for (int h = 0; h < H; h++) {
        eng_err err;
        eng_head_index *x = &out[h];
        if (eng_index_alloc(x, dx->n, dx->max_blocks, dx->max_cols, &err)) fail_msg("%s", err.msg);
        x->sink = band[2 * h], x->window = band[2 * h + 1];
        for (int rb = 0; rb < dx->n_rb; rb++) {
            const size_t r = (size_t)h * dx->n_rb + rb;
            x->block_count[rb] = bc[r], x->column_count[rb] = cc[r];
            if (bc[r]) memcpy(x->block_offset + (size_t)rb * x->max_blocks, bo + r * dx->max_blocks, bc[r] * 4u);
            if (cc[r]) memcpy(x->column_index + (size_t)rb * x->max_cols, ci + r * dx->max_cols, cc[r] * 4u);
        }
        if (eng_index_validate(x, &err)) fail_msg("GPU index head %d invalid: %s", h, err.msg);
    }
    free(bc), free(cc), free(band), free(bo), free(ci);
}

static int row_equal(const eng_head_index *a, const eng_head_index *b, int rb) {
    if (a->block_count[rb] != b->block_count[rb] || a->column_count[rb] != b->column_count[rb]) return 0;
    for (int i = 0; i < a->block_count[rb]; i++)
        if (a->block_offset[(size_t)rb * a->max_blocks + i] != b->block_offset[(size_t)rb * b->max_blocks + i]) return 0;
    for (int i = 0; i < a->column_count[rb]; i++)
        if (a->column_index[(size_t)rb * a->max_cols + i] != b->column_index[(size_t)rb * b->max_cols + i]) return 0;
    return 1;
}

/* The GPU index of all H heads, built in one call (by_head = 0) or one call per head; the device
 * index is returned in *dx (caller frees) and downloaded into out[H]. */
static void build_gpu(const eng_pattern *pat, const prob *p, int by_head, krn_index_dev *dx, eng_head_index *out) {
    eng_err err = {{0}};
    krn_xflex_ws *ws = NULL;
    if (krn_xflex_ws_create(&ws, &err)) fail_msg("%s", err.msg);
    int mb, mc;
    krn_index_capacity(pat, p->n, &mb, &mc);
    if (krn_index_dev_alloc(dx, p->H, p->n, mb, mc, &err)) fail_msg("%s", err.msg);
    krn_attn_args a = prob_args(p);
    for (int h = 0; h < (by_head ? p->H : 1); h++)
        if (krn_xflex_build(pat, &a, by_head ? h : 0, by_head ? 1 : p->H, dx, ws, 0, &err))
            fail_msg("krn_xflex_build: %s", err.msg);
    download(dx, p->H, out);
    krn_xflex_ws_free(ws);
}

/* GPU sparse kernel on the device index dx vs eng_attn_sparse_head on its host copy hx. */
static void check_attn(prob *p, const krn_index_dev *dx, const eng_head_index *hx, const char *what) {
    eng_err err = {{0}};
    const int n = p->n, H = p->H, d = p->d, g = H / p->Hkv;
    const size_t nq = (size_t)n * H * d;
    CK(cudaMemset(p->dout, 0xFF, nq * 2));
    CK(cudaMemset(p->dlse, 0xFF, (size_t)H * n * 4));
    krn_attn_args a = prob_args(p);
    if (krn_attn_sparse(&a, dx, 0, &err)) fail_msg("krn_attn_sparse: %s", err.msg);
    float *ref = malloc(nq * 4), *rl = malloc((size_t)H * n * 4), *o = malloc(nq * 4), *l = malloc((size_t)H * n * 4);
    uint16_t *ob = malloc(nq * 2);
    assert_non_null(ref), assert_non_null(rl), assert_non_null(o), assert_non_null(l), assert_non_null(ob);
    for (int h = 0; h < H; h++)
        eng_attn_sparse_head(p->q + h * d, H * d, p->k + (h / g) * d, p->v + (h / g) * d, p->Hkv * d, n, d, &hx[h],
                             ref + h * d, H * d, rl + (size_t)h * n);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(ob, p->dout, nq * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(l, p->dlse, (size_t)H * n * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < nq; i++) {
        o[i] = eng_bf16_to_f32(ob[i]);
        if (!isfinite(o[i])) fail_msg("%s: out[%zu] not written", what, i);
    }
    double lerr = 0;
    for (size_t i = 0; i < (size_t)H * n; i++) {
        if (!isfinite(l[i])) fail_msg("%s: lse[%zu] not written", what, i);
        const double e = fabs((double)l[i] - rl[i]);
        lerr = e > lerr ? e : lerr;
    }
    const double rel = tu_rel_l2(o, ref, nq);
    printf("    attention through the GPU index: rel-L2 %.2e, lse max err %.2e\n", rel, lerr);
    if (!(rel < 1e-2)) fail_msg("%s: attention rel-L2 %.3e", what, rel);
    if (!(lerr < 2e-3)) fail_msg("%s: lse err %.3e", what, lerr);
    free(ref), free(rl), free(o), free(l), free(ob);
}

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

/* 1 when XAttention's choice for query block I (CPU scores s, nb x nb) cannot change under score
 * errors below eps: the kept share is farther than the accumulated error from threshold * total
 * on both sides of the stop, and the last kept and first dropped candidates are more than 2 eps
 * apart or exactly tied (ties are broken by index on both sides). */
static int xattn_clear(const double *s, int nb, int I, double thr, double eps, scored *t) {
    const double *row = s + (size_t)I * nb;
    double tot = 0;
    for (int J = 0; J <= I; J++) tot += row[J];
    if (tot <= 0) return 1;
    int m = 0;
    for (int J = 1; J < I; J++) t[m++] = (scored){row[J], -J};
    qsort(t, (size_t)m, sizeof *t, cmp_scored);
    const double target = thr * tot;
    double cum = row[I] + (I ? row[0] : 0), prev = cum;
    int c = 0;
    while (c < m && cum < target) prev = cum, cum += t[c++].s;
    const double delta = eps * (c + 3);
    if (fabs(cum - target) <= delta || (c > 0 && fabs(prev - target) <= delta)) return 0;
    if (c > 0 && c < m && t[c - 1].s != t[c].s && t[c - 1].s - t[c].s <= 2 * eps) return 0;
    return 1;
}

/* One XAttention case: scores, index (all heads and head by head), attention. Adds the row blocks
 * with a clear choice and all row blocks to *clear / *total. */
static void xattn_case(int n, int H, int Hkv, int d, int S, float thr, int mode, uint64_t seed, int *clear,
                       int *total) {
    prob p;
    prob_init(&p, n, H, Hkv, d, mode, seed);
    eng_pattern pat = eng_pattern_make(ENG_PAT_XATTN);
    pat.stride = S, pat.threshold = thr;
    eng_err err = {{0}};
    krn_index_dev dx, dx1;
    eng_head_index *gpu = calloc((size_t)H, sizeof *gpu), *gpu1 = calloc((size_t)H, sizeof *gpu1);
    assert_non_null(gpu), assert_non_null(gpu1);
    build_gpu(&pat, &p, 0, &dx, gpu);
    build_gpu(&pat, &p, 1, &dx1, gpu1);
    const int nb = (n + 127) / 128, g = H / Hkv;
    double *sc = malloc(sizeof(double) * nb * nb), *sg = malloc(sizeof(double) * nb * nb);
    scored *t = malloc(sizeof(scored) * (nb + 1));
    assert_non_null(sc), assert_non_null(sg), assert_non_null(t);
    krn_xflex_ws *ws = NULL;
    if (krn_xflex_ws_create(&ws, &err)) fail_msg("%s", err.msg);
    krn_attn_args a = prob_args(&p);
    int same = 0, n_clear = 0, rows = 0;
    double worst = 0;
    for (int h = 0; h < H; h++) {
        eng_head_index cpu;
        const float *qh = p.q + h * d, *kh = p.k + (h / g) * d;
        if (eng_pattern_build(&pat, qh, H * d, kh, Hkv * d, n, d, &cpu, &err)) fail_msg("eng_pattern_build: %s", err.msg);
        if (eng_pattern_xattn_scores(&pat, qh, H * d, kh, Hkv * d, n, d, sc, &err)) fail_msg("%s", err.msg);
        if (krn_xflex_xattn_scores(&pat, &a, h, sg, ws, 0, &err)) fail_msg("krn_xflex_xattn_scores: %s", err.msg);
        double md = 0;
        for (int i = 0; i < nb * nb; i++) {
            const double e = fabs(sc[i] - sg[i]);
            if (!(e <= md)) md = e; /* NaN propagates into md */
        }
        if (!(md < 1e-3)) fail_msg("xattn n=%d head %d: block scores differ from the CPU by %.3e", n, h, md);
        worst = md > worst ? md : worst;
        for (int rb = 0; rb < cpu.n_rb; rb++) {
            const int ok = row_equal(&gpu[h], &cpu, rb), cl = xattn_clear(sc, nb, rb / 2, thr, 4 * md + 1e-15, t);
            if (!row_equal(&gpu[h], &gpu1[h], rb)) fail_msg("xattn n=%d head %d rb %d: head-by-head build differs", n, h, rb);
            if (cl && !ok)
                fail_msg("xattn n=%d S=%d head %d row block %d: differs from the CPU although its choice is clear", n, S,
                         h, rb);
            same += ok, n_clear += cl, rows++;
        }
        eng_index_free(&cpu);
    }
    printf("  xattn(stride=%d,threshold=%.2f) %s n=%d H=%d Hkv=%d d=%d: scores max|diff| %.1e, rows equal %d/%d, "
           "clear %d\n",
           S, thr, mode == IN_HOT ? "hot blocks" : mode == IN_PERIOD128 ? "equal blocks" : "random", n, H, Hkv, d, worst,
           same, rows, n_clear);
    char what[96];
    snprintf(what, sizeof what, "xattn n=%d S=%d", n, S);
    check_attn(&p, &dx, gpu, what);
    *clear += n_clear, *total += rows;
    for (int h = 0; h < H; h++) eng_index_free(&gpu[h]), eng_index_free(&gpu1[h]);
    free(gpu), free(gpu1), free(sc), free(sg), free(t);
    krn_index_dev_free(&dx), krn_index_dev_free(&dx1);
    krn_xflex_ws_free(ws);
    prob_free(&p);
}

static void test_xattn_vs_cpu(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    uint64_t seed = 0x6a09e667f3bcc908ULL ^ (uint64_t)time(NULL);
    static const struct {
        int n, H, Hkv, d, S;
        float thr;
        int mode;
    } cs[] = {
        {1, 2, 1, 64, 8, 0.9f, IN_RANDOM},     {37, 4, 2, 128, 8, 0.9f, IN_RANDOM},  {127, 4, 4, 64, 16, 0.9f, IN_RANDOM},
        {200, 4, 1, 64, 8, 0.5f, IN_RANDOM},   {777, 4, 2, 128, 16, 0.9f, IN_RANDOM}, {1029, 2, 1, 64, 1, 0.8f, IN_RANDOM},
        {2111, 4, 1, 128, 8, 0.9f, IN_RANDOM}, {2111, 4, 2, 64, 4, 0.7f, IN_RANDOM},  {3001, 4, 4, 64, 8, 0.9f, IN_HOT},
        {3001, 4, 1, 128, 16, 0.8f, IN_HOT},   {2560, 4, 2, 64, 8, 0.6f, IN_PERIOD128},
        {1920, 2, 1, 128, 16, 0.9f, IN_PERIOD128},
    };
    int clear_all = 0, total_all = 0;
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        int cl = 0, tot = 0;
        xattn_case(cs[i].n, cs[i].H, cs[i].Hkv, cs[i].d, cs[i].S, cs[i].thr, cs[i].mode, seed += 0x9e3779b9ULL, &cl,
                   &tot);
        if (cs[i].mode != IN_RANDOM && cl < tot * 9 / 10)
            fail_msg("structured xattn case %zu: only %d of %d row blocks have a clear choice", i, cl, tot);
        clear_all += cl, total_all += tot;
    }
    printf("  xattn: %d of %d row blocks had a clear choice (all of those equal to the CPU)\n", clear_all, total_all);
    assert_true(clear_all >= total_all * 9 / 10);
}

/* One FlexPrefill case: decision, index (all heads and head by head), attention. Adds equal and
 * all row blocks to *same / *total; exact: every row block must equal the CPU's. */
static void flex_case(int n, int H, int Hkv, int d, float gamma, float tau, int minb, int mode, int exact,
                      uint64_t seed, int *same_out, int *total_out, int *qa_heads, int *vs_heads) {
    prob p;
    prob_init(&p, n, H, Hkv, d, mode, seed);
    eng_pattern pat = eng_pattern_make(ENG_PAT_FLEX);
    pat.gamma = gamma, pat.tau = tau, pat.min_budget = minb;
    eng_err err = {{0}};
    const int g = H / Hkv;
    /* decision */
    double *js = malloc(sizeof(double) * H);
    int *qa = malloc(sizeof(int) * H), dense = -1;
    assert_non_null(js), assert_non_null(qa);
    krn_xflex_ws *ws = NULL;
    if (krn_xflex_ws_create(&ws, &err)) fail_msg("%s", err.msg);
    krn_attn_args a = prob_args(&p);
    if (krn_xflex_flex_decide(&pat, &a, 0, H, js, qa, &dense, ws, 0, &err)) fail_msg("krn_xflex_flex_decide: %s", err.msg);
    for (int h = 0; h < H; h++) {
        double cjs;
        int cqa, cdense;
        if (eng_pattern_flex_decide(&pat, p.q + h * d, H * d, p.k + (h / g) * d, Hkv * d, n, d, &cjs, &cqa, &cdense, &err))
            fail_msg("eng_pattern_flex_decide: %s", err.msg);
        assert_int_equal(dense, cdense);
        if (cdense) continue;
        if (!(fabs(js[h] - cjs) < 1e-9)) fail_msg("flex n=%d head %d: js %.17g, CPU %.17g", n, h, js[h], cjs);
        if (qa[h] != cqa && fabs(cjs - tau) > 1e-9) fail_msg("flex n=%d head %d: decision %d, CPU %d (js %.6f)", n, h, qa[h], cqa, cjs);
        *qa_heads += cqa, *vs_heads += !cqa;
    }
    /* index */
    krn_index_dev dx, dx1;
    eng_head_index *gpu = calloc((size_t)H, sizeof *gpu), *gpu1 = calloc((size_t)H, sizeof *gpu1);
    assert_non_null(gpu), assert_non_null(gpu1);
    build_gpu(&pat, &p, 0, &dx, gpu);
    build_gpu(&pat, &p, 1, &dx1, gpu1);
    int same = 0, rows = 0;
    for (int h = 0; h < H; h++) {
        eng_head_index cpu;
        if (eng_pattern_build(&pat, p.q + h * d, H * d, p.k + (h / g) * d, Hkv * d, n, d, &cpu, &err))
            fail_msg("eng_pattern_build: %s", err.msg);
        for (int rb = 0; rb < cpu.n_rb; rb++) {
            if (!row_equal(&gpu[h], &gpu1[h], rb)) fail_msg("flex n=%d head %d rb %d: head-by-head build differs", n, h, rb);
            same += row_equal(&gpu[h], &cpu, rb), rows++;
        }
        eng_index_free(&cpu);
    }
    printf("  flex(gamma=%.2f,tau=%.2f,min_budget=%d) %s n=%d H=%d Hkv=%d d=%d: %s, rows equal to CPU %d/%d\n", gamma,
           tau, minb, mode == IN_PERIOD128 ? "equal blocks" : "random", n, H, Hkv, d,
           dense ? "dense (too short)" : "sparse", same, rows);
    if (exact && same != rows) fail_msg("flex n=%d: %d of %d row blocks differ from the CPU index", n, rows - same, rows);
    char what[96];
    snprintf(what, sizeof what, "flex n=%d", n);
    check_attn(&p, &dx, gpu, what);
    *same_out += same, *total_out += rows;
    for (int h = 0; h < H; h++) eng_index_free(&gpu[h]), eng_index_free(&gpu1[h]);
    free(gpu), free(gpu1), free(js), free(qa);
    krn_index_dev_free(&dx), krn_index_dev_free(&dx1);
    krn_xflex_ws_free(ws);
    prob_free(&p);
}

static void test_flex_vs_cpu(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    uint64_t seed = 0xbb67ae8584caa73bULL ^ (uint64_t)time(NULL);
    static const struct {
        int n, H, Hkv, d;
        float gamma, tau;
        int minb, mode, exact;
    } cs[] = {
        {37, 2, 1, 64, 0.9f, 0.1f, 512, IN_RANDOM, 1},      /* dense: too short */
        {300, 4, 2, 64, 0.9f, 0.1f, 512, IN_RANDOM, 1},     /* dense: n <= 512 */
        {300, 4, 2, 128, 0.9f, 1.0f, 64, IN_RANDOM, 0},     /* query-aware forced */
        {777, 4, 1, 64, 0.9f, 0.0f, 128, IN_RANDOM, 0},     /* vertical-slash forced */
        {777, 4, 4, 128, 0.5f, 0.1f, 64, IN_RANDOM, 0},     /* natural decision */
        {2111, 8, 2, 64, 0.9f, 0.1f, 512, IN_RANDOM, 0},
        {2111, 4, 1, 128, 0.7f, 1.0f, 512, IN_RANDOM, 0},
        {3001, 4, 2, 64, 0.95f, 0.0f, 256, IN_RANDOM, 0},   /* many lines: column capacity grows */
        {2048, 4, 2, 64, 0.9f, 1.0f, 256, IN_PERIOD128, 1}, /* all key blocks equal: exact ties */
        {1536, 2, 1, 128, 0.6f, 1.0f, 64, IN_PERIOD128, 1},
    };
    int same = 0, total = 0, qa_heads = 0, vs_heads = 0;
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++)
        flex_case(cs[i].n, cs[i].H, cs[i].Hkv, cs[i].d, cs[i].gamma, cs[i].tau, cs[i].minb, cs[i].mode, cs[i].exact,
                  seed += 0x3c6ef372ULL, &same, &total, &qa_heads, &vs_heads);
    printf("  flex: %d query-aware and %d vertical-slash heads; rows equal to the CPU %d/%d\n", qa_heads, vs_heads, same,
           total);
    assert_true(qa_heads > 0 && vs_heads > 0);
    assert_true(same >= total * 99 / 100);
}

/* Bad input: a kind not built here, heads outside the tensor, an index for another n. */
static void test_xflex_errors(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    prob p;
    prob_init(&p, 300, 2, 1, 64, IN_RANDOM, 7);
    krn_attn_args a = prob_args(&p);
    eng_err err = {{0}};
    krn_xflex_ws *ws = NULL;
    if (krn_xflex_ws_create(&ws, &err)) fail_msg("%s", err.msg);
    krn_index_dev dx;
    if (krn_index_dev_alloc(&dx, 2, 300, 5, 0, &err)) fail_msg("%s", err.msg);
    eng_pattern vs = eng_pattern_make(ENG_PAT_VS), xa = eng_pattern_make(ENG_PAT_XATTN);
    assert_int_equal(krn_xflex_build(&vs, &a, 0, 2, &dx, ws, 0, &err), -1);
    assert_non_null(strstr(err.msg, "not xattn or flex"));
    assert_int_equal(krn_xflex_build(&xa, &a, 1, 2, &dx, ws, 0, &err), -1);
    assert_non_null(strstr(err.msg, "outside"));
    xa.stride = 3;
    assert_int_equal(krn_xflex_build(&xa, &a, 0, 2, &dx, ws, 0, &err), -1);
    assert_non_null(strstr(err.msg, "stride"));
    krn_index_dev_free(&dx);
    if (krn_index_dev_alloc(&dx, 2, 299, 5, 0, &err)) fail_msg("%s", err.msg);
    xa.stride = 8;
    assert_int_equal(krn_xflex_build(&xa, &a, 0, 2, &dx, ws, 0, &err), -1);
    assert_non_null(strstr(err.msg, "index for n"));
    krn_index_dev_free(&dx);
    krn_xflex_ws_free(ws);
    prob_free(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xattn_vs_cpu),
        cmocka_unit_test(test_flex_vs_cpu),
        cmocka_unit_test(test_xflex_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
