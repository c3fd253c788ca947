// Minimal ZIP reading and writing for torch.save archives. torch.save stores records
// uncompressed and 64-byte aligned, so a record's bytes can be used in place from a memory map.
// No torch dependency (the fuzz targets build without libtorch).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace mgm::models::io {

struct ZipRecord {
  std::string name;
  uint64_t data_offset = 0;  // absolute offset of the record's bytes in the archive
  uint64_t size = 0;
};

// Parses the central directory of an archive held in memory. Only stored (uncompressed)
// records can be read; compressed ones are listed and refused on access. `what` names the file
// in errors. Every offset and size is checked against the buffer.
class ZipReader {
 public:
  ZipReader(const uint8_t* data, uint64_t size, std::string what);
  const std::vector<ZipRecord>& records() const { return records_; }
  const ZipRecord* find(const std::string& name) const;
  const ZipRecord& at(const std::string& name) const;
  const uint8_t* bytes(const ZipRecord& r) const { return data_ + r.data_offset; }

 private:
  const uint8_t* data_;
  uint64_t size_;
  std::string what_;
  std::vector<ZipRecord> records_;
  std::map<std::string, size_t> index_;
};

// Streams an archive to a byte sink, records aligned to `alignment` bytes as torch.save does
// (padding goes into an extra field of the local header), ZIP64 records when needed.
class ZipWriter {
 public:
  using Sink = std::function<void(const void*, size_t)>;
  // force_zip64 writes ZIP64 fields even for small archives (tests of the >4 GiB layout).
  explicit ZipWriter(Sink sink, uint64_t alignment = 64, bool force_zip64 = false);
  void add(const std::string& name, const void* data, uint64_t size);
  void finish();

 private:
  struct Entry {
    std::string name;
    uint64_t header_offset;
    uint64_t size;
    uint32_t crc;
  };
  void put(const void* p, size_t n);
  Sink sink_;
  uint64_t alignment_;
  uint64_t offset_ = 0;
  std::vector<Entry> entries_;
  bool finished_ = false;
  bool force_zip64_ = false;
};

uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace mgm::models::io
