// Generation on the tiny random MGM: batched decoding (left padding, per-sequence positions,
// KV cache) must give, token for token, what one-at-a-time decoding gives and what recomputing
// the whole sequence without a cache at every step gives (an independent greedy loop over the
// plain forward pass); stop tokens, max_new_tokens and the sampling filters behave as
// transformers' (top_k = 1 or a tiny top_p reduce sampling to greedy; a seed fixes the draws).
#include "models/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/error.h"
#include "tests_util.h"

namespace mgm::models {
namespace {

class Generate : public ::testing::Test {
 protected:
  static MgmForCausalLM& model() {
    static MgmForCausalLM m = [] {
      at::manual_seed(7);
      const MgmConfig c = MgmConfig::from_file(test::source_dir() + "/configs/models/tiny.json");
      MgmForCausalLM mm(c);
      mm->reset_tower_parameters();
      // Larger weights than the 0.02 init make the next-token distribution far from uniform,
      // so greedy choices are well separated and sequences vary.
      at::NoGradGuard ng;
      for (auto& p : mm->llm->parameters()) p.mul_(8.0);
      mm->eval();
      return mm;
    }();
    return m;
  }
  static const MgmConfig& cfg() { return model()->config(); }

  // Three prompts of different lengths: image, text-only, image (marker mid-prompt).
  std::vector<std::vector<int64_t>> prompts() const {
    return {{2, 17, kImageTokenIndex, 40, 41, 42},
            {2, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109},
            {2, 9, 8, 7, 6, kImageTokenIndex, 55, 56, 57, 58, 59, 60, 61, 62, 63}};
  }
  void make_images(at::Tensor* lr, at::Tensor* aux) const {
    at::manual_seed(11);
    *aux = at::randn({3, 3, cfg().image_size_aux, cfg().image_size_aux});
    *lr = at::randn({3, 3, cfg().clip.image_size, cfg().clip.image_size});
  }

