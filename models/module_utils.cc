#include "models/module_utils.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <c10/util/irange.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <map>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/strings.h"
#include "models/lora.h"

namespace mgm::models {

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias) : in_features(in), out_features(out) {
  weight = register_parameter("weight", torch::empty({out, in}));
  if (with_bias) bias = register_parameter("bias", torch::empty({out}));
}

at::Tensor LinearImpl::forward(const at::Tensor& x) {
  at::Tensor y = at::linear(x, weight, bias);
  return has_lora() ? lora_forward(*this, x, y) : y;
}

namespace {
std::string shape_str(at::IntArrayRef s) {
  std::vector<std::string> p;
  for (auto d : s) p.push_back(std::to_string(d));
  return "[" + join(p, ", ") + "]";
}
}  // namespace

std::string LoadReport::describe(size_t limit) const {
  std::ostringstream os;
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << v.size() << " " << what << ": ";
    for (size_t i = 0; i < v.size() && i < limit; ++i) os << (i ? ", " : "") << v[i];
    if (v.size() > limit) os << ", ... (" << v.size() - limit << " more)";
    os << "; ";
  };
  list("missing", missing);
  list("shape mismatches", mismatched);
  list("unexpected", unexpected);
  std::string s = os.str();
  if (s.size() >= 2) s.resize(s.size() - 2);
  return s;
}

LoadReport load_module(torch::nn::Module& module, const io::TensorStore& store,
                       const LoadOptions& opts, bool report_only) {
  LoadReport rep;
  std::set<std::string> used;
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) targets.emplace_back(p.key(), p.value());
  if (opts.include_buffers)
    for (const auto& b : module.named_buffers(/*recurse=*/true)) targets.emplace_back(b.key(), b.value());
  at::NoGradGuard no_grad;
  for (auto& [name, dst] : targets) {
    const std::string src = opts.src_prefix + name;
    if (!store.contains(src)) {
      if (!(opts.allow_missing && opts.allow_missing(name))) rep.missing.push_back(src);
      continue;
    }
    used.insert(src);
    const auto& rec = store.record(src);
    if (at::IntArrayRef(rec.sizes) != dst.sizes()) {
      rep.mismatched.push_back(src + ": expected " + shape_str(dst.sizes()) + " found " +
                               shape_str(rec.sizes) + " in " + store.file_of(src));
      continue;
    }
    dst.copy_(store.get(src));
    rep.loaded.push_back(name);
  }
  for (const auto& n : store.names()) {
    if (!starts_with(n, opts.src_prefix) || used.count(n)) continue;
    std::string rel = n.substr(opts.src_prefix.size());
    if (opts.ignore_unexpected && opts.ignore_unexpected(rel)) continue;
    rep.unexpected.push_back(n);
  }
  if (!report_only && !rep.ok())
    throw Error(str_cat(store.source(), ": cannot load weights: ", rep.describe()));
  return rep;
}

io::NamedTensors module_tensors(const torch::nn::Module& module, const std::string& prefix,
                                bool include_buffers) {
  io::NamedTensors out;
  for (const auto& p : module.named_parameters(true)) out.emplace_back(prefix + p.key(), p.value());
  if (include_buffers)
    for (const auto& b : module.named_buffers(true)) out.emplace_back(prefix + b.key(), b.value());
  return out;
}

int64_t count_parameters(const torch::nn::Module& module, bool trainable_only) {
  int64_t n = 0;
  for (const auto& p : module.parameters(true))
    if (!trainable_only || p.requires_grad()) n += p.numel();
  return n;
}

}  // namespace mgm::models
