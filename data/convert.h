// The Data-Juicer <-> LLaVA converters and the sample-number cap, with the behaviour of the
// reference tools: data-juicer's dj_to_llava.py (the version the Better Synth toolkit calls,
// with restore_questions), llava_to_dj.py, and the toolkit's check_sample_number.py.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/json.h"

namespace mgm::data {

// Data-Juicer's special tokens (data_juicer/utils/mm_utils.py SpecialTokens).
inline constexpr const char* kDjImageToken = "<__dj__image>";
inline constexpr const char* kDjEocToken = "<|__dj__eoc|>";
inline constexpr const char* kLlavaImageToken = "<image>";

struct DjToLlavaOptions {
  bool keep_only_first_image = true;
  std::string eoc_special_token = kDjEocToken;
  std::string image_special_token = kLlavaImageToken;
  std::string sent_separator = "\n";
  bool restore_questions = false;
  std::string original_llava_ds_path;
};

struct LlavaToDjOptions {
  bool str_id = true;
  bool split_chunk = false;
  bool image_broadcast = false;
  std::string image_broadcast_pos = "random";  // random | before | after | follow
  std::string eoc_special_token = kDjEocToken;
  std::string image_special_token = kLlavaImageToken;
  bool add_eoc_at_last = true;
  std::string sent_separator = "\n";
  bool only_keep_caption = false;
  // The reference draws "random" positions from Python's unseeded global random; here the
  // draws come from random.seed(seed) so runs are reproducible (and equal Python's when it is
  // seeded the same way).
  int64_t seed = 0;
};

// Warnings the converters emit (the reference logs them); callers print them.
using Warnings = std::vector<std::string>;

// Converts a Data-Juicer JSONL file to LLaVA records. Throws FormatError naming the file, line,
// record and id for any sample the reference would reject.
std::vector<OrderedJson> dj_to_llava(const std::string& dj_path, const DjToLlavaOptions& opt,
                                     Warnings* warnings);
// dj_to_llava + output checks (".json" suffix, no overwrite unless asked) + atomic write.
size_t dj_to_llava_file(const std::string& dj_path, const std::string& target_path,
                        const DjToLlavaOptions& opt, bool overwrite, Warnings* warnings);

std::vector<OrderedJson> llava_to_dj(const std::string& llava_path, const LlavaToDjOptions& opt,
                                     Warnings* warnings);
size_t llava_to_dj_file(const std::string& llava_path, const std::string& target_path,
                        const LlavaToDjOptions& opt, bool overwrite, Warnings* warnings);

// The toolkit's sample-number check: when the dataset has more than max_samples records, keep
// random.sample(records, max_samples) after random.seed(seed) (in sampled order), else keep all.
// The output has the input's format (JSONL in, JSONL out; JSON array in, JSON array out).
struct SampleResult {
  size_t total = 0;
  size_t kept = 0;
};
SampleResult sample_dataset_file(const std::string& input, const std::string& output,
                                 int64_t max_samples, int64_t seed, bool overwrite);

}  // namespace mgm::data
