/* viz_color: colour maps (viridis, magma, cividis, gray; tabulated at 256 entries, perceptually
 * uniform) and value scales (linear, log, power) shared by the PNG and terminal renderers. All
 * functions are pure: a scale maps a value to t in [0, 1], a colour map maps t to 8-bit sRGB. */
#ifndef VIZ_COLOR_H
#define VIZ_COLOR_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t r, g, b;
} viz_rgb;

typedef enum { VIZ_CMAP_VIRIDIS = 0, VIZ_CMAP_MAGMA, VIZ_CMAP_CIVIDIS, VIZ_CMAP_GRAY, VIZ_CMAP__COUNT } viz_cmap;

typedef enum { VIZ_SCALE_LINEAR = 0, VIZ_SCALE_LOG, VIZ_SCALE_POWER, VIZ_SCALE__COUNT } viz_scale_kind;

/* A value scale. linear: t = (v - vmin) / (vmax - vmin); log: the same on log10 v (v <= vmin maps
 * to 0, so exact zeros show as the darkest colour); power: t = ((v - vmin) / (vmax - vmin))^gamma
 * (gamma < 1 lifts small values). t is clamped to [0, 1]; NaN stays NaN (renderers draw it as
 * background: "no data", e.g. tiles above the causal diagonal). */
typedef struct {
    viz_scale_kind kind;
    float vmin, vmax;
    float gamma;         /* power only; 0 means 0.5 */
} viz_scale;

/* One panel's values for fitting a shared scale. */
typedef struct {
    const float *v;
    size_t n;
} viz_span;

const char *viz_cmap_name(viz_cmap m);             /* "viridis", ... */
int viz_cmap_parse(const char *s, viz_cmap *out);  /* 0 ok, -1 unknown name */
const char *viz_scale_name(viz_scale_kind k);      /* "linear", "log", "power" */
int viz_scale_parse(const char *s, viz_scale_kind *out);

/* Colour at t in [0, 1] (clamped; NaN gives the t = 0 colour), interpolated between entries. */
viz_rgb viz_cmap_rgb(viz_cmap m, float t);

/* Map a value to t in [0, 1] (NaN in, NaN out). */
float viz_scale_apply(const viz_scale *s, float v);
/* The value at t (for colour-bar labels); inverse of viz_scale_apply inside [vmin, vmax]. */
float viz_scale_value(const viz_scale *s, float t);

/* One fixed scale for all panels of a comparison: vmax = the largest finite value over all panels;
 * vmin = the smallest finite value (linear, power) or, for log, the smallest positive value but at
 * most log_decades (default 6 when <= 0) decades below vmax. Degenerate ranges are widened so
 * vmax > vmin always holds. */
viz_scale viz_scale_fit(viz_scale_kind kind, float gamma, float log_decades, const viz_span *panels,
                        int n_panels);

/* Tick values for a colour bar: at most max_ticks "nice" values inside [vmin, vmax], ascending
 * (decades for log, steps of 1/2/5 x 10^k otherwise). Returns the count. */
int viz_scale_ticks(const viz_scale *s, float *ticks, int max_ticks);

/* CIE L* (0..100) of an 8-bit sRGB colour (D65); used to check perceptual ordering. */
double viz_rgb_lightness(viz_rgb c);

#endif
