// The low-resolution vision tower: CLIP ViT as Hugging Face's CLIPVisionModel (pre-LN
// transformer, quick_gelu MLP). Parameter names are the HF checkpoint keys
// (`vision_model.encoder.layers.3.mlp.fc1.weight`, `vision_model.pre_layrnorm.weight`, ...), and
// forward() returns the hidden state MGM selects (layer -2, CLS dropped) without computing the
// layers after it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "common/json.h"
#include "models/io/tensor_file.h"
#include "models/vision_layers.h"

namespace mgm::models {

// CLIPVisionConfig fields (defaults are transformers' CLIPVisionConfig defaults).
struct ClipVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";  // or "gelu" (exact)

  int64_t grid() const { return image_size / patch_size; }
  int64_t num_positions() const { return grid() * grid() + 1; }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // Throws naming `what` when the shape fields are inconsistent.
  void validate(const std::string& what) const;

  // A CLIPModel config (its "vision_config" section) or a CLIPVisionConfig; `what` names the file.
  static ClipVisionConfig from_json(const Json& j, const std::string& what);
  // `path` is a config.json or a folder holding one.
  static ClipVisionConfig from_file(const std::string& path);
  // openai/clip-vit-large-patch14-336, the tower of MGM-2B.
  static ClipVisionConfig vit_large_patch14_336();
};

struct ClipVisionOptions {
  // Index into HF's hidden_states (embeddings after pre_layrnorm, then each layer's output);
  // negative counts from the end: -2 = output of the second-to-last layer.
  int64_t select_layer = -2;
  std::string select_feature = "patch";  // "patch" drops the CLS token; "cls_patch" keeps it
  // Build no parameters for what feeds nothing (layers after the selected one, post_layernorm).
  // Off by default so the module holds (and saves) every key of the reference checkpoint.
  bool drop_unused = false;
  // Recompute each encoder layer in backward instead of keeping its activations (only when
  // gradients are being recorded).
  bool checkpoint_layers = false;
  at::TensorOptions tensor_options = at::TensorOptions().dtype(at::kFloat);
};

// Parameters of the full CLIPVisionModel (used_only=false) or of what `select_layer` uses
// (layers up to it, no post_layernorm), by shape arithmetic.
int64_t clip_vision_parameter_count(const ClipVisionConfig& cfg, bool used_only,
                                    int64_t select_layer = -2);

class ClipVisionEmbeddingsImpl : public torch::nn::Module {
 public:
  ClipVisionEmbeddingsImpl(const ClipVisionConfig& cfg, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& images);  // [B,C,H,W] -> [B, 1+grid^2, D]
  ClipVisionConfig cfg;
  at::Tensor class_embedding;
  vision::Conv2d patch_embedding{nullptr};
  vision::Embedding position_embedding{nullptr};
};
TORCH_MODULE(ClipVisionEmbeddings);

class ClipAttentionImpl : public torch::nn::Module {
 public:
  ClipAttentionImpl(const ClipVisionConfig& cfg, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& x);
  int64_t heads, head_dim;
  vision::Dense q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Module {
 public:
  ClipMlpImpl(const ClipVisionConfig& cfg, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& x);
  bool quick_gelu;
  vision::Dense fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ClipMlp);

class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  ClipEncoderLayerImpl(const ClipVisionConfig& cfg, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& x);
  ClipAttention self_attn{nullptr};
  vision::LayerNorm layer_norm1{nullptr};
  ClipMlp mlp{nullptr};
  vision::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

class ClipEncoderImpl : public torch::nn::Module {
 public:
  ClipEncoderImpl(const ClipVisionConfig& cfg, int64_t num_built, const at::TensorOptions& opts);
  // Runs the first `n` layers; `recompute`: activation checkpointing per layer.
  at::Tensor forward(at::Tensor x, int64_t n, bool recompute);
  vision::Indexed layers_holder{nullptr};  // registered as "layers"
  std::vector<ClipEncoderLayer> layers;
};
TORCH_MODULE(ClipEncoder);

class ClipVisionTransformerImpl : public torch::nn::Module {
 public:
  ClipVisionTransformerImpl(const ClipVisionConfig& cfg, int64_t num_built, bool post_ln,
                            const at::TensorOptions& opts);
  ClipVisionEmbeddings embeddings{nullptr};
  vision::LayerNorm pre_layrnorm{nullptr};  // sic: the reference's name
  ClipEncoder encoder{nullptr};
  vision::LayerNorm post_layernorm{nullptr};  // null with drop_unused; MGM never applies it
};
TORCH_MODULE(ClipVisionTransformer);

class ClipVisionModelImpl : public torch::nn::Module {
 public:
  ClipVisionModelImpl(const ClipVisionConfig& cfg, const ClipVisionOptions& opts = {});
  // images [B, C, image_size, image_size] (cast to the weights' dtype) -> selected hidden state
  // [B, grid^2 (+1 with cls_patch), hidden_size].
  at::Tensor forward(const at::Tensor& images);
  // HF hidden_states[index] for 0 <= index <= layers built (no feature selection).
  at::Tensor hidden_state(const at::Tensor& images, int64_t index);

  // Loads `prefix + <module name>` from a CLIPVisionModel or full CLIPModel checkpoint
  // (text_model.*, the projections and logit_scale are the text side and are ignored; so are
  // the keys of parts dropped with drop_unused). MGM checkpoints use
  // prefix "model.vision_tower.vision_tower.".
  void load(const io::TensorStore& store, const std::string& prefix = "");
  // Config and weights of a Hugging Face folder (config.json + model.safetensors or
  // pytorch_model.bin, possibly sharded).
  static std::shared_ptr<ClipVisionModelImpl> from_pretrained(const std::string& dir,
                                                              const ClipVisionOptions& opts = {});

  // The non-negative hidden_states index that select_layer names.
  int64_t selected_index() const { return selected_; }
  const ClipVisionConfig& config() const { return cfg_; }
  const ClipVisionOptions& options() const { return opts_; }

  ClipVisionTransformer vision_model{nullptr};

 private:
  ClipVisionConfig cfg_;
  ClipVisionOptions opts_;
  int64_t selected_ = 0;
  int64_t built_ = 0;
};
TORCH_MODULE(ClipVisionModel);

}  // namespace mgm::models
