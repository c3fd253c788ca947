// `mgm eval mmbench`: answers an MMBench TSV (index, question, hint, A-D, image as base64, ...)
// as LLaVA/MGM's model_vqa_mmbench.py does: hint + question + lettered options, the optional
// single-prediction suffix, optionally every circular round (--all-rounds), one answer line per
// round with question_id, round_id, prompt, text, options, option_char.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/runner.h"

namespace mgm::eval {

// One TSV row as the runner needs it. Options stop at the first missing one of A-D (pandas NA
// strings, or "nan"/"none" in any case, count as missing, as the reference's is_none).
struct MmbenchRow {
  int64_t index = 0;
  size_t line = 0;
  std::string question, hint;  // hint "" when missing
  bool has_hint = false;
  std::vector<std::string> options;
  std::string image_base64;
  std::string problem;  // a malformed row with a readable index: handled by --on_bad_sample
};

// The header, a row without an integer index and a duplicate index are fatal (FormatError
// naming the line); any other malformed row is returned with `problem` set.
std::vector<MmbenchRow> read_mmbench_rows(const std::string& tsv_path);

struct MmbenchPromptOptions {
  bool single_pred_prompt = false;
  bool all_rounds = false;
  std::string lang = "en";  // en | cn (the suffix language)
};

// The items of one row: one round, or one per option with --all-rounds (options rotated).
std::vector<EvalItem> mmbench_items(const MmbenchRow& row, const MmbenchPromptOptions& p,
                                    const std::string& where);

// Standard base64 (whitespace ignored); throws Error on invalid input.
std::vector<uint8_t> decode_base64(const std::string& s);

struct MmbenchOptions {
  EvalModelOptions model;
  std::string question_file;
  MmbenchPromptOptions prompt;
  int64_t num_chunks = 1, chunk_idx = 0;
  RunOptions run;
};

RunStats run_mmbench(const MmbenchOptions& o);

}  // namespace mgm::eval
