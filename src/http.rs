//! The hyper service: routes `/`, `/healthz` and `/metrics`, and runs the WebSocket handshake.
//!
//! For an upgrade request it applies the pure policy of `handshake.rs`, then the two checks
//! that need live state (name free in the room, capacity), and only then answers `101`. The
//! upgraded stream is not served here: the pending upgrade is left in the connection's
//! `UpgradeSlot`, and the task that owns the TCP connection (in `server.rs`) picks it up once
//! hyper hands the socket over. That keeps one owned task per TCP connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::connection::ConnectionLimits;
use crate::handshake::{self, Decision, Policy, Rejection};
use crate::hub::{Hub, Reservation};
use crate::metrics::{self, Metrics};
use crate::throttle::Throttle;

/// The page served at `/` to browsers: what this is and how to connect.
const PAGE: &str = include_str!("page.html");

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
    },
    /// Auth-failure mode `close`: the socket only gets close 1008 with this reason.
    Refuse {
        upgrade: OnUpgrade,
        reason: &'static str,
    },
}

/// Where the service leaves a pending upgrade for the connection task.
pub type UpgradeSlot = Arc<Mutex<Option<PendingUpgrade>>>;

/// Answers one HTTP request on a connection from `peer`.
pub async fn handle(
    request: Request<Incoming>,
    state: Arc<AppState>,
    peer: SocketAddr,
    slot: UpgradeSlot,
) -> Result<Response<Body>, Infallible> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        return Ok(match request.uri().path() {
            "/" | "/healthz" | "/metrics" => method_not_allowed(),
            _ => plain(StatusCode::NOT_FOUND, "not found"),
        });
    }
    Ok(match request.uri().path() {
        "/" if handshake::wants_upgrade(&request) => upgrade(request, &state, peer, &slot),
        "/" => page(),
        "/healthz" => plain(StatusCode::OK, "ok"),
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
fn upgrade(
    mut request: Request<Incoming>,
    state: &AppState,
    peer: SocketAddr,
    slot: &UpgradeSlot,
) -> Response<Body> {
    let target = handshake::redacted_target(request.uri());
    let record = |rejection: Rejection| {
        state.metrics.handshake_rejected(rejection.label());
        tracing::info!(%peer, reason = rejection.label(), %target, "handshake rejected");
    };
    let reject = |rejection: Rejection| {
        record(rejection);
        rejection_response(rejection)
    };
    let throttled = state.throttle.blocked_for(peer.ip());
    let decision = handshake::decide(&request, &state.policy, throttled);
    if let Decision::Reject(Rejection::MissingToken | Rejection::InvalidToken)
    | Decision::UpgradeThenClose { .. } = decision
    {
        state.throttle.record_failure(peer.ip());
    }
    let (accept_key, pending) = match decision {
        Decision::Reject(rejection) => return reject(rejection),
        Decision::UpgradeThenClose {
            accept_key,
            rejection,
        } => {
            // The client sees 101 and then close 1008; the log and metric record the refusal.
            record(rejection);
            let reason = match rejection {
                Rejection::MissingToken => "missing token",
                _ => "invalid token",
            };
            let upgrade = hyper::upgrade::on(&mut request);
            (accept_key, PendingUpgrade::Refuse { upgrade, reason })
        }
        Decision::Accept(admission) => {
            let reservation = match state.hub.reserve(&admission.room, admission.name) {
                Ok(reservation) => reservation,
                Err(rejection) => return reject(rejection),
            };
            let Ok(permit) = Arc::clone(&state.capacity).try_acquire_owned() else {
                return reject(Rejection::AtCapacity);
            };
            let upgrade = hyper::upgrade::on(&mut request);
            (
                admission.accept_key,
                PendingUpgrade::Chat {
                    upgrade,
                    reservation,
                    permit,
                },
            )
        }
    };
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(pending);
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
    response
}

fn rejection_response(rejection: Rejection) -> Response<Body> {
    let mut response = plain(rejection.status(), &rejection.body());
    response.headers_mut().extend(rejection.headers());
    response
}

fn page() -> Response<Body> {
    let mut response = Response::new(Body::from(PAGE));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
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
