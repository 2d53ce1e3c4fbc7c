/* eng_cpu: the float32 CPU reference backend (eng_backend.h). The whole forward pass over the prompt,
 * layer by layer, readable top to bottom: embedding, RMSNorm, Q/K/V (+ Qwen2 biases), rotate-half
 * RoPE, causal GQA attention (dense or per-head sparse patterns), o_proj, SwiGLU MLP, final norm,
 * LM head. Weights are converted to f32 one layer at a time into one scratch buffer (mapped f32
 * weights are used in place), so an 8B model runs in well under 24 GB. GEMMs: OpenBLAS. */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "eng_attn.h"
#include "eng_backend.h"
#include "eng_cpu.h"
#include "eng_pattern.h"
#include "eng_dma.h"

#define MLP_ROWS 512    /* rows per MLP chunk: bounds the (rows, F) gate/up buffers */
#define LM_ROWS 256     /* rows per LM-head chunk */
#define LM_BYTES (64u << 20) /* f32 LM-head rows converted at a time */

/* ---------------------------------------------------------------- small helpers */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int eng_cpu_threads(void) {
    static atomic_int cached;
    int n = atomic_load(&cached);
    if (n > 0) return n;
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    n = c < 1 ? 1 : c > 64 ? 64 : (int)c;
    atomic_store(&cached, n);
    return n;
}

/* Run fn(ctx, tid, nt) for tid in [0, nt) on nt threads (the caller is tid 0). A thread that
 * cannot be started has its share run inline, so the work is always done. */
typedef void (*par_fn)(void *ctx, int tid, int nt);
typedef struct {
    par_fn fn;
    void *ctx;
    int tid, nt;
} par_arg;

static void *par_tramp(void *p) {
    par_arg *a = p;
    a->fn(a->ctx, a->tid, a->nt);
    return NULL;
}

