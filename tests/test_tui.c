/* test_tui: the explorer without a terminal: layout geometry and hit-testing, the key table (dispatch
 * and help), the state machine, the heatmap put on a virtual curses screen exactly as viz_term
 * renders it, the PNG export, cancelling a prefill, and the engine session + worker behind it on
 * the tiny test model. */
#include "test_util.h"

#include <curses.h>
#include <locale.h>
#include <png.h>
#include <time.h>
#include <unistd.h>

#include "eng_backend.h"
#include "eng_index.h"
#include "eng_model.h"
#include "eng_patcfg.h"
#include "eng_session.h"
#include "tui_draw.h"
#include "tui_export.h"
#include "tui_keys.h"
#include "tui_layout.h"
#include "tui_state.h"
#include "tui_worker.h"
#include "viz_term.h"

static int rect_inside(const tui_rect *r, int cols, int rows) {
    return r->x >= 0 && r->y >= 0 && r->x + r->w <= cols && r->y + r->h <= rows;
}
static int rects_overlap(const tui_rect *a, const tui_rect *b) {
    return a->x < b->x + b->w && b->x < a->x + a->w && a->y < b->y + b->h && b->y < a->y + a->h;
}

static void test_layout_sizes(void **state) {
    (void)state;
    tui_layout l;
    assert_int_equal(tui_layout_compute(79, 24, 6, 8, 2, 0, 0, &l), 0);
    assert_true(l.too_small);
    assert_int_equal(tui_layout_compute(80, 23, 6, 8, 2, 0, 0, &l), 0);
    assert_true(l.too_small);
    assert_int_equal(tui_layout_compute(80, 24, 6, 7, 2, 0, 0, &l), -1); /* heads not a multiple of kv */
    static const int sizes[][2] = {{80, 24}, {100, 32}, {120, 40}, {250, 70}};
    static const int shapes[][3] = {{6, 8, 2}, {2, 4, 2}, {32, 32, 8}, {28, 28, 4}, {1, 1, 1}};
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 5; j++) {
            int c = sizes[i][0], r = sizes[i][1];
            int L = shapes[j][0], H = shapes[j][1], K = shapes[j][2];
            assert_int_equal(tui_layout_compute(c, r, L, H, K, L - 1, H - 1, &l), 0);
            assert_false(l.too_small);
            const tui_rect *all[] = {&l.header, &l.footer, &l.map, &l.heads, &l.pattern, &l.compare};
            for (int a = 0; a < 6; a++) {
                assert_true(rect_inside(all[a], c, r));
                for (int b = a + 1; b < 6; b++) assert_false(rects_overlap(all[a], all[b]));
            }
            assert_true(l.pattern.h >= 6 && l.compare.h >= 11 && l.map.w >= 40);
            assert_int_equal(l.map_px_h, 2 * l.map_px.h);
            assert_int_equal(l.map_px_w, l.map_px.w);
            /* the selection is visible in the overview, and its cell is inside the panel */
            assert_true(L - 1 >= l.first_layer && L - 1 < l.first_layer + l.vis_layers);
            assert_true(H - 1 >= l.first_head && H - 1 < l.first_head + l.vis_heads);
            int hx = tui_layout_head_x(&l, H - 1);
            assert_true(hx + l.cell_w <= l.heads.x + l.heads.w);
            /* every visible head's cell hit-tests back to the same (layer, head) */
            for (int h = l.first_head; h < l.first_head + l.vis_heads; h++) {
                tui_hit hit = tui_layout_hit(&l, tui_layout_head_x(&l, h), l.heads.y + 1);
                assert_int_equal(hit.kind, TUI_HIT_HEAD);
                assert_int_equal(hit.head, h);
                assert_int_equal(hit.layer, l.first_layer);
            }
        }
    /* map hit: pixel coordinates, two pixel rows per cell row */
    tui_layout_compute(100, 32, 6, 8, 2, 0, 0, &l);
    tui_hit hit = tui_layout_hit(&l, l.map_px.x + 5, l.map_px.y + 3);
    assert_int_equal(hit.kind, TUI_HIT_MAP);
    assert_int_equal(hit.px, 5);
    assert_int_equal(hit.py, 6);
    assert_int_equal(tui_layout_hit(&l, 0, 0).kind, TUI_HIT_HEADER);
    /* GQA groups: 8 heads over 2 KV heads leave a gap column between heads 3 and 4 */
    assert_int_equal(l.group_size, 4);
    assert_int_equal(tui_layout_head_x(&l, 4) - tui_layout_head_x(&l, 3), l.cell_w + 1);
    assert_int_equal(tui_layout_head_x(&l, 3) - tui_layout_head_x(&l, 2), l.cell_w);
}

