// AdamW with torch.optim.AdamW semantics (decoupled weight decay, bias correction, amsgrad off)
// over named parameters, its checkpointable state, the no-decay rule for biases and norm
// weights, and sync-free gradient-norm clipping as torch.nn.utils.clip_grad_norm_.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mgm::trainer {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

struct NamedParameter {
  std::string name;
  at::Tensor param;
  bool decay = true;  // weight decay applies (see decays())
  // Index of the learning rate this parameter uses in step(group_lrs) (HF parameter groups with
  // their own "lr", e.g. LLaVA's mm_projector_lr group); 0 is the main learning rate.
  int lr_group = 0;
};

// Whether weight decay applies to the parameter with this (checkpoint) name: not for biases
// (HF excludes every name containing "bias") and not for LayerNorm / Gemma RMSNorm weights,
// recognised by name: a module named *norm* / *layrnorm* (input_layernorm, model.norm,
// layer_norm1, pre_layrnorm, post_layernorm, ConvNeXt block norms) and the LayerNorms that sit at
// fixed Sequential indices (vlm_uni_*_projector.0, ConvNeXt vision_stem.1 / stem.1 and
// downsample.0). Note: HF 4.38 only exempts nn.LayerNorm modules, so Gemma's RMSNorm weights do
// get decay there; the recipe uses weight_decay 0, where the two rules give the same run.
bool decays(const std::string& param_name);

// Parameters named `names[i]` -> NamedParameter with decay = decays(name).
std::vector<NamedParameter> named_parameters_with_decay(
    const std::vector<std::pair<std::string, at::Tensor>>& named);

// How AdamW::step updates the parameters.
enum class AdamWKernel {
  // kForLoop when any parameter is on the CPU, else kFused: bit-exact with torch's default
  // AdamW on the CPU, the fast kernel on the GPU.
  kAuto,
  // at::_fused_adamw_ (CPU and CUDA): one kernel per (device, dtype, decay) group; the same bits
  // as torch.optim.AdamW(fused=True). Against torch's default on CPU its parameters agree to
  // float rounding (exp_avg_sq is rounded differently: relative differences ~1e-7).
  // On CUDA, torch's default is the foreach kernel, which also differs from fused by rounding.
  kFused,
  // The per-tensor op sequence of torch's _single_tensor_adam, torch's default on CPU: bit-exact
  // with torch.optim.AdamW(foreach=False, fused=False).
  kForLoop,
};

class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, AdamWConfig cfg,
        AdamWKernel kernel = AdamWKernel::kAuto);

  // One step over every parameter with a defined grad, at learning rate `lr`.
  // fp16 (optional): `grad_scale` (0-dim fp32, on the grads' device) divides the grads first,
  // and a non-zero `found_inf` (0-dim fp32) skips the update, as torch's fused AdamW does with a
  // GradScaler. The fused kernel takes both without a host sync (the per-parameter "step"
  // counters are rolled back by found_inf, as torch does); the for-loop kernel unscales with a
  // division and reads found_inf on the host. Without them, unscaling is the loss scaler's job.
  void step(double lr, const at::Tensor& grad_scale = {}, const at::Tensor& found_inf = {});
  // The same with one learning rate per lr_group (group_lrs[p.lr_group]).
  void step(const std::vector<double>& group_lrs, const at::Tensor& grad_scale = {},
            const at::Tensor& found_inf = {});
  // Grads to undefined (set_to_none=True, as HF does).
  void zero_grad();
  // Number of step() calls (the host never reads found_inf on the fused path, so a step skipped
  // on the device by found_inf is still counted here; the per-parameter "step" tensors are not).
  int64_t step_count() const { return step_count_; }

  // The full state as named tensors for checkpointing: "<name>.exp_avg", "<name>.exp_avg_sq",
  // "<name>.step" (0-dim fp32), for every parameter that has state (has had a grad at a step),
  // in parameter order.
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  // Loads state_tensors() output (copied onto each parameter's device; bit-exact). Throws
  // mgm::Error naming unknown entries, parameters with only some of their three entries, and
  // shape/dtype mismatches. Parameters with no entries keep a fresh state, as torch's
  // load_state_dict does. step_count() becomes the largest loaded step.
  void load_state_tensors(const std::vector<std::pair<std::string, at::Tensor>>& t);

  const std::vector<NamedParameter>& parameters() const { return params_; }
  const AdamWConfig& config() const { return cfg_; }
  AdamWKernel kernel() const { return kernel_; }  // never kAuto (resolved at construction)

 private:
  struct State {
    at::Tensor exp_avg, exp_avg_sq, step;  // undefined until the first step with a grad
  };
  void ensure_state(size_t i);
  void step_fused(const std::vector<double>& lrs, const at::Tensor& grad_scale,
                  const at::Tensor& found_inf);
  void step_for_loop(const std::vector<double>& lrs, const at::Tensor& grad_scale,
                     const at::Tensor& found_inf);

  std::vector<NamedParameter> params_;
  std::vector<State> state_;
  AdamWConfig cfg_;
  AdamWKernel kernel_;
  int64_t step_count_ = 0;
};

// Total L2 norm of the grads of `params` (those with a defined grad) as a 0-dim fp32 tensor on
// the first grad's device, without a host sync. When max_norm > 0, scales the grads in place by
// min(1, max_norm / (norm + 1e-6)), also sync-free, as torch.nn.utils.clip_grad_norm_ (foreach
// path: per-tensor norms, then the norm of their stack). fp32 grads: the same bits as torch;
// other dtypes accumulate their norms in fp32 (torch returns the grads' dtype there).
at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace mgm::trainer
