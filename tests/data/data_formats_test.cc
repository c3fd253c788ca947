// Tests for the torch-free dataset formats. Expectations come from (a) hand-written outputs,
// (b) tests/data/ref_data_tools.py, an independent Python model of the reference tools run
// with the venv python, and (c) CPython's own `random` and `json` modules.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/cli_data.h"
#include "data/convert.h"
#include "data/llava.h"
#include "data/py_compat.h"
#include "data/py_random.h"
#include "data/records.h"
#include "tests_util.h"

namespace mgm::data {
namespace {

std::string ref_script() { return test::source_dir() + "/tests/data/ref_data_tools.py"; }

// Runs the Python model; returns its stdout. Fails the test on a non-zero exit.
std::string run_ref(const std::string& dir, const std::string& cmd, const OrderedJson& args) {
  static int n = 0;
  std::string opts = dir + "/ref_args" + std::to_string(n++) + ".json";
  write_file_atomic(opts, args.dump());
  std::string out;
  int rc = test::run_python(ref_script() + " " + cmd + " " + opts, &out);
  EXPECT_EQ(rc, 0) << out;
  return out;
}

std::string write(const std::string& dir, const std::string& name, const std::string& text) {
  std::string p = dir + "/" + name;
  write_file_atomic(p, text);
  return p;
}

using test::error_of;

// ---------------------------------------------------------------------------------------------
// CPython compatibility

TEST(PyRandom, MatchesCpythonStreamAndSample) {
  std::string dir = test::temp_dir("pyrandom");
  const std::vector<int64_t> seeds = {1024, 0, 1, 42, -7, 4294967296LL + 5, 123456789012345LL};
  // (n, k) pairs cover both random.sample branches (pool shuffle when n <= setsize, rejection
  // with a set otherwise) and the setsize boundary (k=6 -> setsize 21 + 4^3 = 85).
  const std::vector<std::pair<uint64_t, uint64_t>> samples = {
      {10, 3},   {5, 5},    {30, 10},     {85, 6}, {86, 6},
      {1000, 7}, {100, 99}, {200000, 40}, {1, 1},  {7, 0}};
  for (int64_t seed : seeds) {
    OrderedJson ops = OrderedJson::array();
    for (int k : {1, 5, 31, 32, 33, 53, 64}) ops.push_back({"bits", k});
    ops.push_back({"random"});
    for (auto [n, k] : samples) ops.push_back({"sample", n, k});
    std::string out = run_ref(dir, "random", {{"seed", seed}, {"ops", ops}});
    OrderedJson expect = OrderedJson::parse(out);
    PyRandom r(seed);
    size_t i = 0;
    for (int k : {1, 5, 31, 32, 33, 53, 64})
      EXPECT_EQ(r.getrandbits(k), expect[i++].get<uint64_t>()) << "seed " << seed << " bits " << k;
    EXPECT_EQ(py_float_repr(r.random()), expect[i++].get<std::string>()) << "seed " << seed;
    for (auto [n, k] : samples) {
      std::vector<uint64_t> got = r.sample_indices(n, k);
      EXPECT_EQ(OrderedJson(got), expect[i++]) << "seed " << seed << " sample " << n << "," << k;
    }
  }
}

TEST(PyCompat, JsonDumpsMatchesPython) {
  std::string dir = test::temp_dir("pydumps");
  OrderedJson v = OrderedJson::parse(
      R"({"id": "a\"b\\c", "t": "tab\there\nnl \u0001 \u007f caf\u00e9 \u4e2d emoji \ud83d\ude00",
      "n": [1, -2, 18446744073709551615, 0.1, 1.0, 1e16, 1e15, 1.5e-7, 0.0001, 1e-5, -0.0, 123456.789e3],
      "e": [], "o": {}, "b": [true, false, null]})");
  for (bool ascii : {true, false}) {
    std::string out = run_ref(dir, "dumps", {{"value", v}, {"ensure_ascii", ascii}});
    EXPECT_EQ(py_json_dumps(v, ascii), out) << "ensure_ascii=" << ascii;
  }
}

TEST(PyCompat, StripUsesPythonWhitespace) {
  EXPECT_EQ(py_strip(" \t\n x y \r\v\f"), "x y");
  EXPECT_EQ(py_strip("\xC2\xA0\xE3\x80\x80x\xE2\x80\xA8"), "x");  // NBSP, ideographic space, LS
  EXPECT_EQ(py_strip("\x1cx\x1f"), "x");
  EXPECT_EQ(py_strip("\xE2\x80\x8Bx"), "\xE2\x80\x8Bx");  // zero-width space is not whitespace
  EXPECT_EQ(py_str(OrderedJson(12)), "12");
  EXPECT_EQ(py_str(OrderedJson(1.0)), "1.0");
  EXPECT_EQ(py_str(OrderedJson("x")), "x");
}

// ---------------------------------------------------------------------------------------------
// Readers and their errors

TEST(LlavaReader, ReadsArrayAndJsonlWithPositions) {
  std::string dir = test::temp_dir("llava_read");
  std::string arr = write(dir, "a.json", R"([
  {"id": "s1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
  {"id": 7, "conversations": [{"from": "human", "value": "text only"}, {"from": "gpt", "value": "ok"}]},
  {"id": "s3", "image": ["x.jpg", "y.jpg"],
   "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
])");
  auto s = read_llava(arr);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].id, "s1");
  EXPECT_EQ(s[0].images, std::vector<std::string>{"a.jpg"});
  EXPECT_EQ(s[0].conversations[0].value, "<image>\nQ");
  EXPECT_EQ(s[0].line, 2u);
  EXPECT_EQ(s[1].id, "7");
  EXPECT_FALSE(s[1].has_image());
  EXPECT_EQ(s[1].line, 3u);
  EXPECT_TRUE(s[2].image_is_list);
  EXPECT_EQ(s[2].images.size(), 2u);
  EXPECT_EQ(s[2].line, 4u);
  EXPECT_EQ(
      py_json_dumps(to_llava_json(s[2]), true),
      R"({"id": "s3", "image": ["x.jpg", "y.jpg"], "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]})");

  std::string jl =
      write(dir, "a.jsonl",
            "{\"id\": \"j1\", \"conversations\": [{\"from\": \"human\", \"value\": \"q\"}]}\n"
            "{\"id\": \"j2\", \"image\": \"i.png\", \"conversations\": [{\"from\": \"human\", "
            "\"value\": \"q\"}]}\n");
  auto j = read_llava(jl);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[1].line, 2u);
  EXPECT_EQ(j[1].images[0], "i.png");
}

