/* eng_session: one prompt on one model, analysed for the explorer. Owns the model, tokenizer,
 * backend, the dense prefill's kept Q/K/V and row LSE, the per-head pattern config, each head's
 * current index and the numbers derived from them. Views (the TUI, PNG export in app/) ask it for
 * a snapshot: plain structs holding everything a screen or a figure needs (floats, masks, labels),
 * nothing curses- or PNG-specific.
 * A session is used from one thread at a time (the TUI's worker); snapshots are immutable once
 * made and may be read from any thread. */
#ifndef ENG_SESSION_H
#define ENG_SESSION_H

#include <stdint.h>

#include "eng_err.h"
#include "eng_pattern.h"

typedef struct eng_session eng_session;

typedef struct {
    const char *model_dir;
    const char *prompt_path;   /* text file, encoded with the model's tokenizer (BOS prepended) */
    const char *patterns_path; /* per-head config (MInference or attnscope JSON); NULL: default */
    const char *backend;       /* "auto" (NULL), "cpu" or "cuda" */
    int max_tokens;            /* keep at most this many prompt tokens; 0: the model's maximum */
    unsigned transform;        /* ENG_XF_* flags (eng_transform.h): analyse a one-shot 2:4 / INT8 copy of
                                  the weights, compared against the model as loaded; 0: none */
} eng_session_opts;

/* Progress of a long job: what is running ("prefill", "analyse", "sparse prefill"), done of total. */
typedef void (*eng_session_progress)(void *ctx, const char *what, int done, int total);

/* Per (layer, head): its pattern and the sparse-vs-dense numbers on this prompt. The metrics are
 * NaN until the head has been analysed. */
typedef struct {
    eng_pattern pat;
    float density; /* computed causal entries / all causal entries */
    float recall;  /* mean over queries of the dense softmax mass inside the computed set */
    float error;   /* ||O_sparse - O_dense|| / ||O_dense|| over the head's output */
    float error_plain; /* reshape heads: the same error without the Re-ttention-style estimate; else NaN */
} eng_head_stat;

/* One layer, all heads, measured on this session's backend. */
typedef struct {
    int valid;
    double dense_s;   /* dense attention time (kernel) */
    double sparse_s;  /* sparse attention time: index building + kernel */
    double index_s;   /* the index-building part of sparse_s */
    float density, recall, error; /* means over the layer's heads */
} eng_layer_stat;

/* End to end: a dense prefill and a sparse prefill (errors propagate through the layers). */
typedef struct {
    int valid;
    double dense_s, sparse_s; /* whole-prefill wall time */
    double kl;                /* KL(dense || sparse) of the next-token distribution at the last position, nats */
    double top1;              /* fraction of positions whose greedy next token agrees */
    double ppl_dense, ppl_sparse; /* prompt perplexity */
    /* With a weight transform on: its dense prefill against the original model's dense prefill
     * (what `attnscope run --transform T` reports without --patterns). */
    int xf_valid;
    double xf_kl;             /* KL(original || transformed) of the next-token distribution at the last position */
    double xf_top1;           /* fraction of positions whose greedy next token agrees */
    double xf_ppl_orig, xf_ppl_xf; /* prompt perplexity of each */
} eng_e2e_stat;

/* What a view wants to see. The heatmap is a rows x cols pixel grid: pixel (r, c) covers queries
 * [q0 + r*tpp, q0 + (r+1)*tpp) and keys [k0 + c*tpp, k0 + (c+1)*tpp). */
typedef struct {
    int layer, head;
    int q0, k0, tpp, rows, cols;
    int cur_q, cur_k;     /* the cursor cell, token positions */
    int teach;            /* also fill the teach data (vertical-slash heads only) */
    int lines;            /* also the head's chosen vertical and slash lines (vertical-slash only) */
    int labels;           /* also every token's display text (axis labels of an exported figure) */
} eng_view;

/* How a vertical-slash head's index is built, step by step, at a resolution the view asked for
 * (cols columns over the n keys; tpc tokens per column). */
typedef struct {
    int valid;            /* 0 when the head is not vertical-slash or no data yet */
    int n_est;            /* queries in the estimate: the last min(64, n) */
    int cols, tpc;
    float *est;           /* [n_est * cols] estimated softmax A over keys, max-pooled per column */
    float *vscore;        /* [cols] vertical score (sum of A over the estimate rows) per key, max-pooled */
    float *sscore;        /* [cols] slash score per diagonal offset (column c: offsets c*tpc..), max-pooled */
    int k_v, k_s;         /* budgets after clamping (vertical, slash) */
    int n_vert, n_slash;  /* chosen lines */
    int *vert;            /* [n_vert] chosen key positions, ascending */
    int *slash;           /* [n_slash] chosen diagonal offsets, ascending */
    int rows;             /* rows of the whole-matrix grids below (tpc tokens per row too) */
    uint8_t *lines;       /* [rows * cols] bit 1: a chosen vertical passes, bit 2: a chosen slash */
    uint8_t *kind;        /* [rows * cols] final index: 0 skipped, 1 block range, 2 column,
                             3 both, 255 above the causal diagonal */
    int n_rb;             /* row blocks */
    long long n_ranges, n_columns; /* key blocks and gathered columns summed over row blocks */
} eng_teach;

