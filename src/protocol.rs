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
        /// The room's most recent messages, oldest first.
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
}

/// Commands a client may send as a JSON object with a string `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientCommand {
    /// Post `text` to the room.
    Say { text: String },
}

/// What one client text frame asks for, once interpreted by [`parse_client_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Post this text (from a `say` command or a plain-text frame).
    Say(String),
    /// A JSON object with a string `type` that is not a valid command.
    BadRequest(String),
}

/// Interprets one client text frame (SPEC §5, "Client → server").
///
/// A JSON object whose `type` is a string is a command; anything else, including JSON that is
/// not such an object, is the message text itself, so `websocat` and minimal clients just work.
pub fn parse_client_frame(text: &str) -> ClientFrame {
    // Cheap pre-check: only frames that look like a JSON object pay for a parse.
    if !text.trim_start().starts_with('{') {
        return ClientFrame::Say(text.to_owned());
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return ClientFrame::Say(text.to_owned());
    };
    let Some(kind) = object.get("type").and_then(|value| value.as_str()) else {
        return ClientFrame::Say(text.to_owned());
    };
    let kind = kind.to_owned();
    match serde_json::from_value::<ClientCommand>(serde_json::Value::Object(object)) {
        Ok(ClientCommand::Say { text }) => ClientFrame::Say(text),
        Err(_) if kind == "say" => {
            ClientFrame::BadRequest("`say` needs a string field `text`".to_owned())
        }
        Err(_) => ClientFrame::BadRequest(format!("unknown command type `{kind}`")),
    }
}

impl ServerEvent {
    /// Serializes the event to its JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // fallible `Serialize` impls.
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("ServerEvent is plain data"))
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
}
