#include "curate/curate.h"

#include <ATen/TensorIndexing.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <c10/core/InferenceMode.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "data/collator.h"
#include "data/conversation.h"
#include "data/convert.h"
#include "data/image.h"
#include "data/py_compat.h"
#include "data/py_random.h"
#include "data/records.h"
#include "eval/scoring/py_text.h"
#include "models/engine.h"

namespace mgm::curate {
namespace {

const std::vector<std::string>& dj_special_tokens() {
  // data_juicer/utils/mm_utils.py SpecialTokens: image, audio, video, eoc.
  static const std::vector<std::string> t = {data::kDjImageToken, "<__dj__audio>", "<__dj__video>",
                                             data::kDjEocToken};
  return t;
}

size_t count_of(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + what.size())) ++n;
  return n;
}

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// The answer text of a generation, as mgm eval writes it: special tokens skipped, stripped.
std::string answer_text(const eval::EvalModel& m, const std::vector<int64_t>& ids) {
  return data::py_strip(m.tokenizer.decode(ids, /*skip_special=*/true));
}

}  // namespace

std::string resolve_image(const std::string& image_folder, const std::string& image) {
  if (image_folder.empty() || (!image.empty() && image[0] == '/')) return image;
  return path_join(image_folder, image);
}

std::string dj_only_special_tokens(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    bool hit = false;
    for (const auto& t : dj_special_tokens())
      if (text.compare(i, t.size(), t) == 0) {
        out += t;
        i += t.size();
        hit = true;
        break;
      }
    if (!hit) ++i;
  }
  return out;
}

std::string dj_remove_special_tokens(const std::string& text) {
  std::string s = text;
  for (const auto& t : dj_special_tokens()) {
    std::string r;
    size_t from = 0;
    for (size_t at; (at = s.find(t, from)) != std::string::npos; from = at + t.size())
      r.append(s, from, at - from);
    r.append(s, from, std::string::npos);
    s = data::py_strip(r);  // remove_special_tokens strips after each token kind
  }
  return s;
}

std::string dj_captioned_text(const std::string& text, const std::vector<std::string>& captions) {
  const std::string image = data::kDjImageToken, eoc = data::kDjEocToken;
  std::string out;
  size_t offset = 0;
  for (const std::string& chunk : split(text, eoc)) {
    if (data::py_strip(chunk).empty()) continue;
    const size_t n = count_of(chunk, image);
    std::string modified = dj_only_special_tokens(chunk);
    for (size_t j = 0; j < n; ++j) {
      MGM_CHECK(offset + j < captions.size(), "dj_captioned_text: ", captions.size(),
                " captions for more image tokens");
      // insert_texts_after_placeholders finds the first placeholder every time.
      const size_t at = modified.find(image) + image.size();
      modified = modified.substr(0, at) + " " + captions[offset + j] + " " + modified.substr(at);
    }
    out += modified + eoc;
    offset += n;
  }
  return out;
}

CaptionDataset read_caption_dataset(const std::string& path) {
  const data::RecordFile rf = data::read_records(path);
  CaptionDataset d;
  d.path = path;
  d.format = rf.kind == data::FileKind::kJsonArray ? DataFormat::kLlava : DataFormat::kDj;
  for (const auto& r : rf.records) {
    CaptionSample s;
    s.record = r.value;
    s.index = r.index;
    s.where = data::record_where(r);
    const auto fail = [&](const std::string& why) {
      throw FormatError(path, str_cat(s.where, ": ", why));
    };
    if (!r.value.is_object()) fail("a sample must be a JSON object");
    if (d.format == DataFormat::kDj) {
      if (!r.value.contains("text") || !r.value["text"].is_string())
        fail("a Data-Juicer sample needs a string 'text'");
      s.caption = dj_remove_special_tokens(r.value["text"].get<std::string>());
      if (r.value.contains("images")) {
        if (!r.value["images"].is_array()) fail("'images' must be a list of paths");
        for (const auto& im : r.value["images"]) {
          if (!im.is_string()) fail("'images' must be a list of paths");
          s.images.push_back(im.get<std::string>());
        }
      }
      const size_t tokens = count_of(r.value["text"].get<std::string>(), data::kDjImageToken);
      if (tokens != s.images.size())
        fail(str_cat("the text has ", tokens, " ", data::kDjImageToken, " tokens but ",
                     s.images.size(), " images are listed"));
    } else {
      if (r.value.contains("image")) {
        if (!r.value["image"].is_string()) fail("'image' must be a path");
        s.images.push_back(r.value["image"].get<std::string>());
      }
      if (!r.value.contains("conversations") || !r.value["conversations"].is_array())
        fail("a LLaVA sample needs a 'conversations' list");
      for (const auto& t : r.value["conversations"])
        if (t.is_object() && t.value("from", "") == "gpt" && t.contains("value") &&
            t["value"].is_string()) {
          s.caption = t["value"].get<std::string>();
          break;
        }
    }
    d.samples.push_back(std::move(s));
  }
  return d;
}

