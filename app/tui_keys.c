/* tui_keys: the explorer's key table, its lookup and the help text made from it (see tui_keys.h). */
#include "tui_keys.h"

#include <curses.h>
#include <stdio.h>
#include <string.h>

#define H TUI_CTX_HEADS
#define M TUI_CTX_MAP
#define P TUI_CTX_PATTERN
#define T TUI_CTX_TEACH
#define A TUI_CTX_ANY

/* Context-specific rows come before the ANY rows that share a key (first match wins). */
const tui_key tui_key_table[] = {
    /* layer x head overview */
    {KEY_UP, "Up", TUI_ACT_SEL_UP, H, "previous layer"},
    {'k', "k", TUI_ACT_SEL_UP, H, "previous layer"},
    {KEY_DOWN, "Down", TUI_ACT_SEL_DOWN, H, "next layer"},
    {'j', "j", TUI_ACT_SEL_DOWN, H, "next layer"},
    {KEY_LEFT, "Left", TUI_ACT_SEL_LEFT, H, "previous head"},
    {'h', "h", TUI_ACT_SEL_LEFT, H, "previous head"},
    {KEY_RIGHT, "Right", TUI_ACT_SEL_RIGHT, H, "next head"},
    {'l', "l", TUI_ACT_SEL_RIGHT, H, "next head"},
    /* heatmap */
    {KEY_UP, "Up", TUI_ACT_CUR_UP, M, "cursor up (query - 1px)"},
    {'k', "k", TUI_ACT_CUR_UP, M, "cursor up (query - 1px)"},
    {KEY_DOWN, "Down", TUI_ACT_CUR_DOWN, M, "cursor down (query + 1px)"},
    {'j', "j", TUI_ACT_CUR_DOWN, M, "cursor down (query + 1px)"},
    {KEY_LEFT, "Left", TUI_ACT_CUR_LEFT, M, "cursor left (key - 1px)"},
    {'h', "h", TUI_ACT_CUR_LEFT, M, "cursor left (key - 1px)"},
    {KEY_RIGHT, "Right", TUI_ACT_CUR_RIGHT, M, "cursor right (key + 1px)"},
    {'l', "l", TUI_ACT_CUR_RIGHT, M, "cursor right (key + 1px)"},
    {KEY_PPAGE, "PgUp", TUI_ACT_PAGE_UP, M, "pan up half a view"},
    {'K', "K", TUI_ACT_PAGE_UP, M, "pan up half a view"},
    {KEY_NPAGE, "PgDn", TUI_ACT_PAGE_DOWN, M, "pan down half a view"},
    {'J', "J", TUI_ACT_PAGE_DOWN, M, "pan down half a view"},
    {'H', "H", TUI_ACT_PAGE_LEFT, M, "pan left half a view"},
    {'L', "L", TUI_ACT_PAGE_RIGHT, M, "pan right half a view"},
    {'+', "+", TUI_ACT_ZOOM_IN, M, "zoom in (to 1 token/px)"},
    {'=', "=", TUI_ACT_ZOOM_IN, M, "zoom in (to 1 token/px)"},
    {'-', "-", TUI_ACT_ZOOM_OUT, M, "zoom out"},
    {'0', "0", TUI_ACT_ZOOM_FIT, M, "whole prompt"},
    /* pattern panel */
    {KEY_UP, "Up", TUI_ACT_FIELD_UP, P, "previous field"},
    {'k', "k", TUI_ACT_FIELD_UP, P, "previous field"},
    {KEY_DOWN, "Down", TUI_ACT_FIELD_DOWN, P, "next field"},
    {'j', "j", TUI_ACT_FIELD_DOWN, P, "next field"},
    {KEY_RIGHT, "Right", TUI_ACT_VAL_INC, P, "increase (re-runs layer)"},
    {'l', "l", TUI_ACT_VAL_INC, P, "increase (re-runs layer)"},
    {'+', "+", TUI_ACT_VAL_INC, P, "increase (re-runs layer)"},
    {'=', "=", TUI_ACT_VAL_INC, P, "increase (re-runs layer)"},
    {KEY_LEFT, "Left", TUI_ACT_VAL_DEC, P, "decrease (re-runs layer)"},
    {'h', "h", TUI_ACT_VAL_DEC, P, "decrease (re-runs layer)"},
    {'-', "-", TUI_ACT_VAL_DEC, P, "decrease (re-runs layer)"},
    /* teach view (replaces the heatmap) */
    {KEY_LEFT, "Left", TUI_ACT_STEP_PREV, T, "previous build step"},
    {'h', "h", TUI_ACT_STEP_PREV, T, "previous build step"},
    {KEY_RIGHT, "Right", TUI_ACT_STEP_NEXT, T, "next build step"},
    {'l', "l", TUI_ACT_STEP_NEXT, T, "next build step"},
    {' ', "Space", TUI_ACT_STEP_NEXT, T, "next build step"},
    /* everywhere */
    {'\t', "Tab", TUI_ACT_FOCUS_NEXT, A, "next panel"},
    {KEY_BTAB, "S-Tab", TUI_ACT_FOCUS_PREV, A, "previous panel"},
    {'p', "p", TUI_ACT_CYCLE_PATTERN, A, "cycle pattern (re-run)"},
    {'r', "r", TUI_ACT_E2E, A, "end-to-end sparse run"},
    {'o', "o", TUI_ACT_OVERLAY, A, "index overlay on/off"},
    {'m', "m", TUI_ACT_METRIC, A, "metric: dens/recall/err"},
    {'t', "t", TUI_ACT_TEACH, A, "teach view (VS index)"},
    {'x', "x", TUI_ACT_TRANSFORM, A, "--transform on/off (re-run)"},
    {'/', "/", TUI_ACT_JUMP, A, "jump to token Q or Q,K"},
    {'e', "e", TUI_ACT_EXPORT, A, "export view to PNG"},
    {'s', "s", TUI_ACT_SAVE, A, "save config (2 formats)"},
    {KEY_MOUSE, "click", TUI_ACT_MOUSE, A, "select head/cell/field"},
    {'?', "?", TUI_ACT_HELP, A | TUI_CTX_HELP, "help (any key closes)"},
    {KEY_F(1), "F1", TUI_ACT_HELP, A | TUI_CTX_HELP, "help (any key closes)"},
    {27, "Esc", TUI_ACT_ESCAPE, A, "close teach/help/jump"},
    {'q', "q", TUI_ACT_QUIT, A, "quit"},
    {KEY_F(10), "F10", TUI_ACT_QUIT, A, "quit"},
    {3, "^C", TUI_ACT_QUIT, A, "quit"},
};
const int tui_key_count = (int)(sizeof tui_key_table / sizeof tui_key_table[0]);

