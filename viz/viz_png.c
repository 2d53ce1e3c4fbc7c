/* viz_png: canvas drawing, attention-figure layout and the atomic libpng writer (see viz_png.h). */
#include "viz_png.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "viz_font.h"

static const viz_rgb INK = {34, 34, 34};
static const viz_rgb WHITE = {255, 255, 255};
static const viz_rgb NAN_BG = {255, 255, 255};   /* no data (above the causal diagonal) */
static const viz_rgb SKIP = {214, 214, 214};      /* wash over what the index skips */
static const viz_rgb VERT = {230, 159, 0};        /* Okabe-Ito orange: vertical lines */
static const viz_rgb SLASH = {86, 180, 233};      /* Okabe-Ito sky blue: slash lines */

int viz_canvas_init(viz_canvas *c, int w, int h, int channels, viz_rgb bg, eng_err *err) {
    memset(c, 0, sizeof *c);
    if (w < 1 || h < 1 || w > VIZ_CANVAS_MAX || h > VIZ_CANVAS_MAX)
        return eng_err_set(err, "canvas %d x %d: each side must be in [1, %d]", w, h, VIZ_CANVAS_MAX);
    if (channels != 3 && channels != 4)
        return eng_err_set(err, "canvas: %d channels (want 3 = RGB or 4 = RGBA)", channels);
    size_t n = (size_t)w * (size_t)h;
    c->px = malloc(n * (size_t)channels);
    if (!c->px) return eng_err_set(err, "canvas %d x %d: out of memory", w, h);
    c->w = w;
    c->h = h;
    c->channels = channels;
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = c->px + i * (size_t)channels;
        p[0] = bg.r;
        p[1] = bg.g;
        p[2] = bg.b;
        if (channels == 4) p[3] = 255;
    }
    return 0;
}

void viz_canvas_free(viz_canvas *c) {
    free(c->px);
    memset(c, 0, sizeof *c);
}

void viz_canvas_blend(viz_canvas *c, int x, int y, viz_rgb col, float alpha) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h || !(alpha > 0.0f)) return;
    uint8_t *p = c->px + ((size_t)y * (size_t)c->w + (size_t)x) * (size_t)c->channels;
    if (alpha >= 1.0f) {
        p[0] = col.r;
        p[1] = col.g;
        p[2] = col.b;
    } else {
        float b = 1.0f - alpha;
        p[0] = (uint8_t)lrintf(p[0] * b + col.r * alpha);
        p[1] = (uint8_t)lrintf(p[1] * b + col.g * alpha);
        p[2] = (uint8_t)lrintf(p[2] * b + col.b * alpha);
    }
    if (c->channels == 4) p[3] = 255;
}

void viz_canvas_fill(viz_canvas *c, int x, int y, int w, int h, viz_rgb col, float alpha) {
    int x0 = x < 0 ? 0 : x, y0 = y < 0 ? 0 : y;
    int x1 = x + w > c->w ? c->w : x + w, y1 = y + h > c->h ? c->h : y + h;
    for (int yy = y0; yy < y1; yy++)
        for (int xx = x0; xx < x1; xx++) viz_canvas_blend(c, xx, yy, col, alpha);
}

void viz_canvas_rect(viz_canvas *c, int x, int y, int w, int h, viz_rgb col, int thick) {
    if (thick < 1) thick = 1;
    viz_canvas_fill(c, x, y, w, thick, col, 1.0f);
    viz_canvas_fill(c, x, y + h - thick, w, thick, col, 1.0f);
    viz_canvas_fill(c, x, y, thick, h, col, 1.0f);
    viz_canvas_fill(c, x + w - thick, y, thick, h, col, 1.0f);
}

void viz_canvas_line(viz_canvas *c, int x0, int y0, int x1, int y1, viz_rgb col, float alpha) {
    /* Bresenham; lines here are at most a few thousand pixels, so no clipping pre-pass. */
    long dx = labs((long)x1 - x0), dy = -labs((long)y1 - y0);
    int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    long e = dx + dy;
    for (;;) {
        viz_canvas_blend(c, x0, y0, col, alpha);
        if (x0 == x1 && y0 == y1) break;
        long e2 = 2 * e;
        if (e2 >= dy) { e += dy; x0 += sx; }
        if (e2 <= dx) { e += dx; y0 += sy; }
    }
}

