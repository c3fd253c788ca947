// Reading JSON datasets record by record with positions (a JSON array file, as LLaVA uses, or
// JSON Lines, as Data-Juicer uses), and writing them the way the Python tools do (json.dump of
// a list; jsonlines' one json.dumps(..., ensure_ascii=False) per line).
#pragma once

#include <string>
#include <vector>

#include "common/json.h"

namespace mgm::data {

enum class FileKind { kAuto, kJsonArray, kJsonLines };

struct Record {
  OrderedJson value;
  size_t index = 0;  // 0-based position in the file
  size_t line = 0;   // 1-based line where the record starts
};

struct RecordFile {
  std::string path;
  FileKind kind = FileKind::kJsonArray;
  std::vector<Record> records;
};

// kAuto: a file whose first non-blank character is '[' is a JSON array, anything else JSON
// Lines. Syntax errors throw FormatError naming the path, line and column (and, for an array,
// the record index). A blank line in JSON Lines is an error, as in the jsonlines package.
RecordFile read_records(const std::string& path, FileKind kind = FileKind::kAuto);

// "line LINE (record #I, id 'X')" for error messages (FormatError adds the path in front); the
// id is omitted when the record has none.
std::string record_where(const Record& r);

// json.dump(list, f) (ensure_ascii, one line, no trailing newline) and jsonlines' writer.
std::string to_json_array_text(const std::vector<OrderedJson>& records);
std::string to_json_lines_text(const std::vector<OrderedJson>& records);

// Refuses to replace an existing output unless overwrite; also refuses output == input.
void check_output_path(const std::string& output, bool overwrite,
                       const std::vector<std::string>& inputs);
// Creates the parent folder if needed (as the Python tools do) and writes atomically.
void write_output(const std::string& path, const std::string& content);

}  // namespace mgm::data
