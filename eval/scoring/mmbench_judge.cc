#include "eval/scoring/mmbench_judge.h"

#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/log.h"
#include "common/strings.h"
#include "eval/scoring/http_client.h"
#include "eval/scoring/py_text.h"

namespace mgm::eval {

const char* const kJudgeFailMessage = "Failed to obtain answer via API. ";

namespace {

// The prompts of VLMEvalKit's build_prompt / build_prompt_cn (multiple_choice.py, 2024), split
// around the three str.format fields: question, option string, prediction.
constexpr const char* kPromptEn[4] = {
    "You are an AI assistant who will help me to match an answer with several options of a "
    "single-choice question. You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. If the meaning of all "
    "options are significantly different from the answer, output Z. Your should output a single "
    "uppercase character in A, B, C, D (if they are valid options), and Z. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: Z\n"
    "Example 3: \n"
    "Question: ",
    "?\nOptions: ", "\nAnswer: ", "\nYour output: "};

constexpr const char* kPromptCn[4] = {
    "你是一个帮助我匹配答案与单选题中多个选项的 AI 助手。"
    "你会被提供：一个问题，多个选项，一个答案。你的任务是找到与答案意义最相近的选项。"
    "如果所有选项的意义都与答案显著不同，则输出 Z。"
    "你应该输出一个单个的大写字母，例如 A, B, C, D（如果它们是有效选项），或 Z。"
    "例 1:"
    "问题: 图中最主要的物体是什么?\n选项: A. 泰迪熊 B. 兔子 C. 猫 D. 狗\n答案: "
    "一只可爱的泰迪熊\n输出: A\n"
    "例 2: \n"
    "问题: 图中最主要的物体是什么?\n选项: A. 泰迪熊 B. 兔子 C. 猫 D. 狗\n答案: 蜘蛛\n输出: Z\n"
    "例 3: \n"
    "问题: ",
    "?\n选项: ", "\n答案: ", "\n输出: "};

// cn_string: re.search('[\u4e00-\u9fff]', s).
bool has_cjk(const std::string& s) {
  for (char32_t c : py::decode(s))
    if (c >= 0x4E00 && c <= 0x9FFF) return true;
  return false;
}

std::string first_line(const std::string& s, size_t max_chars = 200) {
  std::string l = s.substr(0, s.find('\n'));
  if (l.size() > max_chars) l = l.substr(0, max_chars) + "...";
  return l;
}

}  // namespace

std::string mcq_judge_prompt(const std::string& question, const std::vector<McqChoice>& choices,
                             const std::string& prediction) {
  std::string options = "There are several options: \n";
  for (const auto& c : choices) options += c.letter + ". " + c.text + "\n";
  const auto& t = has_cjk(question) ? kPromptCn : kPromptEn;
  return str_cat(t[0], question, t[1], options, t[2], prediction, t[3]);
}

std::string mcq_judge_request_body(const std::string& model, const std::string& prompt,
                                   int max_tokens) {
  OrderedJson msg = OrderedJson::object();
  msg["role"] = "user";
  msg["content"] = prompt;
  OrderedJson j = OrderedJson::object();
  j["model"] = model;
  j["messages"] = OrderedJson::array({msg});
  j["max_tokens"] = max_tokens;
  j["n"] = 1;
  j["temperature"] = 0;
  // Invalid UTF-8 in a model answer must not abort the request: replaced, as a lenient encoder.
  return j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

std::string parse_chat_completion_content(const std::string& body) {
  const Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("choices") || !j["choices"].is_array() || j["choices"].empty())
    return kJudgeFailMessage;
  const Json& c0 = j["choices"][0];
  if (!c0.is_object() || !c0.contains("message") || !c0["message"].is_object()) {
    return kJudgeFailMessage;
  }
  const Json& m = c0["message"];
  if (!m.contains("content") || !m["content"].is_string()) return kJudgeFailMessage;
  return py::encode(py::strip(py::decode(m["content"].get<std::string>())));
}

struct McqJudge::Url {
  HttpUrl url;
};

McqJudge::McqJudge(McqJudgeOptions opts) : opts_(std::move(opts)), url_(new Url) {
  if (opts_.url.empty()) throw UsageError("the judge needs --judge-url");
  if (opts_.model.empty()) throw UsageError("the judge needs --judge-model");
  if (opts_.retry < 1) throw UsageError(str_cat("--judge-retry must be >= 1, got ", opts_.retry));
  if (!(opts_.wait_s >= 0))
    throw UsageError(str_cat("--judge-wait must be >= 0, got ", opts_.wait_s));
  if (!(opts_.timeout_s > 0))
    throw UsageError(str_cat("--judge-timeout must be > 0, got ", opts_.timeout_s));
  url_->url = parse_http_url(opts_.url);
  if (opts_.cache_path.empty() || !path_exists(opts_.cache_path)) return;

  const std::string& path = opts_.cache_path;
  const std::string text = read_file(path);
  const size_t last_nl = text.rfind('\n');
  const size_t complete = last_nl == std::string::npos ? 0 : last_nl + 1;
  if (complete < text.size()) {
    // A run killed mid-append leaves a partial last line: dropped (the call is made again) and
    // cut off so the next append starts on a fresh line.
    log::warn(path, ": dropping a partial last line (", text.size() - complete, " bytes)");
    MGM_CHECK(::truncate(path.c_str(), static_cast<off_t>(complete)) == 0, path,
              ": cannot truncate the partial last line: ", std::strerror(errno));
  }
  size_t pos = 0, line_no = 0;
  while (pos < complete) {
    const size_t nl = text.find('\n', pos);
    ++line_no;
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    const Json j = parse_json(line, str_cat(path, " line ", line_no));
    MGM_CHECK_FORMAT(j.is_object() && j.contains("model") && j["model"].is_string() &&
                         j.contains("prompt") && j["prompt"].is_string() && j.contains("attempt") &&
                         j["attempt"].is_number_integer() && j.contains("reply") &&
                         j["reply"].is_string() && j.contains("failed_tries") &&
                         j["failed_tries"].is_number_integer(),
                     path, "line ", line_no,
                     ": not a judge cache entry (model, prompt, attempt, reply, failed_tries)");
    cache_[{j["model"].get<std::string>(), j["prompt"].get<std::string>(),
            j["attempt"].get<int>()}] = {j["reply"].get<std::string>(),
                                         j["failed_tries"].get<int64_t>()};
  }
}

McqJudge::~McqJudge() {
  if (cache_out_ != nullptr) std::fclose(cache_out_);
}

void McqJudge::append_cache(const std::string& prompt, int attempt, const Cached& c) {
  if (opts_.cache_path.empty()) return;
  if (cache_out_ == nullptr) {
    const std::string dir = parent_dir(opts_.cache_path);
    if (!dir.empty()) make_dirs(dir);
    cache_out_ = std::fopen(opts_.cache_path.c_str(), "ab");
    MGM_CHECK(cache_out_ != nullptr, opts_.cache_path,
              ": cannot open for appending: ", std::strerror(errno));
  }
  OrderedJson j = OrderedJson::object();
  j["model"] = opts_.model;
  j["attempt"] = attempt;
  j["prompt"] = prompt;
  j["reply"] = c.reply;
  j["failed_tries"] = c.failed_tries;
  const std::string line = j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace) + "\n";
  // Flushed and synced per reply: a killed run keeps every reply it paid for.
  MGM_CHECK(std::fwrite(line.data(), 1, line.size(), cache_out_) == line.size() &&
                std::fflush(cache_out_) == 0 && ::fsync(::fileno(cache_out_)) == 0,
            opts_.cache_path, ": write failed: ", std::strerror(errno));
}

