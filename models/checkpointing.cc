#include "models/checkpointing.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <utility>

#include "common/error.h"

namespace mgm::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Autocast is thread-local and the backward pass runs on engine threads, so the recompute must
// re-enter the state the forward saw, or it would compute in other dtypes than the forward did.
struct AutocastState {
  static constexpr std::array<at::DeviceType, 2> kDevices{at::kCPU, at::kCUDA};
  std::array<bool, 2> enabled{};
  std::array<at::ScalarType, 2> dtype{};

  static AutocastState capture() {
    AutocastState s;
    for (size_t i = 0; i < kDevices.size(); ++i) {
      s.enabled[i] = at::autocast::is_autocast_enabled(kDevices[i]);
      s.dtype[i] = at::autocast::get_autocast_dtype(kDevices[i]);
    }
    return s;
  }
  bool any() const { return enabled[0] || enabled[1]; }
};

// Enters a captured autocast state and restores the previous one, clearing the cast cache when
// the outermost autocast region ends (as Python's autocast.__exit__ does; otherwise the cached
// low-precision weight copies would outlive the step).
class AutocastScope {
 public:
  explicit AutocastScope(const AutocastState& s) : active_(s.any()) {
    if (!active_) return;
    prev_ = AutocastState::capture();
    for (size_t i = 0; i < s.kDevices.size(); ++i) {
      at::autocast::set_autocast_enabled(s.kDevices[i], s.enabled[i]);
      at::autocast::set_autocast_dtype(s.kDevices[i], s.dtype[i]);
    }
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!active_) return;
    for (size_t i = 0; i < prev_.kDevices.size(); ++i) {
      at::autocast::set_autocast_enabled(prev_.kDevices[i], prev_.enabled[i]);
      at::autocast::set_autocast_dtype(prev_.kDevices[i], prev_.dtype[i]);
    }
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_;
  AutocastState prev_;
};

// The random-number state a block's forward started from (CPU, and the CUDA device of the input),
// so the recompute draws the same dropout masks as the forward did (LoRA dropout), as
// torch.utils.checkpoint's preserve_rng_state; the global streams continue as if the block had
// run once.
struct RngState {
  at::Tensor cpu, cuda;
  at::Device cuda_device = at::Device(at::kCPU);

  static RngState capture(const at::Device& dev) {
    RngState s;
    s.cpu = get(at::detail::getDefaultCPUGenerator());
    if (dev.is_cuda()) {
      s.cuda_device = dev;
      s.cuda = get(at::globalContext().defaultGenerator(dev));
    }
    return s;
  }
  void restore() const {
    set(at::detail::getDefaultCPUGenerator(), cpu);
    if (cuda.defined()) set(at::globalContext().defaultGenerator(cuda_device), cuda);
  }

 private:
  static at::Tensor get(at::Generator g) {
    std::lock_guard<std::mutex> lock(g.mutex());
    return g.get_state();
  }
  static void set(at::Generator g, const at::Tensor& state) {
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(state);
  }
};

// Runs the recompute from the forward's RNG state and puts the current state back afterwards.
class RngFork {
 public:
  explicit RngFork(const RngState& forward_state)
      : current_(RngState::capture(forward_state.cuda.defined() ? forward_state.cuda_device
                                                                : at::Device(at::kCPU))) {
    forward_state.restore();
  }
  ~RngFork() { current_.restore(); }
  RngFork(const RngFork&) = delete;
  RngFork& operator=(const RngFork&) = delete;

 private:
  RngState current_;
};

// What backward needs besides the saved input; carried in the context as a capsule because
// saved_data holds IValues only.
struct Closure : torch::CustomClassHolder {
  CheckpointFn fn;
  std::vector<at::Tensor> params;  // exactly the tensors passed as the TensorList argument
  AutocastState autocast;
  RngState rng;
};

struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList params,
                            c10::intrusive_ptr<Closure> closure) {
    (void)params;  // the same tensors live in the closure; listing them makes them inputs
    ctx->save_for_backward({x});
    ctx->saved_data["x_requires_grad"] = x.requires_grad();
    at::Tensor y = closure->fn(x);  // custom Function forwards run with grad mode off
    ctx->saved_data["closure"] = at::IValue::make_capsule(std::move(closure));
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto holder = ctx->saved_data.at("closure").toCapsule();
    auto* closure = static_cast<Closure*>(holder.get());
    const bool x_grad = ctx->saved_data.at("x_requires_grad").toBool();
    at::Tensor x = ctx->get_saved_variables().at(0).detach();
    x.requires_grad_(x_grad);

    at::Tensor y;
    {
      at::AutoGradMode grad_on(true);
      AutocastScope autocast(closure->autocast);
      RngFork rng(closure->rng);
      y = closure->fn(x);
    }
    variable_list wrt;
    if (x_grad) wrt.push_back(x);
    wrt.insert(wrt.end(), closure->params.begin(), closure->params.end());
    variable_list grads;
    if (y.requires_grad())
      grads = torch::autograd::grad({y}, wrt, {grad_out.at(0)}, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    else
      grads.resize(wrt.size());

    // One entry per forward argument: x, each tensor of the list, the closure.
    variable_list result;
    size_t k = 0;
    result.push_back(x_grad ? grads.at(k++) : at::Tensor());
    for (size_t i = 0; i < closure->params.size(); ++i) result.push_back(grads.at(k++));
    result.emplace_back();
    return result;
  }
};

}  // namespace

at::Tensor checkpoint(const CheckpointFn& fn, const at::Tensor& x,
                      const std::vector<at::Tensor>& params) {
  MGM_CHECK(x.defined(), "checkpoint: the input tensor is undefined");
  std::vector<at::Tensor> trainable;
  for (const auto& p : params)
    if (p.defined() && p.requires_grad()) trainable.push_back(p);
  if (!at::GradMode::is_enabled() || (!x.requires_grad() && trainable.empty())) return fn(x);
  auto closure = c10::make_intrusive<Closure>();
  closure->fn = fn;
  closure->params = trainable;
  closure->autocast = AutocastState::capture();
  closure->rng = RngState::capture(x.device());
  return CheckpointFunction::apply(x, at::TensorList(closure->params), closure);
}

}  // namespace mgm::models
