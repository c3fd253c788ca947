#include "models/io/zip_archive.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "common/error.h"

namespace mgm::models::io {
namespace {

uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t rd64(const uint8_t* p) { return rd32(p) | (static_cast<uint64_t>(rd32(p + 4)) << 32); }

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kZip64EocdSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

}  // namespace

uint32_t crc32(const void* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

ZipReader::ZipReader(const uint8_t* data, uint64_t size, std::string what)
    : data_(data), size_(size), what_(std::move(what)) {
  MGM_CHECK_FORMAT(size_ >= 22, what_, "not a zip archive (too short: ", size_, " bytes)");
  // The end-of-central-directory record is in the last 22 + 65535 bytes.
  uint64_t lo = size_ > 22 + 65535 ? size_ - 22 - 65535 : 0;
  int64_t eocd = -1;
  for (uint64_t i = size_ - 22 + 1; i-- > lo;) {
    if (rd32(data_ + i) == kEocdSig && i + 22 + rd16(data_ + i + 20) <= size_) {
      eocd = static_cast<int64_t>(i);
      break;
    }
  }
  MGM_CHECK_FORMAT(eocd >= 0, what_, "not a zip archive (no end-of-central-directory record; truncated?)");
  const uint8_t* e = data_ + eocd;
  uint64_t count = rd16(e + 10);
  uint64_t cd_size = rd32(e + 12);
  uint64_t cd_offset = rd32(e + 16);
  if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
    MGM_CHECK_FORMAT(eocd >= 20 && rd32(data_ + eocd - 20) == kZip64LocatorSig, what_,
                     "ZIP64 archive without a ZIP64 locator");
    uint64_t z64 = rd64(data_ + eocd - 20 + 8);
    // Compared as `size_ - z64` so that an offset near 2^64 cannot wrap around the check.
    MGM_CHECK_FORMAT(z64 <= size_ && size_ - z64 >= 56 && rd32(data_ + z64) == kZip64EocdSig,
                     what_, "bad ZIP64 end-of-central-directory offset ", z64);
    count = rd64(data_ + z64 + 32);
    cd_size = rd64(data_ + z64 + 40);
    cd_offset = rd64(data_ + z64 + 48);
  }
  MGM_CHECK_FORMAT(cd_offset <= size_ && cd_size <= size_ - cd_offset, what_,
                   "central directory outside the file (truncated?)");
  // Each central entry is at least 46 bytes: bounds the record count before reserving.
  MGM_CHECK_FORMAT(count <= cd_size / 46, what_, "central directory claims ", count,
                   " records but holds at most ", cd_size / 46);
  records_.reserve(count);
  // Each record's bytes, local header to end of data: no two may share any (checked below).
  struct Extent {
    uint64_t begin, end;
    size_t record;
  };
  std::vector<Extent> extents;
  extents.reserve(count);
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t k = 0; k < count; ++k) {
    MGM_CHECK_FORMAT(pos + 46 <= cd_end && rd32(data_ + pos) == kCentralSig, what_,
                     "corrupt central directory entry ", k);
    const uint8_t* c = data_ + pos;
    uint16_t method = rd16(c + 10);
    uint64_t csize = rd32(c + 20);
    uint64_t usize = rd32(c + 24);
    uint16_t name_len = rd16(c + 28), extra_len = rd16(c + 30), comment_len = rd16(c + 32);
    uint64_t local = rd32(c + 42);
    MGM_CHECK_FORMAT(pos + 46 + name_len + extra_len + comment_len <= cd_end, what_,
                     "corrupt central directory entry ", k);
    std::string name(reinterpret_cast<const char*>(c + 46), name_len);
    // ZIP64 extended information: the fields that are 0xFFFFFFFF follow in order.
    const uint8_t* x = c + 46 + name_len;
    for (uint32_t xo = 0; xo + 4 <= extra_len;) {
      uint16_t id = rd16(x + xo), len = rd16(x + xo + 2);
      if (xo + 4 + len > extra_len) break;
      if (id == 0x0001) {
        const uint8_t* f = x + xo + 4;
        uint32_t used = 0;
        auto take = [&](uint64_t& v) {
          if (v == 0xFFFFFFFF) {
            MGM_CHECK_FORMAT(used + 8 <= len, what_, "corrupt ZIP64 field for ", name);
            v = rd64(f + used);
            used += 8;
          }
        };
        take(usize);
        take(csize);
        take(local);
      }
      xo += 4 + len;
    }
    MGM_CHECK_FORMAT(local <= size_ && size_ - local >= 30 && rd32(data_ + local) == kLocalSig,
                     what_, "record '", name, "': bad local header offset");
    // The local header must name the same record (as Python's zipfile checks: "File name in
    // directory ... and header ... differ").
    const uint16_t local_name_len = rd16(data_ + local + 26);
    MGM_CHECK_FORMAT(local_name_len == name_len && size_ - local - 30 >= local_name_len &&
                         std::memcmp(data_ + local + 30, name.data(), name_len) == 0,
                     what_, "record '", name, "': the local header at offset ", local, " names '",
                     std::string(reinterpret_cast<const char*>(data_ + local + 30),
                                 std::min<uint64_t>(local_name_len, size_ - local - 30)),
                     "' (central directory and local header differ)");
    uint64_t data_off = local + 30 + local_name_len + rd16(data_ + local + 28);
    MGM_CHECK_FORMAT(data_off <= size_ && csize <= size_ - data_off, what_, "record '", name,
                     "' extends beyond the end of the file (", size_, " bytes; truncated?)");
    extents.push_back(Extent{local, data_off + csize, records_.size()});
    if (method != 0) {
      // Listed so that its name can be reported, but its bytes are not usable as stored.
      usize = UINT64_MAX;
    } else {
      MGM_CHECK_FORMAT(csize == usize, what_, "record '", name, "': stored sizes disagree");
    }
    MGM_CHECK_FORMAT(index_.emplace(name, records_.size()).second, what_, "duplicate record '",
                     name, "'");
    records_.push_back(ZipRecord{name, data_off, usize});
    pos += 46 + name_len + extra_len + comment_len;
  }
  // Records that overlap each other or the central directory (a crafted archive pointing two
  // names at one tensor's bytes, or a zip bomb) are refused, as Python's zipfile does since 3.12
  // ("Overlapped entries"): in header order, each record must end before the next begins.
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  for (size_t i = 0; i < extents.size(); ++i) {
    const uint64_t limit = i + 1 < extents.size() ? extents[i + 1].begin : cd_offset;
    if (extents[i].end > limit)
      throw FormatError(what_, str_cat("record '", records_[extents[i].record].name, "' (bytes ", extents[i].begin,
                                       "..", extents[i].end, ") overlaps ",
                                       i + 1 < extents.size()
                                           ? str_cat("record '", records_[extents[i + 1].record].name, "' at ", limit)
                                           : str_cat("the central directory at ", limit),
                                       " (overlapped entries: a corrupt or crafted archive)"));
  }
}

