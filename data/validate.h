// `mgm data validate`: checks a LLaVA dataset before a long job and reports every problem with
// its sample id: malformed records, missing or undecodable images, conversations that do not
// alternate, "<image>" tokens without an image (or an image without the token), samples whose
// tokenised length with the image tokens exceeds the maximum, and template/tokenisation
// mismatches (which the reference silently trains as fully masked samples).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mgm::data {

struct ValidateOptions {
  std::string data_path;
  std::string image_folder;
  std::string tokenizer;           // tokenizer.model or a folder with one
  std::string version = "gemma";   // conversation template
  int64_t model_max_length = 2048;
  int64_t image_tokens = 576;      // LLM positions one image takes
  bool decode_images = true;       // false: only check that image files exist
};

struct DataProblem {
  std::string kind;   // e.g. "missing_image"
  std::string where;  // "line L (record #I, id 'X')"
  std::string message;
};

struct ValidationReport {
  size_t samples = 0;
  size_t samples_with_problems = 0;
  std::map<std::string, size_t> counts;  // by kind
  std::vector<DataProblem> problems;
  bool ok() const { return problems.empty(); }
  // The summary and every problem, one per line.
  std::string text(size_t max_listed = 200) const;
};

ValidationReport validate_dataset(const ValidateOptions& opts);

}  // namespace mgm::data
