// DataParallel and the c10d Gloo communicator with two ranks as two threads of this process:
// bucketed averaging against hand-computed gradients, no communication before the last
// micro-step, parameters unused on some or all ranks, ZeRO-1 against plain data parallel, the
// shard checkpoint round trip, and the string/flag/tensor helpers.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <atomic>
#include <functional>
#include <thread>

#include "common/error.h"
#include "tests_util.h"
#include "trainer/ddp.h"
#include "trainer/distributed.h"

#if defined(MGM_HAVE_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace mgm::trainer {
namespace {

using test::free_port;

// Runs fn(comm) on `world` ranks, one thread each, over c10d Gloo.
void run_ranks(int world, const std::function<void(Communicator&)>& fn) {
  const int port = free_port();
  std::vector<std::thread> ts;
  std::vector<std::string> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r)
    ts.emplace_back([&, r] {
      try {
        LaunchEnv e;
        e.launcher = "torchrun";
        e.rank = e.local_rank = r;
        e.world_size = e.local_world_size = world;
        e.master_port = port;
        auto comm = make_communicator(e, DistOptions{"gloo", 60, "cpu"});
        fn(*comm);
        comm->finish();
      } catch (const std::exception& ex) {
        errors[static_cast<size_t>(r)] = ex.what();
      }
    });
  for (auto& t : ts) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
}

// Counts the collectives a DataParallel issues.
class CountingComm final : public Communicator {
 public:
  explicit CountingComm(Communicator& c) : Communicator(c.rank(), c.world_size()), c_(c) {}
  std::string backend() const override { return c_.backend(); }
  at::Device device() const override { return c_.device(); }
  std::unique_ptr<CommWork> all_reduce(at::Tensor& t, ReduceOp op) override {
    ++calls;
    return c_.all_reduce(t, op);
  }
  std::unique_ptr<CommWork> reduce_scatter(at::Tensor& out, at::Tensor& in) override {
    ++calls;
    return c_.reduce_scatter(out, in);
  }
  std::unique_ptr<CommWork> all_gather(at::Tensor& out, at::Tensor& in) override {
    ++calls;
    return c_.all_gather(out, in);
  }
  void broadcast(at::Tensor& t, int root) override { c_.broadcast(t, root); }
  void barrier() override { c_.barrier(); }
  std::atomic<int> calls{0};

 private:
  Communicator& c_;
};

// Four parameters; "c" is used by rank 0 only and "d" by nobody. Each rank's micro-batch k puts
// weight (rank + 1) * (k + 1) on its terms, so every gradient is known by hand.
struct Toy {
  std::vector<NamedParameter> params;
  explicit Toy(at::Device dev = at::kCPU) {
    auto make = [dev](std::vector<int64_t> shape, double start) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      return (at::arange(n, at::kFloat).reshape(shape) * 0.1 + start)
          .to(dev)
          .set_requires_grad(true);
    };
    params = {{"a.weight", make({3, 4}, 0.5), true},
              {"b.bias", make({4}, -0.2), false},
              {"c.weight", make({5}, 0.3), true},
              {"d.weight", make({2, 2}, 0.7), true}};
  }
  at::Tensor loss(int rank, int k) const {
    const double w = (rank + 1) * (k + 1);
    at::Tensor l = (params[0].param * w).sum() + (params[1].param.square() * w).sum();
    if (rank == 0) l = l + (params[2].param * (3.0 * w)).sum();
    return l;
  }
};

