/* test_viz: colour maps and scales, the bitmap font, PNG figures decoded back with libpng (size,
 * a planted hot spot on its expected pixel, the tEXt command line, atomic and failing writes,
 * 8192-pixel sides) and the terminal renderer in truecolor, 256-colour and mono modes. Nothing is
 * compared against a PNG this code wrote earlier. */
#include "test_util.h"

#include <dirent.h>
#include <png.h>
#include <unistd.h>

#include "eng_map.h"
#include "viz_color.h"
#include "viz_font.h"
#include "viz_png.h"
#include "viz_term.h"

typedef struct {
    int w, h;
    uint8_t *rgb;        /* [h][w][3] */
    char command[4096];  /* tEXt "Command" or "" */
} decoded;

/* Decode an 8-bit RGB/RGBA PNG to RGB with libpng; 0 ok. */
static int png_decode(const char *path, decoded *d) {
    memset(d, 0, sizeof *d);
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
    d->w = (int)png_get_image_width(png, info);
    d->h = (int)png_get_image_height(png, info);
    int ch = png_get_channels(png, info);
    assert_int_equal(png_get_bit_depth(png, info), 8);
    png_textp txt;
    int nt = 0;
    png_get_text(png, info, &txt, &nt);
    for (int i = 0; i < nt; i++)
        if (!strcmp(txt[i].key, "Command")) snprintf(d->command, sizeof d->command, "%s", txt[i].text);
    d->rgb = malloc((size_t)d->w * d->h * 3);
    uint8_t *row = malloc((size_t)d->w * ch);
    for (int y = 0; y < d->h; y++) {
        png_read_row(png, row, NULL);
        for (int x = 0; x < d->w; x++) memcpy(d->rgb + ((size_t)y * d->w + x) * 3, row + (size_t)x * ch, 3);
    }
    free(row);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return 0;
}

static const uint8_t *px(const decoded *d, int x, int y) { return d->rgb + ((size_t)y * d->w + x) * 3; }

static void tmp_dir(char *buf, size_t cap) {
    snprintf(buf, cap, "/tmp/attnscope-test-viz-XXXXXX");
    assert_non_null(mkdtemp(buf));
}

static int dir_entries(const char *dir) {
    DIR *dp = opendir(dir);
    int n = 0;
    for (struct dirent *e; dp && (e = readdir(dp));) n += e->d_name[0] != '.';
    if (dp) closedir(dp);
    return n;
}

static void test_cmaps_monotone_lightness(void **state) {
    (void)state;
    for (int m = 0; m < VIZ_CMAP__COUNT; m++) {
        double prev = -1, first = 0, last = 0;
        for (int i = 0; i < 256; i++) {
            double L = viz_rgb_lightness(viz_cmap_rgb((viz_cmap)m, i / 255.0f));
            if (i == 0) first = L;
            last = L;
            /* 8-bit rounding may wobble L* by a few hundredths between neighbours, never more */
            assert_true(L > prev - 0.15);
            if (i % 16 == 0 && i > 0) assert_true(L > prev - 0.15);
            prev = L;
        }
        double p16 = -10;
        for (int i = 0; i <= 16; i++) {
            double L = viz_rgb_lightness(viz_cmap_rgb((viz_cmap)m, i / 16.0f));
            assert_true(L > p16 + 2.0); /* clearly increasing at 1/16 steps */
            p16 = L;
        }
        assert_true(last - first > 60.0);
    }
    /* endpoints of the published tables */
    viz_rgb v0 = viz_cmap_rgb(VIZ_CMAP_VIRIDIS, 0), v1 = viz_cmap_rgb(VIZ_CMAP_VIRIDIS, 1);
    assert_int_equal(v0.r, 0x44); assert_int_equal(v0.g, 0x01); assert_int_equal(v0.b, 0x54);
    assert_int_equal(v1.r, 0xfd); assert_int_equal(v1.g, 0xe7); assert_int_equal(v1.b, 0x25);
    viz_rgb g = viz_cmap_rgb(VIZ_CMAP_GRAY, 0.5f);
    assert_true(fabs(viz_rgb_lightness(g) - 50.0) < 1.0); /* gray is linear in L* */
    viz_cmap c;
    assert_int_equal(viz_cmap_parse("cividis", &c), 0);
    assert_int_equal(c, VIZ_CMAP_CIVIDIS);
    assert_int_equal(viz_cmap_parse("jet", &c), -1);
}

