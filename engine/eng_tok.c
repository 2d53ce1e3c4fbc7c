/* eng_tok: tokenizers (see eng_tok.h). One BPE engine serves every format: a vocabulary (id ->
 * string), a merge table ((left id, right id) -> (rank, merged id)), an added-token matcher, a
 * normaliser chain and a pre-tokeniser chain as in Hugging Face tokenizers. tokenizer.json is read
 * here; GGUF vocabularies arrive through eng_tok_from_spec (engine/eng_gguf.c). Encode order, as
 * in HF: split out added tokens -> normalise each remaining segment -> pre-tokenise into words ->
 * BPE each word (lowest merge rank first, leftmost on ties). */
#include "eng_tok.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_gguf.h"
#include "eng_regex.h"

#define TOK_JSON_MAX (256u << 20)
#define TOK_MAX_VOCAB (4 << 20)
#define TOK_MAX_MERGES (16 << 20)
#define TOK_MAX_OPS 16

/* GPT-2's pre-tokeniser pattern (ByteLevel use_regex = true). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

enum { NORM_NFC, NORM_PREPEND, NORM_REPLACE };
typedef struct {
    int type;
    char *a, *b; /* PREPEND: a; REPLACE: a -> b */
    size_t alen, blen;
} norm_op;

enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_DIGITS };
enum { BEH_REMOVED, BEH_ISOLATED, BEH_MERGED_PREV, BEH_MERGED_NEXT, BEH_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
typedef struct {
    int type;
    eng_regex *re;     /* SPLIT (regex) or BYTELEVEL with use_regex */
    char *str;         /* SPLIT (string pattern) / METASPACE replacement */
    size_t slen;
    int behavior, invert;
    int add_prefix_space;
    int prepend_scheme, split;
    int individual;    /* DIGITS */
} pre_op;

typedef struct {
    int id;
    const char *s;     /* = raw[id] */
    size_t len;
    int lstrip, rstrip, single_word;
} added_tok;

struct eng_tokenizer {
    eng_tok_kind kind;
    int n_vocab;
    int bos, eos;
    int prefix[4], nprefix;  /* ids prepended by add_bos */
    char **raw;              /* [n_vocab] vocabulary strings as written */
    int *raw_len;
    char **piece;            /* [n_vocab] printable display text */
    unsigned char *special;  /* [n_vocab] 1 for specials */
    char **bytes;            /* [n_vocab] exact decoded bytes */
    int *bytes_len;

    int *map;                /* open addressing over raw strings -> id; -1 empty */
    size_t map_mask;
    uint64_t *pkey;          /* merges: (left << 32 | right) -> rank, merged id */
    int32_t *prank, *pnew;
    size_t pmask;
    int n_merges;

    int byte_level, byte_fallback, unk, fuse_unk, ignore_merges;
    int byte_id[256];        /* byte-level: id of the mapped char; else id of <0xNN> (or -1) */
    short cp_byte[0x144];    /* inverse of byte_to_cp: code point -> byte, -1 where none */
    added_tok *added;        /* sorted by first byte, then longest first */
    int nadded;
    int added_start[257];    /* added[added_start[b] .. added_start[b+1]) begin with byte b */
    norm_op norm[TOK_MAX_OPS];
    int nnorm;
    pre_op pre[TOK_MAX_OPS];
    int npre;
    int strip_left;          /* decoder: leading spaces removed from a decode */
};

/* ---------------------------------------------------------------- small helpers */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}
static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static int map_find(const eng_tokenizer *t, const char *s, size_t n) {
    if (!t->map) return -1;
    for (size_t h = hash_bytes(s, n) & t->map_mask;; h = (h + 1) & t->map_mask) {
        int id = t->map[h];
        if (id < 0) return -1;
        if ((size_t)t->raw_len[id] == n && !memcmp(t->raw[id], s, n)) return id;
    }
}

/* Index every id by its raw string; the first id wins for duplicates. */
static int map_build(eng_tokenizer *t, eng_err *err) {
    size_t cap = 16;
    while (cap < (size_t)t->n_vocab * 2) cap *= 2;
    t->map = malloc(cap * sizeof *t->map);
    if (!t->map) return eng_err_set(err, "tokenizer: out of memory for the vocabulary index");
    memset(t->map, 0xff, cap * sizeof *t->map);
    t->map_mask = cap - 1;
    for (int id = 0; id < t->n_vocab; id++) {
        if (!t->raw[id] || !t->raw_len[id]) continue;
        size_t h = hash_bytes(t->raw[id], (size_t)t->raw_len[id]) & t->map_mask;
        int dup = 0;
        for (; t->map[h] >= 0; h = (h + 1) & t->map_mask) {
            int o = t->map[h];
            if (t->raw_len[o] == t->raw_len[id] && !memcmp(t->raw[o], t->raw[id], (size_t)t->raw_len[id])) {
                dup = 1;
                break;
            }
        }
        if (!dup) t->map[h] = id;
    }
    return 0;
}

static int pair_alloc(eng_tokenizer *t, size_t n, eng_err *err) {
    size_t cap = 16;
    while (cap < n * 2 + 2) cap *= 2;
    t->pkey = malloc(cap * sizeof *t->pkey);
    t->prank = malloc(cap * sizeof *t->prank);
    t->pnew = malloc(cap * sizeof *t->pnew);
    if (!t->pkey || !t->prank || !t->pnew) return eng_err_set(err, "tokenizer: out of memory for %zu merges", n);
    memset(t->pkey, 0xff, cap * sizeof *t->pkey);
    t->pmask = cap - 1;
    return 0;
}

/* Insert a merge; an existing pair keeps its (earlier, lower) rank. */
static void pair_put(eng_tokenizer *t, int a, int b, int rank, int merged) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t h = hash_u64(k) & t->pmask;
    for (; t->pkey[h] != UINT64_MAX; h = (h + 1) & t->pmask)
        if (t->pkey[h] == k) return;
    t->pkey[h] = k;
    t->prank[h] = rank;
    t->pnew[h] = merged;
    t->n_merges++;
}

static int pair_get(const eng_tokenizer *t, int a, int b, int *merged) {
    if (!t->pkey) return -1;
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t h = hash_u64(k) & t->pmask; t->pkey[h] != UINT64_MAX; h = (h + 1) & t->pmask)
        if (t->pkey[h] == k) {
            *merged = t->pnew[h];
            return t->prank[h];
        }
    return -1;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 to U+0100.. */
static uint32_t byte_to_cp(int b) {
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff))) n++;
    return 256u + (uint32_t)n;
}

/* Length of the valid UTF-8 sequence at s[0..n) or 0 when invalid. */
static int utf8_valid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int l;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) l = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) l = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) l = 4, cp = c & 0x07;
    else return 0;
    if ((size_t)l > n) return 0;
    for (int i = 1; i < l; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((l == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (l == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return l;
}

/* Printable label for n exact bytes: valid UTF-8 kept, controls and stray bytes escaped. */
static char *make_label(const char *b, size_t n) {
    char *o = malloc(n * 4 + 1);
    if (!o) return NULL;
    size_t k = 0;
    const unsigned char *s = (const unsigned char *)b;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c == '\n') o[k++] = '\\', o[k++] = 'n', i++;
        else if (c == '\t') o[k++] = '\\', o[k++] = 't', i++;
        else if (c == '\r') o[k++] = '\\', o[k++] = 'r', i++;
        else if (c == '\\') o[k++] = '\\', o[k++] = '\\', i++;
        else if (c < 0x20 || c == 0x7f) k += (size_t)sprintf(o + k, "\\x%02X", c), i++;
        else {
            int l = utf8_valid_len(s + i, n - i);
            if (l == 0) {
                k += (size_t)sprintf(o + k, "\\x%02X", c);
                i++;
            } else {
                memcpy(o + k, s + i, (size_t)l);
                k += (size_t)l;
                i += (size_t)l;
            }
        }
    }
    o[k] = 0;
    return o;
}

static char *memdup0(const char *s, size_t n) {
    if (n > ((size_t)1 << 40)) return NULL;
    char *o = malloc(n + 1);
    if (o) {
        if (n) memcpy(o, s, n);
        o[n] = 0;
    }
    return o;
}

/* A growable byte buffer. */
typedef struct {
    char *p;
    size_t n, cap;
} buf;

static int buf_put(buf *b, const void *s, size_t n) {
    if (n > ((size_t)1 << 40) || b->n > ((size_t)1 << 40)) return -1;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc < b->n + n + 1) nc *= 2;
        /* s may point into b itself (a word copied within the arena): keep it valid */
        uintptr_t sp = (uintptr_t)s, bp = (uintptr_t)b->p;
        int inside = b->p && sp >= bp && sp < bp + b->cap;
        size_t rel = inside ? (size_t)(sp - bp) : 0;
        char *np = realloc(b->p, nc);
        if (!np) return -1;
        b->p = np;
        b->cap = nc;
        if (inside) s = np + rel;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* A growable int array. */
typedef struct {
    int *p;
    size_t n, cap;
} ivec;

static int ivec_put(ivec *v, int x) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 256;
        int *np = realloc(v->p, nc * sizeof *np);
        if (!np) return -1;
        v->p = np;
        v->cap = nc;
    }
    v->p[v->n++] = x;
    return 0;
}

