//! SPEC §11: several nodes on one Redis form one chat. Order and completeness across nodes,
//! presence, shared history, Redis going away and coming back (empty), a node dying, and a
//! node whose subscription drops. Each test has a `redis-server` of its own; without one
//! installed the tests are skipped with a notice (`WSCHAT_REQUIRE_REDIS=1` makes that a
//! failure, as `.ci/run` does).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use rstest::rstest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use wschat_testkit::{
    ChatMessage, Client, ClientBuilder, ErrorCode, RedisServer, ServerEvent, TestServer, TestUsers,
};

/// How long a test waits for something that takes a cluster a while (a lease running out, a
/// reconnection): well past `--node-timeout` and the reconnect backoff.
const CLUSTER_WAIT: Duration = Duration::from_secs(15);

/// What one member saw of a room: message ids in arrival order, and the announced gaps.
#[derive(Default, Debug)]
struct Seen {
    messages: Vec<ChatMessage>,
    gaps: Vec<(u64, u64)>,
}

impl Seen {
    /// Asserts one unbroken sequence: ids strictly increasing, each missing id inside an
    /// announced gap, nothing twice.
    fn assert_unbroken(&self, who: &str) {
        let mut covered: BTreeSet<u64> = self.messages.iter().map(|m| m.id).collect();
        assert_eq!(covered.len(), self.messages.len(), "{who} got a duplicate");
        let ids: Vec<u64> = self.messages.iter().map(|m| m.id).collect();
        assert!(
            ids.windows(2).all(|pair| pair[0] < pair[1]),
            "{who} saw ids out of order: {ids:?}"
        );
        for &(from, to) in &self.gaps {
            covered.extend(from..=to);
        }
        let (Some(&first), Some(&last)) = (covered.first(), covered.last()) else {
            return;
        };
        let holes: Vec<u64> = (first..=last).filter(|id| !covered.contains(id)).collect();
        assert!(holes.is_empty(), "{who} has silent holes at {holes:?}");
    }
}

/// Reads events until a message with `text` arrives, recording everything on the way.
async fn read_until(client: &mut Client, seen: &mut Seen, text: &str) {
    loop {
        match client.recv().await {
            ServerEvent::Message(message) => {
                let done = message.text == text;
                seen.messages.push(message);
                if done {
                    return;
                }
            }
            ServerEvent::Gap { from, to, .. } => seen.gaps.push((from, to)),
            ServerEvent::Join { .. } | ServerEvent::Leave { .. } | ServerEvent::Error { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads exactly `count` messages, failing on a gap.
async fn messages(client: &mut Client, count: usize) -> Vec<ChatMessage> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match client.recv().await {
            ServerEvent::Message(message) => got.push(message),
            ServerEvent::Join { .. } | ServerEvent::Leave { .. } => {}
            other => panic!("expected messages only, got {other:?}"),
        }
    }
    got
}

fn no_rate_limit(config: &mut wschat_testkit::Config) {
    config.rate_limit = 0;
}

#[rstest]
#[case::two_nodes(2)]
#[case::three_nodes(3)]
#[tokio::test]
async fn every_member_on_every_node_gets_every_message_once_in_one_order(#[case] nodes: usize) {
    const MEMBERS_PER_NODE: usize = 2;
    const EACH: usize = 25;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let cluster = TestServer::start_cluster(&redis, nodes, no_rate_limit).await;
    let mut clients = Vec::new();
    for (n, node) in cluster.iter().enumerate() {
        for m in 0..MEMBERS_PER_NODE {
            clients.push(node.client().name(format!("n{n}m{m}")).connect_ok().await);
        }
    }
    let total = clients.len() * EACH;
    // Everyone posts at once, from separate tasks, and reads everything back.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let me = client.user().to_owned();
                for n in 0..EACH {
                    client.send_text(&format!("{me} #{n}")).await;
                }
                (me, messages(&mut client, total).await)
            })
        })
        .collect();
    let mut orders = HashMap::new();
    for task in tasks {
        let (me, got) = task.await.expect("client task");
        let ids: Vec<u64> = got.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            (1..=total as u64).collect::<Vec<_>>(),
            "{me}: one unbroken sequence"
        );
        let mine = got.iter().filter(|m| m.user == me).count();
        assert_eq!(mine, EACH, "{me} got each of its own messages once");
        let order: Vec<(String, String)> = got.into_iter().map(|m| (m.user, m.text)).collect();
        orders.insert(me, order);
    }
    let first = orders.values().next().expect("members").clone();
    assert!(
        orders.values().all(|order| *order == first),
        "every member saw one order"
    );
}

