#include "models/lora.h"

#include <ATen/TensorOperators.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <regex>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"
#include "models/weight_delta.h"

namespace mgm::models {

namespace {

const std::string kPrefix = kPeftKeyPrefix;
const std::string kSuffixA = ".lora_A.weight";
const std::string kSuffixB = ".lora_B.weight";

std::string shape_str(at::IntArrayRef s) {
  std::vector<std::string> p;
  for (auto d : s) p.push_back(std::to_string(d));
  return "[" + join(p, ", ") + "]";
}

std::string listing(const std::vector<std::string>& v, size_t limit = 20) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < limit; ++i) s += "\n  " + v[i];
  if (v.size() > limit) s += str_cat("\n  ... (", v.size() - limit, " more)");
  return s;
}

// PEFT's pattern rule: re.match(rf".*\.{key}$", module_name).
bool pattern_matches(const std::string& key, const std::string& module) {
  try {
    return std::regex_match(module, std::regex(".*\\." + key));
  } catch (const std::regex_error& e) {
    throw Error(str_cat("LoRA rank/alpha pattern '", key,
                        "' is not a valid regular expression: ", e.what()));
  }
}

// The first pattern key (rank keys, then alpha keys) that matches the module, or "".
std::string pattern_key(const LoraConfig& c, const std::string& module) {
  for (const auto& [k, v] : c.rank_pattern)
    if (pattern_matches(k, module)) return k;
  for (const auto& [k, v] : c.alpha_pattern)
    if (pattern_matches(k, module)) return k;
  return "";
}

// Every models::Linear of the LLM by module name ("model.layers.0.self_attn.q_proj", "lm_head").
std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> llm_linears(
    GemmaForCausalLM& llm) {
  std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> out;
  for (const auto& m : llm->named_modules("", /*include_self=*/false)) {
    auto lin = std::dynamic_pointer_cast<LinearImpl>(m.value());
    if (lin) out.emplace_back(m.key(), lin);
  }
  return out;
}

void attach(LinearImpl& l, const std::string& name, const at::Tensor& a, const at::Tensor& b,
            double scaling, double dropout) {
  MGM_CHECK(!l.has_lora(), name, " already has a LoRA adapter");
  auto a_mod = std::make_shared<torch::nn::Module>("lora_A");
  auto b_mod = std::make_shared<torch::nn::Module>("lora_B");
  l.lora_A = a_mod->register_parameter("weight", a);
  l.lora_B = b_mod->register_parameter("weight", b);
  l.register_module("lora_A", a_mod);
  l.register_module("lora_B", b_mod);
  l.lora_scaling = scaling;
  l.lora_dropout = dropout;
}

void detach(LinearImpl& l) {
  l.unregister_module("lora_A");
  l.unregister_module("lora_B");
  l.lora_A = at::Tensor();
  l.lora_B = at::Tensor();
  l.lora_scaling = 0.0;
  l.lora_dropout = 0.0;
}

bool json_null_or_empty(const Json& j) {
  return j.is_null() || ((j.is_array() || j.is_object() || j.is_string()) && j.empty());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Config

std::vector<std::string> LoraConfig::mgm_default_targets() {
  return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
}

std::vector<std::string> parse_lora_targets(const std::string& csv) {
  if (trim(csv).empty()) return LoraConfig::mgm_default_targets();
  std::vector<std::string> out;
  for (const auto& part : split(csv, ',')) {
    const std::string t = trim(part);
    if (t.empty())
      throw UsageError(str_cat("--lora_target_modules '", csv, "' has an empty entry"));
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  }
  return out;
}

bool LoraConfig::targets(const std::string& module_name) const {
  if (!target_regex.empty()) return std::regex_match(module_name, std::regex(target_regex));
  for (const auto& t : target_modules)
    if (module_name == t || ends_with(module_name, "." + t)) return true;
  return false;
}

int64_t LoraConfig::rank_for(const std::string& module_name) const {
  const std::string k = pattern_key(*this, module_name);
  for (const auto& [key, v] : rank_pattern)
    if (key == k) return v;
  return r;
}

double LoraConfig::alpha_for(const std::string& module_name) const {
  const std::string k = pattern_key(*this, module_name);
  for (const auto& [key, v] : alpha_pattern)
    if (key == k) return v;
  return lora_alpha;
}

double LoraConfig::scaling(int64_t rank, double alpha) const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank))
                    : alpha / static_cast<double>(rank);
}

