//! The accept loop both data-path listeners share: accept until shutdown, one task per
//! connection, then wait for the open connections to end (the caller bounds that wait with the
//! drain timeout).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

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
