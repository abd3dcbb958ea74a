#!/usr/bin/env bash
# Tuning by measurement (issue 14): at 64 connections, half new customers and half
# repeats, one sitting, each setting beside the others in every repeat:
#   - the server's pool size (POOLS) and tokio worker threads (WORKERS);
#   - PostgreSQL's settings: PostgreSQL's own defaults against a tuned set (bigger
#     shared_buffers and WAL, SSD random_page_cost), both durable (fsync and
#     synchronous_commit on); the private PostgreSQL (src/db/embedded.rs) takes
#     the tuned set only if it measures better.
# Then where the CPU goes, at 16 and 64 connections: the server (half new, half
# repeat) against the minimal floor (bench/pgbench/minimal-*.sql), each run's CPU
# split between the server, the load generator (loadgen or pgbench) and the rest
# of the machine (PostgreSQL, essentially).
# Raw results go to $OUT (target/tune); the tables are printed at the end.
#
#   bench/tune.sh                 # about 12 minutes
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
REPEATS="${REPEATS:-3}"
POOLS="${POOLS-8 16 32}"
WORKERS="${WORKERS-1 4}"
KEYS="${KEYS:-10000}"
MIX="${MIX:-new=50,repeat=50}"
OUT="$(pwd)/${OUT:-target/tune}"

cargo build --release --quiet
server_bin="$(pwd)/target/release/identity-reconciliation"
loadgen_bin="$(pwd)/target/release/loadgen"
pg_bin="${PG_BIN_DIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
rm -rf "$OUT" && mkdir -p "$OUT/runs"
run_as=()
if [ "$(id -u)" = 0 ]; then
  run_as=(setpriv --reuid=postgres --regid=postgres --clear-groups --)
  chown postgres: "$OUT"
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${run_as[@]}" "$pg_bin/initdb" -D "$OUT/pgdata" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
base="-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=300"
# The tuned set (durable), against PostgreSQL's defaults.
tuned="-c max_locks_per_transaction=256 -c shared_buffers=256MB -c max_wal_size=2GB \
  -c checkpoint_timeout=15min -c random_page_cost=1.1 -c effective_cache_size=1GB"
pg_start() { "${run_as[@]}" "$pg_bin/pg_ctl" -D "$OUT/pgdata" -l "$OUT/postgres.log" -w start -o "$base $1" >/dev/null; }
pg_stop() { "${run_as[@]}" "$pg_bin/pg_ctl" -D "$OUT/pgdata" -m fast -w stop >/dev/null 2>&1 || true; }
trap 'kill $(jobs -p) 2>/dev/null || true; pg_stop' EXIT

url="postgres://postgres@127.0.0.1:$port/bench_tune"
pg_start "$tuned"
"$pg_bin/psql" -q -X "postgres://postgres@127.0.0.1:$port/postgres" -c "CREATE DATABASE bench_tune"
DATABASE_URL="$url" RUST_LOG=error "$server_bin" migrate
"$pg_bin/psql" -q -X -v ON_ERROR_STOP=1 "$url" -v rows=100000 -f bench/prefill.sql
"$pg_bin/psql" -q -X "$url" -c "VACUUM ANALYZE contacts"

machine_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }

run() { # label [VAR=value...]; CONNECTIONS (64) loadgen connections
  local label="$1"; shift
  env "$@" DATABASE_URL="$url" PORT=3950 RUST_LOG=error "$server_bin" &
  local pid=$!
  for _ in $(seq 1 200); do curl -fs http://127.0.0.1:3950/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  local before server_before
  before="$(machine_ticks)"; server_before="$(awk '{print $14+$15}' "/proc/$pid/stat")"
  /usr/bin/time -f "%U %S" -o "$OUT/runs/$label.client" \
    "$loadgen_bin" --url http://127.0.0.1:3950 --connections "${CONNECTIONS:-64}" --duration "$SECONDS_PER_RUN" \
    --keys "$KEYS" --mix "$MIX" --progress 0 --max-error-rate 0 --json "$OUT/runs/$label.json" >/dev/null || true
  echo "$before $(machine_ticks) $server_before $(awk '{print $14+$15}' "/proc/$pid/stat") $(getconf CLK_TCK)" \
    >"$OUT/runs/$label.cpu"
  kill -TERM "$pid"; wait "$pid" || true
}

