//! The application every set-up serves, and the driver's own clients. The same code for every
//! path: a tokio HTTP/1.1 keep-alive server answering every request with the same 13-byte body
//! (closing after the response when the request says `Connection: close`), and a bulk source
//! that sends as many bytes as the client asks for.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The HTTP app's port in the server pods.
pub const HTTP_PORT: u16 = 8080;
/// The bulk source's port in the server pods.
pub const BULK_PORT: u16 = 8081;

const BODY: &str = "hello, mesh!\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\nhello, mesh!\n";
const RESPONSE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\nhello, mesh!\n";
/// A request head longer than this closes the connection.
const MAX_HEAD: usize = 8 * 1024;
/// The most a bulk client may ask for.
const MAX_BULK: u64 = 8 << 30;
const BULK_CHUNK: usize = 256 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP on `listener` until the runtime stops.
pub async fn serve_http(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and the like: give the other tasks a chance instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(http_connection(stream));
    }
}

/// Answers each complete request head in what was read, in one write per read (pipelining
/// works); `Connection: close` ends the connection after its response.
async fn http_connection(mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    let mut out = Vec::with_capacity(RESPONSE_CLOSE.len() * 4);
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        let mut close = false;
        out.clear();
        while let Some(end) = find_head_end(&buf[start..filled]) {
            close = wants_close(&buf[start..start + end]);
            out.extend_from_slice(if close { RESPONSE_CLOSE } else { RESPONSE });
            start += end;
            if close {
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        if close {
            return stream.shutdown().await;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return Ok(()); // a head larger than MAX_HEAD
        }
    }
}

/// The length of the first request head in `buf` including its blank line, if complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Whether the head has a `Connection: close` header (any case).
fn wants_close(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line).to_ascii_lowercase();
        line.strip_prefix("connection:")
            .is_some_and(|v| v.trim() == "close")
    })
}

/// Serves the bulk source on `listener`: the client sends a big-endian u64, gets that many
/// bytes (at most 8 GiB), then end of stream.
pub async fn serve_bulk(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut len = [0u8; 8];
            stream.read_exact(&mut len).await?;
            let mut left = u64::from_be_bytes(len).min(MAX_BULK);
            let chunk = vec![0x5au8; BULK_CHUNK];
            while left > 0 {
                let n = left.min(BULK_CHUNK as u64) as usize;
                stream.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
            stream.shutdown().await
        });
    }
}

/// Reads one complete response of the HTTP app from `stream` (the caller has sent a request).
fn read_response(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !(got.ends_with(BODY.as_bytes()) && got.windows(4).any(|w| w == b"\r\n\r\n")) {
        let n = stream.read(&mut buf).context("reading the response")?;
        if n == 0 {
            bail!(
                "closed after {} bytes: {:?}",
                got.len(),
                String::from_utf8_lossy(&got)
            );
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 4096 {
            bail!("response too long: {:?}", String::from_utf8_lossy(&got));
        }
    }
    if !got.starts_with(b"HTTP/1.1 200 ") {
        bail!("not a 200: {:?}", String::from_utf8_lossy(&got));
    }
    Ok(())
}

/// Opens `count` connections to `to` (the caller has entered the client's namespace), makes
/// one request on each so every hop is established end to end, and returns them still open.
pub fn open_held(to: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)
            .with_context(|| format!("connection {i} to {to}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")?;
        read_response(&mut s).with_context(|| format!("connection {i} to {to}"))?;
        held.push(s);
    }
    Ok(held)
}

/// One request on a new connection: whether the path answers.
pub fn probe(to: SocketAddr) -> anyhow::Result<()> {
    open_held(to, 1).map(drop)
}

/// Asks the bulk source behind `to` for `bytes` and reads them all: MiB/s.
pub fn bulk(to: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT).with_context(|| format!("{to}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let start = Instant::now();
    s.write_all(&bytes.to_be_bytes())?;
    let mut buf = vec![0u8; BULK_CHUNK];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).context("reading the bulk stream")?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    if got != bytes {
        bail!("bulk stream from {to} ended after {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / (1024.0 * 1024.0) / secs)
}
