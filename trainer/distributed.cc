#include "trainer/distributed.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "common/files.h"
#include "common/json.h"
#include "common/log.h"
#include "common/strings.h"
#include "trainer/distributed_backends.h"

namespace mgm::trainer {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Set by the first thread that ends the process after a failure (main or monitor).
std::atomic<bool> g_exiting{false};

std::string first_line(const std::string& s) {
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}
std::vector<uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string to_text(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

// Once this process knows a peer or the store is gone it says so in one line; c10d's own
// warnings about every refused socket operation (with backtraces) would bury that line.
void quiet_c10d_warnings() { FLAGS_caffe2_log_level = std::max(FLAGS_caffe2_log_level, 2); }

std::string step_phrase(int64_t step) {
  return step > 0 ? str_cat("at step ", step) : std::string("before the first step");
}

// Keys under the control prefix ("mgm/"), next to the process group's ("pg/").
constexpr const char* kFailed = "failed";           // "rank R failed at step S: ..."
constexpr const char* kFailedRank = "failed_rank";  // R
constexpr const char* kAcks = "failure_acks";       // ranks that saw the failure
constexpr const char* kJoined = "joined";
constexpr const char* kAllJoined = "all_joined";
constexpr const char* kFinishedCount = "finished";
std::string hb_key(int r) { return str_cat("heartbeat/", r); }
std::string step_key(int r) { return str_cat("step/", r); }
std::string finished_key(int r) { return str_cat("finished/", r); }

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case ReduceOp::kMin:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    case ReduceOp::kMax:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
  }
  return c10d::ReduceOp(c10d::ReduceOp::SUM);
}

// --- One process -------------------------------------------------------------------------------

class DoneWork final : public CommWork {
 public:
  void wait() override {}
};

