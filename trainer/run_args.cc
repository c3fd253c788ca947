#include "trainer/run_args.h"

#include <algorithm>
#include <sstream>

#include "common/cli.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"
#include "data/image.h"

namespace mgm::trainer {

using cli::Kind;

std::string stage_name(Stage s) { return s == Stage::kPretrain ? "pretrain" : "finetune"; }

namespace {

cli::ArgParser make_parser() {
  cli::ArgParser p(
      "train_mgm",
      "Trains MGM: --stage pretrain (projector + patch-info-mining resampler; LLM and towers "
      "frozen; writes mm_projector.bin) or --stage finetune (LLM + projector + resampler; writes "
      "an MGM checkpoint folder). Flags are those of the toolkit's train_mgm_2b_stage_*.sh; "
      "--config FILE holds the same keys as JSON (flags win).");
  p.flag("stage", Kind::kString, "", "pretrain | finetune", true)
      .flag("config", Kind::kString, "", "JSON file with any of these keys (flags override it)")
      // model
      .flag("model_name_or_path", Kind::kString, "",
            "Gemma checkpoint folder (HF layout), or an MGM checkpoint folder")
      .flag("model_config", Kind::kString, "",
            "MGM config.json to build a randomly initialised model (towers and LLM) instead of "
            "loading checkpoints, e.g. configs/models/demo.json")
      .flag("tokenizer", Kind::kString, "",
            "tokenizer.model or its folder (default: --model_name_or_path)")
      .flag("vision_tower", Kind::kString, "", "CLIP ViT folder (HF layout)")
      .flag("vision_tower_aux", Kind::kString, "", "open_clip ConvNeXt folder")
      .flag("pretrain_mm_mlp_adapter", Kind::kString, "",
            "stage-1 mm_projector.bin (finetune: projector, resampler and CLIP from it)")
      .flag("version", Kind::kString, "gemma", "conversation template: gemma | vicuna_v1 | plain")
      .flag("mm_projector_type", Kind::kString, "mlp2x_gelu", "linear | mlp{N}x_gelu")
      .flag("mm_vision_select_layer", Kind::kInt, "-2", "CLIP hidden layer fed to the projector")
      .flag("mm_vision_select_feature", Kind::kString, "patch", "patch (MGM-2B)")
      .flag("image_size_aux", Kind::kInt, "768", "ConvNeXt input size")
      .flag("image_aspect_ratio", Kind::kString, "square", "square | pad")
      .flag("image_grid", Kind::kInt, "1", "1 (MGM-2B)")
      .flag("image_global", Kind::kBool, "false", "false (MGM-2B)")
      .flag("mm_use_im_start_end", Kind::kBool, "false", "false (MGM-2B)")
      .flag("mm_use_im_patch_token", Kind::kBool, "false", "false (MGM-2B)")
      .flag("tune_mm_mlp_adapter", Kind::kBool, "false",
            "implied by --stage (true for pretrain); accepted for script compatibility")
      .flag("aux_drop_path", Kind::kBool, "true",
            "keep the frozen ConvNeXt's DropPath active as the reference does")
      // data
      .flag("data_path", Kind::kString, "", "LLaVA JSON (array) or JSONL", true)
      .flag("image_folder", Kind::kString, "", "folder the samples' image paths are relative to")
      .flag("group_by_modality_length", Kind::kBool, "false",
            "single-modality global batches with balanced micro-batches (finetune recipe)")
      .flag("model_max_length", Kind::kInt, "2048", "maximum sequence length incl. image tokens")
      .flag("lazy_preprocess", Kind::kBool, "true", "accepted; the dataset is always lazy")
      .flag("dataloader_num_workers", Kind::kInt, "4", "decode threads ahead of the step")
      .flag("on_bad_sample", Kind::kString, "error",
            "error: stop at a sample that cannot be used; skip: leave it out, count it and list "
            "it in OUTPUT_DIR/skipped_samples.jsonl")
      .flag("max_bad_samples", Kind::kInt, "100", "with skip: stop when more are skipped")
      .flag("max_image_pixels", Kind::kInt, std::to_string(data::kPilMaxImagePixels), data::kMaxImagePixelsHelp)
      // training
      .flag("output_dir", Kind::kString, "", "where checkpoints and results go", true)
      .flag("overwrite_output_dir", Kind::kBool, "false",
            "start afresh even if output_dir holds checkpoints (they are kept until rotated)")
      .flag("num_train_epochs", Kind::kFloat, "3", "epochs (ignored when --max_steps > 0)")
      .flag("max_steps", Kind::kInt, "-1", "optimizer steps (overrides epochs)")
      .flag("per_device_train_batch_size", Kind::kInt, "8", "micro-batch size")
      .flag("per_device_eval_batch_size", Kind::kInt, "8", "accepted; unused")
      .flag("gradient_accumulation_steps", Kind::kInt, "1", "micro-batches per optimizer step")
      .flag("expected_global_batch_size", Kind::kInt, "0",
            "fail unless batch x accumulation x world equals this (0: no check)")
      .flag("learning_rate", Kind::kFloat, "5e-5", "peak learning rate")
      .flag("weight_decay", Kind::kFloat, "0", "AdamW decoupled weight decay")
      .flag("adam_beta1", Kind::kFloat, "0.9", "")
      .flag("adam_beta2", Kind::kFloat, "0.999", "")
      .flag("adam_epsilon", Kind::kFloat, "1e-8", "")
      .flag("max_grad_norm", Kind::kFloat, "1.0",
            "gradient clipping (0: none; the reference's DeepSpeed runs do not clip)")
      .flag("warmup_ratio", Kind::kFloat, "0", "warmup steps = ceil(ratio x total)")
      .flag("warmup_steps", Kind::kInt, "0", "overrides --warmup_ratio when > 0")
      .flag("lr_scheduler_type", Kind::kString, "linear",
            "linear | cosine | cosine_with_restarts | polynomial | constant | constant_with_warmup")
      .flag("logging_steps", Kind::kInt, "500", "log every N optimizer steps")
      .flag("save_strategy", Kind::kString, "steps", "steps | no")
      .flag("save_steps", Kind::kInt, "500", "checkpoint every N optimizer steps")
      .flag("save_total_limit", Kind::kInt, "0",
            "keep at most N checkpoints (the newest complete one is never deleted; 0: all)")
      .flag("evaluation_strategy", Kind::kString, "no", "no (evaluation is `mgm eval ...`)")
      .flag("report_to", Kind::kString, "none", "accepted; metrics go to OUTPUT_DIR/metrics.jsonl")
      .flag("deepspeed", Kind::kString, "", "accepted and ignored (no DeepSpeed here)")
      .flag("seed", Kind::kInt, "42", "initialisation, data order and DropPath")
      .flag("bf16", Kind::kBool, "false", "bf16 autocast, fp32 master weights")
      .flag("fp16", Kind::kBool, "false", "fp16 autocast with dynamic loss scaling")
      .flag("tf32", Kind::kBool, "false", "TF32 matmuls on CUDA")
      .flag("gradient_checkpointing", Kind::kBool, "false", "recompute LLM layers in backward")
      .flag("device", Kind::kString, "cpu", "cpu | cuda | cuda:N")
      .flag("resume_from_checkpoint", Kind::kString, "",
            "checkpoint-N folder to resume from (default: the newest complete one in "
            "output_dir)")
      .flag("progress", Kind::kString, "auto", "auto | bar | plain | none")
      .flag("num_threads", Kind::kInt, "0", "CPU compute threads (0: libtorch's default)")
      // LoRA
      .flag("lora_enable", Kind::kBool, "false",
            "finetune with LoRA adapters on the LLM (frozen) + full projector and resampler; "
            "writes a PEFT adapter folder")
      .flag("lora_r", Kind::kInt, "64", "LoRA rank")
      .flag("lora_alpha", Kind::kFloat, "16", "LoRA alpha (scaling alpha / r)")
      .flag("lora_dropout", Kind::kFloat, "0.05", "dropout on the LoRA input")
      .flag("lora_target_modules", Kind::kString, "",
            "comma-separated layer names (default: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
            "down_proj = every linear of the LLM, as MGM's find_all_linear_names)")
      .flag("use_rslora", Kind::kBool, "false", "rank-stabilised scaling alpha / sqrt(r)")
      .flag("lora_bias", Kind::kString, "none", "none (MGM trains no LoRA biases)")
      .flag("lora_adapter", Kind::kString, "",
            "start from this PEFT adapter folder (its config and weights; its "
            "non_lora_trainables.bin too when present)")
      .flag("mm_projector_lr", Kind::kString, "",
            "learning rate of the mm_projector's own parameter group (default: --learning_rate)")
      // data parallelism
      .flag("nproc_per_node", Kind::kInt, "0",
            "start N worker processes on this machine (one per GPU with --device cuda) and "
            "supervise them; across nodes launch with torchrun, srun or mpirun instead")
      .flag("master_port", Kind::kInt, "0", "with --nproc_per_node: the rendezvous port (0: a free one)")
      .flag("ddp_backend", Kind::kString, "auto", "auto (nccl on cuda, gloo on cpu) | nccl | gloo")
      .flag("ddp_timeout", Kind::kInt, "600",
            "seconds a collective or the rendezvous may wait before the job stops with an error")
      .flag("ddp_bucket_cap_mb", Kind::kFloat, "25", "gradient all-reduce bucket size (MiB)")
      .flag("zero_stage", Kind::kInt, "0",
            "1: shard the AdamW state and fp32 master weights across ranks (ZeRO stage 1)")
      .flag("local_rank", Kind::kInt, "-1",
            "accepted for torch.distributed.launch / deepspeed command lines; must equal LOCAL_RANK");
  return p;
}

// --config FILE (or --config=FILE) from the raw args, before the parser runs.
std::string find_config(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--config" && i + 1 < args.size()) return args[i + 1];
    if (starts_with(a, "--config=")) return a.substr(9);
  }
  return "";
}

std::string json_value_string(const Json& v, const std::string& file, const std::string& key) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) {
    std::ostringstream s;
    s.precision(17);
    s << v.get<double>();
    return s.str();
  }
  throw UsageError(str_cat(file, ": key '", key, "' must be a string, number or boolean"));
}

}  // namespace

