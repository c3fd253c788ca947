#include "trainer/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "common/error.h"
#include "common/files.h"

#ifdef MGM_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace mgm::trainer {

std::vector<double> smooth_losses(const std::vector<double>& losses, double w) {
  std::vector<double> out(losses.size(), std::numeric_limits<double>::quiet_NaN());
  double ema = 0.0;
  int64_t n = 0;
  for (size_t i = 0; i < losses.size(); ++i) {
    if (!std::isfinite(losses[i])) continue;
    ema = ema * w + (1 - w) * losses[i];
    ++n;
    // Debiasing: early points are not pulled towards the zero start.
    out[i] = ema / (1 - std::pow(w, static_cast<double>(n)));
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi) || target < 1) return {lo};
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / mag;
  const double step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

#ifdef MGM_WITH_OPENCV
namespace {

std::string tick_label(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

void write_loss_plot(const std::string& path, const std::vector<double>& steps,
                     const std::vector<double>& losses, const std::string& title, int width,
                     int height) {
  if (steps.size() != losses.size())
    throw Error(str_cat(path, ": loss plot needs one step per loss (", steps.size(), " steps, ",
                        losses.size(), " losses)"));
  if (width < 200 || height < 150)
    throw Error(str_cat(path, ": loss plot size ", width, "x", height, " is below 200x150"));

  // Data ranges over the finite points.
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!std::isfinite(steps[i]) || !std::isfinite(losses[i])) continue;
    x0 = std::min(x0, steps[i]);
    x1 = std::max(x1, steps[i]);
    y0 = std::min(y0, losses[i]);
    y1 = std::max(y1, losses[i]);
  }
  const bool empty = !(x1 >= x0);
  if (empty) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x0 -= 0.5, x1 += 0.5;
  if (y1 == y0) {
    const double pad = std::max(std::abs(y0) * 0.1, 0.5);
    y0 -= pad, y1 += pad;
  }
  const double ypad = (y1 - y0) * 0.05;
  y0 -= ypad, y1 += ypad;

  const int left = 80, right = 24, top = 44, bottom = 56;
  const int pw = width - left - right, ph = height - top - bottom;
  cv::Mat img(height, width, CV_8UC3, cv::Scalar(255, 255, 255));
  auto px = [&](double x) {
    return left + static_cast<int>(std::lround((x - x0) / (x1 - x0) * pw));
  };
  auto py = [&](double y) {
    return top + ph - static_cast<int>(std::lround((y - y0) / (y1 - y0) * ph));
  };
  const int font = cv::FONT_HERSHEY_SIMPLEX;
  const cv::Scalar black(0, 0, 0), grid(225, 225, 225), raw(235, 190, 140), smooth(180, 80, 20);

  // Grid, ticks and tick labels.
  for (double t : nice_ticks(x0, x1)) {
    const int x = px(t);
    if (x < left || x > left + pw) continue;
    cv::line(img, {x, top}, {x, top + ph}, grid, 1);
    cv::line(img, {x, top + ph}, {x, top + ph + 5}, black, 1);
    const std::string s = tick_label(t);
    int base = 0;
    const cv::Size sz = cv::getTextSize(s, font, 0.45, 1, &base);
    cv::putText(img, s, {x - sz.width / 2, top + ph + 8 + sz.height}, font, 0.45, black, 1,
                cv::LINE_AA);
  }
  for (double t : nice_ticks(y0, y1)) {
    const int y = py(t);
    if (y < top || y > top + ph) continue;
    cv::line(img, {left, y}, {left + pw, y}, grid, 1);
    cv::line(img, {left - 5, y}, {left, y}, black, 1);
    const std::string s = tick_label(t);
    int base = 0;
    const cv::Size sz = cv::getTextSize(s, font, 0.45, 1, &base);
    cv::putText(img, s, {left - 8 - sz.width, y + sz.height / 2}, font, 0.45, black, 1,
                cv::LINE_AA);
  }
  cv::rectangle(img, {left, top}, {left + pw, top + ph}, black, 1);

  // A polyline per finite run; isolated points as dots.
  auto draw_series = [&](const std::vector<double>& ys, const cv::Scalar& color, int thickness) {
    std::vector<cv::Point> run;
    auto flush = [&] {
      if (run.size() == 1) cv::circle(img, run[0], thickness + 1, color, cv::FILLED, cv::LINE_AA);
      if (run.size() > 1) cv::polylines(img, run, false, color, thickness, cv::LINE_AA);
      run.clear();
    };
    for (size_t i = 0; i < ys.size(); ++i) {
      if (!std::isfinite(steps[i]) || !std::isfinite(ys[i])) {
        flush();
        continue;
      }
      run.emplace_back(px(steps[i]), py(ys[i]));
    }
    flush();
  };
  draw_series(losses, raw, 1);
  if (losses.size() > 2) draw_series(smooth_losses(losses), smooth, 2);

  // Title, axis names and the legend.
  int base = 0;
  const std::string t = title.empty() ? "training loss" : title;
  const cv::Size tsz = cv::getTextSize(t, font, 0.6, 1, &base);
  cv::putText(img, t, {std::max(4, (width - tsz.width) / 2), 28}, font, 0.6, black, 1, cv::LINE_AA);
  const cv::Size xsz = cv::getTextSize("step", font, 0.5, 1, &base);
  cv::putText(img, "step", {left + (pw - xsz.width) / 2, height - 10}, font, 0.5, black, 1,
              cv::LINE_AA);
  cv::putText(img, "loss", {8, top - 10}, font, 0.5, black, 1, cv::LINE_AA);
  if (empty) {
    cv::putText(img, "no data", {left + pw / 2 - 30, top + ph / 2}, font, 0.6, black, 1,
                cv::LINE_AA);
  } else {
    const cv::Size lsz = cv::getTextSize("smoothed (EMA 0.9)", font, 0.45, 1, &base);
    const int lx = std::max(left + 4, left + pw - lsz.width - 44), ly = top + 16;
    cv::line(img, {lx, ly}, {lx + 24, ly}, raw, 1, cv::LINE_AA);
    cv::putText(img, "loss", {lx + 30, ly + 5}, font, 0.45, black, 1, cv::LINE_AA);
    cv::line(img, {lx, ly + 18}, {lx + 24, ly + 18}, smooth, 2, cv::LINE_AA);
    cv::putText(img, "smoothed (EMA 0.9)", {lx + 30, ly + 23}, font, 0.45, black, 1, cv::LINE_AA);
  }

  std::vector<uchar> png;
  try {
    if (!cv::imencode(".png", img, png)) throw Error("PNG encoding failed");
  } catch (const cv::Exception& e) {
    throw Error(str_cat(path, ": cannot encode the loss plot: ", e.what()));
  }
  try {
    AtomicFileWriter w(path);
    w.write(png.data(), png.size());
    w.commit();
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    throw Error(msg.find(path) != std::string::npos
                    ? msg
                    : str_cat("cannot write loss plot ", path, ": ", msg));
  }
}
#else
void write_loss_plot(const std::string& path, const std::vector<double>&,
                     const std::vector<double>&, const std::string&, int, int) {
  throw Error(
      str_cat(path, ": cannot draw the loss plot: built without OpenCV (MGM_WITH_OPENCV=OFF)"));
}
#endif

}  // namespace mgm::trainer
