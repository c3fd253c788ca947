#include "tiny_mgm.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "data/tokenizer.h"
#include "models/mgm.h"
#include "tests_util.h"

namespace mgm::test {

std::string ppm_image(int w, int h, int seed) {
  std::string s = str_cat("P6\n", w, " ", h, "\n255\n");
  for (int i = 0; i < w * h * 3; ++i) s.push_back(static_cast<char>((i * 37 + seed * 101) % 256));
  return s;
}

std::string make_tiny_mgm_fixture(const std::string& tag) {
  const std::string root = temp_dir(tag);
  at::manual_seed(3);
  const auto c = models::MgmConfig::from_file(test::source_dir() + "/configs/models/tiny.json");
  models::MgmForCausalLM m(c);
  m->reset_tower_parameters();
  {
    at::NoGradGuard ng;
    for (auto& p : m->llm->parameters()) p.mul_(8.0);  // peaked, varied greedy outputs
  }
  std::vector<std::string> corpus = {
      "<start_of_turn>user\nWhat is written on the sign?<end_of_turn>\n<start_of_turn>model\n",
      "Reference OCR token: STOP, OPEN, CAFE\nAnswer the question using a single word or "
      "phrase.",
      "Answer with the option's letter from the given choices directly."};
  // Enough distinct words for a 512-piece vocabulary, the model's size, so every id the
  // model can emit decodes to text.
  const char* syl[] = {"ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "qu", "xe"};
  for (int i = 0; i < 400; ++i)
    corpus.push_back(str_cat("the red circle is ", syl[i % 12], syl[(i / 12) % 12],
                             syl[(i * 7) % 12], " and ", syl[(i * 5) % 12], syl[i % 11],
                             " left of the blue square"));
  make_dirs(root + "/MGM-tiny");
  data::train_gemma_style_tokenizer(corpus, root + "/MGM-tiny/tokenizer.model", 512, 1);
  {
    // A random model with tied embeddings favours repeating its last input token, here the
    // prompt's final "\n" (answers would strip to ""), and may pick <eos> at once. Zero rows
    // give those two logit 0, below the maximum of the other random logits.
    const auto tok = data::Tokenizer::load(root + "/MGM-tiny/tokenizer.model");
    at::NoGradGuard ng;
    m->llm->model->embed_tokens->weight[tok.eos_id()].zero_();
    m->llm->model->embed_tokens->weight[*tok.piece_id("<0x0A>")].zero_();
  }
  save_mgm_checkpoint(m, root + "/MGM-tiny");
  make_dirs(root + "/images");
  for (int i = 0; i < 4; ++i)
    write_file_atomic(str_cat(root, "/images/img", i, ".ppm"), ppm_image(20 + 7 * i, 30, i));
  // Six questions; two share an image (and so a question_id, as in TextVQA).
  std::string q;
  const char* texts[] = {"What is written on the sign?", "What colour is the circle?",
                         "What is the brand?",           "How many squares?",
                         "Which word is red?",           "What is the time?"};
  const char* ids[] = {"img0", "img1", "img1", "img2", "img3", "img0b"};
  for (int i = 0; i < 6; ++i) {
    const std::string image = i == 5 ? "img0.ppm" : str_cat(ids[i], ".ppm");
    q += str_cat(
        R"({"question_id": ")", ids[i], R"(", "image": ")", image, R"(", "text": ")", texts[i],
        R"(\nReference OCR token: STOP, OPEN\nAnswer the question using a single word or phrase.", "category": "default"})",
        "\n");
  }
  write_file_atomic(root + "/questions.jsonl", q);
  return root;
}

}  // namespace mgm::test
