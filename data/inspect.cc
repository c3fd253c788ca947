#include "data/inspect.h"

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "data/conversation.h"
#include "data/dataset.h"
#include "data/llava.h"
#include "data/records.h"
#include "data/tokenizer.h"

namespace mgm::data {

InspectResult inspect_sample(const InspectOptions& o) {
  RecordFile file = read_records(o.data_path);
  if (o.index < 0 || static_cast<size_t>(o.index) >= file.records.size())
    throw UsageError(str_cat("--index ", o.index, " is outside ", o.data_path, " (", file.records.size(),
                             " samples)"));
  const Sample s = parse_llava_record(o.data_path, file.records[static_cast<size_t>(o.index)]);
  Tokenizer tok = Tokenizer::load(o.tokenizer);
  const Template tmpl = parse_template(o.version);
  ImageProcessorConfig ic = o.image;
  ic.shortest_edge = ic.crop = static_cast<int>(o.collator.aux_size);
  // The training dataset's per-sample pipeline; a tokenisation problem is shown, not thrown.
  PreparedSample p;
  try {
    p = prepare_sample(s, tok, tmpl, o.aspect, ic, o.image_folder, o.collator.model_max_length);
  } catch (const Error& e) {
    throw Error(str_cat(o.data_path, ": sample '", s.id, "': ", e.what()));
  }
  InspectResult r;
  r.sample_id = s.id;
  r.prompt = p.prompt;
  r.problem = p.problem;
  r.batch = collate({p.sample}, o.collator);
  // Decode run by run: supervised runs in [[...]], special tokens shown, images as <image>.
  const CollatorSample& ts = p.sample;
  const auto& ids = ts.input_ids;
  size_t i = 0;
  const size_t n = std::min(ids.size(), static_cast<size_t>(o.collator.model_max_length));
  while (i < n) {
    if (ids[i] == kImageTokenIndex) {
      r.annotated += "<image>";
      ++i;
      continue;
    }
    const bool sup = ts.labels[i] != kIgnoreIndex;
    std::vector<int64_t> run;
    while (i < n && ids[i] != kImageTokenIndex && (ts.labels[i] != kIgnoreIndex) == sup) run.push_back(ids[i++]);
    if (sup) r.supervised_tokens += run.size();
    // Special tokens by their piece; ordinary ones decoded together (byte pieces of one
    // character must be decoded as a group).
    std::string text;
    std::vector<int64_t> plain;
    for (int64_t id : run) {
      if (tok.is_special(id)) {
        text += tok.decode(plain, false) + tok.piece(id);
        plain.clear();
      } else {
        plain.push_back(id);
      }
    }
    text += tok.decode(plain, false);
    r.annotated += sup ? "[[" + text + "]]" : text;
  }
  return r;
}

}  // namespace mgm::data
