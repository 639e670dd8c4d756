//! What a text log line looks like, and writing it cheaply.
//!
//! The layout is tracing-subscriber's default one:
//! `2026-12-02T00:44:40.241369Z  INFO wschat::connection: connection accepted peer=127.0.0.1:58438 user=alice room=lobby`.
//! SPEC §7 asks for a line per accepted connection and per disconnect, so a saturated server
//! formats two lines for every handshake. The default formatter spends about 10,000
//! instructions on each (`valgrind --tool=callgrind`, 1,000 handshakes): styles are applied
//! even when colours are off, every value goes through an escaping writer, and the calendar
//! date is worked out again for every line. That was a fifth of a whole handshake. This
//! formatter writes straight into tracing-subscriber's line buffer, works the date out once per
//! second, and escapes a value only when it holds a control character.
//!
//! It only formats: filtering, span bookkeeping and the JSON format stay with
//! tracing-subscriber, and where lines go is `logs.rs`.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Text log lines in tracing-subscriber's default layout (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFormat;

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events bridged from the `log` crate (tungstenite logs that way) carry their real
        // target and level in `log.*` fields; normalizing puts them back in place.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        write_timestamp(&mut writer, SystemTime::now())?;
        write_level(&mut writer, *metadata.level())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        writer.write_str(metadata.target())?;
        writer.write_str(": ")?;
        let mut fields = FieldWriter {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

thread_local! {
    /// The whole seconds of the last timestamp this thread wrote, and their text
    /// (`2026-12-02T00:44:40`): the calendar date only changes once a second.
    static LAST_SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber writes it.
fn write_timestamp(writer: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    LAST_SECOND.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != seconds {
            // From the clamped seconds, not `now`: humantime refuses times before the epoch.
            let whole_second = UNIX_EPOCH + Duration::from_secs(seconds);
            let mut text = String::new();
            if write!(text, "{}", humantime::format_rfc3339_seconds(whole_second)).is_err() {
                // Past the year 9999, which RFC 3339 cannot write.
                text = String::from("<unknown time>");
            }
            // `…T00:44:40Z`: the fraction goes between the seconds and the `Z`.
            text.truncate(text.trim_end_matches('Z').len());
            *last = (seconds, text);
        }
        writer.write_str(&last.1)
    })?;
    let mut digits = itoa::Buffer::new();
    let micros = digits.format(since_epoch.subsec_micros());
    // Six digits, zero-padded: `.000042Z`.
    writer.write_char('.')?;
    writer.write_str(&"000000"[micros.len()..])?;
    writer.write_str(micros)?;
    writer.write_str("Z ")
}

/// The level right-aligned in five columns, coloured like tracing-subscriber's when the
/// writer has colours on.
fn write_level(writer: &mut Writer<'_>, level: Level) -> fmt::Result {
    let (text, colour) = match level {
        Level::TRACE => ("TRACE", "35"),
        Level::DEBUG => ("DEBUG", "34"),
        Level::INFO => (" INFO", "32"),
        Level::WARN => (" WARN", "33"),
        Level::ERROR => ("ERROR", "31"),
    };
    if writer.has_ansi_escapes() {
        write!(writer, "\x1b[{colour}m{text}\x1b[0m ")
    } else {
        writer.write_str(text)?;
        writer.write_char(' ')
    }
}

/// Writes an event's fields: the message first (it is the first field of every `tracing`
/// macro), then ` name=value` for each other field.
struct FieldWriter<'w, 'a> {
    writer: &'w mut Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_, '_> {
    fn write_field(&mut self, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
        let name = field.name();
        // Metadata that the `log` bridge attaches; the default formatter leaves it out too.
        if name.starts_with("log.") {
            return Ok(());
        }
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        if name != "message" {
            self.writer
                .write_str(name.strip_prefix("r#").unwrap_or(name))?;
            self.writer.write_char('=')?;
        }
        write!(ControlEscaping(self.writer), "{value:?}")
    }
}

impl Visit for FieldWriter<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Quoted, as the default formatter writes string values.
        self.record_debug(field, &value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.write_field(field, value);
        }
    }
}

/// Passes text through, except control characters (C0, DEL and C1), which it writes escaped
/// (`\n`, `\u{1b}`, `\u{9b}`): a value can never start a forged line or send a terminal
/// escape sequence.
struct ControlEscaping<'w, 'a>(&'w mut Writer<'a>);

/// Whether `byte` may belong to a control character: C0 and DEL are single bytes, and every
/// C1 character (U+0080 to U+009F) is encoded as 0xC2 followed by a continuation byte.
fn may_start_control(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7f || byte == 0xc2
}

