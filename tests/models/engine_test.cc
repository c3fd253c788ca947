// The continuous-batching engine on the tiny random MGM: greedy outputs equal models::generate's
// one-at-a-time outputs token for token whatever runs beside them (fewer slots than requests, so
// sequences join and leave mid-flight; a token budget smaller than the prompts, so prefill is
// chunked); seeded sampling does not depend on the batch; streamed deltas add up to the final
// text; stop strings, stop tokens and max_tokens end a request with the right reason;
// cancellation frees the slot; a full queue, a draining engine and a too-long prompt are refused.
#include "models/engine.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include <thread>

#include "common/strings.h"
#include "models/generate.h"
#include "tests_util.h"

namespace mgm::models {
namespace {

using namespace std::chrono_literals;

MgmForCausalLM& tiny_model() {
  static MgmForCausalLM m = [] {
    at::manual_seed(7);
    const MgmConfig c = MgmConfig::from_file(test::source_dir() + "/configs/models/tiny.json");
    MgmForCausalLM mm(c);
    mm->reset_tower_parameters();
    at::NoGradGuard ng;
    for (auto& p : mm->llm->parameters()) p.mul_(8.0);  // peaked, varied greedy outputs
    mm->eval();
    return mm;
  }();
  return m;
}

// Text of ids for stop strings and streaming: "<id>," per token.
std::string fake_decode(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t t : ids) s += str_cat(t, ",");
  return s;
}

struct Collected {
  std::string streamed;  // the deltas joined
  StreamEvent final;
  int events = 0;
};

Collected collect(RequestStream& st, std::chrono::seconds limit = 120s) {
  Collected c;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    for (auto& e : st.wait(200ms)) {
      ++c.events;
      c.streamed += e.text;
      if (e.finished) {
        c.final = e;
        return c;
      }
    }
  }
  ADD_FAILURE() << "no final event within the limit";
  return c;
}

class EngineTest : public ::testing::Test {
 protected:
  const MgmConfig& cfg() { return tiny_model()->config(); }
  // Eight prompts: text-only and with an image (marker at the start or mid-prompt), of lengths
  // from 3 to 40 positions.
  std::vector<std::vector<int64_t>> prompts() {
    std::vector<std::vector<int64_t>> p = {
        {2, 17, kImageTokenIndex, 40, 41, 42},
        {2, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109},
        {2, 9, 8, 7, 6, kImageTokenIndex, 55, 56, 57, 58, 59, 60, 61, 62, 63},
        {2, 300, 301},
        {2, kImageTokenIndex, 7},
    };
    std::vector<int64_t> long_text = {2};
    for (int i = 0; i < 39; ++i) long_text.push_back(20 + (i * 13) % 400);
    p.push_back(long_text);
    p.push_back({2, 450, 451, 452, 453});
    p.push_back({2, kImageTokenIndex, 200, 201, 202, 203, 204, 205, 206});
    return p;
  }
  at::Tensor aux_image(int i) {
    at::manual_seed(100 + i);
    return at::randn({1, 3, cfg().image_size_aux, cfg().image_size_aux});
  }
  at::Tensor lr_image(int i) {
    at::manual_seed(200 + i);
    return at::randn({1, 3, cfg().clip.image_size, cfg().clip.image_size});
  }
  EngineRequest request(const std::vector<int64_t>& prompt, int i, int64_t max_tokens) {
    EngineRequest r;
    r.prompt = prompt;
    if (std::count(prompt.begin(), prompt.end(), kImageTokenIndex) == 1) {
      r.images = lr_image(i);
      r.images_aux = aux_image(i);
    }
    r.sampling.max_tokens = max_tokens;
    return r;
  }
  std::vector<int64_t> reference(const EngineRequest& r, int64_t stop_token) {
    GenerationConfig g;
    g.max_new_tokens = r.sampling.max_tokens;
    g.stop_token_ids = {stop_token};
    return generate(tiny_model(), {r.prompt}, r.images, r.images_aux, g)[0];
  }
};

