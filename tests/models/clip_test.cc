// CLIP vision tower against transformers' CLIPVisionModel (small random configuration written by
// tests/parity/vision_reference.py), plus full-size parameter counts and config parsing.
#include "models/clip.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/sum.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <fstream>

#include "common/error.h"
#include "models/module_utils.h"
#include "tests/models/vision_reference.h"

namespace mgm::models {
namespace {

class ClipParity : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto& r = test::vision_reference();
    ASSERT_EQ(r.rc, 0) << r.output;
    dir_ = r.dir;
    ref_ =
        std::make_unique<io::TensorStore>(io::TensorStore::open(dir_ + "/reference.safetensors"));
  }
  at::Tensor ref(const std::string& name) { return ref_->get(name).clone(); }
  std::string dir_;
  std::unique_ptr<io::TensorStore> ref_;
};

TEST_F(ClipParity, SelectedPatchFeaturesMatchTransformers) {
  ClipVisionModel m(ClipVisionModelImpl::from_pretrained(dir_ + "/clip"));
  EXPECT_EQ(m->config().hidden_size, 48);
  EXPECT_EQ(m->config().hidden_act, "quick_gelu");
  EXPECT_EQ(m->selected_index(), 3);
  at::Tensor out = m->forward(ref("clip.images"));
  EXPECT_EQ(out.sizes(), at::IntArrayRef({2, 16, 48}));
  EXPECT_TRUE(test::all_close(out, ref("clip.patch")));
}

TEST_F(ClipParity, EveryHiddenStateMatches) {
  ClipVisionModel m(ClipVisionModelImpl::from_pretrained(dir_ + "/clip"));
  for (int64_t i = 0; i <= 4; ++i)
    EXPECT_TRUE(test::all_close(m->hidden_state(ref("clip.images"), i),
                                ref("clip.hidden_states." + std::to_string(i))))
        << "hidden state " << i;
}

TEST_F(ClipParity, ClsPatchKeepsTheClassToken) {
  ClipVisionOptions o;
  o.select_feature = "cls_patch";
  ClipVisionModel m(ClipVisionModelImpl::from_pretrained(dir_ + "/clip", o));
  EXPECT_TRUE(test::all_close(m->forward(ref("clip.images")), ref("clip.cls_patch")));
}

TEST_F(ClipParity, PytorchBinAndFullClipModelLoadTheSameTower) {
  // pytorch_model.bin; and a CLIPModel folder (nested vision_config, text_model.* keys ignored).
  for (const char* sub : {"/clip_bin", "/clip_full"}) {
    ClipVisionModel m(ClipVisionModelImpl::from_pretrained(dir_ + sub));
    EXPECT_TRUE(test::all_close(m->forward(ref("clip.images")), ref("clip.patch"))) << sub;
  }
}

TEST_F(ClipParity, ExactGeluVariant) {
  ClipVisionModel m(ClipVisionModelImpl::from_pretrained(dir_ + "/clip_gelu"));
  EXPECT_EQ(m->config().hidden_act, "gelu");
  EXPECT_TRUE(test::all_close(m->forward(ref("clip.images")), ref("clip_gelu.patch")));
}

TEST_F(ClipParity, DropUnusedBuildsOnlyWhatTheSelectedLayerNeeds) {
  ClipVisionOptions o;
  o.drop_unused = true;
  ClipVisionModel m(ClipVisionModelImpl::from_pretrained(dir_ + "/clip", o));
  EXPECT_EQ(m->vision_model->encoder->layers.size(), 3u);
  EXPECT_TRUE(m->vision_model->post_layernorm.is_empty());
  const auto cfg = ClipVisionConfig::from_file(dir_ + "/clip");
  EXPECT_EQ(count_parameters(*m), clip_vision_parameter_count(cfg, /*used_only=*/true));
  ClipVisionModel full(cfg);
  EXPECT_EQ(count_parameters(*full), clip_vision_parameter_count(cfg, /*used_only=*/false));
  EXPECT_TRUE(test::all_close(m->forward(ref("clip.images")), ref("clip.patch")));
}

