/* test_cli_robust: the real attnscope binary, every subcommand, fed bad input — unknown flags, missing
 * and empty values, negative / huge / non-numeric / NaN / inf numbers, directories, FIFOs and missing
 * files where files go, outputs in missing directories, junk --tokens, empty prompts, pattern JSON
 * with odd keys, types, huge numbers, duplicate keys and deep nesting. Each must exit 1 or 2 (never 0,
 * never a signal) within `timeout 20`, with a message on stderr naming the bad thing, and leave no
 * partial or temp file behind. Uses tests/fixtures/tiny-llama. */
#include "test_util.h"

#include <dirent.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIX "tests/fixtures/tiny-llama"

static char D[64]; /* scratch dir of this run */

typedef struct {
    int rc;        /* exit status, -1 when killed */
    int sig;       /* signal that ended it, 0 if none */
    int timed_out;
    char err[4096];
} cli_res;

/* Runs `attnscope ARGS` (ARGS shell-quoted by the caller) with stdin from /dev/null. */
static cli_res run_cli(const char *args) {
    cli_res r;
    memset(&r, 0, sizeof r);
    char ef[128], cmd[8192];
    snprintf(ef, sizeof ef, "%s/.stderr", D);
    snprintf(cmd, sizeof cmd, "timeout -k 5 20 %s %s </dev/null >/dev/null 2>'%s'", tu_bin(), args, ef);
    int st = system(cmd);
    if (st == -1) fail_msg("system() failed: %s", strerror(errno));
    if (WIFSIGNALED(st)) {
        r.rc = -1, r.sig = WTERMSIG(st);
    } else {
        r.rc = WEXITSTATUS(st);
        if (r.rc == 124 || r.rc == 137) r.timed_out = 1;
        else if (r.rc > 128) r.sig = r.rc - 128; /* the shell reports a child killed by signal n as 128 + n */
    }
    FILE *f = fopen(ef, "rb");
    if (f) {
        size_t n = fread(r.err, 1, sizeof r.err - 1, f);
        r.err[n] = 0;
        fclose(f);
    }
    unlink(ef);
    return r;
}