/* ---------------------------------------------------------------- allocation */

void eng_tok_free(eng_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_vocab; i++) {
        if (t->raw) free(t->raw[i]);
        if (t->piece) free(t->piece[i]);
        if (t->bytes) free(t->bytes[i]);
    }
    free(t->raw);
    free(t->raw_len);
    free(t->piece);
    free(t->bytes);
    free(t->bytes_len);
    free(t->special);
    free(t->map);
    free(t->pkey);
    free(t->prank);
    free(t->pnew);
    free(t->added);
    for (int i = 0; i < t->nnorm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    for (int i = 0; i < t->npre; i++) {
        eng_regex_free(t->pre[i].re);
        free(t->pre[i].str);
    }
    free(t);
}

static eng_tokenizer *tok_alloc(int n, eng_err *err) {
    if (n <= 0 || n > TOK_MAX_VOCAB)
        return eng_err_set(err, "tokenizer: vocabulary size %d out of range [1, %d]", n, TOK_MAX_VOCAB), NULL;
    eng_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return eng_err_set(err, "tokenizer: out of memory"), NULL;
    t->n_vocab = n;
    t->bos = t->eos = t->unk = -1;
    t->raw = calloc((size_t)n, sizeof *t->raw);
    t->raw_len = calloc((size_t)n, sizeof *t->raw_len);
    t->piece = calloc((size_t)n, sizeof *t->piece);
    t->bytes = calloc((size_t)n, sizeof *t->bytes);
    t->bytes_len = calloc((size_t)n, sizeof *t->bytes_len);
    t->special = calloc((size_t)n, 1);
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int c = 0; c < 0x144; c++) t->cp_byte[c] = -1;
    for (int b = 0; b < 256; b++) t->cp_byte[byte_to_cp(b)] = (short)b;
    if (!t->raw || !t->raw_len || !t->piece || !t->bytes || !t->bytes_len || !t->special) {
        eng_tok_free(t);
        eng_err_set(err, "tokenizer: out of memory for %d tokens", n);
        return NULL;
    }
    return t;
}

/* Set the raw string of id (replacing an earlier one). */
static int tok_set_raw(eng_tokenizer *t, int id, const char *s, size_t n, eng_err *err) {
    if (n > (1u << 20)) return eng_err_set(err, "tokenizer: token %d is %zu bytes long", id, n);
    free(t->raw[id]);
    t->raw[id] = memdup0(s, n);
    if (!t->raw[id]) return eng_err_set(err, "tokenizer: out of memory");
    t->raw_len[id] = (int)n;
    return 0;
}

/* Exact bytes of one vocabulary string (not for added tokens: those decode to their content). */
static int token_bytes(const eng_tokenizer *t, const char *s, size_t n, buf *o) {
    if (t->byte_level) {
        uint32_t *cps;
        size_t m;
        if (eng_regex_utf8_decode(s, n, &cps, NULL, &m, NULL)) return -1;
        for (size_t i = 0; i < m; i++) {
            uint32_t c = cps[i];
            int b = c < 0x144 ? t->cp_byte[c] : -1;
            char tmp[4];
            int l = b >= 0 ? (tmp[0] = (char)b, 1) : eng_regex_utf8_put(c, tmp);
            if (buf_put(o, tmp, (size_t)l)) {
                free(cps);
                return -1;
            }
        }
        free(cps);
        return 0;
    }
    if (t->kind == ENG_TOK_BPE_SPM) {
        unsigned v;
        char tail;
        if (n == 6 && sscanf(s, "<0x%2X%c", &v, &tail) == 2 && tail == '>' && s[3] != '+' && s[3] != '-') {
            char b = (char)v;
            return buf_put(o, &b, 1);
        }
        for (size_t i = 0; i < n;) { /* "▁" (E2 96 81) -> ' ' */
            if (i + 3 <= n && !memcmp(s + i, "\xe2\x96\x81", 3)) {
                if (buf_put(o, " ", 1)) return -1;
                i += 3;
            } else {
                if (buf_put(o, s + i, 1)) return -1;
                i++;
            }
        }
        return 0;
    }
    return buf_put(o, s, n);
}

/* After the vocabulary, specials, model flags are final: decoded bytes, labels, lookups. */
static int tok_finish(eng_tokenizer *t, eng_err *err) {
    buf b = {0};
    for (int id = 0; id < t->n_vocab; id++) {
        if (!t->raw[id]) { /* a hole in the id space */
            if (tok_set_raw(t, id, "", 0, err)) goto fail;
            t->special[id] = 1;
        }
        b.n = 0;
        int r = t->special[id] ? buf_put(&b, t->raw[id], (size_t)t->raw_len[id])
                               : token_bytes(t, t->raw[id], (size_t)t->raw_len[id], &b);
        if (r || buf_put(&b, "", 0)) {
            eng_err_set(err, "tokenizer: out of memory");
            goto fail;
        }
        t->bytes[id] = memdup0(b.p, b.n);
        t->bytes_len[id] = (int)b.n;
        t->piece[id] = t->raw_len[id] || !t->special[id] ? make_label(b.p, b.n) : memdup0("<unused>", 8);
        if (!t->bytes[id] || !t->piece[id]) {
            eng_err_set(err, "tokenizer: out of memory");
            goto fail;
        }
    }
    free(b.p);
    if (map_build(t, err)) return -1;
    if (t->byte_level) {
        for (int x = 0; x < 256; x++) {
            char tmp[4];
            int l = eng_regex_utf8_put(byte_to_cp(x), tmp);
            t->byte_id[x] = map_find(t, tmp, (size_t)l);
        }
    } else if (t->byte_fallback) {
        for (int x = 0; x < 256; x++) {
            char tmp[8];
            snprintf(tmp, sizeof tmp, "<0x%02X>", x);
            t->byte_id[x] = map_find(t, tmp, 6);
        }
    }
    return 0;
fail:
    free(b.p);
    return -1;
}

static int added_cmp(const void *a, const void *b) {
    const added_tok *x = a, *y = b;
    unsigned cx = (unsigned char)x->s[0], cy = (unsigned char)y->s[0];
    if (cx != cy) return cx < cy ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id - y->id;
}

static int added_index(eng_tokenizer *t) {
    if (t->nadded) qsort(t->added, (size_t)t->nadded, sizeof *t->added, added_cmp);
    int k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < t->nadded && (unsigned char)t->added[k].s[0] < (unsigned)b) k++;
        t->added_start[b] = k;
    }
    return 0;
}

/* ---------------------------------------------------------------- byte vocabulary */

eng_tokenizer *eng_tok_byte_new(int vocab_size, int bos_id, eng_err *err) {
    if (vocab_size < 256 || vocab_size > (1 << 20))
        return eng_err_set(err, "byte tokenizer: vocab_size %d out of range [256, %d]", vocab_size, 1 << 20), NULL;
    if (bos_id >= vocab_size)
        return eng_err_set(err, "byte tokenizer: bos id %d >= vocab_size %d", bos_id, vocab_size), NULL;
    eng_tokenizer *t = tok_alloc(vocab_size, err);
    if (!t) return NULL;
    t->kind = ENG_TOK_BYTE;
    t->bos = bos_id;
    if (bos_id >= 0) t->prefix[t->nprefix++] = bos_id;
    for (int i = 0; i < vocab_size; i++) {
        char raw[32];
        if (i < 256) {
            if (i >= 0x21 && i < 0x7f) snprintf(raw, sizeof raw, "%c", i);
            else snprintf(raw, sizeof raw, "<0x%02X>", i);
        } else {
            t->special[i] = 1;
            if (i == bos_id) snprintf(raw, sizeof raw, "<s>");
            else snprintf(raw, sizeof raw, "<special_%d>", i);
        }
        if (tok_set_raw(t, i, raw, strlen(raw), err)) goto fail;
    }
    for (int i = 0; i < vocab_size; i++) {
        char b = (char)i;
        t->bytes[i] = i < 256 ? memdup0(&b, 1) : memdup0(t->raw[i], (size_t)t->raw_len[i]);
        t->bytes_len[i] = i < 256 ? 1 : t->raw_len[i];
        t->piece[i] = make_label(t->bytes[i] ? t->bytes[i] : "", t->bytes[i] ? (size_t)t->bytes_len[i] : 0);
        if (!t->bytes[i] || !t->piece[i]) {
            eng_err_set(err, "byte tokenizer: out of memory");
            goto fail;
        }
    }
    return t;
fail:
    eng_tok_free(t);
    return NULL;
}

