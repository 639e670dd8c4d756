//! The wire format of SPEC §5: every frame is one JSON object in a text frame.
//!
//! These types are the single definition of the protocol. The server serializes them, and the
//! testkit (and any Rust client) deserializes the very same types, so the two cannot drift.
//! This module knows nothing about sockets or rooms; it only maps values to JSON and back.

use serde::{Deserialize, Serialize};

/// One chat message as stored in a room's history and delivered to its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Per-room sequence number: starts at 1, strictly increasing, never reused.
    pub id: u64,
    pub room: String,
    pub user: String,
    pub text: String,
    /// Milliseconds since the Unix epoch, taken when the server accepted the message.
    pub ts: u64,
}

/// Every event the server sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// The first frame of every accepted connection.
    Welcome {
        user: String,
        room: String,
        /// Current members of the room, including the new one, in the order they joined.
        members: Vec<String>,
        /// The room's most recent messages, oldest first, each exactly as its members received
        /// it: a `message` event, `"type":"message"` included, so one handler serves both.
        #[serde(with = "message_events")]
        history: Vec<ChatMessage>,
    },
    Message(ChatMessage),
    Join {
        room: String,
        user: String,
        ts: u64,
    },
    Leave {
        room: String,
        user: String,
        ts: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Messages `from..=to` of `room` can no longer be delivered (a cluster node missed them and
    /// they had left the stored history): announced instead of skipped silently.
    Gap {
        room: String,
        from: u64,
        to: u64,
    },
    /// The connection's signed token expires at `exp` (milliseconds since the Unix epoch);
    /// a `refresh` before then (plus the leeway) keeps it open (SPEC §10).
    Expiring {
        exp: u64,
    },
    /// A `refresh` was accepted: the connection now lives until `exp`.
    Refreshed {
        exp: u64,
    },
}

/// Machine-readable reason carried by an `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was a JSON command the server does not understand.
    BadRequest,
    /// The message text was empty or only white space.
    EmptyMessage,
    /// The connection sent faster than its rate limit allows.
    RateLimited,
    /// The cluster's Redis cannot be reached: the message was not posted.
    Unavailable,
    /// A `refresh` token was not valid (or another user's); nothing changed.
    InvalidToken,
}

/// Commands a client may send as a JSON object with a string `type`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientCommand {
    /// Post `text` to the room.
    Say { text: String },
    /// Extend a connection whose signed token is expiring with a new token for the same user.
    Refresh { token: String },
}

impl std::fmt::Debug for ClientCommand {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCommand::Say { text } => f.debug_struct("Say").field("text", text).finish(),
            ClientCommand::Refresh { .. } => f.write_str("Refresh { token: REDACTED }"),
        }
    }
}

/// What one client text frame asks for, once interpreted by [`parse_client_frame`].
#[derive(Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Post this text (from a `say` command or a plain-text frame).
    Say(String),
    /// Extend the connection with this token.
    Refresh(String),
    /// A JSON object with a string `type` that is not a valid command.
    BadRequest(String),
}

impl std::fmt::Debug for ClientFrame {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientFrame::Say(text) => f.debug_tuple("Say").field(text).finish(),
            ClientFrame::Refresh(_) => f.write_str("Refresh(REDACTED)"),
            ClientFrame::BadRequest(reason) => f.debug_tuple("BadRequest").field(reason).finish(),
        }
    }
}

