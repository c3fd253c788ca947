// `mgm serve` as users meet it: a real server process on the tiny model, driven by the openai SDK
// and raw HTTP (tests/python/serve_openai_check.py lists the checks), with the greedy answers
// compared to `mgm eval textvqa`'s answer file for the same questions and images; then SIGTERM
// drains it and it exits 0.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <thread>

#include "common/files.h"
#include "common/strings.h"
#include "serve/api.h"
#include "serve/server.h"
#include "tests_util.h"
#include "tiny_mgm.h"

namespace mgm::serve {
namespace {

using namespace std::chrono_literals;

// The port the server printed in its log ("... on http://127.0.0.1:PORT ..."), waiting up to
// `limit` for the line; -1 when it never came (the log is in the failure message).
int wait_for_port(const std::string& log, pid_t pid, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  const std::string marker = "on http://127.0.0.1:";
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string text = path_exists(log) ? read_file(log) : "";
    const size_t at = text.find(marker);
    if (at != std::string::npos && text.find(' ', at + marker.size()) != std::string::npos)
      return std::stoi(text.substr(at + marker.size()));
    if (::kill(pid, 0) != 0) return -1;  // it exited
    std::this_thread::sleep_for(50ms);   // polling a file for a condition, not a timing guess
  }
  return -1;
}

TEST(ServeE2E, OpenAiSdkAndHostileClientsAgainstARealServer) {
  const std::string root = test::make_tiny_mgm_fixture("serve");
  const std::string model = root + "/MGM-tiny";
  std::string out;
  ASSERT_EQ(test::run_command(str_cat(MGM_BIN, " eval textvqa --model-path ", model,
                                      " --question-file ", root, "/questions.jsonl --image-folder ",
                                      root, "/images --answers-file ", root,
                                      "/eval.jsonl --max_new_tokens 6 --batch_size 1"),
                              &out),
            0)
      << out;
  const std::string log = root + "/serve.log";
  const pid_t pid = test::spawn(
      str_cat(MGM_BIN, " serve --model-path ", model, " --port 0 --api-key test-key-123",
              " --allowed-local-media-path ", root, "/images --max-num-seqs 4 --max-queue-len 64",
              " --max-model-len 4096 --max-request-bytes 2097152 --drain-timeout 60"),
      log);
  const int port = wait_for_port(log, pid, 180s);
  ASSERT_GT(port, 0) << (path_exists(log) ? read_file(log) : "no log");
  const int rc = test::run_python(
      str_cat(test::source_dir(), "/tests/python/serve_openai_check.py ", port, " test-key-123 ",
              root, " ", root, "/eval.jsonl ", pid, " ", MGM_BIN),
      &out);
  EXPECT_EQ(rc, 0) << out << "\nserver log:\n" << read_file(log);
  // The script sent SIGTERM last: the server drains and exits 0.
  EXPECT_EQ(test::wait_exit(pid, 120s), 0) << read_file(log);
  const std::string text = read_file(log);
  EXPECT_NE(text.find("SIGTERM: draining"), std::string::npos) << text;
  EXPECT_NE(text.find("mgm serve: stopped"), std::string::npos) << text;
}

// The chat page in a real browser: Debian's chromium and chromium-driver (scripts/setup.sh
// installs them with MGM_SERVE_TESTS=1, as CI does); skipped where they are missing.
TEST(ServeE2E, ChatPageInHeadlessChromium) {
  if (!path_exists("/usr/bin/chromium") || !path_exists("/usr/bin/chromedriver"))
    GTEST_SKIP() << "chromium and chromium-driver are not installed (MGM_SERVE_TESTS=1 "
                    "scripts/setup.sh installs them)";
  const std::string root = test::make_tiny_mgm_fixture("serve_page");
  const std::string log = root + "/serve.log";
  const pid_t pid = test::spawn(str_cat(MGM_BIN, " serve --model-path ", root,
                                        "/MGM-tiny --port 0 --api-key page-key --max-num-seqs 2"),
                                log);
  const int port = wait_for_port(log, pid, 180s);
  ASSERT_GT(port, 0) << (path_exists(log) ? read_file(log) : "no log");
  std::string out;
  const int rc = test::run_python(
      str_cat(test::source_dir(), "/tests/python/chat_page_check.py http://127.0.0.1:", port,
              " page-key ", root, "/images/img2.ppm 'How many squares?' ", root, "/page.png"),
      &out);
  ::kill(pid, SIGTERM);
  EXPECT_EQ(test::wait_exit(pid, 120s), 0) << read_file(log);
  EXPECT_EQ(rc, 0) << out << "\nserver log:\n" << read_file(log);
  EXPECT_TRUE(path_exists(root + "/page.png"));
}

// The README's multi-replica setup: two replicas behind nginx, driven with the openai SDK
// (scripts/serve_replicas_nginx.sh); skipped where nginx is missing (MGM_SERVE_TESTS=1).
TEST(ServeE2E, TwoReplicasBehindNginx) {
  if (!path_exists("/usr/sbin/nginx"))
    GTEST_SKIP() << "nginx is not installed (MGM_SERVE_TESTS=1 scripts/setup.sh installs it)";
  const std::string root = test::make_tiny_mgm_fixture("serve_nginx");
  std::string out;
  const int rc = test::run_command(
      str_cat("MGM_BUILD_DIR=", MGM_BUILD_DIR, " ", test::source_dir(),
              "/scripts/serve_replicas_nginx.sh --model ", root, "/MGM-tiny --workdir ", root,
              "/lb"),
      &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("16 equal to the direct answers"), std::string::npos) << out;
}

TEST(ServeApi, ConstantTimeCompareAndErrorShape) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
  EXPECT_FALSE(constant_time_equal("", "a"));
  const ApiError e(400, "bad \"thing\"", "invalid_request_error", "messages[0]");
  const Json j = Json::parse(e.body());
  EXPECT_EQ(j["error"]["message"], "bad \"thing\"");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "messages[0]");
  EXPECT_TRUE(j["error"]["code"].is_null());
}

TEST(ServeApi, MetricsInPrometheusTextFormat) {
  models::EngineMetrics m;
  m.running = 2;
  m.generation_tokens = 17;
  m.finished["stop"] = 3;
  m.time_to_first_token = models::Histogram({0.1, 1.0});
  m.time_to_first_token.observe(0.05);
  m.time_to_first_token.observe(0.5);
  m.time_to_first_token.observe(5.0);
  const std::string t = metrics_text(m, "MGM \"x\"");
  EXPECT_NE(t.find("mgm:num_requests_running{model_name=\"MGM _x_\"} 2\n"), std::string::npos) << t;
  EXPECT_NE(t.find("mgm:generation_tokens_total{model_name=\"MGM _x_\"} 17\n"), std::string::npos);
  EXPECT_NE(t.find("finished_reason=\"stop\"} 3\n"), std::string::npos);
  EXPECT_NE(t.find("mgm:time_to_first_token_seconds_bucket{model_name=\"MGM _x_\",le=\"0.1\"} 1\n"),
            std::string::npos) << t;
  EXPECT_NE(t.find("mgm:time_to_first_token_seconds_bucket{model_name=\"MGM _x_\",le=\"1\"} 2\n"),
            std::string::npos) << t;
  EXPECT_NE(t.find("le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(t.find("# TYPE mgm:time_to_first_token_seconds histogram"), std::string::npos);
}

}  // namespace
}  // namespace mgm::serve
