/* tui_export: the explorer's PNG export through viz_mapfig and viz_png (see tui_export.h). */
#include "tui_export.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_index.h"
#include "eng_pattern.h"
#include "eng_transform.h"
#include "viz_mapfig.h"
#include "viz_png.h"

eng_view tui_export_view(const eng_view *v, int n_tokens, int overlay) {
    eng_view e = *v;
    int n = n_tokens > 0 ? n_tokens : 1, tpp = v->tpp < 1 ? 1 : v->tpp;
    e.q0 = v->q0 < 0 ? 0 : v->q0 >= n ? n - 1 : v->q0;
    e.k0 = v->k0 < 0 ? 0 : v->k0 >= n ? n - 1 : v->k0;
    long long nq = (long long)(v->rows > 0 ? v->rows : 1) * tpp, nk = (long long)(v->cols > 0 ? v->cols : 1) * tpp;
    if (nq > n - e.q0) nq = n - e.q0;
    if (nk > n - e.k0) nk = n - e.k0;
    long long big = nq > nk ? nq : nk;
    e.tpp = (int)((big + TUI_EXPORT_MAX_SIDE - 1) / TUI_EXPORT_MAX_SIDE);
    e.rows = (int)((nq + e.tpp - 1) / e.tpp);
    e.cols = (int)((nk + e.tpp - 1) / e.tpp);
    e.teach = 0;
    e.lines = overlay;
    e.labels = 1;
    return e;
}

/* src[h][w] enlarged up x up times (nearest neighbour) into a fresh array; NULL when out of memory. */
static float *enlarge(const float *src, int w, int h, int up) {
    float *dst = malloc(sizeof(float) * (size_t)w * up * h * up);
    if (!dst) return NULL;
    for (int y = 0; y < h * up; y++)
        for (int x = 0; x < w * up; x++) dst[(size_t)y * w * up + x] = src[(size_t)(y / up) * w + x / up];
    return dst;
}

int tui_export_png(const eng_snapshot *snap, int overlay, const char *command, const char *path, int *w, int *h,
                   eng_err *err) {
    if (!snap || !snap->ready || !snap->map_valid || !snap->heads)
        return eng_err_set(err, "the analysis prefill has not finished");
    const eng_view *v = &snap->view;
    const int n = snap->n_tokens, side = v->rows > v->cols ? v->rows : v->cols;
    const int up = side < TUI_EXPORT_MIN_SIDE ? TUI_EXPORT_MIN_SIDE / side : 1;
    float *vals = enlarge(snap->prob, v->cols, v->rows, up);
    float *comp = overlay ? enlarge(snap->cover, v->cols, v->rows, up) : NULL;
    int rc = -1;
    viz_canvas cv;
    memset(&cv, 0, sizeof cv);
    if (!vals || (overlay && !comp)) {
        eng_err_set(err, "export: out of memory for a %d x %d map", v->cols * up, v->rows * up);
        goto done;
    }
    const eng_head_stat *hs = &snap->heads[(size_t)v->layer * snap->n_heads + v->head];
    char pat[128];
    eng_pattern_describe(&hs->pat, pat, sizeof pat);
    long long q1 = (long long)v->q0 + (long long)v->rows * v->tpp, k1 = (long long)v->k0 + (long long)v->cols * v->tpp;
    char model[224]; /* a transformed model says so in the title */
    if (snap->transform)
        snprintf(model, sizeof model, "%.160s, %s weights", snap->model, eng_transform_name(snap->transform));
    else
        snprintf(model, sizeof model, "%s", snap->model);
    viz_mapfig mf = {.model = model, .layer = v->layer, .head = v->head, .n_tokens = n, .values = vals,
                     .w = v->cols * up, .h = v->rows * up, .q0 = v->q0, .q1 = q1 < n ? (int)q1 : n, .k0 = v->k0,
                     .k1 = k1 < n ? (int)k1 : n, .mean = 0, .cmap = VIZ_CMAP_VIRIDIS, .scale = VIZ_SCALE_LOG,
                     .tokens = snap->labels};
    if (overlay) {
        mf.pattern = pat;
        mf.density = hs->density;
        mf.computed = comp;
        mf.verticals = snap->vert;
        mf.n_verticals = snap->n_vert;
        mf.slashes = snap->slash;
        mf.n_slashes = snap->n_slash;
        mf.block = ENG_BLOCK;
    }
    if (viz_mapfig_render(&mf, &cv, err) || viz_png_write(path, &cv, command, err)) goto done;
    if (w) *w = cv.w;
    if (h) *h = cv.h;
    rc = 0;
done:
    viz_canvas_free(&cv);
    free(vals);
    free(comp);
    return rc;
}
