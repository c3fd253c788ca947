#include "serve/cli_serve.h"

#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "data/image.h"
#include "data/synth.h"
#include "eval/cli_eval.h"
#include "serve/server.h"

namespace mgm::serve {
namespace {

using namespace std::chrono_literals;

// The model flags (eval::add_model_flags) and the engine's, for `mgm serve` and local `mgm chat`
// (vLLM's names).
void model_flags(cli::ArgParser& p, bool required) {
  eval::add_model_flags(p, required);
  p.flag("max-num-seqs", cli::Kind::kInt, "32", "sequences decoded together (KV slots)");
  p.flag("max-model-len", cli::Kind::kInt, "0",
         "positions per sequence, prompt + output (0: the model's tokenizer_model_max_length)");
  p.flag("max-num-batched-tokens", cli::Kind::kInt, "2048",
         "tokens per engine step: longer prompts are prefilled in chunks between decode steps");
  p.flag("max-queue-len", cli::Kind::kInt, "64",
         "requests that may wait for a slot; beyond them requests get 503");
}

struct Loaded {
  eval::EvalModel m;
  std::unique_ptr<models::Engine> engine;
};

// On the heap and never moved: the engine's decode function refers to the tokenizer in it.
std::unique_ptr<Loaded> load(const cli::ArgParser& p) {
  const eval::EvalModelOptions mo = eval::model_from_flags(p);
  std::fprintf(stderr, "loading %s ...\n", mo.model_path.c_str());
  auto holder = std::make_unique<Loaded>();
  Loaded& l = *holder;
  l.m = eval::load_eval_model(mo);
  models::EngineOptions eo;
  const int64_t trained = l.m.model->config().tokenizer_model_max_length;
  eo.max_num_seqs = p.integer("max-num-seqs");
  eo.max_model_len = p.integer("max-model-len") == 0 ? trained : p.integer("max-model-len");
  eo.max_num_batched_tokens = p.integer("max-num-batched-tokens");
  eo.max_queue_len = p.integer("max-queue-len");
  if (eo.max_num_seqs < 1) throw UsageError("--max-num-seqs must be >= 1");
  if (eo.max_model_len < 2) throw UsageError("--max-model-len must be >= 2");
  if (eo.max_num_batched_tokens < eo.max_num_seqs)
    throw UsageError("--max-num-batched-tokens must be >= --max-num-seqs");
  if (eo.max_queue_len < 1) throw UsageError("--max-queue-len must be >= 1");
  const auto& tok = l.m.tokenizer;
  l.engine = std::make_unique<models::Engine>(
      l.m.model, eo, [&tok](const std::vector<int64_t>& ids) { return tok.decode(ids, true); },
      std::vector<int64_t>{l.m.tokenizer.eos_id()});
  return holder;
}

int64_t parse_image_limit(const std::string& s) {
  // vLLM's --limit-mm-per-prompt: "image=N" or the JSON {"image": N}.
  std::string v = s;
  if (starts_with(v, "{")) {
    const Json j = parse_json(v, "--limit-mm-per-prompt");
    if (!j.is_object() || !j.contains("image") || !j["image"].is_number_integer())
      throw UsageError("--limit-mm-per-prompt: expected image=N or {\"image\": N}, got " + s);
    return j["image"].get<int64_t>();
  }
  if (!starts_with(v, "image="))
    throw UsageError("--limit-mm-per-prompt: expected image=N or {\"image\": N}, got " + s);
  try {
    size_t used = 0;
    const int64_t n = std::stoll(v.substr(6), &used);
    if (used != v.size() - 6 || n < 0) throw std::invalid_argument("n");
    return n;
  } catch (const std::exception&) {
    throw UsageError("--limit-mm-per-prompt: expected image=N with N >= 0, got " + s);
  }
}

int run_serve_cmd(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm serve",
                   "Serves an MGM over an OpenAI-compatible HTTP API with continuous batching: "
                   "GET /v1/models, POST /v1/chat/completions and /v1/completions (streamed as "
                   "Server-Sent Events with \"stream\": true), GET /health, GET /metrics "
                   "(Prometheus), and a chat page at GET /. Prompts are built as mgm eval builds "
                   "them, so a greedy answer equals mgm eval's. SIGINT/SIGTERM drain and exit 0.");
  model_flags(p, true);
  p.flag("host", cli::Kind::kString, "127.0.0.1", "address to listen on (loopback by default)");
  p.flag("port", cli::Kind::kInt, "8000", "port (0: any free one, printed at start)");
  p.flag("api-key", cli::Kind::kString, "",
         "require 'Authorization: Bearer KEY' on /v1 routes (default: $MGM_API_KEY)");
  p.flag("served-model-name", cli::Kind::kString, "",
         "the model name clients use (default: the model folder's name, as mgm eval's model_id)");
  p.flag("allowed-local-media-path", cli::Kind::kString, "",
         "allow image URLs naming local files under this folder (default: none)");
  p.flag("limit-mm-per-prompt", cli::Kind::kString, "image=1", "images per request: image=N");
  p.flag("max-request-bytes", cli::Kind::kInt, std::to_string(32 << 20),
         "largest request body accepted (larger: 413)");
  p.flag("drain-timeout", cli::Kind::kFloat, "30",
         "seconds running requests get to finish after SIGINT/SIGTERM before they are cancelled");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  ServerOptions o;
  o.host = p.str("host");
  o.port = static_cast<int>(p.integer("port"));
  if (o.port < 0 || o.port > 65535) throw UsageError("--port must be in [0, 65535]");
  o.api_key = p.given("api-key") ? p.str("api-key") : std::string(std::getenv("MGM_API_KEY") ? std::getenv("MGM_API_KEY") : "");
  o.served_model_name = p.str("served-model-name");
  o.limits.allowed_local_media_path = p.str("allowed-local-media-path");
  if (!o.limits.allowed_local_media_path.empty() &&
      !is_directory(o.limits.allowed_local_media_path))
    throw UsageError("--allowed-local-media-path: " + o.limits.allowed_local_media_path +
                     " is not a folder");
  o.limits.max_images = parse_image_limit(p.str("limit-mm-per-prompt"));
  o.max_request_bytes = p.integer("max-request-bytes");
  if (o.max_request_bytes < 1024) throw UsageError("--max-request-bytes must be >= 1024");
  o.drain_timeout_s = p.number("drain-timeout");
  // Before any thread starts, so every thread inherits the mask and sigwait gets the signals.
  block_shutdown_signals();
  auto l = load(p);
  return run_server(l->m, *l->engine, o);
}

// --- mgm chat ---------------------------------------------------------------------------------

std::atomic<bool> g_interrupted{false};
void on_sigint(int) { g_interrupted = true; }

// Sends the conversation, prints the answer as it streams; returns the answer (what was shown,
// also when Ctrl-C stopped it).
using ChatBackend = std::function<std::string(const Json& body)>;

ChatBackend local_backend(Loaded& l) {
  return [&l](const Json& body) {
    ApiLimits limits;
    limits.max_images = 16;
    ApiRequest r = parse_chat_request(body.dump(), l.m, limits);
    auto stream = l.engine->submit(std::move(r.engine));
    std::string answer;
    while (true) {
      if (g_interrupted) stream->cancel();
      for (auto& e : stream->wait(100ms)) {
        std::fputs(e.text.c_str(), stdout);
        std::fflush(stdout);
        answer += e.text;
        if (e.finished) {
          if (e.finish_reason == "error") throw Error(e.error);
          return answer;
        }
      }
    }
  };
}

ChatBackend remote_backend(const std::string& url, const std::string& api_key) {
  return [url, api_key](const Json& body) {
    httplib::Client cli(url);
    cli.set_read_timeout(600, 0);
    httplib::Headers h;
    if (!api_key.empty()) h.emplace("Authorization", "Bearer " + api_key);
    std::string answer, buf, error_body;
    int status = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.headers = h;
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    req.response_handler = [&](const httplib::Response& res) {
      status = res.status;
      return true;
    };
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (g_interrupted) return false;  // closing the connection cancels the request
      if (status != 200) {
        error_body.append(data, n);
        return true;
      }
      buf.append(data, n);
      for (size_t cut; (cut = buf.find("\n\n")) != std::string::npos;) {
        const std::string event = buf.substr(0, cut);
        buf.erase(0, cut + 2);
        if (!starts_with(event, "data: ") || event == "data: [DONE]") continue;
        const Json j = Json::parse(event.substr(6), nullptr, false);
        if (j.is_discarded()) continue;
        if (j.contains("error")) throw Error(j["error"].value("message", "error"));
        for (const auto& c : j.value("choices", Json::array()))
          if (c.contains("delta") && c["delta"].contains("content") &&
              c["delta"]["content"].is_string()) {
            const std::string t = c["delta"]["content"].get<std::string>();
            std::fputs(t.c_str(), stdout);
            std::fflush(stdout);
            answer += t;
          }
      }
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    const bool ok = cli.send(req, res, err);
    if (g_interrupted) return answer;
    if (!ok) throw Error(str_cat(url, ": request failed (", httplib::to_string(err), ")"));
    if (status != 200) {
      const Json j = Json::parse(error_body, nullptr, false);
      const std::string msg = !j.is_discarded() && j.contains("error")
                                  ? j["error"].value("message", error_body)
                                  : error_body;
      throw Error(str_cat("HTTP ", status, ": ", msg));
    }
    return answer;
  };
}

std::string image_data_url(const std::string& path) {
  if (!path_exists(path)) throw Error(path + ": no such file");
  return "data:image/unknown;base64," + data::base64_encode(read_file(path));
}

int run_chat_cmd(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm chat",
                   "A terminal chat with an MGM, as fastchat.serve.cli: answers stream as they "
                   "are generated, the conversation is kept across turns. Either loads the model "
                   "(--model-path) or talks to a running mgm serve (--url). Commands: /image PATH "
                   "(attach an image to the next message), /clear (new conversation), /exit. "
                   "Ctrl-C stops the current answer; Ctrl-D or /exit leaves.");
  model_flags(p, false);
  p.flag("url", cli::Kind::kString, "", "a running server, e.g. http://127.0.0.1:8000");
  p.flag("api-key", cli::Kind::kString, "", "for --url (default: $MGM_API_KEY)");
  p.flag("image", cli::Kind::kString, "", "an image for the first message");
  p.flag("temperature", cli::Kind::kFloat, "0", "0: greedy");
  p.flag("top_p", cli::Kind::kFloat, "1.0", "nucleus filter when sampling");
  p.flag("max-tokens", cli::Kind::kInt, "512", "tokens per answer at most");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  if (p.str("url").empty() == p.str("model-path").empty())
    throw UsageError("give either --model-path (load the model) or --url (a running mgm serve)");
  std::unique_ptr<Loaded> loaded;
  ChatBackend send;
  if (!p.str("url").empty()) {
    const char* env = std::getenv("MGM_API_KEY");
    send = remote_backend(p.str("url"), p.given("api-key") ? p.str("api-key") : env ? env : "");
  } else {
    loaded = load(p);
    send = local_backend(*loaded);
  }
  struct sigaction sa {};
  sa.sa_handler = on_sigint;  // no SA_RESTART: a read at the prompt returns at once
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  Json messages = Json::array();
  std::string image = p.str("image").empty() ? "" : image_data_url(p.str("image"));
  const bool tty = ::isatty(STDIN_FILENO);
  std::fputs("mgm chat: /image PATH, /clear, /exit; Ctrl-C stops an answer.\n", stdout);
  while (true) {
    std::fputs("USER: ", stdout);
    std::fflush(stdout);
    g_interrupted = false;
    std::string line;
    if (!std::getline(std::cin, line)) {
      if (g_interrupted && !std::cin.eof()) {  // Ctrl-C at the prompt: a fresh prompt
        std::cin.clear();
        std::fputs("\n", stdout);
        continue;
      }
      std::fputs(tty ? "\n" : "", stdout);
      return 0;
    }
    line = trim(line);
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") return 0;
    if (line == "/clear") {
      messages = Json::array();
      image.clear();
      std::fputs("(new conversation)\n", stdout);
      continue;
    }
    if (starts_with(line, "/image")) {
      const std::string path = trim(line.substr(6));
      try {
        image = image_data_url(path);
        std::fprintf(stdout, "(image %s attached to the next message)\n", path.c_str());
      } catch (const std::exception& e) {
        std::fprintf(stdout, "(%s)\n", e.what());
      }
      continue;
    }
    Json content = Json::array();
    if (!image.empty()) content.push_back({{"type", "image_url"}, {"image_url", {{"url", image}}}});
    content.push_back({{"type", "text"}, {"text", line}});
    Json body = {{"messages", messages},
                 {"stream", true},
                 {"temperature", p.number("temperature")},
                 {"top_p", p.number("top_p")},
                 {"max_tokens", p.integer("max-tokens")}};
    body["messages"].push_back({{"role", "user"}, {"content", content}});
    std::fputs("ASSISTANT: ", stdout);
    std::fflush(stdout);
    try {
      const std::string answer = send(body);
      std::fputs(g_interrupted ? " [stopped]\n" : "\n", stdout);
      messages = body["messages"];
      messages.push_back({{"role", "assistant"}, {"content", answer}});
      image.clear();
    } catch (const std::exception& e) {
      std::fprintf(stdout, "\n(error: %s)\n", e.what());
    }
  }
}

}  // namespace

std::vector<cli::Command> serve_commands() {
  return {
      {"serve", "", "OpenAI-compatible server with continuous batching and a chat page",
       run_serve_cmd},
      {"chat", "", "terminal chat with a model or a running server", run_chat_cmd},
  };
}

}  // namespace mgm::serve