TEST(LlavaReader, ErrorsNameFileLineRecordAndId) {
  std::string dir = test::temp_dir("llava_bad");
  std::string p = write(dir, "bad.json", R"([
  {"id": "ok", "conversations": [{"from": "human", "value": "q"}]},
  {"id": "broken",
   "conversations": [{"from": "human", "value": 5}]}
])");
  std::string e = error_of([&] { read_llava(p); });
  EXPECT_NE(e.find(p + ": line 3 (record #1, id 'broken')"), std::string::npos) << e;
  EXPECT_NE(e.find("conversations[0].value must be a string"), std::string::npos) << e;

  p = write(dir, "noconv.json", R"([{"id": 12, "image": "a.jpg"}])");
  e = error_of([&] { read_llava(p); });
  EXPECT_NE(e.find(p + ": line 1 (record #0, id '12'): missing \"conversations\""),
            std::string::npos)
      << e;

  p = write(dir, "syntax.json",
            "[\n {\"id\": \"a\", \"conversations\": []},\n {\"id\": \"b\",, }\n]");
  e = error_of([&] { read_llava(p); });
  EXPECT_NE(e.find(p + ": line 3, column"), std::string::npos) << e;
  EXPECT_NE(e.find("record #1"), std::string::npos) << e;

  p = write(dir, "bad.jsonl",
            "{\"id\": \"a\", \"conversations\": [{\"from\": \"h\", \"value\": \"v\"}]}\n{\"id\": "
            "\"b\" \"x\"}\n");
  e = error_of([&] { read_llava(p); });
  EXPECT_NE(e.find(p + ": line 2, column"), std::string::npos) << e;

  p = write(dir, "blank.jsonl",
            "{\"id\": \"a\", \"conversations\": [{\"from\": \"h\", \"value\": \"v\"}]}\n\n");
  e = error_of([&] { read_llava(p); });
  EXPECT_NE(e.find(p + ": line 2: blank line"), std::string::npos) << e;

  p = write(dir, "img.json",
            R"([{"id": "z9", "image": 3, "conversations": [{"from": "h", "value": "v"}]}])");
  e = error_of([&] { read_llava(p); });
  EXPECT_NE(e.find("id 'z9'): \"image\" must be a string or a list of strings"), std::string::npos)
      << e;
}

