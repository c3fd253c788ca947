// The Better Synth data commands on the tiny MGM (tests/tiny_mgm.cc): Data-Juicer's caption text
// layout (image_captioning_mapper / mm_utils, including its multi-image insertion order),
// captions equal to the model's greedy generation, DJ JSONL and LLaVA JSON in and out,
// keep-original, candidates with best-score selection, a real SIGKILL of `mgm caption` halfway
// through writing followed by a resume that gives what an uninterrupted run gives, settings
// enforced on resume; caption likelihoods equal to the model's own loss; dHash; the filter's
// reasons, report and histograms.
#include <ATen/TensorOperators.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "curate/curate.h"
#include "data/collator.h"
#include "data/conversation.h"
#include "data/image.h"
#include "data/py_compat.h"
#include "models/generate.h"
#include "tests_util.h"
#include "tiny_mgm.h"

namespace mgm::curate {
namespace {

TEST(DjText, CaptionLayoutAsImageCaptioningMapper) {
  EXPECT_EQ(dj_captioned_text("<__dj__image>\nA red square. <|__dj__eoc|>", {"a cat"}),
            "<__dj__image> a cat <|__dj__eoc|>");
  // No eoc at all: the whole text is one chunk, closed by an eoc.
  EXPECT_EQ(dj_captioned_text("<__dj__image> old", {"new"}), "<__dj__image> new <|__dj__eoc|>");
  // Two chunks; a chunk without an image keeps only its special tokens (none) and its eoc.
  EXPECT_EQ(dj_captioned_text("<__dj__image> a <|__dj__eoc|> text only <|__dj__eoc|>", {"x"}),
            "<__dj__image> x <|__dj__eoc|><|__dj__eoc|>");
  // Two images in one chunk: insert_texts_after_placeholders finds the first placeholder each
  // time, so the second caption lands right after the first image token.
  EXPECT_EQ(dj_captioned_text("<__dj__image><__dj__image> two <|__dj__eoc|>", {"c1", "c2"}),
            "<__dj__image> c2  c1 <__dj__image><|__dj__eoc|>");
  EXPECT_EQ(dj_remove_special_tokens("<__dj__image>\n A red square. <|__dj__eoc|>"),
            "A red square.");
  EXPECT_EQ(dj_only_special_tokens("a<__dj__image>b<__dj__video>c"), "<__dj__image><__dj__video>");
}

TEST(Dhash, SameImageSameHashOthersDiffer) {
  data::RgbImage a(40, 30), b(40, 30);
  for (int y = 0; y < 30; ++y)
    for (int x = 0; x < 40; ++x) {
      a.at(x, y)[0] = a.at(x, y)[1] = a.at(x, y)[2] = static_cast<uint8_t>(x * 6);
      b.at(x, y)[0] = b.at(x, y)[1] = b.at(x, y)[2] = static_cast<uint8_t>(255 - x * 6);
    }
  EXPECT_EQ(image_dhash(a), image_dhash(a));
  EXPECT_EQ(image_dhash(a), 0u);  // brightness rises to the right: no left > right pair
  EXPECT_EQ(image_dhash(b), ~0ull);
  EXPECT_EQ(hamming64(image_dhash(a), image_dhash(b)), 64);
}

class Curate : public ::testing::Test {
 protected:
  static const std::string& fixture() {
    static std::string d = [] {
      const std::string root = test::make_tiny_mgm_fixture("curate");
      std::string dj, llava = "[";
      for (int i = 0; i < 7; ++i) {
        const std::string img = str_cat("img", i % 4, ".ppm");
        dj += str_cat(R"({"id": ")", i, R"(", "text": "<__dj__image>\nthe red circle is ka <|__dj__eoc|>", "images": [")",
                      img, R"("], "meta": {"n": )", i, "}}\n");
        llava += str_cat(i ? ", " : "", R"({"id": ")", i,
                         R"(", "image": ")", img,
                         R"(", "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "old caption"}]})");
      }
      dj += R"({"id": "text-only", "text": "no image here <|__dj__eoc|>"})" "\n";
      write_file_atomic(root + "/data.jsonl", dj);
      write_file_atomic(root + "/data.json", llava + "]");
      return root;
    }();
    return d;
  }
  static eval::EvalModel& model() {
    static eval::EvalModel m = [] {
      eval::EvalModelOptions o;
      o.model_path = fixture() + "/MGM-tiny";
      return eval::load_eval_model(o);
    }();
    return m;
  }
  CaptionOptions options(const std::string& in, const std::string& out) {
    CaptionOptions o;
    o.data_path = fixture() + "/" + in;
    o.image_folder = fixture() + "/images";
    o.out = out;
    o.max_new_tokens = 6;
    o.batch_size = 3;
    o.quiet = true;
    return o;
  }
  // The greedy caption straight from models::generate (the independent path).
  std::string reference_caption(const std::string& image, const std::string& prompt) {
    auto& m = model();
    const at::Tensor aux =
        eval::image_aux_tensor(m, data::decode_image_file(fixture() + "/images/" + image)).unsqueeze(0);
    const at::Tensor lr = data::downsample_bilinear(aux, m.model->config().clip.image_size);
    models::GenerationConfig g;
    g.max_new_tokens = 6;
    g.stop_token_ids = {m.tokenizer.eos_id()};
    const auto ids = m.tokenizer.encode_with_image(eval::build_generation_prompt(m, prompt, true));
    return data::py_strip(m.tokenizer.decode(models::generate(m.model, {ids}, lr, aux, g)[0], true));
  }
};

