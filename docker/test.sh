#!/usr/bin/env bash
# Image test (run by .ci/run): installs and starts Docker when needed,
# builds the debian:bookworm base (docker/base-image.sh) and the image
# (docker/Dockerfile), then
#   1. runs the container on the host network on free loopback ports, with
#      ../shared/mlx-lm mounted read-only at /models, serving a model folder;
#   2. waits for the image's own HEALTHCHECK to say healthy;
#   3. Forward on one of the folder's layers, with the image's `qlinear`
#      (docker exec), and checks the answer's shape;
#   4. reads /metrics and finds that Forward counted;
#   5. `docker stop`: the server drains and exits 0 within the grace period,
#      and its log holds drain_started and drain_finished;
#   6. brings up docker/compose.yaml (three replicas behind HAProxy), sends
#      calls through HAProxy, and takes it down.
# Prints the image's size and each step's time.
#
# usage: docker/test.sh
# env:   QLINEAR_BUILD_LOCK  a lock file to take around the CPU-heavy steps
#                            (debootstrap, docker build), e.g.
#                            /tmp/qlinear-build.lock; none by default
#        QLINEAR_IMAGE       image tag (default qlinear:test)
#        QLINEAR_KEEP_DOCKERD=1  leave a dockerd this script started running
set -euo pipefail
cd "$(dirname "$0")/.."

image=${QLINEAR_IMAGE:-qlinear:test}
haproxy_image=qlinear-haproxy:test
models=$(realpath ../shared/mlx-lm)
model=tiny-llama-4bit
layer=model.layers.0.self_attn.q_proj   # [256 x 256], the folder's bias layer
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
start=$SECONDS
step() { echo "docker/test: $1 ($((SECONDS - start)) s)"; }
fail() { echo "docker/test: FAIL: $*" >&2; exit 1; }
locked() {  # locked CMD...: CMD under QLINEAR_BUILD_LOCK when one is set
  if [ -n "${QLINEAR_BUILD_LOCK:-}" ]; then flock "$QLINEAR_BUILD_LOCK" "$@"; else "$@"; fi
}

[ -d "$models/$model" ] || fail "$models/$model is missing (the mlx-lm fixtures, beside the repository)"

# --- Docker itself ---
missing=()
for cmd in dockerd debootstrap docker-compose; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "docker/test: installing docker.io debootstrap docker-compose (missing: ${missing[*]})"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    docker.io debootstrap docker-compose
fi
dockerd_pid=""
if ! docker info >/dev/null 2>&1; then
  $sudo dockerd >/tmp/qlinear-dockerd.log 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || fail "dockerd did not answer within 30 s: $(tail -5 /tmp/qlinear-dockerd.log)"
  step "dockerd started (pid $dockerd_pid): $(docker info -f '{{.Driver}}, cgroup {{.CgroupDriver}}')"
fi

containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
  if [ -n "${compose_up:-}" ]; then
    docker-compose -f docker/compose.yaml -p "$project" down -v -t 15 >/dev/null 2>&1 || true
  fi
  if [ -n "$dockerd_pid" ] && [ "${QLINEAR_KEEP_DOCKERD:-0}" != 1 ]; then
    $sudo kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# http_get PORT PATH: the body of a plain HTTP GET on loopback (no curl needed)
http_get() {
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(
      "http://127.0.0.1:%s%s" % (sys.argv[1], sys.argv[2]), timeout=5).read().decode())' "$1" "$2"
}

# --- base and image ---
# (the lock only when the base must be made: its check is instant)
docker image inspect debian:bookworm >/dev/null 2>&1 || locked bash docker/base-image.sh
step "base image ready"
build_log=$(mktemp /tmp/qlinear-docker-build.XXXXXX)
locked env DOCKER_BUILDKIT=0 docker build --network host -f docker/Dockerfile -t "$image" . \
  >"$build_log" 2>&1 || { tail -30 "$build_log" >&2; fail "docker build failed (its log: $build_log)"; }
grep -m1 '^runtime packages:' "$build_log" || true
rm -f "$build_log"
# The build stage keeps a name, so that its cached layers (the packages,
# the compile) survive the pruning of the stages of earlier builds.
DOCKER_BUILDKIT=0 docker build -q --network host -f docker/Dockerfile --target build \
  -t qlinear-build:cache . >/dev/null 2>&1 || true
docker image prune -f >/dev/null 2>&1 || true
size=$(docker image inspect -f '{{.Size}}' "$image")
step "image $image built: $size bytes ($((size / 1000000)) MB)"

# --- one container ---
port=$(free_port)
mport=$(free_port)
name=qlinear-test-$$
containers+=("$name")
docker run -d --name "$name" --network host --read-only \
  --health-interval 1s --health-start-period 30s \
  -v "$models:/models:ro" \
  -e "QLINEAR_LISTEN=127.0.0.1:$port" -e "QLINEAR_METRICS_LISTEN=127.0.0.1:$mport" \
  "$image" --model "/models/$model" --drain-timeout-s 10 >/dev/null
