#include "models/convnext.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/upsample_bilinear2d.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <optional>

#include "common/error.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/module_utils.h"

namespace mgm::models {

int64_t ConvNextConfig::total_blocks() const {
  int64_t n = 0;
  for (auto d : depths) n += d;
  return n;
}

int64_t ConvNextConfig::feature_channels() const {
  int64_t n = 0;
  for (auto d : dims) n += d;
  return n;
}

std::vector<double> ConvNextConfig::drop_path_rates() const {
  const int64_t n = total_blocks();
  std::vector<double> r(static_cast<size_t>(n), 0.0);
  // torch.linspace(0, rate, n) in fp32, as timm computes it.
  for (int64_t i = 0; i < n; ++i) {
    const float step = n > 1 ? static_cast<float>(drop_path_rate) / static_cast<float>(n - 1) : 0.f;
    r[i] = n > 1 ? static_cast<double>(i < n / 2 ? step * static_cast<float>(i)
                                                 : static_cast<float>(drop_path_rate) -
                                                       step * static_cast<float>(n - 1 - i))
                 : 0.0;
  }
  return r;
}

void ConvNextConfig::validate(const std::string& what) const {
  MGM_CHECK(!depths.empty() && depths.size() == dims.size(), what,
            ": ConvNeXt depths and dims must be non-empty and of equal length (", depths.size(),
            " vs ", dims.size(), ")");
  for (size_t i = 0; i < depths.size(); ++i)
    MGM_CHECK(depths[i] > 0 && dims[i] > 0, what, ": ConvNeXt stage ", i,
              " needs a positive depth and width (", depths[i], ", ", dims[i], ")");
  MGM_CHECK(in_chans > 0 && patch_size > 0, what, ": in_chans and patch_size must be positive");
  MGM_CHECK(drop_path_rate >= 0.0 && drop_path_rate < 1.0, what, ": drop_path_rate ",
            drop_path_rate, " must be in [0, 1)");
}

ConvNextConfig ConvNextConfig::from_name(const std::string& name) {
  std::string n = name;
  for (auto& c : n)
    c = c == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const size_t at = n.find("convnext_");
  MGM_CHECK(at != std::string::npos, "ConvNeXt model name \"", name,
            "\" does not name a convnext_<size> model");
  std::string size = n.substr(at + 9);
  size = size.substr(0, size.find('_'));
  ConvNextConfig c;
  if (size == "tiny") {
    c.depths = {3, 3, 9, 3}, c.dims = {96, 192, 384, 768};
  } else if (size == "small") {
    c.depths = {3, 3, 27, 3}, c.dims = {96, 192, 384, 768};
  } else if (size == "base") {
    c.depths = {3, 3, 27, 3}, c.dims = {128, 256, 512, 1024};
  } else if (size == "large") {
    c.depths = {3, 3, 27, 3}, c.dims = {192, 384, 768, 1536};
  } else if (size == "xlarge") {
    c.depths = {3, 3, 27, 3}, c.dims = {256, 512, 1024, 2048};
  } else if (size == "xxlarge") {
    c.depths = {3, 4, 30, 3}, c.dims = {384, 768, 1536, 3072}, c.norm_eps = 1e-5;
  } else {
    throw Error(str_cat("ConvNeXt model name \"", name, "\": size \"", size,
                        "\" is not supported (tiny, small, base, large, xlarge, xxlarge)"));
  }
  return c;
}

ConvNextConfig ConvNextConfig::from_open_clip_config(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path))
    file = (std::filesystem::path(path) / "open_clip_config.json").string();
  const Json j = read_json_file(file);
  MGM_CHECK(j.contains("model_cfg") && j.at("model_cfg").contains("vision_cfg") &&
                j.at("model_cfg").at("vision_cfg").is_object(),
            file, ": no model_cfg.vision_cfg object");
  const Json& v = j.at("model_cfg").at("vision_cfg");
  const std::string what = file + " (model_cfg.vision_cfg)";
  ConvNextConfig c = from_name(json_string(v, "timm_model_name", what));
  if (v.contains("timm_drop_path") && !v.at("timm_drop_path").is_null()) {
    MGM_CHECK(v.at("timm_drop_path").is_number(), what, ": timm_drop_path must be a number");
    c.drop_path_rate = v.at("timm_drop_path").get<double>();
  } else {
    c.drop_path_rate = 0.0;  // open_clip passes none, so timm's default applies
  }
  c.validate(what);
  return c;
}