TEST_F(EngineTest, GreedyEqualsOneAtATimeWhateverRunsBeside) {
  const int64_t stop = 5;
  EngineOptions o;
  o.max_num_seqs = 3;  // 8 requests: sequences join as others leave
  o.max_model_len = 128;
  o.max_num_batched_tokens = 8;  // prompts of up to 40+ positions are prefilled in chunks
  Engine engine(tiny_model(), o, fake_decode, {stop});
  const auto ps = prompts();
  std::vector<EngineRequest> reqs;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (size_t i = 0; i < ps.size(); ++i) {
    reqs.push_back(request(ps[i], static_cast<int>(i), 6 + static_cast<int64_t>(i % 4) * 5));
    streams.push_back(engine.submit(reqs.back()));
  }
  std::set<std::vector<int64_t>> distinct;
  for (size_t i = 0; i < ps.size(); ++i) {
    const Collected c = collect(*streams[i]);
    const auto want = reference(reqs[i], stop);
    EXPECT_EQ(c.final.token_ids, want) << "request " << i;
    EXPECT_EQ(c.final.finish_reason,
              static_cast<int64_t>(want.size()) == reqs[i].sampling.max_tokens ? "length" : "stop")
        << "request " << i;
    EXPECT_EQ(c.streamed, fake_decode(want)) << "request " << i;
    EXPECT_EQ(c.final.completion_tokens, static_cast<int64_t>(want.size()));
    EXPECT_EQ(c.final.prompt_tokens, engine.prompt_positions(reqs[i].prompt));
    distinct.insert(want);
  }
  EXPECT_GE(distinct.size(), 6u);  // the prompts really lead to different outputs
  ASSERT_TRUE(engine.wait_idle(10s));
  const EngineMetrics m = engine.metrics();
  EXPECT_EQ(m.running, 0);
  EXPECT_EQ(m.waiting, 0);
  uint64_t finished = 0;
  for (const auto& [k, v] : m.finished) finished += v;
  EXPECT_EQ(finished, ps.size());
  EXPECT_EQ(m.time_to_first_token.count, ps.size());
}

TEST_F(EngineTest, SeededSamplingDoesNotDependOnTheBatch) {
  EngineOptions o;
  o.max_num_seqs = 4;
  o.max_model_len = 96;
  Engine engine(tiny_model(), o, fake_decode, {});
  const auto ps = prompts();
  auto sampled = [&](size_t i, uint64_t seed) {
    EngineRequest r = request(ps[i], static_cast<int>(i), 10);
    r.sampling.temperature = 1.5;
    r.sampling.top_p = 0.9;
    r.sampling.has_seed = true;
    r.sampling.seed = seed;
    return r;
  };
  const auto alone = collect(*engine.submit(sampled(1, 42))).final.token_ids;
  // The same request among others with other seeds.
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (size_t i = 0; i < 4; ++i) streams.push_back(engine.submit(sampled(i == 2 ? 1 : i, 42 + i)));
  std::vector<std::vector<int64_t>> outs;
  for (auto& s : streams) outs.push_back(collect(*s).final.token_ids);
  EXPECT_NE(outs[2], alone);  // seed 44: other draws
  const auto again = collect(*engine.submit(sampled(1, 42))).final.token_ids;
  EXPECT_EQ(again, alone);
  std::vector<std::shared_ptr<RequestStream>> batch2;
  for (size_t i = 0; i < 3; ++i) batch2.push_back(engine.submit(sampled(i == 0 ? 1 : i + 3, 42)));
  EXPECT_EQ(collect(*batch2[0]).final.token_ids, alone);
  for (size_t i = 1; i < 3; ++i) collect(*batch2[i]);
}

TEST_F(EngineTest, StopStringsEndTheTextBeforeThem) {
  EngineOptions o;
  o.max_model_len = 96;
  Engine engine(tiny_model(), o, fake_decode, {});
  const auto ps = prompts();
  const auto full = collect(*engine.submit(request(ps[1], 1, 10))).final.token_ids;
  ASSERT_EQ(full.size(), 10u);
  // Stop at the 5th token's text (it spans "<id>," so it cannot match earlier by accident unless
  // an earlier token is the same id: then the first occurrence wins, as in trim_at_stop_string).
  EngineRequest r = request(ps[1], 1, 10);
  r.sampling.stop = {str_cat(",", full[4], ",")};
  const Collected c = collect(*engine.submit(r));
  const std::string text = fake_decode(full);
  const std::string want = trim_at_stop_string(text, r.sampling.stop);
  ASSERT_LT(want.size(), text.size());
  EXPECT_EQ(c.streamed, want);
  EXPECT_EQ(c.final.finish_reason, "stop");
  // A stop token ends the request without being part of it.
  EngineRequest t = request(ps[1], 1, 10);
  t.sampling.stop_token_ids = {full[3]};
  const Collected ct = collect(*engine.submit(t));
  EXPECT_EQ(ct.final.finish_reason, "stop");
  const auto first = std::find(full.begin(), full.end(), full[3]);
  EXPECT_EQ(ct.final.token_ids, std::vector<int64_t>(full.begin(), first));
}

