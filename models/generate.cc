#include "models/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/multinomial.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <limits>

#include "common/error.h"
#include "common/strings.h"

namespace mgm::models {
namespace {

int64_t count_markers(const std::vector<int64_t>& p) {
  return std::count(p.begin(), p.end(), kImageTokenIndex);
}

// The image features of the batch, one row per marker in prompt order (what prepare_inputs
// consumes); placeholder images of text-only prompts are dropped before the towers run.
at::Tensor encode_prompt_images(MgmForCausalLM& model,
                                const std::vector<std::vector<int64_t>>& prompts,
                                const at::Tensor& images, const at::Tensor& images_aux) {
  const int64_t B = static_cast<int64_t>(prompts.size());
  std::vector<int64_t> markers;
  int64_t total = 0, max_per_prompt = 0;
  for (const auto& p : prompts) {
    markers.push_back(count_markers(p));
    total += markers.back();
    max_per_prompt = std::max(max_per_prompt, markers.back());
  }
  if (total == 0) return {};
  MGM_CHECK(images.defined() && images_aux.defined(), "generate: ", total,
            " image markers in the prompts but no images");
  MGM_CHECK(images.dim() == 4 && images_aux.dim() == 4 && images.size(0) == images_aux.size(0),
            "generate: images ", images.sizes(), " and images_aux ", images_aux.sizes(),
            " must be [N,3,s,s] and [N,3,S,S] with the same N");
  if (images.size(0) == total) return model->encode_images(images, images_aux);
  MGM_CHECK(images.size(0) == B && max_per_prompt <= 1, "generate: ", total, " image markers in ",
            B, " prompts but ", images.size(0),
            " images (give one per marker, or one per prompt when no prompt has several)");
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < B; ++b)
    if (markers[b] == 1) rows.push_back(b);
  const at::Tensor idx = at::tensor(rows, at::kLong).to(images.device());
  const at::Tensor idx_aux = idx.to(images_aux.device());
  return model->encode_images(images.index_select(0, idx), images_aux.index_select(0, idx_aux));
}

}  // namespace

std::string trim_at_stop_string(const std::string& text, const std::vector<std::string>& stops) {
  size_t cut = text.size();
  for (const auto& s : stops) {
    if (s.empty()) continue;
    const size_t at = text.find(s);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  return text.substr(0, cut);
}

std::vector<int64_t> select_next_tokens(const at::Tensor& logits, const GenerationConfig& cfg,
                                        std::vector<at::Generator>& gens) {
  MGM_CHECK(logits.dim() == 2, "select_next_tokens: logits must be [B, V], found ", logits.sizes());
  at::Tensor chosen;
  if (cfg.temperature <= 0.0) {
    chosen = logits.argmax(-1);
  } else {
    // transformers' order: TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper.
    const double neg_inf = -std::numeric_limits<double>::infinity();
    at::Tensor s = logits.to(at::kCPU).to(at::kFloat) / cfg.temperature;
    const int64_t V = s.size(1);
    if (cfg.top_k > 0 && cfg.top_k < V) {
      const at::Tensor kth = std::get<0>(s.topk(cfg.top_k, -1)).select(1, cfg.top_k - 1);
      s = s.masked_fill(s < kth.unsqueeze(1), neg_inf);
    }
    if (cfg.top_p < 1.0) {
      auto [sorted, order] = s.sort(-1, /*descending=*/false);
      at::Tensor remove = sorted.softmax(-1).cumsum(-1) <= (1.0 - cfg.top_p);
      remove.select(1, V - 1).fill_(false);  // min_tokens_to_keep = 1
      const at::Tensor mask = at::zeros_like(remove).scatter(1, order, remove);
      s = s.masked_fill(mask, neg_inf);
    }
    const at::Tensor probs = s.softmax(-1);
    MGM_CHECK(gens.size() == 1 || static_cast<int64_t>(gens.size()) == probs.size(0),
              "select_next_tokens: ", gens.size(), " generators for ", probs.size(0), " rows");
    if (gens.size() == 1) {
      chosen = at::multinomial(probs, 1, /*replacement=*/false, gens[0]).squeeze(1);
    } else {
      std::vector<at::Tensor> rows;
      for (int64_t b = 0; b < probs.size(0); ++b)
        rows.push_back(at::multinomial(probs[b], 1, /*replacement=*/false, gens[static_cast<size_t>(b)]));
      chosen = at::cat(rows, 0);
    }
  }
  chosen = chosen.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t* p = chosen.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + chosen.numel());
}

