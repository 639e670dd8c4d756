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

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, timeout, Instant, Sleep};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::hub::{Backlog, Joined, Membership, PendingPost, Posting, SayError};
use crate::identity::{RefreshError, Refreshed, Session, SessionEvent};
use crate::log_format::PeerAddr;
use crate::metrics::Metrics;
use crate::protocol::{parse_client_frame, ClientFrame, ErrorCode, ServerEvent};
use crate::queue::{EventQueue, Kick, Next};
use crate::stream::TakenOver;

/// The WebSocket as this server sees it.
pub type Socket = WebSocketStream<TcpStream>;

/// Read buffer per connection, and the most read from the socket at once. Chat frames are
/// small (a typical line of chat is well under 512 bytes), and this buffer is most of what an
/// idle connection costs; tungstenite's 128 KiB default would make idle connections expensive.
/// A bigger frame still arrives whole (the buffer grows to fit it), just in more reads.
const READ_BUFFER_BYTES: usize = 512;

/// Bytes buffered before tungstenite writes on its own; we flush after every batch anyway.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// How long a server-initiated close waits for the client's answering close frame (outside
/// shutdown, which uses the configured grace period).
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most a closing connection reads and discards after its input became unparsable.
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Read size while discarding; allocated only for the connection that lingers.
const LINGER_READ_BYTES: usize = 16 * 1024;

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

/// Wraps a taken-over stream, whose held `101` has been sent, as the server side of a WebSocket.
pub async fn accept_socket(taken: TakenOver, limits: &ConnectionLimits) -> Socket {
    debug_assert!(taken.unsent.is_empty(), "the 101 must be sent first");
    let config = Some(limits.websocket_config());
    if taken.read_ahead.is_empty() {
        WebSocketStream::from_raw_socket(taken.tcp, Role::Server, config).await
    } else {
        // A client may send its first frames without waiting for the 101.
        let early = taken.read_ahead.to_vec();
        WebSocketStream::from_partially_read(taken.tcp, early, Role::Server, config).await
    }
}

/// Sends the held `101` and `welcome` as the first frame in one write, then wraps the stream
/// as a WebSocket.
///
/// The welcome is written straight to the socket, before tungstenite takes over: it can be the
/// largest frame a connection ever gets (every member and up to `--history` messages), and
/// tungstenite's write buffer would keep that capacity for the connection's whole life. A
/// client that does not take its welcome within the idle timeout, or before the server starts
/// shutting down, is dropped.
pub async fn accept_with_welcome(
    mut taken: TakenOver,
    welcome: Utf8Bytes,
    limits: &ConnectionLimits,
    shutdown: &CancellationToken,
) -> io::Result<Socket> {
    let frame = Frame::message(Bytes::from(welcome), OpCode::Data(Data::Text), true);
    let mut first_write = std::mem::take(&mut taken.unsent);
    first_write.reserve(frame.len());
    frame
        .format(&mut first_write)
        .map_err(|error| io::Error::other(error.to_string()))?;
    tokio::select! {
        written = timeout(limits.idle_timeout, taken.tcp.write_all(&first_write)) => written
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "welcome not taken in time"))??,
        () = shutdown.cancelled() => {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "server shutting down"));
        }
    }
    drop(first_write);
    Ok(accept_socket(taken, limits).await)
}

/// Every reason a connection can end for, as logged and counted: `/metrics` shows each at 0
/// from the first scrape.
pub const DISCONNECT_REASONS: [&str; 13] = [
    "client_closed",
    "connection_lost",
    "shutdown",
    "slow_consumer",
    "idle",
    "too_big",
    "binary",
    "invalid_utf8",
    "protocol_error",
    "rate_limited",
    "token_expired",
    "token_revoked",
    "room_not_allowed",
];

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
    TokenExpired,
    TokenRevoked,
    RoomNotAllowed,
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
            Ending::TokenExpired => Some((CloseCode::Policy, "token expired")),
            Ending::TokenRevoked => Some((CloseCode::Policy, "token revoked")),
            Ending::RoomNotAllowed => Some((CloseCode::Policy, "room not allowed")),
        }
    }

    /// Whether the client's bytes can no longer be parsed as frames: the rest of an oversized
    /// frame may still be arriving, or framing itself was broken.
    fn leaves_unparsable_input(&self) -> bool {
        matches!(self, Ending::TooBig | Ending::ProtocolError)
    }

    /// One of [`DISCONNECT_REASONS`].
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
            Ending::TokenExpired => "token_expired",
            Ending::TokenRevoked => "token_revoked",
            Ending::RoomNotAllowed => "room_not_allowed",
        }
    }
}