  // Greedy decoding by recomputing the full forward (no cache, no padding) at every step.
  std::vector<int64_t> greedy_recompute(const std::vector<int64_t>& prompt, const at::Tensor& lr,
                                        const at::Tensor& aux, int64_t max_new, int64_t stop) {
    c10::InferenceMode im;
    std::vector<int64_t> seq = prompt, out;
    for (int64_t i = 0; i < max_new; ++i) {
      const at::Tensor ids = at::tensor(seq, at::kLong).unsqueeze(0);
      auto o = model()->forward(ids, {}, {}, lr, aux);
      const int64_t tok = o.logits[0][o.logits.size(1) - 1].argmax().item<int64_t>();
      if (tok == stop) break;
      out.push_back(tok);
      seq.push_back(tok);
    }
    return out;
  }
};

TEST_F(Generate, BatchedEqualsOneAtATimeAndRecompute) {
  at::Tensor lr, aux;
  make_images(&lr, &aux);
  GenerationConfig g;
  g.max_new_tokens = 12;
  const auto ps = prompts();
  const auto batched = generate(model(), ps, lr, aux, g);
  ASSERT_EQ(batched.size(), 3u);
  std::set<std::vector<int64_t>> distinct;
  for (size_t b = 0; b < ps.size(); ++b) {
    const bool img = b != 1;
    const at::Tensor l = img ? lr.slice(0, b, b + 1) : at::Tensor();
    const at::Tensor a = img ? aux.slice(0, b, b + 1) : at::Tensor();
    const auto single = generate(model(), {ps[b]}, l, a, g);
    EXPECT_EQ(batched[b], single[0]) << "prompt " << b;
    EXPECT_EQ(single[0], greedy_recompute(ps[b], l, a, g.max_new_tokens, -1)) << "prompt " << b;
    EXPECT_EQ(batched[b].size(), 12u);  // no stop token: exactly max_new_tokens
    distinct.insert(batched[b]);
  }
  EXPECT_EQ(distinct.size(), 3u);  // the prompts really lead to different continuations

  // Images given one per marker (2 rows) instead of one per prompt.
  const at::Tensor rows = at::tensor(std::vector<int64_t>{0, 2}, at::kLong);
  const auto per_marker =
      generate(model(), ps, lr.index_select(0, rows), aux.index_select(0, rows), g);
  EXPECT_EQ(per_marker, batched);
  // The image matters: another image changes the answer of the image prompts only.
  const auto other = generate(model(), ps, lr.flip({0}), aux.flip({0}), g);
  EXPECT_EQ(other[1], batched[1]);
  EXPECT_NE(other[0], batched[0]);
}

TEST_F(Generate, StopTokenEndsOnlyItsSequence) {
  at::Tensor lr, aux;
  make_images(&lr, &aux);
  GenerationConfig g;
  g.max_new_tokens = 10;
  const auto ps = prompts();
  const auto free_run = generate(model(), ps, lr, aux, g);
  // Stop on the 4th token sequence 0 would produce (first occurrence).
  const int64_t stop = free_run[0][3];
  g.stop_token_ids = {stop};
  const auto stopped = generate(model(), ps, lr, aux, g);
  for (size_t b = 0; b < ps.size(); ++b) {
    std::vector<int64_t> want;
    for (int64_t t : free_run[b]) {
      if (t == stop) break;
      want.push_back(t);
    }
    EXPECT_EQ(stopped[b], want) << "prompt " << b;
    const bool img = b != 1;
    EXPECT_EQ(stopped[b], greedy_recompute(ps[b], img ? lr.slice(0, b, b + 1) : at::Tensor(),
                                           img ? aux.slice(0, b, b + 1) : at::Tensor(), 10, stop));
  }
  EXPECT_LE(stopped[0].size(), 3u);

  g.stop_token_ids.clear();
  g.max_new_tokens = 0;
  for (const auto& o : generate(model(), ps, lr, aux, g)) EXPECT_TRUE(o.empty());
  g.max_new_tokens = 1;
  const auto one = generate(model(), ps, lr, aux, g);
  for (size_t b = 0; b < ps.size(); ++b) EXPECT_EQ(one[b], std::vector<int64_t>{free_run[b][0]});
}

TEST_F(Generate, StopStringsUseTheDecodedText) {
  GenerationConfig g;
  g.max_new_tokens = 10;
  const std::vector<std::vector<int64_t>> ps = {prompts()[1]};
  const auto free_run = generate(model(), ps, {}, {}, g);
  // "Decode" each token as its id in brackets; stop at the third token's text.
  g.decode = [](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t t : ids) s += "[" + std::to_string(t) + "]";
    return s;
  };
  g.stop_strings = {"[" + std::to_string(free_run[0][2]) + "]"};
  const auto out = generate(model(), ps, {}, {}, g);
  size_t first = 0;
  while (free_run[0][first] != free_run[0][2]) ++first;
  EXPECT_EQ(out[0], std::vector<int64_t>(free_run[0].begin(), free_run[0].begin() + first + 1));
  EXPECT_EQ(trim_at_stop_string("abc</s>def", {"zz", "</s>"}), "abc");
  EXPECT_EQ(trim_at_stop_string("abc", {"zz"}), "abc");
  g.decode = nullptr;
  EXPECT_THROW(generate(model(), ps, {}, {}, g), Error);
}

TEST_F(Generate, SamplingIsSeededAndFiltersReduceToGreedy) {
  at::Tensor lr, aux;
  make_images(&lr, &aux);
  const auto ps = prompts();
  GenerationConfig greedy;
  greedy.max_new_tokens = 8;
  const auto want = generate(model(), ps, lr, aux, greedy);

  GenerationConfig s = greedy;
  s.temperature = 1.0;
  s.seed = 5;
  const auto a = generate(model(), ps, lr, aux, s);
  EXPECT_EQ(generate(model(), ps, lr, aux, s), a);  // same seed, same draws
  s.seed = 6;
  EXPECT_NE(generate(model(), ps, lr, aux, s), a);
  // One generator per row: a prompt samples the same continuation alone as in the batch.
  GenerationConfig r = s;
  r.row_seeds = {11, 12, 13};
  const auto rows = generate(model(), ps, lr, aux, r);
  std::set<std::vector<int64_t>> distinct(rows.begin(), rows.end());
  EXPECT_EQ(distinct.size(), 3u);
  for (size_t b = 0; b < ps.size(); ++b) {
    const bool img = b != 1;
    GenerationConfig one = r;
    one.row_seeds = {r.row_seeds[b]};
    EXPECT_EQ(generate(model(), {ps[b]}, img ? lr.slice(0, b, b + 1) : at::Tensor(),
                       img ? aux.slice(0, b, b + 1) : at::Tensor(), one)[0],
              rows[b])
        << "prompt " << b;
  }
  s.top_k = 1;  // only the argmax survives
  EXPECT_EQ(generate(model(), ps, lr, aux, s), want);
  s.top_k = 0;
  s.top_p = 1e-6;  // the nucleus is the single most likely token
  EXPECT_EQ(generate(model(), ps, lr, aux, s), want);

  // The filters on hand-made logits: probabilities (0.5, 0.3, 0.15, 0.05).
  const at::Tensor logits =
      at::tensor(std::vector<float>{0.5f, 0.3f, 0.15f, 0.05f}).log().unsqueeze(0);
  std::vector<at::Generator> gen{at::make_generator<at::CPUGeneratorImpl>(1)};
  GenerationConfig f;
  f.temperature = 1.0;
  f.top_p = 0.75;  // cumulative ascending 0.05, 0.2, 0.5 <= 0.25 removes the two smallest
  std::map<int64_t, int> counts;
  for (int i = 0; i < 400; ++i) ++counts[select_next_tokens(logits, f, gen)[0]];
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[0], counts[1]);
  f.top_p = 1.0;
  f.top_k = 3;
  counts.clear();
  for (int i = 0; i < 400; ++i) ++counts[select_next_tokens(logits, f, gen)[0]];
  EXPECT_EQ(counts.size(), 3u);
  EXPECT_EQ(counts.count(3), 0u);
}

TEST_F(Generate, RejectsInconsistentImages) {
  at::Tensor lr, aux;
  make_images(&lr, &aux);
  GenerationConfig g;
  g.max_new_tokens = 2;
  EXPECT_THROW(generate(model(), prompts(), {}, {}, g), Error);
  EXPECT_THROW(generate(model(), prompts(), lr.slice(0, 0, 1), aux.slice(0, 0, 1), g), Error);
  EXPECT_THROW(generate(model(), {}, {}, {}, g), Error);
}

}  // namespace
}  // namespace mgm::models
