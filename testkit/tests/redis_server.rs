//! `RedisServer` starts a real `redis-server`, kills and restarts it on the same port with
//! nothing kept, and leaves no process behind. Every test returns early (and a notice says so)
//! where `redis-server` is not installed.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use wschat_testkit::RedisServer;

/// How long a killed process may take to disappear from `/proc`.
const GONE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `pid` is a `redis-server` that has not been reaped. Checking the name, not just that
/// `/proc/PID` exists, keeps a reused pid from passing for the old server.
fn redis_server_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|name| name.trim_end() == "redis-server")
}

/// Waits, bounded, until process `pid` is gone.
fn assert_gone(pid: u32) {
    let deadline = Instant::now() + GONE_TIMEOUT;
    while redis_server_running(pid) {
        assert!(
            Instant::now() < deadline,
            "redis-server (pid {pid}) still runs {GONE_TIMEOUT:?} after it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn start_answers_ping() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let pong: String = redis.command(&["PING"]).await;
    assert_eq!(pong, "PONG");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    assert!(redis_server_running(redis.pid()));
    let keys: i64 = redis.command(&["DBSIZE"]).await;
    assert_eq!(keys, 0);
}

#[tokio::test]
async fn command_errors_are_reported() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let error = redis
        .try_command::<String>(&["NO-SUCH-COMMAND"])
        .await
        .expect_err("an unknown command fails");
    assert!(error.to_string().contains("unknown command"), "{error}");
}

#[tokio::test]
async fn kill_stops_it_and_frees_the_port() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let pid = redis.pid();
    redis.kill();

    assert!(
        !redis_server_running(pid),
        "kill returns once it has exited"
    );
    assert!(redis.try_command::<String>(&["PING"]).await.is_err());
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, redis.port())).is_err());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, redis.port()));
    assert!(listener.is_ok(), "port is free after kill: {listener:?}");
    drop(listener);

    redis.kill(); // a second kill does nothing
}

#[tokio::test]
async fn restart_comes_back_empty_on_the_same_port() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let port = redis.port();
    let old_pid = redis.pid();
    redis.command::<()>(&["SET", "before", "crash"]).await;
    let keys: i64 = redis.command(&["DBSIZE"]).await;
    assert_eq!(keys, 1);

    redis.kill();
    redis.restart().await;

    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), old_pid);
    let pong: String = redis.command(&["PING"]).await;
    assert_eq!(pong, "PONG");
    let value: Option<String> = redis.command(&["GET", "before"]).await;
    assert_eq!(value, None);
    let keys: i64 = redis.command(&["DBSIZE"]).await;
    assert_eq!(keys, 0);
}

#[tokio::test]
async fn restart_kills_a_running_server_first() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let old_pid = redis.pid();
    redis.command::<()>(&["SET", "key", "value"]).await;

    redis.restart().await;

    assert_gone(old_pid);
    let keys: i64 = redis.command(&["DBSIZE"]).await;
    assert_eq!(keys, 0);
}

#[tokio::test]
async fn parallel_servers_are_separate() {
    let (Some(first), Some(second)) = tokio::join!(RedisServer::start(), RedisServer::start())
    else {
        return;
    };
    assert_ne!(first.port(), second.port());
    assert_ne!(first.pid(), second.pid());

    first.command::<()>(&["SET", "only", "first"]).await;
    let keys: i64 = second.command(&["DBSIZE"]).await;
    assert_eq!(keys, 0);
}

#[tokio::test]
async fn drop_kills_the_process() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let pid = redis.pid();
    let port = redis.port();
    assert!(redis_server_running(pid));

    drop(redis);

    assert_gone(pid);
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
}

#[tokio::test]
async fn restart_waits_for_its_port() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    redis.kill();
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, redis.port()))
        .unwrap_or_else(|error| panic!("port is free after kill: {error}"));

    // Whenever the port is released, before or during the restart, it must come back there.
    let release = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(squatter);
    };
    tokio::join!(redis.restart(), release);

    let pong: String = redis.command(&["PING"]).await;
    assert_eq!(pong, "PONG");
}
