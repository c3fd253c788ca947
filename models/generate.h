// Batched text generation for MGM: the prompts (with their images) are prefilled once, then
// decoded token by token with the Gemma KV cache. Sequences are left-padded with per-sequence
// position ids and an explicit padding mask, so every sequence sees exactly the positions and keys
// it would see alone: greedy batched output equals one-at-a-time output (the reference decodes
// one question at a time). Device-agnostic: everything runs on the model's device.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "models/mgm.h"

namespace mgm::models {

struct GenerationConfig {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;  // 0: greedy (the reference's do_sample = temperature > 0)
  double top_p = 1.0;        // nucleus filter when sampling (1: off)
  int64_t top_k = 0;         // top-k filter when sampling (0: off; transformers' default is 50)
  // A sequence ends when it emits one of these (the token is not returned).
  std::vector<int64_t> stop_token_ids;
  // A sequence also ends once its decoded new text contains one of these; needs `decode`. The
  // tokens that completed the string are returned; trim the text with trim_at_stop_string().
  std::vector<std::string> stop_strings;
  std::function<std::string(const std::vector<int64_t>&)> decode;
  uint64_t seed = 0;  // sampling RNG (CPU generator, so a seed gives the same draws anywhere)
  // When set (one per prompt), each sequence samples from its own CPU generator seeded so, and
  // its draws do not depend on the batch it is in; otherwise one generator (seed) serves all.
  std::vector<uint64_t> row_seeds;
};

// prompts: token ids with kImageTokenIndex markers. images / images_aux: either one pair per
// marker in prompt order, or one pair per prompt ([B,3,s,s] / [B,3,S,S]) where prompts without a
// marker hold an ignored placeholder; undefined when no prompt has a marker. Returns the new
// tokens of every sequence (stop token excluded). Runs without autograd.
std::vector<std::vector<int64_t>> generate(MgmForCausalLM& model,
                                           const std::vector<std::vector<int64_t>>& prompts,
                                           const at::Tensor& images, const at::Tensor& images_aux,
                                           const GenerationConfig& cfg);

// The text before the first occurrence of any stop string (all of it when none occurs).
std::string trim_at_stop_string(const std::string& text, const std::vector<std::string>& stops);

// One sampling step over fp32 logits [B, V] as transformers' warpers do it: temperature, then
// top-k, then top-p (keeping at least one token), then a multinomial draw with `gens`: one
// generator for the whole batch, or one per row. Greedy (argmax) when temperature <= 0.
// Returns the chosen ids.
std::vector<int64_t> select_next_tokens(const at::Tensor& logits, const GenerationConfig& cfg,
                                        std::vector<at::Generator>& gens);

}  // namespace mgm::models
