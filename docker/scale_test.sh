#!/usr/bin/env bash
# Scale-out test, from the build's binaries (no Docker): three replicas
# serving one model folder, HAProxy in front (docker/haproxy.cfg), and
# `qlinear bench --concurrency 64` for 20 s through it. Mid-run one replica
# is SIGKILLed and, later, another SIGTERMed (it drains). Counted at the
# client, a retried request counting once with its final outcome:
#   - 0 failed requests (bench's errors are empty);
#   - OK answers == requests sent;
#   - per-second OK throughput back to >= 70 % of the pre-fault median
#     within 2 s of each fault;
#   - the drained replica exits 0 and logged drain_started/drain_finished.
# Retries come from HAProxy (retry-on, see haproxy.cfg) and, for answers
# cut short by a SIGKILL, from the client (`qlinear bench --retries 3`).
# Then the same run with client-side round robin (`--target a,b,c`),
# retries from the client's service config (client/channel.h) and
# --retries.
#
# usage: docker/scale_test.sh [BUILD_DIR]   (default: build)
# env:   QLINEAR_MODEL_DIR (default ../shared/mlx-lm/tiny-llama-4bit),
#        QLINEAR_SCALE_LAYER (default model.layers.0.mlp.up_proj),
#        QLINEAR_SCALE_DURATION_S (default 20),
#        QLINEAR_SCALE_FAULTS (default kill,term: the SIGKILL and the SIGTERM)
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-build}
server_bin=$build/qlinear-server
cli=$build/qlinear
model=${QLINEAR_MODEL_DIR:-../shared/mlx-lm/tiny-llama-4bit}
layer=${QLINEAR_SCALE_LAYER:-model.layers.0.mlp.up_proj}
duration=${QLINEAR_SCALE_DURATION_S:-20}
faults=${QLINEAR_SCALE_FAULTS:-kill,term}   # which faults to inject (diagnosis)
kill_at=$((duration * 35 / 100))   # seconds into the measured part
term_at=$((duration * 60 / 100))
for f in "$server_bin" "$cli"; do
  [ -x "$f" ] || { echo "scale_test: $f is missing: build qlinear-server and qlinear first" >&2; exit 1; }
done
[ -d "$model" ] || { echo "scale_test: model folder $model is missing" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "scale_test: haproxy is missing (.ci/install-deps installs it)" >&2; exit 1; }

