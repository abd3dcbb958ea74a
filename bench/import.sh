#!/usr/bin/env bash
# What `identity-reconciliation import` sustains, and the memory it holds, with
# orders from bench/orders.py (60 % new customers, 30 % repeats, 10 % links and
# merges; orderedAt 1 ms apart from 2025-06-01):
#   a. ORDERS (1 000 000) orders into an empty database: the private PostgreSQL
#      under DATA_DIR (migrated beforehand, so the timing leaves initdb out);
#      orders/s, peak RSS, then `check` and its exit code;
#   b. ORDERS orders into a database prefilled with PREFILL (10 000 000) contacts
#      by bench/prefill.sql, through DATABASE_URL (a `serve` process owns the
#      private PostgreSQL); orders/s, peak RSS, `check` (CHECK_BIG=0 skips it);
#   c. RSS_ORDERS (10 000 000) orders from one file into an empty database:
#      peak RSS and orders/s, `check` (CHECK_BIG=0 skips it).
# ORDERS=0 skips a and b, PREFILL=0 skips b, RSS_ORDERS=0 skips c. Prints a line
# a step and a markdown table at the end; raw output (the import's JSON and
# log, /usr/bin/time -v, check, server and prefill logs) goes to OUT
# (target/bench/import), emptied first.
#
# Peak RSS is the import process's own VmHWM, read from /proc every 0.2 s. The
# "time -v" column is GNU time's "Maximum resident set size": with a private
# PostgreSQL (steps a and c) the server is the import's child, so that figure is
# the largest of the import and PostgreSQL's processes, not the import alone.
#
# Scratch data (orders files, PostgreSQL clusters; b needs several GB) lives in
# a mktemp folder under TMPDIR (/tmp), removed at the end.
#
#   bench/import.sh                                  # everything (tens of minutes)
#   ORDERS=100000 PREFILL=0 RSS_ORDERS=0 bench/import.sh   # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS="${ORDERS:-1000000}"; PREFILL="${PREFILL:-10000000}"; RSS_ORDERS="${RSS_ORDERS:-10000000}"
SEED="${SEED:-1}"; CHECK_BIG="${CHECK_BIG:-1}"
OUT="${OUT:-target/bench/import}"
# Every step chooses its own database: an inherited one must not receive orders.
unset DATABASE_URL

cargo build --release --quiet
bin="$(pwd)/target/release/identity-reconciliation"
rm -rf "$OUT" && mkdir -p "$OUT"
work="$(mktemp -d)"
# The private PostgreSQL runs as another user (PostgreSQL refuses root): it must
# reach its data folder.
chmod 755 "$work"
timer=""
if command -v /usr/bin/time >/dev/null 2>&1; then
  timer=/usr/bin/time
else
  echo "(no /usr/bin/time, apt-get install time: peak RSS from /proc only)"
fi

