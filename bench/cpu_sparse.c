/* cpu_sparse: micro-benchmark of the CPU sparse attention path (index building + eng_attn_sparse_head)
 * against the dense engine (eng_attn_dense_head), single head and through the CPU prefill. Not a
 * test: it validates, then times (best of --reps, since the 2-core machine is shared).
 *   build: bench/cpu_sparse.sh builds it against build/libattnscope.a (or the library given)
 *   head mode:    cpu_sparse [--n 4096,16384] [--d 64,128] [--reps 3] [--pat LIST]
 *     LIST: comma list of dense-ix | ashape:I:L | vs:V:S | bs:K (default: a workshop-sized mix)
 *     Inputs: random Q/K with a shared direction then RoPE (theta 1e4), so attention is local-ish
 *     like an LLM's and the VS estimate keeps mostly local slashes; V noise.
 *   prefill mode: cpu_sparse --model DIR --prompt FILE --patterns CFG.json [--reps 3]
 *     dense and sparse CPU prefills (per-layer attention time, index building included), and per
 *     layer the index-build and kernel time of the sparse heads run one at a time on the dense
 *     prefill's Q/K/V.
 * GFLOP/s count 4 * d flops per computed (q, k) entry (QK^T and PV), the dense engine's entries
 * being the n(n+1)/2 causal ones. Output: markdown table rows. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_attn.h"
#include "eng_backend.h"
#include "eng_cpu.h"
#include "eng_model.h"
#include "eng_patcfg.h"
#include "eng_pattern.h"
#include "eng_tok.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* xorshift64*, uniform in (0, 1) */
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return ((rng * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0) + 1e-300;
}
static float nrand(void) { return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand())); }

/* q, k (n, d): shared unit direction g times A plus unit noise, then rotate-half RoPE; v noise. */
static void make_qkv(int n, int d, float *q, float *k, float *v) {
    float *g = malloc(sizeof(float) * (size_t)d);
    double nn = 0;
    for (int c = 0; c < d; c++) g[c] = nrand(), nn += (double)g[c] * g[c];
    const float A = (float)sqrt(6.0 * sqrt((double)d)) / (float)sqrt(nn);
    for (int t = 0; t < n; t++)
        for (int c = 0; c < d; c++) {
            q[(size_t)t * d + c] = A * g[c] + nrand();
            k[(size_t)t * d + c] = A * g[c] + nrand();
            v[(size_t)t * d + c] = nrand();
        }
    for (int t = 0; t < n; t++)
        for (int i = 0; i < d / 2; i++) {
            const double a = t * pow(10000.0, -2.0 * i / d), co = cos(a), si = sin(a);
            float *x[2] = {q + (size_t)t * d, k + (size_t)t * d};
            for (int w = 0; w < 2; w++) {
                const float x1 = x[w][i], x2 = x[w][i + d / 2];
                x[w][i] = (float)(x1 * co - x2 * si);
                x[w][i + d / 2] = (float)(x2 * co + x1 * si);
            }
        }
    free(g);
}

static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return sqrt(num / (den > 0 ? den : 1));
}

static int parse_pat(const char *s, eng_pattern *p, int *dense_ix) {
    int a = 0, b = 0;
    *dense_ix = 0;
    if (!strcmp(s, "dense-ix")) {
        *p = eng_pattern_make(ENG_PAT_DENSE);
        *dense_ix = 1;
        return 0;
    }
    if (sscanf(s, "ashape:%d:%d", &a, &b) == 2) {
        *p = eng_pattern_make(ENG_PAT_ASHAPE);
        p->n_init = a, p->n_local = b;
        return 0;
    }
    if (sscanf(s, "vs:%d:%d", &a, &b) == 2) {
        *p = eng_pattern_make(ENG_PAT_VS);
        p->vertical = a, p->slash = b;
        return 0;
    }
    if (sscanf(s, "bs:%d", &a) == 1) {
        *p = eng_pattern_make(ENG_PAT_BS);
        p->topk = a;
        return 0;
    }
    return -1;
}

