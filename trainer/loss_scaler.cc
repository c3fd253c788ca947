#include "trainer/loss_scaler.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace mgm::trainer {

DynamicLossScaler::DynamicLossScaler(LossScalerConfig c)
    : cfg_(c), cur_scale_(c.initial_scale), cur_hysteresis_(c.hysteresis) {
  MGM_CHECK(std::isfinite(c.initial_scale) && c.initial_scale > 0,
            "loss scaler: initial scale must be positive and finite, got ", c.initial_scale);
  MGM_CHECK(c.window > 0, "loss scaler: window must be positive, got ", c.window);
  MGM_CHECK(c.hysteresis > 0, "loss scaler: hysteresis must be positive, got ", c.hysteresis);
  MGM_CHECK(std::isfinite(c.min_scale) && c.min_scale > 0,
            "loss scaler: min scale must be positive and finite, got ", c.min_scale);
  MGM_CHECK(c.factor > 1, "loss scaler: factor must be > 1, got ", c.factor);
}

at::Tensor DynamicLossScaler::unscale_async(const std::vector<at::Tensor>& grads) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> defined;
  for (const auto& g : grads)
    if (g.defined()) defined.push_back(g);
  const at::Device dev = defined.empty() ? at::Device(at::kCPU) : defined.front().device();
  at::Tensor found_inf = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(dev));
  // The kernel wants one device and dtype per call; found_inf accumulates across calls.
  std::vector<bool> done(defined.size(), false);
  for (size_t i = 0; i < defined.size(); ++i) {
    if (done[i]) continue;
    std::vector<at::Tensor> group;
    for (size_t k = i; k < defined.size(); ++k)
      if (!done[k] && defined[k].device() == defined[i].device() &&
          defined[k].scalar_type() == defined[i].scalar_type()) {
        group.push_back(defined[k]);
        done[k] = true;
      }
    const at::Device gdev = defined[i].device();
    at::Tensor inv =
        at::full({}, 1.0 / cur_scale_, at::TensorOptions().dtype(at::kFloat).device(gdev));
    at::Tensor fi =
        gdev == dev ? found_inf : at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(gdev));
    at::_amp_foreach_non_finite_check_and_unscale_(group, fi, inv);
    if (gdev != dev) found_inf.add_(fi.to(dev)).clamp_max_(1.0);
  }
  return found_inf;
}

bool DynamicLossScaler::unscale_and_check(const std::vector<at::Tensor>& grads) {
  return unscale_async(grads).item<float>() != 0.0f;
}

void DynamicLossScaler::update(bool overflow) {
  if (overflow) {
    if (cfg_.hysteresis == 1 || cur_hysteresis_ == 1) {
      if (cur_scale_ == cfg_.min_scale && cfg_.raise_error_at_min_scale)
        throw Error(str_cat("fp16 loss scale already at the minimum (", cfg_.min_scale,
                            ") and the gradients still overflow at iteration ", cur_iter_,
                            "; stopping as DeepSpeed does"));
      cur_scale_ = std::max(cur_scale_ / cfg_.factor, cfg_.min_scale);
    } else {
      --cur_hysteresis_;
    }
    last_overflow_iter_ = cur_iter_;
    ++skipped_;
  } else {
    if (cfg_.consecutive_hysteresis) cur_hysteresis_ = cfg_.hysteresis;
    // DeepSpeed 0.11: grow when (iter - last overflow) is a multiple of the window, i.e. after
    // every `window` clean iterations. (Later DeepSpeed releases shifted this by one.)
    if ((cur_iter_ - last_overflow_iter_) % cfg_.window == 0) {
      if (!cfg_.consecutive_hysteresis) cur_hysteresis_ = cfg_.hysteresis;
      cur_scale_ *= cfg_.factor;
    }
  }
  ++cur_iter_;
}

Json DynamicLossScaler::to_json() const {
  Json j;
  j["initial_scale"] = cfg_.initial_scale;
  j["window"] = cfg_.window;
  j["hysteresis"] = cfg_.hysteresis;
  j["min_scale"] = cfg_.min_scale;
  j["factor"] = cfg_.factor;
  j["consecutive_hysteresis"] = cfg_.consecutive_hysteresis;
  j["raise_error_at_min_scale"] = cfg_.raise_error_at_min_scale;
  j["cur_scale"] = cur_scale_;
  j["cur_iter"] = cur_iter_;
  j["last_overflow_iter"] = last_overflow_iter_;
  j["cur_hysteresis"] = cur_hysteresis_;
  j["skipped_steps"] = skipped_;
  return j;
}

DynamicLossScaler DynamicLossScaler::from_json(const Json& j) {
  const std::string what = "loss scaler state";
  MGM_CHECK_FORMAT(j.is_object(), what, "expected a JSON object");
  auto num = [&](const char* key) {
    const Json& v = json_at(j, key, what);
    MGM_CHECK_FORMAT(v.is_number(), what, "'", key, "' must be a number");
    return v.get<double>();
  };
  auto flag = [&](const char* key) {
    const Json& v = json_at(j, key, what);
    MGM_CHECK_FORMAT(v.is_boolean(), what, "'", key, "' must be true or false");
    return v.get<bool>();
  };
  LossScalerConfig c;
  c.initial_scale = num("initial_scale");
  c.window = json_int(j, "window", what);
  c.hysteresis = json_int(j, "hysteresis", what);
  c.min_scale = num("min_scale");
  c.factor = num("factor");
  c.consecutive_hysteresis = flag("consecutive_hysteresis");
  c.raise_error_at_min_scale = flag("raise_error_at_min_scale");
  DynamicLossScaler s(c);
  s.cur_scale_ = num("cur_scale");
  MGM_CHECK_FORMAT(std::isfinite(s.cur_scale_) && s.cur_scale_ > 0, what,
                   "'cur_scale' must be positive and finite");
  s.cur_iter_ = json_int(j, "cur_iter", what);
  s.last_overflow_iter_ = json_int(j, "last_overflow_iter", what);
  s.cur_hysteresis_ = json_int(j, "cur_hysteresis", what);
  s.skipped_ = json_int(j, "skipped_steps", what);
  return s;
}

}  // namespace mgm::trainer
