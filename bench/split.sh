#!/usr/bin/env bash
# What a split costs, and what it costs everyone else: one identity of SIZE (10 000)
# customers fused through one junk phone, in a database of 100 000 other contacts;
# loadgen's default mix runs at CONNECTIONS (16) for SECONDS_PER_RUN (20) s on other
# customers, twice: once alone, once with `blockValue` on the junk phone half way.
# Prints the split's wall time and both runs' latencies; then `check --deep`.
#
#   bench/split.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${SIZE:-10000}"; CONNECTIONS="${CONNECTIONS:-16}"; SECONDS_PER_RUN="${SECONDS_PER_RUN:-20}"
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
# The fused identity, as identify makes it: the first customer's order creates the
# primary, every later one links through the junk phone (rows and ledger rows).
psql -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres -v size="$SIZE" >/dev/null <<'SQL'
BEGIN;
WITH inserted AS (
  INSERT INTO contacts (email, phone_number, linked_id, link_precedence, created_at, updated_at)
  SELECT 'fused' || i || '@split.test', '5550100', NULL, 'primary', now(), now()
  FROM generate_series(1, 1) AS i RETURNING id, created_at)
INSERT INTO identity_events (kind, contact_id, primary_id, email, phone_number, created_at)
SELECT 'created', id, id, 'fused1@split.test', '5550100', created_at FROM inserted;
WITH primary_contact AS (SELECT id FROM contacts WHERE email = 'fused1@split.test'),
inserted AS (
  INSERT INTO contacts (email, phone_number, linked_id, link_precedence, created_at, updated_at)
  SELECT 'fused' || i || '@split.test', '5550100', (SELECT id FROM primary_contact), 'secondary',
         now() + i * interval '1 millisecond', now() + i * interval '1 millisecond'
  FROM generate_series(2, :size) AS i RETURNING id, linked_id, created_at)
INSERT INTO identity_events (kind, contact_id, primary_id, phone_number, created_at)
SELECT 'linked', id, linked_id, '5550100', created_at FROM inserted;
COMMIT;
ANALYZE;
SQL
run() {
  "$loadgen" --url "http://127.0.0.1:$port" --connections "$CONNECTIONS" \
    --duration "$SECONDS_PER_RUN" --keys 10000 --progress 0 | grep -E '^(requests|latency)'
}
echo "== alone"
run
echo "== with the split half way"
run &
load=$!
sleep "$((SECONDS_PER_RUN / 2))"
curl -s -o "$work/split.json" -w 'blockValue of a %{size_download}-byte answer took %{time_total} s\n' \
  -H 'Content-Type: application/json' "http://127.0.0.1:$port/graphql" \
  -d '{"query":"mutation { blockValue(input: {phoneNumber: \"5550100\", reason: \"bench\"}) { identities contactsChanged contactsDeleted } }"}'
cat "$work/split.json"; echo
wait "$load"
DATABASE_URL="$url" RUST_LOG=error "$server" check --deep | tail -n 3
