// The launchers' environments as train_mgm reads them: torchrun, Open MPI, SLURM (host lists and
// tasks per node included), their precedence, and the errors for incomplete or bad variables.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "trainer/distributed.h"
#include "trainer/launcher.h"
#include "trainer/run_args.h"

namespace mgm::trainer {
namespace {

using V = std::vector<std::string>;

TEST(Launcher, NoLauncherIsOneProcess) {
  const LaunchEnv e = detect_launch_env(Environment{{"HOME", "/root"}, {"RANK", ""}});
  EXPECT_FALSE(e.distributed());
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.rank, 0);
}

TEST(Launcher, Torchrun) {
  const LaunchEnv e = detect_launch_env(Environment{{"RANK", "5"},
                                                    {"WORLD_SIZE", "8"},
                                                    {"LOCAL_RANK", "1"},
                                                    {"LOCAL_WORLD_SIZE", "4"},
                                                    {"MASTER_ADDR", "10.1.2.3"},
                                                    {"MASTER_PORT", "29400"},
                                                    {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                                    {"TORCHELASTIC_RESTART_COUNT", "2"}});
  EXPECT_EQ(e.launcher, "torchrun");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "10.1.2.3");
  EXPECT_EQ(e.master_port, 29400);
  EXPECT_TRUE(e.agent_store);
  EXPECT_EQ(e.restart_count, 2);
  EXPECT_EQ(e.describe(), "rank 5 of 8 (local rank 1 of 4, torchrun, master 10.1.2.3:29400)");
  // Set by hand (torch.distributed's env:// without an agent): rank 0 serves the store.
  const LaunchEnv m = detect_launch_env(Environment{{"RANK", "0"},
                                                    {"WORLD_SIZE", "2"},
                                                    {"LOCAL_RANK", "0"},
                                                    {"MASTER_ADDR", "h"},
                                                    {"MASTER_PORT", "1234"}});
  EXPECT_FALSE(m.agent_store);
  EXPECT_EQ(m.local_world_size, 0);  // not given
  // The workers of --nproc_per_node say so.
  EXPECT_EQ(detect_launch_env(
                Environment{
                    {"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOCAL_RANK", "0"}, {kWorkerEnvVar, "1"}})
                .launcher,
            "nproc_per_node");
}

TEST(Launcher, TorchrunErrorsNameTheVariable) {
  auto err = [](const Environment& env) {
    try {
      detect_launch_env(env);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const Environment ok{{"RANK", "1"},
                       {"WORLD_SIZE", "2"},
                       {"LOCAL_RANK", "1"},
                       {"MASTER_ADDR", "h"},
                       {"MASTER_PORT", "29500"}};
  EXPECT_EQ(err(ok), "no error");
  auto without = [&](const char* k) {
    Environment e = ok;
    e.erase(k);
    return e;
  };
  auto with = [&](const char* k, const char* v) {
    Environment e = ok;
    e[k] = v;
    return e;
  };
  EXPECT_NE(err(without("WORLD_SIZE")).find("WORLD_SIZE is not set"), std::string::npos);
  EXPECT_NE(err(without("LOCAL_RANK")).find("LOCAL_RANK is not"), std::string::npos);
  EXPECT_NE(err(without("MASTER_ADDR")).find("MASTER_ADDR is not set"), std::string::npos);
  EXPECT_NE(err(without("MASTER_PORT")).find("MASTER_PORT is not set"), std::string::npos);
  EXPECT_NE(err(with("RANK", "2")).find("RANK=2 is not below WORLD_SIZE=2"), std::string::npos);
  EXPECT_NE(err(with("RANK", "one")).find("RANK='one': expected an integer"), std::string::npos);
  EXPECT_NE(err(with("MASTER_PORT", "70000")).find("MASTER_PORT='70000'"), std::string::npos);
  EXPECT_NE(err(with("WORLD_SIZE", "0")).find("WORLD_SIZE='0'"), std::string::npos);
}

TEST(Launcher, OpenMpi) {
  const LaunchEnv e = detect_launch_env(Environment{
      {"OMPI_COMM_WORLD_RANK", "3"},
      {"OMPI_COMM_WORLD_SIZE", "4"},
      {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
      {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
      // mpirun inside a SLURM allocation: the batch step's variables are inherited, OMPI wins.
      {"SLURM_PROCID", "0"},
      {"SLURM_NTASKS", "4"},
      {"SLURM_LOCALID", "0"},
      {"SLURM_JOB_NODELIST", "n1"}});
  EXPECT_EQ(e.launcher, "mpirun");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 3);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "127.0.0.1");  // every rank is local
  EXPECT_EQ(e.master_port, 29500);
  // Across nodes the master must be named.
  EXPECT_THROW(detect_launch_env(Environment{{"OMPI_COMM_WORLD_RANK", "3"},
                                             {"OMPI_COMM_WORLD_SIZE", "8"},
                                             {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
                                             {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}}),
               UsageError);
  const LaunchEnv m = detect_launch_env(Environment{{"OMPI_COMM_WORLD_RANK", "5"},
                                                    {"OMPI_COMM_WORLD_SIZE", "8"},
                                                    {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                    {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                                                    {"MASTER_ADDR", "node01"},
                                                    {"MASTER_PORT", "23456"}});
  EXPECT_EQ(m.master_addr, "node01");
  EXPECT_EQ(m.master_port, 23456);
}

TEST(Launcher, MpichAndIntelMpi) {
  const LaunchEnv e = detect_launch_env(Environment{{"PMI_RANK", "6"},
                                                    {"PMI_SIZE", "8"},
                                                    {"MPI_LOCALRANKID", "2"},
                                                    {"MPI_LOCALNRANKS", "4"},
                                                    {"MASTER_ADDR", "node01"},
                                                    // Hydra's proxies run as SLURM tasks.
                                                    {"SLURM_PROCID", "1"},
                                                    {"SLURM_NTASKS", "2"},
                                                    {"SLURM_LOCALID", "0"}});
  EXPECT_EQ(e.launcher, "mpirun");
  EXPECT_EQ(e.rank, 6);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "node01");
  // Across nodes without MASTER_ADDR, and without the local rank: refused by name.
  EXPECT_THROW(detect_launch_env(Environment{{"PMI_RANK", "6"},
                                             {"PMI_SIZE", "8"},
                                             {"MPI_LOCALRANKID", "2"},
                                             {"MPI_LOCALNRANKS", "4"}}),
               UsageError);
  // srun --mpi=pmi2: Slurm's PMI variables without Hydra's local ones are a SLURM launch.
  const LaunchEnv s = detect_launch_env(Environment{{"PMI_RANK", "5"},
                                                    {"PMI_SIZE", "8"},
                                                    {"PMI_FD", "7"},
                                                    {"SLURM_PROCID", "5"},
                                                    {"SLURM_NTASKS", "8"},
                                                    {"SLURM_LOCALID", "1"},
                                                    {"SLURM_NTASKS_PER_NODE", "4"},
                                                    {"SLURM_JOB_NODELIST", "gpu[01-02]"}});
  EXPECT_EQ(s.launcher, "slurm");
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.master_addr, "gpu01");
  try {
    detect_launch_env(Environment{{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}});
    ADD_FAILURE() << "no error";
  } catch (const UsageError& x) {
    EXPECT_NE(std::string(x.what()).find("MPI_LOCALRANKID"), std::string::npos) << x.what();
  }
}

TEST(Launcher, Slurm) {
  const LaunchEnv e = detect_launch_env(Environment{{"SLURM_PROCID", "6"},
                                                    {"SLURM_NTASKS", "8"},
                                                    {"SLURM_LOCALID", "2"},
                                                    {"SLURM_NODEID", "1"},
                                                    {"SLURM_STEP_TASKS_PER_NODE", "4(x2)"},
                                                    {"SLURM_JOB_NODELIST", "gpu[07-08,11]"},
                                                    {"SLURM_STEP_NODELIST", "gpu[07-08]"},
                                                    {"SLURM_JOB_ID", "1234567"}});
  EXPECT_EQ(e.launcher, "slurm");
  EXPECT_EQ(e.rank, 6);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "gpu07");       // first host of the step
  EXPECT_EQ(e.master_port, 20000 + 4567);  // from the job id
  // MASTER_ADDR / MASTER_PORT win; SLURM_NTASKS_PER_NODE gives the local size directly.
  const LaunchEnv m = detect_launch_env(Environment{{"SLURM_PROCID", "1"},
                                                    {"SLURM_NTASKS", "2"},
                                                    {"SLURM_LOCALID", "1"},
                                                    {"SLURM_NTASKS_PER_NODE", "2"},
                                                    {"SLURM_NODELIST", "a1"},
                                                    {"MASTER_ADDR", "head"},
                                                    {"MASTER_PORT", "30000"}});
  EXPECT_EQ(m.master_addr, "head");
  EXPECT_EQ(m.master_port, 30000);
  EXPECT_EQ(m.local_world_size, 2);
  // Heterogeneous nodes: the count of this node.
  const LaunchEnv h = detect_launch_env(Environment{{"SLURM_PROCID", "6"},
                                                    {"SLURM_NTASKS", "7"},
                                                    {"SLURM_LOCALID", "0"},
                                                    {"SLURM_NODEID", "3"},
                                                    {"SLURM_TASKS_PER_NODE", "2(x3),1"},
                                                    {"SLURM_JOB_NODELIST", "n[1-4]"}});
  EXPECT_EQ(h.local_world_size, 1);
  EXPECT_EQ(h.master_addr, "n1");
  EXPECT_EQ(h.master_port, 29500);  // no job id
  // torchrun under srun: torchrun's variables win.
  EXPECT_EQ(detect_launch_env(Environment{{"SLURM_PROCID", "0"},
                                          {"SLURM_NTASKS", "2"},
                                          {"SLURM_LOCALID", "0"},
                                          {"RANK", "3"},
                                          {"WORLD_SIZE", "4"},
                                          {"LOCAL_RANK", "1"},
                                          {"MASTER_ADDR", "x"},
                                          {"MASTER_PORT", "1"}})
                .rank,
            3);
  EXPECT_THROW(detect_launch_env(Environment{
                   {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}}),
               UsageError);  // nowhere to find rank 0
  EXPECT_THROW(detect_launch_env(Environment{
                   {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_NODELIST", "a"}}),
               UsageError);  // no SLURM_LOCALID
}

TEST(Launcher, SlurmHostLists) {
  EXPECT_EQ(expand_slurm_nodelist("node[01-03,07]"), (V{"node01", "node02", "node03", "node07"}));
  EXPECT_EQ(expand_slurm_nodelist("gpu7"), (V{"gpu7"}));
  EXPECT_EQ(expand_slurm_nodelist("a[8-10],b,c[1,3]"), (V{"a8", "a9", "a10", "b", "c1", "c3"}));
  EXPECT_EQ(expand_slurm_nodelist("rack[1-2]-n[1-2]"),
            (V{"rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"}));
  EXPECT_EQ(expand_slurm_nodelist("x[098-101].cluster"),
            (V{"x098.cluster", "x099.cluster", "x100.cluster", "x101.cluster"}));
  for (const char* bad : {"node[01-03", "node01]", "node[]", "node[3-1]", "node[a-b]", "a,,b", ""})
    EXPECT_THROW(expand_slurm_nodelist(bad), UsageError) << bad;
}

TEST(Launcher, SlurmTasksPerNode) {
  EXPECT_EQ(expand_slurm_tasks_per_node("2(x3),1"), (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(expand_slurm_tasks_per_node("8"), (std::vector<int>{8}));
  EXPECT_EQ(expand_slurm_tasks_per_node("4,4(x2)"), (std::vector<int>{4, 4, 4}));
  for (const char* bad : {"2(x", "x", "2(xa)", "-1"})
    EXPECT_THROW(expand_slurm_tasks_per_node(bad), UsageError) << bad;
}

TEST(Launcher, DevicePerRank) {
  LaunchEnv one;
  EXPECT_EQ(device_for_rank("cuda", one), "cuda");
  EXPECT_EQ(device_for_rank("cuda:1", one), "cuda:1");
  LaunchEnv e;
  e.launcher = "torchrun";
  e.rank = 3;
  e.world_size = 4;
  e.local_rank = 1;
  EXPECT_EQ(device_for_rank("cuda", e), "cuda:1");
  EXPECT_EQ(device_for_rank("cuda", e, 4), "cuda:1");
  EXPECT_EQ(device_for_rank("cuda", e, 1), "cuda:0");  // srun --gpus-per-task=1: its own GPU
  EXPECT_EQ(device_for_rank("cpu", e), "cpu");
  EXPECT_THROW(device_for_rank("cuda:0", e), UsageError);  // one GPU per process: LOCAL_RANK's
}

// Sets environment variables for one scope (and restores them).
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::string>& vars) {
    for (const auto& [k, v] : vars) {
      const char* old = std::getenv(k.c_str());
      saved_.emplace_back(k, old ? std::make_optional<std::string>(old) : std::nullopt);
      setenv(k.c_str(), v.c_str(), 1);
    }
  }
  ~ScopedEnv() {
    for (const auto& [k, v] : saved_) {
      if (v)
        setenv(k.c_str(), v->c_str(), 1);
      else
        unsetenv(k.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

std::string parse_error(std::vector<std::string> extra) {
  std::vector<std::string> args{
      "--stage",      "finetune", "--model_config", "configs/models/tiny.json",
      "--tokenizer",  "t.model",  "--data_path",    "d.json",
      "--output_dir", "o"};
  args.insert(args.end(), extra.begin(), extra.end());
  TrainArgs a;
  std::string help;
  try {
    parse_train_args(args, &a, &help);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(Launcher, TrainArgsTakeTheWorldFromTheLauncher) {
  {
    const ScopedEnv env({{"RANK", "1"},
                         {"WORLD_SIZE", "4"},
                         {"LOCAL_RANK", "1"},
                         {"MASTER_ADDR", "h"},
                         {"MASTER_PORT", "29500"}});
    TrainArgs a;
    std::string help;
    ASSERT_TRUE(parse_train_args(
        {"--stage", "finetune", "--model_config", "c.json", "--tokenizer", "t", "--data_path", "d",
         "--output_dir", "o", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps",
         "4", "--expected_global_batch_size", "128", "--local_rank", "1"},
        &a, &help));
    EXPECT_EQ(a.world_size(), 4);
    EXPECT_EQ(a.launch.rank, 1);
    EXPECT_EQ(a.to_json().at("world_size"), 4);
    EXPECT_NE(
        parse_error({"--per_device_train_batch_size", "8", "--expected_global_batch_size", "8"})
            .find("8 (per device) x 1 (accumulation) x 4 (processes) = 32"),
        std::string::npos);
    EXPECT_NE(parse_error({"--local_rank", "0"}).find("--local_rank 0 contradicts"),
              std::string::npos);
    // Workers of a launcher must not launch workers themselves.
    EXPECT_NE(parse_error({"--nproc_per_node", "2"}).find("already started by torchrun"),
              std::string::npos);
  }
  {
    // One SLURM task starting its own workers (srun -n1 ... --nproc_per_node, as srun torchrun).
    const ScopedEnv env({{"SLURM_PROCID", "0"},
                         {"SLURM_NTASKS", "1"},
                         {"SLURM_LOCALID", "0"},
                         {"SLURM_JOB_NODELIST", "gpu07"}});
    TrainArgs a;
    std::string help;
    ASSERT_TRUE(
        parse_train_args({"--stage", "finetune", "--model_config", "c.json", "--tokenizer", "t",
                          "--data_path", "d", "--output_dir", "o", "--nproc_per_node", "4"},
                         &a, &help));
    EXPECT_EQ(a.world_size(), 4);
  }
  {
    const ScopedEnv env({{"SLURM_PROCID", "1"},
                         {"SLURM_NTASKS", "2"},
                         {"SLURM_LOCALID", "1"},
                         {"SLURM_JOB_NODELIST", "gpu07"}});
    EXPECT_NE(parse_error({"--nproc_per_node", "2"}).find("already started by slurm"),
              std::string::npos);
  }
  {
    // The local launcher itself: its world is --nproc_per_node.
    TrainArgs a;
    std::string help;
    ASSERT_TRUE(
        parse_train_args({"--stage", "finetune", "--model_config", "c.json", "--tokenizer", "t",
                          "--data_path", "d", "--output_dir", "o", "--nproc_per_node", "3"},
                         &a, &help));
    EXPECT_EQ(a.world_size(), 3);
    EXPECT_FALSE(a.launch.distributed());
  }
  EXPECT_NE(parse_error({"--zero_stage", "2"}).find("--zero_stage: expected 0 or 1"),
            std::string::npos);
  EXPECT_NE(
      parse_error({"--ddp_backend", "mpi"}).find("--ddp_backend: expected auto, nccl or gloo"),
      std::string::npos);
  EXPECT_NE(parse_error({"--ddp_timeout", "0"}).find("--ddp_timeout must be positive"),
            std::string::npos);
  EXPECT_NE(parse_error({"--ddp_bucket_cap_mb", "0"}).find("--ddp_bucket_cap_mb must be positive"),
            std::string::npos);
  // A bad launcher variable fails at parse time, naming it.
  const ScopedEnv bad({{"SLURM_PROCID", "x"}, {"SLURM_NTASKS", "2"}});
  EXPECT_NE(parse_error({}).find("SLURM_PROCID='x'"), std::string::npos);
}

// Resume refuses another world size or zero stage; older checkpoints (no zero_stage) mean 0.
TEST(Launcher, ResumeRefusesAnotherWorldOrZeroStage) {
  Json saved{{"world_size", 2}, {"zero_stage", 1}};
  Json now{{"world_size", 1}, {"zero_stage", 0}};
  const auto bad = resume_incompatibilities(saved, now);
  ASSERT_EQ(bad.size(), 2u);
  EXPECT_EQ(bad[0], "world_size: checkpoint 2, now 1");
  EXPECT_EQ(bad[1], "zero_stage: checkpoint 1, now 0");
  EXPECT_TRUE(
      resume_incompatibilities(Json{{"world_size", 1}}, Json{{"world_size", 1}, {"zero_stage", 0}})
          .empty());
}

}  // namespace
}  // namespace mgm::trainer
