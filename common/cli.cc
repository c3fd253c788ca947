#include "common/cli.h"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/strings.h"

namespace mgm::cli {

std::string normalize_flag(const std::string& name) {
  std::string out = name;
  for (auto& c : out)
    if (c == '-') c = '_';
  return out;
}

bool parse_bool(const std::string& flag, const std::string& v) {
  std::string l = to_lower(v);
  if (l == "true" || l == "1" || l == "yes" || l == "on") return true;
  if (l == "false" || l == "0" || l == "no" || l == "off") return false;
  throw UsageError(str_cat("--", flag, ": expected true or false, got '", v, "'"));
}

ArgParser::ArgParser(std::string program, std::string description)
    : program_(std::move(program)), description_(std::move(description)) {}

ArgParser& ArgParser::flag(const std::string& name, Kind kind, std::string default_value,
                           std::string help, bool required) {
  std::string n = normalize_flag(name);
  for (const auto& s : specs_) MGM_CHECK(s.name != n, "flag --", n, " declared twice");
  specs_.push_back(Spec{n, kind, std::move(default_value), std::move(help), required});
  return *this;
}

ArgParser& ArgParser::positional(const std::string& name, std::string help, bool required) {
  positionals_.push_back(Pos{name, std::move(help), required});
  return *this;
}

const ArgParser::Spec& ArgParser::spec(const std::string& name) const {
  std::string n = normalize_flag(name);
  for (const auto& s : specs_)
    if (s.name == n) return s;
  for (const auto& p : positionals_)
    if (p.name == n) {
      static thread_local Spec tmp;
      tmp = Spec{p.name, Kind::kString, "", p.help, p.required};
      return tmp;
    }
  throw Error(str_cat(program_, ": internal error: no flag named ", name));
}

std::vector<std::string> ArgParser::flag_names() const {
  std::vector<std::string> out;
  for (const auto& s : specs_) out.push_back("--" + s.name);
  return out;
}

static void check_value(const std::string& name, Kind kind, const std::string& v) {
  try {
    size_t pos = 0;
    switch (kind) {
      case Kind::kInt:
        (void)std::stoll(v, &pos);
        if (pos != v.size()) throw std::invalid_argument(v);
        break;
      case Kind::kFloat:
        (void)std::stod(v, &pos);
        if (pos != v.size()) throw std::invalid_argument(v);
        break;
      case Kind::kBool:
        (void)parse_bool(name, v);
        break;
      case Kind::kString:
        break;
    }
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception&) {
    throw UsageError(str_cat("--", name, ": expected ", kind == Kind::kInt ? "an integer" : "a number",
                             ", got '", v, "'"));
  }
}

bool ArgParser::parse(const std::vector<std::string>& args) {
  size_t next_pos = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") return false;
    if (starts_with(a, "--") && a.size() > 2) {
      std::string body = a.substr(2);
      std::optional<std::string> value;
      auto eq = body.find('=');
      if (eq != std::string::npos) {
        value = body.substr(eq + 1);
        body = body.substr(0, eq);
      }
      std::string n = normalize_flag(body);
      const Spec* s = nullptr;
      for (const auto& sp : specs_)
        if (sp.name == n) s = &sp;
      if (s == nullptr) {
        std::vector<std::string> names;
        for (const auto& sp : specs_) names.push_back(sp.name);
        std::string best = closest_match(n, names);
        throw UsageError(str_cat(program_, ": unknown flag --", body,
                                 best.empty() ? std::string() : str_cat(" (did you mean --", best, "?)"),
                                 "; see --help"));
      }
      if (!value) {
        bool next_is_value = i + 1 < args.size() &&
                             !(starts_with(args[i + 1], "--") && args[i + 1].size() > 2);
        if (s->kind == Kind::kBool) {
          // "--bf16 true" and a bare "--bf16" both work.
          if (next_is_value) {
            std::string l = to_lower(args[i + 1]);
            if (l == "true" || l == "false" || l == "1" || l == "0" || l == "yes" || l == "no") {
              value = args[++i];
            }
          }
          if (!value) value = "true";
        } else {
          if (!next_is_value) throw UsageError(str_cat(program_, ": --", s->name, " needs a value"));
          value = args[++i];
        }
      }
      check_value(s->name, s->kind, *value);
      values_[s->name] = *value;
      given_[s->name] = true;
      continue;
    }
    if (next_pos >= positionals_.size())
      throw UsageError(str_cat(program_, ": unexpected argument '", a, "'; see --help"));
    values_[positionals_[next_pos].name] = a;
    given_[positionals_[next_pos].name] = true;
    ++next_pos;
  }
  for (size_t p = next_pos; p < positionals_.size(); ++p)
    if (positionals_[p].required)
      throw UsageError(str_cat(program_, ": missing argument ", positionals_[p].name, "; see --help"));
  for (const auto& s : specs_)
    if (s.required && !values_.count(s.name))
      throw UsageError(str_cat(program_, ": missing required flag --", s.name, "; see --help"));
  return true;
}

