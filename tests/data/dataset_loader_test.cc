// SupervisedDataset (the per-sample pipeline, its errors) and the prefetching Loader (order,
// determinism across worker counts, bad-sample policies, back-pressure, early destruction).
// Expectations come from `mgm data inspect`'s pipeline and from collating the same plan
// synchronously, sample by sample.
#include "data/dataset.h"

#include <ATen/ops/equal.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/inspect.h"
#include "data/loader.h"
#include "data/sampler.h"
#include "tests_util.h"

namespace mgm::data {
namespace {

constexpr int64_t kAux = 64;
constexpr int64_t kLr = 16;

// A binary PPM (P6) of w x h with seeded pixels: any size, no encoder needed.
void write_ppm(const std::string& path, int w, int h, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s = "P6\n" + std::to_string(w) + " " + std::to_string(h) + "\n255\n";
  for (int i = 0; i < w * h * 3; ++i) s.push_back(static_cast<char>(rng() & 0xff));
  write_file_atomic(path, s);
}

Json turn(const std::string& from, const std::string& value) {
  return Json{{"from", from}, {"value", value}};
}

Json record(const Json& id, const Json& image, const std::string& q, const std::string& a) {
  Json r = Json::object();
  r["id"] = id;
  if (!image.is_null()) r["image"] = image;
  r["conversations"] = Json::array({turn("human", q), turn("gpt", a)});
  return r;
}

struct Fixture {
  std::string dir;
  std::shared_ptr<const Tokenizer> tok;
};

// One tokenizer for the whole test program (training it is the slow part).
const Fixture& fixture() {
  static Fixture f = [] {
    Fixture x;
    x.dir = test::temp_dir("dsl");
    std::vector<std::string> corpus;
    const char* words[] = {"what", "colour", "is",     "the", "circle", "red",   "blue", "square",
                           "how",  "many",   "shapes", "are", "there",  "three", "left", "of"};
    std::mt19937 rng(3);
    for (int i = 0; i < 120; ++i) {
      std::string s;
      for (int k = 0; k < 8; ++k) s += std::string(k ? " " : "") + words[rng() % 16];
      corpus.push_back(s);
    }
    train_gemma_style_tokenizer(corpus, x.dir + "/tokenizer.model", 300, 1);
    x.tok = std::make_shared<const Tokenizer>(Tokenizer::load(x.dir + "/tokenizer.model"));
    return x;
  }();
  return f;
}

// A dataset of n samples: every third text-only, the others images of mixed sizes (big ones
// take far longer to decode and resize than small ones, so worker timing is uneven). `bad`
// lists sample indices whose image file is missing.
std::string make_dataset(const std::string& tag, int n, const std::vector<int>& bad = {}) {
  std::string d = test::temp_dir(tag);
  Json arr = Json::array();
  const char* qs[] = {"what colour is the circle", "how many shapes are there",
                      "is the square left of the circle"};
  const char* as[] = {"red", "three", "blue square"};
  for (int i = 0; i < n; ++i) {
    Json image;
    std::string q = qs[i % 3];
    if (i % 3 != 2) {
      const std::string name = "img" + std::to_string(i) + ".ppm";
      const bool big = i % 5 == 0;
      if (std::find(bad.begin(), bad.end(), i) == bad.end())
        write_ppm(d + "/" + name, big ? 640 : 9 + i, big ? 480 : 7 + (i % 4), 100 + i);
      image = i % 2 ? Json(name) : Json::array({name});  // a one-entry list works too
      q = i % 4 ? "<image>\n" + q : q + " <image>";
    }
    arr.push_back(record(i % 2 ? Json("s" + std::to_string(i)) : Json(i), image, q, as[i % 3]));
  }
  write_file_atomic(d + "/data.json", arr.dump());
  return d;
}

DatasetConfig config_for(const std::string& d, AspectMode aspect = AspectMode::kPad) {
  DatasetConfig c;
  c.data_path = d + "/data.json";
  c.image_folder = d;
  c.aspect = aspect;
  c.image_size_aux = kAux;
  return c;
}

CollatorConfig collator() {
  CollatorConfig c;
  c.aux_size = kAux;
  c.lr_size = kLr;
  return c;
}

void expect_same_batch(const Batch& a, const Batch& b, const std::string& what) {
  ASSERT_TRUE(a.input_ids.defined() && b.input_ids.defined()) << what;
  EXPECT_TRUE(at::equal(a.input_ids, b.input_ids)) << what;
  EXPECT_TRUE(at::equal(a.labels, b.labels)) << what;
  EXPECT_TRUE(at::equal(a.attention_mask, b.attention_mask)) << what;
  EXPECT_TRUE(at::equal(a.images, b.images)) << what;
  EXPECT_TRUE(at::equal(a.images_aux, b.images_aux)) << what;
}

// The expectation: each batch of the plan collated on this thread from dataset.get().
std::vector<Batch> synchronous(const SupervisedDataset& ds, const std::vector<PlannedBatch>& plan) {
  std::vector<Batch> out;
  for (const auto& pb : plan) {
    std::vector<CollatorSample> v;
    for (int64_t i : pb.indices) v.push_back(ds.get(static_cast<size_t>(i)));
    out.push_back(collate(v, collator()));
  }
  return out;
}

// Two epochs of the modality-grouped sampler, as the trainer builds its plan.
std::vector<PlannedBatch> sampler_plan(const SupervisedDataset& ds, int64_t bs) {
  SamplerConfig sc;
  sc.kind = SamplerKind::kModalityGrouped;
  sc.batch_size = bs;
  sc.seed = 5;
  Sampler s(sc, ds.modality_lengths());
  std::vector<PlannedBatch> plan;
  for (int64_t k = 0; k < 2 * s.batches_per_epoch(); ++k) {
    SamplerState st = s.state();
    PlannedBatch pb;
    pb.epoch = st.epoch;
    pb.position = st.position;
    pb.indices = s.next();
    plan.push_back(std::move(pb));
  }
  return plan;
}

// Dataset -------------------------------------------------------------------------------------

TEST(Dataset, GetEqualsInspectForEverySample) {
  const std::string d = make_dataset("ds_inspect", 9);
  SupervisedDataset ds(config_for(d), fixture().tok);
  ASSERT_EQ(ds.size(), 9u);
  EXPECT_EQ(ds.sample(1).id, "s1");
  EXPECT_EQ(ds.sample(2).id, "2");
  InspectOptions o;
  o.data_path = d + "/data.json";
  o.image_folder = d;
  o.tokenizer = fixture().dir + "/tokenizer.model";
  o.aspect = AspectMode::kPad;
  o.collator = collator();
  for (size_t i = 0; i < ds.size(); ++i) {
    o.index = static_cast<int64_t>(i);
    InspectResult r = inspect_sample(o);
    ASSERT_TRUE(r.problem.empty()) << r.problem;
    CollatorSample cs = ds.get(i);
    EXPECT_EQ(cs.image_aux.empty(), i % 3 == 2) << i;  // text-only samples carry no image
    if (!cs.image_aux.empty()) {
      EXPECT_EQ(cs.image_aux.size(), static_cast<size_t>(3 * kAux * kAux));
    }
    EXPECT_EQ(cs.input_ids.size(), cs.labels.size());
    expect_same_batch(collate({cs}, collator()), r.batch, "sample " + std::to_string(i));
    // Supervised: the answer, <end_of_turn>, "\n" and <eos> (spec §8).
    std::vector<int64_t> sup;
    for (size_t k = 0; k < cs.labels.size(); ++k)
      if (cs.labels[k] != kIgnoreIndex) sup.push_back(cs.input_ids[k]);
    const char* as[] = {"red", "three", "blue square"};
    EXPECT_EQ(sup, fixture().tok->encode(std::string(as[i % 3]) + "<end_of_turn>\n<eos>", false));
  }
  // The aux image is the preprocessed file, not a placeholder: two different images differ.
  EXPECT_NE(ds.get(0).image_aux, ds.get(1).image_aux);
  // modality_lengths: + words for image samples, - for text-only (sampler.h).
  auto ml = ds.modality_lengths();
  ASSERT_EQ(ml.size(), 9u);
  EXPECT_EQ(ml[0], 5 + 1 + 1);  // "what colour is the circle" "<image>" + "red"
  EXPECT_EQ(ml[2], -(7 + 2));   // text-only
}

TEST(Dataset, SquareAspectAlsoMatchesInspect) {
  const std::string d = make_dataset("ds_square", 2);
  SupervisedDataset ds(config_for(d, AspectMode::kSquare), fixture().tok);
  InspectOptions o;
  o.data_path = d + "/data.json";
  o.image_folder = d;
  o.tokenizer = fixture().dir + "/tokenizer.model";
  o.aspect = AspectMode::kSquare;
  o.collator = collator();
  InspectResult r = inspect_sample(o);
  expect_same_batch(collate({ds.get(0)}, collator()), r.batch, "square");
  o.aspect = AspectMode::kPad;  // a 640x480 image: pad and square give different pixels
  EXPECT_FALSE(at::equal(inspect_sample(o).batch.images_aux, r.batch.images_aux));
}

// The SampleError for sample `i` of a dataset made of `records`; fails when there is none.
SampleError error_of(const std::string& tag, const Json& records, size_t i,
                     const std::string& version = "gemma") {
  std::string d = test::temp_dir(tag);
  write_ppm(d + "/ok.ppm", 12, 10, 1);
  write_file_atomic(d + "/bad.png", "\x89PNG\r\n\x1a\n this is not an image");
  write_file_atomic(d + "/data.jsonl", [&] {
    std::string s;
    for (const auto& r : records) s += r.dump() + "\n";
    return s;
  }());
  DatasetConfig c = config_for(d);
  c.data_path = d + "/data.jsonl";
  c.version = version;
  SupervisedDataset ds(c, fixture().tok);
  try {
    ds.get(i);
  } catch (const SampleError& e) {
    return e;
  }
  ADD_FAILURE() << tag << ": no SampleError";
  return SampleError(0, "", "");
}

void expect_names(const SampleError& e, size_t index, const std::string& id,
                  const std::string& reason_part) {
  EXPECT_EQ(e.index, index);
  EXPECT_EQ(e.id, id);
  EXPECT_NE(e.reason.find(reason_part), std::string::npos) << e.reason;
  const std::string what = e.what();
  EXPECT_NE(what.find("'" + id + "'"), std::string::npos) << what;
  EXPECT_NE(what.find("#" + std::to_string(index)), std::string::npos) << what;
  EXPECT_NE(what.find(reason_part), std::string::npos) << what;
}

TEST(Dataset, UnusableSamplesAreSampleErrorsNamingTheSample) {
  const std::string q = "<image>\nwhat colour is the circle";
  Json ok = record("fine", "ok.ppm", q, "red");
  {
    SampleError e =
        error_of("err_missing", Json::array({ok, record("m1", "gone.ppm", q, "red")}), 1);
    expect_names(e, 1, "m1", "gone.ppm");
    EXPECT_NE(e.reason.find("not found"), std::string::npos) << e.reason;
  }
  {
    SampleError e = error_of("err_decode", Json::array({record(77, "bad.png", q, "red")}), 0);
    expect_names(e, 0, "77", "bad.png");
  }
  {
    SampleError e = error_of(
        "err_two",
        Json::array({ok, ok, record("two", Json::array({"ok.ppm", "ok.ppm"}), q, "red")}), 2);
    expect_names(e, 2, "two", "has 2 images; MGM trains one image per sample");
  }
  {
    // "<eos>" inside a message splits the gemma template's rounds wrongly.
    SampleError e =
        error_of("err_round", Json::array({record("r", "ok.ppm", q, "red <eos> blue")}), 0);
    expect_names(e, 0, "r", "does not split");
  }
  {
    // vicuna_v1 with a Gemma tokenizer: the reference's per-round "- 1" does not add up after
    // the first round, so a two-round sample is a tokenisation mismatch (never trained on with
    // all labels masked).
    Json two = record("tworound", "ok.ppm", q, "red");
    two["conversations"].push_back(turn("human", "how many shapes"));
    two["conversations"].push_back(turn("gpt", "three"));
    SampleError e = error_of("err_mismatch", Json::array({two}), 0, "vicuna_v1");
    expect_names(e, 0, "tworound", "tokenization mismatch");
  }
  {
    Json bad = record("alt", "ok.ppm", q, "red");
    bad["conversations"][1]["from"] = "human";
    SampleError e = error_of("err_alt", Json::array({bad}), 0);
    expect_names(e, 0, "alt", "does not alternate");
  }
}

TEST(Dataset, FormatErrorsAreFatalUpFront) {
  std::string d = test::temp_dir("ds_format");
  write_file_atomic(d + "/data.jsonl",
                    "{\"id\": 1, \"conversations\": [{\"from\": \"human\", \"value\": \"a\"}, "
                    "{\"from\": \"gpt\", \"value\": \"b\"}]}\n{\"id\": 2}\n");
  DatasetConfig c = config_for(d);
  c.data_path = d + "/data.jsonl";
  try {
    SupervisedDataset ds(c, fixture().tok);
    FAIL() << "no FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("data.jsonl"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  c.version = "llama9";
  EXPECT_THROW(SupervisedDataset(c, fixture().tok), UsageError);
}

// Loader --------------------------------------------------------------------------------------

TEST(Loader, AnyWorkerCountGivesTheSynchronousBatchesInPlanOrder) {
  const std::string d = make_dataset("ld_same", 23);
  SupervisedDataset ds(config_for(d), fixture().tok);
  const auto plan = sampler_plan(ds, 3);
  ASSERT_GE(plan.size(), 14u);
  const std::vector<Batch> want = synchronous(ds, plan);
  // (workers, prefetch): synchronous, one worker, several workers with a tight and a loose
  // window. Big and small images in one batch make the workers finish out of order.
  size_t planned_samples = 0;
  for (const auto& pb : plan) planned_samples += pb.indices.size();
  for (auto [workers, prefetch] :
       std::vector<std::pair<int, int>>{{0, 1}, {1, 2}, {3, 1}, {3, 4}}) {
    LoaderConfig lc;
    lc.num_workers = workers;
    lc.prefetch_batches = prefetch;
    lc.collator = collator();
    Loader loader(ds, lc, plan);
    for (size_t b = 0; b < plan.size(); ++b) {
      std::optional<LoadedBatch> got = loader.next();
      const std::string what = "workers " + std::to_string(workers) + " prefetch " +
                               std::to_string(prefetch) + " batch " + std::to_string(b);
      ASSERT_TRUE(got.has_value()) << what;
      EXPECT_EQ(got->indices, plan[b].indices) << what;
      EXPECT_EQ(got->epoch, plan[b].epoch) << what;
      EXPECT_EQ(got->position, plan[b].position) << what;
      ASSERT_EQ(got->ids.size(), plan[b].indices.size());
      for (size_t k = 0; k < got->ids.size(); ++k)
        EXPECT_EQ(got->ids[k], ds.sample(static_cast<size_t>(plan[b].indices[k])).id) << what;
      EXPECT_TRUE(got->skipped.empty()) << what;
      expect_same_batch(got->batch, want[b], what);
    }
    EXPECT_FALSE(loader.next().has_value());
    EXPECT_FALSE(loader.next().has_value());
    EXPECT_EQ(loader.samples_decoded(), static_cast<int64_t>(planned_samples));
  }
}

TEST(Loader, OrderHoldsWhenEarlySamplesAreTheSlowOnes) {
  // Every batch starts with a big image and continues with tiny ones, so later samples (and
  // later batches) finish first.
  const std::string d = make_dataset("ld_uneven", 20);
  SupervisedDataset ds(config_for(d), fixture().tok);
  // 0, 10 and 15 are 640x480, the others at most 28x10 (make_dataset).
  const std::vector<std::vector<int64_t>> order = {
      {0, 1, 3, 4}, {10, 6, 7, 9}, {15, 12, 13, 16}, {0, 18, 19, 1}};
  std::vector<PlannedBatch> plan;
  for (size_t b = 0; b < order.size(); ++b) {
    PlannedBatch pb;
    pb.position = static_cast<int64_t>(b);
    pb.indices = order[b];
    plan.push_back(pb);
  }
  const std::vector<Batch> want = synchronous(ds, plan);
  LoaderConfig lc;
  lc.num_workers = 4;
  lc.prefetch_batches = 4;
  lc.collator = collator();
  Loader loader(ds, lc, plan);
  for (size_t b = 0; b < plan.size(); ++b) {
    auto got = loader.next();
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->position, static_cast<int64_t>(b));
    EXPECT_EQ(got->indices, plan[b].indices);
    expect_same_batch(got->batch, want[b], "batch " + std::to_string(b));
  }
}

std::vector<PlannedBatch> simple_plan(const std::vector<std::vector<int64_t>>& batches) {
  std::vector<PlannedBatch> plan;
  for (size_t b = 0; b < batches.size(); ++b) {
    PlannedBatch pb;
    pb.indices = batches[b];
    pb.epoch = 1;
    pb.position = static_cast<int64_t>(b) + 10;
    plan.push_back(pb);
  }
  return plan;
}

TEST(Loader, ErrorPolicyThrowsTheFirstBadSampleOfTheBatch) {
  const std::string d = make_dataset("ld_error", 12, {4, 7});
  SupervisedDataset ds(config_for(d), fixture().tok);
  const auto plan = simple_plan({{0, 1, 2}, {3, 7, 4}, {5, 6}});
  for (int workers : {0, 3}) {
    LoaderConfig lc;
    lc.num_workers = workers;
    lc.collator = collator();
    Loader loader(ds, lc, plan);
    ASSERT_TRUE(loader.next().has_value());
    try {
      loader.next();
      ADD_FAILURE() << "no SampleError";
    } catch (const SampleError& e) {
      // Plan order decides which bad sample is reported: 7 comes before 4 in this batch.
      EXPECT_EQ(e.index, 7u);
      EXPECT_EQ(e.id, "s7");
      EXPECT_NE(std::string(e.what()).find("img7.ppm"), std::string::npos) << e.what();
    }
    // The failed batch counts as consumed; the stream goes on.
    auto last = loader.next();
    ASSERT_TRUE(last.has_value());
    EXPECT_EQ(last->indices, (std::vector<int64_t>{5, 6}));
    EXPECT_FALSE(loader.next().has_value());
  }
}

TEST(Loader, SkipPolicyReturnsTheRestAndListsTheSkips) {
  const std::string d = make_dataset("ld_skip", 12, {4, 7, 10});
  SupervisedDataset ds(config_for(d), fixture().tok);
  const auto plan = simple_plan({{3, 7, 5}, {4, 10}, {0, 1}});
  const std::vector<Batch> want = synchronous(ds, simple_plan({{3, 5}, {0, 1}}));
  for (int workers : {0, 3}) {
    LoaderConfig lc;
    lc.num_workers = workers;
    lc.policy = parse_bad_sample_policy("skip");
    lc.collator = collator();
    Loader loader(ds, lc, plan);
    auto a = loader.next();
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->indices, (std::vector<int64_t>{3, 5}));
    EXPECT_EQ(a->ids, (std::vector<std::string>{"s3", "s5"}));
    expect_same_batch(a->batch, want[0], "skip batch 0");
    ASSERT_EQ(a->skipped.size(), 1u);
    EXPECT_EQ(a->skipped[0].index, 7);
    EXPECT_EQ(a->skipped[0].id, "s7");
    EXPECT_NE(a->skipped[0].reason.find("img7.ppm"), std::string::npos) << a->skipped[0].reason;
    EXPECT_EQ(a->skipped[0].epoch, 1);
    EXPECT_EQ(a->skipped[0].position, 10);

    auto b = loader.next();  // every sample bad: an empty batch, both skips listed
    ASSERT_TRUE(b.has_value());
    EXPECT_TRUE(b->empty());
    EXPECT_FALSE(b->batch.input_ids.defined());
    EXPECT_FALSE(b->batch.images_aux.defined());
    EXPECT_EQ(b->position, 11);
    ASSERT_EQ(b->skipped.size(), 2u);
    EXPECT_EQ(b->skipped[0].id, "4");
    EXPECT_EQ(b->skipped[1].id, "10");

    auto c = loader.next();
    ASSERT_TRUE(c.has_value());
    expect_same_batch(c->batch, want[1], "skip batch 2");
    EXPECT_FALSE(loader.next().has_value());
  }
  EXPECT_THROW(parse_bad_sample_policy("ignore"), UsageError);
  EXPECT_EQ(parse_bad_sample_policy("error"), BadSamplePolicy::kError);
}

TEST(Loader, DecodesAtMostTheWindowAheadAndStopsPromptlyWhenDestroyedEarly) {
  const std::string d = make_dataset("ld_early", 10);
  SupervisedDataset ds(config_for(d), fixture().tok);
  std::vector<std::vector<int64_t>> batches;
  for (int b = 0; b < 50; ++b)
    batches.push_back({b % 10, (b + 3) % 10, (b + 5) % 10, (b + 8) % 10});
  LoaderConfig lc;
  lc.num_workers = 3;
  lc.prefetch_batches = 2;
  lc.collator = collator();
  auto loader = std::make_unique<Loader>(ds, lc, simple_plan(batches));
  ASSERT_TRUE(loader->next().has_value());
  // Give the workers time to run ahead as far as they may: batches 1 and 2 (the window), never
  // more, while nobody consumes.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_LE(loader->samples_decoded(), 4 * (1 + 2));
  const auto t0 = std::chrono::steady_clock::now();
  loader.reset();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 5.0);  // a liveness bound (a hang or draining all 50 batches would blow it)
}

TEST(Loader, RejectsBadConfigurationsAndPlans) {
  const std::string d = make_dataset("ld_cfg", 3);
  SupervisedDataset ds(config_for(d), fixture().tok);
  LoaderConfig lc;
  lc.collator = collator();
  lc.prefetch_batches = 0;
  EXPECT_THROW(Loader(ds, lc, simple_plan({{0}})), UsageError);
  lc.prefetch_batches = 1;
  lc.num_workers = -1;
  EXPECT_THROW(Loader(ds, lc, simple_plan({{0}})), UsageError);
  lc.num_workers = 2;
  lc.collator.aux_size = 32;  // differs from the dataset's image_size_aux
  EXPECT_THROW(Loader(ds, lc, simple_plan({{0}})), UsageError);
  lc.collator = collator();
  EXPECT_THROW(Loader(ds, lc, simple_plan({{0, 3}})), Error);   // index outside
  EXPECT_THROW(Loader(ds, lc, simple_plan({{0}, {}})), Error);  // empty batch
  Loader empty(ds, lc, {});
  EXPECT_FALSE(empty.next().has_value());
}

}  // namespace
}  // namespace mgm::data
