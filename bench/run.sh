#!/usr/bin/env bash
# Benchmarks of BENCHMARKS.md, side by side in one sitting on one PostgreSQL:
#   1. the default mix at 1, 16 and 64 connections: loadgen against the release
#      server, and pgbench running the same SQL the server sends (the service
#      floor); then half new customers, half repeats: loadgen against the server,
#      and pgbench running the least SQL a correct identify needs (the minimal
#      floor, bench/pgbench/minimal-*.sql);
#   2. 1, 2 and 4 server processes on one database (REPLICAS), 64 loadgen
#      connections spread over them, the default mix;
#   3. variants at 64 connections, each beside the plain server in the same repeat
#      (VARIANTS): DB_ISOLATION=serializable, and the server behind a PgBouncer
#      in transaction mode (DB_PREPARED_STATEMENTS=off), and unnamed statements
#      without the pooler (DB_PREPARED_STATEMENTS=off, direct);
#   4. p99 at 64 connections as the table grows (prefilled with generate_series).
# Figures are medians of REPEATS runs. Raw results go to $OUT (target/bench), the
# servers' warnings (every non-2xx answer among them) to $OUT/server.log; a run
# with errors is kept and counted in the tables, not a reason to stop.
#
#   bench/run.sh                          # everything (about 25 minutes)
#   SIZES="100000" REPEATS=1 bench/run.sh # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
REPEATS="${REPEATS:-3}"
CONNECTIONS="${CONNECTIONS-1 16 64}"  # CONNECTIONS="" skips the connection sweep
SIZES="${SIZES-100000 1000000 10000000}"  # SIZES="" skips the table-size runs
REPLICAS="${REPLICAS-1 2 4}"  # REPLICAS="" skips the server-process runs
VARIANTS="${VARIANTS-serializable unnamed pgbouncer}"  # VARIANTS="" skips them
POOL_SIZE="${POOL_SIZE:-16}"
KEYS="${KEYS:-10000}"
MIX="${MIX:-new=35,repeat=45,extend=15,bridge=5}"  # loadgen's default
OUT="$(pwd)/${OUT:-target/bench}"

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
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$OUT/pgdata" -l "$OUT/postgres.log" -w start -o \
  "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=200 \
   -c shared_buffers=1GB -c synchronous_commit=off -c max_wal_size=4GB -c checkpoint_timeout=30min" >/dev/null
stop_postgres() { "${run_as[@]}" "$pg_bin/pg_ctl" -D "$OUT/pgdata" -m fast -w stop >/dev/null 2>&1 || true; }
trap 'kill $(jobs -p) 2>/dev/null || true; stop_postgres' EXIT

admin_url="postgres://postgres@127.0.0.1:$port/postgres"
psql_admin() { "$pg_bin/psql" -q -X -v ON_ERROR_STOP=1 "$admin_url" "$@"; }

fresh_database() { # name rows
  psql_admin -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"
  local url="postgres://postgres@127.0.0.1:$port/$1"
  DATABASE_URL="$url" RUST_LOG=error "$server_bin" migrate
  "$pg_bin/psql" -q -X -v ON_ERROR_STOP=1 "$url" -v rows="$2" -f bench/prefill.sql
  "$pg_bin/psql" -q -X "$url" -c "VACUUM ANALYZE contacts"
  echo "$url"
}

server_pid=""
start_server() { # url [VAR=value...]
  local url="$1"; shift
  env ${SERVER_WORKERS:+TOKIO_WORKER_THREADS=$SERVER_WORKERS} "$@" \
    DATABASE_URL="$url" PORT=3900 DB_POOL_SIZE="$POOL_SIZE" RUST_LOG=warn "$server_bin" 2>>"$OUT/server.log" &
  server_pid=$!
  for _ in $(seq 1 200); do curl -fs http://127.0.0.1:3900/readyz >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
stop_server() { # prints peak RSS in KiB
  local peak
  peak="$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")"
  kill -TERM "$server_pid"; wait "$server_pid" || true
  echo "$peak"
}

cpu_ticks() { # total busy ticks of the machine, and of the server process
  awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat
  awk '{print $14+$15}' "/proc/$server_pid/stat"
}

loadgen_run() { # connections label [mix]
  local before after
  before="$(cpu_ticks | tr '\n' ' ')"
  "$loadgen_bin" --url http://127.0.0.1:3900 --connections "$1" --duration "$SECONDS_PER_RUN" \
    --keys "$KEYS" --mix "${3:-$MIX}" --progress 0 --max-error-rate 0 --json "$OUT/runs/$2.json" >/dev/null || true
  after="$(cpu_ticks | tr '\n' ' ')"
  echo "$before $after $(getconf CLK_TCK)" >"$OUT/runs/$2.cpu"
}

pgbench_run() { # url clients label
  local threads=$(( $2 < 2 ? 1 : 2 ))
  "$pg_bin/pgbench" -n -M prepared -c "$2" -j "$threads" -T "$SECONDS_PER_RUN" -D keys="$KEYS" \
    -f bench/pgbench/new.sql@35 -f bench/pgbench/repeat.sql@45 \
    -f bench/pgbench/extend.sql@15 -f bench/pgbench/bridge.sql@5 "$1" >"$OUT/runs/$3.txt" 2>&1
}

