// Tests for `mgm data synth`. Expectations are independent of the generator: image facts are
// read back from the PNG pixels (colour counts, fill ratio, centroid), the files are parsed by
// the project's readers for each format, and the eval sets are scored with the real scorers.
#include "data/synth.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "data/cli_synth.h"
#include "data/conversation.h"
#include "data/convert.h"
#include "data/image.h"
#include "data/llava.h"
#include "data/records.h"
#include "data/tokenizer.h"
#include "eval/scoring/mmbench.h"
#include "eval/scoring/textvqa.h"
#include "tests_util.h"

namespace mgm::data {
namespace {

namespace fs = std::filesystem;

#ifdef MGM_WITH_OPENCV

SynthOptions small_options(const std::string& dir, int64_t seed = 7, int vocab = 1024) {
  SynthOptions o;
  o.out_dir = dir;
  o.seed = seed;
  o.size = 40;
  o.eval_size = 16;
  o.image_size = 192;
  o.vocab_size = vocab;
  return o;
}

// One dataset shared by the read-only tests (generation takes about a second).
const std::string& dataset() {
  static const std::string dir = [] {
    std::string d = test::temp_dir("synth") + "/out";
    synthesize_dataset(small_options(d));
    return d;
  }();
  return dir;
}

std::map<std::string, std::string> all_files(const std::string& root) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file())
      m[fs::relative(e.path(), root).string()] = read_file(e.path().string());
  return m;
}

// What the pixels say about an image, independent of the generator's bookkeeping.
struct PixelFacts {
  std::string main_colour, main_kind, position;
  size_t shapes = 0;
  double fill = 0;
};

PixelFacts read_facts(const std::string& png_path) {
  RgbImage img = decode_image_file(png_path);
  const uint8_t* bg = img.at(0, 0);
  struct Acc {
    size_t n = 0;
    double sx = 0, sy = 0;
    int x0 = 1 << 30, x1 = -1, y0 = 1 << 30, y1 = -1;
  };
  std::map<std::string, Acc> exact;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      const uint8_t* p = img.at(x, y);
      for (const auto& c : synth_colours()) {
        auto rgb = synth_colour_rgb(c);
        if (p[0] == rgb[0] && p[1] == rgb[1] && p[2] == rgb[2]) {
          Acc& a = exact[c];
          ++a.n;
          a.sx += x;
          a.sy += y;
          a.x0 = std::min(a.x0, x), a.x1 = std::max(a.x1, x);
          a.y0 = std::min(a.y0, y), a.y1 = std::max(a.y1, y);
        }
      }
    }
  PixelFacts f;
  size_t best = 0;
  for (const auto& [c, a] : exact) {
    if (a.n >= 20) ++f.shapes;  // anti-aliased edges never match a palette colour this often
    if (a.n > best) best = a.n, f.main_colour = c;
  }
  if (f.main_colour.empty()) return f;
  const Acc& m = exact[f.main_colour];
  const double cx = m.sx / m.n / img.width, cy = m.sy / m.n / img.height;
  f.position = cx < 0.4   ? "left"
               : cx > 0.6 ? "right"
               : cy < 0.4 ? "top"
               : cy > 0.6 ? "bottom"
                          : "center";
  // Area with anti-aliased edge pixels counted when at least half covered (projection of the
  // pixel onto the background -> colour line), over its bounding box.
  auto rgb = synth_colour_rgb(f.main_colour);
  size_t area = 0, top = 0;
  int x0 = 1 << 30, x1 = -1, y0 = 1 << 30, y1 = -1;
  for (int y = std::max(0, m.y0 - 3); y <= std::min(img.height - 1, m.y1 + 3); ++y)
    for (int x = std::max(0, m.x0 - 3); x <= std::min(img.width - 1, m.x1 + 3); ++x) {
      const uint8_t* p = img.at(x, y);
      double num = 0, den = 0;
      for (int k = 0; k < 3; ++k) {
        num += (double(bg[k]) - p[k]) * (double(bg[k]) - rgb[k]);
        den += (double(bg[k]) - rgb[k]) * (double(bg[k]) - rgb[k]);
      }
      if (num / den < 0.5) continue;
      ++area;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      const uint8_t* p = img.at(x, y);
      double num = 0, den = 0;
      for (int k = 0; k < 3; ++k) {
        num += (double(bg[k]) - p[k]) * (double(bg[k]) - rgb[k]);
        den += (double(bg[k]) - rgb[k]) * (double(bg[k]) - rgb[k]);
      }
      if (num / den >= 0.5 && 2 * y < y0 + y1) ++top;
    }
  f.fill = double(area) / (double(x1 - x0 + 1) * (y1 - y0 + 1));
  const double top_share = double(top) / area;
  // Fill ratios of the drawn shapes: square 1, circle pi/4, cross 0.59, triangle 0.5 (a quarter
  // of it in the upper half), star 0.34.
  if (f.fill > 0.9)
    f.main_kind = "square";
  else if (f.fill > 0.69)
    f.main_kind = "circle";
  else if (f.fill < 0.42)
    f.main_kind = "star";
  else
    f.main_kind = top_share < 0.38 ? "triangle" : "cross";
  return f;
}

