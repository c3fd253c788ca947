#include "trainer/launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "common/strings.h"
#include "trainer/distributed.h"

extern char** environ;

namespace mgm::trainer {

namespace {

const std::string* lookup(const Environment& env, const char* key) {
  const auto it = env.find(key);
  return it == env.end() || it->second.empty() ? nullptr : &it->second;
}

int env_int(const Environment& env, const char* key, int lo, int hi) {
  const std::string* v = lookup(env, key);
  if (v == nullptr) throw UsageError(str_cat("environment variable ", key, " is not set"));
  const std::string t = trim(*v);
  bool digits = !t.empty();
  for (char c : t) digits = digits && c >= '0' && c <= '9';
  long long n = digits && t.size() <= 10 ? std::stoll(t) : -1;
  if (!digits || n < lo || n > hi)
    throw UsageError(str_cat("environment variable ", key, "='", *v, "': expected an integer in [",
                             lo, ", ", hi, "]"));
  return static_cast<int>(n);
}

int env_int_or(const Environment& env, const char* key, int fallback, int lo, int hi) {
  return lookup(env, key) ? env_int(env, key, lo, hi) : fallback;
}

constexpr int kMaxRanks = 1 << 20;

void check_ranks(const LaunchEnv& e, const char* rank_var, const char* world_var,
                 const char* local_var) {
  if (e.rank >= e.world_size)
    throw UsageError(
        str_cat(rank_var, "=", e.rank, " is not below ", world_var, "=", e.world_size));
  if (e.local_world_size > 0 && e.local_rank >= e.local_world_size)
    throw UsageError(str_cat(local_var, "=", e.local_rank, " is not below the local world size ",
                             e.local_world_size));
}

// Digits of a host-list range bound, zero-padded to the width the list wrote it with.
std::string pad(long long v, size_t width) {
  std::string s = std::to_string(v);
  return s.size() < width ? std::string(width - s.size(), '0') + s : s;
}

std::vector<std::string> expand_host(const std::string& host, const std::string& whole) {
  const size_t open = host.find('[');
  if (open == std::string::npos) {
    if (host.find(']') != std::string::npos)
      throw UsageError(str_cat("host list '", whole, "': unbalanced ']'"));
    return {host};
  }
  const size_t close = host.find(']', open);
  if (close == std::string::npos)
    throw UsageError(str_cat("host list '", whole, "': unbalanced '['"));
  const std::string prefix = host.substr(0, open);
  const std::string inside = host.substr(open + 1, close - open - 1);
  const std::vector<std::string> rest = expand_host(host.substr(close + 1), whole);
  if (inside.empty()) throw UsageError(str_cat("host list '", whole, "': empty brackets"));
  std::vector<std::string> out;
  for (const std::string& range : split(inside, ',')) {
    const size_t dash = range.find('-');
    const std::string a = dash == std::string::npos ? range : range.substr(0, dash);
    const std::string b = dash == std::string::npos ? range : range.substr(dash + 1);
    auto number = [&](const std::string& s) {
      bool ok = !s.empty() && s.size() <= 12;
      for (char c : s) ok = ok && c >= '0' && c <= '9';
      if (!ok) throw UsageError(str_cat("host list '", whole, "': bad range '", range, "'"));
      return std::stoll(s);
    };
    const long long lo = number(a), hi = number(b);
    if (hi < lo || hi - lo > 100000)
      throw UsageError(str_cat("host list '", whole, "': bad range '", range, "'"));
    for (long long v = lo; v <= hi; ++v)
      for (const std::string& r : rest) out.push_back(prefix + pad(v, a.size()) + r);
  }
  return out;
}

}  // namespace

std::string LaunchEnv::describe() const {
  if (!distributed()) return "a single process";
  return str_cat("rank ", rank, " of ", world_size, " (local rank ", local_rank,
                 local_world_size > 0 ? str_cat(" of ", local_world_size) : std::string(), ", ",
                 launcher, ", master ", master_addr, ":", master_port, ")");
}

Environment current_environment() {
  Environment env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq != nullptr)
      env.emplace(std::string(*e, static_cast<size_t>(eq - *e)), std::string(eq + 1));
  }
  return env;
}

std::vector<std::string> expand_slurm_nodelist(const std::string& list) {
  // Top-level commas separate hosts; commas inside brackets separate ranges.
  std::vector<std::string> hosts, out;
  std::string cur;
  int depth = 0;
  for (char c : list) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0) throw UsageError(str_cat("host list '", list, "': unbalanced ']'"));
    if (c == ',' && depth == 0) {
      hosts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  hosts.push_back(cur);
  for (const std::string& h : hosts) {
    const std::string t = trim(h);
    if (t.empty()) throw UsageError(str_cat("host list '", list, "': empty host name"));
    for (auto& x : expand_host(t, list)) out.push_back(x);
  }
  return out;
}

