/* eng_search: offline, kernel-aware per-head pattern search (MInference's idea, with every
 * candidate's score kept). Each head scores every candidate of a cost-matched set on one prompt
 * by output error against dense (the paper's objective) or by recall (upstream code's), and the
 * best wins; near-ties go to the cheaper candidate. Results land in an eng_patcfg (native schema
 * with candidates; exportable to MInference's format). */
#ifndef ENG_SEARCH_H
#define ENG_SEARCH_H

#include <stddef.h>

#include "eng_backend.h"
#include "eng_patcfg.h"
#include "eng_pattern.h"

#define ENG_SEARCH_REFERENCE_LEN 32768 /* length the paper's budgets refer to (docs/patterns.md) */

typedef enum { ENG_SEARCH_OUTPUT = 0, ENG_SEARCH_RECALL } eng_search_objective;

typedef struct {
    eng_pattern *cand;     /* [n_cand] budgets as written */
    int n_cand;
    int reference_len;     /* budgets refer to this length; shorter prompts scale them (0: never) */
} eng_search_set;

typedef struct {
    eng_search_objective objective;
    double tie_tol;        /* candidates within this of the best score tie; the lowest density wins */
    void (*progress)(void *ctx, int layer_done, int n_layers); /* may be NULL */
    void *progress_ctx;
} eng_search_opts;

/* The paper's cost-matched set: A-shape (1024, 4096); VS (30, 2048), (100, 1800), (500, 1500),
 * (3000, 200); BS 100 blocks; reference length ENG_SEARCH_REFERENCE_LEN. */
int eng_search_set_default(eng_search_set *s, eng_err *err);
/* A candidates file: {"reference_len": R, "candidates": [PATTERN, ...]} (reference_len optional,
 * 0 = use budgets as written) or a bare list of pattern objects. */
int eng_search_set_parse(eng_search_set *s, const char *json, size_t len, const char *what, eng_err *err);
void eng_search_set_free(eng_search_set *s);
/* p with every budget parameter scaled by n / reference_len when n < reference_len (rounded,
 * never below the parameter's budget_min); unchanged otherwise. */
eng_pattern eng_search_scale(const eng_pattern *p, int n, int reference_len);
/* Index of the winner among ev[0..n): best score by the objective, then within tie_tol of it the
 * lowest density, then the first. */
int eng_search_pick(const eng_pat_eval *ev, int n, const eng_search_opts *o);

/* One head from its Q/K/V (CPU reference): score cand[0..n_cand) (used as given: scale first),
 * fill ev[n_cand] and *best. */
int eng_search_head(const float *q, int q_stride, const float *k, const float *v, int kv_stride, int n, int d,
                    const eng_pattern *cand, int n_cand, const eng_search_opts *o, eng_pat_eval *ev, int *best,
                    eng_err *err);

/* Whole model: a dense prefill keeping Q/K/V and LSE, then for every layer and candidate one
 * sparse attention over all heads on be. out is initialised here (n_layers x n_heads, every head
 * listed with its winner and all candidates' scores; default dense). */
int eng_search_run(eng_backend *be, const eng_model *m, const int *tokens, int n, const eng_search_set *set,
                   const eng_search_opts *o, eng_patcfg *out, eng_err *err);

#endif
