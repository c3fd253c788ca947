// A restricted unpickler for torch.save archives (data.pkl). It builds a value tree and never
// executes anything: the only globals accepted are the ones a state dict needs (OrderedDict,
// the tensor/parameter rebuild functions, the typed storage classes, _codecs.encode); any other
// global is refused with an error naming it. Also a writer for the subset torch.save uses.
// Torch-free (fuzzed without libtorch).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/io/dtype.h"

namespace mgm::models::io {

struct PyObj {
  enum class Type {
    kNone, kBool, kInt, kFloat, kStr, kBytes, kTuple, kList, kDict, kGlobal, kStorage, kTensor
  };
  Type type = Type::kNone;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                                  // str, bytes, global "module.name", storage key
  std::vector<PyObj*> items;                      // tuple, list
  std::vector<std::pair<PyObj*, PyObj*>> dict;    // insertion order
  // storage
  DType dtype = DType::kF32;
  uint64_t numel = 0;
  std::string location;
  // tensor
  PyObj* storage = nullptr;
  int64_t storage_offset = 0;
  std::vector<int64_t> sizes, strides;
  bool requires_grad = false;
};

// Owns every object of one unpickled stream (an arena, so reference cycles cannot leak).
struct PickleResult {
  std::vector<std::unique_ptr<PyObj>> arena;
  PyObj* root = nullptr;
};

// Unpickles `data` (protocols 0-5 opcodes that plain data needs). `what` names the file in
// errors. Throws FormatError on malformed input or a forbidden global.
PickleResult unpickle(const uint8_t* data, size_t size, const std::string& what);

// A tensor found in a state dict: where its bytes are and how it views them.
struct PickledTensor {
  std::string name;  // nested dicts flattened with "."
  std::string storage_key;
  DType dtype = DType::kF32;
  uint64_t storage_numel = 0;
  int64_t storage_offset = 0;
  std::vector<int64_t> sizes, strides;
};

struct StateDictIndex {
  std::vector<PickledTensor> tensors;
  std::vector<std::string> skipped;  // non-tensor leaves ("name: int"), reported, not loaded
};

// Walks the unpickled root (a dict, possibly nested) into tensors. Checks each view against its
// storage's element count.
StateDictIndex index_state_dict(const PickleResult& r, const std::string& what);

// Writes the pickle torch.save produces for a plain dict of tensors, one storage per tensor
// (keys "0", "1", ... in order). Protocol 2, readable by torch.load(weights_only=True).
struct PickleTensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> sizes;  // contiguous
};
std::string pickle_state_dict(const std::vector<PickleTensorSpec>& tensors);

}  // namespace mgm::models::io
