#!/usr/bin/env bash
# Handshake server CPU per identity source (SPEC §10): the shared secret, the users file, HS256
# and EdDSA (Ed25519) tokens. One wschat per source is started with that source alone (no
# other), all pinned to one core, and warmed up with WARMUP handshakes. Then, RUNS rounds: in
# each, `wschat-load handshake` (pinned to the other core) runs against every server in turn,
# opening, completing (reading the `welcome`) and closing CONNECTIONS connections, all with one
# user's token (or, for the shared secret, as guests). A round takes a few seconds and starts
# with the next source each time, so the slow spells of a shared VM (its speed drifts by a
# third from one minute to the next) fall on every source alike. Prints medians and ratios to
# the shared secret.
#
# Server CPU per handshake is the load tool's figure (`--server-pid`: the scheduler's nanosecond
# accounting of every server thread, /proc/PID/task/*/schedstat, over the measured handshakes
# only, as in compare.sh). As a cross-check the script also reads utime + stime from
# /proc/PID/stat (10 ms ticks) before and after each run (`stat_cpu_us_per_op`). Ratios are
# given two ways: of the medians, and the median of each round's own ratio (a source against
# the shared secret of the same round, seconds apart), which cancels the drifts.
#
# Last, `wschat-load auth-cost` times the token check alone for each source (the server's own
# `Authenticator::authenticate`, in process, pinned to the server's core): the part of the
# handshake that depends on the source.
#
#   benches/identity.sh                     # 5 rounds; about 1 minute on 2 cores
#   RUNS=15 benches/identity.sh             # what BENCHMARKS.md reports
#   SOURCES="shared hs256" CARRIER=subprotocol benches/identity.sh
#   BUILD=0 benches/identity.sh             # use the release binaries already in target/
#
# Before each round the script waits (up to QUIET_WAIT seconds) until the machine is idle, since
# anything else running skews every figure on 2 cores. Everything it starts it stops, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
SOURCES=${SOURCES:-"shared users hs256 eddsa"}
CONNECTIONS=${CONNECTIONS:-4000}
CONCURRENCY=${CONCURRENCY:-32}
WARMUP=${WARMUP:-500}
CARRIER=${CARRIER:-query}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
QUIET_WAIT=${QUIET_WAIT:-300}
QUIET_BELOW=${QUIET_BELOW:-0.05}
OUT=benches/results
mkdir -p "$OUT"
RESULTS="$OUT/identity.jsonl"
: >"$RESULTS"
WORK=$(mktemp -d)
# The servers, by source: PID and URL.
declare -A SERVER_PID SERVER_URL
cleanup() {
  local pid
  for pid in "${SERVER_PID[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "${BUILD:-1}" != 0 ]; then
  echo "building release binaries..." >&2
  cargo build --quiet --release -p wschat --bin wschat -p wschat-testkit --bin wschat-load
fi
WSCHAT=target/release/wschat
LOAD=target/release/wschat-load
TICKS=$(getconf CLK_TCK)

# The credentials: one user, "bench", in each per-user source; keys made fresh for this run.
SHARED_TOKEN=bench-token
USERS_TOKEN=$("$WSCHAT" users add bench --file "$WORK/users" 2>/dev/null)
HS256_TOKEN=$("$LOAD" mint-jwt --alg hs256 --key-file "$WORK/jwt-secret" --new-key \
  --sub bench --ttl 3650days)
EDDSA_TOKEN=$("$LOAD" mint-jwt --alg eddsa --key-file "$WORK/ed25519.pem" \
  --public-key-file "$WORK/ed25519.pub.pem" --new-key --sub bench --ttl 3650days)

# The flags of each source, and the token its clients present.
source_flags() {
  case "$1" in
    shared) echo --token "$SHARED_TOKEN" ;;
    users) echo --users-file "$WORK/users" ;;
    hs256) echo --jwt-secret-file "$WORK/jwt-secret" ;;
    eddsa) echo --jwt-public-key-file "$WORK/ed25519.pub.pem" ;;
    *) echo "unknown source $1 (shared, users, hs256, eddsa)" >&2; return 1 ;;
  esac
}
source_token() {
  case "$1" in
    shared) echo "$SHARED_TOKEN" ;;
    users) echo "$USERS_TOKEN" ;;
    hs256) echo "$HS256_TOKEN" ;;
    eddsa) echo "$EDDSA_TOKEN" ;;
  esac
}

