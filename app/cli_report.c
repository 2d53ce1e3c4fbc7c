/* cli_report: prints an eng_report as a per-layer table plus end-to-end numbers (see cli_report.h). */
#include "cli_report.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

void cli_report_progress(void *ctx, const char *stage, int done, int total) {
    (void)ctx;
    if (!isatty(STDERR_FILENO)) return;
    fprintf(stderr, "\r%-15s layer %d/%d   ", stage, done, total);
    if (done == total) fputs("\r                                        \r", stderr);
    fflush(stderr);
}

/* "vs:28 ashape:4" for one layer. */
static void pattern_mix(const eng_report *r, int l, char *buf, size_t cap) {
    int cnt[ENG_PAT__COUNT] = {0};
    for (int h = 0; h < r->n_heads; h++) {
        int k = r->pattern[(size_t)l * r->n_heads + h].kind;
        if (k >= 0 && k < ENG_PAT__COUNT) cnt[k]++;
    }
    buf[0] = 0;
    size_t w = 0;
    for (int k = 0; k < ENG_PAT__COUNT && w < cap; k++)
        if (cnt[k]) w += (size_t)snprintf(buf + w, cap - w, "%s%s:%d", w ? " " : "", eng_pattern_kind_name(k), cnt[k]);
}

void cli_report_print(FILE *f, const eng_report *r) {
    fprintf(f, "\nsparse vs dense, per layer (heads measured on the dense pass's Q/K/V; %d tokens):\n", r->n_tokens);
    fprintf(f, "%5s %8s %8s %10s %9s %10s  %s\n", "layer", "density", "recall", "min-head", "error", "max-head",
            "patterns");
    char mix[256];
    for (int l = 0; l < r->n_layers; l++) {
        const eng_layer_metrics *m = &r->layer[l];
        pattern_mix(r, l, mix, sizeof mix);
        fprintf(f, "%5d %8.4f %8.5f %10.5f %9.5f %10.5f  %s\n", l, m->density, m->recall, m->min_recall, m->error,
                m->max_error, mix);
    }
    fprintf(f, "%5s %8.4f %8.5f %10.5f %9.5f %10.5f\n", "all", r->model.density, r->model.recall, r->model.min_recall,
            r->model.error, r->model.max_error);
    fprintf(f, "(density: fraction of causal entries computed; recall: dense softmax mass inside the computed set, "
               "mean over queries; error: relative L2 of the attention output vs dense; min-head / max-head: worst "
               "head)\n");
    const eng_e2e_metrics *e = &r->e2e;
    fprintf(f, "end to end (sparse prefill, errors propagating, vs dense prefill):\n");
    fprintf(f, "  KL(dense || sparse) of the next token at the last position: %.6g nats\n", e->kl_last);
    fprintf(f, "  top-1 agreement over all %d positions: %.2f%%\n", e->n, 100.0 * e->top1_agree);
    if (isfinite(e->ppl_dense))
        fprintf(f, "  prompt perplexity: dense %.4f, sparse %.4f (%+.2f%%)\n", e->ppl_dense, e->ppl_sparse,
                100.0 * (e->ppl_sparse / e->ppl_dense - 1.0));
    fprintf(f, "time: dense prefill %.3f s (attention %.3f s), sparse prefill %.3f s (attention %.3f s), metrics "
               "%.3f s [%s - %s]\n", r->dense_seconds, r->dense_attn_seconds, r->sparse_seconds,
            r->sparse_attn_seconds, r->metrics_seconds, r->backend, r->device);
}