impl fmt::Write for ControlEscaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if !text.bytes().any(may_start_control) {
            return self.0.write_str(text);
        }
        for c in text.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Displays a socket address exactly as `SocketAddr`'s own `Display` does (without width or
/// precision), but an IPv4 address without going through `core::fmt` five times: SPEC §7 puts
/// the peer on every connection line, and std's formatting of it was a sixth of a line's cost.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SocketAddr::V4(v4) = self.0 else {
            return fmt::Display::fmt(&self.0, f);
        };
        // Assembled first and written once: every write to the log line is a dynamic call
        // and a scan for control characters. "255.255.255.255:65535" is the longest.
        let mut text = [0u8; 21];
        let mut len = 0;
        let mut digits = itoa::Buffer::new();
        let mut push = |part: &[u8]| {
            text[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        };
        for (index, octet) in v4.ip().octets().into_iter().enumerate() {
            if index > 0 {
                push(b".");
            }
            push(digits.format(octet).as_bytes());
        }
        push(b":");
        push(digits.format(v4.port()).as_bytes());
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    fn lines_of(ansi: bool, log: impl FnOnce()) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_max_level(Level::TRACE)
            .with_writer(captured.clone())
            .event_format(TextFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_line_has_time_level_target_message_and_fields() {
        let peer: std::net::SocketAddr = "127.0.0.1:58438".parse().unwrap();
        let text = lines_of(false, || {
            tracing::info!(%peer, user = %"alice", close_code = 1000_u16, "connection closed");
        });
        let (timestamp, rest) = text.split_once(' ').unwrap();
        assert_eq!(
            rest,
            " INFO wschat::log_format::tests: connection closed peer=127.0.0.1:58438 \
             user=alice close_code=1000\n"
        );
        // 2026-12-02T00:44:40.241369Z
        assert_eq!(timestamp.len(), 27, "{timestamp}");
        assert!(humantime::parse_rfc3339(timestamp).is_ok(), "{timestamp}");
    }

    #[test]
    fn the_timestamp_is_rfc_3339_with_microseconds() {
        let mut text = String::new();
        for micros in [1_764_000_000_000_042, 1_764_000_001_999_999] {
            let at = UNIX_EPOCH + Duration::from_micros(micros);
            write_timestamp(&mut Writer::new(&mut text), at).unwrap();
        }
        // The second one is in the next second: the cached date text must not be reused.
        assert_eq!(
            text,
            "2025-11-24T16:00:00.000042Z 2025-11-24T16:00:01.999999Z "
        );
    }

    #[test]
    fn a_clock_outside_rfc_3339_does_not_panic() {
        let mut text = String::new();
        let before_the_epoch = UNIX_EPOCH - Duration::from_secs(1);
        write_timestamp(&mut Writer::new(&mut text), before_the_epoch).unwrap();
        let after_year_9999 = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        write_timestamp(&mut Writer::new(&mut text), after_year_9999).unwrap();
        assert_eq!(text, "1970-01-01T00:00:00.000000Z <unknown time>.000000Z ");
    }

    #[test]
    fn peer_addresses_read_as_std_writes_them() {
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:58438",
            "255.255.255.255:65535",
            "10.0.9.100:80",
            "[::1]:3000",
            "[fe80::1%2]:443",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(PeerAddr(addr).to_string(), addr.to_string());
        }
    }

    #[test]
    fn levels_line_up_and_are_coloured_only_with_ansi() {
        let plain = lines_of(false, || {
            tracing::warn!("w");
            tracing::error!("e");
        });
        assert!(plain.contains("Z  WARN "), "{plain}");
        assert!(plain.contains("Z ERROR "), "{plain}");
        assert!(!plain.contains('\x1b'), "{plain}");
        let coloured = lines_of(true, || tracing::warn!("w"));
        assert!(coloured.contains("\x1b[33m WARN\x1b[0m "), "{coloured}");
    }

    #[test]
    fn control_characters_in_values_cannot_forge_lines() {
        let hostile = "x\nINFO forged\x1b[31m\u{9b}2J\u{85}é";
        let text = lines_of(false, || tracing::info!(name = %hostile, "seen"));
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r"name=x\nINFO forged\u{1b}[31m\u{9b}2J\u{85}é"),
            "{text}"
        );
    }

    #[test]
    fn strings_are_quoted_and_spans_prefix_the_target() {
        let text = lines_of(false, || {
            let span = tracing::info_span!("request", id = 7);
            let _entered = span.enter();
            tracing::info!(reason = "too big", "closed");
        });
        assert!(
            text.contains(
                " INFO request{id=7}: wschat::log_format::tests: closed reason=\"too big\"\n"
            ),
            "{text}"
        );
    }
}
