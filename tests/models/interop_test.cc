// Python interop: files written by the Python reference writers load here with identical bytes,
// and files written here load in Python (safetensors, torch.load(weights_only=True)) with the
// values Python computes independently.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <cstring>

#include "common/files.h"
#include "common/json.h"
#include "models/io/tensor_file.h"
#include "tests_util.h"

namespace mgm::models::io {
namespace {

std::string script() { return test::source_dir() + "/tests/python/tensor_interop.py"; }

// The same formula as expected() in tensor_interop.py.
NamedTensors expected() {
  auto vals = [](int64_t n) { return at::arange(n, at::kDouble) * 0.25 - 3.0; };
  NamedTensors t;
  t.emplace_back("w.f32", vals(24).reshape({2, 3, 4}).to(at::kFloat));
  t.emplace_back("w.f16", vals(6).reshape({3, 2}).to(at::kHalf));
  t.emplace_back("w.bf16", vals(10).to(at::kBFloat16));
  t.emplace_back("w.f64", vals(5));
  t.emplace_back("i.i64", (at::arange(7, at::kLong) - 3) * 1000000007LL);
  t.emplace_back("i.i32", at::arange(5, at::kInt) - 2);
  t.emplace_back("i.i16", at::arange(4, at::kShort) - 1);
  t.emplace_back("i.i8", at::arange(4, at::kChar) - 2);
  t.emplace_back("i.u8", at::arange(4, at::kByte) + 250);
  t.emplace_back("b.bool", at::tensor(std::vector<uint8_t>{1, 0, 1}).to(at::kBool));
  t.emplace_back("scalar", at::scalar_tensor(1.5, at::kFloat));
  t.emplace_back("empty", at::zeros({0, 3}, at::kHalf));
  return t;
}

c10::ScalarType from_torch_name(const std::string& n) {
  static const std::map<std::string, c10::ScalarType> m = {
      {"float32", at::kFloat}, {"float16", at::kHalf}, {"bfloat16", at::kBFloat16},
      {"float64", at::kDouble}, {"int64", at::kLong}, {"int32", at::kInt}, {"int16", at::kShort},
      {"int8", at::kChar}, {"uint8", at::kByte}, {"bool", at::kBool},
      {"float8_e4m3fn", c10::ScalarType::Float8_e4m3fn}, {"float8_e5m2", c10::ScalarType::Float8_e5m2}};
  return m.at(n);
}

// The Python writer runs once per process; every test asserts it succeeded (a failure here must
// fail the tests, not skip them).
class Interop : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::string out;
    static int rc = [] {
      dir_ = test::temp_dir("interop");
      return test::run_python(script() + " write " + dir_, &out);
    }();
    ASSERT_EQ(rc, 0) << "python writer failed (is the venv set up? scripts/setup.sh):\n" << out;
  }
  static std::string dir_;
};
std::string Interop::dir_;

void expect_matches_raw(const std::string& dir, const std::string& file, const TensorStore& s,
                        size_t min_count) {
  Json manifest = read_json_file(dir + "/manifest.json");
  const Json& entries = manifest.at(file);
  ASSERT_GE(entries.size(), min_count);
  for (auto it = entries.begin(); it != entries.end(); ++it) {
    const std::string& name = it.key();
    ASSERT_TRUE(s.contains(name)) << file << ": missing " << name;
    at::Tensor t = s.get(name);
    EXPECT_EQ(t.scalar_type(), from_torch_name(it.value()["dtype"].get<std::string>())) << name;
    EXPECT_EQ(t.sizes().vec(), it.value()["shape"].get<std::vector<int64_t>>()) << name;
    std::string raw = read_file(dir + "/raw/" + file + "__" + name + ".bin");
    at::Tensor c = t.contiguous();
    ASSERT_EQ(static_cast<size_t>(c.nbytes()), raw.size()) << name;
    EXPECT_EQ(std::memcmp(c.data_ptr(), raw.data(), raw.size()), 0) << file << ": bytes differ for " << name;
  }
}

TEST_F(Interop, PythonSafetensorsLoadWithIdenticalBytesAndMetadata) {
  TensorStore s = TensorStore::open(dir_ + "/py.safetensors");
  expect_matches_raw(dir_, "py.safetensors", s, 14);
  EXPECT_EQ(s.metadata().at("note"), "from python");
  EXPECT_EQ(s.metadata().at("format"), "pt");
}

TEST_F(Interop, PythonTorchSaveOrderedDictStateDictLoads) {
  TensorStore s = TensorStore::open(dir_ + "/py_state_dict.bin");
  expect_matches_raw(dir_, "py_state_dict.bin", s, 14);
  // Views keep sharing the file's bytes: rows/cols/t are views into shared.full's storage.
  at::Tensor full = s.get("shared.full");
  at::Tensor rows = s.get("shared.rows");
  EXPECT_EQ(static_cast<const char*>(rows.data_ptr()) - static_cast<const char*>(full.data_ptr()),
            2 * 8 * 4);
  EXPECT_FALSE(s.get("shared.cols").is_contiguous());
}

TEST_F(Interop, PythonNestedCheckpointFlattensAndReportsNonTensors) {
  TensorStore s = TensorStore::open(dir_ + "/py_nested.bin");
  expect_matches_raw(dir_, "py_nested.bin", s, 1);
  auto skipped = s.skipped();
  EXPECT_EQ(skipped, (std::vector<std::string>{"epoch: int", "name: str"}));
}

TEST_F(Interop, PythonShardedFolderLoads) {
  TensorStore s = TensorStore::open(dir_ + "/py_sharded");
  EXPECT_EQ(s.files().size(), 3u);
  EXPECT_EQ(s.names().size(), 9u);
  expect_matches_raw(dir_, "py_sharded", s, 9);
}

TEST_F(Interop, CppWrittenFilesLoadInPython) {
  std::string d = test::temp_dir("interop_cpp");
  NamedTensors t = expected();
  save_safetensors(d + "/cpp.safetensors", t, {{"format", "pt"}, {"writer", "mgm"}});
  save_torch_zip(d + "/cpp.bin", t);
  save_torch_zip(d + "/cpp_zip64.bin", t, /*force_zip64=*/true);
  save_sharded_safetensors(d + "/cpp_sharded", t, /*max_shard_size=*/150);
  std::string out;
  int rc = test::run_python(script() + " check " + d, &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("python check OK"), std::string::npos) << out;
  // ...and back: what Python accepted reads here identically.
  for (const char* f : {"/cpp.safetensors", "/cpp.bin", "/cpp_zip64.bin", "/cpp_sharded"}) {
    TensorStore s = TensorStore::open(d + f);
    for (const auto& [name, want] : t) {
      at::Tensor got = s.get(name);
      EXPECT_TRUE(got.scalar_type() == want.scalar_type() && got.sizes() == want.sizes() &&
                  got.equal(want))
          << f << ":" << name;
    }
  }
}

}  // namespace
}  // namespace mgm::models::io