TEST_F(Curate, DjCaptionsEqualGreedyGenerationAndKeepTheRest) {
  const std::string out = test::temp_dir("caption_dj") + "/out.jsonl";
  const CaptionStats st = caption_dataset(model(), options("data.jsonl", out));
  EXPECT_EQ(st.samples, 8u);
  EXPECT_EQ(st.captioned, 7u);
  EXPECT_EQ(st.written, 15u);  // 7 x (original + new) + the text-only original
  const auto lines = split(read_file(out), '\n');
  std::vector<OrderedJson> recs;
  for (const auto& l : lines)
    if (!l.empty()) recs.push_back(OrderedJson::parse(l));
  ASSERT_EQ(recs.size(), 15u);
  std::set<std::string> captions;
  for (int i = 0; i < 7; ++i) {
    const OrderedJson& orig = recs[2 * i];
    const OrderedJson& gen = recs[2 * i + 1];
    EXPECT_EQ(orig["text"], "<__dj__image>\nthe red circle is ka <|__dj__eoc|>");
    EXPECT_EQ(gen["id"], orig["id"]);
    EXPECT_EQ(gen["meta"], orig["meta"]);  // other fields kept
    EXPECT_EQ(gen["images"], orig["images"]);
    const std::string cap = reference_caption(str_cat("img", i % 4, ".ppm"),
                                              "Provide a one-sentence caption for the provided image.");
    EXPECT_EQ(gen["text"], "<__dj__image> " + cap + " <|__dj__eoc|>") << i;
    captions.insert(cap);
  }
  EXPECT_GE(captions.size(), 2u);
  EXPECT_EQ(recs[14]["id"], "text-only");
  EXPECT_FALSE(path_exists(out + ".partial.jsonl"));
  // Without the originals, and an output that exists is not replaced without --overwrite.
  CaptionOptions o = options("data.jsonl", out);
  o.keep_original = false;
  EXPECT_NE(test::error_of([&] { caption_dataset(model(), o); }).find("exists (--overwrite"),
            std::string::npos);
  o.overwrite = true;
  EXPECT_EQ(caption_dataset(model(), o).written, 7u);
}

TEST_F(Curate, LlavaInLlavaOutWithCandidates) {
  const std::string out = test::temp_dir("caption_llava") + "/out.json";
  CaptionOptions o = options("data.json", out);
  o.keep_original = false;
  o.num_candidates = 3;
  o.temperature = 1.0;
  o.select = "all";
  o.prompts = {"Describe.", "What is this?"};
  ASSERT_EQ(caption_dataset(model(), o).written, 21u);
  const Json all = read_json_file(out);
  ASSERT_TRUE(all.is_array());
  ASSERT_EQ(all.size(), 21u);
  EXPECT_EQ(all[0]["conversations"][0]["value"], "<image>\nDescribe.");  // the human turn kept
  EXPECT_EQ(all[0]["conversations"][1]["from"], "gpt");
  // best-score keeps, per image, the candidate the model finds likeliest given the image.
  const std::string best = test::temp_dir("caption_best") + "/out.json";
  o.out = best;
  o.select = "best-score";
  ASSERT_EQ(caption_dataset(model(), o).written, 7u);
  const Json chosen = read_json_file(best);
  for (size_t i = 0; i < 7; ++i) {
    std::vector<std::string> cands;
    for (size_t c = 0; c < 3; ++c)
      cands.push_back(all[3 * i + c]["conversations"][1]["value"].get<std::string>());
    const std::string pick = chosen[i]["conversations"][1]["value"].get<std::string>();
    ASSERT_NE(std::find(cands.begin(), cands.end(), pick), cands.end()) << i;
  }
  o.num_candidates = 2;
  o.temperature = 0;
  EXPECT_NE(test::error_of([&] { caption_dataset(model(), o); }).find("needs --temperature > 0"),
            std::string::npos);
}