/* ---------------------------------------------------------------- BPE on one word */

typedef struct {
    int rank;
    int pos;       /* left symbol index */
    int a, b;      /* the pair as pushed, to drop stale entries */
} hent;

static int hent_less(const hent *x, const hent *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

typedef struct {
    hent *h;
    size_t n, cap;
} heap;

static int heap_push(heap *hp, hent e) {
    if (hp->n == hp->cap) {
        size_t nc = hp->cap ? hp->cap * 2 : 64;
        hent *nh = realloc(hp->h, nc * sizeof *nh);
        if (!nh) return -1;
        hp->h = nh;
        hp->cap = nc;
    }
    size_t i = hp->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hent_less(&e, &hp->h[p])) break;
        hp->h[i] = hp->h[p];
        i = p;
    }
    hp->h[i] = e;
    return 0;
}

static hent heap_pop(heap *hp) {
    hent top = hp->h[0], last = hp->h[--hp->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const hent *best = &last;
        if (l < hp->n && hent_less(&hp->h[l], best)) m = l, best = &hp->h[l];
        if (r < hp->n && hent_less(&hp->h[r], best)) m = r;
        if (m == i) break;
        hp->h[i] = hp->h[m];
        i = m;
    }
    if (hp->n) hp->h[i] = last;
    return top;
}

/* Scratch reused across words of one encode call. */
typedef struct {
    int *sym, *prev, *next;
    size_t cap;
    heap hp;
    buf tmp;
} bpe_scratch;

static int scratch_reserve(bpe_scratch *s, size_t n) {
    if (n <= s->cap) return 0;
    size_t nc = s->cap ? s->cap : 64;
    while (nc < n) nc *= 2;
    int *a = realloc(s->sym, nc * sizeof *a);
    if (a) s->sym = a;
    int *b = realloc(s->prev, nc * sizeof *b);
    if (b) s->prev = b;
    int *c = realloc(s->next, nc * sizeof *c);
    if (c) s->next = c;
    if (!a || !b || !c) return -1;
    s->cap = nc;
    return 0;
}

static void scratch_free(bpe_scratch *s) {
    free(s->sym);
    free(s->prev);
    free(s->next);
    free(s->hp.h);
    free(s->tmp.p);
}

static int push_pair(const eng_tokenizer *t, bpe_scratch *s, int left) {
    int right = s->next[left];
    if (left < 0 || right < 0) return 0;
    int merged;
    int rank = pair_get(t, s->sym[left], s->sym[right], &merged);
    if (rank < 0) return 0;
    hent e = {rank, left, s->sym[left], s->sym[right]};
    return heap_push(&s->hp, e);
}

/* BPE-encode one pre-tokenised word w[0..n) (raw bytes) and append its ids. */
static int bpe_word(const eng_tokenizer *t, bpe_scratch *s, const char *w, size_t n, ivec *out, eng_err *err) {
    if (n == 0) return 0;
    if (t->ignore_merges) { /* Llama-3: a word that is itself in the vocabulary is one token */
        int id;
        if (t->byte_level) {
            s->tmp.n = 0;
            for (size_t i = 0; i < n; i++) {
                char c[4];
                int l = eng_regex_utf8_put(byte_to_cp((unsigned char)w[i]), c);
                if (buf_put(&s->tmp, c, (size_t)l)) return eng_err_set(err, "tokenize: out of memory");
            }
            id = map_find(t, s->tmp.p, s->tmp.n);
        } else {
            id = map_find(t, w, n);
        }
        if (id >= 0) return ivec_put(out, id) ? eng_err_set(err, "tokenize: out of memory") : 0;
    }
    if (scratch_reserve(s, n)) return eng_err_set(err, "tokenize: out of memory");
    int m = 0;
    const unsigned char *u = (const unsigned char *)w;
    if (t->byte_level) {
        for (size_t i = 0; i < n; i++) {
            int id = t->byte_id[u[i]];
            if (id < 0) id = t->unk;
            if (id < 0)
                return eng_err_set(err, "tokenize: byte 0x%02X has no token and the vocabulary has no unk token", u[i]);
            s->sym[m++] = id;
        }
    } else {
        for (size_t i = 0; i < n;) {
            int l = utf8_valid_len(u + i, n - i);
            int id = l ? map_find(t, w + i, (size_t)l) : -1;
            if (l == 0) l = 1;
            if (id >= 0) {
                s->sym[m++] = id;
            } else {
                int ok = t->byte_fallback;
                for (int j = 0; j < l && ok; j++) ok = t->byte_id[u[i + (size_t)j]] >= 0;
                if (ok) {
                    for (int j = 0; j < l; j++) s->sym[m++] = t->byte_id[u[i + (size_t)j]];
                } else {
                    if (t->unk < 0)
                        return eng_err_set(err, "tokenize: character at byte %zu of a word has no token and the "
                                                "vocabulary has no unk token", i);
                    if (!(t->fuse_unk && m > 0 && s->sym[m - 1] == t->unk)) s->sym[m++] = t->unk;
                }
            }
            i += (size_t)l;
        }
    }
    for (int i = 0; i < m; i++) s->prev[i] = i - 1, s->next[i] = i + 1 < m ? i + 1 : -1;
    s->hp.n = 0;
    for (int i = 0; i + 1 < m; i++)
        if (push_pair(t, s, i)) return eng_err_set(err, "tokenize: out of memory");
    while (s->hp.n) {
        hent e = heap_pop(&s->hp);
        int l = e.pos, r = s->next[l];
        if (s->sym[l] < 0 || r < 0 || s->sym[l] != e.a || s->sym[r] != e.b) continue; /* stale */
        int merged = -1;
        if (pair_get(t, e.a, e.b, &merged) != e.rank) continue;
        s->sym[l] = merged;
        s->sym[r] = -1;
        s->next[l] = s->next[r];
        if (s->next[l] >= 0) s->prev[s->next[l]] = l;
        if ((s->prev[l] >= 0 && push_pair(t, s, s->prev[l])) || push_pair(t, s, l))
            return eng_err_set(err, "tokenize: out of memory");
    }
    for (int i = 0; i >= 0 && i < m; i = s->next[i])
        if (ivec_put(out, s->sym[i])) return eng_err_set(err, "tokenize: out of memory");
    return 0;
}

/* ---------------------------------------------------------------- normalise + pre-tokenise */

/* Words of one segment: byte ranges into arena. `first` marks a word starting at text offset 0. */
typedef struct {
    size_t off, len;
    int first;
} word;

typedef struct {
    word *w;
    size_t n, cap;
} wlist;

static int wl_put(wlist *l, size_t off, size_t len, int first) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        word *nw = realloc(l->w, nc * sizeof *nw);
        if (!nw) return -1;
        l->w = nw;
        l->cap = nc;
    }
    l->w[l->n++] = (word){off, len, first};
    return 0;
}

/* One (range, is_delimiter) piece of a split. */
typedef struct {
    size_t a, b;
    int m;
} spl;

typedef struct {
    spl *p;
    size_t n, cap;
} slist;

static int sl_put(slist *l, size_t a, size_t b, int m) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        spl *np = realloc(l->p, nc * sizeof *np);
        if (!np) return -1;
        l->p = np;
        l->cap = nc;
    }
    l->p[l->n++] = (spl){a, b, m};
    return 0;
}

/* HF SplitDelimiterBehavior applied to the pieces in l (in place). */
static void apply_behavior(slist *l, int beh) {
    size_t k = 0;
    int prev = 0;
    switch (beh) {
    case BEH_ISOLATED:
        return;
    case BEH_REMOVED:
        for (size_t i = 0; i < l->n; i++)
            if (!l->p[i].m) l->p[k++] = l->p[i];
        break;
    case BEH_MERGED_PREV:
        for (size_t i = 0; i < l->n; i++) {
            if (l->p[i].m && !prev && k > 0) l->p[k - 1].b = l->p[i].b;
            else l->p[k++] = l->p[i];
            prev = l->p[i].m;
        }
        break;
    case BEH_CONTIGUOUS:
        for (size_t i = 0; i < l->n; i++) {
            if (k > 0 && l->p[i].m == prev) l->p[k - 1].b = l->p[i].b;
            else l->p[k++] = l->p[i];
            prev = l->p[i].m;
        }
        break;
    case BEH_MERGED_NEXT: { /* right to left, then the kept pieces are already in order */
        size_t w = l->n;
        for (size_t i = l->n; i-- > 0;) {
            if (l->p[i].m && !prev && w < l->n) l->p[w].a = l->p[i].a;
            else l->p[--w] = l->p[i];
            prev = l->p[i].m;
        }
        memmove(l->p, l->p + w, (l->n - w) * sizeof *l->p);
        k = l->n - w;
        break;
    }
    }
    l->n = k;
}

