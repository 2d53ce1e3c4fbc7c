/* eng_gguf: llama.cpp's GGUF files (v2, v3; little-endian): header, metadata key/values (incl.
 * arrays), tensor infos and the aligned data section. eng_gguf_parse validates a whole file held
 * in memory (used by the loader on an mmap and by the fuzz target on arbitrary bytes);
 * eng_gguf_load turns a llama / qwen2 / phi3 GGUF into an eng_model (F32, F16, BF16 mapped in
 * place, Q8_0 dequantised to BF16 into buffers the model owns); eng_gguf_load_tokenizer reads the
 * tokenizer.ggml.* vocabulary. */
#ifndef ENG_GGUF_H
#define ENG_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "eng_err.h"
#include "eng_model.h"
#include "eng_tok.h"

/* Caps for untrusted files (real files: a few hundred KV pairs, under 10k tensors). */
#define ENG_GGUF_MAX_KV 100000
#define ENG_GGUF_MAX_TENSORS 1000000
#define ENG_GGUF_MAX_NAME 256
#define ENG_GGUF_MAX_ARRAY (1u << 26)

/* Metadata value types, as in the GGUF spec. */
enum {
    ENG_GGUF_U8 = 0, ENG_GGUF_I8 = 1, ENG_GGUF_U16 = 2, ENG_GGUF_I16 = 3, ENG_GGUF_U32 = 4, ENG_GGUF_I32 = 5,
    ENG_GGUF_F32 = 6, ENG_GGUF_BOOL = 7, ENG_GGUF_STRING = 8, ENG_GGUF_ARRAY = 9, ENG_GGUF_U64 = 10,
    ENG_GGUF_I64 = 11, ENG_GGUF_F64 = 12, ENG_GGUF__NTYPES
};

/* ggml tensor types this reader knows the size of (others are refused by id). */
enum { ENG_GGML_F32 = 0, ENG_GGML_F16 = 1, ENG_GGML_Q8_0 = 8, ENG_GGML_BF16 = 30 };

typedef struct {
    const char *key;        /* points into the file: not NUL-terminated, key_len bytes */
    uint64_t key_len;
    int type;               /* ENG_GGUF_* */
    /* scalars: */
    uint64_t u;             /* unsigned / bool */
    int64_t i;              /* signed */
    double f;               /* float */
    const char *str;        /* ENG_GGUF_STRING: str_len bytes in the file */
    uint64_t str_len;
    /* ENG_GGUF_ARRAY: arr_n elements of arr_type starting at arr (strings: length-prefixed) */
    int arr_type;
    uint64_t arr_n;
    const unsigned char *arr;
} eng_gguf_kv;

typedef struct {
    const char *name;       /* not NUL-terminated */
    uint64_t name_len;
    int ndim;
    int64_t ne[4];          /* ggml order: ne[0] is the contiguous (innermost) dimension */
    int type;               /* ggml type id */
    uint64_t offset;        /* relative to the data section */
    uint64_t nbytes;
} eng_gguf_tensor;

typedef struct {
    uint32_t version;
    eng_gguf_kv *kv;
    int64_t n_kv;
    eng_gguf_tensor *t;
    int64_t n_tensors;
    uint64_t alignment;
    uint64_t data_off;      /* file offset of the data section */
    const unsigned char *buf;
    size_t len;
} eng_gguf;

/* Parse and validate len bytes at buf. Checks: magic, version 2/3, counts capped and fitting,
 * every string and array within the file, value types known, arrays not nested, keys unique,
 * general.alignment a power of two, tensor names unique and < 256 bytes, 1..4 dims whose product
 * fits, known ggml types with rows whole blocks, offsets aligned, within the data section and not
 * overlapping. `what` starts every message. 0 ok; -1 with err set. */
int eng_gguf_parse(eng_gguf *g, const void *buf, size_t len, const char *what, eng_err *err);
void eng_gguf_free(eng_gguf *g);

const eng_gguf_kv *eng_gguf_find_kv(const eng_gguf *g, const char *key);
const eng_gguf_tensor *eng_gguf_find_tensor(const eng_gguf *g, const char *name);
/* A scalar integer / float / string value; def when absent. -1 with err when present with the
 * wrong type or out of range. String: *s points into the file, *n bytes. */
int eng_gguf_get_int(const eng_gguf *g, const char *key, int64_t def, int64_t lo, int64_t hi, int64_t *out,
                     const char *what, eng_err *err);
int eng_gguf_get_float(const eng_gguf *g, const char *key, double def, double *out, const char *what, eng_err *err);
int eng_gguf_get_str(const eng_gguf *g, const char *key, const char **s, uint64_t *n);
const char *eng_gguf_type_name(int ggml_type);

/* Nonzero when path names a regular file ending in ".gguf" (the eng_model_load hook). */
int eng_gguf_is_path(const char *path);

/* Build the eng_config a GGUF describes (via eng_config_parse, so the same validation applies).
 * phi3: phi3.attention.sliding_window, and longrope from the rope_factors_long/short.weight
 * tensors with phi3.rope.scaling.original_context_length and .attn_factor. */
int eng_gguf_config(const eng_gguf *g, eng_config *cfg, const char *what, eng_err *err);

/* Load a GGUF model file. llama-architecture files have their Q/K rows un-permuted back to the
 * Hugging Face (rotate-half RoPE) order (see eng_gguf.c); phi3's fused blk.N.attn_qkv (q, k, v)
 * and blk.N.ffn_up (gate, up) are exposed as row-slice views, as eng_model does for Phi-3's
 * safetensors. On failure *out is NULL. */
int eng_gguf_load(eng_model **out, const char *path, eng_err *err);

/* The tokenizer in a GGUF file's metadata (tokenizer.ggml.model "gpt2" or "llama"). */
eng_tokenizer *eng_gguf_load_tokenizer(const char *path, eng_err *err);
/* Same, from an already parsed file. */
eng_tokenizer *eng_gguf_tokenizer(const eng_gguf *g, const char *what, eng_err *err);

#endif
