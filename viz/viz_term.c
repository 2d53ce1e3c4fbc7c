/* viz_term: half-block / 256-colour / ASCII terminal renderer and its ANSI serialiser (see
 * viz_term.h). */
#include "viz_term.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "viz_png.h"

#define UPPER_HALF "\xe2\x96\x80"
#define LOWER_HALF "\xe2\x96\x84"

static const char RAMP[] = " .:-=+*#%@";

int viz_cellbuf_init(viz_cellbuf *b, int cols, int rows, eng_err *err) {
    memset(b, 0, sizeof *b);
    if (cols < 1 || rows < 1 || cols > 4096 || rows > 4096)
        return eng_err_set(err, "terminal buffer %d x %d: each side must be in [1, 4096]", cols, rows);
    b->cells = malloc(sizeof(viz_cell) * (size_t)cols * (size_t)rows);
    if (!b->cells) return eng_err_set(err, "terminal buffer %d x %d: out of memory", cols, rows);
    b->cols = cols;
    b->rows = rows;
    viz_cellbuf_clear(b);
    return 0;
}

void viz_cellbuf_free(viz_cellbuf *b) {
    free(b->cells);
    memset(b, 0, sizeof *b);
}

void viz_cellbuf_clear(viz_cellbuf *b) {
    viz_cell blank;
    memset(&blank, 0, sizeof blank);
    blank.ch[0] = ' ';
    blank.flags = VIZ_CELL_FG_DEFAULT | VIZ_CELL_BG_DEFAULT;
    for (size_t i = 0; i < (size_t)b->cols * (size_t)b->rows; i++) b->cells[i] = blank;
}

viz_cell *viz_cellbuf_at(viz_cellbuf *b, int x, int y) {
    if (!b->cells || x < 0 || y < 0 || x >= b->cols || y >= b->rows) return NULL;
    return &b->cells[(size_t)y * (size_t)b->cols + (size_t)x];
}

int viz_cellbuf_text(viz_cellbuf *b, int x, int y, const char *s) {
    int n = 0;
    for (; s && *s; s++, x++) {
        viz_cell *c = viz_cellbuf_at(b, x, y);
        if (!c) continue;
        memset(c, 0, sizeof *c);
        unsigned char ch = (unsigned char)*s;
        c->ch[0] = ch >= 32 && ch < 127 ? (char)ch : '?';
        c->flags = VIZ_CELL_FG_DEFAULT | VIZ_CELL_BG_DEFAULT;
        n++;
    }
    return n;
}

static const int CUBE[6] = {0, 95, 135, 175, 215, 255};

static int dist2(int r, int g, int b, viz_rgb c) {
    return (r - c.r) * (r - c.r) + (g - c.g) * (g - c.g) + (b - c.b) * (b - c.b);
}

static int cube_idx(int v) {
    int best = 0;
    for (int i = 1; i < 6; i++)
        if (abs(CUBE[i] - v) < abs(CUBE[best] - v)) best = i;
    return best;
}

uint8_t viz_rgb_to_xterm256(viz_rgb c) {
    int ri = cube_idx(c.r), gi = cube_idx(c.g), bi = cube_idx(c.b);
    int dc = dist2(CUBE[ri], CUBE[gi], CUBE[bi], c);
    int avg = (c.r + c.g + c.b) / 3;
    int gs = avg < 8 ? 0 : avg > 238 ? 23 : (avg - 8 + 5) / 10; /* grey i is 8 + 10 i */
    if (gs > 23) gs = 23;
    int gv = 8 + 10 * gs;
    int dg = dist2(gv, gv, gv, c);
    return dg < dc ? (uint8_t)(232 + gs) : (uint8_t)(16 + 36 * ri + 6 * gi + bi);
}

/* Colour of pixel value v (not NaN), dimmed by the overlay where the index skips it. */
static viz_rgb pixel_rgb(const viz_term_opts *o, float v, float comp) {
    viz_rgb c = viz_cmap_rgb(o->cmap, viz_scale_apply(&o->scale, v));
    if (!isnan(comp) && comp < 1.0f) {
        float a = 0.7f * (1.0f - (comp < 0.0f ? 0.0f : comp));
        c.r = (uint8_t)lrintf(c.r * (1 - a) + 60 * a);
        c.g = (uint8_t)lrintf(c.g * (1 - a) + 60 * a);
        c.b = (uint8_t)lrintf(c.b * (1 - a) + 60 * a);
    }
    return c;
}

static void set_ch(viz_cell *c, const char *s) {
    memset(c->ch, 0, sizeof c->ch);
    memcpy(c->ch, s, strlen(s) < 4 ? strlen(s) : 4);
}

