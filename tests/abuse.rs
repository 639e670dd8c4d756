//! Abuse the server can take: token guessing, room spraying, clients that vanish mid-frame or
//! mid-handshake. Each test checks the server's answer and that nothing is left behind.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wschat_testkit::{ServerEvent, TestServer};

const OTHER_HOST: &str = "127.0.0.2";

#[tokio::test]
async fn guessing_tokens_gets_an_address_throttled_but_not_its_neighbours() {
    let server = TestServer::start_with(|config| {
        config.auth_fail_limit = 3;
        config.auth_fail_window = Duration::from_secs(60);
    })
    .await;
    for guess in 0..3 {
        let rejected = server
            .client()
            .token(format!("guess{guess}"))
            .connect_rejected()
            .await;
        assert_eq!(rejected.status, 401);
    }
    // The fourth failure goes over the limit; from then on even the right token is refused.
    assert_eq!(
        server
            .client()
            .token("guess3")
            .connect_rejected()
            .await
            .status,
        401
    );
    let throttled = server.client().connect_rejected().await;
    assert_eq!(throttled.status, 429);
    let retry_after: u64 = throttled
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    let other: IpAddr = OTHER_HOST.parse().unwrap();
    let neighbour = server
        .client()
        .from_ip(other)
        .name("neighbour")
        .connect_ok()
        .await;
    assert_eq!(neighbour.user(), "neighbour");
    assert!(server
        .metrics()
        .render()
        .contains(r#"reason="throttled"} 1"#));
}

#[tokio::test]
async fn rooms_beyond_the_cap_evict_idle_ones_and_ids_are_never_reused() {
    let server = TestServer::start_with(|config| config.max_rooms = 3).await;
    let mut first = server.client().room("r0").connect_ok().await;
    first.say("one").await;
    assert_eq!(first.recv_message().await.id, 1);
    first.close().await;

    for room in 1..10 {
        let client = server.client().room(format!("r{room}")).connect_ok().await;
        client.close().await;
        assert!(
            server.room_count() <= 3,
            "registry grew to {}",
            server.room_count()
        );
    }
    assert_eq!(server.room_count(), 3);

    // r0 was evicted with its history; when it comes back its ids continue past the old ones.
    let mut again = server.client().room("r0").connect_ok().await;
    assert!(again.welcome().history.is_empty());
    again.say("two").await;
    assert!(again.recv_message().await.id > 1);
}

#[tokio::test]
async fn when_every_room_is_busy_a_new_room_gets_503() {
    let server = TestServer::start_with(|config| config.max_rooms = 2).await;
    let _a = server.client().room("a").connect_ok().await;
    let _b = server.client().room("b").connect_ok().await;
    let rejected = server.client().room("c").connect_rejected().await;
    assert_eq!(
        (rejected.status.as_u16(), rejected.body.as_str()),
        (503, "too many rooms")
    );
    assert!(!rejected.header("retry-after").is_empty());
    server.client().room("a").connect_ok().await;
}

#[tokio::test]
async fn a_client_that_resets_mid_frame_leaves_the_room() {
    let server = TestServer::start().await;
    let mut witness = server.client().name("witness").connect_ok().await;
    let vanishing = server.client().name("vanishing").connect_ok().await;
    assert!(matches!(witness.recv().await, ServerEvent::Join { user, .. } if user == "vanishing"));

    vanishing.reset_mid_frame().await;
    match witness.recv().await {
        ServerEvent::Leave { user, .. } => assert_eq!(user, "vanishing"),
        other => panic!("expected the leave, got {other:?}"),
    }
    let metrics = server.metrics().render();
    assert!(metrics.contains("wschat_connections 1"), "{metrics}");
    // Its name is free again.
    server.client().name("vanishing").connect_ok().await;
}

#[tokio::test]
async fn a_client_that_resets_mid_handshake_leaves_nothing_behind() {
    let server = TestServer::start().await;
    let mut witness = server.client().name("witness").connect_ok().await;

    let stream = TcpStream::connect(server.addr()).await.expect("connect");
    let mut stream = stream;
    let head = format!(
        "GET /?token={}&name=ghost HTTP/1.1\r\nHost: x\r\nUpgr",
        server.token()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.set_zero_linger().expect("linger");
    drop(stream);

    // The ghost never joined and its name was never taken.
    let _late = server.client().name("ghost").connect_ok().await;
    match witness.recv().await {
        ServerEvent::Join { user, .. } => assert_eq!(user, "ghost"),
        other => panic!("expected the real ghost's join, got {other:?}"),
    }
    assert!(server.metrics().render().contains("wschat_connections 2"));
}

#[tokio::test]
async fn a_client_that_resets_right_after_the_101_leaves_the_room() {
    let server = TestServer::start().await;
    let mut witness = server.client().name("witness").connect_ok().await;

    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let request = format!(
        "GET /?token={}&name=ghost HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.token()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    // The first bytes of the answer: the server has upgraded and the ghost is in the room.
    let mut status_line = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut status_line))
        .await
        .expect("an answer in time")
        .expect("read");
    assert_eq!(&status_line, b"HTTP/1.1 101");
    stream.set_zero_linger().expect("linger");
    drop(stream);

    match witness.recv().await {
        ServerEvent::Join { user, .. } => assert_eq!(user, "ghost"),
        other => panic!("expected the ghost's join, got {other:?}"),
    }
    match witness.recv().await {
        ServerEvent::Leave { user, .. } => assert_eq!(user, "ghost"),
        other => panic!("expected the ghost's leave, got {other:?}"),
    }
    server
        .wait_for_metrics("only the witness connected", |text| {
            text.contains("wschat_connections 1\n")
        })
        .await;
    server.client().name("ghost").connect_ok().await;
}

#[tokio::test]
async fn disconnect_reasons_are_counted() {
    let server = TestServer::start_with(|config| {
        config.ping_interval = Duration::from_secs(60);
        config.idle_timeout = Duration::from_millis(200);
    })
    .await;
    let mut idle = server.client().connect_ok().await;
    assert_eq!(idle.expect_close().await.0, 1001);
    let mut binary = server.client().connect_ok().await;
    binary
        .send(wschat_testkit::tungstenite::Message::binary(vec![0]))
        .await;
    assert_eq!(binary.expect_close().await.0, 1003);

    server
        .wait_for_metrics("an idle and a binary disconnect", |text| {
            text.contains(r#"wschat_disconnects_total{reason="idle"} 1"#)
                && text.contains(r#"wschat_disconnects_total{reason="binary"} 1"#)
                && text.contains("wschat_connections 0")
        })
        .await;
}

#[tokio::test]
async fn a_request_refused_for_capacity_does_not_evict_an_idle_room() {
    let server = TestServer::start_with(|config| {
        config.max_rooms = 2;
        config.max_connections = 1;
    })
    .await;
    let mut first = server.client().room("kept").connect_ok().await;
    first.say("remember me").await;
    first.recv_message().await;
    first.close().await;
    let holder = server.client().room("busy").connect_ok().await;

    let refused = server.client().room("new").connect_rejected().await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        server.room_count(),
        2,
        "no room was created for the refused request"
    );

    holder.close().await;
    server
        .wait_for_metrics("the holder to be gone", |text| {
            text.contains("wschat_connections 0")
        })
        .await;
    let back = server.client().room("kept").connect_ok().await;
    assert_eq!(
        back.welcome().history.len(),
        1,
        "the idle room kept its history"
    );
}
