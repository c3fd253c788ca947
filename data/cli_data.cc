#include "data/cli_data.h"

#include <iostream>

#include "common/error.h"
#include "data/convert.h"

namespace mgm::data {
namespace {

using cli::ArgParser;
using cli::Kind;

// The Python tools take their paths positionally or under these names; both spellings work.
std::string pick(const ArgParser& p, const std::string& ours, const std::string& python,
                 const std::string& what) {
  if (p.given(ours) && p.given(python) && p.str(ours) != p.str(python))
    throw UsageError(str_cat("--", ours, " and --", python, " both given with different values"));
  std::string v = p.given(ours) ? p.str(ours) : p.str(python);
  if (v.empty()) throw UsageError(str_cat("missing ", what, " (--", ours, ")"));
  return v;
}

std::string token_flag(const ArgParser& p, const std::string& name, const std::string& fallback) {
  return p.given(name) ? p.str(name) : fallback;
}

void print_warnings(const Warnings& w) {
  for (const auto& s : w) std::cerr << "warning: " << s << "\n";
}

}  // namespace

int run_convert(const std::vector<std::string>& args) {
  ArgParser p(
      "mgm data convert",
      "Converts between Data-Juicer JSONL and LLaVA JSON with the behaviour of data-juicer's\n"
      "dj_to_llava.py / llava_to_dj.py (byte-identical output). Never overwrites an existing\n"
      "output unless --overwrite. Token flags take their values literally.");
  p.flag("from", Kind::kString, "", "source format: dj or llava", true)
      .flag("to", Kind::kString, "", "target format: llava or dj", true)
      .flag("input", Kind::kString, "", "input dataset (alias: --dj_ds_path / --llava_ds_path)")
      .flag("output", Kind::kString, "",
            "output dataset (alias: --target_llava_ds_path / --target_ds_path)")
      .flag("dj_ds_path", Kind::kString, "", "dj_to_llava.py's name for --input")
      .flag("target_llava_ds_path", Kind::kString, "", "dj_to_llava.py's name for --output (.json)")
      .flag("llava_ds_path", Kind::kString, "", "llava_to_dj.py's name for --input")
      .flag("target_ds_path", Kind::kString, "", "llava_to_dj.py's name for --output (.jsonl)")
      .flag("overwrite", Kind::kBool, "false", "replace an existing output file")
      .flag("eoc_special_token", Kind::kString, "", "end-of-chunk token (default <|__dj__eoc|>)")
      .flag("image_special_token", Kind::kString, "", "image token (default <image>)")
      .flag("sent_seperator", Kind::kString, "", "sentence separator (default: a newline)")
      .flag("sent_separator", Kind::kString, "", "same as --sent_seperator (the Python spelling)")
      // dj -> llava
      .flag("keep_only_first_image", Kind::kBool, "true",
            "dj->llava: drop image tokens at the start/end of every sentence but the first")
      .flag("restore_questions", Kind::kBool, "false",
            "dj->llava: take each sample's question (first turn) and id from "
            "--original_llava_ds_path")
      .flag("original_llava_ds_path", Kind::kString, "", "dj->llava: the original LLaVA dataset")
      // llava -> dj
      .flag("str_id", Kind::kBool, "true", "llava->dj: write ids as strings")
      .flag("split_chunk", Kind::kBool, "false", "llava->dj: one eoc-terminated chunk per round")
      .flag("image_broadcast", Kind::kBool, "false",
            "llava->dj: add the image token to every round's question (needs --split_chunk)")
      .flag("image_broadcast_pos", Kind::kString, "random",
            "llava->dj: random | before | after | follow (the first round's position)")
      .flag("add_eoc_at_last", Kind::kBool, "true", "llava->dj: end the text with the eoc token")
      .flag("only_keep_caption", Kind::kBool, "false",
            "llava->dj: text = image token + separator + answer (pretraining captions)")
      .flag(
          "seed", Kind::kInt, "0",
          "llava->dj: random.seed for --image_broadcast_pos random (the Python tool is unseeded)");
  if (!p.parse(args)) {
    std::cout << p.help();
    return 0;
  }
  std::string from = p.str("from"), to = p.str("to");
  bool dj2llava = from == "dj" && to == "llava";
  bool llava2dj = from == "llava" && to == "dj";
  if (!dj2llava && !llava2dj)
    throw UsageError(str_cat("unsupported conversion --from ", from, " --to ", to,
                             " (supported: --from dj --to llava, --from llava --to dj)"));
  const std::vector<std::string> dj_only = {"keep_only_first_image", "restore_questions",
                                            "original_llava_ds_path", "dj_ds_path",
                                            "target_llava_ds_path"};
  const std::vector<std::string> llava_only = {"str_id",
                                               "split_chunk",
                                               "image_broadcast",
                                               "image_broadcast_pos",
                                               "add_eoc_at_last",
                                               "only_keep_caption",
                                               "seed",
                                               "llava_ds_path",
                                               "target_ds_path"};
  for (const auto& f : dj2llava ? llava_only : dj_only)
    if (p.given(f))
      throw UsageError(str_cat("--", f, " does not apply to --from ", from, " --to ", to));
  std::string sep_alias = p.given("sent_separator") ? p.str("sent_separator") : "\n";
  std::string sep = token_flag(p, "sent_seperator", sep_alias);
  std::string eoc = token_flag(p, "eoc_special_token", kDjEocToken);
  std::string img = token_flag(p, "image_special_token", kLlavaImageToken);
  bool overwrite = p.boolean("overwrite");
  Warnings warnings;
  if (dj2llava) {
    std::string in = pick(p, "input", "dj_ds_path", "input dataset");
    std::string out = pick(p, "output", "target_llava_ds_path", "output dataset");
    DjToLlavaOptions o;
    o.keep_only_first_image = p.boolean("keep_only_first_image");
    o.eoc_special_token = eoc;
    o.image_special_token = img;
    o.sent_separator = sep;
    o.restore_questions = p.boolean("restore_questions");
    o.original_llava_ds_path = p.str("original_llava_ds_path");
    if (!o.restore_questions && !o.original_llava_ds_path.empty())
      throw UsageError("--original_llava_ds_path is only used with --restore_questions");
    size_t n = dj_to_llava_file(in, out, o, overwrite, &warnings);
    print_warnings(warnings);
    std::cout << "converted " << n << " samples: " << in << " -> " << out << "\n";
  } else {
    std::string in = pick(p, "input", "llava_ds_path", "input dataset");
    std::string out = pick(p, "output", "target_ds_path", "output dataset");
    LlavaToDjOptions o;
    o.str_id = p.boolean("str_id");
    o.split_chunk = p.boolean("split_chunk");
    o.image_broadcast = p.boolean("image_broadcast");
    o.image_broadcast_pos = p.str("image_broadcast_pos");
    o.eoc_special_token = eoc;
    o.image_special_token = img;
    o.add_eoc_at_last = p.boolean("add_eoc_at_last");
    o.sent_separator = sep;
    o.only_keep_caption = p.boolean("only_keep_caption");
    o.seed = p.integer("seed");
    size_t n = llava_to_dj_file(in, out, o, overwrite, &warnings);
    print_warnings(warnings);
    std::cout << "converted " << n << " samples: " << in << " -> " << out << "\n";
  }
  return 0;
}

int run_sample(const std::vector<std::string>& args) {
  ArgParser p(
      "mgm data sample",
      "Caps a dataset at --max samples like the toolkit's check_sample_number.py: with more\n"
      "samples than --max, keeps Python's random.sample(samples, max) after random.seed(seed)\n"
      "(the identical subset, in the same order); otherwise keeps all. JSONL in -> JSONL out,\n"
      "JSON array in -> JSON array out.");
  p.flag("data_path", Kind::kString, "", "input dataset (alias: --input_dataset)")
      .flag("out", Kind::kString, "", "output dataset (alias: --output_dataset)")
      .flag("input_dataset", Kind::kString, "", "check_sample_number.py's name for --data_path")
      .flag("output_dataset", Kind::kString, "", "check_sample_number.py's name for --out")
      .flag("max", Kind::kInt, "200000", "maximum number of samples (alias: --sample_num)")
      .flag("sample_num", Kind::kInt, "200000", "check_sample_number.py's name for --max")
      .flag("seed", Kind::kInt, "1024", "random.seed value (the toolkit hard-codes 1024)")
      .flag("overwrite", Kind::kBool, "false", "replace an existing output file");
  if (!p.parse(args)) {
    std::cout << p.help();
    return 0;
  }
  std::string in = pick(p, "data_path", "input_dataset", "input dataset");
  std::string out = pick(p, "out", "output_dataset", "output dataset");
  if (p.given("max") && p.given("sample_num") && p.integer("max") != p.integer("sample_num"))
    throw UsageError("--max and --sample_num both given with different values");
  int64_t max = p.given("sample_num") ? p.integer("sample_num") : p.integer("max");
  SampleResult r = sample_dataset_file(in, out, max, p.integer("seed"), p.boolean("overwrite"));
  std::cout << "total samples in " << in << ": " << r.total << "\n";
  if (r.kept < r.total)
    std::cout << "sampled " << r.kept << " (seed " << p.integer("seed") << ") -> " << out << "\n";
  else
    std::cout << "kept all " << r.kept << " samples -> " << out << "\n";
  return 0;
}

std::vector<cli::Command> data_commands() {
  return {
      {"data", "convert",
       "convert between Data-Juicer JSONL and LLaVA JSON (dj_to_llava / llava_to_dj)", run_convert},
      {"data", "sample", "cap a dataset at N samples with Python's seeded random.sample",
       run_sample},
  };
}

}  // namespace mgm::data
