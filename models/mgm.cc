#include "models/mgm.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <regex>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"

namespace mgm::models {
namespace {

namespace fs = std::filesystem;

std::vector<int64_t> int_list(const Json& j, const char* key, const std::string& what) {
  const Json& v = json_at(j, key, what);
  MGM_CHECK_FORMAT(v.is_array(), what, "key '", key, "' must be a list of integers");
  std::vector<int64_t> out;
  for (const auto& e : v) {
    MGM_CHECK_FORMAT(e.is_number_integer(), what, "key '", key, "' must be a list of integers");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

// Number of Linear layers of an mm_projector type ("linear" -> 1, "mlp2x_gelu" -> 2).
int64_t projector_depth(const std::string& type) {
  if (type == "linear") return 1;
  static const std::regex re("^mlp([0-9]+)x_gelu$");
  std::smatch m;
  if (std::regex_match(type, m, re)) {
    const int64_t n = std::stoll(m[1].str());
    if (n >= 1) return n;
  }
  return 0;
}

Json clip_to_json(const ClipVisionConfig& c) {
  Json j;
  j["model_type"] = "clip_vision_model";
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_channels"] = c.num_channels;
  j["image_size"] = c.image_size;
  j["patch_size"] = c.patch_size;
  j["layer_norm_eps"] = c.layer_norm_eps;
  j["hidden_act"] = c.hidden_act;
  return j;
}

Json convnext_to_json(const ConvNextConfig& c) {
  Json j;
  j["depths"] = c.depths;
  j["dims"] = c.dims;
  j["in_chans"] = c.in_chans;
  j["patch_size"] = c.patch_size;
  j["norm_eps"] = c.norm_eps;
  j["drop_path_rate"] = c.drop_path_rate;
  return j;
}

ConvNextConfig convnext_from_json(const Json& j, const std::string& what) {
  MGM_CHECK_FORMAT(j.is_object(), what, "mm_vision_aux_config must be an object");
  ConvNextConfig c;
  if (j.contains("timm_model_name"))
    c = ConvNextConfig::from_name(json_string(j, "timm_model_name", what));
  if (j.contains("depths")) c.depths = int_list(j, "depths", what);
  if (j.contains("dims")) c.dims = int_list(j, "dims", what);
  c.in_chans = json_int_or(j, "in_chans", c.in_chans, what);
  c.patch_size = json_int_or(j, "patch_size", c.patch_size, what);
  c.norm_eps = json_double_or(j, "norm_eps", c.norm_eps, what);
  c.drop_path_rate = json_double_or(j, "drop_path_rate", c.drop_path_rate, what);
  c.validate(what);
  return c;
}

std::string resolve_path(const std::string& p, const std::string& dir_of_file) {
  if (p.empty() || fs::path(p).is_absolute() || dir_of_file.empty()) return p;
  const fs::path rel = fs::path(dir_of_file) / p;
  return fs::exists(rel) ? rel.string() : p;
}

void init_linear(vision::Dense& d) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(d->weight.size(1)));
  d->weight.uniform_(-bound, bound);
  if (d->bias.defined()) d->bias.uniform_(-bound, bound);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Config

MgmConfig MgmConfig::mgm_2b() {
  MgmConfig c;
  c.gemma = GemmaConfig::gemma_2b();
  return c;
}

MgmConfig MgmConfig::from_json(const Json& j, const std::string& what,
                               const std::string& dir_of_file) {
  MgmConfig c;
  c.gemma = GemmaConfig::from_json(j, what);
  c.mm_vision_tower = json_string_or(j, "mm_vision_tower", c.mm_vision_tower, what);
  c.mm_vision_tower_aux = json_string_or(j, "mm_vision_tower_aux", c.mm_vision_tower_aux, what);
  // Tower shapes: this project's embedded sections, else the folders the reference loads.
  if (auto it = j.find("mm_vision_config"); it != j.end() && !it->is_null()) {
    c.clip = ClipVisionConfig::from_json(*it, what + " (mm_vision_config)");
  } else {
    const std::string p = resolve_path(c.mm_vision_tower, dir_of_file);
    if (fs::exists(fs::path(p) / "config.json"))
      c.clip = ClipVisionConfig::from_file(p);
    else
      MGM_CHECK_FORMAT(c.mm_vision_tower.find("clip-vit-large-patch14-336") != std::string::npos,
                       what, "no mm_vision_config and mm_vision_tower '", c.mm_vision_tower,
                       "' is neither a folder with config.json nor clip-vit-large-patch14-336");
  }
  if (auto it = j.find("mm_vision_aux_config"); it != j.end() && !it->is_null()) {
    c.convnext = convnext_from_json(*it, what + " (mm_vision_aux_config)");
  } else {
    const std::string p = resolve_path(c.mm_vision_tower_aux, dir_of_file);
    if (fs::exists(fs::path(p) / "open_clip_config.json"))
      c.convnext = ConvNextConfig::from_open_clip_config(p);
    else
      c.convnext = ConvNextConfig::from_name(base_name(c.mm_vision_tower_aux));
  }
  c.mm_hidden_size = json_int_or(j, "mm_hidden_size", c.clip.hidden_size, what);
  c.mm_hidden_size_aux = json_int_or(j, "mm_hidden_size_aux", c.convnext.feature_channels(), what);
  c.mm_projector_type = json_string_or(j, "mm_projector_type", c.mm_projector_type, what);
  c.mm_vision_select_layer = json_int_or(j, "mm_vision_select_layer", c.mm_vision_select_layer, what);
  c.mm_vision_select_feature =
      json_string_or(j, "mm_vision_select_feature", c.mm_vision_select_feature, what);
  c.image_size_aux = json_int_or(j, "image_size_aux", c.image_size_aux, what);
  c.image_aspect_ratio = json_string_or(j, "image_aspect_ratio", c.image_aspect_ratio, what);
  c.image_grid = json_int_or(j, "image_grid", c.image_grid, what);
  c.image_global = json_bool_or(j, "image_global", c.image_global, what);
  c.tokenizer_model_max_length =
      json_int_or(j, "tokenizer_model_max_length", c.tokenizer_model_max_length, what);
  c.tokenizer_padding_side = json_string_or(j, "tokenizer_padding_side", c.tokenizer_padding_side, what);
  c.tune_mm_mlp_adapter = json_bool_or(j, "tune_mm_mlp_adapter", c.tune_mm_mlp_adapter, what);
  c.freeze_mm_mlp_adapter = json_bool_or(j, "freeze_mm_mlp_adapter", c.freeze_mm_mlp_adapter, what);
  c.mm_use_im_start_end = json_bool_or(j, "mm_use_im_start_end", c.mm_use_im_start_end, what);
  c.mm_use_im_patch_token = json_bool_or(j, "mm_use_im_patch_token", c.mm_use_im_patch_token, what);
  c.optimize_vision_tower = json_bool_or(j, "optimize_vision_tower", c.optimize_vision_tower, what);
  c.optimize_vision_tower_aux =
      json_bool_or(j, "optimize_vision_tower_aux", c.optimize_vision_tower_aux, what);
  c.validate(what);
  return c;
}

MgmConfig MgmConfig::from_file(const std::string& path) {
  std::string file = path, dir = path;
  if (fs::is_directory(path))
    file = (fs::path(path) / "config.json").string();
  else
    dir = parent_dir(path);
  return from_json(read_json_file(file), file, dir);
}

Json MgmConfig::to_json() const {
  Json j = gemma.to_json();
  j["architectures"] = Json::array({"MGMGemmaForCausalLM"});
  j["model_type"] = "mgm_gemma";
  j["mm_vision_tower"] = mm_vision_tower;
  j["mm_vision_tower_aux"] = mm_vision_tower_aux;
  j["mm_hidden_size"] = mm_hidden_size;
  j["mm_hidden_size_aux"] = mm_hidden_size_aux;
  j["mm_projector_type"] = mm_projector_type;
  j["mm_vision_select_layer"] = mm_vision_select_layer;
  j["mm_vision_select_feature"] = mm_vision_select_feature;
  j["use_mm_proj"] = true;
  j["image_aspect_ratio"] = image_aspect_ratio;
  j["image_grid"] = image_grid;
  j["image_global"] = image_global;
  j["image_grid_pinpoints"] = nullptr;
  j["image_size_aux"] = image_size_aux;
  j["optimize_vision_tower"] = optimize_vision_tower;
  j["optimize_vision_tower_aux"] = optimize_vision_tower_aux;
  j["tokenizer_padding_side"] = tokenizer_padding_side;
  j["tokenizer_model_max_length"] = tokenizer_model_max_length;
  j["tune_mm_mlp_adapter"] = tune_mm_mlp_adapter;
  j["freeze_mm_mlp_adapter"] = freeze_mm_mlp_adapter;
  j["mm_use_im_start_end"] = mm_use_im_start_end;
  j["mm_use_im_patch_token"] = mm_use_im_patch_token;
  j["mm_projector_lr"] = nullptr;
  // This project's additions (the Python toolkit keeps unknown keys as plain attributes).
  j["mm_vision_config"] = clip_to_json(clip);
  j["mm_vision_aux_config"] = convnext_to_json(convnext);
  return j;
}

void MgmConfig::validate(const std::string& what) const {
  gemma.validate(what);
  clip.validate(what + " (CLIP)");
  convnext.validate(what + " (ConvNeXt)");
  MGM_CHECK_FORMAT(mm_hidden_size == clip.hidden_size, what, "mm_hidden_size ", mm_hidden_size,
                   " differs from the CLIP hidden size ", clip.hidden_size);
  MGM_CHECK_FORMAT(mm_hidden_size_aux == convnext.feature_channels(), what, "mm_hidden_size_aux ",
                   mm_hidden_size_aux, " differs from the ConvNeXt feature channels ",
                   convnext.feature_channels());
  MGM_CHECK_FORMAT(projector_depth(mm_projector_type) > 0, what, "mm_projector_type '",
                   mm_projector_type, "' is not supported (linear or mlp<N>x_gelu)");
  MGM_CHECK_FORMAT(mm_vision_select_feature == "patch", what, "mm_vision_select_feature '",
                   mm_vision_select_feature, "' is not supported (patch)");
  MGM_CHECK_FORMAT(image_grid == 1 && !image_global, what,
                   "only image_grid 1 without image_global is supported (MGM-2B)");
  MGM_CHECK_FORMAT(image_size_aux > 0 && image_size_aux % (convnext.patch_size * 8) == 0, what,
                   "image_size_aux ", image_size_aux, " must be a multiple of ",
                   convnext.patch_size * 8, " (the ConvNeXt strides)");
  MGM_CHECK_FORMAT(hr_map() % lr_grid() == 0, what, "the HR map (", hr_map(),
                   " = image_size_aux / ", convnext.patch_size,
                   ") does not divide into the LR grid (", lr_grid(), ")");
}

MgmParameterCounts mgm_parameter_counts(const MgmConfig& c) {
  MgmParameterCounts n;
  n.gemma = c.gemma.num_parameters();
  n.clip = clip_vision_parameter_count(c.clip, /*used_only=*/false);
  n.convnext = convnext_parameter_count(c.convnext);
  const int64_t lr = c.mm_hidden_size, hr = c.mm_hidden_size_aux;
  n.query = 2 * lr + lr * lr + lr;
  n.aux = 2 * hr + hr * lr + lr;
  n.val = n.aux;
  const int64_t depth = projector_depth(c.mm_projector_type), h = c.gemma.hidden_size;
  n.projector = (lr * h + h) + (depth - 1) * (h * h + h);
  return n;
}

// ---------------------------------------------------------------------------------------------
// Modules

at::Tensor GeluImpl::forward(const at::Tensor& x) { return at::gelu(x); }

MgmProjectorImpl::MgmProjectorImpl(const std::string& type, int64_t in, int64_t out,
                                   const at::TensorOptions& o) {
  const int64_t depth = projector_depth(type);
  MGM_CHECK(depth > 0, "mm_projector_type '", type, "' is not supported");
  linears.push_back(register_module("0", vision::Dense(in, out, true, o)));
  for (int64_t i = 1; i < depth; ++i) {
    register_module(std::to_string(2 * i - 1), Gelu());
    linears.push_back(register_module(std::to_string(2 * i), vision::Dense(out, out, true, o)));
  }
}

at::Tensor MgmProjectorImpl::forward(const at::Tensor& x) {
  at::Tensor h = linears[0]->forward(x);
  for (size_t i = 1; i < linears.size(); ++i) h = linears[i]->forward(at::gelu(h));
  return h;
}

MgmNormLinearImpl::MgmNormLinearImpl(int64_t in, int64_t out, const at::TensorOptions& o) {
  norm = register_module("0", vision::LayerNorm(in, 1e-5, o));
  linear = register_module("1", vision::Dense(in, out, true, o));
}

at::Tensor MgmNormLinearImpl::forward(const at::Tensor& x) {
  return linear->forward(norm->forward(x));
}

at::Tensor patch_info_mining(const at::Tensor& lr, const at::Tensor& hr, MgmNormLinear& query,
                             MgmNormLinear& aux, MgmNormLinear& val) {
  MGM_CHECK(lr.dim() == 3 && hr.dim() == 4 && lr.size(0) == hr.size(0),
            "patch info mining: expected LR [B,N,C] and HR [B,C,H,W], found ", lr.sizes(), " and ",
            hr.sizes());
  const int64_t B = lr.size(0), N = lr.size(1), C = hr.size(1);
  const int64_t g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(N))));
  MGM_CHECK(g * g == N, "patch info mining: ", N, " LR tokens are not a square grid");
  const int64_t H = hr.size(2);
  MGM_CHECK(hr.size(3) == H && H % g == 0, "patch info mining: HR map ", hr.sizes(),
            " does not divide into the ", g, "x", g, " LR grid");
  const int64_t ps = H / g;
  // [B,C,H,W] -> [B, g, ps, g, ps, C] -> cells [B, N, ps*ps, C]; cell n = row*g + col as CLIP's
  // patch order, key m = y*ps + x.
  const at::Tensor a = hr.permute({0, 2, 3, 1})
                           .reshape({B, g, ps, g, ps, C})
                           .permute({0, 1, 3, 2, 4, 5})
                           .reshape({B, N, ps * ps, C});
  const at::Tensor q = query->forward(lr);  // [B,N,D]
  const at::Tensor k = aux->forward(a);     // [B,N,P,D]
  const at::Tensor v = val->forward(a);
  const double scale = std::sqrt(static_cast<double>(lr.size(-1)));
  at::Tensor att = q.unsqueeze(2).matmul(k.transpose(-1, -2) / scale);  // [B,N,1,P]
  att = att.nan_to_num();
  return att.softmax(-1).matmul(v).mean(2);  // [B,N,D]
}