/* Split word text s[0..n) into pieces by op (regex, literal string or digits). */
static int find_pieces(const pre_op *op, const char *s, size_t n, slist *l, eng_err *err) {
    l->n = 0;
    if (n == 0) return 0;
    size_t prev = 0;
    if (op->type == PRE_DIGITS) {
        for (size_t i = 0; i < n; i++)
            if (s[i] >= '0' && s[i] <= '9') {
                if (prev != i && sl_put(l, prev, i, 0)) goto oom;
                if (sl_put(l, i, i + 1, 1)) goto oom;
                prev = i + 1;
            }
    } else if (op->re) {
        uint32_t *cps;
        size_t *offs, m;
        if (eng_regex_utf8_decode(s, n, &cps, &offs, &m, err)) return -1;
        size_t from = 0, last_end = (size_t)-1, ms, me;
        int r;
        while (from <= m && (r = eng_regex_find(op->re, cps, m, from, &ms, &me, err)) == 1) {
            if (ms == me && ms == last_end) { /* no empty match right after a match */
                from = ms + 1;
                continue;
            }
            size_t bs = offs[ms], be = offs[me];
            if (prev != bs && sl_put(l, prev, bs, 0)) goto oom2;
            if (sl_put(l, bs, be, 1)) goto oom2;
            prev = be;
            last_end = me;
            from = me > ms ? me : me + 1;
            continue;
        oom2:
            free(cps);
            free(offs);
            goto oom;
        }
        free(cps);
        free(offs);
        if (r < 0) return -1;
    } else if (op->slen) {
        for (size_t i = 0; i + op->slen <= n;) {
            if (!memcmp(s + i, op->str, op->slen)) {
                if (prev != i && sl_put(l, prev, i, 0)) goto oom;
                if (sl_put(l, i, i + op->slen, 1)) goto oom;
                i += op->slen;
                prev = i;
            } else {
                i++;
            }
        }
    }
    if (prev != n && sl_put(l, prev, n, 0)) goto oom;
    return 0;
oom:
    return eng_err_set(err, "tokenize: out of memory");
}

/* Apply pre-tokeniser op to every word of *in, producing *out (new words may live in arena). */
static int pre_apply(const pre_op *op, buf *arena, wlist *in, wlist *out, slist *sl, eng_err *err) {
    out->n = 0;
    for (size_t wi = 0; wi < in->n; wi++) {
        word w = in->w[wi];
        if (op->type == PRE_BYTELEVEL || op->type == PRE_METASPACE) {
            /* rewrite the word: ByteLevel may prepend ' '; Metaspace replaces ' ' and may prepend */
            size_t start = arena->n;
            int prepend = 0;
            if (op->type == PRE_BYTELEVEL) {
                prepend = op->add_prefix_space && (w.len == 0 || arena->p[w.off] != ' ');
                if (prepend && buf_put(arena, " ", 1)) goto oom;
                if (buf_put(arena, arena->p + w.off, w.len)) goto oom;
            } else {
                for (size_t i = 0; i < w.len; i++) {
                    char c = arena->p[w.off + i];
                    if (c == ' ' ? buf_put(arena, op->str, op->slen) : buf_put(arena, &c, 1)) goto oom;
                }
                size_t nl = arena->n - start;
                int starts = nl >= op->slen && !memcmp(arena->p + start, op->str, op->slen);
                prepend = !starts && (op->prepend_scheme == PREPEND_ALWAYS ||
                                      (op->prepend_scheme == PREPEND_FIRST && w.first));
                if (prepend) { /* move the rewritten word one replacement to the right */
                    if (buf_put(arena, op->str, op->slen)) goto oom;
                    memmove(arena->p + start + op->slen, arena->p + start, nl);
                    memcpy(arena->p + start, op->str, op->slen);
                }
            }
            w.off = start;
            w.len = arena->n - start;
            int do_split = op->type == PRE_BYTELEVEL ? op->re != NULL : op->split;
            if (!do_split) {
                if (wl_put(out, w.off, w.len, w.first)) goto oom;
                continue;
            }
        }
        if (find_pieces(op, arena->p + w.off, w.len, sl, err)) return -1;
        int beh = op->type == PRE_SPLIT ? op->behavior
                  : op->type == PRE_METASPACE ? BEH_MERGED_NEXT
                  : op->type == PRE_DIGITS ? (op->individual ? BEH_ISOLATED : BEH_CONTIGUOUS)
                                           : BEH_ISOLATED;
        if (op->type == PRE_SPLIT && op->invert)
            for (size_t i = 0; i < sl->n; i++) sl->p[i].m = !sl->p[i].m;
        apply_behavior(sl, beh);
        for (size_t i = 0; i < sl->n; i++)
            if (sl->p[i].b > sl->p[i].a &&
                wl_put(out, w.off + sl->p[i].a, sl->p[i].b - sl->p[i].a, w.first && sl->p[i].a == 0))
                goto oom;
    }
    return 0;
oom:
    return eng_err_set(err, "tokenize: out of memory");
}

/* Normalise seg[0..n) into arena (appended); [*off, *off + *len). */
static int normalise(const eng_tokenizer *t, const char *seg, size_t n, buf *arena, size_t *off, size_t *len,
                     eng_err *err) {
    buf cur = {0};
    if (buf_put(&cur, seg, n)) goto oom;
    for (int i = 0; i < t->nnorm; i++) {
        const norm_op *op = &t->norm[i];
        buf nx = {0};
        if (op->type == NORM_NFC) {
            char *o;
            size_t ol;
            if (eng_regex_nfc(cur.p, cur.n, &o, &ol, err)) {
                free(cur.p);
                return -1;
            }
            nx.p = o, nx.n = ol, nx.cap = ol + 1;
        } else if (op->type == NORM_PREPEND) {
            if (cur.n && (buf_put(&nx, op->a, op->alen) || buf_put(&nx, cur.p, cur.n))) goto oom2;
            if (!cur.n && buf_put(&nx, "", 0)) goto oom2;
        } else {
            for (size_t k = 0; k < cur.n;) {
                if (op->alen && k + op->alen <= cur.n && !memcmp(cur.p + k, op->a, op->alen)) {
                    if (buf_put(&nx, op->b, op->blen)) goto oom2;
                    k += op->alen;
                } else {
                    if (buf_put(&nx, cur.p + k, 1)) goto oom2;
                    k++;
                }
            }
            if (buf_put(&nx, "", 0)) goto oom2;
        }
        free(cur.p);
        cur = nx;
        continue;
    oom2:
        free(nx.p);
        goto oom;
    }
    *off = arena->n;
    *len = cur.n;
    if (buf_put(arena, cur.p, cur.n)) goto oom;
    free(cur.p);
    return 0;
oom:
    free(cur.p);
    return eng_err_set(err, "tokenize: out of memory");
}

/* Tokenise one segment of plain text (no added tokens) that starts at text offset seg_off. */
static int encode_segment(const eng_tokenizer *t, const char *seg, size_t n, size_t seg_off, bpe_scratch *s,
                          ivec *out, eng_err *err) {
    buf arena = {0};
    wlist a = {0}, b = {0};
    slist sl = {0};
    int rc = -1;
    size_t off = 0, len = 0;
    if (normalise(t, seg, n, &arena, &off, &len, err)) goto done;
    if (wl_put(&a, off, len, seg_off == 0)) goto oom;
    for (int i = 0; i < t->npre; i++) {
        if (pre_apply(&t->pre[i], &arena, &a, &b, &sl, err)) goto done;
        wlist tmp = a;
        a = b;
        b = tmp;
    }
    for (size_t i = 0; i < a.n; i++)
        if (bpe_word(t, s, arena.p + a.w[i].off, a.w[i].len, out, err)) goto done;
    rc = 0;
    goto done;
oom:
    eng_err_set(err, "tokenize: out of memory");
done:
    free(arena.p);
    free(a.w);
    free(b.w);
    free(sl.p);
    return rc;
}

