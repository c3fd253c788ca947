#include "eval/mmbench_runner.h"

#include <algorithm>
#include <charconv>
#include <memory>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "eval/scoring/mmbench.h"

namespace mgm::eval {
namespace {

// pandas.read_csv's default NA strings.
bool is_pandas_na(const std::string& v) {
  static const std::set<std::string> kNa = {"",         "#N/A", "#N/A N/A", "#NA",    "-1.#IND",
                                            "-1.#QNAN", "-NaN", "-nan",     "1.#IND", "1.#QNAN",
                                            "<NA>",     "N/A",  "NA",       "NULL",   "NaN",
                                            "None",     "n/a",  "nan",      "null"};
  return kNa.count(v) > 0;
}

// model_vqa_mmbench.is_none on a value pandas has read.
bool is_none(const std::string& v) {
  if (is_pandas_na(v)) return true;
  const std::string l = to_lower(v);
  return l == "nan" || l == "none";
}

}  // namespace

std::vector<uint8_t> decode_base64(const std::string& s) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::vector<uint8_t> out;
  out.reserve(s.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char c : s) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      ++pad;
      continue;
    }
    MGM_CHECK(pad == 0, "invalid base64: data after '=' padding");
    const int v = val(c);
    MGM_CHECK(v >= 0, "invalid base64 character '", std::string(1, c), "'");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>((acc >> bits) & 0xFF));
    }
  }
  MGM_CHECK(bits < 6 && pad <= 2, "invalid base64: truncated input");
  return out;
}

std::vector<MmbenchRow> read_mmbench_rows(const std::string& tsv_path) {
  auto records = parse_tsv(tsv_path);
  MGM_CHECK_FORMAT(!records.empty(), tsv_path, "empty file (expected a header row)");
  const auto& header = records[0].fields;
  auto col = [&](const std::string& name) -> int {
    auto it = std::find(header.begin(), header.end(), name);
    return it == header.end() ? -1 : static_cast<int>(it - header.begin());
  };
  const int c_index = col("index"), c_question = col("question"), c_hint = col("hint"),
            c_image = col("image");
  MGM_CHECK_FORMAT(
      c_index >= 0 && c_question >= 0 && c_image >= 0, tsv_path,
      "header needs 'index', 'question' and 'image' columns; found: ", join(header, ", "));
  std::vector<int> opt_cols;
  for (const char* L : {"A", "B", "C", "D"}) opt_cols.push_back(col(L));

  std::vector<MmbenchRow> rows;
  std::set<int64_t> seen;
  for (size_t r = 1; r < records.size(); ++r) {
    const auto& rec = records[r];
    const bool whole = rec.fields.size() == header.size();
    MGM_CHECK_FORMAT(whole || static_cast<size_t>(c_index) < rec.fields.size(), tsv_path, "line ",
                     rec.line, ": expected ", header.size(), " tab-separated fields, found ",
                     rec.fields.size());
    MmbenchRow row;
    row.line = rec.line;
    const std::string& idx = rec.fields[c_index];
    int64_t v = 0;
    auto res = std::from_chars(idx.data(), idx.data() + idx.size(), v);
    MGM_CHECK_FORMAT(!idx.empty() && res.ec == std::errc() && res.ptr == idx.data() + idx.size(),
                     tsv_path, "line ", rec.line, ": index '", idx, "' is not an integer");
    MGM_CHECK_FORMAT(seen.insert(v).second, tsv_path, "line ", rec.line, ": duplicate index ", v);
    row.index = v;
    if (!whole) {
      row.problem = str_cat(tsv_path, " line ", rec.line, ": expected ", header.size(),
                            " tab-separated fields, found ", rec.fields.size());
      rows.push_back(std::move(row));
      continue;
    }
    row.question = rec.fields[c_question];
    if (c_hint >= 0 && !is_none(rec.fields[c_hint])) {
      row.hint = rec.fields[c_hint];
      row.has_hint = true;
    }
    for (int c : opt_cols) {
      if (c < 0 || is_none(rec.fields[c])) break;  // options stop at the first missing one
      row.options.push_back(rec.fields[c]);
    }
    row.image_base64 = rec.fields[c_image];
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<EvalItem> mmbench_items(const MmbenchRow& row, const MmbenchPromptOptions& p,
                                    const std::string& where) {
  if (p.lang != "en" && p.lang != "cn")
    throw UsageError(str_cat("--lang: expected en or cn, got '", p.lang, "'"));
  static const char* kLetters[] = {"A", "B", "C", "D"};
  std::vector<std::string> options = row.options;
  std::vector<std::string> chars;
  for (size_t i = 0; i < options.size(); ++i) chars.push_back(kLetters[i]);
  const size_t rounds = p.all_rounds ? options.size() : 1;
  auto image = std::make_shared<const std::string>(row.image_base64);
  const std::string what = str_cat(where, " (index ", row.index, ")");
  std::vector<EvalItem> items;
  if (!row.problem.empty()) {
    EvalItem it;
    it.where = where;
    it.head["question_id"] = row.index;
    it.head["round_id"] = int64_t{0};
    it.problem = row.problem;
    items.push_back(std::move(it));
    return items;
  }
  for (size_t r = 0; r < rounds; ++r) {
    std::string q = row.question;
    if (row.has_hint) q = row.hint + "\n" + q;
    for (size_t i = 0; i < options.size(); ++i) q += str_cat("\n", kLetters[i], ". ", options[i]);
    EvalItem it;
    it.where = where;
    it.head["question_id"] = row.index;
    it.head["round_id"] = static_cast<int64_t>(r);
    it.head["prompt"] = q;  // cur_prompt: without the image token and the suffix
    it.question = q;
    if (p.single_pred_prompt)
      it.question += p.lang == "cn"
                         ? "\n请直接回答选项字母。"
                         : "\nAnswer with the option's letter from the given choices directly.";
    it.tail["options"] = options;
    it.tail["option_char"] = chars;
    it.load_image = [image, what] {
      const std::vector<uint8_t> bytes = decode_base64(*image);
      return data::decode_image_bytes(bytes.data(), bytes.size(), what);
    };
    items.push_back(std::move(it));
    std::rotate(options.begin(), options.begin() + (options.empty() ? 0 : 1), options.end());
    std::rotate(chars.begin(), chars.begin() + (chars.empty() ? 0 : 1), chars.end());
  }
  return items;
}

RunStats run_mmbench(const MmbenchOptions& o) {
  MGM_CHECK(!o.question_file.empty(), "--question-file is required");
  const auto rows = read_mmbench_rows(o.question_file);
  const auto [begin, end] = chunk_range(rows.size(), o.num_chunks, o.chunk_idx);
  std::vector<EvalItem> items;
  for (size_t i = begin; i < end; ++i) {
    auto its = mmbench_items(rows[i], o.prompt, str_cat(o.question_file, " line ", rows[i].line));
    for (auto& it : its) items.push_back(std::move(it));
  }
  const auto lock = lock_answers_file(o.run.answers_file);  // before the (slow) model load
  EvalModel m = load_eval_model(o.model);
  RunOptions run = o.run;
  run.lock_held = true;
  run.settings = base_settings("mmbench", o.model, m, run.generation, o.question_file, o.num_chunks,
                               o.chunk_idx);
  run.settings["single_pred_prompt"] = o.prompt.single_pred_prompt;
  run.settings["all_rounds"] = o.prompt.all_rounds;
  run.settings["lang"] = o.prompt.lang;
  return run_eval(m, items, run);
}

}  // namespace mgm::eval
