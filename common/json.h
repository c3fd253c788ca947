// JSON helpers over nlohmann::json: parsing with errors that name the file and position,
// typed lookups that name the missing or mistyped key, and atomic writing.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace mgm {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// Parses text; `what` (a path) is named in the error, with the byte position.
Json parse_json(const std::string& text, const std::string& what);
Json read_json_file(const std::string& path);
// Writes with 2-space indentation (as Hugging Face does) atomically.
void write_json_file(const std::string& path, const Json& j, int indent = 2);
void write_json_file(const std::string& path, const OrderedJson& j, int indent = 2);

// Typed field access naming the file and key on error.
const Json& json_at(const Json& j, const std::string& key, const std::string& what);
std::string json_string(const Json& j, const std::string& key, const std::string& what);
int64_t json_int(const Json& j, const std::string& key, const std::string& what);

// Optional keys: `dflt` when absent or null; FormatError naming `what` and the key when the
// value has the wrong type (config files).
int64_t json_int_or(const Json& j, const std::string& key, int64_t dflt, const std::string& what);
double json_double_or(const Json& j, const std::string& key, double dflt, const std::string& what);
bool json_bool_or(const Json& j, const std::string& key, bool dflt, const std::string& what);
std::string json_string_or(const Json& j, const std::string& key, const std::string& dflt,
                           const std::string& what);

}  // namespace mgm
