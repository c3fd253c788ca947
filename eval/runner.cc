#include "eval/runner.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "data/collator.h"
#include "eval/scoring/mmbench.h"
#include "eval/scoring/py_text.h"
#include "models/engine.h"
#include "models/io/tensor_file.h"
#include "models/lora.h"

namespace mgm::eval {
namespace {

at::Device parse_eval_device(const std::string& s) {
  if (s == "cpu") return at::Device(at::kCPU);
  if (starts_with(s, "cuda")) {
    try {
      return at::Device(s);
    } catch (const std::exception&) {
    }
  }
  throw UsageError(str_cat("--device: expected cpu, cuda or cuda:N, got '", s, "'"));
}

void append_escaped(std::string& out, const std::string& s) {
  static const char* kHex = "0123456789abcdef";
  auto u = [&](uint32_t c) {
    out += "\\u";
    for (int sh = 12; sh >= 0; sh -= 4) out.push_back(kHex[(c >> sh) & 0xF]);
  };
  out.push_back('"');
  for (char32_t c : py::decode(s)) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c >= 0x20 && c <= 0x7e) {
          out.push_back(static_cast<char>(c));
        } else if (c > 0xFFFF) {  // a UTF-16 surrogate pair, as json.dumps writes it
          const uint32_t v = static_cast<uint32_t>(c) - 0x10000;
          u(0xD800 + (v >> 10));
          u(0xDC00 + (v & 0x3FF));
        } else {
          u(static_cast<uint32_t>(c));
        }
    }
  }
  out.push_back('"');
}

void dumps(std::string& out, const OrderedJson& v) {
  switch (v.type()) {
    case OrderedJson::value_t::object: {
      out.push_back('{');
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        append_escaped(out, it.key());
        out += ": ";
        dumps(out, it.value());
      }
      out.push_back('}');
      break;
    }
    case OrderedJson::value_t::array: {
      out.push_back('[');
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) out += ", ";
        dumps(out, v[i]);
      }
      out.push_back(']');
      break;
    }
    case OrderedJson::value_t::string:
      append_escaped(out, v.get<std::string>());
      break;
    case OrderedJson::value_t::boolean:
      out += v.get<bool>() ? "true" : "false";
      break;
    case OrderedJson::value_t::null:
      out += "null";
      break;
    case OrderedJson::value_t::number_float: {
      const double d = v.get<double>();
      if (std::isnan(d))
        out += "NaN";
      else if (std::isinf(d))
        out += d > 0 ? "Infinity" : "-Infinity";
      else
        out += python_float_repr(d);
      break;
    }
    default:
      out += v.dump();
      break;  // integers
  }
}

std::string key_of(const std::string& qid_dump, const std::string& round_dump,
                   const std::string& prompt) {
  return str_cat(qid_dump, '\x1f', round_dump, '\x1f', prompt);
}

template <class J>
std::string key_from(const J& j, const std::string& what) {
  MGM_CHECK(j.is_object() && j.contains("question_id"), what, ": no question_id");
  std::string prompt;
  if (j.contains("prompt") && j["prompt"].is_string())
    prompt = j["prompt"].template get<std::string>();
  const std::string round = j.contains("round_id") ? j["round_id"].dump() : std::string();
  return key_of(j["question_id"].dump(), round, prompt);
}

std::string describe(const Json& line) {
  std::string s =
      "question_id " + (line.contains("question_id") ? line["question_id"].dump() : "?");
  if (line.contains("round_id")) s += " round " + line["round_id"].dump();
  return s;
}

// Reads the whole file, or "" when it does not exist.
std::string read_if_exists(const std::string& path) {
  return path_exists(path) ? read_file(path) : std::string();
}

}  // namespace

EvalModel load_eval_model(const EvalModelOptions& o) {
  MGM_CHECK(!o.model_path.empty(), "--model-path is required");
  EvalModel m;
  models::MgmBuildOptions bo;
  bo.dtype = models::io::parse_float_dtype(o.dtype);
  bo.device = parse_eval_device(o.device);
  bo.init_weights = false;
  m.model = o.model_base.empty() ? models::load_mgm_checkpoint(o.model_path, bo)
                                 : models::load_mgm_with_adapter(o.model_path, o.model_base, bo);
  m.model->eval();
  m.tokenizer = data::Tokenizer::load(default_tokenizer(o));
  m.conv_template = data::parse_template(o.conv_mode);
  const auto& cfg = m.model->config();
  m.image_cfg.shortest_edge = m.image_cfg.crop = static_cast<int>(cfg.image_size_aux);
  m.aspect_name = o.image_aspect_ratio.empty() ? cfg.image_aspect_ratio : o.image_aspect_ratio;
  m.aspect = data::parse_aspect_mode(m.aspect_name);
  m.model_id = model_name_from_path(o.model_path);
  return m;
}