const ZipRecord* ZipReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &records_[it->second];
}

const ZipRecord& ZipReader::at(const std::string& name) const {
  const ZipRecord* r = find(name);
  MGM_CHECK_FORMAT(r != nullptr, what_, "missing record '", name, "'");
  MGM_CHECK_FORMAT(r->size != UINT64_MAX, what_, "record '", name,
                   "' is compressed; torch.save archives store records uncompressed");
  return *r;
}

// ------------------------------------------------------------------------------------------------

namespace {
void wr16(std::string& s, uint16_t v) {
  s.push_back(static_cast<char>(v & 0xFF));
  s.push_back(static_cast<char>(v >> 8));
}
void wr32(std::string& s, uint32_t v) {
  wr16(s, static_cast<uint16_t>(v & 0xFFFF));
  wr16(s, static_cast<uint16_t>(v >> 16));
}
void wr64(std::string& s, uint64_t v) {
  wr32(s, static_cast<uint32_t>(v & 0xFFFFFFFF));
  wr32(s, static_cast<uint32_t>(v >> 32));
}
}  // namespace

ZipWriter::ZipWriter(Sink sink, uint64_t alignment, bool force_zip64)
    : sink_(std::move(sink)), alignment_(alignment), force_zip64_(force_zip64) {}

void ZipWriter::put(const void* p, size_t n) {
  sink_(p, n);
  offset_ += n;
}

