#include "trainer/ddp.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "common/error.h"
#include "common/strings.h"

namespace mgm::trainer {

namespace {

// Runs after AccumulateGrad has added this backward's gradient into the parameter's .grad, so
// the hook sees the gradient accumulated over every micro-step of the optimizer step.
class ReadyHook final : public torch::autograd::PostAccumulateGradHook {
 public:
  ReadyHook(DataParallel* dp, size_t index) : dp_(dp), index_(index) {}
  void operator()(const torch::autograd::Variable& /*param*/) override {
    dp_->on_grad_ready(index_);
  }

 private:
  DataParallel* dp_;
  size_t index_;
};

constexpr int64_t kMiB = 1 << 20;

}  // namespace

DataParallel::DataParallel(Communicator& comm, std::vector<NamedParameter> params,
                           const AdamWConfig& cfg, const DdpOptions& opts)
    : comm_(comm), params_(std::move(params)), zero_stage_(opts.zero_stage) {
  if (zero_stage_ != 0 && zero_stage_ != 1)
    throw UsageError(str_cat("--zero_stage: expected 0 or 1, got ", zero_stage_));
  if (!(opts.bucket_cap_mb > 0))
    throw UsageError(str_cat("--ddp_bucket_cap_mb must be positive, got ", opts.bucket_cap_mb));
  reduce_ = comm_.world_size() > 1 || zero_stage_ == 1;
  if (!reduce_) {
    optimizer_ = std::make_unique<AdamW>(params_, cfg);
    return;
  }
  build_buckets(opts.bucket_cap_mb);
  ready_.assign(params_.size(), false);
  used_.assign(params_.size(), false);
  got_grad_.assign(params_.size(), false);
  attach_grad_views();
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i].param;
    MGM_CHECK(p.requires_grad(), "data parallel: '", params_[i].name, "' does not require grad");
    MGM_CHECK(torch::autograd::impl::post_acc_grad_hooks(p) == nullptr, "data parallel: '",
              params_[i].name, "' already has a post-accumulate-grad hook");
    torch::autograd::impl::set_post_acc_grad_hooks(p, std::make_unique<ReadyHook>(this, i));
  }
  if (zero_stage_ == 0) {
    optimizer_ = std::make_unique<AdamW>(params_, cfg);
    return;
  }
  // ZeRO-1: this rank's slice of every bucket, cut at parameter boundaries into segments that
  // are views of the fp32 master slice, so AdamW (and its checkpoint names) works per segment
  // with the parameter's weight-decay rule.
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    Bucket& b = buckets_[bi];
    for (const Segment& s : b.segments) {
      const NamedParameter& p = params_[s.param];
      segment_params_.push_back({str_cat(p.name, "@", s.param_offset),
                                 b.master.narrow(0, s.shard_offset, s.length), p.decay, p.lr_group});
    }
  }
  optimizer_ = std::make_unique<AdamW>(segment_params_, cfg);
}

DataParallel::~DataParallel() {
  if (!reduce_) return;
  for (auto& p : params_) torch::autograd::impl::set_post_acc_grad_hooks(p.param, nullptr);
}

