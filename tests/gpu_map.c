/* gpu_map: the GPU pooled attention map (kernels/krn_map.cu, reached through the CUDA backend's
 * map_pool) against the CPU reference eng_map_pool on fresh random inputs: odd N and N < 64,
 * d 64 and 128, MAX and MEAN, lse given (from eng_attn_*_head) and computed, dense and sparse
 * indexes (A-shape with its band mask, sink and window off the 64 grid; block-sparse;
 * vertical-slash), whole views, windows, zoomed-in views (w > keys) and NAN for empty tiles. Scores are bit-identical by construction; exp and summation
 * order differ, so: empty tiles at the same places, rel-L2 < 1e-4 and max |diff| <= 1e-4 * max. */
#include "gpu_util.h"

#include <time.h>

#include <cuda_runtime_api.h>

#include "eng_attn.h"
#include "eng_backend.h"
#include "eng_map.h"
#include "eng_pattern.h"

static double worst_rel = 0, worst_abs = 0;

static void map_case(eng_backend *be, int n, int d, eng_pat_kind kind, int pool, int give_lse, const eng_map_opts *win,
                     uint64_t *seed) {
    float *q = malloc(sizeof(float) * (size_t)n * d), *k = malloc(sizeof(float) * (size_t)n * d);
    float *v = malloc(sizeof(float) * (size_t)n * d), *o = malloc(sizeof(float) * (size_t)n * d);
    float *lse = malloc(sizeof(float) * (size_t)n);
    assert_non_null(q), assert_non_null(k), assert_non_null(v), assert_non_null(o), assert_non_null(lse);
    tu_fill(q, (size_t)n * d, seed, 2.0f);
    tu_fill(k, (size_t)n * d, seed, 1.0f);
    tu_fill(v, (size_t)n * d, seed, 1.0f);
    eng_err err = {{0}};
    eng_head_index ix, *ixp = NULL;
    if (kind != ENG_PAT_DENSE) {
        eng_pattern p = eng_pattern_make(kind);
        /* sinks and windows off the 64 grid, windows shorter and longer than a tile, per n */
        if (kind == ENG_PAT_ASHAPE) p.n_init = 40 + n % 37, p.n_local = 20 + (n * 7) % 190;
        if (kind == ENG_PAT_BS) p.topk = 4;
        if (kind == ENG_PAT_VS) p.vertical = 40, p.slash = 60;
        if (eng_pattern_build(&p, q, d, k, d, n, d, &ix, &err)) fail_msg("pattern: %s", err.msg);
        ixp = &ix;
    }
    if (give_lse) {
        if (ixp) eng_attn_sparse_head(q, d, k, v, d, n, d, ixp, o, d, lse);
        else eng_attn_dense_head(q, d, k, v, d, n, d, o, d, lse);
    }
    eng_map_opts mo = *win;
    mo.pool = pool ? ENG_POOL_MEAN : ENG_POOL_MAX;
    mo.threads = 0;
    size_t px = (size_t)mo.w * mo.h;
    float *ref = malloc(sizeof(float) * px), *got = malloc(sizeof(float) * px);
    assert_non_null(ref), assert_non_null(got);
    for (size_t i = 0; i < px; i++) got[i] = -12345.0f;
    if (eng_map_pool(q, d, k, d, n, d, give_lse ? lse : NULL, ixp, &mo, ref, &err)) fail_msg("cpu map: %s", err.msg);
    if (be->map_pool(be, q, d, k, d, n, d, give_lse ? lse : NULL, ixp, &mo, got, &err)) fail_msg("gpu map: %s", err.msg);
    double mx = 0, md = 0, num = 0, den = 0;
    for (size_t i = 0; i < px; i++) {
        if (isnan(ref[i]) || isnan(got[i])) {
            if (!(isnan(ref[i]) && isnan(got[i])))
                fail_msg("n=%d pixel %zu: empty tile mismatch (cpu %g, gpu %g)", n, i, ref[i], got[i]);
            continue;
        }
        if (got[i] == -12345.0f) fail_msg("n=%d pixel %zu not written", n, i);
        double e = fabs((double)got[i] - ref[i]);
        md = e > md ? e : md;
        mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
        num += e * e, den += (double)ref[i] * ref[i];
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (rel > worst_rel) worst_rel = rel;
    if (mx > 0 && md / mx > worst_abs) worst_abs = md / mx;
    if (!(rel < 1e-4) || !(md <= 1e-4 * (mx > 0 ? mx : 1)))
        fail_msg("n=%d d=%d %s %s lse=%s q[%d,%d) k[%d,%d) %dx%d: rel-L2 %.3e max|d| %.3e (max %.3e)", n, d,
                 eng_pattern_kind_name(kind), pool ? "mean" : "max", give_lse ? "given" : "computed", mo.q0, mo.q1,
                 mo.k0, mo.k1, mo.w, mo.h, rel, md, mx);
    if (ixp) eng_index_free(ixp);
    free(q), free(k), free(v), free(o), free(lse), free(ref), free(got);
}

static void test_map_vs_cpu(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    eng_err err = {{0}};
    eng_backend *cpu = eng_backend_cpu_create(&err), *be = eng_backend_cuda_create(&err);
    if (!cpu || !be) fail_msg("backend: %s", err.msg);
    assert_null(cpu->map_pool);
    assert_non_null(be->map_pool);
    uint64_t seed = 0x243f6a8885a308d3ULL ^ (uint64_t)time(NULL);
    static const int ns[] = {1, 37, 200, 777, 3001};
    static const eng_pat_kind kinds[] = {ENG_PAT_DENSE, ENG_PAT_ASHAPE, ENG_PAT_BS, ENG_PAT_VS};
    int cases = 0;
    for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
        const int n = ns[ni];
        for (int ki = 0; ki < 4; ki++)
            for (int wi = 0; wi < 3; wi++) {
                eng_map_opts w;
                memset(&w, 0, sizeof w);
                w.empty = NAN;
                if (wi == 0) { /* whole prompt, zoomed out (or 1:1 for short n) */
                    w.q0 = 0, w.q1 = n, w.k0 = 0, w.k1 = n, w.w = 61, w.h = 53;
                } else if (wi == 1) { /* a window off the diagonal */
                    w.q0 = n / 3, w.q1 = n, w.k0 = n / 5, w.k1 = n - n / 4 > n / 5 ? n - n / 4 : n, w.w = 100, w.h = 41;
                } else { /* zoomed in: more pixels than keys and queries */
                    w.q0 = n / 2, w.q1 = n / 2 + 30 < n ? n / 2 + 30 : n, w.k0 = n / 2 > 10 ? n / 2 - 10 : 0;
                    w.k1 = w.k0 + (n - w.k0 < 25 ? n - w.k0 : 25), w.w = 97, w.h = 83, w.empty = 0.f;
                }
                for (int pool = 0; pool < 2; pool++) {
                    map_case(be, n, (ni + ki + wi) % 2 ? 128 : 64, kinds[ki], pool, (ni + wi + pool) % 2, &w, &seed);
                    cases++;
                }
            }
    }
    printf("  gpu map vs eng_map_pool: %d cases, worst rel-L2 %.2e, worst max|d|/max %.2e\n", cases, worst_rel,
           worst_abs);
    cpu->destroy(cpu);
    be->destroy(be);
}

