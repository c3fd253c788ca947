#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "eval/scoring/mmbench.h"
#include "tests_util.h"

namespace mgm::eval {
namespace {

const std::vector<McqChoice> kChoices = {
    {"A", "teddy bear"}, {"B", "rabbit"}, {"C", "cat"}, {"D", "dog"}};

std::string infer(const std::string& answer, McqMatcher m) {
  McqInference r = can_infer(answer, kChoices, m);
  return r.letter.empty() ? "False" : r.letter;
}

// reference/eval.md §2.9: can_infer with choices {A: teddy bear, B: rabbit, C: cat, D: dog},
// both rule versions.
TEST(MmbenchCanInfer, ReferenceVectorsBothMatchers) {
  struct Case {
    const char* answer;
    const char* v2024;
    const char* v2025;
  };
  const Case cases[] = {
      {"A", "A", "A"},
      {"B.", "B", "B"},
      {"(C)", "C", "C"},
      {"D) dog", "D", "D"},
      {"**A**", "A", "A"},
      {"Answer: C", "C", "C"},
      {"The answer is B.", "B", "B"},
      {"A. teddy bear", "A", "A"},
      {"C, the cat", "C", "C"},
      {"I think it is a cat", "C", "C"},
      {"a dog", "D", "D"},
      {"teddy bear", "A", "A"},
      {"It is a rabbit or a cat", "False", "False"},
      {"A and B", "False", "False"},
      {"b", "False", "False"},
      {"None of these", "False", "False"},
      {"Z", "Z", "Z"},
      {"Cannot determine the answer", "Z", "Z"},
      {"Option B is correct because the rabbit is visible in the image on the left side", "B",
       "False"},
      {"The correct answer is **D**. Here is why: the dog is clearly visible", "D", "D"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(infer(c.answer, McqMatcher::k2024), c.v2024) << "2024: " << c.answer;
    EXPECT_EQ(infer(c.answer, McqMatcher::k2025), c.v2025) << "2025: " << c.answer;
  }
}

TEST(MmbenchCanInfer, RulesAreRecorded) {
  EXPECT_EQ(can_infer("B.", kChoices, McqMatcher::k2024).rule, "option-letter");
  EXPECT_EQ(can_infer("a dog", kChoices, McqMatcher::k2024).rule, "option-text");
  EXPECT_EQ(can_infer("Z", kChoices, McqMatcher::k2024).rule, "z-token");
  EXPECT_EQ(can_infer("x Cannot determine the answer", kChoices, McqMatcher::k2024).rule,
            "refusal");
  EXPECT_EQ(can_infer("b", kChoices, McqMatcher::k2024).rule, "unresolved");
  EXPECT_EQ(can_infer("The correct answer is **D**. Here is why: the dog is clearly visible",
                      kChoices, McqMatcher::k2025)
                .rule,
            "answer-is");
}

TEST(MmbenchCanInfer, EdgeRules) {
  // An API failure marker disables the letter rule, not the text rule.
  EXPECT_EQ(infer("Failed to obtain answer via API: A", McqMatcher::k2024), "False");
  EXPECT_EQ(infer("Failed to obtain answer via API; cat", McqMatcher::k2024), "C");
  // Letters are case-sensitive tokens; Z only counts when no option letter is present.
  EXPECT_EQ(infer("A or Z", McqMatcher::k2024), "A");
  // Only the letters of the row's own options count.
  EXPECT_EQ(can_infer("E", kChoices, McqMatcher::k2024).letter, "");
  // 2025: the text rule is skipped when the answer is over twice the option texts' length (44).
  const std::string long_cat = "the animal that you can see in this picture is a cat";
  EXPECT_EQ(infer(long_cat, McqMatcher::k2024), "C");
  EXPECT_EQ(infer(long_cat, McqMatcher::k2025), "False");
  // 2025: a letter among the last 4 tokens is accepted.
  EXPECT_EQ(infer("so overall I would pick B", McqMatcher::k2025), "B");
  EXPECT_EQ(infer("B so overall I would pick", McqMatcher::k2025), "False");
  EXPECT_EQ(infer("B so overall I would pick", McqMatcher::k2024), "B");
}

TEST(MmbenchCircular, GroupsByIndexModuloOneMillion) {
  std::vector<MmbQuestion> q(6);
  const int64_t idx[] = {1000007, 5, 2000005, 7, 1000005, 3000009};
  for (int i = 0; i < 6; ++i) q[i].index = idx[i];
  auto g = mmbench_circular_groups(q);
  ASSERT_EQ(g.size(), 2u);                             // 3000009 has no base row (9) and is ignored
  EXPECT_EQ(g.at(5), (std::vector<size_t>{1, 4, 2}));  // 5, 1000005, 2000005
  EXPECT_EQ(g.at(7), (std::vector<size_t>{3, 0}));
}

TEST(MmbenchReport, PythonFloatRepr) {
  EXPECT_EQ(python_float_repr(0.5), "0.5");
  EXPECT_EQ(python_float_repr(1.0), "1.0");
  EXPECT_EQ(python_float_repr(0.0), "0.0");
  EXPECT_EQ(python_float_repr(2.0 / 3.0), "0.6666666666666666");
  EXPECT_EQ(python_float_repr(1.0 / 1164.0), "0.000859106529209622");
  EXPECT_EQ(python_float_repr(1e-5), "1e-05");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
}

// --- end to end ----------------------------------------------------------------------------

const char* kHeader =
    "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-"
    "category\tcomment\tsplit\n";

std::string row(const std::string& index, const std::string& hint, const std::string& a,
                const std::string& b, const std::string& c, const std::string& d,
                const std::string& answer, const std::string& cat, const std::string& l2) {
  return index + "\tWhat is shown?\t" + hint + "\t" + a + "\t" + b + "\t" + c + "\t" + d + "\t" +
         answer + "\t" + cat + "\tiVBORw0KGgo=\tsrc\t" + l2 + "\t\tdev\n";
}

const std::string kCP = "coarse_perception";
const std::string kFPS = "finegrained_perception (instance-level)";

std::string tsv() {
  return std::string(kHeader) +
         // Question 1: two options; right in both rotations.
         row("1", "\"A hint\twith a tab\"", "cat", "dog", "", "", "A", "image_scene", kCP) +
         row("1000001", "nan", "dog", "cat", "", "", "B", "image_scene", kCP) +
         "\n" +  // blank lines are skipped
         // Question 2: right, wrong, missing -> wrong.
         row("2", "", "red", "blue", "green", "", "C", "ocr", kFPS) +
         row("1000002", "", "blue", "green", "red", "", "B", "ocr", kFPS) +
         row("2000002", "", "green", "red", "blue", "", "A", "ocr", kFPS) +
         // Question 3: the variant is resolved by the text rule ("no" occurs in "know").
         row("3", "", "yes", "no", "", "", "B", "image_scene", kCP) +
         row("1000003", "", "no", "yes", "", "", "A", "image_scene", kCP) +
         // Question 4: option D is the text "None", which pandas reads as NaN: "D" is no option.
         row("4", "", "1", "2", "3", "None", "A", "ocr", kFPS);
}

std::string ans(int64_t id, const std::string& text) {
  return "{\"question_id\": " + std::to_string(id) +
         ", \"round_id\": 0, \"prompt\": \"p\", \"text\": \"" + text +
         "\", \"options\": [], \"option_char\": [], \"answer_id\": \"x\", \"model_id\": \"m\", "
         "\"metadata\": {}}\n";
}

std::string answers() {
  return ans(1, "B") + ans(1000001, "B. cat") + ans(1, "A") +  // repeated id: the last line wins
         ans(2, "C") + ans(1000002, "A") + ans(3, "B") + ans(1000003, "I don't know") +
         ans(4, "D") + ans(99, "A");  // not in the TSV
}

TEST(MmbenchScore, EndToEndHandComputed) {
  const std::string d = test::temp_dir("mmbench");
  write_file_atomic(d + "/dev.tsv", tsv());
  write_file_atomic(d + "/MGM-2B.jsonl", answers());
  MmbenchScore s = score_mmbench(d + "/dev.tsv", d + "/MGM-2B.jsonl", McqMatcher::k2024);
  EXPECT_EQ(s.rows, 8u);
  ASSERT_EQ(s.groups.size(), 4u);
  EXPECT_EQ(s.groups[0].status, "right");
  EXPECT_EQ(s.groups[1].status, "wrong");
  EXPECT_EQ(s.groups[2].status, "right");
  EXPECT_EQ(s.groups[2].rows[1].inferred.rule, "option-text");
  EXPECT_EQ(s.groups[3].status, "unresolved");
  EXPECT_EQ(s.duplicate_answers, 1u);
  EXPECT_EQ(s.missing_predictions, (std::vector<int64_t>{2000002}));
  EXPECT_EQ(s.unknown_predictions, (std::vector<int64_t>{99}));
  EXPECT_EQ(s.conflicting_answers, (std::vector<int64_t>{1}));  // "B", then "A"
  EXPECT_EQ(s.groups[1].rows[2].prediction, "nan");

  // Overall 2/4; CP (questions 1, 3) 2/2; FP-S (2, 4) 0/2; image_scene 2/2; ocr 0/2.
  EXPECT_EQ(mmbench_acc_csv(s), "split,Overall,CP,FP-S,image_scene,ocr\ndev,0.5,1.0,0.0,1.0,0.0\n");
  const std::string term = mmbench_terminal_report(s);
  EXPECT_NE(term.find("Overall                                   50.00%  (2/4)"), std::string::npos)
      << term;
  EXPECT_NE(term.find("1 TSV rows have no answer line"), std::string::npos) << term;
  EXPECT_NE(term.find("warning: 1 question_ids are answered more than once with different texts (the last line is "
                      "scored, as the reference's converter keeps it): 1\n"),
            std::string::npos)
      << term;
  EXPECT_NE(term.find("groups: 2 right, 1 wrong, 1 unresolved"), std::string::npos) << term;

  const std::string out = d + "/reports";
  auto paths = write_mmbench_reports(s, out);
  ASSERT_EQ(paths.size(), 3u);
  EXPECT_EQ(paths[0], out + "/MGM-2B_acc.csv");
  EXPECT_EQ(read_file(paths[0]), mmbench_acc_csv(s));
  const std::string result_csv = read_file(paths[1]);
  EXPECT_NE(
      result_csv.find(
          "1000003,3,dev,image_scene,coarse_perception,A,I don't know,1,A,option-text,right,1"),
      std::string::npos)
      << result_csv;
  EXPECT_NE(
      result_csv.find(
          "2000002,2,dev,ocr,finegrained_perception (instance-level),A,nan,0,,unresolved,wrong,0"),
      std::string::npos)
      << result_csv;
  const std::string md = read_file(paths[2]);
  EXPECT_NE(md.find("| 4 | A | D | unresolved | unresolved |"), std::string::npos) << md;
  EXPECT_NE(md.find("| Overall | overall | 50.00 (2/4) |"), std::string::npos) << md;
  // Default folder: next to the result file.
  paths = write_mmbench_reports(s, "");
  EXPECT_EQ(paths[2], d + "/MGM-2B_report.md");
  EXPECT_TRUE(path_exists(paths[2]));
}

TEST(MmbenchScore, Matcher2025ChangesTheOutcome) {
  const std::string d = test::temp_dir("mmbench25");
  write_file_atomic(d + "/dev.tsv",
                    std::string(kHeader) +
                        row("1", "", "cat", "dog", "", "", "A", "image_scene", kCP) +
                        row("2", "", "cat", "dog", "", "", "B", "image_scene", kCP));
  write_file_atomic(
      d + "/r.jsonl",
      ans(1, "A is my choice for the animal shown in this photo here") +
          ans(2, "The correct answer is **B**. Because it barks and it has four legs."));
  MmbenchScore s24 = score_mmbench(d + "/dev.tsv", d + "/r.jsonl", McqMatcher::k2024);
  MmbenchScore s25 = score_mmbench(d + "/dev.tsv", d + "/r.jsonl", McqMatcher::k2025);
  EXPECT_EQ(s24.groups[0].status, "right");
  EXPECT_EQ(s24.groups[1].status, "right");
  EXPECT_EQ(s25.groups[0].status, "unresolved");  // A is not among the last 4 tokens
  EXPECT_EQ(s25.groups[1].status, "right");       // "answer is **B**"
  EXPECT_EQ(mmbench_acc_csv(s25), "split,Overall,CP,image_scene\ndev,0.5,0.5,0.5\n");
}

using test::error_of;

TEST(MmbenchScore, BadInputNamesFileAndLine) {
  const std::string d = test::temp_dir("mmbench_bad");
  write_file_atomic(d + "/r.jsonl", ans(1, "A"));
  const std::string good = row("1", "", "cat", "dog", "", "", "A", "image_scene", kCP);

  write_file_atomic(d + "/short.tsv", std::string(kHeader) + good + "2\tq\th\tcat\n");
  std::string e =
      error_of([&] { score_mmbench(d + "/short.tsv", d + "/r.jsonl", McqMatcher::k2024); });
  EXPECT_NE(e.find("short.tsv: line 3: expected 14 tab-separated fields, found 4"),
            std::string::npos)
      << e;

  write_file_atomic(d + "/index.tsv",
                    std::string(kHeader) + good + row("x7", "", "a", "b", "", "", "A", "c", kCP));
  e = error_of([&] { score_mmbench(d + "/index.tsv", d + "/r.jsonl", McqMatcher::k2024); });
  EXPECT_NE(e.find("index.tsv: line 3: index 'x7' is not a non-negative integer"),
            std::string::npos)
      << e;

  write_file_atomic(d + "/dup.tsv", std::string(kHeader) + good + good);
  e = error_of([&] { score_mmbench(d + "/dup.tsv", d + "/r.jsonl", McqMatcher::k2024); });
  EXPECT_NE(e.find("dup.tsv: line 3: duplicate index 1 (first on line 2)"), std::string::npos) << e;

  write_file_atomic(d + "/quote.tsv", std::string(kHeader) + good +
                                          row("2", "\"open", "a", "b", "", "", "A", "c", kCP));
  e = error_of([&] { score_mmbench(d + "/quote.tsv", d + "/r.jsonl", McqMatcher::k2024); });
  EXPECT_NE(e.find("quote.tsv: line 3: unterminated quoted field"), std::string::npos) << e;

  write_file_atomic(d + "/noans.tsv",
                    std::string(kHeader) + row("1", "", "a", "b", "", "", "", "c", kCP));
  e = error_of([&] { score_mmbench(d + "/noans.tsv", d + "/r.jsonl", McqMatcher::k2024); });
  EXPECT_NE(e.find("noans.tsv: line 2: index 1 has no answer"), std::string::npos) << e;

  write_file_atomic(d + "/nohead.tsv", "idx\tA\tanswer\n1\ta\tA\n");
  EXPECT_THROW(score_mmbench(d + "/nohead.tsv", d + "/r.jsonl", McqMatcher::k2024), FormatError);

  write_file_atomic(d + "/ok.tsv", std::string(kHeader) + good);
  write_file_atomic(d + "/bad.jsonl", ans(1, "A") + "{\"question_id\": 1, \"text\": }\n");
  e = error_of([&] { score_mmbench(d + "/ok.tsv", d + "/bad.jsonl", McqMatcher::k2024); });
  EXPECT_NE(e.find("bad.jsonl: line 2: invalid JSON"), std::string::npos) << e;

  write_file_atomic(d + "/strid.jsonl", "{\"question_id\": \"1\", \"text\": \"A\"}\n");
  e = error_of([&] { score_mmbench(d + "/ok.tsv", d + "/strid.jsonl", McqMatcher::k2024); });
  EXPECT_NE(e.find("strid.jsonl: line 1: question_id \"1\" is not an integer"), std::string::npos)
      << e;

  write_file_atomic(d + "/notext.jsonl", "{\"question_id\": 1}\n");
  e = error_of([&] { score_mmbench(d + "/ok.tsv", d + "/notext.jsonl", McqMatcher::k2024); });
  EXPECT_NE(e.find("notext.jsonl: line 1: needs \"question_id\" and \"text\""), std::string::npos)
      << e;

  EXPECT_THROW(parse_mcq_matcher("2023"), UsageError);
}

}  // namespace
}  // namespace mgm::eval
