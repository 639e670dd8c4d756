//! One upgraded WebSocket: its read loop, send queue, limits and keepalive (SPEC §5, §6).
//!
//! A single task drives each connection with one `select!`: frames from the client, events
//! queued by the room, the ping timer, the idle deadline, a kick from the hub and the server's
//! shutdown signal. Queued events are drained into the write buffer and flushed once, so a busy
//! room costs one syscall per batch rather than per frame. A write that blocks on a client that
//! does not read still yields to a kick, shutdown or the idle deadline, so no connection can
//! hold its task hostage.
//!
//! Room semantics live in `hub.rs`; this module only moves frames and enforces per-connection
//! policy.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{Fuse, FutureExt};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::{interval_at, sleep, timeout, Instant, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::hub::{Joined, Kick, Membership};
use crate::metrics::Metrics;
use crate::protocol::{parse_client_frame, ClientFrame, ErrorCode, ServerEvent};

/// The WebSocket as this server sees it.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Read buffer per connection. Chat frames are small; tungstenite's 128 KiB default would make
/// idle connections expensive, and a bigger frame still arrives, just in more reads.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Bytes buffered before tungstenite writes on its own; we flush after every batch anyway.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Events moved from the queue into one write batch; bounds the time between reads.
const MAX_BATCH: usize = 256;

/// How long a server-initiated close waits for the client's answering close frame (outside
/// shutdown, which uses the configured grace period).
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The close reason of SPEC §6 for a server shutdown.
const SHUTDOWN_REASON: &str = "server shutting down";

/// A client refused by the rate limit this many times in a row, with no message accepted in
/// between, is flooding and is closed with 1008.
pub const MAX_CONSECUTIVE_RATE_LIMITED: u32 = 10;

/// Per-connection policy, taken from the `Config`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_message_bytes: usize,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl ConnectionLimits {
    /// The tungstenite configuration that enforces the size limit while reading, before a
    /// too-large message is ever buffered whole.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

/// Wraps an upgraded stream as the server side of a WebSocket.
pub async fn accept_socket(upgraded: Upgraded, limits: &ConnectionLimits) -> Socket {
    WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(limits.websocket_config()),
    )
    .await
}

/// Why a connection ended; decides the close frame and the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    ClientClosed(Option<u16>),
    Gone,
    Shutdown,
    SlowConsumer,
    Idle,
    TooBig,
    Binary,
    BadUtf8,
    ProtocolError,
    Flooding,
}

impl Ending {
    /// The close frame the server sends, if it is the one closing.
    fn close_frame(&self) -> Option<(CloseCode, &'static str)> {
        match self {
            Ending::ClientClosed(_) | Ending::Gone => None,
            Ending::Shutdown => Some((CloseCode::Away, SHUTDOWN_REASON)),
            Ending::Idle => Some((CloseCode::Away, "idle timeout")),
            Ending::SlowConsumer => Some((CloseCode::Again, "slow consumer")),
            Ending::TooBig => Some((CloseCode::Size, "message too big")),
            Ending::Binary => Some((CloseCode::Unsupported, "binary frames are not supported")),
            Ending::BadUtf8 => Some((CloseCode::Invalid, "invalid UTF-8")),
            Ending::ProtocolError => Some((CloseCode::Protocol, "protocol error")),
            Ending::Flooding => Some((CloseCode::Policy, "rate limit exceeded")),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Ending::ClientClosed(_) => "client_closed",
            Ending::Gone => "connection_lost",
            Ending::Shutdown => "shutdown",
            Ending::SlowConsumer => "slow_consumer",
            Ending::Idle => "idle",
            Ending::TooBig => "too_big",
            Ending::Binary => "binary",
            Ending::BadUtf8 => "invalid_utf8",
            Ending::ProtocolError => "protocol_error",
            Ending::Flooding => "rate_limited",
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled_at: Instant::now(),
        }
    }