static void test_keys_table(void **state) {
    (void)state;
    assert_int_equal(tui_keys_lookup(KEY_UP, TUI_CTX_HEADS), TUI_ACT_SEL_UP);
    assert_int_equal(tui_keys_lookup('k', TUI_CTX_MAP), TUI_ACT_CUR_UP);
    assert_int_equal(tui_keys_lookup(KEY_UP, TUI_CTX_PATTERN), TUI_ACT_FIELD_UP);
    assert_int_equal(tui_keys_lookup(KEY_RIGHT, TUI_CTX_TEACH), TUI_ACT_STEP_NEXT);
    assert_int_equal(tui_keys_lookup('+', TUI_CTX_MAP), TUI_ACT_ZOOM_IN);
    assert_int_equal(tui_keys_lookup('+', TUI_CTX_PATTERN), TUI_ACT_VAL_INC);
    unsigned ctxs[] = {TUI_CTX_HEADS, TUI_CTX_MAP, TUI_CTX_PATTERN, TUI_CTX_TEACH};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(tui_keys_lookup('q', ctxs[i]), TUI_ACT_QUIT);
        assert_int_equal(tui_keys_lookup(KEY_F(10), ctxs[i]), TUI_ACT_QUIT);
        assert_int_equal(tui_keys_lookup('?', ctxs[i]), TUI_ACT_HELP);
        assert_int_equal(tui_keys_lookup(KEY_F(1), ctxs[i]), TUI_ACT_HELP);
        assert_int_equal(tui_keys_lookup('\t', ctxs[i]), TUI_ACT_FOCUS_NEXT);
        assert_int_equal(tui_keys_lookup('p', ctxs[i]), TUI_ACT_CYCLE_PATTERN);
        assert_int_equal(tui_keys_lookup('e', ctxs[i]), TUI_ACT_EXPORT);
        assert_int_equal(tui_keys_lookup('s', ctxs[i]), TUI_ACT_SAVE);
        assert_int_equal(tui_keys_lookup('/', ctxs[i]), TUI_ACT_JUMP);
    }
    assert_int_equal(tui_keys_lookup('Z', TUI_CTX_MAP), TUI_ACT_NONE);
    /* the help is made from the table: every row's key name and description appear in it */
    char lines[96][96];
    int n = tui_keys_help(lines, 96);
    assert_true(n > 20);
    for (int i = 0; i < tui_key_count; i++) {
        int found = 0;
        for (int j = 0; j < n && !found; j++)
            found = strstr(lines[j], tui_key_table[i].help) && strstr(lines[j], tui_key_table[i].name);
        if (!found) fail_msg("key '%s' (%s) missing from the help", tui_key_table[i].name, tui_key_table[i].help);
    }
}

static void test_state_navigation(void **state) {
    (void)state;
    tui_state s;
    tui_cmd c;
    tui_state_init(&s, 6, 8, 2, 4096);
    tui_state_set_map_size(&s, 64, 64, &c);
    assert_int_equal(s.fit_tpp, 64);
    assert_int_equal(s.tpp, 64);
    assert_int_equal(tui_state_context(&s), TUI_CTX_HEADS);
    tui_state_key(&s, KEY_RIGHT, NULL, &c);
    assert_int_equal(s.head, 1);
    assert_true(c.view_changed);
    tui_state_key(&s, 'j', NULL, &c);
    assert_int_equal(s.layer, 1);
    tui_state_key(&s, KEY_UP, NULL, &c);
    tui_state_key(&s, KEY_UP, NULL, &c); /* clamped at layer 0: no change, no command */
    assert_int_equal(s.layer, 0);
    assert_false(c.view_changed);
    /* heatmap: zoom in to one token per pixel around the cursor, which stays visible */
    tui_state_key(&s, '\t', NULL, &c);
    assert_int_equal(tui_state_context(&s), TUI_CTX_MAP);
    for (int i = 0; i < 10; i++) tui_state_key(&s, '+', NULL, &c);
    assert_int_equal(s.tpp, 1);
    assert_true(s.cur_q >= s.q0 && s.cur_q < s.q0 + s.px_h);
    assert_true(s.cur_k >= s.k0 && s.cur_k < s.k0 + s.px_w);
    int q = s.cur_q;
    tui_state_key(&s, KEY_UP, NULL, &c);
    assert_int_equal(s.cur_q, q - 1);
    for (int i = 0; i < 200; i++) tui_state_key(&s, 'l', NULL, &c);
    assert_int_equal(s.cur_k, 200);
    assert_true(s.cur_k < s.k0 + s.px_w && s.k0 > 0);
    eng_view v = tui_state_view(&s);
    assert_int_equal(v.tpp, 1);
    assert_int_equal(v.rows, 64);
    assert_int_equal(v.cur_k, 200);
    tui_state_key(&s, '0', NULL, &c);
    assert_int_equal(s.tpp, 64);
    assert_int_equal(s.q0, 0);
    /* jump: Q,K and a bad one */
    tui_state_key(&s, '/', NULL, &c);
    assert_true(s.jump_active);
    const char *typed = "1234,56\n";
    for (const char *p = typed; *p; p++) tui_state_key(&s, *p, NULL, &c);
    assert_false(s.jump_active);
    assert_int_equal(s.cur_q, 1234);
    assert_int_equal(s.cur_k, 56);
    assert_true(c.view_changed);
    tui_state_key(&s, '/', NULL, &c);
    for (const char *p = "99999\n"; *p; p++) tui_state_key(&s, *p, NULL, &c);
    assert_int_equal(s.cur_q, 1234);
    assert_non_null(strstr(s.msg, "not a token position"));
    /* help: any key closes it; q in help quits */
    tui_state_key(&s, KEY_F(1), NULL, &c);
    assert_true(s.help);
    tui_state_key(&s, 'x', NULL, &c);
    assert_false(s.help);
    /* resize keeps the cursor inside the view */
    tui_state_key(&s, '+', NULL, &c);
    tui_state_set_map_size(&s, 30, 20, &c);
    assert_true(c.view_changed);
    assert_true(s.cur_q >= s.q0 && s.cur_q < s.q0 + s.px_h * s.tpp);
    tui_state_key(&s, KEY_F(10), NULL, &c);
    assert_true(s.quit);
}

