/* krn_common: device-side helpers shared by the CUDA kernels (error checks that fill eng_err,
 * bf16 packing, mma.sync / ldmatrix / cp.async wrappers for sm_80+). Included by .cu files only. */
#ifndef KRN_COMMON_CUH
#define KRN_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "eng_err.h"
}
#include "krn_attn.h"

/* Every CUDA call is checked; on failure the eng_err names file, line and statement and the
 * enclosing function jumps to its single exit path (label `fail`). */
#define CUDA_TRY(stmt)                                                                          \
    do {                                                                                        \
        cudaError_t e_ = (stmt);                                                                \
        if (e_ != cudaSuccess) {                                                                \
            eng_err_set(err, "%s:%d: %s: %s", __FILE__, __LINE__, #stmt, cudaGetErrorString(e_)); \
            goto fail;                                                                          \
        }                                                                                       \
    } while (0)
/* After every launch: configuration errors show up here, asynchronous faults at the next sync. */
#define LAUNCH_TRY(what)                                                                        \
    do {                                                                                        \
        cudaError_t e_ = cudaGetLastError();                                                    \
        if (e_ != cudaSuccess) {                                                                \
            eng_err_set(err, "%s:%d: launch of %s: %s", __FILE__, __LINE__, what, cudaGetErrorString(e_)); \
            goto fail;                                                                          \
        }                                                                                       \
    } while (0)
/* The same as returning functions (no cleanup needed). */
#define CUDA_RET(stmt)                                                                          \
    do {                                                                                        \
        cudaError_t e_ = (stmt);                                                                \
        if (e_ != cudaSuccess)                                                                  \
            return eng_err_set(err, "%s:%d: %s: %s", __FILE__, __LINE__, #stmt, cudaGetErrorString(e_)); \
    } while (0)
#define LAUNCH_RET(what)                                                                        \
    do {                                                                                        \
        cudaError_t e_ = cudaGetLastError();                                                    \
        if (e_ != cudaSuccess)                                                                  \
            return eng_err_set(err, "%s:%d: launch of %s: %s", __FILE__, __LINE__, what, cudaGetErrorString(e_)); \
    } while (0)

static __device__ __forceinline__ uint32_t krn_pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

static __device__ __forceinline__ uint32_t krn_smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16-byte async copy global -> shared; src_bytes 0 zero-fills (rows past the end). */
static __device__ __forceinline__ void krn_cp_async16(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
/* 4-byte async copy (cp.async.ca: 4 and 8 bytes go through L1); src_bytes 0 zero-fills. */
static __device__ __forceinline__ void krn_cp_async4(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
static __device__ __forceinline__ void krn_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void krn_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

static __device__ __forceinline__ void krn_ldmatrix_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                                       uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
static __device__ __forceinline__ void krn_ldmatrix_x4_trans(uint32_t &r0, uint32_t &r1, uint32_t &r2,
                                                             uint32_t &r3, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

/* 2^x on the special-function unit (MUFU.EX2), flushing denormals: one instruction where exp2f
 * adds range fix-ups. ex2(-inf) = +0, which the masked softmax entries rely on. */
static __device__ __forceinline__ float krn_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* One 64-query row block's list of 64-key tiles: dense = every block through row `last`; sparse =
 * the index's key blocks, then its gathered columns in groups of 64 (eng_index.h), with the band. */
struct krn_tiles {
    int n_blocks, n_tiles, n_cols, sink, window;
    const int *boff, *cidx;
};
template <bool DENSE>
static __device__ __forceinline__ krn_tiles krn_tiles_of(const krn_index_dev &ix, int h, int rb, int last) {
    krn_tiles t = {0, 0, 0, 0, 0, nullptr, nullptr};
    if (DENSE) {
        t.n_blocks = t.n_tiles = last / 64 + 1;
    } else {
        const size_t hr = (size_t)h * ix.n_rb + rb;
        t.n_blocks = ix.block_count[hr];
        t.n_cols = ix.column_count[hr];
        t.boff = ix.block_offset + hr * ix.max_blocks;
        t.cidx = ix.column_index + hr * ix.max_cols;
        t.n_tiles = t.n_blocks + (t.n_cols + 63) / 64;
        if (ix.band) t.sink = ix.band[2 * h], t.window = ix.band[2 * h + 1];
    }
    return t;
}

/* D (16x8 f32) += A (16x16 bf16, row) * B (16x8 bf16, col). */
static __device__ __forceinline__ void krn_mma_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#endif
