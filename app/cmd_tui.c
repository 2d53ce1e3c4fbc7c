/* cmd_tui: `attnscope tui`, the interactive explorer; also what `attnscope` with no arguments opens
 * (the shipped sample model and long prompt). Owns the terminal: curses set-up, signals, the
 * input loop. The engine work runs in the worker (tui_worker.c); this thread only turns input into
 * commands and draws the newest snapshot. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curses.h>

#include "cli.h"
#include "eng_session.h"
#include "eng_transform.h"
#include "tui_draw.h"
#include "tui_layout.h"
#include "tui_state.h"
#include "tui_worker.h"

static volatile sig_atomic_t g_winch, g_quit;
static volatile sig_atomic_t g_curses_on;

static void on_winch(int sig) {
    (void)sig;
    g_winch = 1;
}

static void on_quit(int sig) {
    (void)sig;
    g_quit = 1;
}

/* A crash must not leave the terminal in raw mode: restore it, then die of the same signal. */
static void on_fatal(int sig) {
    if (g_curses_on) endwin();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, NULL);
    sa.sa_handler = on_quit;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sa.sa_handler = on_fatal;
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
}

static void usage(FILE *f) {
    fprintf(f, "usage: attnscope tui --model DIR --prompt FILE [--patterns CFG.json] [--no-color]\n"
               "                     [--backend auto|cpu|cuda] [--max-tokens N] [--out-dir DIR]\n"
               "                     [--transform 24|int8|24+int8]\n\n"
               "The interactive explorer: a layer x head overview, the selected head's attention heatmap with\n"
               "the sparse index over it, pattern editing that re-runs the layer from the kept Q/K/V, dense vs\n"
               "sparse numbers per layer and end to end, and a teach view of the vertical-slash index build.\n"
               "Without arguments `attnscope` opens the shipped sample model on its long prompt.\n"
               "Exports (e) and saved configs (s) go to --out-dir (default: the current directory).\n"
               "--transform T explores a one-shot 2:4-pruned (24), INT8 (int8) or both (24+int8) copy of the\n"
               "attention and MLP weights: maps and numbers are of the transformed model, the header names the\n"
               "transform, the end-to-end run (r) adds KL / top-1 / perplexity against the original weights,\n"
               "and x switches between the transformed and the original weights (re-running the prefill).\n"
               "Press ? or F1 inside for the keys.\n");
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* snprintf for paths: 0 when it fit, -1 when it was cut (the path is then not used). */
static int path_fmt(char *dst, size_t cap, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int path_fmt(char *dst, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < cap ? 0 : -1;
}

/* The repository root as seen from the binary (build/attnscope -> ..), else the working directory. */
static void find_root(char *root, size_t cap) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            char cand[PATH_MAX + 16];
            if (!path_fmt(cand, sizeof cand, "%s/../samples", exe) && is_dir(cand) &&
                !path_fmt(root, cap, "%s/..", exe))
                return;
        }
    }
    snprintf(root, cap, ".");
}

/* The shipped sample: the first model under samples/models (by name) with the long prompt, else
 * the tiny test model. */
static int find_sample(char *model, char *prompt, size_t cap) {
    char root[PATH_MAX], dir[PATH_MAX + 32];
    find_root(root, sizeof root);
    path_fmt(dir, sizeof dir, "%s/samples/models", root);
    model[0] = 0;
    struct dirent **ents = NULL;
    int ne = is_dir(dir) ? scandir(dir, &ents, NULL, alphasort) : 0;
    for (int i = 0; i < ne; i++) {
        char cfg[PATH_MAX * 2];
        if (!model[0] && ents[i]->d_name[0] != '.' &&
            !path_fmt(cfg, sizeof cfg, "%s/%s/config.json", dir, ents[i]->d_name) && is_file(cfg) &&
            path_fmt(model, cap, "%s/%s", dir, ents[i]->d_name))
            model[0] = 0;
        free(ents[i]);
    }
    free(ents);
    if (!model[0]) {
        if (!path_fmt(dir, sizeof dir, "%s/tests/fixtures/tiny-llama", root) && is_dir(dir) &&
            path_fmt(model, cap, "%s", dir))
            model[0] = 0;
    }
    static const char *prompts[] = {"passkey_4k.txt", "haystack.txt"};
    prompt[0] = 0;
    for (size_t i = 0; i < sizeof prompts / sizeof prompts[0] && !prompt[0]; i++) {
        if (!path_fmt(dir, sizeof dir, "%s/samples/prompts/%s", root, prompts[i]) && is_file(dir) &&
            path_fmt(prompt, cap, "%s", dir))
            prompt[0] = 0;
    }
    return model[0] && prompt[0] ? 0 : -1;
}

