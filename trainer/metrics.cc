#include "trainer/metrics.h"

#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"

namespace mgm::trainer {

std::string py_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits in scientific form, then laid out as Python's float_repr_style
  // 'short' does: fixed notation for decimal exponents in [-4, 16).
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string s(buf, r.ptr);
  std::string sign;
  if (s[0] == '-') {
    sign = "-";
    s = s.substr(1);
  }
  const size_t e = s.find('e');
  std::string digits = s.substr(0, 1) + (e > 2 ? s.substr(2, e - 2) : "");
  const int exp = std::stoi(s.substr(e + 1));
  if (exp < -4 || exp >= 16) {
    std::string m = digits.substr(0, 1);
    if (digits.size() > 1) m += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return sign + m + eb;
  }
  std::string out;
  if (exp < 0) {
    out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else if (static_cast<size_t>(exp + 1) >= digits.size()) {
    out = digits + std::string(static_cast<size_t>(exp + 1) - digits.size(), '0') + ".0";
  } else {
    out = digits.substr(0, static_cast<size_t>(exp + 1)) + "." + digits.substr(static_cast<size_t>(exp + 1));
  }
  return sign + out;
}

double py_round(double v, int ndigits) {
  if (!std::isfinite(v)) return v;
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", ndigits, v);  // glibc rounds the exact binary value
  return std::strtod(buf, nullptr);
}

std::string hf_log_line(double loss, double grad_norm, double learning_rate, double epoch) {
  return str_cat("{'loss': ", py_float(py_round(loss, 4)), ", 'grad_norm': ", py_float(grad_norm),
                 ", 'learning_rate': ", py_float(learning_rate), ", 'epoch': ",
                 py_float(py_round(epoch, 2)), "}");
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof(buf), "%02lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  return buf;
}

MetricsLog::MetricsLog(const std::string& path, int64_t resume_step) : path_(path) {
  std::string kept;
  if (path_exists(path)) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      if (trim(line).empty()) continue;
      Json j;
      try {
        j = Json::parse(line);
      } catch (const std::exception&) {
        continue;  // a line torn by a kill -9 mid-write
      }
      if (j.contains("step") && j["step"].is_number() && j["step"].get<int64_t>() > resume_step)
        continue;
      kept += line + "\n";
      if (j.contains("loss") && j.contains("step") && j["loss"].is_number())
        losses_.emplace_back(j["step"].get<double>(), j["loss"].get<double>());
    }
  }
  write_file_atomic(path, kept);
  f_ = std::fopen(path.c_str(), "a");
  if (!f_) throw Error(str_cat("cannot open ", path, " for appending"));
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::append(const Json& j) {
  const std::string line = j.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    throw Error(str_cat("cannot write ", path_));
  if (j.contains("loss") && j.contains("step") && j["loss"].is_number())
    losses_.emplace_back(j["step"].get<double>(), j["loss"].get<double>());
}

ProgressMode parse_progress_mode(const std::string& s) {
  if (s == "bar") return ProgressMode::kBar;
  if (s == "plain") return ProgressMode::kPlain;
  if (s == "none") return ProgressMode::kNone;
  if (s == "auto") return isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kPlain;
  throw UsageError(str_cat("--progress: expected auto, bar, plain or none, got '", s, "'"));
}

Progress::Progress(ProgressMode mode, int64_t total_steps, int64_t start_step)
    : mode_(mode), total_(total_steps), start_(start_step), current_(start_step) {
  t0_ = last_draw_ = std::chrono::steady_clock::now();
}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}
double Progress::samples_per_second() const {
  const double t = elapsed();
  return t > 0 ? static_cast<double>(samples_) / t : 0.0;
}
double Progress::tokens_per_second() const {
  const double t = elapsed();
  return t > 0 ? static_cast<double>(tokens_) / t : 0.0;
}

void Progress::step(int64_t step, int64_t samples, int64_t tokens) {
  current_ = step;
  samples_ += samples;
  tokens_ += tokens;
  draw(step == total_);
}

void Progress::clear() {
  if (mode_ == ProgressMode::kBar && drawn_) {
    std::fputs("\r\033[K", stderr);
    drawn_ = false;
  }
}

void Progress::draw(bool force) {
  if (mode_ != ProgressMode::kBar) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(200)) return;
  last_draw_ = now;
  const double frac = total_ > 0 ? static_cast<double>(current_) / static_cast<double>(total_) : 1.0;
  constexpr int kWidth = 24;
  const int fill = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(fill), '#');
  bar += std::string(static_cast<size_t>(kWidth - fill), '.');
  char buf[256];
  std::snprintf(buf, sizeof(buf), "\r\033[K%3d%% [%s] %lld/%lld [%s<%s, %.2f samples/s, %.0f tok/s]",
                static_cast<int>(frac * 100), bar.c_str(), static_cast<long long>(current_),
                static_cast<long long>(total_), format_duration(elapsed()).c_str(),
                format_duration(eta()).c_str(), samples_per_second(), tokens_per_second());
  std::fputs(buf, stderr);
  std::fflush(stderr);
  drawn_ = true;
}

double Progress::eta() const {
  const double done = static_cast<double>(current_ - start_);
  const double rate = elapsed() > 0 ? done / elapsed() : 0.0;
  return rate > 0 ? static_cast<double>(total_ - current_) / rate : NAN;
}

std::string Progress::status_line() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "step %lld/%lld (%d%%) | %.2f samples/s | %.0f tokens/s | %s elapsed | ETA %s",
                static_cast<long long>(current_), static_cast<long long>(total_),
                total_ > 0 ? static_cast<int>(100 * current_ / total_) : 100, samples_per_second(),
                tokens_per_second(), format_duration(elapsed()).c_str(), format_duration(eta()).c_str());
  return buf;
}

void Progress::print(const std::string& line) {
  clear();
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
  draw(true);
}

void Progress::finish() {
  if (mode_ == ProgressMode::kBar && drawn_) {
    std::fputs("\n", stderr);
    drawn_ = false;
  }
}

}  // namespace mgm::trainer