server_pid=""; run_pid=""; bin_pid=""
cleanup() {
  # An import still running (interrupted) and the server of step b.
  if [[ -n $bin_pid ]]; then kill -TERM "$bin_pid" 2>/dev/null || true; fi
  if [[ -n $run_pid ]]; then wait "$run_pid" 2>/dev/null || true; fi
  if [[ -n $server_pid ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the last lines of a log and stops the script.
fail() {
  echo "FAILED: $1; the end of $2:" >&2
  tail -n 20 "$2" >&2 || true
  exit 1
}

# measure STEP FILE [VAR=VALUE...]: runs `import FILE --json` with the variables
# set, under /usr/bin/time -v when there is one, polling the import's VmHWM.
# Sets rate (orders/s), rss_mb (VmHWM), time_mb (time -v), rss_line and summary.
measure() {
  local step=$1 file=$2; shift 2
  local json="$OUT/$step.json" log="$OUT/$step.log" hwm=0 key value _
  if [[ -n $timer ]]; then
    env "$@" "$timer" -v -o "$OUT/$step.time" "$bin" import "$file" --json >"$json" 2>"$log" &
    run_pid=$!
    bin_pid=""
    while [[ -z $bin_pid ]] && kill -0 "$run_pid" 2>/dev/null; do
      # GNU time's one child: the import.
      bin_pid="$(cat "/proc/$run_pid/task/$run_pid/children" 2>/dev/null \
        || pgrep -P "$run_pid" 2>/dev/null || true)"
      bin_pid="${bin_pid%% *}"
      [[ -n $bin_pid ]] || sleep 0.01
    done
  else
    env "$@" "$bin" import "$file" --json >"$json" 2>"$log" &
    run_pid=$!
    bin_pid=$run_pid
  fi
  while kill -0 "$run_pid" 2>/dev/null; do
    if [[ -n $bin_pid ]]; then
      # VmHWM only grows; a process that has just exited has none left to read.
      { while read -r key value _; do
          if [[ $key == VmHWM: ]]; then hwm=$value; fi
        done <"/proc/$bin_pid/status"; } 2>/dev/null || true
    fi
    sleep 0.2
  done
  local rc=0
  wait "$run_pid" || rc=$?
  run_pid=""; bin_pid=""
  [[ $rc == 0 ]] || fail "import exited with $rc" "$log"
  rss_mb=$(( hwm / 1024 ))
  time_mb="n/a"
  if [[ -n $timer ]]; then
    local kb
    kb="$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$OUT/$step.time")"
    [[ -z $kb ]] || time_mb=$(( kb / 1024 ))
  fi
  rss_line="peak RSS $rss_mb MB (time -v: n/a)"
  [[ $time_mb == n/a ]] || rss_line="peak RSS $rss_mb MB (time -v: $time_mb MB)"
  # The summary is the last JSON object on standard output.
  local parsed
  parsed="$(python3 - "$json" <<'PY'
import json, sys
summary = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        try:
            summary = json.loads(line)
        except ValueError:
            pass
if summary is None:
    sys.exit("no JSON summary on standard output")
s = summary
print(f"{s['ordersPerSecond']:.0f}")
print(f"{s['read']} read, {s['applied']} applied, {s['rejected']} rejected, "
      f"{s['identitiesCreated']} identities created, {s['merges']} merges, "
      f"{s['held']} held, {s['elapsedSeconds']:.1f} s")
PY
)" || fail "no JSON summary from the import" "$json"
  rate="${parsed%%$'\n'*}"
  summary="${parsed#*$'\n'}"
}

# check STEP [VAR=VALUE...]: runs `check`; sets check_rc.
check() {
  local step=$1; shift
  check_rc=0
  env "$@" RUST_LOG=warn "$bin" check >"$OUT/$step-check.log" 2>&1 || check_rc=$?
}

# generate FILE PREFIX COUNT: bench/orders.py, timed.
generate() {
  local started=$SECONDS
  python3 bench/orders.py --orders "$3" --seed "$SEED" --prefix "$2" >"$1"
  echo "   generated $3 orders in $(( SECONDS - started )) s ($(( $(stat -c %s "$1") / 1048576 )) MB)"
}

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 | $5 | $6 |"); }

if (( ORDERS > 0 )); then
  echo "a. $ORDERS orders into an empty database (private PostgreSQL under DATA_DIR)"
  DATA_DIR="$work/empty" RUST_LOG=warn "$bin" migrate >"$OUT/a-migrate.log" 2>&1 \
    || fail "migrate exited with $?" "$OUT/a-migrate.log"
  generate "$work/orders-a.ndjson" a "$ORDERS"
  measure a "$work/orders-a.ndjson" DATA_DIR="$work/empty"
  check a DATA_DIR="$work/empty"
  echo "   $rate orders/s; $rss_line; check exit code $check_rc"
  echo "   $summary"
  row "a. empty database" "$ORDERS" "$rate" "$rss_mb" "$time_mb" "$check_rc"
  rm -rf "$work/empty" "$work/orders-a.ndjson"
fi

if (( ORDERS > 0 && PREFILL > 0 )); then
  echo "b. $ORDERS orders into $PREFILL prefilled contacts (DATABASE_URL)"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  DATA_DIR="$work/big" PORT="$port" RUST_LOG=warn "$bin" serve >"$OUT/b-server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    if curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
    kill -0 "$server_pid" 2>/dev/null || fail "the server exited" "$OUT/b-server.log"
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 \
    || fail "the server was not ready within 60 s" "$OUT/b-server.log"
  pg_port="$(sed -n 4p "$work/big/postgres/postmaster.pid")"
  PGPASSWORD="$(cat "$work/big/postgres.password")"
  export PGPASSWORD
  url="postgres://postgres:$PGPASSWORD@127.0.0.1:$pg_port/postgres"
  psql_=(psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres postgres)
  echo "   prefilling $PREFILL contacts (bench/prefill.sql; one transaction, minutes for 10 M)"
  started=$SECONDS
  "${psql_[@]}" -v ON_ERROR_STOP=1 -v rows="$PREFILL" -f bench/prefill.sql \
    >"$OUT/b-prefill.log" 2>&1 &
  prefill_pid=$!
  ticks=0
  while kill -0 "$prefill_pid" 2>/dev/null; do
    sleep 1
    ticks=$(( ticks + 1 ))
    if (( ticks % 15 == 0 )); then
      # Uncommitted rows are not countable, but the tables' size grows with them.
      sizes="$("${psql_[@]}" -Atc "SELECT pg_size_pretty(pg_total_relation_size('contacts'))
        || ' contacts, ' || pg_size_pretty(pg_total_relation_size('identity_events'))
        || ' identity_events'" 2>/dev/null || echo "size unknown")"
      echo "   ... $(( SECONDS - started )) s: $sizes"
    fi
  done
  wait "$prefill_pid" || fail "prefill exited with $?" "$OUT/b-prefill.log"
  echo "   prefilled in $(( SECONDS - started )) s: $("${psql_[@]}" -Atc \
    "SELECT count(*) || ' contacts, the newest created ' || max(created_at) FROM contacts")"
  generate "$work/orders-b.ndjson" b "$ORDERS"
  measure b "$work/orders-b.ndjson" DATABASE_URL="$url"
  check_rc="not run"
  if [[ $CHECK_BIG != 0 ]]; then check b DATABASE_URL="$url"; fi
  echo "   $rate orders/s; $rss_line; check exit code $check_rc"
  echo "   $summary"
  row "b. $PREFILL contacts prefilled" "$ORDERS" "$rate" "$rss_mb" "$time_mb" "$check_rc"
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  rm -rf "$work/big" "$work/orders-b.ndjson"
fi

if (( RSS_ORDERS > 0 )); then
  echo "c. $RSS_ORDERS orders from one file into an empty database (peak RSS)"
  DATA_DIR="$work/rss" RUST_LOG=warn "$bin" migrate >"$OUT/c-migrate.log" 2>&1 \
    || fail "migrate exited with $?" "$OUT/c-migrate.log"
  generate "$work/orders-c.ndjson" c "$RSS_ORDERS"
  measure c "$work/orders-c.ndjson" DATA_DIR="$work/rss"
  check_rc="not run"
  if [[ $CHECK_BIG != 0 ]]; then check c DATA_DIR="$work/rss"; fi
  echo "   $rate orders/s; $rss_line; check exit code $check_rc"
  echo "   $summary"
  row "c. one $RSS_ORDERS-line file" "$RSS_ORDERS" "$rate" "$rss_mb" "$time_mb" "$check_rc"
  rm -rf "$work/rss" "$work/orders-c.ndjson"
fi

{
  echo
  echo "| step | orders | orders/s | peak RSS MB | time -v max RSS MB | check exit code |"
  echo "|---|---|---|---|---|---|"
  if (( ${#rows[@]} > 0 )); then printf '%s\n' "${rows[@]}"; fi
} | tee "$OUT/summary.md"
