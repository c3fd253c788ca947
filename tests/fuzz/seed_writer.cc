// Writes the fuzzers' seed corpus: small valid safetensors files, torch.save zip archives and
// their data.pkl streams, built with the project's own writers (no Python needed).
// Usage: seed_writer <out_dir>  -> <out_dir>/{safetensors,torch_zip,pickle}/<name>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "models/io/dtype.h"
#include "models/io/formats.h"
#include "models/io/pickle.h"
#include "models/io/zip_archive.h"

namespace {

using namespace mgm::models::io;

void write(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fclose(f);
}

std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t k = 0; k < n; ++k) s[k] = static_cast<char>(k * 37 + 11);
  return s;
}

// A string from a literal that may contain NUL bytes.
template <size_t N>
std::string B(const char (&s)[N]) {
  return std::string(s, N - 1);
}

uint64_t nbytes(DType d, const std::vector<int64_t>& sizes) {
  uint64_t n = dtype_size(d);
  for (int64_t s : sizes) n *= static_cast<uint64_t>(s);
  return n;
}

std::string safetensors(
    const std::vector<std::pair<std::string, std::pair<DType, std::vector<int64_t>>>>& ts,
    const std::map<std::string, std::string>& meta) {
  std::vector<HeaderEntry> entries;
  uint64_t total = 0;
  for (const auto& [name, spec] : ts) {
    entries.push_back({name, spec.first, spec.second, nbytes(spec.first, spec.second)});
    total += entries.back().nbytes;
  }
  return build_safetensors_header(entries, meta) + pattern(total);
}

std::string zip(const std::string& stem, const std::string& pkl,
                const std::vector<std::string>& storages) {
  std::string out;
  ZipWriter w([&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); });
  w.add(stem + "/data.pkl", pkl.data(), pkl.size());
  w.add(stem + "/byteorder", "little", 6);
  for (size_t k = 0; k < storages.size(); ++k) {
    const std::string name = stem + "/data/" + std::to_string(k);
    w.add(name, storages[k].data(), storages[k].size());
  }
  w.add(stem + "/version", "3\n", 2);
  w.finish();
  return out;
}

std::string torch_save(const std::string& stem, const std::vector<PickleTensorSpec>& specs,
                       std::string* pkl_out) {
  const std::string pkl = pickle_state_dict(specs);
  std::vector<std::string> storages;
  for (const auto& s : specs) storages.push_back(pattern(nbytes(s.dtype, s.sizes)));
  if (pkl_out) *pkl_out = pkl;
  return zip(stem, pkl, storages);
}

