#!/bin/sh
# The Gloo translation unit is compiled against Debian's gloo headers, not the wheel's (see
# trainer/distributed_gloo.cc): it must not hand the dynamic linker any gloo symbol, or its copy
# could replace libtorch_cpu's at load time. Fails when the object defines a gloo symbol with
# default visibility or the executable exports one.
# Usage: check_gloo_symbols.sh EXECUTABLE OBJECT... (the one named distributed_gloo.cc.o is checked)
set -eu
exe="$1"
shift
obj=""
for o in "$@"; do
  case "$o" in */distributed_gloo.cc.o) obj="$o" ;; esac
done
[ -f "$obj" ] || { echo "no object file $obj"; exit 1; }
[ -f "$exe" ] || { echo "no executable $exe"; exit 1; }
# The object must have been compiled with the gloo headers at all (else this test proves nothing).
nm -C "$obj" | grep -q "c10d::ProcessGroupGloo::ProcessGroupGloo" ||
  { echo "$obj does not construct ProcessGroupGloo (built without gloo headers?)"; exit 1; }
bad_obj=$(readelf -sW "$obj" | awk '$7 != "UND" && $6 == "DEFAULT" && ($5 == "GLOBAL" || $5 == "WEAK") {print $8}' |
  c++filt | grep "gloo::" || true)
bad_exe=$(nm -D --defined-only "$exe" | c++filt | grep "gloo::" || true)
if [ -n "$bad_obj$bad_exe" ]; then
  echo "gloo symbols with default visibility in $obj:"; echo "$bad_obj"
  echo "gloo symbols exported by $exe:"; echo "$bad_exe"
  exit 1
fi
echo "ok: no gloo symbol leaves $obj or is exported by $exe"