#[tokio::test]
async fn members_join_and_leave_are_seen_across_nodes() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, |_| {}).await;
    let mut alice = nodes[0].client().name("alice").connect_ok().await;
    let bob = nodes[1].client().name("bob").connect_ok().await;
    assert_eq!(bob.welcome().members, ["alice", "bob"]);
    match alice.recv().await {
        ServerEvent::Join { user, room, .. } => {
            assert_eq!((user.as_str(), room.as_str()), ("bob", "lobby"))
        }
        other => panic!("expected bob's join, got {other:?}"),
    }
    bob.close().await;
    match alice.recv().await {
        ServerEvent::Leave { user, .. } => assert_eq!(user, "bob"),
        other => panic!("expected bob's leave, got {other:?}"),
    }
    let carol = nodes[1].client().name("carol").connect_ok().await;
    assert_eq!(carol.welcome().members, ["alice", "carol"]);
}

#[rstest]
#[case::same_node(0)]
#[case::other_node(1)]
#[tokio::test]
async fn a_name_in_use_anywhere_in_the_cluster_is_409(#[case] second: usize) {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, |_| {}).await;
    let _alice = nodes[0].client().name("alice").connect_ok().await;
    let rejected = nodes[second]
        .client()
        .name("alice")
        .connect_rejected()
        .await;
    assert_eq!(rejected.status, 409, "{}", rejected.body);
    // Another room is another namespace; guests get cluster-unique names.
    nodes[second]
        .client()
        .name("alice")
        .room("elsewhere")
        .connect_ok()
        .await;
    let guest_a = nodes[0].client().connect_ok().await;
    let guest_b = nodes[1].client().connect_ok().await;
    assert_ne!(guest_a.user(), guest_b.user());
}

#[tokio::test]
async fn history_survives_a_node_restart_and_reaches_a_node_started_later() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let first = TestServer::start_node(&redis, |_| {}).await;
    let mut poster = first.client().name("poster").connect_ok().await;
    let mut frames = Vec::new();
    for text in ["one", "two", "three"] {
        poster.send_text(text).await;
        frames.push(poster.recv_text().await);
    }
    poster.close().await;
    first.shutdown().await;

    let later = TestServer::start_node(&redis, |_| {}).await;
    let reader = later.client().name("reader").connect_ok().await;
    let texts: Vec<&str> = reader
        .welcome()
        .history
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    let spliced = frames.join(",");
    assert!(
        reader
            .welcome_json()
            .contains(&format!(r#""history":[{spliced}]"#)),
        "history holds the frames members received: {}",
        reader.welcome_json()
    );
    let mut reader = reader;
    reader.say("four").await;
    assert_eq!(reader.recv_message().await.id, 4, "ids continue");
}

#[tokio::test]
async fn a_redis_outage_refuses_posts_and_handshakes_then_members_miss_nothing_silently() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, no_rate_limit).await;
    let mut alice = nodes[0].client().name("alice").connect_ok().await;
    let mut bob = nodes[1].client().name("bob").connect_ok().await;
    let (mut seen_alice, mut seen_bob) = (Seen::default(), Seen::default());
    alice.say("before").await;
    read_until(&mut alice, &mut seen_alice, "before").await;
    read_until(&mut bob, &mut seen_bob, "before").await;

    // A burst from both sides, with Redis killed in the middle of it.
    for n in 0..50 {
        alice.send_text(&format!("a{n}")).await;
        bob.send_text(&format!("b{n}")).await;
        if n == 25 {
            redis.kill();
        }
    }
    for node in &nodes {
        node.wait_until_unavailable().await;
    }
    alice.say("during").await;
    assert_eq!(alice.recv_error().await, ErrorCode::Unavailable);
    let refused = nodes[1].client().name("carol").connect_rejected().await;
    assert_eq!(refused.status, 503);
    assert!(!refused.header("retry-after").is_empty());
    let health = nodes[0].http("GET", "/healthz", &[]).await;
    assert_eq!(health.status, 503);
    assert_eq!(health.body, "redis unavailable");

    redis.restart().await;
    for node in &nodes {
        node.wait_until_available().await;
    }
    alice.say("after").await;
    read_until(&mut alice, &mut seen_alice, "after").await;
    read_until(&mut bob, &mut seen_bob, "after").await;
    for (who, seen) in [("alice", &seen_alice), ("bob", &seen_bob)] {
        seen.assert_unbroken(who);
        let before = seen.messages.first().expect("before").id;
        let after = seen.messages.last().expect("after").id;
        assert!(
            after > before,
            "{who}: ids continue upward ({before} then {after})"
        );
        assert!(
            !seen.messages.iter().any(|m| m.text == "during"),
            "{who} got a message refused during the outage"
        );
    }
    // Both members saw the same messages with the same ids.
    let ids = |seen: &Seen| {
        seen.messages
            .iter()
            .map(|m| (m.id, m.text.clone()))
            .collect::<Vec<_>>()
    };
    let alice_ids: BTreeSet<_> = ids(&seen_alice).into_iter().collect();
    let bob_ids: BTreeSet<_> = ids(&seen_bob).into_iter().collect();
    assert!(
        alice_ids.iter().filter(|m| bob_ids.contains(m)).count() >= 2,
        "the two members agree on ids"
    );
    let text = nodes[0].metrics().render();
    assert!(text.contains("wschat_redis_up 1"), "{text}");
    assert!(text.contains("wschat_redis_reconnects_total 1"), "{text}");
}

