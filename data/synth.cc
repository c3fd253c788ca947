#include "data/synth.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "data/convert.h"
#include "data/py_random.h"
#include "data/records.h"
#include "data/tokenizer.h"

#ifdef MGM_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace mgm::data {
namespace {

// ---------------------------------------------------------------------------------------------
// Vocabularies

struct NamedColour {
  const char* name;
  std::array<uint8_t, 3> rgb;
};

// Saturated colours far apart in RGB (and from the pale backgrounds, every channel >= 215), so
// they stay distinguishable after the demo model's downscale to 112 px. No white: it would
// vanish on the background.
const std::vector<NamedColour>& colour_table() {
  static const std::vector<NamedColour> t = {
      {"red", {220, 30, 30}},    {"green", {30, 160, 50}},  {"blue", {30, 70, 220}},
      {"yellow", {240, 200, 0}}, {"orange", {250, 130, 0}}, {"purple", {140, 40, 180}},
      {"black", {20, 20, 20}},
  };
  return t;
}

const char* const kTextGreyName = "dark grey";
constexpr std::array<uint8_t, 3> kTextRgb{80, 80, 80};

// ---------------------------------------------------------------------------------------------
// Randomness: CPython's MT19937 (PyRandom) and integer draws only, so every machine produces the
// same files (std:: distributions are implementation-defined). Each image and each text stream
// has its own generator, derived from (seed, stream, index) with splitmix64.

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

enum Stream : uint64_t {
  kTrainScene = 1,
  kEvalScene = 2,
  kTrainText = 3,
  kEvalText = 4,
  kTextOnly = 5,
  kCaptionNoise = 6,
  kNoisyCaption = 7,
};

class Rng {
 public:
  Rng(int64_t seed, uint64_t stream, uint64_t index)
      : py_(static_cast<int64_t>(
            splitmix64(splitmix64(static_cast<uint64_t>(seed)) ^ (stream << 40) ^ index) >> 1)) {}
  int below(int n) { return static_cast<int>(py_.randbelow(static_cast<uint64_t>(n))); }
  bool chance(int num, int den) { return below(den) < num; }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[static_cast<size_t>(below(static_cast<int>(v.size())))];
  }
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(below(i))]);
  }

 private:
  int below(size_t n) { return below(static_cast<int>(n)); }
  PyRandom py_;
};

// ---------------------------------------------------------------------------------------------
// Text helpers

std::string capitalise(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

std::string with_article(const std::string& noun_phrase) {
  const char c = noun_phrase.empty() ? 'x' : noun_phrase[0];
  const bool vowel = c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u';
  return (vowel ? "an " : "a ") + noun_phrase;
}

std::string number_word(size_t n) {
  static const char* const w[] = {"zero", "one", "two", "three", "four", "five"};
  return n < 6 ? w[n] : std::to_string(n);
}

std::string position_phrase(const std::string& pos) {
  if (pos == "left") return "on the left";
  if (pos == "right") return "on the right";
  if (pos == "top") return "at the top";
  if (pos == "bottom") return "at the bottom";
  return "in the center";
}

std::string image_name(int index) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%06d", index);
  return buf;
}

const char* const kShortAnswerSuffix = "Answer the question using a single word or phrase.";
const char* const kOptionLetterSuffix =
    "Answer with the option's letter from the given choices directly.";

// ---------------------------------------------------------------------------------------------
// Questions about a scene. Answers are lower-case single words (digits for counts): the style
// TextVQA's normalisation and MMBench's option matching expect, kept the same everywhere.

struct Qa {
  std::string kind;  // colour, shape, count, position, word, text_presence, yes_colour, ...
  std::string question, answer;
};

std::string main_ref(const SynthScene& s, Rng& r) {
  if (s.shapes.size() == 1) return r.pick<std::string>({"the shape", "the main shape"});
  return r.pick<std::string>({"the largest shape", "the biggest shape", "the main shape"});
}

Qa ask(const std::string& kind, const SynthScene& s, Rng& r) {
  const SynthShape& m = s.main();
  Qa q{kind, "", ""};
  if (kind == "colour") {
    std::string ref = main_ref(s, r);
    q.question =
        r.pick<std::string>({"What colour is " + ref + "?", "What is the colour of " + ref + "?",
                             "Which colour does " + ref + " have?"});
    q.answer = m.colour;
  } else if (kind == "shape") {
    q.question = s.shapes.size() == 1
                     ? r.pick<std::string>({"What shape is shown in the image?",
                                            "What kind of shape is in the image?",
                                            "What is the " + m.colour + " shape?"})
                     : r.pick<std::string>({"What shape is the largest one?",
                                            "What kind of shape is the biggest one?",
                                            "What is the " + m.colour + " shape?"});
    q.answer = m.kind;
  } else if (kind == "count") {
    q.question =
        r.pick<std::string>({"How many shapes are there?", "How many shapes are in the image?",
                             "How many shapes can you see?"});
    q.answer = std::to_string(s.shapes.size());
  } else if (kind == "position") {
    std::string ref = main_ref(s, r);
    q.question = r.pick<std::string>({"Where is " + ref + "?",
                                      "Where is the " + m.colour + " " + m.kind + "?",
                                      "In which part of the image is " + ref + "?"});
    q.answer = s.position;
  } else if (kind == "word") {
    q.question =
        r.pick<std::string>({"What word is written in the image?", "What does the text say?",
                             "Which word can you read in the image?"});
    q.answer = s.word;
  } else if (kind == "text_presence") {
    q.question =
        r.pick<std::string>({"Is there any text in the image?", "Is a word written in the image?"});
    q.answer = s.word.empty() ? "no" : "yes";
  } else if (kind == "yes_colour") {
    std::string c = m.colour;
    if (r.chance(1, 2)) {
      std::vector<std::string> others;
      for (const auto& n : synth_colours())
        if (n != m.colour) others.push_back(n);
      c = r.pick(others);
    }
    q.question = "Is " + main_ref(s, r) + " " + c + "?";
    q.answer = c == m.colour ? "yes" : "no";
  } else if (kind == "yes_shape") {
    std::string k =
        r.chance(1, 2)
            ? s.shapes[static_cast<size_t>(r.below(static_cast<int>(s.shapes.size())))].kind
            : r.pick(synth_shape_kinds());
    bool present = false;
    for (const auto& sh : s.shapes) present = present || sh.kind == k;
    q.question = "Is there " + with_article(k) + " in the image?";
    q.answer = present ? "yes" : "no";
  } else {
    throw Error(str_cat("internal: unknown question kind ", kind));
  }
  return q;
}

