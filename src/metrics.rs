//! Counters and gauges of SPEC §7, and their Prometheus rendering for `/metrics`.
//!
//! Each `Server` owns its own registry (no process-global state), so many servers can run in
//! one test binary without sharing numbers. Labels are fixed, low-cardinality reasons; nothing
//! a client sends (least of all a token) ever becomes a label.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::connection::DISCONNECT_REASONS;
use crate::handshake::Rejection;

/// The media type of the OpenMetrics text that `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    source: &'static str,
    result: &'static str,
}

/// Everything the server reads again at run time (SPEC §10: the users file).
pub const RELOAD_SOURCES: [&str; 1] = ["users_file"];

/// Cheap to clone: every clone updates the same series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    connections: Gauge,
    accepted: Counter,
    rejected: Family<ReasonLabel, Counter>,
    disconnects: Family<ReasonLabel, Counter>,
    received: Counter,
    delivered: Counter,
    rate_limited: Counter,
    reloads: Family<ReloadLabel, Counter>,
    cluster: Option<ClusterMetrics>,
}

/// The Redis link of a cluster node (SPEC §11). Registered only on cluster nodes: a single
/// node has no Redis, and a `redis_up 0` there would read as an outage.
struct ClusterMetrics {
    up: Gauge,
    publish_seconds: Histogram,
    reconnects: Counter,
    refilled: Counter,
    gaps: Counter,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            up: Gauge::default(),
            // 100 µs to about 1.6 s: a loopback round trip up to a struggling Redis.
            publish_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 15)),
            reconnects: Counter::default(),
            refilled: Counter::default(),
            gaps: Counter::default(),
        };
        registry.register(
            "redis_up",
            "1 while the node's Redis link works, 0 while it is down",
            metrics.up.clone(),
        );
        registry.register(
            "redis_publish_seconds",
            "Time to post a message through Redis (id, history and publish in one script)",
            metrics.publish_seconds.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Times the Redis link came back after it was lost",
            metrics.reconnects.clone(),
        );
        registry.register(
            "messages_refilled",
            "Messages a node missed on its subscription and delivered from the stored history",
            metrics.refilled.clone(),
        );
        registry.register(
            "gaps_announced",
            "gap events sent to members: messages that could no longer be refilled",
            metrics.gaps.clone(),
        );
        metrics
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics of a single node.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// The metrics of a cluster node: those of a single node and the Redis link's.
    pub fn for_cluster() -> Self {
        Self::build(true)
    }

    fn build(cluster: bool) -> Self {
        let mut registry = Registry::with_prefix("wschat");
        let connections = Gauge::default();
        let accepted = Counter::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let disconnects = Family::<ReasonLabel, Counter>::default();
        let received = Counter::default();
        let delivered = Counter::default();
        let rate_limited = Counter::default();
        let reloads = Family::<ReloadLabel, Counter>::default();
        registry.register("connections", "Open chat connections", connections.clone());
        registry.register(
            "connections_accepted",
            "Handshakes accepted",
            accepted.clone(),
        );
        registry.register(
            "handshakes_rejected",
            "Handshakes rejected, by reason",
            rejected.clone(),
        );
        registry.register(
            "disconnects",
            "Chat connections ended, by reason",
            disconnects.clone(),
        );
        registry.register(
            "messages_received",
            "Chat messages posted",
            received.clone(),
        );
        registry.register(
            "messages_delivered",
            "Chat messages queued to room members",
            delivered.clone(),
        );
        registry.register(
            "messages_rate_limited",
            "Messages refused by the rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "reloads",
            "Files read again at run time, by source and result (ok, or error: the old contents stay)",
            reloads.clone(),
        );
        // Every known label value at 0 from the first scrape, so `rate()` and alerts see a
        // quiet series instead of no data.
        for reason in Rejection::LABELS {
            drop(rejected.get_or_create(&ReasonLabel { reason }));
        }
        for reason in DISCONNECT_REASONS {
            drop(disconnects.get_or_create(&ReasonLabel { reason }));
        }
        for source in RELOAD_SOURCES {
            for result in ["ok", "error"] {
                drop(reloads.get_or_create(&ReloadLabel { source, result }));
            }
        }
        let cluster = cluster.then(|| ClusterMetrics::register(&mut registry));
        Self {
            inner: Arc::new(Inner {
                registry,
                connections,
                accepted,
                rejected,
                disconnects,
                received,
                delivered,
                rate_limited,
                reloads,
                cluster,
            }),
        }
    }

    /// A reload of `source` (one of [`RELOAD_SOURCES`]) succeeded or failed.
    pub fn reloaded(&self, source: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .reloads
            .get_or_create(&ReloadLabel { source, result })
            .inc();
    }

    pub fn connection_opened(&self) {
        self.inner.accepted.inc();
        self.inner.connections.inc();
    }

    /// `reason` is a fixed label such as `client_closed` or `slow_consumer`.
    pub fn connection_closed(&self, reason: &'static str) {
        self.inner.connections.dec();
        self.inner
            .disconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn handshake_rejected(&self, reason: &'static str) {
        self.inner
            .rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn message_received(&self) {
        self.inner.received.inc();
    }

    pub fn messages_delivered(&self, count: u64) {
        self.inner.delivered.inc_by(count);
    }

    pub fn message_rate_limited(&self) {
        self.inner.rate_limited.inc();
    }

    pub fn redis_up(&self, up: bool) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.up.set(i64::from(up));
        }
    }

    pub fn redis_published(&self, took: std::time::Duration) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.publish_seconds.observe(took.as_secs_f64());
        }
    }

    pub fn redis_reconnected(&self) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.reconnects.inc();
        }
    }

    pub fn message_refilled(&self) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.refilled.inc();
        }
    }

    pub fn gap_announced(&self) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.gaps.inc();
        }
    }

    /// The current number of open chat connections.
    pub fn open_connections(&self) -> i64 {
        self.inner.connections.get()
    }

    /// Renders every series in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_registry_shows_every_family_and_reason_at_zero() {
        let text = Metrics::new().render();
        for family in [
            "wschat_connections 0",
            "wschat_connections_accepted_total 0",
            "wschat_messages_received_total 0",
            "wschat_messages_delivered_total 0",
            "wschat_messages_rate_limited_total 0",
        ] {
            assert!(text.contains(family), "{family} in:\n{text}");
        }
        for reason in Rejection::LABELS {
            let series = format!(r#"wschat_handshakes_rejected_total{{reason="{reason}"}} 0"#);
            assert!(text.contains(&series), "{series} in:\n{text}");
        }
        for reason in DISCONNECT_REASONS {
            let series = format!(r#"wschat_disconnects_total{{reason="{reason}"}} 0"#);
            assert!(text.contains(&series), "{series} in:\n{text}");
        }
    }

    #[test]
    fn renders_counters_with_reasons() {
        let metrics = Metrics::new();
        metrics.connection_opened();
        metrics.handshake_rejected("invalid_token");
        metrics.messages_delivered(3);
        let text = metrics.render();
        assert!(text.contains("wschat_connections 1"), "{text}");
        assert!(
            text.contains("wschat_connections_accepted_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"wschat_handshakes_rejected_total{reason="invalid_token"} 1"#),
            "{text}"
        );
        assert!(text.contains("wschat_messages_delivered_total 3"), "{text}");
    }
}
