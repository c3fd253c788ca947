// The benchmark runners on a tiny random MGM saved as a checkpoint folder with a small trained
// tokenizer: answer files in the reference's JSON layout (field order, json.dumps formatting),
// every question answered once, resume after a real SIGKILL mid-write, chunking + merge equal to
// an unchunked run, settings recorded and enforced, bad-sample policy, and MMBench prompts
// built as eval.md's examples.
#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "data/tokenizer.h"
#include "eval/cli_eval.h"
#include "eval/mmbench_runner.h"
#include "eval/runner.h"
#include "eval/scoring/mmbench.h"
#include "eval/textvqa_runner.h"
#include "models/mgm.h"
#include "tests_util.h"
#include "tiny_mgm.h"

namespace mgm::eval {
namespace {

namespace fs = std::filesystem;

std::string base64(const std::string& in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(k[(v >> s) & 63]);
  }
  if (i < in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    if (i + 1 < in.size()) v |= uint8_t(in[i + 1]) << 8;
    out.push_back(k[(v >> 18) & 63]);
    out.push_back(k[(v >> 12) & 63]);
    out.push_back(i + 1 < in.size() ? k[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  for (const auto& l : split(read_file(path), '\n'))
    if (!l.empty()) out.push_back(l);
  return out;
}

std::vector<std::string> keys_of(const OrderedJson& j) {
  std::vector<std::string> k;
  for (auto it = j.begin(); it != j.end(); ++it) k.push_back(it.key());
  return k;
}

// Everything of an answer line but the random answer_id.
std::string stable(const std::string& line) {
  OrderedJson j = OrderedJson::parse(line);
  j.erase("answer_id");
  return j.dump();
}

class EvalRunner : public ::testing::Test {
 protected:
  static const std::string& dir() {
    static std::string d = test::make_tiny_mgm_fixture("eval_runner");
    return d;
  }

  TextVqaOptions textvqa(const std::string& answers, int64_t batch = 4) const {
    TextVqaOptions o;
    o.model.model_path = dir() + "/MGM-tiny";
    o.question_file = dir() + "/questions.jsonl";
    o.image_folder = dir() + "/images";
    o.run.answers_file = answers;
    o.run.batch_size = batch;
    o.run.generation.max_new_tokens = 6;
    o.run.quiet = true;
    return o;
  }

  // The unchunked, batch-size-1 answers (computed once).
  static std::vector<std::string>& reference_lines() {
    static std::vector<std::string> v;
    return v;
  }
  const std::vector<std::string>& reference() {
    if (reference_lines().empty()) {
      const std::string a = test::temp_dir("eval_ref") + "/ref.jsonl";
      run_textvqa(textvqa(a, 1));
      reference_lines() = lines_of(a);
    }
    return reference_lines();
  }
};

TEST_F(EvalRunner, TextVqaAnswerFileAsTheReference) {
  const std::string a = test::temp_dir("eval_tv") + "/answers.jsonl";
  const RunStats st = run_textvqa(textvqa(a, 4));
  EXPECT_EQ(st.questions, 6u);
  EXPECT_EQ(st.answered, 6u);
  const auto lines = lines_of(a);
  ASSERT_EQ(lines.size(), 6u);
  const auto qs = read_textvqa_questions(dir() + "/questions.jsonl", "");
  std::set<std::string> answer_ids;
  std::set<std::string> texts;
  for (size_t i = 0; i < lines.size(); ++i) {
    const OrderedJson j = OrderedJson::parse(lines[i]);
    EXPECT_EQ(keys_of(j), (std::vector<std::string>{"question_id", "prompt", "text", "answer_id",
                                                    "model_id", "metadata"}));
    EXPECT_EQ(j["question_id"], qs[i].head["question_id"]);
    EXPECT_EQ(j["prompt"], qs[i].question);  // the question text verbatim, no image token
    EXPECT_EQ(j["model_id"], "MGM-tiny");
    EXPECT_EQ(j["metadata"], OrderedJson::object());
    EXPECT_EQ(j["answer_id"].get<std::string>().size(), 22u);
    answer_ids.insert(j["answer_id"].get<std::string>());
    texts.insert(j["text"].get<std::string>());
    // json.dumps layout: ", " and ": " separators, the line is its own re-serialisation.
    EXPECT_EQ(lines[i], python_json_dumps(j));
    EXPECT_TRUE(starts_with(lines[i], "{\"question_id\": \"")) << lines[i];
  }
  EXPECT_EQ(answer_ids.size(), 6u);
  // Python's own json.dumps(json.loads(line)) gives every line back byte for byte.
  const std::string script = fs::path(a).parent_path().string() + "/redump.py";
  write_file_atomic(script,
                    "import json, sys\n"
                    "for l in open(sys.argv[1], encoding='utf-8', errors='surrogateescape'):\n"
                    "    l = l.rstrip('\\n')\n"
                    "    assert json.dumps(json.loads(l)) == l, l\n"
                    "print('redump ok')\n");
  std::string py_out;
  EXPECT_EQ(test::run_python(script + " " + a, &py_out), 0) << py_out;
  EXPECT_NE(py_out.find("redump ok"), std::string::npos) << py_out;
  EXPECT_GE(texts.size(), 2u);  // the answers depend on the question / image
  // Batched (4) answers equal one-at-a-time answers.
  const auto& ref = reference();
  ASSERT_EQ(ref.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(stable(lines[i]), stable(ref[i]));
  // The scorer-side reader accepts the file: same sidecar present, nothing else written.
  EXPECT_TRUE(path_exists(a + ".settings.json"));
  const Json settings = read_json_file(a + ".settings.json");
  EXPECT_EQ(settings["benchmark"], "textvqa");
  EXPECT_EQ(settings["max_new_tokens"], 6);
  EXPECT_EQ(settings["image_aspect_ratio"], "pad");
}

TEST_F(EvalRunner, ResumeAfterKillAnswersEveryQuestionOnce) {
  const auto& ref = reference();
  const std::string d = test::temp_dir("eval_kill");
  const std::string a = d + "/answers.jsonl";
  // The real binary, killed (SIGKILL) halfway through writing its second batch of two.
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  self[n] = 0;
  const fs::path bin = fs::path(self).parent_path().parent_path().parent_path() / "eval" / "mgm";
  ASSERT_TRUE(fs::exists(bin)) << bin;
  const std::string args =
      str_cat(" eval textvqa --model-path ", dir(), "/MGM-tiny --question-file ", dir(),
              "/questions.jsonl --image-folder ", dir(), "/images --answers-file ", a,
              " --max_new_tokens 6 --batch_size 2");
  const int rc =
      std::system((bin.string() + args + " --test_kill_after_batches 1 2>/dev/null").c_str());
  ASSERT_TRUE(WIFSIGNALED(rc) || (WIFEXITED(rc) && WEXITSTATUS(rc) == 128 + SIGKILL)) << rc;
  const std::string killed = read_file(a);
  EXPECT_NE(killed.back(), '\n');     // a torn line
  EXPECT_EQ(lines_of(a).size(), 3u);  // two complete lines + the torn one
  // Rerun (in-process): the torn line is dropped, the two answers kept, the rest appended.
  const RunStats st = run_textvqa(textvqa(a, 3));
  EXPECT_EQ(st.already_answered, 2u);
  EXPECT_EQ(st.answered, 4u);
  EXPECT_GT(st.torn_bytes_dropped, 0u);
  const auto lines = lines_of(a);
  ASSERT_EQ(lines.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(stable(lines[i]), stable(ref[i])) << i;
  // A third run has nothing left to do.
  const RunStats again = run_textvqa(textvqa(a, 3));
  EXPECT_EQ(again.answered, 0u);
  EXPECT_EQ(again.already_answered, 6u);
  EXPECT_EQ(lines_of(a).size(), 6u);
  // The binary resumes too, and a stop-after hook gives a clean prefix.
  const std::string b = d + "/b.jsonl";
  ASSERT_EQ(std::system((bin.string() + args + " --max_questions 3 >/dev/null 2>&1").c_str()), 0);
  EXPECT_EQ(lines_of(a).size(), 6u);
  auto o = textvqa(b, 2);
  o.run.max_new_answers = 3;
  EXPECT_EQ(run_textvqa(o).answered, 3u);
  o.run.max_new_answers = -1;
  EXPECT_EQ(run_textvqa(o).answered, 3u);
  const auto lb = lines_of(b);
  ASSERT_EQ(lb.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(stable(lb[i]), stable(ref[i])) << i;
}

TEST_F(EvalRunner, SettingsAreRecordedAndEnforced) {
  const std::string d = test::temp_dir("eval_settings");
  const std::string a = d + "/answers.jsonl";
  auto o = textvqa(a, 6);
  o.run.max_new_answers = 2;
  run_textvqa(o);
  auto other = o;
  other.run.generation.max_new_tokens = 7;
  try {
    run_textvqa(other);
    FAIL() << "expected a settings mismatch";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("max_new_tokens: recorded 6, now 7"), std::string::npos)
        << e.what();
  }
  other.run.overwrite = true;  // starts afresh
  EXPECT_EQ(run_textvqa(other).answered, 2u);
  EXPECT_EQ(lines_of(a).size(), 2u);
  // Answers without a settings record (e.g. from the Python reference) are not resumed blindly.
  std::remove((a + ".settings.json").c_str());
  other.run.overwrite = false;
  EXPECT_THROW(run_textvqa(other), UsageError);
  // A file answering questions of another question list is refused, naming the line.
  const std::string c = d + "/c.jsonl";
  auto oc = textvqa(c, 6);
  run_textvqa(oc);
  std::string text = read_file(c);
  const std::string wrong = "\"prompt\": \"What is written on the sign?";
  text.replace(text.find(wrong), wrong.size(), "\"prompt\": \"Something else?");
  write_file_atomic(c, text);
  try {
    run_textvqa(oc);
    FAIL() << "expected an unknown answer";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("line 1: question_id \"img0\""), std::string::npos)
        << e.what();
  }
}

// An answers file this run refuses (no settings record: another tool's file) is left as it was,
// and a whole last answer that only lacks its newline is kept on resume, not regenerated.
TEST_F(EvalRunner, RefusedRunsLeaveTheFileAndWholeAnswersAreKept) {
  const std::string d = test::temp_dir("eval_keep");
  const std::string foreign = d + "/foreign.jsonl";
  const std::string lines = "{\"question_id\": 1, \"prompt\": \"p\", \"text\": \"a\"}\n"
                            "{\"question_id\": 2, \"prompt\": \"p\", \"text\": \"b\"}";
  write_file_atomic(foreign, lines);
  EXPECT_THROW(run_textvqa(textvqa(foreign)), UsageError);
  EXPECT_EQ(read_file(foreign), lines);

  const std::string a = d + "/answers.jsonl";
  EXPECT_EQ(run_textvqa(textvqa(a)).answered, 6u);
  const std::string full = read_file(a);
  ASSERT_EQ(full.back(), '\n');
  write_file_atomic(a, full.substr(0, full.size() - 1));
  const RunStats st = run_textvqa(textvqa(a));
  EXPECT_EQ(st.already_answered, 6u);
  EXPECT_EQ(st.answered, 0u);
  EXPECT_EQ(st.torn_bytes_dropped, 0u);
  EXPECT_EQ(read_file(a), full);
}

// Two writers on one answers file: while one holds it (here this test process), a second
// `mgm eval` is refused at once naming the holder, and leaves the file as it was, --overwrite
// included; once released, the run resumes.
TEST_F(EvalRunner, SecondWriterOfAnAnswersFileIsRefused) {
  const std::string d = test::temp_dir("eval_lock");
  const std::string a = d + "/answers.jsonl";
  auto o = textvqa(a);
  o.run.max_new_answers = 2;
  EXPECT_EQ(run_textvqa(o).answered, 2u);
  const std::string before = read_file(a);
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  self[n] = 0;
  const fs::path bin = fs::path(self).parent_path().parent_path().parent_path() / "eval" / "mgm";
  const std::string cmd = str_cat(bin.string(), " eval textvqa --model-path ", dir(), "/MGM-tiny --question-file ", dir(),
                                  "/questions.jsonl --image-folder ", dir(), "/images --answers-file ", a,
                                  " --max_new_tokens 6 --batch_size 4");
  {
    const auto held = FileLock::acquire(a + ".lock", "test");
    for (const char* extra : {"", " --overwrite"}) {
      std::string out;
      EXPECT_EQ(test::run_command(cmd + extra, &out), 2) << out;
      EXPECT_NE(out.find("--answers-file " + a + " is in use by host "), std::string::npos) << out;
      EXPECT_NE(out.find(str_cat(" pid ", ::getpid(), " since ")), std::string::npos) << out;
      EXPECT_EQ(read_file(a), before) << extra;
    }
    EXPECT_THROW(run_textvqa(textvqa(a)), UsageError);
    // Nor can a merge read it while it is being written.
    EXPECT_NE(test::error_of([&] { merge_answer_files({a}, d + "/merged.jsonl"); }).find("is in use by host"),
              std::string::npos);
  }
  o.run.max_new_answers = -1;
  const RunStats st = run_textvqa(o);
  EXPECT_EQ(st.already_answered, 2u);
  EXPECT_EQ(st.answered, 4u);
}

// Sampled answers depend on --seed and the question, not on the batch it landed in.
TEST_F(EvalRunner, SampledAnswersDoNotDependOnTheBatchSize) {
  const std::string d = test::temp_dir("eval_sample");
  std::vector<std::vector<std::string>> runs;
  for (int64_t batch : {1, 4}) {
    auto o = textvqa(str_cat(d, "/b", batch, ".jsonl"), batch);
    o.run.generation.temperature = 1.0;
    o.run.generation.top_k = 0;
    o.run.generation.seed = 3;
    run_textvqa(o);
    std::vector<std::string> s;
    for (const auto& l : lines_of(o.run.answers_file)) s.push_back(stable(l));
    runs.push_back(s);
  }
  ASSERT_EQ(runs[0].size(), 6u);
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_NE(runs[0], [&] {  // and it is sampling: another seed answers otherwise
    auto o = textvqa(d + "/seed4.jsonl", 4);
    o.run.generation.temperature = 1.0;
    o.run.generation.top_k = 0;
    o.run.generation.seed = 4;
    run_textvqa(o);
    std::vector<std::string> s;
    for (const auto& l : lines_of(o.run.answers_file)) s.push_back(stable(l));
    return s;
  }());
}

TEST_F(EvalRunner, ChunksMergedEqualUnchunked) {
  const auto& ref = reference();
  const std::string d = test::temp_dir("eval_chunks");
  std::vector<std::string> parts;
  for (int k = 0; k < 4; ++k) {  // 6 questions in 4 chunks: sizes 2, 2, 2, 0
    auto o = textvqa(str_cat(d, "/4_", k, ".jsonl"), 8);
    o.num_chunks = 4;
    o.chunk_idx = k;
    EXPECT_EQ(run_textvqa(o).questions, k < 3 ? 2u : 0u);
    parts.push_back(o.run.answers_file);
  }
  const MergeStats ms = merge_answer_files(parts, d + "/merge.jsonl");
  EXPECT_EQ(ms.lines, 6u);
  EXPECT_EQ(ms.repeated, 0u);
  EXPECT_TRUE(ms.missing_chunks.empty());
  const auto merged = lines_of(d + "/merge.jsonl");
  ASSERT_EQ(merged.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(stable(merged[i]), stable(ref[i])) << i;
  // The same chunk twice is refused, naming the files: given twice, or as a copy.
  auto merge_error = [&](const std::vector<std::string>& in) {
    try {
      merge_answer_files(in, d + "/dup.jsonl");
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(merge_error({parts[0], parts[1], parts[0]}).find("4_0.jsonl is given twice"),
            std::string::npos);
  write_file_atomic(d + "/copy.jsonl", read_file(parts[0]));
  write_file_atomic(d + "/copy.jsonl.settings.json", read_file(parts[0] + ".settings.json"));
  EXPECT_NE(merge_error({parts[0], parts[1], d + "/copy.jsonl"}).find("chunk 0 is given twice"),
            std::string::npos);
  // Chunks of another run (other settings) are refused; a missing chunk is reported.
  auto other = textvqa(d + "/other_1.jsonl", 8);
  other.num_chunks = 4;
  other.chunk_idx = 1;
  other.run.generation.max_new_tokens = 5;
  run_textvqa(other);
  EXPECT_NE(merge_error({parts[0], other.run.answers_file}).find("max_new_tokens 5 vs 6"),
            std::string::npos);
  EXPECT_FALSE(path_exists(d + "/dup.jsonl"));
  EXPECT_EQ(merge_answer_files({parts[0], parts[1]}, d + "/part.jsonl").missing_chunks,
            (std::vector<std::string>{"2 of 4", "3 of 4"}));
  // A question file may repeat a question; its answers repeat too and are counted.
  write_file_atomic(d + "/rep.jsonl", merged[0] + "\n" + merged[0] + "\n");
  EXPECT_EQ(merge_answer_files({d + "/rep.jsonl"}, d + "/rep_out.jsonl").repeated, 1u);
  // Through the command: space-separated inputs.
  auto cmds = eval_commands();
  for (auto& c : cmds) {
    if (c.name != "merge") continue;
    EXPECT_EQ(
        c.run({"--inputs", parts[0], parts[1], parts[2], parts[3], "--output", d + "/cli.jsonl"}),
        0);
  }
  EXPECT_EQ(read_file(d + "/cli.jsonl"), read_file(d + "/merge.jsonl"));
}

TEST_F(EvalRunner, BadSamplesAreReportedAndSkippedByPolicy) {
  const std::string d = test::temp_dir("eval_bad");
  std::string q = read_file(dir() + "/questions.jsonl");
  q += "{\"question_id\": \"gone\", \"image\": \"missing.ppm\", \"text\": \"Q?\"}\n";
  q += "{\"question_id\": \"broken\", \"text\": \n";
  q += "{\"question_id\": \"last\", \"image\": \"img1.ppm\", \"text\": \"What is last?\"}\n";
  write_file_atomic(d + "/q.jsonl", q);
  auto o = textvqa(d + "/a.jsonl", 4);
  o.question_file = d + "/q.jsonl";
  try {
    run_textvqa(o);
    FAIL() << "expected a missing image";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q.jsonl line 7: question_id \"gone\""), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(lines_of(d + "/a.jsonl").size(), 4u);  // the first batch was kept
  o.run.on_bad_sample = BadSamplePolicy::kSkip;
  const RunStats st = run_textvqa(o);
  EXPECT_EQ(st.skipped, 2u);
  EXPECT_EQ(st.already_answered, 4u);
  EXPECT_EQ(st.answered, 3u);
  const auto lines = lines_of(d + "/a.jsonl");
  ASSERT_EQ(lines.size(), 7u);
  EXPECT_EQ(OrderedJson::parse(lines[6])["question_id"], "last");
}

TEST_F(EvalRunner, GenerationPromptsForBothTemplates) {
  EvalModelOptions mo;
  mo.model_path = dir() + "/MGM-tiny";
  EvalModel m = load_eval_model(mo);
  EXPECT_EQ(build_generation_prompt(m, "Q?\nAnswer.", true),
            "<start_of_turn>user\n<image>\nQ?\nAnswer.<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(build_generation_prompt(m, "Q?", false),
            "<start_of_turn>user\nQ?<end_of_turn>\n<start_of_turn>model\n");
  const auto ids = m.tokenizer.encode_with_image(build_generation_prompt(m, "Q?", true));
  EXPECT_EQ(ids[0], m.tokenizer.bos_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), data::kImageTokenIndex), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), m.tokenizer.bos_id()), 1);
  mo.conv_mode = "vicuna_v1";
  m = load_eval_model(mo);
  EXPECT_EQ(build_generation_prompt(m, "Q?", true),
            "A chat between a curious user and an artificial intelligence assistant. The "
            "assistant gives helpful, detailed, and polite answers to the user's questions. "
            "USER: <image>\nQ? ASSISTANT:");
}

TEST(EvalHelpers, ChunkRangeAsSplitListGetChunk) {
  using R = std::pair<size_t, size_t>;
  // split_list(range(10), 3): chunk size ceil(10/3) = 4 -> [0:4], [4:8], [8:10].
  EXPECT_EQ(chunk_range(10, 3, 0), R(0, 4));
  EXPECT_EQ(chunk_range(10, 3, 1), R(4, 8));
  EXPECT_EQ(chunk_range(10, 3, 2), R(8, 10));
  // 5 in 4: size 2 -> [0:2], [2:4], [4:5] and an empty fourth chunk (IndexError in Python).
  EXPECT_EQ(chunk_range(5, 4, 2), R(4, 5));
  EXPECT_EQ(chunk_range(5, 4, 3), R(5, 5));
  EXPECT_EQ(chunk_range(8, 8, 7), R(7, 8));
  EXPECT_EQ(chunk_range(3, 1, 0), R(0, 3));
  EXPECT_THROW(chunk_range(3, 2, 2), UsageError);
  EXPECT_THROW(chunk_range(3, 0, 0), UsageError);
}

TEST(EvalHelpers, PythonJsonDumpsAndNames) {
  OrderedJson j = OrderedJson::object();
  j["question_id"] = 7;
  j["prompt"] = "caf\xc3\xa9 \"q\"\\\n\t\x01 \xf0\x9f\x98\x80";
  j["options"] = {"A b", "C"};
  j["metadata"] = OrderedJson::object();
  j["f"] = 0.5;
  j["b"] = false;
  // json.dumps({...}) in Python 3 (ensure_ascii, ", " / ": ").
  EXPECT_EQ(python_json_dumps(j),
            R"({"question_id": 7, "prompt": "caf\u00e9 \"q\"\\\n\t\u0001 \ud83d\ude00", )"
            R"("options": ["A b", "C"], "metadata": {}, "f": 0.5, "b": false})");
  EXPECT_EQ(model_name_from_path("/work/ckpt/MGM-2B/"), "MGM-2B");
  EXPECT_EQ(model_name_from_path("runs/mgm/checkpoint-500"), "mgm_checkpoint-500");
  const std::string u = short_uuid();
  EXPECT_EQ(u.size(), 22u);
  EXPECT_EQ(u.find_first_not_of("23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"),
            std::string::npos);
  EXPECT_NE(short_uuid(), u);
  const auto b = decode_base64("TWFu SGk=");
  EXPECT_EQ(std::string(b.begin(), b.end()), "ManHi");
  EXPECT_THROW(decode_base64("TW*u"), Error);
}

TEST(EvalMmbench, PromptsAsTheReference) {
  MmbenchRow r;
  r.index = 12;
  r.question = "What is shown?";
  r.hint = "Look closely.";
  r.has_hint = true;
  r.options = {"cat", "dog", "bird", "fish"};
  MmbenchPromptOptions p;
  p.single_pred_prompt = true;
  auto items = mmbench_items(r, p, "t.tsv line 2");
  ASSERT_EQ(items.size(), 1u);
  const std::string q = "Look closely.\nWhat is shown?\nA. cat\nB. dog\nC. bird\nD. fish";
  EXPECT_EQ(items[0].head["prompt"], q);
  EXPECT_EQ(items[0].question,
            q + "\nAnswer with the option's letter from the given choices directly.");
  EXPECT_EQ(keys_of(items[0].head),
            (std::vector<std::string>{"question_id", "round_id", "prompt"}));
  EXPECT_EQ(keys_of(items[0].tail), (std::vector<std::string>{"options", "option_char"}));
  EXPECT_EQ(items[0].head["question_id"], 12);
  EXPECT_EQ(items[0].tail["option_char"], OrderedJson({"A", "B", "C", "D"}));

  // --all-rounds: displayed letters stay A.., texts rotate; option_char holds original letters.
  p.all_rounds = true;
  p.lang = "cn";
  r.has_hint = false;
  r.options = {"red", "green", "blue"};
  items = mmbench_items(r, p, "t.tsv line 2");
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[1].head["prompt"], "What is shown?\nA. green\nB. blue\nC. red");
  EXPECT_EQ(items[1].head["round_id"], 1);
  EXPECT_EQ(items[1].tail["options"], OrderedJson({"green", "blue", "red"}));
  EXPECT_EQ(items[1].tail["option_char"], OrderedJson({"B", "C", "A"}));
  EXPECT_EQ(items[2].tail["option_char"], OrderedJson({"C", "A", "B"}));
  EXPECT_EQ(items[2].question,
            "What is shown?\nA. blue\nB. red\nC. green\n\xe8\xaf\xb7\xe7\x9b\xb4\xe6\x8e\xa5\xe5"
            "\x9b\x9e\xe7\xad\x94\xe9\x80\x89\xe9\xa1\xb9\xe5\xad\x97\xe6\xaf\x8d\xe3\x80\x82");
  p.lang = "fr";
  EXPECT_THROW(mmbench_items(r, p, "x"), UsageError);
}

TEST_F(EvalRunner, MmbenchEndToEnd) {
  const std::string d = test::temp_dir("eval_mmb");
  const std::string img = base64(test::ppm_image(24, 16, 5));
  std::string tsv =
      "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment"
      "\tsplit\n";
  tsv += "0\tWhat colour?\tnan\tred\tblue\tgreen\tnan\tA\tocr\t" + img +
         "\ts\tfinegrained_perception (instance-level)\tnan\tdev\n";
  tsv += "1\t\"Which, \"\"quoted\"\"?\"\tA hint.\tyes\tno\tNone\tmaybe\tB\tocr\t" + img +
         "\ts\tfinegrained_perception (instance-level)\tnan\tdev\n";
  tsv += "1000000\tWhat colour?\tnan\tblue\tgreen\tred\tnan\tC\tocr\t" + img +
         "\ts\tfinegrained_perception (instance-level)\tnan\tdev\n";
  write_file_atomic(d + "/mmb.tsv", tsv);
  const auto rows = read_mmbench_rows(d + "/mmb.tsv");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_FALSE(rows[0].has_hint);
  EXPECT_EQ(rows[0].options, (std::vector<std::string>{"red", "blue", "green"}));
  EXPECT_EQ(rows[1].question, "Which, \"quoted\"?");
  EXPECT_EQ(rows[1].options, (std::vector<std::string>{"yes", "no"}));  // stops at "None"

  MmbenchOptions o;
  o.model.model_path = dir() + "/MGM-tiny";
  o.question_file = d + "/mmb.tsv";
  o.prompt.single_pred_prompt = true;
  o.run.answers_file = d + "/answers.jsonl";
  o.run.generation.max_new_tokens = 4;
  o.run.quiet = true;
  EXPECT_EQ(run_mmbench(o).answered, 3u);
  const auto lines = lines_of(o.run.answers_file);
  ASSERT_EQ(lines.size(), 3u);
  const OrderedJson j = OrderedJson::parse(lines[1]);
  EXPECT_EQ(keys_of(j),
            (std::vector<std::string>{"question_id", "round_id", "prompt", "text", "options",
                                      "option_char", "answer_id", "model_id", "metadata"}));
  EXPECT_EQ(j["question_id"], 1);
  EXPECT_EQ(j["round_id"], 0);
  EXPECT_EQ(j["prompt"], "A hint.\nWhich, \"quoted\"?\nA. yes\nB. no");
  EXPECT_EQ(j["options"], OrderedJson({"yes", "no"}));
  EXPECT_EQ(lines[1], python_json_dumps(j));
  // The scorer reads the file: every row has a prediction.
  const MmbenchScore s = score_mmbench(o.question_file, o.run.answers_file, McqMatcher::k2024);
  EXPECT_EQ(s.answer_lines, 3u);
  EXPECT_TRUE(s.missing_predictions.empty());
  // --all-rounds: one line per option of every row (3 + 2 + 3).
  o.prompt.all_rounds = true;
  o.run.answers_file = d + "/rounds.jsonl";
  EXPECT_EQ(run_mmbench(o).answered, 8u);

  // A cut-short row with a readable index is a bad sample under --on_bad_sample; a row without
  // an integer index stops the run, naming its line.
  write_file_atomic(d + "/short.tsv", tsv + "7\tWhat?\tnan\tred\n");
  const auto short_rows = read_mmbench_rows(d + "/short.tsv");
  ASSERT_EQ(short_rows.size(), 4u);
  EXPECT_NE(short_rows[3].problem.find("short.tsv line 5: expected 14 tab-separated fields, found 4"),
            std::string::npos)
      << short_rows[3].problem;
  o.prompt.all_rounds = false;
  o.question_file = d + "/short.tsv";
  o.run.answers_file = d + "/short.jsonl";
  EXPECT_THROW(run_mmbench(o), Error);
  o.run.on_bad_sample = BadSamplePolicy::kSkip;
  const RunStats st = run_mmbench(o);
  EXPECT_EQ(st.skipped, 1u);
  EXPECT_EQ(st.answered + st.already_answered, 3u);
  write_file_atomic(d + "/noindex.tsv", tsv + "x\tWhat?\n");
  EXPECT_THROW(read_mmbench_rows(d + "/noindex.tsv"), FormatError);
}

}  // namespace
}  // namespace mgm::eval
