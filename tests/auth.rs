//! SPEC §4 step 3: who gets in. One table of token presentations, run in both auth-failure
//! modes; every case checks the full answer and that no room ever saw a rejected client.

use rstest::rstest;
use wschat_testkit::{AuthFailureMode, ConnectError, ServerEvent, TestServer};

/// Has a space (sent as `+`) and a literal `+` (sent as `%2B`), so the table can tell
/// form-urlencoded decoding apart from plain percent-decoding.
const SECRET: &str = "correct horse+battery";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    MissingToken,
    InvalidToken,
}

#[derive(Debug, Clone)]
enum Presentation {
    Query(String),
    Bearer(String),
    BearerAndQuery(String, String),
}

fn query(raw: &str) -> Presentation {
    Presentation::Query(raw.to_owned())
}

fn percent_encode_every_byte(text: &str) -> String {
    text.bytes().map(|byte| format!("%{byte:02X}")).collect()
}

#[rstest]
#[case::missing(query(""), Outcome::MissingToken)]
#[case::empty(query("token="), Outcome::MissingToken)]
#[case::wrong(query("token=wrong"), Outcome::InvalidToken)]
#[case::wrong_case(query("token=CORRECT+HORSE%2BBATTERY"), Outcome::InvalidToken)]
#[case::trailing_space(query("token=correct+horse%2Bbattery%20"), Outcome::InvalidToken)]
#[case::prefix_only(query("token=correct+horse"), Outcome::InvalidToken)]
#[case::plus_decodes_to_space(query("token=correct+horse%2Bbattery"), Outcome::Accepted)]
#[case::unencoded_plus_is_a_space(query("token=correct+horse+battery"), Outcome::InvalidToken)]
#[case::percent_encoded_right_token(
    Presentation::Query(format!("token={}", percent_encode_every_byte(SECRET))),
    Outcome::Accepted
)]
#[case::duplicate_right_first(
    query("token=correct+horse%2Bbattery&token=wrong"),
    Outcome::Accepted
)]
#[case::duplicate_wrong_first(
    query("token=wrong&token=correct+horse%2Bbattery"),
    Outcome::InvalidToken
)]
#[case::encoded_parameter_name(query("tok%65n=correct+horse%2Bbattery"), Outcome::Accepted)]
#[case::other_parameter_name(query("access_token=correct+horse%2Bbattery"), Outcome::MissingToken)]
#[case::parameter_name_prefix(query("tokens=correct+horse%2Bbattery"), Outcome::MissingToken)]
#[case::header_token(Presentation::Bearer(SECRET.into()), Outcome::Accepted)]
#[case::wrong_header_token(Presentation::Bearer("wrong".into()), Outcome::InvalidToken)]
#[case::header_beside_wrong_query(
    Presentation::BearerAndQuery(SECRET.into(), "token=wrong".into()),
    Outcome::Accepted
)]
#[case::wrong_header_beside_right_query(
    Presentation::BearerAndQuery("wrong".into(), "token=correct+horse%2Bbattery".into()),
    Outcome::InvalidToken
)]
#[case::token_of_64_kib_in_header(Presentation::Bearer("x".repeat(64 * 1024)), Outcome::InvalidToken)]
#[tokio::test]
async fn token_presentations(
    #[case] presentation: Presentation,
    #[case] expected: Outcome,
    #[values(AuthFailureMode::Http, AuthFailureMode::Close)] mode: AuthFailureMode,
) {
    let server = TestServer::start_with(|config| {
        config.token = Some(wschat_testkit::Token::new(SECRET));
        config.auth_failure = mode;
    })
    .await;
    let mut observer = server.client().name("observer").connect_ok().await;

    let attempt = server.client().name("intruder");
    let attempt = match presentation {
        Presentation::Query(raw) => attempt.raw_query(format!("{raw}&name=intruder")),
        Presentation::Bearer(token) => attempt.bearer(token),
        Presentation::BearerAndQuery(token, raw) => attempt
            .bearer(token)
            .raw_query(format!("{raw}&name=intruder")),
    };
    let result = attempt.connect().await;

    match (expected, mode, result) {
        (Outcome::Accepted, _, Ok(client)) => {
            // `connect` has already checked that `welcome` was the first frame.
            assert_eq!(client.user(), "intruder");
            assert_eq!(client.welcome().members, ["observer", "intruder"]);
            match observer.recv().await {
                ServerEvent::Join { room, user, .. } => {
                    assert_eq!((room.as_str(), user.as_str()), ("lobby", "intruder"));
                }
                other => panic!("expected the accepted client's join, got {other:?}"),
            }
            return;
        }
        (Outcome::MissingToken, AuthFailureMode::Http, Err(ConnectError::Rejected(rejected))) => {
            assert_eq!(rejected.status, 401);
            assert_eq!(
                rejected.header("www-authenticate"),
                r#"Bearer realm="wschat""#
            );
            assert_eq!(rejected.body, "missing token");
        }
        (Outcome::InvalidToken, AuthFailureMode::Http, Err(ConnectError::Rejected(rejected))) => {
            assert_eq!(rejected.status, 401);
            assert_eq!(
                rejected.header("www-authenticate"),
                r#"Bearer realm="wschat", error="invalid_token""#
            );
            assert_eq!(rejected.body, "invalid token");
        }
        (
            Outcome::MissingToken,
            AuthFailureMode::Close,
            Err(ConnectError::Closed { code, reason }),
        ) => {
            assert_eq!((code, reason.as_str()), (1008, "missing token"));
        }
        (
            Outcome::InvalidToken,
            AuthFailureMode::Close,
            Err(ConnectError::Closed { code, reason }),
        ) => {
            assert_eq!((code, reason.as_str()), (1008, "invalid token"));
        }
        (expected, mode, Ok(client)) => {
            panic!(
                "expected {expected:?} in {mode:?} mode, but connected as {}",
                client.user()
            )
        }
        (expected, mode, Err(error)) => {
            panic!("expected {expected:?} in {mode:?} mode, but {error}")
        }
    }

    // The rejected client never joined: the next thing the observer hears is a later join.
    let _barrier = server.client().name("barrier").connect_ok().await;
    match observer.recv().await {
        ServerEvent::Join { user, .. } => assert_eq!(user, "barrier", "a rejected client joined"),
        other => panic!("expected the barrier's join, got {other:?}"),
    }
    let label = if expected == Outcome::MissingToken {
        "missing_token"
    } else {
        "invalid_token"
    };
    let metrics = server.metrics().render();
    assert!(
        metrics.contains(&format!(
            r#"wschat_handshakes_rejected_total{{reason="{label}"}} 1"#
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains(SECRET),
        "the token leaked into the metrics"
    );
}
