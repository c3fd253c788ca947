#include "data/conversation.h"

#include "data/py_compat.h"

#include <algorithm>

#include "common/error.h"
#include "common/strings.h"

namespace mgm::data {
namespace {

const std::string kStartOfTurn = "<start_of_turn>";
const std::string kEndOfTurn = "<end_of_turn>";

// conv_vicuna_v1 (SeparatorStyle.TWO).
const std::string kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.";
const std::string kVicunaSep = " ";
// The template's string, not the tokenizer's eos: with Gemma's tokenizer it is ordinary text.
const std::string kVicunaSep2 = "</s>";

}  // namespace

Template parse_template(const std::string& version) {
  if (version == "gemma") return Template::kGemma;
  if (version == "plain") return Template::kPlain;
  if (version == "vicuna_v1" || version == "v1") return Template::kVicunaV1;
  throw UsageError(str_cat("unknown conversation template '", version,
                           "' (supported: gemma, plain, vicuna_v1)"));
}

std::vector<Turn> move_image_to_front(std::vector<Turn> turns) {
  for (auto& t : turns) {
    size_t f = t.value.find(kImageToken);
    if (f == std::string::npos) continue;
    // Python's str.replace: one left-to-right pass ("<ima<image>ge>" leaves "<image>").
    const std::string tok = kImageToken;
    std::string v;
    size_t from = 0;
    for (size_t p; (p = t.value.find(tok, from)) != std::string::npos; from = p + tok.size())
      v.append(t.value, from, p - from);
    v.append(t.value, from, std::string::npos);
    // MGM's preprocess_multimodal (mgm/train/train.py): remove every "<image>", strip, prepend
    // "<image>\n", strip again (so a turn that was only the image is "<image>", no newline),
    // with Python's str.strip() (Unicode whitespace).
    t.value = py_strip(std::string(kImageToken) + "\n" + py_strip(v));
  }
  return turns;
}

std::string render_prompt(Template t, const std::vector<Turn>& turns) {
  std::string out;
  if (t == Template::kPlain) {
    MGM_CHECK(turns.size() == 2, "plain template needs exactly 2 turns, got ", turns.size());
    return std::string(kImageToken) + turns[1].value + "\n";
  }
  if (t == Template::kVicunaV1) {
    out = kVicunaSystem + kVicunaSep;
    for (size_t i = 0; i < turns.size(); ++i) {
      const std::string role = turns[i].from == "human" ? "USER" : "ASSISTANT";
      // get_prompt tests `if message:` - an empty message renders as an open turn.
      if (turns[i].value.empty())
        out += role + ":";
      else
        out += role + ": " + turns[i].value + (i % 2 ? kVicunaSep2 : kVicunaSep);
    }
    return out;
  }
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string role = turns[i].from == "human" ? "user" : "model";
    out += kStartOfTurn + role + "\n" + turns[i].value + kEndOfTurn + "\n" + (i % 2 ? "<eos>" : "");
  }
  return out;
}

std::string render_generation_prompt(Template t, const std::string& question) {
  if (t == Template::kPlain) return question;
  if (t == Template::kVicunaV1)
    return kVicunaSystem + kVicunaSep + "USER: " + question + kVicunaSep + "ASSISTANT:";
  return kStartOfTurn + "user\n" + question + kEndOfTurn + "\n" + kStartOfTurn + "model\n";
}

std::string render_chat_prompt(Template t, const std::vector<Turn>& history,
                               const std::string& question) {
  if (t == Template::kPlain || history.empty()) return render_generation_prompt(t, question);
  MGM_CHECK(history.size() % 2 == 0, "a chat history must end with an answered turn, got ",
            history.size(), " turns");
  if (t == Template::kVicunaV1) {
    std::vector<Turn> turns = history;
    turns.push_back({"human", question});
    turns.push_back({"gpt", ""});  // get_prompt renders an empty message as the open turn
    return render_prompt(t, turns);
  }
  return render_prompt(t, history) + render_generation_prompt(t, question);
}

