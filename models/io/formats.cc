#include "models/io/formats.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <unordered_set>

#include "common/error.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/pickle.h"
#include "models/io/zip_archive.h"

namespace mgm::models::io {

uint64_t TensorRecord::numel() const {
  auto n = checked_numel(sizes.data(), sizes.size());
  return n ? *n : 0;
}

namespace {

uint64_t rd64(const uint8_t* p) {
  uint64_t v = 0;
  for (int k = 0; k < 8; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
  return v;
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> st(sizes.size(), 1);
  for (size_t d = sizes.size(); d-- > 1;) st[d - 1] = st[d] * std::max<int64_t>(sizes[d], 1);
  return st;
}

// The SAX pass over a safetensors header: nesting depth (at most 4 levels) and the first
// duplicate top-level key. Builds nothing, so it is linear in the header size.
class HeaderPrecheck : public nlohmann::json_sax<Json> {
 public:
  explicit HeaderPrecheck(const std::string& what) : what_(what) {}
  std::string duplicate;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return open(); }
  bool start_array(std::size_t) override { return open(); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    if (depth_ == 1 && !keys_.insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;  // stop; the DOM parse reports it with its position
  }

 private:
  bool open() {
    if (++depth_ > 4) throw FormatError(what_, "header JSON nested too deeply");
    return true;
  }
  bool close() {
    --depth_;
    return true;
  }
  const std::string& what_;
  int depth_ = 0;
  std::unordered_set<std::string> keys_;
};

}  // namespace

FileIndex parse_safetensors(const uint8_t* data, uint64_t size, const std::string& what) {
  MGM_CHECK_FORMAT(size >= 8, what, "file too short for a safetensors header (", size, " bytes)");
  const uint64_t n = rd64(data);
  MGM_CHECK_FORMAT(n <= kMaxSafetensorsHeader, what, "header length ", n,
                   " exceeds the safetensors limit of ", kMaxSafetensorsHeader, " bytes");
  MGM_CHECK_FORMAT(n <= size - 8, what, "header length ", n, " is beyond the end of the file (",
                   size, " bytes; truncated?)");
  MGM_CHECK_FORMAT(n >= 2, what, "header length ", n, " is too small for a JSON object");
  const char* text = reinterpret_cast<const char*>(data + 8);
  MGM_CHECK_FORMAT(text[0] == '{', what, "header does not start with '{'");

  // Duplicate names are an error (JSON parsers silently keep the last), and nesting is bounded:
  // both checked by a SAX pass before the DOM is built. (nlohmann's callback parser, which did
  // this before, rescans the parent object at every object end: quadratic in the tensor count,
  // 16 s for 40,000 tensors.)
  HeaderPrecheck pre(what);
  Json::sax_parse(text, text + n, &pre);  // a syntax error is reported by the parse below
  Json header;
  try {
    header = Json::parse(text, text + n);
  } catch (const Json::parse_error& e) {
    throw FormatError(what, str_cat("invalid header JSON at byte ", e.byte, ": ", e.what()));
  } catch (const Json::exception& e) {
    // out_of_range for numbers beyond double's range ("1e999"), which is not a parse_error.
    throw FormatError(what, str_cat("invalid header JSON: ", e.what()));
  }
  const std::string& dup = pre.duplicate;
  MGM_CHECK_FORMAT(dup.empty(), what, "duplicate tensor name '", dup, "' in the header");
  MGM_CHECK_FORMAT(header.is_object(), what, "header is not a JSON object");

  FileIndex out;
  out.format = FileIndex::Format::kSafetensors;
  const uint64_t data_start = 8 + n;
  const uint64_t buffer = size - data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const Json& v = it.value();
    if (name == "__metadata__") {
      MGM_CHECK_FORMAT(v.is_object(), what, "__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        MGM_CHECK_FORMAT(m.value().is_string(), what, "__metadata__ value for '", m.key(),
                         "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    MGM_CHECK_FORMAT(v.is_object(), what, "tensor '", name, "': entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    MGM_CHECK_FORMAT(dt != v.end() && dt->is_string(), what, "tensor '", name, "': missing dtype");
    MGM_CHECK_FORMAT(sh != v.end() && sh->is_array(), what, "tensor '", name, "': missing shape");
    MGM_CHECK_FORMAT(off != v.end() && off->is_array() && off->size() == 2, what, "tensor '", name,
                     "': data_offsets must be [begin, end]");
    auto dtype = dtype_from_name(dt->get<std::string>());
    MGM_CHECK_FORMAT(dtype.has_value(), what, "tensor '", name, "': unknown dtype '",
                     dt->get<std::string>(),
                     "' (expected BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64, "
                     "F8_E5M2 or F8_E4M3)");
    TensorRecord r;
    r.name = name;
    r.dtype = *dtype;
    for (const auto& d : *sh) {
      MGM_CHECK_FORMAT(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                       what, "tensor '", name, "': shape entries must be non-negative integers");
      MGM_CHECK_FORMAT(d.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX), what, "tensor '",
                       name, "': shape entry too large");
      r.sizes.push_back(d.get<int64_t>());
    }
    for (const auto& o : *off)
      MGM_CHECK_FORMAT(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0),
                       what, "tensor '", name, "': data_offsets must be non-negative integers");
    uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
    MGM_CHECK_FORMAT(b <= e, what, "tensor '", name, "': data_offsets [", b, ", ", e,
                     "] are reversed");
    MGM_CHECK_FORMAT(e <= buffer, what, "tensor '", name, "': data_offsets [", b, ", ", e,
                     "] are outside the data buffer of ", buffer, " bytes (truncated file?)");
    auto numel = checked_numel(r.sizes.data(), r.sizes.size());
    MGM_CHECK_FORMAT(numel.has_value(), what, "tensor '", name, "': shape overflows");
    auto nbytes = checked_mul(*numel, dtype_size(r.dtype));
    MGM_CHECK_FORMAT(nbytes && *nbytes == e - b, what, "tensor '", name, "': shape ",
                     "[", join([&] {
                       std::vector<std::string> s;
                       for (auto x : r.sizes) s.push_back(std::to_string(x));
                       return s;
                     }(), ", "), "] of ", dtype_name(r.dtype), " needs ",
                     nbytes ? std::to_string(*nbytes) : std::string("too many"),
                     " bytes but data_offsets span ", e - b);
    r.strides = contiguous_strides(r.sizes);
    r.data_offset = data_start + b;
    r.storage_nbytes = e - b;
    r.storage_key = name;
    out.tensors.push_back(std::move(r));
  }
  // As the reference reader: tensors tile the buffer exactly, without gaps or overlaps.
  std::vector<const TensorRecord*> by_off;
  for (const auto& t : out.tensors) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](const TensorRecord* a, const TensorRecord* b) {
    return a->data_offset != b->data_offset ? a->data_offset < b->data_offset
                                            : a->storage_nbytes < b->storage_nbytes;
  });
  uint64_t expect = data_start;
  for (const TensorRecord* t : by_off) {
    MGM_CHECK_FORMAT(t->data_offset >= expect, what, "tensor '", t->name,
                     "' overlaps the previous tensor's bytes (data_offsets begin at ",
                     t->data_offset - data_start, ", previous ends at ", expect - data_start, ")");
    MGM_CHECK_FORMAT(t->data_offset == expect, what, "gap of ", t->data_offset - expect,
                     " bytes before tensor '", t->name, "' in the data buffer");
    expect = t->data_offset + t->storage_nbytes;
  }
  MGM_CHECK_FORMAT(expect == size, what, "data buffer has ", size - expect,
                   " bytes not covered by any tensor");
  // File order; empty tensors sharing an offset with the next one come first, then by name, so
  // that the order does not depend on the sort implementation.
  std::sort(out.tensors.begin(), out.tensors.end(), [](const TensorRecord& a, const TensorRecord& b) {
    if (a.data_offset != b.data_offset) return a.data_offset < b.data_offset;
    if (a.storage_nbytes != b.storage_nbytes) return a.storage_nbytes < b.storage_nbytes;
    return a.name < b.name;
  });
  return out;
}

