// The MGM wrapper against a Python reference of the MGM-only parts written from mgm-model.md on
// top of transformers' Gemma/CLIP and timm's ConvNeXt (tests/parity/mgm_reference.py): image
// features, spliced labels, logits, loss and gradients in fp32; loading from a checkpoint folder
// and from separate sources; saving (checkpoint folder, mm_projector.bin) read back by Python;
// `mgm logits`; full-size parameter counts and the stage trainable sets.
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "common/error.h"
#include "common/strings.h"
#include "models/mgm.h"
#include "tests_util.h"
#include "vision_reference.h"

namespace mgm::models {
namespace {

namespace fs = std::filesystem;

class MgmParity : public ::testing::Test {
 protected:
  static const std::string& dir() {
    static std::string d = [] {
      std::string out_dir = test::temp_dir("mgm_parity");
      std::string out;
      int rc =
          test::run_python(test::source_dir() + "/tests/parity/mgm_reference.py " + out_dir, &out);
      if (rc != 0) {
        ADD_FAILURE() << "mgm_reference.py failed (" << rc << "):\n" << out;
        return std::string();
      }
      return out_dir;
    }();
    return d;
  }
  void SetUp() override { ASSERT_FALSE(dir().empty()) << "reference script failed"; }
  static at::Tensor ref(const std::string& name) {
    return io::TensorStore::open(dir() + "/reference.safetensors").get(name).clone();
  }
  static at::Tensor input(const std::string& name) {
    return io::TensorStore::open(dir() + "/inputs.safetensors").get(name).clone();
  }
  static MgmForCausalLMImpl::Output run(MgmForCausalLM& m, PaddingMode mode,
                                        const at::Tensor& images) {
    return m->forward(input("input_ids"), input("labels"), input("attention_mask"), images,
                      input("images_aux"), mode);
  }
};

// Gradients: 1e-5 relative to each tensor's scale. (Some are zero mathematically, e.g. the bias
// of the key projection, which shifts every score of a cell equally; both sides then hold float
// rounding noise around 1e-12, far below every other gradient.)
::testing::AssertionResult grad_close(const at::Tensor& got, const at::Tensor& want) {
  const double scale = want.abs().max().item<double>();
  return test::all_close(got, want, 1e-5, 1e-5 * scale + 1e-10);
}

TEST_F(MgmParity, CheckpointForwardLossAndGradients) {
  MgmForCausalLM m = load_mgm_checkpoint(dir() + "/ckpt");
  m->set_trainable(MgmStage::kFinetune);

  // Encoder path: CLIP layer -2 patches, ConvNeXt feature, mining, projector.
  {
    at::NoGradGuard ng;
    const at::Tensor lr = m->vision_tower->forward(input("images"));
    const at::Tensor hr = m->vision_tower_aux->forward(input("images_aux"));
    EXPECT_TRUE(test::all_close(lr, ref("lr")));
    EXPECT_TRUE(test::all_close(hr, ref("hr"), 1e-5, 1e-5));
    const at::Tensor mined =
        ref("lr") + patch_info_mining(ref("lr"), ref("hr"), m->vlm_uni_query_projector,
                                      m->vlm_uni_aux_projector, m->vlm_uni_val_projector);
    EXPECT_TRUE(test::all_close(mined, ref("mined")));
    EXPECT_TRUE(test::all_close(m->encode_images(input("images"), input("images_aux")),
                                ref("image_features"), 1e-5, 1e-5));
  }

  auto out = run(m, PaddingMode::kMasked, input("images"));
  EXPECT_TRUE(at::equal(out.labels, ref("labels")));
  EXPECT_TRUE(at::equal(out.attention_mask.to(at::kLong), ref("attention_mask")));
  EXPECT_EQ(out.logits.size(1), 48);  // tokenizer_model_max_length: the long row was truncated
  EXPECT_TRUE(test::all_close(out.logits, ref("logits"), 1e-5, 1e-6));
  EXPECT_TRUE(test::all_close(out.loss.reshape({1}), ref("loss"), 1e-6, 0.0));

  out.loss.backward();
  int checked = 0;
  for (const auto& p : m->named_parameters(true)) {
    const std::string key = "grad." + p.key();
    if (!io::TensorStore::open(dir() + "/reference.safetensors").contains(key)) {
      EXPECT_FALSE(p.value().requires_grad()) << p.key() << " trains but has no reference grad";
      continue;
    }
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(grad_close(p.value().grad(), ref(key))) << key;
    ++checked;
  }
  // Gemma (embed, 2 layers x 9, norm) + mm_projector 4 + vlm_uni 12.
  EXPECT_EQ(checked, 1 + 2 * 9 + 1 + 4 + 12);

  // Training path (right padding, causal only): identical at the real positions and in the loss.
  at::NoGradGuard ng;
  auto causal = run(m, PaddingMode::kRightPaddedCausal, input("images"));
  const at::Tensor real = ref("attention_mask").to(at::kBool).unsqueeze(-1);
  EXPECT_TRUE(test::all_close(at::masked_select(causal.logits, real),
                              at::masked_select(ref("logits"), real), 1e-5, 1e-6));
  EXPECT_TRUE(test::all_close(causal.loss.reshape({1}), ref("loss"), 1e-6, 0.0));
}

TEST_F(MgmParity, ImageSlotLayouts) {
  MgmForCausalLM m = load_mgm_checkpoint(dir() + "/ckpt");
  at::NoGradGuard ng;
  // One slot per -200 marker (no placeholder for the text-only sample, slot 1) gives the same.
  const at::Tensor images = input("images"), aux = input("images_aux");
  const at::Tensor compact = at::cat({images.slice(0, 0, 1), images.slice(0, 2)}, 0);
  const at::Tensor compact_aux = at::cat({aux.slice(0, 0, 1), aux.slice(0, 2)}, 0);
  auto out = m->forward(input("input_ids"), input("labels"), input("attention_mask"), compact,
                        compact_aux, PaddingMode::kMasked);
  EXPECT_TRUE(test::all_close(out.logits, ref("logits"), 1e-5, 1e-6));
  // Any other count is an error naming both numbers.
  try {
    m->forward(input("input_ids"), input("labels"), input("attention_mask"), images.slice(0, 0, 3),
               aux.slice(0, 0, 3), PaddingMode::kMasked);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 image markers"), std::string::npos) << e.what();
  }
}

TEST_F(MgmParity, KeyMapIsTheCheckpoints) {
  MgmForCausalLM m = load_mgm_checkpoint(dir() + "/ckpt");
  const io::TensorStore store = io::TensorStore::open(dir() + "/ckpt");
  std::set<std::string> want(store.names().begin(), store.names().end()), got;
  for (const auto& [n, t] : module_tensors(*m)) got.insert(n);
  EXPECT_EQ(got, want);
  int uni = 0, proj = 0;
  for (const auto& n : got) {
    uni += starts_with(n, "model.vlm_uni_");
    proj += starts_with(n, "model.mm_projector.");
  }
  EXPECT_EQ(uni, 12);
  EXPECT_EQ(proj, 4);
  EXPECT_TRUE(got.count("model.vlm_uni_aux_projector.1.weight"));
  EXPECT_TRUE(got.count("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight"));
  EXPECT_TRUE(got.count("model.vision_tower_aux.vision_stem.0.weight"));
  EXPECT_TRUE(got.count("model.vision_tower_aux.vision_stages.3.downsample.1.weight"));
}

TEST_F(MgmParity, FromSeparatePartsAndAdapter) {
  MgmForCausalLM full = load_mgm_checkpoint(dir() + "/ckpt");
  const MgmConfig cfg = MgmConfig::from_file(dir() + "/ckpt");
  MgmSources src{dir() + "/gemma", dir() + "/clip", dir() + "/convnext", ""};
  // Without the adapter the MGM-only modules are freshly initialised.
  MgmForCausalLM fresh = load_mgm_from_parts(cfg, src);
  EXPECT_TRUE(at::equal(fresh->vlm_uni_query_projector->norm->weight,
                        at::ones_like(fresh->vlm_uni_query_projector->norm->weight)));
  EXPECT_FALSE(
      at::equal(fresh->mm_projector->linears[0]->weight, full->mm_projector->linears[0]->weight));
  src.pretrain_mm_mlp_adapter = dir() + "/mm_projector.bin";
  MgmForCausalLM parts = load_mgm_from_parts(cfg, src);
  const auto a = module_tensors(*parts), b = module_tensors(*full);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
  }
  at::NoGradGuard ng;
  EXPECT_TRUE(test::all_close(run(parts, PaddingMode::kMasked, input("images")).logits,
                              ref("logits"), 1e-5, 1e-6));
}

TEST_F(MgmParity, MissingTensorsAreNamed) {
  // A checkpoint without the value projector: the error names its tensors.
  const std::string d = test::temp_dir("mgm_missing");
  io::NamedTensors kept;
  const io::TensorStore store = io::TensorStore::open(dir() + "/ckpt");
  for (const auto& n : store.names())
    if (!starts_with(n, "model.vlm_uni_val_projector.1.")) kept.emplace_back(n, store.get(n));
  kept.emplace_back("model.unknown_module.weight", at::randn({2}));
  io::save_safetensors(d + "/model.safetensors", kept);
  fs::copy_file(dir() + "/ckpt/config.json", d + "/config.json");
  try {
    load_mgm_checkpoint(d);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.vlm_uni_val_projector.1.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.unknown_module.weight"), std::string::npos) << msg;
  }
}

TEST_F(MgmParity, SaveCheckpointAndProjectorBinReadByPython) {
  MgmForCausalLM m = load_mgm_checkpoint(dir() + "/ckpt");
  const std::string out = test::temp_dir("mgm_save");
  // A small shard size forces a sharded folder with an index.
  save_mgm_checkpoint(m, out + "/ckpt", 64 << 10);
  EXPECT_TRUE(fs::exists(out + "/ckpt/model.safetensors.index.json"));
  std::string log;
  EXPECT_EQ(
      test::run_python(str_cat(test::source_dir(), "/tests/parity/mgm_reference.py check_ckpt ",
                               out, "/ckpt ", dir()),
                       &log),
      0)
      << log;
  MgmForCausalLM back = load_mgm_checkpoint(out + "/ckpt");
  {
    at::NoGradGuard ng;
    EXPECT_TRUE(test::all_close(run(back, PaddingMode::kMasked, input("images")).logits,
                                ref("logits"), 1e-5, 1e-6));
  }

  // mm_projector.bin: the §6.3 set (projector, vlm_uni_*, both towers; no Gemma weights).
  const auto tensors = mm_projector_tensors(m);
  int proj = 0, uni = 0, clip = 0, conv = 0;
  for (const auto& [n, t] : tensors) {
    EXPECT_FALSE(starts_with(n, "model.layers.") || starts_with(n, "model.embed_tokens") ||
                 starts_with(n, "model.norm"))
        << n;
    proj += starts_with(n, "model.mm_projector.");
    uni += starts_with(n, "model.vlm_uni_");
    clip += starts_with(n, "model.vision_tower.vision_tower.");
    conv += starts_with(n, "model.vision_tower_aux.");
  }
  EXPECT_EQ(proj, 4);
  EXPECT_EQ(uni, 12);
  EXPECT_EQ(clip, static_cast<int>(m->vision_tower->named_parameters(true).size()));
  EXPECT_EQ(conv, static_cast<int>(m->vision_tower_aux->named_parameters(true).size()));
  EXPECT_EQ(static_cast<size_t>(proj + uni + clip + conv), tensors.size());
  save_mm_projector_bin(m, out + "/mm_projector.bin");
  EXPECT_EQ(
      test::run_python(str_cat(test::source_dir(), "/tests/parity/mgm_reference.py check_bin ", out,
                               "/mm_projector.bin ", dir()),
                       &log),
      0)
      << log;
  // And it loads back here as a stage-2 adapter.
  MgmForCausalLM fresh = load_mgm_from_parts(
      m->config(),
      {dir() + "/gemma", dir() + "/clip", dir() + "/convnext", out + "/mm_projector.bin"});
  EXPECT_TRUE(at::equal(fresh->vlm_uni_val_projector->linear->weight,
                        m->vlm_uni_val_projector->linear->weight));
}

TEST_F(MgmParity, LogitsCommand) {
  const std::string out = test::temp_dir("mgm_logits");
  compute_logits(dir() + "/ckpt", dir() + "/inputs.safetensors", out + "/out.safetensors");
  const io::TensorStore got = io::TensorStore::open(out + "/out.safetensors");
  EXPECT_TRUE(test::all_close(got.get("logits"), ref("logits"), 1e-5, 1e-6));
  EXPECT_TRUE(test::all_close(got.get("loss").reshape({1}), ref("loss"), 1e-6, 0.0));

  // The binary, once (next to this test executable's build folder).
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  self[n] = 0;
  const fs::path bin = fs::path(self).parent_path().parent_path() / "eval" / "mgm";
  ASSERT_TRUE(fs::exists(bin)) << bin << " not built (models_tests depends on the mgm target)";
  const std::string cmd = str_cat(bin.string(), " logits --model-dir ", dir(), "/ckpt --inputs ",
                                  dir(), "/inputs.safetensors --output ", out,
                                  "/bin.safetensors --dtype fp32 --device cpu 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const io::TensorStore b = io::TensorStore::open(out + "/bin.safetensors");
  EXPECT_TRUE(test::all_close(b.get("logits"), ref("logits"), 1e-5, 1e-6));
  EXPECT_TRUE(b.contains("loss"));
}

// ---------------------------------------------------------------------------------------------

TEST(MgmCounts, FullSizeWithoutAllocating) {
  for (const MgmConfig& c :
       {MgmConfig::mgm_2b(),
        MgmConfig::from_file(test::source_dir() + "/configs/models/mgm_2b.json")}) {
    const MgmParameterCounts n = mgm_parameter_counts(c);
    EXPECT_EQ(n.gemma, 2506172416);
    EXPECT_EQ(n.clip, 303507456);
    EXPECT_EQ(n.convnext, 196227264);
    EXPECT_EQ(n.query, 1051648);
    EXPECT_EQ(n.aux, 2955904);
    EXPECT_EQ(n.val, 2955904);
    EXPECT_EQ(n.projector, 6295552);
    EXPECT_EQ(n.total(), 3019166144);
    EXPECT_EQ(n.trainable_pretrain(), 13259008);
    EXPECT_EQ(n.trainable_finetune(), 2519431424);
    EXPECT_EQ(c.image_tokens(), 576);
    EXPECT_EQ(c.cell(), 8);
    EXPECT_EQ(c.mm_hidden_size_aux, 2880);
  }
}

TEST(MgmStages, TrainableSetsAndCounts) {
  for (const char* name : {"tiny", "demo"}) {
    const MgmConfig c =
        MgmConfig::from_file(str_cat(test::source_dir(), "/configs/models/", name, ".json"));
    MgmForCausalLM m(c);
    const MgmParameterCounts n = mgm_parameter_counts(c);
    // The arithmetic is the module's.
    EXPECT_EQ(count_parameters(*m), n.total()) << name;

    m->set_trainable(MgmStage::kPretrain);
    EXPECT_EQ(count_parameters(*m, true), n.trainable_pretrain()) << name;
    int trainable = 0;
    for (const auto& p : m->named_parameters(true)) {
      const bool mm = starts_with(p.key(), "model.mm_projector.") ||
                      starts_with(p.key(), "model.vlm_uni_query_projector.") ||
                      starts_with(p.key(), "model.vlm_uni_aux_projector.") ||
                      starts_with(p.key(), "model.vlm_uni_val_projector.");
      EXPECT_EQ(p.value().requires_grad(), mm) << p.key();
      trainable += p.value().requires_grad();
    }
    EXPECT_EQ(trainable, 16);

    m->set_trainable(MgmStage::kFinetune);
    EXPECT_EQ(count_parameters(*m, true), n.trainable_finetune()) << name;
    for (const auto& p : m->named_parameters(true)) {
      const bool tower = starts_with(p.key(), "model.vision_tower");
      EXPECT_EQ(p.value().requires_grad(), !tower) << p.key();
    }
  }
}

TEST(MgmConfigTest, RoundTripAndErrors) {
  const MgmConfig c = MgmConfig::from_file(test::source_dir() + "/configs/models/tiny.json");
  EXPECT_EQ(c.image_tokens(), 16);
  EXPECT_EQ(c.cell(), 8);
  const MgmConfig back = MgmConfig::from_json(c.to_json(), "round trip");
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(c.to_json()["model_type"], "mgm_gemma");
  EXPECT_EQ(c.to_json()["mm_projector_type"], "mlp2x_gelu");

  Json bad = c.to_json();
  bad["image_size_aux"] = 144;  // not a multiple of the ConvNeXt's total stride (32)
  EXPECT_THROW(MgmConfig::from_json(bad, "bad"), Error);
  bad = c.to_json();
  bad["mm_projector_type"] = "mlp2x_relu";
  EXPECT_THROW(MgmConfig::from_json(bad, "bad"), Error);
  bad = c.to_json();
  bad["mm_hidden_size"] = 33;
  EXPECT_THROW(MgmConfig::from_json(bad, "bad"), Error);
}

TEST(MgmProjectorTest, LinearAndDeeperMlp) {
  MgmProjector lin("linear", 4, 6, at::TensorOptions());
  EXPECT_EQ(lin->named_parameters(true).size(), 2u);
  EXPECT_TRUE(lin->named_parameters(true).contains("0.weight"));
  MgmProjector mlp3("mlp3x_gelu", 4, 6, at::TensorOptions());
  std::set<std::string> names;
  for (const auto& p : mlp3->named_parameters(true)) names.insert(p.key());
  EXPECT_EQ(names, (std::set<std::string>{"0.weight", "0.bias", "2.weight", "2.bias", "4.weight",
                                          "4.bias"}));
  // mlp3x: W4 gelu(W2 gelu(W0 x)).
  at::NoGradGuard ng;
  for (auto& p : mlp3->parameters()) p.normal_();
  const at::Tensor x = at::randn({3, 4});
  auto lin_of = [&](int i, const at::Tensor& h) {
    return at::linear(h, mlp3->linears[i]->weight, mlp3->linears[i]->bias);
  };
  const at::Tensor want = lin_of(2, at::gelu(lin_of(1, at::gelu(lin_of(0, x)))));
  EXPECT_TRUE(test::all_close(mlp3->forward(x), want));
}

TEST(MgmMining, HandComputedCell) {
  // One LR token, a 2x2 HR map with identity-like projections: the output is the softmax of
  // q.k/sqrt(C) over the four HR positions applied to v.
  const auto o = at::TensorOptions();
  MgmNormLinear q(2, 2, o), k(2, 2, o), v(2, 2, o);
  at::NoGradGuard ng;
  for (MgmNormLinear* m : {&q, &k, &v}) {
    // LayerNorm over 2 channels maps (a, b) to +-1: keep it but make the linear the identity.
    (*m)->norm->weight.fill_(1);
    (*m)->norm->bias.zero_();
    (*m)->linear->weight.copy_(at::eye(2));
    (*m)->linear->bias.zero_();
  }
  const at::Tensor lr = at::tensor({3.0f, 1.0f}).reshape({1, 1, 2});  // LN -> (1, -1)
  // HR pixels (c0, c1): LN gives (1,-1), (-1,1), (1,-1), (-1,1) at positions 0..3.
  const at::Tensor hr =
      at::tensor({5.0f, 0.0f, 2.0f, -1.0f, 1.0f, 4.0f, 0.0f, 7.0f}).reshape({1, 2, 2, 2});
  const at::Tensor got = patch_info_mining(lr, hr, q, k, v);
  // Independent formula: keys/values are the LayerNormed HR pixels, the query the LayerNormed LR
  // token, scores q.k/sqrt(2), softmax over the 4 positions.
  const at::Tensor a = hr.permute({0, 2, 3, 1}).reshape({4, 2});
  const at::Tensor c = a - a.mean({-1}, true);
  const at::Tensor ka = c / ((c * c).mean({-1}, true) + 1e-5).sqrt();
  const at::Tensor qn = at::tensor({1.0f, -1.0f}) * (1.0 / std::sqrt(1.0 + 1e-5));
  const at::Tensor w = (ka.matmul(qn) / std::sqrt(2.0)).softmax(0);
  const at::Tensor want = w.unsqueeze(0).matmul(ka).reshape({1, 1, 2});
  EXPECT_TRUE(test::all_close(got, want, 1e-5, 1e-6));
}

}  // namespace
}  // namespace mgm::models
