/* cmd_search: `attnscope search` runs the offline per-head pattern search (eng_search.h) on one
 * prompt and writes the winners with every candidate's score (native schema), optionally also in
 * MInference's format. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cli_report.h"
#include "eng_backend.h"
#include "eng_model.h"
#include "eng_patcfg.h"
#include "eng_search.h"
#include "eng_tok.h"


static void usage(FILE *f) {
    fprintf(f,
            "usage: attnscope search --model DIR (--prompt FILE | --text STR | --tokens 1,2,3) --out CFG.json\n"
            "                        [--objective output|recall] [--candidates FILE] [--minference-out F.json]\n"
            "                        [--tie TOL] [--backend auto|cpu|cuda]\n\n"
            "For every (layer, head), score each candidate pattern of a cost-matched set on the prompt and keep\n"
            "the best; every candidate's score is kept in the output so each choice can be explained.\n\n"
            "  --model DIR          Hugging Face checkpoint directory (required)\n"
            "  --prompt FILE        prompt text (encoded with the model's tokenizer, BOS first)\n"
            "  --text STR           prompt text given inline\n"
            "  --tokens 1,2,3       token ids given directly\n"
            "  --out CFG.json       native attnscope config with winners and all scores (required)\n"
            "  --objective O        output: smallest relative L2 of the head's attention output vs dense\n"
            "                       (the paper's; default); recall: largest dense softmax mass kept (upstream code's)\n"
            "  --candidates FILE    candidate set (JSON; docs/patterns.md); default: the paper's A-shape (1024, 4096),\n"
            "                       VS (30, 2048) (100, 1800) (500, 1500) (3000, 200), BS 100 blocks, budgets\n"
            "                       scaled by N/32768 when the prompt is shorter than 32768 tokens. Any kind may\n"
            "                       be a candidate: xattn, flex, dma (training-free adaptation), nm, and reshape\n"
            "                       on any sparse kind, e.g. [{\"pattern\": \"xattn\"}, {\"pattern\": \"flex\"},\n"
            "                       {\"pattern\": \"dma\", \"keep\": 2048}, {\"pattern\": \"nm\"},\n"
            "                       {\"pattern\": \"vs\", \"vertical\": 100, \"slash\": 1800, \"reshape\": 1}]\n"
            "  --minference-out F   also write the winners in MInference's per-head format\n"
            "  --tie TOL            candidates within TOL of the best score tie; the cheapest wins (default 0.001)\n"
            "  --backend B          auto (default), cpu or cuda\n"
            "  -h, --help           this help\n");
}

/* An output path whose directory is missing (or that is a directory) fails only at the end: check
 * both outputs before the search, so a long search is not lost and no lone first output is left. */
static int out_path_ok(const char *flag, const char *path) {
    if (!*path) {
        cli_error("search", "%s: empty path", flag);
        return -1;
    }
    char dir[4096];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    if (slash && slash == path) snprintf(dir, sizeof dir, "/");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        cli_error("search", "%s %s: directory '%s' does not exist", flag, path, dir);
        return -1;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        cli_error("search", "%s %s: is a directory", flag, path);
        return -1;
    }
    return 0;
}

static void progress(void *ctx, int done, int total) { cli_report_progress(ctx, "search", done, total); }

static int write_text(const char *path, char *text) {
    if (!text) return -1;
    int rc = cli_write_atomic("search", path, text, strlen(text));
    free(text);
    return rc;
}

