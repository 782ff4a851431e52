//! The webhook's HTTPS server: axum routes served by hyper-util over the control plane's TLS
//! acceptor (TLS 1.3, serving certificate resolved per handshake, so a renewed certificate is
//! used by the next connection while the listener and open connections stay up).
//!
//! `POST /inject` takes an AdmissionReview (at most [`MAX_BODY_BYTES`]) and answers within
//! [`REQUEST_TIMEOUT`], or half a second before the API server's own deadline when its
//! `?timeout=` says that comes sooner (the webhook's `timeoutSeconds`), so a slow lookup gives
//! a clear error instead of the API server's generic one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::config::InjectionConfig;
use super::inject::{self, Decision};
use super::metrics::WebhookMetrics;
use super::namespaces::NamespaceLabels;
use super::review::{self, Target};
use crate::net::tls;

/// Largest AdmissionReview accepted (a pod with large annotations is well under 1 MiB; the
/// API server caps objects at 1.5 MiB and the review carries one object on CREATE).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest a request may take, body read included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long headers may take to arrive on an HTTP/1.1 connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a graceful shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Most connections served at once (the API server keeps a few; probes come and go). Beyond
/// this, new connections are closed, so idle connections cannot pile up without bound.
pub const MAX_CONNECTIONS: usize = 1024;
/// HTTP/2 keep-alive pings find dead peers (e.g. an API server that went away).
const H2_KEEPALIVE: Duration = Duration::from_secs(30);
/// ALPN protocols offered: the API server speaks HTTP/2 when offered, HTTP/1.1 otherwise.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The injection service: config, namespace labels and metrics.
pub struct Injector {
    pub config: Arc<InjectionConfig>,
    pub namespaces: Arc<dyn NamespaceLabels>,
    pub metrics: WebhookMetrics,
}

impl Injector {
    /// Answers one AdmissionReview body; `Err` means the body is not one (HTTP 400).
    pub async fn review(&self, body: &[u8]) -> Result<Vec<u8>, review::ReviewError> {
        let request = review::parse(body)?;
        let decision = match request.target {
            Target::Other(what) => {
                tracing::debug!(uid = %request.uid, %what, "not a pod CREATE; admitted unchanged");
                return Ok(review::respond(
                    &request.uid,
                    &Decision::Skip {
                        reason: inject::SkipReason::NotEnabled,
                    },
                ));
            }
            Target::Unreadable(message) => {
                self.metrics.error();
                tracing::info!(uid = %request.uid, %message, "denied an unreadable pod");
                return Ok(review::respond(&request.uid, &Decision::Deny { message }));
            }
            Target::PodCreate { pod, namespace } => {
                match self.namespaces.labels(&namespace).await {
                    Ok(labels) => inject::decide(&pod, &namespace, &labels, &self.config),
                    Err(e) => {
                        // Fail closed with a message the user sees in `kubectl` output.
                        self.metrics.error();
                        tracing::warn!(uid = %request.uid, error = %e, "namespace lookup failed");
                        return Ok(review::respond(
                            &request.uid,
                            &Decision::Deny {
                                message: format!("{e}; retry, or check the control plane"),
                            },
                        ));
                    }
                }
            }
        };
        match &decision {
            Decision::Patch(_) => self.metrics.injected(),
            Decision::Skip { reason } => self.metrics.skipped(*reason),
            Decision::Deny { .. } => self.metrics.denied(),
        }
        tracing::debug!(uid = %request.uid, dry_run = request.dry_run, ?decision, "admission");
        Ok(review::respond(&request.uid, &decision))
    }
}

async fn inject(State(injector): State<Arc<Injector>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = match injector.review(&body).await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            injector.metrics.error();
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    };
    injector
        .metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Kept between our answer and the API server's own deadline (network, its processing).
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// The shortest deadline we work to, whatever the API server asks.
const MIN_DEADLINE: Duration = Duration::from_millis(500);

/// The deadline for one request: `limit`, shortened to end [`DEADLINE_MARGIN`] before the API
/// server gives up when it says when that is (`?timeout=10s`, the webhook's `timeoutSeconds`),
/// so a slow lookup gets our clear answer rather than the API server's generic timeout. An
/// unreadable or absurd value is ignored.
pub fn effective_deadline(query: Option<&str>, limit: Duration) -> Duration {
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|secs| secs.parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= 3600.0)
        .map(Duration::from_secs_f64);
    match asked {
        Some(asked) => limit.min(asked.saturating_sub(DEADLINE_MARGIN).max(MIN_DEADLINE)),
        None => limit,
    }
}

async fn deadline(
    State((metrics, limit)): State<(WebhookMetrics, Duration)>,
    req: Request,
    next: Next,
) -> Response {
    let limit = effective_deadline(req.uri().query(), limit);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics.error();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "palisade sidecar injection timed out\n",
            )
                .into_response()
        }
    }
}

/// The webhook routes: `POST /inject` and `GET /healthz`, answering within
/// [`REQUEST_TIMEOUT`].
pub fn router(injector: Arc<Injector>) -> Router {
    router_with_deadline(injector, REQUEST_TIMEOUT)
}

/// [`router`] with another deadline (tests).
pub fn router_with_deadline(injector: Arc<Injector>, limit: Duration) -> Router {
    let metrics = injector.metrics.clone();
    Router::new()
        .route("/inject", post(inject))
        .with_state(injector)
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state((metrics, limit), deadline))
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (up to a grace period). HTTP/2 and HTTP/1.1 (by ALPN) on one port.
pub fn serve(
    listener: TcpListener,
    tls_config: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), String>> {
    serve_bounded(listener, tls_config, router, shutdown, MAX_CONNECTIONS)
}

/// [`serve`] with another connection limit (tests).
pub fn serve_bounded(
    listener: TcpListener,
    tls_config: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    max_connections: usize,
) -> JoinHandle<Result<(), String>> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(Duration::from_secs(10));
    tokio::spawn(async move {
        let mut incoming = tls::incoming(listener, tls_config);
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                s = incoming.recv() => match s {
                    Some(Ok(stream)) => stream,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "webhook connection failed");
                        continue;
                    }
                    None => break,
                },
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::warn!("webhook: {max_connections} connections open; closing a new one");
                continue;
            };
            let service = TowerToHyperService::new(router.clone());
            let (builder, watcher) = (builder.clone(), graceful.watcher());
            tokio::spawn(async move {
                let _permit = permit;
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "webhook connection ended with an error");
                }
            });
        }
        drop(incoming);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("webhook: connections still open after the grace period");
        }
        Ok(())
    })
}

/// Why the webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] crate::net::BindError),
    #[error("webhook TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Binds `addr` and serves the injection routes with the serving certificate `resolver`
/// hands out per handshake. Returns the bound address and the server task.
pub async fn start(
    addr: SocketAddr,
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    injector: Injector,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<Result<(), String>>), StartError> {
    let (listener, local) = crate::net::bind(addr, "webhook listener").await?;
    // No client certificates: the API server authenticates us, not the other way round.
    let tls_config = tls::server_config(resolver, None, &ALPN)?;
    let task = serve(
        listener,
        Arc::new(tls_config),
        router(Arc::new(injector)),
        shutdown,
    );
    Ok((local, task))
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
