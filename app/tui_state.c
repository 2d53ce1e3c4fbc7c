/* tui_state: the explorer's state machine (see tui_state.h); pure: curses only for key codes. */
#include "tui_state.h"

#include <curses.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
/* Viewport arithmetic in 64 bits: pixels x tokens-per-pixel exceeds INT_MAX for a huge terminal
 * on a long prompt (10000 columns x 419431 tokens/px at 16M tokens). */
static int clampll(long long v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : (int)v; }

const char *tui_metric_name(tui_metric m) {
    switch (m) {
    case TUI_METRIC_DENSITY: return "density";
    case TUI_METRIC_RECALL: return "recall";
    case TUI_METRIC_ERROR: return "error";
    default: return "?";
    }
}

const char *tui_teach_step_name(int step) {
    static const char *names[TUI_TEACH_STEPS] = {
        "1/5 estimate: softmax of the last 64 queries",
        "2/5 vertical scores: column sums of the estimate",
        "3/5 slash scores: diagonal sums of the estimate",
        "4/5 top-k: the chosen vertical and slash lines",
        "5/5 index: merged key blocks and gathered columns",
    };
    return step >= 0 && step < TUI_TEACH_STEPS ? names[step] : "?";
}

/* The parameter behind field f of kind k (NULL for the kind field or out of range). */
static const eng_pat_param *field_param(eng_pat_kind k, tui_field f) {
    int np;
    const eng_pat_param *par = eng_pattern_params(k, &np);
    return f >= 1 && f <= np ? &par[f - 1] : NULL;
}

static int is_field(const eng_pat_param *par, size_t offset) { return par && par->offset == (int)offset; }

int tui_pattern_nfields(eng_pat_kind k) {
    int np;
    eng_pattern_params(k, &np);
    return 1 + np < TUI_FIELDS_MAX ? 1 + np : TUI_FIELDS_MAX;
}

int tui_pattern_first_field(int field, int nf, int rows) {
    if (rows < 1) rows = 1;
    if (nf <= rows || field < rows) return 0;
    return clampi(field - rows + 1, 0, nf - rows);
}

const char *tui_field_name(eng_pat_kind k, tui_field f) {
    if (f == TUI_FIELD_KIND) return "pattern";
    const eng_pat_param *par = field_param(k, f);
    return par ? par->name : "?";
}

void tui_field_text(const eng_pattern *p, tui_field f, char *buf, int cap) {
    if (f == TUI_FIELD_KIND) {
        snprintf(buf, (size_t)cap, "%s", eng_pattern_kind_name(p->kind));
        return;
    }
    const eng_pat_param *par = field_param(p->kind, f);
    if (!par) {
        snprintf(buf, (size_t)cap, "?");
        return;
    }
    double v = eng_pattern_param_get(p, par);
    if (is_field(par, offsetof(eng_pattern, reshape))) snprintf(buf, (size_t)cap, "%s", v != 0 ? "on" : "off");
    else if (is_field(par, offsetof(eng_pattern, key_score))) snprintf(buf, (size_t)cap, "%s", v != 0 ? "vs score" : "norm(v)");
    else if (par->is_float) snprintf(buf, (size_t)cap, "%.2f", v);
    else snprintf(buf, (size_t)cap, "%d", (int)v);
}

/* Limits of an integer parameter for an n-token prompt: the table's range, a builder floor above 1
 * (VS clamps to >= 30 vertical / >= 50 slash lines, so smaller values change nothing), counts of
 * tokens at most n, BS blocks at most the row blocks. */
static void param_limits(const eng_pat_param *par, int n, int *lo, int *hi) {
    double l = par->lo, h = par->hi;
    if (par->budget && par->budget_min > 1 && par->budget_min > l) l = par->budget_min;
    if (par->budget) {
        double cap = is_field(par, offsetof(eng_pattern, topk)) ? (n + 63) / 64 : n;
        if (cap < h) h = cap;
    }
    if (h < l) h = l;
    *lo = (int)l;
    *hi = (int)h;
}