OrderedJson captioned_record(const CaptionSample& s, DataFormat f,
                             const std::vector<std::string>& captions_per_image) {
  OrderedJson r = s.record;
  if (f == DataFormat::kDj) {
    r["text"] = dj_captioned_text(s.record["text"].get<std::string>(), captions_per_image);
    return r;
  }
  MGM_CHECK(!captions_per_image.empty(), "captioned_record: no caption");
  OrderedJson human = {{"from", "human"}, {"value", std::string(data::kImageToken) + "\n"}};
  for (const auto& t : s.record["conversations"])
    if (t.is_object() && t.value("from", "") == "human") {
      human = t;
      break;
    }
  r["conversations"] =
      OrderedJson::array({human, {{"from", "gpt"}, {"value", captions_per_image[0]}}});
  return r;
}

CaptionLikelihood caption_likelihood(eval::EvalModel& m, const std::string& prompt,
                                     const at::Tensor& aux, const std::string& caption) {
  c10::InferenceMode guard;
  const bool img = aux.defined();
  const auto& cfg = m.model->config();
  std::vector<int64_t> ids, labels;
  if (m.conv_template == data::Template::kPlain && !img) {
    // The plain (pretraining) template is "<image>caption\n": without the image, the caption
    // alone, every token after <bos> supervised.
    ids = m.tokenizer.encode(caption + "\n");
    labels = ids;
    labels[0] = models::kIgnoreIndex;
  } else {
    std::string human = prompt;
    if (img)
      human = (cfg.mm_use_im_start_end
                   ? std::string("<im_start>") + data::kImageToken + "<im_end>\n"
                   : std::string(data::kImageToken) + "\n") +
              prompt;
    if (m.conv_template == data::Template::kPlain) human = data::kImageToken;
    const data::TokenizedSample t = data::tokenize_conversation(
        m.tokenizer, m.conv_template, {{"human", human}, {"gpt", caption}}, img,
        cfg.tokenizer_model_max_length);
    if (!t.problem.empty()) throw Error("cannot score the caption: " + t.problem);
    ids = t.input_ids;
    labels = t.labels;
  }
  const auto dev = m.model->llm->model->embed_tokens->weight.device();
  at::Tensor features;
  if (img) {
    const at::Tensor w = m.model->vision_tower->vision_model->pre_layrnorm->weight;
    const at::Tensor a = aux.unsqueeze(0);
    features = m.model->encode_images(
        data::downsample_bilinear(a, cfg.clip.image_size).to(w.device(), w.scalar_type()),
        a.to(w.device(), w.scalar_type()));
  }
  const int64_t L = static_cast<int64_t>(ids.size());
  auto prepared = m.model->prepare_inputs(at::tensor(ids, at::kLong).view({1, L}),
                                          at::tensor(labels, at::kLong).view({1, L}),
                                          at::ones({1, L}, at::kBool), features);
  const at::Tensor lab = prepared.labels[0].to(at::kCPU);
  const int64_t n = lab.size(0);
  // Position t predicts label t + 1.
  const at::Tensor next = lab.slice(0, 1, n);
  const at::Tensor sel = (next != models::kIgnoreIndex).nonzero().squeeze(1);
  CaptionLikelihood out;
  out.tokens = sel.size(0);
  if (out.tokens == 0) return out;
  const at::Tensor hidden = m.model->llm->hidden_states(prepared.inputs_embeds.to(dev));
  const at::Tensor logits =
      m.model->llm->logits(hidden[0].index_select(0, sel.to(dev))).to(at::kFloat).to(at::kCPU);
  const at::Tensor lp = logits.log_softmax(-1).gather(1, next.index_select(0, sel).unsqueeze(1));
  out.mean_logprob = lp.mean().item<double>();
  const at::Tensor flat = lp.reshape({-1}).to(at::kDouble).contiguous();
  out.token_logprobs.assign(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
  return out;
}

uint64_t image_dhash(const data::RgbImage& img) {
  MGM_CHECK(img.width > 0 && img.height > 0, "image_dhash: empty image");
  // PIL's "L" conversion weights, then a box (area) average onto a 9x8 grid.
  const int W = 9, H = 8;
  double grid[H][W] = {};
  double area[H][W] = {};
  for (int y = 0; y < img.height; ++y) {
    const int gy = std::min(H - 1, y * H / img.height);
    for (int x = 0; x < img.width; ++x) {
      const int gx = std::min(W - 1, x * W / img.width);
      const uint8_t* p = &img.pixels[(static_cast<size_t>(y) * img.width + x) * 3];
      grid[gy][gx] += (p[0] * 299 + p[1] * 587 + p[2] * 114) / 1000.0;
      area[gy][gx] += 1;
    }
  }
  uint64_t h = 0;
  for (int y = 0; y < H; ++y)
    for (int x = 0; x + 1 < W; ++x) {
      const double a = area[y][x] > 0 ? grid[y][x] / area[y][x] : 0;
      const double b = area[y][x + 1] > 0 ? grid[y][x + 1] / area[y][x + 1] : 0;
      h = (h << 1) | (a > b ? 1u : 0u);
    }
  return h;
}

int hamming64(uint64_t a, uint64_t b) { return __builtin_popcountll(a ^ b); }

CaptionStats caption_dataset(eval::EvalModel& m, const CaptionOptions& o) {
  if (o.num_candidates < 1) throw UsageError("--num-candidates must be >= 1");
  if (o.select != "best-score" && o.select != "all")
    throw UsageError("--select: expected best-score or all, got '" + o.select + "'");
  if (o.num_candidates > 1 && o.temperature <= 0)
    throw UsageError("--num-candidates > 1 needs --temperature > 0 (greedy candidates are equal)");
  if (o.batch_size < 1) throw UsageError("--batch_size must be >= 1");
  if (o.prompts.empty()) throw UsageError("no caption prompt");
  const auto lock = FileLock::acquire(o.out + ".lock", "the caption output " + o.out);
  const CaptionDataset d = read_caption_dataset(o.data_path);
  const std::string partial = o.out + ".partial.jsonl";
  if (o.overwrite) {
    if (path_exists(partial)) remove_tree(partial);
  } else if (path_exists(o.out) && !path_exists(partial)) {
    throw UsageError(o.out + " exists (--overwrite to replace it)");
  }
  data::check_output_path(o.out, /*overwrite=*/true, {o.data_path});
  OrderedJson settings = {{"data_path", o.data_path},   {"image_folder", o.image_folder},
                          {"model_id", m.model_id},      {"image_aspect_ratio", m.aspect_name},
                          {"prompts", o.prompts},        {"num_candidates", o.num_candidates},
                          {"select", o.select},          {"keep_original", o.keep_original},
                          {"temperature", o.temperature}, {"top_p", o.top_p},
                          {"max_new_tokens", o.max_new_tokens}, {"seed", o.seed}};

  // Resume: what an earlier run recorded (a torn last line from a kill is dropped).
  std::set<size_t> done;  // samples recorded in the partial file
  // A progress line's sample index, checked (the file is ours, but may have been edited).
  auto index_of = [&](const OrderedJson& j) {
    if (!j.is_object() || !j.contains("index") || !j["index"].is_number_unsigned() ||
        j["index"].get<size_t>() >= d.samples.size() || !j.contains("records") ||
        !j["records"].is_array())
      throw FormatError(partial, "a damaged progress line; remove the file to start over");
    return j["index"].get<size_t>();
  };
  CaptionStats st;
  st.samples = d.samples.size();
  if (path_exists(partial)) {
    const std::string text = read_file(partial);
    const size_t complete = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
    const auto lines = split(text.substr(0, complete), '\n');
    bool first = true;
    for (const auto& l : lines) {
      if (l.empty()) continue;
      const OrderedJson j = OrderedJson::parse(l, nullptr, false);
      if (j.is_discarded()) throw FormatError(partial, "a damaged line; remove the file to start over");
      if (first) {
        if (!j.contains("settings") || j["settings"] != settings)
          throw UsageError(str_cat(partial, " was made with other settings (", j.value("settings", OrderedJson()).dump(),
                                   "); --overwrite to start over"));
        first = false;
        continue;
      }
      done.insert(index_of(j));
    }
    if (first) write_file_atomic(partial, OrderedJson{{"settings", settings}}.dump() + "\n");
    else if (complete != text.size()) ::truncate(partial.c_str(), static_cast<off_t>(complete));
    st.resumed = done.size();
  } else {
    make_dirs(parent_dir(partial));
    write_file_atomic(partial, OrderedJson{{"settings", settings}}.dump() + "\n");
  }

  // One prompt per sample, drawn in order from random.seed(seed) (the same draws on resume).
  data::PyRandom rng(static_cast<int64_t>(o.seed));
  std::vector<std::string> prompt_of(d.samples.size());
  for (size_t i = 0; i < d.samples.size(); ++i)
    prompt_of[i] = o.prompts.size() == 1 ? o.prompts[0] : o.prompts[rng.randbelow(o.prompts.size())];

  const auto engine =
      eval::make_batch_engine(m, o.batch_size, o.max_new_tokens, {m.tokenizer.eos_id()});
  std::FILE* f = std::fopen(partial.c_str(), "ab");
  MGM_CHECK(f != nullptr, partial, ": cannot append");
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  std::vector<size_t> pending;
  for (size_t i = 0; i < d.samples.size(); ++i)
    if (!done.count(i)) pending.push_back(i);
  int64_t batches = 0;
  for (size_t b = 0; b < pending.size(); b += static_cast<size_t>(o.batch_size)) {
    const size_t e = std::min(pending.size(), b + static_cast<size_t>(o.batch_size));
    struct Job {
      size_t sample;
      std::vector<size_t> image_of_occurrence;  // unique image index per image occurrence
      std::vector<at::Tensor> auxes;            // per unique image
      std::string problem;
    };
    std::vector<Job> jobs;
    std::vector<models::EngineRequest> requests;
    for (size_t k = b; k < e; ++k) {
      const CaptionSample& s = d.samples[pending[k]];
      Job job{pending[k], {}, {}, {}};
      std::map<std::string, size_t> unique;
      try {
        for (const auto& im : s.images) {
          auto it = unique.find(im);
          if (it == unique.end()) {
            it = unique.emplace(im, job.auxes.size()).first;
            job.auxes.push_back(eval::image_aux_tensor(
                m, data::decode_image_file(resolve_image(o.image_folder, im))));
          }
          job.image_of_occurrence.push_back(it->second);
        }
      } catch (const std::exception& ex) {
        job.problem = ex.what();
        if (!o.skip_bad_samples)
          throw Error(str_cat(o.data_path, ": ", s.where, ": ", ex.what(),
                              " (--on_bad_sample skip to continue without it)"));
        std::fprintf(stderr, "skipping %s: %s\n", s.where.c_str(), ex.what());
      }
      if (job.problem.empty()) {
        const std::string prompt = eval::build_generation_prompt(m, prompt_of[job.sample], true);
        const std::vector<int64_t> ids = m.tokenizer.encode_with_image(prompt);
        for (size_t u = 0; u < job.auxes.size(); ++u)
          for (int64_t c = 0; c < o.num_candidates; ++c) {
            models::EngineRequest r;
            r.prompt = ids;
            const at::Tensor aux = job.auxes[u].unsqueeze(0);
            r.images = data::downsample_bilinear(aux, m.model->config().clip.image_size);
            r.images_aux = aux;
            r.sampling.max_tokens = o.max_new_tokens;
            r.sampling.temperature = o.temperature;
            r.sampling.top_p = o.top_p;
            r.sampling.has_seed = true;
            r.sampling.seed = mix(mix(mix(o.seed, job.sample), u), static_cast<uint64_t>(c));
            requests.push_back(std::move(r));
          }
      }
      jobs.push_back(std::move(job));
    }
    const auto outputs = requests.empty() ? std::vector<std::vector<int64_t>>()
                                          : engine->generate_all(std::move(requests));
    std::string block;
    size_t next = 0;
    for (const Job& job : jobs) {
      const CaptionSample& s = d.samples[job.sample];
      OrderedJson line = {{"index", job.sample}, {"records", OrderedJson::array()}};
      if (o.keep_original) line["records"].push_back(s.record);
      if (!job.problem.empty()) {
        line["skipped"] = job.problem;
        ++st.skipped;
      } else if (!job.auxes.empty()) {
        // candidates[u][c]: candidate c for unique image u.
        std::vector<std::vector<std::string>> candidates(job.auxes.size());
        for (size_t u = 0; u < job.auxes.size(); ++u)
          for (int64_t c = 0; c < o.num_candidates; ++c)
            candidates[u].push_back(answer_text(m, outputs[next++]));
        std::vector<std::vector<std::string>> chosen;  // per generated sample, per unique image
        if (o.select == "all" && o.num_candidates > 1) {
          for (int64_t c = 0; c < o.num_candidates; ++c) {
            chosen.emplace_back();
            for (size_t u = 0; u < job.auxes.size(); ++u) chosen.back().push_back(candidates[u][c]);
          }
        } else {
          chosen.emplace_back();
          for (size_t u = 0; u < job.auxes.size(); ++u) {
            size_t best = 0;
            if (o.num_candidates > 1) {
              double best_score = -INFINITY;
              for (size_t c = 0; c < candidates[u].size(); ++c) {
                const double sc = caption_likelihood(m, prompt_of[job.sample], job.auxes[u],
                                                     candidates[u][c])
                                      .mean_logprob;
                if (sc > best_score) {
                  best_score = sc;
                  best = c;
                }
              }
            }
            chosen.back().push_back(candidates[u][best]);
          }
        }
        for (const auto& per_unique : chosen) {
          std::vector<std::string> per_occurrence;
          for (size_t u : job.image_of_occurrence) per_occurrence.push_back(per_unique[u]);
          line["records"].push_back(captioned_record(s, d.format, per_occurrence));
        }
        ++st.captioned;
      }
      block += line.dump() + "\n";
    }
    if (o.test_kill_after_batches >= 0 && batches == o.test_kill_after_batches) {
      // Testing only: die as a kill would, halfway through recording this batch.
      if (std::fwrite(block.data(), 1, block.size() / 2, f) > 0) std::fflush(f);
      std::raise(SIGKILL);
    }
    MGM_CHECK(std::fwrite(block.data(), 1, block.size(), f) == block.size() &&
                  std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0,
              partial, ": write failed");
    for (const Job& job : jobs) done.insert(job.sample);
    ++batches;
    if (!o.quiet)
      std::fprintf(stderr, "%s: %zu/%zu samples captioned\n", o.out.c_str(),
                   done.size(), d.samples.size());
  }

  // Every sample is recorded: OUT in the input's format, in input order.
  std::vector<OrderedJson> records;
  {
    std::map<size_t, OrderedJson> lines;
    bool first = true;
    for (const auto& l : split(read_file(partial), '\n')) {
      if (l.empty()) continue;
      if (first) {
        first = false;
        continue;
      }
      const OrderedJson j = OrderedJson::parse(l);
      lines[index_of(j)] = j;
    }
    for (size_t i = 0; i < d.samples.size(); ++i) {
      MGM_CHECK(lines.count(i), partial, ": sample ", i, " is missing");
      for (const auto& r : lines[i]["records"]) records.push_back(r);
    }
  }
  data::write_output(o.out, d.format == DataFormat::kDj ? data::to_json_lines_text(records)
                                                        : data::to_json_array_text(records));
  st.written = records.size();
  remove_tree(partial);
  return st;
}

size_t score_dataset(eval::EvalModel& m, const ScoreOptions& o) {
  const CaptionDataset d = read_caption_dataset(o.data_path);
  data::check_output_path(o.out, o.overwrite, {o.data_path});
  std::vector<OrderedJson> scored;
  size_t n = 0;
  for (const auto& s : d.samples) {
    OrderedJson rec = s.record;
    OrderedJson stats = rec.contains("__dj__stats__") && rec["__dj__stats__"].is_object()
                            ? rec["__dj__stats__"]
                            : OrderedJson::object();
    try {
      OrderedJson widths = OrderedJson::array(), heights = OrderedJson::array(),
                  ratios = OrderedJson::array(), hashes = OrderedJson::array();
      at::Tensor first_aux;
      for (const auto& im : s.images) {
        const data::RgbImage img = data::decode_image_file(resolve_image(o.image_folder, im));
        widths.push_back(img.width);
        heights.push_back(img.height);
        ratios.push_back(static_cast<double>(std::max(img.width, img.height)) /
                         std::max(1, std::min(img.width, img.height)));
        hashes.push_back(hex64(image_dhash(img)));
        if (!first_aux.defined()) first_aux = eval::image_aux_tensor(m, img);
      }
      const CaptionLikelihood with = first_aux.defined()
                                         ? caption_likelihood(m, o.prompt, first_aux, s.caption)
                                         : CaptionLikelihood{NAN, 0, {}};
      const CaptionLikelihood without = caption_likelihood(m, o.prompt, at::Tensor(), s.caption);
      const auto words = eval::py::split(s.caption);  // str.split()
      stats["mgm_loglik"] = with.mean_logprob;
      stats["mgm_loglik_text_only"] = without.mean_logprob;
      stats["mgm_image_gain"] = with.mean_logprob - without.mean_logprob;
      // Per token: the caption's tokens are the same with and without the image (only the
      // prompt before them differs), so their gains pair up.
      if (with.token_logprobs.size() == without.token_logprobs.size() &&
          !with.token_logprobs.empty()) {
        double lo = INFINITY;
        for (size_t k = 0; k < with.token_logprobs.size(); ++k)
          lo = std::min(lo, with.token_logprobs[k] - without.token_logprobs[k]);
        stats["mgm_image_gain_min"] = lo;
      }
      stats["caption_tokens"] = with.tokens > 0 ? with.tokens : without.tokens;
      stats["num_words"] = words.size();
      stats["text_len"] = eval::py::decode(s.caption).size();  // len(str)
      stats["image_width"] = widths;
      stats["image_height"] = heights;
      stats["aspect_ratios"] = ratios;
      stats["image_dhash"] = hashes;
    } catch (const std::exception& e) {
      if (!o.skip_bad_samples)
        throw Error(str_cat(o.data_path, ": ", s.where, ": ", e.what(),
                            " (--on_bad_sample skip to continue without it)"));
      std::fprintf(stderr, "skipping %s: %s\n", s.where.c_str(), e.what());
      stats["mgm_error"] = e.what();
    }
    rec["__dj__stats__"] = stats;
    scored.push_back(std::move(rec));
    if (!o.quiet && ++n % 100 == 0)
      std::fprintf(stderr, "%s: %zu/%zu scored\n", o.out.c_str(), n, d.samples.size());
  }
  data::write_output(o.out, data::to_json_lines_text(scored));  // as Data-Juicer's exporter
  return d.samples.size();
}

}  // namespace mgm::curate
