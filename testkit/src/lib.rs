//! `wschat-testkit`: start a real `wschat` server inside a test and drive it with async
//! WebSocket clients.
//!
//! [`TestServer`] runs the real library server in-process on `127.0.0.1:0` with a fresh random
//! token, so any number of them can run in parallel in one test binary. [`ClientBuilder`]
//! connects to it with a chosen token, room and name, and yields either a connected [`Client`]
//! (whose `welcome` has already been read) or a [`ConnectError`], whose
//! [`Rejected`](ConnectError::Rejected) variant carries the HTTP status, headers and body.
//! Every wait has a timeout ([`DEFAULT_TIMEOUT`]); a helper that times out or sees something
//! unexpected panics with a message saying what it waited for, so a failing test fails fast
//! and clearly instead of hanging.
//!
//! The event types are the server's own ([`ServerEvent`], [`ChatMessage`]), re-exported here.
//!
//! ```
//! use wschat_testkit::TestServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let server = TestServer::start().await;
//! let mut alice = server.client().name("alice").connect_ok().await;
//! let mut bob = server.client().name("bob").connect_ok().await;
//!
//! alice.say("hello").await;
//! assert_eq!(bob.recv_message().await.text, "hello");
//! assert_eq!(alice.recv_message().await.user, "alice"); // the sender gets it too
//!
//! let rejected = server.client().token("wrong").connect_rejected().await;
//! assert_eq!(rejected.status, 401);
//! server.shutdown().await;
//! # }
//! ```

#![doc = ""]
#![doc = include_str!("../README.md")]

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

mod jwt;
mod redis;
mod tls;
mod users;
pub use jwt::{tamper_payload, unsigned_token, Claims, JwtKey};
pub use redis::RedisServer;
pub use tls::TestCa;
pub use tokio_tungstenite::tungstenite;
pub use users::TestUsers;
pub use wschat::protocol::{ChatMessage, ErrorCode, ServerEvent};
pub use wschat::{AuthFailureMode, Config, Metrics, RedisUrl, Token};

/// Characters of a URL quoted in a failure message.
const MAX_URL_IN_MESSAGES: usize = 120;

/// How often [`TestServer::wait_for_metrics`] looks again.
const METRICS_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long every helper waits before it gives up and panics.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`TestServer::wait_until_available`] waits for a cluster node: past the longest
/// reconnection backoff (2 s) and the wait after Redis lost its data (6 s), with room for a
/// loaded machine.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);

/// A real `wschat` server running in this process on a random loopback port.
///
/// Dropping it starts a graceful shutdown; [`TestServer::shutdown`] also waits for it.
pub struct TestServer {
    addr: SocketAddr,
    /// The shared secret, if the server has one.
    token: Option<String>,
    metrics: Metrics,
    hub: wschat::hub::Hub,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with [`TestServer::config`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = wschat_testkit::TestServer::start().await;
    /// assert!(server.ws_url().starts_with("ws://127.0.0.1:"));
    /// # }
    /// ```
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with [`TestServer::config`] as changed by `adjust`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = wschat_testkit::TestServer::start_with(|config| config.history = 2).await;
    /// # drop(server);
    /// # }
    /// ```
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Self::config();
        adjust(&mut config);
        Self::start_config(config).await
    }

    /// Starts a server with exactly `config` (it should listen on port 0).
    pub async fn start_config(config: Config) -> Self {
        let token = config
            .shared_secret()
            .map(|token| token.expose().to_owned());
        let server = wschat::Server::bind(config)
            .await
            .unwrap_or_else(|error| panic!("test server failed to start: {error}"));
        let addr = *server
            .local_addrs()
            .first()
            .unwrap_or_else(|| panic!("test server has no listener"));
        let metrics = server.metrics();
        let hub = server.hub();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        Self {
            addr,
            token,
            metrics,
            hub,
            stop,
            task: Some(task),
        }
    }

    /// Starts one cluster node on `redis` (SPEC §11) with [`TestServer::config`] as changed by
    /// `adjust`, and waits until its Redis link is up, so it admits clients at once.
    ///
    /// ```
    /// use wschat_testkit::{RedisServer, TestServer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let Some(redis) = RedisServer::start().await else { return };
    /// let node = TestServer::start_node(&redis, |_| {}).await;
    /// let mut alice = node.client().name("alice").connect_ok().await;
    /// alice.say("hello").await;
    /// assert_eq!(alice.recv_message().await.id, 1);
    /// # }
    /// ```
    pub async fn start_node(redis: &RedisServer, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Self::config();
        adjust(&mut config);
        Self::start_node_config(redis, config).await
    }

