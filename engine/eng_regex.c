/* eng_regex: backtracking regex over code points plus UTF-8, category and NFC helpers for the
 * tokenizer's pre-tokenizers (see eng_regex.h). The pattern compiles to a node graph: sequences
 * are linked by `next`, alternation / groups / repeats / lookaheads hold sub-sequences, and the
 * matcher walks it with explicit continuations so that backtracking into a group works. */
#include "eng_regex.h"

#include <stdlib.h>
#include <string.h>

#include "eng_regex_tab.h"

#define MATCH_BUDGET 2000000L /* steps per start position: far above any real pattern's need */
#define MATCH_DEPTH 4000       /* recursion frames: only repeated groups recurse per iteration */
#define REP_INF 0x7fffffff

/* ---------------------------------------------------------------- Unicode data */

static int run_lookup(const uint32_t *runs, int n, int shift, uint32_t cp) {
    int lo = 0, hi = n - 1; /* last run whose start <= cp */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((runs[mid] >> shift) <= cp) lo = mid;
        else hi = mid - 1;
    }
    return (int)(runs[lo] & ((1u << shift) - 1));
}

int eng_regex_category(uint32_t cp) {
    if (cp >= 0x110000) return 0;
    return run_lookup(eng_ucd_cat_runs, ENG_UCD_NCAT_RUNS, 5, cp);
}

const char *eng_regex_category_name(int cat) {
    return cat >= 0 && cat < (int)(sizeof eng_ucd_cat_names / sizeof eng_ucd_cat_names[0]) ? eng_ucd_cat_names[cat]
                                                                                           : "?";
}

const char *eng_regex_unicode_version(void) { return ENG_UCD_VERSION; }

int eng_regex_is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static int ccc_of(uint32_t cp) {
    if (cp >= 0x110000) return 0;
    return run_lookup(eng_ucd_ccc_runs, ENG_UCD_NCCC_RUNS, 8, cp);
}

int eng_regex_utf8_decode(const char *s, size_t len, uint32_t **cps, size_t **offs, size_t *n, eng_err *err) {
    const unsigned char *u = (const unsigned char *)s;
    uint32_t *c = malloc((len + 1) * sizeof *c);
    size_t *o = offs ? malloc((len + 1) * sizeof *o) : NULL;
    if (!c || (offs && !o)) {
        free(c);
        free(o);
        return eng_err_set(err, "utf-8 decode: out of memory for %zu bytes", len);
    }
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        unsigned b = u[i];
        int l = 0;
        uint32_t cp = 0;
        if (b < 0x80) l = 1, cp = b;
        else if (b >= 0xc2 && b <= 0xdf) l = 2, cp = b & 0x1f;
        else if (b >= 0xe0 && b <= 0xef) l = 3, cp = b & 0x0f;
        else if (b >= 0xf0 && b <= 0xf4) l = 4, cp = b & 0x07;
        if (l > 1) {
            if ((size_t)l > len - i) l = 0;
            for (int j = 1; j < l; j++) {
                if ((u[i + (size_t)j] & 0xc0) != 0x80) {
                    l = 0;
                    break;
                }
                cp = cp << 6 | (u[i + (size_t)j] & 0x3f);
            }
            if ((l == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
                (l == 4 && (cp < 0x10000 || cp > 0x10ffff)))
                l = 0;
        }
        if (l == 0) l = 1, cp = ENG_REGEX_RAW + b;
        if (o) o[k] = i;
        c[k++] = cp;
        i += (size_t)l;
    }
    if (o) o[k] = len;
    *cps = c;
    if (offs) *offs = o;
    *n = k;
    return 0;
}

