//! `wschat`: a real-time chat server whose WebSocket connections are accepted only when the
//! client proves it holds a valid token. Built directly on hyper 1.x and tokio-tungstenite.
//!
//! The library holds everything; the `wschat` binary only parses the configuration, starts a
//! [`Server`] and waits for a signal. A request's path through the code, top to bottom:
//! [`server`] (accept) → [`stream`] (the socket under hyper) → [`http`] (route) → [`handshake`] (admit or reject) → [`hub`] (join a
//! room) → [`connection`] (the chat) → [`protocol`] (the frames).
//!
//! ```no_run
//! # async fn demo() -> Result<(), wschat::StartError> {
//! let config = wschat::Config {
//!     listen: vec!["127.0.0.1:0".parse().unwrap()],
//!     token: Some(wschat::Token::new("s3cret")),
//!     ..wschat::Config::default()
//! };
//! let server = wschat::Server::bind(config).await?;
//! println!("listening on {:?}", server.local_addrs());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod cluster;
pub mod config;
pub mod connection;
pub mod handshake;
pub mod http;
pub mod hub;
pub mod identity;
pub mod log_format;
pub mod logs;
pub mod metrics;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod stream;
pub mod throttle;

pub use config::{
    AuthFailureMode, Cli, Config, ConfigError, LogFormat, RedisUrl, Token, DEVELOPMENT_TOKEN,
};
pub use metrics::Metrics;
pub use protocol::{ChatMessage, ClientCommand, ErrorCode, ServerEvent};
pub use server::{Server, StartError};