static int parse_ints(const char *s, int *out, int cap) {
    int n = 0;
    while (*s && n < cap) {
        out[n++] = (int)strtol(s, (char **)&s, 10);
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return n;
}

static int head_mode(const int *ns, int nn, const int *ds, int nd, char pats[][64], int np, int reps) {
    printf("| N | d | kernel | index ms | attn ms | total ms | density | GFLOP/s (computed) | vs dense GFLOP/s | "
           "total vs dense |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (int a = 0; a < nn; a++)
        for (int b = 0; b < nd; b++) {
            const int n = ns[a], d = ds[b];
            float *q = malloc(sizeof(float) * (size_t)n * d), *k = malloc(sizeof(float) * (size_t)n * d);
            float *v = malloc(sizeof(float) * (size_t)n * d), *od = malloc(sizeof(float) * (size_t)n * d);
            float *os = malloc(sizeof(float) * (size_t)n * d), *lse = malloc(sizeof(float) * (size_t)n);
            if (!q || !k || !v || !od || !os || !lse) {
                fprintf(stderr, "cpu_sparse: out of memory at n %d d %d\n", n, d);
                return 1;
            }
            make_qkv(n, d, q, k, v);
            eng_pattern pat[32];
            int dense_ix[32];
            double tb[32], ta[32], tdense = INFINITY;
            long long cnt[32];
            for (int p = 0; p < np; p++) {
                if (parse_pat(pats[p], &pat[p], &dense_ix[p])) {
                    fprintf(stderr, "cpu_sparse: bad pattern '%s'\n", pats[p]);
                    return 2;
                }
                tb[p] = ta[p] = INFINITY;
            }
            /* Reps interleave the kernels, so load from other jobs drifts over all of them alike. */
            for (int r = 0; r < reps; r++) {
                double t0 = now_s();
                eng_attn_dense_head(q, d, k, v, d, n, d, od, d, lse);
                double t = now_s() - t0;
                if (t < tdense) tdense = t;
                for (int p = 0; p < np; p++) {
                    eng_head_index ix;
                    eng_err err;
                    t0 = now_s();
                    if (eng_pattern_build(&pat[p], q, d, k, d, n, d, &ix, &err)) {
                        fprintf(stderr, "cpu_sparse: %s: %s\n", pats[p], err.msg);
                        return 1;
                    }
                    double t1 = now_s();
                    eng_attn_sparse_head(q, d, k, v, d, n, d, &ix, os, d, lse);
                    double t2 = now_s();
                    if (t1 - t0 < tb[p]) tb[p] = t1 - t0;
                    if (t2 - t1 < ta[p]) ta[p] = t2 - t1;
                    if (!r) cnt[p] = eng_index_count(&ix);
                    eng_index_free(&ix);
                    if (dense_ix[p]) { /* validate: the dense index through the sparse kernel = dense engine */
                        double e = rel_l2(os, od, (size_t)n * d);
                        if (!(e < 1e-4)) {
                            fprintf(stderr, "cpu_sparse: dense index vs dense engine rel-L2 %.3g\n", e);
                            return 1;
                        }
                        tb[p] = 0; /* the dense index is a fixed table, not a pattern to build */
                    }
                }
            }
            const double dflop = 4.0 * d * ((double)n * (n + 1) / 2);
            printf("| %d | %d | dense engine | - | %.1f | %.1f | 1 | %.1f | 1.00 | 1.00x |\n", n, d, 1e3 * tdense,
                   1e3 * tdense, dflop / tdense * 1e-9);
            for (int p = 0; p < np; p++) {
                const double gf = 4.0 * d * (double)cnt[p] / ta[p] * 1e-9;
                printf("| %d | %d | %s | %.2f | %.1f | %.1f | %.3f | %.1f | %.2f | %.2fx |\n", n, d, pats[p],
                       1e3 * tb[p], 1e3 * ta[p], 1e3 * (tb[p] + ta[p]), (double)cnt[p] / ((double)n * (n + 1) / 2), gf,
                       gf / (dflop / tdense * 1e-9), tdense / (tb[p] + ta[p]));
            }
            fflush(stdout);
            free(q), free(k), free(v), free(od), free(os), free(lse);
        }
    return 0;
}

static int prefill_mode(const char *dir, const char *prompt, const char *cfgpath, int reps) {
    eng_err err;
    eng_model *m = NULL;
    eng_tokenizer *tok = NULL;
    eng_backend *be = NULL;
    eng_patcfg pc;
    memset(&pc, 0, sizeof pc);
    int *ids = NULL, n = 0, rc = 1;
    char *text = NULL;
    FILE *f = fopen(prompt, "rb");
    if (!f) {
        fprintf(stderr, "cpu_sparse: cannot open %s\n", prompt);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc((size_t)len + 1);
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) len = -1;
    fclose(f);
    eng_prefill_out dense, sparse;
    memset(&dense, 0, sizeof dense), memset(&sparse, 0, sizeof sparse);
    if (len < 0 || eng_model_load(&m, dir, &err) || !(tok = eng_tok_load(dir, &m->cfg, &err)) ||
        eng_tok_encode(tok, text, (size_t)len, 1, &ids, &n, &err) || eng_patcfg_load(&pc, cfgpath, &err) ||
        eng_patcfg_check_model(&pc, m->cfg.n_layers, m->cfg.n_heads, &err) || !(be = eng_backend_cpu_create(&err))) {
        fprintf(stderr, "cpu_sparse: %s\n", len < 0 ? "cannot read the prompt" : err.msg);
        goto done;
    }
    const int L = m->cfg.n_layers, H = m->cfg.n_heads, Hkv = m->cfg.n_kv_heads, d = m->cfg.head_dim;
    double *bd = calloc((size_t)L, sizeof *bd), *bs = calloc((size_t)L, sizeof *bs);
    double *bb = calloc((size_t)L, sizeof *bb), *bk = calloc((size_t)L, sizeof *bk);
    double td = INFINITY, ts = INFINITY;
    float *os = malloc(sizeof(float) * (size_t)n * d), *ls = malloc(sizeof(float) * (size_t)n);
    for (int l = 0; l < L; l++) bd[l] = bs[l] = bb[l] = bk[l] = INFINITY;
    for (int r = 0; r < reps; r++) {
        eng_prefill_opts od = {.keep_qkv = r == 0}, osp = {.patterns = &pc.cfg};
        eng_prefill_out o1, o2;
        if (be->prefill(be, m, ids, n, &od, &o1, &err) || be->prefill(be, m, ids, n, &osp, &o2, &err)) {
            fprintf(stderr, "cpu_sparse: prefill: %s\n", err.msg);
            goto done;
        }
        if (o1.seconds < td) td = o1.seconds;
        if (o2.seconds < ts) ts = o2.seconds;
        for (int l = 0; l < L; l++) {
            if (o1.attn_seconds[l] < bd[l]) bd[l] = o1.attn_seconds[l];
            if (o2.attn_seconds[l] < bs[l]) bs[l] = o2.attn_seconds[l];
        }
        if (r == 0) dense = o1;
        else eng_prefill_out_free(&o1);
        eng_prefill_out_free(&o2);
    }
    /* Sparse heads one at a time on the dense prefill's Q/K/V: index build vs kernel. */
    long long ent_sum = 0;
    double ksum = 0;
    for (int r = 0; r < reps; r++)
        for (int l = 0; l < L; l++) {
            const float *q = dense.q + (size_t)l * n * H * d, *k = dense.k + (size_t)l * n * Hkv * d;
            const float *v = dense.v + (size_t)l * n * Hkv * d;
            double b = 0, kt = 0;
            for (int h = 0; h < H; h++) {
                const eng_pattern *p = eng_pattern_cfg_get(&pc.cfg, l, h);
                if (p->kind == ENG_PAT_DENSE || !eng_pattern_is_index(p->kind)) continue;
                eng_head_index ix;
                double t0 = now_s();
                if (eng_pattern_build(p, q + (size_t)h * d, H * d, k + (size_t)(h / (H / Hkv)) * d, Hkv * d, n, d, &ix,
                                      &err)) {
                    fprintf(stderr, "cpu_sparse: layer %d head %d: %s\n", l, h, err.msg);
                    goto done;
                }
                double t1 = now_s();
                eng_attn_sparse_head(q + (size_t)h * d, H * d, k + (size_t)(h / (H / Hkv)) * d,
                                     v + (size_t)(h / (H / Hkv)) * d, Hkv * d, n, d, &ix, os, d, ls);
                double t2 = now_s();
                b += t1 - t0, kt += t2 - t1;
                if (r == 0) ent_sum += eng_index_count(&ix);
                eng_index_free(&ix);
            }
            if (b < bb[l]) bb[l] = b;
            if (kt < bk[l]) bk[l] = kt;
        }
    printf("| layer | dense attn ms (prefill) | sparse attn ms (prefill, incl. index) | index build ms (heads one "
           "at a time) | sparse kernel ms (heads one at a time) |\n| --- | --- | --- | --- | --- |\n");
    double sd = 0, ss = 0, sb = 0;
    for (int l = 0; l < L; l++) {
        printf("| %d | %.1f | %.1f | %.1f | %.1f |\n", l, 1e3 * bd[l], 1e3 * bs[l], 1e3 * bb[l], 1e3 * bk[l]);
        sd += bd[l], ss += bs[l], sb += bb[l], ksum += bk[l];
    }
    printf("| all | %.1f | %.1f | %.1f | %.1f |\n", 1e3 * sd, 1e3 * ss, 1e3 * sb, 1e3 * ksum);
    printf("prefill (best of %d): dense %.3f s, sparse %.3f s; %d tokens; sparse kernel %.1f GFLOP/s on %lld computed "
           "entries\n", reps, td, ts, n, 4.0 * d * (double)ent_sum / ksum * 1e-9, ent_sum);
    free(bd), free(bs), free(bb), free(bk), free(os), free(ls);
    rc = 0;
done:
    eng_prefill_out_free(&dense);
    if (be) be->destroy(be);
    eng_patcfg_free(&pc);
    eng_tok_free(tok);
    eng_model_free(m);
    free(ids);
    free(text);
    return rc;
}

int main(int argc, char **argv) {
    int ns[16] = {4096, 16384}, nn = 2, ds[8] = {64, 128}, nd = 2, reps = 3, np = 0;
    char pats[32][64];
    const char *defpats = "dense-ix,ashape:128:1024,vs:64:512,vs:1000:6096,bs:8,bs:32";
    const char *plist = defpats, *model = NULL, *prompt = NULL, *cfg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) {
            fprintf(stderr, "cpu_sparse: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--n")) nn = parse_ints(val, ns, 16);
        else if (!strcmp(a, "--d")) nd = parse_ints(val, ds, 8);
        else if (!strcmp(a, "--reps")) reps = atoi(val);
        else if (!strcmp(a, "--pat")) plist = val;
        else if (!strcmp(a, "--model")) model = val;
        else if (!strcmp(a, "--prompt")) prompt = val;
        else if (!strcmp(a, "--patterns")) cfg = val;
        else {
            fprintf(stderr, "cpu_sparse: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (nn < 1 || nd < 1 || reps < 1) {
        fprintf(stderr, "cpu_sparse: bad --n, --d or --reps\n");
        return 2;
    }
    for (const char *s = plist; *s && np < 32;) {
        size_t l = strcspn(s, ",");
        snprintf(pats[np++], sizeof pats[0], "%.*s", (int)(l < 63 ? l : 63), s);
        s += l + (s[l] == ',');
    }
    printf("cpu_sparse: %d CPU threads; best of %d\n", eng_cpu_threads(), reps);
    if (model || prompt || cfg) {
        if (!model || !prompt || !cfg) {
            fprintf(stderr, "cpu_sparse: prefill mode needs --model, --prompt and --patterns\n");
            return 2;
        }
        return prefill_mode(model, prompt, cfg, reps);
    }
    return head_mode(ns, nn, ds, nd, pats, np, reps);
}