std::unique_ptr<models::Engine> make_batch_engine(const EvalModel& m, int64_t batch,
                                                  int64_t max_new_tokens,
                                                  std::vector<int64_t> stop_token_ids) {
  models::EngineOptions eo;
  eo.max_num_seqs = batch;
  eo.max_num_batched_tokens = std::max<int64_t>(batch, 4096);
  eo.max_queue_len = int64_t{1} << 30;
  eo.max_model_len = m.model->config().tokenizer_model_max_length + max_new_tokens;
  eo.truncate_prompts = true;
  const data::Tokenizer* tok = &m.tokenizer;
  return std::make_unique<models::Engine>(
      m.model, eo, [tok](const std::vector<int64_t>& ids) { return tok->decode(ids, true); },
      std::move(stop_token_ids));
}

std::string default_tokenizer(const EvalModelOptions& o) {
  if (!o.tokenizer_path.empty()) return o.tokenizer_path;
  if (o.model_base.empty() || path_exists(path_join(o.model_path, "tokenizer.model")))
    return o.model_path;
  return o.model_base;
}

std::string model_name_from_path(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const auto parts = split(p, '/');
  if (parts.empty()) return p;
  const std::string& last = parts.back();
  if (starts_with(last, "checkpoint-") && parts.size() >= 2)
    return parts[parts.size() - 2] + "_" + last;
  return last;
}

std::pair<size_t, size_t> chunk_range(size_t n_items, int64_t num_chunks, int64_t chunk_idx) {
  if (num_chunks < 1) throw UsageError(str_cat("--num-chunks must be >= 1, got ", num_chunks));
  if (chunk_idx < 0 || chunk_idx >= num_chunks)
    throw UsageError(str_cat("--chunk-idx must be in [0, ", num_chunks, "), got ", chunk_idx));
  const size_t k = static_cast<size_t>(num_chunks);
  const size_t size = (n_items + k - 1) / k;  // math.ceil(len / n)
  const size_t begin = std::min(n_items, size * static_cast<size_t>(chunk_idx));
  return {begin, std::min(n_items, begin + size)};
}

at::Tensor image_aux_tensor(const EvalModel& m, const data::RgbImage& img) {
  std::vector<float> chw =
      data::normalize_chw(data::preprocess_uint8(img, m.image_cfg, m.aspect), m.image_cfg);
  const int64_t s = m.image_cfg.crop;
  MGM_CHECK(static_cast<int64_t>(chw.size()) == 3 * s * s, "image preprocessing gave ", chw.size(),
            " values, expected 3x", s, "x", s);
  return at::from_blob(chw.data(), {3, s, s}, at::kFloat).clone();
}

std::string build_generation_prompt(const EvalModel& m, const std::string& question,
                                    bool has_image) {
  std::string qs = question;
  if (has_image) {
    qs = m.model->config().mm_use_im_start_end
             ? std::string("<im_start>") + data::kImageToken + "<im_end>\n" + qs
             : std::string(data::kImageToken) + "\n" + qs;
  }
  return data::render_generation_prompt(m.conv_template, qs);
}

std::string python_json_dumps(const OrderedJson& v) {
  std::string out;
  dumps(out, v);
  return out;
}

std::string short_uuid() {
  static const char kAlphabet[] = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  static std::mt19937_64 rng = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), static_cast<unsigned>(::getpid())};
    return std::mt19937_64(seq);
  }();
  // A version-4 UUID as a 128-bit number, written in base 57, most significant digit first,
  // padded to 22 digits (shortuuid's encode()).
  __extension__ unsigned __int128 n = (static_cast<unsigned __int128>(rng()) << 64) | rng();
  n &= ~(static_cast<unsigned __int128>(0xF) << 76);
  n |= static_cast<unsigned __int128>(0x4) << 76;  // version 4
  n &= ~(static_cast<unsigned __int128>(0x3) << 62);
  n |= static_cast<unsigned __int128>(0x2) << 62;  // RFC 4122 variant
  std::string s;
  while (n) {
    s.push_back(kAlphabet[static_cast<int>(n % 57)]);
    n /= 57;
  }
  while (s.size() < 22) s.push_back(kAlphabet[0]);
  return std::string(s.rbegin(), s.rend());
}

