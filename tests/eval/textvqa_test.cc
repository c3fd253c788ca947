#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "eval/scoring/py_text.h"
#include "eval/scoring/textvqa.h"
#include "tests_util.h"

namespace mgm::eval {
namespace {

// Every normalisation vector of reference/eval.md §1.8 (produced by running MGM's m4c_evaluator).
TEST(TextVqaNormalize, ReferenceVectors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"DAKOTA.", "dakota"},
      {"The Dakota", "dakota"},
      {"Two", "2"},
      {"two dogs", "2 dogs"},
      {"3.5", "3.5"},
      {"1,000", "1000"},
      {"1, 000", "1 000"},
      {"hello, world", "hello world"},
      {"what's up?", "what 's up"},
      {"dont", "don't"},
      {"e-mail", "e mail"},
      {"e - mail", "e mail"},
      {"U.S.A.", "usa"},
      {"(sun)", "sun"},
      {"it's", "it 's"},
      {"none", "0"},
      {"St. Louis", "st louis"},
      {"no.1", "no.1"},
      {"a/b", "b"},
      {"Yes.", "yes"},
      {"  spaced\tout\nline ", "spaced out line"},
      {"Ive", "ive"},
      {"youre", "you're"},
      {"100%", "100%"},
      {"$5", "$5"},
      {"a.b.c", "abc"},
      {"1.", "1"},
      {"3:00", "3:00"},
      {"x+y", "x y"},
      {"(a) - b", "b"},
      {"A", ""},
      {"", ""},
  };
  for (const auto& [in, want] : cases) EXPECT_EQ(textvqa_normalize(in), want) << "input: " << in;
}

TEST(TextVqaNormalize, PeriodStripRemovesAtMost32) {
  // eval.md: 40 periods -> 8 remain (re.UNICODE passed as the count argument).
  EXPECT_EQ(textvqa_normalize(std::string(40, '.')), std::string(8, '.'));
  EXPECT_EQ(textvqa_normalize(std::string(32, '.')), "");
  // Periods followed by a digit are never counted or removed.
  std::string s;
  for (int i = 0; i < 33; ++i) s += "x.";
  s += ".5";
  EXPECT_EQ(textvqa_normalize(s), std::string(33, 'x') + "..5");  // 33rd and 34th '.' survive
}

TEST(TextVqaNormalize, PunctuationRuleIsDecidedOnTheInputText) {
  // "-" has a space next to it, so every "-" is deleted, including the one inside "x-y".
  EXPECT_EQ(textvqa_normalize("x-y - z"), "xy z");
  // No mark is next to a space: each becomes a space.
  EXPECT_EQ(textvqa_normalize("x=y@z!"), "x y z");
  // Not punctuation for this processor.
  EXPECT_EQ(textvqa_normalize("a'b:c*d#e&f|g~h^i"), "a'b:c*d#e&f|g~h^i");
}

TEST(TextVqaNormalize, NumbersArticlesContractions) {
  EXPECT_EQ(textvqa_normalize("Ten"), "10");
  EXPECT_EQ(textvqa_normalize("eleven"), "eleven");  // not in the number map
  EXPECT_EQ(textvqa_normalize("an apple the end"), "apple end");
  EXPECT_EQ(textvqa_normalize("somebody'd"), "somebodyd");  // the reversed table entry
  EXPECT_EQ(textvqa_normalize("Im"), "im");                 // capitalised keys never match
  EXPECT_EQ(textvqa_normalize("YALL"), "y'all");
  EXPECT_EQ(textvqa_normalize("wont  go"), "won't go");
}

TEST(TextVqaNormalize, UnicodeFollowsPythonStrMethods) {
  EXPECT_EQ(textvqa_normalize("CAFÉ"), "café");
  EXPECT_EQ(textvqa_normalize("МОСКВА"), "москва");
  // U+00A0 and U+3000 are whitespace for str.split().
  EXPECT_EQ(textvqa_normalize("a\xc2\xa0"
                              "b\xe3\x80\x80"
                              "c"),
            "b c");
  // An Arabic-Indic digit after '.' keeps the period (re's \d is Unicode).
  EXPECT_EQ(textvqa_normalize("1.\xd9\xa3"), "1.\xd9\xa3");
  EXPECT_EQ(py::lower(std::string("\xc4\xb0")), "i\xcc\x87");  // 'İ'.lower() == 'i̇'
}

