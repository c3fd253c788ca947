// Helpers shared by the test executables: a fresh temp folder per test and running the venv's
// Python for interop checks.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>

namespace mgm::test {

// A new empty folder under $MGM_TEST_TMP (or /tmp), unique per call.
std::string temp_dir(const std::string& tag);
// Runs `python script args...` with the venv python; returns exit code, output in *out.
int run_python(const std::string& script_and_args, std::string* out);
// Runs a shell command line; returns its exit code, stdout+stderr in *out.
int run_command(const std::string& command, std::string* out);
std::string source_dir();

// The message of the exception `f` throws, or "(no error)" when it throws none.
std::string error_of(const std::function<void()>& f);

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read back, closed), for a
// server that must be told its port in advance (a c10d store's MASTER_PORT). Prefer letting the
// server bind port 0 and report it (as the mock servers do) where that is possible.
int free_port();

// Starts `command` through /bin/sh (exec'd, so the pid is the command's), stdout+stderr to `log`.
pid_t spawn(const std::string& command, const std::string& log);
// Waits for `pid` up to `limit`: its exit code (128 + signal when killed by one), or -1 when it was
// still running then (it is killed and reaped). `seconds`, when given, gets the time it took.
int wait_exit(pid_t pid, std::chrono::seconds limit, double* seconds = nullptr);
// Waits up to `limit` for `path` to exist.
bool wait_for_file(const std::string& path, std::chrono::seconds limit);
// kill -9 at an unpredictable moment: waits until `path` exists while `pid` runs, then sends
// SIGKILL after a random 0..max_delay_ms. True when it was killed so; false when the process
// ended first or `limit` passed (it is killed then). The process is reaped either way.
// A train_mgm under test runs with MGM_TEST_STALL_AFTER_STEP=N (N a step or two after the one
// whose file is awaited): it blocks after step N until the kill comes, so the outcome never
// depends on the machine's load (a loaded or idle machine once let tiny runs finish first).
bool kill_when_file_appears(pid_t pid, const std::string& path, std::chrono::seconds limit,
                            int max_delay_ms = 300);

}  // namespace mgm::test
