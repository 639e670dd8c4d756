//! Configuration: the `Config` the server runs with, and the CLI (clap) that builds it.
//!
//! Every option of SPEC §2 is a flag with an environment-variable twin; clap gives the flag
//! precedence. `Cli::into_config` turns raw input into a validated `Config` and reports every
//! problem as one `ConfigError` line, which `main` prints before exiting with code 2. Library
//! users (and the testkit) build a `Config` directly and call `Config::validate`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::identity::jwt::{JwtKeyFile, JwtRules};

/// The token the server accepts when none is configured: the one from the original Express
/// example. Only safe on loopback, which is why `validate` refuses it elsewhere.
pub const DEVELOPMENT_TOKEN: &str = "mysecrettoken123";

/// The port of the original example (SPEC §2).
pub const DEFAULT_PORT: u16 = 3000;

/// The shared secret a client must present. Its `Debug` never shows the value, and comparison
/// runs in constant time over SHA-256 digests so neither the content nor the length leaks.
#[derive(Clone)]
pub struct Token {
    secret: Arc<str>,
    digest: [u8; 32],
}

impl Token {
    pub fn new(secret: impl Into<String>) -> Self {
        let secret: String = secret.into();
        let digest = Sha256::digest(secret.as_bytes()).into();
        Self {
            secret: secret.into(),
            digest,
        }
    }

    /// Whether `candidate` is this token, in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let candidate: [u8; 32] = Sha256::digest(candidate).into();
        self.digest.ct_eq(&candidate).into()
    }

    /// The secret itself, for code that must hand it to a client (the testkit).
    pub fn expose(&self) -> &str {
        &self.secret
    }

    pub fn is_development_token(&self) -> bool {
        self.matches(DEVELOPMENT_TOKEN.as_bytes())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(REDACTED)")
    }
}

/// Where the cluster's Redis is (SPEC §11): `redis://`, `rediss://` or `unix://`. It may hold a
/// password, so its `Debug` shows only the scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The schemes the cluster connects with.
    pub const SCHEMES: [&'static str; 3] = ["redis://", "rediss://", "unix://"];

    pub fn new(url: impl Into<String>) -> Result<Self, ConfigError> {
        let url = url.into();
        if !Self::SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(ConfigError::RedisUrl);
        }
        // The client's parser decides; its message names the problem, not the URL.
        redis::Client::open(url.as_str())
            .map_err(|error| ConfigError::RedisUrlInvalid(error.to_string()))?;
        Ok(Self(url))
    }

    /// The URL itself, for the Redis client only: never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.0.split("://").next().unwrap_or_default();
        write!(f, "RedisUrl({scheme}://REDACTED)")
    }
}

/// How a handshake that fails the token check is answered (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthFailureMode {
    /// Answer `401` before any upgrade.
    Http,
    /// Upgrade, send close `1008` with the reason, drop. For browser pages, which cannot read
    /// the status of a failed handshake.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the server needs to run. `Default` is the development setup of SPEC §2.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// The shared secret (SPEC §4). `None`: the development token, unless a per-user source
    /// is configured, in which case there is no shared secret at all (SPEC §10).
    pub token: Option<Token>,
    /// Empty means any origin is allowed.
    pub allowed_origins: Vec<String>,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    /// Messages per second per connection; 0 turns rate limiting off.
    pub rate_limit: u32,
    pub rate_burst: u32,
    /// Events that may wait for one connection before it counts as a slow consumer.
    pub send_queue: usize,
    /// Messages kept per room for the `welcome` of new members.
    pub history: usize,
    pub max_rooms: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub shutdown_grace: Duration,
    pub auth_failure: AuthFailureMode,
    /// Failed handshakes (missing or wrong token) allowed per address and window; 0 turns
    /// brute-force throttling off.
    pub auth_fail_limit: u32,
    pub auth_fail_window: Duration,
    /// Join the cluster on this Redis (SPEC §11); `None` runs the in-memory single node.
    pub redis_url: Option<RedisUrl>,
    /// How long Redis keeps a room's history and sequence after its last activity.
    pub history_ttl: Duration,
    /// How long a node may go without renewing its lease before the others remove its members.
    pub node_timeout: Duration,
    /// Per-user tokens (SPEC §10): `NAME:SHA256HEX` lines.
    pub users_file: Option<PathBuf>,
    /// The key signed tokens (JWT) are verified with.
    pub jwt_key: Option<JwtKeyFile>,
    /// Required `iss` of a JWT, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` of a JWT, when set.
    pub jwt_audience: Option<String>,
    /// Clock difference tolerated on `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// How long before `exp` a connection is told its token is expiring.
    pub jwt_refresh_window: Duration,
    /// Open connections one per-user identity may have.
    pub max_connections_per_user: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listeners(),
            token: None,
            allowed_origins: Vec::new(),
            max_connections: 10_000,
            max_message_bytes: 16 * 1024,
            rate_limit: 10,
            rate_burst: 20,
            send_queue: 1024,
            history: 50,
            max_rooms: 10_000,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            auth_failure: AuthFailureMode::Http,
            auth_fail_limit: 20,
            auth_fail_window: Duration::from_secs(60),
            redis_url: None,
            history_ttl: Duration::from_secs(24 * 60 * 60),
            node_timeout: Duration::from_secs(15),
            users_file: None,
            jwt_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: Duration::from_secs(5),
            jwt_refresh_window: Duration::from_secs(60),
            max_connections_per_user: 16,
        }
    }
}

