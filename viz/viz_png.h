/* viz_png: an 8-bit RGB/RGBA canvas with drawing primitives and the built-in font, the figure
 * layout for attention maps (titles, token-position axes, colour bar, token labels, sparse-index
 * overlay, panels on one shared scale) and a libpng writer that stores the command line in a tEXt
 * chunk and writes atomically. Input is plain float arrays; nothing here knows the engine. */
#ifndef VIZ_PNG_H
#define VIZ_PNG_H

#include <stdint.h>

#include "eng_err.h"
#include "viz_color.h"

#define VIZ_CANVAS_MAX 16384 /* per side; figures up to 8192 x 8192 maps plus margins fit */

typedef struct {
    int w, h;
    int channels;    /* 3 = RGB, 4 = RGBA */
    uint8_t *px;     /* [h][w][channels], row-major, top row first */
} viz_canvas;

/* Allocate and fill with bg (alpha 255 for RGBA). Sides in [1, VIZ_CANVAS_MAX]. */
int viz_canvas_init(viz_canvas *c, int w, int h, int channels, viz_rgb bg, eng_err *err);
void viz_canvas_free(viz_canvas *c);

/* Drawing; everything is clipped to the canvas. alpha in [0, 1] blends over what is there. */
void viz_canvas_blend(viz_canvas *c, int x, int y, viz_rgb col, float alpha);
void viz_canvas_fill(viz_canvas *c, int x, int y, int w, int h, viz_rgb col, float alpha);
void viz_canvas_rect(viz_canvas *c, int x, int y, int w, int h, viz_rgb col, int thick);
void viz_canvas_line(viz_canvas *c, int x0, int y0, int x1, int y1, viz_rgb col, float alpha);
/* Text with its top-left corner at (x, y), font pixels scale x scale. */
void viz_canvas_text(viz_canvas *c, int x, int y, const char *s, int scale, viz_rgb col);
/* Text turned 90 degrees counter-clockwise (reads bottom to top); (x, y) is the top-left of its
 * bounding box, which is VIZ_FONT_GH*scale wide and viz_font_text_width() tall. */
void viz_canvas_text_up(viz_canvas *c, int x, int y, const char *s, int scale, viz_rgb col);
/* Values v[h][w] through scale and colour map, one value per pixel, top-left at (x, y); NaN
 * values get nan_col. */
void viz_canvas_heat(viz_canvas *c, int x, int y, const float *v, int w, int h, const viz_scale *s,
                     viz_cmap m, viz_rgb nan_col);

/* One panel of a figure: a pooled map and what its axes mean. */
typedef struct {
    const float *values;   /* [h][w]: row y = query tile y, column x = key tile x; NaN = no data */
    int w, h;              /* map size in pixels (drawn 1:1) */
    int q0, q1, k0, k1;    /* token ranges [q0, q1) down, [k0, k1) across */
    const char *title;     /* above the panel; may be NULL */
    /* Sparse-index overlay (all optional). */
    const float *computed; /* [h][w] fraction of each tile's causal entries the index computes
                              (NaN where the tile has none); skipped parts are greyed out */
    const int *verticals;  /* key positions drawn as vertical lines from the diagonal down */
    int n_verticals;
    const int *slashes;    /* diagonal offsets q - k >= 0 drawn as slash lines */
    int n_slashes;         /* (a kind with more than 32 distinct pixel lines is not drawn: bands) */
    int block;             /* > 0: block grid every `block` tokens (64) where it is >= 4 px apart */
} viz_panel;

typedef struct {
    const char *title;          /* figure title; may be NULL */
    viz_cmap cmap;
    viz_scale scale;            /* ONE scale for every panel and the colour bar */
    const char *cbar_label;     /* e.g. "attention (max-pooled)"; may be NULL */
    int cols;                   /* panels per row; <= 0 means all in one row */
    int font_scale;             /* <= 0: chosen from the panel size */
    /* Token strings by absolute position (tokens[i] labels token i); NULL = no labels. Labels
     * appear on an axis when each token gets enough pixels to read them. */
    const char *const *tokens;
    int n_tokens;
    const char *x_label, *y_label; /* default "key position" / "query position" */
} viz_figure;

/* Lay out and draw the figure into a fresh canvas (RGB, white background); free with
 * viz_canvas_free. Panels may differ in size; the grid uses the largest. */
int viz_figure_render(const viz_figure *f, const viz_panel *panels, int n_panels, viz_canvas *out,
                      eng_err *err);

/* Write c as PNG (8-bit RGB or RGBA) to path atomically (temp file in the same directory, then
 * rename). command (may be NULL) is stored in a tEXt chunk with keyword "Command" (iTXt when it is
 * not ASCII), plus "Software" = "attnscope". Unwritable paths fail with a message naming them. */
int viz_png_write(const char *path, const viz_canvas *c, const char *command, eng_err *err);

/* Format a colour-bar value compactly: "0", "0.25", "1e-4", "3.2e-05". */
void viz_format_value(float v, int log_style, char *buf, int cap);

#endif