// A multiple-choice question (MMBench style) about one fact of the scene.
struct Mcq {
  std::string kind, question;
  std::vector<std::string> options;
  size_t answer = 0;  // index into options
};

Mcq ask_choice(const std::string& kind, const SynthScene& s, Rng& r, int n_options) {
  const bool one = s.shapes.size() == 1;
  Mcq q;
  q.kind = kind;
  std::string answer;
  std::vector<std::string> pool;
  if (kind == "colour") {
    q.question = one ? "What is the colour of the shape?"
                     : "What is the colour of the largest shape in the image?";
    answer = s.main().colour;
    pool = synth_colours();
  } else if (kind == "shape") {
    q.question =
        one ? "What shape is shown in the image?" : "What shape is the largest one in the image?";
    answer = s.main().kind;
    pool = synth_shape_kinds();
  } else if (kind == "count") {
    q.question = "How many shapes are in the image?";
    answer = std::to_string(s.shapes.size());
    pool = {"1", "2", "3"};
  } else if (kind == "position") {
    q.question = one ? "Where is the shape located?" : "Where is the largest shape located?";
    answer = s.position;
    pool = synth_positions();
  } else if (kind == "word") {
    q.question = "Which word is written in the image?";
    answer = s.word;
    pool = synth_words();
  } else {
    throw Error(str_cat("internal: unknown choice kind ", kind));
  }
  std::vector<std::string> distractors;
  for (const auto& p : pool)
    if (p != answer) distractors.push_back(p);
  r.shuffle(distractors);
  n_options = std::min<int>(n_options, static_cast<int>(distractors.size()) + 1);
  q.options.push_back(answer);
  for (int i = 1; i < n_options; ++i) q.options.push_back(distractors[static_cast<size_t>(i - 1)]);
  r.shuffle(q.options);
  q.answer = static_cast<size_t>(std::find(q.options.begin(), q.options.end(), answer) -
                                 q.options.begin());
  return q;
}

