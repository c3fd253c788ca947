// The generation engine behind `mgm serve`: continuous batching (iteration-level scheduling, as
// Orca, OSDI'22, and vLLM do it) over the Gemma slot KV cache.
//
// One engine thread owns the model. Requests wait in a bounded queue; at every iteration the
// thread admits waiting requests into free KV slots, spends a token budget on prefill (a long
// prompt is prefilled in chunks, so it never stalls the running decodes for long), then runs one
// decode step for every running sequence together. A sequence leaves the batch the moment it
// finishes or is cancelled, and its slot is reused at the next iteration. Memory is fixed at
// start: max_num_seqs slots of max_model_len positions.
//
// Each row attends only to its own slot and samples from its own generator, so a request's
// output does not depend on what else runs (greedy output equals models::generate's for the same
// prompt; the tests check it token for token).
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "models/gemma.h"
#include "models/mgm.h"

namespace mgm::models {

struct SamplingParams {
  int64_t max_tokens = 0;  // 0: whatever room max_model_len leaves after the prompt (vLLM's default)
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  int64_t top_k = 0;
  bool has_seed = false;  // else the engine draws a seed
  uint64_t seed = 0;
  std::vector<std::string> stop;         // stop strings (not part of the output)
  std::vector<int64_t> stop_token_ids;   // besides the engine's (eos)
  bool ignore_eos = false;  // the engine's stop tokens do not end it (vLLM's, for benchmarks)
};

struct EngineRequest {
  std::vector<int64_t> prompt;  // token ids with kImageTokenIndex markers
  // One image pair per marker, in order (CPU float, normalised as for mgm eval): the LR images
  // [N,3,s,s] and the aux (HR) images [N,3,S,S]; undefined when the prompt has no marker.
  at::Tensor images, images_aux;
  SamplingParams sampling;
};

// What the engine reports for a request, in order: zero or more deltas, then one final event.
struct StreamEvent {
  std::string text;  // new output text (UTF-8 complete; text that may begin a stop string is
                     // held back until it is known not to)
  int64_t new_tokens = 0;
  bool finished = false;
  std::string finish_reason;  // "stop" | "length" | "cancelled" | "error"
  std::string error;          // for "error"
  int64_t prompt_tokens = 0, completion_tokens = 0;
  std::vector<int64_t> token_ids;  // on the final event: every generated token
};

// The channel between the engine thread and whoever waits for a request.
class RequestStream {
 public:
  // The events that arrived, waiting up to `timeout` for at least one (empty on timeout).
  std::vector<StreamEvent> wait(std::chrono::milliseconds timeout);
  // Ends the request at the engine's next iteration (a final "cancelled" event follows).
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  friend class Engine;
  void push(StreamEvent e);
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;
  std::atomic<bool> cancelled_{false};
};

struct EngineOptions {
  int64_t max_num_seqs = 32;             // KV slots: sequences decoded together
  int64_t max_model_len = 2048;          // positions per slot: prompt + output
  int64_t max_num_batched_tokens = 2048; // tokens per iteration (prefill chunks + decodes)
  int64_t max_queue_len = 64;            // waiting requests beyond the running ones
  // A prompt longer than the model's tokenizer_model_max_length is cut to it, as MGM's
  // prepare_inputs_labels_for_multimodal cuts it (what evaluation reproduces), instead of
  // being refused (what a server does).
  bool truncate_prompts = false;
};

// Thrown by submit: the request cannot be served (kind "prompt_too_long", "queue_full",
// "draining", "invalid").
class EngineRefusal : public Error {
 public:
  EngineRefusal(std::string kind, const std::string& msg) : Error(msg), kind_(std::move(kind)) {}
  const std::string& kind() const { return kind_; }

 private:
  std::string kind_;
};

// Counters and histograms for /metrics (vLLM's names, with the mgm: prefix).
struct Histogram {
  std::vector<double> bounds;    // upper bounds, ascending (+Inf implied)
  std::vector<uint64_t> counts;  // per bound, not cumulative; counts.size() == bounds.size() + 1
  double sum = 0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b = {});
  void observe(double v);
};
struct EngineMetrics {
  int64_t running = 0, waiting = 0;
  uint64_t prompt_tokens = 0, generation_tokens = 0;
  std::map<std::string, uint64_t> finished;  // by finish reason
  Histogram time_to_first_token, time_per_output_token, e2e_latency;
  int64_t max_num_seqs = 0;
};

class Engine {
 public:
  using Decode = std::function<std::string(const std::vector<int64_t>&)>;
  // `decode` turns generated ids into text (special tokens skipped); `stop_token_ids` end every
  // request (the tokenizer's eos). Allocates the KV cache and starts the engine thread.
  Engine(MgmForCausalLM model, const EngineOptions& opts, Decode decode,
         std::vector<int64_t> stop_token_ids);
  ~Engine();  // cancels what is left and joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // The prompt's length in positions once each image marker becomes the image's tokens.
  int64_t prompt_positions(const std::vector<int64_t>& prompt) const;
  // Queues a request; throws EngineRefusal when it cannot be served.
  std::shared_ptr<RequestStream> submit(EngineRequest r);
  // Generates for every request and waits for all of them: the new tokens of each, in order
  // (the batch API `mgm eval` uses). Throws Error when one fails.
  std::vector<std::vector<int64_t>> generate_all(std::vector<EngineRequest> requests);
  // Refuses new requests from now on; the running and waiting ones go on.
  void begin_drain();
  // Waits until nothing runs or waits (true), or `timeout` passes (false).
  bool wait_idle(std::chrono::milliseconds timeout);
  // Cancels every running and waiting request.
  void cancel_all();
  EngineMetrics metrics() const;
  const EngineOptions& options() const { return opts_; }
  const MgmConfig& config() const { return model_->config(); }

 private:
  struct Seq;
  void loop();
  void iterate(std::vector<std::unique_ptr<Seq>>& running);
  void start_sequence(Seq& s);
  int64_t sample(Seq& s, const at::Tensor& logits);
  bool accept_token(Seq& s, int64_t token);
  void detokenize(Seq& s);
  void emit(Seq& s);
  void finish(Seq& s, const std::string& reason, const std::string& error = "");

  MgmForCausalLM model_;
  EngineOptions opts_;
  Decode decode_;
  std::vector<int64_t> stop_token_ids_;
  GemmaSlotCache cache_;
  std::vector<bool> slot_used_;

  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::unique_ptr<Seq>> waiting_;
  int64_t running_count_ = 0;
  bool stop_ = false, draining_ = false, cancel_running_ = false;
  uint64_t seed_state_;
  EngineMetrics metrics_;
  std::thread thread_;
};

}  // namespace mgm::models
