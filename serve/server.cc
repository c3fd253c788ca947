#include "serve/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "common/strings.h"
#include "serve/chat_page.h"

namespace mgm::serve {
namespace {

using namespace std::chrono_literals;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string address_of(const sockaddr_storage& a, int* port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    *port = ntohs(in->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* in = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &in->sin6_addr, buf, sizeof buf);
    *port = ntohs(in->sin6_port);
  }
  return buf;
}

// The socket of the connection a request came on. cpp-httplib 0.11 hands handlers no socket, yet
// a client that goes away must cancel its request: the connection's socket is the one whose two
// ends are the request's addresses (the worker thread owns it until the handler returns, so the
// descriptor cannot be reused meanwhile). -1 when not found (then only failed writes tell).
int connection_fd(const httplib::Request& req) {
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  int found = -1;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    struct stat st;
    if (::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (::getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0 ||
        ::getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0)
      continue;
    int lport = -1, pport = -1;
    const std::string la = address_of(local, &lport), pa = address_of(peer, &pport);
    if (lport == req.local_port && pport == req.remote_port && la == req.local_addr &&
        pa == req.remote_addr) {
      found = static_cast<int>(fd);
      break;
    }
  }
  ::closedir(d);
  return found;
}

// True when the client closed its end (an orderly close or a reset); pipelined bytes of a next
// request do not count.
bool peer_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
  char c;
  return (p.revents & POLLIN) && ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(e.body(), "application/json");
}

ApiError refusal_error(const models::EngineRefusal& r) {
  if (r.kind() == "queue_full") return ApiError(503, r.what(), "server_overloaded", "", "queue_full");
  if (r.kind() == "draining") return ApiError(503, r.what(), "server_unavailable", "", "draining");
  return ApiError(400, r.what(), "invalid_request_error", "messages",
                  r.kind() == "prompt_too_long" ? "context_length_exceeded" : "");
}

std::string sse(const Json& j) { return "data: " + j.dump() + "\n\n"; }

struct Shared {
  eval::EvalModel& m;
  models::Engine& engine;
  const ServerOptions& o;
  std::string model_name;
  std::atomic<bool> draining{false};
  // Generation responses still being written; shutdown waits for them (stopping the server
  // while one is mid-stream would cut it short).
  std::atomic<int> in_flight{0};
};

struct InFlight {
  std::atomic<int>& n;
  explicit InFlight(std::atomic<int>& c) : n(c) { ++n; }
  ~InFlight() { --n; }
};

// Serves one generation request (chat or completion), streamed or whole.
void serve_generation(Shared& sh, const httplib::Request& req, httplib::Response& res, bool chat) {
  if (sh.draining) throw ApiError(503, "the server is shutting down", "server_unavailable");
  ApiRequest r = chat ? parse_chat_request(req.body, sh.m, sh.o.limits)
                      : parse_completion_request(req.body, sh.m);
  if (!r.model.empty() && r.model != sh.model_name)
    throw ApiError(404, str_cat("The model `", r.model, "` does not exist (this server serves `",
                                sh.model_name, "`)."),
                   "invalid_request_error", "model", "model_not_found");
  std::shared_ptr<models::RequestStream> stream;
  try {
    stream = sh.engine.submit(std::move(r.engine));
  } catch (const models::EngineRefusal& e) {
    ApiError err = refusal_error(e);
    if (err.status == 503) res.set_header("Retry-After", "1");
    throw err;
  }
  auto in_flight = std::make_shared<InFlight>(sh.in_flight);  // released with the response
  const int fd = connection_fd(req);
  const std::string id = new_request_id(chat ? "chatcmpl" : "cmpl");
  const int64_t created = unix_now();
  const std::string model = sh.model_name;

  if (!r.stream) {
    std::string text;
    bool client_gone = false;
    while (true) {
      auto events = stream->wait(200ms);
      if (events.empty() && !client_gone && peer_gone(fd)) {
        client_gone = true;
        stream->cancel();  // nobody is waiting for the answer any more
        continue;
      }
      for (auto& e : events) {
        text += e.text;
        if (!e.finished) continue;
        if (e.finish_reason == "error")
          throw ApiError(500, e.error, "internal_server_error");
        if (e.finish_reason == "cancelled") {
          if (client_gone) throw ApiError(499, "the client closed the connection", "cancelled");
          throw ApiError(503, "the server is shutting down and cancelled the request",
                         "server_unavailable", "", "cancelled");
        }
        const Json body = chat ? chat_response(id, created, model, text, e.finish_reason,
                                               e.prompt_tokens, e.completion_tokens)
                               : completion_response(id, created, model, text, e.finish_reason,
                                                     e.prompt_tokens, e.completion_tokens);
        res.set_content(body.dump(), "application/json");
        return;
      }
    }
  }

  const bool usage = r.include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // nginx: pass events on as they come
  auto started = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "text/event-stream",
      [stream, fd, id, created, model, chat, usage, started, in_flight](size_t,
                                                                       httplib::DataSink& sink) {
        auto write = [&](const std::string& s) {
          if (sink.write(s.data(), s.size())) return true;
          stream->cancel();
          return false;
        };
        if (!*started) {
          *started = true;
          if (chat && !write(sse(chat_chunk(id, created, model, {{"role", "assistant"}, {"content", ""}},
                                            nullptr, usage))))
            return false;
        }
        auto events = stream->wait(200ms);
        if (events.empty() && peer_gone(fd)) {
          stream->cancel();
          return false;
        }
        for (auto& e : events) {
          if (!e.text.empty()) {
            const Json c = chat ? chat_chunk(id, created, model, {{"content", e.text}}, nullptr, usage)
                                : completion_chunk(id, created, model, e.text, nullptr, usage);
            if (!write(sse(c))) return false;
          }
          if (!e.finished) continue;
          if (e.finish_reason == "cancelled" && stream->cancelled() && peer_gone(fd)) return false;
          if (e.finish_reason == "error" || e.finish_reason == "cancelled") {
            const ApiError err = e.finish_reason == "error"
                                     ? ApiError(500, e.error, "internal_server_error")
                                     : ApiError(503, "the server is shutting down and cancelled "
                                                     "the request", "server_unavailable", "",
                                                "cancelled");
            if (!write("data: " + err.body() + "\n\n")) return false;
          } else {
            const Json c = chat ? chat_chunk(id, created, model, Json::object(), e.finish_reason, usage)
                                : completion_chunk(id, created, model, "", e.finish_reason, usage);
            if (!write(sse(c))) return false;
            if (usage) {
              Json u = {{"id", id},
                        {"object", chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created},
                        {"model", model},
                        {"choices", Json::array()},
                        {"usage", usage_json(e.prompt_tokens, e.completion_tokens)}};
              if (!write(sse(u))) return false;
            }
          }
          if (!write("data: [DONE]\n\n")) return false;
          sink.done();
          return true;
        }
        return true;
      },
      [stream, in_flight](bool) { stream->cancel(); });  // a no-op once it finished
}

