#!/usr/bin/env bash
# Installs what a fresh Debian 12 / Ubuntu machine needs to build and test the project:
# Debian packages (compilers, cmake, ninja, OpenCV, sentencepiece, nlohmann-json, gtest, stb, ccache,
# clang with libFuzzer for the fuzz test, gloo's headers for the Gloo data-parallel backend)
# and a Python venv holding torch (whose libtorch the C++ build links) plus the pinned packages
# the parity tests use. Idempotent: a second run checks and returns in seconds.
#
# Environment:
#   MGM_VENV        venv location (default: $HOME/.cache/mgm/venv, outside the clone so CI reuses it)
#   MGM_SKIP_APT=1  do not touch Debian packages (e.g. no root)
#   MGM_PYTHON      interpreter used to create the venv (default: /usr/bin/python3 if present)
#   MGM_SERVE_TESTS=1  also install chromium, chromium-driver and nginx-light, for the serving
#                   tests that open the chat page in a browser and run replicas behind nginx (CI
#                   sets it; without them those two tests are skipped)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$here/env.sh"

log() { echo "[setup] $*" >&2; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

apt_packages=(
  build-essential cmake ninja-build pkg-config git ccache
  libopencv-dev libsentencepiece-dev nlohmann-json3-dev libgtest-dev libstb-dev
  libgloo-dev libcpp-httplib-dev
  python3-venv
  clang
)

install_apt() {
  [[ "${MGM_SKIP_APT:-0}" == 1 ]] && return 0
  command -v dpkg-query >/dev/null || { log "no dpkg: skipping Debian packages"; return 0; }
  local missing=() wanted=("${apt_packages[@]}")
  [[ "${MGM_SERVE_TESTS:-0}" == 1 ]] && wanted+=(chromium chromium-driver nginx-light)
  # libFuzzer's runtime comes with the compiler-rt package of the installed clang's version.
  if command -v clang >/dev/null; then
    local major
    major="$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)"
    [[ -n "$major" ]] && wanted+=("libclang-rt-$major-dev")
  fi
  for p in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || die "apt-get update failed"
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install failed for: ${missing[*]}"
  # clang was just installed: its compiler-rt (libFuzzer) package can be named only now.
  if [[ " ${missing[*]} " == *" clang "* ]]; then install_apt; fi
}

install_venv() {
  local req="$root/scripts/requirements.txt"
  local stamp="$MGM_VENV/.mgm-requirements.sha256"
  local want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ -x "$MGM_VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  local py="${MGM_PYTHON:-}"
  if [[ -z "$py" ]]; then
    if [[ -x /usr/bin/python3 ]]; then py=/usr/bin/python3; else py="$(command -v python3 || true)"; fi
  fi
  [[ -n "$py" ]] || die "no python3 found to create the venv"
  if [[ ! -x "$MGM_VENV/bin/python" ]]; then
    log "creating venv $MGM_VENV with $py"
    mkdir -p "$(dirname "$MGM_VENV")"
    "$py" -m venv "$MGM_VENV" || die "python3 -m venv failed (is python3-venv installed?)"
  fi
  log "installing Python packages from scripts/requirements.txt into $MGM_VENV (torch is large: minutes the first time)"
  "$MGM_VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null ||
    die "pip upgrade failed"
  "$MGM_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req" ||
    die "pip install -r scripts/requirements.txt failed"
  "$MGM_VENV/bin/python" -c 'import torch' || die "torch does not import from $MGM_VENV"
  echo "$want" >"$stamp"
}

install_apt
install_venv
