#include "curate/cli_curate.h"

#include <cstdio>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "curate/curate.h"
#include "eval/cli_eval.h"
#include "data/image.h"

namespace mgm::curate {
namespace {

void model_flags(cli::ArgParser& p) {
  eval::add_model_flags(p);
  p.flag("on_bad_sample", cli::Kind::kString, "error",
         "an unreadable image: error (stop) or skip (report and go on)");
}

eval::EvalModel load(const cli::ArgParser& p) { return eval::load_eval_model(eval::model_from_flags(p)); }

bool skip_policy(const cli::ArgParser& p) {
  return eval::parse_bad_sample_policy(p.str("on_bad_sample")) == eval::BadSamplePolicy::kSkip;
}

int run_caption(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm caption",
                   "Recaptions every image of a Data-Juicer JSONL or LLaVA JSON dataset with a "
                   "trained MGM (the generation path of mgm eval and mgm serve) and writes the "
                   "same format: DJ samples as Data-Juicer's image_captioning_mapper writes them "
                   "('<__dj__image> caption <|__dj__eoc|>', other fields kept), LLaVA samples with "
                   "the caption as the answer. Resumable: a rerun continues where a killed run "
                   "stopped, every sample exactly once.");
  model_flags(p);
  p.flag("data_path", cli::Kind::kString, "", "input: DJ JSONL or LLaVA JSON", true);
  p.flag("image_folder", cli::Kind::kString, "", "folder relative image paths are under");
  p.flag("out", cli::Kind::kString, "", "output file (the input's format)", true);
  p.flag("prompt", cli::Kind::kString, "", "the caption instruction (default: LLaVA's one-sentence caption prompt)");
  p.flag("prompts", cli::Kind::kString, "", "a file of instructions, one per line; one is drawn per image (seeded)");
  p.flag("num-candidates", cli::Kind::kInt, "1", "captions generated per image (> 1 needs --temperature > 0)");
  p.flag("select", cli::Kind::kString, "best-score",
         "best-score: keep the candidate the model finds likeliest given the image; all: one sample per candidate");
  p.flag("keep-original", cli::Kind::kBool, "true", "keep the original sample before the new one (keep_original_sample)");
  p.flag("batch_size", cli::Kind::kInt, "8", "images captioned together");
  p.flag("temperature", cli::Kind::kFloat, "0", "0: greedy");
  p.flag("top_p", cli::Kind::kFloat, "1.0", "nucleus filter when sampling");
  p.flag("max_new_tokens", cli::Kind::kInt, "64", "caption tokens at most");
  p.flag("seed", cli::Kind::kInt, "0", "prompt draws and sampling");
  p.flag("overwrite", cli::Kind::kBool, "false", "start afresh (discard an output and its progress)");
  p.flag("test_kill_after_batches", cli::Kind::kInt, "-1",
         "testing only: SIGKILL itself halfway through recording batch N+1 (resume tests)");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  if (!p.str("prompt").empty() && !p.str("prompts").empty())
    throw UsageError("give --prompt or --prompts, not both");
  CaptionOptions o;
  o.data_path = p.str("data_path");
  o.image_folder = p.str("image_folder");
  o.out = p.str("out");
  if (!p.str("prompt").empty()) o.prompts = {p.str("prompt")};
  if (!p.str("prompts").empty()) {
    o.prompts.clear();
    for (const auto& l : split(read_file(p.str("prompts")), '\n'))
      if (!trim(l).empty()) o.prompts.push_back(trim(l));
    if (o.prompts.empty()) throw UsageError("--prompts: " + p.str("prompts") + " has no prompt");
  }
  o.num_candidates = p.integer("num-candidates");
  o.select = p.str("select");
  o.keep_original = p.boolean("keep-original");
  o.batch_size = p.integer("batch_size");
  o.temperature = p.number("temperature");
  o.top_p = p.number("top_p");
  o.max_new_tokens = p.integer("max_new_tokens");
  o.seed = static_cast<uint64_t>(p.integer("seed"));
  o.overwrite = p.boolean("overwrite");
  o.skip_bad_samples = skip_policy(p);
  o.test_kill_after_batches = p.integer("test_kill_after_batches");
  if (o.max_new_tokens < 1) throw UsageError("--max_new_tokens must be >= 1");
  eval::EvalModel m = load(p);
  const CaptionStats st = caption_dataset(m, o);
  std::printf("%s: %zu samples (%zu done earlier, %zu captioned now, %zu skipped), %zu records written\n",
              o.out.c_str(), st.samples, st.resumed, st.captioned, st.skipped, st.written);
  return 0;
}

int run_score(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm data score",
                   "Scores every sample with a trained MGM: the mean token log-likelihood of the "
                   "caption given the image and without it (their difference is the image's "
                   "contribution), caption words and tokens, image sizes and aspect ratios, a "
                   "perceptual hash (dHash), written as Data-Juicer stats (__dj__stats__), one "
                   "JSON line per sample.");
  model_flags(p);
  p.flag("data_path", cli::Kind::kString, "", "input: DJ JSONL or LLaVA JSON", true);
  p.flag("image_folder", cli::Kind::kString, "", "folder relative image paths are under");
  p.flag("out", cli::Kind::kString, "", "SCORES.jsonl", true);
  p.flag("prompt", cli::Kind::kString, "Provide a one-sentence caption for the provided image.",
         "the instruction the caption answers (templates with turns)");
  p.flag("overwrite", cli::Kind::kBool, "false", "replace an existing output");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  ScoreOptions o;
  o.data_path = p.str("data_path");
  o.image_folder = p.str("image_folder");
  o.out = p.str("out");
  o.prompt = p.str("prompt");
  o.overwrite = p.boolean("overwrite");
  o.skip_bad_samples = skip_policy(p);
  eval::EvalModel m = load(p);
  std::printf("%s: %zu samples scored\n", o.out.c_str(), score_dataset(m, o));
  return 0;
}