// ---------------------------------------------------------------------------------------------
// dj -> llava

const char* kDjMulti =
    "{\"id\": \"000000033471\", \"images\": [\"coco/1.jpg\"], \"text\": \"[[human]]: "
    "<image>\\nWhat colour is the bus?\\n[[gpt]]: White and red.\\n[[human]]: <image>\\nAnd the "
    "sign?\\n[[gpt]]: It says stop. <image>\\n[[human]]: Where?\\n<image>\\n[[gpt]]: On the "
    "street. <|__dj__eoc|>\"}\n"
    "{\"id\": 42, \"images\": [\"a.jpg\", \"a.jpg\"], \"text\": \"[[human]]: Describe.<image>  "
    "\\n[[gpt]]: A cat <|__dj__eoc|>\\n\"}\n"
    "{\"id\": \"t\", \"text\": \"[[human]]: Hi \\u00e9\\u4e2d\\n[[gpt]]: Hello\\u00a0\"}\n";

TEST(DjToLlava, HandWrittenExpectation) {
  std::string dir = test::temp_dir("dj2llava_hand");
  std::string in = write(dir, "in.jsonl", kDjMulti);
  std::string out = dir + "/out.json";
  Warnings w;
  ASSERT_EQ(dj_to_llava_file(in, out, DjToLlavaOptions{}, false, &w), 3u);
  // Written by hand from the reference behaviour: the first sentence keeps its image token,
  // later ones lose a leading/trailing one; trailing separators and eoc are dropped; duplicate
  // images collapse; output is json.dump (ensure_ascii, ", " / ": ").
  const std::string expect =
      R"([{"id": "000000033471", "conversations": [{"from": "human", "value": "<image>\nWhat colour is the bus?"}, )"
      R"({"from": "gpt", "value": "White and red."}, {"from": "human", "value": "And the sign?"}, )"
      R"({"from": "gpt", "value": "It says stop."}, {"from": "human", "value": "Where?"}, )"
      R"({"from": "gpt", "value": "On the street."}], "image": "coco/1.jpg"}, )"
      R"({"id": 42, "conversations": [{"from": "human", "value": "Describe.<image>"}, {"from": "gpt", "value": "A cat"}], "image": "a.jpg"}, )"
      R"({"id": "t", "conversations": [{"from": "human", "value": "Hi \u00e9\u4e2d"}, {"from": "gpt", "value": "Hello"}]}])";
  EXPECT_EQ(read_file(out), expect);
}

struct DjCase {
  const char* name;
  OrderedJson opts;  // ref_data_tools.py option names
};

