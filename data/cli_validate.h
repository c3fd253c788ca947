// `mgm data validate`.
#pragma once

#include <vector>

#include "common/cli.h"

namespace mgm::data {
std::vector<cli::Command> validate_commands();
}
