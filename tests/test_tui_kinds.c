/* test_tui_kinds: every pattern kind in the explorer (issue 9): the pattern cycle reaches each kind
 * with valid parameters, the table-driven fields edit each parameter and stay valid, the pattern
 * panel scrolls long field lists, and the engine session analyses, draws and re-runs heads of every
 * kind (DMA and N:M through their per-row masks, reshape with its error without the estimate) on
 * the tiny test model. */
#include "test_util.h"

#include <unistd.h>

#include "eng_pattern.h"
#include "eng_session.h"
#include "tui_layout.h"
#include "tui_state.h"

static void test_cycle_and_fields(void **state) {
    (void)state;
    const int ns[] = {300, 4096, 65536};
    for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
        const int n = ns[t];
        eng_pattern p;
        memset(&p, 0, sizeof p); /* dense, every parameter 0: what a cycle from dense starts with */
        int seen[ENG_PAT__COUNT] = {0};
        for (int i = 0; i < 2 * ENG_PAT__COUNT; i++) {
            eng_pat_kind before = p.kind;
            tui_pattern_cycle(&p, n);
            assert_int_equal(p.kind, (before + 1) % ENG_PAT__COUNT);
            seen[p.kind] = 1;
            eng_err err;
            if (eng_pattern_validate(&p, &err)) fail_msg("n %d: cycle to %s: %s", n, eng_pattern_kind_name(p.kind), err.msg);
            /* fields: the kind, then the kind's parameter table in order */
            int np;
            const eng_pat_param *par = eng_pattern_params(p.kind, &np);
            assert_int_equal(tui_pattern_nfields(p.kind), 1 + np);
            assert_string_equal(tui_field_name(p.kind, TUI_FIELD_KIND), "pattern");
            char txt[48];
            tui_field_text(&p, TUI_FIELD_KIND, txt, sizeof txt);
            assert_string_equal(txt, eng_pattern_kind_name(p.kind));
            for (int f = 1; f <= np; f++) {
                assert_string_equal(tui_field_name(p.kind, f), par[f - 1].name);
                /* every field steps up and down (a few times) and the pattern stays valid */
                eng_pattern e = p;
                int changed = 0;
                for (int dir = 1; dir >= -1; dir -= 2)
                    for (int s = 0; s < 6; s++) {
                        eng_pattern b = e;
                        tui_pattern_step(&e, f, dir, n);
                        changed |= memcmp(&b, &e, sizeof e) != 0;
                        if (eng_pattern_validate(&e, &err))
                            fail_msg("n %d: %s field %s dir %d: %s", n, eng_pattern_kind_name(p.kind), par[f - 1].name,
                                     dir, err.msg);
                    }
                assert_true(changed); /* the field is really editable */
                tui_field_text(&e, f, txt, sizeof txt);
                assert_true(strlen(txt) > 0 && strcmp(txt, "?"));
            }
        }
        for (int k = 0; k < ENG_PAT__COUNT; k++) assert_true(seen[k]);
    }
    /* reshape is a toggle on sparse kinds, shown on/off, cleared when cycling to dense */
    eng_pattern x = eng_pattern_make(ENG_PAT_XATTN);
    int np;
    eng_pattern_params(ENG_PAT_XATTN, &np);
    assert_string_equal(tui_field_name(ENG_PAT_XATTN, np), "reshape");
    tui_pattern_step(&x, np, 1, 1000);
    assert_int_equal(x.reshape, 1);
    char txt[48];
    tui_field_text(&x, np, txt, sizeof txt);
    assert_string_equal(txt, "on");
    tui_pattern_cycle(&x, 1000); /* -> flex keeps it */
    assert_int_equal(x.kind, ENG_PAT_FLEX);
    assert_int_equal(x.reshape, 1);
    eng_pattern nm = eng_pattern_make(ENG_PAT_NM);
    tui_pattern_cycle(&nm, 1000); /* -> dense drops it */
    nm.reshape = 1;
    nm.kind = ENG_PAT_NM;
    tui_pattern_cycle(&nm, 1000);
    assert_int_equal(nm.kind, ENG_PAT_DENSE);
    assert_int_equal(nm.reshape, 0);
    /* N:M keeps n <= m while editing: m down stops at n */
    eng_pattern q = eng_pattern_make(ENG_PAT_NM); /* 2:4 */
    for (int i = 0; i < 5; i++) tui_pattern_step(&q, 2, -1, 1000);
    assert_int_equal(q.nm_m, q.nm_n);
    /* XAttention's stride stays a divisor of 128 */
    eng_pattern s = eng_pattern_make(ENG_PAT_XATTN);
    for (int i = 0; i < 9; i++) tui_pattern_step(&s, 1, 1, 1000);
    assert_int_equal(s.stride, 128);
    for (int i = 0; i < 9; i++) tui_pattern_step(&s, 1, -1, 1000);
    assert_int_equal(s.stride, 1);
}

