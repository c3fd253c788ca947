// Data-parallel gradient synchronisation and the optimizer step of one rank: gradients are
// averaged across ranks in buckets (reverse parameter order, --ddp_bucket_cap_mb) launched from
// post-accumulate-grad hooks while backward still runs; micro-steps before the last of an
// accumulation do no communication (no_sync); clipping and the fp16 overflow check see the
// averaged gradients, so every rank takes the same step. With zero_stage 1 (ZeRO-1) each bucket
// is reduce-scattered instead, each rank keeps the fp32 master weights and AdamW state of its
// 1/world slice only, updates it, and the slices are all-gathered back into the parameters.
// One process without ZeRO is a pass-through: exactly the single-device step.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "trainer/distributed.h"
#include "trainer/loss_scaler.h"
#include "trainer/optimizer.h"

namespace mgm::trainer {

struct DdpOptions {
  double bucket_cap_mb = 25.0;  // bucket size (the first bucket is capped at 1 MB, as DDP does)
  int zero_stage = 0;           // 0 | 1
};

class DataParallel {
 public:
  // `params`: the trainable parameters in model order (the hooks are registered on them).
  DataParallel(Communicator& comm, std::vector<NamedParameter> params, const AdamWConfig& cfg,
               const DdpOptions& opts);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Right before each micro-batch's backward of `loss`. `last`: the final micro-step of the
  // optimizer step, whose backward launches the reduction; earlier ones only accumulate locally.
  // Parameters the loss does not reach (the projector on a text-only batch) are marked ready at
  // once, so they do not hold back the buckets after theirs.
  void before_backward(const at::Tensor& loss, bool last);
  // After the accumulation loop: launches what backward did not (parameters that got no
  // gradient in the last micro-batch), waits, and leaves the averaged gradients in place (the
  // parameters' .grad, or this rank's shard with ZeRO-1). Parameters no rank produced a gradient
  // for keep none, as on one device.
  void finish_gradients();
  // fp16: unscales the averaged gradients; true when any rank's hold an inf/nan.
  bool unscale_and_check(DynamicLossScaler& scaler);
  // The global gradient norm (0-dim fp32); clips to max_norm when > 0, as clip_grad_norm.
  at::Tensor clip_grad_norm(double max_norm);
  // AdamW at `lr`, or one rate per lr_group (see NamedParameter); with ZeRO-1 also all-gathers
  // the updated parameters.
  void step(double lr) { step(std::vector<double>{lr}); }
  void step(const std::vector<double>& group_lrs);
  void zero_grad();

  // Optimizer state for checkpoints: the whole state (plain data parallel: every rank holds the
  // same) or this rank's shard (ZeRO-1: names "<param>@<offset>.exp_avg" ..., plus "zero1.layout").
  bool sharded() const { return zero_stage_ == 1; }
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  // Loads state_tensors() output; with ZeRO-1, a shard of another world size or bucket layout
  // is refused with a message.
  void load_state_tensors(const std::vector<std::pair<std::string, at::Tensor>>& t,
                          const std::string& source);

  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }

  // Called by the gradient hook of parameter i (autograd thread).
  void on_grad_ready(size_t i);

 private:
  struct Segment {  // the part of a parameter inside this rank's ZeRO-1 slice of a bucket
    size_t param;
    int64_t param_offset, length, shard_offset;
  };
  struct Bucket {
    std::vector<size_t> params;    // indices into params_
    std::vector<int64_t> offsets;  // element offset of each in `flat`
    int64_t numel = 0, padded = 0;
    at::Tensor flat;    // its parameters' .grad (padded to a multiple of world for ZeRO-1,
                        // whose all-gather of the updated slices lands here too)
    at::Tensor shard;   // ZeRO-1: this rank's reduced slice
    at::Tensor master;  // ZeRO-1: this rank's fp32 master slice
    std::vector<Segment> segments;
    size_t pending = 0;
    bool launched = false;
    std::unique_ptr<CommWork> work;
  };
  void build_buckets(double cap_mb);
  void launch_ready_buckets();  // in index order: every rank launches the same sequence
  void launch(Bucket& b);
  void mark_ready(size_t i);        // counts the parameter in, launching its bucket when full
  at::Tensor slot(size_t i) const;  // parameter i's gradient inside its bucket
  void attach_grad_views();
  at::Tensor layout() const;  // ZeRO-1: what a shard file must match

  Communicator& comm_;
  std::vector<NamedParameter> params_;
  int zero_stage_;
  bool reduce_ = false;  // world > 1 or ZeRO: buckets and hooks are in use
  bool sync_ = false;    // this backward is the last of the step
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_, pos_in_bucket_;
  std::vector<bool> ready_;
  size_t next_bucket_ = 0;
  std::vector<bool> used_;            // some rank produced a gradient this step
  std::vector<bool> got_grad_;        // this rank did (in any micro-step)
  std::unique_ptr<AdamW> optimizer_;  // over the parameters, or over ZeRO-1 segment views
  std::vector<NamedParameter> segment_params_;
  bool masters_ready_ = false;
  std::mutex mu_;
};

}  // namespace mgm::trainer