int cmd_search(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"text", required_argument, 0, 't'},       {"tokens", required_argument, 0, 'k'},
        {"out", required_argument, 0, 'o'},        {"objective", required_argument, 0, 'O'},
        {"candidates", required_argument, 0, 'c'}, {"minference-out", required_argument, 0, 'M'},
        {"tie", required_argument, 0, 'T'},        {"backend", required_argument, 0, 'b'},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *prompt = NULL, *text = NULL, *tokens_s = NULL, *out_path = NULL;
    const char *objective = "output", *cand_path = NULL, *mi_path = NULL, *backend = "auto";
    float tie = 1e-3f;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 't': text = optarg; break;
        case 'k': tokens_s = optarg; break;
        case 'o': out_path = optarg; break;
        case 'O': objective = optarg; break;
        case 'c': cand_path = optarg; break;
        case 'M': mi_path = optarg; break;
        case 'b': backend = optarg; break;
        case 'T':
            if (cli_parse_float("search", "--tie", optarg, 0.0, 1e9, &tie)) return 2;
            break;
        case 'h': usage(stdout); return 0;
        case ':':
            cli_error("search", "option '%s' needs a value", argv[optind - 1]);
            usage(stderr);
            return 2;
        default:
            cli_error("search", "unknown option '%s'", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        cli_error("search", "unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (!model_dir || !out_path) {
        cli_error("search", "--model DIR and --out CFG.json are required");
        usage(stderr);
        return 2;
    }
    if (out_path_ok("--out", out_path) || (mi_path && out_path_ok("--minference-out", mi_path))) return 1;
    if ((prompt != NULL) + (text != NULL) + (tokens_s != NULL) != 1) {
        cli_error("search", "give exactly one of --prompt FILE, --text STR or --tokens 1,2,3");
        return 2;
    }
    if (strcmp(objective, "output") && strcmp(objective, "recall")) {
        cli_error("search", "--objective: bad value '%s' (want output or recall)", objective);
        return 2;
    }
    if (strcmp(backend, "auto") && strcmp(backend, "cpu") && strcmp(backend, "cuda")) {
        cli_error("search", "--backend: bad value '%s' (want auto, cpu or cuda)", backend);
        return 2;
    }

    int rc = 1;
    eng_err err = {{0}};
    eng_model *m = NULL;
    eng_tokenizer *tok = NULL;
    eng_backend *be = NULL;
    int *ids = NULL, n = 0;
    eng_search_set set;
    memset(&set, 0, sizeof set);
    eng_patcfg pc;
    memset(&pc, 0, sizeof pc);

    if (cand_path) {
        size_t len;
        char *cj = cli_read_file("search", cand_path, 16u << 20, &len);
        if (!cj) return 2;
        int bad = eng_search_set_parse(&set, cj, len, cand_path, &err);
        free(cj);
        if (bad) {
            cli_error("search", "--candidates %s", err.msg);
            return 2;
        }
    } else if (eng_search_set_default(&set, &err)) {
        cli_error("search", "%s", err.msg);
        return 1;
    }
    if (eng_model_load(&m, model_dir, &err)) {
        cli_error("search", "%s", err.msg);
        goto done;
    }
    if ((rc = cli_load_prompt("search", model_dir, &m->cfg, prompt, text, tokens_s, &tok, &ids, &n)) != 0)
        goto done;
    rc = 1;
    if (!(be = eng_backend_create(backend, &err))) {
        cli_error("search", "backend %s: %s", backend, err.msg);
        goto done;
    }
    eng_search_opts so = {.objective = strcmp(objective, "recall") ? ENG_SEARCH_OUTPUT : ENG_SEARCH_RECALL,
                          .tie_tol = tie, .progress = progress};
    if (eng_search_run(be, m, ids, n, &set, &so, &pc, &err)) {
        cli_error("search", "%s", err.msg);
        goto done;
    }
    size_t cl = strlen(cli_cmdline) < sizeof pc.source ? strlen(cli_cmdline) : sizeof pc.source - 1;
    memcpy(pc.source, cli_cmdline, cl);
    pc.source[cl] = 0;

    const int L = pc.cfg.n_layers, H = pc.cfg.n_heads, C = set.n_cand;
    printf("model:      %s (%d layers x %d heads)\n", m->dir, L, H);
    printf("backend:    %s - %s\n", be->name, be->device);
    printf("prompt:     %d tokens; objective %s (%s); ties within %g go to the lowest density\n", n, objective,
           so.objective == ENG_SEARCH_OUTPUT ? "relative L2 of the head output vs dense, lower is better"
                                             : "dense softmax mass kept, higher is better",
           (double)tie);
    if (set.reference_len > 0 && n < set.reference_len)
        printf("budgets:    scaled by %d/%d (prompt shorter than the set's reference length)\n", n, set.reference_len);
    printf("\n%-30s %6s %10s %10s %10s\n", "candidate (as built)", "wins", "mean score", "mean dens", "mean recall");
    int *wins = calloc((size_t)C, sizeof *wins);
    double *sc = calloc((size_t)C * 3, sizeof *sc);
    if (!wins || !sc) {
        cli_error("search", "out of memory");
        free(wins), free(sc);
        goto done;
    }
    for (int i = 0; i < L * H; i++) {
        const eng_pat_eval *ev = pc.cand + (size_t)i * pc.cand_cap;
        wins[eng_search_pick(ev, C, &so)]++;
        for (int k = 0; k < C; k++) sc[3 * k] += ev[k].score, sc[3 * k + 1] += ev[k].density, sc[3 * k + 2] += ev[k].recall;
    }
    for (int k = 0; k < C; k++) {
        char desc[128];
        eng_pattern_describe(&pc.cand[k].pat, desc, sizeof desc);
        printf("%-30s %6d %10.5f %10.4f %10.5f\n", desc, wins[k], sc[3 * k] / (L * H), sc[3 * k + 1] / (L * H),
               sc[3 * k + 2] / (L * H));
    }
    free(wins), free(sc);
    printf("\nper layer (winner counts by pattern, mean winning score):\n");
    for (int l = 0; l < L; l++) {
        int cnt[ENG_PAT__COUNT] = {0};
        double s = 0;
        for (int h = 0; h < H; h++) cnt[pc.cfg.heads[(size_t)l * H + h].kind]++, s += pc.score[(size_t)l * H + h];
        printf("  layer %3d:", l);
        for (int k = 0; k < ENG_PAT__COUNT; k++)
            if (cnt[k]) printf(" %s %d", eng_pattern_kind_name((eng_pat_kind)k), cnt[k]);
        printf("  (score %.5f)\n", s / H);
    }
    rc = 0;
    if (write_text(out_path, eng_patcfg_native_text(&pc, &err))) {
        if (err.msg[0]) cli_error("search", "%s", err.msg);
        rc = 1;
    } else
        printf("wrote %s (native schema, every candidate's score per head)\n", out_path);
    if (mi_path) {
        if (write_text(mi_path, eng_patcfg_minference_text(&pc, &err))) {
            if (err.msg[0]) cli_error("search", "%s", err.msg);
            rc = 1;
        } else
            printf("wrote %s (MInference format)\n", mi_path);
    }
done:
    eng_patcfg_free(&pc);
    eng_search_set_free(&set);
    if (be) be->destroy(be);
    eng_tok_free(tok);
    eng_model_free(m);
    free(ids);
    return rc;
}