TEST_F(EngineTest, TinyTemperatureIsGreedyAndFreeSlotsAddToTheQueue) {
  EngineOptions o;
  o.max_num_seqs = 4;
  o.max_queue_len = 1;
  o.max_model_len = 96;
  Engine engine(tiny_model(), o, fake_decode, {});
  const auto ps = prompts();
  // Four free slots and a queue of one: five requests at once are all taken.
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 5; ++i) {
    EngineRequest r = request(ps[1], 1, 8);
    r.sampling.temperature = 1e-40;  // would overflow as a divisor: treated as greedy
    streams.push_back(engine.submit(std::move(r)));
  }
  const auto greedy = reference(request(ps[1], 1, 8), -1);
  for (auto& st : streams) {
    const auto f = collect(*st).final;
    EXPECT_EQ(f.finish_reason, "length") << f.error;
    EXPECT_EQ(f.token_ids, greedy);
  }
}

// A decode with the two things that break naive incremental text: the first piece loses its
// leading space (as LLaMA's sentencepiece does), and two-byte characters whose halves come as
// separate tokens decode to U+FFFD until complete (byte fallback). The streamed text and the final
// text must still equal the decode of the whole output.
std::string tricky_decode(const std::vector<int64_t>& ids) {
  std::string bytes;
  for (int64_t t : ids) {
    if (t % 7 == 0) bytes += '\xC3';       // lead byte of "\u00e9"
    else if (t % 7 == 1) bytes += '\xA9';  // its continuation byte
    else bytes += str_cat(" w", t);
  }
  std::string out;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const unsigned char b = static_cast<unsigned char>(bytes[i]);
    if (b == 0xC3 && i + 1 < bytes.size() && static_cast<unsigned char>(bytes[i + 1]) == 0xA9) {
      out += "\xC3\xA9";
      ++i;
    } else if (b == 0xC3 || b == 0xA9) {
      out += "\xEF\xBF\xBD";
    } else {
      out += bytes[i];
    }
  }
  return !out.empty() && out[0] == ' ' ? out.substr(1) : out;
}

TEST_F(EngineTest, IncrementalTextEqualsTheWholeDecode) {
  EngineOptions o;
  o.max_num_seqs = 4;
  o.max_model_len = 128;
  Engine engine(tiny_model(), o, tricky_decode, {});
  const auto ps = prompts();
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (size_t i = 0; i < ps.size(); ++i) {
    EngineRequest r = request(ps[i], static_cast<int>(i), 40);
    r.sampling.temperature = 1.0;  // many different ids, so lead and continuation bytes occur
    r.sampling.has_seed = true;
    r.sampling.seed = i;
    streams.push_back(engine.submit(std::move(r)));
  }
  int replacements = 0;
  for (auto& st : streams) {
    const Collected c = collect(*st);
    const std::string whole = tricky_decode(c.final.token_ids);
    EXPECT_EQ(c.streamed, whole);
    replacements += whole.find("\xEF\xBF\xBD") != std::string::npos;
  }
  EXPECT_GT(replacements, 0);  // the case was exercised
}

TEST_F(EngineTest, IgnoreEosRunsToMaxTokens) {
  EngineOptions o;
  o.max_model_len = 96;
  const auto ps = prompts();
  const auto free_run = reference(request(ps[1], 1, 10), -1);
  ASSERT_EQ(free_run.size(), 10u);
  // The engine's stop token is the 3rd token of the free run: it ends the request unless
  // ignore_eos is set.
  Engine engine(tiny_model(), o, fake_decode, {free_run[2]});
  const auto stopped = collect(*engine.submit(request(ps[1], 1, 10))).final;
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_LT(stopped.token_ids.size(), 10u);
  EngineRequest r = request(ps[1], 1, 10);
  r.sampling.ignore_eos = true;
  const auto all = collect(*engine.submit(r)).final;
  EXPECT_EQ(all.finish_reason, "length");
  EXPECT_EQ(all.token_ids, free_run);
}