std::string histogram_text(const std::string& name, const std::string& help,
                           const models::Histogram& h, const std::string& labels) {
  std::string s = str_cat("# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  uint64_t cum = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cum += h.counts[i];
    s += str_cat(name, "_bucket{", labels, ",le=\"", h.bounds[i], "\"} ", cum, "\n");
  }
  s += str_cat(name, "_bucket{", labels, ",le=\"+Inf\"} ", h.count, "\n");
  s += str_cat(name, "_sum{", labels, "} ", h.sum, "\n", name, "_count{", labels, "} ", h.count,
               "\n");
  return s;
}

}  // namespace

std::string metrics_text(const models::EngineMetrics& m, const std::string& model_name) {
  std::string name = model_name;
  for (char& c : name)
    if (c == '"' || c == '\\' || c == '\n') c = '_';
  const std::string labels = str_cat("model_name=\"", name, "\"");
  std::string s;
  auto one = [&](const char* metric, const char* type, const char* help, auto value) {
    s += str_cat("# HELP ", metric, " ", help, "\n# TYPE ", metric, " ", type, "\n", metric, "{",
                 labels, "} ", value, "\n");
  };
  one("mgm:num_requests_running", "gauge", "Number of requests in the running batch.", m.running);
  one("mgm:num_requests_waiting", "gauge", "Number of requests waiting for a KV slot.",
      m.waiting);
  one("mgm:max_num_seqs", "gauge", "KV slots (--max-num-seqs).", m.max_num_seqs);
  one("mgm:prompt_tokens_total", "counter", "Prefill tokens processed (image tokens included).",
      m.prompt_tokens);
  one("mgm:generation_tokens_total", "counter", "Tokens generated.", m.generation_tokens);
  s += "# HELP mgm:request_success_total Finished requests by finish reason.\n"
       "# TYPE mgm:request_success_total counter\n";
  for (const char* reason : {"stop", "length", "cancelled", "error"}) {
    const auto it = m.finished.find(reason);
    s += str_cat("mgm:request_success_total{", labels, ",finished_reason=\"", reason, "\"} ",
                 it == m.finished.end() ? 0 : it->second, "\n");
  }
  s += histogram_text("mgm:time_to_first_token_seconds", "Time to the first generated token.",
                      m.time_to_first_token, labels);
  s += histogram_text("mgm:time_per_output_token_seconds", "Time between generated tokens.",
                      m.time_per_output_token, labels);
  s += histogram_text("mgm:e2e_request_latency_seconds", "Arrival to finish of a request.",
                      m.e2e_latency, labels);
  return s;
}

void block_shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

