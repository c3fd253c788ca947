#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "common/files.h"
#include "models/cli_weights.h"
#include "models/io/tensor_file.h"
#include "tests_util.h"

namespace mgm::models {
namespace {

TEST(WeightsInspect, ShardedFolderTotals) {
  std::string d = test::temp_dir("inspect");
  io::NamedTensors t = {{"model.embed_tokens.weight", at::zeros({100, 8}, at::kBFloat16)},
                        {"model.norm.weight", at::zeros({8}, at::kFloat)},
                        {"lm.x", at::zeros({3, 3}, at::kFloat)}};
  io::save_sharded_safetensors(d, t, 1000);
  std::string out = inspect_weights(d, {});
  EXPECT_NE(out.find("(2 files, safetensors)"), std::string::npos) << out;
  EXPECT_NE(out.find("tensors: 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("parameters: 817\n"), std::string::npos) << out;
  EXPECT_NE(out.find("size: 1.67 KB (1,668 bytes)"), std::string::npos) << out;
  EXPECT_NE(out.find("model.embed_tokens.weight  BF16      [100, 8]  model-00001-of-00002.safetensors"),
            std::string::npos) << out;
}

TEST(WeightsConvert, BinToShardedAndBackWithDtypeAndCopiesConfig) {
  std::string d = test::temp_dir("convert");
  io::NamedTensors t = {{"a", at::arange(300, at::kFloat)}, {"b", at::arange(300, at::kFloat) * 2},
                        {"n", at::arange(3, at::kLong)}};
  make_dirs(d + "/src");
  io::save_torch_zip(d + "/src/pytorch_model.bin", t);
  write_file_atomic(d + "/src/config.json", "{\"model_type\": \"gemma\"}");
  ConvertOptions o;
  o.max_shard_size = 1000;
  o.dtype = "bf16";
  convert_weights(d + "/src", d + "/dst", o);
  EXPECT_EQ(read_file(d + "/dst/config.json"), "{\"model_type\": \"gemma\"}");
  io::TensorStore s = io::TensorStore::open(d + "/dst");
  EXPECT_EQ(s.files().size(), 2u);
  EXPECT_EQ(s.get("a").scalar_type(), at::kBFloat16);
  EXPECT_EQ(s.get("n").scalar_type(), at::kLong);  // integers are never cast
  EXPECT_TRUE(s.get("b").to(at::kFloat).equal(at::arange(300, at::kFloat).mul(2).to(at::kBFloat16).to(at::kFloat)));
  // Existing output is never overwritten without --overwrite.
  EXPECT_THROW(convert_weights(d + "/src", d + "/dst", o), UsageError);
  ConvertOptions single;
  convert_weights(d + "/dst", d + "/back.bin", single);
  io::TensorStore b = io::TensorStore::open(d + "/back.bin");
  // File order of the sharded folder: shard by shard, 8-byte elements first within a shard.
  EXPECT_EQ(b.names(), (std::vector<std::string>{"a", "n", "b"}));
  EXPECT_TRUE(b.get("n").equal(at::arange(3, at::kLong)));
}

}  // namespace
}  // namespace mgm::models
