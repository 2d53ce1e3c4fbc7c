/* krn_hattn: flash attention on Hopper warpgroup MMA (wgmma, sm_90a). One warpgroup (4 warps, 128
 * threads) owns 64 query rows of one head: S = Q K^T (m64n64k16; Q from registers, loaded once by
 * ldmatrix; K through a 128-byte-swizzled shared-memory descriptor), online softmax in fp32 registers
 * (exp2 domain), O += P V (m64nDk16, P from registers in the accumulator layout, V through an MN-major
 * descriptor). Pipelined as FA3 within a warpgroup: iteration t issues S_t and P_{t-1} V_{t-1} back to
 * back and runs the softmax of S_t while the second is in flight; K and V tiles of 64 keys arrive by
 * cp.async a whole iteration ahead (V one tile behind K). A tile is 64 consecutive keys from a token
 * offset (dense tiles, index key blocks: causal and band masks where they reach past a row) or up to
 * 64 gathered key columns. Dense CTAs of 2 warpgroups share every K/V tile between 128 query rows;
 * sparse CTAs hold one warpgroup per 64-query index row block (hattn_pipe_kernel), or two lists
 * walked as their union so that a tile both name is copied once (hattn_union_kernel): two heads of
 * one KV group and the same row block (the default where their lists nearly coincide:
 * krn_hattn_sparse_auto), or two consecutive row blocks of one head (a variant).
 *
 * Shared-memory tile layout (bytes), shared by Q, K and V: a [64][D] bf16 tile is D/64 column
 * panels of [64 rows][128 B]; 16-byte chunk c of row r sits at chunk c ^ (r & 7) (the hardware's
 * 128-byte swizzle; panels are 1024-byte aligned). K-major descriptors (Q, K): stride between
 * 8-row groups 1024 B, k-step of 16 columns = +32 B inside a panel. MN-major (V as B of P V):
 * stride between 8-key groups 1024 B, between 64-column panels 8192 B, k-step of 16 keys = +2048 B.
 * Tests: tests/gpu_attn.c (every variant vs the CPU references); numbers: bench/RESULTS.md. */
#include "krn_hattn.h"

#include "krn_common.cuh"

#include <math.h>
#include <stdlib.h>

#include <type_traits>

/* Device passes for targets without wgmma compile the kernels empty; the host never launches them
 * there (krn_hattn_available). */
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define HATTN_BODY 0
#else
#define HATTN_BODY 1
#endif

namespace {

constexpr int kBN = 64;          /* keys per tile */
constexpr float kMaxSlack = 8.f; /* lazy maximum (softmax_tile), log2 units */
constexpr int kPanel = 64 * 128; /* bytes in one [64 rows][64 cols] bf16 panel */
/* V as the MN-major B of P V: leading byte offset = between 64-column panels, stride = between 8-key groups. */
constexpr uint32_t kVLbo = kPanel, kVSbo = 1024;

enum { MODE_DENSE = 0, MODE_SPARSE = 1 };

/* Byte offset of 16-byte chunk ch (0 .. D/8-1) of row r (0..63) in a swizzled [64][D] tile. */
__device__ __forceinline__ uint32_t sw128(int r, int ch) {
    return (uint32_t)((ch >> 3) * kPanel + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
}

/* wgmma shared-memory matrix descriptor: start address, leading and stride byte offsets (all >> 4),
 * 128-byte swizzle (mode 1 in bits 62-63). */
__device__ __forceinline__ uint64_t gdesc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* cp.async (generic proxy) writes become visible to wgmma (async proxy) reads after this + a barrier. */
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
/* Keep the compiler from moving accumulator reads/writes across the asynchronous MMA. */
template <int N> __device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}

#if HATTN_BODY
/* D (64 x 64 f32, wgmma accumulator layout) (+)= A (64 x 16, smem desc) * B (64 x 16 K-major, smem desc). */
static __device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
                 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(accumulate));
}

/* D (64 x 64 f32) += A (64 x 16 bf16 in registers, mma.sync A-fragment layout per warp) * B (16 x 64, MN-major smem desc). */
static __device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
                 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

/* D (64 x 128 f32) += A (64 x 16 bf16 in registers, mma.sync A-fragment layout per warp) * B (16 x 128, MN-major smem desc). */
static __device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

/* D (64 x 64 f32) (+)= A (64 x 16 bf16 in registers) * B (64 x 16, K-major smem desc). */
static __device__ __forceinline__ void wgmma_rs_n64_k(float (&d)[32], const uint32_t (&a)[4], uint64_t db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
                 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

#endif

template <int D> __device__ __forceinline__ void wgmma_pv(float (&o)[D / 2], const uint32_t (&a)[4], uint64_t db) {
#if HATTN_BODY
    if constexpr (D == 128) wgmma_rs_n128(o, a, db);
    else wgmma_rs_n64(o, a, db);
#endif
}

/* Per-thread softmax state of its two rows (row_a, row_b = row_a + 8); m in the scaled exp2 domain. */
struct Rows {
    float m_a, m_b, l_a, l_b;
};

/* The online softmax of a masked 64 x 64 S tile in place (S becomes P, fp32); al_a / al_b: the
 * factors O must be scaled by. */
__device__ __forceinline__ void online_softmax(float (&s)[32], Rows &rw, float scale_log2, float &al_a, float &al_b) {
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        mx_a = fmaxf(mx_a, fmaxf(s[j * 4 + 0], s[j * 4 + 1]));
        mx_b = fmaxf(mx_b, fmaxf(s[j * 4 + 2], s[j * 4 + 3]));
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    /* The running maximum moves only when a tile's beats it by more than kMaxSlack (exp2 domain;
     * FA4's lazy rescale): P may reach 2^kMaxSlack, harmless in bf16 P and fp32 sums, and O's
     * rescale (rescale_pack) is skipped on all but a few tiles. */
    const float ta = mx_a * scale_log2, tb = mx_b * scale_log2;
    const float mn_a = ta > rw.m_a + kMaxSlack ? ta : rw.m_a, mn_b = tb > rw.m_b + kMaxSlack ? tb : rw.m_b;
    const float use_a = mn_a == -INFINITY ? 0.f : mn_a, use_b = mn_b == -INFINITY ? 0.f : mn_b;
    al_a = krn_ex2(rw.m_a - use_a);
    al_b = krn_ex2(rw.m_b - use_b);
    rw.m_a = mn_a;
    rw.m_b = mn_b;
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s[j * 4 + 0] = krn_ex2(fmaf(s[j * 4 + 0], scale_log2, -use_a));
        s[j * 4 + 1] = krn_ex2(fmaf(s[j * 4 + 1], scale_log2, -use_a));
        s[j * 4 + 2] = krn_ex2(fmaf(s[j * 4 + 2], scale_log2, -use_b));
        s[j * 4 + 3] = krn_ex2(fmaf(s[j * 4 + 3], scale_log2, -use_b));
        sum_a += s[j * 4 + 0] + s[j * 4 + 1];
        sum_b += s[j * 4 + 2] + s[j * 4 + 3];
    }
    rw.l_a = rw.l_a * al_a + sum_a;
    rw.l_b = rw.l_b * al_b + sum_b;
}

