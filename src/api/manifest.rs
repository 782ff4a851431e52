//! Reading policy objects (and the workloads and services they apply to) from YAML manifests:
//! the same files a user would `kubectl apply`.
//!
//! Used by `palisade policy explain` and by the standalone control plane's config directory.
//! Istio `apiVersion`s (`security.istio.io/*`, `networking.istio.io/*`) are accepted as the same
//! kinds. Objects of other kinds are skipped and listed, so the caller can say so. Objects
//! without `metadata.creationTimestamp` count as created in input order (earlier = older).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PodSpec, Service};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::objects::{cluster_ips, parse_ip, pod_active, service_info, workload};
use super::{AuthorizationPolicySpec, DestinationRuleSpec, PeerAuthenticationSpec};
use crate::policy::{NamespaceInfo, Policy, PolicyMeta, ServiceInfo, Workload};

/// Largest manifest file read (bytes).
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Most files read from the given paths (directories are walked recursively).
pub const MAX_FILES: usize = 10_000;
/// Most objects read in total.
pub const MAX_OBJECTS: usize = 100_000;

/// Everything read from a set of manifests.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// PeerAuthentication objects, in input order.
    pub peer_authentications: Vec<Policy<PeerAuthenticationSpec>>,
    /// DestinationRule objects, in input order.
    pub destination_rules: Vec<Policy<DestinationRuleSpec>>,
    /// AuthorizationPolicy objects, in input order.
    pub authorization_policies: Vec<Policy<AuthorizationPolicySpec>>,
    /// Workloads found in Pods and pod templates (Deployment, StatefulSet, ...).
    pub workloads: Vec<Workload>,
    /// Services.
    pub services: Vec<ServiceInfo>,
    /// Pod documents (not pod templates) with their addresses and lifecycle, in input order:
    /// the standalone control plane's workloads. Each is also in `workloads`.
    pub pods: Vec<PodObject>,
    /// The cluster IPs of each Service, in the order of `services`.
    pub service_ips: Vec<Vec<IpAddr>>,
    /// Namespace documents and their labels.
    pub namespaces: Vec<NamespaceInfo>,
    /// Objects of kinds that carry no policy, skipped.
    pub skipped: Vec<Skipped>,
    next_seq: u64,
}

/// A Pod document as the standalone control plane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObject {
    /// The workload (as in [`Manifests::workloads`]).
    pub workload: Workload,
    /// `status.podIPs` (or `status.podIP`); empty when the document gives none.
    pub ips: Vec<IpAddr>,
    /// False when `metadata.deletionTimestamp` is set or `status.phase` is `Succeeded` or
    /// `Failed`.
    pub active: bool,
}

/// An object that was skipped because its kind carries no policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Where it was.
    pub location: Location,
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its `kind`.
    pub kind: String,
    /// Its `metadata.name`, if any.
    pub name: String,
}

