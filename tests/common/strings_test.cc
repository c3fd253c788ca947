#include "common/strings.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace mgm {
namespace {

TEST(Strings, EditDistanceAndClosest) {
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(closest_match("lerning_rate", {"learning_rate", "warmup_ratio"}), "learning_rate");
  EXPECT_EQ(closest_match("zzzzzzzz", {"learning_rate", "warmup_ratio"}), "");
}

TEST(Strings, Sizes) {
  EXPECT_EQ(parse_size("5GB"), 5000000000ull);
  EXPECT_EQ(parse_size("500MB"), 500000000ull);
  EXPECT_EQ(parse_size("2GiB"), 2147483648ull);
  EXPECT_EQ(parse_size("1000"), 1000ull);
  EXPECT_THROW(parse_size("5XB"), UsageError);
  EXPECT_THROW(parse_size("GB"), UsageError);
  EXPECT_EQ(human_bytes(1500), "1.50 KB");
  EXPECT_EQ(with_commas(3019166144ull), "3,019,166,144");
  EXPECT_EQ(with_commas(12), "12");
}

TEST(Strings, SplitJoinTrim) {
  EXPECT_EQ(split("a,b,,c", ','), (std::vector<std::string>{"a", "b", "", "c"}));
  EXPECT_EQ(join({"a", "b"}, ", "), "a, b");
  EXPECT_EQ(trim("  x y \n"), "x y");
  EXPECT_TRUE(starts_with("model.layers", "model."));
  EXPECT_TRUE(ends_with("x.safetensors", ".safetensors"));
}

}  // namespace
}  // namespace mgm
