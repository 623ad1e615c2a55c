#include "tune.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>
#include <vector>
#include <tmoe/tmoe.h>

#include "bench_device.hpp"
#include "gpu/gpu_backend.hpp"
#include "gpu/tuning.hpp"
#include "layer_inputs.hpp"

namespace tmoe::cli {

namespace {

// The staged search's shape (gpu::staged_sweep; performance-log.md #87).
constexpr size_t kStagedLeaders = 5;
constexpr int kStagedPasses = 2;
// The sweep's fastest candidates that are timed again, and how many rounds.
constexpr size_t kFinalists = 3;
constexpr int kFinalRounds = 5;
// Final rounds time each finalist on this many routing draws (their mean decides): at
// small T the draw's count of active experts moves the decode/sorted ranking by more
// than the choices differ (qwen3-30b-a3b T = 4: 27-30 active over six draws, decode
// ahead on five, performance-log.md #33).
constexpr int kRoutingDraws = 3;

bool by_time(const std::pair<double, gpu::KernelChoice>& a, const std::pair<double, gpu::KernelChoice>& b) {
  return a.first < b.first;
}

// One line redrawn in place on stderr: where the sweep is and the best so far.
void progress(const std::string& what, size_t done, size_t total, double best_ms, const std::string& best) {
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * done / std::max<size_t>(total, 1));
  std::fprintf(stderr, "\r%-28s [%s%s] %3zu/%-3zu best %8.4f ms %-24s", what.c_str(), std::string(filled, '#').c_str(),
               std::string(kWidth - filled, '.').c_str(), done, total, best_ms, best.c_str());
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

std::string format_ms(double ms) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4f", ms);
  return text;
}

// Written whole after every T: a sweep cut short (a device call's time limit) keeps
// every bucket it finished.
void write_json(const std::string& file, const nlohmann::json& j, const std::string& option) {
  std::ofstream f(file);
  if (!f) throw std::runtime_error(option + ": cannot write " + file);
  f << j.dump(1) << "\n";
}

std::string today() {
  const std::time_t now = std::time(nullptr);
  char text[16];
  std::strftime(text, sizeof text, "%Y-%m-%d", std::gmtime(&now));
  return text;
}

}  // namespace

