/* tritonmoe: a Mixture-of-Experts layer for LLM inference.
 *
 * C ABI. Every function returns a tmoe_status; on failure a message naming the
 * offending argument is kept in a thread-local string (tmoe_last_error) and
 * nothing is written to the caller's output. The library never exits or aborts.
 *
 * Tensors are described by pointer, dtype, shape and strides (in elements).
 * Row-major contiguous strides are required for now and checked.
 */
#ifndef TMOE_TMOE_H
#define TMOE_TMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define TMOE_API __declspec(dllexport)
#else
#define TMOE_API __attribute__((visibility("default")))
#endif

#define TMOE_VERSION_MAJOR 0
#define TMOE_VERSION_MINOR 1
#define TMOE_MAX_RANK 4

typedef enum tmoe_status {
  TMOE_SUCCESS = 0,
  TMOE_ERROR_INVALID_ARGUMENT = 1, /* a tensor or parameter is wrong; message names it */
  TMOE_ERROR_UNSUPPORTED = 2,      /* valid, but the chosen backend cannot run it */
  TMOE_ERROR_NO_DEVICE = 3,        /* the requested backend or device does not exist */
  TMOE_ERROR_DRIVER = 4,           /* the GPU driver reported an error */
  TMOE_ERROR_OUT_OF_MEMORY = 5,
  TMOE_ERROR_INTERNAL = 6
} tmoe_status;

typedef enum tmoe_dtype {
  TMOE_DTYPE_F32 = 0,
  TMOE_DTYPE_F16 = 1,
  TMOE_DTYPE_BF16 = 2,
  TMOE_DTYPE_I32 = 3
} tmoe_dtype;

/* An optional tensor is absent when its descriptor is zeroed (rank 0, data NULL);
 * a present tensor with no elements may have NULL data. */
typedef struct tmoe_tensor {
  void* data;
  tmoe_dtype dtype;
  int32_t rank;
  int64_t shape[TMOE_MAX_RANK];
  int64_t strides[TMOE_MAX_RANK]; /* in elements; row-major contiguous required */
} tmoe_tensor;

typedef enum tmoe_routing_mode {
  /* softmax over all E logits, top-k of the probabilities, optional renormalise
   * (Mixtral, Qwen3). */
  TMOE_ROUTING_SOFTMAX_TOPK = 0,
  /* top-k of the raw logits, softmax over the k chosen (gpt-oss). */
  TMOE_ROUTING_TOPK_SOFTMAX = 1,
  /* sigmoid scores; selection on score + correction bias: groups ranked by the
   * sum of their two best biased scores, the best topk_group groups kept, top-k
   * experts inside them; weights are the unbiased scores, optionally
   * renormalised, times routed_scaling_factor (DeepSeek-V3). */
  TMOE_ROUTING_SIGMOID_GROUPED_TOPK = 2
} tmoe_routing_mode;

/* Ties in every top-k go to the lower index (expert or group). The k chosen
 * experts of a token are listed by descending score. A NaN score ranks as -inf,
 * so every token gets k experts whatever its logits; a NaN logit under
 * softmax_topk makes all of its token's probabilities, and so its output, NaN. */
typedef struct tmoe_routing {
  tmoe_routing_mode mode;
  int32_t top_k;
  int32_t renormalize;           /* softmax_topk and sigmoid_grouped_topk */
  int32_t n_group;               /* sigmoid_grouped_topk: E % n_group == 0 */
  int32_t topk_group;            /* sigmoid_grouped_topk: 1 <= topk_group <= n_group */
  float routed_scaling_factor;   /* sigmoid_grouped_topk; 1.0 elsewhere */
  tmoe_tensor correction_bias;   /* sigmoid_grouped_topk, optional [E] f32 */
} tmoe_routing;

typedef enum tmoe_backend {
  TMOE_BACKEND_AUTO = 0, /* a GPU when one exists, else the CPU */
  TMOE_BACKEND_CPU = 1,
  TMOE_BACKEND_GPU = 2
} tmoe_backend;

