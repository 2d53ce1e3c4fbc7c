/* cli: subcommands of the attnscope binary. Each cmd_* parses its own flags (getopt_long),
 * prints to the user and returns the process exit code: 0 ok, 1 runtime error, 2 usage error. */
#ifndef CLI_H
#define CLI_H

#include <stdio.h>

#include "eng_model.h"
#include "eng_tok.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} cli_command;

/* The command table (app/main.c); NULL-terminated. */
extern const cli_command cli_commands[];

/* Helpers shared by the commands (app/cli_util.c). */
void cli_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Parse a strictly positive/ranged int; prints a usage error naming flag and value on failure. */
int cli_parse_int(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out);
int cli_parse_float(const char *cmd, const char *flag, const char *s, double lo, double hi, float *out);
/* Read a whole file (NUL-terminated); NULL and a message on failure. Caps at max_bytes. */
char *cli_read_file(const char *cmd, const char *path, size_t max_bytes, size_t *len);
/* Write text atomically: tmp file in the same directory, fsync, rename. 0 ok, -1 (printed). */
int cli_write_atomic(const char *cmd, const char *path, const char *data, size_t len);
/* Largest prompt file the commands read. */
#define CLI_PROMPT_MAX_BYTES (64u << 20)
/* "1,2,3" -> ids; strict: decimal ids in [0, vocab), single commas. Prints a usage error on failure. */
int cli_parse_tokens(const char *cmd, const char *s, int vocab, int **ids, int *n);
/* The prompt of a command: --tokens ids, else --prompt FILE or --text STR through the model's
 * tokenizer (BOS added). *tok is loaded when possible (with --tokens only for labels, optional).
 * Returns the exit code to use on failure (1 runtime, 2 usage), 0 on success with *n >= 1. */
int cli_load_prompt(const char *cmd, const char *model_dir, const eng_config *cfg, const char *prompt,
                    const char *text, const char *tokens, eng_tokenizer **tok, int **ids, int *n);
/* The full command line, for provenance (PNG tEXt, JSON reports). Set by main. */
extern char cli_cmdline[4096];

int cmd_info(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_tui(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_grid(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_eval(int argc, char **argv);

#endif
