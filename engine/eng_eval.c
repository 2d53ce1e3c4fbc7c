/* eng_eval: passkey retrieval and perplexity benchmarks per pattern (engine/eng_eval.h). The engine
 * prefill does the work (any backend, patterns as given); the passkey answer comes from the dense
 * KV-cache decoder (engine/eng_decode.c). */
#include "eng_eval.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_decode.h"
#include "eng_search.h"

struct eng_passkey {
    const eng_tokenizer *tok;
    int *hay;       /* [n_hay] haystack tokens */
    int n_hay;
    int *q;         /* [n_q] the question's tokens */
    int n_q;
    int bos;        /* BOS id or -1 */
    int byte_level; /* byte vocabulary: the insertion rule of tools/train_sample.py, byte for byte */
    char *space_end, *space_start; /* [vocab] token's text ends / starts with a space */
};

void eng_passkey_free(eng_passkey *pk) {
    if (!pk) return;
    free(pk->hay);
    free(pk->q);
    free(pk->space_end);
    free(pk->space_start);
    free(pk);
}

int eng_passkey_new(eng_passkey **out, const eng_tokenizer *tok, const char *haystack, size_t len, eng_err *err) {
    *out = NULL;
    if (!haystack) haystack = ENG_PASSKEY_FILLER, len = strlen(ENG_PASSKEY_FILLER);
    eng_passkey *pk = calloc(1, sizeof *pk);
    if (!pk) return eng_err_set(err, "out of memory for the passkey prompts");
    pk->tok = tok;
    pk->bos = eng_tok_bos_id(tok);
    pk->byte_level = eng_tok_get_kind(tok) == ENG_TOK_BYTE;
    if (eng_tok_encode(tok, haystack, len, 0, &pk->hay, &pk->n_hay, err)) goto fail;
    if (pk->n_hay < 1) {
        eng_err_set(err, "passkey haystack is empty");
        goto fail;
    }
    if (eng_tok_encode(tok, ENG_PASSKEY_QUESTION, strlen(ENG_PASSKEY_QUESTION), 0, &pk->q, &pk->n_q, err)) goto fail;
    const int V = eng_tok_vocab_size(tok);
    pk->space_end = calloc((size_t)V, 1);
    pk->space_start = calloc((size_t)V, 1);
    if (!pk->space_end || !pk->space_start) {
        eng_err_set(err, "out of memory for the passkey prompts");
        goto fail;
    }
    for (int i = 0; i < pk->n_hay; i++) { /* only haystack tokens are ever asked about */
        int id = pk->hay[i];
        if (id < 0 || id >= V) continue;
        const char *p = eng_tok_piece(tok, id);
        size_t pl = strlen(p);
        pk->space_start[id] = pl > 0 && p[0] == ' ';
        pk->space_end[id] = pl > 0 && p[pl - 1] == ' ';
    }
    *out = pk;
    return 0;
fail:
    eng_passkey_free(pk);
    return -1;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

int eng_passkey_key(uint64_t seed, int length, int depth_pct, int trial) {
    uint64_t h = splitmix64(seed);
    h = splitmix64(h ^ (uint64_t)(unsigned)length);
    h = splitmix64(h ^ ((uint64_t)(unsigned)depth_pct << 32));
    h = splitmix64(h ^ ((uint64_t)(unsigned)trial << 48));
    return 10000 + (int)(h % 90000u);
}

/* The answer " NNNNN" as tokens; when its first token is only whitespace (byte vocabularies,
 * SentencePiece's "▁") that token ends the prompt instead, so that the first digit is predicted by
 * the (sparse) prefill and not by the dense decode. Returns that token or -1. */
static int answer_ids(const eng_passkey *pk, int key, int **ids, int *n) {
    char s[32];
    eng_err e;
    snprintf(s, sizeof s, " %d", key);
    *ids = NULL, *n = 0;
    if (eng_tok_encode(pk->tok, s, strlen(s), 0, ids, n, &e) || *n < 1) return -1;
    const char *p = eng_tok_piece(pk->tok, (*ids)[0]);
    if (!*p) return -1;
    for (; *p; p++)
        if (*p != ' ') return -1;
    return (*ids)[0];
}

static int lead_token(const eng_passkey *pk, int key) {
    int *ids = NULL, n = 0;
    int t = answer_ids(pk, key, &ids, &n);
    free(ids);
    return t;
}

static int encode_str(const eng_passkey *pk, const char *s, int **ids, int *n, eng_err *err) {
    return eng_tok_encode(pk->tok, s, strlen(s), 0, ids, n, err);
}

int eng_passkey_prompt(const eng_passkey *pk, int length, int depth_pct, int trial, int key, int **ids, int *n,
                       eng_err *err) {
    *ids = NULL, *n = 0;
    if (depth_pct < 0 || depth_pct > 100) return eng_err_set(err, "passkey depth %d%% is outside [0, 100]", depth_pct);
    if (trial < 0) return eng_err_set(err, "passkey trial %d is negative", trial);
    char needle[160], inner[128];
    snprintf(inner, sizeof inner, ENG_PASSKEY_NEEDLE, key, key);
    snprintf(needle, sizeof needle, " %s ", inner);
    int *nd = NULL, n_nd = 0;
    if (encode_str(pk, needle, &nd, &n_nd, err)) return -1;
    const int b = pk->bos >= 0, lead = lead_token(pk, key);
    const long long nh = (long long)length - b - n_nd - pk->n_q - (lead >= 0);
    if (nh < 1) {
        free(nd);
        return eng_err_set(err, "passkey length %d is too short: the needle and question alone take %d tokens",
                           length, b + n_nd + pk->n_q + (lead >= 0));
    }
    int *o = malloc(sizeof(int) * (size_t)length);
    int *h = malloc(sizeof(int) * (size_t)nh);
    if (!o || !h) {
        free(nd), free(o), free(h);
        return eng_err_set(err, "out of memory for a %d-token passkey prompt", length);
    }
    const int hn = (int)nh;
    const long long off = ((long long)trial * 4099) % pk->n_hay;
    for (int i = 0; i < hn; i++) h[i] = pk->hay[(off + i) % pk->n_hay];
    int p = (int)((double)depth_pct / 100.0 * (double)hn);
    if (p > 0) { /* just after the next space, so no word is split */
        int q = p;
        for (; q < hn; q++) {
            if (!pk->byte_level && pk->space_start[h[q]]) break;
            if (pk->space_end[h[q]]) {
                q++;
                break;
            }
        }
        p = q < hn ? q : hn;
    }
    int k = 0;
    if (b) o[k++] = pk->bos;
    memcpy(o + k, h, sizeof(int) * (size_t)p), k += p;
    memcpy(o + k, nd, sizeof(int) * (size_t)n_nd), k += n_nd;
    memcpy(o + k, h + p, sizeof(int) * (size_t)(hn - p)), k += hn - p;
    memcpy(o + k, pk->q, sizeof(int) * (size_t)pk->n_q), k += pk->n_q;
    if (lead >= 0) o[k++] = lead;
    free(nd), free(h);
    *ids = o, *n = k;
    return 0;
}

int eng_passkey_answer_tokens(const eng_passkey *pk, int key) {
    int *ids = NULL, n = 0;
    int lead = answer_ids(pk, key, &ids, &n);
    free(ids);
    if (n < 1) n = 6;
    return n - (lead >= 0) + 1;
}

/* The generated text (specials skipped) into buf, or "" when it does not decode. */
static void gen_text(const eng_passkey *pk, const int *gen, int n_gen, char *buf, size_t cap) {
    char *t = NULL;
    size_t len = 0;
    eng_err e;
    buf[0] = 0;
    if (n_gen <= 0 || eng_tok_decode(pk->tok, gen, n_gen, 1, &t, &len, &e)) return;
    snprintf(buf, cap, "%s", t);
    free(t);
}

int eng_passkey_correct(const eng_passkey *pk, const int *gen, int n_gen, int key) {
    char text[256], want[32];
    gen_text(pk, gen, n_gen, text, sizeof text);
    snprintf(want, sizeof want, "%d", key);
    const char *s = text;
    while (*s == ' ') s++;
    size_t wl = strlen(want);
    return !strncmp(s, want, wl) && !isdigit((unsigned char)s[wl]);
}

int eng_passkey_run(eng_backend *be, const eng_model *m, const eng_passkey *pk, const eng_pattern_cfg *patterns,
                    int length, int depth_pct, int trials, uint64_t seed, eng_passkey_cell *cell, eng_err *err) {
    memset(cell, 0, sizeof *cell);
    cell->length = length, cell->depth_pct = depth_pct;
    if (trials < 1) return eng_err_set(err, "passkey needs at least one trial (got %d)", trials);
    eng_prefill_opts po;
    memset(&po, 0, sizeof po);
    po.patterns = patterns;
    for (int t = 0; t < trials; t++) {
        const int key = eng_passkey_key(seed, length, depth_pct, t);
        int *ids = NULL, n = 0;
        if (eng_passkey_prompt(pk, length, depth_pct, t, key, &ids, &n, err)) return -1;
        eng_generation g;
        int rc = eng_decode_greedy(be, m, ids, n, &po, eng_passkey_answer_tokens(pk, key), -1, &g, err);
        free(ids);
        if (rc) return -1;
        cell->trials++;
        cell->correct += eng_passkey_correct(pk, g.ids, g.n, key);
        cell->prefill_s += g.prefill_s;
        cell->decode_s += g.decode_s;
        char text[256];
        gen_text(pk, g.ids, g.n, text, sizeof text);
        size_t j = 0;
        for (const char *s = text; *s && j + 5 < sizeof cell->sample; s++) {
            unsigned char ch = (unsigned char)*s;
            if (ch >= 32 && ch < 127) cell->sample[j++] = (char)ch;
            else j += (size_t)snprintf(cell->sample + j, sizeof cell->sample - j, "\\x%02x", ch);
        }
        cell->sample[j] = 0;
        eng_generation_free(&g);
    }
    return 0;
}

int eng_ppl_run(eng_backend *be, const eng_model *m, const int *tokens, int n_tokens, int bos_id,
                const eng_pattern_cfg *patterns, int length, int max_windows, eng_ppl_cell *cell, eng_err *err) {
    memset(cell, 0, sizeof *cell);
    cell->length = length;
    const int b = bos_id >= 0;
    if (length < 2 + b) return eng_err_set(err, "perplexity window of %d tokens is too short", length);
    const int step = length - b;
    int nw = n_tokens / step;
    if (nw < 1)
        return eng_err_set(err, "text has %d tokens, fewer than one window of %d (length %d)", n_tokens, step, length);
    if (max_windows > 0 && nw > max_windows) nw = max_windows;
    int *ids = malloc(sizeof(int) * (size_t)length);
    if (!ids) return eng_err_set(err, "out of memory for a %d-token window", length);
    eng_prefill_opts po;
    memset(&po, 0, sizeof po);
    po.patterns = patterns;
    double nll = 0.0;
    for (int w = 0; w < nw; w++) {
        if (b) ids[0] = bos_id;
        memcpy(ids + b, tokens + (size_t)w * step, sizeof(int) * (size_t)step);
        eng_prefill_out o;
        if (be->prefill(be, m, ids, length, &po, &o, err)) {
            free(ids);
            return -1;
        }
        for (int i = 0; i + 1 < length; i++) nll -= o.next_logprob[i];
        cell->predicted += length - 1;
        cell->prefill_s += o.seconds;
        eng_prefill_out_free(&o);
    }
    free(ids);
    cell->windows = nw;
    cell->nll = nll / (double)cell->predicted;
    cell->ppl = exp(cell->nll);
    return 0;
}

int eng_eval_cfg_scaled(const eng_pattern_cfg *src, int n, int reference_len, eng_pattern_cfg *dst, eng_err *err) {
    *dst = *src;
    dst->heads = NULL;
    dst->def = eng_search_scale(&src->def, n, reference_len);
    if (!src->heads) return 0;
    const size_t cnt = (size_t)src->n_layers * (size_t)src->n_heads;
    if (!(dst->heads = malloc(sizeof(eng_pattern) * (cnt ? cnt : 1))))
        return eng_err_set(err, "out of memory scaling a pattern config");
    for (size_t i = 0; i < cnt; i++) dst->heads[i] = eng_search_scale(&src->heads[i], n, reference_len);
    return 0;
}

void eng_eval_cfg_free(eng_pattern_cfg *c) {
    if (!c) return;
    free(c->heads);
    c->heads = NULL;
}

int eng_eval_parse_len(const char *s, int *out) {
    if (!s || !isdigit((unsigned char)*s)) return -1;
    long long v = 0;
    while (isdigit((unsigned char)*s)) {
        v = v * 10 + (*s++ - '0');
        if (v > (1LL << 30)) return -1;
    }
    if (*s == 'k' || *s == 'K') v <<= 10, s++;
    else if (*s == 'm' || *s == 'M') v <<= 20, s++;
    if (*s || v < 1 || v >= (1LL << 30)) return -1;
    *out = (int)v;
    return 0;
}
