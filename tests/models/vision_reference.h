// The small random reference towers (tests/parity/vision_reference.py), written once per test
// process, and an elementwise closeness check that reports the largest differences.
#pragma once

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/clamp_min.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tests_util.h"

namespace mgm::test {

struct VisionReference {
  int rc = -1;
  std::string dir, output;
};

inline const VisionReference& vision_reference() {
  static const VisionReference ref = [] {
    VisionReference r;
    r.dir = temp_dir("vision_ref");
    r.rc = run_python(source_dir() + "/tests/parity/vision_reference.py " + r.dir, &r.output);
    return r;
  }();
  return ref;
}

// |a - b| <= atol + rtol * |b| everywhere (fp32 parity: rtol 1e-5, atol 1e-6).
inline ::testing::AssertionResult all_close(const at::Tensor& a, const at::Tensor& b,
                                            double rtol = 1e-5, double atol = 1e-6) {
  if (a.sizes() != b.sizes())
    return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  at::Tensor x = a.detach().to(at::kDouble), y = b.detach().to(at::kDouble);
  at::Tensor diff = (x - y).abs();
  const double max_abs = diff.max().item<double>();
  // Relative to the reference, over values not near zero.
  const double max_rel = (diff / y.abs().clamp_min(1e-3)).max().item<double>();
  const bool ok = (diff <= atol + rtol * y.abs()).all().item<bool>();
  // MGM_TEST_VERBOSE=1 prints every comparison's margins (used for the parity numbers in notes).
  if (std::getenv("MGM_TEST_VERBOSE"))
    std::printf("[all_close] %s max abs diff %.3g, max rel diff %.3g\n",
                ::testing::UnitTest::GetInstance()->current_test_info()->name(), max_abs, max_rel);
  auto res = ok ? ::testing::AssertionSuccess() : ::testing::AssertionFailure();
  return res << "max abs diff " << max_abs << ", max rel diff " << max_rel;
}

}  // namespace mgm::test