/* Masks, then the online softmax of one 64 x 64 S tile in place (S becomes P, fp32). Masks: keys
 * after the row (block tiles reaching past the warpgroup's first row r0), the A-shape band
 * (sink, window), gathered slots past c_count. Accumulator element s[j*4 + e]: row (e < 2 ? row_a :
 * row_b), column j*8 + (lane & 3)*2 + (e & 1). al_a / al_b: the factors O must be scaled by. */
__device__ __forceinline__ void softmax_tile(float (&s)[32], Rows &rw, float scale_log2, bool gather, int c_start,
                                             int c_count, int r0, int row_a, int row_b, int sink, int window,
                                             int lane, float &al_a, float &al_b) {
    const bool band = !gather && window > 0 && r0 + 63 - c_start >= window && c_start + kBN - 1 >= sink;
    const bool need_mask = gather ? c_count < kBN : (c_start + kBN - 1 > r0 || band);
    if (need_mask) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = j * 8 + (lane & 3) * 2 + (e & 1), row = e < 2 ? row_a : row_b;
                const int key = c_start + col;
                const bool dead =
                    gather ? col >= c_count : (key > row || (band && key >= sink && row - key >= window));
                if (dead) s[j * 4 + e] = -INFINITY;
            }
        }
    }
    online_softmax(s, rw, scale_log2, al_a, al_b);
}

/* O *= alpha per row, then P (bf16 pairs) in the A-register layout, which is S's accumulator layout.
 * The D / 2 multiplies are skipped where no row of the warp changed its maximum (alpha exactly 1:
 * the result is the same), which with the lazy maximum is nearly every tile. */
template <int D>
__device__ __forceinline__ void rescale_pack(float (&o)[D / 2], uint32_t (&pa)[4][4], const float (&s)[32], float al_a,
                                             float al_b) {
    if (__any_sync(0xffffffffu, al_a != 1.f || al_b != 1.f)) {
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            o[j * 4 + 0] *= al_a;
            o[j * 4 + 1] *= al_a;
            o[j * 4 + 2] *= al_b;
            o[j * 4 + 3] *= al_b;
        }
    }
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        pa[kk][0] = krn_pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
        pa[kk][1] = krn_pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
        pa[kk][2] = krn_pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
        pa[kk][3] = krn_pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
}

/* Full row sums over the quad, normalise, store bf16 rows < n and the natural-log LSE. */
template <int D>
__device__ __forceinline__ void store_rows(const float (&o)[D / 2], Rows rw, const krn_attn_args &a, int h, int row_a,
                                           int row_b, int lane) {
    const int n = a.n;
    rw.l_a += __shfl_xor_sync(0xffffffffu, rw.l_a, 1);
    rw.l_a += __shfl_xor_sync(0xffffffffu, rw.l_a, 2);
    rw.l_b += __shfl_xor_sync(0xffffffffu, rw.l_b, 1);
    rw.l_b += __shfl_xor_sync(0xffffffffu, rw.l_b, 2);
    const float inv_a = rw.l_a > 0.f ? 1.f / rw.l_a : 0.f, inv_b = rw.l_b > 0.f ? 1.f / rw.l_b : 0.f;
    __nv_bfloat16 *out = reinterpret_cast<__nv_bfloat16 *>(a.out) + h * D;
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
        const int col = j * 8 + (lane & 3) * 2;
        if (row_a < n)
            *reinterpret_cast<uint32_t *>(out + (size_t)row_a * a.out_stride + col) =
                krn_pack_bf16(o[j * 4 + 0] * inv_a, o[j * 4 + 1] * inv_a);
        if (row_b < n)
            *reinterpret_cast<uint32_t *>(out + (size_t)row_b * a.out_stride + col) =
                krn_pack_bf16(o[j * 4 + 2] * inv_b, o[j * 4 + 3] * inv_b);
    }
    if (a.lse && (lane & 3) == 0) {
        const float ln2 = 0.69314718055994531f;
        if (row_a < n) a.lse[(size_t)h * n + row_a] = rw.l_a > 0.f ? (rw.m_a + log2f(rw.l_a)) * ln2 : -INFINITY;
        if (row_b < n) a.lse[(size_t)h * n + row_b] = rw.l_b > 0.f ? (rw.m_b + log2f(rw.l_b)) * ln2 : -INFINITY;
    }
}

/* S = Q K^T (64 x 64, D/16 k-steps) then O += P V (4 k-steps) issued back to back as two commit
 * groups (wait_s waits for the first). Q from registers (QR: qf, loaded once; saves the shared-memory
 * bandwidth of re-reading Q for every tile) or from shared memory (sq). Straight-line on purpose:
 * ptxas serialises wgmma across branches. */
template <int D, bool QR>
__device__ __forceinline__ void issue_s_pv(float (&s)[32], float (&o)[D / 2], const uint32_t (&pa)[4][4],
                                           const uint32_t (&qf)[D / 16][4], uint32_t sq, uint32_t kt, uint32_t vt) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const uint32_t off = (kk >> 2) * kPanel + (kk & 3) * 32;
#if HATTN_BODY
        if constexpr (QR) wgmma_rs_n64_k(s, qf[kk], gdesc(kt + off, 16, 1024), kk > 0);
        else
#endif
            wgmma_ss_n64(s, gdesc(sq + off, 16, 1024), gdesc(kt + off, 16, 1024), kk > 0);
    }
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wgmma_pv<D>(o, pa[kk], gdesc(vt + kk * 2048, kVLbo, kVSbo));
    wgmma_commit();
}

