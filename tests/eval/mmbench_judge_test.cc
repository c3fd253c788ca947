// The MMBench LLM judge and its HTTP client, against a scripted OpenAI-compatible mock server
// (tests/eval/judge_mock_server.py, started per test on an ephemeral port) that records every
// request: the exact prompt, the request body, reply parsing, retries, the seeded random fallback
// (checked against CPython's random), the reply cache, and that rule-resolved answers never
// reach the judge.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "eval/scoring/http_client.h"
#include "eval/scoring/mmbench.h"
#include "eval/scoring/mmbench_judge.h"
#include "tests_util.h"

namespace mgm::eval {
namespace {

// The judge prompt of VLMEvalKit's build_prompt, written out by hand from the reference text
// (reference/eval.md §2.7) for question "What is shown", options A. cat / B. dog and the answer
// "It is the furry one".
const char* kExpectedPrompt =
    "You are an AI assistant who will help me to match an answer with several options of a "
    "single-choice question. You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. If the meaning of all "
    "options are significantly different from the answer, output Z. Your should output a single "
    "uppercase character in A, B, C, D (if they are valid options), and Z. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\n"
    "Options: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\n"
    "Your output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\n"
    "Options: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\n"
    "Your output: Z\n"
    "Example 3: \n"
    "Question: What is shown?\n"
    "Options: There are several options: \n"
    "A. cat\n"
    "B. dog\n"
    "\n"
    "Answer: It is the furry one\n"
    "Your output: ";

// The mock server as a child process; killed when the object goes away.
class MockServer {
 public:
  MockServer(const std::string& dir, const Json& script) : dir_(dir) {
    make_dirs(dir);
    write_file_atomic(dir + "/script.json", script.dump());
    const std::string py = MGM_PYTHON;
    const std::string script_path = test::source_dir() + "/tests/eval/judge_mock_server.py";
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execl(py.c_str(), py.c_str(), script_path.c_str(), dir.c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 600 && !path_exists(dir + "/port"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    port_ = std::stoi(read_file(dir + "/port"));
  }
  ~MockServer() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  std::string url(const std::string& path = "/v1/chat/completions") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  std::vector<Json> requests() const {
    std::vector<Json> out;
    if (!path_exists(dir_ + "/requests.jsonl")) return out;
    for (const auto& line : split(read_file(dir_ + "/requests.jsonl"), '\n'))
      if (!line.empty()) out.push_back(Json::parse(line));
    return out;
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// A local port with nothing listening on it.
int dead_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

using test::error_of;

// CPython: random.seed(2680), `draws` calls of random.random(), then random.choice(letters).
std::string python_fallback_letter(int draws, const std::string& letters) {
  std::string out;
  const std::string code =
      str_cat("import random; random.seed(2680); [random.random() for _ in range(", draws,
              ")]; print(random.choice(list('", letters, "')))");
  EXPECT_EQ(test::run_python("-c \"" + code + "\"", &out), 0) << out;
  return trim(out);
}

// --- prompt, request, reply parsing --------------------------------------------------------

TEST(MmbenchJudge, PromptIsTheReferenceText) {
  EXPECT_EQ(mcq_judge_prompt("What is shown", {{"A", "cat"}, {"B", "dog"}}, "It is the furry one"),
            kExpectedPrompt);
  // Questions with CJK characters get the Chinese prompt, with the same fields.
  const std::string cn = mcq_judge_prompt("图中是什么", {{"A", "猫"}}, "猫");
  EXPECT_EQ(cn.rfind("你是一个帮助我匹配答案与单选题中多个选项的 AI 助手。", 0), 0u) << cn;
  EXPECT_TRUE(ends_with(
      cn, "问题: 图中是什么?\n选项: There are several options: \nA. 猫\n\n答案: 猫\n输出: "))
      << cn;
}

TEST(MmbenchJudge, RequestBodyAndReplyParsing) {
  const Json body = Json::parse(mcq_judge_request_body("judge-1", "hi \"there\"", 1024));
  EXPECT_EQ(body, Json::parse(R"({"model": "judge-1", "messages": [{"role": "user",
      "content": "hi \"there\""}], "max_tokens": 1024, "n": 1, "temperature": 0})"));
  // Invalid UTF-8 in a model answer does not break the request.
  EXPECT_NO_THROW(Json::parse(mcq_judge_request_body("m", std::string("a\xff b"), 8)));

  EXPECT_EQ(parse_chat_completion_content(
                R"({"choices": [{"message": {"role": "assistant", "content": "  B \n"}}]})"),
            "B");
  for (const char* bad :
       {"not json {", "", "[]", "{}", R"({"choices": []})", R"({"choices": [{"text": "B"}]})",
        R"({"choices": [{"message": {"content": null}}]})",
        R"({"choices": [{"message": {"content": 3}}]})", R"({"error": {"message": "x"}})"})
    EXPECT_EQ(parse_chat_completion_content(bad), kJudgeFailMessage) << bad;
}

// --- the HTTP client ---------------------------------------------------------------------

TEST(HttpClient, UrlParsing) {
  HttpUrl u = parse_http_url("http://127.0.0.1:8000/v1/chat/completions");
  EXPECT_EQ(u.host, "127.0.0.1");
  EXPECT_EQ(u.port, 8000);
  EXPECT_EQ(u.target, "/v1/chat/completions");
  u = parse_http_url("http://judge.local");
  EXPECT_EQ(u.port, 80);
  EXPECT_EQ(u.target, "/");
  u = parse_http_url("http://[::1]:9/x?y=1#frag");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, 9);
  EXPECT_EQ(u.target, "/x?y=1");
  EXPECT_NE(error_of([] {
              parse_http_url("https://api.openai.com/v1/chat/completions");
            }).find("https is not supported; run the judge behind a plain-http endpoint"),
            std::string::npos);
  EXPECT_THROW(parse_http_url("https://x"), UsageError);
  EXPECT_THROW(parse_http_url("ftp://x/y"), UsageError);
  EXPECT_THROW(parse_http_url("localhost:8000/v1"), UsageError);
  EXPECT_NE(error_of([] { parse_http_url("http://h:99999/"); }).find("bad port '99999'"),
            std::string::npos);
  EXPECT_THROW(parse_http_url("http://:80/"), UsageError);
}

TEST(HttpClient, ChunkedDecoding) {
  EXPECT_EQ(decode_chunked("4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n", "t"), "Wikipedia");
  EXPECT_EQ(decode_chunked("3\nabc\n0\nTrailer: 1\n\n", "t"), "abc");  // bare LF tolerated
  EXPECT_EQ(decode_chunked("A\r\n0123456789\r\n0\r\n\r\n", "t"), "0123456789");
  EXPECT_NE(error_of([] {
              decode_chunked("zz\r\nabc\r\n0\r\n\r\n", "u");
            }).find("u: malformed chunked body (bad chunk size 'zz')"),
            std::string::npos);
  EXPECT_NE(error_of([] { decode_chunked("5\r\nabc", "u"); }).find("ends before its last chunk"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              decode_chunked("2\r\nabcd\r\n0\r\n\r\n", "u");
            }).find("chunk longer than its size"),
            std::string::npos);
}

TEST(HttpClient, AgainstMockServer) {
  const std::string d = test::temp_dir("http_mock");
  Json script = {
      {"rules",
       {{{"match", "plain"}, {"replies", {{{"content", "plain reply"}}}}},
        {{"match", "chunked"}, {"replies", {{{"content", "a chunked reply"}, {"chunked", true}}}}},
        {{"match", "closed"},
         {"replies", {{{"content", "to the end"}, {"close_delimited", true}}}}},
        {{"match", "error"},
         {"replies", {{{"status", 503}, {"body", "\n  upstream exploded  \nsecond line"}}}}},
        {{"match", "drop"}, {"replies", {{{"drop", true}}}}},
        {{"match", "slow"}, {"replies", {{{"delay", 3}, {"content", "late"}}}}},
        {{"match", "drip"}, {"replies", {{{"drip", 0.2}, {"content", "dripped"}}}}},
        {{"match", "headers"}, {"replies", {{{"endless_headers", 0}}}}}}}};
  MockServer server(d, script);
  const HttpUrl url = parse_http_url(server.url());
  HttpRequestOptions o;
  o.timeout_s = 10;
  auto post = [&](const std::string& prompt) {
    return http_post(url, mcq_judge_request_body("m", prompt, 16),
                     {{"Content-Type", "application/json"}}, o);
  };
  HttpResponse r = post("plain");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(parse_chat_completion_content(r.body), "plain reply");
  r = post("chunked");
  EXPECT_EQ(r.header("transfer-encoding"), "chunked");
  EXPECT_EQ(parse_chat_completion_content(r.body), "a chunked reply");
  r = post("closed");
  EXPECT_EQ(parse_chat_completion_content(r.body), "to the end");
  r = post("error");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(describe_http_status(r), "HTTP 503 Service Unavailable: upstream exploded");
  EXPECT_NE(error_of([&] {
              post("drop");
            }).find(server.url() + ": the server closed the connection without a reply"),
            std::string::npos);
  o.timeout_s = 0.5;
  EXPECT_NE(error_of([&] { post("slow"); }).find("no complete response within the request deadline of 0.5 s "
                                                 "(waiting for the response)"),
            std::string::npos);
  // The request as the server saw it.
  const auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 6u);
  EXPECT_EQ(reqs[0]["path"], "/v1/chat/completions");
  EXPECT_EQ(reqs[0]["headers"]["content-type"], "application/json");
  EXPECT_EQ(reqs[0]["headers"]["host"], "127.0.0.1:" + std::to_string(url.port));
  EXPECT_EQ(reqs[0]["body"]["messages"][0]["content"], "plain");