#[tokio::test]
async fn a_dropped_subscription_is_refilled_from_history_in_order() {
    const BURST: usize = 200;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, |config| {
        config.rate_limit = 0;
        config.history = 1000;
    })
    .await;
    let mut sender = nodes[0].client().name("sender").connect_ok().await;
    let mut reader = nodes[1].client().name("reader").connect_ok().await;
    let killer = tokio::spawn(async move {
        for n in 0..BURST {
            sender.send_text(&format!("m{n}")).await;
        }
        sender
    });
    // Subscriptions of both nodes drop while the burst is under way; Redis keeps everything.
    let killed: i64 = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(killed >= 1, "a subscription was killed");
    let mut sender = killer.await.expect("sender");
    for node in &nodes {
        node.wait_until_available().await;
    }
    sender.say("last").await;
    let mut seen = Seen::default();
    read_until(&mut reader, &mut seen, "last").await;
    seen.assert_unbroken("reader");
    assert!(
        seen.gaps.is_empty(),
        "everything was refilled: {:?}",
        seen.gaps
    );
    let first = seen.messages.first().expect("messages").id;
    assert_eq!(first, 1, "from the first message on");
}

/// A node cut off from Redis while Redis stays up and the other node keeps posting: when it is
/// back, its members get what they missed from the stored history, in order, and what history
/// no longer holds is announced as one `gap` with its exact ends.
///
/// The node logs in as its own Redis user, so the test can shut it out (`ACL SETUSER … off`,
/// `CLIENT KILL USER …`) while the other node keeps working, and let it back in.
#[rstest]
#[case::all_in_history(50, None)]
#[case::history_trimmed(5, Some((2, 16)))]
#[tokio::test]
async fn a_node_cut_off_refills_what_it_missed_and_announces_only_what_is_gone(
    #[case] history: usize,
    #[case] gap: Option<(u64, u64)>,
) {
    const MISSED: u64 = 20;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    redis
        .command::<()>(&[
            "ACL", "SETUSER", "cutoff", "on", ">secret", "~*", "&*", "+@all",
        ])
        .await;
    let adjust = |config: &mut wschat_testkit::Config| {
        config.rate_limit = 0;
        config.history = history;
    };
    let steady = TestServer::start_node(&redis, adjust).await;
    let mut config = TestServer::config();
    adjust(&mut config);
    config.token = Some(wschat_testkit::Token::new(steady.token()));
    let url = redis
        .url()
        .replacen("redis://", "redis://cutoff:secret@", 1);
    config.redis_url = Some(wschat_testkit::RedisUrl::new(url).expect("a redis url"));
    let cut = TestServer::start_config(config).await;
    cut.wait_until_available().await;

    let mut sender = steady.client().name("sender").connect_ok().await;
    let mut reader = cut.client().name("reader").connect_ok().await;
    let mut seen = Seen::default();
    sender.say("m1").await;
    assert_eq!(sender.recv_message().await.id, 1);
    read_until(&mut reader, &mut seen, "m1").await;

    redis
        .command::<()>(&["ACL", "SETUSER", "cutoff", "off"])
        .await;
    let killed: i64 = redis.command(&["CLIENT", "KILL", "USER", "cutoff"]).await;
    assert!(killed >= 2, "both of the node's connections were cut");
    cut.wait_until_unavailable().await;
    for n in 2..=MISSED + 1 {
        sender.say(&format!("m{n}")).await;
        assert_eq!(sender.recv_message().await.id, n);
    }
    redis
        .command::<()>(&["ACL", "SETUSER", "cutoff", "on"])
        .await;
    cut.wait_until_available().await;
    sender.say("last").await;
    read_until(&mut reader, &mut seen, "last").await;

    seen.assert_unbroken("reader");
    assert_eq!(seen.gaps.first().copied(), gap, "the announced gap");
    assert!(seen.gaps.len() <= 1, "{:?}", seen.gaps);
    let ids: Vec<u64> = seen.messages.iter().map(|m| m.id).collect();
    let first_refilled = gap.map_or(2, |(_, to)| to + 1);
    let mut expected = vec![1];
    expected.extend(first_refilled..=MISSED + 2);
    assert_eq!(ids, expected, "refilled in order, then the live message");
    let refilled = MISSED + 1 - first_refilled + 1;
    let metrics = cut.metrics().render();
    assert!(
        metrics.contains(&format!("wschat_messages_refilled_total {refilled}")),
        "{metrics}"
    );
    let announced = u64::from(gap.is_some());
    assert!(
        metrics.contains(&format!("wschat_gaps_announced_total {announced}")),
        "{metrics}"
    );
}