static int is_space_at(const char *s, size_t n, size_t i, size_t *cl) {
    uint32_t *c;
    size_t m;
    size_t take = n - i < 4 ? n - i : 4;
    if (eng_regex_utf8_decode(s + i, take, &c, NULL, &m, NULL)) return 0;
    int sp = m > 0 && c[0] < ENG_REGEX_RAW && eng_regex_is_space(c[0]);
    char tmp[4];
    *cl = m > 0 ? (size_t)eng_regex_utf8_put(c[0], tmp) : 1;
    free(c);
    return sp;
}

/* Length of whitespace ending at s[end) going left (not before lo). */
static size_t space_left(const char *s, size_t lo, size_t end) {
    size_t i = end;
    while (i > lo) {
        size_t j = i - 1;
        while (j > lo && ((unsigned char)s[j] & 0xc0) == 0x80 && i - j < 4) j--;
        size_t cl;
        if (!is_space_at(s, i, j, &cl) || j + cl != i) break;
        i = j;
    }
    return end - i;
}

static int is_word_char_at(const char *s, size_t n, size_t i) {
    uint32_t *c;
    size_t m;
    size_t take = n - i < 4 ? n - i : 4;
    if (i >= n || eng_regex_utf8_decode(s + i, take, &c, NULL, &m, NULL)) return 0;
    int cat = m ? eng_regex_category(c[0]) : 0;
    free(c);
    const char *nm = eng_regex_category_name(cat);
    return nm[0] == 'L' || nm[0] == 'N' || nm[0] == 'M' || !strcmp(nm, "Pc");
}

static int encode_text(const eng_tokenizer *t, const char *text, size_t len, ivec *out, eng_err *err) {
    bpe_scratch s = {0};
    size_t seg = 0; /* start of the pending plain-text segment */
    size_t i = 0;
    int rc = -1;
    while (i < len) {
        unsigned c0 = (unsigned char)text[i];
        const added_tok *hit = NULL;
        for (int k = t->added_start[c0]; k < t->added_start[c0 + 1]; k++) {
            const added_tok *a = &t->added[k];
            if (a->len <= len - i && !memcmp(text + i, a->s, a->len)) {
                if (a->single_word && ((i > 0 && is_word_char_at(text, len, i - 1)) ||
                                       is_word_char_at(text, len, i + a->len)))
                    continue;
                hit = a; /* sorted longest first: the first hit is the longest */
                break;
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        size_t a0 = i, a1 = i + hit->len;
        if (hit->lstrip) a0 -= space_left(text, seg, a0);
        if (hit->rstrip) {
            size_t cl;
            while (a1 < len && is_space_at(text, len, a1, &cl)) a1 += cl;
        }
        if (a0 > seg && encode_segment(t, text + seg, a0 - seg, seg, &s, out, err)) goto done;
        if (ivec_put(out, hit->id)) goto oom;
        seg = i = a1;
    }
    if (len > seg && encode_segment(t, text + seg, len - seg, seg, &s, out, err)) goto done;
    rc = 0;
    goto done;
oom:
    eng_err_set(err, "tokenize: out of memory");
done:
    scratch_free(&s);
    return rc;
}

/* ---------------------------------------------------------------- tokenizer.json */

static const cJSON *jget(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }
static int jbool(const cJSON *o, const char *k, int def) {
    const cJSON *j = jget(o, k);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : def;
}
static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *j = jget(o, k);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}
/* A {"String": s} or {"Regex": r} pattern. */
static int jpattern(const cJSON *o, const char **s, int *is_regex) {
    const cJSON *p = jget(o, "pattern");
    if (cJSON_IsString(p)) return *s = p->valuestring, *is_regex = 0, 0;
    const char *x = jstr(p, "String");
    if (x) return *s = x, *is_regex = 0, 0;
    x = jstr(p, "Regex");
    if (x) return *s = x, *is_regex = 1, 0;
    return -1;
}

static int add_norm(eng_tokenizer *t, const cJSON *n, const char *what, int depth, eng_err *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type = jstr(n, "type");
    if (!type) return eng_err_set(err, "%s: normalizer without a \"type\"", what);
    if (!strcmp(type, "Sequence")) {
        const cJSON *l = jget(n, "normalizers"), *e;
        if (!cJSON_IsArray(l) || depth > 4) return eng_err_set(err, "%s: bad Sequence normalizer", what);
        cJSON_ArrayForEach(e, l) if (add_norm(t, e, what, depth + 1, err)) return -1;
        return 0;
    }
    if (t->nnorm >= TOK_MAX_OPS) return eng_err_set(err, "%s: more than %d normalizers", what, TOK_MAX_OPS);
    norm_op *op = &t->norm[t->nnorm];
    memset(op, 0, sizeof *op);
    if (!strcmp(type, "NFC")) {
        op->type = NORM_NFC;
    } else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return eng_err_set(err, "%s: Prepend normalizer without \"prepend\"", what);
        op->type = NORM_PREPEND;
        op->alen = strlen(p);
        if (!(op->a = memdup0(p, op->alen))) return eng_err_set(err, "%s: out of memory", what);
    } else if (!strcmp(type, "Replace")) {
        const char *pat, *content = jstr(n, "content");
        int is_re;
        if (jpattern(n, &pat, &is_re) || !content)
            return eng_err_set(err, "%s: Replace normalizer without pattern/content", what);
        if (is_re) return eng_err_set(err, "%s: Replace normalizer with a regex pattern is not supported", what);
        op->type = NORM_REPLACE;
        op->alen = strlen(pat);
        op->blen = strlen(content);
        op->a = memdup0(pat, op->alen);
        op->b = memdup0(content, op->blen);
        if (!op->a || !op->b) {
            free(op->a);
            free(op->b);
            return eng_err_set(err, "%s: out of memory", what);
        }
    } else {
        return eng_err_set(err, "%s: normalizer \"%s\" is not supported (NFC, Prepend, Replace, Sequence are)", what,
                           type);
    }
    t->nnorm++;
    return 0;
}

static int add_pre(eng_tokenizer *t, const cJSON *n, const char *what, int depth, eng_err *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type = jstr(n, "type");
    if (!type) return eng_err_set(err, "%s: pre_tokenizer without a \"type\"", what);
    if (!strcmp(type, "Sequence")) {
        const cJSON *l = jget(n, "pretokenizers"), *e;
        if (!cJSON_IsArray(l) || depth > 4) return eng_err_set(err, "%s: bad Sequence pre_tokenizer", what);
        cJSON_ArrayForEach(e, l) if (add_pre(t, e, what, depth + 1, err)) return -1;
        return 0;
    }
    if (t->npre >= TOK_MAX_OPS) return eng_err_set(err, "%s: more than %d pre_tokenizers", what, TOK_MAX_OPS);
    pre_op *op = &t->pre[t->npre];
    memset(op, 0, sizeof *op);
    if (!strcmp(type, "Split")) {
        const char *pat;
        int is_re;
        if (jpattern(n, &pat, &is_re)) return eng_err_set(err, "%s: Split pre_tokenizer without a pattern", what);
        const char *beh = jstr(n, "behavior");
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        op->behavior = -1;
        for (int i = 0; i < 5; i++)
            if (beh && !strcmp(beh, names[i])) op->behavior = i;
        if (op->behavior < 0)
            return eng_err_set(err, "%s: Split behavior \"%s\" is not known", what, beh ? beh : "(missing)");
        op->type = PRE_SPLIT;
        op->invert = jbool(n, "invert", 0);
        if (is_re) {
            eng_err e2;
            if (!(op->re = eng_regex_compile(pat, &e2)))
                return eng_err_set(err, "%s: Split pattern: %s", what, e2.msg);
        } else {
            op->slen = strlen(pat);
            if (!(op->str = memdup0(pat, op->slen))) return eng_err_set(err, "%s: out of memory", what);
        }
    } else if (!strcmp(type, "ByteLevel")) {
        op->type = PRE_BYTELEVEL;
        op->add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1) && !(op->re = eng_regex_compile(GPT2_PATTERN, err))) return -1;
        t->byte_level = 1;
    } else if (!strcmp(type, "Metaspace")) {
        op->type = PRE_METASPACE;
        const char *rep = jstr(n, "replacement");
        if (!rep) rep = "\xe2\x96\x81";
        op->slen = strlen(rep);
        if (!op->slen) return eng_err_set(err, "%s: Metaspace with an empty replacement", what);
        if (!(op->str = memdup0(rep, op->slen))) return eng_err_set(err, "%s: out of memory", what);
        const char *ps = jstr(n, "prepend_scheme");
        if (ps) {
            op->prepend_scheme = !strcmp(ps, "always") ? PREPEND_ALWAYS
                                 : !strcmp(ps, "first") ? PREPEND_FIRST
                                 : !strcmp(ps, "never") ? PREPEND_NEVER
                                                        : -1;
            if (op->prepend_scheme < 0) {
                free(op->str);
                return eng_err_set(err, "%s: Metaspace prepend_scheme \"%s\" is not known", what, ps);
            }
        } else {
            op->prepend_scheme = jbool(n, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
        }
        op->split = jbool(n, "split", 1);
    } else if (!strcmp(type, "Digits")) {
        op->type = PRE_DIGITS;
        op->individual = jbool(n, "individual_digits", 0);
    } else {
        return eng_err_set(err,
                           "%s: pre_tokenizer \"%s\" is not supported (Split, ByteLevel, Metaspace, Digits, "
                           "Sequence are)",
                           what, type);
    }
    t->npre++;
    return 0;
}