TokenizedSample tokenize_conversation(const Tokenizer& tok, Template t, std::vector<Turn> turns,
                                      bool has_image, int64_t model_max_length) {
  TokenizedSample s;
  auto enc = [&](const std::string& text) {
    return has_image ? tok.encode_with_image(text) : tok.encode(text);
  };
  if (t == Template::kPlain) {
    MGM_CHECK(turns.size() == 2, "plain template needs exactly 2 turns, got ", turns.size());
    MGM_CHECK(turns[0].value.find(kImageToken) != std::string::npos,
              "plain template needs '<image>' in the first turn");
    turns[0].value = kImageToken;
    std::string conv = turns[0].value + turns[1].value + "\n";
    s.input_ids = tok.encode_with_image(conv);
    s.labels = s.input_ids;
    size_t masked = std::min(s.input_ids.size(), tok.encode_with_image(turns[0].value).size());
    std::fill(s.labels.begin(), s.labels.begin() + static_cast<std::ptrdiff_t>(masked),
              kIgnoreIndex);
    return s;
  }
  // gemma, vicuna_v1
  if (!turns.empty() && turns[0].from != "human") turns.erase(turns.begin());
  for (size_t i = 0; i < turns.size(); ++i) {
    const char* want = i % 2 == 0 ? "human" : "gpt";
    if (turns[i].from != want)
      throw Error(str_cat("conversation does not alternate human/gpt: turn ", i, " is from '",
                          turns[i].from, "', expected '", want, "'"));
  }
  const std::string conv = render_prompt(t, turns);
  s.input_ids = enc(conv);
  if (!has_image && static_cast<int64_t>(s.input_ids.size()) > model_max_length)
    s.input_ids.resize(static_cast<size_t>(model_max_length));  // tokenizer(truncation=True)
  s.labels = s.input_ids;
  const int64_t total_len = std::count_if(s.input_ids.begin(), s.input_ids.end(),
                                          [&](int64_t id) { return id != tok.pad_id(); });
  auto mask = [&](int64_t from, int64_t to) {
    from = std::max<int64_t>(from, 0);
    to = std::min<int64_t>(to, static_cast<int64_t>(s.labels.size()));
    for (int64_t k = from; k < to; ++k) s.labels[static_cast<size_t>(k)] = kIgnoreIndex;
  };
  int64_t cur_len = 1;
  mask(0, 1);
  if (t == Template::kVicunaV1) {
    // preprocess_v1. Rounds are split at the template's "</s>" string; the "- 2" and the
    // per-round "- 1" after the first round are the reference's llama-tokenizer bookkeeping,
    // kept as is: Gemma's tokenizer has no `legacy` attribute and tokenizers >= 0.14, so the
    // reference applies the "- 1" too. With a tokenizer for which the arithmetic does not add
    // up, the mismatch check below masks the sample, as the reference does.
    const std::string sep = kVicunaSep + "ASSISTANT: ";
    const auto rounds = split(conv, kVicunaSep2);
    for (size_t i = 0; i < rounds.size(); ++i) {
      const std::string& rou = rounds[i];
      if (rou.empty()) break;
      auto parts = split(rou, sep);
      if (parts.size() != 2) {
        s.problem =
            str_cat("a round does not split into instruction and answer at ' ASSISTANT: ' (",
                    parts.size(), " parts)");
        break;
      }
      parts[0] += sep;
      int64_t round_len = static_cast<int64_t>(enc(rou).size());
      int64_t instruction_len = static_cast<int64_t>(enc(parts[0]).size()) - 2;
      if (i != 0) {
        round_len -= 1;
        instruction_len -= 1;
      }
      mask(cur_len, cur_len + instruction_len);
      cur_len += round_len;
    }
  } else {  // preprocess_gemma
    const std::string sep = kStartOfTurn + "model\n";
    for (const auto& rou : split(conv, "<eos>")) {
      if (rou.empty()) break;
      auto parts = split(rou, sep);
      if (parts.size() != 2) {
        s.problem = str_cat(
            "a round does not split into instruction and answer at '<start_of_turn>model\\n' (",
            parts.size(), " parts)");
        break;
      }
      parts[0] += sep;
      const int64_t round_len = static_cast<int64_t>(enc(rou).size());
      const int64_t instruction_len = static_cast<int64_t>(enc(parts[0]).size()) - 1;
      mask(cur_len, cur_len + instruction_len);
      cur_len += round_len;
    }
  }
  mask(cur_len, static_cast<int64_t>(s.labels.size()));
  if (cur_len < model_max_length && cur_len != total_len) {
    mask(0, static_cast<int64_t>(s.labels.size()));
    if (s.problem.empty())
      s.problem = str_cat("tokenization mismatch: ", cur_len, " vs. ", total_len,
                          " (the template's rounds do not tokenize to the whole sequence)");
  }
  return s;
}

}  // namespace mgm::data
