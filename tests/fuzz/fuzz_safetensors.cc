// libFuzzer target: safetensors header parsing and validation (models/io/formats.h). Any
// exception other than mgm::Error, any sanitizer report, or a crash is a finding.
#include <cstddef>
#include <cstdint>

#include "common/error.h"
#include "models/io/formats.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    mgm::models::io::FileIndex idx =
        mgm::models::io::parse_safetensors(data, size, "fuzz.safetensors");
    // Whatever is accepted must lie inside the input: touch the first and last byte of each tensor.
    volatile uint8_t sink = 0;
    for (const auto& t : idx.tensors) {
      if (t.storage_nbytes == 0) continue;
      if (t.data_offset + t.storage_nbytes > size) __builtin_trap();
      sink = sink ^ data[t.data_offset] ^ data[t.data_offset + t.storage_nbytes - 1];
    }
    (void)sink;
  } catch (const mgm::Error&) {
  }
  return 0;
}