class SingleProcess final : public Communicator {
 public:
  explicit SingleProcess(at::Device dev) : Communicator(0, 1), device_(dev) {}
  std::string backend() const override { return "none"; }
  at::Device device() const override { return device_; }
  std::unique_ptr<CommWork> all_reduce(at::Tensor&, ReduceOp) override {
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<CommWork> reduce_scatter(at::Tensor& out, at::Tensor& in) override {
    MGM_CHECK(in.numel() == out.numel(), "reduce_scatter: ", in.numel(), " elements into ",
              out.numel());
    out.copy_(in.view(out.sizes()));
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<CommWork> all_gather(at::Tensor& out, at::Tensor& in) override {
    MGM_CHECK(in.numel() == out.numel(), "all_gather: ", in.numel(), " elements into ",
              out.numel());
    out.copy_(in.view(out.sizes()));
    return std::make_unique<DoneWork>();
  }
  void broadcast(at::Tensor&, int) override {}
  void barrier() override {}

 private:
  at::Device device_;
};

// --- c10d ----------------------------------------------------------------------------------------

class C10dCommunicator;

class C10dWork final : public CommWork {
 public:
  C10dWork(C10dCommunicator* comm, const char* what, c10::intrusive_ptr<c10d::Work> work,
           std::vector<at::Tensor> keep)
      : comm_(comm), what_(what), work_(std::move(work)), keep_(std::move(keep)) {}
  void wait() override;

 private:
  C10dCommunicator* comm_;
  const char* what_;
  c10::intrusive_ptr<c10d::Work> work_;
  std::vector<at::Tensor> keep_;  // the tensors stay alive until the collective is done
};

class C10dCommunicator final : public Communicator {
 public:
  C10dCommunicator(const LaunchEnv& env, const DistOptions& o, at::Device dev, std::string backend)
      : Communicator(env.rank, env.world_size),
        env_(env),
        device_(dev),
        backend_(std::move(backend)),
        timeout_(seconds(o.timeout_s)),
        dead_after_(seconds(std::min(o.timeout_s, 30))) {
    rendezvous();
    try {
      auto pg_store = c10::make_intrusive<c10d::PrefixStore>("pg", base_);
      pg_ =
          backend_ == "nccl"
              ? detail::make_nccl_backend(pg_store, rank(), world_size(), timeout_, device_.index())
              : detail::make_gloo_backend(pg_store, rank(), world_size(), timeout_);
    } catch (const UsageError&) {
      throw;
    } catch (const std::exception& e) {
      throw CommError(str_cat("creating the ", backend_, " process group failed (", env_.describe(),
                              "): ", first_line(e.what())));
    }
    // The monitor talks over its own connection: the main thread may sit in a blocking store
    // call for long, and heartbeats must not wait behind it.
    mon_ = c10::make_intrusive<c10d::PrefixStore>("mgm", prefixed(tcp_->clone()));
    monitor_ = std::thread([this] { monitor_loop(); });
    log::info("data parallel: ", env_.describe(), ", ", backend_, " on ", device_.str(),
              ", timeout ", timeout_.count() / 1000, " s");
  }

  ~C10dCommunicator() override { stop_monitor(); }

  std::string backend() const override { return backend_; }
  at::Device device() const override { return device_; }

  std::unique_ptr<CommWork> all_reduce(at::Tensor& t, ReduceOp op) override {
    std::vector<at::Tensor> v{t};
    c10d::AllreduceOptions o;
    o.reduceOp = to_c10d(op);
    return launch(
        "all_reduce", [&] { return pg_->allreduce(v, o); }, v);
  }
  std::unique_ptr<CommWork> reduce_scatter(at::Tensor& out, at::Tensor& in) override {
    MGM_CHECK(in.numel() == out.numel() * world_size(), "reduce_scatter: ", in.numel(),
              " elements for ", world_size(), " ranks of ", out.numel());
    return launch("reduce_scatter", [&] { return pg_->_reduce_scatter_base(out, in); }, {out, in});
  }
  std::unique_ptr<CommWork> all_gather(at::Tensor& out, at::Tensor& in) override {
    MGM_CHECK(out.numel() == in.numel() * world_size(), "all_gather: ", in.numel(),
              " elements from ", world_size(), " ranks into ", out.numel());
    return launch("all_gather", [&] { return pg_->_allgather_base(out, in); }, {out, in});
  }
  void broadcast(at::Tensor& t, int root) override {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    launch(
        "broadcast", [&] { return pg_->broadcast(v, o); }, v)
        ->wait();
  }
  void barrier() override {
    c10d::BarrierOptions o;
    if (device_.is_cuda()) o.device_ids = {device_.index()};
    launch("barrier", [&] { return pg_->barrier(o); }, {})->wait();
  }

  void barrier_without_deadline(const std::string& name) override {
    const std::string key = "sync/" + name;
    try {
      if (ctl_->add(key, 1) == world_size()) ctl_->set(key + "/all", to_bytes("1"));
      // A week stands for "no deadline": the monitor thread ends the process when a rank fails.
      ctl_->wait({key + "/all"}, std::chrono::hours(24 * 7));
    } catch (const std::exception& e) {
      throw CommError(diagnose(str_cat("waiting for every rank at ", name), e.what()));
    }
  }

  void set_step(int64_t step) override { step_.store(step); }

  std::string report_failure(const std::string& message) override {
    failing_.store(true);  // the monitor must not take this rank's own record for a peer's
    quiet_c10d_warnings();
    const std::string record =
        str_cat("rank ", rank(), " failed ", step_phrase(step_.load()), ": ", first_line(message));
    try {
      const std::string stored = to_text(ctl_->compareSet(kFailed, {}, to_bytes(record)));
      if (stored == record) {
        ctl_->set(kFailedRank, to_bytes(std::to_string(rank())));
        return message;
      }
      ack(ctl_);
      return str_cat("stopping: ", stored);
    } catch (const std::exception&) {
      return message;  // the store is gone too: nobody to tell
    }
  }

  void linger_for_peers() override {
    // Rank 0 serving the store (no launcher agent): if it exited at once, the others could not
    // read why the job stops. Wait (briefly) until every live rank has seen the failure.
    if (env_.agent_store || rank() != 0 || world_size() == 1) return;
    try {
      int64_t expected = world_size() - 1 + (acked_.load() ? 1 : 0);
      if (mon_->check({kFailedRank})) {
        const int failed = std::atoi(to_text(mon_->get(kFailedRank)).c_str());
        if (failed != rank()) --expected;  // the failed rank does not acknowledge
      }
      const auto until = Clock::now() + std::min<milliseconds>(seconds(10), timeout_);
      while (Clock::now() < until && mon_->add(kAcks, 0) < expected)
        std::this_thread::sleep_for(milliseconds(100));
    } catch (const std::exception&) {
    }
  }

  void finish() override {
    stop_monitor();
    try {
      ctl_->set(finished_key(rank()), to_bytes("1"));
      ctl_->add(kFinishedCount, 1);
      if (!env_.agent_store && rank() == 0) {
        // The others may still be talking to the store this process serves.
        // They leave right after the final barrier: seconds at most, unless one died there.
        const auto until = Clock::now() + std::min<milliseconds>(seconds(30), timeout_);
        while (Clock::now() < until && ctl_->add(kFinishedCount, 0) < world_size())
          std::this_thread::sleep_for(milliseconds(50));
      }
    } catch (const std::exception& e) {
      log::warn("data parallel shutdown: ", first_line(e.what()));
    }
    pg_->shutdown();
  }

  // Why a collective failed, as the line this rank prints: another rank's recorded failure, a
  // rank whose heartbeat stopped, the store's host gone, or (every rank alive) which ranks lag.
  std::string diagnose(const std::string& what, const std::string& error) {
    quiet_c10d_warnings();
    const std::string where = step_phrase(step_.load());
    try {
      const std::vector<int64_t> before = heartbeats();
      const auto t0 = Clock::now();
      // A failing rank records why before it exits, so its peers' collectives fail after that.
      while (Clock::now() - t0 < seconds(3)) {
        if (ctl_->check({kFailed})) return acknowledged(to_text(ctl_->get(kFailed)));
        std::this_thread::sleep_for(milliseconds(200));
      }
      const std::vector<int64_t> after = heartbeats();
      for (int r = 0; r < world_size(); ++r) {
        if (r == rank() || after[static_cast<size_t>(r)] != before[static_cast<size_t>(r)])
          continue;
        if (ctl_->check({finished_key(r)})) continue;
        record_dead(ctl_, r, "its heartbeat stopped");
        return acknowledged(to_text(ctl_->get(kFailed)));
      }
      std::string lag;
      const int64_t mine = step_.load();
      for (int r = 0; r < world_size(); ++r) {
        if (r == rank()) continue;
        const std::vector<uint8_t> v =
            ctl_->check({step_key(r)}) ? ctl_->get(step_key(r)) : std::vector<uint8_t>{};
        const int64_t s = v.empty() ? -1 : std::atoll(to_text(v).c_str());
        if (s >= 0 && s < mine) lag += str_cat("; rank ", r, " is still at step ", s);
      }
      return str_cat(
          what, " failed ", where, " (--ddp_timeout ", timeout_.count() / 1000,
          " s): ", first_line(error), "; every rank is alive",
          lag.empty() ? std::string(" (one may be stuck)") : lag + " (stuck or much slower?)");
    } catch (const std::exception& se) {
      return lost_store(str_cat(what, " failed ", where, ": ", first_line(error)), se.what());
    }
  }

 private:
  c10::intrusive_ptr<c10d::Store> prefixed(c10::intrusive_ptr<c10d::Store> s) const {
    // torchrun's agent store holds every restart's keys: torch.distributed uses this prefix.
    if (env_.agent_store)
      return c10::make_intrusive<c10d::PrefixStore>(str_cat("/worker/attempt_", env_.restart_count),
                                                    s);
    return s;
  }

  void rendezvous() {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env_.master_port);
    so.timeout = timeout_;
    so.isServer = !env_.agent_store && rank() == 0;
    // Without an agent, rank 0 serves the store and every rank's connection counts towards
    // WORLD_SIZE (as torch.distributed's env:// rendezvous).
    if (!env_.agent_store) so.numWorkers = static_cast<size_t>(world_size());
    so.waitWorkers = !env_.agent_store;
    const std::string where = str_cat(env_.master_addr, ":", env_.master_port);
    try {
      tcp_ = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
      base_ = prefixed(tcp_);
      ctl_ = c10::make_intrusive<c10d::PrefixStore>("mgm", base_);
      if (ctl_->add(kJoined, 1) == world_size()) ctl_->set(kAllJoined, to_bytes("1"));
      ctl_->wait({kAllJoined}, timeout_);
    } catch (const std::exception& e) {
      int64_t joined = -1;
      try {
        if (ctl_) joined = ctl_->add(kJoined, 0);
      } catch (const std::exception&) {
      }
      throw CommError(
          str_cat("rendezvous at ", where, " failed (", env_.describe(), ", --ddp_timeout ",
                  timeout_.count() / 1000, " s)",
                  joined >= 0 ? str_cat(": ", joined, " of ", world_size(), " processes joined")
                              : std::string(),
                  ": ", first_line(e.what()),
                  env_.launcher == "slurm" ? " (under SLURM, start every task with srun)" : ""));
    }
  }

  template <typename F>
  std::unique_ptr<CommWork> launch(const char* what, F&& start, std::vector<at::Tensor> keep) {
    try {
      return std::make_unique<C10dWork>(this, what, start(), std::move(keep));
    } catch (const CommError&) {
      throw;
    } catch (const std::exception& e) {
      throw CommError(diagnose(what, e.what()));
    }
  }

  std::vector<int64_t> heartbeats() {
    std::vector<int64_t> v;
    for (int r = 0; r < world_size(); ++r) v.push_back(ctl_->add(hb_key(r), 0));
    return v;
  }

  // First writer wins: the failure every rank reports is the first one recorded.
  void record_dead(const c10::intrusive_ptr<c10d::Store>& s, int r, const std::string& how) {
    const std::string record =
        str_cat("rank ", r, " stopped responding ", step_phrase(step_.load()), ": ", how,
                " (killed, out of host memory, or frozen?)");
    if (to_text(s->compareSet(kFailed, {}, to_bytes(record))) == record)
      s->set(kFailedRank, to_bytes(std::to_string(r)));
  }

  std::string acknowledged(const std::string& failure) {
    try {
      ack(ctl_);
    } catch (const std::exception&) {
    }
    return failure;
  }

  // This rank has seen another's failure (counted once; rank 0 waits for the count).
  void ack(const c10::intrusive_ptr<c10d::Store>& s) {
    if (!acked_.exchange(true)) s->add(kAcks, 1);
  }

  std::string lost_store(const std::string& context, const std::string& error) const {
    const bool rank0_serves = !env_.agent_store;
    return str_cat(context.empty() ? std::string() : context + "; ",
                   "lost the rendezvous store at ", env_.master_addr, ":", env_.master_port,
                   " (served by ", rank0_serves ? "rank 0" : "the launcher",
                   "): ", rank0_serves ? "rank 0 has stopped" : "the launcher has stopped", " ",
                   step_phrase(step_.load()), " (", first_line(error), ")");
  }

  void monitor_loop() {
    const int neighbour = (rank() + 1) % world_size();
    int64_t last_seen = -1;
    auto last_change = Clock::now();
    int errors = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (cv_.wait_for(lock, seconds(1), [this] { return stop_; })) return;
      }
      if (g_exiting.load()) return;
      if (failing_.load()) continue;
      try {
        mon_->add(hb_key(rank()), 1);
        mon_->set(step_key(rank()), to_bytes(std::to_string(step_.load())));
        if (mon_->check({kFailed})) {
          ack(mon_);
          stop_from_monitor(str_cat("stopping: ", to_text(mon_->get(kFailed))));
        }
        if (world_size() > 1) {
          const int64_t v = mon_->add(hb_key(neighbour), 0);
          if (v != last_seen) {
            last_seen = v;
            last_change = Clock::now();
          } else if (Clock::now() - last_change > dead_after_ &&
                     !mon_->check({finished_key(neighbour)})) {
            record_dead(mon_, neighbour, str_cat("no heartbeat for ", dead_after_.count(), " s"));
            ack(mon_);
            stop_from_monitor(str_cat("stopping: ", to_text(mon_->get(kFailed))));
          }
        }
        errors = 0;
      } catch (const std::exception& e) {
        if (g_exiting.load()) return;
        quiet_c10d_warnings();
        if (++errors >= 3) stop_from_monitor(lost_store("", e.what()));
      }
    }
  }

  [[noreturn]] void stop_from_monitor(const std::string& message) {
    exit_after_failure(*this, message, 1);
  }

  void stop_monitor() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (monitor_.joinable() && monitor_.get_id() != std::this_thread::get_id()) monitor_.join();
  }

  LaunchEnv env_;
  at::Device device_;
  std::string backend_;
  milliseconds timeout_;
  seconds dead_after_;
  c10::intrusive_ptr<c10d::TCPStore> tcp_;
  c10::intrusive_ptr<c10d::Store> base_, ctl_, mon_;
  c10::intrusive_ptr<c10d::Backend> pg_;
  std::atomic<int64_t> step_{0};
  std::atomic<bool> failing_{false};
  std::atomic<bool> acked_{false};
  std::thread monitor_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

