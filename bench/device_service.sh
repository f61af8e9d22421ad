#!/bin/bash
# Service throughput with the load generator on cores of its own, on a
# machine with more than 2 cores (the `device` machine), for comparison
# with this 2-core machine where server and load generator share cores.
#
#   bench/device_service.sh prepare   # here: binaries + their shared
#                                     # libraries into build/devrun (~22 MB)
#   build/devrun/device_service.sh run   # there (carry build/devrun)
#   build/devrun/device_service.sh kernels  # there: precision tests, and
#                                        # the kernel beside ONNX Runtime
#   build/devrun/device_service.sh scaling  # there: kernel strategies and
#                                        # threads 1-16 beside ONNX Runtime,
#                                        # the service on 8+8 cores
#
# `run` pins qlinear-server to cores 0-1 (--threads 2), measures the kernel
# pinned to the same cores, then drives the server with `qlinear bench` at
# concurrency 64 and 1 from cores 2-3, from the server's cores 0-1 and from
# cores 2-7.
set -euo pipefail

prepare() {
  local out=build/devrun
  rm -rf "$out" && mkdir -p "$out/lib"
  cp build/qlinear-server build/qlinear build/qlinear_kernel_bench "$0" "$out/"
  # The precision tests, to check there that INT8 and BF16 give this
  # machine's bits (the recorded digests) and that vdpbf16ps is as defined.
  cp build/tests/qmm_test build/tests/qmm_int8_test build/tests/qmm_bf16_test build/tests/precision_digest_test \
    tests/core/kernels/precision_digests.txt "$out/"
  if [ -f ../shared/peers/ort_bench.py ]; then cp ../shared/peers/ort_bench.py "$out/"; fi
  for b in "$out"/qlinear-server "$out"/qlinear "$out"/qlinear_kernel_bench "$out"/*_test; do
    ldd "$b" | awk '/=>/ {print $3}'
  done | sort -u | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux|libpthread|libdl|librt)[.-]' |
    grep -v -E 'lib(openblas|gfortran|quadmath)' | xargs -I{} cp -L {} "$out/lib/"
  # The run filters out the OpenBLAS baselines: a stub keeps 35 MB behind.
  printf '%s\n' '#include <stdlib.h>' 'void cblas_sgemm(void) { abort(); }' \
    'void cblas_sgemv(void) { abort(); }' 'void openblas_set_num_threads(int n) { (void)n; }' |
    gcc -shared -fPIC -x c -o "$out/lib/libopenblas.so.0" -
  strip --strip-unneeded "$out"/qlinear* "$out"/*_test "$out"/lib/* 2>/dev/null || true
  du -sh "$out"
}

summary() {
  python3 -c "
import json, sys
d = json.load(sys.stdin); s = d['server']; l = d['latency_ms']
print('$1: %.0f req/s  p50 %.3f ms  p99 %.3f ms  rows/batch %.1f  compute %.0f us  queue %.0f us  errors %s' % (
    d['requests_per_s'], l['p50'], l['p99'], s['batch_rows_mean'], s['compute_us_mean'],
    s['queue_us_mean'], d['errors']))"
}

# serve CORES THREADS [server flags]: qlinear-server pinned to CORES, its pid
# in $server, once it says it is listening; unserve stops it: SIGTERM (a
# drain), then SIGKILL after 10 s.
serve() {
  taskset -c "$1" ./qlinear-server --threads "$2" "${@:3}" --listen 127.0.0.1:50051 > srv.log 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -q listening srv.log && break; sleep 0.2; done
}

unserve() {
  kill -TERM "$server"
  for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$server" 2>/dev/null || true  # gone already
  wait "$server" 2>/dev/null || true
}

run() {
  cd "$(dirname "$0")"
  export LD_LIBRARY_PATH=$PWD/lib
  echo "== kernel, 2 threads pinned to cores 0-1"
  QLINEAR_BENCH_THREADS=2 taskset -c 0,1 ./qlinear_kernel_bench \
    --benchmark_filter='qmm/affine_b4_g64/f32/N4096_K4096/M(1|16|32|64)/real_time' \
    --benchmark_repetitions=3 --benchmark_report_aggregates_only=true 2>&1 |
    grep median | awk '{print $1, $2, $3, $7}'
  for cores in 2,3 0,1 2-7; do
    serve 0,1 2
    taskset -c "$cores" ./qlinear bench --layer demo --concurrency 64 --duration 5 --warmup 2 \
      --json 2>/dev/null | summary "bench on cores $cores, concurrency 64"
    taskset -c "$cores" ./qlinear bench --layer demo --concurrency 1 --duration 4 --warmup 1 \
      --json 2>/dev/null | summary "bench on cores $cores, concurrency 1"
    unserve
  done
}

# kernels: the precision tests, then the kernel in every precision at 2, 8
# and 16 threads beside ONNX Runtime's MatMulNBits (ort_bench.py, fp32 and
# int8 compute) in one run, alternating, each qlinear figure a median of
# $REPS (default 5) repetitions; $THREADS (default "16 8 2") the counts.
kernels() {
  cd "$(dirname "$0")"
  export LD_LIBRARY_PATH=$PWD/lib
  echo "== $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  echo "== load $(cat /proc/loadavg)"
  QLINEAR_DIGESTS_FILE=$PWD/precision_digests.txt ./precision_digest_test 2>&1 | tail -3
  ./qmm_bf16_test 2>&1 | tail -3
  ./qmm_int8_test 2>&1 | tail -3
  for threads in ${THREADS:-16 8 2}; do
    echo "== qlinear, $threads threads, load $(cat /proc/loadavg)"
    QLINEAR_BENCH_THREADS=$threads taskset -c 0-$((threads - 1)) ./qlinear_kernel_bench \
      --benchmark_filter='qmm/affine_b4_g64/f32/N4096_K4096/M(1|8|32|128)(/int8|/bf16)?/real_time' \
      --benchmark_repetitions=${REPS:-5} --benchmark_report_aggregates_only=true 2>&1 |
      grep median | awk '{print $1, $2, $3}'
    if [ -f ort_bench.py ]; then
      echo "== ONNX Runtime, $threads threads, load $(cat /proc/loadavg)"
      taskset -c 0-$((threads - 1)) python3 ort_bench.py "$threads"
    fi
  done
}

# scaling: the kernel strategies (qmm.h) and thread counts on this CPU.
# Parts ($PARTS, default "kernel ort service layers", in that order):
#   kernel   EXACT N=K=4096 4-bit at each of $THREADS (default "16 8 4 2 1")
#            threads, QLINEAR_KERNEL=register, and =panel at 16 and 8; all
#            qlinear runs come before ONNX Runtime's, whose spinning
#            threads raise the load for a while after it ends
#   ort      ONNX Runtime's fp32 compute (accuracy_level=0) at the same counts
#   service  the server on cores 0-7 against `qlinear bench` on cores 8-15,
#            concurrency 256, unary, for each of $SERVER_CONFIGS (default
#            "8 8/1 7 6": --threads, and /N for --compute-slots N), and
#            --stream with 8 threads
#   layers   two layers on 16 threads, two benches on the same 16 cores
# Each step has its own time limit; the output is one log.
scaling() {
  set +e +o pipefail  # a part that fails or times out leaves the others to run
  cd "$(dirname "$0")"
  export LD_LIBRARY_PATH=$PWD/lib
  local m='M(1|8|32|128)' threads
  local parts=" ${PARTS:-kernel ort service layers} "
  echo "== $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), load $(cat /proc/loadavg)"
  sed 's/^for acc in (0, 4):/for acc in (0,):/' ort_bench.py > ort_fp32.py
  kernel_at() {  # threads strategy filter
    echo "== qlinear $2, $1 threads, load $(cat /proc/loadavg)"
    QLINEAR_KERNEL=$2 QLINEAR_BENCH_THREADS=$1 timeout 60 taskset -c 0-$(($1 - 1)) \
      ./qlinear_kernel_bench --benchmark_filter="qmm/affine_b4_g64/f32/N4096_K4096/$3/real_time" \
      --benchmark_min_time=0.2 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
      2>&1 | grep median | awk '{print $1, $2, $3, $NF, $(NF-1)}'
  }
  if [[ $parts == *" kernel "* ]]; then
    for threads in ${THREADS:-16 8 4 2 1}; do
      kernel_at "$threads" register "$m"
      if [ "$threads" -ge 8 ]; then kernel_at "$threads" panel "$m"; fi
    done
  fi
  if [[ $parts == *" ort "* ]]; then
    for threads in ${THREADS:-16 8 4 2 1}; do
      echo "== ONNX Runtime fp32, $threads threads, load $(cat /proc/loadavg)"
      timeout 60 taskset -c 0-$((threads - 1)) python3 ort_fp32.py "$threads"
    done
  fi
  if [[ $parts == *" service "* ]]; then
    local config
    for config in ${SERVER_CONFIGS:-8 8/1 7 6}; do  # threads[/compute slots]
      threads=${config%/*}
      local flags=()
      if [ "$config" != "$threads" ]; then flags=(--compute-slots "${config#*/}"); fi
      serve 0-7 "$threads" "${flags[@]}"
      local modes=("")
      if [ "$config" = 8 ]; then modes+=(--stream); fi
      for mode in "${modes[@]}"; do
        timeout 30 taskset -c 8-15 ./qlinear bench --layer demo --concurrency 256 --channels 4 \
          --duration 5 --warmup 2 $mode --json 2>/dev/null |
          summary "server --threads $threads ${flags[*]} on 0-7, bench on 8-15, c=256 ${mode:-unary}"
      done
      unserve
    done
  fi
  if [[ $parts == *" layers "* ]]; then
    serve 0-15 16
    python3 -c "
