// train_mgm's arguments, checkpoint folders and metrics output.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "tests_util.h"
#include "trainer/checkpoint.h"
#include "trainer/metrics.h"
#include "trainer/run_args.h"

namespace mgm::trainer {
namespace {

std::vector<std::string> base_args(const std::string& out) {
  return {"--stage", "pretrain", "--model_config", "configs/models/tiny.json", "--tokenizer", "tok.model",
          "--data_path", "d.json", "--output_dir", out};
}

TEST(RunArgs, FlagsOfTheToolkitScriptParse) {
  TrainArgs a;
  std::string help;
  std::vector<std::string> args = base_args("o");
  for (const char* s : {"--version", "gemma", "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
                        "--image_size_aux", "768", "--bf16", "True", "--tf32", "True", "--num_train_epochs", "1",
                        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "64",
                        "--learning_rate", "1e-3", "--weight_decay", "0.", "--warmup_ratio", "0.03",
                        "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--save_steps", "100",
                        "--save_total_limit", "1", "--model_max_length", "2048", "--gradient_checkpointing",
                        "True", "--dataloader_num_workers", "4", "--lazy_preprocess", "True",
                        "--evaluation_strategy", "no", "--report_to", "none", "--mm_use_im_start_end", "False",
                        "--tune_mm_mlp_adapter", "True", "--expected_global_batch_size", "256"})
    args.push_back(s);
  ASSERT_TRUE(parse_train_args(args, &a, &help));
  EXPECT_EQ(a.stage, Stage::kPretrain);
  EXPECT_TRUE(a.bf16);
  EXPECT_DOUBLE_EQ(a.learning_rate, 1e-3);
  EXPECT_EQ(a.gradient_accumulation_steps, 64);
  EXPECT_EQ(a.save_total_limit, 1);
  EXPECT_TRUE(a.is_explicit("image_size_aux"));
  EXPECT_FALSE(a.is_explicit("seed"));
}

TEST(RunArgs, ConfigFileWithFlagsOverriding) {
  const std::string dir = test::temp_dir("args");
  const std::string cfg = dir + "/run.json";
  write_file_atomic(cfg, R"({"_comment": "x", "learning_rate": 0.002, "seed": 7, "bf16": true,
                            "lr_scheduler_type": "cosine", "per_device_train_batch_size": 2})");
  TrainArgs a;
  std::string help;
  auto args = base_args("o");
  args.insert(args.end(), {"--config", cfg, "--learning_rate", "3e-4"});
  ASSERT_TRUE(parse_train_args(args, &a, &help));
  EXPECT_DOUBLE_EQ(a.learning_rate, 3e-4);  // the flag wins
  EXPECT_EQ(a.seed, 7u);
  EXPECT_TRUE(a.bf16);
  EXPECT_EQ(a.per_device_train_batch_size, 2);
  EXPECT_EQ(a.lr_scheduler_type, "cosine");
  EXPECT_TRUE(a.is_explicit("seed"));

  write_file_atomic(cfg, R"({"learning_rat": 0.002})");
  try {
    parse_train_args(args, &a, &help);
    FAIL() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(cfg), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("learning_rate"), std::string::npos) << e.what();
  }
}