static void test_scales(void **state) {
    (void)state;
    float a[] = {0.0f, 0.5f, NAN, 0.25f}, b[] = {2.0f, 1e-9f, INFINITY};
    viz_span sp[2] = {{a, 4}, {b, 3}};
    viz_scale lin = viz_scale_fit(VIZ_SCALE_LINEAR, 0, 0, sp, 2);
    assert_true(lin.vmin == 0.0f && lin.vmax == 2.0f); /* shared over both panels, non-finite ignored */
    assert_true(fabsf(viz_scale_apply(&lin, 0.5f) - 0.25f) < 1e-6f);
    assert_true(viz_scale_apply(&lin, 5.0f) == 1.0f);
    assert_true(isnan(viz_scale_apply(&lin, NAN)));
    viz_scale lg = viz_scale_fit(VIZ_SCALE_LOG, 0, 3, sp, 2);
    assert_true(fabsf(lg.vmin - 2e-3f) < 1e-7f); /* 1e-9 is more than 3 decades below 2 */
    assert_true(viz_scale_apply(&lg, 0.0f) == 0.0f);
    assert_true(fabsf(viz_scale_apply(&lg, 0.2f) - 2.0f / 3.0f) < 1e-5f);
    assert_true(fabsf(viz_scale_value(&lg, 2.0f / 3.0f) - 0.2f) < 1e-5f);
    viz_scale pw = {VIZ_SCALE_POWER, 0.0f, 4.0f, 0.5f};
    assert_true(fabsf(viz_scale_apply(&pw, 1.0f) - 0.5f) < 1e-6f);
    assert_true(fabsf(viz_scale_value(&pw, 0.5f) - 1.0f) < 1e-5f);
    float t[16];
    viz_scale l6 = {VIZ_SCALE_LOG, 1e-6f, 1.0f, 0};
    int n = viz_scale_ticks(&l6, t, 16);
    assert_int_equal(n, 7);
    for (int i = 0; i < n; i++) assert_true(fabsf(log10f(t[i]) - (i - 6)) < 1e-4f);
    n = viz_scale_ticks(&lin, t, 8);
    assert_true(n >= 3 && n <= 8);
    for (int i = 1; i < n; i++) assert_true(t[i] > t[i - 1]);
    char buf[32];
    viz_format_value(1e-4f, 1, buf, sizeof buf);
    assert_string_equal(buf, "1e-4");
    viz_format_value(0.01f, 1, buf, sizeof buf);
    assert_string_equal(buf, "0.01");
}

static void test_font(void **state) {
    (void)state;
    uint8_t r[VIZ_FONT_GH];
    for (int ch = 33; ch < 127; ch++) {
        viz_font_glyph(ch, r);
        int ink = 0;
        for (int i = 0; i < VIZ_FONT_GH; i++) ink += r[i] != 0;
        assert_true(ink > 0);
    }
    viz_font_glyph(' ', r);
    for (int i = 0; i < VIZ_FONT_GH; i++) assert_int_equal(r[i], 0);
    viz_font_glyph('g', r);
    assert_true(r[7] || r[8]); /* descender */
    viz_font_glyph('A', r);
    assert_true(!r[7] && !r[8]);
    assert_int_equal(r[3], 0x1f); /* the cross bar */
    uint8_t q[VIZ_FONT_GH];
    viz_font_glyph(200, r);
    viz_font_glyph('?', q);
    assert_memory_equal(r, q, sizeof r);
    assert_int_equal(viz_font_text_width("abc", 2), (3 * VIZ_FONT_ADV - 1) * 2);
    assert_int_equal(viz_font_text_width("", 2), 0);
}

/* Find the panel: a 1-pixel frame of exactly (w + 2) x (h + 2) in colour ink. */
static int find_frame(const decoded *d, int w, int h, int *ox, int *oy) {
    for (int y = 0; y + h + 1 < d->h; y++)
        for (int x = 0; x + w + 1 < d->w; x++) {
            const uint8_t *p0 = px(d, x, y);
            if (p0[0] != 34 || p0[1] != 34 || p0[2] != 34) continue;
            int ok = 1;
            for (int i = 0; i < w + 2 && ok; i++) ok = px(d, x + i, y)[0] == 34 && px(d, x + i, y + h + 1)[0] == 34;
            for (int i = 0; i < h + 2 && ok; i++) ok = px(d, x, y + i)[0] == 34 && px(d, x + w + 1, y + i)[0] == 34;
            if (ok) {
                *ox = x + 1;
                *oy = y + 1;
                return 0;
            }
        }
    return -1;
}

