#include "models/gemma.h"

#include <ATen/TensorIndexing.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/Reduction.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <filesystem>
#include <tuple>

#include "common/error.h"
#include "common/log.h"
#include "common/strings.h"
#include "models/checkpointing.h"

namespace mgm::models {

// ---------------------------------------------------------------------------------------------
// Config

namespace {

int64_t get_int(const Json& j, const char* key, const std::string& what) {
  return json_int(j, key, what);
}

// eos_token_id may be an integer or a list of them.
int64_t get_token_id(const Json& j, const char* key, int64_t dflt, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (it->is_array()) {
    MGM_CHECK_FORMAT(!it->empty() && it->at(0).is_number_integer(), what, "key '", key,
                     "' must be an integer or a non-empty list of integers");
    return it->at(0).get<int64_t>();
  }
  return json_int(j, key, what);
}

bool known_activation(const std::string& a) { return a == "gelu" || a == "gelu_pytorch_tanh"; }

}  // namespace

GemmaConfig GemmaConfig::from_json(const Json& j, const std::string& what,
                                   bool honour_hidden_activation) {
  MGM_CHECK_FORMAT(j.is_object(), what, "expected a JSON object");
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) {
    const auto mt = it->get<std::string>();
    MGM_CHECK_FORMAT(mt.find("gemma") != std::string::npos, what, "key 'model_type' is '", mt,
                     "', expected a Gemma model (gemma, mgm_gemma)");
  }
  GemmaConfig c;
  // Shape keys are required: a default here would silently build another model.
  c.vocab_size = get_int(j, "vocab_size", what);
  c.hidden_size = get_int(j, "hidden_size", what);
  c.intermediate_size = get_int(j, "intermediate_size", what);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", what);
  c.num_attention_heads = get_int(j, "num_attention_heads", what);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", what);
  c.head_dim = get_int(j, "head_dim", what);
  // The rest defaults as transformers' GemmaConfig does.
  c.max_position_embeddings = json_int_or(j, "max_position_embeddings", 8192, what);
  c.rms_norm_eps = json_double_or(j, "rms_norm_eps", 1e-6, what);
  c.initializer_range = json_double_or(j, "initializer_range", 0.02, what);
  c.attention_bias = json_bool_or(j, "attention_bias", false, what);
  c.tie_word_embeddings = json_bool_or(j, "tie_word_embeddings", true, what);
  c.pad_token_id = get_token_id(j, "pad_token_id", -1, what);
  c.bos_token_id = get_token_id(j, "bos_token_id", 2, what);
  c.eos_token_id = get_token_id(j, "eos_token_id", 1, what);
  if (j.find("pad_token_id") == j.end()) c.pad_token_id = 0;

  // rope_theta: top level (transformers 4.x) or inside rope_parameters (5.x).
  c.rope_theta = json_double_or(j, "rope_theta", 10000.0, what);
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) {
    const std::string sub = what + " (rope_parameters)";
    c.rope_theta = json_double_or(*it, "rope_theta", c.rope_theta, sub);
    if (auto t = it->find("rope_type"); t != it->end() && t->is_string())
      MGM_CHECK_FORMAT(t->get<std::string>() == "default", what,
                       "key 'rope_parameters.rope_type' is '", t->get<std::string>(),
                       "'; only default RoPE is supported");
  }
  if (auto it = j.find("rope_scaling"); it != j.end())
    MGM_CHECK_FORMAT(it->is_null(), what,
                     "key 'rope_scaling' is set; only unscaled RoPE is supported");

  // Activation: transformers 4.38 (MGM-2B's trainer) and 5.x read hidden_act; 4.39-4.4x read
  // hidden_activation instead. gemma-2b-it's config later gained hidden_activation next to
  // hidden_act "gelu", so MGM-2B runs with exact GELU.
  std::string act;
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    act = json_string(j, "hidden_act", what);
    c.activation_reason = "config key hidden_act";
  } else {
    act = "gelu";
    c.activation_reason = "hidden_act absent; transformers 4.38 GemmaConfig default";
  }
  std::string alt;
  if (auto it = j.find("hidden_activation"); it != j.end() && !it->is_null())
    alt = json_string(j, "hidden_activation", what);
  if (!alt.empty() && alt != act) {
    if (honour_hidden_activation) {
      act = alt;
      c.activation_reason =
          "config key hidden_activation (explicitly honoured; hidden_act ignored)";
    } else {
      c.activation_reason +=
          str_cat("; hidden_activation '", alt, "' ignored as transformers 4.38 (MGM) ignores it");
    }
  }
  MGM_CHECK_FORMAT(known_activation(act), what, "activation '", act,
                   "' is not supported (expected gelu or gelu_pytorch_tanh)");
  c.hidden_act = act;
  c.validate(what);
  return c;
}

