#!/usr/bin/env bash
# Run on the GPU machine (torch 2.11.0+cu130 at /opt/torch/.venv, nvcc 13, no apt): unpacks the
# carried .debs of scripts/gpu/debs into a private prefix and builds with OpenCV off for Hopper.
# Usage: scripts/gpu/build.sh [extra cmake args]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
prefix="${MGM_GPU_PREFIX:-/tmp/mgm-deps}"
mkdir -p "$prefix"
for f in "$here"/debs/*.deb; do dpkg -x "$f" "$prefix"; done
python="${MGM_PYTHON:-/opt/torch/.venv/bin/python3}"
export PATH="$prefix/usr/bin:$PATH"
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
# sentencepiece is found through pkg-config; its .pc file says /usr, hence the sysroot.
export PKG_CONFIG_PATH="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig:$prefix/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$prefix"
build="${MGM_BUILD_DIR:-$root/build-gpu}"
cmake -S "$root" -B "$build" -G Ninja \
  -DMGM_PYTHON="$python" -DMGM_WITH_OPENCV=OFF -DMGM_WITH_CUDA=ON -DMGM_USE_CCACHE=OFF \
  -DTORCH_CUDA_ARCH_LIST=9.0 -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$prefix/usr;$prefix/usr/lib/x86_64-linux-gnu/cmake" \
  -DCMAKE_INCLUDE_PATH="$prefix/usr/include" -DCMAKE_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu" \
  "$@"
cmake --build "$build" -j "$(nproc)"
