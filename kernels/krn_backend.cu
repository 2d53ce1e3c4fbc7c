/* krn_backend: the CUDA backend behind eng_backend (engine/eng_backend.h): device selection, the
 * attention op (host f32 in/out, bf16 on the GPU, dense or from per-head indexes) and the full
 * prefill (krn_prefill.cu). Built only where nvcc exists; engine/eng_backend.c supplies the stub. */
#include "krn_attn.h"
#include "krn_common.cuh"
#include "krn_map.h"
#include "krn_prefill.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "eng_backend.h"
}

namespace {

struct cuda_impl {
    int dev;
    cudaStream_t st;
};

__global__ void f32_to_bf16(const float *x, __nv_bfloat16 *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) y[i] = __float2bfloat16(x[i]);
}
__global__ void bf16_to_f32(const __nv_bfloat16 *x, float *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) y[i] = __bfloat162float(x[i]);
}

/* Upload host f32 (cnt) into a fresh bf16 device buffer via an f32 staging buffer. */
int upload_bf16(const float *h, size_t cnt, __nv_bfloat16 **d, float *stage, cudaStream_t st, eng_err *err) {
    CUDA_RET(cudaMalloc((void **)d, cnt * 2));
    CUDA_RET(cudaMemcpyAsync(stage, h, cnt * 4, cudaMemcpyHostToDevice, st));
    f32_to_bf16<<<1024, 256, 0, st>>>(stage, *d, cnt);
    LAUNCH_RET("f32_to_bf16");
    return 0;
}

int cuda_attention(eng_backend *be, const float *q, const float *k, const float *v, int n, int H, int Hkv, int d,
                   const eng_head_index *ix, float *out, float *lse, double *seconds, eng_err *err) {
    cuda_impl *im = (cuda_impl *)be->impl;
    cudaStream_t st = im->st;
    __nv_bfloat16 *dq = nullptr, *dk = nullptr, *dv = nullptr, *dout = nullptr;
    float *stage = nullptr, *dlse = nullptr;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    krn_index_dev dx = {};
    int rc = -1;
    const size_t nq = (size_t)n * H * d, nk = (size_t)n * Hkv * d;
    if (n <= 0 || H <= 0 || Hkv <= 0 || H % Hkv) return eng_err_set(err, "cuda attention: bad shape n=%d H=%d Hkv=%d", n, H, Hkv);
    CUDA_TRY(cudaSetDevice(im->dev));
    CUDA_TRY(cudaMalloc((void **)&stage, nq * 4));
    if (upload_bf16(q, nq, &dq, stage, st, err)) goto fail;
    CUDA_TRY(cudaStreamSynchronize(st)); /* stage is reused */
    if (upload_bf16(k, nk, &dk, stage, st, err)) goto fail;
    CUDA_TRY(cudaStreamSynchronize(st));
    if (upload_bf16(v, nk, &dv, stage, st, err)) goto fail;
    CUDA_TRY(cudaMalloc((void **)&dout, nq * 2));
    CUDA_TRY(cudaMalloc((void **)&dlse, (size_t)H * n * 4));
    if (ix && krn_index_dev_upload(&dx, ix, H, err)) goto fail;
    CUDA_TRY(cudaEventCreate(&e0));
    CUDA_TRY(cudaEventCreate(&e1));
    {
        krn_attn_args a = {n, H, Hkv, d, dq, dk, dv, H * d, Hkv * d, dout, H * d, dlse};
        CUDA_TRY(cudaEventRecord(e0, st));
        if (ix ? krn_attn_sparse(&a, &dx, st, err) : krn_attn_dense(&a, 0, st, err)) goto fail;
        CUDA_TRY(cudaEventRecord(e1, st));
    }
    bf16_to_f32<<<1024, 256, 0, st>>>(dout, stage, nq);
    LAUNCH_TRY("bf16_to_f32");
    CUDA_TRY(cudaMemcpyAsync(out, stage, nq * 4, cudaMemcpyDeviceToHost, st));
    if (lse) CUDA_TRY(cudaMemcpyAsync(lse, dlse, (size_t)H * n * 4, cudaMemcpyDeviceToHost, st));
    CUDA_TRY(cudaStreamSynchronize(st));
    if (seconds) {
        float ms = 0;
        CUDA_TRY(cudaEventElapsedTime(&ms, e0, e1));
        *seconds = ms * 1e-3;
    }
    rc = 0;
fail:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    krn_index_dev_free(&dx);
    cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(stage), cudaFree(dlse);
    return rc;
}

int cuda_prefill(eng_backend *be, const eng_model *m, const int *tokens, int n, const eng_prefill_opts *opts,
                 eng_prefill_out *out, eng_err *err) {
    cuda_impl *im = (cuda_impl *)be->impl;
    return krn_prefill_run(im->dev, im->st, m, tokens, n, opts, out, err);
}

int cuda_map_pool(eng_backend *be, const float *q, int q_stride, const float *k, int k_stride, int n, int d,
                  const float *lse, const eng_head_index *ix, const eng_map_opts *opts, float *out, eng_err *err) {
    cuda_impl *im = (cuda_impl *)be->impl;
    CUDA_RET(cudaSetDevice(im->dev));
    return krn_map_pool(q, q_stride, k, k_stride, n, d, lse, ix, opts, out, im->st, err);
}

void cuda_destroy(eng_backend *be) {
    if (!be) return;
    cuda_impl *im = (cuda_impl *)be->impl;
    if (im) {
        if (im->st) cudaStreamDestroy(im->st);
        free(im);
    }
    free(be);
}

} /* namespace */

extern "C" eng_backend *eng_backend_cuda_create(eng_err *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        eng_err_set(err, "no usable CUDA GPU (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return nullptr;
    }
    eng_backend *be = (eng_backend *)calloc(1, sizeof *be);
    cuda_impl *im = (cuda_impl *)calloc(1, sizeof *im);
    cudaDeviceProp prop;
    if (!be || !im) {
        eng_err_set(err, "cuda backend: out of host memory");
        goto fail;
    }
    im->dev = 0;
    CUDA_TRY(cudaSetDevice(0));
    CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
    if (prop.major < 8) {
        eng_err_set(err, "GPU %s is compute capability %d.%d; the kernels need 8.0+", prop.name, prop.major, prop.minor);
        goto fail;
    }
    CUDA_TRY(cudaStreamCreateWithFlags(&im->st, cudaStreamNonBlocking));
    be->name = "cuda";
    snprintf(be->device, sizeof be->device, "%.127s", prop.name);
    be->prefill = cuda_prefill;
    be->attention = cuda_attention;
    be->destroy = cuda_destroy;
    be->map_pool = cuda_map_pool;
    be->impl = im;
    return be;
fail:
    free(im);
    free(be);
    return nullptr;
}