GemmaConfig GemmaConfig::from_file(const std::string& path, bool honour_hidden_activation) {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = path + "/config.json";
  return from_json(read_json_file(file), file, honour_hidden_activation);
}

void GemmaConfig::validate(const std::string& what) const {
  auto positive = [&](const char* key, int64_t v) {
    MGM_CHECK_FORMAT(v > 0, what, "key '", key, "' must be positive, found ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  MGM_CHECK_FORMAT(num_attention_heads % num_key_value_heads == 0, what, "num_attention_heads (",
                   num_attention_heads, ") is not a multiple of num_key_value_heads (",
                   num_key_value_heads, ")");
  MGM_CHECK_FORMAT(head_dim % 2 == 0, what, "key 'head_dim' must be even for RoPE, found ",
                   head_dim);
  MGM_CHECK_FORMAT(rms_norm_eps > 0, what, "key 'rms_norm_eps' must be positive");
  MGM_CHECK_FORMAT(rope_theta > 0, what, "key 'rope_theta' must be positive");
  MGM_CHECK_FORMAT(pad_token_id < vocab_size, what, "pad_token_id ", pad_token_id,
                   " is outside the vocabulary (", vocab_size, ")");
  MGM_CHECK_FORMAT(known_activation(hidden_act), what, "activation '", hidden_act,
                   "' is not supported");
}

Json GemmaConfig::to_json() const {
  Json j;
  j["architectures"] = Json::array({"GemmaForCausalLM"});
  j["model_type"] = "gemma";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["hidden_act"] = hidden_act;
  j["max_position_embeddings"] = max_position_embeddings;
  j["initializer_range"] = initializer_range;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = nullptr;
  j["attention_bias"] = attention_bias;
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (pad_token_id >= 0)
    j["pad_token_id"] = pad_token_id;
  else
    j["pad_token_id"] = nullptr;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  return j;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> GemmaConfig::parameter_shapes() const {
  const int64_t H = hidden_size, I = intermediate_size, D = head_dim;
  const int64_t q = num_attention_heads * D, kv = num_key_value_heads * D;
  std::vector<std::pair<std::string, std::vector<int64_t>>> s;
  s.push_back({"model.embed_tokens.weight", {vocab_size, H}});
  for (int64_t i = 0; i < num_hidden_layers; ++i) {
    const std::string p = str_cat("model.layers.", i, ".");
    auto proj = [&](const char* name, int64_t out, int64_t in) {
      s.push_back({p + "self_attn." + name + ".weight", {out, in}});
      if (attention_bias) s.push_back({p + "self_attn." + name + ".bias", {out}});
    };
    proj("q_proj", q, H);
    proj("k_proj", kv, H);
    proj("v_proj", kv, H);
    proj("o_proj", H, q);
    s.push_back({p + "mlp.gate_proj.weight", {I, H}});
    s.push_back({p + "mlp.up_proj.weight", {I, H}});
    s.push_back({p + "mlp.down_proj.weight", {H, I}});
    s.push_back({p + "input_layernorm.weight", {H}});
    s.push_back({p + "post_attention_layernorm.weight", {H}});
  }
  s.push_back({"model.norm.weight", {H}});
  if (!tie_word_embeddings) s.push_back({"lm_head.weight", {vocab_size, H}});
  return s;
}

int64_t GemmaConfig::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, shape] : parameter_shapes()) {
    int64_t k = 1;
    for (auto d : shape) k *= d;
    n += k;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Modules

GemmaRMSNormImpl::GemmaRMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", at::zeros({dim}));
}

at::Tensor GemmaRMSNormImpl::forward(const at::Tensor& x) {
  // 4.38: normalise in fp32, cast back, then multiply by (1 + w) in the activation dtype (4.39+
  // multiplies in fp32 before the cast; same in fp32, different rounding in bf16).
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return normed.to(x.scalar_type()) * (weight + 1);
}

GemmaEmbeddingImpl::GemmaEmbeddingImpl(int64_t num, int64_t dim, int64_t padding_idx_)
    : padding_idx(padding_idx_) {
  weight = register_parameter("weight", at::empty({num, dim}));
}

at::Tensor GemmaEmbeddingImpl::forward(const at::Tensor& ids) {
  return at::embedding(weight, ids, padding_idx, /*scale_grad_by_freq=*/false, /*sparse=*/false);
}

std::pair<at::Tensor, at::Tensor> gemma_rope(const at::Tensor& position_ids, int64_t head_dim,
                                             double theta, at::ScalarType dtype) {
  const auto fopt = at::TensorOptions().dtype(at::kFloat).device(position_ids.device());
  // inv_freq = 1 / theta^(2i/D) with the reference's op order (fp32 pow, then reciprocal).
  const at::Tensor exponent =
      at::arange(0, head_dim, 2, fopt.dtype(at::kLong)).to(at::kFloat) / head_dim;
  const at::Tensor inv_freq = at::pow(theta, exponent).reciprocal();
  // [B, L, 1] * [D/2] = the reference's [B, D/2, 1] @ [B, 1, L] (one product per element).
  const at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv_freq;
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

namespace {

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return at::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
}

// [B, kvH, T, D] -> [B, kvH * rep, T, D], each KV head serving `rep` consecutive query heads.
at::Tensor repeat_kv(const at::Tensor& x, int64_t rep) {
  if (rep == 1) return x;
  const auto B = x.size(0), kvH = x.size(1), T = x.size(2), D = x.size(3);
  return x.unsqueeze(2).expand({B, kvH, rep, T, D}).reshape({B, kvH * rep, T, D});
}

Linear make_linear(int64_t in, int64_t out, bool bias) { return Linear(in, out, bias); }

}  // namespace

GemmaAttentionImpl::GemmaAttentionImpl(const GemmaConfig& c)
    : num_heads(c.num_attention_heads), num_kv_heads(c.num_key_value_heads), head_dim(c.head_dim) {
  const int64_t q = num_heads * head_dim, kv = num_kv_heads * head_dim;
  q_proj = register_module("q_proj", make_linear(c.hidden_size, q, c.attention_bias));
  k_proj = register_module("k_proj", make_linear(c.hidden_size, kv, c.attention_bias));
  v_proj = register_module("v_proj", make_linear(c.hidden_size, kv, c.attention_bias));
  o_proj = register_module("o_proj", make_linear(q, c.hidden_size, c.attention_bias));
}

at::Tensor GemmaAttentionImpl::forward(const at::Tensor& x, const GemmaAttentionInputs& in,
                                       at::Tensor* past_k, at::Tensor* past_v) {
  const int64_t B = x.size(0), L = x.size(1);
  at::Tensor q = q_proj->forward(x).view({B, L, num_heads, head_dim}).transpose(1, 2);
  at::Tensor k = k_proj->forward(x).view({B, L, num_kv_heads, head_dim}).transpose(1, 2);
  at::Tensor v = v_proj->forward(x).view({B, L, num_kv_heads, head_dim}).transpose(1, 2);

  const at::Tensor cos = in.cos.to(v.scalar_type()).unsqueeze(1);
  const at::Tensor sin = in.sin.to(v.scalar_type()).unsqueeze(1);
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;

  if (in.slot_rows != nullptr) {
    // Continuous batching: write the new keys/values into each row's slot, then attend to the
    // rows' slots up to the longest (the mask hides what lies past a row's own length).
    MGM_CHECK(past_k != nullptr && past_v != nullptr, "Gemma attention: slot rows without a cache");
    const auto& r = *in.slot_rows;
    if (L == 1 && B > 1) {
      const at::Tensor starts =
          at::tensor(r.starts, at::kLong).to(in.slot_index.device());
      past_k->index_put_({in.slot_index, at::indexing::Slice(), starts}, k.select(2, 0));
      past_v->index_put_({in.slot_index, at::indexing::Slice(), starts}, v.select(2, 0));
    } else {
      for (int64_t b = 0; b < B; ++b) {
        past_k->select(0, r.slots[b]).narrow(1, r.starts[b], L).copy_(k[b]);
        past_v->select(0, r.slots[b]).narrow(1, r.starts[b], L).copy_(v[b]);
      }
    }
    const int64_t T = in.slot_keys;
    if (in.slot_first >= 0) {
      k = past_k->narrow(0, in.slot_first, B).narrow(2, 0, T);
      v = past_v->narrow(0, in.slot_first, B).narrow(2, 0, T);
    } else {
      k = past_k->narrow(2, 0, T).index_select(0, in.slot_index);
      v = past_v->narrow(2, 0, T).index_select(0, in.slot_index);
    }
  } else if (past_k != nullptr && past_v != nullptr) {
    if (past_k->defined()) {
      k = at::cat({*past_k, k}, 2);
      v = at::cat({*past_v, v}, 2);
    }
    *past_k = k;
    *past_v = v;
  }

  const int64_t rep = num_heads / num_kv_heads;
  at::Tensor out;
  if (in.mask.defined()) {
    // A mask rules out the flash kernel; the memory-efficient one takes a mask but not GQA, so
    // expand K/V here instead of letting SDPA fall back to the math kernel.
    out = at::scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), in.mask, 0.0,
                                           /*is_causal=*/false);
  } else {
    out = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, 0.0, in.is_causal,
                                           /*scale=*/std::nullopt, /*enable_gqa=*/rep > 1);
  }
  out = out.transpose(1, 2).reshape({B, L, num_heads * head_dim});
  return o_proj->forward(out);
}

