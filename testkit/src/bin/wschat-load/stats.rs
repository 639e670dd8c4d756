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
    fields: BTreeMap<&'static str, serde_json::Value>,
}

impl Report {
    pub fn set(&mut self, key: &'static str, value: impl Into<serde_json::Value>) -> &mut Self {
        self.fields.insert(key, value.into());
        self
    }

    /// Adds p50/p99/max of `micros` (unsorted) as milliseconds under `prefix`.
    pub fn latencies(&mut self, prefix: &'static str, mut micros: Vec<u64>) -> &mut Self {
        micros.sort_unstable();
        let as_ms = |value: Option<u64>| value.map(|v| v as f64 / 1000.0);
        let keys: [(&'static str, f64); 3] = match prefix {
            "latency" => [
                ("latency_p50_ms", 0.5),
                ("latency_p99_ms", 0.99),
                ("latency_max_ms", 1.0),
            ],
            _ => [
                ("handshake_p50_ms", 0.5),
                ("handshake_p99_ms", 0.99),
                ("handshake_max_ms", 1.0),
            ],
        };
        for (key, fraction) in keys {
            if let Some(ms) = as_ms(percentile(&micros, fraction)) {
                self.set(key, (ms * 1000.0).round() / 1000.0);
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
}
