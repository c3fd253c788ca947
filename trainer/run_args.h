// train_mgm's run arguments: the flag names of the toolkit's train_mgm_2b_stage_*.sh (HF
// TrainingArguments + MGM's ModelArguments/DataArguments), readable from a JSON --config file
// holding the same keys (flags given on the command line win), validated up front so a long run
// never fails late on a typo.
#pragma once

#include <cstdint>
#include <algorithm>
#include <string>
#include <vector>

#include "common/json.h"
#include "data/image.h"
#include "trainer/launcher.h"

namespace mgm::trainer {

enum class Stage { kPretrain, kFinetune };

struct TrainArgs {
  Stage stage = Stage::kPretrain;
  std::string config_file;  // --config, recorded for the run's args.json

  // Model: real checkpoints (model_name_or_path = Gemma folder, vision_tower = CLIP folder,
  // vision_tower_aux = open_clip ConvNeXt folder) or a random initialisation from model_config.
  std::string model_name_or_path, model_config, tokenizer;
  std::string vision_tower, vision_tower_aux, pretrain_mm_mlp_adapter;
  std::string version = "gemma";
  std::string mm_projector_type = "mlp2x_gelu";
  int64_t mm_vision_select_layer = -2;
  int64_t image_size_aux = 768;
  std::string image_aspect_ratio = "square";
  bool aux_drop_path = true;  // the reference keeps ConvNeXt's DropPath active while frozen

  // Data.
  std::string data_path, image_folder;
  bool group_by_modality_length = false;
  int64_t model_max_length = 2048;
  int64_t dataloader_num_workers = 4;
  std::string on_bad_sample = "error";  // error | skip
  int64_t max_bad_samples = 100;        // with skip: stop once more samples were skipped
  int64_t max_image_pixels = data::kPilMaxImagePixels;  // PIL's Image.MAX_IMAGE_PIXELS

  // Optimisation (HF TrainingArguments defaults).
  std::string output_dir;
  double num_train_epochs = 3.0;
  int64_t max_steps = -1;
  int64_t per_device_train_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  int64_t expected_global_batch_size = 0;
  double learning_rate = 5e-5, weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;
  std::string lr_scheduler_type = "linear";
  int64_t logging_steps = 500, save_steps = 500, save_total_limit = 0;  // 0: keep all
  std::string save_strategy = "steps";                                 // steps | no
  uint64_t seed = 42;
  bool bf16 = false, fp16 = false, tf32 = false, gradient_checkpointing = false;
  std::string device = "cpu";
  std::string resume_from_checkpoint;  // a checkpoint-N folder; default: newest in output_dir
  bool overwrite_output_dir = false;
  std::string progress = "auto";  // auto | bar | plain | none

  // LoRA (finetune only, MGM's TrainingArguments names and defaults): adapters on the LLM's
  // linear layers, the LLM frozen, projector + resampler trained fully.
  bool lora_enable = false;
  int64_t lora_r = 64;
  double lora_alpha = 16, lora_dropout = 0.05;
  std::string lora_target_modules;  // comma-separated; "" = every linear layer of the LLM
  bool use_rslora = false;
  std::string lora_adapter;      // start from this adapter folder (e.g. one made by peft)
  double mm_projector_lr = -1;   // < 0: None (the projector uses learning_rate)
  int64_t num_threads = 0;        // CPU intra-op threads (0: libtorch's default)

  // Data parallelism (HF's ddp_* names). `launch` is where this process sits in the job, read
  // from the launcher's environment at parse time; --nproc_per_node N makes this process the
  // local launcher of N workers instead.
  int64_t nproc_per_node = 0, master_port = 0;
  std::string ddp_backend = "auto";  // auto | nccl | gloo
  int64_t ddp_timeout = 600;         // seconds
  double ddp_bucket_cap_mb = 25.0;
  int64_t zero_stage = 0;
  LaunchEnv launch;

  // The values as JSON (every key above, flag names), written to output_dir/args.json and into
  // checkpoints so a resume can refuse a run that changed what the checkpoint depends on.
  Json to_json() const;
  // Processes of the job: the launcher's WORLD_SIZE, or --nproc_per_node for the launcher itself.
  int64_t world_size() const {
    return launch.distributed() || nproc_per_node <= 0 ? launch.world_size : nproc_per_node;
  }
  // Keys set on the command line or in --config (not defaults): a model config's own values
  // apply where a flag was left at its default, and a conflicting explicit value is an error.
  std::vector<std::string> explicit_keys;
  bool is_explicit(const std::string& key) const;
};

// Parses train_mgm's arguments (without the program name). Returns false for --help (help text
// in *help). Throws UsageError naming the flag or config key that is wrong.
bool parse_train_args(const std::vector<std::string>& args, TrainArgs* out, std::string* help);

// The keys whose change makes a checkpoint unusable for resuming (model, data, batch geometry,
// precision, seed, schedule). Returns "key: checkpoint X, now Y" lines; empty when compatible.
std::vector<std::string> resume_incompatibilities(const Json& saved, const Json& now);

std::string stage_name(Stage s);

}  // namespace mgm::trainer
