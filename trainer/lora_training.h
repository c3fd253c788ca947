// LoRA in train_mgm (--lora_enable): the model set up as LLaVA/MGM's train.py does with
// get_peft_model (LLM frozen, adapters on its linear layers, projector and resampler trained
// fully), HF's mm_projector learning-rate group, and the output files Python reads
// (config.json, adapter_config.json, adapter_model.safetensors, non_lora_trainables.bin).
#pragma once

#include <functional>
#include <string>

#include "common/json.h"
#include "models/lora.h"
#include "models/mgm.h"
#include "trainer/run_args.h"

namespace mgm::trainer {

// The LoRA config of the run: from the flags, or from --lora_adapter's adapter_config.json
// (explicit flags that disagree with it are errors).
models::LoraConfig lora_config_for(const TrainArgs& a);

// Freezes the LLM, keeps mm_projector + vlm_uni_* trainable and attaches the adapters (fresh
// PEFT initialisation from the global RNG, or --lora_adapter's weights and its
// non_lora_trainables.bin). Adapters are fp32 (master weights under autocast).
void setup_lora(models::MgmForCausalLM& model, const models::LoraConfig& cfg, const TrainArgs& a);

// LLaVA's create_optimizer with mm_projector_lr: parameters whose name contains "mm_projector"
// form their own group (lr_group 1); the vlm_uni_* resampler stays in the main group.
int lr_group_of(const std::string& param_name, const TrainArgs& a);

// Writes the LoRA outputs; `file(name)` gives the path of each file. config.json only when
// `config_json` is an object (the final folder; checkpoints have their own state).
void save_lora_outputs(models::MgmForCausalLM& model, const models::LoraConfig& cfg,
                       const Json& config_json,
                       const std::function<std::string(const std::string&)>& file);

}  // namespace mgm::trainer