void C10dWork::wait() {
  try {
    work_->wait();
  } catch (const CommError&) {
    throw;
  } catch (const std::exception& e) {
    throw CommError(comm_->diagnose(what_, e.what()));
  }
}

}  // namespace

std::string Communicator::broadcast_string(const std::string& s, int root) {
  if (world_size() == 1) return s;
  const auto on = at::TensorOptions().device(device());
  at::Tensor n = at::full({1}, static_cast<int64_t>(s.size()), on.dtype(at::kLong));
  broadcast(n, root);
  const int64_t len = n.item<int64_t>();
  at::Tensor bytes = at::zeros({std::max<int64_t>(len, 1)}, on.dtype(at::kByte));
  if (rank() == root && len > 0)
    bytes.narrow(0, 0, len).copy_(at::from_blob(const_cast<char*>(s.data()), {len}, at::kByte));
  broadcast(bytes, root);
  const at::Tensor host = bytes.to(at::kCPU);
  return std::string(reinterpret_cast<const char*>(host.data_ptr<uint8_t>()),
                     static_cast<size_t>(len));
}

bool Communicator::all_true(bool ok) {
  if (world_size() == 1) return ok;
  at::Tensor flag = at::full({1}, ok ? 1.0f : 0.0f, at::TensorOptions().device(device()));
  all_reduce_blocking(flag, ReduceOp::kMin);
  return flag.item<float>() > 0.5f;
}