OrderedJson base_settings(const std::string& benchmark, const EvalModelOptions& mo,
                          const EvalModel& m, const models::GenerationConfig& g,
                          const std::string& question_file, int64_t num_chunks, int64_t chunk_idx) {
  OrderedJson s = OrderedJson::object();
  s["benchmark"] = benchmark;
  s["model_path"] = mo.model_path;
  if (!mo.model_base.empty()) s["model_base"] = mo.model_base;
  s["model_id"] = m.model_id;
  s["tokenizer"] = default_tokenizer(mo);
  s["conv_mode"] = mo.conv_mode;
  s["image_aspect_ratio"] = m.aspect_name;
  s["dtype"] = mo.dtype;
  s["temperature"] = g.temperature;
  s["top_p"] = g.top_p;
  s["top_k"] = g.top_k;
  s["max_new_tokens"] = g.max_new_tokens;
  s["seed"] = g.seed;
  s["question_file"] = question_file;
  s["num_chunks"] = num_chunks;
  s["chunk_idx"] = chunk_idx;
  return s;
}

std::string answer_key(const Json& line) { return key_from(line, "answer line"); }
std::string answer_key(const OrderedJson& head) { return key_from(head, "question"); }

BadSamplePolicy parse_bad_sample_policy(const std::string& s) {
  if (s == "error") return BadSamplePolicy::kError;
  if (s == "skip") return BadSamplePolicy::kSkip;
  throw UsageError(str_cat("--on_bad_sample: expected error or skip, got '", s, "'"));
}

ExistingAnswers read_answers(const std::string& path) {
  ExistingAnswers ex;
  const std::string text = read_if_exists(path);
  const size_t last_nl = text.rfind('\n');
  const size_t complete = last_nl == std::string::npos ? 0 : last_nl + 1;
  ex.complete_bytes = complete;
  size_t line_no = 0, pos = 0;
  while (pos < complete) {
    const size_t nl = text.find('\n', pos);
    ++line_no;
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    const std::string what = str_cat(path, " line ", line_no);
    MGM_CHECK_FORMAT(!trim(line).empty(), path, "line ", line_no, ": empty line");
    Json j = parse_json(line, what);
    MGM_CHECK_FORMAT(j.is_object() && j.contains("question_id"), path, "line ", line_no,
                     ": not an answer object with a question_id");
    ex.lines.push_back(std::move(j));
  }
  if (complete < text.size()) {
    // A run killed mid-write leaves a partial last line, dropped (and regenerated); a whole
    // answer that only lacks its newline (an edited file) is kept.
    const std::string tail = text.substr(complete);
    Json j;
    try {
      j = Json::parse(tail);
    } catch (const std::exception&) {
    }
    if (j.is_object() && j.contains("question_id")) {
      ex.lines.push_back(std::move(j));
      ex.needs_newline = true;
    } else {
      ex.torn_bytes = tail.size();
    }
  }
  return ex;
}

void repair_answers(const std::string& path, const ExistingAnswers& ex) {
  if (ex.torn_bytes > 0)
    MGM_CHECK(::truncate(path.c_str(), static_cast<off_t>(ex.complete_bytes)) == 0, path,
              ": cannot truncate the partial last line: ", std::strerror(errno));
  if (ex.needs_newline) {
    std::FILE* f = std::fopen(path.c_str(), "ab");
    MGM_CHECK(f != nullptr && std::fputc('\n', f) == '\n' && std::fclose(f) == 0, path,
              ": cannot end the last line: ", std::strerror(errno));
  }
}

std::unique_ptr<FileLock> lock_answers_file(const std::string& answers_file) {
  MGM_CHECK(!answers_file.empty(), "--answers-file is required");
  const std::string parent = parent_dir(answers_file);
  if (!parent.empty()) make_dirs(parent);
  return FileLock::acquire(resolved_path(answers_file) + ".lock", "--answers-file " + answers_file);
}