/// The one timer of a connection: it fires for the next ping or at the idle deadline,
/// whichever comes first. Frames from the client only record the time; the timer is moved
/// when it fires, so a busy connection never touches the timer wheel per frame.
struct Keepalive {
    timer: Pin<Box<Sleep>>,
    last_heard: Instant,
    next_ping: Instant,
    ping_interval: Duration,
    idle_timeout: Duration,
}

/// What a firing keepalive timer asks for.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Nothing,
    Ping,
    Idle,
}

impl Keepalive {
    fn new(ping_interval: Duration, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        let next_ping = now + ping_interval;
        Self {
            timer: Box::pin(sleep_until(next_ping.min(now + idle_timeout))),
            last_heard: now,
            next_ping,
            ping_interval,
            idle_timeout,
        }
    }

    fn heard_from_client(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Decides what the timer firing means and re-arms it.
    fn fired(&mut self) -> Due {
        let now = Instant::now();
        let idle_at = self.last_heard + self.idle_timeout;
        if now >= idle_at {
            return Due::Idle;
        }
        let due = if now >= self.next_ping {
            self.next_ping = now + self.ping_interval;
            Due::Ping
        } else {
            Due::Nothing
        };
        self.timer.as_mut().reset(self.next_ping.min(idle_at));
        due
    }
}

/// Posts one connection may have on their way through a cluster's Redis at once, before it
/// stops reading its client: enough to keep Redis's calls full, little enough to bound memory.
const MAX_POSTS_IN_FLIGHT: usize = 64;

/// A connection's posts under way, in the order it made them. Allocated on the first one: a
/// single node never has any, and an idle connection keeps only the pointer.
type PostsInFlight = Option<Box<FuturesOrdered<PendingPost>>>;

/// The next post that completes, or never when none is under way.
async fn next_posted(posts: &mut PostsInFlight) -> Result<Backlog, SayError> {
    match posts {
        Some(posts) if !posts.is_empty() => match posts.next().await {
            Some(posted) => posted,
            None => std::future::pending().await,
        },
        _ => std::future::pending().await,
    }
}

/// What became of one text frame from the client.
enum Reply {
    /// Posted to the room.
    Posted(Backlog),
    /// On its way through Redis; the answer comes later, in order.
    Pending(PendingPost),
    /// This frame goes back to the client alone: an `error`, or `refreshed`.
    Answer(Message),
    /// The frame ends the connection (a `refresh` whose rooms exclude this one).
    End(Ending),
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

/// What an admitted connection holds for as long as it is open: its place under
/// `--max-connections`, and for a per-user identity its session (SPEC §10).
pub struct Seat {
    pub permit: OwnedSemaphorePermit,
    pub session: Option<Box<Session>>,
}

/// One accepted chat connection, from its `welcome` to its close frame.
pub struct Connection {
    socket: Socket,
    // Field order is drop order: the capacity permit is released before the membership
    // announces `leave`, so whoever hears the leave can already take the freed slot.
    _capacity_permit: OwnedSemaphorePermit,
    membership: Membership,
    events: EventQueue,
    /// A per-user identity's expiry or revocation watch (SPEC §10); boxed, and absent for
    /// guests, so an idle guest connection pays one pointer for it.
    session: Option<Box<Session>>,
    posts_in_flight: PostsInFlight,
    keepalive: Keepalive,
    limits: ConnectionLimits,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    metrics: Metrics,
    peer: SocketAddr,
}

impl Connection {
    pub fn new(
        socket: Socket,
        joined: Joined,
        seat: Seat,
        limits: ConnectionLimits,
        shutdown: CancellationToken,
        metrics: Metrics,
        peer: SocketAddr,
    ) -> Self {
        Self {
            socket,
            _capacity_permit: seat.permit,
            membership: joined.membership,
            events: joined.events,
            session: seat.session,
            posts_in_flight: None,
            keepalive: Keepalive::new(limits.ping_interval, limits.idle_timeout),
            limits,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            metrics,
            peer,
        }
    }

