// The training dataset (the reference's LazySupervisedDataset): LLaVA records read and validated
// up front, and per sample on demand the template + label masking and the aux image, ready for
// the collator. A sample that cannot be used is a SampleError naming its index, id and reason;
// what to do about it (stop or skip) is the loader's policy, never a silent substitute.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "data/collator.h"
#include "data/conversation.h"
#include "data/image.h"
#include "data/llava.h"
#include "data/tokenizer.h"

namespace mgm::data {

struct DatasetConfig {
  std::string data_path;  // LLaVA JSON array or JSONL
  std::string image_folder;
  std::string version = "gemma";  // conversation template
  AspectMode aspect = AspectMode::kSquare;
  int64_t model_max_length = 2048;
  int64_t image_size_aux = 768;  // shortest edge and crop of the aux image
  ImageProcessorConfig image;    // mean/std (sizes overridden from image_size_aux)
};

// One sample that cannot be used: its index, id and why (missing/undecodable image,
// tokenisation mismatch, more than one image, ...).
class SampleError : public Error {
 public:
  SampleError(size_t index, std::string id, std::string reason);
  size_t index;
  std::string id, reason;
};

// The per-sample pipeline shared by training and `mgm data inspect`: move_image_to_front,
// tokenize_conversation, and for image samples decode + preprocess_uint8 + normalize_chw with
// `image` (whose sizes are the aux size). Throws mgm::Error (the reason, without the sample's
// id) for a malformed conversation or an unusable image; a tokenisation problem is returned in
// `problem` for the caller to decide about.
struct PreparedSample {
  CollatorSample sample;
  std::string prompt;   // the rendered template
  std::string problem;  // TokenizedSample::problem (labels fully masked); empty when fine
};
PreparedSample prepare_sample(const Sample& s, const Tokenizer& tok, Template tmpl,
                              AspectMode aspect, const ImageProcessorConfig& image,
                              const std::string& image_folder, int64_t model_max_length);

class SupervisedDataset {
 public:
  // Reads and validates every record up front (format errors are fatal FormatErrors naming
  // file:line, as read_llava); an unknown template is a UsageError.
  SupervisedDataset(DatasetConfig cfg, std::shared_ptr<const Tokenizer> tok);

  size_t size() const { return samples_.size(); }
  const Sample& sample(size_t i) const;
  const std::vector<Sample>& samples() const { return samples_; }
  std::vector<int64_t> modality_lengths() const;  // data/sampler.h modality_lengths
  // The collator input of sample i. Thread-safe. Throws SampleError naming index, id and reason
  // (a tokenisation mismatch included: never a silently fully-masked sample).
  CollatorSample get(size_t i) const;
  const DatasetConfig& config() const { return cfg_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  Template conversation_template() const { return tmpl_; }

 private:
  DatasetConfig cfg_;
  std::shared_ptr<const Tokenizer> tok_;
  Template tmpl_;
  ImageProcessorConfig image_;  // cfg_.image with the aux sizes
  std::vector<Sample> samples_;
};

}  // namespace mgm::data
