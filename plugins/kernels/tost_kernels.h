/*
 * tost-edge CUDA kernels behind a small C ABI (no TensorRT dependency), for the TensorRT plugins and for
 * Python through ctypes. Activations are fp32, fp16 or bf16 (tost_dtype); accumulation and the recurrent state
 * are always fp32. All tensors are contiguous, batch first. `stream` is a cudaStream_t (NULL: default stream).
 * Functions return TOST_OK or an error code; tost_last_error() describes the last failure of the calling thread.
 */
#ifndef TOST_KERNELS_H
#define TOST_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tost_dtype { TOST_FLOAT32 = 0, TOST_FLOAT16 = 1, TOST_BFLOAT16 = 2 } tost_dtype;
typedef enum tost_status { TOST_OK = 0, TOST_BAD_ARGUMENT = 1, TOST_CUDA_ERROR = 2 } tost_status;

#define TOST_MAX_HEADS 64

/* Bidirectional TSSA. w, y: [B, N, H*D]; temp: [H] fp32. Needs tost_tssa_workspace_size() bytes of workspace. */
size_t tost_tssa_workspace_size(int64_t B, int64_t N, int32_t H, int32_t D);
int tost_tssa_forward(const void* w, const float* temp, void* y, int64_t B, int64_t N, int32_t H, int32_t D,
                      int32_t dtype, void* workspace, size_t workspace_size, void* stream);

/* Causal TSSA over a block of T tokens (prefill; T == 1 is the step form) with carried fp32 state.
 * w, y: [B, T, H*D]; temp: [H]; denom_bias: [H, tmax] (ignored when bounded == 0); pos: [B] int32, the position
 * of each sequence's first token; state in/out: sum_wsq, sum_pi_wsq [B, H, D], sum_pi [B, H]. In and out state
 * may be the same buffers. */
int tost_causal_tssa_forward(const void* w, const float* temp, const float* denom_bias, int64_t tmax,
                             int32_t bounded, const int32_t* pos, const float* sum_wsq_in,
                             const float* sum_pi_wsq_in, const float* sum_pi_in, void* y, float* sum_wsq_out,
                             float* sum_pi_wsq_out, float* sum_pi_out, int64_t B, int64_t T, int32_t H, int32_t D,
                             int32_t dtype, void* stream);

/* Causal linear attention (phi = elu + 1) over T tokens with carried fp32 state.
 * q, k: [B, T, H, D]; v, y: [B, T, H, M]; kv: [B, H, D, M]; k_sum: [B, H, D]. In and out state may alias. */
int tost_causal_linear_attention_forward(const void* q, const void* k, const void* v, const float* kv_in,
                                         const float* k_sum_in, void* y, float* kv_out, float* k_sum_out,
                                         int64_t B, int64_t T, int32_t H, int32_t D, int32_t M, float eps,
                                         int32_t dtype, void* stream);

const char* tost_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* TOST_KERNELS_H */