TEST(DjToLlava, MatchesPythonModelForEveryOption) {
  std::string dir = test::temp_dir("dj2llava_ref");
  std::string in = write(dir, "in.jsonl",
                         std::string(kDjMulti) +
                             "{\"id\": \"c\", \"images\": [\"b.jpg\"], \"text\": \"[[human]]: "
                             "<__dj__image>||Q||[[gpt]]: x <__dj__image>||<END>\"}\n"
                             "{\"id\": \"d\", \"images\": [], \"text\": \"[[user]]: a\\n[[model]]: "
                             "b\\n[[user]]: <image> c\\n[[model]]: <image>\\n\\n d <image>\"}\n");
  const std::vector<DjCase> cases = {
      {"defaults", OrderedJson::object()},
      {"keep_all_images", {{"keep_only_first_image", false}}},
      {"custom_tokens",
       {{"image_special_token", "<__dj__image>"},
        {"sent_seperator", "||"},
        {"eoc_special_token", "<END>"}}},
  };
  for (const auto& c : cases) {
    DjToLlavaOptions o;
    if (c.opts.contains("keep_only_first_image"))
      o.keep_only_first_image = c.opts["keep_only_first_image"];
    if (c.opts.contains("image_special_token"))
      o.image_special_token = c.opts["image_special_token"];
    if (c.opts.contains("sent_seperator")) o.sent_separator = c.opts["sent_seperator"];
    if (c.opts.contains("eoc_special_token")) o.eoc_special_token = c.opts["eoc_special_token"];
    std::string out = dir + "/" + c.name + ".json", ref = dir + "/" + c.name + ".ref.json";
    Warnings w;
    dj_to_llava_file(in, out, o, false, &w);
    OrderedJson a = c.opts;
    a["input"] = in;
    a["output"] = ref;
    run_ref(dir, "dj_to_llava", a);
    EXPECT_EQ(read_file(out), read_file(ref)) << c.name;
  }
}

TEST(DjToLlava, RestoreQuestionsMatchesToolkitUsage) {
  std::string dir = test::temp_dir("dj2llava_restore");
  // The toolkit: llava_to_dj --only_keep_caption (image token <__dj__image>), Data-Juicer edits the
  // captions, then dj_to_llava --image_special_token "<__dj__image>" --restore_questions True.
  std::string orig = write(dir, "stage_1.json", R"([
    {"id": "GCC_1", "image": "g/1.jpg", "conversations": [{"from": "human", "value": "Describe the image.\n<image>"}, {"from": "gpt", "value": "old caption"}]},
    {"id": 5, "image": "g/5.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "model", "value": "x"}]}
  ])");
  std::string in = write(dir, "dj.jsonl",
                         "{\"id\": \"5\", \"text\": \"<__dj__image>\\nA red \\u00e9 car  "
                         "<|__dj__eoc|>\", \"images\": [\"g/5.jpg\"]}\n"
                         "{\"id\": \"GCC_1\", \"text\": \"<__dj__image>\\nnew caption "
                         "<|__dj__eoc|>\", \"images\": [\"g/1.jpg\"]}\n");
  DjToLlavaOptions o;
  o.image_special_token = "<__dj__image>";
  o.restore_questions = true;
  o.original_llava_ds_path = orig;
  std::string out = dir + "/out.json", ref = dir + "/ref.json";
  Warnings w;
  ASSERT_EQ(dj_to_llava_file(in, out, o, false, &w), 2u);
  const std::string expect =
      R"([{"id": 5, "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "model", "value": "A red \u00e9 car"}], "image": "g/5.jpg"}, )"
      R"({"id": "GCC_1", "conversations": [{"from": "human", "value": "Describe the image.\n<image>"}, {"from": "gpt", "value": "new caption"}], "image": "g/1.jpg"}])";
  EXPECT_EQ(read_file(out), expect);
  run_ref(dir, "dj_to_llava",
          {{"input", in},
           {"output", ref},
           {"image_special_token", "<__dj__image>"},
           {"restore_questions", true},
           {"original_llava_ds_path", orig}});
  EXPECT_EQ(read_file(out), read_file(ref));
  EXPECT_TRUE(w.empty()) << w[0];

  // Unknown id: named with file, line, record and id.
  std::string bad = write(
      dir, "bad.jsonl", "{\"id\": \"5\", \"text\": \"x\"}\n{\"id\": \"nope\", \"text\": \"y\"}\n");
  std::string e = error_of([&] { dj_to_llava_file(bad, dir + "/o2.json", o, false, &w); });
  EXPECT_NE(e.find(bad + ": line 2 (record #1, id 'nope'): id 'nope' is not in the original"),
            std::string::npos)
      << e;
  EXPECT_FALSE(path_exists(dir + "/o2.json"));
  // restore_questions without the original dataset is a usage error.
  DjToLlavaOptions no_orig;
  no_orig.restore_questions = true;
  EXPECT_THROW(dj_to_llava_file(in, dir + "/o3.json", no_orig, false, &w), UsageError);
}

