// AdamW against torch.optim.AdamW (tests/parity/optim_reference.py) over several steps with a
// varying lr, weight decay on some parameters only and a parameter without a grad at some steps;
// the checkpointable state round trip; fp16 grad_scale/found_inf; the decay rule on the real
// parameter names of a tiny MGM; clip_grad_norm against torch.nn.utils.clip_grad_norm_.
#include "trainer/optimizer.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "common/error.h"
#include "common/strings.h"
#include "models/gemma.h"
#include "models/io/tensor_file.h"
#include "models/mgm.h"
#include "models/vision_layers.h"
#include "tests_util.h"

namespace mgm::trainer {
namespace {

using models::io::NamedTensors;

// K parameters of different shapes and magnitudes; grads per step (parameter 2 has none at
// steps 1 and 4, parameter 3 none before step 2: lazy state as torch).
struct Problem {
  std::vector<at::Tensor> init;
  std::vector<std::vector<at::Tensor>> grads;  // [step][k], undefined = no grad
  std::vector<double> lrs;
  std::vector<bool> decay;
  AdamWConfig cfg;
};

Problem make_problem() {
  at::manual_seed(1234);
  Problem p;
  const std::vector<std::vector<int64_t>> shapes = {{7, 5}, {5}, {3, 4, 2}, {11}, {1, 300}};
  p.decay = {true, false, true, false, true};
  for (const auto& s : shapes) p.init.push_back(at::randn(s));
  p.lrs = {1e-3, 5e-4, 2e-3, 1e-3, 3e-5, 7e-4};
  p.cfg.weight_decay = 0.1;
  p.cfg.eps = 1e-8;
  for (size_t s = 0; s < p.lrs.size(); ++s) {
    std::vector<at::Tensor> g;
    for (size_t k = 0; k < shapes.size(); ++k) {
      const bool none = (k == 2 && (s == 1 || s == 4)) || (k == 3 && s < 2);
      // Mixed magnitudes, including grads far below eps's scale.
      const double mag = k == 4 ? 1e-6 : (k == 1 ? 30.0 : 1.0);
      g.push_back(none ? at::Tensor() : at::randn(shapes[k]) * mag);
    }
    p.grads.push_back(g);
  }
  return p;
}

std::vector<at::Tensor> fresh_params(const Problem& p) {
  std::vector<at::Tensor> out;
  for (const auto& t : p.init) out.push_back(t.clone().set_requires_grad(true));
  return out;
}

AdamW make_adamw(const Problem& p, const std::vector<at::Tensor>& params, AdamWKernel kernel) {
  std::vector<NamedParameter> named;
  for (size_t k = 0; k < params.size(); ++k)
    named.push_back({str_cat("p", k), params[k], static_cast<bool>(p.decay[k])});
  return AdamW(named, p.cfg, kernel);
}

void run_steps(AdamW& opt, const Problem& p, size_t from, size_t to) {
  for (size_t s = from; s < to; ++s) {
    for (size_t k = 0; k < opt.parameters().size(); ++k) {
      at::Tensor param = opt.parameters()[k].param;
      param.mutable_grad() = p.grads[s][k].defined() ? p.grads[s][k].clone() : at::Tensor();
    }
    opt.step(p.lrs[s]);
    opt.zero_grad();
  }
}

// Clip case c: grads of four shapes (one parameter without a grad), max_norm 1 (clips) or 1e6.
const std::vector<double> kClipMaxNorms = {1.0, 1e6};
std::vector<at::Tensor> make_clip_params(size_t c) {
  at::manual_seed(99 + static_cast<int64_t>(c));
  std::vector<at::Tensor> params;
  const std::vector<std::vector<int64_t>> shapes = {{64, 33}, {33}, {5, 6, 7}, {1000}};
  for (size_t k = 0; k < shapes.size(); ++k) {
    at::Tensor p = at::zeros(shapes[k]).set_requires_grad(true);
    p.mutable_grad() = at::randn(shapes[k]) * static_cast<double>(k + 1);
    params.push_back(p);
  }
  params.push_back(at::zeros({4}).set_requires_grad(true));  // no grad: ignored
  return params;
}

// torch's results, from one Python process (importing torch takes seconds): "default", "fused"
// (torch.optim.AdamW over make_problem()) and "clip<c>".
const models::io::TensorStore& torch_result(const std::string& which) {
  static const std::map<std::string, models::io::TensorStore> results = [] {
    const std::string d = test::temp_dir("optim_ref");
    const Problem p = make_problem();
    NamedTensors in;
    for (size_t k = 0; k < p.init.size(); ++k) in.emplace_back(str_cat("param.", k), p.init[k]);
    for (size_t s = 0; s < p.grads.size(); ++s)
      for (size_t k = 0; k < p.grads[s].size(); ++k)
        if (p.grads[s][k].defined()) in.emplace_back(str_cat("grad.", s, ".", k), p.grads[s][k]);
    in.emplace_back("lr", at::tensor(p.lrs, at::kDouble));
    std::vector<int64_t> decay(p.decay.begin(), p.decay.end());
    in.emplace_back("decay", at::tensor(decay, at::kLong));
    in.emplace_back("hyper", at::tensor(std::vector<double>{p.cfg.beta1, p.cfg.beta2, p.cfg.eps,
                                                            p.cfg.weight_decay},
                                        at::kDouble));
    models::io::save_safetensors(d + "/adamw_in.safetensors", in);
    std::string args = test::source_dir() + "/tests/parity/optim_reference.py";
    for (const char* kernel : {"default", "fused"})
      args += str_cat(" adamw ", d, "/adamw_in.safetensors ", d, "/", kernel, ".safetensors ",
                      kernel, " --");
    for (size_t c = 0; c < kClipMaxNorms.size(); ++c) {
      NamedTensors clip_in;
      const auto params = make_clip_params(c);
      for (size_t k = 0; k + 1 < params.size(); ++k)
        clip_in.emplace_back(str_cat("grad.", k), params[k].grad());
      clip_in.emplace_back("max_norm",
                           at::tensor(std::vector<double>{kClipMaxNorms[c]}, at::kDouble));
      models::io::save_safetensors(str_cat(d, "/clip_in", c, ".safetensors"), clip_in);
      args +=
          str_cat(" clip ", d, "/clip_in", c, ".safetensors ", d, "/clip", c, ".safetensors --");
    }
    std::string out;
    if (test::run_python(args, &out) != 0) throw Error("optim_reference.py failed: " + out);
    std::map<std::string, models::io::TensorStore> r;
    for (const char* name : {"default", "fused", "clip0", "clip1"})
      r.emplace(name, models::io::TensorStore::open(str_cat(d, "/", name, ".safetensors")));
    return r;
  }();
  return results.at(which);
}

void expect_matches_torch(const AdamW& opt, const models::io::TensorStore& ref,
                          const std::string& what) {
  for (size_t k = 0; k < opt.parameters().size(); ++k)
    EXPECT_TRUE(at::equal(opt.parameters()[k].param.detach(), ref.get(str_cat("param.", k))))
        << what << " param " << k << " max diff "
        << (opt.parameters()[k].param.detach() - ref.get(str_cat("param.", k))).abs().max();
  const auto state = opt.state_tensors();
  EXPECT_EQ(state.size(), 15u);
  for (const auto& [name, t] : state) {
    const std::string key = name.substr(1);  // "p3.exp_avg" -> "3.exp_avg"
    EXPECT_TRUE(at::equal(t.cpu(), ref.get(key))) << what << " " << name;
  }
}

TEST(AdamW, ForLoopIsBitExactWithTorchDefault) {  // the kAuto choice on CPU
  const Problem p = make_problem();
  auto params = fresh_params(p);
  AdamW opt = make_adamw(p, params, AdamWKernel::kForLoop);
  run_steps(opt, p, 0, p.lrs.size());
  EXPECT_EQ(opt.step_count(), 6);
  expect_matches_torch(opt, torch_result("default"), "for-loop vs torch default");
}

TEST(AdamW, FusedIsBitExactWithTorchFused) {
  const Problem p = make_problem();
  auto params = fresh_params(p);
  AdamW opt = make_adamw(p, params, AdamWKernel::kFused);
  run_steps(opt, p, 0, p.lrs.size());
  expect_matches_torch(opt, torch_result("fused"), "fused vs torch fused");
  // Against torch's default (for-loop) on CPU: the same up to float rounding of exp_avg_sq.
  const auto& ref = torch_result("default");
  for (const auto& [name, t] : opt.state_tensors()) {
    const at::Tensor r = ref.get(name.substr(1));
    const double rel = ((t - r).abs() / (r.abs() + 1e-30)).max().item<double>();
    EXPECT_LE(rel, 1e-6) << name;
  }
  for (size_t k = 0; k < params.size(); ++k) {
    const at::Tensor r = ref.get(str_cat("param.", k));
    EXPECT_LE(((params[k] - r).abs() / r.abs()).max().item<double>(), 1e-6) << k;
  }
}

TEST(AdamW, AutoPicksTheTorchDefaultOnCpu) {
  at::Tensor w = at::zeros({2}).set_requires_grad(true);
  EXPECT_EQ(AdamW({{"w", w}}, AdamWConfig{}).kernel(), AdamWKernel::kForLoop);
}

TEST(AdamW, UpdateByHandForOneStep) {
  // One step from zero state: m = (1-b1) g, v = (1-b2) g^2, bias-corrected m/sqrt(v) = sign(g),
  // so p -= lr * (g / (|g| + eps*...)) ~ lr * sign(g); decay multiplies p by (1 - lr*wd) first.
  for (AdamWKernel kernel : {AdamWKernel::kForLoop, AdamWKernel::kFused}) {
    at::Tensor w = at::full({3}, 2.0).set_requires_grad(true);
    at::Tensor b = at::full({3}, 2.0).set_requires_grad(true);
    AdamWConfig cfg;
    cfg.weight_decay = 0.5;
    AdamW opt({{"w", w, true}, {"b", b, false}}, cfg, kernel);
    w.mutable_grad() = at::tensor(std::vector<float>{1.f, -4.f, 0.25f});
    b.mutable_grad() = at::tensor(std::vector<float>{1.f, -4.f, 0.25f});
    opt.step(0.1);
    const float wd = 2.0f * (1 - 0.1f * 0.5f);
    const std::vector<float> sign = {1, -1, 1};
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(w[i].item<float>(), wd - 0.1f * sign[i], 1e-6);
      EXPECT_NEAR(b[i].item<float>(), 2.0f - 0.1f * sign[i], 1e-6);
    }
    opt.zero_grad();
    EXPECT_FALSE(w.grad().defined());
    EXPECT_FALSE(b.grad().defined());
  }
}

TEST(AdamW, StateRoundTripThroughAFileIsBitExact) {
  const Problem p = make_problem();
  for (AdamWKernel kernel : {AdamWKernel::kForLoop, AdamWKernel::kFused}) {
    auto straight = fresh_params(p);
    AdamW a = make_adamw(p, straight, kernel);
    run_steps(a, p, 0, 5);

    auto resumed = fresh_params(p);
    AdamW b = make_adamw(p, resumed, kernel);
    run_steps(b, p, 0, 3);
    const std::string path = test::temp_dir("adamw_state") + "/optimizer.safetensors";
    models::io::save_safetensors(path, b.state_tensors());
    // A fresh optimizer over (copies of) the parameters as a checkpoint restores them.
    std::vector<at::Tensor> restored;
    for (const auto& t : resumed) restored.push_back(t.detach().clone().set_requires_grad(true));
    AdamW c = make_adamw(p, restored, kernel);
    c.load_state_tensors(models::io::load_all(path));
    EXPECT_EQ(c.step_count(), 3);
    run_steps(c, p, 3, 5);
    for (size_t k = 0; k < straight.size(); ++k)
      EXPECT_TRUE(at::equal(straight[k], restored[k])) << "param " << k;
    const auto sa = a.state_tensors(), sc = c.state_tensors();
    ASSERT_EQ(sa.size(), sc.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      EXPECT_EQ(sa[i].first, sc[i].first);
      EXPECT_TRUE(at::equal(sa[i].second, sc[i].second)) << sa[i].first;
    }
  }
}

TEST(AdamW, LoadStateNamesWhatIsWrong) {
  const Problem p = make_problem();
  auto params = fresh_params(p);
  AdamW a = make_adamw(p, params, AdamWKernel::kForLoop);
  run_steps(a, p, 0, 3);
  const auto good = a.state_tensors();
  auto expect_error = [&](NamedTensors t, const std::vector<std::string>& words) {
    auto fresh = fresh_params(p);
    AdamW b = make_adamw(p, fresh, AdamWKernel::kForLoop);
    try {
      b.load_state_tensors(t);
      ADD_FAILURE() << "expected an error mentioning " << words.front();
    } catch (const Error& e) {
      for (const auto& w : words)
        EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
  };
  NamedTensors missing;
  for (const auto& e : good)
    if (e.first != "p1.exp_avg_sq") missing.push_back(e);
  expect_error(missing, {"'p1' lacks exp_avg_sq"});
  NamedTensors extra = good;
  extra.emplace_back("p9.exp_avg", at::zeros({2}));
  extra.emplace_back("p0.momentum", at::zeros({2}));
  expect_error(extra, {"p9.exp_avg", "p0.momentum"});
  NamedTensors shape = good;
  shape[0].second = at::zeros({5, 7});
  expect_error(shape, {"p0.exp_avg", "[7,5]", "[5,7]"});
  NamedTensors step = good;
  step[2].second = at::zeros({1});
  expect_error(step, {"p0.step"});
}

TEST(AdamW, GradScaleAndFoundInf) {
  for (AdamWKernel kernel : {AdamWKernel::kForLoop, AdamWKernel::kFused}) {
    const Problem p = make_problem();
    auto ref_params = fresh_params(p);
    AdamW ref = make_adamw(p, ref_params, kernel);
    run_steps(ref, p, 0, 2);

    auto params = fresh_params(p);
    AdamW opt = make_adamw(p, params, kernel);
    const at::Tensor scale = at::full({}, 1024.0f);
    for (size_t s = 0; s < 2; ++s) {
      for (size_t k = 0; k < params.size(); ++k)
        params[k].mutable_grad() = p.grads[s][k].defined() ? p.grads[s][k] * 1024.0f : at::Tensor();
      opt.step(p.lrs[s], scale, at::zeros({}));
      opt.zero_grad();
    }
    // Power-of-two scaling is exact: the same bits as the unscaled run.
    for (size_t k = 0; k < params.size(); ++k)
      EXPECT_TRUE(at::equal(params[k], ref_params[k])) << "param " << k;

    // found_inf = 1: nothing moves, the per-parameter steps stay.
    std::vector<at::Tensor> before;
    for (const auto& t : params) before.push_back(t.detach().clone());
    for (size_t k = 0; k < params.size(); ++k) params[k].mutable_grad() = at::ones_like(params[k]);
    opt.step(1e-3, scale, at::ones({}));
    for (size_t k = 0; k < params.size(); ++k) EXPECT_TRUE(at::equal(params[k], before[k]));
    for (const auto& [name, t] : opt.state_tensors())
      if (name == "p0.step") {
        EXPECT_EQ(t.item<float>(), 2.0f);
      }
  }
}

TEST(AdamW, RejectsBadInput) {
  at::Tensor w = at::zeros({2, 3}).set_requires_grad(true);
  EXPECT_THROW(AdamW({{"w", w}, {"w", w}}, AdamWConfig{}), Error);
  AdamWConfig bad;
  bad.beta2 = 1.0;
  EXPECT_THROW(AdamW({{"w", w}}, bad), Error);
  AdamW opt({{"w", w}}, AdamWConfig{});
  w.mutable_grad() = at::zeros({3, 2});
  try {
    opt.step(1e-3);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
  }
}

TEST(Decay, RuleOnTinyMgmNamesFollowsModuleTypes) {
  const auto cfg = models::MgmConfig::from_file(test::source_dir() + "/configs/models/tiny.json");
  models::MgmForCausalLM m(cfg);
  // Independent expectation from the module tree: parameters owned by a LayerNorm (CLIP,
  // ConvNeXt incl. its LayerNorm2d, the vlm_uni_* projectors) or a Gemma RMSNorm, and biases.
  std::set<std::string> norm_params;
  for (const auto& item : m->named_modules()) {
    const torch::nn::Module& mod = *item.value();
    const bool norm = dynamic_cast<const models::vision::LayerNormImpl*>(&mod) != nullptr ||
                      dynamic_cast<const models::GemmaRMSNormImpl*>(&mod) != nullptr;
    if (!norm) continue;
    for (const auto& p : mod.named_parameters(/*recurse=*/false))
      norm_params.insert(item.key().empty() ? p.key() : item.key() + "." + p.key());
  }
  const auto named = models::module_tensors(*m, "", /*include_buffers=*/false);
  ASSERT_GT(named.size(), 50u);
  int no_decay = 0, gemma_norms = 0, indexed_norms = 0;
  for (const auto& [name, t] : named) {
    const bool bias = ends_with(name, ".bias");
    const bool expected = !(bias || norm_params.count(name));
    EXPECT_EQ(decays(name), expected) << name;
    no_decay += !expected;
    gemma_norms += (starts_with(name, "model.layers.") && ends_with(name, "layernorm.weight")) ||
                   name == "model.norm.weight";
    indexed_norms += norm_params.count(name) &&
                     (ends_with(name, ".0.weight") || ends_with(name, "stem.1.weight"));
  }
  EXPECT_GT(no_decay, 20);
  EXPECT_EQ(gemma_norms, 2 * cfg.gemma.num_hidden_layers + 1);
  EXPECT_GE(indexed_norms, 3 + 1 + 3);  // vlm_uni x3, the ConvNeXt stem, 3 downsamples
  // Spot checks by name (HF 4.38 would decay the Gemma RMSNorm weights; see optimizer.h).
  EXPECT_TRUE(decays("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(decays("model.embed_tokens.weight"));
  EXPECT_TRUE(decays("model.mm_projector.0.weight"));
  EXPECT_TRUE(decays("model.vlm_uni_query_projector.1.weight"));
  EXPECT_TRUE(decays("model.vision_tower_aux.vision_stages.1.blocks.0.gamma"));
  EXPECT_FALSE(decays("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(decays("model.norm.weight"));
  EXPECT_FALSE(decays("model.vlm_uni_aux_projector.0.weight"));
  EXPECT_FALSE(decays("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight"));
  EXPECT_FALSE(decays("model.mm_projector.2.bias"));
  const auto np = named_parameters_with_decay(named);
  ASSERT_EQ(np.size(), named.size());
  EXPECT_EQ(np.front().decay, decays(np.front().name));
}

// clip_grad_norm against torch.nn.utils.clip_grad_norm_.
TEST(ClipGradNorm, MatchesTorch) {
  for (size_t c = 0; c < kClipMaxNorms.size(); ++c) {
    const double max_norm = kClipMaxNorms[c];
    const auto params = make_clip_params(c);
    const auto& ref = torch_result(str_cat("clip", c));
    const at::Tensor norm = clip_grad_norm(params, max_norm);
    EXPECT_EQ(norm.dim(), 0);
    EXPECT_EQ(norm.scalar_type(), at::kFloat);
    EXPECT_TRUE(at::equal(norm, ref.get("norm"))) << norm << " vs " << ref.get("norm");
    EXPECT_GT(norm.item<float>(), 10.0f);  // so max_norm 1 clips and 1e6 does not
    for (size_t k = 0; k + 1 < params.size(); ++k)
      EXPECT_TRUE(at::equal(params[k].grad(), ref.get(str_cat("grad.", k))))
          << "max_norm " << max_norm << " grad " << k;
    const at::Tensor after = clip_grad_norm(params, 0.0);  // max_norm 0: measure only
    if (max_norm == 1.0) {
      EXPECT_NEAR(after.item<float>(), 1.0, 1e-5);
    } else {
      EXPECT_TRUE(at::equal(after, norm));
    }
  }
}

TEST(ClipGradNorm, NoGradsAndLowPrecision) {
  EXPECT_EQ(clip_grad_norm({at::zeros({3}).set_requires_grad(true)}, 1.0).item<float>(), 0.0f);
  at::Tensor p = at::zeros({3}, at::kBFloat16).set_requires_grad(true);
  p.mutable_grad() = at::tensor(std::vector<float>{3.f, 4.f, 0.f}).to(at::kBFloat16);
  at::Tensor n = clip_grad_norm({p}, 1.0);
  EXPECT_EQ(n.scalar_type(), at::kFloat);
  EXPECT_EQ(n.item<float>(), 5.0f);
  EXPECT_NEAR(p.grad()[0].item<float>(), 0.6, 0.005);
  EXPECT_NEAR(p.grad()[1].item<float>(), 0.8, 0.005);
}

}  // namespace
}  // namespace mgm::trainer