    fn try_take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let earned = now.duration_since(self.refilled_at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One accepted chat connection, from its `welcome` to its close frame.
pub struct Connection {
    socket: Socket,
    // Field order is drop order: the capacity permit is released before the membership
    // announces `leave`, so whoever hears the leave can already take the freed slot.
    _capacity_permit: OwnedSemaphorePermit,
    membership: Membership,
    welcome: Utf8Bytes,
    events: mpsc::Receiver<Utf8Bytes>,
    /// Fused: polled again after it fired (or its sender went away), it stays pending.
    kicked: Fuse<oneshot::Receiver<Kick>>,
    /// Fires at the idle deadline as last set; see `Connection::idle_expired`.
    idle: Pin<Box<Sleep>>,
    /// When the client last sent any frame. Frames only update this; the timer is moved
    /// lazily when it fires, so a busy connection never touches the timer wheel per frame.
    last_heard: Instant,
    limits: ConnectionLimits,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    metrics: Metrics,
    peer: SocketAddr,
}

impl Connection {
    pub fn new(
        socket: Socket,
        joined: Joined,
        permit: OwnedSemaphorePermit,
        limits: ConnectionLimits,
        shutdown: CancellationToken,
        metrics: Metrics,
        peer: SocketAddr,
    ) -> Self {
        Self {
            socket,
            _capacity_permit: permit,
            membership: joined.membership,
            welcome: joined.welcome,
            events: joined.events,
            kicked: joined.kicked.fuse(),
            idle: Box::pin(sleep(limits.idle_timeout)),
            last_heard: Instant::now(),
            limits,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            metrics,
            peer,
        }
    }

    /// Runs the connection to its end, then closes it and leaves the room.
    pub async fn run(mut self) {
        self.metrics.connection_opened();
        tracing::info!(
            peer = %self.peer,
            user = %self.membership.name(),
            room = %self.membership.room(),
            "connection accepted"
        );
        let ending = self.serve().await;
        let close = ending.close_frame();
        self.finish(close).await;
        let code = match (&ending, close) {
            (Ending::ClientClosed(code), _) => *code,
            (_, Some((code, _))) => Some(u16::from(code)),
            _ => None,
        };
        tracing::info!(
            peer = %self.peer,
            user = %self.membership.name(),
            room = %self.membership.room(),
            close_code = code,
            reason = %ending.label(),
            "connection closed"
        );
        self.metrics.connection_closed(ending.label());
        // Dropping `self` drops the membership: the room hears `leave`.
    }

    async fn serve(&mut self) -> Ending {
        let welcome = Message::Text(self.welcome.clone());
        if let Err(ending) = self.write(welcome, false).await {
            return ending;
        }
        let first_ping = Instant::now() + self.limits.ping_interval;
        let mut ping = interval_at(first_ping, self.limits.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut limiter = RateLimiter::new(self.limits.rate_limit, self.limits.rate_burst);
        let mut refused_in_a_row = 0;

        loop {
            tokio::select! {
                biased;
                () = self.shutdown.as_mut() => return Ending::Shutdown,
                Ok(Kick::SlowConsumer) = &mut self.kicked => return Ending::SlowConsumer,
                () = self.idle.as_mut() => if self.idle_expired() { return Ending::Idle },
                frame = self.socket.next() => {
                    self.last_heard = Instant::now();
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(_))) => return Ending::Binary,
                        Some(Ok(Message::Close(frame))) => {
                            return Ending::ClientClosed(frame.map(|f| u16::from(f.code)));
                        }
                        // Pings are answered by tungstenite; any frame already reset the deadline.
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => return ending_for(error),
                        None => return Ending::Gone,
                    };
                    if !limiter.try_take() {
                        self.metrics.message_rate_limited();
                        refused_in_a_row += 1;
                        if refused_in_a_row >= MAX_CONSECUTIVE_RATE_LIMITED {
                            return Ending::Flooding;
                        }
                        let error = error_event(ErrorCode::RateLimited, "too many messages; slow down");
                        if let Err(ending) = self.write(error, false).await {
                            return ending;
                        }
                        continue;
                    }
                    refused_in_a_row = 0;
                    if let Some(error) = self.handle_text(text.as_str()) {
                        if let Err(ending) = self.write(error, false).await {
                            return ending;
                        }
                    }
                }
                event = self.events.recv() => {
                    // The hub holds the sender while we are a member; losing it means we were
                    // removed, and the kick branch above explains why.
                    let Some(event) = event else { return Ending::SlowConsumer };
                    if let Err(ending) = self.write(Message::Text(event), true).await {
                        return ending;
                    }
                }
                _ = ping.tick() => {
                    if let Err(ending) = self.write(Message::Ping(Bytes::new()), false).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Acts on one text frame; returns the `error` event to send back, if any.
    fn handle_text(&self, text: &str) -> Option<Message> {
        match parse_client_frame(text) {
            ClientFrame::Say(text) if text.trim().is_empty() => {
                Some(error_event(ErrorCode::EmptyMessage, "message is empty"))
            }
            ClientFrame::Say(text) => {
                self.membership.say(text);
                None
            }
            ClientFrame::BadRequest(reason) => Some(error_event(ErrorCode::BadRequest, &reason)),
        }
    }

    /// Whether the client has been silent for the idle timeout; if not, re-arms the timer
    /// for the deadline that follows from the last frame heard.
    fn idle_expired(&mut self) -> bool {
        idle_expired(&mut self.idle, self.last_heard, self.limits.idle_timeout)
    }

    /// Writes `first` (and, with `drain`, whatever else the room has queued) and flushes once.
    /// Gives up if the hub kicks us, the server shuts down or the idle deadline passes while
    /// the client is not reading.
    async fn write(&mut self, first: Message, drain: bool) -> Result<(), Ending> {
        let Self {
            socket,
            events,
            kicked,
            shutdown,
            idle,
            last_heard,
            limits,
            ..
        } = self;
        let batch = async {
            socket.feed(first).await?;
            if drain {
                for _ in 1..MAX_BATCH {
                    let Ok(event) = events.try_recv() else { break };
                    socket.feed(Message::Text(event)).await?;
                }
            }
            socket.flush().await
        };
        tokio::pin!(batch);
        loop {
            tokio::select! {
                biased;
                () = shutdown.as_mut() => return Err(Ending::Shutdown),
                Ok(Kick::SlowConsumer) = &mut *kicked => return Err(Ending::SlowConsumer),
                () = idle.as_mut() => if idle_expired(idle, *last_heard, limits.idle_timeout) {
                    return Err(Ending::Idle);
                },
                result = &mut batch => return result.map_err(ending_for),
            }
        }
    }

    /// Sends our close frame (if we are the one closing) and waits, bounded, for the close
    /// handshake to complete so the client sees a clean close rather than a reset.
    async fn finish(&mut self, close: Option<(CloseCode, &'static str)>) {
        let Some((code, reason)) = close else {
            // The client closed (or vanished): tungstenite has queued the answering close
            // frame, and sending it completes the handshake. Nothing more will be read.
            let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, self.socket.flush()).await;
            return;
        };
        let wait = if reason == SHUTDOWN_REASON {
            self.limits.shutdown_grace
        } else {
            CLOSE_HANDSHAKE_TIMEOUT
        };
        let socket = &mut self.socket;
        let handshake = async {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            if socket.close(Some(frame)).await.is_err() {
                return;
            }
            // Read until the client's answering close frame ends the stream.
            while let Some(Ok(_)) = socket.next().await {}
        };
        let _ = timeout(wait, handshake).await;
    }
}

/// The idle check behind `Connection::idle_expired`, on borrowed parts so `write` can use it
/// while the socket is borrowed too.
fn idle_expired(idle: &mut Pin<Box<Sleep>>, last_heard: Instant, idle_timeout: Duration) -> bool {
    let deadline = last_heard + idle_timeout;
    if deadline <= Instant::now() {
        return true;
    }
    idle.as_mut().reset(deadline);
    false
}

fn ending_for(error: WsError) -> Ending {
    match error {
        WsError::Capacity(_) => Ending::TooBig,
        WsError::Utf8(_) => Ending::BadUtf8,
        // A peer that vanished without a close frame is gone, not misbehaving.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Gone,
        WsError::Protocol(_) | WsError::AttackAttempt => Ending::ProtocolError,
        _ => Ending::Gone,
    }
}

fn error_event(code: ErrorCode, message: &str) -> Message {
    Message::Text(
        ServerEvent::Error {
            code,
            message: message.to_owned(),
        }
        .to_json()
        .into(),
    )
}

/// Upgrades, sends only close 1008 with `reason`, and drops the connection (auth-failure mode
/// `close`).
pub async fn close_immediately(mut socket: Socket, reason: &'static str) {
    let frame = CloseFrame {
        code: CloseCode::Policy,
        reason: reason.into(),
    };
    let handshake = async {
        if socket.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    };
    let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, handshake).await;
}