// What nn.Module.state_dict() + torch.save write: an OrderedDict with memoized objects, views
// sharing one storage, a Parameter, a nested dict, a non-tensor leaf and `_metadata` state.
std::string module_pickle() {
  std::string p =
      B("\x80\x02"
        "ccollections\nOrderedDict\nq\x00)Rq\x01(");
  auto str = [&](const std::string& s) {
    p += 'X';
    for (int k = 0; k < 4; ++k) p += static_cast<char>((s.size() >> (8 * k)) & 0xFF);
    p += s;
  };
  auto tensor = [&](const char* cls, const char* key, int numel, int off,
                    const std::string& size_stride) {
    p += "ctorch._utils\n_rebuild_tensor_v2\n((";
    str("storage");
    p += std::string("ctorch\n") + cls + "\n";
    str(key);
    str("cpu");
    p += 'K';
    p += static_cast<char>(numel);
    p += "tQK";
    p += static_cast<char>(off);
    p += size_stride;
    p +=
        B("\x89"
          "h\x00)Rt"
          "R");
  };
  str("w");
  tensor("FloatStorage", "0", 12, 0, "(K\x03K\x04t(K\x04K\x01t");
  str("w_t");
  tensor("FloatStorage", "0", 12, 0, "(K\x04K\x03t(K\x01K\x04t");
  str("col");
  tensor("FloatStorage", "0", 12, 1, "(K\x03t(K\x04t");
  str("p");
  p += "ctorch._utils\n_rebuild_parameter\n(";
  tensor("BFloat16Storage", "1", 2, 0, "(K\x02t(K\x01t");
  p +=
      B("\x88"
        "h\x00)Rt"
        "R");
  str("sub");
  p += "}(";
  str("x");
  tensor("LongStorage", "2", 1, 0, "))");  // 0-dim: size () and stride ()
  p += "u";
  str("step");
  p += "K\x07u}";
  str("");
  p += "}";
  str("version");
  p += "K\x01ssb.";
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <out_dir>\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  for (const char* d : {"", "/safetensors", "/torch_zip", "/pickle"})
    ::mkdir((out + d).c_str(), 0755);
  try {
    write(out + "/safetensors/small", safetensors({{"a", {DType::kF32, {2, 3}}},
                                                   {"b", {DType::kBF16, {}}},
                                                   {"c", {DType::kI64, {0}}},
                                                   {"d", {DType::kU8, {5}}}},
                                                  {{"format", "pt"}}));
    write(out + "/safetensors/all_dtypes", safetensors({{"bool", {DType::kBool, {2}}},
                                                        {"u8", {DType::kU8, {2}}},
                                                        {"i8", {DType::kI8, {2}}},
                                                        {"i16", {DType::kI16, {2}}},
                                                        {"u16", {DType::kU16, {2}}},
                                                        {"i32", {DType::kI32, {2}}},
                                                        {"u32", {DType::kU32, {2}}},
                                                        {"i64", {DType::kI64, {1}}},
                                                        {"u64", {DType::kU64, {1}}},
                                                        {"f16", {DType::kF16, {1, 2}}},
                                                        {"bf16", {DType::kBF16, {2, 1}}},
                                                        {"f32", {DType::kF32, {1, 1, 1}}},
                                                        {"f64", {DType::kF64, {1}}},
                                                        {"f8a", {DType::kF8E5M2, {3}}},
                                                        {"f8b", {DType::kF8E4M3, {3}}}},
                                                       {}));
    write(out + "/safetensors/empty", safetensors({}, {}));
    write(out + "/safetensors/metadata_only", safetensors({}, {{"format", "pt"}, {"note", "x"}}));

    std::string pkl;
    write(out + "/torch_zip/projector",
          torch_save("mm_projector",
                     {{"model.mm_projector.0.weight", DType::kF32, {4, 3}},
                      {"model.mm_projector.0.bias", DType::kF32, {4}},
                      {"model.mm_projector.2.weight", DType::kBF16, {2, 4}}},
                     &pkl));
    write(out + "/pickle/projector", pkl);
    write(out + "/torch_zip/scalar_and_empty",
          torch_save("archive", {{"s", DType::kF64, {}}, {"e", DType::kI32, {0, 2}}}, &pkl));
    write(out + "/pickle/scalar_and_empty", pkl);
    write(out + "/torch_zip/empty", torch_save("archive", {}, &pkl));
    const std::string mod = module_pickle();
    write(out + "/pickle/module", mod);
    write(out + "/torch_zip/module", zip("archive", mod, {pattern(48), pattern(4), pattern(8)}));
    // One refused seed on purpose, next to the overlap check (mutations of it reach both
    // sides): the module archive with its last central entry pointed at the first record's
    // local header, two names for one record's bytes.
    {
      std::string shared = zip("archive", mod, {pattern(48), pattern(4), pattern(8)});
      size_t last = std::string::npos;
      for (size_t p = shared.find("PK\x01\x02"); p != std::string::npos; p = shared.find("PK\x01\x02", p + 1)) last = p;
      if (last != std::string::npos) {
        for (int k = 0; k < 4; ++k) shared[last + 42 + k] = 0;  // local header offset -> 0
        write(out + "/torch_zip/shared_bytes_refused", shared);
      }
    }
    // The other seeds must be valid: a seed the parser refuses would only exercise error paths.
    for (const char* name : {"projector", "scalar_and_empty", "empty", "module"}) {
      FILE* f = std::fopen((out + "/torch_zip/" + name).c_str(), "rb");
      std::string bytes;
      char buf[4096];
      for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) bytes.append(buf, n);
      std::fclose(f);
      parse_torch_zip(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
    }
  } catch (const mgm::Error& e) {
    std::fprintf(stderr, "seed_writer: %s\n", e.what());
    return 1;
  }
  return 0;
}
