#include "data/sampler.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/randperm.h>

#include <algorithm>
#include <limits>
#include <mutex>

#include "common/error.h"

namespace mgm::data {

at::Generator make_cpu_generator(uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);  // what Generator.manual_seed does
  return gen;
}

std::vector<int64_t> randperm(int64_t n, at::Generator& gen) {
  at::Tensor p = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
  const int64_t* d = p.data_ptr<int64_t>();
  return std::vector<int64_t>(d, d + n);
}

namespace {

// Py_UNICODE_ISSPACE.
bool py_space(uint32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
  return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
         c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// Decodes one UTF-8 code point at s[i]; advances i. Malformed bytes decode as themselves.
uint32_t next_cp(const std::string& s, size_t* i) {
  const auto b = static_cast<unsigned char>(s[*i]);
  int extra = b >= 0xf0 ? 3 : b >= 0xe0 ? 2 : b >= 0xc0 ? 1 : 0;
  if (extra > 0 && *i + static_cast<size_t>(extra) >= s.size()) extra = 0;  // truncated
  uint32_t c = extra == 0 ? b : extra == 1 ? (b & 0x1fu) : extra == 2 ? (b & 0x0fu) : (b & 0x07u);
  for (int k = 1; k <= extra; ++k) {
    const auto cb = static_cast<unsigned char>(s[*i + static_cast<size_t>(k)]);
    if ((cb & 0xc0u) != 0x80u) {  // malformed: take the lead byte alone
      *i += 1;
      return b;
    }
    c = (c << 6) | (cb & 0x3fu);
  }
  *i += 1 + static_cast<size_t>(extra);
  return c;
}

// split_to_even_chunks: strided when len % num_chunks != 0, else greedy balancing (first chunk
// with the smallest running sum; a full chunk's sum becomes +inf).
std::vector<std::vector<int64_t>> split_to_even_chunks(const std::vector<int64_t>& idx,
                                                       const std::vector<int64_t>& lengths,
                                                       int64_t num_chunks) {
  const size_t k = static_cast<size_t>(num_chunks);
  std::vector<std::vector<int64_t>> chunks(k);
  if (idx.size() % k != 0) {
    for (size_t c = 0; c < k; ++c)
      for (size_t j = c; j < idx.size(); j += k) chunks[c].push_back(idx[j]);
    return chunks;
  }
  const size_t per = idx.size() / k;
  std::vector<double> sums(k, 0.0);
  for (int64_t i : idx) {
    size_t best = static_cast<size_t>(std::min_element(sums.begin(), sums.end()) - sums.begin());
    chunks[best].push_back(i);
    sums[best] += static_cast<double>(lengths[static_cast<size_t>(i)]);
    if (chunks[best].size() == per) sums[best] = std::numeric_limits<double>::infinity();
  }
  return chunks;
}

}  // namespace

int64_t python_word_count(const std::string& s) {
  int64_t n = 0;
  bool in_word = false;
  size_t i = 0;
  while (i < s.size()) {
    const bool sp = py_space(next_cp(s, &i));
    if (!sp && !in_word) ++n;
    in_word = !sp;
  }
  return n;
}

std::vector<int64_t> modality_lengths(const std::vector<Sample>& samples) {
  std::vector<int64_t> out;
  out.reserve(samples.size());
  for (const auto& s : samples) {
    int64_t l = 0;
    for (const auto& t : s.conversations) l += python_word_count(t.value);
    out.push_back(s.has_image() ? l : -l);
  }
  return out;
}

std::vector<int64_t> length_grouped_indices(const std::vector<int64_t>& lengths,
                                            int64_t batch_size, int64_t world_size,
                                            at::Generator& gen) {
  if (batch_size <= 0 || world_size <= 0) throw Error("length grouping: sizes must be positive");
  const int64_t n = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> perm = randperm(n, gen);
  const int64_t mb = world_size * batch_size;
  std::vector<int64_t> out;
  out.reserve(perm.size());
  for (int64_t start = 0; start < n; start += mb) {
    std::vector<int64_t> m(perm.begin() + start, perm.begin() + std::min(n, start + mb));
    // sorted(key=length, reverse=True): stable, ties keep their order.
    std::stable_sort(m.begin(), m.end(), [&](int64_t a, int64_t b) {
      return lengths[static_cast<size_t>(a)] > lengths[static_cast<size_t>(b)];
    });
    for (const auto& chunk : split_to_even_chunks(m, lengths, world_size))
      out.insert(out.end(), chunk.begin(), chunk.end());
  }
  return out;
}

std::vector<int64_t> modality_length_grouped_indices(const std::vector<int64_t>& lengths,
                                                     int64_t batch_size, int64_t world_size,
                                                     at::Generator& gen) {
  bool pos = true, neg = true;
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] == 0)
      throw Error("modality length grouping: sample " + std::to_string(i) +
                  " has zero length (no words in any turn)");
    pos = pos && lengths[i] > 0;
    neg = neg && lengths[i] < 0;
  }
  if (pos || neg) return length_grouped_indices(lengths, batch_size, world_size, gen);
  std::vector<int64_t> mm_idx, mm_len, lang_idx, lang_len;
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] > 0) {
      mm_idx.push_back(static_cast<int64_t>(i));
      mm_len.push_back(lengths[i]);
    } else {
      lang_idx.push_back(static_cast<int64_t>(i));
      lang_len.push_back(-lengths[i]);
    }
  }
  std::vector<int64_t> mm, lang;
  for (int64_t j : length_grouped_indices(mm_len, batch_size, world_size, gen))
    mm.push_back(mm_idx[static_cast<size_t>(j)]);
  for (int64_t j : length_grouped_indices(lang_len, batch_size, world_size, gen))
    lang.push_back(lang_idx[static_cast<size_t>(j)]);
  const size_t mb = static_cast<size_t>(world_size * batch_size);
  auto cut = [mb](const std::vector<int64_t>& v) {
    std::vector<std::vector<int64_t>> r;
    for (size_t s = 0; s < v.size(); s += mb)
      r.emplace_back(v.begin() + static_cast<std::ptrdiff_t>(s),
                     v.begin() + static_cast<std::ptrdiff_t>(std::min(v.size(), s + mb)));
    return r;
  };
  auto mm_mb = cut(mm), lang_mb = cut(lang);  // both non-empty here
  std::vector<int64_t> additional = mm_mb.back();
  additional.insert(additional.end(), lang_mb.back().begin(), lang_mb.back().end());
  std::vector<std::vector<int64_t>> megabatches(mm_mb.begin(), mm_mb.end() - 1);
  megabatches.insert(megabatches.end(), lang_mb.begin(), lang_mb.end() - 1);
  std::vector<int64_t> order = randperm(static_cast<int64_t>(megabatches.size()), gen);
  std::vector<int64_t> out;
  out.reserve(lengths.size());
  for (int64_t m : order) {
    const auto& v = megabatches[static_cast<size_t>(m)];
    out.insert(out.end(), v.begin(), v.end());
  }
  std::sort(additional.begin(), additional.end());
  out.insert(out.end(), additional.begin(), additional.end());
  return out;
}