    /// Starts `nodes` cluster nodes on `redis`, sharing one token (a client may connect to any
    /// of them), each configured by `adjust`, and waits until every one is up.
    ///
    /// ```
    /// use wschat_testkit::{RedisServer, TestServer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let Some(redis) = RedisServer::start().await else { return };
    /// let nodes = TestServer::start_cluster(&redis, 2, |_| {}).await;
    /// let mut alice = nodes[0].client().name("alice").connect_ok().await;
    /// let mut bob = nodes[1].client().name("bob").connect_ok().await;
    /// alice.say("across nodes").await;
    /// assert_eq!(bob.recv_message().await.text, "across nodes");
    /// # }
    /// ```
    pub async fn start_cluster(
        redis: &RedisServer,
        nodes: usize,
        adjust: impl Fn(&mut Config),
    ) -> Vec<Self> {
        let token = Token::new(random_token());
        let mut started = Vec::with_capacity(nodes);
        for _ in 0..nodes {
            let mut config = Self::config();
            config.token = Some(token.clone());
            adjust(&mut config);
            started.push(Self::start_node_config(redis, config).await);
        }
        started
    }

    /// Starts a node with exactly `config`, on `redis`, and waits until it is up.
    pub async fn start_node_config(redis: &RedisServer, mut config: Config) -> Self {
        config.redis_url = Some(
            RedisUrl::new(redis.url()).unwrap_or_else(|error| panic!("bad redis url: {error}")),
        );
        let server = Self::start_config(config).await;
        server.wait_until_available().await;
        server
    }

    /// Whether the server admits clients now: always on a single node; on a cluster node,
    /// while its Redis link is up.
    pub fn is_available(&self) -> bool {
        self.hub.is_available()
    }

    /// Waits until [`TestServer::is_available`], or panics after [`CLUSTER_TIMEOUT`].
    pub async fn wait_until_available(&self) {
        self.wait_until("the node to reach redis", || self.is_available())
            .await;
    }

    /// Waits until [`TestServer::is_available`] is false (a cluster node noticed its Redis is
    /// gone), or panics after [`CLUSTER_TIMEOUT`].
    pub async fn wait_until_unavailable(&self) {
        self.wait_until("the node to notice redis is gone", || !self.is_available())
            .await;
    }

    async fn wait_until(&self, what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + CLUSTER_TIMEOUT;
        while !condition() {
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(METRICS_POLL_INTERVAL).await;
        }
    }

    /// The configuration tests start from: the spec's defaults, one listener on
    /// `127.0.0.1:0`, a fresh random token, and brute-force throttling off (every test client
    /// comes from the same address, and many tests fail handshakes on purpose).
    pub fn config() -> Config {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            token: Some(Token::new(random_token())),
            auth_fail_limit: 0,
            ..Config::default()
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared secret clients present. Panics for a server that has none (one configured
    /// with only per-user sources, see [`TestUsers`] and [`JwtKey`]).
    pub fn token(&self) -> &str {
        self.token
            .as_deref()
            .unwrap_or_else(|| panic!("this test server has no shared secret"))
    }

    /// `ws://127.0.0.1:PORT/`, without any query.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's live metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many rooms the server retains.
    pub fn room_count(&self) -> usize {
        self.hub.room_count()
    }

    /// Waits until the rendered metrics satisfy `condition` (counters move a moment after the
    /// event that causes them, e.g. once a close handshake completes), or panics after
    /// [`DEFAULT_TIMEOUT`] showing the last rendering.
    pub async fn wait_for_metrics(&self, what: &str, condition: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let text = self.metrics.render();
            if condition(&text) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for metrics to show {what}:\n{text}");
            }
            tokio::time::sleep(METRICS_POLL_INTERVAL).await;
        }
    }

    /// A client builder preset with this server's address and shared secret (in the query),
    /// or with no token when the server has no shared secret.
    pub fn client(&self) -> ClientBuilder {
        let builder = ClientBuilder::new(self.addr);
        match &self.token {
            Some(token) => builder.token(token.clone()),
            None => builder,
        }
    }

