/* test_tui_fuzz: the explorer's pure state machine (tui_state, tui_keys, tui_layout) driven by 100k
 * seeded random inputs — key codes of every kind (table keys, ASCII, control characters, F-keys,
 * KEY_RESIZE to random terminal sizes from 0x0 and 1x1 to 10000x10000, mouse clicks at random and
 * out-of-screen coordinates, huge and negative codes) over random model shapes and prompt lengths —
 * checking the selection, cursor, viewport, zoom, pattern edits and layout invariants after every
 * step, as cmd_tui's event loop would feed them. Also run under ASan/UBSan by `make asan`. */
#include "test_util.h"

#include <curses.h>
#include <limits.h>

#include "eng_err.h"
#include "eng_pattern.h"
#include "tui_keys.h"
#include "tui_layout.h"
#include "tui_state.h"

#define N_SLOTS 4096 /* per-head patterns the fake worker keeps (heads share slots modulo this) */

static int rect_inside(const tui_rect *r, int cols, int rows) {
    return r->w >= 0 && r->h >= 0 && r->x >= 0 && r->y >= 0 && (long)r->x + r->w <= cols &&
           (long)r->y + r->h <= rows;
}
static int rects_overlap(const tui_rect *a, const tui_rect *b) {
    if (!a->w || !a->h || !b->w || !b->h) return 0;
    return a->x < b->x + b->w && b->x < a->x + a->w && a->y < b->y + b->h && b->y < a->y + a->h;
}

static int pick(uint64_t *rs, int n) { return (int)(tu_rand_u64(rs) % (uint64_t)n); }

/* A terminal size: degenerate, just below / at the minimum, typical, or huge. */
static void rand_term(uint64_t *rs, int *cols, int *rows) {
    static const int sizes[][2] = {{0, 0},     {1, 1},   {-5, 40},  {80, -1},   {79, 24},  {80, 23},
                                   {80, 24},   {81, 25}, {120, 40}, {200, 60},  {300, 100}, {10000, 10000},
                                   {10000, 24}, {80, 10000}, {INT_MIN, INT_MIN}, {2, 10000}};
    int i = pick(rs, (int)(sizeof sizes / sizeof sizes[0]) + 4);
    if (i < (int)(sizeof sizes / sizeof sizes[0])) {
        *cols = sizes[i][0], *rows = sizes[i][1];
    } else {
        *cols = 1 + pick(rs, 400), *rows = 1 + pick(rs, 200);
    }
}

/* The key codes cmd_tui's getch() can return, and some it should never see. */
static int rand_key(uint64_t *rs, int jump_active) {
    int r = pick(rs, 100);
    if (jump_active && r < 30) { /* the jump prompt's own keys */
        static const char js[] = "0123456789,,\n\r\b";
        return pick(rs, 4) == 0 ? KEY_BACKSPACE : js[pick(rs, (int)sizeof js - 1)];
    }
    if (r < 40) return tui_key_table[pick(rs, tui_key_count)].key;
    if (r < 55) return 32 + pick(rs, 95);                      /* printable ASCII */
    if (r < 63) return pick(rs, 2) ? pick(rs, 32) : 127;       /* control characters, DEL */
    if (r < 70) return KEY_F(pick(rs, 64));                    /* F-keys */
    if (r < 76) return KEY_MIN + pick(rs, KEY_MAX - KEY_MIN + 1);
    if (r < 82) return KEY_RESIZE;
    if (r < 92) return KEY_MOUSE;
    static const int odd[] = {INT_MAX, INT_MIN, -1, -2, 256, 0x10FFFF, 0x7fffff00, ERR, 0};
    if (r < 96) return odd[pick(rs, (int)(sizeof odd / sizeof odd[0]))];
    return (int)(uint32_t)tu_rand_u64(rs);
}

