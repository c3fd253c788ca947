// LLaVA-format samples (what MGM trains on): {"id", "image" (optional; a path or a list of
// paths), "conversations": [{"from", "value"}, ...]}. Reading validates every record and names
// file, line, record index and sample id in errors.
#pragma once

#include <string>
#include <vector>

#include "common/json.h"
#include "data/records.h"

namespace mgm::data {

struct Turn {
  std::string from;   // "human" / "gpt" in LLaVA data
  std::string value;  // may contain "<image>"
};

struct Sample {
  std::string id;                   // str(id) as Python prints it
  OrderedJson id_value;             // the id as stored (string or number)
  std::vector<std::string> images;  // empty: text-only sample
  bool image_is_list = false;       // "image" was given as a list
  std::vector<Turn> conversations;
  size_t index = 0;  // record index in the file
  size_t line = 0;   // 1-based line where the record starts
  bool has_image() const { return !images.empty(); }
};

// Validates one record: an object with "id" (string or number), "conversations" (a non-empty
// array of objects with string "from" and "value") and optional "image" (string or list of
// strings). Throws FormatError naming path:line, record index and id.
Sample parse_llava_record(const std::string& path, const Record& r);

// Why training refuses a well-formed sample before any work ("" when it does not): today a
// sample with more than one image (MGM trains one image per sample; a second would otherwise be
// dropped silently). One definition for the dataset and `mgm data validate`, so validate
// reports everything training would refuse.
std::string training_refusal(const Sample& s);

// Reads a LLaVA dataset: a JSON array (the usual .json) or JSON Lines.
std::vector<Sample> read_llava(const std::string& path);

// The LLaVA record for a sample, keys in the order LLaVA files use (id, image, conversations).
OrderedJson to_llava_json(const Sample& s);

}  // namespace mgm::data
