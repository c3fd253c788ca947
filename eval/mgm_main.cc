// `mgm <group> <command>`: the multi-tool for everything but training.
#include <vector>

#include "common/cli.h"
#include "data/cli_data.h"
#include "data/cli_synth.h"
#include "data/cli_validate.h"
#include "eval/cli_eval.h"
#include "eval/cli_inspect.h"
#include "eval/cli_score.h"
#include "models/cli_weights.h"
#include "models/mgm.h"
#include "serve/cli_serve.h"
#include "curate/cli_curate.h"

namespace {

void append(std::vector<mgm::cli::Command>& to, std::vector<mgm::cli::Command> from) {
  for (auto& c : from) to.push_back(std::move(c));
}

}  // namespace

int main(int argc, char** argv) {
  return mgm::cli::run_main([&] {
    std::vector<mgm::cli::Command> commands;
    append(commands, mgm::models::weights_commands());
    append(commands, mgm::eval::score_commands());
    append(commands, mgm::eval::eval_commands());
    append(commands, mgm::data::data_commands());
    append(commands, mgm::data::synth_commands());
    append(commands, mgm::data::validate_commands());
    append(commands, mgm::eval::inspect_commands());
    append(commands, mgm::models::logits_commands());
    append(commands, mgm::serve::serve_commands());
    append(commands, mgm::curate::curate_commands());
    return mgm::cli::dispatch("mgm", commands, argc, argv);
  });
}
