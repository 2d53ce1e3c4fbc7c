/* test_transform_views: the weight transforms (eng_transform.h) in the explorer and the figures, on
 * the tiny test model: a session with --transform gives other maps and numbers than without, its
 * KL / top-1 / perplexity against the original match `attnscope run --transform` on the same
 * tokens, the run-time toggle (session and worker) goes back to the original's exact maps, the TUI
 * header and compare panel show the transform, `diff --transform 24` writes a PNG whose third
 * panel holds a real difference (decoded with libpng), and bad --transform values are usage errors
 * in tui/map/grid/diff. */
#include "test_util.h"

#include <cjson/cJSON.h>
#include <curses.h>
#include <locale.h>
#include <png.h>
#include <sys/wait.h>
#include <unistd.h>

#include "eng_session.h"
#include "eng_transform.h"
#include "tui_draw.h"
#include "tui_layout.h"
#include "tui_state.h"
#include "tui_worker.h"
#include "viz_color.h"

#define TINY "tests/fixtures/tiny-llama"

static int have_tiny(void) { return access(TINY "/config.json", R_OK) == 0; }

/* A prompt of `bytes` random letters and spaces (the tiny model's tokenizer: one token a byte). */
static int write_prompt(char *path, size_t cap, int bytes) {
    snprintf(path, cap, "/tmp/attnscope-xfv-prompt-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    uint64_t seed = 7;
    for (int i = 0; i < bytes; i++) {
        char ch = (char)('a' + tu_rand_u64(&seed) % 26);
        if (i % 6 == 5) ch = ' ';
        if (write(fd, &ch, 1) != 1) return -1;
    }
    close(fd);
    return 0;
}

static eng_session *open_prefilled(const char *prompt, unsigned xf) {
    eng_session_opts o = {.model_dir = TINY, .prompt_path = prompt, .backend = "cpu", .transform = xf};
    eng_session *s = NULL;
    eng_err err;
    if (eng_session_open(&s, &o, &err)) fail_msg("%s", err.msg);
    if (eng_session_prefill(s, NULL, NULL, &err)) fail_msg("%s", err.msg);
    return s;
}

static eng_snapshot *snap_of(eng_session *s, const eng_view *v) {
    eng_snapshot *sn = NULL;
    eng_err err;
    if (eng_session_snapshot(s, v, &sn, &err)) fail_msg("%s", err.msg);
    return sn;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(b[i])) return INFINITY;
        if (!isnan(a[i]) && fabs((double)a[i] - b[i]) > m) m = fabs((double)a[i] - b[i]);
    }
    return m;
}

