//! Identity (SPEC §10): per-user tokens from a users file, signed tokens (JWT), guests beside
//! users, several connections of one user, expiry and refresh while connected, revocation.
//!
//! The refusal tables run every case through each token carrier (query, `Authorization`,
//! `Sec-WebSocket-Protocol`) and check the whole answer: status, body, `WWW-Authenticate` and
//! the metric reason.

use std::time::Duration;

use rstest::rstest;
use wschat_testkit::{
    tamper_payload, unsigned_token, Carrier, Claims, ClientBuilder, ErrorCode, JwtKey, ServerEvent,
    TestServer, TestUsers,
};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "wschat";

const INVALID: &str = r#"Bearer realm="wschat", error="invalid_token""#;
const EXPIRED: &str =
    r#"Bearer realm="wschat", error="invalid_token", error_description="token expired""#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Hs256,
    EdDsa,
    Es256,
    Rs256,
}

impl Source {
    fn key(self) -> JwtKey {
        match self {
            Source::Hs256 => JwtKey::hs256(),
            Source::EdDsa => JwtKey::ed25519(),
            Source::Es256 => JwtKey::es256(),
            Source::Rs256 => JwtKey::rs256(),
        }
    }
}

/// A key of `source`'s kind that the server does not know. The RSA test key is fixed, so its
/// stand-in is an HS256 key (an algorithm mismatch as well as a wrong signature).
fn wrong_key(source: Source) -> JwtKey {
    match source {
        Source::Rs256 => JwtKey::hs256(),
        other => other.key(),
    }
}

/// A server that accepts only JWTs signed by `key`, with an issuer and audience to check.
async fn jwt_server(key: &JwtKey) -> TestServer {
    TestServer::start_with(|config| {
        config.token = None;
        config.jwt_issuer = Some(ISSUER.into());
        config.jwt_audience = Some(AUDIENCE.into());
        key.configure(config);
    })
    .await
}

/// A server whose only token source is `users`: no shared secret, so no guests.
async fn users_only_server(users: &TestUsers) -> TestServer {
    TestServer::start_with(|config| {
        config.token = None;
        users.configure(config);
    })
    .await
}

/// Claims every check passes: the right issuer and audience, and the `team-*` rooms.
fn good_claims(sub: &str) -> Claims {
    Claims::for_user(sub)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .rooms(&["team-*"])
}

#[derive(Debug, Clone, Copy)]
enum Case {
    Valid,
    Expired,
    NotYetValid,
    WrongSignature,
    WrongAlg,
    NoneAlg,
    Tampered,
    MissingSub,
    MissingExp,
    BadSubCharacters,
    WrongIssuer,
    WrongAudience,
    RoomNotAllowed,
    GuestSubject,
}