TEST_F(ClipParity, LoadsFromMgmCheckpointPrefix) {
  ClipVisionModel m(ClipVisionConfig::from_file(dir_ + "/clip"));
  m->load(io::TensorStore::open(dir_ + "/mgm_towers.safetensors"),
          "model.vision_tower.vision_tower.");
  EXPECT_TRUE(test::all_close(m->forward(ref("clip.images")), ref("clip.patch")));
  // Module names are the HF keys: saving under the MGM prefix reproduces the file's names.
  auto store = io::TensorStore::open(dir_ + "/mgm_towers.safetensors");
  for (const auto& [name, t] : module_tensors(*m, "model.vision_tower.vision_tower."))
    EXPECT_TRUE(store.contains(name)) << name;
}

TEST_F(ClipParity, InputGradientMatchesWithAndWithoutCheckpointing) {
  at::Tensor plain_grad_fc1;
  for (bool ckpt : {false, true}) {
    ClipVisionOptions o;
    o.checkpoint_layers = ckpt;
    ClipVisionModel m(ClipVisionModelImpl::from_pretrained(dir_ + "/clip", o));
    at::Tensor x = ref("clip.images").requires_grad_(true);
    at::Tensor loss = (m->forward(x) * ref("clip.grad_weights")).sum();
    loss.backward();
    EXPECT_TRUE(test::all_close(x.grad(), ref("clip.grad_images"), 1e-4, 1e-6))
        << "checkpoint " << ckpt;
    at::Tensor g = m->vision_model->encoder->layers[1]->mlp->fc1->weight.grad();
    ASSERT_TRUE(g.defined());
    if (!ckpt) {
      plain_grad_fc1 = g.clone();
    } else {
      EXPECT_TRUE(test::all_close(g, plain_grad_fc1, 1e-5, 1e-7));
      // The unused last layer receives no gradient.
      EXPECT_FALSE(m->vision_model->encoder->layers[3]->mlp->fc1->weight.grad().defined());
    }
  }
}

TEST_F(ClipParity, ErrorsNameTheProblem) {
  ClipVisionModel m(ClipVisionModelImpl::from_pretrained(dir_ + "/clip"));
  try {
    m->forward(ref("clip.images").slice(2, 0, 28));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected images [B, 3, 56, 56]"), std::string::npos)
        << e.what();
  }
  ClipVisionOptions bad;
  bad.select_layer = -6;
  EXPECT_THROW(ClipVisionModel(ClipVisionConfig::from_file(dir_ + "/clip"), bad), Error);
  // A checkpoint lacking a tensor names it.
  auto store = io::TensorStore::open(dir_ + "/mgm_towers.safetensors");
  try {
    m->load(store, "model.vision_tower.wrong.");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("model.vision_tower.wrong.vision_model.pre_layrnorm.weight"),
        std::string::npos)
        << e.what();
  }
}

TEST(ClipConfig, ParsesNestedAndFlatConfigsWithDefaults) {
  Json nested = {{"vision_config",
                  {{"hidden_size", 1024},
                   {"intermediate_size", 4096},
                   {"num_hidden_layers", 24},
                   {"num_attention_heads", 16},
                   {"image_size", 336},
                   {"patch_size", 14}}}};
  auto c = ClipVisionConfig::from_json(nested, "config.json");
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.hidden_act, "quick_gelu");
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
  EXPECT_EQ(c.num_positions(), 577);
  Json flat = {{"hidden_size", 64}, {"num_attention_heads", 5}};
  try {
    ClipVisionConfig::from_json(flat, "x/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x/config.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("num_attention_heads 5"), std::string::npos);
  }
  EXPECT_THROW(ClipVisionConfig::from_json(Json{{"hidden_act", "relu"}}, "c"), Error);
}

TEST(ClipConfig, FullSizeParameterCountsOnMetaDevice) {
  const auto cfg = ClipVisionConfig::vit_large_patch14_336();
  EXPECT_EQ(clip_vision_parameter_count(cfg, false), 303507456);
  EXPECT_EQ(clip_vision_parameter_count(cfg, true), 290909184);
  ClipVisionOptions o;
  o.tensor_options = at::TensorOptions().dtype(at::kFloat).device(at::kMeta);
  ClipVisionModel full(cfg, o);
  EXPECT_EQ(count_parameters(*full), 303507456);
  o.drop_unused = true;
  ClipVisionModel used(cfg, o);
  EXPECT_EQ(count_parameters(*used), 290909184);
  EXPECT_EQ(used->vision_model->encoder->layers.size(), 23u);
}

}  // namespace
}  // namespace mgm::models
