/* krn_ops: elementwise and row kernels of the GPU prefill, C-callable over device pointers (bf16
 * activations, f32 math): random fill (synthetic weights and benchmark inputs), embedding gather,
 * RMSNorm, RoPE (HF rotate-half, llama3 frequency scaling via precomputed inv_freq), SwiGLU,
 * residual add, f32 <-> bf16. Each has a plain-C reference check in tests/gpu_ops.c. */
#ifndef KRN_OPS_H
#define KRN_OPS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "eng_err.h"

/* x[i] = bf16(scale * u_i), u_i uniform in [-1, 1) from a counter hash of (seed, i). */
int krn_fill_random_bf16(void *x, size_t n, uint64_t seed, float scale, cudaStream_t s, eng_err *err);
/* x[i] = bf16(v). */
int krn_fill_bf16(void *x, size_t n, float v, cudaStream_t s, eng_err *err);
int krn_f32_to_bf16(const float *x, void *y, size_t n, cudaStream_t s, eng_err *err);
int krn_bf16_to_f32(const void *x, float *y, size_t n, cudaStream_t s, eng_err *err);
/* out (n, C) = emb[tokens[t]] (emb (V, C) bf16); tokens validated on the host. */
int krn_embed(const void *emb, const int *tokens, int n, int C, void *out, cudaStream_t s, eng_err *err);
/* y (n, C) = x / sqrt(mean(x^2) + eps) * w  (x, w, y bf16; y may equal x). */
int krn_rmsnorm(const void *x, const void *w, int n, int C, float eps, void *y, cudaStream_t s, eng_err *err);
/* Rotate-half RoPE in place on x (n rows of stride `stride`, heads of d): token t at position
 * pos0 + t, angle (float)pos * inv_freq[i] (inv_freq[d/2] f32 on the device). */
int krn_rope(void *x, int n, int heads, int d, int stride, int pos0, const float *inv_freq, cudaStream_t s,
             eng_err *err);
/* out (n, F) = silu(gu[:, :F]) * gu[:, F:]  (gu (n, 2F): gate then up). */
int krn_swiglu(const void *gu, int n, int F, void *out, cudaStream_t s, eng_err *err);
/* x += y (n elements, bf16; sum in f32). */
int krn_add(void *x, const void *y, size_t n, cudaStream_t s, eng_err *err);
/* x (n, C) += bias (C) per row. */
int krn_add_bias(void *x, const void *bias, int n, int C, cudaStream_t s, eng_err *err);

#ifdef __cplusplus
}
#endif

#endif
