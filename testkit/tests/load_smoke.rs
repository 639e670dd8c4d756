//! Smoke test of `wschat-load` against an in-process server: every scenario runs to the end on
//! a tiny load and reports what it should. Performance is measured by `benches/compare.sh`,
//! never here.

use std::process::Command;

use serde_json::Value;
use wschat_testkit::TestServer;

fn load(server: &TestServer, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_wschat-load"))
        .args([
            "--url",
            &server.ws_url(),
            "--token",
            server.token(),
            "--json",
        ])
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
