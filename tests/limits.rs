//! SPEC §6: the limits and policies, each enforced with its close code or error event.

use std::time::Duration;

use rstest::rstest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wschat_testkit::tungstenite::protocol::frame::coding::{Data, OpCode};
use wschat_testkit::tungstenite::protocol::frame::Frame;
use wschat_testkit::tungstenite::{Bytes, Message};
use wschat_testkit::{ErrorCode, ServerEvent, TestServer};

#[rstest]
#[case::text_over_the_limit(Message::text("x".repeat(1025)), 1009)]
#[case::text_far_over_the_limit(Message::text("x".repeat(16 << 20)), 1009)]
#[case::binary_frame(Message::binary(vec![1, 2, 3]), 1003)]
#[case::invalid_utf8(
    Message::Frame(Frame::message(Bytes::from_static(&[0x68, 0xff, 0xfe]), OpCode::Data(Data::Text), true)),
    1007
)]
#[tokio::test]
async fn frames_the_server_refuses_close_the_connection(#[case] frame: Message, #[case] code: u16) {
    let server = TestServer::start_with(|config| config.max_message_bytes = 1024).await;
    let mut witness = server.client().name("witness").connect_ok().await;
    let mut offender = server.client().name("offender").connect_ok().await;
    offender.send(frame).await;
    let (closed_with, _reason) = offender.expect_close().await;
    assert_eq!(closed_with, code);
    // The room hears the offender join and leave, and never a message from it.
    assert!(matches!(witness.recv().await, ServerEvent::Join { user, .. } if user == "offender"));
    assert!(matches!(witness.recv().await, ServerEvent::Leave { user, .. } if user == "offender"));
}

#[tokio::test]
async fn a_message_at_the_size_limit_is_posted() {
    let server = TestServer::start_with(|config| config.max_message_bytes = 1024).await;
    let mut client = server.client().connect_ok().await;
    client.send_text(&"x".repeat(1024)).await;
    assert_eq!(client.recv_message().await.text.len(), 1024);
}

