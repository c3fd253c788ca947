// CPython's `random` module, reproduced bit for bit where the toolkit uses it: MT19937 seeded
// as random.seed(int) does (init_by_array over the 32-bit words of |seed|), getrandbits,
// _randbelow, random() and random.sample's index sequence. Lets `mgm data sample` pick exactly
// the subset check_sample_number.py (random.seed(1024); random.sample(ds, n)) picks.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace mgm::data {

class PyRandom {
 public:
  explicit PyRandom(int64_t seed) { seed_int(seed); }
  // random.seed(a) for an int a (negative seeds use |a|, as CPython does).
  void seed_int(int64_t seed);
  uint32_t genrand_uint32();
  // random.getrandbits(k), 0 <= k <= 64.
  uint64_t getrandbits(int k);
  // Random._randbelow(n) (the getrandbits variant), n > 0.
  uint64_t randbelow(uint64_t n);
  // random.random(): 53-bit float in [0, 1).
  double random();
  // The population indices random.sample(range(n), k) returns, in order. Throws Error when
  // k > n ("Sample larger than population").
  std::vector<uint64_t> sample_indices(uint64_t n, uint64_t k);

 private:
  void init_genrand(uint32_t s);
  void init_by_array(const std::vector<uint32_t>& key);
  std::array<uint32_t, 624> mt_{};
  int mti_ = 625;
};

}  // namespace mgm::data
