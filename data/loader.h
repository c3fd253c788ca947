// The prefetching loader: worker threads decode the samples of a planned sequence of batches
// (sample-level parallelism) ahead of the consumer, at most `prefetch_batches` batches in
// flight, and hand out collated batches in plan order whatever the thread timing, so a plan
// (from data/sampler.h; resume = a plan starting at the saved position) always gives the same
// batches. Bad samples (SampleError) stop the run or are skipped and reported, by policy.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/collator.h"
#include "data/dataset.h"

namespace mgm::data {

enum class BadSamplePolicy { kError, kSkip };
// "error" | "skip"; UsageError otherwise.
BadSamplePolicy parse_bad_sample_policy(const std::string& s);

struct PlannedBatch {
  std::vector<int64_t> indices;
  int64_t epoch = 0;
  int64_t position = 0;  // batch index within the epoch
};

struct LoaderConfig {
  int num_workers = 4;       // decode threads (0 = decode on the calling thread, synchronously)
  int prefetch_batches = 4;  // bounded queue: batches decoded ahead of the consumer
  BadSamplePolicy policy = BadSamplePolicy::kError;
  CollatorConfig collator;  // pin_memory there => pinned outputs
};

struct SkippedSample {
  int64_t index = 0;
  std::string id, reason;
  int64_t epoch = 0, position = 0;
};

struct LoadedBatch {
  Batch batch;                      // tensors undefined when every sample of the batch was skipped
  std::vector<int64_t> indices;     // samples actually in `batch`, in order
  std::vector<std::string> ids;     // their sample ids
  int64_t epoch = 0, position = 0;  // from the plan
  std::vector<SkippedSample> skipped;
  bool empty() const { return indices.empty(); }
};

class Loader {
 public:
  // Throws UsageError for a bad configuration and mgm::Error for a plan with an empty batch or
  // an index outside the dataset. `ds` must outlive the loader.
  Loader(const SupervisedDataset& ds, LoaderConfig cfg, std::vector<PlannedBatch> plan);
  ~Loader();  // stops and joins the workers promptly even when the consumer stopped early
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch in plan order; nullopt after the last one. kError: rethrows the SampleError
  // of the first bad sample of that batch (message names index, id, reason); the batch counts
  // as consumed. Errors that are not about one sample (a collation failure, out of memory) are
  // rethrown under either policy.
  std::optional<LoadedBatch> next();

  size_t batches_total() const { return plan_.size(); }
  // Samples whose decoding has finished (good or bad), for throughput and back-pressure checks.
  int64_t samples_decoded() const { return decoded_.load(); }

 private:
  struct BatchState;
  void worker_loop();
  // Turns the decoded samples of a batch into its result (policy applied, collated).
  void finish(BatchState& st) const;

  const SupervisedDataset& ds_;
  LoaderConfig cfg_;
  std::vector<PlannedBatch> plan_;

  std::mutex mu_;
  std::condition_variable work_cv_;  // workers: a sample may be dispatched, or stop
  std::condition_variable done_cv_;  // consumer: a batch became ready
  bool stop_ = false;
  std::exception_ptr fatal_;  // a worker died outside any sample (not expected; never lost)
  size_t consumed_ = 0;       // batches handed out (or thrown) so far
  size_t next_batch_ = 0;     // next sample to dispatch: plan_[next_batch_].indices[next_slot_]
  size_t next_slot_ = 0;
  std::vector<std::unique_ptr<BatchState>> states_;  // per plan batch, alive while in flight
  std::atomic<int64_t> decoded_{0};
  std::vector<std::thread> workers_;
};

}  // namespace mgm::data