static void test_state_pattern_and_clicks(void **state) {
    (void)state;
    tui_state s;
    tui_cmd c;
    tui_state_init(&s, 6, 8, 2, 4096);
    tui_state_set_map_size(&s, 64, 64, &c);
    eng_pattern vs = eng_pattern_make(ENG_PAT_VS);
    vs.vertical = 100;
    vs.slash = 500;
    /* refused before the prefill: no snapshot pattern yet */
    tui_state_key(&s, 'p', NULL, &c);
    assert_false(c.set_pattern);
    assert_non_null(strstr(s.msg, "prefill"));
    /* pattern panel: field down to "vertical", increase: one command with the new value */
    tui_state_key(&s, '\t', &vs, &c);
    tui_state_key(&s, '\t', &vs, &c);
    assert_int_equal(tui_state_context(&s), TUI_CTX_PATTERN);
    tui_state_key(&s, KEY_DOWN, &vs, &c);
    tui_state_key(&s, KEY_RIGHT, &vs, &c);
    assert_true(c.set_pattern);
    assert_int_equal(c.layer, 0);
    assert_int_equal(c.head, 0);
    assert_int_equal(c.pat.kind, ENG_PAT_VS);
    assert_int_equal(c.pat.vertical, 125);
    assert_int_equal(c.pat.slash, 500);
    /* a second press before the worker answers builds on the pending edit */
    tui_state_key(&s, '+', &vs, &c);
    assert_int_equal(c.pat.vertical, 156);
    assert_int_equal(tui_state_pattern(&s, &vs)->vertical, 156);
    tui_state_key(&s, KEY_DOWN, &vs, &c);
    tui_state_key(&s, '-', &vs, &c);
    assert_int_equal(c.pat.slash, 400);
    /* lower limit: vertical stops at 30 and then sends nothing */
    eng_pattern low = vs;
    low.vertical = 30;
    tui_state_key(&s, KEY_UP, &low, &c);
    s.edit_valid = 0;
    tui_state_key(&s, KEY_LEFT, &low, &c);
    assert_false(c.set_pattern);
    /* cycling: vs -> bs with a default top-k */
    tui_state_key(&s, 'p', &vs, &c);
    assert_true(c.set_pattern);
    assert_int_equal(c.pat.kind, ENG_PAT_BS);
    assert_true(c.pat.topk >= 1);
    /* selecting another head drops the pending edit */
    tui_hit hit = {.kind = TUI_HIT_HEAD, .layer = 3, .head = 5};
    tui_state_click(&s, &hit, &vs, &c);
    assert_int_equal(s.layer, 3);
    assert_int_equal(s.head, 5);
    assert_int_equal(s.focus, TUI_FOCUS_HEADS);
    assert_ptr_equal(tui_state_pattern(&s, &vs), &vs);
    /* a click on the heatmap moves the cursor to that pixel's first token */
    tui_hit mh = {.kind = TUI_HIT_MAP, .px = 10, .py = 20};
    tui_state_click(&s, &mh, &vs, &c);
    assert_int_equal(s.focus, TUI_FOCUS_MAP);
    assert_int_equal(s.cur_k, 10 * s.tpp);
    assert_int_equal(s.cur_q, 20 * s.tpp);
    assert_true(c.view_changed);
    /* teach toggles, steps stay in range, Esc leaves */
    tui_state_key(&s, 't', &vs, &c);
    assert_true(s.teach);
    assert_int_equal(tui_state_context(&s), TUI_CTX_TEACH);
    for (int i = 0; i < 9; i++) tui_state_key(&s, KEY_RIGHT, &vs, &c);
    assert_int_equal(s.teach_step, TUI_TEACH_STEPS - 1);
    tui_state_key(&s, 27, &vs, &c);
    assert_false(s.teach);
    /* e2e, export, save become commands */
    tui_state_key(&s, 'r', &vs, &c);
    assert_true(c.run_e2e);
    tui_state_key(&s, 'e', &vs, &c);
    assert_true(c.export_png);
    tui_state_key(&s, 's', &vs, &c);
    assert_true(c.save);
}

/* ---- the engine session and worker on the tiny test model ---- */

static const char *tiny_model(void) {
    static const char *m = "tests/fixtures/tiny-llama";
    return access("tests/fixtures/tiny-llama/config.json", R_OK) == 0 ? m : NULL;
}

