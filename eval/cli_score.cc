#include "eval/cli_score.h"

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "eval/scoring/mmbench.h"
#include "eval/scoring/textvqa.h"

namespace mgm::eval {
namespace {

std::vector<std::string> sorted_entries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw Error(str_cat(dir, ": cannot open folder"));
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

int run_textvqa(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm score textvqa",
                   "Scores TextVQA answers as MGM/LLaVA's eval_textvqa.py does (EvalAI answer "
                   "normalisation, 10-annotator soft accuracy) and prints the same lines: the "
                   "result file's name, 'Samples: N' and 'Accuracy: X%'.");
  p.flag("annotation-file", cli::Kind::kString, "", "TextVQA_0.5.1_val.json", true);
  p.flag("result-file", cli::Kind::kString, "", "answers JSONL (question_id, prompt, text)");
  p.flag("result-dir", cli::Kind::kString, "",
         "score every *.jsonl in this folder (sorted), after --result-file if both are given");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  if (!p.given("result-file") && !p.given("result-dir"))
    throw UsageError("mgm score textvqa: give --result-file or --result-dir");
  const std::string ann = p.str("annotation-file");
  if (p.given("result-file"))
    std::fputs(score_textvqa(ann, p.str("result-file")).report().c_str(), stdout);
  if (p.given("result-dir")) {
    const std::string dir = p.str("result-dir");
    for (const auto& name : sorted_entries(dir)) {
      if (!ends_with(name, ".jsonl")) {
        std::printf("Skipping %s\n", name.c_str());
        continue;
      }
      std::fputs(score_textvqa(ann, path_join(dir, name)).report().c_str(), stdout);
    }
  }
  return 0;
}

int run_mmbench(const std::vector<std::string>& args) {
  cli::ArgParser p(
      "mgm score mmbench",
      "Scores MMBench answers with VLMEvalKit's circular evaluation: each question and "
      "its rotated variants (same index % 1,000,000) must all be answered right. "
      "Answers are matched to options by rules only (no LLM judge); answers the rules "
      "cannot resolve count as wrong. Prints overall / l2-category / category accuracy "
      "and writes <result>_acc.csv, <result>_result.csv (how each answer was "
      "resolved) and <result>_report.md.");
  p.flag("question-file", cli::Kind::kString, "", "MMBench TSV (e.g. mmbench_dev_20230712.tsv)",
         true);
  p.flag("result-file", cli::Kind::kString, "", "answers JSONL (question_id = TSV index, text)",
         true);
  p.flag("matcher", cli::Kind::kString, "2024",
         "answer-extraction rules: 2024 (VLMEvalKit as of MGM's release) or 2025 (option letter "
         "must be among the last 4 tokens; 'answer is X' fallback)");
  p.flag("out-dir", cli::Kind::kString, "",
         "folder for the report files (default: the result file's folder)");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  const McqMatcher m = parse_mcq_matcher(p.str("matcher"));
  MmbenchScore s = score_mmbench(p.str("question-file"), p.str("result-file"), m);
  std::fputs(mmbench_terminal_report(s).c_str(), stdout);
  for (const auto& path : write_mmbench_reports(s, p.str("out-dir")))
    std::printf("wrote %s\n", path.c_str());
  return 0;
}

}  // namespace

std::vector<cli::Command> score_commands() {
  return {
      {"score", "textvqa", "TextVQA accuracy of an answers file (as eval_textvqa.py)", run_textvqa},
      {"score", "mmbench", "MMBench circular accuracy with rule-based answer matching",
       run_mmbench},
  };
}

}  // namespace mgm::eval