tui_action tui_keys_lookup(int key, unsigned ctx) {
    for (int i = 0; i < tui_key_count; i++)
        if (tui_key_table[i].key == key && (tui_key_table[i].ctx & ctx)) return tui_key_table[i].act;
    return TUI_ACT_NONE;
}

static const struct {
    unsigned ctx;
    const char *title;
} groups[] = {
    {TUI_CTX_HEADS, "Overview (layer x head)"},
    {TUI_CTX_MAP, "Heatmap"},
    {TUI_CTX_PATTERN, "Pattern panel"},
    {TUI_CTX_TEACH, "Teach view"},
    {TUI_CTX_ANY, "Everywhere"},
};

int tui_keys_help(char (*lines)[96], int max) {
    int n = 0;
    for (size_t g = 0; g < sizeof groups / sizeof groups[0] && n < max; g++) {
        snprintf(lines[n++], 96, "%s", groups[g].title);
        for (int i = 0; i < tui_key_count && n < max; i++) {
            const tui_key *r = &tui_key_table[i];
            if ((r->ctx & TUI_CTX_ANY) != groups[g].ctx) continue;
            int seen = 0; /* one line per (action, context): only at the action's first row */
            for (int j = 0; j < i; j++)
                if (tui_key_table[j].act == r->act && (tui_key_table[j].ctx & TUI_CTX_ANY) == groups[g].ctx) seen = 1;
            if (seen) continue;
            char keys[48] = "";
            for (int j = i; j < tui_key_count; j++) {
                const tui_key *o = &tui_key_table[j];
                if (o->act != r->act || (o->ctx & TUI_CTX_ANY) != groups[g].ctx) continue;
                size_t len = strlen(keys);
                snprintf(keys + len, sizeof keys - len, "%s%s", len ? "/" : "", o->name);
            }
            snprintf(lines[n++], 96, "  %-12s %s", keys, r->help);
        }
    }
    return n;
}
