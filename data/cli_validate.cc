#include "data/cli_validate.h"

#include <cstdio>

#include "common/files.h"
#include "common/json.h"
#include "data/image.h"
#include "data/validate.h"

namespace mgm::data {
namespace {

int run_validate(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm data validate",
                   "Checks a LLaVA dataset (JSON array or JSONL) before a long job and reports every "
                   "problem with its sample id: malformed records, missing or undecodable images, "
                   "conversations that do not alternate, '<image>' tokens without images (or images "
                   "without the token), samples longer than --model_max_length once the image tokens "
                   "are counted, and template/tokenisation mismatches. Exits 1 when there are problems.");
  p.flag("data_path", cli::Kind::kString, "", "LLaVA dataset", true)
      .flag("image_folder", cli::Kind::kString, "", "folder the image paths are relative to")
      .flag("tokenizer", cli::Kind::kString, "", "tokenizer.model (or a folder holding one)", true)
      .flag("version", cli::Kind::kString, "gemma", "conversation template: gemma or plain")
      .flag("model_max_length", cli::Kind::kInt, "2048", "maximum sequence length (image tokens included)")
      .flag("image_tokens", cli::Kind::kInt, "576", "LLM positions one image takes")
      .flag("decode_images", cli::Kind::kBool, "true", "decode every image (false: only check that it exists)")
      .flag("report", cli::Kind::kString, "", "also write every problem as JSON Lines to this file")
      .flag("max_listed", cli::Kind::kInt, "200", "problems printed on the terminal")
      .flag("max_image_pixels", cli::Kind::kInt, std::to_string(kPilMaxImagePixels), kMaxImagePixelsHelp);
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  ValidateOptions o;
  o.data_path = p.str("data_path");
  o.image_folder = p.str("image_folder");
  o.tokenizer = p.str("tokenizer");
  o.version = p.str("version");
  o.model_max_length = p.integer("model_max_length");
  o.image_tokens = p.integer("image_tokens");
  o.decode_images = p.boolean("decode_images");
  set_max_image_pixels(p.integer("max_image_pixels"));
  ValidationReport r = validate_dataset(o);
  std::fputs(r.text(static_cast<size_t>(p.integer("max_listed"))).c_str(), stdout);
  if (!p.str("report").empty()) {
    std::string lines;
    for (const auto& pr : r.problems)
      lines += Json{{"kind", pr.kind}, {"where", pr.where}, {"message", pr.message}}.dump() + "\n";
    write_file_atomic(p.str("report"), lines);
    std::printf("report: %s\n", p.str("report").c_str());
  }
  return r.ok() ? 0 : 1;
}

}  // namespace

std::vector<cli::Command> validate_commands() {
  return {{"data", "validate", "check a dataset before training: every problem with its sample id",
           run_validate}};
}

}  // namespace mgm::data
