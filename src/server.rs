//! Listeners, the accept loop, and graceful shutdown.
//!
//! `Server::bind` opens every listener up front (so callers learn the real ports, and bad
//! addresses fail before anything runs). `Server::run` accepts connections until its shutdown
//! future resolves. Each TCP connection gets one task, owned by a `JoinSet` here: the task
//! serves HTTP with hyper and, if the request was upgraded, goes on to run the chat connection.
//! On shutdown the listeners close, HTTP connections finish their request and close (hyper's
//! `graceful_shutdown`), chat connections send close 1001 and wait for the client's reply, and
//! whatever is still running when the grace period ends is aborted. No task outlives `run`.
//!
//! HTTP is served with hyper's HTTP/1 connection builder directly. hyper-util's version-sniffing
//! `auto` builder would first wait, without a timeout, for bytes to tell HTTP/1 from HTTP/2, so
//! a client that connects and sends nothing would never be dropped; WebSocket upgrades are
//! HTTP/1.1 anyway (RFC 6455). hyper's header-read timeout then covers the silent client too.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterDriver, ClusterError, ClusterSettings, Unavailable};
use crate::config::{Config, ConfigError};
use crate::connection::{self, Connection, ConnectionLimits, Seat};
use crate::handshake::Policy;
use crate::http::{self as routes, AppState, PendingUpgrade, UpgradeSlot};
use crate::hub::{Backend, Hub, HubLimits};
use crate::identity::{self, Authenticator};
use crate::metrics::Metrics;
use crate::stream::{HoldSwitch, HttpStream, TakenOver};
use crate::throttle::Throttle;

/// Pause after a failed `accept` (typically out of file descriptors) so the loop does not spin
/// while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// How long a cluster node may take, after its connections ended, to remove its members from
/// Redis (their `leave`s) and its lease before it exits anyway.
const CLUSTER_GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

/// A bound, not yet running, chat server.
pub struct Server {
    listeners: Vec<TcpListener>,
    state: Arc<AppState>,
    http: http1::Builder,
    shutdown_grace: Duration,
    /// The Redis link of a cluster node, run alongside the accept loop.
    cluster: Option<ClusterDriver>,
    /// Reloads the users file (SPEC §10); its watcher and SIGHUP handler are already set up,
    /// so a SIGHUP sent once the server is bound never stops the process.
    users_file_watch: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    reload_stop: CancellationToken,
}