/// The `wschat` binary as a cluster node on `redis_url`, with `env` added to a clean
/// environment: a real process, which a test can kill with SIGKILL. Returns once the node
/// reached Redis (`/healthz` says `200`).
async fn spawn_binary_node(
    redis_url: &str,
    token: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr) {
    let (child, addr) = spawn_binary(redis_url, token, env, Stdio::null());
    let addr = addr.await;
    tokio::time::timeout(CLUSTER_WAIT, async {
        while healthz(addr).await != 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the node reaches redis");
    (child, addr)
}

/// Starts the binary; the future gives the address of its listening line.
fn spawn_binary(
    redis_url: &str,
    token: &str,
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (
    tokio::process::Child,
    impl std::future::Future<Output = SocketAddr>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wschat"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            token,
            "--redis-url",
            redis_url,
            "--node-timeout",
            "1s",
        ])
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("the wschat binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let addr = async move {
        let line = tokio::time::timeout(CLUSTER_WAIT, BufReader::new(stdout).lines().next_line())
            .await
            .expect("a listening line")
            .expect("readable stdout")
            .expect("a line");
        line.strip_prefix("wschat listening on ws://")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .expect("an address")
    };
    (child, addr)
}

/// `rediss://`: a node reaches Redis over TLS, verifying its certificate against the roots it
/// trusts (here a test CA, through `SSL_CERT_FILE`), and chats with a node on the plain port.
#[tokio::test]
async fn a_node_joins_over_tls_and_refuses_a_certificate_it_does_not_trust() {
    let ca = wschat_testkit::TestCa::new();
    let Some(redis) = RedisServer::start_tls(&ca).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).expect("write the CA");
    let ca_file = ca_file.display().to_string();

    let plain = TestServer::start_node(&redis, |_| {}).await;
    let (_tls_node, addr) = spawn_binary_node(
        &redis.tls_url(),
        plain.token(),
        &[("SSL_CERT_FILE", &ca_file)],
    )
    .await;
    let mut alice = ClientBuilder::new(addr)
        .token(plain.token())
        .name("alice")
        .connect_ok()
        .await;
    let mut bob = plain.client().name("bob").connect_ok().await;
    alice.say("over tls").await;
    assert_eq!(bob.recv_message().await.text, "over tls");

    // Without the CA, the certificate is refused: the node never reaches Redis.
    let (mut untrusting, listening) =
        spawn_binary(&redis.tls_url(), plain.token(), &[], Stdio::piped());
    listening.await;
    let stderr = untrusting.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let refusal = tokio::time::timeout(CLUSTER_WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("cannot reach redis") {
                return line;
            }
        }
        panic!("the node's log ended without saying why");
    })
    .await
    .expect("the node says it cannot reach redis");
    assert!(refusal.to_lowercase().contains("certificate"), "{refusal}");
}