void viz_canvas_text(viz_canvas *c, int x, int y, const char *s, int scale, viz_rgb col) {
    if (scale < 1) scale = 1;
    uint8_t rows[VIZ_FONT_GH];
    for (; s && *s; s++, x += VIZ_FONT_ADV * scale) {
        viz_font_glyph((unsigned char)*s, rows);
        for (int r = 0; r < VIZ_FONT_GH; r++)
            for (int cc = 0; cc < VIZ_FONT_GW; cc++)
                if (rows[r] >> (VIZ_FONT_GW - 1 - cc) & 1)
                    viz_canvas_fill(c, x + cc * scale, y + r * scale, scale, scale, col, 1.0f);
    }
}

void viz_canvas_text_up(viz_canvas *c, int x, int y, const char *s, int scale, viz_rgb col) {
    if (scale < 1) scale = 1;
    int len = viz_font_text_width(s, scale);
    uint8_t rows[VIZ_FONT_GH];
    /* Glyph pixel (cc, r) of the character starting at advance a lands at
     * (x + r, y + len - 1 - (a + cc)) in font pixels: rotated 90 degrees counter-clockwise. */
    int a = 0;
    for (; s && *s; s++, a += VIZ_FONT_ADV * scale) {
        viz_font_glyph((unsigned char)*s, rows);
        for (int r = 0; r < VIZ_FONT_GH; r++)
            for (int cc = 0; cc < VIZ_FONT_GW; cc++)
                if (rows[r] >> (VIZ_FONT_GW - 1 - cc) & 1)
                    viz_canvas_fill(c, x + r * scale, y + len - (a + (cc + 1) * scale), scale, scale, col,
                                    1.0f);
    }
}

void viz_canvas_heat(viz_canvas *c, int x, int y, const float *v, int w, int h, const viz_scale *s,
                     viz_cmap m, viz_rgb nan_col) {
    for (int yy = 0; yy < h; yy++)
        for (int xx = 0; xx < w; xx++) {
            float val = v[(size_t)yy * (size_t)w + (size_t)xx];
            viz_rgb col = isnan(val) ? nan_col : viz_cmap_rgb(m, viz_scale_apply(s, val));
            viz_canvas_blend(c, x + xx, y + yy, col, 1.0f);
        }
}

void viz_format_value(float v, int log_style, char *buf, int cap) {
    if (v == 0.0f) {
        snprintf(buf, (size_t)cap, "0");
        return;
    }
    double a = fabs((double)v);
    double l10 = log10(a), e = fabs(l10 - round(l10)) < 1e-4 ? round(l10) : floor(l10);
    if (log_style && fabs(a / pow(10.0, e) - 1.0) < 1e-3) {
        if (e >= -3 && e <= 3) snprintf(buf, (size_t)cap, "%s%g", v < 0 ? "-" : "", pow(10.0, e));
        else snprintf(buf, (size_t)cap, "%s1e%d", v < 0 ? "-" : "", (int)e);
        return;
    }
    if (a >= 1e-3 && a < 1e5) snprintf(buf, (size_t)cap, "%.3g", (double)v);
    else snprintf(buf, (size_t)cap, "%.2g", (double)v);
}

/* ---- figure layout ---- */

/* 1, 2 or 5 times a power of ten, the smallest such >= x (x > 0). */
static long nice_long(double x) {
    if (x < 1.0) return 1;
    double p = pow(10.0, floor(log10(x)));
    double m = x / p;
    return (long)((m <= 1.0 ? 1.0 : m <= 2.0 ? 2.0 : m <= 5.0 ? 5.0 : 10.0) * p + 0.5);
}