std::string choice_prompt(const std::string& hint, const Mcq& q, size_t rotation) {
  std::string p = hint.empty() ? q.question : hint + "\n" + q.question;
  const size_t n = q.options.size();
  for (size_t i = 0; i < n; ++i)
    p += str_cat("\n", static_cast<char>('A' + i), ". ", q.options[(i + rotation) % n]);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Captions

// MMBench-style hints, used by the evaluation set and (so the model has seen the layout) by some
// of the finetuning set's multiple-choice questions.
const std::vector<std::string>& choice_hints() {
  static const std::vector<std::string> hints = {
      "The image shows simple coloured shapes on a plain background.",
      "Some images contain more than one shape; the largest one is the main shape.",
      "Look at the whole picture before answering."};
  return hints;
}

std::string shape_phrase(const SynthShape& sh) { return sh.colour + " " + sh.kind; }

std::string caption(const SynthScene& s, Rng& r) {
  const SynthShape& m = s.main();
  const std::string main_np = with_article(shape_phrase(m));
  const std::string pos = position_phrase(s.position);
  std::vector<std::string> small;
  for (size_t i = 1; i < s.shapes.size(); ++i)
    small.push_back(with_article("small " + shape_phrase(s.shapes[i])));
  const std::string others = small.empty() ? "" : join(small, " and ");
  const std::string where = s.word_at_top ? "top" : "bottom";
  std::string word;
  if (!s.word.empty()) {
    switch (r.below(3)) {
      case 0:
        word = " The word \"" + s.word + "\" is written at the " + where + ".";
        break;
      case 1:
        word = " The text reads \"" + s.word + "\".";
        break;
      default:
        word = " It has the word \"" + s.word + "\" written at the " + where + ".";
    }
  }
  const size_t n = s.shapes.size();
  std::string shapes_total =
      n == 1 ? "There is one shape in total." : "There are " + number_word(n) + " shapes in total.";
  std::string c;
  switch (r.below(4)) {
    case 0:
      c = main_np + " " + pos + " of a pale background" +
          (others.empty() ? "" : ", next to " + others) + ".";
      break;
    case 1:
      c = n == 1 ? "One shape on a plain light background: " + main_np + " " + pos + "."
                 : capitalise(number_word(n)) +
                       " shapes on a plain light background. The largest "
                       "is " +
                       main_np + " " + pos + ", with " + others + ".";
      break;
    case 2:
      c = "A simple drawing of " + main_np + " " + pos +
          (others.empty() ? "" : ", with " + others) + ".";
      break;
    default:
      c = main_np + " is drawn " + pos + ". " + shapes_total;
  }
  return capitalise(c) + word;
}

// ---------------------------------------------------------------------------------------------
// Text-only finetuning samples: general knowledge about the same vocabulary.

const std::vector<std::pair<std::string, std::string>>& text_facts() {
  static const std::vector<std::pair<std::string, std::string>> t = {
      {"How many sides does a triangle have?", "3"},
      {"How many sides does a square have?", "4"},
      {"How many points does a star usually have?", "5"},
      {"How many corners does a circle have?", "0"},
      {"Which shape has no corners?", "circle"},
      {"Which shape has three corners?", "triangle"},
      {"What colour do you get by mixing red and yellow?", "orange"},
      {"What colour do you get by mixing blue and yellow?", "green"},
      {"What colour do you get by mixing red and blue?", "purple"},
      {"What colour is a ripe banana?", "yellow"},
      {"What colour is fresh grass?", "green"},
      {"What colour is the sky on a clear day?", "blue"},
      {"Is a circle round?", "yes"},
      {"Does a square have three sides?", "no"},
      {"What is the opposite of left?", "right"},
      {"What is the opposite of top?", "bottom"},
  };
  return t;
}

// ---------------------------------------------------------------------------------------------
// Drawing

#ifdef MGM_WITH_OPENCV
cv::Scalar bgr(const std::array<uint8_t, 3>& rgb) { return cv::Scalar(rgb[2], rgb[1], rgb[0]); }

// Unit vectors at -90 + 36k degrees (k = 0..9), written out so vertex positions do not depend
// on the platform's sin/cos rounding.
constexpr double kStarUnit[10][2] = {
    {0.0, -1.0},
    {0.5877852522924731, -0.8090169943749475},
    {0.9510565162951535, -0.3090169943749474},
    {0.9510565162951535, 0.3090169943749474},
    {0.5877852522924731, 0.8090169943749475},
    {0.0, 1.0},
    {-0.5877852522924731, 0.8090169943749475},
    {-0.9510565162951535, 0.3090169943749474},
    {-0.9510565162951535, -0.3090169943749474},
    {-0.5877852522924731, -0.8090169943749475},
};
constexpr double kSqrt3Half = 0.8660254037844386;
constexpr int kShift = 4;  // polygon vertices in 1/16 px

cv::Point fixed_point(double x, double y) {
  return cv::Point(static_cast<int>(std::lround(x * (1 << kShift))),
                   static_cast<int>(std::lround(y * (1 << kShift))));
}

void draw_shape(cv::Mat& img, const SynthShape& sh) {
  const cv::Scalar col = bgr(synth_colour_rgb(sh.colour));
  const int r = sh.radius, cx = sh.cx, cy = sh.cy;
  if (sh.kind == "circle") {
    cv::circle(img, {cx, cy}, r, col, cv::FILLED, cv::LINE_AA);
  } else if (sh.kind == "square") {
    const int h = r * 80 / 100;
    cv::rectangle(img, cv::Point(cx - h, cy - h), cv::Point(cx + h, cy + h), col, cv::FILLED);
  } else if (sh.kind == "cross") {
    const int a = r * 36 / 100;
    cv::rectangle(img, cv::Point(cx - r, cy - a), cv::Point(cx + r, cy + a), col, cv::FILLED);
    cv::rectangle(img, cv::Point(cx - a, cy - r), cv::Point(cx + a, cy + r), col, cv::FILLED);
  } else if (sh.kind == "triangle") {
    const double R = r * 1.15;
    std::vector<cv::Point> pts = {fixed_point(cx, cy - R),
                                  fixed_point(cx + R * kSqrt3Half, cy + R * 0.5),
                                  fixed_point(cx - R * kSqrt3Half, cy + R * 0.5)};
    cv::fillConvexPoly(img, pts, col, cv::LINE_AA, kShift);
  } else if (sh.kind == "star") {
    const double outer = r * 1.15, inner = outer * 0.4;
    std::vector<cv::Point> pts;
    for (int k = 0; k < 10; ++k) {
      const double rad = k % 2 == 0 ? outer : inner;
      pts.push_back(fixed_point(cx + rad * kStarUnit[k][0], cy + rad * kStarUnit[k][1]));
    }
    std::vector<std::vector<cv::Point>> polys = {pts};
    cv::fillPoly(img, polys, col, cv::LINE_AA, kShift);
  } else {
    throw Error(str_cat("internal: unknown shape kind ", sh.kind));
  }
}
#endif

// The band along the top or bottom edge that holds the word; other shapes keep out of it.
int word_band_height(const SynthScene& s) { return s.height * 17 / 100; }

// ---------------------------------------------------------------------------------------------
// The sentencepiece trainer records the corpus path and model prefix in the model's TrainerSpec;
// replacing them with fixed names keeps tokenizer.model independent of --out (determinism).

bool read_varint(const std::string& s, size_t& pos, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && pos < s.size(); shift += 7) {
    const auto b = static_cast<uint8_t>(s[pos++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

void write_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void write_string_field(std::string& out, uint64_t field, const std::string& v) {
  write_varint(out, (field << 3) | 2);
  write_varint(out, v.size());
  out += v;
}

// Splits a protobuf message into (field number, wire type, raw field bytes incl. key).
struct ProtoField {
  uint64_t number;
  int wire;
  std::string raw, payload;  // payload: the bytes of a length-delimited field
};

std::vector<ProtoField> split_proto(const std::string& msg, const std::string& what) {
  std::vector<ProtoField> out;
  size_t pos = 0;
  while (pos < msg.size()) {
    const size_t start = pos;
    uint64_t key = 0, v = 0;
    MGM_CHECK(read_varint(msg, pos, key), what, ": malformed sentencepiece model");
    ProtoField f{key >> 3, static_cast<int>(key & 7), "", ""};
    switch (f.wire) {
      case 0:
        MGM_CHECK(read_varint(msg, pos, v), what, ": malformed sentencepiece model");
        break;
      case 1:
        pos += 8;
        break;
      case 5:
        pos += 4;
        break;
      case 2:
        MGM_CHECK(read_varint(msg, pos, v) && v <= msg.size() - pos, what,
                  ": malformed sentencepiece model");
        f.payload = msg.substr(pos, v);
        pos += v;
        break;
      default:
        throw Error(str_cat(what, ": unexpected protobuf wire type ", f.wire));
    }
    MGM_CHECK(pos <= msg.size(), what, ": truncated sentencepiece model");
    f.raw = msg.substr(start, pos - start);
    out.push_back(std::move(f));
  }
  return out;
}

void normalise_trainer_paths(const std::string& model_path) {
  constexpr uint64_t kTrainerSpec = 2, kInput = 1, kModelPrefix = 2;
  const std::string model = read_file(model_path);
  std::string out;
  for (const auto& f : split_proto(model, model_path)) {
    if (f.number != kTrainerSpec || f.wire != 2) {
      out += f.raw;
      continue;
    }
    std::string spec;
    write_string_field(spec, kInput, "tokenizer.corpus.txt");
    write_string_field(spec, kModelPrefix, "tokenizer");
    for (const auto& g : split_proto(f.payload, model_path))
      if (g.number != kInput && g.number != kModelPrefix) spec += g.raw;
    write_string_field(out, kTrainerSpec, spec);
  }
  write_file_atomic(model_path, out);
}

// ---------------------------------------------------------------------------------------------
// Output folder handling

bool is_image_name(const std::string& name) {
  if (name.size() != 10 || !ends_with(name, ".png")) return false;
  for (size_t i = 0; i < 6; ++i)
    if (name[i] < '0' || name[i] > '9') return false;
  return true;
}

void prepare_out_dir(const SynthOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(o.out_dir, ec)) {
    if (!fs::is_directory(o.out_dir, ec))
      throw UsageError(str_cat("--out ", o.out_dir, " exists and is not a folder"));
    if (!fs::is_empty(o.out_dir, ec) && !o.overwrite)
      throw UsageError(str_cat("--out ", o.out_dir,
                               " is not empty; pass --overwrite to write the dataset into it"));
    // Images of an earlier, larger run would otherwise linger beside the new ones.
    for (const char* sub : {"images/train", "images/eval"}) {
      fs::path d = fs::path(o.out_dir) / sub;
      if (!fs::is_directory(d, ec)) continue;
      for (const auto& e : fs::directory_iterator(d))
        if (e.is_regular_file() && is_image_name(e.path().filename().string()))
          remove_tree(e.path().string());
    }
  }
  make_dirs(path_join(o.out_dir, "images/train"));
  make_dirs(path_join(o.out_dir, "images/eval"));
  make_dirs(path_join(o.out_dir, "eval"));
  make_dirs(path_join(o.out_dir, "tokenizer"));
}

void check_options(const SynthOptions& o) {
  if (o.out_dir.empty()) throw UsageError("--out is required");
  if (o.size < 1 || o.size > 999999)
    throw UsageError(str_cat("--size must be in 1..999999, got ", o.size));
  if (o.eval_size < 1 || o.eval_size > 999999)
    throw UsageError(str_cat("--eval_size must be in 1..999999, got ", o.eval_size));
  if (o.image_size < 64 || o.image_size > 4096)
    throw UsageError(str_cat("--image_size must be in 64..4096, got ", o.image_size));
  if (o.vocab_size < 1)
    throw UsageError(str_cat("--vocab_size must be positive, got ", o.vocab_size));
}

OrderedJson turn(const std::string& from, const std::string& value) {
  OrderedJson t = OrderedJson::object();
  t["from"] = from;
  t["value"] = value;
  return t;
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

}  // namespace

// ---------------------------------------------------------------------------------------------

const std::vector<std::string>& synth_colours() {
  static const std::vector<std::string> v = [] {
    std::vector<std::string> n;
    for (const auto& c : colour_table()) n.push_back(c.name);
    return n;
  }();
  return v;
}

std::array<uint8_t, 3> synth_colour_rgb(const std::string& colour) {
  for (const auto& c : colour_table())
    if (colour == c.name) return c.rgb;
  throw Error(str_cat("unknown synthetic colour '", colour, "'"));
}

std::array<uint8_t, 3> synth_text_rgb() { return kTextRgb; }

const std::vector<std::string>& synth_shape_kinds() {
  static const std::vector<std::string> v = {"circle", "square", "triangle", "star", "cross"};
  return v;
}

const std::vector<std::string>& synth_words() {
  static const std::vector<std::string> v = {"cat",  "dog",  "sun",  "car",  "tree", "book", "fish",
                                             "bird", "moon", "cake", "door", "milk", "rain", "ship",
                                             "lamp", "box",  "hat",  "key",  "cup",  "map"};
  return v;
}

const std::vector<std::string>& synth_positions() {
  static const std::vector<std::string> v = {"left", "right", "top", "bottom", "center"};
  return v;
}

SynthScene plan_synth_scene(int64_t seed, SynthSplit split, int index, int image_size) {
  Rng r(seed, split == SynthSplit::kTrain ? kTrainScene : kEvalScene, static_cast<uint64_t>(index));
  SynthScene s;
  s.width = image_size * (75 + r.below(51)) / 100;
  s.height = image_size * (75 + r.below(51)) / 100;
  for (auto& c : s.background) c = static_cast<uint8_t>(215 + r.below(41));
  const int u = r.below(100);
  const size_t n = u < 60 ? 1 : u < 85 ? 2 : 3;  // most images show one shape
  s.position = r.pick(synth_positions());
  if (r.below(100) < 40) s.word = r.pick(synth_words());
  s.word_at_top = s.position == "bottom";

  const int w = s.width, h = s.height, mn = std::min(w, h);
  // The main shape is big (its drawing spans up to 2 * 1.15 * 22% of the short side) and sits
  // clearly in its region: centre fractions (percent) per position, +-2% jitter.
  SynthShape m;
  m.kind = r.pick(synth_shape_kinds());
  m.colour = r.pick(synth_colours());
  m.radius = mn * (n == 1 ? 19 + r.below(4) : 16 + r.below(4)) / 100;
  static const std::map<std::string, std::pair<int, int>> centre = {{"left", {28, 50}},
                                                                    {"right", {72, 50}},
                                                                    {"top", {50, 30}},
                                                                    {"bottom", {50, 70}},
                                                                    {"center", {50, 50}}};
  const auto [fx, fy] = centre.at(s.position);
  m.cx = w * (fx + r.below(5) - 2) / 100;
  m.cy = h * (fy + r.below(5) - 2) / 100;
  s.shapes.push_back(m);

  // Smaller shapes in other colours anywhere they fit: not touching other shapes, the border
  // or the word band. A shape that finds no place after 200 tries is left out (and not counted).
  const int band = s.word.empty() ? 0 : word_band_height(s);
  for (size_t k = 1; k < n; ++k) {
    SynthShape o;
    o.kind = r.pick(synth_shape_kinds());
    std::vector<std::string> free_colours;
    for (const auto& c : synth_colours()) {
      bool used = false;
      for (const auto& sh : s.shapes) used = used || sh.colour == c;
      if (!used) free_colours.push_back(c);
    }
    o.colour = r.pick(free_colours);
    o.radius = m.radius * (45 + r.below(16)) / 100;
    const int ext = o.radius * 115 / 100 + 2;
    if (w <= 2 * ext || h <= 2 * ext) break;
    bool placed = false;
    for (int attempt = 0; attempt < 200 && !placed; ++attempt) {
      o.cx = ext + r.below(w - 2 * ext);
      o.cy = ext + r.below(h - 2 * ext);
      if (band && s.word_at_top && o.cy - ext < band) continue;
      if (band && !s.word_at_top && o.cy + ext > h - band) continue;
      bool clear = true;
      for (const auto& sh : s.shapes) {
        const int64_t gap = ext + sh.radius * 115 / 100 + 6;
        const int64_t dx = o.cx - sh.cx, dy = o.cy - sh.cy;
        clear = clear && dx * dx + dy * dy >= gap * gap;
      }
      placed = clear;
    }
    if (!placed) break;
    s.shapes.push_back(o);
  }
  return s;
}

std::string render_synth_png(const SynthScene& s) {
#ifdef MGM_WITH_OPENCV
  cv::Mat img(s.height, s.width, CV_8UC3, bgr(s.background));
  for (const auto& sh : s.shapes) draw_shape(img, sh);
  if (!s.word.empty()) {
    const double scale = std::min(s.width, s.height) / 256.0 * 0.9;
    const int thickness = 2;
    int baseline = 0;
    const cv::Size ts =
        cv::getTextSize(s.word, cv::FONT_HERSHEY_SIMPLEX, scale, thickness, &baseline);
    const int x = (s.width - ts.width) / 2;
    const int margin = s.height * 4 / 100;
    const int y = s.word_at_top ? margin + ts.height : s.height - margin - baseline;
    cv::putText(img, s.word, cv::Point(x, y), cv::FONT_HERSHEY_SIMPLEX, scale, bgr(kTextRgb),
                thickness, cv::LINE_AA);
  }
  std::vector<uchar> buf;
  // Low compression: 2000 images in seconds; the files stay small (flat colours).
  if (!cv::imencode(".png", img, buf, {cv::IMWRITE_PNG_COMPRESSION, 1}))
    throw Error("PNG encoding failed");
  return std::string(buf.begin(), buf.end());
#else
  (void)s;
  throw Error("mgm was built without OpenCV; mgm data synth needs it");
#endif
}

std::string base64_encode(const std::string& bytes) {
  static const char* const kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) |
                       (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                       static_cast<uint8_t>(bytes[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

SynthSummary synthesize_dataset(const SynthOptions& o) {
#ifndef MGM_WITH_OPENCV
  // Refused before anything is written (the drawing needs OpenCV).
  throw Error("mgm was built without OpenCV; mgm data synth needs it");
#endif
  const auto t0 = std::chrono::steady_clock::now();
  check_options(o);
  prepare_out_dir(o);
  SynthSummary sum;
  const std::string& dir = o.out_dir;
  std::vector<std::string> corpus;  // every text the models will see, for the tokenizer

  // ---- training images, captions, conversations
  std::vector<OrderedJson> dj, original, finetune, truth;
  static const std::vector<std::string> pretrain_prompts = {
      "Describe the image briefly.", "Give a short caption for the image.",
      "What is shown in this picture?", "Write a brief description of the image.",
      "Summarise the picture in one sentence."};
  const int text_only_every = 20;  // about 5% text-only samples, as in LLaVA's mix
  size_t text_only_index = 0;
  for (int i = 0; i < o.size; ++i) {
    const SynthScene s = plan_synth_scene(o.seed, SynthSplit::kTrain, i, o.image_size);
    const std::string id = image_name(i);
    const std::string rel = "train/" + id + ".png";
    write_file_atomic(path_join(dir, "images/" + rel), render_synth_png(s));
    Rng r(o.seed, kTrainText, static_cast<uint64_t>(i));

    const std::string true_cap = caption(s, r);
    corpus.push_back(true_cap);
    // Caption noise draws from streams of its own, so everything else stays as without it.
    std::string noise = "clean", cap = true_cap;
    if (o.caption_noise > 0) {
      Rng nr(o.seed, kCaptionNoise, static_cast<uint64_t>(i));
      if (nr.below(1000000) < static_cast<int>(o.caption_noise * 1000000)) {
        static const std::vector<std::string> kinds = {"wrong_colour", "wrong_shape",
                                                       "wrong_count", "unrelated"};
        noise = nr.pick(kinds);
        SynthScene w = s;
        SynthShape& m = w.shapes[0];
        if (noise == "wrong_colour") {
          std::vector<std::string> other;
          for (const auto& c : synth_colours())
            if (c != m.colour) other.push_back(c);
          m.colour = nr.pick(other);
        } else if (noise == "wrong_shape") {
          std::vector<std::string> other;
          for (const auto& k : synth_shape_kinds())
            if (k != m.kind) other.push_back(k);
          m.kind = nr.pick(other);
        } else if (noise == "wrong_count") {
          if (w.shapes.size() > 1) {
            w.shapes.resize(1);
          } else {
            SynthShape extra = m;
            extra.colour = nr.pick(synth_colours());
            extra.kind = nr.pick(synth_shape_kinds());
            w.shapes.push_back(extra);
            w.shapes.push_back(extra);
          }
        } else {
          w = plan_synth_scene(o.seed + 7919, SynthSplit::kTrain, i, o.image_size);
        }
        Rng cr(o.seed, kNoisyCaption, static_cast<uint64_t>(i));
        cap = caption(w, cr);
        corpus.push_back(cap);
      }
      truth.push_back({{"id", id}, {"noise", noise}, {"caption", cap}, {"true_caption", true_cap}});
    }
    OrderedJson d = OrderedJson::object();
    d["id"] = id;
    d["text"] = std::string(kDjImageToken) + "\n" + cap + " " + kDjEocToken;
    d["images"] = OrderedJson::array({rel});
    dj.push_back(std::move(d));
    // The LLaVA record the captions would have come from: its question is what dj_to_llava's
    // restore_questions puts back (the Better Synth toolkit's path from DJ to LLaVA).
    const std::string prompt = r.pick(pretrain_prompts);
    corpus.push_back(prompt);
    OrderedJson orig = OrderedJson::object();
    orig["id"] = id;
    orig["image"] = rel;
    orig["conversations"] = OrderedJson::array(
        {turn("human", std::string(kLlavaImageToken) + "\n" + prompt), turn("gpt", cap)});
    original.push_back(std::move(orig));

    // Finetuning: 2-4 turns of distinct kinds in random order. Every kind must come first as
    // often as later: the benchmarks ask one question right after the image, and a model that
    // only ever saw colour/shape questions there answers "How many shapes?" with a shape.
    // Multiple-choice questions come up twice as often as each other kind (two slots, about
    // different facts). Two in three have no answer-format line and are answered with the
    // option's text, as many models answer MMBench (VLMEvalKit's matcher maps a text that names
    // one option to its letter); the rest ask for the letter. Picking letters needs an
    // option-lookup circuit that a from-scratch demo LLM does not form in CPU minutes (measured:
    // no held-out progress on text-only letter drills after 1,500 steps), while naming the
    // option's content only needs the image.
    std::vector<std::string> kinds = {
        "colour",     "shape",     "count",  "position", s.word.empty() ? "text_presence" : "word",
        "yes_colour", "yes_shape", "choice", "choice"};
    r.shuffle(kinds);
    kinds.resize(static_cast<size_t>(2 + r.below(3)));
    std::vector<std::string> choice_kinds = {"colour", "shape", "count", "position"};
    if (!s.word.empty()) choice_kinds.push_back("word");
    r.shuffle(choice_kinds);
    OrderedJson conv = OrderedJson::array();
    for (size_t t = 0; t < kinds.size(); ++t) {
      std::string question, answer;
      if (kinds[t] == "choice") {
        const std::string k = choice_kinds.back();
        choice_kinds.pop_back();
        Mcq q = ask_choice(k, s, r, k == "count" ? 2 + r.below(2) : 2 + r.below(3));
        const std::string hint = r.chance(3, 10) ? r.pick(choice_hints()) : "";
        question = choice_prompt(hint, q, 0);
        if (r.chance(2, 3)) {
          answer = q.options[q.answer];
        } else {
          question += std::string("\n") + kOptionLetterSuffix;
          answer = std::string(1, static_cast<char>('A' + q.answer));
        }
      } else {
        Qa qa = ask(kinds[t], s, r);
        question = qa.question;
        answer = qa.answer;
        if (r.chance(1, 2)) {
          // TextVQA-style prompts (LLaVA's mix has them), mostly with the OCR line when the
          // image has a word, as the TextVQA question file always has it.
          if (!s.word.empty() && r.chance(2, 3)) question += "\nReference OCR token: " + s.word;
          question += std::string("\n") + kShortAnswerSuffix;
        }
      }
      corpus.push_back(question);
      corpus.push_back(answer);
      conv.push_back(
          turn("human", t == 0 ? std::string(kLlavaImageToken) + "\n" + question : question));
      conv.push_back(turn("gpt", answer));
      ++sum.finetune_turns;
    }
    OrderedJson f = OrderedJson::object();
    f["id"] = id;
    f["image"] = rel;
    f["conversations"] = std::move(conv);
    finetune.push_back(std::move(f));

    if ((i + 1) % text_only_every == 0) {
      Rng tr(o.seed, kTextOnly, text_only_index);
      std::vector<size_t> facts(text_facts().size());
      for (size_t k = 0; k < facts.size(); ++k) facts[k] = k;
      tr.shuffle(facts);
      const int n = 1 + tr.below(2);
      OrderedJson tconv = OrderedJson::array();
      for (int k = 0; k < n; ++k) {
        const auto& [q, a] = text_facts()[facts[static_cast<size_t>(k)]];
        std::string question = q;
        if (tr.chance(1, 2)) question += std::string("\n") + kShortAnswerSuffix;
        corpus.push_back(question);
        tconv.push_back(turn("human", question));
        tconv.push_back(turn("gpt", a));
        ++sum.finetune_turns;
      }
      OrderedJson t = OrderedJson::object();
      t["id"] = "text_" + image_name(static_cast<int>(text_only_index));
      t["conversations"] = std::move(tconv);
      finetune.push_back(std::move(t));
      ++text_only_index;
      ++sum.finetune_text_only;
    }
  }
  sum.train_images = static_cast<size_t>(o.size);

  const std::string dj_path = path_join(dir, "pretrain_dj.jsonl");
  write_output(dj_path, to_json_lines_text(dj));
  const std::string original_path = path_join(dir, ".pretrain_questions.tmp.json");
  write_output(original_path, to_json_array_text(original));
  DjToLlavaOptions conv_opt;
  conv_opt.image_special_token = kDjImageToken;  // as the toolkit calls it
  conv_opt.restore_questions = true;
  conv_opt.original_llava_ds_path = original_path;
  Warnings warnings;
  std::vector<OrderedJson> pretrain;
  try {
    pretrain = dj_to_llava(dj_path, conv_opt, &warnings);
  } catch (...) {
    std::remove(original_path.c_str());
    throw;
  }
  std::remove(original_path.c_str());
  MGM_CHECK(warnings.empty(), "internal: dj_to_llava warned: ", join(warnings, "; "));
  const std::string pretrain_path = path_join(dir, "pretrain.json");
  write_output(pretrain_path, to_json_array_text(pretrain));
  if (o.caption_noise > 0)
    write_output(path_join(dir, "pretrain_truth.jsonl"), to_json_lines_text(truth));
  const std::string finetune_path = path_join(dir, "finetune.json");
  write_output(finetune_path, to_json_array_text(finetune));
  sum.pretrain_samples = pretrain.size();
  sum.finetune_samples = finetune.size();

  // ---- evaluation images: TextVQA and MMBench sets
  std::vector<OrderedJson> tvqa_questions;
  OrderedJson tvqa_data = OrderedJson::array();
  std::map<std::string, std::vector<double>> tvqa_chance;  // kind -> per-question chance
  std::vector<double> tvqa_chance_all;
  const std::map<std::string, size_t> tvqa_vocab = {{"colour", synth_colours().size()},
                                                    {"shape", synth_shape_kinds().size()},
                                                    {"count", 3},
                                                    {"word", synth_words().size()}};
  struct MmbRow {
    int64_t index;
    std::string line;
  };
  std::vector<MmbRow> mmb_rows;
  std::map<std::string, std::vector<double>> mmb_chance, mmb_circular_chance;
  std::vector<double> mmb_chance_all, mmb_circular_all;
  static const std::map<std::string, std::pair<std::string, std::string>> mmb_category = {
      {"colour", {"color_recognition", "finegrained_perception (instance-level)"}},
      {"shape", {"shape_recognition", "finegrained_perception (instance-level)"}},
      {"count", {"object_counting", "finegrained_perception (cross-instance)"}},
      {"position", {"spatial_relationship", "finegrained_perception (cross-instance)"}},
      {"word", {"ocr", "finegrained_perception (instance-level)"}}};
  int64_t tvqa_question_id = 0;
  for (int i = 0; i < o.eval_size; ++i) {
    const SynthScene s = plan_synth_scene(o.seed, SynthSplit::kEval, i, o.image_size);
    const std::string id = image_name(i);
    const std::string rel = "eval/" + id + ".png";
    const std::string png = render_synth_png(s);
    write_file_atomic(path_join(dir, "images/" + rel), png);
    Rng r(o.seed, kEvalText, static_cast<uint64_t>(i));

    // TextVQA: one or two questions, the LLaVA question-file layout (question_id = image id).
    std::vector<std::string> kinds = {"colour", "shape", "count"};
    if (!s.word.empty()) kinds.push_back("word");
    r.shuffle(kinds);
    kinds.resize(static_cast<size_t>(1 + r.below(2)));
    for (const auto& kind : kinds) {
      Qa qa = ask(kind, s, r);
      std::string text = qa.question;
      if (!s.word.empty()) text += "\nReference OCR token: " + s.word;
      text += std::string("\n") + kShortAnswerSuffix;
      corpus.push_back(text);
      OrderedJson q = OrderedJson::object();
      q["question_id"] = id;
      q["image"] = rel;
      q["text"] = text;
      q["category"] = "default";
      tvqa_questions.push_back(std::move(q));
      // Ten annotator answers: the answer, a few written the way people type it (all equal
      // after TextVQA's normalisation).
      std::vector<std::string> variants = {capitalise(qa.answer), qa.answer + "."};
      if (kind == "count") variants.push_back(number_word(s.shapes.size()));
      if (kind != "count") variants.push_back("the " + qa.answer);
      std::vector<std::string> answers(10, qa.answer);
      const int n_var = r.below(4);
      for (int k = 0; k < n_var; ++k) answers[static_cast<size_t>(r.below(10))] = r.pick(variants);
      std::vector<std::string> tokens;
      std::string lower = to_lower(qa.question);
      for (auto& t : split(lower.substr(0, lower.size() - 1), ' ')) tokens.push_back(t);
      OrderedJson a = OrderedJson::object();
      a["question"] = qa.question;
      a["image_id"] = id;
      a["image_classes"] = OrderedJson::array();
      a["flickr_original_url"] = "";
      a["flickr_300k_url"] = "";
      a["image_width"] = s.width;
      a["image_height"] = s.height;
      a["answers"] = answers;
      a["question_tokens"] = tokens;
      a["question_id"] = tvqa_question_id++;
      a["set_name"] = "val";
      tvqa_data.push_back(std::move(a));
      const double c = 1.0 / static_cast<double>(tvqa_vocab.at(kind));
      tvqa_chance[kind].push_back(c);
      tvqa_chance_all.push_back(c);
    }

    // MMBench: one question with 2-4 options and its circular variants.
    std::vector<std::string> ck = {"colour", "shape", "count", "position"};
    if (!s.word.empty()) ck.push_back("word");
    const std::string kind = r.pick(ck);
    Mcq q = ask_choice(kind, s, r, kind == "count" ? 2 + r.below(2) : 2 + r.below(3));
    const std::string hint = r.chance(3, 10) ? r.pick(choice_hints()) : "";
    const std::string b64 = base64_encode(png);
    const size_t n = q.options.size();
    const auto& [category, l2] = mmb_category.at(kind);
    for (size_t k = 0; k < n; ++k) {
      std::vector<std::string> f = {std::to_string(i + static_cast<int64_t>(k) * 1000000),
                                    q.question, hint};
      for (size_t L = 0; L < 4; ++L) f.push_back(L < n ? q.options[(L + k) % n] : "");
      f.push_back(std::string(1, static_cast<char>('A' + (q.answer + n - k) % n)));
      f.push_back(category);
      f.push_back(b64);
      f.push_back("synth");
      f.push_back(l2);
      f.push_back("");
      f.push_back("dev");
      for (const auto& x : f)
        MGM_CHECK(x.find_first_of("\t\n\r\"") == std::string::npos,
                  "internal: TSV field needs quoting: ", x);
      mmb_rows.push_back({i + static_cast<int64_t>(k) * 1000000, join(f, "\t")});
      corpus.push_back(choice_prompt(hint, q, k));
      corpus.push_back(kOptionLetterSuffix);
    }
    const double c = 1.0 / static_cast<double>(n);
    double circ = 1;
    for (size_t k = 0; k < n; ++k) circ *= c;
    mmb_chance[category].push_back(c);
    mmb_circular_chance[category].push_back(circ);
    mmb_chance_all.push_back(c);
    mmb_circular_all.push_back(circ);
    ++sum.mmbench_questions;
  }
  sum.eval_images = static_cast<size_t>(o.eval_size);
  sum.textvqa_questions = tvqa_questions.size();
  sum.mmbench_rows = mmb_rows.size();

  const std::string tvqa_q_path = path_join(dir, "eval/textvqa_questions.jsonl");
  write_output(tvqa_q_path, to_json_lines_text(tvqa_questions));
  OrderedJson ann = OrderedJson::object();
  ann["dataset_type"] = "val";
  ann["dataset_name"] = "textvqa";
  ann["dataset_version"] = "0.5.1";
  ann["data"] = std::move(tvqa_data);
  const std::string tvqa_a_path = path_join(dir, "eval/textvqa_annotations.json");
  write_output(tvqa_a_path, ann.dump());
  // Rows in index order: base questions first, then each round of circular variants.
  std::stable_sort(mmb_rows.begin(), mmb_rows.end(),
                   [](const MmbRow& a, const MmbRow& b) { return a.index < b.index; });
  std::string tsv =
      "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment"
      "\tsplit\n";
  for (const auto& row : mmb_rows) tsv += row.line + "\n";
  const std::string mmb_path = path_join(dir, "eval/mmbench.tsv");
  write_output(mmb_path, tsv);

  // ---- tokenizer over every text
  for (const auto& w : synth_words()) corpus.push_back(w);
  for (const auto& c : synth_colours()) corpus.push_back(c);
  for (const auto& k : synth_shape_kinds()) corpus.push_back(k);
  for (const auto& [q, a] : text_facts()) corpus.push_back(q + " " + a);
  const std::string tok_path = path_join(dir, "tokenizer/tokenizer.model");
  try {
    train_gemma_style_tokenizer(corpus, tok_path, o.vocab_size, static_cast<uint64_t>(o.seed));
  } catch (const Error& e) {
    // BPE runs out of merges on a small corpus (few images); sentencepiece then names the
    // largest vocabulary it can build. Take that: the requested size is an upper bound.
    const std::string msg = e.what();
    const std::string key = "Please set it to a value <= ";
    const size_t at = msg.find(key);
    if (msg.find("Vocabulary size too high") == std::string::npos || at == std::string::npos) throw;
    const int fit = std::atoi(msg.c_str() + at + key.size());
    if (fit <= 0 || fit >= o.vocab_size) throw;
    sum.tokenizer_note =
        str_cat("the text supports only ", fit, " tokenizer pieces (asked for ", o.vocab_size, ")");
    train_gemma_style_tokenizer(corpus, tok_path, fit, static_cast<uint64_t>(o.seed));
  }
  normalise_trainer_paths(tok_path);
  sum.tokenizer_vocab = Tokenizer::load(tok_path).vocab_size();
  MGM_CHECK(sum.tokenizer_vocab <= o.vocab_size, tok_path, ": tokenizer has ", sum.tokenizer_vocab,
            " pieces, more than --vocab_size ", o.vocab_size);

  // ---- manifest
  OrderedJson man = OrderedJson::object();
  man["generator"] = "mgm data synth";
  man["format_version"] = 1;
  man["seed"] = o.seed;
  man["size"] = o.size;
  man["eval_size"] = o.eval_size;
  man["image_size"] = o.image_size;
  man["vocab_size"] = o.vocab_size;
  man["caption_noise"] = o.caption_noise;
  man["tokenizer_vocab_size"] = sum.tokenizer_vocab;
  man["image_folder"] = "images";
  OrderedJson files = OrderedJson::object();
  files["pretrain_dj"] = "pretrain_dj.jsonl";
  files["pretrain"] = "pretrain.json";
  files["finetune"] = "finetune.json";
  files["textvqa_questions"] = "eval/textvqa_questions.jsonl";
  files["textvqa_annotations"] = "eval/textvqa_annotations.json";
  files["mmbench"] = "eval/mmbench.tsv";
  files["tokenizer"] = "tokenizer/tokenizer.model";
  files["train_images"] = "images/train";
  files["eval_images"] = "images/eval";
  man["files"] = files;
  OrderedJson counts = OrderedJson::object();
  counts["train_images"] = sum.train_images;
  counts["eval_images"] = sum.eval_images;
  counts["pretrain_samples"] = sum.pretrain_samples;
  counts["finetune_samples"] = sum.finetune_samples;
  counts["finetune_text_only"] = sum.finetune_text_only;
  counts["finetune_turns"] = sum.finetune_turns;
  counts["textvqa_questions"] = sum.textvqa_questions;
  counts["mmbench_questions"] = sum.mmbench_questions;
  counts["mmbench_rows"] = sum.mmbench_rows;
  man["counts"] = counts;
  OrderedJson vocab = OrderedJson::object();
  vocab["colours"] = synth_colours();
  OrderedJson rgb = OrderedJson::object();
  for (const auto& c : colour_table()) rgb[c.name] = c.rgb;
  rgb[kTextGreyName] = kTextRgb;
  vocab["colour_rgb"] = rgb;
  vocab["shapes"] = synth_shape_kinds();
  vocab["words"] = synth_words();
  vocab["positions"] = synth_positions();
  vocab["counts"] = {"1", "2", "3"};
  man["vocabularies"] = vocab;
  // Chance: 1 / number of possible answers (TextVQA) or options (MMBench, single pass); for
  // MMBench's circular evaluation a guesser must hit every rotation: (1/n)^n.
  OrderedJson chance = OrderedJson::object();
  chance["question_kinds"] = {{"colour", 1.0 / static_cast<double>(synth_colours().size())},
                              {"shape", 1.0 / static_cast<double>(synth_shape_kinds().size())},
                              {"count", 1.0 / 3},
                              {"position", 1.0 / static_cast<double>(synth_positions().size())},
                              {"word", 1.0 / static_cast<double>(synth_words().size())},
                              {"yes_no", 0.5}};
  OrderedJson tc = OrderedJson::object();
  tc["overall"] = mean(tvqa_chance_all);
  for (const auto& [k, v] : tvqa_chance) tc[k] = mean(v);
  chance["textvqa"] = tc;
  OrderedJson mc = OrderedJson::object(), mcc = OrderedJson::object();
  mc["overall"] = mean(mmb_chance_all);
  mcc["overall"] = mean(mmb_circular_all);
  for (const auto& [k, v] : mmb_chance) mc[k] = mean(v);
  for (const auto& [k, v] : mmb_circular_chance) mcc[k] = mean(v);
  chance["mmbench"] = mc;
  chance["mmbench_circular"] = mcc;
  man["chance"] = chance;
  const std::string man_path = path_join(dir, "synth.json");
  write_json_file(man_path, man, 2);

  sum.files = {dj_path,     pretrain_path, finetune_path, tvqa_q_path,
               tvqa_a_path, mmb_path,      tok_path,      man_path};
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return sum;
}

}  // namespace mgm::data
