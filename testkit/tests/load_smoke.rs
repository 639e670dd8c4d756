//! Smoke test of `wschat-load` against an in-process server (and an in-process cluster of two
//! nodes on a real Redis): every scenario runs to the end on a tiny load and reports what it
//! should. Performance is measured by `benches/compare.sh` and `benches/cluster.sh`, never here.

use std::process::Command;

use serde_json::Value;
use wschat_testkit::{RedisServer, TestServer};

fn load(server: &TestServer, args: &[&str]) -> Value {
    load_nodes(std::slice::from_ref(server), args)
}

/// Runs `wschat-load` with one `--url` per node (they share a token).
fn load_nodes(nodes: &[TestServer], args: &[&str]) -> Value {
    let urls = nodes
        .iter()
        .flat_map(|node| ["--url".to_owned(), node.ws_url()]);
    let output = Command::new(env!("CARGO_BIN_EXE_wschat-load"))
        .args(urls)
        .args(["--token", nodes[0].token(), "--json"])
        .args([
            "--server-pid",
            &std::process::id().to_string(),
            "--deadline",
            "30s",
        ])
        .args(args)
        .env_remove("WSCHAT_TOKEN")
        .output()
        .expect("wschat-load runs");
    assert!(
        output.status.success(),
        "wschat-load {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_reject_scenarios_complete() {
    let server = TestServer::start().await;
    let accepted = load(
        &server,
        &["handshake", "--connections", "20", "--concurrency", "4"],
    );
    assert_eq!(accepted["outcome_accepted"], 20, "{accepted}");
    let rejected = load(
        &server,
        &["reject", "--connections", "20", "--concurrency", "4"],
    );
    assert_eq!(rejected["outcome_http_401"], 20, "{rejected}");
    assert_eq!(rejected["data_frames_to_rejected"], 0, "{rejected}");
    assert!(
        rejected["server_cpu_us_per_op"].as_f64().is_some(),
        "{rejected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_scenario_delivers_everything_in_order() {
    let server = TestServer::start_with(|config| config.rate_limit = 0).await;
    let report = load(
        &server,
        &[
            "fanout",
            "--members",
            "5",
            "--senders",
            "2",
            "--messages",
            "20",
        ],
    );
    assert_eq!(report["deliveries"], 200, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    assert_eq!(report["complete_receivers"], 5, "{report}");
    assert_eq!(report["id_order_breaks"], 0, "{report}");
    assert_eq!(report["receivers_in_another_order"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_scenario_across_a_cluster_delivers_everything_in_one_order() {
    let Some(redis) = RedisServer::start().await else {
        return; // no redis-server here: RedisServer::start said so on stderr
    };
    let nodes = TestServer::start_cluster(&redis, 2, |config| config.rate_limit = 0).await;
    let report = load_nodes(
        &nodes,
        &[
            "fanout",
            "--members",
            "6",
            "--senders",
            "4",
            "--messages",
            "25",
            "--rate",
            "3000",
        ],
    );
    assert_eq!(report["nodes"], 2, "{report}");
    assert_eq!(report["deliveries"], 600, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    assert_eq!(report["id_order_breaks"], 0, "{report}");
    assert_eq!(report["gap_events"], 0, "{report}");
    assert_eq!(report["receivers_in_another_order"], 0, "{report}");
    assert_eq!(report["complete_receivers"], 6, "{report}");
    // Half the deliveries cross nodes: senders 0 and 2 are on the first node, 1 and 3 on the
    // second, and so are half the members.
    assert!(
        report["cross_node_latency_p99_ms"].as_f64().is_some(),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_scenario_reports_memory() {
    let server = TestServer::start().await;
    let report = load(
        &server,
        &[
            "idle",
            "--connections",
            "10",
            "--room-size",
            "5",
            "--settle",
            "10ms",
        ],
    );
    assert_eq!(report["connections"], 10, "{report}");
    assert!(report["kib_per_connection"].as_f64().is_some(), "{report}");
}