# The minimal floor (issue 14): the least SQL a correct identify needs, half new
# customers (a locking read and an insert), half repeats (a locking read).
minimal_run() { # url clients label
  local threads=$(( $2 < 2 ? 1 : 2 ))
  "$pg_bin/pgbench" -n -M prepared -c "$2" -j "$threads" -T "$SECONDS_PER_RUN" -D keys="$KEYS" \
    -f bench/pgbench/minimal-new.sql@50 -f bench/pgbench/minimal-repeat.sql@50 \
    "$1" >"$OUT/runs/$3.txt" 2>&1
}

echo "== connection sweep (prefill 100000 contacts, $REPEATS x ${SECONDS_PER_RUN}s each)"
url="$(fresh_database bench_sweep 100000 | tail -1)"
start_server "$url"
for repeat in $(seq 1 "$REPEATS"); do
  for c in $CONNECTIONS; do
    pgbench_run "$url" "$c" "pgbench-c$c-r$repeat"
    loadgen_run "$c" "server-c$c-r$repeat"
    minimal_run "$url" "$c" "minimal-c$c-r$repeat"
    loadgen_run "$c" "half-c$c-r$repeat" "new=50,repeat=50"
    echo "   repeat $repeat, $c connections done"
  done
done
echo "$(stop_server)" >"$OUT/runs/server-peak-rss-kib.txt"

if [ -n "$REPLICAS" ]; then
  echo "== server processes on one database (64 connections, pool of $POOL_SIZE each)"
  for repeat in $(seq 1 "$REPEATS"); do
    for n in $REPLICAS; do
      pids=(); urls=()
      for k in $(seq 1 "$n"); do
        env ${SERVER_WORKERS:+TOKIO_WORKER_THREADS=$SERVER_WORKERS} DATABASE_URL="$url" \
          PORT=$((3910 + k)) DB_POOL_SIZE="$POOL_SIZE" RUST_LOG=warn "$server_bin" 2>>"$OUT/server.log" &
        pids+=($!); urls+=(--url "http://127.0.0.1:$((3910 + k))")
      done
      for k in $(seq 1 "$n"); do
        for _ in $(seq 1 200); do
          curl -fs "http://127.0.0.1:$((3910 + k))/readyz" >/dev/null 2>&1 && break; sleep 0.1
        done
      done
      "$loadgen_bin" "${urls[@]}" --connections 64 --duration "$SECONDS_PER_RUN" --keys "$KEYS" \
        --mix "$MIX" --progress 0 --max-error-rate 0 --json "$OUT/runs/replicas-$n-r$repeat.json" >/dev/null || true
      kill -TERM "${pids[@]}"; wait "${pids[@]}" || true
      echo "   repeat $repeat, $n server process(es) done"
    done
  done
fi

if [ -n "$VARIANTS" ]; then
  echo "== variants (64 connections, the default mix and half new, half repeat)"
  bouncer_port=""
  if [[ " $VARIANTS " == *" pgbouncer "* ]]; then
    bouncer_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    cat >"$OUT/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$port user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 500
ignore_startup_parameters = extra_float_digits,options
INI
    chmod 644 "$OUT/pgbouncer.ini"
    "${run_as[@]}" "$(command -v pgbouncer || echo /usr/sbin/pgbouncer)" "$OUT/pgbouncer.ini" >"$OUT/pgbouncer.log" 2>&1 &
    bouncer_pid=$!
    sleep 1
  fi
  for repeat in $(seq 1 "$REPEATS"); do
    for variant in plain $VARIANTS; do
      case "$variant" in
        plain) start_server "$url" ;;
        serializable) start_server "$url" DB_ISOLATION=serializable ;;
        pgbouncer) start_server "postgres://postgres@127.0.0.1:$bouncer_port/bench_sweep" DB_PREPARED_STATEMENTS=off ;;
        unnamed) start_server "$url" DB_PREPARED_STATEMENTS=off ;;
      esac
      loadgen_run 64 "variant-$variant-mix-r$repeat"
      loadgen_run 64 "variant-$variant-half-r$repeat" "new=50,repeat=50"
      stop_server >/dev/null
    done
    echo "   repeat $repeat done"
  done
  [ -n "$bouncer_port" ] && kill "$bouncer_pid" 2>/dev/null || true
fi

echo "== table size (64 connections)"
for size in $SIZES; do
  url="$(fresh_database "bench_$size" "$size" | tail -1)"
  start_server "$url"
  for repeat in $(seq 1 "$REPEATS"); do
    loadgen_run 64 "size-$size-r$repeat"
  done
  stop_server >/dev/null
  psql_admin -c "DROP DATABASE bench_$size"
  echo "   $size contacts done"
done

python3 bench/summarize.py "$OUT" | tee "$OUT/results.md"