TEST(Synth, ImagesShowTheStatedFacts) {
  const std::string& d = dataset();
  std::set<std::string> kinds_seen, positions_seen;
  size_t multi = 0;
  for (int split = 0; split < 2; ++split) {
    const int n = split == 0 ? 40 : 16;
    for (int i = 0; i < n; ++i) {
      const SynthSplit sp = split == 0 ? SynthSplit::kTrain : SynthSplit::kEval;
      const SynthScene s = plan_synth_scene(7, sp, i, 192);
      char name[32];
      std::snprintf(name, sizeof name, "%s/%06d.png", split == 0 ? "train" : "eval", i);
      const PixelFacts f = read_facts(d + "/images/" + name);
      SCOPED_TRACE(name);
      EXPECT_EQ(f.main_colour, s.main().colour);
      EXPECT_EQ(f.main_kind, s.main().kind) << "fill " << f.fill;
      EXPECT_EQ(f.position, s.position);
      EXPECT_EQ(f.shapes, s.shapes.size());
      RgbImage img = decode_image_file(d + "/images/" + name);
      EXPECT_EQ(img.width, s.width);
      EXPECT_GE(std::min(img.width, img.height), 144);
      EXPECT_LE(std::max(img.width, img.height), 240);
      kinds_seen.insert(f.main_kind);
      positions_seen.insert(f.position);
      multi += s.shapes.size() > 1;
    }
  }
  EXPECT_EQ(kinds_seen.size(), synth_shape_kinds().size());
  EXPECT_EQ(positions_seen.size(), synth_positions().size());
  EXPECT_GT(multi, 5u);
  EXPECT_LT(multi, 40u);
}

TEST(Synth, DeterministicAndSeedDependent) {
  const std::string base = test::temp_dir("synth_det");
  synthesize_dataset(small_options(base + "/a"));
  const auto a = all_files(dataset());
  const auto b = all_files(base + "/a");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(a.size(), 40u + 16u + 8u);
  for (const auto& [name, bytes] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name;
    EXPECT_TRUE(it->second == bytes) << name << " differs between two runs with one seed";
  }
  synthesize_dataset(small_options(base + "/c", 8, 512));
  const auto c = all_files(base + "/c");
  EXPECT_NE(c.at("finetune.json"), a.at("finetune.json"));
  EXPECT_NE(c.at("images/train/000000.png"), a.at("images/train/000000.png"));
  EXPECT_NE(c.at("eval/mmbench.tsv"), a.at("eval/mmbench.tsv"));
  // A 512-piece vocabulary (the tiny config) works and stays within its limit.
  Tokenizer tok = Tokenizer::load(base + "/c/tokenizer/tokenizer.model");
  EXPECT_LE(tok.vocab_size(), 512);
  for (const Sample& s : read_llava(base + "/c/finetune.json")) {
    TokenizedSample t =
        tokenize_conversation(tok, Template::kGemma, s.conversations, s.has_image(), 4096);
    EXPECT_EQ(t.problem, "") << s.id;
  }
}