/* Run a shell command; its exit status (-1 when it did not exit normally). */
static int sh(const char *cmd) {
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_session_transform(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    char prompt[64];
    assert_int_equal(write_prompt(prompt, sizeof prompt, 199), 0);
    eng_session *p = open_prefilled(prompt, 0), *x = open_prefilled(prompt, ENG_XF_24);
    const int n = eng_session_n_tokens(x), L = eng_session_n_layers(x), H = eng_session_n_heads(x);
    assert_int_equal(n, 200);
    eng_view v = {.layer = 1, .head = 3, .tpp = 1, .rows = 48, .cols = 48, .cur_q = 40, .cur_k = 2};
    const size_t np = 48 * 48;
    eng_snapshot *sp = snap_of(p, &v), *sx = snap_of(x, &v);
    /* the header's facts */
    assert_int_equal(sp->transform, 0);
    assert_int_equal(sp->transform_avail, 0);
    assert_int_equal(sx->transform, ENG_XF_24);
    assert_int_equal(sx->transform_avail, ENG_XF_24);
    assert_true(fabs(sx->xf_zero - 0.5) < 1e-3); /* every input dim of the tiny model is a multiple of 4 */
    assert_true(sx->xf_rel_err > 0.05 && sx->xf_rel_err < 0.9);
    /* the maps and the per-head numbers are the transformed model's */
    assert_true(sp->map_valid && sx->map_valid);
    assert_true(max_abs_diff(sp->prob, sx->prob, np) > 1e-3);
    int moved = 0;
    for (int i = 0; i < L * H; i++)
        moved += fabsf(sp->heads[i].recall - sx->heads[i].recall) > 1e-6f ||
                 fabsf(sp->heads[i].error - sx->heads[i].error) > 1e-6f;
    assert_true(moved > L * H / 2);

    /* end to end: the transform's numbers against the original weights */
    eng_err err;
    if (eng_session_run_e2e(x, NULL, NULL, &err)) fail_msg("%s", err.msg);
    if (eng_session_run_e2e(p, NULL, NULL, &err)) fail_msg("%s", err.msg);
    eng_snapshot *ex = snap_of(x, NULL), *ep = snap_of(p, NULL);
    assert_true(ex->e2e.valid && ex->e2e.xf_valid);
    assert_true(ep->e2e.valid && !ep->e2e.xf_valid);
    assert_true(ex->e2e.xf_kl > 0 && isfinite(ex->e2e.xf_kl));
    assert_true(ex->e2e.xf_top1 >= 0 && ex->e2e.xf_top1 <= 1);
    /* the original's perplexity is the plain session's dense one; the sparse side differs */
    assert_true(fabs(ex->e2e.xf_ppl_orig - ep->e2e.ppl_dense) <= 1e-5 * ep->e2e.ppl_dense);
    assert_true(fabs(ex->e2e.xf_ppl_xf - ex->e2e.ppl_dense) <= 1e-5 * ex->e2e.ppl_dense);
    assert_true(fabs(ex->e2e.xf_ppl_xf - ex->e2e.xf_ppl_orig) > 1e-4);

    /* ... and they are what `attnscope run --transform 24` reports for the same prompt */
    char json[96], cmd[512];
    snprintf(json, sizeof json, "%s.json", prompt);
    snprintf(cmd, sizeof cmd, "'%s' run --model " TINY " --prompt '%s' --backend cpu --transform 24 --json '%s' >/dev/null",
             tu_bin(), prompt, json);
    assert_int_equal(sh(cmd), 0);
    FILE *f = fopen(json, "rb");
    assert_non_null(f);
    char buf[1 << 16];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = 0;
    cJSON *r = cJSON_Parse(buf), *t = cJSON_GetObjectItem(r, "transform");
    assert_non_null(t);
    assert_int_equal((int)cJSON_GetObjectItem(r, "n_tokens")->valuedouble, n);
    const double kl = cJSON_GetObjectItem(t, "kl_last")->valuedouble, t1 = cJSON_GetObjectItem(t, "top1_agree")->valuedouble;
    const double po = cJSON_GetObjectItem(t, "ppl_original")->valuedouble, px = cJSON_GetObjectItem(t, "ppl_transformed")->valuedouble;
    assert_true(fabs(kl - ex->e2e.xf_kl) <= 1e-6 + 1e-3 * kl);
    assert_true(fabs(t1 - ex->e2e.xf_top1) <= 1.5 / n); /* at most one near-tie may flip */
    assert_true(fabs(po - ex->e2e.xf_ppl_orig) <= 1e-4 * po);
    assert_true(fabs(px - ex->e2e.xf_ppl_xf) <= 1e-4 * px);
    assert_true(fabs(cJSON_GetObjectItem(t, "weight_rel_err")->valuedouble - sx->xf_rel_err) < 1e-9);
    cJSON_Delete(r);
    unlink(json);
    eng_snapshot_free(ex);
    eng_snapshot_free(ep);

    /* the toggle: off gives the original's maps exactly, on again the transformed ones */
    assert_int_equal(eng_session_set_transform(x, 0, &err), 0);
    eng_snapshot *s0 = snap_of(x, &v);
    assert_false(s0->ready);
    assert_int_equal(s0->transform, 0);
    assert_int_equal(s0->transform_avail, ENG_XF_24);
    assert_false(s0->e2e.valid);
    eng_snapshot_free(s0);
    if (eng_session_prefill(x, NULL, NULL, &err)) fail_msg("%s", err.msg);
    s0 = snap_of(x, &v);
    assert_true(s0->ready && s0->map_valid);
    assert_true(max_abs_diff(s0->prob, sp->prob, np) < 1e-6);
    for (int i = 0; i < L * H; i++) assert_true(fabsf(s0->heads[i].error - sp->heads[i].error) <= 1e-6f);
    assert_int_equal(eng_session_transform(x, NULL), 0);
    eng_snapshot_free(s0);
    if (eng_session_run_e2e(x, NULL, NULL, &err)) fail_msg("%s", err.msg);
    s0 = snap_of(x, NULL);
    assert_true(s0->e2e.valid && !s0->e2e.xf_valid); /* the original weights: nothing to compare */
    eng_snapshot_free(s0);
    assert_int_equal(eng_session_set_transform(x, 1, &err), 0);
    if (eng_session_prefill(x, NULL, NULL, &err)) fail_msg("%s", err.msg);
    s0 = snap_of(x, &v);
    assert_true(max_abs_diff(s0->prob, sx->prob, np) < 1e-6);
    eng_snapshot_free(s0);
    /* a session without a transform has none to switch on */
    assert_int_equal(eng_session_set_transform(p, 1, &err), -1);
    assert_non_null(strstr(err.msg, "no weight transform"));

    eng_snapshot_free(sp);
    eng_snapshot_free(sx);
    eng_session_free(p);
    eng_session_free(x);
    unlink(prompt);
}

/* The worker's toggle (the x key): the next ready snapshot is of the original weights. */
static void test_worker_toggle(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    tui_state st;
    tui_cmd cmd;
    tui_state_init(&st, 2, 4, 2, 100);
    tui_state_key(&st, 'x', NULL, &cmd);
    assert_true(cmd.transform);
    char prompt[64];
    assert_int_equal(write_prompt(prompt, sizeof prompt, 99), 0);
    eng_session_opts o = {.model_dir = TINY, .prompt_path = prompt, .backend = "cpu", .transform = ENG_XF_INT8};
    eng_session *s = NULL;
    eng_err err;
    if (eng_session_open(&s, &o, &err)) fail_msg("%s", err.msg);
    tui_worker *w = NULL;
    if (tui_worker_start(&w, s, "/tmp", "test", &err)) fail_msg("%s", err.msg);
    eng_view v = {.layer = 0, .head = 1, .tpp = 2, .rows = 50, .cols = 50};
    tui_worker_view(w, &v);
    tui_worker_transform(w); /* queued behind the first prefill */
    tui_worker_e2e(w);
    eng_snapshot *snap = NULL;
    int ok = 0;
    for (int i = 0; i < 3000 && !ok; i++) {
        eng_snapshot *ns = tui_worker_take(w);
        if (ns) {
            eng_snapshot_free(snap);
            snap = ns;
        }
        ok = snap && snap->ready && snap->e2e.valid;
        if (!ok) usleep(10000);
    }
    assert_true(ok);
    assert_int_equal(snap->transform, 0);
    assert_int_equal(snap->transform_avail, ENG_XF_INT8);
    assert_false(snap->e2e.xf_valid);
    tui_status ts;
    tui_worker_status(w, &ts);
    assert_true(ts.ready);
    eng_snapshot_free(snap);
    assert_int_equal(tui_worker_stop(w, 10000), 0);
    unlink(prompt);
}

/* The row y of the virtual screen as text. */
static void screen_row(int y, char *buf, int cap) {
    int n = mvinnstr(y, 0, buf, cap - 1);
    buf[n > 0 ? n : 0] = 0;
}

static int screen_has(const char *needle) {
    char row[512];
    for (int y = 0; y < LINES; y++) {
        screen_row(y, row, sizeof row);
        if (strstr(row, needle)) return 1;
    }
    return 0;
}

static void test_draw_transform(void **state) {
    (void)state;
    FILE *out = fopen("/dev/null", "w"), *in = fopen("/dev/null", "r");
    assert_non_null(out);
    assert_non_null(in);
    setlocale(LC_ALL, "C.UTF-8");
    SCREEN *scr = newterm("xterm-256color", out, in);
    if (!scr) {
        fclose(out);
        fclose(in);
        skip(); /* no terminfo entry */
    }
    eng_head_stat hs[8];
    eng_layer_stat ls[2];
    memset(hs, 0, sizeof hs);
    memset(ls, 0, sizeof ls);
    for (int i = 0; i < 8; i++) hs[i].density = hs[i].recall = hs[i].error = 0.5f, hs[i].error_plain = NAN;
    ls[0].valid = 1, ls[0].dense_s = 2e-3, ls[0].sparse_s = 1e-3, ls[0].density = 0.5f;
    eng_snapshot snap;
    memset(&snap, 0, sizeof snap);
    snprintf(snap.model, sizeof snap.model, "tiny");
    snprintf(snap.backend, sizeof snap.backend, "cpu");
    snap.n_tokens = 64, snap.n_layers = 2, snap.n_heads = 4, snap.n_kv_heads = 2, snap.head_dim = 8;
    snap.ready = 1, snap.heads = hs, snap.layers = ls;
    snap.transform = snap.transform_avail = ENG_XF_24 | ENG_XF_INT8;
    snap.xf_zero = 0.5, snap.xf_rel_err = 0.41;
    snap.e2e = (eng_e2e_stat){.valid = 1, .dense_s = 0.2, .sparse_s = 0.1, .kl = 0.01, .top1 = 0.9, .ppl_dense = 7,
                              .ppl_sparse = 7.5, .xf_valid = 1, .xf_kl = 0.25, .xf_top1 = 0.75, .xf_ppl_orig = 5,
                              .xf_ppl_xf = 9};
    tui_status st;
    memset(&st, 0, sizeof st);
    tui_draw_init(1);
    static const int sizes[][2] = {{160, 40}, {100, 32}, {80, 24}};
    for (int i = 0; i < 3; i++) {
        resize_term(sizes[i][1], sizes[i][0]);
        tui_layout l;
        tui_state s;
        tui_cmd cmd;
        tui_state_init(&s, 2, 4, 2, 64);
        assert_int_equal(tui_layout_compute(COLS, LINES, 2, 4, 2, 0, 0, &l), 0);
        tui_state_set_map_size(&s, l.map_px_w, l.map_px_h, &cmd);
        snap.view = tui_state_view(&s);
        tui_draw_frame(&l, &s, &snap, &st);
        char hdr[512];
        screen_row(0, hdr, sizeof hdr);
        if (i == 0) assert_non_null(strstr(hdr, "2:4+int8 (50% of attention/MLP weights zero, weight rel err 0.41)"));
        else assert_non_null(strstr(hdr, "2:4+int8 (50%"));
        /* every row of the transform's comparison is on screen, at every size */
        assert_true(screen_has("vs orig: KL 0.2500  top-1 75.0%"));
        assert_true(screen_has("ppl orig 5 -> 2:4+int8 9"));
        assert_true(screen_has("End to end, 2:4+int8 weights"));
        assert_true(screen_has("ppl 7 -> 7.5"));
    }
    /* switched off: the header says so and names the key */
    snap.transform = 0;
    snap.e2e.xf_valid = 0;
    resize_term(32, 100);
    tui_layout l;
    tui_state s;
    tui_cmd cmd;
    tui_state_init(&s, 2, 4, 2, 64);
    tui_layout_compute(COLS, LINES, 2, 4, 2, 0, 0, &l);
    tui_state_set_map_size(&s, l.map_px_w, l.map_px_h, &cmd);
    snap.view = tui_state_view(&s);
    tui_draw_frame(&l, &s, &snap, &st);
    char hdr[512];
    screen_row(0, hdr, sizeof hdr);
    assert_non_null(strstr(hdr, "original weights (x: 2:4+int8)"));
    assert_false(screen_has("vs orig"));
    endwin();
    delscreen(scr);
    fclose(out);
    fclose(in);
}

/* Decode an 8-bit PNG to RGB with libpng; 0 ok. */
static int png_rgb(const char *path, int *w, int *h, uint8_t **rgb) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_read_info(png, info);
    *w = (int)png_get_image_width(png, info);
    *h = (int)png_get_image_height(png, info);
    int ch = png_get_channels(png, info);
    assert_int_equal(png_get_bit_depth(png, info), 8);
    *rgb = malloc((size_t)*w * *h * 3);
    uint8_t *row = malloc((size_t)*w * ch);
    for (int y = 0; y < *h; y++) {
        png_read_row(png, row, NULL);
        for (int x = 0; x < *w; x++) memcpy(*rgb + ((size_t)y * *w + x) * 3, row + (size_t)x * ch, 3);
    }
    free(row);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return 0;
}