TEST(DjToLlava, BadInputsAndOutputs) {
  std::string dir = test::temp_dir("dj2llava_bad");
  Warnings w;
  std::string in = write(dir, "a.jsonl",
                         "{\"id\": \"ok\", \"text\": \"[[human]]: q\\n[[gpt]]: a\"}\n"
                         "{\"id\": \"two\", \"images\": [\"a.jpg\", \"b.jpg\"], \"text\": "
                         "\"[[human]]: q\\n[[gpt]]: a\"}\n");
  std::string e = error_of([&] { dj_to_llava_file(in, dir + "/o.json", {}, false, &w); });
  EXPECT_NE(e.find(in + ": line 2 (record #1, id 'two'): there are 2 distinct images"),
            std::string::npos)
      << e;

  in = write(dir, "b.jsonl",
             "{\"id\": \"u1\", \"text\": \"[[human]]: q\\n[[gpt]]: a\\n[[human]]: orphan\"}\n");
  e = error_of([&] { dj_to_llava_file(in, dir + "/o.json", {}, false, &w); });
  EXPECT_NE(e.find(in + ": line 1 (record #0, id 'u1'): the text has unbalanced"),
            std::string::npos)
      << e;

  in = write(dir, "c.jsonl",
             "{\"id\": \"cap\", \"text\": \"<__dj__image>\\ncaption <|__dj__eoc|>\"}\n");
  e = error_of(
      [&] { dj_to_llava_file(in, dir + "/o.json", {}, false, &w); });  // no roles, no restore
  EXPECT_NE(e.find("id 'cap'): the text has unbalanced"), std::string::npos) << e;

  in = write(dir, "d.jsonl", "{\"id\": \"m\"}\n");
  e = error_of([&] { dj_to_llava_file(in, dir + "/o.json", {}, false, &w); });
  EXPECT_NE(e.find(in + ": line 1 (record #0, id 'm'): missing \"text\""), std::string::npos) << e;

  std::string good =
      write(dir, "g.jsonl", "{\"id\": \"ok\", \"text\": \"[[human]]: q\\n[[gpt]]: a\"}\n");
  EXPECT_THROW(dj_to_llava_file(good, dir + "/o.jsonl", {}, false, &w),
               UsageError);  // must be .json
  std::string existing = write(dir, "exists.json", "keep me");
  std::string msg = error_of([&] { dj_to_llava_file(good, existing, {}, false, &w); });
  EXPECT_NE(msg.find("already exists"), std::string::npos) << msg;
  EXPECT_EQ(read_file(existing), "keep me");
  dj_to_llava_file(good, existing, {}, true, &w);
  EXPECT_EQ(
      read_file(existing),
      R"([{"id": "ok", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])");
}

TEST(DjToLlava, WarnsWhenImageSamplesLackTheImageToken) {
  std::string dir = test::temp_dir("dj2llava_warn");
  std::string in = write(dir, "a.jsonl",
                         "{\"id\": \"x\", \"images\": [\"a.jpg\"], \"text\": \"[[human]]: "
                         "<__dj__image>\\nq\\n[[gpt]]: a\"}\n");
  Warnings w;
  dj_to_llava_file(in, dir + "/o.json", {}, false, &w);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("1 of 1 converted samples have an image but no \"<image>\""),
            std::string::npos)
      << w[0];
}

// ---------------------------------------------------------------------------------------------
// llava -> dj

const char* kLlava = R"([
  {"id": "000000033471", "image": "coco/1.jpg", "conversations": [
    {"from": "human", "value": "<image>\nWhat colour is the bus?"}, {"from": "gpt", "value": "White and red."},
    {"from": "human", "value": "And the sign?"}, {"from": "gpt", "value": "It says stop."},
    {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "On the street \u00e9."}]},
  {"id": 17, "image": "b.jpg", "conversations": [
    {"from": "human", "value": "Describe this.\n<image>"}, {"from": "gpt", "value": "A cat."},
    {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Black."},
    {"from": "human", "value": "Age?"}, {"from": "gpt", "value": "Young."},
    {"from": "human", "value": "Name?"}, {"from": "gpt", "value": "Tom."}]},
  {"id": "txt", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
])";

