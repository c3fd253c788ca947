// Image decoding and the reference's preprocessing up to the normalised tensor, bit-exact with
// PIL where PIL defines the result: decode + convert('RGB') (grayscale, RGBA, palette and 16-bit
// as PIL converts them; EXIF orientation ignored, as PIL does), expand2square ('pad'), the
// shortest-edge resize with PIL's antialiased bicubic (its fixed-point arithmetic reproduced),
// centre crop and rescale/normalise as transformers' CLIPImageProcessor (PIL path). Torch-free.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "common/error.h"

namespace mgm::data {

// 8-bit RGB, row-major, interleaved (HWC).
struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;
  RgbImage() = default;
  RgbImage(int w, int h) : width(w), height(h), pixels(static_cast<size_t>(w) * h * 3, 0) {}
  uint8_t* at(int x, int y) { return &pixels[(static_cast<size_t>(y) * width + x) * 3]; }
  const uint8_t* at(int x, int y) const {
    return &pixels[(static_cast<size_t>(y) * width + x) * 3];
  }
};

// The decompression-bomb limit, as PIL's Image.MAX_IMAGE_PIXELS (Pillow 13, PIL/Image.py:
// int(1024 * 1024 * 1024 // 4 // 3)): an image of more than twice this many pixels is refused
// before any pixel is decoded (PIL's DecompressionBombError), one of more than this many is
// decoded with a warning (DecompressionBombWarning). Process-wide, as PIL's module attribute;
// the commands set it from --max_image_pixels (0: no limit).
constexpr int64_t kPilMaxImagePixels = 89478485;
// The --max_image_pixels flag's help, one text for every command that has the flag (its default
// is kPilMaxImagePixels).
constexpr const char* kMaxImagePixelsHelp =
    "decompression-bomb limit as PIL's Image.MAX_IMAGE_PIXELS: an image over twice this many pixels is a "
    "bad sample, one over it gets a warning (0: no limit)";
void set_max_image_pixels(int64_t n);
int64_t max_image_pixels();
// The error for an image over the limit (a bad sample: named, counted, the policy applies).
class ImageTooLargeError : public Error {
 public:
  explicit ImageTooLargeError(const std::string& what) : Error(what) {}
};
// Throws ImageTooLargeError above twice the limit, warns (once per `what`) above it.
void check_image_pixels(int64_t width, int64_t height, const std::string& what);
// (width, height) from the file's header without decoding: PNG, JPEG, GIF, BMP and WebP read
// here (hand-written: stb_image's stbi_info refuses the very large images this is for), PNM,
// TGA, PSD, HDR and PIC through stbi_info; nothing for other formats or a broken header.
std::optional<std::pair<int64_t, int64_t>> read_image_size(const uint8_t* data, size_t size);
std::optional<std::pair<int64_t, int64_t>> read_image_size_file(const std::string& path);

// Throws mgm::Error naming the file when it is missing or cannot be decoded, ImageTooLargeError
// when its header (or, for formats without a readable header, its decoded size) is over the
// limit above.
RgbImage decode_image_file(const std::string& path);
RgbImage decode_image_bytes(const uint8_t* data, size_t size, const std::string& what);

// PIL's expand2square as LLaVA/MGM write it: a square canvas of `bg`, the image pasted centred
// along the shorter side.
RgbImage expand_to_square(const RgbImage& img, std::array<uint8_t, 3> bg);

// PIL Image.resize(size, BICUBIC) on an RGB image (antialiased when downscaling), bit for bit
// with the pinned Pillow, including its choice of which pass runs first.
RgbImage resize_bicubic(const RgbImage& img, int out_w, int out_h);
// resize_bicubic(expand_to_square(img, bg), out_w, out_h), bit for bit, without building the
// square canvas (background rows and columns are resampled once).
RgbImage resize_bicubic_padded(const RgbImage& img, std::array<uint8_t, 3> bg, int out_w,
                               int out_h);

// transformers' center_crop (zero padding when the crop is larger than the image).
RgbImage center_crop(const RgbImage& img, int crop_w, int crop_h);

// (w, h) after the shortest-edge resize to `shortest` (long side int(shortest * long / short)).
std::array<int, 2> shortest_edge_size(int w, int h, int shortest);

struct ImageProcessorConfig {
  int shortest_edge = 768;
  int crop = 768;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
  double rescale = 1.0 / 255.0;
  // The pad colour of 'pad' mode: int(mean * 255) per channel = (122, 116, 104) for CLIP.
  std::array<uint8_t, 3> pad_color() const;
};

enum class AspectMode { kSquare, kPad };
AspectMode parse_aspect_mode(const std::string& s);  // "square" | "pad"

// The uint8 image after aspect handling, resize and crop (before rescale/normalise).
RgbImage preprocess_uint8(const RgbImage& img, const ImageProcessorConfig& cfg, AspectMode mode);
// CHW float32, rescaled and normalised as transformers does (float64 rescale, float32 normalise).
std::vector<float> normalize_chw(const RgbImage& img, const ImageProcessorConfig& cfg);

}  // namespace mgm::data