MgmForCausalLMImpl::MgmForCausalLMImpl(const MgmConfig& cfg, const MgmBuildOptions& opts)
    : cfg_(cfg) {
  cfg_.validate("MgmConfig");
  const auto topts = at::TensorOptions().dtype(opts.dtype).device(opts.device);
  llm = GemmaForCausalLM(cfg_.gemma, /*init_weights=*/false);
  if (opts.dtype != at::kFloat || opts.device != at::Device(at::kCPU)) llm->to_empty(topts);

  // "model": GemmaModel's children plus MGM's, as MGMGemmaModel holds them.
  model_holder = std::make_shared<torch::nn::Module>("MGMGemmaModel");
  for (const auto& child : llm->model->named_children())
    model_holder->register_module(child.key(), child.value());

  ClipVisionOptions co;
  co.select_layer = cfg_.mm_vision_select_layer;
  co.select_feature = cfg_.mm_vision_select_feature;
  co.tensor_options = topts;
  vision_tower = ClipVisionModel(cfg_.clip, co);
  vision_tower_holder = std::make_shared<torch::nn::Module>("CLIPVisionTower");
  vision_tower_holder->register_module("vision_tower", vision_tower);
  model_holder->register_module("vision_tower", vision_tower_holder);

  ConvNextOptions xo;
  xo.naming = ConvNextNaming::kMgm;
  xo.stochastic_depth = opts.stochastic_depth;
  xo.tensor_options = topts;
  vision_tower_aux = ConvNext(cfg_.convnext, xo);
  model_holder->register_module("vision_tower_aux", vision_tower_aux);

  mm_projector =
      MgmProjector(cfg_.mm_projector_type, cfg_.mm_hidden_size, cfg_.gemma.hidden_size, topts);
  model_holder->register_module("mm_projector", mm_projector);
  const int64_t lr = cfg_.mm_hidden_size, hr = cfg_.mm_hidden_size_aux;
  vlm_uni_query_projector = MgmNormLinear(lr, lr, topts);
  vlm_uni_aux_projector = MgmNormLinear(hr, lr, topts);
  vlm_uni_val_projector = MgmNormLinear(hr, lr, topts);
  model_holder->register_module("vlm_uni_query_projector", vlm_uni_query_projector);
  model_holder->register_module("vlm_uni_aux_projector", vlm_uni_aux_projector);
  model_holder->register_module("vlm_uni_val_projector", vlm_uni_val_projector);

  register_module("model", model_holder);
  if (llm->lm_head) register_module("lm_head", llm->lm_head);

  if (opts.init_weights) {
    llm->reset_parameters();
    reset_tower_parameters();
    reset_mgm_parameters();
  }
  // Towers are frozen in every stage; the rest trains by default (set_trainable narrows it).
  for (auto& p : vision_tower->parameters()) p.set_requires_grad(false);
  for (auto& p : vision_tower_aux->parameters()) p.set_requires_grad(false);
}

