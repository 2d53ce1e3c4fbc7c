/* cmd_bench: `attnscope bench` times the CUDA attention kernels on random bf16 inputs made on the
 * GPU: the dense causal kernel vs each sparse pattern (index building included) at MInference's
 * default budgets, one table per run (and --json). Needs the CUDA backend. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "eng_pattern.h"
#ifdef ATTNSCOPE_CUDA
#include "krn_bench.h"
#endif

static void usage(FILE *f) {
    fprintf(f, "usage: attnscope bench [--n N,N,...] [--heads H] [--kv-heads K] [--dim D] [--reps R]\n"
               "                       [--patterns LIST] [--vs V,S] [--bs K] [--ashape I,L] [--variant 0-10]\n"
               "                       [--vs-fixed C,D] [--synthetic MODEL] [--json OUT]\n\n"
               "Kernel-level attention benchmark on the GPU (random bf16 Q/K/V, causal): the dense kernel\n"
               "vs each sparse pattern through the index-driven kernel, index building included; medians\n"
               "of R runs after warm-up; TFLOP/s counted on the entries each kernel computes (4*d per entry).\n\n"
               "  --n LIST        token counts (default 8192,16384,32768,65536,131072)\n"
               "  --heads H       query heads (default 32)      --kv-heads K  KV heads (default 8)\n"
               "  --dim D         head dim, 64 or 128 (default 128)\n"
               "  --reps R        timed runs per measurement (default 5)\n"
               "  --patterns L    comma list of vs, bs, ashape, dense, xattn, flex, dma, nm (default\n"
               "                  vs,bs,ashape,dense; 'dense' here is the dense index through the sparse kernel).\n"
               "                  xattn and flex (their default parameters) build their indexes on the GPU\n"
               "                  (antidiagonal scores / last-128-query estimate + selection), timed as index\n"
               "                  time; dma and nm (their default parameters) run\n"
               "                  their own kernels: dma's index time is its key-score + threshold build, nm's\n"
               "                  TFLOP/s count every causal logit (it computes them all), density the kept share\n"
               "  --vs V,S        vertical-slash budgets (default 1000,6096)\n"
               "  --bs K          block-sparse blocks per row block (default 100)\n"
               "  --ashape I,L    A-shape sinks and window (default 1024,4096)\n"
               "  --variant V     attention kernel variant, dense and sparse (0: default: on sm_90 cards built\n"
               "                  for sm_90a dense 7, sparse 10 where two heads of a KV group name nearly the\n"
               "                  same blocks, else 7; other cards 6; 1, 2: the first mma.sync kernel, 64- / 128-query\n"
               "                  tiles; 3: FA2 tiling, other staging; 4: sparse 2-warp row blocks; 5: sparse\n"
               "                  pairs not sharing; 6: mma.sync FA2 tiling, sparse row-block pairs sharing\n"
               "                  K/V tiles; 7, 8, 9: Hopper wgmma kernels: dense pipelined, 2 warpgroups\n"
               "                  sharing K/V, Q in registers / as 7, 1 warpgroup per CTA / as 7, Q from shared\n"
               "                  memory; sparse pipelined, 1 warpgroup per row block, Q in registers /\n"
               "                  row-block pairs walking the union of their lists / as 7, Q from shared memory;\n"
               "                  10: sparse head pairs of a KV group sharing tiles)\n"
               "  --vs-fixed C,D  one more row: vertical-slash on a fixed index of the D most local diagonals\n"
               "                  + C columns (30 sinks + random), as PERF.md's MInference figures (1000,6096);\n"
               "                  index time = our dynamic VS(C, D) build on the same inputs\n"
               "  --synthetic M   end-to-end prefill instead: a model of shape M (llama3-8b, llama3-70b-layer,\n"
               "                  qwen2-7b, tiny) with random weights made on the GPU, random tokens; the\n"
               "                  dense prefill vs each pattern on every layer and head (default --n\n"
               "                  32768,131072, --patterns vs,bs,ashape, --reps 1); a length that does not\n"
               "                  fit in GPU memory is refused with the estimate before any work\n"
               "  --json OUT      also write every row as JSON to OUT\n");
}

/* A comma list flag (--n, --patterns), checked before any GPU work: it must fit the 256-byte parse
 * buffer and hold at least one element and no empty one; --n elements are token counts in
 * [1, 2^22]. Otherwise an empty list ran nothing and exited 0, and a bad element surfaced only
 * after the GPU rows before it. Prints the usage error; 0 ok, -1 bad. */
