// `mgm data synth`: writes the embedded default dataset (data/synth.h).
#pragma once

#include <string>
#include <vector>

#include "common/cli.h"

namespace mgm::data {

std::vector<cli::Command> synth_commands();

// The command body (args without "mgm data synth"), callable from tests.
int run_synth(const std::vector<std::string>& args);

}  // namespace mgm::data