std::unique_ptr<Communicator> make_communicator(const LaunchEnv& env, const DistOptions& o) {
  at::Device dev(at::kCPU);
  try {
    dev = at::Device(o.device);
  } catch (const std::exception&) {
    throw UsageError(str_cat("--device: expected cpu or cuda[:N], got '", o.device, "'"));
  }
  if (o.backend != "auto" && o.backend != "gloo" && o.backend != "nccl")
    throw UsageError(str_cat("--ddp_backend: expected auto, nccl or gloo, got '", o.backend, "'"));
  if (o.timeout_s <= 0)
    throw UsageError(str_cat("--ddp_timeout must be positive, got ", o.timeout_s));
  if (!env.distributed()) return std::make_unique<SingleProcess>(dev);
  const std::string backend = o.backend == "auto" ? (dev.is_cuda() ? "nccl" : "gloo") : o.backend;
  if (backend == "nccl" && !dev.is_cuda())
    throw UsageError("--ddp_backend nccl needs --device cuda (NCCL runs on GPUs; use gloo on CPU)");
  if (dev.is_cuda()) {
    const int64_t n = static_cast<int64_t>(at::getNumGPUs());
    if (dev.index() >= n)
      throw UsageError(str_cat(env.describe(), ": --device ", o.device, " but ", n,
                               " GPU(s) are visible (one GPU per process: LOCAL_RANK must be below "
                               "the GPU count; check --nproc_per_node / CUDA_VISIBLE_DEVICES)"));
  }
  return std::make_unique<C10dCommunicator>(env, o, dev, backend);
}