/* Token label safe for the font: control characters become '?', at most 12 characters. */
static void token_label(const char *t, char *buf, int cap) {
    int n = 0;
    for (; t && *t && n < cap - 1 && n < 12; t++) {
        unsigned char ch = (unsigned char)*t;
        if (ch == '\n' && n + 2 < cap - 1) { buf[n++] = '\\'; buf[n++] = 'n'; continue; }
        buf[n++] = (ch >= 32 && ch < 127) ? (char)ch : (ch >= 0xC0 || ch < 0x80 ? '?' : 0);
        if (!buf[n - 1]) n--; /* UTF-8 continuation bytes: one '?' per character */
    }
    buf[n] = 0;
}

typedef struct {
    int fs;              /* font scale */
    int ch, adv;         /* glyph height, advance (pixels) */
    int pw, ph;          /* largest panel */
    int title_h;         /* figure title band */
    int ptitle_h;        /* panel title band */
    int left, bottom;    /* margins around each panel's map */
    int cell_w, cell_h;  /* one grid cell */
    int cols, rows;
    int ytok, xtok;      /* token labels on the axes: 0 none, else their font scale */
    int cbar_x, cbar_w;  /* colour bar block */
    int W, H;
} layout;

/* Token labels fit an axis when every token gets a glyph height plus 2 pixels. */
static int tokens_fit(const viz_figure *f, const viz_panel *p, int n_panels, int axis_pixels_y, int ch) {
    if (!f->tokens || f->n_tokens <= 0) return 0;
    for (int i = 0; i < n_panels; i++) {
        int nt = axis_pixels_y ? p[i].q1 - p[i].q0 : p[i].k1 - p[i].k0;
        int px = axis_pixels_y ? p[i].h : p[i].w;
        int hi = axis_pixels_y ? p[i].q1 : p[i].k1;
        if (nt <= 0 || px / nt < ch + 2 || hi > f->n_tokens) return 0;
    }
    return 1;
}

static int max_label_w(const viz_figure *f, const viz_panel *p, int n_panels, int y_axis, int fs) {
    int w = 0;
    char buf[64];
    for (int i = 0; i < n_panels; i++) {
        int a = y_axis ? p[i].q0 : p[i].k0, b = y_axis ? p[i].q1 : p[i].k1;
        for (int t = a; t < b && t < f->n_tokens; t++) {
            token_label(f->tokens[t], buf, sizeof buf);
            int lw = viz_font_text_width(buf, fs);
            if (lw > w) w = lw;
        }
    }
    return w;
}

static void layout_compute(const viz_figure *f, const viz_panel *p, int n, layout *L) {
    memset(L, 0, sizeof *L);
    for (int i = 0; i < n; i++) {
        if (p[i].w > L->pw) L->pw = p[i].w;
        if (p[i].h > L->ph) L->ph = p[i].h;
    }
    int side = L->pw < L->ph ? L->pw : L->ph;
    L->fs = f->font_scale > 0 ? f->font_scale : side >= 1600 ? 3 : side >= 480 ? 2 : 1;
    L->ch = VIZ_FONT_GH * L->fs;
    L->adv = VIZ_FONT_ADV * L->fs;
    int fs = L->fs, gap = 4 * fs;
    L->title_h = f->title ? VIZ_FONT_GH * (fs + 1) + 3 * gap : gap;
    int any_ptitle = 0;
    for (int i = 0; i < n; i++) any_ptitle |= p[i].title != NULL;
    L->ptitle_h = any_ptitle ? L->ch + 2 * gap : gap;
    L->ytok = tokens_fit(f, p, n, 1, L->ch) ? fs : tokens_fit(f, p, n, 1, VIZ_FONT_GH) ? 1 : 0;
    L->xtok = tokens_fit(f, p, n, 0, L->ch) ? fs : tokens_fit(f, p, n, 0, VIZ_FONT_GH) ? 1 : 0;
    int maxq = 0;
    for (int i = 0; i < n; i++) if (p[i].q1 > maxq) maxq = p[i].q1;
    char buf[32];
    snprintf(buf, sizeof buf, "%d", maxq);
    int ylab_w = L->ytok ? max_label_w(f, p, n, 1, L->ytok) : viz_font_text_width(buf, fs);
    L->left = gap + L->ch + gap + ylab_w + gap + 3 * fs;
    int xlab_h = L->xtok ? max_label_w(f, p, n, 0, L->xtok) : L->ch;
    L->bottom = 3 * fs + gap + xlab_h + gap + L->ch + 2 * gap;
    L->cell_w = L->left + L->pw + 3 * gap;
    L->cell_h = L->ptitle_h + L->ph + L->bottom;
    L->cols = f->cols > 0 && f->cols < n ? f->cols : n;
    L->rows = (n + L->cols - 1) / L->cols;
    L->cbar_x = L->cols * L->cell_w + gap;
    /* bar (4 font cells wide), ticks, the widest tick label ("3.2e-05"), rotated label */
    L->cbar_w = 4 * L->adv + 3 * fs + gap + 8 * L->adv + gap + L->ch + 2 * gap;
    L->W = L->cbar_x + L->cbar_w;
    L->H = L->title_h + L->rows * L->cell_h;
    if (f->title) {
        int tw = viz_font_text_width(f->title, fs + 1) + 4 * gap;
        if (tw > L->W) L->W = tw;
    }
}

