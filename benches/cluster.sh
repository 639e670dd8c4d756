#!/usr/bin/env bash
# Runs a wschat cluster (two nodes on one redis-server, SPEC §11) and, side by side, the single
# node through the same fan-out scenarios, and prints one table of medians.
#
# The machine has 2 cores: the servers (both nodes and Redis, or the single node) are pinned to
# one core and the load generator to the other (taskset), so "server CPU per delivery" and
# "Redis CPU per message" stay meaningful. The two nodes and Redis share their core.
#
# Last, Redis alone: the posting script (src/cluster/lua/post.lua) driven by redis-benchmark
# with two subscribers, Redis pinned to a core of its own, to show what one Redis can take.
#
# Before each run the script waits (up to QUIET_WAIT seconds) until the machine is idle, since
# anything else running skews every figure on 2 cores.
#
#   benches/cluster.sh              # 3 runs of everything (about 6 minutes on 2 cores)
#   RUNS=5 benches/cluster.sh       # more runs
#   SETUPS=cluster benches/cluster.sh
#   NICE=-20 QUIET_BELOW=0.6 benches/cluster.sh  # (root) on a machine where something else
#       keeps a core busy: measured processes at nice -20, and only other bursts waited out
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SETUPS=${SETUPS-"single cluster"}
TOKEN=bench-token
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
QUIET_WAIT=${QUIET_WAIT:-600}
QUIET_BELOW=${QUIET_BELOW:-0.05}
# Every measured process (servers, Redis, load) runs under this prefix: `nice -n $NICE` if set.
PRIORITY=()
[ -n "${NICE:-}" ] && PRIORITY=(nice -n "$NICE")
OUT=benches/results
mkdir -p "$OUT"
RESULTS="$OUT/cluster.jsonl"
: > "$RESULTS"
WORK=$(mktemp -d)
# Every process this script starts, by PID; killed (only those) on any exit, newest first, so
# the nodes say goodbye to Redis before it goes.
STARTED=()
cleanup() {
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    kill "${STARTED[i]}" 2>/dev/null || true
    wait "${STARTED[i]}" 2>/dev/null || true
  done
  STARTED=()
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building release binaries..." >&2
cargo build --quiet --release -p wschat --bin wschat -p wschat-testkit --bin wschat-load
LOAD=target/release/wschat-load

# shellcheck source=benches/lib.sh
source benches/lib.sh # the script runs from the repository root (cd above)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_redis [CORE]: a fresh redis-server without persistence on a free loopback port, pinned
# with the servers (or to CORE); sets REDIS_PID and REDIS_PORT.
start_redis() {
  local core=${1:-$SERVER_CORE} dir="$WORK/redis-$RANDOM"
  mkdir -p "$dir"
  REDIS_PORT=$(free_port)
  "${PRIORITY[@]}" taskset -c "$core" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --daemonize no --dir "$dir" >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  STARTED+=("$REDIS_PID")
  for _ in $(seq 100); do
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  echo "redis-server did not start; see $OUT/redis.log" >&2
  return 1
}

# start_node LOG [ARGS...]: one wschat node on a free port, pinned; appends its PID to
# NODE_PIDS and its URL (read from its "listening on" line) to NODE_URLS.
start_node() {
  local log=$1 url=""
  shift
  # Emptied here, not by the redirection below: that happens in the child, maybe after the
  # first look for the port, which would then find the previous run's.
  : >"$log"
  # Bursts need the rate limit off and a queue as deep as the burst (SPEC §6 would otherwise
  # close members with 1013, by design), as in compare.sh.
  "${PRIORITY[@]}" taskset -c "$SERVER_CORE" target/release/wschat --listen 127.0.0.1:0 --token "$TOKEN" \
    --rate-limit 0 --send-queue 16384 --auth-fail-limit 0 "$@" >"$log" 2>&1 &
  local pid=$!
  STARTED+=("$pid")
  url=$(listening_url "$log") || true
  if [ -z "$url" ]; then
    echo "wschat did not start; see $log" >&2
    return 1
  fi
  NODE_PIDS+=("$pid")
  NODE_URLS+=("$url")
}

# start_setup single|cluster: sets NODE_PIDS, NODE_URLS and (cluster) REDIS_PID.
start_setup() {
  NODE_PIDS=()
  NODE_URLS=()
  REDIS_PID=""
  case "$1" in
    single)
      start_node "$OUT/single.log"
      ;;
    cluster)
      start_redis
      start_node "$OUT/node0.log" --redis-url "redis://127.0.0.1:$REDIS_PORT/"
      start_node "$OUT/node1.log" --redis-url "redis://127.0.0.1:$REDIS_PORT/"
      ;;
  esac
}

stop_setup() {
  cleanup
  WORK=$(mktemp -d)
}

