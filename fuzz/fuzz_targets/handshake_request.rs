//! Fuzzes the handshake's request inspection: token, room and name extraction from arbitrary
//! request targets and headers, and the redaction of the target for logs.
#![no_main]

use http::header::{AUTHORIZATION, CONNECTION, HOST, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderValue, Request, Uri};
use libfuzzer_sys::fuzz_target;
use wschat::handshake::{decide, query_param, redacted_target, Decision, Policy, Rejection};
use wschat::{AuthFailureMode, Token};

const SECRET: &str = "fuzz-secret";

fuzz_target!(|data: &[u8]| {
    // Layout: request target, then up to three header values (Authorization, Origin, key),
    // separated by newlines.
    let mut parts = data.split(|&b| b == b'\n');
    let Ok(uri) = Uri::try_from(parts.next().unwrap_or_default()) else { return };
    let mut request = Request::get(uri.clone()).body(()).expect("a GET with a valid URI");
    let headers = request.headers_mut();
    headers.insert(HOST, HeaderValue::from_static("localhost"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    headers.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
    for name in [AUTHORIZATION, ORIGIN, SEC_WEBSOCKET_KEY] {
        if let Some(Ok(value)) = parts.next().map(HeaderValue::from_bytes) {
            request.headers_mut().insert(name, value);
        }
    }
    let policy = Policy {
        token: Token::new(SECRET),
        allowed_origins: vec!["https://chat.example".into()],
        auth_failure: AuthFailureMode::Http,
    };
    match decide(&request, &policy, None) {
        Decision::Accept(admission) => {
            assert!(wschat::handshake::is_valid_name(&admission.room));
            if let Some(name) = &admission.name {
                assert!(wschat::handshake::is_valid_name(name));
            }
        }
        Decision::Reject(rejection) => {
            assert!(!rejection.body().contains(SECRET));
            if rejection == Rejection::MissingToken {
                assert!(query_param(uri.query().unwrap_or_default(), "token").is_none());
            }
        }
        Decision::UpgradeThenClose { .. } => unreachable!("http mode never upgrades a refusal"),
    }
    // Whatever the target, its redacted form carries no token value but REDACTED.
    let shown = redacted_target(&uri);
    let query = shown.split_once('?').map(|(_, query)| query).unwrap_or_default();
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        let key_is_token = query_param(&format!("{key}=1"), "token").is_some();
        if key_is_token {
            assert_eq!(value, "REDACTED", "{shown}");
        }
    }
});
