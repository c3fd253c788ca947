// `mgm caption`, `mgm data score`, `mgm data filter`: the Better Synth data loop's commands.
#pragma once

#include <vector>

#include "common/cli.h"

namespace mgm::curate {

std::vector<cli::Command> curate_commands();

}  // namespace mgm::curate
