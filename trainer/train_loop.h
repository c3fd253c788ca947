// The train loop behind `train_mgm`: builds (or loads) the model for the stage, the dataset,
// sampler and prefetching loader, then runs optimizer steps with gradient accumulation, mixed
// precision, clipping, logging and checkpointing, resuming exactly from the newest complete
// checkpoint. Writes the stage's outputs (mm_projector.bin + config.json for pretrain, an MGM
// checkpoint folder for finetune), metrics.jsonl, loss.png and train_results.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "trainer/run_args.h"

namespace mgm::trainer {

struct TrainResult {
  int64_t global_step = 0, total_steps = 0;
  int64_t resumed_from_step = -1;  // -1: started fresh
  double epoch = 0.0;
  double train_loss = 0.0;         // mean of the logged losses of this process's steps
  double runtime_s = 0.0, samples_per_second = 0.0, tokens_per_second = 0.0;
  int64_t skipped_samples = 0, skipped_steps_fp16 = 0;
  uint64_t peak_memory_bytes = 0;
  std::string output_dir;
};

// A run stopped on purpose (non-finite loss or gradient norm, too many bad samples): the
// message names the step, the batch's sample ids and the last good checkpoint.
class TrainingStopped : public Error {
 public:
  using Error::Error;
};

class Communicator;

// `comm`: the data-parallel job this process belongs to (nullptr: a single process). Rank 0
// alone writes logs, metrics, checkpoints and outputs; every rank reads its shard of each batch.
TrainResult run_training(const TrainArgs& args, Communicator* comm = nullptr);

// train_mgm's main body: parses args, starts the --nproc_per_node workers or joins the launcher's
// job, runs, prints the summary. Returns the exit code.
int train_main(const std::vector<std::string>& args);

}  // namespace mgm::trainer
