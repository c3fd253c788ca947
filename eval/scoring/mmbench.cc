#include "eval/scoring/mmbench.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "data/py_random.h"
#include "eval/scoring/jsonl.h"
#include "eval/scoring/mmbench_judge.h"
#include "eval/scoring/py_text.h"

namespace mgm::eval {
namespace {

bool contains_token(const std::vector<std::u32string>& tokens, const std::u32string& t) {
  return std::find(tokens.begin(), tokens.end(), t) != tokens.end();
}

// can_infer_option: the answer names exactly one option letter as a token.
McqInference infer_option(const std::string& answer, const std::vector<McqChoice>& choices,
                          McqMatcher matcher) {
  if (answer.find("Failed to obtain answer via API") != std::string::npos) return {"", ""};
  static const char* kRefusals[] = {
      "Sorry, I can't help with images of people yet.", "I can't process this file.",
      "I'm sorry, but without the image provided", "Cannot determine the answer"};
  for (const char* r : kRefusals)
    if (answer.find(r) != std::string::npos) return {"Z", "refusal"};
  std::u32string mod = py::decode(answer);
  for (auto& c : mod)
    if (std::u32string_view(U".()[],:;!*#{}").find(c) != std::u32string_view::npos) c = U' ';
  const auto tokens = py::split(mod);
  size_t count = 0;
  for (const auto& ch : choices)
    if (contains_token(tokens, py::decode(ch.letter))) ++count;
  if (count == 1) {
    for (const auto& ch : choices) {
      const std::u32string l = py::decode(ch.letter);
      auto it = std::find(tokens.begin(), tokens.end(), l);
      if (it == tokens.end()) continue;
      if (matcher == McqMatcher::k2024) return {ch.letter, "option-letter"};
      // PR #1175: the letter's first occurrence must be among the last 4 tokens.
      const auto pos = static_cast<int64_t>(it - tokens.begin());
      if (pos > static_cast<int64_t>(tokens.size()) - 5) return {ch.letter, "option-letter"};
    }
  } else if (count == 0 && contains_token(tokens, U"Z")) {
    return {"Z", "z-token"};
  }
  return {"", ""};
}

// can_infer_text: exactly one option text occurs in the lower-cased answer.
McqInference infer_text(const std::string& answer, const std::vector<McqChoice>& choices,
                        McqMatcher matcher) {
  const std::u32string a = py::lower(py::decode(answer));
  if (matcher == McqMatcher::k2025) {
    size_t total = 0;
    for (const auto& ch : choices) total += py::decode(ch.text).size();
    if (a.size() > 2 * total) return {"", ""};
  }
  std::vector<std::string> cands;
  for (const auto& ch : choices)
    if (a.find(py::lower(py::decode(ch.text))) != std::u32string::npos) cands.push_back(ch.letter);
  if (cands.size() == 1) return {cands[0], "option-text"};
  return {"", ""};
}

bool ascii_ieq(char32_t a, char b) {
  if (a >= 'A' && a <= 'Z') a += 32;
  if (b >= 'A' && b <= 'Z') b += 32;
  return a == static_cast<char32_t>(b);
}

// (?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\** -- the optional prefix never changes which
// letter the leftmost match captures, so only "answer\s+is\s+\**X" is scanned for.
std::string answer_is_letter(const std::string& answer) {
  const std::u32string s = py::decode(answer);
  auto word = [&](size_t i, const char* w) {
    for (size_t k = 0; w[k]; ++k)
      if (i + k >= s.size() || !ascii_ieq(s[i + k], w[k])) return false;
    return true;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    if (!word(i, "answer")) continue;
    size_t j = i + 6, k = j;
    while (k < s.size() && py::is_space(s[k])) ++k;
    if (k == j || !word(k, "is")) continue;
    j = k + 2;
    k = j;
    while (k < s.size() && py::is_space(s[k])) ++k;
    if (k == j) continue;
    while (k < s.size() && s[k] == U'*') ++k;
    if (k < s.size()) {
      char32_t c = s[k];
      if (c >= 'a' && c <= 'd') c -= 32;
      if (c >= 'A' && c <= 'D') return std::string(1, static_cast<char>(c));
    }
  }
  return "";
}

// pandas.read_csv's default NA strings.
bool is_pandas_na(const std::string& v) {
  static const std::set<std::string> kNa = {"",         "#N/A", "#N/A N/A", "#NA",    "-1.#IND",
                                            "-1.#QNAN", "-NaN", "-nan",     "1.#IND", "1.#QNAN",
                                            "<NA>",     "N/A",  "NA",       "NULL",   "NaN",
                                            "None",     "n/a",  "nan",      "null"};
  return kNa.count(v) > 0;
}

}  // namespace

std::vector<TsvRecord> parse_tsv(const std::string& path) {
  const std::string t = read_file(path);
  std::vector<TsvRecord> out;
  size_t i = 0, line = 1;
  const size_t n = t.size();
  while (i < n) {
    // pandas skips blank lines.
    if (t[i] == '\n' || (t[i] == '\r' && i + 1 < n && t[i + 1] == '\n')) {
      i += t[i] == '\r' ? 2 : 1;
      ++line;
      continue;
    }
    TsvRecord rec;
    rec.line = line;
    std::string field;
    bool end_of_record = false;
    while (!end_of_record) {
      field.clear();
      if (i < n && t[i] == '"') {
        ++i;
        bool closed = false;
        while (i < n) {
          if (t[i] == '"') {
            if (i + 1 < n && t[i + 1] == '"') {
              field.push_back('"');
              i += 2;
              continue;
            }
            ++i;
            closed = true;
            break;
          }
          if (t[i] == '\n') ++line;
          field.push_back(t[i++]);
        }
        MGM_CHECK_FORMAT(closed, path, "line ", rec.line, ": unterminated quoted field");
      }
      // Unquoted text (or text after a closing quote, which pandas appends).
      while (i < n && t[i] != '\t' && t[i] != '\n') field.push_back(t[i++]);
      if (!field.empty() && field.back() == '\r' && (i >= n || t[i] == '\n')) field.pop_back();
      rec.fields.push_back(field);
      if (i >= n) {
        end_of_record = true;
      } else if (t[i] == '\t') {
        ++i;
      } else {  // '\n'
        ++i;
        ++line;
        end_of_record = true;
      }
    }
    out.push_back(std::move(rec));
  }
  return out;
}

namespace {

std::string csv_field(const std::string& v) {
  if (v.find_first_of(",\"\n\r") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"')
      out += "\"\"";
    else
      out.push_back(c);
  }
  return out + "\"";
}

std::string md_cell(const std::string& v, size_t max_chars) {
  std::string out;
  const std::u32string u = py::decode(v);
  size_t n = 0;
  for (char32_t c : u) {
    if (n++ >= max_chars) {
      out += "…";
      break;
    }
    if (c == U'|')
      out += "\\|";
    else if (c == U'\n')
      out += "⏎";
    else if (c == U'\r' || c == U'\t')
      out += " ";
    else
      out += py::encode(std::u32string(1, c));
  }
  return out;
}

std::string percent(size_t hits, size_t n) {
  if (n == 0) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f",
                100.0 * static_cast<double>(hits) / static_cast<double>(n));
  return buf;
}

std::string rule_label(const MmbRowResult& r) {
  std::string s = r.resolved_by == "judge"          ? "judge -> " + r.letter
                  : r.resolved_by == "judge-failed" ? "judge failed, random guess -> " + r.letter
                  : r.inferred.letter.empty()       ? "unresolved"
                                                    : r.inferred.rule + " -> " + r.inferred.letter;
  if (!r.has_prediction) s += " (no prediction)";
  return s;
}

std::string stem_of(const std::string& path) {
  std::string base = base_name(path);
  const size_t dot = base.rfind('.');
  const size_t first = base.find_first_not_of('.');
  if (dot == std::string::npos || first == std::string::npos || dot < first) return base;
  return base.substr(0, dot);
}

}  // namespace

