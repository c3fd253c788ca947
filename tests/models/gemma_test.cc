// Gemma against transformers' GemmaForCausalLM (4.38 semantics, recorded by
// tests/parity/gemma_reference.py): logits, hidden states, loss and gradients in fp32 on CPU,
// right and left padding, tied and untied heads, sharded loading; plus checkpointing, the KV
// cache and full-size parameter counts.
#include <ATen/TensorOperators.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros_like.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "common/error.h"
#include "common/json.h"
#include "models/checkpointing.h"
#include "models/gemma.h"
#include "tests_util.h"

namespace mgm::models {
namespace {

struct Diff {
  double max_abs = 0, max_rel = 0;
  bool within = true;
};

// Elementwise |a - b| <= atol + rtol * |b|, with the largest absolute and relative errors.
Diff compare(const at::Tensor& got, const at::Tensor& want, double rtol, double atol) {
  EXPECT_EQ(got.sizes(), want.sizes());
  const at::Tensor a = got.detach().to(at::kDouble), b = want.detach().to(at::kDouble);
  const at::Tensor err = (a - b).abs();
  Diff d;
  d.max_abs = err.max().item<double>();
  d.max_rel = (err / b.abs().clamp_min(1e-30)).max().item<double>();
  d.within = (err <= atol + rtol * b.abs()).all().item<bool>();
  return d;
}

#define EXPECT_CLOSE(got, want, rtol, atol, what)                                                \
  do {                                                                                           \
    Diff d_ = compare((got), (want), (rtol), (atol));                                            \
    std::printf("[parity] %-52s max abs %.3g  max rel %.3g\n", std::string(what).c_str(),        \
                d_.max_abs, d_.max_rel);                                                         \
    EXPECT_TRUE(d_.within) << (what) << ": max abs " << d_.max_abs << " max rel " << d_.max_rel; \
  } while (0)

// The reference files are written once per process; a failing script fails every test.
class GemmaParity : public ::testing::Test {
 protected:
  static const std::string& dir() {
    static std::string d = [] {
      std::string out_dir = test::temp_dir("gemma_parity");
      std::string out;
      int rc = test::run_python(test::source_dir() + "/tests/parity/gemma_reference.py " + out_dir,
                                &out);
      if (rc != 0) {
        ADD_FAILURE() << "gemma_reference.py failed (" << rc << "):\n" << out;
        return std::string();
      }
      return out_dir;
    }();
    return d;
  }
  void SetUp() override { ASSERT_FALSE(dir().empty()) << "reference script failed"; }

  static at::Tensor ref(const std::string& c, const std::string& name) {
    return io::TensorStore::open(dir() + "/" + c + "/reference.safetensors").get(name).clone();
  }
  static GemmaForCausalLM load(const std::string& c, const std::string& sub = "model") {
    return load_gemma_pretrained(dir() + "/" + c + "/" + sub, at::kFloat, at::kCPU);
  }