    /// Sends one raw HTTP/1.1 request (`Connection: close` is added) and reads the response.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = wschat_testkit::TestServer::start().await;
    /// let response = server.http("GET", "/healthz", &[]).await;
    /// assert_eq!((response.status.as_u16(), response.body.as_str()), (200, "ok"));
    /// # }
    /// ```
    pub async fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            let mut chunk = [0_u8; 16 * 1024];
            loop {
                let read = stream.read(&mut chunk).await?;
                if read == 0 {
                    break;
                }
                raw.extend_from_slice(&chunk[..read]);
                // A `101` keeps the connection open as a WebSocket: its head is the response.
                let head_done = raw.windows(4).any(|window| window == b"\r\n\r\n");
                if head_done && raw.starts_with(b"HTTP/1.1 101") {
                    break;
                }
            }
            Ok::<_, std::io::Error>(raw)
        };
        let raw = within(DEFAULT_TIMEOUT, "an HTTP response", exchange)
            .await
            .unwrap_or_else(|error| panic!("HTTP {method} {path} failed: {error}"));
        HttpResponse::parse(&raw).unwrap_or_else(|| {
            panic!(
                "unparseable HTTP response: {}",
                String::from_utf8_lossy(&raw)
            )
        })
    }

    /// Shuts the server down gracefully and waits until it has stopped.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn random_token() -> String {
    format!("test-{:032x}", rand::random::<u128>())
}

/// A parsed HTTP response from [`TestServer::http`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpResponse {
    fn parse(raw: &[u8]) -> Option<Self> {
        let split = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..split]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse::<u16>().ok()?;
        let mut headers = HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(':')?;
            headers.append(
                HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                HeaderValue::from_str(value.trim()).ok()?,
            );
        }
        Some(Self {
            status: StatusCode::from_u16(status).ok()?,
            headers,
            body: String::from_utf8_lossy(&raw[split + 4..]).into_owned(),
        })
    }
}

#[derive(Clone)]
enum TokenPlacement {
    None,
    Query(String),
    Bearer(String),
    Subprotocol(String),
}

/// The three places a client can carry its token in (SPEC §4, §10), for tables of tests that
/// run once per carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// The `token` query parameter.
    Query,
    /// `Authorization: Bearer <token>`.
    Header,
    /// `Sec-WebSocket-Protocol: wschat, bearer.<token>`, as a browser sends it.
    Subprotocol,
}

/// Builds a connection attempt. Start from [`TestServer::client`].
#[derive(Clone)]
pub struct ClientBuilder {
    addr: SocketAddr,
    token: TokenPlacement,
    room: Option<String>,
    name: Option<String>,
    raw_query: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Duration,
    source_ip: Option<IpAddr>,
}

