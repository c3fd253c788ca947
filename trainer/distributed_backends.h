// Internal to trainer/distributed*.cc: the factories of the c10d backends, each in its own
// translation unit because each needs headers the rest of the project must not see (gloo's,
// NCCL's); see the comments at the top of distributed_gloo.cc and distributed_nccl.cc.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace mgm::trainer::detail {

// Gloo over TCP on the interfaces named by GLOO_SOCKET_IFNAME (comma-separated) or, as
// torch.distributed does by default, the address this machine's hostname resolves to (the
// loopback device when it does not resolve).
c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world,
                                                    std::chrono::milliseconds timeout);

// NCCL on cuda:device_index (made the current device first). Throws UsageError in builds
// without CUDA.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world,
                                                    std::chrono::milliseconds timeout,
                                                    int device_index);

}  // namespace mgm::trainer::detail
