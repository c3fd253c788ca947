#include "data/image.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/files.h"
#include "common/strings.h"

#include <atomic>
#include <climits>
#include <memory>
#include <mutex>
#include <set>

#include "common/log.h"

#ifdef MGM_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#endif
// stb_image in every build: its header reader (stbi_info) gives an image's size before any
// pixel is decoded (the decompression-bomb check); without OpenCV it also decodes.
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>

namespace mgm::data {

// ---- decompression-bomb limit (PIL's Image.MAX_IMAGE_PIXELS) ------------------------------------

namespace {
std::atomic<int64_t> g_max_image_pixels{kPilMaxImagePixels};
}  // namespace

void set_max_image_pixels(int64_t n) {
  // Bounded so that twice the limit fits in 64 bits; 0 lifts the limit.
  if (n < 0 || n > INT64_MAX / 2)
    throw UsageError(str_cat("--max_image_pixels must be in [0, ", INT64_MAX / 2, "] (0: no limit), got ", n));
  g_max_image_pixels = n;
}
int64_t max_image_pixels() { return g_max_image_pixels; }

void check_image_pixels(int64_t width, int64_t height, const std::string& what) {
  const int64_t limit = g_max_image_pixels;
  if (limit <= 0) return;
  // PIL counts max(1, w) * max(1, h); in 128 bits, as header sizes reach 2^32 - 1 per side.
  const __int128 px128 = static_cast<__int128>(std::max<int64_t>(1, width)) * std::max<int64_t>(1, height);
  const int64_t pixels = px128 > INT64_MAX ? INT64_MAX : static_cast<int64_t>(px128);
  if (px128 > 2 * limit)
    throw ImageTooLargeError(str_cat(
        what, ": image of ", width, "x", height, " = ", pixels, " pixels exceeds the limit of ", 2 * limit,
        " (twice --max_image_pixels ", limit, "), a possible decompression bomb (PIL refuses it with "
        "DecompressionBombError); raise --max_image_pixels, or set 0, only for files you trust"));
  if (pixels > limit) {
    static std::mutex mu;
    static std::set<std::string> warned;
    std::lock_guard<std::mutex> g(mu);
    if (warned.insert(what).second)
      log::warn(what, ": image of ", width, "x", height, " = ", pixels, " pixels is above --max_image_pixels ",
                limit, " (PIL warns: DecompressionBombWarning); it is decoded, twice that is refused");
  }
}

// The size fields of the common formats' headers, read here because stb_image's stbi_info
// refuses exactly the images this is for (it fails on any PNG or JPEG over 2^30 bytes decoded:
// "Image too large to decode"), and OpenCV has no header-only API. Formats not listed here
// (PNM, TGA, PSD, HDR, PIC) go through stbi_info; others (TIFF, ...) are checked once decoded.
std::optional<std::pair<int64_t, int64_t>> read_image_size(const uint8_t* d, size_t n) {
  auto be16 = [&](size_t i) { return static_cast<int64_t>(d[i]) << 8 | d[i + 1]; };
  auto be32 = [&](size_t i) { return be16(i) << 16 | be16(i + 2); };
  auto le16 = [&](size_t i) { return static_cast<int64_t>(d[i + 1]) << 8 | d[i]; };
  auto le24 = [&](size_t i) { return le16(i) | static_cast<int64_t>(d[i + 2]) << 16; };
  auto le32 = [&](size_t i) { return static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(le16(i) | le16(i + 2) << 16))); };
  auto is = [&](size_t at, const char* magic) {
    const size_t len = std::strlen(magic);
    return n >= at + len && std::memcmp(d + at, magic, len) == 0;
  };
  using Size = std::pair<int64_t, int64_t>;
  if (is(0, "\x89PNG\r\n\x1a\n")) {
    if (n >= 24 && is(12, "IHDR")) return Size{be32(16), be32(20)};
    return std::nullopt;
  }
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8) {  // JPEG: the first SOFn segment
    size_t i = 2;
    while (i + 1 < n) {
      while (i < n && d[i] != 0xFF) ++i;  // stray bytes between segments: skipped, as PIL does
      while (i < n && d[i] == 0xFF) ++i;  // fill bytes
      if (i >= n) return std::nullopt;
      const uint8_t m = d[i++];
      if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // no length field
      if (m == 0xD9 || m == 0xDA || i + 2 > n) return std::nullopt;      // EOI / scan before a frame
      const size_t len = static_cast<size_t>(be16(i));
      const bool sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
      if (sof) {
        if (i + 7 > n) return std::nullopt;
        return Size{be16(i + 5), be16(i + 3)};
      }
      if (len < 2) return std::nullopt;
      i += len;
    }
    return std::nullopt;
  }
  if (is(0, "GIF87a") || is(0, "GIF89a")) return n >= 10 ? std::optional<Size>(Size{le16(6), le16(8)}) : std::nullopt;
  if (is(0, "BM") && n >= 26) {
    if (le32(14) == 12) return Size{le16(18), le16(20)};  // OS/2 BITMAPCOREHEADER
    const int64_t w = le32(18), h = le32(22);
    return Size{w < 0 ? -w : w, h < 0 ? -h : h};
  }
  if (is(0, "RIFF") && is(8, "WEBP")) {
    if (is(12, "VP8 ") && n >= 30) return Size{le16(26) & 0x3FFF, le16(28) & 0x3FFF};
    if (is(12, "VP8L") && n >= 25) {
      const uint32_t b = static_cast<uint32_t>(le16(21) | le16(23) << 16);
      return Size{(b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1};
    }
    if (is(12, "VP8X") && n >= 30) return Size{le24(24) + 1, le24(27) + 1};
    return std::nullopt;
  }
  if (n > static_cast<size_t>(INT_MAX)) return std::nullopt;
  int w = 0, h = 0, c = 0;
  if (stbi_info_from_memory(d, static_cast<int>(n), &w, &h, &c) == 0) return std::nullopt;
  return Size{w, h};
}

