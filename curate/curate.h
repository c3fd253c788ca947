// The data half of the Better Synth loop, done with the MGM models the user trains: recaptioning
// (`mgm caption`, on the serving engine, as `mgm eval` generates), scoring captions by the model's
// likelihood with and without the image (`mgm data score`, written as Data-Juicer stats), and
// filtering on those scores (`mgm data filter`).
//
// Data-Juicer semantics followed (modelscope/data-juicer, data_juicer/ops/mapper/
// image_captioning_mapper.py and data_juicer/utils/mm_utils.py): a generated DJ sample is a copy
// of the original whose text keeps only the special tokens of each <|__dj__eoc|> chunk, with each
// caption inserted after an image token (" caption "), the chunk closed by <|__dj__eoc|>;
// keep_original_sample puts the original first, then the generated ones; samples without images
// generate nothing.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/json.h"
#include "eval/runner.h"

namespace mgm::curate {

// The input formats: Data-Juicer JSONL (text + images) or LLaVA JSON (image + conversations).
enum class DataFormat { kDj, kLlava };

// One sample of a caption dataset, with what the tools need of it.
struct CaptionSample {
  OrderedJson record;
  size_t index = 0;
  std::string where;                // "line N (record #I, id 'X')"
  std::vector<std::string> images;  // as written in the record
  std::string caption;              // DJ: the text without special tokens; LLaVA: the first answer
};

struct CaptionDataset {
  std::string path;
  DataFormat format = DataFormat::kDj;
  std::vector<CaptionSample> samples;
};
CaptionDataset read_caption_dataset(const std::string& path);

// An image path of a record resolved against the image folder (absolute paths stay).
std::string resolve_image(const std::string& image_folder, const std::string& image);

// Data-Juicer's mm_utils: the special tokens of `text` in order, everything else removed; and the
// text without them (stripped).
std::string dj_only_special_tokens(const std::string& text);
std::string dj_remove_special_tokens(const std::string& text);
// The generated DJ text for a sample whose images got `captions` (one per image occurrence, in
// order), as image_captioning_mapper builds it.
std::string dj_captioned_text(const std::string& text, const std::vector<std::string>& captions);

// A generated sample: the record with its caption(s) replaced (DJ text or LLaVA first answer).
OrderedJson captioned_record(const CaptionSample& s, DataFormat f,
                             const std::vector<std::string>& captions_per_image);

// The model's mean token log-likelihood of `caption` as the answer to `prompt`, with the image
// (`aux`: the normalised aux image [3,S,S], from eval::image_aux_tensor) or without (undefined),
// rendered with the model's conversation template as training renders it.
struct CaptionLikelihood {
  double mean_logprob = 0;
  int64_t tokens = 0;
  std::vector<double> token_logprobs;  // per supervised token, in order
};
CaptionLikelihood caption_likelihood(eval::EvalModel& m, const std::string& prompt,
                                     const at::Tensor& aux, const std::string& caption);

// A 64-bit difference hash (dHash) of an image: grayscale, area-resized to 9x8, one bit per
// horizontally adjacent pair (left brighter than right). Near-duplicates differ in few bits.
uint64_t image_dhash(const data::RgbImage& img);
int hamming64(uint64_t a, uint64_t b);

struct CaptionOptions {
  std::string data_path, image_folder, out;
  std::vector<std::string> prompts = {"Provide a one-sentence caption for the provided image."};
  int64_t num_candidates = 1;
  std::string select = "best-score";  // best-score | all
  bool keep_original = true;
  int64_t batch_size = 8;
  double temperature = 0.0, top_p = 1.0;
  int64_t max_new_tokens = 64;
  uint64_t seed = 0;
  bool overwrite = false;
  bool skip_bad_samples = false;
  bool quiet = false;
  // Testing only: SIGKILL itself halfway through recording batch N+1; -1: off.
  int64_t test_kill_after_batches = -1;
};
struct CaptionStats {
  size_t samples = 0, resumed = 0, captioned = 0, skipped = 0, written = 0;
};
// Captions every image of the dataset, resumable: progress is appended per batch to
// OUT.partial.jsonl (settings on its first line) and OUT is written, in the input's format, once
// every sample is done.
CaptionStats caption_dataset(eval::EvalModel& m, const CaptionOptions& o);

struct ScoreOptions {
  std::string data_path, image_folder, out;
  std::string prompt = "Provide a one-sentence caption for the provided image.";
  bool overwrite = false;
  bool skip_bad_samples = false;
  bool quiet = false;
};
// One line per sample: the record plus "__dj__stats__" (mgm_loglik, mgm_loglik_text_only,
// mgm_image_gain, mgm_image_gain_min (the smallest per-token gain: one wrong word among many
// right ones shows there), caption_tokens, num_words, text_len, image_width, image_height, aspect_ratios,
// image_dhash). Returns the number of samples scored.
size_t score_dataset(eval::EvalModel& m, const ScoreOptions& o);

struct FilterOptions {
  std::string data_path, scores, out;
  std::optional<double> min_image_gain;
  std::optional<double> keep_top_fraction;  // of the samples left, by rank_by
  std::string rank_by = "mgm_image_gain";   // the stat keep_top_fraction ranks by (higher first)
  std::optional<int64_t> min_words, max_words;
  std::optional<int64_t> min_side;
  std::optional<double> max_aspect_ratio;
  std::string dedup;      // "" | phash | text | both
  int dedup_distance = 0;  // dHash bits that may differ for two images to count as one
  bool overwrite = false;
};
struct FilterReport {
  size_t input = 0, kept = 0;
  std::vector<std::pair<std::string, size_t>> dropped;  // reason -> count, in filter order
  Json json;  // the whole report (counts, thresholds, examples per reason)
};
// Writes OUT (the kept samples, input format), OUT.report.json and one histogram PNG per score
// (OUT.hist_<stat>.png) with the thresholds drawn.
FilterReport filter_dataset(const FilterOptions& o);

}  // namespace mgm::curate