TEST(LlavaToDj, HandWrittenExpectation) {
  std::string dir = test::temp_dir("llava2dj_hand");
  std::string in = write(dir, "in.json", kLlava);
  LlavaToDjOptions o;
  o.only_keep_caption = true;
  o.image_special_token = kDjImageToken;
  std::string cap = write(
      dir, "cap.json",
      R"([{"id": 3, "image": "c.jpg", "conversations": [{"from": "human", "value": "<__dj__image>\nDescribe."}, {"from": "gpt", "value": "A dog."}]}])");
  Warnings w;
  llava_to_dj_file(cap, dir + "/cap.jsonl", o, false, &w);
  w.clear();
  EXPECT_EQ(read_file(dir + "/cap.jsonl"),
            "{\"id\": \"3\", \"text\": \"<__dj__image>\\nA dog. <|__dj__eoc|>\", \"images\": "
            "[\"c.jpg\"]}\n");
  llava_to_dj_file(in, dir + "/multi.jsonl", LlavaToDjOptions{}, false, &w);
  std::string first_line =
      read_file(dir + "/multi.jsonl").substr(0, read_file(dir + "/multi.jsonl").find('\n'));
  EXPECT_EQ(first_line,
            "{\"id\": \"000000033471\", \"text\": \"[[human]]: <image>\\nWhat colour is the "
            "bus?\\n[[gpt]]: White and red.\\n"
            "[[human]]: And the sign?\\n[[gpt]]: It says stop.\\n[[human]]: Where?\\n[[gpt]]: On "
            "the street \xC3\xA9. <|__dj__eoc|>\", "
            "\"images\": [\"coco/1.jpg\"]}");
  ASSERT_EQ(w.size(), 1u);  // the text-only sample
  EXPECT_NE(w[0].find("1 samples have no image"), std::string::npos);
}

TEST(LlavaToDj, MatchesPythonModelForEveryOption) {
  std::string dir = test::temp_dir("llava2dj_ref");
  std::string in = write(dir, "in.json", kLlava);
  const std::vector<OrderedJson> cases = {
      OrderedJson::object(),
      {{"only_keep_caption", true}},
      {{"split_chunk", true}},
      {{"split_chunk", true}, {"image_broadcast", true}, {"image_broadcast_pos", "before"}},
      {{"split_chunk", true}, {"image_broadcast", true}, {"image_broadcast_pos", "after"}},
      {{"split_chunk", true}, {"image_broadcast", true}, {"image_broadcast_pos", "follow"}},
      {{"split_chunk", true},
       {"image_broadcast", true},
       {"image_broadcast_pos", "random"},
       {"seed", 3}},
      {{"split_chunk", true},
       {"image_broadcast", true},
       {"image_broadcast_pos", "random"},
       {"seed", 1024}},
      {{"str_id", false}, {"add_eoc_at_last", false}},
      {{"sent_seperator", " || "}, {"eoc_special_token", "<eoc>"}, {"split_chunk", true}},
  };
  int n = 0;
  for (const auto& c : cases) {
    LlavaToDjOptions o;
    if (c.contains("only_keep_caption")) o.only_keep_caption = c["only_keep_caption"];
    if (c.contains("split_chunk")) o.split_chunk = c["split_chunk"];
    if (c.contains("image_broadcast")) o.image_broadcast = c["image_broadcast"];
    if (c.contains("image_broadcast_pos")) o.image_broadcast_pos = c["image_broadcast_pos"];
    if (c.contains("seed")) o.seed = c["seed"];
    if (c.contains("str_id")) o.str_id = c["str_id"];
    if (c.contains("add_eoc_at_last")) o.add_eoc_at_last = c["add_eoc_at_last"];
    if (c.contains("sent_seperator")) o.sent_separator = c["sent_seperator"];
    if (c.contains("eoc_special_token")) o.eoc_special_token = c["eoc_special_token"];
    std::string out = dir + "/o" + std::to_string(n) + ".jsonl",
                ref = dir + "/r" + std::to_string(n) + ".jsonl";
    ++n;
    Warnings w;
    llava_to_dj_file(in, out, o, false, &w);
    OrderedJson a = c;
    a["input"] = in;
    a["output"] = ref;
    run_ref(dir, "llava_to_dj", a);
    EXPECT_EQ(read_file(out), read_file(ref)) << c.dump();
  }
}