/// `127.0.0.1:3000` and `[::1]:3000`, so `ws://localhost:3000` works whichever address a
/// client resolves first.
pub fn default_listeners() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, DEFAULT_PORT)),
    ]
}

/// A configuration the server refuses to run with. Each renders as one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token is empty")]
    EmptyToken,
    #[error("give either --token or --token-file, not both")]
    TwoTokenSources,
    #[error(
        "refusing to listen on non-loopback address {0} with the development token; set --token or --token-file"
    )]
    DevelopmentTokenInPublic(SocketAddr),
    #[error("no listen address given")]
    NoListener,
    #[error("{name} must be greater than zero")]
    MustBePositive { name: &'static str },
    #[error("--rate-burst must be at least 1 when --rate-limit is on")]
    ZeroBurst,
    #[error("--redis-url must start with redis://, rediss:// or unix://")]
    RedisUrl,
    #[error("--redis-url is not usable: {0}")]
    RedisUrlInvalid(String),
    #[error("--node-timeout must be at least 1s")]
    NodeTimeoutTooShort,
    #[error("give either --jwt-secret-file or --jwt-public-key-file, not both")]
    TwoJwtKeys,
    /// A users file or JWT key that does not load; the message names the file.
    #[error("{0}")]
    Identity(String),
    #[error("{name} must be at most {max}")]
    TooLarge {
        name: &'static str,
        max: &'static str,
    },
}

/// The longest duration any option accepts: far beyond any sensible timeout, and far from the
/// point where adding it to the clock would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The shortest `--node-timeout`.
pub const MIN_NODE_TIMEOUT: Duration = Duration::from_secs(1);

/// The most connections `--max-connections` accepts: beyond any file-descriptor limit, and
/// within what a semaphore can count.
pub const MAX_CONNECTIONS: usize = 1 << 24;