health=""
for _ in $(seq 120); do
  health=$(docker inspect -f '{{.State.Health.Status}} {{.State.Status}}' "$name")
  [[ $health == healthy* ]] && break
  [[ $health == *running ]] || fail "container is $health: $(docker logs "$name" 2>&1 | tail -5)"
  sleep 0.5
done
[[ $health == healthy* ]] || fail "the image's HEALTHCHECK did not report healthy in 60 s: $health"
step "container healthy (its HEALTHCHECK: qlinear health)"

out=$(docker exec "$name" qlinear forward --target "127.0.0.1:$port" --layer "$layer" --random-rows 2) ||
  fail "forward failed: $out"
[[ $out == "output [2, 256] F32:"* ]] || fail "forward answered '$out'; expected 'output [2, 256] F32: ...'"
step "Forward on $layer of /models/$model: ${out%%$'\n'*}"

metrics=$(http_get "$mport" /metrics) || fail "no /metrics on 127.0.0.1:$mport"
grep -q "^qlinear_requests_total{layer=\"$layer\",code=\"OK\"} 1$" <<<"$metrics" ||
  fail "/metrics does not count the Forward: $(grep '^qlinear_requests_total' <<<"$metrics" | head -3)"
[ "$(http_get "$mport" /readyz)" = ready ] || fail "/readyz is not 'ready'"
step "/metrics counts it, /readyz ready"

t0=$SECONDS
docker stop -t 20 "$name" >/dev/null
stop_s=$((SECONDS - t0))
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "the server exited $code after docker stop (expected 0): $(docker logs "$name" 2>&1 | tail -5)"
[ "$stop_s" -lt 20 ] || fail "docker stop took $stop_s s: the grace period ran out (killed)"
logs=$(docker logs "$name" 2>&1)
grep -q 'drain_started.*signal=SIGTERM' <<<"$logs" || fail "no drain_started line: $(tail -3 <<<"$logs")"
grep -q 'drain_finished.*timed_out=false' <<<"$logs" || fail "no drain_finished line: $(tail -3 <<<"$logs")"
step "docker stop: drained, exit 0 in $stop_s s; log: $(grep -o 'drain_finished.*' <<<"$logs")"

# --- compose: three replicas behind HAProxy ---
project=qlinear-test-$$
for v in LB_PORT R1_PORT R2_PORT R3_PORT R1_METRICS_PORT R2_METRICS_PORT R3_METRICS_PORT; do
  export "QLINEAR_$v=$(free_port)"
done
export QLINEAR_IMAGE=$image QLINEAR_HAPROXY_IMAGE=$haproxy_image QLINEAR_MODELS=$models
docker-compose -f docker/compose.yaml -p "$project" build haproxy >/tmp/qlinear-haproxy-build.log 2>&1 || {
  tail -20 /tmp/qlinear-haproxy-build.log >&2
  fail "building the haproxy image failed (docker-compose -f docker/compose.yaml build haproxy)"
}
compose_up=1
docker-compose -f docker/compose.yaml -p "$project" up -d >/dev/null 2>&1 ||
  fail "docker-compose up failed: $(docker-compose -f docker/compose.yaml -p "$project" logs --tail 5 2>&1)"
lb=127.0.0.1:$QLINEAR_LB_PORT
for _ in $(seq 100); do
  docker run --rm --network host --entrypoint qlinear "$image" health --target "$lb" --timeout-s 1 \
    >/dev/null 2>&1 && break
  sleep 0.3
done
sleep 0.5  # every replica's readiness checked (rise 2 at 100 ms)
# 30 Forwards through HAProxy, one connection each: round robin spreads them.
docker run --rm --network host --entrypoint sh "$image" -c \
  "for i in \$(seq 30); do qlinear forward --target $lb --layer $layer --random-rows 1 >/dev/null || exit 1; done" ||
  fail "Forward through HAProxy failed: $(docker-compose -f docker/compose.yaml -p "$project" logs --tail 5 haproxy 2>&1)"
served=0
for r in R1 R2 R3; do
  mp_var=QLINEAR_${r}_METRICS_PORT
  n=$(http_get "${!mp_var}" /metrics | awk -v l="qlinear_requests_total{layer=\"$layer\",code=\"OK\"}" '$1 == l { print $2 }')
  [ "${n:-0}" -gt 0 ] && served=$((served + 1))
  echo "docker/test: replica $r answered ${n:-0} of the 30"
done
[ "$served" -eq 3 ] || fail "only $served of 3 replicas answered through HAProxy"
docker-compose -f docker/compose.yaml -p "$project" down -v -t 15 >/dev/null 2>&1
compose_up=""
step "compose: 3 replicas behind HAProxy answered 30 Forwards, taken down"
echo "docker/test: PASS (image $size bytes, $((SECONDS - start)) s)"
