#!/usr/bin/env bash
# Two server builds side by side on one database, alternating run by run, so both
# see the same machine weather: `loadgen`'s default mix at CONNECTIONS (64) for
# SECONDS_PER_RUN (10) s, REPEATS (3) times each (LOADGEN_ARGS adds loadgen flags,
# e.g. "--mix repeat=100 --api graphql"). Prints each run's throughput and
# latency; BENCHMARKS.md reports the medians.
#
#   bench/compare.sh OLD_BINARY NEW_BINARY
#   (build an older commit with: git worktree add /tmp/old REV && cd /tmp/old &&
#    cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
old="$1"; new="$2"
CONNECTIONS="${CONNECTIONS:-64}"; SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"; REPEATS="${REPEATS:-3}"
cargo build --release --quiet
loadgen=target/release/loadgen
work="$(mktemp -d)"
port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
owner_port="$(port_of)"
DATA_DIR="$work" PORT="$owner_port" RUST_LOG=warn "$new" >"$work/owner.log" 2>&1 &
owner=$!
trap 'kill -TERM "$owner" 2>/dev/null; wait "$owner" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$owner_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
pg_port="$(sed -n 4p "$work/postgres/postmaster.pid")"
export PGPASSWORD="$(cat "$work/postgres.password")"
url="postgres://postgres:$PGPASSWORD@127.0.0.1:$pg_port/postgres"
psql -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres -v rows=100000 -f bench/prefill.sql >/dev/null
for round in $(seq 1 "$REPEATS"); do
  for which in old new; do
    binary="$old"; [ "$which" = new ] && binary="$new"
    port="$(port_of)"
    DATABASE_URL="$url" PORT="$port" RUST_LOG=warn "$binary" >"$work/$which.log" 2>&1 &
    server=$!
    for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "== $which, round $round"
    "$loadgen" --url "http://127.0.0.1:$port" --connections "$CONNECTIONS" \
      --duration "$SECONDS_PER_RUN" --keys 10000 --progress 0 ${LOADGEN_ARGS:-} \
      | grep -E '^(requests|latency)'
    kill -TERM "$server"; wait "$server" || true
  done
done
