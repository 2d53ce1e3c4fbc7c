/* viz_mapfig: the one-head attention-map figure, shared by `attnscope map` (app/cmd_map.c) and the
 * explorer's PNG export (app/tui_export.c): the title (model, layer, head, tokens), the panel title
 * (pooling, and the head's pattern and density when its sparse index is drawn over the map), one
 * scale fitted to the map and the colour-bar label, composed into a viz_figure. Plain arrays in;
 * nothing here knows the engine. */
#ifndef VIZ_MAPFIG_H
#define VIZ_MAPFIG_H

#include <stddef.h>

#include "eng_err.h"
#include "viz_color.h"
#include "viz_png.h"

typedef struct {
    const char *model;          /* model name for the title; may be NULL */
    int layer, head, n_tokens;  /* n_tokens: the prompt's length (title, and tokens[] size) */
    const float *values;        /* [h][w] pooled softmax probabilities; NaN = no data */
    int w, h;                   /* map size in pixels (drawn 1:1) */
    int q0, q1, k0, k1;         /* token ranges [q0, q1) down, [k0, k1) across */
    int mean;                   /* the values are mean-pooled (else max-pooled) */
    /* The head's sparse index over the map (all optional; pattern NULL = no index named). */
    const char *pattern;        /* its description, e.g. "vs(v=128,s=256)" */
    double density;             /* fraction of the causal entries the index computes */
    const float *computed;      /* [h][w] coverage per pixel (viz_panel.computed) */
    const int *verticals;
    int n_verticals;
    const int *slashes;
    int n_slashes;
    int block;                  /* block grid every `block` tokens; 0 = none */
    viz_cmap cmap;
    viz_scale_kind scale;
    float gamma;                /* power scale exponent (0: 0.5) */
    const char *const *tokens;  /* [n_tokens] token texts for the axes, or NULL */
} viz_mapfig;

/* The figure title and the panel title into caller buffers. */
void viz_mapfig_titles(const viz_mapfig *m, char *title, size_t title_cap, char *panel, size_t panel_cap);
/* The scale for the map: fitted to its values (log: at most 6 decades below the maximum). */
viz_scale viz_mapfig_scale(const viz_mapfig *m);
/* The panel (titled panel_title, which must outlive its use) for viz_figure_render or a terminal. */
viz_panel viz_mapfig_panel(const viz_mapfig *m, const char *panel_title);
/* Compose and draw the figure into a fresh canvas (free with viz_canvas_free). */
int viz_mapfig_render(const viz_mapfig *m, viz_canvas *out, eng_err *err);

#endif
