#!/usr/bin/env bash
# The project's test command: installs what is missing (scripts/setup.sh), configures and builds
# (scripts/build.sh), then runs the whole suite through ctest. Exits non-zero on any failure.
# A second run reuses the venv, apt packages, ccache and the build folder: seconds when nothing
# changed. Extra arguments go to ctest (e.g. scripts/test.sh -R models).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$here/env.sh"

bash "$here/setup.sh"
bash "$here/build.sh"
cd "$root/$MGM_BUILD_DIR"
jobs="${MGM_TEST_JOBS:-$(nproc 2>/dev/null || echo 2)}"
ctest --output-on-failure -j "$jobs" "$@"