TEST_F(EngineTest, CancelFreesTheSlotAndFullQueueIsRefused) {
  EngineOptions o;
  o.max_num_seqs = 1;
  o.max_queue_len = 1;
  o.max_model_len = 1 << 16;  // the first request runs until it is cancelled
  Engine engine(tiny_model(), o, fake_decode, {});
  const auto ps = prompts();
  auto endless = engine.submit(request(ps[3], 3, (1 << 16) - 8));
  // Its first delta means it holds the only slot.
  int got = 0;
  while (got == 0) got = static_cast<int>(endless->wait(1s).size());
  auto queued = engine.submit(request(ps[1], 1, 5));  // waits for the slot
  try {
    engine.submit(request(ps[0], 0, 5));
    ADD_FAILURE() << "a third request was accepted with one slot and a queue of one";
  } catch (const EngineRefusal& e) {
    EXPECT_EQ(e.kind(), "queue_full");
    EXPECT_NE(std::string(e.what()).find("--max-queue-len 1"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine.metrics().waiting, 1);
  endless->cancel();
  const Collected c = collect(*endless);
  EXPECT_EQ(c.final.finish_reason, "cancelled");
  // The waiting request now gets the slot and the same answer as alone.
  const Collected q = collect(*queued);
  EXPECT_EQ(q.final.token_ids, reference(request(ps[1], 1, 5), -1));
  // A request cancelled while it waits ends without running.
  auto again = engine.submit(request(ps[3], 3, (1 << 16) - 8));
  while (again->wait(1s).empty()) {
  }
  auto waits = engine.submit(request(ps[1], 1, 5));
  waits->cancel();
  again->cancel();
  EXPECT_EQ(collect(*waits).final.finish_reason, "cancelled");
  EXPECT_EQ(collect(*again).final.finish_reason, "cancelled");
  ASSERT_TRUE(engine.wait_idle(10s));
  EXPECT_EQ(engine.metrics().finished.at("cancelled"), 3u);
}

TEST_F(EngineTest, RefusesTooLongPromptsBadImagesAndWhenDraining) {
  EngineOptions o;
  o.max_model_len = 32;
  Engine engine(tiny_model(), o, fake_decode, {});
  const auto ps = prompts();
  auto refusal = [&](EngineRequest r) {
    try {
      engine.submit(std::move(r));
    } catch (const EngineRefusal& e) {
      return e.kind() + ": " + e.what();
    }
    return std::string("accepted");
  };
  // 40 positions > 32.
  const std::string too_long = refusal(request(ps[5], 5, 1));
  EXPECT_NE(too_long.find("prompt_too_long: This model's maximum context length is 32 tokens. "
                          "However, you requested 41 tokens (40 in the messages, 1 in the "
                          "completion)"),
            std::string::npos)
      << too_long;
  EXPECT_NE(refusal(request(ps[1], 1, 30)).find("prompt_too_long"), std::string::npos);
  EngineRequest no_image = request(ps[0], 0, 4);
  no_image.images = at::Tensor();
  no_image.images_aux = at::Tensor();
  EXPECT_NE(refusal(no_image).find("invalid: the prompt has 1 image markers but 0 images"),
            std::string::npos);
  EngineRequest negative = request(ps[1], 1, -1);
  EXPECT_NE(refusal(negative).find("max_tokens must be at least 1"), std::string::npos);
  // max_tokens 0: whatever room the context leaves (vLLM's default).
  const auto rest = collect(*engine.submit(request(ps[1], 1, 0))).final;
  EXPECT_EQ(rest.finish_reason, "length");
  EXPECT_EQ(rest.prompt_tokens + rest.completion_tokens, 32);
  engine.begin_drain();
  EXPECT_NE(refusal(request(ps[1], 1, 4)).find("draining"), std::string::npos);
  EXPECT_TRUE(engine.wait_idle(1s));
}

}  // namespace
}  // namespace mgm::models
