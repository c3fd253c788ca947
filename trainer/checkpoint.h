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

// Complete checkpoints in output_dir, oldest first.
std::vector<CheckpointInfo> list_checkpoints(const std::string& output_dir);
// Removes leftovers of interrupted saves (checkpoint-N.tmp-*); returns how many.
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

// Deletes the oldest complete checkpoints beyond `limit` (0: keep all), never the newest.
// Returns the deleted folders.
std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int64_t limit);

}  // namespace mgm::trainer