GemmaMLPImpl::GemmaMLPImpl(const GemmaConfig& c) : exact_gelu(c.exact_gelu()) {
  gate_proj = register_module("gate_proj", make_linear(c.hidden_size, c.intermediate_size, false));
  up_proj = register_module("up_proj", make_linear(c.hidden_size, c.intermediate_size, false));
  down_proj = register_module("down_proj", make_linear(c.intermediate_size, c.hidden_size, false));
}

at::Tensor GemmaMLPImpl::forward(const at::Tensor& x) {
  const at::Tensor g = at::gelu(gate_proj->forward(x), exact_gelu ? "none" : "tanh");
  return down_proj->forward(g * up_proj->forward(x));
}

GemmaDecoderLayerImpl::GemmaDecoderLayerImpl(const GemmaConfig& c) {
  // Registration order = transformers' named_parameters order.
  self_attn = register_module("self_attn", GemmaAttention(c));
  mlp = register_module("mlp", GemmaMLP(c));
  input_layernorm = register_module("input_layernorm", GemmaRMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", GemmaRMSNorm(c.hidden_size, c.rms_norm_eps));
}

at::Tensor GemmaDecoderLayerImpl::forward(const at::Tensor& x, const GemmaAttentionInputs& in,
                                          at::Tensor* past_k, at::Tensor* past_v) {
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x), in, past_k, past_v);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

