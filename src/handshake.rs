//! The admission policy of SPEC §4 as a pure function: a request's head in, a `Decision` out.
//!
//! Nothing here touches a socket, the clock or shared state, so every rule is unit-tested on
//! plain `http::Request` values. The checks that need live state (is the name taken, is the
//! server full) come after this function, in `http.rs`, in the order the spec gives.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::AuthFailureMode;
use crate::hub::Claimant;
use crate::identity::{is_guest_name, AuthError, Authenticator, Identity, GUEST_PREFIX};

/// The room a connection joins when it names none.
pub const DEFAULT_ROOM: &str = "lobby";

/// Room and user names are 1 to 32 of `[A-Za-z0-9_.-]` (SPEC §4 step 4): safe in URLs, logs
/// and HTML without escaping surprises.
pub const MAX_NAME_LEN: usize = 32;

/// The only WebSocket version there is (RFC 6455 §4.1).
pub const WEBSOCKET_VERSION: &str = "13";

/// The subprotocol a browser offers beside its `bearer.<token>` entry, and the one the server
/// answers with: a browser fails a handshake whose answer names none of the offered ones, and
/// the token must never be echoed (SPEC §10).
pub const SUBPROTOCOL: &str = "wschat";

/// The prefix of the `Sec-WebSocket-Protocol` entry that carries a token.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// What the handshake policy needs from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub auth: Arc<Authenticator>,
    pub allowed_origins: Vec<String>,
    pub auth_failure: AuthFailureMode,
}

/// A request that passed every stateless check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The `Sec-WebSocket-Accept` value derived from the client's key.
    pub accept_key: HeaderValue,
    pub room: String,
    /// `None` when a guest named nobody; the hub assigns `guest-<n>`. A user's own name.
    pub name: Option<String>,
    /// Who the token says the client is.
    pub identity: Identity,
    /// Whether to answer `Sec-WebSocket-Protocol: wschat`.
    pub subprotocol: bool,
}