std::optional<std::pair<int64_t, int64_t>> read_image_size_file(const std::string& path) {
  if (!path_exists(path)) throw Error(str_cat(path, ": image file not found"));
  auto m = MappedFile::open(path);
  return read_image_size(m->data(), m->size());
}

namespace {
// The header's size against the limit before any pixel is decoded (formats stb_image cannot
// read are checked once decoded, below).
void check_header(const uint8_t* data, size_t size, const std::string& what) {
  if (size > static_cast<size_t>(INT_MAX)) throw Error(str_cat(what, ": image file larger than 2 GiB"));
  if (const auto wh = read_image_size(data, size)) check_image_pixels(wh->first, wh->second, what);
}
}  // namespace

// ---- decoding ---------------------------------------------------------------------------------

#ifdef MGM_WITH_OPENCV
RgbImage decode_image_bytes(const uint8_t* data, size_t size, const std::string& what) {
  if (size == 0) throw Error(str_cat(what, ": empty image file"));
  check_header(data, size, what);
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
  check_image_pixels(m.cols, m.rows, what);
  const int ch = m.channels();
  if (ch != 1 && ch != 3 && ch != 4) throw Error(str_cat(what, ": unsupported channel count ", ch));
  RgbImage out(m.cols, m.rows);
  const int depth = m.depth();
  if (depth != CV_8U && depth != CV_16U) throw Error(str_cat(what, ": unsupported pixel depth"));
  // One tight loop per layout (no per-pixel branches): BGR(A) -> RGB with alpha dropped, gray
  // replicated.
  for (int y = 0; y < m.rows; ++y) {
    uint8_t* o = out.at(0, y);
    const int w = m.cols;
    if (depth == CV_8U) {
      const uint8_t* p = m.ptr<uint8_t>(y);
      if (ch == 3) {
        for (int x = 0; x < w; ++x, p += 3, o += 3) {
          o[0] = p[2];
          o[1] = p[1];
          o[2] = p[0];
        }
      } else if (ch == 4) {
        for (int x = 0; x < w; ++x, p += 4, o += 3) {
          o[0] = p[2];
          o[1] = p[1];
          o[2] = p[0];
        }
      } else {
        for (int x = 0; x < w; ++x, ++p, o += 3) o[0] = o[1] = o[2] = p[0];
      }
    } else {
      const uint16_t* p = m.ptr<uint16_t>(y);
      for (int x = 0; x < w; ++x, p += ch, o += 3) {
        if (ch == 1) {
          // PIL opens 16-bit grayscale as I;16 and convert('RGB') clamps to 255.
          o[0] = o[1] = o[2] = p[0] > 255 ? 255 : static_cast<uint8_t>(p[0]);
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
  check_header(data, size, what);
  int w = 0, h = 0, n = 0;
  const int len = static_cast<int>(size);
  // stb's pixels, freed however this function is left.
  struct StbFree {
    void operator()(void* p) const { stbi_image_free(p); }
  };
  if (stbi_is_16_bit_from_memory(data, len)) {
    const std::unique_ptr<stbi_us, StbFree> pixels(stbi_load_16_from_memory(data, len, &w, &h, &n, 0));
    if (!pixels) throw Error(str_cat(what, ": cannot decode image: ", stbi_failure_reason()));
    check_image_pixels(w, h, what);  // a header the check above could not read
    const stbi_us* p = pixels.get();
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
    return out;
  }
  const std::unique_ptr<stbi_uc, StbFree> pixels(stbi_load_from_memory(data, len, &w, &h, &n, 3));
  if (!pixels) throw Error(str_cat(what, ": cannot decode image: ", stbi_failure_reason()));
  check_image_pixels(w, h, what);  // a header the check above could not read
  RgbImage out(w, h);
  std::memcpy(out.pixels.data(), pixels.get(), out.pixels.size());
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
// fixed point with 22 fractional bits; accumulation in int32 starting at one half. Every output
// value is clip8(half + sum of pixel * coefficient) over the same terms as PIL's loops; the
// integer sums are exact, so the order of accumulation (row-wise here, for vectorisation) does
// not change a single value.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

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

// The horizontal pass of one RGB row (`row` holds the whole source row) for output pixels
// [x0, x1).
void resample_row_h(const uint8_t* row, const Coeffs& ch, int x0, int x1, uint8_t* out) {
  for (int xx = x0; xx < x1; ++xx) {
    const int xmin = ch.bounds[xx * 2], xmax = ch.bounds[xx * 2 + 1];
    const int32_t* k = &ch.k[static_cast<size_t>(xx) * ch.ksize];
    int32_t s0 = kHalf, s1 = kHalf, s2 = kHalf;
    const uint8_t* p = row + static_cast<size_t>(xmin) * 3;
    for (int x = 0; x < xmax; ++x, p += 3) {
      s0 += p[0] * k[x];
      s1 += p[1] * k[x];
      s2 += p[2] * k[x];
    }
    out[xx * 3] = clip8(s0);
    out[xx * 3 + 1] = clip8(s1);
    out[xx * 3 + 2] = clip8(s2);
  }
}

// The vertical pass into `out` (out->width * 3 bytes a row): out row yy = clip8(half +
// sum_t k_t * source row (ymin + t)), where source row y is `src` row y - y_offset. 64 bytes of
// the row at a time: fixed-length loops over restrict pointers, which compilers vectorise at -O2
// on any target (clip8 is clamp(sum >> 22, 0, 255) for every int32 sum). When `bg_row` is given,
// source rows outside [img_y0, img_y1) all equal it, and an output row whose taps all fall there
// is that row times the sum of its coefficients.
void vertical_pass(const RgbImage& src, int y_offset, const Coeffs& cv, RgbImage* out,
                   const uint8_t* bg_row, int img_y0, int img_y1) {
  const size_t row_bytes = static_cast<size_t>(out->width) * 3;
  constexpr size_t kBlock = 64;
  for (int yy = 0; yy < out->height; ++yy) {
    const int ymin = cv.bounds[yy * 2], ymax = cv.bounds[yy * 2 + 1];
    const int32_t* k = &cv.k[static_cast<size_t>(yy) * cv.ksize];
    uint8_t* __restrict o = out->at(0, yy);
    if (bg_row != nullptr && (ymin + ymax <= img_y0 || ymin >= img_y1)) {
      int32_t ksum = 0;
      for (int t = 0; t < ymax; ++t) ksum += k[t];
      for (size_t i = 0; i < row_bytes; ++i) o[i] = clip8(kHalf + bg_row[i] * ksum);
      continue;
    }
    const uint8_t* r0 = src.at(0, ymin - y_offset);
    size_t i = 0;
    for (; i + kBlock <= row_bytes; i += kBlock) {
      int32_t acc[kBlock];
      for (size_t j = 0; j < kBlock; ++j) acc[j] = kHalf;
      for (int t = 0; t < ymax; ++t) {
        const uint8_t* __restrict r = r0 + static_cast<size_t>(t) * row_bytes + i;
        const int32_t kt = k[t];
        for (size_t j = 0; j < kBlock; ++j) acc[j] += r[j] * kt;
      }
      for (size_t j = 0; j < kBlock; ++j) {
        int32_t v = acc[j] >> kPrecisionBits;
        v = v < 0 ? 0 : v;
        o[i + j] = static_cast<uint8_t>(v > 255 ? 255 : v);
      }
    }
    for (; i < row_bytes; ++i) {
      int32_t acc = kHalf;
      for (int t = 0; t < ymax; ++t) acc += r0[static_cast<size_t>(t) * row_bytes + i] * k[t];
      o[i] = clip8(acc);
    }
  }
}

// PIL's resize of a virtual sw x sh image that holds `img` at (ox, oy) on a `bg` background
// (expand2square's canvas when padding; the image itself when sw, sh = its size and ox = oy = 0),
// without materialising the canvas when the horizontal pass runs first: an output pixel whose
// taps all fall on background gets the background's sum, computed once per output column (and
// once per output row vertically).
RgbImage resample(const RgbImage& img, int sw, int sh, int ox, int oy,
                  const std::array<uint8_t, 3>& bg, int out_w, int out_h) {
  MGM_CHECK(out_w > 0 && out_h > 0 && sw > 0 && sh > 0, "resize: empty image or size");
  const bool need_h = out_w != sw;
  const bool need_v = out_h != sh;
  const bool padded = sw != img.width || sh != img.height;
  // Pillow 13 (the pinned reference) runs the vertical pass first when the height shrinks by
  // more than twice as many pixels as the width; older Pillow always went horizontal first.
  // Never the case for the square canvas of 'pad' mode.
  const bool horizontal_first = !((sh - out_h) > 0 && (sh - out_h) > (sw - out_w) * 2);
  Coeffs ch, cv;
  if (need_h) ch = precompute(sw, 0.f, static_cast<float>(sw), out_w);
  if (need_v) cv = precompute(sh, 0.f, static_cast<float>(sh), out_h);

  if (!horizontal_first) {
    if (padded) {  // rare (never in the training pipeline): resample the built canvas
      RgbImage canvas(sw, sh);
      for (size_t i = 0; i < canvas.pixels.size(); i += 3)
        std::memcpy(&canvas.pixels[i], bg.data(), 3);
      for (int y = 0; y < img.height; ++y)
        std::memcpy(canvas.at(ox, y + oy), img.at(0, y), static_cast<size_t>(img.width) * 3);
      return resample(canvas, sw, sh, 0, 0, bg, out_w, out_h);
    }
    RgbImage tmp(sw, out_h);
    vertical_pass(img, 0, cv, &tmp, nullptr, 0, sh);
    if (!need_h) return tmp;
    RgbImage out(out_w, out_h);
    for (int y = 0; y < out_h; ++y) resample_row_h(tmp.at(0, y), ch, 0, out_w, out.at(0, y));
    return out;
  }

  const size_t row_bytes = static_cast<size_t>(out_w) * 3;
  // The horizontal pass's output for an all-background row, and the output columns whose taps
  // cover image pixels, [cx0, cx1) (the others always equal bg_row).
  std::vector<uint8_t> bg_row(row_bytes);
  int cx0 = 0, cx1 = out_w;
  for (int xx = 0; xx < out_w; ++xx) {
    int32_t ksum = 1 << kPrecisionBits;  // the identity when the width stays
    if (need_h) {
      ksum = 0;
      for (int x = 0; x < ch.bounds[xx * 2 + 1]; ++x)
        ksum += ch.k[static_cast<size_t>(xx) * ch.ksize + x];
    }
    for (int c = 0; c < 3; ++c) bg_row[xx * 3 + c] = clip8(kHalf + bg[c] * ksum);
  }
  if (padded) {
    auto touches_image = [&](int xx) {
      const int lo = need_h ? ch.bounds[xx * 2] : xx;
      const int hi = need_h ? lo + ch.bounds[xx * 2 + 1] : xx + 1;
      return hi > ox && lo < ox + img.width;
    };
    while (cx0 < out_w && !touches_image(cx0)) ++cx0;
    cx1 = cx0;
    while (cx1 < out_w && touches_image(cx1)) ++cx1;
  }

  // Horizontal pass over the source rows the vertical pass reads, [y_first, y_last).
  const int y_first = need_v ? cv.bounds[0] : 0;
  const int y_last = need_v ? cv.bounds[out_h * 2 - 2] + cv.bounds[out_h * 2 - 1] : sh;
  RgbImage tmp(out_w, y_last - y_first);
  std::vector<uint8_t> canvas_row(padded ? static_cast<size_t>(sw) * 3 : 0);
  if (padded)  // background pixels of the canvas row; the image part is copied per row
    for (int x = 0; x < sw; ++x) std::memcpy(&canvas_row[static_cast<size_t>(x) * 3], bg.data(), 3);
  for (int y = y_first; y < y_last; ++y) {
    uint8_t* o = tmp.at(0, y - y_first);
    const int iy = y - oy;
    if (iy < 0 || iy >= img.height) {
      std::memcpy(o, bg_row.data(), row_bytes);
      continue;
    }
    const uint8_t* row = img.at(0, iy);
    if (padded) {
      std::memcpy(&canvas_row[static_cast<size_t>(ox) * 3], row,
                  static_cast<size_t>(img.width) * 3);
      row = canvas_row.data();
    }
    if (!need_h) {
      std::memcpy(o, row, row_bytes);
      continue;
    }
    std::memcpy(o, bg_row.data(), static_cast<size_t>(cx0) * 3);
    resample_row_h(row, ch, cx0, cx1, o);
    std::memcpy(o + static_cast<size_t>(cx1) * 3, &bg_row[static_cast<size_t>(cx1) * 3],
                static_cast<size_t>(out_w - cx1) * 3);
  }
  if (!need_v) return tmp;
  RgbImage out(out_w, out_h);
  vertical_pass(tmp, y_first, cv, &out, padded ? bg_row.data() : nullptr, oy, oy + img.height);
  return out;
}

void square_offsets(const RgbImage& img, int* ox, int* oy) {
  *ox = img.width > img.height ? 0 : (img.height - img.width) / 2;
  *oy = img.width > img.height ? (img.width - img.height) / 2 : 0;
}

}  // namespace

RgbImage resize_bicubic(const RgbImage& img, int out_w, int out_h) {
  MGM_CHECK(img.width > 0 && img.height > 0, "resize: empty image or size");
  if (out_w == img.width && out_h == img.height) return img;
  return resample(img, img.width, img.height, 0, 0, {0, 0, 0}, out_w, out_h);
}

RgbImage resize_bicubic_padded(const RgbImage& img, std::array<uint8_t, 3> bg, int out_w,
                               int out_h) {
  MGM_CHECK(img.width > 0 && img.height > 0, "resize: empty image or size");
  const int s = std::max(img.width, img.height);
  if (out_w == s && out_h == s) return expand_to_square(img, bg);
  int ox = 0, oy = 0;
  square_offsets(img, &ox, &oy);
  return resample(img, s, s, ox, oy, bg, out_w, out_h);
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
  RgbImage x;
  if (mode == AspectMode::kPad && img.width != img.height) {
    // expand2square + resize in one pass over the image (the canvas is never built).
    const int s = std::max(img.width, img.height);
    auto [w, h] = shortest_edge_size(s, s, cfg.shortest_edge);
    x = resize_bicubic_padded(img, cfg.pad_color(), w, h);
  } else {
    auto [w, h] = shortest_edge_size(img.width, img.height, cfg.shortest_edge);
    x = resize_bicubic(img, w, h);
  }
  if (x.width == cfg.crop && x.height == cfg.crop) return x;
  return center_crop(x, cfg.crop, cfg.crop);
}

std::vector<float> normalize_chw(const RgbImage& img, const ImageProcessorConfig& cfg) {
  // The value depends only on (channel, byte): a 3 x 256 table computed with exactly the
  // per-element arithmetic (float64 rescale, float32 normalise).
  float lut[3][256];
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v)
      lut[c][v] = (static_cast<float>(v * cfg.rescale) - cfg.mean[c]) / cfg.std[c];
  const size_t hw = static_cast<size_t>(img.width) * img.height;
  std::vector<float> out(hw * 3);
  float* r = out.data();
  float* g = r + hw;
  float* b = g + hw;
  const uint8_t* p = img.pixels.data();
  for (size_t i = 0; i < hw; ++i, p += 3) {
    r[i] = lut[0][p[0]];
    g[i] = lut[1][p[1]];
    b[i] = lut[2][p[2]];
  }
  return out;
}

}  // namespace mgm::data