void ZipWriter::add(const std::string& name, const void* data, uint64_t size) {
  MGM_CHECK(!finished_, "zip: add after finish");
  MGM_CHECK(name.size() < 0xFFFF, "zip: record name too long");
  uint32_t crc = crc32(data, size);
  const bool z64 = force_zip64_ || size >= 0xFFFFFFFFull || offset_ >= 0xFFFFFFFFull;
  std::string h;
  wr32(h, kLocalSig);
  wr16(h, z64 ? 45 : 20);  // version needed
  wr16(h, 0);              // flags
  wr16(h, 0);              // method: stored
  wr16(h, 0);              // time
  wr16(h, 0x21);           // date (1980-01-01, as torch writes)
  wr32(h, crc);
  wr32(h, z64 ? 0xFFFFFFFF : static_cast<uint32_t>(size));
  wr32(h, z64 ? 0xFFFFFFFF : static_cast<uint32_t>(size));
  wr16(h, static_cast<uint16_t>(name.size()));
  std::string extra;
  if (z64) {
    wr16(extra, 0x0001);
    wr16(extra, 16);
    wr64(extra, size);
    wr64(extra, size);
  }
  // Pad with an extra field so that the data starts on an `alignment` boundary.
  uint64_t data_start = offset_ + 30 + name.size() + extra.size();
  uint64_t pad = (alignment_ - data_start % alignment_) % alignment_;
  if (pad != 0 && pad < 4) pad += alignment_;
  if (pad != 0) {
    wr16(extra, 0x4246);  // "FB", the id torch uses for its padding field
    wr16(extra, static_cast<uint16_t>(pad - 4));
    extra.append(pad - 4, 'Z');
  }
  wr16(h, static_cast<uint16_t>(extra.size()));
  h += name;
  h += extra;
  entries_.push_back(Entry{name, offset_, size, crc});
  put(h.data(), h.size());
  if (size) put(data, size);
}

void ZipWriter::finish() {
  MGM_CHECK(!finished_, "zip: finish called twice");
  finished_ = true;
  uint64_t cd_start = offset_;
  for (const auto& e : entries_) {
    const bool z64 = force_zip64_ || e.size >= 0xFFFFFFFFull || e.header_offset >= 0xFFFFFFFFull;
    std::string c;
    wr32(c, kCentralSig);
    wr16(c, z64 ? 45 : 20);  // version made by
    wr16(c, z64 ? 45 : 20);  // version needed
    wr16(c, 0);
    wr16(c, 0);
    wr16(c, 0);
    wr16(c, 0x21);
    wr32(c, e.crc);
    wr32(c, z64 ? 0xFFFFFFFF : static_cast<uint32_t>(e.size));
    wr32(c, z64 ? 0xFFFFFFFF : static_cast<uint32_t>(e.size));
    wr16(c, static_cast<uint16_t>(e.name.size()));
    wr16(c, z64 ? 28 : 0);  // extra length
    wr16(c, 0);             // comment
    wr16(c, 0);             // disk
    wr16(c, 0);             // internal attributes
    wr32(c, 0);             // external attributes
    wr32(c, z64 ? 0xFFFFFFFF : static_cast<uint32_t>(e.header_offset));
    c += e.name;
    if (z64) {
      wr16(c, 0x0001);
      wr16(c, 24);
      wr64(c, e.size);
      wr64(c, e.size);
      wr64(c, e.header_offset);
    }
    put(c.data(), c.size());
  }
  uint64_t cd_size = offset_ - cd_start;
  uint64_t n = entries_.size();
  const bool z64 = force_zip64_ || n >= 0xFFFF || cd_start >= 0xFFFFFFFFull || cd_size >= 0xFFFFFFFFull;
  std::string t;
  if (z64) {
    uint64_t z64_off = offset_;
    wr32(t, kZip64EocdSig);
    wr64(t, 44);
    wr16(t, 45);
    wr16(t, 45);
    wr32(t, 0);
    wr32(t, 0);
    wr64(t, n);
    wr64(t, n);
    wr64(t, cd_size);
    wr64(t, cd_start);
    wr32(t, kZip64LocatorSig);
    wr32(t, 0);
    wr64(t, z64_off);
    wr32(t, 1);
  }
  wr32(t, kEocdSig);
  wr16(t, 0);
  wr16(t, 0);
  wr16(t, z64 ? 0xFFFF : static_cast<uint16_t>(n));
  wr16(t, z64 ? 0xFFFF : static_cast<uint16_t>(n));
  wr32(t, z64 ? 0xFFFFFFFF : static_cast<uint32_t>(cd_size));
  wr32(t, z64 ? 0xFFFFFFFF : static_cast<uint32_t>(cd_start));
  wr16(t, 0);
  put(t.data(), t.size());
}

}  // namespace mgm::models::io
