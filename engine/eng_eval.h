/* eng_eval: accuracy benchmarks of sparse prefill patterns on a real model. Passkey retrieval
 * (needle in a haystack: a 5-digit key hidden at a given depth of a long document, asked for at the
 * end; sparse prefill, dense greedy decode) and perplexity versus context length. The passkey
 * prompt is byte-for-byte the one tools/train_sample.py trains and checks the sample model on:
 *   [BOS] hay[:p] NEEDLE hay[p:] QUESTION   -> greedy answer " NNNNN"
 * with the haystack taken cyclically from offset trial*4099 (tokens) and p = depth% of the haystack
 * moved forward to just after the next space (p = 0 stays 0). When the answer's first token is only
 * whitespace (the " " of a byte vocabulary) it ends the prompt, so that the prefill under the pattern
 * has to predict the first digit itself; the dense decode only continues from there. */
#ifndef ENG_EVAL_H
#define ENG_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "eng_backend.h"
#include "eng_err.h"
#include "eng_model.h"
#include "eng_pattern.h"
#include "eng_tok.h"

/* The classic passkey filler (Mohtashami & Jaggi), used when no haystack text is given. */
#define ENG_PASSKEY_FILLER "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
#define ENG_PASSKEY_NEEDLE "The pass key is %d. Remember it. %d is the pass key." /* between two spaces */
#define ENG_PASSKEY_QUESTION "\nWhat is the pass key? The pass key is"

typedef struct eng_passkey eng_passkey;

/* Prepare prompts for tok: haystack text (len bytes; NULL = ENG_PASSKEY_FILLER) is tokenized once. */
int eng_passkey_new(eng_passkey **out, const eng_tokenizer *tok, const char *haystack, size_t len, eng_err *err);
void eng_passkey_free(eng_passkey *pk);

/* The key of one trial: 5 digits, a pure function of (seed, length, depth, trial). */
int eng_passkey_key(uint64_t seed, int length, int depth_pct, int trial);

/* The prompt of one trial: exactly `length` tokens (BOS included when the tokenizer has one).
 * depth_pct in [0, 100]. *ids malloc'd. Fails when length leaves no room for the haystack. */
int eng_passkey_prompt(const eng_passkey *pk, int length, int depth_pct, int trial, int key, int **ids, int *n,
                       eng_err *err);
/* Tokens to generate for an answer to key (its tokens plus one, to see that no digit follows). */
int eng_passkey_answer_tokens(const eng_passkey *pk, int key);
/* 1 when the generated ids decode to the key (leading spaces skipped) not followed by a digit. */
int eng_passkey_correct(const eng_passkey *pk, const int *gen, int n_gen, int key);

/* One (length, depth) cell: `trials` prompts, each prefilled on be under patterns (NULL = dense)
 * and answered by greedy decoding. */
typedef struct {
    int length, depth_pct, trials, correct;
    double prefill_s, decode_s; /* summed over the trials */
    char sample[64];            /* the last trial's answer as text (printable), for reports */
} eng_passkey_cell;

int eng_passkey_run(eng_backend *be, const eng_model *m, const eng_passkey *pk, const eng_pattern_cfg *patterns,
                    int length, int depth_pct, int trials, uint64_t seed, eng_passkey_cell *cell, eng_err *err);

/* Perplexity of text (tokens[0..n_tokens), no BOS) in windows of `length` tokens: each window is
 * [BOS] + the next length-1 (length without BOS) text tokens, non-overlapping from the start, at most
 * max_windows of them (<= 0: all that fit). Every next-token prediction inside a window counts. */
typedef struct {
    int length, windows;
    long long predicted;   /* next-token predictions scored */
    double nll;            /* mean negative log-likelihood, nats per token */
    double ppl;            /* exp(nll) */
    double prefill_s;      /* summed over the windows */
} eng_ppl_cell;

int eng_ppl_run(eng_backend *be, const eng_model *m, const int *tokens, int n_tokens, int bos_id,
                const eng_pattern_cfg *patterns, int length, int max_windows, eng_ppl_cell *cell, eng_err *err);

/* A pattern config for a prompt of n tokens: every budget of src scaled by n / reference_len when
 * n is shorter (eng_search_scale; reference_len 0 = as written). dst->heads is malloc'd when
 * src->heads is set; free with eng_eval_cfg_free. */
int eng_eval_cfg_scaled(const eng_pattern_cfg *src, int n, int reference_len, eng_pattern_cfg *dst, eng_err *err);
void eng_eval_cfg_free(eng_pattern_cfg *c);

/* "4k" -> 4096, "1m" -> 1048576, "1500" -> 1500; 0 ok, -1 when not a positive size < 2^30. */
int eng_eval_parse_len(const char *s, int *out);

#endif
