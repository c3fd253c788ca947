// Training-order samplers, reproducing the reference orderings draw for draw:
//  * random: torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch));
//  * modality-length grouped (LLaVA/MGM `group_by_modality_length`, spec §10), with every
//    torch.randperm drawn from one CPU generator seeded with seed + epoch, in the reference's
//    call order (mm lists, then lang lists, then the megabatch shuffle);
//  * sharding as accelerate's BatchSamplerShard (split_batches=False, even_batches=True):
//    consecutive per-device batches dealt round-robin, the tail completed from the start;
//  * a resumable per-rank batch stream (epoch, seed, position).
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/json.h"
#include "data/llava.h"

namespace mgm::data {

// A CPU generator in the state of torch.Generator().manual_seed(seed).
at::Generator make_cpu_generator(uint64_t seed);
// torch.randperm(n, generator=gen) (int64, CPU).
std::vector<int64_t> randperm(int64_t n, at::Generator& gen);

// Number of words by Python's str.split() (Unicode whitespace, runs collapsed).
int64_t python_word_count(const std::string& s);
// dataset.modality_lengths: +sum of word counts over turns for image samples, minus for text.
std::vector<int64_t> modality_lengths(const std::vector<Sample>& samples);

// transformers/LLaVA get_length_grouped_indices (one randperm on gen).
std::vector<int64_t> length_grouped_indices(const std::vector<int64_t>& lengths,
                                            int64_t batch_size, int64_t world_size,
                                            at::Generator& gen);
// LLaVA get_modality_length_grouped_indices (all randperms on gen). Throws on a zero length.
std::vector<int64_t> modality_length_grouped_indices(const std::vector<int64_t>& lengths,
                                                     int64_t batch_size, int64_t world_size,
                                                     at::Generator& gen);

// This rank's batches of a global order (accelerate BatchSamplerShard, split_batches=False).
std::vector<std::vector<int64_t>> shard_batches(const std::vector<int64_t>& order,
                                                int64_t batch_size, int64_t num_processes,
                                                int64_t rank, bool drop_last = false,
                                                bool even_batches = true);

enum class SamplerKind { kRandom, kModalityGrouped };

struct SamplerConfig {
  SamplerKind kind = SamplerKind::kRandom;
  uint64_t seed = 42;
  int64_t batch_size = 8;      // per device
  int64_t num_processes = 1;   // data-parallel ranks
  int64_t rank = 0;
  int64_t grad_accum = 1;      // grouping world = num_processes * grad_accum (as the reference)
  bool drop_last = false;
};

struct SamplerState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t position = 0;  // batches of this rank already handed out in `epoch`
  Json to_json() const;
  static SamplerState from_json(const Json& j);
};

class Sampler {
 public:
  // lengths: modality_lengths() (only read for kModalityGrouped; size = dataset size).
  Sampler(const SamplerConfig& cfg, std::vector<int64_t> lengths);
  Sampler(const SamplerConfig& cfg, int64_t dataset_size);

  // The global order of an epoch (before sharding).
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  int64_t batches_per_epoch() const;

  // Next batch of this rank; at the end of an epoch moves to the next one.
  std::vector<int64_t> next();
  void set_epoch(int64_t epoch);  // starts `epoch` from its beginning
  SamplerState state() const;
  void restore(const SamplerState& s);

 private:
  void build();
  SamplerConfig cfg_;
  std::vector<int64_t> lengths_;
  int64_t n_ = 0;
  int64_t epoch_ = 0;
  int64_t position_ = 0;
  int64_t built_epoch_ = -1;
  std::vector<std::vector<int64_t>> batches_;
};

}  // namespace mgm::data