/// Interprets one client text frame (SPEC §5, "Client → server").
///
/// A JSON object whose `type` is a string is a command; anything else, including JSON that is
/// not such an object, is the message text itself, so `websocat` and minimal clients just work.
/// Line-oriented clients end every frame with the line break of the line they read; that one
/// break (`\n` or `\r\n`) is not part of the message, while breaks inside it are.
pub fn parse_client_frame(text: &str) -> ClientFrame {
    let plain = || ClientFrame::Say(strip_final_line_break(text).to_owned());
    // Cheap pre-check: only frames that look like a JSON object pay for a parse.
    if !text.trim_start().starts_with('{') {
        return plain();
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        // A `refresh` with a typo would otherwise be posted as chat text, and show the room
        // the token it carries.
        if text.contains("\"refresh\"") {
            return ClientFrame::BadRequest(
                "malformed `refresh` command; not posted, since it may hold a token".to_owned(),
            );
        }
        return plain();
    };
    let Some(kind) = object.get("type").and_then(|value| value.as_str()) else {
        return plain();
    };
    let kind = kind.to_owned();
    match serde_json::from_value::<ClientCommand>(serde_json::Value::Object(object)) {
        Ok(ClientCommand::Say { text }) => ClientFrame::Say(text),
        Ok(ClientCommand::Refresh { token }) => ClientFrame::Refresh(token),
        Err(_) if kind == "say" => {
            ClientFrame::BadRequest("`say` needs a string field `text`".to_owned())
        }
        Err(_) if kind == "refresh" => {
            ClientFrame::BadRequest("`refresh` needs a string field `token`".to_owned())
        }
        Err(_) => ClientFrame::BadRequest(format!("unknown command type `{kind}`")),
    }
}

/// `text` less the one line break (`\n` or `\r\n`) that ends it, if any.
fn strip_final_line_break(text: &str) -> &str {
    text.strip_suffix('\n')
        .map_or(text, |line| line.strip_suffix('\r').unwrap_or(line))
}

impl ServerEvent {
    /// Serializes the event to its JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // fallible `Serialize` impls.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("ServerEvent is plain data"))
    }
}

/// Writes the `welcome` event around `history`, the room's `message` frames exactly as they
/// were broadcast, without parsing or serializing them again.
///
/// The result is the same JSON text `ServerEvent::Welcome::to_json` gives for the same
/// messages (a unit test holds the two together), so the wire has one serialization of a
/// message, and the history a newcomer gets is byte for byte what the members got.
pub fn encode_welcome<'a>(
    user: &str,
    room: &str,
    members: &[impl AsRef<str>],
    history: impl IntoIterator<Item = &'a str>,
) -> String {
    #[derive(Serialize)]
    struct Head<'a> {
        r#type: &'static str,
        user: &'a str,
        room: &'a str,
        members: Vec<&'a str>,
    }
    let head = Head {
        r#type: "welcome",
        user,
        room,
        members: members.iter().map(AsRef::as_ref).collect(),
    };
    let mut json = serde_json::to_string(&head).unwrap_or_else(|_| unreachable!("plain data"));
    // Reopen the object to append the history array.
    json.pop();
    json.push_str(",\"history\":[");
    for (index, frame) in history.into_iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        json.push_str(frame);
    }
    json.push_str("]}");
    json
}

/// How every `message` frame begins: its id follows. A cluster assigns the id in Redis and
/// joins this head, the id and [`message_frame_tail`] there, so the frame is serialized once.
pub const MESSAGE_FRAME_HEAD: &str = r#"{"type":"message","id":"#;

/// A `message` frame after its id: exactly what `ServerEvent::Message::to_json` writes there.
pub fn message_frame_tail(room: &str, user: &str, text: &str, ts: u64) -> String {
    let frame = ServerEvent::Message(ChatMessage {
        id: 0,
        room: room.to_owned(),
        user: user.to_owned(),
        text: text.to_owned(),
        ts,
    })
    .to_json();
    let after_id = MESSAGE_FRAME_HEAD.len() + 1;
    frame[after_id..].to_owned()
}

/// What a room frame relayed between cluster nodes is, read without parsing a message's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomFrame {
    Message { id: u64 },
    Join { user: String },
    Leave { user: String },
}

