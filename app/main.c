/* attnscope entry point: dispatches to the subcommands in cli_commands. With no arguments it
 * opens the explorer on the shipped sample (or prints help where the explorer is unavailable). */
#include <stdio.h>
#include <string.h>

#include "cli.h"

const cli_command cli_commands[] = {
    {"info", cmd_info, "describe a model directory: architecture, sizes, memory for --len N"},
    {"run", cmd_run, "prefill a prompt (dense or --patterns CFG.json), report and --json"},
    {"tui", cmd_tui, "the interactive explorer (default: the shipped sample model and prompt)"},
    {"tokenize", cmd_tokenize, "print the token ids and texts of a prompt (tokenizer.json, GGUF, bytes)"},
    {"bench", cmd_bench, "time the GPU attention kernels: dense vs sparse patterns (incl. index build)"},
    {"map", cmd_map, "one head's attention map (pooled, never N x N) as PNG or on the terminal"},
    {"grid", cmd_grid, "every head of a layer, labelled with its pattern, on one scale"},
    {"diff", cmd_diff, "dense | sparse | difference of one head on one scale"},
    {"search", cmd_search, "per-head pattern search on a prompt: winners + every candidate's score"},
    {"eval", cmd_eval, "accuracy per pattern: passkey retrieval (length x depth) and perplexity"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f) {
    fprintf(f, "attnscope - see, measure and speed up sparse attention\n\n"
               "usage: attnscope COMMAND [options]   (attnscope COMMAND --help for its options)\n\n"
               "commands:\n");
    for (const cli_command *c = cli_commands; c->name; c++) fprintf(f, "  %-9s %s\n", c->name, c->summary);
}

int main(int argc, char **argv) {
    size_t off = 0;
    for (int i = 0; i < argc && off + 2 < sizeof cli_cmdline; i++) {
        int w = snprintf(cli_cmdline + off, sizeof cli_cmdline - off, "%s%s", i ? " " : "", argv[i]);
        if (w < 0) break;
        off += (size_t)w;
        if (off >= sizeof cli_cmdline) { off = sizeof cli_cmdline - 1; break; }
    }
    if (argc < 2) {
        for (const cli_command *c = cli_commands; c->name; c++)
            if (!strcmp(c->name, "tui")) return c->fn(argc - 1, argv + 1);
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("attnscope 0.1\n");
        return 0;
    }
    for (const cli_command *c = cli_commands; c->name; c++)
        if (!strcmp(c->name, argv[1])) return c->fn(argc - 1, argv + 1);
    fprintf(stderr, "attnscope: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
