#!/usr/bin/env bash
# The hot path with authentication off and on, side by side on one database:
# `loadgen`'s default mix at CONNECTIONS (64) for SECONDS_PER_RUN (10) s, REPEATS (3)
# times each, alternating. "on" is AUTH_MODE=required with an API key on every
# request (verified through the process's key cache, as in production).
#
#   bench/auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS="${CONNECTIONS:-64}"; SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"; REPEATS="${REPEATS:-3}"
cargo build --release --quiet
server=target/release/identity-reconciliation
loadgen=target/release/loadgen
work="$(mktemp -d)"
port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
owner_port="$(port_of)"
DATA_DIR="$work" PORT="$owner_port" AUTH_MODE=off RUST_LOG=warn "$server" >"$work/owner.log" 2>&1 &
owner=$!
trap 'kill -TERM "$owner" 2>/dev/null; wait "$owner" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$owner_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
pg_port="$(sed -n 4p "$work/postgres/postmaster.pid")"
export PGPASSWORD="$(cat "$work/postgres.password")"
url="postgres://postgres:$PGPASSWORD@127.0.0.1:$pg_port/postgres"
psql -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres -v rows=100000 -f bench/prefill.sql >/dev/null
key="$(DATABASE_URL="$url" RUST_LOG=warn "$server" keys create --name bench --scopes identify | tail -n 1)"
for round in $(seq 1 "$REPEATS"); do
  for mode in off required; do
    port="$(port_of)"
    DATABASE_URL="$url" PORT="$port" AUTH_MODE="$mode" RUST_LOG=warn "$server" >"$work/$mode.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    credential=(); [ "$mode" = required ] && credential=(--credential "$key")
    echo "== auth $mode, round $round"
    "$loadgen" --url "http://127.0.0.1:$port" --connections "$CONNECTIONS" "${credential[@]}" \
      --duration "$SECONDS_PER_RUN" --keys 10000 --progress 0 | grep -E '^(requests|ok \(200\)|latency)'
    kill -TERM "$pid"; wait "$pid" || true
  done
done
