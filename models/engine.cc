#include "models/engine.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "common/strings.h"
#include "models/generate.h"

namespace mgm::models {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The bytes of U+FFFD, which the tokenizer's decode gives for an incomplete UTF-8 sequence (byte
// fallback pieces of a character not yet all generated).
const std::string kReplacement = "\xEF\xBF\xBD";

// How much of `text`'s end could still grow into one of `stops`.
size_t stop_prefix_overlap(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops)
    for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), text.size()); k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}

}  // namespace

Histogram::Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

std::vector<StreamEvent> RequestStream::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return !events_.empty(); });
  std::vector<StreamEvent> out(std::make_move_iterator(events_.begin()),
                               std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

void RequestStream::push(StreamEvent e) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

struct Engine::Seq {
  std::shared_ptr<RequestStream> stream = std::make_shared<RequestStream>();
  EngineRequest req;
  int64_t slot = -1;
  bool prefilling = true, done = false;
  at::Tensor embeds;  // [1, n, H] prompt embeddings while prefilling
  int64_t positions = 0, prefilled = 0;
  int64_t length = 0;  // positions held in the slot
  int64_t next = -1;   // the token the next decode step feeds
  std::vector<int64_t> out;
  std::string text;     // decode(out), cut at a stop string once one appears
  std::string emitted;  // what the stream has been sent
  // Incremental detokenization: `committed` is the text of out[0, read_offset) (complete
  // characters); the newest window is decoded from prefix_offset. full_decode: a tokenizer whose
  // windows do not decode as the whole does, decoded whole every step instead.
  std::string committed;
  size_t prefix_offset = 0, read_offset = 0;
  bool full_decode = false;
  size_t stop_scan_from = 0;  // no stop string starts before this byte of text
  int64_t unreported_tokens = 0;
  at::Generator gen;
  Clock::time_point arrival, last_token;
};

Engine::Engine(MgmForCausalLM model, const EngineOptions& opts, Decode decode,
               std::vector<int64_t> stop_token_ids)
    : model_(std::move(model)),
      opts_(opts),
      decode_(std::move(decode)),
      stop_token_ids_(std::move(stop_token_ids)),
      seed_state_(std::random_device{}()) {
  MGM_CHECK(opts_.max_num_seqs >= 1, "max_num_seqs must be >= 1, got ", opts_.max_num_seqs);
  MGM_CHECK(opts_.max_model_len >= 2, "max_model_len must be >= 2, got ", opts_.max_model_len);
  MGM_CHECK(opts_.max_num_batched_tokens >= opts_.max_num_seqs,
            "max_num_batched_tokens (", opts_.max_num_batched_tokens,
            ") must be >= max_num_seqs (", opts_.max_num_seqs, ")");
  MGM_CHECK(opts_.max_queue_len >= 1, "max_queue_len must be >= 1, got ", opts_.max_queue_len);
  const auto& g = model_->config().gemma;
  const at::Tensor w = model_->llm->model->embed_tokens->weight;
  cache_.allocate(g.num_hidden_layers, opts_.max_num_seqs, opts_.max_model_len,
                  g.num_key_value_heads, g.head_dim, w.options().requires_grad(false));
  slot_used_.assign(static_cast<size_t>(opts_.max_num_seqs), false);
  metrics_.max_num_seqs = opts_.max_num_seqs;
  metrics_.time_to_first_token = Histogram({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
                                            0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0});
  metrics_.time_per_output_token = Histogram(
      {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5});
  metrics_.e2e_latency =
      Histogram({0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0});
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t Engine::prompt_positions(const std::vector<int64_t>& prompt) const {
  const int64_t markers = std::count(prompt.begin(), prompt.end(), kImageTokenIndex);
  return static_cast<int64_t>(prompt.size()) - markers + markers * config().image_tokens();
}

std::shared_ptr<RequestStream> Engine::submit(EngineRequest r) {
  if (r.prompt.empty()) throw EngineRefusal("invalid", "the prompt is empty");
  const int64_t markers = std::count(r.prompt.begin(), r.prompt.end(), kImageTokenIndex);
  const int64_t images = r.images_aux.defined() ? r.images_aux.size(0) : 0;
  if (markers != images || (markers > 0 && (!r.images.defined() || r.images.size(0) != images)))
    throw EngineRefusal("invalid", str_cat("the prompt has ", markers, " image markers but ",
                                           images, " images were given"));
  auto& sp = r.sampling;
  if (sp.max_tokens < 0)
    throw EngineRefusal("invalid", str_cat("max_tokens must be at least 1, got ", sp.max_tokens));
  if (!(sp.temperature >= 0.0) || !(sp.top_p > 0.0 && sp.top_p <= 1.0) || sp.top_k < 0)
    throw EngineRefusal("invalid", "temperature must be >= 0, top_p in (0, 1], top_k >= 0");
  int64_t n = prompt_positions(r.prompt);
  if (opts_.truncate_prompts) n = std::min(n, config().tokenizer_model_max_length);
  if (sp.max_tokens == 0) sp.max_tokens = std::max<int64_t>(1, opts_.max_model_len - n);
  if (n + sp.max_tokens > opts_.max_model_len)
    throw EngineRefusal(
        "prompt_too_long",
        str_cat("This model's maximum context length is ", opts_.max_model_len,
                " tokens. However, you requested ", n + sp.max_tokens, " tokens (", n,
                " in the messages, ", sp.max_tokens,
                " in the completion). Please reduce the length of the messages or completion."));
  if (n > config().tokenizer_model_max_length)
    throw EngineRefusal(
        "prompt_too_long",
        str_cat("the prompt has ", n, " tokens, more than the model's tokenizer_model_max_length (",
                config().tokenizer_model_max_length, ") it was trained with"));
  auto s = std::make_unique<Seq>();
  s->req = std::move(r);
  s->positions = n;
  s->arrival = Clock::now();
  auto stream = s->stream;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (draining_ || stop_)
      throw EngineRefusal("draining", "the server is shutting down and takes no new requests");
    // Requests wait beyond the free slots (they are admitted at the next iteration).
    const int64_t free_slots = opts_.max_num_seqs - running_count_;
    if (static_cast<int64_t>(waiting_.size()) >= opts_.max_queue_len + free_slots)
      throw EngineRefusal("queue_full",
                          str_cat("the server is at capacity: ", running_count_, " running and ",
                                  waiting_.size(), " waiting (--max-queue-len ",
                                  opts_.max_queue_len, "); retry later"));
    if (!s->req.sampling.has_seed) {
      s->req.sampling.seed = seed_state_ = seed_state_ * 6364136223846793005ull + 1442695040888963407ull;
    }
    waiting_.push_back(std::move(s));
    metrics_.waiting = static_cast<int64_t>(waiting_.size());
  }
  cv_.notify_all();
  return stream;
}

std::vector<std::vector<int64_t>> Engine::generate_all(std::vector<EngineRequest> requests) {
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (auto& r : requests) streams.push_back(submit(std::move(r)));
  std::vector<std::vector<int64_t>> out(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    bool done = false;
    while (!done)
      for (auto& e : streams[i]->wait(std::chrono::milliseconds(500))) {
        if (!e.finished) continue;
        if (e.finish_reason == "error") {
          for (auto& s : streams) s->cancel();
          throw Error(str_cat("generation failed: ", e.error));
        }
        out[i] = std::move(e.token_ids);
        done = true;
      }
  }
  return out;
}

void Engine::begin_drain() {
  std::lock_guard<std::mutex> lk(mu_);
  draining_ = true;
}

bool Engine::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  return idle_cv_.wait_for(lk, timeout, [&] { return waiting_.empty() && running_count_ == 0; });
}