// score by number c of matching annotators: 0, 0.3, 0.6, 0.9, 1.0 (eval.md §1.8).
TEST(TextVqaAccuracy, ByMatchingCount) {
  const double want[] = {0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0};
  for (int c = 0; c <= 10; ++c) {
    std::vector<std::string> gt;
    for (int i = 0; i < 10; ++i) gt.push_back(i < c ? "yes" : "other" + std::to_string(i));
    const double got = textvqa_answer_score("yes", gt);
    EXPECT_NEAR(got, want[c], 1e-12) << "c=" << c;
    // The closed form of eval.md.
    const double closed =
        (c * std::min(1.0, (c - 1) / 3.0) + (10 - c) * std::min(1.0, c / 3.0)) / 10.0;
    EXPECT_NEAR(got, c == 0 ? 0.0 : closed, 1e-12) << "c=" << c;
  }
  // Order of annotators does not matter.
  std::vector<std::string> gt = {"a", "yes", "b", "c", "yes", "d", "e", "f", "g", "h"};
  EXPECT_NEAR(textvqa_answer_score("yes", gt), 0.6, 1e-12);
}

TEST(TextVqaPrompt, QuestionExtraction) {
  EXPECT_EQ(textvqa_question_from_prompt(
                "What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL\n"
                "Answer the question using a single word or phrase."),
            "what is the brand of this camera?");
  EXPECT_EQ(textvqa_question_from_prompt("Reference OCR token: A, B\nWhat Is It?\nAnswer briefly."),
            "what is it?");
  EXPECT_EQ(
      textvqa_question_from_prompt("Who Wrote This?\nAnswer the question using a single word."),
      "who wrote this?");
  EXPECT_EQ(textvqa_question_from_prompt("OCR tokens: a b Question: Is It Red? Short answer:"),
            "is it red?");
  // Three lines without the OCR marker, or four lines (an OCR token holding '\n'): rejected.
  EXPECT_THROW(textvqa_question_from_prompt("a\nb\nc"), Error);
  EXPECT_THROW(textvqa_question_from_prompt("q\nReference OCR token: x\ny\nAnswer."), Error);
  EXPECT_THROW(textvqa_question_from_prompt("OCR tokens: x Question: no end"), Error);
}

// --- end to end ----------------------------------------------------------------------------

std::string answers10(const std::vector<std::string>& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", \"" : "\"") + a[i] + "\"";
  return s + "]";
}

std::string annotation_json() {
  const std::string yes4 =
      answers10({"yes", "yes", "yes", "Yes", "no", "no", "no", "no", "no", "no"});
  const std::string dakota2 = answers10(
      {"Dakota", "dakota.", "kodak", "canon", "nikon", "sony", "fuji", "leica", "pentax", "ricoh"});
  const std::string nine = answers10({"x", "x", "x", "x", "x", "x", "x", "x", "x"});
  return "{\"dataset_name\": \"textvqa\", \"data\": [\n"
         "{\"image_id\": \"img1\", \"question\": \"Is this open?\", \"question_id\": 1, "
         "\"answers\": " +
         yes4 +
         "},\n"
         "{\"image_id\": \"img2\", \"question\": \"What Brand Is It?\", \"question_id\": 2, "
         "\"answers\": " +
         dakota2 +
         "},\n"
         "{\"image_id\": \"img3\", \"question\": \"what number?\", \"question_id\": 3, "
         "\"answers\": " +
         yes4 +
         "},\n"
         "{\"image_id\": \"img3\", \"question\": \"What Number?\", \"question_id\": 4, "
         "\"answers\": " +
         dakota2 +
         "},\n"
         "{\"image_id\": \"img9\", \"question\": \"unused\", \"question_id\": 9, \"answers\": " +
         nine +
         "}\n"
         "]}";
}

std::string line(const std::string& qid, const std::string& question, const std::string& text) {
  return "{\"question_id\": \"" + qid + "\", \"prompt\": \"" + question +
         "\\nReference OCR token: a, b\\nAnswer the question using a single word or phrase.\", "
         "\"text\": \"" +
         text + "\", \"answer_id\": \"x\", \"model_id\": \"m\", \"metadata\": {}}\n";
}

