// `mgm data ...` commands: convert (dj <-> llava) and sample (the toolkit's sample-number cap).
#pragma once

#include <string>
#include <vector>

#include "common/cli.h"

namespace mgm::data {

std::vector<cli::Command> data_commands();

// The command bodies (args without "mgm data <name>"), callable from tests.
int run_convert(const std::vector<std::string>& args);
int run_sample(const std::vector<std::string>& args);

}  // namespace mgm::data
