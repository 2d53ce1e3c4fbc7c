/* eng_index: the sparse index, the contract between pattern code and every attention kernel
 * (CPU reference and CUDA alike). One index per (layer, query head). For each 64-query row
 * block rb covering queries [64*rb, min(64*rb+64, n)):
 *   block_count[rb] key blocks, each 64 keys wide, starting at block_offset[rb*max_blocks + i]
 *     (a token offset, NOT necessarily a multiple of 64; blocks of one row never overlap,
 *     sorted ascending); keys > query are masked (causal), keys >= n never occur;
 *   column_count[rb] single key columns column_index[rb*max_cols + j] (sorted ascending,
 *     disjoint from the blocks, all <= the row block's first query so they need no mask).
 * Dense and A-shape are expressible too, so one kernel family serves every pattern.
 * Two refinements (owner of this header: the pattern engine, issue 3):
 *   - A block may reach past the row block's last query and even past n (MInference's VS merge
 *     extends ranges in 64-key steps); the causal mask k <= q keeps every computed key < n, but
 *     kernels must not load K/V rows >= n.
 *   - Band mask (A-shape is per-query exact upstream, which 64-wide blocks alone cannot express):
 *     when window > 0, a BLOCK key k is computed for query q only if k < sink or q - k < window.
 *     Columns are never band-masked. window == 0 (what eng_index_alloc sets) means no band. */
#ifndef ENG_INDEX_H
#define ENG_INDEX_H

#include "eng_err.h"

#define ENG_BLOCK 64

typedef struct {
    int n;              /* tokens */
    int n_rb;           /* ceil(n / 64) row blocks */
    int max_blocks;     /* capacity per row block */
    int max_cols;       /* capacity per row block */
    int *block_count;   /* [n_rb] */
    int *block_offset;  /* [n_rb * max_blocks] */
    int *column_count;  /* [n_rb] */
    int *column_index;  /* [n_rb * max_cols] */
    int sink, window;   /* band mask on block keys (see above); window 0 = off */
} eng_head_index;

/* Zeroed counts, sink = window = 0; max_blocks/max_cols may be 0 (arrays then NULL). */
int eng_index_alloc(eng_head_index *ix, int n, int max_blocks, int max_cols, eng_err *err);
void eng_index_free(eng_head_index *ix);
/* Is (q, k) computed by this index? O(blocks + log cols) per call; for drawing and tests. */
int eng_index_covers(const eng_head_index *ix, int q, int k);
/* Number of (q, k) pairs computed (causal pairs only). */
long long eng_index_count(const eng_head_index *ix);
/* Pairs computed in row block rb (causal, band-masked); eng_index_count is their sum. */
long long eng_index_count_rb(const eng_head_index *ix, int rb);
/* Check the invariants above (sorted, disjoint, in range, capacity); 0 ok, -1 with err naming the
 * row block and entry. For tests and for indexes built by other code (CUDA builders). */
int eng_index_validate(const eng_head_index *ix, eng_err *err);

#endif