void LoraConfig::validate(const std::string& what) const {
  MGM_CHECK_FORMAT(r > 0, what, "LoRA rank r must be positive, found ", r);
  MGM_CHECK_FORMAT(lora_dropout >= 0 && lora_dropout < 1, what,
                   "lora_dropout must lie in [0, 1), found ", lora_dropout);
  MGM_CHECK_FORMAT(!target_modules.empty() || !target_regex.empty(), what,
                   "no LoRA target modules");
  for (const auto& [k, v] : rank_pattern)
    MGM_CHECK_FORMAT(v > 0, what, "rank_pattern['", k, "'] must be positive, found ", v);
  if (!target_regex.empty()) {
    try {
      std::regex re(target_regex);
    } catch (const std::regex_error& e) {
      throw FormatError(what, str_cat("target_modules '", target_regex,
                                      "' is not a valid regular expression: ", e.what()));
    }
  }
}

Json LoraConfig::to_peft_json() const {
  Json j;
  Json ap = Json::object(), rp = Json::object();
  for (const auto& [k, v] : alpha_pattern) ap[k] = v;
  for (const auto& [k, v] : rank_pattern) rp[k] = v;
  j["alpha_pattern"] = ap;
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = base_model_name_or_path;
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["loftq_config"] = Json::object();
  // PEFT writes integers where the Python value was an int (LLaVA passes ints).
  if (lora_alpha == std::floor(lora_alpha) && std::abs(lora_alpha) < 1e15)
    j["lora_alpha"] = static_cast<int64_t>(lora_alpha);
  else
    j["lora_alpha"] = lora_alpha;
  j["lora_dropout"] = lora_dropout;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = r;
  j["rank_pattern"] = rp;
  j["revision"] = nullptr;
  if (!target_regex.empty()) {
    j["target_modules"] = target_regex;
  } else {
    std::vector<std::string> t = target_modules;
    std::sort(t.begin(), t.end());
    j["target_modules"] = t;
  }
  j["task_type"] = "CAUSAL_LM";
  j["use_dora"] = false;
  j["use_rslora"] = use_rslora;
  return j;
}

LoraConfig LoraConfig::from_peft_json(const Json& j, const std::string& what) {
  MGM_CHECK_FORMAT(j.is_object(), what, "expected a JSON object");
  LoraConfig c;
  if (auto it = j.find("peft_type"); it != j.end() && !it->is_null())
    MGM_CHECK_FORMAT(it->is_string() && it->get<std::string>() == "LORA", what, "peft_type is ",
                     it->dump(), "; only LORA adapters are supported");
  c.r = json_int(j, "r", what);
  c.lora_alpha = json_double_or(j, "lora_alpha", 8.0, what);  // PEFT's default
  c.lora_dropout = json_double_or(j, "lora_dropout", 0.0, what);
  c.use_rslora = json_bool_or(j, "use_rslora", false, what);
  c.base_model_name_or_path = json_string_or(j, "base_model_name_or_path", "", what);
  const Json& t = json_at(j, "target_modules", what);
  if (t.is_string()) {
    c.target_regex = t.get<std::string>();
    c.target_modules.clear();
  } else {
    MGM_CHECK_FORMAT(t.is_array() && !t.empty(), what,
                     "target_modules must be a non-empty list of module names or a regex string");
    c.target_modules.clear();
    for (const auto& e : t) {
      MGM_CHECK_FORMAT(e.is_string(), what, "target_modules must hold strings, found ", e.dump());
      c.target_modules.push_back(e.get<std::string>());
    }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    MGM_CHECK_FORMAT(it->is_object(), what, key, " must be an object");
    for (auto e = it->begin(); e != it->end(); ++e) {
      MGM_CHECK_FORMAT(e.value().is_number(), what, key, "['", e.key(), "'] must be a number");
      if (std::string(key) == "rank_pattern") {
        MGM_CHECK_FORMAT(e.value().is_number_integer(), what, "rank_pattern['", e.key(),
                         "'] must be an integer");
        c.rank_pattern.emplace_back(e.key(), e.value().get<int64_t>());
      } else {
        c.alpha_pattern.emplace_back(e.key(), e.value().get<double>());
      }
    }
  }
  // What PEFT can do that this project does not: refuse instead of computing something else.
  auto refuse = [&](const char* key, bool bad, const std::string& why) {
    if (bad) throw FormatError(what, str_cat("'", key, "' = ", j.at(key).dump(), ": ", why));
  };
  if (j.contains("use_dora"))
    refuse("use_dora", j["use_dora"].is_boolean() && j["use_dora"].get<bool>(),
           "DoRA adapters are not supported");
  if (j.contains("bias"))
    refuse("bias", !(j["bias"].is_string() && j["bias"].get<std::string>() == "none"),
           "only bias 'none' is supported (MGM trains no LoRA biases)");
  if (j.contains("fan_in_fan_out"))
    refuse("fan_in_fan_out", j["fan_in_fan_out"].is_boolean() && j["fan_in_fan_out"].get<bool>(),
           "Conv1D-style (transposed) weights do not occur in Gemma");
  for (const char* key :
       {"modules_to_save", "layers_to_transform", "layers_pattern", "layer_replication"})
    if (j.contains(key)) refuse(key, !json_null_or_empty(j[key]), "not supported");
  c.validate(what);
  return c;
}