impl Config {
    /// Checks the rules of SPEC §2 that a type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::NoListener);
        }
        if self
            .token
            .as_ref()
            .is_some_and(|token| token.expose().is_empty())
        {
            return Err(ConfigError::EmptyToken);
        }
        if self
            .shared_secret()
            .is_some_and(|token| token.is_development_token())
        {
            if let Some(public) = self.listen.iter().find(|addr| !addr.ip().is_loopback()) {
                return Err(ConfigError::DevelopmentTokenInPublic(*public));
            }
        }
        let positive = [
            ("--max-connections", self.max_connections as u128),
            ("--max-message-bytes", self.max_message_bytes as u128),
            ("--send-queue", self.send_queue as u128),
            ("--max-rooms", self.max_rooms as u128),
            ("--ping-interval", self.ping_interval.as_millis()),
            ("--idle-timeout", self.idle_timeout.as_millis()),
            ("--handshake-timeout", self.handshake_timeout.as_millis()),
            ("--auth-fail-window", self.auth_fail_window.as_millis()),
            ("--history-ttl", self.history_ttl.as_millis()),
            (
                "--max-connections-per-user",
                self.max_connections_per_user as u128,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::MustBePositive { name });
        }
        if self.rate_limit > 0 && self.rate_burst == 0 {
            return Err(ConfigError::ZeroBurst);
        }
        if self.max_connections > MAX_CONNECTIONS {
            return Err(ConfigError::TooLarge {
                name: "--max-connections",
                max: "16777216",
            });
        }
        let durations = [
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--handshake-timeout", self.handshake_timeout),
            ("--shutdown-grace", self.shutdown_grace),
            ("--auth-fail-window", self.auth_fail_window),
            ("--history-ttl", self.history_ttl),
            ("--node-timeout", self.node_timeout),
            ("--jwt-leeway", self.jwt_leeway),
            ("--jwt-refresh-window", self.jwt_refresh_window),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, value)| *value > MAX_DURATION) {
            return Err(ConfigError::TooLarge { name, max: "365d" });
        }
        // The lease is renewed three times per timeout; below a second that is busy work,
        // and a short pause of the process would get its members removed.
        if self.node_timeout < MIN_NODE_TIMEOUT {
            return Err(ConfigError::NodeTimeoutTooShort);
        }
        Ok(())
    }

    /// Whether a users file or a JWT key is configured.
    pub fn has_per_user_source(&self) -> bool {
        self.users_file.is_some() || self.jwt_key.is_some()
    }

    /// The shared secret clients may present: the one configured, else the development token
    /// when no per-user source is configured (SPEC §10 turns it off then).
    pub fn shared_secret(&self) -> Option<Token> {
        self.token
            .clone()
            .or_else(|| crate::identity::default_shared_secret(self.has_per_user_source()))
    }

    /// What a JWT must satisfy besides its signature.
    pub fn jwt_rules(&self) -> JwtRules {
        JwtRules {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
        }
    }
}

/// The command line of `wschat` (SPEC §2). No `Debug`: it would print the token.
#[derive(Parser)]
#[command(
    name = "wschat",
    version,
    about = "A token-gated WebSocket chat server"
)]
pub struct Cli {
    /// Address to listen on, as IP:PORT (repeatable) [default: 127.0.0.1:3000 and [::1]:3000]
    #[arg(
        long,
        value_name = "ADDR",
        env = "WSCHAT_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,
    /// The shared secret clients must present [default: the development token]
    #[arg(long, env = "WSCHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the secret from the first line of this file
    #[arg(long, value_name = "PATH", env = "WSCHAT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Browser origin allowed to connect (repeatable) [default: any]
    #[arg(
        long = "allowed-origin",
        value_name = "ORIGIN",
        env = "WSCHAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    #[arg(
        long,
        value_name = "N",
        env = "WSCHAT_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: usize,
    #[arg(
        long,
        value_name = "N",
        env = "WSCHAT_MAX_MESSAGE_BYTES",
        default_value_t = 16_384
    )]
    pub max_message_bytes: usize,
    /// Messages per second per connection; 0 turns the limit off
    #[arg(
        long,
        value_name = "N",
        env = "WSCHAT_RATE_LIMIT",
        default_value_t = 10
    )]
    pub rate_limit: u32,
    #[arg(
        long,
        value_name = "N",
        env = "WSCHAT_RATE_BURST",
        default_value_t = 20
    )]
    pub rate_burst: u32,
    /// Events queued per connection before it is closed as a slow consumer
    #[arg(
        long,
        value_name = "N",
        env = "WSCHAT_SEND_QUEUE",
        default_value_t = 1024
    )]
    pub send_queue: usize,
    /// Messages kept per room
    #[arg(long, value_name = "N", env = "WSCHAT_HISTORY", default_value_t = 50)]
    pub history: usize,
    #[arg(
        long,
        value_name = "N",
        env = "WSCHAT_MAX_ROOMS",
        default_value_t = 10_000
    )]
    pub max_rooms: usize,
    #[arg(long, value_name = "DURATION", env = "WSCHAT_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    #[arg(long, value_name = "DURATION", env = "WSCHAT_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    #[arg(long, value_name = "DURATION", env = "WSCHAT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    #[arg(long, value_name = "DURATION", env = "WSCHAT_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    #[arg(long, value_enum, env = "WSCHAT_AUTH_FAILURE", default_value_t = AuthFailureMode::Http)]
    pub auth_failure: AuthFailureMode,
    /// Failed handshakes per client address and window before it gets 429; 0 turns it off
    #[arg(
        long,
        value_name = "N",
        env = "WSCHAT_AUTH_FAIL_LIMIT",
        default_value_t = 20
    )]
    pub auth_fail_limit: u32,
    #[arg(long, value_name = "DURATION", env = "WSCHAT_AUTH_FAIL_WINDOW", default_value = "1m", value_parser = humantime::parse_duration)]
    pub auth_fail_window: Duration,
    #[arg(long, value_enum, env = "WSCHAT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Join a cluster of nodes on this Redis (redis://, rediss:// or unix://) [default: a
    /// single node, in memory]
    #[arg(
        long,
        value_name = "URL",
        env = "WSCHAT_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// How long Redis keeps a room's history after its last message, join or leave
    #[arg(long, value_name = "DURATION", env = "WSCHAT_HISTORY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,
    /// How long a silent node keeps its members before the other nodes remove them
    #[arg(long, value_name = "DURATION", env = "WSCHAT_NODE_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub node_timeout: Duration,
    /// Per-user tokens: a file of NAME:SHA256HEX lines (see `wschat users add`)
    #[arg(long, value_name = "PATH", env = "WSCHAT_USERS_FILE")]
    pub users_file: Option<PathBuf>,
    /// Verify signed tokens (JWT, HS256) with the secret in this file
    #[arg(long, value_name = "PATH", env = "WSCHAT_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Verify signed tokens (JWT) with this PEM public key: Ed25519, P-256 or RSA
    #[arg(long, value_name = "PATH", env = "WSCHAT_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` of signed tokens [default: not checked]
    #[arg(long, value_name = "ISSUER", env = "WSCHAT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of signed tokens [default: not checked]
    #[arg(long, value_name = "AUDIENCE", env = "WSCHAT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock difference tolerated on a signed token's exp and nbf
    #[arg(long, value_name = "DURATION", env = "WSCHAT_JWT_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
    /// How long before its token expires a connection is told so
    #[arg(long, value_name = "DURATION", env = "WSCHAT_JWT_REFRESH_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub jwt_refresh_window: Duration,
    /// Open connections one user (users file or JWT) may have
    #[arg(
        long,
        value_name = "N",
        env = "WSCHAT_MAX_CONNECTIONS_PER_USER",
        default_value_t = 16
    )]
    pub max_connections_per_user: usize,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `wschat` does besides serving.