    /// Runs the connection to its end, then closes it and leaves the room.
    ///
    /// Takes the connection boxed, so that this future, which every open connection keeps,
    /// moves a pointer around instead of copying the whole struct into several of its slots.
    pub async fn run(mut self: Box<Self>) {
        {
            self.metrics.connection_opened();
            tracing::info!(
                peer = %PeerAddr(self.peer),
                user = %self.membership.name(),
                room = %self.membership.room(),
                "connection accepted"
            );
            let ending = self.serve().await;
            let close = ending.close_frame();
            let desynced = ending.leaves_unparsable_input();
            // Boxed like `write`: the close handshake's state is only needed at the very end.
            Box::pin(self.finish(close, !desynced)).await;
            let code = match (&ending, close) {
                (Ending::ClientClosed(code), _) => *code,
                (_, Some((code, _))) => Some(u16::from(code)),
                _ => None,
            };
            tracing::info!(
                peer = %PeerAddr(self.peer),
                user = %self.membership.name(),
                room = %self.membership.room(),
                close_code = code,
                reason = %ending.label(),
                "connection closed"
            );
            self.metrics.connection_closed(ending.label());
            if desynced {
                // The member leaves now; the socket (and its capacity slot) only once the
                // client has stopped sending.
                let Connection {
                    socket,
                    _capacity_permit,
                    membership,
                    ..
                } = *self;
                drop(membership);
                Box::pin(linger(socket)).await;
            }
            // Otherwise dropping `self` drops the membership: the room hears `leave`.
        }
    }

    async fn serve(&mut self) -> Ending {
        let mut limiter = RateLimiter::new(self.limits.rate_limit, self.limits.rate_burst);
        let mut refused_in_a_row = 0;

        loop {
            // Order matters: the room's events (and a kick) are handled before more client
            // frames are read, so a client that pipelines frames cannot run ahead of its own
            // deliveries.
            tokio::select! {
                biased;
                () = self.shutdown.as_mut() => return Ending::Shutdown,
                () = self.keepalive.timer.as_mut() => match self.keepalive.fired() {
                    Due::Idle => return Ending::Idle,
                    Due::Ping => if let Err(ending) = self.write(Some(Message::Ping(Bytes::new()))).await {
                        return ending;
                    },
                    Due::Nothing => {}
                },
                event = std::future::poll_fn(|cx| poll_session(&mut self.session, cx)) => match event {
                    SessionEvent::Expiring { expires_at_ms } => {
                        let expiring = event_frame(&ServerEvent::Expiring { exp: expires_at_ms });
                        if let Err(ending) = self.write(Some(expiring)).await {
                            return ending;
                        }
                    }
                    SessionEvent::Expired => return Ending::TokenExpired,
                    SessionEvent::Revoked => return Ending::TokenRevoked,
                },
                next = self.events.next_batch() => match next {
                    Next::Events => if let Err(ending) = self.write(None).await {
                        return ending;
                    },
                    Next::Kicked(Kick::SlowConsumer) => return Ending::SlowConsumer,
                    // The hub holds the sender while we are a member, so this means removal.
                    Next::Closed => return Ending::SlowConsumer,
                },
                posted = next_posted(&mut self.posts_in_flight) => {
                    if let Err(ending) = self.answer_post(posted).await {
                        return ending;
                    }
                }
                frame = self.socket.next(), if self.can_post_more() => {
                    self.keepalive.heard_from_client();
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
                        if let Err(ending) = self.write(Some(error)).await {
                            return ending;
                        }
                        continue;
                    }
                    refused_in_a_row = 0;
                    match self.handle_frame(parse_client_frame(text.as_str())) {
                        // Frames already buffered would otherwise be read and posted without a
                        // pause. Once some member's queue is half full, yielding lets the
                        // members catch up first, so a client pipelining thousands of frames
                        // cannot fill everyone's queue in one turn; below that, posting on
                        // lets every member take a large batch per write.
                        Ok(Reply::Posted(Backlog(true))) => tokio::task::yield_now().await,
                        Ok(Reply::Posted(Backlog(false))) => {}
                        Ok(Reply::Pending(posting)) => self
                            .posts_in_flight
                            .get_or_insert_with(Default::default)
                            .push_back(posting),
                        Ok(Reply::Answer(answer)) => if let Err(ending) = self.write(Some(answer)).await {
                            return ending;
                        },
                        Ok(Reply::End(ending)) => return ending,
                        Err(failed) => if let Err(ending) = self.answer_post(Err(failed)).await {
                            return ending;
                        },
                    }
                }
            }
        }
    }

