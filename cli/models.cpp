#include "models.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include <tmoe/tmoe.hpp>

namespace tmoe::cli {

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open model presets file " + path);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

}  // namespace

tmoe_routing_mode parse_routing_mode(const std::string& name) {
  if (name == "softmax_topk") return TMOE_ROUTING_SOFTMAX_TOPK;
  if (name == "topk_softmax") return TMOE_ROUTING_TOPK_SOFTMAX;
  if (name == "sigmoid_grouped_topk") return TMOE_ROUTING_SIGMOID_GROUPED_TOPK;
  throw std::runtime_error("unknown routing mode '" + name +
                           "' (expected softmax_topk, topk_softmax or sigmoid_grouped_topk)");
}

const char* routing_mode_name(tmoe_routing_mode mode) {
  switch (mode) {
    case TMOE_ROUTING_SOFTMAX_TOPK: return "softmax_topk";
    case TMOE_ROUTING_TOPK_SOFTMAX: return "topk_softmax";
    case TMOE_ROUTING_SIGMOID_GROUPED_TOPK: return "sigmoid_grouped_topk";
  }
  return "unknown";
}

std::vector<std::string> model_names(const std::string& models_file) {
  std::vector<std::string> names;
  const nlohmann::json all = read_json(models_file);
  for (const auto& [key, value] : all.items()) {
    if (value.is_object()) names.push_back(key);
  }
  return names;
}

ModelShape load_model(const std::string& models_file, const std::string& name) {
  const nlohmann::json all = read_json(models_file);
  if (!all.contains(name) || !all[name].is_object()) {
    std::string known;
    for (const auto& n : model_names(models_file)) known += (known.empty() ? "" : ", ") + n;
    throw std::runtime_error("unknown model '" + name + "' (known: " + known + ")");
  }
  const nlohmann::json& m = all[name];
  try {
    ModelShape s;
    s.name = name;
    s.H = m.at("H");
    s.I = m.at("I");
    s.E = m.at("E");
    s.k = m.at("k");
    s.shared_I = m.value("shared_I", 0);
    s.routing = tmoe::routing(parse_routing_mode(m.at("routing")), static_cast<int32_t>(s.k),
                              m.value("renormalize", false));
    s.routing.n_group = m.value("n_group", 1);
    s.routing.topk_group = m.value("topk_group", 1);
    s.routing.routed_scaling_factor = m.value("routed_scaling_factor", 1.0f);
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(models_file + ": model '" + name + "': " + e.what());
  }
}

ModelShape parse_shape(const std::string& spec) {
  std::vector<int64_t> v;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      v.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw std::runtime_error("--shape: expected H,I,E,k as four integers, got '" + spec + "'");
    }
  }
  if (v.size() != 4) throw std::runtime_error("--shape: expected H,I,E,k as four integers, got '" + spec + "'");
  ModelShape s;
  s.name = "shape-" + spec;
  s.H = v[0];
  s.I = v[1];
  s.E = v[2];
  s.k = v[3];
  s.routing = tmoe::routing(TMOE_ROUTING_SOFTMAX_TOPK, static_cast<int32_t>(s.k), true);
  return s;
}

}  // namespace tmoe::cli
