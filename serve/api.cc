#include "serve/api.h"

#include <ATen/ops/stack.h>

#include <chrono>
#include <cmath>
#include <random>

#include "common/files.h"
#include "common/strings.h"
#include "data/collator.h"
#include "data/conversation.h"
#include "data/image.h"
#include "eval/mmbench_runner.h"

namespace mgm::serve {
namespace {

ApiError bad(const std::string& param, const std::string& message) {
  return ApiError(400, message, "invalid_request_error", param);
}

const char* type_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    default: return "a number";
  }
}

Json parse_body(const std::string& body) {
  Json j;
  try {
    j = Json::parse(body);
  } catch (const std::exception& e) {
    throw bad("", str_cat("the request body is not valid JSON: ", e.what()));
  }
  if (!j.is_object()) throw bad("", str_cat("the request body must be a JSON object, got ", type_name(j)));
  return j;
}

bool present(const Json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

double number_field(const Json& j, const char* key, double dflt, double lo, double hi) {
  if (!present(j, key)) return dflt;
  const Json& v = j.at(key);
  if (!v.is_number()) throw bad(key, str_cat("'", key, "' must be a number, got ", type_name(v)));
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi))
    throw bad(key, str_cat("'", key, "' must be in [", lo, ", ", hi, "], got ", v.dump()));
  return x;
}

int64_t int_field(const Json& j, const char* key, int64_t dflt, int64_t lo, int64_t hi) {
  if (!present(j, key)) return dflt;
  const Json& v = j.at(key);
  if (!v.is_number_integer())
    throw bad(key, str_cat("'", key, "' must be an integer, got ", v.is_number() ? v.dump() : type_name(v)));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    throw bad(key, str_cat("'", key, "' must be at most ", hi, ", got ", v.dump()));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    throw bad(key, str_cat("'", key, "' must be in [", lo, ", ", hi, "], got ", x));
  return x;
}

bool bool_field(const Json& j, const char* key, bool dflt) {
  if (!present(j, key)) return dflt;
  const Json& v = j.at(key);
  if (!v.is_boolean()) throw bad(key, str_cat("'", key, "' must be a boolean, got ", type_name(v)));
  return v.get<bool>();
}

// The fields every generation request shares: model, stream, sampling.
void parse_common(const Json& j, ApiRequest& r) {
  if (present(j, "model")) {
    if (!j.at("model").is_string()) throw bad("model", "'model' must be a string");
    r.model = j.at("model").get<std::string>();
  }
  r.stream = bool_field(j, "stream", false);
  if (present(j, "stream_options")) {
    const Json& so = j.at("stream_options");
    if (!so.is_object()) throw bad("stream_options", "'stream_options' must be an object");
    r.include_usage = bool_field(so, "include_usage", false);
  }
  auto& sp = r.engine.sampling;
  // OpenAI's defaults: temperature 1, top_p 1; greedy is temperature 0.
  sp.temperature = number_field(j, "temperature", 1.0, 0.0, 2.0);
  sp.top_p = number_field(j, "top_p", 1.0, 0.0, 1.0);
  if (sp.top_p <= 0.0) throw bad("top_p", "'top_p' must be in (0, 1], got 0");
  sp.top_k = int_field(j, "top_k", -1, -1, 1 << 30);  // vLLM's extension; -1 (or 0): off
  if (sp.top_k < 0) sp.top_k = 0;
  const int64_t big = int64_t{1} << 40;
  for (const char* key : {"max_tokens", "max_completion_tokens"})
    if (present(j, key)) sp.max_tokens = int_field(j, key, 0, 1, big);
  if (present(j, "seed")) {
    sp.seed = static_cast<uint64_t>(int_field(j, "seed", 0, -big, big));
    sp.has_seed = true;
  }
  if (int_field(j, "n", 1, 1, 1 << 20) != 1)
    throw bad("n", "only n = 1 is supported (one choice per request)");
  if (present(j, "stop")) {
    const Json& s = j.at("stop");
    if (s.is_string()) {
      sp.stop = {s.get<std::string>()};
    } else if (s.is_array()) {
      if (s.size() > 16) throw bad("stop", "'stop' takes at most 16 strings");
      for (const auto& x : s) {
        if (!x.is_string()) throw bad("stop", "'stop' must be a string or an array of strings");
        sp.stop.push_back(x.get<std::string>());
      }
    } else {
      throw bad("stop", str_cat("'stop' must be a string or an array of strings, got ", type_name(s)));
    }
    sp.stop.erase(std::remove(sp.stop.begin(), sp.stop.end(), std::string()), sp.stop.end());
  }
  sp.ignore_eos = bool_field(j, "ignore_eos", false);  // vLLM's extension, for benchmarks
  if (bool_field(j, "logprobs", false) || present(j, "top_logprobs"))
    throw bad("logprobs", "logprobs are not supported by this server");
  for (const char* key : {"presence_penalty", "frequency_penalty"})
    if (number_field(j, key, 0.0, -2.0, 2.0) != 0.0)
      throw bad(key, str_cat("'", key, "' is not supported by this server (only 0)"));
}