impl RoomFrame {
    /// Classifies a frame; `None` for anything that is not a room event.
    pub fn of(frame: &str) -> Option<Self> {
        if let Some(rest) = frame.strip_prefix(MESSAGE_FRAME_HEAD) {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            // Redis counts in signed 64 bits; anything above cannot be a real id, and keeping
            // ids below it leaves room for `id + 1` everywhere.
            let id = rest[..digits].parse::<u64>().ok()?;
            return (id <= i64::MAX as u64).then_some(RoomFrame::Message { id });
        }
        match serde_json::from_str::<ServerEvent>(frame).ok()? {
            ServerEvent::Join { user, .. } => Some(RoomFrame::Join { user }),
            ServerEvent::Leave { user, .. } => Some(RoomFrame::Leave { user }),
            _ => None,
        }
    }
}

/// Serde for `welcome.history`: each entry is a whole `message` event, tagged like any other,
/// and a history entry of another type (or untagged) does not parse.
mod message_events {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::ChatMessage;

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Tagged<'a> {
        Message(&'a ChatMessage),
    }

    #[derive(Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Owned {
        Message(ChatMessage),
    }

    pub fn serialize<S: Serializer>(
        history: &[ChatMessage],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(history.iter().map(Tagged::Message))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<ChatMessage>, D::Error> {
        let tagged = Vec::<Owned>::deserialize(deserializer)?;
        Ok(tagged
            .into_iter()
            .map(|Owned::Message(message)| message)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_a_message() {
        assert_eq!(
            parse_client_frame("hello"),
            ClientFrame::Say("hello".into())
        );
    }

    #[test]
    fn say_command_posts_its_text() {
        assert_eq!(
            parse_client_frame(r#"{"type":"say","text":"hi"}"#),
            ClientFrame::Say("hi".into())
        );
    }

    #[test]
    fn a_refresh_carries_its_token_and_a_malformed_one_is_never_posted() {
        assert_eq!(
            parse_client_frame(r#"{"type":"refresh","token":"a.b.c"}"#),
            ClientFrame::Refresh("a.b.c".into())
        );
        for frame in [
            r#"{"type":"refresh","token":"a.b.c""#,
            r#"{"type":"refresh"}"#,
            r#"{"type":"refresh","token":5}"#,
        ] {
            assert!(
                matches!(parse_client_frame(frame), ClientFrame::BadRequest(_)),
                "{frame}"
            );
        }
        assert_eq!(
            format!(
                "{:?}",
                parse_client_frame(r#"{"type":"refresh","token":"s3cret"}"#)
            ),
            "Refresh(REDACTED)"
        );
    }

    #[test]
    fn json_without_string_type_is_plain_text() {
        for frame in [r#"{"text":"x"}"#, r#"{"type":5}"#, "[1,2]", "{not json"] {
            assert_eq!(
                parse_client_frame(frame),
                ClientFrame::Say(frame.into()),
                "{frame}"
            );
        }
    }

    #[test]
    fn unknown_or_malformed_command_is_bad_request() {
        for frame in [
            r#"{"type":"shout","text":"x"}"#,
            r#"{"type":"say"}"#,
            r#"{"type":"say","text":3}"#,
        ] {
            assert!(
                matches!(parse_client_frame(frame), ClientFrame::BadRequest(_)),
                "{frame}"
            );
        }
    }

    #[test]
    fn events_use_the_spec_field_names() {
        let event = ServerEvent::Message(ChatMessage {
            id: 17,
            room: "lobby".into(),
            user: "alice".into(),
            text: "hi".into(),
            ts: 1_764_000_000_000,
        });
        assert_eq!(
            event.to_json(),
            r#"{"type":"message","id":17,"room":"lobby","user":"alice","text":"hi","ts":1764000000000}"#
        );
        let error = ServerEvent::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
        };
        assert_eq!(
            error.to_json(),
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
        );
    }

    fn message(id: u64, text: &str) -> ChatMessage {
        ChatMessage {
            id,
            room: "lobby".into(),
            user: "alice".into(),
            text: text.into(),
            ts: 1_764_000_000_000 + id,
        }
    }

    #[test]
    fn plain_text_loses_only_the_line_break_that_ends_it() {
        for (frame, text) in [
            ("hello bob\n", "hello bob"),
            ("hello bob\r\n", "hello bob"),
            ("two\nlines\n", "two\nlines"),
            ("two\nlines", "two\nlines"),
            ("blank line after\n\n", "blank line after\n"),
            ("lone cr\r", "lone cr\r"),
            ("{\"text\":\"x\"}\n", "{\"text\":\"x\"}"),
        ] {
            assert_eq!(
                parse_client_frame(frame),
                ClientFrame::Say(text.into()),
                "{frame:?}"
            );
        }
    }

    #[test]
    fn a_say_command_keeps_its_text_as_written() {
        assert_eq!(
            parse_client_frame(r#"{"type":"say","text":"hi\n"}"#),
            ClientFrame::Say("hi\n".into())
        );
    }

    #[test]
    fn history_entries_are_message_events_byte_for_byte() {
        let history = [message(1, "one"), message(2, "two \"quoted\"")];
        let frames: Vec<String> = history
            .iter()
            .map(|m| ServerEvent::Message(m.clone()).to_json())
            .collect();
        let spliced = encode_welcome(
            "bob",
            "lobby",
            &["alice", "bob"],
            frames.iter().map(String::as_str),
        );
        let welcome = ServerEvent::Welcome {
            user: "bob".into(),
            room: "lobby".into(),
            members: vec!["alice".into(), "bob".into()],
            history: history.to_vec(),
        };
        assert_eq!(spliced, welcome.to_json());
        for frame in &frames {
            assert!(spliced.contains(frame.as_str()), "{spliced}");
        }
        assert_eq!(
            serde_json::from_str::<ServerEvent>(&spliced).unwrap(),
            welcome
        );
    }

    #[test]
    fn a_welcome_with_untagged_history_does_not_parse() {
        let untagged = r#"{"type":"welcome","user":"b","room":"r","members":["b"],"history":[{"id":1,"room":"r","user":"a","text":"x","ts":1}]}"#;
        assert!(serde_json::from_str::<ServerEvent>(untagged).is_err());
        let joined = r#"{"type":"welcome","user":"b","room":"r","members":["b"],"history":[{"type":"join","room":"r","user":"a","ts":1}]}"#;
        assert!(serde_json::from_str::<ServerEvent>(joined).is_err());
    }

    #[test]
    fn an_empty_history_is_an_empty_array() {
        let none: [&str; 0] = [];
        assert_eq!(
            encode_welcome("a", "r", &["a"], none),
            r#"{"type":"welcome","user":"a","room":"r","members":["a"],"history":[]}"#
        );
    }

    #[test]
    fn a_message_frame_is_its_head_id_and_tail() {
        let tail = message_frame_tail("lobby", "alice", "hi \"there\"", 1_764_000_000_000);
        let frame = format!("{MESSAGE_FRAME_HEAD}42{tail}");
        let expected = ServerEvent::Message(ChatMessage {
            id: 42,
            room: "lobby".into(),
            user: "alice".into(),
            text: "hi \"there\"".into(),
            ts: 1_764_000_000_000,
        });
        assert_eq!(frame, expected.to_json());
        assert_eq!(RoomFrame::of(&frame), Some(RoomFrame::Message { id: 42 }));
    }

    #[test]
    fn room_frames_are_told_apart() {
        let join = r#"{"type":"join","room":"r","user":"bob","ts":1}"#;
        let leave = r#"{"type":"leave","room":"r","user":"bob","ts":1}"#;
        assert_eq!(
            RoomFrame::of(join),
            Some(RoomFrame::Join { user: "bob".into() })
        );
        assert_eq!(
            RoomFrame::of(leave),
            Some(RoomFrame::Leave { user: "bob".into() })
        );
        assert_eq!(RoomFrame::of(r#"{"type":"message","id":x}"#), None);
        assert_eq!(RoomFrame::of("garbage"), None);
    }
}