impl Admission {
    /// The place the hub is asked for.
    pub fn claimant(&self) -> Claimant {
        match (&self.identity, &self.name) {
            (Identity::User(_), Some(name)) => Claimant::User(name.clone()),
            (_, name) => Claimant::Guest(name.clone()),
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept(Admission),
    Reject(Rejection),
    /// Auth-failure mode `close`: upgrade with this key, then send only close `1008` carrying
    /// the rejection's reason.
    UpgradeThenClose {
        accept_key: HeaderValue,
        rejection: Rejection,
        /// Whether to answer `Sec-WebSocket-Protocol: wschat`: a browser that offered it fails
        /// an upgrade that names none, and would never see the close frame's reason.
        subprotocol: bool,
    },
}

/// Why a handshake was turned away. Each variant knows its status, headers and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not a valid WebSocket upgrade: {0}")]
    NotWebSocket(&'static str),
    #[error("unsupported WebSocket version")]
    UnsupportedVersion,
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("missing token")]
    MissingToken,
    #[error("invalid token")]
    InvalidToken,
    /// A per-user token whose only fault is its `exp` (SPEC §10).
    #[error("token expired")]
    ExpiredToken,
    /// A per-user name in the guests' namespace (SPEC §10).
    #[error("user names starting with guest- are reserved for guests")]
    ReservedName,
    #[error("room not allowed")]
    RoomNotAllowed,
    #[error("invalid room: must be 1-32 characters of A-Z a-z 0-9 _ . -")]
    InvalidRoom,
    #[error("invalid name: must be 1-32 characters of A-Z a-z 0-9 _ . -")]
    InvalidName,
    #[error("name already taken in this room")]
    NameTaken,
    #[error("too many connections for this user")]
    TooManyUserConnections,
    #[error("too many rooms")]
    TooManyRooms,
    #[error("server at capacity")]
    AtCapacity,
    /// A cluster node that cannot reach its Redis admits nobody (SPEC §11).
    #[error("redis unavailable")]
    Unavailable,
    #[error("too many failed attempts; try again later")]
    Throttled { retry_after_secs: u64 },
}

/// How long a client turned away for capacity should wait before retrying, in seconds.
/// Connections churn within seconds; a short hint spreads retries without idling a client long.
pub const RETRY_AFTER_SECS: &str = "5";

impl Rejection {
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::NotWebSocket(_) | Rejection::InvalidRoom | Rejection::InvalidName => {
                StatusCode::BAD_REQUEST
            }
            Rejection::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Rejection::OriginNotAllowed | Rejection::ReservedName | Rejection::RoomNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Rejection::MissingToken | Rejection::InvalidToken | Rejection::ExpiredToken => {
                StatusCode::UNAUTHORIZED
            }
            Rejection::NameTaken => StatusCode::CONFLICT,
            Rejection::TooManyUserConnections => StatusCode::TOO_MANY_REQUESTS,
            Rejection::TooManyRooms | Rejection::AtCapacity | Rejection::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Headers the status requires (RFC 6455 §4.4, RFC 6750 §3, RFC 9110 §10.2.3).
    pub fn headers(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self {
            Rejection::UnsupportedVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static(WEBSOCKET_VERSION),
                );
            }
            Rejection::MissingToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="wschat""#),
                );
            }
            Rejection::InvalidToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="wschat", error="invalid_token""#),
                );
            }
            Rejection::ExpiredToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer realm="wschat", error="invalid_token", error_description="token expired""#,
                    ),
                );
            }
            Rejection::TooManyRooms | Rejection::AtCapacity | Rejection::Unavailable => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            Rejection::Throttled { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        headers
    }

    /// The response body: the one-line reason.
    pub fn body(self) -> String {
        self.to_string()
    }

    /// Whether this is a refusal of the token (SPEC §4 step 3), answered by a close frame in
    /// auth-failure mode `close`, and counted against the client's address by the throttle.
    pub fn is_token_refusal(self) -> bool {
        matches!(
            self,
            Rejection::MissingToken
                | Rejection::InvalidToken
                | Rejection::ExpiredToken
                | Rejection::ReservedName
        )
    }

    /// The close reason of a token refusal in auth-failure mode `close`.
    pub fn close_reason(self) -> &'static str {
        match self {
            Rejection::MissingToken => "missing token",
            Rejection::ExpiredToken => "token expired",
            Rejection::ReservedName => "name reserved for guests",
            _ => "invalid token",
        }
    }

    /// Every value [`Rejection::label`] can return, so `/metrics` can show each at 0 from the
    /// first scrape.
    pub const LABELS: [&'static str; 16] = [
        "bad_request",
        "unsupported_version",
        "origin",
        "missing_token",
        "invalid_token",
        "expired_token",
        "reserved_name",
        "invalid_room",
        "room_not_allowed",
        "invalid_name",
        "name_taken",
        "user_connections",
        "too_many_rooms",
        "capacity",
        "unavailable",
        "throttled",
    ];

    /// A stable, low-cardinality label for logs and metrics; one of [`Rejection::LABELS`].
    pub fn label(self) -> &'static str {
        match self {
            Rejection::NotWebSocket(_) => "bad_request",
            Rejection::UnsupportedVersion => "unsupported_version",
            Rejection::OriginNotAllowed => "origin",
            Rejection::MissingToken => "missing_token",
            Rejection::InvalidToken => "invalid_token",
            Rejection::ExpiredToken => "expired_token",
            Rejection::ReservedName => "reserved_name",
            Rejection::InvalidRoom => "invalid_room",
            Rejection::RoomNotAllowed => "room_not_allowed",
            Rejection::InvalidName => "invalid_name",
            Rejection::NameTaken => "name_taken",
            Rejection::TooManyUserConnections => "user_connections",
            Rejection::TooManyRooms => "too_many_rooms",
            Rejection::AtCapacity => "capacity",
            Rejection::Unavailable => "unavailable",
            Rejection::Throttled { .. } => "throttled",
        }
    }
}

/// Whether a request asks to become a WebSocket at all (`Upgrade: websocket`); such requests
/// go through [`decide`] (and get a `400` if their upgrade is malformed) instead of being
/// served the page. Without it a request is ordinary HTTP, whatever `Sec-WebSocket-*` headers
/// it carries (RFC 6455 §4.2.1), and an upgrade to another protocol may be ignored
/// (RFC 9110 §7.8).
pub fn wants_upgrade<B>(request: &Request<B>) -> bool {
    header_has_token(request.headers(), header::UPGRADE, "websocket")
}

