//! SPEC §5: the chat protocol. Delivery to every member including the sender, one order per
//! room, isolation between rooms, bounded history, join/leave, and the client command forms.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;

use rstest::rstest;
use wschat_testkit::{ChatMessage, ErrorCode, ServerEvent, TestServer};

#[tokio::test]
async fn a_message_reaches_every_member_including_the_sender() {
    let server = TestServer::start().await;
    let mut alice = server.client().name("alice").connect_ok().await;
    let mut bob = server.client().name("bob").connect_ok().await;

    alice.say("hi bob").await;
    for client in [&mut alice, &mut bob] {
        let message = client.recv_message().await;
        assert_eq!(
            (message.user.as_str(), message.text.as_str()),
            ("alice", "hi bob")
        );
        assert_eq!((message.room.as_str(), message.id), ("lobby", 1));
        assert!(
            message.ts > 1_700_000_000_000,
            "ts is milliseconds since the epoch"
        );
    }
}

#[tokio::test]
async fn all_members_see_one_order_with_increasing_ids() {
    const SENDERS: usize = 4;
    const EACH: usize = 25;
    let server = TestServer::start_with(|config| config.rate_limit = 0).await;
    let mut clients = Vec::new();
    for index in 0..SENDERS {
        clients.push(
            server
                .client()
                .name(format!("user{index}"))
                .connect_ok()
                .await,
        );
    }
    // Everyone posts at once, from separate tasks, and reads everything back.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let me = client.user().to_owned();
                for n in 0..EACH {
                    client.send_text(&format!("{me} #{n}")).await;
                }
                let mut seen = Vec::new();
                while seen.len() < SENDERS * EACH {
                    seen.push(client.recv_message().await);
                }
                seen
            })
        })
        .collect();
    let mut views: Vec<Vec<ChatMessage>> = Vec::new();
    for task in tasks {
        views.push(task.await.expect("client task"));
    }

    for view in &views {
        assert_eq!(view, &views[0], "every member sees the same sequence");
    }
    let ids: Vec<u64> = views[0].iter().map(|message| message.id).collect();
    assert_eq!(ids, (1..=(SENDERS * EACH) as u64).collect::<Vec<_>>());
    // Each sender's own messages keep the order they were sent in.
    let mut next_per_sender: HashMap<&str, usize> = HashMap::new();
    for message in &views[0] {
        let expected = next_per_sender.entry(&message.user).or_default();
        assert_eq!(message.text, format!("{} #{}", message.user, expected));
        *expected += 1;
    }
}

#[tokio::test]
async fn rooms_are_isolated() {
    let server = TestServer::start().await;
    let mut red = server.client().room("red").name("r").connect_ok().await;
    let mut blue = server.client().room("blue").name("b").connect_ok().await;

    red.say("for red only").await;
    assert_eq!(red.recv_message().await.text, "for red only");
    blue.say("blue here").await;
    // Had the red message leaked, it would arrive before blue's own message.
    let first = blue.recv_message().await;
    assert_eq!(
        (first.room.as_str(), first.text.as_str()),
        ("blue", "blue here")
    );
    assert_eq!(first.id, 1, "ids are per room");
}

#[tokio::test]
async fn welcome_carries_the_most_recent_history_oldest_first() {
    let server = TestServer::start_with(|config| config.history = 3).await;
    let mut poster = server.client().name("poster").connect_ok().await;
    for n in 1..=5 {
        poster.send_text(&format!("m{n}")).await;
        poster.recv_message().await;
    }
    let late = server.client().name("late").connect_ok().await;
    let texts: Vec<&str> = late
        .welcome()
        .history
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(texts, ["m3", "m4", "m5"]);
    let ids: Vec<u64> = late.welcome().history.iter().map(|m| m.id).collect();
    assert_eq!(ids, [3, 4, 5]);
}

