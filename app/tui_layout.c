/* tui_layout: panel geometry of the explorer as a pure function (see tui_layout.h). */
#include "tui_layout.h"

#include <string.h>

#define RIGHT_MIN_W 38  /* the pattern and compare panels need this much */
#define MAP_MIN_W 40
#define GUTTER_W 6      /* query positions left of the heatmap */
#define PATTERN_H 6     /* at least: title, three field rows (scrolling), label, head metrics */
#define PATTERN_H_MAX 10 /* title, kind + DMA's five parameters, label, metrics, hint */
#define COMPARE_H 11    /* title, header, time, index, 3 metrics, e2e title, 3 e2e rows */

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static tui_rect rect(int x, int y, int w, int h) {
    tui_rect r = {x, y, w < 0 ? 0 : w, h < 0 ? 0 : h};
    return r;
}

int tui_layout_compute(int cols, int rows, int n_layers, int n_heads, int n_kv_heads, int sel_layer,
                       int sel_head, tui_layout *l) {
    memset(l, 0, sizeof *l);
    if (cols <= 0 || rows <= 0 || n_layers <= 0 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads)
        return -1;
    l->cols = cols;
    l->rows = rows;
    if (cols < TUI_MIN_COLS || rows < TUI_MIN_ROWS) {
        l->too_small = 1;
        return 0;
    }
    l->header = rect(0, 0, cols, 1);
    l->footer = rect(0, rows - 1, cols, 1);
    int body_y = 1, body_h = rows - 2;

    /* Overview width: the widest head cell (4..2 chars) that fits in at most 45% of the screen. */
    l->group_size = n_heads / n_kv_heads;
    l->group_gap = (n_kv_heads > 1 && n_kv_heads < n_heads) ? 1 : 0;
    l->heads_label_w = 4; /* "L12 " */
    int max_rw = cols * 45 / 100;
    if (max_rw < RIGHT_MIN_W) max_rw = RIGHT_MIN_W;
    if (cols - max_rw - 1 < MAP_MIN_W) max_rw = cols - MAP_MIN_W - 1;
    int gaps = l->group_gap * (n_kv_heads - 1);
    int cw = 4;
    while (cw > 2 && l->heads_label_w + n_heads * cw + gaps > max_rw - 1) cw--;
    l->cell_w = cw;
    int need = l->heads_label_w + n_heads * cw + gaps + 1;
    int rw = clampi(need, RIGHT_MIN_W, max_rw);
    int rx = cols - rw;

    /* Visible heads: all when they fit, else a window around the selection. */
    if (need <= rw) {
        l->first_head = 0;
        l->vis_heads = n_heads;
    } else {
        int avail = rw - 1 - l->heads_label_w;
        /* each head costs cw plus, on average, a share of the group gaps */
        int vis = avail * l->group_size / (cw * l->group_size + l->group_gap);
        l->vis_heads = clampi(vis, 1, n_heads);
        l->first_head = clampi(sel_head - l->vis_heads / 2, 0, n_heads - l->vis_heads);
    }

    /* Right column, stacked top-down: overview, pattern, compare. */
    /* the pattern panel grows (up to every field of the longest kind) where the overview keeps
     * at least min(layers, 4) rows */
    int pattern_h = clampi(body_h - COMPARE_H - (1 + (n_layers < 4 ? n_layers : 4)), PATTERN_H, PATTERN_H_MAX);
    int heads_h = clampi(1 + n_layers, 2, body_h - pattern_h - COMPARE_H);
    l->heads = rect(rx, body_y, rw, heads_h);
    l->vis_layers = clampi(heads_h - 1, 1, n_layers);
    l->first_layer = clampi(sel_layer - l->vis_layers / 2, 0, n_layers - l->vis_layers);
    l->pattern = rect(rx, body_y + heads_h, rw, pattern_h);
    l->compare = rect(rx, body_y + heads_h + pattern_h, rw, body_h - heads_h - pattern_h);

    /* Map: everything left of the right column, one blank column between. */
    l->map = rect(0, body_y, rx - 1, body_h);
    l->map_px = rect(GUTTER_W, body_y + 1, l->map.w - GUTTER_W, body_h - 2);
    l->map_px_w = l->map_px.w;
    l->map_px_h = 2 * l->map_px.h;
    return 0;
}

int tui_layout_pattern_rows(const tui_layout *l) {
    return l->pattern.h - 3 > 1 ? l->pattern.h - 3 : 1; /* less the title, label and metrics rows */
}

int tui_layout_head_x(const tui_layout *l, int h) {
    int rel = h - l->first_head;
    int gaps = l->group_gap ? h / l->group_size - l->first_head / l->group_size : 0;
    return l->heads.x + l->heads_label_w + rel * l->cell_w + gaps;
}

static int inside(const tui_rect *r, int x, int y) {
    return x >= r->x && x < r->x + r->w && y >= r->y && y < r->y + r->h;
}

tui_hit tui_layout_hit(const tui_layout *l, int x, int y) {
    tui_hit hit = {0};
    if (l->too_small) return hit;
    if (inside(&l->header, x, y)) {
        hit.kind = TUI_HIT_HEADER;
    } else if (inside(&l->map_px, x, y)) {
        hit.kind = TUI_HIT_MAP;
        hit.px = x - l->map_px.x;
        hit.py = 2 * (y - l->map_px.y);
    } else if (inside(&l->heads, x, y)) {
        int row = y - l->heads.y - 1;
        if (row < 0 || row >= l->vis_layers) return hit;
        for (int h = l->first_head; h < l->first_head + l->vis_heads; h++) {
            int hx = tui_layout_head_x(l, h);
            if (x >= hx && x < hx + l->cell_w) {
                hit.kind = TUI_HIT_HEAD;
                hit.layer = l->first_layer + row;
                hit.head = h;
                return hit;
            }
        }
    } else if (inside(&l->pattern, x, y)) {
        hit.kind = TUI_HIT_PATTERN;
        hit.row = y - l->pattern.y;
        hit.rows = tui_layout_pattern_rows(l);
    } else if (inside(&l->compare, x, y)) {
        hit.kind = TUI_HIT_COMPARE;
        hit.row = y - l->compare.y;
    }
    return hit;
}
