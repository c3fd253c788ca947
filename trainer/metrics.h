// What a run shows and records: the HF Trainer's per-step line ({'loss': ..., 'grad_norm': ...,
// 'learning_rate': ..., 'epoch': ...}), a metrics JSONL file that stays consistent across
// resumes, and a progress bar with throughput and ETA on a terminal (plain lines otherwise).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/json.h"

namespace mgm::trainer {

// repr() of a Python float (shortest round-trip digits; scientific below 1e-4 and from 1e16).
std::string py_float(double v);
// Python's round(v, ndigits) for the values HF rounds (correctly rounded decimal).
double py_round(double v, int ndigits);
// HF 4.38's log line for one logging step.
std::string hf_log_line(double loss, double grad_norm, double learning_rate, double epoch);
// "1:02:03" / "02:03" as tqdm prints durations.
std::string format_duration(double seconds);

// metrics.jsonl: one JSON object per line, flushed at once. Opening for a run that resumes at
// `resume_step` drops lines of later steps (written after that checkpoint by the interrupted
// run), so the file describes exactly one trajectory.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, int64_t resume_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void append(const Json& j);
  // The (step, loss) pairs of every line with both keys, for the loss plot.
  const std::vector<std::pair<double, double>>& losses() const { return losses_; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  std::vector<std::pair<double, double>> losses_;
};

enum class ProgressMode { kBar, kPlain, kNone };
ProgressMode parse_progress_mode(const std::string& s);  // auto picks bar on a terminal

// A one-line bar on stderr (redrawn at most ~5 times a second) or nothing, plus lines printed
// above it.
class Progress {
 public:
  Progress(ProgressMode mode, int64_t total_steps, int64_t start_step);
  // After each optimizer step: samples and tokens consumed by that step.
  void step(int64_t step, int64_t samples, int64_t tokens);
  // A line printed to stdout (the bar is cleared and redrawn below it).
  void print(const std::string& line);
  // Throughput since the (re)start.
  double samples_per_second() const;
  double tokens_per_second() const;
  double elapsed() const;
  // "step 12/100 (12%) | 3.21 samples/s | 850 tokens/s | 00:34 elapsed | ETA 04:10"
  std::string status_line() const;
  void finish();

 private:
  void draw(bool force);
  double eta() const;
  void clear();
  ProgressMode mode_;
  int64_t total_, start_, current_;
  int64_t samples_ = 0, tokens_ = 0;
  std::chrono::steady_clock::time_point t0_, last_draw_;
  bool drawn_ = false;
};

}  // namespace mgm::trainer
