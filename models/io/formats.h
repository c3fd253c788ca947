// Torch-free parsing and validation of the two tensor container formats: safetensors headers
// and torch.save zip archives. The result says where each tensor's bytes are; the torch layer
// (tensor_file.h) only wraps them. Every check that guards against malformed input lives here,
// so the fuzz targets exercise all of it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "models/io/dtype.h"

namespace mgm::models::io {

// One tensor stored in a file.
struct TensorRecord {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;    // element strides (always contiguous for safetensors)
  int64_t storage_offset = 0;      // in elements, from `data_offset`
  uint64_t data_offset = 0;        // absolute byte offset in the file of the storage's start
  uint64_t storage_nbytes = 0;     // bytes of the storage (the whole buffer the view lives in)
  std::string storage_key;         // torch.save storages shared by several views share a key
  uint64_t numel() const;
  uint64_t nbytes() const { return numel() * dtype_size(dtype); }
};

struct FileIndex {
  enum class Format { kSafetensors, kTorchZip };
  Format format = Format::kSafetensors;
  std::vector<TensorRecord> tensors;           // in file order
  std::map<std::string, std::string> metadata;  // safetensors __metadata__
  std::vector<std::string> skipped;            // torch.save non-tensor entries ("name: int")
};

// Largest header the safetensors reference accepts.
constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

FileIndex parse_safetensors(const uint8_t* data, uint64_t size, const std::string& what);
FileIndex parse_torch_zip(const uint8_t* data, uint64_t size, const std::string& what);
// Detects the format from the first bytes; throws FormatError when it is neither.
FileIndex parse_tensor_file(const uint8_t* data, uint64_t size, const std::string& what);

// A safetensors header (8-byte length + JSON padded with spaces to 8 bytes) for tensors laid
// out back to back in the given order.
struct HeaderEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> sizes;
  uint64_t nbytes;
};
std::string build_safetensors_header(const std::vector<HeaderEntry>& entries,
                                     const std::map<std::string, std::string>& metadata);

}  // namespace mgm::models::io