std::vector<std::vector<int64_t>> generate(MgmForCausalLM& model,
                                           const std::vector<std::vector<int64_t>>& prompts,
                                           const at::Tensor& images, const at::Tensor& images_aux,
                                           const GenerationConfig& cfg) {
  MGM_CHECK(!prompts.empty(), "generate: no prompts");
  MGM_CHECK(cfg.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ",
            cfg.max_new_tokens);
  MGM_CHECK(cfg.stop_strings.empty() || cfg.decode,
            "generate: stop_strings need GenerationConfig::decode");
  MGM_CHECK(cfg.top_p > 0.0 && cfg.top_p <= 1.0, "generate: top_p must be in (0, 1], got ",
            cfg.top_p);
  c10::InferenceMode inference;
  const int64_t B = static_cast<int64_t>(prompts.size());
  std::vector<std::vector<int64_t>> out(B);
  for (int64_t b = 0; b < B; ++b)
    MGM_CHECK(!prompts[b].empty(), "generate: prompt ", b, " is empty");
  if (cfg.max_new_tokens == 0) return out;

  auto& llm = model->llm;
  const auto dev = llm->model->embed_tokens->weight.device();
  const int64_t pad_id = std::max<int64_t>(0, llm->config().pad_token_id);

  // prepare_inputs splices the image features and right-pads; it is the training path, so the
  // prompt embeddings are exactly those the model was trained on.
  const at::Tensor features = encode_prompt_images(model, prompts, images, images_aux);
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  std::vector<int64_t> ids(B * longest, pad_id);
  std::vector<uint8_t> real(B * longest, 0);
  for (int64_t b = 0; b < B; ++b)
    for (size_t t = 0; t < prompts[b].size(); ++t) {
      ids[b * longest + t] = prompts[b][t];
      real[b * longest + t] = 1;
    }
  const int64_t Lin = static_cast<int64_t>(longest);
  const at::Tensor input_ids = at::tensor(ids, at::kLong).view({B, Lin});
  const at::Tensor in_mask = at::tensor(real, at::kByte).view({B, Lin}).to(at::kBool);
  auto prepared = model->prepare_inputs(input_ids, {}, in_mask, features);

  // Right padding -> left padding, so the newest token of every sequence sits in the last column
  // and one decode step appends one column for all of them.
  const at::Tensor lengths_t = prepared.attention_mask.to(at::kCPU).sum(1).to(at::kLong);
  std::vector<int64_t> lengths(lengths_t.data_ptr<int64_t>(), lengths_t.data_ptr<int64_t>() + B);
  const int64_t L = prepared.inputs_embeds.size(1);
  at::Tensor embeds = at::zeros_like(prepared.inputs_embeds);
  std::vector<uint8_t> mask_v(B * L, 0);
  std::vector<int64_t> pos_v(B * L, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = lengths[b], off = L - n;
    MGM_CHECK(n > 0, "generate: prompt ", b, " is empty after preparation");
    embeds[b].slice(0, off, L).copy_(prepared.inputs_embeds[b].slice(0, 0, n));
    for (int64_t t = 0; t < n; ++t) {
      mask_v[b * L + off + t] = 1;
      pos_v[b * L + off + t] = t;
    }
  }
  at::Tensor mask = at::tensor(mask_v, at::kByte).view({B, L}).to(at::kBool).to(dev);
  const at::Tensor positions = at::tensor(pos_v, at::kLong).view({B, L}).to(dev);

  // A single sequence has no padding: the causal path (no mask tensor, flash kernel) is exact.
  const bool masked = B > 1;
  GemmaKVCache cache;
  GemmaForwardOptions opts;
  opts.cache = &cache;
  opts.position_ids = positions;
  if (masked) {
    opts.padding = PaddingMode::kMasked;
    opts.attention_mask = mask;
  }
  at::Tensor hidden = llm->hidden_states(embeds, opts);
  at::Tensor logits = llm->logits(hidden.select(1, L - 1)).to(at::kFloat);

  MGM_CHECK(cfg.row_seeds.empty() || static_cast<int64_t>(cfg.row_seeds.size()) == B,
            "generate: ", cfg.row_seeds.size(), " row seeds for ", B, " prompts");
  std::vector<at::Generator> gens;
  if (cfg.row_seeds.empty()) gens.push_back(at::make_generator<at::CPUGeneratorImpl>(cfg.seed));
  for (uint64_t s : cfg.row_seeds) gens.push_back(at::make_generator<at::CPUGeneratorImpl>(s));
  std::vector<bool> done(B, false);
  int64_t remaining = B;
  for (int64_t step = 0; step < cfg.max_new_tokens; ++step) {
    std::vector<int64_t> next = select_next_tokens(logits, cfg, gens);
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) {
        next[b] = pad_id;  // finished sequences keep feeding padding; their outputs are unused
        continue;
      }
      const int64_t tok = next[b];
      if (std::find(cfg.stop_token_ids.begin(), cfg.stop_token_ids.end(), tok) !=
          cfg.stop_token_ids.end()) {
        done[b] = true;
        --remaining;
        continue;
      }
      out[b].push_back(tok);
      if (!cfg.stop_strings.empty()) {
        const std::string text = cfg.decode(out[b]);
        if (trim_at_stop_string(text, cfg.stop_strings).size() != text.size()) {
          done[b] = true;
          --remaining;
        }
      }
    }
    if (remaining == 0 || step + 1 == cfg.max_new_tokens) break;

    std::vector<int64_t> step_pos(B);
    for (int64_t b = 0; b < B; ++b) step_pos[b] = lengths[b] + step;
    const at::Tensor tok = at::tensor(next, at::kLong).view({B, 1}).to(dev);
    GemmaForwardOptions o;
    o.cache = &cache;
    o.position_ids = at::tensor(step_pos, at::kLong).view({B, 1}).to(dev);
    if (masked) {
      mask = at::cat({mask, at::ones({B, 1}, mask.options())}, 1);
      o.padding = PaddingMode::kMasked;
      o.attention_mask = mask;
    }
    hidden = llm->hidden_states(llm->embed(tok), o);
    logits = llm->logits(hidden.select(1, 0)).to(at::kFloat);
  }
  return out;
}

}  // namespace mgm::models