impl Server {
    /// Validates `config` and binds every listen address.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        config.validate()?;
        let mut listeners = Vec::with_capacity(config.listen.len());
        for &addr in &config.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            listeners.push(listener);
        }
        Self::from_listeners(listeners, config)
    }

    /// Builds a server on listeners the caller has bound already (e.g. to skip an address the
    /// host does not have). `config.listen` is not bound again, but the rest of `config` is
    /// validated, and there must be at least one listener.
    pub fn from_listeners(listeners: Vec<TcpListener>, config: Config) -> Result<Self, StartError> {
        config.validate()?;
        if listeners.is_empty() {
            return Err(ConfigError::NoListener.into());
        }
        let auth = Arc::new(Authenticator::from_config(&config)?);
        let (metrics, backend, cluster) = match &config.redis_url {
            None => (Metrics::new(), Backend::Memory, None),
            Some(url) => {
                let metrics = Metrics::for_cluster();
                let settings = ClusterSettings {
                    history: config.history,
                    history_ttl: config.history_ttl,
                    node_timeout: config.node_timeout,
                };
                let (cluster, driver) = Cluster::new(url, settings, metrics.clone())?;
                (metrics, Backend::Redis(cluster), Some(driver))
            }
        };
        let hub = Hub::new(
            HubLimits {
                history: config.history,
                max_rooms: config.max_rooms,
                send_queue: config.send_queue,
            },
            metrics.clone(),
            backend,
        );
        let limits = ConnectionLimits {
            max_message_bytes: config.max_message_bytes,
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            ping_interval: config.ping_interval,
            idle_timeout: config.idle_timeout,
            shutdown_grace: config.shutdown_grace,
        };
        let state = Arc::new(AppState {
            policy: Policy {
                auth: Arc::clone(&auth),
                allowed_origins: config.allowed_origins.clone(),
                auth_failure: config.auth_failure,
            },
            hub,
            metrics,
            limits,
            capacity: Arc::new(Semaphore::new(config.max_connections)),
            throttle: Throttle::new(config.auth_fail_limit, config.auth_fail_window),
            shutdown: CancellationToken::new(),
        });
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.handshake_timeout);
        let reload_stop = CancellationToken::new();
        let users_file_watch = identity::watch_users_file(
            Arc::clone(&state.policy.auth),
            state.metrics.clone(),
            reload_stop.clone(),
        )
        .map(|watch| Box::pin(watch) as Pin<Box<dyn Future<Output = ()> + Send>>);
        Ok(Self {
            listeners,
            state,
            http,
            shutdown_grace: config.shutdown_grace,
            cluster,
            users_file_watch,
            reload_stop,
        })
    }

    /// The addresses actually bound (with real ports when `:0` was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .collect()
    }

    pub fn metrics(&self) -> Metrics {
        self.state.metrics.clone()
    }

    pub fn hub(&self) -> Hub {
        self.state.hub.clone()
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully (SPEC §6) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listeners,
            state,
            http,
            shutdown_grace,
            cluster,
            users_file_watch,
            reload_stop,
        } = self;
        let cluster_stop = CancellationToken::new();
        let cluster =
            cluster.map(|driver| tokio::spawn(driver.run(state.hub.clone(), cluster_stop.clone())));
        let users_file_watch = users_file_watch.map(tokio::spawn);
        let http = Arc::new(http);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);

        let mut first_listener = 0;
        loop {
            let accept = std::future::poll_fn(|cx| accept_any(&listeners, &mut first_listener, cx));
            tokio::select! {
                () = &mut shutdown => break,
                accepted = accept => match accepted {
                    Ok((stream, peer)) => {
                        let task = serve_tcp(
                            stream,
                            peer,
                            Arc::clone(&state),
                            Arc::clone(&http),
                        );
                        connections.spawn(task);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
                Some(finished) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(error) = finished {
                        if error.is_panic() {
                            tracing::error!(%error, "a connection task panicked");
                        }
                    }
                }
            }
        }

        tracing::info!(open = connections.len(), "shutting down");
        drop(listeners);
        reload_stop.cancel();
        if let Some(watch) = users_file_watch {
            let _ = watch.await;
        }
        state.shutdown.cancel();
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(shutdown_grace, drain).await.is_err() {
            tracing::warn!(
                left = connections.len(),
                "grace period over; dropping connections"
            );
            connections.shutdown().await;
        }
        // Every connection has ended and asked for its `leave`: the node says goodbye to the
        // cluster, within bounds if Redis is away.
        if let Some(mut driver) = cluster {
            cluster_stop.cancel();
            if tokio::time::timeout(CLUSTER_GOODBYE_TIMEOUT, &mut driver)
                .await
                .is_err()
            {
                tracing::warn!("could not say goodbye to the cluster in time");
                driver.abort();
            }
        }
    }
}

/// Accepts from whichever listener has a connection waiting, starting after the one that
/// accepted last so a busy listener cannot starve the others. Polled in place each time round
/// the accept loop, with nothing allocated per connection.
fn accept_any(
    listeners: &[TcpListener],
    first: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
    for offset in 0..listeners.len() {
        let index = (*first + offset) % listeners.len();
        if let Poll::Ready(accepted) = listeners[index].poll_accept(cx) {
            *first = index + 1;
            return Poll::Ready(accepted);
        }
    }
    Poll::Pending
}

