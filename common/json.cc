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

}  // namespace mgm
