#!/usr/bin/env python3
"""Load generator for qlinear.AsyncClient, to set beside `qlinear bench`:
C coroutines on one channel, each sending one request after another for a
fixed time; prints requests/s, latency percentiles and the client's own
CPU time per request (so where the time goes: the Python process or the
server). --profile adds a cProfile of the run, by own time.

    PYTHONPATH=build/python /usr/bin/python3 client/python/tools/bench_async.py \
        --target 127.0.0.1:50051 --layer demo --concurrency 64 --duration 10
"""

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import time

import numpy as np

import qlinear


async def run(args):
    async with qlinear.AsyncClient(args.target) as client:
        info = await client.get(args.layer)
        x = np.random.default_rng(0).standard_normal((args.rows, info.in_features)).astype(args.dtype)
        latencies = []
        stop = time.perf_counter() + args.warmup

        async def worker(record):
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await client.forward(args.layer, x)
                if record:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker(False) for _ in range(args.concurrency)))  # warm-up
        stop = time.perf_counter() + args.duration
        cpu0, t0 = os.times(), time.perf_counter()
        await asyncio.gather(*(worker(True) for _ in range(args.concurrency)))
        wall, cpu1 = time.perf_counter() - t0, os.times()
        return latencies, wall, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--layer", default="demo")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    latencies, wall, cpu = asyncio.run(run(args))
    if prof:
        prof.disable()
    n = len(latencies)
    lat = np.sort(np.array(latencies)) * 1e3
    print(f"AsyncClient: {n} requests in {wall:.2f} s = {n / wall:.1f} requests/s "
          f"({n * args.rows / wall:.1f} rows/s), concurrency {args.concurrency}, rows {args.rows}")
    print(f"latency ms: p50 {lat[n // 2]:.2f}  p90 {lat[int(n * 0.9)]:.2f}  p99 {lat[int(n * 0.99)]:.2f}  "
          f"max {lat[-1]:.2f}")
    print(f"client CPU: {cpu:.2f} s of {wall:.2f} s wall ({100 * cpu / wall:.0f}% of one core), "
          f"{1e6 * cpu / max(n, 1):.0f} us per request")
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
        print(s.getvalue())


if __name__ == "__main__":
    main()
