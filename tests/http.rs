//! SPEC §3: the plain HTTP surface next to the WebSocket endpoint.

use rstest::rstest;
use wschat_testkit::TestServer;

#[rstest]
#[case::page("GET", "/", 200, "text/html; charset=utf-8")]
#[case::page_head("HEAD", "/", 200, "text/html; charset=utf-8")]
#[case::health("GET", "/healthz", 200, "text/plain; charset=utf-8")]
#[case::metrics(
    "GET",
    "/metrics",
    200,
    "application/openmetrics-text; version=1.0.0; charset=utf-8"
)]
#[case::unknown_path("GET", "/nope", 404, "text/plain; charset=utf-8")]
#[case::unknown_path_other_method("DELETE", "/nope", 404, "text/plain; charset=utf-8")]
#[case::post_page("POST", "/", 405, "text/plain; charset=utf-8")]
#[case::put_health("PUT", "/healthz", 405, "text/plain; charset=utf-8")]
#[case::delete_metrics("DELETE", "/metrics", 405, "text/plain; charset=utf-8")]
#[tokio::test]
async fn routes(
    #[case] method: &str,
    #[case] path: &str,
    #[case] status: u16,
    #[case] content_type: &str,
) {
    let server = TestServer::start().await;
    let response = server.http(method, path, &[]).await;
    assert_eq!(
        response.status, status,
        "{method} {path}: {}",
        response.body
    );
    assert_eq!(response.headers["content-type"], content_type);
    if status == 405 {
        assert_eq!(response.headers["allow"], "GET, HEAD");
    }
}

#[tokio::test]
async fn healthz_says_ok() {
    let server = TestServer::start().await;
    assert_eq!(server.http("GET", "/healthz", &[]).await.body, "ok");
}

#[tokio::test]
async fn the_page_explains_how_to_connect() {
    let server = TestServer::start().await;
    let page = server.http("GET", "/", &[]).await.body;
    assert!(page.contains("<title>wschat</title>"), "{page}");
    assert!(page.contains("token="), "{page}");
}

#[tokio::test]
async fn metrics_follow_connections_and_messages() {
    let server = TestServer::start().await;
    let mut client = server.client().name("counted").connect_ok().await;
    client.say("one").await;
    client.recv_message().await;
    server.client().token("nope").connect_rejected().await;

    let text = server.http("GET", "/metrics", &[]).await.body;
    for line in [
        "wschat_connections 1",
        "wschat_connections_accepted_total 1",
        "wschat_messages_received_total 1",
        "wschat_messages_delivered_total 1",
        r#"wschat_handshakes_rejected_total{reason="invalid_token"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        !text.contains(server.token()),
        "the token leaked into /metrics"
    );
}
