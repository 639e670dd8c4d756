//! What the load generator reads about the server process from `/proc`: CPU time and memory.
//!
//! CPU time per operation stays meaningful when the load generator, sharing the machine, is
//! the bottleneck: it counts only what the server spent, whatever the wall clock says.

use std::time::Duration;

/// Kernel clock ticks per second for `/proc/PID/stat` times; 100 on every Linux we target
/// (`getconf CLK_TCK`).
const CLOCK_TICKS_PER_SEC: u64 = 100;

/// CPU time the process has used so far, or `None` without `/proc` or a PID. Prefers the
/// scheduler's nanosecond accounting of every live thread (`/proc/PID/task/*/schedstat`);
/// falls back to the 10 ms ticks of `/proc/PID/stat`.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let pid = pid?;
    schedstat_total(pid).or_else(|| stat_ticks(pid))
}

fn schedstat_total(pid: u32) -> Option<Duration> {
    let mut total_ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let Ok(line) = std::fs::read_to_string(path) else {
            continue;
        }; // thread just exited
        total_ns += line.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total_ns))
}

fn stat_ticks(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_micros(
        ticks * 1_000_000 / CLOCK_TICKS_PER_SEC,
    ))
}

/// Resident memory in KiB (`VmRSS`).
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Measures the server's CPU time across a phase.
pub struct CpuMeter {
    pid: Option<u32>,
    start: Option<Duration>,
}

impl CpuMeter {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            start: cpu_time(pid),
        }
    }

    /// Microseconds of server CPU per operation since `start`.
    pub fn per_op_micros(&self, ops: u64) -> Option<f64> {
        let spent = cpu_time(self.pid)?.checked_sub(self.start?)?;
        (ops > 0).then(|| spent.as_secs_f64() * 1e6 / ops as f64)
    }
}
