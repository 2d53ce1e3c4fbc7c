/* eng_cpu: the float32 CPU reference backend's building blocks (eng_cpu.c), public so the tests
 * can check each op against a direct formula. The backend itself is eng_backend_cpu_create
 * (eng_backend.h). Shapes: x (n, C) row-major; a head vector is d contiguous floats. */
#ifndef ENG_CPU_H
#define ENG_CPU_H

#include "eng_model.h"

/* The one place RoPE frequencies are computed (CPU prefill, decoder, CUDA prefill): inv_freq[d/2]
 * for a sequence whose largest position is seq_len - 1, exactly as transformers computes them in
 * float32: theta^(-2i/d); then the "llama3" remap when cfg->rope_llama3; or, when
 * cfg->rope_longrope, 1 / (ext[i] * theta^(2i/d)) with ext = rope_long_factor when seq_len >
 * rope_original_max_pos (transformers' longrope_frequency_update: max(position_ids) + 1 >
 * original), else rope_short_factor. Returns the factor cos and sin are multiplied by
 * (cfg->rope_attn_factor for longrope, else 1). */
float eng_cpu_rope_table(const eng_config *cfg, int d, int seq_len, float *inv_freq);

/* eng_cpu_rope_table for a sequence within the original context (longrope's short factors),
 * without the cos/sin factor: for callers that know the model has no longrope scaling. */
void eng_cpu_rope_freqs(const eng_config *cfg, int d, float *inv_freq);

/* Rotate-half RoPE in place on x (n, n_heads*d): token t sits at position pos0 + t; for each head
 * and i < d/2, with a = pos * inv_freq[i] (float32, as transformers):
 *   x[i]       <- x[i] cos a - x[i + d/2] sin a
 *   x[i + d/2] <- x[i + d/2] cos a + x[i] sin a */
void eng_cpu_rope_apply(float *x, int n, int n_heads, int d, int pos0, const float *inv_freq); /* d <= 1024 */

/* y (n, C) = x / sqrt(mean(x^2) + eps) * w, per row; y may equal x. */
void eng_cpu_rmsnorm(const float *x, const float *w, int n, int C, float eps, float *y);

/* x[i] <- exp(x[i] - m) for i < n (vectorised; relative error ~2e-7); returns the sum. */
float eng_cpu_exp_sum(float *x, int n, float m);

/* Worker threads the CPU paths use (online CPUs, at least 1). */
int eng_cpu_threads(void);

#endif