// ---------------------------------------------------------------------------------------------
// The layer

at::Tensor lora_forward(LinearImpl& l, const at::Tensor& x, const at::Tensor& y) {
  at::Tensor h = x;
  // PEFT casts the input to the adapter's dtype; under autocast the linears pick the dtype.
  if (h.scalar_type() != l.lora_A.scalar_type() &&
      !at::autocast::is_autocast_enabled(h.device().type()))
    h = h.to(l.lora_A.scalar_type());
  if (l.lora_dropout > 0 && l.is_training()) h = at::dropout(h, l.lora_dropout, /*train=*/true);
  const at::Tensor d = at::linear(at::linear(h, l.lora_A), l.lora_B) * l.lora_scaling;
  at::Tensor out = y + d;
  return out.scalar_type() == y.scalar_type() ? out : out.to(y.scalar_type());
}

std::vector<std::string> add_lora(GemmaForCausalLM& llm, const LoraConfig& cfg,
                                  at::ScalarType dtype) {
  cfg.validate("LoRA config");
  // Match first, attach after: a config that does not fit leaves the model untouched.
  std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> chosen;
  std::set<std::string> matched_entries, leaf_names;
  for (const auto& [name, lin] : llm_linears(llm)) {
    if (name == "lm_head") continue;  // LLaVA/MGM never adapt the output head
    leaf_names.insert(name.substr(name.rfind('.') + 1));
    if (!cfg.targets(name)) continue;
    for (const auto& t : cfg.target_modules)
      if (name == t || ends_with(name, "." + t)) matched_entries.insert(t);
    MGM_CHECK(!lin->has_lora(), name, " already has a LoRA adapter");
    chosen.emplace_back(name, lin);
  }
  std::vector<std::string> unmatched;
  if (cfg.target_regex.empty())
    for (const auto& t : cfg.target_modules)
      if (!matched_entries.count(t)) unmatched.push_back(t);
  if (!unmatched.empty() || chosen.empty())
    throw UsageError(
        str_cat("LoRA target modules ",
                unmatched.empty() ? "'" + cfg.target_regex + "'" : join(unmatched, ", "),
                " match no linear layer of the LLM (its linear layers: ",
                join(std::vector<std::string>(leaf_names.begin(), leaf_names.end()), ", "),
                "; lm_head is never adapted)"));
  std::vector<std::string> adapted;
  for (const auto& [name, lin] : chosen) {
    const int64_t r = cfg.rank_for(name);
    const double scaling = cfg.scaling(r, cfg.alpha_for(name));
    const auto opts = at::TensorOptions().dtype(dtype).device(lin->weight.device());
    at::Tensor a = at::empty({r, lin->in_features}, opts);
    {
      at::NoGradGuard no_grad;
      torch::nn::init::kaiming_uniform_(a, std::sqrt(5.0));  // PEFT's init_lora_weights=True
    }
    attach(*lin, name, a, at::zeros({lin->out_features, r}, opts), scaling, cfg.lora_dropout);
    adapted.push_back(name);
  }
  return adapted;
}