/// A document in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, document {}", self.file.display(), self.document)
    }
}

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A path could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_FILE_BYTES`].
    #[error("{path}: file is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// More files or objects than the limits allow.
    #[error("too many {what} (limit {limit})")]
    TooMany {
        /// Files or objects.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The file is not valid YAML.
    #[error("{path}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A document is YAML but not a valid object of its kind.
    #[error("{0}")]
    Invalid(Box<InvalidObject>),
}

/// Where and why one object is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {kind} `{name}`: field `{field}`: {message}")]
pub struct InvalidObject {
    /// Where.
    pub location: Location,
    /// The object's kind.
    pub kind: String,
    /// The object's name (may be empty).
    pub name: String,
    /// JSON path of the offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Which policy kind a document is, judged by `apiVersion` group and `kind`.
enum DocKind {
    PeerAuthentication,
    DestinationRule,
    AuthorizationPolicy,
    Service,
    Pod,
    Namespace,
    PodTemplate,
    List,
    Other,
}

fn classify(api_version: &str, kind: &str) -> DocKind {
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    match (group, kind) {
        (super::SECURITY_GROUP | super::ISTIO_SECURITY_GROUP, "PeerAuthentication") => {
            DocKind::PeerAuthentication
        }
        (super::SECURITY_GROUP | super::ISTIO_SECURITY_GROUP, "AuthorizationPolicy") => {
            DocKind::AuthorizationPolicy
        }
        (super::NETWORKING_GROUP | super::ISTIO_NETWORKING_GROUP, "DestinationRule") => {
            DocKind::DestinationRule
        }
        ("", "Service") => DocKind::Service,
        ("", "Pod") => DocKind::Pod,
        ("", "Namespace") => DocKind::Namespace,
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job") => {
            DocKind::PodTemplate
        }
        ("", "List") => DocKind::List,
        _ => DocKind::Other,
    }
}

impl Manifests {
    /// Reads every `.yaml`/`.yml`/`.json` file under `paths` (files, or directories walked
    /// recursively in name order).
    pub fn load(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
        let mut files = Vec::new();
        for path in paths {
            collect_files(path, &mut files)?;
        }
        let mut manifests = Manifests::default();
        for file in files {
            let text = read_bounded(&file)?;
            manifests.add_str(&text, &file)?;
        }
        Ok(manifests)
    }

    /// Adds the objects of one multi-document YAML text; `origin` names it in errors.
    pub fn add_str(&mut self, text: &str, origin: &Path) -> Result<(), ManifestError> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml {
                path: origin.to_path_buf(),
                message: e.to_string(),
            })?;
        for (index, doc) in docs.into_iter().enumerate() {
            let location = Location {
                file: origin.to_path_buf(),
                document: index + 1,
            };
            self.add_value(doc, &location)?;
        }
        Ok(())
    }

    fn add_value(&mut self, doc: Value, location: &Location) -> Result<(), ManifestError> {
        if doc.is_null() {
            return Ok(()); // an empty document, e.g. after a trailing `---`
        }
        if self.object_count() >= MAX_OBJECTS {
            return Err(ManifestError::TooMany {
                what: "objects",
                limit: MAX_OBJECTS,
            });
        }
        let api_version = string_at(&doc, "apiVersion");
        let kind = string_at(&doc, "kind");
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let invalid = |field: &str, message: String| {
            ManifestError::Invalid(Box::new(InvalidObject {
                location: location.clone(),
                kind: kind.clone(),
                name: name.clone(),
                field: field.to_string(),
                message,
            }))
        };
        if !doc.is_object() {
            return Err(invalid(
                "",
                "a document must be a mapping (an object)".into(),
            ));
        }
        if api_version.is_empty() {
            return Err(invalid("apiVersion", "missing".into()));
        }
        if kind.is_empty() {
            return Err(invalid("kind", "missing".into()));
        }
        match classify(&api_version, &kind) {
            DocKind::PeerAuthentication => {
                let policy = self.policy_from(&doc, &invalid)?;
                self.peer_authentications.push(policy);
            }
            DocKind::DestinationRule => {
                let policy: Policy<DestinationRuleSpec> = self.policy_from(&doc, &invalid)?;
                if policy.spec.host.is_empty() {
                    return Err(invalid(
                        "spec.host",
                        "required and must not be empty".into(),
                    ));
                }
                self.destination_rules.push(policy);
            }
            DocKind::AuthorizationPolicy => {
                let policy = self.policy_from(&doc, &invalid)?;
                self.authorization_policies.push(policy);
            }
            DocKind::Service => {
                require_name(&name, &invalid)?;
                let service: Service = typed(&doc, "", false).map_err(|(f, m)| invalid(&f, m))?;
                let spec = service.spec.as_ref();
                let ips = cluster_ips(
                    spec.and_then(|s| s.cluster_ips.as_deref()),
                    spec.and_then(|s| s.cluster_ip.as_deref()),
                )
                .map_err(|(f, m)| invalid(&f, m))?;
                self.services
                    .push(service_info(&service, &namespace_of(&doc)));
                self.service_ips.push(ips);
            }
            DocKind::Pod => {
                require_name(&name, &invalid)?;
                let spec: PodSpec = typed(doc.get("spec").unwrap_or(&Value::Null), "spec", false)
                    .map_err(|(f, m)| invalid(&f, m))?;
                let labels = labels_at(&doc, "/metadata/labels");
                let workload = workload(&namespace_of(&doc), &name, labels, &spec);
                let pod = pod_object(&doc, workload.clone()).map_err(|(f, m)| invalid(&f, m))?;
                self.workloads.push(workload);
                self.pods.push(pod);
            }
            DocKind::Namespace => {
                require_name(&name, &invalid)?;
                self.namespaces.push(NamespaceInfo {
                    name: name.clone(),
                    labels: labels_at(&doc, "/metadata/labels"),
                });
            }
            DocKind::PodTemplate => {
                let template = doc.pointer("/spec/template").unwrap_or(&Value::Null);
                let spec: PodSpec = typed(
                    template.get("spec").unwrap_or(&Value::Null),
                    "spec.template.spec",
                    false,
                )
                .map_err(|(f, m)| invalid(&f, m))?;
                let labels = labels_at(&doc, "/spec/template/metadata/labels");
                self.workloads
                    .push(workload(&namespace_of(&doc), &name, labels, &spec));
            }
            DocKind::List => {
                let items = match doc.get("items") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => return Err(invalid("items", "a List needs an items array".into())),
                };
                for item in items {
                    self.add_value(item, location)?;
                }
            }
            DocKind::Other => self.skipped.push(Skipped {
                location: location.clone(),
                api_version,
                kind,
                name,
            }),
        }
        Ok(())
    }

    /// How many objects were read (every kind, skipped ones included).
    pub fn object_count(&self) -> usize {
        self.peer_authentications.len()
            + self.destination_rules.len()
            + self.authorization_policies.len()
            + self.workloads.len()
            + self.services.len()
            + self.namespaces.len()
            + self.skipped.len()
    }

    fn policy_from<S: DeserializeOwned>(
        &mut self,
        doc: &Value,
        invalid: &dyn Fn(&str, String) -> ManifestError,
    ) -> Result<Policy<S>, ManifestError> {
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.is_empty() {
            return Err(invalid("metadata.name", "required".into()));
        }
        let creation_timestamp = match doc.pointer("/metadata/creationTimestamp") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.parse::<Timestamp>().map_err(|e| {
                invalid(
                    "metadata.creationTimestamp",
                    format!("not an RFC 3339 time: {e}"),
                )
            })?),
            Some(_) => {
                return Err(invalid(
                    "metadata.creationTimestamp",
                    "not an RFC 3339 time string".into(),
                ));
            }
        };
        let spec_value = doc
            .get("spec")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let spec: S = typed(&spec_value, "spec", true).map_err(|(f, m)| invalid(&f, m))?;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Policy {
            meta: PolicyMeta {
                namespace: namespace_of(doc),
                name: name.to_string(),
                creation_timestamp,
                seq,
            },
            spec,
        })
    }
}

/// Deserializes `value` as `T`, naming the failing field (prefixed with `prefix`). With
/// `strict`, fields the type does not know are an error, as `kubectl apply` would say.
fn typed<T: DeserializeOwned>(
    value: &Value,
    prefix: &str,
    strict: bool,
) -> Result<T, (String, String)> {
    let join = |path: String| -> String {
        match (prefix.is_empty(), path.is_empty() || path == ".") {
            (true, _) => path,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{path}"),
        }
    };
    // One pass: serde_path_to_error tracks where a failure happened, serde_ignored collects
    // the fields the type does not know.
    let mut track = serde_path_to_error::Track::new();
    let mut unknown = Vec::new();
    let parsed = T::deserialize(serde_ignored::Deserializer::new(
        serde_path_to_error::Deserializer::new(value, &mut track),
        &mut |path: serde_ignored::Path<'_>| unknown.push(path.to_string()),
    ))
    .map_err(|e| (join(track.path().to_string()), e.to_string()))?;
    if strict && let Some(first) = unknown.first() {
        return Err((join(first.clone()), "unknown field".to_string()));
    }
    Ok(parsed)
}

fn require_name(
    name: &str,
    invalid: &dyn Fn(&str, String) -> ManifestError,
) -> Result<(), ManifestError> {
    if name.is_empty() {
        return Err(invalid("metadata.name", "required".into()));
    }
    Ok(())
}

/// A Pod document's addresses and lifecycle (`status` is read leniently: only the fields
/// below, each checked).
fn pod_object(doc: &Value, workload: Workload) -> Result<PodObject, (String, String)> {
    let status = doc.get("status");
    let mut ip_texts = Vec::new();
    match status.and_then(|s| s.get("podIPs")) {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.get("ip").and_then(Value::as_str) {
                    Some(ip) => ip_texts.push((format!("status.podIPs[{i}].ip"), ip)),
                    None => return Err((format!("status.podIPs[{i}].ip"), "required".into())),
                }
            }
        }
        Some(_) => return Err(("status.podIPs".into(), "must be a list".into())),
    }
    if ip_texts.is_empty() {
        match status.and_then(|s| s.get("podIP")) {
            None | Some(Value::Null) => {}
            Some(Value::String(ip)) if ip.is_empty() => {}
            Some(Value::String(ip)) => ip_texts.push(("status.podIP".into(), ip)),
            Some(_) => return Err(("status.podIP".into(), "must be a string".into())),
        }
    }
    let mut ips = Vec::new();
    for (field, text) in ip_texts {
        let ip = parse_ip(text).map_err(|m| (field, m))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let deleting = doc
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let phase = status
        .and_then(|s| s.get("phase"))
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok(PodObject {
        workload,
        ips,
        active: pod_active(deleting, phase),
    })
}

fn string_at(doc: &Value, key: &str) -> String {
    doc.get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn namespace_of(doc: &Value) -> String {
    doc.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
        .to_string()
}

fn labels_at(doc: &Value, pointer: &str) -> BTreeMap<String, String> {
    doc.pointer(pointer)
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Every manifest file under `path` as [`Manifests::load`] reads them: `path` itself if it is a
/// file, else `.yaml`/`.yml`/`.json` files below it (recursively, hidden entries skipped), in
/// name order; at most [`MAX_FILES`].
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    Ok(files)
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        if files.len() >= MAX_FILES {
            return Err(ManifestError::TooMany {
                what: "files",
                limit: MAX_FILES,
            });
        }
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for entry in entries {
        let is_manifest = entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() || is_manifest {
            collect_files(&entry, files)?;
        }
    }
    Ok(())
}

/// The text of one manifest file, at most [`MAX_FILE_BYTES`].
pub fn read_bounded(path: &Path) -> Result<String, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    crate::read_text_limited(file, MAX_FILE_BYTES)
        .map_err(io)?
        .ok_or_else(|| ManifestError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
        })
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