void MgmForCausalLMImpl::reset_mgm_parameters() {
  at::NoGradGuard no_grad;
  for (MgmNormLinear* m :
       {&vlm_uni_query_projector, &vlm_uni_aux_projector, &vlm_uni_val_projector}) {
    (*m)->norm->weight.fill_(1.0);
    (*m)->norm->bias.zero_();
    init_linear((*m)->linear);
  }
  for (auto& d : mm_projector->linears) init_linear(d);
}

void MgmForCausalLMImpl::reset_tower_parameters() {
  at::NoGradGuard no_grad;
  auto init = [](torch::nn::Module& m) {
    for (auto& p : m.named_parameters(true)) {
      const std::string& n = p.key();
      at::Tensor t = p.value();
      const bool is_norm =
          n.find("norm") != std::string::npos || n.find("layrnorm") != std::string::npos;
      if (ends_with(n, "bias"))
        t.zero_();
      else if (ends_with(n, "gamma"))
        t.fill_(1e-6);
      else if (is_norm && t.dim() == 1)
        t.fill_(1.0);
      else
        t.normal_(0.0, 0.02);
    }
  };
  init(*vision_tower);
  init(*vision_tower_aux);
}

void MgmForCausalLMImpl::set_trainable(MgmStage stage) {
  for (auto& p : parameters(true)) p.set_requires_grad(false);
  for (torch::nn::Module* m : std::initializer_list<torch::nn::Module*>{
           mm_projector.get(), vlm_uni_query_projector.get(), vlm_uni_aux_projector.get(),
           vlm_uni_val_projector.get()})
    for (auto& p : m->parameters(true)) p.set_requires_grad(true);
  if (stage == MgmStage::kFinetune)
    for (auto& p : llm->parameters(true)) p.set_requires_grad(true);
}

