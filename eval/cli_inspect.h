// `mgm data inspect`: lives in eval/ because it writes safetensors through models/io.
#pragma once

#include <vector>

#include "common/cli.h"

namespace mgm::eval {
std::vector<cli::Command> inspect_commands();
}