// --caption-noise: the stated fraction of pretraining captions is wrong, each as pretrain_truth.jsonl
// says (its true caption is the clean run's caption), and nothing else changes: the images and
// the finetuning and evaluation files are byte for byte those of a run without noise.
TEST(Synth, CaptionNoiseChangesOnlyTheListedCaptions) {
  const std::string base = test::temp_dir("synth_noise");
  SynthOptions o = small_options(base + "/noisy");
  o.caption_noise = 0.5;
  synthesize_dataset(o);
  const auto clean = all_files(dataset());
  const auto noisy = all_files(base + "/noisy");
  for (const auto& [name, bytes] : clean) {
    if (starts_with(name, "images/") || name == "finetune.json" || starts_with(name, "eval/")) {
      EXPECT_TRUE(noisy.at(name) == bytes) << name << " changed with caption noise";
    }
  }
  std::map<std::string, std::string> clean_caption;
  for (const Sample& s : read_llava(dataset() + "/pretrain.json"))
    clean_caption[s.id] = s.conversations[1].value;
  std::map<std::string, std::string> noisy_caption;
  for (const Sample& s : read_llava(base + "/noisy/pretrain.json"))
    noisy_caption[s.id] = s.conversations[1].value;
  size_t wrong = 0, lines = 0;
  std::set<std::string> kinds;
  for (const auto& l : split(read_file(base + "/noisy/pretrain_truth.jsonl"), '\n')) {
    if (l.empty()) continue;
    ++lines;
    const Json t = Json::parse(l);
    const std::string id = t["id"];
    EXPECT_EQ(t["true_caption"], clean_caption.at(id)) << id;
    EXPECT_EQ(t["caption"], noisy_caption.at(id)) << id;
    if (t["noise"] != "clean") {
      ++wrong;
      kinds.insert(t["noise"].get<std::string>());
      EXPECT_NE(t["caption"], t["true_caption"]) << id << " " << t["noise"];
    } else {
      EXPECT_EQ(t["caption"], t["true_caption"]) << id;
    }
  }
  EXPECT_EQ(lines, clean_caption.size());
  EXPECT_GT(wrong, lines / 4);
  EXPECT_LT(wrong, lines * 3 / 4);
  EXPECT_GE(kinds.size(), 3u);
  EXPECT_EQ(read_json_file(base + "/noisy/synth.json")["caption_noise"], 0.5);
}

