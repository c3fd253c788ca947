// Python str semantics the reference scorers depend on (lower(), split(), strip(), `\d`,
// `\s`), applied to UTF-8 text as code points so results match the Python originals.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mgm::eval::py {

// Decodes UTF-8; an invalid byte b becomes U+DC00+b (Python's surrogateescape) so that
// encode(decode(s)) == s for any input.
std::u32string decode(std::string_view s);
std::string encode(std::u32string_view s);

// str.isspace(): ASCII whitespace, \x1c-\x1f, U+0085, U+00A0 and the Unicode space separators.
bool is_space(char32_t c);
// re's \d for str patterns: Unicode decimal digits (ASCII plus the common script digit blocks).
bool is_digit(char32_t c);
// str.lower() for ASCII, Latin-1, Latin Extended-A/Additional, Greek, Cyrillic and fullwidth
// Latin; other scripts are returned unchanged (U+0130 lowers to "i\u0307" as in Python).
std::u32string lower(std::u32string_view s);
std::string lower(std::string_view utf8);

std::u32string strip(std::u32string_view s);
std::vector<std::u32string> split(std::u32string_view s);  // str.split() with no argument
std::vector<std::string> split(std::string_view utf8);

}  // namespace mgm::eval::py