/* Bad input: exit 1 or 2 with `needle` (case-insensitive) in stderr. */
static int expect_bad(const char *needle, const char *fmt, ...) {
    char args[6000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    cli_res r = run_cli(args);
    int ok = !r.timed_out && !r.sig && (r.rc == 1 || r.rc == 2) && strcasestr(r.err, needle);
    if (!ok)
        print_error("FAIL: attnscope %s\n  rc=%d signal=%d timed_out=%d, want exit 1/2 and '%s' in stderr:\n  %.600s\n",
                    args, r.rc, r.sig, r.timed_out, needle, r.err);
    return !ok;
}

/* Odd but valid input: exit 0, no signal. */
static int expect_ok(const char *fmt, ...) {
    char args[6000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    cli_res r = run_cli(args);
    if (r.rc != 0 || r.sig || r.timed_out) {
        print_error("FAIL: attnscope %s\n  rc=%d signal=%d, want success:\n  %.600s\n", args, r.rc, r.sig, r.err);
        return 1;
    }
    return 0;
}

static void write_file(const char *name, const void *data, size_t len) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", D, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}
static void write_str(const char *name, const char *s) { write_file(name, s, strlen(s)); }

/* The inputs every test reads: empty, binary and FIFO prompts, a directory as an output, pattern
 * configs and candidate lists with odd content. */
#define NAT "\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 2, \"n_heads\": 4"
static const struct {
    const char *name, *json, *needle;
} bad_cfgs[] = {
    {"p_oddkey.json", "{" NAT ", \"bogus\": 1}", "bogus"},
    {"p_vstr.json", "{\"format\": \"attnscope-patterns\", \"version\": \"1\", \"n_layers\": 2, \"n_heads\": 4}", "version"},
    {"p_huge.json", "{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 1e300, \"n_heads\": 4}", "n_layers"},
    {"p_neg.json", "{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": -2, \"n_heads\": 4}", "n_layers"},
    {"p_frac.json", "{\"format\": \"attnscope-patterns\", \"version\": 1, \"n_layers\": 2.5, \"n_heads\": 4}", "n_layers"},
    {"p_defhuge.json", "{" NAT ", \"default\": {\"pattern\": \"vs\", \"vertical\": 1e300}}", "vertical"},
    {"p_defnan.json", "{" NAT ", \"default\": {\"pattern\": \"xattn\", \"threshold\": NaN}}", "JSON"},
    {"p_definf.json", "{" NAT ", \"default\": {\"pattern\": \"xattn\", \"threshold\": 1e999}}", "threshold"},
    {"p_defstr.json", "{" NAT ", \"default\": \"vs\"}", "default"},
    {"p_stride.json", "{" NAT ", \"default\": {\"pattern\": \"xattn\", \"stride\": 3}}", "stride"},
    {"p_nm.json", "{" NAT ", \"default\": {\"pattern\": \"nm\", \"n\": 5, \"m\": 4}}", "n = 5"},
    {"p_layers.json", "{" NAT ", \"layers\": {}}", "layers"},
    {"p_layer9.json", "{" NAT ", \"layers\": [{\"layer\": 9, \"heads\": []}]}", "layer"},
    {"p_headhuge.json", "{" NAT ", \"layers\": [{\"layer\": 0, \"heads\": [{\"head\": 1e20, \"pattern\": \"vs\"}]}]}", "head"},
    {"p_dupkey.json", "{" NAT ", \"format\": \"x\"}", "twice"},
    {"p_dupparam.json",
     "{" NAT ", \"layers\": [{\"layer\": 0, \"heads\": [{\"head\": 0, \"pattern\": \"vs\", \"vertical\": 5, \"vertical\": 7}]}]}",
     "twice"},
    {"p_trail.json", "{" NAT "} x", "JSON"},
    {"p_trunc.json", "{" NAT, "JSON"},
    {"p_null.json", "null", "not a pattern config"},
    {"p_empty.json", "", "not a pattern config"},
    {"p_mi_key.json", "[{\"99999999999999999999\": [\"vertical_and_slash\", 1000, 6096, 0.5]}]", "head key"},
    {"p_mi_neg.json", "[{\"0\": [\"vertical_and_slash\", -5, 1e308, 0.5]}]", "vertical_size"},
    {"p_mi_kind.json", "[{\"0\": [\"bogus\", 1, 2, 3]}]", "bogus"},
    {"p_mi_short.json", "[{\"0\": []}]", "want [pattern"},
};

static int setup(void **state) {
    (void)state;
    if (!getenv("ASAN_OPTIONS")) setenv("ASAN_OPTIONS", "detect_leaks=0:exitcode=86", 1);
    if (!getenv("UBSAN_OPTIONS")) setenv("UBSAN_OPTIONS", "exitcode=87:print_stacktrace=1", 1);
    snprintf(D, sizeof D, "/tmp/attnscope-cli-robust-XXXXXX");
    if (!mkdtemp(D)) return -1;
    char p[256];
    snprintf(p, sizeof p, "%s/adir", D);
    if (mkdir(p, 0755)) return -1;
    snprintf(p, sizeof p, "%s/fifo", D);
    if (mkfifo(p, 0644)) return -1;
    write_str("empty.txt", "");
    static const unsigned char bin[] = {0, 0xff, 0xfe, 0x80, 0xc0, 'x', 0, 1, 0xed, 0xa0, 0x80, 0xf4, 0x90};
    write_file("binary.txt", bin, sizeof bin);
    write_str("hello.txt", "hello world");
    for (size_t i = 0; i < sizeof bad_cfgs / sizeof bad_cfgs[0]; i++) write_str(bad_cfgs[i].name, bad_cfgs[i].json);
    /* 100k nested lists / objects: past cJSON's nesting limit, refused without a stack overflow */
    size_t dn = 100000;
    char *deep = malloc(2 * dn + 64);
    if (!deep) return -1;
    memset(deep, '[', dn), memset(deep + dn, ']', dn);
    write_file("p_deep.json", deep, 2 * dn);
    size_t k = 0;
    for (size_t i = 0; i < 20000; i++) memcpy(deep + k, "{\"a\":", 5), k += 5;
    deep[k++] = '1';
    memset(deep + k, '}', 20000), k += 20000;
    write_file("p_deepobj.json", deep, k);
    free(deep);
    write_str("c_odd.json", "[{\"pattern\": \"vs\", \"bogus\": 1}]");
    write_str("c_huge.json", "[{\"pattern\": \"vs\", \"vertical\": 1e300}]");
    write_str("c_kind.json", "[{\"pattern\": \"zz\"}]");
    write_str("c_empty.json", "[]");
    write_str("c_nested.json", "[[[]]]");
    return 0;
}

/* After every test: nothing but the inputs in D (no partial outputs, no *.tmp.*), adir empty. */
static void check_no_leftovers(void) {
    DIR *d = opendir(D);
    assert_non_null(d);
    struct dirent *e;
    int bad = 0;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, "adir") || !strcmp(n, "fifo")) continue;
        int known = !strcmp(n, "empty.txt") || !strcmp(n, "binary.txt") || !strcmp(n, "hello.txt") ||
                    !strncmp(n, "p_", 2) || !strncmp(n, "c_", 2);
        if (!known || strstr(n, ".tmp")) {
            print_error("left behind: %s/%s\n", D, n);
            bad = 1;
        }
    }
    closedir(d);
    char p[256];
    snprintf(p, sizeof p, "%s/adir", D);
    d = opendir(p);
    assert_non_null(d);
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            print_error("left behind: %s/%s\n", p, e->d_name);
            bad = 1;
        }
    closedir(d);
    snprintf(p, sizeof p, "%s/missing", D);
    struct stat st;
    assert_int_not_equal(stat(p, &st), 0); /* nobody created the missing directory */
    assert_false(bad);
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", D);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_info(void **state) {
    (void)state;
    int f = 0;
    f += expect_bad("--bogus", "info --model " FIX " --bogus");
    f += expect_bad("--model", "info --model");
    f += expect_bad("--model", "info");
    f += expect_bad("no such file", "info --model ''");
    f += expect_bad("/nonexistent/m", "info --model /nonexistent/m");
    f += expect_bad("config.json", "info --model %s/adir", D);
    f += expect_bad("not a directory", "info --model " FIX "/config.json");
    f += expect_bad("not a directory", "info --model %s/fifo", D);
    static const char *lens[] = {"-1", "0", "99999999999999999999", "abc", "''", "nan", "inf", "1e3", "12x", "5,6"};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) f += expect_bad("--len", "info --model " FIX " --len %s", lens[i]);
    f += expect_bad("missing/i.json", "info --model " FIX " --json %s/missing/i.json", D);
    f += expect_bad("adir", "info --model " FIX " --json %s/adir", D);
    f += expect_bad("extra", "info --model " FIX " extra");
    assert_int_equal(f, 0);
    check_no_leftovers();
}

