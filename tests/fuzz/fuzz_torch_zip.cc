// libFuzzer target: torch.save zip archives (zip directory, data.pkl unpickling, storage
// records). Any exception other than mgm::Error, any sanitizer report, or a crash is a finding.
#include <cstddef>
#include <cstdint>

#include "common/error.h"
#include "models/io/dtype.h"
#include "models/io/formats.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mgm::models::io;
  try {
    FileIndex idx = parse_torch_zip(data, size, "fuzz.bin");
    // Every accepted view must stay inside its storage, and the storage inside the input.
    volatile uint8_t sink = 0;
    for (const auto& t : idx.tensors) {
      if (t.data_offset + t.storage_nbytes > size) __builtin_trap();
      if (t.numel() == 0) continue;
      uint64_t last = static_cast<uint64_t>(t.storage_offset);
      for (size_t d = 0; d < t.sizes.size(); ++d)
        last += static_cast<uint64_t>(t.sizes[d] - 1) * static_cast<uint64_t>(t.strides[d]);
      const uint64_t end_byte = (last + 1) * dtype_size(t.dtype);
      if (end_byte > t.storage_nbytes) __builtin_trap();
      sink = sink ^ data[t.data_offset + end_byte - 1];
    }
    (void)sink;
  } catch (const mgm::Error&) {
  }
  return 0;
}