bool parse_train_args(const std::vector<std::string>& args, TrainArgs* out, std::string* help) {
  cli::ArgParser p = make_parser();
  const std::string config = find_config(args);
  std::vector<std::string> config_keys;
  if (!config.empty()) {
    if (!path_exists(config)) throw UsageError(str_cat("--config: no such file ", config));
    const Json j = read_json_file(config);
    if (!j.is_object()) throw UsageError(str_cat(config, ": expected a JSON object of flags"));
    for (const auto& [key, value] : j.items()) {
      if (starts_with(key, "_")) continue;  // comments
      if (cli::normalize_flag(key) == "config")
        throw UsageError(str_cat(config, ": a config cannot name another config"));
      std::vector<std::string> known;
      for (const auto& f : p.flag_names()) known.push_back(f.substr(2));
      const std::string nk = cli::normalize_flag(key);
      if (std::find(known.begin(), known.end(), nk) == known.end())
        throw UsageError(str_cat(config, ": unknown key '", key, "' (did you mean ", closest_match(nk, known), "?)"));
      try {
        p.set_default(key, json_value_string(value, config, key));
        config_keys.push_back(cli::normalize_flag(key));
      } catch (const UsageError& e) {
        throw UsageError(str_cat(config, ": ", e.what()));
      }
    }
  }
  if (!p.parse(args)) {
    *help = p.help();
    return false;
  }
  TrainArgs& a = *out;
  a.config_file = config;
  a.explicit_keys = config_keys;
  for (const auto& dashed : p.flag_names()) {
    const std::string name = dashed.substr(2);
    if (p.given(name)) a.explicit_keys.push_back(name);
  }
  const std::string stage = p.str("stage");
  if (stage == "pretrain") {
    a.stage = Stage::kPretrain;
  } else if (stage == "finetune") {
    a.stage = Stage::kFinetune;
  } else {
    throw UsageError(str_cat("--stage: expected pretrain or finetune, got '", stage, "'"));
  }
  a.model_name_or_path = p.str("model_name_or_path");
  a.model_config = p.str("model_config");
  a.tokenizer = p.str("tokenizer");
  a.vision_tower = p.str("vision_tower");
  a.vision_tower_aux = p.str("vision_tower_aux");
  a.pretrain_mm_mlp_adapter = p.str("pretrain_mm_mlp_adapter");
  a.version = p.str("version");
  a.mm_projector_type = p.str("mm_projector_type");
  a.mm_vision_select_layer = p.integer("mm_vision_select_layer");
  a.image_size_aux = p.integer("image_size_aux");
  a.image_aspect_ratio = p.str("image_aspect_ratio");
  a.aux_drop_path = p.boolean("aux_drop_path");
  a.data_path = p.str("data_path");
  a.image_folder = p.str("image_folder");
  a.group_by_modality_length = p.boolean("group_by_modality_length");
  a.model_max_length = p.integer("model_max_length");
  a.dataloader_num_workers = p.integer("dataloader_num_workers");
  a.on_bad_sample = p.str("on_bad_sample");
  a.max_bad_samples = p.integer("max_bad_samples");
  a.max_image_pixels = p.integer("max_image_pixels");
  a.output_dir = p.str("output_dir");
  a.overwrite_output_dir = p.boolean("overwrite_output_dir");
  a.num_train_epochs = p.number("num_train_epochs");
  a.max_steps = p.integer("max_steps");
  a.per_device_train_batch_size = p.integer("per_device_train_batch_size");
  a.gradient_accumulation_steps = p.integer("gradient_accumulation_steps");
  a.expected_global_batch_size = p.integer("expected_global_batch_size");
  a.learning_rate = p.number("learning_rate");
  a.weight_decay = p.number("weight_decay");
  a.adam_beta1 = p.number("adam_beta1");
  a.adam_beta2 = p.number("adam_beta2");
  a.adam_epsilon = p.number("adam_epsilon");
  a.max_grad_norm = p.number("max_grad_norm");
  a.warmup_ratio = p.number("warmup_ratio");
  a.warmup_steps = p.integer("warmup_steps");
  a.lr_scheduler_type = p.str("lr_scheduler_type");
  a.logging_steps = p.integer("logging_steps");
  a.save_strategy = p.str("save_strategy");
  a.save_steps = p.integer("save_steps");
  a.save_total_limit = p.integer("save_total_limit");
  a.seed = static_cast<uint64_t>(p.integer("seed"));
  a.bf16 = p.boolean("bf16");
  a.fp16 = p.boolean("fp16");
  a.tf32 = p.boolean("tf32");
  a.gradient_checkpointing = p.boolean("gradient_checkpointing");
  a.device = p.str("device");
  a.resume_from_checkpoint = p.str("resume_from_checkpoint");
  a.progress = p.str("progress");
  a.num_threads = p.integer("num_threads");
  a.lora_enable = p.boolean("lora_enable");
  a.lora_r = p.integer("lora_r");
  a.lora_alpha = p.number("lora_alpha");
  a.lora_dropout = p.number("lora_dropout");
  a.lora_target_modules = p.str("lora_target_modules");
  a.use_rslora = p.boolean("use_rslora");
  a.lora_adapter = p.str("lora_adapter");
  if (!p.str("mm_projector_lr").empty() && p.str("mm_projector_lr") != "None") {
    try {
      size_t pos = 0;
      a.mm_projector_lr = std::stod(p.str("mm_projector_lr"), &pos);
      if (pos != p.str("mm_projector_lr").size()) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      throw UsageError(str_cat("--mm_projector_lr: expected a number, got '", p.str("mm_projector_lr"), "'"));
    }
    if (a.mm_projector_lr < 0) throw UsageError("--mm_projector_lr must be >= 0");
  }
  if (p.str("lora_bias") != "none")
    throw UsageError(str_cat("--lora_bias ", p.str("lora_bias"), ": only none is supported"));
  const bool lora_flags = p.given("lora_r") || p.given("lora_alpha") || p.given("lora_dropout") ||
                          p.given("lora_target_modules") || p.given("use_rslora") ||
                          !a.lora_adapter.empty();
  if (!a.lora_enable && lora_flags)
    throw UsageError("--lora_r/--lora_alpha/--lora_dropout/--lora_target_modules/--use_rslora/"
                     "--lora_adapter need --lora_enable true");
  if (a.lora_enable) {
    if (a.stage != Stage::kFinetune)
      throw UsageError("--lora_enable: LoRA is for --stage finetune (pretraining already freezes the LLM)");
    if (a.lora_r <= 0) throw UsageError(str_cat("--lora_r must be positive, got ", a.lora_r));
    if (!(a.lora_dropout >= 0 && a.lora_dropout < 1))
      throw UsageError(str_cat("--lora_dropout must lie in [0, 1), got ", a.lora_dropout));
  }
  a.nproc_per_node = p.integer("nproc_per_node");
  a.master_port = p.integer("master_port");
  a.ddp_backend = p.str("ddp_backend");
  a.ddp_timeout = p.integer("ddp_timeout");
  a.ddp_bucket_cap_mb = p.number("ddp_bucket_cap_mb");
  a.zero_stage = p.integer("zero_stage");

  // What MGM-2B's architecture does not have is refused rather than silently ignored.
  if (p.boolean("mm_use_im_start_end") || p.boolean("mm_use_im_patch_token"))
    throw UsageError("--mm_use_im_start_end/--mm_use_im_patch_token: not supported (MGM-2B uses false)");
  if (p.integer("image_grid") != 1 || p.boolean("image_global"))
    throw UsageError("--image_grid/--image_global: only image_grid 1 without a global image (MGM-2B)");
  if (p.str("mm_vision_select_feature") != "patch")
    throw UsageError("--mm_vision_select_feature: only 'patch' (MGM-2B)");
  if (p.given("tune_mm_mlp_adapter") && p.boolean("tune_mm_mlp_adapter") != (a.stage == Stage::kPretrain))
    throw UsageError(str_cat("--tune_mm_mlp_adapter ", p.str("tune_mm_mlp_adapter"),
                             " contradicts --stage ", stage,
                             " (pretrain tunes the adapter only; finetune trains the LLM too)"));
  if (p.str("evaluation_strategy") != "no")
    throw UsageError("--evaluation_strategy: only 'no' (run `mgm eval ...` on the output)");
  if (!p.str("deepspeed").empty())
    log::info("--deepspeed ", p.str("deepspeed"), " is ignored: train_mgm does its own mixed precision "
              "and data parallelism (--zero_stage 1 shards the optimizer states)");

  auto positive = [](const char* flag, int64_t v) {
    if (v <= 0) throw UsageError(str_cat("--", flag, " must be positive, got ", v));
  };
  positive("per_device_train_batch_size", a.per_device_train_batch_size);
  positive("gradient_accumulation_steps", a.gradient_accumulation_steps);
  positive("logging_steps", a.logging_steps);
  positive("model_max_length", a.model_max_length);
  if (a.save_strategy != "steps" && a.save_strategy != "no")
    throw UsageError(str_cat("--save_strategy: expected steps or no, got '", a.save_strategy, "'"));
  if (a.save_strategy == "steps") positive("save_steps", a.save_steps);
  if (a.save_total_limit < 0) throw UsageError("--save_total_limit must be >= 0");
  if (a.max_steps <= 0 && !(a.num_train_epochs > 0))
    throw UsageError("--num_train_epochs must be > 0 (or give --max_steps)");
  if (a.learning_rate < 0 || a.weight_decay < 0 || a.max_grad_norm < 0 || a.warmup_ratio < 0 ||
      a.warmup_ratio > 1 || a.warmup_steps < 0)
    throw UsageError("--learning_rate, --weight_decay, --max_grad_norm, --warmup_steps must be >= 0 "
                     "and --warmup_ratio in [0, 1]");
  if (a.dataloader_num_workers < 0) throw UsageError("--dataloader_num_workers must be >= 0");
  if (a.max_bad_samples < 0) throw UsageError("--max_bad_samples must be >= 0");
  if (a.on_bad_sample != "error" && a.on_bad_sample != "skip")
    throw UsageError(str_cat("--on_bad_sample: expected error or skip, got '", a.on_bad_sample, "'"));
  if (a.image_aspect_ratio != "square" && a.image_aspect_ratio != "pad")
    throw UsageError(str_cat("--image_aspect_ratio: expected square or pad, got '",
                             a.image_aspect_ratio, "'"));
  if (a.progress != "auto" && a.progress != "bar" && a.progress != "plain" && a.progress != "none")
    throw UsageError(str_cat("--progress: expected auto, bar, plain or none, got '", a.progress, "'"));
  if (a.bf16 && a.fp16) throw UsageError("--bf16 and --fp16 are exclusive");
  if (a.model_config.empty() && a.model_name_or_path.empty())
    throw UsageError("give --model_name_or_path (checkpoints) or --model_config (random init)");
  if (a.model_config.empty() && (a.vision_tower.empty() || a.vision_tower_aux.empty()) &&
      !(path_exists(path_join(a.model_name_or_path, "config.json")) &&
        read_json_file(path_join(a.model_name_or_path, "config.json")).contains("mm_vision_tower")))
    throw UsageError("--vision_tower and --vision_tower_aux are needed with a plain Gemma "
                     "--model_name_or_path");
  if (a.model_config.empty() && a.tokenizer.empty()) a.tokenizer = a.model_name_or_path;
  if (a.tokenizer.empty())
    throw UsageError("--tokenizer is needed with --model_config (the tokenizer.model to train with)");
  if (a.nproc_per_node < 0) throw UsageError("--nproc_per_node must be >= 0");
  if (a.master_port < 0 || a.master_port > 65535) throw UsageError("--master_port must lie in [0, 65535]");
  if (a.ddp_backend != "auto" && a.ddp_backend != "nccl" && a.ddp_backend != "gloo")
    throw UsageError(str_cat("--ddp_backend: expected auto, nccl or gloo, got '", a.ddp_backend, "'"));
  positive("ddp_timeout", a.ddp_timeout);
  if (!(a.ddp_bucket_cap_mb > 0)) throw UsageError("--ddp_bucket_cap_mb must be positive");
  if (a.zero_stage != 0 && a.zero_stage != 1)
    throw UsageError(str_cat("--zero_stage: expected 0 or 1 (ZeRO-2/3 are not implemented), got ", a.zero_stage));
  if (a.nproc_per_node > 0 && !is_launched_worker()) {
    // A one-task step (srun -n1 train_mgm --nproc_per_node 8, as `srun torchrun`) is no world.
    const LaunchEnv outer = detect_launch_env();
    if (outer.world_size > 1)
      throw UsageError(str_cat("--nproc_per_node starts its own workers, but this process was already "
                               "started by ", outer.launcher, " (", outer.describe(), "): use one or the other"));
  } else {
    a.launch = detect_launch_env();
  }
  if (p.integer("local_rank") >= 0 && a.launch.distributed() && p.integer("local_rank") != a.launch.local_rank)
    throw UsageError(str_cat("--local_rank ", p.integer("local_rank"), " contradicts the environment's ",
                             a.launch.describe()));
  const int64_t global = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size();
  if (a.expected_global_batch_size > 0 && global != a.expected_global_batch_size)
    throw UsageError(str_cat("global batch size ", a.per_device_train_batch_size, " (per device) x ",
                             a.gradient_accumulation_steps, " (accumulation) x ", a.world_size(),
                             " (processes) = ", global, ", but --expected_global_batch_size is ",
                             a.expected_global_batch_size));
  return true;
}