static float xpix(const viz_panel *p, double k) {
    return (float)((k - p->k0) * p->w / (double)(p->k1 - p->k0));
}
static float ypix(const viz_panel *p, double q) {
    return (float)((q - p->q0) * p->h / (double)(p->q1 - p->q0));
}

static void draw_overlay(viz_canvas *c, const viz_panel *p, int ox, int oy) {
    if (p->computed) {
        for (int y = 0; y < p->h; y++)
            for (int x = 0; x < p->w; x++) {
                float fr = p->computed[(size_t)y * (size_t)p->w + (size_t)x];
                if (isnan(fr) || fr >= 1.0f) continue;
                viz_canvas_blend(c, ox + x, oy + y, SKIP, 0.6f * (1.0f - (fr < 0 ? 0 : fr)));
            }
    }
    int nk = p->k1 - p->k0, nq = p->q1 - p->q0;
    if (p->block > 0 && (double)p->block * p->w / nk >= 4.0 && (double)p->block * p->h / nq >= 4.0) {
        for (long q = ((long)p->q0 / p->block + 1) * p->block; q < p->q1; q += p->block) {
            long kend = q < p->k1 ? q : p->k1;
            if (kend <= p->k0) continue;
            int y = oy + (int)lrintf(ypix(p, (double)q));
            viz_canvas_line(c, ox, y, ox + (int)lrintf(xpix(p, (double)kend)) - 1, y, WHITE, 0.25f);
        }
        for (long k = ((long)p->k0 / p->block + 1) * p->block; k < p->k1; k += p->block) {
            long qs = k > p->q0 ? k : p->q0;
            if (qs >= p->q1) continue;
            int x = ox + (int)lrintf(xpix(p, (double)k));
            viz_canvas_line(c, x, oy + (int)lrintf(ypix(p, (double)qs)), x, oy + p->h - 1, WHITE, 0.25f);
        }
    }
    /* Lines that land on the same pixel column (or diagonal) are drawn once, so a run of
     * adjacent lines reads as one band instead of piling up opacity. */
    /* More than 32 distinct lines of a kind form solid bands that hide the map; the coverage
     * wash already shows them, so such line sets are not drawn. */
    int nvx = 0, nsx = 0, lx = INT_MIN, lo_ = INT_MIN;
    for (int i = 0; i < p->n_verticals; i++) {
        int v = (int)floorf(xpix(p, p->verticals[i] + 0.5));
        if (p->verticals[i] >= p->k0 && p->verticals[i] < p->k1 && v != lx) { nvx++; lx = v; }
    }
    for (int i = 0; i < p->n_slashes; i++) {
        int v = (int)floor((double)p->slashes[i] * p->w / nk);
        if (v != lo_) { nsx++; lo_ = v; }
    }
    int last_x = INT_MIN;
    for (int i = 0; i < (nvx <= 32 ? p->n_verticals : 0); i++) {
        int k = p->verticals[i];
        if (k < p->k0 || k >= p->k1) continue;
        int px_ = (int)floorf(xpix(p, k + 0.5));
        if (px_ == last_x) continue;
        last_x = px_;
        long qs = k > p->q0 ? k : p->q0;
        if (qs >= p->q1) continue;
        int x = ox + (int)floorf(xpix(p, k + 0.5));
        viz_canvas_line(c, x, oy + (int)floorf(ypix(p, (double)qs)), x, oy + p->h - 1, VERT, 0.6f);
    }
    int last_o = INT_MIN;
    for (int i = 0; i < (nsx <= 32 ? p->n_slashes : 0); i++) {
        long o = p->slashes[i];
        int po = (int)floor((double)o * p->w / nk);
        if (po == last_o) continue;
        last_o = po;
        long ka = p->k0 > p->q0 - o ? p->k0 : p->q0 - o;
        long kb = p->k1 < p->q1 - o ? p->k1 : p->q1 - o; /* exclusive */
        if (o < 0 || ka >= kb) continue;
        int x0 = ox + (int)floorf(xpix(p, ka + 0.5)), y0 = oy + (int)floorf(ypix(p, ka + o + 0.5));
        int x1 = ox + (int)floorf(xpix(p, kb - 0.5)), y1 = oy + (int)floorf(ypix(p, kb - 1 + o + 0.5));
        viz_canvas_line(c, x0, y0, x1, y1, SLASH, 0.6f);
    }
}

