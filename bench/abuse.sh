#!/usr/bin/env bash
# The reproductions of the hardening issue against the release server, with the
# time, answer size and RSS growth of each: nested lists and aliases on an
# identity of 2 101 contacts, then 1 100 idle and 200 half-sent sockets against a
# server held to 1 024 open files while a real client calls POST /identify.
#
#   bench/abuse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin identity-reconciliation
bin="$(pwd)/target/release/identity-reconciliation"
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# The server gets 1 024 descriptors, as on a default Linux account.
(ulimit -n 1024; DATA_DIR="$work" PORT="$port" RUST_LOG=warn exec "$bin" >"$work/server.log" 2>&1) &
server=$!
cleanup() { kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

pg_port="$(sed -n 4p "$work/postgres/postmaster.pid")"
PGPASSWORD="$(cat "$work/postgres.password")" psql -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres -c "
  INSERT INTO contacts (email, phone_number, link_precedence, created_at)
    VALUES ('first@x.io', '0000000000', 'primary', now() - interval '1 day');
  INSERT INTO contacts (email, phone_number, linked_id, link_precedence)
    SELECT 'member' || g || '@x.io', '0000000000', 1, 'secondary' FROM generate_series(1, 2100) g;"

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
query() {
  local before; before="$(rss_kb)"
  local result
  result="$(curl -s -o "$work/answer" -w '%{http_code} %{time_total}s %{size_download}B' \
    -H 'content-type: application/json' --data-binary "$2" "http://127.0.0.1:$port/graphql")"
  printf '%-22s %s rss %s -> %s kB  %s\n' "$1" "$result" "$before" "$(rss_kb)" "$(head -c 100 "$work/answer")"
}
aliases() { python3 -c "import sys; print(' '.join('a%d: identity(phoneNumber: \\\\\"0000000000\\\\\") {%s}' % (i, sys.argv[2]) for i in range(int(sys.argv[1]))))" "$1" "$2"; }

query nested-unpaged '{"query": "{contact(id: 1){identity{contacts{identity{contacts{id}}}}}}"}'
query nested-full-pages '{"query": "{contact(id: 1){identity{contacts(first: 100){nodes{identity{contacts(first: 100){nodes{id}}}}}}}}"}'
query nested-default-pages '{"query": "{contact(id: 1){identity{contacts{nodes{identity{contacts{nodes{id}}}}}}}}"}'
query aliases-100-contacts "{\"query\": \"{ $(aliases 100 'contacts{id email phoneNumber}') }\"}"
query aliases-30-values "{\"query\": \"{ $(aliases 30 'emails phoneNumbers') }\"}"

ulimit -n 4096
python3 - "$port" <<'PY'
import socket, subprocess, sys, time
port = int(sys.argv[1])
sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(1100)]
for _ in range(200):
    s = socket.create_connection(("127.0.0.1", port))
    s.send(b"GET /healthz HTTP/1.1\r\nHos")
    sockets.append(s)
answer = subprocess.run(
    ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code} %{time_total}s",
     "-H", "content-type: application/json", "--data", '{"phoneNumber": "5550001"}',
     f"http://127.0.0.1:{port}/identify"], capture_output=True, text=True).stdout
print(f"POST /identify with 1300 hostile sockets open: {answer}")
metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True).stdout
print("\n".join(line for line in metrics.splitlines() if line.startswith("http_connections")))
PY
