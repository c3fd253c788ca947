#include "data/dataset.h"

#include <utility>

#include "common/files.h"
#include "common/strings.h"
#include "data/sampler.h"

namespace mgm::data {

SampleError::SampleError(size_t index_, std::string id_, std::string reason_)
    : Error(str_cat("sample #", index_, " (id '", id_, "'): ", reason_)),
      index(index_),
      id(std::move(id_)),
      reason(std::move(reason_)) {}

PreparedSample prepare_sample(const Sample& s, const Tokenizer& tok, Template tmpl,
                              AspectMode aspect, const ImageProcessorConfig& image,
                              const std::string& image_folder, int64_t model_max_length) {
  // Checked before any work: MGM trains one image per sample, and a second image would
  // otherwise be dropped silently.
  if (const std::string refusal = training_refusal(s); !refusal.empty()) throw Error(refusal);
  std::vector<Turn> turns = s.conversations;
  if (s.has_image()) turns = move_image_to_front(turns);
  PreparedSample p;
  p.prompt = render_prompt(tmpl, turns);
  TokenizedSample ts = tokenize_conversation(tok, tmpl, turns, s.has_image(), model_max_length);
  p.problem = std::move(ts.problem);
  p.sample.input_ids = std::move(ts.input_ids);
  p.sample.labels = std::move(ts.labels);
  if (s.has_image()) {
    RgbImage img = decode_image_file(path_join(image_folder, s.images[0]));
    p.sample.image_aux = normalize_chw(preprocess_uint8(img, image, aspect), image);
  }
  return p;
}

SupervisedDataset::SupervisedDataset(DatasetConfig cfg, std::shared_ptr<const Tokenizer> tok)
    : cfg_(std::move(cfg)), tok_(std::move(tok)), tmpl_(parse_template(cfg_.version)) {
  MGM_CHECK(tok_ != nullptr, "SupervisedDataset needs a tokenizer");
  if (cfg_.image_size_aux <= 0)
    throw UsageError(str_cat("--image_size_aux must be positive, got ", cfg_.image_size_aux));
  image_ = cfg_.image;
  image_.shortest_edge = image_.crop = static_cast<int>(cfg_.image_size_aux);
  samples_ = read_llava(cfg_.data_path);
}

const Sample& SupervisedDataset::sample(size_t i) const {
  MGM_CHECK(i < samples_.size(), "sample index ", i, " is outside ", cfg_.data_path, " (",
            samples_.size(), " samples)");
  return samples_[i];
}

std::vector<int64_t> SupervisedDataset::modality_lengths() const {
  return data::modality_lengths(samples_);
}

CollatorSample SupervisedDataset::get(size_t i) const {
  const Sample& s = sample(i);
  PreparedSample p;
  try {
    p = prepare_sample(s, *tok_, tmpl_, cfg_.aspect, image_, cfg_.image_folder,
                       cfg_.model_max_length);
  } catch (const Error& e) {
    throw SampleError(i, s.id, e.what());
  }
  if (!p.problem.empty()) throw SampleError(i, s.id, p.problem);
  return std::move(p.sample);
}

}  // namespace mgm::data