floor() { # label clients
  local before
  before="$(machine_ticks)"
  /usr/bin/time -f "%U %S" -o "$OUT/runs/$1.client" \
    "$pg_bin/pgbench" -n -M prepared -c "$2" -j 2 -T "$SECONDS_PER_RUN" -D keys="$KEYS" \
    -f bench/pgbench/minimal-new.sql@50 -f bench/pgbench/minimal-repeat.sql@50 "$url" >"$OUT/runs/$1.txt" 2>&1
  echo "$before $(machine_ticks) 0 0 $(getconf CLK_TCK)" >"$OUT/runs/$1.cpu"
}

for repeat in $(seq 1 "$REPEATS"); do
  for pool in $POOLS; do run "pool-$pool-r$repeat" DB_POOL_SIZE="$pool"; done
  for workers in $WORKERS; do run "workers-$workers-r$repeat" TOKIO_WORKER_THREADS="$workers"; done
  run "postgres-tuned-r$repeat"
  pg_stop; pg_start ""
  run "postgres-defaults-r$repeat"
  pg_stop; pg_start "$tuned"
  for c in 16 64; do
    CONNECTIONS=$c run "split-server-c$c-r$repeat"
    floor "split-floor-c$c-r$repeat" "$c"
  done
  echo "   repeat $repeat done"
done

python3 - "$OUT" <<'PY'
import glob, json, os, re, statistics, sys
runs = os.path.join(sys.argv[1], "runs")
labels = sorted({re.sub(r"-r\d+\.json$", "", os.path.basename(p)) for p in glob.glob(os.path.join(runs, "*.json"))})
labels = [l for l in labels if not l.startswith("split-")]
print("| setting | req/s | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|")
for label in labels:
    results = [json.load(open(p)) for p in glob.glob(os.path.join(runs, f"{label}-r*.json"))]
    med = lambda key: statistics.median(key(r) for r in results)
    errors = sum(r["requests"] - r["ok"] for r in results)
    print(f"| {label} | {med(lambda r: r['ok_rps']):.0f} | {med(lambda r: r['latency_ms']['p50']):.2f} | {med(lambda r: r['latency_ms']['p99']):.2f} | {errors} |")

def cpu(label):
    """Median CPU µs per request or transaction: (server, client, rest)."""
    server, client, rest = [], [], []
    for path in glob.glob(os.path.join(runs, f"{label}-r*.cpu")):
        before, after, s_before, s_after, hz = map(float, open(path).read().split())
        base = path[: -len(".cpu")]
        if os.path.exists(base + ".json"):
            done = json.load(open(base + ".json"))["ok"]
        else:
            done = int(re.search(r"number of transactions actually processed: (\d+)", open(base + ".txt").read()).group(1))
        user, system = map(float, open(base + ".client").read().split()[-2:])
        total_us = (after - before) / hz * 1e6
        server_us = (s_after - s_before) / hz * 1e6
        client_us = (user + system) * 1e6
        server.append(server_us / done)
        client.append(client_us / done)
        rest.append((total_us - server_us - client_us) / done)
    return statistics.median(server), statistics.median(client), statistics.median(rest)

def rate(label):
    values = []
    for path in glob.glob(os.path.join(runs, f"{label}-r*")):
        if path.endswith(".json"):
            values.append(json.load(open(path))["ok_rps"])
        elif path.endswith(".txt"):
            values.append(float(re.search(r"tps = ([0-9.]+) \(without", open(path).read()).group(1)))
    return statistics.median(values)

print()
print("| connections | what | per second | CPU µs each: server | CPU µs each: client (loadgen or pgbench) | CPU µs each: PostgreSQL and the rest |")
print("|---|---|---|---|---|---|")
for c in (16, 64):
    for what, label in (("server, half new/half repeat", f"split-server-c{c}"), ("minimal floor (pgbench)", f"split-floor-c{c}")):
        server, client, rest = cpu(label)
        print(f"| {c} | {what} | {rate(label):.0f} | {server:.0f} | {client:.0f} | {rest:.0f} |")
PY
