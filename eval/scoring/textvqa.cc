#include "eval/scoring/textvqa.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <unordered_map>
#include <utility>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "eval/scoring/jsonl.h"
#include "eval/scoring/py_text.h"

namespace mgm::eval {
namespace {

// The VQA/EvalAI contractions table, kept entry for entry: the capitalised keys can never
// match after lower-casing and "somebody'd" maps to "somebodyd"; both are reference behaviour.
const std::unordered_map<std::string, std::string>& contractions() {
  static const std::unordered_map<std::string, std::string> kTable = {
      {"aint", "ain't"},
      {"arent", "aren't"},
      {"cant", "can't"},
      {"couldve", "could've"},
      {"couldnt", "couldn't"},
      {"couldn'tve", "couldn't've"},
      {"couldnt've", "couldn't've"},
      {"didnt", "didn't"},
      {"doesnt", "doesn't"},
      {"dont", "don't"},
      {"hadnt", "hadn't"},
      {"hadnt've", "hadn't've"},
      {"hadn'tve", "hadn't've"},
      {"hasnt", "hasn't"},
      {"havent", "haven't"},
      {"hed", "he'd"},
      {"hed've", "he'd've"},
      {"he'dve", "he'd've"},
      {"hes", "he's"},
      {"howd", "how'd"},
      {"howll", "how'll"},
      {"hows", "how's"},
      {"Id've", "I'd've"},
      {"I'dve", "I'd've"},
      {"Im", "I'm"},
      {"Ive", "I've"},
      {"isnt", "isn't"},
      {"itd", "it'd"},
      {"itd've", "it'd've"},
      {"it'dve", "it'd've"},
      {"itll", "it'll"},
      {"let's", "let's"},
      {"maam", "ma'am"},
      {"mightnt", "mightn't"},
      {"mightnt've", "mightn't've"},
      {"mightn'tve", "mightn't've"},
      {"mightve", "might've"},
      {"mustnt", "mustn't"},
      {"mustve", "must've"},
      {"neednt", "needn't"},
      {"notve", "not've"},
      {"oclock", "o'clock"},
      {"oughtnt", "oughtn't"},
      {"ow's'at", "'ow's'at"},
      {"'ows'at", "'ow's'at"},
      {"'ow'sat", "'ow's'at"},
      {"shant", "shan't"},
      {"shed've", "she'd've"},
      {"she'dve", "she'd've"},
      {"she's", "she's"},
      {"shouldve", "should've"},
      {"shouldnt", "shouldn't"},
      {"shouldnt've", "shouldn't've"},
      {"shouldn'tve", "shouldn't've"},
      {"somebody'd", "somebodyd"},
      {"somebodyd've", "somebody'd've"},
      {"somebody'dve", "somebody'd've"},
      {"somebodyll", "somebody'll"},
      {"somebodys", "somebody's"},
      {"someoned", "someone'd"},
      {"someoned've", "someone'd've"},
      {"someone'dve", "someone'd've"},
      {"someonell", "someone'll"},
      {"someones", "someone's"},
      {"somethingd", "something'd"},
      {"somethingd've", "something'd've"},
      {"something'dve", "something'd've"},
      {"somethingll", "something'll"},
      {"thats", "that's"},
      {"thered", "there'd"},
      {"thered've", "there'd've"},
      {"there'dve", "there'd've"},
      {"therere", "there're"},
      {"theres", "there's"},
      {"theyd", "they'd"},
      {"theyd've", "they'd've"},
      {"they'dve", "they'd've"},
      {"theyll", "they'll"},
      {"theyre", "they're"},
      {"theyve", "they've"},
      {"twas", "'twas"},
      {"wasnt", "wasn't"},
      {"wed've", "we'd've"},
      {"we'dve", "we'd've"},
      {"weve", "we've"},
      {"werent", "weren't"},
      {"whatll", "what'll"},
      {"whatre", "what're"},
      {"whats", "what's"},
      {"whatve", "what've"},
      {"whens", "when's"},
      {"whered", "where'd"},
      {"wheres", "where's"},
      {"whereve", "where've"},
      {"whod", "who'd"},
      {"whod've", "who'd've"},
      {"who'dve", "who'd've"},
      {"wholl", "who'll"},
      {"whos", "who's"},
      {"whove", "who've"},
      {"whyll", "why'll"},
      {"whyre", "why're"},
      {"whys", "why's"},
      {"wont", "won't"},
      {"wouldve", "would've"},
      {"wouldnt", "wouldn't"},
      {"wouldnt've", "wouldn't've"},
      {"wouldn'tve", "wouldn't've"},
      {"yall", "y'all"},
      {"yall'll", "y'all'll"},
      {"y'allll", "y'all'll"},
      {"yall'd've", "y'all'd've"},
      {"y'alld've", "y'all'd've"},
      {"y'all'dve", "y'all'd've"},
      {"youd", "you'd"},
      {"youd've", "you'd've"},
      {"you'dve", "you'd've"},
      {"youll", "you'll"},
      {"youre", "you're"},
      {"youve", "you've"},
  };
  return kTable;
}

const std::map<std::string, std::string>& number_words() {
  static const std::map<std::string, std::string> kMap = {
      {"none", "0"}, {"zero", "0"}, {"one", "1"},   {"two", "2"},   {"three", "3"}, {"four", "4"},
      {"five", "5"}, {"six", "6"},  {"seven", "7"}, {"eight", "8"}, {"nine", "9"},  {"ten", "10"}};
  return kMap;
}

// Order matters: each mark's rule is decided on the text before any mark was processed.
constexpr char32_t kPunctuation[] = {U';', U'/', U'[', U']', U'"',  U'{', U'}',
                                     U'(', U')', U'=', U'+', U'\\', U'_', U'-',
                                     U'>', U'<', U'@', U'`', U',',  U'?', U'!'};
// Python passes re.UNICODE (== 32) as the `count` argument of PERIOD_STRIP.sub.
constexpr int kPeriodStripCount = 32;

bool contains(const std::u32string& s, char32_t a, char32_t b) {
  for (size_t i = 0; i + 1 < s.size(); ++i)
    if (s[i] == a && s[i + 1] == b) return true;
  return false;
}

std::u32string replace_all(const std::u32string& s, const std::u32string& from,
                           const std::u32string& to) {
  std::u32string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s.compare(i, from.size(), from) == 0) {
      out += to;
      i += from.size();
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

// COMMA_STRIP: digit, one or more commas, digit. Never true after word_tokenize removed the
// commas, but the rule is evaluated as the reference does.
bool comma_between_digits(const std::u32string& s) {
  for (size_t i = 1; i < s.size(); ++i) {
    if (s[i] != U',' || !py::is_digit(s[i - 1])) continue;
    size_t j = i;
    while (j < s.size() && s[j] == U',') ++j;
    if (j < s.size() && py::is_digit(s[j])) return true;
  }
  return false;
}

std::u32string process_punctuation(const std::u32string& in) {
  std::u32string out = in;
  const bool comma_strip = comma_between_digits(in);
  for (char32_t p : kPunctuation) {
    const bool erase = contains(in, p, U' ') || contains(in, U' ', p) || comma_strip;
    std::u32string next;
    next.reserve(out.size());
    for (char32_t c : out) {
      if (c != p)
        next.push_back(c);
      else if (!erase)
        next.push_back(U' ');
    }
    out.swap(next);
  }
  // PERIOD_STRIP's mistyped look-behind never constrains anything: a '.' not followed by a
  // digit is removed, at most kPeriodStripCount times, judged on the text before removal.
  std::u32string res;
  res.reserve(out.size());
  int removed = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const bool next_digit = i + 1 < out.size() && py::is_digit(out[i + 1]);
    if (out[i] == U'.' && !next_digit && removed < kPeriodStripCount) {
      ++removed;
      continue;
    }
    res.push_back(out[i]);
  }
  return res;
}

std::string process_digit_article(const std::u32string& in) {
  std::vector<std::string> words;
  for (const auto& w32 : py::split(py::lower(in))) {
    std::string w = py::encode(w32);
    auto it = number_words().find(w);
    if (it != number_words().end()) w = it->second;
    if (w == "a" || w == "an" || w == "the") continue;
    words.push_back(std::move(w));
  }
  for (auto& w : words) {
    auto it = contractions().find(w);
    if (it != contractions().end()) w = it->second;
  }
  return join(words, " ");
}

std::vector<std::u32string> split_lines(const std::u32string& s) {
  std::vector<std::u32string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == U'\n') {
      parts.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return parts;
}

std::string format_percent(double acc) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", 100.0 * acc);
  return buf;
}

}  // namespace

