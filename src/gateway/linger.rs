//! Lingering close for every client connection (as nginx's `lingering_close`).
//!
//! Closing a TCP socket that still has unread input makes the kernel send RST instead of FIN,
//! and a peer that gets RST may throw away what it had not read yet: the WebSocket close frame
//! (1009 after an oversized frame) or an HTTP error response. A client that is refused mid-way
//! through a large frame always has unread input behind it. So when a connection is dropped,
//! its socket is handed to a short task that shuts the write side (FIN after the last bytes
//! sent), then reads and discards until the peer closes, at most `gateway.linger_bytes` bytes and
//! `gateway.linger_ms` long, and only then closes. At most `gateway.max_lingering` sockets linger
//! at once; beyond that a socket is closed at once, as before.
//!
//! The wrapper is the listener's I/O type, so every transport (WebSocket, SSE, HTTP) gets it,
//! and an open connection pays only for the wrapper's two words.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Size of the buffer a lingering socket is read into (allocated only while it lingers).
const DISCARD_CHUNK: usize = 4096;

/// How connections linger on close (from `[gateway]`).
#[derive(Debug, Clone, Copy)]
pub struct LingerLimits {
    pub deadline: Duration,
    pub max_bytes: usize,
    pub max_sockets: usize,
    /// SO_SNDBUF of each accepted socket (`gateway.tcp_send_buffer_bytes`; 0 = kernel default).
    pub send_buffer: usize,
}

struct Shared {
    limits: LingerLimits,
    lingering: AtomicUsize,
}

/// Binds the client listener with room for `backlog` connections waiting to be accepted: in a
/// reconnect storm, SYNs beyond the accept queue are dropped and their clients wait a whole
/// second to retransmit (the kernel caps it at `net.core.somaxconn`).
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The listener of the gateway, accepting [`LingeringStream`]s.
pub struct LingeringListener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

impl LingeringListener {
    pub fn new(inner: TcpListener, limits: LingerLimits) -> Self {
        Self { inner, shared: Arc::new(Shared { limits, lingering: AtomicUsize::new(0) }) }
    }
}

impl axum::serve::Listener for LingeringListener {
    type Io = LingeringStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // No Nagle delay: small frames written back to back would otherwise wait for the peer's
        // delayed ACK.
        let _ = tcp.set_nodelay(true);
        if self.shared.limits.send_buffer > 0 {
            let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(self.shared.limits.send_buffer);
        }
        (LingeringStream { tcp: Some(tcp), shared: self.shared.clone() }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A client's TCP stream that lingers when dropped (see the module doc).
pub struct LingeringStream {
    /// Always `Some` until dropped.
    tcp: Option<TcpStream>,
    shared: Arc<Shared>,
}

impl LingeringStream {
    fn tcp(&mut self) -> &mut TcpStream {
        self.tcp.as_mut().expect("present until dropped")
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp()).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp()).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().tcp()).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(|t| t.is_write_vectored())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp()).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().tcp()).poll_shutdown(cx)
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(tcp) = self.tcp.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let shared = self.shared.clone();
        let limits = shared.limits;
        if shared.lingering.fetch_add(1, Ordering::Relaxed) >= limits.max_sockets {
            shared.lingering.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        rt.spawn(async move {
            let _ = tokio::time::timeout(limits.deadline, linger(tcp, limits.max_bytes)).await;
            shared.lingering.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Sends FIN, then discards input until the peer closes or `max_bytes` were read.
async fn linger(mut tcp: TcpStream, max_bytes: usize) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; DISCARD_CHUNK];
    let mut left = max_bytes;
    while left > 0 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}