static void test_panel_scrolls(void **state) {
    (void)state;
    /* the field window keeps the selection visible */
    assert_int_equal(tui_pattern_first_field(0, 6, 3), 0);
    assert_int_equal(tui_pattern_first_field(2, 6, 3), 0);
    assert_int_equal(tui_pattern_first_field(3, 6, 3), 1);
    assert_int_equal(tui_pattern_first_field(5, 6, 3), 3);
    assert_int_equal(tui_pattern_first_field(5, 6, 7), 0);
    /* a small terminal scrolls DMA's six fields; a tall one shows them all */
    tui_layout l;
    assert_int_equal(tui_layout_compute(80, 24, 6, 8, 2, 0, 0, &l), 0);
    assert_true(tui_layout_pattern_rows(&l) >= 3);
    assert_int_equal(tui_layout_compute(120, 40, 6, 8, 2, 0, 0, &l), 0);
    assert_true(tui_layout_pattern_rows(&l) >= tui_pattern_nfields(ENG_PAT_DMA));
    /* a click on a scrolled panel selects the field on that row */
    tui_state s;
    tui_cmd c;
    tui_state_init(&s, 6, 8, 2, 4096);
    eng_pattern d = eng_pattern_make(ENG_PAT_DMA);
    s.focus = TUI_FOCUS_PATTERN;
    s.field = 5; /* reshape; with 3 rows the panel shows fields 3..5 */
    tui_hit hit = {.kind = TUI_HIT_PATTERN, .row = 1, .rows = 3};
    tui_state_click(&s, &hit, &d, &c);
    assert_int_equal(s.field, 3);
    /* Down past the last field stays there; Right on it toggles reshape */
    for (int i = 0; i < 8; i++) tui_state_action(&s, TUI_ACT_FIELD_DOWN, &d, &c);
    assert_int_equal(s.field, 5);
    tui_state_action(&s, TUI_ACT_VAL_INC, &d, &c);
    assert_true(c.set_pattern);
    assert_int_equal(c.pat.kind, ENG_PAT_DMA);
    assert_int_equal(c.pat.reshape, 1);
}

static const char *tiny_model(void) {
    return access("tests/fixtures/tiny-llama/config.json", R_OK) == 0 ? "tests/fixtures/tiny-llama" : NULL;
}

/* The session with a head of each kind: numbers, the overlay (coverage map at one token per pixel
 * agrees with the head's density and the cursor's computed flag), and reshape's plain error. */
