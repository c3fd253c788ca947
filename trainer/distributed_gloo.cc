// The one translation unit that includes ProcessGroupGloo.hpp.
//
// Why it is built the way it is: libtorch_cpu.so contains gloo (statically linked) and exports
// ProcessGroupGloo, but the torch wheel does not ship gloo's headers, which ProcessGroupGloo.hpp
// includes. This file is compiled against Debian's libgloo-dev headers (an older gloo than the
// wheel's; we never link Debian's libgloo) and that is sound because nothing here depends on
// gloo's own types beyond their names:
//  * we hold gloo objects only through std::shared_ptr<gloo::transport::Device>, made and
//    destroyed inside libtorch (createDeviceForInterface / createDefaultDevice), whose control
//    block libtorch owns, and std::shared_ptr's layout does not depend on the pointee;
//  * ProcessGroupGloo::Options is Backend::Options (a torch type) + std::vector<shared_ptr<...>>
//    + int, and ProcessGroupGloo's members are standard containers of (shared) pointers, so the
//    sizes make_intrusive allocates here equal libtorch's whatever gloo's version;
//  * we call only out-of-line functions (the constructors, the device factories), and the
//    class's key function (its destructor) is out of line, so its vtable and every virtual
//    comes from libtorch; GlooStore and the work classes, whose inline code does touch gloo,
//    are never instantiated here.
// As a guard against symbol interposition (libtorch_cpu.so exports its gloo symbols, and an
// inline gloo function emitted here with default visibility would replace libtorch's copy at
// load time), this file is compiled with hidden visibility, and the test
// `trainer_gloo_tu_symbols` checks that its object file defines no gloo symbol at all.
#include "trainer/distributed_backends.h"

#include "common/error.h"
#include "common/strings.h"

#if defined(MGM_WITH_GLOO)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdlib>
#endif

namespace mgm::trainer::detail {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world,
                                                    std::chrono::milliseconds timeout) {
#if defined(MGM_WITH_GLOO)
  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname != nullptr && *ifname != '\0') {
    for (const std::string& name : split(ifname, ',')) {
      if (name.empty()) continue;
      try {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      } catch (const std::exception& e) {
        throw UsageError(str_cat("GLOO_SOCKET_IFNAME: cannot use the network interface '", name,
                                 "': ", e.what()));
      }
    }
  }
  if (opts->devices.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
#else
  (void)store, (void)rank, (void)world, (void)timeout;
  throw UsageError(
      "this build of train_mgm has no Gloo backend: gloo's headers (Debian package libgloo-dev) "
      "were not found when it was configured; install it (scripts/setup.sh) and reconfigure");
#endif
}

}  // namespace mgm::trainer::detail
