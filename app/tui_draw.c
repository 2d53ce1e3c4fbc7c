/* tui_draw: one frame of the explorer in ncurses (see tui_draw.h). Heatmaps are rendered by viz_term
 * (the same half-block / 256-colour / ASCII renderer as `attnscope map --term`) into a cell buffer;
 * this file only puts those cells on screen, giving each (foreground, background) colour its
 * ncurses pair with alloc_pair. */
#include "tui_draw.h"

#include <curses.h>
#include <langinfo.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <wchar.h>

#include "eng_transform.h"
#include "viz_color.h"
#include "viz_term.h"

enum {
    R_NONE = 0, R_HEADER, R_TITLE, R_TITLE_FOCUS, R_SEL, R_GOOD, R_WARN, R_BAD, R_DIM, R_CURSOR, R_ERROR,
    R_KEY, R_BAR, R__COUNT
};

/* teach-view categories: no data, skipped, vertical, slash, both lines, block, column, both */
enum { C_NODATA = 0, C_SKIP, C_VERT, C_SLASH, C_LINES, C_BLOCK, C_COLUMN, C_BOTH, NCAT };

static tui_color_mode g_mode = TUI_COLOR_MONO;
static int g_utf8;

/* ---- colours ---- */

/* The viz_term mode matching what ncurses can show: 24-bit colour numbers on direct-colour
 * terminals, the xterm-256 palette, else the ASCII ramp (8 colours, monochrome, --no-color). */
static viz_term_mode term_mode(void) {
    return g_mode == TUI_COLOR_DIRECT ? VIZ_TERM_TRUECOLOR : g_mode == TUI_COLOR_256 ? VIZ_TERM_256 : VIZ_TERM_MONO;
}

tui_color_mode tui_draw_init(int no_color) {
    const char *cs = nl_langinfo(CODESET);
    g_utf8 = cs && (!strcmp(cs, "UTF-8") || !strcmp(cs, "utf8"));
    g_mode = TUI_COLOR_MONO;
    if (no_color || !has_colors()) return g_mode;
    start_color();
    use_default_colors();
    g_mode = TUI_COLOR_8;
    init_pair(R_HEADER, COLOR_BLACK, COLOR_CYAN);
    init_pair(R_TITLE, COLOR_CYAN, -1);
    init_pair(R_TITLE_FOCUS, COLOR_BLACK, COLOR_YELLOW);
    init_pair(R_SEL, COLOR_BLACK, COLOR_WHITE);
    init_pair(R_GOOD, COLOR_GREEN, -1);
    init_pair(R_WARN, COLOR_YELLOW, -1);
    init_pair(R_BAD, COLOR_RED, -1);
    init_pair(R_DIM, COLORS >= 16 ? 8 + COLOR_BLACK : COLOR_WHITE, -1); /* bright black = grey */
    init_pair(R_CURSOR, COLOR_BLACK, COLOR_MAGENTA);
    init_pair(R_ERROR, COLOR_WHITE, COLOR_RED);
    init_pair(R_KEY, COLOR_YELLOW, -1);
    init_pair(R_BAR, COLOR_BLACK, COLOR_GREEN);
    /* heatmap colours get pairs on demand (alloc_pair), so the terminal needs room for many */
    if (COLORS >= 256 && COLOR_PAIRS >= 1024) g_mode = COLORS >= 0x1000000 ? TUI_COLOR_DIRECT : TUI_COLOR_256;
    return g_mode;
}

/* One cell of a viz_term buffer as an ncurses colour number: -1 is the terminal's default. */
static int cell_color(const viz_cell *c, int fg) {
    if (c->flags & (fg ? VIZ_CELL_FG_DEFAULT : VIZ_CELL_BG_DEFAULT)) return -1;
    viz_rgb v = fg ? c->fg : c->bg;
    if (g_mode == TUI_COLOR_DIRECT) return v.r << 16 | v.g << 8 | v.b;
    return fg ? c->fg256 : c->bg256;
}

/* Put buffer b on screen with its top-left cell at (y0, x0), clipped to w x h cells. Half blocks
 * need a UTF-8 locale; without one a half-block cell becomes a space in its filled half's colour. */
static void blit(const viz_cellbuf *b, int y0, int x0, int w, int h) {
    for (int y = 0; y < b->rows && y < h; y++)
        for (int x = 0; x < b->cols && x < w; x++) {
            const viz_cell *c = &b->cells[(size_t)y * b->cols + x];
            const unsigned char *u = (const unsigned char *)c->ch;
            wchar_t wc[2] = {L' ', 0};
            if (u[0] == 0xe2 && u[1] == 0x96 && (u[2] & 0xc0) == 0x80) /* U+2580..U+25BF */
                wc[0] = (wchar_t)(0x2580 + (u[2] - 0x80));
            else if (u[0] >= 32 && u[0] < 127)
                wc[0] = (wchar_t)u[0];
            int fg = cell_color(c, 1), bg = cell_color(c, 0);
            if (wc[0] >= 0x2580 && !g_utf8) {
                bg = fg;
                wc[0] = L' ';
            }
            int pair = 0;
            if (g_mode >= TUI_COLOR_256 && (fg >= 0 || bg >= 0)) {
                pair = alloc_pair(fg, bg);
                if (pair < 0) pair = 0;
            }
            cchar_t cc;
            setcchar(&cc, wc, A_NORMAL, 0, &pair);
            mvadd_wch(y0 + y, x0 + x, &cc);
        }
}

