# Shared locations for the scripts (sourced, not run).
: "${MGM_VENV:=${HOME:-/root}/.cache/mgm/venv}"
: "${MGM_BUILD_DIR:=build}"
: "${CCACHE_DIR:=${HOME:-/root}/.cache/mgm/ccache}"
export MGM_VENV MGM_BUILD_DIR CCACHE_DIR
