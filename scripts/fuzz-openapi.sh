#!/usr/bin/env bash
# Fuzzes the REST API with schemathesis against its own OpenAPI document: starts
# the server on a free loopback port over a throwaway private PostgreSQL, runs the
# checks, stops the server. Exit status is schemathesis's.
#
#   scripts/fuzz-openapi.sh [max-examples]     (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."
max_examples="${1:-500}"

command -v st >/dev/null 2>&1 || python3 -m pip install --quiet schemathesis
cargo build --locked --quiet
binary=target/debug/identity-reconciliation

data_dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Authentication required, as in a real deployment: the fuzzing authenticates, and a
# second pass checks that every secured operation refuses a caller without a key.
DATA_DIR="$data_dir" PORT="$port" AUTH_MODE=required RUST_LOG=warn "$binary" >"$data_dir/server.log" 2>&1 &
server=$!
cleanup() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data_dir"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$data_dir/server.log"; exit 1; }

# `keys create` finds the running private PostgreSQL through the data folder.
key="$(DATA_DIR="$data_dir" RUST_LOG=warn "$binary" keys create --name fuzzing --scopes identify,read | tail -n 1)"

# Every answer must be a documented status with a conforming body and headers, and
# no input may cause a 5xx, and leaving out the credential must be refused
# (ignored_auth). (positive_data_acceptance is left out: the document
# cannot express every rule of docs/SPEC.md §3, such as "at least one of the two fields".)
st run "http://127.0.0.1:$port/openapi.json" \
  --checks all \
  --exclude-checks positive_data_acceptance,object_level_authorization \
  --max-examples "$max_examples" \
  --workers 2 \
  --suppress-health-check all \
  --header "Authorization: Bearer $key" \
  --seed 20261124

# Without credentials, every operation the document marks as secured answers 401.
python3 - "http://127.0.0.1:$port" <<'PY'
import json, sys, urllib.error, urllib.request
base = sys.argv[1]
document = json.load(urllib.request.urlopen(base + "/openapi.json"))
checked = 0
for path, operations in document["paths"].items():
    for method, operation in operations.items():
        if not operation.get("security"):
            continue
        request = urllib.request.Request(base + path, method=method.upper(), data=b"{}",
                                         headers={"Content-Type": "application/json"})
        try:
            status = urllib.request.urlopen(request).status
        except urllib.error.HTTPError as error:
            status = error.code
        if status != 401:
            sys.exit(f"{method.upper()} {path} without credentials answered {status}, not 401")
        checked += 1
if checked == 0:
    sys.exit("no secured operation in the OpenAPI document")
print(f"{checked} secured operation(s) refuse callers without credentials")
PY
