// tritonmoe C++ API: a thin RAII wrapper over the C ABI in tmoe.h.
// Failures throw tmoe::Error carrying the status and the library's message.
#pragma once

#include <tmoe/tmoe.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

namespace tmoe {

class Error : public std::runtime_error {
 public:
  Error(tmoe_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  tmoe_status status() const noexcept { return status_; }

 private:
  tmoe_status status_;
};

inline void check(tmoe_status status) {
  if (status != TMOE_SUCCESS) {
    throw Error(status, std::string(tmoe_status_string(status)) + ": " + tmoe_last_error());
  }
}

// Describes a contiguous row-major tensor.
inline tmoe_tensor tensor(void* data, tmoe_dtype dtype, std::initializer_list<int64_t> shape) {
  if (shape.size() > TMOE_MAX_RANK) throw Error(TMOE_ERROR_INVALID_ARGUMENT, "tensor: rank above 4");
  return tmoe_make_tensor(data, dtype, static_cast<int32_t>(shape.size()), shape.begin());
}
inline tmoe_tensor tensor(const void* data, tmoe_dtype dtype, std::initializer_list<int64_t> shape) {
  return tensor(const_cast<void*>(data), dtype, shape);
}

inline int32_t device_count(tmoe_backend backend) {
  int32_t n = 0;
  check(tmoe_device_count(backend, &n));
  return n;
}

class Context {
 public:
  explicit Context(tmoe_backend backend = TMOE_BACKEND_AUTO, int32_t device = 0) {
    check(tmoe_context_create(backend, device, &ctx_));
  }
  ~Context() {
    if (ctx_) tmoe_context_destroy(ctx_);
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Context(Context&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}
  Context& operator=(Context&& other) noexcept {
    if (this != &other) {
      if (ctx_) tmoe_context_destroy(ctx_);
      ctx_ = std::exchange(other.ctx_, nullptr);
    }
    return *this;
  }

  std::string backend_name() const { return tmoe_context_backend_name(ctx_); }
  std::string device_name() const { return tmoe_context_device_name(ctx_); }

  size_t workspace_size(const tmoe_moe_args& args) const {
    size_t bytes = 0;
    check(tmoe_moe_workspace_size(ctx_, &args, &bytes));
    return bytes;
  }
  void forward(const tmoe_moe_args& args) { check(tmoe_moe_forward(ctx_, &args)); }
  struct Plan {
    int32_t launches = 0;
    std::string description;
  };
  Plan plan(const tmoe_moe_args& args) const {
    Plan p;
    char text[1024] = {};
    check(tmoe_moe_plan(ctx_, &args, &p.launches, text, sizeof text));
    p.description = text;
    return p;
  }

  tmoe_context get() const noexcept { return ctx_; }

 private:
  tmoe_context ctx_ = nullptr;
};

// Routing settings with the defaults of each mode.
inline tmoe_routing routing(tmoe_routing_mode mode, int32_t top_k, bool renormalize = false) {
  tmoe_routing r{};
  r.mode = mode;
  r.top_k = top_k;
  r.renormalize = renormalize ? 1 : 0;
  r.n_group = 1;
  r.topk_group = 1;
  r.routed_scaling_factor = 1.0f;
  return r;
}

}  // namespace tmoe