static void test_run(void **state) {
    (void)state;
    int f = 0;
    const char *R = "run --model " FIX;
    f += expect_bad("--prompt", "%s", R);
    f += expect_bad("exactly one", "%s --tokens 1,2 --text hi", R);
    static const char *toks[] = {"''", "a,b", "1,,2", "1,2,", ",1", "-1", "' 1'", "'1;2'", "0x10", "1.5", "'1, 2'", "+1"};
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++) f += expect_bad("--tokens", "%s --tokens %s", R, toks[i]);
    f += expect_bad("vocabulary", "%s --tokens 99999999999999999999", R);
    f += expect_bad("vocabulary", "%s --tokens 1,272", R);
    f += expect_bad("empty", "%s --text ''", R);
    f += expect_bad("empty", "%s --prompt %s/empty.txt", R, D);
    f += expect_bad("not a regular file", "%s --prompt %s/adir", R, D);
    f += expect_bad("not a regular file", "%s --prompt %s/fifo", R, D);
    f += expect_bad("/nonexistent/p.txt", "%s --prompt /nonexistent/p.txt", R);
    f += expect_bad("--backend", "%s --tokens 1,2 --backend foo", R);
    f += expect_bad("--backend", "%s --tokens 1,2 --backend ''", R);
    static const char *gens[] = {"-1", "nan", "inf", "1e99", "99999999999", "''", "x"};
    for (size_t i = 0; i < sizeof gens / sizeof gens[0]; i++) f += expect_bad("--generate", "%s --tokens 1 --generate %s", R, gens[i]);
    f += expect_bad("--transform", "%s --tokens 1,2 --transform foo", R);
    f += expect_bad("--bogus", "%s --tokens 1,2 --bogus", R);
    f += expect_bad("--json", "%s --tokens 1,2 --json", R);
    f += expect_bad("missing/r.json", "%s --tokens 1,2 --json %s/missing/r.json", R, D);
    f += expect_bad("adir", "%s --tokens 1,2 --logits-out %s/adir", R, D);
    f += expect_bad("missing/l.json", "%s --tokens 1,2 --logits-out %s/missing/l.json", R, D);
    f += expect_bad("not a regular file", "%s --tokens 1,2 --patterns %s/adir", R, D);
    f += expect_bad("not a regular file", "%s --tokens 1,2 --patterns %s/fifo", R, D);
    f += expect_bad("/nonexistent/c.json", "%s --tokens 1,2 --patterns /nonexistent/c.json", R);
    f += expect_bad("architectures", "%s --tokens 1,2 --patterns " FIX "/config.json", R);
    for (size_t i = 0; i < sizeof bad_cfgs / sizeof bad_cfgs[0]; i++)
        f += expect_bad(bad_cfgs[i].needle, "%s --tokens 1,2,3 --patterns %s/%s", R, D, bad_cfgs[i].name);
    f += expect_bad("JSON", "%s --tokens 1,2,3 --patterns %s/p_deep.json", R, D);
    f += expect_bad("JSON", "%s --tokens 1,2,3 --patterns %s/p_deepobj.json", R, D);
    /* odd but valid: a binary prompt on the byte-level model, a one-token prompt */
    f += expect_ok("%s --prompt %s/binary.txt", R, D);
    f += expect_ok("%s --tokens 0", R);
    assert_int_equal(f, 0);
    check_no_leftovers();
}

