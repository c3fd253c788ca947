// Small string helpers shared by the CLI, reports and formats.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mgm {

std::vector<std::string> split(std::string_view s, char sep);
// Python's str.split(sep) for a non-empty separator string: every piece, empty ones included.
std::vector<std::string> split(std::string_view s, std::string_view sep);
std::string join(const std::vector<std::string>& parts, std::string_view sep);
bool starts_with(std::string_view s, std::string_view prefix);
bool ends_with(std::string_view s, std::string_view suffix);
std::string trim(std::string_view s);
std::string to_lower(std::string_view s);

// Levenshtein distance, used to suggest the closest valid flag or key.
size_t edit_distance(std::string_view a, std::string_view b);
// The candidate closest to `word`, or "" when none is reasonably close.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

// "1.50 GB" style (decimal units, as Hugging Face reports shard sizes).
std::string human_bytes(uint64_t bytes);
// "3,019,166,144".
std::string with_commas(uint64_t n);
// Parses "5GB", "500MB", "2GiB", "1000" (bytes). Throws UsageError on bad input.
uint64_t parse_size(std::string_view s);

}  // namespace mgm
