/* fuzz_gguf: libFuzzer target for the GGUF reader (eng_gguf_parse) on a raw buffer. Whatever it
 * accepts is walked end to end (every tensor's bytes, every metadata array) so ASan proves it lies
 * in the buffer; then the config and the tokenizer are built from the metadata, as the loader
 * does, and a short text is tokenized with it.
 * Build and run: tools/fuzz.sh tests/fuzz/fuzz_gguf.c (or `make fuzz`).
 * Links against build-fuzz/libengine-fuzz.a (all engine sources, built by tools/fuzz.sh). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "eng_model.h"
#include "eng_tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    eng_gguf g;
    eng_err err;
    err.msg[0] = 0;
    if (eng_gguf_parse(&g, data, size, "fuzz.gguf", &err)) {
        if (!err.msg[0]) __builtin_trap(); /* every failure must say why */
        return 0;
    }
    volatile unsigned sum = 0;
    for (int64_t i = 0; i < g.n_tensors; i++) {
        const eng_gguf_tensor *t = &g.t[i];
        if (g.data_off + t->offset + t->nbytes > size) __builtin_trap();
        if (eng_gguf_find_tensor(&g, "") == t) __builtin_trap();
        const uint8_t *p = data + g.data_off + t->offset;
        for (uint64_t k = 0; k < t->nbytes; k += 61) sum += p[k];
        if (t->nbytes) sum += p[t->nbytes - 1];
    }
    for (int64_t i = 0; i < g.n_kv; i++) {
        const eng_gguf_kv *kv = &g.kv[i];
        if (kv->key + kv->key_len > (const char *)data + size) __builtin_trap();
        if (kv->type == ENG_GGUF_STRING && kv->str_len) sum += (unsigned char)kv->str[kv->str_len - 1];
    }
    eng_config cfg;
    err.msg[0] = 0;
    if (eng_gguf_config(&g, &cfg, "fuzz.gguf", &err) && !err.msg[0]) __builtin_trap();
    err.msg[0] = 0;
    eng_tokenizer *tok = eng_gguf_tokenizer(&g, "fuzz.gguf", &err);
    if (!tok && !err.msg[0]) __builtin_trap();
    if (tok) {
        static const char text[] = "Hello world! 123 <s>\n\xe6\x97\xa5\xff";
        int *ids = NULL, n = 0;
        if (eng_tok_encode(tok, text, sizeof text - 1, 1, &ids, &n, &err) == 0) {
            for (int i = 0; i < n; i++) {
                if (ids[i] < 0 || ids[i] >= eng_tok_vocab_size(tok)) __builtin_trap();
                sum += (unsigned char)eng_tok_piece(tok, ids[i])[0];
            }
            char *out;
            size_t len;
            if (eng_tok_decode(tok, ids, n, 0, &out, &len, &err) == 0) free(out);
        }
        free(ids);
        eng_tok_free(tok);
    }
    (void)sum;
    eng_gguf_free(&g);
    return 0;
}
