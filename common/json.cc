#include "common/json.h"

#include "common/error.h"
#include "common/files.h"

namespace mgm {

Json parse_json(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    throw FormatError(what, str_cat("invalid JSON at byte ", e.byte, ": ", e.what()));
  } catch (const Json::exception& e) {  // e.g. out_of_range for a number like 1e999
    throw FormatError(what, str_cat("invalid JSON: ", e.what()));
  }
}

Json read_json_file(const std::string& path) { return parse_json(read_file(path), path); }

void write_json_file(const std::string& path, const Json& j, int indent) {
  write_file_atomic(path, j.dump(indent) + "\n");
}
void write_json_file(const std::string& path, const OrderedJson& j, int indent) {
  write_file_atomic(path, j.dump(indent) + "\n");
}

const Json& json_at(const Json& j, const std::string& key, const std::string& what) {
  if (!j.is_object()) throw FormatError(what, "expected a JSON object");
  auto it = j.find(key);
  if (it == j.end()) throw FormatError(what, str_cat("missing key '", key, "'"));
  return *it;
}

std::string json_string(const Json& j, const std::string& key, const std::string& what) {
  const Json& v = json_at(j, key, what);
  if (!v.is_string()) throw FormatError(what, str_cat("key '", key, "' must be a string"));
  return v.get<std::string>();
}

int64_t json_int(const Json& j, const std::string& key, const std::string& what) {
  const Json& v = json_at(j, key, what);
  if (!v.is_number_integer()) throw FormatError(what, str_cat("key '", key, "' must be an integer"));
  return v.get<int64_t>();
}

namespace {
const Json* optional_value(const Json& j, const std::string& key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}
}  // namespace

int64_t json_int_or(const Json& j, const std::string& key, int64_t dflt, const std::string& what) {
  const Json* v = optional_value(j, key);
  if (v == nullptr) return dflt;
  if (!v->is_number_integer())
    throw FormatError(what, str_cat("key '", key, "' must be an integer, found ", v->dump()));
  return v->get<int64_t>();
}

double json_double_or(const Json& j, const std::string& key, double dflt, const std::string& what) {
  const Json* v = optional_value(j, key);
  if (v == nullptr) return dflt;
  if (!v->is_number())
    throw FormatError(what, str_cat("key '", key, "' must be a number, found ", v->dump()));
  return v->get<double>();
}

bool json_bool_or(const Json& j, const std::string& key, bool dflt, const std::string& what) {
  const Json* v = optional_value(j, key);
  if (v == nullptr) return dflt;
  if (!v->is_boolean())
    throw FormatError(what, str_cat("key '", key, "' must be true or false, found ", v->dump()));
  return v->get<bool>();
}

std::string json_string_or(const Json& j, const std::string& key, const std::string& dflt,
                           const std::string& what) {
  const Json* v = optional_value(j, key);
  if (v == nullptr) return dflt;
  if (!v->is_string())
    throw FormatError(what, str_cat("key '", key, "' must be a string, found ", v->dump()));
  return v->get<std::string>();
}

}  // namespace mgm
