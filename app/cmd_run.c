/* cmd_run: `attnscope run` prefills one prompt on a model (CPU or CUDA backend) and reports the
 * tokens, time, backend and the top-5 next tokens; --json writes the report, --logits-out the
 * last position's full logits. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "eng_backend.h"
#include "eng_decode.h"
#include "eng_model.h"
#include "cli_report.h"
#include "eng_patcfg.h"
#include "eng_metrics.h"
#include "eng_report.h"
#include "eng_transform.h"
#include "eng_tok.h"


static void usage(FILE *f) {
    fprintf(f,
            "usage: attnscope run --model DIR (--prompt FILE | --text STR | --tokens 1,2,3) [--json OUT]\n"
            "                     [--logits-out OUT.json] [--backend auto|cpu|cuda] [--patterns CFG.json]\n"
            "                     [--generate N] [--transform 24|int8|24+int8]\n\n"
            "Prefill one prompt and print the tokens, time, backend and the top-5 next tokens.\n\n"
            "  --model DIR         Hugging Face checkpoint directory (required)\n"
            "  --prompt FILE       prompt text from a file (encoded with the model's tokenizer, BOS first)\n"
            "  --text STR          prompt text given inline\n"
            "  --tokens 1,2,3      token ids given directly (needed for models without a tokenizer)\n"
            "  --json OUT          write a machine-readable report to OUT\n"
            "  --logits-out OUT    write the last position's logits as a JSON array of numbers\n"
            "  --backend B         auto (CUDA when usable, else CPU; default), cpu or cuda\n"
            "  --patterns CFG      per-head sparse pattern config (JSON) instead of dense attention\n"
            "  --transform T       run a transformed copy of the model: 24 (one-shot 2:4 magnitude pruning),\n"
            "                      int8 (symmetric per-channel INT8, dequantised) or 24+int8, of the\n"
            "                      attention and MLP weights; reports KL/top-1/perplexity vs the original\n"
            "  --generate N        then generate N tokens greedily (dense KV-cache decode, CPU) and print them\n"
            "  -h, --help          this help\n");
}

typedef struct {
    int id;
    float logit;
    double prob;
} top_tok;

/* The k largest logits (k <= 5) with their softmax probabilities. */
static int top_k(const float *logits, int V, top_tok *top, int k) {
    double mx = -INFINITY, sum = 0.0;
    for (int i = 0; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
    int cnt = 0;
    for (int i = 0; i < V; i++) {
        if (cnt == k && !(logits[i] > top[k - 1].logit)) continue;
        int j = cnt < k ? cnt++ : k - 1;
        while (j > 0 && logits[i] > top[j - 1].logit) top[j] = top[j - 1], j--;
        top[j] = (top_tok){i, logits[i], 0.0};
    }
    for (int i = 0; i < cnt; i++) top[i].prob = exp((double)top[i].logit - mx) / sum;
    return cnt;
}

/* Mean negative log-likelihood of the prompt's tokens after the first, nats. */
static double prompt_nll(const eng_prefill_out *o) {
    double s = 0;
    for (int i = 0; i + 1 < o->n; i++) s -= o->next_logprob[i];
    return o->n > 1 ? s / (o->n - 1) : NAN;
}

static int write_logits(const char *path, const float *logits, int V) {
    size_t cap = (size_t)V * 18 + 8, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        cli_error("run", "out of memory writing %s", path);
        return -1;
    }
    int nonfinite = 0;
    buf[len++] = '[';
    for (int i = 0; i < V; i++) {
        if (isfinite(logits[i]))
            len += (size_t)snprintf(buf + len, cap - len, "%s%.9g", i ? "," : "", (double)logits[i]);
        else
            len += (size_t)snprintf(buf + len, cap - len, "%snull", i ? "," : ""), nonfinite++;
    }
    len += (size_t)snprintf(buf + len, cap - len, "]\n");
    int rc = cli_write_atomic("run", path, buf, len);
    free(buf);
    if (nonfinite) cli_error("run", "warning: %d logits are not finite (written as null)", nonfinite);
    return rc;
}

static cJSON *json_num(double x) { return isfinite(x) ? cJSON_CreateNumber(x) : cJSON_CreateNull(); }

