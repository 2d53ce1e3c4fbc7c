/* viz_term: terminal rendering of maps into a buffer of cells (character + colours) that the TUI
 * draws with ncurses, and an ANSI string of the same buffer for stdout (`attnscope map --term`).
 * Two pixels per cell: U+2580 UPPER HALF BLOCK with the top pixel as foreground and the bottom
 * pixel as background. Modes: truecolor (24-bit escapes), 256 colours (xterm cube + grey ramp),
 * and mono (an ASCII ramp " .:-=+*#%@", one level per cell from the brighter of its two pixels)
 * for monochrome terminals and --no-color. Pure functions over plain arrays.
 *
 * Cell buffer contract for the TUI: cells[y * cols + x]; ch is one UTF-8 character (NUL-ended);
 * fg/bg hold 24-bit colours and fg256/bg256 their xterm-256 indexes (16..255), both always filled
 * unless flags say the terminal's default colour is meant (VIZ_CELL_FG_DEFAULT / _BG_DEFAULT:
 * text, blank and "no data" cells). In mono mode every cell has both default flags. */
#ifndef VIZ_TERM_H
#define VIZ_TERM_H

#include <stddef.h>
#include <stdint.h>

#include "eng_err.h"
#include "viz_color.h"

typedef enum { VIZ_TERM_TRUECOLOR = 0, VIZ_TERM_256, VIZ_TERM_MONO } viz_term_mode;

#define VIZ_CELL_FG_DEFAULT 1u
#define VIZ_CELL_BG_DEFAULT 2u

typedef struct {
    char ch[5];          /* UTF-8, NUL-terminated: "\xe2\x96\x80" (upper half), "\xe2\x96\x84"
                            (lower half), or one ASCII character */
    uint8_t flags;       /* VIZ_CELL_* */
    viz_rgb fg, bg;
    uint8_t fg256, bg256;
} viz_cell;

typedef struct {
    int cols, rows;
    viz_cell *cells;     /* [rows][cols] */
} viz_cellbuf;

/* A buffer of blank cells (space, default colours). cols, rows in [1, 4096]. */
int viz_cellbuf_init(viz_cellbuf *b, int cols, int rows, eng_err *err);
void viz_cellbuf_free(viz_cellbuf *b);
void viz_cellbuf_clear(viz_cellbuf *b);
/* The cell at (x, y), NULL outside the buffer. */
viz_cell *viz_cellbuf_at(viz_cellbuf *b, int x, int y);
/* ASCII text at (x, y) in default colours, clipped; returns the cells written. */
int viz_cellbuf_text(viz_cellbuf *b, int x, int y, const char *s);

typedef struct {
    viz_cmap cmap;
    viz_scale scale;
    viz_term_mode mode;
    const float *computed; /* optional [h][w] index coverage: skipped pixels are dimmed (colour
                              modes) or drawn as ' ' (mono); NULL = no overlay */
} viz_term_opts;

/* Pixels v[h][w] (NaN = no data) into b with the top-left cell at (x0, y0): w cells across,
 * (h + 1) / 2 rows down, clipped to the buffer. */
void viz_term_heat(viz_cellbuf *b, int x0, int y0, const float *v, int w, int h, const viz_term_opts *o);

/* A horizontal colour bar: width cells from (x0, y0), low values left. */
void viz_term_colorbar(viz_cellbuf *b, int x0, int y0, int width, const viz_term_opts *o);

/* The whole buffer as text with escapes for mode (none for mono); each row ends with a reset
 * and '\n'. Malloc'd, NUL-terminated; *len (may be NULL) gets its length. */
char *viz_term_ansi(const viz_cellbuf *b, viz_term_mode mode, size_t *len, eng_err *err);

/* Pick the mode from the environment values passed in (any may be NULL): no_color (NO_COLOR set,
 * or --no-color) or TERM "dumb"/unset -> mono; COLORTERM "truecolor"/"24bit" -> truecolor;
 * else 256. */
viz_term_mode viz_term_mode_detect(const char *colorterm, const char *term, int no_color);

/* Nearest xterm-256 palette index (16..255: 6x6x6 cube or 24-step grey ramp). */
uint8_t viz_rgb_to_xterm256(viz_rgb c);

/* A map figure for terminals: a title row, the map with query ticks on the left, key ticks
 * below and a colour bar with its end values, laid out in a fresh buffer. The map is w pixels
 * across and h pixels down (h / 2 rows). Labels: q0..q1 / k0..k1 token positions. */
int viz_term_figure(const char *title, const float *v, int w, int h, int q0, int q1, int k0, int k1,
                    const viz_term_opts *o, viz_cellbuf *out, eng_err *err);

#endif
