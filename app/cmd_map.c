/* cmd_map: `attnscope map` (one head's attention map), `attnscope grid` (every head of a layer,
 * each labelled with its pattern) and `attnscope diff` (dense | sparse | difference on one scale),
 * as PNG (--out) or on the terminal (--term). Each runs one dense prefill that keeps Q, K and the
 * row LSE, then pools maps with eng_map (never N x N) and draws them with viz/. --transform T draws
 * the 2:4 / INT8-transformed model (eng_transform.h); `diff --transform T` without --patterns draws
 * original | transformed | difference (a second prefill, of the original weights). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cli.h"
#include "eng_backend.h"
#include "eng_dma.h"
#include "eng_map.h"
#include "eng_model.h"
#include "eng_patcfg.h"
#include "eng_pattern.h"
#include "eng_tok.h"
#include "eng_transform.h"
#include "viz_color.h"
#include "viz_mapfig.h"
#include "viz_png.h"
#include "viz_term.h"

#define PROMPT_MAX_BYTES (64u << 20)

typedef enum { MODE_MAP = 0, MODE_GRID, MODE_DIFF } map_mode;
static const char *const mode_name[] = {"map", "grid", "diff"};

typedef struct {
    map_mode mode;
    const char *model_dir, *prompt, *text, *patterns, *out, *backend;
    unsigned xf;                  /* --transform: ENG_XF_* flags; 0 none */
    int layer, head;
    const char *qr, *kr;          /* "A:B" as given */
    int w, h;                     /* 0 = default */
    eng_pool pool;
    viz_cmap cmap;
    viz_scale_kind scale;
    float gamma;
    int term, no_color, threads;
} map_args;

static void usage(FILE *f, map_mode m) {
    const char *c = mode_name[m];
    if (m == MODE_MAP)
        fprintf(f, "usage: attnscope map --model DIR --prompt FILE --layer L --head H [--q A:B] [--k A:B]\n"
                   "                     [--size WxH] [--pool max|mean] [--cmap NAME] [--scale linear|log|power]\n"
                   "                     [--overlay CFG.json] (--out F.png | --term) [--no-color]\n\n"
                   "One head's attention map: every pixel pools the exact causal softmax probabilities of its\n"
                   "tile of (query, key) pairs (no N x N matrix is built).\n\n");
    else if (m == MODE_GRID)
        fprintf(f, "usage: attnscope grid --model DIR --prompt FILE --layer L [--patterns CFG.json] [--size WxH]\n"
                   "                      [--q A:B] [--k A:B] [--pool ...] [--cmap ...] [--scale ...]\n"
                   "                      (--out F.png | --term) [--no-color]\n\n"
                   "Every head of one layer on one shared scale, each panel labelled with its pattern\n"
                   "(from --patterns; dense when none is given).\n\n");
    else
        fprintf(f, "usage: attnscope diff --model DIR --prompt FILE --layer L --head H\n"
                   "                      (--patterns CFG.json | --transform T | both)\n"
                   "                      [--q A:B] [--k A:B] [--size WxH] [--pool ...] [--cmap ...] [--scale ...]\n"
                   "                      (--out F.png | --term) [--no-color]\n\n"
                   "Dense | sparse | |dense - sparse| for one head on one shared scale. The sparse panel shows\n"
                   "the probabilities the head's pattern computes (renormalised over them, as the sparse kernel\n"
                   "does); the third panel is the absolute difference of the two pooled maps.\n"
                   "With --transform T and no --patterns: original | transformed | |original - transformed|,\n"
                   "the dense maps of the original and the 2:4 / INT8-transformed weights.\n\n");
    fprintf(f, "  --model DIR        Hugging Face checkpoint directory (required)\n"
               "  --prompt FILE      prompt text (encoded with the model's tokenizer, BOS first)\n"
               "  --text STR         prompt text given inline instead of --prompt\n"
               "  --layer L          layer (0-based)\n"
               "%s"
               "  --q A:B            query rows [A, B) (default all; either end may be left out)\n"
               "  --k A:B            key columns [A, B) (default all)\n"
               "  --size WxH         map size in pixels (default %s; up to 8192x8192)\n"
               "  --pool max|mean    max (default) or mean of each tile's probabilities\n"
               "  --cmap NAME        viridis (default), magma, cividis or gray\n"
               "  --scale S          log (default), linear or power; --gamma G for power (default 0.5)\n"
               "%s"
               "  --transform T      draw a one-shot transformed copy of the attention and MLP weights: 24 (2:4\n"
               "                     magnitude pruning), int8 (symmetric per-channel INT8) or 24+int8\n"
               "  --out F.png        write a PNG (the command line is stored in it)\n"
               "  --term             print to the terminal (half blocks; truecolor/256/ASCII)\n"
               "  --no-color         ASCII ramp only (also when NO_COLOR is set)\n"
               "  --backend B        auto (default), cpu or cuda: where the prefill runs\n"
               "  --threads N        threads for pooling (default: all cores)\n"
               "  -h, --help         this help\n",
            m == MODE_GRID ? "" : "  --head H           query head (0-based)\n",
            m == MODE_GRID ? "256x256 per head" : "512x512; terminal: its size",
            m == MODE_MAP    ? "  --overlay CFG      draw the head's sparse index from a pattern config\n"
            : m == MODE_GRID ? "  --patterns CFG     per-head pattern config (labels)\n"
                             : "  --patterns CFG     per-head pattern config (required)\n");
    (void)c;
}

