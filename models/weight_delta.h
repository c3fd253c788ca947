// Weight deltas as FastChat's apply_delta / make_delta (with LLaVA's rules for multimodal keys
// and grown token tables), streamed tensor by tensor so memory stays near one output shard,
// and the staged output folder every weights command writes through.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mgm::models {

// A folder written as a whole: files go to "<out>.tmp-<pid>" and commit() renames it to `out`
// (an existing `out` is replaced only when overwriting was allowed, and only at that moment).
// Destroyed without commit(), the temporary folder is removed and `out` is untouched.
class StagedOutputDir {
 public:
  // Throws UsageError when `out` exists and !overwrite, or when `out` is not a folder, and
  // (before anything else) when `out` is or contains one of `inputs` ({flag, path}): replacing
  // it would delete an input the job reads.
  StagedOutputDir(std::string out, bool overwrite,
                  const std::vector<std::pair<std::string, std::string>>& inputs = {});
  ~StagedOutputDir();
  StagedOutputDir(const StagedOutputDir&) = delete;
  StagedOutputDir& operator=(const StagedOutputDir&) = delete;
  const std::string& path() const { return tmp_; }  // where to write
  std::string file(const std::string& name) const;
  // Without overwrite, an `out` that appeared while the job ran (another job, the user) is
  // left alone: UsageError, and the finished result stays in the temporary folder it names.
  void commit();

 private:
  std::string out_, tmp_;
  bool overwrite_;
  bool done_ = false;
};

// The tokenizer files of a Hugging Face folder (tokenizer.model, tokenizer.json,
// tokenizer_config.json, special_tokens_map.json, added_tokens.json) that exist in `src_dir`,
// copied into `dst_dir`. Returns the names copied.
std::vector<std::string> copy_tokenizer_files(const std::string& src_dir,
                                              const std::string& dst_dir);

// Streaming jobs allocate and free one tensor after another; with glibc's dynamic mmap
// threshold those buffers end up on the heap, which they fragment until the process holds
// several shards' worth. Fixing the threshold (1 MiB) returns each large buffer when freed.
// Process-wide and harmless elsewhere; a no-op without glibc.
void prefer_mmap_for_large_buffers();

// Names of the multimodal modules LLaVA/MGM add to a causal LM (mm_projector, vlm_uni_*, the
// vision towers and resamplers): keys a delta may hold that its text-only base lacks.
bool is_multimodal_key(const std::string& name);

struct DeltaOptions {
  std::string dtype = "fp16";  // fp16 | bf16 | fp32: the arithmetic and the output dtype
  uint64_t max_shard_size = 4ull << 30;
  bool overwrite = false;
};

struct DeltaReport {
  int64_t tensors = 0;     // written
  int64_t grown = 0;       // embed_tokens / lm_head with extra rows (LLaVA rule)
  int64_t delta_only = 0;  // multimodal keys only in the delta (apply) or target (make)
  uint64_t bytes = 0;
  std::string config_from;  // which folder config.json came from
};

// target = base + delta for every base tensor (FastChat): every base tensor must be in the
// delta with its shape, except embed_tokens / lm_head, whose delta may have more rows (and
// columns): the base is added into the top-left block (LLaVA). Delta tensors the base lacks
// are kept as they are when they are multimodal keys (LLaVA), and are errors otherwise. Both
// operands are cast to --dtype and added there (FastChat adds in fp16). config.json (and
// generation_config.json) come from the base as FastChat's apply_delta saves the base model,
// unless the delta adds multimodal keys or token rows: then from the delta (LLaVA saves the
// delta model). The delta's tokenizer files are copied. All name and shape problems are listed
// in one error before anything is written.
DeltaReport apply_delta(const std::string& base, const std::string& delta,
                        const std::string& target, const DeltaOptions& opts);

// delta = target - base for every target tensor (FastChat's make_delta), with the same rules
// the other way round: target-only multimodal keys are stored as they are, a grown embed_tokens
// / lm_head has the base subtracted from its top-left block, every base tensor must be in the
// target. config.json and the tokenizer files come from the target.
DeltaReport make_delta(const std::string& base, const std::string& target, const std::string& delta,
                       const DeltaOptions& opts);

}  // namespace mgm::models
