#include "data/validate.h"

#include <gtest/gtest.h>

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

TEST(Validate, ReportsEveryProblemKindWithTheSampleId) {
  std::string d = test::temp_dir("validate");
  make_dirs(d + "/img");
  write_file_atomic(d + "/img/ok.png", std::string(reinterpret_cast<const char*>(kPng), sizeof kPng));
  write_file_atomic(d + "/img/broken.png", "garbage");
  std::vector<std::string> corpus = {"What is the shape? A red circle.", "How many? Two squares.",
                                     "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nok<end_of_turn>\n"};
  for (int i = 0; i < 50; ++i) corpus.push_back("the blue square is left of the red circle " + std::to_string(i));
  train_gemma_style_tokenizer(corpus, d + "/tokenizer.model", 400, 1);
  const std::string long_answer = [] {
    std::string s;
    for (int i = 0; i < 40; ++i) s += "red circle ";
    return s;
  }();
  write_file_atomic(d + "/data.json", R"([
{"id": "good", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red circle."}]},
{"id": "textonly", "conversations": [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "Two."}]},
{"id": "noconv", "image": "ok.png"},
{"id": "missing", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
{"id": "broken", "image": "broken.png", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
{"id": "twohumans", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
{"id": "lonetoken", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
{"id": "notoken", "image": "ok.png", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
{"id": "eosinside", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A <eos> B"}]},
{"id": "long", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": ")" + long_answer + R"("}]}
])");
  ValidateOptions o;
  o.data_path = d + "/data.json";
  o.image_folder = d + "/img";
  o.tokenizer = d + "/tokenizer.model";
  o.model_max_length = 100;
  o.image_tokens = 16;
  ValidationReport r = validate_dataset(o);
  EXPECT_EQ(r.samples, 10u);
  EXPECT_EQ(r.samples_with_problems, 8u) << r.text();
  auto has = [&](const std::string& kind, const std::string& id, const std::string& msg) {
    for (const auto& p : r.problems)
      if (p.kind == kind && p.where.find("'" + id + "'") != std::string::npos &&
          p.message.find(msg) != std::string::npos)
        return true;
    return false;
  };
  EXPECT_TRUE(has("malformed_record", "noconv", "conversations")) << r.text();
  EXPECT_TRUE(has("missing_image", "missing", "nope.png")) << r.text();
  EXPECT_TRUE(has("undecodable_image", "broken", "broken.png")) << r.text();
  EXPECT_TRUE(has("bad_conversation", "twohumans", "does not alternate")) << r.text();
  EXPECT_TRUE(has("token_without_image", "lonetoken", "no image")) << r.text();
  EXPECT_TRUE(has("image_without_token", "notoken", "would be ignored")) << r.text();
  EXPECT_TRUE(has("tokenization_mismatch", "eosinside", "")) << r.text();
  EXPECT_TRUE(has("too_long", "long", "cut supervised answer tokens")) << r.text();
  for (const auto& p : r.problems) {
    EXPECT_EQ(p.where.find("'good'"), std::string::npos) << p.message;
    EXPECT_EQ(p.where.find("'textonly'"), std::string::npos) << p.message;
  }
  EXPECT_NE(r.text().find("problems by kind:"), std::string::npos);
  EXPECT_NE(r.text().find("line 4 (record #2, id 'noconv')"), std::string::npos) << r.text();
}

// What training refuses, validate reports: a sample with two images (training stops on it) and
// an image over the decompression-bomb limit, found from its header even without decoding.
TEST(Validate, ReportsWhatTrainingRefuses) {
  std::string d = test::temp_dir("validate_refusals");
  make_dirs(d + "/img");
  write_file_atomic(d + "/img/ok.png", std::string(reinterpret_cast<const char*>(kPng), sizeof kPng));
  // A PNG signature and IHDR chunk claiming 30000 x 30000 (nothing after it is ever read).
  std::string bomb(reinterpret_cast<const char*>(kPng), 16);
  for (int k = 0; k < 2; ++k) bomb += std::string("\x00\x00\x75\x30", 4);
  bomb += std::string("\x08\x02\x00\x00\x00", 5) + std::string(64, '\x11');
  write_file_atomic(d + "/img/bomb.png", bomb);
  std::vector<std::string> corpus = {"What is it? A red circle."};
  for (int i = 0; i < 50; ++i) corpus.push_back("the blue square is left of the red circle " + std::to_string(i));
  train_gemma_style_tokenizer(corpus, d + "/tokenizer.model", 300, 1);
  write_file_atomic(d + "/data.json", R"([
{"id": "two", "image": ["ok.png", "ok.png"], "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red circle."}]},
{"id": "bomb", "image": "bomb.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red circle."}]},
{"id": "good", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red circle."}]}
])");
  for (const bool decode : {true, false}) {
    ValidateOptions o;
    o.data_path = d + "/data.json";
    o.image_folder = d + "/img";
    o.tokenizer = d + "/tokenizer.model";
    o.image_tokens = 16;
    o.decode_images = decode;
    const ValidationReport r = validate_dataset(o);
    EXPECT_EQ(r.samples_with_problems, 2u) << r.text();
    auto has = [&](const std::string& kind, const std::string& id, const std::string& msg) {
      for (const auto& p : r.problems)
        if (p.kind == kind && p.where.find("'" + id + "'") != std::string::npos && p.message.find(msg) != std::string::npos)
          return true;
      return false;
    };
    EXPECT_TRUE(has("multiple_images", "two", "has 2 images; MGM trains one image per sample")) << r.text();
    EXPECT_TRUE(has("image_too_large", "bomb", "bomb.png: image of 30000x30000 = 900000000 pixels exceeds the limit of 178956970"))
        << r.text();
  }
}

}  // namespace
}  // namespace mgm::data
