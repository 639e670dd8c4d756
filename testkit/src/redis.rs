//! [`RedisServer`]: a real `redis-server` for the tests of the Redis-backed cluster mode.
//!
//! Each server is a child process on its own free loopback port with its own temporary
//! directory, and keeps nothing on disk, so tests can run many in parallel and a restart always
//! comes back empty. Its log goes to a file in that directory, to keep test output clean; a
//! server that fails to start panics with the end of that log.
//!
//! Where `redis-server` is not installed, [`RedisServer::start`] returns `None` (after printing
//! a loud notice once) so the calling test can return early, unless `WSCHAT_REQUIRE_REDIS=1`
//! asks for a failure instead.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, FromRedisValue, RedisResult};
use tempfile::TempDir;

use crate::{TestCa, DEFAULT_TIMEOUT};

/// How long one `redis-server` may take to answer `PING` after it is spawned, and how long
/// [`RedisServer::restart`] keeps trying to get its port back.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a starting server is probed. Short: this waits for an external process to come
/// up, not for test logic, and the probe costs one refused connection.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Connection and reply timeouts of one readiness probe. Short, because the port may belong to
/// something else for a moment (which accepts and never answers); a slow server is just probed
/// again.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many fresh ports [`RedisServer::start`] tries: the free port it picks can be taken by
/// someone else before `redis-server` binds it.
const START_ATTEMPTS: usize = 5;

/// How long [`RedisServer::restart`] waits before trying its port again.
const PORT_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// What `redis-server` logs when its port is taken.
const PORT_TAKEN: &str = "Address already in use";

/// The log file, in the server's temporary directory.
const LOG_FILE: &str = "redis.log";

/// Lines of the log quoted in a failure message.
const LOG_TAIL_LINES: usize = 40;

/// Printed (uncaptured) when a test skips for want of `redis-server`.
const SKIP_NOTICE: &str = "
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! SKIPPED Redis test: redis-server was not found on the PATH.             !!
!! The Redis-backed cluster mode is NOT tested. Install it (Debian:        !!
!!   apt-get install -y redis-server); WSCHAT_REQUIRE_REDIS=1 turns this   !!
!!   skip into a failure.                                                  !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
";