void viz_term_heat(viz_cellbuf *b, int x0, int y0, const float *v, int w, int h, const viz_term_opts *o) {
    for (int cy = 0; cy < (h + 1) / 2; cy++)
        for (int x = 0; x < w; x++) {
            viz_cell *c = viz_cellbuf_at(b, x0 + x, y0 + cy);
            if (!c) continue;
            int yt = 2 * cy, yb = 2 * cy + 1;
            float vt = v[(size_t)yt * (size_t)w + (size_t)x];
            float vb = yb < h ? v[(size_t)yb * (size_t)w + (size_t)x] : NAN;
            float ct = o->computed ? o->computed[(size_t)yt * (size_t)w + (size_t)x] : NAN;
            float cb = o->computed && yb < h ? o->computed[(size_t)yb * (size_t)w + (size_t)x] : NAN;
            memset(c, 0, sizeof *c);
            if (o->mode == VIZ_TERM_MONO) {
                c->flags = VIZ_CELL_FG_DEFAULT | VIZ_CELL_BG_DEFAULT;
                float t = -1.0f;
                if (!isnan(vt) && !(ct < 0.5f)) t = viz_scale_apply(&o->scale, vt);
                if (!isnan(vb) && !(cb < 0.5f)) {
                    float tb = viz_scale_apply(&o->scale, vb);
                    if (tb > t) t = tb;
                }
                int lv = t < 0.0f ? 0 : (int)(t * 10.0f);
                if (lv > 9) lv = 9;
                c->ch[0] = RAMP[lv];
                continue;
            }
            int ht = !isnan(vt), hb = !isnan(vb);
            if (!ht && !hb) {
                c->ch[0] = ' ';
                c->flags = VIZ_CELL_FG_DEFAULT | VIZ_CELL_BG_DEFAULT;
                continue;
            }
            if (ht) {
                set_ch(c, UPPER_HALF);
                c->fg = pixel_rgb(o, vt, ct);
                c->fg256 = viz_rgb_to_xterm256(c->fg);
                if (hb) {
                    c->bg = pixel_rgb(o, vb, cb);
                    c->bg256 = viz_rgb_to_xterm256(c->bg);
                } else {
                    c->flags = VIZ_CELL_BG_DEFAULT;
                }
            } else {
                set_ch(c, LOWER_HALF);
                c->fg = pixel_rgb(o, vb, cb);
                c->fg256 = viz_rgb_to_xterm256(c->fg);
                c->flags = VIZ_CELL_BG_DEFAULT;
            }
        }
}

void viz_term_colorbar(viz_cellbuf *b, int x0, int y0, int width, const viz_term_opts *o) {
    for (int x = 0; x < width; x++) {
        viz_cell *c = viz_cellbuf_at(b, x0 + x, y0);
        if (!c) continue;
        float t = width > 1 ? (float)x / (float)(width - 1) : 1.0f;
        memset(c, 0, sizeof *c);
        if (o->mode == VIZ_TERM_MONO) {
            int lv = (int)(t * 10.0f);
            c->ch[0] = RAMP[lv > 9 ? 9 : lv];
            c->flags = VIZ_CELL_FG_DEFAULT | VIZ_CELL_BG_DEFAULT;
        } else {
            set_ch(c, UPPER_HALF);
            c->fg = c->bg = viz_cmap_rgb(o->cmap, t);
            c->fg256 = c->bg256 = viz_rgb_to_xterm256(c->fg);
        }
    }
}

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *s, const char *t, size_t n) {
    if (s->oom) return;
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (s->n + n + 1 > cap) cap *= 2;
        char *p = realloc(s->p, cap);
        if (!p) { s->oom = 1; return; }
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->n, t, n);
    s->n += n;
    s->p[s->n] = 0;
}

static void puts_(sbuf *s, const char *t) { put(s, t, strlen(t)); }