/* A budget's default for n tokens: the table's default scaled by n / 32768 (the length upstream
 * budgets refer to; MInference's search prompt), at least the builder floor and 1. */
static double sized_default(const eng_pat_param *par, int n) {
    if (!par->budget || n >= 32768) return par->def;
    double v = floor(par->def * (double)n / 32768.0 + 0.5);
    double lo = par->budget_min > 1 ? par->budget_min : 1;
    return v < lo ? lo : v;
}

void tui_pattern_cycle(eng_pattern *p, int n) {
    p->kind = (eng_pat_kind)(((int)p->kind + 1) % (int)ENG_PAT__COUNT);
    /* Defaults of roughly a quarter of the causal entries at n tokens for the MInference kinds, so
     * a cycle shows a real sparse pattern rather than one that keeps everything. */
    int q = n / 8 > 16 ? n / 8 : 16;
    if (p->kind == ENG_PAT_ASHAPE) {
        if (p->n_init <= 0) p->n_init = 64 < n ? 64 : n;
        if (p->n_local <= 0) p->n_local = q;
    } else if (p->kind == ENG_PAT_VS) {
        if (p->vertical <= 0) p->vertical = q > 30 ? q : 30;
        if (p->slash <= 0) p->slash = q > 100 ? q : 100;
    } else if (p->kind == ENG_PAT_BS) {
        int n_rb = (n + 63) / 64;
        if (p->topk <= 0) p->topk = n_rb / 4 > 1 ? n_rb / 4 : 1;
    } else if (p->kind == ENG_PAT_DENSE) {
        p->reshape = 0;
    }
    /* every other parameter of the new kind that is unset or out of range: the kind's default */
    int np;
    const eng_pat_param *par = eng_pattern_params(p->kind, &np);
    for (int i = 0; i < np; i++) {
        double v = eng_pattern_param_get(p, &par[i]);
        int unset = !(v >= par[i].lo && v <= par[i].hi) || (v == 0 && par[i].def != 0);
        if (unset) eng_pattern_param_set(p, &par[i], sized_default(&par[i], n));
    }
    eng_err err;
    if (eng_pattern_validate(p, &err)) { /* cross-field rules (N:M n <= m, stride | 128): defaults */
        int reshape = p->reshape;
        float score = p->score;
        *p = eng_pattern_make(p->kind);
        p->reshape = p->kind == ENG_PAT_DENSE ? 0 : reshape;
        p->score = score;
    }
}

void tui_pattern_step(eng_pattern *p, tui_field f, int dir, int n) {
    if (f == TUI_FIELD_KIND) {
        if (dir > 0) {
            tui_pattern_cycle(p, n);
        } else { /* cycling backwards = forwards COUNT-1 times */
            for (int i = 0; i < (int)ENG_PAT__COUNT - 1; i++) tui_pattern_cycle(p, n);
        }
        return;
    }
    const eng_pat_param *par = field_param(p->kind, f);
    if (!par) return;
    double v = eng_pattern_param_get(p, par);
    if (par->is_float) { /* fractions: 0.05 steps, kept on the 0.05 grid */
        double nv = floor(v * 20.0 + 0.5) / 20.0 + (dir > 0 ? 0.05 : -0.05);
        nv = nv < par->lo ? par->lo : nv > par->hi ? par->hi : nv;
        eng_pattern_param_set(p, par, nv);
        return;
    }
    int lo, hi, iv = (int)v;
    param_limits(par, n, &lo, &hi);
    if (is_field(par, offsetof(eng_pattern, stride))) { /* must divide 128: powers of two */
        iv = dir > 0 ? iv * 2 : iv / 2;
        if (iv < 1) iv = 1;
        if (iv > 128) iv = 128;
        if (128 % iv) iv = 8;
    } else if (!par->budget) { /* flags, key score, N:M n and m: one at a time */
        iv = clampi(iv + (dir > 0 ? 1 : -1), lo, hi);
        if (p->kind == ENG_PAT_NM && is_field(par, offsetof(eng_pattern, nm_n)) && iv > p->nm_m) iv = p->nm_m;
        if (p->kind == ENG_PAT_NM && is_field(par, offsetof(eng_pattern, nm_m)) && iv < p->nm_n) iv = p->nm_n;
    } else {
        /* about 25% per step up and 20% down (so up then down returns close to the start) */
        int step = dir > 0 ? iv / 4 : iv / 5;
        if (step < 1) step = 1;
        iv = clampi(iv + (dir > 0 ? step : -step), lo, hi);
    }
    eng_pattern_param_set(p, par, iv);
}

