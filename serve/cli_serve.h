// `mgm serve` (the OpenAI-compatible server) and `mgm chat` (terminal chat, local or --url).
#pragma once

#include <vector>

#include "common/cli.h"

namespace mgm::serve {

std::vector<cli::Command> serve_commands();

}  // namespace mgm::serve
