#!/usr/bin/env bash
# A/B of the default single node (shared secret `--token`, no per-user source) between two
# commits: handshake server CPU, fan-out (burst and paced into 100 members) and idle memory
# per connection, alternating the two servers round by round, and a table of medians and
# per-round ratios (new / old).
#
#   benches/ab.sh OLD NEW                  # 7 rounds; a few minutes after the two builds
#   RUNS=9 IDLE_RUNS=2 benches/ab.sh 6be4a12 HEAD
#   BUILD=0 KEEP=1 benches/ab.sh OLD NEW   # reuse worktrees and builds kept by an earlier run
#   ROWS="burst paced" RUNS=11 RESULTS=benches/results/ab-fanout.jsonl benches/ab.sh OLD NEW
#
# Each commit is checked out in a worktree of its own ($AB_DIR/ab-old, $AB_DIR/ab-new; an
# existing one at the right commit is reused) and built in release there with its own target
# dir, so the working tree is not touched. The worktrees this script creates are removed at the
# end unless KEEP=1. ONE load tool, the new commit's `wschat-load`, drives both servers (its
# default `--carrier query` sends the token as the old tool did).
#
# Pinned as compare.sh and identity.sh: every server on SERVER_CORE, the load on LOAD_CORE.
# Every wschat runs with `--token bench-token` and compare.sh's flags (`--rate-limit 0
# --send-queue 16384 --auth-fail-limit 0 --max-connections 20000`); nothing else.
#
# A round (RUNS of them; the first server of a round alternates, old first in odd rounds):
#   handshake  `handshake --connections CONNECTIONS --concurrency CONCURRENCY` against the two
#              servers kept running for the whole script (started at the beginning, WARMUP
#              handshakes of warm-up each), as identity.sh does: server CPU µs per handshake.
#   burst      a fresh server each: cluster.sh's single-node burst, 10 senders x 1,000 messages
#              into 100 members (1,000,000 deliveries): server CPU µs per delivery, posted/s,
#              p99, lost and out of order.
#   paced      a fresh server each: cluster.sh's paced row, 1,000 messages/s into 100 members
#              for PACED_MESSAGES/100 s (5 s by default): p50 / p99, CPU µs per delivery.
#   idle       in the first IDLE_RUNS rounds, a fresh server each: IDLE_CONNECTIONS idle
#              connections in rooms of 100: server RSS KiB per connection.
# ROWS picks the rows (all four by default), e.g. ROWS="burst paced" RUNS=11 benches/ab.sh ...
# Server CPU is the load tool's `--server-pid` accounting (/proc/PID/task/*/schedstat, every
# server thread, over the measured operations only). Before each round the script waits (up to
# QUIET_WAIT seconds) until the machine is idle. Every process it starts it stops, by PID, and
# every load run is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
  echo "usage: benches/ab.sh OLD_COMMIT NEW_COMMIT" >&2
  exit 2
fi
OLD=$(git rev-parse --verify "$1^{commit}")
NEW=$(git rev-parse --verify "$2^{commit}")
RUNS=${RUNS:-7}
IDLE_RUNS=${IDLE_RUNS:-2}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
CONNECTIONS=${CONNECTIONS:-3000}
CONCURRENCY=${CONCURRENCY:-32}
WARMUP=${WARMUP:-500}
ROWS=${ROWS:-"handshake burst paced idle"}
PACED_MESSAGES=${PACED_MESSAGES:-500}
AB_DIR=${AB_DIR:-/tmp}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
QUIET_WAIT=${QUIET_WAIT:-300}
QUIET_BELOW=${QUIET_BELOW:-0.05}
TOKEN=bench-token
OUT=$PWD/benches/results
mkdir -p "$OUT"
RESULTS=${RESULTS:-$OUT/ab.jsonl}
: >"$RESULTS"

declare -A DIR=([old]="$AB_DIR/ab-old" [new]="$AB_DIR/ab-new")
declare -A COMMIT=([old]="$OLD" [new]="$NEW")
CREATED=()
STARTED=()
# The long-running handshake servers, by version.
declare -A HS_PID HS_URL
cleanup() {
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    kill "${STARTED[i]}" 2>/dev/null || true
    wait "${STARTED[i]}" 2>/dev/null || true
  done
  STARTED=()
  if [ "${KEEP:-0}" != 1 ]; then
    for i in "${CREATED[@]}"; do
      git worktree remove --force "$i" || true
    done
  fi
}
trap cleanup EXIT