int64_t convnext_parameter_count(const ConvNextConfig& c) {
  int64_t n = c.in_chans * c.dims[0] * c.patch_size * c.patch_size + c.dims[0] + 2 * c.dims[0];
  for (size_t s = 0; s < c.dims.size(); ++s) {
    const int64_t in = s == 0 ? c.dims[0] : c.dims[s - 1], d = c.dims[s];
    if (s > 0) n += 2 * in + d * in * 4 + d;  // downsample: LayerNorm2d + Conv2d k2
    const int64_t block = d /*gamma*/ + d * 49 + d /*conv_dw*/ + 2 * d /*norm*/ +
                          (4 * d * d + 4 * d) + (4 * d * d + d);
    n += c.depths[s] * block;
  }
  return n;
}

// ----------------------------------------------------------------------------------------------

ConvNextMlpImpl::ConvNextMlpImpl(int64_t dim, const at::TensorOptions& opts) {
  fc1 = register_module("fc1", vision::Dense(dim, 4 * dim, true, opts));
  fc2 = register_module("fc2", vision::Dense(4 * dim, dim, true, opts));
}

at::Tensor ConvNextMlpImpl::forward(const at::Tensor& x) {
  return fc2->forward(at::gelu(fc1->forward(x)));  // exact GELU (nn.GELU)
}

ConvNextBlockImpl::ConvNextBlockImpl(int64_t dim, double eps, double dp,
                                     const at::TensorOptions& opts)
    : drop_path(dp) {
  gamma = register_parameter("gamma", at::empty({dim}, opts));
  conv_dw = register_module("conv_dw", vision::Conv2d(dim, dim, 7, 1, 3, dim, true, opts));
  norm = register_module("norm", vision::LayerNorm(dim, eps, opts));
  mlp = register_module("mlp", ConvNextMlp(dim, opts));
}

at::Tensor ConvNextBlockImpl::forward(const at::Tensor& x, bool stochastic) {
  at::Tensor y = conv_dw->forward(x).permute({0, 2, 3, 1});
  y = mlp->forward(norm->forward(y)).permute({0, 3, 1, 2});
  y = y * gamma.view({1, -1, 1, 1});
  if (stochastic && drop_path > 0.0) {
    // Per-sample keep mask scaled by 1/keep (timm drop_path with scale_by_keep).
    const double keep = 1.0 - drop_path;
    at::Tensor mask = y.new_empty({y.size(0), 1, 1, 1}).bernoulli_(keep);
    if (keep > 0.0) mask.div_(keep);
    y = y * mask;
  }
  return y + x;
}

ConvNextStageImpl::ConvNextStageImpl(int64_t in, int64_t out, int64_t depth, bool downsample,
                                     double eps, const std::vector<double>& drop_paths,
                                     const at::TensorOptions& opts) {
  if (downsample || in != out) {
    auto ds = register_module("downsample", vision::Indexed());
    down_norm = ds->add(vision::LayerNorm(in, eps, opts));
    down_conv = ds->add(vision::Conv2d(in, out, 2, 2, 0, 1, true, opts));
  }
  auto holder = register_module("blocks", vision::Indexed());
  for (int64_t j = 0; j < depth; ++j)
    blocks.push_back(holder->add(ConvNextBlock(out, eps, drop_paths.at(j), opts)));
}

at::Tensor ConvNextStageImpl::forward(at::Tensor x, bool stochastic) {
  if (down_conv) x = down_conv->forward(down_norm->forward_nchw(x));
  for (auto& b : blocks) x = b->forward(x, stochastic);
  return x;
}

