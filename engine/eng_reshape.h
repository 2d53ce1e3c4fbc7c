/* eng_reshape: Re-ttention-style statistical reshape as an option on any sparse pattern — an
 * ADAPTATION to LLM prefill (Re-ttention caches a residual across diffusion steps; prefill has no
 * steps). The mass and values of dropped keys are estimated from pooled blocks and folded into the
 * row's online softmax (ALGORITHMS.md):
 *   for query i, every aligned 64-key block J (keys [64b, 64b + 64) clipped to j <= i) of which the
 *   mask keeps NO key is "dropped"; with its mean key kbar_J, mean value vbar_J and size |J|,
 *     a_iJ = |J| exp(scale q_i . kbar_J - m_i),
 *     O_i  = (Otilde_i + sum_J a_iJ vbar_J) / (l_i + sum_J a_iJ),
 *   m_i, l_i, Otilde_i the sparse kernel's running max, denominator and unnormalised output.
 * Partly kept blocks get no estimate (their block mean would re-count the kept keys). Applied as a
 * pass after the sparse kernel: out_i * exp(lse_i) = Otilde_i exp(m_i) and exp(lse_i) = l_i exp(m_i),
 * so the same sums are formed in log space from (out, lse), exactly and without overflow. */
#ifndef ENG_RESHAPE_H
#define ENG_RESHAPE_H

#include "eng_dma.h"
#include "eng_err.h"

/* out (n rows at out_stride, the sparse output over m's pairs) is replaced by the reshaped output.
 * lse[n] is the sparse row LSE (-INFINITY for an empty row). lse_out (may be NULL) receives the
 * LSE including the estimated blocks. dropped (may be NULL) receives the number of (row, block)
 * estimates added. */
int eng_reshape_apply(const eng_head_mask *m, const float *q, int q_stride, const float *k, const float *v,
                      int kv_stride, int n, int d, float *out, int out_stride, const float *lse, float *lse_out,
                      long long *dropped, eng_err *err);

#endif