/* ---- viewport ---- */

static int fit_tpp(int n, int px_w, int px_h) {
    int m = px_w < px_h ? px_w : px_h;
    if (m < 1) m = 1;
    int t = (n + m - 1) / m;
    return t < 1 ? 1 : t;
}

/* Keep origin in range and the cursor inside the view. */
static void view_clamp(tui_state *s) {
    int n = s->n_tokens;
    s->tpp = clampi(s->tpp, 1, s->fit_tpp);
    s->cur_q = clampi(s->cur_q, 0, n - 1);
    s->cur_k = clampi(s->cur_k, 0, n - 1);
    long long span_q = (long long)s->px_h * s->tpp, span_k = (long long)s->px_w * s->tpp;
    long long q0 = s->q0, k0 = s->k0;
    if (s->cur_q < q0) q0 = s->cur_q;
    if (s->cur_q >= q0 + span_q) q0 = s->cur_q - span_q + 1;
    if (s->cur_k < k0) k0 = s->cur_k;
    if (s->cur_k >= k0 + span_k) k0 = s->cur_k - span_k + 1;
    s->q0 = clampll(q0, 0, n - span_q > 0 ? (int)(n - span_q) : 0);
    s->k0 = clampll(k0, 0, n - span_k > 0 ? (int)(n - span_k) : 0);
}

/* Zoom to tpp keeping the cursor at the same place on screen. */
static void zoom_to(tui_state *s, int tpp) {
    tpp = clampi(tpp, 1, s->fit_tpp);
    if (tpp == s->tpp) return;
    int rq = (s->cur_q - s->q0) / s->tpp, rk = (s->cur_k - s->k0) / s->tpp;
    s->tpp = tpp;
    s->q0 = clampll(s->cur_q - (long long)rq * tpp, 0, s->n_tokens - 1);
    s->k0 = clampll(s->cur_k - (long long)rk * tpp, 0, s->n_tokens - 1);
    view_clamp(s);
}

void tui_state_init(tui_state *s, int n_layers, int n_heads, int n_kv_heads, int n_tokens) {
    memset(s, 0, sizeof *s);
    s->n_layers = n_layers;
    s->n_heads = n_heads;
    s->n_kv_heads = n_kv_heads;
    s->n_tokens = n_tokens > 0 ? n_tokens : 1;
    s->focus = TUI_FOCUS_HEADS;
    s->overlay = 1;
    s->px_w = s->px_h = 1;
    s->tpp = s->fit_tpp = s->n_tokens;
    /* start on the last query looking at the first key: the attention sink row most heads show */
    s->cur_q = s->n_tokens - 1;
    s->cur_k = 0;
    view_clamp(s);
}

void tui_state_set_map_size(tui_state *s, int px_w, int px_h, tui_cmd *cmd) {
    px_w = px_w < 1 ? 1 : px_w;
    px_h = px_h < 1 ? 1 : px_h;
    if (px_w == s->px_w && px_h == s->px_h) return;
    int was_fit = s->tpp == s->fit_tpp;
    s->px_w = px_w;
    s->px_h = px_h;
    s->fit_tpp = fit_tpp(s->n_tokens, px_w, px_h);
    if (was_fit || s->tpp > s->fit_tpp) s->tpp = s->fit_tpp;
    if (s->tpp == s->fit_tpp) s->q0 = s->k0 = 0;
    view_clamp(s);
    if (cmd) cmd->view_changed = 1;
}

unsigned tui_state_context(const tui_state *s) {
    if (s->help) return TUI_CTX_HELP;
    switch (s->focus) {
    case TUI_FOCUS_HEADS: return TUI_CTX_HEADS;
    case TUI_FOCUS_MAP: return s->teach ? TUI_CTX_TEACH : TUI_CTX_MAP;
    case TUI_FOCUS_PATTERN: return TUI_CTX_PATTERN;
    default: return TUI_CTX_HEADS;
    }
}

