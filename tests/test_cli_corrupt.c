/* test_cli_corrupt: corrupt model files through the real CLI. Seeded mutations of the tiny fixtures —
 * safetensors truncated at many offsets, header bytes flipped, the header length field, dtypes,
 * shapes and offsets swapped in the JSON header, config.json fields out of range, a sharded index
 * pointing at missing / outside / truncated shards, and GGUF files (from tools/gguf_write.py when
 * python3 is there) truncated and with huge counts — each run through `attnscope info` and
 * `attnscope run --tokens 1,2,3`: a clear error and exit 1/2, never a signal or a hang. A mutation
 * that may leave a valid file (a flipped byte) only has to end cleanly either way. */
#include "test_util.h"

#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIX "tests/fixtures/tiny-llama"
#define SHARDED "tests/fixtures/tiny-llama-bf16-sharded"

static char D[64];

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) free(b), b = NULL;
    fclose(f);
    if (b) b[n] = 0, *len = (size_t)n;
    return b;
}
static void spit(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Runs attnscope ARGS; 0 when it ended cleanly (exit 0, or 1/2 with a message on stderr), else
 * prints why. *rc_out gets the exit code. */
static int run_clean(const char *args, int *rc_out) {
    char ef[128], cmd[2048], err[2048] = "";
    snprintf(ef, sizeof ef, "%s/.stderr", D);
    snprintf(cmd, sizeof cmd, "timeout -k 5 20 %s %s </dev/null >/dev/null 2>'%s'", tu_bin(), args, ef);
    int st = system(cmd);
    FILE *f = fopen(ef, "rb");
    if (f) {
        size_t n = fread(err, 1, sizeof err - 1, f);
        err[n] = 0;
        fclose(f);
    }
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    *rc_out = rc;
    int ok = rc == 0 || ((rc == 1 || rc == 2) && strlen(err) > 10);
    if (!ok) print_error("FAIL: attnscope %s: rc=%d%s\n  %.500s\n", args, rc, rc == 124 ? " (timed out)" : "", err);
    return !ok;
}

/* info and run on MODEL; must_fail: both must exit non-zero. Returns failures. */
static int probe(const char *model, int must_fail, const char *what) {
    static const char *const cmds[] = {"info --model '%s'", "run --model '%s' --tokens 1,2,3"};
    int bad = 0;
    for (int i = 0; i < 2; i++) {
        char args[600];
        snprintf(args, sizeof args, cmds[i], model);
        int rc;
        bad += run_clean(args, &rc);
        if (must_fail && rc == 0) {
            print_error("FAIL: attnscope %s accepted a corrupt model (%s)\n", args, what);
            bad++;
        }
    }
    return bad;
}

static int setup(void **state) {
    (void)state;
    if (!getenv("ASAN_OPTIONS")) setenv("ASAN_OPTIONS", "detect_leaks=0:exitcode=86", 1);
    if (!getenv("UBSAN_OPTIONS")) setenv("UBSAN_OPTIONS", "exitcode=87:print_stacktrace=1", 1);
    snprintf(D, sizeof D, "/tmp/attnscope-cli-corrupt-XXXXXX");
    return mkdtemp(D) ? 0 : -1;
}
static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", D);
    return system(cmd) == 0 ? 0 : -1;
}

/* A model dir D/m with the fixture's config.json (or cfg) and the given safetensors bytes. */
static const char *model_dir(const void *st, size_t n, const char *cfg) {
    static char dir[128];
    char p[256];
    snprintf(dir, sizeof dir, "%s/m", D);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    spit(p, st, n);
    snprintf(p, sizeof p, "%s/config.json", dir);
    size_t cl;
    unsigned char *c = cfg ? NULL : slurp(FIX "/config.json", &cl);
    spit(p, cfg ? cfg : (const char *)c, cfg ? strlen(cfg) : cl);
    free(c);
    return dir;
}

/* The header with the first `from` replaced by `to`, the length field rewritten. */
static unsigned char *header_swap(const unsigned char *b, size_t n, size_t hlen, const char *from, const char *to,
                                  size_t *out_n) {
    char *h = malloc(hlen + 1);
    memcpy(h, b + 8, hlen);
    h[hlen] = 0;
    char *at = strstr(h, from);
    if (!at) {
        free(h);
        return NULL;
    }
    size_t nh = hlen - strlen(from) + strlen(to);
    unsigned char *o = malloc(n - hlen + nh);
    uint64_t L = nh;
    memcpy(o, &L, 8);
    size_t pre = (size_t)(at - h);
    memcpy(o + 8, h, pre);
    memcpy(o + 8 + pre, to, strlen(to));
    memcpy(o + 8 + pre + strlen(to), at + strlen(from), hlen - pre - strlen(from));
    memcpy(o + 8 + nh, b + 8 + hlen, n - 8 - hlen);
    *out_n = n - hlen + nh;
    free(h);
    return o;
}