McqMatcher parse_mcq_matcher(const std::string& s) {
  if (s == "2024") return McqMatcher::k2024;
  if (s == "2025") return McqMatcher::k2025;
  throw UsageError(str_cat("--matcher: expected 2024 or 2025, got '", s, "'"));
}

const char* mcq_matcher_name(McqMatcher m) { return m == McqMatcher::k2024 ? "2024" : "2025"; }

McqInference can_infer(const std::string& answer, const std::vector<McqChoice>& choices,
                       McqMatcher matcher) {
  McqInference r = infer_option(answer, choices, matcher);
  if (!r.letter.empty()) return r;
  r = infer_text(answer, choices, matcher);
  if (!r.letter.empty()) return r;
  if (matcher == McqMatcher::k2025) {
    const std::string l = answer_is_letter(answer);
    for (const auto& ch : choices)
      if (!l.empty() && ch.letter == l) return {l, "answer-is"};
  }
  return {"", "unresolved"};
}

std::vector<MmbQuestion> read_mmbench_questions(const std::string& tsv_path) {
  auto records = parse_tsv(tsv_path);
  MGM_CHECK_FORMAT(!records.empty(), tsv_path, "empty file (expected a header row)");
  // VLMEvalKit lower-cases column names except single capital letters (the options).
  std::vector<std::string> cols;
  for (const auto& c : records[0].fields) {
    const bool option = c.size() == 1 && c[0] >= 'A' && c[0] <= 'Z';
    cols.push_back(option ? c : to_lower(c));
  }
  auto col = [&](const std::string& name) -> int {
    auto it = std::find(cols.begin(), cols.end(), name);
    return it == cols.end() ? -1 : static_cast<int>(it - cols.begin());
  };
  const int c_index = col("index"), c_answer = col("answer"), c_cat = col("category"),
            c_l2 = col("l2-category"), c_split = col("split"), c_question = col("question");
  MGM_CHECK_FORMAT(
      c_index >= 0 && c_answer >= 0, tsv_path,
      "header needs 'index' and 'answer' columns; found: ", join(records[0].fields, ", "));
  std::vector<std::pair<std::string, int>> option_cols;
  for (char L = 'A'; L <= 'Z'; ++L) {
    const int c = col(std::string(1, L));
    if (c >= 0) option_cols.push_back({std::string(1, L), c});
  }
  MGM_CHECK_FORMAT(!option_cols.empty(), tsv_path, "no option columns (A, B, ...) in the header");

  std::vector<MmbQuestion> out;
  std::map<int64_t, size_t> seen;  // index -> line
  for (size_t r = 1; r < records.size(); ++r) {
    const auto& rec = records[r];
    MGM_CHECK_FORMAT(rec.fields.size() == cols.size(), tsv_path, "line ", rec.line, ": expected ",
                     cols.size(), " tab-separated fields, found ", rec.fields.size());
    MmbQuestion q;
    q.line = rec.line;
    const std::string& idx = rec.fields[c_index];
    int64_t v = 0;
    auto res = std::from_chars(idx.data(), idx.data() + idx.size(), v);
    MGM_CHECK_FORMAT(
        res.ec == std::errc() && res.ptr == idx.data() + idx.size() && v >= 0 && !idx.empty(),
        tsv_path, "line ", rec.line, ": index '", idx, "' is not a non-negative integer");
    q.index = v;
    auto [it, inserted] = seen.emplace(v, rec.line);
    MGM_CHECK_FORMAT(inserted, tsv_path, "line ", rec.line, ": duplicate index ", v,
                     " (first on line ", it->second, ")");
    q.answer = rec.fields[c_answer];
    MGM_CHECK_FORMAT(!is_pandas_na(q.answer), tsv_path, "line ", rec.line, ": index ", v,
                     " has no answer (a test split cannot be scored locally)");
    for (const auto& [L, c] : option_cols)
      if (!is_pandas_na(rec.fields[c])) q.choices.push_back({L, rec.fields[c]});
    auto opt = [&](int c) {
      if (c < 0) return std::string("none");
      return is_pandas_na(rec.fields[c]) ? std::string("nan") : rec.fields[c];
    };
    q.category = opt(c_cat);
    q.l2_category = opt(c_l2);
    q.has_question = c_question >= 0;
    if (q.has_question) q.question = opt(c_question);
    q.split = opt(c_split);
    out.push_back(std::move(q));
  }
  return out;
}

