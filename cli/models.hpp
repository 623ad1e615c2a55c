// Model presets for `tmoe bench`, read from configs/models.json.
#pragma once

#include <tmoe/tmoe.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tmoe::cli {

struct ModelShape {
  std::string name;
  int64_t H = 0, I = 0, E = 0, k = 0, shared_I = 0;
  tmoe_routing routing{};
};

// Throws std::runtime_error naming the file or the model when it cannot.
ModelShape load_model(const std::string& models_file, const std::string& name);
std::vector<std::string> model_names(const std::string& models_file);

// "H,I,E,k" with softmax_topk routing (renormalised).
ModelShape parse_shape(const std::string& spec);

tmoe_routing_mode parse_routing_mode(const std::string& name);
const char* routing_mode_name(tmoe_routing_mode mode);

}  // namespace tmoe::cli
