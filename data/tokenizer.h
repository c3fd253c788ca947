// The Gemma tokenizer: a sentencepiece model (tokenizer.model) used the way the Hugging Face
// Gemma tokenizer uses it: control/unknown piece strings written in the text ("<eos>", "<bos>",
// ...) map to their ids, everything between them goes through sentencepiece, <bos> is prepended,
// and decoding can skip special tokens. Torch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mgm::data {

constexpr int64_t kIgnoreIndex = -100;
constexpr int64_t kImageTokenIndex = -200;
constexpr const char* kImageToken = "<image>";

class Tokenizer {
 public:
  // `path`: a tokenizer.model file, or a folder holding one.
  static Tokenizer load(const std::string& path);
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<int64_t> encode(std::string_view text, bool add_bos = true) const;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = true) const;
  // LLaVA's tokenizer_image_token: "<image>" becomes kImageTokenIndex, one <bos> at the start.
  std::vector<int64_t> encode_with_image(std::string_view prompt) const;

  int64_t bos_id() const { return bos_; }
  int64_t eos_id() const { return eos_; }
  int64_t pad_id() const { return pad_; }
  int64_t unk_id() const { return unk_; }
  int64_t vocab_size() const;
  std::optional<int64_t> piece_id(const std::string& piece) const;
  std::string piece(int64_t id) const;
  bool is_special(int64_t id) const;
  const std::string& path() const { return path_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  int64_t bos_ = -1, eos_ = -1, pad_ = -1, unk_ = -1;
  // Strings split out of the text before sentencepiece, longest first.
  std::vector<std::pair<std::string, int64_t>> specials_;
  std::vector<bool> skip_on_decode_;
};

// Trains a small sentencepiece model with Gemma's special-token layout (pad 0, eos 1, bos 2,
// unk 3, then <start_of_turn>, <end_of_turn>), byte fallback, no dummy prefix, identity
// normalisation (as Gemma's model). Used for the embedded default and for tests.
void train_gemma_style_tokenizer(const std::vector<std::string>& sentences,
                                 const std::string& model_path, int vocab_size, uint64_t seed);

}  // namespace mgm::data