std::string reject_image_token(const std::string& text, const std::string& param) {
  if (text.find(data::kImageToken) != std::string::npos)
    throw bad(param, str_cat("the text contains '", data::kImageToken,
                             "', which this model reserves for images; send images as "
                             "image_url parts"));
  return text;
}

}  // namespace

std::string ApiError::body() const {
  Json e = {{"message", what()}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return Json{{"error", e}}.dump();
}

at::Tensor load_request_image(const std::string& url, const eval::EvalModel& m,
                              const ApiLimits& limits, const std::string& where) {
  data::RgbImage img;
  try {
    if (starts_with(url, "data:")) {
      const size_t comma = url.find(',');
      if (comma == std::string::npos || url.substr(0, comma).find(";base64") == std::string::npos)
        throw bad(where, str_cat(where, ": a data: URL must be data:<type>;base64,<data>"));
      const std::vector<uint8_t> bytes = eval::decode_base64(url.substr(comma + 1));
      img = data::decode_image_bytes(bytes.data(), bytes.size(), where);
    } else if (starts_with(url, "http://") || starts_with(url, "https://")) {
      throw bad(where, str_cat(where,
                               ": this server fetches no remote URLs; send the image as a data: "
                               "URL (base64) or as a file under --allowed-local-media-path"));
    } else {
      std::string path = url;
      if (starts_with(path, "file://")) path = path.substr(7);
      if (limits.allowed_local_media_path.empty())
        throw bad(where, str_cat(where, ": local files are refused (start the server with "
                                        "--allowed-local-media-path DIR to allow those under DIR)"));
      if (path.empty() || path[0] != '/')
        throw bad(where, str_cat(where, ": a local image must be an absolute path or file:// URL"));
      // Resolved (symlinks and '..' included) before the check, so nothing escapes the folder.
      const std::string real = resolved_path(path);
      if (!path_within(real, resolved_path(limits.allowed_local_media_path)))
        throw bad(where, str_cat(where, ": ", path, " is outside --allowed-local-media-path"));
      img = data::decode_image_file(real);
    }
  } catch (const ApiError&) {
    throw;
  } catch (const std::exception& e) {
    throw bad(where, str_cat(where, ": the image cannot be used: ", e.what()));
  }
  return eval::image_aux_tensor(m, img);
}

ApiRequest parse_chat_request(const std::string& body, const eval::EvalModel& m,
                              const ApiLimits& limits) {
  const Json j = parse_body(body);
  ApiRequest r;
  parse_common(j, r);
  if (!j.contains("messages")) throw bad("messages", "'messages' is required");
  const Json& msgs = j.at("messages");
  if (!msgs.is_array() || msgs.empty())
    throw bad("messages", "'messages' must be a non-empty array of messages");

  struct Msg {
    std::string role;  // "human" | "gpt"
    std::string text;
    int64_t images = 0;
  };
  std::vector<Msg> turns;
  std::string system;
  std::vector<at::Tensor> auxes;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const std::string where = str_cat("messages[", i, "]");
    const Json& msg = msgs[i];
    if (!msg.is_object()) throw bad(where, str_cat(where, " must be an object"));
    if (!msg.contains("role") || !msg.at("role").is_string())
      throw bad(where + ".role", str_cat(where, ".role must be a string"));
    const std::string role = msg.at("role").get<std::string>();
    if (role != "system" && role != "developer" && role != "user" && role != "assistant")
      throw bad(where + ".role", str_cat("unknown role '", role, "' in ", where,
                                         " (supported: system, user, assistant)"));
    std::vector<std::string> texts;
    int64_t images = 0;
    const Json content = msg.contains("content") ? msg.at("content") : Json();
    if (content.is_string()) {
      texts.push_back(content.get<std::string>());
    } else if (content.is_array()) {
      for (size_t k = 0; k < content.size(); ++k) {
        const std::string pw = str_cat(where, ".content[", k, "]");
        const Json& part = content[k];
        if (!part.is_object() || !part.contains("type") || !part.at("type").is_string())
          throw bad(pw, str_cat(pw, " must be an object with a string 'type'"));
        const std::string type = part.at("type").get<std::string>();
        if (type == "text") {
          if (!part.contains("text") || !part.at("text").is_string())
            throw bad(pw + ".text", str_cat(pw, ".text must be a string"));
          texts.push_back(part.at("text").get<std::string>());
        } else if (type == "image_url") {
          if (role != "user") throw bad(pw, str_cat(pw, ": only user messages can hold images"));
          const Json iu = part.contains("image_url") ? part.at("image_url") : Json();
          const Json url = iu.is_object() && iu.contains("url") ? iu.at("url") : iu;
          if (!url.is_string())
            throw bad(pw + ".image_url", str_cat(pw, ".image_url.url must be a string"));
          if (static_cast<int64_t>(auxes.size()) >= limits.max_images)
            throw bad(pw, str_cat("at most ", limits.max_images,
                                  " image(s) per request (--limit-mm-per-prompt image=N)"));
          auxes.push_back(load_request_image(url.get<std::string>(), m, limits, pw));
          ++images;
        } else {
          throw bad(pw + ".type", str_cat("unsupported content part type '", type, "' in ", pw,
                                          " (supported: text, image_url)"));
        }
      }
    } else if (!(content.is_null() && role == "assistant")) {
      throw bad(where + ".content",
                str_cat(where, ".content must be a string or an array of parts, got ",
                        type_name(content)));
    }
    std::string text = reject_image_token(join(texts, "\n"), where + ".content");
    if (role == "system" || role == "developer") {
      system += (system.empty() ? "" : "\n\n") + text;
      continue;
    }
    const std::string from = role == "user" ? "human" : "gpt";
    if (!turns.empty() && turns.back().role == from && images == 0 && turns.back().images == 0) {
      turns.back().text += "\n\n" + text;  // consecutive messages of one role form one turn
      continue;
    }
    if (!turns.empty() && turns.back().role == from)
      throw bad(where, str_cat(where, ": two ", role, " messages in a row with images; "
                                      "user and assistant messages must alternate"));
    turns.push_back({from, text, images});
  }
  if (turns.empty() || turns.front().role != "human")
    throw bad("messages", "the conversation must start with a user message (after any system message)");
  if (turns.back().role != "human")
    throw bad("messages", "the last message must be a user message");
  if (!system.empty()) turns.front().text = system + "\n\n" + turns.front().text;

  // Images lead their turn, as in `mgm eval` (and MGM's model_vqa_loader).
  const bool wrap = m.model->config().mm_use_im_start_end;
  const std::string image_prefix =
      wrap ? std::string("<im_start>") + data::kImageToken + "<im_end>\n"
           : std::string(data::kImageToken) + "\n";
  std::vector<data::Turn> history;
  for (const auto& t : turns) {
    std::string v;
    for (int64_t k = 0; k < t.images; ++k) v += image_prefix;
    history.push_back({t.role, v + t.text});
  }
  const std::string question = history.back().value;
  history.pop_back();
  r.prompt_text = data::render_chat_prompt(m.conv_template, history, question);
  r.engine.prompt = auxes.empty() ? m.tokenizer.encode(r.prompt_text)
                                  : m.tokenizer.encode_with_image(r.prompt_text);
  if (!auxes.empty()) {
    const at::Tensor aux = at::stack(auxes, 0);
    // The LR image is the bilinear downsample of the normalised aux image, as in training.
    r.engine.images = data::downsample_bilinear(aux, m.model->config().clip.image_size);
    r.engine.images_aux = aux;
  }
  return r;
}

