// Random inputs of one model's layer on a BenchDevice, for `tmoe bench` and
// `tmoe tune`: the weights once, then x, router logits and out per token count.
// Host copies stay beside the device tensors for the float64 reference.
#pragma once

#include <tmoe/tmoe.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench_device.hpp"
#include "models.hpp"

namespace tmoe::cli {

// "bf16", "f16" (or "fp16"), "f32" (or "fp32"); throws naming --dtype.
tmoe_dtype parse_dtype(const std::string& name);

// Relative L2 bound of an output against the float64 reference, the test suites'.
double error_bound(tmoe_dtype dtype);

// `count` token rows of T to check: the first, the last, and reproducible others.
std::vector<int64_t> sample_rows(int64_t T, int count);

class LayerInputs {
 public:
  LayerInputs(BenchDevice& device, const ModelShape& model, tmoe_dtype dtype, uint64_t seed);

  // One token count's tensors; args() is ready for a forward on the device's stream.
  class Batch {
   public:
    const tmoe_moe_args& args() const { return args_; }
    // The same layer on the host copies, for the reference.
    tmoe_moe_args host_args() const;
    const std::vector<float>& host_logits() const { return host_logits_; }
    // The output after a forward (downloaded from the device when there is one).
    const std::vector<uint8_t>& fetch_out();
    // Relative L2 error of the output's `rows` (fetched) against the float64 layer; 0 without rows.
    double relative_error(const std::vector<int64_t>& rows);

   private:
    friend class LayerInputs;
    const LayerInputs* layer_ = nullptr;
    std::vector<uint8_t> host_x_, host_logits_bytes_, host_out_;
    std::vector<float> host_logits_;
    DeviceBuffer x_, logits_, out_;
    tmoe_moe_args args_{};
  };
  // Draw d > 0: other x and router logits for the same T (another routing draw).
  Batch batch(int64_t T, int draw = 0) const;

 private:
  void* place(std::vector<uint8_t>& host, DeviceBuffer* buffer) const;

  BenchDevice& device_;
  ModelShape model_;
  tmoe_dtype dtype_;
  uint64_t seed_;
  std::vector<uint8_t> host_w13_, host_w2_, host_sw13_, host_sw2_, host_bias_;
  DeviceBuffer d_w13_, d_w2_, d_sw13_, d_sw2_, d_bias_;
  void* w13_ = nullptr;  // where the backend reads them: the host copies on the CPU
  void* w2_ = nullptr;
  void* sw13_ = nullptr;
  void* sw2_ = nullptr;
  void* bias_ = nullptr;  // the routing's correction bias [E] f32, where the model has one
};

}  // namespace tmoe::cli
