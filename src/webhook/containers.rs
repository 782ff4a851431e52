//! The injected containers and volumes (architecture.md names them; users script against
//! these names, so they are constants).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{InjectionConfig, Resources};
use crate::init::{ADMIN_PORT, PROXY_GID, PROXY_UID};

/// The init container that installs the iptables rules.
pub const INIT_CONTAINER: &str = "palisade-init";
/// The proxy, a native sidecar (an init container with `restartPolicy: Always`).
pub const PROXY_CONTAINER: &str = "palisade-proxy";
/// Projected service-account token for the CA.
pub const TOKEN_VOLUME: &str = "palisade-token";
/// Where the token volume is mounted; the token file is `palisade-token` in it.
pub const TOKEN_DIR: &str = "/var/run/secrets/palisade/tokens";
/// File name of the token inside [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "palisade-token";
/// Audience the CA accepts.
pub const TOKEN_AUDIENCE: &str = "palisade-ca";
/// Token lifetime requested from the kubelet (it rotates the file at 80%).
pub const TOKEN_SECONDS: i64 = 43200;
/// The trust bundle ConfigMap (and the volume holding it).
pub const ROOT_CERT_CONFIGMAP: &str = "palisade-ca-root-cert";
/// Where the trust bundle is mounted (`root-cert.pem` in it).
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/palisade/root-cert";
/// A small in-memory scratch volume: the proxy's root filesystem is read-only.
pub const RUN_VOLUME: &str = "palisade-run";
/// Where [`RUN_VOLUME`] is mounted.
pub const RUN_DIR: &str = "/var/run/palisade";
/// Env var carrying the original app probes (JSON, keyed by app-health path).
pub const APP_PROBES_ENV: &str = "PALISADE_APP_PROBES";

/// Names of the volumes [`volumes`] returns, in order.
pub const VOLUMES: [&str; 3] = [TOKEN_VOLUME, ROOT_CERT_CONFIGMAP, RUN_VOLUME];

fn resources(r: &Resources) -> ResourceRequirements {
    let q = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    ResourceRequirements {
        requests: q(&r.requests),
        limits: q(&r.limits),
        ..ResourceRequirements::default()
    }
}

fn capabilities(add: &[&str]) -> Capabilities {
    Capabilities {
        add: (!add.is_empty()).then(|| add.iter().map(|c| c.to_string()).collect()),
        drop: Some(vec!["ALL".into()]),
    }
}

/// `palisade init` with this pod's arguments. iptables needs root in the pod's user namespace
/// and NET_ADMIN + NET_RAW; nothing else is granted, and it cannot escalate.
pub fn init_container(config: &InjectionConfig, args: Vec<String>) -> Container {
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(args),
        resources: Some(resources(&config.init_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(capabilities(&["NET_ADMIN", "NET_RAW"])),
            privileged: Some(false),
            // iptables takes its lock file under /run, so the root filesystem stays writable
            // (as in Istio's istio-init); the container exits before the app starts.
            read_only_root_filesystem: Some(false),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

/// The proxy as a native sidecar: it starts before the app containers (the startup probe gates
/// them) and does not keep Jobs from completing. `app_probes` is the JSON of the original
/// probes, if any were rewritten.
pub fn proxy_container(config: &InjectionConfig, app_probes: Option<String>) -> Container {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        value_env("PALISADE_CA_ADDRESS", &config.ca_address),
        value_env("PALISADE_TRUST_DOMAIN", &config.trust_domain),
    ];
    if let Some(probes) = app_probes {
        env.push(value_env(APP_PROBES_ENV, &probes));
    }
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(vec!["proxy".into()]),
        restart_policy: Some("Always".into()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("palisade-admin".into()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Startup: checked every second for up to ten minutes, so apps start as soon as the
        // proxy has its certificate; readiness then follows it.
        startup_probe: Some(admin_probe("/healthz", 1, 600)),
        readiness_probe: Some(admin_probe("/healthz", 5, 3)),
        resources: Some(resources(&config.proxy_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(capabilities(&[])),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_group: Some(i64::from(PROXY_GID)),
            run_as_non_root: Some(true),
            run_as_user: Some(i64::from(PROXY_UID)),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount(TOKEN_VOLUME, TOKEN_DIR, true),
            mount(ROOT_CERT_CONFIGMAP, ROOT_CERT_DIR, true),
            mount(RUN_VOLUME, RUN_DIR, false),
        ]),
        ..Container::default()
    }
}

/// The volumes the proxy mounts.
pub fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: TOKEN_FILE.into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                default_mode: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: ROOT_CERT_CONFIGMAP.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ROOT_CERT_CONFIGMAP.into(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("16Mi".into())),
            }),
            ..Volume::default()
        },
    ]
}