TEST(TextVqaScore, EndToEndHandComputed) {
  const std::string d = test::temp_dir("textvqa");
  write_file_atomic(d + "/ann.json", annotation_json());
  // img1: "Yes." matches 4 annotators -> 1.0. img2: "The Dakota" matches 2 -> 0.6.
  // img3: the later duplicate annotation (Dakota answers) wins -> "Nikon" matches 1 -> 0.3.
  // img1 again (no dedup): "no" matches 6 -> 1.0. Mean = 2.9 / 4 = 0.725 -> "72.50%".
  write_file_atomic(d + "/MGM-2B.v1.jsonl", line("img1", "Is this open?", "Yes.") +
                                                line("img2", "What brand is it?", "The Dakota") +
                                                line("img3", "What number?", "Nikon") +
                                                line("img1", "Is this open?", "no"));
  TextVqaResult r = score_textvqa(d + "/ann.json", d + "/MGM-2B.v1.jsonl");
  EXPECT_EQ(r.samples, 4u);
  EXPECT_NEAR(r.accuracy, 0.725, 1e-12);
  EXPECT_EQ(r.report(), "MGM-2B.v1\nSamples: 4\nAccuracy: 72.50%\n\n");
  // img1 is answered twice, differently: each line scored as the reference, and a warning.
  EXPECT_EQ(r.repeated_questions, 1u);
  EXPECT_EQ(r.conflicting_count, 1u);
  EXPECT_EQ(r.warnings(),
            "warning: MGM-2B.v1: 1 questions are answered by more than one line; each line is scored, as the "
            "reference does\nwarning: MGM-2B.v1: 1 of them with different answers: question_id \"img1\", question "
            "\"is this open?\"\n");
  // A repeat with the same answer is counted, not called conflicting.
  write_file_atomic(d + "/same.jsonl", line("img1", "Is this open?", "Yes.") + line("img1", "Is this open?", "Yes."));
  const TextVqaResult same = score_textvqa(d + "/ann.json", d + "/same.jsonl");
  EXPECT_EQ(same.repeated_questions, 1u);
  EXPECT_EQ(same.conflicting_count, 0u);
  EXPECT_EQ(score_textvqa(d + "/ann.json", d + "/MGM-2B.v1.jsonl").samples, 4u);
}

TEST(TextVqaScore, PrintsTwoDecimalsOfThePercentage) {
  const std::string d = test::temp_dir("textvqa_fmt");
  write_file_atomic(d + "/ann.json", annotation_json());
  // 1.0 + 0.6 + 0 = 1.6 / 3 = 53.333...%
  write_file_atomic(d + "/r.jsonl", line("img1", "Is this open?", "yes") +
                                        line("img2", "What brand is it?", "dakota") +
                                        line("img1", "Is this open?", "maybe"));
  EXPECT_EQ(score_textvqa(d + "/ann.json", d + "/r.jsonl").report(),
            "r\nSamples: 3\nAccuracy: 53.33%\n\n");
}

using test::error_of;

TEST(TextVqaScore, BadInputNamesFileAndLine) {
  const std::string d = test::temp_dir("textvqa_bad");
  write_file_atomic(d + "/ann.json", annotation_json());
  const std::string ann = d + "/ann.json";

  write_file_atomic(d + "/broken.jsonl",
                    line("img1", "Is this open?", "yes") + "{\"question_id\": \n");
  std::string e = error_of([&] { score_textvqa(ann, d + "/broken.jsonl"); });
  EXPECT_NE(e.find("broken.jsonl: line 2: invalid JSON"), std::string::npos) << e;

  write_file_atomic(d + "/blank.jsonl", line("img1", "Is this open?", "yes") + "\n");
  e = error_of([&] { score_textvqa(ann, d + "/blank.jsonl"); });
  EXPECT_NE(e.find("blank.jsonl: line 2: empty line"), std::string::npos) << e;

  write_file_atomic(d + "/missing.jsonl", line("img1", "Is this open?", "yes") +
                                              line("nope", "Is this open?", "yes") +
                                              line("img2", "Other question?", "yes"));
  e = error_of([&] { score_textvqa(ann, d + "/missing.jsonl"); });
  EXPECT_NE(e.find("2 of 3 answer lines match no annotation"), std::string::npos) << e;
  EXPECT_NE(e.find("line 2 (question_id \"nope\""), std::string::npos) << e;
  EXPECT_NE(e.find("line 3 (question_id \"img2\", question \"other question?\")"),
            std::string::npos)
      << e;

  write_file_atomic(d + "/nine.jsonl", line("img9", "unused", "x"));
  e = error_of([&] { score_textvqa(ann, d + "/nine.jsonl"); });
  EXPECT_NE(e.find("expected 10 answers, found 9"), std::string::npos) << e;

  write_file_atomic(
      d + "/prompt.jsonl",
      "{\"question_id\": \"img1\", \"prompt\": \"a\\nb\\nc\\nd\", \"text\": \"yes\"}\n");
  e = error_of([&] { score_textvqa(ann, d + "/prompt.jsonl"); });
  EXPECT_NE(e.find("prompt.jsonl: line 1: prompt has 4 lines"), std::string::npos) << e;

  write_file_atomic(d + "/notext.jsonl", "{\"question_id\": \"img1\", \"prompt\": \"q\\nr\"}\n");
  e = error_of([&] { score_textvqa(ann, d + "/notext.jsonl"); });
  EXPECT_NE(e.find("line 1: no \"text\""), std::string::npos) << e;

  write_file_atomic(d + "/empty.jsonl", "");
  EXPECT_THROW(score_textvqa(ann, d + "/empty.jsonl"), FormatError);
  write_file_atomic(d + "/bad_ann.json", "{\"questions\": []}");
  EXPECT_THROW(score_textvqa(d + "/bad_ann.json", d + "/missing.jsonl"), FormatError);
}

}  // namespace
}  // namespace mgm::eval