std::map<int64_t, std::vector<size_t>> mmbench_circular_groups(
    const std::vector<MmbQuestion>& questions) {
  std::map<int64_t, std::vector<size_t>> groups;
  for (size_t i = 0; i < questions.size(); ++i)
    if (questions[i].index < kCircularModulus) groups[questions[i].index];
  for (size_t i = 0; i < questions.size(); ++i) {
    auto it = groups.find(questions[i].index % kCircularModulus);
    if (it != groups.end()) it->second.push_back(i);
  }
  for (auto& [g, rows] : groups)
    std::sort(rows.begin(), rows.end(),
              [&](size_t a, size_t b) { return questions[a].index < questions[b].index; });
  return groups;
}

std::string mmbench_l2_abbreviation(const std::string& l2) {
  static const std::map<std::string, std::string> kAbbr = {
      {"coarse_perception", "CP"},
      {"finegrained_perception (instance-level)", "FP-S"},
      {"finegrained_perception (cross-instance)", "FP-C"},
      {"attribute_reasoning", "AR"},
      {"relation_reasoning", "RR"},
      {"logic_reasoning", "LR"}};
  auto it = kAbbr.find(l2);
  return it == kAbbr.end() ? l2 : it->second;
}

MmbenchScore score_mmbench(const std::string& question_file, const std::string& result_file,
                           McqMatcher matcher, McqJudge* judge) {
  MmbenchScore s;
  s.matcher = matcher;
  s.judged = judge != nullptr;
  if (judge != nullptr) {
    s.judge_model = judge->options().model;
    s.judge_url = judge->options().url;
    s.judge_cache = judge->options().cache_path;
  }
  // multiple_choice_eval seeds Python's random before scoring; only the judge path draws from it.
  data::PyRandom rd(kJudgeSeed);
  s.question_file = question_file;
  s.result_file = result_file;
  const auto questions = read_mmbench_questions(question_file);
  s.rows = questions.size();
  std::map<int64_t, size_t> row_of;
  for (size_t i = 0; i < questions.size(); ++i) row_of[questions[i].index] = i;

  std::map<int64_t, std::string> predictions;
  const auto lines = read_jsonl(result_file);
  s.answer_lines = lines.size();
  for (const auto& rec : lines) {
    const Json& j = rec.value;
    MGM_CHECK_FORMAT(j.contains("question_id") && j.contains("text"), result_file, "line ",
                     rec.line, ": needs \"question_id\" and \"text\"");
    const Json& qid = j["question_id"];
    int64_t id = 0;
    if (qid.is_number_integer()) {
      id = qid.get<int64_t>();
    } else if (qid.is_number_float() && std::floor(qid.get<double>()) == qid.get<double>()) {
      id = static_cast<int64_t>(qid.get<double>());
    } else {
      throw FormatError(result_file, str_cat("line ", rec.line, ": question_id ", qid.dump(),
                                             " is not an integer MMBench index"));
    }
    MGM_CHECK_FORMAT(j["text"].is_string(), result_file, "line ", rec.line,
                     ": \"text\" is not a string");
    if (!row_of.count(id)) {
      s.unknown_predictions.push_back(id);
      continue;
    }
    if (!predictions.emplace(id, j["text"].get<std::string>()).second) {
      std::string& kept = predictions[id];
      if (kept != j["text"].get<std::string>() &&
          std::find(s.conflicting_answers.begin(), s.conflicting_answers.end(), id) == s.conflicting_answers.end())
        s.conflicting_answers.push_back(id);
      kept = j["text"].get<std::string>();  // the converter keeps the last line
      ++s.duplicate_answers;
    }
  }
  for (const auto& q : questions)
    if (!predictions.count(q.index)) s.missing_predictions.push_back(q.index);

  for (const auto& [g, rows] : mmbench_circular_groups(questions)) {
    const MmbQuestion& base = questions[row_of.at(g)];
    MmbGroupResult gr;
    gr.index = g;
    gr.category = base.category;
    gr.l2_category = base.l2_category;
    gr.split = base.split;
    bool wrong = false, all_right = true;
    for (size_t ri : rows) {
      const MmbQuestion& q = questions[ri];
      MmbRowResult r;
      r.index = q.index;
      r.answer = q.answer;
      auto p = predictions.find(q.index);
      r.has_prediction = p != predictions.end();
      // A missing prediction is an empty cell in the submission file, which the scorer reads as
      // NaN and turns into the text "nan".
      r.prediction = r.has_prediction ? p->second : "nan";
      r.inferred = can_infer(r.prediction, q.choices, matcher);
      r.letter = r.inferred.letter;
      r.resolved_by = r.letter.empty() ? "unresolved" : "rule";
      if (!r.inferred.letter.empty() && r.inferred.letter != q.answer) wrong = true;
      if (r.inferred.letter != q.answer) all_right = false;
      gr.rows.push_back(std::move(r));
    }
    gr.status = wrong ? "wrong" : all_right ? "right" : "unresolved";
    if (gr.status == "unresolved" && judge != nullptr) {
      // eval_sub_data: the rows the rules left open go to the judge in order; the first one
      // extracted as anything but the answer decides the question (the rest are not judged).
      gr.status = "right";
      for (size_t k = 0; k < rows.size(); ++k) {
        MmbRowResult& r = gr.rows[k];
        if (!r.letter.empty()) continue;
        const MmbQuestion& q = questions[rows[k]];
        const std::string what = str_cat(question_file, " line ", q.line, " (index ", q.index, ")");
        MGM_CHECK_FORMAT(q.has_question, question_file,
                         "the judge needs a 'question' column (for the prompt)");
        McqJudgeResult jr =
            judge_mcq_answer(*judge, q.question, q.choices, r.prediction, matcher, rd, what);
        r.letter = jr.letter;
        r.resolved_by = jr.resolved_by;
        r.judge_replies = std::move(jr.replies);
        if (r.letter != q.answer) {
          gr.status = "wrong";
          break;
        }
      }
    }
    gr.hit = gr.status == "right";
    s.groups.push_back(std::move(gr));
  }
  if (judge != nullptr) s.judge_stats = judge->stats();

  std::set<std::string> splits, l2s, cats;
  for (const auto& g : s.groups) {
    splits.insert(g.split);
    l2s.insert(g.l2_category);
    cats.insert(g.category);
  }
  s.splits.assign(splits.begin(), splits.end());
  auto add = [&](const std::string& kind, const std::string& column, auto pred) {
    MmbAccuracy a;
    a.kind = kind;
    a.column = column;
    for (const auto& sp : s.splits) a.by_split[sp] = {0, 0};
    for (const auto& g : s.groups) {
      if (!pred(g)) continue;
      auto& c = a.by_split[g.split];
      c.first += g.hit ? 1 : 0;
      c.second += 1;
    }
    s.accuracy.push_back(std::move(a));
  };
  add("overall", "Overall", [](const MmbGroupResult&) { return true; });
  const bool has_l2 = !(l2s.size() == 1 && *l2s.begin() == "none");
  const bool has_cat = !(cats.size() == 1 && *cats.begin() == "none");
  if (has_l2)
    for (const auto& l2 : l2s)
      add("l2-category", mmbench_l2_abbreviation(l2),
          [&l2](const MmbGroupResult& g) { return g.l2_category == l2; });
  if (has_cat)
    for (const auto& c : cats)
      add("category", c, [&c](const MmbGroupResult& g) { return g.category == c; });
  return s;
}

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  const double a = std::fabs(v);
  const bool fixed = a >= 1e-4 && a < 1e16;
  auto r = std::to_chars(buf, buf + sizeof buf, v,
                         fixed ? std::chars_format::fixed : std::chars_format::scientific);
  std::string out(buf, r.ptr);
  if (fixed) {
    if (out.find('.') == std::string::npos) out += ".0";
  } else {
    // Python writes at least two exponent digits ("1e-05"), as to_chars does.
    auto e = out.find('e');
    if (e != std::string::npos && out[e + 1] != '-' && out[e + 1] != '+') out.insert(e + 1, "+");
  }
  return out;
}

