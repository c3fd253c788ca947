#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"

namespace mgm::data {

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& path) {
  std::string file = is_directory(path) ? path_join(path, "tokenizer.model") : path;
  if (!path_exists(file))
    throw Error(
        str_cat(file, ": no such tokenizer model (expected a sentencepiece tokenizer.model)"));
  Tokenizer t;
  t.path_ = file;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto st = t.sp_->Load(file);
  if (!st.ok()) throw FormatError(file, str_cat("not a sentencepiece model: ", st.ToString()));
  t.bos_ = t.sp_->bos_id();
  t.eos_ = t.sp_->eos_id();
  t.pad_ = t.sp_->pad_id();
  t.unk_ = t.sp_->unk_id();
  MGM_CHECK_FORMAT(t.bos_ >= 0 && t.eos_ >= 0, file, "model has no <bos>/<eos> pieces");
  const int n = t.sp_->GetPieceSize();
  t.skip_on_decode_.assign(n, false);
  for (int id = 0; id < n; ++id) {
    const std::string& p = t.sp_->IdToPiece(id);
    const bool control = t.sp_->IsControl(id) || t.sp_->IsUnknown(id);
    // Control pieces are never produced by sentencepiece from text; the HF tokenizer treats
    // their strings as special tokens, so they are split out here.
    if (control && !p.empty()) t.specials_.emplace_back(p, id);
    const bool turn = p == "<start_of_turn>" || p == "<end_of_turn>";
    t.skip_on_decode_[id] = control || turn;
  }
  std::stable_sort(t.specials_.begin(), t.specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  return t;
}

int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::optional<int64_t> Tokenizer::piece_id(const std::string& piece) const {
  int id = sp_->PieceToId(piece);
  if (id == sp_->unk_id() && piece != sp_->IdToPiece(id)) return std::nullopt;
  return id;
}

std::string Tokenizer::piece(int64_t id) const {
  MGM_CHECK(id >= 0 && id < vocab_size(), path_, ": token id ", id, " outside the vocabulary of ",
            vocab_size());
  return sp_->IdToPiece(static_cast<int>(id));
}

bool Tokenizer::is_special(int64_t id) const {
  return id >= 0 && id < static_cast<int64_t>(skip_on_decode_.size()) && skip_on_decode_[id];
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int64_t> out;
  if (add_bos) out.push_back(bos_);
  auto encode_plain = [&](std::string_view s) {
    if (s.empty()) return;
    std::vector<int> ids;
    auto st = sp_->Encode(s, &ids);
    if (!st.ok()) throw Error(str_cat(path_, ": encoding failed: ", st.ToString()));
    out.insert(out.end(), ids.begin(), ids.end());
  };
  size_t start = 0, i = 0;
  while (i < text.size()) {
    bool matched = false;
    if (text[i] == '<') {
      for (const auto& [s, id] : specials_) {
        if (text.compare(i, s.size(), s) == 0) {
          encode_plain(text.substr(start, i - start));
          out.push_back(id);
          i += s.size();
          start = i;
          matched = true;
          break;
        }
      }
    }
    if (!matched) ++i;
  }
  encode_plain(text.substr(start));
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::vector<int> keep;
  for (int64_t id : ids) {
    MGM_CHECK(id >= 0 && id < vocab_size(), path_, ": cannot decode token id ", id);
    if (skip_special && skip_on_decode_[id]) continue;
    keep.push_back(static_cast<int>(id));
  }
  std::string out;
  auto st = sp_->Decode(keep, &out);
  if (!st.ok()) throw Error(str_cat(path_, ": decoding failed: ", st.ToString()));
  return out;
}

std::vector<int64_t> Tokenizer::encode_with_image(std::string_view prompt) const {
  // Each "<image>"-separated chunk is tokenized with <bos>; the first chunk keeps its <bos>,
  // every chunk then loses its first token, and one image index goes between chunks.
  std::vector<std::vector<int64_t>> chunks;
  size_t pos = 0;
  const std::string_view tok = kImageToken;
  while (true) {
    size_t f = prompt.find(tok, pos);
    chunks.push_back(
        encode(prompt.substr(pos, f == std::string_view::npos ? std::string_view::npos : f - pos)));
    if (f == std::string_view::npos) break;
    pos = f + tok.size();
  }
  std::vector<int64_t> out;
  size_t offset = 0;
  if (!chunks.empty() && !chunks[0].empty() && chunks[0][0] == bos_) {
    offset = 1;
    out.push_back(bos_);
  }
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (c > 0) out.push_back(kImageTokenIndex);
    if (chunks[c].size() > offset)
      out.insert(out.end(), chunks[c].begin() + static_cast<std::ptrdiff_t>(offset),
                 chunks[c].end());
  }
  return out;
}

void train_gemma_style_tokenizer(const std::vector<std::string>& sentences,
                                 const std::string& model_path, int vocab_size, uint64_t seed) {
  MGM_CHECK(!sentences.empty(), "tokenizer training needs text");
  std::string prefix = model_path;
  if (ends_with(prefix, ".model")) prefix.resize(prefix.size() - 6);
  std::string corpus = prefix + ".corpus.txt";
  {
    std::string all;
    for (const auto& s : sentences) {
      std::string line = s;
      std::replace(line.begin(), line.end(), '\n', ' ');
      all += line + "\n";
    }
    write_file_atomic(corpus, all);
  }
  // Training is deterministic for a given corpus: one thread, every sentence used (no sampling).
  (void)seed;
  MGM_CHECK(prefix.find(' ') == std::string::npos, model_path,
            ": tokenizer path must not contain spaces");
  const std::string args = str_cat(
      "--input=", corpus, " --model_prefix=", prefix, " --model_type=bpe --vocab_size=", vocab_size,
      " --character_coverage=1.0 --byte_fallback=true --pad_id=0 --eos_id=1 --bos_id=2 --unk_id=3",
      " --pad_piece=<pad> --eos_piece=<eos> --bos_piece=<bos> --unk_piece=<unk>",
      " --user_defined_symbols=<start_of_turn>,<end_of_turn> --normalization_rule_name=identity",
      " --add_dummy_prefix=false --remove_extra_whitespaces=false --split_digits=true",
      " --num_threads=1 --input_sentence_size=0 --shuffle_input_sentence=false --minloglevel=2");
  auto st = sentencepiece::SentencePieceTrainer::Train(args);
  std::remove(corpus.c_str());
  std::remove((prefix + ".vocab").c_str());
  if (!st.ok()) throw Error(str_cat(model_path, ": tokenizer training failed: ", st.ToString()));
  if (prefix + ".model" != model_path) rename_into_place(prefix + ".model", model_path);
}

}  // namespace mgm::data
