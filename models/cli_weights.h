// `mgm weights ...`: inspect and convert tensor files and checkpoint folders.
#pragma once

#include <string>
#include <vector>

#include "common/cli.h"

namespace mgm::models {

std::vector<cli::Command> weights_commands();

// Library entry points (the commands are thin wrappers; tests call these).
struct InspectOptions {
  bool show_tensors = true;
  std::string filter;  // substring of names to list
};
std::string inspect_weights(const std::string& file_or_dir, const InspectOptions& opts);

struct ConvertOptions {
  std::string dtype;            // "" keeps each tensor's dtype; "fp32" | "fp16" | "bf16"
  uint64_t max_shard_size = 0;  // 0: one file; otherwise a sharded safetensors folder
  bool overwrite = false;
};
void convert_weights(const std::string& src, const std::string& dst, const ConvertOptions& opts);

}  // namespace mgm::models