typedef struct {
    char model[160];      /* model directory's last component and architecture */
    char backend[160];    /* backend device string */
    int n_tokens, n_layers, n_heads, n_kv_heads, head_dim;
    int ready;            /* prefill and analysis done: stats below are meaningful */
    eng_head_stat *heads; /* [n_layers * n_heads] */
    eng_layer_stat *layers; /* [n_layers] */
    eng_e2e_stat e2e;
    double prefill_s;     /* the analysis prefill (dense, keeping Q/K/V) */
    unsigned transform;   /* ENG_XF_* flags of the weights everything here is of; 0: the original */
    unsigned transform_avail; /* the session's transform, whether on or off now; 0: none */
    double xf_zero;       /* transform_avail: fraction of the transformed weights that are zero */
    double xf_rel_err;    /* transform_avail: ||W' - W|| / ||W|| over the transformed weights */

    eng_view view;        /* the view this snapshot answers (clamped) */
    int map_valid;
    float *prob;          /* [rows * cols] max over the tile of the exact softmax probability */
    float *cover;         /* [rows * cols] fraction of the tile's causal entries the head computes (its mask);
                             NAN for tiles above the diagonal */
    float prob_max;       /* largest value in prob */
    /* the cursor */
    float cur_prob;       /* exact probability of (cur_q, cur_k); 0 above the diagonal */
    int cur_computed;     /* 1 computed by the head's mask, 0 skipped, -1 above the diagonal */
    char q_text[48], k_text[48]; /* printable token texts */
    eng_teach teach;
    /* view.lines: the lines eng_pattern_build chose for a vertical-slash head (else NULL, 0) */
    int *vert, n_vert;    /* key positions, ascending */
    int *slash, n_slash;  /* diagonal offsets q - k, descending */
    /* view.labels: labels[t] is token t's display text, t in [0, n_tokens) (else NULL) */
    const char *const *labels;
} eng_snapshot;

int eng_session_open(eng_session **out, const eng_session_opts *o, eng_err *err);
void eng_session_free(eng_session *s);

/* A flag another thread may set to stop the running prefill or end-to-end run: they check it
 * between layers and then return -1 with err "cancelled" (the session stays usable; an interrupted
 * analysis prefill leaves it not ready). NULL: no cancelling. */
void eng_session_set_cancel(eng_session *s, volatile int *cancel);

/* The analysis prefill: dense, keeping Q/K/V and row LSE, then every layer's dense and sparse
 * attention under the current patterns (numbers for every head). */
int eng_session_prefill(eng_session *s, eng_session_progress cb, void *ctx, eng_err *err);

/* Give (layer, head) a new pattern and re-run that layer's sparse attention from the kept Q/K/V:
 * its head and layer numbers update. End-to-end numbers are marked stale (valid = 0). */
int eng_session_set_pattern(eng_session *s, int layer, int head, const eng_pattern *p, eng_err *err);

/* Analyse the transformed weights (on = 1) or the original ones (on = 0) from now on. Drops the
 * analysis (not ready, numbers NaN, end to end stale) but keeps the per-head config: run
 * eng_session_prefill next. Error when the session was opened without a transform. */
int eng_session_set_transform(eng_session *s, int on, eng_err *err);
/* The flags of the weights analysed now (0: the original); *avail (may be NULL) receives the
 * session's transform whether on or off (0: none). */
unsigned eng_session_transform(const eng_session *s, unsigned *avail);

/* A full dense prefill (timing) and a full sparse prefill with the current config; with a
 * transform on, also the original model's dense prefill once (cached) for the xf_* numbers. */
int eng_session_run_e2e(eng_session *s, eng_session_progress cb, void *ctx, eng_err *err);

/* A snapshot for view v (clamped to the prompt). Free with eng_snapshot_free. */
int eng_session_snapshot(eng_session *s, const eng_view *v, eng_snapshot **out, eng_err *err);
void eng_snapshot_free(eng_snapshot *snap);

/* The current per-head config in MInference's format and in attnscope's native format, each
 * written atomically. The native file is written first: MInference's format has no dense head,
 * and its error then names the head. */
int eng_session_save_patterns(eng_session *s, const char *minference_path, const char *native_path,
                              eng_err *err);

/* Shape queries (valid right after open). */
int eng_session_n_tokens(const eng_session *s);
int eng_session_n_layers(const eng_session *s);
int eng_session_n_heads(const eng_session *s);
int eng_session_n_kv_heads(const eng_session *s);

#endif