eng_view tui_state_view(const tui_state *s) {
    eng_view v;
    memset(&v, 0, sizeof v);
    v.layer = s->layer;
    v.head = s->head;
    v.q0 = s->q0;
    v.k0 = s->k0;
    v.tpp = s->tpp;
    v.rows = s->px_h;
    v.cols = s->px_w;
    v.cur_q = s->cur_q;
    v.cur_k = s->cur_k;
    v.teach = s->teach;
    return v;
}

const eng_pattern *tui_state_pattern(const tui_state *s, const eng_pattern *cur) {
    if (s->edit_valid && s->edit_layer == s->layer && s->edit_head == s->head) return &s->edit;
    return cur;
}

static void select_head(tui_state *s, int layer, int head, tui_cmd *cmd) {
    layer = clampi(layer, 0, s->n_layers - 1);
    head = clampi(head, 0, s->n_heads - 1);
    if (layer == s->layer && head == s->head) return;
    s->layer = layer;
    s->head = head;
    s->edit_valid = 0;
    s->teach_step = 0;
    cmd->view_changed = 1;
}

/* Apply an edit to the selected head's pattern and send it to the worker. */
static void edit_pattern(tui_state *s, const eng_pattern *cur, int cycle, int dir, tui_cmd *cmd) {
    const eng_pattern *base = tui_state_pattern(s, cur);
    if (!base) {
        snprintf(s->msg, sizeof s->msg, "wait for the prefill to finish before editing patterns");
        return;
    }
    eng_pattern p = *base;
    if (cycle) {
        tui_pattern_cycle(&p, s->n_tokens);
    } else {
        s->field = clampi(s->field, 0, tui_pattern_nfields(p.kind) - 1);
        tui_pattern_step(&p, s->field, dir, s->n_tokens);
    }
    s->field = clampi(s->field, 0, tui_pattern_nfields(p.kind) - 1);
    if (!memcmp(&p, base, sizeof p)) return; /* at a limit: nothing to re-run */
    s->edit = p;
    s->edit_valid = 1;
    s->edit_layer = s->layer;
    s->edit_head = s->head;
    cmd->set_pattern = 1;
    cmd->layer = s->layer;
    cmd->head = s->head;
    cmd->pat = p;
    cmd->view_changed = 1;
}

static void move_cursor(tui_state *s, int dq, int dk, tui_cmd *cmd) {
    s->cur_q = clampll((long long)s->cur_q + (long long)dq * s->tpp, 0, s->n_tokens - 1);
    s->cur_k = clampll((long long)s->cur_k + (long long)dk * s->tpp, 0, s->n_tokens - 1);
    view_clamp(s);
    cmd->view_changed = 1;
}

static void pan(tui_state *s, int dq, int dk, tui_cmd *cmd) {
    long long sq = (long long)(s->px_h / 2 > 1 ? s->px_h / 2 : 1) * s->tpp;
    long long sk = (long long)(s->px_w / 2 > 1 ? s->px_w / 2 : 1) * s->tpp;
    int n = s->n_tokens;
    s->q0 = clampll(s->q0 + dq * sq, 0, n - 1);
    s->cur_q = clampll(s->cur_q + dq * sq, 0, n - 1);
    s->k0 = clampll(s->k0 + dk * sk, 0, n - 1);
    s->cur_k = clampll(s->cur_k + dk * sk, 0, n - 1);
    view_clamp(s);
    cmd->view_changed = 1;
}