bool TrainArgs::is_explicit(const std::string& key) const {
  return std::find(explicit_keys.begin(), explicit_keys.end(), key) != explicit_keys.end();
}

Json TrainArgs::to_json() const {
  Json j;
  j["stage"] = stage_name(stage);
  j["config"] = config_file;
  j["model_name_or_path"] = model_name_or_path;
  j["model_config"] = model_config;
  j["tokenizer"] = tokenizer;
  j["vision_tower"] = vision_tower;
  j["vision_tower_aux"] = vision_tower_aux;
  j["pretrain_mm_mlp_adapter"] = pretrain_mm_mlp_adapter;
  j["version"] = version;
  j["mm_projector_type"] = mm_projector_type;
  j["mm_vision_select_layer"] = mm_vision_select_layer;
  j["image_size_aux"] = image_size_aux;
  j["image_aspect_ratio"] = image_aspect_ratio;
  j["aux_drop_path"] = aux_drop_path;
  j["data_path"] = data_path;
  j["image_folder"] = image_folder;
  j["group_by_modality_length"] = group_by_modality_length;
  j["model_max_length"] = model_max_length;
  j["dataloader_num_workers"] = dataloader_num_workers;
  j["on_bad_sample"] = on_bad_sample;
  j["max_bad_samples"] = max_bad_samples;
  j["max_image_pixels"] = max_image_pixels;
  j["output_dir"] = output_dir;
  j["num_train_epochs"] = num_train_epochs;
  j["max_steps"] = max_steps;
  j["per_device_train_batch_size"] = per_device_train_batch_size;
  j["gradient_accumulation_steps"] = gradient_accumulation_steps;
  j["learning_rate"] = learning_rate;
  j["weight_decay"] = weight_decay;
  j["adam_beta1"] = adam_beta1;
  j["adam_beta2"] = adam_beta2;
  j["adam_epsilon"] = adam_epsilon;
  j["max_grad_norm"] = max_grad_norm;
  j["warmup_ratio"] = warmup_ratio;
  j["warmup_steps"] = warmup_steps;
  j["lr_scheduler_type"] = lr_scheduler_type;
  j["logging_steps"] = logging_steps;
  j["save_strategy"] = save_strategy;
  j["save_steps"] = save_steps;
  j["save_total_limit"] = save_total_limit;
  j["seed"] = seed;
  j["bf16"] = bf16;
  j["fp16"] = fp16;
  j["tf32"] = tf32;
  j["gradient_checkpointing"] = gradient_checkpointing;
  j["device"] = device;
  j["world_size"] = world_size();
  if (lora_enable) {  // absent otherwise, so runs without LoRA record what they always did
    j["lora_enable"] = true;
    j["lora_r"] = lora_r;
    j["lora_alpha"] = lora_alpha;
    j["lora_dropout"] = lora_dropout;
    j["lora_target_modules"] = lora_target_modules;
    j["use_rslora"] = use_rslora;
    j["lora_adapter"] = lora_adapter;
  }
  if (mm_projector_lr >= 0) j["mm_projector_lr"] = mm_projector_lr;
  if (zero_stage != 0) j["zero_stage"] = zero_stage;  // absent otherwise, as before
  return j;
}