static int write_report(const char *path, const eng_model *m, const eng_backend *be, const eng_prefill_out *o,
                        const top_tok *top, int ntop, const eng_tokenizer *tok, const char *patterns,
                        const eng_report *rep, cJSON *transform) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "command", cli_cmdline);
    cJSON_AddStringToObject(r, "model", m->dir);
    cJSON_AddStringToObject(r, "architecture", m->cfg.arch_name);
    cJSON_AddNumberToObject(r, "n_layers", m->cfg.n_layers);
    cJSON_AddNumberToObject(r, "n_params", (double)m->n_params);
    cJSON_AddStringToObject(r, "backend", be->name);
    cJSON_AddStringToObject(r, "device", be->device);
    if (patterns)
        cJSON_AddStringToObject(r, "patterns", patterns);
    else
        cJSON_AddNullToObject(r, "patterns");
    if (rep) cJSON_AddItemToObject(r, "pattern_report", eng_report_to_json(rep)); /* every per-head number */
    if (transform) cJSON_AddItemToObject(r, "transform", transform);
    cJSON_AddNumberToObject(r, "n_tokens", o->n);
    cJSON_AddItemToObject(r, "seconds", json_num(o->seconds));
    cJSON_AddItemToObject(r, "tokens_per_second", json_num(o->n / o->seconds));
    double at = 0;
    cJSON *as = cJSON_AddArrayToObject(r, "attn_seconds");
    for (int l = 0; l < o->n_layers; l++) at += o->attn_seconds[l], cJSON_AddItemToArray(as, json_num(o->attn_seconds[l]));
    cJSON_AddItemToObject(r, "attn_seconds_total", json_num(at));
    const double nll = prompt_nll(o);
    cJSON_AddItemToObject(r, "prompt_nll", json_num(nll));
    cJSON_AddItemToObject(r, "prompt_ppl", json_num(exp(nll)));
    cJSON_AddNumberToObject(r, "next_token", o->argmax[o->n - 1]);
    cJSON *ta = cJSON_AddArrayToObject(r, "top5");
    for (int i = 0; i < ntop; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", top[i].id);
        cJSON_AddItemToObject(t, "logit", json_num(top[i].logit));
        cJSON_AddItemToObject(t, "prob", json_num(top[i].prob));
        if (tok) cJSON_AddStringToObject(t, "text", eng_tok_piece(tok, top[i].id));
        cJSON_AddItemToArray(ta, t);
    }
    char *s = cJSON_Print(r);
    cJSON_Delete(r);
    if (!s) {
        cli_error("run", "out of memory writing %s", path);
        return -1;
    }
    size_t len = strlen(s);
    char *buf = malloc(len + 2);
    int rc = -1;
    if (buf) {
        memcpy(buf, s, len);
        buf[len] = '\n';
        rc = cli_write_atomic("run", path, buf, len + 1);
    } else
        cli_error("run", "out of memory writing %s", path);
    free(buf);
    cJSON_free(s);
    return rc;
}

