#include "trainer/optimizer.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_sub.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/clamp_max.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <optional>
#include <regex>
#include <tuple>

#include "common/error.h"
#include "common/strings.h"

namespace mgm::trainer {

namespace {

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "," : "") + std::to_string(t.size(i));
  return s + "]";
}

// (device, dtype) groups in first-appearance order, as torch groups tensors for foreach kernels.
struct Group {
  at::Device device;
  at::ScalarType dtype;
  std::vector<at::Tensor> tensors;
};
std::vector<Group> group_by_device_dtype(const std::vector<at::Tensor>& ts) {
  std::vector<Group> groups;
  for (const auto& t : ts) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.device == t.device() && g.dtype == t.scalar_type();
    });
    if (it == groups.end()) {
      groups.push_back({t.device(), t.scalar_type(), {}});
      it = groups.end() - 1;
    }
    it->tensors.push_back(t);
  }
  return groups;
}

}  // namespace

bool decays(const std::string& param_name) {
  const std::string n = lower(param_name);
  // HF's get_decay_parameter_names drops every name containing "bias".
  if (n.find("bias") != std::string::npos) return false;
  const size_t last_dot = n.rfind('.');
  if (last_dot != std::string::npos) {
    const size_t prev_dot = n.rfind('.', last_dot - 1);
    const std::string module =
        n.substr(prev_dot == std::string::npos ? 0 : prev_dot + 1,
                 last_dot - (prev_dot == std::string::npos ? 0 : prev_dot + 1));
    // input_layernorm, post_attention_layernorm, norm, layer_norm1, pre_layrnorm, ...
    if (module.find("norm") != std::string::npos) return false;
  }
  // LayerNorms that only an index names: Sequential(LayerNorm, Linear) of the vlm_uni_*
  // projectors, timm ConvNeXt's stem Sequential(Conv2d, LayerNorm2d) and
  // downsample Sequential(LayerNorm2d, Conv2d).
  static const std::regex kIndexedNorm(
      R"((^|\.)(vlm_uni_[a-z]+_projector\.0|(vision_)?stem\.1|downsample\.0)\.weight$)");
  return !std::regex_search(n, kIndexedNorm);
}

std::vector<NamedParameter> named_parameters_with_decay(
    const std::vector<std::pair<std::string, at::Tensor>>& named) {
  std::vector<NamedParameter> out;
  out.reserve(named.size());
  for (const auto& [name, t] : named) out.push_back({name, t, decays(name)});
  return out;
}

AdamW::AdamW(std::vector<NamedParameter> params, AdamWConfig cfg, AdamWKernel kernel)
    : params_(std::move(params)), state_(params_.size()), cfg_(cfg), kernel_(kernel) {
  MGM_CHECK(cfg_.beta1 >= 0 && cfg_.beta1 < 1, "AdamW: beta1 must lie in [0,1), got ", cfg_.beta1);
  MGM_CHECK(cfg_.beta2 >= 0 && cfg_.beta2 < 1, "AdamW: beta2 must lie in [0,1), got ", cfg_.beta2);
  MGM_CHECK(cfg_.eps >= 0, "AdamW: eps must be >= 0, got ", cfg_.eps);
  MGM_CHECK(cfg_.weight_decay >= 0, "AdamW: weight_decay must be >= 0, got ", cfg_.weight_decay);
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    MGM_CHECK(p.param.defined(), "AdamW: parameter '", p.name, "' is undefined");
    MGM_CHECK(at::isFloatingType(p.param.scalar_type()), "AdamW: parameter '", p.name,
              "' is not floating point (", p.param.scalar_type(), ")");
    MGM_CHECK(seen.emplace(p.name, i).second, "AdamW: parameter name '", p.name, "' appears twice");
  }
  if (kernel_ == AdamWKernel::kAuto) {
    const bool any_cpu = std::any_of(params_.begin(), params_.end(), [](const NamedParameter& p) {
      return p.param.device().is_cpu();
    });
    kernel_ = any_cpu || params_.empty() ? AdamWKernel::kForLoop : AdamWKernel::kFused;
  }
}

void AdamW::ensure_state(size_t i) {
  State& s = state_[i];
  if (s.exp_avg.defined()) return;
  const at::Tensor& p = params_[i].param;
  s.exp_avg = at::zeros_like(p, at::MemoryFormat::Preserve);
  s.exp_avg_sq = at::zeros_like(p, at::MemoryFormat::Preserve);
  // torch keeps the step on the CPU for its default kernels and on the parameter's device for
  // the fused one.
  const at::Device dev = kernel_ == AdamWKernel::kFused ? p.device() : at::Device(at::kCPU);
  s.step = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(dev));
}

