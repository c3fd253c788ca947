#include "data/llava.h"

#include "common/error.h"
#include "data/py_compat.h"

namespace mgm::data {

Sample parse_llava_record(const std::string& path, const Record& r) {
  auto fail = [&](const std::string& msg) -> FormatError {
    return FormatError(path, record_where(r) + ": " + msg);
  };
  const OrderedJson& v = r.value;
  if (!v.is_object()) throw fail(str_cat("expected a JSON object, found ", v.type_name()));
  Sample s;
  s.index = r.index;
  s.line = r.line;
  auto id = v.find("id");
  if (id == v.end()) throw fail("missing \"id\"");
  if (!id->is_string() && !id->is_number())
    throw fail(str_cat("\"id\" must be a string or number, found ", id->type_name()));
  s.id_value = *id;
  s.id = py_str(*id);
  auto img = v.find("image");
  if (img != v.end()) {
    if (img->is_string()) {
      s.images.push_back(img->get<std::string>());
    } else if (img->is_array()) {
      s.image_is_list = true;
      for (size_t i = 0; i < img->size(); ++i) {
        if (!(*img)[i].is_string())
          throw fail(str_cat("\"image\"[", i, "] must be a string, found ", (*img)[i].type_name()));
        s.images.push_back((*img)[i].get<std::string>());
      }
    } else if (!img->is_null()) {
      throw fail(
          str_cat("\"image\" must be a string or a list of strings, found ", img->type_name()));
    }
    for (const auto& p : s.images)
      if (p.empty()) throw fail("\"image\" is an empty path");
  }
  auto conv = v.find("conversations");
  if (conv == v.end()) throw fail("missing \"conversations\"");
  if (!conv->is_array())
    throw fail(str_cat("\"conversations\" must be a list, found ", conv->type_name()));
  if (conv->empty()) throw fail("\"conversations\" is empty");
  for (size_t i = 0; i < conv->size(); ++i) {
    const auto& t = (*conv)[i];
    if (!t.is_object())
      throw fail(str_cat("conversations[", i, "] must be an object, found ", t.type_name()));
    for (const char* key : {"from", "value"}) {
      auto it = t.find(key);
      if (it == t.end()) throw fail(str_cat("conversations[", i, "] is missing \"", key, "\""));
      if (!it->is_string())
        throw fail(
            str_cat("conversations[", i, "].", key, " must be a string, found ", it->type_name()));
    }
    s.conversations.push_back(Turn{t["from"].get<std::string>(), t["value"].get<std::string>()});
  }
  return s;
}

std::string training_refusal(const Sample& s) {
  if (s.images.size() > 1)
    return str_cat("has ", s.images.size(), " images; MGM trains one image per sample");
  return "";
}

std::vector<Sample> read_llava(const std::string& path) {
  RecordFile f = read_records(path);
  std::vector<Sample> out;
  out.reserve(f.records.size());
  for (const auto& r : f.records) out.push_back(parse_llava_record(path, r));
  return out;
}

OrderedJson to_llava_json(const Sample& s) {
  OrderedJson j = OrderedJson::object();
  j["id"] = s.id_value;
  if (s.image_is_list) {
    j["image"] = s.images;
  } else if (!s.images.empty()) {
    j["image"] = s.images[0];
  }
  OrderedJson conv = OrderedJson::array();
  for (const auto& t : s.conversations) {
    OrderedJson tj = OrderedJson::object();
    tj["from"] = t.from;
    tj["value"] = t.value;
    conv.push_back(std::move(tj));
  }
  j["conversations"] = std::move(conv);
  return j;
}

}  // namespace mgm::data