char *viz_term_ansi(const viz_cellbuf *b, viz_term_mode mode, size_t *len, eng_err *err) {
    sbuf s = {0};
    char esc[64];
    puts_(&s, "");
    for (int y = 0; y < b->rows; y++) {
        /* -1: default colour; -2: unknown (start of row) */
        long cur_fg = -2, cur_bg = -2;
        for (int x = 0; x < b->cols; x++) {
            const viz_cell *c = &b->cells[(size_t)y * (size_t)b->cols + (size_t)x];
            if (mode != VIZ_TERM_MONO) {
                long fg = c->flags & VIZ_CELL_FG_DEFAULT ? -1
                          : mode == VIZ_TERM_256 ? c->fg256 : (long)c->fg.r << 16 | c->fg.g << 8 | c->fg.b;
                long bg = c->flags & VIZ_CELL_BG_DEFAULT ? -1
                          : mode == VIZ_TERM_256 ? c->bg256 : (long)c->bg.r << 16 | c->bg.g << 8 | c->bg.b;
                if (fg != cur_fg) {
                    if (fg < 0) snprintf(esc, sizeof esc, "\x1b[39m");
                    else if (mode == VIZ_TERM_256) snprintf(esc, sizeof esc, "\x1b[38;5;%ldm", fg);
                    else snprintf(esc, sizeof esc, "\x1b[38;2;%d;%d;%dm", c->fg.r, c->fg.g, c->fg.b);
                    puts_(&s, esc);
                    cur_fg = fg;
                }
                if (bg != cur_bg) {
                    if (bg < 0) snprintf(esc, sizeof esc, "\x1b[49m");
                    else if (mode == VIZ_TERM_256) snprintf(esc, sizeof esc, "\x1b[48;5;%ldm", bg);
                    else snprintf(esc, sizeof esc, "\x1b[48;2;%d;%d;%dm", c->bg.r, c->bg.g, c->bg.b);
                    puts_(&s, esc);
                    cur_bg = bg;
                }
                puts_(&s, c->ch[0] ? c->ch : " ");
            } else {
                /* mono: never emit the block characters; they would carry no information */
                unsigned char ch = (unsigned char)c->ch[0];
                char one[2] = {ch >= 32 && ch < 127 ? (char)ch : ' ', 0};
                puts_(&s, one);
            }
        }
        puts_(&s, mode == VIZ_TERM_MONO ? "\n" : "\x1b[0m\n");
    }
    if (s.oom) {
        free(s.p);
        eng_err_set(err, "terminal output: out of memory");
        return NULL;
    }
    if (len) *len = s.n;
    return s.p;
}

viz_term_mode viz_term_mode_detect(const char *colorterm, const char *term, int no_color) {
    if (no_color || !term || !*term || !strcmp(term, "dumb")) return VIZ_TERM_MONO;
    if (colorterm && (!strcmp(colorterm, "truecolor") || !strcmp(colorterm, "24bit"))) return VIZ_TERM_TRUECOLOR;
    return VIZ_TERM_256;
}

int viz_term_figure(const char *title, const float *v, int w, int h, int q0, int q1, int k0, int k1,
                    const viz_term_opts *o, viz_cellbuf *out, eng_err *err) {
    memset(out, 0, sizeof *out);
    if (!v || w < 1 || h < 1) return eng_err_set(err, "terminal map: empty (%d x %d)", w, h);
    char buf[64];
    snprintf(buf, sizeof buf, "%d", q1);
    int left = (int)strlen(buf) + 1;
    int rows = (h + 1) / 2;
    int cols = left + w;
    if (cols < 40) cols = 40;
    if (viz_cellbuf_init(out, cols, 1 + rows + 2, err)) return -1;
    if (title) viz_cellbuf_text(out, 0, 0, title);
    viz_term_heat(out, left, 1, v, w, h, o);
    /* query ticks every ~8 rows: the first query of the row's top pixel */
    int every = rows >= 16 ? 8 : rows >= 4 ? rows / 2 : 1;
    for (int r = 0; r < rows; r += every) {
        snprintf(buf, sizeof buf, "%*d", left - 1, q0 + (int)((long long)2 * r * (q1 - q0) / h));
        viz_cellbuf_text(out, 0, 1 + r, buf);
    }
    /* key ticks: left end, middle, right end */
    snprintf(buf, sizeof buf, "%d", k0);
    viz_cellbuf_text(out, left, 1 + rows, buf);
    snprintf(buf, sizeof buf, "%d", k0 + (k1 - k0) / 2);
    viz_cellbuf_text(out, left + w / 2 - (int)strlen(buf) / 2, 1 + rows, buf);
    snprintf(buf, sizeof buf, "%d", k1);
    viz_cellbuf_text(out, left + w - (int)strlen(buf), 1 + rows, buf);
    /* colour bar: "vmin [bar] vmax (scale)" */
    char lo[32], hi[32];
    viz_format_value(o->scale.vmin, o->scale.kind == VIZ_SCALE_LOG, lo, sizeof lo);
    viz_format_value(o->scale.vmax, o->scale.kind == VIZ_SCALE_LOG, hi, sizeof hi);
    int x = left;
    x += viz_cellbuf_text(out, x, 2 + rows, lo) + 1;
    int bw = w - (int)strlen(lo) - (int)strlen(hi) - 12;
    if (bw < 8) bw = 8;
    viz_term_colorbar(out, x, 2 + rows, bw, o);
    x += bw + 1;
    x += viz_cellbuf_text(out, x, 2 + rows, hi) + 1;
    snprintf(buf, sizeof buf, "(%s)", viz_scale_name(o->scale.kind));
    viz_cellbuf_text(out, x, 2 + rows, buf);
    return 0;
}