RunStats run_eval(EvalModel& m, const std::vector<EvalItem>& items, const RunOptions& opts) {
  MGM_CHECK(!opts.answers_file.empty(), "--answers-file is required");
  if (opts.batch_size < 1)
    throw UsageError(str_cat("--batch_size must be >= 1, got ", opts.batch_size));
  const std::string& path = opts.answers_file;
  const std::string sidecar = path + ".settings.json";
  // One writer per answers file for the whole run: a second process on it is refused, naming
  // the holder, before it reads or changes anything (the runners take it before loading the
  // model; lock_answers_file also makes the folder).
  const auto lock = opts.lock_held ? nullptr : lock_answers_file(path);
  if (opts.overwrite) {
    std::remove(path.c_str());
    std::remove(sidecar.c_str());
  }

  RunStats st;
  st.questions = items.size();
  ExistingAnswers ex = read_answers(path);
  st.torn_bytes_dropped = ex.torn_bytes;
  const Json now = Json::parse(opts.settings.dump());
  if (path_exists(sidecar)) {
    const Json rec = read_json_file(sidecar);
    std::vector<std::string> diffs;
    std::set<std::string> keys;
    for (auto it = rec.begin(); it != rec.end(); ++it) keys.insert(it.key());
    for (auto it = now.begin(); it != now.end(); ++it) keys.insert(it.key());
    for (const auto& k : keys) {
      const Json a = rec.contains(k) ? rec[k] : Json(), b = now.contains(k) ? now[k] : Json();
      if (a != b) diffs.push_back(str_cat(k, ": recorded ", a.dump(), ", now ", b.dump()));
    }
    if (!diffs.empty())
      throw UsageError(str_cat(path, " was produced with other settings (", sidecar,
                               "): ", join(diffs, "; "),
                               ". Rerun with the recorded settings, pass --overwrite, or choose "
                               "another --answers-file"));
  } else {
    if (!ex.lines.empty())
      throw UsageError(str_cat(path, " holds ", ex.lines.size(),
                               " answers but no settings record (", sidecar,
                               "), so they cannot be resumed safely; pass --overwrite "
                               "or choose another --answers-file"));
    write_file_atomic(sidecar, opts.settings.dump(2) + "\n");
  }

  // Resume: every recorded answer must belong to this question list; each answers one question
  // with the same id and prompt (ids repeat in TextVQA, where several questions share an image).
  std::map<std::string, std::vector<size_t>> answered;  // key -> answer file lines
  for (size_t i = 0; i < ex.lines.size(); ++i) answered[answer_key(ex.lines[i])].push_back(i + 1);
  std::vector<const EvalItem*> pending;
  for (const auto& it : items) {
    if (it.problem.empty()) {
      auto f = answered.find(answer_key(it.head));
      if (f != answered.end() && !f->second.empty()) {
        f->second.erase(f->second.begin());
        ++st.already_answered;
        continue;
      }
    }
    pending.push_back(&it);
  }
  for (const auto& [key, lines] : answered)
    if (!lines.empty())
      throw UsageError(str_cat(path, " line ", lines[0], ": ", describe(ex.lines[lines[0] - 1]),
                               " with this prompt is not among the questions of this run "
                               "(another question file or chunk?)"));
  repair_answers(path, ex);  // only now that the file is known to be this run's
  if (!opts.quiet && (st.already_answered > 0 || ex.torn_bytes > 0))
    std::fprintf(stderr, "%s: resuming: %zu answered, %zu to go%s\n", path.c_str(),
                 st.already_answered, pending.size(),
                 ex.torn_bytes ? " (dropped a partial last line)" : "");

  std::FILE* f = std::fopen(path.c_str(), "ab");
  MGM_CHECK(f != nullptr, path, ": cannot open for appending: ", std::strerror(errno));
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};

  const auto& cfg = m.model->config();
  const auto tower_w = m.model->vision_tower->vision_model->pre_layrnorm->weight;
  models::GenerationConfig gen = opts.generation;
  if (gen.stop_token_ids.empty()) gen.stop_token_ids = {m.tokenizer.eos_id()};

  std::unique_ptr<models::Engine> engine;
  if (gen.max_new_tokens > 0)
    engine = make_batch_engine(m, opts.batch_size, gen.max_new_tokens, gen.stop_token_ids);

  auto bad_sample = [&](const EvalItem& it, const std::string& why) {
    const std::string id =
        it.head.contains("question_id") ? it.head["question_id"].dump() : std::string("?");
    const std::string msg = str_cat(it.where, ": question_id ", id, ": ", why);
    if (opts.on_bad_sample == BadSamplePolicy::kError)
      throw Error(msg + " (--on_bad_sample skip to continue without it)");
    std::fprintf(stderr, "skipping %s\n", msg.c_str());
    ++st.skipped;
  };

  size_t next = 0;
  int64_t batches = 0;
  while (next < pending.size()) {
    if (opts.max_new_answers >= 0 && st.answered >= static_cast<size_t>(opts.max_new_answers))
      break;
    size_t want = static_cast<size_t>(opts.batch_size);
    if (opts.max_new_answers >= 0)
      want = std::min(want, static_cast<size_t>(opts.max_new_answers) - st.answered);
    std::vector<const EvalItem*> batch;
    std::vector<std::vector<int64_t>> prompts;
    std::vector<at::Tensor> auxes;
    std::vector<bool> has_image;
    while (next < pending.size() && batch.size() < want) {
      const EvalItem& it = *pending[next++];
      if (!it.problem.empty()) {
        bad_sample(it, it.problem);
        continue;
      }
      at::Tensor aux;
      if (it.load_image) {
        try {
          aux = image_aux_tensor(m, it.load_image());
        } catch (const std::exception& e) {
          bad_sample(it, e.what());
          continue;
        }
      }
      const std::string prompt = build_generation_prompt(m, it.question, aux.defined());
      prompts.push_back(aux.defined() ? m.tokenizer.encode_with_image(prompt)
                                      : m.tokenizer.encode(prompt));
      has_image.push_back(aux.defined());
      auxes.push_back(
          aux.defined() ? aux : at::zeros({3, cfg.image_size_aux, cfg.image_size_aux}, at::kFloat));
      batch.push_back(&it);
    }
    if (batch.empty()) continue;
    at::Tensor images, images_aux;
    if (std::find(has_image.begin(), has_image.end(), true) != has_image.end()) {
      const at::Tensor aux_cpu = at::stack(auxes, 0);
      // The LR image is the bilinear downsample of the normalised aux image, as in training.
      images = data::downsample_bilinear(aux_cpu, cfg.clip.image_size)
                   .to(tower_w.device(), tower_w.scalar_type());
      images_aux = aux_cpu.to(tower_w.device(), tower_w.scalar_type());
    }
    // Sampling: each question draws from its own generator, seeded by --seed and the question
    // (FNV-1a of its key), so an answer does not depend on the batch size or where a resumed
    // run starts.
    gen.row_seeds.clear();
    if (gen.temperature > 0)
      for (const EvalItem* it : batch) {
        uint64_t h = 1469598103934665603ull;
        for (unsigned char c : answer_key(it->head)) h = (h ^ c) * 1099511628211ull;
        gen.row_seeds.push_back(h ^ (opts.generation.seed * 0x9E3779B97F4A7C15ull));
      }
    // The serving engine (continuous batching, each row in its own KV slot) is the one
    // generation path; each question is one request with its own image and seed.
    std::vector<models::EngineRequest> requests;
    for (size_t i = 0; i < prompts.size(); ++i) {
      models::EngineRequest r;
      r.prompt = prompts[i];
      if (has_image[i]) {
        r.images = images.narrow(0, static_cast<int64_t>(i), 1);
        r.images_aux = images_aux.narrow(0, static_cast<int64_t>(i), 1);
      }
      r.sampling.max_tokens = gen.max_new_tokens;
      r.sampling.temperature = gen.temperature;
      r.sampling.top_p = gen.top_p;
      r.sampling.top_k = gen.top_k;
      r.sampling.stop = gen.stop_strings;
      r.sampling.has_seed = true;
      r.sampling.seed = gen.row_seeds.empty() ? 0 : gen.row_seeds[i];
      requests.push_back(std::move(r));
    }
    const auto outputs = gen.max_new_tokens > 0
                             ? engine->generate_all(std::move(requests))
                             : std::vector<std::vector<int64_t>>(prompts.size());
    std::string block;
    for (size_t i = 0; i < batch.size(); ++i) {
      std::string text = m.tokenizer.decode(outputs[i], /*skip_special=*/true);
      if (!gen.stop_strings.empty()) text = models::trim_at_stop_string(text, gen.stop_strings);
      text = py::encode(py::strip(py::decode(text)));
      OrderedJson line = batch[i]->head;
      line["text"] = text;
      for (auto t = batch[i]->tail.begin(); t != batch[i]->tail.end(); ++t)
        line[t.key()] = t.value();
      line["answer_id"] = short_uuid();
      line["model_id"] = m.model_id;
      line["metadata"] = OrderedJson::object();
      block += python_json_dumps(line) + "\n";
    }
    if (opts.test_kill_after_batches >= 0 && batches == opts.test_kill_after_batches) {
      if (std::fwrite(block.data(), 1, block.find('\n') / 2, f) > 0) std::fflush(f);
      std::raise(SIGKILL);
    }
    ++batches;
    // One write per batch, flushed and synced: a kill loses at most the batch in flight.
    MGM_CHECK(std::fwrite(block.data(), 1, block.size(), f) == block.size() &&
                  std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0,
              path, ": write failed: ", std::strerror(errno));
    st.answered += batch.size();
    if (!opts.quiet)
      std::fprintf(stderr, "%s: %zu/%zu answered\n", path.c_str(),
                   st.already_answered + st.answered, st.questions);
  }
  return st;
}