int cmd_run(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"text", required_argument, 0, 't'},    {"tokens", required_argument, 0, 'k'},
        {"json", required_argument, 0, 'j'},    {"logits-out", required_argument, 0, 'o'},
        {"backend", required_argument, 0, 'b'}, {"patterns", required_argument, 0, 'P'},
        {"generate", required_argument, 0, 'G'}, {"transform", required_argument, 0, 'X'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *prompt = NULL, *text = NULL, *tokens_s = NULL, *json = NULL, *logits_out = NULL;
    const char *backend = "auto", *patterns = NULL, *transform = NULL;
    int generate = 0;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 't': text = optarg; break;
        case 'k': tokens_s = optarg; break;
        case 'j': json = optarg; break;
        case 'o': logits_out = optarg; break;
        case 'b': backend = optarg; break;
        case 'P': patterns = optarg; break;
        case 'X': transform = optarg; break;
        case 'G':
            if (cli_parse_int("run", "--generate", optarg, 0, 1 << 20, &generate)) return 2;
            break;
        case 'h': usage(stdout); return 0;
        case ':':
            cli_error("run", "option '%s' needs a value", argv[optind - 1]);
            usage(stderr);
            return 2;
        default:
            cli_error("run", "unknown option '%s'", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        cli_error("run", "unexpected argument '%s'", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!model_dir) {
        cli_error("run", "--model DIR is required");
        usage(stderr);
        return 2;
    }
    if ((prompt != NULL) + (text != NULL) + (tokens_s != NULL) != 1) {
        cli_error("run", "give exactly one of --prompt FILE, --text STR or --tokens 1,2,3");
        usage(stderr);
        return 2;
    }
    if (strcmp(backend, "auto") && strcmp(backend, "cpu") && strcmp(backend, "cuda")) {
        cli_error("run", "--backend: bad value '%s' (want auto, cpu or cuda)", backend);
        usage(stderr);
        return 2;
    }

    unsigned xf_flags = 0;
    if (transform && eng_transform_parse(transform, &xf_flags, &(eng_err){{0}})) {
        cli_error("run", "--transform: bad value '%s' (want 24, int8 or 24+int8)", transform);
        usage(stderr);
        return 2;
    }

    int rc = 1;
    eng_err err = {{0}};
    eng_transformed xf; /* --transform: the transformed copy, its reference prefill and comparison */
    memset(&xf, 0, sizeof xf);
    eng_prefill_out base;
    memset(&base, 0, sizeof base);
    eng_e2e_metrics xm;
    memset(&xm, 0, sizeof xm);
    cJSON *xj = NULL;
    eng_model *m = NULL;
    eng_tokenizer *tok = NULL;
    eng_backend *be = NULL;
    int *ids = NULL, n = 0;
    eng_prefill_out out;
    memset(&out, 0, sizeof out);
    eng_patcfg pcfg;
    memset(&pcfg, 0, sizeof pcfg);
    eng_report rep;
    memset(&rep, 0, sizeof rep);

    if (eng_model_load(&m, model_dir, &err)) {
        cli_error("run", "%s", err.msg);
        goto done;
    }
    if ((rc = cli_load_prompt("run", model_dir, &m->cfg, prompt, text, tokens_s, &tok, &ids, &n)) != 0)
        goto done;
    rc = 1;
    if (patterns && (eng_patcfg_load(&pcfg, patterns, &err) ||
                     eng_patcfg_check_model(&pcfg, m->cfg.n_layers, m->cfg.n_heads, &err))) {
        cli_error("run", "--patterns %s: %s", patterns, err.msg);
        goto done;
    }
    if (!(be = eng_backend_create(backend, &err))) {
        cli_error("run", "backend %s: %s", backend, err.msg);
        goto done;
    }
    eng_prefill_opts po = {.patterns = patterns ? &pcfg.cfg : NULL, .keep_qkv = generate > 0};
    /* --transform: the original model's prefill (same patterns) is the reference; everything
     * below then runs on the transformed copy mr. */
    const eng_model *mr = m;
    if (transform) {
        eng_prefill_opts bo = {.patterns = po.patterns};
        if (be->prefill(be, m, ids, n, &bo, &base, &err)) {
            cli_error("run", "prefill (original model): %s", err.msg);
            goto done;
        }
        if (eng_transform_model(m, xf_flags, &xf, &err)) {
            cli_error("run", "--transform %s: %s", transform, err.msg);
            goto done;
        }
        mr = &xf.model;
    }
    /* --patterns: dense + sparse prefill and per-head metrics; out is the sparse prefill. */
    eng_report_opts ro = {.progress = cli_report_progress};
    if (patterns ? eng_report_run(be, mr, ids, n, &pcfg.cfg, &ro, &rep, &out, &err)
                 : be->prefill(be, mr, ids, n, &po, &out, &err)) {
        cli_error("run", "prefill: %s", err.msg);
        goto done;
    }
    if (transform) {
        if (eng_metrics_e2e(&base, &out, &xm, &err)) {
            cli_error("run", "--transform: %s", err.msg);
            goto done;
        }
        xj = cJSON_CreateObject();
        cJSON_AddStringToObject(xj, "transform", eng_transform_name(xf_flags));
        cJSON_AddNumberToObject(xj, "weights", (double)xf.n_weights);
        cJSON_AddItemToObject(xj, "zero_fraction", json_num(xf.n_weights ? (double)xf.n_zero / xf.n_weights : 0));
        cJSON_AddItemToObject(xj, "weight_rel_err", json_num(xf.rel_err));
        cJSON_AddItemToObject(xj, "kl_last", json_num(xm.kl_last));
        cJSON_AddItemToObject(xj, "top1_agree", json_num(xm.top1_agree));
        cJSON_AddItemToObject(xj, "ppl_original", json_num(xm.ppl_dense));
        cJSON_AddItemToObject(xj, "ppl_transformed", json_num(xm.ppl_sparse));
        cJSON_AddStringToObject(xj, "compared_to", "the untransformed model with the same --patterns (dense if none)");
    }

    top_tok top[5];
    const int ntop = top_k(out.last_logits, out.vocab, top, 5);
    double at = 0;
    for (int l = 0; l < out.n_layers; l++) at += out.attn_seconds[l];
    printf("model:    %s (%s, %d layers, %.2fM params)\n", m->dir, m->cfg.arch_name, m->cfg.n_layers,
           (double)m->n_params / 1e6);
    printf("backend:  %s - %s\n", be->name, be->device);
    printf("tokens:   %d\n", n);
    if (out.seconds >= 0.1)
        printf("time:     %.3f s (%.0f tokens/s; attention %.3f s)\n", out.seconds, n / out.seconds, at);
    else
        printf("time:     %.3f ms (%.0f tokens/s; attention %.3f ms)\n", out.seconds * 1e3, n / out.seconds, at * 1e3);
    if (n > 1) printf("prompt:   mean NLL %.4f nats, perplexity %.3f\n", prompt_nll(&out), exp(prompt_nll(&out)));
    printf("next token (top %d):\n", ntop);
    for (int i = 0; i < ntop; i++) {
        printf("  %d. %6d  logit %9.4f  p %.4f", i + 1, top[i].id, top[i].logit, top[i].prob);
        if (tok) printf("  '%s'", eng_tok_piece(tok, top[i].id));
        putchar('\n');
    }
    if (patterns) printf("patterns: %s (sparse prefill)\n", patterns);
    if (patterns) cli_report_print(stdout, &rep);
    if (transform)
        printf("transform: %s of attention+MLP weights (%.1f%% zero, weight rel err %.4f) vs the original model:\n"
               "           KL(last) %.4g nats, top-1 agree %.4f, perplexity %.3f -> %.3f\n",
               eng_transform_name(xf_flags), xf.n_weights ? 100.0 * (double)xf.n_zero / xf.n_weights : 0.0,
               xf.rel_err, xm.kl_last, xm.top1_agree, xm.ppl_dense, xm.ppl_sparse);
    if (generate > 0) {
        /* the dense prefill kept K/V; a sparse one is redone with K/V kept (the report's is not) */
        eng_generation g;
        const int stop = tok ? eng_tok_eos_id(tok) : -1;
        if (out.k ? eng_decode_continue(mr, &out, generate, stop, &g, &err)
                  : eng_decode_greedy(be, mr, ids, n, &po, generate, stop, &g, &err)) {
            cli_error("run", "generate: %s", err.msg);
            goto done;
        }
        char *txt = NULL;
        size_t tl = 0;
        printf("generated %d tokens in %.3f s%s:\n", g.n, g.decode_s, g.stopped ? " (stopped at EOS)" : "");
        if (tok && !eng_tok_decode(tok, g.ids, g.n, 0, &txt, &tl, &err)) {
            fwrite(txt, 1, tl, stdout);
            putchar('\n');
        } else {
            for (int i = 0; i < g.n; i++) printf("%s%d", i ? "," : "", g.ids[i]);
            putchar('\n');
        }
        free(txt);
        eng_generation_free(&g);
    }

    rc = 0;
    if (logits_out && write_logits(logits_out, out.last_logits, out.vocab)) rc = 1;
    if (json && write_report(json, m, be, &out, top, ntop, tok, patterns, patterns ? &rep : NULL, xj)) rc = 1;
    if (json) xj = NULL; /* the report owns it now */
done:
    cJSON_Delete(xj);
    eng_prefill_out_free(&base);
    eng_transform_free(&xf);
    eng_prefill_out_free(&out);
    if (be) be->destroy(be);
    eng_tok_free(tok);
    eng_patcfg_free(&pcfg);
    eng_report_free(&rep);
    eng_model_free(m);
    free(ids);
    return rc;
}
