#include "models/clip.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/sigmoid.h>
#include <c10/core/GradMode.h>

#include <filesystem>

#include "common/error.h"
#include "common/strings.h"
#include "models/checkpointing.h"
#include "models/module_utils.h"

namespace mgm::models {

void ClipVisionConfig::validate(const std::string& what) const {
  MGM_CHECK(hidden_size > 0 && intermediate_size > 0 && num_hidden_layers > 0 &&
                num_attention_heads > 0 && num_channels > 0 && image_size > 0 && patch_size > 0,
            what, ": CLIP vision sizes must be positive");
  MGM_CHECK(hidden_size % num_attention_heads == 0, what, ": hidden_size ", hidden_size,
            " is not divisible by num_attention_heads ", num_attention_heads);
  MGM_CHECK(image_size % patch_size == 0, what, ": image_size ", image_size,
            " is not a multiple of patch_size ", patch_size);
  MGM_CHECK(hidden_act == "quick_gelu" || hidden_act == "gelu", what, ": hidden_act \"", hidden_act,
            "\" is not supported (quick_gelu, gelu)");
}

ClipVisionConfig ClipVisionConfig::from_json(const Json& root, const std::string& what) {
  MGM_CHECK(root.is_object(), what, ": a CLIP config must be a JSON object");
  // A CLIPModel config nests the tower's fields; a CLIPVisionConfig has them at the top.
  const bool nested = root.contains("vision_config");
  const Json& j = nested ? root.at("vision_config") : root;
  const std::string w = nested ? what + " (vision_config)" : what;
  MGM_CHECK(j.is_object(), w, ": must be a JSON object");
  ClipVisionConfig c;
  c.hidden_size = json_int_or(j, "hidden_size", c.hidden_size, w);
  c.intermediate_size = json_int_or(j, "intermediate_size", c.intermediate_size, w);
  c.num_hidden_layers = json_int_or(j, "num_hidden_layers", c.num_hidden_layers, w);
  c.num_attention_heads = json_int_or(j, "num_attention_heads", c.num_attention_heads, w);
  c.num_channels = json_int_or(j, "num_channels", c.num_channels, w);
  c.image_size = json_int_or(j, "image_size", c.image_size, w);
  c.patch_size = json_int_or(j, "patch_size", c.patch_size, w);
  c.layer_norm_eps = json_double_or(j, "layer_norm_eps", c.layer_norm_eps, w);
  if (j.contains("hidden_act")) {
    MGM_CHECK(j.at("hidden_act").is_string(), w, ": \"hidden_act\" must be a string");
    c.hidden_act = j.at("hidden_act").get<std::string>();
  }
  c.validate(w);
  return c;
}

ClipVisionConfig ClipVisionConfig::from_file(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path))
    file = (std::filesystem::path(path) / "config.json").string();
  return from_json(read_json_file(file), file);
}

ClipVisionConfig ClipVisionConfig::vit_large_patch14_336() {
  ClipVisionConfig c;
  c.hidden_size = 1024;
  c.intermediate_size = 4096;
  c.num_hidden_layers = 24;
  c.num_attention_heads = 16;
  c.image_size = 336;
  c.patch_size = 14;
  c.layer_norm_eps = 1e-5;
  c.hidden_act = "quick_gelu";
  return c;
}

namespace {

// hidden_states index named by select_layer (hidden_states has num_hidden_layers + 1 entries).
int64_t resolve_select_layer(const ClipVisionConfig& cfg, int64_t select_layer) {
  const int64_t n = cfg.num_hidden_layers + 1;
  const int64_t idx = select_layer < 0 ? n + select_layer : select_layer;
  MGM_CHECK(idx >= 0 && idx < n, "CLIP select_layer ", select_layer, " is out of range for ",
            cfg.num_hidden_layers, " layers (valid: ", -n, "..", n - 1, ")");
  return idx;
}

}  // namespace

int64_t clip_vision_parameter_count(const ClipVisionConfig& c, bool used_only,
                                    int64_t select_layer) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const int64_t embeddings =
      d + d * c.num_channels * c.patch_size * c.patch_size + c.num_positions() * d;
  const int64_t layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d;
  const int64_t layers = used_only ? resolve_select_layer(c, select_layer) : c.num_hidden_layers;
  return embeddings + 2 * d /*pre_layrnorm*/ + layers * layer + (used_only ? 0 : 2 * d);
}

// ----------------------------------------------------------------------------------------------