FileIndex parse_torch_zip(const uint8_t* data, uint64_t size, const std::string& what) {
  ZipReader zip(data, size, what);
  std::string prefix;
  for (const auto& r : zip.records()) {
    if (ends_with(r.name, "/data.pkl") && r.name.find('/') == r.name.size() - 9) {
      MGM_CHECK_FORMAT(prefix.empty(), what, "archive holds more than one data.pkl");
      prefix = r.name.substr(0, r.name.size() - 9);
    }
  }
  MGM_CHECK_FORMAT(!prefix.empty(), what,
                   "zip archive without <name>/data.pkl: not a torch.save file (TorchScript "
                   "archives, saved with torch.jit.save, are not state dicts)");
  if (const ZipRecord* bo = zip.find(prefix + "/byteorder")) {
    MGM_CHECK_FORMAT(bo->size != UINT64_MAX, what, "byteorder record is compressed");
    std::string order(reinterpret_cast<const char*>(zip.bytes(*bo)), bo->size);
    MGM_CHECK_FORMAT(order == "little", what, "byte order '", order,
                     "' is not supported (only little-endian archives)");
  }
  const ZipRecord& pkl = zip.at(prefix + "/data.pkl");
  PickleResult pr = unpickle(zip.bytes(pkl), pkl.size, what);
  StateDictIndex sd = index_state_dict(pr, what);
  FileIndex out;
  out.format = FileIndex::Format::kTorchZip;
  out.skipped = std::move(sd.skipped);
  for (auto& t : sd.tensors) {
    const std::string rec_name = prefix + "/data/" + t.storage_key;
    const ZipRecord* rec = zip.find(rec_name);
    MGM_CHECK_FORMAT(rec != nullptr, what, "tensor '", t.name, "': storage record '", rec_name,
                     "' is missing");
    MGM_CHECK_FORMAT(rec->size != UINT64_MAX, what, "tensor '", t.name, "': storage record '",
                     rec_name, "' is compressed; torch.save stores records uncompressed");
    auto need = checked_mul(t.storage_numel, dtype_size(t.dtype));
    MGM_CHECK_FORMAT(need && *need == rec->size, what, "tensor '", t.name, "': storage '",
                     t.storage_key, "' of ", t.storage_numel, " ", dtype_name(t.dtype),
                     " elements needs ", need ? std::to_string(*need) : std::string("too many"),
                     " bytes but its record holds ", rec->size);
    TensorRecord r;
    r.name = std::move(t.name);
    r.dtype = t.dtype;
    r.sizes = std::move(t.sizes);
    r.strides = std::move(t.strides);
    r.storage_offset = t.storage_offset;
    r.data_offset = rec->data_offset;
    r.storage_nbytes = rec->size;
    r.storage_key = t.storage_key;
    out.tensors.push_back(std::move(r));
  }
  return out;
}