GemmaModelImpl::GemmaModelImpl(const GemmaConfig& c) : config(c) {
  config.validate("GemmaConfig");
  embed_tokens =
      register_module("embed_tokens", GemmaEmbedding(c.vocab_size, c.hidden_size, c.pad_token_id));
  auto list = std::make_shared<torch::nn::Module>("layers");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layers.push_back(list->register_module(std::to_string(i), GemmaDecoderLayer(c)));
  register_module("layers", list);
  norm = register_module("norm", GemmaRMSNorm(c.hidden_size, c.rms_norm_eps));
}

namespace {

// The attention mask decision for one forward: no tensor where causality alone is exact.
GemmaAttentionInputs attention_inputs(const GemmaConfig& c, const at::Tensor& embeds,
                                      const GemmaForwardOptions& o, int64_t past) {
  const int64_t B = embeds.size(0), L = embeds.size(1), Lk = past + L;
  const auto dev = embeds.device();
  GemmaAttentionInputs in;
  at::Tensor pos = o.position_ids;
  if (!pos.defined()) {
    pos = at::arange(past, past + L, at::TensorOptions().dtype(at::kLong).device(dev)).unsqueeze(0);
  } else {
    MGM_CHECK(pos.dim() == 2 && pos.size(-1) == L && (pos.size(0) == 1 || pos.size(0) == B),
              "Gemma forward: position_ids must be [", B, ", ", L, "] or [1, ", L, "], found ",
              pos.sizes());
  }
  // Kept in fp32 here; each attention casts to its value dtype as the reference does (which
  // differs from the embeddings' dtype under autocast).
  std::tie(in.cos, in.sin) = gemma_rope(pos.to(dev), c.head_dim, c.rope_theta, at::kFloat);

  const bool use_padding = o.padding == PaddingMode::kMasked && o.attention_mask.defined();
  if (o.attention_mask.defined())
    MGM_CHECK(o.attention_mask.dim() == 2 && o.attention_mask.size(0) == B &&
                  o.attention_mask.size(1) == Lk,
              "Gemma forward: attention_mask must be [", B, ", ", Lk,
              "] (batch, past + length), found ", o.attention_mask.sizes());
  if (!use_padding) {
    if (past == 0) return in;  // is_causal
    in.is_causal = false;
    if (L == 1) return in;  // one new token attends to everything before it
  }
  // Explicit mask: key position <= query position, and key is a real token.
  const auto lopt = at::TensorOptions().dtype(at::kLong).device(dev);
  const at::Tensor qpos = at::arange(past, past + L, lopt).unsqueeze(1);
  const at::Tensor kpos = at::arange(0, Lk, lopt).unsqueeze(0);
  at::Tensor mask = (kpos <= qpos).unsqueeze(0).unsqueeze(0);  // [1,1,L,Lk]
  if (use_padding) {
    mask = mask & o.attention_mask.to(dev).ne(0).unsqueeze(1).unsqueeze(1);  // [B,1,L,Lk]
    // Rows with no key at all (queries on left padding) attend everywhere, as transformers'
    // SDPA path does, instead of producing NaN.
    mask = mask | mask.logical_not().all(-1, /*keepdim=*/true);
  }
  in.mask = mask;
  in.is_causal = false;
  return in;
}

}  // namespace

