// `mgm eval ...`: benchmark answer generation (textvqa, mmbench) and merging chunk answer files.
#pragma once

#include <vector>

#include "common/cli.h"

namespace mgm::eval {

std::vector<cli::Command> eval_commands();

}  // namespace mgm::eval
