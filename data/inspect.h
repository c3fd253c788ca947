// What the trainer gets for one sample: the tokenised prompt with the supervised spans marked,
// and the collated tensors (input_ids, labels, attention_mask, images, images_aux) exactly as
// the collator produces them for a batch of one.
#pragma once

#include <string>

#include "data/collator.h"
#include "data/image.h"

namespace mgm::data {

struct InspectOptions {
  std::string data_path, image_folder, tokenizer;
  std::string version = "gemma";
  int64_t index = 0;
  AspectMode aspect = AspectMode::kPad;
  CollatorConfig collator;  // model_max_length, aux/lr sizes
  ImageProcessorConfig image;
};

struct InspectResult {
  Batch batch;
  std::string sample_id;
  std::string prompt;      // the rendered template
  std::string annotated;   // decoded ids, supervised runs wrapped in [[...]], images as <image>
  size_t supervised_tokens = 0;
  std::string problem;     // tokenization mismatch etc. (labels fully masked), empty when fine
};

InspectResult inspect_sample(const InspectOptions& o);

}  // namespace mgm::data
