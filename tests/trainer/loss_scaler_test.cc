// The fp16 dynamic loss scaler against hand-traced DeepSpeed 0.11 DynamicLossScaler.update_scale
// sequences (hysteresis, window growth, the minimum scale), inf/nan detection while unscaling,
// and the JSON round trip.
#include "trainer/loss_scaler.h"

#include <ATen/ops/equal.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <limits>

#include "common/error.h"

namespace mgm::trainer {
namespace {

LossScalerConfig small(double init, int64_t window, int64_t hysteresis) {
  LossScalerConfig c;
  c.initial_scale = init;
  c.window = window;
  c.hysteresis = hysteresis;
  return c;
}

TEST(LossScaler, DefaultsAreTheReferenceConfig) {
  DynamicLossScaler s;
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_EQ(s.config().window, 1000);
  EXPECT_EQ(s.config().hysteresis, 2);
  EXPECT_EQ(s.config().min_scale, 1.0);
  EXPECT_EQ(s.config().factor, 2.0);
  // 999 clean iterations keep the scale, the 1000th doubles it.
  for (int i = 0; i < 999; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 65536.0);
  s.update(false);
  EXPECT_EQ(s.scale(), 131072.0);
  EXPECT_EQ(s.skipped_steps(), 0);
}

TEST(LossScaler, HandTracedSequence) {
  // window 4, hysteresis 2, start 16. Traced by hand through DeepSpeed's update_scale:
  // grow when (iter - last_overflow_iter) % window == 0; an overflow first spends hysteresis,
  // then halves at every further overflow until a growth refills it.
  DynamicLossScaler s(small(16, 4, 2));
  const std::vector<std::pair<bool, double>> seq = {
      {false, 16}, {false, 16}, {false, 16}, {false, 32},  // iters 0-3: growth at 0-(-1)+3 = 4
      {true, 32},                                          // hysteresis 2 -> 1, scale kept
      {true, 16},  {true, 8},                              // hysteresis spent: halve each time
      {false, 8},  {false, 8},  {false, 8},  {false, 16},  // 4 clean since the overflow at 6
      {false, 16}, {false, 16}, {false, 16}, {false, 32},  // and every 4 after that
      {true, 32},                                          // growth refilled hysteresis to 2
      {true, 16},
  };
  for (size_t i = 0; i < seq.size(); ++i) {
    s.update(seq[i].first);
    EXPECT_EQ(s.scale(), seq[i].second) << "after update " << i;
  }
  EXPECT_EQ(s.skipped_steps(), 5);
  EXPECT_EQ(s.iteration(), static_cast<int64_t>(seq.size()));
}

TEST(LossScaler, ConsecutiveHysteresisRefillsOnEveryCleanStep) {
  LossScalerConfig c = small(64, 100, 2);
  DynamicLossScaler plain(c);
  for (bool o : {true, false, true}) plain.update(o);
  EXPECT_EQ(plain.scale(), 32);  // hysteresis not refilled by one clean step
  c.consecutive_hysteresis = true;
  DynamicLossScaler cons(c);
  for (bool o : {true, false, true}) cons.update(o);
  EXPECT_EQ(cons.scale(), 64);
  EXPECT_EQ(cons.hysteresis_left(), 1);
}

TEST(LossScaler, MinimumScale) {
  LossScalerConfig c = small(4, 1000, 1);
  DynamicLossScaler s(c);
  s.update(true);
  EXPECT_EQ(s.scale(), 2);
  s.update(true);
  EXPECT_EQ(s.scale(), 1);
  // DeepSpeed raises when an overflow happens at the minimum scale.
  EXPECT_THROW(s.update(true), Error);
  c.raise_error_at_min_scale = false;
  c.min_scale = 2;
  DynamicLossScaler t(c);
  for (int i = 0; i < 3; ++i) t.update(true);
  EXPECT_EQ(t.scale(), 2);  // clamped at min_scale
  EXPECT_EQ(t.skipped_steps(), 3);
  EXPECT_THROW(DynamicLossScaler(small(0, 10, 1)), Error);
  EXPECT_THROW(DynamicLossScaler(small(8, 0, 1)), Error);
}

TEST(LossScaler, UnscaleDetectsInfAndNan) {
  DynamicLossScaler s(small(1024, 1000, 2));
  at::Tensor a = at::tensor(std::vector<float>{2048.f, -512.f});
  at::Tensor b = at::tensor(std::vector<float>{1024.f, 3.f}).to(at::kHalf);
  EXPECT_FALSE(s.unscale_and_check({a, at::Tensor(), b}));
  EXPECT_TRUE(at::equal(a, at::tensor(std::vector<float>{2.f, -0.5f})));
  EXPECT_TRUE(at::equal(b, at::tensor(std::vector<float>{1.f, 3.f / 1024}).to(at::kHalf)));

  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  at::Tensor c = at::tensor(std::vector<float>{1.f, inf});
  EXPECT_TRUE(s.unscale_and_check({a, c}));
  at::Tensor d = at::tensor(std::vector<float>{nan, 1.f}).to(at::kHalf);
  EXPECT_TRUE(s.unscale_and_check({a, d}));
  at::Tensor e = at::tensor(std::vector<float>{-inf});
  EXPECT_TRUE(s.unscale_and_check({e}));
  const at::Tensor fi = s.unscale_async({at::tensor(std::vector<float>{nan})});
  EXPECT_EQ(fi.dim(), 0);
  EXPECT_EQ(fi.item<float>(), 1.0f);
  EXPECT_EQ(s.unscale_async({at::tensor(std::vector<float>{4.f})}).item<float>(), 0.0f);
  EXPECT_FALSE(s.unscale_and_check({}));
}

TEST(LossScaler, JsonRoundTripIsExact) {
  LossScalerConfig c = small(65536, 7, 3);
  c.min_scale = 0.25;
  DynamicLossScaler s(c);
  for (bool o : {false, true, false, false, true, true, true, false}) s.update(o);
  const std::string text = s.to_json().dump();
  DynamicLossScaler back = DynamicLossScaler::from_json(parse_json(text, "scaler.json"));
  EXPECT_EQ(back.to_json(), s.to_json());
  EXPECT_EQ(back.scale(), s.scale());
  EXPECT_EQ(back.skipped_steps(), 4);
  // Both continue identically.
  for (int i = 0; i < 20; ++i) {
    const bool o = i % 9 == 4;
    s.update(o);
    back.update(o);
    EXPECT_EQ(back.scale(), s.scale()) << i;
    EXPECT_EQ(back.hysteresis_left(), s.hysteresis_left()) << i;
  }
  Json bad = s.to_json();
  bad.erase("cur_hysteresis");
  try {
    DynamicLossScaler::from_json(bad);
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("cur_hysteresis"), std::string::npos) << e.what();
  }
  bad = s.to_json();
  bad["cur_scale"] = "big";
  EXPECT_THROW(DynamicLossScaler::from_json(bad), FormatError);
}

}  // namespace
}  // namespace mgm::trainer
