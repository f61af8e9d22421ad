#!/usr/bin/env python3
"""Turns qlinear_kernel_bench JSON into the Markdown tables of docs/performance.md.

usage: ./build/qlinear_kernel_bench --benchmark_format=json > bench.json
       python3 bench/report.py bench.json

Rows are picked by benchmark name (qmm/..., ref/..., sgemm/..., read/...); when
repetitions were run, the median aggregate is used.
"""
import json
import re
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data["benchmarks"]:
        name = b["name"]
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") != "median":
                continue
            name = name[: -len("_median")]
        elif b.get("repetitions", 1) > 1 and name in rows:
            continue
        # Google Benchmark's own suffixes (/min_time:0.500, /real_time, ...).
        name = re.sub(r"(/(min_time|iterations|repeats|threads):[^/]*|/real_time)+$", "", name)
        ms = b["real_time"] if b["time_unit"] == "ms" else b["real_time"] / 1e6
        rows[name] = {"ms": ms, "gflops": b.get("GFLOPS", 0) / 1e0, "label": b.get("label", "")}
    return data.get("context", {}), rows


def fmt(v, spec="{:.3f}"):
    return "–" if v is None else spec.format(v)


def main():
    context, rows = load(sys.argv[1])
    get = lambda n: rows.get(n)
    print(f"Host: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs, "
          f"{context.get('mhz_per_cpu', '?')} MHz, date {context.get('date', '?')}")
    label = next((r["label"] for n, r in rows.items() if n.startswith("qmm/")), "")
    print(f"Kernel target: {label}\n")

    base = "affine_b4_g64/{dt}/N4096_K4096/M{m}"
    for dt in ("f32", "f16", "bf16"):
        print(f"### affine b4 g64, x {dt}, N=K=4096\n")
        print("| M | qmm ms | GFLOP/s | sgemm ms | sgemm / qmm | ref ms | ref / qmm |")
        print("|---|---|---|---|---|---|---|")
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            q = get("qmm/" + base.format(dt=dt, m=m))
            if q is None:
                continue
            s = get("sgemm/" + base.format(dt=dt, m=m))
            r = get("ref/" + base.format(dt=dt, m=m))
            print(f"| {m} | {q['ms']:.3f} | {q['gflops']:.1f} | {fmt(s and s['ms'])} | "
                  f"{fmt(s and s['ms'] / q['ms'], '{:.2f}×')} | {fmt(r and r['ms'], '{:.1f}')} | "
                  f"{fmt(r and r['ms'] / q['ms'], '{:.0f}×')} |")
        print()

    print("### Cold weights (DRAM), affine b4 g64, x f32\n")
    print("| M | warm ms | cold ms | cold / warm | plain read of the bytes, ms | cold / read |")
    print("|---|---|---|---|---|---|")
    read = get("read/" + base.format(dt="f32", m=1) + "/cold")
    for m in (1, 8):
        w = get("qmm/" + base.format(dt="f32", m=m))
        c = get("qmm/" + base.format(dt="f32", m=m) + "/cold")
        if w and c:
            print(f"| {m} | {w['ms']:.3f} | {c['ms']:.3f} | {c['ms'] / w['ms']:.2f} | "
                  f"{fmt(read and read['ms'])} | {fmt(read and c['ms'] / read['ms'], '{:.2f}')} |")
    print()

    print("### Every format, x f32, N=K=4096\n")
    print("| format | M | qmm ms | GFLOP/s | % of b4 g64 | sgemm / qmm | ref / qmm |")
    print("|---|---|---|---|---|---|---|")
    formats = sorted({n.split("/")[1] for n in rows if n.startswith("qmm/")})
    for f in formats:
        for m in (1, 8, 32, 128):
            name = f"{f}/f32/N4096_K4096/M{m}"
            q = get("qmm/" + name)
            if q is None:
                continue
            b4 = get("qmm/" + base.format(dt="f32", m=m))
            s = get("sgemm/" + name)
            r = get("ref/" + name)
            print(f"| {f} | {m} | {q['ms']:.3f} | {q['gflops']:.1f} | "
                  f"{fmt(b4 and 100 * q['gflops'] / b4['gflops'], '{:.0f} %')} | "
                  f"{fmt(s and s['ms'] / q['ms'], '{:.2f}×')} | {fmt(r and r['ms'] / q['ms'], '{:.0f}×')} |")
    print()


if __name__ == "__main__":
    main()
