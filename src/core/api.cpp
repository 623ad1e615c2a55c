// The C ABI: argument checks, the context object and the thread-local error.
#include <tmoe/tmoe.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "core/backend.hpp"
#include "core/problem.hpp"
#include "core/status.hpp"

#ifndef TMOE_BUILD_INFO
#define TMOE_BUILD_INFO "unknown build"
#endif

struct tmoe_context_s {
  std::unique_ptr<tmoe::Backend> backend;
  std::string device_name;
};

namespace {

thread_local std::string last_error;

tmoe_status report(const tmoe::Status& s) {
  last_error = s.message();
  return s.code();
}

// Exceptions never cross the C boundary.
template <typename F>
tmoe_status guarded(F&& body) {
  try {
    return report(body());
  } catch (const std::bad_alloc&) {
    return report(tmoe::Status::out_of_memory("host allocation failed"));
  } catch (const std::exception& e) {
    return report(tmoe::Status::internal(std::string("unexpected exception: ") + e.what()));
  }
}

tmoe::Status validate_call(tmoe_context ctx, const tmoe_moe_args* args, tmoe::MoeProblem* problem) {
  if (ctx == nullptr) return tmoe::Status::invalid("ctx: expected a context from tmoe_context_create, got NULL");
  if (args == nullptr) return tmoe::Status::invalid("args: expected a tmoe_moe_args pointer, got NULL");
  return tmoe::validate_moe_args(*args, problem);
}

}  // namespace