static void draw_axes(viz_canvas *c, const viz_figure *f, const viz_panel *p, const layout *L, int ox, int oy) {
    int fs = L->fs, gap = 4 * fs, tick = 3 * fs;
    char buf[64];
    viz_canvas_rect(c, ox - 1, oy - 1, p->w + 2, p->h + 2, INK, 1);
    int nq = p->q1 - p->q0, nk = p->k1 - p->k0;
    /* y axis */
    if (L->ytok) {
        for (int q = p->q0; q < p->q1; q++) {
            token_label(f->tokens[q], buf, sizeof buf);
            int yc = oy + (int)ypix(p, q + 0.5) - VIZ_FONT_ASC * L->ytok / 2 - L->ytok / 2;
            viz_canvas_text(c, ox - tick - gap / 2 - viz_font_text_width(buf, L->ytok), yc, buf, L->ytok, INK);
        }
    } else {
        long step = nice_long((double)nq * (L->ch * 3) / (p->h > 0 ? p->h : 1));
        for (long q = ((long)p->q0 + step - 1) / step * step; q <= p->q1; q += step) {
            int y = oy + (int)lrintf(ypix(p, (double)q));
            if (y > oy + p->h) y = oy + p->h;
            viz_canvas_fill(c, ox - tick - 1, y, tick, fs, INK, 1.0f);
            snprintf(buf, sizeof buf, "%ld", q);
            viz_canvas_text(c, ox - tick - gap / 2 - 1 - viz_font_text_width(buf, fs), y - L->ch * 7 / 18, buf, fs,
                            INK);
        }
    }
    /* x axis */
    if (L->xtok) {
        for (int k = p->k0; k < p->k1; k++) {
            token_label(f->tokens[k], buf, sizeof buf);
            int xc = ox + (int)xpix(p, k + 0.5) - VIZ_FONT_ASC * L->xtok / 2 - L->xtok / 2;
            /* reads bottom to top and ends next to the axis */
            viz_canvas_text_up(c, xc, oy + p->h + tick + gap / 2, buf, L->xtok, INK);
        }
    } else {
        int lw = viz_font_text_width("000000", fs);
        long step = nice_long((double)nk * (lw * 2) / (p->w > 0 ? p->w : 1));
        for (long k = ((long)p->k0 + step - 1) / step * step; k <= p->k1; k += step) {
            int x = ox + (int)lrintf(xpix(p, (double)k));
            if (x > ox + p->w) x = ox + p->w;
            viz_canvas_fill(c, x, oy + p->h + 1, fs, tick, INK, 1.0f);
            snprintf(buf, sizeof buf, "%ld", k);
            viz_canvas_text(c, x - viz_font_text_width(buf, fs) / 2, oy + p->h + tick + gap / 2, buf, fs, INK);
        }
    }
    /* axis titles */
    char xlb[96], ylb[96];
    snprintf(xlb, sizeof xlb, "key token (positions %d-%d)", p->k0, p->k1 - 1);
    snprintf(ylb, sizeof ylb, "query token (positions %d-%d)", p->q0, p->q1 - 1);
    const char *xl = f->x_label ? f->x_label : L->xtok ? xlb : "key position";
    const char *yl = f->y_label ? f->y_label : L->ytok ? ylb : "query position";
    int xlab_h = L->xtok ? L->bottom - (3 * fs + gap + L->ch + 3 * gap) : L->ch;
    viz_canvas_text(c, ox + p->w / 2 - viz_font_text_width(xl, fs) / 2, oy + p->h + tick + gap + xlab_h + gap, xl, fs,
                    INK);
    int yw = viz_font_text_width(yl, fs);
    viz_canvas_text_up(c, ox - L->left + gap, oy + p->h / 2 - yw / 2, yl, fs, INK);
    if (p->title) {
        int tw = viz_font_text_width(p->title, fs);
        int tx = ox + p->w / 2 - tw / 2;
        if (tx < ox - L->left + gap) tx = ox - L->left + gap;
        viz_canvas_text(c, tx, oy - gap - L->ch, p->title, fs, INK);
    }
}

