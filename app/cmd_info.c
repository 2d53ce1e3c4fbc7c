/* cmd_info: `attnscope info --model DIR [--len N] [--json OUT]` describes a checkpoint (architecture,
 * sizes, dtypes, parameter count, context) and estimates the memory of an f32 CPU prefill. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "eng_model.h"

static void usage(FILE *f) {
    fprintf(f, "usage: attnscope info --model DIR [--len N] [--json OUT]\n\n"
               "Describe a Hugging Face model directory (config.json + safetensors) and the memory\n"
               "an f32 CPU prefill of N tokens needs.\n\n"
               "  --model DIR   checkpoint directory (required)\n"
               "  --len N       prompt length for the memory estimate (default: min(max context, 4096))\n"
               "  --json OUT    also write the description as JSON to OUT\n"
               "  -h, --help    this help\n");
}

/* Memory of an f32 CPU prefill of n tokens, in bytes. Symbols: C hidden, F intermediate, V vocab,
 * L layers, H/Hkv heads, d head dim, Dq = H*d, Dkv = Hkv*d, R = min(n, 256) logits rows at a time.
 *   weights     = sum over tensors of numel * dtype size          (memory-mapped, file dtype)
 *   converted   = 4 * (max layer params + V*C)  if any weight is not f32, else 0
 *                 (the CPU backend widens one layer, and the LM head, to f32)
 *   activations = 4 * n * (2C + 2Dq + 2Dkv + 2F) + 4 * R * V
 *                 (residual + normed input, Q + attention output, K + V, gate + up, a block of logits)
 *   kept        = 4 * L * n * (Dq + 2 Dkv) + 4 * L * H * n
 *                 (every layer's Q, K, V after RoPE, and the dense row LSE, kept for analysis)
 *   outputs     = 4 * (V + 3n)  (last logits, argmax, next-token log-probs)
 *   total       = weights + converted + activations + kept + outputs */
typedef struct {
    double weights, converted, activations, kept, outputs, total;
} mem_est;

static void tensor_acc(const eng_tensor *t, double *bytes, int *dt_mask) {
    if (!t->data) return;
    *bytes += (double)t->numel * (double)eng_dtype_size(t->dtype);
    *dt_mask |= 1 << t->dtype;
}

static mem_est estimate(const eng_model *m, long n, int *dt_mask) {
    const eng_config *c = &m->cfg;
    mem_est e = {0};
    *dt_mask = 0;
    double max_layer = 0;
    tensor_acc(&m->embed, &e.weights, dt_mask);
    tensor_acc(&m->final_norm, &e.weights, dt_mask);
    if (!c->tie_word_embeddings) tensor_acc(&m->lm_head, &e.weights, dt_mask);
    for (int l = 0; l < c->n_layers; l++) {
        const eng_layer_weights *w = &m->layers[l];
        const eng_tensor *ts[] = {&w->attn_norm, &w->wq, &w->wk, &w->wv, &w->wo, &w->bq,
                                  &w->bk,        &w->bv, &w->ffn_norm, &w->w_gate, &w->w_up, &w->w_down};
        double lp = 0;
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
            tensor_acc(ts[i], &e.weights, dt_mask);
            if (ts[i]->data) lp += (double)ts[i]->numel;
        }
        if (lp > max_layer) max_layer = lp;
    }
    double C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, L = c->n_layers, H = c->n_heads;
    double Dq = (double)c->n_heads * c->head_dim, Dkv = (double)c->n_kv_heads * c->head_dim, N = (double)n;
    double R = n < 256 ? N : 256;
    if (*dt_mask & ~(1 << ENG_DT_F32)) e.converted = 4 * (max_layer + V * C);
    e.activations = 4 * N * (2 * C + 2 * Dq + 2 * Dkv + 2 * F) + 4 * R * V;
    e.kept = 4 * L * N * (Dq + 2 * Dkv) + 4 * L * H * N;
    e.outputs = 4 * (V + 3 * N);
    e.total = e.weights + e.converted + e.activations + e.kept + e.outputs;
    return e;
}

