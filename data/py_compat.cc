#include "data/py_compat.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"

namespace mgm::data {
namespace {

void append_u_escape(std::string& out, unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "\\u%04x", v & 0xFFFFu);  // Python writes lowercase hex
  out += buf;
}

// Decodes one UTF-8 code point at s[i]; returns its length (0 when the bytes are invalid).
size_t decode_utf8(std::string_view s, size_t i, char32_t* cp) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  char32_t v = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) {
    unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc >> 6) != 0x2) return 0;
    v = (v << 6) | (cc & 0x3F);
  }
  *cp = v;
  return len;
}

void dump_string(std::string_view s, bool ensure_ascii, std::string& out) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"':
        out += "\\\"";
        ++i;
        continue;
      case '\\':
        out += "\\\\";
        ++i;
        continue;
      case '\n':
        out += "\\n";
        ++i;
        continue;
      case '\r':
        out += "\\r";
        ++i;
        continue;
      case '\t':
        out += "\\t";
        ++i;
        continue;
      case '\b':
        out += "\\b";
        ++i;
        continue;
      case '\f':
        out += "\\f";
        ++i;
        continue;
      default:
        break;
    }
    if (c < 0x20) {
      append_u_escape(out, c);
      ++i;
      continue;
    }
    if (!ensure_ascii || c < 0x7F) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    if (c == 0x7F) {  // ensure_ascii escapes everything outside ' '..'~'
      append_u_escape(out, c);
      ++i;
      continue;
    }
    char32_t cp = 0;
    size_t len = decode_utf8(s, i, &cp);
    if (len == 0) throw Error("cannot write JSON: string is not valid UTF-8");
    if (cp >= 0x10000) {
      char32_t v = cp - 0x10000;
      append_u_escape(out, 0xD800 | static_cast<unsigned>(v >> 10));
      append_u_escape(out, 0xDC00 | static_cast<unsigned>(v & 0x3FF));
    } else {
      append_u_escape(out, static_cast<unsigned>(cp));
    }
    i += len;
  }
  out += '"';
}

}  // namespace

std::string py_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s(buf);
  std::string sign;
  if (s[0] == '-') {
    sign = "-";
    s.erase(0, 1);
  }
  size_t e = s.find('e');
  int exp = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string r;
  if (exp >= -4 && exp < 16) {  // CPython: fixed unless decpt (= exp + 1) <= -4 or > 16
    if (exp >= 0) {
      std::string ip = digits.substr(0, std::min(digits.size(), static_cast<size_t>(exp) + 1));
      while (ip.size() < static_cast<size_t>(exp) + 1) ip += '0';
      std::string fp = digits.size() > ip.size() ? digits.substr(ip.size()) : "0";
      r = ip + "." + fp;
    } else {
      r = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    r = digits.substr(0, 1);
    if (digits.size() > 1) r += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    r += eb;
  }
  return sign + r;
}

void py_json_dump_to(const OrderedJson& j, bool ensure_ascii, std::string& out) {
  switch (j.type()) {
    case OrderedJson::value_t::null:
      out += "null";
      break;
    case OrderedJson::value_t::boolean:
      out += j.get<bool>() ? "true" : "false";
      break;
    case OrderedJson::value_t::number_integer:
      out += std::to_string(j.get<int64_t>());
      break;
    case OrderedJson::value_t::number_unsigned:
      out += std::to_string(j.get<uint64_t>());
      break;
    case OrderedJson::value_t::number_float: {
      double v = j.get<double>();
      if (std::isnan(v))
        out += "NaN";
      else if (std::isinf(v))
        out += v > 0 ? "Infinity" : "-Infinity";
      else
        out += py_float_repr(v);
      break;
    }
    case OrderedJson::value_t::string:
      dump_string(j.get_ref<const std::string&>(), ensure_ascii, out);
      break;
    case OrderedJson::value_t::array: {
      out += '[';
      bool first = true;
      for (const auto& e : j) {
        if (!first) out += ", ";
        first = false;
        py_json_dump_to(e, ensure_ascii, out);
      }
      out += ']';
      break;
    }
    case OrderedJson::value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        dump_string(it.key(), ensure_ascii, out);
        out += ": ";
        py_json_dump_to(it.value(), ensure_ascii, out);
      }
      out += '}';
      break;
    }
    default:
      throw Error("cannot write JSON: unsupported value type (binary)");
  }
}

std::string py_json_dumps(const OrderedJson& value, bool ensure_ascii) {
  std::string out;
  py_json_dump_to(value, ensure_ascii, out);
  return out;
}

std::string py_str(const OrderedJson& j) {
  switch (j.type()) {
    case OrderedJson::value_t::string:
      return j.get<std::string>();
    case OrderedJson::value_t::number_integer:
      return std::to_string(j.get<int64_t>());
    case OrderedJson::value_t::number_unsigned:
      return std::to_string(j.get<uint64_t>());
    case OrderedJson::value_t::number_float:
      return py_float_repr(j.get<double>());
    case OrderedJson::value_t::boolean:
      return j.get<bool>() ? "True" : "False";
    case OrderedJson::value_t::null:
      return "None";
    default:
      throw Error(str_cat("expected a string or number, found ", j.type_name()));
  }
}

bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string py_strip(std::string_view s) {
  size_t b = 0;
  while (b < s.size()) {
    char32_t cp = 0;
    size_t len = decode_utf8(s, b, &cp);
    if (len == 0 || !py_isspace(cp)) break;
    b += len;
  }
  size_t e = s.size();
  while (e > b) {
    size_t start = e - 1;
    while (start > b && (static_cast<unsigned char>(s[start]) >> 6) == 0x2) --start;
    char32_t cp = 0;
    size_t len = decode_utf8(s, start, &cp);
    if (len == 0 || start + len != e || !py_isspace(cp)) break;
    e = start;
  }
  return std::string(s.substr(b, e - b));
}

}  // namespace mgm::data
