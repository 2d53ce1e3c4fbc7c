/* eng_tok: text <-> token ids for a model. Reads a Hugging Face tokenizer.json (byte-level BPE as in
 * Llama-3 / Qwen2 / GPT-2, SentencePiece-style BPE with byte fallback as in Llama-2 / Mistral / Yi /
 * TinyLlama), the tokenizer in a GGUF file's metadata, or falls back to a byte-level vocabulary for
 * tiny test models. The tokenizer is immutable after load: encode/decode/piece are thread-safe. */
#ifndef ENG_TOK_H
#define ENG_TOK_H

#include <stddef.h>

#include "eng_err.h"
#include "eng_model.h"

typedef struct eng_tokenizer eng_tokenizer;

typedef enum {
    ENG_TOK_BYTE = 0,   /* id = byte value; ids >= 256 are specials (tiny test models) */
    ENG_TOK_BPE_BYTES,  /* byte-level BPE (GPT-2 byte->unicode map; Llama-3, Qwen2) */
    ENG_TOK_BPE_SPM,    /* SentencePiece-style BPE, "▁" for space, <0xNN> byte fallback */
} eng_tok_kind;

/* path is one of:
 *   - a model directory: its tokenizer.json when present; otherwise, when cfg->vocab_size <= 512,
 *     the byte-level vocabulary (id = byte value, ids >= 256 specials); otherwise NULL and an error
 *     saying --tokens is required;
 *   - a tokenizer.json file;
 *   - a .gguf file: the tokenizer in its metadata (tokenizer.ggml.*).
 * cfg may be NULL for the file forms (it supplies vocab_size / bos_token_id for the byte fallback
 * and the BOS id when tokenizer.json does not name one). NULL with err set on failure. */
eng_tokenizer *eng_tok_load(const char *path, const eng_config *cfg, eng_err *err);

/* The byte-level vocabulary of vocab_size ids (>= 256); bos_id < 0 for none. */
eng_tokenizer *eng_tok_byte_new(int vocab_size, int bos_id, eng_err *err);

/* Encode len bytes of text (need not be NUL-terminated, may contain NULs). Added/special tokens
 * written literally in the text (e.g. "<|begin_of_text|>") map to their ids. With add_bos the
 * tokenizer's BOS id is prepended when it has one (Qwen2 has none: nothing is added).
 * *ids is malloc'd (caller frees, also when *n == 0); 0 ok, -1 with err set. */
int eng_tok_encode(const eng_tokenizer *t, const char *text, size_t len, int add_bos, int **ids, int *n,
                   eng_err *err);

/* Display text of one token for labels (TUI cursor, axis labels, exports): the token decoded on
 * its own ("Ġthe" -> " the", "▁the" -> " the", "<0x0A>" -> "\n"), then made printable: always
 * valid UTF-8, control bytes escaped as \n \t \r \xNN, stray bytes of split UTF-8 sequences as
 * \xNN. Specials show their content ("<|eot_id|>"). Never NULL; "<?>" for an id out of range.
 * Owned by the tokenizer. */
const char *eng_tok_piece(const eng_tokenizer *t, int id);

/* The token's raw vocabulary string as written in the file ("Ġthe", "▁the", "<0x0A>"); for the
 * byte vocabulary the piece. Never NULL. */
const char *eng_tok_raw(const eng_tokenizer *t, int id);

/* Exact decode of ids into bytes (malloc'd, NUL-terminated, *len without the NUL): the inverse of
 * encode for text that round-trips. Specials are written as their content unless skip_special.
 * SentencePiece tokenizers drop the one space their normaliser prepended. 0 ok, -1 with err. */
int eng_tok_decode(const eng_tokenizer *t, const int *ids, int n, int skip_special, char **out, size_t *len,
                   eng_err *err);

int eng_tok_vocab_size(const eng_tokenizer *t);
int eng_tok_bos_id(const eng_tokenizer *t); /* -1 when none */
int eng_tok_eos_id(const eng_tokenizer *t); /* -1 when none */
eng_tok_kind eng_tok_get_kind(const eng_tokenizer *t);
const char *eng_tok_kind_name(eng_tok_kind k); /* "byte", "bpe-bytelevel", "bpe-sentencepiece" */
/* Nonzero when id is a special/control token (BOS, EOS, <|eot_id|>, byte-vocab ids >= 256). */
int eng_tok_is_special(const eng_tokenizer *t, int id);

void eng_tok_free(eng_tokenizer *t);
/* Number of merge rules (0 for the byte vocabulary). */
int eng_tok_merge_count(const eng_tokenizer *t);

/* Building a tokenizer from arrays (the GGUF reader uses this; tests may too). Token types follow
 * llama.cpp's tokenizer.ggml.token_type. */
enum { ENG_TOK_TYPE_NORMAL = 1, ENG_TOK_TYPE_UNKNOWN = 2, ENG_TOK_TYPE_CONTROL = 3, ENG_TOK_TYPE_USER = 4,
       ENG_TOK_TYPE_UNUSED = 5, ENG_TOK_TYPE_BYTE = 6 };
typedef struct {
    const char *what;                  /* names the source in messages */
    eng_tok_kind kind;                 /* ENG_TOK_BPE_BYTES ("gpt2") or ENG_TOK_BPE_SPM ("llama") */
    int n_vocab;
    const char *const *tokens;         /* [n_vocab] raw strings, token_lens[i] bytes each */
    const size_t *token_lens;
    const int *token_types;            /* [n_vocab] or NULL (all normal) */
    const float *scores;               /* [n_vocab] SPM merge priority when there are no merges */
    int n_merges;                      /* "left right" strings, rank = index */
    const char *const *merges;
    const size_t *merge_lens;
    const char *pre_regex;             /* byte-level split pattern; NULL = GPT-2's */
    int bos, eos;                      /* -1 = none */
    int add_bos;                       /* add_bos in eng_tok_encode prepends bos */
    int add_space_prefix;              /* SPM: "▁" before each text segment (llama.cpp's default) */
    int ignore_merges;                 /* a word already in the vocabulary is one token (Llama-3) */
    int nfc;                           /* NFC-normalise text first (Qwen2's tokenizer.json does) */
} eng_tok_spec;
eng_tokenizer *eng_tok_from_spec(const eng_tok_spec *spec, eng_err *err);
/* Split pattern for GGUF's tokenizer.ggml.pre ("llama-bpe", "qwen2", "default", ...) or NULL
 * when unknown; NULL name = GPT-2. */
const char *eng_tok_pre_regex(const char *gguf_pre);

#endif
