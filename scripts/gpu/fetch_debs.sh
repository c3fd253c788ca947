#!/usr/bin/env bash
# Run on a development machine (apt works): downloads the Debian packages the build needs on the
# GPU machine (which has no apt and no internet) into scripts/gpu/debs/ (git-ignored), to carry.
# libgloo-dev is needed for its headers only (the Gloo backend; see trainer/distributed_gloo.cc).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$here/debs"
cd "$here/debs"
apt-get download -qq \
  libsentencepiece-dev libsentencepiece0 nlohmann-json3-dev libgtest-dev googletest libstb-dev libstb0 \
  libgloo-dev libcpp-httplib-dev libcpp-httplib0.11 libbrotli1 \
  ninja-build pkg-config pkgconf pkgconf-bin libpkgconf3 2>&1 | grep -v "^W:" || true
ls -1 "$here/debs"