work=$(mktemp -d /tmp/qlinear-scale.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${keep_work:-0}" = 1 ]; then echo "scale_test: logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() {
  echo "scale_test: FAIL: $*" >&2
  keep_work=1
  exit 1
}

# The replicas keep serving for a moment after SIGTERM while their /readyz
# says 503 (--drain-delay-ms): the balancer's checks (every 200 ms) see it
# before the drain stops accepting. Without it a replica refuses new
# Forwards at once, and the requests HAProxy sends it until its next check
# fail (gRPC's UNAVAILABLE rides in trailers, which HAProxy cannot retry).
drain_delay="--drain-delay-ms 500"
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_replica NAME: starts one replica on free ports; sets NAME_pid,
# NAME_addr, NAME_mport once its start-up line is out.
start_replica() {
  local name=$1 out=$work/$1.out
  # shellcheck disable=SC2086  # $drain_delay is empty or one flag and its value
  "$server_bin" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --threads 1 \
    --model "$model" --drain-timeout-s 10 $drain_delay >"$out" 2>"$work/$name.log" &
  local pid=$!
  pids+=("$pid")
  local i line
  for i in $(seq 100); do
    line=$(grep -m1 'qlinear-server listening on' "$out" 2>/dev/null || true)
    [ -n "$line" ] && break
    kill -0 "$pid" 2>/dev/null || fail "$name exited at start: $(tail -3 "$work/$name.log")"
    sleep 0.1
  done
  [[ $line =~ listening\ on\ ([0-9.]+:[0-9]+)\ \(metrics\ ([0-9.]+):([0-9]+)\) ]] ||
    fail "$name: no address in its start-up line: '${line:0:200}'"
  printf -v "${name}_pid" %s "$pid"
  printf -v "${name}_addr" %s "${BASH_REMATCH[1]}"
  printf -v "${name}_mport" %s "${BASH_REMATCH[3]}"
}

# run_phase LABEL TARGET: 3 replicas (started by the caller), bench
# through TARGET, the two faults, then the checks. Prints one summary line.
run_phase() {
  local label=$1 target=$2 json=$work/$1.json
  # --retries: a replica SIGKILLed mid-answer leaves streams cut short
  # (UNKNOWN through HAProxy) that no transparent retry may resend; the
  # client resends those idempotent Forwards itself, counted once.
  "$cli" bench --target "$target" --layer "$layer" --concurrency 64 --retries 3 \
    --duration "$duration" --warmup 1 --json >"$json" 2>"$work/$label.bench.err" &
  local bench=$!
  pids+=("$bench")
  # The measured part starts about 1 s (the warmup) after bench does; the
  # fault times are taken from the clock and placed against bench's own
  # measure_start_unix_ms afterwards.
  sleep $((1 + kill_at))
  local kill_ms term_ms
  kill_ms=$(date +%s%3N)
  if [[ $faults == *kill* ]]; then
    kill -KILL "$r1_pid"
    wait "$r1_pid" 2>/dev/null || true  # reaped here: bash prints no 'Killed'
  fi
  sleep $((term_at - kill_at))
  term_ms=$(date +%s%3N)  # the drain's start
  if [[ $faults == *term* ]]; then
    kill -TERM "$r2_pid"
    local rc=0
    wait "$r2_pid" || rc=$?
    [ "$rc" -eq 0 ] || fail "$label: the SIGTERMed replica exited $rc (expected 0 after its drain)"
    grep -q 'drain_started' "$work/r2.log" && grep -q 'drain_finished' "$work/r2.log" ||
      fail "$label: the drained replica's log lacks drain_started/drain_finished: $(tail -3 "$work/r2.log")"
    echo "scale_test: $label: drained replica: $(grep -o 'drain_finished.*' "$work/r2.log")"
  fi
  wait "$bench" || fail "$label: bench exited $?: $(tail -3 "$work/$label.bench.err")"
  [ -s "$json" ] || fail "$label: bench wrote no report"
  python3 - "$json" "$kill_ms" "$term_ms" "$label" <<'PY' || fail "$label: checks failed (report $json)"
import json, statistics, sys
r = json.load(open(sys.argv[1]))
kill_ms, term_ms, label = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for key in ("sent", "ok_total", "ok_per_s", "measure_start_unix_ms"):
    if key not in r:
        sys.exit(f"scale_test: bench's JSON lacks '{key}' (client/bench_command.cc)")
start = r["measure_start_unix_ms"]
# Complete windows only: the last one is cut short by the end of the run.
per_s = r["ok_per_s"][: int(r["seconds"])]
t_kill, t_term = (kill_ms - start) / 1000, (term_ms - start) / 1000
pre = [n for i, n in enumerate(per_s) if i + 1 <= t_kill]
if len(pre) < 2:
    sys.exit(f"scale_test: only {len(pre)} window(s) before the first fault at {t_kill:.2f} s")
median = statistics.median(pre)
def recovery(t):
    # Seconds from the fault to the end of the run of windows below 70 % of
    # the pre-fault median that starts in the fault's window (or the next);
    # 0 when neither is below.
    i = int(t)
    if i < len(per_s) and per_s[i] >= 0.7 * median:
        i += 1  # the fault's own window held up: does the next one?
        if i >= len(per_s) or per_s[i] >= 0.7 * median:
            return 0.0
    while i < len(per_s) and per_s[i] < 0.7 * median:
        i += 1
    return i - t
rec_kill, rec_term = recovery(t_kill), recovery(t_term)
failed = sum(r["errors"].values())
print(f"scale_test: {label}: {r['requests_per_s']:.0f} req/s measured ({r['requests']} requests in "
      f"{r['seconds']:.1f} s), pre-fault median {median:.0f} OK/s; per second {per_s}; "
      f"SIGKILL at {t_kill:.2f} s: recovered in {rec_kill:.2f} s; SIGTERM at {t_term:.2f} s: "
      f"recovered in {rec_term:.2f} s; failed {failed} {r['errors'] or ''}; "
      f"sent {r['sent']}, OK {r['ok_total']}, resent by the client {r['retried']}; p99 {r['latency_ms']['p99']:.2f} ms, "
      f"max {r['latency_ms']['max']:.1f} ms")
problems = []
if failed:
    problems.append(f"{failed} failed requests {r['errors']}")
if r["ok_total"] != r["sent"]:
    problems.append(f"OK answers {r['ok_total']} != requests sent {r['sent']}")
for what, rec in (("SIGKILL", rec_kill), ("SIGTERM", rec_term)):
    if rec > 2:
        problems.append(f"throughput after the {what} took {rec:.2f} s (> 2 s) to return to 70 % of {median:.0f}/s")
if problems:
    sys.exit("scale_test: " + label + ": " + "; ".join(problems))
PY
}

start_all() {
  local i
  for i in 1 2 3; do start_replica "r$i"; done
}

# --- through HAProxy ---
start_all
lb_port=$(free_port)
QLINEAR_LB_LISTEN=127.0.0.1:$lb_port \
  QLINEAR_R1=$r1_addr QLINEAR_R2=$r2_addr QLINEAR_R3=$r3_addr \
  QLINEAR_R1_METRICS_PORT=$r1_mport QLINEAR_R2_METRICS_PORT=$r2_mport QLINEAR_R3_METRICS_PORT=$r3_mport \
  haproxy -db -f docker/haproxy.cfg >"$work/haproxy.log" 2>&1 &
pids+=("$!")
for i in $(seq 50); do
  "$cli" health --target "127.0.0.1:$lb_port" --timeout-s 1 >/dev/null 2>&1 && break
  sleep 0.1
done
"$cli" health --target "127.0.0.1:$lb_port" --timeout-s 1 >/dev/null || fail "no health answer through HAProxy: $(tail -3 "$work/haproxy.log")"
sleep 0.5  # every replica's checks have passed (rise 2 at 100 ms)
run_phase haproxy "127.0.0.1:$lb_port"

# --- client-side round robin: gRPC's round_robin and the retry policy of
# client/channel.h, no proxy ---
for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
start_all
run_phase client_rr "$r1_addr,$r2_addr,$r3_addr"
echo "scale_test: PASS"
