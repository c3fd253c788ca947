// LoRA for the LLM's linear layers with PEFT's semantics (peft 0.10, the version LLaVA/MGM's
// LoRA scripts ran): y = x W^T + scaling * B(A(dropout(x))), scaling = alpha / r (alpha /
// sqrt(r) with rsLoRA), A kaiming-uniform(a = sqrt(5)) and B zero at creation; the files Python
// reads and writes (adapter_config.json + adapter_model.safetensors with PEFT's key names, and
// LLaVA/MGM's non_lora_trainables.bin); merging into W in fp32; and MGM models built from a base
// folder plus an adapter folder, as LLaVA's load_pretrained_model(model_path, model_base).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "models/gemma.h"
#include "models/io/tensor_file.h"
#include "models/mgm.h"
#include "models/module_utils.h"

namespace mgm::models {

// PEFT's prefix of every saved adapter key (PeftModel.base_model.model).
constexpr const char* kPeftKeyPrefix = "base_model.model.";

// The adapter_config.json fields this project reads and writes (PEFT's LoraConfig).
struct LoraConfig {
  int64_t r = 64;
  double lora_alpha = 16;
  double lora_dropout = 0.05;
  bool use_rslora = false;
  // PEFT's list form: a module matches when its name equals an entry or ends with "." + entry.
  std::vector<std::string> target_modules = mgm_default_targets();
  // PEFT's string form (when non-empty it replaces the list): the whole module name must match
  // this regular expression.
  std::string target_regex;
  // Per-module rank / alpha, in the file's order: the first key (rank keys, then alpha keys)
  // whose regex matches the end of a module name (".*\.KEY$") selects that module's values.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  std::string base_model_name_or_path;

  // LLaVA/MGM's find_all_linear_names on MGM-2B: every linear of the LLM except lm_head.
  static std::vector<std::string> mgm_default_targets();

  bool targets(const std::string& module_name) const;
  int64_t rank_for(const std::string& module_name) const;
  double alpha_for(const std::string& module_name) const;
  double scaling(int64_t r, double alpha) const;