TEST(Synth, RefusesANonEmptyFolderWithoutOverwrite) {
  const std::string d = test::temp_dir("synth_refuse");
  write_file_atomic(d + "/keep.txt", "x");
  SynthOptions o = small_options(d);
  o.size = 3;
  o.eval_size = 2;
  try {
    synthesize_dataset(o);
    ADD_FAILURE() << "wrote into a non-empty folder";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(path_exists(d + "/finetune.json"));
  EXPECT_THROW(run_synth({"--out", d, "--size", "3", "--eval_size", "2"}), UsageError);
}

TEST(Synth, OverwriteReplacesAnEarlierLargerRun) {
  const std::string d = test::temp_dir("synth_over") + "/out";
  SynthOptions o = small_options(d);
  o.size = 5;
  o.eval_size = 3;
  synthesize_dataset(o);
  write_file_atomic(d + "/notes.txt", "mine");
  o.size = 3;
  o.eval_size = 2;
  o.overwrite = true;
  synthesize_dataset(o);
  EXPECT_TRUE(path_exists(d + "/images/train/000002.png"));
  EXPECT_FALSE(path_exists(d + "/images/train/000003.png")) << "stale image left behind";
  EXPECT_FALSE(path_exists(d + "/images/eval/000002.png"));
  EXPECT_TRUE(path_exists(d + "/notes.txt")) << "a file the generator does not own was removed";
  EXPECT_EQ(read_llava(d + "/pretrain.json").size(), 3u);
}

TEST(Synth, PretrainCaptionsInBothFormatsAgree) {
  const std::string& d = dataset();
  RecordFile dj = read_records(d + "/pretrain_dj.jsonl", FileKind::kJsonLines);
  std::vector<Sample> llava = read_llava(d + "/pretrain.json");
  ASSERT_EQ(dj.records.size(), 40u);
  ASSERT_EQ(llava.size(), 40u);
  for (size_t i = 0; i < llava.size(); ++i) {
    const OrderedJson& r = dj.records[i].value;
    const std::string text = r.at("text").get<std::string>();
    const std::string head = std::string(kDjImageToken) + "\n",
                      tail = std::string(" ") + kDjEocToken;
    ASSERT_TRUE(starts_with(text, head) && ends_with(text, tail)) << text;
    const std::string cap = text.substr(head.size(), text.size() - head.size() - tail.size());
    char name[32];
    std::snprintf(name, sizeof name, "train/%06zu.png", i);
    EXPECT_EQ(r.at("images"), OrderedJson::array({name}));
    EXPECT_EQ(r.at("id").get<std::string>(), llava[i].id);
    ASSERT_EQ(llava[i].images.size(), 1u);
    EXPECT_EQ(llava[i].images[0], name);
    EXPECT_TRUE(path_exists(d + "/images/" + llava[i].images[0]));
    ASSERT_EQ(llava[i].conversations.size(), 2u);
    EXPECT_TRUE(starts_with(llava[i].conversations[0].value, "<image>\n"));
    EXPECT_EQ(llava[i].conversations[1].value, cap);
    // The caption names the main shape's colour and kind.
    const SynthScene s = plan_synth_scene(7, SynthSplit::kTrain, static_cast<int>(i), 192);
    EXPECT_NE(to_lower(cap).find(s.main().colour + " " + s.main().kind), std::string::npos) << cap;
    if (!s.word.empty()) {
      EXPECT_NE(cap.find("\"" + s.word + "\""), std::string::npos) << cap;
    }
  }
}

TEST(Synth, FinetuneConversationsTokenizeAndAnswerShortly) {
  const std::string& d = dataset();
  std::vector<Sample> ft = read_llava(d + "/finetune.json");
  Tokenizer tok = Tokenizer::load(d + "/tokenizer");
  EXPECT_LE(tok.vocab_size(), 1024);
  size_t text_only = 0;
  for (const Sample& s : ft) {
    SCOPED_TRACE(s.id);
    if (!s.has_image()) {
      ++text_only;
    } else {
      EXPECT_TRUE(path_exists(d + "/images/" + s.images[0]));
      EXPECT_TRUE(starts_with(s.conversations[0].value, "<image>\n"));
      EXPECT_GE(s.conversations.size(), 4u);
      EXPECT_LE(s.conversations.size(), 8u);
    }
    for (size_t t = 0; t < s.conversations.size(); ++t) {
      const Turn& turn = s.conversations[t];
      EXPECT_EQ(turn.from, t % 2 == 0 ? "human" : "gpt");
      if (t > 0) {
        EXPECT_EQ(turn.value.find("<image>"), std::string::npos);
      }
      if (t % 2 == 1) {
        EXPECT_EQ(turn.value.find(' '), std::string::npos) << "long answer: " << turn.value;
        const bool letter = turn.value.size() == 1 && turn.value[0] >= 'A' && turn.value[0] <= 'D';
        EXPECT_TRUE(letter || turn.value == to_lower(turn.value)) << turn.value;
      }
    }
    TokenizedSample t =
        tokenize_conversation(tok, Template::kGemma, s.conversations, s.has_image(), 4096);
    EXPECT_EQ(t.problem, "");
    size_t supervised = 0;
    for (int64_t l : t.labels) supervised += l != kIgnoreIndex;
    EXPECT_GT(supervised, 0u);
    for (int64_t id : t.input_ids) EXPECT_NE(id, tok.unk_id());
  }
  EXPECT_EQ(text_only, 2u);  // every 20th image is followed by a text-only sample
  EXPECT_EQ(ft.size(), 42u);
}

// The benchmarks ask one question right after the image; the finetuning set must put every
// kind of question there, not only colour and shape ones (a model learns the position shortcut).
// Multiple-choice turns: with MMBench's answer-format line the answer is a letter naming an
// option; without it the answer is the text of exactly one option (what VLMEvalKit's matcher maps
// back to that letter). Both forms occur.
TEST(Synth, ChoiceTurnsAnswerWithTheLetterOrTheOptionText) {
  const std::string& d = dataset();
  const std::string suffix = "Answer with the option's letter from the given choices directly.";
  size_t letters = 0, texts = 0;
  for (const Sample& s : read_llava(d + "/finetune.json")) {
    for (size_t t = 0; t + 1 < s.conversations.size(); t += 2) {
      const std::vector<std::string> lines = split(s.conversations[t].value, '\n');
      std::vector<std::string> options;
      for (const auto& l : lines)
        if (l.size() > 3 && l[0] >= 'A' && l[0] <= 'D' && l[1] == '.' && l[2] == ' ')
          options.push_back(l.substr(3));
      if (options.empty()) continue;
      SCOPED_TRACE(s.id + ": " + s.conversations[t].value);
      const std::string& answer = s.conversations[t + 1].value;
      if (lines.back() == suffix) {
        ++letters;
        ASSERT_EQ(answer.size(), 1u);
        EXPECT_LT(static_cast<size_t>(answer[0] - 'A'), options.size());
      } else {
        ++texts;
        EXPECT_EQ(std::count(options.begin(), options.end(), answer), 1) << answer;
      }
    }
  }
  EXPECT_GT(letters, 0u);
  EXPECT_GT(texts, letters);
}

TEST(Synth, FirstTurnsCoverEveryQuestionKind) {
  const std::string& d = dataset();
  std::set<std::string> first;
  for (const Sample& s : read_llava(d + "/finetune.json")) {
    if (!s.has_image()) continue;
    const std::string& q = s.conversations[0].value;
    if (q.find("Answer with the option's letter") != std::string::npos)
      first.insert("choice");
    else if (q.find("How many") != std::string::npos)
      first.insert("count");
    else if (q.find("Where") != std::string::npos)
      first.insert("position");
    else if (q.find("colour") != std::string::npos)
      first.insert("colour");
    else
      first.insert("other");
  }
  EXPECT_EQ(first.size(), 5u) << join(std::vector<std::string>(first.begin(), first.end()), ", ");
}

TEST(Synth, TextVqaSetScoresPerfectAnswersAtOneHundredPercent) {
  const std::string& d = dataset();
  const std::string qpath = d + "/eval/textvqa_questions.jsonl";
  RecordFile qs = read_records(qpath, FileKind::kJsonLines);
  Json ann = read_json_file(d + "/eval/textvqa_annotations.json");
  ASSERT_EQ(ann.at("data").size(), qs.records.size());
  EXPECT_GE(qs.records.size(), 16u);
  EXPECT_LE(qs.records.size(), 32u);
  std::map<std::pair<std::string, std::string>, std::vector<std::string>> gt;
  for (const Json& a : ann.at("data")) {
    ASSERT_EQ(a.at("answers").size(), 10u);
    std::set<std::string> norm;
    for (const Json& x : a.at("answers"))
      norm.insert(eval::textvqa_normalize(x.get<std::string>()));
    EXPECT_EQ(norm.size(), 1u) << a.dump();  // variants only differ in what the scorer ignores
    gt[{a.at("image_id").get<std::string>(), to_lower(a.at("question").get<std::string>())}] =
        a.at("answers").get<std::vector<std::string>>();
  }
  std::string perfect, wrong;
  for (const Record& r : qs.records) {
    const std::string id = r.value.at("question_id").get<std::string>();
    const std::string text = r.value.at("text").get<std::string>();
    const std::string image = r.value.at("image").get<std::string>();
    EXPECT_EQ(image, "eval/" + id + ".png");
    std::vector<std::string> lines = split(text, '\n');
    const SynthScene s = plan_synth_scene(7, SynthSplit::kEval, std::stoi(id), 192);
    ASSERT_EQ(lines.size(), s.word.empty() ? 2u : 3u) << text;
    EXPECT_EQ(lines.back(), "Answer the question using a single word or phrase.");
    if (!s.word.empty()) {
      EXPECT_EQ(lines[1], "Reference OCR token: " + s.word);
    }
    const auto& answers = gt.at({id, to_lower(lines[0])});
    // The answer agrees with what the pixels show.
    const PixelFacts f = read_facts(d + "/images/" + image);
    const std::string q = to_lower(lines[0]);
    const std::string ans = eval::textvqa_normalize(answers[0]);
    if (q.find("how many") != std::string::npos)
      EXPECT_EQ(ans, std::to_string(f.shapes));
    else if (q.find("colour") != std::string::npos)
      EXPECT_EQ(ans, f.main_colour);
    else if (q.find("shape") != std::string::npos)
      EXPECT_EQ(ans, f.main_kind);
    else
      EXPECT_EQ(ans, s.word) << q;
    OrderedJson line = {{"question_id", id}, {"prompt", text}, {"text", answers[0]}};
    perfect += line.dump() + "\n";
    line["text"] = "zebra";
    wrong += line.dump() + "\n";
  }
  write_file_atomic(d + "/../perfect.jsonl", perfect);
  write_file_atomic(d + "/../wrong.jsonl", wrong);
  eval::TextVqaResult ok =
      eval::score_textvqa(d + "/eval/textvqa_annotations.json", d + "/../perfect.jsonl");
  EXPECT_EQ(ok.samples, qs.records.size());
  EXPECT_DOUBLE_EQ(ok.accuracy, 1.0);
  EXPECT_DOUBLE_EQ(
      eval::score_textvqa(d + "/eval/textvqa_annotations.json", d + "/../wrong.jsonl").accuracy,
      0.0);
}

std::string base64_decode(const std::string& s) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    int v = c >= 'A' && c <= 'Z'   ? c - 'A'
            : c >= 'a' && c <= 'z' ? c - 'a' + 26
            : c >= '0' && c <= '9' ? c - '0' + 52
            : c == '+'             ? 62
            : c == '/'             ? 63
                                   : -1;
    if (v < 0) continue;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

TEST(Synth, Base64MatchesKnownVectors) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_encode(std::string("\xff\x00\x10", 3)), "/wAQ");
}

