// Parameter holders shared by the vision towers (CLIP ViT, ConvNeXt). Unlike models::Linear they
// take TensorOptions, so a full-size tower can be built on the meta device to count parameters
// without allocating; parameter names are the PyTorch ones ("weight", "bias").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <vector>

namespace mgm::models::vision {

// nn.Linear: y = x W^T + b.
class DenseImpl : public torch::nn::Module {
 public:
  DenseImpl(int64_t in, int64_t out, bool bias, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;
};
TORCH_MODULE(Dense);

// nn.LayerNorm over the last dimension.
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& x);
  // timm LayerNorm2d: normalizes NCHW over C per pixel (computed channels-last, as timm does).
  at::Tensor forward_nchw(const at::Tensor& x);
  int64_t dim;
  double eps;
  at::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm);

// nn.Conv2d with square kernel/stride/padding.
class Conv2dImpl : public torch::nn::Module {
 public:
  Conv2dImpl(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding,
             int64_t groups, bool bias, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& x);
  int64_t stride, padding, groups;
  at::Tensor weight, bias;
};
TORCH_MODULE(Conv2d);

// nn.Embedding's table only (lookups here are by contiguous position ranges).
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num, int64_t dim, const at::TensorOptions& opts);
  at::Tensor weight;
};
TORCH_MODULE(Embedding);

// A parameter-free container whose children are named "0", "1", ... (nn.ModuleList /
// nn.Sequential naming), so checkpoint keys such as `layers.3.` or `stem.1.` resolve.
class IndexedImpl : public torch::nn::Module {
 public:
  template <typename M>
  M add(M m) {
    return register_module(std::to_string(count_++), m);
  }
  int64_t size() const { return count_; }

 private:
  int64_t count_ = 0;
};
TORCH_MODULE(Indexed);

}  // namespace mgm::models::vision
