//! Moving bytes between the two sides of a proxied connection: both directions at once, each
//! side's end of stream passed on as a half-close (shutdown of the other side's write), bytes
//! counted into the proxy's metrics as they flow, and any bytes read before the decision
//! (the detection buffer) replayed first.

use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::metrics::{Direction, DirectionLabel, ProxyMetrics};

/// Buffer per direction: large enough for a full TLS record (16 KiB plus overhead) in one
/// read, small enough that 1,000 connections cost ~64 MiB at most. (Measured at 16 KiB,
/// haproxy's size: one stream's throughput fell by about a fifth against haproxy's in the
/// same runs, and 1,000 held connections took no less memory, since a buffer's pages are
/// only touched as bytes pass.)
pub const BUFFER: usize = 32 * 1024;

/// A stream whose first reads return `prefix` (bytes already taken off the socket to decide
/// what the connection is), then the stream's own bytes. Writes go straight through.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, with `prefix` to be read first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new(); // give the memory back
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connecting side of a connection, counting what is read from it (received) and written
/// to it (sent) into the direction's counters as it happens, so long-lived connections show up
/// in the metrics before they end.
struct Metered<S> {
    inner: S,
    received: Counter,
    sent: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.received.inc_by(n as u64);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.sent.inc_by(n as u64);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways between `client` (the connecting side) and `server` until both directions
/// ended; an end of stream on one side shuts down the other side's write, so half-closed
/// protocols work. Returns (bytes from the client, bytes to the client). An error in either
/// direction ends both.
pub async fn forward<C, S>(
    client: C,
    mut server: S,
    metrics: &ProxyMetrics,
    direction: Direction,
) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let label = DirectionLabel {
        direction: direction.as_str(),
    };
    let mut client = Metered {
        inner: client,
        received: metrics.bytes_received.get_or_create(&label).clone(),
        sent: metrics.bytes_sent.get_or_create(&label).clone(),
    };
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn replays_the_prefix_then_half_closes_and_counts() {
        let metrics = ProxyMetrics::default();
        let (client_near, mut client_far) = duplex(64);
        let (server_near, mut server_far) = duplex(64);
        let client = Rewind::new(b"hello ".to_vec(), client_near);
        let task = tokio::spawn({
            let metrics = metrics.clone();
            async move { forward(client, server_near, &metrics, Direction::Inbound).await }
        });
        client_far.write_all(b"world").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world", "prefix first, then the rest, then EOF");
        // The other direction still works after the client's half-close.
        server_far.write_all(b"reply").await.unwrap();
        server_far.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_far.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        assert_eq!(task.await.unwrap().unwrap(), (11, 5));
        let label = DirectionLabel {
            direction: "inbound",
        };
        assert_eq!(metrics.bytes_received.get_or_create(&label).get(), 11);
        assert_eq!(metrics.bytes_sent.get_or_create(&label).get(), 5);
    }

    #[tokio::test]
    async fn a_prefix_larger_than_the_reader_buffer_is_replayed_in_pieces() {
        let (near, _far) = duplex(8);
        let data: Vec<u8> = (0..=255).cycle().take(100_000).collect();
        let mut r = Rewind::new(data.clone(), near);
        let mut got = vec![0; data.len()];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
    }
}
