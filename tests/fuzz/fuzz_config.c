/* fuzz_config: libFuzzer target for config.json parsing (eng_config_parse); whatever it accepts
 * must satisfy the invariants the rest of the engine relies on.
 * Build and run: tools/fuzz.sh tests/fuzz/fuzz_config.c (or `make fuzz`).
 * Links against build-fuzz/libengine-fuzz.a (all engine sources, built by tools/fuzz.sh). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *txt = malloc(size + 1); /* eng_config_parse takes NUL-terminated text */
    if (!txt) return 0;
    memcpy(txt, data, size);
    txt[size] = 0;
    eng_config c;
    eng_err err;
    err.msg[0] = 0;
    if (eng_config_parse(&c, txt, size, "fuzz/config.json", &err)) {
        if (!err.msg[0]) __builtin_trap();
    } else {
        if (c.vocab_size < 1 || c.hidden_size < 1 || c.intermediate_size < 1 || c.n_layers < 1) __builtin_trap();
        if (c.n_heads < 1 || c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads) __builtin_trap();
        if (c.head_dim < 2 || c.head_dim % 2 || c.head_dim > 1024) __builtin_trap();
        if (!(c.rms_norm_eps > 0) || !(c.rope_theta > 0) || c.max_position_embeddings < 1) __builtin_trap();
        if (c.arch < 0 || c.arch >= ENG_ARCH__COUNT || !memchr(c.arch_name, 0, sizeof c.arch_name)) __builtin_trap();
        if (c.rope_llama3 && !(c.rope_factor > 0 && c.rope_high_freq_factor > c.rope_low_freq_factor &&
                               c.rope_low_freq_factor > 0 && c.rope_original_max_pos > 0))
            __builtin_trap();
        if (c.rope_longrope &&
            !(c.rope_attn_factor > 0 && c.rope_original_max_pos >= 2 && c.head_dim / 2 <= ENG_ROPE_MAX_FACTORS))
            __builtin_trap();
        for (int i = 0; c.rope_longrope && i < c.head_dim / 2; i++)
            if (!(c.rope_short_factor[i] > 0 && c.rope_long_factor[i] > 0)) __builtin_trap();
    }
    free(txt);
    return 0;
}
