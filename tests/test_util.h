/* test_util: shared helpers for the cmocka tests (random data, error norms, paths). */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

/* xorshift64*: deterministic per seed, different seed per test for fresh inputs. */
static inline uint64_t tu_rand_u64(uint64_t *s) {
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}
static inline float tu_randf(uint64_t *s) { /* uniform [-1, 1) */
    return (float)((tu_rand_u64(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}
static inline void tu_fill(float *x, size_t n, uint64_t *s, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = tu_randf(s) * scale;
}
/* ||a - b|| / ||b|| in double. */
static inline double tu_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d; den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
/* ../shared (or $ATTNSCOPE_SHARED) when present; NULL so tests can skip() cleanly. */
static inline const char *tu_shared_dir(void) {
    const char *d = getenv("ATTNSCOPE_SHARED");
    if (!d) d = "../shared";
    struct stat st;
    return stat(d, &st) == 0 && S_ISDIR(st.st_mode) ? d : NULL;
}
static inline const char *tu_bin(void) {
    const char *b = getenv("ATTNSCOPE_BIN");
    return b ? b : "build/attnscope";
}
#endif