std::string McqJudge::generate(const std::string& prompt, int attempt, data::PyRandom& rd) {
  ++stats_.calls;
  rd.random();  // BaseAPI.generate's start-up jitter; only spreads parallel workers: not slept
  auto hit = cache_.find({opts_.model, prompt, attempt});
  if (hit != cache_.end()) {
    ++stats_.cache_hits;
    answered_ = true;
    for (int64_t i = 0; i < hit->second.failed_tries; ++i) rd.random();
    return hit->second.reply;
  }
  std::vector<std::pair<std::string, std::string>> headers = {{"Content-Type", "application/json"}};
  if (!opts_.api_key.empty()) headers.push_back({"Authorization", "Bearer " + opts_.api_key});
  const std::string body = mcq_judge_request_body(opts_.model, prompt, opts_.max_tokens);
  HttpRequestOptions ho;
  ho.timeout_s = opts_.timeout_s;
  ho.deadline_s = opts_.timeout_s;  // one try, connect to last byte, never outlasts it
  bool have_answer = false;  // `answer` keeps the last value a try returned (None before any)
  std::string answer, last_error;
  int64_t failed = 0;
  for (int i = 0; i < opts_.retry; ++i) {
    ++stats_.http_requests;
    std::string why;
    try {
      const HttpResponse r = http_post(url_->url, body, headers, ho);
      const bool ok = r.status >= 200 && r.status < 300;
      answer = parse_chat_completion_content(r.body);
      have_answer = true;
      if (ok && answer.find(kJudgeFailMessage) == std::string::npos && !answer.empty()) {
        answered_ = true;
        append_cache(prompt, attempt, {answer, failed});
        return answer;
      }
      if (!ok)
        why = describe_http_status(r);
      else if (answer.empty())
        why = "the reply's content is empty";
      else
        why = str_cat("the reply is not a chat completion (no choices[0].message.content): ",
                      first_line(r.body));
    } catch (const HttpError& e) {
      why = e.what();
    }
    ++failed;
    ++stats_.failed_tries;
    last_error = why;
    if (opts_.log) log::warn("judge try ", i + 1, "/", opts_.retry, " failed: ", why);
    const double t = rd.random() * opts_.wait_s * 2;
    if (t > 0) std::this_thread::sleep_for(std::chrono::duration<double>(t));
  }
  ++stats_.failed_calls;
  // A judge that has not answered once is a configuration problem (wrong URL, model or key), not
  // a judge failing on an answer: stop rather than score every question by random guess.
  if (!answered_)
    throw Error(str_cat("the judge at ", opts_.url, " (model '", opts_.model,
                        "') failed on its first call, ", opts_.retry, " tries; last: ", last_error,
                        ". Check --judge-url, --judge-model and --judge-key-env; nothing was "
                        "scored"));
  return !have_answer || answer.empty() ? std::string(kJudgeFailMessage) : answer;
}

