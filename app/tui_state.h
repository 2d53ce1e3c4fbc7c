/* tui_state: the explorer's state machine. Keys (through the key table), clicks and resizes change
 * the selection, focus, viewport and pattern edits; every change that needs the engine comes out
 * as a tui_cmd for the worker. No curses and no engine calls here, so it is unit-tested. */
#ifndef TUI_STATE_H
#define TUI_STATE_H

#include "eng_pattern.h"
#include "eng_session.h"
#include "tui_keys.h"
#include "tui_layout.h"

typedef enum { TUI_FOCUS_HEADS = 0, TUI_FOCUS_MAP, TUI_FOCUS_PATTERN, TUI_FOCUS__COUNT } tui_focus;
typedef enum { TUI_METRIC_DENSITY = 0, TUI_METRIC_RECALL, TUI_METRIC_ERROR, TUI_METRIC__COUNT } tui_metric;
/* Editable pattern fields, table-driven: field 0 is the kind, field i >= 1 is parameter i - 1 of
 * the kind's table (eng_pattern_params: A-shape n_init/n_local, VS vertical/slash, BS topk,
 * XAttention stride/threshold, FlexPrefill gamma/tau/min_budget, DMA keep/n_init/n_local/key_score,
 * N:M n/m, and reshape on every sparse kind), so a new kind's parameters appear with no change here. */
typedef int tui_field;
#define TUI_FIELD_KIND 0
#define TUI_FIELDS_MAX 12 /* kind + the longest parameter table (DMA: 5) with room to grow */

#define TUI_TEACH_STEPS 5 /* estimate, vertical scores, slash scores, top-k lines, merged index */

typedef struct {
    int n_layers, n_heads, n_kv_heads, n_tokens;
    int layer, head;         /* selected head */
    tui_focus focus;
    tui_metric metric;
    int overlay;             /* sparse-index overlay on the heatmap */
    int help;                /* help overlay shown */
    int teach, teach_step;   /* teach view replaces the heatmap */
    /* heatmap viewport in tokens: pixel (r, c) covers queries q0 + r*tpp.., keys k0 + c*tpp.. */
    int px_w, px_h;          /* pixels the heatmap holds (from the layout) */
    int tpp, fit_tpp;        /* tokens per pixel; fit_tpp shows the whole prompt */
    int q0, k0;
    int cur_q, cur_k;
    /* pattern panel */
    int field;               /* edited field: 0 the kind, i >= 1 parameter i - 1 (tui_field) */
    int edit_valid, edit_layer, edit_head; /* an edit sent to the worker, not yet in a snapshot */
    eng_pattern edit;
    /* jump prompt */
    int jump_active;
    char jump_buf[24];
    int quit;
    char msg[160];           /* transient message for the footer */
} tui_state;

/* What the engine must do after an input. */
typedef struct {
    int set_pattern;         /* give (layer, head) pattern pat */
    int layer, head;
    eng_pattern pat;
    int run_e2e;
    int export_png;
    int save;
    int transform;           /* toggle the weight transform (the worker re-runs the prefill) */
    int view_changed;        /* ask for a new snapshot for tui_state_view() */
} tui_cmd;

void tui_state_init(tui_state *s, int n_layers, int n_heads, int n_kv_heads, int n_tokens);
/* The heatmap area changed size: refit the zoom limits and keep the cursor in view. */
void tui_state_set_map_size(tui_state *s, int px_w, int px_h, tui_cmd *cmd);

/* The context keys are looked up in (TUI_CTX_*). */
unsigned tui_state_context(const tui_state *s);
/* A key press. cur is the selected head's pattern as the newest snapshot has it (NULL before the
 * prefill ends: pattern edits are refused until then). cmd is cleared first. */
void tui_state_key(tui_state *s, int key, const eng_pattern *cur, tui_cmd *cmd);
void tui_state_action(tui_state *s, tui_action a, const eng_pattern *cur, tui_cmd *cmd);
/* A mouse click (button 1) on what hit names. */
void tui_state_click(tui_state *s, const tui_hit *hit, const eng_pattern *cur, tui_cmd *cmd);

/* The view request for the worker. */
eng_view tui_state_view(const tui_state *s);
/* The pattern to show for the selected head: the pending edit, else cur (may be NULL). */
const eng_pattern *tui_state_pattern(const tui_state *s, const eng_pattern *cur);

/* Fields shown for a pattern kind: 1 + its parameter count (at most TUI_FIELDS_MAX). */
int tui_pattern_nfields(eng_pat_kind k);
/* The first field a panel of `rows` field rows shows so that `field` (of nf) is visible. */
int tui_pattern_first_field(int field, int nf, int rows);
/* "pattern", or the parameter's name ("vertical", "threshold", "reshape", ...). */
const char *tui_field_name(eng_pat_kind k, tui_field f);
/* The field's value as text: the kind's name, an integer, a float ("0.90"), "on"/"off" for reshape,
 * "norm(v)"/"vs" for DMA's key score. */
void tui_field_text(const eng_pattern *p, tui_field f, char *buf, int cap);
/* The next kind in the cycle dense -> A-shape -> VS -> BS -> XAttention -> FlexPrefill -> DMA ->
 * N:M -> dense. Parameters the new kind does not have set (0 or outside their range) take
 * eng_pattern_make's defaults, budgets sized for an n-token prompt; the result always passes
 * eng_pattern_validate. Reshape is kept across sparse kinds and cleared for dense. */
void tui_pattern_cycle(eng_pattern *p, int n);
/* Step field f of p up (dir > 0) or down: counts by ~25% / 20% within their limits for n tokens,
 * fractions by 0.05, XAttention's stride by powers of two, flags and small ranges by 1 (N:M keeps
 * n <= m). The result passes eng_pattern_validate. */
void tui_pattern_step(eng_pattern *p, tui_field f, int dir, int n);

const char *tui_metric_name(tui_metric m);
const char *tui_teach_step_name(int step);

#endif