std::vector<int> expand_slurm_tasks_per_node(const std::string& spec) {
  std::vector<int> out;
  for (const std::string& part : split(spec, ',')) {
    const std::string p = trim(part);
    const size_t x = p.find("(x");
    const std::string count = x == std::string::npos ? p : p.substr(0, x);
    int times = 1;
    if (x != std::string::npos) {
      if (p.back() != ')')
        throw UsageError(str_cat("tasks per node '", spec, "': bad item '", p, "'"));
      Environment e{{"n", p.substr(x + 2, p.size() - x - 3)}};
      times = env_int(e, "n", 1, kMaxRanks);
    }
    Environment e{{"n", count}};
    int n = 0;
    try {
      n = env_int(e, "n", 0, kMaxRanks);
    } catch (const UsageError&) {
      throw UsageError(str_cat("tasks per node '", spec, "': bad item '", p, "'"));
    }
    for (int i = 0; i < times; ++i) out.push_back(n);
  }
  return out;
}

LaunchEnv detect_launch_env(const Environment& env) {
  LaunchEnv e;
  if (lookup(env, "RANK") || lookup(env, "WORLD_SIZE")) {
    e.launcher = lookup(env, kWorkerEnvVar) ? "nproc_per_node" : "torchrun";
    e.world_size = env_int(env, "WORLD_SIZE", 1, kMaxRanks);
    e.rank = env_int(env, "RANK", 0, kMaxRanks);
    if (!lookup(env, "LOCAL_RANK"))
      throw UsageError(
          "RANK and WORLD_SIZE are set but LOCAL_RANK is not (torchrun sets all "
          "three; set LOCAL_RANK so each process takes its own GPU)");
    e.local_rank = env_int(env, "LOCAL_RANK", 0, kMaxRanks);
    e.local_world_size = env_int_or(env, "LOCAL_WORLD_SIZE", 0, 1, kMaxRanks);
    if (e.world_size > 1 && (!lookup(env, "MASTER_ADDR") || !lookup(env, "MASTER_PORT")))
      throw UsageError(
          str_cat(lookup(env, "MASTER_ADDR") ? "MASTER_PORT" : "MASTER_ADDR",
                  " is not set (with RANK/WORLD_SIZE, the rendezvous address of rank 0 "
                  "must be given as MASTER_ADDR and MASTER_PORT)"));
    if (lookup(env, "MASTER_ADDR")) e.master_addr = *lookup(env, "MASTER_ADDR");
    e.master_port = env_int_or(env, "MASTER_PORT", 29500, 1, 65535);
    const std::string* agent = lookup(env, "TORCHELASTIC_USE_AGENT_STORE");
    e.agent_store = agent != nullptr && (to_lower(*agent) == "true" || *agent == "1");
    e.restart_count = env_int_or(env, "TORCHELASTIC_RESTART_COUNT", 0, 0, kMaxRanks);
    check_ranks(e, "RANK", "WORLD_SIZE", "LOCAL_RANK");
    return e;
  }
  // Open MPI's variables, then MPICH's / Intel MPI's (Hydra): rank, size, local rank, local size.
  static const char* const kMpi[2][4] = {
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
       "OMPI_COMM_WORLD_LOCAL_SIZE"},
      {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"}};
  for (size_t row = 0; row < 2; ++row) {
    const char* const* v = kMpi[row];
    if (!lookup(env, v[0]) && !lookup(env, v[1])) continue;
    // Slurm's own PMI2 plugin (srun --mpi=pmi2) sets PMI_RANK/PMI_SIZE but not Hydra's local
    // variables: such a task is a SLURM task.
    if (row == 1 && !lookup(env, v[2]) && lookup(env, "SLURM_PROCID")) continue;
    e.launcher = "mpirun";
    e.world_size = env_int(env, v[1], 1, kMaxRanks);
    e.rank = env_int(env, v[0], 0, kMaxRanks);
    e.local_rank = env_int(env, v[2], 0, kMaxRanks);
    e.local_world_size = env_int(env, v[3], 1, kMaxRanks);
    if (lookup(env, "MASTER_ADDR")) {
      e.master_addr = *lookup(env, "MASTER_ADDR");
    } else if (e.local_world_size != e.world_size) {
      throw UsageError(
          "mpirun across several nodes: set MASTER_ADDR to the host of rank 0 (e.g. "
          "mpirun -x MASTER_ADDR=node01 -x MASTER_PORT=29500 ...)");
    }
    e.master_port = env_int_or(env, "MASTER_PORT", 29500, 1, 65535);
    check_ranks(e, v[0], v[1], v[2]);
    return e;
  }
  if (lookup(env, "SLURM_PROCID") && lookup(env, "SLURM_NTASKS")) {
    e.launcher = "slurm";
    e.world_size = env_int(env, "SLURM_NTASKS", 1, kMaxRanks);
    e.rank = env_int(env, "SLURM_PROCID", 0, kMaxRanks);
    e.local_rank = env_int(env, "SLURM_LOCALID", 0, kMaxRanks);
    e.local_world_size = 0;
    const std::string* per_node = lookup(env, "SLURM_NTASKS_PER_NODE");
    const std::string* spec = lookup(env, "SLURM_STEP_TASKS_PER_NODE");
    if (spec == nullptr) spec = lookup(env, "SLURM_TASKS_PER_NODE");
    if (per_node != nullptr && per_node->find_first_not_of("0123456789") == std::string::npos) {
      e.local_world_size = env_int(env, "SLURM_NTASKS_PER_NODE", 1, kMaxRanks);
    } else if (spec != nullptr) {
      const std::vector<int> counts = expand_slurm_tasks_per_node(*spec);
      const int node = env_int_or(env, "SLURM_NODEID", 0, 0, kMaxRanks);
      if (static_cast<size_t>(node) < counts.size())
        e.local_world_size = counts[static_cast<size_t>(node)];
    }
    if (lookup(env, "MASTER_ADDR")) {
      e.master_addr = *lookup(env, "MASTER_ADDR");
    } else {
      const char* vars[] = {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"};
      const std::string* list = nullptr;
      for (const char* v : vars)
        if ((list = lookup(env, v)) != nullptr) break;
      if (list == nullptr) {
        if (e.world_size > 1)
          throw UsageError(
              "SLURM: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set: cannot tell where "
              "rank 0 runs");
      } else {
        e.master_addr = expand_slurm_nodelist(*list).front();
      }
    }
    if (lookup(env, "MASTER_PORT")) {
      e.master_port = env_int(env, "MASTER_PORT", 1, 65535);
    } else if (lookup(env, "SLURM_JOB_ID")) {
      const std::string& id = *lookup(env, "SLURM_JOB_ID");
      const std::string digits = id.substr(0, id.find_first_not_of("0123456789"));
      if (digits.empty()) throw UsageError(str_cat("SLURM_JOB_ID='", id, "': expected a number"));
      e.master_port =
          20000 +
          static_cast<int>(std::stoull(digits.substr(digits.size() > 9 ? digits.size() - 9 : 0)) %
                           10000);
    }
    check_ranks(e, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID");
    return e;
  }
  return e;
}

LaunchEnv detect_launch_env() { return detect_launch_env(current_environment()); }

bool is_launched_worker() {
  const char* v = std::getenv(kWorkerEnvVar);
  return v != nullptr && *v != '\0';
}

namespace {

std::string describe_status(int status) {
  if (WIFEXITED(status)) return str_cat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return str_cat("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)),
                   ")");
  return "stopped";
}

std::string store_text(c10d::TCPStore& store, const std::string& key) {
  try {
    if (!store.check({key})) return "";
    const std::vector<uint8_t> v = store.get(key);
    return std::string(v.begin(), v.end());
  } catch (const std::exception&) {
    return "";
  }
}

}  // namespace

int run_local_launcher(const std::string& exe, const std::vector<std::string>& args,
                       const LocalLaunchOptions& o) {
  if (o.nproc < 1) throw UsageError(str_cat("--nproc_per_node must be at least 1, got ", o.nproc));
  // The signals are taken synchronously (sigtimedwait) and must be blocked in every thread,
  // so before the store starts its threads; the workers get the old mask back.
  sigset_t handled, old_mask;
  sigemptyset(&handled);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &handled, &old_mask);

  // The launcher serves the rendezvous store (as torchrun's agent does), so it outlives any
  // worker and the others can still read why one failed.
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(o.master_port);
  so.isServer = true;
  so.waitWorkers = false;
  so.timeout = std::chrono::seconds(o.timeout_s);
  c10::intrusive_ptr<c10d::TCPStore> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
  } catch (const std::exception& e) {
    const std::string m = e.what();
    throw Error(str_cat("--nproc_per_node: cannot serve the rendezvous store on 127.0.0.1:",
                        o.master_port, ": ", m.substr(0, m.find('\n'))));
  }
  const int port = store->getPort();

  Environment base = current_environment();
  std::string omp_note;
  if (!lookup(base, "OMP_NUM_THREADS")) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    base["OMP_NUM_THREADS"] = std::to_string(std::max(1u, cores / static_cast<unsigned>(o.nproc)));
    omp_note = str_cat(", OMP_NUM_THREADS=", base["OMP_NUM_THREADS"], " each");
  }
  log::info("train_mgm --nproc_per_node ", o.nproc, ": starting ", o.nproc,
            " workers (rendezvous 127.0.0.1:", port, omp_note, ")");

  // Everything the children need is built before fork(): between fork and exec only
  // async-signal-safe calls are allowed (the store's threads may hold locks).
  std::vector<std::string> argv_s{exe};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv_p;
  for (auto& a : argv_s) argv_p.push_back(a.data());
  argv_p.push_back(nullptr);
  std::vector<std::vector<std::string>> envs(static_cast<size_t>(o.nproc));
  std::vector<std::vector<char*>> env_ps(static_cast<size_t>(o.nproc));
  for (int r = 0; r < o.nproc; ++r) {
    Environment e = base;
    e["RANK"] = e["LOCAL_RANK"] = std::to_string(r);
    e["WORLD_SIZE"] = e["LOCAL_WORLD_SIZE"] = std::to_string(o.nproc);
    e["GROUP_RANK"] = "0";
    e["MASTER_ADDR"] = "127.0.0.1";
    e["MASTER_PORT"] = std::to_string(port);
    e["TORCHELASTIC_USE_AGENT_STORE"] = "True";
    e["TORCHELASTIC_RESTART_COUNT"] = "0";
    e[kWorkerEnvVar] = "1";
    for (const auto& [k, v] : e) envs[static_cast<size_t>(r)].push_back(k + "=" + v);
    for (auto& s : envs[static_cast<size_t>(r)]) env_ps[static_cast<size_t>(r)].push_back(s.data());
    env_ps[static_cast<size_t>(r)].push_back(nullptr);
  }

  const pid_t self = getpid();
  std::vector<pid_t> pids(static_cast<size_t>(o.nproc), -1);
  std::vector<bool> alive(static_cast<size_t>(o.nproc), false);
  auto signal_all = [&](int sig) {
    for (size_t r = 0; r < pids.size(); ++r)
      if (alive[r]) kill(pids[r], sig);
  };
  for (int r = 0; r < o.nproc; ++r) {
    const pid_t pid = fork();
    if (pid < 0) {
      signal_all(SIGKILL);
      throw Error(str_cat("--nproc_per_node: fork failed: ", std::strerror(errno)));
    }
    if (pid == 0) {
      // A worker never outlives its launcher (even one killed with -9).
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != self) _exit(1);
      pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
      execve(exe.c_str(), argv_p.data(), env_ps[static_cast<size_t>(r)].data());
      const char msg[] = "error: --nproc_per_node: cannot execute the worker\n";
      (void)!write(2, msg, sizeof(msg) - 1);
      _exit(127);
    }
    pids[static_cast<size_t>(r)] = pid;
    alive[static_cast<size_t>(r)] = true;
  }

  using Clock = std::chrono::steady_clock;
  int exit_code = 0;
  bool stopping = false, killed = false;
  Clock::time_point kill_at;
  std::string failure;
  auto any_alive = [&] {
    return std::any_of(alive.begin(), alive.end(), [](bool a) { return a; });
  };
  while (any_alive()) {
    const timespec tick{0, 200 * 1000 * 1000};
    const int sig = sigtimedwait(&handled, nullptr, &tick);
    if ((sig == SIGINT || sig == SIGTERM) && !stopping) {
      log::warn("train_mgm --nproc_per_node: received ", strsignal(sig), ", stopping the workers");
      signal_all(sig);
      stopping = true;
      kill_at = Clock::now() + std::chrono::seconds(o.grace_s);
      exit_code = 128 + sig;
    }
    int status = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      const auto it = std::find(pids.begin(), pids.end(), pid);
      if (it == pids.end()) continue;
      const size_t r = static_cast<size_t>(it - pids.begin());
      alive[r] = false;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (ok || stopping) continue;
      // The first failure: name it, then stop the others (they would only wait for it).
      failure = str_cat("worker rank ", r, " (pid ", pid, ") ", describe_status(status));
      const std::string record = store_text(*store, launcher_store_key("failed"));
      if (!record.empty()) {
        failure += str_cat("; the job's first failure: ", record);
      } else {
        // The step its monitor last published (once a second).
        const std::string step = store_text(*store, launcher_store_key(str_cat("step/", r)));
        if (!step.empty() && step != "0") failure += str_cat(" at step ", step);
      }
      exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
      stopping = true;
      kill_at = Clock::now() + std::chrono::seconds(o.grace_s);
      std::fprintf(stderr, "error: train_mgm --nproc_per_node: %s%s\n", failure.c_str(),
                   any_alive() ? "; stopping the other workers" : "");
      std::fflush(stderr);
      signal_all(SIGTERM);
    }
    if (stopping && !killed && Clock::now() >= kill_at && any_alive()) {
      log::warn("train_mgm --nproc_per_node: workers still running after ", o.grace_s,
                " s: SIGKILL");
      signal_all(SIGKILL);
      killed = true;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  return exit_code;
}

}  // namespace mgm::trainer