/// A real `redis-server` on `127.0.0.1` on a port of its own, without persistence.
///
/// Dropping it kills the process (and waits for it) and removes its temporary directory.
///
/// ```
/// use wschat_testkit::RedisServer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let Some(mut redis) = RedisServer::start().await else {
///     return; // no redis-server here: skipped, and a notice on stderr says so
/// };
/// assert!(redis.url().starts_with("redis://127.0.0.1:"));
/// redis.command::<()>(&["SET", "greeting", "hello"]).await;
/// let greeting: String = redis.command(&["GET", "greeting"]).await;
/// assert_eq!(greeting, "hello");
///
/// redis.kill();
/// redis.restart().await;
/// let keys: i64 = redis.command(&["DBSIZE"]).await;
/// assert_eq!(keys, 0); // nothing survives a restart
/// # }
/// ```
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    /// The TLS port of a server started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
    /// Arguments beyond the common ones (the TLS setup), kept for restarts.
    extra_args: Vec<String>,
    /// The current process, or the last one once it has been killed.
    child: Child,
    /// Holds the log; removed on drop, after `child` is killed.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// Returns `None` when `redis-server` is not on the `PATH`, after printing a loud notice to
    /// stderr (once per test binary), so the calling test can return early; with
    /// `WSCHAT_REQUIRE_REDIS=1` it panics instead. Panics, with the end of the server's log, if
    /// the server does not start.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let Some(redis) = wschat_testkit::RedisServer::start().await else {
    ///     return;
    /// };
    /// let pong: String = redis.command(&["PING"]).await;
    /// assert_eq!(pong, "PONG");
    /// # }
    /// ```
    pub async fn start() -> Option<Self> {
        Self::start_with(|_| (None, Vec::new())).await
    }

    /// Starts a server that also serves TLS (`rediss://`, see [`RedisServer::tls_url`]) with a
    /// certificate for `localhost` and `127.0.0.1` issued by `ca`. Clients are not asked for
    /// certificates. The plain port stays open for [`RedisServer::command`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let ca = wschat_testkit::TestCa::new();
    /// let Some(redis) = wschat_testkit::RedisServer::start_tls(&ca).await else {
    ///     return;
    /// };
    /// assert!(redis.tls_url().starts_with("rediss://localhost:"));
    /// # }
    /// ```
    pub async fn start_tls(ca: &TestCa) -> Option<Self> {
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
        Self::start_with(|dir| {
            let write = |name: &str, pem: &str| {
                let path = dir.join(name);
                std::fs::write(&path, pem)
                    .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
                path.display().to_string()
            };
            let tls_port = free_port();
            let args = vec![
                "--tls-port".to_owned(),
                tls_port.to_string(),
                "--tls-cert-file".to_owned(),
                write("server.pem", &cert),
                "--tls-key-file".to_owned(),
                write("server.key", &key),
                "--tls-ca-cert-file".to_owned(),
                write("ca.pem", ca.ca_pem()),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ];
            (Some(tls_port), args)
        })
        .await
    }

    /// `rediss://localhost:PORT/`, for a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self
            .tls_port
            .unwrap_or_else(|| panic!("this redis-server was not started with TLS"));
        format!("rediss://localhost:{port}/")
    }

    async fn start_with(setup: impl FnOnce(&Path) -> (Option<u16>, Vec<String>)) -> Option<Self> {
        let binary = redis_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("wschat-redis-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a directory for redis-server: {error}"));
        let (tls_port, extra_args) = setup(dir.path());
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            if let Launch::Ready(child) = launch(&binary, dir.path(), port, &extra_args).await {
                return Some(Self {
                    binary,
                    port,
                    tls_port,
                    extra_args,
                    child,
                    dir,
                });
            }
        }
        panic!(
            "redis-server found its port taken {START_ATTEMPTS} times in a row; its log ends:\n{}",
            tail(&log_since(dir.path(), 0))
        );
    }

    /// The port it listens on, which stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let Some(redis) = wschat_testkit::RedisServer::start().await else { return };
    /// assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    /// # }
    /// ```
    pub fn url(&self) -> String {
        url(self.port)
    }

    /// The process id of the current `redis-server` (for reading its CPU time from
    /// `/proc/PID/stat`); after [`kill`](Self::kill), that of the process just killed, until
    /// [`restart`](Self::restart).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with `SIGKILL`, as a crash would, and waits until it has exited, so its
    /// port is free when this returns. Does nothing if it is not running.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let Some(mut redis) = wschat_testkit::RedisServer::start().await else { return };
    /// redis.kill();
    /// assert!(redis.try_command::<String>(&["PING"]).await.is_err());
    /// # }
    /// ```
    pub fn kill(&mut self) {
        // `kill` is a no-op on a process already reaped, and the blocking `wait` is brief: a
        // process cannot ignore SIGKILL, so it only waits for the kernel to tear it down.
        if let Err(error) = self.child.kill() {
            panic!("cannot kill redis-server (pid {}): {error}", self.pid());
        }
        if let Err(error) = self.child.wait() {
            panic!("cannot reap redis-server (pid {}): {error}", self.pid());
        }
    }

    /// Starts the server again, on the same port and in the same directory, and waits until it
    /// answers `PING`. It comes back empty: nothing is persisted. A server still running is
    /// [killed](Self::kill) first.
    ///
    /// Panics if the port stays taken by something else for 10 s, or the server does not start.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match launch(&self.binary, self.dir.path(), self.port, &self.extra_args).await {
                Launch::Ready(child) => {
                    self.child = child;
                    return;
                }
                Launch::PortTaken if Instant::now() < deadline => {
                    tokio::time::sleep(PORT_RETRY_INTERVAL).await;
                }
                Launch::PortTaken => panic!(
                    "redis-server could not get port {} back within {START_TIMEOUT:?}",
                    self.port
                ),
            }
        }
    }

    /// Runs one command on a new connection and converts the reply to `T` (`String`, `i64`,
    /// `()`, [`redis::Value`], ...). Panics if the server cannot be reached, replies with an
    /// error, or replies with something `T` cannot hold.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let Some(redis) = wschat_testkit::RedisServer::start().await else { return };
    /// // Drop every subscriber's connection, as a network failure between a node and Redis would.
    /// let killed: i64 = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    /// assert_eq!(killed, 0);
    /// # }
    /// ```
    pub async fn command<T: FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_command(args).await.unwrap_or_else(|error| {
            panic!("redis command {args:?} on {} failed: {error}", self.url())
        })
    }

    /// Like [`command`](Self::command), but returns what went wrong instead of panicking, for
    /// tests where the server is meant to be unreachable or the command to fail.
    pub async fn try_command<T: FromRedisValue>(&self, args: &[&str]) -> RedisResult<T> {
        let mut connection = client(self.port)
            .get_multiplexed_async_connection_with_config(&connection_config(DEFAULT_TIMEOUT))
            .await?;
        let mut command = redis::Cmd::new();
        for arg in args {
            command.arg(*arg);
        }
        command.query_async(&mut connection).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Errors are ignored: this may run while a failed test unwinds, and the process is
        // gone either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one spawn of `redis-server` went, when it did not fail outright.
enum Launch {
    /// It answers `PING` as itself.
    Ready(Child),
    /// It exited because the port was taken (and has been reaped).
    PortTaken,
}

/// Spawns `redis-server` on `port` with `dir` as its directory and waits until it answers.
///
/// Panics with the end of its log if it exits for any other reason than a taken port, or is not
/// ready within [`START_TIMEOUT`].
async fn launch(binary: &Path, dir: &Path, port: u16, extra_args: &[String]) -> Launch {
    let log_path = dir.join(LOG_FILE);
    // Each run appends to the same log; only this run's part tells why it failed.
    let log_start = std::fs::metadata(&log_path).map_or(0, |meta| meta.len());
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", log_path.display()));
    // Its stdout and stderr go to the log too: errors in its arguments are printed there
    // before it opens `--logfile`.
    let stderr = log
        .try_clone()
        .unwrap_or_else(|error| panic!("cannot reopen {}: {error}", log_path.display()));
    let mut child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        // Nothing on disk: no RDB snapshots, no append-only file.
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log_path)
        .args(["--daemonize", "no"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));

    // A real-time deadline: the server is a real process, whatever the test does to tokio's
    // clock.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                let log = log_since(dir, log_start);
                if log.contains(PORT_TAKEN) {
                    return Launch::PortTaken;
                }
                panic!(
                    "redis-server on port {port} exited ({status}); its log ends:\n{}",
                    tail(&log)
                );
            }
            Err(error) => panic!("cannot check on redis-server (pid {}): {error}", child.id()),
        }
        if answers_as(port, child.id()).await {
            return Launch::Ready(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}; \
                 its log ends:\n{}",
                tail(&log_since(dir, log_start))
            );
        }
        tokio::time::sleep(READY_POLL_INTERVAL).await;
    }
}