/// SPEC §5: history holds the room's `message` events exactly as members received them, so
/// one handler serves both: the same bytes, `"type":"message"` included.
#[tokio::test]
async fn history_entries_are_the_message_frames_members_received() {
    let server = TestServer::start().await;
    let mut poster = server.client().name("poster").connect_ok().await;
    let mut received = Vec::new();
    for text in ["first", "with \"quotes\" and ünïcode"] {
        poster.send_text(text).await;
        received.push(poster.recv_text().await);
    }
    let late = server.client().name("late").connect_ok().await;
    let welcome: serde_json::Value = serde_json::from_str(late.welcome_json()).unwrap();
    let history = welcome["history"].as_array().expect("history is an array");
    assert_eq!(history.len(), 2, "{welcome}");
    for (entry, frame) in history.iter().zip(&received) {
        assert_eq!(entry["type"], "message", "{entry}");
        let as_received: serde_json::Value = serde_json::from_str(frame).unwrap();
        assert_eq!(entry, &as_received);
    }
    let spliced = received.join(",");
    assert!(
        late.welcome_json()
            .contains(&format!(r#""history":[{spliced}]"#)),
        "byte for byte: {}",
        late.welcome_json()
    );
}

#[tokio::test]
async fn history_survives_while_the_room_is_empty() {
    let server = TestServer::start().await;
    let mut first = server.client().name("first").connect_ok().await;
    first.say("still here?").await;
    first.recv_message().await;
    first.close().await;
    let second = server.client().name("second").connect_ok().await;
    assert_eq!(second.welcome().history.len(), 1);
    assert_eq!(second.welcome().members, ["second"]);
}

#[tokio::test]
async fn others_hear_join_and_leave() {
    let server = TestServer::start().await;
    let mut alice = server.client().name("alice").connect_ok().await;
    let bob = server.client().name("bob").connect_ok().await;
    assert_eq!(bob.welcome().members, ["alice", "bob"]);
    match alice.recv().await {
        ServerEvent::Join { room, user, ts } => {
            assert_eq!((room.as_str(), user.as_str()), ("lobby", "bob"));
            assert!(ts > 0);
        }
        other => panic!("expected join, got {other:?}"),
    }
    bob.close().await;
    match alice.recv().await {
        ServerEvent::Leave { room, user, .. } => {
            assert_eq!((room.as_str(), user.as_str()), ("lobby", "bob"));
        }
        other => panic!("expected leave, got {other:?}"),
    }
    let carol = server.client().name("carol").connect_ok().await;
    assert_eq!(carol.welcome().members, ["alice", "carol"]);
}

#[tokio::test]
async fn a_newcomer_does_not_hear_its_own_join() {
    let server = TestServer::start().await;
    let mut alone = server.client().name("alone").connect_ok().await;
    alone.say("first thing I hear").await;
    match alone.recv().await {
        ServerEvent::Message(message) => assert_eq!(message.text, "first thing I hear"),
        other => panic!("expected my own message first, got {other:?}"),
    }
}

#[rstest]
#[case::plain_text("hello there", "hello there")]
#[case::line_from_websocat("hello bob\n", "hello bob")]
#[case::line_ending_crlf("hello bob\r\n", "hello bob")]
#[case::only_the_final_break_goes("two\nlines\n", "two\nlines")]
#[case::inner_breaks_stay("one\r\ntwo", "one\r\ntwo")]
#[case::json_without_type_and_a_break("{\"text\":\"raw\"}\n", r#"{"text":"raw"}"#)]
#[case::say_command(r#"{"type":"say","text":"from json"}"#, "from json")]
#[case::json_without_type(r#"{"text":"raw"}"#, r#"{"text":"raw"}"#)]
#[case::json_array("[1,2,3]", "[1,2,3]")]
#[case::unicode("héllo 👋", "héllo 👋")]
#[case::markup_is_just_text("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>")]
#[tokio::test]
async fn text_frames_post_messages(#[case] frame: &str, #[case] posted: &str) {
    let server = TestServer::start().await;
    let mut client = server.client().connect_ok().await;
    client.send_text(frame).await;
    assert_eq!(client.recv_message().await.text, posted);
}

#[rstest]
#[case::unknown_type(r#"{"type":"shout","text":"x"}"#, ErrorCode::BadRequest)]
#[case::say_without_text(r#"{"type":"say"}"#, ErrorCode::BadRequest)]
#[case::say_with_number(r#"{"type":"say","text":42}"#, ErrorCode::BadRequest)]
#[case::empty_say(r#"{"type":"say","text":""}"#, ErrorCode::EmptyMessage)]
#[case::blank_say(r#"{"type":"say","text":" \t\n"}"#, ErrorCode::EmptyMessage)]
#[case::blank_text("   ", ErrorCode::EmptyMessage)]
#[case::empty_text("", ErrorCode::EmptyMessage)]
#[case::only_a_line_break("\n", ErrorCode::EmptyMessage)]
#[case::only_a_crlf("\r\n", ErrorCode::EmptyMessage)]
#[tokio::test]
async fn bad_commands_get_an_error_and_the_connection_stays_open(
    #[case] frame: &str,
    #[case] code: ErrorCode,
) {
    let server = TestServer::start().await;
    let mut sender = server.client().name("sender").connect_ok().await;
    let mut witness = server.client().name("witness").connect_ok().await;
    sender.send_text(frame).await;
    assert_eq!(sender.recv_error().await, code);
    // Nothing was posted, and the connection still works.
    sender.say("after").await;
    let message = witness.recv_message().await;
    assert_eq!((message.text.as_str(), message.id), ("after", 1));
}

/// A client may send frames right behind its request, without waiting for the `101`; hyper
/// has then already read them, and they must reach the chat rather than be lost.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_posted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    let server = TestServer::start().await;
    let mut request = format!(
        "GET /?token={}&name=eager HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.token(),
        server.addr(),
    )
    .into_bytes();
    // A masked text frame "early" (mask 1, 2, 3, 4).
    let mask = [1u8, 2, 3, 4];
    request.extend_from_slice(&[0x81, 0x80 | 5]);
    request.extend_from_slice(&mask);
    request.extend(b"early".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));

    let mut tcp = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    tcp.write_all(&request)
        .await
        .expect("send request and frame");
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("response head in time")
            .expect("read");
        assert_ne!(read, 0, "connection closed before the response head");
        received.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "got {head:?}");

    let rest = received[head_end..].to_vec();
    let mut socket = WebSocketStream::from_partially_read(tcp, rest, Role::Client, None).await;
    let mut next_event = async || {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("event in time")
            .expect("socket open")
            .expect("frame");
        serde_json::from_str::<ServerEvent>(frame.to_text().expect("text")).expect("event")
    };
    assert!(matches!(next_event().await, ServerEvent::Welcome { .. }));
    match next_event().await {
        ServerEvent::Message(message) => {
            assert_eq!(
                (message.user.as_str(), message.text.as_str()),
                ("eager", "early")
            );
        }
        other => panic!("expected the early message, got {other:?}"),
    }
}
