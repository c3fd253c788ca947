#!/usr/bin/env bash
# Run on a development machine (it needs OpenCV, which GPU-machine builds leave out): generates the
# synthetic sets the GPU checks use into the git-ignored scripts/gpu/data/ (about 15 MB), to be
# carried to the GPU machine with the working tree:
#   data/demo   the embedded default (as scripts/demo.sh makes it)
#   data/small  64 images for the short data-parallel and real-size checks
# Usage: scripts/gpu/prepare_data.sh   (after scripts/build.sh)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/scripts/env.sh"
mgm="$root/$MGM_BUILD_DIR/eval/mgm"
[[ -x "$mgm" ]] || { echo "[prepare_data] ERROR: $mgm not built (run scripts/build.sh)" >&2; exit 1; }
"$mgm" data synth --out "$here/data/demo" --seed 0 --size 1500 --eval_size 150 --vocab_size 1024 --overwrite >/dev/null
"$mgm" data synth --out "$here/data/small" --seed 3 --size 64 --eval_size 8 --vocab_size 512 --overwrite >/dev/null
du -sh "$here/data"
