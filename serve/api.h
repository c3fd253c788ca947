// The OpenAI-compatible API of `mgm serve`: request parsing (chat messages with text and image
// parts, sampling fields, their types and ranges) into an engine request, prompts built with the
// model's conversation template exactly as `mgm eval` builds them, and the response, chunk and
// error bodies in OpenAI's shapes (https://platform.openai.com/docs/api-reference/chat, as vLLM's
// server reproduces them: vllm-project/vllm, vllm/entrypoints/openai/protocol.py).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/json.h"
#include "eval/runner.h"
#include "models/engine.h"

namespace mgm::serve {

// An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status_, const std::string& message, std::string type_ = "invalid_request_error",
           std::string param_ = "", std::string code_ = "")
      : std::runtime_error(message),
        status(status_),
        type(std::move(type_)),
        param(std::move(param_)),
        code(std::move(code_)) {}
  std::string body() const;
};

struct ApiLimits {
  int64_t max_images = 1;                // images per request (--limit-mm-per-prompt image=N)
  std::string allowed_local_media_path;  // local files only under it (resolved); empty: none
};

// A parsed /v1/chat/completions or /v1/completions request.
struct ApiRequest {
  std::string model;  // as given (empty: the served model)
  bool stream = false, include_usage = false;
  models::EngineRequest engine;  // prompt, images and sampling (max_tokens 0 when not given)
  std::string prompt_text;       // the rendered template text (for logs and tests)
};

// Parses a chat request body. Throws ApiError (400) naming the field for malformed input.
ApiRequest parse_chat_request(const std::string& body, const eval::EvalModel& m,
                              const ApiLimits& limits);
// Parses a completions request body (a plain text prompt, no template, no images).
ApiRequest parse_completion_request(const std::string& body, const eval::EvalModel& m);

// One image of a request: a data: URL (base64) or a local file under the allowed folder, decoded
// and preprocessed as `mgm eval` preprocesses images. Throws ApiError (400).
at::Tensor load_request_image(const std::string& url, const eval::EvalModel& m,
                              const ApiLimits& limits, const std::string& where);

// Response bodies. `id` is "chatcmpl-..." or "cmpl-...".
std::string new_request_id(const std::string& prefix);
Json usage_json(int64_t prompt_tokens, int64_t completion_tokens);
Json chat_response(const std::string& id, int64_t created, const std::string& model,
                   const std::string& text, const std::string& finish_reason,
                   int64_t prompt_tokens, int64_t completion_tokens);
Json chat_chunk(const std::string& id, int64_t created, const std::string& model,
                const Json& delta, const Json& finish_reason, bool with_usage_null);
Json completion_response(const std::string& id, int64_t created, const std::string& model,
                         const std::string& text, const std::string& finish_reason,
                         int64_t prompt_tokens, int64_t completion_tokens);
Json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                      const std::string& text, const Json& finish_reason, bool with_usage_null);

// Compares secrets in time independent of where they differ.
bool constant_time_equal(const std::string& a, const std::string& b);

}  // namespace mgm::serve
