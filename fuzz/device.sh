#!/usr/bin/env bash
# Long fuzz runs on a machine with more cores (the `device` machine, which
# has no compiler or registry): the fuzz binaries, their shared libraries,
# the seeds and the working corpora travel in one folder.
#
#   fuzz/device.sh prepare                 # here: build-fuzz/devrun.tar.xz (binaries
#                                          # stripped of debug info, non-system
#                                          # libraries; ~14 MB)
#   fuzz/device.sh run TARGET:SECONDS...   # there, from the repo root (carry
#                                          # build-fuzz/devrun.tar.xz): fuzz/run.sh with
#                                          # -fork=$(nproc) for each, then the grown
#                                          # corpora and logs to $OUT (if set)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${QLINEAR_FUZZ_BUILD:-build-fuzz}
dev=$build/devrun
targets=(safetensors_fuzz params_fuzz checkpoint_fuzz quantize_stream_fuzz load_stream_fuzz
         forward_fuzz)

prepare() {
  rm -rf "$dev" && mkdir -p "$dev/fuzz" "$dev/lib"
  for t in "${targets[@]}"; do
    objcopy --strip-debug "$build/fuzz/$t" "$dev/fuzz/$t"
    ldd "$build/fuzz/$t" | awk '/=>/ {print $3}'
  done | sort -u | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux|libpthread|libdl|librt)[.-]' |
    xargs -I{} cp -L {} "$dev/lib/"
  strip --strip-unneeded "$dev"/lib/* 2>/dev/null || true
  cp -r "$build/fuzz/seeds" "$dev/fuzz/seeds"
  [ -d "$build/fuzz/corpus" ] && cp -r "$build/fuzz/corpus" "$dev/fuzz/corpus"
  tar -C "$build" -cJf "$dev.tar.xz" devrun
  ls -la "$dev.tar.xz"
}

run() {
  [ -d "$dev" ] || tar -C "$build" -xJf "$dev.tar.xz"
  export LD_LIBRARY_PATH=$PWD/$dev/lib QLINEAR_FUZZ_BUILD=$dev QLINEAR_FUZZ_NO_BUILD=1
  export QLINEAR_FUZZ_FORKS=${QLINEAR_FUZZ_FORKS:-$(nproc)}
  local rc=0
  for spec in "$@"; do
    fuzz/run.sh "${spec%%:*}" "${spec##*:}" || rc=1
  done
  if [ -n "${OUT:-}" ]; then
    tar -C "$dev/fuzz" -czf "$OUT/corpus.tar.gz" corpus
    [ -d "$dev/fuzz/artifacts" ] && tar -C "$dev/fuzz" -czf "$OUT/artifacts.tar.gz" artifacts
    tar -C "$dev/fuzz" -czf "$OUT/logs.tar.gz" $(cd "$dev/fuzz" && ls ./*.log)
  fi
  return $rc
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 prepare | run TARGET:SECONDS..." >&2; exit 2 ;;
esac