static void check_layout(const tui_layout *l, int cols, int rows, int nl, int nh, int sel_l, int sel_h) {
    assert_int_equal(l->cols, cols);
    assert_int_equal(l->rows, rows);
    assert_int_equal(l->too_small, cols < TUI_MIN_COLS || rows < TUI_MIN_ROWS);
    if (l->too_small) return;
    const tui_rect *panels[] = {&l->header, &l->footer, &l->map, &l->heads, &l->pattern, &l->compare};
    int np = (int)(sizeof panels / sizeof panels[0]);
    for (int i = 0; i < np; i++) {
        assert_true(rect_inside(panels[i], cols, rows));
        assert_true(panels[i]->w > 0 && panels[i]->h > 0);
        for (int j = i + 1; j < np; j++) assert_false(rects_overlap(panels[i], panels[j]));
    }
    /* the heatmap's cells lie inside its panel and hold at least one pixel */
    assert_true(l->map_px.x >= l->map.x && l->map_px.y >= l->map.y && l->map_px.w >= 1 && l->map_px.h >= 1);
    assert_true(l->map_px.x + l->map_px.w <= l->map.x + l->map.w);
    assert_true(l->map_px.y + l->map_px.h <= l->map.y + l->map.h);
    assert_int_equal(l->map_px_w, l->map_px.w);
    assert_int_equal(l->map_px_h, 2 * l->map_px.h);
    /* the overview's window holds the selection and its cells stay inside the panel */
    assert_true(l->vis_layers >= 1 && l->first_layer >= 0 && l->first_layer + l->vis_layers <= nl);
    assert_true(l->vis_heads >= 1 && l->first_head >= 0 && l->first_head + l->vis_heads <= nh);
    assert_true(sel_l >= l->first_layer && sel_l < l->first_layer + l->vis_layers);
    assert_true(sel_h >= l->first_head && sel_h < l->first_head + l->vis_heads);
    assert_true(l->vis_layers <= l->heads.h - 1);
    for (int h = l->first_head; h < l->first_head + l->vis_heads; h++) {
        int x = tui_layout_head_x(l, h);
        assert_true(x >= l->heads.x + l->heads_label_w);
        assert_true(x + l->cell_w <= l->heads.x + l->heads.w);
    }
    assert_true(tui_layout_pattern_rows(l) >= 1);
}

static void check_hit(const tui_layout *l, const tui_hit *h, int nl, int nh) {
    switch (h->kind) {
    case TUI_HIT_NONE: case TUI_HIT_HEADER: case TUI_HIT_COMPARE: break;
    case TUI_HIT_HEAD:
        assert_true(h->layer >= 0 && h->layer < nl && h->head >= 0 && h->head < nh);
        break;
    case TUI_HIT_MAP:
        assert_true(h->px >= 0 && h->px < l->map_px_w && h->py >= 0 && h->py < l->map_px_h);
        break;
    case TUI_HIT_PATTERN:
        assert_true(h->row >= 0 && h->row < l->pattern.h && h->rows >= 1);
        break;
    default: fail_msg("hit kind %d", (int)h->kind);
    }
}

static void check_state(const tui_state *s, const eng_pattern *cur) {
    eng_err err;
    assert_true(s->layer >= 0 && s->layer < s->n_layers);
    assert_true(s->head >= 0 && s->head < s->n_heads);
    assert_true((int)s->focus >= 0 && s->focus < TUI_FOCUS__COUNT);
    assert_true((int)s->metric >= 0 && s->metric < TUI_METRIC__COUNT);
    assert_true(s->teach_step >= 0 && s->teach_step < TUI_TEACH_STEPS);
    assert_true(s->px_w >= 1 && s->px_h >= 1);
    assert_true(s->fit_tpp >= 1 && s->tpp >= 1 && s->tpp <= s->fit_tpp);
    /* the whole prompt fits at the fit zoom */
    assert_true((long long)s->fit_tpp * (s->px_w < s->px_h ? s->px_w : s->px_h) >= s->n_tokens);
    int n = s->n_tokens;
    assert_true(s->cur_q >= 0 && s->cur_q < n && s->cur_k >= 0 && s->cur_k < n);
    assert_true(s->q0 >= 0 && s->q0 < n && s->k0 >= 0 && s->k0 < n);
    /* the cursor is inside the view */
    assert_true(s->cur_q >= s->q0 && (long long)s->cur_q < (long long)s->q0 + (long long)s->px_h * s->tpp);
    assert_true(s->cur_k >= s->k0 && (long long)s->cur_k < (long long)s->k0 + (long long)s->px_w * s->tpp);
    assert_true(s->field >= 0 && s->field < TUI_FIELDS_MAX);
    assert_true(memchr(s->jump_buf, 0, sizeof s->jump_buf) != NULL);
    assert_true(memchr(s->msg, 0, sizeof s->msg) != NULL);
    if (s->edit_valid) {
        assert_int_equal(eng_pattern_validate(&s->edit, &err), 0);
        assert_true(s->edit_layer >= 0 && s->edit_layer < s->n_layers);
        assert_true(s->edit_head >= 0 && s->edit_head < s->n_heads);
    }
    const eng_pattern *p = tui_state_pattern(s, cur);
    if (p) {
        char buf[64];
        for (int f = 0; f < tui_pattern_nfields(p->kind); f++) {
            tui_field_text(p, f, buf, (int)sizeof buf);
            assert_true(strlen(buf) > 0 && strcmp(buf, "?") != 0);
            assert_string_not_equal(tui_field_name(p->kind, f), "?");
        }
    }
    eng_view v = tui_state_view(s);
    assert_true(v.layer == s->layer && v.head == s->head && v.tpp == s->tpp && v.rows == s->px_h);
}

