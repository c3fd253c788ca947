// End-to-end: train_mgm on the tiny model and generated data, for real (both stages, loss falls),
// kill -9 mid-run and resume to bit-identical weights, the trainable sets of each stage, the
// stage outputs (mm_projector.bin for Python, an MGM folder), and the stop/skip policies.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"
#include "models/mgm.h"
#include "tests_util.h"
#include "trainer/checkpoint.h"
#include "trainer/schedule.h"

namespace mgm::trainer {
namespace {

std::string src(const std::string& rel) { return test::source_dir() + "/" + rel; }

// The generated dataset, made once for the whole suite.
class TrainE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new std::string(test::temp_dir("e2e_data"));
    std::string out;
    const int rc = test::run_command(str_cat(MGM_BIN, " data synth --out ", *data_,
                                             " --seed 3 --size 64 --eval_size 8 --vocab_size 512 --overwrite"),
                                     &out);
    ASSERT_EQ(rc, 0) << out;
  }
  static void TearDownTestSuite() { delete data_; }
  static const std::string& data() { return *data_; }

  // Common flags of a tiny run.
  static std::string common(const std::string& out, const std::string& stage, const std::string& json) {
    return str_cat(MGM_TRAIN_BIN, " --stage ", stage, " --model_config ", src("configs/models/tiny.json"),
                   " --tokenizer ", data(), "/tokenizer/tokenizer.model --data_path ", data(), "/", json,
                   " --image_folder ", data(), "/images --output_dir ", out,
                   " --per_device_train_batch_size 4 --logging_steps 1 --progress none --seed 5");
  }

  static std::vector<double> losses(const std::string& out) {
    std::vector<double> l;
    std::ifstream in(out + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) l.push_back(Json::parse(line).at("loss").get<double>());
    return l;
  }

 private:
  static std::string* data_;
};
std::string* TrainE2E::data_ = nullptr;

double mean(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s / static_cast<double>(to - from);
}