/* "A:B" with either side optional -> [a, b) inside [0, n). */
static int parse_range(const char *cmd, const char *flag, const char *s, int n, int *a, int *b) {
    *a = 0;
    *b = n;
    if (!s) return 0;
    const char *colon = strchr(s, ':');
    if (!colon) {
        cli_error(cmd, "%s: bad value '%s' (want A:B, e.g. 0:4096)", flag, s);
        return -1;
    }
    char lo[32] = {0}, hi[32] = {0};
    size_t la = (size_t)(colon - s), lb = strlen(colon + 1);
    if (la >= sizeof lo || lb >= sizeof hi) {
        cli_error(cmd, "%s: bad value '%s' (want A:B)", flag, s);
        return -1;
    }
    memcpy(lo, s, la);
    memcpy(hi, colon + 1, lb);
    if ((la && cli_parse_int(cmd, flag, lo, 0, n, a)) || (lb && cli_parse_int(cmd, flag, hi, 0, n, b))) return -1;
    if (*a >= *b) {
        cli_error(cmd, "%s: empty range [%d, %d) (the prompt has %d tokens)", flag, *a, *b, n);
        return -1;
    }
    return 0;
}

static int parse_size(const char *cmd, const char *s, int *w, int *h) {
    const char *x = s ? strchr(s, 'x') : NULL;
    char a[16] = {0};
    if (!x || (size_t)(x - s) >= sizeof a || x == s) {
        cli_error(cmd, "--size: bad value '%s' (want WxH, e.g. 512x512)", s ? s : "");
        return -1;
    }
    memcpy(a, s, (size_t)(x - s));
    return cli_parse_int(cmd, "--size (width)", a, 1, 8192, w) || cli_parse_int(cmd, "--size (height)", x + 1, 1, 8192, h)
               ? -1
               : 0;
}

