#include "data/loader.h"

#include <utility>

#include "common/error.h"
#include "common/strings.h"

namespace mgm::data {

// One planned batch while it is in flight: each sample's decoded result or its exception, and
// once complete, the collated batch or the exception the consumer gets.
struct Loader::BatchState {
  size_t batch = 0;  // index into the plan
  std::vector<CollatorSample> samples;
  std::vector<std::exception_ptr> errors;
  size_t remaining = 0;  // samples not decoded yet
  bool ready = false;
  LoadedBatch result;
  std::exception_ptr error;
};

BadSamplePolicy parse_bad_sample_policy(const std::string& s) {
  if (s == "error") return BadSamplePolicy::kError;
  if (s == "skip") return BadSamplePolicy::kSkip;
  throw UsageError(str_cat("unknown bad-sample policy '", s, "' (supported: error, skip)"));
}

Loader::Loader(const SupervisedDataset& ds, LoaderConfig cfg, std::vector<PlannedBatch> plan)
    : ds_(ds), cfg_(std::move(cfg)), plan_(std::move(plan)) {
  if (cfg_.num_workers < 0)
    throw UsageError(str_cat("the number of loader workers must be >= 0, got ", cfg_.num_workers));
  if (cfg_.prefetch_batches < 1)
    throw UsageError(
        str_cat("the loader's prefetch_batches must be >= 1, got ", cfg_.prefetch_batches));
  if (cfg_.collator.aux_size != ds_.config().image_size_aux)
    throw UsageError(str_cat("the collator's aux image size ", cfg_.collator.aux_size,
                             " differs from the dataset's image_size_aux ",
                             ds_.config().image_size_aux));
  for (size_t b = 0; b < plan_.size(); ++b) {
    MGM_CHECK(!plan_[b].indices.empty(), "planned batch ", b, " (epoch ", plan_[b].epoch,
              ", position ", plan_[b].position, ") has no samples");
    for (int64_t i : plan_[b].indices)
      MGM_CHECK(i >= 0 && static_cast<size_t>(i) < ds_.size(), "planned batch ", b,
                " names sample ", i, ", outside the dataset (", ds_.size(), " samples)");
  }
  states_.resize(plan_.size());
  workers_.reserve(static_cast<size_t>(cfg_.num_workers));
  try {
    for (int w = 0; w < cfg_.num_workers; ++w) {
      workers_.emplace_back([this] {
        // Per-sample and per-batch errors are caught inside; this catches what is left (an
        // allocation failing under the lock), so a worker never takes the process down and the
        // consumer gets the error instead of waiting for a batch that will not come.
        try {
          worker_loop();
        } catch (...) {
          std::lock_guard<std::mutex> lk(mu_);
          if (!fatal_) fatal_ = std::current_exception();
          done_cv_.notify_all();
        }
      });
    }
  } catch (...) {
    // Threads that did start must not outlive the half-built loader.
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : workers_) t.join();
    throw;
  }
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  // A worker finishes the one sample (or collation) it is on, then sees stop_.
  for (auto& t : workers_) t.join();
}

void Loader::worker_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  while (true) {
    // The window: only samples of the batches [consumed_, consumed_ + prefetch_batches) are
    // decoded, which bounds memory whatever the consumer's pace.
    work_cv_.wait(lk, [&] {
      return stop_ || next_batch_ >= plan_.size() ||
             next_batch_ < consumed_ + static_cast<size_t>(cfg_.prefetch_batches);
    });
    if (stop_ || next_batch_ >= plan_.size()) return;
    const size_t b = next_batch_, slot = next_slot_;
    const std::vector<int64_t>& indices = plan_[b].indices;
    if (!states_[b]) {
      states_[b] = std::make_unique<BatchState>();
      states_[b]->batch = b;
      states_[b]->samples.resize(indices.size());
      states_[b]->errors.resize(indices.size());
      states_[b]->remaining = indices.size();
    }
    BatchState* st = states_[b].get();  // stays put until the consumer takes it (ready)
    if (++next_slot_ == indices.size()) {
      next_slot_ = 0;
      ++next_batch_;
    }
    lk.unlock();
    CollatorSample cs;
    std::exception_ptr err;
    try {
      cs = ds_.get(static_cast<size_t>(indices[slot]));
    } catch (...) {
      err = std::current_exception();
    }
    ++decoded_;
    lk.lock();
    st->samples[slot] = std::move(cs);
    st->errors[slot] = err;
    if (--st->remaining == 0) {
      // The last sample of the batch: collate here, off the consumer's thread.
      lk.unlock();
      finish(*st);
      lk.lock();
      st->ready = true;
      done_cv_.notify_all();
    }
  }
}

void Loader::finish(BatchState& st) const {
  // The plan never changes after construction, so workers read it without the lock.
  const PlannedBatch& pb = plan_[st.batch];
  try {
    LoadedBatch& r = st.result;
    r.epoch = pb.epoch;
    r.position = pb.position;
    std::vector<CollatorSample> good;
    good.reserve(st.samples.size());
    for (size_t k = 0; k < st.samples.size(); ++k) {
      if (st.errors[k]) {
        try {
          std::rethrow_exception(st.errors[k]);
        } catch (const SampleError& e) {
          if (cfg_.policy == BadSamplePolicy::kError) throw;
          r.skipped.push_back(
              {static_cast<int64_t>(e.index), e.id, e.reason, pb.epoch, pb.position});
        }
        continue;
      }
      r.indices.push_back(pb.indices[k]);
      r.ids.push_back(ds_.sample(static_cast<size_t>(pb.indices[k])).id);
      good.push_back(std::move(st.samples[k]));
    }
    st.samples.clear();
    if (!good.empty()) r.batch = collate(good, cfg_.collator);
  } catch (...) {
    st.error = std::current_exception();
    st.result = LoadedBatch();
  }
}

std::optional<LoadedBatch> Loader::next() {
  if (cfg_.num_workers == 0) {
    if (consumed_ >= plan_.size()) return std::nullopt;
    const std::vector<int64_t>& indices = plan_[consumed_].indices;
    BatchState st;
    st.batch = consumed_;
    st.samples.resize(indices.size());
    st.errors.resize(indices.size());
    for (size_t k = 0; k < indices.size(); ++k) {
      try {
        st.samples[k] = ds_.get(static_cast<size_t>(indices[k]));
      } catch (...) {
        st.errors[k] = std::current_exception();
      }
      ++decoded_;
    }
    finish(st);
    ++consumed_;
    if (st.error) std::rethrow_exception(st.error);
    return std::move(st.result);
  }
  std::unique_ptr<BatchState> st;
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (consumed_ >= plan_.size()) return std::nullopt;
    done_cv_.wait(lk, [&] { return fatal_ || (states_[consumed_] && states_[consumed_]->ready); });
    if (fatal_) std::rethrow_exception(fatal_);
    st = std::move(states_[consumed_]);
    ++consumed_;  // widens the workers' window
  }
  work_cv_.notify_all();
  if (st->error) std::rethrow_exception(st->error);
  return std::move(st->result);
}

}  // namespace mgm::data
