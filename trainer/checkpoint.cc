#include "trainer/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "common/strings.h"

namespace mgm::trainer {

namespace fs = std::filesystem;

namespace {

// "checkpoint-123" -> 123; -1 for anything else.
int64_t checkpoint_step(const std::string& name) {
  static const std::string kPrefix = "checkpoint-";
  if (!starts_with(name, kPrefix) || name.size() == kPrefix.size()) return -1;
  int64_t v = 0;
  for (size_t i = kPrefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

}  // namespace

std::vector<CheckpointInfo> list_checkpoints(const std::string& output_dir) {
  std::vector<CheckpointInfo> out;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    const std::string name = e.path().filename().string();
    const int64_t step = checkpoint_step(name);
    if (step < 0 || !e.is_directory()) continue;
    if (!path_exists((e.path() / kTrainerStateFile).string())) continue;
    out.push_back({step, e.path().string()});
  }
  std::sort(out.begin(), out.end(),
            [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step < b.step; });
  return out;
}

int remove_incomplete_checkpoints(const std::string& output_dir) {
  int n = 0;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return 0;
  std::vector<std::string> stale;
  for (const auto& e : fs::directory_iterator(output_dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t dot = name.find(".tmp-");
    if (dot != std::string::npos && checkpoint_step(name.substr(0, dot)) >= 0 && e.is_directory())
      stale.push_back(e.path().string());
  }
  // A re-save of a step moves the complete old folder aside (".tmp-old-") before renaming the
  // new one into place; killed between the two renames, the old one is put back.
  std::sort(stale.begin(), stale.end());
  for (auto& s : stale) {
    const std::string name = fs::path(s).filename().string();
    const size_t dot = name.find(".tmp-old-");
    if (dot == std::string::npos) continue;
    const std::string final_name = path_join(output_dir, name.substr(0, dot));
    if (path_exists(final_name) || !path_exists(path_join(s, kTrainerStateFile))) continue;
    log::warn("restoring ", final_name, " (a re-save of it was interrupted)");
    rename_into_place(s, final_name);
    s.clear();
  }
  stale.erase(std::remove(stale.begin(), stale.end(), std::string()), stale.end());
  for (const auto& s : stale) {
    log::warn("removing the incomplete checkpoint ", s, " (an interrupted save)");
    remove_tree(s);
    ++n;
  }
  return n;
}

CheckpointWriter::CheckpointWriter(const std::string& output_dir, int64_t step)
    : output_dir_(output_dir) {
  final_ = path_join(output_dir, str_cat("checkpoint-", step));
  tmp_ = str_cat(final_, ".tmp-", static_cast<int64_t>(getpid()));
  if (path_exists(tmp_)) remove_tree(tmp_);
  make_dirs(tmp_);
}

CheckpointWriter::~CheckpointWriter() {
  if (!done_) {
    try {
      remove_tree(tmp_);
    } catch (const Error& e) {
      log::warn(e.what());
    }
  }
}

std::string CheckpointWriter::file(const std::string& name) const { return path_join(tmp_, name); }

std::string CheckpointWriter::commit(const Json& trainer_state) {
  // The state file is the completeness marker: written (atomically) after every other file.
  write_json_file(file(kTrainerStateFile), trainer_state);
  fsync_dir(tmp_);
  if (path_exists(final_)) {
    // Same step saved again (a resumed run reaching a step it had saved): move the old one
    // aside first so a complete checkpoint-N exists at every moment but the rename itself.
    const std::string old = str_cat(final_, ".tmp-old-", static_cast<int64_t>(getpid()));
    rename_into_place(final_, old);
    rename_into_place(tmp_, final_);
    // Out of the way under a name the next start only ever deletes, then removed: a kill
    // mid-removal never leaves a partial ".tmp-old-" folder that would be restored.
    const std::string doomed = str_cat(final_, ".tmp-del-", static_cast<int64_t>(getpid()));
    rename_into_place(old, doomed);
    remove_tree(doomed);
  } else {
    rename_into_place(tmp_, final_);
  }
  done_ = true;
  return final_;
}

std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int64_t limit,
                                            int64_t current) {
  std::vector<std::string> removed;
  if (limit <= 0) return removed;
  // Deletion order: beyond `current`, highest first (what a restart would wrongly resume from),
  // then the oldest.
  const std::vector<CheckpointInfo> all = list_checkpoints(output_dir);
  std::vector<CheckpointInfo> others;
  for (auto it = all.rbegin(); it != all.rend(); ++it)
    if (it->step > current) others.push_back(*it);
  for (const auto& c : all)
    if (c.step < current) others.push_back(c);
  const int64_t keep_others = limit - 1;  // checkpoint-`current` counts as one
  for (size_t i = 0; static_cast<int64_t>(others.size() - i) > keep_others; ++i) {
    const std::string doomed = str_cat(others[i].path, ".tmp-del-", static_cast<int64_t>(getpid()));
    rename_into_place(others[i].path, doomed);
    remove_tree(doomed);
    removed.push_back(others[i].path);
  }
  return removed;
}

}  // namespace mgm::trainer