static int parse_args(int argc, char **argv, map_mode mode, map_args *a) {
    const char *cmd = mode_name[mode];
    memset(a, 0, sizeof *a);
    a->mode = mode;
    a->layer = a->head = -1;
    a->pool = ENG_POOL_MAX;
    a->cmap = VIZ_CMAP_VIRIDIS;
    a->scale = VIZ_SCALE_LOG;
    a->gamma = 0.5f;
    a->backend = "auto";
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"prompt", required_argument, 0, 'p'},
        {"text", required_argument, 0, 't'},   {"layer", required_argument, 0, 'l'},
        {"head", required_argument, 0, 'H'},   {"q", required_argument, 0, 'q'},
        {"k", required_argument, 0, 'k'},      {"size", required_argument, 0, 's'},
        {"pool", required_argument, 0, 'P'},   {"cmap", required_argument, 0, 'c'},
        {"scale", required_argument, 0, 'S'},  {"gamma", required_argument, 0, 'g'},
        {"overlay", required_argument, 0, 'o'}, {"patterns", required_argument, 0, 'C'},
        {"out", required_argument, 0, 'O'},    {"term", no_argument, 0, 'T'},
        {"no-color", no_argument, 0, 'n'},     {"backend", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 'j'}, {"help", no_argument, 0, 'h'},
        {"transform", required_argument, 0, 'X'}, {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model_dir = optarg; break;
        case 'p': a->prompt = optarg; break;
        case 't': a->text = optarg; break;
        case 'l': if (cli_parse_int(cmd, "--layer", optarg, 0, 1 << 20, &a->layer)) return 2; break;
        case 'H':
            if (mode == MODE_GRID) { cli_error(cmd, "--head: grid draws every head of the layer"); return 2; }
            if (cli_parse_int(cmd, "--head", optarg, 0, 1 << 20, &a->head)) return 2;
            break;
        case 'q': a->qr = optarg; break;
        case 'k': a->kr = optarg; break;
        case 's': if (parse_size(cmd, optarg, &a->w, &a->h)) return 2; break;
        case 'P':
            if (!strcmp(optarg, "max")) a->pool = ENG_POOL_MAX;
            else if (!strcmp(optarg, "mean")) a->pool = ENG_POOL_MEAN;
            else { cli_error(cmd, "--pool: bad value '%s' (want max or mean)", optarg); return 2; }
            break;
        case 'c':
            if (viz_cmap_parse(optarg, &a->cmap)) {
                cli_error(cmd, "--cmap: unknown colour map '%s' (want viridis, magma, cividis or gray)", optarg);
                return 2;
            }
            break;
        case 'S':
            if (viz_scale_parse(optarg, &a->scale)) {
                cli_error(cmd, "--scale: bad value '%s' (want linear, log or power)", optarg);
                return 2;
            }
            break;
        case 'g': if (cli_parse_float(cmd, "--gamma", optarg, 0.01, 100, &a->gamma)) return 2; break;
        case 'o':
            if (mode != MODE_MAP) { cli_error(cmd, "--overlay is for map; use --patterns"); return 2; }
            a->patterns = optarg;
            break;
        case 'C':
            if (mode == MODE_MAP) { cli_error(cmd, "--patterns: map takes --overlay CFG.json"); return 2; }
            a->patterns = optarg;
            break;
        case 'O': a->out = optarg; break;
        case 'T': a->term = 1; break;
        case 'n': a->no_color = 1; break;
        case 'b': a->backend = optarg; break;
        case 'j': if (cli_parse_int(cmd, "--threads", optarg, 1, 256, &a->threads)) return 2; break;
        case 'X':
            if (eng_transform_parse(optarg, &a->xf, &(eng_err){{0}})) {
                cli_error(cmd, "--transform: bad value '%s' (want 24, int8 or 24+int8)", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout, mode); return 0;
        case ':': cli_error(cmd, "%s needs a value", argv[optind - 1]); return 2;
        default: cli_error(cmd, "unknown option '%s' (see attnscope %s --help)", argv[optind - 1], cmd); return 2;
        }
    }
    if (optind < argc) { cli_error(cmd, "unexpected argument '%s'", argv[optind]); return 2; }
    if (!a->model_dir) { cli_error(cmd, "--model DIR is required"); return 2; }
    if ((a->prompt != NULL) == (a->text != NULL)) { cli_error(cmd, "give exactly one of --prompt FILE or --text STR"); return 2; }
    if (a->layer < 0) { cli_error(cmd, "--layer L is required"); return 2; }
    if (mode != MODE_GRID && a->head < 0) { cli_error(cmd, "--head H is required"); return 2; }
    if (mode == MODE_DIFF && !a->patterns && !a->xf) {
        cli_error(cmd, "--patterns CFG.json (dense vs sparse) or --transform T (original vs transformed) is required");
        return 2;
    }
    if ((a->out != NULL) == (a->term != 0)) { cli_error(cmd, "give exactly one of --out F.png or --term"); return 2; }
    if (getenv("NO_COLOR") && *getenv("NO_COLOR")) a->no_color = 1;
    return -1; /* go on */
}

