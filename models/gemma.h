// The Gemma decoder LLM (MGM-2B's language model) with the numerics of transformers 4.38.0, the
// version MGM-2B was trained with: sqrt(hidden) scale on every input row (image rows included),
// RMSNorm's (1+w) multiply after the downcast, activation from `hidden_act`, RoPE rotate_half.
// Parameter names equal the Hugging Face checkpoint keys
// ("model.layers.3.self_attn.q_proj.weight").
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "models/io/tensor_file.h"
#include "models/module_utils.h"

namespace mgm::models {

// The fields of a Hugging Face Gemma config.json that the model uses.
struct GemmaConfig {
  int64_t vocab_size = 256000;
  int64_t hidden_size = 2048;
  int64_t intermediate_size = 16384;
  int64_t num_hidden_layers = 18;
  int64_t num_attention_heads = 8;
  int64_t num_key_value_heads = 1;
  int64_t head_dim = 256;
  int64_t max_position_embeddings = 8192;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  double initializer_range = 0.02;
  bool attention_bias = false;
  bool tie_word_embeddings = true;
  int64_t pad_token_id = 0;
  int64_t bos_token_id = 2;
  int64_t eos_token_id = 1;  // the first one when the config lists several
  // "gelu" (exact erf GELU) or "gelu_pytorch_tanh" (tanh approximation), and why it was chosen.
  std::string hidden_act = "gelu";
  std::string activation_reason = "default";

  // Parses a config.json object; `what` (the file) and the key are named in errors. The
  // activation follows `hidden_act` as transformers 4.38 (MGM) did; `hidden_activation` (honoured
  // only by transformers 4.39-4.4x) is used only with `honour_hidden_activation`.
  static GemmaConfig from_json(const Json& j, const std::string& what,
                               bool honour_hidden_activation = false);
  // Reads <dir>/config.json, or the file itself when a .json path is given.
  static GemmaConfig from_file(const std::string& path, bool honour_hidden_activation = false);
  // google/gemma-2b(-it) as MGM-2B uses it.
  static GemmaConfig gemma_2b() { return GemmaConfig{}; }

  Json to_json() const;                          // the Hugging Face keys (model_type "gemma")
  void validate(const std::string& what) const;  // throws naming the inconsistent keys
  bool exact_gelu() const { return hidden_act == "gelu"; }

  // Every parameter's checkpoint name and shape, in module order, computed without allocating
  // (the full-size model is 10 GB in fp32). Equals the module's named_parameters().
  std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes() const;
  int64_t num_parameters() const;
};

// Per-layer keys and values of earlier positions, for incremental decoding. Keys are stored
// after RoPE, [B, num_key_value_heads, T, head_dim].
struct GemmaKVCache {
  std::vector<at::Tensor> keys, values;
  int64_t length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
  void clear() {
    keys.clear();
    values.clear();
  }
};

// A fixed-size KV cache for continuous batching: `slots` sequences x `capacity` positions per
// layer, allocated once (memory is fixed by the two numbers). A sequence owns one slot for its
// lifetime; its keys (after RoPE) and values live at [slot, :, 0:length, :].
struct GemmaSlotCache {
  std::vector<at::Tensor> keys, values;  // per layer [slots, num_key_value_heads, capacity, D]
  void allocate(int64_t num_layers, int64_t slots, int64_t capacity, int64_t kv_heads,
                int64_t head_dim, const at::TensorOptions& options);
  int64_t slots() const { return keys.empty() ? 0 : keys[0].size(0); }
  int64_t capacity() const { return keys.empty() ? 0 : keys[0].size(2); }
};

// The rows of one forward over a slot cache: row b holds L new tokens of the sequence in slot
// slots[b], at positions starts[b] .. starts[b] + L - 1 (starts[b] = what the slot holds now).
// Each row attends to its own slot only, so a row's result does not depend on the others'
// lengths beyond the shape of the batch.
struct GemmaSlotRows {
  GemmaSlotCache* cache = nullptr;
  std::vector<int64_t> slots, starts;
};

// How padding in `attention_mask` is applied.
enum class PaddingMode {
  // Training batches: right padding only, so causal attention alone gives every real position
  // exactly the reference output (SDPA is_causal, no mask tensor: the flash kernel applies).
  // Outputs at padded positions are not meaningful; the loss ignores them.
  kRightPaddedCausal,
  // An explicit [B,1,Lq,Lk] mask built from attention_mask and causality (any padding side;
  // padded positions match transformers' SDPA path too). Slower: no flash kernel.
  kMasked,
};

struct GemmaForwardOptions {
  at::Tensor attention_mask;  // [B, past + L], nonzero = real token; optional
  at::Tensor position_ids;    // [B, L] or [1, L]; default arange(past, past + L)
  PaddingMode padding = PaddingMode::kRightPaddedCausal;
  GemmaKVCache* cache = nullptr;  // appended to when given
  // Instead of `cache`: the rows continue sequences held in a slot cache (positions and mask
  // follow from the rows' starts; position_ids and attention_mask must be unset).
  const GemmaSlotRows* slot_rows = nullptr;
};

// Gemma's RMSNorm: weight stored as an offset (init zeros), applied as (1 + w).
class GemmaRMSNormImpl : public torch::nn::Module {
 public:
  GemmaRMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);
  double eps;
  at::Tensor weight;
};
TORCH_MODULE(GemmaRMSNorm);

