// `mgm score ...`: local scoring of benchmark answer files (TextVQA, MMBench).
#pragma once

#include <vector>

#include "common/cli.h"

namespace mgm::eval {

std::vector<cli::Command> score_commands();

}  // namespace mgm::eval
