/* cmd_eval: `attnscope eval passkey` (needle-in-a-haystack accuracy per pattern over context
 * length x needle depth: table, --json, one PNG heatmap per pattern) and `attnscope eval ppl`
 * (perplexity versus context length per pattern). The work is engine/eng_eval.c; this file parses
 * flags, builds each pattern's per-length config and renders the results. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "eng_backend.h"
#include "eng_eval.h"
#include "eng_model.h"
#include "eng_patcfg.h"
#include "eng_pattern.h"
#include "eng_search.h"
#include "eng_tok.h"
#include "viz_font.h"
#include "viz_png.h"

#define MAX_ITEMS 64
#define TEXT_MAX_BYTES (256u << 20)

static void usage(FILE *f) {
    fprintf(f,
            "usage: attnscope eval passkey --model DIR [--lengths 1k,2k,4k,8k] [--depths 0,25,50,75,100]\n"
            "                              [--patterns dense,ashape,vs,bs,xattn,...,CFG.json] [--trials N]\n"
            "                              [--json OUT]\n"
            "                              [--png-dir D] [--haystack FILE] [--seed S] [--ref-len N] [--backend B]\n"
            "       attnscope eval ppl --model DIR --text FILE [--lengths ...] [--patterns ...] [--windows N]\n"
            "                              [--json OUT] [--ref-len N] [--backend B]\n\n"
            "Accuracy of sparse prefill patterns on a real model.\n"
            "  passkey: a 5-digit key hidden at each depth of a haystack, asked for at the end; the prefill\n"
            "           runs under the pattern, the answer is decoded greedily with dense attention over the\n"
            "           KV cache (as MInference). Prints accuracy per pattern x length and per depth.\n"
            "  ppl:     perplexity of --text in non-overlapping windows of each length.\n\n"
            "  --model DIR       Hugging Face checkpoint directory (required)\n"
            "  --lengths L,...   context lengths in tokens, 1k = 1024 (default 1k,2k,4k,8k up to the\n"
            "                    model's max_position_embeddings)\n"
            "  --depths D,...    needle depths in percent of the haystack (default 0,25,50,75,100)\n"
            "  --patterns P,...  dense, ashape, vs, bs (the paper's budgets), xattn, flex, dma (a\n"
            "                    training-free adaptation), nm (their defaults; docs/patterns.md), budgets\n"
            "                    scaled to each length by length/--ref-len; or per-head config files, used\n"
            "                    with their budgets as written, as `run --patterns` does (reshape and other\n"
            "                    parameters: in a file) (default dense,ashape,vs,bs)\n"
            "  --trials N        prompts per (length, depth) cell (default 4)\n"
            "  --haystack FILE   haystack text (default: the classic repeated filler sentences)\n"
            "  --seed S          seed of the keys (default 1)\n"
            "  --ref-len N       length the named patterns' budgets refer to (default %d; 0: unscaled)\n"
            "  --text FILE       (ppl) text to score\n"
            "  --windows N       (ppl) windows per length, at most (default 4)\n"
            "  --json OUT        write every number to OUT\n"
            "  --png-dir D       (passkey) write D/passkey_<pattern>.png heatmaps (length x depth)\n"
            "  --backend B       auto (default), cpu or cuda\n"
            "  -h, --help        this help\n",
            ENG_SEARCH_REFERENCE_LEN);
}

/* One entry of --patterns: a named kind (budgets scaled per length) or a config file. */
typedef struct {
    char name[64];
    int is_file;
    eng_pattern pat;     /* named kinds */
    eng_patcfg pc;       /* files */
} pat_item;

typedef struct {
    const char *sub;
    const char *model_dir, *lengths_s, *depths_s, *patterns_s, *json, *png_dir, *haystack, *text, *backend;
    int trials, windows, ref_len;
    long long seed;
} eval_args;

/* Split s at commas into up to max parts (copied into buf); -1 on an empty part or too many. */
static int split_list(const char *s, char *buf, size_t cap, char **parts, int max) {
    if (strlen(s) + 1 > cap) return -1;
    strcpy(buf, s);
    int n = 0;
    for (char *p = buf;;) {
        char *c = strchr(p, ',');
        if (c) *c = 0;
        if (!*p || n == max) return -1;
        parts[n++] = p;
        if (!c) break;
        p = c + 1;
    }
    return n;
}