ClipVisionEmbeddingsImpl::ClipVisionEmbeddingsImpl(const ClipVisionConfig& c,
                                                   const at::TensorOptions& opts)
    : cfg(c) {
  class_embedding = register_parameter("class_embedding", at::empty({c.hidden_size}, opts));
  patch_embedding =
      register_module("patch_embedding", vision::Conv2d(c.num_channels, c.hidden_size, c.patch_size,
                                                        c.patch_size, 0, 1, /*bias=*/false, opts));
  position_embedding = register_module("position_embedding",
                                       vision::Embedding(c.num_positions(), c.hidden_size, opts));
}

at::Tensor ClipVisionEmbeddingsImpl::forward(const at::Tensor& images) {
  MGM_CHECK(images.dim() == 4 && images.size(1) == cfg.num_channels &&
                images.size(2) == cfg.image_size && images.size(3) == cfg.image_size,
            "CLIP vision tower: expected images [B, ", cfg.num_channels, ", ", cfg.image_size, ", ",
            cfg.image_size, "], found ", images.sizes());
  const int64_t b = images.size(0);
  at::Tensor patches = patch_embedding->forward(images.to(patch_embedding->weight.scalar_type()))
                           .flatten(2)
                           .transpose(1, 2);
  at::Tensor cls = class_embedding.view({1, 1, -1}).expand({b, 1, cfg.hidden_size});
  return at::cat({cls, patches}, 1) + position_embedding->weight.unsqueeze(0);
}

ClipAttentionImpl::ClipAttentionImpl(const ClipVisionConfig& c, const at::TensorOptions& opts)
    : heads(c.num_attention_heads), head_dim(c.head_dim()) {
  const int64_t d = c.hidden_size;
  k_proj = register_module("k_proj", vision::Dense(d, d, true, opts));
  v_proj = register_module("v_proj", vision::Dense(d, d, true, opts));
  q_proj = register_module("q_proj", vision::Dense(d, d, true, opts));
  out_proj = register_module("out_proj", vision::Dense(d, d, true, opts));
}

at::Tensor ClipAttentionImpl::forward(const at::Tensor& x) {
  const int64_t b = x.size(0), n = x.size(1);
  auto split = [&](const at::Tensor& t) { return t.view({b, n, heads, head_dim}).transpose(1, 2); };
  // No mask: bidirectional attention over CLS + patches; scale 1/sqrt(head_dim) as the reference.
  at::Tensor o = at::scaled_dot_product_attention(
      split(q_proj->forward(x)), split(k_proj->forward(x)), split(v_proj->forward(x)));
  return out_proj->forward(o.transpose(1, 2).reshape({b, n, heads * head_dim}));
}

ClipMlpImpl::ClipMlpImpl(const ClipVisionConfig& c, const at::TensorOptions& opts)
    : quick_gelu(c.hidden_act == "quick_gelu") {
  fc1 = register_module("fc1", vision::Dense(c.hidden_size, c.intermediate_size, true, opts));
  fc2 = register_module("fc2", vision::Dense(c.intermediate_size, c.hidden_size, true, opts));
}

at::Tensor ClipMlpImpl::forward(const at::Tensor& x) {
  at::Tensor h = fc1->forward(x);
  h = quick_gelu ? h * at::sigmoid(h * 1.702) : at::gelu(h);
  return fc2->forward(h);
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipVisionConfig& c,
                                           const at::TensorOptions& opts) {
  self_attn = register_module("self_attn", ClipAttention(c, opts));
  layer_norm1 =
      register_module("layer_norm1", vision::LayerNorm(c.hidden_size, c.layer_norm_eps, opts));
  mlp = register_module("mlp", ClipMlp(c, opts));
  layer_norm2 =
      register_module("layer_norm2", vision::LayerNorm(c.hidden_size, c.layer_norm_eps, opts));
}

at::Tensor ClipEncoderLayerImpl::forward(const at::Tensor& x) {
  at::Tensor h = x + self_attn->forward(layer_norm1->forward(x));
  return h + mlp->forward(layer_norm2->forward(h));
}

ClipEncoderImpl::ClipEncoderImpl(const ClipVisionConfig& c, int64_t num_built,
                                 const at::TensorOptions& opts) {
  layers_holder = register_module("layers", vision::Indexed());
  for (int64_t i = 0; i < num_built; ++i)
    layers.push_back(layers_holder->add(ClipEncoderLayer(c, opts)));
}