async fn healthz(addr: SocketAddr) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_members_of_a_node_killed_with_sigkill_leave_within_the_node_timeout() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let survivor = TestServer::start_node(&redis, |config| {
        config.node_timeout = Duration::from_secs(1);
    })
    .await;
    let (mut doomed, addr) = spawn_binary_node(&redis.url(), survivor.token(), &[]).await;
    let mut alice = survivor.client().name("alice").connect_ok().await;
    let bob = ClientBuilder::new(addr)
        .token(survivor.token())
        .name("bob")
        .connect_ok()
        .await;
    assert_eq!(bob.welcome().members, ["alice", "bob"]);
    match alice.recv().await {
        ServerEvent::Join { user, .. } => assert_eq!(user, "bob"),
        other => panic!("expected bob's join, got {other:?}"),
    }
    doomed.start_kill().expect("SIGKILL");
    doomed.wait().await.expect("the node died");
    // Within the node timeout (1 s) of its last renewal the lease has run out and a survivor's
    // reaper has removed bob; three timeouts leave room for a loaded machine.
    let left = tokio::time::timeout(Duration::from_secs(3), alice.recv())
        .await
        .expect("bob leaves within the node timeout");
    match left {
        ServerEvent::Leave { user, .. } => assert_eq!(user, "bob"),
        other => panic!("expected bob's leave, got {other:?}"),
    }
    drop(bob);
    // The name is free again anywhere in the cluster, and live members were never expired.
    let again = survivor.client().name("bob").connect_ok().await;
    assert_eq!(again.welcome().members, ["alice", "bob"]);
}

#[tokio::test]
async fn a_node_that_shuts_down_removes_its_members_at_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, |_| {}).await;
    let mut alice = nodes[0].client().name("alice").connect_ok().await;
    let _bob = nodes[1].client().name("bob").connect_ok().await;
    alice.recv().await; // bob's join
    let mut nodes = nodes;
    let leaving = nodes.pop().expect("two nodes");
    leaving.shutdown().await;
    match alice.recv().await {
        ServerEvent::Leave { user, .. } => assert_eq!(user, "bob"),
        other => panic!("expected bob's leave, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cluster_node_shows_its_redis_metrics_from_the_first_scrape() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let node = TestServer::start_node(&redis, |_| {}).await;
    let text = node.http("GET", "/metrics", &[]).await.body;
    for series in [
        "wschat_redis_up 1",
        "wschat_redis_reconnects_total 0",
        "wschat_messages_refilled_total 0",
        "wschat_gaps_announced_total 0",
        "wschat_redis_publish_seconds_count 0",
    ] {
        assert!(
            text.lines().any(|line| line == series),
            "{series} in:\n{text}"
        );
    }
}

/// Many handshakes for one name on one node at once: Redis is asked only once the node itself
/// holds the name, so exactly one gets in.
#[tokio::test]
async fn simultaneous_handshakes_for_one_name_admit_exactly_one() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, |_| {}).await;
    let attempts: Vec<_> = (0..8)
        .map(|n| nodes[n % 2].client().name("bob").connect())
        .collect();
    let results = futures_util::future::join_all(attempts).await;
    let admitted = results.iter().filter(|result| result.is_ok()).count();
    let refused: Vec<String> = results
        .iter()
        .filter_map(|result| result.as_ref().err().map(ToString::to_string))
        .collect();
    assert_eq!(admitted, 1, "refused: {refused:?}");
    assert!(refused.iter().all(|why| why.contains("409")), "{refused:?}");
}

/// A member who leaves and comes straight back keeps the name (the late release of the old
/// connection cannot take it from the new one), and the other nodes hear each `leave` before
/// the `join` that follows it.
#[tokio::test]
async fn a_quick_reconnect_keeps_its_name_and_others_hear_leave_then_join() {
    const ROUNDS: usize = 10;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, |_| {}).await;
    let mut bob = nodes[1].client().name("bob").connect_ok().await;
    let mut alice = nodes[0].client().name("alice").connect_ok().await;
    for _ in 0..ROUNDS {
        alice.close().await;
        alice = nodes[0].client().name("alice").connect_ok().await;
    }
    let mut heard = Vec::new();
    while heard.len() < 2 * ROUNDS + 1 {
        match bob.recv().await {
            ServerEvent::Join { user, .. } => heard.push(format!("join {user}")),
            ServerEvent::Leave { user, .. } => heard.push(format!("leave {user}")),
            other => panic!("expected presence events, got {other:?}"),
        }
    }
    let mut expected = vec!["join alice".to_owned()];
    for _ in 0..ROUNDS {
        expected.extend(["leave alice".to_owned(), "join alice".to_owned()]);
    }
    assert_eq!(heard, expected);
    let rejected = nodes[1].client().name("alice").connect_rejected().await;
    assert_eq!(rejected.status, 409, "alice still holds her name");
    let carol = nodes[1].client().name("carol").connect_ok().await;
    assert_eq!(carol.welcome().members, ["bob", "alice", "carol"]);
}