static void draw_colorbar(viz_canvas *c, const viz_figure *f, const layout *L) {
    int fs = L->fs, gap = 4 * fs;
    int bx = L->cbar_x, by = L->title_h + L->ptitle_h, bw = 4 * L->adv, bh = L->ph;
    for (int y = 0; y < bh; y++) {
        float t = bh > 1 ? 1.0f - (float)y / (float)(bh - 1) : 1.0f;
        viz_canvas_fill(c, bx, by + y, bw, 1, viz_cmap_rgb(f->cmap, t), 1.0f);
    }
    viz_canvas_rect(c, bx - 1, by - 1, bw + 2, bh + 2, INK, 1);
    float ticks[16];
    int nt = viz_scale_ticks(&f->scale, ticks, bh / (L->ch * 2) < 12 ? (bh / (L->ch * 2) > 2 ? bh / (L->ch * 2) : 2) : 12);
    char buf[32];
    for (int i = 0; i < nt; i++) {
        float t = viz_scale_apply(&f->scale, ticks[i]);
        int y = by + (int)lrintf((1.0f - t) * (float)(bh - 1));
        viz_canvas_fill(c, bx + bw + 1, y, 3 * fs, fs, INK, 1.0f);
        viz_format_value(ticks[i], f->scale.kind == VIZ_SCALE_LOG, buf, sizeof buf);
        viz_canvas_text(c, bx + bw + 3 * fs + gap / 2, y - L->ch * 7 / 18, buf, fs, INK);
    }
    if (f->cbar_label) {
        int lw = viz_font_text_width(f->cbar_label, fs);
        viz_canvas_text_up(c, bx + bw + 3 * fs + gap + 8 * L->adv + gap, by + bh / 2 - lw / 2, f->cbar_label, fs, INK);
    }
}

int viz_figure_render(const viz_figure *f, const viz_panel *panels, int n_panels, viz_canvas *out, eng_err *err) {
    memset(out, 0, sizeof *out);
    if (n_panels < 1) return eng_err_set(err, "figure: no panels");
    for (int i = 0; i < n_panels; i++) {
        const viz_panel *p = &panels[i];
        if (!p->values || p->w < 1 || p->h < 1)
            return eng_err_set(err, "figure: panel %d has no values or a zero size (%d x %d)", i, p->w, p->h);
        if (p->q1 <= p->q0 || p->k1 <= p->k0 || p->q0 < 0 || p->k0 < 0)
            return eng_err_set(err, "figure: panel %d has an empty token range q [%d, %d) k [%d, %d)", i, p->q0,
                               p->q1, p->k0, p->k1);
    }
    if (!(f->scale.vmax > f->scale.vmin)) return eng_err_set(err, "figure: scale has vmax <= vmin");
    layout L;
    layout_compute(f, panels, n_panels, &L);
    if (viz_canvas_init(out, L.W, L.H, 3, WHITE, err)) return -1;
    if (f->title)
        viz_canvas_text(out, L.W / 2 - viz_font_text_width(f->title, L.fs + 1) / 2, 4 * L.fs, f->title, L.fs + 1, INK);
    for (int i = 0; i < n_panels; i++) {
        const viz_panel *p = &panels[i];
        int cx = (i % L.cols) * L.cell_w, cy = L.title_h + (i / L.cols) * L.cell_h;
        int ox = cx + L.left, oy = cy + L.ptitle_h;
        viz_canvas_heat(out, ox, oy, p->values, p->w, p->h, &f->scale, f->cmap, NAN_BG);
        draw_overlay(out, p, ox, oy);
        draw_axes(out, f, p, &L, ox, oy);
    }
    draw_colorbar(out, f, &L);
    return 0;
}