TEST(DataParallel, AveragesBucketsAfterTheLastMicroStepOnly) {
  run_ranks(2, [](Communicator& base) {
    CountingComm comm(base);
    Toy toy;
    // A tiny bucket cap: several buckets, launched in order from the hooks.
    DataParallel dp(comm, toy.params, AdamWConfig{}, DdpOptions{0.00003, 0});
    EXPECT_GE(dp.bucket_count(), 3);
    const int r = comm.rank();
    for (int k = 0; k < 2; ++k) {
      at::Tensor loss = toy.loss(r, k);
      dp.before_backward(loss, k == 1);
      if (k == 1) {
        // "d" (reached by no rank's loss) sits in the first bucket, which goes at once.
        EXPECT_GE(comm.calls.load(), 1);
      }
      loss.backward();
      if (k == 0) {
        EXPECT_EQ(comm.calls.load(), 0) << "no communication before the last micro-step";
      }
    }
    EXPECT_EQ(comm.calls.load(), dp.bucket_count())
        << "every bucket is on its way when backward ends";
    dp.finish_gradients();
    EXPECT_EQ(comm.calls.load(), dp.bucket_count() + 1);  // + the used-parameter flags
    // Hand-computed: accumulated weight of rank r is (r+1)*(1+2) = 3(r+1); averaged over ranks.
    const double wa = (3.0 * 1 + 3.0 * 2) / 2;  // 4.5
    EXPECT_TRUE(toy.params[0].param.grad().allclose(at::full({3, 4}, wa)));
    EXPECT_TRUE(toy.params[1].param.grad().allclose(2 * toy.params[1].param.detach() * wa));
    EXPECT_TRUE(
        toy.params[2].param.grad().allclose(at::full({5}, 3.0 * 3.0 / 2)));  // rank 0's, halved
    EXPECT_FALSE(toy.params[3].param.grad().defined())
        << "no rank produced a gradient: none, as on one device";
    // Both ranks hold the same clipped gradients, hence take the same step.
    const at::Tensor norm = dp.clip_grad_norm(1.0);
    EXPECT_GT(norm.item<float>(), 1.0f);
    dp.step(1e-2);
    dp.zero_grad();
    at::Tensor p = toy.params[0].param.detach().clone();
    comm.all_reduce_blocking(p, ReduceOp::kMax);
    EXPECT_TRUE(p.equal(toy.params[0].param.detach())) << "replicas diverged";
  });
}

// ZeRO-1 takes the same steps as plain data parallel (to reduction-order rounding).
TEST(DataParallel, ZeroOneMatchesPlain) {
  run_ranks(2, [](Communicator& comm) {
    Toy plain, zero;
    AdamWConfig cfg;
    cfg.weight_decay = 0.1;
    DataParallel dp(comm, plain.params, cfg, DdpOptions{0.00003, 0});
    DataParallel z(comm, zero.params, cfg, DdpOptions{0.00003, 1});
    EXPECT_TRUE(z.sharded());
    for (int step = 0; step < 3; ++step) {
      for (DataParallel* d : {&dp, &z}) {
        Toy& t = d == &dp ? plain : zero;
        for (int k = 0; k < 2; ++k) {
          at::Tensor loss = t.loss(comm.rank(), k + step);
          d->before_backward(loss, k == 1);
          loss.backward();
        }
        d->finish_gradients();
        d->clip_grad_norm(5.0);
        d->step(1e-2);
        d->zero_grad();
      }
    }
    for (size_t i = 0; i < plain.params.size(); ++i)
      EXPECT_TRUE(plain.params[i].param.allclose(zero.params[i].param, 1e-6, 1e-7))
          << plain.params[i].name;
    EXPECT_TRUE(plain.params[3].param.equal(Toy().params[3].param))
        << "never had a gradient: never updated";
    // The shard: this rank's slices only, and a round trip; another rank's shard is refused.
    const auto shard = z.state_tensors();
    int64_t elems = 0;
    for (const auto& [n, t] : shard)
      if (n.size() > 8 && n.substr(n.size() - 8) == ".exp_avg") elems += t.numel();
    EXPECT_LT(elems, 3 * 4 + 4 + 5);  // a part of the parameters that ever had a gradient
    at::Tensor mine = at::tensor(std::vector<int64_t>{elems}, at::kLong);
    comm.all_reduce_blocking(mine, ReduceOp::kSum);
    EXPECT_EQ(mine.item<int64_t>(), 3 * 4 + 4 + 5) << "the shards cover every element once";
    z.load_state_tensors(shard, "shard");
    std::vector<std::pair<std::string, at::Tensor>> other = shard;
    for (auto& [n, t] : other)
      if (n == "zero1.layout") t = t.clone(), t[1] = 1 - comm.rank();
    try {
      z.load_state_tensors(other, "other.safetensors");
      ADD_FAILURE() << "a shard of another rank was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("ZeRO-1 shard layout differs"), std::string::npos)
          << e.what();
    }
    EXPECT_THROW(dp.load_state_tensors(shard, "shard"), Error);  // plain run, sharded state
  });
}