at::Tensor GemmaModelImpl::forward(const at::Tensor& inputs_embeds, const GemmaForwardOptions& o) {
  MGM_CHECK(inputs_embeds.dim() == 3 && inputs_embeds.size(2) == config.hidden_size,
            "Gemma forward: inputs_embeds must be [batch, length, ", config.hidden_size,
            "], found ", inputs_embeds.sizes());
  if (o.slot_rows != nullptr) return forward_slots(inputs_embeds, *o.slot_rows, o);
  GemmaKVCache* cache = o.cache;
  if (cache) {
    cache->keys.resize(layers.size());
    cache->values.resize(layers.size());
  }
  const int64_t past = cache ? cache->length() : 0;
  const GemmaAttentionInputs in = attention_inputs(config, inputs_embeds, o, past);

  // 4.38 scales every row, image rows included, by a Python float (not rounded to the dtype).
  at::Tensor h = inputs_embeds * std::pow(static_cast<double>(config.hidden_size), 0.5);
  const bool ckpt = gradient_checkpointing && cache == nullptr && at::GradMode::is_enabled();
  for (size_t i = 0; i < layers.size(); ++i) {
    auto layer = layers[i];
    if (ckpt) {
      auto impl = layer.ptr();
      h = checkpoint([impl, in](const at::Tensor& x) { return impl->forward(x, in); }, h,
                     impl->parameters());
    } else if (cache) {
      h = layer->forward(h, in, &cache->keys[i], &cache->values[i]);
    } else {
      h = layer->forward(h, in);
    }
  }
  return norm->forward(h);
}

