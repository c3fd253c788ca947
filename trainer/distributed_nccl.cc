// The one translation unit that includes ProcessGroupNCCL.hpp (CUDA builds only).
//
// ProcessGroupNCCL::Options embeds NCCL's ncclConfig_t, whose size depends on the NCCL version
// of nccl.h, and Options is allocated here (make_intrusive). So this file is compiled against
// the nccl.h of the nvidia-nccl package that the torch wheel pins (site-packages/nvidia/nccl,
// found by trainer/CMakeLists.txt before the CUDA toolkit's copy), and at run time the NCCL
// library libtorch loaded must have the same major.minor version as that header, or the process
// group is refused with a message instead of risking a layout mismatch.
#include "trainer/distributed_backends.h"

#include "common/error.h"
#include "common/strings.h"

#if defined(MGM_WITH_NCCL) && defined(MGM_HAVE_CUDA) && defined(USE_C10D_NCCL)
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/NCCLUtils.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <tuple>
#endif

namespace mgm::trainer::detail {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world,
                                                    std::chrono::milliseconds timeout,
                                                    int device_index) {
#if defined(MGM_WITH_NCCL) && defined(MGM_HAVE_CUDA) && defined(USE_C10D_NCCL)
  const auto [major, minor, patch] = c10d::getNcclVersionTuple();
  (void)patch;
  if (major != NCCL_MAJOR || minor != NCCL_MINOR)
    throw Error(
        str_cat("NCCL ", major, ".", minor,
                " is loaded but train_mgm was compiled against "
                "nccl.h ",
                NCCL_MAJOR, ".", NCCL_MINOR,
                ": rebuild against the torch package you run with (or use --ddp_backend gloo)"));
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
#else
  (void)store, (void)rank, (void)world, (void)timeout, (void)device_index;
  throw UsageError(
      "--ddp_backend nccl: this build of train_mgm has no NCCL backend (no CUDA, or nccl.h was not "
      "found when it was configured): use gloo, or rebuild with a CUDA torch and toolkit");
#endif
}

}  // namespace mgm::trainer::detail