/* Wait for S (the first of issue_s_pv's two groups). */
__device__ __forceinline__ void wait_s(float (&s)[32]) {
    wgmma_wait<1>();
    reg_fence(s);
}

/* Q fragments of this warp's 16 rows (A-register layout) from a swizzled [64][D] tile. */
template <int D>
__device__ __forceinline__ void load_qf(uint32_t (&qf)[D / 16][4], uint32_t sq, int warp, int lane) {
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        krn_ldmatrix_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], sq + sw128(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
}

/* Q rows [m0, m0 + rows) of one head (rows past n zero-filled) into swizzled [64][D] tiles at sQ,
 * sQ + QB, ...; NT threads. */
template <int D, int NT>
__device__ __forceinline__ void copy_q(uint32_t sQ, const __nv_bfloat16 *q, int stride, int m0, int rows, int n,
                                      int tid) {
    constexpr int CH = D / 8, QB = 64 * D * 2;
    for (int c = tid; c < rows * CH; c += NT) {
        const int r = c / CH, ch = c % CH, row = m0 + r;
        const bool ok = row < n;
        krn_cp_async16(sQ + (r >> 6) * QB + sw128(r & 63, ch), q + (ok ? (size_t)row * stride + ch * 8 : 0),
                       ok ? 16 : 0);
    }
}

/* V stage 1 zeroed: the first iteration's P V reads it with P = 0, and 0 * (stale bits) could be
 * NaN. (Ordinary stores; the fence.proxy.async before the loop's first barrier publishes them.) */
template <int D, int NT> __device__ __forceinline__ void zero_v1(uint32_t sV, int tid) {
    constexpr int TB = kBN * D * 2;
    for (int i = tid; i < TB / 16; i += NT)
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(sV + TB + i * 16), "r"(0u) : "memory");
}

/* After issue_s_pv: the softmax of S (or P = 0 for a warpgroup with no row in the tile), the wait
 * for the P V in flight, then O rescaled and the next P packed. */
template <int D>
__device__ __forceinline__ void finish_tile(float (&s)[32], float (&o)[D / 2], uint32_t (&pa)[4][4], Rows &rw,
                                            bool active, float scale_log2, bool gather, int c_start, int c_count,
                                            int r0, int row_a, int row_b, int sink, int window, int lane) {
    float al_a = 1.f, al_b = 1.f;
    if (active)
        softmax_tile(s, rw, scale_log2, gather, c_start, c_count, r0, row_a, row_b, sink, window, lane, al_a, al_b);
    else
#pragma unroll
        for (int i = 0; i < 32; i++) s[i] = 0.f;
    wgmma_wait<0>();
    reg_fence(o);
    rescale_pack<D>(o, pa, s, al_a, al_b);
    reg_fence(o);
}

/* The last O += P V of a row block. */
template <int D>
__device__ __forceinline__ void issue_pv(float (&o)[D / 2], const uint32_t (&pa)[4][4], uint32_t vt) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wgmma_pv<D>(o, pa[kk], gdesc(vt + kk * 2048, kVLbo, kVSbo));
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(o);
}

/* After the loop: the copies' last wait, the row block's last O += P V (V in shared memory at vt),
 * then its rows stored. */
template <int D>
__device__ __forceinline__ void finish_rows(float (&o)[D / 2], const uint32_t (&pa)[4][4], uint32_t vt, const Rows &rw,
                                            const krn_attn_args &a, int h, int row_a, int row_b, int lane) {
    krn_cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    issue_pv<D>(o, pa, vt);
    store_rows<D>(o, rw, a, h, row_a, row_b, lane);
}

/* A tile resolved ahead of use: its first key (block tiles) or its slot in the column list (gather
 * tiles), its key count, and for gather tiles the key indexes of the RPT rows this thread copies, so
 * that no index read sits between a barrier and the copies it feeds. */
template <int RPT> struct TileR {
    int start, count, gather;
    int who; /* hattn_union_kernel: bit w set = warpgroup w's row block lists this tile */
    int key[RPT];
};

/* One K or V tile (64 keys) into a swizzled shared tile at byte address dst; thread tid copies
 * 16-byte chunk tid % CH of rows tid / CH + i * (NT / CH); rows past the keys are zero-filled.
 * GATHER = false: the caller knows the tile is 64 consecutive keys (no per-row choice: the
 * sparse loop without gathered columns measured ~18% more instructions per tile than dense). */
template <int D, int NT, int RPT, bool GATHER = true>
__device__ __forceinline__ void load_half(uint32_t dst, const TileR<RPT> &t, const __nv_bfloat16 *src, int stride,
                                          int n, int tid) {
    constexpr int CH = D / 8;
    const int ch = tid % CH;
    if (GATHER && t.gather) { /* one branch per tile (warp-uniform), not a choice per row */
#pragma unroll
        for (int i = 0; i < RPT; i++) {
            const int r = tid / CH + i * (NT / CH), key = t.key[i];
            const bool ok = key >= 0;
            krn_cp_async16(dst + sw128(r, ch), src + (ok ? (size_t)key * stride + ch * 8 : 0), ok ? 16 : 0);
        }
    } else {
#pragma unroll
        for (int i = 0; i < RPT; i++) {
            const int r = tid / CH + i * (NT / CH), key = t.start + r;
            const bool ok = r < t.count && key < n;
            krn_cp_async16(dst + sw128(r, ch), src + (ok ? (size_t)key * stride + ch * 8 : 0), ok ? 16 : 0);
        }
    }
}

/* The pipelined kernel (FA3's intra-warpgroup overlap): iteration t issues S_t = Q K_t^T and then
 * O += P_{t-1} V_{t-1} back to back on the tensor cores, runs the softmax of S_t while the second is in
 * flight, waits for it, rescales O and packs P_t. V therefore lags K by one tile: each iteration
 * copies K_{t+1} and V_t (two stages each), a whole iteration ahead of their use. */