std::string mmbench_terminal_report(const MmbenchScore& s) {
  std::ostringstream os;
  size_t unresolved = 0, right = 0, wrong = 0;
  std::map<std::string, size_t> rules;
  for (const auto& g : s.groups) {
    if (g.status == "right")
      ++right;
    else if (g.status == "wrong")
      ++wrong;
    else
      ++unresolved;
    for (const auto& r : g.rows)
      ++rules[r.inferred.letter.empty() ? "unresolved" : r.inferred.rule];
  }
  os << "MMBench circular evaluation: " << s.groups.size() << " questions, " << s.rows
     << " rows (matcher " << mcq_matcher_name(s.matcher);
  if (s.judged)
    os << ", LLM judge '" << s.judge_model << "' at " << s.judge_url
       << " for answers the rules cannot resolve)\n";
  else
    os << ", exact matching; no LLM judge, unresolved answers count as wrong)\n";
  os << "answers: " << s.answer_lines << " lines";
  if (s.duplicate_answers) os << ", " << s.duplicate_answers << " repeated ids (last line kept)";
  os << "\n";
  auto list_ids = [&](const std::vector<int64_t>& ids) {
    std::vector<std::string> parts;
    for (size_t i = 0; i < ids.size() && i < 10; ++i) parts.push_back(std::to_string(ids[i]));
    return join(parts, ", ") + (ids.size() > 10 ? ", ..." : "");
  };
  if (!s.missing_predictions.empty())
    os << "warning: " << s.missing_predictions.size()
       << " TSV rows have no answer line (scored as the text 'nan', as the reference does): "
       << list_ids(s.missing_predictions) << "\n";
  if (!s.unknown_predictions.empty())
    os << "warning: " << s.unknown_predictions.size()
       << " answer lines have a question_id not in the TSV (ignored): "
       << list_ids(s.unknown_predictions) << "\n";
  if (!s.conflicting_answers.empty())
    os << "warning: " << s.conflicting_answers.size()
       << " question_ids are answered more than once with different texts (the last line is scored, as the "
          "reference's converter keeps it): "
       << list_ids(s.conflicting_answers) << "\n";
  for (const auto& sp : s.splits) {
    if (s.splits.size() > 1) os << "split " << sp << ":\n";
    std::string kind;
    for (const auto& a : s.accuracy) {
      const auto& [hits, n] = a.by_split.at(sp);
      if (n == 0) continue;
      if (a.kind != kind && a.kind != "overall") os << a.kind << ":\n";
      kind = a.kind;
      char line[512];
      const bool top = a.kind == "overall";
      std::snprintf(line, sizeof line, "%s%-*s %6s%%  (%zu/%zu)\n", top ? "" : "  ", top ? 40 : 38,
                    a.column.c_str(), percent(hits, n).c_str(), hits, n);
      os << line;
    }
  }
  os << "groups: " << right << " right, " << wrong << " wrong, " << unresolved
     << " unresolved (counted as wrong)\n";
  os << "answers resolved by:";
  for (const auto& [rule, n] : rules) os << " " << rule << "=" << n;
  os << "\n";
  if (s.judged) {
    size_t judged = 0, failed = 0;
    for (const auto& g : s.groups)
      for (const auto& r : g.rows) {
        judged += r.resolved_by == "judge";
        failed += r.resolved_by == "judge-failed";
      }
    const JudgeStats& j = s.judge_stats;
    os << "judge: " << judged << " answers extracted by the judge, " << failed
       << " judge-failed (random guess, as the reference); " << j.calls << " calls ("
       << j.cache_hits << " from the cache), " << j.http_requests << " HTTP requests, "
       << j.failed_tries << " failed tries\n";
    if (!s.judge_cache.empty()) os << "judge replies cached in " << s.judge_cache << "\n";
  }
  return os.str();
}

