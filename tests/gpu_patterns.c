/* gpu_patterns: every pattern kind in the CUDA prefill (kernels/krn_prefill.cu, issue 9) against the
 * CPU prefill on an in-memory random Llama-shaped model whose config mixes all kinds per head:
 * GPU-built indexes (dense, A-shape, VS, BS; XAttention, FlexPrefill: kernels/krn_xflex.cu, compared
 * with eng_pattern_build in tests/gpu_xflex.c), DMA / N:M heads (their own kernels,
 * kernels/krn_dma.cu) and the reshape pass (eng_reshape_apply on the GPU output and the exact mask it ran).
 * Checks: the GPU sparse prefill is close to the CPU sparse prefill (bf16 vs f32 bounds as
 * gpu_prefill's block-sparse ones) and closer to it than to the dense prefill (the patterns really
 * ran); kept-LSE and no-LSE runs agree; the kernel bench builds XAttention / FlexPrefill indexes on
 * the GPU, no '[host index]' rows (density 1 where the pattern must keep everything) and times DMA / N:M rows (N:M's pair
 * count exact). */
#include "gpu_util.h"

#include <time.h>

#include <cuda_runtime_api.h>

#include "eng_backend.h"
#include "eng_model.h"
#include "eng_pattern.h"
#include "krn_bench.h"

/* Two layers of eight heads: layer 0 one head of each kind, layer 1 the same kinds with reshape on
 * the sparse ones (N:M and dense without). Budgets small for n = 700 so every kind drops a lot. */
static void mixed_config(eng_pattern_cfg *pc, eng_pattern *heads) {
    const int H = 8;
    memset(pc, 0, sizeof *pc);
    pc->n_layers = 2, pc->n_heads = H, pc->heads = heads;
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < ENG_PAT__COUNT; k++) {
            eng_pattern p = eng_pattern_make((eng_pat_kind)k);
            switch (p.kind) {
            case ENG_PAT_ASHAPE: p.n_init = 4, p.n_local = 64; break;
            case ENG_PAT_VS: p.vertical = 30, p.slash = 50; break;
            case ENG_PAT_BS: p.topk = 2; break;
            case ENG_PAT_XATTN: p.threshold = 0.5f; break;
            case ENG_PAT_FLEX: p.gamma = 0.5f, p.min_budget = 64; break;
            case ENG_PAT_DMA: p.keep = 32, p.n_init = 4, p.n_local = 32; break;
            case ENG_PAT_NM: p.nm_n = 1, p.nm_m = 4; break;
            default: break;
            }
            p.reshape = l == 1 && p.kind != ENG_PAT_DENSE && p.kind != ENG_PAT_NM;
            heads[l * H + (k + 3 * l) % H] = p; /* layer 1 shifts the kinds over the heads */
        }
}

static void test_prefill_all_kinds(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    const int n = 700, H = 8, Hkv = 4, d = 64, V = 1000;
    uint64_t seed = 0x9a77e2ULL ^ (uint64_t)time(NULL);
    fake_model f;
    fake_init(&f, 2, 256, 512, H, Hkv, d, V, seed);
    int *tok = malloc(sizeof(int) * (size_t)n);
    assert_non_null(tok);
    for (int i = 0; i < n; i++) tok[i] = (int)(tu_rand_u64(&seed) % (uint64_t)V);
    eng_pattern heads[16];
    eng_pattern_cfg pc;
    mixed_config(&pc, heads);
    eng_err err = {{0}};
    eng_backend *cpu = eng_backend_cpu_create(&err), *gpu = eng_backend_cuda_create(&err);
    if (!cpu || !gpu) fail_msg("backend: %s", err.msg);
    eng_prefill_opts o;
    memset(&o, 0, sizeof o);
    o.patterns = &pc;
    o.keep_lse = 1;
    eng_prefill_opts od;
    memset(&od, 0, sizeof od);
    eng_prefill_out cs, cd, gs, gs2;
    if (cpu->prefill(cpu, &f.m, tok, n, &o, &cs, &err)) fail_msg("cpu sparse prefill: %s", err.msg);
    if (cpu->prefill(cpu, &f.m, tok, n, &od, &cd, &err)) fail_msg("cpu dense prefill: %s", err.msg);
    if (gpu->prefill(gpu, &f.m, tok, n, &o, &gs, &err)) fail_msg("gpu sparse prefill: %s", err.msg);
    o.keep_lse = 0; /* the other LSE path of the reshape pass (the sparse kernel's own LSE buffer) */
    if (gpu->prefill(gpu, &f.m, tok, n, &o, &gs2, &err)) fail_msg("gpu sparse prefill (no LSE): %s", err.msg);

    const double rel = tu_rel_l2(gs.last_logits, cs.last_logits, (size_t)V);
    const double rel_dense = tu_rel_l2(gs.last_logits, cd.last_logits, (size_t)V);
    const double cpu_gap = tu_rel_l2(cs.last_logits, cd.last_logits, (size_t)V);
    const double rel2 = tu_rel_l2(gs2.last_logits, gs.last_logits, (size_t)V);
    double dl = 0, lse = 0;
    int agree = 0;
    for (int i = 0; i < n; i++) agree += cs.argmax[i] == gs.argmax[i];
    for (int i = 0; i + 1 < n; i++) {
        if (!isfinite(gs.next_logprob[i])) fail_msg("gpu next_logprob[%d] not finite", i);
        dl += fabs((double)cs.next_logprob[i] - gs.next_logprob[i]);
    }
    dl /= n - 1;
    for (size_t i = 0; i < (size_t)2 * H * n; i++) { /* the kept LSE is the dense one on both sides */
        double e = fabs((double)cs.lse[i] - gs.lse[i]) / (1.0 + fabs((double)cs.lse[i]));
        lse = e > lse ? e : lse;
    }
    printf("  all kinds n=%d: gpu vs cpu sparse logits rel-L2 %.2e (vs cpu dense %.2e; cpu sparse vs dense %.2e), "
           "mean |dlogp| %.3f, argmax agree %d/%d, dense-LSE max rel %.3f, keep_lse on/off %.2e, gpu %.3f s\n",
           n, rel, rel_dense, cpu_gap, dl, agree, n, lse, rel2, gs.seconds);
    for (int i = 0; i < V; i++)
        if (!isfinite(gs.last_logits[i])) fail_msg("gpu logit %d not finite", i);
    if (!(cpu_gap > 1e-2)) fail_msg("the mixed config barely changes the CPU logits (%.2e): test too weak", cpu_gap);
    if (!(rel < 1e-1)) fail_msg("last logits rel-L2 %.3e vs the CPU sparse prefill", rel);
    if (!(rel < rel_dense)) fail_msg("GPU sparse logits are closer to dense (%.3e) than to CPU sparse (%.3e)", rel_dense, rel);
    if (!(dl < 1e-1)) fail_msg("mean |dlogprob| %.3e", dl);
    if (agree < n * 85 / 100) fail_msg("argmax agrees on %d of %d", agree, n);
    if (!(lse < 1e-1)) fail_msg("dense LSE max relative error %.3e", lse);
    if (!(rel2 < 1e-2)) fail_msg("keep_lse on/off runs differ: rel-L2 %.3e", rel2);
    eng_prefill_out_free(&cs), eng_prefill_out_free(&cd), eng_prefill_out_free(&gs), eng_prefill_out_free(&gs2);
    cpu->destroy(cpu), gpu->destroy(gpu);
    free(tok);
    fake_free(&f);
}