    /// Whether the connection may read another frame: not while `MAX_POSTS_IN_FLIGHT` of its
    /// posts wait for Redis.
    fn can_post_more(&self) -> bool {
        self.posts_in_flight
            .as_ref()
            .is_none_or(|posts| posts.len() < MAX_POSTS_IN_FLIGHT)
    }

    /// Tells the client what became of a post that failed.
    async fn answer_post(&mut self, posted: Result<Backlog, SayError>) -> Result<(), Ending> {
        match posted {
            Ok(_) => Ok(()),
            Err(SayError::NotAMember) => Err(Ending::SlowConsumer),
            Err(SayError::Unavailable { maybe_posted }) => {
                let message = if maybe_posted {
                    "the chat did not confirm the message; it may not have been posted"
                } else {
                    "the chat is unavailable; the message was not posted"
                };
                self.write(Some(error_event(ErrorCode::Unavailable, message)))
                    .await
            }
        }
    }

    /// Acts on one client frame other than `refresh`.
    fn handle_frame(&mut self, frame: ClientFrame) -> Result<Reply, SayError> {
        Ok(match frame {
            ClientFrame::Say(text) if text.trim().is_empty() => {
                Reply::Answer(error_event(ErrorCode::EmptyMessage, "message is empty"))
            }
            ClientFrame::Say(text) => match self.membership.post(text) {
                Posting::Done(posted) => Reply::Posted(posted?),
                Posting::Pending(posting) => Reply::Pending(posting),
            },
            ClientFrame::BadRequest(reason) => {
                Reply::Answer(error_event(ErrorCode::BadRequest, &reason))
            }
            ClientFrame::Refresh(token) => self.refresh(&token),
        })
    }

    /// Answers a `refresh` command (SPEC §10): `refreshed`, or an error that changes nothing,
    /// or the end of the connection when the new token no longer allows its room.
    fn refresh(&mut self, token: &str) -> Reply {
        let room = self.membership.room();
        let outcome = match self.session.as_deref_mut() {
            Some(session) => session.refresh(token, room),
            None => Err(RefreshError::NotRefreshable),
        };
        let reply = match outcome {
            Ok(Refreshed::Until { expires_at_ms }) => {
                event_frame(&ServerEvent::Refreshed { exp: expires_at_ms })
            }
            Ok(Refreshed::RoomNotAllowed) => return Reply::End(Ending::RoomNotAllowed),
            Err(RefreshError::NotRefreshable) => error_event(
                ErrorCode::BadRequest,
                "this connection's token does not expire",
            ),
            Err(RefreshError::Invalid(why)) => error_event(ErrorCode::InvalidToken, why),
        };
        Reply::Answer(reply)
    }

    /// Sends `reply` (a frame for this client alone), or with `None` the batch of room
    /// events just taken from the queue, and flushes once. Gives up if the hub kicks us, the
    /// server shuts down or the idle deadline passes while the client is not reading.
    ///
    /// The write's state (about 400 bytes) is boxed so that it exists only while a write is
    /// under way, not in the allocation every idle connection keeps.
    async fn write(&mut self, reply: Option<Message>) -> Result<(), Ending> {
        Box::pin(self.write_now(reply)).await
    }

