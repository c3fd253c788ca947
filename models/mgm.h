// The MGM wrapper (MGMGemmaForCausalLM): Gemma plus the frozen CLIP (LR) and ConvNeXt (HR)
// towers, patch-info mining (the three vlm_uni_* projectors) and the mm_projector. Parameter
// names are the keys of an MGM checkpoint (reference/mgm-model.md §14), so module_tensors() of
// the whole model is the checkpoint's key map and loading is a name lookup.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/cli.h"
#include "common/json.h"
#include "models/clip.h"
#include "models/convnext.h"
#include "models/gemma.h"
#include "models/io/tensor_file.h"
#include "models/module_utils.h"
#include "models/vision_layers.h"

namespace mgm::models {

constexpr int64_t kImageTokenIndex = -200;
constexpr int64_t kIgnoreIndex = -100;

// An MGM config.json: the Gemma keys plus the mm_* keys training writes (§14). The tower
// configurations come from "mm_vision_config" / "mm_vision_aux_config" when present (this
// project's configs, so one file builds the whole model), else from the tower folders/names
// that mm_vision_tower / mm_vision_tower_aux point to.
struct MgmConfig {
  GemmaConfig gemma;
  ClipVisionConfig clip = ClipVisionConfig::vit_large_patch14_336();
  ConvNextConfig convnext = ConvNextConfig::large();
  std::string mm_vision_tower = "openai/clip-vit-large-patch14-336";
  std::string mm_vision_tower_aux = "openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup";
  int64_t mm_hidden_size = 1024;
  int64_t mm_hidden_size_aux = 2880;
  std::string mm_projector_type = "mlp2x_gelu";
  int64_t mm_vision_select_layer = -2;
  std::string mm_vision_select_feature = "patch";
  int64_t image_size_aux = 768;
  std::string image_aspect_ratio = "square";
  int64_t image_grid = 1;
  bool image_global = false;
  int64_t tokenizer_model_max_length = 2048;
  std::string tokenizer_padding_side = "right";
  bool tune_mm_mlp_adapter = false;
  bool freeze_mm_mlp_adapter = false;
  bool mm_use_im_start_end = false;
  bool mm_use_im_patch_token = false;
  bool optimize_vision_tower = false;
  bool optimize_vision_tower_aux = false;

  // MGM-2B: gemma-2b-it + CLIP ViT-L/14-336 + ConvNeXt-L at 768 px.
  static MgmConfig mgm_2b();
  // `dir_of_file` resolves relative tower paths (the folder the config came from).
  static MgmConfig from_json(const Json& j, const std::string& what,
                             const std::string& dir_of_file = "");
  static MgmConfig from_file(const std::string& path);  // a config.json or a folder holding one
  Json to_json() const;  // model_type mgm_gemma, Gemma keys + mm_* keys + the tower configs
  void validate(const std::string& what) const;

  int64_t lr_grid() const { return clip.grid(); }                          // 24
  int64_t image_tokens() const { return lr_grid() * lr_grid(); }           // 576
  int64_t hr_map() const { return image_size_aux / convnext.patch_size; }  // 192
  int64_t cell() const { return hr_map() / lr_grid(); }                    // 8
};

// Parameter counts of the full model, by shape arithmetic (nothing allocated).
struct MgmParameterCounts {
  int64_t gemma = 0, clip = 0, convnext = 0, query = 0, aux = 0, val = 0, projector = 0;
  int64_t total() const { return gemma + clip + convnext + query + aux + val + projector; }
  int64_t trainable_pretrain() const { return query + aux + val + projector; }
  int64_t trainable_finetune() const { return gemma + trainable_pretrain(); }
};
MgmParameterCounts mgm_parameter_counts(const MgmConfig& cfg);

// nn.GELU (exact erf), parameter-free: index 1 of "mlp2x_gelu".
class GeluImpl : public torch::nn::Module {
 public:
  at::Tensor forward(const at::Tensor& x);
};
TORCH_MODULE(Gelu);

// mm_projector: "linear" = Linear(in,out); "mlp{N}x_gelu" = Linear, (GELU, Linear) x (N-1),
// children named 0, 1, 2, ... as nn.Sequential.
class MgmProjectorImpl : public torch::nn::Module {
 public:
  MgmProjectorImpl(const std::string& type, int64_t in, int64_t out, const at::TensorOptions& o);
  at::Tensor forward(const at::Tensor& x);
  std::vector<vision::Dense> linears;  // children "0", "2", "4", ...
};
TORCH_MODULE(MgmProjector);

// Sequential(LayerNorm(in), Linear(in, out)): one vlm_uni_*_projector.
class MgmNormLinearImpl : public torch::nn::Module {
 public:
  MgmNormLinearImpl(int64_t in, int64_t out, const at::TensorOptions& o);
  at::Tensor forward(const at::Tensor& x);
  vision::LayerNorm norm{nullptr};
  vision::Dense linear{nullptr};
};
TORCH_MODULE(MgmNormLinear);

// Patch-info mining (MGM's unified_resampler with image_grid 1, no global image): each LR token
// attends, single-head with K scaled by 1/sqrt(C), to the cell x cell HR positions of its own
// cell. lr [B, N, C_lr] (N = g*g), hr [B, C_hr, g*cell, g*cell] -> the mined term [B, N, C];
// the caller adds it to lr.
at::Tensor patch_info_mining(const at::Tensor& lr, const at::Tensor& hr, MgmNormLinear& query,
                             MgmNormLinear& aux, MgmNormLinear& val);

struct MgmBuildOptions {
  at::ScalarType dtype = at::kFloat;  // every parameter
  at::Device device = at::kCPU;
  bool init_weights = true;  // off when the weights are loaded right after
  // The reference keeps ConvNeXt's DropPath active (see ConvNextOptions::stochastic_depth).
  bool stochastic_depth = false;
};

enum class MgmStage { kPretrain, kFinetune };

class MgmForCausalLMImpl : public torch::nn::Module {
 public:
  MgmForCausalLMImpl(const MgmConfig& cfg, const MgmBuildOptions& opts = {});
  const MgmConfig& config() const { return cfg_; }

