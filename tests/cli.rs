//! The `wschat` binary (SPEC §2, §6, §7): start-up line, configuration errors, signals, logs.
//! Each test runs the real executable on port 0 with a clean environment.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rstest::rstest;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wschat_testkit::{ClientBuilder, ConnectError};

const WAIT: Duration = Duration::from_secs(10);

fn wschat(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wschat"));
    command
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Starts the binary and returns it with the address of its first `listening on` line.
async fn start(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = wschat(args).spawn().expect("the wschat binary starts");
    let addr = listening_addrs(&mut child, 1).await[0];
    (child, addr)
}

/// Reads the first `count` lines of a started binary, each `wschat listening on ws://ADDR`,
/// and returns their addresses.
async fn listening_addrs(child: &mut Child, count: usize) -> Vec<SocketAddr> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut addrs = Vec::with_capacity(count);
    for _ in 0..count {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a listening line within the timeout")
            .expect("readable stdout")
            .expect("a line before stdout closed");
        let url = line
            .strip_prefix("wschat listening on ws://")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        addrs.push(url.parse().expect("a socket address"));
    }
    addrs
}

fn terminate(child: &Child) {
    send_signal(child, "TERM");
}

/// Sends the named signal (`TERM`, `INT`) to the child, as `kill -NAME` does.
fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("running child").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status();
    assert!(status.expect("kill runs").success());
}

async fn exit_of(child: Child) -> (ExitStatus, String) {
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the process exits within the timeout")
        .expect("output");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[rstest]
#[case::sigterm("TERM")]
#[case::sigint("INT")]
#[tokio::test]
async fn serves_chat_and_exits_0_on_a_signal_after_closing_clients_with_1001(#[case] signal: &str) {
    let (child, addr) = start(&["--listen", "127.0.0.1:0", "--token", "cli-secret"]).await;
    let mut alice = ClientBuilder::new(addr)
        .token("cli-secret")
        .name("alice")
        .connect_ok()
        .await;
    let mut bob = ClientBuilder::new(addr)
        .token("cli-secret")
        .name("bob")
        .connect_ok()
        .await;
    alice.say("over the wire").await;
    assert_eq!(bob.recv_message().await.text, "over the wire");

    send_signal(&child, signal);
    for client in [&mut alice, &mut bob] {
        let (code, reason) = client.expect_close().await;
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    }
    let (status, _) = exit_of(child).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn logs_never_contain_the_token() {
    const SECRET: &str = "log-secret-4a7f";
    let (child, addr) = start(&["--listen", "127.0.0.1:0", "--token", SECRET]).await;
    let accepted = ClientBuilder::new(addr)
        .token(SECRET)
        .name("logged")
        .connect_ok()
        .await;
    let rejected = ClientBuilder::new(addr)
        .raw_query(format!("token={SECRET}x&name=intruder"))
        .connect_rejected()
        .await;
    assert_eq!(rejected.status, 401);
    let header_rejected = ClientBuilder::new(addr)
        .bearer(format!("{SECRET}y"))
        .connect_rejected()
        .await;
    assert_eq!(header_rejected.status, 401);
    accepted.close().await;

    terminate(&child);
    let (status, logs) = exit_of(child).await;
    assert_eq!(status.code(), Some(0));
    assert!(logs.contains("connection accepted"), "{logs}");
    assert!(logs.contains("connection closed"), "{logs}");
    assert!(logs.contains("handshake rejected"), "{logs}");
    assert!(logs.contains("token=REDACTED"), "{logs}");
    assert!(
        !logs.contains(SECRET),
        "the token leaked into the logs:\n{logs}"
    );
}

/// Log lines are batched (src/logs.rs), but an idle server must still write each one as it
/// happens, not only on its way out.
#[tokio::test]
async fn a_log_line_is_written_while_the_server_runs() {
    let (mut child, addr) = start(&["--listen", "127.0.0.1:0", "--token", "live-secret"]).await;
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let rejected = ClientBuilder::new(addr).no_token().connect_rejected().await;
    assert_eq!(rejected.status, 401);
    let line = tokio::time::timeout(WAIT, async {
        while let Some(line) = stderr.next_line().await.expect("readable stderr") {
            if line.contains("handshake rejected") {
                return line;
            }
        }
        panic!("stderr closed before the rejection was logged");
    })
    .await
    .expect("the rejection is logged while the server runs");
    assert!(line.contains("missing_token"), "{line}");
    terminate(&child);
    assert_eq!(exit_of(child).await.0.code(), Some(0));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let (child, addr) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--token",
        "json-secret",
        "--log-format",
        "json",
    ])
    .await;
    ClientBuilder::new(addr)
        .token("json-secret")
        .connect_ok()
        .await
        .close()
        .await;
    terminate(&child);
    let (_, logs) = exit_of(child).await;
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 2, "{logs}");
    for line in lines {
        let parsed: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(parsed.get("level").is_some(), "{line}");
    }
}