/* Everything a figure needs from the model and the prompt. */
typedef struct {
    eng_model *m;
    eng_tokenizer *tok;
    eng_backend *be;
    eng_patcfg pc;
    int have_pc;
    int *ids, n;
    eng_prefill_out po;  /* the model drawn: the transformed one with --transform */
    int have_po;
    eng_transformed xf;  /* --transform: the transformed copy (shares m's untouched tensors) */
    eng_prefill_out po0; /* diff --transform without --patterns: the original weights' prefill */
    int have_po0;
    char title_model[224]; /* model name for titles, naming the transform */
    const char **labels; /* [n] token texts (owned by tok) */
} map_ctx;

static void ctx_free(map_ctx *c) {
    if (c->have_po) eng_prefill_out_free(&c->po);
    if (c->have_po0) eng_prefill_out_free(&c->po0);
    eng_transform_free(&c->xf); /* before m */
    if (c->be) c->be->destroy(c->be);
    if (c->have_pc) eng_patcfg_free(&c->pc);
    eng_tok_free(c->tok);
    eng_model_free(c->m);
    free(c->ids);
    free(c->labels);
}

static int ctx_open(const map_args *a, map_ctx *c) {
    const char *cmd = mode_name[a->mode];
    eng_err err = {{0}};
    memset(c, 0, sizeof *c);
    if (eng_model_load(&c->m, a->model_dir, &err)) { cli_error(cmd, "%s", err.msg); return -1; }
    const eng_config *cfg = &c->m->cfg;
    if (a->layer >= cfg->n_layers) {
        cli_error(cmd, "--layer %d: the model has %d layers (0..%d)", a->layer, cfg->n_layers, cfg->n_layers - 1);
        return -1;
    }
    if (a->head >= cfg->n_heads) {
        cli_error(cmd, "--head %d: the model has %d query heads (0..%d)", a->head, cfg->n_heads, cfg->n_heads - 1);
        return -1;
    }
    if (!(c->tok = eng_tok_load(a->model_dir, cfg, &err))) { cli_error(cmd, "%s", err.msg); return -1; }
    size_t len = 0;
    char *buf = NULL;
    if (a->prompt && !(buf = cli_read_file(cmd, a->prompt, PROMPT_MAX_BYTES, &len))) return -1;
    if (!(buf ? len : strlen(a->text))) { /* BOS alone would make it one token: refuse, naming it */
        if (a->prompt) cli_error(cmd, "the prompt is empty (%s is 0 bytes)", a->prompt);
        else cli_error(cmd, "the prompt is empty (--text '')");
        free(buf);
        return -1;
    }
    int rc = eng_tok_encode(c->tok, buf ? buf : a->text, buf ? len : strlen(a->text), 1, &c->ids, &c->n, &err);
    free(buf);
    if (rc) { cli_error(cmd, "%s", err.msg); return -1; }
    if (c->n < 1) { cli_error(cmd, "the prompt is empty (no tokens)"); return -1; }
    if (!(c->labels = malloc(sizeof(char *) * (size_t)c->n))) { cli_error(cmd, "out of memory"); return -1; }
    for (int i = 0; i < c->n; i++) c->labels[i] = eng_tok_piece(c->tok, c->ids[i]);
    if (a->patterns) {
        if (eng_patcfg_load(&c->pc, a->patterns, &err) ||
            eng_patcfg_check_model(&c->pc, cfg->n_layers, cfg->n_heads, &err)) {
            cli_error(cmd, "--patterns %s: %s", a->patterns, err.msg); /* a wrong-model error names the provenance */
            return -1;
        }
        c->have_pc = 1;
    }
    if (!(c->be = eng_backend_create(a->backend, &err))) { cli_error(cmd, "%s", err.msg); return -1; }
    const char *base = strrchr(c->m->dir, '/');
    base = base && base[1] ? base + 1 : c->m->dir;
    snprintf(c->title_model, sizeof c->title_model, "%.160s", base);
    const eng_model *mr = c->m;
    if (a->xf) {
        if (eng_transform_model(c->m, a->xf, &c->xf, &err)) { cli_error(cmd, "--transform: %s", err.msg); return -1; }
        mr = &c->xf.model;
        snprintf(c->title_model, sizeof c->title_model, "%.160s, %s weights", base, eng_transform_name(a->xf));
    }
    eng_prefill_opts po = {.patterns = NULL, .keep_qkv = 1, .keep_lse = 1};
    fprintf(stderr, "attnscope %s: prefill of %d tokens on %s%s...\n", cmd, c->n, c->be->device,
            a->xf ? " (transformed weights)" : "");
    if (c->be->prefill(c->be, mr, c->ids, c->n, &po, &c->po, &err)) {
        cli_error(cmd, "prefill: %s", err.msg);
        return -1;
    }
    c->have_po = 1;
    if (!c->po.q || !c->po.k || !c->po.lse) {
        cli_error(cmd, "prefill on %s kept no Q/K/LSE", c->be->name);
        return -1;
    }
    if (a->mode == MODE_DIFF && a->xf && !a->patterns) {
        fprintf(stderr, "attnscope %s: prefill of the original weights...\n", cmd);
        if (c->be->prefill(c->be, c->m, c->ids, c->n, &po, &c->po0, &err)) {
            cli_error(cmd, "prefill (original weights): %s", err.msg);
            return -1;
        }
        c->have_po0 = 1;
        if (!c->po0.q || !c->po0.k || !c->po0.lse) {
            cli_error(cmd, "prefill on %s kept no Q/K/LSE", c->be->name);
            return -1;
        }
    }
    return 0;
}