void GemmaSlotCache::allocate(int64_t num_layers, int64_t slots, int64_t capacity,
                              int64_t kv_heads, int64_t head_dim, const at::TensorOptions& options) {
  MGM_CHECK(num_layers > 0 && slots > 0 && capacity > 0, "GemmaSlotCache: ", num_layers,
            " layers x ", slots, " slots x ", capacity, " positions");
  keys.clear();
  values.clear();
  for (int64_t i = 0; i < num_layers; ++i) {
    keys.push_back(at::zeros({slots, kv_heads, capacity, head_dim}, options));
    values.push_back(at::zeros({slots, kv_heads, capacity, head_dim}, options));
  }
}

at::Tensor GemmaModelImpl::forward_slots(const at::Tensor& inputs_embeds, const GemmaSlotRows& r,
                                         const GemmaForwardOptions& o) {
  MGM_CHECK(o.cache == nullptr && !o.position_ids.defined() && !o.attention_mask.defined(),
            "Gemma forward: slot rows take no cache, position_ids or attention_mask");
  MGM_CHECK(r.cache != nullptr && static_cast<int64_t>(r.cache->keys.size()) ==
                                      static_cast<int64_t>(layers.size()),
            "Gemma forward: the slot cache is not allocated for ", layers.size(), " layers");
  const int64_t B = inputs_embeds.size(0), L = inputs_embeds.size(1);
  MGM_CHECK(static_cast<int64_t>(r.slots.size()) == B && static_cast<int64_t>(r.starts.size()) == B,
            "Gemma forward: ", r.slots.size(), " slots and ", r.starts.size(), " starts for ", B,
            " rows");
  const auto dev = inputs_embeds.device();
  GemmaAttentionInputs in;
  in.slot_rows = &r;
  int64_t T = 0;
  bool consecutive = true;
  std::vector<int64_t> pos(B * L);
  for (int64_t b = 0; b < B; ++b) {
    MGM_CHECK(r.slots[b] >= 0 && r.slots[b] < r.cache->slots(), "Gemma forward: slot ", r.slots[b],
              " of ", r.cache->slots());
    MGM_CHECK(r.starts[b] >= 0 && r.starts[b] + L <= r.cache->capacity(), "Gemma forward: ",
              r.starts[b], " + ", L, " positions exceed the slot capacity ", r.cache->capacity());
    T = std::max(T, r.starts[b] + L);
    if (b > 0 && r.slots[b] != r.slots[b - 1] + 1) consecutive = false;
    for (int64_t t = 0; t < L; ++t) pos[b * L + t] = r.starts[b] + t;
  }
  const auto lopt = at::TensorOptions().dtype(at::kLong).device(dev);
  in.slot_index = at::tensor(r.slots, at::kLong).to(dev);
  in.slot_keys = T;
  in.slot_first = consecutive ? r.slots[0] : -1;
  const at::Tensor positions = at::tensor(pos, at::kLong).view({B, L}).to(dev);
  std::tie(in.cos, in.sin) = gemma_rope(positions, config.head_dim, config.rope_theta, at::kFloat);
  if (B == 1 && r.starts[0] == 0) {
    in.is_causal = true;  // a whole prompt from the start: exactly the cache-less forward
  } else if (B == 1 && L == 1) {
    in.is_causal = false;  // one new token attends to everything before it
  } else {
    // Key j is visible to query t of row b when j <= starts[b] + t (its own past and itself).
    const at::Tensor kpos = at::arange(0, T, lopt).view({1, 1, 1, T});
    in.mask = (kpos <= positions.view({B, 1, L, 1}));
    in.is_causal = false;
  }
  at::Tensor h = inputs_embeds * std::pow(static_cast<double>(config.hidden_size), 0.5);
  for (size_t i = 0; i < layers.size(); ++i)
    h = layers[i]->forward(h, in, &r.cache->keys[i], &r.cache->values[i]);
  return norm->forward(h);
}

GemmaForCausalLMImpl::GemmaForCausalLMImpl(const GemmaConfig& c, bool init_weights) {
  model = register_module("model", GemmaModel(c));
  if (!c.tie_word_embeddings)
    lm_head = register_module("lm_head", make_linear(c.hidden_size, c.vocab_size, false));
  if (init_weights) reset_parameters();
}

