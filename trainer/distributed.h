// The communicator the trainer talks to: one interface over a single process (no-op), c10d
// Gloo (CPU) and c10d NCCL (CUDA), so the whole data-parallel path is testable on CPU. The c10d
// ones rendezvous through a TCPStore and run a failure protocol over it, so no rank waits
// forever for a dead peer: a rank that fails writes "rank R failed at step S: <message>" to the
// store before it exits; a monitor thread on every rank heartbeats, watches its neighbour's
// heartbeat and the failure key, and stops the process with that message; a collective that
// fails or times out (--ddp_timeout) is reported with the same diagnosis.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/error.h"
#include "trainer/launcher.h"

namespace mgm::trainer {

// A collective or the rendezvous failed; the message names the failed rank and step when known.
class CommError : public Error {
 public:
  using Error::Error;
};

enum class ReduceOp { kSum, kMin, kMax };

// An asynchronous collective in flight. wait() blocks until the result can be used on the
// calling thread (for NCCL: until the current CUDA stream is ordered after it); throws CommError.
class CommWork {
 public:
  virtual ~CommWork() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  int rank() const { return rank_; }
  int world_size() const { return world_; }
  bool is_main() const { return rank_ == 0; }
  // "none" (one process), "gloo" or "nccl".
  virtual std::string backend() const = 0;
  // Where helper tensors of collectives live (NCCL needs CUDA tensors).
  virtual at::Device device() const = 0;

  // In place, asynchronous. kSum only for float tensors that hold gradients; kMin/kMax for flags.
  virtual std::unique_ptr<CommWork> all_reduce(at::Tensor& t, ReduceOp op) = 0;
  // Sum of every rank's `in` (world x out.numel() elements), this rank's slice into `out`.
  virtual std::unique_ptr<CommWork> reduce_scatter(at::Tensor& out, at::Tensor& in) = 0;
  // Every rank's `in` concatenated in rank order into `out` (world x in.numel() elements).
  virtual std::unique_ptr<CommWork> all_gather(at::Tensor& out, at::Tensor& in) = 0;
  // Blocking.
  virtual void broadcast(at::Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // A barrier with no deadline, for the ranks that wait while rank 0 writes files (a checkpoint
  // of a 2B model with its optimizer state takes minutes on a slow filesystem, longer than
  // --ddp_timeout). A rank that dies or fails meanwhile is caught by the failure protocol
  // (heartbeats, failure record) instead. `name` is unique per use and the same on every rank.
  virtual void barrier_without_deadline(const std::string& name) {
    (void)name;
    barrier();
  }

  // The optimizer step the caller is working on (1-based), named in failure messages.
  virtual void set_step(int64_t step) { (void)step; }
  // Called with the error that stops this rank (not after a clean finish): records "rank R
  // failed at step S: <message>" for the others unless another rank's failure came first, and
  // returns the message this rank should print (the root cause when another rank failed first).
  virtual std::string report_failure(const std::string& message) { return message; }
  // After a successful run: stops the monitor and leaves the job without alarming the others.
  virtual void finish() {}
  // Used by exit_after_failure: a rank that serves the rendezvous store waits (a few seconds at
  // most) until the others have read the failure.
  virtual void linger_for_peers() {}

  // Helpers over the primitives (blocking).
  void all_reduce_blocking(at::Tensor& t, ReduceOp op) { all_reduce(t, op)->wait(); }
  std::string broadcast_string(const std::string& s, int root = 0);
  // Whether `ok` holds on every rank (one kMin all-reduce of a flag).
  bool all_true(bool ok);

 protected:
  Communicator(int rank, int world) : rank_(rank), world_(world) {}

 private:
  int rank_, world_;
};

struct DistOptions {
  std::string backend = "auto";  // auto | nccl | gloo
  int timeout_s = 600;           // --ddp_timeout
  std::string device = "cpu";    // the training device (cuda:LOCAL_RANK on GPUs)
};

// A single-process communicator when `env` has no launcher; otherwise joins the job: the
// TCPStore rendezvous (rank 0 serves it unless a launcher agent does), then a c10d process group
// (NCCL for a CUDA device, Gloo otherwise, or opts.backend), and the failure monitor.
std::unique_ptr<Communicator> make_communicator(const LaunchEnv& env, const DistOptions& opts);

// The device a rank trains on: "cuda" becomes cuda:LOCAL_RANK in a distributed job (one GPU per
// process), or cuda:0 when the process sees a single GPU (srun --gpus-per-task=1 gives each task
// its own); an explicit cuda:N there is refused. visible_gpus < 0: unknown. Throws UsageError.
std::string device_for_rank(const std::string& device, const LaunchEnv& env, int visible_gpus = -1);

// Writes the error line and ends the process at once (exit code `code`), without running
// destructors that could wait on peers that are gone. For a rank that serves the rendezvous
// store, first gives the others a few seconds to read the failure.
[[noreturn]] void exit_after_failure(Communicator& comm, const std::string& message, int code);

// Copies every tensor from rank `root` to the others, in flattened chunks per dtype.
void broadcast_tensors(Communicator& comm, const std::vector<at::Tensor>& tensors, int root = 0);

// A control key of the workers of train_mgm --nproc_per_node ("failed", "step/R") as it lies in
// the store the launcher serves (read by the launcher to say why and where the job stopped).
std::string launcher_store_key(const std::string& name);

}  // namespace mgm::trainer