ApiRequest parse_completion_request(const std::string& body, const eval::EvalModel& m) {
  const Json j = parse_body(body);
  ApiRequest r;
  parse_common(j, r);
  if (!j.contains("prompt")) throw bad("prompt", "'prompt' is required");
  Json p = j.at("prompt");
  if (p.is_array() && p.size() == 1 && p[0].is_string()) p = p[0];
  if (!p.is_string()) throw bad("prompt", "'prompt' must be a string (one prompt per request)");
  if (bool_field(j, "echo", false)) throw bad("echo", "'echo' is not supported");
  if (present(j, "suffix")) throw bad("suffix", "'suffix' is not supported");
  r.prompt_text = reject_image_token(p.get<std::string>(), "prompt");
  r.engine.prompt = m.tokenizer.encode(r.prompt_text);
  return r;
}

std::string new_request_id(const std::string& prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = prefix + "-";
  for (int i = 0; i < 2; ++i) {
    uint64_t v = rng();
    for (int k = 0; k < 16; ++k, v >>= 4) id.push_back(hex[v & 15]);
  }
  return id;
}

Json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

Json chat_response(const std::string& id, int64_t created, const std::string& model,
                   const std::string& text, const std::string& finish_reason,
                   int64_t prompt_tokens, int64_t completion_tokens) {
  Json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", text}}},
                 {"logprobs", nullptr},
                 {"finish_reason", finish_reason}};
  return {{"id", id},           {"object", "chat.completion"},
          {"created", created}, {"model", model},
          {"choices", Json::array({choice})},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

Json chat_chunk(const std::string& id, int64_t created, const std::string& model,
                const Json& delta, const Json& finish_reason, bool with_usage_null) {
  Json choice = {{"index", 0}, {"delta", delta}, {"logprobs", nullptr},
                 {"finish_reason", finish_reason}};
  Json c = {{"id", id},           {"object", "chat.completion.chunk"},
            {"created", created}, {"model", model},
            {"choices", Json::array({choice})}};
  if (with_usage_null) c["usage"] = nullptr;
  return c;
}

Json completion_response(const std::string& id, int64_t created, const std::string& model,
                         const std::string& text, const std::string& finish_reason,
                         int64_t prompt_tokens, int64_t completion_tokens) {
  Json choice = {{"index", 0}, {"text", text}, {"logprobs", nullptr},
                 {"finish_reason", finish_reason}};
  return {{"id", id},           {"object", "text_completion"},
          {"created", created}, {"model", model},
          {"choices", Json::array({choice})},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

Json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                      const std::string& text, const Json& finish_reason, bool with_usage_null) {
  Json choice = {{"index", 0}, {"text", text}, {"logprobs", nullptr},
                 {"finish_reason", finish_reason}};
  Json c = {{"id", id},           {"object", "text_completion"},
            {"created", created}, {"model", model},
            {"choices", Json::array({choice})}};
  if (with_usage_null) c["usage"] = nullptr;
  return c;
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  // Every byte of the longer string is looked at whatever the contents; only the length is
  // revealed by timing.
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = static_cast<unsigned char>(diff | (x ^ y));
  }
  return diff == 0;
}

}  // namespace mgm::serve
