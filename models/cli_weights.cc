#include "models/cli_weights.h"

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/strings.h"
#include "models/io/tensor_file.h"
#include "models/lora.h"
#include "models/weight_delta.h"

namespace mgm::models {
namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::vector<std::string> parts;
  for (auto d : s) parts.push_back(std::to_string(d));
  return "[" + join(parts, ", ") + "]";
}

bool is_weight_file(const std::string& f) {
  return ends_with(f, ".safetensors") || ends_with(f, ".bin") || ends_with(f, ".pt") ||
         ends_with(f, ".pth") || ends_with(f, ".safetensors.index.json") ||
         ends_with(f, ".bin.index.json");
}

}  // namespace

std::string inspect_weights(const std::string& file_or_dir, const InspectOptions& opts) {
  io::TensorStore store = io::TensorStore::open(file_or_dir);
  std::ostringstream os;
  uint64_t params = 0, bytes = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // count, params
  size_t name_w = 4;
  for (const auto& n : store.names()) name_w = std::max(name_w, n.size());
  name_w = std::min<size_t>(name_w, 80);
  const bool many_files = store.files().size() > 1;
  if (opts.show_tensors) {
    char head[256];
    std::snprintf(head, sizeof head, "%-*s  %-8s  %s", static_cast<int>(name_w), "name", "dtype", "shape");
    os << head << (many_files ? "  file" : "") << "\n";
  }
  for (const auto& n : store.names()) {
    const auto& r = store.record(n);
    uint64_t numel = r.numel();
    params += numel;
    bytes += r.nbytes();
    auto& d = by_dtype[io::dtype_name(r.dtype)];
    d.first++;
    d.second += numel;
    if (opts.show_tensors && (opts.filter.empty() || n.find(opts.filter) != std::string::npos)) {
      char line[512];
      std::snprintf(line, sizeof line, "%-*s  %-8s  %s", static_cast<int>(name_w), n.c_str(),
                    io::dtype_name(r.dtype), shape_str(r.sizes).c_str());
      os << line;
      if (many_files) os << "  " << base_name(store.file_of(n));
      os << "\n";
    }
  }
  os << "source: " << file_or_dir << " (" << store.files().size() << " file"
     << (store.files().size() == 1 ? "" : "s") << ", "
     << (store.files()[0]->index().format == io::FileIndex::Format::kSafetensors ? "safetensors"
                                                                                : "torch.save zip")
     << ")\n";
  os << "tensors: " << store.names().size() << "\n";
  os << "parameters: " << with_commas(params) << "\n";
  os << "size: " << human_bytes(bytes) << " (" << with_commas(bytes) << " bytes)\n";
  os << "dtypes:";
  for (const auto& [k, v] : by_dtype) os << " " << k << " " << v.first << " tensors / " << with_commas(v.second) << " params;";
  os << "\n";
  if (!store.metadata().empty()) {
    os << "metadata:";
    for (const auto& [k, v] : store.metadata()) os << " " << k << "=" << v;
    os << "\n";
  }
  auto skipped = store.skipped();
  if (!skipped.empty()) os << "non-tensor entries (not loaded): " << join(skipped, ", ") << "\n";
  return os.str();
}

void convert_weights(const std::string& src, const std::string& dst, const ConvertOptions& opts) {
  io::TensorStore store = io::TensorStore::open(src);
  const bool to_file = ends_with(dst, ".safetensors") || ends_with(dst, ".bin") ||
                       ends_with(dst, ".pt") || ends_with(dst, ".pth");
  if (path_exists(dst) && !opts.overwrite)
    throw UsageError(str_cat(dst, " already exists; pass --overwrite to replace it"));
  if (to_file && opts.max_shard_size)
    throw UsageError("--max_shard_size needs a folder as destination (not a single file)");
  std::optional<c10::ScalarType> dtype;
  if (!opts.dtype.empty()) dtype = io::parse_float_dtype(opts.dtype);
  auto fetch = [&](const std::string& n) {
    at::Tensor t = store.get(n);
    if (dtype && t.is_floating_point() && t.scalar_type() != *dtype) t = t.to(*dtype);
    return t;
  };
  if (to_file) {
    io::NamedTensors all;
    for (const auto& n : store.names()) all.emplace_back(n, fetch(n));
    io::save_tensor_file(dst, all);
    return;
  }
  // Folder: sharded safetensors, streamed one shard at a time.
  make_dirs(dst);
  const uint64_t shard = opts.max_shard_size ? opts.max_shard_size : parse_size("5GB");
  io::ShardedSafetensorsWriter w(dst, shard);
  for (const auto& n : store.names()) w.add(n, fetch(n));
  w.finish();
  // Carry the folder's other files (config.json, tokenizer files) along.
  if (is_directory(src)) {
    if (DIR* d = ::opendir(src.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string f = e->d_name;
        std::string sp = path_join(src, f);
        if (f == "." || f == ".." || is_directory(sp) || is_weight_file(f)) continue;
        write_file_atomic(path_join(dst, f), read_file(sp));
      }
      ::closedir(d);
    }
  }
}

