/* eng_metrics: what sparsity costs, measured. Per head and layer from the same Q/K/V: density,
 * recall (dense softmax mass inside the computed set) and output error; end to end from a dense
 * and a sparse prefill: KL of the last next-token distribution, top-1 agreement, perplexity. */
#ifndef ENG_METRICS_H
#define ENG_METRICS_H

#include "eng_backend.h"
#include "eng_index.h"

typedef struct {
    long long computed;   /* (q, k) pairs the index computes */
    long long causal;     /* n (n + 1) / 2 */
    double density;       /* computed / causal */
    double recall;        /* mean over queries of exp(lse_sparse - lse_dense), capped at 1 */
    double min_recall;    /* worst query */
    double err_num, err_den; /* sum (o_s - o_d)^2, sum o_d^2 over the head's (n, d) output */
    double error;         /* sqrt(err_num / err_den): relative L2 of sparse vs dense output */
    /* Heads run with the reshape option (eng_reshape.h): the same pattern's error WITHOUT the
     * estimate (error above is with it); NaN and err_num_plain = err_num for other heads. */
    double err_num_plain, error_plain;
} eng_head_metrics;

typedef struct {
    double density;       /* sum computed / sum causal over the layer's heads */
    double recall;        /* mean of the heads' recall */
    double min_recall;    /* worst head's recall */
    double error;         /* relative L2 over the whole layer output (all heads) */
    double max_error;     /* worst head's error */
    double error_plain;   /* relative L2 of the layer output with reshape heads run without it */
    int n_reshape;        /* heads that ran with the reshape option */
} eng_layer_metrics;

typedef struct {
    int n;                 /* prompt tokens */
    double kl_last;        /* KL(dense || sparse) of the next-token distribution at n-1, nats */
    double top1_agree;     /* fraction of the n positions whose greedy next token agrees */
    double nll_dense, nll_sparse; /* mean -log p(token[i+1]) over the n-1 predictions, nats */
    double ppl_dense, ppl_sparse; /* exp(nll); NaN when n == 1 */
} eng_e2e_metrics;

/* Recall uses the sparse pass's row LSE against the dense pass's: sum over the computed set of
 * exp(s - lse_dense) = exp(lse_sparse - lse_dense), exactly the dense mass inside the set, for
 * the price of the sparse pass. out_* are (n, d) rows at out_stride; lse_* are [n]. ix may be
 * NULL (computed/density then 0). */
void eng_metrics_head(const eng_head_index *ix, int n, int d, const float *lse_dense, const float *lse_sparse,
                      const float *out_dense, const float *out_sparse, int out_stride, eng_head_metrics *m);
void eng_metrics_layer(const eng_head_metrics *heads, int n_heads, eng_layer_metrics *m);
/* For patterns without an index (eng_dma.h masks): set computed and density. */
void eng_metrics_set_computed(eng_head_metrics *m, long long computed);
/* A reshape head: record the error of its output without the estimate (out_plain, same layout as
 * eng_metrics_head's outputs). */
void eng_metrics_set_plain(eng_head_metrics *m, int n, int d, const float *out_dense, const float *out_plain,
                           int out_stride);
/* From two prefills of the same tokens (argmax, next_logprob, last_logits filled). */
int eng_metrics_e2e(const eng_prefill_out *dense, const eng_prefill_out *sparse, eng_e2e_metrics *m, eng_err *err);
/* KL(p || q) in nats between softmax(a) and softmax(b) over V logits, in double. */
double eng_metrics_kl_logits(const float *a, const float *b, int V);

#endif