template <int D, int NWG, int MODE, bool QR>
__global__ void __launch_bounds__(NWG * 128, NWG == 1 ? 2 : 1)
hattn_pipe_kernel(krn_attn_args a, krn_index_dev ix, float scale_log2) {
#if HATTN_BODY
    constexpr int NT = NWG * 128, CH = D / 8, TB = kBN * D * 2 /* bytes per K or V tile */, QB = 64 * D * 2;
    constexpr int BM = 64 * NWG, RPT = kBN * CH / NT;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t s0 = krn_smem_u32(smem_raw);
    const uint32_t sQ = (s0 + 1023u) & ~1023u; /* [NWG][64][D] */
    const uint32_t sK = sQ + NWG * QB;         /* [2][64][D] */
    const uint32_t sV = sK + 2 * TB;           /* [2][64][D] */

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    const int n = a.n;
    const int n_mb = (n + BM - 1) / BM;
    const int mb = n_mb - 1 - (int)blockIdx.x; /* heaviest row blocks first */
    const int h = blockIdx.y, hk = h / (a.H / a.Hkv);
    const int m0 = mb * BM, r0 = m0 + wg * 64; /* this warpgroup's first row */

    const __nv_bfloat16 *q = reinterpret_cast<const __nv_bfloat16 *>(a.q) + h * D;
    const __nv_bfloat16 *k = reinterpret_cast<const __nv_bfloat16 *>(a.k) + hk * D;
    const __nv_bfloat16 *v = reinterpret_cast<const __nv_bfloat16 *>(a.v) + hk * D;

    const krn_tiles tls = krn_tiles_of<MODE == MODE_DENSE>(ix, h, mb, min(m0 + BM, n) - 1);
    const int n_blocks = tls.n_blocks, n_tiles = tls.n_tiles, n_cols = tls.n_cols, sink = tls.sink, window = tls.window;
    const int *boff = tls.boff, *cidx = tls.cidx;
    uint32_t qf[D / 16][4];
    float o[D / 2], s[32];
    uint32_t pa[4][4]; /* P_{t-1}, bf16 pairs; zero before the first tile */
    Rows rw = {-INFINITY, -INFINITY, 0.f, 0.f};
    const int row_a = r0 + warp * 16 + (lane >> 2), row_b = row_a + 8;
    const uint32_t sQw = sQ + wg * QB;
    /* Everything from the first copy to the last tile, compiled twice: with gathered-column tiles
     * (G true) and for lists of key blocks only (dense, A-shape, block-sparse), where the resolver
     * and the copies skip every per-row choice. */
    auto run = [&](auto gtag) {
        constexpr bool G = decltype(gtag)::value;
        auto resolve = [&](int t) {
            TileR<RPT> r;
            r.start = 0, r.count = 0, r.gather = 0;
            if (t >= n_tiles) return r;
            if (!G || t < n_blocks) {
                r.start = MODE == MODE_DENSE ? t * kBN : __ldg(boff + t);
                r.count = kBN;
            } else {
                const int g = (t - n_blocks) * kBN;
                r.start = g;
                r.count = min(kBN, n_cols - g);
                r.gather = 1;
#pragma unroll
                for (int i = 0; i < RPT; i++) {
                    const int row = tid / CH + i * (NT / CH);
                    r.key[i] = row < r.count ? __ldg(cidx + g + row) : -1;
                }
            }
            return r;
        };

        /* Q rows and K_0 as the first copy group. */
        copy_q<D, NT>(sQ, q, a.q_stride, m0, BM, n, tid);
        krn_cp_async_commit();
        TileR<RPT> r_t = resolve(0), r_n = resolve(1); /* tile t (V copy now) and t + 1 (K copy now) */
        if (n_tiles > 0) load_half<D, NT, RPT, G>(sK, r_t, k, a.kv_stride, n, tid);
        krn_cp_async_commit();
        if (QR) {
            krn_cp_async_wait<1>();
            __syncthreads();
            load_qf<D>(qf, sQ + wg * QB, warp, lane);
        }
#pragma unroll
        for (int i = 0; i < D / 2; i++) o[i] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) pa[kk][0] = pa[kk][1] = pa[kk][2] = pa[kk][3] = 0u;
        zero_v1<D, NT>(sV, tid);

        for (int t = 0; t < n_tiles; t++) {
            krn_cp_async_wait<0>(); /* K_t and V_{t-1} (this thread's copies) */
            fence_proxy_async();
            __syncthreads(); /* everyone's copies; S_{t-1} and P_{t-2} V_{t-2} are done everywhere */
            const int c_start = r_t.start, c_count = r_t.count;
            const bool gather = G && r_t.gather;
            const bool active = r0 < n && (gather || c_start <= r0 + 63); /* some row of this warpgroup sees it */
            /* The copies first, then the MMAs: issuing the MMAs first and copying under them measured
             * 10-15% slower (dense) on the H100 (bench/RESULTS.md). Straight-line issue (no branch
             * between fence, MMAs, commits and waits: ptxas serialises wgmma it cannot follow). A
             * warpgroup that has nothing in tile t still runs S_t and discards it; P_{t-1} is zero after
             * such a tile (and before the first), so its P V adds 0. */
            const uint32_t kt = sK + (t & 1) * TB, vt = sV + ((t - 1) & 1) * TB;
            if (t + 1 < n_tiles) load_half<D, NT, RPT, G>(sK + ((t + 1) & 1) * TB, r_n, k, a.kv_stride, n, tid);
            load_half<D, NT, RPT, G>(sV + (t & 1) * TB, r_t, v, a.kv_stride, n, tid);
            krn_cp_async_commit();
            r_t = r_n;
            r_n = resolve(t + 2);
            issue_s_pv<D, QR>(s, o, pa, qf, sQw, kt, vt);
            wait_s(s);
            finish_tile<D>(s, o, pa, rw, active, scale_log2, gather, c_start, c_count, r0, row_a, row_b, sink, window, lane);
        }
    };
    if (MODE == MODE_SPARSE && n_cols > 0) run(std::true_type{});
    else run(std::false_type{});
    /* The last P V (V_{T-1} was copied in the last iteration; P is zero when T = 0). */
    finish_rows<D>(o, pa, sV + ((n_tiles - 1) & 1) * TB, rw, a, h, row_a, row_b, lane);
#endif
}


/* Sparse attention for two index lists per CTA on hattn_pipe_kernel's loop: two consecutive row
 * blocks of one head (warpgroup w: row block 2p + w), or (HEADS) heads 2y and 2y + 1 of one KV group
 * and the same row block, walking the union of the two lists so that a tile both name is copied
 * once for both. The key blocks (both lists sorted ascending) are merged on the fly, two cursors in
 * registers; then the gathered columns: one list of tiles for both when the two column lists are
 * equal, else each warpgroup's own. A warpgroup that a tile is not for computes it and discards it
 * (P = 0): straight-line issue. Branching around its tensor work instead (flushing the pending P V
 * first) measured 2-7% slower on the H100 (bench/RESULTS.md). */
