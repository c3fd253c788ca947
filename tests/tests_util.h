// Helpers shared by the test executables: a fresh temp folder per test and running the venv's
// Python for interop checks.
#pragma once

#include <string>

namespace mgm::test {

// A new empty folder under $MGM_TEST_TMP (or /tmp), unique per call.
std::string temp_dir(const std::string& tag);
// Runs `python script args...` with the venv python; returns exit code, output in *out.
int run_python(const std::string& script_and_args, std::string* out);
// Runs a shell command line; returns its exit code, stdout+stderr in *out.
int run_command(const std::string& command, std::string* out);
std::string source_dir();

}  // namespace mgm::test