static void par_run(int nt, par_fn fn, void *ctx) {
    if (nt > 64) nt = 64;
    if (nt <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_t th[64];
    par_arg args[64];
    int ok[64] = {0};
    for (int t = 1; t < nt; t++) {
        args[t] = (par_arg){fn, ctx, t, nt};
        ok[t] = pthread_create(&th[t], NULL, par_tramp, &args[t]) == 0;
    }
    fn(ctx, 0, nt);
    for (int t = 1; t < nt; t++) {
        if (ok[t])
            pthread_join(th[t], NULL);
        else
            fn(ctx, t, nt);
    }
}

/* [lo, hi) share of tid among nt over total items. */
static void par_range(int64_t total, int tid, int nt, int64_t *lo, int64_t *hi) {
    *lo = total * tid / nt;
    *hi = total * (tid + 1) / nt;
}

#if defined(__AVX2__) && defined(__FMA__)
/* exp on 8 lanes: Cephes range reduction + degree-5 polynomial; inputs clamped to [-87.3, 88]. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

float eng_cpu_exp_sum(float *x, int n, float m) {
    int i = 0;
    float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 vm = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int j = 0; j < 8; j++) sum += lanes[j];
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    return sum;
}

/* ---------------------------------------------------------------- ops */

float eng_cpu_rope_table(const eng_config *cfg, int d, int seq_len, float *inv_freq) {
    /* transformers: 1 / base ** (arange(0, d, 2).float() / d), all float32. */
    if (cfg->rope_longrope && d / 2 <= ENG_ROPE_MAX_FACTORS) {
        /* _compute_longrope_parameters: 1.0 / (ext_factors * base ** inv_freq_shape), float32 */
        const float *ext = seq_len > cfg->rope_original_max_pos ? cfg->rope_long_factor : cfg->rope_short_factor;
        for (int i = 0; i < d / 2; i++) {
            float e = (float)(2 * i) / (float)d;
            inv_freq[i] = 1.0f / (ext[i] * powf(cfg->rope_theta, e));
        }
        return cfg->rope_attn_factor > 0 ? cfg->rope_attn_factor : 1.0f;
    }
    for (int i = 0; i < d / 2; i++) {
        float e = (float)(2 * i) / (float)d;
        inv_freq[i] = 1.0f / powf(cfg->rope_theta, e);
    }
    if (!cfg->rope_llama3) return 1.0f;
    /* _compute_llama3_parameters, float32 tensor maths against Python-float thresholds. */
    const float factor = cfg->rope_factor, lo = cfg->rope_low_freq_factor, hi = cfg->rope_high_freq_factor;
    const float old = (float)cfg->rope_original_max_pos;
    const float low_wl = (float)((double)cfg->rope_original_max_pos / (double)lo);
    const float high_wl = (float)((double)cfg->rope_original_max_pos / (double)hi);
    for (int i = 0; i < d / 2; i++) {
        const float f = inv_freq[i];
        const float wl = (float)(2.0 * M_PI) / f;
        float fl = wl > low_wl ? f / factor : f;
        const float smooth = (old / wl - lo) / (hi - lo);
        const float smoothed = (1.0f - smooth) * fl / factor + smooth * fl;
        if (!(wl < high_wl) && !(wl > low_wl)) fl = smoothed;
        inv_freq[i] = fl;
    }
    return 1.0f;
}

void eng_cpu_rope_freqs(const eng_config *cfg, int d, float *inv_freq) {
    (void)eng_cpu_rope_table(cfg, d, 0, inv_freq);
}

/* One token's heads: cs holds cos[d/2] then sin[d/2] for its position. */
static void rope_row(float *x, int n_heads, int d, const float *cs) {
    const int h2 = d / 2;
    const float *co = cs, *si = cs + h2;
    for (int h = 0; h < n_heads; h++) {
        float *a = x + (size_t)h * d, *b = a + h2;
        for (int i = 0; i < h2; i++) {
            const float x1 = a[i], x2 = b[i];
            a[i] = x1 * co[i] - x2 * si[i];
            b[i] = x2 * co[i] + x1 * si[i];
        }
    }
}

/* cos/sin of the float32 angle pos * inv_freq[i], as transformers (its matmul of one term is exact),
 * times scale (longrope's attention factor; transformers multiplies the float32 cos/sin by it). */
static void rope_cs(int pos, int d, const float *inv_freq, float scale, float *cs) {
    const int h2 = d / 2;
    for (int i = 0; i < h2; i++) {
        const float a = (float)pos * inv_freq[i];
        cs[i] = (float)cos((double)a);
        cs[h2 + i] = (float)sin((double)a);
        if (scale != 1.0f) cs[i] *= scale, cs[h2 + i] *= scale;
    }
}

void eng_cpu_rope_apply(float *x, int n, int n_heads, int d, int pos0, const float *inv_freq) {
    float cs[1024];
    if (d > 1024) return; /* precondition (eng_cpu.h); the prefill refuses such models */
    for (int t = 0; t < n; t++) {
        rope_cs(pos0 + t, d, inv_freq, 1.0f, cs);
        rope_row(x + (size_t)t * n_heads * d, n_heads, d, cs);
    }
}

void eng_cpu_rmsnorm(const float *x, const float *w, int n, int C, float eps, float *y) {
    for (int t = 0; t < n; t++) {
        const float *xr = x + (size_t)t * C;
        float *yr = y + (size_t)t * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        const float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        for (int c = 0; c < C; c++) yr[c] = w[c] * (xr[c] * r);
    }
}

/* ---------------------------------------------------------------- weights */

typedef struct {
    const eng_tensor *t;
    int64_t off, n;
    float *dst;
} conv_job;

static void conv_part(void *p, int tid, int nt) {
    conv_job *j = p;
    int64_t lo, hi;
    par_range(j->n, tid, nt, &lo, &hi);
    if (hi > lo) eng_tensor_to_f32(j->t, j->off + lo, hi - lo, j->dst + lo);
}

static int f32_direct(const eng_tensor *t) {
    return t->dtype == ENG_DT_F32 && ((uintptr_t)t->data & 3u) == 0;
}

/* Elements [off, off+n) of t as f32: the mapped data itself when it is aligned f32, else a
 * conversion into buf (both cores for big tensors). */
static const float *weight_f32(const eng_tensor *t, int64_t off, int64_t n, float *buf) {
    if (f32_direct(t)) return (const float *)t->data + off;
    conv_job j = {t, off, n, buf};
    par_run(n >= (1 << 20) ? eng_cpu_threads() : 1, conv_part, &j);
    return buf;
}

typedef struct {
    const float *x, *w, *b;
    int n, in, out;
    float beta;
    float *y;
} linear_job;

static void linear_part(void *p, int tid, int nt) {
    const linear_job *j = p;
    int64_t lo, hi;
    par_range(j->n, tid, nt, &lo, &hi);
    if (hi <= lo) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), j->out, j->in, 1.0f, j->x + lo * j->in,
                j->in, j->w, j->in, j->beta, j->y + lo * j->out, j->out);
    if (j->b)
        for (int64_t t = lo; t < hi; t++) {
            float *r = j->y + t * j->out;
            for (int c = 0; c < j->out; c++) r[c] += j->b[c];
        }
}

