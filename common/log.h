// Minimal leveled logging to stderr; the level comes from MGM_LOG_LEVEL (debug|info|warn|error).
#pragma once

#include <string>

#include "common/error.h"

namespace mgm::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

Level level();
void set_level(Level l);
void write(Level l, const std::string& message);

template <typename... Args>
void debug(Args&&... a) {
  if (level() <= Level::kDebug) write(Level::kDebug, str_cat(std::forward<Args>(a)...));
}
template <typename... Args>
void info(Args&&... a) {
  if (level() <= Level::kInfo) write(Level::kInfo, str_cat(std::forward<Args>(a)...));
}
template <typename... Args>
void warn(Args&&... a) {
  if (level() <= Level::kWarn) write(Level::kWarn, str_cat(std::forward<Args>(a)...));
}
template <typename... Args>
void error(Args&&... a) {
  write(Level::kError, str_cat(std::forward<Args>(a)...));
}

}  // namespace mgm::log
