#include "eval/scoring/py_text.h"

namespace mgm::eval::py {

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int len = 0;
    char32_t cp = 0;
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      cp = b0 & 0x07;
    }
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (b & 0x3F);
    }
    // Reject overlong forms, surrogates and values past U+10FFFF.
    if (ok && ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
               (cp >= 0xD800 && cp <= 0xDFFF)))
      ok = false;
    if (!ok) {
      out.push_back(0xDC00 + b0);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c >= 0xDC80 && c <= 0xDCFF) {
      out.push_back(static_cast<char>(c - 0xDC00));  // an escaped invalid byte
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool is_digit(char32_t c) {
  static const char32_t kZeros[] = {0x30,  0x660,  0x6F0,  0x7C0,  0x966,  0x9E6,  0xA66,  0xAE6,
                                    0xB66, 0xBE6,  0xC66,  0xCE6,  0xD66,  0xDE6,  0xE50,  0xED0,
                                    0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0xFF10};
  for (char32_t z : kZeros)
    if (c >= z && c <= z + 9) return true;
  return false;
}

namespace {

// Appends the lower-case form of c (one or two code points).
void lower_into(char32_t c, std::u32string& out) {
  char32_t r = c;
  if (c < 0x80) {
    if (c >= 'A' && c <= 'Z') r = c + 32;
  } else if (c >= 0xC0 && c <= 0xDE && c != 0xD7) {
    r = c + 32;
  } else if (c == 0x130) {
    out.push_back(U'i');
    out.push_back(0x307);
    return;
  } else if ((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) ||
             (c >= 0x14A && c <= 0x177) || (c >= 0x1E00 && c <= 0x1E95) ||
             (c >= 0x1EA0 && c <= 0x1EFF) || (c >= 0x460 && c <= 0x481) ||
             (c >= 0x48A && c <= 0x4BF)) {
    if (c % 2 == 0) r = c + 1;
  } else if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) {
    if (c % 2 == 1) r = c + 1;
  } else if (c == 0x178) {
    r = 0xFF;
  } else if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) {
    r = c + 32;
  } else if (c == 0x386) {
    r = 0x3AC;
  } else if (c >= 0x388 && c <= 0x38A) {
    r = c + 37;
  } else if (c == 0x38C) {
    r = 0x3CC;
  } else if (c == 0x38E || c == 0x38F) {
    r = c + 63;
  } else if (c >= 0x410 && c <= 0x42F) {
    r = c + 32;
  } else if (c >= 0x400 && c <= 0x40F) {
    r = c + 80;
  } else if (c >= 0xFF21 && c <= 0xFF3A) {
    r = c + 32;
  }
  out.push_back(r);
}

}  // namespace

std::u32string lower(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t c : s) lower_into(c, out);
  return out;
}

std::string lower(std::string_view utf8) { return encode(lower(decode(utf8))); }

std::u32string strip(std::u32string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return std::u32string(s.substr(b, e - b));
}

std::vector<std::u32string> split(std::u32string_view s) {
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_space(s[i])) ++i;
    size_t j = i;
    while (j < s.size() && !is_space(s[j])) ++j;
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::vector<std::string> split(std::string_view utf8) {
  std::vector<std::string> out;
  for (const auto& w : split(decode(utf8))) out.push_back(encode(w));
  return out;
}

}  // namespace mgm::eval::py
