#include "data/validate.h"

#include <algorithm>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "data/conversation.h"
#include "data/image.h"
#include "data/llava.h"
#include "data/records.h"
#include "data/tokenizer.h"

namespace mgm::data {

std::string ValidationReport::text(size_t max_listed) const {
  std::ostringstream os;
  os << "samples: " << samples << ", with problems: " << samples_with_problems << "\n";
  if (problems.empty()) {
    os << "no problems found\n";
    return os.str();
  }
  os << "problems by kind:";
  for (const auto& [k, n] : counts) os << " " << k << "=" << n;
  os << "\n";
  for (size_t i = 0; i < problems.size() && i < max_listed; ++i)
    os << problems[i].kind << ": " << problems[i].where << ": " << problems[i].message << "\n";
  if (problems.size() > max_listed) os << "... " << problems.size() - max_listed << " more\n";
  return os.str();
}

ValidationReport validate_dataset(const ValidateOptions& o) {
  ValidationReport rep;
  const Template tmpl = parse_template(o.version);
  Tokenizer tok = Tokenizer::load(o.tokenizer);
  RecordFile file = read_records(o.data_path);  // a syntax error stops here, with line/column
  ImageProcessorConfig img_cfg;
  auto add = [&](const std::string& kind, const std::string& where, const std::string& msg) {
    rep.problems.push_back({kind, where, msg});
    rep.counts[kind]++;
  };
  for (const Record& r : file.records) {
    ++rep.samples;
    const size_t before = rep.problems.size();
    const std::string where = record_where(r);
    Sample s;
    try {
      s = parse_llava_record(o.data_path, r);
    } catch (const Error& e) {
      // The reader's message starts with the path; keep only what follows it.
      std::string m = e.what();
      const std::string prefix = o.data_path + ": ";
      if (starts_with(m, prefix)) m = m.substr(prefix.size());
      if (starts_with(m, where + ": ")) m = m.substr(where.size() + 2);
      add("malformed_record", where, m);
      ++rep.samples_with_problems;
      continue;
    }
    // What training refuses outright (shared with the dataset).
    if (const std::string refusal = training_refusal(s); !refusal.empty())
      add(s.images.size() > 1 ? "multiple_images" : "refused_sample", where, refusal);
    // Images exist, are within the decompression-bomb limit (from the header, even without
    // decoding) and decode.
    for (const auto& img : s.images) {
      const std::string path = path_join(o.image_folder, img);
      if (!path_exists(path)) {
        add("missing_image", where, str_cat("image file not found: ", path));
        continue;
      }
      try {
        if (o.decode_images) {  // decoding checks the header's size first
          RgbImage im = decode_image_file(path);
          if (im.width < 1 || im.height < 1) add("undecodable_image", where, str_cat(path, ": empty image"));
        } else if (const auto wh = read_image_size_file(path)) {
          check_image_pixels(wh->first, wh->second, path);
        }
      } catch (const ImageTooLargeError& e) {
        add("image_too_large", where, e.what());
      } catch (const Error& e) {
        add("undecodable_image", where, e.what());
      }
    }
    // "<image>" tokens against images.
    size_t image_tokens_in_text = 0;
    for (const auto& t : s.conversations) {
      size_t pos = 0;
      while ((pos = t.value.find(kImageToken, pos)) != std::string::npos) {
        ++image_tokens_in_text;
        pos += std::string(kImageToken).size();
      }
    }
    if (s.has_image() && image_tokens_in_text == 0)
      add("image_without_token", where,
          str_cat("sample has ", s.images.size(), " image(s) but no '<image>' in its text: the image would be ignored"));
    if (!s.has_image() && image_tokens_in_text > 0)
      add("token_without_image", where,
          str_cat("text has ", image_tokens_in_text, " '<image>' token(s) but the sample has no image"));
    // Template, tokenisation, length.
    std::vector<Turn> turns = s.conversations;
    if (s.has_image()) turns = move_image_to_front(turns);
    try {
      TokenizedSample ts = tokenize_conversation(tok, tmpl, turns, s.has_image(), o.model_max_length);
      if (!ts.problem.empty()) add("tokenization_mismatch", where, ts.problem);
      const int64_t markers = std::count(ts.input_ids.begin(), ts.input_ids.end(), kImageTokenIndex);
      const int64_t length = static_cast<int64_t>(ts.input_ids.size()) + markers * (o.image_tokens - 1);
      // Position of the last supervised token once images are expanded.
      int64_t last_supervised = -1, pos = 0;
      for (size_t i = 0; i < ts.input_ids.size(); ++i) {
        if (ts.labels[i] != kIgnoreIndex) last_supervised = pos;
        pos += ts.input_ids[i] == kImageTokenIndex ? o.image_tokens : 1;
      }
      if (length > o.model_max_length) {
        const bool loses = last_supervised >= o.model_max_length;
        add("too_long", where,
            str_cat("tokenised length with image tokens is ", length, " > model_max_length ",
                    o.model_max_length, loses ? ": truncation would cut supervised answer tokens"
                                             : ": truncation would cut only unsupervised tokens"));
      }
      if (ts.problem.empty() && last_supervised < 0 && length <= o.model_max_length)
        add("no_supervised_tokens", where, "no answer tokens to train on");
    } catch (const Error& e) {
      add("bad_conversation", where, e.what());
    }
    if (rep.problems.size() > before) ++rep.samples_with_problems;
  }
  return rep;
}

}  // namespace mgm::data
