//! Latency percentiles and the one-line JSON report every scenario prints.

use std::collections::BTreeMap;

/// Percentile of an ascending-sorted slice, nearest-rank; `None` when empty.
pub fn percentile(sorted: &[u64], fraction: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// A flat report: ordered keys, numbers or strings, printed as JSON and as text.
#[derive(Default)]
pub struct Report {
    fields: BTreeMap<String, serde_json::Value>,
}

impl Report {
    pub fn set(
        &mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> &mut Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Adds p50/p99/max of `micros` (unsorted) as milliseconds, as `PREFIX_p50_ms` and so on.
    pub fn latencies(&mut self, prefix: &str, mut micros: Vec<u64>) -> &mut Self {
        micros.sort_unstable();
        for (name, fraction) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            if let Some(value) = percentile(&micros, fraction) {
                self.set(format!("{prefix}_{name}_ms"), value as f64 / 1000.0);
            }
        }
        self
    }

    pub fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(&self.fields).unwrap_or_default()
            );
        } else {
            for (key, value) in &self.fields {
                println!("{key:>28}: {value}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let data: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&data, 0.5), Some(50));
        assert_eq!(percentile(&data, 0.99), Some(99));
        assert_eq!(percentile(&data, 1.0), Some(100));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn latency_keys_carry_their_prefix() {
        let mut report = Report::default();
        report.latencies("cross_node_latency", vec![3000, 1000, 2000]);
        assert_eq!(report.fields["cross_node_latency_p50_ms"], 2.0);
        assert_eq!(report.fields["cross_node_latency_max_ms"], 3.0);
        assert!(!report.fields.contains_key("latency_p50_ms"));
    }
}
