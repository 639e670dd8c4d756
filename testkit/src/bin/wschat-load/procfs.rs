//! What the load generator reads about the server processes from `/proc`: CPU time and memory.
//!
//! CPU time per operation stays meaningful when the load generator, sharing the machine, is
//! the bottleneck: it counts only what the server spent, whatever the wall clock says. A
//! cluster is several processes (its nodes, and Redis apart): figures are summed over the PIDs
//! given, and a figure is missing when any of them cannot be read.

use std::time::Duration;

/// Kernel clock ticks per second for `/proc/PID/stat` times; 100 on every Linux we target
/// (`getconf CLK_TCK`).
const CLOCK_TICKS_PER_SEC: u64 = 100;

/// CPU time the processes have used so far, summed; `None` without `/proc`, without PIDs, or
/// when one of them is gone. Prefers the scheduler's nanosecond accounting of every live thread
/// (`/proc/PID/task/*/schedstat`); falls back to the 10 ms ticks of `/proc/PID/stat`
/// (utime + stime).
pub fn cpu_time(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|&pid| schedstat_total(pid).or_else(|| stat_ticks(pid)))
        .sum()
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

/// Resident memory in KiB (`VmRSS`), summed over the processes; `None` as for `cpu_time`.
pub fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| process_rss_kib(pid)).sum()
}

fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Measures the CPU time of a set of processes (the server's nodes, or Redis) across a phase.
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Option<Duration>,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: cpu_time(pids),
        }
    }

    /// CPU time the processes spent since `start`.
    pub fn spent(&self) -> Option<Duration> {
        cpu_time(&self.pids)?.checked_sub(self.start?)
    }

    /// Microseconds of CPU per operation since `start`.
    pub fn per_op_micros(&self, ops: u64) -> Option<f64> {
        let spent = self.spent()?;
        (ops > 0).then(|| spent.as_secs_f64() * 1e6 / ops as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_summed_over_processes_and_missing_without_any() {
        let me = std::process::id();
        assert_eq!(cpu_time(&[]), None);
        assert_eq!(rss_kib(&[]), None);
        let one = rss_kib(&[me]).expect("our own /proc entry");
        let two = rss_kib(&[me, me]).expect("our own /proc entry");
        assert!(two > one, "{one} KiB once, {two} KiB twice");
        assert!(cpu_time(&[me, me]).is_some());
        // A PID that cannot exist (above the kernel's limit) makes the sum unknown.
        assert_eq!(cpu_time(&[me, u32::MAX]), None);
    }
}
