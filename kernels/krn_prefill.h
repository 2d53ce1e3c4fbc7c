/* krn_prefill: the full transformer prefill on the GPU (bf16 weights and activations, fp32
 * accumulation; cuBLAS projections and MLP, RMSNorm / RoPE / SwiGLU / residual kernels, dense or
 * pattern attention with GPU-built indexes), layer by layer, behind eng_backend's prefill. */
#ifndef KRN_PREFILL_H
#define KRN_PREFILL_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "eng_backend.h"

int krn_prefill_run(int dev, cudaStream_t st, const eng_model *m, const int *tokens, int n,
                    const eng_prefill_opts *opts, eng_prefill_out *out, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