static int check_list(const char *flag, const char *s, int counts) {
    size_t len = strlen(s);
    if (len == 0 || len >= 256 || s[0] == ',' || s[len - 1] == ',' || strstr(s, ",,")) {
        cli_error("bench", "%s: bad list '%.300s' (want comma-separated values, e.g. %s)", flag, s,
                  counts ? "8192,16384" : "vs,bs");
        return -1;
    }
    if (!counts) return 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    int v;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (cli_parse_int("bench", flag, t, 1, 1 << 22, &v)) return -1;
    return 0;
}

#ifdef ATTNSCOPE_CUDA
static int parse_pair(const char *s, int *a, int *b) {
    char *end;
    long x = strtol(s, &end, 10);
    if (end == s || *end != ',') return -1;
    const char *t = end + 1;
    long y = strtol(t, &end, 10);
    if (end == t || *end || x < 0 || y < 0 || x > (1L << 30) || y > (1L << 30)) return -1;
    *a = (int)x, *b = (int)y;
    return 0;
}
#endif

#ifdef ATTNSCOPE_CUDA
/* --synthetic: end-to-end prefill rows for each N (krn_bench_prefill), one table and JSON. */
static int bench_prefill(const char *model, const char *ns, const krn_bench_cfg *kc, int reps, const char *json,
                         const char *dev) {
    krn_e2e_cfg ec;
    memset(&ec, 0, sizeof ec);
    if (strlen(model) >= sizeof ec.model) {
        cli_error("bench", "--synthetic '%s': unknown model", model);
        return 2;
    }
    snprintf(ec.model, sizeof ec.model, "%s", model);
    ec.reps = reps;
    for (int i = 0; i < kc->n_pats; i++)
        if (kc->pats[i].kind != ENG_PAT_DENSE) ec.pats[ec.n_pats++] = kc->pats[i];
    eng_err err = {{0}};
    double need, fr;
    ec.n = 1;
    if (krn_bench_prefill_memory(&ec, &need, &fr, &err)) { /* also validates the model name */
        cli_error("bench", "--synthetic: %s", err.msg);
        return 2;
    }
    printf("attnscope bench --synthetic %s: %s, bf16, random weights and tokens, median of %d\n", model, dev, reps);
    printf("%8s  %-34s %10s %10s %10s %8s %10s %9s\n", "N", "attention", "prefill s", "attn s", "other s", "density",
           "tok/s", "vs dense");
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "rows");
    cJSON_AddStringToObject(root, "device", dev);
    cJSON_AddStringToObject(root, "command", cli_cmdline);
    cJSON_AddStringToObject(root, "model", model);
    int rc = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", ns);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (cli_parse_int("bench", "--n", t, 1, 1 << 22, &ec.n)) {
            rc = 2;
            break;
        }
        if (krn_bench_prefill_memory(&ec, &need, &fr, &err)) {
            cli_error("bench", "%s", err.msg);
            rc = 1;
            break;
        }
        if (need > fr) {
            cli_error("bench", "N=%d: the %s prefill needs about %.1f GiB of GPU memory, %.1f GiB free: skipped",
                      ec.n, model, need / (1 << 30), fr / (1 << 30));
            rc = 1;
            continue;
        }
        krn_e2e_row rows[1 + KRN_BENCH_MAX_PATS];
        if (krn_bench_prefill(&ec, rows, &err)) {
            cli_error("bench", "N=%d: %s", ec.n, err.msg);
            rc = 1;
            break;
        }
        for (int i = 0; i <= ec.n_pats; i++) {
            const krn_e2e_row *r = &rows[i];
            char dens[16] = "-"; /* "-": every head ran its own masked kernel (no index) */
            if (r->density >= 0) snprintf(dens, sizeof dens, "%.4f", r->density);
            printf("%8d  %-34s %10.3f %10.3f %10.3f %8s %10.0f %8.2fx\n", ec.n, r->name, r->prefill_s, r->attn_s,
                   r->prefill_s - r->attn_s, dens, ec.n / r->prefill_s, rows[0].prefill_s / r->prefill_s);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "n", ec.n);
            cJSON_AddStringToObject(o, "attention", r->name);
            cJSON_AddNumberToObject(o, "prefill_s", r->prefill_s);
            cJSON_AddNumberToObject(o, "attn_s", r->attn_s);
            cJSON_AddNumberToObject(o, "setup_s", r->setup_s);
            if (r->density >= 0) cJSON_AddNumberToObject(o, "density", r->density);
            cJSON_AddNumberToObject(o, "tokens_per_s", ec.n / r->prefill_s);
            cJSON_AddNumberToObject(o, "speedup_vs_dense", rows[0].prefill_s / r->prefill_s);
            cJSON_AddItemToArray(arr, o);
        }
        fflush(stdout);
    }
    if (json) {
        char *txt = cJSON_Print(root);
        if (!txt || cli_write_atomic("bench", json, txt, strlen(txt))) rc = 1;
        free(txt);
    }
    cJSON_Delete(root);
    return rc;
}
#endif

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {
        {"n", required_argument, 0, 'n'},        {"heads", required_argument, 0, 'H'},
        {"kv-heads", required_argument, 0, 'K'}, {"dim", required_argument, 0, 'd'},
        {"reps", required_argument, 0, 'r'},     {"patterns", required_argument, 0, 'p'},
        {"vs", required_argument, 0, 'v'},       {"bs", required_argument, 0, 'b'},
        {"ashape", required_argument, 0, 'a'},   {"variant", required_argument, 0, 'V'},
        {"json", required_argument, 0, 'j'},     {"help", no_argument, 0, 'h'},
        {"synthetic", required_argument, 0, 'S'}, {"vs-fixed", required_argument, 0, 'X'},
        {0, 0, 0, 0}};
    const char *ns = "8192,16384,32768,65536,131072", *pats = "vs,bs,ashape,dense", *json = NULL;
    const char *vs = "1000,6096", *ash = "1024,4096", *synth = NULL, *vsx = NULL;
    int ns_set = 0, pats_set = 0, reps_set = 0;
    int H = 32, Hkv = 8, d = 128, reps = 5, bs = 100, variant = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': ns = optarg, ns_set = 1; break;
        case 'H': if (cli_parse_int("bench", "--heads", optarg, 1, 1024, &H)) return 2; break;
        case 'K': if (cli_parse_int("bench", "--kv-heads", optarg, 1, 1024, &Hkv)) return 2; break;
        case 'd': if (cli_parse_int("bench", "--dim", optarg, 64, 128, &d)) return 2; break;
        case 'r': if (cli_parse_int("bench", "--reps", optarg, 1, 1000, &reps)) return 2; reps_set = 1; break;
        case 'p': pats = optarg, pats_set = 1; break;
        case 'S': synth = optarg; break;
        case 'X': vsx = optarg; break;
        case 'v': vs = optarg; break;
        case 'b': if (cli_parse_int("bench", "--bs", optarg, 1, 1 << 20, &bs)) return 2; break;
        case 'a': ash = optarg; break;
        case 'V': if (cli_parse_int("bench", "--variant", optarg, 0, 10, &variant)) return 2; break;
        case 'j': json = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        cli_error("bench", "unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (d != 64 && d != 128) {
        cli_error("bench", "--dim %d: the kernels support 64 and 128", d);
        return 2;
    }
    if (H % Hkv) {
        cli_error("bench", "--heads %d is not a multiple of --kv-heads %d", H, Hkv);
        return 2;
    }
    if (check_list("--n", ns, 1) || check_list("--patterns", pats, 0)) return 2;
    if (synth) {
        if (!ns_set) ns = "32768,131072";
        if (!pats_set) pats = "vs,bs,ashape";
        if (!reps_set) reps = 1;
    }
