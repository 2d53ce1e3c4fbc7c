/* tui_keys: the explorer's one key table. The same rows drive dispatch (key + context -> action)
 * and the help overlay (? / F1), so the help can never disagree with what a key does. */
#ifndef TUI_KEYS_H
#define TUI_KEYS_H

typedef enum {
    TUI_ACT_NONE = 0,
    TUI_ACT_QUIT,
    TUI_ACT_HELP,
    TUI_ACT_ESCAPE,
    TUI_ACT_FOCUS_NEXT,
    TUI_ACT_FOCUS_PREV,
    TUI_ACT_SEL_UP,      /* overview: previous layer */
    TUI_ACT_SEL_DOWN,
    TUI_ACT_SEL_LEFT,    /* overview: previous head */
    TUI_ACT_SEL_RIGHT,
    TUI_ACT_CUR_UP,      /* heatmap: cursor one pixel */
    TUI_ACT_CUR_DOWN,
    TUI_ACT_CUR_LEFT,
    TUI_ACT_CUR_RIGHT,
    TUI_ACT_PAGE_UP,     /* heatmap: pan half a view */
    TUI_ACT_PAGE_DOWN,
    TUI_ACT_PAGE_LEFT,
    TUI_ACT_PAGE_RIGHT,
    TUI_ACT_ZOOM_IN,
    TUI_ACT_ZOOM_OUT,
    TUI_ACT_ZOOM_FIT,
    TUI_ACT_FIELD_UP,    /* pattern panel: previous field */
    TUI_ACT_FIELD_DOWN,
    TUI_ACT_VAL_INC,     /* pattern panel: change the field */
    TUI_ACT_VAL_DEC,
    TUI_ACT_STEP_PREV,   /* teach view: previous step */
    TUI_ACT_STEP_NEXT,
    TUI_ACT_CYCLE_PATTERN,
    TUI_ACT_E2E,
    TUI_ACT_EXPORT,
    TUI_ACT_SAVE,
    TUI_ACT_JUMP,
    TUI_ACT_TEACH,
    TUI_ACT_OVERLAY,
    TUI_ACT_METRIC,
    TUI_ACT_TRANSFORM,   /* weight transform (--transform) on/off: re-runs the prefill */
    TUI_ACT_MOUSE,
    TUI_ACT__COUNT
} tui_action;

/* Contexts a key row applies in (bit mask). The current context is the focused panel, or TEACH when
 * the teach view replaces the heatmap and the heatmap panel has focus, or HELP while it is shown. */
enum {
    TUI_CTX_HEADS = 1,
    TUI_CTX_MAP = 2,
    TUI_CTX_PATTERN = 4,
    TUI_CTX_TEACH = 8,
    TUI_CTX_HELP = 16,
    TUI_CTX_ANY = 1 | 2 | 4 | 8,
};

typedef struct {
    int key;             /* curses key code or character */
    const char *name;    /* as the help shows it */
    tui_action act;
    unsigned ctx;
    const char *help;
} tui_key;

extern const tui_key tui_key_table[];
extern const int tui_key_count;

/* The action key has in context ctx (first matching row), TUI_ACT_NONE if none. */
tui_action tui_keys_lookup(int key, unsigned ctx);

/* The help overlay's lines, generated from the table: a heading per context, then one line per
 * (action, context) with all its keys ("Up/k       previous layer"), at most max lines of at most
 * 95 chars. Returns the number of lines. */
int tui_keys_help(char (*lines)[96], int max);

#endif