template <int D, bool HEADS>
__global__ void __launch_bounds__(256, 1)
hattn_union_kernel(krn_attn_args a, krn_index_dev ix, float scale_log2) {
#if HATTN_BODY
    constexpr int NT = 256, CH = D / 8, TB = kBN * D * 2, QB = 64 * D * 2, RPT = kBN * CH / NT;
    constexpr int kEnd = 0x7fffffff;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t s0 = krn_smem_u32(smem_raw);
    const uint32_t sQ = (s0 + 1023u) & ~1023u, sK = sQ + 2 * QB, sV = sK + 2 * TB;

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    const int n = a.n, n_rb = ix.n_rb;
    /* Row-block pairs: warpgroup w has row block 2p + w of head y. Head pairs (HEADS): warpgroup w
     * has head 2y + w (one KV group: H / Hkv even) and the same row block. */
    const int pb = (HEADS ? n_rb : (n_rb + 1) / 2) - 1 - (int)blockIdx.x; /* heaviest first */
    const int h0 = HEADS ? 2 * blockIdx.y : blockIdx.y, h = HEADS ? h0 + wg : h0, hk = h0 / (a.H / a.Hkv);
    const int rb0 = HEADS ? pb : 2 * pb, rb1 = HEADS ? pb : 2 * pb + 1;
    const int m0 = rb0 * 64, r0 = HEADS ? m0 : m0 + wg * 64;
    const bool has1 = rb1 < n_rb;
    const krn_tiles L0 = krn_tiles_of<false>(ix, h0, rb0, 0);
    krn_tiles L1 = {0, 0, 0, 0, 0, nullptr, nullptr};
    if (has1) L1 = krn_tiles_of<false>(ix, HEADS ? h0 + 1 : h0, rb1, 0);
    const int sink = wg ? L1.sink : L0.sink, window = wg ? L1.window : L0.window;

    const __nv_bfloat16 *q = reinterpret_cast<const __nv_bfloat16 *>(a.q) + h0 * D;
    const __nv_bfloat16 *k = reinterpret_cast<const __nv_bfloat16 *>(a.k) + hk * D;
    const __nv_bfloat16 *v = reinterpret_cast<const __nv_bfloat16 *>(a.v) + hk * D;

    /* Q first: its copy overlaps the index reads below. */
    if (HEADS) {
        copy_q<D, NT>(sQ, q, a.q_stride, m0, 64, n, tid);
        copy_q<D, NT>(sQ + QB, q + D, a.q_stride, m0, 64, n, tid);
    } else {
        copy_q<D, NT>(sQ, q, a.q_stride, m0, 128, n, tid);
    }
    krn_cp_async_commit();

    /* Are the column lists equal? (Then their gather tiles are shared.) */
    int diff = L0.n_cols != L1.n_cols;
    for (int i = tid; !diff && i < L0.n_cols; i += NT) diff = __ldg(L0.cidx + i) != __ldg(L1.cidx + i);
    const bool cols_shared = !__syncthreads_or(diff);
    const int g0 = (L0.n_cols + kBN - 1) / kBN, g1 = (L1.n_cols + kBN - 1) / kBN;

    /* The tile sequence: merged blocks, then gather tiles (shared, or g0 of warpgroup 0 then g1 of 1). */
    int ia = 0, ib = 0, gi = 0;
    int va = L0.n_blocks > 0 ? __ldg(L0.boff) : kEnd, vb = L1.n_blocks > 0 ? __ldg(L1.boff) : kEnd;
    const int n_gather = cols_shared ? g0 : g0 + g1;
    auto next = [&](auto gtag) { /* gtag: std::true_type where gather tiles may follow the blocks */
        TileR<RPT> r;
        r.start = 0, r.count = 0, r.gather = 0, r.who = 0;
        if (va != kEnd || vb != kEnd) {
            r.count = kBN;
            if (va <= vb) {
                r.start = va, r.who = 1;
                if (va == vb) {
                    r.who = 3;
                    vb = ++ib < L1.n_blocks ? __ldg(L1.boff + ib) : kEnd;
                }
                va = ++ia < L0.n_blocks ? __ldg(L0.boff + ia) : kEnd;
            } else {
                r.start = vb, r.who = 2;
                vb = ++ib < L1.n_blocks ? __ldg(L1.boff + ib) : kEnd;
            }
        } else if (decltype(gtag)::value && gi < n_gather) {
            const bool first = gi < g0;
            const int g = (first ? gi : gi - g0) * kBN;
            const int *cols = first ? L0.cidx : L1.cidx;
            const int nc = first ? L0.n_cols : L1.n_cols;
            r.start = g, r.count = min(kBN, nc - g), r.gather = 1;
            r.who = cols_shared ? 3 : first ? 1 : 2;
#pragma unroll
            for (int i = 0; i < RPT; i++) {
                const int row = tid / CH + i * (NT / CH);
                r.key[i] = row < r.count ? __ldg(cols + g + row) : -1;
            }
            gi++;
        }
        return r;
    };

    uint32_t qf[D / 16][4];
    float o[D / 2], s[32];
    uint32_t pa[4][4];
    Rows rw = {-INFINITY, -INFINITY, 0.f, 0.f};
    const int row_a = r0 + warp * 16 + (lane >> 2), row_b = row_a + 8;
    int t = 0;
    /* Compiled twice, as hattn_pipe_kernel's loop: with gather tiles, and for block lists only. */
    auto run = [&](auto gtag) {
        constexpr bool G = decltype(gtag)::value;
        TileR<RPT> r_t = next(gtag), r_n = next(gtag);
        if (r_t.count > 0) load_half<D, NT, RPT, G>(sK, r_t, k, a.kv_stride, n, tid);
        krn_cp_async_commit();
        krn_cp_async_wait<1>();
        __syncthreads();
        load_qf<D>(qf, sQ + wg * QB, warp, lane);
        zero_v1<D, NT>(sV, tid);
#pragma unroll
        for (int i = 0; i < D / 2; i++) o[i] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) pa[kk][0] = pa[kk][1] = pa[kk][2] = pa[kk][3] = 0u;

        for (; r_t.count > 0; t++) {
            krn_cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads();
            const int c_start = r_t.start, c_count = r_t.count, who = r_t.who;
            const bool gather = G && r_t.gather;
            const bool active = (who >> wg & 1) && r0 < n && (gather || c_start <= r0 + 63);
            const uint32_t kt = sK + (t & 1) * TB, vt = sV + ((t - 1) & 1) * TB;
            if (r_n.count > 0) load_half<D, NT, RPT, G>(sK + ((t + 1) & 1) * TB, r_n, k, a.kv_stride, n, tid);
            load_half<D, NT, RPT, G>(sV + (t & 1) * TB, r_t, v, a.kv_stride, n, tid);
            krn_cp_async_commit();
            r_t = r_n;
            r_n = next(gtag);
            issue_s_pv<D, true>(s, o, pa, qf, 0, kt, vt);
            wait_s(s);
            finish_tile<D>(s, o, pa, rw, active, scale_log2, gather, c_start, c_count, r0, row_a, row_b, sink, window, lane);
        }
    };
    if (n_gather > 0) run(std::true_type{});
    else run(std::false_type{});
    finish_rows<D>(o, pa, sV + ((t - 1) & 1) * TB, rw, a, h, row_a, row_b, lane);