static int parse_lengths(const char *sub, const char *s, int *out, int max) {
    char buf[1024], *parts[MAX_ITEMS];
    int n = split_list(s, buf, sizeof buf, parts, max < MAX_ITEMS ? max : MAX_ITEMS);
    if (n < 0) {
        cli_error(sub, "--lengths: bad list '%s' (want e.g. 1k,2k,4k)", s);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (eng_eval_parse_len(parts[i], &out[i])) {
            cli_error(sub, "--lengths: bad length '%s' (want a token count such as 4096 or 4k)", parts[i]);
            return -1;
        }
    return n;
}

static int parse_depths(const char *s, int *out, int max) {
    char buf[1024], *parts[MAX_ITEMS];
    int n = split_list(s, buf, sizeof buf, parts, max < MAX_ITEMS ? max : MAX_ITEMS);
    if (n < 0) {
        cli_error("eval passkey", "--depths: bad list '%s' (want e.g. 0,25,50,75,100)", s);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (cli_parse_int("eval passkey", "--depths", parts[i], 0, 100, &out[i])) return -1;
    return n;
}

static void items_free(pat_item *it, int n) {
    for (int i = 0; i < n; i++)
        if (it[i].is_file) eng_patcfg_free(&it[i].pc);
}

static int parse_patterns(const char *sub, const char *s, const eng_model *m, pat_item *it, int max) {
    char buf[4096], *parts[MAX_ITEMS];
    int n = split_list(s, buf, sizeof buf, parts, max < MAX_ITEMS ? max : MAX_ITEMS);
    if (n < 0) {
        cli_error(sub, "--patterns: bad list '%s' (want e.g. dense,ashape,vs,bs or a CFG.json)", s);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        memset(&it[i], 0, sizeof it[i]);
        eng_pat_kind k;
        if (!eng_pattern_kind_parse(parts[i], &k)) {
            snprintf(it[i].name, sizeof it[i].name, "%s", eng_pattern_kind_name(k));
            it[i].pat = eng_pattern_make(k);
            continue;
        }
        struct stat st;
        if (stat(parts[i], &st) != 0) {
            cli_error(sub, "--patterns: '%s' is neither a pattern (dense, ashape, vs, bs, xattn, flex, dma, nm) nor a "
                           "readable file",
                      parts[i]);
            items_free(it, i);
            return -1;
        }
        eng_err err;
        it[i].is_file = 1;
        if (eng_patcfg_load(&it[i].pc, parts[i], &err) ||
            eng_patcfg_check_model(&it[i].pc, m->cfg.n_layers, m->cfg.n_heads, &err)) {
            cli_error(sub, "--patterns %s: %s", parts[i], err.msg);
            it[i].is_file = 0;
            items_free(it, i);
            return -1;
        }
        const char *b = strrchr(parts[i], '/');
        b = b ? b + 1 : parts[i];
        snprintf(it[i].name, sizeof it[i].name, "%s", b);
        char *dot = strrchr(it[i].name, '.');
        if (dot && dot != it[i].name) *dot = 0;
        for (char *p = it[i].name; *p; p++) /* the name becomes part of a PNG file name */
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                  *p == '_' || *p == '.'))
                *p = '_';
    }
    return n;
}

/* The config item i runs with at length n; *use is NULL for dense. dst->heads may be malloc'd. */
static int item_cfg(const pat_item *it, const eng_model *m, int n, int ref_len, eng_pattern_cfg *dst,
                    const eng_pattern_cfg **use, eng_err *err) {
    memset(dst, 0, sizeof *dst);
    *use = NULL;
    if (!it->is_file) {
        if (it->pat.kind == ENG_PAT_DENSE) return 0;
        eng_pattern_cfg src = {.n_layers = m->cfg.n_layers, .n_heads = m->cfg.n_heads, .def = it->pat};
        if (eng_eval_cfg_scaled(&src, n, ref_len, dst, err)) return -1;
    } else if (eng_eval_cfg_scaled(&it->pc.cfg, n, 0, dst, err)) /* files: budgets as written, as `run` */
        return -1;
    *use = dst;
    return 0;
}

