// Tokenisation and label masking against a Python reference (HF GemmaTokenizer + the template and
// masking logic written from mgm-model.md), on hundreds of generated conversations.
#include "data/conversation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include <sentencepiece_trainer.h>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/tokenizer.h"
#include "tests_util.h"

namespace mgm::data {
namespace {

const char* kWords[] = {"red",   "circle",       "square",  "the",    "is",   "left",
                        "of",    "blue",         "text",    "How",    "many", "shapes",
                        "are",   "there?",       "What",    "color",  "3",    "17",
                        "naïve", "café",         "<tag>",   "a<b",    "x\ty", "  spaced",
                        "é",     "\u4e2d\u6587", "Answer:", "1024px", "."};
// Special-token strings inside messages: rare, since they break the template's rounds.
const char* kSpecialWords[] = {"<eos>", "<bos>", "<end_of_turn>", "<start_of_turn>model\n"};

std::string random_text(std::mt19937& rng, int min_words, int max_words) {
  std::uniform_int_distribution<int> n(min_words, max_words);
  std::uniform_int_distribution<size_t> w(0, sizeof(kWords) / sizeof(kWords[0]) - 1);
  std::uniform_int_distribution<int> sep(0, 9);
  std::string s;
  int k = n(rng);
  std::uniform_int_distribution<int> rare(0, 299);
  for (int i = 0; i < k; ++i) {
    if (i) s += sep(rng) == 0 ? "\n" : " ";
    s += rare(rng) == 0 ? kSpecialWords[rng() % 4] : kWords[w(rng)];
  }
  return s;
}

std::string tokenizer_model() {
  static std::string path = [] {
    std::string d = test::temp_dir("tok");
    std::mt19937 rng(7);
    std::vector<std::string> corpus;
    for (int i = 0; i < 400; ++i) corpus.push_back(random_text(rng, 3, 30));
    corpus.push_back(
        "<start_of_turn>user\nWhat is this?<end_of_turn>\n<start_of_turn>model\nA red "
        "circle.<end_of_turn>\n");
    train_gemma_style_tokenizer(corpus, d + "/tokenizer.model", 420, 1);
    return d + "/tokenizer.model";
  }();
  return path;
}

TEST(Tokenizer, GemmaSpecialIdsAndImageTokenSplicing) {
  Tokenizer t = Tokenizer::load(tokenizer_model());
  EXPECT_EQ(t.pad_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.unk_id(), 3);
  auto sot = t.piece_id("<start_of_turn>");
  ASSERT_TRUE(sot.has_value());
  auto ids = t.encode("<start_of_turn>user\nhi<eos>");
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(ids[1], *sot);
  EXPECT_EQ(ids.back(), 1);  // the literal "<eos>" string is the eos id
  auto img = t.encode_with_image("<image>\nWhat?");
  ASSERT_GE(img.size(), 3u);
  EXPECT_EQ(img[0], 2);
  EXPECT_EQ(img[1], kImageTokenIndex);
  EXPECT_EQ(std::count(img.begin(), img.end(), 2), 1);
  EXPECT_EQ(t.decode(t.encode("a red circle <eos>")), "a red circle ");
  EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.model"), Error);
}

TEST(Conversation, GemmaPromptAndMasksOnAKnownSample) {
  Tokenizer t = Tokenizer::load(tokenizer_model());
  std::vector<Turn> turns = {{"human", "What is it? <image>"}, {"gpt", "red"}};
  turns = move_image_to_front(turns);
  EXPECT_EQ(turns[0].value, "<image>\nWhat is it?");
  EXPECT_EQ(render_prompt(Template::kGemma, turns),
            "<start_of_turn>user\n<image>\nWhat is "
            "it?<end_of_turn>\n<start_of_turn>model\nred<end_of_turn>\n<eos>");
  TokenizedSample s = tokenize_conversation(t, Template::kGemma, turns, true, 2048);
  EXPECT_TRUE(s.problem.empty()) << s.problem;
  // Supervised: the answer, <end_of_turn>, "\n" and <eos>; the rest is masked.
  std::vector<int64_t> sup;
  for (size_t i = 0; i < s.labels.size(); ++i)
    if (s.labels[i] != kIgnoreIndex) sup.push_back(s.input_ids[i]);
  std::vector<int64_t> want = t.encode("red<end_of_turn>\n<eos>", false);
  EXPECT_EQ(sup, want);
  EXPECT_THROW(
      tokenize_conversation(t, Template::kGemma, {{"human", "a"}, {"human", "b"}}, false, 2048),
      Error);
}

TEST(Conversation, MatchesPythonReferenceOnGeneratedConversations) {
  const std::string model = tokenizer_model();
  std::mt19937 rng(2024);
  Json cases = Json::array();
  struct Case {
    Template tmpl;
    bool has_image;
    std::vector<Turn> turns;
  };
  std::vector<Case> mine;
  for (int i = 0; i < 300; ++i) {
    Case c;
    c.tmpl = i % 10 == 9 ? Template::kPlain : Template::kGemma;
    c.has_image = c.tmpl == Template::kPlain || i % 3 != 0;
    int rounds = c.tmpl == Template::kPlain ? 1 : 1 + static_cast<int>(rng() % 4);
    if (c.tmpl == Template::kGemma && i % 17 == 0)
      c.turns.push_back({"gpt", "leading turn dropped"});
    for (int r = 0; r < rounds; ++r) {
      std::string q = random_text(rng, 1, 12);
      if (r == 0 && c.has_image) {
        // Image first, image last, the image alone, around whitespace only, Unicode spaces.
        switch (rng() % 6) {
          case 0: q = "<image>\n" + q; break;
          case 1: q = q + " <image>"; break;
          case 2: q = "<image>"; break;
          case 3: q = " \n<image>\t \n"; break;
          case 4: q = "\u00a0<image>\u3000" + q + "\u2003"; break;
          default: q = q + "\n<image>\n"; break;
        }
      }
      c.turns.push_back({"human", q});
      c.turns.push_back({"gpt", random_text(rng, 1, 20)});
    }
    Json jt = Json::array();
    for (const auto& t : c.turns) jt.push_back({t.from, t.value});
    cases.push_back({{"template", c.tmpl == Template::kGemma ? "gemma" : "plain"},
                     {"has_image", c.has_image},
                     {"turns", jt}});
    mine.push_back(std::move(c));
  }
  std::string d = test::temp_dir("conv");
  write_json_file(d + "/in.json", cases);
  std::string out;
  int rc = test::run_python(test::source_dir() + "/tests/parity/conversation_reference.py " +
                                model + " " + d + "/in.json " + d + "/out.json",
                            &out);
  ASSERT_EQ(rc, 0) << out;
  Json ref = read_json_file(d + "/out.json");
  Tokenizer t = Tokenizer::load(model);
  int supervised = 0, mismatches = 0;
  for (size_t i = 0; i < mine.size(); ++i) {
    auto turns = move_image_to_front(mine[i].turns);
    TokenizedSample s = tokenize_conversation(t, mine[i].tmpl, turns, mine[i].has_image, 2048);
    ASSERT_EQ(s.input_ids, ref[i]["input_ids"].get<std::vector<int64_t>>()) << "case " << i;
    ASSERT_EQ(s.labels, ref[i]["labels"].get<std::vector<int64_t>>()) << "case " << i;
    EXPECT_EQ(!s.problem.empty(), ref[i]["mismatch"].get<bool>())
        << "case " << i << ": " << s.problem;
    std::vector<int64_t> text_ids;
    for (auto id : s.input_ids)
      if (id >= 0) text_ids.push_back(id);
    EXPECT_EQ(t.decode(text_ids), ref[i]["decoded"].get<std::string>()) << "case " << i;
    for (auto l : s.labels) supervised += l != kIgnoreIndex;
    mismatches += !s.problem.empty();
  }
  EXPECT_GT(supervised, 1000);  // the comparison is not vacuous
  // The literal "<eos>"/"<end_of_turn>" words inside some messages break rounds: the reference
  // masks those samples, and so must we (counted, not silently trained on).
  EXPECT_GT(mismatches, 0);
  EXPECT_LT(mismatches, 150);
}

// vicuna_v1 ----------------------------------------------------------------------------------

const char* kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.";

// A Gemma-style tokenizer in which "</s>" is one piece (a user-defined symbol), as in the llama
// tokenizers vicuna_v1 was made for, so preprocess_v1's arithmetic can add up. With
// train_gemma_style_tokenizer's models (and Gemma's), "</s>" is several pieces and every
// vicuna_v1 sample is a mismatch, which the dataset tests cover.
std::string vicuna_tokenizer_model() {
  static std::string path = [] {
    std::string d = test::temp_dir("tok_v1");
    std::mt19937 rng(11);
    std::string corpus;
    for (int i = 0; i < 300; ++i) {
      std::string line = std::string(kVicunaSystem) + " USER: " + random_text(rng, 2, 12) +
                         " ASSISTANT: " + random_text(rng, 1, 12) +
                         "</s>USER: " + random_text(rng, 2, 8) +
                         " ASSISTANT: " + random_text(rng, 1, 8) + "</s>";
      std::replace(line.begin(), line.end(), '\n', ' ');
      corpus += line + "\n";
    }
    write_file_atomic(d + "/corpus.txt", corpus);
    // train_gemma_style_tokenizer's options, with "</s>" added to the user-defined symbols.
    auto st = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + d + "/corpus.txt --model_prefix=" + d +
        "/tokenizer --model_type=bpe --vocab_size=500 --character_coverage=1.0 "
        "--byte_fallback=true --pad_id=0 --eos_id=1 --bos_id=2 --unk_id=3 --pad_piece=<pad> "
        "--eos_piece=<eos> --bos_piece=<bos> --unk_piece=<unk> "
        "--user_defined_symbols=<start_of_turn>,<end_of_turn>,</s> "
        "--normalization_rule_name=identity --add_dummy_prefix=false "
        "--remove_extra_whitespaces=false --split_digits=true --num_threads=1 "
        "--input_sentence_size=0 --shuffle_input_sentence=false --minloglevel=2");
    if (!st.ok()) throw Error("training the vicuna test tokenizer failed: " + st.ToString());
    return d + "/tokenizer.model";
  }();
  return path;
}

// MGM's preprocess_multimodal on edge turns (Python: v.replace('<image>', '').strip(), prepend
// '<image>\n', strip): one replace pass, the image alone keeps no newline.
TEST(Conversation, ImageTokenPlacementAsPreprocessMultimodal) {
  auto moved = [](const std::string& v) { return move_image_to_front({{"human", v}})[0].value; };
  EXPECT_EQ(moved("<image>"), "<image>");
  EXPECT_EQ(moved("  <image> \n"), "<image>");
  EXPECT_EQ(moved("What is it? <image>"), "<image>\nWhat is it?");
  EXPECT_EQ(moved("<ima<image>ge> q"), "<image>\n<image> q");
  EXPECT_EQ(moved("no image here"), "no image here");
}

TEST(Conversation, VicunaV1PromptsOnAKnownSample) {
  EXPECT_EQ(parse_template("vicuna_v1"), Template::kVicunaV1);
  EXPECT_EQ(parse_template("v1"), Template::kVicunaV1);
  EXPECT_THROW(parse_template("vicuna"), UsageError);
  const std::string sys = kVicunaSystem;
  std::vector<Turn> turns = {
      {"human", "<image>\nWhat is it?"}, {"gpt", "red"}, {"human", "And?"}, {"gpt", "blue"}};
  EXPECT_EQ(render_prompt(Template::kVicunaV1, turns),
            sys + " USER: <image>\nWhat is it? ASSISTANT: red</s>USER: And? ASSISTANT: blue</s>");
  // eval.md: "... USER: <image>\n{text} ASSISTANT:"
  EXPECT_EQ(render_generation_prompt(Template::kVicunaV1, "<image>\nWhat is it?"),
            sys + " USER: <image>\nWhat is it? ASSISTANT:");
  // get_prompt's `if message:`: an empty message is an open turn.
  EXPECT_EQ(render_prompt(Template::kVicunaV1, {{"human", "q"}, {"gpt", ""}}),
            sys + " USER: q ASSISTANT:");
}

TEST(Conversation, VicunaV1SingleRoundSupervisesTheAnswerAndSeparator) {
  Tokenizer t = Tokenizer::load(vicuna_tokenizer_model());
  std::vector<Turn> turns = {{"human", "<image>\nWhat color is the circle"}, {"gpt", "red"}};
  TokenizedSample s = tokenize_conversation(t, Template::kVicunaV1, turns, true, 2048);
  const std::string conv = render_prompt(Template::kVicunaV1, turns);
  // Only when "</s>" is one piece after the answer does the reference's arithmetic add up.
  std::vector<int64_t> whole = t.encode_with_image(conv);
  std::vector<int64_t> no_sep =
      t.encode_with_image(conv.substr(0, conv.size() - std::string("</s>").size()));
  ASSERT_EQ(whole.size(), no_sep.size() + 1) << "'</s>' is not one token";
  ASSERT_TRUE(s.problem.empty()) << s.problem;
  // instruction_len = len(tok(parts[0])) - 2 leaves the last token of "ASSISTANT: " (the space
  // after the colon, or the piece holding it) supervised, as in LLaVA with llama's tokenizer.
  const std::string instr = conv.substr(0, conv.find(" ASSISTANT: ") + 12);
  const size_t first_sup = t.encode_with_image(instr).size() - 1;
  for (size_t i = 0; i < s.labels.size(); ++i)
    EXPECT_EQ(s.labels[i], i < first_sup ? kIgnoreIndex : s.input_ids[i]) << i;
}

TEST(Conversation, VicunaV1MatchesPythonReferenceOnGeneratedConversations) {
  const std::string model = vicuna_tokenizer_model();
  std::mt19937 rng(99);
  Json cases = Json::array();
  struct Case {
    bool has_image;
    std::vector<Turn> turns;
  };
  std::vector<Case> mine;
  for (int i = 0; i < 240; ++i) {
    Case c;
    c.has_image = i % 3 != 0;
    // Mostly single-round (the rounds after the first lose one token to the reference's
    // non-legacy adjustment, so they mismatch with this tokenizer), some multi-round.
    int rounds = i % 4 == 3 ? 2 + static_cast<int>(rng() % 3) : 1;
    if (i % 19 == 0) c.turns.push_back({"gpt", "leading turn dropped"});
    for (int r = 0; r < rounds; ++r) {
      std::string q = random_text(rng, 1, 12);
      if (r == 0 && c.has_image) q = (rng() % 2) ? "<image>\n" + q : q + " <image>";
      if (rng() % 40 == 0) q += " ASSISTANT: ";  // breaks the round split
      c.turns.push_back({"human", q});
      std::string a = random_text(rng, 1, 20);
      if (rng() % 40 == 0) a += "</s>";
      if (rng() % 60 == 0) a.clear();
      c.turns.push_back({"gpt", a});
    }
    Json jt = Json::array();
    for (const auto& t : c.turns) jt.push_back({t.from, t.value});
    cases.push_back({{"template", "vicuna_v1"}, {"has_image", c.has_image}, {"turns", jt}});
    mine.push_back(std::move(c));
  }
  std::string d = test::temp_dir("conv_v1");
  write_json_file(d + "/in.json", cases);
  std::string out;
  int rc = test::run_python(test::source_dir() + "/tests/parity/conversation_reference.py " +
                                model + " " + d + "/in.json " + d + "/out.json",
                            &out);
  ASSERT_EQ(rc, 0) << out;
  Json ref = read_json_file(d + "/out.json");
  Tokenizer t = Tokenizer::load(model);
  int supervised = 0, mismatches = 0, multi_round_fine = 0;
  for (size_t i = 0; i < mine.size(); ++i) {
    auto turns = move_image_to_front(mine[i].turns);
    TokenizedSample s =
        tokenize_conversation(t, Template::kVicunaV1, turns, mine[i].has_image, 2048);
    ASSERT_EQ(s.input_ids, ref[i]["input_ids"].get<std::vector<int64_t>>()) << "case " << i;
    ASSERT_EQ(s.labels, ref[i]["labels"].get<std::vector<int64_t>>()) << "case " << i;
    EXPECT_EQ(!s.problem.empty(), ref[i]["mismatch"].get<bool>())
        << "case " << i << ": " << s.problem;
    for (auto l : s.labels) supervised += l != kIgnoreIndex;
    mismatches += !s.problem.empty();
    multi_round_fine += s.problem.empty() && turns.size() > 3;
  }
  EXPECT_GT(supervised, 1000);  // the comparison is not vacuous
  EXPECT_GT(mismatches, 0);
  EXPECT_LT(mismatches, 200);
  EXPECT_EQ(multi_round_fine, 0);  // see above: the reference masks these with this tokenizer
}

// A chat (mgm serve): history rendered as get_prompt renders answered turns, then the question
// and the model's turn opener; no history gives the evaluation prompt exactly.
TEST(Conversation, ChatPromptsExtendTheGenerationPrompt) {
  for (Template t : {Template::kGemma, Template::kVicunaV1, Template::kPlain})
    EXPECT_EQ(render_chat_prompt(t, {}, "<image>\nWhat is it?"),
              render_generation_prompt(t, "<image>\nWhat is it?"));
  const std::vector<Turn> history = {{"human", "<image>\nWhat is it?"}, {"gpt", "red"}};
  EXPECT_EQ(render_chat_prompt(Template::kGemma, history, "And?"),
            "<start_of_turn>user\n<image>\nWhat is it?<end_of_turn>\n<start_of_turn>model\nred"
            "<end_of_turn>\n<eos><start_of_turn>user\nAnd?<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(render_chat_prompt(Template::kVicunaV1, history, "And?"),
            std::string(kVicunaSystem) +
                " USER: <image>\nWhat is it? ASSISTANT: red</s>USER: And? ASSISTANT:");
  EXPECT_EQ(render_chat_prompt(Template::kPlain, history, "And?"), "And?");
  EXPECT_THROW(render_chat_prompt(Template::kGemma, {{"human", "q"}}, "And?"), Error);
}

}  // namespace
}  // namespace mgm::data