void Engine::cancel_all() {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& s : waiting_) s->stream->cancel();
  cancel_running_ = true;
  cv_.notify_all();
}

EngineMetrics Engine::metrics() const {
  std::lock_guard<std::mutex> lk(mu_);
  return metrics_;
}

void Engine::loop() {
  c10::InferenceMode inference;
  std::vector<std::unique_ptr<Seq>> running;
  while (true) {
    std::vector<std::unique_ptr<Seq>> admitted;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !waiting_.empty() || !running.empty(); });
      if (stop_) {
        for (auto& s : waiting_) running.push_back(std::move(s));
        waiting_.clear();
        lk.unlock();
        for (auto& s : running)
          if (!s->done) finish(*s, "cancelled");
        return;
      }
      if (cancel_running_) {
        for (auto& s : running) s->stream->cancel();
        cancel_running_ = false;
      }
      while (!waiting_.empty()) {
        // A request cancelled while it waited ends without taking a slot.
        if (!waiting_.front()->stream->cancelled()) {
          const auto free = std::find(slot_used_.begin(), slot_used_.end(), false);
          if (free == slot_used_.end()) break;
          *free = true;
          waiting_.front()->slot = free - slot_used_.begin();
          ++running_count_;
        }
        admitted.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
      }
      metrics_.waiting = static_cast<int64_t>(waiting_.size());
      metrics_.running = running_count_;
    }
    for (auto& s : admitted) {
      if (s->slot < 0) {
        finish(*s, "cancelled");
        continue;
      }
      try {
        start_sequence(*s);
      } catch (const std::exception& e) {
        finish(*s, "error", e.what());
      }
      running.push_back(std::move(s));
    }
    try {
      iterate(running);
    } catch (const std::exception& e) {
      // A failed forward (e.g. out of memory) ends the sequences it carried, not the server.
      std::fprintf(stderr, "engine: iteration failed: %s\n", e.what());
      for (auto& s : running)
        if (!s->done) finish(*s, "error", str_cat("generation failed: ", e.what()));
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& s : running)
        if (s->done) {
          slot_used_[static_cast<size_t>(s->slot)] = false;
          --running_count_;
        }
      running.erase(std::remove_if(running.begin(), running.end(),
                                   [](const std::unique_ptr<Seq>& s) { return s->done; }),
                    running.end());
      metrics_.running = running_count_;
      if (running_count_ == 0 && waiting_.empty()) idle_cv_.notify_all();
    }
  }
}