# The two worktrees, created or reused, and built.
for v in old new; do
  d=${DIR[$v]}
  if [ -e "$d" ]; then
    if [ "$(git -C "$d" rev-parse HEAD 2>/dev/null)" != "${COMMIT[$v]}" ]; then
      echo "$d exists and is not at ${COMMIT[$v]}; remove it or set AB_DIR" >&2
      exit 1
    fi
  else
    git worktree add --detach "$d" "${COMMIT[$v]}" >/dev/null
    CREATED+=("$d")
  fi
done
if [ "${BUILD:-1}" != 0 ]; then
  echo "building ${NEW:0:7} (wschat and wschat-load) in ${DIR[new]}..." >&2
  (cd "${DIR[new]}" && CARGO_TARGET_DIR="${DIR[new]}/target" cargo build --quiet --release \
    -p wschat --bin wschat -p wschat-testkit --bin wschat-load)
  echo "building ${OLD:0:7} (wschat) in ${DIR[old]}..." >&2
  (cd "${DIR[old]}" && CARGO_TARGET_DIR="${DIR[old]}/target" cargo build --quiet --release \
    -p wschat --bin wschat)
fi
declare -A WSCHAT=([old]="${DIR[old]}/target/release/wschat" [new]="${DIR[new]}/target/release/wschat")
LOAD="${DIR[new]}/target/release/wschat-load"

# shellcheck source=benches/lib.sh
source benches/lib.sh # the scripts run from the repository root (cd above)

# start_server VERSION LOG: a pinned wschat of that version on a free port; sets SERVER_PID
# and SERVER_URL (read from its "listening on" line).
start_server() {
  local url=""
  : >"$2"
  taskset -c "$SERVER_CORE" "${WSCHAT[$1]}" --listen 127.0.0.1:0 --token "$TOKEN" \
    --rate-limit 0 --send-queue 16384 --auth-fail-limit 0 --max-connections 20000 >"$2" 2>&1 &
  SERVER_PID=$!
  STARTED+=("$SERVER_PID")
  url=$(listening_url "$2") || true
  if [ -z "$url" ]; then
    echo "wschat ($1) did not start; see $2" >&2
    return 1
  fi
  SERVER_URL=$url
}

stop_server() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=() pid
  for pid in "${STARTED[@]}"; do [ "$pid" != "$1" ] && kept+=("$pid"); done
  STARTED=("${kept[@]}")
}

# load URL PID ARGS...: one bounded load run; its JSON line on stdout.
load() {
  local url=$1 pid=$2
  shift 2
  timeout 200 taskset -c "$LOAD_CORE" "$LOAD" --url "$url" --token "$TOKEN" --server-pid "$pid" \
    --json --deadline 150s "$@"
}

# record ROUND VERSION ROW LINE: appends LINE with its labels to the results.
record() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[4]); d.update(round=int(sys.argv[1]), version=sys.argv[2], commit=sys.argv[3], row=sys.argv[5], machine_busy_before=float(sys.argv[6])); print(json.dumps(d))' \
    "$1" "$2" "${COMMIT[$2]:0:7}" "$4" "$3" "$BUSY_BEFORE" >>"$RESULTS"
}
failed() {
  echo "{\"round\": $1, \"version\": \"$2\", \"row\": \"$3\", \"failed\": true}" >>"$RESULTS"
}

# handshake ROUND VERSION: on the long-running server of that version.
handshake() {
  local line
  if line=$(load "${HS_URL[$2]}" "${HS_PID[$2]}" handshake --connections "$CONNECTIONS" \
      --concurrency "$CONCURRENCY"); then
    record "$1" "$2" handshake "$line"
  else
    failed "$1" "$2" handshake
  fi
}

# fresh ROUND VERSION ROW ARGS...: one fresh server of that version, one load run.
fresh() {
  local round=$1 v=$2 row=$3 line
  shift 3
  start_server "$v" "$OUT/ab-$v.log"
  if line=$(load "$SERVER_URL" "$SERVER_PID" "$@"); then
    record "$round" "$v" "$row" "$line"
  else
    failed "$round" "$v" "$row"
  fi
  stop_server "$SERVER_PID"
}

# wanted ROW: whether ROWS asks for it.
wanted() {
  [[ " $ROWS " == *" $1 "* ]]
}

for v in old new; do
  wanted handshake || break
  start_server "$v" "$OUT/ab-handshake-$v.log"
  HS_PID[$v]=$SERVER_PID
  HS_URL[$v]=$SERVER_URL
  load "$SERVER_URL" "$SERVER_PID" handshake --connections "$WARMUP" \
    --concurrency "$CONCURRENCY" >/dev/null || echo "warm-up of $v failed" >&2
