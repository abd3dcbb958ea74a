"""Turns the raw runs of bench/run.sh into the tables of BENCHMARKS.md (medians)."""
import glob
import json
import os
import re
import statistics
import sys

out = sys.argv[1]
runs = os.path.join(out, "runs")


def loadgen(pattern):
    return [json.load(open(path)) for path in sorted(glob.glob(os.path.join(runs, pattern)))]


def pgbench_tps(pattern):
    values = []
    for path in sorted(glob.glob(os.path.join(runs, pattern))):
        match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", open(path).read())
        if match:
            values.append(float(match.group(1)))
    return values


def cpu_per_request(pattern):
    """Median CPU microseconds per answered request: (server, everything else)."""
    server, rest = [], []
    for path in sorted(glob.glob(os.path.join(runs, pattern))):
        before_total, before_server, after_total, after_server, hz = map(float, open(path).read().split())
        requests = json.load(open(path[: -len(".cpu")] + ".json"))["ok"]
        if requests:
            server_us = (after_server - before_server) / hz * 1e6 / requests
            server.append(server_us)
            rest.append((after_total - before_total) / hz * 1e6 / requests - server_us)
    return median(server), median(rest)


def median(values):
    return statistics.median(values) if values else float("nan")


connections = sorted({int(m) for m in re.findall(r"server-c(\d+)-", " ".join(os.listdir(runs)))})
print("| connections | server req/s | p50 ms | p99 ms | pgbench floor tps | server / floor | CPU µs/request: server | CPU µs/request: PostgreSQL + loadgen |")
print("|---|---|---|---|---|---|---|---|")
for c in connections:
    server = loadgen(f"server-c{c}-r*.json")
    rps = median([r["ok_rps"] for r in server])
    p50 = median([r["latency_ms"]["p50"] for r in server])
    p99 = median([r["latency_ms"]["p99"] for r in server])
    floor = median(pgbench_tps(f"pgbench-c{c}-r*.txt"))
    server_cpu, rest_cpu = cpu_per_request(f"server-c{c}-r*.cpu")
    print(f"| {c} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {floor:.0f} | {rps / floor:.0%} | {server_cpu:.0f} | {rest_cpu:.0f} |")

if glob.glob(os.path.join(runs, "minimal-c*")):
    print("\nHalf new customers, half repeats, against the minimal floor (a locking read; plus an insert for a new customer):\n")
    print("| connections | server req/s | p50 ms | p99 ms | errors | minimal floor tps | server / minimal floor | service floor tps (default mix) | server / service floor (default mix) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in connections:
        half = loadgen(f"half-c{c}-r*.json")
        rps = median([r["ok_rps"] for r in half])
        p50 = median([r["latency_ms"]["p50"] for r in half])
        p99 = median([r["latency_ms"]["p99"] for r in half])
        errors = sum(r["requests"] - r["ok"] for r in half)
        minimal = median(pgbench_tps(f"minimal-c{c}-r*.txt"))
        service = median(pgbench_tps(f"pgbench-c{c}-r*.txt"))
        default = median([r["ok_rps"] for r in loadgen(f"server-c{c}-r*.json")])
        print(f"| {c} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} | {minimal:.0f} | {rps / minimal:.0%} | {service:.0f} | {default / service:.0%} |")

replicas = sorted({int(m) for m in re.findall(r"replicas-(\d+)-", " ".join(os.listdir(runs)))})
if replicas:
    print("\nServer processes on one database (64 connections spread over them, default mix):\n")
    print("| server processes | req/s | p50 ms | p99 ms | errors | req/s / one process |")
    print("|---|---|---|---|---|---|")
    base = None
    for n in replicas:
        results = loadgen(f"replicas-{n}-r*.json")
        rps = median([r["ok_rps"] for r in results])
        base = base or rps
        p50 = median([r["latency_ms"]["p50"] for r in results])
        p99 = median([r["latency_ms"]["p99"] for r in results])
        errors = sum(r["requests"] - r["ok"] for r in results)
        print(f"| {n} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} | {rps / base:.2f} |")

variants = sorted({m for m in re.findall(r"variant-([a-z]+)-mix-", " ".join(os.listdir(runs)))} - {"plain"})
if variants:
    print("\nVariants at 64 connections, each run beside the plain server in every repeat:\n")
    print("| server | mix | req/s | p50 ms | p99 ms | errors | req/s / plain | CPU µs/request: server | CPU µs/request: PostgreSQL + loadgen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mix, label in (("mix", "default"), ("half", "half new, half repeat")):
        plain = median([r["ok_rps"] for r in loadgen(f"variant-plain-{mix}-r*.json")])
        for variant in ["plain"] + variants:
            results = loadgen(f"variant-{variant}-{mix}-r*.json")
            rps = median([r["ok_rps"] for r in results])
            p50 = median([r["latency_ms"]["p50"] for r in results])
            p99 = median([r["latency_ms"]["p99"] for r in results])
            errors = sum(r["requests"] - r["ok"] for r in results)
            server_cpu, rest_cpu = cpu_per_request(f"variant-{variant}-{mix}-r*.cpu")
            print(f"| {variant} | {label} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} | {rps / plain:.2f} | {server_cpu:.0f} | {rest_cpu:.0f} |")

peak = open(os.path.join(runs, "server-peak-rss-kib.txt")).read().strip()
print(f"\nServer peak RSS over the sweep: {int(peak) / 1024:.1f} MiB\n")

sizes = sorted({int(m) for m in re.findall(r"size-(\d+)-", " ".join(os.listdir(runs)))})
if sizes:
    print("| contacts before the run | req/s | p50 ms | p99 ms | p99 / p99 at smallest |")
    print("|---|---|---|---|---|")
    base = None
    for size in sizes:
        results = loadgen(f"size-{size}-r*.json")
        p99 = median([r["latency_ms"]["p99"] for r in results])
        base = base or p99
        rps = median([r["ok_rps"] for r in results])
        p50 = median([r["latency_ms"]["p50"] for r in results])
        print(f"| {size:,} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {p99 / base:.2f} |")