std::vector<std::string> lora_modules(GemmaForCausalLM& llm) {
  std::vector<std::string> out;
  for (const auto& [name, lin] : llm_linears(llm))
    if (lin->has_lora()) out.push_back(name);
  return out;
}

io::NamedTensors lora_state(GemmaForCausalLM& llm) {
  io::NamedTensors out;
  for (const auto& [name, lin] : llm_linears(llm)) {
    if (!lin->has_lora()) continue;
    out.emplace_back(kPrefix + name + kSuffixA, lin->lora_A.detach().to(at::kCPU).contiguous());
    out.emplace_back(kPrefix + name + kSuffixB, lin->lora_B.detach().to(at::kCPU).contiguous());
  }
  return out;
}

at::Tensor lora_merged_weight(const at::Tensor& w, const at::Tensor& a, const at::Tensor& b,
                              double scaling, const std::string& what) {
  MGM_CHECK(w.dim() == 2 && a.dim() == 2 && b.dim() == 2 && a.size(1) == w.size(1) &&
                b.size(0) == w.size(0) && b.size(1) == a.size(0),
            what, ": LoRA shapes do not fit the weight: W ", shape_str(w.sizes()), ", A ",
            shape_str(a.sizes()), ", B ", shape_str(b.sizes()));
  at::NoGradGuard no_grad;
  const at::Tensor wf = w.detach().to(at::kFloat);
  const at::Tensor delta =
      at::matmul(b.detach().to(wf.device(), at::kFloat), a.detach().to(wf.device(), at::kFloat)) *
      scaling;
  // Checked in the weight's dtype, as PEFT's safe_merge does: an fp32 sum that overflows fp16
  // on the cast back is refused too.
  const at::Tensor merged = (wf + delta).to(w.scalar_type());
  MGM_CHECK(at::isfinite(merged).all().item<bool>(), what,
            ": merging the LoRA adapter gives non-finite values (NaN or inf) in ",
            c10::toString(w.scalar_type()), "; refusing to use them");
  return merged;
}

