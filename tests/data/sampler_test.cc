// Samplers: random and modality-length-grouped orders identical to tests/parity/
// sampler_reference.py (torch.randperm on identically seeded generators), accelerate-style
// sharding, word counts as Python's str.split(), and mid-epoch resume.
#include "data/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "common/error.h"
#include "tests_util.h"

namespace mgm::data {
namespace {

const Json& reference() {
  static Json j = [] {
    std::string d = test::temp_dir("sampler_ref");
    std::string out;
    int rc = test::run_python(
        test::source_dir() + "/tests/parity/sampler_reference.py orders " + d + "/o.json", &out);
    if (rc != 0) throw Error("sampler_reference.py failed: " + out);
    return read_json_file(d + "/o.json");
  }();
  return j;
}

TEST(Sampler, RandomOrderMatchesTorchRandperm) {
  const Json& ref = reference();
  ASSERT_GE(ref["random"].size(), 5u);
  for (const auto& c : ref["random"]) {
    at::Generator g = make_cpu_generator(c["seed"].get<uint64_t>());
    EXPECT_EQ(randperm(c["n"].get<int64_t>(), g), c["order"].get<std::vector<int64_t>>())
        << "n=" << c["n"] << " seed=" << c["seed"];
  }
  // The sampler's epoch e uses seed + e.
  SamplerConfig cfg;
  cfg.seed = 42;
  Sampler s(cfg, 100000);
  EXPECT_EQ(s.epoch_order(1), ref["random"][4]["order"].get<std::vector<int64_t>>());
  cfg.seed = 41;
  EXPECT_EQ(Sampler(cfg, 1000).epoch_order(1), ref["random"][2]["order"].get<std::vector<int64_t>>());
}

TEST(Sampler, ModalityGroupedMatchesReference) {
  const Json& ref = reference();
  ASSERT_GE(ref["grouped"].size(), 21u);
  for (const auto& c : ref["grouped"]) {
    auto lengths = c["lengths"].get<std::vector<int64_t>>();
    at::Generator g = make_cpu_generator(c["seed"].get<uint64_t>());
    auto got = modality_length_grouped_indices(lengths, c["bs"].get<int64_t>(),
                                               c["ws"].get<int64_t>(), g);
    EXPECT_EQ(got, c["order"].get<std::vector<int64_t>>())
        << c["name"].get<std::string>() << " seed " << c["seed"];
    std::set<int64_t> uniq(got.begin(), got.end());
    EXPECT_EQ(uniq.size(), lengths.size());
  }
}

TEST(Sampler, ModalityGroupedMegabatchesAreSingleModality) {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 700; ++i) lengths.push_back((i % 3 == 0 ? -1 : 1) * (1 + i % 37));
  at::Generator g = make_cpu_generator(5);
  const int64_t bs = 4, ws = 8, mb = bs * ws;
  auto order = modality_length_grouped_indices(lengths, bs, ws, g);
  ASSERT_EQ(order.size(), lengths.size());
  // 466 mm (14 full megabatches + 18), 234 lang (7 full + 10): the last 28 are the mixed tail.
  const size_t full = order.size() - 28;
  ASSERT_EQ(full % mb, 0u);
  for (size_t s = 0; s < full; s += mb) {
    bool mm = lengths[static_cast<size_t>(order[s])] > 0;
    for (size_t k = s; k < s + mb; ++k)
      EXPECT_EQ(lengths[static_cast<size_t>(order[k])] > 0, mm) << "megabatch at " << s;
  }
  EXPECT_TRUE(std::is_sorted(order.begin() + static_cast<std::ptrdiff_t>(full), order.end()));
  EXPECT_THROW(modality_length_grouped_indices({3, 0, -2}, 1, 1, g), Error);
}

TEST(Sampler, ShardingMatchesReference) {
  const Json& ref = reference();
  ASSERT_GT(ref["shard"].size(), 100u);
  for (const auto& c : ref["shard"]) {
    auto order = c["order"].get<std::vector<int64_t>>();
    const int64_t nproc = c["nproc"].get<int64_t>();
    for (int64_t r = 0; r < nproc; ++r) {
      auto got = shard_batches(order, c["bs"].get<int64_t>(), nproc, r,
                               c["drop_last"].get<bool>(), c["even"].get<bool>());
      EXPECT_EQ(got, c["ranks"][static_cast<size_t>(r)].get<std::vector<std::vector<int64_t>>>())
          << "n=" << order.size() << " bs=" << c["bs"] << " nproc=" << nproc << " rank=" << r
          << " drop_last=" << c["drop_last"] << " even=" << c["even"];
    }
  }
}

TEST(Sampler, ShardingByHand) {
  std::vector<int64_t> order = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  using B = std::vector<std::vector<int64_t>>;
  EXPECT_EQ(shard_batches(order, 2, 2, 0), (B{{0, 1}, {4, 5}, {8, 9}}));
  EXPECT_EQ(shard_batches(order, 2, 2, 1), (B{{2, 3}, {6, 7}, {0, 1}}));
  // A partial last batch is completed from the start of the order.
  EXPECT_EQ(shard_batches(order, 4, 2, 0), (B{{0, 1, 2, 3}, {8, 9, 0, 1}}));
  EXPECT_EQ(shard_batches(order, 4, 2, 1), (B{{4, 5, 6, 7}, {2, 3, 4, 5}}));
  EXPECT_EQ(shard_batches(order, 4, 2, 1, /*drop_last=*/true), (B{{4, 5, 6, 7}}));
  EXPECT_THROW(shard_batches(order, 4, 2, 2), Error);
}

TEST(Sampler, WordCountsAsPythonSplit) {
  for (const auto& c : reference()["words"])
    EXPECT_EQ(python_word_count(c["s"].get<std::string>()), c["n"].get<int64_t>())
        << c["s"].get<std::string>();
}

TEST(Sampler, ModalityLengthsFromSamples) {
  std::vector<Sample> s(2);
  s[0].images = {"a.jpg"};
  s[0].conversations = {{"human", "<image>\nWhat is  it?"}, {"gpt", "A cat."}};
  s[1].conversations = {{"human", "Hi"}, {"gpt", "Hello there friend"}};
  EXPECT_EQ(modality_lengths(s), (std::vector<int64_t>{6, -4}));
}

void check_resume(const SamplerConfig& cfg, const std::vector<int64_t>& lengths, int64_t take) {
  Sampler a(cfg, lengths);
  for (int64_t i = 0; i < take; ++i) a.next();
  Json saved = a.state().to_json();
  std::vector<std::vector<int64_t>> rest_a;
  for (int i = 0; i < 2 * a.batches_per_epoch() + 3; ++i) rest_a.push_back(a.next());
  Sampler b(cfg, lengths);
  b.restore(SamplerState::from_json(parse_json(saved.dump(), "state")));
  std::vector<std::vector<int64_t>> rest_b;
  for (int i = 0; i < 2 * b.batches_per_epoch() + 3; ++i) rest_b.push_back(b.next());
  EXPECT_EQ(rest_a, rest_b);
}

TEST(Sampler, ResumeMidEpochGivesTheSameRemainingOrder) {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 203; ++i) lengths.push_back((i % 4 == 0 ? -1 : 1) * (1 + (i * 7) % 23));
  SamplerConfig cfg;
  cfg.seed = 11;
  cfg.batch_size = 4;
  cfg.num_processes = 3;
  cfg.rank = 1;
  for (auto kind : {SamplerKind::kRandom, SamplerKind::kModalityGrouped}) {
    cfg.kind = kind;
    Sampler probe(cfg, lengths);
    const int64_t per = probe.batches_per_epoch();
    EXPECT_EQ(per, 17);  // ceil(ceil(203/4)/3)
    for (int64_t take : {int64_t{0}, int64_t{5}, per - 1, per, per + 7}) check_resume(cfg, lengths, take);
  }
  // The batches of one epoch over all ranks cover the dataset.
  cfg.kind = SamplerKind::kModalityGrouped;
  std::set<int64_t> seen;
  for (int64_t r = 0; r < 3; ++r) {
    cfg.rank = r;
    Sampler s(cfg, lengths);
    s.set_epoch(2);
    for (int64_t i = 0; i < s.batches_per_epoch(); ++i)
      for (int64_t x : s.next()) seen.insert(x);
    EXPECT_EQ(s.state().epoch, 2);
  }
  EXPECT_EQ(seen.size(), lengths.size());
  // A different seed is refused.
  Sampler s(cfg, lengths);
  SamplerState st{99, 0, 0};
  EXPECT_THROW(s.restore(st), Error);
  st.seed = cfg.seed;
  st.position = 1000;
  EXPECT_THROW(s.restore(st), Error);
}

}  // namespace
}  // namespace mgm::data