MergeStats merge_answer_files(const std::vector<std::string>& inputs, const std::string& output) {
  if (inputs.empty()) throw UsageError("mgm eval merge: give --inputs");
  // The output is written by nobody else meanwhile, and no input is still being written (a run
  // holding its lock): the same locks `mgm eval` takes.
  const auto out_lock = lock_answers_file(output);
  for (const auto& in : inputs)
    if (path_exists(in) && resolved_path(in) != resolved_path(output))
      (void)lock_answers_file(in);  // refused, naming the writer, while a run holds it
  MergeStats st;
  std::map<std::string, std::string> files;  // canonical path -> as given
  std::map<int64_t, std::string> chunks;     // chunk_idx -> file, from the settings records
  Json common;                               // the records' settings but chunk_idx
  std::string common_from;
  int64_t num_chunks = 0;
  for (const auto& in : inputs) {
    MGM_CHECK(path_exists(in), in, ": no such answers file");
    const std::string canon = resolved_path(in);
    if (auto [f, inserted] = files.emplace(canon, in); !inserted)
      throw UsageError(str_cat("mgm eval merge: ", in, " is given twice (also as ", f->second, ")"));
    const std::string sidecar = in + ".settings.json";
    if (!path_exists(sidecar)) continue;
    Json rec = read_json_file(sidecar);
    const int64_t k = rec.value("chunk_idx", int64_t{0});
    num_chunks = rec.value("num_chunks", int64_t{1});
    rec.erase("chunk_idx");
    if (common.is_null()) {
      common = rec;
      common_from = sidecar;
    } else if (rec != common) {
      std::vector<std::string> diffs;
      for (auto it = rec.begin(); it != rec.end(); ++it)
        if (!common.contains(it.key()) || common[it.key()] != it.value())
          diffs.push_back(str_cat(it.key(), " ", it.value().dump(), " vs ",
                                  common.contains(it.key()) ? common[it.key()].dump() : "(none)"));
      for (auto it = common.begin(); it != common.end(); ++it)
        if (!rec.contains(it.key())) diffs.push_back(str_cat(it.key(), " (none) vs ", it.value().dump()));
      throw UsageError(str_cat("mgm eval merge: ", sidecar, " and ", common_from,
                               " record different runs: ", join(diffs, "; ")));
    }
    if (auto [c, inserted] = chunks.emplace(k, in); !inserted)
      throw UsageError(str_cat("mgm eval merge: chunk ", k, " is given twice (", c->second,
                               " and ", in, ")"));
  }
  if (!chunks.empty())
    for (int64_t k = 0; k < num_chunks; ++k)
      if (!chunks.count(k)) st.missing_chunks.push_back(str_cat(k, " of ", num_chunks));

  std::set<std::string> seen;
  std::string out;
  for (const auto& in : inputs) {
    const std::string text = read_file(in);
    size_t pos = 0, line_no = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      ++line_no;
      const std::string line = text.substr(pos, nl - pos);
      pos = nl + 1;
      const std::string where = str_cat(in, " line ", line_no);
      MGM_CHECK_FORMAT(!trim(line).empty(), in, "line ", line_no, ": empty line");
      const Json j = parse_json(line, where);
      MGM_CHECK_FORMAT(j.is_object() && j.contains("question_id"), in, "line ", line_no,
                       ": not an answer object with a question_id");
      if (!seen.insert(answer_key(j)).second) ++st.repeated;
      out += line;
      out += '\n';
      ++st.lines;
    }
  }
  write_file_atomic(output, out);
  return st;
}

}  // namespace mgm::eval
