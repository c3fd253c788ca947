// Learning-rate schedules with transformers 4.38 get_scheduler semantics: a LambdaLR multiplier on
// the base lr, evaluated with the same double arithmetic as the Python lambdas so the C++ lr is
// the same double HF's scheduler.get_last_lr() reports at every optimizer step.
#pragma once

#include <cstdint>
#include <string>

namespace mgm::trainer {

enum class LrSchedule {
  kLinear,
  kCosine,
  kCosineWithRestarts,
  kPolynomial,
  kConstant,
  kConstantWithWarmup
};

// HF names: linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup.
// Throws UsageError naming the valid ones.
LrSchedule parse_lr_schedule(const std::string& name);
std::string lr_schedule_name(LrSchedule s);

// TrainingArguments.get_warmup_steps: warmup_steps if > 0, else ceil(total_steps * warmup_ratio).
int64_t hf_warmup_steps(int64_t total_steps, double warmup_ratio, int64_t warmup_steps);

struct ScheduleConfig {
  LrSchedule type = LrSchedule::kLinear;
  double base_lr = 5e-5;
  int64_t total_steps = 0;
  int64_t warmup_steps = 0;
  // Cosine: number of waves (HF default 0.5, a half cosine to 0). Cosine with restarts: number
  // of hard restarts (HF default 1). A negative value means "HF's default for the type", which
  // is what the Trainer passes (get_scheduler is called without scheduler_specific_kwargs).
  double num_cycles = -1.0;
  double power = 1.0;    // polynomial
  double lr_end = 1e-7;  // polynomial; must be below base_lr (HF raises ValueError otherwise)
};

// The multiplier HF's lambda returns for optimizer step `step` (0-based).
double lr_lambda(const ScheduleConfig& c, int64_t step);
// The lr used by optimizer step `step` (0-based) = base_lr * lambda(step), i.e. what HF's
// scheduler.get_last_lr() is when that step runs. Throws UsageError for an invalid config.
double lr_at(const ScheduleConfig& c, int64_t step);

}  // namespace mgm::trainer