static int write_prompt(char *path, size_t cap, int bytes) {
    snprintf(path, cap, "/tmp/attnscope-tui-prompt-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    uint64_t seed = 42;
    for (int i = 0; i < bytes; i++) {
        char ch = (char)('a' + tu_rand_u64(&seed) % 26);
        if (i % 7 == 6) ch = ' ';
        if (write(fd, &ch, 1) != 1) return -1;
    }
    close(fd);
    return 0;
}

static void test_session(void **state) {
    (void)state;
    if (!tiny_model()) skip();
    char prompt[64];
    assert_int_equal(write_prompt(prompt, sizeof prompt, 299), 0);
    eng_session_opts o = {.model_dir = tiny_model(), .prompt_path = prompt, .backend = "cpu"};
    eng_session *s = NULL;
    eng_err err;
    if (eng_session_open(&s, &o, &err)) fail_msg("%s", err.msg);
    const int n = eng_session_n_tokens(s), H = eng_session_n_heads(s);
    assert_int_equal(n, 300); /* BOS + 299 bytes */
    eng_snapshot *snap = NULL;
    assert_int_equal(eng_session_snapshot(s, NULL, &snap, &err), 0);
    assert_false(snap->ready);
    eng_snapshot_free(snap);
    if (eng_session_prefill(s, NULL, NULL, &err)) fail_msg("%s", err.msg);

    /* one token per pixel over [0, 40) x [0, 40): each pixel is that (q, k)'s probability, the cursor
     * reads the same value, above the diagonal is NaN */
    eng_view v = {.layer = 1, .head = 3, .q0 = 0, .k0 = 0, .tpp = 1, .rows = 40, .cols = 40, .cur_q = 17, .cur_k = 5};
    if (eng_session_snapshot(s, &v, &snap, &err)) fail_msg("%s", err.msg);
    assert_true(snap->ready && snap->map_valid);
    assert_true(isnan(snap->prob[3 * 40 + 10]));
    assert_true(isnan(snap->cover[3 * 40 + 10]));
    float p = snap->prob[17 * 40 + 5];
    assert_true(fabsf(p - snap->cur_prob) <= 1e-5f * fmaxf(1, p));
    double rowsum = 0;
    for (int k = 0; k <= 17; k++) rowsum += snap->prob[17 * 40 + k];
    assert_true(fabs(rowsum - 1) < 1e-3); /* a full causal row sums to one */
    assert_int_equal(snap->cur_computed == 0 || snap->cur_computed == 1, 1);
    assert_true(strlen(snap->k_text) > 0);
    assert_true(strlen(snap->q_text) > 0);
    float d0 = snap->heads[1 * H + 3].density;
    assert_true(d0 > 0 && d0 <= 1);
    assert_true(snap->layers[1].valid && snap->layers[1].dense_s > 0 && snap->layers[1].sparse_s > 0);
    eng_snapshot_free(snap);

    /* a tighter A-shape on (1, 3): its density drops, only that layer's numbers move */
    eng_snapshot *before = NULL;
    assert_int_equal(eng_session_snapshot(s, NULL, &before, &err), 0);
    eng_pattern a = eng_pattern_make(ENG_PAT_ASHAPE);
    a.n_init = 4;
    a.n_local = 16;
    if (eng_session_set_pattern(s, 1, 3, &a, &err)) fail_msg("%s", err.msg);
    assert_int_equal(eng_session_snapshot(s, NULL, &snap, &err), 0);
    assert_int_equal(snap->heads[1 * H + 3].pat.kind, ENG_PAT_ASHAPE);
    assert_true(snap->heads[1 * H + 3].density < d0);
    assert_true(snap->heads[1 * H + 3].recall < 1);
    assert_true(snap->heads[1 * H + 3].error > 0);
    for (int h = 0; h < H; h++) assert_true(snap->heads[h].density == before->heads[h].density);
    eng_snapshot_free(snap);
    eng_snapshot_free(before);
    /* an invalid pattern is refused and changes nothing */
    eng_pattern bad = a;
    bad.n_local = -5;
    assert_int_equal(eng_session_set_pattern(s, 1, 3, &bad, &err), -1);
    assert_int_equal(eng_session_set_pattern(s, 9, 0, &a, &err), -1);
    assert_non_null(strstr(err.msg, "no head"));

    /* teach data for a VS head agrees with the index eng_pattern_build made: every chosen vertical
     * left of the last row block and every chosen slash is computed for the last query */
    v.layer = 0;
    v.head = 2;
    v.teach = 1;
    v.rows = v.cols = 60;
    v.tpp = 5;
    if (eng_session_snapshot(s, &v, &snap, &err)) fail_msg("%s", err.msg);
    const eng_teach *t = &snap->teach;
    assert_true(t->valid);
    assert_int_equal(t->n_est, 60 < 64 ? 60 : 64);
    assert_int_equal(t->n_vert, t->k_v);
    assert_int_equal(t->n_slash, t->k_s);
    for (int i = 0; i < 30; i++) assert_int_equal(t->vert[i], i); /* sinks forced */
    assert_true(t->n_rb == (n + 63) / 64 && t->n_ranges > 0);
    eng_snapshot_free(snap);
    /* a second session view of the same head at one token per pixel: coverage of the last query's
     * row at the chosen lines */
    eng_view lv = {.layer = 0, .head = 2, .q0 = n - 1, .k0 = 0, .tpp = 1, .rows = 1, .cols = n,
                   .cur_q = n - 1, .teach = 1};
    if (eng_session_snapshot(s, &lv, &snap, &err)) fail_msg("%s", err.msg);
    t = &snap->teach;
    int m0 = (n - 1) / 64 * 64;
    for (int i = 0; i < t->n_vert; i++)
        if (t->vert[i] < m0) assert_true(snap->cover[t->vert[i]] == 1.0f);
    for (int i = 0; i < t->n_slash; i++) assert_true(snap->cover[n - 1 - t->slash[i]] == 1.0f);
    eng_snapshot_free(snap);

    /* end to end, save (both formats re-load to the same assignment), export */
    if (eng_session_run_e2e(s, NULL, NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(eng_session_snapshot(s, NULL, &snap, &err), 0);
    assert_true(snap->e2e.valid && snap->e2e.kl >= 0 && snap->e2e.top1 > 0 && snap->e2e.top1 <= 1);
    assert_true(snap->e2e.ppl_dense > 1 && snap->e2e.ppl_sparse > 1);
    eng_snapshot_free(snap);
    char dir[] = "/tmp/attnscope-tui-test-XXXXXX", mi[96], nat[96], png[96];
    assert_non_null(mkdtemp(dir));
    snprintf(mi, sizeof mi, "%s/p.minference.json", dir);
    snprintf(nat, sizeof nat, "%s/p.json", dir);
    snprintf(png, sizeof png, "%s/v.png", dir);
    if (eng_session_save_patterns(s, mi, nat, &err)) fail_msg("%s", err.msg);
    eng_patcfg pa, pb;
    if (eng_patcfg_load(&pa, nat, &err)) fail_msg("%s", err.msg);
    if (eng_patcfg_load(&pb, mi, &err)) fail_msg("%s", err.msg);
    const eng_pattern *g = eng_pattern_cfg_get(&pa.cfg, 1, 3);
    assert_int_equal(g->kind, ENG_PAT_ASHAPE);
    assert_int_equal(g->n_init, 4);
    assert_int_equal(g->n_local, 16);
    g = eng_pattern_cfg_get(&pb.cfg, 1, 3);
    assert_int_equal(g->kind, ENG_PAT_ASHAPE);
    assert_int_equal(g->n_local, 16);
    assert_int_equal(eng_pattern_cfg_get(&pb.cfg, 0, 2)->kind, ENG_PAT_VS);
    eng_patcfg_free(&pa);
    eng_patcfg_free(&pb);
    /* export: the screen region [0, 200) x [0, 200) at 2 tokens per pixel becomes one token per
     * pixel, enlarged twice to 400 x 400; the snapshot carries every label, and the lines for a VS
     * head */
    eng_view sv = {.layer = 0, .head = 2, .tpp = 2, .rows = 100, .cols = 100, .cur_q = 150};
    eng_view ev = tui_export_view(&sv, n, 1);
    assert_int_equal(ev.tpp, 1);
    assert_int_equal(ev.rows, 200);
    assert_int_equal(ev.cols, 200);
    assert_true(ev.lines && ev.labels && !ev.teach);
    if (eng_session_snapshot(s, &ev, &snap, &err)) fail_msg("%s", err.msg);
    assert_non_null(snap->labels);
    for (int t = 0; t < n; t++) assert_non_null(snap->labels[t]);
    assert_string_equal(snap->labels[150], snap->q_text); /* the cursor's query token, cur_q = 150 */
    assert_true(snap->n_vert >= 30 && snap->n_slash >= 50); /* VS budgets are clamped up to these */
    for (int i = 0; i < 30; i++) assert_int_equal(snap->vert[i], i);
    int pw = 0, ph = 0;
    if (tui_export_png(snap, 1, "attnscope test", png, &pw, &ph, &err)) fail_msg("%s", err.msg);
    assert_true(pw > 400 && ph > 400); /* the 400 x 400 map plus title, axes and colour bar */
    FILE *pf = fopen(png, "rb");
    assert_non_null(pf);
    png_structp pr = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop pi = png_create_info_struct(pr);
    if (setjmp(png_jmpbuf(pr))) fail_msg("libpng could not decode %s", png);
    png_init_io(pr, pf);
    png_read_info(pr, pi);
    assert_int_equal((int)png_get_image_width(pr, pi), pw);
    assert_int_equal((int)png_get_image_height(pr, pi), ph);
    png_textp text = NULL;
    int nt = png_get_text(pr, pi, &text, NULL), has_cmd = 0;
    for (int i = 0; i < nt; i++) has_cmd |= !strcmp(text[i].key, "Command") && !strcmp(text[i].text, "attnscope test");
    assert_true(has_cmd);
    png_destroy_read_struct(&pr, &pi, NULL);
    fclose(pf);
    assert_int_equal(tui_export_png(snap, 1, NULL, "/nonexistent-dir/x.png", NULL, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent-dir"));
    eng_snapshot_free(snap);
    /* a large region is pooled to at most TUI_EXPORT_MAX_SIDE pixels a side */
    eng_view big = {.tpp = 64, .rows = 1000, .cols = 1000};
    eng_view eb = tui_export_view(&big, 5000, 0);
    assert_true(eb.rows <= TUI_EXPORT_MAX_SIDE && eb.cols <= TUI_EXPORT_MAX_SIDE && eb.rows * eb.tpp >= 5000);
    assert_false(eb.lines);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    eng_session_free(s);
    unlink(prompt);
}

static void test_session_bad_input(void **state) {
    (void)state;
    if (!tiny_model()) skip();
    eng_session *s = NULL;
    eng_err err;
    eng_session_opts o = {.model_dir = tiny_model(), .prompt_path = "/nonexistent/prompt.txt"};
    assert_int_equal(eng_session_open(&s, &o, &err), -1);
    assert_null(s);
    assert_non_null(strstr(err.msg, "/nonexistent/prompt.txt"));
    char prompt[64];
    assert_int_equal(write_prompt(prompt, sizeof prompt, 0), 0);
    o.prompt_path = prompt;
    assert_int_equal(eng_session_open(&s, &o, &err), -1);
    assert_non_null(strstr(err.msg, "at least 2"));
    unlink(prompt);
    assert_int_equal(write_prompt(prompt, sizeof prompt, 50), 0);
    o.patterns_path = "/nonexistent/cfg.json";
    assert_int_equal(eng_session_open(&s, &o, &err), -1);
    unlink(prompt);
}

static void test_worker(void **state) {
    (void)state;
    if (!tiny_model()) skip();
    char prompt[64];
    assert_int_equal(write_prompt(prompt, sizeof prompt, 199), 0);
    eng_session_opts o = {.model_dir = tiny_model(), .prompt_path = prompt, .backend = "cpu"};
    eng_session *s = NULL;
    eng_err err;
    if (eng_session_open(&s, &o, &err)) fail_msg("%s", err.msg);
    tui_worker *w = NULL;
    if (tui_worker_start(&w, s, "/tmp", "test", &err)) fail_msg("%s", err.msg);
    eng_view v = {.layer = 0, .head = 1, .tpp = 4, .rows = 50, .cols = 50, .cur_q = 10};
    tui_worker_view(w, &v);
    eng_pattern bs = eng_pattern_make(ENG_PAT_BS);
    bs.topk = 1;
    tui_worker_set_pattern(w, 0, 1, &bs); /* queued behind the prefill */
    /* poll like the UI: newest snapshot until it shows the edit (30 s at most) */
    eng_snapshot *snap = NULL;
    int ok = 0;
    for (int i = 0; i < 3000 && !ok; i++) {
        eng_snapshot *ns = tui_worker_take(w);
        if (ns) {
            eng_snapshot_free(snap);
            snap = ns;
        }
        ok = snap && snap->ready && snap->map_valid && snap->heads[1].pat.kind == ENG_PAT_BS;
        if (!ok) usleep(10000);
    }
    assert_true(ok);
    tui_status st;
    tui_worker_status(w, &st);
    assert_true(st.ready);
    assert_non_null(strstr(st.msg, "L0 H1"));
    assert_int_equal(snap->view.head, 1);
    eng_snapshot_free(snap);
    assert_int_equal(tui_worker_stop(w, 10000), 0);
    unlink(prompt);
}

/* ---- cancelling a prefill ---- */

typedef struct {
    volatile int *flag;
    int at;    /* set the flag when the prefill reports this layer (-1: never) */
    int calls; /* layers reported */
} cancel_ctx;

static void cancel_progress(void *ctx, int layer, int n_layers) {
    cancel_ctx *c = ctx;
    (void)n_layers;
    c->calls++;
    if (layer == c->at) *c->flag = 1;
}

static void test_prefill_cancel(void **state) {
    (void)state;
    if (!tiny_model()) skip();
    eng_err err;
    eng_model *m = NULL;
    if (eng_model_load(&m, tiny_model(), &err)) fail_msg("%s", err.msg);
    eng_backend *be = eng_backend_cpu_create(&err);
    assert_non_null(be);
    const int L = m->cfg.n_layers;
    assert_true(L >= 2);
    int tokens[96];
    for (int i = 0; i < 96; i++) tokens[i] = (i * 7 + 3) % m->cfg.vocab_size;
    volatile int flag = 0;
    cancel_ctx c = {&flag, 0, 0};
    eng_prefill_opts po = {.keep_qkv = 1, .keep_lse = 1, .progress = cancel_progress, .progress_ctx = &c,
                           .cancel = &flag};
    eng_prefill_out out;
    /* the flag goes up during layer 0: the check before layer 1 stops the prefill */
    assert_int_equal(be->prefill(be, m, tokens, 96, &po, &out, &err), -1);
    assert_string_equal(err.msg, "cancelled");
    assert_int_equal(c.calls, 1);
    assert_null(out.q);
    assert_null(out.last_logits);
    /* flag down: the same prefill runs every layer */
    flag = 0;
    c.at = -1;
    c.calls = 0;
    if (be->prefill(be, m, tokens, 96, &po, &out, &err)) fail_msg("%s", err.msg);
    assert_int_equal(c.calls, L);
    assert_non_null(out.q);
    eng_prefill_out_free(&out);
    be->destroy(be);
    eng_model_free(m);

    /* the session: a cancelled analysis leaves it not ready and usable; e2e is cancelled too */
    char prompt[64];
    assert_int_equal(write_prompt(prompt, sizeof prompt, 150), 0);
    eng_session_opts o = {.model_dir = tiny_model(), .prompt_path = prompt, .backend = "cpu"};
    eng_session *s = NULL;
    if (eng_session_open(&s, &o, &err)) fail_msg("%s", err.msg);
    eng_session_set_cancel(s, &flag);
    flag = 1;
    assert_int_equal(eng_session_prefill(s, NULL, NULL, &err), -1);
    assert_string_equal(err.msg, "cancelled");
    eng_snapshot *snap = NULL;
    assert_int_equal(eng_session_snapshot(s, NULL, &snap, &err), 0);
    assert_false(snap->ready);
    eng_snapshot_free(snap);
    flag = 0;
    if (eng_session_prefill(s, NULL, NULL, &err)) fail_msg("%s", err.msg);
    flag = 1;
    assert_int_equal(eng_session_run_e2e(s, NULL, NULL, &err), -1);
    assert_string_equal(err.msg, "cancelled");
    assert_int_equal(eng_session_snapshot(s, NULL, &snap, &err), 0);
    assert_true(snap->ready && !snap->e2e.valid);
    eng_snapshot_free(snap);
    eng_session_free(s);
    unlink(prompt);
}

/* The worker stops a long analysis prefill by cancelling it: on the sample model's full context
 * (seconds of CPU work), a stop asked right after the first layer ends the prefill as cancelled,
 * the session never becomes ready, and a second stop joins the thread and frees everything. */
static void test_worker_stop_cancels(void **state) {
    (void)state;
    const char *model = "samples/models/byte-llama-11m", *prompt = "samples/prompts/haystack.txt";
    if (access("samples/models/byte-llama-11m/config.json", R_OK) || access(prompt, R_OK)) skip();
    eng_session_opts o = {.model_dir = model, .prompt_path = prompt, .backend = "cpu"};
    eng_session *s = NULL;
    eng_err err;
    if (eng_session_open(&s, &o, &err)) fail_msg("%s", err.msg);
    assert_true(eng_session_n_tokens(s) >= 4096);
    tui_worker *w = NULL;
    if (tui_worker_start(&w, s, "/tmp", NULL, &err)) fail_msg("%s", err.msg);
    tui_status st;
    for (int i = 0; i < 20000; i++) { /* wait until the prefill reports its first layer */
        tui_worker_status(w, &st);
        if (st.busy && st.total > 0) break;
        usleep(1000);
    }
    assert_true(st.busy && st.total > 0);
    assert_int_equal(tui_worker_stop(w, 0), 1); /* cancelled, still finishing its layer */
    for (int i = 0; i < 30000; i++) {
        tui_worker_status(w, &st);
        if (!st.busy) break;
        usleep(1000);
    }
    assert_false(st.busy);
    assert_false(st.ready);
    assert_non_null(strstr(st.msg, "cancelled"));
    assert_int_equal(tui_worker_stop(w, -1), 0);
}

/* ---- the heatmap on a (virtual) curses screen ---- */

/* The colour ncurses shows for cell (y, x): character and (fg, bg) colour numbers. */
static void screen_cell(int y, int x, wchar_t *ch, int *fg, int *bg) {
    cchar_t cc;
    wchar_t wc[CCHARW_MAX + 1];
    attr_t at;
    short sp;
    int pair = 0;
    assert_int_equal(mvin_wch(y, x, &cc), OK);
    assert_int_equal(getcchar(&cc, wc, &at, &sp, &pair), OK);
    *ch = wc[0];
    assert_int_equal(extended_pair_content(pair, fg, bg), OK);
}

static void test_draw_heatmap(void **state) {
    (void)state;
    FILE *out = fopen("/dev/null", "w"), *in = fopen("/dev/null", "r");
    assert_non_null(out);
    assert_non_null(in);
    if (!setlocale(LC_ALL, "C.UTF-8")) skip();
    SCREEN *scr = newterm("xterm-256color", out, in);
    if (!scr) {
        fclose(out);
        fclose(in);
        skip(); /* no terminfo entry */
    }
    resize_term(32, 100);
    tui_layout l;
    tui_state s;
    tui_cmd cmd;
    tui_state_init(&s, 2, 4, 2, 64);
    assert_int_equal(tui_layout_compute(COLS, LINES, 2, 4, 2, 0, 0, &l), 0);
    tui_state_set_map_size(&s, l.map_px_w, l.map_px_h, &cmd);
    s.overlay = 1;
    /* a snapshot by hand: a causal map with a gradient, half of it skipped by the index */
    eng_view v = tui_state_view(&s);
    const int W = v.cols, Hp = v.rows;
    eng_head_stat hs[8];
    eng_layer_stat ls[2];
    memset(hs, 0, sizeof hs);
    memset(ls, 0, sizeof ls);
    float *prob = malloc(sizeof(float) * (size_t)W * Hp), *cover = malloc(sizeof(float) * (size_t)W * Hp);
    assert_non_null(prob);
    assert_non_null(cover);
    for (int r = 0; r < Hp; r++)
        for (int c = 0; c < W; c++) {
            int causal = c * v.tpp <= r * v.tpp + v.tpp - 1;
            prob[(size_t)r * W + c] = causal ? powf(10.0f, -3.0f * (float)(r - c + Hp) / (float)(2 * Hp)) : NAN;
            cover[(size_t)r * W + c] = causal ? (c % 8 < 4 ? 1.0f : 0.0f) : NAN;
        }
    eng_snapshot snap;
    memset(&snap, 0, sizeof snap);
    snprintf(snap.model, sizeof snap.model, "test");
    snprintf(snap.backend, sizeof snap.backend, "cpu");
    snap.n_tokens = 64, snap.n_layers = 2, snap.n_heads = 4, snap.n_kv_heads = 2, snap.head_dim = 8;
    snap.ready = 1, snap.heads = hs, snap.layers = ls, snap.view = v, snap.map_valid = 1;
    snap.prob = prob, snap.cover = cover;
    for (size_t i = 0; i < (size_t)W * Hp; i++)
        if (prob[i] > snap.prob_max) snap.prob_max = prob[i];
    tui_status st;
    memset(&st, 0, sizeof st);

    /* what viz_term makes of it: the TUI must show exactly these cells */
    viz_term_opts to = {VIZ_CMAP_VIRIDIS, {VIZ_SCALE_LOG, snap.prob_max * 1e-4f, snap.prob_max, 0}, VIZ_TERM_256,
                        cover};
    viz_cellbuf ref;
    eng_err err;
    assert_int_equal(viz_cellbuf_init(&ref, l.map_px.w, l.map_px.h, &err), 0);
    viz_term_heat(&ref, 0, 0, prob, W, Hp, &to);
    assert_int_equal(tui_draw_init(0), TUI_COLOR_256);
    tui_draw_frame(&l, &s, &snap, &st);
    int checked = 0, colored = 0, dimmed = 0;
    for (int y = 0; y < l.map_px.h; y++)
        for (int x = 0; x < l.map_px.w; x++) {
            const viz_cell *c = viz_cellbuf_at(&ref, x, y);
            int px = (v.cur_k - v.k0) / v.tpp, py = (v.cur_q - v.q0) / v.tpp;
            if (x == px && y == py / 2) continue; /* the cursor mark */
            wchar_t ch;
            int fg, bg;
            screen_cell(l.map_px.y + y, l.map_px.x + x, &ch, &fg, &bg);
            wchar_t want = !strcmp(c->ch, "\xe2\x96\x80")   ? 0x2580
                           : !strcmp(c->ch, "\xe2\x96\x84") ? 0x2584
                                                             : (wchar_t)c->ch[0];
            assert_int_equal(ch, want);
            assert_int_equal(fg, c->flags & VIZ_CELL_FG_DEFAULT ? -1 : c->fg256);
            assert_int_equal(bg, c->flags & VIZ_CELL_BG_DEFAULT ? -1 : c->bg256);
            colored += fg >= 0;
            checked++;
        }
    assert_true(checked > 100 && colored > 50);
    /* the overlay dims skipped pixels: off, some cells change colour */
    s.overlay = 0;
    tui_draw_frame(&l, &s, &snap, &st);
    to.computed = NULL;
    viz_cellbuf_clear(&ref);
    viz_term_heat(&ref, 0, 0, prob, W, Hp, &to);
    for (int x = 0; x < l.map_px.w; x++) {
        const viz_cell *c = viz_cellbuf_at(&ref, x, l.map_px.h - 1);
        wchar_t ch;
        int fg, bg;
        screen_cell(l.map_px.y + l.map_px.h - 1, l.map_px.x + x, &ch, &fg, &bg);
        assert_int_equal(fg, c->flags & VIZ_CELL_FG_DEFAULT ? -1 : c->fg256);
        dimmed += x % 8 >= 4 && fg >= 0;
    }
    assert_true(dimmed > 0);
    /* --no-color: the ASCII ramp, default colours */
    tui_draw_init(1);
    s.overlay = 1;
    tui_draw_frame(&l, &s, &snap, &st);
    to.mode = VIZ_TERM_MONO;
    to.computed = cover;
    viz_cellbuf_clear(&ref);
    viz_term_heat(&ref, 0, 0, prob, W, Hp, &to);
    int nonblank = 0;
    for (int x = 0; x < l.map_px.w; x++) {
        const viz_cell *c = viz_cellbuf_at(&ref, x, l.map_px.h - 1);
        wchar_t ch;
        int fg, bg;
        screen_cell(l.map_px.y + l.map_px.h - 1, l.map_px.x + x, &ch, &fg, &bg);
        assert_int_equal(ch, (wchar_t)c->ch[0]);
        assert_int_equal(fg, -1);
        nonblank += ch != L' ';
    }
    assert_true(nonblank > 0);
    viz_cellbuf_free(&ref);
    endwin();
    delscreen(scr);
    fclose(out);
    fclose(in);
    free(prob);
    free(cover);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_sizes),
        cmocka_unit_test(test_keys_table),
        cmocka_unit_test(test_state_navigation),
        cmocka_unit_test(test_state_pattern_and_clicks),
        cmocka_unit_test(test_session),
        cmocka_unit_test(test_session_bad_input),
        cmocka_unit_test(test_worker),
        cmocka_unit_test(test_worker_stop_cancels),
        cmocka_unit_test(test_prefill_cancel),
        cmocka_unit_test(test_draw_heatmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