// Token embedding table; parameter name "weight" as nn.Embedding.
class GemmaEmbeddingImpl : public torch::nn::Module {
 public:
  GemmaEmbeddingImpl(int64_t num, int64_t dim, int64_t padding_idx);
  at::Tensor forward(const at::Tensor& ids);
  int64_t padding_idx;  // its row gets no gradient from lookups, as nn.Embedding(padding_idx)
  at::Tensor weight;
};
TORCH_MODULE(GemmaEmbedding);

// Rotary tables for positions: cos and sin [B or 1, L, head_dim], computed in fp32, cast to
// `dtype`.
std::pair<at::Tensor, at::Tensor> gemma_rope(const at::Tensor& position_ids, int64_t head_dim,
                                             double theta, at::ScalarType dtype);

// What an attention call needs besides its input: the rotary tables and the mask decision,
// computed once per forward and shared by all layers.
struct GemmaAttentionInputs {
  at::Tensor cos, sin;  // [B or 1, L, head_dim], fp32
  at::Tensor mask;      // bool [B,1,Lq,Lk] (true = attend) or undefined
  bool is_causal = true;
  // Slot-cache forward: the slot index of each row (on the device), the rows' starts, the key
  // length T (longest start + L) and, when the slots are consecutive, the first one (else -1).
  const GemmaSlotRows* slot_rows = nullptr;
  at::Tensor slot_index;
  int64_t slot_keys = 0, slot_first = -1;
};

