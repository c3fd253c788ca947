#include "data/cli_synth.h"

#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "data/synth.h"

namespace mgm::data {

int run_synth(const std::vector<std::string>& args) {
  cli::ArgParser p(
      "mgm data synth",
      "Generates the embedded default dataset: images of coloured shapes (some with a word),\n"
      "pretraining captions (Data-Juicer JSONL + LLaVA JSON), finetuning conversations (LLaVA\n"
      "JSON), TextVQA- and MMBench-format eval sets on separate images, a sentencepiece\n"
      "tokenizer and a manifest. Same seed and options give byte-identical files.\n"
      "Layout of --out: images/{train,eval}/NNNNNN.png, pretrain_dj.jsonl, pretrain.json,\n"
      "finetune.json (train with --image_folder OUT/images), eval/textvqa_questions.jsonl,\n"
      "eval/textvqa_annotations.json, eval/mmbench.tsv, tokenizer/tokenizer.model, synth.json.");
  p.flag("out", cli::Kind::kString, "", "output folder (must be empty unless --overwrite)", true)
      .flag("seed", cli::Kind::kInt, "0", "random seed")
      .flag("size", cli::Kind::kInt, "2000", "number of training images")
      .flag("eval_size", cli::Kind::kInt, "200", "number of evaluation images")
      .flag("image_size", cli::Kind::kInt, "256",
            "nominal image side in pixels (each side varies in 0.75..1.25 x this)")
      .flag("vocab_size", cli::Kind::kInt, "1024",
            "tokenizer vocabulary size (at most the model's vocab_size)")
      .flag("caption-noise", cli::Kind::kFloat, "0",
            "fraction of pretraining captions made wrong on purpose (wrong colour, shape, count "
            "or another image's caption; listed in pretrain_truth.jsonl)")
      .flag("overwrite", cli::Kind::kBool, "false", "write into a non-empty --out");
  if (!p.parse(args)) {
    std::cout << p.help();
    return 0;
  }
  auto as_int = [&](const std::string& name) {
    const int64_t v = p.integer(name);
    if (v < -2147483647 || v > 2147483647)
      throw UsageError(str_cat("--", name, " is out of range: ", v));
    return static_cast<int>(v);
  };
  SynthOptions o;
  o.out_dir = p.str("out");
  o.seed = p.integer("seed");
  o.size = as_int("size");
  o.eval_size = as_int("eval_size");
  o.image_size = as_int("image_size");
  o.vocab_size = as_int("vocab_size");
  o.overwrite = p.boolean("overwrite");
  o.caption_noise = p.number("caption-noise");
  if (!(o.caption_noise >= 0 && o.caption_noise <= 1))
    throw UsageError(str_cat("--caption-noise must be in [0, 1], got ", o.caption_noise));
  const SynthSummary s = synthesize_dataset(o);
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", s.seconds);
  std::cout << "synthetic dataset in " << o.out_dir << " (seed " << o.seed << ", " << secs
            << " s)\n"
            << "  images: " << s.train_images << " train, " << s.eval_images
            << " eval (image folder " << o.out_dir << "/images)\n"
            << "  pretrain: " << s.pretrain_samples << " captions\n"
            << "  finetune: " << s.finetune_samples << " samples (" << s.finetune_text_only
            << " text-only, " << s.finetune_turns << " QA turns)\n"
            << "  textvqa: " << s.textvqa_questions << " questions\n"
            << "  mmbench: " << s.mmbench_questions << " questions, " << s.mmbench_rows
            << " rows with circular variants\n"
            << "  tokenizer: " << s.tokenizer_vocab << " pieces"
            << (s.tokenizer_note.empty() ? "" : " (" + s.tokenizer_note + ")") << "\n";
  for (const auto& f : s.files) std::cout << "  wrote " << f << "\n";
  return 0;
}

std::vector<cli::Command> synth_commands() {
  return {{"data", "synth",
           "generate the embedded default dataset (shapes, captions, QA, eval sets, tokenizer)",
           run_synth}};
}

}  // namespace mgm::data
