/* cli_util: flag parsing, file reading and atomic writes shared by the subcommands. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "eng_err.h"

char cli_cmdline[4096];

void cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "attnscope %s: ", cmd ? cmd : "");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_parse_int(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || v < lo || v > hi) {
        cli_error(cmd, "%s: bad value '%s' (want an integer in [%ld, %ld])", flag, s ? s : "", lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *cmd, const char *flag, const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || errno || end == s || *end || !(v >= lo && v <= hi)) {
        cli_error(cmd, "%s: bad value '%s' (want a number in [%g, %g])", flag, s ? s : "", lo, hi);
        return -1;
    }
    *out = (float)v;
    return 0;
}

char *cli_read_file(const char *cmd, const char *path, size_t max_bytes, size_t *len) {
    /* O_NONBLOCK: opening a FIFO must not block (the fstat below refuses it); no effect on files */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        cli_error(cmd, "%s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        cli_error(cmd, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        cli_error(cmd, "%s: file is %lld bytes, more than the %zu allowed", path, (long long)st.st_size, max_bytes);
        fclose(f);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        cli_error(cmd, "%s: out of memory", path);
        fclose(f);
        return NULL;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        cli_error(cmd, "%s: read error", path);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int cli_write_atomic(const char *cmd, const char *path, const char *data, size_t len) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        cli_error(cmd, "%s: path too long", path);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        cli_error(cmd, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            cli_error(cmd, "cannot write %s: %s", path, strerror(errno));
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        cli_error(cmd, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

int cli_parse_tokens(const char *cmd, const char *s, int vocab, int **ids, int *n) {
    int cap = 64, cnt = 0;
    int *v = malloc(sizeof(int) * (size_t)cap);
    const char *p = s;
    while (v) {
        if (*p < '0' || *p > '9') break;
        long x = 0;
        while (*p >= '0' && *p <= '9' && x <= 2000000000L) x = x * 10 + (*p++ - '0');
        if (x >= vocab) {
            cli_error(cmd, "--tokens: id %ld is outside the model's vocabulary [0, %d)", x, vocab);
            free(v);
            return -1;
        }
        if (cnt == cap) {
            int *nv = cap < (1 << 28) ? realloc(v, sizeof(int) * (size_t)cap * 2) : NULL;
            if (!nv) break;
            v = nv, cap *= 2;
        }
        v[cnt++] = (int)x;
        if (!*p) {
            *ids = v, *n = cnt;
            return 0;
        }
        if (*p++ != ',') break;
    }
    cli_error(cmd, "--tokens: bad value '%s' (want comma-separated token ids, e.g. 1,2,3)", s);
    free(v);
    return -1;
}

int cli_load_prompt(const char *cmd, const char *model_dir, const eng_config *cfg, const char *prompt,
                    const char *text, const char *tokens, eng_tokenizer **tok, int **ids, int *n) {
    eng_err err;
    *tok = NULL, *ids = NULL, *n = 0;
    if (tokens) {
        if (cli_parse_tokens(cmd, tokens, cfg->vocab_size, ids, n)) return 2;
        *tok = eng_tok_load(model_dir, cfg, &err); /* only for showing token text; optional */
    } else {
        if (!(*tok = eng_tok_load(model_dir, cfg, &err))) {
            cli_error(cmd, "%s", err.msg);
            return 2;
        }
        size_t len = 0;
        char *buf = NULL;
        if (prompt && !(buf = cli_read_file(cmd, prompt, CLI_PROMPT_MAX_BYTES, &len))) return 1;
        if (!(prompt ? len : strlen(text))) { /* BOS alone would make it one token: refuse, naming it */
            if (prompt) cli_error(cmd, "the prompt is empty (%s is 0 bytes)", prompt);
            else cli_error(cmd, "the prompt is empty (--text '')");
            free(buf);
            return 2;
        }
        int bad = eng_tok_encode(*tok, prompt ? buf : text, prompt ? len : strlen(text), 1, ids, n, &err);
        free(buf);
        if (bad) {
            cli_error(cmd, "%s", err.msg);
            return 1;
        }
    }
    if (*n < 1) {
        cli_error(cmd, "the prompt is empty (no tokens)");
        return 2;
    }
    return 0;
}