void Engine::start_sequence(Seq& s) {
  const auto& r = s.req;
  at::Tensor features;
  if (r.images_aux.defined() && r.images_aux.size(0) > 0) {
    const at::Tensor w = model_->vision_tower->vision_model->pre_layrnorm->weight;
    features = model_->encode_images(r.images.to(w.device(), w.scalar_type()),
                                     r.images_aux.to(w.device(), w.scalar_type()));
  }
  const int64_t n0 = static_cast<int64_t>(r.prompt.size());
  const at::Tensor ids = at::tensor(r.prompt, at::kLong).view({1, n0});
  const at::Tensor mask = at::ones({1, n0}, at::kBool);
  auto prepared = model_->prepare_inputs(ids, {}, mask, features);
  s.embeds = prepared.inputs_embeds;
  MGM_CHECK(s.embeds.size(1) == s.positions, "engine: the prompt prepared to ",
            s.embeds.size(1), " positions, expected ", s.positions);
  s.gen = at::make_generator<at::CPUGeneratorImpl>(r.sampling.seed);
  {
    std::lock_guard<std::mutex> lk(mu_);
    metrics_.prompt_tokens += static_cast<uint64_t>(s.positions);
  }
}

void Engine::iterate(std::vector<std::unique_ptr<Seq>>& running) {
  for (auto& s : running)
    if (!s->done && s->stream->cancelled()) finish(*s, "cancelled");
  auto& llm = model_->llm;
  const auto dev = llm->model->embed_tokens->weight.device();
  std::vector<Seq*> decoding;
  for (auto& s : running)
    if (!s->done && !s->prefilling) decoding.push_back(s.get());

  // Prefill, in arrival order, within what the decodes leave of the token budget (at least a
  // small chunk, so prefill always progresses).
  int64_t budget = std::max<int64_t>(opts_.max_num_batched_tokens - decoding.size(),
                                     std::min<int64_t>(opts_.max_num_batched_tokens, 32));
  for (auto& sp : running) {
    Seq& s = *sp;
    if (s.done || !s.prefilling) continue;
    if (budget <= 0) break;
    // A failure here (an out-of-memory prefill, a bad sample) ends this request only.
    try {
      const int64_t chunk = std::min(s.positions - s.prefilled, budget);
      GemmaSlotRows rows;
      rows.cache = &cache_;
      rows.slots = {s.slot};
      rows.starts = {s.prefilled};
      GemmaForwardOptions o;
      o.slot_rows = &rows;
      const at::Tensor hidden = llm->hidden_states(s.embeds.narrow(1, s.prefilled, chunk), o);
      s.prefilled += chunk;
      budget -= chunk;
      if (s.prefilled < s.positions) continue;
      s.prefilling = false;
      s.embeds = at::Tensor();
      s.length = s.positions;
      const at::Tensor logits = llm->logits(hidden.select(1, chunk - 1)).to(at::kFloat);
      accept_token(s, sample(s, logits));
    } catch (const std::exception& e) {
      finish(s, "error", str_cat("generation failed: ", e.what()));
    }
  }

  // One decode step for every sequence that was decoding when the iteration began.
  decoding.erase(std::remove_if(decoding.begin(), decoding.end(), [](Seq* s) { return s->done; }),
                 decoding.end());
  if (decoding.empty()) return;
  std::sort(decoding.begin(), decoding.end(), [](Seq* a, Seq* b) { return a->slot < b->slot; });
  const int64_t B = static_cast<int64_t>(decoding.size());
  GemmaSlotRows rows;
  rows.cache = &cache_;
  std::vector<int64_t> feed;
  for (Seq* s : decoding) {
    rows.slots.push_back(s->slot);
    rows.starts.push_back(s->length);
    feed.push_back(s->next);
  }
  GemmaForwardOptions o;
  o.slot_rows = &rows;
  const at::Tensor tok = at::tensor(feed, at::kLong).view({B, 1}).to(dev);
  const at::Tensor hidden = llm->hidden_states(llm->embed(tok), o);
  const at::Tensor logits = llm->logits(hidden.select(1, 0)).to(at::kFloat);
  for (int64_t b = 0; b < B; ++b) {
    Seq& s = *decoding[static_cast<size_t>(b)];
    ++s.length;
    try {
      accept_token(s, sample(s, logits.narrow(0, b, 1)));
    } catch (const std::exception& e) {
      finish(s, "error", str_cat("generation failed: ", e.what()));
    }
  }
}

