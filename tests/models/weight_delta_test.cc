// mgm weights apply-delta / make-delta: FastChat's arithmetic and LLaVA's rules on small models,
// exact round trips in fp32, every mismatch listed, outputs never overwritten by accident, and
// the peak memory of a streamed apply-delta on a model ten shards large.
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"
#include "models/weight_delta.h"
#include "tests_util.h"

namespace mgm::models {
namespace {

namespace fs = std::filesystem;

// A Hugging Face-like folder: config.json, tokenizer files, sharded safetensors.
void write_model(const std::string& dir, const io::NamedTensors& t, const std::string& tag,
                 uint64_t shard = 3000) {
  make_dirs(dir);
  io::save_sharded_safetensors(dir, t, shard);
  write_json_file(dir + "/config.json", Json{{"model_type", "gemma"}, {"tag", tag}});
  write_file_atomic(dir + "/tokenizer.model", "tokenizer of " + tag);
  write_file_atomic(dir + "/tokenizer_config.json", "{\"from\": \"" + tag + "\"}");
}

io::NamedTensors small_base() {
  at::manual_seed(5);
  return {{"model.embed_tokens.weight", at::randn({50, 16}) * 0.02},
          {"model.layers.0.self_attn.q_proj.weight", at::randn({16, 16}) * 0.02},
          {"model.layers.0.mlp.down_proj.weight", at::randn({16, 40}) * 0.02},
          {"model.norm.weight", at::randn({16}) * 0.1}};
}

// A finetune of the base: every tensor moved a little.
io::NamedTensors finetuned(const io::NamedTensors& base, double scale) {
  io::NamedTensors out;
  for (const auto& [n, t] : base) out.emplace_back(n, t + at::randn(t.sizes()) * scale);
  return out;
}

using test::error_of;

void expect_same(const std::string& dir, const io::NamedTensors& want) {
  const io::TensorStore s = io::TensorStore::open(dir);
  ASSERT_EQ(s.names().size(), want.size());
  for (const auto& [n, t] : want) {
    ASSERT_TRUE(s.contains(n)) << n;
    EXPECT_TRUE(at::equal(s.get(n), t)) << n;
  }
}

// The mgm binary beside this test binary.
std::string mgm_binary() {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "";
  self[n] = 0;
  return (fs::path(self).parent_path().parent_path() / "eval" / "mgm").string();
}

TEST(WeightDelta, MakeThenApplyReproducesTheTargetExactlyInFp32) {
  const std::string d = test::temp_dir("delta_roundtrip");
  const io::NamedTensors base = small_base(), target = finetuned(base, 0.005);
  write_model(d + "/base", base, "base");
  write_model(d + "/target", target, "target");
  DeltaOptions o;
  o.dtype = "fp32";
  o.max_shard_size = 2000;
  const DeltaReport mk = make_delta(d + "/base", d + "/target", d + "/delta", o);
  EXPECT_EQ(mk.tensors, 4);
  // The delta is target - base, with the target's config and tokenizer (FastChat make_delta).
  const io::TensorStore ds = io::TensorStore::open(d + "/delta");
  for (size_t i = 0; i < base.size(); ++i)
    EXPECT_TRUE(at::equal(ds.get(base[i].first), target[i].second - base[i].second))
        << base[i].first;
  EXPECT_EQ(read_json_file(d + "/delta/config.json").at("tag"), "target");
  EXPECT_EQ(read_json_file(d + "/delta/config.json").at("torch_dtype"), "float32");  // as written
  EXPECT_EQ(read_file(d + "/delta/tokenizer.model"), "tokenizer of target");
  EXPECT_TRUE(path_exists(d + "/delta/model.safetensors.index.json"));  // sharded

  const DeltaReport ap = apply_delta(d + "/base", d + "/delta", d + "/out", o);
  EXPECT_EQ(ap.tensors, 4);
  expect_same(d + "/out", target);
  // FastChat saves the base model's config and the delta's tokenizer.
  EXPECT_EQ(read_json_file(d + "/out/config.json").at("tag"), "base");
  EXPECT_EQ(read_file(d + "/out/tokenizer.model"), "tokenizer of target");
}

TEST(WeightDelta, DefaultFp16IsFastChatsArithmetic) {
  const std::string d = test::temp_dir("delta_fp16");
  const io::NamedTensors base = small_base(), delta = finetuned(base, 0.01);
  write_model(d + "/base", base, "base");
  write_model(d + "/delta", delta, "delta");
  apply_delta(d + "/base", d + "/delta", d + "/out", {});
  const io::TensorStore s = io::TensorStore::open(d + "/out");
  for (size_t i = 0; i < base.size(); ++i) {
    const at::Tensor got = s.get(base[i].first);
    EXPECT_EQ(got.scalar_type(), at::kHalf);
    // FastChat loads both models in fp16 and adds in place in fp16.
    EXPECT_TRUE(at::equal(got, base[i].second.to(at::kHalf) + delta[i].second.to(at::kHalf)))
        << base[i].first;
  }
  EXPECT_EQ(read_json_file(d + "/out/config.json").at("torch_dtype"), "float16");
}

// An output folder that appears while the job runs (another job, the user) is not replaced
// without --overwrite; the finished result is kept where the error says.
TEST(WeightDelta, StagedOutputNeverReplacesAFolderThatAppearedWithoutOverwrite) {
  const std::string d = test::temp_dir("staged_out");
  {
    StagedOutputDir out(d + "/out", /*overwrite=*/false);
    write_file_atomic(out.file("result.txt"), "new");
    make_dirs(d + "/out");
    write_file_atomic(d + "/out/mine.txt", "the user's");
    std::string msg;
    try {
      out.commit();
    } catch (const UsageError& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find("appeared while this job ran"), std::string::npos) << msg;
    EXPECT_NE(msg.find(out.path()), std::string::npos) << msg;
    EXPECT_EQ(read_file(out.file("result.txt")), "new");
  }
  EXPECT_EQ(read_file(d + "/out/mine.txt"), "the user's");
  EXPECT_FALSE(path_exists(d + "/out/result.txt"));
  {
    StagedOutputDir out(d + "/out", /*overwrite=*/true);
    write_file_atomic(out.file("result.txt"), "new");
    out.commit();
  }
  EXPECT_EQ(read_file(d + "/out/result.txt"), "new");
  EXPECT_FALSE(path_exists(d + "/out/mine.txt"));
}

// An output that is or contains an input is refused before anything is written, --overwrite or
// not (it used to replace the base and delete the files in it); one inside an input is fine.
TEST(WeightDelta, OutputThatIsOrHoldsAnInputIsRefused) {
  const std::string d = test::temp_dir("delta_inputs");
  const io::NamedTensors base = small_base(), delta = finetuned(base, 0.01);
  write_model(d + "/models/base", base, "base");
  write_model(d + "/delta", delta, "delta");
  write_file_atomic(d + "/models/base/run_notes.txt", "keep me");
  ::symlink((d + "/models/base").c_str(), (d + "/base_link").c_str());
  DeltaOptions o;
  o.overwrite = true;
  const struct {
    std::string target, how;
  } cases[] = {{d + "/models/base", "is --base"},
               {d + "/models/base/", "is --base"},
               {d + "/models/./base", "is --base"},
               {d + "/base_link", "is --base"},  // a symlink to it
               {d + "/base_link/../base", "is --base"},  // ".." after a symlink, as the kernel resolves it
               {d + "/models", "contains --base"},
               {d + "/delta", "is --delta"}};
  for (const auto& c : cases) {
    const std::string msg = error_of([&] { apply_delta(d + "/models/base", d + "/delta", c.target, o); });
    EXPECT_NE(msg.find("the output folder "), std::string::npos) << c.target << ": " << msg;
    EXPECT_NE(msg.find(c.how), std::string::npos) << c.target << ": " << msg;
    EXPECT_NE(msg.find("choose an output that neither is nor contains an input"), std::string::npos) << msg;
  }
  EXPECT_EQ(read_file(d + "/models/base/run_notes.txt"), "keep me");
  expect_same(d + "/models/base", base);
  // make-delta: the delta output may not be the target either.
  EXPECT_NE(error_of([&] { make_delta(d + "/models/base", d + "/delta", d + "/delta", o); }).find("is --target"),
            std::string::npos);
  // A sibling is fine, and so is a folder inside an input.
  EXPECT_EQ(apply_delta(d + "/models/base", d + "/delta", d + "/models/out", o).tensors, 4);
  EXPECT_EQ(apply_delta(d + "/models/base", d + "/delta", d + "/delta/merged", o).tensors, 4);
  EXPECT_EQ(read_file(d + "/models/base/run_notes.txt"), "keep me");
  EXPECT_EQ(resolved_path(d + "/models/../models/base/"), resolved_path(d + "/base_link"));
  EXPECT_FALSE(path_within(d + "/models/base2", d + "/models/base"));
  EXPECT_TRUE(path_within(d + "/models/base/x/y", d + "/models"));
}

TEST(WeightDelta, ExtraTokenRowsAndProjectorOnlyKeys) {
  const std::string d = test::temp_dir("delta_llava");
  const io::NamedTensors base = small_base();
  // The target grew two token rows and gained a projector (LLaVA's case).
  io::NamedTensors target = finetuned(base, 0.005);
  target[0].second = at::cat({target[0].second, at::randn({2, 16}) * 0.02}, 0);
  target.emplace_back("model.mm_projector.0.weight", at::randn({16, 8}));
  target.emplace_back("model.mm_projector.0.bias", at::randn({16}));
  write_model(d + "/base", base, "base");
  write_model(d + "/target", target, "target");
  DeltaOptions o;
  o.dtype = "fp32";
  const DeltaReport mk = make_delta(d + "/base", d + "/target", d + "/delta", o);
  EXPECT_EQ(mk.grown, 1);
  EXPECT_EQ(mk.delta_only, 2);
  const io::TensorStore ds = io::TensorStore::open(d + "/delta");
  // Projector stored as it is; new token rows as they are; the old block as a difference.
  EXPECT_TRUE(at::equal(ds.get("model.mm_projector.0.weight"), target[4].second));
  EXPECT_TRUE(
      at::equal(ds.get("model.embed_tokens.weight").slice(0, 50), target[0].second.slice(0, 50)));
  EXPECT_TRUE(at::equal(ds.get("model.embed_tokens.weight").slice(0, 0, 50),
                        target[0].second.slice(0, 0, 50) - base[0].second));
  const DeltaReport ap = apply_delta(d + "/base", d + "/delta", d + "/out", o);
  EXPECT_EQ(ap.grown, 1);
  EXPECT_EQ(ap.delta_only, 2);
  expect_same(d + "/out", target);
  // A delta that adds modules or tokens brings its own config (LLaVA saves the delta model).
  EXPECT_EQ(read_json_file(d + "/out/config.json").at("tag"), "target");
}

TEST(WeightDelta, MismatchesAreListedAndNothingIsWritten) {
  const std::string d = test::temp_dir("delta_bad");
  const io::NamedTensors base = small_base();
  io::NamedTensors delta = finetuned(base, 0.01);
  delta.erase(delta.begin() + 3);        // model.norm.weight missing
  delta[1].second = at::randn({16, 8});  // q_proj shape
  delta.emplace_back("model.layers.0.mlp.new_proj.weight", at::randn({2, 2}));  // not multimodal
  delta[0].second = at::randn({40, 16});                                        // fewer token rows
  write_model(d + "/base", base, "base");
  write_model(d + "/delta", delta, "delta");
  const std::string e = error_of([&] { apply_delta(d + "/base", d + "/delta", d + "/out", {}); });
  for (const char* want :
       {"model.norm.weight: in --base", "model.layers.0.self_attn.q_proj.weight: shape [16, 16]",
        "model.layers.0.mlp.new_proj.weight: only in --delta",
        "model.embed_tokens.weight: shape [50, 16]", "4 problems"})
    EXPECT_NE(e.find(want), std::string::npos) << want << " in: " << e;
  EXPECT_FALSE(path_exists(d + "/out"));
  EXPECT_FALSE(path_exists(d + "/out.tmp-" + std::to_string(::getpid())));
  // The command line shows the whole list too (run_main used to cut every message at its first
  // line, leaving the count and no name).
  std::string cli;
  EXPECT_EQ(test::run_command(mgm_binary() + " weights apply-delta --base " + d + "/base --delta " + d +
                                  "/delta --target " + d + "/out 2>&1",
                              &cli),
            1)
      << cli;
  for (const char* want : {"4 problems", "model.norm.weight: in --base", "model.layers.0.self_attn.q_proj.weight: shape",
                           "model.layers.0.mlp.new_proj.weight: only in --delta", "model.embed_tokens.weight: shape"})
    EXPECT_NE(cli.find(want), std::string::npos) << want << " in: " << cli;

  // An existing output is replaced only with overwrite.
  write_model(d + "/good", finetuned(base, 0.01), "good");
  make_dirs(d + "/taken");
  write_file_atomic(d + "/taken/keep.txt", "mine");
  const std::string e2 = error_of([&] { apply_delta(d + "/base", d + "/good", d + "/taken", {}); });
  EXPECT_NE(e2.find("--overwrite"), std::string::npos) << e2;
  EXPECT_EQ(read_file(d + "/taken/keep.txt"), "mine");
  DeltaOptions o;
  o.overwrite = true;
  apply_delta(d + "/base", d + "/good", d + "/taken", o);
  EXPECT_FALSE(path_exists(d + "/taken/keep.txt"));
  EXPECT_TRUE(path_exists(d + "/taken/model.safetensors"));
  EXPECT_NE(error_of([&] {
              apply_delta(d + "/base", d + "/good", d + "/x", DeltaOptions{"int8"});
            }).find("--dtype"),
            std::string::npos);
}

// Memory of a child running `mgm ARGS`: the largest anonymous resident set seen (sampled from
// /proc every 2 ms: the job's own buffers) and ru_maxrss (everything, including the shared
// libraries' pages, which dominate a libtorch binary and peak while it exits).
struct ChildMemory {
  uint64_t anon_peak = 0, max_rss = 0;
  // The lowest anonymous level over the last tenth of the samples: the process after its job,
  // buffers freed, libraries initialised (the level the job's working set sits on).
  uint64_t anon_after = 0;
  int status = 0;
};

uint64_t rss_anon_bytes(pid_t pid) {
  FILE* f = std::fopen(str_cat("/proc/", pid, "/status").c_str(), "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "RssAnon: %lu kB", &kb) == 1) break;
  std::fclose(f);
  return kb * 1024;
}

ChildMemory memory_of(const std::string& bin, const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(bin.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (std::freopen("/dev/null", "w", stdout) == nullptr) _exit(126);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  ChildMemory m;
  struct rusage ru {};
  std::vector<uint64_t> samples;
  while (true) {
    const uint64_t a = rss_anon_bytes(pid);
    if (a > 0) samples.push_back(a);
    const pid_t done = wait4(pid, &m.status, WNOHANG, &ru);
    if (done == pid) break;
    usleep(2000);
  }
  m.max_rss = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  if (!samples.empty()) {
    m.anon_peak = *std::max_element(samples.begin(), samples.end());
    m.anon_after = *std::min_element(samples.end() - static_cast<std::ptrdiff_t>(std::max<size_t>(1, samples.size() / 10)),
                                     samples.end());
  }
  return m;
}

// A 200 MB fp32 model in 20 MB shards: apply-delta holds about one output shard and the tensors
// being added, not the model; the increase over the same binary's baseline is measured.
TEST(WeightDelta, StreamingApplyDeltaPeakMemoryStaysNearOneShard) {
  const std::string bin = mgm_binary();
  ASSERT_TRUE(fs::exists(bin)) << bin;
  const std::string d = test::temp_dir("delta_memory");
  const int64_t kTensors = 50, kRows = 1000, kCols = 1000;  // 4 MB each, 200 MB in all
  for (const char* which : {"base", "delta"}) {
    io::ShardedSafetensorsWriter w(str_cat(d, "/", which), 20'000'000);
    at::manual_seed(which[0]);
    for (int64_t i = 0; i < kTensors; ++i)
      w.add(str_cat("model.layers.", i, ".mlp.up_proj.weight"), at::randn({kRows, kCols}));
    w.finish();
    write_json_file(str_cat(d, "/", which, "/config.json"), Json{{"model_type", "gemma"}});
  }
  const uint64_t model_bytes = static_cast<uint64_t>(kTensors * kRows * kCols * 4);
  const ChildMemory base_run = memory_of(bin, {"weights", "inspect", d + "/base", "--summary"});
  ASSERT_TRUE(WIFEXITED(base_run.status) && WEXITSTATUS(base_run.status) == 0);
  const ChildMemory run = memory_of(bin, {"weights", "apply-delta", "--base", d + "/base", "--delta",
                                          d + "/delta", "--target", d + "/out", "--dtype", "fp32",
                                          "--max_shard_size", "20MB"});
  ASSERT_TRUE(WIFEXITED(run.status) && WEXITSTATUS(run.status) == 0);
  // The job's own working set is at most its anonymous peak above the level it returns to
  // afterwards (the peak may be libtorch's start-up, which `inspect` shares).
  const uint64_t working = run.anon_peak - std::min(run.anon_peak, run.anon_after);
  std::printf("[memory] apply-delta, %.0f MB fp32 model, 20 MB shards: anonymous memory peak %.1f MB, "
              "%.1f MB after the job (working set at most %.1f MB); `inspect` of the same folder peaks at "
              "%.1f MB; ru_maxrss %.1f MB (inspect %.1f MB: libtorch's libraries)\n",
              model_bytes / 1e6, run.anon_peak / 1e6, run.anon_after / 1e6, working / 1e6,
              base_run.anon_peak / 1e6, run.max_rss / 1e6, base_run.max_rss / 1e6);
  EXPECT_LT(working, model_bytes / 3);
  EXPECT_LT(run.anon_peak, base_run.anon_peak + model_bytes / 4);
  EXPECT_LT(run.max_rss, base_run.max_rss + model_bytes / 4);
  // And the result is right.
  const io::TensorStore b = io::TensorStore::open(d + "/base"),
                        dl = io::TensorStore::open(d + "/delta");
  const io::TensorStore out = io::TensorStore::open(d + "/out");
  EXPECT_GT(out.files().size(), 5u);
  for (const int64_t i : {int64_t{0}, kTensors - 1}) {
    const std::string n = str_cat("model.layers.", i, ".mlp.up_proj.weight");
    EXPECT_TRUE(at::equal(out.get(n), b.get(n) + dl.get(n))) << n;
  }
  remove_tree(d);  // 600 MB that no later check needs
}

}  // namespace
}  // namespace mgm::models