std::vector<std::vector<int64_t>> shard_batches(const std::vector<int64_t>& order,
                                                int64_t batch_size, int64_t num_processes,
                                                int64_t rank, bool drop_last, bool even_batches) {
  if (batch_size <= 0 || num_processes <= 0 || rank < 0 || rank >= num_processes)
    throw Error("shard_batches: bad batch_size/num_processes/rank");
  const size_t bs = static_cast<size_t>(batch_size);
  // The per-device BatchSampler.
  std::vector<std::vector<int64_t>> all;
  for (size_t s = 0; s < order.size(); s += bs) {
    if (drop_last && s + bs > order.size()) break;
    all.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(s),
                     order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), s + bs)));
  }
  std::vector<std::vector<int64_t>> out;
  std::vector<int64_t> initial, to_yield, batch;
  int64_t idx = 0;
  for (; idx < static_cast<int64_t>(all.size()); ++idx) {
    batch = all[static_cast<size_t>(idx)];
    if (!drop_last && idx < num_processes) initial.insert(initial.end(), batch.begin(), batch.end());
    if (idx % num_processes == rank) to_yield = batch;
    if (idx % num_processes == num_processes - 1 && batch.size() == bs) {
      out.push_back(to_yield);
      to_yield.clear();
    }
  }
  if (all.empty()) return out;
  --idx;  // the last enumerated index, as Python's loop variable
  if (drop_last || initial.empty()) return out;
  if (!even_batches) {
    if (!to_yield.empty()) out.push_back(to_yield);
    return out;
  }
  if (to_yield.size() == bs) out.push_back(to_yield);
  while (initial.size() < static_cast<size_t>(num_processes) * bs) {
    std::vector<int64_t> copy = initial;
    initial.insert(initial.end(), copy.begin(), copy.end());
  }
  if (batch.size() == bs) {
    batch.clear();
    ++idx;
  }
  size_t cycle = 0;
  while (idx % num_processes != 0 || !batch.empty()) {
    const size_t end = cycle + bs - batch.size();
    batch.insert(batch.end(), initial.begin() + static_cast<std::ptrdiff_t>(cycle),
                 initial.begin() + static_cast<std::ptrdiff_t>(end));
    if (idx % num_processes == rank) out.push_back(batch);
    cycle = end;
    batch.clear();
    ++idx;
  }
  return out;
}

