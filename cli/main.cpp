// The `tmoe` command: info, bench and tune.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <tmoe/tmoe.hpp>

#include "bench.hpp"
#include "models.hpp"
#include "tune.hpp"

#ifndef TMOE_MODELS_JSON
#define TMOE_MODELS_JSON "configs/models.json"
#endif

namespace {

void print_info() {
  std::printf("tritonmoe %s\nbuild: %s\n", tmoe_version(), tmoe_build_info());
  tmoe::Context cpu(TMOE_BACKEND_CPU);
  std::printf("backend cpu: available, device: %s\n", cpu.device_name().c_str());
  int32_t gpus = 0;
  if (tmoe_device_count(TMOE_BACKEND_GPU, &gpus) != TMOE_SUCCESS) {
    std::printf("backend gpu: unavailable: %s\n", tmoe_last_error());
    return;
  }
  if (gpus == 0) std::printf("backend gpu: no GPU found\n");
  for (int32_t d = 0; d < gpus; ++d) {
    tmoe_context ctx = nullptr;
    if (tmoe_context_create(TMOE_BACKEND_GPU, d, &ctx) == TMOE_SUCCESS) {
      std::printf("backend gpu: device %d: %s\n", d, tmoe_context_device_name(ctx));
      tmoe_context_destroy(ctx);
    } else {
      std::printf("backend gpu: device %d: unusable: %s\n", d, tmoe_last_error());
    }
  }
}

// The presets of the source tree this binary was built from, else of the
// working directory (a binary carried to another machine).
std::string default_models_file() {
  std::ifstream built_in(TMOE_MODELS_JSON);
  return built_in ? TMOE_MODELS_JSON : "configs/models.json";
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> items;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) items.push_back(item);
  return items;
}

std::vector<int64_t> parse_tokens(const std::string& list) {
  std::vector<int64_t> tokens;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 0) throw CLI::ValidationError("--tokens", "expected non-negative integers separated by commas, got '" + list + "'");
    tokens.push_back(v);
  }
  if (tokens.empty()) throw CLI::ValidationError("--tokens", "expected at least one token count");
  return tokens;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tritonmoe: a Mixture-of-Experts layer for LLM inference"};
  app.require_subcommand(1);

  app.add_subcommand("info", "devices, backends and build");

  auto* bench = app.add_subcommand("bench", "run the layer on random inputs, check it against a float64 reference, time it");
  std::string model, shape, tokens = "1,16,64", models_file = default_models_file();
  tmoe::cli::BenchOptions opt;
  auto* model_opt = bench->add_option("--model", model, "model preset (configs/models.json)");
  auto* shape_opt = bench->add_option("--shape", shape, "H,I,E,k (softmax_topk routing, renormalised)");
  model_opt->excludes(shape_opt);
  bench->add_option("--tokens", tokens, "token counts T, comma-separated")->capture_default_str();
  bench->add_option("--backend", opt.backend, "cpu, gpu or auto (a GPU when present)")
      ->check(CLI::IsMember({"cpu", "gpu", "auto"}))
      ->capture_default_str();
  bench->add_option("--device", opt.device, "device index")->capture_default_str();
  bench->add_option("--dtype", opt.dtype, "activation and weight dtype")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  bench->add_option("--json", opt.json_file, "also write the results to this JSON file");
  bench->add_option("--check-rows", opt.check_rows, "token rows compared against the float64 reference")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  bench->add_option("--reps", opt.reps, "timed repetitions (0: automatic)")->capture_default_str();
  bench->add_option("--seed", opt.seed, "random seed (0: random)")->capture_default_str();
  bench->add_option("--models-file", models_file, "model presets file")->capture_default_str();

  auto* tune = app.add_subcommand("tune", "time the kernel choices for each model and T on this GPU; write the "
                                          "fastest as its tuned table (configs/<device>.json)");
  std::string tune_models = "all", tune_tokens = "1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192";
  tmoe::cli::TuneOptions tune_opt;
  tune->add_option("--model", tune_models, "model presets, comma-separated, or all")->capture_default_str();
  tune->add_option("--tokens", tune_tokens, "token counts T, comma-separated: each is a bucket's upper end")
      ->capture_default_str();
  tune->add_option("--device", tune_opt.device, "GPU index")->capture_default_str();
  tune->add_option("--out", tune_opt.out, "the table to write (default configs/<device>.json)");
  tune->add_option("--sweep", tune_opt.sweep_file,
                   "also write every swept candidate's time and the final rounds' times, per model and T, to this "
                   "JSON file");
  tune->add_flag("--exhaustive", tune_opt.exhaustive,
                 "sweep every pair of gate_up and down tiles (default: a staged search timing about a third of "
                 "them, docs/tuning.md)");
  tune->add_option("--models-file", models_file, "model presets file")->capture_default_str();

  CLI11_PARSE(app, argc, argv);

  try {
    if (app.got_subcommand("info")) {
      print_info();
      return 0;
    }
    if (app.got_subcommand("tune")) {
      const std::vector<std::string> names =
          tune_models == "all" ? tmoe::cli::model_names(models_file) : split(tune_models);
      for (const std::string& name : names) tune_opt.models.push_back(tmoe::cli::load_model(models_file, name));
      tune_opt.tokens = parse_tokens(tune_tokens);
      if (std::find(tune_opt.tokens.begin(), tune_opt.tokens.end(), 0) != tune_opt.tokens.end() ||
          !std::is_sorted(tune_opt.tokens.begin(), tune_opt.tokens.end())) {
        throw CLI::ValidationError("--tokens", "expected increasing positive token counts, got '" + tune_tokens + "'");
      }
      for (int i = 0; i < argc; ++i) tune_opt.command += (i ? " " : "") + std::string(i ? argv[i] : "tmoe");
      return tmoe::cli::run_tune(tune_opt);
    }
    if (model.empty() == shape.empty()) throw CLI::ValidationError("bench", "give exactly one of --model or --shape");
    opt.model = model.empty() ? tmoe::cli::parse_shape(shape) : tmoe::cli::load_model(models_file, model);
    opt.tokens = parse_tokens(tokens);
    return tmoe::cli::run_bench(opt);
  } catch (const CLI::Error& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tmoe: %s\n", e.what());
    return 2;
  }
}