#endif
}

/* DMA-style threshold masks (krn_dma.h) on hattn_pipe_kernel's loop: one warpgroup per 64-query row
 * block (the CPU's tiles), walking only the key tiles eng_dma_tile_active accepts (a sink or window
 * tile, or zmax[J] >= theta of the block's first row: theta is non-decreasing), found by a cursor
 * one tile ahead of the copies; row i keeps key j <= i iff j < sink, i - j < window or
 * z_j >= theta_i, with the tile's 64 z values copied into shared memory next to its K tile.
 * count (may be null) += tiles run, kept (row < n, key) pairs, as krn_dma.cu's kernel counts. */
struct hattn_dma {
    const float *z, *theta, *zmax; /* head h at z + h n, theta + h n, zmax + h ceil(n / 64) */
    int h0, sink, window;
    unsigned long long *count;
};

template <int D, bool COUNT>
__global__ void __launch_bounds__(128, 2)
hattn_dma_kernel(krn_attn_args a, hattn_dma dm, float scale_log2) {
#if HATTN_BODY
    constexpr int NT = 128, CH = D / 8, TB = kBN * D * 2, QB = 64 * D * 2, RPT = kBN * CH / NT;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const uint32_t s0 = krn_smem_u32(smem_raw);
    const uint32_t sQ = (s0 + 1023u) & ~1023u, sK = sQ + QB, sV = sK + 2 * TB, sZ = sV + 2 * TB; /* Z: [2][64] f32 */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int n = a.n, n_rb = (n + 63) / 64;
    const int mb = n_rb - 1 - (int)blockIdx.x; /* heaviest row blocks first */
    const int h = dm.h0 + (int)blockIdx.y, hk = h / (a.H / a.Hkv);
    const int m0 = mb * 64, r0 = m0, n_kt = (min(m0 + 64, n) - 1) / kBN + 1;
    const __nv_bfloat16 *q = reinterpret_cast<const __nv_bfloat16 *>(a.q) + h * D;
    const __nv_bfloat16 *k = reinterpret_cast<const __nv_bfloat16 *>(a.k) + hk * D;
    const __nv_bfloat16 *v = reinterpret_cast<const __nv_bfloat16 *>(a.v) + hk * D;
    const float *zh = dm.z + (size_t)h * n, *thh = dm.theta + (size_t)h * n;
    const float *zmh = dm.zmax + (size_t)h * n_rb;
    const int row_a = r0 + warp * 16 + (lane >> 2), row_b = row_a + 8;
    const float th0 = __ldg(thh + m0);
    const float th_a = row_a < n ? __ldg(thh + row_a) : INFINITY, th_b = row_b < n ? __ldg(thh + row_b) : INFINITY;

    /* The cursor: the activity of 32 tiles at a time as a bit mask (one tile per lane, a ballot),
     * so that the walk waits on memory once per 32 tiles, not once per tile (a branch on each
     * tile's zmax load ran the loop at half the dense kernel's speed). */
    unsigned amask = 0;
    int abase = -32;
    auto resolve = [&]() {
        TileR<RPT> r;
        r.start = 0, r.count = 0, r.gather = 0;
        while (!amask && abase + 32 < n_kt) {
            abase += 32;
            const int kt = abase + lane, j0 = kt * kBN, j1 = min(j0 + kBN, n) - 1;
            const bool on = kt < n_kt && (j0 < dm.sink || m0 - j1 < dm.window || __ldg(zmh + kt) >= th0);
            amask = __ballot_sync(0xffffffffu, on);
        }
        if (amask) {
            r.start = (abase + __ffs(amask) - 1) * kBN, r.count = kBN;
            amask &= amask - 1;
        }
        return r;
    };
    auto load_z = [&](int stage, int start) { /* the tile's 64 key scores (4-byte copies: z rows are unaligned) */
        if (tid < kBN) {
            const bool ok = start + tid < n;
            krn_cp_async4(sZ + stage * 256 + tid * 4, zh + (ok ? start + tid : 0), ok ? 4 : 0);
        }
    };

    copy_q<D, NT>(sQ, q, a.q_stride, m0, 64, n, tid);
    krn_cp_async_commit();
    TileR<RPT> r_t = resolve(), r_n = resolve();
    if (r_t.count > 0) {
        load_half<D, NT, RPT, false>(sK, r_t, k, a.kv_stride, n, tid);
        load_z(0, r_t.start);
    }
    krn_cp_async_commit();
    uint32_t qf[D / 16][4];
    krn_cp_async_wait<1>();
    __syncthreads();
    load_qf<D>(qf, sQ, warp, lane);
    zero_v1<D, NT>(sV, tid);
    float o[D / 2], s[32];
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.f;
    uint32_t pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) pa[kk][0] = pa[kk][1] = pa[kk][2] = pa[kk][3] = 0u;
    Rows rw = {-INFINITY, -INFINITY, 0.f, 0.f};
    unsigned kept = 0;
    /* Row i keeps key j when j <= i and (j < sink, or j > i - window, or z_j >= theta_i). */
    const int lo_a = row_a - dm.window, lo_b = row_b - dm.window;
    int t = 0;

    for (; r_t.count > 0; t++) {
        krn_cp_async_wait<0>(); /* K_t, its z and V_{t-1} (this thread's copies) */
        fence_proxy_async();
        __syncthreads();
        const int c_start = r_t.start;
        const uint32_t kt = sK + (t & 1) * TB, vt = sV + ((t - 1) & 1) * TB;
        const uint32_t zt = sZ + (t & 1) * 256 + (lane & 3) * 8; /* this thread's column pairs */
        if (r_n.count > 0) {
            load_half<D, NT, RPT, false>(sK + ((t + 1) & 1) * TB, r_n, k, a.kv_stride, n, tid);
            load_z((t + 1) & 1, r_n.start);
        }
        load_half<D, NT, RPT, false>(sV + (t & 1) * TB, r_t, v, a.kv_stride, n, tid);
        krn_cp_async_commit();
        r_t = r_n;
        r_n = resolve();
        issue_s_pv<D, true>(s, o, pa, qf, 0, kt, vt);
        wait_s(s);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float z0, z1; /* keys c_start + j * 8 + (lane & 3) * 2 + {0, 1} */
            asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(z0), "=f"(z1) : "r"(zt + j * 32));
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = c_start + j * 8 + (lane & 3) * 2 + (e & 1);
                const int row = e < 2 ? row_a : row_b, lo = e < 2 ? lo_a : lo_b;
                const bool keep = key <= row && (key < dm.sink || key > lo || (e & 1 ? z1 : z0) >= (e < 2 ? th_a : th_b));
                if (!keep) s[j * 4 + e] = -INFINITY;
                if (COUNT) kept += keep && row < n;
            }
        }
        float al_a, al_b;
        online_softmax(s, rw, scale_log2, al_a, al_b);
        wgmma_wait<0>();
        reg_fence(o);
        rescale_pack<D>(o, pa, s, al_a, al_b);
        reg_fence(o);
    }
    finish_rows<D>(o, pa, sV + ((t - 1) & 1) * TB, rw, a, h, row_a, row_b, lane);
    if (COUNT) {
#pragma unroll
        for (int off = 16; off; off >>= 1) kept += __shfl_xor_sync(0xffffffffu, kept, off);
        if (lane == 0 && kept) atomicAdd(dm.count + 1, (unsigned long long)kept);
        if (tid == 0 && t) atomicAdd(dm.count, (unsigned long long)t);
    }
