//! The TCP stream hyper serves, and taking it back once hyper has answered `101`.
//!
//! hyper writes and flushes its `101` before it hands the socket over, and the server's first
//! WebSocket frame (the `welcome`) follows at once. Sent apart, they cost two sends and two
//! packets; on loopback a send is several microseconds of server CPU, a large share of a whole
//! handshake. So once the service has answered `101` ([`HoldSwitch::engage`]), the stream keeps
//! what hyper writes instead of sending it, and the connection task sends those bytes together
//! with its first frame. Only a `101` is ever held: it is the last response hyper writes on a
//! connection, because after it the connection is no longer HTTP.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Room reserved behind the held `101` for the first frame, so that a small `welcome` (a room
/// without history) is appended without growing the buffer again.
const FIRST_FRAME_ROOM: usize = 256;

/// Tells an [`HttpStream`] to hold what is written from now on; shared with the service.
#[derive(Debug, Clone, Default)]
pub struct HoldSwitch(Arc<AtomicBool>);

impl HoldSwitch {
    /// Called by the service as it answers `101`.
    pub fn engage(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn engaged(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A TCP stream that sends normally until its [`HoldSwitch`] is engaged, and holds writes after.
#[derive(Debug)]
pub struct HttpStream {
    tcp: TcpStream,
    hold: HoldSwitch,
    held: Vec<u8>,
}

impl HttpStream {
    pub fn new(tcp: TcpStream, hold: HoldSwitch) -> Self {
        Self {
            tcp,
            hold,
            held: Vec::new(),
        }
    }
}

impl AsyncRead for HttpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hold.engaged() {
            self.held.reserve(buf.len() + FIRST_FRAME_ROOM);
            self.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.hold.engaged() {
            let total: usize = bufs.iter().map(|buf| buf.len()).sum();
            self.held.reserve(total + FIRST_FRAME_ROOM);
            for buf in bufs {
                self.held.extend_from_slice(buf);
            }
            return Poll::Ready(Ok(total));
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.hold.engaged() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The socket of an answered `101`, back from hyper.
#[derive(Debug)]
pub struct TakenOver {
    pub tcp: TcpStream,
    /// What hyper wrote and the stream held (the `101`); must be sent before anything else.
    pub unsent: Vec<u8>,
    /// Bytes the client sent after its request that hyper had already read.
    pub read_ahead: Bytes,
}

impl TakenOver {
    /// Takes the TCP stream out of hyper's upgraded connection, or returns `None` if the
    /// connection was not served over an [`HttpStream`].
    pub fn from_upgraded(upgraded: Upgraded) -> Option<Self> {
        let parts = upgraded.downcast::<TokioIo<HttpStream>>().ok()?;
        let HttpStream { tcp, held, .. } = parts.io.into_inner();
        Some(Self {
            tcp,
            unsent: held,
            read_ahead: parts.read_buf,
        })
    }

    /// Sends the held bytes on their own (when there is no first frame to send with them).
    pub async fn send_unsent(&mut self) -> io::Result<()> {
        self.tcp.write_all(&self.unsent).await?;
        self.unsent = Vec::new();
        Ok(())
    }
}
