#!/usr/bin/env bash
# Configures (once) and builds the project in $MGM_BUILD_DIR (default: build/).
# Extra arguments are passed to cmake at configure time, e.g. scripts/build.sh -DMGM_WITH_OPENCV=OFF
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$here/env.sh"
cd "$root"

jobs="${MGM_JOBS:-$(nproc 2>/dev/null || echo 2)}"
build="$MGM_BUILD_DIR"
werror=OFF
[[ "${CI:-}" == "true" ]] && werror=ON
mkdir -p "$CCACHE_DIR" "$build"

if [[ ! -f "$build/build.ninja" || $# -gt 0 ]]; then
  cmake -S . -B "$build" -G Ninja \
    -DMGM_PYTHON="$MGM_VENV/bin/python" \
    -DMGM_WERROR="$werror" \
    "$@" >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; echo "[build] cmake configure failed" >&2; exit 1; }
fi
cmake --build "$build" -j "$jobs"
