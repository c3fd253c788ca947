// Learning-rate schedules against transformers 4.38's get_scheduler (LambdaLR over an optimizer
// with the same base lr, run by tests/parity/optim_reference.py) at every step of each case,
// including step 0, the warmup boundary, the last step and past the end; HF's warmup rule.
#include "trainer/schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "common/error.h"
#include "common/json.h"
#include "tests_util.h"

namespace mgm::trainer {
namespace {

const Json& reference() {
  static Json j = [] {
    std::string d = test::temp_dir("sched_ref");
    std::string out;
    int rc = test::run_python(
        test::source_dir() + "/tests/parity/optim_reference.py schedules " + d + "/s.json", &out);
    if (rc != 0) throw Error("optim_reference.py schedules failed: " + out);
    return read_json_file(d + "/s.json");
  }();
  return j;
}

TEST(Schedule, MatchesTransformersGetScheduler) {
  const Json& ref = reference();
  ASSERT_GE(ref.size(), 28u);
  std::set<std::string> names;
  for (const auto& c : ref) {
    ScheduleConfig cfg;
    cfg.type = parse_lr_schedule(c["name"].get<std::string>());
    names.insert(lr_schedule_name(cfg.type));
    cfg.base_lr = c["base_lr"].get<double>();
    cfg.total_steps = c["total"].get<int64_t>();
    cfg.warmup_steps = hf_warmup_steps(cfg.total_steps, c["warmup_ratio"].get<double>(),
                                       c["warmup_steps_arg"].get<int64_t>());
    ASSERT_EQ(cfg.warmup_steps, c["warmup"].get<int64_t>()) << c["name"] << " " << c["total"];
    const Json& extra = c["extra"];
    if (extra.contains("num_cycles")) cfg.num_cycles = extra["num_cycles"].get<double>();
    if (extra.contains("power")) cfg.power = extra["power"].get<double>();
    if (extra.contains("lr_end")) cfg.lr_end = extra["lr_end"].get<double>();
    const auto lrs = c["lrs"].get<std::vector<double>>();
    ASSERT_EQ(lrs.size(), static_cast<size_t>(cfg.total_steps + 3));
    int exact = 0;
    for (size_t s = 0; s < lrs.size(); ++s) {
      const double got = lr_at(cfg, static_cast<int64_t>(s));
      EXPECT_NEAR(got, lrs[s], 1e-12 * std::abs(lrs[s]))
          << c["name"].get<std::string>() << " total " << cfg.total_steps << " warmup "
          << cfg.warmup_steps << " step " << s;
      exact += got == lrs[s];
    }
    // The arithmetic is HF's, operation for operation: every value is the same double.
    EXPECT_EQ(exact, static_cast<int>(lrs.size())) << c["name"].get<std::string>();
  }
  EXPECT_EQ(names.size(), 6u);
}

TEST(Schedule, RecipeShapeByHand) {
  // mgm-model.md §10: 781 optimizer steps, warmup ceil(0.03 * 781) = 24, cosine to 0.
  EXPECT_EQ(hf_warmup_steps(781, 0.03, 0), 24);
  EXPECT_EQ(hf_warmup_steps(781, 0.03, 5), 5);  // explicit warmup_steps win
  EXPECT_EQ(hf_warmup_steps(100, 0.0, 0), 0);
  EXPECT_EQ(hf_warmup_steps(3125, 0.03, 0), 94);  // 93.75 rounds up
  ScheduleConfig c;
  c.type = LrSchedule::kCosine;
  c.base_lr = 1e-3;
  c.total_steps = 781;
  c.warmup_steps = 24;
  EXPECT_EQ(lr_at(c, 0), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 12), 1e-3 * 12 / 24);
  EXPECT_EQ(lr_at(c, 24), 1e-3);  // peak right after warmup
  EXPECT_NEAR(lr_at(c, 24 + 757 / 2), 1e-3 * 0.5 * (1 + std::cos(M_PI * 378.0 / 757)), 1e-18);
  EXPECT_NEAR(lr_at(c, 780), 1e-3 * 0.5 * (1 + std::cos(M_PI * 756.0 / 757)), 1e-18);
  c.type = LrSchedule::kLinear;
  EXPECT_DOUBLE_EQ(lr_at(c, 400), 1e-3 * 381.0 / 757);
  EXPECT_EQ(lr_at(c, 781), 0.0);
  c.type = LrSchedule::kConstantWithWarmup;
  EXPECT_EQ(lr_at(c, 23), 1e-3 * (23.0 / 24));
  EXPECT_EQ(lr_at(c, 10000), 1e-3);
  c.type = LrSchedule::kConstant;
  EXPECT_EQ(lr_at(c, 0), 1e-3);
}

TEST(Schedule, NamesAndErrors) {
  for (const char* n : {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                        "constant_with_warmup"})
    EXPECT_EQ(lr_schedule_name(parse_lr_schedule(n)), n);
  try {
    parse_lr_schedule("cosine_restarts");
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("cosine_restarts"), std::string::npos) << m;
    EXPECT_NE(m.find("cosine_with_restarts"), std::string::npos) << m;
    EXPECT_NE(m.find("constant_with_warmup"), std::string::npos) << m;
  }
  ScheduleConfig c;
  c.type = LrSchedule::kPolynomial;
  c.base_lr = 1e-8;  // below lr_end 1e-7: HF raises ValueError
  c.total_steps = 10;
  EXPECT_THROW(lr_at(c, 0), UsageError);
  EXPECT_THROW(hf_warmup_steps(10, 1.5, 0), UsageError);
  EXPECT_THROW(lr_at(ScheduleConfig{}, -1), Error);
}

}  // namespace
}  // namespace mgm::trainer