impl fmt::Debug for ClientBuilder {
    /// Everything but the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url_for_messages())
            .field("room", &self.room)
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A builder for any `wschat` server at `addr` (a separate process, say), with no token.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// let addr = "127.0.0.1:3000".parse().unwrap();
    /// let client = wschat_testkit::ClientBuilder::new(addr)
    ///     .token("mysecrettoken123")
    ///     .name("alice")
    ///     .connect_ok()
    ///     .await;
    /// assert_eq!(client.user(), "alice");
    /// # }
    /// ```
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            token: TokenPlacement::None,
            room: None,
            name: None,
            raw_query: None,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            source_ip: None,
        }
    }

    /// Connects from this local address, e.g. `127.0.0.2`, to look like another client host.
    /// Any address in `127.0.0.0/8` works on Linux without setup.
    pub fn from_ip(mut self, ip: IpAddr) -> Self {
        self.source_ip = Some(ip);
        self
    }

    /// Presents `token` as the `token` query parameter (form-urlencoded).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenPlacement::Query(token.into());
        self
    }

    /// Presents no token at all.
    pub fn no_token(mut self) -> Self {
        self.token = TokenPlacement::None;
        self
    }

    /// Presents `token` in an `Authorization: Bearer` header instead of the query.
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.token = TokenPlacement::Bearer(token.into());
        self
    }

    /// Offers `Sec-WebSocket-Protocol: wschat, bearer.<token>`, the browser-safe carrier of
    /// SPEC §10; the server answers `wschat` (see [`Client::subprotocol`]).
    pub fn subprotocol_token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenPlacement::Subprotocol(token.into());
        self
    }

    /// Presents `token` in `carrier`.
    ///
    /// ```
    /// use wschat_testkit::{Carrier, TestServer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = TestServer::start().await;
    /// for carrier in [Carrier::Query, Carrier::Header, Carrier::Subprotocol] {
    ///     let client = server.client().carry(carrier, server.token()).connect_ok().await;
    ///     assert!(client.user().starts_with("guest-"));
    /// }
    /// # }
    /// ```
    pub fn carry(self, carrier: Carrier, token: impl Into<String>) -> Self {
        match carrier {
            Carrier::Query => self.token(token),
            Carrier::Header => self.bearer(token),
            Carrier::Subprotocol => self.subprotocol_token(token),
        }
    }

    pub fn room(mut self, room: impl Into<String>) -> Self {
        self.room = Some(room.into());
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Uses `query` verbatim as the request's query string, replacing the token (unless it is
    /// a bearer token), room and name parameters. For tests of query parsing.
    pub fn raw_query(mut self, query: impl Into<String>) -> Self {
        self.raw_query = Some(query.into());
        self
    }

    /// Adds a header to the handshake request (e.g. `Origin`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// How long this client's helpers wait (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL this builder connects to.
    pub fn url(&self) -> String {
        let query = match &self.raw_query {
            Some(raw) => raw.clone(),
            None => {
                let mut query = form_urlencoded::Serializer::new(String::new());
                if let TokenPlacement::Query(token) = &self.token {
                    query.append_pair("token", token);
                }
                if let Some(room) = &self.room {
                    query.append_pair("room", room);
                }
                if let Some(name) = &self.name {
                    query.append_pair("name", name);
                }
                query.finish()
            }
        };
        if query.is_empty() {
            format!("ws://{}/", self.addr)
        } else {
            format!("ws://{}/?{query}", self.addr)
        }
    }

    /// Connects and reads the first frame, which must be `welcome`.
    pub async fn connect(self) -> Result<Client, ConnectError> {
        let url = self.url();
        let mut request = url.as_str().into_client_request().map_err(|error| {
            ConnectError::Failed(format!(
                "bad request for {}: {error}",
                self.url_for_messages()
            ))
        })?;
        if let TokenPlacement::Bearer(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|error| ConnectError::Failed(error.to_string()))?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        if let TokenPlacement::Subprotocol(token) = &self.token {
            let value = HeaderValue::from_str(&format!("wschat, bearer.{token}"))
                .map_err(|error| ConnectError::Failed(error.to_string()))?;
            request
                .headers_mut()
                .insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|error| ConnectError::Failed(error.to_string()))?;
            let value = HeaderValue::from_str(value)
                .map_err(|error| ConnectError::Failed(error.to_string()))?;
            request.headers_mut().insert(name, value);
        }
        let (addr, source_ip) = (self.addr, self.source_ip);
        let handshake = async move {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }?;
            if let Some(ip) = source_ip {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            tokio_tungstenite::client_async_with_config(
                request,
                MaybeTlsStream::Plain(stream),
                None,
            )
            .await
        };
        let socket = match timeout(self.timeout, handshake).await {
            Err(_) => {
                let url = self.url_for_messages();
                return Err(ConnectError::Failed(format!(
                    "handshake with {url} timed out"
                )));
            }
            Ok(Err(WsError::Http(response))) => {
                let (parts, body) = (*response).into_parts();
                return Err(ConnectError::Rejected(Rejected {
                    status: parts.status,
                    headers: parts.headers,
                    body: String::from_utf8_lossy(&body.unwrap_or_default()).into_owned(),
                }));
            }
            Ok(Err(error)) => return Err(ConnectError::Failed(error.to_string())),
            Ok(Ok((socket, response))) => (socket, response),
        };
        let (socket, response) = socket;
        let subprotocol = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut client = Client {
            subprotocol,
            socket,
            timeout: self.timeout,
            welcome: None,
            welcome_json: String::new(),
        };
        let first = client.next_frame("the welcome event").await;
        if let Frame::Event(_, json) = &first {
            client.welcome_json = json.to_string();
        }
        match first {
            Frame::Event(
                ServerEvent::Welcome {
                    user,
                    room,
                    members,
                    history,
                },
                _,
            ) => {
                client.welcome = Some(Welcome {
                    user,
                    room,
                    members,
                    history,
                });
                Ok(client)
            }
            Frame::Event(other, _) => Err(ConnectError::Failed(format!(
                "first event was not welcome but {other:?}"
            ))),
            Frame::Close(code, reason) => Err(ConnectError::Closed { code, reason }),
            Frame::Ended(why) => Err(ConnectError::Failed(why)),
        }
    }

    /// The URL for failure messages: the token value replaced by `REDACTED` (a downstream test
    /// against a real server must not leak it into CI logs) and shortened (a test may use a
    /// 64 KiB token).
    fn url_for_messages(&self) -> String {
        let url = self.url();
        let shown = match url.parse::<http::Uri>() {
            Ok(uri) => format!(
                "ws://{}{}",
                self.addr,
                wschat::handshake::RedactedTarget(&uri)
            ),
            Err(_) => format!("ws://{}/?…", self.addr),
        };
        match shown.char_indices().nth(MAX_URL_IN_MESSAGES) {
            Some((cut, _)) => format!("{}…", &shown[..cut]),
            None => shown,
        }
    }

    /// Connects and panics unless the server accepted the client and sent `welcome` first.
    pub async fn connect_ok(self) -> Client {
        let url = self.url_for_messages();
        self.connect()
            .await
            .unwrap_or_else(|error| panic!("expected {url} to connect, but {error}"))
    }

    /// Connects and panics unless the server rejected the handshake with an HTTP status.
    pub async fn connect_rejected(self) -> Rejected {
        let url = self.url_for_messages();
        match self.connect().await {
            Err(ConnectError::Rejected(rejected)) => rejected,
            Ok(client) => panic!(
                "expected {url} to be rejected, but it connected as {}",
                client.user()
            ),
            Err(other) => panic!("expected {url} to be rejected with a status, but {other}"),
        }
    }
}