#[tokio::test]
async fn the_development_token_works_with_a_warning() {
    let (child, addr) = start(&["--listen", "127.0.0.1:0"]).await;
    let client = ClientBuilder::new(addr)
        .token(wschat::DEVELOPMENT_TOKEN)
        .connect_ok()
        .await;
    client.close().await;
    match ClientBuilder::new(addr).connect().await {
        Err(ConnectError::Rejected(rejected)) => assert_eq!(rejected.status, 401),
        other => panic!(
            "expected a 401 without a token, got {:?}",
            other.map(|c| c.user().to_owned())
        ),
    }
    terminate(&child);
    let (_, logs) = exit_of(child).await;
    assert!(logs.contains("development token"), "{logs}");
}

#[tokio::test]
async fn environment_variables_configure_and_flags_win() {
    let mut command = wschat(&["--token", "from-flag"]);
    command
        .env("WSCHAT_LISTEN", "127.0.0.1:0")
        .env("WSCHAT_TOKEN", "from-env");
    let mut child = command.spawn().expect("spawn");
    let addr = listening_addrs(&mut child, 1).await[0];
    ClientBuilder::new(addr)
        .token("from-flag")
        .connect_ok()
        .await
        .close()
        .await;
    let rejected = ClientBuilder::new(addr)
        .token("from-env")
        .connect_rejected()
        .await;
    assert_eq!(rejected.status, 401);
    terminate(&child);
    assert_eq!(exit_of(child).await.0.code(), Some(0));
}

#[tokio::test]
async fn list_variables_are_comma_separated() {
    let mut command = wschat(&["--token", "list-secret"]);
    command.env("WSCHAT_LISTEN", "127.0.0.1:0,127.0.0.2:0").env(
        "WSCHAT_ALLOWED_ORIGINS",
        "https://a.example,https://b.example",
    );
    let mut child = command.spawn().expect("spawn");
    let addrs = listening_addrs(&mut child, 2).await;
    let ips: Vec<String> = addrs.iter().map(|addr| addr.ip().to_string()).collect();
    assert_eq!(ips, ["127.0.0.1", "127.0.0.2"]);
    for addr in addrs {
        for origin in ["https://a.example", "https://b.example"] {
            ClientBuilder::new(addr)
                .token("list-secret")
                .header("Origin", origin)
                .connect_ok()
                .await
                .close()
                .await;
        }
        let rejected = ClientBuilder::new(addr)
            .token("list-secret")
            .header("Origin", "https://c.example")
            .connect_rejected()
            .await;
        assert_eq!(rejected.status, 403);
    }
    terminate(&child);
    assert_eq!(exit_of(child).await.0.code(), Some(0));
}