/* y (n, out) = x (n, in) @ w^T (+ b) with w (out, in); beta = 1 accumulates into y. Rows are
 * split over our threads, each a single-threaded sgemm: OpenBLAS's own pool is kept at one
 * thread during a prefill, because its workers spin after each call and would steal the cores
 * the attention threads need. */
static void linear(const float *x, int n, int in, const float *w, int out, const float *b, float beta, float *y) {
    linear_job j = {x, w, b, n, in, out, beta, y};
    int nt = eng_cpu_threads();
    if ((int64_t)n * in * out < (1 << 21) || n < 32) nt = 1;
    if (nt > n / 16) nt = n / 16 > 0 ? n / 16 : 1;
    par_run(nt, linear_part, &j);
}

/* ---------------------------------------------------------------- attention for one layer */

typedef struct {
    const float *q, *k, *v;
    int n, H, Hkv, d;
    const eng_pattern *const *pat; /* [H]: per head, NULL = dense */
    const eng_head_index *ix;      /* [H] given indexes (backend op) or NULL */
    float *out, *lse;              /* lse (H, n) of the sparse rows, or NULL */
    int *heads, nheads;            /* sparse heads to run */
    atomic_int next, failed;
    eng_err err;
} sparse_job;

static void sparse_part(void *p, int tid, int nt) {
    (void)tid, (void)nt;
    sparse_job *j = p;
    const int qd = j->H * j->d, kvd = j->Hkv * j->d, grp = j->H / j->Hkv;
    for (;;) {
        int i = atomic_fetch_add(&j->next, 1);
        if (i >= j->nheads || atomic_load(&j->failed)) break;
        const int h = j->heads[i];
        const float *qh = j->q + (size_t)h * j->d, *kh = j->k + (size_t)(h / grp) * j->d;
        const float *vh = j->v + (size_t)(h / grp) * j->d;
        float *lse = j->lse ? j->lse + (size_t)h * j->n : NULL;
        if (j->ix) {
            eng_attn_sparse_head(qh, qd, kh, vh, kvd, j->n, j->d, &j->ix[h], j->out + (size_t)h * j->d, qd, lse);
            continue;
        }
        eng_err e; /* any pattern kind: index, per-row mask (DMA, N:M), optional reshape (eng_dma.h) */
        if (eng_dma_attend(j->pat[h], qh, qd, kh, vh, kvd, j->n, j->d, j->out + (size_t)h * j->d, qd, lse, NULL, NULL,
                           &e) != 0) {
            if (atomic_exchange(&j->failed, 1) == 0) eng_err_set(&j->err, "head %d: %s", h, e.msg);
            break;
        }
    }
}

/* out (n, H*d) from q (n, H*d), k/v (n, Hkv*d). Head h is sparse when ix is given (ix[h]) or
 * pat[h] is non-NULL (index built here), dense otherwise. lse (H, n), when given, receives each
 * row's LSE: of the attention the head ran, or with lse_dense always of dense attention (sparse
 * heads then also run a dense pass into scratch (n, d)). */
