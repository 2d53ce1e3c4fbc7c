/* fuzz_safetensors: libFuzzer target for the safetensors header parser (eng_st_parse) on a raw
 * buffer; every range it accepts is read end to end so ASan proves it lies in the buffer.
 * Build and run: tools/fuzz.sh tests/fuzz/fuzz_safetensors.c (or `make fuzz`).
 * Links against build-fuzz/libengine-fuzz.a (all engine sources, built by tools/fuzz.sh). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_model.h"
#include "eng_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    eng_st_header h;
    eng_err err;
    if (eng_st_parse(&h, data, size, "fuzz.safetensors", &err)) {
        if (!err.msg[0]) __builtin_trap(); /* every failure must say why */
        return 0;
    }
    float buf[256];
    for (int i = 0; i < h.n; i++) {
        const eng_st_entry *e = &h.t[i];
        if (eng_st_find(&h, e->name) != e) __builtin_trap();
        if (e->end - e->begin != (uint64_t)e->numel * (uint64_t)e->elem_size) __builtin_trap();
        if (h.data_off + e->end > size) __builtin_trap();
        const uint8_t *p = data + h.data_off + e->begin;
        if (e->dtype < 0 || (uintptr_t)p % (uintptr_t)e->elem_size) continue; /* the loader copies these */
        eng_tensor t = {.dtype = (eng_dtype)e->dtype, .ndim = e->ndim, .numel = e->numel, .data = p};
        for (int64_t off = 0; off < e->numel; off += 256) {
            int64_t n = e->numel - off < 256 ? e->numel - off : 256;
            eng_tensor_to_f32(&t, off, n, buf);
        }
    }
    eng_st_free(&h);
    return 0;
}
