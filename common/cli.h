// Command-line parsing shared by train_mgm and the mgm multi-tool. Flags use the Python
// originals' names; "-" and "_" are interchangeable after the leading "--" (as HfArgumentParser
// accepts both), "--flag=value" and "--flag value" both work, and an unknown flag is a
// UsageError naming the closest valid one.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mgm::cli {

enum class Kind { kString, kInt, kFloat, kBool };

class ArgParser {
 public:
  ArgParser(std::string program, std::string description);

  // name without leading dashes, e.g. "model_name_or_path". An empty default with
  // required=true makes the flag mandatory.
  ArgParser& flag(const std::string& name, Kind kind, std::string default_value, std::string help,
                  bool required = false);
  ArgParser& positional(const std::string& name, std::string help, bool required = true);

  // Parses args (without the program/command words). Returns false when --help was given
  // (the caller prints help()). Throws UsageError on anything invalid.
  bool parse(const std::vector<std::string>& args);

  std::string help() const;
  const std::string& program() const { return program_; }

  bool given(const std::string& name) const;  // set explicitly on the command line
  std::string str(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;
  bool boolean(const std::string& name) const;
  std::vector<std::string> list(const std::string& name) const;  // comma-separated

  // Sets a value as if given (used by --config files; flags given explicitly win).
  void set_default(const std::string& name, const std::string& value);
  std::vector<std::string> flag_names() const;

 private:
  struct Spec {
    std::string name;
    Kind kind;
    std::string default_value;
    std::string help;
    bool required;
  };
  struct Pos {
    std::string name;
    std::string help;
    bool required;
  };
  const Spec& spec(const std::string& name) const;
  std::string program_, description_;
  std::vector<Spec> specs_;
  std::vector<Pos> positionals_;
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> given_;
};

bool parse_bool(const std::string& flag, const std::string& v);
std::string normalize_flag(const std::string& name);

// One subcommand of the multi-tool: `mgm <group> <name> ...`.
struct Command {
  std::string group;
  std::string name;
  std::string summary;
  std::function<int(const std::vector<std::string>& args)> run;
};

// Dispatches argv to the matching command; prints the listing for "--help" or no arguments.
int dispatch(const std::string& program, const std::vector<Command>& commands, int argc,
             char** argv);

// Runs fn, turning exceptions into one line on stderr: UsageError -> 2, other errors -> 1.
int run_main(const std::function<int()>& fn);

}  // namespace mgm::cli