static int attn_layer(const float *q, const float *k, const float *v, int n, int H, int Hkv, int d,
                      const eng_pattern *const *pat, const eng_head_index *ix, float *out, float *lse_out,
                      int lse_dense, float *scratch, eng_err *err) {
    const int qd = H * d, kvd = Hkv * d, grp = H / Hkv;
    int heads[1024], nsparse = 0;
    for (int h = 0; h < H; h++) {
        const int sparse = ix ? 1 : pat ? pat[h] != NULL : 0;
        const float *qh = q + (size_t)h * d, *kh = k + (size_t)(h / grp) * d, *vh = v + (size_t)(h / grp) * d;
        float *lse = lse_out ? lse_out + (size_t)h * n : NULL;
        if (!sparse)
            eng_attn_dense_head(qh, qd, kh, vh, kvd, n, d, out + (size_t)h * d, qd, lse);
        else {
            heads[nsparse++] = h;
            if (lse && lse_dense) eng_attn_dense_head(qh, qd, kh, vh, kvd, n, d, scratch, d, lse);
        }
    }
    if (!nsparse) return 0;
    sparse_job j = {.q = q, .k = k, .v = v, .n = n, .H = H, .Hkv = Hkv, .d = d, .pat = pat, .ix = ix, .out = out,
                    .lse = lse_dense ? NULL : lse_out, .heads = heads, .nheads = nsparse};
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, 0);
    const int blas_prev = openblas_get_num_threads(); /* our threads already use every core */
    if (blas_prev != 1) openblas_set_num_threads(1);
    par_run(nsparse < eng_cpu_threads() ? nsparse : eng_cpu_threads(), sparse_part, &j);
    if (blas_prev != 1) openblas_set_num_threads(blas_prev);
    if (atomic_load(&j.failed)) return eng_err_set(err, "%s", j.err.msg);
    return 0;
}

/* ---------------------------------------------------------------- MLP */

typedef struct {
    float *g;
    const float *u;
    int64_t n;
} silu_job;

/* g <- silu(g) * u, with silu(g) = g / (1 + exp(-g)). */
static void silu_part(void *p, int tid, int nt) {
    silu_job *j = p;
    int64_t lo, hi;
    par_range(j->n, tid, nt, &lo, &hi);
    float e[256];
    for (int64_t i = lo; i < hi; i += 256) {
        const int c = hi - i < 256 ? (int)(hi - i) : 256;
        for (int t = 0; t < c; t++) e[t] = -j->g[i + t];
        eng_cpu_exp_sum(e, c, 0.0f);
        for (int t = 0; t < c; t++) j->g[i + t] = j->g[i + t] / (1.0f + e[t]) * j->u[i + t];
    }
}

/* ---------------------------------------------------------------- prefill */

typedef struct {
    float *x, *xn, *q, *k, *v, *att, *g, *u, *w, *nw, *cs, *inv, *lse, *scr, *logits, *lmw;
    float *rmax, *rsum, *tgt, *amv;
    const eng_pattern **pat;
} bufs;

static void bufs_free(bufs *b) {
    free(b->x), free(b->xn), free(b->q), free(b->k), free(b->v), free(b->att), free(b->g), free(b->u);
    free(b->w), free(b->nw), free(b->cs), free(b->inv), free(b->lse), free(b->scr), free(b->logits);
    free(b->lmw), free(b->rmax), free(b->rsum), free(b->tgt), free(b->amv), free(b->pat);
}

static size_t tensor_need(const eng_tensor *t) { return f32_direct(t) ? 0 : (size_t)t->numel; }

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* Streaming LM head over vocab chunks and row chunks: per position the running max / argmax,
 * the online log-sum-exp and the logit of the next token; the last row kept whole. */
