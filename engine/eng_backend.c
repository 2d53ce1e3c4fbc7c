/* eng_backend: picks a compute backend by name ("auto" = CUDA when built and usable, else CPU) and
 * frees prefill results. The CPU backend is eng_cpu.c; the CUDA one lives in kernels/ when built. */
#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"

#ifndef ATTNSCOPE_CUDA
eng_backend *eng_backend_cuda_create(eng_err *err) {
    eng_err_set(err, "this build has no CUDA backend");
    return NULL;
}
#endif

eng_backend *eng_backend_create(const char *which, eng_err *err) {
    if (!which || !strcmp(which, "auto")) {
#ifdef ATTNSCOPE_CUDA
        eng_err cerr;
        eng_backend *be = eng_backend_cuda_create(&cerr);
        if (be) return be;
#endif
        return eng_backend_cpu_create(err);
    }
    if (!strcmp(which, "cpu")) return eng_backend_cpu_create(err);
    if (!strcmp(which, "cuda")) return eng_backend_cuda_create(err);
    eng_err_set(err, "unknown backend '%s' (want auto, cpu or cuda)", which);
    return NULL;
}

void eng_prefill_out_free(eng_prefill_out *o) {
    if (!o) return;
    free(o->last_logits);
    free(o->argmax);
    free(o->next_logprob);
    free(o->q);
    free(o->k);
    free(o->v);
    free(o->lse);
    free(o->attn_seconds);
    free(o->density);
    memset(o, 0, sizeof *o);
}
