#include "models/io/tensor_file.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstring>
#include <random>

#include "common/error.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/pickle.h"
#include "models/io/zip_archive.h"

namespace mgm::models::io {

c10::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::kBool: return c10::kBool;
    case DType::kU8: return c10::kByte;
    case DType::kI8: return c10::kChar;
    case DType::kI16: return c10::kShort;
    case DType::kU16: return c10::kUInt16;
    case DType::kI32: return c10::kInt;
    case DType::kU32: return c10::kUInt32;
    case DType::kI64: return c10::kLong;
    case DType::kU64: return c10::kUInt64;
    case DType::kF16: return c10::kHalf;
    case DType::kBF16: return c10::kBFloat16;
    case DType::kF32: return c10::kFloat;
    case DType::kF64: return c10::kDouble;
    case DType::kF8E5M2: return c10::ScalarType::Float8_e5m2;
    case DType::kF8E4M3: return c10::ScalarType::Float8_e4m3fn;
  }
  throw Error("unknown dtype");
}

DType from_scalar_type(c10::ScalarType t) {
  for (int k = 0; k <= static_cast<int>(DType::kF8E4M3); ++k)
    if (to_scalar_type(static_cast<DType>(k)) == t) return static_cast<DType>(k);
  throw Error(str_cat("tensor dtype ", c10::toString(t), " cannot be stored in safetensors/torch.save"));
}

c10::ScalarType parse_float_dtype(const std::string& s, const std::string& flag) {
  const std::string l = to_lower(s);
  if (l == "fp32" || l == "float32" || l == "f32") return c10::kFloat;
  if (l == "fp16" || l == "float16" || l == "f16" || l == "half") return c10::kHalf;
  if (l == "bf16" || l == "bfloat16") return c10::kBFloat16;
  throw UsageError(str_cat(flag, ": expected fp32, fp16 or bf16, got '", s, "'"));
}

const char* hf_torch_dtype(c10::ScalarType t) {
  return t == c10::kBFloat16 ? "bfloat16" : t == c10::kHalf ? "float16" : "float32";
}

// -- TensorFile -----------------------------------------------------------------------------------

std::shared_ptr<TensorFile> TensorFile::open(const std::string& path) {
  auto f = std::shared_ptr<TensorFile>(new TensorFile());
  f->map_ = MappedFile::open(path);
  f->index_ = parse_tensor_file(f->map_->data(), f->map_->size(), path);
  for (size_t k = 0; k < f->index_.tensors.size(); ++k) {
    if (!f->by_name_.emplace(f->index_.tensors[k].name, k).second)
      throw FormatError(path, str_cat("duplicate tensor name '", f->index_.tensors[k].name, "'"));
  }
  return f;
}

const TensorRecord& TensorFile::record(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) throw Error(str_cat(path(), ": no tensor named '", name, "'"));
  return index_.tensors[it->second];
}

std::vector<std::string> TensorFile::names() const {
  std::vector<std::string> out;
  for (const auto& t : index_.tensors) out.push_back(t.name);
  return out;
}

at::Tensor TensorFile::get(const std::string& name) const {
  const TensorRecord& r = record(name);
  const auto st = to_scalar_type(r.dtype);
  auto opts = at::TensorOptions().dtype(st).device(at::kCPU);
  const size_t esize = dtype_size(r.dtype);
  uint8_t* base = const_cast<uint8_t*>(map_->data()) + r.data_offset;
  if (r.numel() == 0) return at::empty(r.sizes, opts);
  if (reinterpret_cast<uintptr_t>(base) % esize != 0) {
    // Misaligned storage (possible in hand-made files): copy instead of viewing.
    at::Tensor storage = at::empty({static_cast<int64_t>(r.storage_nbytes / esize)}, opts);
    std::memcpy(storage.data_ptr(), base, r.storage_nbytes);
    return storage.as_strided(r.sizes, r.strides, r.storage_offset);
  }
  auto keep = map_;
  return at::from_blob(
      base + static_cast<uint64_t>(r.storage_offset) * esize, r.sizes, r.strides,
      [keep](void*) mutable { keep.reset(); }, opts);
}