TEST(Synth, MmbenchTsvHasCircularVariantsAndScores) {
  const std::string& d = dataset();
  const std::string tsv = d + "/eval/mmbench.tsv";
  EXPECT_TRUE(starts_with(read_file(tsv),
                          "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\t"
                          "l2-category\tcomment\tsplit\n"));
  std::vector<eval::MmbQuestion> qs = eval::read_mmbench_questions(tsv);
  auto groups = eval::mmbench_circular_groups(qs);
  ASSERT_EQ(groups.size(), 16u);
  std::set<std::string> categories;
  size_t with_hint = 0;
  std::string answers;
  for (const auto& [base, rows] : groups) {
    const eval::MmbQuestion& q0 = qs[rows[0]];
    const size_t n = q0.choices.size();
    EXPECT_GE(n, 2u);
    EXPECT_LE(n, 4u);
    ASSERT_EQ(rows.size(), n) << "one row per rotation";
    std::string answer_text;
    for (const auto& c : q0.choices)
      if (c.letter == q0.answer) answer_text = c.text;
    ASSERT_FALSE(answer_text.empty());
    for (size_t k = 0; k < n; ++k) {
      const eval::MmbQuestion& q = qs[rows[k]];
      EXPECT_EQ(q.index, base + static_cast<int64_t>(k) * 1000000);
      ASSERT_EQ(q.choices.size(), n);
      for (size_t i = 0; i < n; ++i) EXPECT_EQ(q.choices[i].text, q0.choices[(i + k) % n].text);
      std::string t;
      for (const auto& c : q.choices)
        if (c.letter == q.answer) t = c.text;
      EXPECT_EQ(t, answer_text) << "the answer letter follows the rotation";
      answers += OrderedJson({{"question_id", q.index}, {"text", q.answer}}).dump() + "\n";
    }
    categories.insert(q0.category);
    EXPECT_EQ(q0.split, "dev");
  }
  // The image column holds the eval image's PNG; hints appear on some rows.
  std::vector<std::string> lines = split(read_file(tsv), '\n');
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    std::vector<std::string> f = split(lines[i], '\t');
    ASSERT_EQ(f.size(), 14u);
    const int64_t idx = std::stoll(f[0]);
    char name[32];
    std::snprintf(name, sizeof name, "/images/eval/%06lld.png",
                  static_cast<long long>(idx % 1000000));
    EXPECT_TRUE(base64_decode(f[9]) == read_file(d + name)) << "row " << idx;
    with_hint += !f[2].empty() && idx < 1000000;
  }
  EXPECT_GE(categories.size(), 3u);
  EXPECT_GT(with_hint, 0u);
  EXPECT_LT(with_hint, 16u);
  write_file_atomic(d + "/../mmb_answers.jsonl", answers);
  eval::MmbenchScore sc =
      eval::score_mmbench(tsv, d + "/../mmb_answers.jsonl", eval::McqMatcher::k2024);
  ASSERT_FALSE(sc.accuracy.empty());
  EXPECT_EQ(sc.accuracy[0].column, "Overall");
  EXPECT_EQ(sc.accuracy[0].by_split.at("dev"), std::make_pair(size_t{16}, size_t{16}));
}