  void check_case(const std::string& c);
};

void GemmaParity::check_case(const std::string& c) {
  GemmaForCausalLM m = load(c);
  const at::Tensor mask = ref(c, "attention_mask"), labels = ref(c, "labels");
  const at::Tensor embeds = ref(c, "inputs_embeds").requires_grad_(true);

  // Explicit padding mask: every position, padded ones included, as the reference.
  GemmaForwardOptions masked;
  masked.attention_mask = mask;
  masked.padding = PaddingMode::kMasked;
  const at::Tensor hidden = m->hidden_states(embeds, masked);
  const at::Tensor logits = m->logits(hidden);
  EXPECT_CLOSE(hidden, ref(c, "hidden"), 1e-5, 1e-6, c + " hidden (masked)");
  EXPECT_CLOSE(logits, ref(c, "logits"), 1e-5, 1e-6, c + " logits (masked)");
  const at::Tensor loss = causal_lm_loss(logits, labels);
  EXPECT_CLOSE(loss.reshape({1}), ref(c, "loss"), 1e-6, 0.0, c + " loss (masked)");

  // Training path: is_causal only; real positions must be identical to the reference.
  GemmaForwardOptions causal;
  causal.attention_mask = mask;
  const at::Tensor logits_c = m->forward(embeds, causal);
  const at::Tensor real = mask.to(at::kBool).unsqueeze(-1);
  EXPECT_CLOSE(at::masked_select(logits_c, real), at::masked_select(ref(c, "logits"), real), 1e-5,
               1e-6, c + " logits (causal, real positions)");
  const at::Tensor loss_c = causal_lm_loss(logits_c, labels);
  EXPECT_CLOSE(loss_c.reshape({1}), ref(c, "loss"), 1e-6, 0.0, c + " loss (causal)");

  loss_c.backward();
  const at::Tensor g_in = ref(c, "grad.inputs_embeds");
  // Gradients: 1e-5 relative to each tensor's scale (elementwise relative error is meaningless
  // for entries that are zero up to rounding).
  auto check_grad = [&](const at::Tensor& got, const at::Tensor& want, const std::string& what) {
    const double scale = want.abs().max().item<double>();
    EXPECT_CLOSE(got, want, 1e-5, 1e-5 * scale, what);
  };
  check_grad(embeds.grad(), g_in, c + " grad inputs_embeds");
  const auto params = m->named_parameters(true);
  int checked = 0;
  for (const auto& p : params) {
    const std::string key = "grad." + p.key();
    if (!io::TensorStore::open(dir() + "/" + c + "/reference.safetensors").contains(key)) continue;
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    check_grad(p.value().grad(), ref(c, key), c + " " + key);
    ++checked;
  }
  EXPECT_GE(checked, 8);

  // Left padding with explicit position ids (the generation layout), masked path.
  at::NoGradGuard no_grad;
  GemmaForwardOptions left;
  left.attention_mask = ref(c, "left.attention_mask");
  left.position_ids = ref(c, "left.position_ids");
  left.padding = PaddingMode::kMasked;
  EXPECT_CLOSE(m->forward(ref(c, "left.inputs_embeds"), left), ref(c, "left.logits"), 1e-5, 1e-6,
               c + " logits (left padding)");

  // bf16: same rounding order as 4.38; different kernels, so only loosely equal.
  m->to(at::kBFloat16);
  const at::Tensor lb =
      m->forward(ref(c, "inputs_embeds").to(at::kBFloat16), masked).to(at::kFloat);
  const at::Tensor lr = ref(c, "bf16.logits");
  const double scale = lr.abs().max().item<double>();
  EXPECT_CLOSE(lb, lr, 0.0, 0.05 * scale, c + " bf16 logits (loose)");
}

TEST_F(GemmaParity, ExactGeluTiedMatchesTransformers) { check_case("gelu_tied"); }

// Controls: the comparison and the reference can tell the two activations apart, and a
// perturbation far below fp32 noise in a real model is still caught.
TEST_F(GemmaParity, ComparisonDetectsWrongActivationAndSmallErrors) {
  const at::Tensor want = ref("gelu_tied", "logits");
  EXPECT_FALSE(compare(want * (1 + 1e-4), want, 1e-5, 1e-6).within);
  GemmaForCausalLM m = load("gelu_tied");
  for (auto& layer : m->model->layers) layer->mlp->exact_gelu = false;
  at::NoGradGuard g;
  GemmaForwardOptions masked;
  masked.attention_mask = ref("gelu_tied", "attention_mask");
  masked.padding = PaddingMode::kMasked;
  const Diff d = compare(m->forward(ref("gelu_tied", "inputs_embeds"), masked), want, 1e-5, 1e-6);
  EXPECT_FALSE(d.within);
  std::printf("[parity] control: tanh GELU on the exact-GELU reference  max abs %.3g\n", d.max_abs);
}
TEST_F(GemmaParity, TanhGeluUntiedMatchesTransformers) { check_case("tanh_untied"); }

TEST_F(GemmaParity, ConfigFromSavedFolder) {
  const GemmaConfig c = GemmaConfig::from_file(dir() + "/gelu_tied/model");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.head_dim, 24);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.hidden_act, "gelu");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(GemmaConfig::from_file(dir() + "/tanh_untied/model").tie_word_embeddings);
  EXPECT_EQ(GemmaConfig::from_file(dir() + "/tanh_untied/model").hidden_act, "gelu_pytorch_tanh");
}

