#include "data/image.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"

#ifdef MGM_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#else
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#endif

namespace mgm::data {

// ---- decoding ---------------------------------------------------------------------------------

#ifdef MGM_WITH_OPENCV
RgbImage decode_image_bytes(const uint8_t* data, size_t size, const std::string& what) {
  if (size == 0) throw Error(str_cat(what, ": empty image file"));
  cv::Mat buf(1, static_cast<int>(size), CV_8UC1, const_cast<uint8_t*>(data));
  // UNCHANGED: no EXIF rotation (PIL ignores it too) and the raw depth, so 16-bit grayscale can
  // be clamped as PIL's convert('RGB') does.
  cv::Mat m;
  try {
    m = cv::imdecode(buf, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    throw Error(str_cat(what, ": cannot decode image: ", e.what()));
  }
  if (m.empty())
    throw Error(str_cat(what, ": cannot decode image (corrupt or unsupported format)"));
  const int ch = m.channels();
  if (ch != 1 && ch != 3 && ch != 4) throw Error(str_cat(what, ": unsupported channel count ", ch));
  RgbImage out(m.cols, m.rows);
  const int depth = m.depth();
  if (depth != CV_8U && depth != CV_16U) throw Error(str_cat(what, ": unsupported pixel depth"));
  for (int y = 0; y < m.rows; ++y) {
    uint8_t* o = out.at(0, y);
    for (int x = 0; x < m.cols; ++x, o += 3) {
      if (depth == CV_8U) {
        const uint8_t* p = m.ptr<uint8_t>(y) + static_cast<size_t>(x) * ch;
        if (ch == 1)
          o[0] = o[1] = o[2] = p[0];
        else {
          o[0] = p[2];
          o[1] = p[1];
          o[2] = p[0];
        }  // BGR(A) -> RGB, alpha dropped
      } else {
        const uint16_t* p = m.ptr<uint16_t>(y) + static_cast<size_t>(x) * ch;
        if (ch == 1) {
          // PIL opens 16-bit grayscale as I;16 and convert('RGB') clamps to 255.
          uint8_t v = p[0] > 255 ? 255 : static_cast<uint8_t>(p[0]);
          o[0] = o[1] = o[2] = v;
        } else {
          // 16-bit colour is read by PIL keeping the high byte.
          o[0] = static_cast<uint8_t>(p[2] >> 8);
          o[1] = static_cast<uint8_t>(p[1] >> 8);
          o[2] = static_cast<uint8_t>(p[0] >> 8);
        }
      }
    }
  }
  return out;
}
#else
RgbImage decode_image_bytes(const uint8_t* data, size_t size, const std::string& what) {
  if (size == 0) throw Error(str_cat(what, ": empty image file"));
  int w = 0, h = 0, n = 0;
  const int len = static_cast<int>(size);
  if (stbi_is_16_bit_from_memory(data, len)) {
    stbi_us* p = stbi_load_16_from_memory(data, len, &w, &h, &n, 0);
    if (p == nullptr) throw Error(str_cat(what, ": cannot decode image: ", stbi_failure_reason()));
    RgbImage out(w, h);
    for (size_t i = 0; i < static_cast<size_t>(w) * h; ++i) {
      const stbi_us* s = p + i * n;
      if (n <= 2) {
        uint8_t v = s[0] > 255 ? 255 : static_cast<uint8_t>(s[0]);
        out.pixels[i * 3] = out.pixels[i * 3 + 1] = out.pixels[i * 3 + 2] = v;
      } else {
        for (int c = 0; c < 3; ++c) out.pixels[i * 3 + c] = static_cast<uint8_t>(s[c] >> 8);
      }
    }
    stbi_image_free(p);
    return out;
  }
  stbi_uc* p = stbi_load_from_memory(data, len, &w, &h, &n, 3);
  if (p == nullptr) throw Error(str_cat(what, ": cannot decode image: ", stbi_failure_reason()));
  RgbImage out(w, h);
  std::memcpy(out.pixels.data(), p, out.pixels.size());
  stbi_image_free(p);
  return out;
}
#endif

RgbImage decode_image_file(const std::string& path) {
  if (!path_exists(path)) throw Error(str_cat(path, ": image file not found"));
  auto m = MappedFile::open(path);
  return decode_image_bytes(m->data(), m->size(), path);
}

// ---- geometry ---------------------------------------------------------------------------------

RgbImage expand_to_square(const RgbImage& img, std::array<uint8_t, 3> bg) {
  if (img.width == img.height) return img;
  const int s = std::max(img.width, img.height);
  RgbImage out(s, s);
  for (size_t i = 0; i < out.pixels.size(); i += 3) std::memcpy(&out.pixels[i], bg.data(), 3);
  const int ox = img.width > img.height ? 0 : (img.height - img.width) / 2;
  const int oy = img.width > img.height ? (img.width - img.height) / 2 : 0;
  for (int y = 0; y < img.height; ++y)
    std::memcpy(out.at(ox, y + oy), img.at(0, y), static_cast<size_t>(img.width) * 3);
  return out;
}

namespace {

// PIL's Resample.c, 8 bits per channel: coefficients in double, normalised, then converted to
// fixed point with 22 fractional bits; accumulation in int32 starting at one half.
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // (min, count) per output position
  std::vector<int32_t> k;   // ksize per output position
};

Coeffs precompute(int in_size, float in0, float in1, int out_size) {
  const double support_unit = 2.0;  // bicubic
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = support_unit * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(static_cast<size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      double w = bicubic((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    for (int x = 0; x < c.ksize; ++x) {
      double v = x < xmax ? k[x] : 0.0;
      c.k[static_cast<size_t>(xx) * c.ksize + x] =
          v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t in) {
  if (in >= (1 << kPrecisionBits << 8)) return 255;
  if (in <= 0) return 0;
  return static_cast<uint8_t>(in >> kPrecisionBits);
}

}  // namespace

RgbImage resize_bicubic(const RgbImage& img, int out_w, int out_h) {
  MGM_CHECK(out_w > 0 && out_h > 0 && img.width > 0 && img.height > 0,
            "resize: empty image or size");
  Coeffs ch = precompute(img.width, 0.f, static_cast<float>(img.width), out_w);
  Coeffs cv = precompute(img.height, 0.f, static_cast<float>(img.height), out_h);
  const bool need_h = out_w != img.width;
  const bool need_v = out_h != img.height;
  const RgbImage* src = &img;
  RgbImage tmp;
  int y_first = 0;
  if (need_h) {
    // Only the source rows the vertical pass reads are resampled horizontally.
    y_first = cv.bounds[0];
    const int y_last = cv.bounds[out_h * 2 - 2] + cv.bounds[out_h * 2 - 1];
    tmp = RgbImage(out_w, y_last - y_first);
    for (int y = 0; y < tmp.height; ++y) {
      for (int xx = 0; xx < out_w; ++xx) {
        const int xmin = ch.bounds[xx * 2], xmax = ch.bounds[xx * 2 + 1];
        const int32_t* k = &ch.k[static_cast<size_t>(xx) * ch.ksize];
        int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        const uint8_t* row = img.at(0, y + y_first);
        for (int x = 0; x < xmax; ++x) {
          const uint8_t* p = row + static_cast<size_t>(x + xmin) * 3;
          s0 += p[0] * k[x];
          s1 += p[1] * k[x];
          s2 += p[2] * k[x];
        }
        uint8_t* o = tmp.at(xx, y);
        o[0] = clip8(s0);
        o[1] = clip8(s1);
        o[2] = clip8(s2);
      }
    }
    src = &tmp;
  }
  if (!need_v) {
    if (need_h) return tmp;
    return img;
  }
  RgbImage out(src->width, out_h);
  for (int yy = 0; yy < out_h; ++yy) {
    const int ymin = cv.bounds[yy * 2] - (need_h ? y_first : 0), ymax = cv.bounds[yy * 2 + 1];
    const int32_t* k = &cv.k[static_cast<size_t>(yy) * cv.ksize];
    for (int x = 0; x < src->width; ++x) {
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int y = 0; y < ymax; ++y) {
        const uint8_t* p = src->at(x, y + ymin);
        s0 += p[0] * k[y];
        s1 += p[1] * k[y];
        s2 += p[2] * k[y];
      }
      uint8_t* o = out.at(x, yy);
      o[0] = clip8(s0);
      o[1] = clip8(s1);
      o[2] = clip8(s2);
    }
  }
  return out;
}

RgbImage center_crop(const RgbImage& img, int cw, int chh) {
  // transformers' center_crop: Python floor division for the offsets; when the crop is larger
  // than the image, zero padding centred with ceil, then the same window shifted by the pad.
  auto floordiv2 = [](int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); };
  int top = floordiv2(img.height - chh), left = floordiv2(img.width - cw);
  if (top >= 0 && left >= 0 && top + chh <= img.height && left + cw <= img.width) {
    RgbImage out(cw, chh);
    for (int y = 0; y < chh; ++y)
      std::memcpy(out.at(0, y), img.at(left, top + y), static_cast<size_t>(cw) * 3);
    return out;
  }
  const int nh = std::max(chh, img.height), nw = std::max(cw, img.width);
  RgbImage padded(nw, nh);
  const int tp = (nh - img.height + 1) / 2, lp = (nw - img.width + 1) / 2;
  for (int y = 0; y < img.height; ++y)
    std::memcpy(padded.at(lp, y + tp), img.at(0, y), static_cast<size_t>(img.width) * 3);
  top += tp;
  left += lp;
  const int y0 = std::max(0, top), y1 = std::min(nh, top + chh);
  const int x0 = std::max(0, left), x1 = std::min(nw, left + cw);
  RgbImage out(x1 - x0, y1 - y0);
  for (int y = y0; y < y1; ++y)
    std::memcpy(out.at(0, y - y0), padded.at(x0, y), static_cast<size_t>(x1 - x0) * 3);
  return out;
}

std::array<int, 2> shortest_edge_size(int w, int h, int shortest) {
  const bool w_short = w <= h;
  const int s = w_short ? w : h, l = w_short ? h : w;
  const int new_long = static_cast<int>(static_cast<double>(shortest) * l / s);
  return w_short ? std::array<int, 2>{shortest, new_long} : std::array<int, 2>{new_long, shortest};
}

std::array<uint8_t, 3> ImageProcessorConfig::pad_color() const {
  std::array<uint8_t, 3> c{};
  for (int i = 0; i < 3; ++i)
    c[i] = static_cast<uint8_t>(static_cast<int>(static_cast<double>(mean[i]) * 255));
  return c;
}

AspectMode parse_aspect_mode(const std::string& s) {
  if (s == "square") return AspectMode::kSquare;
  if (s == "pad") return AspectMode::kPad;
  throw UsageError(str_cat("--image_aspect_ratio: expected pad or square, got '", s, "'"));
}

RgbImage preprocess_uint8(const RgbImage& img, const ImageProcessorConfig& cfg, AspectMode mode) {
  RgbImage x = mode == AspectMode::kPad ? expand_to_square(img, cfg.pad_color()) : img;
  auto [w, h] = shortest_edge_size(x.width, x.height, cfg.shortest_edge);
  if (w != x.width || h != x.height) x = resize_bicubic(x, w, h);
  return center_crop(x, cfg.crop, cfg.crop);
}

std::vector<float> normalize_chw(const RgbImage& img, const ImageProcessorConfig& cfg) {
  const size_t hw = static_cast<size_t>(img.width) * img.height;
  std::vector<float> out(hw * 3);
  for (size_t i = 0; i < hw; ++i)
    for (int c = 0; c < 3; ++c) {
      const float v = static_cast<float>(img.pixels[i * 3 + c] * cfg.rescale);
      out[c * hw + i] = (v - cfg.mean[c]) / cfg.std[c];
    }
  return out;
}

}  // namespace mgm::data