Json SamplerState::to_json() const {
  return Json{{"seed", seed}, {"epoch", epoch}, {"position", position}};
}

SamplerState SamplerState::from_json(const Json& j) {
  SamplerState s;
  s.seed = json_at(j, "seed", "sampler state").get<uint64_t>();
  s.epoch = json_int(j, "epoch", "sampler state");
  s.position = json_int(j, "position", "sampler state");
  if (s.epoch < 0 || s.position < 0) throw Error("sampler state: negative epoch or position");
  return s;
}

Sampler::Sampler(const SamplerConfig& cfg, std::vector<int64_t> lengths)
    : cfg_(cfg), lengths_(std::move(lengths)), n_(static_cast<int64_t>(lengths_.size())) {
  if (cfg_.batch_size <= 0 || cfg_.num_processes <= 0 || cfg_.grad_accum <= 0 || cfg_.rank < 0 ||
      cfg_.rank >= cfg_.num_processes)
    throw Error("sampler: bad batch_size/num_processes/grad_accum/rank");
}

Sampler::Sampler(const SamplerConfig& cfg, int64_t dataset_size)
    : Sampler(cfg, std::vector<int64_t>(static_cast<size_t>(dataset_size), 1)) {
  if (cfg.kind == SamplerKind::kModalityGrouped)
    throw Error("sampler: modality grouping needs the per-sample lengths");
}

std::vector<int64_t> Sampler::epoch_order(int64_t epoch) const {
  at::Generator gen = make_cpu_generator(cfg_.seed + static_cast<uint64_t>(epoch));
  if (cfg_.kind == SamplerKind::kRandom) return randperm(n_, gen);
  return modality_length_grouped_indices(lengths_, cfg_.batch_size,
                                         cfg_.num_processes * cfg_.grad_accum, gen);
}

void Sampler::build() {
  if (built_epoch_ == epoch_) return;
  batches_ = shard_batches(epoch_order(epoch_), cfg_.batch_size, cfg_.num_processes, cfg_.rank,
                           cfg_.drop_last);
  built_epoch_ = epoch_;
}

int64_t Sampler::batches_per_epoch() const {
  std::vector<int64_t> dummy(static_cast<size_t>(n_));
  return static_cast<int64_t>(
      shard_batches(dummy, cfg_.batch_size, cfg_.num_processes, cfg_.rank, cfg_.drop_last).size());
}

std::vector<int64_t> Sampler::next() {
  build();
  if (batches_.empty()) throw Error("sampler: an epoch has no batches");
  if (position_ >= static_cast<int64_t>(batches_.size())) {
    ++epoch_;
    position_ = 0;
    build();
  }
  return batches_[static_cast<size_t>(position_++)];
}

void Sampler::set_epoch(int64_t epoch) {
  epoch_ = epoch;
  position_ = 0;
}

SamplerState Sampler::state() const { return SamplerState{cfg_.seed, epoch_, position_}; }

void Sampler::restore(const SamplerState& s) {
  if (s.seed != cfg_.seed)
    throw Error("sampler: resuming with seed " + std::to_string(cfg_.seed) +
                " but the state was saved with seed " + std::to_string(s.seed));
  epoch_ = s.epoch;
  position_ = s.position;
  build();
  if (position_ > static_cast<int64_t>(batches_.size()))
    throw Error("sampler: saved position " + std::to_string(position_) + " is past the epoch's " +
                std::to_string(batches_.size()) + " batches");
}

}  // namespace mgm::data
