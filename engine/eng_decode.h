/* eng_decode: greedy generation after a prefill, on the CPU in float32. The prefill (any backend,
 * dense or sparse as configured, keep_qkv on) leaves every layer's K and V (after RoPE); the decoder
 * copies them into a KV cache and then runs one token at a time with dense attention over the
 * cache, as MInference does (sparse prefill, dense decode). Weights are read through
 * eng_tensor_to_f32; up to ENG_DECODE_CACHE_BYTES of them are kept converted to f32. */
#ifndef ENG_DECODE_H
#define ENG_DECODE_H

#include "eng_backend.h"
#include "eng_err.h"
#include "eng_model.h"

#define ENG_DECODE_CACHE_BYTES ((size_t)1 << 30) /* f32 weight copies kept across steps */

typedef struct eng_decoder eng_decoder;

/* A decoder whose cache holds the pre->n prompt positions (pre from a prefill of m with keep_qkv)
 * and room for max_new more. pre is only read here; it may be freed afterwards. */
int eng_decoder_create(eng_decoder **out, const eng_model *m, const eng_prefill_out *pre, int max_new,
                       eng_err *err);
/* Feed token at position eng_decoder_len(d) (it joins the cache) and write the next-token logits
 * [vocab]. Fails when the cache is full or the token is outside the vocabulary. */
int eng_decoder_step(eng_decoder *d, int token, float *logits, eng_err *err);
int eng_decoder_len(const eng_decoder *d); /* positions in the cache */
void eng_decoder_free(eng_decoder *d);

/* Index of the largest logit (the first on ties). */
int eng_decode_argmax(const float *logits, int n);

/* What eng_decode_greedy produced. */
typedef struct {
    int *ids;          /* [n] generated tokens (the stop token, when hit, is not included) */
    int n;
    int stopped;       /* 1 when stop_id ended the generation early */
    double prefill_s;  /* the prefill's own wall time */
    double decode_s;   /* the decode steps' wall time */
} eng_generation;

void eng_generation_free(eng_generation *g);

/* Generate up to n_new tokens greedily after a finished prefill of m that kept K/V (keep_qkv): the
 * first from pre->last_logits, the rest from decode steps. prefill_s is copied from pre. */
int eng_decode_continue(const eng_model *m, const eng_prefill_out *pre, int n_new, int stop_id, eng_generation *out,
                        eng_err *err);

/* Prefill prompt[0..n) on be with opts (NULL = dense; keep_qkv is forced on, keep_lse left as
 * given), then generate up to n_new tokens greedily: the first from the prefill's last logits, the
 * rest from decode steps. stop_id >= 0 ends generation when it is produced. */
int eng_decode_greedy(eng_backend *be, const eng_model *m, const int *prompt, int n, const eng_prefill_opts *opts,
                      int n_new, int stop_id, eng_generation *out, eng_err *err);

#endif