TEST(RunArgs, BadCombinationsAreUsageErrors) {
  TrainArgs a;
  std::string help;
  auto expect_error = [&](std::vector<std::string> extra, const std::string& needle) {
    auto args = base_args("o");
    args.insert(args.end(), extra.begin(), extra.end());
    try {
      parse_train_args(args, &a, &help);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({"--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "4",
                "--expected_global_batch_size", "256"},
               "= 32, but --expected_global_batch_size is 256");
  expect_error({"--tune_mm_mlp_adapter", "false"}, "contradicts --stage pretrain");
  expect_error({"--bf16", "true", "--fp16", "true"}, "exclusive");
  expect_error({"--on_bad_sample", "ignore"}, "--on_bad_sample");
  expect_error({"--image_aspect_ratio", "anyres"}, "--image_aspect_ratio");
  expect_error({"--mm_use_im_start_end", "true"}, "not supported");
  expect_error({"--learnig_rate", "1"}, "did you mean --learning_rate");
}

TEST(RunArgs, ResumeIncompatibilitiesNameTheKeys) {
  TrainArgs a;
  Json s = a.to_json();
  Json n = s;
  EXPECT_TRUE(resume_incompatibilities(s, n).empty());
  n["learning_rate"] = 1.0;
  n["output_dir"] = "elsewhere";  // paths may move
  const auto bad = resume_incompatibilities(s, n);
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_NE(bad[0].find("learning_rate"), std::string::npos);
}

TEST(Checkpoints, CompleteOnlyRotationKeepsNewest) {
  const std::string out = test::temp_dir("ckpt");
  for (int step : {2, 4, 6}) {
    CheckpointWriter w(out, step);
    write_file_atomic(w.file("a.txt"), std::to_string(step));
    w.commit(Json{{"global_step", step}});
  }
  {
    CheckpointWriter abandoned(out, 8);  // destroyed without commit: leaves nothing
    write_file_atomic(abandoned.file("a.txt"), "x");
  }
  make_dirs(out + "/checkpoint-10.tmp-123");  // an interrupted save of another process
  make_dirs(out + "/checkpoint-12");          // no trainer_state.json: not complete
  auto cps = list_checkpoints(out);
  ASSERT_EQ(cps.size(), 3u);
  EXPECT_EQ(cps.back().step, 6);
  EXPECT_EQ(read_file(cps.back().path + "/a.txt"), "6");
  EXPECT_FALSE(path_exists(out + "/checkpoint-8"));
  EXPECT_EQ(remove_incomplete_checkpoints(out), 1);
  EXPECT_FALSE(path_exists(out + "/checkpoint-10.tmp-123"));
  const auto removed = rotate_checkpoints(out, 1, 6);
  EXPECT_EQ(removed.size(), 2u);
  cps = list_checkpoints(out);
  ASSERT_EQ(cps.size(), 1u);
  EXPECT_EQ(cps[0].step, 6);
  // Saving a step again replaces it whole.
  CheckpointWriter w(out, 6);
  write_file_atomic(w.file("b.txt"), "new");
  w.commit(Json{{"global_step", 6}});
  EXPECT_FALSE(path_exists(out + "/checkpoint-6/a.txt"));
  EXPECT_EQ(read_file(out + "/checkpoint-6/b.txt"), "new");
  // An earlier run's checkpoint beyond the one just written goes first; the new one stays.
  {
    CheckpointWriter old_run(out, 700);
    old_run.commit(Json{{"global_step", 700}});
    CheckpointWriter w4(out, 4);
    w4.commit(Json{{"global_step", 4}});
  }
  EXPECT_EQ(rotate_checkpoints(out, 2, 4), (std::vector<std::string>{out + "/checkpoint-700"}));
  cps = list_checkpoints(out);
  ASSERT_EQ(cps.size(), 2u);
  EXPECT_EQ(cps[0].step, 4);
  EXPECT_EQ(cps[1].step, 6);
  EXPECT_EQ(rotate_checkpoints(out, 1, 4), (std::vector<std::string>{out + "/checkpoint-6"}));
  EXPECT_EQ(list_checkpoints(out).size(), 1u);
  EXPECT_EQ(list_checkpoints(out)[0].step, 4);
  // A re-save killed between its two renames: the old complete folder is put back.
  make_dirs(out + "/checkpoint-4.tmp-old-999");
  write_file_atomic(out + "/checkpoint-4.tmp-old-999/" + kTrainerStateFile, "{}");
  make_dirs(out + "/checkpoint-4.tmp-1000");
  write_file_atomic(out + "/checkpoint-4.tmp-1000/" + kTrainerStateFile, "{}");
  remove_tree(out + "/checkpoint-4");
  EXPECT_EQ(remove_incomplete_checkpoints(out), 1);  // the new copy; the old one restored
  ASSERT_EQ(list_checkpoints(out).size(), 1u);
  EXPECT_EQ(list_checkpoints(out)[0].step, 4);
  EXPECT_FALSE(path_exists(out + "/checkpoint-4.tmp-old-999"));
}

TEST(Metrics, PythonFloatRepr) {
  // Values and their repr() in CPython.
  const std::vector<std::pair<double, std::string>> cases = {
      {0.001, "0.001"},        {1e-05, "1e-05"},  {2e-05, "2e-05"}, {1.5e-05, "1.5e-05"},
      {0.0001, "0.0001"},      {123.0, "123.0"},  {1e16, "1e+16"},  {1234567890123456.0, "1234567890123456.0"},
      {0.1 + 0.2, "0.30000000000000004"}, {2.5, "2.5"}, {-0.5, "-0.5"}, {0.0, "0.0"},
      {6.2383, "6.2383"},      {1e22, "1e+22"},   {0.00012345, "0.00012345"}};
  for (const auto& [v, want] : cases) EXPECT_EQ(py_float(v), want) << want;
  EXPECT_EQ(py_round(2.675, 2), 2.67);  // binary 2.67499999...
  EXPECT_EQ(hf_log_line(2.345678, 1.25, 0.001, 0.0123),
            "{'loss': 2.3457, 'grad_norm': 1.25, 'learning_rate': 0.001, 'epoch': 0.01}");
  EXPECT_EQ(format_duration(3725), "1:02:05");
  EXPECT_EQ(format_duration(65), "01:05");
}

TEST(Metrics, ResumeDropsLinesAfterTheCheckpoint) {
  const std::string dir = test::temp_dir("metrics");
  const std::string path = dir + "/metrics.jsonl";
  {
    MetricsLog m(path, 0);
    for (int s = 1; s <= 5; ++s) m.append(Json{{"step", s}, {"loss", 10.0 - s}});
  }
  std::ofstream(path, std::ios::app) << "{\"step\": 6, \"lo";  // torn by a kill
  MetricsLog m(path, 3);
  ASSERT_EQ(m.losses().size(), 3u);
  m.append(Json{{"step", 4}, {"loss", 1.0}});
  const std::string text = read_file(path);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4);
  EXPECT_EQ(m.losses().back().second, 1.0);
}

}  // namespace
}  // namespace mgm::trainer
