# Shared by the benchmark scripts (sourced from the repository root): waiting until the
# machine is idle before a measured round, since this VM's speed drifts and a busy neighbour
# skews a run, and reading a started server's address.
# wait_for_quiet needs QUIET_BELOW (a fraction of all CPUs) and QUIET_WAIT (seconds).

# busy: the fraction of CPU time spent busy over the next second, from /proc/stat.
busy() {
  python3 - <<'PY'
import time
def sample():
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:9]]
    return sum(fields), fields[3] + fields[4]
total1, idle1 = sample()
time.sleep(1)
total2, idle2 = sample()
print(round(1 - (idle2 - idle1) / max(total2 - total1, 1), 3))
PY
}

# wait_for_quiet: waits until the machine is idle (busy under QUIET_BELOW for a second), at
# most QUIET_WAIT seconds; sets BUSY_BEFORE to the last measurement.
wait_for_quiet() {
  local waited=0
  BUSY_BEFORE=$(busy)
  while python3 -c 'import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))' \
      "$BUSY_BEFORE" "$QUIET_BELOW"; do
    if [ "$waited" -ge "$QUIET_WAIT" ]; then
      echo "the machine is still busy ($BUSY_BEFORE); measuring anyway" >&2
      return 0
    fi
    [ "$waited" -eq 0 ] && echo "waiting for the machine to be idle (busy: $BUSY_BEFORE)..." >&2
    sleep 4
    waited=$((waited + 5))
    BUSY_BEFORE=$(busy)
  done
}

# listening_url LOG: the first `wschat listening on ws://ADDR` of a server logging to LOG, as
# `ws://ADDR/`, waiting up to 5 s for it; prints nothing (and fails) if it never comes.
listening_url() {
  local url=""
  for _ in $(seq 100); do
    url=$(sed -n 's|^wschat listening on \(ws://[^ ]*\)$|\1/|p' "$1" 2>/dev/null | head -n 1)
    [ -n "$url" ] && break
    sleep 0.05
  done
  [ -n "$url" ] && echo "$url"
}
