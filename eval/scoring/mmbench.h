// MMBench scoring as VLMEvalKit's circular evaluation does it: rule-based answer extraction
// (can_infer), optionally an LLM judge for the answers the rules cannot resolve
// (eval/scoring/mmbench_judge.h), groups of rows sharing index % 1,000,000, accuracy overall, per
// l2-category and per category, and per-answer resolution logs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mgm::eval {

// Which VLMEvalKit matching rules to apply.
//   k2024: the rules in use when MGM came out (VLMEvalKit e079c18c, 2024-05).
//   k2025: adds PR #1175 (the option letter must be among the last 4 tokens; the text rule is
//          skipped for answers longer than twice the option texts) and, as a last resort, the
//          "(correct) answer is X" rule of later versions.
enum class McqMatcher { k2024, k2025 };
McqMatcher parse_mcq_matcher(const std::string& s);  // "2024" | "2025"; UsageError otherwise
const char* mcq_matcher_name(McqMatcher m);

struct McqChoice {
  std::string letter;  // "A".."Z"
  std::string text;
};

// How an answer was resolved; letter is "" when the rules could not decide (Python's False).
struct McqInference {
  std::string letter;
  std::string
      rule;  // "refusal", "option-letter", "z-token", "option-text", "answer-is", "unresolved"
};

McqInference can_infer(const std::string& answer, const std::vector<McqChoice>& choices,
                       McqMatcher matcher);

constexpr int64_t kCircularModulus = 1000000;

// One row of the question TSV (a base question or one of its circular variants).
struct MmbQuestion {
  int64_t index = 0;
  size_t line = 0;                 // line in the TSV where the row starts
  std::vector<McqChoice> choices;  // options present (not NA), in letter order
  std::string answer, category, l2_category, split;
  std::string question;  // the question column ("nan" when NA; empty when there is none)
  bool has_question = false;
};

// pandas.read_table semantics that matter here: header row, tabs, '"'-quoted fields (which may
// hold tabs and newlines), blank lines skipped, and pandas' default NA strings ("", "nan",
// "None", "N/A", "NA", "null", ...) meaning a missing option. A row with the wrong number of
// fields, a bad index, a duplicate index or no answer is a FormatError naming file and line.
std::vector<MmbQuestion> read_mmbench_questions(const std::string& tsv_path);

// The TSV records of a benchmark file as pandas.read_csv(sep='\t') reads them: tabs, '"'-quoted
// fields with "" escapes and embedded newlines, blank lines skipped; `line` is where a record starts.
struct TsvRecord {
  size_t line = 0;
  std::vector<std::string> fields;
};
std::vector<TsvRecord> parse_tsv(const std::string& path);

// Base index -> positions of its rows in `questions`, in ascending index order. Only groups with
// a base row (index < 1e6) are kept, as in the reference.
std::map<int64_t, std::vector<size_t>> mmbench_circular_groups(
    const std::vector<MmbQuestion>& questions);

struct MmbRowResult {
  int64_t index = 0;
  std::string answer;  // ground truth letter
  bool has_prediction = false;
  std::string prediction;  // "nan" when missing (what the reference pipeline scores)
  McqInference inferred;   // what the rules made of the prediction
  std::string letter;      // the extracted option: the rules', else the judge's ("" if neither)
  // "rule", "judge", "judge-failed" (every judge call failed: the reference's random guess) or
  // "unresolved" (no judge, or the question was decided before this row was judged).
  std::string resolved_by;
  std::vector<std::string> judge_replies;
};

struct MmbGroupResult {
  int64_t index = 0;  // base index
  std::string category, l2_category, split;
  std::string status;  // "right", "wrong" or "unresolved" (counted as wrong: no judge)
  bool hit = false;
  std::vector<MmbRowResult> rows;
};

struct MmbAccuracy {
  std::string column;  // "Overall", an l2 abbreviation or a category
  std::string kind;    // "overall", "l2-category", "category"
  std::map<std::string, std::pair<size_t, size_t>> by_split;  // split -> (hits, questions)
};

struct JudgeStats {
  size_t calls = 0;          // judge calls (McqJudge::generate)
  size_t cache_hits = 0;     // calls answered from the reply cache
  size_t http_requests = 0;  // HTTP tries sent
  size_t failed_tries = 0;   // tries without a usable reply
  size_t failed_calls = 0;   // calls where every try failed
};

struct MmbenchScore {
  McqMatcher matcher = McqMatcher::k2024;
  bool judged = false;  // an LLM judge was configured
  std::string judge_model, judge_url, judge_cache;
  JudgeStats judge_stats;
  std::string question_file, result_file;
  std::vector<MmbGroupResult> groups;
  std::vector<std::string> splits;    // sorted
  std::vector<MmbAccuracy> accuracy;  // Overall, l2 (sorted by full name), categories (sorted)
  size_t rows = 0, answer_lines = 0, duplicate_answers = 0;
  std::vector<int64_t> missing_predictions;  // TSV rows with no answer line
  std::vector<int64_t> unknown_predictions;  // answer lines whose question_id is not in the TSV
  std::vector<int64_t> conflicting_answers;  // ids answered more than once with different texts
};

class McqJudge;

// Reads the TSV and the answers JSONL ({"question_id": index, "text": ...}; a later line for the
// same id replaces an earlier one, as convert_mmbench_for_submission.py does) and scores them.
// With a judge, the questions the rules leave unresolved are settled as the reference does
// (ascending index order, rows in order, stopping at the first row extracted wrong).
MmbenchScore score_mmbench(const std::string& question_file, const std::string& result_file,
                           McqMatcher matcher, McqJudge* judge = nullptr);

// VLMEvalKit's l2-category abbreviations (CP, FP-S, FP-C, AR, RR, LR); unknown names unchanged.
std::string mmbench_l2_abbreviation(const std::string& l2);

std::string mmbench_terminal_report(const MmbenchScore& s);
// `<stem>_acc.csv` in VLMEvalKit's report_acc layout (split, Overall, l2..., categories...; 0..1).
std::string mmbench_acc_csv(const MmbenchScore& s);
// Per-row listing: how each answer was resolved and each group's outcome.
std::string mmbench_result_csv(const MmbenchScore& s);
std::string mmbench_markdown(const MmbenchScore& s);
// Writes <stem>_acc.csv, <stem>_result.csv and <stem>_report.md into out_dir (default: the
// result file's folder); returns the paths written.
std::vector<std::string> write_mmbench_reports(const MmbenchScore& s, const std::string& out_dir);
// <out_dir or the result file's folder>/<result stem><suffix>: where the reports (and the judge's
// reply cache, "_judge_cache.jsonl") go.
std::string mmbench_output_path(const std::string& result_file, const std::string& out_dir,
                                const std::string& suffix);

// Python's repr() of a float (shortest round-trip digits), as pandas writes floats to CSV.
std::string python_float_repr(double v);

}  // namespace mgm::eval