/// Runs checks 1 to 4 of SPEC §4, in order; the first that fails decides. `throttled` is how
/// long the client's address must still wait after too many failed attempts; it is checked
/// between the origin and the token, so a throttled address learns nothing about any token.
/// `now` is the clock signed tokens are checked against.
pub fn decide<B>(
    request: &Request<B>,
    policy: &Policy,
    throttled: Option<Duration>,
    now: SystemTime,
) -> Decision {
    let client_key = match check_upgrade(request) {
        Ok(key) => key,
        Err(rejection) => return Decision::Reject(rejection),
    };
    if !origin_allowed(request.headers(), &policy.allowed_origins) {
        return Decision::Reject(Rejection::OriginNotAllowed);
    }
    if let Some(wait) = throttled {
        // Round up: a client retrying at exactly `Retry-After` must find the window over.
        let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Decision::Reject(Rejection::Throttled { retry_after_secs });
    }
    let query = HandshakeQuery::parse(request.uri().query().unwrap_or_default());
    let offered = OfferedSubprotocols::parse(request.headers());
    let token = bearer_token(request.headers())
        .or(offered.token)
        .or(query.token.as_deref());
    let identity = match authenticate(token, &policy.auth, now) {
        Ok(identity) => identity,
        Err(rejection) => {
            return match policy.auth_failure {
                AuthFailureMode::Http => Decision::Reject(rejection),
                AuthFailureMode::Close => Decision::UpgradeThenClose {
                    accept_key: accept_key(client_key),
                    rejection,
                    subprotocol: offered.wschat,
                },
            }
        }
    };
    let room = match query.room {
        None => DEFAULT_ROOM.to_owned(),
        Some(room) if is_valid_name(&room) => room,
        Some(_) => return Decision::Reject(Rejection::InvalidRoom),
    };
    let name = match &identity {
        Identity::User(credential) => {
            if !credential.allows_room(&room) {
                return Decision::Reject(Rejection::RoomNotAllowed);
            }
            // A user's name is the credential's; a `name` parameter is ignored (SPEC §10).
            Some(credential.name.clone())
        }
        Identity::Guest => match query.name {
            None => None,
            Some(name) if !is_valid_name(&name) => return Decision::Reject(Rejection::InvalidName),
            // Beside real users, a guest speaks as `guest-<name>`, so nobody can take a
            // user's name with the shared secret. A name in the guests' namespace already (a
            // guest reconnecting as the `guest-<n>` it was given) stays as it is.
            Some(name) if policy.auth.has_per_user_source() && !is_guest_name(&name) => {
                Some(format!("{GUEST_PREFIX}{name}"))
            }
            Some(name) => Some(name),
        },
    };
    Decision::Accept(Admission {
        accept_key: accept_key(client_key),
        room,
        name,
        identity,
        subprotocol: offered.wschat,
    })
}

/// What the presented token (if any) proves, or the refusal to answer with.
fn authenticate(
    token: Option<&str>,
    auth: &Authenticator,
    now: SystemTime,
) -> Result<Identity, Rejection> {
    let token = token.ok_or(Rejection::MissingToken)?;
    auth.authenticate(token, now).map_err(|error| match error {
        AuthError::Invalid => Rejection::InvalidToken,
        AuthError::Expired => Rejection::ExpiredToken,
        AuthError::ReservedName => Rejection::ReservedName,
    })
}

/// The `Sec-WebSocket-Protocol` entries that matter here (RFC 6455 §4.2.1 item 8): whether
/// the client speaks `wschat`, and the token of a `bearer.<token>` entry (the first wins).
#[derive(Default)]
struct OfferedSubprotocols<'a> {
    wschat: bool,
    token: Option<&'a str>,
}

impl<'a> OfferedSubprotocols<'a> {
    fn parse(headers: &'a HeaderMap) -> Self {
        let mut offered = Self::default();
        let entries = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim);
        for entry in entries {
            if entry == SUBPROTOCOL {
                offered.wschat = true;
            } else if let Some(token) = entry.strip_prefix(BEARER_SUBPROTOCOL_PREFIX) {
                if offered.token.is_none() && !token.is_empty() {
                    offered.token = Some(token);
                }
            }
        }
        offered
    }
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2). Derived only for requests that
/// will be upgraded: refusals never pay for the SHA-1.
fn accept_key(client_key: &HeaderValue) -> HeaderValue {
    let accept = derive_accept_key(client_key.as_bytes());
    // Base64 is always a valid header value.
    HeaderValue::from_str(&accept).unwrap_or_else(|_| unreachable!("base64 is visible ASCII"))
}

