#include "common/log.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <mutex>

namespace mgm::log {
namespace {

Level level_from_env() {
  const char* v = std::getenv("MGM_LOG_LEVEL");
  if (v == nullptr) return Level::kInfo;
  if (std::strcmp(v, "debug") == 0) return Level::kDebug;
  if (std::strcmp(v, "warn") == 0) return Level::kWarn;
  if (std::strcmp(v, "error") == 0) return Level::kError;
  return Level::kInfo;
}

std::atomic<int>& current() {
  static std::atomic<int> l{static_cast<int>(level_from_env())};
  return l;
}

std::mutex& out_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

Level level() { return static_cast<Level>(current().load(std::memory_order_relaxed)); }
void set_level(Level l) { current().store(static_cast<int>(l)); }

void write(Level l, const std::string& message) {
  static const char* const kNames[] = {"debug", "info", "warning", "error"};
  std::lock_guard<std::mutex> lock(out_mutex());
  std::fprintf(stderr, "[mgm %s] %s\n", kNames[static_cast<int>(l)], message.c_str());
  std::fflush(stderr);
}

}  // namespace mgm::log
