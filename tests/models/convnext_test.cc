// ConvNeXt trunk and MGM's HR feature against timm's ConvNeXt (small random configuration written
// by tests/parity/vision_reference.py), stochastic depth invariants, and full-size counts.
#include "models/convnext.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include <set>

#include "common/error.h"
#include "models/module_utils.h"
#include "tests/models/vision_reference.h"

namespace mgm::models {
namespace {

ConvNextConfig small_config() {
  ConvNextConfig c;
  c.depths = {2, 1, 3, 1};
  c.dims = {8, 16, 24, 32};
  c.drop_path_rate = 0.1;
  return c;
}

class ConvNextParity : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto& r = test::vision_reference();
    ASSERT_EQ(r.rc, 0) << r.output;
    dir_ = r.dir;
    ref_ =
        std::make_unique<io::TensorStore>(io::TensorStore::open(dir_ + "/reference.safetensors"));
  }
  at::Tensor ref(const std::string& name) { return ref_->get(name).clone(); }
  ConvNext open_clip(const ConvNextOptions& o = {}) {
    const auto cfg = small_config();
    return ConvNext(ConvNextImpl::from_open_clip(dir_ + "/convnext", o, &cfg));
  }
  std::string dir_;
  std::unique_ptr<io::TensorStore> ref_;
};

