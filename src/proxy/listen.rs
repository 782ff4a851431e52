//! The accept loop both data-path listeners share: accept until shutdown, one task per
//! connection, then wait for the open connections to end (the caller bounds that wait with the
//! drain timeout).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::context::Context;
use super::metrics::Direction;

/// Why a connection was refused or failed: the metric reason and the detail for the log
/// (never sent to the peer).
pub struct Refusal(pub &'static str, pub String);

/// A data-path listener: [`accept_until_shutdown`] with `handle` per connection, each counted
/// open while it lasts; a refusal is counted by reason and logged (rate-limited per
/// direction), and so is a connection shed at the cap.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    ctx: Context,
    shutdown: watch::Receiver<bool>,
    direction: Direction,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(Context, TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Refusal>> + Send + 'static,
{
    let name = direction.as_str();
    let log = move |ctx: &Context| match direction {
        Direction::Inbound => ctx.inbound_log.clone(),
        Direction::Outbound => ctx.outbound_log.clone(),
    };
    let shed_ctx = ctx.clone();
    let shed_log = log(&ctx);
    let shed = move |peer: SocketAddr| {
        shed_ctx.metrics.failure(direction, "overloaded");
        if let Some(suppressed) = shed_log.allow() {
            tracing::warn!(direction = name, %peer, max = shed_ctx.max_connections, suppressed, "connection limit reached; closing new connections");
        }
    };
    let max = ctx.max_connections;
    let handle = std::sync::Arc::new(handle);
    accept_until_shutdown(listener, shutdown, name, max, shed, move |stream, peer| {
        let (ctx, handle) = (ctx.clone(), handle.clone());
        async move {
            let _open = ctx.metrics.opened(direction);
            if let Err(Refusal(reason, detail)) = handle(ctx.clone(), stream, peer).await {
                ctx.metrics.failure(direction, reason);
                if let Some(suppressed) = log(&ctx).allow() {
                    tracing::warn!(direction = name, %peer, reason, %detail, suppressed, "connection refused");
                }
            }
        }
    })
    .await
}

/// Runs `handle` for each accepted connection until `shutdown` is true (or its sender is
/// gone), then waits for every connection task to end. With `max` connections open, a new one
/// is closed as soon as it is accepted (before any read) and `shed` is told: a flood of
/// clients that send one byte and stall costs a bounded amount of memory.
pub async fn accept_until_shutdown<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    name: &'static str,
    max: usize,
    shed: impl Fn(SocketAddr),
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        // Reap finished connections so the set holds only open ones (and `len` counts them).
        while connections.try_join_next().is_some() {}
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() >= max => {
                    drop(stream);
                    shed(peer);
                }
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(handle(stream, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(
        listener = name,
        open = connections.len(),
        "stopped accepting; draining"
    );
    while connections.join_next().await.is_some() {}
    Ok(())
}
