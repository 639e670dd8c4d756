//! The hyper service: routes `/`, `/healthz` and `/metrics`, and runs the WebSocket handshake.
//!
//! For an upgrade request it applies the pure policy of `handshake.rs`, then the two checks
//! that need live state (name free in the room, capacity), and only then answers `101`. The
//! upgraded stream is not served here: the pending upgrade is left in the connection's
//! `UpgradeSlot`, and the task that owns the TCP connection (in `server.rs`) picks it up once
//! hyper hands the socket over. That keeps one owned task per TCP connection.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::connection::ConnectionLimits;
use crate::handshake::{self, Decision, Policy, Rejection};
use crate::hub::{Hub, Reservation};
use crate::identity::{Identity, Session};
use crate::log_format::PeerAddr;
use crate::metrics::{self, Metrics};
use crate::stream::HoldSwitch;
use crate::throttle::Throttle;

/// The chat client served at `/` to browsers: one self-contained HTML file with its CSS and
/// JS inline, so the binary is the whole product.
const PAGE: &str = include_str!("page.html");

/// The page's response headers, derived once from its text: the CSP names the SHA-256 of each
/// inline block, and the ETag is a digest of the whole page, so editing `page.html` can never
/// leave a stale hash or a stale cache entry behind.
static PAGE_HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| page_headers(PAGE));

/// Everything the page may do: run its own inline script and style (by hash, not
/// `'unsafe-inline'`), open a WebSocket to its own origin (CSP Level 3 lets `'self'` match
/// `ws:`/`wss:` on the same host and port), show the `data:` favicon that stops a
/// `/favicon.ico` request. Nothing else: no form submission (a broken script must not turn the
/// connect form into a GET that puts the token in the address bar), no framing, no `<base>`,
/// and Trusted Types with no policy, so any string reaching `innerHTML` throws instead of
/// rendering. `{script}` and `{style}` are replaced by the hash sources.
const PAGE_CSP_TEMPLATE: &str = "default-src 'none'; script-src {script}; style-src {style}; \
    connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

/// The page is baked into the binary, so it changes only with a new build: caches may keep
/// it but must revalidate (a cheap `304` via the ETag), so an upgrade is seen at once.
const PAGE_CACHE_CONTROL: &str = "no-cache";

/// Bytes of the page's SHA-256 kept in its ETag: 128 bits is plenty to tell versions apart.
const ETAG_DIGEST_BYTES: usize = 16;

/// Methods every route answers.
const ALLOWED_METHODS: &str = "GET, HEAD";

pub type Body = Full<Bytes>;

/// Everything a request handler needs, shared by all connections of one server.
pub struct AppState {
    pub policy: Policy,
    pub hub: Hub,
    pub metrics: Metrics,
    pub limits: ConnectionLimits,
    /// One permit per open chat connection (`--max-connections`).
    pub capacity: Arc<Semaphore>,
    pub throttle: Throttle,
    pub shutdown: CancellationToken,
}

/// A handshake that was answered `101`, waiting for hyper to hand over the socket.
pub enum PendingUpgrade {
    Chat {
        upgrade: OnUpgrade,
        reservation: Reservation,
        permit: OwnedSemaphorePermit,
        /// What a per-user connection watches (expiry, revocation); `None` for guests. Boxed:
        /// the connection's task keeps room for a pending upgrade all its life.
        session: Option<Box<Session>>,
    },
    /// Auth-failure mode `close`: the socket only gets close 1008 with this reason.
    Refuse {
        upgrade: OnUpgrade,
        reason: &'static str,
    },
}

/// Where the service leaves a pending upgrade for the connection task.
#[derive(Default)]
pub struct UpgradeSlot {
    pending: Mutex<Option<PendingUpgrade>>,
    hold: HoldSwitch,
}

impl UpgradeSlot {
    /// A slot that engages `hold` when it is filled, so the connection's stream keeps the `101`
    /// to send with the first frame.
    pub fn new(hold: HoldSwitch) -> Self {
        Self {
            pending: Mutex::new(None),
            hold,
        }
    }

    fn fill(&self, pending: PendingUpgrade) {
        *self.lock() = Some(pending);
        self.hold.engage();
    }