#[tokio::test]
async fn over_the_rate_a_message_is_refused_but_the_connection_stays() {
    let server = TestServer::start_with(|config| {
        config.rate_limit = 1;
        config.rate_burst = 2;
    })
    .await;
    let mut sender = server.client().name("sender").connect_ok().await;
    let mut witness = server.client().name("witness").connect_ok().await;
    for n in 1..=3 {
        sender.send_text(&format!("m{n}")).await;
    }
    assert_eq!(sender.recv_error().await, ErrorCode::RateLimited);
    // A message posted after the refusal comes right after m2 in the room's one order: m3
    // was never posted, neither late nor early.
    let mut marker = server.client().name("marker").connect_ok().await;
    marker.say("after the refusal").await;
    assert_eq!(witness.recv_message().await.text, "m1");
    assert_eq!(witness.recv_message().await.text, "m2");
    assert_eq!(witness.recv_message().await.text, "after the refusal");
    witness.expect_silence(Duration::from_millis(200)).await;
    let metrics = server.metrics().render();
    assert!(
        metrics.contains("wschat_messages_rate_limited_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_that_keeps_flooding_is_closed_with_1008() {
    let server = TestServer::start_with(|config| {
        config.rate_limit = 1;
        config.rate_burst = 1;
    })
    .await;
    let mut flooder = server.client().connect_ok().await;
    for n in 0..(wschat::connection::MAX_CONSECUTIVE_RATE_LIMITED + 1) {
        flooder.send_text(&format!("flood {n}")).await;
    }
    let (code, reason) = flooder.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "rate limit exceeded"));
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|config| {
        // No ping before the deadline, so nothing prompts the client to answer.
        config.ping_interval = Duration::from_secs(60);
        config.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = server.client().connect_ok().await;
    let (code, reason) = silent.expect_close().await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
}

#[tokio::test]
async fn pings_keep_a_reading_client_alive() {
    let server = TestServer::start_with(|config| {
        config.ping_interval = Duration::from_millis(50);
        // Ten pings per timeout: a test machine busy with the rest of the suite may delay a
        // pong or two without the client looking silent.
        config.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let mut client = server.client().connect_ok().await;
    // While reading, the client answers every ping with a pong, which counts as activity.
    client.expect_silence(Duration::from_millis(1500)).await;
    client.say("still here").await;
    assert_eq!(client.recv_message().await.text, "still here");
}

#[tokio::test]
async fn a_half_sent_request_is_dropped_after_the_handshake_timeout() {
    let server = TestServer::start_with(|config| {
        config.handshake_timeout = Duration::from_millis(200);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection")
        .ok();
}

#[rstest]
#[case::sends_nothing(b"")]
#[case::http2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")]
#[tokio::test]
async fn a_connection_without_an_http1_request_is_dropped(#[case] sent: &[u8]) {
    let server = TestServer::start_with(|config| {
        config.handshake_timeout = Duration::from_millis(200);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    stream.write_all(sent).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    // No HTTP/2 is spoken: whatever came back is not a SETTINGS frame.
    assert!(!answer.starts_with(&[0, 0]), "{answer:?}");
}

#[tokio::test]
async fn a_pipelining_sender_does_not_get_reading_members_dropped() {
    use futures_util::{SinkExt, StreamExt};
    const MESSAGES: usize = 3000; // well past the default queue of 1024 events
    let server = TestServer::start_with(|config| config.rate_limit = 0).await;
    let mut reader = server.client().name("reader").connect_ok().await;
    let url = format!("{}?token={}&name=sender", server.ws_url(), server.token());
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("sender connects");
    let (mut sink, mut stream) = socket.split();
    // The sender reads its own copies in the background, like a real client would.
    let draining = tokio::spawn(async move {
        let mut messages = 0;
        while messages < MESSAGES {
            match stream.next().await {
                Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"message""#) => {
                    messages += 1
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        messages
    });
    // Every frame goes out in one write: the server finds them all buffered at once.
    for n in 0..MESSAGES {
        sink.feed(Message::text(format!("m{n}")))
            .await
            .expect("feed");
    }
    sink.flush().await.expect("flush");
    let mut next = 0;
    while next < MESSAGES {
        match reader.recv().await {
            ServerEvent::Message(message) => {
                assert_eq!(message.text, format!("m{next}"));
                next += 1;
            }
            ServerEvent::Join { .. } => {}
            other => panic!("reader got {other:?} after {next} messages"),
        }
    }
    assert_eq!(draining.await.expect("sender task"), MESSAGES);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_1013_while_the_others_get_everything() {
    const MESSAGES: usize = 3000;
    let server = TestServer::start_with(|config| {
        config.rate_limit = 0;
        config.send_queue = 16;
        config.max_message_bytes = 64 * 1024;
    })
    .await;
    let mut stalled = server.client().name("stalled").connect_ok().await;
    let mut reader = server.client().name("reader").connect_ok().await;
    let mut sender = server.client().name("sender").connect_ok().await;
    let text = "y".repeat(16 * 1024);

    let sending = tokio::spawn(async move {
        // The sender is a member too, so it reads its own copy of each message as it goes.
        for n in 0..MESSAGES {
            sender.send_text(&format!("{n} {text}")).await;
            let own = sender.recv_message().await;
            assert!(own.text.starts_with(&format!("{n} ")));
        }
        sender
    });
    // As soon as the room hears the stalled client leave, it starts reading: its close frame
    // sits behind everything its socket buffered, and the server waits only briefly for it.
    let (left, on_leave) = tokio::sync::oneshot::channel::<()>();
    let closing = tokio::spawn(async move {
        on_leave.await.expect("the stalled client leaves");
        stalled.expect_close().await
    });
    let mut left = Some(left);
    let mut next = 0;
    while next < MESSAGES {
        match reader.recv().await {
            ServerEvent::Message(message) => {
                let number = message.text.split(' ').next().unwrap_or_default();
                assert_eq!(number, next.to_string(), "in order, none missing");
                next += 1;
            }
            ServerEvent::Leave { user, .. } => {
                assert_eq!(user, "stalled");
                left.take()
                    .expect("one leave")
                    .send(())
                    .expect("closing task waits");
            }
            ServerEvent::Join { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    sending.await.expect("sender");
    assert!(
        left.is_none(),
        "the stalled client was dropped from the room"
    );
    let (code, reason) = closing.await.expect("closing task");
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    server
        .wait_for_metrics("one slow-consumer disconnect", |text| {
            text.contains(r#"wschat_disconnects_total{reason="slow_consumer"} 1"#)
        })
        .await;
}
