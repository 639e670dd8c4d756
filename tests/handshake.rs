//! SPEC §4 steps 1, 2, 4 and 5: upgrade validation, origin, room and name, capacity. Each
//! rejection is checked for its status, headers and body, and for leaving no trace in a room.

use rstest::rstest;
use wschat_testkit::{ClientBuilder, ServerEvent, TestServer};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One character over the 32 a room or name may have.
const THIRTY_THREE: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// The headers of a valid upgrade, minus the ones named in `without`, plus `extra`.
fn upgrade_headers<'a>(without: &[&str], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers: Vec<(&str, &str)> = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ];
    headers.retain(|(name, _)| !without.contains(name));
    headers.extend_from_slice(extra);
    headers
}

#[rstest]
#[case::no_connection_upgrade(&["Connection"], &[], 400, "bad_request")]
#[case::connection_without_upgrade_token(&["Connection"], &[("Connection", "keep-alive")], 400, "bad_request")]
#[case::no_key(&["Sec-WebSocket-Key"], &[], 400, "bad_request")]
#[case::malformed_key(&["Sec-WebSocket-Key"], &[("Sec-WebSocket-Key", "not-a-key")], 400, "bad_request")]
#[case::no_version(&["Sec-WebSocket-Version"], &[], 426, "unsupported_version")]
#[case::old_version(&["Sec-WebSocket-Version"], &[("Sec-WebSocket-Version", "8")], 426, "unsupported_version")]
#[tokio::test]
async fn malformed_upgrades_are_refused_before_the_token_check(
    #[case] without: &[&str],
    #[case] extra: &[(&str, &str)],
    #[case] status: u16,
    #[case] label: &str,
    #[values(true, false)] right_token: bool,
) {
    let server = TestServer::start().await;
    let token = if right_token { server.token() } else { "wrong" };
    let path = format!("/?token={token}");
    let response = server
        .http("GET", &path, &upgrade_headers(without, extra))
        .await;
    assert_eq!(response.status, status, "{}", response.body);
    if status == 426 {
        assert_eq!(response.headers["sec-websocket-version"], "13");
    }
    let metrics = server.metrics().render();
    assert!(
        metrics.contains("wschat_connections_accepted_total 0"),
        "{metrics}"
    );
    let counted = format!(r#"wschat_handshakes_rejected_total{{reason="{label}"}} 1"#);
    assert!(metrics.contains(&counted), "{counted} in:\n{metrics}");
}

#[tokio::test]
async fn a_valid_raw_upgrade_gets_101_with_the_rfc_accept_key() {
    let server = TestServer::start().await;
    let path = format!("/?token={}", server.token());
    let response = server.http("GET", &path, &upgrade_headers(&[], &[])).await;
    assert_eq!(response.status, 101);
    assert_eq!(
        response.headers["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert!(response.headers["upgrade"]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
}

#[tokio::test]
async fn an_upgrade_with_another_method_is_405() {
    let server = TestServer::start().await;
    let path = format!("/?token={}", server.token());
    let response = server.http("POST", &path, &upgrade_headers(&[], &[])).await;
    assert_eq!(response.status, 405);
    assert_eq!(response.headers["allow"], "GET, HEAD");
}

#[tokio::test]
async fn a_64_kib_query_token_is_refused_as_too_long() {
    let server = TestServer::start().await;
    let path = format!("/?token={}", "x".repeat(64 * 1024));
    let response = server.http("GET", &path, &upgrade_headers(&[], &[])).await;
    assert_eq!(response.status, 414);
}

#[rstest]
#[case::allowed(Some("https://chat.example"), true)]
#[case::allowed_in_other_case(Some("https://Chat.Example"), true)]
#[case::second_allowed(Some("http://localhost:3000"), true)]
#[case::foreign(Some("https://evil.example"), false)]
#[case::allowed_host_other_scheme(Some("http://chat.example"), false)]
#[case::no_origin_header(None, true)]
#[tokio::test]
async fn origin_allowlist(#[case] origin: Option<&str>, #[case] admitted: bool) {
    let server = TestServer::start_with(|config| {
        config.allowed_origins = vec![
            "https://chat.example".into(),
            "http://localhost:3000".into(),
        ];
    })
    .await;
    let mut attempt = server.client().name("visitor");
    if let Some(origin) = origin {
        attempt = attempt.header("Origin", origin);
    }
    if admitted {
        assert_eq!(attempt.connect_ok().await.user(), "visitor");
    } else {
        let rejected = attempt.connect_rejected().await;
        assert_eq!(rejected.status, 403);
        assert_eq!(rejected.body, "origin not allowed");
        let metrics = server.metrics().render();
        assert!(
            metrics.contains(r#"wschat_handshakes_rejected_total{reason="origin"} 1"#),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn origin_is_checked_before_the_token() {
    let server = TestServer::start_with(|config| {
        config.allowed_origins = vec!["https://chat.example".into()];
    })
    .await;
    let rejected = server
        .client()
        .token("wrong")
        .header("Origin", "https://evil.example")
        .connect_rejected()
        .await;
    assert_eq!(rejected.status, 403);
}

/// `attempt` asking for `room` and `name` where they are given.
fn with_room_and_name(
    mut attempt: ClientBuilder,
    room: Option<&str>,
    name: Option<&str>,
) -> ClientBuilder {
    if let Some(room) = room {
        attempt = attempt.room(room);
    }
    if let Some(name) = name {
        attempt = attempt.name(name);
    }
    attempt
}

#[rstest]
#[case::bad_room(Some("a b"), None)]
#[case::bad_name(None, Some("<b>x</b>"))]
#[tokio::test]
async fn the_token_is_checked_before_room_and_name(
    #[case] room: Option<&str>,
    #[case] name: Option<&str>,
) {
    let server = TestServer::start().await;
    let rejected = with_room_and_name(server.client().token("wrong"), room, name)
        .connect_rejected()
        .await;
    assert_eq!(rejected.status, 401);
    assert_eq!(rejected.body, "invalid token");
}

#[rstest]
#[case::room_with_space(Some("a b"), None, "invalid room")]
#[case::room_too_long(Some(THIRTY_THREE), None, "invalid room")]
#[case::room_with_slash(Some("a/b"), None, "invalid room")]
#[case::name_non_ascii(None, Some("émile"), "invalid name")]
#[case::name_markup(None, Some("<b>x</b>"), "invalid name")]
#[case::name_too_long(None, Some(THIRTY_THREE), "invalid name")]
#[case::room_checked_before_name(Some("bad room"), Some("bad name"), "invalid room")]
#[tokio::test]
async fn invalid_room_or_name_is_400_naming_which(
    #[case] room: Option<&str>,
    #[case] name: Option<&str>,
    #[case] body_starts: &str,
) {
    let server = TestServer::start().await;
    let rejected = with_room_and_name(server.client(), room, name)
        .connect_rejected()
        .await;
    assert_eq!(rejected.status, 400);
    assert!(
        rejected.body.starts_with(body_starts),
        "{:?}",
        rejected.body
    );
}

#[rstest]
#[case::longest(&"a".repeat(32))]
#[case::every_allowed_character("Az09_.-")]
#[tokio::test]
async fn names_at_the_edge_of_the_pattern_are_accepted(#[case] name: &str) {
    let server = TestServer::start().await;
    let client = server.client().room(name).name(name).connect_ok().await;
    assert_eq!(
        (client.user(), client.welcome().room.as_str()),
        (name, name)
    );
}

#[tokio::test]
async fn room_defaults_to_lobby_and_name_to_a_guest() {
    let server = TestServer::start().await;
    let first = server.client().connect_ok().await;
    let second = server.client().connect_ok().await;
    assert_eq!(first.welcome().room, "lobby");
    assert!(first.user().starts_with("guest-"), "{}", first.user());
    assert_ne!(first.user(), second.user());
    assert_eq!(second.welcome().members, [first.user(), second.user()]);
}

#[tokio::test]
async fn a_name_already_in_the_room_is_409() {
    let server = TestServer::start().await;
    let _alice = server.client().name("alice").connect_ok().await;
    let rejected = server.client().name("alice").connect_rejected().await;
    assert_eq!(rejected.status, 409);
    assert_eq!(rejected.body, "name already taken in this room");
    // The same name is free in another room.
    server
        .client()
        .name("alice")
        .room("other")
        .connect_ok()
        .await;
}

#[tokio::test]
async fn a_name_is_free_again_once_its_holder_leaves() {
    let server = TestServer::start().await;
    let mut observer = server.client().name("observer").connect_ok().await;
    let alice = server.client().name("alice").connect_ok().await;
    assert!(matches!(observer.recv().await, ServerEvent::Join { .. }));
    alice.close().await;
    assert!(matches!(observer.recv().await, ServerEvent::Leave { user, .. } if user == "alice"));
    server.client().name("alice").connect_ok().await;
}

#[tokio::test]
async fn at_capacity_the_next_client_gets_503_with_retry_after() {
    let server = TestServer::start_with(|config| config.max_connections = 2).await;
    let mut first = server.client().name("first").connect_ok().await;
    let second = server.client().name("second").connect_ok().await;

    let rejected = server.client().name("third").connect_rejected().await;
    assert_eq!(rejected.status, 503);
    assert!(
        rejected.header("retry-after").parse::<u32>().is_ok(),
        "{:?}",
        rejected.headers
    );
    assert!(server
        .metrics()
        .render()
        .contains(r#"reason="capacity"} 1"#));

    assert!(matches!(first.recv().await, ServerEvent::Join { user, .. } if user == "second"));
    second.close().await;
    assert!(matches!(first.recv().await, ServerEvent::Leave { user, .. } if user == "second"));
    server.client().name("third").connect_ok().await;
}

#[tokio::test]
async fn capacity_is_checked_after_the_token() {
    let server = TestServer::start_with(|config| config.max_connections = 1).await;
    let _only = server.client().connect_ok().await;
    let rejected = server.client().token("wrong").connect_rejected().await;
    assert_eq!(rejected.status, 401);
}