void DataParallel::build_buckets(double cap_mb) {
  const int64_t world = comm_.world_size();
  const int64_t cap =
      std::max<int64_t>(1, static_cast<int64_t>(cap_mb * static_cast<double>(kMiB)));
  pos_in_bucket_.assign(params_.size(), 0);
  bucket_of_.assign(params_.size(), 0);
  auto close = [&](Bucket& b) {
    if (b.params.empty()) return;
    const at::Tensor& p0 = params_[b.params.front()].param;
    const auto grad_opts = at::TensorOptions().dtype(p0.scalar_type()).device(p0.device());
    b.padded = zero_stage_ == 1 ? (b.numel + world - 1) / world * world : b.numel;
    b.flat = at::zeros({b.padded}, grad_opts);
    b.pending = b.params.size();
    if (zero_stage_ == 1) {
      const int64_t chunk = b.padded / world, lo = comm_.rank() * chunk, hi = lo + chunk;
      b.shard = at::zeros({chunk}, grad_opts);
      b.master = at::zeros({chunk}, at::TensorOptions().dtype(at::kFloat).device(p0.device()));
      for (size_t j = 0; j < b.params.size(); ++j) {
        const int64_t off = b.offsets[j], n = params_[b.params[j]].param.numel();
        const int64_t s = std::max(lo, off), e = std::min(hi, off + n);
        if (s < e) b.segments.push_back({b.params[j], s - off, e - s, s - lo});
      }
    }
    buckets_.push_back(std::move(b));
    b = Bucket();
  };
  // Reverse registration order approximates the order gradients become ready in backward, so
  // the first buckets fill (and go on the wire) while backward is still running. The first
  // bucket is small, as DDP's, so communication starts early.
  Bucket cur;
  int64_t cur_bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const at::Tensor& p = params_[k].param;
    const int64_t bytes = static_cast<int64_t>(p.nbytes());
    const int64_t limit = buckets_.empty() ? std::min(kMiB, cap) : cap;
    if (!cur.params.empty()) {
      const at::Tensor& q = params_[cur.params.front()].param;
      if (q.scalar_type() != p.scalar_type() || q.device() != p.device() ||
          cur_bytes + bytes > limit) {
        close(cur);
        cur_bytes = 0;
      }
    }
    bucket_of_[k] = buckets_.size();
    pos_in_bucket_[k] = cur.params.size();
    cur.params.push_back(k);
    cur.offsets.push_back(cur.numel);
    cur.numel += p.numel();
    cur_bytes += bytes;
  }
  close(cur);
}

void DataParallel::before_backward(const at::Tensor& loss, bool last) {
  sync_ = last;
  if (!reduce_ || !last) return;
  // The leaves the graph reaches (through AccumulateGrad nodes), as DDP's unused-parameter search.
  std::unordered_map<const c10::TensorImpl*, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i)
    index.emplace(params_[i].param.unsafeGetTensorImpl(), i);
  std::vector<bool> reached(params_.size(), false);
  std::vector<torch::autograd::Node*> stack;
  std::unordered_set<torch::autograd::Node*> seen;
  if (loss.grad_fn()) stack.push_back(loss.grad_fn().get());
  while (!stack.empty()) {
    torch::autograd::Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(n)) {
      const auto it = index.find(acc->variable.unsafeGetTensorImpl());
      if (it != index.end()) reached[it->second] = true;
    }
    for (const auto& e : n->next_edges())
      if (e.function) stack.push_back(e.function.get());
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < params_.size(); ++i)
    if (!reached[i] && !ready_[i]) mark_ready(i);
}

at::Tensor DataParallel::slot(size_t i) const {
  const Bucket& b = buckets_[bucket_of_[i]];
  const at::Tensor& p = params_[i].param;
  return b.flat.narrow(0, b.offsets[pos_in_bucket_[i]], p.numel()).view(p.sizes());
}

void DataParallel::attach_grad_views() {
  // The gradients live in the buckets (DDP's gradient_as_bucket_view): backward accumulates
  // into them in place, so a bucket is ready to go without a copy, and no second copy of the
  // gradients is held.
  for (auto& b : buckets_) b.flat.zero_();
  for (size_t i = 0; i < params_.size(); ++i) params_[i].param.mutable_grad() = slot(i);
}

void DataParallel::on_grad_ready(size_t i) {
  if (!reduce_) return;
  std::lock_guard<std::mutex> lock(mu_);
  got_grad_[i] = true;
  if (!sync_) return;
  MGM_CHECK(!ready_[i], "data parallel: '", params_[i].name,
            "' received its gradient twice in one backward pass");
  mark_ready(i);
}

void DataParallel::mark_ready(size_t i) {
  ready_[i] = true;
  // Normally .grad is the bucket slot already (all zeros when this rank's batches did not reach
  // the parameter); a gradient that is not (replaced by someone) is copied in.
  const at::Tensor& g = params_[i].param.grad();
  if (!g.defined() || g.data_ptr() != slot(i).data_ptr()) {
    at::NoGradGuard no_grad;
    at::Tensor s = slot(i);
    if (g.defined())
      s.copy_(g);
    else
      s.zero_();
    params_[i].param.mutable_grad() = s;
  }
  Bucket& b = buckets_[bucket_of_[i]];
  if (--b.pending == 0) launch_ready_buckets();
}

void DataParallel::launch_ready_buckets() {
  // Collectives pair up by issue order on every rank: buckets go strictly in index order even
  // when a later one fills first.
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].pending == 0)
    launch(buckets_[next_bucket_++]);
}

