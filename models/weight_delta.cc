#include "models/weight_delta.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/log.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"

namespace mgm::models {

// ---------------------------------------------------------------------------------------------
// Staged folders and side files

StagedOutputDir::StagedOutputDir(std::string out, bool overwrite,
                                 const std::vector<std::pair<std::string, std::string>>& inputs)
    : out_(std::move(out)), overwrite_(overwrite) {
  while (out_.size() > 1 && out_.back() == '/') out_.pop_back();
  MGM_CHECK(!out_.empty(), "the output folder name is empty");
  for (const auto& [flag, in] : inputs) {
    // (An output inside an input, e.g. ADAPTER/merged, replaces only itself: allowed.)
    const char* how = resolved_path(out_) == resolved_path(in) ? "is"
                      : path_within(in, out_)                 ? "contains"
                                                              : nullptr;
    if (how != nullptr)
      throw UsageError(str_cat("the output folder ", out_, " ", how, " ", flag, " ", in,
                               ", which replacing it would delete: choose an output that neither is nor "
                               "contains an input"));
  }
  if (path_exists(out_)) {
    if (!is_directory(out_))
      throw UsageError(str_cat(out_, " exists and is not a folder; choose another output"));
    if (!overwrite)
      throw UsageError(str_cat(out_, " already exists; pass --overwrite to replace it"));
  }
  tmp_ = str_cat(out_, ".tmp-", static_cast<int64_t>(::getpid()));
  remove_tree(tmp_);
  make_dirs(tmp_);
}

StagedOutputDir::~StagedOutputDir() {
  if (done_) return;
  try {
    remove_tree(tmp_);
  } catch (const Error& e) {
    log::warn(e.what());
  }
}

std::string StagedOutputDir::file(const std::string& name) const { return path_join(tmp_, name); }

void StagedOutputDir::commit() {
  MGM_CHECK(!done_, "staged folder committed twice");
  fsync_dir(tmp_);
  if (path_exists(out_) && !overwrite_) {
    done_ = true;  // keep the result
    throw UsageError(str_cat(out_, " appeared while this job ran and --overwrite was not given: "
                             "left as it is; the finished output is in ", tmp_));
  }
  if (path_exists(out_)) {
    // Replace: the old folder moves aside first, so a complete folder sits under the final
    // name at every moment except between the two renames.
    const std::string old = str_cat(out_, ".old-", static_cast<int64_t>(::getpid()));
    remove_tree(old);
    rename_into_place(out_, old);
    rename_into_place(tmp_, out_);
    remove_tree(old);
  } else {
    rename_into_place(tmp_, out_);
  }
  done_ = true;
}

std::vector<std::string> copy_tokenizer_files(const std::string& src_dir,
                                              const std::string& dst_dir) {
  std::vector<std::string> copied;
  if (!is_directory(src_dir)) return copied;
  for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json", "added_tokens.json"}) {
    const std::string p = path_join(src_dir, f);
    if (!path_exists(p)) continue;
    write_file_atomic(path_join(dst_dir, f), read_file(p));
    copied.push_back(f);
  }
  return copied;
}

void prefer_mmap_for_large_buffers() {
#if defined(__GLIBC__)
  static const bool done = [] { return mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1; }();
  (void)done;
#endif
}

bool is_multimodal_key(const std::string& name) {
  for (const char* k : {"mm_projector", "vlm_uni", "vlm_att", "vision_tower", "vision_resampler",
                        "vision_fpn", "vision_stages", "vision_stem"})
    if (name.find(k) != std::string::npos) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------
// Deltas

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::vector<std::string> p;
  for (auto d : s) p.push_back(std::to_string(d));
  return "[" + join(p, ", ") + "]";
}

bool is_token_table(const std::string& name) {
  return name == "model.embed_tokens.weight" || name == "lm_head.weight";
}

// 2-D `big` that covers `small` in both dimensions (and differs): the grown-vocabulary case.
bool covers(const std::vector<int64_t>& big, const std::vector<int64_t>& small) {
  return big.size() == 2 && small.size() == 2 && big[0] >= small[0] && big[1] >= small[1] &&
         big != small;
}

bool floating(io::DType d) {
  return d == io::DType::kF16 || d == io::DType::kBF16 || d == io::DType::kF32 ||
         d == io::DType::kF64;
}

void require_dir(const std::string& dir, const char* flag) {
  if (!is_directory(dir))
    throw UsageError(str_cat(flag, " ", dir, ": not a folder (a Hugging Face model folder)"));
}

// The list of problems as one message, at most `limit` shown.
std::string listing(const std::vector<std::string>& v, size_t limit = 30) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < limit; ++i) s += "\n  " + v[i];
  if (v.size() > limit) s += str_cat("\n  ... (", v.size() - limit, " more)");
  return s;
}

