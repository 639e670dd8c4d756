"""Turns benches/compare.sh's JSON lines into one Markdown table of medians."""
import json
import statistics
import sys

ROWS = [
    ("handshake", "handshake (C=32): server CPU µs/op", "server_cpu_us_per_op", "≤ 1.0× tungstenite"),
    ("reject", "rejected handshake (C=32): server CPU µs/op", "server_cpu_us_per_op", "≤ 1.0× tungstenite, 401"),
    ("fanout100", "fan-out 100 members, 2000 burst: CPU µs/delivery", "server_cpu_us_per_delivery", "≤ 1.5"),
    ("fanout1000", "fan-out 1000 members, 200 burst: CPU µs/delivery", "server_cpu_us_per_delivery", "≤ 1.5"),
    ("burst10k", "fan-out 100 members, 10,000 burst: lost", "lost", "0 of 1,000,000"),
    ("paced", "paced 100k deliveries/s: p99 latency ms", "latency_p99_ms", "≤ 3"),
    ("idle", "idle connection: server KiB each", "kib_per_connection", "≤ 4"),
]
SERVERS = ["wschat", "tungstenite", "express"]


def main(path):
    results = [json.loads(line) for line in open(path) if line.strip()]
    present = [s for s in SERVERS if any(r.get("server") == s for r in results)]

    def cell(row, server, key):
        runs = [r for r in results if r.get("row") == row and r.get("server") == server]
        values = [r[key] for r in runs if key in r]
        if not values:
            return "failed" if runs else "—"
        median = statistics.median(values)
        extra = ""
        if row == "reject":
            outcomes = sorted({k[len("outcome_"):] for r in runs for k in r if k.startswith("outcome_")})
            extra = " (" + ", ".join(outcomes) + ")"
        if row == "burst10k":
            extra = " of %d, out of order %d" % (runs[0]["deliveries_expected"],
                                               statistics.median(r["out_of_order"] for r in runs))
        text = ("%.2f" % median).rstrip("0").rstrip(".") if isinstance(median, float) else str(median)
        return text + extra + ("" if len(values) == len(runs) else " (some runs failed)")

    print("| scenario | " + " | ".join(present) + " | target |")
    print("|---|" + "---|" * (len(present) + 1))
    for row, label, key, target in ROWS:
        print("| %s | %s | %s |" % (label, " | ".join(cell(row, s, key) for s in present), target))
    runs = max((sum(1 for r in results if r.get("row") == "handshake" and r.get("server") == s)
                for s in present), default=0)
    print("\nmedians of %d runs; raw results in %s" % (runs, path))


if __name__ == "__main__":
    main(sys.argv[1])