/* Q/K with one planted strong (query, key) pair -> eng_map -> figure -> PNG -> libpng: the
 * brightest map pixel is where the pair falls, everything else is dark. */
static void test_png_hot_spot_and_text(void **state) {
    (void)state;
    int n = 256, d = 16, W = 64, H = 32;
    uint64_t seed = 42;
    float *q = malloc(sizeof(float) * n * d), *k = malloc(sizeof(float) * n * d);
    tu_fill(q, (size_t)n * d, &seed, 0.1f);
    tu_fill(k, (size_t)n * d, &seed, 0.1f);
    int tq = 230, tk = 77;
    for (int c = 0; c < d; c++) { q[tq * d + c] = c == 3 ? 8.0f : 0.0f; k[tk * d + c] = c == 3 ? 8.0f : 0.0f; }
    float vals[64 * 32];
    eng_err err = {{0}};
    eng_map_opts o = {128, 256, 0, 256, W, H, ENG_POOL_MAX, NAN, 0};
    assert_int_equal(eng_map_pool(q, d, k, d, n, d, NULL, NULL, &o, vals, &err), 0);
    int ex = tk * W / 256, ey = (tq - 128) * H / 128;
    viz_panel p = {.values = vals, .w = W, .h = H, .q0 = 128, .q1 = 256, .k0 = 0, .k1 = 256, .title = "L0 H0"};
    viz_figure f = {.title = "hot spot", .cmap = VIZ_CMAP_GRAY, .scale = {VIZ_SCALE_LINEAR, 0.0f, 1.0f, 0},
                    .cbar_label = "p"};
    viz_canvas cv;
    assert_int_equal(viz_figure_render(&f, &p, 1, &cv, &err), 0);
    char dir[64], path[128];
    tmp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/map.png", dir);
    const char *cmd = "attnscope map --model m --prompt p.txt --layer 0 --head 0 --out map.png";
    assert_int_equal(viz_png_write(path, &cv, cmd, &err), 0);
    assert_int_equal(dir_entries(dir), 1); /* no temp file left behind */
    decoded dd;
    assert_int_equal(png_decode(path, &dd), 0);
    assert_int_equal(dd.w, cv.w);
    assert_int_equal(dd.h, cv.h);
    assert_string_equal(dd.command, cmd);
    int ox = 0, oy = 0;
    assert_int_equal(find_frame(&dd, W, H, &ox, &oy), 0);
    int bx = -1, by = -1, best = -1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int v = px(&dd, ox + x, oy + y)[0];
            if (isnan(vals[y * W + x])) {
                assert_int_equal(v, 255); /* no data above the diagonal: white background */
                continue;
            }
            if (v > best) { best = v; bx = x; by = y; }
        }
    assert_int_equal(bx, ex);
    assert_int_equal(by, ey);
    assert_true(best > 200);
    /* every other causal pixel is dark: p ~ 1/(t+1) < 0.01 there */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if ((x != bx || y != by) && !isnan(vals[y * W + x])) assert_true(px(&dd, ox + x, oy + y)[0] < 60);
    free(dd.rgb);
    viz_canvas_free(&cv);
    unlink(path);
    rmdir(dir);
    free(q);
    free(k);
}

