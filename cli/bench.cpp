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
#include "layer_inputs.hpp"
#include "cpu/blas_probe.hpp"
#include "core/problem.hpp"
#include "reference/reference.hpp"

namespace tmoe::cli {

namespace {

struct Row {
  int64_t T;
  double ms, gbps, gflops, rel_err, bound;
  int64_t active_experts;
  double blas_gflops;  // CPU: an OpenBLAS sgemm of the same routed work, timed in the same run
  int launches;        // kernel launches per layer
  std::string plan;    // what ran (tmoe_moe_plan)
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

  const int64_t H = m.H, I = m.I, E = m.E, k = m.k, Is = m.shared_I;
  const LayerInputs inputs(*dev, m, dtype, seed);

  const bool on_cpu = backend == "cpu";
  std::printf("%8s %11s %9s %9s %8s %8s %11s %9s%s\n", "T", "median ms", "GB/s", "GFLOP/s", "experts", "launches", "rel L2 err", "bound",
              on_cpu ? "  sgemm GFLOP/s" : "");
  std::vector<Row> rows;
  bool all_ok = true;
  for (int64_t T : opt.tokens) {
    LayerInputs::Batch batch = inputs.batch(T);
    const tmoe_moe_args& args = batch.args();
    const tmoe::Context::Plan plan = ctx.plan(args);

    // Correctness first, on the first call's output.
    ctx.forward(args);
    const double err = batch.relative_error(sample_rows(T, opt.check_rows));
    const double bound = error_bound(dtype);
    const bool ok = err <= bound;  // false for NaN
    all_ok = all_ok && ok;

    std::vector<double> all_logits(batch.host_logits().begin(), batch.host_logits().end());
    const reference::Routed routed = reference::route(batch.host_args().routing, all_logits, T, E);
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
    Row row{T, ms, bytes / (ms * 1e6), flops / (ms * 1e6), err, bound, active, blas, plan.launches, plan.description};
    rows.push_back(row);
    std::printf("%8lld %11.4f %9.1f %9.1f %8lld %8d %11.2e %9.0e", (long long)T, ms, row.gbps, row.gflops,
                (long long)active, plan.launches, err, bound);
    if (on_cpu) std::printf("  %14.1f", blas);
    std::printf("%s\n", ok ? "" : "  ERROR ABOVE BOUND");
    std::fflush(stdout);
  }

  std::printf("plans:\n");
  for (const Row& r : rows) std::printf("%8lld  %s\n", (long long)r.T, r.plan.c_str());

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
                           {"active_experts", r.active_experts}, {"rel_err", r.rel_err}, {"bound", r.bound},
                           {"launches", r.launches}, {"plan", r.plan}});
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
