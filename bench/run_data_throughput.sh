#!/usr/bin/env bash
# Builds and runs the data throughput benchmark: the 768-px training image pipeline in C++ for
# 1..N threads against the Python reference (PIL + transformers CLIPImageProcessor +
# F.interpolate, from the project's venv) on the same images, in the same run. Extra arguments go
# to the benchmark (see `build/bench/data_throughput --help`), e.g.
#   bench/run_data_throughput.sh --images 48 --passes 5 --threads 1,2
#   bench/run_data_throughput.sh --image-dir /data/coco/train2017_sample
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"

if [[ ! -f "$MGM_BUILD_DIR/build.ninja" ]]; then
  bash scripts/build.sh
else
  cmake --build "$MGM_BUILD_DIR" --target data_throughput -j "${MGM_JOBS:-$(nproc 2>/dev/null || echo 2)}"
fi
exec "$MGM_BUILD_DIR/bench/data_throughput" --python "$MGM_VENV/bin/python" "$@"
