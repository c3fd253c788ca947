#include "trainer/train_loop.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Generator.h>
#include <sys/resource.h>
#include <torch/nn/module.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <memory>
#include <optional>

#include "common/files.h"
#include "common/json.h"
#include "common/log.h"
#include "common/strings.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/sampler.h"
#include "data/tokenizer.h"
#include "models/io/tensor_file.h"
#include "models/mgm.h"
#include "models/module_utils.h"
#include "trainer/checkpoint.h"
#include "trainer/ddp.h"
#include "trainer/distributed.h"
#include "trainer/lora_training.h"
#include "trainer/loss_scaler.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/plot.h"
#include "trainer/schedule.h"

#if defined(MGM_HAVE_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace mgm::trainer {

namespace fs = std::filesystem;

namespace {

// Test hook for the kill-and-resume tests: with MGM_TEST_STALL_AFTER_STEP=N in the environment
// the run blocks after step N (its checkpoint, if any, committed) until a signal ends it. A test
// that kills at a random moment after an earlier checkpoint appears can then never find the run
// already complete, whatever the machine's load. Unset in normal use (nothing changes).
void stall_if_asked(int64_t step) {
  static const int64_t at = [] {
    const char* s = std::getenv("MGM_TEST_STALL_AFTER_STEP");
    return s != nullptr && *s != 0 ? std::atoll(s) : int64_t{-1};
  }();
  if (at != step) return;
  log::info("MGM_TEST_STALL_AFTER_STEP=", at, ": stalled after step ", step, " until killed");
  for (;;) ::pause();
}

// Enters autocast for one device type and restores the previous state on exit, clearing the
// cast cache when the outermost region ends (as Python's autocast.__exit__).
class AutocastScope {
 public:
  AutocastScope(at::DeviceType dev, std::optional<at::ScalarType> dtype) : dev_(dev), on_(dtype) {
    if (!on_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(dev_);
    prev_dtype_ = at::autocast::get_autocast_dtype(dev_);
    at::autocast::set_autocast_enabled(dev_, true);
    at::autocast::set_autocast_dtype(dev_, *dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!on_) return;
    at::autocast::set_autocast_enabled(dev_, prev_enabled_);
    at::autocast::set_autocast_dtype(dev_, prev_dtype_);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  at::DeviceType dev_;
  bool on_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

at::Device parse_device(const std::string& s) {
  try {
    at::Device d(s);
    if (d.is_cuda() && !at::globalContext().hasCUDA())
      throw UsageError(str_cat("--device ", s, ": this build or machine has no CUDA"));
    if (!d.is_cpu() && !d.is_cuda()) throw UsageError(str_cat("--device: expected cpu or cuda[:N], got '", s, "'"));
    return d;
  } catch (const c10::Error&) {
    throw UsageError(str_cat("--device: expected cpu or cuda[:N], got '", s, "'"));
  }
}

// The token-mean causal-LM loss of one micro-batch (4.38's GemmaForCausalLM loss), computed
// as sum / count so a micro-batch without supervised tokens contributes 0 instead of NaN.
at::Tensor micro_batch_loss(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t V = logits.size(2);
  const at::Tensor l = logits.slice(1, 0, -1).reshape({-1, V});
  const at::Tensor y = labels.slice(1, 1).reshape({-1});
  const at::Tensor sum = at::cross_entropy_loss(l.to(at::kFloat), y, {}, at::Reduction::Sum,
                                                models::kIgnoreIndex, 0.0);
  const at::Tensor count = y.ne(models::kIgnoreIndex).sum().clamp_min(1).to(at::kFloat);
  return sum / count;
}

// The MGM config for the run: a random-init config file, an MGM checkpoint folder, or a Gemma
// folder plus the tower folders (the toolkit's layout).
models::MgmConfig build_config(TrainArgs& a) {
  models::MgmConfig cfg;
  auto agree = [&a](const char* key, const std::string& flag_value, const std::string& cfg_value,
                    const std::string& where) {
    if (a.is_explicit(key) && flag_value != cfg_value)
      throw UsageError(str_cat("--", key, " ", flag_value, " contradicts ", where, " (", cfg_value, ")"));
  };
  std::string source;
  if (!a.model_config.empty()) {
    cfg = models::MgmConfig::from_file(a.model_config);
    source = a.model_config;
  } else {
    const std::string cfg_path = path_join(a.model_name_or_path, "config.json");
    const Json j = read_json_file(cfg_path);
    if (j.contains("mm_vision_tower")) {
      cfg = models::MgmConfig::from_file(a.model_name_or_path);
      source = cfg_path;
    } else {
      Json m = j;
      m["mm_vision_tower"] = a.vision_tower;
      m["mm_vision_tower_aux"] = a.vision_tower_aux;
      m["mm_projector_type"] = a.mm_projector_type;
      m["mm_vision_select_layer"] = a.mm_vision_select_layer;
      m["image_size_aux"] = a.image_size_aux;
      m["tokenizer_model_max_length"] = a.model_max_length;
      cfg = models::MgmConfig::from_json(m, cfg_path, a.model_name_or_path);
      source = "";
    }
  }
  if (!source.empty()) {
    // A model file's own architecture applies where the flag was left at its default.
    agree("mm_projector_type", a.mm_projector_type, cfg.mm_projector_type, source);
    agree("mm_vision_select_layer", std::to_string(a.mm_vision_select_layer),
          std::to_string(cfg.mm_vision_select_layer), source);
    agree("image_size_aux", std::to_string(a.image_size_aux), std::to_string(cfg.image_size_aux), source);
    a.mm_projector_type = cfg.mm_projector_type;
    a.mm_vision_select_layer = cfg.mm_vision_select_layer;
    a.image_size_aux = cfg.image_size_aux;
    if (!a.is_explicit("model_max_length")) a.model_max_length = cfg.tokenizer_model_max_length;
  }
  cfg.tokenizer_model_max_length = a.model_max_length;
  cfg.image_aspect_ratio = a.image_aspect_ratio;
  cfg.tune_mm_mlp_adapter = a.stage == Stage::kPretrain;
  cfg.validate(source.empty() ? a.model_name_or_path : source);
  return cfg;
}

// Where a random-init run's frozen weights come from: the seed. A finetune that starts from a
// random-init pretrain must draw the same LLM and towers, so the seeds must agree.
void check_random_init_lineage(const TrainArgs& a) {
  if (a.model_config.empty() || a.pretrain_mm_mlp_adapter.empty()) return;
  const std::string cfg = path_join(parent_dir(a.pretrain_mm_mlp_adapter), "config.json");
  if (!path_exists(cfg)) return;
  const Json j = read_json_file(cfg);
  if (!j.contains("train_mgm") || !j["train_mgm"].is_object()) return;
  const Json& t = j["train_mgm"];
  if (t.value("init", "") == "random" && t.contains("seed") &&
      t["seed"].get<uint64_t>() != a.seed)
    throw UsageError(str_cat("--seed ", a.seed, " differs from the seed ", t["seed"].get<uint64_t>(),
                             " that initialised the random model of ", a.pretrain_mm_mlp_adapter,
                             " (", cfg, "): the finetune would start from a different LLM and "
                             "towers than the projector was aligned to"));
}

models::MgmForCausalLM build_model(const TrainArgs& a, const models::MgmConfig& cfg) {
  models::MgmBuildOptions bo;
  bo.stochastic_depth = a.aux_drop_path;
  at::manual_seed(a.seed);  // random initialisation and the MGM-only modules' fresh weights
  models::MgmForCausalLM m{nullptr};
  const std::string cfg_path = path_join(a.model_name_or_path, "config.json");
  if (!a.model_config.empty()) {
    bo.init_weights = true;
    m = models::MgmForCausalLM(cfg, bo);
    m->reset_tower_parameters();
    m->reset_mgm_parameters();
  } else if (a.vision_tower.empty() && path_exists(cfg_path) &&
             read_json_file(cfg_path).contains("mm_vision_tower")) {
    m = models::load_mgm_checkpoint(a.model_name_or_path, bo);  // continue from an MGM checkpoint
  } else {
    models::MgmSources src{a.model_name_or_path, a.vision_tower, a.vision_tower_aux, ""};
    m = models::load_mgm_from_parts(cfg, src, bo);
  }
  if (!a.pretrain_mm_mlp_adapter.empty()) {
    const auto rep = models::load_pretrain_adapter(m, models::io::TensorStore::open(a.pretrain_mm_mlp_adapter));
    log::info(a.pretrain_mm_mlp_adapter, ": loaded ", rep.loaded.size(), " tensors (projector, resampler, CLIP)");
  }
  return m;
}

uint64_t peak_memory(const at::Device& dev) {
#if defined(MGM_HAVE_CUDA)
  if (dev.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(dev.index() < 0 ? 0 : dev.index());
    return static_cast<uint64_t>(stats.allocated_bytes[0].peak);
  }
#endif
  (void)dev;
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // KiB on Linux
}

models::io::NamedTensors rng_state(const at::Device& dev) {
  models::io::NamedTensors out;
  {
    at::Generator g = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(g.mutex());
    out.emplace_back("cpu", g.get_state());
  }
  if (dev.is_cuda()) {
    at::Generator g = at::globalContext().defaultGenerator(dev);
    std::lock_guard<std::mutex> lock(g.mutex());
    out.emplace_back("cuda", g.get_state());
  }
  return out;
}

void set_rng_state(const models::io::TensorStore& s, const at::Device& dev) {
  {
    at::Generator g = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(s.get("cpu").clone());
  }
  if (dev.is_cuda()) {
    MGM_CHECK(s.contains("cuda"), s.source(), ": no CUDA RNG state (the checkpoint came from a CPU run)");
    at::Generator g = at::globalContext().defaultGenerator(dev);
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_state(s.get("cuda").clone());
  }
}

// Copies tokenizer files next to a saved model so the folder is self-contained.
void copy_tokenizer_files(const std::string& tokenizer, const std::string& dir) {
  const std::string src_dir = is_directory(tokenizer) ? tokenizer : parent_dir(tokenizer);
  const std::string model = is_directory(tokenizer) ? path_join(tokenizer, "tokenizer.model") : tokenizer;
  write_file_atomic(path_join(dir, "tokenizer.model"), read_file(model));
  for (const char* f : {"tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"}) {
    const std::string p = path_join(src_dir, f);
    if (path_exists(p)) write_file_atomic(path_join(dir, f), read_file(p));
  }
}

std::string join_ids(const std::vector<std::string>& ids, size_t limit = 16) {
  std::vector<std::string> shown(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(std::min(limit, ids.size())));
  std::string s = join(shown, ", ");
  if (ids.size() > limit) s += str_cat(", ... (", ids.size(), " in all)");
  return s;
}

}  // namespace

TrainResult run_training(const TrainArgs& args_in, Communicator* comm_in) {
  TrainArgs a = args_in;
  const at::Device device = parse_device(a.device);
  std::unique_ptr<Communicator> own_comm;
  if (comm_in == nullptr) own_comm = make_communicator(LaunchEnv{}, DistOptions{"auto", 600, a.device});
  Communicator& comm = comm_in != nullptr ? *comm_in : *own_comm;
  MGM_CHECK(comm.world_size() == a.world_size(), "the job has ", comm.world_size(), " processes, the arguments ",
            a.world_size());
  const bool main_rank = comm.is_main();  // writes logs, metrics, checkpoints and outputs
  if (a.num_threads > 0) at::set_num_threads(static_cast<int>(a.num_threads));
  data::set_max_image_pixels(a.max_image_pixels);
  if (a.tf32) {
    at::globalContext().setFloat32MatmulPrecision("high");
    at::globalContext().setAllowTF32CuDNN(true);
  }
  const std::optional<at::ScalarType> amp =
      a.bf16 ? std::optional<at::ScalarType>(at::kBFloat16)
             : a.fp16 ? std::optional<at::ScalarType>(at::kHalf) : std::nullopt;

  // --- Output folder and what to resume from ------------------------------------------------
  make_dirs(a.output_dir);
  // One run per folder: a second process on it is refused at once, naming the holder (rank 0
  // holds the lock for the whole run; the kernel drops it if the process dies).
  std::unique_ptr<FileLock> output_lock;
  if (main_rank) output_lock = FileLock::acquire(path_join(a.output_dir, kOutputLockFile), "--output_dir " + a.output_dir);
  // A finished run is recognised by its completion record (written last, whatever checkpoints
  // remain) and never retrained or overwritten without --overwrite_output_dir; nothing in the
  // folder has been touched yet.
  const std::string completion_record = path_join(a.output_dir, kCompletionRecord);
  if (!a.overwrite_output_dir && path_exists(completion_record))
    throw UsageError(str_cat(a.output_dir, " holds a finished run (its completion record ", completion_record,
                             " exists); use another --output_dir, or --overwrite_output_dir to train afresh"));
  // Training afresh over a finished run: its record goes now, so that this run, if interrupted,
  // resumes from its own checkpoints instead of being taken for the finished one.
  if (a.overwrite_output_dir && main_rank && path_exists(completion_record)) {
    remove_tree(completion_record);
    fsync_dir(a.output_dir);
  }
  if (main_rank) remove_incomplete_checkpoints(a.output_dir);
  std::string resume_dir = a.resume_from_checkpoint;
  if (resume_dir.empty() && !a.overwrite_output_dir && main_rank) {
    const auto cps = list_checkpoints(a.output_dir);
    if (!cps.empty()) resume_dir = cps.back().path;
  }
  // Rank 0 picks the resume point; every rank resumes from it (output_dir is shared).
  resume_dir = comm.broadcast_string(resume_dir);
  if (!main_rank && !resume_dir.empty() && !path_exists(path_join(resume_dir, kTrainerStateFile)))
    throw UsageError(str_cat("rank 0 resumes from ", resume_dir, ", which rank ", comm.rank(),
                             " cannot see: --output_dir must be on a filesystem every node shares"));
  if (!resume_dir.empty() && !path_exists(path_join(resume_dir, kTrainerStateFile)))
    throw UsageError(str_cat("--resume_from_checkpoint ", resume_dir, ": not a complete checkpoint (no ",
                             kTrainerStateFile, ")"));
  // Without a completion record (a run from before it existed, or final files copied in) the
  // final outputs themselves mark a finished run when there is no checkpoint to continue.
  if (resume_dir.empty() && !a.overwrite_output_dir) {
    std::vector<std::string> present;
    for (const char* f : {"mm_projector.bin", "adapter_model.safetensors", "model.safetensors.index.json",
                          "model.safetensors"})
      if (path_exists(path_join(a.output_dir, f))) present.push_back(f);
    if (!present.empty())
      throw UsageError(str_cat(a.output_dir, " already holds the result of a finished run (", join(present, ", "),
                               "); use another --output_dir or --overwrite_output_dir"));
  }

  // --- Tokenizer, model ----------------------------------------------------------------------
  auto tok = std::make_shared<data::Tokenizer>(data::Tokenizer::load(a.tokenizer));
  const models::MgmConfig cfg = build_config(a);
  MGM_CHECK(tok->vocab_size() <= cfg.gemma.vocab_size, a.tokenizer, ": the tokenizer has ",
            tok->vocab_size(), " tokens but the model's vocab_size is ", cfg.gemma.vocab_size);
  check_random_init_lineage(a);
  models::MgmForCausalLM model = build_model(a, cfg);
  const models::MgmStage stage =
      a.stage == Stage::kPretrain ? models::MgmStage::kPretrain : models::MgmStage::kFinetune;
  model->set_trainable(stage);
  if (a.gradient_checkpointing) model->llm->set_gradient_checkpointing(true);
  // Frozen modules run in the compute dtype (no master copy needed); trainable ones keep fp32
  // master weights under autocast. With LoRA the LLM is frozen too (its adapters, attached
  // after the cast, stay fp32).
  if (amp) {
    model->vision_tower->to(*amp);
    model->vision_tower_aux->to(*amp);
    if (stage == models::MgmStage::kPretrain || a.lora_enable) model->llm->to(*amp);
  }
  models::LoraConfig lora_cfg;
  if (a.lora_enable) {
    lora_cfg = lora_config_for(a);
    setup_lora(model, lora_cfg, a);
  }
  model->to(device);
  model->train();

  std::vector<NamedParameter> params;
  std::vector<at::Tensor> trainable;
  int64_t n_trainable = 0;
  for (const auto& p : model->named_parameters(true)) {
    if (!p.value().requires_grad()) continue;
    params.push_back({p.key(), p.value(), decays(p.key()), lr_group_of(p.key(), a)});
    trainable.push_back(p.value());
    n_trainable += p.value().numel();
  }
  const auto counts = models::mgm_parameter_counts(cfg);
  log::info("train_mgm ", stage_name(a.stage), ": ", with_commas(static_cast<uint64_t>(n_trainable)),
            " trainable parameters (", trainable.size(), " tensors) of ",
            with_commas(static_cast<uint64_t>(counts.total())), "; device ", device.str(),
            amp ? (a.bf16 ? ", bf16 autocast" : ", fp16 autocast + loss scaling") : ", fp32");
  AdamWConfig oc;
  oc.beta1 = a.adam_beta1;
  oc.beta2 = a.adam_beta2;
  oc.eps = a.adam_epsilon;
  oc.weight_decay = a.weight_decay;
  DataParallel optimizer(comm, params, oc, DdpOptions{a.ddp_bucket_cap_mb, static_cast<int>(a.zero_stage)});
  // Per-rank files of a checkpoint (rank 0 keeps the single-process names).
  const std::string rank_suffix = main_rank ? "" : str_cat("-rank", comm.rank());
  const std::string optimizer_file =
      optimizer.sharded() ? str_cat("optimizer-zero1-rank", comm.rank(), ".safetensors") : "optimizer.safetensors";

  // --- Data ------------------------------------------------------------------------------------
  data::DatasetConfig dc;
  dc.data_path = a.data_path;
  dc.image_folder = a.image_folder;
  dc.version = a.version;
  dc.aspect = data::parse_aspect_mode(a.image_aspect_ratio);
  dc.model_max_length = a.model_max_length;
  dc.image_size_aux = a.image_size_aux;
  data::SupervisedDataset dataset(dc, tok);
  MGM_CHECK(dataset.size() > 0, a.data_path, ": no samples");
  data::SamplerConfig sc;
  sc.kind = a.group_by_modality_length ? data::SamplerKind::kModalityGrouped : data::SamplerKind::kRandom;
  sc.seed = a.seed;
  sc.batch_size = a.per_device_train_batch_size;
  sc.num_processes = a.world_size();
  sc.rank = comm.rank();
  sc.grad_accum = a.gradient_accumulation_steps;
  data::Sampler sampler = a.group_by_modality_length ? data::Sampler(sc, dataset.modality_lengths())
                                                     : data::Sampler(sc, static_cast<int64_t>(dataset.size()));
  const int64_t bpe = sampler.batches_per_epoch();
  int64_t accum = a.gradient_accumulation_steps;
  if (bpe < accum) {
    log::warn("an epoch has only ", bpe, " micro-batches, fewer than --gradient_accumulation_steps ",
              accum, ": accumulating ", bpe, " per step");
    accum = bpe;
  }
  const int64_t updates_per_epoch = std::max<int64_t>(1, bpe / accum);
  const int64_t total_steps =
      a.max_steps > 0 ? a.max_steps
                      : static_cast<int64_t>(std::ceil(a.num_train_epochs * static_cast<double>(updates_per_epoch)));
  ScheduleConfig sched;
  sched.type = parse_lr_schedule(a.lr_scheduler_type);
  sched.base_lr = a.learning_rate;
  sched.total_steps = total_steps;
  sched.warmup_steps = hf_warmup_steps(total_steps, a.warmup_ratio, a.warmup_steps);

  // --- Resume ------------------------------------------------------------------------------------
  const Json args_json = a.to_json();
  int64_t global_step = 0, skipped_total = 0;
  DynamicLossScaler scaler;
  TrainResult result;
  result.output_dir = a.output_dir;
  if (!resume_dir.empty()) {
    const Json st = read_json_file(path_join(resume_dir, kTrainerStateFile));
    const auto bad = resume_incompatibilities(json_at(st, "args", resume_dir), args_json);
    if (!bad.empty())
      throw UsageError(str_cat("cannot resume from ", resume_dir, ": the run's settings changed:\n  ",
                               join(bad, "\n  "), "\n(use another --output_dir or --overwrite_output_dir to start afresh)"));
    global_step = json_int(st, "global_step", resume_dir);
    skipped_total = json_int(st, "skipped_samples", resume_dir);
    MGM_CHECK(json_int(st, "accumulation", resume_dir) == accum &&
                  json_int(st, "batches_per_epoch", resume_dir) == bpe,
              resume_dir, ": the dataset or batch geometry changed since this checkpoint");
    const models::io::TensorStore w = models::io::TensorStore::open(path_join(resume_dir, "trainable.safetensors"));
    {
      at::NoGradGuard ng;
      for (auto& p : params) {
        MGM_CHECK(w.contains(p.name), resume_dir, "/trainable.safetensors: no tensor ", p.name);
        const at::Tensor t = w.get(p.name);
        MGM_CHECK(t.sizes() == p.param.sizes() && t.scalar_type() == p.param.scalar_type(), resume_dir,
                  "/trainable.safetensors: ", p.name, " is ", t.sizes(), " ", t.scalar_type(), ", expected ",
                  p.param.sizes(), " ", p.param.scalar_type());
        p.param.copy_(t);
      }
    }
    optimizer.load_state_tensors(models::io::load_all(path_join(resume_dir, optimizer_file)),
                                 path_join(resume_dir, optimizer_file));
    if (st.contains("loss_scaler")) scaler = DynamicLossScaler::from_json(st["loss_scaler"]);
    const models::io::TensorStore own =
        models::io::TensorStore::open(path_join(resume_dir, "rng_state" + rank_suffix + ".safetensors"));
    set_rng_state(own, device);
    // This rank's own count of skipped samples (trainer_state.json holds rank 0's).
    if (own.contains("skipped_samples")) skipped_total = own.get("skipped_samples").item<int64_t>();
    result.resumed_from_step = global_step;
    log::info("resuming from ", resume_dir, " (step ", global_step, " of ", total_steps, ")");
  }
  if (main_rank) write_json_file(path_join(a.output_dir, "args.json"), args_json);
  // Every replica starts from rank 0's weights and buffers.
  if (comm.world_size() > 1) {
    std::vector<at::Tensor> state;
    for (const auto& p : model->parameters()) state.push_back(p);
    for (const auto& b : model->buffers()) state.push_back(b);
    broadcast_tensors(comm, state);
  }

  // --- Plan the micro-batches from here to the end -----------------------------------------------
  // One continuous micro-batch stream across epochs (as HF counts accumulation globally).
  const int64_t start_micro = global_step * accum;
  const int64_t end_micro = total_steps * accum;
  std::vector<data::PlannedBatch> plan;
  plan.reserve(static_cast<size_t>(std::max<int64_t>(0, end_micro - start_micro)));
  {
    data::SamplerState ss;
    ss.seed = a.seed;
    ss.epoch = start_micro / bpe;
    ss.position = start_micro % bpe;
    sampler.restore(ss);
    for (int64_t m = start_micro; m < end_micro; ++m) {
      data::PlannedBatch pb;
      pb.epoch = m / bpe;
      pb.position = m % bpe;
      pb.indices = sampler.next();
      plan.push_back(std::move(pb));
    }
  }
  data::LoaderConfig lc;
  lc.num_workers = static_cast<int>(a.dataloader_num_workers);
  lc.prefetch_batches = std::max(2, static_cast<int>(a.dataloader_num_workers));
  lc.policy = data::parse_bad_sample_policy(a.on_bad_sample);
  lc.collator.model_max_length = a.model_max_length;
  lc.collator.pad_id = tok->pad_id();
  lc.collator.aux_size = cfg.image_size_aux;
  lc.collator.lr_size = cfg.clip.image_size;
  lc.collator.pin_memory = device.is_cuda();
  data::Loader loader(dataset, lc, std::move(plan));

  log::info("data: ", dataset.size(), " samples, ", bpe, " micro-batches of ", a.per_device_train_batch_size,
            " per epoch, accumulation ", accum, " -> ", total_steps, " optimizer steps (",
            sched.warmup_steps, " warmup, ", a.lr_scheduler_type, " schedule)");

  // --- The loop ------------------------------------------------------------------------------
  std::optional<MetricsLog> metrics;
  if (main_rank) metrics.emplace(path_join(a.output_dir, "metrics.jsonl"), global_step);
  const ProgressMode pmode = main_rank ? parse_progress_mode(a.progress) : ProgressMode::kNone;
  Progress progress(pmode, total_steps, global_step);
  // The config.json of the outputs (and of LoRA checkpoints, which --model-base evaluation and
  // merge-lora read when the base is a plain LLM folder).
  auto output_config = [&](int64_t steps) {
    Json c = model->config().to_json();
    c["train_mgm"] = Json{{"stage", stage_name(a.stage)},
                          {"init", a.model_config.empty() ? "pretrained" : "random"},
                          {"seed", a.seed},
                          {"model_config", a.model_config},
                          {"steps", steps}};
    if (a.lora_enable && a.mm_projector_lr >= 0) c["mm_projector_lr"] = a.mm_projector_lr;
    return c;
  };
  const std::string skipped_log = path_join(a.output_dir, "skipped_samples" + rank_suffix + ".jsonl");
  // The other ranks list their skipped samples in a file of their own, made on the first one.
  std::optional<MetricsLog> skipped_list;
  if (main_rank || path_exists(skipped_log)) skipped_list.emplace(skipped_log, global_step);
  const int64_t image_tokens = cfg.image_tokens();
  const bool check_each_step = device.is_cpu();  // free on CPU; a sync on CUDA
  at::Tensor window_loss = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(device));
  int64_t window_micro = 0, window_steps = 0;
  double loss_sum_logged = 0.0;
  int64_t loss_logged_n = 0;
  at::Tensor grad_norm;
  std::string last_checkpoint = resume_dir;
  std::deque<std::pair<int64_t, std::vector<std::string>>> unchecked;  // ids per step since the last check

  auto check_finite = [&](const at::Tensor& loss_acc) {
    // One host read covering every step since the last check.
    const at::Tensor ok = at::isfinite(loss_acc).logical_and(at::isfinite(grad_norm));
    const bool ok_here = ok.item<bool>();
    if (comm.all_true(ok_here)) {  // every rank stops together
      unchecked.clear();
      return;
    }
    const auto& [step, ids] = unchecked.empty() ? std::make_pair(global_step, std::vector<std::string>{})
                                                : unchecked.back();
    throw TrainingStopped(str_cat(
        "non-finite loss or gradient norm (loss ", py_float(loss_acc.item<double>()), ", grad_norm ",
        py_float(grad_norm.item<double>()), comm.world_size() == 1 ? "" : ok_here ? ", on another rank" : "",
        ") at step ", step + 1,
        unchecked.size() > 1 ? str_cat(" or one of the ", unchecked.size(), " steps before it") : "",
        "; samples of the batch: ", join_ids(ids), "; last good checkpoint: ",
        last_checkpoint.empty() ? std::string("none") : last_checkpoint,
        a.fp16 ? "" : " (bf16/fp32 runs stop instead of skipping; lower the learning rate or check the data)"));
  };

  // The scheduler steps with the optimizer: steps the fp16 loss scaler skipped do not count, as
  // in DeepSpeed and HF's optimizer_step_was_skipped (the count is in the scaler's state).
  auto scheduler_steps = [&] { return global_step - (a.fp16 ? scaler.skipped_steps() : 0); };
  while (global_step < total_steps) {
    const double lr = lr_at(sched, scheduler_steps());
    int64_t step_samples = 0, step_tokens = 0;
    std::vector<std::string> step_ids;
    at::Tensor step_loss = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
    comm.set_step(global_step + 1);
    for (int64_t k = 0; k < accum; ++k) {
      std::optional<data::LoadedBatch> lb = loader.next();
      MGM_CHECK(lb.has_value(), "the data loader ended before step ", global_step + 1, " (internal error)");
      for (const auto& s : lb->skipped) {
        ++skipped_total;
        Json j{{"index", s.index}, {"id", s.id}, {"reason", s.reason}, {"epoch", s.epoch},
               {"position", s.position}, {"step", global_step + 1}};
        if (!skipped_list) skipped_list.emplace(skipped_log, global_step);
        skipped_list->append(j);
        log::warn("skipped sample ", s.id, " (index ", s.index, "): ", s.reason);
      }
      if (skipped_total > a.max_bad_samples)
        throw TrainingStopped(str_cat(skipped_total, " samples skipped, more than --max_bad_samples ",
                                      a.max_bad_samples, "; see ", skipped_log));
      if (lb->empty()) continue;
      step_ids.insert(step_ids.end(), lb->ids.begin(), lb->ids.end());
      const data::Batch& b = lb->batch;
      step_samples += static_cast<int64_t>(lb->indices.size());
      const int64_t n_images = b.input_ids.eq(models::kImageTokenIndex).sum().item<int64_t>();
      step_tokens += b.attention_mask.sum().item<int64_t>() + n_images * (image_tokens - 1);
      at::Tensor loss;
      {
        AutocastScope autocast(device.type(), amp);
        const auto out = model->forward(b.input_ids, b.labels, b.attention_mask,
                                         b.images.to(device, /*non_blocking=*/true),
                                         b.images_aux.to(device, /*non_blocking=*/true));
        loss = micro_batch_loss(out.logits, out.labels);
      }
      at::Tensor scaled = loss / static_cast<double>(accum);
      if (a.fp16) scaled = scaled * scaler.scale();
      optimizer.before_backward(scaled, k == accum - 1);  // earlier micro-steps do not communicate
      scaled.backward();
      step_loss += loss.detach();
      window_loss += loss.detach().to(at::kDouble);
      ++window_micro;
    }
    optimizer.finish_gradients();  // averaged across ranks from here on
    bool overflow = false;
    if (a.fp16) overflow = optimizer.unscale_and_check(scaler);
    grad_norm = optimizer.clip_grad_norm(overflow ? 0.0 : a.max_grad_norm);
    // Read by check_finite, which fp16 on a GPU never runs (the loss scaler skips such steps).
    if (check_each_step || !a.fp16) unchecked.emplace_back(global_step, step_ids);
    if (check_each_step && !overflow) check_finite(step_loss);
    if (!overflow) {
      if (a.mm_projector_lr >= 0)  // HF's LambdaLR scales each group's own initial lr
        optimizer.step({lr, a.mm_projector_lr * lr_lambda(sched, scheduler_steps())});
      else
        optimizer.step(lr);
    }
    if (a.fp16) {
      scaler.update(overflow);
      if (overflow) log::warn("fp16 overflow at step ", global_step + 1, ": step skipped, loss scale now ", scaler.scale());
    }
    optimizer.zero_grad();
    ++global_step;
    ++window_steps;
    // Rank 0's counts x world size (exact for samples unless some were skipped).
    progress.step(global_step, step_samples * comm.world_size(), step_tokens * comm.world_size());

    const bool log_now = global_step % a.logging_steps == 0 || global_step == total_steps;
    const bool save_now = a.save_strategy == "steps" && global_step % a.save_steps == 0 && global_step < total_steps;
    if ((log_now || save_now) && !check_each_step && !a.fp16) check_finite(window_loss);
    if (log_now && comm.world_size() > 1) {  // the logged loss is the mean over every rank, as HF's
      at::Tensor both = at::stack({window_loss, at::full({}, static_cast<double>(window_micro), window_loss.options())});
      comm.all_reduce_blocking(both, ReduceOp::kSum);
      window_loss.copy_(both[0]);
      window_micro = static_cast<int64_t>(both[1].item<double>());
    }
    if (log_now && main_rank) {
      const double loss_v = window_micro > 0 ? window_loss.item<double>() / static_cast<double>(window_micro) : 0.0;
      const double norm_v = grad_norm.item<double>();
      const double epoch = static_cast<double>(global_step * accum) / static_cast<double>(bpe);
      // HF logs get_last_lr() after the scheduler stepped: the lr of the next step.
      const double next_lr = lr_at(sched, scheduler_steps());
      progress.print(hf_log_line(loss_v, norm_v, next_lr, epoch));
      if (pmode == ProgressMode::kPlain) progress.print(progress.status_line());
      Json m{{"step", global_step}, {"epoch", epoch}, {"loss", loss_v}, {"grad_norm", norm_v},
             {"learning_rate", next_lr}, {"samples_per_second", progress.samples_per_second()},
             {"tokens_per_second", progress.tokens_per_second()}, {"elapsed_s", progress.elapsed()}};
      if (a.fp16) {
        m["loss_scale"] = scaler.scale();
        m["skipped_steps"] = scaler.skipped_steps();
      }
      if (skipped_total > 0) m["skipped_samples"] = skipped_total;
      metrics->append(m);
      loss_sum_logged += loss_v;
      ++loss_logged_n;
    }
    if (log_now) {
      window_loss.zero_();
      window_micro = 0;
      window_steps = 0;
    }
    if (save_now) {
      // Rank 0 writes the checkpoint; the other ranks add their own files (RNG state, ZeRO-1
      // optimizer shard) to its temporary folder before it commits.
      std::optional<CheckpointWriter> w;
      if (main_rank) w.emplace(a.output_dir, global_step);
      const std::string tmp_dir = comm.broadcast_string(main_rank ? parent_dir(w->file(kTrainerStateFile)) : "");
      if (main_rank) {
        models::io::NamedTensors tw;
        for (const auto& p : params) tw.emplace_back(p.name, p.param.detach().to(at::kCPU).contiguous());
        models::io::save_safetensors(w->file("trainable.safetensors"), tw);
        if (a.stage == Stage::kPretrain) models::save_mm_projector_bin(model, w->file("mm_projector.bin"));
        if (a.lora_enable)  // the adapter as of this step, usable with --model-base like the final one
          save_lora_outputs(model, lora_cfg, output_config(global_step),
                            [&w](const std::string& f) { return w->file(f); });
      }
      if (main_rank || optimizer.sharded()) {
        models::io::NamedTensors os;
        for (auto& [n, t] : optimizer.state_tensors()) os.emplace_back(n, t.detach().to(at::kCPU).contiguous());
        models::io::save_safetensors(path_join(tmp_dir, optimizer_file), os);
      }
      // The per-rank file: RNG states and this rank's skipped-sample count.
      models::io::NamedTensors own = rng_state(device);
      own.emplace_back("skipped_samples", at::scalar_tensor(skipped_total, at::kLong));
      models::io::save_safetensors(path_join(tmp_dir, "rng_state" + rank_suffix + ".safetensors"), own);
      // Every rank's files are complete before the commit.
      comm.barrier_without_deadline(str_cat("checkpoint-", global_step, "/files"));
      Json st{{"global_step", global_step}, {"total_steps", total_steps},
              {"epoch", static_cast<double>(global_step * accum) / static_cast<double>(bpe)},
              {"micro_batches", global_step * accum}, {"accumulation", accum},
              {"batches_per_epoch", bpe}, {"skipped_samples", skipped_total},
              {"sampler", data::SamplerState{a.seed, global_step * accum / bpe, global_step * accum % bpe}.to_json()},
              {"loss_scaler", scaler.to_json()}, {"args", args_json}};
      if (main_rank) {
        last_checkpoint = w->commit(st);
        for (const auto& r : rotate_checkpoints(a.output_dir, a.save_total_limit, global_step))
          log::info("removed old checkpoint ", r, " (--save_total_limit ", a.save_total_limit, ")");
        progress.print(str_cat("saved ", last_checkpoint));
      } else {
        last_checkpoint = path_join(a.output_dir, str_cat("checkpoint-", global_step));
      }
      // No rank runs ahead of a checkpoint that is not committed yet.
      comm.barrier_without_deadline(str_cat("checkpoint-", global_step, "/committed"));
    }
    stall_if_asked(global_step);
  }
  progress.finish();
  if (!check_each_step && !a.fp16 && !unchecked.empty()) check_finite(window_loss);
  result.global_step = global_step;
  result.total_steps = total_steps;
  if (!main_rank) {
    comm.barrier_without_deadline("outputs");  // rank 0 writes them: the job is done when they exist
    return result;
  }

  // --- Outputs -------------------------------------------------------------------------------
  Json cfg_json = output_config(total_steps);
  if (a.stage == Stage::kPretrain) {
    models::save_mm_projector_bin(model, path_join(a.output_dir, "mm_projector.bin"));
    write_json_file(path_join(a.output_dir, "config.json"), cfg_json);
  } else if (a.lora_enable) {
    copy_tokenizer_files(a.tokenizer, a.output_dir);
    save_lora_outputs(model, lora_cfg, cfg_json,
                      [&a](const std::string& f) { return path_join(a.output_dir, f); });
  } else {
    const at::ScalarType out_dtype = amp ? *amp : at::kFloat;
    cfg_json["torch_dtype"] = models::io::hf_torch_dtype(out_dtype);
    models::io::NamedTensors all;
    for (const auto& [name, t] : models::module_tensors(*model, "", /*include_buffers=*/false))
      all.emplace_back(name, t.detach().to(at::kCPU).to(out_dtype).contiguous());
    models::io::save_sharded_safetensors(a.output_dir, all, 5ull << 30);
    write_json_file(path_join(a.output_dir, "config.json"), cfg_json);
    copy_tokenizer_files(a.tokenizer, a.output_dir);
  }

  result.global_step = global_step;
  result.epoch = static_cast<double>(global_step * accum) / static_cast<double>(bpe);
  result.total_steps = total_steps;
  result.train_loss = loss_logged_n > 0 ? loss_sum_logged / static_cast<double>(loss_logged_n) : 0.0;
  result.runtime_s = progress.elapsed();
  result.samples_per_second = progress.samples_per_second();
  result.tokens_per_second = progress.tokens_per_second();
  result.skipped_samples = skipped_total;
  result.skipped_steps_fp16 = scaler.skipped_steps();
  result.peak_memory_bytes = peak_memory(device);
  const Json summary{{"train_runtime", result.runtime_s},
                     {"train_samples_per_second", result.samples_per_second},
                     {"train_tokens_per_second", result.tokens_per_second},
                     {"train_steps_per_second",
                      result.runtime_s > 0 ? static_cast<double>(global_step - std::max<int64_t>(0, result.resumed_from_step)) / result.runtime_s : 0.0},
                     {"train_loss", result.train_loss},
                     {"epoch", static_cast<double>(global_step * accum) / static_cast<double>(bpe)},
                     {"global_step", global_step},
                     {"peak_memory_bytes", result.peak_memory_bytes},
                     {"skipped_samples", skipped_total},
                     {"fp16_skipped_steps", scaler.skipped_steps()}};
  write_json_file(path_join(a.output_dir, kCompletionRecord), summary);
  if (metrics->losses().size() >= 2) {
    std::vector<double> xs, ys;
    for (const auto& [x, y] : metrics->losses()) {
      xs.push_back(x);
      ys.push_back(y);
    }
    try {
      write_loss_plot(path_join(a.output_dir, "loss.png"), xs, ys,
                      str_cat("train_mgm ", stage_name(a.stage), " loss"));
    } catch (const Error& e) {
      log::warn("no loss plot: ", e.what());
    }
  }
  comm.barrier_without_deadline("outputs");
  return result;
}

namespace {

std::string self_executable() {
  std::string buf(4096, '\0');
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  MGM_CHECK(n > 0, "--nproc_per_node: cannot find this program's path (/proc/self/exe)");
  buf.resize(static_cast<size_t>(n));
  return buf;
}

}  // namespace

int train_main(const std::vector<std::string>& argv) {
  TrainArgs a;
  std::string help;
  if (!parse_train_args(argv, &a, &help)) {
    std::fputs(help.c_str(), stdout);
    return 0;
  }
  if (a.nproc_per_node > 0 && !is_launched_worker()) {
    if (starts_with(a.device, "cuda") && a.nproc_per_node > static_cast<int64_t>(at::getNumGPUs()))
      throw UsageError(str_cat("--nproc_per_node ", a.nproc_per_node, " with --device ", a.device, ": ",
                               at::getNumGPUs(), " GPU(s) visible (one process per GPU)"));
    LocalLaunchOptions lo;
    lo.nproc = static_cast<int>(a.nproc_per_node);
    lo.master_port = static_cast<int>(a.master_port);
    lo.timeout_s = static_cast<int>(a.ddp_timeout);
    return run_local_launcher(self_executable(), argv, lo);
  }
  a.device = device_for_rank(a.device, a.launch,
                             starts_with(a.device, "cuda") ? static_cast<int>(at::getNumGPUs()) : -1);
  std::unique_ptr<Communicator> comm =
      make_communicator(a.launch, DistOptions{a.ddp_backend, static_cast<int>(a.ddp_timeout), a.device});
  if (comm->rank() > 0 && std::getenv("MGM_LOG_LEVEL") == nullptr) log::set_level(log::Level::kWarn);
  TrainResult r;
  try {
    r = run_training(a, comm.get());
  } catch (const std::exception& e) {
    if (comm->backend() == "none") throw;  // one process: main() reports it as always
    // A rank of a job: tell the others before leaving, and leave without running destructors
    // that could wait on peers that are gone.
    const bool usage = dynamic_cast<const UsageError*>(&e) != nullptr;
    // As run_main prints it: the project's own errors whole, others (c10 backtraces) cut to
    // their first line unless asked for.
    const bool ours = dynamic_cast<const Error*>(&e) != nullptr;
    std::string msg = e.what();
    if (!ours && std::getenv("MGM_FULL_ERRORS") == nullptr) msg = msg.substr(0, msg.find('\n'));
    const int code = usage ? 2 : 1;
    exit_after_failure(*comm, comm->report_failure(msg), code);
  }
  comm->finish();
  if (!comm->is_main()) return 0;
  std::printf(
      "{'train_runtime': %s, 'train_samples_per_second': %s, 'train_steps_per_second': %s, "
      "'train_loss': %s, 'epoch': %s}\n",
      py_float(py_round(r.runtime_s, 4)).c_str(), py_float(py_round(r.samples_per_second, 3)).c_str(),
      py_float(py_round(r.runtime_s > 0 ? static_cast<double>(r.global_step - std::max<int64_t>(0, r.resumed_from_step)) / r.runtime_s : 0.0, 3)).c_str(),
      py_float(r.train_loss).c_str(),
      py_float(py_round(r.epoch, 2)).c_str());
  std::printf("train_mgm: %s finished at step %lld in %s (%.2f samples/s, %.0f tokens/s, peak memory %s)%s\n",
              stage_name(a.stage).c_str(), static_cast<long long>(r.global_step),
              format_duration(r.runtime_s).c_str(), r.samples_per_second, r.tokens_per_second,
              human_bytes(r.peak_memory_bytes).c_str(),
              r.skipped_samples > 0 ? str_cat("; ", r.skipped_samples, " samples skipped").c_str() : "");
  // What is there (loss.png needs two logged losses; a very short run has none).
  std::vector<std::string> extra;
  for (const char* f : {"metrics.jsonl", "loss.png", kCompletionRecord})
    if (path_exists(path_join(a.output_dir, f))) extra.push_back(f);
  std::printf("outputs in %s: %s, %s\n", a.output_dir.c_str(),
              a.stage == Stage::kPretrain ? "mm_projector.bin + config.json"
              : a.lora_enable ? "config.json + adapter_config.json + adapter_model.safetensors + "
                                "non_lora_trainables.bin + tokenizer"
                              : "config.json + model safetensors + tokenizer",
              join(extra, ", ").c_str());
  return 0;
}

}  // namespace mgm::trainer