/* ---- PNG writer ---- */

typedef struct {
    jmp_buf jb;
    char msg[256];
} png_ctx;

static void on_png_error(png_structp png, png_const_charp msg) {
    png_ctx *ctx = png_get_error_ptr(png);
    snprintf(ctx->msg, sizeof ctx->msg, "%s", msg);
    longjmp(ctx->jb, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static int is_ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s >= 128) return 0;
    return 1;
}

/* Runs libpng on an open FILE; separate function so the setjmp frame holds no locals the caller
 * needs afterwards. */
static int png_encode(FILE *fp, const viz_canvas *c, const char *command, png_ctx *ctx) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, ctx, on_png_error, on_png_warning);
    if (!png) {
        snprintf(ctx->msg, sizeof ctx->msg, "libpng: cannot create writer");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info || setjmp(ctx->jb)) {
        if (!ctx->msg[0]) snprintf(ctx->msg, sizeof ctx->msg, "libpng: cannot create info");
        png_destroy_write_struct(&png, info ? &info : NULL);
        return -1;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)c->w, (png_uint_32)c->h, 8,
                 c->channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, 6);
    png_text txt[2];
    memset(txt, 0, sizeof txt);
    int nt = 0;
    txt[nt].compression = PNG_TEXT_COMPRESSION_NONE;
    txt[nt].key = "Software";
    txt[nt].text = "attnscope";
    nt++;
    if (command) {
        txt[nt].compression = is_ascii(command) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        txt[nt].key = "Command";
        txt[nt].text = (char *)command;
        txt[nt].text_length = strlen(command);
        nt++;
    }
    png_set_text(png, info, txt, nt);
    png_write_info(png, info);
    size_t stride = (size_t)c->w * (size_t)c->channels;
    for (int y = 0; y < c->h; y++) png_write_row(png, c->px + (size_t)y * stride);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

int viz_png_write(const char *path, const viz_canvas *c, const char *command, eng_err *err) {
    if (!path || !*path) return eng_err_set(err, "PNG: empty output path");
    if (!c->px || c->w < 1 || c->h < 1) return eng_err_set(err, "PNG %s: empty canvas", path);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return eng_err_set(err, "PNG %s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return eng_err_set(err, "cannot write %s: %s", path, strerror(errno));
    FILE *fp = fdopen(fd, "wb");
    if (!fp) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return eng_err_set(err, "cannot write %s: %s", path, strerror(e));
    }
    png_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        fclose(fp);
        unlink(tmp);
        return eng_err_set(err, "PNG %s: out of memory", path);
    }
    int rc = png_encode(fp, c, command, ctx);
    int e = errno;
    if (rc == 0 && fflush(fp) != 0) { rc = -1; e = errno; snprintf(ctx->msg, sizeof ctx->msg, "%s", strerror(e)); }
    if (rc == 0 && fsync(fileno(fp)) != 0) { rc = -1; e = errno; snprintf(ctx->msg, sizeof ctx->msg, "%s", strerror(e)); }
    if (fclose(fp) != 0 && rc == 0) { rc = -1; e = errno; snprintf(ctx->msg, sizeof ctx->msg, "%s", strerror(e)); }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
        snprintf(ctx->msg, sizeof ctx->msg, "%s", strerror(errno));
    }
    if (rc != 0) {
        unlink(tmp);
        eng_err_set(err, "cannot write %s: %s", path, ctx->msg[0] ? ctx->msg : strerror(e));
    }
    free(ctx);
    return rc;
}