/* "Q" or "Q,K": move the cursor there and centre the view on it. */
static void jump_commit(tui_state *s, tui_cmd *cmd) {
    char *end;
    long q = strtol(s->jump_buf, &end, 10), k = -1;
    int ok = end != s->jump_buf;
    if (ok && *end == ',') {
        char *p = end + 1;
        k = strtol(p, &end, 10);
        ok = end != p;
    }
    ok = ok && *end == 0 && q >= 0 && q < s->n_tokens && k < s->n_tokens;
    if (!ok) {
        snprintf(s->msg, sizeof s->msg, "jump: '%s' is not a token position in [0, %d) (Q or Q,K)", s->jump_buf,
                 s->n_tokens);
    } else {
        s->cur_q = (int)q;
        s->cur_k = k >= 0 ? (int)k : (s->cur_k > q ? (int)q : s->cur_k);
        s->q0 = clampll(s->cur_q - (long long)s->px_h * s->tpp / 2, 0, s->n_tokens - 1);
        s->k0 = clampll(s->cur_k - (long long)s->px_w * s->tpp / 2, 0, s->n_tokens - 1);
        view_clamp(s);
        s->focus = TUI_FOCUS_MAP;
        snprintf(s->msg, sizeof s->msg, "cursor at query %d, key %d", s->cur_q, s->cur_k);
        cmd->view_changed = 1;
    }
    s->jump_active = 0;
    s->jump_buf[0] = 0;
}

static void jump_key(tui_state *s, int key, tui_cmd *cmd) {
    size_t len = strlen(s->jump_buf);
    if (key == '\n' || key == '\r' || key == KEY_ENTER) {
        jump_commit(s, cmd);
    } else if (key == 27) {
        s->jump_active = 0;
        s->jump_buf[0] = 0;
    } else if (key == 127 || key == 8 || key == KEY_BACKSPACE) {
        if (len) s->jump_buf[len - 1] = 0;
    } else if (((key >= '0' && key <= '9') || key == ',') && len + 1 < sizeof s->jump_buf) {
        s->jump_buf[len] = (char)key;
        s->jump_buf[len + 1] = 0;
    }
}

void tui_state_action(tui_state *s, tui_action a, const eng_pattern *cur, tui_cmd *cmd) {
    const eng_pattern *p = tui_state_pattern(s, cur);
    int nf = p ? tui_pattern_nfields(p->kind) : 1;
    switch (a) {
    case TUI_ACT_QUIT: s->quit = 1; break;
    case TUI_ACT_HELP: s->help = !s->help; break;
    case TUI_ACT_ESCAPE:
        if (s->help) s->help = 0;
        else if (s->teach) { s->teach = 0; cmd->view_changed = 1; }
        break;
    case TUI_ACT_FOCUS_NEXT: s->focus = (tui_focus)((s->focus + 1) % TUI_FOCUS__COUNT); break;
    case TUI_ACT_FOCUS_PREV: s->focus = (tui_focus)((s->focus + TUI_FOCUS__COUNT - 1) % TUI_FOCUS__COUNT); break;
    case TUI_ACT_SEL_UP: select_head(s, s->layer - 1, s->head, cmd); break;
    case TUI_ACT_SEL_DOWN: select_head(s, s->layer + 1, s->head, cmd); break;
    case TUI_ACT_SEL_LEFT: select_head(s, s->layer, s->head - 1, cmd); break;
    case TUI_ACT_SEL_RIGHT: select_head(s, s->layer, s->head + 1, cmd); break;
    case TUI_ACT_CUR_UP: move_cursor(s, -1, 0, cmd); break;
    case TUI_ACT_CUR_DOWN: move_cursor(s, 1, 0, cmd); break;
    case TUI_ACT_CUR_LEFT: move_cursor(s, 0, -1, cmd); break;
    case TUI_ACT_CUR_RIGHT: move_cursor(s, 0, 1, cmd); break;
    case TUI_ACT_PAGE_UP: pan(s, -1, 0, cmd); break;
    case TUI_ACT_PAGE_DOWN: pan(s, 1, 0, cmd); break;
    case TUI_ACT_PAGE_LEFT: pan(s, 0, -1, cmd); break;
    case TUI_ACT_PAGE_RIGHT: pan(s, 0, 1, cmd); break;
    case TUI_ACT_ZOOM_IN: zoom_to(s, s->tpp / 2); cmd->view_changed = 1; break;
    case TUI_ACT_ZOOM_OUT: zoom_to(s, s->tpp * 2); cmd->view_changed = 1; break;
    case TUI_ACT_ZOOM_FIT: zoom_to(s, s->fit_tpp); cmd->view_changed = 1; break;
    case TUI_ACT_FIELD_UP: s->field = clampi(s->field - 1, 0, nf - 1); break;
    case TUI_ACT_FIELD_DOWN: s->field = clampi(s->field + 1, 0, nf - 1); break;
    case TUI_ACT_VAL_INC: edit_pattern(s, cur, 0, 1, cmd); break;
    case TUI_ACT_VAL_DEC: edit_pattern(s, cur, 0, -1, cmd); break;
    case TUI_ACT_CYCLE_PATTERN: edit_pattern(s, cur, 1, 1, cmd); break;
    case TUI_ACT_STEP_PREV: s->teach_step = clampi(s->teach_step - 1, 0, TUI_TEACH_STEPS - 1); break;
    case TUI_ACT_STEP_NEXT: s->teach_step = clampi(s->teach_step + 1, 0, TUI_TEACH_STEPS - 1); break;
    case TUI_ACT_E2E:
        if (!cur) snprintf(s->msg, sizeof s->msg, "wait for the prefill to finish");
        else cmd->run_e2e = 1;
        break;
    case TUI_ACT_EXPORT: cmd->export_png = 1; break;
    case TUI_ACT_SAVE: cmd->save = 1; break;
    case TUI_ACT_TRANSFORM: cmd->transform = 1; break;
    case TUI_ACT_JUMP: s->jump_active = 1; s->jump_buf[0] = 0; break;
    case TUI_ACT_TEACH:
        s->teach = !s->teach;
        s->teach_step = 0;
        if (s->teach) s->focus = TUI_FOCUS_MAP;
        cmd->view_changed = 1;
        break;
    case TUI_ACT_OVERLAY: s->overlay = !s->overlay; break;
    case TUI_ACT_METRIC: s->metric = (tui_metric)((s->metric + 1) % TUI_METRIC__COUNT); break;
    default: break;
    }
}