std::string device_for_rank(const std::string& device, const LaunchEnv& env, int visible_gpus) {
  if (!env.distributed()) return device;
  if (device == "cuda")
    return visible_gpus == 1 ? std::string("cuda:0") : str_cat("cuda:", env.local_rank);
  if (starts_with(device, "cuda:") && env.world_size > 1)
    throw UsageError(str_cat("--device ", device,
                             ": in a data-parallel job every process uses "
                             "cuda:LOCAL_RANK; pass --device cuda (select GPUs with "
                             "CUDA_VISIBLE_DEVICES)"));
  return device;
}

void exit_after_failure(Communicator& comm, const std::string& message, int code) {
  bool expected = false;
  if (!g_exiting.compare_exchange_strong(expected, true)) {
    // Another thread of this process is already ending it.
    for (;;) std::this_thread::sleep_for(seconds(1));
  }
  quiet_c10d_warnings();
  std::fflush(stdout);
  const std::string who = comm.backend() == "none"
                              ? std::string()
                              : str_cat("[rank ", comm.rank(), "/", comm.world_size(), "] ");
  std::fprintf(stderr, "error: %s%s\n", who.c_str(), message.c_str());
  std::fflush(stderr);
  // torchrun names the first failed worker and prints what this file holds.
  if (const char* error_file = std::getenv("TORCHELASTIC_ERROR_FILE")) {
    try {
      const Json j{{"message",
                    {{"message", message},
                     {"extraInfo",
                      {{"py_callstack", message},
                       {"timestamp", std::to_string(static_cast<int64_t>(std::time(nullptr)))}}}}}};
      write_file_atomic(error_file, j.dump());
    } catch (const std::exception&) {
    }
  }
  comm.linger_for_peers();
  std::_Exit(code);
}