/// RFC 6455 §4.2.1: what makes a request a WebSocket opening handshake.
fn check_upgrade<B>(request: &Request<B>) -> Result<&HeaderValue, Rejection> {
    if request.method() != Method::GET {
        return Err(Rejection::NotWebSocket("method must be GET"));
    }
    if request.version() < Version::HTTP_11 {
        return Err(Rejection::NotWebSocket("HTTP/1.1 or later required"));
    }
    let headers = request.headers();
    if !headers.contains_key(header::HOST) {
        return Err(Rejection::NotWebSocket("missing Host header"));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Rejection::NotWebSocket(
            "Connection header must include upgrade",
        ));
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(Rejection::NotWebSocket("Upgrade header must be websocket"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| is_websocket_key(key.as_bytes()))
        .ok_or(Rejection::NotWebSocket(
            "missing or malformed Sec-WebSocket-Key",
        ))?;
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(WEBSOCKET_VERSION.as_bytes())
    {
        return Err(Rejection::UnsupportedVersion);
    }
    Ok(key)
}

/// Whether any comma-separated element of any `name` header equals `token`, ignoring case.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|element| element.trim().eq_ignore_ascii_case(token))
}

/// A key is the base64 of 16 bytes: 22 significant characters and `==` (RFC 6455 §4.1).
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Requests without `Origin` come from non-browser clients and pass; browsers always send it.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    allowed
        .iter()
        .any(|candidate| candidate.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The credentials of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), if any.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// The first value of `key` in a form-urlencoded query, as `URLSearchParams.get` would return
/// it. An empty value counts as absent, like a blank form field.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
        .filter(|value| !value.is_empty())
}

/// The query parameters the handshake reads, each as [`query_param`] would return it, found
/// in one pass: decoding the query three times was a measurable share of a handshake.
#[derive(Default, PartialEq, Eq)]
pub struct HandshakeQuery {
    pub token: Option<String>,
    pub room: Option<String>,
    pub name: Option<String>,
}

impl fmt::Debug for HandshakeQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeQuery")
            .field("token", &self.token.as_ref().map(|_| "REDACTED"))
            .field("room", &self.room)
            .field("name", &self.name)
            .finish()
    }
}

impl HandshakeQuery {
    pub fn parse(query: &str) -> Self {
        // `Some("")` marks a parameter seen empty: its first occurrence still wins.
        let mut found = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*key {
                "token" => &mut found.token,
                "room" => &mut found.room,
                "name" => &mut found.name,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
            if found.token.is_some() && found.room.is_some() && found.name.is_some() {
                break;
            }
        }
        let given = |value: Option<String>| value.filter(|value| !value.is_empty());
        Self {
            token: given(found.token),
            room: given(found.room),
            name: given(found.name),
        }
    }
}

pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The request target with every `token` parameter's value replaced by `REDACTED`, for logs.
pub fn redacted_target(uri: &http::Uri) -> String {
    RedactedTarget(uri).to_string()
}

/// Displays a request target with every `token` value replaced by `REDACTED`, without
/// allocating: log lines format it only if they are actually written.
pub struct RedactedTarget<'a>(pub &'a http::Uri);

