/* eng_index: allocation, membership, counting and validation of the per-head sparse index
 * (the contract in eng_index.h between pattern builders and attention kernels). */
#include "eng_index.h"

#include <stdlib.h>
#include <string.h>

int eng_index_alloc(eng_head_index *ix, int n, int max_blocks, int max_cols, eng_err *err) {
    memset(ix, 0, sizeof *ix);
    if (n <= 0) return eng_err_set(err, "index: token count %d must be positive", n);
    if (max_blocks < 0 || max_cols < 0)
        return eng_err_set(err, "index: negative capacity (blocks %d, columns %d)", max_blocks, max_cols);
    ix->n = n;
    ix->n_rb = (n + ENG_BLOCK - 1) / ENG_BLOCK;
    ix->max_blocks = max_blocks;
    ix->max_cols = max_cols;
    size_t nrb = (size_t)ix->n_rb;
    ix->block_count = calloc(nrb, sizeof(int));
    ix->column_count = calloc(nrb, sizeof(int));
    if (max_blocks) ix->block_offset = calloc(nrb * (size_t)max_blocks, sizeof(int));
    if (max_cols) ix->column_index = calloc(nrb * (size_t)max_cols, sizeof(int));
    if (!ix->block_count || !ix->column_count || (max_blocks && !ix->block_offset) ||
        (max_cols && !ix->column_index)) {
        eng_index_free(ix);
        return eng_err_set(err, "index: out of memory for %d row blocks x (%d blocks + %d columns)",
                           (int)nrb, max_blocks, max_cols);
    }
    return 0;
}

void eng_index_free(eng_head_index *ix) {
    if (!ix) return;
    free(ix->block_count);
    free(ix->block_offset);
    free(ix->column_count);
    free(ix->column_index);
    memset(ix, 0, sizeof *ix);
}

static long long overlap(long long a0, long long a1, long long b0, long long b1) {
    long long lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi > lo ? hi - lo : 0;
}

/* Keys of block [off, off+64) that query q computes: causal, then the band (k < sink or k > q-window). */
static long long block_keys(const eng_head_index *ix, int off, int q) {
    long long lo = off, hi = (long long)off + ENG_BLOCK;
    if (hi > (long long)q + 1) hi = (long long)q + 1;
    if (hi <= lo) return 0;
    if (ix->window <= 0) return hi - lo;
    long long w0 = (long long)q - ix->window + 1; /* first key of the local window */
    if (w0 < 0) w0 = 0;
    long long s = ix->sink > 0 ? ix->sink : 0;
    return overlap(lo, hi, 0, s) + overlap(lo, hi, w0, hi) - overlap(lo, hi, w0, s);
}

long long eng_index_count_rb(const eng_head_index *ix, int rb) {
    int m0 = rb * ENG_BLOCK, m1 = m0 + ENG_BLOCK < ix->n ? m0 + ENG_BLOCK : ix->n;
    const int *bo = ix->block_offset + (size_t)rb * ix->max_blocks;
    const int *ci = ix->column_index + (size_t)rb * ix->max_cols;
    long long c = 0;
    for (int q = m0; q < m1; q++) {
        for (int b = 0; b < ix->block_count[rb]; b++) c += block_keys(ix, bo[b], q);
        for (int j = 0; j < ix->column_count[rb]; j++) c += ci[j] <= q && ci[j] < ix->n;
    }
    return c;
}

long long eng_index_count(const eng_head_index *ix) {
    long long c = 0;
    for (int rb = 0; rb < ix->n_rb; rb++) c += eng_index_count_rb(ix, rb);
    return c;
}

int eng_index_covers(const eng_head_index *ix, int q, int k) {
    if (q < 0 || q >= ix->n || k < 0 || k > q) return 0;
    int rb = q / ENG_BLOCK;
    const int *bo = ix->block_offset + (size_t)rb * ix->max_blocks;
    for (int b = 0; b < ix->block_count[rb]; b++) {
        if (bo[b] > k) break; /* sorted ascending */
        if (k < bo[b] + ENG_BLOCK) {
            if (ix->window <= 0) return 1;
            return k < ix->sink || q - k < ix->window;
        }
    }
    const int *ci = ix->column_index + (size_t)rb * ix->max_cols;
    int lo = 0, hi = ix->column_count[rb];
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (ci[mid] < k) lo = mid + 1;
        else hi = mid;
    }
    return lo < ix->column_count[rb] && ci[lo] == k;
}

int eng_index_validate(const eng_head_index *ix, eng_err *err) {
    if (ix->n <= 0 || ix->n_rb != (ix->n + ENG_BLOCK - 1) / ENG_BLOCK)
        return eng_err_set(err, "index: n %d and n_rb %d disagree", ix->n, ix->n_rb);
    if (ix->window < 0 || ix->sink < 0)
        return eng_err_set(err, "index: negative band (sink %d, window %d)", ix->sink, ix->window);
    for (int rb = 0; rb < ix->n_rb; rb++) {
        int m0 = rb * ENG_BLOCK;
        int last = (m0 + ENG_BLOCK < ix->n ? m0 + ENG_BLOCK : ix->n) - 1;
        int nb = ix->block_count[rb], nc = ix->column_count[rb];
        if (nb < 0 || nb > ix->max_blocks)
            return eng_err_set(err, "index: row block %d: block_count %d outside [0, %d]", rb, nb, ix->max_blocks);
        if (nc < 0 || nc > ix->max_cols)
            return eng_err_set(err, "index: row block %d: column_count %d outside [0, %d]", rb, nc, ix->max_cols);
        const int *bo = ix->block_offset + (size_t)rb * ix->max_blocks;
        const int *ci = ix->column_index + (size_t)rb * ix->max_cols;
        for (int b = 0; b < nb; b++) {
            if (bo[b] < 0 || bo[b] > last)
                return eng_err_set(err, "index: row block %d: block %d starts at %d, outside [0, %d]", rb, b,
                                   bo[b], last);
            if (b && bo[b - 1] + ENG_BLOCK > bo[b])
                return eng_err_set(err, "index: row block %d: blocks %d (%d) and %d (%d) overlap or are unsorted",
                                   rb, b - 1, bo[b - 1], b, bo[b]);
        }
        for (int j = 0; j < nc; j++) {
            if (ci[j] < 0 || ci[j] > m0)
                return eng_err_set(err, "index: row block %d: column %d is key %d, outside [0, %d]", rb, j, ci[j], m0);
            if (j && ci[j - 1] >= ci[j])
                return eng_err_set(err, "index: row block %d: columns %d (%d) and %d (%d) unsorted or repeated", rb,
                                   j - 1, ci[j - 1], j, ci[j]);
            for (int b = 0; b < nb; b++)
                if (ci[j] >= bo[b] && ci[j] < bo[b] + ENG_BLOCK)
                    return eng_err_set(err, "index: row block %d: column %d (key %d) lies inside block %d (%d)", rb,
                                       j, ci[j], b, bo[b]);
        }
    }
    return 0;
}