at::Tensor MgmForCausalLMImpl::encode_images(const at::Tensor& images,
                                             const at::Tensor& images_aux) {
  MGM_CHECK(images.dim() == 4 && images_aux.dim() == 4 && images.size(0) == images_aux.size(0),
            "encode_images: expected images [B,3,", cfg_.clip.image_size, ",", cfg_.clip.image_size,
            "] and images_aux [B,3,", cfg_.image_size_aux, ",", cfg_.image_size_aux, "], found ",
            images.sizes(), " and ", images_aux.sizes());
  MGM_CHECK(
      images.size(2) == cfg_.clip.image_size && images.size(3) == cfg_.clip.image_size &&
          images_aux.size(2) == cfg_.image_size_aux && images_aux.size(3) == cfg_.image_size_aux,
      "encode_images: images ", images.sizes(), " / images_aux ", images_aux.sizes(),
      " do not match the config (", cfg_.clip.image_size, " and ", cfg_.image_size_aux, " px)");
  at::Tensor lr, hr;
  {
    // Frozen towers: no autograd graph (they feed the trainable modules only as constants).
    at::NoGradGuard no_grad;
    const auto dev = vision_tower->vision_model->pre_layrnorm->weight.device();
    lr = vision_tower->forward(images.to(dev));
    hr = vision_tower_aux->forward(images_aux.to(dev));
  }
  const auto dtype = vlm_uni_query_projector->linear->weight.scalar_type();
  lr = lr.to(dtype);
  hr = hr.to(dtype);
  const at::Tensor mined = patch_info_mining(lr, hr, vlm_uni_query_projector, vlm_uni_aux_projector,
                                             vlm_uni_val_projector);
  return mm_projector->forward(lr + mined);
}