void broadcast_tensors(Communicator& comm, const std::vector<at::Tensor>& tensors, int root) {
  if (comm.world_size() == 1) return;
  at::NoGradGuard no_grad;
  constexpr int64_t kChunkBytes = 64ll << 20;
  // Consecutive tensors of one dtype and device are sent as one flat buffer of up to 64 MB.
  size_t i = 0;
  while (i < tensors.size()) {
    const at::ScalarType dt = tensors[i].scalar_type();
    const at::Device dev = tensors[i].device();
    size_t j = i;
    int64_t bytes = 0;
    std::vector<at::Tensor> group;
    while (j < tensors.size() && tensors[j].scalar_type() == dt && tensors[j].device() == dev &&
           (group.empty() || bytes + tensors[j].nbytes() <= static_cast<size_t>(kChunkBytes))) {
      bytes += static_cast<int64_t>(tensors[j].nbytes());
      group.push_back(tensors[j++]);
    }
    std::vector<at::Tensor> flat_parts;
    for (const auto& t : group) flat_parts.push_back(t.reshape({-1}));
    at::Tensor flat = at::cat(flat_parts);
    comm.broadcast(flat, root);
    if (comm.rank() != root) {
      int64_t off = 0;
      for (auto& t : group) {
        const_cast<at::Tensor&>(t).copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
        off += t.numel();
      }
    }
    i = j;
  }
}

std::string launcher_store_key(const std::string& name) { return "/worker/attempt_0/mgm/" + name; }

}  // namespace mgm::trainer
