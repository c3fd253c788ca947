// LoRA: B = 0 leaves the model exactly as it was; merging equals the adapter's forward; in MGM
// only the adapters, the projector and the resampler get gradients; dropout repeats under
// activation checkpointing; adapter files go both ways with peft 0.10 on a transformers Gemma
// (tests/python/lora_interop.py); LLaVA's non_lora_trainables key rules; a base Gemma folder +
// tower folders + adapter merged into a full MGM checkpoint; bad adapters refused by name.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"
#include "models/lora.h"
#include "models/mgm.h"
#include "tests_util.h"
#include "vision_reference.h"

namespace mgm::models {
namespace {

GemmaConfig small_gemma_config() {
  GemmaConfig c;
  c.vocab_size = 200;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 64;
  c.initializer_range = 0.05;
  return c;
}

GemmaForCausalLM small_gemma(uint64_t seed) {
  at::manual_seed(seed);
  GemmaForCausalLM m(small_gemma_config());
  at::NoGradGuard ng;
  for (auto& p : m->named_parameters(true))
    if (ends_with(p.key(), "norm.weight")) p.value().normal_(0.0, 0.1);
  m->eval();
  return m;
}

at::Tensor logits_of(GemmaForCausalLM& m, const at::Tensor& ids) {
  at::NoGradGuard ng;
  return m->forward(m->embed(ids));
}

// Non-zero adapters, as after training.
void randomise_adapters(GemmaForCausalLM& m, uint64_t seed) {
  at::manual_seed(seed);
  at::NoGradGuard ng;
  for (auto& p : m->named_parameters(true))
    if (p.key().find("lora_") != std::string::npos) p.value().normal_(0.0, 0.2);
}

MgmConfig tiny_config() {
  return MgmConfig::from_file(test::source_dir() + "/configs/models/tiny.json");
}

MgmForCausalLM tiny_mgm(uint64_t seed) {
  at::manual_seed(seed);
  MgmForCausalLM m(tiny_config());
  m->reset_tower_parameters();
  m->reset_mgm_parameters();
  return m;
}

struct MgmBatch {
  at::Tensor ids, labels, mask, images, aux;
};

MgmBatch mgm_batch(const MgmConfig& c) {
  at::manual_seed(77);
  MgmBatch b;
  b.ids = at::randint(3, 500, {2, 12}, at::kLong);
  b.ids.index_put_({0, 1}, kImageTokenIndex);
  b.ids.index_put_({1, 3}, kImageTokenIndex);
  b.labels = b.ids.clone();
  b.labels.index_put_({0, 1}, kIgnoreIndex);
  b.labels.index_put_({1, 3}, kIgnoreIndex);
  b.mask = at::ones_like(b.ids);
  b.images = at::randn({2, 3, c.clip.image_size, c.clip.image_size});
  b.aux = at::randn({2, 3, c.image_size_aux, c.image_size_aux});
  return b;
}

at::Tensor mgm_logits(MgmForCausalLM& m, const MgmBatch& b) {
  at::NoGradGuard ng;
  return m->forward(b.ids, {}, b.mask, b.images, b.aux, PaddingMode::kMasked).logits;
}

LoraConfig config_with(int64_t r, double alpha, bool rslora = false, double dropout = 0.0) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.use_rslora = rslora;
  c.lora_dropout = dropout;
  return c;
}

using test::error_of;

TEST(Lora, ZeroBIsTheBaseModelExactly) {
  MgmForCausalLM m = tiny_mgm(3);
  m->eval();
  const MgmBatch b = mgm_batch(m->config());
  const at::Tensor before = mgm_logits(m, b);
  const auto adapted = add_lora(m->llm, config_with(8, 16, false, 0.3));
  EXPECT_EQ(adapted.size(), 7u * 2);  // q, k, v, o, gate, up, down in both layers
  EXPECT_TRUE(at::equal(mgm_logits(m, b), before));
  // Dropout on the A path changes nothing while B is zero, in training mode too.
  m->train();
  m->vision_tower_aux->eval();  // DropPath would draw; keep the towers deterministic
  EXPECT_TRUE(at::equal(mgm_logits(m, b), before));
  // PEFT's initialisation: A ~ U(+-1/sqrt(in)) (kaiming_uniform a=sqrt(5)), B = 0.
  for (const auto& name : lora_modules(m->llm)) {
    for (const auto& p : m->llm->named_parameters(true)) {
      if (p.key() == name + ".lora_A.weight") {
        const double bound = 1.0 / std::sqrt(static_cast<double>(p.value().size(1)));
        EXPECT_LE(p.value().abs().max().item<double>(), bound) << p.key();
        EXPECT_GT(p.value().abs().max().item<double>(), 0.5 * bound) << p.key();
        EXPECT_EQ(p.value().size(0), 8) << p.key();
      }
      if (p.key() == name + ".lora_B.weight") {
        EXPECT_EQ(p.value().abs().max().item<double>(), 0.0);
      }
    }
  }
}

TEST(Lora, OnlyAdaptersProjectorAndResamplerGetGradients) {
  MgmForCausalLM m = tiny_mgm(4);
  m->set_trainable(MgmStage::kPretrain);  // what LoRA training starts from (LLM frozen)
  add_lora(m->llm, config_with(4, 8));
  randomise_adapters(m->llm, 5);  // so A's gradient is not zero by construction
  m->train();
  const MgmBatch b = mgm_batch(m->config());
  m->forward(b.ids, b.labels, b.mask, b.images, b.aux).loss.backward();
  std::map<std::string, int64_t> with_grad;
  int64_t lora_numel = 0;
  for (const auto& p : m->named_parameters(true)) {
    const bool trainable = p.value().requires_grad();
    const bool has_grad = p.value().grad().defined();
    EXPECT_EQ(trainable, has_grad) << p.key();
    if (!has_grad) continue;
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    const std::string kind = p.key().find(".lora_") != std::string::npos   ? "lora"
                             : starts_with(p.key(), "model.mm_projector.") ? "projector"
                             : starts_with(p.key(), "model.vlm_uni_")      ? "resampler"
                                                                           : "other: " + p.key();
    ++with_grad[kind];
    if (kind == "lora") lora_numel += p.value().numel();
  }
  EXPECT_EQ(with_grad.size(), 3u);
  EXPECT_EQ(with_grad["lora"], 2 * 7 * 2);   // A and B of 7 layers in 2 decoder layers
  EXPECT_EQ(with_grad["projector"], 4);      // mm_projector.{0,2}.{weight,bias}
  EXPECT_EQ(with_grad["resampler"], 3 * 4);  // vlm_uni_{query,aux,val}_projector.{0,1}.{w,b}
  // r (in + out) per adapted layer: hidden 64, q 4x16, kv 1x16, intermediate 128.
  const int64_t r = 4, H = 64, Q = 64, KV = 16, I = 128;
  const int64_t per_layer = r * ((H + Q) + (H + KV) + (H + KV) + (Q + H) + 2 * (H + I) + (I + H));
  EXPECT_EQ(lora_numel, 2 * per_layer);
}

TEST(Lora, MergedModelEqualsTheAdapterForward) {
  const at::Tensor ids = at::randint(3, 200, {2, 10}, at::kLong);
  for (const bool rslora : {false, true}) {
    GemmaForCausalLM m = small_gemma(21);
    const at::Tensor base = logits_of(m, ids);
    add_lora(m, config_with(4, 7.5, rslora));
    randomise_adapters(m, 22);
    const at::Tensor with_adapter = logits_of(m, ids);
    EXPECT_GT((with_adapter - base).abs().max().item<double>(), 1e-2) << "the adapter must matter";
    // The scaling in the layer: alpha / r, or alpha / sqrt(r) with rsLoRA.
    for (const auto& mod : m->named_modules()) {
      auto lin = std::dynamic_pointer_cast<LinearImpl>(mod.value());
      if (lin && lin->has_lora()) {
        EXPECT_DOUBLE_EQ(lin->lora_scaling, rslora ? 7.5 / 2.0 : 7.5 / 4.0);
      }
    }
    EXPECT_EQ(merge_and_unload_lora(m), 14);
    EXPECT_TRUE(lora_modules(m).empty());
    for (const auto& p : m->named_parameters(true))
      EXPECT_EQ(p.key().find("lora_"), std::string::npos) << p.key();
    EXPECT_TRUE(test::all_close(logits_of(m, ids), with_adapter, 1e-5, 1e-5))
        << "rslora " << rslora;
  }
}

TEST(Lora, DropoutMasksRepeatUnderActivationCheckpointing) {
  const at::Tensor ids = at::randint(3, 200, {2, 10}, at::kLong);
  std::vector<std::vector<at::Tensor>> grads;
  std::vector<int64_t> after;
  for (const bool ckpt : {false, true}) {
    GemmaForCausalLM m = small_gemma(31);
    m->set_gradient_checkpointing(ckpt);
    for (auto& p : m->parameters()) p.set_requires_grad(false);
    add_lora(m, config_with(4, 8, false, 0.4));
    randomise_adapters(m, 32);
    m->train();
    at::manual_seed(33);
    causal_lm_loss(m->forward(m->embed(ids)), ids).backward();
    std::vector<at::Tensor> g;
    for (const auto& p : m->named_parameters(true))
      if (p.value().requires_grad()) g.push_back(p.value().grad().clone());
    grads.push_back(g);
    // The global stream continues as if every block had run once.
    after.push_back(at::randint(0, 1 << 30, {1}, at::kLong).item<int64_t>());
  }
  EXPECT_EQ(after[0], after[1]);
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i)
    EXPECT_TRUE(at::equal(grads[0][i], grads[1][i])) << i;
}