/// A room's ids outlive `--history-ttl` while it has members: its history may expire, but a
/// node new to the room continues the ids instead of starting again at 1.
#[tokio::test]
async fn a_quiet_room_with_members_keeps_its_ids_past_the_history_ttl() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, |config| {
        config.history_ttl = Duration::from_millis(600);
        config.node_timeout = Duration::from_secs(1);
    })
    .await;
    let mut alice = nodes[0].client().name("alice").connect_ok().await;
    alice.say("one").await;
    assert_eq!(alice.recv_message().await.id, 1);
    // The history expires (nothing refreshes it while the room is quiet)...
    tokio::time::timeout(CLUSTER_WAIT, async {
        while redis
            .command::<i64>(&["EXISTS", "wschat:room:lobby:history"])
            .await
            == 1
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the history expires");
    // ...but not the sequence, and a newcomer on the other node posts id 2.
    let mut bob = nodes[1].client().name("bob").connect_ok().await;
    assert!(bob.welcome().history.is_empty());
    bob.say("two").await;
    assert_eq!(bob.recv_message().await.id, 2);
    assert_eq!(alice.recv_message().await.id, 2, "alice gets it too");
}

/// A claim whose reply comes too late (Redis stalled) is refused with 503 and undone, so the
/// name is not held by a ghost once Redis answers again.
#[tokio::test]
async fn a_claim_that_timed_out_leaves_no_ghost() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let nodes = TestServer::start_cluster(&redis, 2, |_| {}).await;
    redis
        .command::<()>(&["CLIENT", "PAUSE", "2500", "WRITE"])
        .await;
    let refused = nodes[0].client().name("carol").connect_rejected().await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    for node in &nodes {
        node.wait_until_available().await;
    }
    let carol = tokio::time::timeout(CLUSTER_WAIT, async {
        loop {
            match nodes[1].client().name("carol").connect().await {
                Ok(client) => return client,
                Err(wschat_testkit::ConnectError::Rejected(rejected))
                    if rejected.status == 409 || rejected.status == 503 =>
                {
                    // The node that timed out releases the name once Redis answers again.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("carol could not connect: {other}"),
            }
        }
    })
    .await
    .expect("the name is free again");
    assert_eq!(carol.welcome().members, ["carol"]);
}

/// Per-user identities on a cluster: a user's name is claimed in Redis like a guest's, so it is
/// theirs on every node, and the cluster has one connection of theirs per room (a second one,
/// on any node, is refused); several rooms at once work.
#[tokio::test]
async fn a_users_name_is_held_cluster_wide_one_connection_per_room() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let users = TestUsers::new(&["alice", "bob"]);
    let nodes = TestServer::start_cluster(&redis, 2, |config| users.configure(config)).await;
    let mut bob = nodes[1]
        .client()
        .bearer(users.token("bob"))
        .connect_ok()
        .await;
    let mut alice = nodes[0]
        .client()
        .bearer(users.token("alice"))
        .connect_ok()
        .await;
    assert!(matches!(bob.recv().await, ServerEvent::Join { user, .. } if user == "alice"));
    for node in &nodes {
        let again = node
            .client()
            .bearer(users.token("alice"))
            .connect_rejected()
            .await;
        assert_eq!(again.status, 409);
    }
    // A guest cannot take the name either: beside users, guests are `guest-…`.
    let guest = nodes[1].client().name("alice").connect_ok().await;
    assert_eq!(guest.user(), "guest-alice");
    let elsewhere = nodes[1]
        .client()
        .room("other")
        .subprotocol_token(users.token("alice"))
        .connect_ok()
        .await;
    assert_eq!(elsewhere.user(), "alice");
    alice.say("from node 0").await;
    assert_eq!(bob.recv_message().await.text, "from node 0");
}
