//! `/app-health/<container>/<livez|readyz|startupz>`: the app's own probes, run by the proxy.
//! The injector points the kubelet's HTTP, TCP and gRPC probes at the admin port (they would
//! otherwise meet the inbound capture, and STRICT mTLS) and hands the originals over in
//! `PALISADE_APP_PROBES` (JSON: app-health path -> Kubernetes `Probe`, named ports already
//! resolved). They are parsed once at start and run against 127.0.0.1 from inside the pod, the
//! way the kubelet would run them: HTTP(S) GET succeeds on a status in 200..400 (HTTPS accepts
//! any certificate, as the kubelet does), a TCP probe on a completed connect, a gRPC probe on
//! `grpc.health.v1.Health/Check` answering SERVING.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest `PALISADE_APP_PROBES` accepted.
pub const MAX_PROBES_JSON: usize = 256 * 1024;
/// Most probes accepted (three per container).
pub const MAX_PROBES: usize = 3 * 64;
/// Longest probe timeout honoured.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of an HTTP response read to find its status line.
const MAX_STATUS_LINE: usize = 4096;
/// Longest path or header accepted in a probe.
const MAX_FIELD: usize = 4096;

/// The probe kinds, by the last segment of their path.
pub const KINDS: [&str; 3] = ["livez", "readyz", "startupz"];

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// HTTP GET `path` on `port` with `headers`; `tls` for scheme HTTPS.
    Http {
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        tls: bool,
    },
    /// A TCP connect to `port`.
    Tcp { port: u16 },
    /// A gRPC health check (`grpc.health.v1.Health/Check` of `service`, plaintext HTTP/2 as
    /// the kubelet speaks it): success only on SERVING.
    Grpc { port: u16, service: String },
}

/// One original probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppProbe {
    pub action: Action,
    /// The probe's `timeoutSeconds` (default 1, at most [`MAX_TIMEOUT`]).
    pub timeout: Duration,
}

/// Why `PALISADE_APP_PROBES` is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbesError {
    #[error("PALISADE_APP_PROBES is larger than {MAX_PROBES_JSON} bytes")]
    TooLarge,
    #[error("PALISADE_APP_PROBES holds more than {MAX_PROBES} probes")]
    TooMany,
    #[error("PALISADE_APP_PROBES is not a JSON map of probes: {0}")]
    Json(String),
    #[error("PALISADE_APP_PROBES key {0:?} is not /app-health/<container>/<livez|readyz|startupz>")]
    Key(String),
    #[error("probe {key}: {message}")]
    Probe { key: String, message: String },
}

/// The probes by (container, kind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppProbes {
    probes: HashMap<(String, String), AppProbe>,
}

fn port(p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("port {n} is not 1..65535")),
        IntOrString::String(name) => Err(format!("named port {name:?} was not resolved")),
    }
}

/// Visible ASCII without spaces (a request target).
fn clean_path(path: &str) -> bool {
    path.starts_with('/') && path.len() <= MAX_FIELD && path.bytes().all(|b| b.is_ascii_graphic())
}