  // adapter_config.json as peft 0.10 writes it (task_type CAUSAL_LM).
  Json to_peft_json() const;
  // Reads a PEFT LoRA adapter_config.json; options this project does not implement (DoRA,
  // bias training, modules_to_save, layer selection, fan_in_fan_out, ...) are errors naming
  // the key, never silently ignored.
  static LoraConfig from_peft_json(const Json& j, const std::string& what);
  void validate(const std::string& what) const;
};

// LoraConfig from a comma-separated --lora_target_modules value ("" = the MGM default).
std::vector<std::string> parse_lora_targets(const std::string& csv);

// The LoRA path of a Linear with an adapter (called by LinearImpl::forward): y + scaling *
// B(A(dropout(x))), dropout only in training mode, the sum cast back to y's dtype.
at::Tensor lora_forward(LinearImpl& layer, const at::Tensor& x, const at::Tensor& y);

// Attaches fresh adapters (A kaiming-uniform from the global RNG, B zero; fp32 unless `dtype`
// says otherwise, on each layer's device) to every Linear of the LLM whose name the config
// targets (lm_head never). Returns the adapted module names (e.g.
// "model.layers.0.self_attn.q_proj"). Throws when a target matches no layer or a layer already
// has an adapter.
std::vector<std::string> add_lora(GemmaForCausalLM& llm, const LoraConfig& cfg,
                                  at::ScalarType dtype = at::kFloat);

// Modules with an adapter, in module order.
std::vector<std::string> lora_modules(GemmaForCausalLM& llm);

// The adapters' tensors under PEFT's saved names ("base_model.model.<module>.lora_A.weight"),
// as CPU tensors in their dtype.
io::NamedTensors lora_state(GemmaForCausalLM& llm);

// W + scaling * (B @ A), computed in fp32 and cast back to W's dtype; throws naming `what` when
// the result holds a non-finite value (PEFT's safe_merge check).
at::Tensor lora_merged_weight(const at::Tensor& w, const at::Tensor& a, const at::Tensor& b,
                              double scaling, const std::string& what);

// Merges every adapter into its layer's weight (lora_merged_weight) and removes the adapters,
// leaving a plain model (PEFT's merge_and_unload). Returns the number merged.
int64_t merge_and_unload_lora(GemmaForCausalLM& llm);

// An adapter folder: adapter_config.json + adapter_model.safetensors (or the legacy
// adapter_model.bin), and LLaVA/MGM's non_lora_trainables.bin when present.
struct LoraAdapter {
  std::string dir;
  LoraConfig config;
  io::TensorStore tensors;
  std::string non_lora_path;  // "" when the folder has none
  // Per adapted module: A and B tensor names and the scaling (from the config and A's rank).
  struct Module {
    std::string a, b;
    int64_t r = 0;
    double scaling = 0.0;
  };
  std::map<std::string, Module> modules;
};

// Opens and checks an adapter folder: every tensor is a lora_A/lora_B pair under PEFT's prefix
// with consistent ranks; problems are listed by key.
LoraAdapter open_lora_adapter(const std::string& dir);

// Attaches the adapter's modules to the LLM with its weights (in `dtype`, on the layers'
// devices). Every adapted module must exist as a Linear of the LLM with matching shapes; all
// problems are listed in one error.
void attach_lora_adapter(GemmaForCausalLM& llm, const LoraAdapter& adapter,
                         at::ScalarType dtype = at::kFloat);

// Writes adapter_config.json + adapter_model.safetensors (the adapters in their dtype, PEFT's
// names, safetensors metadata format=pt) into `dir`.
void save_lora_adapter(const std::string& dir, GemmaForCausalLM& llm, const LoraConfig& cfg);

// The trainable parameters that are not LoRA (LLaVA's get_peft_state_non_lora_maybe_zero_3):
// every requires_grad parameter of the model without "lora_" in its name, under PeftModel's
// names ("base_model.model.model.mm_projector.0.weight"), CPU tensors.
io::NamedTensors non_lora_trainables(MgmForCausalLM& model);
void save_non_lora_trainables(const std::string& path, MgmForCausalLM& model);

// LLaVA's key rule for non_lora_trainables.bin: drop "base_model.", then "model." when the keys
// start with "model.model." (both layouts occur in the wild).
std::map<std::string, std::string> non_lora_key_map(const std::vector<std::string>& keys);

// Copies non_lora_trainables.bin into the model (LLaVA loads it with strict=False; here a key
// that names no parameter or has another shape is an error listing them). Returns the model
// names loaded.
std::vector<std::string> load_non_lora_trainables(MgmForCausalLM& model, const std::string& path);

// An MGM model from a base folder plus an adapter folder (LLaVA's builder with model_base):
// the config from the adapter folder's config.json when it is an MGM config (else the base's);
// the weights from the base (a complete MGM checkpoint, or a Gemma folder whose towers come
// from the config's mm_vision_tower / mm_vision_tower_aux folders); then
// non_lora_trainables.bin; then the adapters, merged into the weights when `merge` (evaluation)
// or kept attached for further training.
MgmForCausalLM load_mgm_with_adapter(const std::string& adapter_dir, const std::string& base_dir,
                                     const MgmBuildOptions& opts = {}, bool merge = true);

// `mgm weights merge-lora`: a complete MGM checkpoint folder from base + adapter, written tensor
// by tensor through the sharded writer (each base tensor read, merged when adapted, replaced
// when non_lora_trainables.bin holds it, written in the base tensor's dtype). A Gemma-folder
// base takes its towers from the config's tower folders (loaded as modules; the LLM is still
// streamed). Output staged in a temporary folder and renamed into place when complete.
struct MergeLoraOptions {
  uint64_t max_shard_size = 5ull << 30;
  bool overwrite = false;
};
struct MergeLoraReport {
  int64_t tensors = 0, merged = 0, replaced = 0;
  uint64_t bytes = 0;
};
MergeLoraReport merge_lora_checkpoint(const std::string& base_dir, const std::string& adapter_dir,
                                      const std::string& out_dir, const MergeLoraOptions& opts);

}  // namespace mgm::models
