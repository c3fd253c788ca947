# Shared locations for the scripts (sourced, not run).
: "${MGM_VENV:=${HOME:-/root}/.cache/mgm/venv}"
: "${MGM_BUILD_DIR:=build}"
: "${CCACHE_DIR:=${HOME:-/root}/.cache/mgm/ccache}"
export MGM_VENV MGM_BUILD_DIR CCACHE_DIR
# Let ccache hit across clones and build folders (CI builds a fresh clone each time).
: "${CCACHE_BASEDIR:=${root:-$PWD}}"
: "${CCACHE_NOHASHDIR:=1}"
export CCACHE_BASEDIR CCACHE_NOHASHDIR