TEST_F(Curate, KilledCaptionRunResumesToTheSameOutput) {
  const std::string dir = test::temp_dir("caption_kill");
  const std::string straight = dir + "/straight.jsonl", resumed = dir + "/resumed.jsonl";
  caption_dataset(model(), options("data.jsonl", straight));
  const std::string base = str_cat(MGM_BIN, " caption --model-path ", fixture(), "/MGM-tiny --data_path ",
                                   fixture(), "/data.jsonl --image_folder ", fixture(),
                                   "/images --out ", resumed, " --max_new_tokens 6 --batch_size 3");
  std::string out;
  const int rc = test::run_command(base + " --test_kill_after_batches 1", &out);
  EXPECT_NE(rc, 0) << out;  // killed
  ASSERT_TRUE(path_exists(resumed + ".partial.jsonl"));
  EXPECT_FALSE(path_exists(resumed));
  const std::string partial = read_file(resumed + ".partial.jsonl");
  EXPECT_NE(partial.back(), '\n');  // a torn line
  // Other settings are refused; the same ones resume.
  EXPECT_NE(test::run_command(base + " --max_new_tokens 5", &out), 0);
  EXPECT_NE(out.find("was made with other settings"), std::string::npos) << out;
  ASSERT_EQ(test::run_command(base, &out), 0) << out;
  // The first batch (3 samples) was recorded whole, the second torn: its whole lines count.
  const size_t at = out.find(" done earlier");
  ASSERT_NE(at, std::string::npos) << out;
  const int earlier = std::stoi(out.substr(out.rfind('(', at) + 1));
  EXPECT_GE(earlier, 3) << out;
  EXPECT_LT(earlier, 6) << out;
  EXPECT_EQ(read_file(resumed), read_file(straight));
  EXPECT_FALSE(path_exists(resumed + ".partial.jsonl"));
}

TEST_F(Curate, ScoresAreTheModelsOwnLikelihoods) {
  const std::string dir = test::temp_dir("score");
  ScoreOptions o;
  o.data_path = fixture() + "/data.json";
  o.image_folder = fixture() + "/images";
  o.out = dir + "/scores.jsonl";
  o.prompt = "Describe.";
  o.quiet = true;
  ASSERT_EQ(score_dataset(model(), o), 7u);
  const auto lines = split(read_file(o.out), '\n');
  const OrderedJson j = OrderedJson::parse(lines[0]);
  const auto& st = j["__dj__stats__"];
  EXPECT_EQ(j["id"], "0");
  EXPECT_EQ(st["num_words"], 2);
  EXPECT_EQ(st["text_len"], 11);
  EXPECT_EQ(st["image_width"], OrderedJson::array({20}));
  EXPECT_EQ(st["image_height"], OrderedJson::array({30}));
  EXPECT_NEAR(st["aspect_ratios"][0].get<double>(), 1.5, 1e-12);
  EXPECT_EQ(st["image_dhash"][0].get<std::string>().size(), 16u);
  EXPECT_NEAR(st["mgm_image_gain"].get<double>(),
              st["mgm_loglik"].get<double>() - st["mgm_loglik_text_only"].get<double>(), 1e-9);
  // mgm_loglik is minus the model's own training loss on the same conversation.
  auto& m = model();
  c10::InferenceMode guard;
  const auto t = data::tokenize_conversation(
      m.tokenizer, m.conv_template, {{"human", "<image>\nDescribe."}, {"gpt", "old caption"}}, true,
      m.model->config().tokenizer_model_max_length);
  const at::Tensor aux =
      eval::image_aux_tensor(m, data::decode_image_file(fixture() + "/images/img0.ppm")).unsqueeze(0);
  const int64_t L = static_cast<int64_t>(t.input_ids.size());
  const auto outp = m.model->forward(at::tensor(t.input_ids, at::kLong).view({1, L}),
                                     at::tensor(t.labels, at::kLong).view({1, L}),
                                     at::ones({1, L}, at::kBool),
                                     data::downsample_bilinear(aux, m.model->config().clip.image_size), aux);
  EXPECT_NEAR(st["mgm_loglik"].get<double>(), -outp.loss.item<double>(), 1e-5);
  EXPECT_EQ(st["caption_tokens"].get<int64_t>(),
            std::count_if(t.labels.begin(), t.labels.end(), [](int64_t l) { return l != -100; }));
}