/* "vs(vertical=125,slash=762)" for a named item at length n, "per-head config" for files. */
static void item_describe(const pat_item *it, int n, int ref_len, char *buf, int cap) {
    if (it->is_file) {
        snprintf(buf, (size_t)cap, "per-head config (budgets as written)");
        return;
    }
    if (it->pat.kind == ENG_PAT_DENSE) {
        snprintf(buf, (size_t)cap, "dense");
        return;
    }
    eng_pattern p = eng_search_scale(&it->pat, n, ref_len);
    eng_pattern_describe(&p, buf, cap);
}

static int parse_args(int argc, char **argv, eval_args *a) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"lengths", required_argument, 0, 'l'},
        {"depths", required_argument, 0, 'd'},  {"patterns", required_argument, 0, 'P'},
        {"trials", required_argument, 0, 'n'},  {"json", required_argument, 0, 'j'},
        {"png-dir", required_argument, 0, 'g'}, {"haystack", required_argument, 0, 'H'},
        {"text", required_argument, 0, 't'},    {"windows", required_argument, 0, 'w'},
        {"seed", required_argument, 0, 's'},    {"ref-len", required_argument, 0, 'r'},
        {"backend", required_argument, 0, 'b'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const int pk = !strcmp(a->sub, "eval passkey");
    optind = 1;
    opterr = 0;
    int c, v;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model_dir = optarg; break;
        case 'l': a->lengths_s = optarg; break;
        case 'd': a->depths_s = optarg; break;
        case 'P': a->patterns_s = optarg; break;
        case 'n':
            if (cli_parse_int(a->sub, "--trials", optarg, 1, 100000, &a->trials)) return 2;
            break;
        case 'j': a->json = optarg; break;
        case 'g': a->png_dir = optarg; break;
        case 'H': a->haystack = optarg; break;
        case 't': a->text = optarg; break;
        case 'w':
            if (cli_parse_int(a->sub, "--windows", optarg, 1, 1000000, &a->windows)) return 2;
            break;
        case 's':
            if (cli_parse_int(a->sub, "--seed", optarg, 0, 2000000000L, &v)) return 2;
            a->seed = v;
            break;
        case 'r':
            if (cli_parse_int(a->sub, "--ref-len", optarg, 0, 1 << 30, &a->ref_len)) return 2;
            break;
        case 'b': a->backend = optarg; break;
        case 'h': usage(stdout); return -1;
        case ':': cli_error(a->sub, "option '%s' needs a value", argv[optind - 1]); return 2;
        default: cli_error(a->sub, "unknown option '%s'", argv[optind - 1]); return 2;
        }
    }
    if (optind < argc) {
        cli_error(a->sub, "unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (!a->model_dir) {
        cli_error(a->sub, "--model DIR is required");
        return 2;
    }
    if (strcmp(a->backend, "auto") && strcmp(a->backend, "cpu") && strcmp(a->backend, "cuda")) {
        cli_error(a->sub, "--backend: bad value '%s' (want auto, cpu or cuda)", a->backend);
        return 2;
    }
    if (pk && (a->text || a->windows)) {
        cli_error(a->sub, "--text and --windows belong to 'eval ppl'");
        return 2;
    }
    if (!pk && (a->depths_s || a->trials || a->png_dir || a->haystack || a->seed >= 0)) {
        cli_error(a->sub, "--depths, --trials, --png-dir, --haystack and --seed belong to 'eval passkey'");
        return 2;
    }
    if (!pk && !a->text) {
        cli_error(a->sub, "--text FILE is required");
        return 2;
    }
    return 0;
}

/* Default lengths: 1k, 2k, 4k, 8k up to the model's trained context. */
static int default_lengths(const eng_model *m, int *out) {
    static const int all[] = {1024, 2048, 4096, 8192};
    int n = 0, mx = m->cfg.max_position_embeddings;
    for (int i = 0; i < 4; i++)
        if (mx <= 0 || all[i] <= mx) out[n++] = all[i];
    if (!n) out[n++] = mx;
    return n;
}

static void progress(const char *what, int done, int total) {
    if (!isatty(2)) return;
    fprintf(stderr, "\r\033[K%s (%d/%d)", what, done, total);
    if (done == total) fprintf(stderr, "\r\033[K");
    fflush(stderr);
}

