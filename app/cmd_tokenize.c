/* cmd_tokenize: `attnscope tokenize (--model DIR|FILE.gguf | --tokenizer FILE) (--text STR | --prompt
 * FILE) [--json OUT] [--no-bos]` prints the token ids of a text and their display pieces, the way
 * the other commands tokenize prompts (engine/eng_tok.h). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "eng_gguf.h"
#include "eng_model.h"
#include "eng_tok.h"

#define PROMPT_MAX_BYTES (256u << 20)

static void usage(FILE *f) {
    fprintf(f, "usage: attnscope tokenize (--model DIR | --tokenizer FILE) (--text STR | --prompt FILE)\n"
               "                          [--json OUT] [--no-bos] [--quiet]\n\n"
               "Print the token ids of a text and the text of each token.\n\n"
               "  --model DIR      model directory (tokenizer.json, or the byte vocabulary of a tiny model)\n"
               "                   or a .gguf file (the tokenizer in its metadata)\n"
               "  --tokenizer FILE a tokenizer.json or .gguf file\n"
               "  --text STR       the text to tokenize\n"
               "  --prompt FILE    read the text from FILE\n"
               "  --json OUT       also write {\"ids\": [...], \"pieces\": [...]} to OUT\n"
               "  --no-bos         do not prepend the BOS token the model expects\n"
               "  --quiet          print only the summary line\n"
               "  -h, --help       this help\n");
}

/* config.json of a model directory, when there is one (for the byte vocabulary and BOS id). */
static int read_config(const char *dir, eng_config *cfg, int *have) {
    char path[4200];
    struct stat st;
    *have = 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (stat(path, &st) != 0) return 0;
    size_t len;
    char *txt = cli_read_file("tokenize", path, 16u << 20, &len);
    if (!txt) return -1;
    eng_err err = {{0}};
    int rc = eng_config_parse(cfg, txt, len, path, &err);
    free(txt);
    if (rc) {
        cli_error("tokenize", "%s", err.msg);
        return -1;
    }
    *have = 1;
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"tokenizer", required_argument, 0, 't'},
        {"text", required_argument, 0, 'x'},  {"prompt", required_argument, 0, 'p'},
        {"json", required_argument, 0, 'j'},  {"no-bos", no_argument, 0, 'B'},
        {"quiet", no_argument, 0, 'q'},       {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *tokfile = NULL, *text = NULL, *prompt = NULL, *json = NULL;
    int bos = 1, quiet = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 't': tokfile = optarg; break;
        case 'x': text = optarg; break;
        case 'p': prompt = optarg; break;
        case 'j': json = optarg; break;
        case 'B': bos = 0; break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); return 0;
        default:
            cli_error("tokenize", "unknown or incomplete option '%s'", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        cli_error("tokenize", "unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (!!model + !!tokfile != 1) {
        cli_error("tokenize", "give exactly one of --model DIR and --tokenizer FILE");
        usage(stderr);
        return 2;
    }
    if (!!text + !!prompt != 1) {
        cli_error("tokenize", "give exactly one of --text STR and --prompt FILE");
        usage(stderr);
        return 2;
    }
    eng_config cfg;
    int have_cfg = 0;
    memset(&cfg, 0, sizeof cfg);
    struct stat st;
    eng_err err = {{0}};
    if (model && stat(model, &st) == 0 && S_ISDIR(st.st_mode) && read_config(model, &cfg, &have_cfg)) return 1;
    if (model && eng_gguf_is_path(model)) { /* the config of a GGUF model (for a byte vocabulary) */
        eng_model *m = NULL;
        if (eng_model_load(&m, model, &err)) {
            cli_error("tokenize", "%s", err.msg);
            return 1;
        }
        cfg = m->cfg;
        have_cfg = 1;
        eng_model_free(m);
    }
    eng_tokenizer *tok = eng_tok_load(model ? model : tokfile, have_cfg ? &cfg : NULL, &err);
    if (!tok) {
        cli_error("tokenize", "%s", err.msg);
        return 1;
    }
    size_t len;
    char *owned = NULL;
    if (prompt) {
        owned = cli_read_file("tokenize", prompt, PROMPT_MAX_BYTES, &len);
        if (!owned) {
            eng_tok_free(tok);
            return 1;
        }
        text = owned;
    } else {
        len = strlen(text);
    }
    int *ids = NULL, n = 0, rc = 1;
    if (eng_tok_encode(tok, text, len, bos, &ids, &n, &err)) {
        cli_error("tokenize", "%s", err.msg);
        goto done;
    }
    printf("%d tokens (%s tokenizer, vocabulary %d, %zu bytes of text)\n", n, eng_tok_kind_name(eng_tok_get_kind(tok)),
           eng_tok_vocab_size(tok), len);
    if (!quiet)
        for (int i = 0; i < n; i++) printf("%6d %8d  %s\n", i, ids[i], eng_tok_piece(tok, ids[i]));
    if (json) {
        cJSON *root = cJSON_CreateObject(), *ja = cJSON_AddArrayToObject(root, "ids"),
              *jp = cJSON_AddArrayToObject(root, "pieces");
        for (int i = 0; i < n; i++) {
            cJSON_AddItemToArray(ja, cJSON_CreateNumber(ids[i]));
            cJSON_AddItemToArray(jp, cJSON_CreateString(eng_tok_piece(tok, ids[i])));
        }
        char *s = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        if (!s) {
            cli_error("tokenize", "out of memory writing JSON");
            goto done;
        }
        size_t sl = strlen(s);
        s[sl] = 0;
        int w = cli_write_atomic("tokenize", json, s, sl);
        free(s);
        if (w) goto done;
    }
    rc = 0;
done:
    free(ids);
    free(owned);
    eng_tok_free(tok);
    return rc;
}
