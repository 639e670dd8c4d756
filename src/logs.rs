//! Where log lines go: stderr, a batch at a time.
//!
//! SPEC §7 asks for a line per connection, per disconnect and per rejected handshake, so a busy
//! server logs as often as it accepts. Written one `write` each, those lines cost about a tenth
//! of a whole handshake. Instead, lines collect in one buffer and go out in a single `write`
//! when a runtime worker is about to go idle ([`flush`], wired to tokio's `on_thread_park`), or
//! at once when [`FLUSH_AT`] bytes are waiting. An idle server therefore writes each line as it
//! happens; a saturated one writes many per syscall. [`flush`] also runs before a panic message
//! and when the process exits, so nothing is lost or reordered on the way out.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, TryLockError};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log lines that may wait for an idle moment before they are written regardless.
pub const FLUSH_AT: usize = 16 * 1024;

static PENDING: Mutex<Batch> = Mutex::new(Batch::new());

/// A `tracing_subscriber` writer that batches lines for stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchedStderr;

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = PendingLines;

    fn make_writer(&'a self) -> Self::Writer {
        PendingLines
    }
}

/// Appends what the formatter writes (one whole event per `write`) to the pending batch.
#[derive(Debug)]
pub struct PendingLines;

impl Write for PendingLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock().push(buf, &mut io::stderr().lock());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes every pending line to stderr. Cheap when there is nothing to write.
pub fn flush() {
    let mut pending = match PENDING.try_lock() {
        Ok(pending) => pending,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        // Another thread is appending or writing; whatever it holds goes out with its next
        // flush, and blocking here could deadlock a panic raised while the lock is held.
        Err(TryLockError::WouldBlock) => return,
    };
    pending.write_out(&mut io::stderr().lock());
}

/// Makes a panic's message come after the log lines that led up to it.
pub fn flush_before_panic_messages() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush();
        report(info);
    }));
}

fn lock() -> MutexGuard<'static, Batch> {
    PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lines not yet written.
#[derive(Debug)]
struct Batch(Vec<u8>);

impl Batch {
    const fn new() -> Self {
        Self(Vec::new())
    }

    fn push(&mut self, lines: &[u8], out: &mut impl Write) {
        self.0.extend_from_slice(lines);
        if self.0.len() >= FLUSH_AT {
            self.write_out(out);
        }
    }

    fn write_out(&mut self, out: &mut impl Write) {
        if self.0.is_empty() {
            return;
        }
        // A log line that cannot be written (stderr closed) is dropped, as with `eprintln!`
        // minus the panic.
        let _ = out.write_all(&self.0);
        self.0.clear();
        // One burst of logging must not pin a large buffer for the life of the process.
        if self.0.capacity() > 4 * FLUSH_AT {
            self.0.shrink_to(FLUSH_AT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_for_a_flush_or_a_full_batch() {
        let mut batch = Batch::new();
        let mut out = Vec::new();
        batch.push(b"first line\n", &mut out);
        assert!(out.is_empty(), "a line waits");
        batch.write_out(&mut out);
        assert_eq!(out, b"first line\n");

        out.clear();
        let line = [b'x'; FLUSH_AT / 4];
        for _ in 0..3 {
            batch.push(&line, &mut out);
        }
        assert!(out.is_empty(), "below the threshold, lines wait");
        batch.push(&line, &mut out);
        assert_eq!(
            out.len(),
            FLUSH_AT,
            "at the threshold, the whole batch is written"
        );
        batch.write_out(&mut out);
        assert_eq!(out.len(), FLUSH_AT, "and nothing is left to write twice");
    }
}