/// One TCP connection: HTTP until hyper hands over an upgraded socket, then the chat.
///
/// The HTTP phase and the upgrade are boxed, so their state (hyper's connection alone is about
/// 2 KiB) is freed when they end; what an open chat connection keeps is this task's own
/// allocation, sized by `Connection::run`.
async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    http: Arc<http1::Builder>,
) {
    // Each boxed phase is built in its own statement: a temporary in the awaiting statement
    // would keep the unboxed future's size reserved in this task's state.
    let http_phase = Box::pin(serve_http(stream, peer, &state, &http));
    let pending = http_phase.await;
    drop(http);
    let Some(pending) = pending else { return };
    let upgrade_phase = Box::pin(take_over(pending, peer, state));
    let Some(connection) = upgrade_phase.await else {
        return;
    };
    connection.run().await;
}

/// Takes over the socket of an answered `101`: returns the chat connection, or sends close
/// 1008 (auth-failure mode `close`) and returns nothing.
async fn take_over(
    pending: PendingUpgrade,
    peer: SocketAddr,
    state: Arc<AppState>,
) -> Option<Box<Connection>> {
    match pending {
        PendingUpgrade::Refuse { upgrade, reason } => {
            let mut taken = taken_over(upgrade.await, peer)?;
            // Close mode is rare and not worth coalescing: the 101 goes first, then tungstenite
            // runs the close handshake.
            taken.send_unsent().await.ok()?;
            let socket = connection::accept_socket(taken, &state.limits).await;
            connection::close_immediately(socket, CloseCode::Policy, reason).await;
            None
        }
        PendingUpgrade::Chat {
            upgrade,
            reservation,
            permit,
            session,
        } => {
            let taken = taken_over(upgrade.await, peer)?;
            let mut joined = match reservation.join().await {
                Ok(joined) => joined,
                Err(Unavailable) => {
                    // Redis went away between the handshake and the upgrade.
                    tracing::info!(%peer, "redis unavailable; connection closed before its welcome");
                    let mut taken = taken;
                    taken.send_unsent().await.ok()?;
                    let socket = connection::accept_socket(taken, &state.limits).await;
                    connection::close_immediately(socket, CloseCode::Again, "redis unavailable")
                        .await;
                    return None;
                }
            };
            let welcome = std::mem::take(&mut joined.welcome);
            let socket = match connection::accept_with_welcome(
                taken,
                welcome,
                &state.limits,
                &state.shutdown,
            )
            .await
            {
                Ok(socket) => socket,
                Err(error) => {
                    tracing::info!(%peer, %error, "connection lost before its welcome");
                    return None;
                }
            };
            Some(Box::new(Connection::new(
                socket,
                joined,
                Seat { permit, session },
                state.limits,
                state.shutdown.clone(),
                state.metrics.clone(),
                peer,
            )))
        }
    }
}

/// The TCP stream of a completed upgrade, out of hyper's hands.
fn taken_over(upgraded: hyper::Result<Upgraded>, peer: SocketAddr) -> Option<TakenOver> {
    let upgraded = match upgraded {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%peer, %error, "upgrade did not complete");
            return None;
        }
    };
    let taken = TakenOver::from_upgraded(upgraded);
    if taken.is_none() {
        // Every connection is served over an `HttpStream`, so this is a bug, not a client.
        tracing::error!(%peer, "upgraded connection is not an HttpStream; dropped");
    }
    taken
}

/// Serves HTTP on the connection until it ends or is upgraded; returns the pending upgrade.
async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    state: &Arc<AppState>,
    http: &http1::Builder,
) -> Option<PendingUpgrade> {
    // Chat frames are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let hold = HoldSwitch::default();
    let slot = Arc::new(UpgradeSlot::new(hold.clone()));
    let service = {
        let (state, slot) = (Arc::clone(state), Arc::clone(&slot));
        service_fn(move |request| {
            routes::handle(request, Arc::clone(&state), peer, Arc::clone(&slot))
        })
    };
    let conn = http
        .serve_connection(TokioIo::new(HttpStream::new(stream, hold)), service)
        .with_upgrades();
    tokio::pin!(conn);
    let shutdown = state.shutdown.clone();
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = shutdown.cancelled() => {
            // Finish the request in flight (if any), then close; a 101 already answered still
            // hands its socket over, and the chat connection sees the shutdown at once.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "http connection ended with an error");
    }
    slot.take()
}
