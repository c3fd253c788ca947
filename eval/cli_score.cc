#include "eval/cli_score.h"

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "eval/scoring/mmbench.h"
#include "eval/scoring/mmbench_judge.h"
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
  // The report exactly as eval_textvqa.py prints it; repeated answers warned on stderr.
  auto score = [&](const std::string& file) {
    const TextVqaResult r = score_textvqa(ann, file);
    std::fputs(r.report().c_str(), stdout);
    std::fflush(stdout);
    std::fputs(r.warnings().c_str(), stderr);
  };
  if (p.given("result-file")) score(p.str("result-file"));
  if (p.given("result-dir")) {
    const std::string dir = p.str("result-dir");
    for (const auto& name : sorted_entries(dir)) {
      if (ends_with(name, ".lock")) continue;  // the answers files' locks (mgm eval)
      if (!ends_with(name, ".jsonl")) {
        std::printf("Skipping %s\n", name.c_str());
        continue;
      }
      score(path_join(dir, name));
    }
  }
  return 0;
}

int run_mmbench(const std::vector<std::string>& args) {
  cli::ArgParser p(
      "mgm score mmbench",
      "Scores MMBench answers with VLMEvalKit's circular evaluation: each question and "
      "its rotated variants (same index % 1,000,000) must all be answered right. "
      "Answers are matched to options by rules; answers the rules cannot resolve count as "
      "wrong, unless --judge-url/--judge-model name an OpenAI-compatible chat endpoint (plain "
      "http), which is then asked as VLMEvalKit asks its judge (same prompt, 3 calls, a seeded "
      "random guess when all fail; replies cached in <result>_judge_cache.jsonl). Prints "
      "overall / l2-category / category accuracy and writes <result>_acc.csv, "
      "<result>_result.csv (how each answer was resolved: rule, judge or judge-failed) and "
      "<result>_report.md.");
  p.flag("question-file", cli::Kind::kString, "", "MMBench TSV (e.g. mmbench_dev_20230712.tsv)",
         true);
  p.flag("result-file", cli::Kind::kString, "", "answers JSONL (question_id = TSV index, text)",
         true);
  p.flag("matcher", cli::Kind::kString, "2024",
         "answer-extraction rules: 2024 (VLMEvalKit as of MGM's release) or 2025 (option letter "
         "must be among the last 4 tokens; 'answer is X' fallback)");
  p.flag("out-dir", cli::Kind::kString, "",
         "folder for the report files (default: the result file's folder)");
  p.flag("judge-url", cli::Kind::kString, "",
         "OpenAI-compatible chat completions URL for the LLM judge, plain http "
         "(e.g. http://127.0.0.1:8000/v1/chat/completions); off by default");
  p.flag("judge-model", cli::Kind::kString, "", "the judge's model name (the request's \"model\")");
  p.flag("judge-key-env", cli::Kind::kString, "OPENAI_API_KEY",
         "environment variable holding the API key (sent as a Bearer token; none when unset)");
  p.flag("judge-retry", cli::Kind::kInt, "5", "HTTP tries per judge call (the reference's 5)");
  p.flag("judge-wait", cli::Kind::kFloat, "5",
         "after a failed try, sleep a random 0..2x this many seconds (the reference's 5)");
  p.flag("judge-timeout", cli::Kind::kFloat, "66",
         "seconds one judge request may take in all, connect to last byte (the reference's 60 x 1.1, "
         "there per read: a server that drips bytes could hold a call for ever)");
  p.flag("judge-cache", cli::Kind::kString, "",
         "judge reply cache (default: <out-dir>/<result stem>_judge_cache.jsonl)");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  const McqMatcher m = parse_mcq_matcher(p.str("matcher"));
  std::unique_ptr<McqJudge> judge;
  const bool want_judge = p.given("judge-url") || p.given("judge-model");
  if (want_judge) {
    if (!p.given("judge-url") || !p.given("judge-model"))
      throw UsageError("mgm score mmbench: --judge-url and --judge-model go together");
    McqJudgeOptions o;
    o.url = p.str("judge-url");
    o.model = p.str("judge-model");
    const std::string key_env = p.str("judge-key-env");
    const char* key = key_env.empty() ? nullptr : std::getenv(key_env.c_str());
    if (key == nullptr && p.given("judge-key-env"))
      throw UsageError(
          str_cat("--judge-key-env: the environment variable ", key_env, " is not set"));
    if (key != nullptr) o.api_key = key;
    o.retry = static_cast<int>(p.integer("judge-retry"));
    o.wait_s = p.number("judge-wait");
    o.timeout_s = p.number("judge-timeout");
    o.cache_path =
        p.given("judge-cache")
            ? p.str("judge-cache")
            : mmbench_output_path(p.str("result-file"), p.str("out-dir"), "_judge_cache.jsonl");
    judge = std::make_unique<McqJudge>(o);
  }
  MmbenchScore s = score_mmbench(p.str("question-file"), p.str("result-file"), m, judge.get());
  std::fputs(mmbench_terminal_report(s).c_str(), stdout);
  for (const auto& path : write_mmbench_reports(s, p.str("out-dir")))
    std::printf("wrote %s\n", path.c_str());
  return 0;
}

}  // namespace

std::vector<cli::Command> score_commands() {
  return {
      {"score", "textvqa", "TextVQA accuracy of an answers file (as eval_textvqa.py)", run_textvqa},
      {"score", "mmbench",
       "MMBench circular accuracy: rule-based answer matching, optional LLM judge", run_mmbench},
  };
}

}  // namespace mgm::eval