static void fmt_bytes(char *buf, size_t n, double b) {
    if (b >= 1024.0 * 1024 * 1024) snprintf(buf, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
    else if (b >= 1024.0 * 1024) snprintf(buf, n, "%.2f MiB", b / (1024.0 * 1024));
    else if (b >= 1024.0) snprintf(buf, n, "%.1f KiB", b / 1024.0);
    else snprintf(buf, n, "%.0f B", b);
}

static void dtype_list(char *buf, size_t n, int mask) {
    buf[0] = 0;
    size_t o = 0;
    for (int d = 0; d < ENG_DT__COUNT; d++)
        if (mask & (1 << d)) o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? "+" : "", eng_dtype_name(d));
}

/* A float as the shortest decimal that reads back to it (1e-05, not 9.99999974737875e-06). */
static double short_num(float f) {
    char b[32];
    snprintf(b, sizeof b, "%.9g", (double)f);
    for (int p = 1; p <= 9; p++) {
        snprintf(b, sizeof b, "%.*g", p, (double)f);
        if ((float)strtod(b, NULL) == f) break;
    }
    return strtod(b, NULL);
}

static int write_json(const char *path, const eng_model *m, long n, const mem_est *e, const char *dts) {
    const eng_config *c = &m->cfg;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", m->dir);
    cJSON_AddStringToObject(j, "architecture", c->arch_name);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(j, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(j, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(j, "num_layers", c->n_layers);
    cJSON_AddNumberToObject(j, "num_heads", c->n_heads);
    cJSON_AddNumberToObject(j, "num_kv_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(j, "rms_norm_eps", short_num(c->rms_norm_eps));
    cJSON_AddNumberToObject(j, "rope_theta", short_num(c->rope_theta));
    if (c->rope_llama3) {
        cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
        cJSON_AddNumberToObject(rs, "factor", short_num(c->rope_factor));
        cJSON_AddNumberToObject(rs, "low_freq_factor", short_num(c->rope_low_freq_factor));
        cJSON_AddNumberToObject(rs, "high_freq_factor", short_num(c->rope_high_freq_factor));
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->rope_original_max_pos);
    }
    if (c->rope_longrope) {
        cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "longrope");
        cJSON_AddNumberToObject(rs, "factor", short_num(c->rope_factor));
        cJSON_AddNumberToObject(rs, "attention_factor", short_num(c->rope_attn_factor));
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->rope_original_max_pos);
        cJSON *sf = cJSON_AddArrayToObject(rs, "short_factor"), *lf = cJSON_AddArrayToObject(rs, "long_factor");
        for (int i = 0; i < c->head_dim / 2 && i < ENG_ROPE_MAX_FACTORS; i++) {
            cJSON_AddItemToArray(sf, cJSON_CreateNumber(short_num(c->rope_short_factor[i])));
            cJSON_AddItemToArray(lf, cJSON_CreateNumber(short_num(c->rope_long_factor[i])));
        }
    }
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddBoolToObject(j, "qkv_bias", c->qkv_bias);
    cJSON_AddNumberToObject(j, "sliding_window", c->sliding_window);
    cJSON_AddStringToObject(j, "dtype", dts);
    cJSON_AddNumberToObject(j, "n_params", (double)m->n_params);
    cJSON_AddNumberToObject(j, "max_context", c->max_position_embeddings);
    cJSON *mm = cJSON_AddObjectToObject(j, "prefill_memory_bytes");
    cJSON_AddNumberToObject(mm, "len", (double)n);
    cJSON_AddNumberToObject(mm, "weights", e->weights);
    cJSON_AddNumberToObject(mm, "converted_weights", e->converted);
    cJSON_AddNumberToObject(mm, "activations", e->activations);
    cJSON_AddNumberToObject(mm, "kept_qkv_lse", e->kept);
    cJSON_AddNumberToObject(mm, "outputs", e->outputs);
    cJSON_AddNumberToObject(mm, "total", e->total);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s) {
        cli_error("info", "out of memory writing %s", path);
        return -1;
    }
    size_t len = strlen(s);
    s[len] = '\n';
    int rc = cli_write_atomic("info", path, s, len + 1);
    free(s);
    return rc;
}