/* Head (l, h) pointers into the kept prefill tensors. */
typedef struct {
    const float *q, *k, *v, *lse;
    int qs, ks, n, d;
} head_view;

static head_view head_of(const eng_prefill_out *o, int l, int h) {
    int H = o->n_heads, Hkv = o->n_kv_heads, d = o->head_dim, n = o->n;
    const size_t kv_off = (size_t)l * n * Hkv * d + (size_t)(h / (H / Hkv)) * d;
    head_view v = {o->q + (size_t)l * n * H * d + (size_t)h * d, o->k + kv_off, o->v ? o->v + kv_off : NULL,
                   o->lse + ((size_t)l * H + h) * n, H * d, Hkv * d, n, d};
    return v;
}

static head_view head_at(const map_ctx *c, int l, int h) { return head_of(&c->po, l, h); }

/* The dense map of one head (the kept row LSE), on the backend's GPU map when it has one. */
static int pool_head(const char *cmd, eng_backend *be, const head_view *hv, const eng_map_opts *mo, float *out) {
    eng_err err = {{0}};
    if (eng_map_pool_on(be, hv->q, hv->qs, hv->k, hv->ks, hv->n, hv->d, hv->lse, NULL, mo, out, &err)) {
        cli_error(cmd, "%s", err.msg);
        return -1;
    }
    return 0;
}

/* The head's mask under its pattern (any kind: an index, DMA's thresholds or N:M's borrowed Q/K;
 * eng_dma.h), for the overlay and the sparse panel. */
static int build_mask(const char *cmd, const map_ctx *c, const head_view *hv, int l, int h, eng_head_mask *mk,
                      const eng_pattern **pat) {
    eng_err err = {{0}};
    *pat = eng_pattern_cfg_get(&c->pc.cfg, l, h);
    if (!hv->v) {
        cli_error(cmd, "prefill kept no V (needed for the head's mask)");
        return -1;
    }
    if (eng_dma_mask_build(*pat, hv->q, hv->qs, hv->k, hv->v, hv->ks, hv->n, hv->d, mk, &err)) {
        cli_error(cmd, "layer %d head %d: mask: %s", l, h, err.msg);
        return -1;
    }
    return 0;
}

/* Pattern text for titles; DMA and reshape are labelled as the training-free adaptations they are. */
static void pattern_title(const eng_pattern *p, char *buf, int cap) {
    int w = eng_pattern_describe(p, buf, cap);
    if (w >= 0 && w < cap && (p->kind == ENG_PAT_DMA || (p->reshape && p->kind != ENG_PAT_DENSE)))
        snprintf(buf + w, (size_t)(cap - w), " (training-free)");
}

static void term_size(int *cols, int *rows) {
    struct winsize ws;
    *cols = 80;
    *rows = 40;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
        *cols = ws.ws_col;
        *rows = ws.ws_row;
    }
}

