// Conversation templates and label masking as the reference's preprocess_* functions: the
// prompt string a template renders, its token ids, and the labels with everything but the
// model's answers masked to kIgnoreIndex. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/llava.h"
#include "data/tokenizer.h"

namespace mgm::data {

// kVicunaV1: LLaVA/MGM's conv_vicuna_v1 (system prompt, "USER: ... ASSISTANT: ...</s>") with
// preprocess_v1's masking, for LLaVA-1.5 / MGM-7B style data.
enum class Template { kGemma, kPlain, kVicunaV1 };
// "gemma", "plain", "vicuna_v1" (or "v1"); UsageError otherwise.
Template parse_template(const std::string& version);

// preprocess_multimodal: in every turn containing "<image>", the token is removed and the turn
// re-prefixed with "<image>\n" (so the image always leads).
std::vector<Turn> move_image_to_front(std::vector<Turn> turns);

struct TokenizedSample {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;
  // Empty when fine; otherwise why the labels are all masked (the reference's "tokenization
  // mismatch" or a malformed round). Callers count it as an error with the sample id; the
  // sample is never silently trained on zero supervised tokens.
  std::string problem;
};

// Renders the prompt as the template does (all turns answered).
std::string render_prompt(Template t, const std::vector<Turn>& turns);
// A generation prompt: the question turns rendered, ending with the model's turn opener.
std::string render_generation_prompt(Template t, const std::string& question);
// A multi-turn generation prompt (a chat): the answered turns of `history` (human/gpt
// alternating, human first) rendered as the template's get_prompt renders them, then `question`
// and the model's turn opener. With no history it equals render_generation_prompt. The plain
// template has no turns: the question alone.
std::string render_chat_prompt(Template t, const std::vector<Turn>& history,
                               const std::string& question);

// Throws mgm::Error when the conversation does not alternate human/gpt (after dropping a
// leading non-human turn, as the reference does).
TokenizedSample tokenize_conversation(const Tokenizer& tok, Template t, std::vector<Turn> turns,
                                      bool has_image, int64_t model_max_length);

}  // namespace mgm::data
