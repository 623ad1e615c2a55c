#include "bench.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <stdexcept>
#include <tmoe/tmoe.hpp>

#include "bench_device.hpp"
#include "core/numeric.hpp"
#include "cpu/blas_probe.hpp"
#include "core/problem.hpp"
#include "reference/random.hpp"
#include "reference/reference.hpp"

namespace tmoe::cli {

namespace {

using reference::mix;
using reference::random_tensor;

// Relative L2 bounds, the same as the test suites': rounding of inputs and
// outputs to the storage format dominates, accumulation is f32 everywhere.
double error_bound(tmoe_dtype dtype) {
  switch (dtype) {
    case TMOE_DTYPE_BF16: return 1e-2;
    case TMOE_DTYPE_F16: return 2e-3;
    default: return 1e-5;
  }
}

tmoe_dtype parse_dtype(const std::string& s) {
  if (s == "bf16") return TMOE_DTYPE_BF16;
  if (s == "f16" || s == "fp16") return TMOE_DTYPE_F16;
  if (s == "f32" || s == "fp32") return TMOE_DTYPE_F32;
  throw std::runtime_error("--dtype: expected bf16, f16 or f32, got '" + s + "'");
}

// Router logits: each row a random permutation of an evenly spaced grid plus a
// jitter far smaller than the spacing, so f32 routing (the library) and f64
// routing (the reference) cannot disagree on a near-tie.
std::vector<float> random_logits(int64_t T, int64_t E, uint64_t seed) {
  std::vector<float> logits(static_cast<size_t>(T * E));
  const double step = 4.0 / static_cast<double>(E);
  for (int64_t t = 0; t < T; ++t) {
    std::mt19937_64 rng(mix(seed + static_cast<uint64_t>(t)));
    std::vector<int64_t> perm(E);
    for (int64_t e = 0; e < E; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::uniform_real_distribution<double> jitter(-0.05 * step, 0.05 * step);
    for (int64_t e = 0; e < E; ++e) {
      logits[t * E + e] = static_cast<float>((static_cast<double>(perm[e]) - 0.5 * E) * step + jitter(rng));
    }
  }
  return logits;
}

std::vector<int64_t> sample_rows(int64_t T, int count) {
  std::set<int64_t> rows;
  if (T == 0) return {};
  rows.insert(0);
  rows.insert(T - 1);
  for (int i = 1; static_cast<int64_t>(rows.size()) < std::min<int64_t>(T, count); ++i) {
    rows.insert(static_cast<int64_t>(mix(static_cast<uint64_t>(i)) % static_cast<uint64_t>(T)));
  }
  return {rows.begin(), rows.end()};
}

struct Row {
  int64_t T;
  double ms, gbps, gflops, rel_err, bound;
  int64_t active_experts;
  double blas_gflops;  // CPU: an OpenBLAS sgemm of the same routed work, timed in the same run
};

}  // namespace

int run_bench(const BenchOptions& opt) {
  const ModelShape& m = opt.model;
  const tmoe_dtype dtype = parse_dtype(opt.dtype);
  const size_t esize = dtype_size(dtype);
  const uint64_t seed = opt.seed ? opt.seed : std::random_device{}();

  tmoe_backend backend_kind = TMOE_BACKEND_AUTO;
  if (opt.backend == "cpu") backend_kind = TMOE_BACKEND_CPU;
  else if (opt.backend == "gpu") backend_kind = TMOE_BACKEND_GPU;
  else if (opt.backend != "auto") throw std::runtime_error("--backend: expected cpu, gpu or auto, got '" + opt.backend + "'");

  tmoe::Context ctx(backend_kind, opt.device);
  const std::string backend = ctx.backend_name();
  if (backend_kind == TMOE_BACKEND_AUTO && backend == "cpu") {
    std::printf("backend auto: no GPU found, using the CPU backend\n");
  }
  std::unique_ptr<BenchDevice> dev = backend == "cpu" ? make_host_bench_device() : make_gpu_bench_device(opt.device);

  std::printf("tmoe bench: %s (H=%lld I=%lld E=%lld k=%lld%s, %s), %s, backend %s on %s, seed %llu\n",
              m.name.c_str(), (long long)m.H, (long long)m.I, (long long)m.E, (long long)m.k,
              m.shared_I ? (", shared I=" + std::to_string(m.shared_I)).c_str() : "",
              routing_mode_name(m.routing.mode), tmoe_dtype_name(dtype), backend.c_str(), ctx.device_name().c_str(),
              (unsigned long long)seed);

  // Weights once for all T; host copies stay for the reference.
  const int64_t H = m.H, I = m.I, E = m.E, k = m.k, Is = m.shared_I;
  auto host_w13 = random_tensor(E * 2 * I * H, dtype, 1.0 / std::sqrt(double(H)), seed + 1);
  auto host_w2 = random_tensor(E * H * I, dtype, 1.0 / std::sqrt(double(I)), seed + 2);
  std::vector<uint8_t> host_sw13, host_sw2;
  if (Is) {
    host_sw13 = random_tensor(2 * Is * H, dtype, 1.0 / std::sqrt(double(H)), seed + 3);
    host_sw2 = random_tensor(H * Is, dtype, 1.0 / std::sqrt(double(Is)), seed + 4);
  }
  // On the CPU the host copies are the tensors; on a GPU they are uploaded.
  auto place = [&](std::vector<uint8_t>& host, DeviceBuffer& buf) -> void* {
    if (dev->is_host()) return host.data();
    buf = DeviceBuffer(*dev, host.size());
    dev->upload(buf.get(), host.data(), host.size());
    return buf.get();
  };
  DeviceBuffer d_w13, d_w2, d_sw13, d_sw2;
  void* w13 = place(host_w13, d_w13);
  void* w2 = place(host_w2, d_w2);
  void* sw13 = Is ? place(host_sw13, d_sw13) : nullptr;
  void* sw2 = Is ? place(host_sw2, d_sw2) : nullptr;

  const bool on_cpu = backend == "cpu";
  std::printf("%8s %11s %9s %9s %8s %11s %9s%s\n", "T", "median ms", "GB/s", "GFLOP/s", "experts", "rel L2 err", "bound",
              on_cpu ? "  sgemm GFLOP/s" : "");
  std::vector<Row> rows;
  bool all_ok = true;
  for (int64_t T : opt.tokens) {
    auto host_x = random_tensor(T * H, dtype, 1.0, seed + 100 + static_cast<uint64_t>(T));
    std::vector<float> host_logits = random_logits(T, E, seed + 200 + static_cast<uint64_t>(T));
    std::vector<uint8_t> logits_bytes(reinterpret_cast<uint8_t*>(host_logits.data()),
                                      reinterpret_cast<uint8_t*>(host_logits.data() + host_logits.size()));
    std::vector<uint8_t> host_out(static_cast<size_t>(T * H) * esize, 0xff);  // NaN pattern: unwritten shows
    DeviceBuffer d_x, d_logits, d_out;
    void* x = place(host_x, d_x);
    void* logits = place(logits_bytes, d_logits);
    void* out = place(host_out, d_out);

    tmoe_moe_args args{};
    args.x = tmoe::tensor(x, dtype, {T, H});
    args.router_logits = tmoe::tensor(logits, TMOE_DTYPE_F32, {T, E});
    args.routing = m.routing;
    args.w13 = tmoe::tensor(w13, dtype, {E, 2 * I, H});
    args.w2 = tmoe::tensor(w2, dtype, {E, H, I});
    if (Is) {
      args.shared_w13 = tmoe::tensor(sw13, dtype, {2 * Is, H});
      args.shared_w2 = tmoe::tensor(sw2, dtype, {H, Is});
    }
    args.out = tmoe::tensor(out, dtype, {T, H});
    args.stream = dev->stream();

    // Correctness first, on the first call's output.
    ctx.forward(args);
    if (!dev->is_host()) dev->download(host_out.data(), out, host_out.size());
    tmoe_moe_args host_args = args;
    host_args.x.data = host_x.data();
    host_args.router_logits.data = host_logits.data();
    host_args.w13.data = host_w13.data();
    host_args.w2.data = host_w2.data();
    if (Is) {
      host_args.shared_w13.data = host_sw13.data();
      host_args.shared_w2.data = host_sw2.data();
    }
    const std::vector<int64_t> check = sample_rows(T, opt.check_rows);
    const std::vector<double> ref = reference::moe_layer(host_args, check);
    std::vector<double> got;
    got.reserve(check.size() * H);
    for (int64_t r : check) {
      for (int64_t h = 0; h < H; ++h) got.push_back(load_as_f32(host_out.data(), dtype, r * H + h));
    }
    const double err = T ? reference::relative_l2(ref, got) : 0.0;
    const double bound = error_bound(dtype);
    const bool ok = err <= bound;  // false for NaN
    all_ok = all_ok && ok;

    std::vector<double> all_logits(host_logits.begin(), host_logits.end());
    const reference::Routed routed = reference::route(m.routing, all_logits, T, E);
    const int64_t active = static_cast<int64_t>(std::set<int32_t>(routed.ids.begin(), routed.ids.end()).size());

    double ms = NAN;
    if (T) {
      const double first = dev->median_ms([&] { ctx.forward(args); }, 0, 1);
      const int reps = opt.reps ? opt.reps : static_cast<int>(std::clamp(2000.0 / std::max(first, 1e-3), 3.0, 100.0));
      ms = dev->median_ms([&] { ctx.forward(args); }, 1, reps);
    }
    const double bytes = double(active) * 3 * H * I * esize + (Is ? 3.0 * H * Is * esize : 0.0) +
                         2.0 * T * H * esize + 4.0 * T * E;
    const double flops = 2.0 * T * k * 3 * H * I + 2.0 * T * 3 * H * Is;
    // The CPU's ceiling: one f32 sgemm doing the routed GEMMs' flops (T*k rows
    // against the 3*I weight rows of width H).
    const double blas = on_cpu && T ? openblas_sgemm_gflops(T * k, 3 * I, H, 3) : NAN;
    Row row{T, ms, bytes / (ms * 1e6), flops / (ms * 1e6), err, bound, active, blas};
    rows.push_back(row);
    std::printf("%8lld %11.4f %9.1f %9.1f %8lld %11.2e %9.0e", (long long)T, ms, row.gbps, row.gflops,
                (long long)active, err, bound);
    if (on_cpu) std::printf("  %14.1f", blas);
    std::printf("%s\n", ok ? "" : "  ERROR ABOVE BOUND");
    std::fflush(stdout);
  }

  if (!opt.json_file.empty()) {
    nlohmann::json j;
    j["device"] = ctx.device_name();
    j["backend"] = backend;
    j["model"] = m.name;
    j["shape"] = {{"H", H}, {"I", I}, {"E", E}, {"k", k}, {"shared_I", Is}};
    j["routing"] = routing_mode_name(m.routing.mode);
    j["dtype"] = tmoe_dtype_name(dtype);
    j["seed"] = seed;
    j["build"] = tmoe_build_info();
    for (const Row& r : rows) {
      j["rows"].push_back({{"T", r.T}, {"ms", r.ms}, {"GBps", r.gbps}, {"GFLOPps", r.gflops},
                           {"active_experts", r.active_experts}, {"rel_err", r.rel_err}, {"bound", r.bound}});
      if (on_cpu) j["rows"].back()["sgemm_GFLOPps"] = r.blas_gflops;
    }
    std::ofstream f(opt.json_file);
    if (!f) throw std::runtime_error("--json: cannot write " + opt.json_file);
    f << j.dump(1) << "\n";
  }
  if (!all_ok) std::printf("FAILED: an error exceeds its bound\n");
  return all_ok ? 0 : 1;
}

}  // namespace tmoe::cli
