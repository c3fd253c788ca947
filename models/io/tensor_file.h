// Reading and writing the tensor files of the Python world from C++: safetensors (single and
// sharded Hugging Face folders) and torch.save zip archives (pytorch_model.bin,
// open_clip_pytorch_model.bin, mm_projector.bin). Reads are memory-mapped and zero-copy until a
// tensor is moved to another device or dtype; writes are atomic.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/files.h"
#include "models/io/formats.h"

namespace mgm::models::io {

c10::ScalarType to_scalar_type(DType d);
DType from_scalar_type(c10::ScalarType t);  // throws for types the formats cannot hold

// A floating-point dtype flag (case-insensitive fp32/float32/f32, fp16/float16/f16/half,
// bf16/bfloat16); UsageError naming `flag` otherwise.
c10::ScalarType parse_float_dtype(const std::string& s, const std::string& flag = "--dtype");
// The `torch_dtype` a Hugging Face config.json records for weights of type t: "bfloat16",
// "float16" or "float32" (anything else is written in fp32 by the tools here).
const char* hf_torch_dtype(c10::ScalarType t);

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// One memory-mapped tensor file.
class TensorFile {
 public:
  static std::shared_ptr<TensorFile> open(const std::string& path);

  const std::string& path() const { return map_->path(); }
  const FileIndex& index() const { return index_; }
  bool contains(const std::string& name) const { return by_name_.count(name) > 0; }
  const TensorRecord& record(const std::string& name) const;
  std::vector<std::string> names() const;
  // A CPU tensor viewing the mapped bytes (copy-on-write; the file is never modified).
  at::Tensor get(const std::string& name) const;
  // The tensor's bytes read (pread) into new memory without touching the map, so streaming
  // jobs hold one tensor at a time instead of accumulating the file's pages.
  at::Tensor read(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> map_;
  FileIndex index_;
  std::map<std::string, size_t> by_name_;
};

// A file or a checkpoint folder seen as one set of named tensors. Folders: a Hugging Face
// sharded index (model.safetensors.index.json / pytorch_model.bin.index.json), or a single
// model.safetensors, pytorch_model.bin, open_clip_pytorch_model.bin, mm_projector.bin, ...
class TensorStore {
 public:
  static TensorStore open(const std::string& file_or_dir);

  const std::string& source() const { return source_; }
  const std::vector<std::string>& names() const { return names_; }  // file order
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  const TensorRecord& record(const std::string& name) const;
  const std::string& file_of(const std::string& name) const;
  at::Tensor get(const std::string& name) const;
  at::Tensor read(const std::string& name) const;  // TensorFile::read
  std::vector<std::shared_ptr<TensorFile>> files() const { return files_; }
  // safetensors __metadata__ of the first file, plus the index's "metadata" (stringified).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> skipped() const;

 private:
  void add_file(std::shared_ptr<TensorFile> f);
  std::string source_;
  std::vector<std::shared_ptr<TensorFile>> files_;
  std::vector<std::string> names_;
  std::map<std::string, size_t> where_;
  std::map<std::string, std::string> metadata_;
};

// Writes one safetensors file (atomically). Tensors are laid out as the reference writer does
// (by alignment, then name) so every tensor's bytes are aligned.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes a torch.save-compatible zip (a plain dict of tensors, one storage per tensor) that
// Python's torch.load(path, weights_only=True) reads back.
void save_torch_zip(const std::string& path, const NamedTensors& tensors, bool force_zip64 = false);

// Streams tensors into a Hugging Face sharded safetensors folder: a shard is written once it
// would exceed max_shard_size, so memory stays near one shard. finish() names the shards
// "<prefix>-0000k-of-0000N.safetensors", writes "<prefix>.safetensors.index.json" last (the
// completeness marker), and removes stale shards of an earlier save with the same prefix.
// With a single shard the file is "<prefix>.safetensors" and no index is written (as HF does).
class ShardedSafetensorsWriter {
 public:
  ShardedSafetensorsWriter(std::string dir, uint64_t max_shard_size,
                           std::string prefix = "model",
                           std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~ShardedSafetensorsWriter();
  void add(const std::string& name, const at::Tensor& t);
  // Returns the written file names (relative to dir).
  std::vector<std::string> finish();

 private:
  void flush();
  std::string dir_, prefix_;
  uint64_t max_shard_;
  std::map<std::string, std::string> metadata_;
  NamedTensors pending_;
  uint64_t pending_bytes_ = 0;
  uint64_t total_bytes_ = 0;
  std::vector<std::string> temp_files_;
  std::vector<std::vector<std::string>> shard_names_;
  std::map<std::string, bool> seen_;
  bool finished_ = false;
};

void save_sharded_safetensors(const std::string& dir, const NamedTensors& tensors,
                              uint64_t max_shard_size, const std::string& prefix = "model");

// Dispatches on the extension: ".safetensors" or a torch.save file (".bin", ".pt", ".pth").
void save_tensor_file(const std::string& path, const NamedTensors& tensors);

// Loads every tensor of a file or folder (zero-copy views).
NamedTensors load_all(const std::string& file_or_dir);

}  // namespace mgm::models::io
