#include "data/convert.h"

#include <unordered_map>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "data/llava.h"
#include "data/py_compat.h"
#include "data/py_random.h"
#include "data/records.h"

namespace mgm::data {
namespace {

FormatError record_error(const std::string& path, const Record& r, const std::string& msg) {
  return FormatError(path, record_where(r) + ": " + msg);
}

bool is_ascii_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// re.split(r'\[\[([a-zA-Z]*?)\]\]: ', text): [before, role1, sent1, role2, sent2, ...].
std::vector<std::string> split_roles(const std::string& text) {
  std::vector<std::string> parts;
  size_t seg_start = 0, i = 0;
  while (i + 1 < text.size()) {
    if (text[i] == '[' && text[i + 1] == '[') {
      size_t j = i + 2;
      while (j < text.size() && is_ascii_letter(text[j])) ++j;
      if (text.compare(j, 4, "]]: ") == 0) {
        parts.push_back(text.substr(seg_start, i - seg_start));
        parts.push_back(text.substr(i + 2, j - i - 2));
        i = j + 4;
        seg_start = i;
        continue;
      }
    }
    ++i;
  }
  parts.push_back(text.substr(seg_start));
  return parts;
}

// dj_to_llava's per-sentence cleanup; `index` is the sentence's position in the sample.
std::string clean_sentence(const std::string& raw, size_t index, const DjToLlavaOptions& o) {
  std::string s = py_strip(raw);
  if (ends_with(s, o.sent_separator)) s = py_strip(s.substr(0, s.size() - o.sent_separator.size()));
  if (ends_with(s, o.eoc_special_token))
    s = py_strip(s.substr(0, s.size() - o.eoc_special_token.size()));
  if (index > 0 && o.keep_only_first_image) {
    const std::string& img = o.image_special_token;
    const std::string& sep = o.sent_separator;
    if (starts_with(s, img)) {
      s = py_strip(s.substr(img.size()));
      if (starts_with(s, sep)) s = py_strip(s.substr(sep.size()));
    }
    if (ends_with(s, img)) {
      s = py_strip(s.substr(0, s.size() - img.size()));
      if (ends_with(s, sep)) s = py_strip(s.substr(0, s.size() - sep.size()));
    }
  }
  return s;
}

void check_tokens(const std::string& eoc, const std::string& img, const std::string& sep) {
  // Python's s[:-len(x)] with an empty x yields "", so an empty token would silently empty
  // every sentence; refuse instead.
  if (eoc.empty()) throw UsageError("--eoc_special_token must not be empty");
  if (img.empty()) throw UsageError("--image_special_token must not be empty");
  if (sep.empty()) throw UsageError("--sent_seperator must not be empty");
}

// Original LLaVA records by str(id) (last one wins on duplicates, as a dict comprehension).
struct OriginalIndex {
  RecordFile file;
  std::unordered_map<std::string, size_t> by_id;
};

OriginalIndex index_original(const std::string& path, Warnings* warnings) {
  OriginalIndex oi;
  oi.file = read_records(path);
  size_t dups = 0;
  for (size_t i = 0; i < oi.file.records.size(); ++i) {
    const Record& r = oi.file.records[i];
    if (!r.value.is_object()) throw record_error(path, r, "expected a JSON object");
    auto id = r.value.find("id");
    if (id == r.value.end()) throw record_error(path, r, "missing \"id\"");
    if (!id->is_string() && !id->is_number())
      throw record_error(path, r,
                         str_cat("\"id\" must be a string or number, found ", id->type_name()));
    auto [it, inserted] = oi.by_id.emplace(py_str(*id), i);
    if (!inserted) {
      it->second = i;
      ++dups;
    }
  }
  if (dups && warnings)
    warnings->push_back(str_cat(path, ": ", dups,
                                " duplicate ids; the last sample with each id is "
                                "used to restore questions (as the reference does)"));
  return oi;
}

}  // namespace

std::vector<OrderedJson> dj_to_llava(const std::string& dj_path, const DjToLlavaOptions& o,
                                     Warnings* warnings) {
  check_tokens(o.eoc_special_token, o.image_special_token, o.sent_separator);
  if (o.image_special_token != kLlavaImageToken && warnings && !o.restore_questions)
    warnings->push_back(str_cat("image_special_token is \"", o.image_special_token,
                                "\", not \"<image>\": the first-round image token is kept as "
                                "is, so MGM will not find \"<image>\" in those samples"));
  OriginalIndex orig;
  if (o.restore_questions) {
    if (o.original_llava_ds_path.empty())
      throw UsageError("--restore_questions needs --original_llava_ds_path");
    if (!path_exists(o.original_llava_ds_path))
      throw UsageError(
          str_cat("original LLaVA dataset ", o.original_llava_ds_path, " can not be found"));
    orig = index_original(o.original_llava_ds_path, warnings);
  }
  RecordFile f = read_records(dj_path, FileKind::kJsonLines);
  std::vector<OrderedJson> out;
  out.reserve(f.records.size());
  size_t image_without_token = 0;
  for (const Record& r : f.records) {
    const OrderedJson& v = r.value;
    if (!v.is_object())
      throw record_error(dj_path, r, str_cat("expected a JSON object, found ", v.type_name()));
    auto id_it = v.find("id");
    if (id_it == v.end()) throw record_error(dj_path, r, "missing \"id\"");
    auto text_it = v.find("text");
    if (text_it == v.end()) throw record_error(dj_path, r, "missing \"text\"");
    if (!text_it->is_string())
      throw record_error(dj_path, r,
                         str_cat("\"text\" must be a string, found ", text_it->type_name()));
    const std::string& text = text_it->get_ref<const std::string&>();
    // list(set(images)): only the number of distinct paths matters (more than one is refused).
    std::vector<std::string> images;
    auto img_it = v.find("images");
    if (img_it != v.end()) {
      if (!img_it->is_array())
        throw record_error(dj_path, r,
                           str_cat("\"images\" must be a list, found ", img_it->type_name()));
      for (const auto& p : *img_it) {
        if (!p.is_string())
          throw record_error(dj_path, r,
                             str_cat("\"images\" entries must be strings, found ", p.type_name()));
        const std::string& s = p.get_ref<const std::string&>();
        bool seen = false;
        for (const auto& e : images) seen = seen || e == s;
        if (!seen) images.push_back(s);
      }
    }
    if (images.size() > 1)
      throw record_error(dj_path, r,
                         str_cat("there are ", images.size(),
                                 " distinct images in the "
                                 "sample, which the LLaVA format cannot hold (at most 1)"));
    OrderedJson id_out = *id_it;
    OrderedJson conversations = OrderedJson::array();
    if (o.restore_questions) {
      if (!id_it->is_string() && !id_it->is_number())
        throw record_error(
            dj_path, r, str_cat("\"id\" must be a string or number, found ", id_it->type_name()));
      std::string key = py_str(*id_it);
      auto found = orig.by_id.find(key);
      if (found == orig.by_id.end())
        throw record_error(dj_path, r,
                           str_cat("id '", key, "' is not in the original LLaVA dataset ",
                                   o.original_llava_ds_path, " (needed by --restore_questions)"));
      const Record& orec = orig.file.records[found->second];
      auto oconv = orec.value.find("conversations");
      if (oconv == orec.value.end() || !oconv->is_array() || oconv->size() < 2)
        throw record_error(o.original_llava_ds_path, orec,
                           "needs \"conversations\" with at least 2 turns to restore the question");
      const OrderedJson& answer_turn = (*oconv)[1];
      if (!answer_turn.is_object() || answer_turn.find("from") == answer_turn.end())
        throw record_error(o.original_llava_ds_path, orec, "conversations[1] has no \"from\"");
      id_out = orec.value["id"];
      conversations.push_back((*oconv)[0]);
      OrderedJson answer = OrderedJson::object();
      answer["from"] = answer_turn["from"];
      answer["value"] = clean_sentence(text, 1, o);
      conversations.push_back(std::move(answer));
    } else {
      std::vector<std::string> parts = split_roles(text);
      if (!parts.empty() && parts[0].empty()) parts.erase(parts.begin());
      if (parts.size() % 4 != 0)
        throw record_error(dj_path, r,
                           str_cat("the text has unbalanced (human, robot) rounds (", parts.size(),
                                   " parts after splitting on \"[[role]]: \"; expected a "
                                   "multiple of 4)"));
      for (size_t i = 0; i < parts.size() / 2; ++i) {
        OrderedJson turn = OrderedJson::object();
        turn["from"] = parts[2 * i];
        turn["value"] = clean_sentence(parts[2 * i + 1], i, o);
        conversations.push_back(std::move(turn));
      }
    }
    OrderedJson sample = OrderedJson::object();
    sample["id"] = std::move(id_out);
    sample["conversations"] = conversations;
    if (images.size() == 1) {
      sample["image"] = images[0];
      const OrderedJson& first = conversations.empty() ? OrderedJson() : conversations[0];
      bool has_token =
          first.is_object() && first.contains("value") && first["value"].is_string() &&
          first["value"].get_ref<const std::string&>().find(kLlavaImageToken) != std::string::npos;
      if (!has_token) ++image_without_token;
    }
    out.push_back(std::move(sample));
  }
  if (image_without_token && warnings)
    warnings->push_back(
        str_cat(image_without_token, " of ", out.size(),
                " converted samples have an image but no "
                "\"<image>\" in their first turn; MGM drops the image features of such samples"));
  return out;
}

size_t dj_to_llava_file(const std::string& dj_path, const std::string& target_path,
                        const DjToLlavaOptions& opt, bool overwrite, Warnings* warnings) {
  if (!path_exists(dj_path)) throw Error(str_cat("input dataset ", dj_path, " can not be found"));
  if (!ends_with(target_path, ".json"))
    throw UsageError(str_cat("the LLaVA target ", target_path,
                             " must end with \".json\" (as dj_to_llava.py requires)"));
  check_output_path(target_path, overwrite, {dj_path, opt.original_llava_ds_path});
  std::vector<OrderedJson> samples = dj_to_llava(dj_path, opt, warnings);
  write_output(target_path, to_json_array_text(samples));
  return samples.size();
}

std::vector<OrderedJson> llava_to_dj(const std::string& llava_path, const LlavaToDjOptions& o,
                                     Warnings* warnings) {
  check_tokens(o.eoc_special_token, o.image_special_token, o.sent_separator);
  const std::string& img = o.image_special_token;
  const std::string& sep = o.sent_separator;
  const std::string& eoc = o.eoc_special_token;
  if (o.image_broadcast) {
    if (!o.split_chunk) throw UsageError("--image_broadcast needs --split_chunk");
    const std::string& p = o.image_broadcast_pos;
    if (p != "random" && p != "before" && p != "after" && p != "follow")
      throw UsageError(str_cat(
          "--image_broadcast_pos must be one of random, before, after, follow; got '", p, "'"));
  }
  if (warnings && img != kLlavaImageToken)
    warnings->push_back(
        str_cat("image_special_token is \"", img, "\"; LLaVA datasets use \"<image>\""));
  if (warnings && !o.add_eoc_at_last)
    warnings->push_back("add_eoc_at_last is off: the text gets no final eoc token");
  PyRandom rng(o.seed);
  RecordFile f = read_records(llava_path);
  std::vector<OrderedJson> out;
  out.reserve(f.records.size());
  size_t text_only = 0, multi_turn_captions = 0;
  for (const Record& r : f.records) {
    Sample s = parse_llava_record(llava_path, r);
    if (s.image_is_list)
      throw record_error(llava_path, r,
                         "\"image\" is a list; llava_to_dj handles one image path per sample");
    const size_t n = s.conversations.size();
    if (n % 2 != 0)
      throw record_error(
          llava_path, r,
          str_cat("the conversations have unbalanced (human, robot) rounds (", n, " turns)"));
    if (!s.has_image()) ++text_only;
    if (n > 2 && o.only_keep_caption) ++multi_turn_captions;
    OrderedJson images = OrderedJson::array();
    std::string first_pos;
    std::vector<std::string> rounds;
    for (size_t i = 0; i < n / 2; ++i) {
      const Turn& human = s.conversations[2 * i];
      const Turn& robot = s.conversations[2 * i + 1];
      std::string sent_human = human.value;
      if (!s.has_image()) {
        // text-only: kept as is
      } else if (i == 0) {
        if (starts_with(sent_human, img))
          first_pos = "before";
        else if (ends_with(sent_human, img))
          first_pos = "after";
        else
          throw record_error(llava_path, r,
                             str_cat("the image token \"", img,
                                     "\" is neither at the start nor "
                                     "at the end of the first human turn"));
        images.push_back(s.images[0]);
      } else if (o.image_broadcast) {
        std::string pos = o.image_broadcast_pos;
        if (pos == "random")
          pos = rng.random() < 0.5 ? "before" : "after";
        else if (pos == "follow")
          pos = first_pos == "before" ? "before" : "after";
        if (pos == "before")
          sent_human = img + sep + sent_human;
        else
          sent_human += sep + img;
        images.push_back(s.images[0]);
      }
      if (o.only_keep_caption)
        rounds.push_back(img + sep + robot.value);
      else
        rounds.push_back("[[" + human.from + "]]: " + sent_human + sep + "[[" + robot.from +
                         "]]: " + robot.value);
    }
    std::string join_sep = o.split_chunk ? " " + eoc + sep : sep;
    std::string text = join(rounds, join_sep);
    if (o.add_eoc_at_last) text += " " + eoc;
    OrderedJson d = OrderedJson::object();
    d["id"] = o.str_id ? OrderedJson(s.id) : s.id_value;
    d["text"] = text;
    d["images"] = std::move(images);
    out.push_back(std::move(d));
  }
  if (warnings && text_only)
    warnings->push_back(
        str_cat(text_only,
                " samples have no image (not multimodal); better remove them before "
                "converting"));
  if (warnings && multi_turn_captions)
    warnings->push_back(str_cat(multi_turn_captions,
                                " multi-turn samples with --only_keep_caption: only each "
                                "round's answer is kept (this looks like a fine-tuning dataset)"));
  return out;
}

size_t llava_to_dj_file(const std::string& llava_path, const std::string& target_path,
                        const LlavaToDjOptions& opt, bool overwrite, Warnings* warnings) {
  if (!path_exists(llava_path))
    throw Error(str_cat("input LLaVA dataset ", llava_path, " can not be found"));
  if (!ends_with(target_path, ".jsonl"))
    throw UsageError(str_cat("the Data-Juicer target ", target_path,
                             " must end with \".jsonl\" (as llava_to_dj.py requires)"));
  check_output_path(target_path, overwrite, {llava_path});
  std::vector<OrderedJson> samples = llava_to_dj(llava_path, opt, warnings);
  write_output(target_path, to_json_lines_text(samples));
  return samples.size();
}

SampleResult sample_dataset_file(const std::string& input, const std::string& output,
                                 int64_t max_samples, int64_t seed, bool overwrite) {
  if (max_samples < 0) throw UsageError(str_cat("--max must be >= 0, got ", max_samples));
  check_output_path(output, overwrite, {input});
  RecordFile f = read_records(input);
  SampleResult res;
  res.total = f.records.size();
  std::vector<OrderedJson> kept;
  if (static_cast<uint64_t>(max_samples) < res.total) {
    PyRandom rng(seed);
    for (uint64_t i : rng.sample_indices(res.total, static_cast<uint64_t>(max_samples)))
      kept.push_back(std::move(f.records[i].value));
  } else {
    for (auto& r : f.records) kept.push_back(std::move(r.value));
  }
  res.kept = kept.size();
  write_output(
      output, f.kind == FileKind::kJsonArray ? to_json_array_text(kept) : to_json_lines_text(kept));
  return res;
}

}  // namespace mgm::data
