// libFuzzer target: the restricted unpickler and the state-dict walk (models/io/pickle.h).
// Any exception other than mgm::Error, any sanitizer report, or a crash is a finding.
#include <cstddef>
#include <cstdint>

#include "common/error.h"
#include "models/io/pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mgm::models::io;
  try {
    PickleResult r = unpickle(data, size, "fuzz.pkl");
    StateDictIndex sd = index_state_dict(r, "fuzz.pkl");
    for (const auto& t : sd.tensors) {
      if (t.sizes.size() != t.strides.size() || t.storage_offset < 0) __builtin_trap();
    }
  } catch (const mgm::Error&) {
  }
  return 0;
}