/* map, grid and diff share their flags (app/cmd_map.c). */
static void test_figures(void **state) {
    (void)state;
    int f = 0;
    char M[256];
    snprintf(M, sizeof M, "--model " FIX " --prompt %s/hello.txt", D);
    f += expect_bad("--out", "map %s --layer 0 --head 0", M);
    f += expect_bad("--out", "map %s --layer 0 --head 0 --out %s/adir/m.png --term", M, D);
    f += expect_bad("--layer 9", "map %s --layer 9 --head 0 --term", M);
    f += expect_bad("--head 4", "map %s --layer 0 --head 4 --term", M);
    f += expect_bad("--layer", "map %s --layer -1 --head 0 --term", M);
    f += expect_bad("--layer", "map %s --layer 99999999999999 --head 0 --term", M);
    f += expect_bad("--head", "map %s --layer 0 --head x --term", M);
    static const char *sizes[] = {"0x0", "99999x10", "10x99999", "x", "10x", "-5x-5", "10x10x10", "''", "1e3x1e3"};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        f += expect_bad("--size", "map %s --layer 0 --head 0 --size %s --out %s/m.png", M, sizes[i], D);
    static const char *gammas[] = {"nan", "inf", "-inf", "-1", "0", "1e99", "abc"};
    for (size_t i = 0; i < sizeof gammas / sizeof gammas[0]; i++)
        f += expect_bad("--gamma", "map %s --layer 0 --head 0 --scale power --gamma %s --term", M, gammas[i]);
    static const char *ranges[] = {"5:2", "100:200", "a:b", "-1:-2", "99999999999999999:1", "1:2:3", "x"};
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        f += expect_bad("--q", "map %s --layer 0 --head 0 --q %s --term", M, ranges[i]);
        f += expect_bad("--k", "map %s --layer 0 --head 0 --k %s --term", M, ranges[i]);
    }
    f += expect_bad("--pool", "map %s --layer 0 --head 0 --pool foo --term", M);
    f += expect_bad("--cmap", "map %s --layer 0 --head 0 --cmap '' --term", M);
    f += expect_bad("--scale", "map %s --layer 0 --head 0 --scale foo --term", M);
    f += expect_bad("--threads", "map %s --layer 0 --head 0 --threads 0 --term", M);
    f += expect_bad("--threads", "map %s --layer 0 --head 0 --threads 100000 --term", M);
    f += expect_bad("gpu", "map %s --layer 0 --head 0 --backend gpu --term", M);
    f += expect_bad("/nonexistent/o.json", "map %s --layer 0 --head 0 --overlay /nonexistent/o.json --term", M);
    f += expect_bad("twice", "map %s --layer 0 --head 0 --overlay %s/p_dupkey.json --term", M, D);
    f += expect_bad("empty", "map --model " FIX " --text '' --layer 0 --head 0 --term");
    f += expect_bad("empty", "map --model " FIX " --prompt %s/empty.txt --layer 0 --head 0 --term", D);
    f += expect_bad("not a regular file", "map --model " FIX " --prompt %s/fifo --layer 0 --head 0 --term", D);
    f += expect_bad("missing/m.png", "map %s --layer 0 --head 0 --out %s/missing/m.png", M, D);
    f += expect_bad("adir", "map %s --layer 0 --head 0 --out %s/adir", M, D);
    f += expect_bad("--layer 2", "grid %s --layer 2 --term", M);
    f += expect_bad("canvas", "grid %s --layer 0 --size 8192x8192 --out %s/g.png", M, D);
    f += expect_bad("not a regular file", "grid %s --layer 0 --patterns %s/adir --term", M, D);
    f += expect_bad("missing/g.png", "grid %s --layer 0 --out %s/missing/g.png", M, D);
    f += expect_bad("--patterns", "diff %s --layer 0 --head 0 --term", M);
    f += expect_bad("/nonexistent/d.json", "diff %s --layer 0 --head 0 --patterns /nonexistent/d.json --term", M);
    f += expect_bad("--transform", "diff %s --layer 0 --head 0 --transform 42 --term", M);
    f += expect_bad("n_layers", "diff %s --layer 0 --head 0 --patterns %s/p_huge.json --term", M, D);
    f += expect_bad("missing/d.png", "diff %s --layer 0 --head 0 --transform 24 --out %s/missing/d.png", M, D);
    assert_int_equal(f, 0);
    check_no_leftovers();
}