static void test_png_sizes_and_errors(void **state) {
    (void)state;
    char dir[64], path[160];
    tmp_dir(dir, sizeof dir);
    eng_err err = {{0}};
    int sizes[2][2] = {{8192, 8}, {8, 8192}};
    for (int i = 0; i < 2; i++) {
        viz_canvas c;
        viz_rgb bg = {10, 20, 30};
        assert_int_equal(viz_canvas_init(&c, sizes[i][0], sizes[i][1], 4, bg, &err), 0);
        viz_canvas_fill(&c, c.w - 1, c.h - 1, 1, 1, (viz_rgb){200, 100, 50}, 1.0f);
        snprintf(path, sizeof path, "%s/big%d.png", dir, i);
        assert_int_equal(viz_png_write(path, &c, "x\xc3\xa9", &err), 0); /* non-ASCII: iTXt */
        decoded d;
        assert_int_equal(png_decode(path, &d), 0);
        assert_int_equal(d.w, sizes[i][0]);
        assert_int_equal(d.h, sizes[i][1]);
        assert_int_equal(px(&d, 0, 0)[2], 30);
        assert_int_equal(px(&d, d.w - 1, d.h - 1)[0], 200);
        free(d.rgb);
        unlink(path);
        viz_canvas_free(&c);
    }
    viz_canvas c;
    assert_int_equal(viz_canvas_init(&c, VIZ_CANVAS_MAX + 1, 4, 3, (viz_rgb){0, 0, 0}, &err), -1);
    assert_int_equal(viz_canvas_init(&c, 4, 4, 3, (viz_rgb){0, 0, 0}, &err), 0);
    assert_int_equal(viz_png_write("/nonexistent-dir-attnscope/x.png", &c, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent-dir-attnscope/x.png"));
    /* a directory in the way of the final name: rename fails, the temp file is removed */
    snprintf(path, sizeof path, "%s/sub", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(viz_png_write(path, &c, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "cannot write"));
    assert_int_equal(dir_entries(dir), 1);
    rmdir(path);
    viz_canvas_free(&c);
    rmdir(dir);
    /* figure input errors */
    viz_panel p = {0};
    viz_figure f = {.scale = {VIZ_SCALE_LINEAR, 0, 1, 0}};
    assert_int_equal(viz_figure_render(&f, &p, 1, &c, &err), -1);
    assert_non_null(strstr(err.msg, "panel 0"));
}

/* Several panels share one scale; token labels appear only when zoomed in. */
static void test_figure_panels_and_tokens(void **state) {
    (void)state;
    float a[16 * 16], b[16 * 16];
    for (int i = 0; i < 256; i++) { a[i] = (float)i / 255.0f; b[i] = 0.5f; }
    const char *toks[16] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"};
    viz_panel p[3] = {{.values = a, .w = 16, .h = 16, .q0 = 0, .q1 = 16, .k0 = 0, .k1 = 16, .title = "dense"},
                      {.values = b, .w = 16, .h = 16, .q0 = 0, .q1 = 16, .k0 = 0, .k1 = 16, .title = "sparse"},
                      {.values = a, .w = 16, .h = 16, .q0 = 0, .q1 = 16, .k0 = 0, .k1 = 16, .title = "diff"}};
    viz_span sp[3] = {{a, 256}, {b, 256}, {a, 256}};
    viz_figure f = {.title = "t", .cmap = VIZ_CMAP_MAGMA, .scale = viz_scale_fit(VIZ_SCALE_LINEAR, 0, 0, sp, 3)};
    viz_canvas c1, c2;
    eng_err err;
    assert_int_equal(viz_figure_render(&f, p, 3, &c1, &err), 0);
    f.tokens = toks;
    f.n_tokens = 16;
    assert_int_equal(viz_figure_render(&f, p, 3, &c2, &err), 0);
    assert_int_equal(c1.w, c2.w); /* 1 px per token: too small for labels, same layout */
    viz_canvas_free(&c2);
    for (int i = 0; i < 3; i++) p[i].w = p[i].h = 16; /* same data, 16 px per token via a bigger map */
    float big[256 * 256];
    for (int y = 0; y < 256; y++)
        for (int x = 0; x < 256; x++) big[y * 256 + x] = a[(y / 16) * 16 + x / 16];
    viz_panel z = {.values = big, .w = 256, .h = 256, .q0 = 0, .q1 = 16, .k0 = 0, .k1 = 16};
    f.cols = 1;
    assert_int_equal(viz_figure_render(&f, &z, 1, &c2, &err), 0);
    f.tokens = NULL;
    viz_canvas c3;
    assert_int_equal(viz_figure_render(&f, &z, 1, &c3, &err), 0);
    assert_true(c2.h > c3.h || c2.w != c3.w || memcmp(c2.px, c3.px, (size_t)c2.w * c2.h * 3) != 0);
    viz_canvas_free(&c1);
    viz_canvas_free(&c2);
    viz_canvas_free(&c3);
}

static void test_term_modes(void **state) {
    (void)state;
    /* 2 x 3 pixels -> 2 columns, 2 rows; bottom half of row 2 missing; one NaN pixel */
    float v[6] = {1.0f, 0.0f, 0.5f, NAN, NAN, 0.25f};
    viz_term_opts o = {VIZ_CMAP_VIRIDIS, {VIZ_SCALE_LINEAR, 0.0f, 1.0f, 0}, VIZ_TERM_TRUECOLOR, NULL};
    viz_cellbuf b;
    eng_err err;
    assert_int_equal(viz_cellbuf_init(&b, 2, 2, &err), 0);
    viz_term_heat(&b, 0, 0, v, 2, 3, &o);
    viz_cell *c = viz_cellbuf_at(&b, 0, 0);
    assert_string_equal(c->ch, "\xe2\x96\x80");
    viz_rgb top = viz_cmap_rgb(VIZ_CMAP_VIRIDIS, 1.0f), bot = viz_cmap_rgb(VIZ_CMAP_VIRIDIS, 0.5f);
    assert_memory_equal(&c->fg, &top, 3);
    assert_memory_equal(&c->bg, &bot, 3);
    assert_int_equal(c->flags, 0);
    c = viz_cellbuf_at(&b, 1, 0); /* top 0.0, bottom NaN */
    assert_int_equal(c->flags, VIZ_CELL_BG_DEFAULT);
    c = viz_cellbuf_at(&b, 1, 1); /* pixel rows 2..3 of column 1: 0.25 over nothing */
    assert_string_equal(c->ch, "\xe2\x96\x80");
    c = viz_cellbuf_at(&b, 0, 1);
    assert_string_equal(c->ch, " ");
    assert_int_equal(c->flags, VIZ_CELL_FG_DEFAULT | VIZ_CELL_BG_DEFAULT);
    char *s = viz_term_ansi(&b, VIZ_TERM_TRUECOLOR, NULL, &err);
    char want[64];
    snprintf(want, sizeof want, "\x1b[38;2;%d;%d;%dm", top.r, top.g, top.b);
    assert_non_null(strstr(s, want));
    snprintf(want, sizeof want, "\x1b[48;2;%d;%d;%dm", bot.r, bot.g, bot.b);
    assert_non_null(strstr(s, want));
    assert_non_null(strstr(s, "\x1b[0m\n"));
    free(s);
    o.mode = VIZ_TERM_256;
    viz_term_heat(&b, 0, 0, v, 2, 3, &o);
    s = viz_term_ansi(&b, VIZ_TERM_256, NULL, &err);
    snprintf(want, sizeof want, "\x1b[38;5;%dm", viz_rgb_to_xterm256(top));
    assert_non_null(strstr(s, want));
    assert_null(strstr(s, "38;2;"));
    free(s);
    o.mode = VIZ_TERM_MONO;
    viz_term_heat(&b, 0, 0, v, 2, 3, &o);
    size_t len;
    s = viz_term_ansi(&b, VIZ_TERM_MONO, &len, &err);
    assert_null(strchr(s, 0x1b));
    /* cell (0,0) max(1.0, 0.5) -> '@'; (1,0) 0.0 -> ' '; (0,1) NaN -> ' '; (1,1) 0.25 -> ':' */
    assert_string_equal(s, "@ \n :\n");
    assert_int_equal(len, strlen(s));
    free(s);
    viz_cellbuf_free(&b);
    /* palette and mode detection */
    assert_int_equal(viz_rgb_to_xterm256((viz_rgb){0, 0, 0}), 16);
    assert_int_equal(viz_rgb_to_xterm256((viz_rgb){255, 255, 255}), 231);
    assert_int_equal(viz_rgb_to_xterm256((viz_rgb){128, 128, 128}), 244);
    assert_int_equal(viz_rgb_to_xterm256((viz_rgb){255, 0, 0}), 196);
    assert_int_equal(viz_term_mode_detect("truecolor", "xterm-256color", 0), VIZ_TERM_TRUECOLOR);
    assert_int_equal(viz_term_mode_detect(NULL, "xterm-256color", 0), VIZ_TERM_256);
    assert_int_equal(viz_term_mode_detect("truecolor", "xterm", 1), VIZ_TERM_MONO);
    assert_int_equal(viz_term_mode_detect(NULL, "dumb", 0), VIZ_TERM_MONO);
    /* the figure: title row, map rows, key ticks, colour bar */
    float m[8 * 4];
    for (int i = 0; i < 32; i++) m[i] = (float)i / 31.0f;
    viz_cellbuf fb;
    assert_int_equal(viz_term_figure("L1 H2", m, 8, 4, 0, 4, 0, 8, &o, &fb, &err), 0);
    assert_int_equal(fb.rows, 1 + 2 + 2);
    s = viz_term_ansi(&fb, VIZ_TERM_MONO, NULL, &err);
    assert_true(!strncmp(s, "L1 H2", 5));
    assert_non_null(strstr(s, "(linear)"));
    free(s);
    viz_cellbuf_free(&fb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmaps_monotone_lightness),
        cmocka_unit_test(test_scales),
        cmocka_unit_test(test_font),
        cmocka_unit_test(test_png_hot_spot_and_text),
        cmocka_unit_test(test_png_sizes_and_errors),
        cmocka_unit_test(test_figure_panels_and_tokens),
        cmocka_unit_test(test_term_modes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