std::string mmbench_acc_csv(const MmbenchScore& s) {
  std::ostringstream os;
  os << "split";
  for (const auto& a : s.accuracy) os << "," << csv_field(a.column);
  os << "\n";
  for (const auto& sp : s.splits) {
    os << csv_field(sp);
    for (const auto& a : s.accuracy) {
      const auto& [hits, n] = a.by_split.at(sp);
      // pandas writes NaN (an empty group) as an empty field.
      os << ","
         << (n == 0 ? "" : python_float_repr(static_cast<double>(hits) / static_cast<double>(n)));
    }
    os << "\n";
  }
  return os.str();
}

std::string mmbench_result_csv(const MmbenchScore& s) {
  std::ostringstream os;
  os << "index,group,split,category,l2-category,answer,prediction,has_prediction,extracted,rule,"
        "group_status,hit,resolved,judge_replies\n";
  for (const auto& g : s.groups)
    for (const auto& r : g.rows) {
      std::string replies;
      if (!r.judge_replies.empty())
        replies = Json(r.judge_replies).dump(-1, ' ', false, Json::error_handler_t::replace);
      os << r.index << "," << g.index << "," << csv_field(g.split) << "," << csv_field(g.category)
         << "," << csv_field(g.l2_category) << "," << csv_field(r.answer) << ","
         << csv_field(r.prediction) << "," << (r.has_prediction ? 1 : 0) << ","
         << csv_field(r.letter) << ","
         << (r.inferred.letter.empty() ? "unresolved" : r.inferred.rule) << "," << g.status << ","
         << (g.hit ? 1 : 0) << "," << r.resolved_by << "," << csv_field(replies) << "\n";
    }
  return os.str();
}