# run ROW SETUP SCENARIO ARGS...: a fresh setup, one load run, one JSON line (with Redis's own
# accounting of the posting script for a cluster).
run() {
  local row=$1 setup=$2 args=() line commandstats="{}"
  shift 2
  wait_for_quiet
  start_setup "$setup"
  local url pid
  for url in "${NODE_URLS[@]}"; do args+=(--url "$url"); done
  for pid in "${NODE_PIDS[@]}"; do args+=(--server-pid "$pid"); done
  [ -n "$REDIS_PID" ] && args+=(--redis-pid "$REDIS_PID")
  if [ -n "$REDIS_PID" ]; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config resetstat >/dev/null
  fi
  if line=$("${PRIORITY[@]}" taskset -c "$LOAD_CORE" "$LOAD" "${args[@]}" --token "$TOKEN" --json \
      --deadline 300s "$@"); then
    if [ -n "$REDIS_PID" ]; then
      commandstats=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info commandstats | python3 -c '
import json, sys
stats = {}
for line in sys.stdin:
    name, _, fields = line.strip().partition(":")
    if name.startswith("cmdstat_"):
        stats[name[8:]] = {k: float(v) for k, v in (f.split("=") for f in fields.split(","))}
print(json.dumps(stats))')
    fi
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["row"]=sys.argv[2]; d["setup"]=sys.argv[3]; d["commandstats"]=json.loads(sys.argv[4]); d["machine_busy_before"]=float(sys.argv[5]); print(json.dumps(d))' \
      "$line" "$row" "$setup" "$commandstats" "$BUSY_BEFORE" >>"$RESULTS"
  else
    echo "{\"row\": \"$row\", \"setup\": \"$setup\", \"failed\": true}" >>"$RESULTS"
  fi
  stop_setup
}

# redis_alone ROW PIPELINE: post.lua through redis-benchmark (10 clients, PIPELINE requests in
# flight each) on a fresh Redis pinned alone to LOAD_CORE, with two subscribers to the room's
# channel (the two nodes); the benchmark and the subscribers share SERVER_CORE.
redis_alone() {
  local row=$1 pipeline=$2 calls=200000 sha before after csv
  wait_for_quiet
  start_redis "$LOAD_CORE"
  local channel=wschat:room:bench
  for _ in 1 2; do
    "${PRIORITY[@]}" taskset -c "$SERVER_CORE" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" \
      subscribe "$channel" >/dev/null &
    STARTED+=("$!")
  done
  sha=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" script load "$(cat src/cluster/lua/post.lua)")
  for _ in $(seq 50); do
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" pubsub numsub "$channel" | tail -n 1)" = 2 ] && break
    sleep 0.05
  done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config resetstat >/dev/null
  # What a node sends for a batch of one (post.lua's argument order): the history length (50),
  # the history TTL (24 h), then the frame after its id (about 130 bytes for the load's 64-byte
  # texts), the floor, the channel.
  local tail=',"room":"bench","user":"guest-17","text":"#lt:3:417:1234567#xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","ts":1764650000000}'
  before=$(awk '{print $14 + $15}' "/proc/$REDIS_PID/stat")
  csv=$("${PRIORITY[@]}" taskset -c "$SERVER_CORE" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 10 \
    -P "$pipeline" -n "$calls" --csv evalsha "$sha" 2 "$channel:seq" "$channel:history" \
    50 86400000 "$tail" 0 "$channel" | tail -n 1)
  after=$(awk '{print $14 + $15}' "/proc/$REDIS_PID/stat")
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info commandstats | python3 -c '
import json, sys
csv, ticks, calls, pipeline, busy = sys.argv[1:6]
stats = {}
for line in sys.stdin:
    name, _, fields = line.strip().partition(":")
    if name.startswith("cmdstat_"):
        stats[name[8:]] = {k: float(v) for k, v in (f.split("=") for f in fields.split(","))}
print(json.dumps({
    "row": "redis_alone_p" + pipeline, "setup": "redis", "pipeline": int(pipeline),
    # The command is not escaped in the CSV: requests per second is the 7th field from the end.
    "messages_per_sec": round(float(csv.strip().strip("\"").split("\",\"")[-7])),
    # /proc/PID/stat utime + stime are in ticks of 10 ms (CLK_TCK 100).
    "redis_cpu_us_per_message": round(int(ticks) * 10000 / int(calls), 2),
    "machine_busy_before": float(busy), "commandstats": stats}))' \
    "$csv" "$((after - before))" "$calls" "$pipeline" "$BUSY_BEFORE" >>"$RESULTS"
  stop_setup
}