static int write_json(const char *sub, const char *path, cJSON *r) {
    char *s = cJSON_Print(r);
    if (!s) {
        cli_error(sub, "out of memory writing %s", path);
        return -1;
    }
    size_t len = strlen(s);
    s[len] = 0;
    char *buf = malloc(len + 2);
    int rc = -1;
    if (buf) {
        memcpy(buf, s, len);
        buf[len] = '\n';
        rc = cli_write_atomic(sub, path, buf, len + 1);
    } else
        cli_error(sub, "out of memory writing %s", path);
    free(buf);
    cJSON_free(s);
    return rc;
}

/* Red (0) -> yellow (0.5) -> green (1), as the MInference needle figures. */
static viz_rgb acc_rgb(double t) {
    static const viz_rgb r = {215, 48, 39}, y = {254, 224, 139}, g = {26, 152, 80};
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    viz_rgb a = t < 0.5 ? r : y, b = t < 0.5 ? y : g;
    double u = t < 0.5 ? t * 2 : (t - 0.5) * 2;
    viz_rgb o = {(uint8_t)lround(a.r + (b.r - a.r) * u), (uint8_t)lround(a.g + (b.g - a.g) * u),
                 (uint8_t)lround(a.b + (b.b - a.b) * u)};
    return o;
}

/* One heatmap: columns = lengths, rows = depths (0% on top); each cell shows its accuracy. */
static int write_png(const char *dir, const char *name, const char *model, const int *lengths, int nl,
                     const int *depths, int nd, const eng_passkey_cell *cells, double mean) {
    const int cw = 64, ch = 30, fs = 2, left = 110, top = 70, right = 30, bottom = 80;
    const char *xlabel = "context length (tokens)";
    int W = left + cw * nl + right;
    const int Hh = top + ch * nd + bottom, wl = left + viz_font_text_width(xlabel, fs) + right;
    W = W > wl ? W : wl;
    viz_canvas cv;
    eng_err err;
    const viz_rgb white = {255, 255, 255}, black = {0, 0, 0}, grey = {90, 90, 90};
    if (viz_canvas_init(&cv, W, Hh, 3, white, &err)) {
        cli_error("eval passkey", "%s", err.msg);
        return -1;
    }
    char t[256];
    snprintf(t, sizeof t, "passkey: %s", name);
    viz_canvas_text(&cv, 10, 10, t, fs, black);
    snprintf(t, sizeof t, "%.200s  mean %.1f%%", model, 100.0 * mean);
    viz_canvas_text(&cv, 10, 10 + 11 * fs, t, 1, grey);
    for (int di = 0; di < nd; di++) {
        snprintf(t, sizeof t, "%d%%", depths[di]);
        viz_canvas_text(&cv, left - 8 - viz_font_text_width(t, fs), top + di * ch + (ch - 9 * fs) / 2, t, fs, black);
        for (int li = 0; li < nl; li++) {
            const eng_passkey_cell *c = &cells[li * nd + di];
            const double acc = c->trials ? (double)c->correct / c->trials : 0.0;
            viz_canvas_fill(&cv, left + li * cw, top + di * ch, cw - 1, ch - 1, acc_rgb(acc), 1.0f);
            snprintf(t, sizeof t, "%.0f", 100.0 * acc);
            viz_canvas_text(&cv, left + li * cw + (cw - viz_font_text_width(t, fs)) / 2,
                            top + di * ch + (ch - 7 * fs) / 2, t, fs, black);
        }
    }
    for (int li = 0; li < nl; li++) {
        if (lengths[li] % 1024 == 0) snprintf(t, sizeof t, "%dk", lengths[li] / 1024);
        else snprintf(t, sizeof t, "%d", lengths[li]);
        viz_canvas_text(&cv, left + li * cw + (cw - viz_font_text_width(t, fs)) / 2, top + nd * ch + 8, t, fs, black);
    }
    viz_canvas_text(&cv, left, top + nd * ch + 8 + 12 * fs, xlabel, fs, grey);
    viz_canvas_text_up(&cv, 8, top, "depth", fs, grey);
    char path[4096];
    snprintf(path, sizeof path, "%s/passkey_%s.png", dir, name);
    int rc = viz_png_write(path, &cv, cli_cmdline, &err);
    if (rc) cli_error("eval passkey", "%s", err.msg);
    else printf("wrote %s\n", path);
    viz_canvas_free(&cv);
    return rc;
}

