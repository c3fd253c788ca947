// `mgm data synth`: the embedded default dataset. Images of coloured shapes (and sometimes a
// rendered word) whose facts are known exactly, with pretraining captions (Data-Juicer JSONL and
// the LLaVA JSON our dj_to_llava makes of it), finetuning conversations (LLaVA JSON), a TextVQA-
// and an MMBench-format evaluation set on separate images, a sentencepiece tokenizer trained on
// all the text, and a manifest (synth.json). Same seed and options give byte-identical files.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace mgm::data {

struct SynthOptions {
  std::string out_dir;
  int64_t seed = 0;
  int size = 2000;        // training images
  int eval_size = 200;    // evaluation images (never used for training)
  int image_size = 256;   // nominal side; each side varies in [0.75, 1.25] x this
  int vocab_size = 1024;  // tokenizer vocabulary (must not exceed the model's)
  // This fraction of the pretraining captions is made wrong on purpose (wrong colour, shape or
  // count, or another image's caption), for data-cleaning experiments; which ones, and the true
  // captions, are listed in pretrain_truth.jsonl. The images, the finetuning and evaluation data
  // do not depend on it.
  double caption_noise = 0.0;
  bool overwrite = false;
};

// The vocabularies (fixed order; the manifest lists them).
const std::vector<std::string>& synth_colours();
std::array<uint8_t, 3> synth_colour_rgb(const std::string& colour);  // Error when unknown
const std::vector<std::string>& synth_shape_kinds();
const std::vector<std::string>& synth_words();
const std::vector<std::string>& synth_positions();  // left, right, top, bottom, center
// The colour of rendered words (dark grey, distinct from every shape colour).
std::array<uint8_t, 3> synth_text_rgb();

struct SynthShape {
  std::string kind, colour;
  int cx = 0, cy = 0;  // centre, pixels
  int radius = 0;      // the shape is drawn inside a circle of 1.15 * radius around the centre
};

// Everything an image shows, known exactly.
struct SynthScene {
  int width = 0, height = 0;
  std::array<uint8_t, 3> background{};  // pale: every channel >= 215
  std::vector<SynthShape> shapes;       // shapes[0] is the main (largest) shape
  std::string position;                 // the main shape's position (synth_positions())
  std::string word;                     // "" when no word is rendered
  bool word_at_top = false;             // otherwise the word is near the bottom edge
  const SynthShape& main() const { return shapes.front(); }
};

enum class SynthSplit { kTrain, kEval };

// The scene of image `index` of a split; depends only on (seed, split, index, image_size).
SynthScene plan_synth_scene(int64_t seed, SynthSplit split, int index, int image_size);

// The scene drawn and encoded as PNG (RGB). Throws Error when built without OpenCV.
std::string render_synth_png(const SynthScene& scene);

struct SynthSummary {
  size_t train_images = 0, eval_images = 0;
  size_t pretrain_samples = 0;
  size_t finetune_samples = 0, finetune_text_only = 0, finetune_turns = 0;
  size_t textvqa_questions = 0;
  size_t mmbench_questions = 0, mmbench_rows = 0;  // base questions; rows incl. circular variants
  int64_t tokenizer_vocab = 0;
  std::string tokenizer_note;  // set when the text allowed fewer pieces than --vocab_size
  double seconds = 0;
  std::vector<std::string> files;  // paths written (images counted, not listed)
};

// Writes the dataset into opt.out_dir (layout in the command's help). Refuses a non-empty folder
// unless opt.overwrite. Throws UsageError for bad options, Error otherwise.
SynthSummary synthesize_dataset(const SynthOptions& opt);

// Minimal standard base64 (RFC 4648, padded), as MMBench TSVs carry images.
std::string base64_encode(const std::string& bytes);

}  // namespace mgm::data