    /// The pending upgrade, if the service answered `101`.
    pub fn take(&self) -> Option<PendingUpgrade> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PendingUpgrade>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Answers one HTTP request on a connection from `peer`.
pub async fn handle(
    request: Request<Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
    slot: Arc<UpgradeSlot>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        return Ok(match request.uri().path() {
            "/" | "/healthz" | "/metrics" => method_not_allowed(),
            _ => plain(StatusCode::NOT_FOUND, "not found"),
        });
    }
    Ok(match request.uri().path() {
        "/" if handshake::wants_upgrade(&request) => upgrade(request, &state, peer, &slot).await,
        "/" => page(request.headers()),
        "/healthz" if state.hub.is_available() => plain(StatusCode::OK, "ok"),
        "/healthz" => plain(StatusCode::SERVICE_UNAVAILABLE, "redis unavailable"),
        "/metrics" => {
            let mut response = Response::new(Body::from(state.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    })
}

/// SPEC §4: the checks in order, then `101` with the pending upgrade left in `slot`.
async fn upgrade(
    mut request: Request<Incoming>,
    state: &AppState,
    peer: SocketAddr,
    slot: &UpgradeSlot,
) -> Response<Body> {
    let target = handshake::RedactedTarget(request.uri());
    let record = |rejection: Rejection| {
        state.metrics.handshake_rejected(rejection.label());
        tracing::info!(peer = %PeerAddr(peer), reason = rejection.label(), %target, "handshake rejected");
    };
    let reject = |rejection: Rejection| {
        record(rejection);
        rejection_response(rejection)
    };
    let throttled = state.throttle.blocked_for(peer.ip());
    let decision = handshake::decide(&request, &state.policy, throttled, SystemTime::now());
    let token_refused = match &decision {
        Decision::Reject(rejection) => rejection.is_token_refusal(),
        Decision::UpgradeThenClose { .. } => true,
        Decision::Accept(_) => false,
    };
    if token_refused {
        state.throttle.record_failure(peer.ip());
    }
    let (accept_key, pending, subprotocol) = match decision {
        Decision::Reject(rejection) => return reject(rejection),
        Decision::UpgradeThenClose {
            accept_key,
            rejection,
            subprotocol: offered,
        } => {
            // The client sees 101 and then close 1008; the log and metric record the refusal.
            record(rejection);
            let reason = rejection.close_reason();
            let upgrade = hyper::upgrade::on(&mut request);
            (
                accept_key,
                PendingUpgrade::Refuse { upgrade, reason },
                offered,
            )
        }
        Decision::Accept(admission) => {
            // The user's own limit first: it is about this client, whatever the server's load.
            let slot = match &admission.identity {
                Identity::Guest => None,
                Identity::User(credential) => match state.policy.auth.open_slot(&credential.name) {
                    Some(slot) => Some((credential, slot)),
                    None => return reject(Rejection::TooManyUserConnections),
                },
            };
            // Capacity is checked last (SPEC §4), but a full server must not create a room
            // (and evict an idle one) for a request it is about to refuse: without a permit,
            // the room and name are only checked.
            let Ok(permit) = Arc::clone(&state.capacity).try_acquire_owned() else {
                let rejection = match state.hub.check(&admission.room, &admission.claimant()) {
                    Ok(()) => Rejection::AtCapacity,
                    Err(rejection) => rejection,
                };
                return reject(rejection);
            };
            let reservation = match state
                .hub
                .reserve(&admission.room, admission.claimant())
                .await
            {
                Ok(reservation) => reservation,
                Err(rejection) => return reject(rejection),
            };
            let session = slot
                .map(|(credential, slot)| Box::new(state.policy.auth.session(credential, slot)));
            let upgrade = hyper::upgrade::on(&mut request);
            (
                admission.accept_key,
                PendingUpgrade::Chat {
                    upgrade,
                    reservation,
                    permit,
                    session,
                },
                admission.subprotocol,
            )
        }
    };
    slot.fill(pending);
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
    if subprotocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(handshake::SUBPROTOCOL),
        );
    }
    response
}

fn rejection_response(rejection: Rejection) -> Response<Body> {
    let mut response = plain(rejection.status(), &rejection.body());
    response.headers_mut().extend(rejection.headers());
    // A refused WebSocket client does not reuse the connection; closing it right after the
    // answer frees the socket without waiting for the client to hang up.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The chat page, or `304` when the client's cached copy (`If-None-Match`) is current.
fn page(request_headers: &HeaderMap) -> Response<Body> {
    let headers = &*PAGE_HEADERS;
    let cached = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| etag_list_matches(value, &headers[header::ETAG]));
    let mut response = if cached {
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Body::from(PAGE))
    };
    // A 304 repeats the validators and policies, so the cached copy is used under them.
    response.headers_mut().extend(headers.clone());
    response
}

