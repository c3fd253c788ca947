// train_mgm: MGM projector pretraining and instruction finetuning (see trainer/train_loop.h).
#include <string>
#include <vector>

#include "common/cli.h"
#include "trainer/train_loop.h"

int main(int argc, char** argv) {
  return mgm::cli::run_main([&] {
    std::vector<std::string> args(argv + 1, argv + argc);
    return mgm::trainer::train_main(args);
  });
}
