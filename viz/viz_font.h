/* viz_font: a small built-in bitmap font (ASCII 32..126) for labels on PNG figures and anything
 * else that needs text without a font library. Glyphs are 5 x 9 font pixels: rows 0..6 sit on the
 * baseline (cap height 7, x-height 5), rows 7..8 hold descenders. Draw at integer scale s: each font
 * pixel becomes an s x s square. Pure lookups, no state. */
#ifndef VIZ_FONT_H
#define VIZ_FONT_H

#include <stdint.h>

#define VIZ_FONT_GW 5    /* glyph width, font pixels */
#define VIZ_FONT_GH 9    /* glyph height incl. descenders */
#define VIZ_FONT_ASC 7   /* rows above the baseline */
#define VIZ_FONT_ADV 6   /* horizontal advance (one column of spacing) */

/* Fill rows[r] (r = 0 top .. 8): bit (4 - c) set means column c of row r is ink. Characters outside
 * 32..126 draw as '?'. */
void viz_font_glyph(int ch, uint8_t rows[VIZ_FONT_GH]);

/* Width in pixels of s at scale (no trailing spacing); 0 for "". Height is VIZ_FONT_GH * scale. */
int viz_font_text_width(const char *s, int scale);

#endif