static void test_search(void **state) {
    (void)state;
    int f = 0;
    char S[256];
    snprintf(S, sizeof S, "search --model " FIX " --tokens 1,2,3,4");
    f += expect_bad("--out", "%s", S);
    f += expect_bad("missing/s.json", "%s --out %s/missing/s.json", S, D);
    f += expect_bad("adir", "%s --out %s/adir", S, D);
    f += expect_bad("--objective", "%s --out %s/s.json --objective foo", S, D);
    static const char *ties[] = {"nan", "inf", "-1", "1e99", "x", "''"};
    for (size_t i = 0; i < sizeof ties / sizeof ties[0]; i++) f += expect_bad("--tie", "%s --out %s/s.json --tie %s", S, D, ties[i]);
    f += expect_bad("bogus", "%s --out %s/s.json --candidates %s/c_odd.json", S, D, D);
    f += expect_bad("vertical", "%s --out %s/s.json --candidates %s/c_huge.json", S, D, D);
    f += expect_bad("zz", "%s --out %s/s.json --candidates %s/c_kind.json", S, D, D);
    f += expect_bad("0 candidates", "%s --out %s/s.json --candidates %s/c_empty.json", S, D, D);
    f += expect_bad("candidates[0]", "%s --out %s/s.json --candidates %s/c_nested.json", S, D, D);
    f += expect_bad("JSON", "%s --out %s/s.json --candidates %s/p_deep.json", S, D, D);
    f += expect_bad("not a regular file", "%s --out %s/s.json --candidates %s/adir", S, D, D);
    f += expect_bad("not a regular file", "%s --out %s/s.json --candidates %s/fifo", S, D, D);
    f += expect_bad("missing/m.json", "%s --out %s/adir/s.json --minference-out %s/missing/m.json", S, D, D);
    f += expect_bad("empty path", "%s --out ''", S);
    f += expect_bad("--tokens", "search --model " FIX " --tokens 1,x --out %s/s.json", D);
    f += expect_bad("empty", "search --model " FIX " --text '' --out %s/s.json", D);
    assert_int_equal(f, 0);
    /* the failed --minference-out must not leave the first output behind either */
    check_no_leftovers();
}

