#include "tests_util.h"

#include "common/files.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace mgm::test {

std::string source_dir() { return MGM_SOURCE_DIR; }

std::string temp_dir(const std::string& tag) {
  static std::atomic<int> n{0};
  const char* base = std::getenv("MGM_TEST_TMP");
  std::string root = base ? base : "/tmp/mgm_tests";
  std::string d = root + "/" + tag + "." + std::to_string(::getpid()) + "." + std::to_string(n++);
  mgm::remove_tree(d);
  std::filesystem::create_directories(d);
  return d;
}

int run_python(const std::string& script_and_args, std::string* out) {
  return run_command(std::string(MGM_PYTHON) + " " + script_and_args, out);
}

int run_command(const std::string& command, std::string* out) {
  const std::string cmd = command + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  std::array<char, 4096> buf{};
  std::string s;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) s.append(buf.data(), n);
  int rc = ::pclose(p);
  if (out) *out = s;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace mgm::test
