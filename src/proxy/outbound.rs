//! The outbound listener (:15001): connections the pod's apps make, redirected here. Per
//! connection: original destination -> [`route`] over the policy -> an endpoint (power of two
//! choices) -> plaintext, mesh mTLS (secure naming) or TLS origination -> forward.
//!
//! Before the first policy, connections are refused, not passed through. Passing through
//! would send in plaintext what the control plane may be about to require mTLS for (a
//! silent downgrade), and every destination would look "unknown". The window is short and
//! normally empty: the injected proxy is a native sidecar whose startup probe (/healthz)
//! succeeds only once it holds a certificate and its first policy, so apps start after it;
//! an app that connects earlier sees a refused connection and retries.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use super::MESH_ALPN;
use super::balance::LoadGuard;
use super::context::Context;
use super::forward::forward;
use super::listen::Refusal;
use super::metrics::{Direction, TlsMode};
use super::route::{Route, Security, route};

const DIRECTION: Direction = Direction::Outbound;

/// Accepts redirected outbound connections until `shutdown` is true, then waits for the open
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

async fn handle(ctx: &Context, client: TcpStream, peer: SocketAddr) -> Result<(), Refusal> {
    let dst = ctx
        .orig_dst
        .resolve(&client, peer, &ctx.ports.all())
        .map_err(|e| Refusal(e.reason(), e.to_string()))?;
    let policy = ctx.shared.policy.borrow().clone();
    let (addr, security, unknown, _guard): (SocketAddr, Security, bool, Option<LoadGuard>) =
        match route(policy.as_deref(), dst) {
            Route::Refuse(reason) => return Err(Refusal(reason, format!("to {dst}"))),
            Route::Direct {
                addr,
                security,
                unknown,
            } => (addr, security, unknown, None),
            Route::Service { fqdn, endpoints } => {
                let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.0).collect();
                let (i, guard) = ctx
                    .load
                    .pick(&addrs)
                    .ok_or_else(|| Refusal("no_endpoints", fqdn.clone()))?;
                let (addr, security) = endpoints
                    .into_iter()
                    .nth(i)
                    .ok_or(Refusal("no_endpoints", fqdn))?;
                (addr, security, false, Some(guard))
            }
        };
    drop(policy);
    if matches!(security, Security::Mesh { .. }) && ctx.shared.identity.borrow().is_none() {
        return Err(Refusal("no_identity", "no workload certificate yet".into()));
    }
    let upstream = connect(ctx, addr).await?;
    match security {
        Security::Plaintext => {
            // Unknown destinations and plaintext endpoints both travel as they are.
            let _ = unknown;
            let mode = TlsMode::Passthrough;
            ctx.metrics.connection(DIRECTION, mode);
            finish(ctx, client, upstream, dst).await;
        }
        Security::Mesh { expected } => {
            let config = ctx
                .mesh
                .client_config(&expected)
                .map_err(|e| Refusal("handshake_failed", e.to_string()))?;
            let name = ServerName::IpAddress(addr.ip().into());
            let tls = handshake(ctx, config, name, upstream).await?;
            if tls.get_ref().1.alpn_protocol() != Some(MESH_ALPN) {
                return Err(Refusal(
                    "not_a_mesh_server",
                    format!("{addr} did not select the mesh ALPN"),
                ));
            }
            let peer_id = super::tls::handshake_peer_id(tls.get_ref().1, ctx.mesh.trust_domain());
            tracing::debug!(%dst, %addr, ?peer_id, "outbound mesh connection");
            ctx.metrics.connection(DIRECTION, TlsMode::Mesh);
            finish(ctx, client, tls, dst).await;
        }
        Security::Originate(rule) => {
            let originated = ctx.originate.get(&rule, addr.ip()).map_err(|e| {
                Refusal(
                    "tls_origination_config",
                    format!("{} ({})", e, rule.decided_by),
                )
            })?;
            let tls = handshake(ctx, originated.config, originated.server_name, upstream).await?;
            ctx.metrics.connection(DIRECTION, TlsMode::Originated);
            finish(ctx, client, tls, dst).await;
        }
    }
    Ok(())
}

async fn handshake(
    ctx: &Context,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    upstream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Refusal> {
    let connector = TlsConnector::from(config);
    let addr = upstream.peer_addr().ok();
    tokio::time::timeout(ctx.timeouts.handshake, connector.connect(name, upstream))
        .await
        .map_err(|_| Refusal("handshake_timeout", format!("{addr:?}")))?
        .map_err(|e| Refusal(super::tls::failure_reason(&e), format!("{addr:?}: {e}")))
}

async fn connect(ctx: &Context, addr: SocketAddr) -> Result<TcpStream, Refusal> {
    let stream = tokio::time::timeout(ctx.timeouts.connect, TcpStream::connect(addr))
        .await
        .map_err(|_| Refusal("connect_failed", format!("{addr}: timed out")))?
        .map_err(|e| Refusal("connect_failed", format!("{addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn finish<S>(ctx: &Context, client: TcpStream, upstream: S, dst: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = forward(client, upstream, &ctx.metrics, DIRECTION).await {
        tracing::debug!(%dst, error = %e, "outbound connection ended with an error");
    }
}
