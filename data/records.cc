#include "data/records.h"

#include <filesystem>

#include "common/error.h"
#include "common/files.h"
#include "data/py_compat.h"

namespace mgm::data {
namespace {

struct Pos {
  size_t line, col;
};

Pos position_of(const std::string& text, size_t byte) {
  Pos p{1, 1};
  for (size_t i = 0; i < byte && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++p.line;
      p.col = 1;
    } else {
      ++p.col;
    }
  }
  return p;
}

std::string short_parse_message(const std::string& what) {
  // nlohmann messages look like "[json.exception.parse_error.101] parse error at line 1,
  // column 5: syntax error while parsing value - invalid literal; last read: 'x'"; keep the
  // part after the position, ours is computed on the whole file.
  size_t p = what.find(": ");
  if (p != std::string::npos && what.find("parse error") != std::string::npos) {
    size_t q = what.find(": ", p + 2);
    if (q != std::string::npos) return what.substr(q + 2);
    return what.substr(p + 2);
  }
  return what;
}

// Byte offsets where each element of the top-level array starts (the file already parsed,
// so it is valid JSON; this only tracks strings and nesting).
std::vector<size_t> array_element_offsets(const std::string& text, size_t open) {
  std::vector<size_t> out;
  int depth = 0;
  bool in_string = false, expect_element = false;
  for (size_t i = open; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (depth == 1 && expect_element && c != ']') {
      out.push_back(i);
      expect_element = false;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      ++depth;
      if (depth == 1) expect_element = true;
    } else if (c == ']' || c == '}') {
      --depth;
      if (depth == 0) break;
    } else if (c == ',' && depth == 1) {
      expect_element = true;
    }
  }
  return out;
}

}  // namespace

std::string record_where(const Record& r) {
  std::string s = str_cat("line ", r.line, " (record #", r.index);
  if (r.value.is_object()) {
    auto it = r.value.find("id");
    if (it != r.value.end() && (it->is_string() || it->is_number()))
      s += str_cat(", id '", py_str(*it), "'");
  }
  return s + ")";
}

RecordFile read_records(const std::string& path, FileKind kind) {
  RecordFile f;
  f.path = path;
  if (!path_exists(path)) throw Error(str_cat("input dataset ", path, " can not be found"));
  std::string text = read_file(path);
  size_t start = 0;
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) start = 3;  // UTF-8 BOM
  size_t first = text.find_first_not_of(" \t\r\n", start);
  if (kind == FileKind::kAuto)
    kind = (first != std::string::npos && text[first] == '[') ? FileKind::kJsonArray
                                                              : FileKind::kJsonLines;
  f.kind = kind;
  if (kind == FileKind::kJsonArray) {
    if (first == std::string::npos) throw FormatError(path, "empty file (expected a JSON array)");
    OrderedJson all;
    try {
      all = OrderedJson::parse(text.begin() + static_cast<std::ptrdiff_t>(start), text.end());
    } catch (const nlohmann::json::parse_error& e) {
      // e.byte is 1-based and counts from `start`.
      size_t at = start + (e.byte > 0 ? e.byte - 1 : 0);
      Pos p = position_of(text, at);
      std::vector<size_t> offs = array_element_offsets(text.substr(0, at), first);
      std::string rec = offs.empty() ? "" : str_cat(" (in record #", offs.size() - 1, ")");
      throw FormatError(path, str_cat("line ", p.line, ", column ", p.col, rec,
                                      ": invalid JSON: ", short_parse_message(e.what())));
    }
    if (!all.is_array())
      throw FormatError(path, str_cat("expected a JSON array of samples, found ", all.type_name()));
    std::vector<size_t> offs = array_element_offsets(text, first);
    MGM_CHECK(offs.size() == all.size(), path, ": internal error locating records (", offs.size(),
              " vs ", all.size(), ")");
    f.records.reserve(all.size());
    size_t line = 1, scanned = 0;
    for (size_t i = 0; i < all.size(); ++i) {
      for (; scanned < offs[i]; ++scanned)
        if (text[scanned] == '\n') ++line;
      f.records.push_back(Record{std::move(all[i]), i, line});
    }
    return f;
  }
  size_t line_no = 0, pos = start, index = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string::npos ? text.size() : nl;
    ++line_no;
    std::string_view ln(text.data() + pos, end - pos);
    pos = end + 1;
    if (!ln.empty() && ln.back() == '\r') ln.remove_suffix(1);
    if (ln.find_first_not_of(" \t") == std::string_view::npos) {
      throw FormatError(path, str_cat("line ", line_no, ": blank line (JSON Lines needs one JSON ",
                                      "object per line)"));
    }
    Record r;
    try {
      r.value = OrderedJson::parse(ln.begin(), ln.end());
    } catch (const nlohmann::json::parse_error& e) {
      throw FormatError(path, str_cat("line ", line_no, ", column ", e.byte,
                                      ": invalid JSON: ", short_parse_message(e.what())));
    }
    r.index = index++;
    r.line = line_no;
    f.records.push_back(std::move(r));
  }
  return f;
}

std::string to_json_array_text(const std::vector<OrderedJson>& records) {
  std::string out = "[";
  for (size_t i = 0; i < records.size(); ++i) {
    if (i) out += ", ";
    py_json_dump_to(records[i], /*ensure_ascii=*/true, out);
  }
  out += "]";
  return out;
}

std::string to_json_lines_text(const std::vector<OrderedJson>& records) {
  std::string out;
  for (const auto& r : records) {
    py_json_dump_to(r, /*ensure_ascii=*/false, out);
    out += '\n';
  }
  return out;
}

void check_output_path(const std::string& output, bool overwrite,
                       const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const auto& in : inputs) {
    if (in.empty()) continue;
    if (output == in || (fs::exists(output, ec) && fs::equivalent(output, in, ec)))
      throw UsageError(str_cat("output ", output, " is the same file as input ", in));
  }
  if (path_exists(output) && !overwrite)
    throw UsageError(
        str_cat("output ", output, " already exists (pass --overwrite to replace it)"));
}

void write_output(const std::string& path, const std::string& content) {
  std::string dir = parent_dir(path);
  if (!dir.empty() && !path_exists(dir)) make_dirs(dir);
  write_file_atomic(path, content);
}

}  // namespace mgm::data