for round in $(seq "$RUNS"); do
  for setup in $SETUPS; do
    echo "round $round/$RUNS: $setup" >&2
    # 100 members (50 per node), 10 senders (5 per node), 1,000 messages each: 1,000,000
    # deliveries, every one checked.
    run burst "$setup" fanout --members 100 --senders 10 --messages 1000
    # 1,000 messages/s into the same room (100,000 deliveries/s), for 5 s.
    run paced "$setup" fanout --members 100 --senders 10 --messages 500 --rate 100000
    # The same rate into a room of 10 (5 per node): the hop between nodes without the cost
    # of fanning out to 100.
    run paced10 "$setup" fanout --members 10 --senders 10 --messages 2000 --rate 10000
    # Posting rate through Redis with few deliveries per message: 10 members, all sending.
    run post "$setup" fanout --members 10 --senders 10 --messages 3000
  done
done
for round in $(seq "$RUNS"); do
  echo "round $round/$RUNS: redis alone" >&2
  redis_alone redis_alone_p1 1
  redis_alone redis_alone_p16 16
done

python3 - "$RESULTS" <<'EOF'
"""One Markdown table of medians from benches/cluster.sh's JSON lines."""
import json
import statistics
import sys

ROWS = [
    ("burst", "lost", "burst 10,000 msgs, 100 members: lost of 1,000,000"),
    ("burst", "out_of_order", "burst: out of order (per sender)"),
    ("burst", "id_order_breaks", "burst: id order breaks"),
    ("burst", "receivers_in_another_order", "burst: receivers in another order"),
    ("burst", "messages_per_sec", "burst: messages posted/s"),
    ("burst", "server_cpu_us_per_delivery", "burst: server CPU µs/delivery (all nodes)"),
    ("burst", "redis_cpu_us_per_message", "burst: Redis CPU µs/message"),
    ("burst", "evalsha_usec_per_call", "burst: Redis cmdstat_evalsha usec_per_call"),
    ("paced", "latency_p50_ms", "paced 1,000 msgs/s: p50 ms (all)"),
    ("paced", "latency_p99_ms", "paced: p99 ms (all)"),
    ("paced", "cross_node_latency_p50_ms", "paced: p50 ms, other node"),
    ("paced", "cross_node_latency_p99_ms", "paced: p99 ms, other node"),
    ("paced", "lost", "paced: lost"),
    ("paced10", "latency_p50_ms", "paced 1,000 msgs/s, 10 members: p50 ms (all)"),
    ("paced10", "latency_p99_ms", "paced, 10 members: p99 ms (all)"),
    ("paced10", "cross_node_latency_p50_ms", "paced, 10 members: p50 ms, other node"),
    ("paced10", "cross_node_latency_p99_ms", "paced, 10 members: p99 ms, other node"),
    ("post", "messages_per_sec", "10 members all sending: messages posted/s"),
    ("post", "server_cpu_us_per_delivery", "10 members: server CPU µs/delivery"),
    ("post", "redis_cpu_us_per_message", "10 members: Redis CPU µs/message"),
    ("post", "evalsha_usec_per_call", "10 members: Redis cmdstat_evalsha usec_per_call"),
    ("post", "lost", "10 members: lost"),
]
SETUPS = ["single", "cluster"]
ALONE = [
    ("redis_alone_p1", "one post in flight per client"),
    ("redis_alone_p16", "16 posts in flight per client"),
]

results = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for r in results:
    evalsha = r.get("commandstats", {}).get("evalsha")
    if evalsha:
        r["evalsha_usec_per_call"] = evalsha["usec_per_call"]


def cell(row, setup, key):
    runs = [r for r in results if r.get("row") == row and r.get("setup") == setup]
    values = [r[key] for r in runs if key in r]
    if not values:
        return "failed" if any(r.get("failed") for r in runs) else "—"
    text = lambda v: ("%.2f" % v).rstrip("0").rstrip(".") if isinstance(v, float) else str(v)
    each = ", ".join(text(v) for v in values)
    failed = "" if len(values) == len(runs) else " (some runs failed)"
    return "%s (%s)%s" % (text(statistics.median(values)), each, failed)


print("| scenario | single node | cluster, 2 nodes |")
print("|---|---|---|")
for row, key, label in ROWS:
    print("| %s | %s |" % (label, " | ".join(cell(row, s, key) for s in SETUPS)))
print("\nRedis alone, post.lua from redis-benchmark (10 clients), two subscribers:\n")
print("| load | posts/s | Redis CPU µs/post | cmdstat_evalsha usec_per_call |")
print("|---|---|---|---|")
for row, label in ALONE:
    print("| %s | %s | %s | %s |" % (label, cell(row, "redis", "messages_per_sec"),
          cell(row, "redis", "redis_cpu_us_per_message"), cell(row, "redis", "evalsha_usec_per_call")))
print("\nmedians (each run); raw results in %s" % sys.argv[1])
EOF
