#!/usr/bin/env bash
# What identityEvents subscribers cost the write path, side by side in one sitting:
# loadgen's default mix at CONNECTIONS (64) for SECONDS_PER_RUN (10) s against the
# release server on its private PostgreSQL (100 000 contacts prefilled), with
#   none      no subscriber,
#   live      LIVE (4) subscribers that must each receive every change,
#   stalled   the same plus STALLED (16) subscribers that never read,
# interleaved, REPEATS (3) times. Prints medians of throughput and p99, and the
# live subscribers' delivery lag (commit to arrival).
#
#   bench/subscribers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS="${CONNECTIONS:-64}"; SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
REPEATS="${REPEATS:-3}"; LIVE="${LIVE:-4}"; STALLED="${STALLED:-16}"
cargo build --release --quiet
server=target/release/identity-reconciliation
loadgen=target/release/loadgen
work="$(mktemp -d)"
port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(port_of)"
DATA_DIR="$work" PORT="$port" RUST_LOG=warn "$server" >"$work/server.log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
pg_port="$(sed -n 4p "$work/postgres/postmaster.pid")"
export PGPASSWORD="$(cat "$work/postgres.password")"
url="postgres://postgres:$PGPASSWORD@127.0.0.1:$pg_port/postgres"
psql -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres -v rows=100000 -f bench/prefill.sql >/dev/null

run() { # label live stalled repeat
  # Subscribers replay the outbox from its start: empty it, so each run's live
  # subscribers get exactly that run's changes.
  psql -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres -c 'TRUNCATE identity_changes' >/dev/null
  "$loadgen" --url "http://127.0.0.1:$port" --connections "$CONNECTIONS" \
    --duration "$SECONDS_PER_RUN" --keys 10000 --progress 0 --max-error-rate 0 \
    --subscribers "$2" --stalled-subscribers "$3" --database-url "$url" \
    --json "$work/$1-$4.json" >/dev/null
}
for repeat in $(seq 1 "$REPEATS"); do
  run none 0 0 "$repeat"
  run live "$LIVE" 0 "$repeat"
  run stalled "$LIVE" "$STALLED" "$repeat"
  echo "   repeat $repeat done"
done
python3 - "$work" "$REPEATS" <<'PY'
import json, statistics, sys
work, repeats = sys.argv[1], int(sys.argv[2])
def load(label):
    return [json.load(open(f"{work}/{label}-{r}.json")) for r in range(1, repeats + 1)]
base = None
print("| subscribers | ok/s (median) | vs none | p99 ms | lag p50 ms | lag p99 ms | every change delivered |")
print("|---|---|---|---|---|---|---|")
for label in ("none", "live", "stalled"):
    runs = load(label)
    rps = statistics.median(r["ok_rps"] for r in runs)
    p99 = statistics.median(r["latency_ms"]["p99"] for r in runs)
    base = base or rps
    subs = [r.get("subscribers") for r in runs]
    if subs[0]:
        lag50 = statistics.median(s["lag_ms"]["p50"] for s in subs if s["lag_ms"])
        lag99 = statistics.median(s["lag_ms"]["p99"] for s in subs if s["lag_ms"])
        ok = all(s["check"]["passed"] for s in subs)
        desc = f'{subs[0]["live"]} live' + (f' + {subs[0]["stalled"]} stalled' if subs[0]["stalled"] else "")
        print(f"| {desc} | {rps:.0f} | {rps / base:.2f} | {p99:.1f} | {lag50:.1f} | {lag99:.1f} | {'yes' if ok else 'NO'} |")
    else:
        print(f"| none | {rps:.0f} | 1.00 | {p99:.1f} | | | |")
PY