TEST_F(ConvNextParity, StageOutputsMatchTimm) {
  ConvNext m = open_clip();
  at::NoGradGuard ng;
  auto st = m->forward_stages(ref("convnext.images"));
  ASSERT_EQ(st.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_TRUE(test::all_close(st[i], ref("convnext.stage." + std::to_string(i))))
        << "stage " << i;
}

TEST_F(ConvNextParity, UpsampledConcatFeatureMatchesMgm) {
  ConvNext m = open_clip();
  at::NoGradGuard ng;
  at::Tensor f = m->forward(ref("convnext.images"));
  EXPECT_EQ(f.sizes(), at::IntArrayRef({2, 80, 16, 16}));
  EXPECT_TRUE(test::all_close(f, ref("convnext.feature")));
  // Non-square input: each stage keeps its aspect, the feature is [1, 80, 24, 16].
  EXPECT_TRUE(
      test::all_close(m->forward(ref("convnext.rect_images")), ref("convnext.rect_feature")));
}

TEST_F(ConvNextParity, NamesAreTheCheckpointKeysInBothNamings) {
  auto bin = io::TensorStore::open(dir_ + "/convnext/open_clip_pytorch_model.bin");
  auto mgm_file = io::TensorStore::open(dir_ + "/mgm_towers.safetensors");
  ConvNextOptions o;
  ConvNext timm(small_config(), o);
  std::set<std::string> names;
  for (const auto& [n, t] : module_tensors(*timm, "visual.trunk.")) {
    EXPECT_TRUE(bin.contains(n)) << n;
    names.insert(n);
  }
  for (const auto& n : bin.names()) {
    if (n.rfind("visual.trunk.stem.", 0) == 0 || n.rfind("visual.trunk.stages.", 0) == 0) {
      EXPECT_TRUE(names.count(n)) << "not in the module: " << n;
    }
  }

  o.naming = ConvNextNaming::kMgm;
  ConvNext mgm(small_config(), o);
  size_t n_mgm = 0;
  for (const auto& [n, t] : module_tensors(*mgm, "model.vision_tower_aux.")) {
    EXPECT_TRUE(mgm_file.contains(n)) << n;
    ++n_mgm;
  }
  EXPECT_EQ(n_mgm, names.size());
}

TEST_F(ConvNextParity, MgmCheckpointLoadsIntoEitherNaming) {
  at::NoGradGuard ng;
  auto store = io::TensorStore::open(dir_ + "/mgm_towers.safetensors");
  for (auto naming : {ConvNextNaming::kTimm, ConvNextNaming::kMgm}) {
    ConvNextOptions o;
    o.naming = naming;
    ConvNext m(small_config(), o);
    m->load(store, "model.vision_tower_aux.", ConvNextNaming::kMgm);
    EXPECT_TRUE(test::all_close(m->forward(ref("convnext.images")), ref("convnext.feature")));
  }
  // And the open_clip file into an MGM-named module.
  ConvNextOptions o;
  o.naming = ConvNextNaming::kMgm;
  ConvNext m(small_config(), o);
  m->load(io::TensorStore::open(dir_ + "/convnext/open_clip_pytorch_model.bin"), "visual.trunk.",
          ConvNextNaming::kTimm);
  EXPECT_TRUE(test::all_close(m->forward(ref("convnext.images")), ref("convnext.feature")));
}

TEST_F(ConvNextParity, Bfloat16FeatureStaysBfloat16AndClose) {
  ConvNext m = open_clip();
  m->to(at::kBFloat16);
  at::NoGradGuard ng;
  at::Tensor f = m->forward(ref("convnext.images"));
  EXPECT_EQ(f.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(test::all_close(f, ref("convnext.feature"), 0.1, 0.1));
}

TEST_F(ConvNextParity, StochasticDepthDropsWholeSamplesAndRescalesSurvivors) {
  ConvNextConfig cfg = small_config();
  cfg.drop_path_rate = 0.6;
  ConvNextOptions o;
  o.stochastic_depth = true;
  ConvNext m(ConvNextImpl::from_open_clip(dir_ + "/convnext", o, &cfg));
  at::NoGradGuard ng;
  // Last block: rate 0.6 (linspace end). Per sample the output is the shortcut alone or the
  // shortcut plus the branch scaled by 1/(1-p).
  auto block = m->stage_list[3]->blocks[0];
  EXPECT_NEAR(block->drop_path, 0.6, 1e-6);
  at::Tensor x = at::randn({64, 32, 2, 2});
  at::Tensor branch = block->forward(x, false) - x;
  at::Tensor y = block->forward(x, true);
  int dropped = 0, kept = 0;
  for (int64_t b = 0; b < 64; ++b) {
    if (at::allclose(y[b], x[b], 1e-5, 1e-6)) {
      ++dropped;
    } else {
      EXPECT_TRUE(at::allclose(y[b], x[b] + branch[b] / 0.4, 1e-4, 1e-5)) << "sample " << b;
      ++kept;
    }
  }
  EXPECT_GT(dropped, 10);
  EXPECT_GT(kept, 10);
  // The first block's rate is 0: identical in both modes.
  auto first = m->stage_list[0]->blocks[0];
  EXPECT_EQ(first->drop_path, 0.0);
  at::Tensor x0 = at::randn({4, 8, 4, 4});
  EXPECT_TRUE(at::equal(first->forward(x0, true), first->forward(x0, false)));
  // The whole tower is random with stochastic depth and reproducible without.
  at::Tensor a = m->forward(ref("convnext.images")), b = m->forward(ref("convnext.images"));
  EXPECT_FALSE(at::equal(a, b));
  m->options().stochastic_depth = false;
  EXPECT_TRUE(at::equal(m->forward(ref("convnext.images")), m->forward(ref("convnext.images"))));
}

TEST(ConvNextConfigTest, NamesAndOpenClipConfig) {
  auto c = ConvNextConfig::from_name("convnext_large_d_320");
  EXPECT_EQ(c.depths, (std::vector<int64_t>{3, 3, 27, 3}));
  EXPECT_EQ(c.dims, (std::vector<int64_t>{192, 384, 768, 1536}));
  EXPECT_EQ(c.feature_channels(), 2880);
  EXPECT_EQ(
      ConvNextConfig::from_name("openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup").dims,
      c.dims);
  EXPECT_EQ(ConvNextConfig::from_name("convnext_base_w").dims[0], 128);
  EXPECT_THROW(ConvNextConfig::from_name("convnext_atto"), Error);
  EXPECT_THROW(ConvNextConfig::from_name("vit_large"), Error);
  // Rates as timm's linspace(0, 0.1, 36).
  auto r = c.drop_path_rates();
  ASSERT_EQ(r.size(), 36u);
  EXPECT_EQ(r[0], 0.0);
  EXPECT_NEAR(r[1], 0.1 / 35, 1e-8);
  EXPECT_NEAR(r[35], 0.1, 1e-8);
  const auto& ref = test::vision_reference();
  ASSERT_EQ(ref.rc, 0) << ref.output;
  auto oc = ConvNextConfig::from_open_clip_config(ref.dir + "/convnext");
  EXPECT_EQ(oc.dims, c.dims);
  EXPECT_DOUBLE_EQ(oc.drop_path_rate, 0.1);
}

TEST(ConvNextConfigTest, FullSizeParameterCountOnMetaDevice) {
  const auto cfg = ConvNextConfig::large();
  EXPECT_EQ(convnext_parameter_count(cfg), 196227264);
  ConvNextOptions o;
  o.tensor_options = at::TensorOptions().dtype(at::kFloat).device(at::kMeta);
  ConvNext m(cfg, o);
  EXPECT_EQ(count_parameters(*m), 196227264);
  ConvNext s(small_config());
  EXPECT_EQ(count_parameters(*s), convnext_parameter_count(small_config()));
}

TEST(ConvNextConfigTest, RejectsImagesThatDoNotTile) {
  ConvNext m(small_config());
  try {
    m->forward(at::randn({1, 3, 48, 64}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mgm::models
