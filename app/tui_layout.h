/* tui_layout: where every panel of the explorer goes, as a pure function of the terminal size, the
 * model's shape and the selection (no curses here, so it is unit-tested), plus hit-testing for mouse
 * clicks. Screen, from 80x24 up:
 *   row 0            header (model, tokens, backend, progress)
 *   left             heatmap of the selected head (title row, pixel area, cursor row)
 *   right, stacked   layer x head overview | pattern panel | compare panel
 *   last row         footer (key hints, status, the jump prompt) */
#ifndef TUI_LAYOUT_H
#define TUI_LAYOUT_H

#define TUI_MIN_COLS 80
#define TUI_MIN_ROWS 24

typedef struct {
    int x, y, w, h;
} tui_rect;

typedef struct {
    int cols, rows;
    int too_small;       /* below TUI_MIN_COLS x TUI_MIN_ROWS: draw only a message saying so */
    tui_rect header, footer;
    tui_rect map;        /* whole map panel: title row, pixel rows, cursor row */
    tui_rect map_px;     /* the cell area of the heatmap (right of the query-axis gutter) */
    int map_px_w, map_px_h; /* heatmap size in pixels: one per cell across, two per cell down */
    tui_rect heads;      /* overview panel: title row, then one row per visible layer */
    tui_rect pattern, compare;
    /* overview grid: label column of heads_label_w chars, then cells of cell_w chars; a one-char
     * gap separates GQA groups (group_size query heads share one KV head) when group_gap is 1. */
    int heads_label_w, cell_w, group_size, group_gap;
    int first_layer, vis_layers; /* visible window of layers (scrolls with the selection) */
    int first_head, vis_heads;   /* visible window of heads */
} tui_layout;

/* Fill *l for a cols x rows terminal and a model of n_layers x n_heads (n_kv_heads KV heads) with
 * (sel_layer, sel_head) selected. Returns 0, or -1 when the shape is invalid (non-positive sizes). */
int tui_layout_compute(int cols, int rows, int n_layers, int n_heads, int n_kv_heads, int sel_layer,
                       int sel_head, tui_layout *l);

/* Screen column of head h's cell in the overview (h must be visible), and the inverse. */
int tui_layout_head_x(const tui_layout *l, int h);

typedef enum {
    TUI_HIT_NONE = 0,
    TUI_HIT_HEAD,    /* layer, head */
    TUI_HIT_MAP,     /* px, py: pixel under the click (top pixel of the cell) */
    TUI_HIT_PATTERN, /* row: line inside the pattern panel (0 = title) */
    TUI_HIT_COMPARE,
    TUI_HIT_HEADER,
} tui_hit_kind;

typedef struct {
    tui_hit_kind kind;
    int layer, head;
    int px, py;
    int row;
    int rows;            /* TUI_HIT_PATTERN: field rows the panel shows (tui_layout_pattern_rows) */
} tui_hit;

/* Field rows of the pattern panel (below its title; the label and metrics rows follow them):
 * a kind with more fields scrolls them (tui_pattern_first_field). */
int tui_layout_pattern_rows(const tui_layout *l);

/* What is under screen cell (x, y). */
tui_hit tui_layout_hit(const tui_layout *l, int x, int y);

#endif