McqJudgeResult judge_mcq_answer(McqJudge& judge, const std::string& question,
                                const std::vector<McqChoice>& choices,
                                const std::string& prediction, McqMatcher matcher,
                                data::PyRandom& rd, const std::string& what) {
  McqJudgeResult res;
  const std::string prompt = mcq_judge_prompt(question, choices, prediction);
  for (int attempt = 0; attempt < kJudgeCallsPerAnswer; ++attempt) {
    const std::string ans = judge.generate(prompt, attempt, rd);
    res.replies.push_back(ans);
    if (ans.find("Failed to obtain answer via API") != std::string::npos) {
      if (judge.options().log) log::warn(what, ": the judge failed to answer");
      continue;
    }
    const McqInference inf = can_infer(ans, choices, matcher);
    if (!inf.letter.empty()) {
      res.letter = inf.letter;
      res.resolved_by = "judge";
      return res;
    }
    if (judge.options().log)
      log::warn(what, ": the judge's reply names no single option or Z: ", first_line(ans));
  }
  std::vector<std::string> options;
  for (const auto& c : choices) {
    MGM_CHECK(c.letter != "Z", what,
              ": has an option Z, which leaves the reference's random fallback nothing to draw "
              "from");
    options.push_back(c.letter);
  }
  options.push_back("Z");
  res.letter = options[rd.randbelow(options.size())];
  res.resolved_by = "judge-failed";
  return res;
}

}  // namespace mgm::eval
