// TextVQA scoring as MGM/LLaVA's eval_textvqa.py + m4c_evaluator.py do it: EvalAI answer
// normalisation (reproduced bug for bug) and the 10-annotator leave-one-out soft accuracy.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace mgm::eval {

// EvalAIAnswerProcessor: lower-case, drop ',' and '?', split "'s", punctuation rule, period rule
// (only the first 32 periods not followed by a digit are removed), number words, articles,
// contractions. Applied to predictions and ground-truth answers alike.
std::string textvqa_normalize(const std::string& answer);

// Soft accuracy of a normalised prediction against normalised ground-truth answers (exactly 10
// in TextVQA): mean over annotators i of min(1, #{j != i : gt[j] == pred} / 3).
double textvqa_answer_score(const std::string& pred_norm, const std::vector<std::string>& gt_norm);

// The question text (lower-cased) recovered from an answer line's "prompt", as prompt_processor
// does. Throws Error for a prompt of none of the known shapes.
std::string textvqa_question_from_prompt(const std::string& prompt);

struct TextVqaResult {
  std::string experiment;  // result file name without folder and extension
  size_t samples = 0;      // answer lines scored (no deduplication, as the reference)
  double accuracy = 0;     // 0..1
  // Questions answered by more than one line (each line is scored, as the reference does), and
  // those among them whose answers differ: warnings, not part of the reference's report.
  size_t repeated_questions = 0;
  std::vector<std::string> conflicting;  // "question_id Q, question \"...\"", first few
  size_t conflicting_count = 0;
  std::string warnings() const;
  // Exactly what eval_textvqa.py prints for one result file.
  std::string report() const;
};

// Scores one answers file against TextVQA_0.5.1_val.json. Answer lines are matched to
// annotations by (question_id == image_id, question from the prompt, lower-cased). Unmatched
// lines are an error listing them; a malformed line is an error naming file and line.
TextVqaResult score_textvqa(const std::string& annotation_file, const std::string& result_file);

}  // namespace mgm::eval