void save_gemma_folder(GemmaForCausalLM& m, const std::string& dir, const Json& config) {
  make_dirs(dir);
  write_json_file(dir + "/config.json", config);
  io::save_safetensors(dir + "/model.safetensors",
                       module_tensors(*m, "", /*include_buffers=*/false), {{"format", "pt"}});
}

TEST(LoraInterop, AdapterWrittenHereLoadsInPeft) {
  const std::string d = test::temp_dir("lora_to_peft");
  GemmaForCausalLM m = small_gemma(41);
  save_gemma_folder(m, d + "/gemma", m->config().to_json());
  LoraConfig c = config_with(4, 7.5, /*rslora=*/true, 0.05);
  c.base_model_name_or_path = d + "/gemma";
  add_lora(m, c);
  randomise_adapters(m, 42);
  save_lora_adapter(d + "/adapter", m, c);
  const Json written = read_json_file(d + "/adapter/adapter_config.json");
  EXPECT_EQ(written.at("peft_type"), "LORA");
  EXPECT_EQ(written.at("target_modules").size(), 7u);
  const auto keys = io::TensorStore::open(d + "/adapter/adapter_model.safetensors").names();
  EXPECT_EQ(keys.size(), 2u * 7 * 2);
  EXPECT_NE(std::find(keys.begin(), keys.end(),
                      "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            keys.end());
  const at::Tensor ids = at::randint(3, 200, {2, 9}, at::kLong);
  const at::Tensor with_adapter = logits_of(m, ids);
  merge_and_unload_lora(m);
  io::save_safetensors(
      d + "/result.safetensors",
      {{"input_ids", ids}, {"logits", with_adapter}, {"merged_logits", logits_of(m, ids)}});
  std::string out;
  const int rc =
      test::run_python(str_cat(test::source_dir(), "/tests/python/lora_interop.py check ", d,
                               "/gemma ", d, "/adapter ", d, "/result.safetensors"),
                       &out);
  EXPECT_EQ(rc, 0) << out;
  std::printf("%s", out.c_str());
}

TEST(LoraInterop, AdapterWrittenByPeftLoadsHere) {
  const std::string d = test::temp_dir("peft_to_lora");
  std::string out;
  ASSERT_EQ(test::run_python(test::source_dir() + "/tests/python/lora_interop.py make " + d, &out),
            0)
      << out;
  GemmaForCausalLM m = load_gemma_pretrained(d + "/gemma", at::kFloat, at::kCPU);
  m->eval();
  const LoraAdapter ad = open_lora_adapter(d + "/adapter");
  EXPECT_TRUE(ad.config.use_rslora);
  ASSERT_EQ(ad.modules.size(), 6u);  // q, v, down in 2 layers
  // rank_pattern / alpha_pattern as PEFT resolves them, with rsLoRA's alpha / sqrt(r).
  const auto& q = ad.modules.at("model.layers.0.self_attn.q_proj");
  const auto& v = ad.modules.at("model.layers.1.self_attn.v_proj");
  const auto& down = ad.modules.at("model.layers.0.mlp.down_proj");
  EXPECT_EQ(q.r, 6);
  EXPECT_DOUBLE_EQ(q.scaling, 12.0 / std::sqrt(6.0));
  EXPECT_DOUBLE_EQ(v.scaling, 5.0 / std::sqrt(6.0));
  EXPECT_EQ(down.r, 3);
  EXPECT_DOUBLE_EQ(down.scaling, 12.0 / std::sqrt(3.0));
  attach_lora_adapter(m, ad);
  const io::TensorStore ref = io::TensorStore::open(d + "/reference.safetensors");
  const at::Tensor ids = ref.get("input_ids").to(at::kLong);
  EXPECT_TRUE(test::all_close(logits_of(m, ids), ref.get("logits"), 1e-5, 1e-5));
  merge_and_unload_lora(m);
  EXPECT_TRUE(test::all_close(logits_of(m, ids), ref.get("merged_logits"), 1e-5, 1e-5));
}

TEST(Lora, NonLoraTrainablesKeysAndRoundTrip) {
  // LLaVA's rules: "base_model." dropped, then "model." when keys start with "model.model.".
  auto map = non_lora_key_map({"base_model.model.model.mm_projector.0.weight"});
  EXPECT_EQ(map.begin()->second, "model.mm_projector.0.weight");
  map = non_lora_key_map({"model.model.mm_projector.0.weight", "model.lm_head.weight"});
  EXPECT_EQ(map.at("model.model.mm_projector.0.weight"), "model.mm_projector.0.weight");
  EXPECT_EQ(map.at("model.lm_head.weight"), "lm_head.weight");
  map = non_lora_key_map({"model.mm_projector.0.weight"});
  EXPECT_EQ(map.begin()->second, "model.mm_projector.0.weight");

  MgmForCausalLM a = tiny_mgm(51);
  a->set_trainable(MgmStage::kPretrain);
  add_lora(a->llm, config_with(2, 4));
  std::set<std::string> names;
  for (const auto& [n, t] : non_lora_trainables(a)) names.insert(n);
  EXPECT_EQ(names.size(), 16u);
  for (const auto& n : names)
    EXPECT_TRUE(starts_with(n, "base_model.model.model.mm_projector.") ||
                starts_with(n, "base_model.model.model.vlm_uni_"))
        << n;
  const std::string path = test::temp_dir("non_lora") + "/non_lora_trainables.bin";
  save_non_lora_trainables(path, a);
  MgmForCausalLM b = tiny_mgm(52);
  EXPECT_EQ(load_non_lora_trainables(b, path).size(), 16u);
  EXPECT_TRUE(at::equal(a->mm_projector->linears[1]->weight, b->mm_projector->linears[1]->weight));
  EXPECT_TRUE(
      at::equal(a->vlm_uni_aux_projector->norm->bias, b->vlm_uni_aux_projector->norm->bias));
}

TEST(Lora, BadConfigsAndAdaptersAreRefusedByName) {
  const Json j = config_with(4, 8).to_peft_json();
  EXPECT_EQ(LoraConfig::from_peft_json(j, "x").r, 4);
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, Json>>{{"use_dora", true},
                                                 {"bias", "all"},
                                                 {"modules_to_save", Json::array({"lm_head"})},
                                                 {"layers_to_transform", Json::array({0})},
                                                 {"fan_in_fan_out", true},
                                                 {"peft_type", "IA3"}}) {
    Json bad = j;
    bad[key] = value;
    const std::string e = error_of([&] { LoraConfig::from_peft_json(bad, "cfg.json"); });
    EXPECT_NE(e.find(key), std::string::npos) << key << ": " << e;
  }
  GemmaForCausalLM m = small_gemma(61);
  LoraConfig wrong = config_with(4, 8);
  wrong.target_modules = {"q_proj", "x_proj"};
  const std::string e = error_of([&] { add_lora(m, wrong); });
  EXPECT_NE(e.find("x_proj"), std::string::npos) << e;
  EXPECT_NE(e.find("gate_proj"), std::string::npos) << e;  // lists the valid names
  EXPECT_TRUE(lora_modules(m).empty());                    // and nothing was attached

  // An adapter for another model, and one with a layer that does not exist.
  const std::string d = test::temp_dir("bad_adapter");
  GemmaForCausalLM src = small_gemma(63);
  add_lora(src, config_with(4, 8));
  save_lora_adapter(d + "/ok", src, config_with(4, 8));
  GemmaConfig other_cfg = small_gemma_config();
  other_cfg.intermediate_size = 96;
  at::manual_seed(1);
  GemmaForCausalLM other(other_cfg);
  const std::string e2 =
      error_of([&] { attach_lora_adapter(other, open_lora_adapter(d + "/ok")); });
  EXPECT_NE(e2.find("model.layers.0.mlp.down_proj: adapter A [4, 80]"), std::string::npos) << e2;
  io::NamedTensors t = lora_state(src);
  t.emplace_back("base_model.model.model.layers.0.mlp.extra_proj.lora_A.weight",
                 at::zeros({4, 48}));
  t.emplace_back("base_model.model.model.layers.0.mlp.extra_proj.lora_B.weight",
                 at::zeros({48, 4}));
  LoraConfig extra = config_with(4, 8);
  extra.target_modules.push_back("extra_proj");
  make_dirs(d + "/extra");
  write_json_file(d + "/extra/adapter_config.json", extra.to_peft_json());
  io::save_safetensors(d + "/extra/adapter_model.safetensors", t);
  GemmaForCausalLM fresh = small_gemma(62);
  const std::string e3 =
      error_of([&] { attach_lora_adapter(fresh, open_lora_adapter(d + "/extra")); });
  EXPECT_NE(e3.find("model.layers.0.mlp.extra_proj: no such linear layer"), std::string::npos)
      << e3;
  // Non-finite merges are refused.
  {
    at::NoGradGuard ng;
    for (auto& p : src->named_parameters(true))
      if (ends_with(p.key(), "lora_B.weight"))
        p.value().fill_(std::numeric_limits<float>::infinity());
  }
  const std::string e4 = error_of([&] { merge_and_unload_lora(src); });
  EXPECT_NE(e4.find("non-finite"), std::string::npos) << e4;
  // Finite in fp32 but beyond fp16's range once cast back (PEFT's safe_merge checks in the
  // weight's dtype too).
  const at::Tensor w16 = at::full({2, 3}, 60000.0, at::kHalf);
  const at::Tensor a = at::ones({1, 3}), b = at::ones({2, 1});
  EXPECT_TRUE(at::isfinite(lora_merged_weight(w16, a, b, 100.0, "w")).all().item<bool>());
  const std::string e5 = error_of([&] { lora_merged_weight(w16, a, b, 10000.0, "w"); });
  EXPECT_NE(e5.find("non-finite"), std::string::npos) << e5;
  EXPECT_NE(e5.find("Half"), std::string::npos) << e5;
}

// A LLaVA-style base (a plain Gemma folder; towers from the folders the adapter's config.json
// names) + an adapter with its non_lora_trainables.bin -> a full MGM checkpoint whose logits
// equal the unmerged model's.
TEST(LoraMerge, GemmaBaseAndTowerFoldersGiveAFullMgmCheckpoint) {
  const std::string d = test::temp_dir("merge_gemma_base");
  MgmForCausalLM m = tiny_mgm(71);
  m->eval();
  save_gemma_folder(m->llm, d + "/gemma", m->config().gemma.to_json());
  make_dirs(d + "/clip");
  io::save_safetensors(d + "/clip/model.safetensors", module_tensors(*m->vision_tower, "", false));
  io::NamedTensors oc;
  for (const auto& [n, t] : module_tensors(*m->vision_tower_aux, "", false)) {
    std::string k = n;
    if (starts_with(k, "vision_stem.")) k = "stem." + k.substr(12);
    if (starts_with(k, "vision_stages.")) k = "stages." + k.substr(14);
    oc.emplace_back("visual.trunk." + k, t);
  }
  make_dirs(d + "/convnext");
  io::save_torch_zip(d + "/convnext/open_clip_pytorch_model.bin", oc);

  m->set_trainable(MgmStage::kPretrain);
  const LoraConfig c = config_with(4, 8);
  add_lora(m->llm, c);
  randomise_adapters(m->llm, 72);
  const std::string ad = d + "/adapter";
  save_lora_adapter(ad, m->llm, c);
  save_non_lora_trainables(ad + "/non_lora_trainables.bin", m);
  Json cfg = m->config().to_json();
  cfg["mm_vision_tower"] = d + "/clip";
  cfg["mm_vision_tower_aux"] = d + "/convnext";
  write_json_file(ad + "/config.json", cfg);

  const MgmBatch b = mgm_batch(m->config());
  const at::Tensor want = mgm_logits(m, b);
  MergeLoraOptions o;
  o.max_shard_size = 200000;  // several shards
  const auto rep = merge_lora_checkpoint(d + "/gemma", ad, d + "/merged", o);
  EXPECT_EQ(rep.merged, 14);
  EXPECT_EQ(rep.replaced, 16);
  MgmForCausalLM merged = load_mgm_checkpoint(d + "/merged");
  merged->eval();
  EXPECT_TRUE(test::all_close(mgm_logits(merged, b), want, 1e-5, 1e-5));
  MgmForCausalLM unmerged = load_mgm_with_adapter(ad, d + "/gemma", {}, /*merge=*/false);
  unmerged->eval();
  EXPECT_FALSE(lora_modules(unmerged->llm).empty());
  EXPECT_TRUE(test::all_close(mgm_logits(unmerged, b), want, 1e-5, 1e-5));
  // The output is never replaced without --overwrite.
  const std::string e =
      error_of([&] { merge_lora_checkpoint(d + "/gemma", ad, d + "/merged", {}); });
  EXPECT_NE(e.find("--overwrite"), std::string::npos) << e;
  o.overwrite = true;
  EXPECT_EQ(merge_lora_checkpoint(d + "/gemma", ad, d + "/merged", o).tensors, rep.tensors);
  EXPECT_FALSE(path_exists(d + "/merged.tmp-" + std::to_string(::getpid())));
}

}  // namespace
}  // namespace mgm::models
