#include "data/collator.h"

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/upsample_bilinear2d.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common/error.h"
#include "data/tokenizer.h"

namespace mgm::data {

at::Tensor downsample_bilinear(const at::Tensor& x, int64_t size) {
  // interpolate() with size given and no scale factors passes scales=None to the kernel.
  return at::upsample_bilinear2d(x, {size, size}, /*align_corners=*/false, c10::nullopt,
                                 c10::nullopt);
}

Batch collate(const std::vector<CollatorSample>& samples, const CollatorConfig& cfg) {
  if (samples.empty()) throw Error("collate: empty batch");
  if (cfg.model_max_length <= 0) throw Error("collate: model_max_length must be positive");
  const int64_t b = static_cast<int64_t>(samples.size());
  int64_t longest = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& s = samples[i];
    if (s.input_ids.size() != s.labels.size())
      throw Error("collate: sample " + std::to_string(i) + " has " +
                  std::to_string(s.input_ids.size()) + " input_ids but " +
                  std::to_string(s.labels.size()) + " labels");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(s.input_ids.size()));
  }
  // pad_sequence to the batch maximum, then [:, :model_max_length].
  const int64_t t = std::min(longest, cfg.model_max_length);
  auto i64 = at::TensorOptions().dtype(at::kLong);
  Batch out;
  out.input_ids = at::empty({b, t}, i64);
  out.labels = at::empty({b, t}, i64);
  int64_t* ids = out.input_ids.data_ptr<int64_t>();
  int64_t* lab = out.labels.data_ptr<int64_t>();
  for (int64_t r = 0; r < b; ++r) {
    const auto& s = samples[static_cast<size_t>(r)];
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(s.input_ids.size()), t);
    std::copy_n(s.input_ids.begin(), n, ids + r * t);
    std::fill(ids + r * t + n, ids + (r + 1) * t, cfg.pad_id);
    std::copy_n(s.labels.begin(), n, lab + r * t);
    std::fill(lab + r * t + n, lab + (r + 1) * t, kIgnoreIndex);
  }
  out.attention_mask = at::ne(out.input_ids, cfg.pad_id);

  const int64_t s2 = cfg.aux_size;
  const size_t per = static_cast<size_t>(3 * s2 * s2);
  out.images_aux = at::empty({b, 3, s2, s2}, at::TensorOptions().dtype(at::kFloat));
  float* img = out.images_aux.data_ptr<float>();
  for (int64_t r = 0; r < b; ++r) {
    const auto& s = samples[static_cast<size_t>(r)];
    float* dst = img + static_cast<size_t>(r) * per;
    if (s.image_aux.empty()) {
      std::fill(dst, dst + per, 0.0f);
    } else if (s.image_aux.size() != per) {
      throw Error("collate: sample " + std::to_string(r) + " image has " +
                  std::to_string(s.image_aux.size()) + " values, expected 3x" +
                  std::to_string(s2) + "x" + std::to_string(s2));
    } else {
      std::memcpy(dst, s.image_aux.data(), per * sizeof(float));
    }
  }
  out.images = downsample_bilinear(out.images_aux, cfg.lr_size);
  if (cfg.pin_memory) {
    if (!at::globalContext().hasCUDA()) throw Error("collate: pin_memory needs a CUDA runtime");
    out.input_ids = out.input_ids.pin_memory();
    out.labels = out.labels.pin_memory();
    out.attention_mask = out.attention_mask.pin_memory();
    out.images = out.images.pin_memory();
    out.images_aux = out.images_aux.pin_memory();
  }
  return out;
}

}  // namespace mgm::data
