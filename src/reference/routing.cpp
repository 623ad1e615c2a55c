// Float64 routing reference: every top-k is a full sort with an explicit
// comparator (higher score first, then lower index), written for clarity.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "reference/reference.hpp"

namespace tmoe::reference {
namespace {

// NaN ranks as -inf, so the comparator stays a strict weak order for any input
// (std::sort is undefined otherwise).
double rank_key(double score) { return std::isnan(score) ? -INFINITY : score; }

// Indices of `scores` in selection order: higher score first, ties to the lower index.
std::vector<int64_t> ranked(const std::vector<double>& scores) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const double key_a = rank_key(scores[a]), key_b = rank_key(scores[b]);
    if (key_a != key_b) return key_a > key_b;
    return a < b;
  });
  return order;
}

double sum_of(const std::vector<double>& values) { return std::accumulate(values.begin(), values.end(), 0.0); }

// Chosen weights summing to 0 (every chosen sigmoid score underflowed) stay 0.
void normalize(std::vector<double>& weights) {
  const double total = sum_of(weights);
  if (!(total > 0.0)) return;
  for (double& w : weights) w /= total;
}

struct Choice {
  std::vector<int64_t> experts;
  std::vector<double> weights;
};

Choice softmax_topk(const tmoe_routing& routing, const std::vector<double>& logits) {
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs(logits.size());
  for (size_t e = 0; e < logits.size(); ++e) probs[e] = std::exp(logits[e] - max_logit);
  const double total = sum_of(probs);
  for (double& p : probs) p /= total;

  Choice choice;
  const std::vector<int64_t> order = ranked(probs);
  choice.experts.assign(order.begin(), order.begin() + routing.top_k);
  for (int64_t e : choice.experts) choice.weights.push_back(probs[e]);
  if (routing.renormalize) normalize(choice.weights);
  return choice;
}

Choice topk_softmax(const tmoe_routing& routing, const std::vector<double>& logits) {
  Choice choice;
  const std::vector<int64_t> order = ranked(logits);
  choice.experts.assign(order.begin(), order.begin() + routing.top_k);
  const double max_chosen = logits[choice.experts.front()];
  for (int64_t e : choice.experts) choice.weights.push_back(std::exp(logits[e] - max_chosen));
  normalize(choice.weights);
  return choice;
}

Choice sigmoid_grouped_topk(const tmoe_routing& routing, const std::vector<double>& logits) {
  const int64_t E = static_cast<int64_t>(logits.size());
  const float* bias = static_cast<const float*>(routing.correction_bias.data);
  std::vector<double> scores(E), biased(E);
  for (int64_t e = 0; e < E; ++e) {
    scores[e] = 1.0 / (1.0 + std::exp(-logits[e]));
    biased[e] = scores[e] + (bias ? static_cast<double>(bias[e]) : 0.0);
  }

  const int64_t group_size = E / routing.n_group;
  std::vector<double> group_scores(routing.n_group);
  for (int64_t g = 0; g < routing.n_group; ++g) {
    std::vector<double> members(biased.begin() + g * group_size, biased.begin() + (g + 1) * group_size);
    std::sort(members.begin(), members.end(), [](double a, double b) { return rank_key(a) > rank_key(b); });
    group_scores[g] = group_size == 1 ? members[0] : members[0] + members[1];
  }
  const std::vector<int64_t> group_order = ranked(group_scores);
  std::vector<bool> kept(routing.n_group, false);
  for (int64_t rank = 0; rank < routing.topk_group; ++rank) kept[group_order[rank]] = true;

  // Experts of dropped groups rank below every expert of a kept group.
  std::vector<double> candidates(E);
  for (int64_t e = 0; e < E; ++e) candidates[e] = kept[e / group_size] ? biased[e] : -INFINITY;
  const std::vector<int64_t> order = ranked(candidates);

  Choice choice;
  choice.experts.assign(order.begin(), order.begin() + routing.top_k);
  for (int64_t e : choice.experts) choice.weights.push_back(scores[e]);
  if (routing.renormalize) normalize(choice.weights);
  for (double& w : choice.weights) w *= routing.routed_scaling_factor;
  return choice;
}

}  // namespace

Routed route(const tmoe_routing& routing, const std::vector<double>& logits, int64_t T, int64_t E) {
  if (static_cast<int64_t>(logits.size()) != T * E) {
    throw std::invalid_argument("reference::route: logits has " + std::to_string(logits.size()) +
                                " values, expected T*E = " + std::to_string(T * E));
  }
  Routed routed;
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<double> row(logits.begin() + t * E, logits.begin() + (t + 1) * E);
    Choice choice;
    switch (routing.mode) {
      case TMOE_ROUTING_SOFTMAX_TOPK:
        choice = softmax_topk(routing, row);
        break;
      case TMOE_ROUTING_TOPK_SOFTMAX:
        choice = topk_softmax(routing, row);
        break;
      case TMOE_ROUTING_SIGMOID_GROUPED_TOPK:
        choice = sigmoid_grouped_topk(routing, row);
        break;
    }
    for (int64_t e : choice.experts) routed.ids.push_back(static_cast<int32_t>(e));
    routed.weights.insert(routed.weights.end(), choice.weights.begin(), choice.weights.end());
  }
  return routed;
}

double relative_l2(const std::vector<double>& ref, const std::vector<double>& actual) {
  // Different lengths cannot match; NaN fails every `< tolerance` check.
  if (ref.size() != actual.size()) return std::nan("");
  double diff_squares = 0.0, ref_squares = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff_squares += (actual[i] - ref[i]) * (actual[i] - ref[i]);
    ref_squares += ref[i] * ref[i];
  }
  if (ref_squares == 0.0) return std::sqrt(diff_squares);
  return std::sqrt(diff_squares / ref_squares);
}

}  // namespace tmoe::reference