TEST(Synth, ManifestCountsAndChance) {
  const std::string& d = dataset();
  Json m = read_json_file(d + "/synth.json");
  EXPECT_EQ(m.at("seed"), 7);
  EXPECT_EQ(m.at("counts").at("train_images"), 40);
  EXPECT_EQ(m.at("counts").at("finetune_samples"), read_llava(d + "/finetune.json").size());
  EXPECT_EQ(m.at("counts").at("mmbench_rows"),
            eval::read_mmbench_questions(d + "/eval/mmbench.tsv").size());
  EXPECT_EQ(m.at("vocabularies").at("colours").size(), synth_colours().size());
  EXPECT_DOUBLE_EQ(m.at("chance").at("question_kinds").at("colour").get<double>(),
                   1.0 / synth_colours().size());
  EXPECT_DOUBLE_EQ(m.at("chance").at("question_kinds").at("count").get<double>(), 1.0 / 3);
  const double mmb = m.at("chance").at("mmbench").at("overall").get<double>();
  EXPECT_GE(mmb, 0.25);
  EXPECT_LE(mmb, 0.5);
  EXPECT_LT(m.at("chance").at("mmbench_circular").at("overall").get<double>(), mmb);
  for (const auto& [k, v] : m.at("files").items())
    EXPECT_TRUE(path_exists(d + "/" + v.get<std::string>())) << k;
}

#else

TEST(Synth, NeedsOpenCv) {
  SynthOptions o;
  o.out_dir = test::temp_dir("synth_nocv") + "/out";
  try {
    synthesize_dataset(o);
    ADD_FAILURE() << "no error without OpenCV";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "mgm was built without OpenCV; mgm data synth needs it");
  }
}

#endif

}  // namespace
}  // namespace mgm::data