/// What the server must answer.
enum Expect {
    Accepted(&'static str),
    Refused {
        status: u16,
        body: &'static str,
        www_authenticate: &'static str,
        reason: &'static str,
    },
}

fn invalid() -> Expect {
    Expect::Refused {
        status: 401,
        body: "invalid token",
        www_authenticate: INVALID,
        reason: "invalid_token",
    }
}

/// The token and room of a case, and the answer it must get.
fn scenario(case: Case, source: Source, key: &JwtKey) -> (String, &'static str, Expect) {
    let in_team = "team-red";
    match case {
        Case::Valid => (
            key.mint(&good_claims("alice")),
            in_team,
            Expect::Accepted("alice"),
        ),
        Case::Expired => (
            key.mint(&good_claims("alice").expired_ago(Duration::from_secs(60))),
            in_team,
            Expect::Refused {
                status: 401,
                body: "token expired",
                www_authenticate: EXPIRED,
                reason: "expired_token",
            },
        ),
        Case::NotYetValid => (
            key.mint(&good_claims("alice").not_before_in(Duration::from_secs(600))),
            in_team,
            invalid(),
        ),
        // Another key of the same kind: the algorithm is right, the signature is not.
        Case::WrongSignature => (
            wrong_key(source).mint(&good_claims("alice")),
            in_team,
            invalid(),
        ),
        Case::WrongAlg => {
            let other = if key.algorithm() == jsonwebtoken::Algorithm::HS256 {
                "HS512"
            } else {
                "HS256"
            };
            (
                key.mint_with_header_alg(&good_claims("alice"), other),
                in_team,
                invalid(),
            )
        }
        Case::NoneAlg => (unsigned_token(&good_claims("alice")), in_team, invalid()),
        Case::Tampered => {
            let token = key.mint(&good_claims("alice"));
            (
                tamper_payload(&token, &good_claims("root")),
                in_team,
                invalid(),
            )
        }
        Case::MissingSub => (
            key.mint(&good_claims("alice").without("sub")),
            in_team,
            invalid(),
        ),
        Case::MissingExp => (
            key.mint(&good_claims("alice").without("exp")),
            in_team,
            invalid(),
        ),
        Case::BadSubCharacters => (key.mint(&good_claims("al ice")), in_team, invalid()),
        Case::WrongIssuer => (
            key.mint(&good_claims("alice").issuer("https://elsewhere")),
            in_team,
            invalid(),
        ),
        Case::WrongAudience => (
            key.mint(&good_claims("alice").audience("another-app")),
            in_team,
            invalid(),
        ),
        Case::RoomNotAllowed => (
            key.mint(&good_claims("alice")),
            "lobby",
            Expect::Refused {
                status: 403,
                body: "room not allowed",
                www_authenticate: "",
                reason: "room_not_allowed",
            },
        ),
        Case::GuestSubject => (
            key.mint(&good_claims("guest-7")),
            in_team,
            Expect::Refused {
                status: 403,
                body: "user names starting with guest- are reserved for guests",
                www_authenticate: "",
                reason: "reserved_name",
            },
        ),
    }
}

async fn check(server: &TestServer, client: ClientBuilder, expect: Expect) {
    match expect {
        Expect::Accepted(user) => {
            let client = client.connect_ok().await;
            assert_eq!(client.user(), user);
        }
        Expect::Refused {
            status,
            body,
            www_authenticate,
            reason,
        } => {
            let rejected = client.connect_rejected().await;
            assert_eq!(rejected.status, status);
            assert_eq!(rejected.body, body);
            assert_eq!(rejected.header("www-authenticate"), www_authenticate);
            let line = format!(r#"wschat_handshakes_rejected_total{{reason="{reason}"}} 1"#);
            server
                .wait_for_metrics(&line, |text| text.contains(&line))
                .await;
        }
    }
}

#[rstest]
#[case::valid(Case::Valid)]
#[case::expired(Case::Expired)]
#[case::not_yet_valid(Case::NotYetValid)]
#[case::wrong_signature(Case::WrongSignature)]
#[case::wrong_alg(Case::WrongAlg)]
#[case::none_alg(Case::NoneAlg)]
#[case::tampered_payload(Case::Tampered)]
#[case::missing_sub(Case::MissingSub)]
#[case::missing_exp(Case::MissingExp)]
#[case::bad_sub_characters(Case::BadSubCharacters)]
#[case::wrong_issuer(Case::WrongIssuer)]
#[case::wrong_audience(Case::WrongAudience)]
#[case::room_not_allowed(Case::RoomNotAllowed)]
#[case::guest_subject(Case::GuestSubject)]
#[tokio::test]
async fn signed_tokens_are_checked_in_every_carrier(
    #[case] case: Case,
    #[values(Source::Hs256, Source::EdDsa, Source::Es256, Source::Rs256)] source: Source,
    #[values(Carrier::Query, Carrier::Header, Carrier::Subprotocol)] carrier: Carrier,
) {
    let key = source.key();
    let server = jwt_server(&key).await;
    let (token, room, expect) = scenario(case, source, &key);
    let client = server.client().room(room).carry(carrier, token);
    check(&server, client, expect).await;
}

/// The classic confusion: an HS256 token whose HMAC secret is the server's public key.
#[rstest]
#[tokio::test]
async fn an_hs256_token_signed_with_the_public_key_is_refused(
    #[values(Source::EdDsa, Source::Es256, Source::Rs256)] source: Source,
    #[values(Carrier::Query, Carrier::Header, Carrier::Subprotocol)] carrier: Carrier,
) {
    let key = source.key();
    let server = jwt_server(&key).await;
    let token = key.mint_confused(&good_claims("alice"));
    let client = server.client().room("team-red").carry(carrier, token);
    check(&server, client, invalid()).await;
}

#[rstest]
#[tokio::test]
async fn users_file_tokens_name_their_user_in_every_carrier(
    #[values(Carrier::Query, Carrier::Header, Carrier::Subprotocol)] carrier: Carrier,
) {
    let users = TestUsers::new(&["alice", "bob"]);
    let server = users_only_server(&users).await;
    // The `name` parameter is ignored for a user.
    let alice = server
        .client()
        .name("mallory")
        .carry(carrier, users.token("alice"))
        .connect_ok()
        .await;
    assert_eq!(alice.user(), "alice");
    let wrong = server.client().carry(carrier, "f".repeat(64));
    check(&server, wrong, invalid()).await;
}

#[tokio::test]
async fn the_development_token_is_off_beside_a_per_user_source() {
    let users = TestUsers::new(&["alice"]);
    let server = users_only_server(&users).await;
    let development = server.client().token(wschat::DEVELOPMENT_TOKEN);
    check(&server, development, invalid()).await;
}

#[rstest]
#[case::query(Carrier::Query, None)]
#[case::header(Carrier::Header, None)]
#[case::subprotocol(Carrier::Subprotocol, Some("wschat"))]
#[tokio::test]
async fn the_subprotocol_answer_is_wschat_and_never_the_token(
    #[case] carrier: Carrier,
    #[case] answer: Option<&str>,
) {
    let users = TestUsers::new(&["alice"]);
    let server = TestServer::start_with(|config| users.configure(config)).await;
    let alice = server
        .client()
        .carry(carrier, users.token("alice"))
        .connect_ok()
        .await;
    assert_eq!(alice.subprotocol(), answer);
}

#[tokio::test]
async fn guests_beside_users_are_named_guest_something() {
    let users = TestUsers::new(&["alice"]);
    let server = TestServer::start_with(|config| users.configure(config)).await;
    let guest = server.client().name("alice").connect_ok().await;
    assert_eq!(guest.user(), "guest-alice");
    let anonymous = server.client().connect_ok().await;
    assert!(
        anonymous.user().starts_with("guest-"),
        "{}",
        anonymous.user()
    );
    let alice = server
        .client()
        .bearer(users.token("alice"))
        .connect_ok()
        .await;
    assert_eq!(alice.user(), "alice");
    assert_eq!(
        alice.welcome().members,
        ["guest-alice", anonymous.user(), "alice"]
    );
}

#[tokio::test]
async fn two_tabs_of_one_user_are_one_member() {
    let users = TestUsers::new(&["alice", "bob"]);
    let server = users_only_server(&users).await;
    let mut bob = server
        .client()
        .bearer(users.token("bob"))
        .connect_ok()
        .await;
    let mut first = server
        .client()
        .bearer(users.token("alice"))
        .connect_ok()
        .await;
    assert!(matches!(bob.recv().await, ServerEvent::Join { user, .. } if user == "alice"));
    let mut second = server
        .client()
        .subprotocol_token(users.token("alice"))
        .connect_ok()
        .await;
    assert_eq!(second.welcome().members, ["bob", "alice"]);

    // The second tab's arrival was silent: bob's next event is the message.
    second.say("from the second tab").await;
    assert!(matches!(bob.recv().await, ServerEvent::Message(m) if m.text == "from the second tab"));
    for tab in [&mut first, &mut second] {
        assert_eq!(tab.recv_message().await.text, "from the second tab");
    }
    // So is the first tab's departure.
    first.close().await;
    server
        .wait_for_metrics("the first tab gone", |text| {
            text.contains(r#"wschat_disconnects_total{reason="client_closed"} 1"#)
        })
        .await;
    second.say("still here").await;
    assert!(matches!(bob.recv().await, ServerEvent::Message(m) if m.text == "still here"));
    second.close().await;
    assert!(matches!(bob.recv().await, ServerEvent::Leave { user, .. } if user == "alice"));
}

#[tokio::test]
async fn a_user_over_the_connection_limit_gets_429() {
    let users = TestUsers::new(&["alice"]);
    let server = TestServer::start_with(|config| {
        users.configure(config);
        config.max_connections_per_user = 2;
    })
    .await;
    let token = users.token("alice");
    let first = server.client().bearer(token).room("a").connect_ok().await;
    let _second = server.client().bearer(token).room("b").connect_ok().await;
    let third = server.client().bearer(token).room("c");
    check(
        &server,
        third,
        Expect::Refused {
            status: 429,
            body: "too many connections for this user",
            www_authenticate: "",
            reason: "user_connections",
        },
    )
    .await;
    // Guests are not counted per user.
    let mut guests = Vec::new();
    for name in ["g1", "g2", "g3"] {
        guests.push(server.client().name(name).connect_ok().await);
    }
    first.close().await;
    server
        .wait_for_metrics("one connection of alice gone", |text| {
            text.contains(r#"wschat_disconnects_total{reason="client_closed"} 1"#)
        })
        .await;
    server.client().bearer(token).connect_ok().await;
}

#[tokio::test]
async fn removing_a_user_from_the_file_closes_every_connection_of_theirs() {
    let mut users = TestUsers::new(&["alice", "bob"]);
    let server = users_only_server(&users).await;
    let mut bob = server
        .client()
        .bearer(users.token("bob"))
        .connect_ok()
        .await;
    let alice_token = users.token("alice").to_owned();
    let mut tabs = Vec::new();
    for _ in 0..2 {
        tabs.push(server.client().bearer(&alice_token).connect_ok().await);
    }
    assert!(matches!(bob.recv().await, ServerEvent::Join { user, .. } if user == "alice"));

    users.remove("alice");
    for tab in &mut tabs {
        assert_eq!(tab.expect_close().await, (1008, "token revoked".to_owned()));
    }
    assert!(matches!(bob.recv().await, ServerEvent::Leave { user, .. } if user == "alice"));
    // One leave for both tabs: the next event is bob's own message.
    bob.say("bob stays").await;
    assert!(matches!(bob.recv().await, ServerEvent::Message(m) if m.text == "bob stays"));
    let refused = server.client().bearer(&alice_token);
    check(&server, refused, invalid()).await;
    server
        .wait_for_metrics("the reload counted", |text| {
            !text.contains(r#"wschat_reloads_total{source="users_file",result="ok"} 0"#)
                && text.contains(r#"wschat_disconnects_total{reason="token_revoked"} 2"#)
        })
        .await;
}

#[tokio::test]
async fn a_users_file_that_does_not_parse_at_reload_keeps_the_old_users() {
    let mut users = TestUsers::new(&["alice"]);
    let server = users_only_server(&users).await;
    let mut alice = server
        .client()
        .bearer(users.token("alice"))
        .connect_ok()
        .await;
    replace_file(users.path(), "this is not a users file\n");
    server
        .wait_for_metrics("a failed reload", |text| {
            text.contains(r#"wschat_reloads_total{source="users_file",result="error"} 1"#)
        })
        .await;
    alice.say("still connected").await;
    assert_eq!(alice.recv_message().await.text, "still connected");
    server
        .client()
        .bearer(users.token("alice"))
        .connect_ok()
        .await;
    // A good file afterwards is taken.
    replace_file(users.path(), "");
    assert_eq!(
        alice.expect_close().await,
        (1008, "token revoked".to_owned())
    );
    let reloads = ok_reloads(&server);
    let bob = users.add("bob");
    server
        .wait_for_metrics("the reload that adds bob", |_| {
            ok_reloads(&server) > reloads
        })
        .await;
    server.client().bearer(bob).connect_ok().await;
}

/// How many times the server has read the users file successfully.
fn ok_reloads(server: &TestServer) -> u64 {
    let text = server.metrics().render();
    let prefix = r#"wschat_reloads_total{source="users_file",result="ok"} "#;
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ok reload counter in:\n{text}"))
}

/// Replaces the file whole (write beside it, then rename), as editors and `wschat users` do, so
/// the server's reload never reads it half-written.
fn replace_file(path: &std::path::Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A JWT server whose tokens are told they are expiring as soon as they connect (a refresh
/// window far longer than their life) and closed right at `exp` (no leeway).
async fn expiring_server(key: &JwtKey) -> TestServer {
    TestServer::start_with(|config| {
        config.token = None;
        config.jwt_leeway = Duration::ZERO;
        config.jwt_refresh_window = Duration::from_secs(60);
        key.configure(config);
    })
    .await
}

#[tokio::test]
async fn a_connection_is_told_its_token_expires_and_is_closed_at_exp() {
    let key = JwtKey::ed25519();
    let server = expiring_server(&key).await;
    let claims = Claims::for_user("alice").expires_in(Duration::from_secs(2));
    let exp = claims.exp_millis().unwrap();
    let mut alice = server
        .client()
        .subprotocol_token(key.mint(&claims))
        .connect_ok()
        .await;
    assert_eq!(alice.recv().await, ServerEvent::Expiring { exp });
    let (code, reason) = alice.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    server
        .wait_for_metrics("the expiry counted", |text| {
            text.contains(r#"wschat_disconnects_total{reason="token_expired"} 1"#)
        })
        .await;
}

#[tokio::test]
async fn a_refresh_extends_the_connection() {
    let key = JwtKey::hs256();
    let server = expiring_server(&key).await;
    let short = Claims::for_user("alice").expires_in(Duration::from_secs(2));
    let mut alice = server.client().bearer(key.mint(&short)).connect_ok().await;
    assert!(matches!(alice.recv().await, ServerEvent::Expiring { .. }));
    let long = Claims::for_user("alice").expires_in(Duration::from_secs(3600));
    alice.refresh(&key.mint(&long)).await;
    assert_eq!(
        alice.recv().await,
        ServerEvent::Refreshed {
            exp: long.exp_millis().unwrap()
        }
    );
    // Past the first token's `exp`, the connection is still open and quiet.
    alice.expect_silence(Duration::from_secs(3)).await;
    alice.say("alive").await;
    assert_eq!(alice.recv_message().await.text, "alive");
}

#[rstest]
#[case::another_user(Claims::for_user("mallory"), false)]
#[case::expired(Claims::for_user("alice").expired_ago(Duration::from_secs(60)), false)]
#[case::wrong_key(Claims::for_user("alice"), true)]
#[tokio::test]
async fn an_invalid_refresh_changes_nothing(#[case] claims: Claims, #[case] wrong_key: bool) {
    let key = JwtKey::hs256();
    let server = expiring_server(&key).await;
    let mut alice = server
        .client()
        .bearer(key.mint(&Claims::for_user("alice").expires_in(Duration::from_secs(2))))
        .connect_ok()
        .await;
    assert!(matches!(alice.recv().await, ServerEvent::Expiring { .. }));
    let signer = if wrong_key { JwtKey::hs256() } else { key };
    alice.refresh(&signer.mint(&claims)).await;
    assert_eq!(alice.recv_error().await, ErrorCode::InvalidToken);
    let (code, reason) = alice.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
}

#[tokio::test]
async fn a_refresh_whose_rooms_exclude_the_room_closes_the_connection() {
    let key = JwtKey::hs256();
    let server = expiring_server(&key).await;
    let mut alice = server
        .client()
        .room("team-red")
        .bearer(key.mint(&Claims::for_user("alice").rooms(&["team-*"])))
        .connect_ok()
        .await;
    alice
        .refresh(&key.mint(&Claims::for_user("alice").rooms(&["lobby"])))
        .await;
    let (code, reason) = alice.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "room not allowed"));
}

#[tokio::test]
async fn a_guest_cannot_refresh() {
    let server = TestServer::start().await;
    let mut guest = server.client().connect_ok().await;
    guest.refresh("a.b.c").await;
    assert_eq!(guest.recv_error().await, ErrorCode::BadRequest);
}

/// A browser that offered `wschat` fails an upgrade that names no subprotocol, so in
/// auth-failure mode `close` the refusal's upgrade answers `wschat` too: the page then sees the
/// close frame's reason instead of a failed connection.
#[rstest]
#[case::wrong_token("f".repeat(64), "invalid token")]
#[case::expired_token(String::new(), "token expired")]
#[tokio::test]
async fn close_mode_answers_the_subprotocol_before_closing(
    #[case] token: String,
    #[case] reason: &str,
) {
    let key = JwtKey::hs256();
    let server = TestServer::start_with(|config| {
        config.token = None;
        config.auth_failure = wschat_testkit::AuthFailureMode::Close;
        key.configure(config);
    })
    .await;
    let token = if token.is_empty() {
        key.mint(&Claims::for_user("alice").expired_ago(Duration::from_secs(60)))
    } else {
        token
    };
    match server.client().subprotocol_token(token).connect().await {
        Err(wschat_testkit::ConnectError::Closed { code, reason: got }) => {
            assert_eq!((code, got.as_str()), (1008, reason));
        }
        Err(other) => panic!("expected close 1008 {reason:?}, got {other}"),
        Ok(client) => panic!("expected a refusal, but {} got in", client.user()),
    }
}

#[tokio::test]
async fn a_guest_reconnecting_as_its_guest_name_keeps_it() {
    let users = TestUsers::new(&["alice"]);
    let server = TestServer::start_with(|config| users.configure(config)).await;
    let first = server.client().connect_ok().await;
    let given = first.user().to_owned();
    assert!(given.starts_with("guest-"), "{given}");
    first.close().await;
    server
        .wait_for_metrics("the first connection gone", |text| {
            text.contains("wschat_connections 0")
        })
        .await;
    let again = server.client().name(&given).connect_ok().await;
    assert_eq!(again.user(), given, "not guest-{given}");
}