extern "C" {

const char* tmoe_version(void) { return "0.1.0"; }
const char* tmoe_build_info(void) { return TMOE_BUILD_INFO; }

const char* tmoe_status_string(tmoe_status status) {
  switch (status) {
    case TMOE_SUCCESS: return "success";
    case TMOE_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case TMOE_ERROR_UNSUPPORTED: return "unsupported";
    case TMOE_ERROR_NO_DEVICE: return "no device";
    case TMOE_ERROR_DRIVER: return "driver error";
    case TMOE_ERROR_OUT_OF_MEMORY: return "out of memory";
    case TMOE_ERROR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

const char* tmoe_last_error(void) { return last_error.c_str(); }

const char* tmoe_dtype_name(tmoe_dtype dtype) {
  switch (dtype) {
    case TMOE_DTYPE_F32: return "f32";
    case TMOE_DTYPE_F16: return "f16";
    case TMOE_DTYPE_BF16: return "bf16";
    case TMOE_DTYPE_I32: return "i32";
  }
  return "unknown";
}

tmoe_tensor tmoe_make_tensor(void* data, tmoe_dtype dtype, int32_t rank, const int64_t* shape) {
  tmoe_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.rank = rank < 0 ? 0 : (rank > TMOE_MAX_RANK ? TMOE_MAX_RANK : rank);
  int64_t stride = 1;
  for (int i = t.rank - 1; i >= 0; --i) {
    t.shape[i] = shape[i];
    t.strides[i] = stride;
    stride *= shape[i];
  }
  return t;
}

tmoe_status tmoe_device_count(tmoe_backend backend, int32_t* count) {
  return guarded([&]() -> tmoe::Status {
    if (count == nullptr) return tmoe::Status::invalid("count: expected a pointer, got NULL");
    switch (tmoe::enum_bits(backend)) {
      case TMOE_BACKEND_CPU:
        *count = 1;
        return tmoe::Status::ok();
      case TMOE_BACKEND_GPU: {
        int n = 0;
        TMOE_RETURN_IF_ERROR(tmoe::gpu_device_count(&n));
        *count = n;
        return tmoe::Status::ok();
      }
      default:
        return tmoe::Status::invalid("backend: expected TMOE_BACKEND_CPU or TMOE_BACKEND_GPU");
    }
  });
}

tmoe_status tmoe_context_create(tmoe_backend backend, int32_t device, tmoe_context* ctx) {
  return guarded([&]() -> tmoe::Status {
    if (ctx == nullptr) return tmoe::Status::invalid("ctx: expected a pointer to receive the context, got NULL");
    *ctx = nullptr;
    auto c = std::make_unique<tmoe_context_s>();
    switch (tmoe::enum_bits(backend)) {
      case TMOE_BACKEND_CPU:
        if (device != 0) return tmoe::Status::invalid("device: the CPU backend has one device, 0; got " + std::to_string(device));
        TMOE_RETURN_IF_ERROR(tmoe::make_cpu_backend(&c->backend));
        break;
      case TMOE_BACKEND_GPU:
        TMOE_RETURN_IF_ERROR(tmoe::make_gpu_backend(device, &c->backend));
        break;
      case TMOE_BACKEND_AUTO: {
        int n = 0;
        if (tmoe::gpu_device_count(&n).is_ok() && n > device) {
          TMOE_RETURN_IF_ERROR(tmoe::make_gpu_backend(device, &c->backend));
        } else {
          TMOE_RETURN_IF_ERROR(tmoe::make_cpu_backend(&c->backend));
        }
        break;
      }
      default:
        return tmoe::Status::invalid("backend: expected TMOE_BACKEND_AUTO, _CPU or _GPU, got " +
                                     std::to_string(tmoe::enum_bits(backend)));
    }
    c->device_name = c->backend->device_name();
    *ctx = c.release();
    return tmoe::Status::ok();
  });
}

tmoe_status tmoe_context_destroy(tmoe_context ctx) {
  delete ctx;
  return TMOE_SUCCESS;
}

const char* tmoe_context_backend_name(tmoe_context ctx) { return ctx ? ctx->backend->name() : ""; }
const char* tmoe_context_device_name(tmoe_context ctx) { return ctx ? ctx->device_name.c_str() : ""; }

tmoe_status tmoe_moe_workspace_size(tmoe_context ctx, const tmoe_moe_args* args, size_t* bytes) {
  return guarded([&]() -> tmoe::Status {
    if (bytes == nullptr) return tmoe::Status::invalid("bytes: expected a pointer, got NULL");
    tmoe::MoeProblem problem;
    TMOE_RETURN_IF_ERROR(validate_call(ctx, args, &problem));
    TMOE_RETURN_IF_ERROR(ctx->backend->supports(problem));
    *bytes = ctx->backend->workspace_bytes(problem);
    return tmoe::Status::ok();
  });
}

tmoe_status tmoe_moe_plan(tmoe_context ctx, const tmoe_moe_args* args, int32_t* launches, char* description,
                          size_t description_bytes) {
  return guarded([&]() -> tmoe::Status {
    if (launches == nullptr) return tmoe::Status::invalid("launches: expected a pointer, got NULL");
    if (description != nullptr && description_bytes == 0) {
      return tmoe::Status::invalid("description_bytes: expected room for at least the terminating NUL, got 0");
    }
    tmoe::MoeProblem problem;
    TMOE_RETURN_IF_ERROR(validate_call(ctx, args, &problem));
    tmoe::PlanInfo info;
    TMOE_RETURN_IF_ERROR(ctx->backend->describe_plan(problem, &info));
    *launches = info.launches;
    if (description != nullptr) {
      const size_t n = std::min(info.description.size(), description_bytes - 1);
      std::memcpy(description, info.description.data(), n);
      description[n] = '\0';
    }
    return tmoe::Status::ok();
  });
}

tmoe_status tmoe_moe_forward(tmoe_context ctx, const tmoe_moe_args* args) {
  return guarded([&]() -> tmoe::Status {
    tmoe::MoeProblem problem;
    TMOE_RETURN_IF_ERROR(validate_call(ctx, args, &problem));
    // Nothing to run, but the answer is the same as with tokens.
    if (problem.T == 0) return ctx->backend->supports(problem);
    tmoe::ExecContext exec{args->stream, args->workspace, args->workspace_bytes, args->trust_routing_values != 0};
    return ctx->backend->forward(problem, exec);  // checks support itself: the GPU plans once
  });
}

}  // extern "C"
