// `mgm data filter`: keeps and drops samples on the stats `mgm data score` wrote, with a report
// and a histogram per score.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#ifdef MGM_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"
#include "curate/curate.h"
#include "data/records.h"

namespace mgm::curate {
namespace {

double num(const OrderedJson& stats, const char* key) {
  if (!stats.contains(key) || !stats[key].is_number()) return NAN;
  return stats[key].get<double>();
}

std::vector<double> nums(const OrderedJson& stats, const char* key) {
  std::vector<double> v;
  if (stats.contains(key) && stats[key].is_array())
    for (const auto& x : stats[key])
      if (x.is_number()) v.push_back(x.get<double>());
  return v;
}

// A histogram of `values` with vertical lines at `marks`, as a PNG. Skipped (false) in builds
// without OpenCV.
bool write_histogram(const std::string& path, const std::string& title,
                     const std::vector<double>& values, const std::vector<double>& marks) {
#ifdef MGM_WITH_OPENCV
  std::vector<double> v;
  for (double x : values)
    if (std::isfinite(x)) v.push_back(x);
  if (v.empty()) return false;
  double lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
  for (double m : marks)
    if (std::isfinite(m)) lo = std::min(lo, m), hi = std::max(hi, m);
  if (hi <= lo) hi = lo + 1;
  const int bins = 40, W = 900, H = 420, left = 70, right = 20, top = 40, bottom = 50;
  std::vector<int> count(bins, 0);
  for (double x : v) ++count[std::min(bins - 1, static_cast<int>((x - lo) / (hi - lo) * bins))];
  const int peak = std::max(1, *std::max_element(count.begin(), count.end()));
  cv::Mat img(H, W, CV_8UC3, cv::Scalar(255, 255, 255));
  const int pw = W - left - right, ph = H - top - bottom;
  const int font = cv::FONT_HERSHEY_SIMPLEX;
  const cv::Scalar black(0, 0, 0), bar(200, 140, 60), red(40, 40, 220);
  for (int b = 0; b < bins; ++b) {
    const int x0 = left + b * pw / bins, x1 = left + (b + 1) * pw / bins - 1;
    const int h = count[b] * ph / peak;
    cv::rectangle(img, {x0, top + ph - h}, {x1, top + ph}, bar, cv::FILLED);
  }
  cv::rectangle(img, {left, top}, {left + pw, top + ph}, black, 1);
  auto label = [&](const std::string& s, int x, int y) {
    cv::putText(img, s, {x, y}, font, 0.45, black, 1, cv::LINE_AA);
  };
  for (int t = 0; t <= 4; ++t) {
    const double x = lo + (hi - lo) * t / 4;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", x);
    label(buf, left + pw * t / 4 - 15, top + ph + 20);
  }
  label(std::to_string(peak), 10, top + 12);
  label("0", 40, top + ph);
  for (double m : marks) {
    if (!std::isfinite(m)) continue;
    const int x = left + static_cast<int>((m - lo) / (hi - lo) * pw);
    cv::line(img, {x, top}, {x, top + ph}, red, 2, cv::LINE_AA);
  }
  cv::putText(img, title + str_cat(" (", v.size(), " samples)"), {left, 25}, font, 0.55, black, 1,
              cv::LINE_AA);
  std::vector<uchar> png;
  cv::imencode(".png", img, png);
  write_file_atomic(path, std::string(png.begin(), png.end()));
  return true;
#else
  (void)path, (void)title, (void)values, (void)marks;
  return false;
#endif
}

}  // namespace

FilterReport filter_dataset(const FilterOptions& o) {
  if (!o.dedup.empty() && o.dedup != "phash" && o.dedup != "text" && o.dedup != "both")
    throw UsageError("--dedup: expected phash, text or both, got '" + o.dedup + "'");
  if (o.keep_top_fraction && !(*o.keep_top_fraction > 0 && *o.keep_top_fraction <= 1))
    throw UsageError("--keep-top-fraction must be in (0, 1]");
  static const std::set<std::string> rankable = {"mgm_image_gain", "mgm_image_gain_min",
                                                 "mgm_loglik", "mgm_loglik_text_only"};
  if (!rankable.count(o.rank_by))
    throw UsageError("--rank-by: expected mgm_image_gain, mgm_image_gain_min, mgm_loglik or "
                     "mgm_loglik_text_only, got '" + o.rank_by + "'");
  const CaptionDataset d = read_caption_dataset(o.data_path);
  const data::RecordFile scores = data::read_records(o.scores, data::FileKind::kJsonLines);
  if (scores.records.size() != d.samples.size())
    throw FormatError(o.scores, str_cat(scores.records.size(), " score lines for ",
                              d.samples.size(), " samples in ", o.data_path,
                              " (score the same file with mgm data score)"));
  data::check_output_path(o.out, o.overwrite, {o.data_path, o.scores});
  std::vector<OrderedJson> stats;
  for (size_t i = 0; i < d.samples.size(); ++i) {
    const auto& r = scores.records[i].value;
    const auto& s = d.samples[i].record;
    if (!r.is_object() || !r.contains("__dj__stats__"))
      throw FormatError(o.scores, str_cat(data::record_where(scores.records[i]),
                                ": no __dj__stats__"));
    if (s.contains("id") && r.contains("id") && s["id"] != r["id"])
      throw FormatError(o.scores, str_cat(data::record_where(scores.records[i]),
                                ": id ", r["id"].dump(), " but sample ", i, " of ", o.data_path,
                                " has id ", s["id"].dump()));
    stats.push_back(r["__dj__stats__"]);
  }

  const size_t n = d.samples.size();
  std::vector<std::string> reason(n);
  auto drop = [&](size_t i, const std::string& why) {
    if (reason[i].empty()) reason[i] = why;
  };
  for (size_t i = 0; i < n; ++i) {
    const auto& st = stats[i];
    if (st.contains("mgm_error")) drop(i, "unscored");
    const double words = num(st, "num_words");
    if (o.min_words && words < *o.min_words) drop(i, "too_few_words");
    if (o.max_words && words > *o.max_words) drop(i, "too_many_words");
    const auto w = nums(st, "image_width"), h = nums(st, "image_height");
    for (size_t k = 0; k < std::min(w.size(), h.size()); ++k)
      if (o.min_side && std::min(w[k], h[k]) < *o.min_side) drop(i, "image_too_small");
    for (double a : nums(st, "aspect_ratios"))
      if (o.max_aspect_ratio && a > *o.max_aspect_ratio) drop(i, "aspect_ratio");
    const double gain = num(st, "mgm_image_gain");
    if (o.min_image_gain && !(gain >= *o.min_image_gain)) drop(i, "low_image_gain");
  }
  if (!o.dedup.empty()) {
    std::vector<uint64_t> seen_hashes;
    std::set<std::string> seen_text;
    for (size_t i = 0; i < n; ++i) {
      if (!reason[i].empty()) continue;
      if (o.dedup == "text" || o.dedup == "both") {
        const std::string t = d.samples[i].caption;
        if (!seen_text.insert(t).second) {
          drop(i, "duplicate_text");
          continue;
        }
      }
      if (o.dedup == "phash" || o.dedup == "both") {
        std::vector<uint64_t> mine;
        if (stats[i].contains("image_dhash") && stats[i]["image_dhash"].is_array())
          for (const auto& hx : stats[i]["image_dhash"]) {
            const std::string h = hx.is_string() ? hx.get<std::string>() : "";
            if (h.size() != 16 || h.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
              throw FormatError(o.scores, str_cat(data::record_where(scores.records[i]),
                                                  ": image_dhash ", hx.dump(),
                                                  " is not 16 hex digits"));
            mine.push_back(std::stoull(h, nullptr, 16));
          }
        bool dup = false;
        for (uint64_t a : mine)
          for (uint64_t b : seen_hashes)
            if (hamming64(a, b) <= o.dedup_distance) dup = true;
        if (dup) {
          drop(i, "duplicate_image");
          continue;
        }
        seen_hashes.insert(seen_hashes.end(), mine.begin(), mine.end());
      }
    }
  }
  double top_cut = NAN;
  if (o.keep_top_fraction) {
    std::vector<size_t> alive;
    for (size_t i = 0; i < n; ++i)
      if (reason[i].empty()) alive.push_back(i);
    const char* key = o.rank_by.c_str();
    std::stable_sort(alive.begin(), alive.end(), [&](size_t a, size_t b) {
      const double x = num(stats[a], key), y = num(stats[b], key);
      return (std::isnan(y) ? -INFINITY : y) < (std::isnan(x) ? -INFINITY : x);
    });
    const size_t keep = static_cast<size_t>(std::ceil(*o.keep_top_fraction * alive.size()));
    for (size_t k = keep; k < alive.size(); ++k) drop(alive[k], "below_top_fraction");
    if (keep > 0 && keep <= alive.size()) top_cut = num(stats[alive[keep - 1]], key);
  }

  FilterReport rep;
  rep.input = n;
  std::vector<OrderedJson> kept;
  std::map<std::string, std::pair<size_t, Json>> by_reason;
  const std::vector<std::string> order = {"unscored",       "too_few_words",   "too_many_words",
                                          "image_too_small", "aspect_ratio",    "low_image_gain",
                                          "duplicate_text",  "duplicate_image", "below_top_fraction"};
  for (size_t i = 0; i < n; ++i) {
    if (reason[i].empty()) {
      kept.push_back(d.samples[i].record);
      continue;
    }
    auto& e = by_reason[reason[i]];
    if (e.second.is_null()) e.second = Json::array();
    ++e.first;
    if (e.second.size() < 5)
      e.second.push_back({{"where", d.samples[i].where}, {"caption", d.samples[i].caption}});
  }
  rep.kept = kept.size();
  Json dropped = Json::object();
  for (const auto& r : order)
    if (by_reason.count(r)) {
      rep.dropped.emplace_back(r, by_reason[r].first);
      dropped[r] = {{"count", by_reason[r].first}, {"examples", by_reason[r].second}};
    }
  Json thresholds = Json::object();
  if (o.min_image_gain) thresholds["min_image_gain"] = *o.min_image_gain;
  if (o.keep_top_fraction) {
    thresholds["keep_top_fraction"] = *o.keep_top_fraction;
    thresholds["rank_by"] = o.rank_by;
  }
  if (o.min_words) thresholds["min_words"] = *o.min_words;
  if (o.max_words) thresholds["max_words"] = *o.max_words;
  if (o.min_side) thresholds["min_side"] = *o.min_side;
  if (o.max_aspect_ratio) thresholds["max_aspect_ratio"] = *o.max_aspect_ratio;
  if (!o.dedup.empty()) thresholds["dedup"] = o.dedup;
  rep.json = {{"data_path", o.data_path}, {"scores", o.scores}, {"output", o.out},
              {"input", n},               {"kept", rep.kept},    {"dropped", dropped},
              {"thresholds", thresholds}};

  data::write_output(o.out, d.format == DataFormat::kDj ? data::to_json_lines_text(kept)
                                                        : data::to_json_array_text(kept));
  // Histograms of the scores with the thresholds drawn.
  Json plots = Json::array();
  auto plot = [&](const char* key, const std::string& title, std::vector<double> marks) {
    std::vector<double> v;
    for (const auto& st : stats) v.push_back(num(st, key));
    const std::string path = o.out + ".hist_" + key + ".png";
    if (write_histogram(path, title, v, marks)) plots.push_back(path);
  };
  std::vector<double> gain_marks, loglik_marks;
  if (o.min_image_gain) gain_marks.push_back(*o.min_image_gain);
  if (std::isfinite(top_cut)) (o.rank_by == "mgm_loglik" ? loglik_marks : gain_marks).push_back(top_cut);
  plot("mgm_image_gain", "image gain (mean log-likelihood with - without the image)", gain_marks);
  plot("mgm_loglik", "mean token log-likelihood of the caption given the image", loglik_marks);
  std::vector<double> word_marks;
  if (o.min_words) word_marks.push_back(static_cast<double>(*o.min_words));
  if (o.max_words) word_marks.push_back(static_cast<double>(*o.max_words));
  plot("num_words", "caption words", word_marks);
  rep.json["histograms"] = plots;
  write_file_atomic(o.out + ".report.json", rep.json.dump(2) + "\n");
  return rep;
}

}  // namespace mgm::curate
