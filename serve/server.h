// `mgm serve`: the OpenAI-compatible HTTP server over the continuous-batching engine
// (models/engine.h), on cpp-httplib (Debian libcpp-httplib-dev 0.11). Routes: GET /v1/models,
// POST /v1/chat/completions, POST /v1/completions (JSON or Server-Sent Events), GET /health,
// GET /metrics (Prometheus text), GET / (the chat page). Loopback by default; with an API key
// every /v1 route needs "Authorization: Bearer KEY". SIGINT/SIGTERM drain: new requests get 503,
// running ones finish (up to the drain timeout, then they are cancelled), then the process
// exits 0.
#pragma once

#include <cstdint>
#include <string>

#include "eval/runner.h"
#include "models/engine.h"
#include "serve/api.h"

namespace mgm::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (the one bound is printed)
  std::string api_key;
  std::string served_model_name;
  ApiLimits limits;
  int64_t max_request_bytes = 32 << 20;
  double drain_timeout_s = 30;
};

// Serves until SIGINT or SIGTERM, then drains and returns 0. The caller has blocked both
// signals in every thread (block_shutdown_signals) before starting any thread.
int run_server(eval::EvalModel& m, models::Engine& engine, const ServerOptions& o);

// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts later), so that
// run_server receives them with sigwait; ignores SIGPIPE (a client gone mid-write).
void block_shutdown_signals();

// The Prometheus text exposition of the engine's metrics (vLLM's names, prefix "mgm:").
std::string metrics_text(const models::EngineMetrics& m, const std::string& model_name);

}  // namespace mgm::serve