fn page_headers(page: &str) -> HeaderMap {
    let hash_sources = |tag: &str| {
        inline_blocks(page, tag)
            .map(|block| format!("'sha256-{}'", base64(&Sha256::digest(block.as_bytes()))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let csp = PAGE_CSP_TEMPLATE
        .replace("{script}", &hash_sources("script"))
        .replace("{style}", &hash_sources("style"));
    let digest = Sha256::digest(page.as_bytes());
    let mut etag = String::from("\"");
    for byte in &digest[..ETAG_DIGEST_BYTES] {
        let _ = write!(etag, "{byte:02x}");
    }
    etag.push('"');

    let mut headers = HeaderMap::new();
    let mut set = |name, value: &str| {
        // Built from constants, hex and base64 only: always a valid header value.
        let value = HeaderValue::from_str(value)
            .unwrap_or_else(|_| unreachable!("page header {name:?} is ASCII"));
        headers.insert(name, value);
    };
    set(header::CONTENT_TYPE, "text/html; charset=utf-8");
    set(header::CONTENT_SECURITY_POLICY, &csp);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::CACHE_CONTROL, PAGE_CACHE_CONTROL);
    set(header::ETAG, &etag);
    headers
}

/// The contents of every bare `<tag>…</tag>` block, exactly as the browser hashes them.
///
/// The page writes its inline blocks without attributes; a `<script src>` or `<style media>`
/// would get no hash, be refused by the CSP, and fail the browser tests loudly.
fn inline_blocks<'a>(html: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = html;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let block = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(block)
    })
}

/// Weak comparison of an `If-None-Match` list with our ETag (RFC 9110 §13.1.2).
fn etag_list_matches(list: &str, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// Standard padded base64 (RFC 4648 §4), as CSP hash sources require. A few lines here
/// instead of a new dependency for encoding one 32-byte digest per process.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(
                    ALPHABET[(group >> (18 - 6 * i) & 0x3f) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn method_not_allowed() -> Response<Body> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    response
}

fn plain(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod page_tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), encoded, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn every_script_and_style_of_the_page_is_hashed() {
        // A block the extractor misses would have no hash and be refused by the browser.
        for tag in ["script", "style"] {
            let blocks = inline_blocks(PAGE, tag).count();
            assert_eq!(blocks, 1, "expected one bare <{tag}> block");
            assert_eq!(PAGE.matches(&format!("<{tag}")).count(), blocks, "<{tag}");
        }
        let csp = PAGE_HEADERS[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or_default();
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }

    #[test]
    fn inline_blocks_are_the_exact_text_between_the_tags() {
        let html = "<style>a{}</style><script>one</script>x<script>\ntwo\n</script>";
        assert_eq!(
            inline_blocks(html, "script").collect::<Vec<_>>(),
            ["one", "\ntwo\n"]
        );
        assert_eq!(inline_blocks(html, "style").collect::<Vec<_>>(), ["a{}"]);
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let etag = HeaderValue::from_static("\"abc\"");
        assert!(etag_list_matches("\"abc\"", &etag));
        assert!(etag_list_matches("W/\"abc\"", &etag));
        assert!(etag_list_matches("\"x\", \"abc\"", &etag));
        assert!(etag_list_matches("*", &etag));
        assert!(!etag_list_matches("\"abcd\"", &etag));
        assert!(!etag_list_matches("abc", &etag));
    }
}
