#!/usr/bin/env bash
# What an order costs in a batch against a single call, side by side in one
# sitting: the release server on its private PostgreSQL (100 000 contacts
# prefilled); ORDERS (20 000) orders of one mix (60 % new customers, 30 % repeats,
# 10 % links and merges) sent as single calls by loadgen-free plain HTTP on one
# connection, then as batches of BATCH (1000) on one connection; REPEATS (3) times,
# alternating. Prints, as medians, orders/s and the CPU an order costs the server
# and PostgreSQL (the machine's busy time less this client's own), with the
# ratios; then `check --deep`.
#
#   bench/batch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS="${ORDERS:-20000}"; BATCH="${BATCH:-1000}"; REPEATS="${REPEATS:-3}"
cargo build --release --quiet
server=target/release/identity-reconciliation
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
DATA_DIR="$work" PORT="$port" RUST_LOG=warn "$server" >"$work/server.log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
pg_port="$(sed -n 4p "$work/postgres/postmaster.pid")"
export PGPASSWORD="$(cat "$work/postgres.password")"
url="postgres://postgres:$PGPASSWORD@127.0.0.1:$pg_port/postgres"
psql -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres -v rows=100000 -f bench/prefill.sql >/dev/null

python3 - "$port" "$ORDERS" "$BATCH" "$REPEATS" <<'PY'
import http.client, json, os, random, statistics, sys, time
port, orders, batch, repeats = (int(a) for a in sys.argv[1:])

def mix(run):
    """New customers, repeats of earlier ones and orders linking two of them."""
    rng = random.Random(run)
    seen, out = [], []
    for n in range(orders):
        roll = rng.random()
        if roll < 0.6 or len(seen) < 2:
            order = {"email": f"r{run}n{n}@bench.io", "phoneNumber": f"9{run:02d}{n:07d}"}
            seen.append(order)
        elif roll < 0.9:
            order = rng.choice(seen)
        else:
            a, b = rng.sample(seen, 2)
            order = {"email": a["email"], "phoneNumber": b["phoneNumber"]}
        out.append(order)
    return out

def busy_seconds():
    """CPU seconds the machine spent, less this process's own."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    own = sum(os.times()[:2])
    return busy / os.sysconf("SC_CLK_TCK") - own

def measured(send, run):
    cpu = busy_seconds()
    rate = send(run)
    return rate, (busy_seconds() - cpu) / orders * 1000

def singles(run):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    started = time.perf_counter()
    for order in mix(run):
        conn.request("POST", "/identify", json.dumps(order), {"Content-Type": "application/json"})
        response = conn.getresponse(); response.read()
        assert response.status == 200, response.status
    return orders / (time.perf_counter() - started)

def batches(run):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    work = mix(run)
    started = time.perf_counter()
    for start in range(0, orders, batch):
        body = json.dumps({"orders": work[start:start + batch]})
        conn.request("POST", "/identify/batch", body, {"Content-Type": "application/json"})
        response = conn.getresponse(); answer = json.loads(response.read())
        assert response.status == 200, (response.status, answer)
        assert all("contact" in r for r in answer["results"]), answer
    return orders / (time.perf_counter() - started)

single, batched = [], []
for repeat in range(repeats):
    single.append(measured(singles, 2 * repeat + 1))
    batched.append(measured(batches, 2 * repeat + 2))
    print(f"   repeat {repeat + 1}: singles {single[-1][0]:.0f} orders/s, "
          f"{single[-1][1]:.3f} ms CPU an order; batches of {batch} {batched[-1][0]:.0f} "
          f"orders/s, {batched[-1][1]:.3f} ms CPU an order", flush=True)
rate_s = statistics.median(r for r, _ in single)
rate_b = statistics.median(r for r, _ in batched)
cpu_s = statistics.median(c for _, c in single)
cpu_b = statistics.median(c for _, c in batched)
print("| | orders/s | ratio | CPU ms an order (server + PostgreSQL) | cheaper |")
print("|---|---|---|---|---|")
print(f"| single calls, 1 connection | {rate_s:.0f} | 1.0 | {cpu_s:.3f} | 1.0 |")
print(f"| batches of {batch}, 1 connection | {rate_b:.0f} | {rate_b / rate_s:.1f} | {cpu_b:.3f} | {cpu_s / cpu_b:.1f} |")
PY
DATABASE_URL="$url" RUST_LOG=error "$server" check --deep | tail -n 2