/// Whether the server on `port` answers `PING` and is process `pid`: when two tests pick the
/// same port, one server fails to bind, and the other's answer must not pass for its own.
async fn answers_as(port: u16, pid: u32) -> bool {
    let Ok(mut connection) = client(port)
        .get_multiplexed_async_connection_with_config(&connection_config(PROBE_TIMEOUT))
        .await
    else {
        return false;
    };
    let pong: RedisResult<String> = redis::cmd("PING").query_async(&mut connection).await;
    if !matches!(pong.as_deref(), Ok("PONG")) {
        return false;
    }
    let info: RedisResult<String> = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await;
    let expected = format!("process_id:{pid}");
    info.is_ok_and(|info| info.lines().any(|line| line.trim() == expected))
}

/// `redis-server` from the `PATH`, or `None` (after the skip notice) when it is not there.
fn redis_server_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let required = std::env::var("WSCHAT_REQUIRE_REDIS").is_ok_and(|value| value == "1");
        assert!(
            !required,
            "WSCHAT_REQUIRE_REDIS=1 but redis-server was not found on the PATH \
             (apt-get install -y redis-server)"
        );
        // Straight to stderr, once per test binary: libtest captures `eprintln!` of passing
        // tests, and this notice must be seen.
        static NOTICE: Once = Once::new();
        NOTICE.call_once(|| {
            let _ = std::io::stderr().write_all(SKIP_NOTICE.as_bytes());
        });
    }
    found
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|error| panic!("cannot find a free loopback port: {error}"))
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

fn client(port: u16) -> redis::Client {
    redis::Client::open(url(port))
        .unwrap_or_else(|error| panic!("invalid redis URL {}: {error}", url(port)))
}

/// A connection that gives up on connecting, and on each reply, after `timeout` (the client's
/// own default is half a second for a reply, short for a loaded test machine).
fn connection_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
}

/// What the log in `dir` gained from byte `start` on (all of it if it shrank).
fn log_since(dir: &Path, start: u64) -> String {
    let path = dir.join(LOG_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let start = usize::try_from(start).unwrap_or(0);
            let new = bytes.get(start..).unwrap_or(&bytes);
            String::from_utf8_lossy(new).into_owned()
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `log`.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
