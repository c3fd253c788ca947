#include "tests_util.h"

#include "common/files.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

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

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  return ok ? ntohs(a.sin_port) : 0;
}

pid_t spawn(const std::string& command, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + command + " > " + log + " 2>&1").c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid, std::chrono::seconds limit, double* seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  int st = 0;
  while (std::chrono::steady_clock::now() - t0 < limit) {
    if (::waitpid(pid, &st, WNOHANG) == pid) {
      if (seconds)
        *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &st, 0);
  return -1;
}

bool wait_for_file(const std::string& path, std::chrono::seconds limit) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < limit) {
    if (mgm::path_exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

bool kill_when_file_appears(pid_t pid, const std::string& path, std::chrono::seconds limit,
                            int max_delay_ms) {
  std::random_device rd;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  bool killed = false;
  int st = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (mgm::path_exists(path)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(rd() % (max_delay_ms + 1)));
      killed = true;
      break;
    }
    if (::waitpid(pid, &st, WNOHANG) == pid) return false;  // ended before it could be killed
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &st, 0);
  return killed;
}

}  // namespace mgm::test
