#include "models/module_utils.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/container/modulelist.h>

#include "common/error.h"
#include "models/io/tensor_file.h"
#include "tests_util.h"

namespace mgm::models {
namespace {

struct TwoLayerImpl : torch::nn::Module {
  TwoLayerImpl() {
    layers = register_module("layers", torch::nn::ModuleList());
    layers->push_back(Linear(3, 2, true));
    layers->push_back(Linear(2, 4, false));
  }
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(TwoLayer);

TEST(ModuleUtils, NamesFollowRegistrationAndLinearMatchesNnLinear) {
  TwoLayer m;
  auto t = module_tensors(*m, "model.");
  std::vector<std::string> names;
  for (auto& [n, v] : t) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"model.layers.0.weight", "model.layers.0.bias",
                                             "model.layers.1.weight"}));
  EXPECT_EQ(count_parameters(*m), 3 * 2 + 2 + 2 * 4);
  Linear l(3, 2, true);
  {
    at::NoGradGuard g;
    l->weight.copy_(at::arange(6, at::kFloat).reshape({2, 3}));
    l->bias.copy_(at::arange(2, at::kFloat));
  }
  at::Tensor y = l(at::arange(3, at::kFloat).reshape({1, 3}));
  // [0,1,2]·[0,1,2]=5 (+0), [0,1,2]·[3,4,5]=14 (+1)
  EXPECT_TRUE(y.equal(at::tensor({5.f, 15.f}).reshape({1, 2})));
}

TEST(ModuleUtils, LoadReportsMissingMismatchedAndUnexpectedByName) {
  std::string d = test::temp_dir("load");
  io::save_safetensors(d + "/ok.safetensors", {{"model.layers.0.weight", at::ones({2, 3})},
                                                {"model.layers.0.bias", at::ones({2})},
                                                {"model.layers.1.weight", at::ones({4, 2})},
                                                {"other.x", at::ones({1})}});
  TwoLayer m;
  LoadOptions o;
  o.src_prefix = "model.";
  LoadReport r = load_module(*m, io::TensorStore::open(d + "/ok.safetensors"), o);
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.loaded.size(), 3u);
  EXPECT_TRUE(r.unexpected.empty());  // "other.x" is outside the prefix
  EXPECT_TRUE(m->layers[1]->as<LinearImpl>()->weight.equal(at::ones({4, 2})));

  io::save_safetensors(d + "/bad.safetensors", {{"model.layers.0.weight", at::ones({3, 3})},
                                                 {"model.layers.9.weight", at::ones({1})}});
  try {
    load_module(*m, io::TensorStore::open(d + "/bad.safetensors"), o);
    FAIL();
  } catch (const Error& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("model.layers.0.weight: expected [2, 3] found [3, 3]"), std::string::npos) << w;
    EXPECT_NE(w.find("2 missing: model.layers.0.bias, model.layers.1.weight"), std::string::npos) << w;
    EXPECT_NE(w.find("1 unexpected: model.layers.9.weight"), std::string::npos) << w;
  }
  o.ignore_unexpected = [](const std::string& n) { return n.rfind("layers.9", 0) == 0; };
  o.allow_missing = [](const std::string& n) { return n == "layers.0.bias" || n == "layers.1.weight"; };
  LoadReport r2 = load_module(*m, io::TensorStore::open(d + "/bad.safetensors"), o, /*report_only=*/true);
  EXPECT_TRUE(r2.missing.empty());
  EXPECT_TRUE(r2.unexpected.empty());
  EXPECT_EQ(r2.mismatched.size(), 1u);
}

}  // namespace
}  // namespace mgm::models