#[derive(Subcommand)]
pub enum Command {
    /// Edit a users file (SPEC §10)
    #[command(subcommand)]
    Users(UsersCommand),
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add a user with a fresh random token, printed once
    Add {
        /// 1-32 characters of A-Z a-z 0-9 _ . - (not starting with guest-)
        name: String,
        /// The users file (created if missing)
        #[arg(long, value_name = "PATH", env = "WSCHAT_USERS_FILE")]
        file: PathBuf,
    },
    /// Remove a user; their open connections are closed at the server's next reload
    Remove {
        name: String,
        #[arg(long, value_name = "PATH", env = "WSCHAT_USERS_FILE")]
        file: PathBuf,
    },
}

impl Cli {
    /// Parses the process's arguments and environment. When the token comes from both
    /// `WSCHAT_TOKEN(_FILE)` and the other option's flag, the flag wins, as it does over its
    /// own variable; both given as flags (or both as variables) is an error.
    pub fn try_parse_args() -> Result<Self, clap::Error> {
        Self::try_parse_from_args(std::env::args_os())
    }

    /// [`Cli::try_parse_args`] for explicit arguments (the environment is still read).
    pub fn try_parse_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let from_env = |id: &str| matches.value_source(id) == Some(ValueSource::EnvVariable);
        if cli.token.is_some() && cli.token_file.is_some() {
            match (from_env("token"), from_env("token_file")) {
                (true, false) => cli.token = None,
                (false, true) => cli.token_file = None,
                _ => {}
            }
        }
        Ok(cli)
    }

    /// Resolves the token source and validates the result.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let token = match (self.token, self.token_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoTokenSources),
            (Some(token), None) => Some(token),
            (None, Some(path)) => Some(read_token_file(path)?),
            (None, None) => None,
        };
        let jwt_key = match (self.jwt_secret_file, self.jwt_public_key_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoJwtKeys),
            (Some(secret), None) => Some(JwtKeyFile::Secret(secret)),
            (None, Some(public)) => Some(JwtKeyFile::PublicKey(public)),
            (None, None) => None,
        };
        let config = Config {
            listen: if self.listen.is_empty() {
                default_listeners()
            } else {
                self.listen
            },
            token: token.map(Token::new),
            allowed_origins: self.allowed_origins,
            max_connections: self.max_connections,
            max_message_bytes: self.max_message_bytes,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            send_queue: self.send_queue,
            history: self.history,
            max_rooms: self.max_rooms,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            handshake_timeout: self.handshake_timeout,
            shutdown_grace: self.shutdown_grace,
            auth_failure: self.auth_failure,
            auth_fail_limit: self.auth_fail_limit,
            auth_fail_window: self.auth_fail_window,
            redis_url: self.redis_url.map(RedisUrl::new).transpose()?,
            history_ttl: self.history_ttl,
            node_timeout: self.node_timeout,
            users_file: self.users_file,
            jwt_key,
            jwt_issuer: self.jwt_issuer,
            jwt_audience: self.jwt_audience,
            jwt_leeway: self.jwt_leeway,
            jwt_refresh_window: self.jwt_refresh_window,
            max_connections_per_user: self.max_connections_per_user,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The secret is the file's first line; surrounding white space (a trailing `\r\n`) is not part
/// of it.
fn read_token_file(path: PathBuf) -> Result<String, ConfigError> {
    let contents = std::fs::read_to_string(&path).map_err(|source| ConfigError::TokenFile {
        path: path.clone(),
        source,
    })?;
    let first_line = contents.lines().next().unwrap_or_default().trim();
    if first_line.is_empty() {
        return Err(ConfigError::EmptyToken);
    }
    Ok(first_line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["wschat"];
        argv.extend_from_slice(args);
        Cli::try_parse_from_args(argv)
            .expect("arguments parse")
            .into_config()
    }

    #[test]
    fn out_of_range_values_are_refused_not_panicked_on() {
        for args in [
            &["--max-connections", "18446744073709551615"][..],
            &["--idle-timeout", "500000000000y"],
            &["--ping-interval", "400d"],
            &["--auth-fail-window", "1000y"],
        ] {
            let err = parse(args).unwrap_err();
            assert!(
                matches!(err, ConfigError::TooLarge { .. }),
                "{args:?}: {err}"
            );
            assert!(err.to_string().contains(args[0]), "{err}");
        }
    }

    #[test]
    fn defaults_follow_the_spec() {
        let config = parse(&[]).expect("default config is valid");
        assert_eq!(config.listen, default_listeners());
        assert!(config.token.is_none());
        assert!(config.shared_secret().unwrap().is_development_token());
        assert_eq!(config.max_message_bytes, 16_384);
        assert_eq!(config.ping_interval, Duration::from_secs(30));
        assert_eq!(config.auth_failure, AuthFailureMode::Http);
    }

    #[test]
    fn durations_are_human() {
        let config = parse(&["--idle-timeout", "500ms", "--shutdown-grace", "2m"]).unwrap();
        assert_eq!(config.idle_timeout, Duration::from_millis(500));
        assert_eq!(config.shutdown_grace, Duration::from_secs(120));
    }

    #[test]
    fn development_token_is_refused_off_loopback() {
        let err = parse(&["--listen", "0.0.0.0:3000"]).unwrap_err();
        assert!(
            matches!(err, ConfigError::DevelopmentTokenInPublic(_)),
            "{err}"
        );
        parse(&["--listen", "0.0.0.0:3000", "--token", "s3cret"]).expect("real token is fine");
    }

    #[test]
    fn empty_token_is_refused() {
        assert!(matches!(
            parse(&["--token", ""]),
            Err(ConfigError::EmptyToken)
        ));
    }

    #[test]
    fn token_file_supplies_its_first_line() {
        let path = std::env::temp_dir().join(format!("wschat-token-{}", std::process::id()));
        std::fs::write(&path, "from-file\r\nsecond line\n").unwrap();
        let config = parse(&["--token-file", path.to_str().unwrap()]).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(config.token.unwrap().matches(b"from-file"));
    }

    #[test]
    fn missing_token_file_names_the_path() {
        let err = parse(&["--token-file", "/nonexistent/wschat-token"]).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/wschat-token"),
            "{err}"
        );
    }

    #[test]
    fn token_debug_is_redacted() {
        let token = Token::new("hunter2");
        assert!(!format!("{token:?}").contains("hunter2"));
        assert!(token.matches(b"hunter2"));
        assert!(!token.matches(b"hunter3"));
        assert!(!token.matches(b"hunter2 "));
    }
}
