#include "models/vision_layers.h"

#include <ATen/ops/conv2d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>

namespace mgm::models::vision {

DenseImpl::DenseImpl(int64_t in, int64_t out, bool with_bias, const at::TensorOptions& opts) {
  weight = register_parameter("weight", at::empty({out, in}, opts));
  if (with_bias) bias = register_parameter("bias", at::empty({out}, opts));
}

at::Tensor DenseImpl::forward(const at::Tensor& x) { return at::linear(x, weight, bias); }

LayerNormImpl::LayerNormImpl(int64_t d, double e, const at::TensorOptions& opts) : dim(d), eps(e) {
  weight = register_parameter("weight", at::empty({d}, opts));
  bias = register_parameter("bias", at::empty({d}, opts));
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  return at::layer_norm(x, {dim}, weight, bias, eps);
}

at::Tensor LayerNormImpl::forward_nchw(const at::Tensor& x) {
  return at::layer_norm(x.permute({0, 2, 3, 1}), {dim}, weight, bias, eps).permute({0, 3, 1, 2});
}

Conv2dImpl::Conv2dImpl(int64_t in, int64_t out, int64_t kernel, int64_t s, int64_t p, int64_t g,
                       bool with_bias, const at::TensorOptions& opts)
    : stride(s), padding(p), groups(g) {
  weight = register_parameter("weight", at::empty({out, in / g, kernel, kernel}, opts));
  if (with_bias) bias = register_parameter("bias", at::empty({out}, opts));
}

at::Tensor Conv2dImpl::forward(const at::Tensor& x) {
  return at::conv2d(x, weight, bias, {stride, stride}, {padding, padding}, {1, 1}, groups);
}

EmbeddingImpl::EmbeddingImpl(int64_t num, int64_t dim, const at::TensorOptions& opts) {
  weight = register_parameter("weight", at::empty({num, dim}, opts));
}

}  // namespace mgm::models::vision