TEST(DataParallel, HelpersAgreeAcrossRanks) {
  run_ranks(2, [](Communicator& comm) {
    EXPECT_EQ(comm.broadcast_string(comm.rank() == 0 ? "/out/checkpoint-12" : "ignored"),
              "/out/checkpoint-12");
    EXPECT_EQ(comm.broadcast_string(comm.rank() == 0 ? "" : "x"), "");
    EXPECT_TRUE(comm.all_true(true));
    EXPECT_FALSE(comm.all_true(comm.rank() == 0));
    std::vector<at::Tensor> ts{at::full({3}, static_cast<float>(comm.rank())),
                               at::full({2, 2}, static_cast<int64_t>(comm.rank() + 7)),
                               at::full({1}, static_cast<double>(comm.rank()) - 1)};
    broadcast_tensors(comm, ts);
    EXPECT_TRUE(ts[0].equal(at::zeros({3})));
    EXPECT_TRUE(ts[1].equal(at::full({2, 2}, static_cast<int64_t>(7))));
    EXPECT_TRUE(ts[2].equal(at::full({1}, -1.0, at::kDouble)));
    comm.barrier();
  });
}

// One process: exactly the single-device optimizer step.
TEST(DataParallel, SingleProcessIsAPassThrough) {
  auto comm = make_communicator(LaunchEnv{}, DistOptions{"auto", 60, "cpu"});
  EXPECT_EQ(comm->backend(), "none");
  Toy a, b;
  DataParallel dp(*comm, a.params, AdamWConfig{}, DdpOptions{});
  AdamW ref(b.params, AdamWConfig{});
  for (int k = 0; k < 2; ++k) {
    at::Tensor loss = a.loss(0, k);
    dp.before_backward(loss, k == 1);
    loss.backward();
    b.loss(0, k).backward();
  }
  dp.finish_gradients();
  EXPECT_TRUE(dp.clip_grad_norm(1.0).equal(clip_grad_norm(
      {b.params[0].param, b.params[1].param, b.params[2].param, b.params[3].param}, 1.0)));
  dp.step(1e-2);
  ref.step(1e-2);
  for (size_t i = 0; i < a.params.size(); ++i)
    EXPECT_TRUE(a.params[i].param.equal(b.params[i].param));
  EXPECT_THROW(DataParallel(*comm, a.params, AdamWConfig{}, DdpOptions{25, 2}), UsageError);
}

#if defined(MGM_HAVE_CUDA)
// Any synchronizing CUDA call (a stream or device sync, a blocking copy) throws while it lives.
class SyncIsAnError {
 public:
  SyncIsAnError() {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  }
  ~SyncIsAnError() {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  }
  SyncIsAnError(const SyncIsAnError&) = delete;
  SyncIsAnError& operator=(const SyncIsAnError&) = delete;
};

// The end of backward is queued on the stream, never waited for on the host: a sync there
// would stall every step until the GPU has finished backward. (ZeRO-1 on one process takes
// the bucketed path; a loss that reaches every parameter leaves nothing to read back.)
TEST(DataParallel, FinishGradientsDoesNotWaitForTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device";
  auto comm = make_communicator(LaunchEnv{}, DistOptions{"auto", 60, "cuda:0"});
  Toy toy(at::Device("cuda:0"));
  DataParallel dp(*comm, toy.params, AdamWConfig{}, DdpOptions{25, 1});
  at::Tensor loss = toy.loss(0, 0) + toy.params[3].param.sum();
  dp.before_backward(loss, true);
  loss.backward();
  {
    SyncIsAnError no_sync;
    EXPECT_NO_THROW(dp.finish_gradients());
  }
  std::vector<at::Tensor> before;
  for (const auto& p : toy.params) before.push_back(p.param.detach().clone());
  dp.step(1e-2);
  for (size_t i = 0; i < toy.params.size(); ++i)
    EXPECT_FALSE(toy.params[i].param.detach().equal(before[i])) << toy.params[i].name;
}
#endif

}  // namespace
}  // namespace mgm::trainer