TEST(Filter, ReasonsReportAndHistograms) {
  const std::string dir = test::temp_dir("filter");
  std::string data, scores;
  // 10 samples with image gains 0.0 .. 0.9; sample 3's image is small, 4's is wide, 8 repeats
  // 5's image (same dHash) and 9 repeats 6's caption.
  for (int i = 0; i < 10; ++i) {
    const std::string cap = str_cat("c", i == 9 ? 6 : i);
    data += str_cat(R"({"id": ")", i, R"(", "text": "<__dj__image> )", cap,
                    R"( <|__dj__eoc|>", "images": ["x.png"]})", "\n");
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016llx", 0x1111ull * static_cast<unsigned>(i == 8 ? 5 : i));
    OrderedJson st = {{"mgm_loglik", -1.0},
                      {"mgm_loglik_text_only", -1.0 - i / 10.0},
                      {"mgm_image_gain", i / 10.0},
                      {"num_words", 1},
                      {"image_width", {i == 3 ? 8 : 100}},
                      {"image_height", {100}},
                      {"aspect_ratios", {i == 4 ? 5.0 : 1.0}},
                      {"image_dhash", {hash}}};
    scores += OrderedJson{{"id", std::to_string(i)}, {"__dj__stats__", st}}.dump() + "\n";
  }
  write_file_atomic(dir + "/data.jsonl", data);
  write_file_atomic(dir + "/scores.jsonl", scores);
  FilterOptions o;
  o.data_path = dir + "/data.jsonl";
  o.scores = dir + "/scores.jsonl";
  o.out = dir + "/kept.jsonl";
  o.min_image_gain = 0.15;      // drops 0 and 1
  o.min_side = 16;              // drops 3
  o.max_aspect_ratio = 3;       // drops 4
  o.dedup = "both";             // drops 8 (image of 5) and 9 (caption of 6)
  o.keep_top_fraction = 0.75;   // of 2, 5, 6, 7 keeps the 3 highest gains: drops 2
  const FilterReport r = filter_dataset(o);
  EXPECT_EQ(r.input, 10u);
  EXPECT_EQ(r.kept, 3u);
  const std::vector<std::pair<std::string, size_t>> want = {
      {"image_too_small", 1}, {"aspect_ratio", 1},   {"low_image_gain", 2},
      {"duplicate_text", 1},  {"duplicate_image", 1}, {"below_top_fraction", 1}};
  EXPECT_EQ(r.dropped, want);
  std::vector<std::string> ids;
  for (const auto& l : split(read_file(o.out), '\n'))
    if (!l.empty()) ids.push_back(OrderedJson::parse(l)["id"].get<std::string>());
  EXPECT_EQ(ids, (std::vector<std::string>{"5", "6", "7"}));
  const Json rep = read_json_file(o.out + ".report.json");
  EXPECT_EQ(rep["kept"], 3);
  EXPECT_EQ(rep["dropped"]["low_image_gain"]["count"], 2);
  EXPECT_EQ(rep["dropped"]["low_image_gain"]["examples"].size(), 2u);
  EXPECT_EQ(rep["thresholds"]["min_image_gain"], 0.15);
#ifdef MGM_WITH_OPENCV
  EXPECT_TRUE(path_exists(o.out + ".hist_mgm_image_gain.png"));
  EXPECT_EQ(rep["histograms"].size(), 3u);
#endif
  // Ranked by another stat: the text-only likelihood falls with the index, so 7 goes instead of 2.
  o.rank_by = "mgm_loglik_text_only";
  o.overwrite = true;
  filter_dataset(o);
  ids.clear();
  for (const auto& l : split(read_file(o.out), '\n'))
    if (!l.empty()) ids.push_back(OrderedJson::parse(l)["id"].get<std::string>());
  EXPECT_EQ(ids, (std::vector<std::string>{"2", "5", "6"}));
  o.rank_by = "colour";
  EXPECT_NE(test::error_of([&] { filter_dataset(o); }).find("--rank-by: expected"), std::string::npos);
  o.rank_by = "mgm_image_gain";
  // Score lines that do not match the data are refused.
  write_file_atomic(dir + "/short.jsonl", scores.substr(0, scores.find('\n') + 1));
  o.scores = dir + "/short.jsonl";
  o.overwrite = true;
  EXPECT_NE(test::error_of([&] { filter_dataset(o); }).find("1 score lines for 10 samples"),
            std::string::npos);
  // A damaged hash is named, not a crash.
  std::string bad = scores;
  bad.replace(bad.find("0000000000005555"), 16, "zzzzzzzzzzzzzzzz");  // sample 5, kept till dedup
  write_file_atomic(dir + "/bad.jsonl", bad);
  o.scores = dir + "/bad.jsonl";
  EXPECT_NE(test::error_of([&] { filter_dataset(o); }).find("is not 16 hex digits"),
            std::string::npos);
}

}  // namespace
}  // namespace mgm::curate
