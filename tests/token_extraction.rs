//! Property: the token the server reads from a query is exactly what a browser's
//! `new URL(url).searchParams.get('token')` returns: form-urlencoded decoding, first
//! occurrence. The oracle below is written out by hand from the WHATWG URL standard's
//! `application/x-www-form-urlencoded` parser, independently of the server's code.

use proptest::prelude::*;
use wschat::handshake::{query_param, HandshakeQuery};

/// WHATWG "percent-decode" of bytes, after `+` → space.
fn form_decode(part: &str) -> String {
    let bytes: Vec<u8> = part
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `searchParams.get(key)`, with the server's one documented difference: an empty value
/// counts as absent.
fn oracle(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (form_decode(name), form_decode(value)),
            None => (form_decode(pair), String::new()),
        })
        .find(|(name, _)| name == key)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Queries built from the characters that matter: separators, escapes, hex digits, a
/// non-ASCII letter, and pieces of the parameter name.
fn query_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("token".to_owned()),
        Just("tok%65n".to_owned()),
        Just("room".to_owned()),
        Just("name".to_owned()),
        Just("=".to_owned()),
        Just("&".to_owned()),
        Just("+".to_owned()),
        Just("%".to_owned()),
        Just("%2B".to_owned()),
        Just("%20".to_owned()),
        Just("%ff".to_owned()),
        Just("%C3%A9".to_owned()),
        Just("é".to_owned()),
        "[a-fA-F0-9]{1,3}",
        "[a-z]{1,4}",
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn token_extraction_matches_form_urlencoded_decoding(query in query_strategy()) {
        prop_assert_eq!(query_param(&query, "token"), oracle(&query, "token"));
    }

    /// What the handshake itself reads, in one pass over the query.
    #[test]
    fn the_handshake_reads_token_room_and_name_like_a_browser(query in query_strategy()) {
        let read = HandshakeQuery::parse(&query);
        prop_assert_eq!(read.token, oracle(&query, "token"));
        prop_assert_eq!(read.room, oracle(&query, "room"));
        prop_assert_eq!(read.name, oracle(&query, "name"));
    }

    #[test]
    fn token_extraction_never_panics_on_any_string(query in ".*") {
        let _ = query_param(&query, "token");
        let _ = HandshakeQuery::parse(&query);
    }
}

#[test]
fn oracle_agrees_with_known_browser_answers() {
    assert_eq!(oracle("token=a+b%2Bc", "token").as_deref(), Some("a b+c"));
    assert_eq!(
        oracle("x=1&token=first&token=second", "token").as_deref(),
        Some("first")
    );
    assert_eq!(oracle("tok%65n=v", "token").as_deref(), Some("v"));
    assert_eq!(oracle("token=%zz", "token").as_deref(), Some("%zz"));
    assert_eq!(oracle("token", "token"), None);
}
