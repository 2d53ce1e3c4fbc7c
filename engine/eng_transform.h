/* eng_transform: one-shot weight transforms of a loaded model, to see what they do to attention
 * maps, metrics and logits (GPUSQ-ViT's ideas as quality probes, ALGORITHMS.md): 2:4 magnitude
 * pruning (in every group of 4 consecutive input-dim weights of a row keep the 2 largest |w|) and
 * symmetric per-channel INT8 (per output row scale = max|w| / 127, round to nearest, clamp to
 * [-127, 127], dequantised back to f32). No distillation or quantisation-aware training: the
 * original work needs them to recover accuracy. Applied to the attention (q, k, v, o) and MLP
 * (gate, up, down) weights of every layer; embeddings, norms, biases and the LM head stay as they
 * are. The result is an eng_model whose transformed tensors are owned f32 copies (the rest are
 * the source's views, so the source must outlive it): memory 4 bytes x those weights' count. */
#ifndef ENG_TRANSFORM_H
#define ENG_TRANSFORM_H

#include <stdint.h>

#include "eng_err.h"
#include "eng_model.h"

enum { ENG_XF_24 = 1, ENG_XF_INT8 = 2 }; /* flags; both = 2:4 first, then INT8 of what is left */

typedef struct {
    eng_model model;       /* cfg, dir, embed, norms, lm_head shared with the source; impl NULL */
    unsigned flags;
    float **bufs;          /* owned f32 data of the transformed tensors */
    int n_bufs;
    int64_t n_weights;     /* weights transformed */
    int64_t n_zero;        /* of those, exactly zero afterwards */
    double rel_err;        /* ||W' - W|| / ||W|| over all transformed weights */
} eng_transformed;

/* "24", "2:4", "int8", "24+int8" / "int8+24" -> flags; error names the bad text. */
int eng_transform_parse(const char *s, unsigned *flags, eng_err *err);
/* "2:4", "int8", "2:4+int8". */
const char *eng_transform_name(unsigned flags);

/* w (rows, cols) row-major in place: in each group of 4 consecutive columns keep the 2 largest
 * |w| (ties: the lower column), zero the others; a last partial group of c < 4 keeps min(2, c). */
void eng_transform_prune24(float *w, int64_t rows, int64_t cols);
/* w (rows, cols) in place: quantise each row to symmetric INT8 and dequantise; scale[rows] (may
 * be NULL) receives each row's scale (0 for an all-zero row). |w - w'| <= scale / 2 per entry. */
void eng_transform_int8(float *w, int64_t rows, int64_t cols, float *scale);

int eng_transform_model(const eng_model *src, unsigned flags, eng_transformed *out, eng_err *err);
void eng_transform_free(eng_transformed *t);

#endif