typedef struct {
    eng_model *m;
    eng_tokenizer *tok;
    eng_backend *be;
    pat_item items[MAX_ITEMS];
    int n_items;
    int lengths[MAX_ITEMS], n_len;
} eval_ctx;

static void ctx_free(eval_ctx *x) {
    items_free(x->items, x->n_items);
    if (x->be) x->be->destroy(x->be);
    eng_tok_free(x->tok);
    eng_model_free(x->m);
}

/* Model, tokenizer, backend, lengths and patterns: 0 ok, else the exit code. */
static int ctx_open(eval_ctx *x, const eval_args *a) {
    eng_err err = {{0}};
    if (eng_model_load(&x->m, a->model_dir, &err)) {
        cli_error(a->sub, "%s", err.msg);
        return 1;
    }
    if (!(x->tok = eng_tok_load(a->model_dir, &x->m->cfg, &err))) {
        cli_error(a->sub, "%s", err.msg);
        return 2;
    }
    if (a->lengths_s) {
        if ((x->n_len = parse_lengths(a->sub, a->lengths_s, x->lengths, MAX_ITEMS)) < 0) return 2;
    } else
        x->n_len = default_lengths(x->m, x->lengths);
    const int mx = x->m->cfg.max_position_embeddings;
    for (int i = 0; i < x->n_len; i++)
        if (mx > 0 && x->lengths[i] > mx)
            fprintf(stderr, "attnscope %s: note: length %d is beyond the model's max_position_embeddings %d\n", a->sub,
                    x->lengths[i], mx);
    const char *ps = a->patterns_s ? a->patterns_s : "dense,ashape,vs,bs";
    if ((x->n_items = parse_patterns(a->sub, ps, x->m, x->items, MAX_ITEMS)) < 0) {
        x->n_items = 0;
        return 2;
    }
    if (!(x->be = eng_backend_create(a->backend, &err))) {
        cli_error(a->sub, "backend %s: %s", a->backend, err.msg);
        return 1;
    }
    return 0;
}

/* Width of the pattern-name column: the longest name, at least 12. */
static int name_width(const eval_ctx *x) {
    int w = 12;
    for (int i = 0; i < x->n_items; i++) {
        int l = (int)strlen(x->items[i].name) + 1;
        w = l > w ? l : w;
    }
    return w;
}

static void print_header(const eval_ctx *x, const char *what) {
    printf("%s: %s (%s, %d layers, %.2fM params)\n", what, x->m->dir, x->m->cfg.arch_name, x->m->cfg.n_layers,
           (double)x->m->n_params / 1e6);
    printf("backend: %s - %s\n", x->be->name, x->be->device);
}