  // images [B,3,S,S] (S = CLIP image_size), images_aux [B,3,S_aux,S_aux] -> projected image
  // tokens [B, g*g, hidden]. The towers run without autograd in their own dtype.
  at::Tensor encode_images(const at::Tensor& images, const at::Tensor& images_aux);

  struct Prepared {
    at::Tensor inputs_embeds;   // [B, L', hidden]
    at::Tensor labels;          // [B, L'] (undefined when no labels were given)
    at::Tensor attention_mask;  // [B, L'] bool
  };
  // §7: strips padding (attention_mask, default all real), splices image_features rows at
  // every -200 (consecutive images across the batch), truncates to tokenizer_model_max_length
  // and right-pads with zero embeddings / -100 labels. Image slots: either one per -200
  // marker, or, as the reference collator lays them out, one per sample with text-only samples
  // holding an unused placeholder; the layout is inferred from image_features.size(0).
  Prepared prepare_inputs(const at::Tensor& input_ids, const at::Tensor& labels,
                          const at::Tensor& attention_mask, const at::Tensor& image_features);

  struct Output {
    at::Tensor logits;  // [B, L', vocab]
    at::Tensor loss;    // scalar, when labels were given
    at::Tensor labels, attention_mask;
  };
  // Whole forward. `padding`: kMasked reproduces the reference at every position; the default
  // (right-padded causal) is exact at real positions and is the training path.
  Output forward(const at::Tensor& input_ids, const at::Tensor& labels,
                 const at::Tensor& attention_mask, const at::Tensor& images,
                 const at::Tensor& images_aux,
                 PaddingMode padding = PaddingMode::kRightPaddedCausal);

  // requires_grad per stage: pretrain = mm_projector + vlm_uni_*; finetune = Gemma too; the
  // towers never.
  void set_trainable(MgmStage stage);
  // Fresh initialisation of the MGM-only modules as PyTorch's defaults (LayerNorm 1/0, Linear
  // U(+-1/sqrt(fan_in))), drawn from the global RNG.
  void reset_mgm_parameters();
  // A random tower initialisation for models built from a config alone (tests, the demo):
  // weights N(0, 0.02), norms 1/0, ConvNeXt gammas 1e-6 (timm's layer-scale init).
  void reset_tower_parameters();

  GemmaForCausalLM llm{nullptr};
  std::shared_ptr<torch::nn::Module> model_holder;         // "model"
  std::shared_ptr<torch::nn::Module> vision_tower_holder;  // "model.vision_tower"
  ClipVisionModel vision_tower{nullptr};                   // model.vision_tower.vision_tower
  ConvNext vision_tower_aux{nullptr};                      // model.vision_tower_aux
  MgmProjector mm_projector{nullptr};
  MgmNormLinear vlm_uni_query_projector{nullptr}, vlm_uni_aux_projector{nullptr},
      vlm_uni_val_projector{nullptr};

 private:
  MgmConfig cfg_;
};
TORCH_MODULE(MgmForCausalLM);

// Loading and saving. Every loader throws naming the missing and mismatched tensors.
// A complete MGM checkpoint folder: config.json + (sharded) safetensors with §14 keys.
MgmForCausalLM load_mgm_checkpoint(const std::string& dir, const MgmBuildOptions& opts = {});
// The same with another config for the same architecture (an adapter folder's config.json).
MgmForCausalLM load_mgm_checkpoint(const MgmConfig& cfg, const std::string& dir,
                                   const MgmBuildOptions& opts = {});
// Separate sources, as training starts: a Gemma HF folder, a CLIP folder, an open_clip
// ConvNeXt folder and optionally a stage-1 mm_projector.bin (§6.4). The MGM-only modules keep
// their fresh initialisation unless the .bin provides them.
struct MgmSources {
  std::string gemma_dir, clip_dir, convnext_dir, pretrain_mm_mlp_adapter;
};
MgmForCausalLM load_mgm_from_parts(const MgmConfig& cfg, const MgmSources& src,
                                   const MgmBuildOptions& opts = {});
// §6.4 rules for a stage-1 mm_projector.bin: mm_projector (non-strict), CLIP (strict),
// vlm_uni_* (strict); ConvNeXt is not taken from it (optimize_vision_tower_aux is false).
LoadReport load_pretrain_adapter(MgmForCausalLM& model, const io::TensorStore& store);
// config.json + sharded safetensors (index written last as the completeness marker).
void save_mgm_checkpoint(MgmForCausalLM& model, const std::string& dir,
                         uint64_t max_shard_size = 5ull << 30);
// The §6.3 key set (mm_projector, vlm_uni_*, both towers) as a torch.save zip.
io::NamedTensors mm_projector_tensors(MgmForCausalLM& model);
void save_mm_projector_bin(MgmForCausalLM& model, const std::string& path);

// `mgm logits`: the library function and the command group.
struct LogitsOptions {
  std::string dtype = "fp32";
  std::string device = "cpu";
  bool masked = true;  // explicit padding mask (reference numbers at every position)
};
void compute_logits(const std::string& model_dir, const std::string& inputs,
                    const std::string& output, const LogitsOptions& opts = {});

}  // namespace mgm::models

namespace mgm::models {
// `mgm logits ...` (a group with a single unnamed command).
std::vector<cli::Command> logits_commands();
}  // namespace mgm::models