static void test_session_kinds(void **state) {
    (void)state;
    if (!tiny_model()) skip();
    char prompt[] = "/tmp/attnscope-kinds-prompt-XXXXXX";
    int fd = mkstemp(prompt);
    assert_true(fd >= 0);
    uint64_t seed = 9;
    for (int i = 0; i < 299; i++) {
        char ch = (char)('a' + tu_rand_u64(&seed) % 26);
        if (i % 6 == 5) ch = ' ';
        assert_int_equal(write(fd, &ch, 1), 1);
    }
    close(fd);
    eng_session_opts o = {.model_dir = tiny_model(), .prompt_path = prompt, .backend = "cpu"};
    eng_session *s = NULL;
    eng_err err;
    if (eng_session_open(&s, &o, &err)) fail_msg("%s", err.msg);
    const int n = eng_session_n_tokens(s), H = eng_session_n_heads(s), L = eng_session_n_layers(s);
    if (eng_session_prefill(s, NULL, NULL, &err)) fail_msg("%s", err.msg);
    /* every kind, from the TUI's cycle (so with the defaults a user gets), on head (l, h) */
    eng_pattern p;
    memset(&p, 0, sizeof p);
    for (int kind = 1; kind < ENG_PAT__COUNT + 2; kind++) {
        if (kind < ENG_PAT__COUNT) tui_pattern_cycle(&p, n);
        else { /* two more rounds: reshape on an A-shape and on a DMA head */
            p = kind == ENG_PAT__COUNT ? eng_pattern_make(ENG_PAT_ASHAPE) : eng_pattern_make(ENG_PAT_DMA);
            if (p.kind == ENG_PAT_ASHAPE) p.n_init = 4, p.n_local = 32;
            else p.keep = 16, p.n_init = 2, p.n_local = 8;
            p.reshape = 1;
        }
        const int l = kind % L, h = (kind * 3) % H;
        if (eng_session_set_pattern(s, l, h, &p, &err)) fail_msg("%s: %s", eng_pattern_kind_name(p.kind), err.msg);
        eng_view v = {.layer = l, .head = h, .q0 = 0, .k0 = 0, .tpp = 1, .rows = n, .cols = n, .cur_q = n - 1,
                      .cur_k = n / 3};
        eng_snapshot *snap = NULL;
        if (eng_session_snapshot(s, &v, &snap, &err)) fail_msg("%s", err.msg);
        const eng_head_stat *hs = &snap->heads[(size_t)l * H + h];
        assert_int_equal(hs->pat.kind, p.kind);
        assert_true(hs->density > 0 && hs->density <= 1);
        assert_true(hs->recall > 0 && hs->recall <= 1);
        assert_true(hs->error >= 0 && isfinite(hs->error));
        assert_true(snap->layers[l].valid && snap->layers[l].sparse_s > 0);
        /* the overlay at one token per pixel is exactly the computed set: its sum is the density */
        double comp = 0;
        for (int q = 0; q < n; q++)
            for (int k = 0; k <= q; k++) {
                float c = snap->cover[(size_t)q * n + k];
                assert_true(c == 0.0f || c == 1.0f);
                comp += c;
            }
        double dens = comp / ((double)n * (n + 1) / 2);
        if (fabs(dens - hs->density) > 1e-5)
            fail_msg("%s: overlay density %.6f, head density %.6f", eng_pattern_kind_name(p.kind), dens, hs->density);
        if (p.kind != ENG_PAT_DENSE && p.kind != ENG_PAT_XATTN && p.kind != ENG_PAT_FLEX)
            assert_true(hs->density < 1); /* sparse at these defaults on 300 tokens */
        assert_int_equal(snap->cur_computed, (int)snap->cover[(size_t)(n - 1) * n + n / 3]);
        if (p.reshape) {
            assert_true(isfinite(hs->error_plain));
            if (p.kind == ENG_PAT_ASHAPE) assert_true(hs->error != hs->error_plain); /* whole blocks dropped */
        } else {
            assert_true(isnan(hs->error_plain));
        }
        eng_snapshot_free(snap);
    }
    eng_session_free(s);
    unlink(prompt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cycle_and_fields),
        cmocka_unit_test(test_panel_scrolls),
        cmocka_unit_test(test_session_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
