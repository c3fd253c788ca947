#include "models/io/tensor_file.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "tests_util.h"

namespace mgm::models::io {
namespace {

std::vector<std::string> list_dir(const std::string& d) {
  std::vector<std::string> out;
  for (auto& e : std::filesystem::directory_iterator(d)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

NamedTensors sample() {
  NamedTensors t;
  t.emplace_back("b", at::arange(12, at::kFloat).reshape({3, 4}));
  t.emplace_back("a", at::arange(6, at::kFloat).to(at::kBFloat16));
  t.emplace_back("c", at::arange(5, at::kLong));
  t.emplace_back("d", at::arange(3, at::kFloat).to(at::kHalf));
  return t;
}

TEST(TensorFile, SafetensorsRoundTripIsZeroCopyAndAligned) {
  std::string d = test::temp_dir("st");
  save_safetensors(d + "/x.safetensors", sample(), {{"format", "pt"}});
  auto f = TensorFile::open(d + "/x.safetensors");
  EXPECT_EQ(f->index().metadata.at("format"), "pt");
  for (const auto& [n, want] : sample()) {
    at::Tensor got = f->get(n);
    EXPECT_TRUE(got.equal(want)) << n;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got.data_ptr()) % got.element_size(), 0u) << n;
  }
  // Layout as the reference writer: larger elements first, then by name.
  std::vector<std::string> order;
  for (const auto& r : f->index().tensors) order.push_back(r.name);
  EXPECT_EQ(order, (std::vector<std::string>{"c", "b", "a", "d"}));
  // In-place changes to a loaded tensor never reach the file (copy-on-write map).
  at::Tensor b = f->get("b");
  b.add_(100);
  EXPECT_TRUE(TensorFile::open(d + "/x.safetensors")->get("b").equal(at::arange(12, at::kFloat).reshape({3, 4})));
}

TEST(TensorFile, TorchZipRoundTripKeepsOrderAndTensorsOutliveTheFileObject) {
  std::string d = test::temp_dir("zip");
  NamedTensors t = sample();
  t.emplace_back("strided", at::arange(20, at::kFloat).reshape({4, 5}).t());  // non-contiguous input
  save_torch_zip(d + "/mm_projector.bin", t);
  at::Tensor kept;
  {
    auto f = TensorFile::open(d + "/mm_projector.bin");
    EXPECT_EQ(f->index().format, FileIndex::Format::kTorchZip);
    EXPECT_EQ(f->names(), (std::vector<std::string>{"b", "a", "c", "d", "strided"}));
    for (const auto& [n, want] : t) EXPECT_TRUE(f->get(n).equal(want)) << n;
    kept = f->get("b");
  }
  EXPECT_TRUE(kept.equal(at::arange(12, at::kFloat).reshape({3, 4})));  // the map stays alive
}

TEST(TensorFile, ShardedWriterSplitsByMaxSizeWritesIndexAndRemovesStaleShards) {
  std::string d = test::temp_dir("shard");
  NamedTensors t;
  for (int i = 0; i < 5; ++i) t.emplace_back("layer." + std::to_string(i), at::randn({10, 10}));  // 400 B each
  save_sharded_safetensors(d, t, 900);  // two tensors per shard
  EXPECT_EQ(list_dir(d), (std::vector<std::string>{
                             "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                             "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  Json idx = read_json_file(d + "/model.safetensors.index.json");
  EXPECT_EQ(idx["metadata"]["total_size"].get<uint64_t>(), 2000u);
  EXPECT_EQ(idx["weight_map"]["layer.4"], "model-00003-of-00003.safetensors");
  TensorStore s = TensorStore::open(d);
  ASSERT_EQ(s.names().size(), 5u);
  for (const auto& [n, want] : t) EXPECT_TRUE(s.get(n).equal(want)) << n;

  // Saving again with bigger shards replaces the set: no stale shard, index consistent.
  save_sharded_safetensors(d, t, 1 << 20);
  EXPECT_EQ(list_dir(d), (std::vector<std::string>{"model.safetensors"}));
  EXPECT_EQ(TensorStore::open(d).names().size(), 5u);
}

TEST(TensorFile, OversizedTensorGetsItsOwnShard) {
  std::string d = test::temp_dir("shard_big");
  NamedTensors t = {{"small", at::zeros({2})}, {"huge", at::zeros({1000})}, {"tail", at::zeros({2})}};
  save_sharded_safetensors(d, t, 100);
  Json idx = read_json_file(d + "/model.safetensors.index.json");
  EXPECT_EQ(idx["weight_map"]["small"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(idx["weight_map"]["huge"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(idx["weight_map"]["tail"], "model-00003-of-00003.safetensors");
}

TEST(TensorStore, IndexProblemsAreReportedWithTheIndexPath) {
  std::string d = test::temp_dir("badidx");
  NamedTensors t;
  for (int i = 0; i < 3; ++i) t.emplace_back("w" + std::to_string(i), at::zeros({30}));
  save_sharded_safetensors(d, t, 200);
  std::string idx_path = d + "/model.safetensors.index.json";
  Json idx = read_json_file(idx_path);
  idx["weight_map"]["ghost"] = "model-00001-of-00003.safetensors";
  write_json_file(idx_path, idx);
  try {
    TensorStore::open(d);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'ghost' is listed in weight_map but is in no shard"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(idx_path), std::string::npos);
  }
  idx["weight_map"].erase("ghost");
  std::filesystem::remove(d + "/model-00002-of-00003.safetensors");
  write_json_file(idx_path, idx);
  try {
    TensorStore::open(d);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("shard 'model-00002-of-00003.safetensors' listed in weight_map is missing"), std::string::npos) << e.what();
  }
}

TEST(TensorStore, EmptyFolderAndMissingPathAreClearErrors) {
  std::string d = test::temp_dir("emptydir");
  try {
    TensorStore::open(d);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor files found"), std::string::npos);
  }
  EXPECT_THROW(TensorStore::open(d + "/nope"), Error);
}

TEST(Writers, FailedWriteLeavesExistingFileUntouched) {
  std::string d = test::temp_dir("failwrite");
  save_safetensors(d + "/m.safetensors", sample());
  std::string before = read_file(d + "/m.safetensors");
  NamedTensors bad = sample();
  bad.emplace_back("complex", at::zeros({2}, at::kComplexFloat));  // not storable
  EXPECT_THROW(save_safetensors(d + "/m.safetensors", bad), Error);
  EXPECT_THROW(save_torch_zip(d + "/m.safetensors", {{"x", at::Tensor()}}), Error);
  EXPECT_EQ(read_file(d + "/m.safetensors"), before);
  EXPECT_EQ(list_dir(d), (std::vector<std::string>{"m.safetensors"}));
}

TEST(Writers, DuplicateNamesAreRefused) {
  std::string d = test::temp_dir("dups");
  NamedTensors t = {{"x", at::zeros({1})}, {"x", at::zeros({1})}};
  EXPECT_THROW(save_safetensors(d + "/a.safetensors", t), Error);
  EXPECT_THROW(save_torch_zip(d + "/a.bin", t), Error);
  EXPECT_EQ(list_dir(d).size(), 0u);
}

}  // namespace
}  // namespace mgm::models::io
