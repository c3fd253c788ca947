// Batch collation (reference DataCollatorForSupervisedDataset + the dataset's low-res image):
// right-pads input_ids with the pad id and labels with IGNORE_INDEX, truncates both to
// model_max_length, builds attention_mask = input_ids != pad, stacks the normalised aux images
// [B,3,S,S] and derives images [B,3,s,s] by bilinear downsampling (align_corners=False, no
// antialias; bit-identical to torch.nn.functional.interpolate on CPU fp32). Text-only samples
// get zero images (zeros in normalised space), as the reference.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace mgm::data {

struct CollatorSample {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;  // same length as input_ids
  std::vector<float> image_aux;  // CHW [3,aux_size,aux_size] normalised; empty: text-only
};

struct CollatorConfig {
  int64_t model_max_length = 2048;
  int64_t pad_id = 0;
  int64_t aux_size = 768;  // images_aux side (--image_size_aux)
  int64_t lr_size = 336;   // images side (CLIP crop)
  bool pin_memory = false;  // page-locked outputs (needs a CUDA runtime)
};

struct Batch {
  at::Tensor input_ids;       // int64 [B,T]
  at::Tensor labels;          // int64 [B,T]
  at::Tensor attention_mask;  // bool  [B,T]
  at::Tensor images;          // fp32  [B,3,lr,lr]
  at::Tensor images_aux;      // fp32  [B,3,aux,aux]
};

// Throws mgm::Error on an empty batch, mismatched ids/labels lengths or a wrong image size.
Batch collate(const std::vector<CollatorSample>& samples, const CollatorConfig& cfg);

// F.interpolate(x, size=[size,size], mode='bilinear', align_corners=False) for [B,C,H,W] fp32.
at::Tensor downsample_bilinear(const at::Tensor& x, int64_t size);

}  // namespace mgm::data