FileIndex parse_tensor_file(const uint8_t* data, uint64_t size, const std::string& what) {
  if (size >= 4 && std::memcmp(data, "PK\x03\x04", 4) == 0) return parse_torch_zip(data, size, what);
  // Safetensors is tested before the legacy pickle: a header of 128 + 256k bytes (k <= 5) starts
  // with the bytes 0x80 k, which look like a pickle PROTO opcode.
  if (size >= 9 && data[8] == '{') return parse_safetensors(data, size, what);
  if (size >= 2 && data[0] == 0x80 && data[1] <= 5)
    throw FormatError(what, "legacy (pre-1.6, non-zip) torch.save format is not supported; "
                            "re-save it with torch.save in PyTorch >= 1.6");
  throw FormatError(what, "neither a safetensors file nor a torch.save zip archive");
}

std::string build_safetensors_header(const std::vector<HeaderEntry>& entries,
                                     const std::map<std::string, std::string>& metadata) {
  OrderedJson h = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson m = OrderedJson::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  uint64_t off = 0;
  std::set<std::string> seen;
  for (const auto& e : entries) {
    MGM_CHECK(e.name != "__metadata__", "a tensor cannot be named __metadata__");
    MGM_CHECK(seen.insert(e.name).second, "duplicate tensor name '", e.name, "'");
    OrderedJson t = OrderedJson::object();
    t["dtype"] = dtype_name(e.dtype);
    t["shape"] = e.sizes;
    t["data_offsets"] = {off, off + e.nbytes};
    h[e.name] = t;
    off += e.nbytes;
  }
  std::string json = h.dump();
  size_t padded = (json.size() + 8 + 7) / 8 * 8 - 8;
  json.append(padded - json.size(), ' ');
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>((n >> (8 * k)) & 0xFF);
  return out + json;
}

}  // namespace mgm::models::io
