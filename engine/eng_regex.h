/* eng_regex: the small backtracking regex engine and Unicode helpers behind the tokenizer's
 * pre-tokenizers (engine/eng_tok.c). Handles the patterns Hugging Face tokenizer.json files use
 * (GPT-2, Llama-3, Qwen2 and kin): alternation, groups (?:..) (?i:..), lookahead (?=..) (?!..),
 * greedy and lazy quantifiers ? * + {m,n}, classes [...] with ranges and negation, \p{L} \p{N}
 * \p{Lu} ... \P{..}, \s \S \d \D \w \W, '.', ^ $, escapes \r \n \t \f \v \xHH \x{H..} \uHHHH.
 * Matching is over code points, leftmost-first like Oniguruma. Patterns are untrusted (they
 * come from tokenizer.json), so matching has a step budget and a recursion cap. */
#ifndef ENG_REGEX_H
#define ENG_REGEX_H

#include <stddef.h>
#include <stdint.h>

#include "eng_err.h"

/* Code points >= ENG_REGEX_RAW stand for invalid UTF-8 bytes: ENG_REGEX_RAW + byte value. They
 * match only negated classes, never \s, \p{..}. */
#define ENG_REGEX_RAW 0x110000u

typedef struct eng_regex eng_regex;

eng_regex *eng_regex_compile(const char *pattern, eng_err *err);
void eng_regex_free(eng_regex *re);

/* Leftmost match starting at or after `from` in cps[0..n): 1 and [*ms, *me) when found (it may
 * be empty: *ms == *me; callers resume at *me + 1), 0 when none, -1 with err set when the step
 * budget or recursion cap is exceeded. */
int eng_regex_find(const eng_regex *re, const uint32_t *cps, size_t n, size_t from, size_t *ms, size_t *me,
                   eng_err *err);

/* UTF-8 text -> code points (invalid bytes as ENG_REGEX_RAW + byte) and, when offs is non-NULL,
 * the byte offset of each code point plus offs[n] = len. Arrays malloc'd. 0 ok, -1 (memory). */
int eng_regex_utf8_decode(const char *s, size_t len, uint32_t **cps, size_t **offs, size_t *n, eng_err *err);
/* Append the UTF-8 of cp (a raw-byte code point appends its byte) to buf; returns bytes written (<= 4). */
int eng_regex_utf8_put(uint32_t cp, char *buf);

/* Unicode general category of cp as an index into eng_regex_category_name (0 = "Cn"). */
int eng_regex_category(uint32_t cp);
const char *eng_regex_category_name(int cat);
/* White_Space property (what Oniguruma's \s matches). */
int eng_regex_is_space(uint32_t cp);

/* Unicode NFC of UTF-8 text (invalid bytes pass through unchanged). *out malloc'd. 0 ok, -1. */
int eng_regex_nfc(const char *s, size_t len, char **out, size_t *out_len, eng_err *err);

/* The Unicode version of the generated tables. */
const char *eng_regex_unicode_version(void);

#endif
