/* tui_draw: paints one frame of the explorer with ncurses from the layout, the UI state, the
 * newest engine snapshot and the worker status. Drawing only: every number comes from the
 * snapshot. Heatmaps are rendered by viz_term (half blocks; direct RGB where the terminal has it,
 * 256 colours, else its ASCII ramp, always under --no-color) and only put on screen here. */
#ifndef TUI_DRAW_H
#define TUI_DRAW_H

#include "eng_session.h"
#include "tui_layout.h"
#include "tui_state.h"
#include "tui_worker.h"

typedef enum { TUI_COLOR_MONO = 0, TUI_COLOR_8, TUI_COLOR_256, TUI_COLOR_DIRECT } tui_color_mode;

/* After initscr: pick the colour mode and set up colour pairs. Returns the mode chosen. */
tui_color_mode tui_draw_init(int no_color);

/* One full frame into stdscr (the caller refreshes). snap may be NULL (nothing computed yet). */
void tui_draw_frame(const tui_layout *l, const tui_state *s, const eng_snapshot *snap, const tui_status *st);

#endif