/* Leading special ids of a TemplateProcessing "single" template (possibly inside a Sequence). */
static void read_template(eng_tokenizer *t, const cJSON *pp, int depth) {
    if (!pp || depth > 4) return;
    const char *type = jstr(pp, "type");
    if (!type) return;
    if (!strcmp(type, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, jget(pp, "processors")) read_template(t, e, depth + 1);
        return;
    }
    if (strcmp(type, "TemplateProcessing")) return;
    const cJSON *single = jget(pp, "single"), *e, *specials = jget(pp, "special_tokens");
    t->nprefix = 0;
    cJSON_ArrayForEach(e, single) {
        const cJSON *st = jget(e, "SpecialToken");
        if (!st) break; /* the sequence itself: the prefix ends */
        const char *name = jstr(st, "id");
        const cJSON *ids = name ? jget(jget(specials, name), "ids") : NULL, *x;
        cJSON_ArrayForEach(x, ids) {
            if (cJSON_IsNumber(x) && x->valuedouble >= 0 && x->valuedouble < t->n_vocab && t->nprefix < 4)
                t->prefix[t->nprefix++] = (int)x->valuedouble;
        }
    }
}

/* bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}. */
static int config_token(const eng_tokenizer *t, const cJSON *tc, const char *key) {
    const cJSON *j = jget(tc, key);
    const char *s = cJSON_IsString(j) ? j->valuestring : jstr(j, "content");
    return s ? map_find(t, s, strlen(s)) : -1;
}

static char *slurp(const char *path, size_t cap, size_t *len, eng_err *err) {
    /* O_NONBLOCK: opening a FIFO must not block (the fstat below refuses it); no effect on files */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f && fd >= 0) close(fd);
    if (!f) return eng_err_set(err, "%s: cannot open: %s", path, strerror(errno)), NULL;
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        fclose(f);
        return eng_err_set(err, "%s: not a regular file", path), NULL;
    }
    if ((uint64_t)st.st_size > cap) {
        fclose(f);
        return eng_err_set(err, "%s: %lld bytes is larger than the %zu-byte cap", path, (long long)st.st_size, cap),
               NULL;
    }
    char *p = malloc((size_t)st.st_size + 1);
    if (!p) {
        fclose(f);
        return eng_err_set(err, "%s: out of memory", path), NULL;
    }
    size_t n = fread(p, 1, (size_t)st.st_size, f);
    fclose(f);
    if (n != (size_t)st.st_size) {
        free(p);
        return eng_err_set(err, "%s: short read", path), NULL;
    }
    p[n] = 0;
    *len = n;
    return p;
}

/* Parse a merge: "a b" (exactly one space) or ["a", "b"]. */
static int merge_parts(const cJSON *m, const char **a, size_t *al, const char **b, size_t *bl) {
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ')) return -1;
        *a = s, *al = (size_t)(sp - s), *b = sp + 1, *bl = strlen(sp + 1);
        return 0;
    }
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2) {
        const cJSON *x = cJSON_GetArrayItem(m, 0), *y = cJSON_GetArrayItem(m, 1);
        if (!cJSON_IsString(x) || !cJSON_IsString(y)) return -1;
        *a = x->valuestring, *al = strlen(x->valuestring), *b = y->valuestring, *bl = strlen(y->valuestring);
        return 0;
    }
    return -1;
}

static int add_merge(eng_tokenizer *t, const char *a, size_t al, const char *b, size_t bl, int rank, buf *tmp,
                     const char *what, eng_err *err) {
    int ia = map_find(t, a, al), ib = map_find(t, b, bl);
    tmp->n = 0;
    if (buf_put(tmp, a, al) || buf_put(tmp, b, bl)) return eng_err_set(err, "%s: out of memory", what);
    int im = map_find(t, tmp->p, tmp->n);
    if (ia < 0 || ib < 0 || im < 0)
        return eng_err_set(err, "%s: merge %d (\"%.*s\" \"%.*s\") uses a token not in the vocabulary", what, rank,
                           (int)(al > 64 ? 64 : al), a, (int)(bl > 64 ? 64 : bl), b);
    pair_put(t, ia, ib, rank, im);
    return 0;
}