# shellcheck source=benches/lib.sh
source benches/lib.sh # the scripts run from the repository root (cd above)

# stat_ticks PID: utime + stime of the process (all its threads), in clock ticks.
stat_ticks() {
  # Fields after the parenthesised command name: utime and stime are the 12th and 13th.
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# start_server SOURCE: a wschat with that source alone, pinned, on a free port; sets
# SERVER_PID[SOURCE] and SERVER_URL[SOURCE] (read from its "listening on" line).
start_server() {
  local log="$OUT/identity-$1.log" url="" pid
  : >"$log"
  # As in compare.sh: no rate limit, no brute-force throttle; and one user may hold every
  # connection (all handshakes present the same user's token).
  # shellcheck disable=SC2046
  taskset -c "$SERVER_CORE" "$WSCHAT" --listen 127.0.0.1:0 $(source_flags "$1") \
    --rate-limit 0 --send-queue 16384 --auth-fail-limit 0 --max-connections 20000 \
    --max-connections-per-user 1000000 >"$log" 2>&1 &
  pid=$!
  SERVER_PID[$1]=$pid
  url=$(listening_url "$log") || true
  if [ -z "$url" ]; then
    echo "wschat ($1) did not start; see $log" >&2
    return 1
  fi
  SERVER_URL[$1]=$url
}

# load SOURCE CONNECTIONS: one bounded handshake run against that source's server.
load() {
  WSCHAT_TOKEN=$(source_token "$1") timeout 120 taskset -c "$LOAD_CORE" "$LOAD" \
    --url "${SERVER_URL[$1]}" --carrier "$CARRIER" --server-pid "${SERVER_PID[$1]}" --json \
    --deadline 90s handshake --connections "$2" --concurrency "$CONCURRENCY"
}

# steal_ticks: time the hypervisor gave to others while this VM wanted to run (all CPUs).
steal_ticks() {
  awk '/^cpu / { print $9 }' /proc/stat
}

# run ROUND SOURCE: the measured handshakes against that source's server; one JSON line.
run() {
  local line before after steal_before steal_after pid=${SERVER_PID[$2]}
  if before=$(stat_ticks "$pid") && steal_before=$(steal_ticks) && line=$(load "$2" "$CONNECTIONS") &&
      after=$(stat_ticks "$pid") && steal_after=$(steal_ticks); then
    python3 -c '
import json, sys
d = json.loads(sys.argv[1])
ticks, tck, n = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
d.update(round=int(sys.argv[2]), source=sys.argv[3], machine_busy_before=float(sys.argv[4]),
         stat_cpu_us_per_op=round(ticks * 1e6 / tck / n, 1),
         steal_ms=int(sys.argv[8]) * 1000 // tck)
d["failed"] = d.get("outcome_accepted", 0) != n
print(json.dumps(d))' "$line" "$1" "$2" "$BUSY_BEFORE" "$((after - before))" "$TICKS" \
      "$CONNECTIONS" "$((steal_after - steal_before))" >>"$RESULTS"
  else
    echo "{\"round\": $1, \"source\": \"$2\", \"failed\": true}" >>"$RESULTS"
  fi
}

read -r -a sources <<<"$SOURCES"
for name in "${sources[@]}"; do
  source_flags "$name" >/dev/null
  start_server "$name"
  load "$name" "$WARMUP" >/dev/null || echo "warm-up of $name failed" >&2
done
for round in $(seq "$RUNS"); do
  wait_for_quiet
  # Round r starts with source r-1 (mod the number of sources).
  for i in $(seq 0 $((${#sources[@]} - 1))); do
    name=${sources[$(((i + round - 1) % ${#sources[@]}))]}
    echo "round $round/$RUNS: $name" >&2
    run "$round" "$name"
  done
done
for name in "${sources[@]}"; do
  kill "${SERVER_PID[$name]}" 2>/dev/null || true
  wait "${SERVER_PID[$name]}" 2>/dev/null || true
done
SERVER_PID=()

# The token check alone, per source, on the server's core.
for name in "${sources[@]}"; do
  key=()
  case "$name" in
    users) key=(--key-file "$WORK/users") ;;
    hs256) key=(--key-file "$WORK/jwt-secret") ;;
    eddsa) key=(--key-file "$WORK/ed25519.pub.pem") ;;
  esac
  echo "token check alone: $name" >&2
  WSCHAT_TOKEN=$(source_token "$name") timeout 120 taskset -c "$SERVER_CORE" "$LOAD" \
    auth-cost --source "$name" "${key[@]}" >>"$RESULTS" ||
    echo "{\"scenario\": \"auth_cost\", \"source\": \"$name\", \"failed\": true}" >>"$RESULTS"
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys

lines = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in lines if r.get("scenario") != "auth_cost"]
check = {r["source"]: r for r in lines if r.get("scenario") == "auth_cost" and not r.get("failed")}
order = []
runs = {}
for row in rows:
    name = row["source"]
    if name not in order:
        order.append(name)
    runs.setdefault(name, []).append(row)
labels = {"shared": "shared secret (--token)", "users": "users file",
          "hs256": "JWT HS256", "eddsa": "JWT EdDSA (Ed25519)"}
targets = {"users": 1.1, "hs256": 1.1}

def median(name, key):
    values = [r[key] for r in runs.get(name, []) if not r.get("failed") and key in r]
    return (statistics.median(values), values) if values else (None, [])

base, _ = median("shared", "server_cpu_us_per_op")
base_stat, _ = median("shared", "stat_cpu_us_per_op")
shared_by_round = {r["round"]: r["server_cpu_us_per_op"] for r in runs.get("shared", [])
                   if not r.get("failed") and "server_cpu_us_per_op" in r}
first = next(iter(rows), {})
print(f"\nhandshake, C={first.get('concurrency')}, {first.get('connections')} per run, "
      f"token in {first.get('carrier')}: server CPU µs per handshake, medians")
print("| source | server CPU µs/handshake | runs | ratio of medians | median of round ratios "
      "| /proc/PID/stat µs | token check alone µs | handshakes/s | target | met |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in order:
    value, values = median(name, "server_cpu_us_per_op")
    stat, _ = median(name, "stat_cpu_us_per_op")
    rate, _ = median(name, "per_sec")
    failed = sum(1 for r in runs[name] if r.get("failed"))
    alone = check.get(name, {}).get("ns_per_call")
    alone = f"{alone / 1000:.2f}" if alone is not None else "—"
    if value is None:
        print(f"| {labels.get(name, name)} | failed ({failed} runs) | | | | | {alone} | | | |")
        continue
    ratio = value / base if base else None
    paired = [r["server_cpu_us_per_op"] / shared_by_round[r["round"]] for r in runs[name]
              if not r.get("failed") and r["round"] in shared_by_round]
    paired = statistics.median(paired) if paired else None
    target = targets.get(name)
    # Judged on the round ratios: the ratio of medians also carries the VM's drifts.
    met = ""
    if target is not None and paired is not None:
        met = "yes" if paired <= target else "**no**"
    print(f"| {labels.get(name, name)} | {value:.1f} "
          f"| {', '.join(f'{v:.1f}' for v in values)}{f' ({failed} failed)' if failed else ''} "
          f"| {f'{ratio:.2f}×' if ratio else '—'} | {f'{paired:.2f}×' if paired else '—'} "
          f"| {f'{stat:.1f}' if stat else '—'} | {alone} "
          f"| {rate:,.0f} | {f'≤ {target}×' if target else ('baseline' if name == 'shared' else 'reported')} | {met} |")
for name in order:
    c = check.get(name, {})
    if "jwt_signature_ns" in c:
        print(f"{labels.get(name, name)}, token check alone: {c['ns_per_call'] / 1000:.2f} µs = "
              f"verifier built from the key {c['jwt_build_verifier_ns'] / 1000:.2f} µs "
              f"+ signature {c['jwt_signature_ns'] / 1000:.2f} µs "
              f"+ the rest (base64, JSON, claims; the difference, ±1-2 µs) "
              f"{c['jwt_rest_ns'] / 1000:.2f} µs")
busy = [r.get("machine_busy_before") for r in rows if "machine_busy_before" in r]
if busy:
    print(f"\nmachine busy before the runs: {min(busy):.1%} to {max(busy):.1%}")
steal = [r["steal_ms"] for r in rows if "steal_ms" in r]
if steal:
    print(f"CPU time stolen by the hypervisor during a measured run: {min(steal)} to {max(steal)} ms")
print(f"raw results: {sys.argv[1]}")
PY
