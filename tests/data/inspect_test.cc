#include "data/inspect.h"

#include <ATen/ops/allclose.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "common/files.h"
#include "data/tokenizer.h"
#include "tests_util.h"

namespace mgm::data {
namespace {

// A valid 1x1 RGBA PNG.
const unsigned char kPng[] = {137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1,
                              0, 0, 0, 1, 8, 6, 0, 0, 0, 31, 21, 196, 137, 0, 0, 0, 13, 73, 68, 65,
                              84, 120, 218, 99, 252, 207, 192, 80, 15, 0, 4, 133, 1, 128, 132, 169, 140, 33, 0, 0,
                              0, 0, 73, 69, 78, 68, 174, 66, 96, 130};

TEST(Inspect, ShowsSupervisedSpansAndWritesWhatTheCollatorMakes) {
  std::string d = test::temp_dir("inspect");
  write_file_atomic(d + "/a.png", std::string(reinterpret_cast<const char*>(kPng), sizeof kPng));
  std::vector<std::string> corpus;
  for (int i = 0; i < 60; ++i) corpus.push_back("what colour is the circle " + std::to_string(i) + " red blue");
  train_gemma_style_tokenizer(corpus, d + "/tokenizer.model", 320, 1);
  write_file_atomic(d + "/data.jsonl",
                    "{\"id\": 7, \"image\": \"a.png\", \"conversations\": [{\"from\": \"human\", \"value\": \"what colour? <image>\"}, {\"from\": \"gpt\", \"value\": \"red\"}]}\n"
                    "{\"id\": 8, \"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"blue\"}]}\n");
  InspectOptions o;
  o.data_path = d + "/data.jsonl";
  o.image_folder = d;
  o.tokenizer = d + "/tokenizer.model";
  o.collator.aux_size = 32;
  o.collator.lr_size = 14;
  InspectResult r = inspect_sample(o);
  EXPECT_EQ(r.sample_id, "7");
  EXPECT_TRUE(r.problem.empty()) << r.problem;
  EXPECT_EQ(r.annotated,
            "<bos><start_of_turn>user\n<image>\nwhat colour?<end_of_turn>\n<start_of_turn>model\n"
            "[[red<end_of_turn>\n<eos>]]");
  EXPECT_EQ(r.batch.images_aux.sizes(), at::IntArrayRef({1, 3, 32, 32}));
  EXPECT_EQ(r.batch.images.sizes(), at::IntArrayRef({1, 3, 14, 14}));
  const int64_t n = r.batch.input_ids.size(1);
  EXPECT_EQ(r.batch.labels.size(1), n);
  EXPECT_EQ(r.batch.labels.ne(-100).sum().item<int64_t>(), static_cast<int64_t>(r.supervised_tokens));
  EXPECT_EQ(r.batch.input_ids.eq(-200).sum().item<int64_t>(), 1);
  // A 1x1 image padded to square stays 1x1; resized to 32 it is uniform: every pixel equal.
  at::Tensor aux = r.batch.images_aux[0];
  EXPECT_TRUE(at::allclose(aux.amax({1, 2}), aux.amin({1, 2})));

  o.index = 1;
  InspectResult t = inspect_sample(o);
  EXPECT_EQ(t.annotated.find("<image>"), std::string::npos);
  EXPECT_EQ(t.batch.images_aux.abs().sum().item<double>(), 0.0);  // text-only: zero image
  o.index = 2;
  EXPECT_THROW(inspect_sample(o), UsageError);
}

}  // namespace
}  // namespace mgm::data