int run_tune(const TuneOptions& opt) {
  std::unique_ptr<gpu::TunableBackend> backend;
  check(gpu::make_tunable_backend(opt.device, &backend));
  std::unique_ptr<BenchDevice> dev = make_gpu_bench_device(opt.device);
  const std::string out_file = opt.out.empty() ? "configs/" + gpu::device_slug(backend->device_model()) + ".json" : opt.out;
  const tmoe_dtype dtype = TMOE_DTYPE_BF16;  // f16 runs the same tiles under the same names
  std::printf("tmoe tune: %s (%s), %zu models x %zu token counts -> %s\n", backend->device_model().c_str(),
              backend->target().c_str(), opt.models.size(), opt.tokens.size(), out_file.c_str());

  nlohmann::json table;
  table["format"] = 1;
  table["device"] = backend->device_model();
  table["target"] = backend->target();
  table["triton_version"] = "3.6.0";
  table["tuned"] = today();
  table["command"] = opt.command;
  table["dtype"] = "bf16";
  table["timing"] =
      std::string("median of CUDA-graph replays of the whole layer from router logits; ") +
      (opt.exhaustive ? std::string("every pair of tiles swept; ")
                      : "a staged sweep (per row block: gate_up tiles beside one down tile, then down tiles beside the "
                        "fastest gate_up, " + std::to_string(kStagedPasses) + " passes, then every pair of the " +
                            std::to_string(kStagedLeaders) + " fastest of each); ") +
      "the sweep's " + std::to_string(kFinalists) +
      " fastest, the fastest of each path, the heuristic and the updated table's choice, each with and without "
      "dependent launch where the target offers it, timed again in " + std::to_string(kFinalRounds) +
      " alternating rounds on " + std::to_string(kRoutingDraws) +
      " routing draws each, the median round's mean over the draws decides";
  // An existing table of this device keeps the shapes this run does not tune
  // (checked now, before minutes of sweeping, and merged at every write), and its
  // choice for each T re-tuned runs in the final rounds: a winner must beat it in
  // the same rounds, not a time from an earlier call (between calls the same
  // choice moved up to 2.4% on an H100, performance-log.md #30).
  std::string existing;
  gpu::TuningTable previous;
  if (std::ifstream in(out_file); in) {
    existing.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    nlohmann::json probe = table;
    check(gpu::merge_tuning_table(existing, "--out " + out_file, &probe));
    check(gpu::TuningTable::parse(existing, "--out " + out_file, &previous));
    std::printf("updating %s: its other shapes are kept\n", out_file.c_str());
  }
  // The table with the model in progress.
  auto write_table = [&](const nlohmann::json& current_shape) {
    nlohmann::json merged = table;
    merged["shapes"].push_back(current_shape);
    if (!existing.empty()) check(gpu::merge_tuning_table(existing, "--out " + out_file, &merged));
    write_json(out_file, merged, "--out");
  };
  // --sweep: how close every timed candidate came, where the table keeps only the winner;
  // written before the winner's check, so a refused winner's sweep is kept too.
  nlohmann::json sweep_log = nlohmann::json::array();
  for (const ModelShape& m : opt.models) {
    const LayerInputs inputs(*dev, m, dtype, opt.seed);
    // Each shape says when and how it was tuned: a merged table holds several runs.
    nlohmann::json shape = {{"name", m.name}, {"E", m.E},          {"H", m.H}, {"I", m.I},
                            {"k", m.k},       {"tuned", today()}, {"command", opt.command}};
    std::printf("%s (H=%lld I=%lld E=%lld k=%lld)\n", m.name.c_str(), (long long)m.H, (long long)m.I, (long long)m.E,
                (long long)m.k);
    std::printf("%8s %11s %-22s %14s %-22s %8s %11s %9s %12s %s\n", "T", "best ms", "best", "heuristic ms",
                "heuristic", "speedup", "rel L2 err", "timed/s", "previous ms", "previous (the updated table's)");
    for (int64_t T : opt.tokens) {
      // Draw 0 is swept and checked; the others join the final rounds.
      std::vector<LayerInputs::Batch> draws;
      draws.reserve(kRoutingDraws);
      std::vector<MoeProblem> problems(kRoutingDraws);
      for (int d = 0; d < kRoutingDraws; ++d) {
        draws.push_back(inputs.batch(T, d));
        check(validate_moe_args(draws.back().args(), &problems[d]));
      }
      const MoeProblem& problem = problems[0];
      const ExecContext exec{dev->stream(), nullptr, 0, false};
      const std::vector<gpu::KernelChoice> candidates = backend->candidates(problem);
      const gpu::KernelChoice heuristic = backend->heuristic_choice(problem);
      auto time_choice = [&](const gpu::KernelChoice& c, const MoeProblem& p) {
        check(backend->forward_with(p, exec, c));  // outside the graph: grows the workspace
        const double first = dev->median_ms([&] { check(backend->forward_with(p, exec, c)); }, 0, 1);
        const int reps = static_cast<int>(std::clamp(100.0 / std::max(first, 1e-3), 5.0, 50.0));
        return dev->median_ms([&] { check(backend->forward_with(p, exec, c)); }, 2, reps);
      };
      auto mean_over_draws = [&](const gpu::KernelChoice& c) {
        double sum = 0;
        for (const MoeProblem& p : problems) sum += time_choice(c, p);
        return sum / kRoutingDraws;
      };
      const std::string what = m.name + " T=" + std::to_string(T);
      const auto began = std::chrono::steady_clock::now();
      const size_t planned = opt.exhaustive ? candidates.size()
                                            : gpu::staged_sweep_bound(candidates, kStagedLeaders, kStagedPasses);
      size_t done = 0;
      std::pair<double, gpu::KernelChoice> lead{INFINITY, {}};
      auto sweep_time = [&](const gpu::KernelChoice& c) {
        const double ms = time_choice(c, problem);
        lead = std::min(lead, std::pair{ms, c}, by_time);
        progress(what, ++done, planned, lead.first, lead.second.describe());
        return ms;
      };
      std::vector<std::pair<double, gpu::KernelChoice>> sweep;
      if (opt.exhaustive) {
        for (const gpu::KernelChoice& c : candidates) sweep.emplace_back(sweep_time(c), c);
      } else {
        sweep = gpu::staged_sweep(candidates, heuristic, kStagedLeaders, kStagedPasses, sweep_time);
        if (done < planned) progress(what, done, done, lead.first, lead.second.describe());  // ends the bar's line
      }
      // The sweep takes seconds to minutes, over which the clocks move under the power
      // cap by more than the closest candidates differ (5% between two sweeps of one
      // build on an H100). The leaders and the heuristic are timed again in turns, on
      // every routing draw, and the median of their rounds decides.
      std::sort(sweep.begin(), sweep.end(), by_time);
      std::vector<gpu::KernelChoice> swept;
      for (const auto& timed : sweep) swept.push_back(timed.second);
      const gpu::KernelChoice* table_choice = previous.find({m.E, m.H, m.I, m.k}, T);
      const std::vector<gpu::KernelChoice> finalists =
          gpu::final_round_choices(swept, kFinalists, heuristic, table_choice, candidates,
                                   backend->offers_dependent_launch());
      // The updated table's choice, when it ran in the final rounds.
      const gpu::KernelChoice* before =
          table_choice && std::find(finalists.begin(), finalists.end(), *table_choice) != finalists.end() ? table_choice
                                                                                                         : nullptr;
      std::vector<std::vector<double>> rounds(finalists.size());
      for (int r = 0; r < kFinalRounds; ++r) {
        for (size_t i = 0; i < finalists.size(); ++i) rounds[i].push_back(mean_over_draws(finalists[i]));
      }
      std::vector<double> final_ms;
      for (std::vector<double>& times : rounds) {
        std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
        final_ms.push_back(times[times.size() / 2]);
      }
      const size_t winner = std::min_element(final_ms.begin(), final_ms.end()) - final_ms.begin();
      const gpu::KernelChoice best = finalists[winner];
      const double best_ms = final_ms[winner];
      auto final_ms_of = [&](const gpu::KernelChoice& c) {
        return final_ms[std::find(finalists.begin(), finalists.end(), c) - finalists.begin()];
      };
      const double heuristic_ms = final_ms_of(heuristic);
      // The winner's output, checked: a fast wrong kernel must not enter a table.
      check(backend->forward_with(problem, exec, best));
      const double err = draws[0].relative_error(sample_rows(T, opt.check_rows));
      const bool ok = err <= error_bound(dtype);  // false for NaN
      const std::string previous_ms = before ? format_ms(final_ms_of(*before)) : "-";
      // How many choices the sweep timed, and the bucket's seconds (sweep, final rounds, check).
      const std::string cost =
          std::to_string(sweep.size()) + "/" +
          std::to_string(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - began).count());
      std::printf("%8lld %11.4f %-22s %14.4f %-22s %7.2fx %11.2e %9s %12s %s%s\n", (long long)T, best_ms,
                  best.describe().c_str(), heuristic_ms, heuristic.describe().c_str(), heuristic_ms / best_ms, err,
                  cost.c_str(), previous_ms.c_str(), before ? before->describe().c_str() : "-",
                  ok ? "" : "  ERROR ABOVE BOUND");
      std::fflush(stdout);
      nlohmann::json bucket = gpu::choice_to_json(best);
      bucket["max_tokens"] = T;
      bucket["ms"] = best_ms;
      bucket["heuristic_ms"] = heuristic_ms;
      if (before) bucket["previous_ms"] = final_ms_of(*before);
      bucket["candidates"] = candidates.size();
      bucket["timed"] = sweep.size();
      if (!opt.sweep_file.empty()) {
        nlohmann::json entry = {{"model", m.name}, {"T", T}, {"winner", best.describe()}, {"rel_l2_err", err}};
        entry["sweep"] = nlohmann::json::array();
        for (const auto& [ms, choice] : sweep) entry["sweep"].push_back({{"choice", choice.describe()}, {"ms", ms}});
        entry["final"] = nlohmann::json::array();
        for (size_t i = 0; i < finalists.size(); ++i) {
          entry["final"].push_back({{"choice", finalists[i].describe()}, {"ms", final_ms[i]}});
        }
        sweep_log.push_back(entry);
        write_json(opt.sweep_file, sweep_log, "--sweep");
      }
      if (!ok) {
        std::printf("FAILED: the winner's error exceeds its bound; %s keeps the buckets before this one\n",
                    out_file.c_str());
        return 1;
      }
      shape["buckets"].push_back(bucket);
      write_table(shape);
    }
    table["shapes"].push_back(shape);
  }
  std::printf("wrote %s\n", out_file.c_str());
  return 0;
}

}  // namespace tmoe::cli
