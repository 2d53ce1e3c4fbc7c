/* krn_hattn: Hopper (sm_90a) flash attention on warpgroup MMA (wgmma), the same function as
 * krn_attn (dense causal, or the engine's sparse index: key blocks at token offsets, gathered
 * columns, band mask) for head dim 64 and 128. Reached through krn_attn_dense / krn_attn_sparse
 * (krn_attn.h), which pick it where krn_hattn_available() says the build and the card allow. */
#ifndef KRN_HATTN_H
#define KRN_HATTN_H

#include "krn_attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this build carries sm_90a code and the current device is compute capability 9.0. */
int krn_hattn_available(void);

/* cfg picks the tiling: 0 = default; dense 1 = 2 warpgroups sharing 3-stage K/V tiles, 2 = one
 * warpgroup per CTA (64 rows, 2 CTAs per SM); sparse 1 = 3 stages, 1 CTA per SM. Shapes and
 * semantics: krn_attn.h. */
int krn_hattn_dense(const krn_attn_args *a, int cfg, cudaStream_t s, eng_err *err);
int krn_hattn_sparse(const krn_attn_args *a, const krn_index_dev *ix, int cfg, cudaStream_t s, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
