#include "eval/cli_eval.h"

#include "eval/runner.h"

#include <cstdio>
#include <string>

#include "common/error.h"
#include "common/strings.h"
#include "data/image.h"
#include "eval/mmbench_runner.h"
#include "eval/textvqa_runner.h"

namespace mgm::eval {
namespace {

// Flags shared by both runners, named as in model_vqa_loader.py / model_vqa_mmbench.py.
void common_flags(cli::ArgParser& p, const std::string& max_new_tokens) {
  p.flag("model-path", cli::Kind::kString, "", "MGM checkpoint folder (config.json + weights)",
         true);
  p.flag("model-base", cli::Kind::kString, "",
         "base model folder when --model-path is a LoRA adapter folder (merged in memory)");
  p.flag("question-file", cli::Kind::kString, "", "benchmark question file", true);
  p.flag("answers-file", cli::Kind::kString, "",
         "answers JSONL, appended per batch; a rerun resumes it (settings recorded in "
         "<answers-file>.settings.json)",
         true);
  p.flag("conv-mode", cli::Kind::kString, "gemma", "conversation template");
  p.flag("temperature", cli::Kind::kFloat, "0", "0: greedy; > 0: sampling");
  p.flag("top_p", cli::Kind::kFloat, "1.0", "nucleus filter when sampling");
  p.flag("top_k", cli::Kind::kInt, "50",
         "top-k filter when sampling (50 as transformers' generate default; 0: off)");
  p.flag("num_beams", cli::Kind::kInt, "1", "only 1 (the reference's setting) is supported");
  p.flag("seed", cli::Kind::kInt, "0",
         "sampling seed (each question draws from its own generator, seeded by this and the "
         "question, so answers do not depend on --batch_size or on resuming)");
  p.flag("max_new_tokens", cli::Kind::kInt, max_new_tokens, "tokens generated at most");
  p.flag("num-chunks", cli::Kind::kInt, "1", "split the questions into this many chunks");
  p.flag("chunk-idx", cli::Kind::kInt, "0", "the chunk this process answers");
  p.flag("batch_size", cli::Kind::kInt, "8",
         "questions decoded together (greedy answers do not depend on it)");
  p.flag("device", cli::Kind::kString, "cpu", "cpu, cuda or cuda:N");
  p.flag("dtype", cli::Kind::kString, "fp32", "fp32, bf16 or fp16");
  p.flag("tokenizer", cli::Kind::kString, "",
         "tokenizer.model or its folder (default: model path)");
  p.flag("image_aspect_ratio", cli::Kind::kString, "",
         "pad or square (default: the model config's)");
  p.flag("on_bad_sample", cli::Kind::kString, "error",
         "a malformed question or unreadable image: error (stop) or skip (report and go on)");
  p.flag("overwrite", cli::Kind::kBool, "false", "discard an existing answers file");
  p.flag("max_image_pixels", cli::Kind::kInt, std::to_string(data::kPilMaxImagePixels), data::kMaxImagePixelsHelp);
  p.flag("max_questions", cli::Kind::kInt, "-1",
         "stop after answering this many new questions (-1: all; for smoke tests)");
  p.flag("test_kill_after_batches", cli::Kind::kInt, "-1",
         "testing only: SIGKILL itself halfway through writing batch N+1 (resume tests)");
}

void fill_common(const cli::ArgParser& p, EvalModelOptions* m, RunOptions* r, int64_t* chunks,
                 int64_t* idx) {
  m->model_path = p.str("model-path");
  m->model_base = p.str("model-base");
  m->tokenizer_path = p.str("tokenizer");
  m->device = p.str("device");
  m->dtype = p.str("dtype");
  m->conv_mode = p.str("conv-mode");
  m->image_aspect_ratio = p.str("image_aspect_ratio");
  if (p.integer("num_beams") != 1)
    throw UsageError(str_cat("--num_beams: only 1 is supported, got ", p.integer("num_beams")));
  r->answers_file = p.str("answers-file");
  r->generation.temperature = p.number("temperature");
  r->generation.top_p = p.number("top_p");
  r->generation.top_k = p.integer("top_k");
  r->generation.max_new_tokens = p.integer("max_new_tokens");
  r->generation.seed = static_cast<uint64_t>(p.integer("seed"));
  if (r->generation.temperature <= 0) {  // greedy: the filters play no part, keep them out of
    r->generation.top_p = 1.0;           // the recorded settings
    r->generation.top_k = 0;
    r->generation.seed = 0;
  }
  r->batch_size = p.integer("batch_size");
  r->on_bad_sample = parse_bad_sample_policy(p.str("on_bad_sample"));
  r->overwrite = p.boolean("overwrite");
  data::set_max_image_pixels(p.integer("max_image_pixels"));
  r->max_new_answers = p.integer("max_questions");
  r->test_kill_after_batches = p.integer("test_kill_after_batches");
  *chunks = p.integer("num-chunks");
  *idx = p.integer("chunk-idx");
}

void print_stats(const std::string& path, const RunStats& s) {
  std::printf("%s: %zu questions, %zu answered now, %zu already answered, %zu skipped\n",
              path.c_str(), s.questions, s.answered, s.already_answered, s.skipped);
}

int run_textvqa_cmd(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm eval textvqa",
                   "Answers a TextVQA question file (llava_textvqa_val_v051_ocr.jsonl) as MGM's "
                   "model_vqa_loader.py: \"<image>\\n\" + text in the template, images padded "
                   "and preprocessed as in training, greedy decoding to <eos>. Writes one line "
                   "per question (question_id, prompt, text, answer_id, model_id, metadata).");
  common_flags(p, "128");
  p.flag("image-folder", cli::Kind::kString, "", "folder the question file's images are in");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  TextVqaOptions o;
  fill_common(p, &o.model, &o.run, &o.num_chunks, &o.chunk_idx);
  o.question_file = p.str("question-file");
  o.image_folder = p.str("image-folder");
  print_stats(o.run.answers_file, run_textvqa(o));
  return 0;
}

int run_mmbench_cmd(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm eval mmbench",
                   "Answers an MMBench TSV as model_vqa_mmbench.py: hint, question and lettered "
                   "options, optionally the single-prediction suffix, one round (or every "
                   "circular round with --all-rounds). Writes question_id, round_id, prompt, "
                   "text, options, option_char, answer_id, model_id, metadata per line.");
  common_flags(p, "1024");
  p.flag("single-pred-prompt", cli::Kind::kBool, "false",
         "append \"Answer with the option's letter from the given choices directly.\"");
  p.flag("all-rounds", cli::Kind::kBool, "false", "ask every rotation of the options");
  p.flag("lang", cli::Kind::kString, "en", "en or cn (the suffix language)");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  MmbenchOptions o;
  fill_common(p, &o.model, &o.run, &o.num_chunks, &o.chunk_idx);
  o.question_file = p.str("question-file");
  o.prompt.single_pred_prompt = p.boolean("single-pred-prompt");
  o.prompt.all_rounds = p.boolean("all-rounds");
  o.prompt.lang = p.str("lang");
  if (o.prompt.lang != "en" && o.prompt.lang != "cn")
    throw UsageError(str_cat("--lang: expected en or cn, got '", o.prompt.lang, "'"));
  print_stats(o.run.answers_file, run_mmbench(o));
  return 0;
}