// config.json (with the dtype the tensors were written in as its torch_dtype) and
// generation_config.json.
void copy_config(const std::string& src_dir, const std::string& dst_dir, c10::ScalarType dtype) {
  if (const std::string p = path_join(src_dir, "config.json"); path_exists(p)) {
    Json j = read_json_file(p);
    j["torch_dtype"] = io::hf_torch_dtype(dtype);
    write_json_file(path_join(dst_dir, "config.json"), j);
  }
  if (const std::string p = path_join(src_dir, "generation_config.json"); path_exists(p))
    write_file_atomic(path_join(dst_dir, "generation_config.json"), read_file(p));
}

enum class Op { kAdd, kSubtract };

// The shared streaming pass. `outer` is the store whose tensors define the output (apply: the
// delta's names, led by the base's; make: the target's), `inner` the operand (base).
// apply: out = inner(base) + outer(delta); make: out = outer(target) - inner(base).
DeltaReport stream_delta(const io::TensorStore& outer, const io::TensorStore& inner,
                         const std::string& outer_flag, const std::string& inner_flag, Op op,
                         StagedOutputDir& out, const DeltaOptions& opts) {
  const c10::ScalarType dt = io::parse_float_dtype(opts.dtype);
  // Validate every name and shape before writing anything.
  std::vector<std::string> problems;
  for (const auto& n : inner.names()) {
    if (!outer.contains(n)) {
      problems.push_back(str_cat(n, ": in ", inner_flag, " but not in ", outer_flag));
      continue;
    }
    const auto& a = outer.record(n).sizes;
    const auto& b = inner.record(n).sizes;
    if (a == b) continue;
    if (is_token_table(n) && covers(a, b)) continue;
    problems.push_back(str_cat(
        n, ": shape ", shape_str(b), " in ", inner_flag, ", ", shape_str(a), " in ", outer_flag,
        is_token_table(n)
            ? str_cat(" (", outer_flag, " must cover ", inner_flag, " to add token rows)")
            : ""));
  }
  for (const auto& n : outer.names()) {
    if (inner.contains(n) || is_multimodal_key(n)) continue;
    problems.push_back(str_cat(n, ": only in ", outer_flag,
                               " (only multimodal keys such as model.mm_projector.* may be)"));
  }
  if (!problems.empty())
    throw Error(str_cat(outer.source(), " and ", inner.source(), " do not match (", problems.size(),
                        " problems):", listing(problems)));

  DeltaReport rep;
  io::ShardedSafetensorsWriter w(out.path(), opts.max_shard_size);
  for (const auto& n : outer.names()) {
    const auto& rec = outer.record(n);
    at::Tensor t = outer.read(n);
    if (floating(rec.dtype)) t = t.to(dt);
    if (!inner.contains(n)) {
      ++rep.delta_only;
    } else {
      at::Tensor b = inner.read(n);
      if (floating(inner.record(n).dtype) && floating(rec.dtype)) b = b.to(dt);
      at::Tensor block = t;
      if (t.sizes() != b.sizes()) {
        ++rep.grown;
        block = t.slice(0, 0, b.size(0)).slice(1, 0, b.size(1));
      }
      if (op == Op::kAdd)
        block.add_(b);
      else
        block.sub_(b);
    }
    rep.bytes += static_cast<uint64_t>(t.nbytes());
    w.add(n, t.contiguous());
    ++rep.tensors;
  }
  w.finish();
  return rep;
}

}  // namespace

DeltaReport apply_delta(const std::string& base, const std::string& delta,
                        const std::string& target, const DeltaOptions& opts) {
  require_dir(base, "--base");
  require_dir(delta, "--delta");
  prefer_mmap_for_large_buffers();
  const c10::ScalarType dt = io::parse_float_dtype(opts.dtype);
  const io::TensorStore bs = io::TensorStore::open(base);
  const io::TensorStore ds = io::TensorStore::open(delta);
  StagedOutputDir out(target, opts.overwrite, {{"--base", base}, {"--delta", delta}});
  DeltaReport rep = stream_delta(ds, bs, "--delta " + delta, "--base " + base, Op::kAdd, out, opts);
  // FastChat's apply_delta saves the base model (its config); LLaVA's saves the delta model,
  // which is what a delta that adds multimodal modules or token rows needs.
  const bool from_delta = rep.delta_only > 0 || rep.grown > 0;
  rep.config_from = from_delta ? delta : base;
  copy_config(rep.config_from, out.path(), dt);
  copy_tokenizer_files(delta, out.path());
  out.commit();
  return rep;
}

DeltaReport make_delta(const std::string& base, const std::string& target, const std::string& delta,
                       const DeltaOptions& opts) {
  require_dir(base, "--base");
  require_dir(target, "--target");
  prefer_mmap_for_large_buffers();
  const c10::ScalarType dt = io::parse_float_dtype(opts.dtype);
  const io::TensorStore bs = io::TensorStore::open(base);
  const io::TensorStore ts = io::TensorStore::open(target);
  StagedOutputDir out(delta, opts.overwrite, {{"--base", base}, {"--target", target}});
  DeltaReport rep =
      stream_delta(ts, bs, "--target " + target, "--base " + base, Op::kSubtract, out, opts);
  rep.config_from = target;
  copy_config(target, out.path(), dt);
  copy_tokenizer_files(target, out.path());
  out.commit();
  return rep;
}

}  // namespace mgm::models