MgmForCausalLMImpl::Prepared MgmForCausalLMImpl::prepare_inputs(const at::Tensor& input_ids,
                                                                const at::Tensor& labels,
                                                                const at::Tensor& attention_mask,
                                                                const at::Tensor& image_features) {
  MGM_CHECK(input_ids.dim() == 2, "prepare_inputs: input_ids must be [B, L], found ",
            input_ids.sizes());
  const int64_t B = input_ids.size(0), L = input_ids.size(1);
  const at::Tensor ids = input_ids.to(at::kCPU).to(at::kLong).contiguous();
  at::Tensor mask = attention_mask.defined()
                        ? attention_mask.to(at::kCPU).ne(0).contiguous()
                        : at::ones({B, L}, at::TensorOptions().dtype(at::kBool));
  MGM_CHECK(mask.sizes() == ids.sizes(), "prepare_inputs: attention_mask ", mask.sizes(),
            " differs from input_ids ", ids.sizes());
  at::Tensor lab = labels.defined() ? labels.to(at::kCPU).to(at::kLong).contiguous()
                                    : at::full({B, L}, kIgnoreIndex, at::kLong);
  MGM_CHECK(lab.sizes() == ids.sizes(), "prepare_inputs: labels ", lab.sizes(),
            " differ from input_ids ", ids.sizes());
  const auto* idp = ids.data_ptr<int64_t>();
  const auto* mp = mask.data_ptr<bool>();

  // Image slots: one per marker, or one per sample (the collator's placeholder for text-only).
  std::vector<int64_t> markers(B, 0);
  int64_t sum_k = 0, sum_slots = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < L; ++t)
      if (mp[b * L + t] && idp[b * L + t] == kImageTokenIndex) ++markers[b];
    sum_k += markers[b];
    sum_slots += std::max<int64_t>(1, markers[b]);
  }
  const int64_t n_feat = image_features.defined() ? image_features.size(0) : 0;
  bool placeholders = false;
  if (n_feat != sum_k) {
    MGM_CHECK(
        n_feat == sum_slots, "prepare_inputs: ", sum_k, " image markers (-200) in the batch",
        sum_k == sum_slots ? "" : str_cat(" (", sum_slots, " slots counting text-only samples)"),
        " but ", n_feat, " images");
    placeholders = true;
  }

  const auto dev = llm->model->embed_tokens->weight.device();
  const int64_t max_len = cfg_.tokenizer_model_max_length;
  // Every text token of the batch is embedded in one lookup after one host-to-device copy (a
  // copy per text piece would wait for the GPU each time); samples are then spliced from
  // slices of it and the image features.
  struct Segment {
    int64_t text_begin = 0, text_len = 0;  // into all_ids, or
    int64_t image = -1;                    // an image feature index
  };
  std::vector<std::vector<Segment>> segments(B);
  std::vector<int64_t> all_ids;
  std::vector<at::Tensor> labs;
  int64_t img = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> sample_labels;
    const auto* lp = lab.data_ptr<int64_t>() + b * L;
    for (int64_t t = 0; t < L; ++t) {
      if (!mp[b * L + t]) continue;
      const int64_t id = idp[b * L + t];
      if (id == kImageTokenIndex) {
        const int64_t n = image_features[img].size(0);
        segments[b].push_back({0, 0, img++});
        sample_labels.insert(sample_labels.end(), static_cast<size_t>(n), kIgnoreIndex);
      } else {
        if (segments[b].empty() || segments[b].back().image >= 0)
          segments[b].push_back({static_cast<int64_t>(all_ids.size()), 0, -1});
        all_ids.push_back(id);
        ++segments[b].back().text_len;
        sample_labels.push_back(lp[t]);
      }
    }
    if (markers[b] == 0 && placeholders) ++img;  // the unused zero image of a text-only sample
    labs.push_back(at::tensor(sample_labels, at::kLong));
  }
  auto to_device = [&dev](at::Tensor t) {
    if (!dev.is_cuda()) return t;
    return t.pin_memory().to(dev, /*non_blocking=*/true);
  };
  const at::Tensor all_emb =
      llm->embed(to_device(at::tensor(all_ids, at::kLong)));  // [text tokens, hidden]
  std::vector<at::Tensor> embeds;
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<at::Tensor> e;
    for (const Segment& s : segments[b])
      e.push_back(s.image >= 0 ? image_features[s.image].to(dev)
                               : all_emb.narrow(0, s.text_begin, s.text_len));
    at::Tensor se = e.empty() ? at::zeros({0, cfg_.gemma.hidden_size},
                                          llm->model->embed_tokens->weight.options())
                              : at::cat(e, 0);
    at::Tensor sl = labs[b];
    if (max_len > 0 && se.size(0) > max_len) {
      se = se.slice(0, 0, max_len);
      sl = sl.slice(0, 0, max_len);
    }
    longest = std::max(longest, se.size(0));
    embeds.push_back(se);
    labs[b] = sl;
  }
  // Right padding with zero embeddings, -100 labels, mask false.
  Prepared out;
  std::vector<at::Tensor> pe, pl, pm;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = embeds[b].size(0), pad = longest - n;
    at::Tensor e = embeds[b];
    if (e.scalar_type() != llm->model->embed_tokens->weight.scalar_type())
      e = e.to(llm->model->embed_tokens->weight.scalar_type());
    if (pad > 0) e = at::cat({e, at::zeros({pad, e.size(1)}, e.options())}, 0);
    pe.push_back(e);
    pl.push_back(at::cat({labs[b], at::full({pad}, kIgnoreIndex, at::kLong)}, 0));
    pm.push_back(at::cat({at::ones({n}, at::kBool), at::zeros({pad}, at::kBool)}, 0));
  }
  out.inputs_embeds = at::stack(pe, 0);
  out.attention_mask = to_device(at::stack(pm, 0));
  if (labels.defined()) out.labels = to_device(at::stack(pl, 0));
  return out;
}