static void test_safetensors_mutations(void **state) {
    (void)state;
    size_t n;
    unsigned char *b = slurp(FIX "/model.safetensors", &n);
    assert_non_null(b);
    uint64_t hlen;
    memcpy(&hlen, b, 8);
    assert_true(hlen > 2 && hlen < n);
    int bad = probe(model_dir(b, n, NULL), 0, "the fixture itself");
    int rc;
    bad += run_clean("info --model " FIX, &rc);
    assert_int_equal(rc, 0);

    uint64_t rs = 0xc0ffee;
    /* truncated anywhere: always refused */
    size_t cuts[40] = {0, 1, 7, 8, 9, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1, n / 2, n - 4, n - 1};
    int nc = 12;
    while (nc < 40) cuts[nc++] = (size_t)(tu_rand_u64(&rs) % n);
    for (int i = 0; i < nc; i++) {
        char what[64];
        snprintf(what, sizeof what, "truncated at %zu of %zu", cuts[i], n);
        bad += probe(model_dir(b, cuts[i], NULL), 1, what);
    }
    /* the header length field */
    const uint64_t lens[] = {0, 1, hlen + 1, n, n + 1, 1ull << 40, 1ull << 63, ~0ull};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        memcpy(b, &lens[i], 8);
        char what[64];
        snprintf(what, sizeof what, "header length %llu", (unsigned long long)lens[i]);
        bad += probe(model_dir(b, n, NULL), 1, what);
    }
    memcpy(b, &hlen, 8);
    /* random header bytes: refused or (a harmless flip) accepted, never a crash */
    for (int i = 0; i < 24; i++) {
        size_t at = 8 + (size_t)(tu_rand_u64(&rs) % hlen);
        unsigned char old = b[at];
        b[at] = (unsigned char)(i % 3 == 0 ? 0 : i % 3 == 1 ? 0xff : tu_rand_u64(&rs));
        bad += probe(model_dir(b, n, NULL), 0, "flipped header byte");
        b[at] = old;
    }
    /* dtypes, shapes and offsets swapped in the JSON header: all refused */
    static const char *const swaps[][2] = {
        {"\"dtype\":\"F32\"", "\"dtype\":\"F16\""},   {"\"dtype\":\"F32\"", "\"dtype\":\"BF16\""},
        {"\"dtype\":\"F32\"", "\"dtype\":\"I64\""},   {"\"dtype\":\"F32\"", "\"dtype\":\"XX\""},
        {"\"dtype\":\"F32\"", "\"dtype\":5"},         {"\"dtype\":\"F32\"", "\"dtype\":\"\""},
        {"\"shape\":[272,72]", "\"shape\":[72,272]"}, {"\"shape\":[272,72]", "\"shape\":[273,72]"},
        {"\"shape\":[272,72]", "\"shape\":[-1,72]"},  {"\"shape\":[272,72]", "\"shape\":[1e300,72]"},
        {"\"shape\":[272,72]", "\"shape\":[4294967296,4294967296]"},
        {"\"shape\":[272,72]", "\"shape\":[9223372036854775807,2]"},
        {"\"shape\":[272,72]", "\"shape\":\"x\""},    {"\"shape\":[272,72]", "\"shape\":[272]"},
        {"\"shape\":[272,72]", "\"shape\":[]"},
        {"\"data_offsets\":[0,78336]", "\"data_offsets\":[0,18446744073709551615]"},
        {"\"data_offsets\":[0,78336]", "\"data_offsets\":[78336,0]"},
        {"\"data_offsets\":[0,78336]", "\"data_offsets\":[-1,78335]"},
        {"\"data_offsets\":[0,78336]", "\"data_offsets\":[0]"},
        {"\"data_offsets\":[0,78336]", "\"data_offsets\":[0.5,78336]"},
        {"\"data_offsets\":[0,78336]", "\"data_offsets\":[440000,518336]"},
        {"\"model.embed_tokens.weight\"", "\"model.embed_tokens.weighx\""},
        {"{\"__metadata__\"", "[{\"__metadata__\""},
    };
    for (size_t i = 0; i < sizeof swaps / sizeof swaps[0]; i++) {
        size_t mn = 0;
        unsigned char *m = header_swap(b, n, (size_t)hlen, swaps[i][0], swaps[i][1], &mn);
        if (!m) fail_msg("fixture header lacks %s", swaps[i][0]);
        char what[160];
        snprintf(what, sizeof what, "%s -> %s", swaps[i][0], swaps[i][1]);
        bad += probe(model_dir(m, mn, NULL), 1, what);
        free(m);
    }
    /* config.json out of range / of the wrong type / not JSON: all refused */
    static const char *const cfgs[] = {
        "", "{", "[]", "null", "\x01\xff", "{\"hidden_size\": 72}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 0, \"intermediate_size\": 92, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 272}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 1e300, \"intermediate_size\": 92, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 272}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 72, \"intermediate_size\": 92, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 5, \"num_key_value_heads\": 2, \"vocab_size\": 272}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 72, \"intermediate_size\": 92, "
        "\"num_hidden_layers\": 1000000000, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 272}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 72, \"intermediate_size\": \"92\", "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 272}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 72, \"intermediate_size\": 92, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 273}",
        "{\"architectures\": [\"GPT2LMHeadModel\"], \"hidden_size\": 72, \"intermediate_size\": 92, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 272}",
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 72, \"intermediate_size\": 92, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 272, "
        "\"rope_scaling\": {\"rope_type\": \"bogus\"}}",
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) bad += probe(model_dir(b, n, cfgs[i]), 1, cfgs[i]);
    free(b);
    assert_int_equal(bad, 0);
}