#[rstest]
#[case::development_token_on_a_public_address(&["--listen", "0.0.0.0:0"], "development token")]
#[case::unparseable_number(&["--max-connections", "many"], "--max-connections")]
#[case::unknown_flag(&["--frobnicate"], "--frobnicate")]
#[case::bad_duration(&["--idle-timeout", "soon"], "--idle-timeout")]
#[case::bad_listen_address(&["--listen", "localhost"], "--listen")]
#[case::missing_token_file(&["--token-file", "/nonexistent/wschat.token"], "/nonexistent/wschat.token")]
#[case::empty_token(&["--token", ""], "empty")]
#[case::zero_connections(&["--max-connections", "0"], "--max-connections")]
#[case::bad_auth_mode(&["--auth-failure", "maybe"], "--auth-failure")]
#[case::huge_connection_limit(&["--max-connections", "18446744073709551615"], "--max-connections")]
#[case::huge_duration(&["--idle-timeout", "500000000000y"], "--idle-timeout")]
#[case::two_token_flags(&["--token", "a", "--token-file", "/tmp/x"], "--token-file")]
#[case::two_jwt_keys(&["--jwt-secret-file", "/tmp/a", "--jwt-public-key-file", "/tmp/b"], "--jwt-public-key-file")]
#[case::zero_connections_per_user(&["--max-connections-per-user", "0"], "--max-connections-per-user")]
#[case::missing_users_file(&["--users-file", "/nonexistent/wschat.users"], "/nonexistent/wschat.users")]
#[case::redis_url_of_another_scheme(&["--redis-url", "http://127.0.0.1:6379/"], "--redis-url")]
#[case::unparseable_redis_url(&["--redis-url", "redis://[::1"], "--redis-url")]
#[case::node_timeout_too_short(&["--redis-url", "redis://127.0.0.1:1/", "--node-timeout", "500ms"], "--node-timeout")]
#[case::zero_history_ttl(&["--history-ttl", "0s"], "--history-ttl")]
#[tokio::test]
async fn bad_configuration_exits_2_with_one_line(#[case] args: &[&str], #[case] named: &str) {
    let child = wschat(args).spawn().expect("spawn");
    let (status, stderr) = exit_of(child).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(named), "{stderr:?} should name {named:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A password in `--redis-url` stays out of every line: the configuration error that names the
/// URL, and the warning of a node that cannot reach its Redis.
#[tokio::test]
async fn a_redis_password_never_reaches_the_output() {
    let child = wschat(&["--redis-url", "redis://user:hunter2-secret@[::1"])
        .spawn()
        .expect("spawn");
    let (status, stderr) = exit_of(child).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("hunter2-secret"), "{stderr}");

    // Port 1 on loopback: nothing listens, so the node warns that Redis is unreachable.
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        "redis://user:hunter2-secret@127.0.0.1:1/",
    ];
    let (mut child, _addr) = start(&args).await;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let warning = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("cannot reach redis") {
                return line;
            }
        }
        panic!("the node's log ended without the warning");
    })
    .await
    .expect("the node warns that it cannot reach redis");
    assert!(!warning.contains("hunter2-secret"), "{warning}");
    assert!(!warning.contains("user:"), "{warning}");
}

#[tokio::test]
async fn token_file_supplies_the_secret() {
    let path = std::env::temp_dir().join(format!("wschat-cli-token-{}", std::process::id()));
    std::fs::write(&path, "file-secret\n").expect("write token file");
    let (child, addr) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        path.to_str().unwrap(),
    ])
    .await;
    ClientBuilder::new(addr)
        .token("file-secret")
        .connect_ok()
        .await
        .close()
        .await;
    terminate(&child);
    let (status, _) = exit_of(child).await;
    std::fs::remove_file(&path).ok();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_token_file_flag_wins_over_the_token_variable() {
    let path = std::env::temp_dir().join(format!("wschat-cli-flag-{}", std::process::id()));
    std::fs::write(&path, "file-wins\n").expect("write token file");
    let mut command = wschat(&[
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        path.to_str().unwrap(),
    ]);
    command.env("WSCHAT_TOKEN", "from-env");
    let mut child = command.spawn().expect("spawn");
    let addr = listening_addrs(&mut child, 1).await[0];
    ClientBuilder::new(addr)
        .token("file-wins")
        .connect_ok()
        .await
        .close()
        .await;
    terminate(&child);
    let (status, _) = exit_of(child).await;
    std::fs::remove_file(&path).ok();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn help_exits_0() {
    let output = wschat(&["--help"]).output().await.expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--token-file",
        "--allowed-origin",
        "--auth-failure",
        "--shutdown-grace",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}

/// Runs `wschat users …` to completion and returns its status, stdout and stderr.
async fn users_command(args: &[&str]) -> (ExitStatus, String, String) {
    let output = tokio::time::timeout(WAIT, wschat(args).output())
        .await
        .expect("wschat users exits within the timeout")
        .expect("output");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn users_add_prints_a_token_once_and_the_server_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    let file = file.to_str().unwrap();
    let (status, stdout, stderr) = users_command(&["users", "add", "alice", "--file", file]).await;
    assert!(status.success(), "{stderr}");
    let token = stdout.trim();
    assert_eq!(token.len(), 64, "256 random bits as hex: {token:?}");
    assert!(!stderr.contains(token), "the token is printed once");
    let contents = std::fs::read_to_string(file).unwrap();
    assert!(contents.starts_with("alice:"), "{contents}");
    assert!(!contents.contains(token), "the file keeps only the digest");

    let (again, _, stderr) = users_command(&["users", "add", "alice", "--file", file]).await;
    assert_eq!(again.code(), Some(2), "{stderr}");
    assert!(stderr.contains("alice"), "{stderr}");

    let (child, addr) = start(&["--listen", "127.0.0.1:0", "--users-file", file]).await;
    let alice = ClientBuilder::new(addr)
        .subprotocol_token(token)
        .connect_ok()
        .await;
    assert_eq!(alice.user(), "alice");
    alice.close().await;
    terminate(&child);
    let (status, logs) = exit_of(child).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        !logs.contains(token),
        "the token leaked into the logs:\n{logs}"
    );
    assert!(
        !logs.contains("development token"),
        "no development token beside a users file: {logs}"
    );
}