std::string textvqa_normalize(const std::string& answer) {
  // word_tokenize
  std::u32string s = py::lower(py::decode(answer));
  std::u32string t;
  t.reserve(s.size());
  for (char32_t c : s)
    if (c != U',' && c != U'?') t.push_back(c);
  t = py::strip(replace_all(t, U"'s", U" 's"));
  // newlines and tabs
  for (auto& c : t)
    if (c == U'\n' || c == U'\t') c = U' ';
  t = py::strip(t);
  return process_digit_article(process_punctuation(t));
}

double textvqa_answer_score(const std::string& pred_norm, const std::vector<std::string>& gt_norm) {
  if (std::find(gt_norm.begin(), gt_norm.end(), pred_norm) == gt_norm.end()) return 0.0;
  // Summed annotator by annotator, in order, as the reference does, so the float result (and
  // the printed rounding) is identical.
  double sum = 0.0;
  for (size_t i = 0; i < gt_norm.size(); ++i) {
    size_t matching = 0;
    for (size_t j = 0; j < gt_norm.size(); ++j)
      if (j != i && gt_norm[j] == pred_norm) ++matching;
    sum += std::min(1.0, static_cast<double>(matching) / 3);
  }
  return sum / static_cast<double>(gt_norm.size());
}

std::string textvqa_question_from_prompt(const std::string& prompt) {
  const std::u32string p = py::decode(prompt);
  std::u32string q;
  const auto lines = split_lines(p);
  if (starts_with(prompt, "OCR tokens: ")) {
    const std::u32string open = U"Question: ", close = U" Short answer:";
    size_t a = p.find(open);
    size_t b = a == std::u32string::npos ? a : p.find(close, a + open.size());
    MGM_CHECK(b != std::u32string::npos,
              "prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:'");
    q = p.substr(a + open.size(), b - a - open.size());
  } else if (prompt.find("Reference OCR token: ") != std::string::npos && lines.size() == 3) {
    q = starts_with(prompt, "Reference OCR token:") ? lines[1] : lines[0];
  } else if (lines.size() == 2) {
    q = lines[0];
  } else {
    throw Error(str_cat("prompt has ", lines.size(),
                        " lines; expected 'question\\nReference OCR token: ...\\ninstruction' "
                        "(3 lines), 'question\\ninstruction' (2 lines) or 'OCR tokens: ...'"));
  }
  return py::encode(py::lower(q));
}