static int eval_passkey(int argc, char **argv) {
    eval_args a = {.sub = "eval passkey", .backend = "auto", .seed = -1, .ref_len = ENG_SEARCH_REFERENCE_LEN};
    int prc = parse_args(argc, argv, &a);
    if (prc) {
        if (prc > 0) usage(stderr);
        return prc > 0 ? prc : 0;
    }
    if (!a.trials) a.trials = 4;
    if (a.seed < 0) a.seed = 1;
    int depths[MAX_ITEMS], nd = 5;
    memcpy(depths, (int[]){0, 25, 50, 75, 100}, sizeof(int) * 5);
    if (a.depths_s && (nd = parse_depths(a.depths_s, depths, MAX_ITEMS)) < 0) return 2;
    if (a.png_dir) {
        struct stat st;
        if (stat(a.png_dir, &st) != 0 && mkdir(a.png_dir, 0777) != 0) {
            cli_error(a.sub, "--png-dir %s: cannot create it: %s", a.png_dir, strerror(errno));
            return 1;
        }
        if (stat(a.png_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            cli_error(a.sub, "--png-dir %s: not a directory", a.png_dir);
            return 1;
        }
    }
    eval_ctx x;
    memset(&x, 0, sizeof x);
    int rc = ctx_open(&x, &a);
    char *hay = NULL;
    size_t hay_len = 0;
    eng_passkey *pk = NULL;
    eng_passkey_cell *cells = NULL;
    cJSON *root = NULL;
    eng_err err = {{0}};
    if (rc) goto done;
    rc = 1;
    if (a.haystack && !(hay = cli_read_file(a.sub, a.haystack, TEXT_MAX_BYTES, &hay_len))) goto done;
    if (eng_passkey_new(&pk, x.tok, hay, hay_len, &err)) {
        cli_error(a.sub, "%s", err.msg);
        goto done;
    }
    const int per = x.n_len * nd;
    if (!(cells = calloc((size_t)x.n_items * per, sizeof *cells))) {
        cli_error(a.sub, "out of memory");
        goto done;
    }
    print_header(&x, "passkey retrieval");
    printf("haystack: %s; %d depths x %d trials per length; seed %lld\n", a.haystack ? a.haystack : "built-in filler",
           nd, a.trials, a.seed);
    const int total = x.n_items * per;
    int done_cells = 0;
    for (int i = 0; i < x.n_items; i++)
        for (int li = 0; li < x.n_len; li++) {
            eng_pattern_cfg cfg;
            const eng_pattern_cfg *use;
            if (item_cfg(&x.items[i], x.m, x.lengths[li], a.ref_len, &cfg, &use, &err)) {
                cli_error(a.sub, "%s", err.msg);
                goto done;
            }
            for (int di = 0; di < nd; di++) {
                char what[160];
                snprintf(what, sizeof what, "%s: length %d depth %d%%", x.items[i].name, x.lengths[li], depths[di]);
                progress(what, done_cells, total);
                if (eng_passkey_run(x.be, x.m, pk, use, x.lengths[li], depths[di], a.trials, (uint64_t)a.seed,
                                    &cells[i * per + li * nd + di], &err)) {
                    eng_eval_cfg_free(&cfg);
                    progress("", total, total);
                    cli_error(a.sub, "%s at length %d, depth %d%%: %s", x.items[i].name, x.lengths[li], depths[di],
                              err.msg);
                    goto done;
                }
                progress(what, ++done_cells, total);
            }
            eng_eval_cfg_free(&cfg);
        }

    /* summary: pattern x length, accuracy over depths and trials */
    const int nw = name_width(&x);
    printf("\naccuracy (%%, over %d depths x %d trials)\n%-*s", nd, a.trials, nw, "pattern");
    for (int li = 0; li < x.n_len; li++) printf(" %7d", x.lengths[li]);
    printf("    mean  budgets at %d tokens\n", x.lengths[x.n_len - 1]);
    double *mean = calloc((size_t)x.n_items, sizeof *mean);
    if (!mean) {
        cli_error(a.sub, "out of memory");
        goto done;
    }
    for (int i = 0; i < x.n_items; i++) {
        printf("%-*s", nw, x.items[i].name);
        int ok = 0, tot = 0;
        for (int li = 0; li < x.n_len; li++) {
            int c = 0, t = 0;
            for (int di = 0; di < nd; di++) c += cells[i * per + li * nd + di].correct, t += cells[i * per + li * nd + di].trials;
            printf(" %7.1f", 100.0 * c / t);
            ok += c, tot += t;
        }
        char desc[160];
        item_describe(&x.items[i], x.lengths[x.n_len - 1], a.ref_len, desc, sizeof desc);
        mean[i] = (double)ok / tot;
        printf(" %7.1f  %s\n", 100.0 * mean[i], desc);
    }
    for (int i = 0; i < x.n_items; i++) {
        printf("\n%s: accuracy by depth (rows) and length (columns), %%\n%-8s", x.items[i].name, "depth");
        for (int li = 0; li < x.n_len; li++) printf(" %7d", x.lengths[li]);
        printf("\n");
        for (int di = 0; di < nd; di++) {
            printf("%6d%% ", depths[di]);
            for (int li = 0; li < x.n_len; li++) {
                const eng_passkey_cell *c = &cells[i * per + li * nd + di];
                printf(" %7.0f", 100.0 * c->correct / c->trials);
            }
            printf("\n");
        }
        printf("%-8s", "prefill");
        for (int li = 0; li < x.n_len; li++) {
            double s = 0;
            int t = 0;
            for (int di = 0; di < nd; di++) s += cells[i * per + li * nd + di].prefill_s, t += cells[i * per + li * nd + di].trials;
            printf(" %6.2fs", s / t);
        }
        printf("  (mean seconds per prompt)\n");
    }

    rc = 0;
    if (a.png_dir) {
        const char *mn = strrchr(x.m->dir, '/');
        mn = mn && mn[1] ? mn + 1 : x.m->dir;
        for (int i = 0; i < x.n_items; i++)
            if (write_png(a.png_dir, x.items[i].name, mn, x.lengths, x.n_len, depths, nd, cells + (size_t)i * per,
                          mean[i]))
                rc = 1;
    }
    if (a.json) {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "command", cli_cmdline);
        cJSON_AddStringToObject(root, "benchmark", "passkey");
        cJSON_AddStringToObject(root, "model", x.m->dir);
        cJSON_AddStringToObject(root, "backend", x.be->name);
        cJSON_AddStringToObject(root, "device", x.be->device);
        cJSON_AddStringToObject(root, "haystack", a.haystack ? a.haystack : "built-in filler");
        cJSON_AddNumberToObject(root, "trials", a.trials);
        cJSON_AddNumberToObject(root, "seed", (double)a.seed);
        cJSON_AddNumberToObject(root, "reference_len", a.ref_len);
        cJSON_AddItemToObject(root, "lengths", cJSON_CreateIntArray(x.lengths, x.n_len));
        cJSON_AddItemToObject(root, "depths", cJSON_CreateIntArray(depths, nd));
        cJSON *pa = cJSON_AddArrayToObject(root, "patterns");
        for (int i = 0; i < x.n_items; i++) {
            cJSON *p = cJSON_CreateObject();
            cJSON_AddStringToObject(p, "name", x.items[i].name);
            cJSON_AddNumberToObject(p, "accuracy", mean[i]);
            cJSON *pl = cJSON_AddArrayToObject(p, "lengths");
            for (int li = 0; li < x.n_len; li++) {
                cJSON *l = cJSON_CreateObject();
                char desc[160];
                item_describe(&x.items[i], x.lengths[li], a.ref_len, desc, sizeof desc);
                cJSON_AddNumberToObject(l, "length", x.lengths[li]);
                cJSON_AddStringToObject(l, "pattern", desc);
                int c = 0, t = 0;
                cJSON *cs = cJSON_AddArrayToObject(l, "depths");
                for (int di = 0; di < nd; di++) {
                    const eng_passkey_cell *ce = &cells[i * per + li * nd + di];
                    cJSON *o = cJSON_CreateObject();
                    cJSON_AddNumberToObject(o, "depth", ce->depth_pct);
                    cJSON_AddNumberToObject(o, "correct", ce->correct);
                    cJSON_AddNumberToObject(o, "trials", ce->trials);
                    cJSON_AddNumberToObject(o, "prefill_seconds", ce->prefill_s);
                    cJSON_AddNumberToObject(o, "decode_seconds", ce->decode_s);
                    cJSON_AddStringToObject(o, "last_answer", ce->sample);
                    cJSON_AddItemToArray(cs, o);
                    c += ce->correct, t += ce->trials;
                }
                cJSON_AddNumberToObject(l, "accuracy", (double)c / t);
                cJSON_AddItemToArray(pl, l);
            }
            cJSON_AddItemToArray(pa, p);
        }
        if (write_json(a.sub, a.json, root)) rc = 1;
    }
    free(mean);
done:
    cJSON_Delete(root);
    free(cells);
    eng_passkey_free(pk);
    free(hay);
    ctx_free(&x);
    return rc;
}

