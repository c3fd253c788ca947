// The optional LLM choice extractor of VLMEvalKit's MMBench evaluation: for an answer the rules
// cannot map to an option, an OpenAI-compatible chat model is asked which option it means.
// Reproduces the reference (vlmeval/evaluate/multiple_choice.py extract_answer_from_item and
// vlmeval/api OpenAIWrapper/BaseAPI.generate, 2024): the same prompt (English, or Chinese when
// the question has CJK characters), 3 judge calls each parsed with can_infer, `retry` HTTP tries
// per call with the reference's random back-off, and when every call fails a random guess among
// the options and Z drawn from Python's `random` seeded 2680, in the order a sequential
// (nproc=1) reference run draws it. Replies are cached in a JSONL file so a rerun does not call
// the judge again and reproduces the same draws.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "data/py_random.h"
#include "eval/scoring/mmbench.h"

namespace mgm::eval {

// OpenAIWrapper's failure message; a reply containing "Failed to obtain answer via API" is not
// parsed.
extern const char* const kJudgeFailMessage;
// The seed multiple_choice_eval gives Python's `random` before scoring.
constexpr int64_t kJudgeSeed = 2680;
// extract_answer_from_item's number of judge calls per answer.
constexpr int kJudgeCallsPerAnswer = 3;

struct McqJudgeOptions {
  std::string url;      // chat completions endpoint, e.g. http://127.0.0.1:8000/v1/chat/completions
  std::string model;    // the request's "model"
  std::string api_key;  // "Authorization: Bearer <key>" when not empty
  int retry = 5;        // OpenAIWrapper(retry=5): HTTP tries per judge call
  double wait_s = 5;    // OpenAIWrapper(wait=5): a failed try sleeps U(0, 2*wait) seconds
  double timeout_s = 66;   // requests' timeout: OpenAIWrapper(timeout=60) * 1.1
  int max_tokens = 1024;   // OpenAIWrapper(max_tokens=1024)
  std::string cache_path;  // JSONL of replies; empty: no cache
  bool log = true;         // a warning line on stderr per failed try / unusable reply
};

// VLMEvalKit's build_prompt (or build_prompt_cn when `question` has a character in
// U+4E00..U+9FFF) with build_option_str's "There are several options: \n" + "L. text\n" lines.
std::string mcq_judge_prompt(const std::string& question, const std::vector<McqChoice>& choices,
                             const std::string& prediction);

// The request body OpenAIWrapper sends: model, one user message, max_tokens, n=1, temperature=0.
std::string mcq_judge_request_body(const std::string& model, const std::string& prompt,
                                   int max_tokens);

// choices[0].message.content, stripped (Python str.strip), or kJudgeFailMessage when the body is
// not such a JSON object (as OpenAIWrapper.generate_inner's bare except does).
std::string parse_chat_completion_content(const std::string& body);

class McqJudge {
 public:
  // Validates the URL (UsageError for https and malformed URLs) and loads the cache: a torn last
  // line (a killed run) is dropped; any other malformed line is a FormatError naming the line.
  explicit McqJudge(McqJudgeOptions opts);
  ~McqJudge();
  McqJudge(const McqJudge&) = delete;
  McqJudge& operator=(const McqJudge&) = delete;

  // One BaseAPI.generate(prompt): a draw of rd.random() (the reference's start-up jitter, not
  // slept), then up to `retry` tries; a try succeeds on a 2xx status with non-empty content
  // that does not hold the failure message; each failed try draws rd.random() and sleeps that
  // times 2*wait. Returns the reply, else the last content received, else kJudgeFailMessage.
  // `attempt` (0..2, which of the answer's judge calls) keys the cache together with the model
  // and the prompt; a cached reply replays the draws of the original call.
  // Until the judge has answered once in this run (live or from the cache), a call whose tries
  // all fail throws mgm::Error naming the URL and the last error instead: a misconfigured judge
  // must not turn a whole evaluation into random guesses.
  std::string generate(const std::string& prompt, int attempt, data::PyRandom& rd);

  const JudgeStats& stats() const { return stats_; }
  const McqJudgeOptions& options() const { return opts_; }

 private:
  struct Cached {
    std::string reply;
    int64_t failed_tries = 0;
  };
  void append_cache(const std::string& prompt, int attempt, const Cached& c);
  McqJudgeOptions opts_;
  struct Url;
  std::unique_ptr<Url> url_;
  std::map<std::tuple<std::string, std::string, int>, Cached> cache_;  // (model, prompt, attempt)
  std::FILE* cache_out_ = nullptr;
  JudgeStats stats_;
  bool answered_ = false;
};

struct McqJudgeResult {
  std::string letter;                // the extracted option (or Z)
  std::string resolved_by;           // "judge" or "judge-failed" (a random guess, as the reference)
  std::vector<std::string> replies;  // every judge reply, in order
};

// extract_answer_from_item for an answer the rules left unresolved: up to 3 judge calls, each
// reply parsed with can_infer(reply, choices); when none names an option, rd.choice over the
// option letters + Z. `what` names the row in errors (choices that include a "Z" option make
// the reference's fallback fail, and are an Error here).
McqJudgeResult judge_mcq_answer(McqJudge& judge, const std::string& question,
                                const std::vector<McqChoice>& choices,
                                const std::string& prediction, McqMatcher matcher,
                                data::PyRandom& rd, const std::string& what);

}  // namespace mgm::eval