int64_t Engine::sample(Seq& s, const at::Tensor& logits) {
  GenerationConfig g;
  // Temperatures this small are greedy (vLLM's _SAMPLING_EPS): dividing by them overflows.
  g.temperature = s.req.sampling.temperature < 1e-5 ? 0.0 : s.req.sampling.temperature;
  g.top_p = s.req.sampling.top_p;
  g.top_k = s.req.sampling.top_k;
  std::vector<at::Generator> gens{s.gen};
  return select_next_tokens(logits, g, gens)[0];
}

bool Engine::accept_token(Seq& s, int64_t token) {
  const auto now = Clock::now();
  const auto& sp = s.req.sampling;
  const bool stop_token =
      (!sp.ignore_eos &&
       std::find(stop_token_ids_.begin(), stop_token_ids_.end(), token) != stop_token_ids_.end()) ||
      std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), token) !=
          sp.stop_token_ids.end();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (s.out.empty() && !stop_token)
      metrics_.time_to_first_token.observe(seconds_between(s.arrival, now));
    else if (!s.out.empty())
      metrics_.time_per_output_token.observe(seconds_between(s.last_token, now));
    if (!stop_token) ++metrics_.generation_tokens;
  }
  s.last_token = now;
  if (stop_token) {
    finish(s, "stop");
    return false;
  }
  s.out.push_back(token);
  ++s.unreported_tokens;
  s.next = token;
  detokenize(s);
  if (!sp.stop.empty()) {
    // Only text that can hold a new occurrence is searched (committed text is final).
    const size_t from = std::min(s.stop_scan_from, s.text.size());
    const size_t cut = from + trim_at_stop_string(s.text.substr(from), sp.stop).size();
    if (cut != s.text.size()) {
      s.text.resize(cut);
      finish(s, "stop");
      return false;
    }
    size_t longest = 0;
    for (const auto& st : sp.stop) longest = std::max(longest, st.size());
    s.stop_scan_from = s.committed.size() + 1 > longest ? s.committed.size() + 1 - longest : 0;
  }
  if (static_cast<int64_t>(s.out.size()) >= sp.max_tokens) {
    finish(s, "length");
    return false;
  }
  emit(s);
  return true;
}