TEST_F(GemmaParity, KeysEqualCheckpointAndTiedHeadSharesEmbedding) {
  for (const std::string c : {"gelu_tied", "tanh_untied"}) {
    GemmaForCausalLM m = load(c);
    std::set<std::string> module_keys, file_keys;
    for (const auto& p : m->named_parameters(true)) module_keys.insert(p.key());
    const auto store = io::TensorStore::open(dir() + "/" + c + "/model");
    for (const auto& n : store.names()) file_keys.insert(n);
    EXPECT_EQ(module_keys, file_keys) << c;
    // parameter_shapes() lists the same names and shapes, in module order.
    const auto shapes = m->config().parameter_shapes();
    const auto params = m->named_parameters(true);
    ASSERT_EQ(shapes.size(), params.size());
    for (size_t i = 0; i < shapes.size(); ++i) {
      EXPECT_EQ(shapes[i].first, params[i].key());
      EXPECT_EQ(at::IntArrayRef(shapes[i].second), params[i].value().sizes()) << shapes[i].first;
    }
    EXPECT_EQ(m->config().num_parameters(), count_parameters(*m));
    const bool tied = m->config().tie_word_embeddings;
    EXPECT_EQ(m->lm_head_weight().data_ptr() == m->model->embed_tokens->weight.data_ptr(), tied);
  }
}

TEST_F(GemmaParity, ShardedFolderLoadsTheSameWeights) {
  const auto store = io::TensorStore::open(dir() + "/gelu_tied/model_sharded");
  ASSERT_GT(store.files().size(), 2u);
  GemmaForCausalLM a = load("gelu_tied"), b = load("gelu_tied", "model_sharded");
  const auto pa = a->named_parameters(true), pb = b->named_parameters(true);
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(at::equal(pa[i].value(), pb[i].value())) << pa[i].key();
}

TEST_F(GemmaParity, Bf16RmsNormRoundsAs438) {
  const std::string c = "gelu_tied";
  GemmaRMSNorm norm(64, 1e-6);
  norm->to(at::kBFloat16);
  {
    at::NoGradGuard g;
    norm->weight.copy_(ref(c, "rms_bf16.w"));
  }
  const at::Tensor x = ref(c, "rms_bf16.x");
  const at::Tensor y = norm->forward(x);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(y, ref(c, "rms_bf16.y")));
  // The 4.39+ order (multiply in fp32, then cast) rounds differently: the check can tell.
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor later =
      (xf * at::rsqrt(xf.pow(2).mean(-1, true) + 1e-6) * (norm->weight.to(at::kFloat) + 1))
          .to(at::kBFloat16);
  EXPECT_FALSE(at::equal(later, y));
}

// MGM checkpoints hold the LLM under the same keys beside the vision and projector parts.
TEST_F(GemmaParity, LoadsFromAnMgmCheckpoint) {
  GemmaForCausalLM src = load("gelu_tied");
  io::NamedTensors t = module_tensors(*src);
  t.emplace_back("model.mm_projector.0.weight", at::randn({64, 16}));
  t.emplace_back("model.vlm_uni_query_projector.0.bias", at::randn({16}));
  t.emplace_back("model.vision_tower.vision_tower.vision_model.post_layernorm.weight",
                 at::randn({8}));
  const std::string d = test::temp_dir("gemma_mgm_ckpt");
  io::save_safetensors(d + "/model.safetensors", t);
  GemmaForCausalLM m(src->config(), /*init_weights=*/false);
  const LoadReport rep = load_gemma_weights(m, io::TensorStore::open(d));
  EXPECT_EQ(rep.loaded.size(), src->named_parameters(true).size());
  const auto pa = src->named_parameters(true), pb = m->named_parameters(true);
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(at::equal(pa[i].value(), pb[i].value()));
  EXPECT_THROW(load_gemma_weights(m, io::TensorStore::open(d), /*strict=*/true), Error);
}

