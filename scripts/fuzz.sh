#!/usr/bin/env bash
# Builds the libFuzzer targets for the torch-free format parsers (tests/fuzz/) with clang++,
# writes a seed corpus of valid files, and runs each target for MGM_FUZZ_SECONDS seconds.
#   scripts/fuzz.sh [out_dir]          (default: build/fuzz)
#   MGM_FUZZ_SECONDS=60 scripts/fuzz.sh
#   MGM_FUZZ_TARGETS="fuzz_pickle" scripts/fuzz.sh   (a subset)
#   MGM_FUZZ_CXX=clang++-14 scripts/fuzz.sh          (compiler; default: clang++, then clang++-NN)
# Exit status: 0 no finding, 1 a finding (crash inputs are kept in <out_dir>/artifacts/),
# 77 when clang++ or its libFuzzer runtime (Debian: clang, libclang-rt-14-dev) is missing.
# The working corpus in <out_dir>/corpus/ grows across runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${1:-$root/build/fuzz}"
secs="${MGM_FUZZ_SECONDS:-10}"
targets="${MGM_FUZZ_TARGETS:-fuzz_safetensors fuzz_torch_zip fuzz_pickle}"
jobs="${MGM_JOBS:-$(nproc 2>/dev/null || echo 2)}"

skip() {
  echo "[fuzz] SKIPPED: $*" >&2
  echo "[fuzz] install them with: apt-get install clang libclang-rt-14-dev (Debian 12)" >&2
  exit 77
}
fail() {
  echo "[fuzz] FAILED: $*" >&2
  exit 1
}

cxx="${MGM_FUZZ_CXX:-}"
if [[ -z "$cxx" ]]; then
  for c in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$c" >/dev/null 2>&1; then cxx="$c"; break; fi
  done
fi
[[ -n "$cxx" ]] && command -v "$cxx" >/dev/null 2>&1 || skip "clang++ not found (libFuzzer needs clang)"

mkdir -p "$out/obj" "$out/artifacts"
out="$(cd "$out" && pwd)"
san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -I"$root" -Wall -Wextra)

# Probe for the libFuzzer runtime before spending time on the build.
probe="$out/obj/probe"
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' >"$probe.cc"
"$cxx" -fsanitize=fuzzer "${san[@]}" "$probe.cc" -o "$probe" >"$probe.log" 2>&1 ||
  skip "$cxx cannot link -fsanitize=fuzzer (libFuzzer runtime missing): $(head -c 300 "$probe.log")"

# Library objects: coverage-instrumented (fuzzer-no-link) and sanitized. Rebuilt when the source
# or any header of common/ or models/io/ is newer than the object.
lib_srcs=(common/strings.cc common/json.cc common/files.cc common/log.cc
          models/io/dtype.cc models/io/formats.cc models/io/pickle.cc models/io/zip_archive.cc)
newest_header="$(ls -t "$root"/common/*.h "$root"/models/io/*.h | head -1)"
stale() {  # stale <object> <source>
  [[ ! -f "$1" || "$2" -nt "$1" || "$newest_header" -nt "$1" || "$here/fuzz.sh" -nt "$1" ]]
}
compile() {  # compile <object> <source> <extra flags...>
  local o="$1" s="$2"
  shift 2
  if stale "$o" "$s"; then
    "$cxx" "${flags[@]}" "${san[@]}" "$@" -c "$s" -o "$o.tmp" && mv "$o.tmp" "$o"
  fi
}
pids=()
objs=()
for s in "${lib_srcs[@]}"; do
  o="$out/obj/$(echo "$s" | tr / _).o"
  objs+=("$o")
  compile "$o" "$root/$s" -fsanitize=fuzzer-no-link &
  pids+=($!)
  if (( ${#pids[@]} >= jobs )); then wait "${pids[0]}" || fail "compiling the parsers"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p" || fail "compiling the parsers"; done

echo "[fuzz] building with $cxx into $out" >&2
# The seed writer links the same objects (the sanitizer runtimes supply the coverage hooks).
compile "$out/obj/seed_writer.o" "$root/tests/fuzz/seed_writer.cc" || fail "compiling seed_writer"
"$cxx" "${san[@]}" -fsanitize=fuzzer-no-link "$out/obj/seed_writer.o" "${objs[@]}" -o "$out/seed_writer" ||
  fail "linking seed_writer"
for t in $targets; do
  src="$root/tests/fuzz/$t.cc"
  [[ -f "$src" ]] || fail "no fuzz target $src"
  compile "$out/obj/$t.o" "$src" -fsanitize=fuzzer || fail "compiling $t"
  if [[ ! -x "$out/$t" || "$out/obj/$t.o" -nt "$out/$t" || -n "$(find "${objs[@]}" -newer "$out/$t")" ]]; then
    "$cxx" -fsanitize=fuzzer "${san[@]}" "$out/obj/$t.o" "${objs[@]}" -o "$out/$t" || fail "linking $t"
  fi
done

rm -rf "$out/seeds"
"$out/seed_writer" "$out/seeds" || fail "seed_writer"

# Dictionaries: tokens the parsers branch on, which random mutation rarely produces.
cat >"$out/safetensors.dict" <<'EOF'
"{"
"}"
"\"dtype\""
"\"shape\""
"\"data_offsets\""
"\"__metadata__\""
"\"F32\""
"\"BF16\""
"\"F8_E4M3\""
"\"U64\""
"18446744073709551615"
"9223372036854775807"
"[0,0]"
EOF
cat >"$out/pickle.dict" <<'EOF'
"ctorch._utils\x0a_rebuild_tensor_v2\x0a"
"ctorch._utils\x0a_rebuild_parameter\x0a"
"ccollections\x0aOrderedDict\x0a"
"ctorch\x0aFloatStorage\x0a"
"ctorch\x0aHalfStorage\x0a"
"c_codecs\x0aencode\x0a"
"X\x07\x00\x00\x00storage"
"X\x03\x00\x00\x00cpu"
"X\x06\x00\x00\x00latin1"
"\x80\x02"
"\x8a\x08"
"\x95"
"\x94"
EOF
cat "$out/pickle.dict" >"$out/torch_zip.dict"
cat >>"$out/torch_zip.dict" <<'EOF'
"PK\x03\x04"
"PK\x01\x02"
"PK\x05\x06"
"PK\x06\x06"
"PK\x06\x07"
"\xff\xff\xff\xff"
"/data.pkl"
"/byteorder"
"little"
EOF

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
status=0
for t in $targets; do
  kind="${t#fuzz_}"
  mkdir -p "$out/corpus/$kind"
  log="$out/$t.log"
  echo "[fuzz] $t for ${secs}s" >&2
  # Exit codes are forced to 1 so that a finding can never read as "skipped" (libFuzzer's
  # default error exit code is 77).
  if "$out/$t" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 \
      -dict="$out/$kind.dict" -artifact_prefix="$out/artifacts/$t-" \
      "$out/corpus/$kind" "$out/seeds/$kind" >"$log" 2>&1; then
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)"
    echo "[fuzz] $t: no findings ($execs runs, $cov)" >&2
  else
    status=1
    echo "[fuzz] $t: FINDING (log: $log, inputs: $out/artifacts/$t-*)" >&2
    { grep -E -m1 -A12 'ERROR|runtime error|deadly signal|terminate called' "$log" | cut -c1-300
      grep -E '^SUMMARY|Test unit written' "$log"; } >&2 || tail -20 "$log" >&2
  fi
done
exit $status