at::Tensor TensorFile::read(const std::string& name) const {
  const TensorRecord& r = record(name);
  const auto opts = at::TensorOptions().dtype(to_scalar_type(r.dtype)).device(at::kCPU);
  if (r.numel() == 0) return at::empty(r.sizes, opts);
  // The span of storage elements the view reaches (strides are non-negative in both formats).
  int64_t last = r.storage_offset;
  for (size_t k = 0; k < r.sizes.size(); ++k) last += (r.sizes[k] - 1) * r.strides[k];
  const int64_t count = last - r.storage_offset + 1;
  const size_t esize = dtype_size(r.dtype);
  at::Tensor buf = at::empty({count}, opts);
  const int fd = ::open(path().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(str_cat(path(), ": cannot open: ", std::strerror(errno)));
  auto* dst = static_cast<char*>(buf.data_ptr());
  uint64_t off = r.data_offset + static_cast<uint64_t>(r.storage_offset) * esize;
  size_t left = static_cast<size_t>(count) * esize;
  while (left > 0) {
    const ssize_t n = ::pread(fd, dst, left, static_cast<off_t>(off));
    if (n <= 0) {
      const std::string e = n < 0 ? std::strerror(errno) : "unexpected end of file";
      ::close(fd);
      throw Error(str_cat(path(), ": cannot read tensor '", name, "': ", e));
    }
    dst += n;
    off += static_cast<uint64_t>(n);
    left -= static_cast<size_t>(n);
  }
  ::close(fd);
  return buf.as_strided(r.sizes, r.strides, 0);
}

// -- TensorStore ----------------------------------------------------------------------------------

namespace {

std::vector<std::string> shard_files_from_index(const std::string& index_path) {
  Json j = read_json_file(index_path);
  const Json& wm = json_at(j, "weight_map", index_path);
  if (!wm.is_object()) throw FormatError(index_path, "weight_map must be an object");
  std::vector<std::string> files;
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it.value().is_string())
      throw FormatError(index_path, str_cat("weight_map['", it.key(), "'] is not a file name"));
    std::string f = it.value().get<std::string>();
    if (f.find('/') != std::string::npos || f == ".." || f.empty())
      throw FormatError(index_path, str_cat("weight_map['", it.key(), "'] = '", f, "' is not a file in the folder"));
    if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

void TensorStore::add_file(std::shared_ptr<TensorFile> f) {
  for (const auto& t : f->index().tensors) {
    if (where_.count(t.name))
      throw FormatError(f->path(), str_cat("tensor '", t.name, "' is also in ",
                                           files_[where_[t.name]]->path()));
    where_[t.name] = files_.size();
    names_.push_back(t.name);
  }
  if (files_.empty())
    for (const auto& [k, v] : f->index().metadata) metadata_[k] = v;
  files_.push_back(std::move(f));
}

TensorStore TensorStore::open(const std::string& file_or_dir) {
  TensorStore s;
  s.source_ = file_or_dir;
  if (!path_exists(file_or_dir)) throw Error(str_cat(file_or_dir, ": no such file or folder"));
  if (!is_directory(file_or_dir)) {
    s.add_file(TensorFile::open(file_or_dir));
    return s;
  }
  const std::string& dir = file_or_dir;
  for (const char* idx : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    std::string ip = path_join(dir, idx);
    if (!path_exists(ip)) continue;
    Json j = read_json_file(ip);
    auto files = shard_files_from_index(ip);
    for (const auto& f : files) {
      std::string fp = path_join(dir, f);
      if (!path_exists(fp)) throw FormatError(ip, str_cat("shard '", f, "' listed in weight_map is missing"));
      s.add_file(TensorFile::open(fp));
    }
    // Every weight_map entry must be in the shard that the map names.
    const Json& wm = j["weight_map"];
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      if (!s.contains(it.key()))
        throw FormatError(ip, str_cat("tensor '", it.key(), "' is listed in weight_map but is in no shard"));
      if (base_name(s.file_of(it.key())) != it.value().get<std::string>())
        throw FormatError(ip, str_cat("tensor '", it.key(), "' is in ", base_name(s.file_of(it.key())),
                                      ", not in ", it.value().get<std::string>(), " as weight_map says"));
    }
    if (wm.size() != s.names_.size())
      throw FormatError(ip, str_cat("shards hold ", s.names_.size(), " tensors but weight_map lists ", wm.size()));
    if (j.contains("metadata") && j["metadata"].is_object())
      for (auto it = j["metadata"].begin(); it != j["metadata"].end(); ++it)
        s.metadata_[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    return s;
  }
  for (const char* single : {"model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                             "open_clip_pytorch_model.bin", "adapter_model.safetensors",
                             "adapter_model.bin", "mm_projector.bin"}) {
    std::string fp = path_join(dir, single);
    if (path_exists(fp)) {
      s.add_file(TensorFile::open(fp));
      return s;
    }
  }
  throw Error(str_cat(dir, ": no tensor files found (looked for model.safetensors(.index.json), "
                           "pytorch_model.bin(.index.json), open_clip_pytorch_model.bin, "
                           "adapter_model.safetensors, mm_projector.bin)"));
}

const TensorRecord& TensorStore::record(const std::string& name) const {
  return files_[where_.at(name)]->record(name);
}

const std::string& TensorStore::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(str_cat(source_, ": no tensor named '", name, "'"));
  return files_[it->second]->path();
}

at::Tensor TensorStore::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(str_cat(source_, ": no tensor named '", name, "'"));
  return files_[it->second]->get(name);
}