static void test_eval(void **state) {
    (void)state;
    int f = 0;
    const char *E = "eval passkey --model " FIX;
    f += expect_bad("usage", "eval");
    f += expect_bad("foo", "eval foo --model " FIX);
    f += expect_bad("--model", "eval passkey");
    static const char *lens[] = {"''", "abc", "0", "-1k", "99999999k", "1k,,2k", "1.5k", "nan"};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) f += expect_bad("--lengths", "%s --lengths %s", E, lens[i]);
    static const char *deps[] = {"200", "-5", "nan", "''", "50,", "1e2"};
    for (size_t i = 0; i < sizeof deps / sizeof deps[0]; i++)
        f += expect_bad("--depths", "%s --lengths 1k --depths %s", E, deps[i]);
    f += expect_bad("--trials", "%s --lengths 1k --trials 0", E);
    f += expect_bad("--trials", "%s --lengths 1k --trials 1e9", E);
    f += expect_bad("foo", "%s --lengths 1k --patterns foo", E);
    f += expect_bad("--patterns", "%s --lengths 1k --patterns ,,,", E);
    f += expect_bad("twice", "%s --lengths 1k --patterns dense,%s/p_dupkey.json", E, D);
    f += expect_bad("empty", "%s --lengths 1k --haystack %s/empty.txt", E, D);
    f += expect_bad("not a regular file", "%s --lengths 1k --haystack %s/fifo", E, D);
    f += expect_bad("--seed", "%s --lengths 1k --seed abc", E);
    f += expect_bad("--ref-len", "%s --lengths 1k --ref-len -1", E);
    f += expect_bad("--png-dir", "%s --lengths 1k --png-dir %s/missing/x", E, D);
    f += expect_bad("missing/e.json", "%s --lengths 1k --json %s/missing/e.json", E, D);
    f += expect_bad("too short", "%s --lengths 8 --trials 1 --depths 0", E);
    f += expect_bad("--text", "eval ppl --model " FIX);
    f += expect_bad("tokens", "eval ppl --model " FIX " --text %s/empty.txt", D);
    f += expect_bad("not a regular file", "eval ppl --model " FIX " --text %s/fifo", D);
    f += expect_bad("--windows", "eval ppl --model " FIX " --text %s/hello.txt --windows 0", D);
    f += expect_bad("too short", "eval ppl --model " FIX " --text %s/hello.txt --lengths 1", D);
    assert_int_equal(f, 0);
    check_no_leftovers();
}

