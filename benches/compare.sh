#!/usr/bin/env bash
# Runs wschat and the two comparison peers through the same load scenarios and prints one
# table of medians. Release builds; the server is pinned to one core and the load generator
# to the other (taskset), so "server CPU per operation" stays meaningful.
#
#   benches/compare.sh            # 3 runs of everything (about 5 minutes on 2 cores)
#   RUNS=5 benches/compare.sh     # more runs
#   SERVERS="wschat" benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SERVERS=${SERVERS:-"wschat tungstenite express"}
TOKEN=bench-token
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
OUT=benches/results
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

echo "building release binaries..." >&2
cargo build --quiet --release -p wschat --bin wschat -p wschat-testkit --bin wschat-load
(cd benches/peers/tungstenite && cargo build --quiet --release)
(cd benches/peers/express-ws && npm ci --silent --no-audit --no-fund)
LOAD=target/release/wschat-load

# start_server NAME: starts it pinned on a free port; sets SERVER_PID and SERVER_URL.
start_server() {
  local log="$OUT/$1.log" port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  case "$1" in
    wschat)
      # Bursts need the rate limit off and a queue as deep as the burst (SPEC §6 would
      # otherwise close members with 1013, by design); rejected handshakes are measured
      # as 401s, so brute-force throttling is off.
      taskset -c "$SERVER_CORE" target/release/wschat --listen "127.0.0.1:$port" --token "$TOKEN" \
        --rate-limit 0 --send-queue 16384 --auth-fail-limit 0 --max-connections 20000 \
        >"$log" 2>&1 &
      ;;
    tungstenite)
      taskset -c "$SERVER_CORE" benches/peers/tungstenite/target/release/tungstenite-peer \
        "127.0.0.1:$port" "$TOKEN" >"$log" 2>&1 &
      ;;
    express)
      taskset -c "$SERVER_CORE" node benches/peers/express-ws/server.js "$port" "$TOKEN" >"$log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  SERVER_URL="ws://127.0.0.1:$port/"
  for _ in $(seq 100); do
    grep -q "listening on" "$log" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$1 did not start; see $log" >&2
  return 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# run ROW NAME SCENARIO ARGS...: one fresh server, one load run, one JSON line.
run() {
  local row=$1 name=$2 protocol=raw
  shift 2
  [ "$name" = wschat ] && protocol=wschat
  start_server "$name"
  local line
  if line=$(taskset -c "$LOAD_CORE" "$LOAD" --url "$SERVER_URL" --token "$TOKEN" \
      --protocol "$protocol" --server-pid "$SERVER_PID" --json --deadline 180s "$@"); then
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["row"]=sys.argv[2]; d["server"]=sys.argv[3]; print(json.dumps(d))' \
      "$line" "$row" "$name" >>"$RESULTS"
  else
    echo "{\"row\": \"$row\", \"server\": \"$name\", \"failed\": true}" >>"$RESULTS"
  fi
  stop_server
}

for round in $(seq "$RUNS"); do
  for name in $SERVERS; do
    echo "round $round/$RUNS: $name" >&2
    run handshake "$name" handshake --connections 3000 --concurrency 32
    run reject "$name" reject --connections 3000 --concurrency 32
    run fanout100 "$name" fanout --members 100 --messages 2000
    run fanout1000 "$name" fanout --members 1000 --messages 200
    run burst10k "$name" fanout --members 100 --messages 10000
    run paced "$name" fanout --members 100 --messages 3000 --rate 100000
    run idle "$name" idle --connections 1000 --room-size 100
  done
done

python3 benches/table.py "$RESULTS"