/// A handshake the server answered with an HTTP status instead of `101`.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Rejected {
    /// The value of header `name`, or `""` when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }
}

/// Why [`ClientBuilder::connect`] did not produce a client.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the handshake with this HTTP response.
    Rejected(Rejected),
    /// The server upgraded but sent a close frame instead of `welcome`.
    Closed { code: u16, reason: String },
    /// Anything else: timeout, I/O error, an unexpected first frame.
    Failed(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Rejected(rejected) => {
                write!(
                    f,
                    "it was rejected with {} ({:?})",
                    rejected.status, rejected.body
                )
            }
            ConnectError::Closed { code, reason } => {
                write!(f, "it was closed with {code} ({reason:?}) before welcome")
            }
            ConnectError::Failed(why) => write!(f, "it failed: {why}"),
        }
    }
}

/// The `welcome` a connected client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub user: String,
    pub room: String,
    pub members: Vec<String>,
    pub history: Vec<ChatMessage>,
}

enum Frame {
    /// An event, and the text frame it was read from.
    Event(ServerEvent, Utf8Bytes),
    Close(u16, String),
    Ended(String),
}

/// A connected chat client whose `welcome` has been received.
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    timeout: Duration,
    welcome: Option<Welcome>,
    welcome_json: String,
    subprotocol: Option<String>,
}

impl Client {
    /// The `welcome` this client received when it connected.
    pub fn welcome(&self) -> &Welcome {
        self.welcome
            .as_ref()
            .unwrap_or_else(|| unreachable!("set by connect"))
    }

    /// The `welcome` frame exactly as the server sent it.
    pub fn welcome_json(&self) -> &str {
        &self.welcome_json
    }

    /// The name the server gave this client.
    pub fn user(&self) -> &str {
        &self.welcome().user
    }

    /// The subprotocol the server answered the handshake with (`wschat` when the client
    /// offered it), if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// Sends `{"type":"refresh","token":…}` (SPEC §10); the answer is a `refreshed` event or an
    /// `invalid_token` error.
    pub async fn refresh(&mut self, token: &str) {
        let command = wschat::ClientCommand::Refresh {
            token: token.to_owned(),
        };
        let json = serde_json::to_string(&command)
            .unwrap_or_else(|error| panic!("cannot encode a refresh: {error}"));
        self.send_text(&json).await;
    }

    /// Posts `text` with a `{"type":"say"}` command.
    pub async fn say(&mut self, text: &str) {
        let command = serde_json::json!({ "type": "say", "text": text }).to_string();
        self.send_text(&command).await;
    }

    /// Sends one raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    /// Sends any frame, e.g. a binary one.
    pub async fn send(&mut self, message: Message) {
        let send = self.socket.send(message);
        within(self.timeout, "a frame to be sent", send)
            .await
            .unwrap_or_else(|error| panic!("sending a frame failed: {error}"));
    }

    /// The next event, whatever its type.
    pub async fn recv(&mut self) -> ServerEvent {
        self.recv_with_text().await.0
    }

