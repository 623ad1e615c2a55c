// Routing on the host, in f32, one token row at a time. The selection rule is
// the same everywhere: a top-k that keeps the highest scores, ties to the lower
// index, best first.
#include "core/routing.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/numeric.hpp"

namespace tmoe {
namespace {

// The best `capacity` (score, index) pairs offered so far, best first.
// Candidates must be offered in ascending index order: a newcomer then moves
// past strictly lower scores only, which gives every tie to the lower index.
// NaN ranks as -inf (as in the reference), so every row still yields k valid
// experts; its score is kept as it is. Insertion into a sorted buffer: k is
// small (<= 8 in every supported model) and most candidates are rejected by the
// first comparison.
class TopK {
 public:
  explicit TopK(int64_t capacity) : scores_(capacity), indices_(capacity) {}

  void clear() { size_ = 0; }

  void offer(float score, int32_t index) {
    const float key = rank_key(score);
    const int64_t capacity = static_cast<int64_t>(scores_.size());
    if (size_ == capacity && !(key > rank_key(scores_[capacity - 1]))) return;
    int64_t pos = size_ < capacity ? size_++ : capacity - 1;
    for (; pos > 0 && key > rank_key(scores_[pos - 1]); --pos) {
      scores_[pos] = scores_[pos - 1];
      indices_[pos] = indices_[pos - 1];
    }
    scores_[pos] = score;
    indices_[pos] = index;
  }

  float score(int64_t rank) const { return scores_[rank]; }
  int32_t index(int64_t rank) const { return indices_[rank]; }

 private:
  // A score as ranked.
  static float rank_key(float score) { return std::isnan(score) ? -INFINITY : score; }

  std::vector<float> scores_;
  std::vector<int32_t> indices_;
  int64_t size_ = 0;
};

// Per-thread buffers, allocated once per call rather than once per token.
struct RowScratch {
  RowScratch(const RoutingConfig& config, int64_t E)
      : logits(E), scores(E), group_kept(config.n_group), experts(config.top_k), groups(config.topk_group) {}