int cmd_info(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"len", required_argument, 0, 'n'},
        {"json", required_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *dir = NULL, *json = NULL;
    int len = 0;
    optind = 1;
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': dir = optarg; break;
        case 'j': json = optarg; break;
        case 'n':
            if (cli_parse_int("info", "--len", optarg, 1, 1 << 27, &len)) {
                usage(stderr);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        case ':':
            cli_error("info", "%s needs a value", argv[optind - 1]);
            usage(stderr);
            return 2;
        default:
            cli_error("info", "unknown option '%s'", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        cli_error("info", "unexpected argument '%s'", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!dir) {
        cli_error("info", "--model DIR is required");
        usage(stderr);
        return 2;
    }
    eng_err err = {{0}};
    eng_model *m;
    if (eng_model_load(&m, dir, &err)) {
        cli_error("info", "%s", err.msg);
        return 1;
    }
    const eng_config *c = &m->cfg;
    long n = len ? len : (c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096);
    int mask;
    mem_est e = estimate(m, n, &mask);
    char dts[32], b[6][32];
    dtype_list(dts, sizeof dts, mask);
    fmt_bytes(b[0], sizeof b[0], e.weights);
    fmt_bytes(b[1], sizeof b[1], e.converted);
    fmt_bytes(b[2], sizeof b[2], e.activations);
    fmt_bytes(b[3], sizeof b[3], e.kept);
    fmt_bytes(b[4], sizeof b[4], e.outputs);
    fmt_bytes(b[5], sizeof b[5], e.total);
    printf("model          %s\n", m->dir);
    printf("architecture   %s\n", c->arch_name);
    printf("layers         %d\n", c->n_layers);
    printf("hidden         %d\n", c->hidden_size);
    printf("intermediate   %d\n", c->intermediate_size);
    printf("heads          %d query, %d key/value (%d:1), head dim %d\n", c->n_heads, c->n_kv_heads,
           c->n_heads / c->n_kv_heads, c->head_dim);
    printf("vocab          %d\n", c->vocab_size);
    printf("rope           theta %g", short_num(c->rope_theta));
    if (c->rope_llama3)
        printf(", llama3 scaling (factor %g, low %g, high %g, original context %d)", c->rope_factor,
               c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_pos);
    if (c->rope_longrope) {
        const int h = c->head_dim / 2;
        float smin = c->rope_short_factor[0], smax = smin, lmin = c->rope_long_factor[0], lmax = lmin;
        for (int i = 1; i < h && i < ENG_ROPE_MAX_FACTORS; i++) {
            smin = fminf(smin, c->rope_short_factor[i]), smax = fmaxf(smax, c->rope_short_factor[i]);
            lmin = fminf(lmin, c->rope_long_factor[i]), lmax = fmaxf(lmax, c->rope_long_factor[i]);
        }
        printf(", longrope scaling (factor %g, cos/sin x %g; %d short factors %g..%g up to %d tokens, "
               "long factors %g..%g beyond)", short_num(c->rope_factor), short_num(c->rope_attn_factor), h,
               short_num(smin), short_num(smax), c->rope_original_max_pos, short_num(lmin), short_num(lmax));
    }
    printf("\n");
    printf("rms norm eps   %g\n", short_num(c->rms_norm_eps));
    printf("q/k/v bias     %s\n", c->qkv_bias ? "yes" : "no");
    printf("tied lm head   %s\n", c->tie_word_embeddings ? "yes" : "no");
    if (c->sliding_window) printf("sliding window %d\n", c->sliding_window);
    if (c->torch_dtype[0]) printf("dtype          %s (config torch_dtype %s)\n", dts, c->torch_dtype);
    else printf("dtype          %s\n", dts);
    printf("parameters     %lld (%.2f M)\n", (long long)m->n_params, (double)m->n_params / 1e6);
    printf("max context    %d\n", c->max_position_embeddings);
    printf("prefill memory %s for %ld tokens (f32 CPU): weights %s mapped, converted weights %s,\n"
           "               activations %s, kept Q/K/V + LSE %s, outputs %s\n",
           b[5], n, b[0], b[1], b[2], b[3], b[4]);
    if (n > c->max_position_embeddings)
        printf("note           --len %ld exceeds the model's max context %d\n", n, c->max_position_embeddings);
    int rc = 0;
    if (json && write_json(json, m, n, &e, dts)) rc = 1;
    eng_model_free(m);
    return rc;
}