at::Tensor ClipEncoderImpl::forward(at::Tensor x, int64_t n, bool recompute) {
  MGM_CHECK(n >= 0 && n <= static_cast<int64_t>(layers.size()), "CLIP encoder: ", n,
            " layers requested but ", layers.size(), " are built");
  for (int64_t i = 0; i < n; ++i) {
    ClipEncoderLayer layer = layers[i];
    const bool recording = recompute && at::GradMode::is_enabled();
    std::vector<at::Tensor> trainable;
    if (recording)
      for (const auto& p : layer->parameters(true))
        if (p.requires_grad()) trainable.push_back(p);
    if (!recording || (trainable.empty() && !x.requires_grad())) {
      x = layer->forward(x);
      continue;
    }
    // The closure owns the layer (a shared holder), so backward's recompute can outlive this call.
    auto impl = layer.ptr();
    x = models::checkpoint([impl](const at::Tensor& t) { return impl->forward(t); }, x, trainable);
  }
  return x;
}

ClipVisionTransformerImpl::ClipVisionTransformerImpl(const ClipVisionConfig& c, int64_t num_built,
                                                     bool post_ln, const at::TensorOptions& opts) {
  embeddings = register_module("embeddings", ClipVisionEmbeddings(c, opts));
  pre_layrnorm =
      register_module("pre_layrnorm", vision::LayerNorm(c.hidden_size, c.layer_norm_eps, opts));
  encoder = register_module("encoder", ClipEncoder(c, num_built, opts));
  if (post_ln)
    post_layernorm =
        register_module("post_layernorm", vision::LayerNorm(c.hidden_size, c.layer_norm_eps, opts));
}

ClipVisionModelImpl::ClipVisionModelImpl(const ClipVisionConfig& cfg, const ClipVisionOptions& opts)
    : cfg_(cfg), opts_(opts) {
  cfg_.validate("CLIP vision config");
  MGM_CHECK(opts.select_feature == "patch" || opts.select_feature == "cls_patch",
            "CLIP select_feature \"", opts.select_feature,
            "\" is not supported (patch, cls_patch)");
  selected_ = resolve_select_layer(cfg_, opts.select_layer);
  built_ = opts.drop_unused ? selected_ : cfg_.num_hidden_layers;
  vision_model = register_module(
      "vision_model", ClipVisionTransformer(cfg_, built_, !opts.drop_unused, opts.tensor_options));
}

at::Tensor ClipVisionModelImpl::hidden_state(const at::Tensor& images, int64_t index) {
  MGM_CHECK(index >= 0 && index <= built_, "CLIP hidden state ", index,
            " is not available (layers built: ", built_, ")");
  at::Tensor x = vision_model->pre_layrnorm->forward(vision_model->embeddings->forward(images));
  return vision_model->encoder->forward(x, index, opts_.checkpoint_layers);
}

at::Tensor ClipVisionModelImpl::forward(const at::Tensor& images) {
  at::Tensor h = hidden_state(images, selected_);
  return opts_.select_feature == "patch" ? h.slice(1, 1) : h;
}

void ClipVisionModelImpl::load(const io::TensorStore& store, const std::string& prefix) {
  const int64_t built = built_;
  const bool dropped = opts_.drop_unused;
  LoadOptions lo;
  lo.src_prefix = prefix;
  lo.ignore_unexpected = [built, dropped](const std::string& name) {
    // The text half of a full CLIPModel checkpoint, and the buffer older checkpoints persisted.
    if (starts_with(name, "text_model.") || starts_with(name, "visual_projection.") ||
        starts_with(name, "text_projection.") || name == "logit_scale" ||
        name == "vision_model.embeddings.position_ids")
      return true;
    if (!dropped) return false;
    if (starts_with(name, "vision_model.post_layernorm.")) return true;
    const std::string lp = "vision_model.encoder.layers.";
    if (!starts_with(name, lp)) return false;
    const std::string rest = name.substr(lp.size());
    const size_t dot = rest.find('.');
    try {
      return std::stoll(rest.substr(0, dot)) >= built;
    } catch (const std::exception&) {
      return false;
    }
  };
  load_module(*this, store, lo);
}

std::shared_ptr<ClipVisionModelImpl> ClipVisionModelImpl::from_pretrained(
    const std::string& dir, const ClipVisionOptions& opts) {
  auto model = std::make_shared<ClipVisionModelImpl>(ClipVisionConfig::from_file(dir), opts);
  model->load(io::TensorStore::open(dir));
  return model;
}

}  // namespace mgm::models