int run_server(eval::EvalModel& m, models::Engine& engine, const ServerOptions& o) {
  Shared sh{m, engine, o, o.served_model_name.empty() ? m.model_id : o.served_model_name};
  httplib::Server svr;
  // A worker per connection: enough for every slot, the whole queue and a few idle keep-alive
  // connections, so the queue bound (503) answers before connections wait unanswered.
  const size_t workers = static_cast<size_t>(engine.options().max_num_seqs +
                                             engine.options().max_queue_len + 16);
  svr.new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  svr.set_payload_max_length(static_cast<size_t>(o.max_request_bytes));
  svr.set_read_timeout(30, 0);
  svr.set_write_timeout(30, 0);

  auto authorized = [&](const httplib::Request& req, httplib::Response& res) {
    if (o.api_key.empty()) return true;
    const std::string h = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (starts_with(h, prefix) && constant_time_equal(h.substr(prefix.size()), o.api_key))
      return true;
    send_error(res, ApiError(401,
                             h.empty() ? "Missing API key: send 'Authorization: Bearer KEY'."
                                       : "Incorrect API key provided.",
                             "invalid_request_error", "", "invalid_api_key"));
    return false;
  };
  // Every handler answers errors in OpenAI's shape; nothing a request carries can end the
  // server (exceptions become 4xx/5xx answers).
  auto guarded = [&](auto handler, bool needs_auth) {
    return [&, handler, needs_auth](const httplib::Request& req, httplib::Response& res) {
      try {
        if (needs_auth && !authorized(req, res)) return;
        handler(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, str_cat("internal error: ", e.what()), "internal_server_error"));
      }
    };
  };

  svr.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
    res.status = sh.draining ? 503 : 200;
  });
  svr.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(engine.metrics(), sh.model_name), "text/plain; version=0.0.4");
  });
  svr.Get("/", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(chat_page_html(), "text/html; charset=utf-8");
  });
  svr.Get("/v1/models", guarded([&](const httplib::Request&, httplib::Response& res) {
            const Json card = {{"id", sh.model_name},
                               {"object", "model"},
                               {"created", unix_now()},
                               {"owned_by", "mgm"},
                               {"max_model_len", engine.options().max_model_len}};
            res.set_content(Json{{"object", "list"}, {"data", Json::array({card})}}.dump(),
                            "application/json");
          }, true));
  svr.Post("/v1/chat/completions",
           guarded([&](const httplib::Request& req, httplib::Response& res) {
             serve_generation(sh, req, res, true);
           }, true));
  svr.Post("/v1/completions", guarded([&](const httplib::Request& req, httplib::Response& res) {
             serve_generation(sh, req, res, false);
           }, true));
  svr.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string msg;
    if (res.status == 404)
      msg = str_cat("no route ", req.method, " ", req.path,
                    " (routes: GET /, /health, /metrics, /v1/models; POST /v1/chat/completions, "
                    "/v1/completions)");
    else if (res.status == 413)
      msg = str_cat("the request body is larger than --max-request-bytes (", o.max_request_bytes,
                    ")");
    else
      msg = str_cat("HTTP ", res.status, " for ", req.method, " ", req.path);
    send_error(res, ApiError(res.status, msg, res.status >= 500 ? "internal_server_error"
                                                                : "invalid_request_error"));
  });

  int port = o.port;
  if (port == 0) {
    port = svr.bind_to_any_port(o.host);
  } else if (!svr.bind_to_port(o.host, port)) {
    port = -1;
  }
  if (port < 0) throw Error(str_cat("cannot listen on ", o.host, ":", o.port, " (in use?)"));
  std::fprintf(stderr, "mgm serve: model %s on http://%s:%d (%lld slots x %lld positions)\n",
               sh.model_name.c_str(), o.host.c_str(), port,
               static_cast<long long>(engine.options().max_num_seqs),
               static_cast<long long>(engine.options().max_model_len));
  std::fflush(stderr);
  std::thread listener([&] { svr.listen_after_bind(); });

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  std::fprintf(stderr, "mgm serve: %s: draining (new requests get 503)\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
  sh.draining = true;
  engine.begin_drain();
  const auto limit = std::chrono::milliseconds(static_cast<int64_t>(o.drain_timeout_s * 1000));
  if (!engine.wait_idle(limit)) {
    std::fprintf(stderr, "mgm serve: requests still running after %.0f s: cancelling them\n",
                 o.drain_timeout_s);
    engine.cancel_all();
    engine.wait_idle(10s);
  }
  // Let the responses in flight finish writing (bounded: a client that stopped reading is cut).
  for (int i = 0; i < 300 && sh.in_flight > 0; ++i) std::this_thread::sleep_for(50ms);
  svr.stop();
  listener.join();
  std::fprintf(stderr, "mgm serve: stopped\n");
  return 0;
}

}  // namespace mgm::serve
