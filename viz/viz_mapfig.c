/* viz_mapfig: the one-head attention-map figure (see viz_mapfig.h). */
#include "viz_mapfig.h"

#include <stdio.h>
#include <string.h>

void viz_mapfig_titles(const viz_mapfig *m, char *title, size_t title_cap, char *panel, size_t panel_cap) {
    const char *pool = m->mean ? "mean-pooled" : "max-pooled";
    snprintf(title, title_cap, "%.200s  layer %d head %d  (%d tokens)", m->model ? m->model : "", m->layer, m->head,
             m->n_tokens);
    if (m->pattern)
        snprintf(panel, panel_cap, "%s   index: %.100s, density %.3f", pool, m->pattern, m->density);
    else
        snprintf(panel, panel_cap, "%s softmax probability", pool);
}

viz_scale viz_mapfig_scale(const viz_mapfig *m) {
    viz_span sp = {m->values, (size_t)m->w * (size_t)m->h};
    return viz_scale_fit(m->scale, m->gamma > 0 ? m->gamma : 0.5f, 6, &sp, 1);
}

viz_panel viz_mapfig_panel(const viz_mapfig *m, const char *panel_title) {
    viz_panel p = {.values = m->values, .w = m->w, .h = m->h, .q0 = m->q0, .q1 = m->q1, .k0 = m->k0, .k1 = m->k1,
                   .title = panel_title, .computed = m->computed, .verticals = m->verticals,
                   .n_verticals = m->n_verticals, .slashes = m->slashes, .n_slashes = m->n_slashes,
                   .block = m->block};
    return p;
}

int viz_mapfig_render(const viz_mapfig *m, viz_canvas *out, eng_err *err) {
    memset(out, 0, sizeof *out);
    if (!m->values || m->w < 1 || m->h < 1) return eng_err_set(err, "map figure: empty map (%d x %d)", m->w, m->h);
    char title[512], ptitle[512], cbl[96];
    viz_mapfig_titles(m, title, sizeof title, ptitle, sizeof ptitle);
    snprintf(cbl, sizeof cbl, "attention probability (%s, %s scale)", m->mean ? "mean" : "max",
             viz_scale_name(m->scale));
    viz_panel p = viz_mapfig_panel(m, ptitle);
    viz_figure f = {.title = title, .cmap = m->cmap, .scale = viz_mapfig_scale(m), .cbar_label = cbl, .cols = 1,
                    .tokens = m->tokens, .n_tokens = m->tokens ? m->n_tokens : 0};
    return viz_figure_render(&f, &p, 1, out, err);
}
