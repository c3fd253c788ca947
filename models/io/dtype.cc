#include "models/io/dtype.h"

#include <cstring>

namespace mgm::models::io {
namespace {
struct Info {
  DType d;
  const char* name;
  size_t size;
  const char* storage;
};
constexpr Info kInfo[] = {
    {DType::kBool, "BOOL", 1, "BoolStorage"},       {DType::kU8, "U8", 1, "ByteStorage"},
    {DType::kI8, "I8", 1, "CharStorage"},           {DType::kI16, "I16", 2, "ShortStorage"},
    {DType::kU16, "U16", 2, "UInt16Storage"},       {DType::kI32, "I32", 4, "IntStorage"},
    {DType::kU32, "U32", 4, "UInt32Storage"},       {DType::kI64, "I64", 8, "LongStorage"},
    {DType::kU64, "U64", 8, "UInt64Storage"},       {DType::kF16, "F16", 2, "HalfStorage"},
    {DType::kBF16, "BF16", 2, "BFloat16Storage"},   {DType::kF32, "F32", 4, "FloatStorage"},
    {DType::kF64, "F64", 8, "DoubleStorage"},       {DType::kF8E5M2, "F8_E5M2", 1, "Float8_e5m2Storage"},
    {DType::kF8E4M3, "F8_E4M3", 1, "Float8_e4m3fnStorage"},
};
const Info& info(DType d) { return kInfo[static_cast<int>(d)]; }
}  // namespace

const char* dtype_name(DType d) { return info(d).name; }
size_t dtype_size(DType d) { return info(d).size; }
const char* storage_class_name(DType d) { return info(d).storage; }

std::optional<DType> dtype_from_name(const std::string& name) {
  for (const auto& i : kInfo)
    if (name == i.name) return i.d;
  return std::nullopt;
}

std::optional<DType> dtype_from_storage_class(const std::string& name) {
  for (const auto& i : kInfo)
    if (name == i.storage) return i.d;
  return std::nullopt;
}

std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  if (a != 0 && b > UINT64_MAX / a) return std::nullopt;
  return a * b;
}

std::optional<uint64_t> checked_numel(const int64_t* shape, size_t ndim) {
  uint64_t n = 1;
  for (size_t i = 0; i < ndim; ++i) {
    if (shape[i] < 0) return std::nullopt;
    auto m = checked_mul(n, static_cast<uint64_t>(shape[i]));
    if (!m) return std::nullopt;
    n = *m;
  }
  // Keep element counts within int64 so that torch can address them.
  if (n > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  return n;
}

}  // namespace mgm::models::io
