//! The inbound listener (:15006): connections redirected to the pod's ports. Per connection:
//! original destination -> the port's mode -> what the client speaks -> STRICT: mesh mTLS or
//! close; PERMISSIVE: mesh mTLS when offered, else the bytes pass through untouched; DISABLE:
//! pass through -> the app.
//!
//! AuthorizationPolicy is enforced once the peer is known (after the mesh handshake, or at
//! accept for plaintext) and before a byte reaches the app: a denied connection is reset,
//! counted in `palisade_proxy_authz_denied_total{policy}` and logged. While a connection is
//! open, every new policy is checked against it, and one that denies it resets it too.
//!
//! Before the first policy a port is treated as STRICT and every connection is denied (fail
//! closed): the proxy cannot know whether plaintext is allowed, nor who may connect. The
//! proxy reports ready only once it has its first policy.
//!
//! The app is dialled at loopback on the original port first, then, if refused, at the
//! original destination itself (the pod IP: apps that bind only to it). That second dial
//! does not come back to this listener: `palisade init` excludes the proxy's own traffic
//! (uid 1337) from capture.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::authz::{self, Denied};
use super::context::{ConnectionInfo, Context};
use super::detect::{Detection, MAX_PEEK, detect};
use super::forward::{Rewind, forward};
use super::listen::Refusal;
use super::metrics::{Direction, TlsMode};
use crate::xds::proto::palisade_v1::MtlsMode;

const DIRECTION: Direction = Direction::Inbound;

/// Accepts redirected inbound connections until `shutdown` is true, then waits for the open
/// ones to end.
pub async fn serve(
    listener: TcpListener,
    ctx: Context,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    super::listen::serve(
        listener,
        ctx,
        shutdown,
        DIRECTION,
        |ctx, stream, peer| async move { handle(&ctx, stream, peer).await },
    )
    .await
}

/// Reads the client's first bytes until [`detect`] decides, the buffer holds [`MAX_PEEK`], the
/// client ends its stream, or `wait` passes. Bytes are taken off the socket (a peek cannot
/// wait for *more* bytes than are already there without spinning) and replayed afterwards.
async fn sniff(stream: &mut TcpStream, wait: Duration) -> (Detection, Vec<u8>, bool) {
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let decided = detect(&buf);
        if decided != Detection::NeedMore {
            return (decided, buf, false);
        }
        if buf.len() >= MAX_PEEK {
            return (Detection::Other, buf, false);
        }
        let want = (MAX_PEEK - buf.len()).min(4096);
        let start = buf.len();
        buf.resize(start + want, 0);
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[start..])).await {
            Ok(Ok(n)) => {
                buf.truncate(start + n);
                if n == 0 {
                    return (Detection::Other, buf, false);
                }
            }
            Ok(Err(_)) => {
                buf.truncate(start);
                return (Detection::Other, buf, false);
            }
            Err(_) => {
                buf.truncate(start);
                return (Detection::Other, buf, true);
            }
        }
    }
}

async fn handle(ctx: &Context, mut stream: TcpStream, peer: SocketAddr) -> Result<(), Refusal> {
    let dst = ctx
        .orig_dst
        .resolve(&stream, peer, &ctx.ports.all())
        .map_err(|e| Refusal(e.reason(), e.to_string()))?;
    // Our own receiver: the decision below uses the value it marks seen, so the revocation
    // watch (`finish`) checks every later one and none slips between.
    let mut policy_rx = ctx.shared.policy.clone();
    let policy = policy_rx.borrow_and_update().clone();
    let mode = policy
        .as_deref()
        .map_or(MtlsMode::Strict, |p| p.inbound_mode(dst.port()));
    let (detection, prefix, timed_out) = match mode {
        MtlsMode::Disable => (Detection::Other, Vec::new(), false),
        MtlsMode::Strict => sniff(&mut stream, ctx.timeouts.strict_detect).await,
        _ => sniff(&mut stream, ctx.timeouts.permissive_detect).await,
    };
    let client = Rewind::new(prefix, stream);
    match (mode, detection) {
        (_, Detection::MeshTls) if mode != MtlsMode::Disable => {
            let acceptor = TlsAcceptor::from(ctx.mesh.server_config());
            let tls = tokio::time::timeout(ctx.timeouts.handshake, acceptor.accept(client))
                .await
                .map_err(|_| Refusal("handshake_timeout", "TLS handshake timed out".into()))?
                .map_err(|e| Refusal(super::tls::failure_reason(&e), e.to_string()))?;
            let info = ConnectionInfo {
                peer_identity: super::tls::handshake_peer_id(
                    tls.get_ref().1,
                    ctx.mesh.trust_domain(),
                ),
                source: peer,
                destination: dst,
            };
            let conn = authz::connection(&info, tls.get_ref().1.server_name());
            if let Err(denied) = authz::decide(policy.as_deref(), conn.as_ref()) {
                authz::reset_on_close(tls.get_ref().0.get_ref());
                return Err(deny(ctx, &info, denied));
            }
            let app = connect_app(ctx, dst).await?;
            ctx.metrics.connection(DIRECTION, TlsMode::Mesh);
            tracing::debug!(?info, "inbound mesh connection");
            let mut tls = tls;
            if finish(ctx, &mut tls, app, &info, policy_rx, conn).await {
                authz::reset_on_close(tls.get_ref().0.get_ref());
            }
            Ok(())
        }
        (MtlsMode::Strict, _) => {
            let (reason, detail) = if timed_out {
                (
                    "handshake_timeout",
                    "no mesh ClientHello in time".to_string(),
                )
            } else {
                (
                    "plaintext_refused",
                    "STRICT port; the client did not start mesh mTLS".to_string(),
                )
            };
            Err(Refusal(reason, format!("{detail} (port {})", dst.port())))
        }
        _ => {
            let info = ConnectionInfo {
                peer_identity: None,
                source: peer,
                destination: dst,
            };
            let conn = authz::connection(&info, None);
            if let Err(denied) = authz::decide(policy.as_deref(), conn.as_ref()) {
                authz::reset_on_close(client.get_ref());
                return Err(deny(ctx, &info, denied));
            }
            let app = connect_app(ctx, dst).await?;
            ctx.metrics.connection(DIRECTION, TlsMode::Passthrough);
            let mut client = client;
            if finish(ctx, &mut client, app, &info, policy_rx, conn).await {
                authz::reset_on_close(client.get_ref());
            }
            Ok(())
        }
    }
}

