// Byte-exact imitations of the few CPython behaviours the reference data tools rely on:
// json.dumps formatting (separators ", " / ": ", ensure_ascii), repr/str of JSON scalars, and
// str.strip() with Python's Unicode whitespace set. Lets converted files match the Python
// tools' output byte for byte.
#pragma once

#include <string>
#include <string_view>

#include "common/json.h"

namespace mgm::data {

// json.dumps(value, ensure_ascii=...) with default separators. NaN/Infinity are written as
// Python does ("NaN", "Infinity"), though the JSON reader never produces them.
std::string py_json_dumps(const OrderedJson& value, bool ensure_ascii);
void py_json_dump_to(const OrderedJson& value, bool ensure_ascii, std::string& out);

// repr(float) as CPython 3 prints it (shortest round-trip digits, "1e-05", "1.0").
std::string py_float_repr(double v);

// str(x) for a JSON scalar as Python sees it after json.load (ids are compared this way by
// the reference tools): strings unchanged, ints in decimal, floats via repr, True/False/None.
// Objects and arrays throw Error (Python would give a dict/list repr no real id has).
std::string py_str(const OrderedJson& value);

// True for the code points Python's str.isspace() accepts.
bool py_isspace(char32_t c);
// str.strip() on UTF-8 text (invalid UTF-8 bytes are treated as non-space).
std::string py_strip(std::string_view s);

}  // namespace mgm::data
