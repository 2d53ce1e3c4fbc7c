/* eng_index: the sparse index, the contract between pattern code and every attention kernel
 * (CPU reference and CUDA alike). One index per (layer, query head). For each 64-query row
 * block rb covering queries [64*rb, min(64*rb+64, n)):
 *   block_count[rb] key blocks, each 64 keys wide, starting at block_offset[rb*max_blocks + i]
 *     (a token offset, NOT necessarily a multiple of 64; blocks of one row never overlap,
 *     sorted ascending); keys > query are masked (causal), keys >= n never occur;
 *   column_count[rb] single key columns column_index[rb*max_cols + j] (sorted ascending,
 *     disjoint from the blocks, all <= the row block's first query so they need no mask).
 * Dense and A-shape are expressible too, so one kernel family serves every pattern. */
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
} eng_head_index;

int eng_index_alloc(eng_head_index *ix, int n, int max_blocks, int max_cols, eng_err *err);
void eng_index_free(eng_head_index *ix);
/* Is (q, k) computed by this index? O(blocks + log cols) per call; for drawing and tests. */
int eng_index_covers(const eng_head_index *ix, int q, int k);
/* Number of (q, k) pairs computed (causal pairs only). */
long long eng_index_count(const eng_head_index *ix);

#endif