static int lm_head(const eng_model *m, const int *tokens, int n, bufs *b, eng_prefill_out *out, eng_err *err) {
    const int C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    const eng_tensor *W = &m->lm_head;
    int vc = V;
    if (!f32_direct(W)) {
        size_t rows = LM_BYTES / (sizeof(float) * (size_t)C);
        if (rows < 1) rows = 1;
        if (rows < (size_t)V) vc = (int)rows;
        if (!(b->lmw = malloc(sizeof(float) * (size_t)vc * C)))
            return eng_err_set(err, "out of memory for the LM head (%d x %d f32)", vc, C);
    }
    const int rc = n < LM_ROWS ? n : LM_ROWS;
    b->logits = malloc(sizeof(float) * (size_t)rc * vc);
    b->rmax = malloc(sizeof(float) * (size_t)n), b->rsum = malloc(sizeof(float) * (size_t)n);
    b->tgt = malloc(sizeof(float) * (size_t)n), b->amv = malloc(sizeof(float) * (size_t)n);
    if (!b->logits || !b->rmax || !b->rsum || !b->tgt || !b->amv)
        return eng_err_set(err, "out of memory for the LM head logits (%d x %d)", rc, vc);
    for (int i = 0; i < n; i++) b->rmax[i] = -INFINITY, b->rsum[i] = 0.0f, b->tgt[i] = 0.0f, b->amv[i] = -INFINITY;
    for (int v0 = 0; v0 < V; v0 += vc) {
        const int nv = V - v0 < vc ? V - v0 : vc;
        const float *w = weight_f32(W, (int64_t)v0 * C, (int64_t)nv * C, b->lmw);
        for (int p0 = 0; p0 < n; p0 += rc) {
            const int np = n - p0 < rc ? n - p0 : rc;
            linear(b->xn + (size_t)p0 * C, np, C, w, nv, NULL, 0.0f, b->logits);
            for (int r = 0; r < np; r++) {
                const int i = p0 + r;
                float *row = b->logits + (size_t)r * nv;
                if (i == n - 1) memcpy(out->last_logits + v0, row, sizeof(float) * (size_t)nv);
                if (i + 1 < n && tokens[i + 1] >= v0 && tokens[i + 1] < v0 + nv) b->tgt[i] = row[tokens[i + 1] - v0];
                float mx = row[0];
                int am = 0;
                for (int c = 1; c < nv; c++)
                    if (row[c] > mx) mx = row[c], am = c; /* first maximum, as torch.argmax */
                if (mx > b->amv[i]) b->amv[i] = mx, out->argmax[i] = v0 + am;
                const float M = mx > b->rmax[i] ? mx : b->rmax[i];
                const float s = eng_cpu_exp_sum(row, nv, M);
                b->rsum[i] = b->rsum[i] * expf(b->rmax[i] - M) + s;
                b->rmax[i] = M;
            }
        }
    }
    for (int i = 0; i + 1 < n; i++) out->next_logprob[i] = b->tgt[i] - (b->rmax[i] + logf(b->rsum[i]));
    return 0;
}

static int check_model(const eng_model *m, const int *tokens, int n, const eng_prefill_opts *opts, eng_err *err) {
    const eng_config *c = &m->cfg;
    if (n < 1) return eng_err_set(err, "prefill needs at least one token (got %d)", n);
    if (c->n_layers < 1 || c->hidden_size < 1 || c->vocab_size < 1 || c->intermediate_size < 1 || c->n_heads < 1 ||
        c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads || c->head_dim < 2 || c->head_dim % 2 ||
        c->head_dim > 1024 || c->n_heads > 1024 || !m->layers)
        return eng_err_set(err, "%s: model shape not runnable (layers %d, hidden %d, heads %d/%d, head_dim %d)",
                           m->dir, c->n_layers, c->hidden_size, c->n_heads, c->n_kv_heads, c->head_dim);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return eng_err_set(err, "token %d at position %d is outside the vocabulary [0, %d)", tokens[i], i,
                               c->vocab_size);
    if (c->sliding_window > 0 && n > c->sliding_window && opts && opts->patterns)
        return eng_err_set(err, "%s: sparse patterns on a sliding-window model (window %d) need prompts of at most "
                           "%d tokens, not %d", m->dir, c->sliding_window, c->sliding_window, n);
    if (opts && opts->patterns &&
        (opts->patterns->n_layers != c->n_layers || opts->patterns->n_heads != c->n_heads))
        return eng_err_set(err, "pattern config is for %d layers x %d heads, the model has %d x %d",
                           opts->patterns->n_layers, opts->patterns->n_heads, c->n_layers, c->n_heads);
    return 0;
}