std::vector<std::string> resume_incompatibilities(const Json& saved, const Json& now) {
  // Paths may legitimately move between machines; what changes the trajectory may not.
  static const char* kKeys[] = {"stage", "version", "mm_projector_type", "mm_vision_select_layer",
                                "image_size_aux", "image_aspect_ratio", "aux_drop_path",
                                "group_by_modality_length", "model_max_length", "num_train_epochs",
                                "max_steps", "per_device_train_batch_size",
                                "gradient_accumulation_steps", "learning_rate", "weight_decay",
                                "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                                "warmup_ratio", "warmup_steps", "lr_scheduler_type", "seed", "bf16",
                                "fp16", "world_size", "lora_enable", "lora_r", "lora_alpha",
                                "lora_dropout", "lora_target_modules", "use_rslora",
                                "mm_projector_lr", "zero_stage"};
  std::vector<std::string> out;
  for (const char* k : kKeys) {
    // Checkpoints from before a key existed hold its default.
    // zero_stage is recorded only when not 0 (so plain runs record what they always did).
    const Json absent = std::string(k) == "zero_stage" ? Json(0) : Json();
    const Json a = saved.contains(k) ? saved.at(k) : absent;
    const Json b = now.contains(k) ? now.at(k) : absent;
    if (a != b) out.push_back(str_cat(k, ": checkpoint ", a.dump(), ", now ", b.dump()));
  }
  return out;
}

}  // namespace mgm::trainer
