//! The demo's applications: a tiny HTTP server that says who it is and a client that calls it,
//! both ordinary plaintext programs that know nothing of the mesh (sockets made inside a pod's
//! network namespace, see [`super::lab::Pod::enter`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::Context;

/// Most bytes of a request or response either side reads.
const MAX_MESSAGE: u64 = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /` on `listener` with `body`, one connection at a time, until the process ends.
pub fn serve(listener: TcpListener, body: String) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &body);
        }
    });
}

fn answer(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || request.len() as u64 + n as u64 > MAX_MESSAGE {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

/// What a call got.
#[derive(Debug)]
pub enum Reply {
    /// A complete HTTP response: its body.
    Ok(String),
    /// The connection was refused, reset or closed before a response, or timed out.
    Refused(String),
}

/// `GET http://<addr>/` with a plain socket (the caller has entered the client's namespace).
pub fn call(addr: SocketAddr) -> Reply {
    match try_call(addr) {
        Ok(response) => match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Reply::Ok(body.to_string()),
            _ if response.is_empty() => {
                Reply::Refused("the connection was closed without a response".into())
            }
            _ => Reply::Refused(format!(
                "unexpected response: {:?}",
                response.lines().next().unwrap_or("")
            )),
        },
        Err(e) => Reply::Refused(format!("{e:#}")),
    }
}

fn try_call(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .context("sending the request")?;
    let mut response = String::new();
    (&mut stream)
        .take(MAX_MESSAGE)
        .read_to_string(&mut response)
        .context("reading the response")?;
    Ok(response)
}

/// `GET http://127.0.0.1:<port><path>` (the proxy's admin port): status code and body.
pub fn admin_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = String::new();
    (&mut stream)
        .take(4 * 1024 * 1024)
        .read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_gets_the_body_and_a_closed_port_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, "hello from web".into());
        assert!(matches!(call(addr), Reply::Ok(body) if body == "hello from web"));
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(matches!(call(closed_addr), Reply::Refused(_)));
    }

    #[test]
    fn a_server_that_closes_at_once_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((s, _)) = listener.accept() {
                drop(s);
            }
        });
        assert!(matches!(call(addr), Reply::Refused(_)));
    }
}