static int cpu_prefill(eng_backend *be, const eng_model *m, const int *tokens, int n, const eng_prefill_opts *opts,
                       eng_prefill_out *out, eng_err *err) {
    (void)be;
    memset(out, 0, sizeof *out);
    if (check_model(m, tokens, n, opts, err)) return -1;
    const double t0 = now_s();
    const eng_config *c = &m->cfg;
    const int C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, L = c->n_layers;
    const int H = c->n_heads, Hkv = c->n_kv_heads, d = c->head_dim, qd = H * d, kvd = Hkv * d;
    const size_t N = (size_t)n;
    const int keep_qkv = opts && opts->keep_qkv, keep_lse = opts && opts->keep_lse;
    const eng_pattern_cfg *pc = opts ? opts->patterns : NULL;
    /* Mistral's sliding window (transformers: key k visible to query q iff q - k < window) is
     * exactly an A-shape with no sinks, so it runs through the sparse path. */
    eng_pattern swa = eng_pattern_make(ENG_PAT_ASHAPE);
    swa.n_init = 0, swa.n_local = c->sliding_window;
    const int use_swa = c->sliding_window > 0 && n > c->sliding_window;
    bufs b;
    memset(&b, 0, sizeof b);
    int rc = -1;
    const int blas_prev = openblas_get_num_threads(); /* see linear(); restored on exit */
    if (blas_prev != 1) openblas_set_num_threads(1);

    out->n = n, out->n_layers = L, out->n_heads = H, out->n_kv_heads = Hkv, out->head_dim = d, out->vocab = V;
    /* Scratch for one layer's converted weights: the attention projections one at a time, then
     * gate + up + down together for the MLP chunks. */
    size_t wneed = 0;
    for (int l = 0; l < L; l++) {
        const eng_layer_weights *lw = &m->layers[l];
        wneed = max_sz(wneed, max_sz(max_sz(tensor_need(&lw->wq), tensor_need(&lw->wk)),
                                     max_sz(tensor_need(&lw->wv), tensor_need(&lw->wo))));
        size_t mlp = tensor_need(&lw->w_gate) + tensor_need(&lw->w_up) + tensor_need(&lw->w_down);
        wneed = max_sz(wneed, mlp);
    }
    const int mr = n < MLP_ROWS ? n : MLP_ROWS;
    b.x = malloc(sizeof(float) * N * C), b.xn = malloc(sizeof(float) * N * C);
    b.q = malloc(sizeof(float) * N * qd), b.k = malloc(sizeof(float) * N * kvd), b.v = malloc(sizeof(float) * N * kvd);
    b.att = malloc(sizeof(float) * N * qd);
    b.g = malloc(sizeof(float) * (size_t)mr * F), b.u = malloc(sizeof(float) * (size_t)mr * F);
    b.w = wneed ? malloc(sizeof(float) * wneed) : NULL;
    b.nw = malloc(sizeof(float) * ((size_t)C + 3 * (size_t)qd)); /* norm weight, then bq, bk, bv */
    b.cs = malloc(sizeof(float) * N * d), b.inv = malloc(sizeof(float) * (size_t)d);
    b.pat = calloc((size_t)H, sizeof *b.pat);
    if (!b.x || !b.xn || !b.q || !b.k || !b.v || !b.att || !b.g || !b.u || (wneed && !b.w) || !b.nw || !b.cs ||
        !b.inv || !b.pat) {
        eng_err_set(err, "out of memory for a %d-token prefill of %s", n, m->dir);
        goto done;
    }
    out->last_logits = malloc(sizeof(float) * (size_t)V);
    out->argmax = malloc(sizeof(int) * N);
    out->next_logprob = malloc(sizeof(float) * (N > 1 ? N - 1 : 1));
    out->attn_seconds = calloc((size_t)L, sizeof(double));
    if (!out->last_logits || !out->argmax || !out->next_logprob || !out->attn_seconds) {
        eng_err_set(err, "out of memory for the prefill results");
        goto done;
    }
    if (keep_qkv) {
        out->q = malloc(sizeof(float) * L * N * qd);
        out->k = malloc(sizeof(float) * L * N * kvd);
        out->v = malloc(sizeof(float) * L * N * kvd);
        if (!out->q || !out->k || !out->v) {
            eng_err_set(err, "out of memory keeping Q/K/V (%.2f GB)",
                        4.0 * L * (double)N * (qd + 2.0 * kvd) / 1e9);
            goto done;
        }
    }
    if (keep_lse && !(out->lse = malloc(sizeof(float) * L * (size_t)H * N))) {
        eng_err_set(err, "out of memory keeping the LSE (%d x %d x %d)", L, H, n);
        goto done;
    }
    if (keep_lse && (pc || use_swa) && !(b.scr = malloc(sizeof(float) * N * d))) {
        eng_err_set(err, "out of memory for the dense LSE pass");
        goto done;
    }

    /* RoPE table (n, d): cos[d/2] then sin[d/2] per position, shared by all layers and heads
     * (longrope: the factors for an n-token sequence, cos/sin scaled). */
    const float rope_scale = eng_cpu_rope_table(c, d, n, b.inv);
    for (int t = 0; t < n; t++) rope_cs(t, d, b.inv, rope_scale, b.cs + (size_t)t * d);

    /* x (n, C) = embed[tokens] */
    for (int t = 0; t < n; t++) eng_tensor_to_f32(&m->embed, (int64_t)tokens[t] * C, C, b.x + (size_t)t * C);

    for (int l = 0; l < L; l++) {
        const eng_layer_weights *lw = &m->layers[l];
        if (opts && opts->cancel && *opts->cancel) {
            eng_err_set(err, "cancelled");
            goto done;
        }
        if (opts && opts->progress) opts->progress(opts->progress_ctx, l, L);
        /* attention block: xn = norm(x); q, k, v = xn W^T + b; RoPE; att = attention; x += att Wo^T */
        eng_tensor_to_f32(&lw->attn_norm, 0, C, b.nw);
        eng_cpu_rmsnorm(b.x, b.nw, n, C, c->rms_norm_eps, b.xn);
        float *bq = NULL, *bk = NULL, *bv = NULL;
        if (lw->bq.data) eng_tensor_to_f32(&lw->bq, 0, qd, bq = b.nw + C);
        if (lw->bk.data) eng_tensor_to_f32(&lw->bk, 0, kvd, bk = b.nw + C + qd);
        if (lw->bv.data) eng_tensor_to_f32(&lw->bv, 0, kvd, bv = b.nw + C + 2 * qd);
        linear(b.xn, n, C, weight_f32(&lw->wq, 0, lw->wq.numel, b.w), qd, bq, 0.0f, b.q);
        linear(b.xn, n, C, weight_f32(&lw->wk, 0, lw->wk.numel, b.w), kvd, bk, 0.0f, b.k);
        linear(b.xn, n, C, weight_f32(&lw->wv, 0, lw->wv.numel, b.w), kvd, bv, 0.0f, b.v);
        for (int t = 0; t < n; t++) {
            rope_row(b.q + (size_t)t * qd, H, d, b.cs + (size_t)t * d);
            rope_row(b.k + (size_t)t * kvd, Hkv, d, b.cs + (size_t)t * d);
        }
        if (keep_qkv) {
            memcpy(out->q + (size_t)l * N * qd, b.q, sizeof(float) * N * qd);
            memcpy(out->k + (size_t)l * N * kvd, b.k, sizeof(float) * N * kvd);
            memcpy(out->v + (size_t)l * N * kvd, b.v, sizeof(float) * N * kvd);
        }
        const double ta = now_s();
        for (int h = 0; h < H; h++) {
            const eng_pattern *p = pc ? eng_pattern_cfg_get(pc, l, h) : use_swa ? &swa : NULL;
            b.pat[h] = p && p->kind != ENG_PAT_DENSE ? p : NULL;
        }
        if (attn_layer(b.q, b.k, b.v, n, H, Hkv, d, pc || use_swa ? b.pat : NULL, NULL, b.att,
                       keep_lse ? out->lse + (size_t)l * H * N : NULL, 1, b.scr, err)) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err->msg);
            eng_err_set(err, "layer %d attention: %s", l, msg);
            goto done;
        }
        out->attn_seconds[l] = now_s() - ta;
        linear(b.att, n, qd, weight_f32(&lw->wo, 0, lw->wo.numel, b.w), C, NULL, 1.0f, b.x);

        /* MLP block: x += (silu(xn Wg^T) * (xn Wu^T)) Wd^T, in row chunks of MLP_ROWS */
        eng_tensor_to_f32(&lw->ffn_norm, 0, C, b.nw);
        eng_cpu_rmsnorm(b.x, b.nw, n, C, c->rms_norm_eps, b.xn);
        float *wg_buf = b.w, *wu_buf = b.w + tensor_need(&lw->w_gate);
        float *wd_buf = wu_buf + tensor_need(&lw->w_up);
        const float *wg = weight_f32(&lw->w_gate, 0, lw->w_gate.numel, wg_buf);
        const float *wu = weight_f32(&lw->w_up, 0, lw->w_up.numel, wu_buf);
        const float *wd = weight_f32(&lw->w_down, 0, lw->w_down.numel, wd_buf);
        for (int r0 = 0; r0 < n; r0 += mr) {
            const int nr = n - r0 < mr ? n - r0 : mr;
            linear(b.xn + (size_t)r0 * C, nr, C, wg, F, NULL, 0.0f, b.g);
            linear(b.xn + (size_t)r0 * C, nr, C, wu, F, NULL, 0.0f, b.u);
            silu_job sj = {b.g, b.u, (int64_t)nr * F};
            par_run((int64_t)nr * F >= 65536 ? eng_cpu_threads() : 1, silu_part, &sj);
            linear(b.g, nr, F, wd, C, NULL, 1.0f, b.x + (size_t)r0 * C);
        }
    }

    /* final norm, LM head */
    eng_tensor_to_f32(&m->final_norm, 0, C, b.nw);
    eng_cpu_rmsnorm(b.x, b.nw, n, C, c->rms_norm_eps, b.xn);
    if (lm_head(m, tokens, n, &b, out, err)) goto done;
    out->seconds = now_s() - t0;
    rc = 0;