done

for round in $(seq "$RUNS"); do
  if [ $((round % 2)) = 1 ]; then order=(old new); else order=(new old); fi
  wait_for_quiet
  echo "round $round/$RUNS: ${order[*]} (busy before: $BUSY_BEFORE)" >&2
  if wanted handshake; then
    for v in "${order[@]}"; do handshake "$round" "$v"; done
  fi
  if wanted burst; then
    for v in "${order[@]}"; do
      fresh "$round" "$v" burst fanout --members 100 --senders 10 --messages 1000
    done
  fi
  if wanted paced; then
    for v in "${order[@]}"; do
      fresh "$round" "$v" paced fanout --members 100 --senders 10 --messages "$PACED_MESSAGES" \
        --rate 100000
    done
  fi
  if wanted idle && [ "$round" -le "$IDLE_RUNS" ]; then
    for v in "${order[@]}"; do
      fresh "$round" "$v" idle idle --connections "$IDLE_CONNECTIONS" --room-size 100
    done
  fi
done
for v in "${!HS_PID[@]}"; do stop_server "${HS_PID[$v]}"; done

python3 - "$RESULTS" "${OLD:0:7}" "${NEW:0:7}" <<'PY'
import json, statistics, sys

path, old, new = sys.argv[1:4]
rows = [json.loads(line) for line in open(path) if line.strip()]
METRICS = [
    ("handshake", "server_cpu_us_per_op", "handshake: server CPU µs/handshake", 1),
    ("handshake", "per_sec", "handshake: handshakes/s (load-bound)", 0),
    ("burst", "server_cpu_us_per_delivery", "burst into 100 members: server CPU µs/delivery", 2),
    ("burst", "messages_per_sec", "burst: messages posted/s", 0),
    ("burst", "latency_p99_ms", "burst: p99 ms", 1),
    ("paced", "latency_p50_ms", "paced 1,000 msgs/s, 100 members: p50 ms", 2),
    ("paced", "latency_p99_ms", "paced: p99 ms", 2),
    ("paced", "server_cpu_us_per_delivery", "paced: server CPU µs/delivery", 2),
    ("idle", "kib_per_connection", "idle: server KiB per connection", 2),
]

def values(row, key, version):
    return {r["round"]: r[key] for r in rows
            if r["row"] == row and r["version"] == version and not r.get("failed") and key in r}

def fmt(v, digits):
    return f"{v:,.{digits}f}"

print(f"\n| metric | {old} (old), median | {new} (new), median | ratio of medians "
      f"| median of round ratios | round ratios (new/old) | rounds |")
print("|---|---|---|---|---|---|---|")
for row, key, label, digits in METRICS:
    a, b = values(row, key, "old"), values(row, key, "new")
    if not a or not b:
        continue
    ma, mb = statistics.median(a.values()), statistics.median(b.values())
    ratios = [b[r] / a[r] for r in sorted(a) if r in b and a[r]]
    paired = f"{statistics.median(ratios):.2f}×" if ratios else "—"
    print(f"| {label} | {fmt(ma, digits)} | {fmt(mb, digits)} | {mb / ma:.2f}× | {paired} "
          f"| {', '.join(f'{x:.2f}' for x in ratios)} | {len(ratios)} |")
print()
for row, key, label, digits in METRICS:
    for version, commit in (("old", old), ("new", new)):
        v = values(row, key, version)
        if v:
            print(f"{label}, {commit}: {', '.join(fmt(v[r], digits) for r in sorted(v))}")
for row in ("burst", "paced"):
    for version in ("old", "new"):
        rs = [r for r in rows if r["row"] == row and r["version"] == version and not r.get("failed")]
        if rs:
            print(f"{row} {version}: lost {sum(r.get('lost', 0) for r in rs)}, out of order "
                  f"{sum(r.get('out_of_order', 0) for r in rs)}, id breaks "
                  f"{sum(r.get('id_order_breaks', 0) for r in rs)} over {len(rs)} runs")
bad = [r for r in rows if r.get("failed") or (r["row"] == "handshake" and
       r.get("outcome_accepted") != r.get("connections"))]
print(f"failed runs: {len(bad)}")
busy = [r["machine_busy_before"] for r in rows if "machine_busy_before" in r]
if busy:
    print(f"machine busy before the rounds: {min(busy):.1%} to {max(busy):.1%}")
print(f"raw results: {path}")
PY