#endif
}

/* For picking head pairs: per (head pair 2p, 2p + 1; row block), one warp counts the blocks both
 * lists name (binary search: lists are sorted ascending, eng_index.h), then per CTA
 * st[0] += 2 |B0 u B1| (warpgroup-tiles a head-pair CTA computes), st[1] += |B0| + |B1| (what
 * one-warpgroup CTAs compute), st[2] += gathered columns. */
__global__ void __launch_bounds__(256) pair_stats_kernel(krn_index_dev ix, int H, unsigned long long *st) {
    __shared__ unsigned long long red[3][8];
    const int lane = threadIdx.x & 31, wl = threadIdx.x >> 5;
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int n_rb = ix.n_rb;
    unsigned long long u2 = 0, nn = 0, cols = 0;
    if (w < (long long)(H / 2) * n_rb) {
        const int hp = (int)(w / n_rb), rb = (int)(w % n_rb);
        const size_t r0 = (size_t)(2 * hp) * n_rb + rb, r1 = r0 + n_rb;
        const int n0 = ix.block_count[r0], n1 = ix.block_count[r1];
        const int *b0 = ix.block_offset + r0 * ix.max_blocks, *b1 = ix.block_offset + r1 * ix.max_blocks;
        int inter = 0;
        for (int i = lane; i < n0; i += 32) {
            const int x = __ldg(b0 + i);
            int lo = 0, hi = n1;
            while (lo < hi) {
                const int mid = (lo + hi) >> 1;
                if (__ldg(b1 + mid) < x) lo = mid + 1;
                else hi = mid;
            }
            inter += lo < n1 && __ldg(b1 + lo) == x;
        }
#pragma unroll
        for (int o = 16; o; o >>= 1) inter += __shfl_xor_sync(0xffffffffu, inter, o);
        u2 = 2ull * (unsigned long long)(n0 + n1 - inter);
        nn = (unsigned long long)(n0 + n1);
        cols = (unsigned long long)(ix.column_count[r0] + ix.column_count[r1]);
    }
    if (lane == 0) red[0][wl] = u2, red[1][wl] = nn, red[2][wl] = cols;
    __syncthreads();
    if (threadIdx.x < 3) {
        unsigned long long x = 0;
        for (int i = 0; i < 8; i++) x += red[threadIdx.x][i];
        if (x) atomicAdd(st + threadIdx.x, x);
    }
}

/* Raise the kernel's dynamic shared-memory limit and launch it on grid x (128 * NWG) threads. */
template <typename K>
int launch_kern(K kern, dim3 grid, int threads, size_t smem, const krn_attn_args *a, const krn_index_dev *ix, int d,
                cudaStream_t st, const char *what, eng_err *err) {
    CUDA_RET(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    krn_index_dev none = {};
    kern<<<grid, threads, smem, st>>>(*a, ix ? *ix : none, 1.4426950408889634f / sqrtf((float)d));
    LAUNCH_RET(what);
    return 0;
}

template <int D, int NWG, int MODE, bool QR>
int launch_pipe(const krn_attn_args *a, const krn_index_dev *ix, cudaStream_t st, eng_err *err) {
    const size_t smem = 1024 + (size_t)NWG * 64 * D * 2 + (size_t)4 * kBN * D * 2;
    const dim3 grid((a->n + 64 * NWG - 1) / (64 * NWG), a->H);
    return launch_kern(hattn_pipe_kernel<D, NWG, MODE, QR>, grid, NWG * 128, smem, a, ix, D, st, "hattn_pipe_kernel", err);
}

/* Head pairs need both heads of a pair in one KV group (H / Hkv even); otherwise row-block pairs. */
template <int D> int launch_union(const krn_attn_args *a, const krn_index_dev *ix, bool heads, cudaStream_t st,
                                  eng_err *err) {
    const size_t smem = 1024 + (size_t)2 * 64 * D * 2 + (size_t)4 * kBN * D * 2;
    if (heads && (a->H / a->Hkv) % 2 == 0)
        return launch_kern(hattn_union_kernel<D, true>, dim3(ix->n_rb, a->H / 2), 256, smem, a, ix, D, st,
                           "hattn_union_kernel", err);
    return launch_kern(hattn_union_kernel<D, false>, dim3((ix->n_rb + 1) / 2, a->H), 256, smem, a, ix, D, st,
                       "hattn_union_kernel", err);
}

} /* namespace */

