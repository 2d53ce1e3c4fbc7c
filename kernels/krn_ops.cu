/* krn_ops: the prefill's elementwise / row kernels (see krn_ops.h). Memory-bound: 16-byte loads
 * where rows allow, f32 arithmetic, one pass each. */
#include "krn_ops.h"

#include "krn_common.cuh"

#include <math.h>

namespace {

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__global__ void fill_random(__nv_bfloat16 *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull + i);
        float u = (float)(r >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
        x[i] = __float2bfloat16(u * scale);
    }
}
__global__ void fill_const(__nv_bfloat16 *x, size_t n, float v) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16(v);
}
__global__ void to_bf16(const float *x, __nv_bfloat16 *y, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}
__global__ void to_f32(const __nv_bfloat16 *x, float *y, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}
__global__ void embed(const __nv_bfloat16 *emb, const int *tok, int C, __nv_bfloat16 *out) {
    const int t = blockIdx.x;
    const __nv_bfloat16 *src = emb + (size_t)tok[t] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[(size_t)t * C + c] = src[c];
}
/* One CTA per row: sum of squares in f32, then scale. */
__global__ void rmsnorm(const __nv_bfloat16 *x, const __nv_bfloat16 *w, int C, float eps, __nv_bfloat16 *y) {
    const int t = blockIdx.x;
    const __nv_bfloat16 *xr = x + (size_t)t * C;
    __shared__ float red[32];
    float ss = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = __bfloat162float(xr[c]);
        ss += v * v;
    }
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.f;
        for (int i = 0; i < (int)blockDim.x / 32; i++) s += red[i];
        red[0] = rsqrtf(s / (float)C + eps);
    }
    __syncthreads();
    const float r = red[0];
    __nv_bfloat16 *yr = y + (size_t)t * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        yr[c] = __float2bfloat16(__bfloat162float(xr[c]) * r * __bfloat162float(w[c]));
}
/* Thread per (row, head, i < d/2). */
__global__ void rope(__nv_bfloat16 *x, int n, int heads, int d, int stride, int pos0, const float *inv_freq) {
    const size_t half = d / 2, total = (size_t)n * heads * half;
    for (size_t id = (size_t)blockIdx.x * blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(id % half);
        const size_t th = id / half;
        const int h = (int)(th % heads), t = (int)(th / heads);
        __nv_bfloat16 *p = x + (size_t)t * stride + (size_t)h * d;
        const float a = (float)(pos0 + t) * inv_freq[i];
        float sn, cs;
        sincosf(a, &sn, &cs);
        const float x0 = __bfloat162float(p[i]), x1 = __bfloat162float(p[i + half]);
        p[i] = __float2bfloat16(x0 * cs - x1 * sn);
        p[i + half] = __float2bfloat16(x1 * cs + x0 * sn);
    }
}
__global__ void swiglu(const __nv_bfloat16 *gu, int n, int F, __nv_bfloat16 *out) {
    const size_t total = (size_t)n * F;
    for (size_t id = (size_t)blockIdx.x * blockDim.x + threadIdx.x; id < total; id += (size_t)gridDim.x * blockDim.x) {
        const size_t t = id / F, f = id % F;
        const float g = __bfloat162float(gu[t * 2 * F + f]), u = __bfloat162float(gu[t * 2 * F + F + f]);
        out[id] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
    }
}
__global__ void add(__nv_bfloat16 *x, const __nv_bfloat16 *y, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16(__bfloat162float(x[i]) + __bfloat162float(y[i]));
}
__global__ void add_bias(__nv_bfloat16 *x, const __nv_bfloat16 *b, int n, int C) {
    const size_t total = (size_t)n * C;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __float2bfloat16(__bfloat162float(x[i]) + __bfloat162float(b[i % C]));
}

int grid_for(size_t n) {
    size_t g = (n + 255) / 256;
    return (int)(g < 65536 ? (g ? g : 1) : 65536);
}

} /* namespace */

extern "C" int krn_fill_random_bf16(void *x, size_t n, uint64_t seed, float scale, cudaStream_t s, eng_err *err) {
    fill_random<<<grid_for(n), 256, 0, s>>>((__nv_bfloat16 *)x, n, seed, scale);
    LAUNCH_RET("fill_random");
    return 0;
}
extern "C" int krn_fill_bf16(void *x, size_t n, float v, cudaStream_t s, eng_err *err) {
    fill_const<<<grid_for(n), 256, 0, s>>>((__nv_bfloat16 *)x, n, v);
    LAUNCH_RET("fill_const");
    return 0;
}
extern "C" int krn_f32_to_bf16(const float *x, void *y, size_t n, cudaStream_t s, eng_err *err) {
    to_bf16<<<grid_for(n), 256, 0, s>>>(x, (__nv_bfloat16 *)y, n);
    LAUNCH_RET("to_bf16");
    return 0;
}
extern "C" int krn_bf16_to_f32(const void *x, float *y, size_t n, cudaStream_t s, eng_err *err) {
    to_f32<<<grid_for(n), 256, 0, s>>>((const __nv_bfloat16 *)x, y, n);
    LAUNCH_RET("to_f32");
    return 0;
}
extern "C" int krn_embed(const void *emb, const int *tokens, int n, int C, void *out, cudaStream_t s, eng_err *err) {
    if (n <= 0) return eng_err_set(err, "embed: n = %d", n);
    embed<<<n, 256, 0, s>>>((const __nv_bfloat16 *)emb, tokens, C, (__nv_bfloat16 *)out);
    LAUNCH_RET("embed");
    return 0;
}
extern "C" int krn_rmsnorm(const void *x, const void *w, int n, int C, float eps, void *y, cudaStream_t s, eng_err *err) {
    if (n <= 0) return eng_err_set(err, "rmsnorm: n = %d", n);
    rmsnorm<<<n, 256, 0, s>>>((const __nv_bfloat16 *)x, (const __nv_bfloat16 *)w, C, eps, (__nv_bfloat16 *)y);
    LAUNCH_RET("rmsnorm");
    return 0;
}
extern "C" int krn_rope(void *x, int n, int heads, int d, int stride, int pos0, const float *inv_freq, cudaStream_t s,
                        eng_err *err) {
    if (d % 2) return eng_err_set(err, "rope: odd head dim %d", d);
    rope<<<grid_for((size_t)n * heads * d / 2), 256, 0, s>>>((__nv_bfloat16 *)x, n, heads, d, stride, pos0, inv_freq);
    LAUNCH_RET("rope");
    return 0;
}
extern "C" int krn_swiglu(const void *gu, int n, int F, void *out, cudaStream_t s, eng_err *err) {
    swiglu<<<grid_for((size_t)n * F), 256, 0, s>>>((const __nv_bfloat16 *)gu, n, F, (__nv_bfloat16 *)out);
    LAUNCH_RET("swiglu");
    return 0;
}
extern "C" int krn_add(void *x, const void *y, size_t n, cudaStream_t s, eng_err *err) {
    add<<<grid_for(n), 256, 0, s>>>((__nv_bfloat16 *)x, (const __nv_bfloat16 *)y, n);
    LAUNCH_RET("add");
    return 0;
}
extern "C" int krn_add_bias(void *x, const void *bias, int n, int C, cudaStream_t s, eng_err *err) {
    add_bias<<<grid_for((size_t)n * C), 256, 0, s>>>((__nv_bfloat16 *)x, (const __nv_bfloat16 *)bias, n, C);
    LAUNCH_RET("add_bias");
    return 0;
}