done:
    bufs_free(&b);
    if (blas_prev != 1) openblas_set_num_threads(blas_prev);
    if (rc) eng_prefill_out_free(out);
    return rc;
}

/* ---------------------------------------------------------------- backend */

static int cpu_attention(eng_backend *be, const float *q, const float *k, const float *v, int n, int H, int Hkv,
                         int d, const eng_head_index *ix, float *out, float *lse, double *seconds, eng_err *err) {
    (void)be;
    if (n < 1 || H < 1 || Hkv < 1 || H % Hkv || d < 1 || H > 1024)
        return eng_err_set(err, "attention: bad shape (n %d, heads %d/%d, d %d)", n, H, Hkv, d);
    if (ix)
        for (int h = 0; h < H; h++)
            if (ix[h].n != n) return eng_err_set(err, "attention: head %d index is for %d tokens, not %d", h, ix[h].n, n);
    const double t0 = now_s();
    int rc = attn_layer(q, k, v, n, H, Hkv, d, NULL, ix, out, lse, 0, NULL, err);
    if (seconds) *seconds = now_s() - t0;
    return rc;
}

static void cpu_destroy(eng_backend *be) { free(be); }

eng_backend *eng_backend_cpu_create(eng_err *err) {
    eng_backend *be = calloc(1, sizeof *be);
    if (!be) {
        eng_err_set(err, "out of memory creating the CPU backend");
        return NULL;
    }
    be->name = "cpu";
    snprintf(be->device, sizeof be->device, "CPU (%d threads)", eng_cpu_threads());
    be->prefill = cpu_prefill;
    be->attention = cpu_attention;
    be->destroy = cpu_destroy;
    return be;
}