extern "C" int krn_hattn_available(void) {
#ifdef KRN_HOPPER
    static int avail = -1;
    if (avail < 0) {
        int dev = 0, major = 0, minor = 0;
        avail = cudaGetDevice(&dev) == cudaSuccess &&
                cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
                minor == 0;
        const char *e = getenv("ATTNSCOPE_NO_WGMMA"); /* force the mma.sync kernels (comparisons) */
        if (e && e[0] == '1') avail = 0;
    }
    return avail;
#else
    return 0;
#endif
}

extern "C" int krn_hattn_dense(const krn_attn_args *a, int cfg, cudaStream_t s, eng_err *err) {
    if (!krn_hattn_available())
        return eng_err_set(err, "attention: the wgmma kernels need an sm_90 card and a build for sm_90a");
    const bool d64 = a->d == 64;
    switch (cfg) {
    case 0: return d64 ? launch_pipe<64, 2, MODE_DENSE, true>(a, nullptr, s, err) : launch_pipe<128, 2, MODE_DENSE, true>(a, nullptr, s, err);
    case 1: return d64 ? launch_pipe<64, 1, MODE_DENSE, true>(a, nullptr, s, err) : launch_pipe<128, 1, MODE_DENSE, true>(a, nullptr, s, err);
    case 2: return d64 ? launch_pipe<64, 2, MODE_DENSE, false>(a, nullptr, s, err) : launch_pipe<128, 2, MODE_DENSE, false>(a, nullptr, s, err);
    default: return eng_err_set(err, "attention: unknown wgmma dense configuration %d", cfg);
    }
}

extern "C" int krn_hattn_dma(const krn_attn_args *a, int h0, int nh, const float *z, const float *theta,
                             const float *zmax, int sink, int window, unsigned long long *count, cudaStream_t s,
                             eng_err *err) {
    if (!krn_hattn_available())
        return eng_err_set(err, "dma attention: the wgmma kernels need an sm_90 card and a build for sm_90a");
    const int n_rb = (a->n + 63) / 64;
    if (n_rb == 0 || nh <= 0) return 0;
    const hattn_dma dm = {z, theta, zmax, h0, sink, window, count};
    const float sl = 1.4426950408889634f / sqrtf((float)a->d);
    const dim3 grid(n_rb, nh);
    const size_t smem = 1024 + (size_t)64 * a->d * 2 + (size_t)4 * kBN * a->d * 2 + 512;
    auto go = [&](auto kern) {
        cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e == cudaSuccess) {
            kern<<<grid, 128, smem, s>>>(*a, dm, sl);
            e = cudaGetLastError();
        }
        return e == cudaSuccess ? 0 : eng_err_set(err, "hattn_dma_kernel: %s", cudaGetErrorString(e));
    };
    if (a->d == 64) return count ? go(hattn_dma_kernel<64, true>) : go(hattn_dma_kernel<64, false>);
    return count ? go(hattn_dma_kernel<128, true>) : go(hattn_dma_kernel<128, false>);
}

extern "C" int krn_hattn_sparse_auto(const krn_attn_args *a, const krn_index_dev *ix, cudaStream_t s, eng_err *err) {
    if (!krn_hattn_available())
        return eng_err_set(err, "sparse attention: the wgmma kernels need an sm_90 card and a build for sm_90a");
    int cfg = 0;
    if (a->H / a->Hkv % 2 == 0 && ix->n_rb > 0) {
        unsigned long long *dst = nullptr, st[3] = {0, 0, 0};
        CUDA_RET(cudaMallocAsync((void **)&dst, sizeof st, s));
        cudaError_t e = cudaMemsetAsync(dst, 0, sizeof st, s);
        const long long warps = (long long)(a->H / 2) * ix->n_rb;
        if (e == cudaSuccess) {
            pair_stats_kernel<<<(unsigned)((warps + 7) / 8), 256, 0, s>>>(*ix, a->H, dst);
            e = cudaGetLastError();
        }
        if (e == cudaSuccess) e = cudaMemcpyAsync(st, dst, sizeof st, cudaMemcpyDeviceToHost, s);
        if (e == cudaSuccess) e = cudaStreamSynchronize(s);
        cudaFreeAsync(dst, s);
        if (e != cudaSuccess) return eng_err_set(err, "sparse attention: pair statistics: %s", cudaGetErrorString(e));
        /* Head pairs when the lists barely differ: 2|B0 u B1| <= 1.05 (|B0| + |B1|), about the speed
         * a head-pair CTA gains per tile (H100, bench/RESULTS.md); never with gathered columns (their
         * shared tiles measured no faster). */
        if (st[2] == 0 && st[1] > 0 && (double)st[0] <= 1.05 * (double)st[1]) cfg = 3;
    }
    return krn_hattn_sparse(a, ix, cfg, s, err);
}

extern "C" int krn_hattn_sparse(const krn_attn_args *a, const krn_index_dev *ix, int cfg, cudaStream_t s, eng_err *err) {
    if (!krn_hattn_available())
        return eng_err_set(err, "sparse attention: the wgmma kernels need an sm_90 card and a build for sm_90a");
    const bool d64 = a->d == 64;
    switch (cfg) {
    case 0: return d64 ? launch_pipe<64, 1, MODE_SPARSE, true>(a, ix, s, err) : launch_pipe<128, 1, MODE_SPARSE, true>(a, ix, s, err);
    case 1: return d64 ? launch_union<64>(a, ix, false, s, err) : launch_union<128>(a, ix, false, s, err);
    case 2: return d64 ? launch_pipe<64, 1, MODE_SPARSE, false>(a, ix, s, err) : launch_pipe<128, 1, MODE_SPARSE, false>(a, ix, s, err);
    case 3: return d64 ? launch_union<64>(a, ix, true, s, err) : launch_union<128>(a, ix, true, s, err);
    default: return eng_err_set(err, "sparse attention: unknown wgmma configuration %d", cfg);
    }
}