static eng_tokenizer *load_json(const char *path, const eng_config *cfg, eng_err *err) {
    size_t len;
    char *txt = slurp(path, TOK_JSON_MAX, &len, err);
    if (!txt) return NULL;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return eng_err_set(err, "%s: not a JSON object", path), NULL;
    }
    eng_tokenizer *t = NULL;
    buf tmp = {0};
    const cJSON *model = jget(root, "model");
    const char *mtype = jstr(model, "type");
    if (!cJSON_IsObject(model)) {
        eng_err_set(err, "%s: no \"model\" object", path);
        goto fail;
    }
    if (mtype && strcmp(mtype, "BPE")) {
        eng_err_set(err, "%s: model type \"%s\" is not supported (BPE is)", path, mtype);
        goto fail;
    }
    const cJSON *vocab = jget(model, "vocab"), *merges = jget(model, "merges"), *added = jget(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) {
        eng_err_set(err, "%s: model.vocab is not an object", path);
        goto fail;
    }
    if (merges && !cJSON_IsArray(merges)) {
        eng_err_set(err, "%s: model.merges is not an array", path);
        goto fail;
    }
    const char *cs = jstr(model, "continuing_subword_prefix"), *ew = jstr(model, "end_of_word_suffix");
    if ((cs && *cs) || (ew && *ew)) {
        eng_err_set(err, "%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported", path);
        goto fail;
    }
    const cJSON *dropout = jget(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) {
        eng_err_set(err, "%s: BPE dropout is not supported", path);
        goto fail;
    }
    /* id space: the largest id of vocab and added tokens */
    long maxid = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= TOK_MAX_VOCAB ||
            e->valuedouble != (double)(long)e->valuedouble) {
            eng_err_set(err, "%s: vocab entry \"%.64s\" has a bad id", path, e->string ? e->string : "");
            goto fail;
        }
        if ((long)e->valuedouble > maxid) maxid = (long)e->valuedouble;
    }
    if (added && !cJSON_IsArray(added)) {
        eng_err_set(err, "%s: added_tokens is not an array", path);
        goto fail;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = jget(e, "id");
        const char *c = jstr(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= TOK_MAX_VOCAB || !c || !*c) {
            eng_err_set(err, "%s: an added token lacks a valid id or content", path);
            goto fail;
        }
        if ((long)id->valuedouble > maxid) maxid = (long)id->valuedouble;
    }
    if (maxid < 0) {
        eng_err_set(err, "%s: empty vocabulary", path);
        goto fail;
    }
    if (!(t = tok_alloc((int)maxid + 1, err))) goto fail;
    cJSON_ArrayForEach(e, vocab) {
        int id = (int)e->valuedouble;
        if (t->raw[id]) {
            eng_err_set(err, "%s: id %d appears twice in model.vocab", path, id);
            goto fail;
        }
        if (tok_set_raw(t, id, e->string, strlen(e->string), err)) goto fail;
    }
    int nadded = cJSON_GetArraySize(added);
    t->added = calloc((size_t)nadded + 1, sizeof *t->added);
    if (!t->added) {
        eng_err_set(err, "%s: out of memory", path);
        goto fail;
    }
    cJSON_ArrayForEach(e, added) {
        int id = (int)jget(e, "id")->valuedouble;
        const char *c = jstr(e, "content");
        if (tok_set_raw(t, id, c, strlen(c), err)) goto fail;
        t->special[id] = (unsigned char)jbool(e, "special", 0);
        added_tok *a = &t->added[t->nadded++];
        a->id = id;
        a->len = strlen(c);
        a->lstrip = jbool(e, "lstrip", 0);
        a->rstrip = jbool(e, "rstrip", 0);
        a->single_word = jbool(e, "single_word", 0);
    }
    /* pipeline */
    if (add_norm(t, jget(root, "normalizer"), path, 0, err)) goto fail;
    if (add_pre(t, jget(root, "pre_tokenizer"), path, 0, err)) goto fail;
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    t->kind = t->byte_level ? ENG_TOK_BPE_BYTES : ENG_TOK_BPE_SPM;
    const cJSON *dec = jget(root, "decoder");
    const char *dtype = jstr(dec, "type");
    if (dtype && !strcmp(dtype, "ByteLevel")) t->byte_level = 1, t->kind = ENG_TOK_BPE_BYTES;
    if (dtype && !strcmp(dtype, "Metaspace")) {
        const char *ps = jstr(dec, "prepend_scheme");
        t->strip_left = ps ? strcmp(ps, "never") != 0 : jbool(dec, "add_prefix_space", 1);
    }
    if (dtype && !strcmp(dtype, "Sequence")) {
        cJSON_ArrayForEach(e, jget(dec, "decoders")) {
            const char *ty = jstr(e, "type"), *content = jstr(e, "content");
            const cJSON *st = jget(e, "start");
            if (ty && !strcmp(ty, "Strip") && content && !strcmp(content, " ") && cJSON_IsNumber(st))
                t->strip_left = st->valueint < 0 ? 0 : st->valueint > 8 ? 8 : st->valueint;
        }
    }
    if (tok_finish(t, err)) goto fail;
    for (int i = 0; i < t->nadded; i++) t->added[i].s = t->raw[t->added[i].id];
    added_index(t);
    const char *unk = jstr(model, "unk_token");
    if (unk && (t->unk = map_find(t, unk, strlen(unk))) < 0) {
        eng_err_set(err, "%s: unk_token \"%.64s\" is not in the vocabulary", path, unk);
        goto fail;
    }
    int nm = cJSON_GetArraySize(merges);
    if (nm > TOK_MAX_MERGES) {
        eng_err_set(err, "%s: %d merges is more than the cap %d", path, nm, TOK_MAX_MERGES);
        goto fail;
    }
    if (pair_alloc(t, (size_t)nm, err)) goto fail;
    int rank = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        size_t al, bl;
        if (merge_parts(e, &a, &al, &b, &bl)) {
            eng_err_set(err, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", path, rank);
            goto fail;
        }
        if (add_merge(t, a, al, b, bl, rank, &tmp, path, err)) goto fail;
        rank++;
    }
    /* BOS for add_bos: the post-processor template; else tokenizer_config.json next to the file;
     * else config.json's bos_token_id. EOS: tokenizer_config.json, else config.json. */
    read_template(t, jget(root, "post_processor"), 0);
    {
        char dir[4096], tcp[4200];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
        snprintf(tcp, sizeof tcp, "%s/tokenizer_config.json", dir);
        size_t tl;
        eng_err ignore;
        struct stat st;
        char *tct = stat(tcp, &st) == 0 ? slurp(tcp, 64u << 20, &tl, &ignore) : NULL;
        cJSON *tc = tct ? cJSON_ParseWithLength(tct, tl) : NULL;
        free(tct);
        int cfg_bos = cfg && cfg->bos_token_id >= 0 && cfg->bos_token_id < t->n_vocab ? cfg->bos_token_id : -1;
        int cfg_eos = cfg && cfg->eos_token_id >= 0 && cfg->eos_token_id < t->n_vocab ? cfg->eos_token_id : -1;
        if (tc) {
            t->bos = config_token(t, tc, "bos_token");
            t->eos = config_token(t, tc, "eos_token");
            if (t->nprefix == 0 && t->bos >= 0 && jbool(tc, "add_bos_token", 1)) t->prefix[t->nprefix++] = t->bos;
            if (t->eos < 0) t->eos = cfg_eos;
        } else {
            if (t->nprefix == 0 && cfg_bos >= 0) t->prefix[t->nprefix++] = cfg_bos;
            t->eos = cfg_eos;
        }
        if (t->bos < 0 && t->nprefix) t->bos = t->prefix[0];
        if (t->bos < 0) t->bos = cfg_bos;
        cJSON_Delete(tc);
    }
    if (t->bos >= 0) t->special[t->bos] = 1;
    if (t->eos >= 0) t->special[t->eos] = 1;
    free(tmp.p);
    cJSON_Delete(root);
    return t;
fail:
    free(tmp.p);
    cJSON_Delete(root);
    eng_tok_free(t);
    return NULL;
}

/* ---------------------------------------------------------------- from a spec (GGUF) */

eng_tokenizer *eng_tok_from_spec(const eng_tok_spec *sp, eng_err *err) {
    const char *what = sp->what ? sp->what : "tokenizer";
    if (sp->kind != ENG_TOK_BPE_BYTES && sp->kind != ENG_TOK_BPE_SPM)
        return eng_err_set(err, "%s: tokenizer kind must be byte-level or SentencePiece BPE", what), NULL;
    if (!sp->tokens || sp->n_vocab <= 0) return eng_err_set(err, "%s: no tokens", what), NULL;
    eng_tokenizer *t = tok_alloc(sp->n_vocab, err);
    buf tmp = {0};
    if (!t) return NULL;
    t->kind = sp->kind;
    t->byte_level = sp->kind == ENG_TOK_BPE_BYTES;
    t->byte_fallback = sp->kind == ENG_TOK_BPE_SPM;
    int nspecial = 0;
    for (int i = 0; i < sp->n_vocab; i++) {
        if (tok_set_raw(t, i, sp->tokens[i], sp->token_lens[i], err)) goto fail;
        int ty = sp->token_types ? sp->token_types[i] : ENG_TOK_TYPE_NORMAL;
        if (ty == ENG_TOK_TYPE_CONTROL || ty == ENG_TOK_TYPE_USER || ty == ENG_TOK_TYPE_UNKNOWN) {
            if (ty != ENG_TOK_TYPE_USER) t->special[i] = 1;
            if (sp->token_lens[i] > 0) nspecial++;
        }
        if (ty == ENG_TOK_TYPE_UNKNOWN && t->unk < 0) t->unk = i;
    }
    t->added = calloc((size_t)nspecial + 1, sizeof *t->added);
    if (!t->added) {
        eng_err_set(err, "%s: out of memory", what);
        goto fail;
    }
    /* the normaliser / pre-tokeniser llama.cpp applies for this vocabulary type */
    t->ignore_merges = sp->ignore_merges;
    if (sp->nfc) t->norm[t->nnorm++].type = NORM_NFC;
    if (sp->kind == ENG_TOK_BPE_SPM) {
        /* llama.cpp: a space before the first segment and before each segment after a special
         * token, then spaces -> "▁" = HF's legacy Sequence[Prepend("▁"), Replace(" ", "▁")] */
        norm_op *pp = &t->norm[t->nnorm++], *rp = &t->norm[t->nnorm++];
        pp->type = NORM_PREPEND;
        rp->type = NORM_REPLACE;
        pp->a = memdup0("\xe2\x96\x81", 3);
        rp->a = memdup0(" ", 1);
        rp->b = memdup0("\xe2\x96\x81", 3);
        pp->alen = 3, rp->alen = 1, rp->blen = 3;
        if (!pp->a || !rp->a || !rp->b) {
            eng_err_set(err, "%s: out of memory", what);
            goto fail;
        }
        if (!sp->add_space_prefix) pp->alen = 0;
        t->strip_left = sp->add_space_prefix ? 1 : 0;
    } else {
        pre_op *op = &t->pre[t->npre++];
        op->type = PRE_SPLIT;
        op->behavior = BEH_ISOLATED;
        if (!(op->re = eng_regex_compile(sp->pre_regex ? sp->pre_regex : GPT2_PATTERN, err))) goto fail;
    }
    if (tok_finish(t, err)) goto fail;
    for (int i = 0; i < sp->n_vocab; i++) {
        int ty = sp->token_types ? sp->token_types[i] : ENG_TOK_TYPE_NORMAL;
        if ((ty == ENG_TOK_TYPE_CONTROL || ty == ENG_TOK_TYPE_USER || ty == ENG_TOK_TYPE_UNKNOWN) &&
            t->raw_len[i] > 0) {
            added_tok *a = &t->added[t->nadded++];
            a->id = i;
            a->s = t->raw[i];
            a->len = (size_t)t->raw_len[i];
        }
    }
    added_index(t);
    if (sp->n_merges > 0) {
        if (sp->n_merges > TOK_MAX_MERGES) {
            eng_err_set(err, "%s: %d merges is more than the cap %d", what, sp->n_merges, TOK_MAX_MERGES);
            goto fail;
        }
        if (pair_alloc(t, (size_t)sp->n_merges, err)) goto fail;
        for (int r = 0; r < sp->n_merges; r++) {
            const char *s = sp->merges[r], *space = memchr(s, ' ', sp->merge_lens[r]);
            if (!space) {
                eng_err_set(err, "%s: merge %d has no space", what, r);
                goto fail;
            }
            size_t al = (size_t)(space - s);
            if (add_merge(t, s, al, space + 1, sp->merge_lens[r] - al - 1, r, &tmp, what, err)) goto fail;
        }
    } else if (sp->scores) {
        /* SentencePiece: merge the adjacent pair whose concatenation has the highest score. Every
         * split of every normal token into two vocabulary tokens becomes a merge ranked by score. */
        int *order = malloc((size_t)sp->n_vocab * sizeof *order);
        size_t npairs = 0;
        if (!order) {
            eng_err_set(err, "%s: out of memory", what);
            goto fail;
        }
        for (int i = 0; i < sp->n_vocab; i++) order[i] = i;
        /* insertion-free ranking: sort ids by descending score (ties: lower id first) */
        const float *sc = sp->scores;
        for (int gap = sp->n_vocab / 2; gap > 0; gap /= 2) /* shell sort: no qsort context pointer in C11 */
            for (int i = gap; i < sp->n_vocab; i++) {
                int x = order[i], j = i;
                while (j >= gap && (sc[order[j - gap]] < sc[x] || (sc[order[j - gap]] == sc[x] && order[j - gap] > x))) {
                    order[j] = order[j - gap];
                    j -= gap;
                }
                order[j] = x;
            }
        for (int i = 0; i < sp->n_vocab; i++) npairs += (size_t)(t->raw_len[i] > 1 ? t->raw_len[i] - 1 : 0);
        if (pair_alloc(t, npairs, err)) {
            free(order);
            goto fail;
        }
        for (int r = 0; r < sp->n_vocab; r++) {
            int id = order[r];
            int ty = sp->token_types ? sp->token_types[id] : ENG_TOK_TYPE_NORMAL;
            if (ty != ENG_TOK_TYPE_NORMAL && ty != ENG_TOK_TYPE_USER) continue;
            const char *s = t->raw[id];
            for (int k = 1; k < t->raw_len[id]; k++) {
                if (((unsigned char)s[k] & 0xc0) == 0x80) continue; /* split only between characters */
                int a = map_find(t, s, (size_t)k), b = map_find(t, s + k, (size_t)(t->raw_len[id] - k));
                if (a >= 0 && b >= 0) pair_put(t, a, b, r, id);
            }
        }
        free(order);
    }
    t->bos = sp->bos >= 0 && sp->bos < t->n_vocab ? sp->bos : -1;
    t->eos = sp->eos >= 0 && sp->eos < t->n_vocab ? sp->eos : -1;
    if (sp->add_bos && t->bos >= 0) t->prefix[t->nprefix++] = t->bos;
    if (t->bos >= 0) t->special[t->bos] = 1;
    if (t->eos >= 0) t->special[t->eos] = 1;
    free(tmp.p);
    return t;
fail:
    free(tmp.p);
    eng_tok_free(t);
    return NULL;
}

