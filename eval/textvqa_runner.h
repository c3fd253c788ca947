// `mgm eval textvqa`: answers a TextVQA-style question file (LLaVA's llava_textvqa_val_v051_ocr
// JSONL: question_id, image, text) as MGM's model_vqa_loader.py does: "<image>\n" + text in the
// conversation template, greedy by default, one answer line per question in its JSON layout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/runner.h"

namespace mgm::eval {

// Every non-empty line of the question file, in order. A line that is not a JSON object with a
// question_id and a string text becomes an item with `problem` set (reported with its line).
std::vector<EvalItem> read_textvqa_questions(const std::string& question_file,
                                             const std::string& image_folder);

struct TextVqaOptions {
  EvalModelOptions model;
  std::string question_file, image_folder;
  int64_t num_chunks = 1, chunk_idx = 0;
  RunOptions run;  // answers_file, generation, batch size, policy; settings are filled in
};

RunStats run_textvqa(const TextVqaOptions& o);

}  // namespace mgm::eval
