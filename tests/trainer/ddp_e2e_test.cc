// Data parallel train_mgm for real: several processes over Gloo on the tiny model and generated
// data, launched the torchrun way (RANK/WORLD_SIZE/... set by the test, and by torchrun itself)
// and by --nproc_per_node. Checks: 2 ranks x batch b end with the weights of 1 process x b with
// accumulation 2 over the same micro-batches (plain and ZeRO-1), and of 1 process x 2b when
// every sample has the same number of supervised tokens; a killed rank or a failing one stops
// the others quickly with a message naming it and the step; the launcher tears everything down;
// LoRA with a second learning-rate group under ZeRO-1 matches one process;
// a 2-process ZeRO-1 run killed mid-way resumes to the uninterrupted run's weights.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"
#include "tests_util.h"
#include "trainer/checkpoint.h"

namespace mgm::trainer {
namespace {

using Clock = std::chrono::steady_clock;

using test::free_port;

size_t line_count(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  std::string line;
  while (std::getline(in, line)) ++n;
  return n;
}

// The workers train_mgm --nproc_per_node started, by the RANK in their environment.
std::vector<std::pair<int, pid_t>> workers_of(pid_t launcher) {
  std::vector<std::pair<int, pid_t>> out;
  std::ifstream children(str_cat("/proc/", launcher, "/task/", launcher, "/children"));
  pid_t c;
  while (children >> c) {
    std::ifstream env(str_cat("/proc/", c, "/environ"));
    std::string all((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    for (const std::string& kv : split(all, '\0'))
      if (starts_with(kv, "RANK=")) out.emplace_back(std::stoi(kv.substr(5)), c);
  }
  return out;
}

class DdpE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new std::string(test::temp_dir("ddp_data"));
    std::string out;
    ASSERT_EQ(
        test::run_command(str_cat(MGM_BIN, " data synth --out ", *data_,
                                  " --seed 3 --size 64 --eval_size 8 --vocab_size 512 --overwrite"),
                          &out),
        0)
        << out;
  }
  static void TearDownTestSuite() { delete data_; }
  static const std::string& data() { return *data_; }

  // A tiny finetune without stochastic layers (DropPath off), so runs can be compared exactly.
  static std::string cmd(const std::string& out, const std::string& json = "finetune.json") {
    return str_cat(
        MGM_TRAIN_BIN, " --stage finetune --model_config ", test::source_dir(),
        "/configs/models/tiny.json --tokenizer ", data(), "/tokenizer/tokenizer.model --data_path ",
        starts_with(json, "/") ? json : data() + "/" + json, " --image_folder ", data(),
        "/images --output_dir ", out,
        " --logging_steps 1 --progress none --seed 5 --aux_drop_path false --learning_rate 2e-3"
        " --dataloader_num_workers 1 --ddp_timeout 30");
  }

  // `world` processes started the torchrun way; returns each rank's exit code and output.
  static std::vector<std::pair<int, std::string>> run_ranks(int world, const std::string& command,
                                                            const std::string& logs) {
    const int port = free_port();
    std::vector<pid_t> pids;
    for (int r = 0; r < world; ++r)
      pids.push_back(test::spawn(str_cat("env RANK=", r, " LOCAL_RANK=", r, " WORLD_SIZE=", world,
                                   " LOCAL_WORLD_SIZE=", world,
                                   " MASTER_ADDR=127.0.0.1 MASTER_PORT=", port, " ", command),
                           str_cat(logs, ".rank", r)));
    std::vector<std::pair<int, std::string>> out;
    for (int r = 0; r < world; ++r) {
      const int rc = test::wait_exit(pids[static_cast<size_t>(r)], std::chrono::seconds(240));
      out.emplace_back(rc, read_file(str_cat(logs, ".rank", r)));
    }
    return out;
  }

  // Largest |a - b| over the model tensors of two finished runs (a folder or a tensor file);
  // infinite when the names differ or there are none.
  static double max_weight_diff(const std::string& a, const std::string& b,
                                int* not_equal = nullptr) {
    const auto wa = models::io::TensorStore::open(a);
    const auto wb = models::io::TensorStore::open(b);
    if (wa.names() != wb.names() || wa.names().empty())
      return std::numeric_limits<double>::infinity();
    double mx = 0;
    int ne = 0;
    for (const auto& n : wa.names()) {
      const at::Tensor x = wa.get(n), y = wb.get(n);
      mx = std::max(mx, (x.to(at::kDouble) - y.to(at::kDouble)).abs().max().item<double>());
      ne += !x.equal(y);
    }
    if (not_equal) *not_equal = ne;
    return mx;
  }

  static std::vector<double> metric(const std::string& out, const char* key) {
    std::vector<double> l;
    std::ifstream in(out + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) l.push_back(Json::parse(line).at(key).get<double>());
    return l;
  }
  static std::vector<double> losses(const std::string& out) { return metric(out, "loss"); }

  // The logged loss (the mean over ranks) and gradient norm (of the averaged gradient: AdamW
  // would hide a gradient of the wrong scale, the norm does not) agree step by step.
  static void expect_same_log(const std::string& a, const std::string& b) {
    for (const char* key : {"loss", "grad_norm"}) {
      const auto x = metric(a, key), y = metric(b, key);
      ASSERT_EQ(x.size(), y.size()) << key;
      for (size_t i = 0; i < x.size(); ++i)
        EXPECT_NEAR(x[i], y[i], 1e-5 * std::abs(x[i])) << key << " " << i;
    }
  }

 private:
  static std::string* data_;
};
std::string* DdpE2E::data_ = nullptr;

// fp32 reduction-order tolerance for weights that moved by ~1e-2 from values of order 1.
constexpr double kWeightTol = 1e-5;

TEST_F(DdpE2E, TwoRanksMatchOneRankAccumulating) {
  const std::string root = test::temp_dir("ddp_match");
  std::string out;
  const std::string steps = " --max_steps 6 --save_strategy no";
  ASSERT_EQ(
      test::run_command(cmd(root + "/one") + steps +
                            " --per_device_train_batch_size 4 --gradient_accumulation_steps 2",
                        &out),
      0)
      << out;
  const auto ranks = run_ranks(2,
                               cmd(root + "/two") + steps +
                                   " --per_device_train_batch_size 4 "
                                   "--expected_global_batch_size 8",
                               root + "/two.log");
  for (const auto& [rc, log] : ranks) ASSERT_EQ(rc, 0) << log;
  EXPECT_LE(max_weight_diff(root + "/one", root + "/two"), kWeightTol);
  // Rank 0 alone writes; the logged loss is the mean over both ranks, the one process's.
  expect_same_log(root + "/one", root + "/two");
  // The same under the real torchrun (its agent serves the store), from the venv's torch;
  // TMPDIR keeps the torchelastic_* folder it makes in the test's folder.
  ASSERT_EQ(test::run_command(str_cat("TMPDIR=", root, " ", MGM_PYTHON,
                                      " -m torch.distributed.run --no-python --nproc_per_node 2 "
                                      "--master_port ",
                                      free_port(), " ", cmd(root + "/torchrun"), steps,
                                      " --per_device_train_batch_size 4"),
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("torchrun, master"), std::string::npos) << out;
  EXPECT_LE(max_weight_diff(root + "/one", root + "/torchrun"), kWeightTol);
  EXPECT_EQ(ranks[1].second.find("{'loss'"), std::string::npos) << "rank 1 printed the log:\n"
                                                                << ranks[1].second;
  EXPECT_FALSE(path_exists(root + "/two/skipped_samples-rank1.jsonl"));
  // The global batch check counts the processes.
  EXPECT_NE(run_ranks(2,
                      cmd(root + "/bad") + steps +
                          " --per_device_train_batch_size 4 --expected_global_batch_size 4",
                      root + "/bad.log")[0]
                .second.find("x 2 (processes) = 8"),
            std::string::npos);
}

// ZeRO-1 through the launcher, with the modality-grouped sampler (text-only global batches
// leave the projector without gradients on every rank).
TEST_F(DdpE2E, ZeroOneThroughTheLauncherMatches) {
  const std::string root = test::temp_dir("ddp_zero");
  std::string out;
  const std::string common =
      " --max_steps 6 --save_strategy no --group_by_modality_length true"
      " --per_device_train_batch_size 4";
  ASSERT_EQ(
      test::run_command(cmd(root + "/one") + common + " --gradient_accumulation_steps 2", &out), 0)
      << out;
  ASSERT_EQ(
      test::run_command(cmd(root + "/zero") + common + " --nproc_per_node 2 --zero_stage 1", &out),
      0)
      << out;
  EXPECT_NE(out.find("nproc_per_node"), std::string::npos) << out;
  EXPECT_LE(max_weight_diff(root + "/one", root + "/zero"), kWeightTol);
  expect_same_log(root + "/one", root + "/zero");
}

// LoRA (adapters on a frozen LLM) with the projector in its own learning-rate group, ZeRO-1.
TEST_F(DdpE2E, LoraWithProjectorLearningRateMatches) {
  const std::string root = test::temp_dir("ddp_lora");
  std::string out;
  const std::string common =
      " --max_steps 6 --save_strategy no --per_device_train_batch_size 4 --lora_enable true"
      " --lora_r 4 --lora_alpha 8 --lora_dropout 0 --mm_projector_lr 1e-3";
  ASSERT_EQ(
      test::run_command(cmd(root + "/one") + common + " --gradient_accumulation_steps 2", &out), 0)
      << out;
  ASSERT_EQ(
      test::run_command(cmd(root + "/zero") + common + " --nproc_per_node 2 --zero_stage 1", &out),
      0)
      << out;
  for (const char* f : {"/adapter_model.safetensors", "/non_lora_trainables.bin"})
    EXPECT_LE(max_weight_diff(root + "/one" + f, root + "/zero" + f), kWeightTol) << f;
  expect_same_log(root + "/one", root + "/zero");
}

// On data where every sample has the same number of supervised tokens, the token mean of a 2b
// batch is the mean of the two b halves' means.
TEST_F(DdpE2E, EqualTokenCountsMatchOneDoubleBatch) {
  const std::string root = test::temp_dir("ddp_double");
  Json src = read_json_file(data() + "/finetune.json");
  Json same = Json::array();
  for (const auto& s : src) {
    if (!s.contains("image")) continue;
    Json t = s;
    t["conversations"] =
        Json::array({s["conversations"][0], Json{{"from", "gpt"}, {"value", "blue square"}}});
    same.push_back(t);
  }
  ASSERT_GE(same.size(), 48u);
  write_json_file(root + "/same.json", same);
  std::string out;
  const std::string steps = " --max_steps 5 --save_strategy no";
  ASSERT_EQ(test::run_command(cmd(root + "/one", root + "/same.json") + steps +
                                  " --per_device_train_batch_size 8",
                              &out),
            0)
      << out;
  for (const auto& [rc, log] : run_ranks(
           2, cmd(root + "/two", root + "/same.json") + steps + " --per_device_train_batch_size 4",
           root + "/two.log"))
    ASSERT_EQ(rc, 0) << log;
  EXPECT_LE(max_weight_diff(root + "/one", root + "/two"), kWeightTol);
  expect_same_log(root + "/one", root + "/two");
}

TEST_F(DdpE2E, KilledRankStopsTheOthersNamingIt) {
  const std::string root = test::temp_dir("ddp_kill");
  const int port = free_port();
  const std::string c = cmd(root + "/o") +
                        " --max_steps 2000 --save_strategy no --per_device_train_batch_size 4"
                        " --ddp_timeout 20";
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(test::spawn(str_cat("env RANK=", r, " LOCAL_RANK=", r,
                                 " WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=", port, " ", c),
                         str_cat(root, "/log", r)));
  const auto t0 = Clock::now();
  while (line_count(root + "/o/metrics.jsonl") < 3 && Clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GE(line_count(root + "/o/metrics.jsonl"), 3u) << read_file(root + "/log0");
  kill(pids[1], SIGKILL);
  waitpid(pids[1], nullptr, 0);
  double took = 0;
  const int rc = test::wait_exit(pids[0], std::chrono::seconds(90), &took);
  const std::string log = read_file(root + "/log0");
  EXPECT_EQ(rc, 1) << log;
  // --ddp_timeout (20 s) plus room for a loaded 2-core machine; a hang would blow it by far.
  EXPECT_LT(took, 20 + 20) << "not stopped within --ddp_timeout";
  EXPECT_NE(log.find("error: [rank 0/2] stopping: rank 1 stopped responding at step "),
            std::string::npos)
      << log;
}

TEST_F(DdpE2E, FailingRankStopsTheOthersWithItsError) {
  const std::string root = test::temp_dir("ddp_fail");
  Json d = read_json_file(data() + "/finetune.json");
  for (auto& s : d)
    if (s.value("id", "") == "000029") s["image"] = "train/missing.png";
  write_json_file(root + "/bad.json", d);
  const auto ranks =
      run_ranks(2,
                cmd(root + "/o", root + "/bad.json") +
                    " --max_steps 40 --save_strategy no --per_device_train_batch_size 4",
                root + "/log");
  // One rank reads the bad sample and fails with its error; the other stops, citing it.
  int failed = -1;
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(ranks[static_cast<size_t>(r)].first, 1) << ranks[static_cast<size_t>(r)].second;
    const std::string& log = ranks[static_cast<size_t>(r)].second;
    if (log.find(str_cat("error: [rank ", r, "/2] sample #")) != std::string::npos &&
        log.find("(id '000029'): ") != std::string::npos)
      failed = r;
  }
  ASSERT_GE(failed, 0) << ranks[0].second << ranks[1].second;
  const std::string& other = ranks[static_cast<size_t>(1 - failed)].second;
  EXPECT_NE(other.find(str_cat("stopping: rank ", failed, " failed at step ")), std::string::npos)
      << other;
  EXPECT_NE(other.find("missing.png"), std::string::npos) << other;
}

TEST_F(DdpE2E, LauncherTearsDownWhenAWorkerDies) {
  const std::string root = test::temp_dir("ddp_launcher");
  const pid_t launcher = test::spawn(cmd(root + "/o") +
                                   " --max_steps 2000 --save_strategy no --nproc_per_node 2"
                                   " --per_device_train_batch_size 4",
                               root + "/log");
  const auto t0 = Clock::now();
  while (line_count(root + "/o/metrics.jsonl") < 3 && Clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto workers = workers_of(launcher);
  ASSERT_EQ(workers.size(), 2u) << read_file(root + "/log");
  pid_t victim = 0, survivor = 0;
  for (const auto& [rank, pid] : workers) (rank == 1 ? victim : survivor) = pid;
  ASSERT_GT(victim, 0);
  kill(victim, SIGKILL);
  double took = 0;
  const int rc = test::wait_exit(launcher, std::chrono::seconds(90), &took);
  const std::string log = read_file(root + "/log");
  EXPECT_EQ(rc, 1) << log;
  // SIGTERM to the survivor, SIGKILL after 10 s at the latest; room for a loaded machine.
  EXPECT_LT(took, 30.0) << log;
  EXPECT_NE(log.find(str_cat("worker rank 1 (pid ", victim, ") was killed by signal 9")),
            std::string::npos)
      << log;
  EXPECT_NE(kill(survivor, 0), 0) << "worker rank 0 outlived its launcher";
}

// Kill a 2-process ZeRO-1 run (SIGTERM to the launcher, which stops its workers) after a
// checkpoint and rerun the command: it resumes there and ends with the uninterrupted run's
// weights, bit for bit; resuming with another world size is refused.
TEST_F(DdpE2E, TwoProcessResumeIsExact) {
  const std::string root = test::temp_dir("ddp_resume");
  const std::string args =
      " --max_steps 16 --save_steps 3 --per_device_train_batch_size 4"
      " --gradient_accumulation_steps 2 --lr_scheduler_type cosine --nproc_per_node 2"
      " --zero_stage 1";
  std::string out;
  ASSERT_EQ(test::run_command(cmd(root + "/a") + args, &out), 0) << out;
  const std::string b = root + "/b";
  // The run stalls after step 8 (tests/tests_util.h), so the SIGTERM always finds it running.
  const pid_t launcher = test::spawn("env MGM_TEST_STALL_AFTER_STEP=8 " + cmd(b) + args, root + "/b1.log");
  ASSERT_TRUE(test::wait_for_file(b + "/checkpoint-6/trainer_state.json", std::chrono::seconds(120)))
      << read_file(root + "/b1.log");
  kill(launcher, SIGTERM);
  EXPECT_EQ(test::wait_exit(launcher, std::chrono::seconds(90)), 128 + SIGTERM)
      << read_file(root + "/b1.log");
  ASSERT_FALSE(path_exists(b + "/model.safetensors")) << "stopped too late to test resuming";
  const std::string cp = list_checkpoints(b).back().path;
  for (const char* f :
       {"optimizer-zero1-rank0.safetensors", "optimizer-zero1-rank1.safetensors",
        "rng_state.safetensors", "rng_state-rank1.safetensors", "trainable.safetensors"})
    EXPECT_TRUE(path_exists(cp + "/" + f)) << cp << "/" << f;
  // One process cannot continue a 2-process checkpoint.
  EXPECT_EQ(test::run_command(
                cmd(root + "/c") +
                    " --max_steps 16 --save_steps 3 --per_device_train_batch_size 4"
                    " --gradient_accumulation_steps 2 --lr_scheduler_type cosine --zero_stage 1"
                    " --resume_from_checkpoint " +
                    cp,
                &out),
            2)
      << out;
  EXPECT_NE(out.find("world_size: checkpoint 2, now 1"), std::string::npos) << out;
  ASSERT_EQ(test::run_command(cmd(b) + args, &out), 0) << out;
  EXPECT_NE(out.find("resuming from " + cp), std::string::npos) << out;
  int not_equal = -1;
  EXPECT_EQ(max_weight_diff(root + "/a", b, &not_equal), 0.0);
  EXPECT_EQ(not_equal, 0);
  EXPECT_EQ(losses(root + "/a"), losses(b));
}

}  // namespace
}  // namespace mgm::trainer