  std::vector<float> logits;  // the token's row, decoded to f32
  std::vector<float> scores;  // probabilities, or sigmoid scores
  std::vector<char> group_kept;
  TopK experts;
  TopK groups;
};

void decode_row(const void* logits, tmoe_dtype dtype, int64_t begin, int64_t E, float* out) {
  switch (dtype) {
    case TMOE_DTYPE_BF16: {
      const uint16_t* row = static_cast<const uint16_t*>(logits) + begin;
      for (int64_t e = 0; e < E; ++e) out[e] = bf16_to_f32(row[e]);
      break;
    }
    case TMOE_DTYPE_F16: {
      const uint16_t* row = static_cast<const uint16_t*>(logits) + begin;
      for (int64_t e = 0; e < E; ++e) out[e] = f16_to_f32(row[e]);
      break;
    }
    default: {
      const float* row = static_cast<const float*>(logits) + begin;
      std::copy(row, row + E, out);
    }
  }
}

// A zero sum happens only when every chosen sigmoid score underflowed; the
// weights then stay 0 instead of becoming NaN.
void divide_by_sum(float* weights, int64_t k) {
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) sum += weights[j];
  if (!(sum > 0.0f)) return;
  for (int64_t j = 0; j < k; ++j) weights[j] /= sum;
}

void softmax_topk_row(const RoutingConfig& config, int64_t E, RowScratch& scratch, int32_t* ids, float* weights) {
  const float* logits = scratch.logits.data();
  float* probs = scratch.scores.data();
  // Subtracting the maximum keeps exp() in [0, 1]: no overflow, and the
  // largest term is exactly 1, so the sum cannot underflow to 0.
  const float max_logit = *std::max_element(logits, logits + E);
  float sum = 0.0f;
  for (int64_t e = 0; e < E; ++e) {
    probs[e] = std::exp(logits[e] - max_logit);
    sum += probs[e];
  }
  scratch.experts.clear();
  for (int64_t e = 0; e < E; ++e) scratch.experts.offer(probs[e] / sum, static_cast<int32_t>(e));
  for (int64_t j = 0; j < config.top_k; ++j) {
    ids[j] = scratch.experts.index(j);
    weights[j] = scratch.experts.score(j);
  }
  if (config.renormalize) divide_by_sum(weights, config.top_k);
}

void topk_softmax_row(const RoutingConfig& config, int64_t E, RowScratch& scratch, int32_t* ids, float* weights) {
  const float* logits = scratch.logits.data();
  scratch.experts.clear();
  for (int64_t e = 0; e < E; ++e) scratch.experts.offer(logits[e], static_cast<int32_t>(e));
  // The best chosen logit comes first: subtracting it is the max subtraction.
  const float max_logit = scratch.experts.score(0);
  float sum = 0.0f;
  for (int64_t j = 0; j < config.top_k; ++j) {
    ids[j] = scratch.experts.index(j);
    weights[j] = std::exp(scratch.experts.score(j) - max_logit);
    sum += weights[j];
  }
  for (int64_t j = 0; j < config.top_k; ++j) weights[j] /= sum;
}

void sigmoid_grouped_topk_row(const RoutingConfig& config, int64_t E, RowScratch& scratch, int32_t* ids,
                              float* weights) {
  const float* logits = scratch.logits.data();
  float* sigmoid = scratch.scores.data();
  // Selection runs on the biased score, computed where needed from these.
  for (int64_t e = 0; e < E; ++e) sigmoid[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  auto biased = [&](int64_t e) { return config.correction_bias ? sigmoid[e] + config.correction_bias[e] : sigmoid[e]; };

  const int64_t group_size = E / config.n_group;
  scratch.groups.clear();
  for (int64_t g = 0; g < config.n_group; ++g) {
    float best = -INFINITY, second = -INFINITY;
    for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) {
      const float b = biased(e);
      if (b > best) {
        second = best;
        best = b;
      } else if (b > second) {
        second = b;
      }
    }
    scratch.groups.offer(group_size == 1 ? best : best + second, static_cast<int32_t>(g));
  }
  std::fill(scratch.group_kept.begin(), scratch.group_kept.end(), 0);
  for (int64_t rank = 0; rank < config.topk_group; ++rank) scratch.group_kept[scratch.groups.index(rank)] = 1;

  // Kept groups are visited in ascending order, so experts arrive in ascending index order.
  scratch.experts.clear();
  for (int64_t g = 0; g < config.n_group; ++g) {
    if (!scratch.group_kept[g]) continue;
    for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) {
      scratch.experts.offer(biased(e), static_cast<int32_t>(e));
    }
  }
  for (int64_t j = 0; j < config.top_k; ++j) {
    ids[j] = scratch.experts.index(j);
    weights[j] = sigmoid[ids[j]];
  }
  if (config.renormalize) divide_by_sum(weights, config.top_k);
  for (int64_t j = 0; j < config.top_k; ++j) weights[j] *= config.routed_scaling_factor;
}

}  // namespace

void route(const RoutingConfig& config, const void* logits, tmoe_dtype logits_dtype, int64_t T, int64_t E, int32_t* ids,
           float* weights) {
  const int64_t k = config.top_k;
  // Threads pay off only for prefill-sized calls; a decode step routes a few rows.
#pragma omp parallel if (T * E >= (int64_t{1} << 16))
  {
    RowScratch scratch(config, E);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      decode_row(logits, logits_dtype, t * E, E, scratch.logits.data());
      int32_t* row_ids = ids + t * k;
      float* row_weights = weights + t * k;
      switch (config.mode) {
        case TMOE_ROUTING_SOFTMAX_TOPK:
          softmax_topk_row(config, E, scratch, row_ids, row_weights);
          break;
        case TMOE_ROUTING_TOPK_SOFTMAX:
          topk_softmax_row(config, E, scratch, row_ids, row_weights);
          break;
        case TMOE_ROUTING_SIGMOID_GROUPED_TOPK:
          sigmoid_grouped_topk_row(config, E, scratch, row_ids, row_weights);
          break;
      }
    }
  }
}

}  // namespace tmoe
