// The loss-curve PNG: it decodes to the requested size with the curve's colours drawn inside the
// axes; errors name the path; tick and smoothing helpers by hand.
#include "trainer/plot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/files.h"
#include "data/image.h"
#include "tests_util.h"

namespace mgm::trainer {
namespace {

TEST(Plot, TicksAndSmoothingByHand) {
  EXPECT_EQ(nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  const auto t = nice_ticks(0.13, 0.87, 6);
  ASSERT_EQ(t.size(), 7u);
  EXPECT_NEAR(t.front(), 0.2, 1e-12);
  EXPECT_NEAR(t.back(), 0.8, 1e-12);
  EXPECT_EQ(nice_ticks(-3, 17, 4), (std::vector<double>{0, 5, 10, 15}));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto s = smooth_losses({1.0, nan, 2.0}, 0.5);
  EXPECT_DOUBLE_EQ(s[0], 1.0);  // debiased: the first point is itself
  EXPECT_TRUE(std::isnan(s[1]));
  EXPECT_DOUBLE_EQ(s[2], (0.5 * 0.5 * 1.0 + 0.5 * 2.0) / (1 - 0.25));
}

#ifdef MGM_WITH_OPENCV
// Pixels whose RGB is within `tol` of `rgb`.
int count_color(const data::RgbImage& img, int r, int g, int b, int tol) {
  int n = 0;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      const uint8_t* p = img.at(x, y);
      n += std::abs(p[0] - r) <= tol && std::abs(p[1] - g) <= tol && std::abs(p[2] - b) <= tol;
    }
  return n;
}

TEST(Plot, WritesADecodablePng) {
  std::vector<double> steps, losses;
  for (int i = 1; i <= 300; ++i) {
    steps.push_back(i);
    losses.push_back(3.0 * std::exp(-i / 80.0) + 0.3 * std::sin(i * 1.7) + 0.5);
  }
  losses[150] = std::numeric_limits<double>::quiet_NaN();  // left out, not fatal
  const std::string dir = test::temp_dir("plot");
  const std::string path = dir + "/loss.png";
  write_loss_plot(path, steps, losses, "stage 1 pretrain loss");
  const data::RgbImage img = data::decode_image_file(path);
  EXPECT_EQ(img.width, 960);
  EXPECT_EQ(img.height, 540);
  const uint8_t* corner = img.at(2, 2);
  EXPECT_EQ(corner[0] + corner[1] + corner[2], 3 * 255);  // white background
  EXPECT_GT(count_color(img, 20, 80, 180, 10), 300);      // the smoothed curve (2 px wide)
  EXPECT_GT(count_color(img, 140, 190, 235, 10), 300);    // the raw curve
  EXPECT_GT(count_color(img, 0, 0, 0, 40), 1000);         // axes, ticks and text

  // Overwrites in place; a custom size; a single point and an empty series still draw.
  write_loss_plot(dir + "/one.png", {5}, {2.5}, "one point", 400, 300);
  write_loss_plot(dir + "/one.png", {5}, {2.5}, "one point", 400, 300);
  const data::RgbImage small = data::decode_image_file(dir + "/one.png");
  EXPECT_EQ(small.width, 400);
  EXPECT_EQ(small.height, 300);
  write_loss_plot(dir + "/empty.png", {}, {}, "");
  EXPECT_EQ(data::decode_image_file(dir + "/empty.png").width, 960);
}

TEST(Plot, ErrorsNameThePath) {
  const std::string bad = test::temp_dir("plot_err") + "/no/such/dir/loss.png";
  try {
    write_loss_plot(bad, {1, 2}, {1, 2}, "t");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  EXPECT_FALSE(path_exists(bad));
  const std::string p = test::temp_dir("plot_err") + "/loss.png";
  EXPECT_THROW(write_loss_plot(p, {1, 2, 3}, {1, 2}, "t"), Error);
  EXPECT_THROW(write_loss_plot(p, {1}, {1}, "t", 100, 100), Error);
  EXPECT_FALSE(path_exists(p));
}
#else
TEST(Plot, WithoutOpenCvSaysSo) {
  try {
    write_loss_plot(test::temp_dir("plot") + "/loss.png", {1}, {1}, "t");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without OpenCV"), std::string::npos) << e.what();
  }
}
#endif

}  // namespace
}  // namespace mgm::trainer