void Engine::detokenize(Seq& s) {
  // As vLLM's detokenize_incrementally: decode the window since the last complete text with and
  // without the newest tokens and take the difference, so each step costs the window, not the
  // whole output, and the text equals decode(out) (leading-space rules apply at the window's
  // start in both decodes alike). The window moves on once its text ends in whole characters.
  if (s.full_decode) {
    s.text = decode_(s.out);
    return;
  }
  const auto begin = s.out.begin() + static_cast<std::ptrdiff_t>(s.prefix_offset);
  const std::string before =
      s.read_offset > s.prefix_offset
          ? decode_(std::vector<int64_t>(begin, s.out.begin() + static_cast<std::ptrdiff_t>(s.read_offset)))
          : std::string();
  const std::string window = decode_(std::vector<int64_t>(begin, s.out.end()));
  if (window.compare(0, before.size(), before) != 0) {
    s.full_decode = true;
    s.text = decode_(s.out);
    return;
  }
  const std::string tail = window.substr(before.size());
  s.text = s.committed + tail;
  if (!tail.empty() && (tail.size() < kReplacement.size() ||
                        tail.compare(tail.size() - kReplacement.size(), kReplacement.size(),
                                     kReplacement) != 0)) {
    s.committed = s.text;
    s.prefix_offset = s.read_offset;
    s.read_offset = s.out.size();
  }
}

void Engine::emit(Seq& s) {
  // Hold back an incomplete UTF-8 character and text that may still become a stop string.
  size_t safe = s.text.size();
  while (safe >= kReplacement.size() &&
         s.text.compare(safe - kReplacement.size(), kReplacement.size(), kReplacement) == 0)
    safe -= kReplacement.size();
  safe -= std::min(safe, stop_prefix_overlap(s.text.substr(0, safe), s.req.sampling.stop));
  // Sentencepiece decoding is prefix-stable for growing id lists; should it ever not be, what
  // was sent stays and the rest follows once the texts agree again.
  if (safe <= s.emitted.size() || s.text.compare(0, s.emitted.size(), s.emitted) != 0) return;
  StreamEvent e;
  e.text = s.text.substr(s.emitted.size(), safe - s.emitted.size());
  s.emitted = s.text.substr(0, safe);
  e.new_tokens = s.unreported_tokens;
  s.unreported_tokens = 0;
  s.stream->push(std::move(e));
}

void Engine::finish(Seq& s, const std::string& reason, const std::string& error) {
  if (s.done) return;
  s.done = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++metrics_.finished[reason];
    metrics_.e2e_latency.observe(seconds_between(s.arrival, Clock::now()));
  }
  if (reason == "error") {
    StreamEvent e;
    e.finished = true;
    e.finish_reason = reason;
    e.error = error;
    e.prompt_tokens = s.positions;
    e.completion_tokens = static_cast<int64_t>(s.out.size());
    s.stream->push(std::move(e));
    return;
  }
  // The final event carries the rest of the text and the usage.
  StreamEvent e;
  if (s.text.size() > s.emitted.size() && s.text.compare(0, s.emitted.size(), s.emitted) == 0)
    e.text = s.text.substr(s.emitted.size());
  s.emitted = s.text;
  e.new_tokens = s.unreported_tokens;
  s.unreported_tokens = 0;
  e.finished = true;
  e.finish_reason = reason;
  e.prompt_tokens = s.positions;
  e.completion_tokens = static_cast<int64_t>(s.out.size());
  e.token_ids = s.out;
  s.stream->push(std::move(e));
}

}  // namespace mgm::models
