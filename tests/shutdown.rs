//! SPEC §6, last row: on shutdown every client is told `1001 server shutting down`, the
//! listener stops accepting, and the server stops within the grace period.

use std::time::Duration;

use wschat_testkit::{ClientBuilder, ConnectError, TestServer};

#[tokio::test]
async fn every_client_gets_1001_and_the_server_stops() {
    let server = TestServer::start().await;
    let addr = server.addr();
    let mut clients = Vec::new();
    for room in ["a", "a", "b"] {
        clients.push(server.client().room(room).connect_ok().await);
    }
    let stopping = tokio::spawn(server.shutdown());
    for client in &mut clients {
        let (code, reason) = client.expect_close().await;
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    }
    // The clients answered the close, so shutdown finishes well within the 5 s grace.
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown finished within the grace period")
        .expect("shutdown task");
    match ClientBuilder::new(addr).connect().await {
        Err(ConnectError::Failed(_)) => {}
        Err(other) => panic!("expected the port to be closed, but {other}"),
        Ok(_) => panic!("a stopped server accepted a connection"),
    }
}

#[tokio::test]
async fn a_client_that_ignores_the_close_is_dropped_after_the_grace_period() {
    let server =
        TestServer::start_with(|config| config.shutdown_grace = Duration::from_millis(300)).await;
    // This client never reads, so it never answers the server's close frame.
    let _deaf = server.client().connect_ok().await;
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown does not wait past the grace period for a silent client");
}