std::string mmbench_markdown(const MmbenchScore& s) {
  std::ostringstream os;
  os << "# MMBench results\n\n";
  os << "- questions: `" << s.question_file << "`\n- answers: `" << s.result_file << "`\n";
  os << "- matcher: " << mcq_matcher_name(s.matcher) << " rules, ";
  if (s.judged)
    os << "LLM judge `" << md_cell(s.judge_model, 80) << "` at `" << s.judge_url
       << "` for the answers the rules cannot resolve (" << s.judge_stats.calls << " calls, "
       << s.judge_stats.cache_hits << " from the cache)\n";
  else
    os << "exact matching (no LLM judge; unresolved answers count as wrong)\n";
  os << "- " << s.groups.size() << " questions, " << s.rows << " rows, " << s.answer_lines
     << " answer lines, " << s.missing_predictions.size() << " rows without an answer, "
     << s.unknown_predictions.size() << " answers for unknown ids\n\n";
  os << "## Accuracy (%)\n\n| column | kind |";
  for (const auto& sp : s.splits) os << " " << md_cell(sp, 40) << " |";
  os << "\n|---|---|";
  for (size_t i = 0; i < s.splits.size(); ++i) os << "---:|";
  os << "\n";
  for (const auto& a : s.accuracy) {
    os << "| " << md_cell(a.column, 60) << " | " << a.kind << " |";
    for (const auto& sp : s.splits) {
      const auto& [hits, n] = a.by_split.at(sp);
      os << " " << percent(hits, n) << " (" << hits << "/" << n << ") |";
    }
    os << "\n";
  }
  os << "\n## Answers\n\nHow each answer was resolved (rule -> option letter) and each "
        "question's circular outcome.\n\n| index | answer | prediction | resolved | group |\n"
        "|---:|---|---|---|---|\n";
  for (const auto& g : s.groups)
    for (const auto& r : g.rows)
      os << "| " << r.index << " | " << md_cell(r.answer, 8) << " | " << md_cell(r.prediction, 80)
         << " | " << rule_label(r) << " | " << g.status << " |\n";
  return os.str();
}

std::string mmbench_output_path(const std::string& result_file, const std::string& out_dir,
                                const std::string& suffix) {
  std::string dir = out_dir.empty() ? parent_dir(result_file) : out_dir;
  if (dir.empty()) dir = ".";
  return path_join(dir, stem_of(result_file) + suffix);
}

std::vector<std::string> write_mmbench_reports(const MmbenchScore& s, const std::string& out_dir) {
  std::vector<std::string> paths = {mmbench_output_path(s.result_file, out_dir, "_acc.csv"),
                                    mmbench_output_path(s.result_file, out_dir, "_result.csv"),
                                    mmbench_output_path(s.result_file, out_dir, "_report.md")};
  make_dirs(parent_dir(paths[0]));
  write_file_atomic(paths[0], mmbench_acc_csv(s));
  write_file_atomic(paths[1], mmbench_result_csv(s));
  write_file_atomic(paths[2], mmbench_markdown(s));
  return paths;
}

}  // namespace mgm::eval