/// The file the server is given is a symlink into another directory, and the edit goes to the
/// target: the directory watch does not see it, so only SIGHUP can make the server read it.
#[tokio::test]
async fn sighup_reloads_the_users_file_and_closes_removed_users() {
    let real = tempfile::tempdir().unwrap();
    let target = real.path().join("users");
    let target_str = target.to_str().unwrap();
    let (_, alice_token, _) = users_command(&["users", "add", "alice", "--file", target_str]).await;
    let linked = tempfile::tempdir().unwrap();
    let link = linked.path().join("users");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (child, addr) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--users-file",
        link.to_str().unwrap(),
    ])
    .await;
    let mut alice = ClientBuilder::new(addr)
        .bearer(alice_token.trim())
        .connect_ok()
        .await;
    std::fs::write(&target, "# nobody\n").unwrap();
    send_signal(&child, "HUP");
    let (code, reason) = alice.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "token revoked"));
    let (removed, _, stderr) =
        users_command(&["users", "remove", "alice", "--file", target_str]).await;
    assert_eq!(removed.code(), Some(2), "alice is gone already: {stderr}");
    terminate(&child);
    let (status, logs) = exit_of(child).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGHUP does not stop the server: {logs}"
    );
    assert!(logs.contains("users file reloaded"), "{logs}");
    assert!(!logs.contains(alice_token.trim()), "{logs}");
}

#[rstest]
#[case::users_file_that_does_not_parse("users", "alice\n", "line 1")]
#[case::short_jwt_secret("jwt-secret", "short\n", "at least 32")]
#[case::public_key_that_is_not_one("jwt-public-key", "not a key\n", "not a PEM")]
#[tokio::test]
async fn identity_files_that_do_not_load_exit_2_with_one_line(
    #[case] kind: &str,
    #[case] contents: &str,
    #[case] named: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(kind);
    std::fs::write(&path, contents).unwrap();
    let flag = format!("--{kind}-file");
    let child = wschat(&["--listen", "127.0.0.1:0", &flag, path.to_str().unwrap()])
        .spawn()
        .expect("spawn");
    let (status, stderr) = exit_of(child).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(named), "{stderr:?} should say {named:?}");
}

#[tokio::test]
async fn jwt_tokens_never_reach_the_logs_in_any_carrier() {
    let key = wschat_testkit::JwtKey::ed25519();
    let path = key.public_key_file().to_str().unwrap().to_owned();
    // At debug level too: hyper and the server log more there.
    let mut child = wschat(&["--listen", "127.0.0.1:0", "--jwt-public-key-file", &path])
        .env("RUST_LOG", "debug")
        .spawn()
        .expect("the wschat binary starts");
    let addr = listening_addrs(&mut child, 1).await[0];
    let valid = key.mint(&wschat_testkit::Claims::for_user("alice"));
    let forged = wschat_testkit::JwtKey::ed25519().mint(&wschat_testkit::Claims::for_user("eve"));
    for carrier in [
        wschat_testkit::Carrier::Query,
        wschat_testkit::Carrier::Header,
        wschat_testkit::Carrier::Subprotocol,
    ] {
        let client = ClientBuilder::new(addr)
            .carry(carrier, &valid)
            .connect_ok()
            .await;
        assert_eq!(client.user(), "alice");
        client.close().await;
        let rejected = ClientBuilder::new(addr)
            .carry(carrier, &forged)
            .connect_rejected()
            .await;
        assert_eq!(rejected.status, 401);
    }
    terminate(&child);
    let (status, logs) = exit_of(child).await;
    assert_eq!(status.code(), Some(0));
    assert!(logs.contains("handshake rejected"), "{logs}");
    // Any of a token's three parts would be a leak: the signature most of all.
    for token in [&valid, &forged] {
        for part in token.split('.') {
            assert!(
                !logs.contains(part),
                "a token part leaked into the logs:\n{logs}"
            );
        }
    }
}