TEST_F(TrainE2E, PretrainThenFinetuneLearns) {
  const std::string root = test::temp_dir("e2e_run");
  const std::string o1 = root + "/pretrain", o2 = root + "/finetune";
  std::string out;
  ASSERT_EQ(test::run_command(common(o1, "pretrain", "pretrain.json") +
                                  " --max_steps 12 --learning_rate 1e-3 --save_strategy no --dataloader_num_workers 2",
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("{'loss': "), std::string::npos) << out;
  ASSERT_TRUE(path_exists(o1 + "/mm_projector.bin"));
  ASSERT_TRUE(path_exists(o1 + "/config.json"));
  EXPECT_TRUE(read_json_file(o1 + "/config.json").at("tune_mm_mlp_adapter").get<bool>());

  // mm_projector.bin: the §6.3 key set, loadable by Python with weights_only=True.
  const std::string py =
      "import sys, torch\n"
      "sd = torch.load(sys.argv[1], weights_only=True)\n"
      "assert all(k.startswith(('model.mm_projector.', 'model.vlm_uni_', 'model.vision_tower.vision_tower.',"
      " 'model.vision_tower_aux.')) for k in sd), sorted(sd)[:5]\n"
      "assert sd['model.mm_projector.0.weight'].shape == (64, 32), sd['model.mm_projector.0.weight'].shape\n"
      "assert sd['model.mm_projector.2.weight'].shape == (64, 64)\n"
      "assert any(k.startswith('model.vision_tower_aux.vision_stages') for k in sd)\n"
      "print('ok', len(sd))\n";
  write_file_atomic(root + "/check.py", py);
  ASSERT_EQ(test::run_python(root + "/check.py " + o1 + "/mm_projector.bin", &out), 0) << out;

  ASSERT_EQ(test::run_command(common(o2, "finetune", "finetune.json") +
                                  " --pretrain_mm_mlp_adapter " + o1 +
                                  "/mm_projector.bin --image_aspect_ratio pad --group_by_modality_length true"
                                  " --max_steps 40 --learning_rate 3e-3 --warmup_ratio 0.05 --lr_scheduler_type cosine"
                                  " --save_strategy no --dataloader_num_workers 2",
                              &out),
            0)
      << out;
  const auto l = losses(o2);
  ASSERT_EQ(l.size(), 40u);
  // Short templated answers: a real run falls far below the ln(vocab) start.
  EXPECT_LT(mean(l, 35, 40), 0.5 * mean(l, 0, 3)) << "first " << l[0] << " last " << l.back();
  // The logged learning rate is HF's: get_last_lr() after the scheduler stepped, i.e. the lr of
  // the next step (warmup 2 of 40, cosine): 1.5e-3 at step 1 ... 0 at step 40.
  {
    ScheduleConfig sc;
    sc.type = LrSchedule::kCosine;
    sc.base_lr = 3e-3;
    sc.total_steps = 40;
    sc.warmup_steps = 2;
    std::ifstream in(o2 + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const Json j = Json::parse(line);
      const int64_t step = j.at("step").get<int64_t>();
      EXPECT_DOUBLE_EQ(j.at("learning_rate").get<double>(), lr_at(sc, step)) << line;
    }
    EXPECT_DOUBLE_EQ(lr_at(sc, 1), 1.5e-3);
  }
  EXPECT_TRUE(path_exists(o2 + "/loss.png"));
  EXPECT_TRUE(path_exists(o2 + "/train_results.json"));
  EXPECT_TRUE(path_exists(o2 + "/tokenizer.model"));
  // The finetuned folder is a complete MGM checkpoint.
  models::MgmForCausalLM m = models::load_mgm_checkpoint(o2);
  EXPECT_EQ(m->config().image_aspect_ratio, "pad");
  // A finished run is never overwritten by accident.
  EXPECT_NE(test::run_command(common(o2, "finetune", "finetune.json") + " --max_steps 2", &out), 0);
  EXPECT_NE(out.find("holds a finished run (its completion record " + o2 + "/train_results.json"), std::string::npos)
      << out;
  // A finetune of a random-init pretrain must use the same seed (same LLM and towers).
  EXPECT_NE(test::run_command(common(root + "/x", "finetune", "finetune.json") +
                                  " --pretrain_mm_mlp_adapter " + o1 + "/mm_projector.bin --max_steps 1 --seed 6",
                              &out),
            0);
  EXPECT_NE(out.find("differs from the seed"), std::string::npos) << out;
}

// Trainable tensors of each stage, as the checkpoint records them: the reference's sets.
TEST_F(TrainE2E, TrainableSetsPerStage) {
  const std::string root = test::temp_dir("e2e_sets");
  std::string out;
  for (const std::string stage : {"pretrain", "finetune"}) {
    const std::string o = root + "/" + stage;
    ASSERT_EQ(test::run_command(common(o, stage, stage == "pretrain" ? "pretrain.json" : "finetune.json") +
                                    " --max_steps 2 --save_steps 1 --dataloader_num_workers 0",
                                &out),
              0)
        << out;
    const auto store = models::io::TensorStore::open(o + "/checkpoint-1/trainable.safetensors");
    const models::MgmConfig cfg = models::MgmConfig::from_file(src("configs/models/tiny.json"));
    const auto counts = models::mgm_parameter_counts(cfg);
    int64_t n = 0;
    for (const auto& name : store.names()) {
      n += store.get(name).numel();
      const bool mgm_only = starts_with(name, "model.mm_projector.") || starts_with(name, "model.vlm_uni_");
      if (stage == "pretrain") {
        EXPECT_TRUE(mgm_only) << name;
      } else {
        EXPECT_TRUE(mgm_only || starts_with(name, "model.layers.") || name == "model.embed_tokens.weight" ||
                    name == "model.norm.weight")
            << name;
      }
    }
    EXPECT_EQ(n, stage == "pretrain" ? counts.trainable_pretrain() : counts.trainable_finetune()) << stage;
  }
}

// kill -9 at a random step, restart the same command: the final weights equal an uninterrupted
// run's bit for bit (CPU, fp32), and the metrics describe one trajectory.
TEST_F(TrainE2E, KillNineAndResumeIsBitIdentical) {
  const std::string root = test::temp_dir("e2e_kill");
  const std::string args = " --max_steps 14 --save_steps 2 --save_total_limit 2 --learning_rate 2e-3"
                           " --lr_scheduler_type cosine --warmup_steps 2 --dataloader_num_workers 2"
                           " --gradient_accumulation_steps 2 --group_by_modality_length true";
  std::string out;
  ASSERT_EQ(test::run_command(common(root + "/a", "finetune", "finetune.json") + args, &out), 0) << out;

  std::random_device rd;
  const int kill_after = 2 * static_cast<int>(1 + rd() % 5);  // after checkpoint-2 .. checkpoint-10 exists
  const std::string b = root + "/b";
  // The kill lands at a random moment in steps kill_after+1 .. kill_after+2 (checkpoint
  // kill_after+2 possibly half-written); the run stalls after step kill_after+2 until it comes,
  // so it can never finish first, whatever the load.
  const pid_t pid = test::spawn(str_cat("env MGM_TEST_STALL_AFTER_STEP=", kill_after + 2, " ",
                                        common(b, "finetune", "finetune.json"), args),
                                root + "/b1.log");
  const bool killed = test::kill_when_file_appears(
      pid, str_cat(b, "/checkpoint-", kill_after, "/trainer_state.json"), std::chrono::seconds(300));
  ASSERT_TRUE(killed) << "the run ended before checkpoint-" << kill_after << ": " << read_file(root + "/b1.log");
  ASSERT_FALSE(path_exists(b + "/model.safetensors")) << "killed too late to test resuming";
  ASSERT_EQ(test::run_command(common(b, "finetune", "finetune.json") + args, &out), 0) << out;
  EXPECT_NE(out.find("resuming from"), std::string::npos) << out;

  const auto wa = models::io::TensorStore::open(root + "/a");
  const auto wb = models::io::TensorStore::open(b);
  ASSERT_EQ(wa.names(), wb.names());
  for (const auto& n : wa.names()) ASSERT_TRUE(wa.get(n).equal(wb.get(n))) << n << " (killed after checkpoint-" << kill_after << ")";
  EXPECT_EQ(losses(root + "/a"), losses(b));
  EXPECT_LE(list_checkpoints(b).size(), 2u);
}

// Rerunning a finished run's command (checkpoints kept) is refused by its completion record and
// touches nothing; without the record the final files themselves are named as they are.
TEST_F(TrainE2E, FinishedRunIsNeverRetrained) {
  const std::string o = test::temp_dir("e2e_finished") + "/o";
  const std::string c = common(o, "finetune", "finetune.json") + " --max_steps 6 --save_steps 2 --dataloader_num_workers 0";
  std::string out;
  ASSERT_EQ(test::run_command(c, &out), 0) << out;
  ASSERT_FALSE(list_checkpoints(o).empty());
  const std::string metrics = read_file(o + "/metrics.jsonl"), results = read_file(o + "/train_results.json");
  struct stat st0 {}, st1 {};
  ASSERT_EQ(::stat((o + "/model.safetensors").c_str(), &st0), 0);
  EXPECT_EQ(test::run_command(c, &out), 2) << out;
  EXPECT_NE(out.find(o + " holds a finished run (its completion record " + o + "/train_results.json"),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find("resuming"), std::string::npos) << out;
  EXPECT_EQ(read_file(o + "/metrics.jsonl"), metrics);
  EXPECT_EQ(read_file(o + "/train_results.json"), results);
  ASSERT_EQ(::stat((o + "/model.safetensors").c_str(), &st1), 0);
  EXPECT_EQ(st1.st_mtim.tv_sec, st0.st_mtim.tv_sec);
  EXPECT_EQ(st1.st_mtim.tv_nsec, st0.st_mtim.tv_nsec);
  EXPECT_EQ(st1.st_ino, st0.st_ino);
  // An explicit checkpoint does not reopen it either.
  EXPECT_EQ(test::run_command(c + " --resume_from_checkpoint " + list_checkpoints(o).back().path, &out), 2) << out;
  EXPECT_NE(out.find("completion record"), std::string::npos) << out;
  // No record and no checkpoint: the final file that is there is the one named.
  remove_tree(o + "/train_results.json");
  for (const auto& cp : list_checkpoints(o)) remove_tree(cp.path);
  EXPECT_EQ(test::run_command(c, &out), 2) << out;
  EXPECT_NE(out.find("already holds the result of a finished run (model.safetensors)"), std::string::npos) << out;
  EXPECT_EQ(out.find("index.json"), std::string::npos) << out;
  // --overwrite_output_dir trains afresh. Its completion record goes at the start, so an
  // interrupted overwrite run is resumed by the plain command, not refused as finished.
  EXPECT_EQ(test::run_command(c + " --overwrite_output_dir", &out), 0) << out;  // finished again
  const pid_t again = test::spawn("env MGM_TEST_STALL_AFTER_STEP=2 " + c + " --overwrite_output_dir",
                                  o + "_overwrite.log");
  // The record goes before the first step; the run stalls after step 2 (its checkpoint
  // committed) until killed.
  const auto t0 = std::chrono::steady_clock::now();
  auto stalled = [&] {
    return path_exists(o + "_overwrite.log") &&
           read_file(o + "_overwrite.log").find("stalled after step 2") != std::string::npos;
  };
  while (!stalled() &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(300))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(stalled()) << read_file(o + "_overwrite.log");
  ::kill(again, SIGKILL);
  test::wait_exit(again, std::chrono::seconds(60));
  EXPECT_FALSE(path_exists(o + "/train_results.json"));
  EXPECT_EQ(test::run_command(c, &out), 0) << out;
  EXPECT_NE(out.find("resuming from " + o + "/checkpoint-"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(c + " --overwrite_output_dir", &out), 0) << out;
  EXPECT_NE(out.find("metrics.jsonl, loss.png, train_results.json\n"), std::string::npos) << out;
  // The closing line names only what was written: one step draws no loss.png.
  const std::string one = o + "_one_step";
  EXPECT_EQ(test::run_command(common(one, "finetune", "finetune.json") + " --max_steps 1 --save_strategy no"
                                  " --dataloader_num_workers 0",
                              &out),
            0)
      << out;
  EXPECT_FALSE(path_exists(one + "/loss.png"));
  EXPECT_NE(out.find("metrics.jsonl, train_results.json\n"), std::string::npos) << out;
  EXPECT_EQ(out.find("loss.png"), std::string::npos) << out;
}

// A second train_mgm on a folder in use is refused at once, naming the holder, and changes
// nothing; once the holder is gone (even by kill -9) the folder is free again.
TEST_F(TrainE2E, SecondRunOnTheSameFolderIsRefused) {
  const std::string root = test::temp_dir("e2e_lock");
  const std::string o = root + "/o";
  const std::string c = common(o, "finetune", "finetune.json") + " --max_steps 4 --save_steps 1 --dataloader_num_workers 0";
  // The first run stalls after step 1 (its checkpoint committed) until killed, holding the lock.
  const pid_t first = test::spawn("env MGM_TEST_STALL_AFTER_STEP=1 " + c, root + "/first.log");
  ASSERT_TRUE(test::wait_for_file(o + "/checkpoint-1/trainer_state.json", std::chrono::seconds(300)))
      << read_file(root + "/first.log");
  std::string out;
  EXPECT_EQ(test::run_command(c, &out), 2) << out;
  EXPECT_NE(out.find("--output_dir " + o + " is in use by host "), std::string::npos) << out;
  EXPECT_NE(out.find(str_cat(" pid ", first, " since ")), std::string::npos) << out;
  EXPECT_EQ(out.find("resuming"), std::string::npos) << out;
  EXPECT_TRUE(path_exists(o + "/checkpoint-1/trainer_state.json"));
  EXPECT_FALSE(path_exists(o + "/checkpoint-2"));
  ::kill(first, SIGKILL);
  EXPECT_EQ(test::wait_exit(first, std::chrono::seconds(60)), 128 + SIGKILL);
  // The kernel dropped the lock with the process: the same command now resumes and finishes.
  ASSERT_EQ(test::run_command(c, &out), 0) << out;
  EXPECT_NE(out.find("resuming from " + o + "/checkpoint-1"), std::string::npos) << out;
}

TEST_F(TrainE2E, NonFiniteLossStopsWithStepAndSamples) {
  const std::string o = test::temp_dir("e2e_nan");
  std::string out;
  const int rc = test::run_command(common(o, "finetune", "finetune.json") +
                                       " --max_steps 6 --learning_rate 1e12 --max_grad_norm 0 --save_steps 1"
                                       " --dataloader_num_workers 0",
                                   &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("non-finite loss or gradient norm"), std::string::npos) << out;
  EXPECT_NE(out.find("samples of the batch: "), std::string::npos) << out;
  EXPECT_NE(out.find("last good checkpoint: " + o + "/checkpoint-"), std::string::npos) << out;
}

TEST_F(TrainE2E, BadSamplesStopOrAreSkippedAndListed) {
  const std::string root = test::temp_dir("e2e_bad");
  // The finetune set with one sample pointing at a missing image.
  Json d = read_json_file(data() + "/finetune.json");
  std::string bad_id;
  for (auto& s : d)
    if (s.contains("image")) {
      s["image"] = "train/missing.png";
      bad_id = s["id"].is_string() ? s["id"].get<std::string>() : s["id"].dump();
      break;
    }
  write_json_file(root + "/bad.json", d);
  const std::string base = str_cat(MGM_TRAIN_BIN, " --stage finetune --model_config ", src("configs/models/tiny.json"),
                                   " --tokenizer ", data(), "/tokenizer/tokenizer.model --data_path ", root,
                                   "/bad.json --image_folder ", data(),
                                   "/images --per_device_train_batch_size 8 --progress none --save_strategy no"
                                   " --num_train_epochs 1 --dataloader_num_workers 2");
  std::string out;
  EXPECT_EQ(test::run_command(base + " --output_dir " + root + "/e", &out), 1) << out;
  EXPECT_NE(out.find(bad_id), std::string::npos) << out;
  EXPECT_NE(out.find("missing.png"), std::string::npos) << out;
  ASSERT_EQ(test::run_command(base + " --output_dir " + root + "/s --on_bad_sample skip", &out), 0) << out;
  const std::string listed = read_file(root + "/s/skipped_samples.jsonl");
  EXPECT_NE(listed.find(bad_id), std::string::npos) << listed;
  EXPECT_EQ(std::count(listed.begin(), listed.end(), '\n'), 1);
  EXPECT_EQ(read_json_file(root + "/s/train_results.json").at("skipped_samples").get<int64_t>(), 1);
  EXPECT_NE(test::run_command(base + " --output_dir " + root + "/z --on_bad_sample skip --max_bad_samples 0", &out), 0);
  EXPECT_NE(out.find("--max_bad_samples"), std::string::npos) << out;
}

}  // namespace
}  // namespace mgm::trainer
