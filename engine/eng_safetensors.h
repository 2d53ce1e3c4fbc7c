/* eng_safetensors: parse and validate one safetensors file held in memory (a mapping or a
 * buffer): 8-byte little-endian header length N, N bytes of JSON header, then the data bytes.
 * Used by eng_model (on mmap'd shards) and by the fuzz target (on arbitrary buffers). */
#ifndef ENG_SAFETENSORS_H
#define ENG_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "eng_err.h"
#include "eng_model.h"

/* Caps for untrusted files: real headers are a few MB and real tensors at most 4-D. */
#define ENG_ST_MAX_HEADER (100u << 20)
#define ENG_ST_MAX_TENSORS 1000000
#define ENG_ST_MAX_DIMS 4

typedef struct {
    char name[128];
    int dtype;          /* an eng_dtype, or -1 for a valid safetensors dtype we do not compute in */
    char dtype_str[8];  /* as written: "F32", "BF16", "I64", ... */
    int elem_size;      /* bytes per element */
    int ndim;
    int64_t shape[ENG_ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end; /* byte range relative to the start of the data section */
} eng_st_entry;

typedef struct {
    eng_st_entry *t;    /* [n], sorted by name (eng_st_find bisects) */
    int n;
    uint64_t data_off;  /* 8 + N: file offset of the data section */
    uint64_t data_len;  /* bytes after the header */
} eng_st_header;

/* Parse and validate a whole file of len bytes at buf. `what` (the file name) starts every
 * message. Checks: header length within the file and capped, JSON object, per tensor a known
 * dtype, at most 4 non-negative dims whose product fits, offsets ordered, within the data
 * section, aligned to the element size, sized numel * elem_size, not overlapping, names unique
 * and shorter than 128 bytes. "__metadata__" is skipped. 0 ok; -1 with err set. */
int eng_st_parse(eng_st_header *h, const void *buf, size_t len, const char *what, eng_err *err);
void eng_st_free(eng_st_header *h);
/* The entry named name, or NULL. */
const eng_st_entry *eng_st_find(const eng_st_header *h, const char *name);

#endif
