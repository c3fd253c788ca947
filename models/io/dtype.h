// Element types of the on-disk tensor formats, named as safetensors names them. Torch-free so
// the format parsers can be fuzzed without libtorch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace mgm::models::io {

enum class DType : uint8_t {
  kBool, kU8, kI8, kI16, kU16, kI32, kU32, kI64, kU64, kF16, kBF16, kF32, kF64, kF8E5M2, kF8E4M3
};

// "F32", "BF16", ... (the safetensors spelling).
const char* dtype_name(DType d);
std::optional<DType> dtype_from_name(const std::string& name);
size_t dtype_size(DType d);
// torch.save storage class names: "FloatStorage" -> F32, ...
std::optional<DType> dtype_from_storage_class(const std::string& name);
const char* storage_class_name(DType d);

// numel of a shape with overflow checks; std::nullopt when it overflows.
std::optional<uint64_t> checked_numel(const int64_t* shape, size_t ndim);
std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b);

}  // namespace mgm::models::io
