/* tui_export: the explorer's PNG export (key e). The engine only produces a snapshot of the
 * screen's token region at print resolution (tui_export_view); this module draws it with the same
 * one-head figure as `attnscope map` (viz_mapfig) and writes it with viz_png, so engine/ stays
 * free of PNG code. Runs on the worker thread. */
#ifndef TUI_EXPORT_H
#define TUI_EXPORT_H

#include "eng_err.h"
#include "eng_session.h"

#define TUI_EXPORT_MAX_SIDE 1024 /* map pixels per side at most (one per token up to this) */
#define TUI_EXPORT_MIN_SIDE 512  /* smaller regions are enlarged by whole pixels towards this */

/* The view to snapshot for exporting screen view v of an n-token prompt: the same token region
 * (clamped to the prompt) at one token per pixel, or pooled to at most TUI_EXPORT_MAX_SIDE pixels
 * a side; the index lines when overlay is set, and every token's label. */
eng_view tui_export_view(const eng_view *v, int n_tokens, int overlay);

/* Draw snapshot snap (made for a tui_export_view) as a PNG at path: title, axes, colour bar, token
 * labels when zoomed in far enough, and with overlay the head's sparse index (skipped regions, the
 * block grid, vertical and slash lines). command (may be NULL) goes into the tEXt chunk. *w, *h
 * (may be NULL) receive the image size. */
int tui_export_png(const eng_snapshot *snap, int overlay, const char *command, const char *path, int *w, int *h,
                   eng_err *err);

#endif