static void check_cmd(const tui_state *s, const tui_cmd *c) {
    eng_err err;
    if (!c->set_pattern) return;
    assert_true(c->layer >= 0 && c->layer < s->n_layers && c->head >= 0 && c->head < s->n_heads);
    assert_int_equal(eng_pattern_validate(&c->pat, &err), 0);
}

static void test_state_machine_fuzz(void **state) {
    (void)state;
    static const int shapes[][3] = {{1, 1, 1},   {2, 4, 2},     {6, 8, 2},    {32, 32, 8},  {80, 64, 8},
                                    {7, 12, 4},  {1, 1024, 1024}, {1024, 1, 1}, {1024, 1024, 1}, {3, 56, 8},
                                    {126, 128, 8}, {2, 40, 40}};
    static const int lengths[] = {1, 2, 3, 63, 64, 65, 1000, 4096, 32768, 131072, 1 << 24, 1 << 27};
    eng_pattern *slots = malloc(sizeof(eng_pattern) * N_SLOTS);
    assert_non_null(slots);
    uint64_t rs = 0x7ee5f00dULL;
    long steps = 0, clicks = 0, resizes = 0, edits = 0;
    while (steps < 100000) {
        const int *sh = shapes[pick(&rs, (int)(sizeof shapes / sizeof shapes[0]))];
        int nl = sh[0], nh = sh[1], nkv = sh[2];
        int n = lengths[pick(&rs, (int)(sizeof lengths / sizeof lengths[0]))];
        for (int i = 0; i < N_SLOTS; i++) {
            slots[i] = eng_pattern_make((eng_pat_kind)pick(&rs, ENG_PAT__COUNT));
            for (int k = pick(&rs, 4); k > 0; k--) tui_pattern_step(&slots[i], 1 + pick(&rs, 5), pick(&rs, 2) ? 1 : -1, n);
        }
        tui_state s;
        tui_state_init(&s, nl, nh, nkv, n);
        tui_layout l;
        tui_cmd cmd;
        int cols, rows;
        rand_term(&rs, &cols, &rows);
        int ready_at = pick(&rs, 50); /* steps before the "prefill" ends: cur is NULL until then */
        int valid = tui_layout_compute(cols, rows, nl, nh, nkv, s.layer, s.head, &l) == 0;
        assert_int_equal(valid, cols > 0 && rows > 0);
        if (valid && !l.too_small) tui_state_set_map_size(&s, l.map_px_w, l.map_px_h, &cmd);
        int episode = 200 + pick(&rs, 800);
        for (int e = 0; e < episode && !s.quit; e++, steps++) {
            const eng_pattern *cur = e >= ready_at ? &slots[((size_t)s.layer * nh + s.head) % N_SLOTS] : NULL;
            int key = rand_key(&rs, s.jump_active);
            memset(&cmd, 0, sizeof cmd);
            if (key == KEY_RESIZE) {
                rand_term(&rs, &cols, &rows);
                resizes++;
                valid = tui_layout_compute(cols, rows, nl, nh, nkv, s.layer, s.head, &l) == 0;
                assert_int_equal(valid, cols > 0 && rows > 0);
                if (valid && !l.too_small) tui_state_set_map_size(&s, l.map_px_w, l.map_px_h, &cmd);
            } else if (!valid || l.too_small) {
                if (tui_keys_lookup(key, TUI_CTX_ANY) == TUI_ACT_QUIT) s.quit = 1;
            } else if (key == KEY_MOUSE && !s.jump_active) {
                /* anywhere on screen, and off it */
                int x = pick(&rs, 8) ? pick(&rs, cols) : (int)(uint32_t)tu_rand_u64(&rs);
                int y = pick(&rs, 8) ? pick(&rs, rows) : -1 - pick(&rs, 1000);
                tui_hit hit = tui_layout_hit(&l, x, y);
                check_hit(&l, &hit, nl, nh);
                tui_state_click(&s, &hit, cur, &cmd);
                clicks++;
            } else {
                tui_state_key(&s, key, cur, &cmd);
            }
            check_cmd(&s, &cmd);
            if (cmd.set_pattern) { /* the worker applies the edit; the next snapshot has it */
                slots[((size_t)cmd.layer * nh + cmd.head) % N_SLOTS] = cmd.pat;
                edits++;
            }
            if (valid) {
                assert_int_equal(tui_layout_compute(cols, rows, nl, nh, nkv, s.layer, s.head, &l), 0);
                check_layout(&l, cols, rows, nl, nh, s.layer, s.head);
            }
            check_state(&s, e >= ready_at ? &slots[((size_t)s.layer * nh + s.head) % N_SLOTS] : NULL);
        }
    }
    /* every kind of input was exercised */
    assert_true(clicks > 1000 && resizes > 1000 && edits > 100);
    free(slots);
}

