// What the benchmark runners share: loading the model and tokenizer for evaluation, image
// preprocessing as in training, the reference's chunking (split_list / get_chunk), answer lines
// in the reference's exact JSON (json.dumps: field order, ", "/": " separators, ASCII escapes),
// and the answers file itself: appended and flushed per batch, resumed on rerun (answered
// questions are skipped, a torn last line from a kill is dropped) and tied to the settings it
// was produced with (a sidecar <answers>.settings.json; a rerun with other settings is refused).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/files.h"
#include "common/json.h"
#include "data/conversation.h"
#include "data/image.h"
#include "data/tokenizer.h"
#include "models/engine.h"
#include "models/generate.h"
#include "models/mgm.h"

namespace mgm::eval {

struct EvalModelOptions {
  std::string model_path;
  // With a base, model_path is a LoRA adapter folder (LLaVA's --model-base): the model is the
  // base plus the adapter merged in memory (models::load_mgm_with_adapter).
  std::string model_base;
  std::string tokenizer_path;  // default: model_path (the base when the adapter has none)
  std::string device = "cpu";  // cpu | cuda | cuda:N
  std::string dtype = "fp32";  // fp32 | bf16 | fp16
  std::string conv_mode = "gemma";
  std::string image_aspect_ratio;  // default: the model config's
};

struct EvalModel {
  models::MgmForCausalLM model{nullptr};
  data::Tokenizer tokenizer;
  data::Template conv_template = data::Template::kGemma;
  data::ImageProcessorConfig image_cfg;  // shortest edge / crop = image_size_aux
  data::AspectMode aspect = data::AspectMode::kPad;
  std::string aspect_name;
  std::string model_id;  // the reference's get_model_name_from_path
};

EvalModel load_eval_model(const EvalModelOptions& o);

// The generation engine a batch job runs on (mgm eval, mgm caption): `batch` sequences decoded
// together, any number of requests queued (the job submits whole batches), prompts cut to the
// model's tokenizer_model_max_length as the reference's prepare_inputs cuts them, room for
// max_new_tokens after them, text decoded with the model's tokenizer (special tokens skipped).
std::unique_ptr<models::Engine> make_batch_engine(const EvalModel& m, int64_t batch,
                                                  int64_t max_new_tokens,
                                                  std::vector<int64_t> stop_token_ids);
// The tokenizer a run uses: --tokenizer, else the model folder, else (an adapter folder without
// one) the base.
std::string default_tokenizer(const EvalModelOptions& o);

// get_model_name_from_path: the last path component, or "<parent>_<last>" for checkpoint-N.
std::string model_name_from_path(const std::string& path);

// get_chunk(split_list(items, n), k) as [begin, end) indices: chunk size ceil(N / n), contiguous.
// A chunk index past the last non-empty chunk (the reference raises IndexError) is empty.
std::pair<size_t, size_t> chunk_range(size_t n_items, int64_t num_chunks, int64_t chunk_idx);

// The normalised aux image [3,S,S] (pad / resize / crop / normalise as training); the LR image is
// derived from a batch of these by data::downsample_bilinear.
at::Tensor image_aux_tensor(const EvalModel& m, const data::RgbImage& img);

// The model prompt for a question (the image token first when there is an image; "<im_start>"
// wrapping when the config asks for it), rendered with the conversation template.
std::string build_generation_prompt(const EvalModel& m, const std::string& question,
                                    bool has_image);

// Python json.dumps(obj) (ensure_ascii, default separators) of an ordered JSON value.
std::string python_json_dumps(const OrderedJson& v);
// shortuuid.uuid(): 22 characters of its 57-letter alphabet from a random 128-bit number.
std::string short_uuid();

// One question to answer. `head` holds the answer line's fields before "text" (question_id, ...,
// prompt) and `tail` those between "text" and "answer_id" (MMBench's options / option_char).
struct EvalItem {
  OrderedJson head = OrderedJson::object();
  OrderedJson tail = OrderedJson::object();
  std::string question;  // the question text given to the template (no image token)
  std::function<data::RgbImage()> load_image;  // empty: text-only; may throw (a bad sample)
  std::string where;                           // "file line N" for messages
  std::string problem;                         // set when the question line itself is malformed
};

// Identity of an answer line for resume and merge: question_id, round_id (if any) and prompt.
std::string answer_key(const Json& line);
std::string answer_key(const OrderedJson& head);

enum class BadSamplePolicy { kError, kSkip };
BadSamplePolicy parse_bad_sample_policy(const std::string& s);  // "error" | "skip"

struct RunOptions {
  std::string answers_file;
  OrderedJson settings = OrderedJson::object();  // recorded in the sidecar and compared on rerun
  models::GenerationConfig generation;
  int64_t batch_size = 8;
  BadSamplePolicy on_bad_sample = BadSamplePolicy::kError;
  int64_t max_new_answers = -1;  // stop after this many new answers (a test hook); -1: all
  bool overwrite = false;        // start the answers file afresh
  bool lock_held = false;        // the caller holds lock_answers_file(answers_file)
  bool quiet = false;
  // Testing only: after this many batches, write half of the next batch's first line and SIGKILL
  // the process (a kill at the worst moment, for resume tests); -1: off.
  int64_t test_kill_after_batches = -1;
};

struct RunStats {
  size_t questions = 0, already_answered = 0, answered = 0, skipped = 0;
  size_t torn_bytes_dropped = 0;
};

// The settings every benchmark records: what decides the answers (model, tokenizer, template,
// image handling, dtype, decoding, question file and chunk). Batch size and device do not.
OrderedJson base_settings(const std::string& benchmark, const EvalModelOptions& mo,
                          const EvalModel& m, const models::GenerationConfig& g,
                          const std::string& question_file, int64_t num_chunks, int64_t chunk_idx);

// Answers `items` (in order) into opts.answers_file, resuming it if present. Holds the answers
// file's lock for the whole run (taking it unless opts.lock_held).
RunStats run_eval(EvalModel& m, const std::vector<EvalItem>& items, const RunOptions& opts);

// The lock every writer of an answers file holds for its whole run: "<answers>.lock" beside the
// real file (symlinks resolved), common/files.h FileLock. The runners take it before loading
// the model, so a second writer is refused at once, naming the holder.
std::unique_ptr<FileLock> lock_answers_file(const std::string& answers_file);

// The answers file's existing lines. Reading changes nothing; a tail without its newline is
// counted as torn (a run killed mid-write), unless it is a whole answer object, which is kept.
struct ExistingAnswers {
  std::vector<Json> lines;
  size_t complete_bytes = 0;   // up to and including the last newline
  size_t torn_bytes = 0;       // a partial last line to cut off before appending
  bool needs_newline = false;  // the last answer is whole but lacks its newline
};
ExistingAnswers read_answers(const std::string& path);
// Makes the file end on a fresh line for appending: cuts a torn tail or adds the newline.
void repair_answers(const std::string& path, const ExistingAnswers& ex);

// `mgm eval merge`: concatenates chunk answer files in order into `output` (atomically), as the
// reference's cat does, after checking every line. Refused: the same file twice, and chunk files
// whose settings records (<file>.settings.json) differ in anything but chunk_idx or give the
// same chunk twice. Repeated questions (same id and prompt) are allowed, as question files can
// repeat a question (the runner answers each occurrence); they are counted.
struct MergeStats {
  size_t lines = 0;
  size_t repeated = 0;  // answer lines whose question appeared on an earlier line
  std::vector<std::string> missing_chunks;  // "k of N", from the settings records
};
MergeStats merge_answer_files(const std::vector<std::string>& inputs, const std::string& output);

}  // namespace mgm::eval
