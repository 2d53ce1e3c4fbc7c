/* eng_metrics: density, recall and output error per head/layer, and the end-to-end comparison of
 * a dense and a sparse prefill (see eng_metrics.h for definitions). */
#include "eng_metrics.h"

#include <math.h>
#include <string.h>

void eng_metrics_head(const eng_head_index *ix, int n, int d, const float *lse_dense, const float *lse_sparse,
                      const float *out_dense, const float *out_sparse, int out_stride, eng_head_metrics *m) {
    memset(m, 0, sizeof *m);
    m->causal = (long long)n * (n + 1) / 2;
    m->computed = ix ? eng_index_count(ix) : 0;
    m->density = m->causal ? (double)m->computed / (double)m->causal : 0;
    double rs = 0, rmin = 1;
    for (int t = 0; t < n; t++) {
        double r = 0;
        if (isfinite(lse_sparse[t]) && isfinite(lse_dense[t])) r = exp((double)lse_sparse[t] - (double)lse_dense[t]);
        if (r > 1) r = 1; /* rounding can put a nearly-full row a hair above 1 */
        rs += r;
        if (r < rmin) rmin = r;
    }
    m->recall = n ? rs / n : 0;
    m->min_recall = n ? rmin : 0;
    for (int t = 0; t < n; t++) {
        const float *a = out_sparse + (size_t)t * out_stride, *b = out_dense + (size_t)t * out_stride;
        for (int c = 0; c < d; c++) {
            double e = (double)a[c] - (double)b[c];
            m->err_num += e * e;
            m->err_den += (double)b[c] * b[c];
        }
    }
    m->error = m->err_den > 0 ? sqrt(m->err_num / m->err_den) : sqrt(m->err_num);
    m->err_num_plain = m->err_num;
    m->error_plain = NAN;
}

void eng_metrics_set_computed(eng_head_metrics *m, long long computed) {
    m->computed = computed;
    m->density = m->causal ? (double)computed / (double)m->causal : 0;
}

void eng_metrics_set_plain(eng_head_metrics *m, int n, int d, const float *out_dense, const float *out_plain,
                           int out_stride) {
    double num = 0;
    for (int t = 0; t < n; t++) {
        const float *a = out_plain + (size_t)t * out_stride, *b = out_dense + (size_t)t * out_stride;
        for (int c = 0; c < d; c++) {
            double e = (double)a[c] - (double)b[c];
            num += e * e;
        }
    }
    m->err_num_plain = num;
    m->error_plain = m->err_den > 0 ? sqrt(num / m->err_den) : sqrt(num);
}

void eng_metrics_layer(const eng_head_metrics *heads, int n_heads, eng_layer_metrics *m) {
    memset(m, 0, sizeof *m);
    long long comp = 0, caus = 0;
    double num = 0, den = 0, rs = 0, rmin = n_heads ? 1 : 0, nump = 0;
    for (int h = 0; h < n_heads; h++) {
        nump += heads[h].err_num_plain;
        m->n_reshape += !isnan(heads[h].error_plain);
        comp += heads[h].computed;
        caus += heads[h].causal;
        num += heads[h].err_num;
        den += heads[h].err_den;
        rs += heads[h].recall;
        if (heads[h].recall < rmin) rmin = heads[h].recall;
        if (heads[h].error > m->max_error) m->max_error = heads[h].error;
    }
    m->density = caus ? (double)comp / (double)caus : 0;
    m->recall = n_heads ? rs / n_heads : 0;
    m->min_recall = rmin;
    m->error = den > 0 ? sqrt(num / den) : sqrt(num);
    m->error_plain = den > 0 ? sqrt(nump / den) : sqrt(nump);
}

double eng_metrics_kl_logits(const float *a, const float *b, int V) {
    double ma = -INFINITY, mb = -INFINITY, sa = 0, sb = 0;
    for (int i = 0; i < V; i++) {
        if (a[i] > ma) ma = a[i];
        if (b[i] > mb) mb = b[i];
    }
    for (int i = 0; i < V; i++) {
        sa += exp((double)a[i] - ma);
        sb += exp((double)b[i] - mb);
    }
    double la = ma + log(sa), lb = mb + log(sb), kl = 0;
    for (int i = 0; i < V; i++) {
        double lpa = (double)a[i] - la, lpb = (double)b[i] - lb;
        double pa = exp(lpa);
        if (pa > 0) kl += pa * (lpa - lpb);
    }
    return kl > 0 ? kl : 0; /* exact KL >= 0; clip rounding */
}

int eng_metrics_e2e(const eng_prefill_out *dense, const eng_prefill_out *sparse, eng_e2e_metrics *m, eng_err *err) {
    memset(m, 0, sizeof *m);
    if (dense->n != sparse->n || dense->vocab != sparse->vocab || dense->n < 1)
        return eng_err_set(err, "end-to-end metrics: prefills disagree (%d vs %d tokens, vocab %d vs %d)", dense->n,
                           sparse->n, dense->vocab, sparse->vocab);
    if (!dense->last_logits || !sparse->last_logits || !dense->argmax || !sparse->argmax)
        return eng_err_set(err, "end-to-end metrics: a prefill output lacks logits or argmax");
    int n = dense->n;
    m->n = n;
    m->kl_last = eng_metrics_kl_logits(dense->last_logits, sparse->last_logits, dense->vocab);
    int agree = 0;
    for (int i = 0; i < n; i++) agree += dense->argmax[i] == sparse->argmax[i];
    m->top1_agree = (double)agree / n;
    if (n > 1 && dense->next_logprob && sparse->next_logprob) {
        double a = 0, b = 0;
        for (int i = 0; i + 1 < n; i++) {
            a -= dense->next_logprob[i];
            b -= sparse->next_logprob[i];
        }
        m->nll_dense = a / (n - 1);
        m->nll_sparse = b / (n - 1);
        m->ppl_dense = exp(m->nll_dense);
        m->ppl_sparse = exp(m->nll_sparse);
    } else {
        m->nll_dense = m->nll_sparse = m->ppl_dense = m->ppl_sparse = NAN;
    }
    return 0;
}