MgmForCausalLMImpl::Output MgmForCausalLMImpl::forward(
    const at::Tensor& input_ids, const at::Tensor& labels, const at::Tensor& attention_mask,
    const at::Tensor& images, const at::Tensor& images_aux, PaddingMode padding) {
  at::Tensor features;
  if (images.defined()) {
    MGM_CHECK(images_aux.defined(), "MGM forward: images given without images_aux");
    features = encode_images(images, images_aux);
  }
  Prepared p = prepare_inputs(input_ids, labels, attention_mask, features);
  GemmaForwardOptions o;
  o.attention_mask = p.attention_mask;
  o.padding = padding;
  Output out;
  out.logits = llm->forward(p.inputs_embeds, o);
  out.labels = p.labels;
  out.attention_mask = p.attention_mask;
  if (p.labels.defined()) out.loss = causal_lm_loss(out.logits, p.labels);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Loading and saving

namespace {

// Checkpoint keys the reference's loader ignores without complaint:
//  - lm_head.weight of a tied model (transformers drops/ties it);
//  - model.layers.*.self_attn.rotary_emb.inv_freq (older transformers persisted it);
//  - model.vision_tower.vision_tower.vision_model.embeddings.position_ids (old CLIP buffer);
//  - model.vision_fpn.*, model.vlm_att_*, model.vision_resampler.* (modules of other MGM
//    variants that MGM-2B does not build).
bool ignored_checkpoint_key(const std::string& n, bool tied) {
  if (tied && n == "lm_head.weight") return true;
  if (ends_with(n, "rotary_emb.inv_freq")) return true;
  if (ends_with(n, "embeddings.position_ids")) return true;
  return starts_with(n, "model.vision_fpn") || starts_with(n, "model.vlm_att") ||
         starts_with(n, "model.vision_resampler");
}

}  // namespace

MgmForCausalLM load_mgm_checkpoint(const std::string& dir, const MgmBuildOptions& opts) {
  return load_mgm_checkpoint(MgmConfig::from_file(dir), dir, opts);
}

MgmForCausalLM load_mgm_checkpoint(const MgmConfig& cfg, const std::string& dir,
                                   const MgmBuildOptions& opts) {
  MgmBuildOptions o = opts;
  o.init_weights = false;
  MgmForCausalLM m(cfg, o);
  const io::TensorStore store = io::TensorStore::open(dir);
  LoadOptions lo;
  const bool tied = cfg.gemma.tie_word_embeddings;
  lo.ignore_unexpected = [tied](const std::string& n) { return ignored_checkpoint_key(n, tied); };
  LoadReport rep = load_module(*m, store, lo, /*report_only=*/true);
  if (!rep.ok() || !rep.unexpected.empty())
    throw Error(str_cat(dir, ": cannot load the MGM checkpoint: ", rep.describe()));
  log::info(dir, ": MGM loaded (", rep.loaded.size(), " tensors; Gemma activation ",
            cfg.gemma.hidden_act, ", ", cfg.gemma.activation_reason, ")");
  return m;
}

LoadReport load_pretrain_adapter(MgmForCausalLM& model, const io::TensorStore& store) {
  LoadReport all;
  auto merge = [&all](const LoadReport& r) {
    all.loaded.insert(all.loaded.end(), r.loaded.begin(), r.loaded.end());
    all.missing.insert(all.missing.end(), r.missing.begin(), r.missing.end());
    all.mismatched.insert(all.mismatched.end(), r.mismatched.begin(), r.mismatched.end());
  };
  // 1. mm_projector: every key containing "mm_projector." with that prefix stripped, loaded
  //    non-strict (missing keys stay as they are, as load_state_dict(strict=False)).
  std::string proj_prefix;
  for (const auto& n : store.names()) {
    const size_t pos = n.find("mm_projector.");
    if (pos != std::string::npos) {
      proj_prefix = n.substr(0, pos + std::string("mm_projector.").size());
      break;
    }
  }
  MGM_CHECK(!proj_prefix.empty(), store.source(), ": no mm_projector.* tensors");
  LoadOptions lo;
  lo.src_prefix = proj_prefix;
  LoadReport r = load_module(*model->mm_projector, store, lo, /*report_only=*/true);
  if (!r.mismatched.empty()) throw Error(str_cat(store.source(), ": mm_projector: ", r.describe()));
  if (!r.missing.empty())
    log::warn(store.source(),
              ": mm_projector tensors missing (kept as initialised): ", join(r.missing, ", "));
  r.missing.clear();
  merge(r);
  // 2. CLIP, strict; ConvNeXt is not taken from the .bin (optimize_vision_tower_aux is false:
  //    the tower stays as loaded from its open_clip file).
  {
    LoadOptions c;
    c.src_prefix = "model.vision_tower.vision_tower.";
    c.ignore_unexpected = [](const std::string& n) { return ends_with(n, "position_ids"); };
    merge(load_module(*model->vision_tower, store, c));
  }
  // 3. The three vlm_uni_* projectors, strict.
  const std::pair<const char*, MgmNormLinear*> uni[] = {
      {"model.vlm_uni_query_projector.", &model->vlm_uni_query_projector},
      {"model.vlm_uni_aux_projector.", &model->vlm_uni_aux_projector},
      {"model.vlm_uni_val_projector.", &model->vlm_uni_val_projector}};
  for (const auto& [prefix, mod] : uni) {
    LoadOptions u;
    u.src_prefix = prefix;
    merge(load_module(**mod, store, u));
  }
  return all;
}

MgmForCausalLM load_mgm_from_parts(const MgmConfig& cfg, const MgmSources& src,
                                   const MgmBuildOptions& opts) {
  MgmBuildOptions o = opts;
  o.init_weights = false;
  MgmForCausalLM m(cfg, o);
  m->reset_mgm_parameters();
  load_gemma_weights(m->llm, io::TensorStore::open(src.gemma_dir));
  m->vision_tower->load(io::TensorStore::open(src.clip_dir));
  m->vision_tower_aux->load(
      io::TensorStore::open((fs::path(src.convnext_dir) / "open_clip_pytorch_model.bin").string()),
      "visual.trunk.", ConvNextNaming::kTimm);
  if (!src.pretrain_mm_mlp_adapter.empty())
    load_pretrain_adapter(m, io::TensorStore::open(src.pretrain_mm_mlp_adapter));
  return m;
}

void save_mgm_checkpoint(MgmForCausalLM& model, const std::string& dir, uint64_t max_shard_size) {
  make_dirs(dir);
  Json j = model->config().to_json();
  const auto dt = model->llm->model->embed_tokens->weight.scalar_type();
  j["torch_dtype"] = io::hf_torch_dtype(dt);
  write_json_file((fs::path(dir) / "config.json").string(), j);
  io::ShardedSafetensorsWriter w(dir, max_shard_size);
  for (const auto& [name, t] : module_tensors(*model, "", /*include_buffers=*/false))
    w.add(name, t.detach().to(at::kCPU).contiguous());
  w.finish();
}

io::NamedTensors mm_projector_tensors(MgmForCausalLM& model) {
  // The reference's substring filter over named_parameters(); 'vision_tower' also matches
  // 'vision_tower_aux', so both frozen towers are included.
  static const char* kKeys[] = {"mm_projector", "vision_resampler", "vlm_uni",
                                "vision_tower", "vision_fpn",       "vision_stages"};
  io::NamedTensors out;
  for (const auto& p : model->named_parameters(true)) {
    for (const char* k : kKeys) {
      if (p.key().find(k) != std::string::npos) {
        out.emplace_back(p.key(), p.value().detach().to(at::kCPU).contiguous());
        break;
      }
    }
  }
  return out;
}

void save_mm_projector_bin(MgmForCausalLM& model, const std::string& path) {
  io::save_torch_zip(path, mm_projector_tensors(model));
}

// ---------------------------------------------------------------------------------------------
// mgm logits

namespace {

at::Tensor optional_tensor(const io::TensorStore& s, const char* name) {
  return s.contains(name) ? s.get(name) : at::Tensor();
}

}  // namespace

void compute_logits(const std::string& model_dir, const std::string& inputs,
                    const std::string& output, const LogitsOptions& opts) {
  MgmBuildOptions bo;
  bo.dtype = io::parse_float_dtype(opts.dtype);
  MGM_CHECK(opts.device == "cpu" || opts.device == "cuda", "--device: expected cpu or cuda, got '",
            opts.device, "'");
  bo.device = opts.device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  MgmForCausalLM m = load_mgm_checkpoint(model_dir, bo);
  m->eval();
  const io::TensorStore in = io::TensorStore::open(inputs);
  MGM_CHECK(in.contains("input_ids"), inputs, ": no tensor 'input_ids'");
  const at::Tensor ids = in.get("input_ids").to(at::kLong);
  at::Tensor images = optional_tensor(in, "images"), aux = optional_tensor(in, "images_aux");
  if (images.defined()) images = images.to(bo.device, bo.dtype);
  if (aux.defined()) aux = aux.to(bo.device, bo.dtype);
  at::NoGradGuard no_grad;
  const auto out = m->forward(ids.to(bo.device), optional_tensor(in, "labels"),
                              optional_tensor(in, "attention_mask"), images, aux,
                              opts.masked ? PaddingMode::kMasked : PaddingMode::kRightPaddedCausal);
  io::NamedTensors t;
  t.emplace_back("logits", out.logits.to(at::kFloat).to(at::kCPU).contiguous());
  t.emplace_back("attention_mask", out.attention_mask.to(at::kLong).to(at::kCPU).contiguous());
  if (out.loss.defined()) {
    t.emplace_back("loss", out.loss.to(at::kFloat).to(at::kCPU).contiguous());
    t.emplace_back("labels", out.labels.to(at::kCPU).contiguous());
  }
  io::save_safetensors(output, t);
}

std::vector<cli::Command> logits_commands() {
  std::vector<cli::Command> cmds;
  cmds.push_back({"logits", "", "MGM logits (and loss) of a batch of inputs",
                  [](const std::vector<std::string>& args) {
                    cli::ArgParser p(
                        "mgm logits",
                        "Runs an MGM checkpoint on IN.safetensors (input_ids with -200 "
                        "image markers; optional attention_mask, labels, images, "
                        "images_aux) and writes logits (and loss) to OUT.");
                    p.flag("model_dir", cli::Kind::kString, "", "MGM checkpoint folder", true);
                    p.flag("inputs", cli::Kind::kString, "", "input safetensors file", true);
                    p.flag("output", cli::Kind::kString, "", "output safetensors file", true);
                    p.flag("dtype", cli::Kind::kString, "fp32", "fp32, bf16 or fp16");
                    p.flag("device", cli::Kind::kString, "cpu", "cpu or cuda");
                    if (!p.parse(args)) {
                      std::printf("%s", p.help().c_str());
                      return 0;
                    }
                    LogitsOptions o;
                    o.dtype = p.str("dtype");
                    o.device = p.str("device");
                    compute_logits(p.str("model_dir"), p.str("inputs"), p.str("output"), o);
                    return 0;
                  }});
  return cmds;
}

}  // namespace mgm::models