std::vector<cli::Command> weights_commands() {
  std::vector<cli::Command> cmds;
  cmds.push_back({"weights", "inspect", "list tensors, shapes, dtypes, parameter count and size",
                  [](const std::vector<std::string>& args) {
                    cli::ArgParser p("mgm weights inspect",
                                     "Lists the tensors of a safetensors file, torch.save file "
                                     "(.bin) or Hugging Face folder (sharded or not), with totals.");
                    p.positional("FILE_OR_DIR", "tensor file or checkpoint folder");
                    p.flag("summary", cli::Kind::kBool, "false", "print only the totals");
                    p.flag("filter", cli::Kind::kString, "", "list only tensors whose name contains this");
                    if (!p.parse(args)) {
                      std::fputs(p.help().c_str(), stdout);
                      return 0;
                    }
                    InspectOptions o;
                    o.show_tensors = !p.boolean("summary");
                    o.filter = p.str("filter");
                    std::fputs(inspect_weights(p.str("FILE_OR_DIR"), o).c_str(), stdout);
                    return 0;
                  }});
  cmds.push_back({"weights", "convert", "convert between .bin (torch.save) and safetensors (single or sharded)",
                  [](const std::vector<std::string>& args) {
                    cli::ArgParser p("mgm weights convert",
                                     "Converts SRC (file or folder, any supported format) to DST. DST "
                                     "ending in .safetensors or .bin/.pt is one file; otherwise DST is "
                                     "a folder of sharded safetensors with model.safetensors.index.json "
                                     "(other files of a SRC folder, e.g. config.json, are copied).");
                    p.positional("SRC", "tensor file or checkpoint folder");
                    p.positional("DST", "output file or folder");
                    p.flag("dtype", cli::Kind::kString, "", "cast floating tensors to fp32, fp16 or bf16");
                    p.flag("max_shard_size", cli::Kind::kString, "5GB", "shard size for folder output (e.g. 2GB, 500MB)");
                    p.flag("overwrite", cli::Kind::kBool, "false", "replace DST if it exists");
                    if (!p.parse(args)) {
                      std::fputs(p.help().c_str(), stdout);
                      return 0;
                    }
                    ConvertOptions o;
                    o.dtype = p.str("dtype");
                    o.overwrite = p.boolean("overwrite");
                    if (p.given("max_shard_size")) o.max_shard_size = parse_size(p.str("max_shard_size"));
                    else o.max_shard_size = 0;
                    convert_weights(p.str("SRC"), p.str("DST"), o);
                    std::printf("wrote %s\n", p.str("DST").c_str());
                    return 0;
                  }});
  cmds.push_back({"weights", "merge-lora", "merge a LoRA adapter into its base: a full MGM checkpoint folder",
                  [](const std::vector<std::string>& args) {
                    cli::ArgParser p("mgm weights merge-lora",
                                     "Writes a complete MGM checkpoint folder from a base and a PEFT "
                                     "LoRA adapter folder (adapter_config.json, adapter_model.safetensors, "
                                     "non_lora_trainables.bin): W + (B A) alpha/r (alpha/sqrt(r) with "
                                     "rsLoRA) computed in fp32 and cast back to W's dtype, non-finite "
                                     "results refused; streamed tensor by tensor. The base is an MGM "
                                     "checkpoint or a Gemma folder (towers from the config's tower folders).");
                    p.flag("base", cli::Kind::kString, "", "base model folder (MGM checkpoint or Gemma)", true);
                    p.flag("adapter", cli::Kind::kString, "", "LoRA adapter folder (train_mgm --lora_enable output)", true);
                    p.flag("out", cli::Kind::kString, "", "output folder", true);
                    p.flag("max_shard_size", cli::Kind::kString, "5GB", "shard size of the output");
                    p.flag("overwrite", cli::Kind::kBool, "false", "replace OUT if it exists");
                    if (!p.parse(args)) {
                      std::fputs(p.help().c_str(), stdout);
                      return 0;
                    }
                    MergeLoraOptions o;
                    o.max_shard_size = parse_size(p.str("max_shard_size"));
                    o.overwrite = p.boolean("overwrite");
                    const auto r = merge_lora_checkpoint(p.str("base"), p.str("adapter"), p.str("out"), o);
                    std::printf("wrote %s: %lld tensors (%s), %lld merged with LoRA, %lld from non_lora_trainables.bin\n",
                                p.str("out").c_str(), static_cast<long long>(r.tensors),
                                human_bytes(r.bytes).c_str(), static_cast<long long>(r.merged),
                                static_cast<long long>(r.replaced));
                    return 0;
                  }});
  auto delta_flags = [](cli::ArgParser& p) {
    p.flag("dtype", cli::Kind::kString, "fp16", "fp16 | bf16 | fp32: arithmetic and output dtype (FastChat: fp16)");
    p.flag("max_shard_size", cli::Kind::kString, "4GB", "shard size of the output");
    p.flag("overwrite", cli::Kind::kBool, "false", "replace the output folder if it exists");
  };
  auto delta_opts = [](const cli::ArgParser& p) {
    DeltaOptions o;
    o.dtype = p.str("dtype");
    o.max_shard_size = parse_size(p.str("max_shard_size"));
    o.overwrite = p.boolean("overwrite");
    return o;
  };
  auto print_delta = [](const std::string& out, const DeltaReport& r) {
    std::printf("wrote %s: %lld tensors (%s)%s%s; config.json from %s\n", out.c_str(),
                static_cast<long long>(r.tensors), human_bytes(r.bytes).c_str(),
                r.grown ? str_cat(", ", r.grown, " token tables with added rows").c_str() : "",
                r.delta_only ? str_cat(", ", r.delta_only, " multimodal tensors kept as they are").c_str() : "",
                r.config_from.c_str());
  };
  cmds.push_back({"weights", "apply-delta", "target = base + delta (FastChat/LLaVA apply_delta), streamed",
                  [=](const std::vector<std::string>& args) {
                    cli::ArgParser p("mgm weights apply-delta",
                                     "Adds a weight delta to a base model as FastChat's apply_delta "
                                     "(every base tensor must be in the delta) with LLaVA's rules "
                                     "(multimodal keys only in the delta kept as they are; embed_tokens / "
                                     "lm_head with extra token rows: the base added into the top-left "
                                     "block), tensor by tensor into sharded safetensors. config.json from "
                                     "the base (from the delta when it adds modules or tokens), tokenizer "
                                     "files from the delta.");
                    p.flag("base", cli::Kind::kString, "", "base model folder", true);
                    p.flag("delta", cli::Kind::kString, "", "delta folder", true);
                    p.flag("target", cli::Kind::kString, "", "output folder", true);
                    delta_flags(p);
                    if (!p.parse(args)) {
                      std::fputs(p.help().c_str(), stdout);
                      return 0;
                    }
                    print_delta(p.str("target"),
                                apply_delta(p.str("base"), p.str("delta"), p.str("target"), delta_opts(p)));
                    return 0;
                  }});
  cmds.push_back({"weights", "make-delta", "delta = target - base (FastChat/LLaVA make_delta), streamed",
                  [=](const std::vector<std::string>& args) {
                    cli::ArgParser p("mgm weights make-delta",
                                     "Subtracts a base model from a target as FastChat's make_delta "
                                     "(with LLaVA's rules for multimodal keys and added token rows), "
                                     "tensor by tensor into sharded safetensors; config.json and "
                                     "tokenizer files from the target.");
                    p.flag("base", cli::Kind::kString, "", "base model folder", true);
                    p.flag("target", cli::Kind::kString, "", "target model folder", true);
                    p.flag("delta", cli::Kind::kString, "", "output folder", true);
                    delta_flags(p);
                    if (!p.parse(args)) {
                      std::fputs(p.help().c_str(), stdout);
                      return 0;
                    }
                    print_delta(p.str("delta"),
                                make_delta(p.str("base"), p.str("target"), p.str("delta"), delta_opts(p)));
                    return 0;
                  }});
  return cmds;
}

}  // namespace mgm::models
