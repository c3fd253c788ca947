#include "trainer/schedule.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace mgm::trainer {

namespace {

struct NamedSchedule {
  LrSchedule type;
  const char* name;
};
constexpr NamedSchedule kSchedules[] = {
    {LrSchedule::kLinear, "linear"},
    {LrSchedule::kCosine, "cosine"},
    {LrSchedule::kCosineWithRestarts, "cosine_with_restarts"},
    {LrSchedule::kPolynomial, "polynomial"},
    {LrSchedule::kConstant, "constant"},
    {LrSchedule::kConstantWithWarmup, "constant_with_warmup"},
};

// Python's float(a) / float(b) for the integer step counts HF divides.
double ratio(int64_t a, int64_t b) { return static_cast<double>(a) / static_cast<double>(b); }

double warmup_lambda(int64_t step, int64_t warmup) {
  return ratio(step, std::max<int64_t>(1, warmup));
}

}  // namespace

LrSchedule parse_lr_schedule(const std::string& name) {
  std::string valid;
  for (const auto& s : kSchedules) {
    if (name == s.name) return s.type;
    valid += valid.empty() ? "" : ", ";
    valid += s.name;
  }
  throw UsageError(str_cat("unknown lr_scheduler_type '", name, "' (valid: ", valid, ")"));
}

std::string lr_schedule_name(LrSchedule s) {
  for (const auto& n : kSchedules)
    if (n.type == s) return n.name;
  throw Error("lr_schedule_name: invalid LrSchedule value");
}

int64_t hf_warmup_steps(int64_t total_steps, double warmup_ratio, int64_t warmup_steps) {
  if (warmup_steps > 0) return warmup_steps;
  if (warmup_ratio < 0.0 || warmup_ratio > 1.0)
    throw UsageError(str_cat("warmup_ratio must lie in [0,1], got ", warmup_ratio));
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_ratio));
}

double lr_lambda(const ScheduleConfig& c, int64_t step) {
  if (step < 0) throw Error(str_cat("lr schedule: negative step ", step));
  const int64_t warm = c.warmup_steps, total = c.total_steps;
  switch (c.type) {
    case LrSchedule::kConstant:
      return 1.0;
    case LrSchedule::kConstantWithWarmup:
      // HF divides by float(max(1.0, warmup)) here; same value as max(1, warmup).
      return step < warm ? warmup_lambda(step, warm) : 1.0;
    case LrSchedule::kLinear:
      if (step < warm) return warmup_lambda(step, warm);
      return std::max(0.0, ratio(total - step, std::max<int64_t>(1, total - warm)));
    case LrSchedule::kCosine: {
      if (step < warm) return warmup_lambda(step, warm);
      const double cycles = c.num_cycles < 0 ? 0.5 : c.num_cycles;
      const double progress = ratio(step - warm, std::max<int64_t>(1, total - warm));
      // Evaluation order of HF's `math.pi * float(num_cycles) * 2.0 * progress`.
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * cycles * 2.0 * progress)));
    }
    case LrSchedule::kCosineWithRestarts: {
      if (step < warm) return warmup_lambda(step, warm);
      const double cycles = c.num_cycles < 0 ? 1.0 : c.num_cycles;
      const double progress = ratio(step - warm, std::max<int64_t>(1, total - warm));
      if (progress >= 1.0) return 0.0;
      // Python's float % 1.0 (result takes the divisor's sign; operands here are >= 0).
      double frac = std::fmod(cycles * progress, 1.0);
      if (frac < 0) frac += 1.0;
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * frac)));
    }
    case LrSchedule::kPolynomial: {
      if (step < warm) return warmup_lambda(step, warm);
      const double lr_init = c.base_lr;
      if (step > total) return c.lr_end / lr_init;
      const int64_t decay_steps = total - warm;
      // Python raises ZeroDivisionError here; say what is wrong instead.
      if (decay_steps == 0)
        throw UsageError(str_cat("polynomial lr schedule: warmup_steps (", warm,
                                 ") equals total_steps; nothing left to decay"));
      const double pct_remaining = 1 - ratio(step - warm, decay_steps);
      const double decay = (lr_init - c.lr_end) * std::pow(pct_remaining, c.power) + c.lr_end;
      return decay / lr_init;
    }
  }
  throw Error("lr schedule: invalid LrSchedule value");
}

double lr_at(const ScheduleConfig& c, int64_t step) {
  if (c.type == LrSchedule::kPolynomial && !(c.base_lr > c.lr_end))
    throw UsageError(str_cat("polynomial lr schedule: lr_end (", c.lr_end,
                             ") must be smaller than the initial lr (", c.base_lr, ")"));
  return c.base_lr * lr_lambda(c, step);
}

}  // namespace mgm::trainer
