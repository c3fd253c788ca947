#include "common/cli.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace mgm::cli {
namespace {

ArgParser make() {
  ArgParser p("train_mgm", "test");
  p.flag("model_name_or_path", Kind::kString, "", "model", true);
  p.flag("per_device_train_batch_size", Kind::kInt, "8", "batch");
  p.flag("learning_rate", Kind::kFloat, "1e-3", "lr");
  p.flag("bf16", Kind::kBool, "false", "bf16");
  p.flag("tf32", Kind::kBool, "false", "tf32");
  p.flag("lora_target_modules", Kind::kString, "", "targets");
  return p;
}

TEST(ArgParser, ParsesSpaceAndEqualsFormsAndDashesOrUnderscores) {
  ArgParser p = make();
  ASSERT_TRUE(p.parse({"--model_name_or_path", "/m", "--per-device-train-batch-size=4",
                       "--learning_rate", "2e-5", "--bf16", "true", "--tf32",
                       "--lora_target_modules", "q_proj, k_proj"}));
  EXPECT_EQ(p.str("model_name_or_path"), "/m");
  EXPECT_EQ(p.integer("per_device_train_batch_size"), 4);
  EXPECT_DOUBLE_EQ(p.number("learning_rate"), 2e-5);
  EXPECT_TRUE(p.boolean("bf16"));
  EXPECT_TRUE(p.boolean("tf32"));  // bare flag
  EXPECT_EQ(p.list("lora_target_modules"), (std::vector<std::string>{"q_proj", "k_proj"}));
  EXPECT_TRUE(p.given("learning_rate"));
}

TEST(ArgParser, DefaultsAndSetDefaultDoNotOverrideGivenFlags) {
  ArgParser p = make();
  ASSERT_TRUE(p.parse({"--model_name_or_path", "/m", "--learning_rate", "5"}));
  p.set_default("learning_rate", "7");
  p.set_default("per_device_train_batch_size", "3");
  EXPECT_DOUBLE_EQ(p.number("learning_rate"), 5);
  EXPECT_EQ(p.integer("per_device_train_batch_size"), 3);
  EXPECT_FALSE(p.boolean("bf16"));
}

TEST(ArgParser, UnknownFlagSuggestsClosest) {
  ArgParser p = make();
  try {
    p.parse({"--model_name_or_path", "/m", "--learning_rat", "1"});
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown flag --learning_rat (did you mean --learning_rate?)"),
              std::string::npos)
        << e.what();
  }
}

TEST(ArgParser, BadValuesAndMissingRequiredAreUsageErrors) {
  {
    ArgParser p = make();
    EXPECT_THROW(p.parse({"--model_name_or_path", "/m", "--per_device_train_batch_size", "four"}),
                 UsageError);
  }
  {
    ArgParser p = make();
    EXPECT_THROW(p.parse({"--model_name_or_path", "/m", "--bf16=maybe"}), UsageError);
  }
  {
    ArgParser p = make();
    EXPECT_THROW(p.parse({"--bf16"}), UsageError);  // missing required
  }
  {
    ArgParser p = make();
    EXPECT_THROW(p.parse({"--model_name_or_path"}), UsageError);  // no value
  }
}

TEST(ArgParser, HelpIsReportedAndListsFlags) {
  ArgParser p = make();
  EXPECT_FALSE(p.parse({"--help"}));
  EXPECT_NE(p.help().find("--per_device_train_batch_size INT"), std::string::npos);
}

TEST(Dispatch, RunsCommandAndRejectsUnknownOnes) {
  int called = 0;
  std::vector<Command> cmds = {{"weights", "inspect", "x", [&](const std::vector<std::string>& a) {
                                  called = static_cast<int>(a.size());
                                  return 0;
                                }}};
  const char* argv1[] = {"mgm", "weights", "inspect", "a", "b"};
  EXPECT_EQ(dispatch("mgm", cmds, 5, const_cast<char**>(argv1)), 0);
  EXPECT_EQ(called, 2);
  const char* argv2[] = {"mgm", "weights", "inspekt"};
  EXPECT_THROW(dispatch("mgm", cmds, 3, const_cast<char**>(argv2)), UsageError);
  EXPECT_EQ(run_main([&] { return dispatch("mgm", cmds, 3, const_cast<char**>(argv2)); }), 2);
  EXPECT_EQ(run_main([] () -> int { throw Error("boom"); }), 1);
}

}  // namespace
}  // namespace mgm::cli
