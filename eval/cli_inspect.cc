#include "eval/cli_inspect.h"

#include <cstdio>

#include "common/strings.h"
#include "data/inspect.h"
#include "models/io/tensor_file.h"

namespace mgm::eval {
namespace {

int run_inspect(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm data inspect",
                   "Shows exactly what the trainer gets for one sample: prints the prompt decoded from "
                   "its token ids with the supervised spans in [[...]] (everything else is masked with "
                   "-100), and writes input_ids, labels, attention_mask, images and images_aux as the "
                   "collator produces them to --out.");
  p.flag("data_path", cli::Kind::kString, "", "LLaVA dataset (JSON array or JSONL)", true)
      .flag("image_folder", cli::Kind::kString, "", "folder the image paths are relative to")
      .flag("tokenizer", cli::Kind::kString, "", "tokenizer.model (or a folder holding one)", true)
      .flag("version", cli::Kind::kString, "gemma", "conversation template: gemma or plain")
      .flag("index", cli::Kind::kInt, "0", "0-based sample index")
      .flag("image_aspect_ratio", cli::Kind::kString, "pad", "pad or square")
      .flag("model_max_length", cli::Kind::kInt, "2048", "truncation length of the collator")
      .flag("image_size_aux", cli::Kind::kInt, "768", "high-resolution image side")
      .flag("image_size", cli::Kind::kInt, "336", "low-resolution (CLIP) image side")
      .flag("out", cli::Kind::kString, "", "output SAMPLE.safetensors (optional)");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  data::InspectOptions o;
  o.data_path = p.str("data_path");
  o.image_folder = p.str("image_folder");
  o.tokenizer = p.str("tokenizer");
  o.version = p.str("version");
  o.index = p.integer("index");
  o.aspect = data::parse_aspect_mode(p.str("image_aspect_ratio"));
  o.collator.model_max_length = p.integer("model_max_length");
  o.collator.aux_size = p.integer("image_size_aux");
  o.collator.lr_size = p.integer("image_size");
  data::InspectResult r = data::inspect_sample(o);
  std::printf("sample %lld (id '%s'): %lld tokens, %zu supervised\n", static_cast<long long>(o.index),
              r.sample_id.c_str(), static_cast<long long>(r.batch.input_ids.size(1)), r.supervised_tokens);
  if (!r.problem.empty()) std::printf("PROBLEM: %s (all labels masked)\n", r.problem.c_str());
  std::printf("---- decoded ([[...]] = supervised) ----\n%s\n----\n", r.annotated.c_str());
  if (!p.str("out").empty()) {
    models::io::save_safetensors(p.str("out"), {{"input_ids", r.batch.input_ids},
                                                {"labels", r.batch.labels},
                                                {"attention_mask", r.batch.attention_mask},
                                                {"images", r.batch.images},
                                                {"images_aux", r.batch.images_aux}});
    std::printf("wrote %s\n", p.str("out").c_str());
  }
  return 0;
}

}  // namespace

std::vector<cli::Command> inspect_commands() {
  return {{"data", "inspect", "show the tokens, masks and tensors the trainer gets for a sample", run_inspect}};
}

}  // namespace mgm::eval
