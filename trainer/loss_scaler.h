// fp16 dynamic loss scaling as DeepSpeed 0.11's DynamicLossScaler (the version the reference
// pins) with the configuration HF writes for "auto" fp16: initial scale 2^16, window 1000,
// hysteresis 2, min scale 1, factor 2; consecutive_hysteresis off; an overflow at the minimum
// scale with no hysteresis left is fatal (raise_error_at_min_scale).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "common/json.h"

namespace mgm::trainer {

struct LossScalerConfig {
  double initial_scale = 65536.0;
  int64_t window = 1000;   // loss_scale_window
  int64_t hysteresis = 2;  // DeepSpeed's delayed_shift
  double min_scale = 1.0;
  double factor = 2.0;
  bool consecutive_hysteresis = false;
  bool raise_error_at_min_scale = true;
};

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(LossScalerConfig c = {});
  double scale() const { return cur_scale_; }
  const LossScalerConfig& config() const { return cfg_; }

  // Multiplies every grad in place by 1/scale (exact for the power-of-two scales) and reports
  // whether any grad holds an inf or nan, with at::_amp_foreach_non_finite_check_and_unscale_
  // per (device, dtype) group. One host sync (fp16 only).
  bool unscale_and_check(const std::vector<at::Tensor>& grads);
  // The same without the host read: grads unscaled, the 0-dim fp32 found_inf (1 = overflow) on
  // the first grad's device returned for the fused optimizer step.
  at::Tensor unscale_async(const std::vector<at::Tensor>& grads);

  // DeepSpeed's update_scale: an overflow lowers the scale (after `hysteresis` overflows) and
  // counts a skipped step; `window` overflow-free iterations since the last overflow raise it.
  // Throws mgm::Error when an overflow happens at min_scale (DeepSpeed stops the run there).
  void update(bool overflow);
  int64_t skipped_steps() const { return skipped_; }
  int64_t iteration() const { return cur_iter_; }
  int64_t hysteresis_left() const { return cur_hysteresis_; }

  Json to_json() const;
  static DynamicLossScaler from_json(const Json& j);  // exact round trip; FormatError on bad keys

 private:
  LossScalerConfig cfg_;
  double cur_scale_;
  int64_t cur_iter_ = 0;
  int64_t last_overflow_iter_ = -1;
  int64_t cur_hysteresis_;
  int64_t skipped_ = 0;
};

}  // namespace mgm::trainer