void AdamW::step(double lr, const at::Tensor& grad_scale, const at::Tensor& found_inf) {
  step(std::vector<double>{lr}, grad_scale, found_inf);
}

void AdamW::step(const std::vector<double>& lrs, const at::Tensor& grad_scale,
                 const at::Tensor& found_inf) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].param;
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    MGM_CHECK(
        g.scalar_type() == p.scalar_type() && g.device() == p.device() && g.sizes() == p.sizes(),
        "AdamW: grad of '", params_[i].name, "' is ", g.scalar_type(), shape_str(g), " on ",
        g.device(), ", the parameter ", p.scalar_type(), shape_str(p), " on ", p.device());
    MGM_CHECK(params_[i].lr_group >= 0 && static_cast<size_t>(params_[i].lr_group) < lrs.size(),
              "AdamW: parameter '", params_[i].name, "' uses learning-rate group ",
              params_[i].lr_group, " but ", lrs.size(), " rates were given");
    ensure_state(i);
  }
  if (kernel_ == AdamWKernel::kFused)
    step_fused(lrs, grad_scale, found_inf);
  else
    step_for_loop(lrs, grad_scale, found_inf);
  ++step_count_;
}

void AdamW::step_fused(const std::vector<double>& lrs, const at::Tensor& grad_scale,
                       const at::Tensor& found_inf) {
  // One kernel call per (device, dtype, decay) group, as torch groups a param group by device
  // and dtype; decay and no-decay are HF's two param groups.
  struct FusedGroup {
    std::vector<at::Tensor> p, g, m, v, s;
  };
  std::map<std::tuple<std::string, int, bool, int>, FusedGroup> groups;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].param;
    if (!p.grad().defined()) continue;
    auto& fg = groups[{p.device().str(), static_cast<int>(p.scalar_type()), params_[i].decay,
                       params_[i].lr_group}];
    fg.p.push_back(p);
    fg.g.push_back(p.grad());
    fg.m.push_back(state_[i].exp_avg);
    fg.v.push_back(state_[i].exp_avg_sq);
    fg.s.push_back(state_[i].step);
  }
  for (auto& [key, fg] : groups) {
    const at::Device dev = fg.p.front().device();
    std::optional<at::Tensor> gs, fi;
    if (grad_scale.defined()) gs = grad_scale.to(dev);
    if (found_inf.defined()) fi = found_inf.to(dev);
    at::_foreach_add_(fg.s, 1);
    const double lr = lrs[static_cast<size_t>(std::get<3>(key))];
    at::_fused_adamw_(fg.p, fg.g, fg.m, fg.v, /*max_exp_avg_sqs=*/{}, fg.s, lr, cfg_.beta1,
                      cfg_.beta2, std::get<2>(key) ? cfg_.weight_decay : 0.0, cfg_.eps,
                      /*amsgrad=*/false, /*maximize=*/false, gs, fi);
    if (fi) {  // a skipped step does not count (torch.optim.AdamW with fused=True)
      std::vector<at::Tensor> fis(fg.s.size(), *fi);
      at::_foreach_sub_(fg.s, fis);
    }
  }
}

void AdamW::step_for_loop(const std::vector<double>& lrs, const at::Tensor& grad_scale,
                          const at::Tensor& found_inf) {
  if (found_inf.defined() && found_inf.item<double>() != 0.0) return;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i].param;
    at::Tensor g = p.grad();
    if (!g.defined()) continue;
    if (grad_scale.defined()) g.div_(grad_scale.to(g.device()));
    State& s = state_[i];
    const double lr = lrs[static_cast<size_t>(params_[i].lr_group)];
    // The op sequence of torch 2.11's _single_tensor_adam (decoupled_weight_decay=True), with
    // the scalars computed in double as Python does.
    s.step.add_(1);
    const double wd = params_[i].decay ? cfg_.weight_decay : 0.0;
    if (wd != 0) p.mul_(1 - lr * wd);
    s.exp_avg.lerp_(g, 1 - cfg_.beta1);
    s.exp_avg_sq.mul_(cfg_.beta2).addcmul_(g, g, 1 - cfg_.beta2);
    const double step = static_cast<double>(s.step.item<float>());
    const double bias_correction1 = 1 - std::pow(cfg_.beta1, step);
    const double bias_correction2 = 1 - std::pow(cfg_.beta2, step);
    const double step_size = lr / bias_correction1;
    const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
    at::Tensor denom = (at::sqrt(s.exp_avg_sq) / bias_correction2_sqrt).add_(cfg_.eps);
    p.addcdiv_(s.exp_avg, denom, -step_size);
  }
}