TEST(LlavaToDj, BadInputs) {
  std::string dir = test::temp_dir("llava2dj_bad");
  Warnings w;
  std::string in = write(
      dir, "a.json",
      R"([{"id": "mid", "image": "a.jpg", "conversations": [{"from": "human", "value": "Q <image> more"}, {"from": "gpt", "value": "A"}]}])");
  std::string e = error_of([&] { llava_to_dj_file(in, dir + "/o.jsonl", {}, false, &w); });
  EXPECT_NE(e.find(in + ": line 1 (record #0, id 'mid'): the image token"), std::string::npos) << e;
  in = write(dir, "b.json",
             "[\n{\"id\": \"odd\", \"conversations\": [{\"from\": \"human\", \"value\": \"Q\"}]}]");
  e = error_of([&] { llava_to_dj_file(in, dir + "/o.jsonl", {}, false, &w); });
  EXPECT_NE(e.find(in + ": line 2 (record #0, id 'odd'): the conversations have unbalanced"),
            std::string::npos)
      << e;
  LlavaToDjOptions o;
  o.image_broadcast = true;
  EXPECT_THROW(llava_to_dj_file(in, dir + "/o.jsonl", o, false, &w),
               UsageError);  // needs split_chunk
  EXPECT_THROW(llava_to_dj_file(in, dir + "/o.json", {}, false, &w), UsageError);  // must be .jsonl
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(RoundTrip, LlavaToDjToLlavaIsIdentityForStandardData) {
  std::string dir = test::temp_dir("roundtrip");
  // Image token leading the first turn, string ids, strict alternation: survives both ways.
  std::string in = write(
      dir, "in.json",
      R"([{"id": "a1", "conversations": [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2 \u4e2d"}], "image": "x/1.jpg"}, {"id": "a2", "conversations": [{"from": "human", "value": "Text only?"}, {"from": "gpt", "value": "Yes."}]}])");
  Warnings w;
  llava_to_dj_file(in, dir + "/mid.jsonl", LlavaToDjOptions{}, false, &w);
  dj_to_llava_file(dir + "/mid.jsonl", dir + "/back.json", DjToLlavaOptions{}, false, &w);
  EXPECT_EQ(read_file(dir + "/back.json"), read_file(in));

  // Caption-only (the toolkit's pretraining path) comes back through --restore_questions.
  std::string orig = write(
      dir, "orig.json",
      R"([{"id": "c1", "conversations": [{"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": "A dog \u00e9."}], "image": "d.jpg"}])");
  LlavaToDjOptions cap;
  cap.only_keep_caption = true;
  llava_to_dj_file(orig, dir + "/cap.jsonl", cap, false, &w);
  DjToLlavaOptions back;
  back.restore_questions = true;
  back.original_llava_ds_path = orig;
  dj_to_llava_file(dir + "/cap.jsonl", dir + "/cap_back.json", back, false, &w);
  EXPECT_EQ(read_file(dir + "/cap_back.json"), read_file(orig));
}

// ---------------------------------------------------------------------------------------------
// Sample-number cap