/* A colour-map colour (viridis is never grey); the figure's ink, paper and no-data are grey. */
static int colourful(const uint8_t *p) {
    int mx = p[0] > p[1] ? p[0] : p[1], mn = p[0] < p[1] ? p[0] : p[1];
    mx = p[2] > mx ? p[2] : mx;
    mn = p[2] < mn ? p[2] : mn;
    return mx - mn > 40;
}

static void test_diff_png(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    char prompt[64], png[96], cmd[640];
    assert_int_equal(write_prompt(prompt, sizeof prompt, 149), 0);
    snprintf(png, sizeof png, "%s.png", prompt);
    snprintf(cmd, sizeof cmd,
             "'%s' diff --model " TINY " --prompt '%s' --layer 1 --head 2 --transform 24 --size 64x64 --backend cpu "
             "--out '%s' >/dev/null 2>&1",
             tu_bin(), prompt, png);
    assert_int_equal(sh(cmd), 0);
    int w = 0, h = 0;
    uint8_t *rgb = NULL;
    assert_int_equal(png_rgb(png, &w, &h, &rgb), 0);
    /* the maps and the colour bar are the runs of columns holding colour-map pixels, left to right:
     * original, transformed, difference, colour bar */
    int *cnt = calloc((size_t)w, sizeof(int));
    for (int x = 0; x < w; x++)
        for (int y = 0; y < h; y++) cnt[x] += colourful(rgb + ((size_t)y * w + x) * 3);
    int run0[8], run1[8], nr = 0;
    for (int x = 0; x < w; x++) {
        if (!cnt[x]) continue;
        if (nr && run1[nr - 1] == x) {
            run1[nr - 1] = x + 1;
        } else if (nr < 8) {
            run0[nr] = x;
            run1[nr++] = x + 1;
        }
    }
    assert_int_equal(nr, 4);
    for (int i = 0; i < 3; i++) assert_int_equal(run1[i] - run0[i], 64); /* each map drawn 1:1 */
    /* the third panel is not all background: most of its causal pixels are above the scale's floor */
    const viz_rgb lo = viz_cmap_rgb(VIZ_CMAP_VIRIDIS, 0);
    int above = 0, pix = 0;
    for (int x = run0[2]; x < run1[2]; x++)
        for (int y = 0; y < h; y++) {
            const uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            if (!colourful(p)) continue;
            pix++;
            above += abs(p[0] - lo.r) + abs(p[1] - lo.g) + abs(p[2] - lo.b) > 24;
        }
    assert_true(pix >= 64 * 65 / 2 - 64); /* the causal triangle */
    assert_true(above > pix / 4);
    free(cnt);
    free(rgb);
    unlink(png);
    unlink(prompt);
}

