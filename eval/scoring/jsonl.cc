#include "eval/scoring/jsonl.h"

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"

namespace mgm::eval {

std::vector<JsonlRecord> read_jsonl(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<JsonlRecord> out;
  size_t pos = 0, line = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    ++line;
    const std::string raw = text.substr(pos, nl - pos);
    pos = nl + 1;
    MGM_CHECK_FORMAT(!trim(raw).empty(), path, "line ", line,
                     ": empty line (expected a JSON object)");
    Json j;
    try {
      j = Json::parse(raw);
    } catch (const std::exception& e) {
      throw FormatError(path, str_cat("line ", line, ": invalid JSON: ", e.what()));
    }
    MGM_CHECK_FORMAT(j.is_object(), path, "line ", line, ": expected a JSON object, got ",
                     j.type_name());
    out.push_back(JsonlRecord{line, std::move(j)});
  }
  return out;
}

}  // namespace mgm::eval