/* A long prompt (the viewer's case): 20000 tokens, whole-prompt 512 x 512 MEAN map, and the
 * GPU's time for it (informational). */
static void test_map_long(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    eng_err err = {{0}};
    eng_backend *be = eng_backend_cuda_create(&err);
    if (!be) fail_msg("backend: %s", err.msg);
    uint64_t seed = 0x13198a2e03707344ULL ^ (uint64_t)time(NULL);
    eng_map_opts w;
    memset(&w, 0, sizeof w);
    w.q0 = 0, w.q1 = 20000, w.k0 = 0, w.k1 = 20000, w.w = 512, w.h = 512, w.empty = NAN;
    map_case(be, 20000, 128, ENG_PAT_DENSE, 1, 0, &w, &seed);
    map_case(be, 20000, 128, ENG_PAT_VS, 0, 1, &w, &seed);
    printf("  gpu map n=20000: worst rel-L2 so far %.2e\n", worst_rel);
    be->destroy(be);
}

/* The viewer's long case on the GPU alone (the CPU reference would take minutes): 131072 tokens,
 * whole-prompt 1024 x 1024 MEAN map with the LSE pass. Each query row's probabilities sum to 1, so
 * the pixels' mean x area must add up to the number of query rows; every pixel finite and >= 0,
 * upper-right tiles (no causal entry) NAN. Prints the time (informational). */
static void test_map_128k_mass(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    eng_err err = {{0}};
    eng_backend *be = eng_backend_cuda_create(&err);
    if (!be) fail_msg("backend: %s", err.msg);
    const int n = 131072, d = 128, W = 1024;
    uint64_t seed = 0xbe5466cf34e90c6cULL ^ (uint64_t)time(NULL);
    float *q = malloc(sizeof(float) * (size_t)n * d), *k = malloc(sizeof(float) * (size_t)n * d);
    float *out = malloc(sizeof(float) * W * W);
    assert_non_null(q), assert_non_null(k), assert_non_null(out);
    tu_fill(q, (size_t)n * d, &seed, 2.0f);
    tu_fill(k, (size_t)n * d, &seed, 1.0f);
    eng_map_opts w;
    memset(&w, 0, sizeof w);
    w.q0 = 0, w.q1 = n, w.k0 = 0, w.k1 = n, w.w = W, w.h = W, w.pool = ENG_POOL_MEAN, w.empty = NAN;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (be->map_pool(be, q, d, k, d, n, d, NULL, NULL, &w, out, &err)) fail_msg("gpu map: %s", err.msg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double mass = 0;
    int empty = 0;
    for (int y = 0; y < W; y++)
        for (int x = 0; x < W; x++) {
            float v = out[(size_t)y * W + x];
            int qa = eng_map_edge(0, n, W, y), qb = eng_map_edge(0, n, W, y + 1);
            int ka = eng_map_edge(0, n, W, x), kb = eng_map_edge(0, n, W, x + 1);
            if (ka > qb - 1) {
                assert_true(isnan(v));
                empty++;
                continue;
            }
            if (!(v >= 0.0f) || !isfinite(v)) fail_msg("pixel (%d, %d) = %g", x, y, v);
            mass += (double)v * (double)(qb - qa) * (double)(kb - ka);
        }
    printf("  gpu map n=%d d=%d %dx%d mean (lse pass included): %.1f ms host-to-host, mass %.3f of %d rows, %d empty\n",
           n, d, W, W, 1e3 * ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec)), mass, n,
           empty);
    assert_true(fabs(mass - n) < 1e-3 * n);
    free(q), free(k), free(out);
    be->destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_vs_cpu),
        cmocka_unit_test(test_map_long),
        cmocka_unit_test(test_map_128k_mass),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