#ifndef ATTNSCOPE_CUDA
    (void)ns, (void)pats, (void)json, (void)vs, (void)ash, (void)reps, (void)bs, (void)variant, (void)synth, (void)vsx;
    cli_error("bench", "this build has no CUDA backend (nvcc was not found at build time)");
    return 1;
#else
    krn_bench_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.H = H, cfg.Hkv = Hkv, cfg.d = d, cfg.reps = reps, cfg.dense_variant = variant;
    if (vsx && (parse_pair(vsx, &cfg.vsx_cols, &cfg.vsx_diags) || cfg.vsx_cols < 1 || cfg.vsx_diags < 1)) {
        cli_error("bench", "--vs-fixed '%s': want C,D (columns, diagonals), both >= 1", vsx);
        return 2;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", pats);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (cfg.n_pats == KRN_BENCH_MAX_PATS) {
            cli_error("bench", "--patterns: at most %d", KRN_BENCH_MAX_PATS);
            return 2;
        }
        eng_pat_kind kind;
        eng_pattern *p = &cfg.pats[cfg.n_pats++];
        memset(p, 0, sizeof *p);
        if (!eng_pattern_kind_parse(t, &kind) &&
            (kind == ENG_PAT_XATTN || kind == ENG_PAT_FLEX || kind == ENG_PAT_DMA || kind == ENG_PAT_NM)) {
            *p = eng_pattern_make(kind); /* xattn / flex: krn_xflex.cu; dma / nm: krn_dma.cu */
        } else if (!strcmp(t, "vs")) {
            p->kind = ENG_PAT_VS;
            if (parse_pair(vs, &p->vertical, &p->slash)) {
                cli_error("bench", "--vs '%s': want V,S", vs);
                return 2;
            }
        } else if (!strcmp(t, "bs")) {
            p->kind = ENG_PAT_BS, p->topk = bs;
        } else if (!strcmp(t, "ashape")) {
            p->kind = ENG_PAT_ASHAPE;
            if (parse_pair(ash, &p->n_init, &p->n_local) || p->n_local < 1) {
                cli_error("bench", "--ashape '%s': want I,L with L >= 1", ash);
                return 2;
            }
        } else if (!strcmp(t, "dense")) {
            p->kind = ENG_PAT_DENSE;
        } else {
            cli_error("bench", "--patterns: unknown pattern '%s' (vs, bs, ashape, dense, xattn, flex, dma, nm)", t);
            return 2;
        }
    }
    eng_err err = {{0}};
    char dev[256];
    if (krn_bench_device(dev, sizeof dev, &err)) {
        cli_error("bench", "%s", err.msg);
        return 1;
    }
    if (synth) return bench_prefill(synth, ns, &cfg, reps, json, dev);
    printf("attnscope bench: %s, H=%d Hkv=%d d=%d, bf16, causal, median of %d\n", dev, H, Hkv, d, reps);
    printf("%8s  %-34s %9s %9s %9s %8s %8s %9s %9s\n", "N", "kernel", "index ms", "attn ms", "total ms", "density",
           "vs dense", "TFLOP/s", "TF/s tot");
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "rows");
    cJSON_AddStringToObject(root, "device", dev);
    cJSON_AddStringToObject(root, "command", cli_cmdline);
    int rc = 0;
    snprintf(buf, sizeof buf, "%s", ns);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (cli_parse_int("bench", "--n", t, 1, 1 << 22, &cfg.n)) {
            rc = 2;
            break;
        }
        double need, fr;
        if (krn_bench_memory(&cfg, &need, &fr, &err)) {
            cli_error("bench", "%s", err.msg);
            rc = 1;
            break;
        }
        if (need > fr) {
            cli_error("bench", "N=%d needs about %.1f GiB of GPU memory, %.1f GiB free: skipped", cfg.n,
                      need / (1 << 30), fr / (1 << 30));
            rc = 1;
            continue;
        }
        krn_bench_row rows[2 + KRN_BENCH_MAX_PATS];
        if (krn_bench_attention(&cfg, rows, &err)) {
            cli_error("bench", "N=%d: %s", cfg.n, err.msg);
            rc = 1;
            break;
        }
        for (int i = 0; i <= cfg.n_pats + (cfg.vsx_cols > 0); i++) {
            const krn_bench_row *r = &rows[i];
            printf("%8d  %-34s %9.3f %9.3f %9.3f %8.4f %7.2fx %9.1f %9.1f\n", cfg.n, r->name, r->index_ms, r->attn_ms,
                   r->total_ms, r->density, rows[0].total_ms / r->total_ms, r->tflops, r->tflops_total);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "n", cfg.n);
            cJSON_AddStringToObject(o, "kernel", r->name);
            cJSON_AddNumberToObject(o, "index_ms", r->index_ms);
            cJSON_AddNumberToObject(o, "attn_ms", r->attn_ms);
            cJSON_AddNumberToObject(o, "total_ms", r->total_ms);
            cJSON_AddNumberToObject(o, "pairs", (double)r->pairs);
            cJSON_AddNumberToObject(o, "density", r->density);
            cJSON_AddNumberToObject(o, "speedup_vs_dense", rows[0].total_ms / r->total_ms);
            cJSON_AddNumberToObject(o, "tflops", r->tflops);
            cJSON_AddNumberToObject(o, "tflops_total", r->tflops_total);
            if (i > cfg.n_pats) cJSON_AddNumberToObject(o, "fixed_lines_merge_ms", r->aux_ms);
            cJSON_AddItemToArray(arr, o);
        }
        fflush(stdout);
    }
    if (json) {
        char *txt = cJSON_Print(root);
        if (!txt || cli_write_atomic("bench", json, txt, strlen(txt))) rc = 1;
        free(txt);
    }
    cJSON_Delete(root);
    return rc;
#endif
}
