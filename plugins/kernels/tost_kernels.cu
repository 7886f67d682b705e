// CUDA kernels of tost-edge. The math is the spec in tost_edge/ops/*/naive.py; fp32 accumulation throughout.
#include "tost_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

namespace
{
thread_local std::string gLastError;

int fail(int code, const std::string& msg)
{
    gLastError = msg;
    return code;
}

int cudaCheck(const char* what)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
    {
        return fail(TOST_CUDA_ERROR, std::string(what) + ": " + cudaGetErrorString(e));
    }
    return TOST_OK;
}

__device__ __forceinline__ float toF(float x) { return x; }
__device__ __forceinline__ float toF(__half x) { return __half2float(x); }
__device__ __forceinline__ float toF(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T fromF(float x);
template <> __device__ __forceinline__ float fromF<float>(float x) { return x; }
template <> __device__ __forceinline__ __half fromF<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 fromF<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

constexpr int kThreads = 256;
constexpr int kTokensPerBlock = 16;

// ---- TSSA (bidirectional) --------------------------------------------------------------------------------
// pass 1: S[b, c] = sum_n w^2 (token range split across blockIdx.z, atomics into a zeroed buffer)
template <typename T>
__global__ void tssaSumSq(const T* w, float* S, int64_t N, int C, int64_t perSplit)
{
    int b = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int64_t n0 = blockIdx.z * perSplit;
    int64_t n1 = min(N, n0 + perSplit);
    float acc = 0.f;
    for (int64_t n = n0; n < n1; ++n)
    {
        float x = toF(w[(b * N + n) * C + c]);
        acc += x * x;
    }
    atomicAdd(&S[b * C + c], acc);
}

// pass 2: Pi for a tile of tokens (softmax over heads), and sums of Pi w^2 and Pi
template <typename T>
__global__ void tssaPiStats(const T* w, const float* S, const float* temp, float* Pi, float* A, float* P, int64_t N,
    int H, int D)
{
    __shared__ float e[kTokensPerBlock][TOST_MAX_HEADS];
    int b = blockIdx.x;
    int64_t t0 = (int64_t) blockIdx.y * kTokensPerBlock;
    int C = H * D;
    for (int i = threadIdx.x; i < kTokensPerBlock * TOST_MAX_HEADS; i += blockDim.x) (&e[0][0])[i] = 0.f;
    __syncthreads();
    for (int tk = 0; tk < kTokensPerBlock && t0 + tk < N; ++tk)
    {
        for (int c = threadIdx.x; c < C; c += blockDim.x)
        {
            float x = toF(w[(b * N + t0 + tk) * C + c]);
            atomicAdd(&e[tk][c / D], x * x / fmaxf(S[b * C + c], 1e-24f));
        }
    }
    __syncthreads();
    if (threadIdx.x < kTokensPerBlock && t0 + threadIdx.x < N)
    {
        int tk = threadIdx.x;
        float m = -INFINITY;
        for (int h = 0; h < H; ++h) m = fmaxf(m, temp[h] * e[tk][h]);
        float sum = 0.f;
        for (int h = 0; h < H; ++h)
        {
            e[tk][h] = __expf(temp[h] * e[tk][h] - m);
            sum += e[tk][h];
        }
        for (int h = 0; h < H; ++h)
        {
            e[tk][h] /= sum;
            Pi[(b * N + t0 + tk) * H + h] = e[tk][h];
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x)
    {
        int h = c / D;
        float acc = 0.f, pacc = 0.f;
        for (int tk = 0; tk < kTokensPerBlock && t0 + tk < N; ++tk)
        {
            float x = toF(w[(b * N + t0 + tk) * C + c]);
            acc += e[tk][h] * x * x;
            pacc += e[tk][h];
        }
        atomicAdd(&A[b * C + c], acc);
        if (c % D == 0) atomicAdd(&P[b * H + h], pacc);
    }
}

// pass 3: y = -w Pi / (1 + A / (P + 1e-8))
template <typename T>
__global__ void tssaOut(const T* w, const float* Pi, const float* A, const float* P, T* y, int64_t N, int H, int D)
{
    int64_t C = (int64_t) H * D;
    int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    int64_t total = gridDim.y * N * C;
    int b = blockIdx.y;
    if (i >= N * C) return;
    (void) total;
    int64_t n = i / C;
    int c = (int) (i % C);
    int h = c / D;
    float x = toF(w[b * N * C + i]);
    float dots = A[b * C + c] / (P[b * H + h] + 1e-8f);
    y[b * N * C + i] = fromF<T>(-x * Pi[(b * N + n) * H + h] / (1.f + dots));
}

// ---- causal TSSA: one block per sequence; tokens in order, the heads of a token together -----------------
constexpr int kMaxChannelsPerThread = 8;

template <typename T>
__global__ void causalTSSA(const T* w, const float* temp, const float* bias, int64_t tmax, int bounded,
    const int32_t* pos, const float* sIn, const float* aIn, const float* pIn, T* y, float* sOut, float* aOut,
    float* pOut, int64_t Tn, int H, int D)
{
    __shared__ float e[TOST_MAX_HEADS];
    __shared__ float pi[TOST_MAX_HEADS];
    __shared__ float p[TOST_MAX_HEADS];
    int b = blockIdx.x;
    int C = H * D;
    float s[kMaxChannelsPerThread], a[kMaxChannelsPerThread];
    for (int j = 0; j < kMaxChannelsPerThread; ++j)
    {
        int c = threadIdx.x + j * blockDim.x;
        s[j] = c < C ? sIn[b * C + c] : 0.f;
        a[j] = c < C ? aIn[b * C + c] : 0.f;
    }
    if (threadIdx.x < H) p[threadIdx.x] = pIn[b * H + threadIdx.x];
    int64_t p0 = pos[b];
    for (int64_t t = 0; t < Tn; ++t)
    {
        if (threadIdx.x < H) e[threadIdx.x] = 0.f;
        __syncthreads();
        const T* wt = w + (b * Tn + t) * C;
        for (int j = 0; j < kMaxChannelsPerThread; ++j)
        {
            int c = threadIdx.x + j * blockDim.x;
            if (c < C)
            {
                float x = toF(wt[c]);
                s[j] += x * x;
                atomicAdd(&e[c / D], x * x / fmaxf(s[j], 1e-12f));
            }
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            float m = -INFINITY;
            for (int h = 0; h < H; ++h)
            {
                float z = e[h] + (bounded ? D * bias[h * tmax + p0 + t] : 0.f);
                pi[h] = temp[h] * z;
                m = fmaxf(m, pi[h]);
            }
            float sum = 0.f;
            for (int h = 0; h < H; ++h)
            {
                pi[h] = __expf(pi[h] - m);
                sum += pi[h];
            }
            for (int h = 0; h < H; ++h)
            {
                pi[h] /= sum;
                p[h] += pi[h];
            }
        }
        __syncthreads();
        T* yt = y + (b * Tn + t) * C;
        for (int j = 0; j < kMaxChannelsPerThread; ++j)
        {
            int c = threadIdx.x + j * blockDim.x;
            if (c < C)
            {
                int h = c / D;
                float x = toF(wt[c]);
                a[j] += pi[h] * x * x;
                yt[c] = fromF<T>(-x * pi[h] / (1.f + a[j] / (p[h] + 1e-8f)));
            }
        }
    }
    __syncthreads();
    for (int j = 0; j < kMaxChannelsPerThread; ++j)
    {
        int c = threadIdx.x + j * blockDim.x;
        if (c < C)
        {
            sOut[b * C + c] = s[j];
            aOut[b * C + c] = a[j];
        }
    }
    if (threadIdx.x < H) pOut[b * H + threadIdx.x] = p[threadIdx.x];
}

// ---- causal linear attention: one block per (sequence, head), state in shared memory ----------------------
__device__ __forceinline__ float phi(float x) { return x > 0.f ? x + 1.f : __expf(x); }

template <typename T>
__global__ void causalLinearAttention(const T* q, const T* k, const T* v, const float* kvIn, const float* zIn,
    T* y, float* kvOut, float* zOut, int64_t Tn, int H, int D, int M, float eps)
{
    extern __shared__ float smem[];
    float* kv = smem;            // [D, M]
    float* z = kv + D * M;       // [D]
    float* fq = z + D;           // [D]
    float* fk = fq + D;          // [D]
    float* vv = fk + D;          // [M]
    int bh = blockIdx.x;
    int b = bh / H, h = bh % H;
    for (int i = threadIdx.x; i < D * M; i += blockDim.x) kv[i] = kvIn[(int64_t) bh * D * M + i];
    for (int i = threadIdx.x; i < D; i += blockDim.x) z[i] = zIn[(int64_t) bh * D + i];
    for (int64_t t = 0; t < Tn; ++t)
    {
        int64_t row = (b * Tn + t) * H + h;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
        {
            fq[i] = phi(toF(q[row * D + i]));
            fk[i] = phi(toF(k[row * D + i]));
        }
        for (int i = threadIdx.x; i < M; i += blockDim.x) vv[i] = toF(v[row * M + i]);
        __syncthreads();
        for (int i = threadIdx.x; i < D * M; i += blockDim.x) kv[i] += fk[i / M] * vv[i % M];
        for (int i = threadIdx.x; i < D; i += blockDim.x) z[i] += fk[i];
        __syncthreads();
        float den = 0.f;
        for (int d = 0; d < D; ++d) den += fq[d] * z[d];
        for (int m = threadIdx.x; m < M; m += blockDim.x)
        {
            float num = 0.f;
            for (int d = 0; d < D; ++d) num += fq[d] * kv[d * M + m];
            y[row * M + m] = fromF<T>(num / (den + eps));
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < D * M; i += blockDim.x) kvOut[(int64_t) bh * D * M + i] = kv[i];
    for (int i = threadIdx.x; i < D; i += blockDim.x) zOut[(int64_t) bh * D + i] = z[i];
}

int checkShape(int64_t B, int64_t T, int H, int D)
{
    if (B < 0 || T < 0 || H <= 0 || D <= 0)
        return fail(TOST_BAD_ARGUMENT, "shape: expected B >= 0, T >= 0, H > 0, D > 0");
    if (H > TOST_MAX_HEADS)
        return fail(TOST_BAD_ARGUMENT, "num_heads: expected at most " + std::to_string(TOST_MAX_HEADS) + ", got "
            + std::to_string(H));
    return TOST_OK;
}

template <typename T>
int tssaImpl(const void* w, const float* temp, void* y, int64_t B, int64_t N, int H, int D, void* ws, cudaStream_t st)
{
    int C = H * D;
    float* S = static_cast<float*>(ws);
    float* A = S + B * C;
    float* P = A + B * C;
    float* Pi = P + B * H;
    cudaMemsetAsync(ws, 0, sizeof(float) * (2 * B * C + B * H), st);
    int64_t split = (N + 255) / 256;
    if (split > 64) split = 64;
    int64_t per = (N + split - 1) / split;
    dim3 g1((unsigned) B, (C + kThreads - 1) / kThreads, (unsigned) split);
    tssaSumSq<T><<<g1, kThreads, 0, st>>>(static_cast<const T*>(w), S, N, C, per);
    dim3 g2((unsigned) B, (unsigned) ((N + kTokensPerBlock - 1) / kTokensPerBlock));
    tssaPiStats<T><<<g2, kThreads, 0, st>>>(static_cast<const T*>(w), S, temp, Pi, A, P, N, H, D);
    dim3 g3((unsigned) ((N * C + kThreads - 1) / kThreads), (unsigned) B);
    tssaOut<T><<<g3, kThreads, 0, st>>>(static_cast<const T*>(w), Pi, A, P, static_cast<T*>(y), N, H, D);
    return cudaCheck("tost_tssa_forward");
}

template <typename T>
int causalTSSAImpl(const void* w, const float* temp, const float* bias, int64_t tmax, int bounded, const int32_t* pos,
    const float* s, const float* a, const float* p, void* y, float* so, float* ao, float* po, int64_t B, int64_t Tn,
    int H, int D, cudaStream_t st)
{
    int C = H * D;
    int threads = C < 1024 ? ((C + 31) / 32) * 32 : 1024;
    if ((C + threads - 1) / threads > kMaxChannelsPerThread)
        return fail(TOST_BAD_ARGUMENT, "channels: expected H*D <= " + std::to_string(1024 * kMaxChannelsPerThread));
    causalTSSA<T><<<(unsigned) B, threads, 0, st>>>(static_cast<const T*>(w), temp, bias, tmax, bounded, pos, s, a, p,
        static_cast<T*>(y), so, ao, po, Tn, H, D);
    return cudaCheck("tost_causal_tssa_forward");
}

template <typename T>
int linearImpl(const void* q, const void* k, const void* v, const float* kv, const float* z, void* y, float* kvo,
    float* zo, int64_t B, int64_t Tn, int H, int D, int M, float eps, cudaStream_t st)
{
    size_t smem = sizeof(float) * ((size_t) D * M + 3 * D + M);
    if (smem > 48 * 1024)
    {
        if (cudaFuncSetAttribute(causalLinearAttention<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem)
            != cudaSuccess)
            return fail(TOST_BAD_ARGUMENT, "head size: D*M too large for shared memory on this GPU");
    }
    causalLinearAttention<T><<<(unsigned) (B * H), kThreads, smem, st>>>(static_cast<const T*>(q),
        static_cast<const T*>(k), static_cast<const T*>(v), kv, z, static_cast<T*>(y), kvo, zo, Tn, H, D, M, eps);
    return cudaCheck("tost_causal_linear_attention_forward");
}

#define TOST_DISPATCH(dtype, FN, ...)                                                                                \
    switch (dtype)                                                                                                   \
    {                                                                                                                \
    case TOST_FLOAT32: return FN<float>(__VA_ARGS__);                                                                \
    case TOST_FLOAT16: return FN<__half>(__VA_ARGS__);                                                               \
    case TOST_BFLOAT16: return FN<__nv_bfloat16>(__VA_ARGS__);                                                       \
    default: return fail(TOST_BAD_ARGUMENT, "dtype: expected 0 (fp32), 1 (fp16) or 2 (bf16), got "                  \
                                                + std::to_string(dtype));                                           \
    }
} // namespace

extern "C" size_t tost_tssa_workspace_size(int64_t B, int64_t N, int32_t H, int32_t D)
{
    return sizeof(float) * (size_t) (2 * B * H * D + B * H + B * N * H);
}

extern "C" int tost_tssa_forward(const void* w, const float* temp, void* y, int64_t B, int64_t N, int32_t H,
    int32_t D, int32_t dtype, void* workspace, size_t workspace_size, void* stream)
{
    if (int r = checkShape(B, N, H, D)) return r;
    if (workspace_size < tost_tssa_workspace_size(B, N, H, D))
        return fail(TOST_BAD_ARGUMENT, "workspace: expected at least " + std::to_string(tost_tssa_workspace_size(B, N, H, D))
            + " bytes, got " + std::to_string(workspace_size));
    if (B == 0 || N == 0) return TOST_OK;
    TOST_DISPATCH(dtype, tssaImpl, w, temp, y, B, N, H, D, workspace, static_cast<cudaStream_t>(stream))
}

extern "C" int tost_causal_tssa_forward(const void* w, const float* temp, const float* denom_bias, int64_t tmax,
    int32_t bounded, const int32_t* pos, const float* sum_wsq_in, const float* sum_pi_wsq_in, const float* sum_pi_in,
    void* y, float* sum_wsq_out, float* sum_pi_wsq_out, float* sum_pi_out, int64_t B, int64_t T, int32_t H, int32_t D,
    int32_t dtype, void* stream)
{
    if (int r = checkShape(B, T, H, D)) return r;
    if (bounded && tmax <= 0) return fail(TOST_BAD_ARGUMENT, "denom_bias: expected tmax > 0 when bounded");
    if (B == 0) return TOST_OK;
    TOST_DISPATCH(dtype, causalTSSAImpl, w, temp, denom_bias, tmax, bounded, pos, sum_wsq_in, sum_pi_wsq_in, sum_pi_in,
        y, sum_wsq_out, sum_pi_wsq_out, sum_pi_out, B, T, H, D, static_cast<cudaStream_t>(stream))
}

extern "C" int tost_causal_linear_attention_forward(const void* q, const void* k, const void* v, const float* kv_in,
    const float* k_sum_in, void* y, float* kv_out, float* k_sum_out, int64_t B, int64_t T, int32_t H, int32_t D,
    int32_t M, float eps, int32_t dtype, void* stream)
{
    if (int r = checkShape(B, T, H, D)) return r;
    if (M <= 0) return fail(TOST_BAD_ARGUMENT, "v: expected a value size M > 0");
    if (B == 0) return TOST_OK;
    TOST_DISPATCH(dtype, linearImpl, q, k, v, kv_in, k_sum_in, y, kv_out, k_sum_out, B, T, H, D, M, eps,
        static_cast<cudaStream_t>(stream))
}

extern "C" const char* tost_last_error(void)
{
    return gLastError.c_str();
}
