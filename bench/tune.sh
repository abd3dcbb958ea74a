#!/usr/bin/env bash
# Tuning by measurement (issue 14): at 64 connections, half new customers and half
# repeats, one sitting, each setting beside the others in every repeat:
#   - the server's pool size (POOLS) and tokio worker threads (WORKERS);
#   - PostgreSQL's settings: PostgreSQL's own defaults, against the settings the
#     private PostgreSQL starts with (src/db/embedded.rs), both durable (fsync and
#     synchronous_commit on).
# Raw results go to $OUT (target/tune); the table is printed at the end.
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
# What src/db/embedded.rs starts the private PostgreSQL with (durable).
private="-c max_locks_per_transaction=256 -c shared_buffers=256MB -c max_wal_size=2GB \
  -c checkpoint_timeout=15min -c random_page_cost=1.1 -c effective_cache_size=1GB"
pg_start() { "${run_as[@]}" "$pg_bin/pg_ctl" -D "$OUT/pgdata" -l "$OUT/postgres.log" -w start -o "$base $1" >/dev/null; }
pg_stop() { "${run_as[@]}" "$pg_bin/pg_ctl" -D "$OUT/pgdata" -m fast -w stop >/dev/null 2>&1 || true; }
trap 'kill $(jobs -p) 2>/dev/null || true; pg_stop' EXIT

url="postgres://postgres@127.0.0.1:$port/bench_tune"
pg_start "$private"
"$pg_bin/psql" -q -X "postgres://postgres@127.0.0.1:$port/postgres" -c "CREATE DATABASE bench_tune"
DATABASE_URL="$url" RUST_LOG=error "$server_bin" migrate
"$pg_bin/psql" -q -X -v ON_ERROR_STOP=1 "$url" -v rows=100000 -f bench/prefill.sql
"$pg_bin/psql" -q -X "$url" -c "VACUUM ANALYZE contacts"

run() { # label [VAR=value...]
  local label="$1"; shift
  env "$@" DATABASE_URL="$url" PORT=3950 RUST_LOG=error "$server_bin" &
  local pid=$!
  for _ in $(seq 1 200); do curl -fs http://127.0.0.1:3950/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  "$loadgen_bin" --url http://127.0.0.1:3950 --connections 64 --duration "$SECONDS_PER_RUN" \
    --keys "$KEYS" --mix "$MIX" --progress 0 --max-error-rate 0 --json "$OUT/runs/$label.json" >/dev/null
  kill -TERM "$pid"; wait "$pid" || true
}

for repeat in $(seq 1 "$REPEATS"); do
  for pool in $POOLS; do run "pool-$pool-r$repeat" DB_POOL_SIZE="$pool"; done
  for workers in $WORKERS; do run "workers-$workers-r$repeat" TOKIO_WORKER_THREADS="$workers"; done
  run "postgres-private-r$repeat"
  pg_stop; pg_start ""
  run "postgres-defaults-r$repeat"
  pg_stop; pg_start "$private"
  echo "   repeat $repeat done"
done

python3 - "$OUT" <<'PY'
import glob, json, os, re, statistics, sys
runs = os.path.join(sys.argv[1], "runs")
labels = sorted({re.sub(r"-r\d+\.json$", "", os.path.basename(p)) for p in glob.glob(os.path.join(runs, "*.json"))})
print("| setting | req/s | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|")
for label in labels:
    results = [json.load(open(p)) for p in glob.glob(os.path.join(runs, f"{label}-r*.json"))]
    med = lambda key: statistics.median(key(r) for r in results)
    errors = sum(r["requests"] - r["ok"] for r in results)
    print(f"| {label} | {med(lambda r: r['ok_rps']):.0f} | {med(lambda r: r['latency_ms']['p50']):.2f} | {med(lambda r: r['latency_ms']['p99']):.2f} | {errors} |")
PY
