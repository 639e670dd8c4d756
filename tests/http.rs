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

/// Without `Upgrade: websocket` a request is ordinary HTTP (RFC 6455 §4.2.1, RFC 9110 §7.8):
/// `GET /` gets the page, whatever WebSocket headers come with it.
#[rstest]
#[case::only_a_key(&[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])]
#[case::every_websocket_header_but_upgrade(&[
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
])]
#[case::upgrade_to_another_protocol(&[
    ("Connection", "Upgrade"),
    ("Upgrade", "h2c"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
])]
#[tokio::test]
async fn a_get_without_upgrade_websocket_gets_the_page(#[case] headers: &[(&str, &str)]) {
    let server = TestServer::start().await;
    let path = format!("/?token={}", server.token());
    let response = server.http("GET", &path, headers).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.headers["content-type"], "text/html; charset=utf-8");
    assert!(response.body.contains("<title>wschat</title>"));
    let metrics = server.metrics().render();
    assert!(
        metrics.contains("wschat_connections_accepted_total 0"),
        "{metrics}"
    );
}

/// SPEC §7: every family is there from the first scrape, each known label value at 0, so a
/// dashboard sees a quiet server rather than "no data".
#[tokio::test]
async fn a_fresh_server_shows_every_metric_family_at_zero() {
    let server = TestServer::start().await;
    let metrics = server.http("GET", "/metrics", &[]).await.body;
    let mut expected = vec![
        "wschat_connections 0".to_owned(),
        "wschat_connections_accepted_total 0".to_owned(),
        "wschat_messages_received_total 0".to_owned(),
        "wschat_messages_delivered_total 0".to_owned(),
        "wschat_messages_rate_limited_total 0".to_owned(),
    ];
    for reason in wschat::handshake::Rejection::LABELS {
        expected.push(format!(
            r#"wschat_handshakes_rejected_total{{reason="{reason}"}} 0"#
        ));
    }
    for reason in [
        "slow_consumer",
        "idle",
        "rate_limited",
        "client_closed",
        "shutdown",
    ] {
        expected.push(format!(
            r#"wschat_disconnects_total{{reason="{reason}"}} 0"#
        ));
    }
    for series in &expected {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn healthz_says_ok() {
    let server = TestServer::start().await;
    assert_eq!(server.http("GET", "/healthz", &[]).await.body, "ok");
}

#[tokio::test]
async fn the_page_is_the_chat_client() {
    let server = TestServer::start().await;
    let page = server.http("GET", "/", &[]).await.body;
    assert!(page.contains("<title>wschat</title>"), "{page}");
    assert!(
        page.contains(r#"<input id="token" type="password""#),
        "{page}"
    );
    assert!(page.contains("new WebSocket("), "{page}");
    assert!(
        page.contains(r#""bearer.""#),
        "the page sends its token in the subprotocol (SPEC §10)"
    );
    assert!(
        page.contains("Authorization: Bearer YOUR_TOKEN"),
        "the page shows how other clients connect, with the token in no URL"
    );
    // Everything user-typed goes through textContent; the CSP's Trusted Types would refuse
    // an HTML sink anyway, but it should not even be written.
    assert!(!page.contains("innerHTML"), "the page uses innerHTML");
}

#[tokio::test]
async fn the_page_has_a_strict_policy_and_safe_caching() {
    let server = TestServer::start().await;
    let response = server.http("GET", "/", &[]).await;
    let header = |name: &str| {
        response.headers[name]
            .to_str()
            .unwrap_or_else(|_| panic!("{name} is not text"))
            .to_owned()
    };
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("cache-control"), "no-cache");
    let etag = header("etag");
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "{etag}"
    );

    let csp = header("content-security-policy");
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    for expected in [
        "default-src 'none'",
        "connect-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(directives.contains(&expected), "{expected} missing: {csp}");
    }
    for directive in ["script-src", "style-src"] {
        let sources = directives
            .iter()
            .find_map(|d| d.strip_prefix(directive))
            .unwrap_or_else(|| panic!("{directive} missing: {csp}"));
        // Exactly the page's own inline block, by hash: no 'unsafe-inline', no host.
        let sources: Vec<&str> = sources.split_whitespace().collect();
        assert_eq!(sources.len(), 1, "{csp}");
        assert!(sources[0].starts_with("'sha256-"), "{csp}");
    }
}

#[rstest]
#[case::same_etag("{etag}", 304)]
#[case::weak_form("W/{etag}", 304)]
#[case::in_a_list("\"old\", {etag}", 304)]
#[case::any("*", 304)]
#[case::other_version("\"0123\"", 200)]
#[tokio::test]
async fn the_page_revalidates_with_its_etag(#[case] if_none_match: &str, #[case] status: u16) {
    let server = TestServer::start().await;
    let first = server.http("GET", "/", &[]).await;
    let etag = first.headers["etag"].to_str().unwrap_or_default();
    let if_none_match = if_none_match.replace("{etag}", etag);

    let again = server
        .http("GET", "/", &[("If-None-Match", &if_none_match)])
        .await;
    assert_eq!(again.status, status, "If-None-Match: {if_none_match}");
    assert_eq!(again.headers["etag"], etag);
    assert_eq!(
        again.headers["content-security-policy"],
        first.headers["content-security-policy"]
    );
    if status == 304 {
        assert_eq!(again.body, "");
    } else {
        assert_eq!(again.body, first.body);
    }
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