void tui_state_key(tui_state *s, int key, const eng_pattern *cur, tui_cmd *cmd) {
    memset(cmd, 0, sizeof *cmd);
    s->msg[0] = 0;
    if (s->jump_active) {
        jump_key(s, key, cmd);
        return;
    }
    if (s->help) { /* any key closes the help; q still quits */
        tui_action a = tui_keys_lookup(key, TUI_CTX_ANY);
        s->help = 0;
        if (a == TUI_ACT_QUIT) s->quit = 1;
        return;
    }
    tui_state_action(s, tui_keys_lookup(key, tui_state_context(s)), cur, cmd);
}

void tui_state_click(tui_state *s, const tui_hit *hit, const eng_pattern *cur, tui_cmd *cmd) {
    memset(cmd, 0, sizeof *cmd);
    s->help = 0;
    switch (hit->kind) {
    case TUI_HIT_HEAD:
        s->focus = TUI_FOCUS_HEADS;
        select_head(s, hit->layer, hit->head, cmd);
        break;
    case TUI_HIT_MAP:
        s->focus = TUI_FOCUS_MAP;
        if (s->teach) break;
        s->cur_q = clampll(s->q0 + (long long)hit->py * s->tpp, 0, s->n_tokens - 1);
        s->cur_k = clampll(s->k0 + (long long)hit->px * s->tpp, 0, s->n_tokens - 1);
        view_clamp(s);
        cmd->view_changed = 1;
        break;
    case TUI_HIT_PATTERN: {
        s->focus = TUI_FOCUS_PATTERN;
        const eng_pattern *p = tui_state_pattern(s, cur);
        int nf = p ? tui_pattern_nfields(p->kind) : 1;
        int rows = hit->rows > 0 ? hit->rows : nf; /* field rows shown (scrolling when fewer) */
        int first = tui_pattern_first_field(s->field, nf, rows);
        if (hit->row >= 1 && hit->row <= nf - first && hit->row <= rows)
            s->field = first + hit->row - 1; /* row 0 is the title */
        break;
    }
    default: break;
    }
}