void DataParallel::launch(Bucket& b) {
  at::NoGradGuard no_grad;
  // Gloo has no AVG: divide first, then sum (what DDP's default hook does).
  if (comm_.world_size() > 1) b.flat.div_(static_cast<double>(comm_.world_size()));
  b.work = zero_stage_ == 1 ? comm_.reduce_scatter(b.shard, b.flat)
                            : comm_.all_reduce(b.flat, ReduceOp::kSum);
  b.launched = true;
}

void DataParallel::finish_gradients() {
  if (!reduce_) return;
  at::NoGradGuard no_grad;
  at::Tensor flags;
  std::unique_ptr<CommWork> flags_work;
  bool all_local = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // What backward did not deliver: a parameter the graph reached without producing a gradient
    // for it, or no backward at all (a last micro-batch whose samples were all skipped).
    for (size_t i = 0; i < params_.size(); ++i)
      if (!ready_[i]) mark_ready(i);
    launch_ready_buckets();
    // Which parameters got a gradient on some rank: one small all-reduce, read on the host only
    // when this rank lacks one (so the common step has no host sync for it).
    std::vector<float> local(params_.size());
    for (size_t i = 0; i < params_.size(); ++i) {
      local[i] = got_grad_[i] ? 1.0f : 0.0f;
      all_local = all_local && got_grad_[i];
    }
    // A plain .to(cuda) from pageable memory waits for the stream (all of backward); from
    // pinned memory with non_blocking it is queued behind it instead.
    at::Tensor host = at::tensor(local, at::kFloat);
    if (comm_.device().is_cuda()) host = host.pin_memory();
    flags = host.to(comm_.device(), /*non_blocking=*/true);
    flags_work = comm_.all_reduce(flags, ReduceOp::kSum);
  }
  for (auto& b : buckets_) b.work->wait();
  flags_work->wait();
  if (all_local) {
    std::fill(used_.begin(), used_.end(), true);
  } else {
    const at::Tensor host = flags.to(at::kCPU);
    const float* f = host.data_ptr<float>();
    for (size_t i = 0; i < params_.size(); ++i) used_[i] = f[i] > 0;
  }
  if (zero_stage_ == 0) {
    // The .grad views now hold the averages; a parameter no rank reached has none, as on one
    // device (so AdamW leaves it alone).
    for (size_t i = 0; i < params_.size(); ++i)
      if (!used_[i]) params_[i].param.mutable_grad() = at::Tensor();
  } else {
    size_t k = 0;
    for (auto& b : buckets_)
      for (const Segment& s : b.segments) {
        segment_params_[k++].param.mutable_grad() =
            used_[s.param] ? b.shard.narrow(0, s.shard_offset, s.length) : at::Tensor();
      }
    for (auto& p : params_) p.param.mutable_grad() = at::Tensor();  // only the slices are used
  }
  for (auto& b : buckets_) {
    b.work.reset();
    b.launched = false;
    b.pending = b.params.size();
  }
  std::fill(ready_.begin(), ready_.end(), false);
  std::fill(got_grad_.begin(), got_grad_.end(), false);
  next_bucket_ = 0;
  sync_ = false;
}

bool DataParallel::unscale_and_check(DynamicLossScaler& scaler) {
  std::vector<at::Tensor> grads;
  for (const auto& p : zero_stage_ == 1 ? segment_params_ : params_)
    if (p.param.grad().defined()) grads.push_back(p.param.grad());
  const bool overflow = scaler.unscale_and_check(grads);
  // Plain data parallel: every rank holds the same averaged gradients, hence the same answer.
  return zero_stage_ == 1 ? !comm_.all_true(!overflow) : overflow;
}

at::Tensor DataParallel::clip_grad_norm(double max_norm) {
  if (zero_stage_ == 0) {
    std::vector<at::Tensor> ps;
    for (const auto& p : params_) ps.push_back(p.param);
    return trainer::clip_grad_norm(ps, max_norm);
  }
  // ZeRO-1: the norm of the whole gradient from every rank's sum of squares.
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : segment_params_)
    if (p.param.grad().defined()) grads.push_back(p.param.grad());
  at::Tensor sq = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(comm_.device()));
  for (const auto& g : grads)
    sq.add_(at::linalg_vector_norm(g, 2, {}, false, at::kFloat).square().to(sq.device()));
  comm_.all_reduce_blocking(sq, ReduceOp::kSum);
  at::Tensor total = sq.sqrt().reshape({});
  if (max_norm > 0 && !grads.empty()) {
    at::Tensor coef = at::clamp_max(at::reciprocal(total + 1e-6) * max_norm, 1.0);
    for (auto& g : grads) g.mul_(coef.to(g.device()));
  }
  return total;
}