at::Tensor TensorStore::read(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(str_cat(source_, ": no tensor named '", name, "'"));
  return files_[it->second]->read(name);
}

std::vector<std::string> TensorStore::skipped() const {
  std::vector<std::string> out;
  for (const auto& f : files_)
    for (const auto& s : f->index().skipped) out.push_back(s);
  return out;
}

NamedTensors load_all(const std::string& file_or_dir) {
  TensorStore s = TensorStore::open(file_or_dir);
  NamedTensors out;
  for (const auto& n : s.names()) out.emplace_back(n, s.get(n));
  return out;
}

// -- writers --------------------------------------------------------------------------------------

namespace {

at::Tensor cpu_contiguous(const std::string& name, const at::Tensor& t) {
  MGM_CHECK(t.defined(), "tensor '", name, "' is undefined");
  MGM_CHECK(t.layout() == c10::kStrided, "tensor '", name, "' is not a dense tensor");
  (void)from_scalar_type(t.scalar_type());
  at::Tensor c = t.detach();
  if (!c.device().is_cpu()) c = c.cpu();
  return c.contiguous();
}

// Writes a safetensors file into an already-open writer.
void write_safetensors(AtomicFileWriter& w, NamedTensors tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) {
    size_t ea = a.second.element_size(), eb = b.second.element_size();
    return ea != eb ? ea > eb : a.first < b.first;
  });
  std::vector<HeaderEntry> entries;
  for (auto& [name, t] : tensors) {
    t = cpu_contiguous(name, t);
    entries.push_back(HeaderEntry{name, from_scalar_type(t.scalar_type()), t.sizes().vec(),
                                  static_cast<uint64_t>(t.nbytes())});
  }
  w.write(build_safetensors_header(entries, metadata));
  for (const auto& [name, t] : tensors)
    if (t.nbytes()) w.write(t.data_ptr(), t.nbytes());
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  AtomicFileWriter w(path);
  write_safetensors(w, tensors, metadata);
  w.commit();
}

void save_torch_zip(const std::string& path, const NamedTensors& tensors, bool force_zip64) {
  // torch.save names the archive folder after the file's stem.
  std::string stem = base_name(path);
  auto dot = stem.find('.');
  if (dot != std::string::npos && dot > 0) stem = stem.substr(0, dot);
  if (stem.empty()) stem = "archive";
  for (auto& c : stem)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) c = '_';

  std::vector<PickleTensorSpec> specs;
  std::vector<at::Tensor> data;
  std::map<std::string, bool> seen;
  for (const auto& [name, t] : tensors) {
    MGM_CHECK(seen.emplace(name, true).second, path, ": duplicate tensor name '", name, "'");
    at::Tensor c = cpu_contiguous(name, t);
    specs.push_back(PickleTensorSpec{name, from_scalar_type(c.scalar_type()), c.sizes().vec()});
    data.push_back(c);
  }
  AtomicFileWriter w(path);
  ZipWriter zip([&w](const void* p, size_t n) { w.write(p, n); }, 64, force_zip64);
  const std::string pkl = pickle_state_dict(specs);
  zip.add(stem + "/data.pkl", pkl.data(), pkl.size());
  zip.add(stem + "/.format_version", "1", 1);
  zip.add(stem + "/.storage_alignment", "64", 2);
  zip.add(stem + "/byteorder", "little", 6);
  for (size_t k = 0; k < data.size(); ++k)
    zip.add(stem + "/data/" + std::to_string(k), data[k].data_ptr(), data[k].nbytes());
  zip.add(stem + "/version", "3\n", 2);
  std::mt19937_64 rng(std::random_device{}());
  std::string sid;
  while (sid.size() < 40) sid += std::to_string(rng() % 10);
  zip.add(stem + "/.data/serialization_id", sid.data(), sid.size());
  zip.finish();
  w.commit();
}

