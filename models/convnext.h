// The high-resolution vision tower: the OpenCLIP ConvNeXt trunk (timm naming: stem + 4 stages,
// no final norm or head) and MGM's feature, the four stage outputs upsampled to the stage-0 grid
// and concatenated on channels.
//
// Naming: the module registers its two parts as "stem"/"stages" (timm, as under `visual.trunk.`
// in open_clip_pytorch_model.bin) or "vision_stem"/"vision_stages" (MGM, as under
// `model.vision_tower_aux.` in MGM checkpoints), chosen by ConvNextOptions::naming, so the
// module's own names are checkpoint keys when saved inside either wrapper. load() takes the
// naming of the *source* separately and loads each part under its own prefix, so either file
// loads into either module without a translation table.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "models/io/tensor_file.h"
#include "models/vision_layers.h"

namespace mgm::models {

struct ConvNextConfig {
  std::vector<int64_t> depths{3, 3, 27, 3};
  std::vector<int64_t> dims{192, 384, 768, 1536};
  int64_t in_chans = 3;
  int64_t patch_size = 4;       // stem conv kernel and stride
  double norm_eps = 1e-6;       // every LayerNorm of the trunk
  double drop_path_rate = 0.1;  // MGM keeps open_clip's timm_drop_path

  int64_t total_blocks() const;
  int64_t feature_channels() const;  // sum(dims): 2880 for large
  // Stochastic-depth probability of each block in order: linspace(0, rate, total_blocks).
  std::vector<double> drop_path_rates() const;
  void validate(const std::string& what) const;

  // A timm or open_clip model name ("convnext_large", "convnext_large_d_320"), or an MGM tower
  // folder name ("openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup"). Sizes tiny, small,
  // base, large, xlarge, xxlarge (the conv-MLP variants atto..nano are not supported).
  static ConvNextConfig from_name(const std::string& name);
  // open_clip_config.json (or a folder holding one): model_cfg.vision_cfg.timm_model_name and
  // timm_drop_path.
  static ConvNextConfig from_open_clip_config(const std::string& path);
  static ConvNextConfig large() { return ConvNextConfig{}; }
};

enum class ConvNextNaming { kTimm, kMgm };

struct ConvNextOptions {
  ConvNextNaming naming = ConvNextNaming::kTimm;
  // The reference's behaviour: DropPath is active in MGM training and evaluation alike (the
  // frozen tower is never put in eval mode), so each block's residual branch is dropped per sample
  // with its linspace rate and the survivors scaled by 1/(1-p). Off: deterministic (timm eval).
  // Applies regardless of the module's train/eval flag.
  bool stochastic_depth = false;
  at::TensorOptions tensor_options = at::TensorOptions().dtype(at::kFloat);
};

// Parameters of stem + stages, by shape arithmetic.
int64_t convnext_parameter_count(const ConvNextConfig& cfg);

class ConvNextMlpImpl : public torch::nn::Module {
 public:
  ConvNextMlpImpl(int64_t dim, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& x);  // channels-last
  vision::Dense fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ConvNextMlp);

class ConvNextBlockImpl : public torch::nn::Module {
 public:
  ConvNextBlockImpl(int64_t dim, double eps, double drop_path, const at::TensorOptions& opts);
  at::Tensor forward(const at::Tensor& x, bool stochastic);
  double drop_path;
  at::Tensor gamma;
  vision::Conv2d conv_dw{nullptr};
  vision::LayerNorm norm{nullptr};
  ConvNextMlp mlp{nullptr};
};
TORCH_MODULE(ConvNextBlock);

class ConvNextStageImpl : public torch::nn::Module {
 public:
  ConvNextStageImpl(int64_t in, int64_t out, int64_t depth, bool downsample, double eps,
                    const std::vector<double>& drop_paths, const at::TensorOptions& opts);
  at::Tensor forward(at::Tensor x, bool stochastic);
  // "downsample" = Sequential(LayerNorm2d, Conv2d k2 s2); stage 0 has none.
  vision::LayerNorm down_norm{nullptr};
  vision::Conv2d down_conv{nullptr};
  std::vector<ConvNextBlock> blocks;
};
TORCH_MODULE(ConvNextStage);

class ConvNextImpl : public torch::nn::Module {
 public:
  ConvNextImpl(const ConvNextConfig& cfg, const ConvNextOptions& opts = {});
  // images [B, in_chans, H, W] (cast to the weights' dtype) -> the four stage outputs
  // [B, dims[s], H/(4*2^s), W/(4*2^s)].
  std::vector<at::Tensor> forward_stages(const at::Tensor& images);
  // MGM's feature: stages 1..3 upsampled (bilinear, align_corners=False, computed in fp32 and
  // cast back) to stage 0's size, concatenated after stage 0 -> [B, sum(dims), H/4, W/4].
  at::Tensor forward(const at::Tensor& images);

  // Loads the trunk from `prefix` + the source's part names ("stem."/"stages." for kTimm,
  // "vision_stem."/"vision_stages." for kMgm). Other keys (open_clip's head, text tower) are
  // ignored, as the reference's strict=False load does.
  void load(const io::TensorStore& store, const std::string& prefix, ConvNextNaming source);
  // An open_clip folder: open_clip_config.json + open_clip_pytorch_model.bin (keys under
  // "visual.trunk."). `cfg` replaces the configuration the folder's json names.
  static std::shared_ptr<ConvNextImpl> from_open_clip(const std::string& dir,
                                                      const ConvNextOptions& opts = {},
                                                      const ConvNextConfig* cfg = nullptr);

  const ConvNextConfig& config() const { return cfg_; }
  ConvNextOptions& options() { return opts_; }

  vision::Indexed stem{nullptr};    // 0: Conv2d(k=patch, s=patch), 1: LayerNorm2d
  vision::Indexed stages{nullptr};  // 0..3: ConvNextStage
  vision::Conv2d stem_conv{nullptr};
  vision::LayerNorm stem_norm{nullptr};
  std::vector<ConvNextStage> stage_list;

 private:
  ConvNextConfig cfg_;
  ConvNextOptions opts_;
};
TORCH_MODULE(ConvNext);

}  // namespace mgm::models