void GemmaForCausalLMImpl::reset_parameters() {
  // transformers' _init_weights: linears and embeddings N(0, initializer_range), biases zero,
  // the padding row zero; RMSNorm offsets stay zero (weight 1 + 0).
  at::NoGradGuard no_grad;
  const double std = config().initializer_range;
  for (auto& p : named_parameters(true)) {
    const std::string& n = p.key();
    at::Tensor t = p.value();
    if (ends_with(n, "norm.weight") || ends_with(n, ".bias"))
      t.zero_();
    else
      t.normal_(0.0, std);
  }
  const int64_t pad = config().pad_token_id;
  if (pad >= 0) model->embed_tokens->weight[pad].zero_();
}

void GemmaForCausalLMImpl::to_empty(const at::TensorOptions& options) {
  at::NoGradGuard no_grad;
  for (auto& p : parameters(true)) p.set_data(at::empty(p.sizes(), options));
}

const at::Tensor& GemmaForCausalLMImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

at::Tensor GemmaForCausalLMImpl::logits(const at::Tensor& hidden) {
  return at::linear(hidden, lm_head_weight());
}

at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels) {
  MGM_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
                logits.size(1) == labels.size(1),
            "causal_lm_loss: logits [B, L, V] and labels [B, L] disagree: ", logits.sizes(), " vs ",
            labels.sizes());
  const int64_t V = logits.size(2);
  const at::Tensor shift_logits = logits.slice(1, 0, -1).contiguous().view({-1, V});
  const at::Tensor shift_labels = labels.slice(1, 1).contiguous().view({-1}).to(at::kLong);
  return at::cross_entropy_loss(shift_logits, shift_labels, /*weight=*/{}, at::Reduction::Mean,
                                /*ignore_index=*/-100, /*label_smoothing=*/0.0);
}

// ---------------------------------------------------------------------------------------------
// Loading

LoadReport load_gemma_weights(GemmaForCausalLM& model, const io::TensorStore& store, bool strict) {
  const bool tied = model->config().tie_word_embeddings;
  LoadOptions opts;
  opts.ignore_unexpected = [tied, strict](const std::string& n) {
    // Tied checkpoints may still carry lm_head.weight (identical to the embedding); old ones
    // carry the rotary inv_freq buffer.
    if (tied && n == "lm_head.weight") return true;
    if (ends_with(n, "rotary_emb.inv_freq")) return true;
    if (strict) return false;
    // The MGM parts of an MGM checkpoint (their own modules load them).
    return starts_with(n, "model.vision_tower") || starts_with(n, "model.mm_projector") ||
           starts_with(n, "model.vlm_uni_");
  };
  LoadReport rep = load_module(*model, store, opts, /*report_only=*/true);
  if (!rep.ok() || (strict && !rep.unexpected.empty()))
    throw Error(str_cat(store.source(), ": cannot load Gemma weights: ", rep.describe()));
  if (!rep.unexpected.empty())
    log::warn(store.source(), ": ", rep.unexpected.size(), " tensors not used by Gemma, e.g. ",
              rep.unexpected.front());
  return rep;
}

GemmaForCausalLM load_gemma_pretrained(const std::string& dir, at::ScalarType dtype,
                                       at::Device device, bool honour_hidden_activation) {
  const GemmaConfig c = GemmaConfig::from_file(dir, honour_hidden_activation);
  log::info(dir, ": Gemma ", c.num_hidden_layers, " layers, hidden ", c.hidden_size,
            ", activation ", c.hidden_act, " (", c.activation_reason, ")");
  // Built without initialising (the untouched fp32 pages are never committed), then given empty
  // storage in the target dtype and device, so the peak is one copy of the weights.
  GemmaForCausalLM m(c, /*init_weights=*/false);
  m->to_empty(at::TensorOptions().dtype(dtype).device(device));
  load_gemma_weights(m, io::TensorStore::open(dir));
  return m;
}

}  // namespace mgm::models