void save_tensor_file(const std::string& path, const NamedTensors& tensors) {
  if (ends_with(path, ".safetensors")) return save_safetensors(path, tensors);
  if (ends_with(path, ".bin") || ends_with(path, ".pt") || ends_with(path, ".pth"))
    return save_torch_zip(path, tensors);
  throw UsageError(str_cat(path, ": unknown tensor file extension (use .safetensors, .bin, .pt or .pth)"));
}

ShardedSafetensorsWriter::ShardedSafetensorsWriter(std::string dir, uint64_t max_shard_size,
                                                   std::string prefix,
                                                   std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), prefix_(std::move(prefix)), max_shard_(max_shard_size),
      metadata_(std::move(metadata)) {
  MGM_CHECK(max_shard_ > 0, "max shard size must be positive");
  make_dirs(dir_);
}

ShardedSafetensorsWriter::~ShardedSafetensorsWriter() {
  if (!finished_)
    for (const auto& t : temp_files_) ::unlink(t.c_str());
}

void ShardedSafetensorsWriter::add(const std::string& name, const at::Tensor& t) {
  MGM_CHECK(!finished_, "sharded writer: add after finish");
  MGM_CHECK(seen_.emplace(name, true).second, dir_, ": duplicate tensor name '", name, "'");
  uint64_t n = static_cast<uint64_t>(t.nbytes());
  if (!pending_.empty() && pending_bytes_ + n > max_shard_) flush();
  pending_.emplace_back(name, t);
  pending_bytes_ += n;
  total_bytes_ += n;
}

void ShardedSafetensorsWriter::flush() {
  if (pending_.empty()) return;
  AtomicFileWriter w(path_join(dir_, str_cat(prefix_, ".shard", temp_files_.size(), ".safetensors")));
  write_safetensors(w, pending_, metadata_);
  temp_files_.push_back(w.finish_temp());
  std::vector<std::string> names;
  for (const auto& p : pending_) names.push_back(p.first);
  shard_names_.push_back(std::move(names));
  pending_.clear();
  pending_bytes_ = 0;
}

std::vector<std::string> ShardedSafetensorsWriter::finish() {
  MGM_CHECK(!finished_, "sharded writer: finish called twice");
  flush();
  if (temp_files_.empty()) {  // no tensors at all: still a valid (empty) file
    AtomicFileWriter w(path_join(dir_, prefix_ + ".safetensors"));
    write_safetensors(w, {}, metadata_);
    temp_files_.push_back(w.finish_temp());
    shard_names_.push_back({});
  }
  const size_t n = temp_files_.size();
  std::vector<std::string> files;
  const std::string index_name = prefix_ + ".safetensors.index.json";
  const std::string index_path = path_join(dir_, index_name);
  // An index from an earlier save would describe files about to be replaced: drop it first so
  // the folder never pairs an old index with new shards.
  if (path_exists(index_path)) ::unlink(index_path.c_str());
  if (n == 1) {
    files.push_back(prefix_ + ".safetensors");
    rename_into_place(temp_files_[0], path_join(dir_, files[0]));
  } else {
    OrderedJson wm = OrderedJson::object();
    std::vector<std::pair<std::string, std::string>> entries;
    for (size_t k = 0; k < n; ++k) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu.safetensors", k + 1, n);
      files.push_back(prefix_ + buf);
      rename_into_place(temp_files_[k], path_join(dir_, files.back()));
      for (const auto& name : shard_names_[k]) entries.emplace_back(name, files.back());
    }
    std::sort(entries.begin(), entries.end());
    for (const auto& [name, f] : entries) wm[name] = f;
    OrderedJson idx = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", wm}};
    write_json_file(index_path, idx);
  }
  finished_ = true;
  // Remove shards of an earlier save with the same prefix that the new set does not use.
  if (DIR* d = ::opendir(dir_.c_str())) {
    std::vector<std::string> stale;
    while (dirent* e = ::readdir(d)) {
      std::string f = e->d_name;
      bool is_shard = starts_with(f, prefix_ + "-") && ends_with(f, ".safetensors") &&
                      f.find("-of-") != std::string::npos;
      bool is_single = f == prefix_ + ".safetensors";
      if ((is_shard || is_single) && std::find(files.begin(), files.end(), f) == files.end())
        stale.push_back(f);
    }
    ::closedir(d);
    for (const auto& f : stale) ::unlink(path_join(dir_, f).c_str());
  }
  return files;
}

void save_sharded_safetensors(const std::string& dir, const NamedTensors& tensors,
                              uint64_t max_shard_size, const std::string& prefix) {
  ShardedSafetensorsWriter w(dir, max_shard_size, prefix);
  for (const auto& [n, t] : tensors) w.add(n, t);
  w.finish();
}

}  // namespace mgm::models::io