TEST(Sample, SubsetIdenticalToPythonRandomSample) {
  std::string dir = test::temp_dir("sample");
  std::string jl;
  for (int i = 0; i < 300; ++i)
    jl += "{\"id\": \"s" + std::to_string(i) + "\", \"text\": \"<__dj__image>\\ncap \xC3\xA9 " +
          std::to_string(i) + " <|__dj__eoc|>\", \"images\": [\"i/" + std::to_string(i) +
          ".jpg\"], \"score\": 0.5}\n";
  std::string in = write(dir, "in.jsonl", jl);
  struct C {
    int64_t max, seed;
  };
  for (C c : {C{100, 1024}, C{5, 1024}, C{299, 7}, C{0, 1}, C{300, 1024}, C{1000, 1024}}) {
    std::string out = dir + "/o" + std::to_string(c.max) + "_" + std::to_string(c.seed) + ".jsonl";
    std::string ref = out + ".ref";
    SampleResult r = sample_dataset_file(in, out, c.max, c.seed, false);
    EXPECT_EQ(r.total, 300u);
    EXPECT_EQ(r.kept, static_cast<size_t>(std::min<int64_t>(c.max, 300)));
    run_ref(dir, "sample", {{"input", in}, {"output", ref}, {"max", c.max}, {"seed", c.seed}});
    EXPECT_EQ(read_file(out), read_file(ref)) << c.max << " " << c.seed;
  }
  // JSON array in, JSON array out, through the command line.
  std::string arr =
      write(dir, "in.json",
            R"([{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}, {"id": 5}, {"id": 6}, {"id": 7}])");
  ASSERT_EQ(
      run_sample({"--data_path", arr, "--out", dir + "/a.json", "--max", "3", "--seed", "1024"}),
      0);
  run_ref(dir, "sample",
          {{"input", arr}, {"output", dir + "/a.ref.json"}, {"max", 3}, {"seed", 1024}});
  EXPECT_EQ(read_file(dir + "/a.json"), read_file(dir + "/a.ref.json"));
  // The Python flag names work too; an existing output is refused.
  EXPECT_THROW(run_sample({"--input_dataset", arr, "--output_dataset", dir + "/a.json",
                           "--sample_num", "3"}),
               UsageError);
  EXPECT_THROW(run_sample({"--data_path", arr, "--out", dir + "/x.json", "--max", "-1"}),
               UsageError);
}

// ---------------------------------------------------------------------------------------------
// Command line

TEST(Cli, ConvertBothWaysWithPythonFlagNames) {
  std::string dir = test::temp_dir("cli");
  std::string in = write(dir, "in.json", kLlava);
  ASSERT_EQ(run_convert({"--from", "llava", "--to", "dj", "--llava_ds_path", in, "--target_ds_path",
                         dir + "/o.jsonl", "--split_chunk", "True"}),
            0);
  ASSERT_EQ(run_convert({"--from", "dj", "--to", "llava", "--input", dir + "/o.jsonl", "--output",
                         dir + "/o.json", "--keep_only_first_image", "False"}),
            0);
  run_ref(dir, "llava_to_dj", {{"input", in}, {"output", dir + "/r.jsonl"}, {"split_chunk", true}});
  run_ref(
      dir, "dj_to_llava",
      {{"input", dir + "/r.jsonl"}, {"output", dir + "/r.json"}, {"keep_only_first_image", false}});
  EXPECT_EQ(read_file(dir + "/o.jsonl"), read_file(dir + "/r.jsonl"));
  EXPECT_EQ(read_file(dir + "/o.json"), read_file(dir + "/r.json"));
  // Options of the other direction, unknown directions and existing outputs are usage errors.
  EXPECT_THROW(run_convert({"--from", "dj", "--to", "llava", "--input", dir + "/o.jsonl",
                            "--output", dir + "/p.json", "--split_chunk"}),
               UsageError);
  EXPECT_THROW(run_convert({"--from", "dj", "--to", "mmc4", "--input", "a", "--output", "b"}),
               UsageError);
  EXPECT_THROW(run_convert({"--from", "dj", "--to", "llava", "--input", dir + "/o.jsonl",
                            "--output", dir + "/o.json"}),
               UsageError);
  EXPECT_THROW(run_convert({"--from", "dj", "--to", "llava", "--input", dir + "/o.jsonl",
                            "--output", dir + "/q.json", "--eoc_special_token", ""}),
               UsageError);
  EXPECT_EQ(run_convert({"--help"}), 0);
}

}  // namespace
}  // namespace mgm::data
