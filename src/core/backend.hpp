// The backend interface (ggml's pattern): one small implementation per device
// kind. Every backend answers the same calls and is tested against the CPU
// backend by the same parameterised suites.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/problem.hpp"
#include "core/status.hpp"

namespace tmoe {

struct ExecContext {
  void* stream = nullptr;          // CUstream / hipStream_t; unused on the CPU
  void* workspace = nullptr;       // caller-owned device buffer, or null
  size_t workspace_bytes = 0;
  bool trust_routing_values = false;  // skip the device-to-host check of given ids/weights
};

// What a forward runs: for `tmoe_moe_plan` and `tmoe bench`.
struct PlanInfo {
  int launches = 0;         // device kernel launches (0 on the CPU)
  std::string description;  // the path and every kernel, one line
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;                // "cpu", "gpu"
  virtual std::string device_name() const = 0;
  // Ok, or Unsupported with the reason (dtype, shape, missing compiled target...).
  virtual Status supports(const MoeProblem& problem) const = 0;
  virtual size_t workspace_bytes(const MoeProblem& problem) const = 0;
  // Unsupported as supports() would be.
  virtual Status describe_plan(const MoeProblem& problem, PlanInfo* info) const = 0;
  // Called with a validated problem; answers Unsupported as supports() would
  // (checking inside saves the GPU planning twice per call). Must not write
  // `out` unless it succeeds.
  virtual Status forward(const MoeProblem& problem, const ExecContext& exec) = 0;
};

// Factories; each reports why it cannot make a backend instead of falling back.
Status make_cpu_backend(std::unique_ptr<Backend>* backend);
Status make_gpu_backend(int device, std::unique_ptr<Backend>* backend);
Status gpu_device_count(int* count);

}  // namespace tmoe
