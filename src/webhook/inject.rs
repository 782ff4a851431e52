//! The mutation as a pure function: a Pod, its namespace's labels and the injection config in,
//! a [`Decision`] out. Everything the webhook does to a pod is decided here.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use serde_json::Value;

use super::config::InjectionConfig;
use super::containers::{self, INIT_CONTAINER, PROXY_CONTAINER, VOLUMES};
use super::probes;
use super::traffic::Traffic;

/// Pod label that opts a pod in (`"true"`) or out (`"false"`), winning over the namespace.
pub const POD_INJECT_LABEL: &str = "sidecar.palisade.dev/inject";
/// Namespace label that enables injection for its pods (value `enabled`).
pub const NAMESPACE_INJECT_LABEL: &str = "palisade.dev/inject";
/// Annotation recording what was injected (its presence means "already injected").
pub const STATUS_ANNOTATION: &str = "sidecar.palisade.dev/status";
/// Label telling peers the pod speaks Palisade mTLS.
pub const TLS_MODE_LABEL: &str = "security.palisade.dev/tlsMode";
/// Value of [`TLS_MODE_LABEL`].
pub const TLS_MODE_PALISADE: &str = "palisade";

/// Why a pod was left as it is. The set is closed so it can label a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `hostNetwork: true`: iptables would capture the node's traffic.
    HostNetwork,
    /// The pod label says `"false"`.
    OptedOut,
    /// Neither the pod nor its namespace asks for injection.
    NotEnabled,
    /// The status annotation is present (reinvocation, or a pod created from an injected one).
    AlreadyInjected,
    /// The control plane's own pods are never injected.
    ControlPlaneNamespace,
}

impl SkipReason {
    /// A stable snake_case name (metrics, logs, the AdmissionResponse warning).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostNetwork => "host_network",
            Self::OptedOut => "opted_out",
            Self::NotEnabled => "not_enabled",
            Self::AlreadyInjected => "already_injected",
            Self::ControlPlaneNamespace => "control_plane_namespace",
        }
    }
}

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Inject: these RFC 6902 operations, applied to the pod as the API server sent it.
    Patch(Vec<PatchOperation>),
    /// Admit unchanged.
    Skip { reason: SkipReason },
    /// Refuse the pod; the message tells the user what to fix.
    Deny { message: String },
}

/// The `sidecar.palisade.dev/status` annotation: what was injected, so a later reader (or the
/// webhook on reinvocation) can tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    pub image: String,
    pub init_containers: Vec<String>,
    pub volumes: Vec<String>,
    pub rewritten_probes: Vec<String>,
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("internal error serializing the patch: {e}"))
}

/// Adds `key: value` to a string map of the metadata, creating the map when absent (adding
/// `/metadata/annotations/<key>` fails on a pod without annotations).
fn add_to_map(
    ops: &mut Vec<PatchOperation>,
    map: &str,
    existing: Option<&BTreeMap<String, String>>,
    key: &str,
    value: &str,
) {
    match existing {
        Some(_) => ops.push(add(&["metadata", map, key], Value::String(value.into()))),
        None => ops.push(add(&["metadata", map], serde_json::json!({ key: value }))),
    }
}

/// Whether the pod is to be injected, or why not.
fn wanted(
    pod: &Pod,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectionConfig,
) -> Result<(), SkipReason> {
    if namespace == config.control_plane_namespace {
        return Err(SkipReason::ControlPlaneNamespace);
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STATUS_ANNOTATION))
    {
        return Err(SkipReason::AlreadyInjected);
    }
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return Err(SkipReason::HostNetwork);
    }
    let pod_label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_INJECT_LABEL))
        .map(String::as_str);
    match pod_label {
        Some("false") => Err(SkipReason::OptedOut),
        Some("true") => Ok(()),
        _ if namespace_labels
            .get(NAMESPACE_INJECT_LABEL)
            .map(String::as_str)
            == Some("enabled") =>
        {
            Ok(())
        }
        _ => Err(SkipReason::NotEnabled),
    }
}

/// Decides what to do with `pod` (created in `namespace`, whose labels are `namespace_labels`).
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectionConfig,
) -> Decision {
    if let Err(reason) = wanted(pod, namespace, namespace_labels, config) {
        return Decision::Skip { reason };
    }
    match build_patch(pod, config) {
        Ok(ops) => Decision::Patch(ops),
        Err(message) => Decision::Deny { message },
    }
}

fn build_patch(pod: &Pod, config: &InjectionConfig) -> Result<Vec<PatchOperation>, String> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| "the pod has no spec".to_string())?;
    let traffic =
        Traffic::from_annotations(pod.metadata.annotations.as_ref()).map_err(|e| e.to_string())?;

    // Names we add must be free, or the API server would reject the pod with a less helpful
    // message (or, for volumes, the proxy would mount the user's volume).
    let taken = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str());
    for name in taken {
        if name == INIT_CONTAINER || name == PROXY_CONTAINER {
            return Err(format!(
                "the pod already has a container named {name:?}, which Palisade injects; \
                 rename it or label the pod {POD_INJECT_LABEL}=false"
            ));
        }
    }
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| VOLUMES.contains(&v.name.as_str()))
    {
        return Err(format!(
            "the pod already has a volume named {:?}, which Palisade injects; rename it or \
             label the pod {POD_INJECT_LABEL}=false",
            volume.name
        ));
    }

    let probes = probes::plan(&spec.containers).map_err(|e| e.to_string())?;
    let app_probes = if probes.originals.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string(&probes.originals)
                .map_err(|e| format!("internal error serializing probes: {e}"))?,
        )
    };
    let init = to_value(&containers::init_container(config, traffic.init_args()))?;
    let proxy = to_value(&containers::proxy_container(config, app_probes))?;

    let mut ops = Vec::new();
    // palisade-init first (the rules exist before anything else runs), then the proxy, so
    // the pod's own init containers already have it.
    match spec.init_containers.as_deref() {
        None | Some([]) => ops.push(add(
            &["spec", "initContainers"],
            Value::Array(vec![init, proxy]),
        )),
        Some(_) => {
            ops.push(add(&["spec", "initContainers", "0"], init));
            ops.push(add(&["spec", "initContainers", "1"], proxy));
        }
    }
    let volumes = containers::volumes();
    match spec.volumes.as_deref() {
        None | Some([]) => ops.push(add(&["spec", "volumes"], to_value(&volumes)?)),
        Some(_) => {
            for v in &volumes {
                ops.push(add(&["spec", "volumes", "-"], to_value(v)?));
            }
        }
    }
    for r in &probes.rewrites {
        let index = r.container_index.to_string();
        ops.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer(&["spec", "containers", &index, r.kind.field()]),
            value: to_value(&r.probe)?,
        }));
    }
    add_to_map(
        &mut ops,
        "labels",
        pod.metadata.labels.as_ref(),
        TLS_MODE_LABEL,
        TLS_MODE_PALISADE,
    );
    let status = InjectionStatus {
        image: config.image.clone(),
        init_containers: vec![INIT_CONTAINER.into(), PROXY_CONTAINER.into()],
        volumes: VOLUMES.iter().map(|v| v.to_string()).collect(),
        rewritten_probes: probes
            .rewrites
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    spec.containers[r.container_index].name,
                    r.kind.endpoint()
                )
            })
            .collect(),
    };
    let status = serde_json::to_string(&status)
        .map_err(|e| format!("internal error serializing the status: {e}"))?;
    add_to_map(
        &mut ops,
        "annotations",
        pod.metadata.annotations.as_ref(),
        STATUS_ANNOTATION,
        &status,
    );
    Ok(ops)
}
