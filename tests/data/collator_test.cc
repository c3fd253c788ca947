// Collator: padding / truncation / masks by hand, zero images for text-only samples, and the
// bilinear downsample bit-identical to torch.nn.functional.interpolate (CPU fp32).
#include "data/collator.h"

#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "common/error.h"
#include "tests_util.h"

namespace mgm::data {
namespace {

std::vector<int64_t> row(const at::Tensor& t, int64_t r) {
  at::Tensor x = t.select(0, r).contiguous();
  const int64_t* d = x.data_ptr<int64_t>();
  return std::vector<int64_t>(d, d + x.numel());
}

std::vector<bool> mask_row(const at::Tensor& t, int64_t r) {
  at::Tensor x = t.select(0, r).contiguous();
  const bool* d = x.data_ptr<bool>();
  return std::vector<bool>(d, d + x.numel());
}

CollatorConfig small(int64_t max_len) {
  CollatorConfig c;
  c.model_max_length = max_len;
  c.aux_size = 4;
  c.lr_size = 2;
  return c;
}

TEST(Collator, RightPadsIdsAndLabelsAndMasks) {
  std::vector<CollatorSample> s(3);
  s[0].input_ids = {2, 106, -200, 108, 1};
  s[0].labels = {-100, -100, -100, 108, 1};
  s[1].input_ids = {2, 7};
  s[1].labels = {-100, 7};
  s[2].input_ids = {2, 0, 9};  // a real id 0 counts as padding in the mask, as the reference
  s[2].labels = {-100, 0, 9};
  Batch b = collate(s, small(2048));
  ASSERT_EQ(b.input_ids.sizes(), (at::IntArrayRef{3, 5}));
  EXPECT_EQ(b.input_ids.scalar_type(), at::kLong);
  EXPECT_EQ(b.attention_mask.scalar_type(), at::kBool);
  EXPECT_EQ(row(b.input_ids, 0), (std::vector<int64_t>{2, 106, -200, 108, 1}));
  EXPECT_EQ(row(b.input_ids, 1), (std::vector<int64_t>{2, 7, 0, 0, 0}));
  EXPECT_EQ(row(b.labels, 1), (std::vector<int64_t>{-100, 7, -100, -100, -100}));
  EXPECT_EQ(row(b.input_ids, 2), (std::vector<int64_t>{2, 0, 9, 0, 0}));
  EXPECT_EQ(row(b.labels, 2), (std::vector<int64_t>{-100, 0, 9, -100, -100}));
  EXPECT_EQ(mask_row(b.attention_mask, 0), (std::vector<bool>{true, true, true, true, true}));
  EXPECT_EQ(mask_row(b.attention_mask, 1), (std::vector<bool>{true, true, false, false, false}));
  EXPECT_EQ(mask_row(b.attention_mask, 2), (std::vector<bool>{true, false, true, false, false}));
}

TEST(Collator, TruncatesToModelMaxLength) {
  std::vector<CollatorSample> s(2);
  s[0].input_ids = {2, 3, 4, 5, 6, 7};
  s[0].labels = {-100, -100, 4, 5, 6, 7};
  s[1].input_ids = {2, 3};
  s[1].labels = {-100, 3};
  Batch b = collate(s, small(4));
  ASSERT_EQ(b.input_ids.sizes(), (at::IntArrayRef{2, 4}));
  EXPECT_EQ(row(b.input_ids, 0), (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_EQ(row(b.labels, 0), (std::vector<int64_t>{-100, -100, 4, 5}));
  EXPECT_EQ(row(b.input_ids, 1), (std::vector<int64_t>{2, 3, 0, 0}));
  EXPECT_EQ(row(b.labels, 1), (std::vector<int64_t>{-100, 3, -100, -100}));
  // Batch max below the limit: padded only to the batch max.
  Batch c = collate({s[1]}, small(4));
  EXPECT_EQ(c.input_ids.sizes(), (at::IntArrayRef{1, 2}));
}

TEST(Collator, TextOnlySamplesGetZeroImages) {
  std::vector<CollatorSample> s(2);
  s[0].input_ids = s[0].labels = {2, 5};
  s[0].image_aux.assign(3 * 4 * 4, 1.5f);
  s[1].input_ids = s[1].labels = {2, 5};
  Batch b = collate(s, small(8));
  ASSERT_EQ(b.images_aux.sizes(), (at::IntArrayRef{2, 3, 4, 4}));
  ASSERT_EQ(b.images.sizes(), (at::IntArrayRef{2, 3, 2, 2}));
  EXPECT_EQ(b.images_aux.select(0, 0).min().item<float>(), 1.5f);
  EXPECT_EQ(b.images.select(0, 0).max().item<float>(), 1.5f);
  EXPECT_EQ(b.images_aux.select(0, 1).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(b.images.select(0, 1).abs().max().item<float>(), 0.0f);
}

TEST(Collator, RejectsBadInput) {
  EXPECT_THROW(collate({}, small(8)), Error);
  CollatorSample a;
  a.input_ids = {2, 3};
  a.labels = {2};
  EXPECT_THROW(collate({a}, small(8)), Error);
  a.labels = {2, 3};
  a.image_aux.assign(10, 0.f);
  EXPECT_THROW(collate({a}, small(8)), Error);
}

void check_interpolate(int64_t aux, int64_t lr) {
  std::mt19937 rng(static_cast<unsigned>(aux * 1000 + lr));
  std::normal_distribution<float> nd(0.f, 1.5f);
  std::vector<CollatorSample> s(3);
  for (size_t i = 0; i < s.size(); ++i) {
    s[i].input_ids = s[i].labels = {2, 3};
    if (i != 1) {
      s[i].image_aux.resize(static_cast<size_t>(3 * aux * aux));
      for (auto& v : s[i].image_aux) v = nd(rng);
    }
  }
  CollatorConfig cfg;
  cfg.aux_size = aux;
  cfg.lr_size = lr;
  Batch b = collate(s, cfg);
  std::string d = test::temp_dir("collate_interp");
  {
    at::Tensor x = b.images_aux.contiguous();
    std::ofstream f(d + "/in.f32", std::ios::binary);
    f.write(reinterpret_cast<const char*>(x.data_ptr<float>()),
            static_cast<std::streamsize>(x.numel() * sizeof(float)));
  }
  std::string out;
  ASSERT_EQ(test::run_python(test::source_dir() + "/tests/parity/sampler_reference.py interpolate " +
                                 d + "/in.f32 " + d + "/out.f32 3 3 " + std::to_string(aux) + " " +
                                 std::to_string(lr),
                             &out),
            0)
      << out;
  std::ifstream f(d + "/out.f32", std::ios::binary);
  std::string want((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  at::Tensor got = b.images.contiguous();
  ASSERT_EQ(want.size(), static_cast<size_t>(got.numel()) * sizeof(float));
  EXPECT_EQ(std::memcmp(want.data(), got.data_ptr<float>(), want.size()), 0)
      << "bilinear downsample " << aux << "->" << lr << " differs from F.interpolate";
}

TEST(Collator, DownsampleBitIdenticalToTorchInterpolate) {
  check_interpolate(768, 336);
  check_interpolate(37, 16);
}

TEST(Collator, PinMemory) {
  CollatorSample a;
  a.input_ids = a.labels = {2, 3};
  CollatorConfig cfg = small(8);
  cfg.pin_memory = true;
  if (at::hasCUDA()) {
    Batch b = collate({a}, cfg);
    EXPECT_TRUE(b.images_aux.is_pinned());
    EXPECT_TRUE(b.input_ids.is_pinned());
  } else {
    // Without a CUDA runtime pinning is impossible: an error, never silently unpinned.
    EXPECT_THROW(collate({a}, cfg), Error);
  }
}

}  // namespace
}  // namespace mgm::data