  // A server that drips one byte every 0.2 s never lets a single wait time out, but the
  // request's deadline ends the call (the reply would take a minute).
  o.timeout_s = 5;
  o.deadline_s = 1.5;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_NE(error_of([&] { post("drip"); }).find("no complete response within the request deadline of 1.5 s"),
            std::string::npos);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(took, 1.4);
  EXPECT_LT(took, 30);  // a liveness bound: without the deadline this takes about 60 s
  // Header lines without end are cut at the header limit.
  o.deadline_s = 0;
  o.timeout_s = 30;
  const std::string endless = error_of([&] { post("headers"); });
  EXPECT_NE(endless.find(": response headers larger than 64 KiB"), std::string::npos) << endless;

  const std::string dead = "http://127.0.0.1:" + std::to_string(dead_port()) + "/v1";
  EXPECT_NE(error_of([&] {
              http_post(parse_http_url(dead), "{}", {}, o);
            }).find(dead + ": cannot connect to 127.0.0.1:"),
            std::string::npos);
  EXPECT_THROW(http_post(parse_http_url("http://no-such-host.invalid/"), "{}", {}, o), HttpError);
}

// --- scoring with the judge ----------------------------------------------------------------

const char* kHeader =
    "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\t"
    "split\n";

std::string row(int64_t index, const std::string& question, const std::string& a,
                const std::string& b, const std::string& c, const std::string& answer) {
  return str_cat(index, "\t", question, "\t\t", a, "\t", b, "\t", c, "\t\t", answer,
                 "\timage_scene\tiVBORw0KGgo=\tsrc\tcoarse_perception\t\tdev\n");
}

std::string ans(int64_t id, const std::string& text) {
  Json j = {{"question_id", id}, {"round_id", 0}, {"prompt", "p"}, {"text", text}};
  return j.dump() + "\n";
}

struct Fixture {
  std::string dir, tsv, answers;
};

Fixture write_fixture(const std::string& d) {
  Fixture f{d, d + "/dev.tsv", d + "/run1.jsonl"};
  write_file_atomic(f.tsv,
                    std::string(kHeader) +
                        // Q1: every row resolved right by the rules.
                        row(1, "Which animal?", "cat", "dog", "", "A") +
                        row(1000001, "Which animal?", "dog", "cat", "", "B") +
                        // Q2: row 0 resolved wrong by the rules: decided without the judge.
                        row(2, "Which colour?", "red", "blue", "", "A") +
                        row(1000002, "Which colour?", "blue", "red", "", "B") +
                        // Q3: row 1 unresolved; the judge answers A (right).
                        row(3, "What is shown", "dog", "cat", "", "B") +
                        row(1000003, "What is shown", "cat", "dog", "", "A") +
                        // Q4: three unresolved rows. Row 0: the judge's first reply names no
                        // option, its second call fails once then says A (right); row 1: it says B
                        // (wrong), so row 2 is never judged.
                        row(4, "Which shape?", "circle", "square", "star", "A") +
                        row(1000004, "Which shape?", "square", "star", "circle", "C") +
                        row(2000004, "Which shape?", "star", "circle", "square", "B") +
                        // Q5: the judge always fails: the reference's seeded random guess decides.
                        row(5, "Which number?", "one", "two", "three", "B"));
  write_file_atomic(f.answers, ans(1, "A") + ans(1000001, "B. cat") + ans(2, "B") +
                                   ans(1000002, "Q2 mumble never judged") + ans(3, "B") +
                                   ans(1000003, "It is the furry one") + ans(4, "Q4 first mumble") +
                                   ans(1000004, "Q4 second mumble") +
                                   ans(2000004, "Q4 third mumble") + ans(5, "Q5 mumble"));
  return f;
}

Json judge_script() {
  return {{"rules",
           {{{"match", "Answer: It is the furry one\n"}, {"replies", {{{"content", " A\n"}}}}},
            {{"match", "Answer: Q4 first mumble\n"},
             {"replies",
              {{{"content", "A or B"}},
               {{"status", 500}, {"body", "{\"error\": \"overloaded\"}"}},
               {{"content", "The answer is A."}, {"chunked", true}}}}},
            {{"match", "Answer: Q4 second mumble\n"},
             {"replies", {{{"content", "B"}, {"close_delimited", true}}}}},
            {{"match", "Answer: Q5 mumble\n"},
             {"replies", {{{"status", 502}, {"body", "Bad gateway\n"}}}}}}}};
}

McqJudgeOptions judge_options(const std::string& url, const std::string& cache) {
  McqJudgeOptions o;
  o.url = url;
  o.model = "judge-model-x";
  o.api_key = "sk-test";
  o.retry = 2;
  o.wait_s = 0;
  o.timeout_s = 10;
  o.cache_path = cache;
  o.log = false;
  return o;
}

const MmbRowResult& row_of(const MmbenchScore& s, int64_t index) {
  for (const auto& g : s.groups)
    for (const auto& r : g.rows)
      if (r.index == index) return r;
  throw Error(str_cat("no row ", index));
}

TEST(MmbenchJudge, ScoresLikeTheReferenceAndCachesReplies) {
  const std::string d = test::temp_dir("mmb_judge");
  const Fixture f = write_fixture(d);
  const std::string cache = d + "/run1_judge_cache.jsonl";
  // Draws of random.random() before Q5's fallback: Q3 one call (1); Q4 row 0 a call that
  // succeeds at once (1) and one with a failed try (2), row 1 one call (1); Q5 three calls of
  // 1 + 2 failed tries (9).
  const std::string q5_guess = python_fallback_letter(1 + 1 + 2 + 1 + 9, "ABCZ");
  ASSERT_EQ(q5_guess.size(), 1u);
  MmbenchScore s;
  {
    MockServer server(d + "/srv", judge_script());
    McqJudge judge(judge_options(server.url(), cache));
    s = score_mmbench(f.tsv, f.answers, McqMatcher::k2024, &judge);
    const auto reqs = server.requests();
    // Q3: 1, Q4: 1 + 2 + 1, Q5: 3 calls x 2 tries.
    ASSERT_EQ(reqs.size(), 11u);
    for (const auto& r : reqs) {
      EXPECT_EQ(r["path"], "/v1/chat/completions");
      EXPECT_EQ(r["headers"]["authorization"], "Bearer sk-test");
      EXPECT_EQ(r["body"]["model"], "judge-model-x");
      EXPECT_EQ(r["body"]["max_tokens"], 1024);
      EXPECT_EQ(r["body"]["n"], 1);
      EXPECT_EQ(r["body"]["temperature"], 0);
      ASSERT_EQ(r["body"]["messages"].size(), 1u);
      EXPECT_EQ(r["body"]["messages"][0]["role"], "user");
      const std::string prompt = r["body"]["messages"][0]["content"];
      // Answers the rules resolved, or rows after a decided question, never reach the judge.
      for (const char* never : {"Answer: A\n", "Answer: B. cat\n", "Answer: B\n",
                                "Q2 mumble never judged", "Q4 third mumble"})
        EXPECT_EQ(prompt.find(never), std::string::npos) << never;
    }
    EXPECT_EQ(reqs[0]["body"]["messages"][0]["content"], kExpectedPrompt);
    EXPECT_NE(std::string(reqs[3]["body"]["messages"][0]["content"])
                  .find("Question: Which shape??\nOptions: There are several options: \nA. circle\n"
                        "B. square\nC. star\n\nAnswer: Q4 first mumble\n"),
              std::string::npos);
    EXPECT_NE(std::string(reqs[4]["body"]["messages"][0]["content"])
                  .find("Options: There are several options: \nA. square\nB. star\nC. circle\n\n"
                        "Answer: Q4 second mumble\n"),
              std::string::npos);
  }
  ASSERT_EQ(s.groups.size(), 5u);
  EXPECT_EQ(s.groups[0].status, "right");
  EXPECT_EQ(s.groups[1].status, "wrong");
  EXPECT_EQ(s.groups[2].status, "right");
  EXPECT_EQ(s.groups[3].status, "wrong");
  EXPECT_EQ(s.groups[4].status, q5_guess == "B" ? "right" : "wrong");
  EXPECT_EQ(row_of(s, 1000001).resolved_by, "rule");
  EXPECT_EQ(row_of(s, 1000002).resolved_by, "unresolved");  // decided by row 2's wrong letter
  const MmbRowResult& r3 = row_of(s, 1000003);
  EXPECT_EQ(r3.resolved_by, "judge");
  EXPECT_EQ(r3.letter, "A");
  EXPECT_EQ(r3.judge_replies, (std::vector<std::string>{"A"}));  // reply stripped
  EXPECT_EQ(row_of(s, 4).judge_replies, (std::vector<std::string>{"A or B", "The answer is A."}));
  EXPECT_EQ(row_of(s, 4).letter, "A");
  EXPECT_EQ(row_of(s, 1000004).letter, "B");
  EXPECT_EQ(row_of(s, 1000004).resolved_by, "judge");
  EXPECT_EQ(row_of(s, 2000004).resolved_by, "unresolved");
  EXPECT_TRUE(row_of(s, 2000004).judge_replies.empty());
  const MmbRowResult& r5 = row_of(s, 5);
  EXPECT_EQ(r5.resolved_by, "judge-failed");
  EXPECT_EQ(r5.letter, q5_guess);
  EXPECT_EQ(r5.judge_replies, std::vector<std::string>(3, kJudgeFailMessage));
  EXPECT_EQ(s.judge_stats.calls, 7u);
  EXPECT_EQ(s.judge_stats.http_requests, 11u);
  EXPECT_EQ(s.judge_stats.failed_calls, 3u);

  const std::string csv = mmbench_result_csv(s);
  EXPECT_NE(csv.find("1000003,3,dev,image_scene,coarse_perception,A,It is the furry one,1,A,"
                     "unresolved,right,1,judge,\"[\"\"A\"\"]\""),
            std::string::npos)
      << csv;
  EXPECT_NE(csv.find(",1,A,option-letter,right,1,rule,\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",judge-failed,"), std::string::npos) << csv;
  const std::string term = mmbench_terminal_report(s);
  EXPECT_NE(term.find("LLM judge 'judge-model-x' at "), std::string::npos) << term;
  EXPECT_NE(term.find("judge: 3 answers extracted by the judge, 1 judge-failed"), std::string::npos)
      << term;

  // Only replies are cached, not failed calls: Q3's one and Q4's three.
  const auto cache_lines = split(trim(read_file(cache)), '\n');
  ASSERT_EQ(cache_lines.size(), 4u);
  const Json c1 = Json::parse(cache_lines[2]);
  EXPECT_EQ(c1["attempt"], 1);
  EXPECT_EQ(c1["reply"], "The answer is A.");
  EXPECT_EQ(c1["failed_tries"], 1);

  // A rerun with the judge gone: the cached replies give the same outcome without a single
  // successful request, and Q5's failing calls replay the same random draws.
  const std::string dead = "http://127.0.0.1:" + std::to_string(dead_port()) + "/v1";
  McqJudge again(judge_options(dead, cache));
  const MmbenchScore s2 = score_mmbench(f.tsv, f.answers, McqMatcher::k2024, &again);
  EXPECT_EQ(s2.judge_stats.cache_hits, 4u);
  EXPECT_EQ(s2.judge_stats.http_requests, 6u);  // Q5 only, refused
  for (size_t g = 0; g < s.groups.size(); ++g) EXPECT_EQ(s2.groups[g].status, s.groups[g].status);
  EXPECT_EQ(row_of(s2, 5).letter, q5_guess);
  EXPECT_EQ(mmbench_acc_csv(s2), mmbench_acc_csv(s));

  // A run killed mid-append leaves a torn last line: dropped, and the file repaired.
  { std::ofstream(cache, std::ios::app) << "{\"model\": \"judge-model-x\", \"pro"; }
  McqJudge repaired(judge_options(dead, cache));
  EXPECT_EQ(split(trim(read_file(cache)), '\n').size(), 4u);
  EXPECT_TRUE(ends_with(read_file(cache), "}\n"));
  // A malformed complete line is an error naming it.
  { std::ofstream(cache, std::ios::app) << "{\"model\": 1}\n"; }
  EXPECT_NE(error_of([&] {
              McqJudge bad(judge_options(dead, cache));
            }).find(cache + ": line 5: not a judge cache entry"),
            std::string::npos);
}

TEST(MmbenchJudge, ReplyThatNamesNoOptionIsRetriedThenGuessed) {
  // Every call answers, but never with a single option: no HTTP failure, 3 calls, then the
  // random guess (3 draws of the jitter before it).
  const std::string d = test::temp_dir("mmb_judge_noopt");
  Json script = {{"default", {{"content", "I cannot tell, maybe A or B"}}}};
  MockServer server(d + "/srv", script);
  McqJudge judge(judge_options(server.url(), ""));
  data::PyRandom rd(kJudgeSeed);
  const McqJudgeResult r = judge_mcq_answer(judge, "Q", {{"A", "kettle"}, {"B", "lamp"}}, "hmm",
                                            McqMatcher::k2024, rd, "row 7");
  EXPECT_EQ(r.resolved_by, "judge-failed");
  EXPECT_EQ(r.replies.size(), 3u);
  EXPECT_EQ(r.letter, python_fallback_letter(3, "ABZ"));
  EXPECT_EQ(server.requests().size(), 3u);
  // Z is a valid judge answer (it counts as wrong, as no ground truth is Z).
  const std::string d2 = test::temp_dir("mmb_judge_z");
  MockServer z(d2, {{"default", {{"content", "Z"}}}});
  McqJudge jz(judge_options(z.url(), ""));
  const McqJudgeResult rz =
      judge_mcq_answer(jz, "Q", {{"A", "x"}, {"B", "y"}}, "hmm", McqMatcher::k2024, rd, "row 8");
  EXPECT_EQ(rz.letter, "Z");
  EXPECT_EQ(rz.resolved_by, "judge");
}

TEST(MmbenchJudge, UnreachableJudgeStopsBeforeGuessing) {
  // No reply ever (nothing listening): the first call's failure is an error naming the URL, not
  // the start of an evaluation scored by random guesses.
  const std::string d = test::temp_dir("mmb_judge_dead");
  const Fixture f = write_fixture(d);
  const std::string dead = "http://127.0.0.1:" + std::to_string(dead_port()) + "/v1";
  McqJudge judge(judge_options(dead, d + "/cache.jsonl"));
  const std::string e =
      error_of([&] { score_mmbench(f.tsv, f.answers, McqMatcher::k2024, &judge); });
  EXPECT_NE(e.find("the judge at " + dead +
                   " (model 'judge-model-x') failed on its first call, "
                   "2 tries; last: " +
                   dead + ": cannot connect to 127.0.0.1:"),
            std::string::npos)
      << e;
  EXPECT_FALSE(path_exists(d + "/cache.jsonl"));
}

TEST(MmbenchJudge, BadOptions) {
  McqJudgeOptions o = judge_options("https://api.openai.com/v1/chat/completions", "");
  EXPECT_THROW(McqJudge j(o), UsageError);
  o = judge_options("http://127.0.0.1:1/v1", "");
  o.retry = 0;
  EXPECT_NE(error_of([&] { McqJudge j(o); }).find("--judge-retry must be >= 1"), std::string::npos);
  o = judge_options("http://127.0.0.1:1/v1", "");
  o.model = "";
  EXPECT_THROW(McqJudge j(o), UsageError);
}

}  // namespace
}  // namespace mgm::eval