impl fmt::Display for RedactedTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.path())?;
        let Some(query) = self.0.query() else {
            return Ok(());
        };
        for (index, pair) in query.split('&').enumerate() {
            f.write_str(if index == 0 { "?" } else { "&" })?;
            let (raw_key, _) = pair.split_once('=').unwrap_or((pair, ""));
            // Compare the decoded key, so `tok%65n=` is caught just like `token=`.
            let is_token = form_urlencoded::parse(raw_key.as_bytes())
                .next()
                .is_some_and(|(key, _)| key == "token");
            if is_token {
                write!(f, "{raw_key}=REDACTED")?;
            } else {
                f.write_str(pair)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Token;

    const SECRET: &str = "s3cret";
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn labels_lists_every_rejection_once() {
        let every = [
            Rejection::NotWebSocket("x"),
            Rejection::UnsupportedVersion,
            Rejection::OriginNotAllowed,
            Rejection::MissingToken,
            Rejection::InvalidToken,
            Rejection::ExpiredToken,
            Rejection::ReservedName,
            Rejection::InvalidRoom,
            Rejection::RoomNotAllowed,
            Rejection::InvalidName,
            Rejection::NameTaken,
            Rejection::TooManyUserConnections,
            Rejection::TooManyRooms,
            Rejection::AtCapacity,
            Rejection::Unavailable,
            Rejection::Throttled {
                retry_after_secs: 1,
            },
        ];
        // Exhaustive on purpose: a new variant stops this compiling until it is listed above.
        for rejection in every {
            match rejection {
                Rejection::NotWebSocket(_)
                | Rejection::UnsupportedVersion
                | Rejection::OriginNotAllowed
                | Rejection::MissingToken
                | Rejection::InvalidToken
                | Rejection::ExpiredToken
                | Rejection::ReservedName
                | Rejection::InvalidRoom
                | Rejection::RoomNotAllowed
                | Rejection::InvalidName
                | Rejection::NameTaken
                | Rejection::TooManyUserConnections
                | Rejection::TooManyRooms
                | Rejection::AtCapacity
                | Rejection::Unavailable
                | Rejection::Throttled { .. } => {}
            }
        }
        let labels: Vec<&str> = every.iter().map(|r| r.label()).collect();
        assert_eq!(labels, Rejection::LABELS);
    }

    fn policy(mode: AuthFailureMode) -> Policy {
        Policy {
            auth: Arc::new(Authenticator::shared_secret_only(Token::new(SECRET))),
            allowed_origins: vec![],
            auth_failure: mode,
        }
    }

    fn upgrade(uri: &str) -> http::request::Builder {
        Request::get(uri)
            .header(header::HOST, "localhost")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_KEY, KEY)
            .header(header::SEC_WEBSOCKET_VERSION, "13")
    }

    fn decide_http(request: Request<()>) -> Decision {
        decide(
            &request,
            &policy(AuthFailureMode::Http),
            None,
            SystemTime::now(),
        )
    }

    #[test]
    fn accepts_and_derives_the_rfc_accept_key() {
        let Decision::Accept(admission) =
            decide_http(upgrade("/?token=s3cret&room=dev&name=al").body(()).unwrap())
        else {
            panic!("expected acceptance");
        };
        // The worked example of RFC 6455 §1.3.
        assert_eq!(admission.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(admission.room, "dev");
        assert_eq!(admission.name.as_deref(), Some("al"));
    }

    #[test]
    fn defaults_room_and_leaves_name_to_the_hub() {
        let Decision::Accept(admission) =
            decide_http(upgrade("/?token=s3cret&room=&name=").body(()).unwrap())
        else {
            panic!("expected acceptance");
        };
        assert_eq!(admission.room, DEFAULT_ROOM);
        assert_eq!(admission.name, None);
    }

    #[test]
    fn malformed_upgrades_are_bad_requests() {
        let cases = [
            upgrade("/?token=s3cret").method("POST"),
            upgrade("/?token=s3cret").version(Version::HTTP_10),
            Request::get("/?token=s3cret")
                .header(header::HOST, "h")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_KEY, KEY)
                .header(header::SEC_WEBSOCKET_VERSION, "13"),
            Request::get("/?token=s3cret")
                .header(header::HOST, "h")
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_KEY, "short")
                .header(header::SEC_WEBSOCKET_VERSION, "13"),
        ];
        for builder in cases {
            let request = builder.body(()).unwrap();
            let decision = decide_http(request);
            assert!(
                matches!(decision, Decision::Reject(Rejection::NotWebSocket(_))),
                "{decision:?}"
            );
        }
    }

    #[test]
    fn other_versions_get_426() {
        let mut request = upgrade("/?token=s3cret").body(()).unwrap();
        request
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(
            decide_http(request),
            Decision::Reject(Rejection::UnsupportedVersion)
        );
        assert_eq!(
            Rejection::UnsupportedVersion.headers()[header::SEC_WEBSOCKET_VERSION],
            "13"
        );
    }

    #[test]
    fn origin_is_checked_before_the_token() {
        let policy = Policy {
            allowed_origins: vec!["https://chat.example".into()],
            ..policy(AuthFailureMode::Http)
        };
        let foreign = upgrade("/")
            .header(header::ORIGIN, "https://evil.example")
            .body(())
            .unwrap();
        assert_eq!(
            decide(&foreign, &policy, None, SystemTime::now()),
            Decision::Reject(Rejection::OriginNotAllowed)
        );
        let own = upgrade("/?token=s3cret")
            .header(header::ORIGIN, "https://CHAT.example")
            .body(())
            .unwrap();
        assert!(matches!(
            decide(&own, &policy, None, SystemTime::now()),
            Decision::Accept(_)
        ));
        let no_origin = upgrade("/?token=s3cret").body(()).unwrap();
        assert!(matches!(
            decide(&no_origin, &policy, None, SystemTime::now()),
            Decision::Accept(_)
        ));
    }

    #[test]
    fn close_mode_upgrades_token_failures_only() {
        let close = policy(AuthFailureMode::Close);
        let wrong = upgrade("/?token=nope").body(()).unwrap();
        assert!(matches!(
            decide(&wrong, &close, None, SystemTime::now()),
            Decision::UpgradeThenClose {
                rejection: Rejection::InvalidToken,
                ..
            }
        ));
        let bad_room = upgrade("/?token=s3cret&room=a%20b").body(()).unwrap();
        assert_eq!(
            decide(&bad_room, &close, None, SystemTime::now()),
            Decision::Reject(Rejection::InvalidRoom)
        );
    }

    #[test]
    fn bearer_header_wins_over_the_query() {
        let request = upgrade("/?token=wrong")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(())
            .unwrap();
        assert!(matches!(decide_http(request), Decision::Accept(_)));
        let basic = upgrade("/?token=s3cret")
            .header(header::AUTHORIZATION, "Basic czNjcmV0")
            .body(())
            .unwrap();
        assert!(
            matches!(decide_http(basic), Decision::Accept(_)),
            "non-bearer auth is ignored"
        );
    }

    #[test]
    fn a_subprotocol_token_comes_after_the_header_and_before_the_query() {
        let offered = |protocols: &str, query: &str| {
            upgrade(&format!("/{query}"))
                .header(header::SEC_WEBSOCKET_PROTOCOL, protocols)
                .body(())
                .unwrap()
        };
        let Decision::Accept(admission) =
            decide_http(offered("wschat, bearer.s3cret", "?token=no"))
        else {
            panic!("the bearer. entry wins over the query");
        };
        assert!(admission.subprotocol, "wschat is answered");
        let Decision::Accept(admission) = decide_http(offered("bearer.s3cret", "")) else {
            panic!("a bearer. entry alone is a token");
        };
        assert!(
            !admission.subprotocol,
            "nothing offered that can be answered"
        );
        assert_eq!(
            decide_http(offered("wschat, bearer.wrong", "?token=s3cret")),
            Decision::Reject(Rejection::InvalidToken)
        );
        let header_wins = upgrade("/")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .header(header::SEC_WEBSOCKET_PROTOCOL, "wschat, bearer.wrong")
            .body(())
            .unwrap();
        assert!(matches!(decide_http(header_wins), Decision::Accept(_)));
        assert_eq!(
            decide_http(offered("wschat, bearer.", "")),
            Decision::Reject(Rejection::MissingToken)
        );
    }

    #[test]
    fn a_throttled_address_gets_429_before_the_token_is_looked_at() {
        let request = upgrade("/?token=s3cret").body(()).unwrap();
        let decision = decide(
            &request,
            &policy(AuthFailureMode::Close),
            Some(Duration::from_millis(1500)),
            SystemTime::now(),
        );
        assert_eq!(
            decision,
            Decision::Reject(Rejection::Throttled {
                retry_after_secs: 2
            })
        );
        assert_eq!(
            Rejection::Throttled {
                retry_after_secs: 2
            }
            .headers()[header::RETRY_AFTER],
            "2"
        );
    }

    #[test]
    fn names_follow_the_pattern() {
        assert!(is_valid_name("a"));
        assert!(is_valid_name("Alice_01.dev-x"));
        assert!(is_valid_name(&"x".repeat(32)));
        assert!(!is_valid_name(&"x".repeat(33)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("émile"));
    }

    #[test]
    fn redaction_hides_every_token_spelling() {
        let uri: http::Uri = "/?room=a&token=s3cret&tok%65n=x&token=y&name=b"
            .parse()
            .unwrap();
        let shown = redacted_target(&uri);
        assert_eq!(
            shown,
            "/?room=a&token=REDACTED&tok%65n=REDACTED&token=REDACTED&name=b"
        );
        let plain: http::Uri = "/healthz".parse().unwrap();
        assert_eq!(redacted_target(&plain), "/healthz");
    }

    #[test]
    fn one_pass_query_reading_agrees_with_query_param() {
        for query in [
            "",
            "token=a&room=r&name=n",
            "token=&token=b",
            "token=b&token=",
            "tok%65n=x&token=y",
            "room=a&room=b&name=&name=c",
            "token=a+b%2B&&=&room",
            "name=n&token=t&room=r&token=u&extra=1",
            "%FF=1&token=%FF%FE",
        ] {
            let read = HandshakeQuery::parse(query);
            assert_eq!(
                read.token,
                query_param(query, "token"),
                "token in {query:?}"
            );
            assert_eq!(read.room, query_param(query, "room"), "room in {query:?}");
            assert_eq!(read.name, query_param(query, "name"), "name in {query:?}");
        }
    }
}