static attr_t role(int r) {
    if (g_mode != TUI_COLOR_MONO) {
        attr_t a = COLOR_PAIR(r);
        if (r == R_TITLE || r == R_KEY || r == R_CURSOR || r == R_TITLE_FOCUS) a |= A_BOLD;
        return a;
    }
    switch (r) {
    case R_HEADER: case R_SEL: case R_BAR: return A_REVERSE;
    case R_TITLE: case R_KEY: case R_WARN: return A_BOLD;
    case R_TITLE_FOCUS: case R_CURSOR: case R_ERROR: return A_REVERSE | A_BOLD;
    case R_BAD: return A_BOLD | A_UNDERLINE;
    case R_DIM: return A_DIM;
    default: return A_NORMAL;
    }
}

/* ---- text ---- */

/* printf at (y, x), clipped to w columns, with role r. */
static void put(int y, int x, int w, int r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;
static void put(int y, int x, int w, int r, const char *fmt, ...) {
    if (w <= 0) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    attrset(role(r));
    mvaddnstr(y, x, buf, w);
    attrset(A_NORMAL);
}

/* A full-width line of role r (for titles and bars). */
static void fill_line(int y, int x, int w, int r) {
    attrset(role(r));
    mvhline(y, x, ' ', w);
    attrset(A_NORMAL);
}

static void fmt_time(double s, char *b, size_t cap) {
    if (!(s > 0)) snprintf(b, cap, "-");
    else if (s < 1e-3) snprintf(b, cap, "%.0fus", s * 1e6);
    else if (s < 1) snprintf(b, cap, "%.1fms", s * 1e3);
    else snprintf(b, cap, "%.2fs", s);
}

static void fmt_num(double v, char *b, size_t cap) {
    if (isnan(v)) snprintf(b, cap, "-");
    else if (v != 0 && (fabs(v) < 1e-3 || fabs(v) >= 1e4)) snprintf(b, cap, "%.2e", v);
    else snprintf(b, cap, "%.4f", v);
}

static char kind_letter(eng_pat_kind k) {
    const char *n = eng_pattern_kind_name(k);
    char c = n && n[0] ? n[0] : '?';
    return c >= 'a' && c <= 'z' ? (char)(c - 32) : c;
}

/* ---- header and footer ---- */

static void draw_header(const tui_layout *l, const eng_snapshot *snap, const tui_status *st) {
    fill_line(0, 0, l->cols, R_HEADER);
    char right[160];
    int bar = 0;
    if (st->busy && st->total > 0) {
        snprintf(right, sizeof right, " %s %d/%d", st->what, st->done, st->total);
        bar = 12;
    } else if (st->busy) {
        snprintf(right, sizeof right, " %s...", st->what);
    } else if (snap && snap->ready) {
        snprintf(right, sizeof right, " ready, prefill %.2fs ", snap->prefill_s);
    } else {
        snprintf(right, sizeof right, " no analysis (see below) ");
    }
    int rw = (int)strlen(right) + (bar ? bar + 2 : 0);
    if (rw > l->cols / 2) rw = l->cols / 2;
    char left[640], xf[160] = ""; /* model, transform and backend 160 each, and the rest */
    if (snap) {
        /* the weight transform right after the model (the backend is the first to be cut); a short
         * form when the long one does not fit */
        for (int shortf = 0; shortf < 2; shortf++) {
            const char *nm = eng_transform_name(snap->transform_avail);
            if (!snap->transform_avail) xf[0] = 0;
            else if (!snap->transform) snprintf(xf, sizeof xf, " | original weights (x: %s)", nm);
            else if (!shortf)
                snprintf(xf, sizeof xf, " | %s (%.3g%% of attention/MLP weights zero, weight rel err %.2g)", nm,
                         100 * snap->xf_zero, snap->xf_rel_err);
            else
                snprintf(xf, sizeof xf, " | %s (%.3g%% zero, rel err %.2g)", nm, 100 * snap->xf_zero, snap->xf_rel_err);
            snprintf(left, sizeof left, " attnscope | %s%s | %d tokens | %dx%d heads (kv %d) | %s", snap->model, xf,
                     snap->n_tokens, snap->n_layers, snap->n_heads, snap->n_kv_heads, snap->backend);
            if ((int)strlen(left) - (int)strlen(snap->backend) - 3 <= l->cols - rw - 1) break;
        }
    } else
        snprintf(left, sizeof left, " attnscope | loading");
    put(0, 0, l->cols - rw - 1, R_HEADER, "%s", left);
    int x = l->cols - rw;
    if (bar) {
        int fillw = bar * st->done / st->total;
        attrset(role(R_BAR));
        mvaddch(0, x, '[');
        for (int i = 0; i < bar; i++) mvaddch(0, x + 1 + i, i < fillw ? '#' : '.');
        mvaddch(0, x + 1 + bar, ']');
        attrset(A_NORMAL);
        x += bar + 2;
    }
    put(0, x, l->cols - x, R_HEADER, "%s", right);
}

static void draw_footer(const tui_layout *l, const tui_state *s, const tui_status *st) {
    int y = l->footer.y;
    move(y, 0);
    clrtoeol();
    const char *hints = " ?:help q:quit Tab:panel p:pattern r:e2e t:teach e:png s:save /:jump";
    if (s->jump_active) {
        put(y, 0, l->cols, R_KEY, "Jump to token (Q or Q,K), Enter / Esc: %s_", s->jump_buf);
        return;
    }
    const char *msg = s->msg[0] ? s->msg : st->msg;
    int r = s->msg[0] ? R_WARN : st->msg_error ? R_ERROR : R_GOOD;
    int ml = msg[0] ? (int)strlen(msg) + 2 : 0, hw = (int)strlen(hints);
    if (ml + hw > l->cols) { /* the message wins; hints shrink to the essentials */
        hints = " ?:help q:quit";
        hw = (int)strlen(hints);
        if (ml + hw > l->cols) hw = 0;
    }
    if (msg[0]) put(y, 0, l->cols - hw, r, " %s", msg);
    if (hw) put(y, l->cols - hw, hw, R_DIM, "%s", hints);
}

/* ---- heatmap ---- */

/* Pixels v[h][w] through viz_term into the cells of area a from row y0 (two pixels per cell row). */
static void heat_blit(const tui_rect *a, int y0, int w, int h, const float *v, const viz_term_opts *o) {
    viz_cellbuf b;
    eng_err err;
    int rows = (h + 1) / 2, room = a->y + a->h - y0;
    if (w < 1 || h < 1 || room < 1 || viz_cellbuf_init(&b, w < a->w ? w : a->w, rows < room ? rows : room, &err))
        return;
    viz_term_heat(&b, 0, 0, v, w, h, o);
    blit(&b, y0, a->x, b.cols, b.rows);
    viz_cellbuf_free(&b);
}

static void draw_map(const tui_layout *l, const tui_state *s, const eng_snapshot *snap) {
    const tui_rect *m = &l->map, *a = &l->map_px;
    int focus = s->focus == TUI_FOCUS_MAP;
    fill_line(m->y, m->x, m->w, focus ? R_TITLE_FOCUS : R_TITLE);
    int grp = s->n_heads / s->n_kv_heads;
    int qe = s->q0 + s->px_h * s->tpp - 1, ke = s->k0 + s->px_w * s->tpp - 1;
    put(m->y, m->x, m->w, focus ? R_TITLE_FOCUS : R_TITLE, " Heatmap L%d H%d (kv %d) | %d tok/px | q %d-%d k %d-%d | overlay %s",
        s->layer, s->head, s->head / grp, s->tpp, s->q0, qe < s->n_tokens - 1 ? qe : s->n_tokens - 1, s->k0,
        ke < s->n_tokens - 1 ? ke : s->n_tokens - 1, s->overlay ? "on" : "off");
    for (int y = a->y; y < a->y + a->h; y++) {
        move(y, m->x);
        for (int x = m->x; x < m->x + m->w; x++) addch(' ');
    }
    const eng_view *v = snap ? &snap->view : NULL;
    int fresh = snap && snap->map_valid && v->layer == s->layer && v->head == s->head && v->rows == s->px_h &&
                v->cols == s->px_w;
    if (!fresh) {
        const char *why = !snap || !snap->ready ? "waiting for the prefill..." : "computing...";
        put(a->y + a->h / 2, a->x + (a->w - (int)strlen(why)) / 2, a->w, R_DIM, "%s", why);
        if (!snap || !snap->map_valid || v->rows != s->px_h || v->cols != s->px_w) return;
    }
    /* query-axis gutter: the first query of every fourth cell row */
    for (int cy = 0; cy < a->h && 2 * cy < v->rows; cy += 4) {
        int q = v->q0 + 2 * cy * v->tpp;
        if (q < snap->n_tokens) put(a->y + cy, m->x, a->x - m->x - 1, R_DIM, "%5d", q);
    }
    /* four decades below the view's maximum, log scale; with the overlay, what the index skips
     * is dimmed (colour) or left blank (ASCII) by viz_term */
    float vmax = snap->prob_max > 0 ? snap->prob_max : 1;
    viz_term_opts to = {VIZ_CMAP_VIRIDIS, {VIZ_SCALE_LOG, vmax * 1e-4f, vmax, 0}, term_mode(),
                        s->overlay ? snap->cover : NULL};
    heat_blit(a, a->y, v->cols, v->rows, snap->prob, &to);
    /* the cursor: the cell holding (cur_q, cur_k) */
    int px = (v->cur_k - v->k0) / v->tpp, py = (v->cur_q - v->q0) / v->tpp;
    if (px >= 0 && px < a->w && py >= 0 && py / 2 < a->h) put(a->y + py / 2, a->x + px, 1, R_CURSOR, "O");
    /* cursor line */
    int yb = m->y + m->h - 1;
    move(yb, m->x);
    for (int x = 0; x < m->w; x++) addch(' ');
    const char *cs = snap->cur_computed < 0 ? "above the diagonal" : snap->cur_computed ? "computed" : "SKIPPED";
    put(yb, m->x, m->w, snap->cur_computed == 0 ? R_WARN : R_NONE, " q %d \"%s\" -> k %d \"%s\"  p=%.3g  %s",
        v->cur_q, snap->q_text, v->cur_k, snap->k_text, snap->cur_prob, cs);
}

/* ---- teach view ---- */

static int cat_of_lines(uint8_t b) {
    return b == 255 ? C_NODATA : (b & 3) == 3 ? C_LINES : b & 1 ? C_VERT : b & 2 ? C_SLASH : C_SKIP;
}
static int cat_of_kind(uint8_t b) {
    return b == 255 ? C_NODATA : b == 3 ? C_BOTH : b == 1 ? C_BLOCK : b == 2 ? C_COLUMN : C_SKIP;
}

/* One category per pixel, two pixels per cell like viz_term_heat: upper half block in the upper
 * pixel's colour over the lower one's; no data is the terminal background; ASCII in mono. */
static void cat_cell(viz_cell *c, int top, int bot) {
    static const viz_rgb pal[NCAT] = {{0, 0, 0},       {48, 48, 48},  {0, 200, 220}, {230, 60, 200},
                                      {255, 255, 255}, {50, 110, 230}, {250, 150, 30}, {250, 230, 60}};
    static const char chars[NCAT] = {' ', '.', '|', '\\', '+', '#', ':', '%'};
    memset(c, 0, sizeof *c);
    c->flags = VIZ_CELL_FG_DEFAULT | VIZ_CELL_BG_DEFAULT;
    if (term_mode() == VIZ_TERM_MONO || (top == C_NODATA && bot == C_NODATA)) {
        c->ch[0] = chars[top > bot ? top : bot];
        return;
    }
    int up = top != C_NODATA, fgc = up ? top : bot;
    memcpy(c->ch, up ? "\xe2\x96\x80" : "\xe2\x96\x84", 4);
    c->fg = pal[fgc];
    c->fg256 = viz_rgb_to_xterm256(c->fg);
    c->flags = VIZ_CELL_BG_DEFAULT;
    if (up && bot != C_NODATA) {
        c->bg = pal[bot];
        c->bg256 = viz_rgb_to_xterm256(c->bg);
        c->flags = 0;
    }
}

static void draw_cat_grid(const tui_rect *a, int y0, const eng_teach *t, const uint8_t *g, int lines) {
    int w = t->cols < a->w ? t->cols : a->w, rows = (t->rows + 1) / 2, h = a->y + a->h - y0;
    viz_cellbuf b;
    eng_err err;
    if (w < 1 || h < 1 || viz_cellbuf_init(&b, w, rows < h ? rows : h, &err)) return;
    for (int cy = 0; cy < b.rows; cy++)
        for (int cx = 0; cx < w; cx++) {
            uint8_t bt = g[(size_t)(2 * cy) * t->cols + cx];
            uint8_t bb = 2 * cy + 1 < t->rows ? g[(size_t)(2 * cy + 1) * t->cols + cx] : 255;
            cat_cell(viz_cellbuf_at(&b, cx, cy), lines ? cat_of_lines(bt) : cat_of_kind(bt),
                     lines ? cat_of_lines(bb) : cat_of_kind(bb));
        }
    blit(&b, y0, a->x, b.cols, b.rows);
    viz_cellbuf_free(&b);
}

/* Bars of v[0..cols) (log scale over 4 decades of the max), chosen columns bright. */
static void draw_bars(const tui_rect *a, int y0, int h, const float *v, int cols, const unsigned char *chosen) {
    float vmax = 0;
    for (int c = 0; c < cols; c++)
        if (v[c] > vmax) vmax = v[c];
    if (vmax <= 0) vmax = 1;
    viz_scale sc = {VIZ_SCALE_LOG, vmax * 1e-4f, vmax, 0};
    static const wchar_t eighths[9] = {L' ', 0x2581, 0x2582, 0x2583, 0x2584, 0x2585, 0x2586, 0x2587, 0x2588};
    for (int c = 0; c < cols && c < a->w; c++) {
        float t = v[c] > 0 ? viz_scale_apply(&sc, v[c]) : 0;
        int units = (int)(t * h * 8 + 0.5f);
        attrset(role(chosen[c] ? R_GOOD : R_DIM) | (chosen[c] ? A_BOLD : 0));
        for (int r = 0; r < h; r++) {
            int u = units - 8 * (h - 1 - r);
            u = u < 0 ? 0 : u > 8 ? 8 : u;
            if (g_utf8) {
                cchar_t cc;
                wchar_t wc[2] = {eighths[u], 0};
                setcchar(&cc, wc, role(chosen[c] ? R_GOOD : R_DIM) | (chosen[c] ? A_BOLD : 0), (short)(chosen[c] ? R_GOOD : R_DIM), NULL);
                mvadd_wch(y0 + r, a->x + c, &cc);
            } else {
                mvaddch(y0 + r, a->x + c, (chtype)(u >= 4 ? (chosen[c] ? '#' : '|') : u > 0 ? '.' : ' '));
            }
        }
        attrset(A_NORMAL);
    }
}

static void draw_teach(const tui_layout *l, const tui_state *s, const eng_snapshot *snap) {
    const tui_rect *m = &l->map, *a = &l->map_px;
    fill_line(m->y, m->x, m->w, s->focus == TUI_FOCUS_MAP ? R_TITLE_FOCUS : R_TITLE);
    put(m->y, m->x, m->w, s->focus == TUI_FOCUS_MAP ? R_TITLE_FOCUS : R_TITLE, " Teach L%d H%d | step %s",
        s->layer, s->head, tui_teach_step_name(s->teach_step));
    for (int y = a->y; y < m->y + m->h; y++) {
        move(y, m->x);
        for (int x = 0; x < m->w; x++) addch(' ');
    }
    const eng_teach *t = snap ? &snap->teach : NULL;
    int fresh = snap && snap->view.teach && snap->view.layer == s->layer && snap->view.head == s->head;
    if (!fresh || !t->valid) {
        const char *why = !snap || !snap->ready ? "waiting for the prefill..."
                        : !fresh ? "computing..."
                        : "teach explains vertical-slash heads (p cycles patterns)";
        put(a->y + a->h / 2, m->x + 2, m->w - 4, R_DIM, "%s", why);
        return;
    }
    const int n = snap->n_tokens, tx = m->x + 1, tw = m->w - 2;
    tui_rect g = {m->x + 1, a->y + 2, m->w - 2, a->h - 2};
    unsigned char chosen[4096];
    int cols = t->cols < (int)sizeof chosen ? t->cols : (int)sizeof chosen;
    switch (s->teach_step) {
    case 0: {
        put(a->y, tx, tw, R_NONE, "A = softmax(Q[%d..%d] K^T / sqrt(d)), causal in the last square.", n - t->n_est > 0 ? n - (n < 64 ? n : 64) : 0, n - 1);
        put(a->y + 1, tx, tw, R_DIM, "rows: the last %d queries; columns: keys, %d per column (max)", n < 64 ? n : 64, t->tpc);
        float vmax = 0;
        for (int i = 0; i < t->n_est * t->cols; i++)
            if (t->est[i] > vmax) vmax = t->est[i];
        viz_term_opts to = {VIZ_CMAP_VIRIDIS, {VIZ_SCALE_LOG, (vmax > 0 ? vmax : 1) * 1e-4f, vmax > 0 ? vmax : 1, 0},
                            term_mode(), NULL};
        heat_blit(&g, g.y, t->cols, t->n_est, t->est, &to);
        break;
    }
    case 1:
    case 2: {
        int vert = s->teach_step == 1;
        memset(chosen, 0, sizeof chosen);
        if (vert)
            for (int i = 0; i < t->n_vert; i++) {
                int c = t->vert[i] / t->tpc;
                if (c < cols) chosen[c] = 1;
            }
        else
            for (int i = 0; i < t->n_slash; i++) {
                int c = t->slash[i] / t->tpc;
                if (c < cols) chosen[c] = 1;
            }
        if (vert)
            put(a->y, tx, tw, R_NONE, "vertical score of key k = sum of A over the 64 rows; keep top %d (keys 0..29 forced)", t->k_v);
        else
            put(a->y, tx, tw, R_NONE, "slash score of offset o = mass of A on diagonal q-k=o; keep top %d (0..99 forced)", t->k_s);
        put(a->y + 1, tx, tw, R_DIM, "%s axis, %d per column (max), log scale; bright = chosen (%d lines)",
            vert ? "key" : "offset q-k", t->tpc, vert ? t->n_vert : t->n_slash);
        draw_bars(&g, g.y, g.h - 1, vert ? t->vscore : t->sscore, cols, chosen);
        put(g.y + g.h - 1, g.x, g.w, R_DIM, "0%*d", g.w - 2 < 0 ? 0 : (cols < g.w ? cols : g.w) - 2, n - 1);
        break;
    }
    case 3:
        put(a->y, tx, tw, R_NONE, "chosen lines: %d verticals %s, %d slashes %s", t->n_vert,
            g_mode >= TUI_COLOR_256 ? "(cyan)" : "(|)", t->n_slash, g_mode >= TUI_COLOR_256 ? "(magenta)" : "(\\)");
        put(a->y + 1, tx, tw, R_DIM, "%d tokens per cell column, 2 pixel rows per cell row", t->tpc);
        draw_cat_grid(&g, g.y, t, t->lines, 1);
        break;
    default:
        put(a->y, tx, tw, R_NONE, "%d row blocks: %lld key blocks %s, %lld columns %s", t->n_rb, t->n_ranges,
            g_mode >= TUI_COLOR_256 ? "(blue)" : "(#)", t->n_columns, g_mode >= TUI_COLOR_256 ? "(orange)" : "(:)");
        put(a->y + 1, tx, tw, R_DIM, "slashes -> 64-key ranges per 64-query block; verticals left of them -> columns");
        draw_cat_grid(&g, g.y, t, t->kind, 0);
        break;
    }
    put(m->y + m->h - 1, m->x, m->w, R_DIM, " Left/Right: step  Esc or t: back to the heatmap");
}

/* ---- overview ---- */

static int metric_role(tui_metric m, float v, eng_pat_kind k) {
    if (isnan(v) || k == ENG_PAT_DENSE) return R_DIM;
    switch (m) {
    case TUI_METRIC_DENSITY: return v <= 0.3f ? R_GOOD : v <= 0.6f ? R_WARN : R_BAD;
    case TUI_METRIC_RECALL: return v >= 0.95f ? R_GOOD : v >= 0.8f ? R_WARN : R_BAD;
    default: return v <= 0.05f ? R_GOOD : v <= 0.2f ? R_WARN : R_BAD;
    }
}

static void draw_heads(const tui_layout *l, const tui_state *s, const eng_snapshot *snap) {
    const tui_rect *r = &l->heads;
    int focus = s->focus == TUI_FOCUS_HEADS;
    fill_line(r->y, r->x, r->w, focus ? R_TITLE_FOCUS : R_TITLE);
    put(r->y, r->x, r->w, focus ? R_TITLE_FOCUS : R_TITLE, " Heads %s%% (m) L%d-%d/%d H%d-%d/%d", tui_metric_name(s->metric),
        l->first_layer, l->first_layer + l->vis_layers - 1, s->n_layers, l->first_head,
        l->first_head + l->vis_heads - 1, s->n_heads);
    for (int i = 0; i < l->vis_layers; i++) {
        int layer = l->first_layer + i, y = r->y + 1 + i;
        move(y, r->x);
        for (int x = 0; x < r->w; x++) addch(' ');
        put(y, r->x, l->heads_label_w, layer == s->layer ? R_KEY : R_DIM, "L%-3d", layer);
        for (int h = l->first_head; h < l->first_head + l->vis_heads; h++) {
            int x = tui_layout_head_x(l, h);
            if (l->group_gap && h > l->first_head && h % l->group_size == 0) put(y, x - 1, 1, R_DIM, "|");
            char cell[8] = "";
            float v = NAN;
            eng_pat_kind k = ENG_PAT_DENSE;
            if (snap && snap->heads) {
                const eng_head_stat *hs = &snap->heads[(size_t)layer * snap->n_heads + h];
                k = hs->pat.kind;
                v = s->metric == TUI_METRIC_DENSITY ? hs->density : s->metric == TUI_METRIC_RECALL ? hs->recall : hs->error;
            }
            int pct = isnan(v) ? -1 : (int)lrintf(v * 100);
            if (l->cell_w >= 4) {
                if (pct < 0) snprintf(cell, sizeof cell, "%c--", kind_letter(k));
                else if (pct >= 100) snprintf(cell, sizeof cell, "%c**", kind_letter(k));
                else snprintf(cell, sizeof cell, "%c%02d", kind_letter(k), pct);
            } else if (l->cell_w == 3) {
                if (pct < 0) snprintf(cell, sizeof cell, "%c-", kind_letter(k));
                else snprintf(cell, sizeof cell, "%c%d", kind_letter(k), pct >= 95 ? 9 : (pct + 5) / 10);
            } else {
                snprintf(cell, sizeof cell, "%c", kind_letter(k));
            }
            int sel = layer == s->layer && h == s->head;
            put(y, x, l->cell_w - 1, sel ? R_SEL : metric_role(s->metric, v, k), "%s", cell);
        }
    }
}

/* ---- pattern and compare panels ---- */

static void draw_pattern(const tui_layout *l, const tui_state *s, const eng_snapshot *snap) {
    const tui_rect *r = &l->pattern;
    int focus = s->focus == TUI_FOCUS_PATTERN;
    for (int y = r->y; y < r->y + r->h; y++) {
        move(y, r->x);
        for (int x = 0; x < r->w; x++) addch(' ');
    }
    fill_line(r->y, r->x, r->w, focus ? R_TITLE_FOCUS : R_TITLE);
    const eng_head_stat *hs = snap && snap->heads ? &snap->heads[(size_t)s->layer * snap->n_heads + s->head] : NULL;
    const eng_pattern *p = tui_state_pattern(s, hs ? &hs->pat : NULL);
    int pending = p && hs && memcmp(p, &hs->pat, sizeof *p) != 0;
    put(r->y, r->x, r->w, focus ? R_TITLE_FOCUS : R_TITLE, " Pattern L%d H%d (kv %d)%s", s->layer, s->head,
        s->head / (s->n_heads / s->n_kv_heads), pending ? "  re-running..." : "");
    if (!p) {
        put(r->y + 1, r->x + 1, r->w - 1, R_DIM, "available after the prefill");
        return;
    }
    /* rows: title, the fields (scrolled to keep the selection visible), the kind's label (which
     * names training-free adaptations: DMA, reshape), the head's numbers, a hint */
    const int nf = tui_pattern_nfields(p->kind), fr = tui_layout_pattern_rows(l);
    const int first = tui_pattern_first_field(s->field, nf, fr);
    int y = r->y + 1;
    for (int i = first; i < nf && i < first + fr && y < r->y + r->h; i++, y++) {
        int sel = focus && s->field == i;
        char v[48];
        tui_field_text(p, i, v, sizeof v);
        const char *more = i == first && first > 0 ? " ^" : i == first + fr - 1 && i + 1 < nf ? " v" : "";
        put(y, r->x, r->w, sel ? R_SEL : R_NONE, "%s %-10s %s%s", sel ? ">" : " ", tui_field_name(p->kind, i), v,
            more);
    }
    if (y < r->y + r->h) { /* what the kind is; adaptations say so first (the panel is narrow) */
        char lab[200], ep[24];
        if (p->reshape && p->kind != ENG_PAT_DENSE && hs && !isnan(hs->error_plain)) {
            fmt_num(hs->error_plain, ep, sizeof ep);
            snprintf(lab, sizeof lab, "  err w/o reshape %s (reshape: training-free adaptation)", ep);
        } else if (p->reshape && p->kind != ENG_PAT_DENSE) {
            snprintf(lab, sizeof lab, "  + Re-ttention-style reshape (training-free adaptation)");
        } else if (p->kind == ENG_PAT_DMA) {
            snprintf(lab, sizeof lab, "  training-free adaptation: %s", eng_pattern_kind_label(p->kind));
        } else {
            snprintf(lab, sizeof lab, "  %s", eng_pattern_kind_label(p->kind));
        }
        put(y++, r->x, r->w, R_DIM, "%s", lab);
    }
    if (hs && y < r->y + r->h) {
        char d[24], rc[24], e[24];
        fmt_num(hs->density, d, sizeof d);
        fmt_num(hs->recall, rc, sizeof rc);
        fmt_num(hs->error, e, sizeof e);
        put(y++, r->x, r->w, R_NONE, "  dens %s rec %s err %s", d, rc, e);
    }
    if (y < r->y + r->h) put(y, r->x, r->w, R_DIM, "  score %g  p:cycle  Left/Right:edit", (double)p->score);
}

static void draw_compare(const tui_layout *l, const tui_state *s, const eng_snapshot *snap) {
    const tui_rect *r = &l->compare;
    for (int y = r->y; y < r->y + r->h; y++) {
        move(y, r->x);
        for (int x = 0; x < r->w; x++) addch(' ');
    }
    /* a transform adds two end-to-end rows; where the panel has no room for them the column
     * header moves into the title and the index-build row goes */
    const int xf = snap && snap->transform, tight = xf && r->h < 13;
    fill_line(r->y, r->x, r->w, R_TITLE);
    if (tight) put(r->y, r->x, r->w, R_TITLE, " Layer %-4d dense    sparse   speed-up", s->layer);
    else put(r->y, r->x, r->w, R_TITLE, " Compare layer %d: dense vs sparse", s->layer);
    if (!snap || !snap->ready || !snap->layers) {
        put(r->y + 1, r->x + 1, r->w - 1, R_DIM, "available after the prefill");
        return;
    }
    const eng_layer_stat *ls = &snap->layers[s->layer];
    char a[24], b[24], c[24], d[24];
    int y = r->y + 1, w = r->w, x = r->x;
    if (!tight) put(y++, x, w, R_DIM, "            dense    sparse   speed-up");
    fmt_time(ls->dense_s, a, sizeof a);
    fmt_time(ls->sparse_s, b, sizeof b);
    double su = ls->sparse_s > 0 ? ls->dense_s / ls->sparse_s : 0;
    put(y++, x, w, su >= 1 ? R_GOOD : R_WARN, " attn time  %-8s %-8s %.2fx", a, b, su);
    fmt_time(ls->index_s, a, sizeof a);
    if (!tight) put(y++, x, w, R_DIM, "  index build %s (in sparse)", a);
    fmt_num(ls->density, c, sizeof c);
    put(y++, x, w, R_NONE, " density    1        %-8s", c);
    fmt_num(ls->recall, c, sizeof c);
    fmt_num(ls->error, d, sizeof d);
    put(y++, x, w, R_NONE, " recall     1        %-8s", c);
    put(y++, x, w, R_NONE, " out error  0        %-8s", d);
    if (y >= r->y + r->h) return;
    fill_line(y, x, w, R_TITLE);
    if (xf) put(y++, x, w, R_TITLE, " End to end, %s weights (r)", eng_transform_name(snap->transform));
    else put(y++, x, w, R_TITLE, " End to end (r re-runs)");
    if (y >= r->y + r->h) return;
    const eng_e2e_stat *e = &snap->e2e;
    if (!e->valid) {
        put(y, x, w, R_DIM, " press r: dense + sparse prefill");
        return;
    }
    fmt_time(e->dense_s, a, sizeof a);
    fmt_time(e->sparse_s, b, sizeof b);
    double su2 = e->sparse_s > 0 ? e->dense_s / e->sparse_s : 0;
    put(y++, x, w, su2 >= 1 ? R_GOOD : R_WARN, " prefill    %-8s %-8s %.2fx", a, b, su2);
    if (y >= r->y + r->h) return;
    fmt_num(e->kl, c, sizeof c);
    put(y++, x, w, R_NONE, " KL %s  top-1 %.1f%%", c, 100 * e->top1);
    if (y >= r->y + r->h) return;
    put(y++, x, w, R_NONE, " ppl %.4g -> %.4g", e->ppl_dense, e->ppl_sparse);
    if (!e->xf_valid || y >= r->y + r->h) return;
    /* the transform's own effect: dense prefills of the original and the transformed weights */
    fmt_num(e->xf_kl, c, sizeof c);
    put(y++, x, w, R_WARN, " vs orig: KL %s  top-1 %.1f%%", c, 100 * e->xf_top1);
    if (y >= r->y + r->h) return;
    put(y++, x, w, R_WARN, " ppl orig %.4g -> %s %.4g", e->xf_ppl_orig, eng_transform_name(snap->transform),
        e->xf_ppl_xf);
}

/* ---- help ---- */

static void draw_help(const tui_layout *l) {
    char lines[96][96];
    int n = tui_keys_help(lines, 96);
    int avail = l->rows - 4;
    int ncol = n > avail ? 2 : 1;
    int per = (n + ncol - 1) / ncol;
    int bw = l->cols - 4 < 50 * ncol ? l->cols - 4 : 50 * ncol;
    int bh = per + 2 < l->rows - 2 ? per + 2 : l->rows - 2;
    int bx = (l->cols - bw) / 2, by = (l->rows - bh) / 2;
    int cw = (bw - 2) / ncol;
    for (int y = by; y < by + bh; y++) {
        attrset(role(R_NONE));
        mvhline(y, bx, ' ', bw);
    }
    attrset(role(R_TITLE));
    mvhline(by, bx, '-', bw);
    mvhline(by + bh - 1, bx, '-', bw);
    mvvline(by, bx, '|', bh);
    mvvline(by, bx + bw - 1, '|', bh);
    attrset(A_NORMAL);
    put(by, bx + 2, bw - 4, R_TITLE_FOCUS, " Keys (any key closes; mouse: click heads and cells) ");
    for (int i = 0; i < n; i++) {
        int col = i / per, row = i % per;
        if (1 + row >= bh - 1) continue;
        int heading = lines[i][0] != ' ';
        put(by + 1 + row, bx + 1 + col * cw, cw - 1, heading ? R_KEY : R_NONE, "%s", lines[i]);
    }
}

void tui_draw_frame(const tui_layout *l, const tui_state *s, const eng_snapshot *snap, const tui_status *st) {
    erase();
    if (l->too_small) {
        char msg[160];
        snprintf(msg, sizeof msg, "attnscope needs a terminal of at least %dx%d (this one is %dx%d); q quits",
                 TUI_MIN_COLS, TUI_MIN_ROWS, l->cols, l->rows);
        /* wrapped to the width, so the size and "q quits" stay readable on any screen */
        int len = (int)strlen(msg), w = l->cols > 0 ? l->cols : 1;
        int lines = (len + w - 1) / w, y = (l->rows - lines) / 2;
        for (int i = 0; i < lines; i++) {
            int seg = len - i * w < w ? len - i * w : w;
            int x = seg < w ? (w - seg) / 2 : 0;
            put(y + i > 0 ? y + i : 0, x, seg, R_WARN, "%.*s", seg, msg + i * w);
        }
        return;
    }
    draw_header(l, snap, st);
    if (s->teach) draw_teach(l, s, snap);
    else draw_map(l, s, snap);
    draw_heads(l, s, snap);
    draw_pattern(l, s, snap);
    draw_compare(l, s, snap);
    draw_footer(l, s, st);
    if (s->help) draw_help(l);
}