void AdamW::zero_grad() {
  for (auto& p : params_)
    if (p.param.grad().defined()) p.param.mutable_grad() = at::Tensor();
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const State& s = state_[i];
    if (!s.exp_avg.defined()) continue;
    out.emplace_back(params_[i].name + ".exp_avg", s.exp_avg);
    out.emplace_back(params_[i].name + ".exp_avg_sq", s.exp_avg_sq);
    out.emplace_back(params_[i].name + ".step", s.step);
  }
  return out;
}

void AdamW::load_state_tensors(const std::vector<std::pair<std::string, at::Tensor>>& t) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i) index.emplace(params_[i].name, i);
  std::vector<State> loaded(params_.size());
  std::vector<std::string> problems;
  for (const auto& [key, tensor] : t) {
    static const char* const kSuffixes[] = {".exp_avg_sq", ".exp_avg", ".step"};
    std::string suffix;
    for (const char* s : kSuffixes)
      if (ends_with(key, s)) {
        suffix = s;
        break;
      }
    auto it = suffix.empty() ? index.end() : index.find(key.substr(0, key.size() - suffix.size()));
    if (it == index.end()) {
      problems.push_back("unexpected entry '" + key + "'");
      continue;
    }
    const at::Tensor& p = params_[it->second].param;
    State& s = loaded[it->second];
    at::Tensor* slot = suffix == ".exp_avg"      ? &s.exp_avg
                       : suffix == ".exp_avg_sq" ? &s.exp_avg_sq
                                                 : &s.step;
    if (slot->defined()) {
      problems.push_back("duplicate entry '" + key + "'");
      continue;
    }
    if (suffix == ".step") {
      if (tensor.dim() != 0 || tensor.scalar_type() != at::kFloat) {
        problems.push_back(str_cat("'", key, "': expected a 0-dim float32 step, found ",
                                   tensor.scalar_type(), shape_str(tensor)));
        continue;
      }
      const at::Device dev = kernel_ == AdamWKernel::kFused ? p.device() : at::Device(at::kCPU);
      *slot = tensor.detach().to(dev, at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    } else {
      if (tensor.sizes() != p.sizes() || tensor.scalar_type() != p.scalar_type()) {
        problems.push_back(str_cat("'", key, "': expected ", p.scalar_type(), shape_str(p),
                                   ", found ", tensor.scalar_type(), shape_str(tensor)));
        continue;
      }
      at::Tensor c = at::empty_like(p, at::MemoryFormat::Preserve);
      c.copy_(tensor.detach());
      *slot = c;
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const State& s = loaded[i];
    const int n = s.exp_avg.defined() + s.exp_avg_sq.defined() + s.step.defined();
    if (n == 0 || n == 3) continue;
    std::string missing;
    if (!s.exp_avg.defined()) missing += " exp_avg";
    if (!s.exp_avg_sq.defined()) missing += " exp_avg_sq";
    if (!s.step.defined()) missing += " step";
    problems.push_back("'" + params_[i].name + "' lacks" + missing);
  }
  if (!problems.empty()) {
    std::string msg = "optimizer state does not match the parameters:";
    for (size_t k = 0; k < problems.size() && k < 20; ++k) msg += "\n  " + problems[k];
    if (problems.size() > 20) msg += str_cat("\n  ... and ", problems.size() - 20, " more");
    throw Error(msg);
  }
  int64_t max_step = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    state_[i] = loaded[i];
    if (loaded[i].step.defined())
      max_step = std::max(max_step, static_cast<int64_t>(loaded[i].step.item<float>()));
  }
  step_count_ = max_step;
}

at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return at::zeros({}, at::kFloat);
  const at::Device first = grads.front().device();
  const std::vector<Group> groups = group_by_device_dtype(grads);
  std::vector<at::Tensor> norms;
  for (const auto& g : groups) {
    std::optional<at::ScalarType> acc;
    if (g.dtype != at::kFloat) acc = at::kFloat;
    for (auto& n : at::_foreach_norm(g.tensors, 2, acc)) norms.push_back(n.to(first));
  }
  at::Tensor total = at::linalg_vector_norm(at::stack(norms), 2);
  if (max_norm > 0) {
    // Python's `max_norm / (total + 1e-6)` on a tensor is reciprocal() * max_norm.
    at::Tensor coef = at::reciprocal(total + 1e-6) * max_norm;
    at::Tensor clamped = at::clamp_max(coef, 1.0);
    for (auto& g : groups) {
      std::vector<at::Tensor> ts = g.tensors;
      at::_foreach_mul_(ts, clamped.to(g.device));
    }
  }
  return total;
}

}  // namespace mgm::trainer
