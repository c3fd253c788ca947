#include "trainer/lora_training.h"

#include <algorithm>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"

namespace mgm::trainer {

models::LoraConfig lora_config_for(const TrainArgs& a) {
  models::LoraConfig c;
  c.base_model_name_or_path = a.model_name_or_path.empty() ? a.model_config : a.model_name_or_path;
  if (a.lora_adapter.empty()) {
    c.r = a.lora_r;
    c.lora_alpha = a.lora_alpha;
    c.lora_dropout = a.lora_dropout;
    c.use_rslora = a.use_rslora;
    c.target_modules = models::parse_lora_targets(a.lora_target_modules);
    c.validate("--lora_* flags");
    return c;
  }
  const std::string path = path_join(a.lora_adapter, "adapter_config.json");
  MGM_CHECK(path_exists(path), "--lora_adapter ", a.lora_adapter, ": no adapter_config.json");
  c = models::LoraConfig::from_peft_json(read_json_file(path), path);
  // The adapter decides; a flag given explicitly must agree with it.
  std::vector<std::string> bad;
  if (a.is_explicit("lora_r") && a.lora_r != c.r)
    bad.push_back(str_cat("--lora_r ", a.lora_r, " vs r ", c.r));
  if (a.is_explicit("lora_alpha") && a.lora_alpha != c.lora_alpha)
    bad.push_back(str_cat("--lora_alpha ", a.lora_alpha, " vs lora_alpha ", c.lora_alpha));
  if (a.is_explicit("use_rslora") && a.use_rslora != c.use_rslora)
    bad.push_back(str_cat("--use_rslora ", a.use_rslora, " vs use_rslora ", c.use_rslora));
  if (a.is_explicit("lora_target_modules") && c.target_regex.empty()) {
    auto want = models::parse_lora_targets(a.lora_target_modules);
    auto have = c.target_modules;
    std::sort(want.begin(), want.end());
    std::sort(have.begin(), have.end());
    if (want != have)
      bad.push_back(str_cat("--lora_target_modules ", join(want, ","), " vs ", join(have, ",")));
  }
  if (!bad.empty())
    throw UsageError(str_cat("--lora_adapter ", a.lora_adapter,
                             ": flags contradict its adapter_config.json: ", join(bad, "; ")));
  // Dropout is a training setting, not part of the adapter: the flag applies when given.
  if (a.is_explicit("lora_dropout")) c.lora_dropout = a.lora_dropout;
  return c;
}

void setup_lora(models::MgmForCausalLM& model, const models::LoraConfig& cfg, const TrainArgs& a) {
  // get_peft_model freezes everything but the adapters; MGM's initialize_vision_modules /
  // initialize_uni_modules then make the projector and the resampler trainable again.
  model->set_trainable(models::MgmStage::kPretrain);
  if (!a.model_config.empty())
    log::warn("LoRA on a randomly initialised model (--model_config, seed ", a.seed,
              "): the base exists only in this process, so merge-lora and --model-base have no "
              "base folder to use with the adapter");
  if (a.lora_adapter.empty()) {
    const auto adapted = models::add_lora(model->llm, cfg);
    log::info("LoRA: ", adapted.size(), " adapters (r ", cfg.r, ", alpha ", cfg.lora_alpha,
              cfg.use_rslora ? ", rsLoRA" : "", ", dropout ", cfg.lora_dropout, ") on ",
              join(cfg.target_modules, ","));
    return;
  }
  models::LoraAdapter ad = models::open_lora_adapter(a.lora_adapter);
  ad.config.lora_dropout = cfg.lora_dropout;
  models::attach_lora_adapter(model->llm, ad);
  log::info("LoRA: ", ad.modules.size(), " adapters from ", a.lora_adapter);
  if (!ad.non_lora_path.empty()) {
    const auto loaded = models::load_non_lora_trainables(model, ad.non_lora_path);
    log::info(ad.non_lora_path, ": ", loaded.size(), " projector/resampler tensors loaded");
  }
}

int lr_group_of(const std::string& param_name, const TrainArgs& a) {
  return a.mm_projector_lr >= 0 && param_name.find("mm_projector") != std::string::npos ? 1 : 0;
}

void save_lora_outputs(models::MgmForCausalLM& model, const models::LoraConfig& cfg,
                       const Json& config_json,
                       const std::function<std::string(const std::string&)>& file) {
  // The files PeftModel.save_pretrained and MGM's train.py write; adapter_model.safetensors
  // last, as it marks a finished run's folder as complete.
  models::save_non_lora_trainables(file("non_lora_trainables.bin"), model);
  if (config_json.is_object()) write_json_file(file("config.json"), config_json);
  write_json_file(file("adapter_config.json"), cfg.to_peft_json());
  models::io::save_safetensors(file("adapter_model.safetensors"), models::lora_state(model->llm),
                               {{"format", "pt"}});
}

}  // namespace mgm::trainer
