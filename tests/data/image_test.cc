// Image preprocessing parity with PIL + transformers' CLIPImageProcessor (PIL path): decode and
// convert('RGB') of RGB/L/RGBA/P/I;16/LA/1 PNGs and JPEGs, 'square' and 'pad' modes, the
// antialiased bicubic resize, crop, rescale and normalise.
#include "data/image.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/formats.h"
#include "tests_util.h"

namespace mgm::data {
namespace {

struct Ref {
  std::shared_ptr<MappedFile> map;
  models::io::FileIndex index;
  const models::io::TensorRecord& rec(const std::string& name) const {
    for (const auto& t : index.tensors)
      if (t.name == name) return t;
    throw Error("reference has no " + name);
  }
  const uint8_t* bytes(const std::string& name) const {
    return map->data() + rec(name).data_offset;
  }
};

TEST(Image, MatchesPilAndClipImageProcessor) {
  std::string d = test::temp_dir("imgref");
  std::string out;
  ASSERT_EQ(test::run_python(test::source_dir() + "/tests/parity/image_reference.py " + d, &out), 0)
      << out;
  Ref ref;
  ref.map = MappedFile::open(d + "/reference.safetensors");
  ref.index = models::io::parse_safetensors(ref.map->data(), ref.map->size(), "reference");
  Json cases = read_json_file(d + "/cases.json");
  ASSERT_GE(cases.size(), 20u);
  size_t total = 0, equal = 0;  // over the cases that must be exact
  int worst = 0;
  double worst_px = 0;
  for (const auto& c : cases) {
    const std::string tag = std::to_string(c["k"].get<int>()) + "_" + c["mode"].get<std::string>() +
                            "_" + std::to_string(c["size"].get<int>());
    ImageProcessorConfig cfg;
    cfg.shortest_edge = cfg.crop = c["size"].get<int>();
    RgbImage img = decode_image_file(c["file"].get<std::string>());
    RgbImage u8 = preprocess_uint8(img, cfg, parse_aspect_mode(c["mode"].get<std::string>()));
    ASSERT_EQ(u8.width, cfg.crop);
    ASSERT_EQ(u8.height, cfg.crop);
    const uint8_t* want = ref.bytes("u8_" + tag);
    int case_worst = 0;
    size_t case_equal = 0;
    for (size_t i = 0; i < u8.pixels.size(); ++i) {
      int diff = std::abs(static_cast<int>(u8.pixels[i]) - want[i]);
      case_worst = std::max(case_worst, diff);
      case_equal += diff == 0;
    }
#ifndef MGM_WITH_OPENCV
    // stb_image (the fallback decoder) decodes JPEG with its own IDCT: close, not identical.
    if (c["file"].get<std::string>().find(".jpg") != std::string::npos) {
      EXPECT_LE(case_worst, 8) << tag;
      continue;
    }
#endif
    total += u8.pixels.size();
    equal += case_equal;
    worst = std::max(worst, case_worst);
    EXPECT_EQ(case_worst, 0) << tag << " (" << c["file"].get<std::string>() << ")";
    std::vector<float> px = normalize_chw(u8, cfg);
    std::vector<float> want_px(px.size());
    std::memcpy(want_px.data(), ref.bytes("px_" + tag), px.size() * sizeof(float));
    for (size_t i = 0; i < px.size(); ++i)
      worst_px = std::max(worst_px, static_cast<double>(std::fabs(px[i] - want_px[i])));
  }
  EXPECT_EQ(equal, total) << "uint8 pixels equal: " << equal << "/" << total << ", worst diff "
                          << worst;
  EXPECT_LE(worst_px, 1e-6) << "normalised tensors differ";
}

TEST(Image, GeometryHelpers) {
  EXPECT_EQ(shortest_edge_size(1000, 500, 768), (std::array<int, 2>{1536, 768}));
  EXPECT_EQ(shortest_edge_size(333, 1000, 768), (std::array<int, 2>{768, 2306}));
  ImageProcessorConfig cfg;
  EXPECT_EQ(cfg.pad_color(), (std::array<uint8_t, 3>{122, 116, 104}));
  RgbImage wide(4, 2);
  RgbImage sq = expand_to_square(wide, {9, 8, 7});
  ASSERT_EQ(sq.width, 4);
  ASSERT_EQ(sq.height, 4);
  EXPECT_EQ(sq.at(0, 0)[0], 9);  // background row above
  EXPECT_EQ(sq.at(0, 1)[0], 0);  // pasted image at rows 1..2
  EXPECT_EQ(sq.at(0, 3)[2], 7);
  RgbImage small(2, 2);
  small.at(0, 0)[0] = 50;
  RgbImage padded = center_crop(small, 4, 4);  // larger crop: zero padding, image centred
  EXPECT_EQ(padded.at(1, 1)[0], 50);
  EXPECT_EQ(padded.at(0, 0)[0], 0);
}

TEST(Image, BadFilesNameThePath) {
  std::string d = test::temp_dir("badimg");
  write_file_atomic(d + "/x.jpg", "not an image at all");
  try {
    decode_image_file(d + "/x.jpg");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(d + "/x.jpg: cannot decode image"), std::string::npos)
        << e.what();
  }
  try {
    decode_image_file(d + "/missing.png");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.png: image file not found"), std::string::npos);
  }
  write_file_atomic(d + "/empty.png", "");
  EXPECT_THROW(decode_image_file(d + "/empty.png"), Error);
}

// The decompression-bomb limit against PIL's own verdicts (Image.open + load under the same
// MAX_IMAGE_PIXELS): a 30000x30000 PNG and a JPEG whose header claims 20000x20000 are refused
// from the header alone (nothing is decoded: the JPEG has no pixels for that size), small
// images are refused / warned / decoded at a small limit exactly where PIL refuses / warns.
TEST(Image, DecompressionBombLimitAsPil) {
  const std::string d = test::temp_dir("bomb");
  const std::string py = R"(import sys, warnings
from PIL import Image
d = sys.argv[1]
Image.new('1', (30000, 30000)).save(d + '/bomb.png')
Image.new('RGB', (16, 16), (200, 10, 10)).save(d + '/small.jpg', quality=90)
b = bytearray(open(d + '/small.jpg', 'rb').read())
i = 2
while b[i + 1] not in (0xC0, 0xC1, 0xC2):
    i += 2 + (b[i + 2] << 8 | b[i + 3])
b[i + 5:i + 9] = bytes([20000 >> 8, 20000 & 255, 20000 >> 8, 20000 & 255])
open(d + '/bomb.jpg', 'wb').write(b)
open(d + '/bomb_junk.jpg', 'wb').write(b[:i] + b'\x42\x17' + b[i:])  # stray bytes before the frame, as PIL skips
for n in (12, 15):
    Image.new('RGB', (n, n), (0, 128, 255)).save(d + '/s%d.png' % n)
def verdict(f, limit):
    Image.MAX_IMAGE_PIXELS = limit
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        try:
            Image.open(d + '/' + f).load()
        except Image.DecompressionBombError:
            return 'error'
        except Exception:
            return 'other'
        return 'warn' if any(issubclass(x.category, Image.DecompressionBombWarning) for x in w) else 'ok'
for f, limit in (('bomb.png', 89478485), ('bomb.jpg', 89478485), ('bomb_junk.jpg', 89478485), ('s12.png', 100),
                 ('s15.png', 100), ('s12.png', 200)):
    print(f, limit, verdict(f, limit))
)";
  write_file_atomic(d + "/make.py", py);
  std::string out;
  ASSERT_EQ(test::run_python(d + "/make.py " + d, &out), 0) << out;
  EXPECT_LT(file_size(d + "/bomb.png"), 2u << 20);  // small on disk, 900 M pixels decoded
  // Our verdict for the same file and limit: error (ImageTooLargeError), warn (decoded, over the
  // limit), ok.
  auto ours = [&](const std::string& f, int64_t limit) -> std::string {
    set_max_image_pixels(limit);
    try {
      const RgbImage im = decode_image_file(d + "/" + f);
      EXPECT_GT(im.width, 0);
      return static_cast<int64_t>(im.width) * im.height > limit ? "warn" : "ok";
    } catch (const ImageTooLargeError& e) {
      EXPECT_NE(std::string(e.what()).find(d + "/" + f + ": image of "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("decompression bomb"), std::string::npos) << e.what();
      return "error";
    } catch (const Error& e) {
      return std::string("other: ") + e.what();
    }
  };
  size_t checked = 0;
  for (const auto& line : split(out, '\n')) {
    const auto f = split(line, ' ');
    if (f.size() != 3) continue;
    EXPECT_EQ(ours(f[0], std::stoll(f[1])), f[2]) << line;
    ++checked;
  }
  EXPECT_EQ(checked, 6u) << out;
  set_max_image_pixels(kPilMaxImagePixels);
  EXPECT_EQ(2 * kPilMaxImagePixels, 178956970);  // PIL's DecompressionBombError threshold
  // The header sizes, without decoding.
  EXPECT_EQ(read_image_size_file(d + "/bomb.png"), std::make_pair(int64_t{30000}, int64_t{30000}));
  EXPECT_EQ(read_image_size_file(d + "/bomb.jpg"), std::make_pair(int64_t{20000}, int64_t{20000}));
  EXPECT_EQ(read_image_size_file(d + "/bomb_junk.jpg"), std::make_pair(int64_t{20000}, int64_t{20000}));
  EXPECT_EQ(read_image_size_file(d + "/small.jpg"), std::make_pair(int64_t{16}, int64_t{16}));
  // 0 lifts the limit (PIL: MAX_IMAGE_PIXELS = None); negative is refused.
  set_max_image_pixels(0);
  EXPECT_NO_THROW(check_image_pixels(30000, 30000, "x"));
  EXPECT_THROW(set_max_image_pixels(-1), UsageError);
  EXPECT_THROW(set_max_image_pixels(INT64_MAX), UsageError);  // twice it would not fit
  set_max_image_pixels(kPilMaxImagePixels);
  EXPECT_THROW(check_image_pixels(INT64_MAX, INT64_MAX, "x"), ImageTooLargeError);  // no overflow: refused
}

// The resize paths (plain, padded without a canvas, and the whole uint8 pipeline) against PIL on
// small random images with 1-pixel sides, extreme aspect ratios, up- and downscaling: every
// pixel equal.
TEST(Image, ResizePathsMatchPilOnRandomSizes) {
  std::string d = test::temp_dir("imgresize");
  std::string out;
  ASSERT_EQ(
      test::run_python(test::source_dir() + "/tests/parity/image_resize_reference.py " + d, &out),
      0)
      << out;
  Ref ref;
  ref.map = MappedFile::open(d + "/reference.safetensors");
  ref.index = models::io::parse_safetensors(ref.map->data(), ref.map->size(), "reference");
  Json cases = read_json_file(d + "/cases.json");
  ASSERT_GE(cases.size(), 180u);
  ImageProcessorConfig clip;
  size_t checked = 0;
  for (const auto& c : cases) {
    const std::string key = c["key"].get<std::string>();
    const std::string kind = c["kind"].get<std::string>();
    RgbImage img = decode_image_file(c["file"].get<std::string>());
    RgbImage got;
    if (kind == "resize") {
      got = resize_bicubic(img, c["w"].get<int>(), c["h"].get<int>());
    } else if (kind == "padded") {
      got = resize_bicubic_padded(img, clip.pad_color(), c["w"].get<int>(), c["h"].get<int>());
    } else {
      ImageProcessorConfig cfg;
      cfg.shortest_edge = cfg.crop = c["size"].get<int>();
      got = preprocess_uint8(img, cfg, parse_aspect_mode(c["mode"].get<std::string>()));
    }
    const auto& rec = ref.rec(key);
    if (rec.sizes.size() != 3 || got.height != rec.sizes[0] || got.width != rec.sizes[1]) {
      ADD_FAILURE() << key << ": got " << got.width << "x" << got.height;
      continue;
    }
    const uint8_t* want = ref.bytes(key);
    size_t diff = 0;
    for (size_t i = 0; i < got.pixels.size(); ++i) diff += got.pixels[i] != want[i];
    EXPECT_EQ(diff, 0u) << key << ": " << diff << " of " << got.pixels.size() << " values differ";
    ++checked;
  }
  EXPECT_EQ(checked, cases.size());
}

}  // namespace
}  // namespace mgm::data