std::string TextVqaResult::warnings() const {
  std::string w;
  if (repeated_questions > 0)
    w += str_cat("warning: ", experiment, ": ", repeated_questions,
                 " questions are answered by more than one line; each line is scored, as the reference does\n");
  if (conflicting_count > 0)
    w += str_cat("warning: ", experiment, ": ", conflicting_count,
                 " of them with different answers: ", join(conflicting, "; "),
                 conflicting_count > conflicting.size() ? "; ..." : "", "\n");
  return w;
}

std::string TextVqaResult::report() const {
  return str_cat(experiment, "\nSamples: ", samples, "\nAccuracy: ", format_percent(accuracy),
                 "%\n\n");
}

TextVqaResult score_textvqa(const std::string& annotation_file, const std::string& result_file) {
  const Json root = read_json_file(annotation_file);
  MGM_CHECK_FORMAT(root.is_object() && root.contains("data") && root["data"].is_array(),
                   annotation_file, "expected an object with a \"data\" array (TextVQA layout)");
  // Key: (image_id as JSON text, lower-cased question). Later duplicates replace earlier ones.
  std::map<std::pair<std::string, std::string>, size_t> by_key;
  const Json& data = root["data"];
  for (size_t i = 0; i < data.size(); ++i) {
    const Json& a = data[i];
    const std::string where = str_cat("data[", i, "]");
    MGM_CHECK_FORMAT(a.is_object() && a.contains("image_id") && a.contains("question"),
                     annotation_file, where, ": needs \"image_id\" and \"question\"");
    MGM_CHECK_FORMAT(a["question"].is_string(), annotation_file, where,
                     ": \"question\" is not a string");
    by_key[{a["image_id"].dump(), py::lower(a["question"].get<std::string>())}] = i;
  }

  const auto lines = read_jsonl(result_file);
  MGM_CHECK_FORMAT(!lines.empty(), result_file, "no answer lines");
  std::vector<std::string> missing;
  size_t n_missing = 0;
  double total = 0.0;
  // Per annotation answered: the first answer's text, whether it was answered again, and whether
  // a later answer differs.
  struct Seen {
    std::string text;
    bool repeated = false, conflicting = false;
  };
  std::map<size_t, Seen> seen;
  TextVqaResult res;
  for (const auto& rec : lines) {
    const Json& r = rec.value;
    for (const char* key : {"question_id", "prompt", "text"})
      MGM_CHECK_FORMAT(r.contains(key), result_file, "line ", rec.line, ": no \"", key, "\"");
    MGM_CHECK_FORMAT(r["prompt"].is_string() && r["text"].is_string(), result_file, "line ",
                     rec.line, ": \"prompt\" and \"text\" must be strings");
    std::string question;
    try {
      question = textvqa_question_from_prompt(r["prompt"].get<std::string>());
    } catch (const Error& e) {
      throw FormatError(result_file, str_cat("line ", rec.line, ": ", e.what()));
    }
    auto it = by_key.find({r["question_id"].dump(), question});
    if (it == by_key.end()) {
      if (++n_missing <= 5)
        missing.push_back(str_cat("line ", rec.line, " (question_id ", r["question_id"].dump(),
                                  ", question \"", question, "\")"));
      continue;
    }
    const Json& ann = data[it->second];
    MGM_CHECK_FORMAT(ann.contains("answers") && ann["answers"].is_array(), annotation_file, "data[",
                     it->second, "]: no \"answers\" array");
    std::vector<std::string> gt;
    for (const auto& g : ann["answers"]) {
      MGM_CHECK_FORMAT(g.is_string(), annotation_file, "data[", it->second,
                       "]: an answer is not a string");
      gt.push_back(textvqa_normalize(g.get<std::string>()));
    }
    MGM_CHECK_FORMAT(gt.size() == 10, annotation_file, "data[", it->second, "] (image_id ",
                     ann["image_id"].dump(), "): expected 10 answers, found ", gt.size());
    total += textvqa_answer_score(textvqa_normalize(r["text"].get<std::string>()), gt);
    auto [s, first] = seen.emplace(it->second, Seen{r["text"].get<std::string>()});
    if (!first) {
      if (!s->second.repeated) ++res.repeated_questions;
      s->second.repeated = true;
      if (!s->second.conflicting && s->second.text != r["text"].get<std::string>()) {
        s->second.conflicting = true;
        if (++res.conflicting_count <= 5)
          res.conflicting.push_back(str_cat("question_id ", r["question_id"].dump(), ", question \"", question, "\""));
      }
    }
  }
  if (n_missing > 0)
    throw FormatError(result_file,
                      str_cat(n_missing, " of ", lines.size(),
                              " answer lines match no annotation in ", annotation_file,
                              " (by question_id == image_id and question): ", join(missing, "; "),
                              n_missing > missing.size() ? "; ..." : ""));
  std::string base = base_name(result_file);
  // os.path.splitext: leading dots never start an extension.
  const size_t dot = base.rfind('.');
  const size_t first = base.find_first_not_of('.');
  res.experiment = (dot == std::string::npos || first == std::string::npos || dot < first)
                       ? base
                       : base.substr(0, dot);
  res.samples = lines.size();
  res.accuracy = total / static_cast<double>(lines.size());
  return res;
}

}  // namespace mgm::eval
