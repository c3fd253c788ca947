// The tiny random MGM the eval and serve tests answer with: a checkpoint folder (MGM-tiny) with a
// small trained tokenizer, four PPM images and a six-question TextVQA-style question file.
#pragma once

#include <string>

namespace mgm::test {

// A binary PPM (decoded by OpenCV and by the stb fallback alike).
std::string ppm_image(int w, int h, int seed);
// A new folder holding MGM-tiny/, images/img0..3.ppm and questions.jsonl; returns its path.
std::string make_tiny_mgm_fixture(const std::string& tag);

}  // namespace mgm::test