ConvNextImpl::ConvNextImpl(const ConvNextConfig& cfg, const ConvNextOptions& opts)
    : cfg_(cfg), opts_(opts) {
  cfg_.validate("ConvNeXt config");
  const bool mgm = opts.naming == ConvNextNaming::kMgm;
  const auto& to = opts.tensor_options;
  stem = register_module(mgm ? "vision_stem" : "stem", vision::Indexed());
  stem_conv = stem->add(vision::Conv2d(cfg_.in_chans, cfg_.dims[0], cfg_.patch_size,
                                       cfg_.patch_size, 0, 1, true, to));
  stem_norm = stem->add(vision::LayerNorm(cfg_.dims[0], cfg_.norm_eps, to));
  stages = register_module(mgm ? "vision_stages" : "stages", vision::Indexed());
  const auto rates = cfg_.drop_path_rates();
  size_t k = 0;
  for (size_t s = 0; s < cfg_.dims.size(); ++s) {
    const int64_t in = s == 0 ? cfg_.dims[0] : cfg_.dims[s - 1];
    std::vector<double> r(rates.begin() + k, rates.begin() + k + cfg_.depths[s]);
    k += cfg_.depths[s];
    // timm gives every stage after the first a downsample (stride 2), even at equal width.
    ConvNextStage stage(in, cfg_.dims[s], cfg_.depths[s], /*downsample=*/s > 0, cfg_.norm_eps, r,
                        to);
    stage_list.push_back(stages->add(stage));
  }
}

std::vector<at::Tensor> ConvNextImpl::forward_stages(const at::Tensor& images) {
  MGM_CHECK(images.dim() == 4 && images.size(1) == cfg_.in_chans, "ConvNeXt: expected images [B, ",
            cfg_.in_chans, ", H, W], found ", images.sizes());
  const int64_t f = cfg_.patch_size << (cfg_.dims.size() - 1);
  MGM_CHECK(images.size(2) % f == 0 && images.size(3) % f == 0, "ConvNeXt: image size ",
            images.size(2), "x", images.size(3), " must be a multiple of ", f);
  at::Tensor x =
      stem_norm->forward_nchw(stem_conv->forward(images.to(stem_conv->weight.scalar_type())));
  std::vector<at::Tensor> out;
  for (auto& s : stage_list) {
    x = s->forward(x, opts_.stochastic_depth);
    out.push_back(x);
  }
  return out;
}

at::Tensor ConvNextImpl::forward(const at::Tensor& images) {
  std::vector<at::Tensor> st = forward_stages(images);
  const int64_t h = st[0].size(2), w = st[0].size(3);
  std::vector<at::Tensor> parts{st[0]};
  for (size_t i = 1; i < st.size(); ++i)
    parts.push_back(at::upsample_bilinear2d(st[i].to(at::kFloat), {h, w}, /*align_corners=*/false)
                        .to(st[0].scalar_type()));
  return at::cat(parts, 1).contiguous();
}

void ConvNextImpl::load(const io::TensorStore& store, const std::string& prefix,
                        ConvNextNaming source) {
  const bool mgm = source == ConvNextNaming::kMgm;
  LoadOptions lo;
  lo.src_prefix = prefix + (mgm ? "vision_stem." : "stem.");
  load_module(*stem, store, lo);
  lo.src_prefix = prefix + (mgm ? "vision_stages." : "stages.");
  load_module(*stages, store, lo);
}

std::shared_ptr<ConvNextImpl> ConvNextImpl::from_open_clip(const std::string& dir,
                                                           const ConvNextOptions& opts,
                                                           const ConvNextConfig* cfg) {
  auto model =
      std::make_shared<ConvNextImpl>(cfg ? *cfg : ConvNextConfig::from_open_clip_config(dir), opts);
  const std::string bin = (std::filesystem::path(dir) / "open_clip_pytorch_model.bin").string();
  model->load(io::TensorStore::open(bin), "visual.trunk.", ConvNextNaming::kTimm);
  return model;
}

}  // namespace mgm::models
