/* eng_patcfg: per-(layer, head) pattern configs as files. Reads and writes MInference's per-head
 * JSON exactly (a list by layer of {"head": [pattern, vertical_size, slash_size, score]}) and the
 * native attnscope schema (docs/patterns.md), which names every parameter and can carry the
 * search's per-candidate scores. Pure text in, text out; the caller reads/writes files. */
#ifndef ENG_PATCFG_H
#define ENG_PATCFG_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "eng_err.h"
#include "eng_pattern.h"

/* One candidate pattern as the search scored it on one head. */
typedef struct {
    eng_pattern pat;       /* the candidate, with the budgets it was built with */
    double score;          /* objective value: rel-L2 output error (lower better) or recall (higher) */
    double density;        /* fraction of causal entries computed */
    double recall;         /* mean dense softmax mass inside the computed set */
    double error;          /* relative L2 of the head's output vs dense */
} eng_pat_eval;

typedef struct {
    eng_pattern_cfg cfg;        /* what the prefill consumes; cfg.heads always [n_layers * n_heads] */
    double *score;              /* [L*H] exact score (cfg.heads[i].score is its float copy) */
    unsigned char *listed;      /* [L*H] 1 = the file or search names this head, 0 = cfg.def */
    int scores_are_int;         /* MInference text: every score was an integer (written back so) */
    int cand_cap;               /* candidate slots per head; 0 = no candidate data */
    int *n_cand;                /* [L*H] candidates stored for the head */
    eng_pat_eval *cand;         /* [L*H*cand_cap] */
    char objective[16];         /* "output" / "recall" for search output, else "" */
    int n_tokens;               /* prompt length the search ran on (0 = unknown) */
    int reference_len;          /* length the candidate budgets refer to (0 = unscaled) */
    char source[512];           /* provenance: the file read, or the search's command line */
} eng_patcfg;

/* Every head gets *def (listed 0). def NULL = dense. */
int eng_patcfg_init(eng_patcfg *pc, int n_layers, int n_heads, const eng_pattern *def, eng_err *err);
void eng_patcfg_free(eng_patcfg *pc);
/* Reserve cap candidate slots per head (drops any stored candidates). */
int eng_patcfg_reserve_candidates(eng_patcfg *pc, int cap, eng_err *err);
/* Set one head: its pattern, exact score, listed = 1. */
void eng_patcfg_set(eng_patcfg *pc, int layer, int head, const eng_pattern *p, double score);

/* MInference format. Heads a layer omits, and layers past the list, use upstream's default
 * vertical_and_slash (1000, 6096). block_sparse gets topk 100 (upstream's fixed value) and keeps
 * the file's two sizes for export. `what` names the source in errors ("FILE: layer 3 head 7:
 * vertical_size: ..."). */
int eng_patcfg_parse_minference(eng_patcfg *pc, const char *json, size_t len, const char *what, eng_err *err);
/* MInference text in upstream's exact layout (Python json.dumps + newline): listed heads only,
 * ascending; a dense head (no MInference equivalent) is an error naming it. malloc'd. */
char *eng_patcfg_minference_text(const eng_patcfg *pc, eng_err *err);

/* Native schema ("format": "attnscope-patterns", "version": 1). */
int eng_patcfg_parse_native(eng_patcfg *pc, const char *json, size_t len, const char *what, eng_err *err);
char *eng_patcfg_native_text(const eng_patcfg *pc, eng_err *err); /* malloc'd, formatted */

/* Either format, told apart by the top-level JSON type (list = MInference, object = native). */
int eng_patcfg_parse(eng_patcfg *pc, const char *json, size_t len, const char *what, eng_err *err);
/* Read and parse a file (capped at 64 MiB). */
int eng_patcfg_load(eng_patcfg *pc, const char *path, eng_err *err);

/* A config naming more layers or heads than the model has is refused (wrong model); one naming
 * fewer is fitted to the model's n_layers x n_heads, the rest at the default (pc is resized). */
int eng_patcfg_check_model(eng_patcfg *pc, int n_layers, int n_heads, eng_err *err);

/* One native pattern object {"pattern": NAME, PARAM: number, ...} <-> eng_pattern. Keys other
 * than "pattern", the kind's parameters and those listed in extra (NULL-terminated, may be NULL)
 * are refused; `where` prefixes errors. */
int eng_patcfg_pattern_from_json(const cJSON *o, eng_pattern *p, const char *const *extra, const char *where,
                                 eng_err *err);
cJSON *eng_patcfg_pattern_to_json(const eng_pattern *p);

/* Same assignment: per (layer, head) the same listed flag, kind, parameters and exact score, and
 * the same default. 1 equal; 0 with the first difference described in why. */
int eng_patcfg_same(const eng_patcfg *a, const eng_patcfg *b, char *why, int cap);

#endif
