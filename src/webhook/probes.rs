//! Probe rewriting: the kubelet's HTTP, TCP and gRPC probes would hit the app's port, which the
//! proxy captures (and, under STRICT mTLS, refuses in plaintext). So they are pointed at the
//! proxy's admin port, `/app-health/<container>/<kind>`, and the originals (with named ports
//! resolved to numbers, which the proxy cannot look up) are handed to the proxy, which runs
//! them from inside the pod. Exec probes run in the container and need no change.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::init::ADMIN_PORT;

/// Which probe of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    /// All kinds, in the order the patch lists them.
    pub const ALL: [ProbeKind; 3] = [Self::Liveness, Self::Readiness, Self::Startup];

    /// The last segment of the app-health path.
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::Liveness => "livez",
            Self::Readiness => "readyz",
            Self::Startup => "startupz",
        }
    }

    /// The container field (JSON name) holding this probe.
    pub fn field(self) -> &'static str {
        match self {
            Self::Liveness => "livenessProbe",
            Self::Readiness => "readinessProbe",
            Self::Startup => "startupProbe",
        }
    }

    fn get(self, c: &Container) -> Option<&Probe> {
        match self {
            Self::Liveness => c.liveness_probe.as_ref(),
            Self::Readiness => c.readiness_probe.as_ref(),
            Self::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// The proxy path that runs the original probe.
pub fn app_health_path(container: &str, kind: ProbeKind) -> String {
    format!("/app-health/{container}/{}", kind.endpoint())
}

/// One probe to replace in the pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewrite {
    pub container_index: usize,
    pub kind: ProbeKind,
    /// What the kubelet will call instead.
    pub probe: Probe,
}

/// Every rewrite, and the originals keyed by app-health path (what the proxy receives).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrites {
    pub rewrites: Vec<Rewrite>,
    pub originals: BTreeMap<String, Probe>,
}

/// A probe that names a port the container does not declare: the kubelet could never run it
/// either, so it is better refused now with a clear message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} of container {container:?} uses port {port:?}, which the container does not declare"
)]
pub struct ProbeError {
    pub container: String,
    pub kind: &'static str,
    pub port: String,
}

fn resolve_port(
    c: &Container,
    port: &IntOrString,
    kind: ProbeKind,
) -> Result<IntOrString, ProbeError> {
    match port {
        IntOrString::Int(_) => Ok(port.clone()),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| IntOrString::Int(p.container_port))
            .ok_or_else(|| ProbeError {
                container: c.name.clone(),
                kind: kind.field(),
                port: name.clone(),
            }),
    }
}

/// The part of a probe the proxy needs to run it (action and timeout); timing and thresholds
/// stay with the kubelet.
fn original_for_proxy(c: &Container, probe: &Probe, kind: ProbeKind) -> Result<Probe, ProbeError> {
    let mut action = Probe {
        timeout_seconds: probe.timeout_seconds,
        ..Probe::default()
    };
    if let Some(http) = &probe.http_get {
        let mut http = http.clone();
        http.port = resolve_port(c, &http.port, kind)?;
        action.http_get = Some(http);
    } else if let Some(tcp) = &probe.tcp_socket {
        let mut tcp = tcp.clone();
        tcp.port = resolve_port(c, &tcp.port, kind)?;
        action.tcp_socket = Some(tcp);
    } else if let Some(grpc) = &probe.grpc {
        action.grpc = Some(grpc.clone());
    }
    Ok(action)
}

/// Plans the rewrites for the app containers (exec probes and absent probes are left alone).
pub fn plan(containers: &[Container]) -> Result<Rewrites, ProbeError> {
    let mut out = Rewrites::default();
    for (index, c) in containers.iter().enumerate() {
        for kind in ProbeKind::ALL {
            let Some(probe) = kind.get(c) else { continue };
            if probe.http_get.is_none() && probe.tcp_socket.is_none() && probe.grpc.is_none() {
                continue;
            }
            let path = app_health_path(&c.name, kind);
            out.originals
                .insert(path.clone(), original_for_proxy(c, probe, kind)?);
            out.rewrites.push(Rewrite {
                container_index: index,
                kind,
                probe: Probe {
                    http_get: Some(HTTPGetAction {
                        path: Some(path),
                        port: IntOrString::Int(i32::from(ADMIN_PORT)),
                        scheme: Some("HTTP".into()),
                        ..HTTPGetAction::default()
                    }),
                    exec: None,
                    grpc: None,
                    tcp_socket: None,
                    ..probe.clone()
                },
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, GRPCAction, TCPSocketAction};

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        }
    }

    #[test]
    fn http_tcp_grpc_rewritten_exec_kept() {
        let mut web = container("web");
        web.liveness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(7),
            timeout_seconds: Some(2),
            ..Probe::default()
        });
        web.readiness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(8080),
                host: None,
            }),
            ..Probe::default()
        });
        web.startup_probe = Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Probe::default()
        });
        let mut api = container("api");
        api.liveness_probe = Some(Probe {
            grpc: Some(GRPCAction {
                port: 9000,
                service: None,
            }),
            ..Probe::default()
        });
        let plan = plan(&[web, api]).unwrap();
        let kinds: Vec<(usize, ProbeKind)> = plan
            .rewrites
            .iter()
            .map(|r| (r.container_index, r.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (0, ProbeKind::Liveness),
                (0, ProbeKind::Readiness),
                (1, ProbeKind::Liveness)
            ]
        );
        let live = &plan.rewrites[0].probe;
        assert_eq!(live.period_seconds, Some(7));
        let http = live.http_get.as_ref().unwrap();
        assert_eq!(http.path.as_deref(), Some("/app-health/web/livez"));
        assert_eq!(http.port, IntOrString::Int(15020));
        // The named port reaches the proxy as a number.
        let original = &plan.originals["/app-health/web/livez"];
        assert_eq!(
            original.http_get.as_ref().unwrap().port,
            IntOrString::Int(8080)
        );
        assert_eq!(original.timeout_seconds, Some(2));
        assert_eq!(original.period_seconds, None);
        assert!(plan.originals.contains_key("/app-health/api/livez"));
        assert!(!plan.originals.contains_key("/app-health/web/startupz"));
    }

    #[test]
    fn undeclared_named_port_is_an_error() {
        let mut web = container("web");
        web.readiness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("metrics".into()),
                host: None,
            }),
            ..Probe::default()
        });
        let e = plan(&[web]).unwrap_err();
        assert_eq!(e.port, "metrics");
        assert!(e.to_string().contains("readinessProbe"), "{e}");
    }
}
