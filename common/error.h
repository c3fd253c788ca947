// Exceptions used across the project. Every error names the thing that is wrong (file, key,
// line, sample id, expected vs found); main() turns them into one line on stderr.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mgm {

// Any failure caused by input, files or configuration.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Bad command-line usage (exit code 2).
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& what) : Error(what) {}
};

// A file whose content is malformed; the message starts with the path.
class FormatError : public Error {
 public:
  FormatError(const std::string& path, const std::string& what)
      : Error(path + ": " + what), path_(path) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// Builds a message from streamable parts: str_cat("expected ", n, " got ", m).
template <typename... Args>
std::string str_cat(Args&&... args) {
  return detail::concat(std::forward<Args>(args)...);
}

}  // namespace mgm

// Throws mgm::Error with the streamed message when cond is false.
#define MGM_CHECK(cond, ...)                                  \
  do {                                                        \
    if (!(cond)) throw ::mgm::Error(::mgm::str_cat(__VA_ARGS__)); \
  } while (0)

// Throws mgm::FormatError(path, message) when cond is false.
#define MGM_CHECK_FORMAT(cond, path, ...)                                   \
  do {                                                                      \
    if (!(cond)) throw ::mgm::FormatError((path), ::mgm::str_cat(__VA_ARGS__)); \
  } while (0)
