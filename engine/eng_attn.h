/* eng_attn: CPU reference attention for one query head, dense causal or sparse from an index,
 * with one online softmax (fp32). Shapes: q row t at q[t*q_stride], k/v row t at
 * k[t*kv_stride] / v[t*kv_stride], head dim d, out row t at out[t*out_stride], lse[t] the
 * natural-log log-sum-exp of the scaled logits the row used (may be NULL). scale = 1/sqrt(d).
 * Dense (eng_attn_dense.c) is the fast path the CPU prefill uses; sparse (eng_attn_sparse.c)
 * computes exactly the entries the index names. */
#ifndef ENG_ATTN_H
#define ENG_ATTN_H

#include "eng_index.h"

void eng_attn_dense_head(const float *q, int q_stride, const float *k, const float *v, int kv_stride,
                         int n, int d, float *out, int out_stride, float *lse);

void eng_attn_sparse_head(const float *q, int q_stride, const float *k, const float *v, int kv_stride,
                          int n, int d, const eng_head_index *ix, float *out, int out_stride, float *lse);

#endif