/* Layout over every small terminal size and extreme model shapes, plus hit-testing of every cell. */
static void test_layout_sweep(void **state) {
    (void)state;
    static const int shapes[][3] = {{1, 1, 1}, {2, 4, 2}, {80, 64, 8}, {1024, 1024, 1}, {1, 1024, 1024}};
    tui_layout l;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int nl = shapes[si][0], nh = shapes[si][1], nkv = shapes[si][2];
        for (int cols = 0; cols <= 130; cols += 1 + (cols > 82) * 7) {
            for (int rows = 0; rows <= 60; rows += 1 + (rows > 26) * 5) {
                int sel_l = (cols * 7 + rows) % nl, sel_h = (cols + rows * 3) % nh;
                int rc = tui_layout_compute(cols, rows, nl, nh, nkv, sel_l, sel_h, &l);
                if (cols <= 0 || rows <= 0) {
                    assert_int_equal(rc, -1);
                    continue;
                }
                assert_int_equal(rc, 0);
                check_layout(&l, cols, rows, nl, nh, sel_l, sel_h);
                for (int y = -1; y <= rows; y++)
                    for (int x = -1; x <= cols; x++) {
                        tui_hit h = tui_layout_hit(&l, x, y);
                        check_hit(&l, &h, nl, nh);
                        if (x < 0 || y < 0 || x >= cols || y >= rows) assert_int_equal(h.kind, TUI_HIT_NONE);
                    }
            }
        }
    }
    /* invalid shapes are refused, never laid out */
    assert_int_equal(tui_layout_compute(80, 24, 0, 8, 2, 0, 0, &l), -1);
    assert_int_equal(tui_layout_compute(80, 24, 6, 0, 1, 0, 0, &l), -1);
    assert_int_equal(tui_layout_compute(80, 24, 6, 8, 0, 0, 0, &l), -1);
    assert_int_equal(tui_layout_compute(80, 24, 6, 8, 3, 0, 0, &l), -1);
    assert_int_equal(tui_layout_compute(80, 24, -6, 8, 2, 0, 0, &l), -1);
}

/* The pure helpers with out-of-range arguments: no crash, results in range. */
static void test_helpers_odd_args(void **state) {
    (void)state;
    uint64_t rs = 99;
    char lines[8][96];
    for (int max = 0; max <= 8; max++) {
        int n = tui_keys_help(lines, max);
        assert_true(n >= 0 && n <= max);
        for (int i = 0; i < n; i++) assert_true(memchr(lines[i], 0, 96) != NULL);
    }
    static const int odd[] = {INT_MIN, -1000, -1, 0, 1, 2, 3, 12, 1000, INT_MAX};
    for (size_t a = 0; a < sizeof odd / sizeof odd[0]; a++)
        for (size_t b = 0; b < sizeof odd / sizeof odd[0]; b++)
            for (size_t c = 0; c < sizeof odd / sizeof odd[0]; c++) {
                int f = tui_pattern_first_field(odd[a], odd[b], odd[c]);
                assert_true(f >= 0);
                if (odd[b] > 0 && odd[a] >= 0 && odd[a] < odd[b]) {
                    int rows = odd[c] < 1 ? 1 : odd[c];
                    assert_true(odd[a] >= f && odd[a] < f + rows); /* the field is visible */
                }
            }
    for (int k = -3; k < ENG_PAT__COUNT + 3; k++) assert_non_null(tui_field_name((eng_pat_kind)k, k));
    assert_string_equal(tui_metric_name((tui_metric)-1), "?");
    assert_string_equal(tui_teach_step_name(INT_MAX), "?");
    for (int i = 0; i < 20000; i++) { /* cycling and stepping keep every pattern valid, any n */
        static const int ns[] = {1, 2, 64, 100, 4096, 1 << 20, 1 << 27, INT_MAX / 2};
        int n = ns[pick(&rs, (int)(sizeof ns / sizeof ns[0]))];
        eng_pattern p = eng_pattern_make((eng_pat_kind)pick(&rs, ENG_PAT__COUNT));
        for (int k = 0; k < 20; k++) {
            if (pick(&rs, 4) == 0) tui_pattern_cycle(&p, n);
            else tui_pattern_step(&p, pick(&rs, TUI_FIELDS_MAX + 2) - 1, pick(&rs, 2) ? 1 : -1, n);
            eng_err err;
            assert_int_equal(eng_pattern_validate(&p, &err), 0);
            char buf[4];
            tui_field_text(&p, pick(&rs, TUI_FIELDS_MAX), buf, (int)sizeof buf); /* truncates safely */
            assert_true(strlen(buf) < sizeof buf);
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_machine_fuzz),
        cmocka_unit_test(test_layout_sweep),
        cmocka_unit_test(test_helpers_odd_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
