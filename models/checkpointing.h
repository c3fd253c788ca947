// Activation checkpointing for C++ modules (libtorch has no torch::utils::checkpoint): a block runs
// without keeping its activations and is recomputed during backward, under the autocast state
// the forward ran with.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace mgm::models {

using CheckpointFn = std::function<at::Tensor(const at::Tensor&)>;

// Returns fn(x); when grad mode is on and x or any of `params` requires grad, fn's activations are
// dropped and recomputed in backward. `params` must list every tensor fn uses that needs a
// gradient (the block's parameters): their gradients reach them through this node, so they are
// trained even when x does not require grad. The recompute starts from the random-number state
// the forward started from (dropout masks repeat, as torch's preserve_rng_state); everything
// else fn reads (masks, rotary tables) must stay unchanged until backward.
at::Tensor checkpoint(const CheckpointFn& fn, const at::Tensor& x,
                      const std::vector<at::Tensor>& params);

}  // namespace mgm::models