int eng_regex_utf8_put(uint32_t cp, char *buf) {
    unsigned char *b = (unsigned char *)buf;
    if (cp >= ENG_REGEX_RAW) {
        b[0] = (unsigned char)(cp - ENG_REGEX_RAW);
        return 1;
    }
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        b[0] = (unsigned char)(0xc0 | cp >> 6);
        b[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (unsigned char)(0xe0 | cp >> 12);
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    b[0] = (unsigned char)(0xf0 | cp >> 18);
    b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    b[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ---------------------------------------------------------------- NFC (UAX #15) */

enum { H_SBASE = 0xac00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11a7, H_LCOUNT = 19, H_VCOUNT = 21,
       H_TCOUNT = 28, H_NCOUNT = H_VCOUNT * H_TCOUNT, H_SCOUNT = H_LCOUNT * H_NCOUNT };

static const uint32_t *decomp_find(uint32_t cp) {
    int lo = 0, hi = ENG_UCD_NDECOMP - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (eng_ucd_decomp[mid][0] == cp) return eng_ucd_decomp[mid];
        if (eng_ucd_decomp[mid][0] < cp) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

/* Full canonical decomposition of cp appended at out[*k] (at most 4 code points for Unicode). */
static void decompose(uint32_t cp, uint32_t *out, size_t *k, int depth) {
    if (cp >= H_SBASE && cp < H_SBASE + H_SCOUNT) {
        uint32_t s = cp - H_SBASE;
        out[(*k)++] = H_LBASE + s / H_NCOUNT;
        out[(*k)++] = H_VBASE + (s % H_NCOUNT) / H_TCOUNT;
        if (s % H_TCOUNT) out[(*k)++] = H_TBASE + s % H_TCOUNT;
        return;
    }
    const uint32_t *d = depth < 8 ? decomp_find(cp) : NULL;
    if (!d) {
        out[(*k)++] = cp;
        return;
    }
    decompose(d[1], out, k, depth + 1);
    if (d[2]) decompose(d[2], out, k, depth + 1);
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    int lo = 0, hi = ENG_UCD_NCOMP - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const uint32_t *e = eng_ucd_comp[mid];
        if (e[0] == a && e[1] == b) return e[2];
        if (e[0] < a || (e[0] == a && e[1] < b)) lo = mid + 1;
        else hi = mid - 1;
    }
    return 0;
}

int eng_regex_nfc(const char *s, size_t len, char **out, size_t *out_len, eng_err *err) {
    size_t i = 0;
    while (i < len && (unsigned char)s[i] < 0x80) i++;
    if (i == len) { /* ASCII is NFC */
        *out = malloc(len + 1);
        if (!*out) return eng_err_set(err, "nfc: out of memory");
        memcpy(*out, s, len);
        (*out)[len] = 0;
        *out_len = len;
        return 0;
    }
    uint32_t *cps;
    size_t n;
    if (eng_regex_utf8_decode(s, len, &cps, NULL, &n, err)) return -1;
    uint32_t *d = malloc((n * 4 + 1) * sizeof *d); /* a code point decomposes to at most 4 */
    if (!d) {
        free(cps);
        return eng_err_set(err, "nfc: out of memory");
    }
    size_t m = 0;
    for (size_t j = 0; j < n; j++) decompose(cps[j], d, &m, 0);
    free(cps);
    /* canonical ordering: stable insertion sort of each run of non-starters by ccc */
    for (size_t j = 1; j < m; j++) {
        int c = ccc_of(d[j]);
        if (c == 0) continue;
        size_t p = j;
        uint32_t x = d[j];
        while (p > 0 && ccc_of(d[p - 1]) > c) {
            d[p] = d[p - 1];
            p--;
        }
        d[p] = x;
    }
    /* canonical composition */
    size_t w = 0;
    if (m > 0) {
        size_t starter = 0;
        int last = ccc_of(d[0]) ? 256 : 0;
        w = 1;
        for (size_t j = 1; j < m; j++) {
            uint32_t ch = d[j];
            int c = ccc_of(ch);
            uint32_t comp = (last < c || last == 0) && ccc_of(d[starter]) == 0 ? compose_pair(d[starter], ch) : 0;
            if (comp) {
                d[starter] = comp;
            } else {
                if (c == 0) starter = w;
                last = c;
                d[w++] = ch;
            }
        }
    }
    char *o = malloc(w * 4 + 1);
    if (!o) {
        free(d);
        return eng_err_set(err, "nfc: out of memory");
    }
    size_t k = 0;
    for (size_t j = 0; j < w; j++) k += (size_t)eng_regex_utf8_put(d[j], o + k);
    o[k] = 0;
    free(d);
    *out = o;
    *out_len = k;
    return 0;
}

/* ---------------------------------------------------------------- pattern compiler */

enum { IT_RANGE, IT_CATS, IT_SPACE };

typedef struct {
    int type;
    int neg;            /* \P{..}, \S, \D, \W */
    uint32_t lo, hi;    /* IT_RANGE */
    uint32_t cats;      /* IT_CATS: bitmask of category indices */
} cls_item;

typedef struct {
    cls_item *it;
    int n, cap;
    int neg;            /* [^...] */
} cls;

enum { N_CLASS, N_ALT, N_GROUP, N_REP, N_LOOK, N_BOL, N_EOL };

typedef struct node {
    int type;
    struct node *next;  /* the rest of the sequence */
    cls *c;             /* N_CLASS */
    struct node **alts; /* N_ALT: each a sequence */
    int nalts;
    struct node *body;  /* N_GROUP, N_REP, N_LOOK */
    int min, max, lazy; /* N_REP */
    int neg;            /* N_LOOK */
} node;

struct eng_regex {
    node *root;
    void **allocs;      /* everything malloc'd, freed together */
    int nalloc, capalloc;
};

typedef struct {
    eng_regex *re;
    const uint32_t *p;  /* pattern code points */
    size_t n, i;
    int icase;
    int depth;
    eng_err *err;
    int failed;
} parser;

static void *p_alloc(parser *ps, size_t sz) {
    eng_regex *re = ps->re;
    if (re->nalloc == re->capalloc) {
        int nc = re->capalloc ? re->capalloc * 2 : 64;
        void **na = realloc(re->allocs, (size_t)nc * sizeof *na);
        if (!na) return NULL;
        re->allocs = na;
        re->capalloc = nc;
    }
    void *p = calloc(1, sz);
    if (p) re->allocs[re->nalloc++] = p;
    return p;
}

static int p_fail(parser *ps, const char *fmt, const char *detail) {
    if (!ps->failed) eng_err_set(ps->err, "regex: %s%s at pattern offset %zu", fmt, detail ? detail : "", ps->i);
    ps->failed = 1;
    return -1;
}

static node *new_node(parser *ps, int type) {
    node *n = p_alloc(ps, sizeof *n);
    if (!n) {
        p_fail(ps, "out of memory", NULL);
        return NULL;
    }
    n->type = type;
    return n;
}

static cls *new_cls(parser *ps) {
    cls *c = p_alloc(ps, sizeof *c);
    if (!c) p_fail(ps, "out of memory", NULL);
    return c;
}

static int cls_add(parser *ps, cls *c, cls_item it) {
    if (c->n == c->cap) {
        int nc = c->cap ? c->cap * 2 : 4;
        cls_item *ni = p_alloc(ps, (size_t)nc * sizeof *ni);
        if (!ni) return p_fail(ps, "out of memory", NULL);
        if (c->n) memcpy(ni, c->it, (size_t)c->n * sizeof *ni);
        c->it = ni; /* the old array stays in allocs until free */
        c->cap = nc;
    }
    c->it[c->n++] = it;
    return 0;
}

/* Add a literal, with its ASCII case partner (and the Unicode folds onto s and k) under (?i). */
static int cls_add_lit(parser *ps, cls *c, uint32_t cp) {
    cls_item it = {IT_RANGE, 0, cp, cp, 0};
    if (cls_add(ps, c, it)) return -1;
    if (!ps->icase) return 0;
    uint32_t o = 0;
    if (cp >= 'a' && cp <= 'z') o = cp - 32;
    else if (cp >= 'A' && cp <= 'Z') o = cp + 32;
    if (o) {
        it.lo = it.hi = o;
        if (cls_add(ps, c, it)) return -1;
    }
    uint32_t extra = (cp == 's' || cp == 'S') ? 0x17f : (cp == 'k' || cp == 'K') ? 0x212a : 0;
    if (extra) {
        it.lo = it.hi = extra;
        if (cls_add(ps, c, it)) return -1;
    }
    return 0;
}

static uint32_t cat_mask_of(const char *name) {
    static const struct { const char *n; const char *cats; } groups[] = {
        {"L", "Lu Ll Lt Lm Lo"}, {"M", "Mn Mc Me"}, {"N", "Nd Nl No"}, {"P", "Pc Pd Ps Pe Pi Pf Po"},
        {"S", "Sm Sc Sk So"}, {"Z", "Zs Zl Zp"}, {"C", "Cc Cf Cs Co Cn"}, {"LC", "Lu Ll Lt"}, {"L&", "Lu Ll Lt"},
    };
    int ncat = (int)(sizeof eng_ucd_cat_names / sizeof eng_ucd_cat_names[0]);
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        if (strcmp(groups[g].n, name)) continue;
        uint32_t m = 0;
        for (int c = 0; c < ncat; c++)
            if (strstr(groups[g].cats, eng_ucd_cat_names[c])) m |= 1u << c;
        return m;
    }
    for (int c = 0; c < ncat; c++)
        if (!strcmp(eng_ucd_cat_names[c], name)) return 1u << c;
    return 0;
}

static int hexval(uint32_t c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

/* Read n hex digits (or {..} when braced) at ps->i into *cp. */
static int parse_hex(parser *ps, int ndig, int braced, uint32_t *cp) {
    uint32_t v = 0;
    int k = 0;
    if (braced) {
        ps->i++; /* '{' */
        while (ps->i < ps->n && ps->p[ps->i] != '}') {
            int h = hexval(ps->p[ps->i]);
            if (h < 0 || ++k > 6) return p_fail(ps, "bad \\x{...} escape", NULL);
            v = v * 16 + (uint32_t)h;
            ps->i++;
        }
        if (ps->i >= ps->n || k == 0) return p_fail(ps, "unterminated \\x{...} escape", NULL);
        ps->i++;
    } else {
        for (; k < ndig; k++) {
            int h = ps->i < ps->n ? hexval(ps->p[ps->i]) : -1;
            if (h < 0) return p_fail(ps, "bad hex escape", NULL);
            v = v * 16 + (uint32_t)h;
            ps->i++;
        }
    }
    if (v > 0x10ffff) return p_fail(ps, "code point out of range in escape", NULL);
    *cp = v;
    return 0;
}

/* An escape after '\' (ps->i at the letter). Either a set of items (is_set) added to c, or a
 * single code point in *lit. */
static int parse_escape(parser *ps, cls *c, int *is_set, uint32_t *lit) {
    if (ps->i >= ps->n) return p_fail(ps, "pattern ends with a backslash", NULL);
    uint32_t e = ps->p[ps->i++];
    cls_item it = {0};
    *is_set = 1;
    switch (e) {
    case 's': case 'S':
        it.type = IT_SPACE, it.neg = e == 'S';
        return cls_add(ps, c, it);
    case 'd': case 'D':
        it.type = IT_CATS, it.cats = cat_mask_of("Nd"), it.neg = e == 'D';
        return cls_add(ps, c, it);
    case 'w': case 'W': {
        it.type = IT_CATS, it.neg = e == 'W';
        it.cats = cat_mask_of("L") | cat_mask_of("M") | cat_mask_of("N") | cat_mask_of("Pc");
        return cls_add(ps, c, it);
    }
    case 'p': case 'P': {
        char name[16];
        size_t k = 0;
        int neg = e == 'P';
        if (ps->i < ps->n && ps->p[ps->i] == '{') {
            ps->i++;
            if (ps->i < ps->n && ps->p[ps->i] == '^') neg = !neg, ps->i++;
            while (ps->i < ps->n && ps->p[ps->i] != '}') {
                if (k + 1 >= sizeof name || ps->p[ps->i] > 0x7e) return p_fail(ps, "bad \\p{...} name", NULL);
                name[k++] = (char)ps->p[ps->i++];
            }
            if (ps->i >= ps->n) return p_fail(ps, "unterminated \\p{...}", NULL);
            ps->i++;
        } else if (ps->i < ps->n && ps->p[ps->i] < 0x7f) {
            name[k++] = (char)ps->p[ps->i++];
        }
        name[k] = 0;
        uint32_t m = cat_mask_of(name);
        if (!m) return p_fail(ps, "unsupported Unicode property \\p{", name), -1;
        it.type = IT_CATS, it.cats = m, it.neg = neg;
        return cls_add(ps, c, it);
    }
    default:
        break;
    }
    *is_set = 0;
    switch (e) {
    case 'r': *lit = '\r'; return 0;
    case 'n': *lit = '\n'; return 0;
    case 't': *lit = '\t'; return 0;
    case 'f': *lit = '\f'; return 0;
    case 'v': *lit = '\v'; return 0;
    case 'a': *lit = 7; return 0;
    case 'e': *lit = 27; return 0;
    case '0': *lit = 0; return 0;
    case 'x': return parse_hex(ps, 2, ps->i < ps->n && ps->p[ps->i] == '{', lit);
    case 'u': return parse_hex(ps, 4, 0, lit);
    default:
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '1' && e <= '9')) {
            char nm[2] = {(char)e, 0};
            return p_fail(ps, "unsupported escape \\", nm);
        }
        *lit = e; /* escaped punctuation or any other literal */
        return 0;
    }
}

static node *parse_class(parser *ps) {
    /* ps->i just after '[' */
    cls *c = new_cls(ps);
    if (!c) return NULL;
    if (ps->i < ps->n && ps->p[ps->i] == '^') c->neg = 1, ps->i++;
    int first = 1;
    while (1) {
        if (ps->i >= ps->n) return p_fail(ps, "unterminated [...] class", NULL), NULL;
        uint32_t ch = ps->p[ps->i];
        if (ch == ']' && !first) {
            ps->i++;
            break;
        }
        first = 0;
        if (ch == '[') return p_fail(ps, "nested classes and set operations are not supported", NULL), NULL;
        uint32_t lo;
        ps->i++;
        if (ch == '\\') {
            int is_set;
            if (parse_escape(ps, c, &is_set, &lo)) return NULL;
            if (is_set) continue;
        } else {
            lo = ch;
        }
        uint32_t hi = lo;
        if (ps->i + 1 < ps->n && ps->p[ps->i] == '-' && ps->p[ps->i + 1] != ']') {
            ps->i++;
            uint32_t h = ps->p[ps->i++];
            if (h == '\\') {
                int is_set;
                if (parse_escape(ps, c, &is_set, &h)) return NULL;
                if (is_set) return p_fail(ps, "class range ends in a set", NULL), NULL;
            }
            hi = h;
            if (hi < lo) return p_fail(ps, "class range out of order", NULL), NULL;
        }
        if (lo == hi) {
            if (cls_add_lit(ps, c, lo)) return NULL;
        } else {
            cls_item it = {IT_RANGE, 0, lo, hi, 0};
            if (cls_add(ps, c, it)) return NULL;
            if (ps->icase) { /* ASCII letters of the range in the other case */
                for (uint32_t x = lo; x <= hi && x < 128; x++)
                    if ((x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z'))
                        if (cls_add_lit(ps, c, x)) return NULL;
            }
        }
    }
    node *nd = new_node(ps, N_CLASS);
    if (nd) nd->c = c;
    return nd;
}

static node *parse_alt(parser *ps);

static int parse_int(parser *ps, int *v) {
    if (ps->i >= ps->n || ps->p[ps->i] < '0' || ps->p[ps->i] > '9') return -1;
    long x = 0;
    while (ps->i < ps->n && ps->p[ps->i] >= '0' && ps->p[ps->i] <= '9') {
        x = x * 10 + (long)(ps->p[ps->i++] - '0');
        if (x > 100000) return p_fail(ps, "repeat count too large", NULL);
    }
    *v = (int)x;
    return 0;
}

static node *parse_atom(parser *ps) {
    uint32_t ch = ps->p[ps->i++];
    if (ch == '(') {
        int type = N_GROUP, neg = 0, saved_icase = ps->icase;
        if (ps->i < ps->n && ps->p[ps->i] == '?') {
            ps->i++;
            uint32_t k = ps->i < ps->n ? ps->p[ps->i] : 0;
            if (k == ':') ps->i++;
            else if (k == '=' || k == '!') type = N_LOOK, neg = k == '!', ps->i++;
            else if (k == 'i' || k == '-') {
                int on = 1;
                while (ps->i < ps->n && (ps->p[ps->i] == 'i' || ps->p[ps->i] == '-')) {
                    if (ps->p[ps->i] == '-') on = 0;
                    else ps->icase = on;
                    ps->i++;
                }
                if (ps->i < ps->n && ps->p[ps->i] == ')') { /* (?i) applies to the rest of the group */
                    ps->i++;
                    node *e = new_node(ps, N_GROUP);
                    return e; /* empty group; icase stays set for what follows */
                }
                if (ps->i >= ps->n || ps->p[ps->i] != ':') return p_fail(ps, "bad (?flags:...) group", NULL), NULL;
                ps->i++;
            } else {
                return p_fail(ps, "unsupported (?...) group (lookbehind, named or atomic)", NULL), NULL;
            }
        }
        if (++ps->depth > 200) return p_fail(ps, "groups nested too deeply", NULL), NULL;
        node *body = parse_alt(ps);
        ps->depth--;
        ps->icase = saved_icase;
        if (!body && ps->failed) return NULL;
        if (ps->i >= ps->n || ps->p[ps->i] != ')') return p_fail(ps, "missing ')'", NULL), NULL;
        ps->i++;
        node *g = new_node(ps, type);
        if (!g) return NULL;
        g->body = body;
        g->neg = neg;
        return g;
    }
    if (ch == '[') return parse_class(ps);
    if (ch == '^') return new_node(ps, N_BOL);
    if (ch == '$') return new_node(ps, N_EOL);
    cls *c = new_cls(ps);
    if (!c) return NULL;
    if (ch == '.') {
        c->neg = 1;
        if (cls_add_lit(ps, c, '\n')) return NULL;
    } else if (ch == '\\') {
        int is_set;
        uint32_t lit;
        if (parse_escape(ps, c, &is_set, &lit)) return NULL;
        if (!is_set && cls_add_lit(ps, c, lit)) return NULL;
    } else if (ch == ')' || ch == '*' || ch == '+' || ch == '?' || ch == '{') {
        char s[2] = {(char)ch, 0};
        ps->i--;
        return p_fail(ps, "unexpected ", s), NULL;
    } else {
        if (cls_add_lit(ps, c, ch)) return NULL;
    }
    node *nd = new_node(ps, N_CLASS);
    if (nd) nd->c = c;
    return nd;
}

static node *parse_quant(parser *ps, node *atom) {
    while (ps->i < ps->n) {
        uint32_t q = ps->p[ps->i];
        int min, max;
        if (q == '?') min = 0, max = 1;
        else if (q == '*') min = 0, max = REP_INF;
        else if (q == '+') min = 1, max = REP_INF;
        else if (q == '{') {
            size_t save = ps->i;
            ps->i++;
            if (parse_int(ps, &min)) {
                if (ps->failed) return NULL;
                ps->i = save; /* a literal '{' (Oniguruma treats a malformed interval as text) */
                return atom;
            }
            max = min;
            if (ps->i < ps->n && ps->p[ps->i] == ',') {
                ps->i++;
                max = REP_INF;
                if (ps->i < ps->n && ps->p[ps->i] != '}' && parse_int(ps, &max)) return p_fail(ps, "bad {m,n}", NULL), NULL;
            }
            if (ps->i >= ps->n || ps->p[ps->i] != '}' || max < min) return p_fail(ps, "bad {m,n}", NULL), NULL;
        } else {
            return atom;
        }
        ps->i++;
        if (atom->type == N_BOL || atom->type == N_EOL || atom->type == N_LOOK)
            return p_fail(ps, "quantifier on an assertion", NULL), NULL;
        node *r = new_node(ps, N_REP);
        if (!r) return NULL;
        r->body = atom;
        r->min = min;
        r->max = max;
        if (ps->i < ps->n && ps->p[ps->i] == '?') r->lazy = 1, ps->i++;
        else if (ps->i < ps->n && ps->p[ps->i] == '+') ps->i++; /* possessive read as greedy */
        atom = r;
    }
    return atom;
}

/* A sequence up to '|' or ')' or the end; NULL for an empty sequence (check ps->failed). */
static node *parse_seq(parser *ps) {
    node *head = NULL, *tail = NULL;
    while (ps->i < ps->n && ps->p[ps->i] != '|' && ps->p[ps->i] != ')') {
        node *a = parse_atom(ps);
        if (!a) return NULL;
        a = parse_quant(ps, a);
        if (!a) return NULL;
        if (tail) tail->next = a;
        else head = a;
        tail = a;
    }
    return head;
}

static node *parse_alt(parser *ps) {
    node *first = parse_seq(ps);
    if (ps->failed) return NULL;
    if (ps->i >= ps->n || ps->p[ps->i] != '|') return first;
    node *alt = new_node(ps, N_ALT);
    if (!alt) return NULL;
    int cap = 8;
    alt->alts = p_alloc(ps, (size_t)cap * sizeof *alt->alts);
    if (!alt->alts) return p_fail(ps, "out of memory", NULL), NULL;
    alt->alts[alt->nalts++] = first;
    while (ps->i < ps->n && ps->p[ps->i] == '|') {
        ps->i++;
        node *s = parse_seq(ps);
        if (ps->failed) return NULL;
        if (alt->nalts == cap) {
            node **na = p_alloc(ps, (size_t)cap * 2 * sizeof *na);
            if (!na) return p_fail(ps, "out of memory", NULL), NULL;
            memcpy(na, alt->alts, (size_t)cap * sizeof *na);
            alt->alts = na;
            cap *= 2;
        }
        alt->alts[alt->nalts++] = s;
    }
    return alt;
}

void eng_regex_free(eng_regex *re) {
    if (!re) return;
    for (int i = 0; i < re->nalloc; i++) free(re->allocs[i]);
    free(re->allocs);
    free(re);
}

eng_regex *eng_regex_compile(const char *pattern, eng_err *err) {
    if (!pattern) return eng_err_set(err, "regex: no pattern"), NULL;
    eng_regex *re = calloc(1, sizeof *re);
    if (!re) return eng_err_set(err, "regex: out of memory"), NULL;
    parser ps = {.re = re, .err = err};
    uint32_t *cps = NULL;
    if (eng_regex_utf8_decode(pattern, strlen(pattern), &cps, NULL, &ps.n, err)) {
        free(re);
        return NULL;
    }
    ps.p = cps;
    for (size_t i = 0; i < ps.n; i++)
        if (cps[i] >= ENG_REGEX_RAW) {
            ps.i = i;
            p_fail(&ps, "pattern is not valid UTF-8", NULL);
            break;
        }
    if (!ps.failed) re->root = parse_alt(&ps);
    if (!ps.failed && ps.i < ps.n) p_fail(&ps, "unbalanced ')'", NULL);
    free(cps);
    if (ps.failed) {
        eng_regex_free(re);
        return NULL;
    }
    return re;
}

/* ---------------------------------------------------------------- matcher */

typedef struct {
    const uint32_t *s;
    size_t n;
    long steps;
    int depth;
} mctx;

typedef struct cont {
    const node *n;          /* continue with this sequence ... */
    const struct cont *up;  /* ... then this */
    const node *rep;        /* or: one iteration of this repeat ended */
    int count;
    size_t start;           /* where that iteration started */
} cont;

#define M_FAIL (-1L)
#define M_ABORT (-2L)

static int cls_match(const cls *c, uint32_t cp) {
    int hit = 0;
    for (int i = 0; i < c->n && !hit; i++) {
        const cls_item *it = &c->it[i];
        int m;
        if (it->type == IT_RANGE) m = cp >= it->lo && cp <= it->hi;
        else if (it->type == IT_SPACE) m = cp < ENG_REGEX_RAW && eng_regex_is_space(cp);
        else m = cp < ENG_REGEX_RAW && ((it->cats >> eng_regex_category(cp)) & 1);
        if (it->neg) m = !m;
        hit = m;
    }
    return hit != c->neg;
}

static long run(mctx *c, const node *nd, size_t pos, const cont *k);

static long rep_next(mctx *c, const node *r, int count, size_t start, size_t pos, const cont *k) {
    int empty = count > 0 && pos == start; /* an iteration that consumed nothing ends the loop */
    if (r->lazy && count >= r->min) {
        long x = run(c, r->next, pos, k);
        if (x != M_FAIL || empty || count >= r->max) return x;
        cont kk = {NULL, k, r, count + 1, pos};
        return run(c, r->body, pos, &kk);
    }
    if (count < r->max && !empty) {
        cont kk = {NULL, k, r, count + 1, pos};
        long x = run(c, r->body, pos, &kk);
        if (x != M_FAIL) return x;
    }
    if (count >= r->min || empty) return run(c, r->next, pos, k);
    return M_FAIL;
}

static long run(mctx *c, const node *nd, size_t pos, const cont *k) {
    if (++c->steps > MATCH_BUDGET || c->depth > MATCH_DEPTH) return M_ABORT;
    long x = M_FAIL;
    c->depth++;
    if (!nd) {
        if (!k) x = (long)pos;
        else if (k->rep) x = rep_next(c, k->rep, k->count, k->start, pos, k->up);
        else x = run(c, k->n, pos, k->up);
        c->depth--;
        return x;
    }
    switch (nd->type) {
    case N_CLASS:
        if (pos < c->n && cls_match(nd->c, c->s[pos])) x = run(c, nd->next, pos + 1, k);
        break;
    case N_ALT: {
        cont kk = {nd->next, k, NULL, 0, 0};
        for (int i = 0; i < nd->nalts; i++) {
            x = run(c, nd->alts[i], pos, &kk);
            if (x != M_FAIL) break;
        }
        break;
    }
    case N_GROUP: {
        cont kk = {nd->next, k, NULL, 0, 0};
        x = run(c, nd->body, pos, &kk);
        break;
    }
    case N_LOOK: {
        long y = run(c, nd->body, pos, NULL);
        if (y == M_ABORT) x = M_ABORT;
        else if ((y >= 0) != nd->neg) x = run(c, nd->next, pos, k);
        break;
    }
    case N_BOL:
        if (pos == 0) x = run(c, nd->next, pos, k);
        break;
    case N_EOL:
        if (pos == c->n) x = run(c, nd->next, pos, k);
        break;
    case N_REP:
        if (nd->body->type == N_CLASS && !nd->body->next) {
            /* one class repeated: count the run, then try lengths without recursing per char */
            const cls *cl = nd->body->c;
            size_t lim = c->n - pos, m = 0;
            if ((size_t)nd->max < lim) lim = (size_t)nd->max;
            while (m < lim && cls_match(cl, c->s[pos + m])) m++;
            c->steps += (long)m;
            if (m < (size_t)nd->min) break;
            if (!nd->lazy) {
                for (size_t i = m + 1; i-- > (size_t)nd->min;) {
                    x = run(c, nd->next, pos + i, k);
                    if (x != M_FAIL) break;
                }
            } else {
                for (size_t i = (size_t)nd->min; i <= m; i++) {
                    x = run(c, nd->next, pos + i, k);
                    if (x != M_FAIL) break;
                }
            }
        } else {
            x = rep_next(c, nd, 0, pos, pos, k);
        }
        break;
    }
    c->depth--;
    return x;
}

int eng_regex_find(const eng_regex *re, const uint32_t *cps, size_t n, size_t from, size_t *ms, size_t *me,
                   eng_err *err) {
    mctx c = {cps, n, 0, 0};
    for (size_t st = from; st <= n; st++) {
        c.depth = 0;
        c.steps = 0;
        long x = run(&c, re->root, st, NULL);
        if (x == M_ABORT)
            return eng_err_set(err, "regex: match at code point %zu exceeded the step budget or recursion cap", st);
        if (x >= (long)st) {
            *ms = st;
            *me = (size_t)x;
            return 1;
        }
    }
    return 0;
}