void ArgParser::set_default(const std::string& name, const std::string& value) {
  const Spec& s = spec(name);
  check_value(s.name, s.kind, value);
  if (!given_.count(s.name)) values_[s.name] = value;
}

bool ArgParser::given(const std::string& name) const { return given_.count(normalize_flag(name)) > 0; }

std::string ArgParser::str(const std::string& name) const {
  const Spec& s = spec(name);
  auto it = values_.find(s.name);
  return it != values_.end() ? it->second : s.default_value;
}

int64_t ArgParser::integer(const std::string& name) const { return std::stoll(str(name)); }
double ArgParser::number(const std::string& name) const { return std::stod(str(name)); }
bool ArgParser::boolean(const std::string& name) const { return parse_bool(name, str(name)); }

std::vector<std::string> ArgParser::list(const std::string& name) const {
  std::string v = str(name);
  std::vector<std::string> out;
  if (v.empty()) return out;
  for (auto& part : split(v, ',')) {
    std::string t = trim(part);
    if (!t.empty()) out.push_back(t);
  }
  return out;
}

std::string ArgParser::help() const {
  std::ostringstream os;
  os << "usage: " << program_;
  for (const auto& p : positionals_) os << (p.required ? " " : " [") << p.name << (p.required ? "" : "]");
  if (!specs_.empty()) os << " [flags]";
  os << "\n\n" << description_ << "\n";
  if (!positionals_.empty()) {
    os << "\narguments:\n";
    for (const auto& p : positionals_) os << "  " << p.name << "\n      " << p.help << "\n";
  }
  if (!specs_.empty()) {
    os << "\nflags:\n";
    for (const auto& s : specs_) {
      const char* kind = s.kind == Kind::kInt ? "INT" : s.kind == Kind::kFloat ? "FLOAT"
                         : s.kind == Kind::kBool ? "[BOOL]" : "VALUE";
      os << "  --" << s.name << " " << kind;
      if (s.required) os << "  (required)";
      else if (!s.default_value.empty()) os << "  (default: " << s.default_value << ")";
      os << "\n      " << s.help << "\n";
    }
  }
  return os.str();
}

static void print_listing(const std::string& program, const std::vector<Command>& commands) {
  std::printf("usage: %s <group> <command> [flags]   (every command has --help)\n\ncommands:\n",
              program.c_str());
  for (const auto& c : commands)
    std::printf("  %-28s %s\n", (c.group + " " + c.name).c_str(), c.summary.c_str());
}

int dispatch(const std::string& program, const std::vector<Command>& commands, int argc,
             char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    print_listing(program, commands);
    return args.empty() ? 2 : 0;
  }
  std::set<std::string> groups;
  for (const auto& c : commands) groups.insert(c.group);
  const std::string& group = args[0];
  if (!groups.count(group)) {
    std::vector<std::string> g(groups.begin(), groups.end());
    std::string best = closest_match(group, g);
    throw UsageError(str_cat(program, ": unknown command group '", group, "'",
                             best.empty() ? "" : str_cat(" (did you mean '", best, "'?)"),
                             "; run '", program, " --help'"));
  }
  std::vector<std::string> names;
  for (const auto& c : commands)
    if (c.group == group) names.push_back(c.name);
  // A group with one unnamed command takes its flags directly: `mgm logits --model-dir ...`.
  if (names.size() == 1 && names[0].empty()) {
    for (const auto& c : commands)
      if (c.group == group) return c.run(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  if (args.size() < 2 || args[1] == "--help" || args[1] == "-h") {
    std::printf("usage: %s %s <command> [flags]\n\ncommands:\n", program.c_str(), group.c_str());
    for (const auto& c : commands)
      if (c.group == group) std::printf("  %-20s %s\n", c.name.c_str(), c.summary.c_str());
    return args.size() < 2 ? 2 : 0;
  }
  for (const auto& c : commands) {
    if (c.group == group && c.name == args[1]) {
      return c.run(std::vector<std::string>(args.begin() + 2, args.end()));
    }
  }
  std::string best = closest_match(args[1], names);
  throw UsageError(str_cat(program, " ", group, ": unknown command '", args[1], "'",
                           best.empty() ? "" : str_cat(" (did you mean '", best, "'?)"),
                           "; commands: ", join(names, ", ")));
}

int run_main(const std::function<int()>& fn) {
  try {
    return fn();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const Error& e) {
    // The project's own messages reach the user whole: some list one problem per line (the
    // tensors apply-delta, make-delta and merge-lora found wrong). Where they quote a libtorch
    // error they take its first line themselves.
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    // c10::Error messages carry a multi-line backtrace; the first line is the message.
    std::string msg = e.what();
    auto nl = msg.find('\n');
    if (nl != std::string::npos && std::getenv("MGM_FULL_ERRORS") == nullptr) msg = msg.substr(0, nl);
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    return 1;
  }
}

}  // namespace mgm::cli
