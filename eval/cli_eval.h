// `mgm eval ...`: benchmark answer generation (textvqa, mmbench) and merging chunk answer files.
#pragma once

#include <vector>

#include "common/cli.h"

namespace mgm::eval {

std::vector<cli::Command> eval_commands();

// The model flags every command that loads an MGM for generation shares (mgm serve, chat,
// caption, data score): --model-path (required or not), --model-base, --tokenizer, --device,
// --dtype (fp32|bf16|fp16, also float32|bfloat16|float16), --conv-mode, --image_aspect_ratio,
// --max_image_pixels. model_from_flags applies the pixel limit and returns the options.
void add_model_flags(cli::ArgParser& p, bool required = true);
struct EvalModelOptions;
EvalModelOptions model_from_flags(const cli::ArgParser& p);

}  // namespace mgm::eval
