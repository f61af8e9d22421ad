#!/usr/bin/env bash
# fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
#
# Runs one libFuzzer target (safetensors_fuzz, params_fuzz, checkpoint_fuzz,
# quantize_stream_fuzz, load_stream_fuzz, forward_fuzz; or "all", each for
# SECONDS) on:
#   - a working corpus it grows, $BUILD/fuzz/corpus/TARGET (not committed),
#   - seeds sliced from the MLX golden files ($QLINEAR_GOLDEN_DIR, default
#     ../shared/golden) by fuzz_seeds into $BUILD/fuzz/seeds/TARGET,
#   - the regression inputs kept in the repo, fuzz/corpus/TARGET.
# $BUILD is $QLINEAR_FUZZ_BUILD, default build-fuzz; it is configured
# (clang++-14, -DQLINEAR_FUZZ=ON) and built when a binary is missing or
# older than the sources (cmake decides). $QLINEAR_FUZZ_FORKS=N runs N
# processes (libFuzzer -fork=N). A crash leaves its input in
# $BUILD/fuzz/artifacts/TARGET/ and exits nonzero; otherwise the last line
# is the summary: executions, exec/s, coverage (cov, ft), corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(safetensors_fuzz params_fuzz checkpoint_fuzz quantize_stream_fuzz load_stream_fuzz
         forward_fuzz)
if [ $# -lt 2 ]; then
  echo "usage: fuzz/run.sh TARGET|all SECONDS [libFuzzer flags...]; targets: ${targets[*]}" >&2
  exit 2
fi
target=$1 seconds=$2
shift 2
build=${QLINEAR_FUZZ_BUILD:-build-fuzz}
golden=${QLINEAR_GOLDEN_DIR:-../shared/golden}
forks=${QLINEAR_FUZZ_FORKS:-0}

if [ "$target" = all ]; then
  for t in "${targets[@]}"; do "$0" "$t" "$seconds" "$@"; done
  exit 0
fi
case " ${targets[*]} " in
  *" $target "*) ;;
  *) echo "fuzz/run.sh: unknown target '$target'; expected one of: ${targets[*]} all" >&2; exit 2 ;;
esac

if [ -z "${QLINEAR_FUZZ_NO_BUILD:-}" ]; then
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
      -DQLINEAR_FUZZ=ON -DQLINEAR_BUILD_TESTS=OFF -DQLINEAR_BUILD_BENCH=OFF >/dev/null
  fi
  cmake --build "$build" -j"${QLINEAR_FUZZ_BUILD_JOBS:-2}" --target "$target" fuzz_seeds >/dev/null
fi
bin=$build/fuzz/$target
seeds=$build/fuzz/seeds
if [ ! -d "$seeds/$target" ]; then
  if [ ! -d "$golden" ]; then
    echo "fuzz/run.sh: no golden folder at '$golden' (set QLINEAR_GOLDEN_DIR)" >&2
    exit 1
  fi
  "$build/fuzz/fuzz_seeds" "$golden" "$seeds" >/dev/null
fi
work=$build/fuzz/corpus/$target
artifacts=$build/fuzz/artifacts/$target
mkdir -p "$work" "$artifacts" "fuzz/corpus/$target"
log=$build/fuzz/$target.log

flags=(-max_total_time="$seconds" -print_final_stats=1 -dict=fuzz/qlinear.dict -max_len=16384
       -rss_limit_mb=4096 -timeout=30 -artifact_prefix="$artifacts/")
[ "$forks" -gt 0 ] && flags+=(-fork="$forks")
echo "fuzz/run.sh: $target for ${seconds}s${forks:+ (forks: $forks)}; log: $log"
rc=0
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
  "$bin" "${flags[@]}" "$@" "$work" "$seeds/$target" "fuzz/corpus/$target" >"$log" 2>&1 || rc=$?

if [ "$rc" -ne 0 ]; then
  echo "fuzz/run.sh: $target FAILED (exit $rc); the input is in $artifacts/; the end of $log:" >&2
  grep -E 'ERROR|FUZZ_CHECK|SUMMARY|Test unit written|runtime error' "$log" | head -20 >&2 || true
  tail -40 "$log" >&2
  exit 1
fi

# The summary, from libFuzzer's final stats (one process) or its last
# status line (fork mode: "#N: cov: C ft: F corp: K exec/s E ... time: Ss").
if grep -q '^stat::number_of_executed_units' "$log"; then
  execs=$(awk '/^stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  rate=$(awk '/^stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
else
  last=$(grep -E '^#[0-9]+:' "$log" | tail -1 || true)
  execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
  # libFuzzer's own exec/s there is per process; this is all forks together.
  secs=$(sed -E 's/.* time: ([0-9]+)s.*/\1/' <<<"$last")
  rate=$(( execs / (secs > 0 ? secs : 1) ))
fi
cov=$(sed -E 's/.*cov: ([0-9]+).*/\1/' <<<"$last")
ft=$(sed -E 's/.*ft: ([0-9]+).*/\1/' <<<"$last")
corp=$(sed -E 's/.*corp: ([0-9]+).*/\1/' <<<"$last")
# Fork mode goes on past an OOM or a timeout (libFuzzer's -ignore_ooms and
# -ignore_timeouts default to 1 there): say how many there were.
otc=$(grep -oE 'oom/timeout/crash: [0-9]+/[0-9]+/[0-9]+' <<<"$last" | sed 's/.*: //' || true)
echo "fuzz: $target: ${execs:-?} executions, ${rate:-?} exec/s, cov ${cov:-?} ft ${ft:-?}," \
  "corpus ${corp:-?} units, 0 crashes${otc:+ (oom/timeout/crash $otc)}"