static void layout_and_map(tui_layout *l, tui_state *s, tui_cmd *cmd) {
    tui_layout_compute(COLS, LINES, s->n_layers, s->n_heads, s->n_kv_heads, s->layer, s->head, l);
    if (!l->too_small) tui_state_set_map_size(s, l->map_px_w, l->map_px_h, cmd);
}

static void send(tui_worker *w, tui_state *s, const tui_cmd *c) {
    if (c->set_pattern) tui_worker_set_pattern(w, c->layer, c->head, &c->pat);
    if (c->run_e2e) tui_worker_e2e(w);
    if (c->export_png) {
        eng_view v = tui_state_view(s);
        tui_worker_export(w, &v, s->overlay);
    }
    if (c->save) tui_worker_save(w);
    if (c->transform) tui_worker_transform(w);
    if (c->view_changed) {
        eng_view v = tui_state_view(s);
        tui_worker_view(w, &v);
    }
}

int cmd_tui(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *patterns = NULL, *backend = "auto", *out_dir = ".";
    int no_color = 0, max_tokens = 0;
    unsigned xf_flags = 0;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"patterns", required_argument, 0, 'c'}, {"no-color", no_argument, 0, 'n'},
        {"backend", required_argument, 0, 'b'}, {"max-tokens", required_argument, 0, 't'},
        {"out-dir", required_argument, 0, 'o'}, {"help", no_argument, 0, 'h'},
        {"transform", required_argument, 0, 'X'}, {0, 0, 0, 0},
    };
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'c': patterns = optarg; break;
        case 'n': no_color = 1; break;
        case 'b': backend = optarg; break;
        case 't': if (cli_parse_int("tui", "--max-tokens", optarg, 2, 1 << 24, &max_tokens)) return 2; break;
        case 'o': out_dir = optarg; break;
        case 'X':
            if (eng_transform_parse(optarg, &xf_flags, &(eng_err){{0}})) {
                cli_error("tui", "--transform: bad value '%s' (want 24, int8 or 24+int8)", optarg);
                usage(stderr);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default:
            cli_error("tui", "unknown or incomplete option '%s'", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        cli_error("tui", "unexpected argument '%s'", argv[optind]);
        usage(stderr);
        return 2;
    }
    static char smodel[PATH_MAX], sprompt[PATH_MAX];
    if (!model && !prompt) {
        if (find_sample(smodel, sprompt, sizeof smodel)) {
            cli_error("tui", "no shipped sample found (samples/models/*, samples/prompts/); "
                             "give --model DIR --prompt FILE");
            return 1;
        }
        model = smodel;
        prompt = sprompt;
        /* the sample's searched per-head config, when shipped: samples/patterns/<model name>.json */
        static char spat[PATH_MAX + 64];
        const char *base = strrchr(smodel, '/');
        base = base ? base + 1 : smodel;
        char *cut = strstr(sprompt, "/prompts/");
        if (!patterns && cut &&
            snprintf(spat, sizeof spat, "%.*s/patterns/%s.json", (int)(cut - sprompt), sprompt, base) <
                (int)sizeof spat &&
            is_file(spat))
            patterns = spat;
    } else if (!model || !prompt) {
        cli_error("tui", "%s is required", model ? "--prompt FILE" : "--model DIR");
        usage(stderr);
        return 2;
    }
    if (!is_dir(out_dir)) {
        cli_error("tui", "--out-dir %s: not a directory", out_dir);
        return 2;
    }
    /* Usage errors before the terminal check, so they are named without a terminal too (the
     * session re-checks everything it loads). */
    if (strcmp(backend, "auto") && strcmp(backend, "cpu") && strcmp(backend, "cuda")) {
        cli_error("tui", "--backend: bad value '%s' (want auto, cpu or cuda)", backend);
        return 2;
    }
    struct stat mst;
    if (stat(model, &mst) != 0) {
        cli_error("tui", "--model %s: %s", model, strerror(errno));
        return 1;
    }
    if (!is_file(prompt)) {
        cli_error("tui", "--prompt %s: not a readable file", prompt);
        return 1;
    }
    if (patterns && !is_file(patterns)) {
        cli_error("tui", "--patterns %s: not a readable file", patterns);
        return 1;
    }
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        cli_error("tui", "the explorer needs a terminal; for a report use: attnscope run --model %s --prompt %s",
                  model, prompt);
        return 1;
    }

    eng_session_opts so = {.model_dir = model, .prompt_path = prompt, .patterns_path = patterns,
                           .backend = backend, .max_tokens = max_tokens, .transform = xf_flags};
    eng_session *sess = NULL;
    eng_err err;
    if (eng_session_open(&sess, &so, &err)) {
        cli_error("tui", "%s", err.msg);
        return 1;
    }
    tui_state s;
    tui_state_init(&s, eng_session_n_layers(sess), eng_session_n_heads(sess), eng_session_n_kv_heads(sess),
                   eng_session_n_tokens(sess));
    tui_worker *w = NULL;
    if (tui_worker_start(&w, sess, out_dir, cli_cmdline, &err)) {
        eng_session_free(sess);
        cli_error("tui", "%s", err.msg);
        return 1;
    }

    setlocale(LC_ALL, "");
    install_signals(); /* before initscr: curses then leaves SIGWINCH to us */
    if (!getenv("ESCDELAY")) set_escdelay(25);
    if (!initscr()) {
        tui_worker_stop(w, -1);
        cli_error("tui", "cannot initialise the terminal (TERM=%s)", getenv("TERM") ? getenv("TERM") : "");
        return 1;
    }
    g_curses_on = 1;
    cbreak();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    curs_set(0);
    timeout(50);
    mousemask(BUTTON1_CLICKED | BUTTON1_PRESSED, NULL);
    mouseinterval(0);
    tui_draw_init(no_color);

    tui_layout l;
    tui_cmd cmd;
    memset(&cmd, 0, sizeof cmd);
    layout_and_map(&l, &s, &cmd);
    eng_view v0 = tui_state_view(&s);
    tui_worker_view(w, &v0);
    eng_snapshot *snap = NULL;
    tui_status st;
    unsigned last_seq = ~0u, last_msg = 0;
    int dirty = 1;
    while (!s.quit && !g_quit) {
        if (g_winch) {
            g_winch = 0;
            struct winsize ws;
            if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0)
                resize_term(ws.ws_row, ws.ws_col);
            memset(&cmd, 0, sizeof cmd);
            layout_and_map(&l, &s, &cmd);
            send(w, &s, &cmd);
            clear();
            dirty = 1;
        }
        eng_snapshot *nsnap = tui_worker_take(w);
        if (nsnap) {
            eng_snapshot_free(snap);
            snap = nsnap;
            dirty = 1;
        }
        tui_worker_status(w, &st);
        if (st.seq != last_seq) {
            last_seq = st.seq;
            dirty = 1;
        }
        if (st.msg_seq != last_msg) { /* a fresh worker message replaces the UI's own */
            last_msg = st.msg_seq;
            s.msg[0] = 0;
        }
        if (dirty) {
            tui_draw_frame(&l, &s, snap, &st);
            refresh();
            dirty = 0;
        }
        int ch = getch();
        if (ch == ERR) continue;
        dirty = 1;
        const eng_pattern *cur =
            snap && snap->ready && snap->heads ? &snap->heads[(size_t)s.layer * s.n_heads + s.head].pat : NULL;
        if (ch == KEY_RESIZE) {
            memset(&cmd, 0, sizeof cmd);
            layout_and_map(&l, &s, &cmd);
            send(w, &s, &cmd);
            continue;
        }
        if (l.too_small) { /* only quitting makes sense until the terminal grows */
            if (tui_keys_lookup(ch, TUI_CTX_ANY) == TUI_ACT_QUIT) s.quit = 1;
            continue;
        }
        if (ch == KEY_MOUSE && !s.jump_active) {
            MEVENT me;
            if (getmouse(&me) == OK && (me.bstate & (BUTTON1_CLICKED | BUTTON1_PRESSED))) {
                tui_hit hit = tui_layout_hit(&l, me.x, me.y);
                tui_state_click(&s, &hit, cur, &cmd);
            } else {
                continue;
            }
        } else {
            tui_state_key(&s, ch, cur, &cmd);
        }
        /* the overview window follows the selection */
        tui_layout_compute(COLS, LINES, s.n_layers, s.n_heads, s.n_kv_heads, s.layer, s.head, &l);
        send(w, &s, &cmd);
    }
    endwin();
    g_curses_on = 0;
    eng_snapshot_free(snap);
    /* The worker cancels a running prefill before its next layer; wait for it so no engine (BLAS)
     * thread is still working when exit handlers run. Meanwhile a second Ctrl-C ends the process
     * at once (the terminal is already restored). */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (tui_worker_stop(w, 1000)) {
        fprintf(stderr, "attnscope tui: stopping the engine (%s)...\n", st.what);
        tui_worker_stop(w, -1);
    }
    return 0;
}
