// Where a train_mgm process sits in a data-parallel job, read from the environment its launcher
// set (torchrun, SLURM srun, mpirun, or train_mgm's own --nproc_per_node), and that local
// launcher: it starts N workers of the same command on this machine, hosts their rendezvous
// store, supervises them, and tears all of them down when one fails. Torch-free on purpose:
// run_args needs the world size at parse time and the launcher must stay cheap.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace mgm::trainer {

struct LaunchEnv {
  // "none" (a single process, no launcher), "torchrun", "slurm", "mpirun", "nproc_per_node".
  std::string launcher = "none";
  int rank = 0, world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;  // 0 when the launcher does not say
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // A launcher agent (torchrun, --nproc_per_node) already serves the TCPStore at
  // MASTER_ADDR:MASTER_PORT: every rank connects as a client, under the key prefix
  // /worker/attempt_<restart_count>/ as torch.distributed does.
  bool agent_store = false;
  int restart_count = 0;
  bool distributed() const { return launcher != "none"; }
  std::string describe() const;  // "rank 1 of 4 (local 1 of 2, torchrun, master 10.0.0.1:29500)"
};

using Environment = std::map<std::string, std::string>;
Environment current_environment();

// Reads the launcher variables, in this order (the first complete set wins, as a process can
// inherit several: srun inside an allocation that mpirun or torchrun runs under):
//  * torchrun / torch.distributed.launch / deepspeed / train_mgm --nproc_per_node: RANK,
//    WORLD_SIZE, LOCAL_RANK (required), LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
//    TORCHELASTIC_USE_AGENT_STORE, TORCHELASTIC_RESTART_COUNT;
//  * Open MPI: OMPI_COMM_WORLD_RANK/_SIZE/_LOCAL_RANK/_LOCAL_SIZE; MPICH / Intel MPI: PMI_RANK,
//    PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS; master from MASTER_ADDR/MASTER_PORT (needed
//    across nodes; 127.0.0.1:29500 when every rank is local);
//  * SLURM srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, the tasks per node
//    (SLURM_NTASKS_PER_NODE or SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE); master from
//    MASTER_ADDR or the first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST,
//    port from MASTER_PORT or 20000 + SLURM_JOB_ID % 10000 (so two jobs sharing a node differ).
// Throws UsageError naming the variable that is missing, malformed or out of range.
LaunchEnv detect_launch_env(const Environment& env);
LaunchEnv detect_launch_env();  // of this process

// Slurm's compact host lists: "node[01-03,07],gpu7,rack[1-2]-n[1-2]" -> node01 node02 node03
// node07 gpu7 rack1-n1 rack1-n2 rack2-n1 rack2-n2 (zero padding kept). Throws UsageError.
std::vector<std::string> expand_slurm_nodelist(const std::string& list);
// "2(x3),1" -> 2 2 2 1 (SLURM_TASKS_PER_NODE). Throws UsageError.
std::vector<int> expand_slurm_tasks_per_node(const std::string& spec);

// Set in the environment of the workers train_mgm --nproc_per_node starts: they run the same
// command line and must not start workers of their own.
constexpr const char* kWorkerEnvVar = "MGM_NPROC_WORKER";
bool is_launched_worker();

struct LocalLaunchOptions {
  int nproc = 1;
  int master_port = 0;  // 0: a free port
  int timeout_s = 600;  // rendezvous store timeout (--ddp_timeout)
  int grace_s = 10;     // SIGTERM -> SIGKILL delay when tearing the workers down
};

// train_mgm --nproc_per_node N: hosts a TCPStore on 127.0.0.1, starts N copies of `exe` with
// `args` and the torchrun variables (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE=True, OMP_NUM_THREADS = cores / N unless set),
// forwards SIGINT/SIGTERM to them, and waits. When a worker dies or exits non-zero, the others
// are stopped (SIGTERM, then SIGKILL after grace_s) and the failure is reported with the rank
// and, when the worker left one in the store, its message. Returns the exit code for main():
// 0 when every worker succeeded, the failed worker's code (1 for a signal) otherwise.
int run_local_launcher(const std::string& exe, const std::vector<std::string>& args,
                       const LocalLaunchOptions& opts);

}  // namespace mgm::trainer