void DataParallel::step(const std::vector<double>& group_lrs) {
  if (zero_stage_ == 0) {
    optimizer_->step(group_lrs);
    return;
  }
  at::NoGradGuard no_grad;
  if (!masters_ready_) {
    // From the parameters as they are at the first step: after any resume and the broadcast.
    for (auto& b : buckets_)
      for (const Segment& s : b.segments)
        b.master.narrow(0, s.shard_offset, s.length)
            .copy_(
                params_[s.param].param.detach().reshape({-1}).narrow(0, s.param_offset, s.length));
    masters_ready_ = true;
  }
  optimizer_->step(group_lrs);
  // Every rank's updated slice back into every rank's parameters.
  std::vector<at::Tensor> outs;
  std::vector<std::unique_ptr<CommWork>> works;
  for (auto& b : buckets_) {
    at::Tensor out =
        b.flat.scalar_type() == at::kFloat ? b.flat : at::empty({b.padded}, b.master.options());
    works.push_back(comm_.all_gather(out, b.master));
    outs.push_back(out);
  }
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    works[bi]->wait();
    const Bucket& b = buckets_[bi];
    for (size_t j = 0; j < b.params.size(); ++j) {
      at::Tensor p = params_[b.params[j]].param.detach();
      p.copy_(outs[bi].narrow(0, b.offsets[j], p.numel()).view(p.sizes()));
    }
  }
}

void DataParallel::zero_grad() {
  optimizer_->zero_grad();  // the parameters' (or ZeRO-1 slices') gradients to none
  if (reduce_) attach_grad_views();
}

at::Tensor DataParallel::layout() const {
  std::vector<int64_t> v{comm_.world_size(), comm_.rank(), static_cast<int64_t>(buckets_.size())};
  for (const auto& b : buckets_) {
    v.push_back(b.numel);
    v.push_back(b.padded);
  }
  return at::tensor(v, at::kLong);
}

std::vector<std::pair<std::string, at::Tensor>> DataParallel::state_tensors() const {
  auto out = optimizer_->state_tensors();
  if (zero_stage_ == 1) out.emplace_back("zero1.layout", layout());
  return out;
}

void DataParallel::load_state_tensors(const std::vector<std::pair<std::string, at::Tensor>>& t,
                                      const std::string& source) {
  std::vector<std::pair<std::string, at::Tensor>> rest;
  at::Tensor saved_layout;
  for (const auto& [name, tensor] : t) {
    if (name == "zero1.layout")
      saved_layout = tensor;
    else
      rest.emplace_back(name, tensor);
  }
  if (zero_stage_ == 1) {
    MGM_CHECK(saved_layout.defined(), source,
              ": not a ZeRO-1 optimizer shard (no zero1.layout); "
              "was the checkpoint written with --zero_stage 0?");
    const at::Tensor mine = layout();
    if (!saved_layout.to(at::kLong).equal(mine)) {
      const auto s = saved_layout.to(at::kLong);
      throw Error(str_cat(source, ": ZeRO-1 shard layout differs (checkpoint: world ",
                          s[0].item<int64_t>(), ", rank ", s[1].item<int64_t>(), ", ",
                          s[2].item<int64_t>(), " buckets; now: world ", comm_.world_size(),
                          ", rank ", comm_.rank(), ", ", buckets_.size(),
                          " buckets): resume with the same world size and "
                          "--ddp_bucket_cap_mb"));
    }
  } else {
    MGM_CHECK(!saved_layout.defined(), source,
              ": a ZeRO-1 optimizer shard, but this run has --zero_stage 0");
  }
  try {
    optimizer_->load_state_tensors(rest);
  } catch (const Error& e) {
    throw Error(str_cat(source, ": ", e.what()));
  }
}

}  // namespace mgm::trainer