    async fn write_now(&mut self, reply: Option<Message>) -> Result<(), Ending> {
        let Self {
            socket,
            events,
            shutdown,
            keepalive,
            ..
        } = self;
        // Moved out so the kick can be watched while the batch is written; handed back after,
        // so its buffer is reused.
        let mut batch = match reply {
            Some(_) => VecDeque::new(),
            None => std::mem::take(events.batch()),
        };
        let outcome = {
            let writing = async {
                match reply {
                    Some(message) => socket.feed(message).await?,
                    None => {
                        for event in batch.drain(..) {
                            socket.feed(Message::Text(event)).await?;
                        }
                    }
                }
                socket.flush().await
            };
            tokio::pin!(writing);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => break Err(Ending::Shutdown),
                    Kick::SlowConsumer = events.kicked() => break Err(Ending::SlowConsumer),
                    // A ping falling due now is skipped: this client is not reading anyway.
                    () = keepalive.timer.as_mut() => if keepalive.fired() == Due::Idle {
                        break Err(Ending::Idle);
                    },
                    result = &mut writing => break result.map_err(ending_for),
                }
            }
        };
        *events.batch() = batch;
        outcome
    }

    /// Sends our close frame (if we are the one closing) and waits, bounded, for the close
    /// handshake to complete so the client sees a clean close rather than a reset.
    async fn finish(&mut self, close: Option<(CloseCode, &'static str)>, await_reply: bool) {
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
            if socket.close(Some(frame)).await.is_err() || !await_reply {
                return;
            }
            // Read until the client's answering close frame ends the stream.
            while let Some(Ok(_)) = socket.next().await {}
        };
        let _ = timeout(wait, handshake).await;
    }
}

/// Closes a connection whose input can no longer be parsed, after its close frame was sent.
///
/// Closing a socket that still has unread input makes the kernel answer with a reset, and a
/// client still writing (say, the rest of a frame over the size limit) then sees "connection
/// reset" instead of the close frame waiting for it. So the server half-closes, which also tells
/// the client the close handshake is over, and reads and discards until the client closes, for
/// at most `CLOSE_HANDSHAKE_TIMEOUT` and `LINGER_MAX_BYTES`.
async fn linger(mut socket: Socket) {
    let tcp = socket.get_mut();
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut discard = vec![0; LINGER_READ_BYTES];
    let drain = async {
        let mut total = 0;
        while total < LINGER_MAX_BYTES {
            match tcp.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(read) => total += read,
            }
        }
    };
    let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
}

/// The next thing a per-user session asks for; never, for a guest.
fn poll_session(session: &mut Option<Box<Session>>, cx: &mut Context<'_>) -> Poll<SessionEvent> {
    match session {
        Some(session) => session.poll_event(cx),
        None => Poll::Pending,
    }
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

/// `event` as a frame for one client. A function of its own, so that no `ServerEvent` (the
/// largest is a `welcome`) is held across an await in the connection's loop.
fn event_frame(event: &ServerEvent) -> Message {
    Message::Text(event.to_json().into())
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

/// Sends only a close frame with `code` and `reason`, and drops the connection: auth-failure
/// mode `close` (1008), or a cluster node that lost Redis during the upgrade (1013).
pub async fn close_immediately(mut socket: Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let handshake = async {
        if socket.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    };
    let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, handshake).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_reasons_lists_every_ending_once() {
        let every = [
            Ending::ClientClosed(None),
            Ending::Gone,
            Ending::Shutdown,
            Ending::SlowConsumer,
            Ending::Idle,
            Ending::TooBig,
            Ending::Binary,
            Ending::BadUtf8,
            Ending::ProtocolError,
            Ending::Flooding,
            Ending::TokenExpired,
            Ending::TokenRevoked,
            Ending::RoomNotAllowed,
        ];
        // Exhaustive on purpose: a new variant stops this compiling until it is listed above.
        for ending in &every {
            match ending {
                Ending::ClientClosed(_)
                | Ending::Gone
                | Ending::Shutdown
                | Ending::SlowConsumer
                | Ending::Idle
                | Ending::TooBig
                | Ending::Binary
                | Ending::BadUtf8
                | Ending::ProtocolError
                | Ending::Flooding
                | Ending::TokenExpired
                | Ending::TokenRevoked
                | Ending::RoomNotAllowed => {}
            }
        }
        let labels: Vec<&str> = every.iter().map(Ending::label).collect();
        assert_eq!(labels, DISCONNECT_REASONS);
    }
}