import json, struct, numpy as np
w = (np.random.default_rng(7).standard_normal((4096, 4096), dtype=np.float32) * 0.02).astype(np.float16)
h = json.dumps({'second.weight': {'dtype': 'F16', 'shape': [4096, 4096], 'data_offsets': [0, w.nbytes]}}).encode()
h += b' ' * ((8 - len(h) % 8) % 8)
f = open('second.safetensors', 'wb'); f.write(struct.pack('<Q', len(h))); f.write(h); f.write(w.tobytes())"
    ./qlinear upload --in second.safetensors --bits 4 --group-size 64 | head -1
    timeout 20 taskset -c 0-15 ./qlinear bench --layer demo --concurrency 32 --duration 5 --warmup 1 \
      --json 2>/dev/null | summary "one bench alone, layer demo, c=32"
    (timeout 20 taskset -c 0-15 ./qlinear bench --layer second --concurrency 32 --duration 5 \
      --warmup 1 --json 2>/dev/null | summary "two benches: layer second, c=32") &
    local second=$!
    timeout 20 taskset -c 0-15 ./qlinear bench --layer demo --concurrency 32 --duration 5 --warmup 1 \
      --json 2>/dev/null | summary "two benches: layer demo, c=32"
    wait "$second" 2>/dev/null || true
    unserve
  fi
  echo "== done, load $(cat /proc/loadavg)"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  kernels) kernels ;;
  scaling) scaling ;;
  *) echo "usage: $0 prepare | run | kernels | scaling" >&2; exit 2 ;;
esac