const char *eng_tok_pre_regex(const char *gguf_pre) {
    if (!gguf_pre) return GPT2_PATTERN;
    if (!strcmp(gguf_pre, "llama-bpe") || !strcmp(gguf_pre, "llama3") || !strcmp(gguf_pre, "smaug-bpe"))
        return LLAMA3_PATTERN;
    if (!strcmp(gguf_pre, "qwen2")) return QWEN2_PATTERN;
    if (!strcmp(gguf_pre, "default") || !strcmp(gguf_pre, "gpt2") || !strcmp(gguf_pre, "gpt-2")) return GPT2_PATTERN;
    return NULL;
}

/* ---------------------------------------------------------------- public API */

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}
static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

eng_tokenizer *eng_tok_load(const char *path, const eng_config *cfg, eng_err *err) {
    if (!path) return eng_err_set(err, "tokenizer: no path"), NULL;
    if (is_dir(path)) {
        char p[4200];
        snprintf(p, sizeof p, "%s/tokenizer.json", path);
        if (is_file(p)) return load_json(p, cfg, err);
        if (cfg && cfg->vocab_size >= 256 && cfg->vocab_size <= 512)
            return eng_tok_byte_new(cfg->vocab_size, cfg->bos_token_id, err);
        return eng_err_set(err,
                           "%s: no tokenizer.json and vocab_size %d does not fit the byte vocabulary (256..512); "
                           "--tokens is required",
                           path, cfg ? cfg->vocab_size : -1),
               NULL;
    }
    if (!is_file(path)) return eng_err_set(err, "%s: no such file or directory", path), NULL;
    if (ends_with(path, ".gguf")) {
        eng_err e2 = {{0}};
        eng_tokenizer *t = eng_gguf_load_tokenizer(path, &e2);
        /* a model-only GGUF of a tiny test model: its byte vocabulary, as for a directory */
        if (!t && strstr(e2.msg, "no tokenizer.ggml.model") && cfg && cfg->vocab_size >= 256 && cfg->vocab_size <= 512)
            return eng_tok_byte_new(cfg->vocab_size, cfg->bos_token_id, err);
        if (!t && err) *err = e2;
        return t;
    }
    return load_json(path, cfg, err);
}

int eng_tok_encode(const eng_tokenizer *t, const char *text, size_t len, int add_bos, int **ids, int *n,
                   eng_err *err) {
    *ids = NULL;
    *n = 0;
    if (!t) return eng_err_set(err, "tokenize: no tokenizer");
    if (!text && len) return eng_err_set(err, "tokenize: NULL text");
    if (len > (size_t)INT32_MAX / 2) return eng_err_set(err, "tokenize: text of %zu bytes is too long", len);
    ivec v = {0};
    if (add_bos)
        for (int i = 0; i < t->nprefix; i++)
            if (ivec_put(&v, t->prefix[i])) goto oom;
    if (t->kind == ENG_TOK_BYTE) {
        for (size_t i = 0; i < len; i++)
            if (ivec_put(&v, (unsigned char)text[i])) goto oom;
    } else if (len && encode_text(t, text, len, &v, err)) {
        free(v.p);
        return -1;
    }
    if (!v.p) { /* *ids is never NULL on success */
        if (ivec_put(&v, 0)) goto oom;
        v.n = 0;
    }
    *ids = v.p;
    *n = (int)v.n;
    return 0;
oom:
    free(v.p);
    return eng_err_set(err, "tokenize: out of memory");
}

const char *eng_tok_piece(const eng_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->n_vocab || !t->piece[id]) return "<?>";
    return t->piece[id];
}

const char *eng_tok_raw(const eng_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->n_vocab || !t->raw[id]) return "<?>";
    return t->raw[id];
}

int eng_tok_decode(const eng_tokenizer *t, const int *ids, int n, int skip_special, char **out, size_t *len,
                   eng_err *err) {
    *out = NULL;
    if (len) *len = 0;
    if (!t) return eng_err_set(err, "decode: no tokenizer");
    buf b = {0};
    if (buf_put(&b, "", 0)) return eng_err_set(err, "decode: out of memory");
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_vocab) {
            free(b.p);
            return eng_err_set(err, "decode: token id %d at position %d out of range [0, %d)", id, i, t->n_vocab);
        }
        if (skip_special && t->special[id]) continue;
        if (buf_put(&b, t->bytes[id], (size_t)t->bytes_len[id])) {
            free(b.p);
            return eng_err_set(err, "decode: out of memory");
        }
    }
    size_t cut = 0;
    while ((int)cut < t->strip_left && cut < b.n && b.p[cut] == ' ') cut++;
    memmove(b.p, b.p + cut, b.n - cut + 1);
    *out = b.p;
    if (len) *len = b.n - cut;
    return 0;
}

int eng_tok_vocab_size(const eng_tokenizer *t) { return t ? t->n_vocab : 0; }
int eng_tok_bos_id(const eng_tokenizer *t) { return t ? t->bos : -1; }
int eng_tok_eos_id(const eng_tokenizer *t) { return t ? t->eos : -1; }
eng_tok_kind eng_tok_get_kind(const eng_tokenizer *t) { return t ? t->kind : ENG_TOK_BYTE; }
int eng_tok_is_special(const eng_tokenizer *t, int id) { return t && id >= 0 && id < t->n_vocab && t->special[id]; }
int eng_tok_merge_count(const eng_tokenizer *t) { return t ? t->n_merges : 0; }

const char *eng_tok_kind_name(eng_tok_kind k) {
    switch (k) {
    case ENG_TOK_BYTE: return "byte";
    case ENG_TOK_BPE_BYTES: return "bpe-bytelevel";
    case ENG_TOK_BPE_SPM: return "bpe-sentencepiece";
    }
    return "?";
}