/* Print one panel to stdout as a terminal figure. */
static int term_panel(const char *cmd, const map_args *a, const char *title, const float *v, int w, int h,
                      const float *comp, const viz_scale *sc, int q0, int q1, int k0, int k1) {
    eng_err err = {{0}};
    viz_term_mode tm = viz_term_mode_detect(getenv("COLORTERM"), getenv("TERM"), a->no_color);
    viz_term_opts to = {a->cmap, *sc, tm, comp};
    viz_cellbuf cb;
    if (viz_term_figure(title, v, w, h, q0, q1, k0, k1, &to, &cb, &err)) {
        cli_error(cmd, "%s", err.msg);
        return -1;
    }
    size_t len;
    char *s = viz_term_ansi(&cb, tm, &len, &err);
    viz_cellbuf_free(&cb);
    if (!s) { cli_error(cmd, "%s", err.msg); return -1; }
    fwrite(s, 1, len, stdout);
    free(s);
    return 0;
}

static const char *pool_name(eng_pool p) { return p == ENG_POOL_MAX ? "max-pooled" : "mean-pooled"; }

static const char *model_name(const map_ctx *c) { return c->title_model; }

static int run_figure(const map_args *a, map_ctx *c) {
    const char *cmd = mode_name[a->mode];
    int n = c->n, l = a->layer, H = c->po.n_heads;
    int q0, q1, k0, k1;
    if (parse_range(cmd, "--q", a->qr, n, &q0, &q1) || parse_range(cmd, "--k", a->kr, n, &k0, &k1)) return 2;
    int w = a->w, h = a->h;
    if (!w) {
        if (a->term) {
            int cols, rows;
            term_size(&cols, &rows);
            int side = cols - 8 < 2 * (rows - 5) ? cols - 8 : 2 * (rows - 5);
            w = h = side < 8 ? 8 : side;
            if (a->mode == MODE_GRID) w = h = w / 2 < 8 ? 8 : w / 2;
        } else {
            w = h = a->mode == MODE_GRID ? 256 : 512;
        }
    }
    if (a->term && w > 4000) { cli_error(cmd, "--size: %d columns is too wide for a terminal", w); return 2; }
    int np = a->mode == MODE_GRID ? H : a->mode == MODE_DIFF ? 3 : 1;
    size_t npx = (size_t)w * h;
    float *vals = calloc(npx * (size_t)np, sizeof(float));
    float *comp = a->mode == MODE_MAP && a->patterns ? calloc(npx, sizeof(float)) : NULL;
    viz_panel *pn = calloc((size_t)np, sizeof *pn);
    char (*ptitle)[160] = calloc((size_t)np, sizeof *ptitle);
    viz_span *sp = calloc((size_t)np, sizeof *sp);
    int *vert = NULL, *slash = NULL, nv = 0, ns = 0;
    eng_head_mask mk;
    memset(&mk, 0, sizeof mk);
    int have_mk = 0, rc = 1;
    viz_canvas cv;
    memset(&cv, 0, sizeof cv);
    if (!vals || (a->mode == MODE_MAP && a->patterns && !comp) || !pn || !ptitle || !sp) {
        cli_error(cmd, "out of memory for %d maps of %d x %d", np, w, h);
        goto done;
    }
    eng_map_opts mo = {.q0 = q0, .q1 = q1, .k0 = k0, .k1 = k1, .w = w, .h = h, .pool = a->pool, .empty = NAN,
                       .threads = a->threads};
    char title[512], pat[128];
    const eng_pattern *p = NULL;
    eng_err err = {{0}};
    viz_mapfig mf = {0}; /* map mode: the figure shared with the explorer's export */
    if (a->mode == MODE_MAP) {
        head_view hv = head_at(c, l, a->head);
        if (pool_head(cmd, c->be, &hv, &mo, vals)) goto done;
        double frac = 0;
        if (a->patterns) {
            if (build_mask(cmd, c, &hv, l, a->head, &mk, &p)) goto done;
            have_mk = 1;
            if (eng_map_mask_cover(&mk, &mo, comp, &err)) { cli_error(cmd, "%s", err.msg); goto done; }
            pattern_title(p, pat, sizeof pat);
            if (p->kind == ENG_PAT_VS) {
                vert = malloc(sizeof(int) * (size_t)n);
                slash = malloc(sizeof(int) * (size_t)n);
                if (!vert || !slash) { cli_error(cmd, "out of memory"); goto done; }
                if (eng_pattern_vs_lines(p, hv.q, hv.qs, hv.k, hv.ks, n, hv.d, vert, &nv, slash, &ns, &err)) {
                    cli_error(cmd, "%s", err.msg);
                    goto done;
                }
            }
            frac = (double)eng_dma_mask_count(&mk) / ((double)n * (n + 1) / 2.0);
        }
        mf = (viz_mapfig){.model = model_name(c), .layer = l, .head = a->head, .n_tokens = n, .values = vals,
                          .w = w, .h = h, .q0 = q0, .q1 = q1, .k0 = k0, .k1 = k1, .mean = a->pool == ENG_POOL_MEAN,
                          .pattern = a->patterns ? pat : NULL, .density = frac, .computed = comp,
                          .verticals = vert, .n_verticals = nv, .slashes = slash, .n_slashes = ns,
                          .block = a->patterns ? ENG_BLOCK : 0, .cmap = a->cmap, .scale = a->scale,
                          .gamma = a->gamma, .tokens = c->labels};
        viz_mapfig_titles(&mf, title, sizeof title, ptitle[0], sizeof ptitle[0]);
        pn[0] = viz_mapfig_panel(&mf, ptitle[0]);
    } else if (a->mode == MODE_GRID) {
        for (int hh = 0; hh < H; hh++) {
            head_view hv = head_at(c, l, hh);
            if (pool_head(cmd, c->be, &hv, &mo, vals + npx * hh)) goto done;
            if (c->have_pc) pattern_title(eng_pattern_cfg_get(&c->pc.cfg, l, hh), pat, sizeof pat);
            else snprintf(pat, sizeof pat, "dense");
            snprintf(ptitle[hh], sizeof ptitle[hh], "head %d: %.100s", hh, pat);
            pn[hh] = (viz_panel){.values = vals + npx * hh, .w = w, .h = h, .q0 = q0, .q1 = q1, .k0 = k0, .k1 = k1,
                                 .title = ptitle[hh]};
        }
        snprintf(title, sizeof title, "%.200s  layer %d, all %d heads  (%d tokens, %s)", model_name(c), l, H, n,
                 pool_name(a->pool));
    } else if (!a->patterns) {
        /* diff --transform: the original weights' dense map | the transformed weights' | difference */
        const char *xn = eng_transform_name(a->xf);
        head_view h0 = head_of(&c->po0, l, a->head), h1 = head_at(c, l, a->head);
        if (pool_head(cmd, c->be, &h0, &mo, vals) || pool_head(cmd, c->be, &h1, &mo, vals + npx)) goto done;
        for (size_t i = 0; i < npx; i++) {
            float ov = vals[i], tv = vals[npx + i];
            vals[2 * npx + i] = isnan(ov) || isnan(tv) ? NAN : fabsf(ov - tv);
        }
        snprintf(ptitle[0], sizeof ptitle[0], "original weights");
        snprintf(ptitle[1], sizeof ptitle[1], "%s (%.3g%% zero, rel err %.2g)", xn,
                 c->xf.n_weights ? 100.0 * (double)c->xf.n_zero / (double)c->xf.n_weights : 0.0, c->xf.rel_err);
        snprintf(ptitle[2], sizeof ptitle[2], "|original - %s|", xn);
        for (int i = 0; i < 3; i++)
            pn[i] = (viz_panel){.values = vals + npx * i, .w = w, .h = h, .q0 = q0, .q1 = q1, .k0 = k0, .k1 = k1,
                                .title = ptitle[i]};
        const char *base = strrchr(c->m->dir, '/');
        base = base && base[1] ? base + 1 : c->m->dir;
        snprintf(title, sizeof title, "%.160s  layer %d head %d: %s weight transform, dense  (%d tokens, %s)", base, l,
                 a->head, xn, n, pool_name(a->pool));
    } else {
        head_view hv = head_at(c, l, a->head);
        if (pool_head(cmd, c->be, &hv, &mo, vals)) goto done;
        if (build_mask(cmd, c, &hv, l, a->head, &mk, &p)) goto done;
        have_mk = 1;
        /* the sparse panel: probabilities over the head's computed pairs, renormalised over them */
        if (eng_map_pool_mask(c->be, hv.q, hv.qs, hv.k, hv.ks, hv.n, hv.d, &mk, &mo, vals + npx, &err)) {
            cli_error(cmd, "%s", err.msg);
            goto done;
        }
        for (size_t i = 0; i < npx; i++) {
            float dv = vals[i], sv = vals[npx + i];
            vals[2 * npx + i] = isnan(dv) || isnan(sv) ? NAN : fabsf(dv - sv);
        }
        pattern_title(p, pat, sizeof pat);
        double frac = (double)eng_dma_mask_count(&mk) / ((double)n * (n + 1) / 2.0);
        snprintf(ptitle[0], sizeof ptitle[0], "dense");
        snprintf(ptitle[1], sizeof ptitle[1], "sparse: %.100s (density %.3f)", pat, frac);
        snprintf(ptitle[2], sizeof ptitle[2], "|dense - sparse|");
        for (int i = 0; i < 3; i++)
            pn[i] = (viz_panel){.values = vals + npx * i, .w = w, .h = h, .q0 = q0, .q1 = q1, .k0 = k0, .k1 = k1,
                                .title = ptitle[i]};
        snprintf(title, sizeof title, "%.200s  layer %d head %d  (%d tokens, %s)", model_name(c), l, a->head, n,
                 pool_name(a->pool));
    }
    for (int i = 0; i < np; i++) sp[i] = (viz_span){vals + npx * i, npx};
    /* the difference panel shares the scale but does not stretch it */
    viz_scale sc = viz_scale_fit(a->scale, a->gamma, 6, sp, a->mode == MODE_DIFF ? 2 : np);
    if (a->term) {
        printf("%s\n", title);
        for (int i = 0; i < np; i++)
            if (term_panel(cmd, a, pn[i].title, pn[i].values, w, h, pn[i].computed, &sc, q0, q1, k0, k1)) goto done;
        rc = 0;
        goto done;
    }
    char cbl[96];
    snprintf(cbl, sizeof cbl, "attention probability (%s, %s scale)", a->pool == ENG_POOL_MAX ? "max" : "mean",
             viz_scale_name(a->scale));
    int cols = a->mode == MODE_GRID ? (int)ceil(sqrt((double)H)) : np;
    viz_figure f = {.title = title, .cmap = a->cmap, .scale = sc, .cbar_label = cbl, .cols = cols,
                    .tokens = c->labels, .n_tokens = n};
    if ((a->mode == MODE_MAP ? viz_mapfig_render(&mf, &cv, &err) : viz_figure_render(&f, pn, np, &cv, &err)) ||
        viz_png_write(a->out, &cv, cli_cmdline, &err)) {
        cli_error(cmd, "%s", err.msg);
        goto done;
    }
    printf("wrote %s (%d x %d pixels; maps %d x %d over queries [%d, %d) and keys [%d, %d))\n", a->out, cv.w, cv.h, w,
           h, q0, q1, k0, k1);
    rc = 0;
done:
    viz_canvas_free(&cv);
    if (have_mk) eng_dma_mask_free(&mk);
    free(vals);
    free(comp);
    free(pn);
    free(ptitle);
    free(sp);
    free(vert);
    free(slash);
    return rc;
}

static int cmd_common(int argc, char **argv, map_mode mode) {
    map_args a;
    int rc = parse_args(argc, argv, mode, &a);
    if (rc >= 0) return rc;
    map_ctx c;
    if (ctx_open(&a, &c)) {
        ctx_free(&c);
        return 1;
    }
    rc = run_figure(&a, &c);
    ctx_free(&c);
    return rc;
}

int cmd_map(int argc, char **argv) { return cmd_common(argc, argv, MODE_MAP); }
int cmd_grid(int argc, char **argv) { return cmd_common(argc, argv, MODE_GRID); }
int cmd_diff(int argc, char **argv) { return cmd_common(argc, argv, MODE_DIFF); }