int64_t merge_and_unload_lora(GemmaForCausalLM& llm) {
  int64_t n = 0;
  for (const auto& [name, lin] : llm_linears(llm)) {
    if (!lin->has_lora()) continue;
    const at::Tensor merged =
        lora_merged_weight(lin->weight, lin->lora_A, lin->lora_B, lin->lora_scaling, name);
    {
      at::NoGradGuard no_grad;
      lin->weight.copy_(merged);
    }
    detach(*lin);
    ++n;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Adapter files

LoraAdapter open_lora_adapter(const std::string& dir) {
  MGM_CHECK(is_directory(dir), dir,
            ": not a folder (expected a LoRA adapter folder with "
            "adapter_config.json and adapter_model.safetensors)");
  const std::string cfg_path = path_join(dir, "adapter_config.json");
  MGM_CHECK(path_exists(cfg_path), dir, ": no adapter_config.json (not a PEFT adapter folder)");
  std::string weights = path_join(dir, "adapter_model.safetensors");
  if (!path_exists(weights)) weights = path_join(dir, "adapter_model.bin");
  MGM_CHECK(path_exists(weights), dir,
            ": no adapter_model.safetensors (or adapter_model.bin) next to adapter_config.json");
  LoraAdapter ad{dir,
                 LoraConfig::from_peft_json(read_json_file(cfg_path), cfg_path),
                 io::TensorStore::open(weights),
                 "",
                 {}};
  const std::string nl = path_join(dir, "non_lora_trainables.bin");
  if (path_exists(nl)) ad.non_lora_path = nl;

  std::vector<std::string> problems;
  for (const auto& key : ad.tensors.names()) {
    const bool is_a = ends_with(key, kSuffixA), is_b = ends_with(key, kSuffixB);
    if (!starts_with(key, kPrefix) || !(is_a || is_b)) {
      problems.push_back(str_cat(key, ": not a LoRA weight under '", kPrefix,
                                 "' (expected <module>.lora_A.weight / .lora_B.weight)"));
      continue;
    }
    const std::string module =
        key.substr(kPrefix.size(), key.size() - kPrefix.size() - kSuffixA.size());
    auto& m = ad.modules[module];
    (is_a ? m.a : m.b) = key;
  }
  for (auto& [module, m] : ad.modules) {
    if (m.a.empty() || m.b.empty()) {
      problems.push_back(str_cat(module, ": lora_", m.a.empty() ? "A" : "B", " is missing"));
      continue;
    }
    const auto& sa = ad.tensors.record(m.a).sizes;
    const auto& sb = ad.tensors.record(m.b).sizes;
    if (sa.size() != 2 || sb.size() != 2 || sa[0] != sb[1]) {
      problems.push_back(str_cat(module, ": lora_A ", shape_str(sa), " and lora_B ", shape_str(sb),
                                 " do not form a low-rank pair"));
      continue;
    }
    m.r = sa[0];
    if (!ad.config.targets(module))
      problems.push_back(
          str_cat(module, ": has weights but adapter_config.json does not target it"));
    const int64_t want = ad.config.rank_for(module);
    if (want != m.r)
      problems.push_back(
          str_cat(module, ": rank ", m.r, " in the weights, ", want, " in adapter_config.json"));
    m.scaling = ad.config.scaling(m.r, ad.config.alpha_for(module));
  }
  if (ad.modules.empty()) problems.push_back("no LoRA weights at all");
  if (!problems.empty())
    throw Error(str_cat(weights, ": not a usable LoRA adapter (", problems.size(),
                        " problems):", listing(problems)));
  return ad;
}

void attach_lora_adapter(GemmaForCausalLM& llm, const LoraAdapter& ad, at::ScalarType dtype) {
  std::map<std::string, std::shared_ptr<LinearImpl>> by_name;
  for (const auto& [name, lin] : llm_linears(llm)) by_name[name] = lin;
  std::vector<std::string> problems;
  for (const auto& [module, m] : ad.modules) {
    auto it = by_name.find(module);
    if (it == by_name.end()) {
      problems.push_back(str_cat(module, ": no such linear layer in the LLM"));
      continue;
    }
    const auto& lin = it->second;
    const auto& sa = ad.tensors.record(m.a).sizes;
    const auto& sb = ad.tensors.record(m.b).sizes;
    if (sa[1] != lin->in_features || sb[0] != lin->out_features)
      problems.push_back(str_cat(module, ": adapter A ", shape_str(sa), " / B ", shape_str(sb),
                                 " do not fit the layer [", lin->out_features, ", ",
                                 lin->in_features, "]"));
    if (lin->has_lora()) problems.push_back(str_cat(module, ": already has an adapter"));
  }
  // Modules the config targets but the file lacks: PEFT would leave them at B = 0 (no effect);
  // a file missing them is more likely truncated than intended.
  for (const auto& [name, lin] : by_name)
    if (name != "lm_head" && ad.config.targets(name) && !ad.modules.count(name))
      problems.push_back(str_cat(name, ": targeted by adapter_config.json but has no weights"));
  if (!problems.empty())
    throw Error(str_cat(ad.dir, ": the adapter does not fit this model (", problems.size(),
                        " problems):", listing(problems)));
  for (const auto& [module, m] : ad.modules) {
    auto& lin = by_name.at(module);
    const auto opts = at::TensorOptions().dtype(dtype).device(lin->weight.device());
    attach(*lin, module, ad.tensors.get(m.a).to(opts).clone(), ad.tensors.get(m.b).to(opts).clone(),
           m.scaling, ad.config.lora_dropout);
  }
}

void save_lora_adapter(const std::string& dir, GemmaForCausalLM& llm, const LoraConfig& cfg) {
  const io::NamedTensors t = lora_state(llm);
  MGM_CHECK(!t.empty(), "save_lora_adapter: the model has no LoRA adapters");
  make_dirs(dir);
  write_json_file(path_join(dir, "adapter_config.json"), cfg.to_peft_json());
  io::save_safetensors(path_join(dir, "adapter_model.safetensors"), t, {{"format", "pt"}});
}

// ---------------------------------------------------------------------------------------------
// non_lora_trainables.bin

io::NamedTensors non_lora_trainables(MgmForCausalLM& model) {
  io::NamedTensors out;
  for (const auto& p : model->named_parameters(true)) {
    if (!p.value().requires_grad() || p.key().find("lora_") != std::string::npos) continue;
    out.emplace_back(kPrefix + p.key(), p.value().detach().to(at::kCPU).contiguous());
  }
  return out;
}

void save_non_lora_trainables(const std::string& path, MgmForCausalLM& model) {
  io::save_torch_zip(path, non_lora_trainables(model));
}

std::map<std::string, std::string> non_lora_key_map(const std::vector<std::string>& keys) {
  std::map<std::string, std::string> out;
  bool double_model = false;
  for (const auto& k : keys) {
    const std::string s = starts_with(k, "base_model.") ? k.substr(11) : k;
    out[k] = s;
    if (starts_with(s, "model.model.")) double_model = true;
  }
  if (double_model)
    for (auto& [k, s] : out)
      if (starts_with(s, "model.")) s = s.substr(6);
  return out;
}

std::vector<std::string> load_non_lora_trainables(MgmForCausalLM& model, const std::string& path) {
  const io::TensorStore store = io::TensorStore::open(path);
  std::map<std::string, at::Tensor> params;
  for (const auto& p : model->named_parameters(true)) params[p.key()] = p.value();
  std::vector<std::string> problems, loaded;
  const auto keys = non_lora_key_map(store.names());
  for (const auto& [key, name] : keys) {
    auto it = params.find(name);
    if (it == params.end()) {
      problems.push_back(str_cat(key, ": no parameter ", name, " in the model"));
      continue;
    }
    const auto& rec = store.record(key);
    if (at::IntArrayRef(rec.sizes) != it->second.sizes())
      problems.push_back(str_cat(key, ": shape ", shape_str(rec.sizes), ", the model's ", name,
                                 " is ", shape_str(it->second.sizes())));
  }
  if (!problems.empty())
    throw Error(str_cat(path, ": cannot load the non-LoRA trainables (", problems.size(),
                        " problems):", listing(problems)));
  at::NoGradGuard no_grad;
  for (const auto& [key, name] : keys) {
    params.at(name).copy_(store.get(key));
    loaded.push_back(name);
  }
  return loaded;
}

// ---------------------------------------------------------------------------------------------
// Base + adapter

namespace {

bool is_mgm_config(const std::string& dir) {
  const std::string p = path_join(dir, "config.json");
  return path_exists(p) && read_json_file(p).contains("mm_vision_tower");
}

// LLaVA's builder reads the config from the adapter folder (model_path) and the weights from the
// base (model_base).
MgmConfig adapter_model_config(const std::string& adapter_dir, const std::string& base_dir) {
  if (is_mgm_config(adapter_dir)) return MgmConfig::from_file(adapter_dir);
  if (is_mgm_config(base_dir)) return MgmConfig::from_file(base_dir);
  throw Error(str_cat("neither ", adapter_dir, "/config.json nor ", base_dir,
                      "/config.json is an MGM config (with mm_vision_tower): cannot build the "
                      "multimodal model"));
}

MgmSources tower_sources(const MgmConfig& cfg, const std::string& base_dir) {
  for (const auto& [key, p] :
       {std::pair<const char*, std::string>{"mm_vision_tower", cfg.mm_vision_tower},
        {"mm_vision_tower_aux", cfg.mm_vision_tower_aux}})
    MGM_CHECK(is_directory(p), "the base ", base_dir,
              " is a plain LLM folder, so the towers come from the config's ", key, " = '", p,
              "', which is not a folder here (use a complete MGM checkpoint as the base, or run "
              "from where that path resolves)");
  return MgmSources{base_dir, cfg.mm_vision_tower, cfg.mm_vision_tower_aux, ""};
}

}  // namespace

MgmForCausalLM load_mgm_with_adapter(const std::string& adapter_dir, const std::string& base_dir,
                                     const MgmBuildOptions& opts, bool merge) {
  const LoraAdapter ad = open_lora_adapter(adapter_dir);
  MGM_CHECK(is_directory(base_dir), "--model-base ", base_dir, ": not a folder");
  const MgmConfig cfg = adapter_model_config(adapter_dir, base_dir);
  const bool base_mgm = is_mgm_config(base_dir);
  MgmForCausalLM m{nullptr};
  if (base_mgm) {
    m = load_mgm_checkpoint(cfg, base_dir, opts);
  } else {
    MGM_CHECK(!ad.non_lora_path.empty(), adapter_dir, ": no non_lora_trainables.bin, and the base ",
              base_dir,
              " is not an MGM checkpoint: the projector and resampler weights would be missing");
    m = load_mgm_from_parts(cfg, tower_sources(cfg, base_dir), opts);
  }
  if (!ad.non_lora_path.empty()) {
    const auto loaded = load_non_lora_trainables(m, ad.non_lora_path);
    log::info(ad.non_lora_path, ": ", loaded.size(), " non-LoRA tensors loaded");
  }
  attach_lora_adapter(m->llm, ad);
  if (merge) merge_and_unload_lora(m->llm);
  log::info(adapter_dir, ": LoRA adapter on ", base_dir, " (", ad.modules.size(), " modules, r ",
            ad.config.r, ", alpha ", ad.config.lora_alpha, ad.config.use_rslora ? ", rsLoRA" : "",
            merge ? ", merged)" : ")");
  return m;
}

MergeLoraReport merge_lora_checkpoint(const std::string& base_dir, const std::string& adapter_dir,
                                      const std::string& out_dir, const MergeLoraOptions& opts) {
  const LoraAdapter ad = open_lora_adapter(adapter_dir);
  MGM_CHECK(is_directory(base_dir), "--base ", base_dir, ": not a folder");
  prefer_mmap_for_large_buffers();
  const MgmConfig cfg = adapter_model_config(adapter_dir, base_dir);
  const bool base_mgm = is_mgm_config(base_dir);
  const io::TensorStore base = io::TensorStore::open(base_dir);

  // Non-LoRA trainables by model name.
  std::optional<io::TensorStore> nl;
  std::map<std::string, std::string> nl_key;  // model name -> key in the file
  if (!ad.non_lora_path.empty()) {
    nl = io::TensorStore::open(ad.non_lora_path);
    for (const auto& [key, name] : non_lora_key_map(nl->names())) nl_key[name] = key;
  }

  // The output's names, in order, and where each comes from. An MGM base is the key set; a
  // Gemma base provides the LLM, the towers come from their folders (loaded into a model whose
  // other parameters are never touched, so never committed to memory), and the projector and
  // resampler from non_lora_trainables.bin.
  MgmForCausalLM skeleton{nullptr};
  std::vector<std::string> names;
  std::set<std::string> from_skeleton;
  if (base_mgm) {
    names = base.names();
  } else {
    MGM_CHECK(nl.has_value(), adapter_dir, ": no non_lora_trainables.bin, and the base ", base_dir,
              " is not an MGM checkpoint: the projector and resampler weights would be missing");
    const MgmSources src = tower_sources(cfg, base_dir);
    MgmBuildOptions bo;
    bo.init_weights = false;
    bo.dtype = base.contains("model.embed_tokens.weight")
                   ? io::to_scalar_type(base.record("model.embed_tokens.weight").dtype)
                   : at::kFloat;
    skeleton = MgmForCausalLM(cfg, bo);
    skeleton->vision_tower->load(io::TensorStore::open(src.clip_dir));
    skeleton->vision_tower_aux->load(
        io::TensorStore::open(path_join(src.convnext_dir, "open_clip_pytorch_model.bin")),
        "visual.trunk.", ConvNextNaming::kTimm);
    std::vector<std::string> missing;
    for (const auto& [name, t] : module_tensors(*skeleton, "", /*include_buffers=*/false)) {
      names.push_back(name);
      const bool tower = starts_with(name, "model.vision_tower");
      if (tower)
        from_skeleton.insert(name);
      else if (!base.contains(name) && !nl_key.count(name))
        missing.push_back(name);
    }
    MGM_CHECK(missing.empty(), "merge-lora: no source for ", missing.size(),
              " tensors of the MGM "
              "checkpoint (not in ",
              base_dir, " nor in non_lora_trainables.bin):", listing(missing));
  }

  // Every adapted module and every non-LoRA tensor must land on an output tensor.
  std::set<std::string> name_set(names.begin(), names.end());
  std::vector<std::string> problems;
  for (const auto& [module, m] : ad.modules)
    if (!name_set.count(module + ".weight"))
      problems.push_back(str_cat(module, ".weight: adapted by the adapter but not in the base"));
  for (const auto& [name, key] : nl_key)
    if (!name_set.count(name))
      problems.push_back(
          str_cat(key, ": in non_lora_trainables.bin but ", name, " is not in the model"));
  if (!problems.empty())
    throw Error(str_cat("merge-lora: ", adapter_dir, " does not fit ", base_dir, " (",
                        problems.size(), " problems):", listing(problems)));

  StagedOutputDir out(out_dir, opts.overwrite, {{"--base", base_dir}, {"--adapter", adapter_dir}});
  MergeLoraReport rep;
  at::ScalarType out_dtype = at::kFloat;
  {
    std::map<std::string, at::Tensor> skel;
    if (skeleton)
      for (const auto& [n, t] : module_tensors(*skeleton, "", /*include_buffers=*/false))
        if (from_skeleton.count(n)) skel[n] = t;
    io::ShardedSafetensorsWriter w(out.path(), opts.max_shard_size);
    for (const auto& name : names) {
      at::Tensor t;
      at::ScalarType dt;
      if (from_skeleton.count(name)) {
        t = skel.at(name).detach().contiguous();
        dt = t.scalar_type();
      } else if (base.contains(name)) {
        t = base.read(name);
        dt = t.scalar_type();
      } else {
        dt = skeleton->llm->model->embed_tokens->weight.scalar_type();
      }
      if (auto it = nl_key.find(name); it != nl_key.end()) {
        const at::Tensor r = nl->read(it->second);
        MGM_CHECK(!t.defined() || r.sizes() == t.sizes(), it->second, ": shape ",
                  shape_str(r.sizes()), " differs from the base's ", name, " ",
                  shape_str(t.sizes()));
        t = r.to(dt);
        ++rep.replaced;
      }
      if (ends_with(name, ".weight")) {
        const std::string module = name.substr(0, name.size() - 7);
        if (auto it = ad.modules.find(module); it != ad.modules.end()) {
          t = lora_merged_weight(t, ad.tensors.get(it->second.a), ad.tensors.get(it->second.b),
                                 it->second.scaling, name);
          ++rep.merged;
        }
      }
      if (name == "model.embed_tokens.weight") out_dtype = t.scalar_type();
      rep.bytes += static_cast<uint64_t>(t.nbytes());
      w.add(name, t.contiguous());
      ++rep.tensors;
    }
    w.finish();
  }
  // The source config's own keys (training records, unknown keys) with the dtype written.
  const std::string cfg_src = is_mgm_config(adapter_dir) ? adapter_dir : base_dir;
  Json j = read_json_file(path_join(cfg_src, "config.json"));
  j["torch_dtype"] = io::hf_torch_dtype(out_dtype);
  write_json_file(out.file("config.json"), j);
  const std::string tok_src =
      path_exists(path_join(adapter_dir, "tokenizer.model")) ? adapter_dir : base_dir;
  copy_tokenizer_files(tok_src, out.path());
  out.commit();
  return rep;
}

}  // namespace mgm::models