/// Counts a denial and says what the listener logs (rate-limited) for it.
fn deny(ctx: &Context, info: &ConnectionInfo, denied: Denied) -> Refusal {
    ctx.metrics.authz_denied(&denied.policy);
    Refusal(
        "authz_denied",
        format!(
            "AuthorizationPolicy {}: {} (peer {}, port {})",
            denied.policy,
            denied.why,
            authz::peer_name(info),
            info.destination.port()
        ),
    )
}

/// Forwards until either side ends, or until a new policy denies the connection; then the
/// app side is reset and `true` returned, so the caller resets the client side as well.
async fn finish<C>(
    ctx: &Context,
    client: &mut C,
    app: TcpStream,
    info: &ConnectionInfo,
    policy: watch::Receiver<Option<std::sync::Arc<super::state::Policy>>>,
    conn: Option<crate::policy::authz::Connection>,
) -> bool
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut app = app;
    let revoked = {
        let forwarding = forward(&mut *client, &mut app, &ctx.metrics, DIRECTION);
        tokio::pin!(forwarding);
        tokio::select! {
            result = &mut forwarding => {
                if let Err(e) = result {
                    tracing::debug!(?info, error = %e, "inbound connection ended with an error");
                }
                None
            }
            denied = authz::revoked(policy, conn) => Some(denied),
        }
    };
    let Some(denied) = revoked else {
        return false;
    };
    ctx.metrics.authz_denied(&denied.policy);
    tracing::warn!(
        policy = %denied.policy,
        why = %denied.why,
        peer = authz::peer_name(info),
        source = %info.source,
        port = info.destination.port(),
        "closing an open connection that a new AuthorizationPolicy denies"
    );
    authz::reset_on_close(&app);
    true
}

/// The app on the original port: loopback first, then the original destination (the pod IP)
/// when loopback refuses.
async fn connect_app(ctx: &Context, dst: SocketAddr) -> Result<TcpStream, Refusal> {
    let loopback = if dst.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], dst.port()))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, dst.port()))
    };
    let timeout = ctx.timeouts.connect;
    let first = tokio::time::timeout(timeout, TcpStream::connect(loopback)).await;
    let stream = match first {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused && dst != loopback => {
            match tokio::time::timeout(timeout, TcpStream::connect(dst)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(Refusal("connect_failed", format!("app at {dst}: {e}"))),
                Err(_) => {
                    return Err(Refusal(
                        "connect_failed",
                        format!("app at {dst}: timed out"),
                    ));
                }
            }
        }
        Ok(Err(e)) => return Err(Refusal("connect_failed", format!("app at {loopback}: {e}"))),
        Err(_) => {
            return Err(Refusal(
                "connect_failed",
                format!("app at {loopback}: timed out"),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_one_byte_and_stalls_is_cut_off_at_the_deadline() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = pair().await;
        client.write_all(&[22]).await.unwrap();
        let start = tokio::time::Instant::now();
        let (detection, bytes, timed_out) = sniff(&mut server, Duration::from_secs(5)).await;
        assert_eq!(
            (detection, bytes.as_slice(), timed_out),
            (Detection::Other, &[22u8][..], true)
        );
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_other_after_the_wait_and_split_hellos_are_reassembled() {
        use tokio::io::AsyncWriteExt;
        let (_client, mut server) = pair().await;
        let (detection, bytes, timed_out) = sniff(&mut server, Duration::from_millis(300)).await;
        assert_eq!(
            (detection, bytes.len(), timed_out),
            (Detection::Other, 0, true)
        );

        let (mut client, mut server) = pair().await;
        let hello = crate::proxy::test_pki::client_hello(&[crate::proxy::MESH_ALPN]);
        let (head, tail) = hello.split_at(7);
        client.write_all(head).await.unwrap();
        let task = tokio::spawn(async move { sniff(&mut server, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        client.write_all(tail).await.unwrap();
        let (detection, bytes, timed_out) = task.await.unwrap();
        assert_eq!((detection, timed_out), (Detection::MeshTls, false));
        assert_eq!(bytes, hello, "every byte kept for the handshake");

        let (mut client, mut server) = pair().await;
        client.write_all(b"EHLO").await.unwrap();
        client.shutdown().await.unwrap();
        let (detection, bytes, _) = sniff(&mut server, Duration::from_secs(5)).await;
        assert_eq!(
            (detection, bytes.as_slice()),
            (Detection::Other, &b"EHLO"[..])
        );
    }
}
