/* krn_map: the pooled attention map of one head on the GPU, eng_map_pool's contract exactly
 * (engine/eng_map.h: tiles, MAX / MEAN pooling, empty tiles, index restriction, lse given or
 * computed by a first pass), for the viewer through eng_backend.map_pool. Host f32 in and out. */
#ifndef KRN_MAP_H
#define KRN_MAP_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "eng_err.h"
#include "eng_index.h"
#include "eng_map.h"

/* As eng_map_pool (opts->threads ignored); d a multiple of 4 in [4, 256]. Scores are fp32 with the
 * CPU's summation order (q pre-scaled, one fma per c = 0..d-1), so they match it bit for bit; the
 * exponentials and the MEAN sums' order differ by float rounding. Works on stream st and
 * synchronises it before returning. */
int krn_map_pool(const float *q, int q_stride, const float *k, int k_stride, int n, int d, const float *lse,
                 const eng_head_index *ix, const eng_map_opts *opts, float *out, cudaStream_t st, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