static void test_bench_kinds(void **state) {
    (void)state;
    if (!have_gpu()) skip();
    krn_bench_cfg c;
    memset(&c, 0, sizeof c);
    c.n = 1000, c.H = 4, c.Hkv = 2, c.d = 64, c.reps = 2;
    c.pats[0] = eng_pattern_make(ENG_PAT_XATTN);
    c.pats[0].threshold = 1.0f; /* keeps every causal 128-block: density 1 */
    c.pats[1] = eng_pattern_make(ENG_PAT_XATTN);
    c.pats[1].threshold = 0.3f;
    c.pats[2] = eng_pattern_make(ENG_PAT_FLEX); /* min_budget 512: n = 1000 > 512 runs sparse or not, valid */
    c.n_pats = 3;
    krn_bench_row rows[2 + KRN_BENCH_MAX_PATS];
    eng_err err = {{0}};
    if (krn_bench_attention(&c, rows, &err)) fail_msg("bench: %s", err.msg);
    for (int i = 1; i <= c.n_pats; i++) {
        printf("  bench %s: index %.3f ms, attn %.3f ms, density %.4f\n", rows[i].name, rows[i].index_ms, rows[i].attn_ms,
               rows[i].density);
        assert_null(strstr(rows[i].name, "[host index]")); /* built on the GPU (krn_xflex) */
        assert_true(rows[i].index_ms > 0 && rows[i].attn_ms > 0);
        assert_true(rows[i].density > 0 && rows[i].density <= 1.0 + 1e-9);
    }
    assert_true(fabs(rows[1].density - 1.0) < 1e-9);
    assert_true(rows[2].density < 1.0);
    c.pats[0] = eng_pattern_make(ENG_PAT_DMA);
    c.pats[0].keep = 128, c.pats[0].n_init = 16, c.pats[0].n_local = 64;
    c.pats[1] = eng_pattern_make(ENG_PAT_NM); /* 2:4 */
    c.n_pats = 2;
    if (krn_bench_attention(&c, rows, &err)) fail_msg("bench dma / nm: %s", err.msg);
    long long nm_pairs = 0; /* per row: 2 of every full group of 4, min(2, rest) of the partial one */
    for (int i = 0; i < c.n; i++) nm_pairs += (long long)(i + 1) / 4 * 2 + ((i + 1) % 4 < 2 ? (i + 1) % 4 : 2);
    for (int i = 1; i <= 2; i++) {
        printf("  bench %s: index %.3f ms, attn %.3f ms, density %.4f\n", rows[i].name, rows[i].index_ms, rows[i].attn_ms,
               rows[i].density);
        assert_true(rows[i].attn_ms > 0 && rows[i].density > 0 && rows[i].density < 1.0);
    }
    assert_true(rows[1].index_ms > 0);
    assert_true(rows[2].pairs == nm_pairs * c.H);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_all_kinds),
        cmocka_unit_test(test_bench_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
