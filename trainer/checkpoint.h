// Checkpoint folders of a run: `OUTPUT_DIR/checkpoint-N/` written under a temporary name and
// renamed into place only once every file in it is complete and fsynced, so a folder named
// checkpoint-N is always whole (trainer_state.json, written last, is the marker too). Rotation
// by save_total_limit never deletes the newest complete checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/json.h"

namespace mgm::trainer {

struct CheckpointInfo {
  int64_t step = 0;
  std::string path;
};

constexpr const char* kTrainerStateFile = "trainer_state.json";
// The file a run writes last: its presence marks a finished run (never retrained without
// --overwrite_output_dir).
constexpr const char* kCompletionRecord = "train_results.json";
// The lock file rank 0 holds in --output_dir for the whole run (common/files.h FileLock).
constexpr const char* kOutputLockFile = ".train_mgm.lock";

// Complete checkpoints in output_dir, oldest first.
std::vector<CheckpointInfo> list_checkpoints(const std::string& output_dir);
// Removes leftovers of interrupted saves (checkpoint-N.tmp-*), except that the old folder of an
// interrupted re-save (checkpoint-N.tmp-old-*) is renamed back when checkpoint-N is missing;
// returns how many were removed.
int remove_incomplete_checkpoints(const std::string& output_dir);

// Collects one checkpoint's files in a temporary folder; commit() writes trainer_state.json,
// fsyncs and renames the folder to checkpoint-N (replacing an older folder of the same step).
// Destroyed without commit(), it removes the temporary folder.
class CheckpointWriter {
 public:
  CheckpointWriter(const std::string& output_dir, int64_t step);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  // Where to write a file that goes into the checkpoint.
  std::string file(const std::string& name) const;
  std::string commit(const Json& trainer_state);  // returns the final folder

 private:
  std::string output_dir_, tmp_, final_;
  bool done_ = false;
};

// Keeps at most `limit` complete checkpoints (0: keep all), never deleting checkpoint-`current`
// (the one just committed). Checkpoints beyond `current` belong to an earlier run's trajectory
// (an --overwrite_output_dir run or a --resume_from_checkpoint from an older step) and go
// first (highest first), then the oldest. Each is renamed to an incomplete name before it is
// removed, so a kill mid-removal never leaves a half-deleted folder that looks complete.
// Returns the deleted folders.
std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int64_t limit,
                                            int64_t current);

}  // namespace mgm::trainer
