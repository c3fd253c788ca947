// The chat page served at GET /: one self-contained HTML/JS file (serve/chat_page.html, no
// external resources), built into the binary at configure time.
#pragma once

#include <string>

namespace mgm::serve {
const std::string& chat_page_html();
}  // namespace mgm::serve
