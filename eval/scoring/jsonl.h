// Reading the JSON-lines answer files the benchmark runners write (one object per line).
#pragma once

#include <string>
#include <vector>

#include "common/json.h"

namespace mgm::eval {

struct JsonlRecord {
  size_t line = 0;  // 1-based line number in the file
  Json value;       // always an object
};

// Every line must hold one JSON object. An empty or malformed line is a FormatError naming the
// file and line, as the Python scorers (json.loads per line) fail on them too.
std::vector<JsonlRecord> read_jsonl(const std::string& path);

}  // namespace mgm::eval