    /// The next event's text frame exactly as the server sent it (checked to be a valid
    /// event), for tests about the bytes on the wire.
    pub async fn recv_text(&mut self) -> String {
        self.recv_with_text().await.1.to_string()
    }

    async fn recv_with_text(&mut self) -> (ServerEvent, Utf8Bytes) {
        match self.next_frame("the next event").await {
            Frame::Event(event, text) => (event, text),
            Frame::Close(code, reason) => {
                panic!("expected an event, but the server closed with {code} ({reason:?})")
            }
            Frame::Ended(why) => panic!("expected an event, but {why}"),
        }
    }

    /// The next `message` event, skipping `join` and `leave`. Panics on an `error` event.
    pub async fn recv_message(&mut self) -> ChatMessage {
        loop {
            match self.recv().await {
                ServerEvent::Message(message) => return message,
                ServerEvent::Join { .. } | ServerEvent::Leave { .. } => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next `error` event's code, skipping any `message`, `join` and `leave` before it
    /// (an error answers this client's own frame, while room events keep flowing).
    pub async fn recv_error(&mut self) -> ErrorCode {
        loop {
            match self.recv().await {
                ServerEvent::Error { code, .. } => return code,
                ServerEvent::Message(_) | ServerEvent::Join { .. } | ServerEvent::Leave { .. } => {}
                other => panic!("expected an error event, got {other:?}"),
            }
        }
    }

    /// Reads until the server's close frame, skipping any events before it, and returns its
    /// code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_frame("a close frame").await {
                Frame::Event(..) => continue,
                Frame::Close(code, reason) => return (code, reason),
                Frame::Ended(why) => panic!("expected a close frame, but {why}"),
            }
        }
    }

    /// Asserts that no event arrives within `period`.
    pub async fn expect_silence(&mut self, period: Duration) {
        match timeout(period, self.next_frame_untimed()).await {
            Err(_) => {}
            Ok(Frame::Event(event, _)) => panic!("expected silence, got {event:?}"),
            Ok(Frame::Close(code, reason)) => {
                panic!("expected silence, got close {code} ({reason:?})")
            }
            Ok(Frame::Ended(why)) => panic!("expected silence, but {why}"),
        }
    }

    /// Sends the first bytes of a frame and then resets the TCP connection (no close frame,
    /// no FIN), the way a crashed client or a dropped network looks to the server.
    pub async fn reset_mid_frame(mut self) {
        if let MaybeTlsStream::Plain(stream) = self.socket.get_mut() {
            // FIN bit + text opcode, masked, 125-byte payload announced; then nothing.
            let _ = stream.write_all(&[0x81, 0xFD, 0x01, 0x02]).await;
            let _ = stream.set_zero_linger();
        }
    }

    /// Closes the connection with a normal close handshake.
    pub async fn close(mut self) {
        let _ = within(self.timeout, "the close handshake", async {
            let _ = self.socket.close(None).await;
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }

    async fn next_frame(&mut self, waiting_for: &str) -> Frame {
        let period = self.timeout;
        within(period, waiting_for, self.next_frame_untimed()).await
    }

    async fn next_frame_untimed(&mut self) -> Frame {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    return match serde_json::from_str::<ServerEvent>(&text) {
                        Ok(event) => Frame::Event(event, text),
                        Err(error) => Frame::Ended(format!("the server sent {text:?}: {error}")),
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    // Send the answering close frame tungstenite queued, completing the close
                    // handshake the way a well-behaved client does.
                    let _ = self.socket.flush().await;
                    return Frame::Close(code, reason);
                }
                Some(Ok(Message::Binary(data))) => {
                    return Frame::Ended(format!(
                        "the server sent a binary frame of {} bytes",
                        data.len()
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Frame::Ended(format!("the connection failed: {error}")),
                None => return Frame::Ended("the connection ended without a close frame".into()),
            }
        }
    }
}

/// Awaits `future` for at most `period`, panicking with what was awaited.
async fn within<T>(
    period: Duration,
    waiting_for: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    timeout(period, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {period:?} waiting for {waiting_for}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_messages_and_debug_never_show_the_token() {
        let builder = ClientBuilder::new(SocketAddr::from(([127, 0, 0, 1], 9)))
            .token("very-secret")
            .name("n");
        assert!(
            builder.url().contains("very-secret"),
            "the real URL carries it"
        );
        let shown = builder.url_for_messages();
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("token=REDACTED"), "{shown}");
        assert!(!format!("{builder:?}").contains("very-secret"));
    }
}