static int eval_ppl(int argc, char **argv) {
    eval_args a = {.sub = "eval ppl", .backend = "auto", .seed = -1, .ref_len = ENG_SEARCH_REFERENCE_LEN};
    int prc = parse_args(argc, argv, &a);
    if (prc) {
        if (prc > 0) usage(stderr);
        return prc > 0 ? prc : 0;
    }
    if (!a.windows) a.windows = 4;
    eval_ctx x;
    memset(&x, 0, sizeof x);
    int rc = ctx_open(&x, &a);
    char *text = NULL;
    int *ids = NULL, n = 0;
    eng_ppl_cell *cells = NULL;
    cJSON *root = NULL;
    eng_err err = {{0}};
    if (rc) goto done;
    rc = 1;
    size_t len = 0;
    if (!(text = cli_read_file(a.sub, a.text, TEXT_MAX_BYTES, &len))) goto done;
    if (eng_tok_encode(x.tok, text, len, 0, &ids, &n, &err)) {
        cli_error(a.sub, "%s: %s", a.text, err.msg);
        goto done;
    }
    if (!(cells = calloc((size_t)x.n_items * x.n_len, sizeof *cells))) {
        cli_error(a.sub, "out of memory");
        goto done;
    }
    print_header(&x, "perplexity");
    printf("text: %s (%d tokens); at most %d windows per length\n", a.text, n, a.windows);
    const int bos = eng_tok_bos_id(x.tok);
    for (int i = 0; i < x.n_items; i++)
        for (int li = 0; li < x.n_len; li++) {
            eng_pattern_cfg cfg;
            const eng_pattern_cfg *use;
            char what[160];
            snprintf(what, sizeof what, "%s: length %d", x.items[i].name, x.lengths[li]);
            progress(what, i * x.n_len + li, x.n_items * x.n_len);
            if (item_cfg(&x.items[i], x.m, x.lengths[li], a.ref_len, &cfg, &use, &err) ||
                eng_ppl_run(x.be, x.m, ids, n, bos, use, x.lengths[li], a.windows, &cells[i * x.n_len + li], &err)) {
                eng_eval_cfg_free(&cfg);
                progress("", 1, 1);
                cli_error(a.sub, "%s at length %d: %s", x.items[i].name, x.lengths[li], err.msg);
                goto done;
            }
            eng_eval_cfg_free(&cfg);
            progress(what, i * x.n_len + li + 1, x.n_items * x.n_len);
        }
    const int nw = name_width(&x);
    printf("\nperplexity (windows scored)\n%-*s", nw, "pattern");
    for (int li = 0; li < x.n_len; li++) printf(" %10d", x.lengths[li]);
    printf("\n");
    for (int i = 0; i < x.n_items; i++) {
        printf("%-*s", nw, x.items[i].name);
        for (int li = 0; li < x.n_len; li++) {
            const eng_ppl_cell *c = &cells[i * x.n_len + li];
            char s[32];
            snprintf(s, sizeof s, "%.3f (%d)", c->ppl, c->windows);
            printf(" %10s", s);
        }
        printf("\n");
    }
    rc = 0;
    if (a.json) {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "command", cli_cmdline);
        cJSON_AddStringToObject(root, "benchmark", "ppl");
        cJSON_AddStringToObject(root, "model", x.m->dir);
        cJSON_AddStringToObject(root, "backend", x.be->name);
        cJSON_AddStringToObject(root, "device", x.be->device);
        cJSON_AddStringToObject(root, "text", a.text);
        cJSON_AddNumberToObject(root, "text_tokens", n);
        cJSON_AddNumberToObject(root, "reference_len", a.ref_len);
        cJSON_AddItemToObject(root, "lengths", cJSON_CreateIntArray(x.lengths, x.n_len));
        cJSON *pa = cJSON_AddArrayToObject(root, "patterns");
        for (int i = 0; i < x.n_items; i++) {
            cJSON *p = cJSON_CreateObject();
            cJSON_AddStringToObject(p, "name", x.items[i].name);
            cJSON *pl = cJSON_AddArrayToObject(p, "lengths");
            for (int li = 0; li < x.n_len; li++) {
                const eng_ppl_cell *c = &cells[i * x.n_len + li];
                cJSON *l = cJSON_CreateObject();
                char desc[160];
                item_describe(&x.items[i], x.lengths[li], a.ref_len, desc, sizeof desc);
                cJSON_AddNumberToObject(l, "length", c->length);
                cJSON_AddStringToObject(l, "pattern", desc);
                cJSON_AddNumberToObject(l, "windows", c->windows);
                cJSON_AddNumberToObject(l, "predicted", (double)c->predicted);
                cJSON_AddNumberToObject(l, "nll", c->nll);
                cJSON_AddNumberToObject(l, "ppl", c->ppl);
                cJSON_AddNumberToObject(l, "prefill_seconds", c->prefill_s);
                cJSON_AddItemToArray(pl, l);
            }
            cJSON_AddItemToArray(pa, p);
        }
        if (write_json(a.sub, a.json, root)) rc = 1;
    }
done:
    cJSON_Delete(root);
    free(cells);
    free(ids);
    free(text);
    ctx_free(&x);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "passkey")) return eval_passkey(argc - 1, argv + 1);
    if (!strcmp(argv[1], "ppl")) return eval_ppl(argc - 1, argv + 1);
    cli_error("eval", "unknown benchmark '%s' (want passkey or ppl)", argv[1]);
    usage(stderr);
    return 2;
}