static void test_bad_transform_usage(void **state) {
    (void)state;
    static const char *const cmds[] = {
        "tui --model " TINY " --prompt /dev/null --transform 3:4",
        "map --model " TINY " --text ab --layer 0 --head 0 --out /tmp/x.png --transform int4",
        "grid --model " TINY " --text ab --layer 0 --out /tmp/x.png --transform 24+int4",
        "diff --model " TINY " --text ab --layer 0 --head 0 --out /tmp/x.png --transform ''",
        "diff --model " TINY " --text ab --layer 0 --head 0 --out /tmp/x.png", /* neither side given */
        "tui --model " TINY " --prompt /dev/null --transform",
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "'%s' %s </dev/null >/dev/null 2>&1", tu_bin(), cmds[i]);
        if (sh(cmd) != 2) fail_msg("expected exit 2 from: %s", cmds[i]);
    }
    /* and the message names the bad value */
    char cmd[512], out[512] = "";
    snprintf(cmd, sizeof cmd, "'%s' grid --model " TINY " --text ab --layer 0 --term --transform int4 2>&1", tu_bin());
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    assert_int_equal(WEXITSTATUS(pclose(p)), 2);
    assert_non_null(strstr(out, "--transform: bad value 'int4'"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_transform),
        cmocka_unit_test(test_worker_toggle),
        cmocka_unit_test(test_draw_transform),
        cmocka_unit_test(test_diff_png),
        cmocka_unit_test(test_bad_transform_usage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