/* Flags bench checks before it looks for a GPU (so these hold on any machine). */
static void test_bench(void **state) {
    (void)state;
    int f = 0;
    f += expect_bad("--bogus", "bench --bogus");
    static const char *ns[] = {"''", ",,", "abc", "0", "-5", "99999999999", "8192,", "8192,,16384", "8192,x"};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) f += expect_bad("--n", "bench --n %s", ns[i]);
    f += expect_bad("--patterns", "bench --patterns ''");
    f += expect_bad("--patterns", "bench --patterns vs,,bs");
    f += expect_bad("--heads", "bench --heads 0");
    f += expect_bad("multiple", "bench --heads 4 --kv-heads 3");
    f += expect_bad("--dim", "bench --dim 65");
    f += expect_bad("--dim", "bench --dim nan");
    f += expect_bad("--reps", "bench --reps 0");
    f += expect_bad("--bs", "bench --bs -1");
    f += expect_bad("--variant", "bench --variant 11");
    f += expect_bad("unexpected", "bench extra");
    assert_int_equal(f, 0);
    check_no_leftovers();
}

static void test_tokenize(void **state) {
    (void)state;
    int f = 0;
    f += expect_bad("--model", "tokenize");
    f += expect_bad("--text", "tokenize --model " FIX);
    f += expect_bad("/nonexistent/t", "tokenize --model /nonexistent/t --text hi");
    f += expect_bad("/nonexistent/t.json", "tokenize --tokenizer /nonexistent/t.json --text hi");
    f += expect_bad("model", "tokenize --tokenizer " FIX "/config.json --text hi");
    f += expect_bad("not a regular file", "tokenize --model " FIX " --prompt %s/adir", D);
    f += expect_bad("not a regular file", "tokenize --model " FIX " --prompt %s/fifo", D);
    f += expect_bad("missing/t.json", "tokenize --model " FIX " --text hi --json %s/missing/t.json", D);
    f += expect_bad("--bogus", "tokenize --model " FIX " --text hi --bogus");
    f += expect_ok("tokenize --model " FIX " --prompt %s/binary.txt --quiet", D);
    assert_int_equal(f, 0);
    check_no_leftovers();
}

/* Without a terminal (stdin is /dev/null): flag and path errors come first, then the terminal one. */
static void test_tui(void **state) {
    (void)state;
    int f = 0;
    char T[256];
    snprintf(T, sizeof T, "tui --model " FIX " --prompt %s/hello.txt", D);
    f += expect_bad("--bogus", "%s --bogus", T);
    f += expect_bad("--prompt", "tui --model " FIX);
    f += expect_bad("/nonexistent/m", "tui --model /nonexistent/m --prompt %s/hello.txt", D);
    f += expect_bad("--prompt", "tui --model " FIX " --prompt /nonexistent/p.txt");
    f += expect_bad("--prompt", "tui --model " FIX " --prompt %s/fifo", D);
    static const char *mt[] = {"-1", "0", "abc", "1e9", "''"};
    for (size_t i = 0; i < sizeof mt / sizeof mt[0]; i++) f += expect_bad("--max-tokens", "%s --max-tokens %s", T, mt[i]);
    f += expect_bad("--out-dir", "%s --out-dir %s/missing", T, D);
    f += expect_bad("--backend", "%s --backend foo", T);
    f += expect_bad("--patterns", "%s --patterns %s/adir", T, D);
    f += expect_bad("--transform", "%s --transform x", T);
    f += expect_bad("terminal", "%s", T);
    f += expect_bad("unknown command", "frobnicate");
    assert_int_equal(f, 0);
    check_no_leftovers();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info),   cmocka_unit_test(test_run),   cmocka_unit_test(test_figures),
        cmocka_unit_test(test_search), cmocka_unit_test(test_eval),  cmocka_unit_test(test_bench),
        cmocka_unit_test(test_tokenize), cmocka_unit_test(test_tui),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