int run_filter(const std::vector<std::string>& args) {
  cli::ArgParser p("mgm data filter",
                   "Keeps and drops samples on the stats of mgm data score, in the input's "
                   "format, with OUT.report.json (counts per reason, examples) and a histogram "
                   "PNG per score with the thresholds drawn (OUT.hist_<stat>.png).");
  p.flag("data_path", cli::Kind::kString, "", "the dataset that was scored", true);
  p.flag("scores", cli::Kind::kString, "", "SCORES.jsonl from mgm data score", true);
  p.flag("out", cli::Kind::kString, "", "the kept samples", true);
  p.flag("min-image-gain", cli::Kind::kString, "", "drop samples whose caption gains less from the image");
  p.flag("keep-top-fraction", cli::Kind::kString, "", "then keep this fraction with the highest --rank-by");
  p.flag("rank-by", cli::Kind::kString, "mgm_image_gain",
         "the stat --keep-top-fraction ranks by: mgm_image_gain, mgm_image_gain_min, mgm_loglik or "
         "mgm_loglik_text_only");
  p.flag("min-words", cli::Kind::kString, "", "fewest caption words");
  p.flag("max-words", cli::Kind::kString, "", "most caption words");
  p.flag("min-side", cli::Kind::kString, "", "smallest image side in pixels");
  p.flag("max-aspect-ratio", cli::Kind::kString, "", "largest long/short side ratio");
  p.flag("dedup", cli::Kind::kString, "", "phash (near-identical images), text (identical captions) or both");
  p.flag("dedup-distance", cli::Kind::kInt, "0", "dHash bits two images may differ in and count as one");
  p.flag("overwrite", cli::Kind::kBool, "false", "replace an existing output");
  if (!p.parse(args)) {
    std::fputs(p.help().c_str(), stdout);
    return 0;
  }
  auto real = [&](const char* f) -> std::optional<double> {
    if (p.str(f).empty()) return std::nullopt;
    try {
      size_t used = 0;
      const double v = std::stod(p.str(f), &used);
      if (used != p.str(f).size()) throw std::invalid_argument(f);
      return v;
    } catch (const std::exception&) {
      throw UsageError(str_cat("--", f, ": expected a number, got '", p.str(f), "'"));
    }
  };
  auto whole = [&](const char* f) -> std::optional<int64_t> {
    const auto v = real(f);
    if (!v) return std::nullopt;
    if (*v != std::floor(*v)) throw UsageError(str_cat("--", f, ": expected a whole number"));
    return static_cast<int64_t>(*v);
  };
  FilterOptions o;
  o.data_path = p.str("data_path");
  o.scores = p.str("scores");
  o.out = p.str("out");
  o.min_image_gain = real("min-image-gain");
  o.keep_top_fraction = real("keep-top-fraction");
  o.min_words = whole("min-words");
  o.max_words = whole("max-words");
  o.min_side = whole("min-side");
  o.max_aspect_ratio = real("max-aspect-ratio");
  o.rank_by = p.str("rank-by");
  o.dedup = p.str("dedup");
  o.dedup_distance = static_cast<int>(p.integer("dedup-distance"));
  o.overwrite = p.boolean("overwrite");
  const FilterReport r = filter_dataset(o);
  std::printf("%s: kept %zu of %zu\n", o.out.c_str(), r.kept, r.input);
  for (const auto& [why, n] : r.dropped) std::printf("  dropped %-20s %zu\n", why.c_str(), n);
  std::printf("report: %s.report.json\n", o.out.c_str());
  return 0;
}

}  // namespace

std::vector<cli::Command> curate_commands() {
  return {
      {"caption", "", "recaption a dataset's images with a trained MGM (resumable)", run_caption},
      {"data", "score", "score captions by the model's likelihood with and without the image",
       run_score},
      {"data", "filter", "keep and drop samples on their scores, with a report and histograms",
       run_filter},
  };
}

}  // namespace mgm::curate