static void test_sharded_mutations(void **state) {
    (void)state;
    char dir[128], cmd[512];
    snprintf(dir, sizeof dir, "%s/sh", D);
    int bad = 0;
    static const char *const idx[] = {
        "", "{\"weight_map\":", "[]", "{}", "{\"weight_map\": []}",
        "{\"weight_map\": {\"model.embed_tokens.weight\": 5}}",
        "{\"weight_map\": {\"model.embed_tokens.weight\": \"../../../etc/passwd\"}}",
        "{\"weight_map\": {\"model.embed_tokens.weight\": \"/etc/passwd\"}}",
        "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00009-of-00003.safetensors\"}}",
        "{\"weight_map\": {\"model.embed_tokens.weight\": \"config.json\"}}",
    };
    for (size_t i = 0; i < sizeof idx / sizeof idx[0] + 2; i++) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r " SHARDED " '%s'", dir, dir);
        assert_int_equal(system(cmd), 0);
        char p[256];
        if (i < sizeof idx / sizeof idx[0]) {
            snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
            spit(p, idx[i], strlen(idx[i]));
        } else if (i == sizeof idx / sizeof idx[0]) { /* a shard missing */
            snprintf(p, sizeof p, "%s/model-00002-of-00003.safetensors", dir);
            assert_int_equal(unlink(p), 0);
        } else { /* a shard truncated */
            snprintf(cmd, sizeof cmd, "truncate -s 1000 '%s/model-00003-of-00003.safetensors'", dir);
            assert_int_equal(system(cmd), 0);
        }
        bad += probe(dir, 1, i < sizeof idx / sizeof idx[0] ? idx[i] : "shard missing / truncated");
    }
    assert_int_equal(bad, 0);
}

static void test_gguf_mutations(void **state) {
    (void)state;
    if (system("python3 -c 'import struct, json' >/dev/null 2>&1") != 0) skip();
    char path[128], cmd[512];
    snprintf(path, sizeof path, "%s/ok.gguf", D);
    snprintf(cmd, sizeof cmd, "python3 tools/gguf_write.py --model " FIX " '%s' >/dev/null", path);
    assert_int_equal(system(cmd), 0);
    size_t n;
    unsigned char *b = slurp(path, &n);
    assert_non_null(b);
    int bad = probe(path, 0, "the converted fixture"), rc;
    char args[256];
    snprintf(args, sizeof args, "info --model '%s'", path);
    bad += run_clean(args, &rc);
    assert_int_equal(rc, 0);
    char mp[128];
    snprintf(mp, sizeof mp, "%s/m.gguf", D);
    uint64_t rs = 0x6a6a;
    size_t cuts[24] = {0, 3, 4, 8, 16, 24, 30, 100, 1000, n / 2, n - 1};
    int nc = 11;
    while (nc < 24) cuts[nc++] = (size_t)(tu_rand_u64(&rs) % n);
    for (int i = 0; i < nc; i++) {
        spit(mp, b, cuts[i]);
        bad += probe(mp, 1, "truncated GGUF");
    }
    /* version, tensor count, metadata count and the first key's length: huge or zero */
    const struct {
        size_t off, size;
        uint64_t v;
    } fields[] = {{4, 4, 0}, {4, 4, 99}, {4, 4, 0xffffffffu}, {8, 8, 1ull << 40}, {8, 8, ~0ull}, {16, 8, 1ull << 40},
                  {16, 8, ~0ull}, {24, 8, 1ull << 62}, {24, 8, ~0ull}, {24, 8, 0}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        unsigned char *m = malloc(n);
        memcpy(m, b, n);
        memcpy(m + fields[i].off, &fields[i].v, fields[i].size);
        spit(mp, m, n);
        free(m);
        bad += probe(mp, 1, "GGUF header field");
    }
    /* random bytes in the metadata and tensor table: refused or harmless, never a crash */
    for (int i = 0; i < 24; i++) {
        unsigned char *m = malloc(n);
        memcpy(m, b, n);
        size_t at = 4 + (size_t)(tu_rand_u64(&rs) % (n < 4096 ? n - 4 : 4092));
        m[at] = (unsigned char)(i % 2 ? 0xff : tu_rand_u64(&rs));
        spit(mp, m, n);
        free(m);
        bad += probe(mp, 0, "flipped GGUF byte");
    }
    free(b);
    assert_int_equal(bad, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors_mutations),
        cmocka_unit_test(test_sharded_mutations),
        cmocka_unit_test(test_gguf_mutations),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
