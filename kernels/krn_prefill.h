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

#include <stdint.h>

/* Named synthetic shapes for benchmarks (`--synthetic NAME`): "llama3-8b" (32 layers, C 4096,
 * F 14336, 32/8 heads of 128, V 128256), "llama3-70b-layer" (one layer of the 70B: C 8192,
 * F 28672, 64/8 heads), "qwen2-7b" (28 layers, C 3584, F 18944, 28/4 heads, QKV biases,
 * V 152064), "tiny" (tests). Fills *cfg; err lists the names when name is unknown. */
int krn_synthetic_config(const char *name, eng_config *cfg, eng_err *err);
const char *krn_synthetic_names(void);
/* The prefill of a model with cfg's shapes whose weights are random (seed != 0), made on the GPU
 * without any file: norms 1, matrices uniform with std 1/sqrt(in_features), biases +-0.02. The
 * memory check and refusal are krn_prefill_run's (before any allocation). *setup_s (may be
 * NULL) gets the seconds before the first layer (weight fill, buffers); out->seconds is the whole. */
/* Bytes the prefill of n tokens needs on the GPU (the figure krn_prefill_run refuses with), and
 * what is free now; tied: the LM head shares the embedding. */
int krn_prefill_estimate(int dev, const eng_config *cfg, int n, const eng_prefill_opts *opts, int tied, double *need,
                         double *free_bytes, eng_err *err);
int krn_prefill_synthetic(int dev, cudaStream_t st, const eng_config *cfg, uint64_t seed, const int *tokens, int n,
                          const eng_prefill_opts *opts, eng_prefill_out *out, double *setup_s, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
