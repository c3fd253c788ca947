// `mgm <group> <command>`: the multi-tool for everything but training.
#include <vector>

#include "common/cli.h"
#include "models/cli_weights.h"

int main(int argc, char** argv) {
  return mgm::cli::run_main([&] {
    std::vector<mgm::cli::Command> commands = mgm::models::weights_commands();
    return mgm::cli::dispatch("mgm", commands, argc, argv);
  });
}