/* The MoE layer:
 *   out[t] = sum_j wts[t,j] * w2[e] @ (silu(g) * u),  g,u = w13[e] @ x[t],  e = ids[t,j]
 *            (+ shared expert: shared_w2 @ (silu(g_s) * u_s), g_s,u_s = shared_w13 @ x[t])
 * Shapes: x [T,H]; router_logits [T,E] (f32, bf16 or f16) or, when it is
 * absent, topk_ids [T,k] i32 and topk_weights [T,k] f32; w13 [E,2I,H] with gate rows
 * first, then up rows; w2 [E,H,I]; optional shared_w13 [2Is,H], shared_w2 [H,Is];
 * out [T,H]. x, weights and out share one dtype: bf16 or f16 (f32 on the CPU).
 * Every dot product accumulates in f32, and a token's expert outputs are summed in
 * f32 in a fixed order (deterministic). The GPU backend stores the intermediates
 * (silu(g) * u and each expert's weighted output) in the activation dtype, as the
 * serving engines' kernels do; the CPU backend keeps them in f32.
 * T = 0 is valid and does nothing. */
typedef struct tmoe_moe_args {
  tmoe_tensor x;
  tmoe_tensor router_logits;
  tmoe_routing routing;
  tmoe_tensor topk_ids;
  tmoe_tensor topk_weights;
  tmoe_tensor w13;
  tmoe_tensor w2;
  tmoe_tensor shared_w13;
  tmoe_tensor shared_w2;
  tmoe_tensor out;
  void* stream;            /* GPU: the caller's CUstream / hipStream_t (NULL: default) */
  void* workspace;         /* GPU: optional caller-owned device buffer */
  size_t workspace_bytes;  /* its size; see tmoe_moe_workspace_size */
  /* Given topk_ids / topk_weights are checked (ids in [0,E), weights finite and
   * >= 0) before anything runs. On a GPU that check copies them to the host and
   * waits for the stream; set 1 to skip it where the caller guarantees valid
   * values (required inside CUDA-graph capture). Router logits need no check. */
  int32_t trust_routing_values;
} tmoe_moe_args;

typedef struct tmoe_context_s* tmoe_context;

TMOE_API const char* tmoe_version(void);
TMOE_API const char* tmoe_build_info(void);
TMOE_API const char* tmoe_status_string(tmoe_status status);
/* The message of this thread's latest call that returns a status: why it
 * failed, or "" when it succeeded. */
TMOE_API const char* tmoe_last_error(void);
TMOE_API const char* tmoe_dtype_name(tmoe_dtype dtype);

/* Number of devices a backend sees: 1 for the CPU, the GPU count for the GPU
 * backend (0 where no driver or no GPU is present). */
TMOE_API tmoe_status tmoe_device_count(tmoe_backend backend, int32_t* count);

/* A context owns one backend on one device and whatever it caches (loaded GPU
 * modules, an internal workspace). It is not thread-safe: use one per thread.
 * GPU: it works in the device's primary context, and every call leaves the
 * calling thread's current context (CUDA) or device (HIP) as it found it. */
TMOE_API tmoe_status tmoe_context_create(tmoe_backend backend, int32_t device, tmoe_context* ctx);
TMOE_API tmoe_status tmoe_context_destroy(tmoe_context ctx);
/* "cpu" or "gpu" (AUTO resolves at creation). */
TMOE_API const char* tmoe_context_backend_name(tmoe_context ctx);
TMOE_API const char* tmoe_context_device_name(tmoe_context ctx);

/* Device workspace the forward needs when args->workspace is given (0 on the CPU). */
TMOE_API tmoe_status tmoe_moe_workspace_size(tmoe_context ctx, const tmoe_moe_args* args, size_t* bytes);
TMOE_API tmoe_status tmoe_moe_forward(tmoe_context ctx, const tmoe_moe_args* args);
/* What tmoe_moe_forward would run for these arguments, without running it:
 * *launches kernel launches (0 on the CPU) and, when description is not NULL, a
 * NUL-terminated line (cut to description_bytes) naming the path, its tiles,
 * whether the device's tuned table chose them, and every kernel variant. */
TMOE_API tmoe_status tmoe_moe_plan(tmoe_context ctx, const tmoe_moe_args* args, int32_t* launches, char* description,
                                   size_t description_bytes);

/* Fills a tensor descriptor with contiguous row-major strides. */
TMOE_API tmoe_tensor tmoe_make_tensor(void* data, tmoe_dtype dtype, int32_t rank, const int64_t* shape);

#ifdef __cplusplus
}
#endif
#endif /* TMOE_TMOE_H */