class GemmaAttentionImpl : public torch::nn::Module {
 public:
  explicit GemmaAttentionImpl(const GemmaConfig& c);
  // x [B,L,H] -> [B,L,H]. With past_k/past_v ([B,kvH,T,D], updated in place), attends to them too.
  at::Tensor forward(const at::Tensor& x, const GemmaAttentionInputs& in,
                     at::Tensor* past_k = nullptr, at::Tensor* past_v = nullptr);
  int64_t num_heads, num_kv_heads, head_dim;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(GemmaAttention);

class GemmaMLPImpl : public torch::nn::Module {
 public:
  explicit GemmaMLPImpl(const GemmaConfig& c);
  at::Tensor forward(const at::Tensor& x);
  bool exact_gelu;
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(GemmaMLP);

class GemmaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit GemmaDecoderLayerImpl(const GemmaConfig& c);
  at::Tensor forward(const at::Tensor& x, const GemmaAttentionInputs& in,
                     at::Tensor* past_k = nullptr, at::Tensor* past_v = nullptr);
  GemmaRMSNorm input_layernorm{nullptr};
  GemmaAttention self_attn{nullptr};
  GemmaRMSNorm post_attention_layernorm{nullptr};
  GemmaMLP mlp{nullptr};
};
TORCH_MODULE(GemmaDecoderLayer);

// HF GemmaModel: embed_tokens, layers.N, norm.
class GemmaModelImpl : public torch::nn::Module {
 public:
  explicit GemmaModelImpl(const GemmaConfig& c);
  // inputs_embeds [B,L,H], unscaled (as embed_tokens returns them, image rows as projected);
  // scaled by sqrt(hidden) here. Returns the final-norm hidden states [B,L,H].
  at::Tensor forward(const at::Tensor& inputs_embeds, const GemmaForwardOptions& opts = {});
  GemmaConfig config;
  GemmaEmbedding embed_tokens{nullptr};
  std::vector<GemmaDecoderLayer> layers;
  GemmaRMSNorm norm{nullptr};
  bool gradient_checkpointing = false;  // recompute each decoder layer in backward

 private:
  at::Tensor forward_slots(const at::Tensor& inputs_embeds, const GemmaSlotRows& rows,
                           const GemmaForwardOptions& opts);
};
TORCH_MODULE(GemmaModel);

// HF GemmaForCausalLM: "model" plus lm_head, tied to model.embed_tokens.weight unless the config
// unties it (then "lm_head.weight" is a parameter).
class GemmaForCausalLMImpl : public torch::nn::Module {
 public:
  // With init_weights, parameters are drawn as transformers' _init_weights does (global RNG);
  // without, they are left uninitialised for loading.
  explicit GemmaForCausalLMImpl(const GemmaConfig& c, bool init_weights = true);
  const GemmaConfig& config() const { return model->config; }
  void reset_parameters();
  // Replaces every parameter by an uninitialised one with `options` (the target dtype and
  // device before loading; dense devices only, not meta) without touching the old storage.
  void to_empty(const at::TensorOptions& options);
  // Token embeddings [.., H] of ids (unscaled).
  at::Tensor embed(const at::Tensor& ids) { return model->embed_tokens->forward(ids); }
  at::Tensor hidden_states(const at::Tensor& inputs_embeds, const GemmaForwardOptions& opts = {}) {
    return model->forward(inputs_embeds, opts);
  }
  // Logits in the compute dtype, as 4.38's GemmaForCausalLM returns them (it does not upcast
  // before its loss); call .to(kFloat) where fp32 logits are wanted.
  at::Tensor logits(const at::Tensor& hidden);
  at::Tensor forward(const at::Tensor& inputs_embeds, const GemmaForwardOptions& opts = {}) {
    return logits(hidden_states(inputs_embeds, opts));
  }
  const at::Tensor& lm_head_weight() const;
  void set_gradient_checkpointing(bool on) { model->gradient_checkpointing = on; }

  GemmaModel model{nullptr};
  Linear lm_head{nullptr};  // only when tie_word_embeddings is false
};
TORCH_MODULE(GemmaForCausalLM);

// The causal-LM loss of 4.38: logits[:, :-1] predict labels[:, 1:], ignore_index -100, mean over
// the supervised tokens of the batch (NaN when there are none, as the reference).
at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels);

// Loads Gemma weights from a Hugging Face folder/file or an MGM checkpoint (same keys; MGM's
// vision tower and projector keys are skipped). Throws naming every missing or mismatched key;
// with `strict`, unknown keys are errors too.
LoadReport load_gemma_weights(GemmaForCausalLM& model, const io::TensorStore& store,
                              bool strict = false);

// config.json + weights of `dir`, built in `dtype` on `device`.
GemmaForCausalLM load_gemma_pretrained(const std::string& dir, at::ScalarType dtype,
                                       at::Device device, bool honour_hidden_activation = false);

}  // namespace mgm::models