int run_merge_cmd(const std::vector<std::string>& args) {
  // --inputs takes several space-separated files (as the shell's chunk list); collect them
  // before the generic parser sees the rest.
  std::vector<std::string> inputs, rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--inputs") {
      while (i + 1 < args.size() && !starts_with(args[i + 1], "--")) inputs.push_back(args[++i]);
    } else if (starts_with(a, "--inputs=")) {
      for (const auto& s : split(a.substr(9), ',')) inputs.push_back(s);
    } else {
      rest.push_back(a);
    }
  }
  cli::ArgParser p("mgm eval merge",
                   "Concatenates chunk answer files in the given order (as the reference's cat "
                   "of chunk files), checking every line, and refusing a file given twice and "
                   "chunks whose settings records differ or repeat a chunk.");
  p.flag("inputs", cli::Kind::kString, "", "the chunk answer files, in chunk order");
  p.flag("output", cli::Kind::kString, "", "merged answers file (written atomically)", true);
  if (!p.parse(rest)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  if (inputs.empty()) throw UsageError("mgm eval merge: give --inputs FILE...");
  const MergeStats st = merge_answer_files(inputs, p.str("output"));
  std::printf("%s: %zu answers from %zu files\n", p.str("output").c_str(), st.lines, inputs.size());
  if (st.repeated > 0)
    std::fprintf(stderr,
                 "note: %zu answers repeat an earlier question (same id and prompt): as many as "
                 "the question file repeats them?\n",
                 st.repeated);
  if (!st.missing_chunks.empty())
    std::fprintf(stderr, "warning: chunks not given (the result is incomplete): %s\n",
                 join(st.missing_chunks, ", ").c_str());
  return 0;
}

}  // namespace

void add_model_flags(cli::ArgParser& p, bool required) {
  p.flag("model-path", cli::Kind::kString, "", "MGM checkpoint folder (config.json + weights)",
         required);
  p.flag("model-base", cli::Kind::kString, "",
         "base model folder when --model-path is a LoRA adapter folder (merged in memory)");
  p.flag("tokenizer", cli::Kind::kString, "",
         "tokenizer.model or its folder (default: model path)");
  p.flag("device", cli::Kind::kString, "cpu", "cpu, cuda or cuda:N");
  p.flag("dtype", cli::Kind::kString, "fp32", "fp32, bf16 or fp16 (float32, bfloat16, float16)");
  p.flag("conv-mode", cli::Kind::kString, "gemma", "conversation template (as mgm eval)");
  p.flag("image_aspect_ratio", cli::Kind::kString, "",
         "pad or square (default: the model config's)");
  p.flag("max_image_pixels", cli::Kind::kInt, std::to_string(data::kPilMaxImagePixels),
         data::kMaxImagePixelsHelp);
}

EvalModelOptions model_from_flags(const cli::ArgParser& p) {
  data::set_max_image_pixels(p.integer("max_image_pixels"));
  EvalModelOptions mo;
  mo.model_path = p.str("model-path");
  mo.model_base = p.str("model-base");
  mo.tokenizer_path = p.str("tokenizer");
  mo.device = p.str("device");
  const std::string d = p.str("dtype");
  mo.dtype = d == "float32" || d == "float" ? "fp32"
             : d == "bfloat16"              ? "bf16"
             : d == "float16" || d == "half" ? "fp16"
                                             : d;
  mo.conv_mode = p.str("conv-mode");
  mo.image_aspect_ratio = p.str("image_aspect_ratio");
  return mo;
}

std::vector<cli::Command> eval_commands() {
  return {
      {"eval", "textvqa", "answer a TextVQA question file (model_vqa_loader)", run_textvqa_cmd},
      {"eval", "mmbench", "answer an MMBench TSV (model_vqa_mmbench)", run_mmbench_cmd},
      {"eval", "merge", "concatenate chunk answer files in order", run_merge_cmd},
  };
}

}  // namespace mgm::eval