TEST_F(GemmaParity, MissingAndMismatchedWeightsAreNamed) {
  GemmaConfig c = GemmaConfig::from_file(dir() + "/gelu_tied/model");
  c.intermediate_size = 80;
  GemmaForCausalLM m(c, false);
  try {
    load_gemma_weights(m, io::TensorStore::open(dir() + "/gelu_tied/model"));
    FAIL() << "expected a mismatch error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.gate_proj.weight"), std::string::npos)
        << e.what();
  }
  // An untied model needs lm_head.weight, which a tied checkpoint does not have.
  c = GemmaConfig::from_file(dir() + "/gelu_tied/model");
  c.tie_word_embeddings = false;
  GemmaForCausalLM u(c, false);
  try {
    load_gemma_weights(u, io::TensorStore::open(dir() + "/gelu_tied/model"));
    FAIL() << "expected a missing-key error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head.weight"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------

GemmaConfig tiny_config() {
  GemmaConfig c;
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 12;
  c.max_position_embeddings = 64;
  return c;
}

GemmaForCausalLM tiny_model() {
  at::manual_seed(7);
  GemmaForCausalLM m(tiny_config());
  at::NoGradGuard g;
  for (auto& p : m->named_parameters(true))
    if (p.key().find("norm") != std::string::npos) p.value().normal_(0.0, 0.2);
  return m;
}

std::map<std::string, at::Tensor> grads_of(GemmaForCausalLM& m, bool ckpt, bool input_grad,
                                           at::Tensor* input_grad_out) {
  m->zero_grad();
  m->set_gradient_checkpointing(ckpt);
  at::manual_seed(3);
  const at::Tensor ids = at::randint(3, 97, {2, 10});
  at::Tensor embeds = m->embed(ids).detach().clone().requires_grad_(input_grad);
  at::Tensor labels = ids.clone();
  labels.slice(1, 7).fill_(-100);
  GemmaForwardOptions o;
  causal_lm_loss(m->forward(embeds, o), labels).backward();
  std::map<std::string, at::Tensor> g;
  for (const auto& p : m->named_parameters(true))
    g[p.key()] = p.value().grad().defined() ? p.value().grad().clone() : at::Tensor();
  if (input_grad_out) *input_grad_out = input_grad ? embeds.grad().clone() : at::Tensor();
  return g;
}

TEST(GemmaCheckpointing, GradientsEqualWithoutCheckpointing) {
  GemmaForCausalLM m = tiny_model();
  for (bool input_grad : {true, false}) {
    at::Tensor gi_plain, gi_ckpt;
    const auto plain = grads_of(m, false, input_grad, &gi_plain);
    const auto ckpt = grads_of(m, true, input_grad, &gi_ckpt);
    for (const auto& [name, g] : plain) {
      ASSERT_TRUE(g.defined()) << name;
      ASSERT_TRUE(ckpt.at(name).defined()) << name << " got no gradient with checkpointing";
      EXPECT_TRUE(at::equal(g, ckpt.at(name))) << name << " (input_grad " << input_grad << ")";
    }
    if (input_grad) {
      EXPECT_TRUE(at::equal(gi_plain, gi_ckpt));
    }
  }
}

// The block really is recomputed: run once in forward (without a graph) and once in backward.
TEST(GemmaCheckpointing, RecomputesTheBlockInBackward) {
  at::manual_seed(1);
  at::Tensor w = at::randn({4, 4}).requires_grad_(true);
  at::Tensor x = at::randn({3, 4}).requires_grad_(true);
  int calls = 0;
  auto fn = [&](const at::Tensor& in) {
    ++calls;
    return (in.matmul(w)).tanh();
  };
  at::Tensor y = checkpoint(fn, x, {w});
  EXPECT_EQ(calls, 1);
  y.sum().backward();
  EXPECT_EQ(calls, 2);
  const at::Tensor gw = w.grad().clone(), gx = x.grad().clone();
  w.mutable_grad() = at::Tensor();
  x.mutable_grad() = at::Tensor();
  fn(x).sum().backward();
  EXPECT_TRUE(at::equal(gw, w.grad()));
  EXPECT_TRUE(at::equal(gx, x.grad()));
  // Without grad mode nothing is recorded and fn runs once.
  at::NoGradGuard g;
  calls = 0;
  EXPECT_FALSE(checkpoint(fn, x, {w}).requires_grad());
  EXPECT_EQ(calls, 1);
}

TEST(GemmaCheckpointing, FrozenParametersGetNoGradient) {
  GemmaForCausalLM m = tiny_model();
  for (auto& p : m->parameters(true)) p.requires_grad_(false);
  at::Tensor gi_plain, gi_ckpt;
  grads_of(m, false, true, &gi_plain);
  const auto ckpt = grads_of(m, true, true, &gi_ckpt);
  for (const auto& [name, g] : ckpt) EXPECT_FALSE(g.defined()) << name;
  EXPECT_TRUE(at::equal(gi_plain, gi_ckpt));  // stage 1: gradients reach the image rows only
}

TEST(GemmaCheckpointing, RecomputesUnderTheForwardsAutocast) {
  GemmaForCausalLM m = tiny_model();
  auto run = [&](bool ckpt) {
    m->zero_grad();
    m->set_gradient_checkpointing(ckpt);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::Tensor embeds = at::randn({2, 6, 32}, at::TensorOptions().dtype(at::kFloat));
    at::Tensor out = m->forward(embeds);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
    out.to(at::kFloat).sum().backward();
    return m->model->layers[1]->mlp->up_proj->weight.grad().clone();
  };
  at::manual_seed(5);
  const at::Tensor plain = run(false);
  at::manual_seed(5);
  const at::Tensor ckpt = run(true);
  EXPECT_TRUE(at::equal(plain, ckpt));
}

TEST(GemmaKVCache, IncrementalDecodingMatchesFullForward) {
  GemmaForCausalLM m = tiny_model();
  at::NoGradGuard g;
  at::manual_seed(9);
  const at::Tensor embeds = at::randn({2, 9, 32});
  const at::Tensor full = m->forward(embeds);
  GemmaKVCache cache;
  GemmaForwardOptions o;
  o.cache = &cache;
  std::vector<at::Tensor> parts;
  parts.push_back(m->forward(embeds.slice(1, 0, 4), o));  // prompt
  parts.push_back(m->forward(embeds.slice(1, 4, 7), o));  // a chunk (explicit causal mask)
  parts.push_back(m->forward(embeds.slice(1, 7, 8), o));  // single tokens
  parts.push_back(m->forward(embeds.slice(1, 8, 9), o));
  EXPECT_EQ(cache.length(), 9);
  EXPECT_CLOSE(at::cat(parts, 1), full, 1e-5, 1e-6, "kv cache vs full forward");
}

TEST(GemmaModel, PaddingModesAgreeOnRealPositionsAndPadRowsAreIgnored) {
  GemmaForCausalLM m = tiny_model();
  at::NoGradGuard g;
  at::manual_seed(4);
  at::Tensor embeds = at::randn({2, 8, 32});
  at::Tensor mask = at::ones({2, 8}, at::kLong);
  mask.slice(1, 5).select(0, 1).fill_(0);
  GemmaForwardOptions causal, masked;
  causal.attention_mask = mask;
  masked.attention_mask = mask;
  masked.padding = PaddingMode::kMasked;
  const at::Tensor a = m->forward(embeds, causal), b = m->forward(embeds, masked);
  EXPECT_CLOSE(a.select(0, 0), b.select(0, 0), 1e-5, 1e-6, "unpadded row, both modes");
  EXPECT_CLOSE(a.select(0, 1).slice(0, 0, 5), b.select(0, 1).slice(0, 0, 5), 1e-5, 1e-6,
               "padded row, real positions");
  // Changing what sits in the padding changes nothing at real positions.
  at::Tensor e2 = embeds.clone();
  e2.select(0, 1).slice(0, 5).normal_();
  EXPECT_CLOSE(m->forward(e2, causal).select(0, 1).slice(0, 0, 5), a.select(0, 1).slice(0, 0, 5),
               1e-6, 1e-7, "garbage in padding");
}

TEST(GemmaModel, FullSizeParameterCount) {
  const GemmaConfig c = GemmaConfig::gemma_2b();
  EXPECT_EQ(c.num_parameters(), 2506172416LL);
  // The module itself, uninitialised: its fp32 pages are never touched, so this costs address
  // space only (models::Linear allocates on the CPU; the meta device would need a device option
  // there).
  GemmaForCausalLM m(c, /*init_weights=*/false);
  EXPECT_EQ(count_parameters(*m), 2506172416LL);
  const auto shapes = c.parameter_shapes();
  const auto params = m->named_parameters(true);
  ASSERT_EQ(shapes.size(), params.size());
  EXPECT_EQ(shapes.size(), 1u + 18u * 9u + 1u);
  for (size_t i = 0; i < shapes.size(); ++i) {
    EXPECT_EQ(shapes[i].first, params[i].key());
    EXPECT_EQ(at::IntArrayRef(shapes[i].second), params[i].value().sizes()) << shapes[i].first;
  }
  EXPECT_EQ(params["model.layers.17.self_attn.k_proj.weight"].sizes(),
            at::IntArrayRef({256, 2048}));
  EXPECT_EQ(params["model.layers.0.mlp.down_proj.weight"].sizes(), at::IntArrayRef({2048, 16384}));
  // Untied adds the 524,288,000-parameter head.
  GemmaConfig u = c;
  u.tie_word_embeddings = false;
  EXPECT_EQ(u.num_parameters(), 2506172416LL + 256000LL * 2048LL);
}

TEST(GemmaConfigTest, ActivationRuleAndErrorsNameFileAndKey) {
  Json j = GemmaConfig::gemma_2b().to_json();
  j["hidden_activation"] = "gelu_pytorch_tanh";
  GemmaConfig c = GemmaConfig::from_json(j, "cfg.json");
  EXPECT_EQ(c.hidden_act, "gelu");  // 4.38 (MGM) follows hidden_act
  EXPECT_NE(c.activation_reason.find("hidden_activation"), std::string::npos);
  EXPECT_EQ(GemmaConfig::from_json(j, "cfg.json", /*honour_hidden_activation=*/true).hidden_act,
            "gelu_pytorch_tanh");

  // transformers 5.x layout: rope_theta under rope_parameters.
  Json j5 = GemmaConfig::gemma_2b().to_json();
  j5.erase("rope_theta");
  j5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500.0}};
  j5["eos_token_id"] = Json::array({1, 107});
  c = GemmaConfig::from_json(j5, "cfg.json");
  EXPECT_EQ(c.rope_theta, 500.0);
  EXPECT_EQ(c.eos_token_id, 1);

  auto error_of = [](const Json& bad) {
    try {
      GemmaConfig::from_json(bad, "dir/config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  Json missing = GemmaConfig::gemma_2b().to_json();
  missing.erase("head_dim");
  EXPECT_NE(error_of(missing).find("dir/config.json"), std::string::npos);
  EXPECT_NE(error_of(missing).find("head_dim"), std::string::npos);
  Json heads = GemmaConfig::gemma_2b().to_json();
  heads["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(heads).find("num_key_value_heads"), std::string::npos);
  Json act = GemmaConfig::gemma_2b().to_json();
  act["hidden_act"] = "relu";
  EXPECT_NE(error_of(act).find("relu"), std::string::npos);
  Json typ = GemmaConfig::gemma_2b().to_json();
  typ["rms_norm_eps"] = "small";
  EXPECT_NE(error_of(typ).find("rms_norm_eps"), std::string::npos);
  // Round trip.
  const GemmaConfig back = GemmaConfig::from_json(GemmaConfig::gemma_2b().to_json(), "x");
  EXPECT_EQ(back.num_parameters(), GemmaConfig::gemma_2b().num_parameters());
}

}  // namespace
}  // namespace mgm::models