fn clean_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.len() + value.len() <= MAX_FIELD
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn convert(probe: &Probe) -> Result<AppProbe, String> {
    let timeout = Duration::from_secs(
        u64::try_from(probe.timeout_seconds.unwrap_or(1))
            .unwrap_or(1)
            .max(1),
    )
    .min(MAX_TIMEOUT);
    let action = if let Some(http) = &probe.http_get {
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let path = if path.is_empty() { "/".into() } else { path };
        if !clean_path(&path) {
            return Err("the HTTP path is not a clean request target".into());
        }
        let mut headers = Vec::new();
        for h in http.http_headers.iter().flatten() {
            if !clean_header(&h.name, &h.value) {
                return Err(format!("header {:?} is not a valid HTTP header", h.name));
            }
            headers.push((h.name.clone(), h.value.clone()));
        }
        let tls = match http.scheme.as_deref() {
            None | Some("HTTP") | Some("http") => false,
            Some("HTTPS") | Some("https") => true,
            Some(other) => return Err(format!("scheme {other:?} is not HTTP or HTTPS")),
        };
        Action::Http {
            port: port(&http.port)?,
            path,
            headers,
            tls,
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        Action::Tcp {
            port: port(&tcp.port)?,
        }
    } else if let Some(grpc) = &probe.grpc {
        Action::Grpc {
            port: u16::try_from(grpc.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {} is not 1..65535", grpc.port))?,
            service: grpc.service.clone().unwrap_or_default(),
        }
    } else {
        return Err("no httpGet, tcpSocket or grpc action".into());
    };
    Ok(AppProbe { action, timeout })
}

impl AppProbes {
    /// Parses `PALISADE_APP_PROBES` (absent or empty: no probes).
    pub fn parse(json: Option<&str>) -> Result<Self, ProbesError> {
        let json = json.map(str::trim).unwrap_or_default();
        if json.is_empty() {
            return Ok(Self::default());
        }
        if json.len() > MAX_PROBES_JSON {
            return Err(ProbesError::TooLarge);
        }
        let raw: HashMap<String, Probe> =
            serde_json::from_str(json).map_err(|e| ProbesError::Json(e.to_string()))?;
        if raw.len() > MAX_PROBES {
            return Err(ProbesError::TooMany);
        }
        let mut probes = HashMap::new();
        for (key, probe) in raw {
            let (container, kind) = key
                .strip_prefix("/app-health/")
                .and_then(|rest| rest.split_once('/'))
                .filter(|(c, k)| !c.is_empty() && !c.contains('/') && KINDS.contains(k))
                .ok_or_else(|| ProbesError::Key(key.chars().take(256).collect()))?;
            let app = convert(&probe).map_err(|message| ProbesError::Probe {
                key: key.clone(),
                message,
            })?;
            probes.insert((container.to_string(), kind.to_string()), app);
        }
        Ok(Self { probes })
    }

    /// The probe of `container` for `kind`.
    pub fn get(&self, container: &str, kind: &str) -> Option<&AppProbe> {
        self.probes.get(&(container.to_string(), kind.to_string()))
    }

    /// How many probes there are.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    /// No probes.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }
}

/// The outcome of running a probe: `Ok` with a short note, or why it failed.
pub type Outcome = Result<String, String>;

/// Runs `probe` against 127.0.0.1 within its timeout.
pub async fn run(probe: &AppProbe) -> Outcome {
    match tokio::time::timeout(probe.timeout, run_action(&probe.action)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {}s", probe.timeout.as_secs())),
    }
}

async fn run_action(action: &Action) -> Outcome {
    let local = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match action {
        Action::Tcp { port } => TcpStream::connect(local(*port))
            .await
            .map(|_| "connected".to_string())
            .map_err(|e| format!("connect: {e}")),
        Action::Grpc { port, service } => grpc_check(*port, service).await,
        Action::Http {
            port,
            path,
            headers,
            tls,
        } => {
            let tcp = TcpStream::connect(local(*port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let host = format!("127.0.0.1:{port}");
            let request = http_request(&host, path, headers);
            let status = if *tls {
                let connector = tokio_rustls::TlsConnector::from(Arc::new(any_certificate()?));
                let name = ServerName::from(std::net::IpAddr::from(Ipv4Addr::LOCALHOST));
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                exchange(stream, &request).await?
            } else {
                exchange(tcp, &request).await?
            };
            if (200..400).contains(&status) {
                Ok(format!("HTTP {status}"))
            } else {
                Err(format!("HTTP {status}"))
            }
        }
    }
}

/// The probe's request, as the kubelet sends it (its `Host` header unless the probe sets one).
fn http_request(host: &str, path: &str, headers: &[(String, String)]) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
    {
        request.push_str("User-Agent: kube-probe/palisade\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    request
}

/// Sends `request` and reads the status code from the first line of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<u16, String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return status_code(&buf[..end]).ok_or_else(|| "not an HTTP response".to_string());
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err("not an HTTP response".into());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `HTTP/1.x NNN ...` -> NNN.
fn status_code(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

/// TLS for HTTPS probes: like the kubelet, any server certificate is accepted (the probe checks
/// liveness, not identity); the handshake signature is still checked.
fn any_certificate() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(super::originate::SkipVerify(provider)))
            .with_no_client_auth(),
    )
}

/// `grpc.health.v1.Health/Check` against 127.0.0.1:`port` (the caller bounds the time).
async fn grpc_check(port: u16, service: &str) -> Outcome {
    use crate::xds::proto::grpc_health_v1::health_check_response::ServingStatus;
    use crate::xds::proto::grpc_health_v1::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| format!("endpoint: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {}", crate::error_chain(&e)))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| format!("gRPC {:?}: {}", status.code(), status.message()))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok("SERVING".into()),
        other => Err(other.as_str_name().to_string()),
    }
}

#[cfg(test)]
#[path = "app_health_tests.rs"]
mod tests;
