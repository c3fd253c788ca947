// Building blocks shared by every model: the one Linear type all LLM projections use (LoRA wraps
// this type in one place), and loading/saving module parameters by their checkpoint names with a
// report of missing, unexpected and mismatched tensors.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <string>
#include <vector>

#include "models/io/tensor_file.h"

namespace mgm::models {

// y = x W^T (+ b), W [out, in] as nn.Linear; parameter names "weight" and "bias".
// With a LoRA adapter attached (models/lora.h attaches, merges and removes it), y also gets
// scaling * B(A(dropout(x))) as PEFT's lora.Linear; A and B are children "lora_A" / "lora_B"
// with a parameter "weight", so their names are PEFT's saved keys.
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias);
  at::Tensor forward(const at::Tensor& x);
  bool has_lora() const { return lora_A.defined(); }
  int64_t in_features, out_features;
  at::Tensor weight, bias;  // bias undefined when disabled
  at::Tensor lora_A, lora_B;  // [r, in] and [out, r]; undefined without an adapter
  double lora_scaling = 0.0, lora_dropout = 0.0;
};
TORCH_MODULE(Linear);

struct LoadReport {
  std::vector<std::string> loaded;      // module names that received a tensor
  std::vector<std::string> missing;     // module tensors with no source tensor
  std::vector<std::string> unexpected;  // source tensors under the prefix that match nothing
  std::vector<std::string> mismatched;  // "name: expected [..] found [..]"
  bool ok() const { return missing.empty() && mismatched.empty(); }
  // One message listing every problem by name (at most `limit` per kind).
  std::string describe(size_t limit = 20) const;
};

struct LoadOptions {
  // Source names are `src_prefix + module_name`. Source tensors not under the prefix are ignored.
  std::string src_prefix;
  // Source names (after the prefix) for which unexpected is fine (keys the reference ignores).
  std::function<bool(const std::string&)> ignore_unexpected;
  // Module names that may stay missing (e.g. tied weights, non-persistent buffers).
  std::function<bool(const std::string&)> allow_missing;
  bool include_buffers = true;
};

// Copies tensors from `store` into the module's parameters (and buffers), converting to each
// parameter's dtype and device. Throws mgm::Error naming every missing and mismatched tensor
// unless `report_only`; returns the report either way.
LoadReport load_module(torch::nn::Module& module, const io::TensorStore& store,
                       const LoadOptions& opts, bool report_only = false);

// The module's parameters (and persistent buffers) under `prefix`, in registration order.
io::NamedTensors module_tensors(const torch::nn::Module& module, const std::string& prefix = "",
                                bool include_buffers = true);

// Total and trainable parameter counts.
int64_t count_parameters(const torch::nn::Module& module, bool trainable_only = false);

}  // namespace mgm::models
